/*
 * blas_core.c — makes OpenBLAS use kernels that fit this CPU.
 *
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not recognise AMD Zen 4 and falls back to its
 * "Prescott" (SSE3) kernels: measured here, 30 GFLOP/s for a 1024^3 sgemm on one core against
 * 150 with OPENBLAS_CORETYPE=SkylakeX. The core type is read by a library constructor before
 * main(), so the only fix from inside the program is to set the variable and re-execute itself.
 * This happens at most once (the variable is then set), never when the user chose a core type,
 * and only when the CPU really has the instructions the chosen kernels need.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_kernels.h"

static const char *better_core(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
    return NULL;
}

void fs_blas_select_core(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("FS_NO_BLAS_REEXEC"))
        return;
    const char *now = openblas_get_corename();
    if (!now || (strcasecmp(now, "Prescott") && strcasecmp(now, "Core2") &&
                 strcasecmp(now, "Nehalem") && strcasecmp(now, "Sandybridge") &&
                 strcasecmp(now, "Barcelona") && strcasecmp(now, "Bulldozer")))
        return;                             /* a good kernel set was detected */
    const char *want = better_core();
    if (!want)
        return;
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0)
        return;
    fflush(NULL);
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc?): keep running with the slower kernels */
}
