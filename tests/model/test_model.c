/* The llama/qwen2 forward pass on synthetic models (batching, rollback, limits, corrupted files, an
 * independent naive reference) and on the real models against llama.cpp's logits. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "model/gguf.h"
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

TestSuite(model, .init = setup, .fini = teardown);

/* A small llama with grouped-query attention and its own output matrix. */
static struct model_synth_config llama_cfg(enum spec_dtype wtype)
{
    return (struct model_synth_config){.arch = MODEL_ARCH_LLAMA, .wtype = wtype, .n_layer = 2, .n_embd = 64,
                                       .n_head = 4, .n_head_kv = 2, .n_ff = 96, .n_vocab = 300, .n_ctx = 64,
                                       .seed = 7};
}

/* A qwen2 (biases, NEOX rope) sized for K-quants, tied output. */
static struct model_synth_config qwen2_cfg(enum spec_dtype wtype)
{
    return (struct model_synth_config){.arch = MODEL_ARCH_QWEN2, .wtype = wtype, .n_layer = 2, .n_embd = 256,
                                       .n_head = 4, .n_head_kv = 1, .n_ff = 512, .n_vocab = 320, .n_ctx = 64,
                                       .tied_output = true, .seed = 11};
}

static int try_load(void *buf, size_t size, int max_batch, struct mem_model *mm, char *why, size_t why_cap)
{
    return tsupport_try_load(buf, size, be, (struct model_config){.max_batch = max_batch, .why = why, .why_cap = why_cap},
                             mm);
}

static struct mem_model load_synth(const struct model_synth_config *c, int max_batch)
{
    return tsupport_load_synth(c, be, (struct model_config){.max_batch = max_batch});
}

static struct model_seq *new_seq(struct model *m, int n_ctx)
{
    struct model_seq *s = NULL;
    cr_assert_eq(model_seq_new(m, n_ctx, &s), 0);
    return s;
}

static const int32_t prompt[11] = {1, 77, 260, 5, 299, 42, 42, 180, 3, 250, 17};

/* ---------------------------------------------------------------------------------------------- */

Test(model, reads_hyperparameters_and_rope_settings)
{
    struct model_synth_config c = llama_cfg(SPEC_F32);
    c.n_rot = 8;
    c.rope_scale = 4.0f;
    c.rope_freq_base = 500000.0f;
    struct mem_model mm = load_synth(&c, 0);
    const struct model_hparams *hp = model_hparams(mm.m);
    cr_assert_eq(hp->arch, MODEL_ARCH_LLAMA);
    cr_assert_eq(hp->n_vocab, 300);
    cr_assert_eq(model_n_vocab(mm.m), 300);
    cr_assert_eq(model_n_ctx_train(mm.m), 64);
    cr_assert_eq(hp->n_embd, 64);
    cr_assert_eq(hp->n_layer, 2);
    cr_assert_eq(hp->n_ff, 96);
    cr_assert_eq(hp->n_head, 4);
    cr_assert_eq(hp->n_head_kv, 2);
    cr_assert_eq(hp->head_dim, 16);
    cr_assert_eq(hp->n_rot, 8);
    cr_assert_float_eq(hp->norm_eps, 1e-5f, 1e-12);
    cr_assert_eq(hp->rope_freq_base, 500000.0f);
    cr_assert_eq(hp->rope_freq_scale, 0.25f);
    cr_assert_eq(tok_n_vocab(model_tokenizer(mm.m)), 300);
    cr_assert_str_eq(model_arch_name(MODEL_ARCH_QWEN2), "qwen2");
    tsupport_mem_model_free(&mm);
}

/* Every op computes a row the same way whatever the batch, so batching is bit-exact: n tokens (at most
 * 60; the prompt's, then more) in one forward, one at a time, and 4 at a time. */
static void check_batch_equals_sequential(const struct model_synth_config *c, int n)
{
    struct mem_model mm = load_synth(c, 0), small = load_synth(c, 4);
    const int nv = model_n_vocab(mm.m);
    int32_t tokens[60];
    for (int i = 0; i < n; i++)
        tokens[i] = (prompt[i % 11] + 37 * (i / 11)) % nv;
    float *batch = malloc(sizeof(float) * (size_t)(n * nv)), *seq = malloc(sizeof(float) * (size_t)(n * nv)),
          *chunked = malloc(sizeof(float) * (size_t)(n * nv));
    struct model_seq *a = new_seq(mm.m, 64), *b = new_seq(mm.m, 64), *d = new_seq(small.m, 64);
    cr_assert_eq(model_forward(mm.m, a, tokens, n, batch), 0);
    for (int i = 0; i < n; i++)
        cr_assert_eq(model_forward(mm.m, b, tokens + i, 1, seq + (size_t)i * nv), 0);
    cr_assert_eq(model_forward(small.m, d, tokens, n, chunked), 0);
    cr_assert_eq(model_seq_len(a), n);
    cr_assert_eq(model_seq_len(b), n);
    for (int i = 0; i < n; i++) {
        cr_assert_arr_eq(batch + (size_t)i * nv, seq + (size_t)i * nv, sizeof(float) * nv,
                         "%s %s: position %d differs between batch and one-by-one", model_arch_name(c->arch),
                         kern_dtype_info(c->wtype)->name, i);
        cr_assert_arr_eq(batch + (size_t)i * nv, chunked + (size_t)i * nv, sizeof(float) * nv,
                         "%s %s: position %d differs when the batch is split", model_arch_name(c->arch),
                         kern_dtype_info(c->wtype)->name, i);
    }
    /* Logits must say something: not all equal. */
    float lo = batch[0], hi = batch[0];
    for (int i = 0; i < n * nv; i++) {
        lo = fminf(lo, batch[i]);
        hi = fmaxf(hi, batch[i]);
    }
    cr_assert_gt(hi - lo, 1.0f);
    model_seq_free(a);
    model_seq_free(b);
    model_seq_free(d);
    free(batch);
    free(seq);
    free(chunked);
    tsupport_mem_model_free(&mm);
    tsupport_mem_model_free(&small);
}

Test(model, batch_forward_equals_token_by_token_llama_q8_0_gqa)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    check_batch_equals_sequential(&c, 11);
}

