/* Target scoring: ONE forward pass of the target model over the last accepted token plus the draft
 * tokens of every active sequence (γ may differ per sequence), yielding the processed distribution p
 * at every position (the same sampler settings as each request, so verification compares like with
 * like), and for greedy requests the greedy token. Raw greedy requests get their tokens from the
 * backend, so only ids cross to the host for them. */
#ifndef SPECD_TARGET_TARGET_H
#define SPECD_TARGET_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "verify/verify.h"

/* One sequence's part of a scoring pass. */
struct target_item {
    struct model_seq *s;
    const int32_t *ctx;       /* the whole history, the n scored tokens included */
    size_t n_ctx_before;      /* the scored tokens are ctx[n_ctx_before .. n_ctx_before + n) */
    int n;
    const struct verify_params *sp;
    float *p;                 /* out: n x n_vocab processed rows; row i predicts the token after ctx[n_ctx_before + i].
                               * Not written for raw greedy requests (verify_params_raw_greedy), nor with p_dev */
    struct kern_tensor *p_dev; /* NULL, or for a request that is not raw greedy (verify_params_raw_greedy) at least
                                * n rows of n_vocab on the model's backend: the rows are made there
                                * (kern_backend_ops.sample_process; one-hot on the choice when greedy) */
    int32_t *choice;          /* out, greedy requests without p_dev: the n greedy tokens, choice[i] from row i */
    int err;                  /* out: a named error in this item's rows (the others are still valid) */
};

/* Raw logits of a pass, grown to the rows it needs. */
struct target_scratch {
    int32_t n_vocab;
    size_t cap_rows;
    float *logits;
    struct verify_scratch *vs;
};

int target_scratch_init(struct target_scratch *ts, int32_t n_vocab);
void target_scratch_release(struct target_scratch *ts);

/* Append every item's tokens to its sequence in one batched forward and fill each item's p. The
 * penalty window of row i ends at ctx[n_ctx_before + i]. A failed pass is returned and leaves every
 * sequence unchanged; a numeric error in one item's rows goes to that item's err. */
int target_score(struct model *m, struct target_item *items, int n_items, size_t penalty_window,
                 struct target_scratch *ts);

#endif
