/*
 * conv_ukernel.h — register-blocked GEMM micro-kernels for the convolution fast path, written once
 * with GCC vector extensions and instantiated per instruction set by conv_simd.c:
 *
 *   #define UK_ISA avx512   (name suffix)      #define UK_TARGET "avx512f,fma"
 *   #define UK_VL 16        (floats per vector) #define UK_MR 8 (rows per tile)
 *   #define UK_DR 4, UK_DK 4 (tile of the dot kernel)
 *   #include "conv_ukernel.h"
 *
 * Each instantiation defines:
 *   fs__gemm_nn_<isa>(M, N, K, A, sai, saj, B, ldb, C, ldc, acc)
 *       C[i, n] (+)= Σ_j A[i·sai + j·saj] · B[j·ldb + n]   (i < M, n < N, j < K)
 *       B rows must be READABLE up to the next multiple of 2·VL columns (padded buffers); only
 *       the first N columns of C are written.
 *   fs__gemm_dot_<isa>(M, Kc, L, P, ldp, Q, ldq, D, ldd)
 *       D[i, k] += Σ_{n < L} P[i·ldp + n] · Q[k·ldq + n]   (L a multiple of VL)
 *   fs__gemm_nn_tab_<isa>, fs__gemm_dot_tab_<isa>: the same with B row j / Q row k at an offset
 *       from a table (boff[j], qoff[k]) instead of j·ldb / k·ldq.
 * Sums run in a fixed order, so results are reproducible.
 */
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#define UK_CAT_(a, b) a##b
#define UK_CAT(a, b) UK_CAT_(a, b)
#define UK_V UK_CAT(uk_v_, UK_ISA)
#define UK_VU UK_CAT(uk_vu_, UK_ISA)
#define UK_NV 2
#define UK_NR (UK_NV * UK_VL)

typedef float UK_V __attribute__((vector_size(UK_VL * 4)));
typedef float UK_VU __attribute__((vector_size(UK_VL * 4), aligned(4)));

/* One MR x NR tile of C (mr <= MR rows, nc <= NR columns). Inlined with constant mr. */
static inline __attribute__((always_inline, target(UK_TARGET))) void
UK_CAT(uk_tile_, UK_ISA)(const int mr, int nc, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                         const float *B, ptrdiff_t ldb, const int tab, const ptrdiff_t *boff,
                         float *C, ptrdiff_t ldc, int acc)
{
    UK_V c[UK_MR][UK_NV];
#pragma GCC unroll 16
    for (int r = 0; r < UK_MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < UK_NV; v++)
            c[r][v] = (UK_V){0};
    for (int j = 0; j < K; j++) {
        const float *b = tab ? B + boff[j] : B + (ptrdiff_t)j * ldb;
        const float *a = A + (ptrdiff_t)j * saj;
        UK_V bv[UK_NV];
#pragma GCC unroll 4
        for (int v = 0; v < UK_NV; v++)
            bv[v] = *(const UK_VU *)(b + v * UK_VL);
#pragma GCC unroll 16
        for (int r = 0; r < UK_MR; r++) {
            if (r < mr) {
                float ar = a[r * sai];
#pragma GCC unroll 4
                for (int v = 0; v < UK_NV; v++)
                    c[r][v] += ar * bv[v];
            }
        }
    }
    if (nc == UK_NR) {
#pragma GCC unroll 16
        for (int r = 0; r < UK_MR; r++) {
            if (r < mr) {
#pragma GCC unroll 4
                for (int v = 0; v < UK_NV; v++) {
                    UK_VU *p = (UK_VU *)(C + r * ldc + v * UK_VL);
                    *p = acc ? *p + c[r][v] : c[r][v];
                }
            }
        }
    } else {
        for (int r = 0; r < mr; r++) {
            float tmp[UK_NR];
            memcpy(tmp, &c[r][0], sizeof tmp);
            float *p = C + r * ldc;
            for (int n = 0; n < nc; n++)
                p[n] = acc ? p[n] + tmp[n] : tmp[n];
        }
    }
}