Test(model, batch_forward_equals_token_by_token_llama_f16_mha_tied)
{
    struct model_synth_config c = llama_cfg(SPEC_F16);
    c.n_head_kv = 4;
    c.tied_output = true;
    check_batch_equals_sequential(&c, 11);
}

Test(model, batch_forward_equals_token_by_token_qwen2_q4_k)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K);
    check_batch_equals_sequential(&c, 11);
}

/* A prompt long enough for a prefill's attention (several queries and heads a block on the GPU). */
Test(model, batch_forward_of_a_long_prompt_equals_token_by_token_qwen2_q4_k)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K);
    check_batch_equals_sequential(&c, 56);
}

Test(model, batch_forward_equals_token_by_token_qwen2_q6_k_untied)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q6_K);
    c.tied_output = false;
    check_batch_equals_sequential(&c, 11);
}

Test(model, batch_forward_equals_token_by_token_llama_q4_0_q4_1_q5_0)
{
    const enum spec_dtype types[] = {SPEC_Q4_0, SPEC_Q4_1, SPEC_Q5_0, SPEC_BF16};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        struct model_synth_config c = llama_cfg(types[i]);
        check_batch_equals_sequential(&c, 11);
    }
}

Test(model, forward_last_gives_the_last_row_of_forward)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    c.tok_kind = TOK_KIND_SPM; /* a sentencepiece vocabulary loads as well */
    struct mem_model mm = load_synth(&c, 4);
    const int nv = model_n_vocab(mm.m);
    float *all = malloc(sizeof(float) * (size_t)(11 * nv)), *last = malloc(sizeof(float) * (size_t)nv);
    struct model_seq *a = new_seq(mm.m, 0), *b = new_seq(mm.m, 0);
    cr_assert_eq(model_seq_n_ctx(a), 64, "n_ctx 0 means the training context");
    cr_assert_eq(model_forward(mm.m, a, prompt, 11, all), 0);
    cr_assert_eq(model_forward_last(mm.m, b, prompt, 10, NULL), 0);
    cr_assert_eq(model_seq_len(b), 10);
    cr_assert_eq(model_forward_last(mm.m, b, prompt + 10, 1, last), 0);
    cr_assert_arr_eq(last, all + (size_t)10 * nv, sizeof(float) * nv);
    /* the last row of 11 at once: gathered after a plain residual add, where the steps above (every
     * row an output) add the residual in the output norm */
    struct model_seq *c1 = new_seq(mm.m, 0);
    cr_assert_eq(model_forward_last(mm.m, c1, prompt, 11, last), 0);
    cr_assert_arr_eq(last, all + (size_t)10 * nv, sizeof(float) * nv);
    model_seq_free(c1);
    model_seq_free(a);
    model_seq_free(b);
    free(all);
    free(last);
    tsupport_mem_model_free(&mm);
}

/* A draft that scores only the first ids: those logits are the full model's, bit for bit, in every
 * row and through a batch with a last-row item; the rest are -inf. */
Test(model, n_logits_keeps_the_first_ids_exact_and_the_rest_minus_infinity)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K); /* tied output: the head is a view of token_embd */
    struct mem_model full = load_synth(&c, 4),
                     part = tsupport_load_synth(&c, be, (struct model_config){.max_batch = 4, .n_logits = 100});
    const int nv = model_n_vocab(full.m);
    cr_assert_eq(model_n_vocab(part.m), nv, "the vocabulary and the logit rows keep their size");
    float *want = malloc(sizeof(float) * (size_t)(11 * nv)), *got = malloc(sizeof(float) * (size_t)(11 * nv));
    struct model_seq *a = new_seq(full.m, 0), *b = new_seq(part.m, 0);
    cr_assert_eq(model_forward(full.m, a, prompt, 11, want), 0);
    cr_assert_eq(model_forward(part.m, b, prompt, 11, got), 0);
    for (int r = 0; r < 11; r++) {
        cr_assert_arr_eq(got + (size_t)r * nv, want + (size_t)r * nv, sizeof(float) * 100, "row %d", r);
        for (int j = 100; j < nv; j++)
            cr_assert(isinf(got[(size_t)r * nv + j]) && got[(size_t)r * nv + j] < 0, "row %d id %d", r, j);
    }
    cr_assert_eq(model_seq_truncate(b, 5), 0);
    struct model_seq *b2 = new_seq(part.m, 0);
    float *last = malloc(sizeof(float) * (size_t)nv);
    for (int j = 0; j < nv; j++)
        last[j] = 1.0f; /* every id is written */
    const struct model_batch_item items[2] = {
        {.s = b, .tokens = prompt + 5, .n = 6, .logits = got, .all_logits = true},
        {.s = b2, .tokens = prompt, .n = 11, .logits = last},
    };
    cr_assert_eq(model_forward_batch(part.m, items, 2), 0);
    cr_assert_arr_eq(got, want + (size_t)5 * nv, sizeof(float) * 100);
    cr_assert_arr_eq(last, want + (size_t)10 * nv, sizeof(float) * 100);
    for (int j = 100; j < nv; j++)
        cr_assert(isinf(last[j]) && last[j] < 0 && isinf(got[(size_t)5 * nv + j]), "id %d", j);
    model_seq_free(a);
    model_seq_free(b);
    model_seq_free(b2);
    free(want);
    free(got);
    free(last);
    tsupport_mem_model_free(&full);
    tsupport_mem_model_free(&part);
}

/* Speculative decoding's rollback: rejected draft tokens are forgotten and overwritten. */
Test(model, truncate_then_reforward_reproduces_the_logits)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q8_0);
    struct mem_model mm = load_synth(&c, 0);
    const int nv = model_n_vocab(mm.m);
    float *want = malloc(sizeof(float) * (size_t)(8 * nv)), *got = malloc(sizeof(float) * (size_t)(3 * nv)),
          *junk = malloc(sizeof(float) * (size_t)(4 * nv));
    struct model_seq *s = new_seq(mm.m, 16);
    cr_assert_eq(model_forward(mm.m, s, prompt, 8, want), 0);
    cr_assert_eq(model_seq_truncate(s, 5), 0);
    cr_assert_eq(model_seq_len(s), 5);
    const int32_t draft[4] = {9, 8, 7, 6};
    cr_assert_eq(model_forward(mm.m, s, draft, 4, junk), 0); /* a rejected draft */
    cr_assert_eq(model_seq_truncate(s, 5), 0);
    cr_assert_eq(model_forward(mm.m, s, prompt + 5, 3, got), 0);
    cr_assert_arr_eq(got, want + (size_t)5 * nv, sizeof(float) * (size_t)(3 * nv));
    cr_assert_eq(model_seq_truncate(s, 9), SPEC_E_RANGE, "cannot grow by truncating");
    cr_assert_eq(model_seq_truncate(s, -1), SPEC_E_RANGE);
    cr_assert_eq(model_seq_len(s), 8);
    model_seq_free(s);
    free(want);
    free(got);
    free(junk);
    tsupport_mem_model_free(&mm);
}

