/* The CUDA backend against the CPU backend (the reference): every op on random inputs for every weight
 * type, batch invariance on the GPU, and whole synthetic models (logits, greedy decoding, batched
 * forwards, speculative decoding).
 *
 * Without a usable CUDA device every test skips with "no CUDA device: conformance not run"; with
 * SPECD_REQUIRE_CUDA=1 (make test-cuda) it fails instead, so a GPU run can never pass vacuously.
 * make test-cudasim runs it on the CPU simulator of tests/support/cudasim (the kernels' logic; the
 * bounds below that come from the GPU's float library hold there trivially).
 *
 * Error bounds, CUDA vs CPU, per op (y: the CPU's result; the CUDA backend converts activations
 * exactly as the CPU does, so only the order of float sums differs where a bound is not zero):
 *  - get_rows, rope, store_rows, add: bit-identical (the same expressions, and the rope
 *    table is computed on the host with the CPU's code);
 *  - argmax: the same ids; probabilities |dp| <= 1e-6 p (double sums in another order);
 *  - sample_process against verify_process (the reference of sampling is verify/, not the CPU backend,
 *    which has no such op): the same kept tokens, probabilities |dp| <= 1e-6 p (double sums in another
 *    order, the GPU's exp and log within an ulp of glibc's); a boundary of top-p could move only if a
 *    running mass fell within rounding of top_p times the total;
 *  - sample_choose against verify_round_sampled with the same uniforms: the same tokens and counts (a
 *    draw could differ only within rounding of a boundary between two tokens' cumulative masses);
 *  - rms_norm: |dy| <= 1e-6 |y| (the sum of squares is a double sum in another order);
 *  - swiglu: |dy| <= 1e-6 |y| (the GPU's expf is within 2 ulp of glibc's);
 *  - matmul, every type: |dy| <= 1e-5 sum_k |w_k x_k| (w dequantised): both backends quantise the
 *    activations to the same Q8 blocks (or round them to the same F16/BF16 values) and compute exact
 *    integer block dots; the GPU adds the scaled blocks in another order, with fused multiply-adds;
 *  - attention, F32 cache: |dy| <= 1e-5 max|v|; F16 cache: |dy| <= 6e-4 max|v|, because the CPU rounds
 *    the normalised attention weights to F16 (llama.cpp's mul_mat) and the GPU's split softmax keeps
 *    them F32: the difference is at most 2^-11 sum_j p_j |v_j|;
 *  - whole models: F32 weights with F32 caches, |dlogit| <= 1e-4 max|logit|; quantised weights with
 *    F16 caches, |dlogit| <= 2e-2 max|logit| (a last-bit difference can move an activation across a Q8
 *    rounding boundary); greedy tokens identical over 32 steps, on prompts whose CPU top-2 margins
 *    exceed that bound at every step (checked, so identity is a real test).
 * On the GPU itself every op is batch-invariant: n rows in one call give the bits of n one-row calls. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "engine/engine.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tests/kernels/kern_test.h"
#include "tests/support/tsupport.h"

static struct kern_backend *cpu, *gpu;
static uint64_t rng;

static void setup(void)
{
    rng = 0x5eed;
    cr_assert_eq(kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = 2}, &cpu), 0);
}

static void teardown(void)
{
    kern_backend_destroy(gpu);
    kern_backend_destroy(cpu);
    gpu = NULL;
}

TestSuite(conformance, .init = setup, .fini = teardown);

/* Every test starts here: the CUDA backend, or a loud skip (a failure under SPECD_REQUIRE_CUDA=1). */
static void need_cuda(void)
{
    const struct kern_backend_config cfg = tsupport_backend_config(0);
    const int err = kern_backend_create("cuda", &cfg, &gpu);
    if (err == SPEC_OK)
        return;
    const char *req = getenv("SPECD_REQUIRE_CUDA");
    if (req && strcmp(req, "1") == 0)
        cr_assert_fail("SPECD_REQUIRE_CUDA=1 but the CUDA backend is unavailable (%s)", spec_errname(err));
    fprintf(stderr, "!!! no CUDA device: conformance not run (%s)\n", spec_errname(err));
    cr_skip_test("no CUDA device: conformance not run (%s)", spec_errname(err));
}

/* ---------------------------------------------------------------------------------------------- */
/* Tensors on a backend from host data and back                                                  */

static struct kern_tensor upload(struct kern_backend *b, enum spec_dtype type, int64_t ne0, int64_t ne1,
                                 const void *host)
{
    struct kern_tensor t;
    cr_assert_eq(b->ops->tensor_alloc(b, type, ne0, ne1, &t), 0);
    cr_assert_eq(b->ops->rows_from_host(b, &t, 0, ne1, host), 0);
    return t;
}

static struct kern_tensor weight(struct kern_backend *b, enum spec_dtype type, int64_t ne0, int64_t ne1,
                                 const void *host)
{
    struct kern_tensor t;
    cr_assert_eq(b->ops->weight_from_host(b, type, ne0, ne1, host, &t), 0);
    return t;
}

/* A tensor of F32 filled with NaN, so that an element an op fails to write shows. */
static struct kern_tensor poisoned(struct kern_backend *b, int64_t ne0, int64_t ne1)
{
    float *nan = malloc((size_t)(ne0 * ne1) * sizeof(float));
    for (int64_t i = 0; i < ne0 * ne1; i++)
        nan[i] = NAN;
    struct kern_tensor t = upload(b, SPEC_F32, ne0, ne1, nan);
    free(nan);
    return t;
}

static float *download(struct kern_backend *b, const struct kern_tensor *t)
{
    float *h = malloc((size_t)t->ne1 * t->row_bytes);
    cr_assert_eq(b->ops->rows_to_host(b, t, 0, t->ne1, h), 0);
    return h;
}

static float *random_f32(int64_t n, float scale)
{
    float *x = malloc((size_t)n * sizeof(float));
    kt_fill_normal(&rng, x, n, scale);
    return x;
}

static void free_t(struct kern_backend *b, struct kern_tensor *t)
{
    b->ops->tensor_free(b, t);
}

/* |got - want| <= rel |want| elementwise; NaN never passes. */
static void assert_close_rel(const float *got, const float *want, int64_t n, double rel, const char *what)
{
    for (int64_t i = 0; i < n; i++)
        cr_assert(fabs((double)got[i] - want[i]) <= rel * fabs((double)want[i]),
                  "%s: element %lld is %.9g, the CPU's %.9g", what, (long long)i, got[i], want[i]);
}

static void assert_bits(const void *got, const void *want, size_t bytes, const char *what)
{
    cr_assert(memcmp(got, want, bytes) == 0, "%s: not bit-identical", what);
}

/* ---------------------------------------------------------------------------------------------- */
/* matmul                                                                                         */

/* Random weights of a type: quantised from floats, or raw random blocks (extreme codes). */
static void *random_weights(enum spec_dtype t, int64_t k, int64_t rows, int raw, size_t *row_bytes)
{
    uint64_t rb;
    cr_assert_eq(kern_row_bytes(t, (uint64_t)k, &rb), 0);
    uint8_t *w = malloc(rb * (size_t)rows);
    for (int64_t r = 0; r < rows; r++)
        kt_random_row(&rng, t, k, w + (size_t)r * rb, raw);
    *row_bytes = (size_t)rb;
    return w;
}

/* y = x . w^T on both backends; the GPU's result must be within 1e-5 sum_k |w_k x_k| of the CPU's. */
static void check_matmul(enum spec_dtype t, int64_t k, int64_t rows, int n, int raw)
{
    const char *name = kern_dtype_info(t)->name;
    size_t rb;
    void *wh = random_weights(t, k, rows, raw, &rb);
    float *xh = random_f32(k * n, 1.0f), *wf = malloc((size_t)(k * rows) * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        cr_assert_eq(kern_dequantize_row(t, (const uint8_t *)wh + (size_t)r * rb, wf + r * k, k), 0);

    struct kern_tensor wc = weight(cpu, t, k, rows, wh), xc = upload(cpu, SPEC_F32, k, n, xh), yc;
    cr_assert_eq(cpu->ops->tensor_alloc(cpu, SPEC_F32, rows, n, &yc), 0);
    struct kern_tensor wg = weight(gpu, t, k, rows, wh), xg = upload(gpu, SPEC_F32, k, n, xh),
                       yg = poisoned(gpu, rows, n);
    cr_assert_eq(cpu->ops->matmul(cpu, &wc, &xc, NULL, &yc), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &wg, &xg, NULL, &yg), 0, "%s: CUDA matmul failed", name);
    float *want = download(cpu, &yc), *got = download(gpu, &yg);
    for (int r = 0; r < n; r++) {
        for (int64_t j = 0; j < rows; j++) {
            double mag = 0.0;
            for (int64_t i = 0; i < k; i++)
                mag += fabs((double)wf[j * k + i] * xh[(int64_t)r * k + i]);
            const float g = got[r * rows + j], w = want[r * rows + j];
            cr_assert(fabs((double)g - w) <= 1e-5 * mag + 1e-30,
                      "%s%s k=%lld n=%d: y[%d][%lld] = %.9g, the CPU's %.9g (bound %.3g)", name, raw ? " raw" : "",
                      (long long)k, n, r, (long long)j, g, w, 1e-5 * mag);
        }
    }
    free(want);
    free(got);
    free_t(cpu, &wc), free_t(cpu, &xc), free_t(cpu, &yc);
    free_t(gpu, &wg), free_t(gpu, &xg), free_t(gpu, &yg);
    free(wh), free(xh), free(wf);
}

Test(conformance, matmul_matches_the_cpu_for_every_weight_type_and_batch)
{
    need_cuda();
    const int ns[] = {1, 3, 8, 9, 33};
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
            check_matmul(kt_cpu_types[ti], 512, 67, ns[ni], 0);
        check_matmul(kt_cpu_types[ti], 768, 21, 9, 0); /* 24 blocks of 32: a warp's units end unpaired */
        check_matmul(kt_cpu_types[ti], 2304, 13, 1, 0); /* 36-72 units a row: CUDA takes a block a row */
        check_matmul(kt_cpu_types[ti], 2304, 13, 9, 0);
    }
}

Test(conformance, matmul_matches_the_cpu_on_extreme_quant_codes)
{
    need_cuda();
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++)
        if (kern_dtype_info(kt_cpu_types[ti])->block_size > 1)
            check_matmul(kt_cpu_types[ti], 1024, 19, 5, 1);
}

Test(conformance, matmul_of_float_weights_takes_rows_of_any_length)
{
    need_cuda();
    const enum spec_dtype types[] = {SPEC_F32, SPEC_F16, SPEC_BF16};
    for (size_t ti = 0; ti < 3; ti++) {
        check_matmul(types[ti], 100, 13, 4, 0); /* not a multiple of 8: the unvectorised loads */
        check_matmul(types[ti], 7, 5, 2, 0);
    }
}

/* n rows in one call give exactly the bits of n one-row calls, and of the same rows inside a larger
 * batch at another offset. */
Test(conformance, matmul_rows_are_bit_identical_whatever_the_batch)
{
    need_cuda();
    const int64_t k = 512, rows = 45;
    const int n = 33;
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        const enum spec_dtype t = kt_cpu_types[ti];
        size_t rb;
        void *wh = random_weights(t, k, rows, 0, &rb);
        float *xh = random_f32(k * n, 1.0f);
        struct kern_tensor w = weight(gpu, t, k, rows, wh), x = upload(gpu, SPEC_F32, k, n, xh),
                           y = poisoned(gpu, rows, n), y1 = poisoned(gpu, rows, 1);
        cr_assert_eq(gpu->ops->matmul(gpu, &w, &x, NULL, &y), 0);
        float *all = download(gpu, &y);
        for (int r = 0; r < n; r++) {
            struct kern_tensor xr = x;
            xr.data = (char *)x.data + (size_t)r * x.row_bytes;
            xr.ne1 = 1;
            xr.owned = false;
            cr_assert_eq(gpu->ops->matmul(gpu, &w, &xr, NULL, &y1), 0);
            float *one = download(gpu, &y1);
            cr_assert(memcmp(one, all + (size_t)r * rows, (size_t)rows * sizeof(float)) == 0,
                      "%s: row %d alone differs from row %d of a batch of %d", kern_dtype_info(t)->name, r, r, n);
            free(one);
        }
        /* rows 5..13 as a batch of 9: a different tile position for every row */
        struct kern_tensor xs = x, ys = poisoned(gpu, rows, 9);
        xs.data = (char *)x.data + 5 * x.row_bytes;
        xs.ne1 = 9;
        xs.owned = false;
        cr_assert_eq(gpu->ops->matmul(gpu, &w, &xs, NULL, &ys), 0);
        float *part = download(gpu, &ys);
        assert_bits(part, all + 5 * rows, 9 * (size_t)rows * sizeof(float), kern_dtype_info(t)->name);
        free(part);
        free(all);
        free_t(gpu, &w), free_t(gpu, &x), free_t(gpu, &y), free_t(gpu, &y1), free_t(gpu, &ys);
        free(wh), free(xh);
    }
}

/* A row alone gives its bits in a batch for weights of 4 to 88 units a row (chains of several units a
 * lane, counts that are no multiple of the lanes), with a bias and in a swiglu pair: with tensor cores
 * one row takes dp4a in mmq's order (mmv_ordered) and a batch takes mmq, and their bits must agree. */
Test(conformance, one_row_gives_its_bits_in_a_batch_at_every_width_with_bias_and_swiglu)
{
    need_cuda();
    const int64_t widths[] = {256, 1536, 2816}, rows = 40;
    const int n = 5;
    const enum spec_dtype quantised[] = {SPEC_Q4_0, SPEC_Q4_1, SPEC_Q5_0, SPEC_Q8_0, SPEC_Q4_K, SPEC_Q6_K};
    float *bh = random_f32(rows, 2.0f);
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int64_t k = widths[wi];
        float *xh = random_f32(k * n, 1.0f);
        for (size_t ti = 0; ti < sizeof quantised / sizeof quantised[0]; ti++) {
            const enum spec_dtype t = quantised[ti];
            size_t rb;
            void *gh = random_weights(t, k, rows, 0, &rb), *uh = random_weights(t, k, rows, 0, &rb);
            struct kern_tensor wg = weight(gpu, t, k, rows, gh), wu = weight(gpu, t, k, rows, uh),
                               bias = upload(gpu, SPEC_F32, rows, 1, bh), x = upload(gpu, SPEC_F32, k, n, xh),
                               y = poisoned(gpu, rows, n), g = poisoned(gpu, rows, n), u = poisoned(gpu, rows, n),
                               y1 = poisoned(gpu, rows, 1), g1 = poisoned(gpu, rows, 1), u1 = poisoned(gpu, rows, 1);
            const struct kern_matmul gu[2] = {{&wg, NULL, &g}, {&wu, &bias, &u}},
                                     gu1[2] = {{&wg, NULL, &g1}, {&wu, &bias, &u1}};
            cr_assert_eq(gpu->ops->matmul(gpu, &wg, &x, &bias, &y), 0);
            cr_assert_eq(gpu->ops->matmuls(gpu, &x, gu, 2, KERN_MATMULS_SWIGLU), 0);
            float *ya = download(gpu, &y), *ga = download(gpu, &g), *ua = download(gpu, &u);
            for (int r = 0; r < n; r++) {
                struct kern_tensor xr = x;
                xr.data = (char *)x.data + (size_t)r * x.row_bytes;
                xr.ne1 = 1;
                xr.owned = false;
                cr_assert_eq(gpu->ops->matmul(gpu, &wg, &xr, &bias, &y1), 0);
                cr_assert_eq(gpu->ops->matmuls(gpu, &xr, gu1, 2, KERN_MATMULS_SWIGLU), 0);
                float *yo = download(gpu, &y1), *go = download(gpu, &g1), *uo = download(gpu, &u1);
                char what[96];
                snprintf(what, sizeof what, "%s k=%lld row %d: matmul with a bias", kern_dtype_info(t)->name,
                         (long long)k, r);
                assert_bits(yo, ya + r * rows, (size_t)rows * sizeof(float), what);
                snprintf(what, sizeof what, "%s k=%lld row %d: swiglu", kern_dtype_info(t)->name, (long long)k, r);
                assert_bits(go, ga + r * rows, (size_t)rows * sizeof(float), what);
                assert_bits(uo, ua + r * rows, (size_t)rows * sizeof(float), what);
                free(yo), free(go), free(uo);
            }
            free(ya), free(ga), free(ua), free(gh), free(uh);
            free_t(gpu, &wg), free_t(gpu, &wu), free_t(gpu, &bias), free_t(gpu, &x), free_t(gpu, &y);
            free_t(gpu, &g), free_t(gpu, &u), free_t(gpu, &y1), free_t(gpu, &g1), free_t(gpu, &u1);
        }
        free(xh);
    }
    free(bh);
}

/* On both backends a matmul with a bias gives the bits of the same matmul without it plus the bias
 * in float (the add qwen2's q, k and v projections used to run as an op of their own). */
Test(conformance, matmul_adds_its_bias_to_the_finished_sums)
{
    need_cuda();
    const int64_t k = 256, rows = 37;
    const int n = 9;
    float *bh = random_f32(rows, 2.0f), *xh = random_f32(k * n, 1.0f);
    struct kern_backend *both[] = {cpu, gpu};
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        const enum spec_dtype t = kt_cpu_types[ti];
        size_t rb;
        void *wh = random_weights(t, k, rows, 0, &rb);
        for (int bi = 0; bi < 2; bi++) {
            struct kern_backend *b = both[bi];
            struct kern_tensor w = weight(b, t, k, rows, wh), x = upload(b, SPEC_F32, k, n, xh),
                               bias = upload(b, SPEC_F32, rows, 1, bh), y0 = poisoned(b, rows, n),
                               y1 = poisoned(b, rows, n), short_bias = upload(b, SPEC_F32, rows - 1, 1, bh);
            cr_assert_eq(b->ops->matmul(b, &w, &x, NULL, &y0), 0);
            cr_assert_eq(b->ops->matmul(b, &w, &x, &bias, &y1), 0);
            cr_assert_eq(b->ops->matmul(b, &w, &x, &short_bias, &y1), SPEC_E_INVALID_ARG);
            float *want = download(b, &y0), *got = download(b, &y1);
            for (int r = 0; r < n; r++)
                for (int64_t j = 0; j < rows; j++)
                    want[r * rows + j] = want[r * rows + j] + bh[j];
            assert_bits(got, want, (size_t)(rows * n) * sizeof(float), kern_dtype_info(t)->name);
            free(want), free(got);
            free_t(b, &w), free_t(b, &x), free_t(b, &bias), free_t(b, &y0), free_t(b, &y1), free_t(b, &short_bias);
        }
        free(wh);
    }
    free(bh), free(xh);
}