static inline __attribute__((always_inline, target(UK_TARGET))) void
UK_CAT(uk_nn_, UK_ISA)(int M, int N, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                       const float *B, ptrdiff_t ldb, const int tab, const ptrdiff_t *boff,
                       float *C, ptrdiff_t ldc, int acc)
{
    for (int n0 = 0; n0 < N; n0 += UK_NR) {
        int nc = N - n0 < UK_NR ? N - n0 : UK_NR;
        for (int i0 = 0; i0 < M; i0 += UK_MR) {
            int mr = M - i0 < UK_MR ? M - i0 : UK_MR;
            const float *a = A + (ptrdiff_t)i0 * sai;
            const float *b = B + n0;
            float *c = C + (ptrdiff_t)i0 * ldc + n0;
            switch (mr) {
#define UK_CASE(m)                                                                             \
    case m: UK_CAT(uk_tile_, UK_ISA)(m, nc, K, a, sai, saj, b, ldb, tab, boff, c, ldc, acc); break;
                UK_CASE(1)
                UK_CASE(2)
                UK_CASE(3)
                UK_CASE(4)
#if UK_MR > 4
                UK_CASE(5)
                UK_CASE(6)
                UK_CASE(7)
                UK_CASE(8)
#endif
#undef UK_CASE
            default: break;
            }
        }
    }
}

/* A stored transposed (sai == 1, rows of A far apart in memory: e.g. dyᵀ): the MR x K panels are
 * copied into a small contiguous stack buffer, in blocks of UK_PK columns, so the broadcasts do
 * not thrash L1 sets; later blocks accumulate into C. */
#define UK_PK 256
static inline __attribute__((always_inline, target(UK_TARGET))) void
UK_CAT(uk_nn_packed_, UK_ISA)(int M, int N, int K, const float *A, ptrdiff_t saj, const float *B,
                              ptrdiff_t ldb, float *C, ptrdiff_t ldc, int acc)
{
    float apack[UK_PK * UK_MR];
    for (int k0 = 0; k0 < K; k0 += UK_PK) {
        const int kc = K - k0 < UK_PK ? K - k0 : UK_PK;
        const int ac = acc || k0 > 0;
        for (int i0 = 0; i0 < M; i0 += UK_MR) {
            const int mr = M - i0 < UK_MR ? M - i0 : UK_MR;
            for (int j = 0; j < kc; j++) {
                const float *src = A + (ptrdiff_t)(k0 + j) * saj + i0;
                for (int r = 0; r < mr; r++)
                    apack[j * UK_MR + r] = src[r];
            }
            UK_CAT(uk_nn_, UK_ISA)(mr, N, kc, apack, 1, UK_MR, B + (ptrdiff_t)k0 * ldb, ldb, 0,
                                   NULL, C + (ptrdiff_t)i0 * ldc, ldc, ac);
        }
    }
}

static __attribute__((target(UK_TARGET))) void
UK_CAT(fs__gemm_nn_, UK_ISA)(int M, int N, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                             const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, int acc)
{
    if (sai == 1 && saj > 4 * UK_MR)
        UK_CAT(uk_nn_packed_, UK_ISA)(M, N, K, A, saj, B, ldb, C, ldc, acc);
    else
        UK_CAT(uk_nn_, UK_ISA)(M, N, K, A, sai, saj, B, ldb, 0, NULL, C, ldc, acc);
}

/* The same with row j of B at B + boff[j] (implicit im2col: rows are shifted input planes). */
static __attribute__((target(UK_TARGET))) void
UK_CAT(fs__gemm_nn_tab_, UK_ISA)(int M, int N, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                                 const float *B, const ptrdiff_t *boff, float *C, ptrdiff_t ldc,
                                 int acc)
{
    UK_CAT(uk_nn_, UK_ISA)(M, N, K, A, sai, saj, B, 0, 1, boff, C, ldc, acc);
}

static inline __attribute__((always_inline, target(UK_TARGET))) float
UK_CAT(uk_hsum_, UK_ISA)(UK_V x)
{
#if UK_VL == 16
    return _mm512_reduce_add_ps((__m512)x); /* a fixed shuffle tree */
#elif UK_VL == 8
    __m128 h = _mm_add_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
#else
    float t[UK_VL];
    memcpy(t, &x, sizeof t);
    float s = 0.0f;
    for (int l = 0; l < UK_VL; l++)
        s += t[l];
    return s;
#endif
}

