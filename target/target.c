#include <stdlib.h>

#include "common/err.h"
#include "target/target.h"

int target_scratch_init(struct target_scratch *ts, int32_t n_vocab, int max_rows)
{
    if (n_vocab <= 0 || max_rows <= 0)
        return SPEC_E_INVALID_ARG;
    *ts = (struct target_scratch){.max_rows = max_rows, .n_vocab = n_vocab};
    const size_t n = (size_t)max_rows * (size_t)n_vocab;
    ts->logits = malloc(n * sizeof *ts->logits);
    ts->p = malloc(n * sizeof *ts->p);
    int rc = ts->logits && ts->p ? verify_scratch_new(n_vocab, &ts->vs) : SPEC_E_NOMEM;
    if (rc)
        target_scratch_release(ts);
    return rc;
}

void target_scratch_release(struct target_scratch *ts)
{
    free(ts->logits);
    free(ts->p);
    verify_scratch_free(ts->vs);
    *ts = (struct target_scratch){0};
}

int target_score(struct model *m, struct model_seq *s, const int32_t *ctx, size_t n_ctx_before,
                 const int32_t *tokens, int n, const struct verify_params *sp, size_t penalty_window,
                 struct target_scratch *ts)
{
    if (n <= 0 || n > ts->max_rows || model_n_vocab(m) != ts->n_vocab)
        return SPEC_E_INVALID_ARG;
    int rc = model_forward(m, s, tokens, n, ts->logits);
    if (rc)
        return rc;
    const size_t v = (size_t)ts->n_vocab;
    for (int i = 0; i < n; i++) {
        const int32_t *w;
        size_t nw;
        verify_penalty_window(ctx, n_ctx_before + (size_t)i + 1, penalty_window, &w, &nw);
        rc = verify_process(sp, ts->logits + (size_t)i * v, ts->n_vocab, w, nw, ts->vs, ts->p + (size_t)i * v);
        if (rc)
            return rc;
    }
    return SPEC_OK;
}
