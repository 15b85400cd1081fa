#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "draft/draft.h"
#include "engine/engine.h"
#include "target/target.h"

/* Acceptance assumed before a request's first drafts, and the share of the way back to it that a
 * request the adaptive choice left undrafted goes each round (from 0.05 to 0.35 in ~30 rounds). */
#define ACCEPT_PRIOR 0.7
#define ACCEPT_RECOVERY 0.02

/* One request in flight. A free slot may keep the KV caches of its last request (tseq, dseq) with
 * the tokens they hold (hist[0 .. n_hist)), so that a prompt extending them skips their prefill. */
struct slot {
    bool used, prefilled, cancel;
    uint64_t last_use;  /* the engine's submit count when this slot last took a request */
    uint32_t id;
    engine_update_fn fn;
    void *user;
    int max_tokens, draft_max;
    bool speculative;
    struct verify_params sp;
    uint64_t seq_id;
    struct model_seq *tseq, *dseq;
    int32_t *hist;      /* n_ctx + ENGINE_MAX_DRAFT + 1: accepted tokens, drafts appended while scoring */
    size_t n_hist;
    int n_prompt, n_gen;
    float *q;           /* draft_max x n_vocab draft distributions */
    float *p;           /* (draft_max + 1) x n_vocab target distributions */
    float *dlogits;     /* n_vocab: the draft's latest logits */
    /* Processed and verified on the backend (on_backend): p and q stay there, kept with the caches for
     * later requests */
    bool on_backend;
    struct kern_backend *be; /* the tensors' backend, NULL until they exist */
    struct kern_tensor pd, qd;
    struct kern_tensor ids; /* greedy draft runs' tokens, kept on the backend (draft_model_run.ids_dev) */
    double accept_rate; /* running estimate of per-token acceptance */
    struct engine_stats st;
    /* this round */
    int gamma, n_drafts;
    int32_t drafts[ENGINE_MAX_DRAFT];
    int32_t choice[ENGINE_MAX_DRAFT + 1]; /* greedy requests: the target's token at each scored position */
    /* text: decoded bytes not yet handed out, because they may begin a stop string */
    struct tok_stream ts;
    char *text;
    size_t n_text, cap_text;
    char stop[ENGINE_MAX_STOP][ENGINE_MAX_STOP_LEN + 1];
    int n_stop;
};

struct engine {
    struct engine_config cfg;
    int32_t n_vocab;
    uint32_t next_id;
    uint64_t n_submitted;
    struct slot *slots; /* max_seqs */
    struct target_scratch tsc;
    struct verify_scratch *vs;
    float *residual; /* n_vocab */
    bool on_backend; /* requests other than raw greedy are processed and verified on the backend
                      * (engine_config.host_sampling) */
    double t_draft_step; /* running estimate of seconds per batched draft step */
    /* Decayed least-squares fit of target pass time t = a + b * n_drafts (all sequences' drafts): on a
     * CPU, scoring more positions is not free, and that is what limits a useful γ. */
    double fit_s0, fit_sx, fit_sxx, fit_sy, fit_sxy;
    struct engine_costs costs; /* engine_config.costs' copy */
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
    case ENGINE_FINISH_ERROR:
        return "error";
    }
    return "unknown";
}

/* The buffers of one request. */
static void slot_free_request(struct slot *sl)
{
    free(sl->q);
    free(sl->p);
    free(sl->dlogits);
    free(sl->text);
}

static void slot_release(struct slot *sl)
{
    model_seq_free(sl->tseq);
    model_seq_free(sl->dseq);
    if (sl->be) {
        sl->be->ops->tensor_free(sl->be, &sl->pd);
        sl->be->ops->tensor_free(sl->be, &sl->qd);
        sl->be->ops->tensor_free(sl->be, &sl->ids);
    }
    free(sl->hist);
    slot_free_request(sl);
    *sl = (struct slot){0};
}

/* A finished request's slot keeps its caches, cut to the accepted tokens they hold (a round may
 * have left drafts in them), for a later prompt that starts the same way. */
static void slot_keep_caches(struct slot *sl)
{
    int n = model_seq_len(sl->tseq);
    if ((size_t)n > sl->n_hist)
        n = (int)sl->n_hist;
    int rc = model_seq_truncate(sl->tseq, n);
    if (!rc && sl->dseq && model_seq_len(sl->dseq) > n)
        rc = model_seq_truncate(sl->dseq, n);
    if (rc) {
        slot_release(sl);
        return;
    }
    slot_free_request(sl);
    *sl = (struct slot){.last_use = sl->last_use, .tseq = sl->tseq, .dseq = sl->dseq, .hist = sl->hist,
                        .n_hist = (size_t)n, .be = sl->be, .pd = sl->pd, .qd = sl->qd, .ids = sl->ids};
}