Test(model, context_overflow_is_refused_and_leaves_the_sequence_usable)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    struct mem_model mm = load_synth(&c, 0);
    const int nv = model_n_vocab(mm.m);
    float *want = malloc(sizeof(float) * (size_t)(8 * nv)), *got = malloc(sizeof(float) * (size_t)(8 * nv));
    struct model_seq *ref = new_seq(mm.m, 8), *s = new_seq(mm.m, 8);
    cr_assert_eq(model_forward(mm.m, ref, prompt, 8, want), 0);
    cr_assert_eq(model_forward(mm.m, s, prompt, 6, got), 0);
    cr_assert_eq(model_forward(mm.m, s, prompt + 6, 3, got), SPEC_E_CONTEXT_FULL);
    cr_assert_eq(model_forward_last(mm.m, s, prompt + 6, 3, NULL), SPEC_E_CONTEXT_FULL);
    cr_assert_eq(model_seq_len(s), 6);
    cr_assert_eq(model_forward(mm.m, s, prompt + 6, 2, got), 0);
    cr_assert_arr_eq(got, want + (size_t)6 * nv, sizeof(float) * (size_t)(2 * nv));
    cr_assert_eq(model_forward(mm.m, s, prompt, 1, got), SPEC_E_CONTEXT_FULL);
    model_seq_free(ref);
    model_seq_free(s);
    free(want);
    free(got);
    tsupport_mem_model_free(&mm);
}

Test(model, forward_rejects_bad_tokens_and_foreign_sequences)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    struct mem_model a = load_synth(&c, 0), b = load_synth(&c, 0);
    float *lg = malloc(sizeof(float) * 300 * 2);
    struct model_seq *s = new_seq(a.m, 8);
    const int32_t bad[2] = {5, 300}, neg = -1;
    cr_assert_eq(model_forward(a.m, s, bad, 2, lg), SPEC_E_INVALID_ARG);
    cr_assert_eq(model_forward(a.m, s, &neg, 1, lg), SPEC_E_INVALID_ARG);
    cr_assert_eq(model_forward(a.m, s, bad, 0, lg), SPEC_E_INVALID_ARG);
    cr_assert_eq(model_forward(b.m, s, bad, 1, lg), SPEC_E_INVALID_ARG, "a sequence belongs to its model");
    cr_assert_eq(model_seq_len(s), 0);
    model_seq_free(s);
    free(lg);
    tsupport_mem_model_free(&a);
    tsupport_mem_model_free(&b);
}

/* Several sequences in one batched forward (different histories, lengths and logits wanted, one of
 * them longer than a whole internal step) give exactly the logits each gets alone. */
static void check_multi_sequence_batch(const struct model_synth_config *c)
{
    const int max_batch = 6;
    struct mem_model mm = load_synth(c, max_batch);
    const size_t nv = (size_t)model_n_vocab(mm.m);
    enum { N_SEQ = 4 };
    static const int hist_len[N_SEQ] = {0, 3, 5, 1}, new_len[N_SEQ] = {9, 1, 3, 2};
    static const bool all[N_SEQ] = {true, false, true, false};
    struct model_seq *solo[N_SEQ], *batched[N_SEQ];
    float *want[N_SEQ], *got[N_SEQ];
    struct model_batch_item items[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        solo[i] = new_seq(mm.m, 32);
        batched[i] = new_seq(mm.m, 32);
        const int32_t *h = prompt + i; /* each sequence its own history */
        if (hist_len[i] > 0) {
            cr_assert_eq(model_forward_last(mm.m, solo[i], h, hist_len[i], NULL), 0);
            cr_assert_eq(model_forward_last(mm.m, batched[i], h, hist_len[i], NULL), 0);
        }
        const size_t rows = all[i] ? (size_t)new_len[i] : 1;
        want[i] = malloc(rows * nv * sizeof(float));
        got[i] = malloc(rows * nv * sizeof(float));
        const int32_t *toks = prompt + 1 + i;
        if (all[i])
            cr_assert_eq(model_forward(mm.m, solo[i], toks, new_len[i], want[i]), 0);
        else
            cr_assert_eq(model_forward_last(mm.m, solo[i], toks, new_len[i], want[i]), 0);
        items[i] = (struct model_batch_item){.s = batched[i], .tokens = toks, .n = new_len[i], .logits = got[i],
                                             .all_logits = all[i]};
    }
    cr_assert_eq(model_forward_batch(mm.m, items, N_SEQ), 0);
    for (int i = 0; i < N_SEQ; i++) {
        const size_t rows = all[i] ? (size_t)new_len[i] : 1;
        cr_assert_eq(model_seq_len(batched[i]), hist_len[i] + new_len[i]);
        cr_assert_arr_eq(got[i], want[i], rows * nv * sizeof(float), "sequence %d: batched logits differ from solo", i);
        model_seq_free(solo[i]);
        model_seq_free(batched[i]);
        free(want[i]);
        free(got[i]);
    }
    tsupport_mem_model_free(&mm);
}

Test(model, multi_sequence_batch_equals_each_sequence_alone_llama)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    check_multi_sequence_batch(&c);
}

Test(model, multi_sequence_batch_equals_each_sequence_alone_qwen2_q4_k)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K);
    check_multi_sequence_batch(&c);
}

/* Greedy outputs: in a batch split over internal steps, items that want only the argmax (of every
 * position or the last), the argmax with its probability, logits and argmax together, or nothing
 * get each position's largest logit (lowest id on ties) and its softmax probability, as computed
 * here from the logits of the same positions; with n_logits, only the scored ids are candidates. */
