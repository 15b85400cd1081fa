/* Tensor types and row codecs: sizes as ggml, fp16/bf16 conversions as F16C and ggml, dequantisation
 * and reference quantisation bit-exact with gguf-py (fixtures from tools/fixtures/gen_quant_fixtures.py),
 * round-trip error bounds, and the AVX2 activation quantisers byte-identical to the scalar ones. */
#include <criterion/criterion.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "tests/kernels/kern_test.h"

/* ---------------------------------------------------------------------------------------------- */
/* Type table                                                                                      */

Test(dtype, sizes_match_ggml_type_traits)
{
    static const struct {
        uint32_t type;
        const char *name;
        uint32_t block, size;
    } want[] = {
        {0, "F32", 1, 4},          {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
        {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 36},
        {10, "Q2_K", 256, 84},     {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
        {14, "Q6_K", 256, 210},    {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
        {18, "IQ3_XXS", 256, 98},  {19, "IQ1_S", 256, 50},   {20, "IQ4_NL", 32, 18},  {21, "IQ3_S", 256, 110},
        {22, "IQ2_S", 256, 82},    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},        {25, "I16", 1, 2},
        {26, "I32", 1, 4},         {27, "I64", 1, 8},        {28, "F64", 1, 8},       {29, "IQ1_M", 256, 56},
        {30, "BF16", 1, 2},        {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const struct kern_dtype_info *info = kern_dtype_info(want[i].type);
        cr_assert_not_null(info, "type %u", want[i].type);
        cr_expect_str_eq(info->name, want[i].name);
        cr_expect_eq(info->block_size, want[i].block, "%s block size", want[i].name);
        cr_expect_eq(info->type_size, want[i].size, "%s type size", want[i].name);
    }
    const uint32_t removed[] = {4, 5, 31, 32, 33, 36, 1000};
    for (size_t i = 0; i < sizeof(removed) / sizeof(removed[0]); i++)
        cr_expect_null(kern_dtype_info(removed[i]), "type %u", removed[i]);
}

Test(dtype, cpu_flag_marks_exactly_the_computed_types)
{
    int n_cpu = 0;
    for (uint32_t t = 0; t < SPEC_DTYPE_COUNT; t++) {
        const struct kern_dtype_info *info = kern_dtype_info(t);
        if (!info || !info->cpu)
            continue;
        n_cpu++;
        bool listed = false;
        for (size_t i = 0; i < KT_N_CPU_TYPES; i++)
            listed |= kt_cpu_types[i] == (enum spec_dtype)t;
        cr_expect(listed, "%s is marked cpu", info->name);
    }
    cr_expect_eq(n_cpu, (int)KT_N_CPU_TYPES);
}

Test(dtype, row_bytes_counts_blocks)
{
    uint64_t b = 0;
    cr_assert_eq(kern_row_bytes(SPEC_Q4_K, 4096, &b), 0);
    cr_expect_eq(b, 16 * 144);
    cr_assert_eq(kern_row_bytes(SPEC_F16, 7, &b), 0);
    cr_expect_eq(b, 14);
    cr_assert_eq(kern_row_bytes(SPEC_Q8_0, 0, &b), 0);
    cr_expect_eq(b, 0);
}

Test(dtype, row_bytes_rejects_partial_blocks_overflow_and_unknown_types)
{
    uint64_t b = 12345;
    cr_expect_eq(kern_row_bytes(SPEC_Q4_0, 33, &b), SPEC_E_RANGE);
    cr_expect_eq(kern_row_bytes(SPEC_Q6_K, 255, &b), SPEC_E_RANGE);
    cr_expect_eq(kern_row_bytes(SPEC_F32, UINT64_C(1) << 62, &b), SPEC_E_RANGE);
    cr_expect_eq(kern_row_bytes(SPEC_F64, UINT64_MAX, &b), SPEC_E_RANGE);
    cr_expect_eq(kern_row_bytes(SPEC_Q8_0, UINT64_MAX - UINT64_MAX % 32, &b), SPEC_E_RANGE);
    cr_expect_eq(kern_row_bytes(4, 32, &b), SPEC_E_INVALID_ARG);
    cr_expect_eq(kern_row_bytes(SPEC_DTYPE_COUNT, 32, &b), SPEC_E_INVALID_ARG);
    cr_expect_eq(b, 12345, "out untouched on error");
    /* the largest row that fits */
    cr_assert_eq(kern_row_bytes(SPEC_F32, UINT64_MAX / 4, &b), 0);
    cr_expect_eq(b, (UINT64_MAX / 4) * 4);
}

/* ---------------------------------------------------------------------------------------------- */
/* fp16 / bf16                                                                                     */

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

Test(fp16, known_values)
{
    cr_expect_eq(f2u(kern_fp16_to_fp32(0x3c00)), f2u(1.0f));
    cr_expect_eq(f2u(kern_fp16_to_fp32(0xc000)), f2u(-2.0f));
    cr_expect_eq(f2u(kern_fp16_to_fp32(0x7bff)), f2u(65504.0f));
    cr_expect_eq(f2u(kern_fp16_to_fp32(0x0001)), f2u(ldexpf(1.0f, -24)), "smallest subnormal");
    cr_expect_eq(f2u(kern_fp16_to_fp32(0x83ff)), f2u(-ldexpf(1023.0f, -24)), "largest negative subnormal");
    cr_expect_eq(f2u(kern_fp16_to_fp32(0x8000)), 0x80000000u, "negative zero");
    cr_expect_eq(f2u(kern_fp16_to_fp32(0x7c00)), 0x7f800000u);
    cr_expect(isnan(kern_fp16_to_fp32(0x7c01)));
    cr_expect_eq(kern_fp32_to_fp16(1.0f), 0x3c00);
    cr_expect_eq(kern_fp32_to_fp16(65504.0f), 0x7bff);
    cr_expect_eq(kern_fp32_to_fp16(65519.99f), 0x7bff);
    cr_expect_eq(kern_fp32_to_fp16(65520.0f), 0x7c00, "halfway to 65536 rounds to even: infinity");
    cr_expect_eq(kern_fp32_to_fp16(ldexpf(3.0f, -25)), 0x0002, "subnormal tie rounds to even");
    cr_expect_eq(kern_fp32_to_fp16(ldexpf(1.0f, -25)), 0x0000, "half the smallest subnormal: tie to zero");
    cr_expect_eq(kern_fp32_to_fp16(1.0f + ldexpf(1.0f, -11)), 0x3c00, "tie to even");
    cr_expect_eq(kern_fp32_to_fp16(1.0f + ldexpf(3.0f, -11)), 0x3c02, "tie to even, upwards");
    cr_expect_eq(kern_fp32_to_fp16(-0.0f), 0x8000);
    cr_expect_eq(kern_fp32_to_fp16(u2f(0x7fc00000)) & 0x7e00, 0x7e00, "NaN stays a quiet NaN");
}

__attribute__((target("f16c"))) static uint32_t hw_h2f(uint16_t h)
{
    return f2u(_cvtsh_ss(h));
}

__attribute__((target("f16c"))) static uint16_t hw_f2h(float f)
{
    return (uint16_t)_cvtss_sh(f, 0);
}

Test(fp16, to_fp32_matches_f16c_for_all_65536_values)
{
    if (!cpu_isa_available(CPU_ISA_AVX2)) /* which includes F16C */
        cr_skip_test("this CPU has no F16C to compare against");
    for (uint32_t h = 0; h < 0x10000; h++)
        cr_assert_eq(f2u(kern_fp16_to_fp32((uint16_t)h)), hw_h2f((uint16_t)h), "half 0x%04x", h);
}

Test(fp16, from_fp32_matches_f16c_across_the_float_range)
{
    if (!cpu_isa_available(CPU_ISA_AVX2)) /* which includes F16C */
        cr_skip_test("this CPU has no F16C to compare against");
    /* every 97th bit pattern, including NaNs, plus every pattern near the half boundaries */
    for (uint64_t u = 0; u <= 0xffffffffu; u += 97)
        cr_assert_eq(kern_fp32_to_fp16(u2f((uint32_t)u)), hw_f2h(u2f((uint32_t)u)), "float 0x%08x", (unsigned)u);
    for (uint32_t h = 0; h < 0x8000; h++) {
        const uint32_t c = f2u(kern_fp16_to_fp32((uint16_t)h));
        for (uint32_t d = 0; d < 8192 + 2; d += 97 / 8 + 1) {
            for (int sgn = 0; sgn < 2; sgn++) {
                const uint32_t u = (c + d) | (sgn ? 0x80000000u : 0);
                cr_assert_eq(kern_fp32_to_fp16(u2f(u)), hw_f2h(u2f(u)), "float 0x%08x", u);
            }
        }
        const uint32_t mid = c + 0x1000; /* exact ties between two halves */
        cr_assert_eq(kern_fp32_to_fp16(u2f(mid)), hw_f2h(u2f(mid)), "tie 0x%08x", mid);
    }
}

Test(bf16, rounds_to_nearest_even_and_quiets_nan_like_ggml)
{
    cr_expect_eq(kern_fp32_to_bf16(1.0f), 0x3f80);
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x3f808000)), 0x3f80, "tie to even (down)");
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x3f818000)), 0x3f82, "tie to even (up)");
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x3f808001)), 0x3f81);
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x00000001)), 0x0000, "subnormal rounds, not flushed specially");
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x00008000)), 0x0000);
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x00018000)), 0x0002);
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x7f7fffff)), 0x7f80, "overflow to infinity");
    cr_expect_eq(kern_fp32_to_bf16(u2f(0x7f800001)), 0x7fc0, "signalling NaN made quiet");
    cr_expect_eq(kern_fp32_to_bf16(u2f(0xffc12345)), 0xffc1);
    cr_expect_eq(f2u(kern_bf16_to_fp32(0xc0a0)), f2u(-5.0f));
}