/* On both backends the matmuls op gives the bits of its matmuls one by one (then swiglu): q, k and v
 * of three widths with biases, gate and up with the swiglu, for every type and batch size. */
Test(conformance, matmuls_give_the_bits_of_one_matmul_after_the_other)
{
    need_cuda();
    const int64_t k = 256, rows[3] = {70, 16, 33};
    const int batches[3] = {1, 3, 9};
    float *bh = random_f32(70, 2.0f), *xh = random_f32(k * 9, 1.0f);
    struct kern_backend *both[] = {cpu, gpu};
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        const enum spec_dtype t = kt_cpu_types[ti];
        void *wh[3];
        size_t rb;
        for (int i = 0; i < 3; i++)
            wh[i] = random_weights(t, k, rows[i], 0, &rb);
        void *wh_up = random_weights(t, k, rows[0], 0, &rb);
        for (int bi = 0; bi < 2; bi++)
            for (int nb = 0; nb < 3; nb++) {
                struct kern_backend *b = both[bi];
                const int n = batches[nb];
                struct kern_tensor w[3], bias[3], y[3], want[3], x = upload(b, SPEC_F32, k, n, xh);
                struct kern_matmul mm[3];
                for (int i = 0; i < 3; i++) {
                    w[i] = weight(b, t, k, rows[i], wh[i]);
                    bias[i] = upload(b, SPEC_F32, rows[i], 1, bh);
                    y[i] = poisoned(b, rows[i], n);
                    want[i] = poisoned(b, rows[i], n);
                    mm[i] = (struct kern_matmul){&w[i], i == 1 ? NULL : &bias[i], &y[i]};
                    cr_assert_eq(b->ops->matmul(b, &w[i], &x, mm[i].bias, &want[i]), 0);
                }
                cr_assert_eq(b->ops->matmuls(b, &x, mm, 3, KERN_MATMULS_PLAIN), 0);
                for (int i = 0; i < 3; i++) {
                    float *g = download(b, &y[i]), *e = download(b, &want[i]);
                    assert_bits(g, e, (size_t)(rows[i] * n) * sizeof(float), kern_dtype_info(t)->name);
                    free(g), free(e);
                }
                /* gate (w[0]) and up of one shape, both with a bias: y0 = silu(gate) * up, y1 = up */
                struct kern_tensor up = weight(b, t, k, rows[0], wh_up), g = poisoned(b, rows[0], n),
                                   u = poisoned(b, rows[0], n), yg = poisoned(b, rows[0], n), yu = poisoned(b, rows[0], n);
                cr_assert_eq(b->ops->matmul(b, &w[0], &x, &bias[0], &g), 0);
                cr_assert_eq(b->ops->matmul(b, &up, &x, &bias[0], &u), 0);
                cr_assert_eq(b->ops->swiglu(b, &g, &u, &g), 0);
                const struct kern_matmul gu[2] = {{&w[0], &bias[0], &yg}, {&up, &bias[0], &yu}};
                cr_assert_eq(b->ops->matmuls(b, &x, gu, 2, KERN_MATMULS_SWIGLU), 0);
                float *gg = download(b, &yg), *ge = download(b, &g), *ug = download(b, &yu), *ue = download(b, &u);
                assert_bits(gg, ge, (size_t)(rows[0] * n) * sizeof(float), "swiglu of gate and up");
                assert_bits(ug, ue, (size_t)(rows[0] * n) * sizeof(float), "up beside the swiglu");
                free(gg), free(ge), free(ug), free(ue);
                free_t(b, &up), free_t(b, &g), free_t(b, &u), free_t(b, &yg), free_t(b, &yu);
                for (int i = 0; i < 3; i++)
                    free_t(b, &w[i]), free_t(b, &bias[i]), free_t(b, &y[i]), free_t(b, &want[i]);
                free_t(b, &x);
            }
        for (int i = 0; i < 3; i++)
            free(wh[i]);
        free(wh_up);
    }
    free(bh), free(xh);
}

/* ---------------------------------------------------------------------------------------------- */
/* matmuls_prefill through cuBLAS                                                                 */

/* A second CUDA backend, with blas_prefill (after need_cuda): a GPU without libcublas fails here. */
static struct kern_backend *blas_backend(void)
{
    struct kern_backend_config cfg = tsupport_backend_config(0);
    cfg.blas_prefill = true;
    struct kern_backend *b = NULL;
    const int err = kern_backend_create("cuda", &cfg, &b);
    cr_assert_eq(err, 0, "CUDA with cuBLAS for prefills: %s (libcublas missing?)", spec_errname(err));
    return b;
}

/* The product of x (n rows) and weights wh (type t, `rows` rows of k) through matmuls_prefill on b, with
 * a bias when bias is not NULL, as n rows of `rows` floats on the host. */
static float *prefill_product(struct kern_backend *b, enum spec_dtype t, const void *wh, int64_t k, int64_t rows,
                              const float *bias, const float *xh, int n)
{
    struct kern_tensor w = weight(b, t, k, rows, wh), x = upload(b, SPEC_F32, k, n, xh), y = poisoned(b, rows, n),
                       bt = upload(b, SPEC_F32, rows, 1, bias ? bias : xh);
    const struct kern_matmul mm = {&w, bias ? &bt : NULL, &y};
    cr_assert_eq(b->ops->matmuls_prefill(b, &x, &mm, 1, KERN_MATMULS_PLAIN), 0, "%s: matmuls_prefill failed",
                 kern_dtype_info(t)->name);
    float *out = download(b, &y);
    free_t(b, &w), free_t(b, &x), free_t(b, &y), free_t(b, &bt);
    return out;
}

/* F16 operands, F32 sums: a product of x and w each rounded to F16 is within 2^-10 (plus 2^-25 per operand
 * where F16 turns subnormal) of the exact one, the sum of k of them within k 2^-24 of its own magnitude. */
Test(conformance, prefill_matmuls_through_cublas_are_within_f16_rounding_of_the_exact_products)
{
    need_cuda();
    struct kern_backend *b = blas_backend();
    const int64_t k = 512, rows = 67;
    const int ns[] = {1, 130}; /* 130: a chunk of CUDA_BLAS_ROWS and a padded one */
    float *bias = random_f32(rows, 2.0f), *xh = random_f32(k * 130, 1.0f), *wf = malloc(sizeof(float) * (size_t)(k * rows));
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        const enum spec_dtype t = kt_cpu_types[ti];
        size_t rb;
        void *wh = random_weights(t, k, rows, 0, &rb);
        for (int64_t r = 0; r < rows; r++)
            cr_assert_eq(kern_dequantize_row(t, (const uint8_t *)wh + (size_t)r * rb, wf + r * k, k), 0);
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const int n = ns[ni];
            float *got = prefill_product(b, t, wh, k, rows, bias, xh, n);
            for (int r = 0; r < n; r++)
                for (int64_t j = 0; j < rows; j++) {
                    double exact = 0.0, mag = 0.0, sub = 0.0;
                    for (int64_t i = 0; i < k; i++) {
                        const double w = wf[j * k + i], x = xh[(int64_t)r * k + i];
                        exact += w * x;
                        mag += fabs(w * x);
                        sub += fabs(w) + fabs(x);
                    }
                    exact += bias[j];
                    const double bound = 1.1e-3 * mag + 3e-8 * sub + 1e-7 * fabs(exact);
                    const float g = got[r * rows + j];
                    cr_assert(fabs((double)g - exact) <= bound, "%s n=%d: y[%d][%lld] = %.9g, exactly %.9g (bound %.3g)",
                              kern_dtype_info(t)->name, n, r, (long long)j, g, exact, bound);
                }
            free(got);
        }
        free(wh);
    }
    free(bias), free(xh), free(wf);
    kern_backend_destroy(b);
}

/* Every GEMM has one shape, so a row's bits are those of that row alone: whatever the rows beside it,
 * its place in a chunk, or the chunks before it. */
Test(conformance, prefill_rows_through_cublas_do_not_depend_on_the_other_rows)
{
    need_cuda();
    struct kern_backend *b = blas_backend();
    const int64_t k = 256, rows = 40;
    const int n = 200, subsets[][2] = {{0, 1}, {127, 3}, {150, 50}, {199, 1}, {5, 140}};
    float *bias = random_f32(rows, 2.0f), *xh = random_f32(k * n, 1.0f);
    const enum spec_dtype types[] = {SPEC_Q4_K, SPEC_Q8_0, SPEC_F16};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        size_t rb;
        void *wh = random_weights(types[ti], k, rows, 0, &rb);
        float *all = prefill_product(b, types[ti], wh, k, rows, bias, xh, n);
        for (size_t si = 0; si < sizeof subsets / sizeof subsets[0]; si++) {
            const int r0 = subsets[si][0], m = subsets[si][1];
            float *part = prefill_product(b, types[ti], wh, k, rows, bias, xh + (size_t)r0 * k, m);
            char what[64];
            snprintf(what, sizeof what, "%s rows %d..%d alone", kern_dtype_info(types[ti])->name, r0, r0 + m - 1);
            assert_bits(part, all + (size_t)r0 * rows, sizeof(float) * (size_t)(m * rows), what);
            free(part);
        }
        free(all), free(wh);
    }
    free(bias), free(xh);
    kern_backend_destroy(b);
}

/* Several parts in one call give each part's product alone; with SWIGLU, the backend's swiglu of them. */
Test(conformance, prefill_matmuls_through_cublas_give_each_parts_product_and_their_swiglu)
{
    need_cuda();
    struct kern_backend *b = blas_backend();
    const int64_t k = 256, rows[3] = {70, 16, 33};
    const int n = 9;
    const enum spec_dtype t = SPEC_Q4_K;
    float *bias = random_f32(70, 2.0f), *xh = random_f32(k * n, 1.0f);
    void *wh[3];
    size_t rb;
    for (int i = 0; i < 3; i++)
        wh[i] = random_weights(t, k, rows[i], 0, &rb);
    struct kern_tensor x = upload(b, SPEC_F32, k, n, xh), bt = upload(b, SPEC_F32, 70, 1, bias), w[3], y[3];
    struct kern_matmul mm[3];
    for (int i = 0; i < 3; i++) {
        w[i] = weight(b, t, k, rows[i], wh[i]);
        y[i] = poisoned(b, rows[i], n);
        mm[i] = (struct kern_matmul){&w[i], i == 0 ? &bt : NULL, &y[i]};
    }
    cr_assert_eq(b->ops->matmuls_prefill(b, &x, mm, 3, KERN_MATMULS_PLAIN), 0);
    for (int i = 0; i < 3; i++) {
        float *got = download(b, &y[i]), *alone = prefill_product(b, t, wh[i], k, rows[i], i == 0 ? bias : NULL, xh, n);
        assert_bits(got, alone, sizeof(float) * (size_t)(rows[i] * n), "a part of three");
        free(got), free(alone);
    }
    /* gate (w[0], with its bias) and an up of its shape */
    void *wh_up = random_weights(t, k, rows[0], 0, &rb);
    struct kern_tensor up = weight(b, t, k, rows[0], wh_up), g = poisoned(b, rows[0], n), u = poisoned(b, rows[0], n),
                       yu = poisoned(b, rows[0], n);
    const struct kern_matmul plain[2] = {{&w[0], &bt, &g}, {&up, NULL, &u}};
    cr_assert_eq(b->ops->matmuls_prefill(b, &x, plain, 2, KERN_MATMULS_PLAIN), 0);
    cr_assert_eq(b->ops->swiglu(b, &g, &u, &g), 0);
    const struct kern_matmul gu[2] = {{&w[0], &bt, &y[0]}, {&up, NULL, &yu}};
    cr_assert_eq(b->ops->matmuls_prefill(b, &x, gu, 2, KERN_MATMULS_SWIGLU), 0);
    float *sw = download(b, &y[0]), *want = download(b, &g), *ug = download(b, &yu), *uw = download(b, &u);
    assert_bits(sw, want, sizeof(float) * (size_t)(rows[0] * n), "swiglu of the products");
    assert_bits(ug, uw, sizeof(float) * (size_t)(rows[0] * n), "up beside the swiglu");
    free(sw), free(want), free(ug), free(uw);
    free_t(b, &up), free_t(b, &g), free_t(b, &u), free_t(b, &yu), free_t(b, &x), free_t(b, &bt);
    free(wh_up);
    for (int i = 0; i < 3; i++)
        free_t(b, &w[i]), free_t(b, &y[i]), free(wh[i]);
    free(bias), free(xh);
    kern_backend_destroy(b);
}

/* Without blas_prefill the CUDA backend's prefill path is its matmuls, bits and all. */
Test(conformance, prefill_matmuls_without_cublas_are_the_matmuls)
{
    need_cuda();
    const int64_t k = 512, rows = 67;
    const int n = 33;
    float *bias = random_f32(rows, 2.0f), *xh = random_f32(k * n, 1.0f);
    size_t rb;
    void *wh = random_weights(SPEC_Q4_K, k, rows, 0, &rb);
    float *pre = prefill_product(gpu, SPEC_Q4_K, wh, k, rows, bias, xh, n);
    struct kern_tensor w = weight(gpu, SPEC_Q4_K, k, rows, wh), x = upload(gpu, SPEC_F32, k, n, xh),
                       bt = upload(gpu, SPEC_F32, rows, 1, bias), y = poisoned(gpu, rows, n);
    cr_assert_eq(gpu->ops->matmul(gpu, &w, &x, &bt, &y), 0);
    float *mm = download(gpu, &y);
    assert_bits(pre, mm, sizeof(float) * (size_t)(rows * n), "matmuls_prefill without cuBLAS");
    free(pre), free(mm), free(bias), free(xh), free(wh);
    free_t(gpu, &w), free_t(gpu, &x), free_t(gpu, &bt), free_t(gpu, &y);
}

/* y must hold the bits a fresh CUDA backend computes from w (type t, host blocks wh) and x as it is
 * now: no conversion kept from an earlier matmul may stand in for x's current values. */
static void expect_fresh(enum spec_dtype t, const void *wh, int64_t k, int64_t rows, const struct kern_tensor *x,
                         const struct kern_tensor *y, const char *what)
{
    struct kern_backend *ref = NULL;
    const struct kern_backend_config cfg = tsupport_backend_config(0);
    cr_assert_eq(kern_backend_create("cuda", &cfg, &ref), 0);
    float *xh = download(gpu, x), *got = download(gpu, y);
    struct kern_tensor wr = weight(ref, t, k, rows, wh), xr = upload(ref, SPEC_F32, k, x->ne1, xh),
                       yr = poisoned(ref, rows, x->ne1);
    cr_assert_eq(ref->ops->matmul(ref, &wr, &xr, NULL, &yr), 0);
    float *want = download(ref, &yr);
    assert_bits(got, want, (size_t)(rows * x->ne1) * sizeof(float), what);
    free(want), free(got), free(xh);
    free_t(ref, &wr), free_t(ref, &xr), free_t(ref, &yr);
    kern_backend_destroy(ref);
}

/* Matmuls of one input with weights of one kind share its conversion (q, k and v; gate and up);
 * anything that writes the input in between (a copy from the host, an op, a matmul whose output
 * overlaps it) or a different input, row count or conversion makes the next matmul convert anew. */
Test(conformance, matmuls_of_one_input_share_its_conversion_until_it_changes)
{
    need_cuda();
    const int64_t k = 512, rows = 40;
    const int n = 4;
    size_t rb;
    void *w1h = random_weights(SPEC_Q4_K, k, rows, 0, &rb), *w2h = random_weights(SPEC_Q4_K, k, rows, 0, &rb),
         *w3h = random_weights(SPEC_Q4_1, k, rows, 0, &rb), *wfh = random_weights(SPEC_F32, k, k, 0, &rb);
    float *xh = random_f32(k * n, 1.0f), *x2h = random_f32(k * n, 1.0f), *row = random_f32(k, 2.0f);
    struct kern_tensor w1 = weight(gpu, SPEC_Q4_K, k, rows, w1h), w2 = weight(gpu, SPEC_Q4_K, k, rows, w2h),
                       w3 = weight(gpu, SPEC_Q4_1, k, rows, w3h), wf = weight(gpu, SPEC_F32, k, k, wfh),
                       x = upload(gpu, SPEC_F32, k, n, xh), x2 = upload(gpu, SPEC_F32, k, n, x2h),
                       y1 = poisoned(gpu, rows, n), y2 = poisoned(gpu, rows, n), y3 = poisoned(gpu, rows, n);

    cr_assert_eq(gpu->ops->matmul(gpu, &w1, &x, NULL, &y1), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &w2, &x, NULL, &y2), 0);
    expect_fresh(SPEC_Q4_K, w2h, k, rows, &x, &y2, "second matmul of one input");
    cr_assert_eq(gpu->ops->matmul(gpu, &w3, &x, NULL, &y3), 0);
    expect_fresh(SPEC_Q4_1, w3h, k, rows, &x, &y3, "another conversion of the same input");
    cr_assert_eq(gpu->ops->matmul(gpu, &w2, &x, NULL, &y2), 0);
    expect_fresh(SPEC_Q4_K, w2h, k, rows, &x, &y2, "back to the first conversion");

    cr_assert_eq(gpu->ops->rows_from_host(gpu, &x, 1, 1, row), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &w2, &x, NULL, &y2), 0);
    expect_fresh(SPEC_Q4_K, w2h, k, rows, &x, &y2, "after a row copied from the host");

    cr_assert_eq(gpu->ops->add(gpu, &x, &x2, &x), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &w2, &x, NULL, &y2), 0);
    expect_fresh(SPEC_Q4_K, w2h, k, rows, &x, &y2, "after an op wrote the input");

    cr_assert_eq(gpu->ops->store_rows(gpu, &x2, &x, 0), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &w1, &x, NULL, &y1), 0);
    expect_fresh(SPEC_Q4_K, w1h, k, rows, &x, &y1, "after rows were stored into the input");

    cr_assert_eq(gpu->ops->matmul(gpu, &w1, &x, NULL, &y1), 0); /* kept: x */
    cr_assert_eq(gpu->ops->matmul(gpu, &wf, &x2, NULL, &x), 0); /* F32: no conversion, but writes x */
    cr_assert_eq(gpu->ops->matmul(gpu, &w1, &x, NULL, &y1), 0);
    expect_fresh(SPEC_Q4_K, w1h, k, rows, &x, &y1, "after a matmul wrote over the input");

    struct kern_tensor tail = x, head = x, yt = y1;
    tail.data = (char *)x.data + x.row_bytes, tail.ne1 = n - 1, tail.owned = false;
    head.ne1 = 2, head.owned = false;
    yt.ne1 = n - 1, yt.owned = false;
    cr_assert_eq(gpu->ops->matmul(gpu, &w1, &x, NULL, &y1), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &w2, &tail, NULL, &yt), 0);
    expect_fresh(SPEC_Q4_K, w2h, k, rows, &tail, &yt, "rows of the input further on");
    yt.ne1 = 2;
    cr_assert_eq(gpu->ops->matmul(gpu, &w1, &x, NULL, &y1), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &w2, &head, NULL, &yt), 0);
    expect_fresh(SPEC_Q4_K, w2h, k, rows, &head, &yt, "fewer rows of the input");

    free_t(gpu, &w1), free_t(gpu, &w2), free_t(gpu, &w3), free_t(gpu, &wf), free_t(gpu, &x), free_t(gpu, &x2);
    free_t(gpu, &y1), free_t(gpu, &y2), free_t(gpu, &y3);
    free(w1h), free(w2h), free(w3h), free(wfh), free(xh), free(x2h), free(row);
}