static void check_argmax_outputs(int n_logits)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K);
    struct mem_model mm = tsupport_load_synth(&c, be, (struct model_config){.max_batch = 6, .n_logits = n_logits});
    const int nv = model_n_vocab(mm.m);
    enum { N_SEQ = 4 };
    static const int new_len[N_SEQ] = {9, 4, 3, 2};
    static const bool all[N_SEQ] = {true, false, true, true};
    struct model_seq *solo[N_SEQ], *batched[N_SEQ];
    float *want[N_SEQ], *lg = malloc(sizeof(float) * 9 * (size_t)nv), prob[N_SEQ][10];
    int32_t pick[N_SEQ][10]; /* one more than the outputs, to see that nothing is written past them */
    struct model_batch_item items[N_SEQ + 1];
    for (int i = 0; i < N_SEQ; i++) {
        solo[i] = new_seq(mm.m, 32);
        batched[i] = new_seq(mm.m, 32);
        want[i] = malloc(sizeof(float) * (size_t)new_len[i] * (size_t)nv);
        cr_assert_eq(model_forward(mm.m, solo[i], prompt + i, new_len[i], want[i]), 0);
        for (int r = 0; r < 10; r++)
            pick[i][r] = -7, prob[i][r] = -7.0f;
        items[i] = (struct model_batch_item){.s = batched[i], .tokens = prompt + i, .n = new_len[i],
                                             .all_logits = all[i], .argmax = pick[i]};
    }
    items[1].argmax_prob = prob[1];
    items[2].argmax_prob = prob[2];
    items[3].logits = lg;
    struct model_seq *silent = new_seq(mm.m, 32);
    items[N_SEQ] = (struct model_batch_item){.s = silent, .tokens = prompt, .n = 5};
    cr_assert_eq(model_forward_batch(mm.m, items, N_SEQ + 1), 0);
    for (int i = 0; i < N_SEQ; i++) {
        const int first = all[i] ? 0 : new_len[i] - 1;
        for (int r = first; r < new_len[i]; r++) {
            const float *l = want[i] + (size_t)r * (size_t)nv;
            int32_t best = 0;
            for (int j = 1; j < nv; j++)
                best = l[j] > l[best] ? j : best;
            double sum = 0.0;
            for (int j = 0; j < nv; j++)
                sum += exp((double)l[j] - l[best]);
            const int at = r - first;
            cr_assert_eq(pick[i][at], best, "item %d position %d: %d, want %d", i, r, pick[i][at], best);
            cr_assert(n_logits <= 0 || best < n_logits);
            if (items[i].argmax_prob)
                cr_assert(fabs(prob[i][at] - 1.0 / sum) <= 1e-6 / sum, "item %d position %d: p %g, want %g", i, r,
                          prob[i][at], 1.0 / sum);
            else
                cr_assert_eq(prob[i][at], -7.0f, "no probability was asked for");
        }
        cr_assert_eq(pick[i][new_len[i] - first], -7, "item %d: nothing written past its outputs", i);
    }
    cr_assert_arr_eq(lg, want[3], sizeof(float) * 2 * (size_t)nv, "logits alongside the argmax");
    cr_assert_eq(model_seq_len(silent), 5);
    for (int i = 0; i < N_SEQ; i++) {
        model_seq_free(solo[i]);
        model_seq_free(batched[i]);
        free(want[i]);
    }
    model_seq_free(silent);
    free(lg);
    tsupport_mem_model_free(&mm);
}

Test(model, argmax_outputs_are_the_largest_logits_of_every_wanted_position)
{
    check_argmax_outputs(0);
}

Test(model, argmax_outputs_of_a_vocabulary_limited_model_stay_within_its_ids)
{
    check_argmax_outputs(100);
}

/* A chain of passes each fed the greedy id the pass before kept on the backend (a draft model's run)
 * gives the host's greedy ids, beside a sequence fed host tokens in the same passes, and a pass of
 * several kept ids with every position's output gives each position's id (a verification pass). */
