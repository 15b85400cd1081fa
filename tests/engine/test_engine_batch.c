/* Continuous batching and text: many requests advancing together give each exactly what it gets
 * alone (greedy and sampled), requests join, finish and get cancelled between rounds, and stop
 * strings cut the text where they begin even when they span tokens. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "engine/engine.h"
#include "tests/support/tsupport.h"

static struct kern_backend *be;
static struct mem_model target, draft;

static void setup(void)
{
    be = tsupport_backend(1);
    const struct model_synth_config tc = {.arch = MODEL_ARCH_LLAMA, .wtype = SPEC_Q8_0, .n_layer = 2, .n_embd = 64,
                                          .n_head = 4, .n_head_kv = 2, .n_ff = 128, .n_vocab = 300, .n_ctx = 256,
                                          .seed = 5};
    struct model_synth_config dc = tc;
    dc.wtype = SPEC_Q4_0;
    dc.n_layer = 1;
    dc.n_embd = 32;
    dc.n_ff = 64;
    target = tsupport_load_synth(&tc, be, (struct model_config){.max_batch = 16});
    draft = tsupport_load_synth(&dc, be, (struct model_config){.max_batch = 16});
}

static void teardown(void)
{
    tsupport_mem_model_free(&draft);
    tsupport_mem_model_free(&target);
    kern_backend_destroy(be);
}

TestSuite(engine_batch, .init = setup, .fini = teardown);

/* Sampled output depends on where rounds end, so the sampled checks fix γ (each request's draft_max);
 * the adaptive choice, which follows measured costs, is exercised by the greedy ones. */
static struct engine *engine_sampling(struct model *d, int max_seqs, bool adaptive, bool host_sampling)
{
    struct engine *e = NULL;
    const struct engine_config cfg = {.target = target.m, .draft = d, .n_ctx = 256, .draft_max = 6, .draft_min = 1,
                                      .adaptive = adaptive, .penalty_window = 64, .max_seqs = max_seqs,
                                      .host_sampling = host_sampling};
    cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
    return e;
}

static struct engine *new_engine(struct model *d, int max_seqs, bool adaptive)
{
    return engine_sampling(d, max_seqs, adaptive, false);
}

/* Everything a request handed out. */
struct result {
    int32_t tokens[256];
    int n_tokens;
    char text[4096];
    size_t n_text;
    int n_updates;
    bool done;
    enum engine_finish finish;
    int error;
    struct engine_stats stats;
    int cancel_after; /* > 0: ask to cancel once this many tokens have arrived */
};

static int record(void *user, const struct engine_update *u)
{
    struct result *r = user;
    cr_assert(!r->done, "no update after the final one");
    cr_assert_leq(r->n_tokens + u->n_tokens, 256);
    cr_assert_leq(r->n_text + u->n_text, sizeof r->text - 1);
    memcpy(r->tokens + r->n_tokens, u->tokens, (size_t)u->n_tokens * sizeof *u->tokens);
    r->n_tokens += u->n_tokens;
    memcpy(r->text + r->n_text, u->text, u->n_text);
    r->n_text += u->n_text;
    r->text[r->n_text] = '\0';
    r->n_updates++;
    if (u->done) {
        r->done = true;
        r->finish = u->finish;
        r->error = u->error;
        r->stats = *u->stats;
    }
    return r->cancel_after > 0 && r->n_tokens >= r->cancel_after;
}

static const int32_t prompts[8][6] = {
    {1, 77, 260, 5, 299, 42}, {3, 3, 3, 3, 3, 3},     {250, 17, 250, 17, 250, 17}, {9, 100, 200, 11, 12, 13},
    {1, 2, 3, 4, 5, 6},       {42, 42, 180, 3, 9, 9}, {7, 70, 170, 270, 71, 72},   {299, 298, 297, 1, 0, 5},
};

static struct engine_request request(int i, bool spec, float temperature)
{
    struct verify_params sp = verify_params_default();
    sp.temperature = temperature;
    sp.top_k = temperature > 0.0f ? 40 : 0;
    sp.seed = 1234;
    return (struct engine_request){.prompt = prompts[i % 8], .n_prompt = 6 - i % 3, .max_tokens = 24 + 3 * i,
                                   .sampling = sp, .speculative = spec, .draft_max = 1 + i % 6, .seq_id = (uint64_t)i};
}

