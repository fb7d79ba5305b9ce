/*
 * rng.c — xoshiro256** (Blackman & Vigna), seeded through splitmix64. Deterministic everywhere.
 */
#include "fs_rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void fs_rng_seed(fs_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

uint64_t fs_rng_u64(fs_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t fs_rng_below(fs_rng *r, uint64_t n)
{
    /* rejection sampling: discard the top partial range so every residue is equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;
    do {
        v = fs_rng_u64(r);
    } while (v >= limit);
    return v % n;
}

float fs_rng_uniform(fs_rng *r)
{
    return (float)(fs_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

float fs_rng_normal(fs_rng *r)
{
    double u1 = ((double)(fs_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(fs_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void fs_rng_fork(fs_rng *child, const fs_rng *parent, uint64_t tag)
{
    uint64_t x = parent->s[0] ^ rotl(parent->s[1], 13) ^ rotl(parent->s[2], 29) ^
                 rotl(parent->s[3], 47) ^ (tag * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++)
        child->s[i] = splitmix64(&x);
}
