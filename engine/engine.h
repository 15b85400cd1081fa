/* The speculative engine: draft → one batched target pass → verify, round after round.
 *
 * Each round the drafter (a small model, or prompt lookup when there is none) proposes γ tokens, the
 * target scores the last accepted token plus all γ in one forward pass, and verification keeps the
 * longest acceptable prefix plus one corrected or bonus token. Both KV caches are then rolled back to
 * the accepted history. Greedy output is token-identical to target-only greedy decoding; sampled
 * output follows the target's distribution exactly. γ = 0 is plain target-only decoding. */
#ifndef SPECD_ENGINE_ENGINE_H
#define SPECD_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "verify/verify.h"

struct engine_config {
    struct model *target;
    struct model *draft; /* NULL: prompt-lookup (n-gram) drafting */
    int n_ctx;           /* context per sequence; <= 0: the target's training context */
    int draft_max;       /* largest γ (1..ENGINE_MAX_DRAFT) */
    int draft_min;       /* smallest γ the adaptive choice may pick (1..draft_max) */
    bool adaptive;       /* choose γ each round from acceptance and cost; else always draft_max */
    float draft_min_prob; /* stop a draft run once the draft's probability of its token falls below */
    int penalty_window;  /* tokens the repetition penalties look back over (llama.cpp: 64) */
};

#define ENGINE_MAX_DRAFT 32

enum engine_finish {
    ENGINE_FINISH_STOP = 0,      /* end-of-generation token */
    ENGINE_FINISH_LENGTH = 1,    /* max_tokens or the context limit */
    ENGINE_FINISH_CANCELLED = 2, /* the token callback asked to stop */
};

struct engine_request {
    const int32_t *prompt;
    int n_prompt;
    int max_tokens;
    struct verify_params sampling;
    bool speculative; /* false: target-only decoding (the A/B baseline) */
    uint64_t seq_id;  /* random stream of this request */
};

struct engine_stats {
    int n_prompt;
    int n_generated;
    int n_target_passes; /* decode rounds, each one batched target pass */
    int n_drafted;
    int n_accepted;      /* draft tokens accepted (bonus and corrected tokens not counted) */
    double t_prefill;    /* seconds */
    double t_draft;
    double t_target;     /* scoring passes, verification included */
};

/* Called with each batch of newly accepted tokens; a non-zero return cancels the request. */
typedef int (*engine_token_fn)(void *user, const int32_t *tokens, int n);

struct engine;

int engine_new(const struct engine_config *cfg, struct engine **out);
void engine_free(struct engine *e);

/* Generate up to req->max_tokens tokens into out (capacity cap >= max_tokens). SPEC_E_CONTEXT_FULL
 * when the prompt does not leave room for one token, SPEC_E_RANGE for bad sampling settings,
 * SPEC_E_INVALID_ARG for an empty prompt or a token outside the vocabulary. */
int engine_generate(struct engine *e, const struct engine_request *req, engine_token_fn on_tokens, void *user,
                    int32_t *out, int cap, int *n_out, enum engine_finish *finish, struct engine_stats *stats);

const char *engine_finish_name(enum engine_finish f);

#endif
