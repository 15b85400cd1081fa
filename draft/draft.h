/* Draft proposers: cheap guesses of the next tokens that the target then verifies.
 *
 * Prompt lookup (n-gram) needs no draft model: it finds the latest earlier occurrence of the
 * sequence's last n tokens and proposes what followed it. Its q is one-hot on each proposed token,
 * which rejection sampling handles like any other draft distribution. */
#ifndef SPECD_DRAFT_DRAFT_H
#define SPECD_DRAFT_DRAFT_H

#include <stddef.h>
#include <stdint.h>

struct draft_ngram_params {
    int ngram_max; /* longest suffix to match, tried first (e.g. 4) */
    int ngram_min; /* shortest suffix still worth matching (e.g. 2) */
};

/* Propose up to max_out tokens continuing hist[0..n_hist). *n_out is 0 when no suffix of length
 * ngram_min..ngram_max occurs earlier in hist. SPEC_E_INVALID_ARG for bad parameters. */
int draft_ngram_propose(const struct draft_ngram_params *p, const int32_t *hist, size_t n_hist, int max_out,
                        int32_t *out, int *n_out);

#endif