void engine_free(struct engine *e)
{
    if (!e)
        return;
    for (int i = 0; e->slots && i < e->cfg.max_seqs; i++)
        slot_release(&e->slots[i]);
    free(e->slots);
    target_scratch_release(&e->tsc);
    verify_scratch_free(e->vs);
    free(e->residual);
    free(e);
}

int engine_new(const struct engine_config *cfg, struct engine **out)
{
    if (!cfg || !cfg->target || !out || cfg->draft_max < 1 || cfg->draft_max > ENGINE_MAX_DRAFT ||
        cfg->draft_min < 0 || cfg->draft_min > cfg->draft_max || cfg->penalty_window < 0 || cfg->max_seqs < 0 ||
        cfg->max_seqs > ENGINE_MAX_SEQS || !(cfg->draft_min_prob >= 0.0f && cfg->draft_min_prob <= 1.0f) ||
        (cfg->costs && !(cfg->costs->target_pass > 0.0 && cfg->costs->per_draft > 0.0 && cfg->costs->draft_step > 0.0)))
        return SPEC_E_INVALID_ARG;
    const int32_t n_vocab = model_n_vocab(cfg->target);
    if (cfg->draft && model_n_vocab(cfg->draft) != n_vocab)
        return SPEC_E_SHAPE; /* draft and target must share one vocabulary */
    const int n_ctx = cfg->n_ctx > 0 ? cfg->n_ctx : model_n_ctx_train(cfg->target);
    if (n_ctx < 2)
        return SPEC_E_INVALID_ARG;
    struct engine *e = calloc(1, sizeof *e);
    if (!e)
        return SPEC_E_NOMEM;
    e->cfg = *cfg;
    e->cfg.n_ctx = n_ctx;
    e->cfg.max_seqs = cfg->max_seqs > 0 ? cfg->max_seqs : 1;
    if (cfg->costs) {
        e->costs = *cfg->costs;
        e->cfg.costs = &e->costs;
    }
    e->n_vocab = n_vocab;
    e->next_id = 1;
    const struct kern_backend *be = model_backend(cfg->target);
    e->on_backend = !cfg->host_sampling && be->ops->sample_process && be->ops->sample_choose &&
                    (!cfg->draft || model_backend(cfg->draft) == be);
    e->slots = calloc((size_t)e->cfg.max_seqs, sizeof *e->slots);
    e->residual = malloc((size_t)n_vocab * sizeof *e->residual);
    int rc = e->slots && e->residual ? target_scratch_init(&e->tsc, n_vocab) : SPEC_E_NOMEM;
    if (!rc)
        rc = verify_scratch_new(n_vocab, &e->vs);
    if (rc) {
        engine_free(e);
        return rc;
    }
    *out = e;
    return SPEC_OK;
}

int engine_n_ctx(const struct engine *e)
{
    return e->cfg.n_ctx;
}

int engine_max_seqs(const struct engine *e)
{
    return e->cfg.max_seqs;
}

int engine_n_active(const struct engine *e)
{
    int n = 0;
    for (int i = 0; i < e->cfg.max_seqs; i++)
        n += e->slots[i].used;
    return n;
}

/* Stop strings must be whole UTF-8 text, so that holding back a prefix of one never splits a
 * character of the output. */
static bool utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        const unsigned char c = (unsigned char)s[i];
        const size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || (len == 2 && c < 0xC2) || i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] & 0xC0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

static int check_request(const struct engine *e, const struct engine_request *req)
{
    if (!req || !req->prompt || req->n_prompt <= 0 || req->max_tokens < 0 || req->draft_max < 0 ||
        req->draft_max > ENGINE_MAX_DRAFT || req->n_stop < 0 || (req->n_stop > 0 && !req->stop))
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->n_vocab)
            return SPEC_E_INVALID_ARG;
    if (req->n_prompt >= e->cfg.n_ctx)
        return SPEC_E_CONTEXT_FULL;
    if (req->n_stop > ENGINE_MAX_STOP)
        return SPEC_E_RANGE;
    for (int i = 0; i < req->n_stop; i++) {
        const size_t n = req->stop[i] ? strlen(req->stop[i]) : 0;
        if (n == 0 || n > ENGINE_MAX_STOP_LEN || !utf8_valid(req->stop[i], n))
            return SPEC_E_RANGE;
    }
    return verify_params_check(&req->sampling);
}

/* Tokens at the start of a prompt whose KV rows slot sl's kept caches already hold; the last prompt
 * token is always fed again, as it opens the first round. */
static int reusable(const struct slot *sl, const struct engine_request *req)
{
    const size_t kept = sl->tseq ? (size_t)model_seq_len(sl->tseq) : 0;
    size_t n = 0;
    while (n < kept && n + 1 < (size_t)req->n_prompt && sl->hist[n] == req->prompt[n])
        n++;
    return (int)n;
}

