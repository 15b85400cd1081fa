/* The CPU backend's ops against straightforward double-precision references written here. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"

static uint64_t rng_state;

static double rnd(void) /* uniform in [-1, 1) */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 4503599627370496.0 - 1.0;
}

static struct kern_backend *be;

static void setup(void)
{
    rng_state = 42;
    cr_assert_eq(kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = 2}, &be), 0);
}

static void teardown(void)
{
    kern_backend_destroy(be);
}

TestSuite(backend_cpu, .init = setup, .fini = teardown);

static struct kern_tensor alloc_t(enum spec_dtype type, int64_t ne0, int64_t ne1)
{
    struct kern_tensor t;
    cr_assert_eq(be->ops->tensor_alloc(be, type, ne0, ne1, &t), 0);
    return t;
}

static struct kern_tensor rand_f32(int64_t ne0, int64_t ne1, double scale)
{
    struct kern_tensor t = alloc_t(SPEC_F32, ne0, ne1);
    float *d = t.data;
    for (int64_t i = 0; i < ne0 * ne1; i++)
        d[i] = (float)(scale * rnd());
    return t;
}

static float *f32(const struct kern_tensor *t, int64_t row)
{
    return (float *)((char *)t->data + (size_t)row * t->row_bytes);
}

/* ---------------------------------------------------------------------------------------------- */

Test(backend_cpu, create_names_cpu_auto_and_refuses_cuda_until_it_exists)
{
    struct kern_backend *b = NULL;
    cr_assert_eq(kern_backend_create("auto", NULL, &b), 0);
    cr_assert_str_eq(b->ops->name, "cpu");
    kern_backend_destroy(b);
    b = NULL;
    cr_assert_eq(kern_backend_create("cuda", NULL, &b), SPEC_E_UNSUPPORTED);
    cr_assert_null(b);
    cr_assert_eq(kern_backend_create("tpu", NULL, &b), SPEC_E_INVALID_ARG);
    cr_assert_null(b);
}

Test(backend_cpu, tensors_are_64_byte_aligned_zeroed_and_weights_are_views)
{
    struct kern_tensor t = alloc_t(SPEC_F16, 3, 5);
    cr_assert_eq((uintptr_t)t.data % 64, 0);
    cr_assert_eq(t.row_bytes, 6);
    for (int i = 0; i < 15; i++)
        cr_assert_eq(((uint16_t *)t.data)[i], 0);
    be->ops->tensor_free(be, &t);

    static uint8_t host[2 * 18]; /* two Q4_0 rows of 32 */
    struct kern_tensor w;
    cr_assert_eq(be->ops->weight_from_host(be, SPEC_Q4_0, 32, 2, host, &w), 0);
    cr_assert_eq(w.data, (void *)host, "the CPU must not copy weights");
    cr_assert_eq(w.row_bytes, 18);
    cr_assert_not(w.owned);
    cr_assert_eq(be->ops->weight_from_host(be, SPEC_Q4_0, 31, 2, host, &w), SPEC_E_RANGE);
}

Test(backend_cpu, rows_round_trip_through_host_and_reject_out_of_range)
{
    struct kern_tensor t = alloc_t(SPEC_F32, 4, 3);
    float in[8] = {1, 2, 3, 4, 5, 6, 7, 8}, out[8] = {0};
    cr_assert_eq(be->ops->rows_from_host(be, &t, 1, 2, in), 0);
    cr_assert_eq(be->ops->rows_to_host(be, &t, 1, 2, out), 0);
    cr_assert_arr_eq(in, out, sizeof in);
    cr_assert_eq(f32(&t, 0)[0], 0.0f);
    cr_assert_eq(be->ops->rows_to_host(be, &t, 2, 2, out), SPEC_E_RANGE);
    cr_assert_eq(be->ops->rows_from_host(be, &t, -1, 1, in), SPEC_E_RANGE);
    be->ops->tensor_free(be, &t);
}

/* ---------------------------------------------------------------------------------------------- */

