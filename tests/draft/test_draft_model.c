/* A draft model's runs (draft_model_propose): greedy runs whose tokens stay on the backend from pass to
 * pass propose what runs whose tokens cross to the host every pass propose. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "draft/draft.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tests/support/tsupport.h"

static struct kern_backend *be;

static void setup(void)
{
    be = tsupport_backend(2);
}

static void teardown(void)
{
    kern_backend_destroy(be);
}

TestSuite(draft_model, .init = setup, .fini = teardown);

enum { RUNS = 3, MAX_OUT = 7, N_CTX = 64 };

/* Histories of three requests: two prompts and one that repeats a token (its own greedy run). */
static const int32_t history[RUNS][12] = {
    {1, 77, 260, 5, 299, 42, 42, 180, 3, 250, 17, 9},
    {4, 8, 15, 16, 23, 42},
    {2, 2, 2, 2, 2},
};
static const size_t history_len[RUNS] = {12, 6, 5};
static const int max_out[RUNS] = {7, 3, 1};

struct side {
    struct model_seq *s[RUNS];
    int32_t ctx[RUNS][N_CTX], out[RUNS][MAX_OUT];
    struct draft_model_run runs[RUNS];
};

/* One call for the three runs, each after its cache already holds part of its history (a round's
 * catch-up feeds the rest), kept on the backend (ids) or not. */
static void propose(struct model *m, struct side *sd, struct kern_tensor *ids, float *logits,
                    const struct verify_params *sp, struct verify_scratch *vs)
{
    for (int i = 0; i < RUNS; i++) {
        cr_assert_eq(model_seq_new(m, N_CTX, &sd->s[i]), 0);
        memcpy(sd->ctx[i], history[i], history_len[i] * sizeof(int32_t));
        const struct model_batch_item start = {.s = sd->s[i], .tokens = history[i], .n = i + 1};
        cr_assert_eq(model_forward_batch(m, &start, 1), 0);
        sd->runs[i] = (struct draft_model_run){.s = sd->s[i], .sp = sp, .seq_id = (uint64_t)i, .ctx = sd->ctx[i],
                                               .n_ctx = history_len[i], .max_out = max_out[i], .out = sd->out[i],
                                               .logits = logits, .ids_dev = ids ? &ids[i] : NULL};
    }
    cr_assert_eq(draft_model_propose(m, sd->runs, RUNS, 0, 0.0f, vs), 0);
}

Test(draft_model, greedy_runs_kept_on_the_backend_propose_the_hosts_tokens)
{
    const struct model_synth_config c = {.arch = MODEL_ARCH_LLAMA, .wtype = SPEC_Q8_0, .n_layer = 2, .n_embd = 64,
                                         .n_head = 4, .n_head_kv = 2, .n_ff = 96, .n_vocab = 300, .n_ctx = N_CTX,
                                         .seed = 7};
    struct mem_model mm = tsupport_load_synth(&c, be, (struct model_config){.max_batch = 8});
    const struct verify_params greedy = verify_params_default();
    cr_assert(verify_params_raw_greedy(&greedy));
    struct verify_scratch *vs;
    cr_assert_eq(verify_scratch_new(model_n_vocab(mm.m), &vs), 0);
    float *logits = malloc((size_t)model_n_vocab(mm.m) * sizeof(float));
    struct kern_tensor ids[RUNS];
    for (int i = 0; i < RUNS; i++)
        cr_assert_eq(be->ops->tensor_alloc(be, SPEC_I32, 1, MAX_OUT, &ids[i]), 0);
    static struct side host, kept;
    propose(mm.m, &host, NULL, logits, &greedy, vs);
    propose(mm.m, &kept, ids, logits, &greedy, vs);
    int moves = 0;
    for (int i = 0; i < RUNS; i++) {
        const struct draft_model_run *h = &host.runs[i], *k = &kept.runs[i];
        cr_assert_eq(h->err, SPEC_OK);
        cr_assert_eq(k->err, SPEC_OK);
        cr_assert_eq(h->n_out, max_out[i]);
        cr_assert_eq(k->n_out, max_out[i], "run %d: %d tokens kept, %d asked", i, k->n_out, max_out[i]);
        for (int t = 0; t < max_out[i]; t++) {
            cr_assert_eq(k->out[t], h->out[t], "run %d token %d: %d kept, %d from the host", i, t, k->out[t],
                         h->out[t]);
            cr_assert_eq(kept.ctx[i][history_len[i] + (size_t)t], h->out[t], "run %d: token %d after its history", i, t);
            moves += t > 0 && h->out[t] != h->out[t - 1];
        }
        int32_t on_backend[MAX_OUT];
        cr_assert_eq(be->ops->rows_to_host(be, &ids[i], 0, max_out[i], on_backend), 0);
        cr_assert_arr_eq(on_backend, k->out, (size_t)max_out[i] * sizeof(int32_t), "run %d: kept on the backend", i);
        /* the catch-up and a pass for each token but the last, as on the host */
        cr_assert_eq(model_seq_len(kept.s[i]), model_seq_len(host.s[i]));
        cr_assert_eq(model_seq_len(kept.s[i]), (int)history_len[i] + max_out[i] - 1);
    }
    cr_assert(moves >= 3, "the runs hardly moved (%d times): they test little", moves);

    /* an ids tensor with fewer rows than the run's tokens is refused */
    struct kern_tensor small;
    cr_assert_eq(be->ops->tensor_alloc(be, SPEC_I32, 1, 2, &small), 0);
    struct draft_model_run bad = host.runs[1];
    bad.ids_dev = &small;
    cr_assert_eq(model_seq_truncate(bad.s, 3), 0);
    cr_assert_eq(draft_model_propose(mm.m, &bad, 1, 0, 0.0f, vs), SPEC_E_INVALID_ARG);
    be->ops->tensor_free(be, &small);

    for (int i = 0; i < RUNS; i++) {
        be->ops->tensor_free(be, &ids[i]);
        model_seq_free(host.s[i]);
        model_seq_free(kept.s[i]);
    }
    free(logits);
    verify_scratch_free(vs);
    tsupport_mem_model_free(&mm);
}