/* The request alone in its own engine. */
static void solo(struct model *d, const struct engine_request *req, struct result *r)
{
    struct engine *e = new_engine(d, 1, req->sampling.temperature == 0.0f);
    *r = (struct result){0};
    uint32_t id;
    cr_assert_eq(engine_submit(e, req, record, r, &id), SPEC_OK);
    while (!r->done)
        cr_assert_eq(engine_step(e), SPEC_OK);
    cr_assert_eq(engine_n_active(e), 0);
    engine_free(e);
}

static void assert_same(const struct result *got, const struct result *want, int i)
{
    cr_assert(got->done, "request %d finished", i);
    cr_assert_eq(got->finish, want->finish, "request %d: finish %d vs %d", i, got->finish, want->finish);
    cr_assert_eq(got->n_tokens, want->n_tokens, "request %d: %d tokens vs %d alone", i, got->n_tokens, want->n_tokens);
    cr_assert_arr_eq(got->tokens, want->tokens, (size_t)got->n_tokens * sizeof got->tokens[0],
                     "request %d: batched tokens differ from the request alone", i);
    cr_assert_str_eq(got->text, want->text, "request %d", i);
}

/* Eight requests, submitted two per round so that they join a batch already running, mixing
 * speculative and target-only, draft lengths and prompt lengths. */
static void check_batched_equals_solo(struct model *d, float temperature)
{
    enum { N = 8 };
    static struct result got[N], want[N];
    struct engine_request req[N];
    for (int i = 0; i < N; i++) {
        req[i] = request(i, i % 4 != 3, temperature);
        solo(d, &req[i], &want[i]);
        got[i] = (struct result){0};
    }
    struct engine *e = new_engine(d, N, temperature == 0.0f);
    int submitted = 0, rounds = 0, max_active = 0;
    while (submitted < N || engine_n_active(e) > 0) {
        for (int k = 0; k < 2 && submitted < N; k++, submitted++) {
            uint32_t id;
            cr_assert_eq(engine_submit(e, &req[submitted], record, &got[submitted], &id), SPEC_OK);
        }
        max_active = engine_n_active(e) > max_active ? engine_n_active(e) : max_active;
        cr_assert_eq(engine_step(e), SPEC_OK);
        cr_assert_lt(++rounds, 1000);
    }
    cr_assert_geq(max_active, 4, "requests overlapped (at most %d did)", max_active);
    for (int i = 0; i < N; i++) {
        assert_same(&got[i], &want[i], i);
        cr_assert_leq(got[i].stats.n_drafted, got[i].stats.n_target_passes * req[i].draft_max,
                      "request %d drafts at most its draft_max a round", i);
    }
    engine_free(e);
}

Test(engine_batch, greedy_batched_requests_equal_each_alone_draft_model)
{
    check_batched_equals_solo(draft.m, 0.0f);
}

/* The requests side by side in two engines that should do the same work two ways: each request's tokens
 * and text, rounds, drafts and accepted drafts the same in both (greedy output would hide a draft one of
 * them would not have made); the totals of drafts and of accepted ones to *drafted and *accepted. */
static void check_engines_agree(struct engine *a, struct engine *b, const struct engine_request *req, int n,
                                int *drafted, int *accepted)
{
    static struct result ra[8], rb[8];
    cr_assert_leq(n, 8);
    for (int i = 0; i < n; i++) {
        ra[i] = rb[i] = (struct result){0};
        uint32_t id;
        cr_assert_eq(engine_submit(a, &req[i], record, &ra[i], &id), SPEC_OK);
        cr_assert_eq(engine_submit(b, &req[i], record, &rb[i], &id), SPEC_OK);
    }
    for (int rounds = 0; engine_n_active(a) > 0 || engine_n_active(b) > 0; rounds++) {
        cr_assert_eq(engine_step(a), SPEC_OK);
        cr_assert_eq(engine_step(b), SPEC_OK);
        cr_assert_lt(rounds, 1000);
    }
    *drafted = *accepted = 0;
    for (int i = 0; i < n; i++) {
        assert_same(&ra[i], &rb[i], i);
        cr_assert_eq(ra[i].stats.n_target_passes, rb[i].stats.n_target_passes, "request %d: rounds", i);
        cr_assert_eq(ra[i].stats.n_drafted, rb[i].stats.n_drafted, "request %d: drafted", i);
        cr_assert_eq(ra[i].stats.n_accepted, rb[i].stats.n_accepted, "request %d: accepted", i);
        *drafted += (int)ra[i].stats.n_drafted;
        *accepted += (int)ra[i].stats.n_accepted;
    }
}

