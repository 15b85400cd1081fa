/* AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c, chosen at run time).
 *
 * Each kernel performs, lane for lane, the float operations of its scalar twin in quants.c, so the two
 * give identical bits; see the summation order described there. Integer products use the usual
 * pmaddubsw (unsigned x signed bytes, pairs into int16) + pmaddwd (pairs into int32) pair, which
 * leaves four adjacent elements in each int32 lane. Activation quants must lie in [-127, 127]
 * (ggml's quantisers never produce -128). A weight block is decoded once and then used for up to
 * four activation rows, whose accumulators stay in registers. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd_x86.h"

/* Signed bytes w and x: int32 lane l = sum of w*x over bytes 4l..4l+3. */
static inline __m256i dot_i8_lanes(__m256i w, __m256i x)
{
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Unsigned bytes u (< 128) and signed bytes x: int32 lane l = scale * sum over bytes 4l..4l+3. */
static inline __m256i dot_u8_lanes_scaled(__m256i u, __m256i x, __m256i scale16)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), scale16);
}

/* The 32 elements of a Q4_0/Q4_1 nibble array: low nibbles then high nibbles. */
static inline __m256i nibbles32(const uint8_t *qs)
{
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}

/* 0xff in byte i where bit i of the 32-bit word is set. */
static inline __m256i bits32(const uint8_t *qh)
{
    uint32_t bits;
    memcpy(&bits, qh, sizeof(bits));
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
    const __m256i mask = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask);
}

/* ---------------------------------------------------------------------------------------------- */
/* 32-element block types. M (1..4) activation rows per pass; the body is inlined with M constant
 * so the accumulators live in registers. */

enum block32_kind { B32_Q4_0, B32_Q4_1, B32_Q5_0, B32_Q8_0 };

static ALWAYS_INLINE void dot_block32_m(enum block32_kind kind, int64_t nb, const void *w, const void *x,
                                        size_t x_stride, float *y, size_t y_stride, const int M)
{
    __m256 acc[4];
    float summ[4];
    const float *xs[4]; /* the rows' fp32 block scales (see cpu_act_row_bytes) */
    const size_t xs_offset = cpu_act_scales_offset(kind == B32_Q4_1 ? SPEC_Q8_1 : SPEC_Q8_0, nb * CPU_QK);
#pragma GCC unroll 4
    for (int r = 0; r < M; r++) {
        acc[r] = _mm256_setzero_ps();
        summ[r] = 0.0f;
        xs[r] = (const float *)((const char *)ROW(x, r, x_stride) + xs_offset);
    }
    for (int64_t i = 0; i < nb; i++) {
        __m256i q;
        float dw, mw = 0.0f;
        switch (kind) {
        case B32_Q4_0: {
            const struct cpu_block_q4_0 *b = (const struct cpu_block_q4_0 *)w + i;
            q = _mm256_sub_epi8(nibbles32(b->qs), _mm256_set1_epi8(8));
            dw = fp16(b->d);
            break;
        }
        case B32_Q4_1: {
            const struct cpu_block_q4_1 *b = (const struct cpu_block_q4_1 *)w + i;
            q = nibbles32(b->qs);
            dw = fp16(b->d);
            mw = fp16(b->m);
            break;
        }
        case B32_Q5_0: {
            const struct cpu_block_q5_0 *b = (const struct cpu_block_q5_0 *)w + i;
            /* (nibble | bit << 4) - 16 is the nibble when the bit is set, else nibble | 0xf0 */
            const __m256i hi = _mm256_andnot_si256(bits32(b->qh), _mm256_set1_epi8((char)0xf0));
            q = _mm256_or_si256(nibbles32(b->qs), hi);
            dw = fp16(b->d);
            break;
        }
        default: {
            const struct cpu_block_q8_0 *b = (const struct cpu_block_q8_0 *)w + i;
            q = _mm256_loadu_si256((const __m256i *)b->qs);
            dw = fp16(b->d);
            break;
        }
        }
#pragma GCC unroll 4
        for (int r = 0; r < M; r++) {
            if (kind == B32_Q4_1) {
                const struct cpu_block_q8_1 *xb = (const struct cpu_block_q8_1 *)ROW(x, r, x_stride) + i;
                const __m256i xq = _mm256_loadu_si256((const __m256i *)xb->qs);
                const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xq), _mm256_set1_epi16(1));
                acc[r] = scale_add(acc[r], dw * xs[r][2 * i], s);
                summ[r] = summ[r] + mw * xs[r][2 * i + 1];
            } else {
                const struct cpu_block_q8_0 *xb = (const struct cpu_block_q8_0 *)ROW(x, r, x_stride) + i;
                const __m256i xq = _mm256_loadu_si256((const __m256i *)xb->qs);
                acc[r] = scale_add(acc[r], dw * xs[r][i], dot_i8_lanes(q, xq));
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < M; r++)
        y[r * y_stride] = kind == B32_Q4_1 ? hsum8_ps(acc[r]) + summ[r] : hsum8_ps(acc[r]);
}

