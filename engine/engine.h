/* The speculative engine: draft → one batched target pass → verify, round after round.
 *
 * Each round the drafter (a small model, or prompt lookup when there is none) proposes γ tokens, the
 * target scores the last accepted token plus all γ in one forward pass, and verification keeps the
 * longest acceptable prefix plus one corrected or bonus token. Both KV caches are then rolled back to
 * the accepted history. Greedy output is token-identical to target-only greedy decoding; sampled
 * output follows the target's distribution exactly. γ = 0 is plain target-only decoding.
 *
 * Continuous batching: up to max_seqs requests are in flight; every engine_step() advances all of them
 * by one round, drafting batched across them and ONE target pass over all their positions. Requests
 * join (engine_submit) and leave (finish, cancel) between rounds. Batching never changes a greedy
 * request's tokens (the forward pass is batch-invariant). Random draws depend only on (seed, seq_id,
 * position, purpose), so a sampled request is reproducible too when its γ is fixed (adaptive off, or
 * adaptive with given costs: engine_config.costs); the adaptive γ follows measured costs, and where a
 * round ends decides which draws are used, so with it the same seed gives the same distribution but
 * not always the same sample.
 * Prompt caching: a finished request's slot keeps its KV caches, and a later prompt starting with
 * the same tokens (the next turn of a chat, a shared system prompt) takes the slot holding the
 * longest such start and skips its prefill. A cached KV row is the one prefill would write (the
 * forward pass is batch-invariant), so caching never changes output either; except with a backend
 * whose prefill takes a path of its own (CUDA's blas_prefill, docs/cuda.md), where a kept row was
 * written by a decode step and a prefilled one by that path.
 * The engine is single-threaded: call it from one thread; callbacks must not call it. */
#ifndef SPECD_ENGINE_ENGINE_H
#define SPECD_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "verify/verify.h"

/* What the adaptive γ weighs, in any one unit of time: a target pass costs target_pass plus
 * per_draft for each draft token it scores, and drafting a token for all requests costs draft_step. */
struct engine_costs {
    double target_pass, per_draft, draft_step;
};

struct engine_config {
    struct model *target;
    struct model *draft; /* NULL: prompt-lookup (n-gram) drafting */
    int n_ctx;           /* context per sequence; <= 0: the target's training context */
    int draft_max;       /* largest γ (1..ENGINE_MAX_DRAFT) */
    int draft_min;       /* smallest γ the adaptive choice may pick (0..draft_max); 0 lets a round go
                          * without drafts when they do not pay (a useless draft, or many requests
                          * sharing the passes), and such rounds let the acceptance estimate drift back
                          * up so that drafting is tried again now and then */
    bool adaptive;       /* choose γ each round from acceptance and cost; else always draft_max */
    const struct engine_costs *costs; /* NULL: the adaptive γ weighs the passes' measured times; else
                                       * these (copied by engine_new, all > 0), so that its choices, and a
                                       * sampled request's draws with them, repeat from run to run */
    float draft_min_prob; /* stop a draft run once the draft's probability of its token falls below */
    int penalty_window;  /* tokens the repetition penalties look back over (llama.cpp: 64) */
    int max_seqs;        /* requests generating at once, batched together (1..ENGINE_MAX_SEQS); 0: 1 */
    bool host_sampling;  /* process and verify the rows of sampled requests and of greedy ones with
                          * penalties on the host even where the backend can do it without moving logits
                          * (kern_backend_ops.sample_process/choose, the CUDA backend): for A/B comparisons */
    bool host_draft_ids; /* greedy draft runs' tokens cross to the host every pass even where the backend
                          * could keep them there until the run ends (draft_model_run.ids_dev): for A/B
                          * comparisons */
};

#define ENGINE_MAX_DRAFT 32
#define ENGINE_MAX_SEQS 64
#define ENGINE_MAX_STOP 8       /* stop strings per request */
#define ENGINE_MAX_STOP_LEN 128 /* bytes per stop string */

