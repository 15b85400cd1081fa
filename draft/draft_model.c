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

/* The uniform that draws run r's next token, on the host or on the backend alike. */
static double draft_uniform(const struct draft_model_run *r)
{
    return verify_uniform(r->sp->seed, r->seq_id, r->n_ctx + (size_t)r->n_out, VERIFY_DRAW_DRAFT);
}

/* A run whose q rows are made and sampled on the backend. */
static bool on_backend(const struct draft_model_run *r)
{
    return r->q_dev && !verify_params_raw_greedy(r->sp);
}

/* A run whose tokens stay on the backend until it ends (draft_model_run.ids_dev). */
static bool chained(const struct draft_model_run *r, float min_prob)
{
    return r->ids_dev && verify_params_raw_greedy(r->sp) && min_prob <= 0.0f;
}

/* One draft step for run r: its token comes from the backend (the argmax of a raw greedy run, the draw
 * of a run sampled there) or from processing its logits into q row n and sampling. Returns 1 to keep
 * the token, 0 to stop before it. */
static int next_token(struct draft_model_run *r, int32_t pick, float pick_prob, int32_t n_vocab,
                      size_t penalty_window, float min_prob, struct verify_scratch *vs, int32_t *token)
{
    float conf = 1.0f;
    if (verify_params_raw_greedy(r->sp) || on_backend(r)) {
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
        SPEC_TRY(verify_sample(qn, n_vocab, draft_uniform(r), token));
        if (r->sp->temperature > 0.0f)
            conf = qn[*token];
        else if (min_prob > 0.0f)
            conf = raw_prob(r->logits, n_vocab, *token);
    }
    return r->n_out == 0 || conf >= min_prob;
}

/* A run's part of a draft pass feeding ctx[a .. a + n): its logits, for a raw greedy run only its argmax
 * (and the argmax's probability when min_prob needs it), for a run sampled on the backend its q row
 * there. */
static struct model_batch_item draft_item(struct draft_model_run *r, const struct kern_sampler *ks, size_t a, int n,
                                          const int32_t *tokens, size_t penalty_window, float min_prob, int32_t *pick,
                                          float *pick_prob)
{
    struct model_batch_item it = {.s = r->s, .tokens = tokens, .n = n};
    if (chained(r, min_prob)) { /* fed its last token from where the last pass kept it (but the first pass) */
        it.kept_tokens = tokens ? NULL : r->ids_dev;
        it.kept_row0 = r->n_out - 1;
        it.keep_argmax = r->ids_dev;
        it.keep_row0 = r->n_out;
    } else if (verify_params_raw_greedy(r->sp)) {
        it.argmax = pick;
        it.argmax_prob = min_prob > 0.0f ? pick_prob : NULL;
        *pick_prob = 1.0f;
    } else if (on_backend(r)) {
        /* the last position's row only; position i's window ends at ctx[a + i + 1] */
        it.sampler = ks;
        it.probs = r->q_dev;
        it.probs_row0 = r->n_out - (n - 1);
        it.window_ctx = r->ctx;
        it.window_end0 = a + 1;
        it.window_len = penalty_window;
    } else {
        it.logits = r->logits;
    }
    return it;
}

/* The tokens of the runs sampled on the backend in this pass, drawn there from their new q rows. */
static int draw_on_backend(struct model *m, struct draft_model_run *runs, int n_runs, struct model_seq *const *fed,
                           int n_fed, int32_t *picks, float *pick_probs)
{
    struct kern_choose jobs[DRAFT_MAX_RUNS];
    double u[DRAFT_MAX_RUNS];
    int who[DRAFT_MAX_RUNS], n_jobs = 0;
    for (int i = 0, j = 0; i < n_runs && j < n_fed; i++) {
        struct draft_model_run *r = &runs[i];
        if (r->s != fed[j])
            continue;
        j++;
        if (!on_backend(r))
            continue;
        u[n_jobs] = draft_uniform(r);
        who[n_jobs] = i;
        jobs[n_jobs] = (struct kern_choose){.p = r->q_dev, .p_row = r->n_out, .u_sample = &u[n_jobs]};
        n_jobs++;
    }
    if (n_jobs == 0)
        return SPEC_OK;
    struct kern_backend *be = model_backend(m);
    SPEC_TRY(be->ops->sample_choose(be, jobs, n_jobs));
    for (int k = 0; k < n_jobs; k++) {
        picks[who[k]] = jobs[k].err ? -1 : jobs[k].token;
        pick_probs[who[k]] = jobs[k].prob;
    }
    return SPEC_OK;
}

