/* Argument checks shared by every backend, so that the CPU and CUDA backends refuse the same calls
 * with the same codes: SPEC_E_INVALID_ARG for a missing tensor or mismatched shapes, SPEC_E_UNSUPPORTED
 * for a type the op cannot take, SPEC_E_RANGE for rows or ids outside a tensor, in that order. A
 * backend adds its own limits after these. */
#include <math.h>
#include <stdint.h>

#include "common/err.h"
#include "kernels/backend.h"

int kern_rows_check(const struct kern_tensor *t, int64_t row0, int64_t n)
{
    if (!t || !t->data || row0 < 0 || n < 0 || row0 > t->ne1 || n > t->ne1 - row0)
        return SPEC_E_RANGE;
    return SPEC_OK;
}

/* Activations: F32 rows of whole floats, with shapes that 32-bit kernel indices can address. */
static bool is_f32(const struct kern_tensor *t)
{
    return t && t->data && t->type == SPEC_F32 && t->ne0 > 0 && t->ne1 > 0 && t->ne0 <= INT32_MAX &&
           t->ne1 <= INT32_MAX && t->row_bytes >= (size_t)t->ne0 * sizeof(float) && t->row_bytes % sizeof(float) == 0;
}

static bool same_shape(const struct kern_tensor *a, const struct kern_tensor *b)
{
    return a->ne0 == b->ne0 && a->ne1 == b->ne1;
}

int kern_get_rows_check(const struct kern_tensor *table, const int32_t *ids, int n, const struct kern_tensor *out)
{
    if (!table || !table->data || !ids || !is_f32(out) || out->ne0 != table->ne0 || out->ne1 != n)
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= table->ne1)
            return SPEC_E_RANGE;
    return SPEC_OK;
}

int kern_matmul_check(const struct kern_tensor *w, const struct kern_tensor *x, const struct kern_tensor *bias,
                      const struct kern_tensor *y)
{
    if (!w || !w->data || !is_f32(x) || !is_f32(y) || x->ne0 != w->ne0 || y->ne0 != w->ne1 || y->ne1 != x->ne1)
        return SPEC_E_INVALID_ARG;
    if (bias && (!is_f32(bias) || bias->ne0 != w->ne1 || bias->ne1 != 1))
        return SPEC_E_INVALID_ARG;
    return SPEC_OK;
}

/* Whether two F32 tensors' elements may share bytes: not when their spans are apart, nor when they
 * are disjoint columns of rows of one stride (q, k and v as views of one wider row). */
static bool overlap(const struct kern_tensor *a, const struct kern_tensor *b)
{
    const char *pa = a->data, *pb = b->data;
    const size_t na = a->row_bytes * (size_t)(a->ne1 - 1) + (size_t)a->ne0 * sizeof(float),
                 nb = b->row_bytes * (size_t)(b->ne1 - 1) + (size_t)b->ne0 * sizeof(float);
    if (!(pa < pb + nb && pb < pa + na))
        return false;
    if (a->row_bytes != b->row_bytes)
        return true;
    if (pb < pa) {
        const struct kern_tensor *t = a;
        a = b, b = t;
        pa = a->data, pb = b->data;
    }
    const size_t col = (size_t)(pb - pa) % a->row_bytes; /* b's first byte in a's row */
    return col < (size_t)a->ne0 * sizeof(float) || col + (size_t)b->ne0 * sizeof(float) > a->row_bytes;
}

int kern_matmuls_check(const struct kern_tensor *x, const struct kern_matmul *mm, int n, enum kern_matmuls_then then)
{
    if (!mm || n < 1 || n > KERN_MATMULS_MAX || (then != KERN_MATMULS_PLAIN && then != KERN_MATMULS_SWIGLU))
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < n; i++) {
        const int err = kern_matmul_check(mm[i].w, x, mm[i].bias, mm[i].y);
        if (err)
            return err;
        if (mm[i].w->type != mm[0].w->type || overlap(mm[i].y, x))
            return SPEC_E_INVALID_ARG;
        for (int j = 0; j < i; j++)
            if (overlap(mm[i].y, mm[j].y))
                return SPEC_E_INVALID_ARG;
    }
    if (then == KERN_MATMULS_SWIGLU && (n != 2 || !same_shape(mm[0].y, mm[1].y)))
        return SPEC_E_INVALID_ARG;
    return SPEC_OK;
}

int kern_eltwise_check(const struct kern_tensor *a, const struct kern_tensor *b, const struct kern_tensor *out)
{
    if (!is_f32(a) || !is_f32(b) || !is_f32(out) || !same_shape(a, b) || !same_shape(a, out))
        return SPEC_E_INVALID_ARG;
    return SPEC_OK;
}

int kern_rms_norm_check(const struct kern_tensor *x, const struct kern_tensor *residual, const struct kern_tensor *w,
                        float eps, const struct kern_tensor *y)
{
    if (!is_f32(x) || !is_f32(w) || !is_f32(y) || w->ne0 != x->ne0 || w->ne1 != 1 || !same_shape(x, y) ||
        !(eps >= 0.0f))
        return SPEC_E_INVALID_ARG;
    if (residual && (!is_f32(residual) || !same_shape(x, residual)))
        return SPEC_E_INVALID_ARG;
    return SPEC_OK;
}

int kern_rope_check(const struct kern_tensor *x, int n_head, int head_dim, const int32_t *pos,
                    const struct kern_rope_params *p)
{
    if (!is_f32(x) || !pos || !p || n_head <= 0 || head_dim <= 0 || (int64_t)n_head * head_dim != x->ne0 ||
        p->n_rot <= 0 || p->n_rot > head_dim || p->n_rot % 2 ||
        (p->mode != KERN_ROPE_NORM && p->mode != KERN_ROPE_NEOX) || !(p->freq_base > 0.0f))
        return SPEC_E_INVALID_ARG;
    return SPEC_OK;
}