static void check_rms_norm(int64_t dim, int64_t rows, bool in_place)
{
    const float eps = 1e-5f;
    struct kern_tensor x = rand_f32(dim, rows, 3.0), w = rand_f32(dim, 1, 2.0);
    struct kern_tensor y = in_place ? x : alloc_t(SPEC_F32, dim, rows);
    double *want = malloc(sizeof(double) * (size_t)(dim * rows));
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t i = 0; i < dim; i++)
            ss += (double)f32(&x, r)[i] * f32(&x, r)[i];
        double scale = 1.0 / sqrt(ss / (double)dim + eps);
        for (int64_t i = 0; i < dim; i++)
            want[r * dim + i] = f32(&x, r)[i] * scale * ((float *)w.data)[i];
    }
    cr_assert_eq(be->ops->rms_norm(be, &x, NULL, &w, eps, &y), 0);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < dim; i++) {
            double d = want[r * dim + i];
            cr_assert(fabs(f32(&y, r)[i] - d) <= 1e-6 * (1 + fabs(d)), "row %ld [%ld]: %g vs %g", (long)r, (long)i,
                      f32(&y, r)[i], d);
        }
    free(want);
    if (!in_place)
        be->ops->tensor_free(be, &y);
    be->ops->tensor_free(be, &x);
    be->ops->tensor_free(be, &w);
}

Test(backend_cpu, rms_norm_adds_its_residual_first)
{
    struct kern_tensor x1 = rand_f32(300, 4, 3.0), r = rand_f32(300, 4, 2.0), w = rand_f32(300, 1, 1.0);
    struct kern_tensor x2 = alloc_t(SPEC_F32, 300, 4), r2 = alloc_t(SPEC_F32, 300, 4), y = alloc_t(SPEC_F32, 300, 4);
    memcpy(x2.data, x1.data, 300 * 4 * sizeof(float));
    memcpy(r2.data, r.data, 300 * 4 * sizeof(float));
    cr_assert_eq(be->ops->add(be, &x1, &r, &x1), 0);
    cr_assert_eq(be->ops->rms_norm(be, &x1, NULL, &w, 1e-5f, &y), 0);
    cr_assert_eq(be->ops->rms_norm(be, &x2, &r2, &w, 1e-5f, &r2), 0, "the residual is also the output");
    cr_assert(memcmp(x2.data, x1.data, 300 * 4 * sizeof(float)) == 0, "x += residual");
    cr_assert(memcmp(r2.data, y.data, 300 * 4 * sizeof(float)) == 0, "the norm of the sum");
    struct kern_tensor *all[] = {&x1, &r, &w, &x2, &r2, &y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        be->ops->tensor_free(be, all[i]);
}

Test(backend_cpu, rms_norm_matches_double_reference)
{
    check_rms_norm(67, 3, false);
    check_rms_norm(1024, 40, false); /* big enough to run on the pool */
}

Test(backend_cpu, rms_norm_in_place_matches_double_reference)
{
    check_rms_norm(96, 5, true);
}

/* ---------------------------------------------------------------------------------------------- */

/* Rope in double: theta_i = pos * base^(-2i/n_rot) * freq_scale / factor_i. */
static void rope_ref(double *x, int n_head, int head_dim, int pos, const struct kern_rope_params *p)
{
    for (int h = 0; h < n_head; h++) {
        double *v = x + h * head_dim;
        for (int i = 0; i < p->n_rot / 2; i++) {
            double ff = p->freq_factors ? p->freq_factors[i] : 1.0;
            double th = pos * pow(p->freq_base, -2.0 * i / p->n_rot) * p->freq_scale / ff;
            int a = p->mode == KERN_ROPE_NEOX ? i : 2 * i;
            int b = p->mode == KERN_ROPE_NEOX ? i + p->n_rot / 2 : 2 * i + 1;
            double x0 = v[a], x1 = v[b];
            v[a] = x0 * cos(th) - x1 * sin(th);
            v[b] = x0 * sin(th) + x1 * cos(th);
        }
    }
}

static void check_rope(enum kern_rope_mode mode, int n_rot, float freq_scale, const float *factors)
{
    const int n_head = 3, head_dim = 16, n = 6;
    const int32_t pos[6] = {0, 1, 2, 9, 37, 100};
    struct kern_rope_params p = {.mode = mode, .n_rot = n_rot, .freq_base = 10000.0f, .freq_scale = freq_scale,
                                 .freq_factors = factors};
    struct kern_tensor x = rand_f32(n_head * head_dim, n, 1.0);
    double *want = malloc(sizeof(double) * (size_t)(n_head * head_dim * n));
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < n_head * head_dim; i++)
            want[r * n_head * head_dim + i] = f32(&x, r)[i];
        rope_ref(want + r * n_head * head_dim, n_head, head_dim, pos[r], &p);
    }
    cr_assert_eq(be->ops->rope(be, &x, n_head, head_dim, pos, &p), 0);
    for (int r = 0; r < n; r++) {
        /* ggml's theta is a float product of up to n_rot/2 factors: its error grows with the position. */
        double tol = 1e-6 + pos[r] * (n_rot / 2) * 2.4e-7;
        for (int i = 0; i < n_head * head_dim; i++)
            cr_assert(fabs(f32(&x, r)[i] - want[r * n_head * head_dim + i]) <= tol,
                      "mode %d pos %d [%d]: %.7f vs %.7f", mode, pos[r], i, f32(&x, r)[i],
                      want[r * n_head * head_dim + i]);
    }
    free(want);
    be->ops->tensor_free(be, &x);
}