/* ---------------------------------------------------------------------------------------------- */
/* gguf-py fixtures                                                                                */

struct fixture {
    uint32_t type, n_blocks, block_size, type_size, flags;
    uint8_t *blocks;  /* n_blocks * type_size */
    float *values;    /* n_blocks * block_size */
    float *q_inputs;  /* quantise section, or NULL */
    uint8_t *q_blocks;
    uint8_t *file;
};

static void fixture_load(const char *type_name, struct fixture *f)
{
    const char *dir = getenv("SPECD_FIXTURE_DIR");
    char path[512];
    snprintf(path, sizeof(path), "%s/quants/%s.bin", dir ? dir : "tests/fixtures", type_name);
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp, "cannot open %s (run from the repository root, or set SPECD_FIXTURE_DIR)", path);
    fseek(fp, 0, SEEK_END);
    const long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    cr_assert_gt(size, 28);
    f->file = malloc((size_t)size);
    cr_assert_eq(fread(f->file, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    uint32_t hdr[6];
    cr_assert_eq(memcmp(f->file, "SPQF", 4), 0, "%s: bad magic", path);
    memcpy(hdr, f->file + 4, sizeof(hdr));
    cr_assert_eq(hdr[0], 1, "%s: version", path);
    f->type = hdr[1];
    f->n_blocks = hdr[2];
    f->block_size = hdr[3];
    f->type_size = hdr[4];
    f->flags = hdr[5];
    const size_t nbytes = (size_t)f->n_blocks * f->type_size, nvals = (size_t)f->n_blocks * f->block_size;
    const size_t want = 28 + nbytes + 4 * nvals + ((f->flags & 1) ? 4 * nvals + nbytes : 0);
    cr_assert_eq((size_t)size, want, "%s: size", path);
    uint8_t *p = f->file + 28;
    f->blocks = p;
    p += nbytes;
    f->values = malloc(4 * nvals);
    memcpy(f->values, p, 4 * nvals);
    p += 4 * nvals;
    f->q_inputs = NULL;
    f->q_blocks = NULL;
    if (f->flags & 1) {
        f->q_inputs = malloc(4 * nvals);
        memcpy(f->q_inputs, p, 4 * nvals);
        f->q_blocks = p + 4 * nvals;
    }
    const struct kern_dtype_info *info = kern_dtype_info(f->type);
    cr_assert_not_null(info);
    cr_assert_str_eq(info->name, type_name);
    cr_assert_eq(info->block_size, f->block_size);
    cr_assert_eq(info->type_size, f->type_size);
}

static void fixture_free(struct fixture *f)
{
    free(f->values);
    free(f->q_inputs);
    free(f->file);
}

static void check_dequantize_fixture(const char *name)
{
    struct fixture f;
    fixture_load(name, &f);
    const int64_t n = (int64_t)f.n_blocks * f.block_size;
    float *got = calloc((size_t)n, sizeof(float));
    cr_assert_eq(kern_dequantize_row((enum spec_dtype)f.type, f.blocks, got, n), 0);
    for (int64_t i = 0; i < n; i++)
        cr_assert_eq(f2u(got[i]), f2u(f.values[i]), "%s element %ld: got %a, gguf-py %a", name, (long)i,
                     (double)got[i], (double)f.values[i]);
    cr_assert_eq(memcmp(got, f.values, (size_t)n * sizeof(float)), 0);
    free(got);
    fixture_free(&f);
}

static void check_quantize_fixture(const char *name)
{
    struct fixture f;
    fixture_load(name, &f);
    cr_assert(f.flags & 1, "%s fixture has no quantise section", name);
    const int64_t n = (int64_t)f.n_blocks * f.block_size;
    const size_t nbytes = (size_t)f.n_blocks * f.type_size;
    uint8_t *got = calloc(nbytes, 1);
    cr_assert_eq(kern_quantize_row((enum spec_dtype)f.type, f.q_inputs, got, n), 0);
    for (size_t i = 0; i < nbytes; i++)
        cr_assert_eq(got[i], f.q_blocks[i], "%s byte %zu (block %zu): got 0x%02x, gguf-py 0x%02x", name, i,
                     i / f.type_size, got[i], f.q_blocks[i]);
    free(got);
    fixture_free(&f);
}

Test(dequantize, f32_matches_gguf_py) { check_dequantize_fixture("F32"); }
Test(dequantize, f16_matches_gguf_py) { check_dequantize_fixture("F16"); }
Test(dequantize, bf16_matches_gguf_py) { check_dequantize_fixture("BF16"); }
Test(dequantize, q4_0_matches_gguf_py) { check_dequantize_fixture("Q4_0"); }
Test(dequantize, q4_1_matches_gguf_py) { check_dequantize_fixture("Q4_1"); }
Test(dequantize, q5_0_matches_gguf_py) { check_dequantize_fixture("Q5_0"); }
Test(dequantize, q8_0_matches_gguf_py) { check_dequantize_fixture("Q8_0"); }
Test(dequantize, q4_k_matches_gguf_py) { check_dequantize_fixture("Q4_K"); }
Test(dequantize, q6_k_matches_gguf_py) { check_dequantize_fixture("Q6_K"); }

Test(quantize, f16_matches_gguf_py) { check_quantize_fixture("F16"); }
Test(quantize, bf16_matches_gguf_py) { check_quantize_fixture("BF16"); }
Test(quantize, q4_0_matches_gguf_py_reference) { check_quantize_fixture("Q4_0"); }
Test(quantize, q4_1_matches_gguf_py_reference) { check_quantize_fixture("Q4_1"); }
Test(quantize, q5_0_matches_gguf_py_reference) { check_quantize_fixture("Q5_0"); }
Test(quantize, q8_0_matches_gguf_py_reference) { check_quantize_fixture("Q8_0"); }

/* ---------------------------------------------------------------------------------------------- */
/* Round trips                                                                                     */

/* Quantise then dequantise rows of assorted scales; return the worst |error| / bound over elements,
 * where bound_fn gives each element's allowed error from its block's input. */
typedef float (*bound_fn)(const float *block, int block_size, int i);

static float worst_ratio(enum spec_dtype t, bound_fn bound, uint64_t seed)
{
    const struct kern_dtype_info *info = kern_dtype_info(t);
    const int64_t n = 4096;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    uint8_t *q = malloc(n * 4);
    float worst = 0.0f;
    for (int trial = 0; trial < 12; trial++) {
        kt_fill_normal(&seed, x, n, trial % 4 == 0 ? 1e-3f : trial % 4 == 1 ? 1.0f : trial % 4 == 2 ? 40.0f : 0.02f);
        if (trial == 5)
            for (int64_t i = 0; i < n; i++)
                x[i] = fabsf(x[i]) + 3.0f; /* all positive, away from zero */
        if (trial == 6)
            for (int64_t i = 0; i < n; i++)
                x[i] = -fabsf(x[i]) - 3.0f;
        if (trial == 7)
            for (int64_t i = 0; i < n; i += 3)
                x[i] = 0.0f;
        cr_assert_eq(kern_quantize_row(t, x, q, n), 0);
        cr_assert_eq(kern_dequantize_row(t, q, y, n), 0);
        for (int64_t i = 0; i < n; i++) {
            const int64_t b0 = i - i % info->block_size;
            const float r = fabsf(y[i] - x[i]) / bound(x + b0, (int)info->block_size, (int)(i - b0));
            cr_assert(isfinite(y[i]));
            if (r > worst)
                worst = r;
        }
    }
    free(x);
    free(y);
    free(q);
    return worst;
}

static float block_amax(const float *b, int n)
{
    float a = 0.0f;
    for (int i = 0; i < n; i++)
        a = fmaxf(a, fabsf(b[i]));
    return a;
}

/* How far fp16 rounding moves a scale d: half an ulp, or half the subnormal quantum for tiny d. */
static float fp16_err(float d)
{
    return fabsf(d) * ldexpf(1.0f, -11) + ldexpf(1.0f, -25);
}

/* Q8_0: half a step of amax/127, plus up to 127 times the fp16 rounding of the step. */
static float bound_q8_0(const float *b, int n, int i)
{
    const float d = block_amax(b, n) / 127;
    return d * 0.5f + 127 * fp16_err(d);
}

/* Q4_0 / Q5_0: the value opposite to the extreme is clamped one full step away. */
static float bound_q4_0(const float *b, int n, int i)
{
    const float d = block_amax(b, n) / 8;
    return d + 8 * fp16_err(d);
}

static float bound_q5_0(const float *b, int n, int i)
{
    const float d = block_amax(b, n) / 16;
    return d + 16 * fp16_err(d);
}

/* Q4_1: half a step of (max - min)/15, plus fp16 rounding of the min and of the step. */
static float bound_q4_1(const float *b, int n, int i)
{
    float lo = b[0], hi = b[0];
    for (int j = 0; j < n; j++) {
        lo = fminf(lo, b[j]);
        hi = fmaxf(hi, b[j]);
    }
    const float d = (hi - lo) / 15;
    return d * 0.5f + 15 * fp16_err(d) + fp16_err(lo) + 1e-30f;
}

/* Q8_K: d is kept in fp32, so half a step. */
static float bound_q8_K(const float *b, int n, int i)
{
    return block_amax(b, n) / 127 * 0.5001f + 1e-30f;
}

/* K-quants, per element: a few quantisation steps of the block (6-bit scales cost precision in
 * sub-blocks much smaller than the block's largest). The RMS check below is the quality bar. */
static float bound_q4_K(const float *b, int n, int i)
{
    return block_amax(b, n) * 2 / 15 + 1e-30f;
}

static float bound_q6_K(const float *b, int n, int i)
{
    return block_amax(b, n) * 2 / 32 + 1e-30f;
}

static float bound_f16(const float *b, int n, int i)
{
    return fabsf(b[i]) * ldexpf(1.0f, -11) + ldexpf(1.0f, -25);
}

static float bound_bf16(const float *b, int n, int i)
{
    return fabsf(b[i]) * ldexpf(1.0f, -8) + 1e-38f;
}

Test(round_trip, q8_0_within_half_a_step) { cr_expect_leq(worst_ratio(SPEC_Q8_0, bound_q8_0, 1), 1.0f); }
Test(round_trip, q4_0_within_one_step) { cr_expect_leq(worst_ratio(SPEC_Q4_0, bound_q4_0, 2), 1.0f); }
Test(round_trip, q4_1_within_half_a_step) { cr_expect_leq(worst_ratio(SPEC_Q4_1, bound_q4_1, 3), 1.0f); }
Test(round_trip, q5_0_within_one_step) { cr_expect_leq(worst_ratio(SPEC_Q5_0, bound_q5_0, 4), 1.0f); }
Test(round_trip, q8_k_within_half_a_step) { cr_expect_leq(worst_ratio(SPEC_Q8_K, bound_q8_K, 5), 1.0f); }
Test(round_trip, q4_k_within_two_steps) { cr_expect_leq(worst_ratio(SPEC_Q4_K, bound_q4_K, 6), 1.0f); }
Test(round_trip, q6_k_within_two_steps) { cr_expect_leq(worst_ratio(SPEC_Q6_K, bound_q6_K, 7), 1.0f); }
Test(round_trip, f16_within_half_an_ulp) { cr_expect_leq(worst_ratio(SPEC_F16, bound_f16, 8), 1.0f); }
Test(round_trip, bf16_within_half_an_ulp) { cr_expect_leq(worst_ratio(SPEC_BF16, bound_bf16, 9), 1.0f); }

/* The simple K-quant encoders must be good, not just valid: relative RMS error on Gaussian rows. */
static double relative_rms_error(enum spec_dtype t)
{
    const int64_t n = 256 * 64;
    uint64_t seed = 99;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    uint8_t *q = malloc(n);
    kt_fill_normal(&seed, x, n, 0.05f);
    kern_quantize_row(t, x, q, n);
    kern_dequantize_row(t, q, y, n);
    double err = 0, ref = 0;
    for (int64_t i = 0; i < n; i++) {
        err += (double)(y[i] - x[i]) * (y[i] - x[i]);
        ref += (double)x[i] * x[i];
    }
    free(x);
    free(y);
    free(q);
    return sqrt(err / ref);
}

/* For scale, on these rows ggml's reference quantisers give Q4_0 0.082, Q4_1 0.076, Q5_0 0.041 and
 * Q8_0 0.005; the simple encoders give Q4_K 0.076 and Q6_K 0.018. */
Test(round_trip, q4_k_encoder_rms_error_like_q4_1) { cr_expect_lt(relative_rms_error(SPEC_Q4_K), 0.08); }
Test(round_trip, q6_k_encoder_rms_error_below_q5_0) { cr_expect_lt(relative_rms_error(SPEC_Q6_K), 0.02); }

Test(quantize, q8_1_sum_field_is_d_times_sum_of_quants)
{
    uint64_t seed = 11;
    float x[128];
    struct cpu_block_q8_1 b[4];
    kt_fill_normal(&seed, x, 128, 2.0f);
    cr_assert_eq(kern_quantize_row(SPEC_Q8_1, x, b, 128), 0);
    for (int i = 0; i < 4; i++) {
        const float d = block_amax(x + 32 * i, 32) / 127, id = 1.0f / d;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            sum += b[i].qs[j];
            cr_expect_eq(b[i].qs[j], (int8_t)roundf(x[32 * i + j] * id));
        }
        cr_expect_eq(b[i].d, kern_fp32_to_fp16(d));
        cr_expect_eq(b[i].s, kern_fp32_to_fp16(sum * d));
    }
}

