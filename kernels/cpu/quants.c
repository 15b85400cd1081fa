/* Row codecs (ggml's reference quantisers and dequantisers), the scalar dot-product kernels and the
 * per-ISA kernel tables.
 *
 * The dot kernels fix one summation order that the SIMD kernels reproduce exactly:
 *  - 32-element block types: integer products are summed exactly, four adjacent elements per int32
 *    lane (the lanes of pmaddubsw + pmaddwd), and each block adds scale * lane into 8 float lanes
 *    (a multiply then an add, never fused); Q4_1's min term m * s is a separate scalar sum;
 *  - K-quants: a super-block's integer sum (and Q4_K's min sum) is exact in int32 however it is
 *    grouped, and one float accumulator takes d * sum (then subtracts dmin * mins) per super-block,
 *    so kernels that group the integer work differently (SIMD lanes, AMX tiles) agree bit for bit;
 *  - float types: 32 float lanes (four 8-wide accumulators), the tail in double, as ggml does;
 *  - float lanes are then reduced in the fixed order of hsum8().
 * This differs from ggml's scalar code only in how the exact integer sums are grouped into float
 * lanes, so results agree with ggml to float rounding. */
#include <cpuid.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Round to nearest, ties to even, for |v| < 2^22 (ggml's nearest_int). */
static inline int nearest_int(float v)
{
    float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

/* ---------------------------------------------------------------------------------------------- */
/* Dequantisation, bit-exact with ggml's dequantize_row_* (same expressions, same order)           */

static void dequant_q4_0(const void *src, float *y, int64_t nb)
{
    const struct cpu_block_q4_0 *x = src;
    for (int64_t i = 0; i < nb; i++, y += CPU_QK) {
        const float d = cpu_fp16_to_fp32(x[i].d);
        for (int j = 0; j < CPU_QK / 2; j++) {
            const int x0 = (x[i].qs[j] & 0x0f) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[j] = x0 * d;
            y[j + CPU_QK / 2] = x1 * d;
        }
    }
}

static void dequant_q4_1(const void *src, float *y, int64_t nb)
{
    const struct cpu_block_q4_1 *x = src;
    for (int64_t i = 0; i < nb; i++, y += CPU_QK) {
        const float d = cpu_fp16_to_fp32(x[i].d);
        const float m = cpu_fp16_to_fp32(x[i].m);
        for (int j = 0; j < CPU_QK / 2; j++) {
            const int x0 = x[i].qs[j] & 0x0f;
            const int x1 = x[i].qs[j] >> 4;
            y[j] = x0 * d + m;
            y[j + CPU_QK / 2] = x1 * d + m;
        }
    }
}

static void dequant_q5_0(const void *src, float *y, int64_t nb)
{
    const struct cpu_block_q5_0 *x = src;
    for (int64_t i = 0; i < nb; i++, y += CPU_QK) {
        const float d = cpu_fp16_to_fp32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof(qh));
        for (int j = 0; j < CPU_QK / 2; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10;
            const int h1 = (qh >> (j + 12)) & 0x10;
            const int x0 = ((x[i].qs[j] & 0x0f) | h0) - 16;
            const int x1 = ((x[i].qs[j] >> 4) | h1) - 16;
            y[j] = x0 * d;
            y[j + CPU_QK / 2] = x1 * d;
        }
    }
}

static void dequant_q8_0(const void *src, float *y, int64_t nb)
{
    const struct cpu_block_q8_0 *x = src;
    for (int64_t i = 0; i < nb; i++, y += CPU_QK) {
        const float d = cpu_fp16_to_fp32(x[i].d);
        for (int j = 0; j < CPU_QK; j++)
            y[j] = x[i].qs[j] * d;
    }
}