Test(backend_cpu, rope_norm_rotates_adjacent_pairs_like_double_reference)
{
    check_rope(KERN_ROPE_NORM, 16, 1.0f, NULL);
}

Test(backend_cpu, rope_neox_rotates_halves_like_double_reference)
{
    check_rope(KERN_ROPE_NEOX, 16, 1.0f, NULL);
}

Test(backend_cpu, rope_partial_rotation_leaves_the_tail_untouched)
{
    check_rope(KERN_ROPE_NORM, 8, 1.0f, NULL);
    check_rope(KERN_ROPE_NEOX, 10, 1.0f, NULL);
}

Test(backend_cpu, rope_applies_linear_freq_scale_and_freq_factors)
{
    const float factors[8] = {1.0f, 1.5f, 2.0f, 4.0f, 8.0f, 1.0f, 0.5f, 3.0f};
    check_rope(KERN_ROPE_NORM, 16, 0.25f, factors);
    check_rope(KERN_ROPE_NEOX, 16, 0.5f, factors);
}

Test(backend_cpu, rope_rejects_odd_or_oversized_rotation)
{
    struct kern_tensor x = rand_f32(32, 1, 1.0);
    int32_t pos = 0;
    struct kern_rope_params p = {.mode = KERN_ROPE_NORM, .n_rot = 7, .freq_base = 10000.0f, .freq_scale = 1.0f};
    cr_assert_eq(be->ops->rope(be, &x, 2, 16, &pos, &p), SPEC_E_INVALID_ARG);
    p.n_rot = 18;
    cr_assert_eq(be->ops->rope(be, &x, 2, 16, &pos, &p), SPEC_E_INVALID_ARG);
    be->ops->tensor_free(be, &x);
}

/* ---------------------------------------------------------------------------------------------- */

struct attn_case {
    int n_head, n_head_kv, head_dim, pos0, n;
    enum spec_dtype cache_type;
};

static double round_f16(double x)
{
    return kern_fp16_to_fp32(kern_fp32_to_fp16((float)x));
}

/* Fills a cache of pos0 + n rows plus 3 rows of poison beyond them (a mask violation would read them),
 * runs the op and compares with softmax attention in double on the cache's stored values. With
 * llamacpp_rounding, the reference rounds Q and the softmax weights to F16 as llama.cpp's mul_mat does. */