Test(quantize, q8_k_maps_the_largest_magnitude_to_minus_127_and_fills_bsums)
{
    float x[256];
    for (int i = 0; i < 256; i++)
        x[i] = (float)(i % 17) - 8.0f;
    x[100] = -20.0f; /* largest magnitude, negative: scale -127/-20 */
    x[200] = 20.0f;  /* same magnitude later: the first one wins */
    struct cpu_block_q8_K b;
    cr_assert_eq(kern_quantize_row(SPEC_Q8_K, x, &b, 256), 0);
    cr_expect_eq(b.qs[100], -127);
    cr_expect_eq(b.qs[200], 127);
    cr_expect_eq(f2u(b.d), f2u(1 / (-127.f / -20.0f)));
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += b.qs[16 * g + j];
        cr_expect_eq(b.bsums[g], s, "bsums[%d]", g);
    }
    /* ties round to even like ggml's nearest_int: 8 * 127/20 = 50.8 -> 51, 2.5 steps -> 2 */
    cr_expect_eq(b.qs[16], (int8_t)lrintf(8 * (-127.f / -20.0f)));
    memset(x, 0, sizeof(x));
    cr_assert_eq(kern_quantize_row(SPEC_Q8_K, x, &b, 256), 0);
    cr_expect_eq(f2u(b.d), 0);
}