/* D[i, k] += Σ_n P[i, n] Q[k, n]: tiles of DR x DK dot products, vectorised along n. */
static inline __attribute__((always_inline, target(UK_TARGET))) void
UK_CAT(uk_dot_tile_, UK_ISA)(const int dr, const int dk, int L, const float *P, ptrdiff_t ldp,
                             const float *Q, ptrdiff_t ldq, const int tab, const ptrdiff_t *qoff,
                             float *D, ptrdiff_t ldd)
{
    UK_V s[UK_DR][UK_DK];
#pragma GCC unroll 8
    for (int a = 0; a < UK_DR; a++)
#pragma GCC unroll 8
        for (int b = 0; b < UK_DK; b++)
            s[a][b] = (UK_V){0};
    for (int n = 0; n < L; n += UK_VL) {
        UK_V p[UK_DR] = {0}, q[UK_DK] = {0};
#pragma GCC unroll 8
        for (int a = 0; a < UK_DR; a++)
            if (a < dr)
                p[a] = *(const UK_VU *)(P + a * ldp + n);
#pragma GCC unroll 8
        for (int b = 0; b < UK_DK; b++)
            if (b < dk)
                q[b] = *(const UK_VU *)((tab ? Q + qoff[b] : Q + b * ldq) + n);
#pragma GCC unroll 8
        for (int a = 0; a < UK_DR; a++)
#pragma GCC unroll 8
            for (int b = 0; b < UK_DK; b++)
                if (a < dr && b < dk)
                    s[a][b] += p[a] * q[b];
    }
    for (int a = 0; a < dr; a++)
        for (int b = 0; b < dk; b++)
            D[a * ldd + b] += UK_CAT(uk_hsum_, UK_ISA)(s[a][b]);
}

static inline __attribute__((always_inline, target(UK_TARGET))) void
UK_CAT(uk_dot_, UK_ISA)(int M, int Kc, int L, const float *P, ptrdiff_t ldp, const float *Q,
                        ptrdiff_t ldq, const int tab, const ptrdiff_t *qoff, float *D,
                        ptrdiff_t ldd)
{
    /* Blocks of Q rows small enough (~256 KiB) to stay in L2 while every P tile passes. */
    int kb = (65536 / (L > 0 ? L : 1)) / UK_DK * UK_DK;
    if (kb < UK_DK)
        kb = UK_DK;
    for (int kb0 = 0; kb0 < Kc; kb0 += kb) {
        const int kend = Kc - kb0 < kb ? Kc : kb0 + kb;
        for (int i0 = 0; i0 < M; i0 += UK_DR) {
            int dr = M - i0 < UK_DR ? M - i0 : UK_DR;
            for (int k0 = kb0; k0 < kend; k0 += UK_DK) {
                int dk = kend - k0 < UK_DK ? kend - k0 : UK_DK;
                const float *p = P + (ptrdiff_t)i0 * ldp;
                const float *q = tab ? Q : Q + (ptrdiff_t)k0 * ldq;
                const ptrdiff_t *qo = tab ? qoff + k0 : NULL;
                float *d = D + (ptrdiff_t)i0 * ldd + k0;
                if (dr == UK_DR && dk == UK_DK)
                    UK_CAT(uk_dot_tile_, UK_ISA)(UK_DR, UK_DK, L, p, ldp, q, ldq, tab, qo, d, ldd);
                else /* edges: the same code without constant sizes */
                    UK_CAT(uk_dot_tile_, UK_ISA)(dr, dk, L, p, ldp, q, ldq, tab, qo, d, ldd);
            }
        }
    }
}

static __attribute__((target(UK_TARGET))) void
UK_CAT(fs__gemm_dot_, UK_ISA)(int M, int Kc, int L, const float *P, ptrdiff_t ldp, const float *Q,
                              ptrdiff_t ldq, float *D, ptrdiff_t ldd)
{
    UK_CAT(uk_dot_, UK_ISA)(M, Kc, L, P, ldp, Q, ldq, 0, NULL, D, ldd);
}

/* The same with row k of Q at Q + qoff[k]. */
static __attribute__((target(UK_TARGET))) void
UK_CAT(fs__gemm_dot_tab_, UK_ISA)(int M, int Kc, int L, const float *P, ptrdiff_t ldp,
                                  const float *Q, const ptrdiff_t *qoff, float *D, ptrdiff_t ldd)
{
    UK_CAT(uk_dot_, UK_ISA)(M, Kc, L, P, ldp, Q, 0, 1, qoff, D, ldd);
}

#undef UK_V
#undef UK_VU
#undef UK_NV
#undef UK_NR
#undef UK_ISA
#undef UK_TARGET
#undef UK_VL
#undef UK_MR
#undef UK_DR
#undef UK_DK
#undef UK_PK