static double attention_max_err(const struct attn_case *c, struct kern_backend *b, struct kern_tensor *out_keep,
                                bool llamacpp_rounding)
{
    const int q_dim = c->n_head * c->head_dim, kv_dim = c->n_head_kv * c->head_dim;
    const int n_kv = c->pos0 + c->n, rows = n_kv + 3;
    struct kern_tensor q = rand_f32(q_dim, c->n, 2.0), k = alloc_t(c->cache_type, kv_dim, rows),
                       v = alloc_t(c->cache_type, kv_dim, rows), out = alloc_t(SPEC_F32, q_dim, c->n);
    struct kern_tensor src = rand_f32(kv_dim, rows, 2.0);
    for (int r = n_kv; r < rows; r++)
        for (int i = 0; i < kv_dim; i++)
            f32(&src, r)[i] = 1000.0f;
    cr_assert_eq(b->ops->store_rows(b, &src, &k, 0), 0);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < kv_dim; i++)
            f32(&src, r)[i] = r < n_kv ? (float)(2.0 * rnd()) : -1000.0f;
    cr_assert_eq(b->ops->store_rows(b, &src, &v, 0), 0);
    /* What the cache holds, as doubles. */
    double *kd = malloc(sizeof(double) * (size_t)(rows * kv_dim)), *vd = malloc(sizeof(double) * (size_t)(rows * kv_dim));
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < kv_dim; i++) {
            const char *kr = (const char *)k.data + (size_t)r * k.row_bytes, *vr = (const char *)v.data + (size_t)r * v.row_bytes;
            kd[r * kv_dim + i] = c->cache_type == SPEC_F16 ? kern_fp16_to_fp32(((const uint16_t *)kr)[i]) : ((const float *)kr)[i];
            vd[r * kv_dim + i] = c->cache_type == SPEC_F16 ? kern_fp16_to_fp32(((const uint16_t *)vr)[i]) : ((const float *)vr)[i];
        }

    const struct kern_attn_params p = {.n_head = c->n_head, .n_head_kv = c->n_head_kv, .head_dim = c->head_dim,
                                       .pos0 = c->pos0, .scale = 1.0f / sqrtf((float)c->head_dim)};
    cr_assert_eq(b->ops->attention(b, &q, &k, &v, &p, &out), 0);

    double max_err = 0;
    double *sc = malloc(sizeof(double) * (size_t)n_kv);
    for (int i = 0; i < c->n; i++)
        for (int h = 0; h < c->n_head; h++) {
            const int g = h / (c->n_head / c->n_head_kv), last = c->pos0 + i;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= last; j++) {
                double d = 0;
                for (int e = 0; e < c->head_dim; e++) {
                    double qe = f32(&q, i)[h * c->head_dim + e];
                    d += (llamacpp_rounding ? round_f16(qe) : qe) * kd[j * kv_dim + g * c->head_dim + e];
                }
                sc[j] = d * p.scale;
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j <= last; j++)
                sum += sc[j] = exp(sc[j] - mx);
            for (int e = 0; e < c->head_dim; e++) {
                double o = 0;
                for (int j = 0; j <= last; j++)
                    o += (llamacpp_rounding ? round_f16(sc[j] / sum) : sc[j] / sum) * vd[j * kv_dim + g * c->head_dim + e];
                max_err = fmax(max_err, fabs(o - f32(&out, i)[h * c->head_dim + e]));
            }
        }
    free(sc);
    free(kd);
    free(vd);
    b->ops->tensor_free(b, &q);
    b->ops->tensor_free(b, &k);
    b->ops->tensor_free(b, &v);
    b->ops->tensor_free(b, &src);
    if (out_keep)
        *out_keep = out;
    else
        b->ops->tensor_free(b, &out);
    return max_err;
}

Test(backend_cpu, attention_is_causal_softmax_attention_with_f32_cache)
{
    struct attn_case c = {.n_head = 4, .n_head_kv = 4, .head_dim = 8, .pos0 = 5, .n = 4, .cache_type = SPEC_F32};
    double err = attention_max_err(&c, be, NULL, false);
    cr_assert_leq(err, 1e-5, "max abs error %g", err);
}