#define Q4_0_M(nb, w, x, xs, y, ys, M) dot_block32_m(B32_Q4_0, nb, w, x, xs, y, ys, M)
#define Q4_1_M(nb, w, x, xs, y, ys, M) dot_block32_m(B32_Q4_1, nb, w, x, xs, y, ys, M)
#define Q5_0_M(nb, w, x, xs, y, ys, M) dot_block32_m(B32_Q5_0, nb, w, x, xs, y, ys, M)
#define Q8_0_M(nb, w, x, xs, y, ys, M) dot_block32_m(B32_Q8_0, nb, w, x, xs, y, ys, M)
DOT_BY_FOURS(dot_q4_0_avx2, Q4_0_M, k / CPU_QK)
DOT_BY_FOURS(dot_q4_1_avx2, Q4_1_M, k / CPU_QK)
DOT_BY_FOURS(dot_q5_0_avx2, Q5_0_M, k / CPU_QK)
DOT_BY_FOURS(dot_q8_0_avx2, Q8_0_M, k / CPU_QK)

/* ---------------------------------------------------------------------------------------------- */
/* K-quants against Q8_K                                                                          */

/* pshufb masks that broadcast int16 element j of each 128-bit lane to the whole lane */
static const uint8_t k_bcast16[8][32] __attribute__((aligned(32))) = {
#define P(j) 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1
#define B(j) {P(j), P(j), P(j), P(j)}
    B(0), B(1), B(2), B(3), B(4), B(5), B(6), B(7),
#undef B
#undef P
};

static inline __m256i bcast16(__m256i v, int j)
{
    return _mm256_shuffle_epi8(v, _mm256_load_si256((const __m256i *)k_bcast16[j]));
}

/* The Q4_K scales and mins as int16: lanes 0-7 the eight 6-bit scales, lanes 8-15 the eight mins. */
static inline __m256i q4_K_scales_mins(const uint8_t *packed)
{
    uint32_t u[3];
    memcpy(u, packed, 12);
    const uint32_t s_lo = u[0] & 0x3f3f3f3f, m_lo = u[1] & 0x3f3f3f3f;
    const uint32_t s_hi = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    const uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    return _mm256_cvtepu8_epi16(_mm_set_epi32((int)m_hi, (int)m_lo, (int)s_hi, (int)s_lo));
}

static ALWAYS_INLINE void dot_q4_K_m(int64_t nb, const void *w, const void *x, size_t x_stride, float *y,
                                     size_t y_stride, const int M)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    /* min l for the two bsums of sub-block l: int16 lanes 2l and 2l+1 */
    const __m256i mins_shuf = _mm256_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9, 8, 9, 10, 11, 10,
                                               11, 12, 13, 12, 13, 14, 15, 14, 15);
    __m128 acc = _mm_setzero_ps(); /* lane r: activation row r */
    for (int64_t i = 0; i < nb; i++) {
        const struct cpu_block_q4_K *b = (const struct cpu_block_q4_K *)w + i;
        const __m256i sm = q4_K_scales_mins(b->scales);
        const __m256i scales = _mm256_permute4x64_epi64(sm, 0x44);
        const __m256i mins16 = _mm256_shuffle_epi8(_mm256_permute4x64_epi64(sm, 0xee), mins_shuf);
        const float dw = fp16(b->d), dminw = fp16(b->dmin);
        __m256i sumi[4], mins[4];
#pragma GCC unroll 4
        for (int r = 0; r < M; r++)
            sumi[r] = _mm256_setzero_si256();
        for (int p = 0; p < 4; p++) {
            const __m256i q4 = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * p));
            const __m256i lo = _mm256_and_si256(q4, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), low4);
            const __m256i sc_lo = bcast16(scales, 2 * p), sc_hi = bcast16(scales, 2 * p + 1);
