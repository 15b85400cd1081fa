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

/* Drafting with a small model of the same vocabulary, for many sequences at once: each forward pass
 * of the draft feeds one token of every sequence still drafting. A sequence's draft KV cache always
 * holds a prefix of its accepted history; the tokens after it are fed first. */
#define DRAFT_MAX_RUNS 64

struct draft_model_run {
    struct model_seq *s;            /* the draft model's sequence */
    const struct verify_params *sp; /* the request's sampler settings: q is processed like p */
    uint64_t seq_id;                /* the request's random stream */
    int32_t *ctx;                   /* accepted history, with room for max_out drafts after it */
    size_t n_ctx;
    int max_out;                    /* >= 1 */
    int32_t *out;                   /* max_out proposed tokens */
    float *q;                       /* max_out x n_vocab processed draft distributions; not written for raw
                                     * greedy runs (verify_params_raw_greedy): greedy verification compares
                                     * tokens, and the backend picks them without moving logits to the host */
    float *logits;                  /* n_vocab floats of scratch */
    struct kern_tensor *q_dev;      /* NULL, or for a run that is not raw greedy max_out rows of n_vocab on the
                                     * model's backend: q is made there (kern_backend_ops.sample_process) and
                                     * the token drawn there (sample_choose), and q is not written. A greedy
                                     * run's rows there are one-hot, so it takes them only when min_prob is 0
                                     * (its early stop weighs the raw probability of its token) */
    struct kern_tensor *ids_dev;    /* NULL, or max_out rows of one SPEC_I32 column on the model's backend, for a
                                     * raw greedy run when min_prob is 0 (nothing stops it early): its drafts
                                     * stay there from one pass to the next (kern_backend_ops.argmax_keep,
                                     * get_rows_kept) and cross to the host once, when the run ends, instead of
                                     * a round trip a token */
    int n_out;                      /* result: tokens proposed (>= 1 unless err) */
    int err;                        /* result: a named error that ended this run's drafting */
};

/* Propose up to max_out tokens for each run, writing them to out (and after ctx[n_ctx], for the
 * penalty windows) and their distributions to q (or q_dev). A run stops early once the draft's own probability
 * of its next token falls below min_prob (at least one token is always proposed). A numeric error in
 * one run's rows sets that run's err and the others go on; a failed forward pass is returned (every
 * run's cache is then a prefix of its history still, to be truncated by the caller). */
int draft_model_propose(struct model *m, struct draft_model_run *runs, int n_runs, size_t penalty_window,
                        float min_prob, struct verify_scratch *vs);

#endif