/* A gate|up matmul with its swiglu leaves its output converted for the matmul after it (w_down): that
 * matmul gives the bits of one converting the output itself, for every quantised type, one row
 * (decode) or several, twice in a row (the conversion's counters start from zero again), with a w_down
 * of another conversion, and after an op wrote the output in between. */
Test(conformance, a_swiglus_output_converted_by_its_matmul_gives_the_next_matmul_its_bits)
{
    need_cuda();
    const int64_t k = 256, n_ff = 512, rows = 32;
    const int ns[] = {1, 9};
    float *xh = random_f32(k * 9, 1.0f), *other = random_f32(n_ff * 9, 0.5f);
    const enum spec_dtype quantised[] = {SPEC_Q4_0, SPEC_Q4_1, SPEC_Q5_0, SPEC_Q8_0, SPEC_Q4_K, SPEC_Q6_K};
    for (size_t ti = 0; ti < sizeof quantised / sizeof quantised[0]; ti++) {
        const enum spec_dtype t = quantised[ti], t_down = t == SPEC_Q4_K ? SPEC_Q6_K : SPEC_Q4_K;
        const char *name = kern_dtype_info(t)->name;
        size_t rb;
        void *gh = random_weights(t, k, n_ff, 0, &rb), *uh = random_weights(t, k, n_ff, 0, &rb),
             *dh = random_weights(t, n_ff, rows, 0, &rb), *d2h = random_weights(t_down, n_ff, rows, 0, &rb);
        struct kern_tensor wg = weight(gpu, t, k, n_ff, gh), wu = weight(gpu, t, k, n_ff, uh),
                           wd = weight(gpu, t, n_ff, rows, dh), wd2 = weight(gpu, t_down, n_ff, rows, d2h);
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const int n = ns[ni];
            struct kern_tensor x = upload(gpu, SPEC_F32, k, n, xh), g = poisoned(gpu, n_ff, n),
                               u = poisoned(gpu, n_ff, n), y = poisoned(gpu, rows, n), o = upload(gpu, SPEC_F32, n_ff, n, other);
            const struct kern_matmul gu[2] = {{&wg, NULL, &g}, {&wu, NULL, &u}};
            char what[96];
            for (int again = 0; again < 2; again++) { /* the second time on other values */
                if (again)
                    cr_assert_eq(gpu->ops->rows_from_host(gpu, &x, 0, n, xh + k * 9 - k * n), 0);
                cr_assert_eq(gpu->ops->matmuls(gpu, &x, gu, 2, KERN_MATMULS_SWIGLU), 0);
                cr_assert_eq(gpu->ops->matmul(gpu, &wd, &g, NULL, &y), 0);
                snprintf(what, sizeof what, "%s n=%d: w_down after the swiglu (%s time)", name, n, again ? "second" : "first");
                expect_fresh(t, dh, n_ff, rows, &g, &y, what);
            }
            cr_assert_eq(gpu->ops->matmuls(gpu, &x, gu, 2, KERN_MATMULS_SWIGLU), 0);
            cr_assert_eq(gpu->ops->matmul(gpu, &wd2, &g, NULL, &y), 0);
            snprintf(what, sizeof what, "%s n=%d: a %s w_down after the swiglu", name, n, kern_dtype_info(t_down)->name);
            expect_fresh(t_down, d2h, n_ff, rows, &g, &y, what);
            cr_assert_eq(gpu->ops->matmuls(gpu, &x, gu, 2, KERN_MATMULS_SWIGLU), 0);
            cr_assert_eq(gpu->ops->add(gpu, &g, &o, &g), 0);
            cr_assert_eq(gpu->ops->matmul(gpu, &wd, &g, NULL, &y), 0);
            snprintf(what, sizeof what, "%s n=%d: w_down after an op wrote the swiglu's output", name, n);
            expect_fresh(t, dh, n_ff, rows, &g, &y, what);
            free_t(gpu, &x), free_t(gpu, &g), free_t(gpu, &u), free_t(gpu, &y), free_t(gpu, &o);
        }
        free_t(gpu, &wg), free_t(gpu, &wu), free_t(gpu, &wd), free_t(gpu, &wd2);
        free(gh), free(uh), free(dh), free(d2h);
    }
    free(xh), free(other);
}

/* ---------------------------------------------------------------------------------------------- */
/* get_rows                                                                                       */