/* Whether a request's draft rows (q) are made and sampled on the backend: when it is processed there,
 * except a greedy request with penalties whose draft runs stop early (draft_min_prob weighs the raw
 * probability of its token, which its one-hot q row does not keep): that one drafts on the host, and its
 * rounds take q one-hot on the drafts. */
static bool q_on_backend(const struct engine *e, const struct slot *sl)
{
    return sl->on_backend && (sl->sp.temperature > 0.0f || e->cfg.draft_min_prob == 0.0f);
}

/* A slot's p and q rows on the backend, for any request (the engine's largest γ). */
static int backend_rows(struct engine *e, struct slot *sl)
{
    struct kern_backend *be = model_backend(e->cfg.target);
    int rc = be->ops->tensor_alloc(be, SPEC_F32, e->n_vocab, e->cfg.draft_max + 1, &sl->pd);
    if (!rc && e->cfg.draft && (rc = be->ops->tensor_alloc(be, SPEC_F32, e->n_vocab, e->cfg.draft_max, &sl->qd)))
        be->ops->tensor_free(be, &sl->pd);
    if (!rc)
        sl->be = be;
    return rc;
}

/* A slot's row of ids for greedy draft runs whose tokens stay on the backend from pass to pass, where
 * the draft model shares the target's backend and it keeps ids (argmax_keep, get_rows_kept). Without
 * them (or the memory) the runs' tokens cross to the host a pass at a time: the same tokens, slower. */
static void chain_ids(struct engine *e, struct slot *sl)
{
    struct kern_backend *be = model_backend(e->cfg.target);
    if (sl->ids.data || !e->cfg.draft || e->cfg.host_draft_ids || model_backend(e->cfg.draft) != be ||
        !be->ops->argmax_keep || !be->ops->get_rows_kept)
        return;
    if (be->ops->tensor_alloc(be, SPEC_I32, 1, e->cfg.draft_max, &sl->ids) == SPEC_OK)
        sl->be = be;
}

/* The free slot for a request: the one whose kept caches cover the longest start of its prompt, else
 * one that keeps nothing, else the one unused the longest. */
static struct slot *pick_slot(struct engine *e, const struct engine_request *req, int *n_reuse)
{
    struct slot *best = NULL;
    int best_n = -1;
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        struct slot *sl = &e->slots[i];
        if (sl->used)
            continue;
        const int n = reusable(sl, req);
        const bool kept = sl->tseq != NULL, best_kept = best && best->tseq != NULL;
        const bool better = !best || n > best_n || (n == best_n && best_kept && !kept) ||
                            (n == best_n && best_kept == kept && sl->last_use < best->last_use);
        if (better) {
            best = sl;
            best_n = n;
        }
    }
    *n_reuse = best_n;
    return best;
}