Test(backend_cpu, attention_maps_query_heads_to_shared_kv_heads)
{
    struct attn_case c = {.n_head = 6, .n_head_kv = 2, .head_dim = 16, .pos0 = 3, .n = 5, .cache_type = SPEC_F32};
    double err = attention_max_err(&c, be, NULL, false);
    cr_assert_leq(err, 1e-5, "max abs error %g", err);
}

/* Q and the softmax weights are rounded to F16 as in llama.cpp: ~1e-3 of values of order one. */
Test(backend_cpu, attention_with_f16_cache_agrees_within_f16_rounding)
{
    struct attn_case c = {.n_head = 8, .n_head_kv = 2, .head_dim = 64, .pos0 = 40, .n = 7, .cache_type = SPEC_F16};
    double err = attention_max_err(&c, be, NULL, false);
    cr_assert_leq(err, 4e-3, "max abs error %g", err);
}

Test(backend_cpu, attention_with_f16_cache_rounds_q_and_weights_like_llama_cpp)
{
    struct attn_case c = {.n_head = 8, .n_head_kv = 2, .head_dim = 64, .pos0 = 40, .n = 7, .cache_type = SPEC_F16};
    double err = attention_max_err(&c, be, NULL, true);
    cr_log_info("max abs error vs the F16-rounding reference: %g", err);
    cr_assert_leq(err, 1e-5, "max abs error %g", err);
}

Test(backend_cpu, attention_of_the_first_token_returns_its_value)
{
    struct kern_tensor q = rand_f32(8, 1, 1.0), k = alloc_t(SPEC_F16, 4, 4), v = alloc_t(SPEC_F16, 4, 4),
                       out = alloc_t(SPEC_F32, 8, 1), src = rand_f32(4, 1, 1.0);
    cr_assert_eq(be->ops->store_rows(be, &src, &k, 0), 0);
    cr_assert_eq(be->ops->store_rows(be, &src, &v, 0), 0);
    const struct kern_attn_params p = {.n_head = 2, .n_head_kv = 1, .head_dim = 4, .pos0 = 0, .scale = 0.5f};
    cr_assert_eq(be->ops->attention(be, &q, &k, &v, &p, &out), 0);
    for (int h = 0; h < 2; h++)
        for (int e = 0; e < 4; e++)
            cr_assert_eq(f32(&out, 0)[h * 4 + e], kern_fp16_to_fp32(kern_fp32_to_fp16(f32(&src, 0)[e])));
    be->ops->tensor_free(be, &q);
    be->ops->tensor_free(be, &k);
    be->ops->tensor_free(be, &v);
    be->ops->tensor_free(be, &out);
    be->ops->tensor_free(be, &src);
}

Test(backend_cpu, attention_is_identical_for_any_thread_count_and_isa)
{
    struct attn_case c = {.n_head = 9, .n_head_kv = 3, .head_dim = 64, .pos0 = 20, .n = 3, .cache_type = SPEC_F16};
    struct kern_tensor o2, o1, os;
    uint64_t seed = rng_state;
    attention_max_err(&c, be, &o2, false);
    struct kern_backend *one;
    cr_assert_eq(kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = 1}, &one), 0);
    rng_state = seed;
    attention_max_err(&c, one, &o1, false);
    cr_assert_arr_eq(o1.data, o2.data, o1.row_bytes * 3, "1 vs 2 threads differ");
    if (cpu_isa_available(CPU_ISA_AVX2)) {
        cr_assert_eq(cpu_isa_set(CPU_ISA_SCALAR), 0);
        rng_state = seed;
        attention_max_err(&c, one, &os, false);
        cpu_isa_set(CPU_ISA_AVX2);
        cr_assert_arr_eq(os.data, o2.data, os.row_bytes * 3, "scalar vs AVX2 differ");
        one->ops->tensor_free(one, &os);
    }
    one->ops->tensor_free(one, &o1);
    be->ops->tensor_free(be, &o2);
    kern_backend_destroy(one);
}

