/*
 * conv_simd.c — the convolution fast path's GEMM micro-kernels (conv_ukernel.h) for AVX-512 and
 * AVX2+FMA, chosen at run time with __builtin_cpu_supports (the library itself is built for
 * baseline x86-64). They do not depend on which kernels OpenBLAS's DYNAMIC_ARCH picks for the CPU.
 */
#include <stddef.h>

#include "fs_kernels.h"
#include "fs_util.h"
#include "kernels_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define FS_HAVE_X86_UKERNELS 1

#define UK_ISA avx512
#define UK_TARGET "avx512f,avx2,fma"
#define UK_VL 16
#define UK_MR 8
#define UK_DR 4
#define UK_DK 4
#include "conv_ukernel.h"

#define UK_ISA avx2
#define UK_TARGET "avx2,fma"
#define UK_VL 8
#define UK_MR 4
#define UK_DR 2
#define UK_DK 4
#include "conv_ukernel.h"
#endif

static int g_forced = -1; /* -1: automatic */

static int detected(void)
{
#ifdef FS_HAVE_X86_UKERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
        return FS_CONV_IMPL_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FS_CONV_IMPL_AVX2;
#endif
    return FS_CONV_IMPL_BLAS;
}

int fs_conv2d_set_impl(int impl)
{
    if (impl == FS_CONV_IMPL_AUTO) {
        g_forced = -1;
        return 0;
    }
    int best = detected();
    if (impl == FS_CONV_IMPL_BLAS || (impl == FS_CONV_IMPL_AVX2 && best >= FS_CONV_IMPL_AVX2) ||
        (impl == FS_CONV_IMPL_AVX512 && best >= FS_CONV_IMPL_AVX512)) {
        g_forced = impl;
        return 0;
    }
    return FS_EUNSUPPORTED;
}

int fs_conv2d_get_impl(void)
{
    return g_forced >= 0 ? g_forced : detected();
}

int fs__linear_impl(void)
{
    int impl = fs_conv2d_get_impl();
    if (impl == FS_CONV_IMPL_BLAS || g_forced >= 0)
        return impl;
    /* AUTO: OpenBLAS with kernels for this CPU is faster than our tiles on plain matrix products
     * (measured 140 against 75 GFLOP/s for 128x784x512); they win when it fell back to a generic
     * core (32 GFLOP/s). The core does not change while the process runs. */
    static int generic = -1;
    int g = __atomic_load_n(&generic, __ATOMIC_RELAXED);
    if (g < 0) {
        g = fs_blas_coretype_hint() != NULL;
        __atomic_store_n(&generic, g, __ATOMIC_RELAXED);
    }
    return g ? impl : FS_CONV_IMPL_BLAS;
}

const char *fs_conv2d_impl_name(int impl)
{
    switch (impl) {
    case FS_CONV_IMPL_BLAS: return "im2col+cblas_sgemm";
    case FS_CONV_IMPL_AVX2: return "im2col+avx2 micro-kernels";
    case FS_CONV_IMPL_AVX512: return "im2col+avx512 micro-kernels";
    default: return "auto";
    }
}

void fs__ugemm_nn(int impl, int M, int N, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                  const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, int acc)
{
#ifdef FS_HAVE_X86_UKERNELS
    if (impl == FS_CONV_IMPL_AVX512) {
        fs__gemm_nn_avx512(M, N, K, A, sai, saj, B, ldb, C, ldc, acc);
        return;
    }
    if (impl == FS_CONV_IMPL_AVX2) {
        fs__gemm_nn_avx2(M, N, K, A, sai, saj, B, ldb, C, ldc, acc);
        return;
    }
#endif
    (void)M, (void)N, (void)K, (void)A, (void)sai, (void)saj, (void)B, (void)ldb, (void)C;
    (void)ldc, (void)acc;
    FS_ASSERT(!"no micro-kernel for this implementation");
}

void fs__ugemm_nn_tab(int impl, int M, int N, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                      const float *B, const ptrdiff_t *boff, float *C, ptrdiff_t ldc, int acc)
{
#ifdef FS_HAVE_X86_UKERNELS
    if (impl == FS_CONV_IMPL_AVX512) {
        fs__gemm_nn_tab_avx512(M, N, K, A, sai, saj, B, boff, C, ldc, acc);
        return;
    }
    if (impl == FS_CONV_IMPL_AVX2) {
        fs__gemm_nn_tab_avx2(M, N, K, A, sai, saj, B, boff, C, ldc, acc);
        return;
    }
#endif
    (void)M, (void)N, (void)K, (void)A, (void)sai, (void)saj, (void)B, (void)boff, (void)C;
    (void)ldc, (void)acc;
    FS_ASSERT(!"no micro-kernel for this implementation");
}

void fs__ugemm_dot_tab(int impl, int M, int Kc, int L, const float *P, ptrdiff_t ldp,
                       const float *Q, const ptrdiff_t *qoff, float *D, ptrdiff_t ldd)
{
#ifdef FS_HAVE_X86_UKERNELS
    if (impl == FS_CONV_IMPL_AVX512) {
        fs__gemm_dot_tab_avx512(M, Kc, L, P, ldp, Q, qoff, D, ldd);
        return;
    }
    if (impl == FS_CONV_IMPL_AVX2) {
        fs__gemm_dot_tab_avx2(M, Kc, L, P, ldp, Q, qoff, D, ldd);
        return;
    }
#endif
    (void)M, (void)Kc, (void)L, (void)P, (void)ldp, (void)Q, (void)qoff, (void)D, (void)ldd;
    FS_ASSERT(!"no micro-kernel for this implementation");
}

void fs__ugemm_dot(int impl, int M, int Kc, int L, const float *P, ptrdiff_t ldp, const float *Q,
                   ptrdiff_t ldq, float *D, ptrdiff_t ldd)
{
#ifdef FS_HAVE_X86_UKERNELS
    if (impl == FS_CONV_IMPL_AVX512) {
        fs__gemm_dot_avx512(M, Kc, L, P, ldp, Q, ldq, D, ldd);
        return;
    }
    if (impl == FS_CONV_IMPL_AVX2) {
        fs__gemm_dot_avx2(M, Kc, L, P, ldp, Q, ldq, D, ldd);
        return;
    }
#endif
    (void)M, (void)Kc, (void)L, (void)P, (void)ldp, (void)Q, (void)ldq, (void)D, (void)ldd;
    FS_ASSERT(!"no micro-kernel for this implementation");
}