int engine_submit(struct engine *e, const struct engine_request *req, engine_update_fn fn, void *user,
                  uint32_t *id)
{
    if (!e || !fn)
        return SPEC_E_INVALID_ARG;
    SPEC_TRY(check_request(e, req));
    int n_reuse;
    struct slot *sl = pick_slot(e, req, &n_reuse);
    if (!sl)
        return SPEC_E_BUSY;
    const struct tok *tok = model_tokenizer(e->cfg.target);
    const int draft_max = req->draft_max > 0 && req->draft_max < e->cfg.draft_max ? req->draft_max : e->cfg.draft_max;
    const size_t v = (size_t)e->n_vocab;
    struct model_seq *tseq = sl->tseq, *dseq = sl->dseq;
    int32_t *hist = sl->hist;
    struct kern_backend *be = sl->be;
    const struct kern_tensor pd = sl->pd, qd = sl->qd, ids = sl->ids;
    *sl = (struct slot){.used = true, .last_use = ++e->n_submitted, .id = e->next_id, .fn = fn, .user = user,
                        .max_tokens = req->max_tokens, .draft_max = draft_max, .speculative = req->speculative,
                        .sp = req->sampling, .seq_id = req->seq_id, .tseq = tseq, .dseq = dseq, .hist = hist,
                        .on_backend = e->on_backend && !verify_params_raw_greedy(&req->sampling), .be = be, .pd = pd,
                        .qd = qd, .ids = ids,
                        .n_prompt = req->n_prompt, .accept_rate = ACCEPT_PRIOR,
                        .st = {.n_prompt = req->n_prompt, .n_prompt_cached = n_reuse}, .n_stop = req->n_stop};
    sl->cap_text = ENGINE_MAX_STOP_LEN + (size_t)(ENGINE_MAX_DRAFT + 1) * tok_stream_max_out(tok) + 8;
    if (!sl->hist)
        sl->hist = malloc(((size_t)e->cfg.n_ctx + ENGINE_MAX_DRAFT + 1) * sizeof *sl->hist);
    sl->p = sl->on_backend ? NULL : malloc(((size_t)draft_max + 1) * v * sizeof *sl->p);
    sl->text = malloc(sl->cap_text);
    int rc = sl->hist && (sl->p || sl->on_backend) && sl->text ? SPEC_OK : SPEC_E_NOMEM;
    if (!rc && sl->on_backend && !sl->pd.data)
        rc = backend_rows(e, sl);
    if (!rc)
        rc = sl->tseq ? model_seq_truncate(sl->tseq, n_reuse) : model_seq_new(e->cfg.target, e->cfg.n_ctx, &sl->tseq);
    if (!rc && sl->dseq && model_seq_len(sl->dseq) > n_reuse)
        rc = model_seq_truncate(sl->dseq, n_reuse);
    if (!rc && req->speculative) {
        sl->q = q_on_backend(e, sl) ? NULL : malloc((size_t)draft_max * v * sizeof *sl->q);
        if (!sl->q && !q_on_backend(e, sl))
            rc = SPEC_E_NOMEM;
        else if (e->cfg.draft) {
            sl->dlogits = malloc(v * sizeof *sl->dlogits);
            if (!sl->dlogits)
                rc = SPEC_E_NOMEM;
            else if (!sl->dseq)
                rc = model_seq_new(e->cfg.draft, e->cfg.n_ctx, &sl->dseq);
            if (!rc)
                chain_ids(e, sl);
        }
    }
    if (rc) {
        slot_release(sl);
        return rc;
    }
    memcpy(sl->hist, req->prompt, (size_t)req->n_prompt * sizeof *sl->hist);
    sl->n_hist = (size_t)req->n_prompt;
    for (int i = 0; i < req->n_stop; i++)
        memcpy(sl->stop[i], req->stop[i], strlen(req->stop[i]) + 1);
    tok_stream_init(&sl->ts, tok, false);
    *id = e->next_id++;
    if (e->next_id == 0)
        e->next_id = 1;
    return SPEC_OK;
}

int engine_cancel(struct engine *e, uint32_t id)
{
    for (int i = 0; e && i < e->cfg.max_seqs; i++)
        if (e->slots[i].used && e->slots[i].id == id) {
            e->slots[i].cancel = true;
            return SPEC_OK;
        }
    return SPEC_E_NOT_FOUND;
}

/* ---------------------------------------------------------------------------------------------- */
/* Text and stop strings                                                                          */

/* Earliest position of a stop string in the held-back text, or -1. */
static long find_stop(const struct slot *sl, size_t *len)
{
    long best = -1;
    for (int i = 0; i < sl->n_stop; i++) {
        const size_t n = strlen(sl->stop[i]);
        for (size_t at = 0; at + n <= sl->n_text && (best < 0 || at < (size_t)best); at++)
            if (!memcmp(sl->text + at, sl->stop[i], n)) {
                best = (long)at;
                *len = n;
                break;
            }
    }
    return best;
}

/* Bytes at the end of the held-back text that could be the start of a stop string. */
static size_t stop_prefix_len(const struct slot *sl)
{
    size_t keep = 0;
    for (int i = 0; i < sl->n_stop; i++) {
        const size_t n = strlen(sl->stop[i]);
        for (size_t k = n - 1 < sl->n_text ? n - 1 : sl->n_text; k > keep; k--)
            if (!memcmp(sl->text + sl->n_text - k, sl->stop[i], k)) {
                keep = k;
                break;
            }
    }
    return keep;
}

/* Decode one accepted token into the held-back text; true when it completed a stop string, in which
 * case the text is cut where the stop string begins. */
static int push_text(struct slot *sl, int32_t token, bool *stopped)
{
    size_t n = 0;
    SPEC_TRY(tok_stream_push(&sl->ts, token, sl->text + sl->n_text, sl->cap_text - sl->n_text, &n));
    sl->n_text += n;
    size_t len = 0;
    const long at = find_stop(sl, &len);
    *stopped = at >= 0;
    if (at >= 0)
        sl->n_text = (size_t)at;
    return SPEC_OK;
}

/* The bytes of a character the text's last token left unfinished, as U+FFFD (tok_stream_flush), once
 * no token can finish it. */
static void flush_text(struct slot *sl)
{
    size_t tail = 0;
    if (!tok_stream_flush(&sl->ts, sl->text + sl->n_text, sl->cap_text - sl->n_text, &tail))
        sl->n_text += tail;
}

/* ---------------------------------------------------------------------------------------------- */
/* Updates                                                                                        */

/* Hand out this round's tokens and the text that can no longer be part of a stop string; with done,
 * all of the text, and release the slot. Returns the callback's verdict (non-zero: cancel). */