Test(model, greedy_ids_kept_on_the_backend_chain_passes_as_the_hosts_do)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0); /* whose greedy run moves (qwen2_cfg's repeats a token) */
    struct mem_model mm = load_synth(&c, 6); /* the prompt takes two internal steps */
    enum { STEPS = 8 };
    struct model_seq *host = new_seq(mm.m, 32), *chain = new_seq(mm.m, 32), *solo = new_seq(mm.m, 32),
                     *beside = new_seq(mm.m, 32), *vh = new_seq(mm.m, 32), *vk = new_seq(mm.m, 32);
    struct kern_tensor ids;
    cr_assert_eq(be->ops->tensor_alloc(be, SPEC_I32, 1, 2 * STEPS, &ids), 0);
    int32_t want[STEPS], got[2 * STEPS], pick_solo, pick_beside;
    for (int k = 0; k < STEPS; k++) {
        const struct model_batch_item h = {.s = host, .tokens = k ? &want[k - 1] : prompt, .n = k ? 1 : 11,
                                           .argmax = &want[k]};
        cr_assert_eq(model_forward_batch(mm.m, &h, 1), 0);
        const int32_t *other = prompt + k % 7;
        const int n_other = k ? 1 : 4;
        const struct model_batch_item o = {.s = solo, .tokens = other, .n = n_other, .argmax = &pick_solo};
        cr_assert_eq(model_forward_batch(mm.m, &o, 1), 0);
        const struct model_batch_item two[2] = {
            {.s = chain, .tokens = k ? NULL : prompt, .kept_tokens = k ? &ids : NULL, .kept_row0 = k - 1,
             .n = k ? 1 : 11, .keep_argmax = &ids, .keep_row0 = k},
            {.s = beside, .tokens = other, .n = n_other, .argmax = &pick_beside}};
        cr_assert_eq(model_forward_batch(mm.m, two, 2), 0);
        cr_assert_eq(pick_beside, pick_solo, "pass %d: the sequence beside the chain", k);
    }
    cr_assert_eq(be->ops->rows_to_host(be, &ids, 0, STEPS, got), 0);
    int moves = 0;
    for (int k = 0; k < STEPS; k++) {
        cr_assert_eq(got[k], want[k], "pass %d: kept %d, the host's greedy id %d", k, got[k], want[k]);
        moves += k > 0 && want[k] != want[k - 1];
    }
    cr_assert(moves >= STEPS / 2, "the chain hardly moved (%d times): it tests little", moves);
    cr_assert_eq(model_seq_len(chain), model_seq_len(host));

    /* a verification-like pass of seven kept ids (two internal steps), every position's id kept after them */
    int32_t vwant[7];
    struct model_batch_item v = {.s = vh, .tokens = prompt, .n = 11};
    cr_assert_eq(model_forward_batch(mm.m, &v, 1), 0);
    v = (struct model_batch_item){.s = vh, .tokens = want, .n = 7, .all_logits = true, .argmax = vwant};
    cr_assert_eq(model_forward_batch(mm.m, &v, 1), 0);
    v = (struct model_batch_item){.s = vk, .tokens = prompt, .n = 11};
    cr_assert_eq(model_forward_batch(mm.m, &v, 1), 0);
    v = (struct model_batch_item){.s = vk, .kept_tokens = &ids, .kept_row0 = 0, .n = 7, .all_logits = true,
                                  .keep_argmax = &ids, .keep_row0 = STEPS};
    cr_assert_eq(model_forward_batch(mm.m, &v, 1), 0);
    cr_assert_eq(be->ops->rows_to_host(be, &ids, STEPS, 7, got + STEPS), 0);
    for (int i = 0; i < 7; i++)
        cr_assert_eq(got[STEPS + i], vwant[i], "position %d of a pass of kept ids", i);

    v = (struct model_batch_item){.s = vk, .n = 1, .argmax = vwant};
    cr_assert_eq(model_forward_batch(mm.m, &v, 1), SPEC_E_INVALID_ARG, "no tokens, kept or not");
    v = (struct model_batch_item){.s = vk, .kept_tokens = &ids, .kept_row0 = 2 * STEPS - 1, .n = 2};
    cr_assert_eq(model_forward_batch(mm.m, &v, 1), SPEC_E_RANGE, "kept rows past the tensor");
    cr_assert_eq(model_seq_len(vk), 18, "a failed pass changes no sequence");
    be->ops->tensor_free(be, &ids);
    model_seq_free(host), model_seq_free(chain), model_seq_free(solo), model_seq_free(beside);
    model_seq_free(vh), model_seq_free(vk);
    tsupport_mem_model_free(&mm);
}

Test(model, multi_sequence_batch_is_all_or_nothing)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    struct mem_model mm = load_synth(&c, 4);
    float *lg = malloc(sizeof(float) * 300 * 8);
    struct model_seq *a = new_seq(mm.m, 32), *b = new_seq(mm.m, 4);
    struct model_batch_item items[2] = {{.s = a, .tokens = prompt, .n = 3, .logits = lg},
                                        {.s = b, .tokens = prompt, .n = 5, .logits = lg + 300}};
    cr_assert_eq(model_forward_batch(mm.m, items, 2), SPEC_E_CONTEXT_FULL, "b has room for 4");
    cr_assert_eq(model_seq_len(a), 0, "a failed batch changes no sequence");
    items[1].s = a;
    items[1].n = 1;
    cr_assert_eq(model_forward_batch(mm.m, items, 2), SPEC_E_INVALID_ARG, "one sequence twice in a batch");
    cr_assert_eq(model_forward_batch(mm.m, items, 0), SPEC_E_INVALID_ARG);
    items[1] = (struct model_batch_item){.s = b, .tokens = prompt, .n = 4};
    cr_assert_eq(model_forward_batch(mm.m, items, 2), 0, "logits may be omitted per item");
    cr_assert_eq(model_seq_len(a), 3);
    cr_assert_eq(model_seq_len(b), 4);
    model_seq_free(a);
    model_seq_free(b);
    free(lg);
    tsupport_mem_model_free(&mm);
}

Test(model, loads_from_a_file_like_from_memory)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q4_K);
    char path[] = "/tmp/specd-test-model-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(model_synth_write(&c, path), 0);
    struct model *m;
    cr_assert_eq(model_load(path, be, &m), 0);
    unlink(path);
    struct mem_model mm = load_synth(&c, 0);
    const int nv = model_n_vocab(m);
    float *x = malloc(sizeof(float) * (size_t)nv), *y = malloc(sizeof(float) * (size_t)nv);
    struct model_seq *s1 = new_seq(m, 16), *s2 = new_seq(mm.m, 16);
    cr_assert_eq(model_forward_last(m, s1, prompt, 5, x), 0);
    cr_assert_eq(model_forward_last(mm.m, s2, prompt, 5, y), 0);
    cr_assert_arr_eq(x, y, sizeof(float) * (size_t)nv);
    model_seq_free(s1);
    model_seq_free(s2);
    model_free(m);
    tsupport_mem_model_free(&mm);
    free(x);
    free(y);
    cr_assert_eq(model_load("/nonexistent/model.gguf", be, &m), SPEC_E_IO);
}

Test(model, synth_is_deterministic_per_seed_and_validates_its_config)
{
    struct model_synth_config c = llama_cfg(SPEC_Q4_0);
    void *a, *b, *d;
    size_t na, nb, nd;
    cr_assert_eq(model_synth_write_memory(&c, &a, &na), 0);
    cr_assert_eq(model_synth_write_memory(&c, &b, &nb), 0);
    c.seed++;
    cr_assert_eq(model_synth_write_memory(&c, &d, &nd), 0);
    cr_assert_eq(na, nb);
    cr_assert_arr_eq(a, b, na);
    cr_assert(na != nd || memcmp(a, d, na) != 0, "another seed, other weights");
    free(a);
    free(b);
    free(d);
    c = llama_cfg(SPEC_Q4_K); /* 64 is not a multiple of the K-quant block */
    cr_assert_eq(model_synth_write_memory(&c, &a, &na), SPEC_E_INVALID_ARG);
    c = llama_cfg(SPEC_Q8_0);
    c.n_head_kv = 3;
    cr_assert_eq(model_synth_write_memory(&c, &a, &na), SPEC_E_INVALID_ARG);
}

/* ---------------------------------------------------------------------------------------------- */
/* Corrupted models: a synthetic GGUF rewritten with one change.                                  */

