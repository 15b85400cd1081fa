/* Draft proposers: cheap guesses of the next tokens that the target then verifies.
 *
 * Prompt lookup (n-gram) needs no draft model: it finds the latest earlier occurrence of the
 * sequence's last n tokens and proposes what followed it. Its q is one-hot on each proposed token,
 * which rejection sampling handles like any other draft distribution. */
#ifndef SPECD_DRAFT_DRAFT_H
#define SPECD_DRAFT_DRAFT_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "verify/verify.h"

struct draft_ngram_params {
    int ngram_max; /* longest suffix to match, tried first (e.g. 4) */
    int ngram_min; /* shortest suffix still worth matching (e.g. 2) */
};

/* Propose up to max_out tokens continuing hist[0..n_hist). *n_out is 0 when no suffix of length
 * ngram_min..ngram_max occurs earlier in hist. SPEC_E_INVALID_ARG for bad parameters. */
int draft_ngram_propose(const struct draft_ngram_params *p, const int32_t *hist, size_t n_hist, int max_out,
                        int32_t *out, int *n_out);

/* Drafting with a small model of the same vocabulary. The draft's KV cache always holds a prefix of
 * the accepted history; the tokens after it are fed before drafting. */
struct draft_model_run {
    struct model *m;
    struct model_seq *s;
    const struct verify_params *sp; /* the request's sampler settings: q is processed like p */
    size_t penalty_window;
    uint64_t seq_id;                /* the request's random stream */
    struct verify_scratch *vs;
    float *logits;                  /* n_vocab floats */
};

/* Propose up to max_out tokens after ctx[0..n_ctx), writing them to out and their processed draft
 * distributions to q (max_out x n_vocab). Drafting stops early once the draft's own probability of
 * its next token falls below min_prob (at least one token is always proposed). ctx needs room for
 * max_out more tokens: drafts are appended there for the penalty windows. */
int draft_model_propose(const struct draft_model_run *r, int32_t *ctx, size_t n_ctx, int max_out, float min_prob,
                        int32_t *out, float *q, int *n_out);

#endif
