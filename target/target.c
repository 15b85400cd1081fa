#include <stdlib.h>

#include "common/err.h"
#include "target/target.h"

int target_scratch_init(struct target_scratch *ts, int32_t n_vocab)
{
    if (n_vocab <= 0)
        return SPEC_E_INVALID_ARG;
    *ts = (struct target_scratch){.n_vocab = n_vocab};
    return verify_scratch_new(n_vocab, &ts->vs);
}

void target_scratch_release(struct target_scratch *ts)
{
    free(ts->logits);
    verify_scratch_free(ts->vs);
    *ts = (struct target_scratch){0};
}

/* At most this many items per pass: the batch items live on the stack. */
#define TARGET_MAX_ITEMS 64

int target_score(struct model *m, struct target_item *items, int n_items, size_t penalty_window,
                 struct target_scratch *ts)
{
    if (!m || !items || n_items <= 0 || n_items > TARGET_MAX_ITEMS || model_n_vocab(m) != ts->n_vocab)
        return SPEC_E_INVALID_ARG;
    const size_t v = (size_t)ts->n_vocab;
    size_t rows = 0; /* rows whose logits come to the host */
    for (int i = 0; i < n_items; i++) {
        const struct target_item *it = &items[i];
        if (it->n <= 0 || !it->ctx || !it->sp || (it->sp->temperature == 0.0f && !it->choice && !it->p_dev) ||
            (it->p_dev && verify_params_raw_greedy(it->sp)) || (!it->p && !it->p_dev))
            return SPEC_E_INVALID_ARG;
        if (!verify_params_raw_greedy(it->sp) && !it->p_dev)
            rows += (size_t)it->n;
    }
    if (rows > ts->cap_rows) {
        float *grown = realloc(ts->logits, rows * v * sizeof *grown);
        if (!grown)
            return SPEC_E_NOMEM;
        ts->logits = grown;
        ts->cap_rows = rows;
    }
    struct model_batch_item batch[TARGET_MAX_ITEMS];
    struct kern_sampler ks[TARGET_MAX_ITEMS];
    size_t row = 0;
    for (int i = 0; i < n_items; i++) {
        batch[i] = (struct model_batch_item){.s = items[i].s, .tokens = items[i].ctx + items[i].n_ctx_before,
                                             .n = items[i].n, .all_logits = true};
        if (verify_params_raw_greedy(items[i].sp)) {
            batch[i].argmax = items[i].choice;
        } else if (items[i].p_dev) {
            ks[i] = verify_sampler(items[i].sp);
            batch[i].sampler = &ks[i];
            batch[i].probs = items[i].p_dev;
            batch[i].window_ctx = items[i].ctx;
            batch[i].window_end0 = items[i].n_ctx_before + 1;
            batch[i].window_len = penalty_window;
        } else {
            batch[i].logits = ts->logits + row * v;
            row += (size_t)items[i].n;
        }
    }
    SPEC_TRY(model_forward_batch(m, batch, n_items));
    for (int i = 0; i < n_items; i++) {
        struct target_item *it = &items[i];
        it->err = SPEC_OK;
        for (int r = 0; r < it->n && !it->err && !it->p_dev; r++) {
            if (batch[i].argmax) {
                it->err = it->choice[r] < 0 ? SPEC_E_NUMERIC : SPEC_OK;
                continue;
            }
            const int32_t *w;
            size_t nw;
            float *pr = it->p + (size_t)r * v;
            verify_penalty_window(it->ctx, it->n_ctx_before + (size_t)r + 1, penalty_window, &w, &nw);
            it->err = verify_process(it->sp, batch[i].logits + (size_t)r * v, ts->n_vocab, w, nw, ts->vs, pr);
            if (!it->err && it->sp->temperature == 0.0f)
                it->err = verify_argmax(pr, ts->n_vocab, &it->choice[r]);
        }
    }
    return SPEC_OK;
}