Test(conformance, get_rows_dequantizes_bit_identically_for_every_type)
{
    need_cuda();
    const int64_t k = 512, rows = 7;
    const int32_t ids[] = {3, 0, 6, 3};
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        for (int raw = 0; raw < 2; raw++) {
            const enum spec_dtype t = kt_cpu_types[ti];
            size_t rb;
            void *wh = random_weights(t, k, rows, raw, &rb);
            struct kern_tensor tc = weight(cpu, t, k, rows, wh), tg = weight(gpu, t, k, rows, wh), oc,
                               og = poisoned(gpu, k, 4);
            cr_assert_eq(cpu->ops->tensor_alloc(cpu, SPEC_F32, k, 4, &oc), 0);
            cr_assert_eq(cpu->ops->get_rows(cpu, &tc, ids, 4, &oc), 0);
            cr_assert_eq(gpu->ops->get_rows(gpu, &tg, ids, 4, &og), 0);
            float *want = download(cpu, &oc), *got = download(gpu, &og);
            assert_bits(got, want, (size_t)(4 * k) * sizeof(float), kern_dtype_info(t)->name);
            const int32_t bad[] = {7};
            cr_assert_eq(gpu->ops->get_rows(gpu, &tg, bad, 1, &og), SPEC_E_INVALID_ARG); /* out has 4 rows */
            free(want), free(got), free(wh);
            free_t(cpu, &tc), free_t(cpu, &oc), free_t(gpu, &tg), free_t(gpu, &og);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Row-wise ops                                                                                   */

/* Rows as wide as Qwen2.5's vocabulary, with a tie, NaN, -inf, +inf and a row with nothing to choose. */
Test(conformance, argmax_picks_the_cpus_ids_with_its_probabilities)
{
    need_cuda();
    const int64_t ne0 = 151936, n = 6;
    float *xh = random_f32(ne0 * n, 4.0f);
    xh[0 * ne0 + 90000] = xh[0 * ne0 + 1234] = 30.0f;
    xh[1 * ne0 + 0] = NAN, xh[1 * ne0 + 5] = -INFINITY;
    xh[2 * ne0 + 151935] = INFINITY;
    for (int64_t i = 0; i < ne0; i++)
        xh[3 * ne0 + i] = i % 3 ? -INFINITY : NAN;
    struct kern_tensor xc = upload(cpu, SPEC_F32, ne0, n, xh), xg = upload(gpu, SPEC_F32, ne0, n, xh);
    int32_t want[6], got[6], got_alone[6];
    float want_p[6], got_p[6];
    cr_assert_eq(cpu->ops->argmax(cpu, &xc, want, want_p), 0);
    cr_assert_eq(gpu->ops->argmax(gpu, &xg, got, got_p), 0);
    cr_assert_eq(gpu->ops->argmax(gpu, &xg, got_alone, NULL), 0);
    assert_bits(got, want, sizeof want, "argmax ids");
    assert_bits(got_alone, want, sizeof want, "argmax ids without probabilities");
    assert_close_rel(got_p, want_p, n, 1e-6, "argmax probabilities");
    cr_assert_eq(want[0], 1234);
    cr_assert_eq(want[3], -1);
    free(xh);
    free_t(cpu, &xc), free_t(gpu, &xg);
}

static struct kern_tensor ids_tensor(struct kern_backend *b, int64_t n, const int32_t *host)
{
    struct kern_tensor t;
    cr_assert_eq(b->ops->tensor_alloc(b, SPEC_I32, 1, n, &t), 0);
    if (host)
        cr_assert_eq(b->ops->rows_from_host(b, &t, 0, n, host), 0);
    return t;
}

/* The ids a chain of steps keeps on the device: argmax_keep writes argmax's ids where it is told, and
 * get_rows_kept reads rows by them, an id outside the table (argmax's -1) as zeros. */
Test(conformance, ids_kept_on_the_device_are_argmaxs_and_feed_get_rows)
{
    need_cuda();
    const int64_t ne0 = 9000, n = 5; /* two slices a row */
    float *xh = random_f32(ne0 * n, 4.0f);
    xh[0 * ne0 + 7000] = xh[0 * ne0 + 12] = 30.0f;
    xh[1 * ne0 + 0] = NAN, xh[1 * ne0 + 5] = -INFINITY;
    for (int64_t i = 0; i < ne0; i++)
        xh[3 * ne0 + i] = i % 3 ? -INFINITY : NAN;
    int32_t want[5], got_c[10], got_g[10];
    struct kern_tensor xc = upload(cpu, SPEC_F32, ne0, n, xh), xg = upload(gpu, SPEC_F32, ne0, n, xh);
    cr_assert_eq(cpu->ops->argmax(cpu, &xc, want, NULL), 0);
    cr_assert_eq(want[0], 12);
    cr_assert_eq(want[3], -1);
    const int32_t fill[10] = {41, 41, 41, 41, 41, 41, 41, 41, 41, 41};
    struct kern_tensor ic = ids_tensor(cpu, 10, fill), ig = ids_tensor(gpu, 10, fill);
    cr_assert_eq(cpu->ops->argmax_keep(cpu, &xc, &ic, 3), 0);
    cr_assert_eq(gpu->ops->argmax_keep(gpu, &xg, &ig, 3), 0);
    cr_assert_eq(cpu->ops->rows_to_host(cpu, &ic, 0, 10, got_c), 0);
    cr_assert_eq(gpu->ops->rows_to_host(gpu, &ig, 0, 10, got_g), 0);
    for (int r = 0; r < 10; r++) {
        const int32_t w = r >= 3 && r < 3 + n ? want[r - 3] : 41;
        cr_assert_eq(got_c[r], w, "cpu: row %d holds %d, expected %d", r, got_c[r], w);
        cr_assert_eq(got_g[r], w, "cuda: row %d holds %d, expected %d", r, got_g[r], w);
    }
    cr_assert_eq(gpu->ops->argmax_keep(gpu, &xg, &ig, 6), SPEC_E_RANGE); /* rows 6 .. 10 of 10 */
    cr_assert_eq(gpu->ops->argmax_keep(gpu, &xg, &xg, 0), SPEC_E_INVALID_ARG);
    cr_assert_eq(cpu->ops->argmax_keep(cpu, &xc, &ic, 6), SPEC_E_RANGE);
    free_t(cpu, &ic), free_t(gpu, &ig);

    const int64_t k = 512, rows = 7;
    const int32_t chain[6] = {5, -1, 3, 7, 0, INT32_MIN}; /* 7 and INT32_MIN: past the table */
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        const enum spec_dtype t = kt_cpu_types[ti];
        size_t rb;
        void *wh = random_weights(t, k, rows, 0, &rb);
        struct kern_tensor tc = weight(cpu, t, k, rows, wh), tg = weight(gpu, t, k, rows, wh), oc = poisoned(cpu, k, 5),
                           og = poisoned(gpu, k, 5), one = poisoned(cpu, k, 1);
        ic = ids_tensor(cpu, 6, chain), ig = ids_tensor(gpu, 6, chain);
        cr_assert_eq(cpu->ops->get_rows_kept(cpu, &tc, &ic, 1, 5, &oc), 0);
        cr_assert_eq(gpu->ops->get_rows_kept(gpu, &tg, &ig, 1, 5, &og), 0);
        float *wc = download(cpu, &oc), *wg = download(gpu, &og);
        assert_bits(wg, wc, (size_t)(5 * k) * sizeof(float), kern_dtype_info(t)->name);
        const int32_t three = 3;
        cr_assert_eq(cpu->ops->get_rows(cpu, &tc, &three, 1, &one), 0);
        float *row3 = download(cpu, &one);
        assert_bits(wc + k, row3, (size_t)k * sizeof(float), "the row of a kept id");
        for (int64_t e = 0; e < k; e++)
            cr_assert(wc[e] == 0.0f && wc[2 * k + e] == 0.0f && wc[4 * k + e] == 0.0f,
                      "%s: an id past the table gives zeros", kern_dtype_info(t)->name);
        cr_assert_eq(gpu->ops->get_rows_kept(gpu, &tg, &ig, 2, 5, &og), SPEC_E_RANGE);
        cr_assert_eq(gpu->ops->get_rows_kept(gpu, &tg, &og, 0, 5, &og), SPEC_E_INVALID_ARG);
        free(wc), free(wg), free(row3), free(wh);
        free_t(cpu, &tc), free_t(cpu, &oc), free_t(cpu, &one), free_t(cpu, &ic);
        free_t(gpu, &tg), free_t(gpu, &og), free_t(gpu, &ig);
    }
    free(xh);
    free_t(cpu, &xc), free_t(gpu, &xg);
}

/* ---------------------------------------------------------------------------------------------- */
/* Sampling on the device against verify/ on the host                                             */

/* A row of logits of one of several kinds: normal of a given spread, coarse (many ties), or with NaN
 * and -inf entries. */
static void sample_logits(float *l, int64_t n, int kind)
{
    const float spread[] = {0.05f, 1.0f, 3.0f, 8.0f};
    kt_fill_normal(&rng, l, n, spread[kind % 4]);
    if (kind % 3 == 1) /* ties: values on a grid of 0.25 */
        for (int64_t i = 0; i < n; i++)
            l[i] = roundf(l[i] * 4.0f) / 4.0f;
    if (kind % 5 == 2)
        for (int64_t i = 0; i < n; i += 7)
            l[i] = i % 2 ? NAN : -INFINITY;
}

/* Same support as verify_process, each probability within 1e-6 of it. */
static void check_process(int64_t n_vocab)
{
    const struct kern_sampler settings[] = {
        {.temperature = 0.8f, .top_p = 1.0f, .repeat_penalty = 1.0f},
        {.temperature = 0.7f, .top_k = 40, .top_p = 1.0f, .repeat_penalty = 1.0f},
        {.temperature = 1.0f, .top_p = 0.9f, .repeat_penalty = 1.0f},
        {.temperature = 1.0f, .top_p = 0.995f, .repeat_penalty = 1.0f},
        {.temperature = 1.2f, .top_k = 3000, .top_p = 1.0f, .repeat_penalty = 1.0f},
        {.temperature = 0.9f, .top_p = 1.0f, .min_p = 0.05f, .repeat_penalty = 1.0f},
        {.temperature = 1.3f, .top_k = 50, .top_p = 0.8f, .min_p = 0.02f, .repeat_penalty = 1.0f},
        {.temperature = 0.6f, .top_p = 0.95f, .repeat_penalty = 1.3f, .frequency_penalty = 0.2f, .presence_penalty = 0.4f},
        {.temperature = 0.0f, .top_p = 1.0f, .repeat_penalty = 1.5f, .presence_penalty = 2.0f},
        {.temperature = 0.0f, .top_p = 1.0f, .repeat_penalty = 1.0f},
    };
    const int n_set = (int)(sizeof settings / sizeof settings[0]), n_kind = 8, n = n_set * n_kind + 1;
    float *lh = malloc((size_t)(n * n_vocab) * sizeof(float));
    for (int r = 0; r < n - 1; r++)
        sample_logits(lh + (size_t)r * n_vocab, n_vocab, r % n_kind);
    for (int64_t i = 0; i < n_vocab; i++) /* nothing finite: no mass */
        lh[(size_t)(n - 1) * n_vocab + i] = i % 2 ? NAN : -INFINITY;
    int32_t window[40];
    for (int i = 0; i < 40; i++)
        window[i] = i < 2 ? (i ? -1 : (int32_t)n_vocab + 5) : (int32_t)(kt_next(&rng) % 24) * 3;

    struct kern_tensor lg = upload(gpu, SPEC_F32, n_vocab, n, lh);
    struct kern_tensor out_a = poisoned(gpu, n_vocab, n - n / 2), out_b = poisoned(gpu, n_vocab, n / 2);
    struct kern_sample_row *rows = calloc((size_t)n, sizeof *rows);
    for (int r = 0; r < n; r++) /* reversed, alternating between two tensors */
        rows[r] = (struct kern_sample_row){.s = &settings[r % n_set], .row = r, .out = r % 2 ? &out_b : &out_a,
                                           .out_row = r / 2, .recent = window, .n_recent = r % 3 ? 40 : 0};
    cr_assert_eq(gpu->ops->sample_process(gpu, &lg, rows, n), 0);
    float *pa = download(gpu, &out_a), *pb = download(gpu, &out_b);

    struct verify_scratch *vs;
    cr_assert_eq(verify_scratch_new((int32_t)n_vocab, &vs), 0);
    float *want = malloc((size_t)n_vocab * sizeof(float));
    for (int r = 0; r < n; r++) {
        const struct kern_sampler *k = &settings[r % n_set];
        const struct verify_params vp = {.temperature = k->temperature, .top_k = k->top_k, .top_p = k->top_p,
                                         .min_p = k->min_p, .repeat_penalty = k->repeat_penalty,
                                         .frequency_penalty = k->frequency_penalty,
                                         .presence_penalty = k->presence_penalty};
        const int rc = verify_process(&vp, lh + (size_t)r * n_vocab, (int32_t)n_vocab, window,
                                      (size_t)rows[r].n_recent, vs, want);
        const float *got = (r % 2 ? pb : pa) + (size_t)(r / 2) * n_vocab;
        int kept = 0;
        for (int64_t i = 0; i < n_vocab; i++) {
            const float w = rc ? 0.0f : want[i];
            cr_assert((got[i] > 0.0f) == (w > 0.0f) && fabs((double)got[i] - w) <= 1e-6 * w,
                      "row %d (setting %d, kind %d), token %lld: %.9g, verify_process %.9g", r, r % n_set,
                      r % n_kind, (long long)i, got[i], w);
            kept += w > 0.0f;
        }
        if (r == n - 1)
            cr_assert_eq(rc, SPEC_E_NUMERIC);
        else
            cr_assert(kept >= 1);
    }
    free(want);
    verify_scratch_free(vs);
    free(rows), free(pa), free(pb), free(lh);
    free_t(gpu, &lg), free_t(gpu, &out_a), free_t(gpu, &out_b);
}

Test(conformance, sample_process_gives_verify_process_distributions)
{
    need_cuda();
    check_process(300);
    check_process(9000); /* more candidates than the shared-memory sort takes: the search narrows first */
}

Test(conformance, sample_process_counts_ids_past_the_logits_as_minus_infinity)
{
    need_cuda();
    const int64_t n_vocab = 500, n_logits = 463; /* a draft computing logits of its first ids only */
    float *lh = random_f32(n_logits, 2.0f), *padded = malloc((size_t)n_vocab * sizeof(float));
    memcpy(padded, lh, (size_t)n_logits * sizeof(float));
    for (int64_t i = n_logits; i < n_vocab; i++)
        padded[i] = -INFINITY;
    const struct kern_sampler k = {.temperature = 0.9f, .top_p = 0.97f, .repeat_penalty = 1.2f};
    const int32_t window[3] = {480, 3, 480}; /* a penalised id past the logits stays impossible */
    struct kern_tensor lg = upload(gpu, SPEC_F32, n_logits, 1, lh), out = poisoned(gpu, n_vocab, 1);
    const struct kern_sample_row row = {.s = &k, .out = &out, .recent = window, .n_recent = 3};
    cr_assert_eq(gpu->ops->sample_process(gpu, &lg, &row, 1), 0);
    float *got = download(gpu, &out), *want = malloc((size_t)n_vocab * sizeof(float));
    struct verify_scratch *vs;
    cr_assert_eq(verify_scratch_new((int32_t)n_vocab, &vs), 0);
    const struct verify_params vp = {.temperature = 0.9f, .top_p = 0.97f, .repeat_penalty = 1.2f};
    cr_assert_eq(verify_process(&vp, padded, (int32_t)n_vocab, window, 3, vs, want), 0);
    for (int64_t i = 0; i < n_vocab; i++)
        cr_assert((got[i] > 0.0f) == (want[i] > 0.0f) && fabs((double)got[i] - want[i]) <= 1e-6 * want[i],
                  "token %lld: %.9g, verify_process %.9g", (long long)i, got[i], want[i]);
    verify_scratch_free(vs);
    free(lh), free(padded), free(got), free(want);
    free_t(gpu, &lg), free_t(gpu, &out);
}

/* Processed rows of correlated logits (the draft's a noisy copy of the target's). */
static void processed_rows(float *rows, int n, int64_t n_vocab, const float *base, float noise)
{
    struct verify_scratch *vs;
    cr_assert_eq(verify_scratch_new((int32_t)n_vocab, &vs), 0);
    float *l = malloc((size_t)n_vocab * sizeof(float));
    struct verify_params vp = verify_params_default();
    vp.temperature = 1.0f;
    vp.top_k = 60;
    for (int r = 0; r < n; r++) {
        for (int64_t i = 0; i < n_vocab; i++)
            l[i] = base[(size_t)r * n_vocab + i] + noise * kt_normal(&rng);
        cr_assert_eq(verify_process(&vp, l, (int32_t)n_vocab, NULL, 0, vs, rows + (size_t)r * n_vocab), 0);
    }
    free(l);
    verify_scratch_free(vs);
}

Test(conformance, sample_choose_runs_verify_round_sampled)
{
    need_cuda();
    const int64_t n_vocab = 700;
    const int n_jobs = 48, gamma = 6;
    const int rows = n_jobs * (gamma + 1);
    float *base = random_f32(rows * n_vocab, 2.0f);
    float *ph = malloc((size_t)(rows * n_vocab) * sizeof(float)), *qh = malloc((size_t)(rows * n_vocab) * sizeof(float));
    processed_rows(ph, rows, n_vocab, base, 0.0f);
    processed_rows(qh, rows, n_vocab, base, 0.7f);
    for (int64_t i = 0; i < n_vocab; i++) /* job 3 draws from a row without mass */
        ph[(size_t)(3 * (gamma + 1)) * n_vocab + i] = 0.0f;
    struct kern_tensor pg = upload(gpu, SPEC_F32, n_vocab, rows, ph), qg = upload(gpu, SPEC_F32, n_vocab, rows, qh);

    struct kern_choose jobs[48];
    int32_t drafts[48][6];
    double u_acc[48][6], u_smp[48][7];
    float *onehot = calloc((size_t)(gamma * n_vocab), sizeof(float));
    for (int j = 0; j < n_jobs; j++) {
        const int n_draft = j % 8 == 3 ? 0 : 1 + j % gamma;
        const bool lookup = j % 4 == 1; /* prompt lookup: q one-hot on the drafts */
        for (int i = 0; i < n_draft; i++) {
            /* drafts drawn from q (mostly accepted), now and then any token */
            const float *q = qh + (size_t)(j * (gamma + 1) + i) * n_vocab;
            int32_t x;
            cr_assert_eq(verify_sample(q, (int32_t)n_vocab, kt_uniform(&rng), &x), 0);
            drafts[j][i] = j % 6 == 5 && i == 1 ? (int32_t)(kt_next(&rng) % n_vocab) : x;
        }
        for (int i = 0; i <= n_draft; i++) {
            if (i < n_draft)
                u_acc[j][i] = verify_uniform(7, (uint64_t)j, 100 + (uint64_t)i, VERIFY_DRAW_ACCEPT);
            u_smp[j][i] = verify_uniform(7, (uint64_t)j, 100 + (uint64_t)i, VERIFY_DRAW_SAMPLE);
        }
        jobs[j] = (struct kern_choose){.p = &pg, .p_row = j * (gamma + 1), .q = lookup ? NULL : &qg,
                                       .q_row = j * (gamma + 1), .draft = drafts[j], .n_draft = n_draft,
                                       .u_accept = u_acc[j], .u_sample = u_smp[j], .err = -999};
    }
    cr_assert_eq(gpu->ops->sample_choose(gpu, jobs, n_jobs), 0);

    float *scratch = malloc((size_t)n_vocab * sizeof(float));
    int accepted = 0, rejected = 0;
    for (int j = 0; j < n_jobs; j++) {
        const struct kern_choose *g = &jobs[j];
        const float *q = qh + (size_t)(j * (gamma + 1)) * n_vocab;
        if (!g->q) {
            memset(onehot, 0, (size_t)(gamma * n_vocab) * sizeof(float));
            for (int i = 0; i < g->n_draft; i++)
                onehot[(size_t)i * n_vocab + drafts[j][i]] = 1.0f;
            q = onehot;
        }
        const struct verify_round r = {.p = ph + (size_t)(j * (gamma + 1)) * n_vocab, .q = q, .draft = drafts[j],
                                       .n_draft = g->n_draft, .n_vocab = (int32_t)n_vocab, .seed = 7,
                                       .seq = (uint64_t)j, .pos0 = 100, .scratch = scratch};
        int32_t want[7];
        int n_want = 0;
        const int rc = verify_round_sampled(&r, want, &n_want);
        cr_assert_eq(g->err, rc, "job %d: error %d, the host's %d", j, g->err, rc);
        if (rc)
            continue;
        cr_assert_eq(g->n_accepted + 1, n_want, "job %d: %d accepted, the host %d", j, g->n_accepted, n_want - 1);
        for (int i = 0; i < g->n_accepted; i++)
            cr_assert_eq(want[i], drafts[j][i]);
        cr_assert_eq(g->token, want[n_want - 1], "job %d: token %d, the host's %d", j, g->token, want[n_want - 1]);
        cr_assert_eq(g->prob, ph[(size_t)(j * (gamma + 1) + g->n_accepted) * n_vocab + g->token]);
        accepted += g->n_accepted;
        rejected += g->n_accepted < g->n_draft;
    }
    cr_assert_eq(jobs[3].err, SPEC_E_NUMERIC);
    cr_assert(accepted > 20 && rejected > 10, "the rounds exercise both outcomes (%d accepted, %d rejections)",
              accepted, rejected);
    free(scratch), free(onehot), free(base), free(ph), free(qh);
    free_t(gpu, &pg), free_t(gpu, &qg);
}

Test(conformance, rms_norm_matches_the_cpu_also_in_place)
{
    need_cuda();
    const int64_t ne0 = 1536, n = 5;
    float *xh = random_f32(ne0 * n, 3.0f), *wh = random_f32(ne0, 1.0f);
    struct kern_tensor xc = upload(cpu, SPEC_F32, ne0, n, xh), wc = upload(cpu, SPEC_F32, ne0, 1, wh), yc,
                       xg = upload(gpu, SPEC_F32, ne0, n, xh), wg = upload(gpu, SPEC_F32, ne0, 1, wh),
                       yg = poisoned(gpu, ne0, n);
    cr_assert_eq(cpu->ops->tensor_alloc(cpu, SPEC_F32, ne0, n, &yc), 0);
    cr_assert_eq(cpu->ops->rms_norm(cpu, &xc, NULL, &wc, 1e-6f, &yc), 0);
    cr_assert_eq(gpu->ops->rms_norm(gpu, &xg, NULL, &wg, 1e-6f, &yg), 0);
    cr_assert_eq(gpu->ops->rms_norm(gpu, &xg, NULL, &wg, 1e-6f, &xg), 0);
    float *want = download(cpu, &yc), *got = download(gpu, &yg), *inplace = download(gpu, &xg);
    assert_close_rel(got, want, ne0 * n, 1e-6, "rms_norm");
    assert_bits(inplace, got, (size_t)(ne0 * n) * sizeof(float), "rms_norm in place");
    free(want), free(got), free(inplace), free(xh), free(wh);
    free_t(cpu, &xc), free_t(cpu, &wc), free_t(cpu, &yc), free_t(gpu, &xg), free_t(gpu, &wg), free_t(gpu, &yg);
}

/* On both backends, a norm with a residual gives the bits of add then norm: x becomes x + residual,
 * y its norm, also when y is the residual (as the model calls it). */
Test(conformance, rms_norm_adds_its_residual_first)
{
    need_cuda();
    const int64_t ne0 = 1536, n = 5;
    float *xh = random_f32(ne0 * n, 3.0f), *rh = random_f32(ne0 * n, 2.0f), *wh = random_f32(ne0, 1.0f);
    struct kern_backend *both[] = {cpu, gpu};
    for (int bi = 0; bi < 2; bi++) {
        struct kern_backend *b = both[bi];
        struct kern_tensor x1 = upload(b, SPEC_F32, ne0, n, xh), x2 = upload(b, SPEC_F32, ne0, n, xh),
                           r1 = upload(b, SPEC_F32, ne0, n, rh), r2 = upload(b, SPEC_F32, ne0, n, rh),
                           w = upload(b, SPEC_F32, ne0, 1, wh), y = poisoned(b, ne0, n),
                           short_r = upload(b, SPEC_F32, ne0, n - 1, rh);
        cr_assert_eq(b->ops->add(b, &x1, &r1, &x1), 0);
        cr_assert_eq(b->ops->rms_norm(b, &x1, NULL, &w, 1e-6f, &y), 0);
        cr_assert_eq(b->ops->rms_norm(b, &x2, &r2, &w, 1e-6f, &r2), 0);
        cr_assert_eq(b->ops->rms_norm(b, &x2, &short_r, &w, 1e-6f, &y), SPEC_E_INVALID_ARG);
        float *want_x = download(b, &x1), *got_x = download(b, &x2), *want_y = download(b, &y),
              *got_y = download(b, &r2);
        assert_bits(got_x, want_x, (size_t)(ne0 * n) * sizeof(float), b->ops->name);
        assert_bits(got_y, want_y, (size_t)(ne0 * n) * sizeof(float), b->ops->name);
        free(want_x), free(got_x), free(want_y), free(got_y);
        free_t(b, &x1), free_t(b, &x2), free_t(b, &r1), free_t(b, &r2), free_t(b, &w), free_t(b, &y),
            free_t(b, &short_r);
    }
    free(xh), free(rh), free(wh);
}

/* The CUDA backend launches a norm together with the conversion of its output for the matmul that reads
 * it next: that gives the bits of the norm read back before the matmul, for every weight type (each
 * conversion, and the float types that take none), with the residual as output (as the model calls
 * it); a matmul of another input, and any other op, runs the norm before it. */
Test(conformance, a_norm_and_the_matmul_reading_it_give_the_bits_of_the_two_apart)
{
    need_cuda();
    const int64_t ne0 = 1536, rows = 67;
    const int ns[] = {1, 3, 9};
    float *xh = random_f32(ne0 * 9, 3.0f), *rh = random_f32(ne0 * 9, 2.0f), *wh = random_f32(ne0, 1.0f);
    struct kern_tensor w = upload(gpu, SPEC_F32, ne0, 1, wh);
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        const enum spec_dtype t = kt_cpu_types[ti];
        size_t rb;
        void *mh = random_weights(t, ne0, rows, 0, &rb);
        struct kern_tensor m = weight(gpu, t, ne0, rows, mh);
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const int n = ns[ni];
            char what[64];
            snprintf(what, sizeof what, "%s n=%d", kern_dtype_info(t)->name, n);
            struct kern_tensor x[3], r[3], out[3];
            for (int i = 0; i < 3; i++) {
                x[i] = upload(gpu, SPEC_F32, ne0, n, xh);
                r[i] = upload(gpu, SPEC_F32, ne0, n, rh);
                out[i] = poisoned(gpu, rows, n);
            }
            /* 0: the matmul reads the norm's output; 1: the output read back in between; 2: a matmul of
             * another input (x[1], done by then) follows the norm */
            cr_assert_eq(gpu->ops->rms_norm(gpu, &x[0], &r[0], &w, 1e-6f, &r[0]), 0);
            cr_assert_eq(gpu->ops->matmul(gpu, &m, &r[0], NULL, &out[0]), 0, "%s", what);
            cr_assert_eq(gpu->ops->rms_norm(gpu, &x[1], &r[1], &w, 1e-6f, &r[1]), 0);
            float *y1 = download(gpu, &r[1]);
            cr_assert_eq(gpu->ops->matmul(gpu, &m, &r[1], NULL, &out[1]), 0);
            cr_assert_eq(gpu->ops->rms_norm(gpu, &x[2], &r[2], &w, 1e-6f, &r[2]), 0);
            cr_assert_eq(gpu->ops->matmul(gpu, &m, &x[1], NULL, &out[2]), 0);
            float *x0 = download(gpu, &x[0]), *x1 = download(gpu, &x[1]), *x2 = download(gpu, &x[2]),
                  *y0 = download(gpu, &r[0]), *y2 = download(gpu, &r[2]), *o0 = download(gpu, &out[0]),
                  *o1 = download(gpu, &out[1]), *o2 = download(gpu, &out[2]);
            const size_t in_bytes = (size_t)(ne0 * n) * sizeof(float), out_bytes = (size_t)(rows * n) * sizeof(float);
            assert_bits(x0, x1, in_bytes, what);
            assert_bits(y0, y1, in_bytes, what);
            assert_bits(o0, o1, out_bytes, what);
            assert_bits(x2, x1, in_bytes, what);
            assert_bits(y2, y1, in_bytes, what);
            /* x[1] holds x + r: the product of another input, which the norm must not have touched */
            struct kern_tensor xr = upload(gpu, SPEC_F32, ne0, n, x1), o_ref = poisoned(gpu, rows, n);
            cr_assert_eq(gpu->ops->matmul(gpu, &m, &xr, NULL, &o_ref), 0);
            float *ref = download(gpu, &o_ref);
            assert_bits(o2, ref, out_bytes, what);
            /* another op reading the norm's output runs after the norm */
            struct kern_tensor x3 = upload(gpu, SPEC_F32, ne0, n, xh), r3 = upload(gpu, SPEC_F32, ne0, n, rh),
                               sum = poisoned(gpu, ne0, n);
            cr_assert_eq(gpu->ops->rms_norm(gpu, &x3, &r3, &w, 1e-6f, &r3), 0);
            cr_assert_eq(gpu->ops->add(gpu, &r3, &r3, &sum), 0);
            float *s3 = download(gpu, &sum);
            for (int64_t i = 0; i < ne0 * n; i++)
                cr_assert_eq(s3[i], y1[i] + y1[i], "%s: element %lld of the norm's output added", what, (long long)i);
            free(s3);
            free_t(gpu, &x3), free_t(gpu, &r3), free_t(gpu, &sum);
            free(ref), free(x0), free(x1), free(x2), free(y0), free(y1), free(y2), free(o0), free(o1), free(o2);
            free_t(gpu, &xr), free_t(gpu, &o_ref);
            for (int i = 0; i < 3; i++)
                free_t(gpu, &x[i]), free_t(gpu, &r[i]), free_t(gpu, &out[i]);
        }
        free_t(gpu, &m);
        free(mh);
    }
    free_t(gpu, &w);
    free(xh), free(rh), free(wh);
}