static int deliver(struct slot *sl, const int32_t *tokens, int n, bool done, enum engine_finish fin, int err)
{
    size_t n_out = sl->n_text;
    if (done && fin != ENGINE_FINISH_STOP) {
        flush_text(sl);
        n_out = sl->n_text;
    } else if (!done) {
        n_out = sl->n_text - stop_prefix_len(sl);
    }
    sl->st.n_generated = sl->n_gen;
    const struct engine_update u = {.tokens = tokens, .n_tokens = n, .text = sl->text, .n_text = n_out,
                                    .done = done, .finish = fin, .error = err, .stats = done ? &sl->st : NULL};
    const int verdict = sl->fn(sl->user, &u);
    memmove(sl->text, sl->text + n_out, sl->n_text - n_out);
    sl->n_text -= n_out;
    if (done && fin == ENGINE_FINISH_ERROR)
        slot_release(sl); /* a failed pass may have left the caches in any state */
    else if (done)
        slot_keep_caches(sl);
    return verdict;
}

static void finish(struct slot *sl, enum engine_finish fin, int err)
{
    deliver(sl, sl->hist, 0, true, fin, err); /* tokens is never NULL, even when empty */
}

/* ---------------------------------------------------------------------------------------------- */
/* The round                                                                                      */

/* Feed all but the last prompt token of each new request to the target (and draft), after what their
 * kept caches already hold: the last one opens the first round. */
static void prefill(struct engine *e)
{
    struct model_batch_item tb[ENGINE_MAX_SEQS], db[ENGINE_MAX_SEQS];
    struct slot *who[ENGINE_MAX_SEQS];
    int nt = 0, nd = 0, nw = 0;
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        struct slot *sl = &e->slots[i];
        if (!sl->used || sl->prefilled)
            continue;
        sl->prefilled = true;
        if (sl->max_tokens == 0) {
            finish(sl, ENGINE_FINISH_LENGTH, SPEC_OK);
            continue;
        }
        who[nw++] = sl;
        const int tlen = model_seq_len(sl->tseq), dlen = sl->dseq ? model_seq_len(sl->dseq) : 0;
        if (tlen < sl->n_prompt - 1)
            tb[nt++] = (struct model_batch_item){.s = sl->tseq, .tokens = sl->hist + tlen,
                                                 .n = sl->n_prompt - 1 - tlen};
        if (sl->dseq && dlen < sl->n_prompt - 1)
            db[nd++] = (struct model_batch_item){.s = sl->dseq, .tokens = sl->hist + dlen,
                                                 .n = sl->n_prompt - 1 - dlen};
    }
    const double t0 = now();
    int rc = nt > 0 ? model_forward_batch(e->cfg.target, tb, nt) : SPEC_OK;
    if (!rc && nd > 0)
        rc = model_forward_batch(e->cfg.draft, db, nd);
    const double t = now() - t0;
    for (int i = 0; i < nw; i++) {
        who[i]->st.t_prefill = t;
        if (rc)
            finish(who[i], ENGINE_FINISH_ERROR, rc);
    }
}

/* Target pass time for n_drafts draft tokens in the pass, from the fit; before two different sizes
 * have been seen, assume each extra position costs 10% of a pass. */
static void pass_cost(const struct engine *e, double *a, double *b)
{
    if (e->cfg.costs) {
        *a = e->costs.target_pass;
        *b = e->costs.per_draft;
        return;
    }
    if (e->fit_s0 <= 0.0) {
        *a = 1.0;
        *b = 0.1;
        return;
    }
    const double mx = e->fit_sx / e->fit_s0, my = e->fit_sy / e->fit_s0;
    const double var = e->fit_sxx / e->fit_s0 - mx * mx;
    *b = var > 0.25 ? (e->fit_sxy / e->fit_s0 - mx * my) / var : 0.1 * my / (1.0 + 0.1 * mx);
    if (*b < 0.0)
        *b = 0.0;
    *a = fmax(my - *b * mx, 1e-9);
}

/* γ maximising this request's expected tokens per second (Leviathan et al. 2023, Thm 3.8): a round
 * yields (1 - α^(γ+1)) / (1 - α) tokens, α the acceptance rate, and costs its share of γ batched draft
 * steps and of the target pass's fixed part (both shared by the n_active requests), plus b per draft. */
