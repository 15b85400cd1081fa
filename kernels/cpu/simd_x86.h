/* Helpers shared by the x86 SIMD kernel files (quants_avx2.c, quants_avx512.c), which are compiled
 * with at least -mavx2 -mfma -mf16c; nothing else includes this header. */
#ifndef SPECD_KERNELS_CPU_SIMD_X86_H
#define SPECD_KERNELS_CPU_SIMD_X86_H

#include <immintrin.h>
#include <stdint.h>

#include "kernels/cpu/cpu.h"

#define ROW(base, r, stride) ((const void *)((const char *)(base) + (size_t)(r) * (stride)))
#define ALWAYS_INLINE inline __attribute__((always_inline))

static inline float fp16(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)), the order of hsum8() in quants.c */
static inline float hsum8_ps(__m256 v)
{
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* The sums of the eight int32 lanes of a and of b (exact: integer adds in any order). */
static inline void hsum2_epi32(__m256i a, __m256i b, int32_t *sa, int32_t *sb)
{
    const __m256i h = _mm256_hadd_epi32(a, b); /* a01 a23 b01 b23 | a45 a67 b45 b67 */
    __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    q = _mm_hadd_epi32(q, q);
    *sa = _mm_cvtsi128_si32(q);
    *sb = _mm_extract_epi32(q, 1);
}

/* acc + d * float(s), as a multiply and an add (never fused, like the scalar code) */
static inline __m256 scale_add(__m256 acc, float d, __m256i s)
{
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s)));
}

#define DOT_BY_FOURS(name, body_m, nb_of_k)                                                                 \
    static void name(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,           \
                     size_t y_stride)                                                                      \
    {                                                                                                      \
        const int64_t nb = nb_of_k;                                                                        \
        for (int r0 = 0; r0 < nx; r0 += 4) {                                                               \
            const void *xr = ROW(x, r0, x_stride);                                                         \
            float *yr = y + (size_t)r0 * y_stride;                                                         \
            switch (nx - r0 < 4 ? nx - r0 : 4) {                                                           \
            case 1:                                                                                        \
                body_m(nb, w, xr, x_stride, yr, y_stride, 1);                                              \
                break;                                                                                     \
            case 2:                                                                                        \
                body_m(nb, w, xr, x_stride, yr, y_stride, 2);                                              \
                break;                                                                                     \
            case 3:                                                                                        \
                body_m(nb, w, xr, x_stride, yr, y_stride, 3);                                              \
                break;                                                                                     \
            default:                                                                                       \
                body_m(nb, w, xr, x_stride, yr, y_stride, 4);                                              \
                break;                                                                                     \
            }                                                                                              \
        }                                                                                                  \
    }

/* pshufb masks for Q6_K chunk t of a half: int16 element 2t in the low lane, 2t+1 in the high lane */
static const uint8_t k_q6_scale_shuf[4][32] __attribute__((aligned(32))) = {
#define S(a, b) {a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, \
                 b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1}
    S(0, 2), S(4, 6), S(8, 10), S(12, 14),
#undef S
};

/* A Q6_K block's int16 scales 0-7 (sc_lo) and 8-15 (sc_hi), each in both 128-bit lanes, for the
 * k_q6_scale_shuf shuffles of a half's chunks. */
static inline void q6_K_scale_halves(const struct cpu_block_q6_K *b, __m256i *sc_lo, __m256i *sc_hi)
{
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    *sc_lo = _mm256_permute4x64_epi64(sc16, 0x44);
    *sc_hi = _mm256_permute4x64_epi64(sc16, 0xee);
}

#endif