/* A decode step's w_down, attention norm and q|k|v: a norm adding a one-row matmul's output as its
 * residual, between that matmul and a matmul of the norm's output, runs in the first matmul's last
 * thread block and converts for the second one. It gives the bits of the three ops apart (the first
 * matmul's output read back before the norm), after every weight type (the quantised ones at more
 * units a row than a warp has lanes, as w_down's), into each conversion (Q8_0, Q8_1, Q8_K), with the
 * norm's output in a tensor of its own or over the residual. */
Test(conformance, a_norm_between_two_matmuls_of_one_row_gives_the_bits_of_the_ops_apart)
{
    need_cuda();
    const int64_t k = 2304, ne0 = 256, rows = 67;
    const enum spec_dtype after[] = {SPEC_Q4_0, SPEC_Q4_1, SPEC_Q4_K};
    float *inh = random_f32(k, 1.0f), *xh = random_f32(ne0, 3.0f), *nwh = random_f32(ne0, 1.0f);
    struct kern_tensor in = upload(gpu, SPEC_F32, k, 1, inh), nw = upload(gpu, SPEC_F32, ne0, 1, nwh);
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        for (size_t ai = 0; ai < sizeof after / sizeof after[0]; ai++) {
            const enum spec_dtype t1 = kt_cpu_types[ti], t2 = after[ai];
            size_t rb1, rb2;
            void *m1h = random_weights(t1, k, ne0, 0, &rb1), *m2h = random_weights(t2, ne0, rows, 0, &rb2);
            struct kern_tensor m1 = weight(gpu, t1, k, ne0, m1h), m2 = weight(gpu, t2, ne0, rows, m2h);
            for (int over = 0; over < 2; over++) {
                char what[96];
                snprintf(what, sizeof what, "%s then %s, norm %s", kern_dtype_info(t1)->name,
                         kern_dtype_info(t2)->name, over ? "over the residual" : "apart");
                float *got[2][3];
                for (int apart = 0; apart < 2; apart++) {
                    struct kern_tensor x = upload(gpu, SPEC_F32, ne0, 1, xh), mid = poisoned(gpu, ne0, 1),
                                       y = over ? mid : poisoned(gpu, ne0, 1), out = poisoned(gpu, rows, 1);
                    cr_assert_eq(gpu->ops->matmul(gpu, &m1, &in, NULL, &mid), 0, "%s", what);
                    if (apart)
                        free(download(gpu, &mid)); /* the matmul runs before the norm is issued */
                    cr_assert_eq(gpu->ops->rms_norm(gpu, &x, &mid, &nw, 1e-6f, &y), 0, "%s", what);
                    cr_assert_eq(gpu->ops->matmul(gpu, &m2, &y, NULL, &out), 0, "%s", what);
                    got[apart][0] = download(gpu, &x);
                    got[apart][1] = download(gpu, &y);
                    got[apart][2] = download(gpu, &out);
                    free_t(gpu, &x), free_t(gpu, &mid), free_t(gpu, &out);
                    if (!over)
                        free_t(gpu, &y);
                }
                const size_t bytes[3] = {(size_t)ne0 * sizeof(float), (size_t)ne0 * sizeof(float),
                                         (size_t)rows * sizeof(float)};
                const char *names[3] = {"x + residual", "the norm's output", "the second matmul's output"};
                for (int i = 0; i < 3; i++) {
                    char which[160];
                    snprintf(which, sizeof which, "%s: %s", what, names[i]);
                    assert_bits(got[0][i], got[1][i], bytes[i], which);
                    free(got[0][i]), free(got[1][i]);
                }
            }
            free_t(gpu, &m1), free_t(gpu, &m2);
            free(m1h), free(m2h);
        }
    }
    free_t(gpu, &in), free_t(gpu, &nw);
    free(inh), free(xh), free(nwh);
}

static void check_rope(enum kern_rope_mode mode, int n_rot, float scale, bool factors)
{
    const int n_head = 3, head_dim = 64, n = 6;
    const int32_t pos[] = {0, 1, 7, 300, 4095, 2};
    float ff[32];
    for (int i = 0; i < 32; i++)
        ff[i] = 1.0f + (float)i / 8.0f;
    const struct kern_rope_params p = {.mode = mode, .n_rot = n_rot, .freq_base = 10000.0f, .freq_scale = scale,
                                       .freq_factors = factors ? ff : NULL};
    float *xh = random_f32(n_head * head_dim * n, 1.0f);
    struct kern_tensor xc = upload(cpu, SPEC_F32, n_head * head_dim, n, xh),
                       xg = upload(gpu, SPEC_F32, n_head * head_dim, n, xh);
    cr_assert_eq(cpu->ops->rope(cpu, &xc, n_head, head_dim, pos, &p), 0);
    cr_assert_eq(gpu->ops->rope(gpu, &xg, n_head, head_dim, pos, &p), 0);
    float *want = download(cpu, &xc), *got = download(gpu, &xg);
    assert_bits(got, want, (size_t)(n_head * head_dim * n) * sizeof(float), "rope");
    /* the same positions again (the cached table) and then others */
    cr_assert_eq(cpu->ops->rope(cpu, &xc, n_head, head_dim, pos, &p), 0);
    cr_assert_eq(gpu->ops->rope(gpu, &xg, n_head, head_dim, pos, &p), 0);
    const int32_t pos2[] = {5, 6, 7, 8, 9, 10};
    cr_assert_eq(cpu->ops->rope(cpu, &xc, n_head, head_dim, pos2, &p), 0);
    cr_assert_eq(gpu->ops->rope(gpu, &xg, n_head, head_dim, pos2, &p), 0);
    free(want), free(got);
    want = download(cpu, &xc), got = download(gpu, &xg);
    assert_bits(got, want, (size_t)(n_head * head_dim * n) * sizeof(float), "rope, second and third call");
    free(want), free(got), free(xh);
    free_t(cpu, &xc), free_t(gpu, &xg);
}

Test(conformance, rope_is_bit_identical_in_both_modes_with_scaling_and_factors)
{
    need_cuda();
    check_rope(KERN_ROPE_NORM, 64, 1.0f, false);
    check_rope(KERN_ROPE_NEOX, 64, 1.0f, false);
    check_rope(KERN_ROPE_NEOX, 32, 0.25f, true); /* partial rotation: the tail stays */
    check_rope(KERN_ROPE_NORM, 48, 0.5f, true);
}

/* Rows r0 .. r0 + rows - 1, columns c0 .. c0 + ne0 - 1 of an F32 tensor, as a tensor of its own. */
static struct kern_tensor view(const struct kern_tensor *t, int64_t r0, int64_t c0, int64_t ne0, int64_t rows)
{
    struct kern_tensor v = *t;
    v.data = (char *)t->data + (size_t)r0 * t->row_bytes + (size_t)c0 * sizeof(float);
    v.ne0 = ne0;
    v.ne1 = rows;
    v.owned = false;
    return v;
}

/* The CUDA backend launches a rope together with the stores that cache rows it rotates (K and V
 * beside it, each sequence's of a step, as the model calls them). Against the CPU's rope and
 * store_rows, bit for bit: stores of some of the rope's rows, then of the others, more than one launch
 * takes (CUDA_STEP_SEQS, 16); a store of rows the rope did not rotate (the rope runs alone first); F16
 * and F32 caches. */
Test(conformance, a_rope_and_the_stores_of_its_rows_give_the_cpus_bits)
{
    need_cuda();
    enum { n = 24 };
    const int n_head = 4, n_kv = 2, hd = 64, width = (n_head + 2 * n_kv) * hd, kv_w = 2 * n_kv * hd;
    int32_t pos[n], pos2[n];
    for (int i = 0; i < n; i++)
        pos[i] = 9 + i, pos2[i] = 40 + i;
    const struct kern_rope_params p = {.mode = KERN_ROPE_NEOX, .n_rot = hd, .freq_base = 10000.0f, .freq_scale = 1.0f};
    float *xh = random_f32(width * n, 1.0f), *oh = random_f32(kv_w * 2, 1.0f);
    float *zeros = calloc(64 * (size_t)kv_w, sizeof(float));
    const enum spec_dtype kv[] = {SPEC_F16, SPEC_F32};
    for (int ki = 0; ki < 2; ki++) {
        struct kern_backend *both[] = {cpu, gpu};
        float *x_out[2], *cache_out[2];
        size_t cache_bytes = 0;
        for (int bi = 0; bi < 2; bi++) {
            struct kern_backend *b = both[bi];
            struct kern_tensor x = upload(b, SPEC_F32, width, n, xh), other = upload(b, SPEC_F32, kv_w, 2, oh),
                               cache = upload(b, kv[ki], kv_w, 64, zeros);
            struct kern_tensor qk = view(&x, 0, 0, (n_head + n_kv) * hd, n), kv1 = view(&x, 1, n_head * hd, kv_w, 3),
                               kv0 = view(&x, 0, n_head * hd, kv_w, 1), kv4 = view(&x, 4, n_head * hd, kv_w, 1);
            cr_assert_eq(b->ops->rope(b, &qk, n_head + n_kv, hd, pos, &p), 0);
            cr_assert_eq(b->ops->store_rows(b, &kv1, &cache, 8), 0); /* with the rope */
            cr_assert_eq(b->ops->store_rows(b, &kv0, &cache, 7), 0);
            cr_assert_eq(b->ops->store_rows(b, &kv4, &cache, 11), 0);
            for (int r = 5; r < n; r++) { /* a sequence a row, each into its own rows */
                const struct kern_tensor kvr = view(&x, r, n_head * hd, kv_w, 1);
                cr_assert_eq(b->ops->store_rows(b, &kvr, &cache, 12 + 2 * (r - 5)), 0);
            }
            cr_assert_eq(b->ops->rope(b, &qk, n_head + n_kv, hd, pos2, &p), 0);
            cr_assert_eq(b->ops->store_rows(b, &other, &cache, 20), 0); /* the rope first, alone */
            x_out[bi] = download(b, &x);
            cache_out[bi] = download(b, &cache);
            cache_bytes = 64 * cache.row_bytes;
            free_t(b, &x), free_t(b, &other), free_t(b, &cache);
        }
        assert_bits(x_out[1], x_out[0], (size_t)(width * n) * sizeof(float), "rows rotated twice");
        assert_bits(cache_out[1], cache_out[0], cache_bytes, kern_dtype_info(kv[ki])->name);
        for (int bi = 0; bi < 2; bi++)
            free(x_out[bi]), free(cache_out[bi]);
    }
    free(xh), free(oh), free(zeros);
}

/* A decode step's q|k|v, rope and store: a rope of one row and the store of its K and V after a one-row
 * matmul run in that matmul's last thread block. They give the bits of the ops apart (the matmul's
 * output read back before the rope), for every weight type, with q, k and v in one call or q|k and v in
 * two (as with a Q4_K_M model's Q6_K attn_v), into an F16 or F32 cache. */
Test(conformance, a_rope_and_its_store_after_a_one_row_matmul_give_the_bits_of_the_ops_apart)
{
    need_cuda();
    const int n_head = 4, n_kv = 2, hd = 64, q_dim = n_head * hd, kv_dim = n_kv * hd, width = q_dim + 2 * kv_dim;
    const int64_t k = 256;
    const int32_t pos[1] = {37};
    const struct kern_rope_params p = {.mode = KERN_ROPE_NEOX, .n_rot = hd, .freq_base = 10000.0f, .freq_scale = 1.0f};
    float *inh = random_f32(k, 1.0f), *bh = random_f32(width, 1.0f);
    float *zeros = calloc(64 * (size_t)(2 * kv_dim), sizeof(float));
    struct kern_tensor in = upload(gpu, SPEC_F32, k, 1, inh), bq = upload(gpu, SPEC_F32, q_dim, 1, bh),
                       bk = upload(gpu, SPEC_F32, kv_dim, 1, bh + q_dim),
                       bv = upload(gpu, SPEC_F32, kv_dim, 1, bh + q_dim + kv_dim);
    const enum spec_dtype caches[] = {SPEC_F16, SPEC_F32};
    for (size_t ti = 0; ti < KT_N_CPU_TYPES; ti++) {
        const enum spec_dtype t = kt_cpu_types[ti];
        size_t rb;
        void *wh[3] = {random_weights(t, k, q_dim, 0, &rb), random_weights(t, k, kv_dim, 0, &rb),
                       random_weights(t, k, kv_dim, 0, &rb)};
        struct kern_tensor wq = weight(gpu, t, k, q_dim, wh[0]), wk = weight(gpu, t, k, kv_dim, wh[1]),
                           wv = weight(gpu, t, k, kv_dim, wh[2]);
        for (int ci = 0; ci < 2; ci++) {
            for (int split = 0; split < 2; split++) {
                char what[96];
                snprintf(what, sizeof what, "%s, %s cache, %s", kern_dtype_info(t)->name,
                         kern_dtype_info(caches[ci])->name, split ? "q|k and v" : "q|k|v");
                float *got[2][2];
                size_t cache_bytes = 0;
                for (int apart = 0; apart < 2; apart++) {
                    struct kern_tensor qkv = poisoned(gpu, width, 1),
                                       cache = upload(gpu, caches[ci], 2 * kv_dim, 64, zeros);
                    struct kern_tensor q = view(&qkv, 0, 0, q_dim, 1), kk = view(&qkv, 0, q_dim, kv_dim, 1),
                                       v = view(&qkv, 0, q_dim + kv_dim, kv_dim, 1),
                                       qk = view(&qkv, 0, 0, q_dim + kv_dim, 1),
                                       kv = view(&qkv, 0, q_dim, 2 * kv_dim, 1);
                    const struct kern_matmul mm[3] = {{&wq, &bq, &q}, {&wk, &bk, &kk}, {&wv, &bv, &v}};
                    if (split) {
                        cr_assert_eq(gpu->ops->matmuls(gpu, &in, mm, 2, KERN_MATMULS_PLAIN), 0, "%s", what);
                        cr_assert_eq(gpu->ops->matmuls(gpu, &in, &mm[2], 1, KERN_MATMULS_PLAIN), 0, "%s", what);
                    } else {
                        cr_assert_eq(gpu->ops->matmuls(gpu, &in, mm, 3, KERN_MATMULS_PLAIN), 0, "%s", what);
                    }
                    if (apart)
                        free(download(gpu, &qkv)); /* the matmuls run before the rope is issued */
                    cr_assert_eq(gpu->ops->rope(gpu, &qk, n_head + n_kv, hd, pos, &p), 0, "%s", what);
                    cr_assert_eq(gpu->ops->store_rows(gpu, &kv, &cache, 20), 0, "%s", what);
                    got[apart][0] = download(gpu, &qkv);
                    got[apart][1] = download(gpu, &cache);
                    cache_bytes = 64 * cache.row_bytes;
                    free_t(gpu, &qkv), free_t(gpu, &cache);
                }
                char which[128];
                snprintf(which, sizeof which, "%s: q, k rotated and v", what);
                assert_bits(got[0][0], got[1][0], (size_t)width * sizeof(float), which);
                snprintf(which, sizeof which, "%s: the cache", what);
                assert_bits(got[0][1], got[1][1], cache_bytes, which);
                for (int i = 0; i < 2; i++)
                    free(got[i][0]), free(got[i][1]);
            }
        }
        free_t(gpu, &wq), free_t(gpu, &wk), free_t(gpu, &wv);
        for (int i = 0; i < 3; i++)
            free(wh[i]);
    }
    free_t(gpu, &in), free_t(gpu, &bq), free_t(gpu, &bk), free_t(gpu, &bv);
    free(inh), free(bh), free(zeros);
}

Test(conformance, store_rows_add_and_swiglu_match_the_cpu)
{
    need_cuda();
    const int64_t ne0 = 200, n = 3;
    float *ah = random_f32(ne0 * n, 4.0f), *bh = random_f32(ne0 * n, 2.0f);
    struct kern_tensor ac = upload(cpu, SPEC_F32, ne0, n, ah), bc = upload(cpu, SPEC_F32, ne0, n, bh),
                       ag = upload(gpu, SPEC_F32, ne0, n, ah), bg = upload(gpu, SPEC_F32, ne0, n, bh);
    struct kern_tensor oc, og = poisoned(gpu, ne0, n);
    cr_assert_eq(cpu->ops->tensor_alloc(cpu, SPEC_F32, ne0, n, &oc), 0);

    cr_assert_eq(cpu->ops->add(cpu, &ac, &bc, &oc), 0);
    cr_assert_eq(gpu->ops->add(gpu, &ag, &bg, &og), 0);
    float *want = download(cpu, &oc), *got = download(gpu, &og);
    assert_bits(got, want, (size_t)(ne0 * n) * sizeof(float), "add");
    free(want), free(got);

    cr_assert_eq(cpu->ops->swiglu(cpu, &ac, &bc, &oc), 0);
    cr_assert_eq(gpu->ops->swiglu(gpu, &ag, &bg, &og), 0);
    want = download(cpu, &oc), got = download(gpu, &og);
    assert_close_rel(got, want, ne0 * n, 1e-6, "swiglu");
    free(want), free(got);

    /* cache rows 4..6 of a 10-row cache, F16 and F32 */
    const enum spec_dtype kv[] = {SPEC_F16, SPEC_F32};
    for (int i = 0; i < 2; i++) {
        struct kern_tensor cc, cg;
        cr_assert_eq(cpu->ops->tensor_alloc(cpu, kv[i], ne0, 10, &cc), 0);
        cr_assert_eq(gpu->ops->tensor_alloc(gpu, kv[i], ne0, 10, &cg), 0);
        cr_assert_eq(cpu->ops->store_rows(cpu, &bc, &cc, 4), 0);
        cr_assert_eq(gpu->ops->store_rows(gpu, &bg, &cg, 4), 0);
        cr_assert_eq(gpu->ops->store_rows(gpu, &bg, &cg, 8), SPEC_E_RANGE);
        want = download(cpu, &cc), got = download(gpu, &cg);
        assert_bits(got, want, 10 * cc.row_bytes, kern_dtype_info(kv[i])->name);
        free(want), free(got);
        free_t(cpu, &cc), free_t(gpu, &cg);
    }
    /* F32 rows of a width that is no multiple of 4 (no 16-byte path) */
    struct kern_tensor nc = upload(cpu, SPEC_F32, 7, 2, ah), ng = upload(gpu, SPEC_F32, 7, 2, ah), cc, cg;
    cr_assert_eq(cpu->ops->tensor_alloc(cpu, SPEC_F32, 7, 5, &cc), 0);
    cr_assert_eq(gpu->ops->tensor_alloc(gpu, SPEC_F32, 7, 5, &cg), 0);
    cr_assert_eq(cpu->ops->store_rows(cpu, &nc, &cc, 3), 0);
    cr_assert_eq(gpu->ops->store_rows(gpu, &ng, &cg, 3), 0);
    want = download(cpu, &cc), got = download(gpu, &cg);
    assert_bits(got + 3 * 7, want + 3 * 7, 2 * cc.row_bytes, "F32 rows of 7");
    free(want), free(got);
    free_t(cpu, &nc), free_t(gpu, &ng), free_t(cpu, &cc), free_t(gpu, &cg);
    free(ah), free(bh);
    free_t(cpu, &ac), free_t(cpu, &bc), free_t(cpu, &oc);
    free_t(gpu, &ag), free_t(gpu, &bg), free_t(gpu, &og);
}