static int choose_gamma(const struct engine *e, const struct slot *sl, int n_active)
{
    if (!e->cfg.adaptive)
        return sl->draft_max;
    double a, b;
    pass_cost(e, &a, &b);
    const double alpha = fmin(sl->accept_rate, 0.999);
    const double t_tok = e->cfg.costs ? e->costs.draft_step * (e->cfg.draft != NULL)
                         : e->fit_s0 > 0.0 ? e->t_draft_step
                                           : 0.1 * a * (e->cfg.draft != NULL);
    const int lo = e->cfg.draft_min < sl->draft_max ? e->cfg.draft_min : sl->draft_max;
    int best = lo;
    double best_rate = -1.0;
    for (int g = lo; g <= sl->draft_max; g++) {
        const double rate = (1.0 - pow(alpha, g + 1)) / (1.0 - alpha) / ((g * t_tok + a) / n_active + b * g);
        if (rate > best_rate) {
            best_rate = rate;
            best = g;
        }
    }
    return best;
}

/* Drafts of every speculative request; returns the seconds spent. Requests whose drafting failed are
 * finished with the error. */
static double propose(struct engine *e, struct slot **act, int n_act)
{
    const double t0 = now();
    struct draft_model_run runs[ENGINE_MAX_SEQS];
    struct slot *who[ENGINE_MAX_SEQS];
    int n_runs = 0;
    for (int i = 0; i < n_act; i++) {
        struct slot *sl = act[i];
        sl->n_drafts = 0;
        if (sl->gamma == 0)
            continue;
        if (e->cfg.draft) {
            who[n_runs] = sl;
            runs[n_runs++] = (struct draft_model_run){.s = sl->dseq, .sp = &sl->sp, .seq_id = sl->seq_id,
                                                      .ctx = sl->hist, .n_ctx = sl->n_hist, .max_out = sl->gamma,
                                                      .out = sl->drafts, .q = sl->q, .logits = sl->dlogits,
                                                      .q_dev = q_on_backend(e, sl) ? &sl->qd : NULL,
                                                      .ids_dev = sl->ids.data ? &sl->ids : NULL};
            continue;
        }
        const struct draft_ngram_params np = {.ngram_max = 4, .ngram_min = 1};
        const int rc = draft_ngram_propose(&np, sl->hist, sl->n_hist, sl->gamma, sl->drafts, &sl->n_drafts);
        if (rc) {
            finish(sl, ENGINE_FINISH_ERROR, rc);
            continue;
        }
        /* prompt lookup is certain of its guess: q is one-hot (greedy verification compares tokens only; on
         * the backend a round without q rows takes them one-hot) */
        for (int k = 0; k < sl->n_drafts && sl->sp.temperature > 0.0f && !sl->on_backend; k++) {
            float *qk = sl->q + (size_t)k * (size_t)e->n_vocab;
            memset(qk, 0, (size_t)e->n_vocab * sizeof *qk);
            qk[sl->drafts[k]] = 1.0f;
        }
    }
    if (n_runs > 0) {
        const int rc = draft_model_propose(e->cfg.draft, runs, n_runs, (size_t)e->cfg.penalty_window,
                                           e->cfg.draft_min_prob, e->vs);
        int max_out = 0;
        for (int i = 0; i < n_runs; i++) {
            who[i]->n_drafts = rc ? 0 : runs[i].n_out;
            max_out = runs[i].n_out > max_out ? runs[i].n_out : max_out;
        }
        const double t = now() - t0, w = 0.2;
        if (max_out > 0) /* the catch-up pass plus one pass per drafted token beyond the first */
            e->t_draft_step = e->fit_s0 > 0.0 ? (1.0 - w) * e->t_draft_step + w * t / max_out : t / max_out;
        for (int i = 0; i < n_runs; i++)
            if (rc || runs[i].err)
                finish(who[i], ENGINE_FINISH_ERROR, rc ? rc : runs[i].err);
    }
    return now() - t0;
}

/* Accepted prefix plus the corrected or bonus token, from the target's greedy tokens in sl->choice or
 * its rows in sl->p. */
static int verify(struct engine *e, struct slot *sl, int32_t *accepted, int *n_accepted)
{
    if (sl->sp.temperature == 0.0f)
        return verify_round_greedy(sl->drafts, sl->n_drafts, sl->choice, accepted, n_accepted);
    const struct verify_round r = {.p = sl->p, .q = sl->q, .draft = sl->drafts, .n_draft = sl->n_drafts,
                                   .n_vocab = e->n_vocab, .seed = sl->sp.seed, .seq = sl->seq_id,
                                   .pos0 = sl->n_hist, .scratch = e->residual};
    return verify_round_sampled(&r, accepted, n_accepted);
}

/* The rounds of the requests sampled on the backend, made there in one call: round[i] is item i's index
 * in rounds, or -1 for an item verified on the host. */
