/* Tensor data types: ggml's block sizes and type sizes, row sizes, and the scalar fp16/bf16 conversions. */
#include <stdint.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"

/* Block and type sizes as in ggml's type_traits (ggml.c) and the block structs of ggml-common.h.
 * Q8_1 is 36 bytes (two fp16 fields) as in ggml; gguf-py's table still says 40. */
static const struct kern_dtype_info dtype_table[SPEC_DTYPE_COUNT] = {
    [SPEC_F32] = {"F32", 1, 4, true},
    [SPEC_F16] = {"F16", 1, 2, true},
    [SPEC_Q4_0] = {"Q4_0", 32, 18, true},
    [SPEC_Q4_1] = {"Q4_1", 32, 20, true},
    [SPEC_Q5_0] = {"Q5_0", 32, 22, true},
    [SPEC_Q5_1] = {"Q5_1", 32, 24, false},
    [SPEC_Q8_0] = {"Q8_0", 32, 34, true},
    [SPEC_Q8_1] = {"Q8_1", 32, 36, false},
    [SPEC_Q2_K] = {"Q2_K", 256, 84, false},
    [SPEC_Q3_K] = {"Q3_K", 256, 110, false},
    [SPEC_Q4_K] = {"Q4_K", 256, 144, true},
    [SPEC_Q5_K] = {"Q5_K", 256, 176, false},
    [SPEC_Q6_K] = {"Q6_K", 256, 210, true},
    [SPEC_Q8_K] = {"Q8_K", 256, 292, false},
    [SPEC_IQ2_XXS] = {"IQ2_XXS", 256, 66, false},
    [SPEC_IQ2_XS] = {"IQ2_XS", 256, 74, false},
    [SPEC_IQ3_XXS] = {"IQ3_XXS", 256, 98, false},
    [SPEC_IQ1_S] = {"IQ1_S", 256, 50, false},
    [SPEC_IQ4_NL] = {"IQ4_NL", 32, 18, false},
    [SPEC_IQ3_S] = {"IQ3_S", 256, 110, false},
    [SPEC_IQ2_S] = {"IQ2_S", 256, 82, false},
    [SPEC_IQ4_XS] = {"IQ4_XS", 256, 136, false},
    [SPEC_I8] = {"I8", 1, 1, false},
    [SPEC_I16] = {"I16", 1, 2, false},
    [SPEC_I32] = {"I32", 1, 4, false},
    [SPEC_I64] = {"I64", 1, 8, false},
    [SPEC_F64] = {"F64", 1, 8, false},
    [SPEC_IQ1_M] = {"IQ1_M", 256, 56, false},
    [SPEC_BF16] = {"BF16", 1, 2, true},
    [SPEC_TQ1_0] = {"TQ1_0", 256, 54, false},
    [SPEC_TQ2_0] = {"TQ2_0", 256, 66, false},
};

const struct kern_dtype_info *kern_dtype_info(uint32_t type)
{
    if (type >= SPEC_DTYPE_COUNT || !dtype_table[type].name)
        return NULL;
    return &dtype_table[type];
}

int kern_row_bytes(uint32_t type, uint64_t n, uint64_t *out)
{
    const struct kern_dtype_info *info = kern_dtype_info(type);
    if (!info || !out)
        return SPEC_E_INVALID_ARG;
    if (n % info->block_size)
        return SPEC_E_RANGE;
    uint64_t blocks = n / info->block_size;
    if (blocks > UINT64_MAX / info->type_size)
        return SPEC_E_RANGE;
    *out = blocks * info->type_size;
    return SPEC_OK;
}

int kern_tensor_bytes(uint32_t type, int64_t ne0, int64_t ne1, size_t *row_bytes, size_t *total)
{
    uint64_t rb;
    if (ne0 <= 0 || ne1 <= 0 || !row_bytes || !total)
        return SPEC_E_RANGE;
    const int err = kern_row_bytes(type, (uint64_t)ne0, &rb);
    if (err)
        return err;
    if (rb > SIZE_MAX / (uint64_t)ne1)
        return SPEC_E_RANGE;
    *row_bytes = (size_t)rb;
    *total = (size_t)rb * (size_t)ne1;
    return SPEC_OK;
}

float kern_fp16_to_fp32(uint16_t h)
{
    return cpu_fp16_to_fp32(h);
}

/* Round to nearest even like F16C's vcvtps2ph with imm 0: overflow goes to infinity, a NaN stays a
 * NaN with the quiet bit set and the top of its payload kept. */
uint16_t kern_fp32_to_fp16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffff;
    if (x > 0x7f800000)
        return sign | 0x7e00 | (uint16_t)((x >> 13) & 0x3ff);
    if (x >= 0x477ff000) /* 65520 and up round to infinity */
        return sign | 0x7c00;
    if (x >= 0x38800000) { /* normal half: rebias the exponent, round on bit 13 */
        x += 0xc8000fffu + ((x >> 13) & 1);
        return sign | (uint16_t)(x >> 13);
    }
    /* Subnormal half or zero: adding 0.5f makes the FPU round at the half's subnormal quantum. */
    float mag, half = 0.5f;
    uint32_t bits, half_bits;
    memcpy(&mag, &x, sizeof(mag));
    mag += half;
    memcpy(&bits, &mag, sizeof(bits));
    memcpy(&half_bits, &half, sizeof(half_bits));
    return sign | (uint16_t)(bits - half_bits);
}

float kern_bf16_to_fp32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* ggml_compute_fp32_to_bf16: round to nearest even, NaN forced quiet, subnormals kept. */
uint16_t kern_fp32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 64);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}