/* ---------------------------------------------------------------------------------------------- */
/* Attention                                                                                      */

struct attn_case {
    int n_head, n_head_kv, head_dim, pos0, n, rows;
    enum spec_dtype kv;
};

/* Random q and caches; returns the max |v| over the cache. */
static float attn_inputs(const struct attn_case *c, float **q, float **k, float **v)
{
    const int64_t kv_dim = (int64_t)c->n_head_kv * c->head_dim;
    *q = random_f32((int64_t)c->n_head * c->head_dim * c->n, 1.0f);
    *k = random_f32(kv_dim * c->rows, 1.0f);
    *v = random_f32(kv_dim * c->rows, 1.0f);
    float vmax = 0.0f;
    for (int64_t i = 0; i < kv_dim * c->rows; i++)
        vmax = fmaxf(vmax, fabsf((*v)[i]));
    return vmax;
}

/* A cache of type c->kv on backend b holding the F32 rows h (rounded by store_rows). */
static struct kern_tensor cache_on(struct kern_backend *b, const struct attn_case *c, const float *h)
{
    const int64_t kv_dim = (int64_t)c->n_head_kv * c->head_dim;
    struct kern_tensor t, src = upload(b, SPEC_F32, kv_dim, c->rows, h);
    cr_assert_eq(b->ops->tensor_alloc(b, c->kv, kv_dim, c->rows, &t), 0);
    cr_assert_eq(b->ops->store_rows(b, &src, &t, 0), 0);
    free_t(b, &src);
    return t;
}

static void check_attention(const struct attn_case *c)
{
    float *qh, *kh, *vh;
    const float vmax = attn_inputs(c, &qh, &kh, &vh);
    const struct kern_attn_params p = {.n_head = c->n_head, .n_head_kv = c->n_head_kv, .head_dim = c->head_dim,
                                       .pos0 = c->pos0, .scale = 1.0f / sqrtf((float)c->head_dim)};
    const int64_t q_dim = (int64_t)c->n_head * c->head_dim;
    struct kern_tensor qc = upload(cpu, SPEC_F32, q_dim, c->n, qh), kc = cache_on(cpu, c, kh), vc = cache_on(cpu, c, vh),
                       oc;
    struct kern_tensor qg = upload(gpu, SPEC_F32, q_dim, c->n, qh), kg = cache_on(gpu, c, kh), vg = cache_on(gpu, c, vh),
                       og = poisoned(gpu, q_dim, c->n);
    cr_assert_eq(cpu->ops->tensor_alloc(cpu, SPEC_F32, q_dim, c->n, &oc), 0);
    cr_assert_eq(cpu->ops->attention(cpu, &qc, &kc, &vc, &p, &oc), 0);
    cr_assert_eq(gpu->ops->attention(gpu, &qg, &kg, &vg, &p, &og), 0);
    float *want = download(cpu, &oc), *got = download(gpu, &og);
    const double bound = (c->kv == SPEC_F16 ? 6e-4 : 1e-5) * vmax;
    for (int64_t i = 0; i < q_dim * c->n; i++)
        cr_assert(fabs((double)got[i] - want[i]) <= bound,
                  "attention %s pos0 %d n %d heads %d/%d dim %d: element %lld is %.9g, the CPU's %.9g (bound %.3g)",
                  kern_dtype_info(c->kv)->name, c->pos0, c->n, c->n_head, c->n_head_kv, c->head_dim, (long long)i,
                  got[i], want[i], bound);

    /* batch invariance: query i alone at pos0 + i gives the bits it has in the batch */
    struct kern_tensor o1 = poisoned(gpu, q_dim, 1);
    for (int i = 0; i < c->n; i++) {
        struct kern_tensor qi = qg;
        qi.data = (char *)qg.data + (size_t)i * qg.row_bytes;
        qi.ne1 = 1;
        qi.owned = false;
        struct kern_attn_params pi = p;
        pi.pos0 = c->pos0 + i;
        cr_assert_eq(gpu->ops->attention(gpu, &qi, &kg, &vg, &pi, &o1), 0);
        float *one = download(gpu, &o1);
        cr_assert(memcmp(one, got + (size_t)i * q_dim, (size_t)q_dim * sizeof(float)) == 0,
                  "attention: query %d alone differs from the batch of %d", i, c->n);
        free(one);
    }
    cr_assert_eq(gpu->ops->attention(gpu, &qg, &kg, &vg, &(struct kern_attn_params){.n_head = c->n_head,
                 .n_head_kv = c->n_head_kv, .head_dim = c->head_dim, .pos0 = c->rows - c->n + 1, .scale = 1.0f}, &og),
                 SPEC_E_RANGE);
    free(want), free(got), free(qh), free(kh), free(vh);
    free_t(cpu, &qc), free_t(cpu, &kc), free_t(cpu, &vc), free_t(cpu, &oc);
    free_t(gpu, &qg), free_t(gpu, &kg), free_t(gpu, &vg), free_t(gpu, &og), free_t(gpu, &o1);
}

Test(conformance, attention_matches_the_cpu_and_is_batch_invariant)
{
    need_cuda();
    const struct attn_case cases[] = {
        {.n_head = 8, .n_head_kv = 2, .head_dim = 64, .pos0 = 254, .n = 5, .rows = 300, .kv = SPEC_F16},
        {.n_head = 8, .n_head_kv = 2, .head_dim = 64, .pos0 = 254, .n = 5, .rows = 300, .kv = SPEC_F32},
        {.n_head = 4, .n_head_kv = 4, .head_dim = 16, .pos0 = 0, .n = 9, .rows = 9, .kv = SPEC_F16},
        {.n_head = 12, .n_head_kv = 2, .head_dim = 128, .pos0 = 0, .n = 1, .rows = 1, .kv = SPEC_F16},
        {.n_head = 2, .n_head_kv = 1, .head_dim = 256, .pos0 = 120, .n = 17, .rows = 140, .kv = SPEC_F32},
        {.n_head = 3, .n_head_kv = 1, .head_dim = 20, .pos0 = 126, .n = 4, .rows = 130, .kv = SPEC_F16},
        /* prefills: blocks of several (query, head) pairs, queries of different key counts in one */
        {.n_head = 6, .n_head_kv = 2, .head_dim = 64, .pos0 = 100, .n = 50, .rows = 150, .kv = SPEC_F16},
        {.n_head = 2, .n_head_kv = 1, .head_dim = 256, .pos0 = 0, .n = 48, .rows = 48, .kv = SPEC_F32},
        {.n_head = 3, .n_head_kv = 1, .head_dim = 20, .pos0 = 110, .n = 49, .rows = 159, .kv = SPEC_F16},
        /* keys in 129 chunks: CUDA combines a query's chunks 128 at a time */
        {.n_head = 2, .n_head_kv = 1, .head_dim = 16, .pos0 = 16500, .n = 2, .rows = 16502, .kv = SPEC_F16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_attention(&cases[i]);
}

/* The attentions of a step's sequences, each over its own cache, issued one after another as a model's
 * step issues them (on CUDA, one launch for as many as CUDA_STEP_SEQS of one kind: decode and
 * verification, or prefills): each sequence's rows get the bits of its attention alone, and the CPU's
 * within the bound. Sequences of 1 to 9 queries, keys in one chunk to three; 20 of them (two launches);
 * then two prefills after them (a launch of their own), and sequences issued out of row order. */
Test(conformance, attentions_of_a_steps_sequences_give_each_sequence_its_bits)
{
    need_cuda();
    enum { n_seq = 22 };
    const int n_head = 6, n_kv = 2, hd = 64, q_dim = n_head * hd, rows = 320;
    const struct attn_case shape = {.n_head = n_head, .n_head_kv = n_kv, .head_dim = hd, .rows = rows,
                                    .kv = SPEC_F16};
    int pos0[n_seq], n[n_seq], row0[n_seq], total = 0;
    for (int i = 0; i < n_seq; i++) {
        n[i] = i >= 20 ? 48 + i - 20 : 1 + (i * 5) % 9;
        pos0[i] = (i * 71) % (rows - n[i]);
        row0[i] = total;
        total += n[i];
    }
    float *qh = random_f32((int64_t)q_dim * total, 1.0f), *kh[n_seq], *vh[n_seq];
    float vmax = 0.0f;
    for (int i = 0; i < n_seq; i++) {
        float *unused;
        vmax = fmaxf(vmax, attn_inputs(&shape, &unused, &kh[i], &vh[i]));
        free(unused);
    }
    struct kern_backend *both[] = {cpu, gpu};
    float *together[2], *alone = malloc(sizeof(float) * (size_t)q_dim * (size_t)total);
    for (int bi = 0; bi < 2; bi++) {
        struct kern_backend *b = both[bi];
        struct kern_tensor q = upload(b, SPEC_F32, q_dim, total, qh), out = poisoned(b, q_dim, total), k[n_seq], v[n_seq];
        for (int i = 0; i < n_seq; i++)
            k[i] = cache_on(b, &shape, kh[i]), v[i] = cache_on(b, &shape, vh[i]);
        /* every sequence's attention in turn; the last two swapped out of row order */
        for (int j = 0; j < n_seq; j++) {
            const int i = j < n_seq - 2 ? j : 2 * n_seq - 3 - j;
            const struct kern_attn_params p = {.n_head = n_head, .n_head_kv = n_kv, .head_dim = hd, .pos0 = pos0[i],
                                               .scale = 0.125f};
            struct kern_tensor qs = view(&q, row0[i], 0, q_dim, n[i]), os = view(&out, row0[i], 0, q_dim, n[i]);
            cr_assert_eq(b->ops->attention(b, &qs, &k[i], &v[i], &p, &os), 0);
        }
        together[bi] = download(b, &out);
        if (b == gpu)
            for (int i = 0; i < n_seq; i++) { /* each alone: a read between them */
                const struct kern_attn_params p = {.n_head = n_head, .n_head_kv = n_kv, .head_dim = hd,
                                                   .pos0 = pos0[i], .scale = 0.125f};
                struct kern_tensor qs = view(&q, row0[i], 0, q_dim, n[i]), os = poisoned(b, q_dim, n[i]);
                cr_assert_eq(b->ops->attention(b, &qs, &k[i], &v[i], &p, &os), 0);
                float *one = download(b, &os);
                memcpy(alone + (size_t)row0[i] * q_dim, one, sizeof(float) * (size_t)q_dim * (size_t)n[i]);
                free(one);
                free_t(b, &os);
            }
        for (int i = 0; i < n_seq; i++)
            free_t(b, &k[i]), free_t(b, &v[i]);
        free_t(b, &q), free_t(b, &out);
    }
    for (int i = 0; i < n_seq; i++) {
        const size_t at = (size_t)row0[i] * q_dim, len = (size_t)q_dim * (size_t)n[i];
        cr_assert(memcmp(together[1] + at, alone + at, len * sizeof(float)) == 0,
                  "sequence %d (%d queries at %d): its rows differ from its attention alone", i, n[i], pos0[i]);
        for (size_t e = at; e < at + len; e++)
            cr_assert(fabs((double)together[1][e] - together[0][e]) <= 6e-4 * vmax,
                      "sequence %d: element %zu is %.9g, the CPU's %.9g", i, e - at, together[1][e], together[0][e]);
    }
    for (int i = 0; i < n_seq; i++)
        free(kh[i]), free(vh[i]);
    free(qh), free(alone), free(together[0]), free(together[1]);
}

/* Attention converts its output for wo, in the form of the conversion before it (q's matmul here, as
 * q|k|v's in a model): heads of 128 that share a Q8_K block, heads of 64 spanning two Q8_0 blocks, heads
 * of 32 one Q8_1 block each, and heads of 96 (no whole Q8_K block to a head or heads to a block: no
 * conversion), for 1, 5 and a prefill's 48 queries (blocks of several heads and queries).
 * wo gets the bits of converting anew, also when it takes another form or an op writes the output first. */
Test(conformance, attentions_output_converted_for_wo_gives_the_next_matmul_its_bits)
{
    need_cuda();
    const struct {
        enum spec_dtype w;
        int n_head, head_dim;
    } cases[] = {{SPEC_Q4_K, 4, 128}, {SPEC_Q4_0, 6, 64}, {SPEC_Q4_1, 8, 32}, {SPEC_Q6_K, 8, 96}};
    enum { N = 48 }; /* up to a prefill's queries */
    const int ns[] = {1, 5, N}, rows = 24, pos0 = 140;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const enum spec_dtype t = cases[ci].w, t_other = t == SPEC_Q4_0 ? SPEC_Q4_1 : SPEC_Q4_0;
        const int n_head = cases[ci].n_head, head_dim = cases[ci].head_dim, width = n_head * head_dim;
        const struct attn_case c = {.n_head = n_head, .n_head_kv = 1, .head_dim = head_dim, .pos0 = pos0, .n = N,
                                    .rows = pos0 + N, .kv = SPEC_F16};
        float *qh, *kh, *vh, *xh = random_f32((int64_t)width * N, 1.0f), *other = random_f32((int64_t)width * N, 0.5f);
        attn_inputs(&c, &qh, &kh, &vh);
        size_t rb;
        void *wqh = random_weights(t, width, width, 0, &rb), *woh = random_weights(t, width, rows, 0, &rb),
             *wo2h = random_weights(t_other, width, rows, 0, &rb);
        struct kern_tensor wq = weight(gpu, t, width, width, wqh), wo = weight(gpu, t, width, rows, woh),
                           wo2 = weight(gpu, t_other, width, rows, wo2h), kg = cache_on(gpu, &c, kh),
                           vg = cache_on(gpu, &c, vh);
        const struct kern_attn_params p = {.n_head = n_head, .n_head_kv = 1, .head_dim = head_dim, .pos0 = pos0,
                                           .scale = 1.0f / sqrtf((float)head_dim)};
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const int n = ns[ni];
            struct kern_tensor x = upload(gpu, SPEC_F32, width, n, xh), q = poisoned(gpu, width, n),
                               o = poisoned(gpu, width, n), y = poisoned(gpu, rows, n),
                               ob = upload(gpu, SPEC_F32, width, n, other);
            char what[96];
            const char *name = kern_dtype_info(t)->name;
            for (int again = 0; again < 2; again++) { /* the second time on other values */
                if (again)
                    cr_assert_eq(gpu->ops->rows_from_host(gpu, &x, 0, n, xh + (int64_t)width * (N - n)), 0);
                cr_assert_eq(gpu->ops->matmul(gpu, &wq, &x, NULL, &q), 0);
                cr_assert_eq(gpu->ops->attention(gpu, &q, &kg, &vg, &p, &o), 0);
                cr_assert_eq(gpu->ops->matmul(gpu, &wo, &o, NULL, &y), 0);
                snprintf(what, sizeof what, "%s, heads of %d, n=%d: wo after attention (%s time)", name, head_dim, n,
                         again ? "second" : "first");
                expect_fresh(t, woh, width, rows, &o, &y, what);
            }
            cr_assert_eq(gpu->ops->matmul(gpu, &wq, &x, NULL, &q), 0);
            cr_assert_eq(gpu->ops->attention(gpu, &q, &kg, &vg, &p, &o), 0);
            cr_assert_eq(gpu->ops->matmul(gpu, &wo2, &o, NULL, &y), 0);
            snprintf(what, sizeof what, "%s, heads of %d, n=%d: a %s wo", name, head_dim, n,
                     kern_dtype_info(t_other)->name);
            expect_fresh(t_other, wo2h, width, rows, &o, &y, what);
            cr_assert_eq(gpu->ops->matmul(gpu, &wq, &x, NULL, &q), 0);
            cr_assert_eq(gpu->ops->attention(gpu, &q, &kg, &vg, &p, &o), 0);
            cr_assert_eq(gpu->ops->add(gpu, &o, &ob, &o), 0);
            cr_assert_eq(gpu->ops->matmul(gpu, &wo, &o, NULL, &y), 0);
            snprintf(what, sizeof what, "%s, heads of %d, n=%d: wo after an op wrote the output", name, head_dim, n);
            expect_fresh(t, woh, width, rows, &o, &y, what);
            free_t(gpu, &x), free_t(gpu, &q), free_t(gpu, &o), free_t(gpu, &y), free_t(gpu, &ob);
        }
        free_t(gpu, &wq), free_t(gpu, &wo), free_t(gpu, &wo2), free_t(gpu, &kg), free_t(gpu, &vg);
        free(qh), free(kh), free(vh), free(xh), free(other), free(wqh), free(woh), free(wo2h);
    }
}

/* The arrival counters of attention and argmax stay zero between calls: a call that needs more of them
 * than an earlier, larger call did (its scratch not grown) still combines every (head, query) and every
 * row. Counters kept beside the partial results read the earlier call's results as counts. */
