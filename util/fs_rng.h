/*
 * fs_rng.h — a small deterministic random generator (xoshiro256**, seeded by splitmix64).
 * Same seed, same sequence, on every machine: sampling, augmentation and initialisation use it.
 */
#ifndef FS_RNG_H
#define FS_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} fs_rng;

void fs_rng_seed(fs_rng *r, uint64_t seed);
uint64_t fs_rng_u64(fs_rng *r);
/* Uniform integer in [0, n), n > 0, without modulo bias. */
uint64_t fs_rng_below(fs_rng *r, uint64_t n);
/* Uniform float in [0, 1). */
float fs_rng_uniform(fs_rng *r);
/* Standard normal (Box-Muller). */
float fs_rng_normal(fs_rng *r);
/* A derived, independent stream: hash of (parent seed state, tag). */
void fs_rng_fork(fs_rng *child, const fs_rng *parent, uint64_t tag);

#endif
