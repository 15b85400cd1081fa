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

/* One draft step for run r: its token comes from the backend's argmax (raw greedy) or from processing
 * its logits into q row n and sampling. Returns 1 to keep the token, 0 to stop before it. */
static int next_token(struct draft_model_run *r, int32_t pick, float pick_prob, int32_t n_vocab,
                      size_t penalty_window, float min_prob, struct verify_scratch *vs, int32_t *token)
{
    float conf = 1.0f;
    if (verify_params_raw_greedy(r->sp)) {
        if (pick < 0)
            return SPEC_E_NUMERIC;
        *token = pick;
        conf = pick_prob;
    } else {
        float *qn = r->q + (size_t)r->n_out * (size_t)n_vocab;
        const size_t pos = r->n_ctx + (size_t)r->n_out;
        const int32_t *w;
        size_t nw;
        verify_penalty_window(r->ctx, pos, penalty_window, &w, &nw);
        SPEC_TRY(verify_process(r->sp, r->logits, n_vocab, w, nw, vs, qn));
        SPEC_TRY(verify_sample(qn, n_vocab, verify_uniform(r->sp->seed, r->seq_id, pos, VERIFY_DRAW_DRAFT), token));
        if (r->sp->temperature > 0.0f)
            conf = qn[*token];
        else if (min_prob > 0.0f)
            conf = raw_prob(r->logits, n_vocab, *token);
    }
    return r->n_out == 0 || conf >= min_prob;
}

/* A run's part of a draft pass: its logits, or for a raw greedy run only its argmax (and the
 * argmax's probability when min_prob needs it). */
static struct model_batch_item draft_item(struct draft_model_run *r, const int32_t *tokens, int n, float min_prob,
                                          int32_t *pick, float *pick_prob)
{
    struct model_batch_item it = {.s = r->s, .tokens = tokens, .n = n};
    if (verify_params_raw_greedy(r->sp)) {
        it.argmax = pick;
        it.argmax_prob = min_prob > 0.0f ? pick_prob : NULL;
        *pick_prob = 1.0f;
    } else {
        it.logits = r->logits;
    }
    return it;
}

int draft_model_propose(struct model *m, struct draft_model_run *runs, int n_runs, size_t penalty_window,
                        float min_prob, struct verify_scratch *vs)
{
    if (!m || !runs || n_runs <= 0 || n_runs > DRAFT_MAX_RUNS || !vs)
        return SPEC_E_INVALID_ARG;
    const int32_t n_vocab = model_n_vocab(m);
    struct model_batch_item items[DRAFT_MAX_RUNS];
    int32_t tokens[DRAFT_MAX_RUNS], picks[DRAFT_MAX_RUNS]; /* by run: a run's pick is read before it is fed again */
    float pick_probs[DRAFT_MAX_RUNS];
    int n_items = 0;
    /* Catch up: feed each run's history after its cache, outputs of the last position. */
    for (int i = 0; i < n_runs; i++) {
        struct draft_model_run *r = &runs[i];
        r->n_out = 0;
        r->err = SPEC_OK;
        const size_t len = (size_t)model_seq_len(r->s);
        if (!r->sp || !r->ctx || !r->out || !r->logits || r->max_out <= 0 || len >= r->n_ctx ||
            (!r->q && !verify_params_raw_greedy(r->sp)))
            return SPEC_E_INVALID_ARG; /* the caller truncates the cache to a strict prefix */
        items[n_items++] = draft_item(r, r->ctx + len, (int)(r->n_ctx - len), min_prob, &picks[i], &pick_probs[i]);
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
            const int keep = next_token(r, picks[i], pick_probs[i], n_vocab, penalty_window, min_prob, vs, &token);
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
                items[n_items] = draft_item(r, &tokens[n_items], 1, min_prob, &picks[i], &pick_probs[i]);
                n_items++;
            }
        }
    }
    return SPEC_OK;
}