struct edit {
    const char *drop_tensor;
    const char *tensor; /* replaced by zeros of this type and shape */
    enum spec_dtype type;
    uint64_t ne0, ne1;
    const char *key;    /* replaced by str or u32; dropped when neither is set */
    const char *str;
    bool set_u32;
    uint32_t u32;
};

static int load_edited(const struct model_synth_config *c, const struct edit *e, char *why, size_t why_cap)
{
    void *buf;
    size_t size;
    struct gguf *g;
    struct gguf_writer *w;
    cr_assert_eq(model_synth_write_memory(c, &buf, &size), 0);
    cr_assert_eq(gguf_open_memory(buf, size, &g), 0);
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    bool key_seen = false;
    for (uint64_t i = 0; i < gguf_kv_count(g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        char *key = gguf_str_dup(kv->key);
        if (e->key && strcmp(key, e->key) == 0) {
            key_seen = true;
            if (e->str)
                cr_assert_eq(gguf_writer_set_str(w, key, e->str), 0);
            else if (e->set_u32)
                cr_assert_eq(gguf_writer_set_u32(w, key, e->u32), 0);
        } else {
            cr_assert_eq(gguf_writer_set(w, key, &kv->value), 0);
        }
        free(key);
    }
    if (e->key && !key_seen && e->str)
        cr_assert_eq(gguf_writer_set_str(w, e->key, e->str), 0);
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        char *name = gguf_str_dup(t->name);
        if (e->drop_tensor && strcmp(name, e->drop_tensor) == 0) {
            free(name);
            continue;
        }
        if (e->tensor && strcmp(name, e->tensor) == 0) {
            uint64_t rb;
            cr_assert_eq(kern_row_bytes(e->type, e->ne0, &rb), 0);
            void *zeros = calloc(1, rb * e->ne1);
            const uint64_t ne[2] = {e->ne0, e->ne1};
            cr_assert_eq(gguf_writer_add_tensor(w, name, e->type, e->ne1 > 1 ? 2 : 1, ne, zeros, rb * e->ne1), 0);
            free(zeros);
        } else {
            cr_assert_eq(gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->n_bytes), 0);
        }
        free(name);
    }
    gguf_close(g);
    free(buf);
    cr_assert_eq(gguf_writer_write_memory(w, &buf, &size), 0);
    gguf_writer_free(w);
    struct mem_model mm;
    int err = try_load(buf, size, 0, &mm, why, why_cap);
    if (!err)
        tsupport_mem_model_free(&mm);
    else
        free(buf);
    return err;
}

static void expect_rejected(const struct model_synth_config *c, const struct edit *e, int want_err,
                            const char *want_in_why)
{
    char why[200] = "";
    int err = load_edited(c, e, why, sizeof why);
    cr_assert_eq(err, want_err, "got %s (%s), expected %s", spec_errname(err), why, spec_errname(want_err));
    cr_assert(strstr(why, want_in_why), "reason \"%s\" does not mention \"%s\"", why, want_in_why);
}

Test(model, an_unedited_rewrite_loads)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q8_0);
    char why[200] = "";
    cr_assert_eq(load_edited(&c, &(struct edit){0}, why, sizeof why), 0, "%s", why);
}

Test(model, rejects_a_tensor_with_the_wrong_shape)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    /* attn_k sized for all 4 heads although the model says 2 kv heads */
    expect_rejected(&c, &(struct edit){.tensor = "blk.1.attn_k.weight", .type = SPEC_Q8_0, .ne0 = 64, .ne1 = 64},
                    SPEC_E_SHAPE, "blk.1.attn_k.weight");
    expect_rejected(&c, &(struct edit){.tensor = "blk.0.ffn_down.weight", .type = SPEC_Q8_0, .ne0 = 64, .ne1 = 96},
                    SPEC_E_SHAPE, "blk.0.ffn_down.weight");
    expect_rejected(&c, &(struct edit){.tensor = "output_norm.weight", .type = SPEC_F32, .ne0 = 32, .ne1 = 1},
                    SPEC_E_SHAPE, "output_norm.weight");
}

Test(model, rejects_an_embedding_that_disagrees_with_the_vocabulary)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    expect_rejected(&c, &(struct edit){.tensor = "token_embd.weight", .type = SPEC_Q8_0, .ne0 = 64, .ne1 = 299},
                    SPEC_E_SHAPE, "vocabulary");
}

Test(model, rejects_a_missing_tensor)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    expect_rejected(&c, &(struct edit){.drop_tensor = "blk.1.ffn_up.weight"}, SPEC_E_NOT_FOUND,
                    "blk.1.ffn_up.weight");
    expect_rejected(&c, &(struct edit){.drop_tensor = "token_embd.weight"}, SPEC_E_NOT_FOUND, "token_embd.weight");
}

Test(model, rejects_qwen2_without_attention_biases)
{
    struct model_synth_config c = qwen2_cfg(SPEC_Q8_0);
    expect_rejected(&c, &(struct edit){.drop_tensor = "blk.0.attn_v.bias"}, SPEC_E_NOT_FOUND, "blk.0.attn_v.bias");
}

Test(model, rejects_an_unknown_architecture)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    expect_rejected(&c, &(struct edit){.key = "general.architecture", .str = "gpt2"}, SPEC_E_UNSUPPORTED, "gpt2");
    expect_rejected(&c, &(struct edit){.key = "general.architecture"}, SPEC_E_NOT_FOUND, "general.architecture");
}

Test(model, rejects_tensor_types_the_kernels_lack)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    expect_rejected(&c, &(struct edit){.tensor = "blk.0.ffn_up.weight", .type = SPEC_Q5_1, .ne0 = 64, .ne1 = 96},
                    SPEC_E_UNSUPPORTED, "blk.0.ffn_up.weight");
    expect_rejected(&c, &(struct edit){.tensor = "blk.0.attn_norm.weight", .type = SPEC_F16, .ne0 = 64, .ne1 = 1},
                    SPEC_E_UNSUPPORTED, "blk.0.attn_norm.weight");
}

