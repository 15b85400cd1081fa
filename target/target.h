/* Target scoring: one forward pass of the target model over the last accepted token plus the draft
 * tokens, yielding the processed distribution p at every position (the same sampler settings as
 * the request, so verification compares like with like). */
#ifndef SPECD_TARGET_TARGET_H
#define SPECD_TARGET_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "verify/verify.h"

/* Scratch for scoring: logits and processed rows of up to max_rows positions. */
struct target_scratch {
    int max_rows;
    int32_t n_vocab;
    float *logits; /* max_rows x n_vocab */
    float *p;      /* max_rows x n_vocab */
    struct verify_scratch *vs;
};

int target_scratch_init(struct target_scratch *ts, int32_t n_vocab, int max_rows);
void target_scratch_release(struct target_scratch *ts);

/* Append tokens[0..n) to the sequence (they continue ctx[0..n_ctx_before)) and fill ts->p with the
 * processed distribution after each of them. ctx holds the whole sequence including the new
 * tokens; the penalty window of row i ends at ctx[n_ctx_before + i]. */
int target_score(struct model *m, struct model_seq *s, const int32_t *ctx, size_t n_ctx_before,
                 const int32_t *tokens, int n, const struct verify_params *sp, size_t penalty_window,
                 struct target_scratch *ts);

#endif