/* A draft model's greedy runs whose tokens stay on the backend until a run ends draft, round by round,
 * what runs whose tokens come to the host every pass draft (a fixed γ, so that the rounds match; the
 * target drafting for itself, so that its drafts are accepted and wrong ones would show). */
Test(engine_batch, greedy_draft_runs_kept_on_the_backend_draft_what_the_host_drafts)
{
    enum { N = 8 };
    struct engine *e[2];
    for (int k = 0; k < 2; k++) {
        const struct engine_config cfg = {.target = target.m, .draft = target.m, .n_ctx = 256, .draft_max = 6,
                                          .draft_min = 1, .penalty_window = 64, .max_seqs = N,
                                          .host_draft_ids = k == 1};
        cr_assert_eq(engine_new(&cfg, &e[k]), SPEC_OK);
    }
    struct engine_request req[N];
    for (int i = 0; i < N; i++)
        req[i] = request(i, true, 0.0f);
    int drafted, accepted;
    check_engines_agree(e[0], e[1], req, N, &drafted, &accepted);
    cr_assert(drafted > 0 && accepted == drafted, "a model drafting for itself: %d of %d drafts accepted", accepted,
              drafted);
    engine_free(e[0]);
    engine_free(e[1]);
}

Test(engine_batch, greedy_batched_requests_equal_each_alone_prompt_lookup)
{
    check_batched_equals_solo(NULL, 0.0f);
}

Test(engine_batch, sampled_batched_requests_equal_each_alone)
{
    check_batched_equals_solo(draft.m, 0.9f);
}

/* Requests whose rows the backend processes and verifies itself (CUDA) against the same requests made on
 * the host: every sampling setting, and greedy ones with penalties (2 and 6), drafted by a model, by
 * prompt lookup and not at all, batched. The two compute the same distributions up to rounding and draw
 * with the same uniforms, so the tokens agree unless a draw falls within rounding of a boundary (not
 * with these seeds); greedy choices are the argmax of the same penalised logits. */
static void check_backend_sampling_equals_host(struct model *d)
{
    if (!be->ops->sample_process) {
        fprintf(stderr, "!!! the %s backend samples on the host: nothing to compare\n", be->ops->name);
        cr_skip_test("the %s backend samples on the host", be->ops->name);
    }
    enum { N = 8 };
    struct engine_request req[N];
    struct engine *dev = engine_sampling(d, N, false, false), *host = engine_sampling(d, N, false, true);
    for (int i = 0; i < N; i++) {
        req[i] = request(i, i % 4 != 3, i == 2 || i == 6 ? 0.0f : 0.6f + 0.15f * (float)i);
        struct verify_params *sp = &req[i].sampling;
        sp->top_k = i % 3 == 0 ? 0 : 20 * i;
        sp->top_p = i % 2 ? 0.85f : 1.0f;
        sp->min_p = i == 4 || i == 7 ? 0.05f : 0.0f;
        sp->repeat_penalty = i >= 5 || i == 2 ? 1.3f : 1.0f;
        sp->presence_penalty = i == 6 ? 0.5f : 0.0f;
        sp->frequency_penalty = i == 7 ? 0.25f : 0.0f;
    }
    int drafted, accepted;
    check_engines_agree(dev, host, req, N, &drafted, &accepted);
    cr_assert(drafted > 0 && accepted < drafted, "rounds rejected drafts (%d of %d accepted)", accepted, drafted);
    cr_assert(!d || accepted > 0, "rounds accepted drafts of the model (%d of %d)", accepted, drafted);
    engine_free(dev);
    engine_free(host);
}

Test(engine_batch, sampling_on_the_backend_gives_the_hosts_tokens_draft_model)
{
    check_backend_sampling_equals_host(draft.m);
}

Test(engine_batch, sampling_on_the_backend_gives_the_hosts_tokens_prompt_lookup)
{
    check_backend_sampling_equals_host(NULL);
}