Test(model, rejects_missing_or_inconsistent_hyperparameters)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    expect_rejected(&c, &(struct edit){.key = "llama.embedding_length"}, SPEC_E_NOT_FOUND, "llama.embedding_length");
    expect_rejected(&c, &(struct edit){.key = "llama.attention.head_count", .set_u32 = true, .u32 = 0}, SPEC_E_RANGE,
                    "head_count");
    expect_rejected(&c, &(struct edit){.key = "llama.attention.head_count_kv", .set_u32 = true, .u32 = 3},
                    SPEC_E_RANGE, "head_count_kv");
    expect_rejected(&c, &(struct edit){.key = "llama.rope.dimension_count", .set_u32 = true, .u32 = 17},
                    SPEC_E_RANGE, "rope.dimension_count");
    expect_rejected(&c, &(struct edit){.key = "llama.block_count", .set_u32 = true, .u32 = 3}, SPEC_E_NOT_FOUND,
                    "blk.2.");
    /* found by tools/fuzz/fuzz_model.c: a block count that sized a 3.6 GB allocation before the
     * first missing tensor was noticed */
    expect_rejected(&c, &(struct edit){.key = "llama.block_count", .set_u32 = true, .u32 = 10000000}, SPEC_E_RANGE,
                    "block_count = 10000000");
}

Test(model, rejects_rope_scaling_it_does_not_implement)
{
    struct model_synth_config c = llama_cfg(SPEC_Q8_0);
    expect_rejected(&c, &(struct edit){.key = "llama.rope.scaling.type", .str = "yarn"}, SPEC_E_UNSUPPORTED, "yarn");
}

/* ---------------------------------------------------------------------------------------------- */
/* A naive reference forward pass in double precision, written from the llama/qwen2 definitions
 * with dequantized weights and plain loops: nothing shared with the backend but dequantization. */

struct ref_model {
    const struct model_hparams *hp;
    const struct gguf *g;
};

static double *ref_weight(const struct gguf *g, const char *name, int64_t *ne1)
{
    const struct gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t)
        return NULL;
    uint64_t rb;
    cr_assert_eq(kern_row_bytes(t->type, t->ne[0], &rb), 0);
    float *row = malloc(sizeof(float) * t->ne[0]);
    double *out = malloc(sizeof(double) * t->ne[0] * t->ne[1]);
    for (uint64_t r = 0; r < t->ne[1]; r++) {
        cr_assert_eq(kern_dequantize_row(t->type, (const char *)t->data + r * rb, row, (int64_t)t->ne[0]), 0);
        for (uint64_t i = 0; i < t->ne[0]; i++)
            out[r * t->ne[0] + i] = row[i];
    }
    free(row);
    if (ne1)
        *ne1 = (int64_t)t->ne[1];
    return out;
}

static double *ref_layer_weight(const struct gguf *g, int il, const char *suffix)
{
    char name[64];
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    return ref_weight(g, name, NULL);
}

/* y[r][j] = sum_k x[r][k] w[j][k] */
static void ref_matmul(const double *w, int rows, int k, const double *x, int n, double *y)
{
    for (int r = 0; r < n; r++)
        for (int j = 0; j < rows; j++) {
            double s = 0;
            for (int e = 0; e < k; e++)
                s += x[(size_t)r * k + e] * w[(size_t)j * k + e];
            y[(size_t)r * rows + j] = s;
        }
}

static void ref_rmsnorm(const double *x, const double *w, int n, int d, double eps, double *y)
{
    for (int r = 0; r < n; r++) {
        double ss = 0;
        for (int i = 0; i < d; i++)
            ss += x[r * d + i] * x[r * d + i];
        double s = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++)
            y[r * d + i] = x[r * d + i] * s * w[i];
    }
}

static void ref_rope(const struct model_hparams *hp, const double *factors, double *v, int n_head, int pos)
{
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < hp->n_rot / 2; i++) {
            double th = pos * pow(hp->rope_freq_base, -2.0 * i / hp->n_rot) * hp->rope_freq_scale /
                        (factors ? factors[i] : 1.0);
            bool neox = hp->arch == MODEL_ARCH_QWEN2;
            double *a = v + h * hp->head_dim + (neox ? i : 2 * i);
            double *b = neox ? a + hp->n_rot / 2 : a + 1;
            double x0 = *a, x1 = *b;
            *a = x0 * cos(th) - x1 * sin(th);
            *b = x0 * sin(th) + x1 * cos(th);
        }
}