enum engine_finish {
    ENGINE_FINISH_STOP = 0,      /* end-of-generation token or a stop string */
    ENGINE_FINISH_LENGTH = 1,    /* max_tokens or the context limit */
    ENGINE_FINISH_CANCELLED = 2, /* cancelled by the caller */
    ENGINE_FINISH_ERROR = 3,     /* a named error ended the request (engine_update.error) */
};

struct engine_request {
    const int32_t *prompt;
    int n_prompt;
    int max_tokens;
    struct verify_params sampling;
    bool speculative;  /* false: target-only decoding (the A/B baseline) */
    int draft_max;     /* this request's largest γ; 0: the engine's */
    uint64_t seq_id;   /* random stream of this request */
    const char *const *stop; /* n_stop stop strings (copied at submit); the text ends before the first
                              * one that appears, and finish is STOP */
    int n_stop;
};

struct engine_stats {
    int n_prompt;
    int n_prompt_cached; /* prompt tokens whose KV rows a finished request had left in the caches */
    int n_generated;
    int n_target_passes; /* decode rounds, each one batched target pass */
    int n_drafted;
    int n_accepted;      /* draft tokens accepted (bonus and corrected tokens not counted) */
    double t_prefill;    /* seconds; a batched phase counts fully for every request in it */
    double t_draft;
    double t_target;     /* scoring passes, verification included */
};

/* What one round produced for one request. The last update of a request has done set. */
struct engine_update {
    const int32_t *tokens; /* tokens accepted this round, in order */
    int n_tokens;
    const char *text;      /* their text: whole UTF-8 characters only; text that could be the start of a
                            * stop string is held back until it is known not to be one */
    size_t n_text;
    bool done;
    enum engine_finish finish;        /* when done */
    int error;                        /* when done with ENGINE_FINISH_ERROR: the named error */
    const struct engine_stats *stats; /* when done */
};

/* Called from engine_step() (or engine_generate()); a non-zero return cancels the request, which then
 * gets one more, final update. Pointers in the update are valid during the call only. */
typedef int (*engine_update_fn)(void *user, const struct engine_update *u);

struct engine;

int engine_new(const struct engine_config *cfg, struct engine **out);
void engine_free(struct engine *e);

/* Context per sequence (resolved), and the configured limits. */
int engine_n_ctx(const struct engine *e);
int engine_max_seqs(const struct engine *e);
int engine_n_active(const struct engine *e);

/* Queue a request; it is prefilled and joins the batch at the next engine_step(). *id names it for
 * engine_cancel(). SPEC_E_BUSY when max_seqs requests are active, SPEC_E_CONTEXT_FULL when the
 * prompt does not leave room for one token, SPEC_E_RANGE for bad sampling settings or too many /
 * too long stop strings, SPEC_E_INVALID_ARG for an empty prompt or a token outside the vocabulary. */
int engine_submit(struct engine *e, const struct engine_request *req, engine_update_fn fn, void *user,
                  uint32_t *id);

/* End a request: it gets its final update (finish CANCELLED) at the next engine_step().
 * SPEC_E_NOT_FOUND when no active request has that id. */
int engine_cancel(struct engine *e, uint32_t id);

/* Prefill newly submitted requests, then advance every active request by one round: batched
 * drafting, ONE target pass over all of them, verification, rollback, updates. A failure that hits
 * a request (a numeric error in its rows, a backend error in a shared pass) finishes that request
 * with ENGINE_FINISH_ERROR; the others go on. Does nothing when no request is active. */
int engine_step(struct engine *e);

/* Convenience for one request: submit, step until it is done, with the tokens in out (capacity
 * cap >= max_tokens). Other active requests advance too. Errors as engine_submit(), or the error
 * that ended the request. */
int engine_generate(struct engine *e, const struct engine_request *req, engine_update_fn fn, void *user,
                    int32_t *out, int cap, int *n_out, enum engine_finish *finish, struct engine_stats *stats);

const char *engine_finish_name(enum engine_finish f);

#endif
