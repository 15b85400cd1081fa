/* The CPU backend: every op of kernels/backend.h on host memory with the thread pool.
 *
 * Numerics follow ggml's CPU path so that a model run here agrees with llama.cpp:
 *  - rms_norm sums squares in double, then scales in float: y = (x * (1/sqrtf(mean + eps))) * w;
 *  - rope computes theta by repeated multiplication by freq_base^(-2/n_rot) in float, as
 *    ggml_rope_cache_init does, and applies freq_factors and freq_scale the same way;
 *  - attention is llama.cpp's non-flash path: Q is rounded to the K cache's vec_dot type (F16) before
 *    Q.K, softmax runs in float with the sum in double, and the probabilities are rounded to the V
 *    cache's vec_dot type before they weight V. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/backend_cpu.h"
#include "kernels/cpu/cpu.h"

struct cpu_backend {
    struct kern_backend base; /* first: the interface's pointer is this struct's */
    struct cpu_pool *pool;
    int n_threads;
};

/* Below this many elements an elementwise op runs on the calling thread: waking the pool costs more. */
#define CPU_PAR_MIN_ELEMS 16384

static struct cpu_backend *cpu_of(struct kern_backend *be)
{
    return (struct cpu_backend *)be;
}

static void cpu_run(struct cpu_backend *cb, cpu_task_fn fn, void *arg, int64_t elems)
{
    if (cb->n_threads == 1 || elems < CPU_PAR_MIN_ELEMS)
        fn(arg, 0, 1);
    else
        cpu_pool_run(cb->pool, fn, arg);
}

static void *row_ptr(const struct kern_tensor *t, int64_t r)
{
    return (char *)t->data + (size_t)r * t->row_bytes;
}

/* ---------------------------------------------------------------------------------------------- */
/* Memory                                                                                         */

static int cpu_tensor_alloc(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                            struct kern_tensor *out)
{
    size_t row_bytes, total;
    int err = kern_tensor_bytes(type, ne0, ne1, &row_bytes, &total);
    if (err)
        return err;
    /* 64-byte alignment keeps every SIMD load of the kernels within one cache line pair. */
    if (total > SIZE_MAX - 63)
        return SPEC_E_RANGE;
    size_t padded = (total + 63) & ~(size_t)63;
    void *data = aligned_alloc(64, padded);
    if (!data)
        return SPEC_E_NOMEM;
    memset(data, 0, padded);
    *out = (struct kern_tensor){.type = type, .ne0 = ne0, .ne1 = ne1, .row_bytes = row_bytes, .data = data,
                                .owned = true};
    return SPEC_OK;
}

static void cpu_tensor_free(struct kern_backend *be, struct kern_tensor *t)
{
    if (!t)
        return;
    if (t->owned)
        free(t->data);
    *t = (struct kern_tensor){0};
}

static int cpu_weight_from_host(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                                const void *host, struct kern_tensor *out)
{
    size_t row_bytes, total;
    if (!host)
        return SPEC_E_INVALID_ARG;
    int err = kern_tensor_bytes(type, ne0, ne1, &row_bytes, &total);
    if (err)
        return err;
    /* Zero-copy: the weights stay in the caller's memory (the GGUF mapping). */
    *out = (struct kern_tensor){.type = type, .ne0 = ne0, .ne1 = ne1, .row_bytes = row_bytes,
                                .data = (void *)host, .owned = false};
    return SPEC_OK;
}

/* Host rows are packed, row_bytes apart. */
static int cpu_rows_to_host(struct kern_backend *be, const struct kern_tensor *t, int64_t row0, int64_t n,
                            void *host)
{
    int err = kern_rows_check(t, row0, n);
    if (err)
        return err;
    for (int64_t r = 0; r < n; r++)
        memcpy((char *)host + (size_t)r * t->row_bytes, row_ptr(t, row0 + r), t->row_bytes);
    return SPEC_OK;
}