static void ref_forward(const struct gguf *g, const struct model_hparams *hp, const int32_t *ids, int n,
                        double *logits)
{
    const int E = hp->n_embd, F = hp->n_ff, H = hp->n_head, KV = hp->n_head_kv, D = hp->head_dim, V = hp->n_vocab;
    double *emb = ref_weight(g, "token_embd.weight", NULL);
    double *x = malloc(sizeof(double) * n * E), *h = malloc(sizeof(double) * n * E),
           *q = malloc(sizeof(double) * n * H * D), *k = malloc(sizeof(double) * n * KV * D),
           *v = malloc(sizeof(double) * n * KV * D), *att = malloc(sizeof(double) * n * H * D),
           *o = malloc(sizeof(double) * n * E), *ga = malloc(sizeof(double) * n * F),
           *up = malloc(sizeof(double) * n * F), *sc = malloc(sizeof(double) * n);
    double *factors = ref_weight(g, "rope_freqs.weight", NULL);
    for (int r = 0; r < n; r++)
        memcpy(x + r * E, emb + (size_t)ids[r] * E, sizeof(double) * E);
    for (int il = 0; il < hp->n_layer; il++) {
        double *wn = ref_layer_weight(g, il, "attn_norm.weight"), *wq = ref_layer_weight(g, il, "attn_q.weight"),
               *wk = ref_layer_weight(g, il, "attn_k.weight"), *wv = ref_layer_weight(g, il, "attn_v.weight"),
               *bq = ref_layer_weight(g, il, "attn_q.bias"), *bk = ref_layer_weight(g, il, "attn_k.bias"),
               *bv = ref_layer_weight(g, il, "attn_v.bias"), *wo = ref_layer_weight(g, il, "attn_output.weight"),
               *fn = ref_layer_weight(g, il, "ffn_norm.weight"), *wg = ref_layer_weight(g, il, "ffn_gate.weight"),
               *wu = ref_layer_weight(g, il, "ffn_up.weight"), *wd = ref_layer_weight(g, il, "ffn_down.weight");
        ref_rmsnorm(x, wn, n, E, hp->norm_eps, h);
        ref_matmul(wq, H * D, E, h, n, q);
        ref_matmul(wk, KV * D, E, h, n, k);
        ref_matmul(wv, KV * D, E, h, n, v);
        for (int r = 0; r < n; r++) {
            for (int i = 0; bq && i < H * D; i++)
                q[r * H * D + i] += bq[i];
            for (int i = 0; bk && i < KV * D; i++) {
                k[r * KV * D + i] += bk[i];
                v[r * KV * D + i] += bv[i];
            }
            ref_rope(hp, factors, q + r * H * D, H, r);
            ref_rope(hp, factors, k + r * KV * D, KV, r);
        }
        for (int r = 0; r < n; r++)
            for (int hh = 0; hh < H; hh++) {
                const int gk = hh / (H / KV);
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= r; j++) {
                    double d = 0;
                    for (int e = 0; e < D; e++)
                        d += q[(r * H + hh) * D + e] * k[(j * KV + gk) * D + e];
                    sc[j] = d / sqrt((double)D);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j <= r; j++)
                    sum += sc[j] = exp(sc[j] - mx);
                for (int e = 0; e < D; e++) {
                    double a = 0;
                    for (int j = 0; j <= r; j++)
                        a += sc[j] / sum * v[(j * KV + gk) * D + e];
                    att[(r * H + hh) * D + e] = a;
                }
            }
        ref_matmul(wo, E, H * D, att, n, o);
        for (int i = 0; i < n * E; i++)
            x[i] += o[i];
        ref_rmsnorm(x, fn, n, E, hp->norm_eps, h);
        ref_matmul(wg, F, E, h, n, ga);
        ref_matmul(wu, F, E, h, n, up);
        for (int i = 0; i < n * F; i++)
            ga[i] = ga[i] / (1.0 + exp(-ga[i])) * up[i];
        ref_matmul(wd, E, F, ga, n, o);
        for (int i = 0; i < n * E; i++)
            x[i] += o[i];
        double *all[] = {wn, wq, wk, wv, bq, bk, bv, wo, fn, wg, wu, wd};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            free(all[i]);
    }
    double *on = ref_weight(g, "output_norm.weight", NULL), *out = ref_weight(g, "output.weight", NULL);
    ref_rmsnorm(x, on, n, E, hp->norm_eps, h);
    ref_matmul(out ? out : emb, V, E, h, n, logits);
    double *all[] = {emb, x, h, q, k, v, att, o, ga, up, sc, factors, on, out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
}

/* Largest |ours - reference| over every position and vocabulary entry, relative to the largest
 * |reference logit|. */
static double reference_error(const struct model_synth_config *c, bool kv_f32)
{
    struct mem_model mm = tsupport_load_synth(c, be, (struct model_config){.kv_f32 = kv_f32});
    const int n = 11, nv = model_n_vocab(mm.m);
    float *got = malloc(sizeof(float) * (size_t)(n * nv));
    double *want = malloc(sizeof(double) * (size_t)(n * nv));
    struct model_seq *s = new_seq(mm.m, 16);
    cr_assert_eq(model_forward(mm.m, s, prompt, n, got), 0);
    ref_forward(mm.g, model_hparams(mm.m), prompt, n, want);
    double max_ref = 0, max_err = 0;
    for (int i = 0; i < n * nv; i++) {
        max_ref = fmax(max_ref, fabs(want[i]));
        max_err = fmax(max_err, fabs(got[i] - want[i]));
    }
    cr_assert_gt(max_ref, 1.0, "degenerate logits");
    model_seq_free(s);
    free(got);
    free(want);
    tsupport_mem_model_free(&mm);
    cr_log_info("%s %s: max |logit error| %.3g of max |logit| %.3g", model_arch_name(c->arch),
                kern_dtype_info(c->wtype)->name, max_err, max_ref);
    return max_err / max_ref;
}

/* F32 weights: only the F16 KV cache and F16 rounding of Q and of the attention weights differ. */
Test(model, f32_llama_agrees_with_the_naive_reference)
{
    struct model_synth_config c = llama_cfg(SPEC_F32);
    double e = reference_error(&c, false);
    cr_assert_leq(e, 2e-3, "relative error %g", e);
}

Test(model, f32_qwen2_with_rope_scaling_freq_factors_and_partial_rotation_agrees_with_the_naive_reference)
{
    struct model_synth_config c = qwen2_cfg(SPEC_F32);
    c.n_rot = 32;
    c.rope_scale = 2.0f;
    c.rope_freqs = true;
    c.rope_freq_base = 1000.0f;
    c.tied_output = false;
    double e = reference_error(&c, false);
    cr_assert_leq(e, 2e-3, "relative error %g", e);
}

/* With an F32 KV cache nothing is rounded to F16 any more: F32 weights then agree with the double
 * reference to float rounding, far inside the F16 cache's bound above. */
Test(model, f32_kv_cache_removes_the_f16_rounding)
{
    struct model_synth_config c = llama_cfg(SPEC_F32);
    const double with_f16 = reference_error(&c, false), with_f32 = reference_error(&c, true);
    cr_assert_leq(with_f32, 2e-5, "relative error %g with an F32 cache", with_f32);
    cr_assert_lt(with_f32 * 10, with_f16, "F32 cache %g vs F16 cache %g", with_f32, with_f16);
}

/* Quantized weights: activations are quantized to 8 bits for the integer dot products (as in
 * llama.cpp), which costs about a percent. */
Test(model, quantized_models_agree_with_the_naive_reference)
{
    const struct model_synth_config cs[] = {llama_cfg(SPEC_Q8_0), llama_cfg(SPEC_Q4_0), llama_cfg(SPEC_Q4_1),
                                            llama_cfg(SPEC_Q5_0), qwen2_cfg(SPEC_Q4_K), qwen2_cfg(SPEC_Q6_K),
                                            llama_cfg(SPEC_F16), llama_cfg(SPEC_BF16)};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        double e = reference_error(&cs[i], false);
        cr_assert_leq(e, 3e-2, "%s %s: relative error %g", model_arch_name(cs[i].arch),
                      kern_dtype_info(cs[i].wtype)->name, e);
    }
}
