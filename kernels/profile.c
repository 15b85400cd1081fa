/* The profiling wrapper (kern_backend_config.profile): a backend that forwards every op to the real
 * one and, between kern_profile_start and kern_profile_stop, times each op on the host and, with the
 * backend's marks, on the device. Device intervals are read back in batches, so timing does not wait
 * for the device after every op. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/profile.h"

#define PROF_MAX_KINDS 48
#define PROF_MAX_PENDING 4096 /* device intervals not yet read back */

struct pending {
    int kind;
    int from, to;
};

struct prof_backend {
    struct kern_backend base; /* first: the interface's pointer is this struct's */
    struct kern_backend_ops ops; /* prof_ops under the inner backend's name */
    struct kern_backend *inner;
    bool on;
    bool in_step; /* a step_begin was passed on: its step_end goes too */
    struct kern_op_profile kinds[PROF_MAX_KINDS];
    int n_kinds;
    struct pending pending[PROF_MAX_PENDING];
    int n_pending;
};

static struct prof_backend *prof_of(struct kern_backend *be)
{
    return (struct prof_backend *)be;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The entry of op `op` (a matmul's: with its weight w's type and shape), made on first use; -1 when
 * the table is full (the op is then not counted). */
static int kind_of(struct prof_backend *p, const char *op, const struct kern_tensor *w)
{
    char name[sizeof p->kinds[0].op];
    const struct kern_dtype_info *info = w ? kern_dtype_info((uint32_t)w->type) : NULL;
    if (info)
        snprintf(name, sizeof name, "%s %s %lldx%lld", op, info->name, (long long)w->ne1, (long long)w->ne0);
    else
        snprintf(name, sizeof name, "%s", op);
    for (int i = 0; i < p->n_kinds; i++)
        if (strcmp(p->kinds[i].op, name) == 0)
            return i;
    if (p->n_kinds == PROF_MAX_KINDS)
        return -1;
    struct kern_op_profile *k = &p->kinds[p->n_kinds];
    *k = (struct kern_op_profile){0};
    memcpy(k->op, name, sizeof name);
    return p->n_kinds++;
}

/* Reads back the device intervals recorded so far. */
static void harvest(struct prof_backend *p)
{
    struct kern_backend *in = p->inner;
    for (int i = 0; i < p->n_pending; i++) {
        float ms;
        if (in->ops->mark_elapsed(in, p->pending[i].from, p->pending[i].to, &ms) == SPEC_OK)
            p->kinds[p->pending[i].kind].device_ms += ms;
    }
    p->n_pending = 0;
    in->ops->marks_reset(in);
}

/* One timed op: the state before it, then (prof_end) the accounting after it. */
struct span {
    int kind;
    int mark;
    double t0;
};

static struct span prof_begin(struct prof_backend *p, const char *op, const struct kern_tensor *w)
{
    struct span s = {.kind = -1, .mark = -1};
    if (!p->on || (s.kind = kind_of(p, op, w)) < 0)
        return s;
    struct kern_backend *in = p->inner;
    if (in->ops->mark) {
        if (p->n_pending == PROF_MAX_PENDING)
            harvest(p);
        if (in->ops->mark(in, &s.mark) != SPEC_OK)
            s.mark = -1;
    }
    s.t0 = now_ms();
    return s;
}

static int prof_end(struct prof_backend *p, struct span s, double bytes, int err)
{
    if (s.kind < 0)
        return err;
    const double host = now_ms() - s.t0;
    struct kern_op_profile *k = &p->kinds[s.kind];
    k->calls++;
    k->host_ms += host;
    k->bytes += bytes;
    struct kern_backend *in = p->inner;
    int to;
    if (!in->ops->mark)
        k->device_ms += host;
    else if (s.mark >= 0 && in->ops->mark(in, &to) == SPEC_OK)
        p->pending[p->n_pending++] = (struct pending){.kind = s.kind, .from = s.mark, .to = to};
    return err;
}

/* ---------------------------------------------------------------------------------------------- */
/* Forwarding                                                                                     */

#define INNER(be) (prof_of(be)->inner)
#define TIMED(be, op, w, bytes, call)                                                                      \
    do {                                                                                                   \
        struct prof_backend *p_ = prof_of(be);                                                             \
        const struct span s_ = prof_begin(p_, op, w);                                                      \
        return prof_end(p_, s_, bytes, call);                                                              \
    } while (0)

static void prof_destroy(struct kern_backend *be)
{
    kern_backend_destroy(INNER(be));
    free(prof_of(be));
}

static int prof_tensor_alloc(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                             struct kern_tensor *out)
{
    return INNER(be)->ops->tensor_alloc(INNER(be), type, ne0, ne1, out);
}

static void prof_tensor_free(struct kern_backend *be, struct kern_tensor *t)
{
    INNER(be)->ops->tensor_free(INNER(be), t);
}

static int prof_weight_from_host(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                                 const void *host, struct kern_tensor *out)
{
    return INNER(be)->ops->weight_from_host(INNER(be), type, ne0, ne1, host, out);
}

static int prof_rows_to_host(struct kern_backend *be, const struct kern_tensor *t, int64_t row0, int64_t n,
                             void *host)
{
    TIMED(be, "rows_to_host", NULL, 0.0, INNER(be)->ops->rows_to_host(INNER(be), t, row0, n, host));
}

static int prof_rows_from_host(struct kern_backend *be, struct kern_tensor *t, int64_t row0, int64_t n,
                               const void *host)
{
    TIMED(be, "rows_from_host", NULL, 0.0, INNER(be)->ops->rows_from_host(INNER(be), t, row0, n, host));
}

static int prof_get_rows(struct kern_backend *be, const struct kern_tensor *table, const int32_t *ids, int n,
                         struct kern_tensor *out)
{
    TIMED(be, "get_rows", NULL, 0.0, INNER(be)->ops->get_rows(INNER(be), table, ids, n, out));
}

static int prof_matmul(struct kern_backend *be, const struct kern_tensor *w, const struct kern_tensor *x,
                       const struct kern_tensor *bias, struct kern_tensor *y)
{
    const double bytes = w ? (double)w->row_bytes * (double)w->ne1 : 0.0;
    TIMED(be, "matmul", w, bytes, INNER(be)->ops->matmul(INNER(be), w, x, bias, y));
}

/* One kind per weight type and total shape of a matmuls call: "matmuls Q4_K 2048x1536" for q, k and v. */
static double matmuls_kind(const struct kern_matmul *mm, int n, struct kern_tensor *all)
{
    *all = (struct kern_tensor){0};
    double bytes = 0.0;
    for (int i = 0; mm && i < n && i < KERN_MATMULS_MAX && mm[i].w; i++) {
        *all = (struct kern_tensor){.type = mm[i].w->type, .ne0 = mm[i].w->ne0, .ne1 = all->ne1 + mm[i].w->ne1};
        bytes += (double)mm[i].w->row_bytes * (double)mm[i].w->ne1;
    }
    return bytes;
}

static int prof_matmuls(struct kern_backend *be, const struct kern_tensor *x, const struct kern_matmul *mm, int n,
                        enum kern_matmuls_then then)
{
    struct kern_tensor all;
    const double bytes = matmuls_kind(mm, n, &all);
    TIMED(be, "matmuls", all.ne1 ? &all : NULL, bytes, INNER(be)->ops->matmuls(INNER(be), x, mm, n, then));
}

static int prof_matmuls_prefill(struct kern_backend *be, const struct kern_tensor *x, const struct kern_matmul *mm,
                                int n, enum kern_matmuls_then then)
{
    struct kern_tensor all;
    const double bytes = matmuls_kind(mm, n, &all);
    TIMED(be, "prefill", all.ne1 ? &all : NULL, bytes, INNER(be)->ops->matmuls_prefill(INNER(be), x, mm, n, then));
}

/* Steps go to the inner backend (CUDA: graphs) except while profiling, when each op must run, and be
 * timed, on its own. */
static int prof_step_begin(struct kern_backend *be, uint64_t shape)
{
    struct prof_backend *p = prof_of(be);
    p->in_step = !p->on && p->inner->ops->step_begin;
    return p->in_step ? p->inner->ops->step_begin(p->inner, shape) : SPEC_OK;
}

static int prof_step_end(struct kern_backend *be, bool *again)
{
    struct prof_backend *p = prof_of(be);
    const bool in_step = p->in_step;
    p->in_step = false;
    *again = false;
    return in_step ? p->inner->ops->step_end(p->inner, again) : SPEC_OK;
}

static int prof_step_stats(struct kern_backend *be, struct kern_step_stats *out)
{
    return INNER(be)->ops->step_stats(INNER(be), out);
}

static int prof_profiler_region(struct kern_backend *be, bool on)
{
    return INNER(be)->ops->profiler_region(INNER(be), on);
}

static int prof_device_memory(struct kern_backend *be, size_t *used)
{
    return INNER(be)->ops->device_memory(INNER(be), used);
}

static int prof_rms_norm(struct kern_backend *be, struct kern_tensor *x, const struct kern_tensor *residual,
                         const struct kern_tensor *w, float eps, struct kern_tensor *y)
{
    TIMED(be, "rms_norm", NULL, 0.0, INNER(be)->ops->rms_norm(INNER(be), x, residual, w, eps, y));
}

static int prof_rope(struct kern_backend *be, struct kern_tensor *x, int n_head, int head_dim, const int32_t *pos,
                     const struct kern_rope_params *rp)
{
    TIMED(be, "rope", NULL, 0.0, INNER(be)->ops->rope(INNER(be), x, n_head, head_dim, pos, rp));
}

static int prof_store_rows(struct kern_backend *be, const struct kern_tensor *src, struct kern_tensor *dst,
                           int64_t dst_row0)
{
    TIMED(be, "store_rows", NULL, 0.0, INNER(be)->ops->store_rows(INNER(be), src, dst, dst_row0));
}

static int prof_attention(struct kern_backend *be, const struct kern_tensor *q, const struct kern_tensor *k_cache,
                          const struct kern_tensor *v_cache, const struct kern_attn_params *ap,
                          struct kern_tensor *out)
{
    /* the last query reads every cache row up to its own */
    const double bytes = q && k_cache && v_cache && ap
                             ? (double)(ap->pos0 + q->ne1) * (double)(k_cache->row_bytes + v_cache->row_bytes)
                             : 0.0;
    TIMED(be, "attention", NULL, bytes, INNER(be)->ops->attention(INNER(be), q, k_cache, v_cache, ap, out));
}

static int prof_swiglu(struct kern_backend *be, const struct kern_tensor *gate, const struct kern_tensor *up,
                       struct kern_tensor *out)
{
    TIMED(be, "swiglu", NULL, 0.0, INNER(be)->ops->swiglu(INNER(be), gate, up, out));
}

static int prof_add(struct kern_backend *be, const struct kern_tensor *a, const struct kern_tensor *b,
                    struct kern_tensor *out)
{
    TIMED(be, "add", NULL, 0.0, INNER(be)->ops->add(INNER(be), a, b, out));
}

static int prof_argmax(struct kern_backend *be, const struct kern_tensor *x, int32_t *ids, float *probs)
{
    TIMED(be, "argmax", NULL, 0.0, INNER(be)->ops->argmax(INNER(be), x, ids, probs));
}

static int prof_argmax_keep(struct kern_backend *be, const struct kern_tensor *x, struct kern_tensor *ids, int64_t row0)
{
    TIMED(be, "argmax", NULL, 0.0, INNER(be)->ops->argmax_keep(INNER(be), x, ids, row0));
}

static int prof_get_rows_kept(struct kern_backend *be, const struct kern_tensor *table, const struct kern_tensor *ids,
                              int64_t row0, int n, struct kern_tensor *out)
{
    TIMED(be, "get_rows", NULL, 0.0, INNER(be)->ops->get_rows_kept(INNER(be), table, ids, row0, n, out));
}

static int prof_sample_process(struct kern_backend *be, const struct kern_tensor *logits,
                               const struct kern_sample_row *rows, int n)
{
    TIMED(be, "sample_process", NULL, 0.0, INNER(be)->ops->sample_process(INNER(be), logits, rows, n));
}

static int prof_sample_choose(struct kern_backend *be, struct kern_choose *jobs, int n)
{
    TIMED(be, "sample_choose", NULL, 0.0, INNER(be)->ops->sample_choose(INNER(be), jobs, n));
}

static const struct kern_backend_ops prof_ops = {
    .name = NULL, /* the inner backend's */
    .destroy = prof_destroy,
    .tensor_alloc = prof_tensor_alloc,
    .tensor_free = prof_tensor_free,
    .weight_from_host = prof_weight_from_host,
    .rows_to_host = prof_rows_to_host,
    .rows_from_host = prof_rows_from_host,
    .get_rows = prof_get_rows,
    .matmul = prof_matmul,
    .matmuls = prof_matmuls,
    .rms_norm = prof_rms_norm,
    .rope = prof_rope,
    .store_rows = prof_store_rows,
    .attention = prof_attention,
    .swiglu = prof_swiglu,
    .add = prof_add,
    .argmax = prof_argmax,
    .step_begin = prof_step_begin,
    .step_end = prof_step_end,
};

int kern_profile_wrap(struct kern_backend *inner, struct kern_backend **out)
{
    struct prof_backend *p = calloc(1, sizeof *p);
    if (!p)
        return SPEC_E_NOMEM;
    p->inner = inner;
    p->ops = prof_ops;
    p->ops.name = inner->ops->name;
    p->ops.matmuls_prefill = inner->ops->matmuls_prefill ? prof_matmuls_prefill : NULL;
    p->ops.argmax_keep = inner->ops->argmax_keep ? prof_argmax_keep : NULL;
    p->ops.get_rows_kept = inner->ops->get_rows_kept ? prof_get_rows_kept : NULL;
    p->ops.sample_process = inner->ops->sample_process ? prof_sample_process : NULL;
    p->ops.sample_choose = inner->ops->sample_choose ? prof_sample_choose : NULL;
    p->ops.step_stats = inner->ops->step_stats ? prof_step_stats : NULL;
    p->ops.profiler_region = inner->ops->profiler_region ? prof_profiler_region : NULL;
    p->ops.device_memory = inner->ops->device_memory ? prof_device_memory : NULL;
    p->base.ops = &p->ops;
    *out = &p->base;
    return SPEC_OK;
}

static struct prof_backend *profiled(struct kern_backend *be)
{
    return be && be->ops->destroy == prof_destroy ? prof_of(be) : NULL;
}

int kern_profile_start(struct kern_backend *be)
{
    struct prof_backend *p = profiled(be);
    if (!p)
        return SPEC_E_UNSUPPORTED;
    if (p->inner->ops->marks_reset)
        p->inner->ops->marks_reset(p->inner);
    p->n_pending = 0;
    p->n_kinds = 0;
    p->on = true;
    return SPEC_OK;
}

int kern_profile_stop(struct kern_backend *be, struct kern_op_profile *out, int cap, int *n)
{
    struct prof_backend *p = profiled(be);
    if (!p)
        return SPEC_E_UNSUPPORTED;
    if (!out || !n || cap < 0)
        return SPEC_E_INVALID_ARG;
    if (p->n_pending > 0)
        harvest(p);
    p->on = false;
    *n = p->n_kinds < cap ? p->n_kinds : cap;
    memcpy(out, p->kinds, (size_t)*n * sizeof *out);
    return SPEC_OK;
}
