#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "draft/draft.h"
#include "engine/engine.h"
#include "target/target.h"

struct engine {
    struct engine_config cfg;
    int32_t n_vocab;
    struct model_seq *tseq, *dseq;
    struct target_scratch ts;
    struct verify_scratch *dvs;
    float *dlogits;     /* n_vocab: the draft's latest logits */
    float *q;           /* draft_max x n_vocab draft distributions */
    float *residual;    /* n_vocab */
    int32_t *hist;      /* n_ctx + draft_max + 1: accepted tokens, drafts appended while scoring */
    double accept_rate; /* running estimate of per-token acceptance */
    double t_draft_tok; /* running estimate of seconds per drafted token */
    /* Decayed least-squares fit of target pass time t = a + b * n_drafts: on a CPU, scoring more
     * positions is not free, and that is what limits a useful γ. */
    double fit_s0, fit_sx, fit_sxx, fit_sy, fit_sxy;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

const char *engine_finish_name(enum engine_finish f)
{
    switch (f) {
    case ENGINE_FINISH_STOP:
        return "stop";
    case ENGINE_FINISH_LENGTH:
        return "length";
    case ENGINE_FINISH_CANCELLED:
        return "cancelled";
    }
    return "unknown";
}

void engine_free(struct engine *e)
{
    if (!e)
        return;
    model_seq_free(e->tseq);
    model_seq_free(e->dseq);
    target_scratch_release(&e->ts);
    verify_scratch_free(e->dvs);
    free(e->dlogits);
    free(e->q);
    free(e->residual);
    free(e->hist);
    free(e);
}

int engine_new(const struct engine_config *cfg, struct engine **out)
{
    if (!cfg || !cfg->target || !out || cfg->draft_max < 1 || cfg->draft_max > ENGINE_MAX_DRAFT ||
        cfg->draft_min < 1 || cfg->draft_min > cfg->draft_max || cfg->penalty_window < 0 ||
        !(cfg->draft_min_prob >= 0.0f && cfg->draft_min_prob <= 1.0f))
        return SPEC_E_INVALID_ARG;
    const int32_t n_vocab = model_n_vocab(cfg->target);
    if (cfg->draft && model_n_vocab(cfg->draft) != n_vocab)
        return SPEC_E_SHAPE; /* draft and target must share one vocabulary */
    struct engine *e = calloc(1, sizeof *e);
    if (!e)
        return SPEC_E_NOMEM;
    e->cfg = *cfg;
    e->n_vocab = n_vocab;
    e->accept_rate = 0.7;
    int rc = model_seq_new(cfg->target, cfg->n_ctx, &e->tseq);
    if (!rc)
        e->cfg.n_ctx = model_seq_n_ctx(e->tseq);
    if (!rc && cfg->draft)
        rc = model_seq_new(cfg->draft, e->cfg.n_ctx, &e->dseq);
    if (!rc)
        rc = target_scratch_init(&e->ts, n_vocab, cfg->draft_max + 1);
    if (!rc)
        rc = verify_scratch_new(n_vocab, &e->dvs);
    if (!rc) {
        e->dlogits = malloc((size_t)n_vocab * sizeof *e->dlogits);
        e->q = malloc((size_t)cfg->draft_max * (size_t)n_vocab * sizeof *e->q);
        e->residual = malloc((size_t)n_vocab * sizeof *e->residual);
        e->hist = malloc(((size_t)e->cfg.n_ctx + (size_t)cfg->draft_max + 1) * sizeof *e->hist);
        if (!e->dlogits || !e->q || !e->residual || !e->hist)
            rc = SPEC_E_NOMEM;
    }
    if (rc) {
        engine_free(e);
        return rc;
    }
    *out = e;
    return SPEC_OK;
}

/* Target pass time for n_drafts draft tokens, from the fit; before two different sizes have been
 * seen, assume each extra position costs 10% of a pass. */
static double pass_time(const struct engine *e, int n_drafts)
{
    if (e->fit_s0 <= 0.0)
        return 1.0 + 0.1 * n_drafts;
    const double mx = e->fit_sx / e->fit_s0, my = e->fit_sy / e->fit_s0;
    const double var = e->fit_sxx / e->fit_s0 - mx * mx;
    double b = var > 0.25 ? (e->fit_sxy / e->fit_s0 - mx * my) / var : 0.1 * my / (1.0 + 0.1 * mx);
    if (b < 0.0)
        b = 0.0;
    const double a = my - b * mx;
    return fmax(a, 1e-9) + b * n_drafts;
}

/* γ maximising expected tokens per second (Leviathan et al. 2023, Thm 3.8): a round yields
 * (1 - α^(γ+1)) / (1 - α) tokens, α the acceptance rate, and costs γ drafted tokens plus one target
 * pass over γ + 1 positions. */
static int choose_gamma(const struct engine *e)
{
    if (!e->cfg.adaptive)
        return e->cfg.draft_max;
    const double a = fmin(e->accept_rate, 0.999);
    const double t_tok = e->fit_s0 > 0.0 ? e->t_draft_tok : 0.1 * pass_time(e, 0) * (e->cfg.draft != NULL);
    int best = e->cfg.draft_min;
    double best_rate = -1.0;
    for (int g = e->cfg.draft_min; g <= e->cfg.draft_max; g++) {
        const double rate = (1.0 - pow(a, g + 1)) / (1.0 - a) / (g * t_tok + pass_time(e, g));
        if (rate > best_rate) {
            best_rate = rate;
            best = g;
        }
    }
    return best;
}

/* Propose up to gamma tokens after hist[0..n_hist) into drafts, with their distributions in e->q. */
static int propose(struct engine *e, const struct engine_request *req, size_t n_hist, int gamma, int32_t *drafts,
                   int *n_drafts)
{
    if (e->cfg.draft) {
        const struct draft_model_run run = {
            .m = e->cfg.draft, .s = e->dseq, .sp = &req->sampling, .penalty_window = (size_t)e->cfg.penalty_window,
            .seq_id = req->seq_id, .vs = e->dvs, .logits = e->dlogits};
        return draft_model_propose(&run, e->hist, n_hist, gamma, e->cfg.draft_min_prob, drafts, e->q, n_drafts);
    }
    const struct draft_ngram_params np = {.ngram_max = 4, .ngram_min = 1};
    int rc = draft_ngram_propose(&np, e->hist, n_hist, gamma, drafts, n_drafts);
    /* prompt lookup is certain of its guess: q is one-hot */
    for (int i = 0; !rc && i < *n_drafts; i++) {
        float *qi = e->q + (size_t)i * (size_t)e->n_vocab;
        memset(qi, 0, (size_t)e->n_vocab * sizeof *qi);
        qi[drafts[i]] = 1.0f;
    }
    return rc;
}

/* Accepted prefix plus the corrected or bonus token, from the target rows in e->ts.p. */
static int verify(struct engine *e, const struct engine_request *req, size_t n_hist, const int32_t *drafts,
                  int n_drafts, int32_t *accepted, int *n_accepted)
{
    const size_t v = (size_t)e->n_vocab;
    if (req->sampling.temperature == 0.0f) {
        int32_t target[ENGINE_MAX_DRAFT + 1];
        for (int i = 0; i <= n_drafts; i++) {
            const int rc = verify_argmax(e->ts.p + (size_t)i * v, e->n_vocab, &target[i]);
            if (rc)
                return rc;
        }
        return verify_round_greedy(drafts, n_drafts, target, accepted, n_accepted);
    }
    const struct verify_round r = {.p = e->ts.p, .q = e->q, .draft = drafts, .n_draft = n_drafts,
                                   .n_vocab = e->n_vocab, .seed = req->sampling.seed, .seq = req->seq_id,
                                   .pos0 = n_hist, .scratch = e->residual};
    return verify_round_sampled(&r, accepted, n_accepted);
}

/* Running estimates behind the adaptive γ. */
static void update_estimates(struct engine *e, int n_drafts, int n_accepted_drafts, double t_draft, double t_target)
{
    const double w = 0.2, decay = 0.95;
    if (n_drafts > 0) {
        e->accept_rate = (1.0 - w) * e->accept_rate + w * (double)n_accepted_drafts / n_drafts;
        const double per_tok = t_draft / n_drafts;
        e->t_draft_tok = e->fit_s0 > 0.0 ? (1.0 - w) * e->t_draft_tok + w * per_tok : per_tok;
    }
    const double x = n_drafts;
    e->fit_s0 = decay * e->fit_s0 + 1.0;
    e->fit_sx = decay * e->fit_sx + x;
    e->fit_sxx = decay * e->fit_sxx + x * x;
    e->fit_sy = decay * e->fit_sy + t_target;
    e->fit_sxy = decay * e->fit_sxy + x * t_target;
}

static int check_request(const struct engine *e, const struct engine_request *req, int cap)
{
    if (!req || !req->prompt || req->n_prompt <= 0 || req->max_tokens < 0 || cap < req->max_tokens)
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->n_vocab)
            return SPEC_E_INVALID_ARG;
    if (req->n_prompt >= e->cfg.n_ctx)
        return SPEC_E_CONTEXT_FULL;
    return verify_params_check(&req->sampling);
}