#pragma GCC unroll 4
            for (int r = 0; r < M; r++) {
                const int8_t *q8 = ((const struct cpu_block_q8_K *)ROW(x, r, x_stride) + i)->qs + 64 * p;
                const __m256i a = dot_u8_lanes_scaled(lo, _mm256_loadu_si256((const __m256i *)q8), sc_lo);
                const __m256i c = dot_u8_lanes_scaled(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)), sc_hi);
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(a, c));
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < M; r++) {
            const struct cpu_block_q8_K *xb = (const struct cpu_block_q8_K *)ROW(x, r, x_stride) + i;
            mins[r] = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)xb->bsums), mins16);
        }
        /* the rows' super-block sums side by side, then (acc + d * sum) - dmin * mins per lane; one
         * row (decode) reduces its sum and mins together */
        const __m128 xd4 = q8_K_row_scales(x, x_stride, i, M);
        const __m128 d = _mm_mul_ps(_mm_set1_ps(dw), xd4), dmin = _mm_mul_ps(_mm_set1_ps(dminw), xd4);
        __m128 sum, msum;
        if (M == 1) {
            const __m256i pair[4] = {sumi[0], mins[0]};
            sum = _mm_cvtepi32_ps(hsum_rows_epi32(pair, 2)); /* sum, mins, sum, mins */
            msum = _mm_movehdup_ps(sum);
        } else {
            sum = _mm_cvtepi32_ps(hsum_rows_epi32(sumi, M));
            msum = _mm_cvtepi32_ps(hsum_rows_epi32(mins, M));
        }
        acc = _mm_sub_ps(_mm_add_ps(acc, _mm_mul_ps(d, sum)), _mm_mul_ps(dmin, msum));
    }
    float out[4];
    _mm_storeu_ps(out, acc);
#pragma GCC unroll 4
    for (int r = 0; r < M; r++)
        y[r * y_stride] = out[r];
}

static ALWAYS_INLINE void dot_q6_K_m(int64_t nb, const void *w, const void *x, size_t x_stride, float *y,
                                     size_t y_stride, const int M)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f), low2 = _mm256_set1_epi8(0x03), m32 = _mm256_set1_epi8(32);
    __m128 acc = _mm_setzero_ps(); /* lane r: activation row r */
    for (int64_t i = 0; i < nb; i++) {
        const struct cpu_block_q6_K *b = (const struct cpu_block_q6_K *)w + i;
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < M; r++)
            sumi[r] = _mm256_setzero_si256();
        __m256i sc_lo, sc_hi;
        q6_K_scale_halves(b, &sc_lo, &sc_hi);
        for (int h = 0; h < 2; h++) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));
            for (int t = 0; t < 4; t++) {
                const int c = 4 * h + t;
                const __m256i sc = _mm256_shuffle_epi8(h ? sc_hi : sc_lo,
                                                       _mm256_load_si256((const __m256i *)k_q6_scale_shuf[t]));
#pragma GCC unroll 4
                for (int r = 0; r < M; r++) {
                    const int8_t *q8 = ((const struct cpu_block_q8_K *)ROW(x, r, x_stride) + i)->qs + 32 * c;
                    const __m256i xq = _mm256_loadu_si256((const __m256i *)q8);
                    /* sum of (q - 32) * x over pairs: exact in int16 */
                    const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q[t], xq), _mm256_maddubs_epi16(m32, xq));
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p16, sc));
                }
            }
        }
        acc = q6_K_block_finish(acc, fp16(b->d), x, x_stride, i, M, sumi);
    }
    float out[4];
    _mm_storeu_ps(out, acc);
#pragma GCC unroll 4
    for (int r = 0; r < M; r++)
        y[r * y_stride] = out[r];
}

DOT_BY_FOURS(dot_q4_K_avx2, dot_q4_K_m, k / CPU_QK_K)
DOT_BY_FOURS(dot_q6_K_avx2, dot_q6_K_m, k / CPU_QK_K)