/* The chained runs' tokens to the host, once each run has drafted them all: a run's tokens end before
 * the first -1 (argmax of a row without a number), which is its error, as when its tokens cross a pass
 * at a time. */
static int chain_ends(struct model *m, struct draft_model_run *runs, int n_runs, float min_prob)
{
    struct kern_backend *be = model_backend(m);
    for (int i = 0; i < n_runs; i++) {
        struct draft_model_run *r = &runs[i];
        if (!chained(r, min_prob))
            continue;
        SPEC_TRY(be->ops->rows_to_host(be, r->ids_dev, 0, r->n_out, r->out));
        for (int k = 0; k < r->n_out; k++) {
            if (r->out[k] < 0) {
                r->err = SPEC_E_NUMERIC;
                r->n_out = k;
                break;
            }
            r->ctx[r->n_ctx + (size_t)k] = r->out[k];
        }
    }
    return SPEC_OK;
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
    struct kern_sampler ks[DRAFT_MAX_RUNS];
    int n_items = 0;
    /* Catch up: feed each run's history after its cache, outputs of the last position. */
    for (int i = 0; i < n_runs; i++) {
        struct draft_model_run *r = &runs[i];
        r->n_out = 0;
        r->err = SPEC_OK;
        const size_t len = (size_t)model_seq_len(r->s);
        if (!r->sp || !r->ctx || !r->out || !r->logits || r->max_out <= 0 || len >= r->n_ctx ||
            (!r->q && !verify_params_raw_greedy(r->sp) && !on_backend(r)) ||
            (on_backend(r) && r->sp->temperature <= 0.0f && min_prob > 0.0f) ||
            (r->ids_dev && r->ids_dev->ne1 < r->max_out))
            return SPEC_E_INVALID_ARG; /* the caller truncates the cache to a strict prefix */
        ks[i] = verify_sampler(r->sp);
        items[n_items++] = draft_item(r, &ks[i], len, (int)(r->n_ctx - len), r->ctx + len, penalty_window, min_prob,
                                      &picks[i], &pick_probs[i]);
    }
    while (n_items > 0) {
        SPEC_TRY(model_forward_batch(m, items, n_items));
        /* Each run fed in this pass drafts one token; those that want more feed it in the next. */
        const int n_fed = n_items;
        struct model_seq *fed[DRAFT_MAX_RUNS];
        for (int i = 0; i < n_fed; i++)
            fed[i] = items[i].s;
        SPEC_TRY(draw_on_backend(m, runs, n_runs, fed, n_fed, picks, pick_probs));
        n_items = 0;
        for (int i = 0, j = 0; i < n_runs && j < n_fed; i++) {
            struct draft_model_run *r = &runs[i];
            if (r->s != fed[j])
                continue;
            j++;
            if (chained(r, min_prob)) { /* its token stays on the backend, for its next pass */
                if (++r->n_out < r->max_out)
                    items[n_items++] = draft_item(r, &ks[i], r->n_ctx + (size_t)r->n_out - 1, 1, NULL,
                                                  penalty_window, min_prob, &picks[i], &pick_probs[i]);
                continue;
            }
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
                items[n_items] = draft_item(r, &ks[i], r->n_ctx + (size_t)r->n_out - 1, 1, &tokens[n_items],
                                            penalty_window, min_prob, &picks[i], &pick_probs[i]);
                n_items++;
            }
        }
    }
    return chain_ends(m, runs, n_runs, min_prob);
}