Test(quantize, q8_0_rounds_ties_away_from_zero)
{
    float x[32] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f};
    struct cpu_block_q8_0 b;
    cr_assert_eq(kern_quantize_row(SPEC_Q8_0, x, &b, 32), 0);
    cr_expect_eq(b.d, 0x3c00, "d = 127/127 = 1");
    cr_expect_eq(b.qs[1], 3);
    cr_expect_eq(b.qs[2], -3);
    cr_expect_eq(b.qs[3], 1);
    cr_expect_eq(b.qs[4], -1);
    cr_expect_eq(b.qs[5], 2);
}

Test(codec, rejects_bad_lengths_and_types)
{
    float x[64] = {0};
    uint8_t q[512];
    cr_expect_eq(kern_quantize_row(SPEC_Q4_0, x, q, 33), SPEC_E_RANGE);
    cr_expect_eq(kern_dequantize_row(SPEC_Q4_K, q, x, 32), SPEC_E_RANGE);
    cr_expect_eq(kern_dequantize_row(SPEC_F32, q, x, -1), SPEC_E_RANGE);
    cr_expect_eq(kern_dequantize_row(SPEC_Q2_K, q, x, 256), SPEC_E_UNSUPPORTED);
    cr_expect_eq(kern_quantize_row(SPEC_IQ4_NL, x, q, 32), SPEC_E_UNSUPPORTED);
    cr_expect_eq(kern_dequantize_row(SPEC_Q8_1, q, x, 32), SPEC_E_UNSUPPORTED, "ggml has no Q8_1 dequantiser");
    cr_expect_eq(kern_quantize_row((enum spec_dtype)4, x, q, 32), SPEC_E_INVALID_ARG);
    cr_expect_eq(kern_quantize_row(SPEC_Q8_0, x, q, 0), 0, "an empty row is fine");
}