Test(conformance, calls_needing_more_counters_than_before_still_combine_every_part)
{
    need_cuda();
    const struct attn_case wide = {.n_head = 4, .n_head_kv = 2, .head_dim = 16, .pos0 = 8000, .n = 1, .rows = 8001,
                                   .kv = SPEC_F16},
                           many = {.n_head = 4, .n_head_kv = 2, .head_dim = 16, .pos0 = 0, .n = 30, .rows = 30,
                                   .kv = SPEC_F16};
    check_attention(&wide);
    check_attention(&many);

    const int64_t wide_ne0 = 151936, few = 20, ne0 = 64, rows = 80;
    float *wh = random_f32(wide_ne0 * few, 4.0f), *xh = random_f32(ne0 * rows, 4.0f);
    struct kern_tensor wg = upload(gpu, SPEC_F32, wide_ne0, few, wh), xg = upload(gpu, SPEC_F32, ne0, rows, xh),
                       xc = upload(cpu, SPEC_F32, ne0, rows, xh);
    int32_t ids_few[20], want[80], got[80];
    float p_few[20];
    cr_assert_eq(gpu->ops->argmax(gpu, &wg, ids_few, p_few), 0);
    cr_assert_eq(cpu->ops->argmax(cpu, &xc, want, NULL), 0);
    cr_assert_eq(gpu->ops->argmax(gpu, &xg, got, NULL), 0);
    assert_bits(got, want, sizeof want, "argmax of 80 rows after 20 wide ones");
    free(wh), free(xh);
    free_t(gpu, &wg), free_t(gpu, &xg), free_t(cpu, &xc);
}

/* ---------------------------------------------------------------------------------------------- */
/* Whole models                                                                                   */

static struct model_synth_config llama_cfg(enum spec_dtype wtype)
{
    return (struct model_synth_config){.arch = MODEL_ARCH_LLAMA, .wtype = wtype, .n_layer = 2, .n_embd = 64,
                                       .n_head = 4, .n_head_kv = 2, .n_ff = 96, .n_vocab = 300, .n_ctx = 64,
                                       .rope_freqs = true, .seed = 7};
}

static struct model_synth_config qwen2_cfg(enum spec_dtype wtype)
{
    return (struct model_synth_config){.arch = MODEL_ARCH_QWEN2, .wtype = wtype, .n_layer = 2, .n_embd = 256,
                                       .n_head = 4, .n_head_kv = 1, .n_ff = 512, .n_vocab = 320, .n_ctx = 64,
                                       .tied_output = true, .seed = 11};
}

static const int32_t prompt[11] = {1, 77, 260, 5, 299, 42, 42, 180, 3, 250, 17};

static struct model_seq *new_seq(struct model *m, int n_ctx)
{
    struct model_seq *s = NULL;
    cr_assert_eq(model_seq_new(m, n_ctx, &s), 0);
    return s;
}

static int argmax(const float *l, int n, float *margin)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    float second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != best && l[i] > second)
            second = l[i];
    *margin = l[best] - second;
    return best;
}

/* Prompt logits within rel * max|logit| of the CPU's, then 32 greedy steps with the same tokens. With
 * `prefill` the prompt goes as the engine sends it: all but its last token without outputs (the
 * backend's prefill path), then the last one, whose logits are compared; on the GPU side b runs it. */
static void check_model_on(struct kern_backend *b, const struct model_synth_config *c, bool kv_f32, double rel,
                           bool prefill)
{
    const char *what = kern_dtype_info(c->wtype)->name;
    const struct model_config mc = {.kv_f32 = kv_f32};
    struct mem_model mcpu = tsupport_load_synth(c, cpu, mc), mgpu = tsupport_load_synth(c, b, mc);
    const int nv = model_n_vocab(mcpu.m), steps = 32, n0 = prefill ? 10 : 0, n = 11 - n0;
    float *lc = malloc(sizeof(float) * (size_t)(n * nv)), *lg = malloc(sizeof(float) * (size_t)(n * nv));
    struct model_seq *sc = new_seq(mcpu.m, 64), *sg = new_seq(mgpu.m, 64);
    if (prefill) {
        cr_assert_eq(model_forward_last(mcpu.m, sc, prompt, n0, NULL), 0);
        cr_assert_eq(model_forward_last(mgpu.m, sg, prompt, n0, NULL), 0);
    }
    cr_assert_eq(model_forward(mcpu.m, sc, prompt + n0, n, lc), 0);
    cr_assert_eq(model_forward(mgpu.m, sg, prompt + n0, n, lg), 0);
    float lmax = 0.0f;
    for (int i = 0; i < n * nv; i++)
        lmax = fmaxf(lmax, fabsf(lc[i]));
    const double bound = rel * lmax;
    for (int i = 0; i < n * nv; i++)
        cr_assert(fabs((double)lg[i] - lc[i]) <= bound, "%s%s: logit %d of position %d is %.7g, the CPU's %.7g (bound %.3g)",
                  what, kv_f32 ? " kv_f32" : "", i % nv, i / nv, lg[i], lc[i], bound);

    float mc_margin, mg_margin, min_margin = INFINITY;
    int32_t tc = argmax(lc + (size_t)(n - 1) * nv, nv, &mc_margin), tg = argmax(lg + (size_t)(n - 1) * nv, nv, &mg_margin);
    for (int step = 0; step < steps; step++) {
        min_margin = fminf(min_margin, mc_margin);
        cr_assert_eq(tg, tc, "%s: greedy step %d: CUDA chose %d, the CPU %d (CPU top-2 margin %.3g, bound %.3g)", what,
                     step, tg, tc, mc_margin, bound);
        cr_assert_eq(model_forward(mcpu.m, sc, &tc, 1, lc), 0);
        cr_assert_eq(model_forward(mgpu.m, sg, &tg, 1, lg), 0);
        tc = argmax(lc, nv, &mc_margin);
        tg = argmax(lg, nv, &mg_margin);
    }
    /* The identity above means something only if no step was a near tie for the CPU. */
    cr_assert(min_margin > 2 * bound, "%s: a CPU top-2 margin of %.3g is within the bound %.3g: pick another seed", what,
              min_margin, bound);
    model_seq_free(sc), model_seq_free(sg);
    free(lc), free(lg);
    tsupport_mem_model_free(&mcpu);
    tsupport_mem_model_free(&mgpu);
}

static void check_model(const struct model_synth_config *c, bool kv_f32, double rel)
{
    check_model_on(gpu, c, kv_f32, rel, false);
}

Test(conformance, model_with_float_weights_and_f32_cache_matches_the_cpu)
{
    need_cuda();
    struct model_synth_config c = llama_cfg(SPEC_F32);
    check_model(&c, true, 1e-4);
    c = qwen2_cfg(SPEC_F32);
    check_model(&c, true, 1e-4);
}

Test(conformance, quantized_models_match_the_cpu_and_decode_the_same_greedy_tokens)
{
    need_cuda();
    const enum spec_dtype llama_types[] = {SPEC_F16, SPEC_BF16, SPEC_Q8_0, SPEC_Q4_0, SPEC_Q4_1, SPEC_Q5_0};
    for (size_t i = 0; i < sizeof llama_types / sizeof llama_types[0]; i++) {
        struct model_synth_config c = llama_cfg(llama_types[i]);
        /* With a separate output matrix the logits are small (max |logit| ~3.5) and CPU top-2 margins
         * fall to 1e-4, inside the bound, so identity would not be a test; tied, every margin is at
         * least 8x the 2 x bound that check_model requires. */
        c.tied_output = true;
        check_model(&c, false, 2e-2);
    }
    const enum spec_dtype qwen_types[] = {SPEC_Q4_K, SPEC_Q6_K};
    for (size_t i = 0; i < 2; i++) {
        struct model_synth_config c = qwen2_cfg(qwen_types[i]);
        check_model(&c, false, 2e-2);
    }
}

/* A prompt prefilled through cuBLAS (as the engine sends it) leaves a cache from which the last prompt
 * token's logits are within the quantised models' bound of the CPU's, and greedy decoding picks the
 * CPU's tokens; the prefill really took cuBLAS: its logits are not the ones without it. */
Test(conformance, a_prompt_prefilled_through_cublas_decodes_the_cpus_greedy_tokens)
{
    need_cuda();
    struct kern_backend *b = blas_backend();
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K);
    check_model_on(b, &c, false, 2e-2, true);
    struct mem_model with = tsupport_load_synth(&c, b, (struct model_config){0}),
                     without = tsupport_load_synth(&c, gpu, (struct model_config){0});
    const int nv = model_n_vocab(with.m);
    float *lw = malloc(sizeof(float) * (size_t)nv), *lo = malloc(sizeof(float) * (size_t)nv);
    struct model_seq *sw = new_seq(with.m, 32), *so = new_seq(without.m, 32);
    cr_assert_eq(model_forward_last(with.m, sw, prompt, 10, NULL), 0);
    cr_assert_eq(model_forward_last(without.m, so, prompt, 10, NULL), 0);
    cr_assert_eq(model_forward(with.m, sw, prompt + 10, 1, lw), 0);
    cr_assert_eq(model_forward(without.m, so, prompt + 10, 1, lo), 0);
    cr_assert(memcmp(lw, lo, sizeof(float) * (size_t)nv) != 0, "the prefill did not go through cuBLAS");
    model_seq_free(sw), model_seq_free(so);
    free(lw), free(lo);
    tsupport_mem_model_free(&with);
    tsupport_mem_model_free(&without);
    kern_backend_destroy(b);
}

/* model_forward_batch's promise on the GPU: positions batched, chunked or alone, and sequences
 * batched together, all give the same logits bits. */
Test(conformance, model_forward_is_batch_invariant_on_cuda)
{
    need_cuda();
    const enum spec_dtype types[] = {SPEC_Q4_K, SPEC_Q8_0};
    for (int ti = 0; ti < 2; ti++) {
        struct model_synth_config c = qwen2_cfg(types[ti]);
        struct mem_model mm = tsupport_load_synth(&c, gpu, (struct model_config){0}),
                         small = tsupport_load_synth(&c, gpu, (struct model_config){.max_batch = 4});
        const int n = 11, nv = model_n_vocab(mm.m);
        float *batch = malloc(sizeof(float) * (size_t)(n * nv)), *seq = malloc(sizeof(float) * (size_t)(n * nv)),
              *chunked = malloc(sizeof(float) * (size_t)(n * nv)), *other = malloc(sizeof(float) * (size_t)(3 * nv)),
              *other_alone = malloc(sizeof(float) * (size_t)(3 * nv));
        struct model_seq *a = new_seq(mm.m, 32), *b = new_seq(mm.m, 32), *d = new_seq(small.m, 32),
                         *e = new_seq(mm.m, 32), *f = new_seq(mm.m, 32);
        cr_assert_eq(model_forward(mm.m, a, prompt, n, batch), 0);
        for (int i = 0; i < n; i++)
            cr_assert_eq(model_forward(mm.m, b, prompt + i, 1, seq + (size_t)i * nv), 0);
        cr_assert_eq(model_forward(small.m, d, prompt, n, chunked), 0);
        assert_bits(seq, batch, sizeof(float) * (size_t)(n * nv), "one by one vs batch");
        assert_bits(chunked, batch, sizeof(float) * (size_t)(n * nv), "chunked vs batch");

        /* two sequences in one pass: each gets the logits it gets alone */
        const int32_t toks[3] = {9, 8, 7};
        cr_assert_eq(model_forward(mm.m, f, toks, 3, other_alone), 0);
        float *mine = malloc(sizeof(float) * (size_t)(n * nv));
        struct model_seq *g = new_seq(mm.m, 32);
        const struct model_batch_item items[2] = {
            {.s = g, .tokens = prompt, .n = n, .logits = mine, .all_logits = true},
            {.s = e, .tokens = toks, .n = 3, .logits = other, .all_logits = true},
        };
        cr_assert_eq(model_forward_batch(mm.m, items, 2), 0);
        assert_bits(mine, batch, sizeof(float) * (size_t)(n * nv), "sequence batched with another");
        assert_bits(other, other_alone, sizeof(float) * (size_t)(3 * nv), "other sequence batched");
        model_seq_free(a), model_seq_free(b), model_seq_free(d), model_seq_free(e), model_seq_free(f),
            model_seq_free(g);
        free(batch), free(seq), free(chunked), free(other), free(other_alone), free(mine);
        tsupport_mem_model_free(&mm);
        tsupport_mem_model_free(&small);
    }
}

static struct kern_step_stats step_stats(struct kern_backend *b)
{
    struct kern_step_stats st;
    cr_assert_eq(b->ops->step_stats(b, &st), 0);
    return st;
}

/* The steps between two readings of the stats: begun, recorded, replayed, repeated. */
static void assert_steps(struct kern_step_stats a, struct kern_step_stats b, long steps, long recorded, long replayed,
                         long repeated, const char *what)
{
    cr_assert_eq(b.steps - a.steps, steps, "%s: %ld steps begun, expected %ld", what, b.steps - a.steps, steps);
    cr_assert_eq(b.recorded - a.recorded, recorded, "%s: %ld recorded, expected %ld", what, b.recorded - a.recorded,
                 recorded);
    cr_assert_eq(b.replayed - a.replayed, replayed, "%s: %ld replayed, expected %ld", what, b.replayed - a.replayed,
                 replayed);
    cr_assert_eq(b.repeated - a.repeated, repeated, "%s: %ld repeated, expected %ld", what, b.repeated - a.repeated,
                 repeated);
}

/* A CUDA backend with the suite's settings that records steps as graphs (kern_backend_config.graphs). */
static struct kern_backend *graphs_backend(void)
{
    struct kern_backend_config cfg = tsupport_backend_config(0);
    cfg.graphs = true;
    struct kern_backend *g = NULL;
    cr_assert_eq(kern_backend_create("cuda", &cfg, &g), 0);
    return g;
}

/* Steps recorded as CUDA graphs (kern_backend_config.graphs) give the bits of the same steps run op
 * by op, and later steps of a shape replay the recording with their own positions: decode steps past
 * an attention chunk boundary (the grid grows, so that step is issued again and recorded anew; its
 * scratch buffer grows while it is recorded), verification-sized steps and rollbacks, two sequences
 * taking turns and two sequences in each step. */
Test(conformance, steps_recorded_as_graphs_give_the_bits_of_op_by_op_steps)
{
    need_cuda();
    struct kern_backend *graphs = graphs_backend();
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K);
    c.n_ctx = 320;
    struct mem_model mg = tsupport_load_synth(&c, graphs, (struct model_config){0}),
                     me = tsupport_load_synth(&c, gpu, (struct model_config){0});
    const int nv = model_n_vocab(mg.m);
    struct model_seq *sg = new_seq(mg.m, 320), *se = new_seq(me.m, 320);
    float *lg = malloc(sizeof(float) * (size_t)(5 * nv)), *le = malloc(sizeof(float) * (size_t)(5 * nv));
    cr_assert_eq(model_forward(mg.m, sg, prompt, 5, lg), 0);
    cr_assert_eq(model_forward(me.m, se, prompt, 5, le), 0);
    assert_bits(lg, le, sizeof(float) * (size_t)(5 * nv), "prompt");
    int32_t tok = prompt[4];
    struct kern_step_stats before = step_stats(graphs);
    for (int step = 0; step < 140; step++) { /* from position 5 past 128 */
        int32_t ig, ie;
        const struct model_batch_item bg = {.s = sg, .tokens = &tok, .n = 1, .logits = lg, .argmax = &ig},
                                      be_ = {.s = se, .tokens = &tok, .n = 1, .logits = le, .argmax = &ie};
        cr_assert_eq(model_forward_batch(mg.m, &bg, 1), 0);
        cr_assert_eq(model_forward_batch(me.m, &be_, 1), 0);
        cr_assert_eq(ig, ie, "step %d", step);
        cr_assert(memcmp(lg, le, sizeof(float) * (size_t)nv) == 0, "step %d: logits not bit-identical", step);
        tok = ig;
    }
    /* step 0 runs op by op, steps 1 and 2 are recorded (a graph for each of the backend's two stages),
     * then replays; at position 128 (step 123) the keys need a second chunk: that replay is given up,
     * the step issued again and recorded, and so is the next, on the other stage */
    assert_steps(before, step_stats(graphs), 141, 4, 135, 1, "decode");
    /* the fusions hold in the model's own steps: 5 nodes a layer (q|k|v with the rope and the store of
     * k and v, attention with wo's conversion, wo with the ffn norm and its conversion, gate|up with
     * the swiglu and w_down's conversion, w_down with the next layer's attention norm and its
     * conversion, the last one's with the output norm, which adds the last residual), and 7 more: the
     * step values, token ids and RoPE table copied in, the embedding rows, the first layer's attention
     * norm with its conversion, the output head and the greedy id */
    cr_assert_eq(step_stats(graphs).nodes, 5 * c.n_layer + 7, "%ld nodes a decode step", step_stats(graphs).nodes);
    before = step_stats(graphs);
    for (int round = 0; round < 3; round++) { /* verification passes of 5, rolled back but one */
        const int32_t draft[5] = {tok, 17, 250, (int32_t)(round + 3), 99};
        cr_assert_eq(model_forward(mg.m, sg, draft, 5, lg), 0);
        cr_assert_eq(model_forward(me.m, se, draft, 5, le), 0);
        assert_bits(lg, le, sizeof(float) * (size_t)(5 * nv), "verification pass");
        cr_assert_eq(model_seq_truncate(sg, model_seq_len(sg) - 4), 0);
        cr_assert_eq(model_seq_truncate(se, model_seq_len(se) - 4), 0);
    }
    /* the prompt's shape: its step sized the buffers, so these two are recorded (a stage each), the
     * third replays */
    assert_steps(before, step_stats(graphs), 3, 2, 1, 0, "verification");

    struct model_seq *sg2 = new_seq(mg.m, 320), *se2 = new_seq(me.m, 320);
    cr_assert_eq(model_forward(mg.m, sg2, prompt, 3, lg), 0);
    cr_assert_eq(model_forward(me.m, se2, prompt, 3, le), 0);
    before = step_stats(graphs);
    for (int step = 0; step < 6; step++) { /* steps of the decode loop's kind (logits and greedy id) */
        const int32_t t = (int32_t)(40 + step);
        int32_t ig, ie;
        const struct model_batch_item bg = {.s = step % 2 ? sg2 : sg, .tokens = &t, .n = 1, .logits = lg,
                                            .argmax = &ig},
                                      be_ = {.s = step % 2 ? se2 : se, .tokens = &t, .n = 1, .logits = le,
                                             .argmax = &ie};
        cr_assert_eq(model_forward_batch(mg.m, &bg, 1), 0);
        cr_assert_eq(model_forward_batch(me.m, &be_, 1), 0);
        assert_bits(lg, le, sizeof(float) * (size_t)nv, "two sequences taking turns");
        cr_assert_eq(ig, ie, "two sequences taking turns: step %d", step);
    }
    /* each sequence's steps have a shape, and recordings, of their own: the first turn's replay is given
     * up (the verification steps grew attention's scratch buffer since decode was recorded) and
     * recorded, and its next turn, on the other stage, recorded too; the other sequence's first turn
     * runs op by op and its second is recorded; their last turns replay */
    assert_steps(before, step_stats(graphs), 7, 3, 2, 1, "two sequences");
    /* both in each step, at their own positions: replays read two positions from device memory */
    before = step_stats(graphs);
    for (int step = 0; step < 4; step++) {
        const int32_t t[2] = {(int32_t)(60 + step), (int32_t)(90 + step)};
        const struct model_batch_item bg[2] = {{.s = sg, .tokens = &t[0], .n = 1, .logits = lg},
                                               {.s = sg2, .tokens = &t[1], .n = 1, .logits = lg + nv}},
                                      be_[2] = {{.s = se, .tokens = &t[0], .n = 1, .logits = le},
                                                {.s = se2, .tokens = &t[1], .n = 1, .logits = le + nv}};
        cr_assert_eq(model_forward_batch(mg.m, bg, 2), 0);
        cr_assert_eq(model_forward_batch(me.m, be_, 2), 0);
        assert_bits(lg, le, sizeof(float) * (size_t)(2 * nv), "two sequences in one step");
    }
    assert_steps(before, step_stats(graphs), 4, 2, 1, 0, "two sequences in one step"); /* op by op, two stages */
    /* and with the nodes of a step of one but for its norms and rope, which launch alone after matmuls
     * of two rows (8 a layer and 6): the two sequences' stores launch with the rope, their attentions
     * together (wo's conversion with them) */
    cr_assert_eq(step_stats(graphs).nodes, 8 * c.n_layer + 6, "%ld nodes a step of two sequences",
                 step_stats(graphs).nodes);
    free(lg), free(le);
    model_seq_free(sg), model_seq_free(se), model_seq_free(sg2), model_seq_free(se2);
    tsupport_mem_model_free(&mg);
    tsupport_mem_model_free(&me);
    kern_backend_destroy(graphs);
}