/* Scale and min of sub-block j (0..7) from the 12 packed bytes of a Q4_K block. */
static inline void q4_K_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dequant_q4_K(const void *src, float *y, int64_t nb)
{
    const struct cpu_block_q4_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = x[i].qs;
        const float d = cpu_fp16_to_fp32(x[i].d);
        const float dmin = cpu_fp16_to_fp32(x[i].dmin);
        for (int j = 0; j < 8; j += 2, q += 32) {
            uint8_t sc, m;
            q4_K_scale_min(j, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            q4_K_scale_min(j + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

/* The 6-bit value (0..63) of element e (0..255) of a Q6_K block. */
static inline int q6_K_value(const struct cpu_block_q6_K *b, int e)
{
    const int h = e / 128, l = e % 32, quarter = (e % 128) / 32;
    const uint8_t ql = b->ql[64 * h + l + 32 * (quarter & 1)];
    const int lo = quarter < 2 ? (ql & 0x0f) : (ql >> 4);
    const int hi = (b->qh[32 * h + l] >> (2 * quarter)) & 3;
    return lo | (hi << 4);
}

static void dequant_q6_K(const void *src, float *y, int64_t nb)
{
    const struct cpu_block_q6_K *x = src;
    for (int64_t i = 0; i < nb; i++, y += CPU_QK_K) {
        const float d = cpu_fp16_to_fp32(x[i].d);
        for (int e = 0; e < CPU_QK_K; e++) {
            const int8_t q = (int8_t)(q6_K_value(&x[i], e) - 32);
            y[e] = d * x[i].scales[e / 16] * q;
        }
    }
}

static void dequant_q8_K(const void *src, float *y, int64_t nb)
{
    const struct cpu_block_q8_K *x = src;
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < CPU_QK_K; j++)
            *y++ = x[i].d * x[i].qs[j];
}

/* ---------------------------------------------------------------------------------------------- */
/* Quantisation                                                                                    */

/* ggml's quantize_row_q4_0_ref: the value of largest magnitude maps to -8. */
static void quant_q4_0(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q4_0 *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < CPU_QK; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = kern_fp32_to_fp16(d);
        for (int j = 0; j < CPU_QK / 2; j++) {
            const int q0 = MIN(15, (int)(x[j] * id + 8.5f));
            const int q1 = MIN(15, (int)(x[j + CPU_QK / 2] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ggml's quantize_row_q4_1_ref: 16 steps from the minimum to the maximum. */
static void quant_q4_1(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q4_1 *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < CPU_QK; j++) {
            if (x[j] < min)
                min = x[j];
            if (x[j] > max)
                max = x[j];
        }
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = kern_fp32_to_fp16(d);
        y[i].m = kern_fp32_to_fp16(min);
        for (int j = 0; j < CPU_QK / 2; j++) {
            const int q0 = MIN(15, (int)((x[j] - min) * id + 0.5f));
            const int q1 = MIN(15, (int)((x[j + CPU_QK / 2] - min) * id + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ggml's quantize_row_q5_0_ref: the value of largest magnitude maps to -16. */
static void quant_q5_0(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q5_0 *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < CPU_QK; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = kern_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < CPU_QK / 2; j++) {
            const int q0 = MIN(31, (int)(x[j] * id + 16.5f));
            const int q1 = MIN(31, (int)(x[j + CPU_QK / 2] * id + 16.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
            qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + CPU_QK / 2);
        }
        memcpy(y[i].qh, &qh, sizeof(qh));
    }
}

/* ggml's quantize_row_q8_0_ref: symmetric, roundf (ties away from zero). */
static void quant_q8_0(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q8_0 *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK) {
        float amax = 0.0f;
        for (int j = 0; j < CPU_QK; j++)
            amax = MAX(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = kern_fp32_to_fp16(d);
        for (int j = 0; j < CPU_QK; j++)
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* ggml's quantize_row_q8_1_ref: Q8_0 plus s = d * sum(qs). */
static void quant_q8_1(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q8_1 *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK) {
        float amax = 0.0f;
        for (int j = 0; j < CPU_QK; j++)
            amax = MAX(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = kern_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < CPU_QK; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = kern_fp32_to_fp16(sum * d);
    }
}

/* ggml's quantize_row_q8_K_ref: the value of largest magnitude maps to -127, d stays fp32. */
static void quant_q8_K(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q8_K *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < CPU_QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < CPU_QK_K; j++)
            y[i].qs[j] = (int8_t)MIN(127, nearest_int(iscale * x[j]));
        for (int g = 0; g < CPU_QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++)
                sum += y[i].qs[16 * g + j];
            y[i].bsums[g] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

/* A simple Q4_K encoder (not ggml's optimiser): each 32-element sub-block spans [min(x, 0), max(x)]
 * in 15 steps; the sub-block scales and mins are then rounded to 6 bits of the block's maxima, and
 * the elements are rounded against those rounded scales. */
static void quant_q4_K(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q4_K *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK_K) {
        float scale[8], mins[8], max_scale = 0.0f, max_min = 0.0f;
        for (int j = 0; j < 8; j++) {
            float lo = 0.0f, hi = x[32 * j];
            for (int l = 0; l < 32; l++) {
                lo = MIN(lo, x[32 * j + l]);
                hi = MAX(hi, x[32 * j + l]);
            }
            scale[j] = (hi - lo) / 15;
            mins[j] = -lo;
            max_scale = MAX(max_scale, scale[j]);
            max_min = MAX(max_min, mins[j]);
        }
        y[i].d = kern_fp32_to_fp16(max_scale / 63);
        y[i].dmin = kern_fp32_to_fp16(max_min / 63);
        const float d = cpu_fp16_to_fp32(y[i].d), dmin = cpu_fp16_to_fp32(y[i].dmin);
        memset(y[i].scales, 0, sizeof(y[i].scales));
        uint8_t L[CPU_QK_K];
        for (int j = 0; j < 8; j++) {
            const int ls = d > 0 ? MIN(63, nearest_int(scale[j] / d)) : 0;
            const int lm = dmin > 0 ? MIN(63, nearest_int(mins[j] / dmin)) : 0;
            if (j < 4) {
                y[i].scales[j] = (uint8_t)ls;
                y[i].scales[j + 4] = (uint8_t)lm;
            } else {
                y[i].scales[j + 4] = (uint8_t)((ls & 0x0f) | ((lm & 0x0f) << 4));
                y[i].scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
                y[i].scales[j] |= (uint8_t)((lm >> 4) << 6);
            }
            const float d1 = d * ls, m1 = dmin * lm;
            for (int l = 0; l < 32; l++)
                L[32 * j + l] = d1 ? (uint8_t)MAX(0, MIN(15, nearest_int((x[32 * j + l] + m1) / d1))) : 0;
        }
        for (int p = 0; p < 4; p++)
            for (int l = 0; l < 32; l++)
                y[i].qs[32 * p + l] = (uint8_t)(L[64 * p + l] | (L[64 * p + 32 + l] << 4));
    }
}

/* A simple Q6_K encoder: each 16-element sub-block maps its value of largest magnitude to -32; the
 * sub-block scales are rounded to int8 steps of the block's largest, then the elements are rounded
 * against the rounded scales. */
static void quant_q6_K(const float *x, void *dst, int64_t nb)
{
    struct cpu_block_q6_K *y = dst;
    for (int64_t i = 0; i < nb; i++, x += CPU_QK_K) {
        float scale[16], amax_scale = 0.0f, max_scale = 0.0f;
        for (int g = 0; g < 16; g++) {
            float amax = 0.0f, max = 0.0f;
            for (int l = 0; l < 16; l++) {
                if (fabsf(x[16 * g + l]) > amax) {
                    amax = fabsf(x[16 * g + l]);
                    max = x[16 * g + l];
                }
            }
            scale[g] = max / -32;
            if (fabsf(scale[g]) > amax_scale) {
                amax_scale = fabsf(scale[g]);
                max_scale = scale[g];
            }
        }
        y[i].d = kern_fp32_to_fp16(max_scale / -128);
        const float d = cpu_fp16_to_fp32(y[i].d);
        uint8_t L[CPU_QK_K];
        for (int g = 0; g < 16; g++) {
            const int sc = d ? MAX(-128, MIN(127, nearest_int(scale[g] / d))) : 0;
            y[i].scales[g] = (int8_t)sc;
            const float dg = d * sc;
            for (int l = 0; l < 16; l++)
                L[16 * g + l] = (uint8_t)(32 + (dg ? MAX(-32, MIN(31, nearest_int(x[16 * g + l] / dg))) : 0));
        }
        for (int h = 0; h < 2; h++) {
            const uint8_t *Lh = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                y[i].ql[64 * h + l] = (uint8_t)((Lh[l] & 0x0f) | ((Lh[l + 64] & 0x0f) << 4));
                y[i].ql[64 * h + l + 32] = (uint8_t)((Lh[l + 32] & 0x0f) | ((Lh[l + 96] & 0x0f) << 4));
                y[i].qh[32 * h + l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                                ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Public row conversion                                                                           */

static void conv_f32_to_f32(const float *x, void *dst, int64_t n)
{
    memcpy(dst, x, (size_t)n * sizeof(float));
}

static void conv_f32_to_f16(const float *x, void *dst, int64_t n)
{
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = kern_fp32_to_fp16(x[i]);
}

static void conv_f32_to_bf16(const float *x, void *dst, int64_t n)
{
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = kern_fp32_to_bf16(x[i]);
}

static void conv_f16_to_f32(const void *src, float *y, int64_t n)
{
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++)
        y[i] = cpu_fp16_to_fp32(x[i]);
}

static void conv_bf16_to_f32(const void *src, float *y, int64_t n)
{
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++)
        y[i] = kern_bf16_to_fp32(x[i]);
}

static void conv_f32_from_f32(const void *src, float *y, int64_t n)
{
    memcpy(y, src, (size_t)n * sizeof(float));
}

/* Converters take a count of blocks; for the plain types a block is one element. */
struct codec {
    void (*dequant)(const void *src, float *dst, int64_t nb);
    void (*quant)(const float *src, void *dst, int64_t nb);
};

static const struct codec codecs[SPEC_DTYPE_COUNT] = {
    [SPEC_F32] = {conv_f32_from_f32, conv_f32_to_f32},
    [SPEC_F16] = {conv_f16_to_f32, conv_f32_to_f16},
    [SPEC_BF16] = {conv_bf16_to_f32, conv_f32_to_bf16},
    [SPEC_Q4_0] = {dequant_q4_0, quant_q4_0},
    [SPEC_Q4_1] = {dequant_q4_1, quant_q4_1},
    [SPEC_Q5_0] = {dequant_q5_0, quant_q5_0},
    [SPEC_Q8_0] = {dequant_q8_0, quant_q8_0},
    [SPEC_Q8_1] = {NULL, quant_q8_1},
    [SPEC_Q4_K] = {dequant_q4_K, quant_q4_K},
    [SPEC_Q6_K] = {dequant_q6_K, quant_q6_K},
    [SPEC_Q8_K] = {dequant_q8_K, quant_q8_K},
};

/* 0 and the block count, or the error for this type and length. */
static int check_row(enum spec_dtype type, int64_t n, bool quant, int64_t *nb)
{
    const struct kern_dtype_info *info = kern_dtype_info((uint32_t)type);
    if (!info)
        return SPEC_E_INVALID_ARG;
    if (quant ? !codecs[type].quant : !codecs[type].dequant)
        return SPEC_E_UNSUPPORTED;
    if (n < 0 || n % info->block_size)
        return SPEC_E_RANGE;
    *nb = n / info->block_size;
    return SPEC_OK;
}

int kern_dequantize_row(enum spec_dtype type, const void *src, float *dst, int64_t n)
{
    int64_t nb;
    int err = check_row(type, n, false, &nb);
    if (err)
        return err;
    codecs[type].dequant(src, dst, nb);
    return SPEC_OK;
}

int kern_quantize_row(enum spec_dtype type, const float *src, void *dst, int64_t n)
{
    int64_t nb;
    int err = check_row(type, n, true, &nb);
    if (err)
        return err;
    codecs[type].quant(src, dst, nb);
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Scalar dot kernels                                                                              */

/* The fixed reduction of 8 float lanes (the AVX2 kernels' horizontal sum). */
static inline float hsum8(const float a[8])
{
    const float b0 = a[0] + a[4], b1 = a[1] + a[5], b2 = a[2] + a[6], b3 = a[3] + a[7];
    return (b0 + b2) + (b1 + b3);
}

/* acc[l] += d * (sum of the products of elements 4l..4l+3) for one 32-element block. */
static inline void block32_accumulate(float acc[8], float d, const int8_t w[32], const int8_t x[32])
{
    for (int l = 0; l < 8; l++) {
        int s = 0;
        for (int k = 0; k < 4; k++)
            s += w[4 * l + k] * x[4 * l + k];
        acc[l] = acc[l] + d * (float)s;
    }
}

static void unpack_q4_0(const struct cpu_block_q4_0 *b, int8_t w[32])
{
    for (int j = 0; j < 16; j++) {
        w[j] = (int8_t)((b->qs[j] & 0x0f) - 8);
        w[j + 16] = (int8_t)((b->qs[j] >> 4) - 8);
    }
}

static void unpack_q4_1(const struct cpu_block_q4_1 *b, int8_t w[32])
{
    for (int j = 0; j < 16; j++) {
        w[j] = (int8_t)(b->qs[j] & 0x0f);
        w[j + 16] = (int8_t)(b->qs[j] >> 4);
    }
}

static void unpack_q5_0(const struct cpu_block_q5_0 *b, int8_t w[32])
{
    uint32_t qh;
    memcpy(&qh, b->qh, sizeof(qh));
    for (int j = 0; j < 16; j++) {
        w[j] = (int8_t)(((b->qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - 16);
        w[j + 16] = (int8_t)(((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
    }
}

#define ROW(base, r, stride) ((const void *)((const char *)(base) + (size_t)(r) * (stride)))

static void dot_q4_0_scalar(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,
                            size_t y_stride)
{
    const struct cpu_block_q4_0 *wb = w;
    for (int r = 0; r < nx; r++) {
        const struct cpu_block_q8_0 *xb = ROW(x, r, x_stride);
        float acc[8] = {0};
        int8_t q[32];
        for (int64_t i = 0; i < k / CPU_QK; i++) {
            unpack_q4_0(&wb[i], q);
            block32_accumulate(acc, cpu_fp16_to_fp32(wb[i].d) * cpu_fp16_to_fp32(xb[i].d), q, xb[i].qs);
        }
        y[r * y_stride] = hsum8(acc);
    }
}

static void dot_q4_1_scalar(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,
                            size_t y_stride)
{
    const struct cpu_block_q4_1 *wb = w;
    for (int r = 0; r < nx; r++) {
        const struct cpu_block_q8_1 *xb = ROW(x, r, x_stride);
        float acc[8] = {0}, summ = 0.0f;
        int8_t q[32];
        for (int64_t i = 0; i < k / CPU_QK; i++) {
            unpack_q4_1(&wb[i], q);
            block32_accumulate(acc, cpu_fp16_to_fp32(wb[i].d) * cpu_fp16_to_fp32(xb[i].d), q, xb[i].qs);
            summ = summ + cpu_fp16_to_fp32(wb[i].m) * cpu_fp16_to_fp32(xb[i].s);
        }
        y[r * y_stride] = hsum8(acc) + summ;
    }
}

static void dot_q5_0_scalar(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,
                            size_t y_stride)
{
    const struct cpu_block_q5_0 *wb = w;
    for (int r = 0; r < nx; r++) {
        const struct cpu_block_q8_0 *xb = ROW(x, r, x_stride);
        float acc[8] = {0};
        int8_t q[32];
        for (int64_t i = 0; i < k / CPU_QK; i++) {
            unpack_q5_0(&wb[i], q);
            block32_accumulate(acc, cpu_fp16_to_fp32(wb[i].d) * cpu_fp16_to_fp32(xb[i].d), q, xb[i].qs);
        }
        y[r * y_stride] = hsum8(acc);
    }
}

static void dot_q8_0_scalar(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,
                            size_t y_stride)
{
    const struct cpu_block_q8_0 *wb = w;
    for (int r = 0; r < nx; r++) {
        const struct cpu_block_q8_0 *xb = ROW(x, r, x_stride);
        float acc[8] = {0};
        for (int64_t i = 0; i < k / CPU_QK; i++)
            block32_accumulate(acc, cpu_fp16_to_fp32(wb[i].d) * cpu_fp16_to_fp32(xb[i].d), wb[i].qs, xb[i].qs);
        y[r * y_stride] = hsum8(acc);
    }
}

/* Q4_K: a super-block's sum of scale_j * (products of sub-block j) and its sum of
 * min_j * (activation sum of sub-block j), both exact in int32 (at most 256 * 15 * 127 * 63 and
 * 63 * 8 * 32 * 127), enter the accumulator as d * sum, then - dmin * mins. */
static void dot_q4_K_scalar(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,
                            size_t y_stride)
{
    const struct cpu_block_q4_K *wb = w;
    for (int r = 0; r < nx; r++) {
        const struct cpu_block_q8_K *xb = ROW(x, r, x_stride);
        float acc = 0.0f;
        for (int64_t i = 0; i < k / CPU_QK_K; i++) {
            int32_t sum = 0, mins = 0;
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                q4_K_scale_min(j, wb[i].scales, &sc, &m);
                const uint8_t *q4 = wb[i].qs + 32 * (j / 2);
                const int8_t *q8 = xb[i].qs + 32 * j;
                int32_t s = 0;
                for (int t = 0; t < 32; t++)
                    s += ((j & 1) ? q4[t] >> 4 : q4[t] & 0x0f) * q8[t];
                sum += sc * s;
                mins += m * (xb[i].bsums[2 * j] + xb[i].bsums[2 * j + 1]);
            }
            const float d = cpu_fp16_to_fp32(wb[i].d) * xb[i].d;
            const float dmin = cpu_fp16_to_fp32(wb[i].dmin) * xb[i].d;
            acc = (acc + d * (float)sum) - dmin * (float)mins;
        }
        y[r * y_stride] = acc;
    }
}

/* Q6_K: a super-block's sum of scale_g * (products of (q - 32) * x over 16-element group g), exact
 * in int32, enters the accumulator as d * sum. */
static void dot_q6_K_scalar(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,
                            size_t y_stride)
{
    const struct cpu_block_q6_K *wb = w;
    for (int r = 0; r < nx; r++) {
        const struct cpu_block_q8_K *xb = ROW(x, r, x_stride);
        float acc = 0.0f;
        for (int64_t i = 0; i < k / CPU_QK_K; i++) {
            int32_t sum = 0;
            for (int g = 0; g < 16; g++) {
                int32_t s = 0;
                for (int t = 16 * g; t < 16 * g + 16; t++)
                    s += (q6_K_value(&wb[i], t) - 32) * xb[i].qs[t];
                sum += wb[i].scales[g] * s;
            }
            acc = acc + cpu_fp16_to_fp32(wb[i].d) * xb[i].d * (float)sum;
        }
        y[r * y_stride] = acc;
    }
}

/* Float dots: element i adds into lane i % 32 over whole 32-element chunks; the four 8-lane
 * accumulators are combined as (a0 + a2) + (a1 + a3), reduced with hsum8, and the tail is added in
 * double as ggml does. */
#define FLOAT_DOT_SCALAR(name, T, CONV)                                                                    \
    static void name(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,           \
                     size_t y_stride)                                                                      \
    {                                                                                                      \
        const T *a = w;                                                                                    \
        const int64_t kmain = k - k % 32;                                                                  \
        for (int r = 0; r < nx; r++) {                                                                     \
            const T *b = ROW(x, r, x_stride);                                                              \
            float acc[32] = {0}, lanes[8];                                                                 \
            for (int64_t i = 0; i < kmain; i += 32)                                                        \
                for (int l = 0; l < 32; l++)                                                               \
                    acc[l] = acc[l] + CONV(a[i + l]) * CONV(b[i + l]);                                     \
            for (int l = 0; l < 8; l++)                                                                    \
                lanes[l] = (acc[l] + acc[l + 16]) + (acc[l + 8] + acc[l + 24]);                            \
            double sum = hsum8(lanes);                                                                     \
            for (int64_t i = kmain; i < k; i++)                                                            \
                sum += (double)(CONV(a[i]) * CONV(b[i]));                                                  \
            y[r * y_stride] = (float)sum;                                                                  \
        }                                                                                                  \
    }

#define CONV_F32(v) (v)
FLOAT_DOT_SCALAR(dot_f32_scalar, float, CONV_F32)
FLOAT_DOT_SCALAR(dot_f16_scalar, uint16_t, cpu_fp16_to_fp32)
FLOAT_DOT_SCALAR(dot_bf16_scalar, uint16_t, kern_bf16_to_fp32)

/* ---------------------------------------------------------------------------------------------- */
/* Kernel tables and ISA selection                                                                 */

enum spec_dtype cpu_vec_dot_type(enum spec_dtype wtype)
{
    switch (wtype) {
    case SPEC_F32:
    case SPEC_F16:
    case SPEC_BF16:
        return wtype;
    case SPEC_Q4_0:
    case SPEC_Q5_0:
    case SPEC_Q8_0:
        return SPEC_Q8_0;
    case SPEC_Q4_1:
        return SPEC_Q8_1;
    case SPEC_Q4_K:
    case SPEC_Q6_K:
        return SPEC_Q8_K;
    default:
        return SPEC_DTYPE_COUNT;
    }
}

static cpu_dot_fn dot_kernel_scalar(enum spec_dtype wtype)
{
    switch (wtype) {
    case SPEC_F32:
        return dot_f32_scalar;
    case SPEC_F16:
        return dot_f16_scalar;
    case SPEC_BF16:
        return dot_bf16_scalar;
    case SPEC_Q4_0:
        return dot_q4_0_scalar;
    case SPEC_Q4_1:
        return dot_q4_1_scalar;
    case SPEC_Q5_0:
        return dot_q5_0_scalar;
    case SPEC_Q8_0:
        return dot_q8_0_scalar;
    case SPEC_Q4_K:
        return dot_q4_K_scalar;
    case SPEC_Q6_K:
        return dot_q6_K_scalar;
    default:
        return NULL;
    }
}

/* Activation converters work on element counts; the block codecs take block counts. */
static void from_float_q8_0(const float *x, void *dst, int64_t k)
{
    quant_q8_0(x, dst, k / CPU_QK);
}

static void from_float_q8_1(const float *x, void *dst, int64_t k)
{
    quant_q8_1(x, dst, k / CPU_QK);
}

static void from_float_q8_K(const float *x, void *dst, int64_t k)
{
    quant_q8_K(x, dst, k / CPU_QK_K);
}

static cpu_from_float_fn from_float_kernel_scalar(enum spec_dtype vtype)
{
    switch (vtype) {
    case SPEC_F32:
        return conv_f32_to_f32;
    case SPEC_F16:
        return conv_f32_to_f16;
    case SPEC_BF16:
        return conv_f32_to_bf16;
    case SPEC_Q8_0:
        return from_float_q8_0;
    case SPEC_Q8_1:
        return from_float_q8_1;
    case SPEC_Q8_K:
        return from_float_q8_K;
    default:
        return NULL;
    }
}

int cpu_act_row_bytes(enum spec_dtype vtype, int64_t k, size_t *out)
{
    uint64_t bytes;
    if (k < 0 || !from_float_kernel_scalar(vtype) || kern_row_bytes((uint32_t)vtype, (uint64_t)k, &bytes))
        return SPEC_E_RANGE;
    if (vtype == SPEC_Q8_0 || vtype == SPEC_Q8_1) {
        if (bytes > SIZE_MAX / 4)
            return SPEC_E_RANGE;
        const size_t floats = (size_t)(k / CPU_QK) * (vtype == SPEC_Q8_1 ? 2 : 1);
        *out = (cpu_act_scales_offset(vtype, k) + floats * sizeof(float) + 31) & ~(size_t)31;
    } else {
        *out = (size_t)bytes;
    }
    return SPEC_OK;
}

void cpu_act_fill_scales(enum spec_dtype vtype, void *row, int64_t k, int64_t b0, int64_t b1)
{
    if (vtype != SPEC_Q8_0 && vtype != SPEC_Q8_1)
        return;
    float *scales = (float *)((char *)row + cpu_act_scales_offset(vtype, k));
    for (int64_t i = b0; i < b1; i++) {
        if (vtype == SPEC_Q8_0) {
            scales[i] = cpu_fp16_to_fp32(((const struct cpu_block_q8_0 *)row)[i].d);
        } else {
            scales[2 * i] = cpu_fp16_to_fp32(((const struct cpu_block_q8_1 *)row)[i].d);
            scales[2 * i + 1] = cpu_fp16_to_fp32(((const struct cpu_block_q8_1 *)row)[i].s);
        }
    }
}

/* Linux's arch_prctl request for a dynamically enabled state component (asm/prctl.h), and AMX tile
 * data's component number. */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Each ISA's kernel where it has one, else the next narrower ISA's. */
cpu_dot_fn cpu_dot_kernel(enum spec_dtype wtype, enum cpu_isa isa)
{
    if (!cpu_isa_available(isa))
        return NULL;
    cpu_dot_fn fn = NULL;
    if (isa >= CPU_ISA_AVX512)
        fn = cpu_avx512_dot_kernel(wtype);
    if (!fn && isa >= CPU_ISA_AVX2)
        fn = cpu_avx2_dot_kernel(wtype);
    return fn ? fn : dot_kernel_scalar(wtype);
}

cpu_tile_fn cpu_tile_kernel(enum spec_dtype wtype, enum cpu_isa isa, int64_t n)
{
    return isa == CPU_ISA_AMX && cpu_isa_available(isa) ? cpu_amx_tile_kernel(wtype, n) : NULL;
}

cpu_from_float_fn cpu_from_float_kernel(enum spec_dtype vtype, enum cpu_isa isa)
{
    if (!cpu_isa_available(isa))
        return NULL;
    cpu_from_float_fn fn = isa >= CPU_ISA_AVX2 ? cpu_avx2_from_float_kernel(vtype) : NULL;
    return fn ? fn : from_float_kernel_scalar(vtype);
}

/* What this CPU has, found once: the kernel lookups of every matmul ask, and CPUID traps to the
 * hypervisor in a VM. */
static bool isa_present[CPU_ISA_COUNT];
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

static void isa_detect(void)
{
    __builtin_cpu_init();
    /* F16C from CPUID: clang before 16 does not know __builtin_cpu_supports("f16c"). */
    unsigned a, b, c, d;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    isa_present[CPU_ISA_SCALAR] = true;
    isa_present[CPU_ISA_AVX2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    isa_present[CPU_ISA_AVX512] = isa_present[CPU_ISA_AVX2] && __builtin_cpu_supports("avx512f") &&
                                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    /* AMX: CPUID.7.0:EDX bits 24 (TILE) and 25 (INT8), the OS saving tile state (XCR0 bits 17, 18),
     * and Linux's per-process permission to use tile data, asked for once here. */
    const bool amx_cpu = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 25)) &&
                         __get_cpuid(1, &a, &b, &c, &d) && (c & bit_OSXSAVE);
    if (isa_present[CPU_ISA_AVX512] && amx_cpu) {
        uint32_t xcr0_lo, xcr0_hi;
        __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
        isa_present[CPU_ISA_AMX] = (xcr0_lo & (3u << 17)) == (3u << 17) &&
                                   syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }
}

bool cpu_isa_available(enum cpu_isa isa)
{
    pthread_once(&detect_once, isa_detect);
    return isa >= 0 && isa < CPU_ISA_COUNT && isa_present[isa];
}

const char *cpu_isa_name(enum cpu_isa isa)
{
    static const char *const names[CPU_ISA_COUNT] = {"scalar", "avx2", "avx512", "amx"};
    return isa >= 0 && isa < CPU_ISA_COUNT ? names[isa] : NULL;
}

static enum cpu_isa active_isa;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void isa_init(void)
{
    const char *env = getenv("SPECD_CPU_ISA");
    active_isa = CPU_ISA_SCALAR;
    for (int i = CPU_ISA_SCALAR; i < CPU_ISA_COUNT; i++) {
        const enum cpu_isa isa = (enum cpu_isa)i;
        if (env && strcmp(env, cpu_isa_name(isa)) == 0 && cpu_isa_available(isa)) {
            active_isa = isa; /* the one asked for */
            return;
        }
        if (cpu_isa_available(isa))
            active_isa = isa; /* else the widest */
    }
}

enum cpu_isa cpu_isa_active(void)
{
    pthread_once(&isa_once, isa_init);
    return active_isa;
}

int cpu_isa_set(enum cpu_isa isa)
{
    pthread_once(&isa_once, isa_init);
    if (!cpu_isa_available(isa))
        return SPEC_E_UNSUPPORTED;
    active_isa = isa;
    return SPEC_OK;
}
