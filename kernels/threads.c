/*
 * threads.c — the one thread setting (SYSTEMS.md d3): OpenMP team size and OpenBLAS pool size.
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_kernels.h"
#include "kernels_internal.h"

static int g_threads;          /* 0 until configured: then omp_get_max_threads() is used */
static char g_describe[512];

static const char *variant_name(int p)
{
    switch (p) {
    case OPENBLAS_SEQUENTIAL: return "serial";
    case OPENBLAS_THREAD: return "pthread";
    case OPENBLAS_OPENMP: return "openmp";
    default: return "unknown";
    }
}

void fs_threads_configure(int threads)
{
    if (threads <= 0)
        threads = omp_get_num_procs();
    if (threads < 1)
        threads = 1;
    if (threads > FS_MAX_THREADS)
        threads = FS_MAX_THREADS;
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    g_threads = threads;
}

int fs__threads(void)
{
    int t = g_threads > 0 ? g_threads : omp_get_max_threads();
    if (t < 1)
        t = 1;
    return t > FS_MAX_THREADS ? FS_MAX_THREADS : t;
}

int fs_threads_get(void)
{
    return fs__threads();
}

int fs__blas_in_parallel_ok(void)
{
    return openblas_get_parallel() == OPENBLAS_OPENMP || openblas_get_num_threads() == 1;
}

const char *fs_threads_describe(void)
{
    const char *cfg = openblas_get_config();
    const char *core = openblas_get_corename();
    const char *hint = fs_blas_coretype_hint();
    snprintf(g_describe, sizeof g_describe, "%s (core %s, %s%s%s%s), %d threads, BLAS pool %d",
             cfg ? cfg : "OpenBLAS ?", core ? core : "?", variant_name(openblas_get_parallel()),
             hint ? "; generic kernels, OPENBLAS_CORETYPE=" : "", hint ? hint : "",
             hint ? " would be faster" : "", fs__threads(), openblas_get_num_threads());
    return g_describe;
}

const char *fs_blas_coretype_hint(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    const char *env = getenv("OPENBLAS_CORETYPE");
    if (env && *env)
        return NULL;
    const char *core = openblas_get_corename();
    if (!core)
        return NULL;
    /* OpenBLAS's pre-AVX x86-64 cores: a fallback on a modern CPU. */
    static const char *generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                    "Atom", "Barcelona", "Opteron", "Opteron(SSE3)", "Unknown",
                                    "Katmai", "Coppermine", "Northwood", "Banias"};
    int is_generic = 0;
    for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
        if (strcmp(core, generic[i]) == 0)
            is_generic = 1;
    if (!is_generic)
        return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#endif
    return NULL;
}