static size_t device_used(struct kern_backend *b)
{
    size_t used;
    cr_assert_eq(b->ops->device_memory(b, &used), 0);
    return used;
}

/* Another program takes what is left of b's cap (*taken: whether there was anything to take). */
static struct kern_tensor take_the_rest(struct kern_backend *b, size_t cap, bool *taken)
{
    struct kern_tensor t = {0};
    const size_t left = cap - device_used(b);
    *taken = left >= sizeof(float);
    if (*taken)
        cr_assert_eq(b->ops->tensor_alloc(b, SPEC_F32, 1, (int64_t)(left / sizeof(float)), &t), 0);
    struct kern_tensor more;
    cr_assert_eq(b->ops->tensor_alloc(b, SPEC_F32, 64, 1, &more), SPEC_E_NOMEM, "past the cap");
    return t;
}

/* The steps of the test below on a sequence of m: n (<= 40) tokens, a function of their positions, with
 * the logits of the last position, or of every position when n is 5 (the prompt's shape). */
static int tokens_step(struct model *m, struct model_seq *s, int n, float *logits)
{
    int32_t t[40];
    for (int i = 0; i < n; i++)
        t[i] = (int32_t)(((model_seq_len(s) + i) * 37 + 11) % model_n_vocab(m));
    return n == 5 ? model_forward(m, s, t, n, logits) : model_forward_last(m, s, t, n, logits);
}

static int decode_step(struct model *m, struct model_seq *s, float *logits)
{
    return tokens_step(m, s, 1, logits);
}

static int prompt_step(struct model *m, struct model_seq *s, float *logits)
{
    return tokens_step(m, s, 5, logits);
}

/* A step on both sequences (the capped backend's and the reference's): their logits bit for bit. */
static void both(int (*step)(struct model *, struct model_seq *, float *), struct model *mc, struct model_seq *sc,
                 struct model *me, struct model_seq *se, float *lc, float *le, const char *what)
{
    cr_assert_eq(step(mc, sc, lc), 0, "%s", what);
    cr_assert_eq(step(me, se, le), 0);
    const size_t rows = step == prompt_step ? 5 : 1;
    assert_bits(lc, le, sizeof(float) * rows * (size_t)model_n_vocab(mc), what);
}

static int long_step(struct model *m, struct model_seq *s, float *logits)
{
    return tokens_step(m, s, 40, logits);
}

/* A backend short of device memory (kern_backend_config.device_bytes, the rest taken by another tensor
 * as by another program) fails the step that needs more with SPEC_E_NOMEM and changes no sequence; a
 * step it cannot record as a graph for want of memory runs op by op; once the memory is free again,
 * every step gives the bits of a backend that never ran short. */
Test(conformance, a_backend_out_of_device_memory_fails_the_step_and_goes_on)
{
    need_cuda();
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    struct kern_backend_config cfg = tsupport_backend_config(0);
    cfg.graphs = true;
    /* what the steps below need where memory is plenty: the cap */
    struct kern_backend *probe = NULL;
    cr_assert_eq(kern_backend_create("cuda", &cfg, &probe), 0);
    struct mem_model mp = tsupport_load_synth(&c, probe, (struct model_config){0});
    const int nv = model_n_vocab(mp.m);
    float *lc = malloc(sizeof(float) * (size_t)(5 * nv)), *le = malloc(sizeof(float) * (size_t)(5 * nv));
    struct model_seq *sp = new_seq(mp.m, 64);
    for (int i = 0; i < 2; i++) /* the second is recorded */
        cr_assert_eq(prompt_step(mp.m, sp, lc), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(decode_step(mp.m, sp, lc), 0);
    cr_assert_eq(long_step(mp.m, sp, lc), 0);
    cfg.device_bytes = device_used(probe);
    model_seq_free(sp);
    tsupport_mem_model_free(&mp);
    kern_backend_destroy(probe);

    struct kern_backend *capped = NULL;
    cr_assert_eq(kern_backend_create("cuda", &cfg, &capped), 0);
    struct mem_model mc = tsupport_load_synth(&c, capped, (struct model_config){0}),
                     me = tsupport_load_synth(&c, gpu, (struct model_config){0});
    struct model_seq *sc = new_seq(mc.m, 64), *se = new_seq(me.m, 64);
    both(prompt_step, mc.m, sc, me.m, se, lc, le, "the prompt");
    bool taken;
    struct kern_tensor other = take_the_rest(capped, cfg.device_bytes, &taken);
    struct kern_step_stats before = step_stats(capped);
    both(prompt_step, mc.m, sc, me.m, se, lc, le, "a step whose recording finds no memory runs op by op");
    assert_steps(before, step_stats(capped), 1, 0, 0, 0, "without memory to record");
    if (taken)
        capped->ops->tensor_free(capped, &other);

    before = step_stats(capped);
    for (int i = 0; i < 2; i++)
        both(decode_step, mc.m, sc, me.m, se, lc, le, "a decode step");
    assert_steps(before, step_stats(capped), 2, 1, 0, 0, "decode, op by op then recorded");
    other = take_the_rest(capped, cfg.device_bytes, &taken);
    const int len = model_seq_len(sc);
    cr_assert_eq(long_step(mc.m, sc, lc), SPEC_E_NOMEM, "a step that needs more memory than there is");
    cr_assert_eq(model_seq_len(sc), len, "the failed step left the sequence as it was");

    if (taken)
        capped->ops->tensor_free(capped, &other);
    both(long_step, mc.m, sc, me.m, se, lc, le, "the step that failed, with memory again");
    for (int i = 0; i < 3; i++)
        both(decode_step, mc.m, sc, me.m, se, lc, le, "a decode step after it");
    cr_assert_leq(device_used(capped), cfg.device_bytes);
    free(lc), free(le);
    model_seq_free(sc), model_seq_free(se);
    tsupport_mem_model_free(&mc);
    tsupport_mem_model_free(&me);
    kern_backend_destroy(capped);
}

/* Inside a recorded step, an op that returns data (rows_to_host) ends the recording: it sees every
 * op before it done, and the ops after it still run; a replay does the same where the recording
 * ended. */
Test(conformance, reading_back_inside_a_recorded_step_sees_the_ops_before_it)
{
    need_cuda();
    struct kern_backend *g = graphs_backend();
    const int64_t ne0 = 64, n = 3;
    float *ah = random_f32(ne0 * n, 1.0f), *bh = random_f32(ne0 * n, 1.0f);
    struct kern_tensor a = upload(g, SPEC_F32, ne0, n, ah), b = upload(g, SPEC_F32, ne0, n, bh),
                       o = poisoned(g, ne0, n);
    const struct kern_step_stats before = step_stats(g);
    /* the first pass of a shape runs op by op, the next two record up to the read (a graph for each of
     * the backend's two stages), the fourth replays the first recording there */
    for (int pass = 0; pass < 4; pass++) {
        cr_assert_eq(g->ops->step_begin(g, 77), 0);
        cr_assert_eq(g->ops->add(g, &a, &b, &o), 0);
        float *mid = download(g, &o);
        cr_assert_eq(g->ops->add(g, &o, &b, &o), 0);
        bool again;
        cr_assert_eq(g->ops->step_end(g, &again), 0);
        cr_assert(!again);
        float *end = download(g, &o);
        for (int64_t i = 0; i < ne0 * n; i++) {
            cr_assert_eq(mid[i], ah[i] + bh[i], "pass %d: element %lld before the read", pass, (long long)i);
            cr_assert_eq(end[i], (ah[i] + bh[i]) + bh[i], "pass %d: element %lld after it", pass, (long long)i);
        }
        free(mid), free(end);
    }
    assert_steps(before, step_stats(g), 4, 2, 1, 0, "read inside");
    /* A replay whose ops differ before the read cannot run its graph there: the read is cancelled, the
     * step runs nothing and step_end asks for it again, which then runs (recorded anew). */
    float *h = malloc((size_t)(ne0 * n) * sizeof(float));
    cr_assert_eq(g->ops->step_begin(g, 77), 0);
    cr_assert_eq(g->ops->add(g, &b, &b, &o), 0);
    cr_assert_eq(g->ops->rows_to_host(g, &o, 0, n, h), SPEC_E_CANCELLED);
    bool again;
    cr_assert_eq(g->ops->step_end(g, &again), 0);
    cr_assert(again);
    float *unchanged = download(g, &o);
    for (int64_t i = 0; i < ne0 * n; i++)
        cr_assert_eq(unchanged[i], (ah[i] + bh[i]) + bh[i], "the abandoned step wrote element %lld", (long long)i);
    cr_assert_eq(g->ops->step_begin(g, 77), 0);
    cr_assert_eq(g->ops->add(g, &b, &b, &o), 0);
    cr_assert_eq(g->ops->rows_to_host(g, &o, 0, n, h), 0);
    cr_assert_eq(g->ops->step_end(g, &again), 0);
    cr_assert(!again);
    for (int64_t i = 0; i < ne0 * n; i++)
        cr_assert_eq(h[i], bh[i] + bh[i], "issued again: element %lld", (long long)i);
    assert_steps(before, step_stats(g), 6, 3, 1, 1, "issued again");
    free(h), free(unchanged);
    free(ah), free(bh);
    free_t(g, &a), free_t(g, &b), free_t(g, &o);
    kern_backend_destroy(g);
}

/* A chain of steps each fed the id the step before kept (a draft model's greedy run): no id crosses to
 * the host until the end, every step after the recorded ones (a graph for each of the backend's two
 * stages) replays one (the rows it reads and writes are step values), and the ids are the CPU's. */
Test(conformance, a_chain_of_steps_fed_their_kept_ids_replays_its_graphs_with_the_cpus_ids)
{
    need_cuda();
    struct kern_backend *g = graphs_backend();
    const int64_t d = 64, vocab = 300, steps = 9;
    size_t rb;
    void *eh = random_weights(SPEC_Q8_0, d, vocab, 0, &rb), *wh = random_weights(SPEC_Q4_K, 256, vocab, 0, &rb);
    float *ph = random_f32(256 * d, 0.2f);
    struct kern_backend *be[2] = {cpu, g};
    int32_t ids[2][10];
    const struct kern_step_stats before = step_stats(g);
    for (int b = 0; b < 2; b++) {
        struct kern_backend *k = be[b];
        const int32_t seed = 17;
        struct kern_tensor e = weight(k, SPEC_Q8_0, d, vocab, eh), w = weight(k, SPEC_Q4_K, 256, vocab, wh),
                           p = weight(k, SPEC_F32, d, 256, ph), x = poisoned(k, d, 1), h = poisoned(k, 256, 1),
                           lg = poisoned(k, vocab, 1), kept = ids_tensor(k, steps + 1, NULL);
        cr_assert_eq(k->ops->rows_from_host(k, &kept, 0, 1, &seed), 0);
        for (int s = 1; s <= steps; s++) {
            if (k->ops->step_begin)
                cr_assert_eq(k->ops->step_begin(k, 99), 0);
            cr_assert_eq(k->ops->get_rows_kept(k, &e, &kept, s - 1, 1, &x), 0);
            cr_assert_eq(k->ops->matmul(k, &p, &x, NULL, &h), 0);
            cr_assert_eq(k->ops->matmul(k, &w, &h, NULL, &lg), 0);
            cr_assert_eq(k->ops->argmax_keep(k, &lg, &kept, s), 0);
            bool again = false;
            if (k->ops->step_end)
                cr_assert_eq(k->ops->step_end(k, &again), 0);
            cr_assert(!again, "step %d issued again", s);
        }
        cr_assert_eq(k->ops->rows_to_host(k, &kept, 0, steps + 1, ids[b]), 0);
        free_t(k, &e), free_t(k, &w), free_t(k, &p), free_t(k, &x), free_t(k, &h), free_t(k, &lg), free_t(k, &kept);
    }
    assert_steps(before, step_stats(g), steps, 2, steps - 3, 0, "a chain of kept ids");
    int distinct = 0;
    for (int s = 0; s <= steps; s++) {
        cr_assert_eq(ids[1][s], ids[0][s], "step %d: cuda kept %d, the cpu %d", s, ids[1][s], ids[0][s]);
        cr_assert(ids[0][s] >= 0 && ids[0][s] < vocab);
        distinct += s > 0 && ids[0][s] != ids[0][s - 1];
    }
    cr_assert(distinct > 0, "the chain never moved: it tests nothing");
    free(eh), free(wh), free(ph);
    kern_backend_destroy(g);
}

static int generate(struct model *target, struct model *draft, bool spec, int draft_max, const int32_t *p, int np,
                    int32_t *out, int n_gen)
{
    struct engine *e = NULL;
    const struct engine_config cfg = {.target = target, .draft = draft, .n_ctx = 128, .draft_max = draft_max,
                                      .draft_min = 1, .adaptive = false, .penalty_window = 64};
    cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
    const struct engine_request req = {.prompt = p, .n_prompt = np, .max_tokens = n_gen,
                                       .sampling = verify_params_default(), .speculative = spec};
    int n_out = 0;
    enum engine_finish fin;
    cr_assert_eq(engine_generate(e, &req, NULL, NULL, out, n_gen, &n_out, &fin, NULL), SPEC_OK);
    engine_free(e);
    return n_out;
}

/* The design's promise on the GPU: greedy speculative output (a draft model, then prompt lookup)
 * is token-identical to greedy target-only output. */
Test(conformance, greedy_speculative_decoding_equals_target_only_on_cuda)
{
    need_cuda();
    struct model_synth_config tc = qwen2_cfg(SPEC_Q4_K), dc = qwen2_cfg(SPEC_Q8_0);
    tc.n_ctx = dc.n_ctx = 128;
    dc.n_layer = 1;
    dc.n_embd = 64;
    dc.n_ff = 128;
    struct mem_model t = tsupport_load_synth(&tc, gpu, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, gpu, (struct model_config){0});
    int32_t want[40], got[40];
    const int n_want = generate(t.m, NULL, false, 1, prompt, 8, want, 40);
    const int draft_maxes[] = {1, 4, 8};
    for (int i = 0; i < 3; i++) {
        for (int use_draft = 0; use_draft < 2; use_draft++) {
            const int n = generate(t.m, use_draft ? d.m : NULL, true, draft_maxes[i], prompt, 8, got, 40);
            cr_assert_eq(n, n_want);
            for (int j = 0; j < n; j++)
                cr_assert_eq(got[j], want[j], "draft_max %d %s: token %d is %d, target-only gave %d", draft_maxes[i],
                             use_draft ? "draft model" : "prompt lookup", j, got[j], want[j]);
        }
    }
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

Test(conformance, cuda_refuses_what_the_cpu_refuses)
{
    need_cuda();
    cr_assert_str_eq(gpu->ops->name, "cuda");
    struct kern_backend *a = NULL;
    cr_assert_eq(kern_backend_create("auto", NULL, &a), 0);
    cr_assert_str_eq(a->ops->name, "cuda", "auto must pick the GPU when there is one");
    kern_backend_destroy(a);
    uint8_t block[24] = {0};
    struct kern_tensor w, x = poisoned(gpu, 32, 1), y = poisoned(gpu, 1, 1);
    cr_assert_eq(gpu->ops->weight_from_host(gpu, SPEC_Q5_1, 32, 1, block, &w), 0);
    cr_assert_eq(gpu->ops->matmul(gpu, &w, &x, NULL, &y), SPEC_E_UNSUPPORTED);
    cr_assert_eq(gpu->ops->rows_to_host(gpu, &x, 1, 1, block), SPEC_E_RANGE);
    struct kern_tensor bad;
    cr_assert_eq(gpu->ops->tensor_alloc(gpu, SPEC_Q4_K, 100, 1, &bad), SPEC_E_RANGE);
    free_t(gpu, &w), free_t(gpu, &x), free_t(gpu, &y);
}