Test(backend_cpu, attention_rejects_queries_past_the_cache)
{
    struct kern_tensor q = rand_f32(8, 2, 1.0), k = alloc_t(SPEC_F16, 8, 4), v = alloc_t(SPEC_F16, 8, 4),
                       out = alloc_t(SPEC_F32, 8, 2);
    const struct kern_attn_params p = {.n_head = 2, .n_head_kv = 2, .head_dim = 4, .pos0 = 3, .scale = 0.5f};
    cr_assert_eq(be->ops->attention(be, &q, &k, &v, &p, &out), SPEC_E_RANGE);
    const struct kern_attn_params bad = {.n_head = 3, .n_head_kv = 2, .head_dim = 4, .pos0 = 0, .scale = 0.5f};
    cr_assert_eq(be->ops->attention(be, &q, &k, &v, &bad, &out), SPEC_E_INVALID_ARG);
    be->ops->tensor_free(be, &q);
    be->ops->tensor_free(be, &k);
    be->ops->tensor_free(be, &v);
    be->ops->tensor_free(be, &out);
}

/* ---------------------------------------------------------------------------------------------- */

Test(backend_cpu, swiglu_is_silu_gate_times_up_even_in_place)
{
    struct kern_tensor g = rand_f32(300, 70, 8.0), u = rand_f32(300, 70, 2.0); /* 21000 values: the pool runs */
    double *want = malloc(sizeof(double) * 21000);
    for (int i = 0; i < 21000; i++) {
        double x = ((float *)g.data)[i];
        want[i] = x / (1.0 + exp(-x)) * ((float *)u.data)[i];
    }
    cr_assert_eq(be->ops->swiglu(be, &g, &u, &g), 0);
    for (int i = 0; i < 21000; i++)
        cr_assert(fabs(((float *)g.data)[i] - want[i]) <= 1e-6 * (1 + fabs(want[i])), "[%d] %g vs %g", i,
                  ((float *)g.data)[i], want[i]);
    free(want);
    be->ops->tensor_free(be, &g);
    be->ops->tensor_free(be, &u);
}

Test(backend_cpu, add_sums_elementwise)
{
    struct kern_tensor a = rand_f32(5, 3, 1.0), b = rand_f32(5, 3, 1.0), bias = rand_f32(5, 1, 1.0),
                       out = alloc_t(SPEC_F32, 5, 3);
    cr_assert_eq(be->ops->add(be, &a, &b, &out), 0);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 5; i++)
            cr_assert_eq(f32(&out, r)[i], f32(&a, r)[i] + f32(&b, r)[i]);
    cr_assert_eq(be->ops->add(be, &a, &bias, &out), SPEC_E_INVALID_ARG);
    be->ops->tensor_free(be, &a);
    be->ops->tensor_free(be, &b);
    be->ops->tensor_free(be, &bias);
    be->ops->tensor_free(be, &out);
}

Test(backend_cpu, matmul_adds_its_bias_to_the_finished_sums)
{
    struct kern_tensor w = rand_f32(40, 6, 1.0), x = rand_f32(40, 3, 1.0), bias = rand_f32(6, 1, 1.0),
                       wrong = rand_f32(5, 1, 1.0), y0 = alloc_t(SPEC_F32, 6, 3), y1 = alloc_t(SPEC_F32, 6, 3);
    cr_assert_eq(be->ops->matmul(be, &w, &x, NULL, &y0), 0);
    cr_assert_eq(be->ops->matmul(be, &w, &x, &bias, &y1), 0);
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 6; j++)
            cr_assert_eq(f32(&y1, r)[j], f32(&y0, r)[j] + ((float *)bias.data)[j], "y[%d][%d]", r, j);
    cr_assert_eq(be->ops->matmul(be, &w, &x, &wrong, &y1), SPEC_E_INVALID_ARG, "a bias of another length");
    struct kern_tensor *all[] = {&w, &x, &bias, &wrong, &y0, &y1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        be->ops->tensor_free(be, all[i]);
}

