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

/* Lane r: the sum of the eight int32 lanes of v[r], for r < M (1..4; exact: integer adds in any
 * order); lanes from M on are unspecified. Fewer rows take fewer shuffles (decode is M = 1). */
static inline __m128i hsum_rows_epi32(const __m256i v[4], int M)
{
    if (M == 1) {
        __m128i q = _mm_add_epi32(_mm256_castsi256_si128(v[0]), _mm256_extracti128_si256(v[0], 1));
        q = _mm_add_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(1, 0, 3, 2)));
        return _mm_add_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(2, 3, 0, 1)));
    }
    if (M == 2) {
        const __m256i h = _mm256_hadd_epi32(v[0], v[1]); /* per 128-bit half: a a b b */
        const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        return _mm_hadd_epi32(q, q);
    }
    const __m256i ab = _mm256_hadd_epi32(v[0], v[1]), cd = _mm256_hadd_epi32(v[2], M > 3 ? v[3] : v[2]);
    const __m256i abcd = _mm256_hadd_epi32(ab, cd); /* per 128-bit half: a b c d */
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

/* Q6_K's end of a super-block for up to four activation rows (lane r: row r < M of x, the Q8_K
 * rows x_stride apart): acc + (dw * d_r) * sum_r. */
/* Lane r: the Q8_K scale d of super-block i of activation row r < M (rows x_stride apart), else 0.
 * Built in registers: four scalar stores read back as one vector would stall store forwarding. */
static inline __m128 q8_K_row_scales(const void *x, size_t x_stride, int64_t i, int M)
{
#define XD(r) (M > (r) ? ((const struct cpu_block_q8_K *)ROW(x, r, x_stride) + i)->d : 0.0f)
    return _mm_setr_ps(XD(0), XD(1), XD(2), XD(3));
#undef XD
}

static inline __m128 q6_K_block_finish(__m128 acc, float dw, const void *x, size_t x_stride, int64_t i, int M,
                                       const __m256i sumi[4])
{
    const __m128 d = _mm_mul_ps(_mm_set1_ps(dw), q8_K_row_scales(x, x_stride, i, M));
    return _mm_add_ps(acc, _mm_mul_ps(d, _mm_cvtepi32_ps(hsum_rows_epi32(sumi, M))));
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