/* ---------------------------------------------------------------------------------------------- */
/* Float types: 32 lanes in four accumulators, two activation rows per pass (8 accumulators).      */

enum float_kind { FK_F32, FK_F16, FK_BF16 };

static ALWAYS_INLINE __m256 load8(enum float_kind kind, const void *base, int64_t i)
{
    switch (kind) {
    case FK_F32:
        return _mm256_loadu_ps((const float *)base + i);
    case FK_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    default: {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
    }
}

static ALWAYS_INLINE float load1(enum float_kind kind, const void *base, int64_t i)
{
    switch (kind) {
    case FK_F32:
        return ((const float *)base)[i];
    case FK_F16:
        return fp16(((const uint16_t *)base)[i]);
    default:
        return kern_bf16_to_fp32(((const uint16_t *)base)[i]);
    }
}

static ALWAYS_INLINE void dot_float_m(enum float_kind kind, int64_t k, const void *w, const void *x, size_t x_stride,
                                      float *y, size_t y_stride, const int M)
{
    const int64_t kmain = k - k % 32;
    __m256 acc[2][4];
#pragma GCC unroll 4
    for (int r = 0; r < M; r++)
        for (int j = 0; j < 4; j++)
            acc[r][j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < kmain; i += 32) {
        for (int j = 0; j < 4; j++) {
            const __m256 a = load8(kind, w, i + 8 * j);
#pragma GCC unroll 4
            for (int r = 0; r < M; r++)
                acc[r][j] = _mm256_add_ps(acc[r][j], _mm256_mul_ps(a, load8(kind, ROW(x, r, x_stride), i + 8 * j)));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < M; r++) {
        const __m256 lanes = _mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][2]), _mm256_add_ps(acc[r][1], acc[r][3]));
        double sum = hsum8_ps(lanes);
        const void *xr = ROW(x, r, x_stride);
        for (int64_t i = kmain; i < k; i++)
            sum += (double)(load1(kind, w, i) * load1(kind, xr, i));
        y[r * y_stride] = (float)sum;
    }
}

#define DOT_FLOAT(name, kind)                                                                              \
    static void name(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,           \
                     size_t y_stride)                                                                      \
    {                                                                                                      \
        int r = 0;                                                                                         \
        for (; r + 2 <= nx; r += 2)                                                                        \
            dot_float_m(kind, k, w, ROW(x, r, x_stride), x_stride, y + (size_t)r * y_stride, y_stride, 2); \
        if (r < nx)                                                                                        \
            dot_float_m(kind, k, w, ROW(x, r, x_stride), x_stride, y + (size_t)r * y_stride, y_stride, 1); \
    }

DOT_FLOAT(dot_f32_avx2, FK_F32)
DOT_FLOAT(dot_f16_avx2, FK_F16)
DOT_FLOAT(dot_bf16_avx2, FK_BF16)

/* ---------------------------------------------------------------------------------------------- */
/* Activation quantisers, byte-identical to the reference ones in quants.c                        */

static inline float hmax8_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline __m256 abs_ps(__m256 v)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

/* roundf (ties away from zero) of values with |v| < 2^23, exactly. */
static inline __m256 round_away_ps(__m256 v)
{
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 tie_or_more = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_and_ps(tie_or_more, one));
}

