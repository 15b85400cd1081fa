#include <math.h>

#include "common/err.h"
#include "draft/draft.h"

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

/* One draft step for run r from its logits: process q row n, sample, and decide whether to keep the
 * token. Returns 1 to keep it, 0 to stop before it. */
static int next_token(struct draft_model_run *r, int32_t n_vocab, size_t penalty_window, float min_prob,
                      struct verify_scratch *vs, int32_t *token)
{
    float *qn = r->q + (size_t)r->n_out * (size_t)n_vocab;
    const size_t pos = r->n_ctx + (size_t)r->n_out;
    const int32_t *w;
    size_t nw;
    verify_penalty_window(r->ctx, pos, penalty_window, &w, &nw);
    SPEC_TRY(verify_process(r->sp, r->logits, n_vocab, w, nw, vs, qn));
    SPEC_TRY(verify_sample(qn, n_vocab, verify_uniform(r->sp->seed, r->seq_id, pos, VERIFY_DRAW_DRAFT), token));
    const float conf = r->sp->temperature > 0.0f ? qn[*token] : raw_prob(r->logits, n_vocab, *token);
    return r->n_out == 0 || conf >= min_prob;
}

int draft_model_propose(struct model *m, struct draft_model_run *runs, int n_runs, size_t penalty_window,
                        float min_prob, struct verify_scratch *vs)
{
    if (!m || !runs || n_runs <= 0 || n_runs > DRAFT_MAX_RUNS || !vs)
        return SPEC_E_INVALID_ARG;
    const int32_t n_vocab = model_n_vocab(m);
    struct model_batch_item items[DRAFT_MAX_RUNS];
    int32_t tokens[DRAFT_MAX_RUNS];
    int n_items = 0;
    /* Catch up: feed each run's history after its cache, logits of the last position. */
    for (int i = 0; i < n_runs; i++) {
        struct draft_model_run *r = &runs[i];
        r->n_out = 0;
        r->err = SPEC_OK;
        const size_t len = (size_t)model_seq_len(r->s);
        if (!r->ctx || !r->out || !r->q || !r->logits || r->max_out <= 0 || len >= r->n_ctx)
            return SPEC_E_INVALID_ARG; /* the caller truncates the cache to a strict prefix */
        items[n_items++] = (struct model_batch_item){.s = r->s, .tokens = r->ctx + len, .n = (int)(r->n_ctx - len),
                                                     .logits = r->logits};
    }
    while (n_items > 0) {
        SPEC_TRY(model_forward_batch(m, items, n_items));
        /* Each run fed in this pass drafts one token; those that want more feed it in the next. */
        const int n_fed = n_items;
        struct model_seq *fed[DRAFT_MAX_RUNS];
        for (int i = 0; i < n_fed; i++)
            fed[i] = items[i].s;
        n_items = 0;
        for (int i = 0, j = 0; i < n_runs && j < n_fed; i++) {
            struct draft_model_run *r = &runs[i];
            if (r->s != fed[j])
                continue;
            j++;
            int32_t token;
            const int keep = next_token(r, n_vocab, penalty_window, min_prob, vs, &token);
            if (keep < 0) {
                r->err = keep;
                continue;
            }
            if (!keep)
                continue;
            r->ctx[r->n_ctx + (size_t)r->n_out] = token;
            r->out[r->n_out++] = token;
            if (r->n_out < r->max_out) {
                tokens[n_items] = token;
                items[n_items] = (struct model_batch_item){.s = r->s, .tokens = &tokens[n_items], .n = 1,
                                                           .logits = r->logits};
                n_items++;
            }
        }
    }
    return SPEC_OK;
}