/* ---------------------------------------------------------------------------------------------- */

Test(backend_cpu, get_rows_dequantizes_the_requested_rows_of_every_type)
{
    const enum spec_dtype types[] = {SPEC_F32, SPEC_F16, SPEC_BF16, SPEC_Q4_0, SPEC_Q4_1,
                                     SPEC_Q5_0, SPEC_Q8_0, SPEC_Q4_K, SPEC_Q6_K};
    const int64_t ne0 = 256, ne1 = 5;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const enum spec_dtype t = types[ti];
        uint64_t rb;
        cr_assert_eq(kern_row_bytes(t, ne0, &rb), 0);
        uint8_t *host = malloc(rb * ne1);
        float src[256 * 5];
        for (int i = 0; i < 256 * 5; i++)
            src[i] = (float)(i / 256) + 0.25f * (float)rnd(); /* row r is near r */
        for (int r = 0; r < ne1; r++)
            cr_assert_eq(kern_quantize_row(t, src + r * ne0, host + r * rb, ne0), 0);
        struct kern_tensor table, out = alloc_t(SPEC_F32, ne0, 3);
        cr_assert_eq(be->ops->weight_from_host(be, t, ne0, ne1, host, &table), 0);
        const int32_t ids[3] = {4, 0, 2};
        cr_assert_eq(be->ops->get_rows(be, &table, ids, 3, &out), 0);
        float want[256];
        for (int i = 0; i < 3; i++) {
            cr_assert_eq(kern_dequantize_row(t, host + ids[i] * rb, want, ne0), 0);
            cr_assert_arr_eq(f32(&out, i), want, sizeof want, "%s row %d", kern_dtype_info(t)->name, ids[i]);
            for (int e = 0; e < ne0; e++) /* and it is that row, not another one */
                cr_assert(fabs(want[e] - src[ids[i] * ne0 + e]) < 0.5, "%s row %d [%d]", kern_dtype_info(t)->name,
                          ids[i], e);
        }
        const int32_t bad = 5;
        cr_assert_eq(be->ops->get_rows(be, &table, &bad, 1, &(struct kern_tensor){0}), SPEC_E_INVALID_ARG);
        struct kern_tensor one = alloc_t(SPEC_F32, ne0, 1);
        cr_assert_eq(be->ops->get_rows(be, &table, &bad, 1, &one), SPEC_E_RANGE);
        be->ops->tensor_free(be, &one);
        be->ops->tensor_free(be, &out);
        free(host);
    }
}

Test(backend_cpu, matmul_of_f32_weights_matches_double_reference)
{
    struct kern_tensor w = rand_f32(64, 10, 1.0), x = rand_f32(64, 3, 1.0), y = alloc_t(SPEC_F32, 10, 3);
    cr_assert_eq(be->ops->matmul(be, &w, &x, NULL, &y), 0);
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 10; j++) {
            double d = 0;
            for (int e = 0; e < 64; e++)
                d += (double)f32(&w, j)[e] * f32(&x, r)[e];
            cr_assert(fabs(f32(&y, r)[j] - d) < 1e-5, "y[%d][%d] %g vs %g", r, j, f32(&y, r)[j], d);
        }
    struct kern_tensor bad = alloc_t(SPEC_F32, 10, 2);
    cr_assert_eq(be->ops->matmul(be, &w, &x, NULL, &bad), SPEC_E_INVALID_ARG);
    be->ops->tensor_free(be, &bad);
    be->ops->tensor_free(be, &w);
    be->ops->tensor_free(be, &x);
    be->ops->tensor_free(be, &y);
}