static int cpu_rows_from_host(struct kern_backend *be, struct kern_tensor *t, int64_t row0, int64_t n,
                              const void *host)
{
    int err = kern_rows_check(t, row0, n);
    if (err)
        return err;
    for (int64_t r = 0; r < n; r++)
        memcpy(row_ptr(t, row0 + r), (const char *)host + (size_t)r * t->row_bytes, t->row_bytes);
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Embedding                                                                                      */

static int cpu_get_rows(struct kern_backend *be, const struct kern_tensor *table, const int32_t *ids, int n,
                        struct kern_tensor *out)
{
    int err = kern_get_rows_check(table, ids, n, out);
    if (err)
        return err;
    for (int i = 0; i < n; i++) {
        err = kern_dequantize_row(table->type, row_ptr(table, ids[i]), row_ptr(out, i), table->ne0);
        if (err)
            return err;
    }
    return SPEC_OK;
}

static int cpu_get_rows_kept(struct kern_backend *be, const struct kern_tensor *table, const struct kern_tensor *ids,
                             int64_t row0, int n, struct kern_tensor *out)
{
    int err = kern_get_rows_kept_check(table, ids, row0, n, out);
    if (err)
        return err;
    const int32_t *id = (const int32_t *)ids->data + row0;
    for (int i = 0; i < n && !err; i++) {
        if (id[i] < 0 || id[i] >= table->ne1)
            memset(row_ptr(out, i), 0, (size_t)out->ne0 * sizeof(float));
        else
            err = kern_dequantize_row(table->type, row_ptr(table, id[i]), row_ptr(out, i), table->ne0);
    }
    return err;
}

/* ---------------------------------------------------------------------------------------------- */
/* Elementwise, and matmul (whose bias is an elementwise add)                                     */

struct eltwise_task {
    const struct kern_tensor *a, *b; /* b NULL for a bias broadcast over rows of a */
    const struct kern_tensor *bias;
    struct kern_tensor *out;
    enum { ELT_ADD, ELT_BIAS, ELT_SWIGLU } op;
};

static void eltwise_rows(void *arg, int ith, int nth)
{
    const struct eltwise_task *t = arg;
    int64_t ne0 = t->out->ne0;
    for (int64_t r = ith; r < t->out->ne1; r += nth) {
        float *y = row_ptr(t->out, r);
        const float *a = row_ptr(t->a, r);
        const float *b = t->op == ELT_BIAS ? t->bias->data : row_ptr(t->b, r);
        switch (t->op) {
        case ELT_ADD:
        case ELT_BIAS:
            for (int64_t i = 0; i < ne0; i++)
                y[i] = a[i] + b[i];
            break;
        case ELT_SWIGLU:
            /* ggml_silu_f32: x / (1 + e^-x) */
            for (int64_t i = 0; i < ne0; i++)
                y[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
            break;
        }
    }
}

static int cpu_matmul_op(struct kern_backend *be, const struct kern_tensor *w, const struct kern_tensor *x,
                         const struct kern_tensor *bias, struct kern_tensor *y)
{
    int err = kern_matmul_check(w, x, bias, y);
    if (err)
        return err;
    if ((err = cpu_matmul(cpu_of(be)->pool, w->type, w->data, w->row_bytes, w->ne1, w->ne0, x->data,
                          (int64_t)(x->row_bytes / sizeof(float)), x->ne1, y->data,
                          (int64_t)(y->row_bytes / sizeof(float)))) ||
        !bias)
        return err;
    struct eltwise_task t = {.a = y, .bias = bias, .out = y, .op = ELT_BIAS};
    cpu_run(cpu_of(be), eltwise_rows, &t, y->ne0 * y->ne1);
    return SPEC_OK;
}

static int cpu_swiglu(struct kern_backend *be, const struct kern_tensor *gate, const struct kern_tensor *up,
                      struct kern_tensor *out)
{
    const int err = kern_eltwise_check(gate, up, out);
    if (err)
        return err;
    struct eltwise_task t = {.a = gate, .b = up, .out = out, .op = ELT_SWIGLU};
    cpu_run(cpu_of(be), eltwise_rows, &t, out->ne0 * out->ne1);
    return SPEC_OK;
}

/* One matmul after the other: on the CPU a launch costs nothing worth merging. */
static int cpu_matmuls_op(struct kern_backend *be, const struct kern_tensor *x, const struct kern_matmul *mm, int n,
                          enum kern_matmuls_then then)
{
    int err = kern_matmuls_check(x, mm, n, then);
    for (int i = 0; i < n && !err; i++)
        err = cpu_matmul_op(be, mm[i].w, x, mm[i].bias, mm[i].y);
    if (!err && then == KERN_MATMULS_SWIGLU)
        err = cpu_swiglu(be, mm[0].y, mm[1].y, mm[0].y);
    return err;
}

static int cpu_add(struct kern_backend *be, const struct kern_tensor *a, const struct kern_tensor *b,
                   struct kern_tensor *out)
{
    const int err = kern_eltwise_check(a, b, out);
    if (err)
        return err;
    struct eltwise_task t = {.a = a, .b = b, .out = out, .op = ELT_ADD};
    cpu_run(cpu_of(be), eltwise_rows, &t, out->ne0 * out->ne1);
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* RMS norm                                                                                       */

struct rms_task {
    const struct kern_tensor *x, *w;
    struct kern_tensor *y;
    float eps;
};

static void rms_rows(void *arg, int ith, int nth)
{
    const struct rms_task *t = arg;
    int64_t ne0 = t->x->ne0;
    const float *w = t->w->data;
    for (int64_t r = ith; r < t->x->ne1; r += nth) {
        const float *x = row_ptr(t->x, r);
        float *y = row_ptr(t->y, r);
        double sum = 0.0;
        for (int64_t i = 0; i < ne0; i++)
            sum += (double)(x[i] * x[i]);
        const float mean = (float)(sum / (double)ne0);
        const float scale = 1.0f / sqrtf(mean + t->eps);
        for (int64_t i = 0; i < ne0; i++)
            y[i] = (x[i] * scale) * w[i];
    }
}

static int cpu_rms_norm(struct kern_backend *be, struct kern_tensor *x, const struct kern_tensor *residual,
                        const struct kern_tensor *w, float eps, struct kern_tensor *y)
{
    const int err = kern_rms_norm_check(x, residual, w, eps, y);
    if (err)
        return err;
    if (residual) {
        struct eltwise_task add = {.a = x, .b = residual, .out = x, .op = ELT_ADD};
        cpu_run(cpu_of(be), eltwise_rows, &add, x->ne0 * x->ne1);
    }
    struct rms_task t = {.x = x, .w = w, .y = y, .eps = eps};
    cpu_run(cpu_of(be), rms_rows, &t, x->ne0 * x->ne1);
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE                                                                                           */

struct rope_task {
    struct kern_tensor *x;
    int n_head, head_dim;
    const int32_t *pos;
    const struct kern_rope_params *p;
    float theta_scale;
    float *cache; /* per thread: n_rot floats, (cos, sin) pairs */
};

static void rope_rows(void *arg, int ith, int nth)
{
    const struct rope_task *t = arg;
    const struct kern_rope_params *p = t->p;
    const int n_rot = p->n_rot;
    float *cache = t->cache + (size_t)ith * (size_t)n_rot;
    for (int64_t r = ith; r < t->x->ne1; r += nth) {
        /* ggml_rope_cache_init with ext_factor 0 and attn_factor 1 */
        float theta = (float)t->pos[r];
        for (int i0 = 0; i0 < n_rot; i0 += 2) {
            const float ff = p->freq_factors ? p->freq_factors[i0 / 2] : 1.0f;
            const float th = p->freq_scale * (theta / ff);
            cache[i0] = cosf(th);
            cache[i0 + 1] = sinf(th);
            theta *= t->theta_scale;
        }
        float *row = row_ptr(t->x, r);
        /* NORM rotates (x[2i], x[2i+1]); NEOX rotates (x[i], x[i + n_rot/2]). */
        const int stride = p->mode == KERN_ROPE_NEOX ? n_rot / 2 : 1;
        for (int h = 0; h < t->n_head; h++) {
            float *x = row + (size_t)h * (size_t)t->head_dim;
            for (int i0 = 0; i0 < n_rot; i0 += 2) {
                const int a = p->mode == KERN_ROPE_NEOX ? i0 / 2 : i0;
                const float c = cache[i0], s = cache[i0 + 1];
                const float x0 = x[a], x1 = x[a + stride];
                x[a] = x0 * c - x1 * s;
                x[a + stride] = x0 * s + x1 * c;
            }
        }
    }
}

static int cpu_rope(struct kern_backend *be, struct kern_tensor *x, int n_head, int head_dim, const int32_t *pos,
                    const struct kern_rope_params *p)
{
    const int err = kern_rope_check(x, n_head, head_dim, pos, p);
    if (err)
        return err;
    struct cpu_backend *cb = cpu_of(be);
    float *cache = cpu_pool_scratch(cb->pool, (size_t)cb->n_threads * (size_t)p->n_rot * sizeof(float));
    if (!cache)
        return SPEC_E_NOMEM;
    struct rope_task t = {.x = x, .n_head = n_head, .head_dim = head_dim, .pos = pos, .p = p,
                          .theta_scale = powf(p->freq_base, -2.0f / (float)p->n_rot), .cache = cache};
    cpu_run(cb, rope_rows, &t, x->ne0 * x->ne1);
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* KV cache                                                                                       */

static int cpu_store_rows(struct kern_backend *be, const struct kern_tensor *src, struct kern_tensor *dst,
                          int64_t dst_row0)
{
    int err = kern_store_rows_check(src, dst, dst_row0);
    if (err)
        return err;
    for (int64_t r = 0; r < src->ne1; r++) {
        err = kern_quantize_row(dst->type, row_ptr(src, r), row_ptr(dst, dst_row0 + r), src->ne0);
        if (err)
            return err;
    }
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Attention                                                                                      */

struct attn_task {
    const struct kern_tensor *q, *k, *v;
    struct kern_tensor *out;
    const struct kern_attn_params *p;
    int n; /* queries */
    cpu_dot_fn kq_dot;
    cpu_from_float_fn q_conv;   /* F32 -> the K cache's vec_dot type */
    cpu_from_float_fn p_conv;   /* F32 -> F16 for an F16 V cache */
    cpu_attn_axpy_fn axpy_f16;
    size_t q_bytes;             /* one head of q in the K cache's vec_dot type */
    size_t scratch_per_thread;
    char *scratch;
};

void cpu_attn_axpy_f16(int n, float *y, const uint16_t *x, float a)
{
    for (int i = 0; i < n; i++)
        y[i] = y[i] + a * cpu_fp16_to_fp32(x[i]);
}

static size_t align64(size_t b)
{
    return (b + 63) & ~(size_t)63;
}

/* One thread's scratch: q in K's vec_dot type, the scores, and the weights in V's vec_dot type. */
static size_t attn_scratch_bytes(size_t q_bytes, int64_t n_kv)
{
    return align64(q_bytes) + align64((size_t)n_kv * sizeof(float)) * 2;
}

/* One (head, query) pair per work item: queries of a batch see different numbers of keys, and
 * heads x queries is enough items to keep every thread busy even when decoding one token. */
static void attn_items(void *arg, int ith, int nth)
{
    const struct attn_task *t = arg;
    const struct kern_attn_params *p = t->p;
    const int hd = p->head_dim;
    const int group = p->n_head / p->n_head_kv;
    const int64_t n_items = (int64_t)p->n_head * t->n;
    const int64_t max_kv = (int64_t)p->pos0 + t->n;
    char *scratch = t->scratch + (size_t)ith * t->scratch_per_thread;
    void *qv = scratch;
    float *s = (float *)(scratch + align64(t->q_bytes));
    void *w = (char *)s + align64((size_t)max_kv * sizeof(float));
    /* a head's offset in a cache row (the caches may be column views of wider rows) */
    const size_t k_off = (size_t)hd * kern_dtype_info((uint32_t)t->k->type)->type_size;
    const size_t v_off = (size_t)hd * kern_dtype_info((uint32_t)t->v->type)->type_size;

    for (int64_t item = ith; item < n_items; item += nth) {
        const int i = (int)(item / p->n_head);
        const int h = (int)(item % p->n_head);
        const int g = h / group;
        const int64_t n_kv = (int64_t)p->pos0 + i + 1; /* causal: keys 0 .. pos0 + i */
        const float *q = (const float *)row_ptr(t->q, i) + (size_t)h * (size_t)hd;

        /* Scores: the dot is symmetric, so q plays the weight row and the cached keys the
         * activation rows, which gives every key's score in one kernel call. */
        t->q_conv(q, qv, hd);
        t->kq_dot(hd, qv, (const char *)t->k->data + (size_t)g * k_off, t->k->row_bytes, (int)n_kv, s, 1);

        float max = -INFINITY;
        for (int64_t j = 0; j < n_kv; j++) {
            s[j] *= p->scale;
            if (s[j] > max)
                max = s[j];
        }
        double sum = 0.0;
        for (int64_t j = 0; j < n_kv; j++) {
            s[j] = expf(s[j] - max);
            sum += (double)s[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < n_kv; j++)
            s[j] *= inv;

        float *o = (float *)row_ptr(t->out, i) + (size_t)h * (size_t)hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        const char *v0 = (const char *)t->v->data + (size_t)g * v_off;
        if (t->v->type == SPEC_F16) {
            /* The weights get the rounding ggml's mul_mat gives them (src1 -> V's vec_dot type, F16). */
            const uint16_t *w16 = w;
            t->p_conv(s, w, n_kv);
            for (int64_t j = 0; j < n_kv; j++)
                t->axpy_f16(hd, o, (const uint16_t *)(v0 + (size_t)j * t->v->row_bytes), cpu_fp16_to_fp32(w16[j]));
        } else {
            for (int64_t j = 0; j < n_kv; j++) {
                const float *vr = (const float *)(v0 + (size_t)j * t->v->row_bytes);
                for (int d = 0; d < hd; d++)
                    o[d] += s[j] * vr[d];
            }
        }
    }
}

static int cpu_attention(struct kern_backend *be, const struct kern_tensor *q, const struct kern_tensor *k_cache,
                         const struct kern_tensor *v_cache, const struct kern_attn_params *p,
                         struct kern_tensor *out)
{
    int err = kern_attention_check(q, k_cache, v_cache, p, out);
    if (err)
        return err;

    struct cpu_backend *cb = cpu_of(be);
    const enum cpu_isa isa = cpu_isa_active();
    struct attn_task t = {
        .q = q, .k = k_cache, .v = v_cache, .out = out, .p = p, .n = (int)q->ne1,
        .kq_dot = cpu_dot_kernel(k_cache->type, isa),
        .q_conv = cpu_from_float_kernel(cpu_vec_dot_type(k_cache->type), isa),
        .p_conv = cpu_from_float_kernel(SPEC_F16, isa),
        .axpy_f16 = isa >= CPU_ISA_AVX2 ? cpu_attn_axpy_f16_avx2 : cpu_attn_axpy_f16,
    };
    if (!t.kq_dot || !t.q_conv || !t.p_conv)
        return SPEC_E_UNSUPPORTED;
    uint64_t qb;
    err = kern_row_bytes(cpu_vec_dot_type(k_cache->type), (uint64_t)p->head_dim, &qb);
    if (err)
        return err;
    t.q_bytes = (size_t)qb;
    t.scratch_per_thread = attn_scratch_bytes(t.q_bytes, (int64_t)p->pos0 + t.n);
    t.scratch = cpu_pool_scratch(cb->pool, t.scratch_per_thread * (size_t)cb->n_threads);
    if (!t.scratch)
        return SPEC_E_NOMEM;
    if (cb->n_threads == 1 || (int64_t)p->n_head * t.n == 1)
        attn_items(&t, 0, 1);
    else
        cpu_pool_run(cb->pool, attn_items, &t);
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Greedy choice                                                                                  */

struct argmax_task {
    const struct kern_tensor *x;
    int32_t *ids;
    float *probs;
};

static void argmax_rows(void *arg, int ith, int nth)
{
    const struct argmax_task *t = arg;
    const int64_t n = t->x->ne0;
    for (int64_t r = ith; r < t->x->ne1; r += nth) {
        const float *x = row_ptr(t->x, r);
        int64_t best = -1;
        for (int64_t i = 0; i < n; i++)
            if (!isnan(x[i]) && x[i] != -INFINITY && (best < 0 || x[i] > x[best]))
                best = i;
        t->ids[r] = (int32_t)best;
        if (!t->probs)
            continue;
        if (best < 0 || x[best] == INFINITY) {
            t->probs[r] = best < 0 ? 0.0f : 1.0f;
            continue;
        }
        const double max = x[best];
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++)
            if (!isnan(x[i]))
                sum += exp((double)x[i] - max);
        t->probs[r] = (float)(1.0 / sum);
    }
}

static int cpu_argmax(struct kern_backend *be, const struct kern_tensor *x, int32_t *ids, float *probs)
{
    const int err = kern_argmax_check(x, ids);
    if (err)
        return err;
    struct argmax_task t = {.x = x, .ids = ids, .probs = probs};
    cpu_run(cpu_of(be), argmax_rows, &t, x->ne1 > 1 ? x->ne0 * x->ne1 : 0); /* a row is one thread's */
    return SPEC_OK;
}

static int cpu_argmax_keep(struct kern_backend *be, const struct kern_tensor *x, struct kern_tensor *ids, int64_t row0)
{
    const int err = kern_argmax_keep_check(x, ids, row0);
    return err ? err : cpu_argmax(be, x, (int32_t *)ids->data + row0, NULL);
}

/* ---------------------------------------------------------------------------------------------- */

static void cpu_destroy(struct kern_backend *be)
{
    struct cpu_backend *cb = cpu_of(be);
    cpu_pool_destroy(cb->pool);
    free(cb);
}

static const struct kern_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .tensor_alloc = cpu_tensor_alloc,
    .tensor_free = cpu_tensor_free,
    .weight_from_host = cpu_weight_from_host,
    .rows_to_host = cpu_rows_to_host,
    .rows_from_host = cpu_rows_from_host,
    .get_rows = cpu_get_rows,
    .matmul = cpu_matmul_op,
    .matmuls = cpu_matmuls_op,
    .rms_norm = cpu_rms_norm,
    .rope = cpu_rope,
    .store_rows = cpu_store_rows,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .argmax = cpu_argmax,
    .argmax_keep = cpu_argmax_keep,
    .get_rows_kept = cpu_get_rows_kept,
};

int kern_cpu_backend_create(const struct kern_backend_config *cfg, struct kern_backend **out)
{
    struct cpu_backend *cb = calloc(1, sizeof(*cb));
    if (!cb)
        return SPEC_E_NOMEM;
    int err = cpu_pool_create(cfg ? cfg->n_threads : 0, &cb->pool);
    if (err) {
        free(cb);
        return err;
    }
    cb->base.ops = &cpu_ops;
    cb->n_threads = cpu_pool_size(cb->pool);
    *out = &cb->base;
    return SPEC_OK;
}