/* ---------------------------------------------------------------------------------------------- */
/* Activation converters: every ISA writes the reference bytes                                    */

static void check_from_float_isa(enum spec_dtype vtype)
{
    if (!cpu_isa_available(CPU_ISA_AVX2))
        cr_skip_test("no AVX2 on this CPU: only the scalar converters exist");
    cpu_from_float_fn scalar = cpu_from_float_kernel(vtype, CPU_ISA_SCALAR);
    cpu_from_float_fn avx2 = cpu_from_float_kernel(vtype, CPU_ISA_AVX2);
    cr_assert(scalar && avx2);
    const int64_t n = 2048;
    uint64_t seed = 1234 + vtype;
    float *x = malloc(n * sizeof(float));
    uint8_t *a = malloc(n * 4), *b = malloc(n * 4);
    uint64_t bytes;
    kern_row_bytes(vtype, n, &bytes);
    for (int trial = 0; trial < 50; trial++) {
        kt_fill_normal(&seed, x, n, ldexpf(1.0f, trial % 20 - 10));
        if (trial % 5 == 1) /* exact ties for roundf/nearest_int: multiples of half a step */
            for (int64_t i = 0; i < n; i++)
                x[i] = (float)((int)(kt_uniform(&seed) * 509) - 254) * 0.5f;
        if (trial % 5 == 2) /* zero blocks, and a repeated largest magnitude of both signs */
            for (int64_t i = 0; i < n; i++)
                x[i] = (i / 256) % 2 ? 0.0f : (i % 7 == 0 ? ((i / 7) % 2 ? 3.0f : -3.0f) : x[i]);
        memset(a, 0xAA, bytes);
        memset(b, 0x55, bytes);
        scalar(x, a, n);
        avx2(x, b, n);
        cr_assert_eq(memcmp(a, b, bytes), 0, "%s trial %d differs", kern_dtype_info(vtype)->name, trial);
        cr_assert_eq(kern_quantize_row(vtype, x, b, n), 0);
        cr_assert_eq(memcmp(a, b, bytes), 0, "scalar converter equals kern_quantize_row");
    }
    free(x);
    free(a);
    free(b);
}

Test(from_float, q8_0_avx2_equals_reference) { check_from_float_isa(SPEC_Q8_0); }
Test(from_float, q8_1_avx2_equals_reference) { check_from_float_isa(SPEC_Q8_1); }
Test(from_float, q8_k_avx2_equals_reference) { check_from_float_isa(SPEC_Q8_K); }
Test(from_float, f16_avx2_equals_reference) { check_from_float_isa(SPEC_F16); }