static int verify_on_backend(struct engine *e, struct slot *const *who, const struct target_item *items, int n_items,
                             struct kern_choose *rounds, int *round)
{
    double u[ENGINE_MAX_SEQS][2 * ENGINE_MAX_DRAFT + 1]; /* read by the call below only */
    int n = 0;
    for (int i = 0; i < n_items; i++) {
        const struct slot *sl = who[i];
        round[i] = -1;
        if (!sl->on_backend || items[i].err)
            continue;
        verify_round_draws(sl->sp.seed, sl->seq_id, sl->n_hist, sl->n_drafts, u[n], u[n] + ENGINE_MAX_DRAFT);
        /* greedy (with penalties): p is one-hot on the target's choice, and with q one-hot on the drafts
         * the round accepts while they agree and then takes the target's token, as verify_round_greedy */
        rounds[n] = (struct kern_choose){.p = &sl->pd,
                                         .q = e->cfg.draft && q_on_backend(e, sl) ? &sl->qd : NULL,
                                         .draft = sl->drafts,
                                         .n_draft = sl->n_drafts,
                                         .u_accept = u[n],
                                         .u_sample = u[n] + ENGINE_MAX_DRAFT};
        round[i] = n++;
    }
    struct kern_backend *be = model_backend(e->cfg.target);
    return n > 0 ? be->ops->sample_choose(be, rounds, n) : SPEC_OK;
}

/* A round made on the backend as accepted tokens: the accepted drafts, then the round's token. */
static int round_tokens(const struct kern_choose *r, int32_t *accepted, int *n_accepted)
{
    if (r->err)
        return r->err;
    memcpy(accepted, r->draft, (size_t)r->n_accepted * sizeof *accepted);
    accepted[r->n_accepted] = r->token;
    *n_accepted = r->n_accepted + 1;
    return SPEC_OK;
}

/* Append the accepted tokens, roll the caches back to them and hand them out. */
static void accept(struct engine *e, struct slot *sl, const int32_t *accepted, int n_accepted)
{
    const int keep = (int)sl->n_hist + n_accepted - 1;
    int rc = model_seq_truncate(sl->tseq, keep);
    if (!rc && sl->dseq && model_seq_len(sl->dseq) > keep)
        rc = model_seq_truncate(sl->dseq, keep);
    if (rc) {
        finish(sl, ENGINE_FINISH_ERROR, rc);
        return;
    }
    sl->st.n_target_passes++;
    sl->st.n_drafted += sl->n_drafts;
    sl->st.n_accepted += n_accepted - 1;
    if (sl->n_drafts > 0) {
        const double w = 0.2;
        sl->accept_rate = (1.0 - w) * sl->accept_rate + w * (double)(n_accepted - 1) / sl->n_drafts;
    } else if (sl->speculative && sl->gamma == 0) {
        /* a round the adaptive choice left undrafted: drift back toward the prior, so a request whose
         * early drafts failed is probed again every few dozen rounds */
        sl->accept_rate += ACCEPT_RECOVERY * (ACCEPT_PRIOR - sl->accept_rate);
    }
    const struct tok *tok = model_tokenizer(e->cfg.target);
    bool done = false;
    enum engine_finish fin = ENGINE_FINISH_LENGTH;
    int n_new = 0;
    while (n_new < n_accepted && !done) {
        const int32_t t = accepted[n_new++];
        sl->hist[sl->n_hist++] = t;
        sl->n_gen++;
        bool stopped = false;
        rc = push_text(sl, t, &stopped);
        if (rc) {
            finish(sl, ENGINE_FINISH_ERROR, rc);
            return;
        }
        if (stopped || tok_is_eog(tok, t)) {
            if (!stopped) /* a stop string cuts the text before such bytes; the end of generation keeps them */
                flush_text(sl);
            fin = ENGINE_FINISH_STOP;
            done = true;
        } else if (sl->n_gen >= sl->max_tokens || sl->n_hist >= (size_t)e->cfg.n_ctx) {
            done = true;
        }
    }
    if (deliver(sl, accepted, n_new, done, fin, SPEC_OK) != 0 && !done)
        finish(sl, ENGINE_FINISH_CANCELLED, SPEC_OK);
}

/* Running estimate of the target pass cost, for the adaptive γ. */
static void update_fit(struct engine *e, int n_drafts, double t_target)
{
    const double decay = 0.95, x = n_drafts;
    e->fit_s0 = decay * e->fit_s0 + 1.0;
    e->fit_sx = decay * e->fit_sx + x;
    e->fit_sxx = decay * e->fit_sxx + x * x;
    e->fit_sy = decay * e->fit_sy + t_target;
    e->fit_sxy = decay * e->fit_sxy + x * t_target;
}

