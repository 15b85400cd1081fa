/* Dot kernels and the matmul: every SIMD ISA equals scalar bit for bit, dots equal a double-precision reference
 * within float rounding, and a batched matmul equals n separate matvecs bit for bit on any thread
 * count and ISA (the property speculative verification relies on for greedy identity). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "tests/kernels/kern_test.h"

static size_t row_bytes(enum spec_dtype t, int64_t k)
{
    uint64_t b = 0;
    cr_assert_eq(kern_row_bytes(t, (uint64_t)k, &b), 0);
    return (size_t)b;
}

/* A row length of type t up to about max_elems (at least 6 blocks): any length for the float types. */
static int64_t random_k(uint64_t *s, enum spec_dtype t, int64_t max_elems)
{
    const int64_t bs = kern_dtype_info(t)->block_size;
    const int64_t max_blocks = max_elems / bs > 6 ? max_elems / bs : 6;
    return bs * (1 + (int64_t)(kt_next(s) % (uint64_t)max_blocks));
}

static size_t act_bytes(enum spec_dtype vtype, int64_t k)
{
    size_t b = 0;
    cr_assert_eq(cpu_act_row_bytes(vtype, k, &b), 0);
    return b;
}

/* n activation rows in the dot kernels' form (act_bytes apart), from the reference converter. */
static void *make_activations(uint64_t *s, enum spec_dtype vtype, int64_t k, int n)
{
    const size_t rb = act_bytes(vtype, k);
    const int64_t nb = k / kern_dtype_info(vtype)->block_size;
    uint8_t *xq = calloc(rb, (size_t)n);
    float *x = malloc((size_t)k * sizeof(float));
    for (int r = 0; r < n; r++) {
        kt_fill_normal(s, x, k, r % 3 == 2 ? 30.0f : 1.0f);
        cr_assert_eq(kern_quantize_row(vtype, x, xq + rb * r, k), 0);
        cpu_act_fill_scales(vtype, xq + rb * r, k, 0, nb);
    }
    free(x);
    return xq;
}

/* ---------------------------------------------------------------------------------------------- */
/* SIMD kernels against the scalar ones                                                            */

static void check_simd_equals_scalar(enum spec_dtype t, enum cpu_isa isa)
{
    if (!cpu_isa_available(isa))
        cr_skip_test("no %s on this CPU: its kernels are not run", cpu_isa_name(isa));
    const enum spec_dtype vtype = cpu_vec_dot_type(t);
    cpu_dot_fn scalar = cpu_dot_kernel(t, CPU_ISA_SCALAR), simd = cpu_dot_kernel(t, isa);
    cr_assert(scalar && simd);
    uint64_t seed = 0x5eed + (uint64_t)t;
    for (int trial = 0; trial < 120; trial++) {
        const int64_t k = random_k(&seed, t, 1500);
        const int nx = 1 + trial % 9;
        uint8_t *w = malloc(row_bytes(t, k));
        kt_random_row(&seed, t, k, w, trial % 2);
        void *xq = make_activations(&seed, vtype, k, nx);
        float ys[9], ya[9];
        memset(ys, 0xAA, sizeof(ys));
        memset(ya, 0x55, sizeof(ya));
        scalar(k, w, xq, act_bytes(vtype, k), nx, ys, 1);
        simd(k, w, xq, act_bytes(vtype, k), nx, ya, 1);
        for (int r = 0; r < nx; r++)
            cr_assert_eq(memcmp(&ys[r], &ya[r], sizeof(float)), 0, "%s k=%ld nx=%d row %d: scalar %a, %s %a",
                         kern_dtype_info(t)->name, (long)k, nx, r, (double)ys[r], cpu_isa_name(isa), (double)ya[r]);
        free(w);
        free(xq);
    }
}