Test(backend_cpu, store_rows_rounds_to_f16_at_the_given_row)
{
    struct kern_tensor src = rand_f32(6, 2, 3.0), dst = alloc_t(SPEC_F16, 6, 4);
    cr_assert_eq(be->ops->store_rows(be, &src, &dst, 2), 0);
    const uint16_t *d = dst.data;
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(d[i], 0);
        cr_assert_eq(d[2 * 6 + i], kern_fp32_to_fp16(f32(&src, 0)[i]));
        cr_assert_eq(d[3 * 6 + i], kern_fp32_to_fp16(f32(&src, 1)[i]));
    }
    cr_assert_eq(be->ops->store_rows(be, &src, &dst, 3), SPEC_E_RANGE);
    be->ops->tensor_free(be, &src);
    be->ops->tensor_free(be, &dst);
}

/* ---------------------------------------------------------------------------------------------- */

/* Greedy choice of row r by the definition: first largest value, NaN and -inf never chosen. */
static int32_t ref_argmax(const float *x, int n, double *prob)
{
    int32_t best = -1;
    for (int i = 0; i < n; i++)
        if (!isnan(x[i]) && x[i] != -INFINITY && (best < 0 || x[i] > x[best]))
            best = i;
    double sum = 0.0;
    for (int i = 0; best >= 0 && i < n; i++)
        if (!isnan(x[i]))
            sum += exp((double)x[i] - x[best]);
    *prob = best < 0 ? 0.0 : 1.0 / sum;
    return best;
}

Test(backend_cpu, argmax_takes_the_first_largest_value_and_its_softmax_probability)
{
    const int n = 5000, rows = 9;
    struct kern_tensor x = rand_f32(n, rows, 12.0);
    f32(&x, 1)[4321] = f32(&x, 1)[77] = 40.0f; /* a tie: the lower index wins */
    f32(&x, 2)[0] = NAN, f32(&x, 2)[10] = 30.0f; /* NaN is never chosen nor counted */
    f32(&x, 3)[2500] = -INFINITY;
    for (int i = 0; i < n; i++) /* nothing to choose */
        f32(&x, 4)[i] = i % 2 ? NAN : -INFINITY;
    f32(&x, 5)[9] = INFINITY;  /* certain */
    f32(&x, 6)[n - 1] = 1e30f; /* only the last one counts */
    int32_t ids[9], one_id;
    float probs[9], one_prob;
    cr_assert_eq(be->ops->argmax(be, &x, ids, probs), SPEC_OK);
    for (int r = 0; r < rows; r++) {
        double want_prob;
        const int32_t want = ref_argmax(f32(&x, r), n, &want_prob);
        cr_assert_eq(ids[r], want, "row %d: %d, want %d", r, ids[r], want);
        if (r == 5)
            want_prob = 1.0; /* +inf: the reference's sum is NaN */
        cr_assert(fabs(probs[r] - want_prob) <= 1e-6 * want_prob, "row %d: prob %.9g, want %.9g", r, probs[r],
                  want_prob);
        /* one row alone, without probabilities, gives the same id */
        struct kern_tensor row = x;
        row.data = f32(&x, r), row.ne1 = 1;
        cr_assert_eq(be->ops->argmax(be, &row, &one_id, NULL), SPEC_OK);
        cr_assert_eq(one_id, ids[r]);
        cr_assert_eq(be->ops->argmax(be, &row, &one_id, &one_prob), SPEC_OK);
        cr_assert_eq(memcmp(&one_prob, &probs[r], sizeof one_prob), 0, "row %d alone: another probability", r);
    }
    cr_assert_eq(ids[1], 77);
    cr_assert_eq(ids[2], 10);
    cr_assert_eq(ids[4], -1);
    cr_assert_eq(probs[4], 0.0f);
    cr_assert_eq(ids[5], 9);
    cr_assert_eq(probs[5], 1.0f);
    cr_assert_eq(ids[6], n - 1);
    cr_assert_eq(probs[6], 1.0f);
    cr_assert_eq(be->ops->argmax(be, &x, NULL, probs), SPEC_E_INVALID_ARG);
    be->ops->tensor_free(be, &x);
}