Test(engine_batch, cancel_ends_one_request_and_spares_the_others)
{
    struct engine *e = new_engine(draft.m, 3, true);
    static struct result r[3], want;
    struct engine_request req[3];
    uint32_t id[3];
    for (int i = 0; i < 3; i++) {
        req[i] = request(i, true, 0.0f);
        req[i].max_tokens = 40;
        r[i] = (struct result){0};
        cr_assert_eq(engine_submit(e, &req[i], record, &r[i], &id[i]), SPEC_OK);
    }
    r[2].cancel_after = 1; /* the callback asks */
    cr_assert_eq(engine_step(e), SPEC_OK);
    cr_assert_eq(engine_cancel(e, id[0]), SPEC_OK); /* the owner asks */
    while (engine_n_active(e) > 0)
        cr_assert_eq(engine_step(e), SPEC_OK);
    cr_assert_eq(r[0].finish, ENGINE_FINISH_CANCELLED);
    cr_assert_lt(r[0].n_tokens, 40);
    cr_assert_eq(r[2].finish, ENGINE_FINISH_CANCELLED);
    cr_assert_lt(r[2].n_tokens, 40);
    cr_assert_eq(engine_cancel(e, id[0]), SPEC_E_NOT_FOUND, "a finished request is gone");
    solo(draft.m, &req[1], &want);
    assert_same(&r[1], &want, 1);
    engine_free(e);
}

Test(engine_batch, a_full_engine_is_busy_until_a_request_finishes)
{
    struct engine *e = new_engine(NULL, 2, true);
    static struct result r[3];
    struct engine_request req = request(0, true, 0.0f);
    uint32_t id;
    for (int i = 0; i < 2; i++) {
        r[i] = (struct result){0};
        cr_assert_eq(engine_submit(e, &req, record, &r[i], &id), SPEC_OK);
    }
    r[2] = (struct result){0};
    cr_assert_eq(engine_submit(e, &req, record, &r[2], &id), SPEC_E_BUSY);
    while (engine_n_active(e) > 0)
        cr_assert_eq(engine_step(e), SPEC_OK);
    cr_assert_eq(engine_submit(e, &req, record, &r[2], &id), SPEC_OK);
    while (engine_n_active(e) > 0)
        cr_assert_eq(engine_step(e), SPEC_OK);
    assert_same(&r[2], &r[0], 2);
    engine_free(e);
}

/* The engine's text is the streaming detokenizer's output for the tokens it handed out, in whole
 * characters (that decoder is checked against Python's lossy UTF-8 decoding in tests/model; random
 * weights emit stray byte tokens, so several outputs here hold U+FFFD). */
/* tokens[0 .. n) as a stream decodes them into buf, with what a flush at the end adds (*flushed bytes:
 * a character left unfinished, as U+FFFD); returns the length. */
static size_t detokenize(const struct tok *tok, const int32_t *tokens, int n, char *buf, size_t cap, size_t *flushed)
{
    size_t at = 0, piece = 0;
    struct tok_stream ts;
    tok_stream_init(&ts, tok, false);
    for (int k = 0; k < n; k++, at += piece)
        cr_assert_eq(tok_stream_push(&ts, tokens[k], buf + at, cap - at, &piece), SPEC_OK);
    cr_assert_eq(tok_stream_flush(&ts, buf + at, cap - at, flushed), SPEC_OK);
    return at + *flushed;
}

/* Sixteen requests on the CPU; on another device (the simulated GPU takes minutes for sixteen), every
 * fourth: their tokens differ from the CPU's by rounding, so the text meets other token sequences. */
Test(engine_batch, text_is_the_detokenized_tokens_in_whole_characters)
{
    const struct tok *tok = model_tokenizer(target.m);
    const int every = strcmp(be->ops->name, "cpu") == 0 ? 1 : 4;
    for (int i = 0; i < 16; i += every) {
        struct result r;
        const struct engine_request req = request(i, true, i < 8 ? 0.7f : 0.0f);
        solo(draft.m, &req, &r);
        char want[4096];
        size_t flushed;
        const size_t n = detokenize(tok, r.tokens, r.n_tokens, want, sizeof want, &flushed);
        cr_assert_eq(r.n_text, n, "request %d: %zu bytes vs %zu", i, r.n_text, n);
        cr_assert_arr_eq(r.text, want, n, "request %d: streamed text is not the detokenized output", i);
    }
}

/* A generation that the end-of-generation token ends in the middle of a character: the bytes held
 * back come out as U+FFFD, as when max_tokens ends it. Such a request is found by trying seeds (the
 * first of 400; prompt lookup drafts for half of them), and the test fails if none is. The engine's
 * text is the same on every device: the search runs on the CPU (minutes on the simulated GPU). */