int engine_step(struct engine *e)
{
    if (!e)
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < e->cfg.max_seqs; i++)
        if (e->slots[i].used && e->slots[i].cancel)
            finish(&e->slots[i], ENGINE_FINISH_CANCELLED, SPEC_OK);
    prefill(e);

    struct slot *act[ENGINE_MAX_SEQS];
    int n_act = 0;
    for (int i = 0; i < e->cfg.max_seqs; i++)
        if (e->slots[i].used)
            act[n_act++] = &e->slots[i];
    if (n_act == 0)
        return SPEC_OK;
    for (int i = 0; i < n_act; i++) {
        struct slot *sl = act[i];
        const size_t room = (size_t)e->cfg.n_ctx - sl->n_hist; /* > 0: checked after every append */
        int gamma = sl->speculative ? choose_gamma(e, sl, n_act) : 0;
        if ((size_t)gamma > room - 1)
            gamma = (int)(room - 1);
        if (gamma > sl->max_tokens - sl->n_gen - 1)
            gamma = sl->max_tokens - sl->n_gen - 1;
        sl->gamma = gamma;
    }
    const double t_draft = propose(e, act, n_act);

    /* ONE batched target pass over every request's last accepted token and its drafts. */
    struct target_item items[ENGINE_MAX_SEQS];
    struct slot *who[ENGINE_MAX_SEQS];
    int n_items = 0, n_drafts = 0;
    for (int i = 0; i < n_act; i++) {
        struct slot *sl = act[i];
        if (!sl->used)
            continue; /* drafting failed */
        memcpy(sl->hist + sl->n_hist, sl->drafts, (size_t)sl->n_drafts * sizeof *sl->hist);
        who[n_items] = sl;
        items[n_items++] = (struct target_item){.s = sl->tseq, .ctx = sl->hist, .n_ctx_before = sl->n_hist - 1,
                                                .n = sl->n_drafts + 1, .sp = &sl->sp, .p = sl->p,
                                                .p_dev = sl->on_backend ? &sl->pd : NULL, .choice = sl->choice};
        n_drafts += sl->n_drafts;
    }
    if (n_items == 0)
        return SPEC_OK;
    const double t0 = now();
    const int rc = target_score(e->cfg.target, items, n_items, (size_t)e->cfg.penalty_window, &e->tsc);
    int32_t accepted[ENGINE_MAX_SEQS][ENGINE_MAX_DRAFT + 1];
    int n_accepted[ENGINE_MAX_SEQS], round[ENGINE_MAX_SEQS];
    struct kern_choose rounds[ENGINE_MAX_SEQS];
    const int backend_rc = rc ? rc : verify_on_backend(e, who, items, n_items, rounds, round);
    for (int i = 0; i < n_items; i++) {
        int err = rc ? rc : items[i].err;
        if (!err && round[i] >= 0)
            err = backend_rc ? backend_rc : round_tokens(&rounds[round[i]], accepted[i], &n_accepted[i]);
        else if (!err)
            err = verify(e, who[i], accepted[i], &n_accepted[i]);
        if (!err && (n_accepted[i] < 1 || n_accepted[i] > who[i]->n_drafts + 1))
            err = SPEC_E_RANGE; /* verification always yields the accepted drafts plus one token */
        n_accepted[i] = err ? err : n_accepted[i];
    }
    const double t_target = now() - t0;
    if (!rc)
        update_fit(e, n_drafts, t_target);
    for (int i = 0; i < n_items; i++) {
        who[i]->st.t_draft += t_draft;
        who[i]->st.t_target += t_target;
        if (n_accepted[i] < 0)
            finish(who[i], ENGINE_FINISH_ERROR, n_accepted[i]);
        else
            accept(e, who[i], accepted[i], n_accepted[i]);
    }
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* One request, start to end                                                                      */

struct collect {
    engine_update_fn fn;
    void *user;
    int32_t *out;
    int cap, n;
    bool done;
    enum engine_finish finish;
    int error;
    struct engine_stats stats;
};

static int collect_update(void *user, const struct engine_update *u)
{
    struct collect *c = user;
    for (int i = 0; i < u->n_tokens && c->n < c->cap; i++)
        c->out[c->n++] = u->tokens[i];
    if (u->done) {
        c->done = true;
        c->finish = u->finish;
        c->error = u->error;
        c->stats = *u->stats;
    }
    return c->fn ? c->fn(c->user, u) : 0;
}

int engine_generate(struct engine *e, const struct engine_request *req, engine_update_fn fn, void *user,
                    int32_t *out, int cap, int *n_out, enum engine_finish *finish_out, struct engine_stats *stats)
{
    if (!e || !req || !out || !n_out || !finish_out || cap < req->max_tokens)
        return SPEC_E_INVALID_ARG;
    struct collect c = {.fn = fn, .user = user, .out = out, .cap = cap};
    uint32_t id;
    SPEC_TRY(engine_submit(e, req, collect_update, &c, &id));
    while (!c.done)
        SPEC_TRY(engine_step(e));
    if (c.finish == ENGINE_FINISH_ERROR)
        return c.error;
    *n_out = c.n;
    *finish_out = c.finish;
    if (stats)
        *stats = c.stats;
    return SPEC_OK;
}