/* Feed all but the last prompt token: the last one opens the first round. */
static int prefill(struct model *m, struct model_seq *s, const int32_t *prompt, int n_prompt)
{
    int rc = model_seq_truncate(s, 0);
    if (!rc && n_prompt > 1)
        rc = model_forward_last(m, s, prompt, n_prompt - 1, NULL);
    return rc;
}

int engine_generate(struct engine *e, const struct engine_request *req, engine_token_fn on_tokens, void *user,
                    int32_t *out, int cap, int *n_out, enum engine_finish *finish, struct engine_stats *stats)
{
    int rc = check_request(e, req, cap);
    if (rc)
        return rc;
    struct engine_stats st = {.n_prompt = req->n_prompt};
    const bool spec = req->speculative;
    double t0 = now();
    rc = prefill(e->cfg.target, e->tseq, req->prompt, req->n_prompt);
    if (!rc && spec && e->cfg.draft)
        rc = prefill(e->cfg.draft, e->dseq, req->prompt, req->n_prompt);
    if (rc)
        return rc;
    st.t_prefill = now() - t0;
    memcpy(e->hist, req->prompt, (size_t)req->n_prompt * sizeof *e->hist);
    size_t n_hist = (size_t)req->n_prompt;
    enum engine_finish fin = ENGINE_FINISH_LENGTH;
    int n_gen = 0;
    bool done = req->max_tokens == 0;

    while (!done) {
        const size_t room = (size_t)e->cfg.n_ctx - n_hist; /* > 0: checked below after every append */
        int gamma = spec ? choose_gamma(e) : 0;
        if ((size_t)gamma > room - 1)
            gamma = (int)(room - 1);
        if (gamma > req->max_tokens - n_gen - 1)
            gamma = req->max_tokens - n_gen - 1;

        int32_t drafts[ENGINE_MAX_DRAFT];
        int n_drafts = 0;
        t0 = now();
        if (gamma > 0)
            rc = propose(e, req, n_hist, gamma, drafts, &n_drafts);
        const double t_draft = now() - t0;
        if (rc)
            return rc;

        /* One batched target pass over the last accepted token and every draft token. */
        t0 = now();
        int32_t batch[ENGINE_MAX_DRAFT + 1];
        batch[0] = e->hist[n_hist - 1];
        memcpy(batch + 1, drafts, (size_t)n_drafts * sizeof *batch);
        memcpy(e->hist + n_hist, drafts, (size_t)n_drafts * sizeof *e->hist);
        rc = target_score(e->cfg.target, e->tseq, e->hist, n_hist - 1, batch, n_drafts + 1, &req->sampling,
                          (size_t)e->cfg.penalty_window, &e->ts);
        int32_t accepted[ENGINE_MAX_DRAFT + 1];
        int n_accepted = 0;
        if (!rc)
            rc = verify(e, req, n_hist, drafts, n_drafts, accepted, &n_accepted);
        const double t_target = now() - t0;
        if (!rc && (n_accepted < 1 || n_accepted > n_drafts + 1))
            rc = SPEC_E_RANGE; /* verification always yields the accepted drafts plus one token */
        if (rc)
            return rc;

        /* Roll both caches back to the accepted history; the new last token is fed next round. */
        const int keep = (int)n_hist + n_accepted - 1;
        rc = model_seq_truncate(e->tseq, keep);
        if (!rc && e->dseq && model_seq_len(e->dseq) > keep)
            rc = model_seq_truncate(e->dseq, keep);
        if (rc)
            return rc;

        st.n_target_passes++;
        st.n_drafted += n_drafts;
        st.n_accepted += n_accepted - 1;
        st.t_draft += t_draft;
        st.t_target += t_target;
        update_estimates(e, n_drafts, n_accepted - 1, t_draft, t_target);

        int n_new = 0;
        while (n_new < n_accepted && !done) {
            const int32_t t = accepted[n_new++];
            e->hist[n_hist++] = t;
            out[n_gen++] = t;
            if (tok_is_eog(model_tokenizer(e->cfg.target), t)) {
                fin = ENGINE_FINISH_STOP;
                done = true;
            } else if (n_gen >= req->max_tokens || n_hist >= (size_t)e->cfg.n_ctx) {
                fin = ENGINE_FINISH_LENGTH;
                done = true;
            }
        }
        if (on_tokens && on_tokens(user, accepted, n_new) != 0 && !done) {
            fin = ENGINE_FINISH_CANCELLED;
            done = true;
        }
    }
    st.n_generated = n_gen;
    *n_out = n_gen;
    *finish = fin;
    if (stats)
        *stats = st;
    return SPEC_OK;
}
