/* Helpers shared by the kernel tests: a seeded generator and random rows and weight blocks. */
#ifndef SPECD_TESTS_KERNELS_KERN_TEST_H
#define SPECD_TESTS_KERNELS_KERN_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"

/* The nine types the CPU kernels compute with. */
static const enum spec_dtype kt_cpu_types[] = {SPEC_F32,  SPEC_F16,  SPEC_BF16, SPEC_Q4_0, SPEC_Q4_1,
                                               SPEC_Q5_0, SPEC_Q8_0, SPEC_Q4_K, SPEC_Q6_K};
#define KT_N_CPU_TYPES (sizeof(kt_cpu_types) / sizeof(kt_cpu_types[0]))

/* xorshift64*: reproducible across runs and platforms */
static inline uint64_t kt_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* uniform in [0, 1) */
static inline float kt_uniform(uint64_t *s)
{
    return (float)(kt_next(s) >> 40) * (1.0f / 16777216.0f);
}

/* roughly normal (sum of uniforms), mean 0, deviation 1 */
static inline float kt_normal(uint64_t *s)
{
    float v = 0.0f;
    for (int i = 0; i < 4; i++)
        v += kt_uniform(s);
    return (v - 2.0f) * 1.7320508f;
}

static inline void kt_fill_normal(uint64_t *s, float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = kt_normal(s) * scale;
}

/* Byte offsets of the fp16 scale fields in a block. */
static inline int kt_scale_offsets(enum spec_dtype t, int off[2])
{
    switch (t) {
    case SPEC_Q4_0:
    case SPEC_Q5_0:
    case SPEC_Q8_0:
        off[0] = 0;
        return 1;
    case SPEC_Q4_1:
    case SPEC_Q4_K:
        off[0] = 0;
        off[1] = 2;
        return 2;
    case SPEC_Q6_K:
        off[0] = 208;
        return 1;
    default:
        return 0;
    }
}

/* A row of n elements of type t: either quantised from random floats or random bytes with finite
 * fp16 scales (which reach extreme codes such as -128 in Q8_0 or a -128 scale in Q6_K). */
static inline void kt_random_row(uint64_t *s, enum spec_dtype t, int64_t n, void *dst, int raw_bytes)
{
    const struct kern_dtype_info *info = kern_dtype_info(t);
    uint64_t bytes = 0;
    kern_row_bytes(t, (uint64_t)n, &bytes);
    if (!raw_bytes || info->block_size == 1) {
        float *x = malloc((size_t)n * sizeof(float));
        kt_fill_normal(s, x, n, 0.5f);
        kern_quantize_row(t, x, dst, n);
        free(x);
        return;
    }
    uint8_t *b = dst;
    for (uint64_t i = 0; i < bytes; i++)
        b[i] = (uint8_t)kt_next(s);
    int off[2];
    const int n_off = kt_scale_offsets(t, off);
    for (uint64_t blk = 0; blk < bytes / info->type_size; blk++) {
        for (int f = 0; f < n_off; f++) {
            const uint16_t h = kern_fp32_to_fp16((kt_uniform(s) - 0.5f) * 0.02f);
            memcpy(b + blk * info->type_size + off[f], &h, 2);
        }
    }
}

#endif
