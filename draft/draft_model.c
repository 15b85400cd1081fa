#include <math.h>

#include "common/err.h"
#include "draft/draft.h"

/* Feed ctx[len..n_ctx) to the draft and leave the logits after the last of them in r->logits. */
static int catch_up(const struct draft_model_run *r, const int32_t *ctx, size_t n_ctx)
{
    const size_t len = (size_t)model_seq_len(r->s);
    if (len >= n_ctx)
        return SPEC_E_INVALID_ARG; /* the caller truncates the cache to a strict prefix */
    const int n_pending = (int)(n_ctx - len);
    if (n_pending > 1) {
        const int rc = model_forward_last(r->m, r->s, ctx + len, n_pending - 1, NULL);
        if (rc)
            return rc;
    }
    return model_forward_last(r->m, r->s, ctx + n_ctx - 1, 1, r->logits);
}

/* Softmax probability of `token` in raw logits: the draft's confidence when greedy processing has
 * made q one-hot. */
static float raw_prob(const float *logits, int32_t n_vocab, int32_t token)
{
    float max = logits[token];
    for (int32_t i = 0; i < n_vocab; i++)
        if (logits[i] > max)
            max = logits[i];
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++)
        if (isfinite(logits[i]))
            sum += exp((double)logits[i] - max);
    return (float)(exp((double)logits[token] - max) / sum);
}

int draft_model_propose(const struct draft_model_run *r, int32_t *ctx, size_t n_ctx, int max_out, float min_prob,
                        int32_t *out, float *q, int *n_out)
{
    if (!r || !ctx || n_ctx == 0 || max_out <= 0 || !out || !q || !n_out)
        return SPEC_E_INVALID_ARG;
    const int32_t n_vocab = model_n_vocab(r->m);
    int rc = catch_up(r, ctx, n_ctx);
    if (rc)
        return rc;
    int n = 0;
    while (n < max_out) {
        float *qn = q + (size_t)n * (size_t)n_vocab;
        const size_t pos = n_ctx + (size_t)n;
        const int32_t *w;
        size_t nw;
        verify_penalty_window(ctx, pos, r->penalty_window, &w, &nw);
        rc = verify_process(r->sp, r->logits, n_vocab, w, nw, r->vs, qn);
        if (rc)
            return rc;
        int32_t token;
        rc = verify_sample(qn, n_vocab, verify_uniform(r->sp->seed, r->seq_id, pos, VERIFY_DRAW_DRAFT), &token);
        if (rc)
            return rc;
        const float conf = r->sp->temperature > 0.0f ? qn[token] : raw_prob(r->logits, n_vocab, token);
        if (n > 0 && conf < min_prob)
            break;
        out[n++] = token;
        ctx[pos] = token;
        if (n < max_out) {
            rc = model_forward_last(r->m, r->s, &token, 1, r->logits);
            if (rc)
                return rc;
        }
    }
    *n_out = n;
    return SPEC_OK;
}