/* Pack 32 int32 (in four vectors, element order) into 32 bytes with signed saturation. */
static inline void store_i8x32(int8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d)
{
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i bytes = _mm256_packs_epi16(ab, cd);
    _mm256_storeu_si256((__m256i *)dst,
                        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

/* Q8_0 (with_sum false) or Q8_1 (true): blocks of 32, d = amax / 127, qs = roundf(x / d). */
static ALWAYS_INLINE void quant_q8_32(const float *x, void *dst, int64_t k, const bool with_sum)
{
    for (int64_t i = 0; i < k / CPU_QK; i++, x += CPU_QK) {
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(x + 8 * j);
            amax = _mm256_max_ps(amax, abs_ps(v[j]));
        }
        const float d = hmax8_ps(amax) / 127;
        const __m256 id = _mm256_set1_ps(d ? 1.0f / d : 0.0f);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvttps_epi32(round_away_ps(_mm256_mul_ps(v[j], id)));
        if (with_sum) {
            struct cpu_block_q8_1 *b = (struct cpu_block_q8_1 *)dst + i;
            b->d = kern_fp32_to_fp16(d);
            store_i8x32(b->qs, q[0], q[1], q[2], q[3]);
            const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
            b->s = kern_fp32_to_fp16(_mm_cvtsi128_si32(s4) * d);
        } else {
            struct cpu_block_q8_0 *b = (struct cpu_block_q8_0 *)dst + i;
            b->d = kern_fp32_to_fp16(d);
            store_i8x32(b->qs, q[0], q[1], q[2], q[3]);
        }
    }
}

static void from_float_q8_0_avx2(const float *x, void *dst, int64_t k)
{
    quant_q8_32(x, dst, k, false);
}

static void from_float_q8_1_avx2(const float *x, void *dst, int64_t k)
{
    quant_q8_32(x, dst, k, true);
}

/* Q8_K: the first element of largest magnitude maps to -127; round to nearest even like nearest_int. */
static void from_float_q8_K_avx2(const float *x, void *dst, int64_t k)
{
    struct cpu_block_q8_K *y = dst;
    for (int64_t i = 0; i < k / CPU_QK_K; i++, x += CPU_QK_K) {
        __m256 amax_v = _mm256_setzero_ps();
        for (int j = 0; j < CPU_QK_K; j += 8)
            amax_v = _mm256_max_ps(amax_v, abs_ps(_mm256_loadu_ps(x + j)));
        const float amax = hmax8_ps(amax_v);
        if (!amax) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        int first = 0;
        while (fabsf(x[first]) != amax)
            first++;
        const float iscale = -127.f / x[first];
        const __m256 is = _mm256_set1_ps(iscale);
        for (int j = 0; j < CPU_QK_K; j += 32) {
            __m256i q[4];
            for (int t = 0; t < 4; t++)
                q[t] = _mm256_cvtps_epi32(_mm256_mul_ps(is, _mm256_loadu_ps(x + j + 8 * t)));
            store_i8x32(y[i].qs + j, q[0], q[1], q[2], q[3]);
        }
        for (int g = 0; g < CPU_QK_K / 16; g++) {
            const __m128i b = _mm_loadu_si128((const __m128i *)(y[i].qs + 16 * g));
            const __m128i s16 = _mm_maddubs_epi16(_mm_set1_epi8(1), b);
            __m128i s32 = _mm_madd_epi16(s16, _mm_set1_epi16(1));
            s32 = _mm_add_epi32(s32, _mm_shuffle_epi32(s32, _MM_SHUFFLE(1, 0, 3, 2)));
            s32 = _mm_add_epi32(s32, _mm_shuffle_epi32(s32, _MM_SHUFFLE(2, 3, 0, 1)));
            y[i].bsums[g] = (int16_t)_mm_cvtsi128_si32(s32);
        }
        y[i].d = 1 / iscale;
    }
}

static void from_float_f16_avx2(const float *x, void *dst, int64_t k)
{
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < k; i++)
        y[i] = kern_fp32_to_fp16(x[i]);
}

cpu_dot_fn cpu_avx2_dot_kernel(enum spec_dtype wtype)
{
    switch (wtype) {
    case SPEC_F32:
        return dot_f32_avx2;
    case SPEC_F16:
        return dot_f16_avx2;
    case SPEC_BF16:
        return dot_bf16_avx2;
    case SPEC_Q4_0:
        return dot_q4_0_avx2;
    case SPEC_Q4_1:
        return dot_q4_1_avx2;
    case SPEC_Q5_0:
        return dot_q5_0_avx2;
    case SPEC_Q8_0:
        return dot_q8_0_avx2;
    case SPEC_Q4_K:
        return dot_q4_K_avx2;
    case SPEC_Q6_K:
        return dot_q6_K_avx2;
    default:
        return NULL;
    }
}

cpu_from_float_fn cpu_avx2_from_float_kernel(enum spec_dtype vtype)
{
    switch (vtype) {
    case SPEC_F16:
        return from_float_f16_avx2;
    case SPEC_Q8_0:
        return from_float_q8_0_avx2;
    case SPEC_Q8_1:
        return from_float_q8_1_avx2;
    case SPEC_Q8_K:
        return from_float_q8_K_avx2;
    default:
        return NULL;
    }
}