int kern_store_rows_check(const struct kern_tensor *src, const struct kern_tensor *dst, int64_t dst_row0)
{
    if (!is_f32(src) || !dst || !dst->data || dst->ne0 != src->ne0)
        return SPEC_E_INVALID_ARG;
    return kern_rows_check(dst, dst_row0, src->ne1);
}

int kern_attention_check(const struct kern_tensor *q, const struct kern_tensor *k_cache,
                         const struct kern_tensor *v_cache, const struct kern_attn_params *p,
                         const struct kern_tensor *out)
{
    if (!is_f32(q) || !is_f32(out) || !k_cache || !v_cache || !k_cache->data || !v_cache->data || !p ||
        p->n_head <= 0 || p->n_head_kv <= 0 || p->n_head % p->n_head_kv || p->head_dim <= 0 || p->pos0 < 0)
        return SPEC_E_INVALID_ARG;
    const int64_t q_dim = (int64_t)p->n_head * p->head_dim, kv_dim = (int64_t)p->n_head_kv * p->head_dim;
    if (q->ne0 != q_dim || !same_shape(q, out) || k_cache->ne0 != kv_dim || v_cache->ne0 != kv_dim ||
        !same_shape(k_cache, v_cache))
        return SPEC_E_INVALID_ARG;
    if ((k_cache->type != SPEC_F16 && k_cache->type != SPEC_F32) ||
        (v_cache->type != SPEC_F16 && v_cache->type != SPEC_F32))
        return SPEC_E_UNSUPPORTED;
    if ((int64_t)p->pos0 + q->ne1 > k_cache->ne1)
        return SPEC_E_RANGE;
    return SPEC_OK;
}

int kern_argmax_check(const struct kern_tensor *x, const int32_t *ids)
{
    if (!is_f32(x) || !ids)
        return SPEC_E_INVALID_ARG;
    return SPEC_OK;
}

/* A tensor of ids kept on the backend: one SPEC_I32 column, rows packed. */
static bool is_ids(const struct kern_tensor *t)
{
    return t && t->data && t->type == SPEC_I32 && t->ne0 == 1 && t->row_bytes == sizeof(int32_t);
}

int kern_argmax_keep_check(const struct kern_tensor *x, const struct kern_tensor *ids, int64_t row0)
{
    if (!is_f32(x) || !is_ids(ids))
        return SPEC_E_INVALID_ARG;
    return kern_rows_check(ids, row0, x->ne1);
}

int kern_get_rows_kept_check(const struct kern_tensor *table, const struct kern_tensor *ids, int64_t row0, int n,
                             const struct kern_tensor *out)
{
    if (!table || !table->data || !is_ids(ids) || !is_f32(out) || out->ne0 != table->ne0 || out->ne1 != n)
        return SPEC_E_INVALID_ARG;
    return kern_rows_check(ids, row0, n);
}

int kern_sampler_check(const struct kern_sampler *s)
{
    if (!s)
        return SPEC_E_INVALID_ARG;
    if (!(s->temperature >= 0.0f) || !isfinite(s->temperature))
        return SPEC_E_RANGE;
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return SPEC_E_RANGE;
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        return SPEC_E_RANGE;
    if (!(s->repeat_penalty > 0.0f) || !isfinite(s->repeat_penalty))
        return SPEC_E_RANGE;
    if (!isfinite(s->frequency_penalty) || !isfinite(s->presence_penalty))
        return SPEC_E_RANGE;
    return SPEC_OK;
}

int kern_sample_process_check(const struct kern_tensor *logits, const struct kern_sample_row *rows, int n)
{
    if (!is_f32(logits) || n < 0 || (n > 0 && !rows))
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < n; i++) {
        const struct kern_sample_row *r = &rows[i];
        if (!r->s || !is_f32(r->out) || r->out->ne0 < logits->ne0 || r->out->ne0 != rows[0].out->ne0 ||
            r->n_recent < 0 || (r->n_recent > 0 && !r->recent))
            return SPEC_E_INVALID_ARG;
    }
    for (int i = 0; i < n; i++) {
        const int err = kern_sampler_check(rows[i].s);
        if (err)
            return err;
    }
    for (int i = 0; i < n; i++)
        if (kern_rows_check(logits, rows[i].row, 1) || kern_rows_check(rows[i].out, rows[i].out_row, 1))
            return SPEC_E_RANGE;
    return SPEC_OK;
}

int kern_sample_choose_check(const struct kern_choose *jobs, int n)
{
    if (n < 0 || (n > 0 && !jobs))
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < n; i++) {
        const struct kern_choose *j = &jobs[i];
        if (!is_f32(j->p) || j->n_draft < 0 || !j->u_sample ||
            (j->n_draft > 0 && (!j->draft || !j->u_accept)) || (j->q && (!is_f32(j->q) || j->q->ne0 != j->p->ne0)) ||
            j->p->ne0 != jobs[0].p->ne0)
            return SPEC_E_INVALID_ARG;
    }
    for (int i = 0; i < n; i++) {
        const struct kern_choose *j = &jobs[i];
        if (kern_rows_check(j->p, j->p_row, (int64_t)j->n_draft + 1) ||
            (j->q && kern_rows_check(j->q, j->q_row, j->n_draft)))
            return SPEC_E_RANGE;
        for (int k = 0; k < j->n_draft; k++)
            if (j->draft[k] < 0 || j->draft[k] >= j->p->ne0)
                return SPEC_E_RANGE;
    }
    return SPEC_OK;
}