Test(dot, avx2_equals_scalar_f32) { check_simd_equals_scalar(SPEC_F32, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_f16) { check_simd_equals_scalar(SPEC_F16, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_bf16) { check_simd_equals_scalar(SPEC_BF16, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_q4_0) { check_simd_equals_scalar(SPEC_Q4_0, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_q4_1) { check_simd_equals_scalar(SPEC_Q4_1, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_q5_0) { check_simd_equals_scalar(SPEC_Q5_0, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_q8_0) { check_simd_equals_scalar(SPEC_Q8_0, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_q4_k) { check_simd_equals_scalar(SPEC_Q4_K, CPU_ISA_AVX2); }
Test(dot, avx2_equals_scalar_q6_k) { check_simd_equals_scalar(SPEC_Q6_K, CPU_ISA_AVX2); }
Test(dot, avx512_equals_scalar_q4_k) { check_simd_equals_scalar(SPEC_Q4_K, CPU_ISA_AVX512); }
Test(dot, avx512_equals_scalar_q6_k) { check_simd_equals_scalar(SPEC_Q6_K, CPU_ISA_AVX512); }

/* `bytes` of memory that end where an unreadable page begins, so that a read past them faults. */
static uint8_t *guarded(size_t bytes, void **map, size_t *map_len)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), span = (bytes + page - 1) / page * page;
    *map_len = span + page;
    uint8_t *m = mmap(NULL, *map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(m != MAP_FAILED);
    cr_assert_eq(mprotect(m + span, page, PROT_NONE), 0);
    *map = m;
    return m + span - bytes;
}

/* A tile kernel's 16 weight rows x nx activation rows equal the scalar dots bit for bit, for batches
 * that take either form of the quants (per scale group, or scaled for large batches), with padded
 * weight rows and a strided output; random bytes cover every quant and scale value, and every third
 * activation row is scaled to saturate at +-127. The activations end at an unreadable page: up to
 * 16 rows the kernel must read only nx of them, above 16 whole tiles (the caller pads). */
static void check_tile_equals_scalar(enum spec_dtype t)
{
    if (!cpu_isa_available(CPU_ISA_AMX))
        cr_skip_test("no AMX on this CPU (or Linux refused tile data): the tile kernels are not run");
    const enum spec_dtype vtype = cpu_vec_dot_type(t);
    cpu_dot_fn scalar = cpu_dot_kernel(t, CPU_ISA_SCALAR);
    cpu_tile_fn tile = cpu_tile_kernel(t, CPU_ISA_AMX, CPU_TILE_ROWS);
    cr_assert(scalar && tile);
    uint64_t seed = 0x711e + (uint64_t)t;
    enum { MAX_NX = 40 };
    for (int trial = 0; trial < 80; trial++) {
        const int64_t k = random_k(&seed, t, 3000);
        const int nx = 1 + trial % MAX_NX;
        const int rows = nx <= CPU_TILE_ROWS ? nx : (nx + CPU_TILE_ROWS - 1) / CPU_TILE_ROWS * CPU_TILE_ROWS;
        const size_t wrb = row_bytes(t, k) + (size_t)(trial % 3) * 40;
        const size_t ys = CPU_TILE_ROWS + (size_t)(trial % 4), xrb = act_bytes(vtype, k);
        uint8_t *w = malloc(wrb * CPU_TILE_ROWS);
        for (int j = 0; j < CPU_TILE_ROWS; j++)
            kt_random_row(&seed, t, k, w + wrb * (size_t)j, (trial + j) % 2);
        void *made = make_activations(&seed, vtype, k, rows), *map;
        size_t map_len;
        uint8_t *xq = guarded(xrb * (size_t)rows, &map, &map_len);
        memcpy(xq, made, xrb * (size_t)rows);
        float ref[MAX_NX * (CPU_TILE_ROWS + 4)], y[MAX_NX * (CPU_TILE_ROWS + 4)];
        memset(ref, 0xAA, sizeof(ref));
        memset(y, 0xAA, sizeof(y));
        for (int j = 0; j < CPU_TILE_ROWS; j++)
            scalar(k, w + wrb * (size_t)j, xq, xrb, nx, ref + j, ys);
        tile(k, w, wrb, xq, xrb, nx, y, ys);
        for (int r = 0; r < nx; r++)
            for (int j = 0; j < CPU_TILE_ROWS; j++)
                cr_assert_eq(memcmp(&ref[r * ys + j], &y[r * ys + j], sizeof(float)), 0,
                             "%s k=%ld nx=%d row %d weight row %d: scalar %a, amx %a", kern_dtype_info(t)->name,
                             (long)k, nx, r, j, (double)ref[r * ys + j], (double)y[r * ys + j]);
        free(w);
        free(made);
        munmap(map, map_len);
    }
}

Test(dot, amx_tile_equals_scalar_q4_k) { check_tile_equals_scalar(SPEC_Q4_K); }
Test(dot, amx_tile_equals_scalar_q6_k) { check_tile_equals_scalar(SPEC_Q6_K); }

/* ---------------------------------------------------------------------------------------------- */
/* Dots against double precision                                                                   */

/* The activation row in floats as the kernel sees it (Q8_1 has no ggml dequantiser: d * q). */
static void activation_values(enum spec_dtype vtype, const void *xq, int64_t k, float *out)
{
    if (vtype != SPEC_Q8_1) {
        cr_assert_eq(kern_dequantize_row(vtype, xq, out, k), 0);
        return;
    }
    const struct cpu_block_q8_1 *b = xq;
    for (int64_t i = 0; i < k; i++)
        out[i] = kern_fp16_to_fp32(b[i / 32].d) * b[i / 32].qs[i % 32];
}

/* Q4_1 x Q8_1 uses the stored s = fp16(d * sum(q)) for the min term, as ggml does. */
static double q4_1_min_term_correction(const void *w, const void *xq, int64_t k)
{
    const struct cpu_block_q4_1 *wb = w;
    const struct cpu_block_q8_1 *xb = xq;
    double c = 0;
    for (int64_t i = 0; i < k / 32; i++) {
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += xb[i].qs[j];
        const double m = kern_fp16_to_fp32(wb[i].m), d = kern_fp16_to_fp32(xb[i].d);
        c += m * ((double)kern_fp16_to_fp32(xb[i].s) - d * sum);
    }
    return c;
}

static void check_dot_against_double(enum spec_dtype t)
{
    const enum spec_dtype vtype = cpu_vec_dot_type(t);
    cpu_dot_fn dot = cpu_dot_kernel(t, CPU_ISA_SCALAR);
    uint64_t seed = 0xd0d0 + (uint64_t)t;
    for (int trial = 0; trial < 60; trial++) {
        const int64_t k = random_k(&seed, t, 1500);
        uint8_t *w = malloc(row_bytes(t, k));
        kt_random_row(&seed, t, k, w, trial % 2);
        void *xq = make_activations(&seed, vtype, k, 1);
        float *wf = malloc((size_t)k * sizeof(float)), *xf = malloc((size_t)k * sizeof(float));
        cr_assert_eq(kern_dequantize_row(t, w, wf, k), 0);
        activation_values(vtype, xq, k, xf);
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < k; i++) {
            ref += (double)wf[i] * xf[i];
            mag += fabs((double)wf[i] * xf[i]);
        }
        if (t == SPEC_Q4_1)
            ref += q4_1_min_term_correction(w, xq, k);
        float y;
        dot(k, w, xq, 0, 1, &y, 1);
        /* each block adds one rounded product into one of 8 (or 32) lanes: a few ulps of the sum
         * of magnitudes per 100 blocks */
        cr_assert_leq(fabs(y - ref), 1e-5 * mag + 1e-30, "%s k=%ld: dot %.9g, double %.9g (sum |wx| %.3g)",
                      kern_dtype_info(t)->name, (long)k, (double)y, ref, mag);
        free(w);
        free(xq);
        free(wf);
        free(xf);
    }
}

Test(dot, f32_matches_double_reference) { check_dot_against_double(SPEC_F32); }
Test(dot, f16_matches_double_reference) { check_dot_against_double(SPEC_F16); }
Test(dot, bf16_matches_double_reference) { check_dot_against_double(SPEC_BF16); }
Test(dot, q4_0_matches_double_reference) { check_dot_against_double(SPEC_Q4_0); }
Test(dot, q4_1_matches_double_reference) { check_dot_against_double(SPEC_Q4_1); }
Test(dot, q5_0_matches_double_reference) { check_dot_against_double(SPEC_Q5_0); }
Test(dot, q8_0_matches_double_reference) { check_dot_against_double(SPEC_Q8_0); }
Test(dot, q4_k_matches_double_reference) { check_dot_against_double(SPEC_Q4_K); }
Test(dot, q6_k_matches_double_reference) { check_dot_against_double(SPEC_Q6_K); }

/* ---------------------------------------------------------------------------------------------- */
/* Matmul                                                                                          */

#define MAX_THREADS 4

struct pools {
    struct cpu_pool *p[MAX_THREADS + 1]; /* p[t] has t threads */
};

static void pools_create(struct pools *ps)
{
    for (int t = 1; t <= MAX_THREADS; t++)
        cr_assert_eq(cpu_pool_create(t, &ps->p[t]), 0);
}

static void pools_destroy(struct pools *ps)
{
    for (int t = 1; t <= MAX_THREADS; t++)
        cpu_pool_destroy(ps->p[t]);
}

/* The batch of n rows through every ISA and thread count equals row-by-row scalar single-thread
 * matvecs, bit for bit. */
static void check_batch_invariance(enum spec_dtype t)
{
    static const int64_t rows_cases[] = {37, 3};
    static const int n_cases[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 70};
    struct pools ps;
    pools_create(&ps);
    uint64_t seed = 0xba7c + (uint64_t)t;
    for (size_t rc = 0; rc < 2; rc++) {
        const int64_t rows = rows_cases[rc], k = random_k(&seed, t, 700);
        const size_t wrb = row_bytes(t, k);
        uint8_t *w = malloc(wrb * (size_t)rows);
        for (int64_t j = 0; j < rows; j++)
            kt_random_row(&seed, t, k, w + wrb * j, (int)(j % 2));
        const int nmax = 70;
        float *x = malloc((size_t)(nmax * k) * sizeof(float));
        kt_fill_normal(&seed, x, nmax * k, 1.0f);
        float *ref = malloc((size_t)(nmax * rows) * sizeof(float)), *y = malloc((size_t)(nmax * rows) * sizeof(float));
        cr_assert_eq(cpu_isa_set(CPU_ISA_SCALAR), 0);
        for (int r = 0; r < nmax; r++)
            cr_assert_eq(cpu_matmul(ps.p[1], t, w, wrb, rows, k, x + r * k, k, 1, ref + r * rows, rows), 0);
        for (int isa = CPU_ISA_SCALAR; isa < CPU_ISA_COUNT; isa++) {
            if (cpu_isa_set((enum cpu_isa)isa) != 0)
                continue;
            for (int th = 1; th <= MAX_THREADS; th++) {
                for (size_t nc = 0; nc < sizeof(n_cases) / sizeof(n_cases[0]); nc++) {
                    const int n = n_cases[nc];
                    memset(y, 0xAA, (size_t)(n * rows) * sizeof(float));
                    cr_assert_eq(cpu_matmul(ps.p[th], t, w, wrb, rows, k, x, k, n, y, rows), 0);
                    cr_assert_eq(memcmp(y, ref, (size_t)(n * rows) * sizeof(float)), 0,
                                 "%s rows=%ld k=%ld n=%d threads=%d isa=%d differs from separate matvecs",
                                 kern_dtype_info(t)->name, (long)rows, (long)k, n, th, isa);
                }
            }
        }
        free(w);
        free(x);
        free(ref);
        free(y);
    }
    pools_destroy(&ps);
}

Test(matmul, batch_equals_separate_matvecs_f32) { check_batch_invariance(SPEC_F32); }
Test(matmul, batch_equals_separate_matvecs_f16) { check_batch_invariance(SPEC_F16); }
Test(matmul, batch_equals_separate_matvecs_bf16) { check_batch_invariance(SPEC_BF16); }
Test(matmul, batch_equals_separate_matvecs_q4_0) { check_batch_invariance(SPEC_Q4_0); }
Test(matmul, batch_equals_separate_matvecs_q4_1) { check_batch_invariance(SPEC_Q4_1); }
Test(matmul, batch_equals_separate_matvecs_q5_0) { check_batch_invariance(SPEC_Q5_0); }
Test(matmul, batch_equals_separate_matvecs_q8_0) { check_batch_invariance(SPEC_Q8_0); }
Test(matmul, batch_equals_separate_matvecs_q4_k) { check_batch_invariance(SPEC_Q4_K); }
Test(matmul, batch_equals_separate_matvecs_q6_k) { check_batch_invariance(SPEC_Q6_K); }

/* Allowed error of one activation element after conversion to the vec_dot type. */
static double activation_error(enum spec_dtype vtype, const float *x, int64_t i)
{
    const double fp16_ulp = 1.0 / 2048, fp16_sub = ldexp(1.0, -25);
    if (vtype == SPEC_F32)
        return 0;
    if (vtype == SPEC_F16)
        return fabs(x[i]) * fp16_ulp + fp16_sub;
    if (vtype == SPEC_BF16)
        return fabs(x[i]) / 256;
    const int64_t bs = vtype == SPEC_Q8_K ? 256 : 32, b0 = i - i % bs;
    double amax = 0;
    for (int64_t j = b0; j < b0 + bs; j++)
        amax = fmax(amax, fabs(x[j]));
    const double d = amax / 127;
    return vtype == SPEC_Q8_K ? 0.5001 * d : 0.5 * d + 127 * (d * fp16_ulp + fp16_sub);
}

static void check_matmul_against_double(enum spec_dtype t)
{
    const enum spec_dtype vtype = cpu_vec_dot_type(t);
    struct cpu_pool *pool;
    cr_assert_eq(cpu_pool_create(2, &pool), 0);
    uint64_t seed = 0xf00d + (uint64_t)t;
    const int64_t rows = 13, n = 5, k = 1024 + random_k(&seed, t, 3000);
    const size_t wrb = row_bytes(t, k);
    uint8_t *w = malloc(wrb * rows);
    float *wf = malloc((size_t)k * sizeof(float)), *x = malloc((size_t)(n * k) * sizeof(float));
    float *y = malloc((size_t)(n * rows) * sizeof(float));
    for (int64_t j = 0; j < rows; j++)
        kt_random_row(&seed, t, k, w + wrb * j, 0);
    kt_fill_normal(&seed, x, n * k, 1.0f);
    cr_assert_eq(cpu_matmul(pool, t, w, wrb, rows, k, x, k, n, y, rows), 0);
    for (int64_t j = 0; j < rows; j++) {
        cr_assert_eq(kern_dequantize_row(t, w + wrb * j, wf, k), 0);
        for (int64_t r = 0; r < n; r++) {
            const float *xr = x + r * k;
            double ref = 0, bound = 0;
            for (int64_t i = 0; i < k; i++) {
                ref += (double)wf[i] * xr[i];
                bound += fabs(wf[i]) * activation_error(vtype, xr, i) + 2e-5 * fabs((double)wf[i] * xr[i]);
            }
            if (t == SPEC_Q4_1) /* the min term uses s = fp16(d * sum q): fp16 rounding of |sum x| */
                for (int64_t i = 0; i < k; i++)
                    bound += fabs(kern_fp16_to_fp32(((const struct cpu_block_q4_1 *)(w + wrb * j))[i / 32].m)) *
                             (fabs(xr[i]) + activation_error(vtype, xr, i)) / 1024;
            cr_assert_leq(fabs(y[r * rows + j] - ref), bound + 1e-30, "%s k=%ld y[%ld][%ld] = %.9g, double %.9g",
                          kern_dtype_info(t)->name, (long)k, (long)r, (long)j, (double)y[r * rows + j], ref);
        }
    }
    free(w);
    free(wf);
    free(x);
    free(y);
    cpu_pool_destroy(pool);
}

Test(matmul, f32_matches_double_reference) { check_matmul_against_double(SPEC_F32); }
Test(matmul, f16_matches_double_reference) { check_matmul_against_double(SPEC_F16); }
Test(matmul, bf16_matches_double_reference) { check_matmul_against_double(SPEC_BF16); }
Test(matmul, q4_0_matches_double_reference) { check_matmul_against_double(SPEC_Q4_0); }
Test(matmul, q4_1_matches_double_reference) { check_matmul_against_double(SPEC_Q4_1); }
Test(matmul, q5_0_matches_double_reference) { check_matmul_against_double(SPEC_Q5_0); }
Test(matmul, q8_0_matches_double_reference) { check_matmul_against_double(SPEC_Q8_0); }
Test(matmul, q4_k_matches_double_reference) { check_matmul_against_double(SPEC_Q4_K); }
Test(matmul, q6_k_matches_double_reference) { check_matmul_against_double(SPEC_Q6_K); }

Test(matmul, honours_padded_weight_rows_and_activation_strides)
{
    struct cpu_pool *pool;
    cr_assert_eq(cpu_pool_create(3, &pool), 0);
    uint64_t seed = 77;
    const int64_t rows = 11, n = 4, k = 512, xs = k + 40;
    const size_t wrb = row_bytes(SPEC_Q4_K, k), padded = wrb + 64;
    uint8_t *w = malloc(wrb * rows), *wp = malloc(padded * rows);
    float *x = malloc((size_t)(n * k) * sizeof(float)), *xp = malloc((size_t)(n * xs) * sizeof(float));
    float y[44], yp[44];
    for (int64_t j = 0; j < rows; j++) {
        kt_random_row(&seed, SPEC_Q4_K, k, w + wrb * j, 0);
        memcpy(wp + padded * j, w + wrb * j, wrb);
        memset(wp + padded * j + wrb, 0xff, 64);
    }
    kt_fill_normal(&seed, x, n * k, 1.0f);
    for (int64_t r = 0; r < n; r++) {
        memcpy(xp + r * xs, x + r * k, (size_t)k * sizeof(float));
        for (int64_t i = k; i < xs; i++)
            xp[r * xs + i] = NAN;
    }
    cr_assert_eq(cpu_matmul(pool, SPEC_Q4_K, w, wrb, rows, k, x, k, n, y, rows), 0);
    cr_assert_eq(cpu_matmul(pool, SPEC_Q4_K, wp, padded, rows, k, xp, xs, n, yp, rows), 0);
    cr_expect_eq(memcmp(y, yp, sizeof(y)), 0);
    free(w);
    free(wp);
    free(x);
    free(xp);
    cpu_pool_destroy(pool);
}

Test(matmul, rejects_unsupported_types_and_bad_shapes)
{
    struct cpu_pool *pool;
    cr_assert_eq(cpu_pool_create(1, &pool), 0);
    static uint8_t w[4096];
    static float x[1024], y[64];
    y[0] = 42.0f;
    cr_expect_eq(cpu_matmul(pool, SPEC_Q2_K, w, 84, 1, 256, x, 256, 1, y, 1), SPEC_E_UNSUPPORTED);
    cr_expect_eq(cpu_matmul(pool, SPEC_Q8_1, w, 36, 1, 32, x, 32, 1, y, 1), SPEC_E_UNSUPPORTED);
    cr_expect_eq(cpu_matmul(pool, SPEC_Q4_0, w, 18, 1, 33, x, 33, 1, y, 1), SPEC_E_RANGE, "k not a multiple of 32");
    cr_expect_eq(cpu_matmul(pool, SPEC_Q4_0, w, 17, 1, 32, x, 32, 1, y, 1), SPEC_E_RANGE, "weight rows too short");
    cr_expect_eq(cpu_matmul(pool, SPEC_Q4_0, w, 18, 1, 32, x, 31, 1, y, 1), SPEC_E_RANGE, "activation rows overlap");
    cr_expect_eq(cpu_matmul(pool, SPEC_Q4_0, w, 18, 2, 32, x, 32, 1, y, 1), SPEC_E_RANGE, "output rows overlap");
    cr_expect_eq(cpu_matmul(pool, SPEC_F32, w, 0, 1, 0, x, 0, 1, y, 1), SPEC_E_RANGE, "empty rows");
    cr_expect_eq(cpu_matmul(pool, SPEC_Q4_0, w, 18, 1, 32, x, 32, 0, y, 1), 0, "no activations: nothing to do");
    cr_expect_eq(y[0], 42.0f);
    cpu_pool_destroy(pool);
}