Test(engine_batch, an_end_of_generation_inside_a_character_keeps_its_bytes)
{
    if (strcmp(be->ops->name, "cpu") != 0)
        cr_skip_test("the engine's text is checked on the CPU backend");
    const struct tok *tok = model_tokenizer(target.m);
    int found = 0;
    for (uint64_t seed = 1; seed <= 400 && found == 0; seed++) {
        struct engine_request req = request((int)(seed % 8), seed % 2 == 0, 1.0f);
        req.sampling.seed = seed;
        req.sampling.top_k = 0;
        struct result r;
        solo(NULL, &req, &r);
        char before[4096], want[4096];
        size_t cut, flushed;
        if (r.finish != ENGINE_FINISH_STOP || r.n_tokens < 2 || !tok_is_eog(tok, r.tokens[r.n_tokens - 1]) ||
            (detokenize(tok, r.tokens, r.n_tokens - 1, before, sizeof before, &cut), cut == 0))
            continue;
        found++;
        const size_t n = detokenize(tok, r.tokens, r.n_tokens, want, sizeof want, &flushed);
        cr_assert_eq(r.n_text, n, "seed %llu: %zu bytes vs %zu", (unsigned long long)seed, r.n_text, n);
        cr_assert_arr_eq(r.text, want, n, "seed %llu: the unfinished character's bytes", (unsigned long long)seed);
    }
    cr_assert_gt(found, 0, "no request ended inside a character: the test tests nothing");
}

/* A stop string made of the end of one token's text and the start of the next one's. */
Test(engine_batch, stop_string_spanning_tokens_ends_the_text_before_it)
{
    const struct tok *tok = model_tokenizer(target.m);
    int checked = 0;
    for (int i = 0; i < 8; i++) {
        struct result full;
        struct engine_request req = request(i, true, 0.0f);
        solo(draft.m, &req, &full);
        for (int k = 2; k + 1 < full.n_tokens; k++) {
            char a[64], b[64];
            size_t na = 0, nb = 0;
            cr_assert_eq(tok_decode(tok, &full.tokens[k], 1, false, a, sizeof a, &na), SPEC_OK);
            cr_assert_eq(tok_decode(tok, &full.tokens[k + 1], 1, false, b, sizeof b, &nb), SPEC_OK);
            if (na < 1 || nb < 2 || (a[na - 1] & 0x80) || (b[0] & 0x80) || (b[1] & 0x80))
                continue;
            const char stop[4] = {a[na - 1], b[0], b[1], '\0'};
            const char *at = strstr(full.text, stop);
            cr_assert_not_null(at);
            const char *stops[2] = {"this never appears \xe2\x82\xac", stop};
            req.stop = stops;
            req.n_stop = 2;
            struct result r;
            solo(draft.m, &req, &r);
            cr_assert_eq(r.finish, ENGINE_FINISH_STOP, "request %d stop \"%s\"", i, stop);
            cr_assert_eq(r.n_text, (size_t)(at - full.text), "request %d stop \"%s\": text \"%s\"", i, stop, r.text);
            cr_assert_arr_eq(r.text, full.text, r.n_text);
            cr_assert_leq(r.n_tokens, full.n_tokens);
            cr_assert_arr_eq(r.tokens, full.tokens, (size_t)r.n_tokens * sizeof r.tokens[0]);
            checked++;
            break;
        }
    }
    cr_assert_geq(checked, 4, "enough outputs had a stop string across a token boundary");
}

Test(engine_batch, bad_stop_strings_are_refused)
{
    struct engine *e = new_engine(NULL, 1, true);
    struct engine_request req = request(0, true, 0.0f);
    struct result r = {0};
    uint32_t id;
    char long_stop[ENGINE_MAX_STOP_LEN + 2];
    memset(long_stop, 'a', sizeof long_stop - 1);
    long_stop[sizeof long_stop - 1] = '\0';
    const char *too_many[ENGINE_MAX_STOP + 1];
    for (int i = 0; i <= ENGINE_MAX_STOP; i++)
        too_many[i] = "x";
    const char *empty[1] = {""}, *invalid[1] = {"ab\xc3"}, *too_long[1] = {long_stop};
    req.stop = empty;
    req.n_stop = 1;
    cr_assert_eq(engine_submit(e, &req, record, &r, &id), SPEC_E_RANGE, "empty");
    req.stop = invalid;
    cr_assert_eq(engine_submit(e, &req, record, &r, &id), SPEC_E_RANGE, "cut UTF-8");
    req.stop = too_long;
    cr_assert_eq(engine_submit(e, &req, record, &r, &id), SPEC_E_RANGE, "too long");
    req.stop = too_many;
    req.n_stop = ENGINE_MAX_STOP + 1;
    cr_assert_eq(engine_submit(e, &req, record, &r, &id), SPEC_E_RANGE, "too many");
    cr_assert_eq(engine_n_active(e), 0);
    engine_free(e);
}
