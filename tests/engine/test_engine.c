/* The speculative loop on synthetic models: greedy identity with target-only decoding, rollback,
 * limits, and the sampled output distribution. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "engine/engine.h"
#include "tests/support/tsupport.h"
#include "verify/verify.h"

static struct kern_backend *be;

static void setup(void)
{
    be = tsupport_backend(1);
}

static void teardown(void)
{
    kern_backend_destroy(be);
}

TestSuite(engine, .init = setup, .fini = teardown);

/* Same seed, so the same synthetic vocabulary; different shapes, so different weights. */
static struct model_synth_config target_cfg(enum model_arch arch)
{
    return (struct model_synth_config){.arch = arch, .wtype = SPEC_Q8_0, .n_layer = 3, .n_embd = 64, .n_head = 4,
                                       .n_head_kv = 2, .n_ff = 128, .n_vocab = 300, .n_ctx = 256, .seed = 5};
}

static struct model_synth_config draft_cfg(enum model_arch arch)
{
    return (struct model_synth_config){.arch = arch, .wtype = SPEC_Q4_0, .n_layer = 1, .n_embd = 32, .n_head = 2,
                                       .n_head_kv = 1, .n_ff = 64, .n_vocab = 300, .n_ctx = 256, .seed = 5};
}

static struct engine *new_engine(struct model *target, struct model *draft, int draft_max, bool adaptive)
{
    struct engine *e = NULL;
    const struct engine_config cfg = {.target = target, .draft = draft, .n_ctx = 256, .draft_max = draft_max,
                                      .draft_min = 1, .adaptive = adaptive, .penalty_window = 64};
    cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
    return e;
}

static int generate(struct engine *e, const int32_t *prompt, int n_prompt, int n_gen, bool spec,
                    struct verify_params sp, uint64_t seq, int32_t *out, struct engine_stats *st)
{
    const struct engine_request req = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = n_gen, .sampling = sp,
                                       .speculative = spec, .seq_id = seq};
    int n_out = 0;
    enum engine_finish fin;
    cr_assert_eq(engine_generate(e, &req, NULL, NULL, out, n_gen, &n_out, &fin, st), SPEC_OK);
    return n_out;
}

static const int32_t prompts[4][8] = {
    {1, 77, 260, 5, 299, 42, 42, 180},
    {3, 3, 3, 3, 3, 3, 3, 3},
    {250, 17, 250, 17, 250, 17, 250, 17},
    {9, 100, 200, 11, 12, 13, 14, 15},
};

static void check_greedy_identity(struct model *target, struct model *draft)
{
    const struct verify_params greedy = verify_params_default();
    const int draft_maxes[] = {1, 2, 4, 8};
    for (int pi = 0; pi < 4; pi++) {
        struct engine *base = new_engine(target, NULL, 1, false);
        int32_t want[48], got[48];
        const int n_want = generate(base, prompts[pi], 8, 48, false, greedy, 0, want, NULL);
        engine_free(base);
        for (int di = 0; di < 4; di++) {
            for (int adaptive = 0; adaptive < 2; adaptive++) {
                struct engine *e = new_engine(target, draft, draft_maxes[di], adaptive);
                struct engine_stats st;
                const int n = generate(e, prompts[pi], 8, 48, true, greedy, 0, got, &st);
                cr_assert_eq(n, n_want, "prompt %d draft_max %d: length %d vs %d", pi, draft_maxes[di], n, n_want);
                for (int i = 0; i < n; i++)
                    cr_assert_eq(got[i], want[i], "prompt %d draft_max %d adaptive %d: token %d differs (%d vs %d)",
                                 pi, draft_maxes[di], adaptive, i, got[i], want[i]);
                cr_assert_eq(st.n_generated, n);
                engine_free(e);
            }
        }
    }
}

Test(engine, greedy_speculative_output_equals_target_only_llama)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA), dc = draft_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}), d = tsupport_load_synth(&dc, be, (struct model_config){0});
    check_greedy_identity(t.m, d.m);
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

Test(engine, greedy_speculative_output_equals_target_only_qwen2)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_QWEN2), dc = draft_cfg(MODEL_ARCH_QWEN2);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}), d = tsupport_load_synth(&dc, be, (struct model_config){0});
    check_greedy_identity(t.m, d.m);
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

/* Adaptive γ with draft_min 0 on a draft that is never right here (an unrelated model): rounds go
 * undrafted once its acceptance estimate has fallen, and the output is still the target's; with
 * draft_min 1 every round drafts. */
Test(engine, adaptive_draft_min_zero_stops_drafting_a_useless_draft)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA), dc = draft_cfg(MODEL_ARCH_LLAMA);
    dc.seed = 99; /* another vocabulary's weights: the draft's guesses are unrelated to the target's */
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, be, (struct model_config){0});
    const struct verify_params greedy = verify_params_default();
    enum { N = 120 };
    int32_t want[N], got[N];
    struct engine *base = new_engine(t.m, NULL, 1, false);
    const int n_want = generate(base, prompts[1], 8, N, false, greedy, 0, want, NULL);
    engine_free(base);
    struct engine_stats st[2];
    /* costs given, not measured (a draft step a third of a target pass, as 0.5B drafting for 1.5B), so
     * that the choices do not follow the machine's load */
    const struct engine_costs costs = {.target_pass = 1.0, .per_draft = 0.1, .draft_step = 0.3};
    for (int min = 0; min < 2; min++) {
        const struct engine_config cfg = {.target = t.m, .draft = d.m, .n_ctx = 256, .draft_max = 4,
                                          .draft_min = min, .adaptive = true, .costs = &costs, .penalty_window = 64};
        struct engine *e = NULL;
        cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
        const int n = generate(e, prompts[1], 8, N, true, greedy, 0, got, &st[min]);
        cr_assert_eq(n, n_want);
        cr_assert_arr_eq(got, want, sizeof(int32_t) * (size_t)n, "draft_min %d: the output is not the target's", min);
        engine_free(e);
    }
    cr_assert_lt((double)st[1].n_accepted, 0.3 * (double)st[1].n_drafted, "the draft should be mostly wrong (%d of %d)",
                 st[1].n_accepted, st[1].n_drafted);
    cr_assert_geq(st[1].n_drafted, st[1].n_target_passes, "draft_min 1 drafts every round");
    cr_assert_lt(st[0].n_drafted * 4, st[1].n_drafted, "draft_min 0 drafted %d tokens, draft_min 1 %d",
                 st[0].n_drafted, st[1].n_drafted);
    cr_assert_gt(st[0].n_drafted, 0, "the first rounds draft (the prior acceptance)");
    cr_assert_eq(n_want, N, "a long enough run to see the choice settle");
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

/* With the costs given, the adaptive γ is a function of the request alone, so a sampled request repeats
 * its tokens exactly; costs that are not all positive are refused. */
Test(engine, adaptive_with_given_costs_repeats_a_sampled_request)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA), dc = draft_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, be, (struct model_config){0});
    struct verify_params sp = verify_params_default();
    sp.temperature = 0.8f;
    sp.seed = 5;
    const struct engine_costs costs = {.target_pass = 1.0, .per_draft = 0.1, .draft_step = 0.3};
    struct engine_config cfg = {.target = t.m, .draft = d.m, .n_ctx = 256, .draft_max = 6, .adaptive = true,
                                .costs = &costs, .penalty_window = 64};
    int32_t out[2][64];
    int n[2];
    for (int run = 0; run < 2; run++) {
        struct engine *e = NULL;
        cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
        n[run] = generate(e, prompts[0], 8, 64, true, sp, 3, out[run], NULL);
        engine_free(e);
    }
    cr_assert_eq(n[0], n[1]);
    cr_assert_arr_eq(out[0], out[1], sizeof(int32_t) * (size_t)n[0], "the same request drew other tokens");
    /* a draft step costing a hundred target passes is never worth it: not one round drafts (measured
     * costs would draft from the first round, on the prior acceptance) */
    const struct engine_costs dear = {.target_pass = 1.0, .per_draft = 0.1, .draft_step = 100.0};
    cfg.costs = &dear;
    struct engine *e = NULL;
    struct engine_stats st;
    cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
    generate(e, prompts[0], 8, 32, true, sp, 3, out[0], &st);
    engine_free(e);
    cr_assert_eq(st.n_drafted, 0);
    const struct engine_costs bad[] = {{0.0, 0.1, 0.3}, {1.0, -0.1, 0.3}, {1.0, 0.1, NAN}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg.costs = &bad[i];
        cr_assert_eq(engine_new(&cfg, &e), SPEC_E_INVALID_ARG, "costs %zu", i);
    }
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

/* A draft that scores only the first 150 of 300 ids never proposes the others; the output stays the
 * target's. */
Test(engine, greedy_speculative_output_equals_target_only_with_a_vocabulary_limited_draft)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_QWEN2), dc = draft_cfg(MODEL_ARCH_QWEN2);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, be, (struct model_config){.n_logits = 150});
    check_greedy_identity(t.m, d.m);
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

/* Greedy decoding by hand, the reference for the engine's greedy choices (which the backend makes
 * when there is no penalty): each step's logits on the host, penalised over the last 64 tokens by
 * verify_process, and their argmax; ends at an end-of-generation token like the engine. */
static int reference_greedy(struct model *m, const struct verify_params *sp, const int32_t *prompt, int n_prompt,
                            int n_gen, int32_t *out)
{
    const int nv = model_n_vocab(m);
    float *l = malloc(sizeof(float) * (size_t)nv), *p = malloc(sizeof(float) * (size_t)nv);
    int32_t hist[256];
    struct verify_scratch *vs = NULL;
    struct model_seq *s = NULL;
    cr_assert_eq(verify_scratch_new(nv, &vs), SPEC_OK);
    cr_assert_eq(model_seq_new(m, 256, &s), SPEC_OK);
    memcpy(hist, prompt, sizeof(int32_t) * (size_t)n_prompt);
    size_t n = (size_t)n_prompt;
    cr_assert_eq(model_forward_last(m, s, prompt, n_prompt, l), SPEC_OK);
    int k = 0;
    while (k < n_gen) {
        const int32_t *w;
        size_t nw;
        verify_penalty_window(hist, n, 64, &w, &nw);
        cr_assert_eq(verify_process(sp, l, nv, w, nw, vs, p), SPEC_OK);
        int32_t t;
        cr_assert_eq(verify_argmax(p, nv, &t), SPEC_OK);
        out[k++] = hist[n++] = t;
        if (tok_is_eog(model_tokenizer(m), t))
            break;
        cr_assert_eq(model_forward_last(m, s, &t, 1, l), SPEC_OK);
    }
    model_seq_free(s);
    verify_scratch_free(vs);
    free(l);
    free(p);
    return k;
}

static struct verify_params penalised_greedy(void)
{
    struct verify_params sp = verify_params_default();
    sp.repeat_penalty = 1.3f;
    sp.frequency_penalty = 0.2f;
    return sp;
}

/* Target-only and speculative greedy decoding give the hand-made reference's tokens, with and
 * without penalties (the backend's argmax and the host's penalised rows are two paths). */
Test(engine, greedy_output_is_the_argmax_of_the_targets_logits_with_and_without_penalties)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_QWEN2), dc = draft_cfg(MODEL_ARCH_QWEN2);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, be, (struct model_config){0});
    const struct verify_params sps[2] = {verify_params_default(), penalised_greedy()};
    int32_t want[2][40], got[40];
    int n_want[2];
    for (int k = 0; k < 2; k++) {
        n_want[k] = reference_greedy(t.m, &sps[k], prompts[1], 8, 40, want[k]);
        for (int spec = 0; spec < 2; spec++) {
            struct engine *e = new_engine(t.m, spec ? d.m : NULL, 4, false);
            const int n = generate(e, prompts[1], 8, 40, spec, sps[k], 0, got, NULL);
            cr_assert_eq(n, n_want[k]);
            cr_assert_arr_eq(got, want[k], sizeof(int32_t) * (size_t)n, "penalties %d speculative %d", k, spec);
            engine_free(e);
        }
    }
    cr_assert(memcmp(want[0], want[1], sizeof want[0]) != 0, "the penalties change the output here");
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

/* draft_min_prob 1 ends every draft run after its first token (the draft is never certain here);
 * greedy output stays the target's. The draft's probability comes from the backend (raw greedy),
 * from the host's logits (penalised greedy) or from q (sampled). */
Test(engine, draft_min_prob_ends_draft_runs_at_an_unsure_token)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_QWEN2), dc = draft_cfg(MODEL_ARCH_QWEN2);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, be, (struct model_config){0});
    struct verify_params sps[3] = {verify_params_default(), penalised_greedy(), verify_params_default()};
    sps[2].temperature = 0.8f;
    sps[2].seed = 3;
    for (int k = 0; k < 3; k++) {
        int32_t out[2][40];
        int n[2];
        struct engine_stats st[2];
        for (int sure = 0; sure < 2; sure++) {
            const struct engine_config cfg = {.target = t.m, .draft = d.m, .n_ctx = 256, .draft_max = 4,
                                              .draft_min = 1, .draft_min_prob = sure ? 1.0f : 0.0f,
                                              .penalty_window = 64};
            struct engine *e = NULL;
            cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
            /* a sampled run may meet the end-of-generation token before 40 (where depends on the
             * backend's rounding of the logits it samples from) */
            n[sure] = generate(e, prompts[0], 8, 40, true, sps[k], 0, out[sure], &st[sure]);
            cr_assert(n[sure] >= 8, "request %d: %d tokens", k, n[sure]);
            engine_free(e);
        }
        cr_assert_leq(st[1].n_drafted, st[1].n_target_passes, "request %d: one draft per round at most", k);
        cr_assert_gt(st[0].n_drafted, 2 * st[0].n_target_passes, "request %d: without the bound runs go on", k);
        if (k < 2) {
            cr_assert_eq(n[1], n[0], "request %d: the output is the target's", k);
            cr_assert_arr_eq(out[1], out[0], sizeof(int32_t) * (size_t)n[0], "request %d: the output is the target's",
                             k);
        }
    }
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

Test(engine, greedy_prompt_lookup_output_equals_target_only)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0});
    check_greedy_identity(t.m, NULL);
    tsupport_mem_model_free(&t);
}

/* With the target as its own draft, p == q at every position: every draft is accepted and each pass
 * adds the bonus token, so a pass yields draft_max + 1 tokens. */
static void check_self_draft(struct verify_params sp)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0});
    struct engine *e = new_engine(t.m, t.m, 4, false);
    int longest = 0;
    for (int pi = 0; pi < 4; pi++) {
        int32_t out[40];
        struct engine_stats st;
        const int n = generate(e, prompts[pi], 8, 40, true, sp, (uint64_t)pi, out, &st);
        cr_assert_eq(st.n_accepted, st.n_drafted, "prompt %d", pi);
        /* the last pass may be cut short by max_tokens or an end-of-generation token */
        cr_assert_eq(st.n_target_passes, (n + 4) / 5, "prompt %d: %d passes for %d tokens", pi,
                     st.n_target_passes, n);
        longest = n > longest ? n : longest;
    }
    cr_assert_eq(longest, 40, "some prompt must run to max_tokens for the test to mean something");
    engine_free(e);
    tsupport_mem_model_free(&t);
}

Test(engine, greedy_self_draft_accepts_every_draft_and_adds_the_bonus)
{
    check_self_draft(verify_params_default());
}

/* The draft penalises its tokens as the target does: on a backend that processes rows itself, through
 * the same ops (one-hot rows on the penalised argmax) for both. */
Test(engine, penalised_greedy_self_draft_accepts_every_draft_and_adds_the_bonus)
{
    struct verify_params sp = verify_params_default();
    sp.repeat_penalty = 1.3f;
    sp.presence_penalty = 0.5f;
    check_self_draft(sp);
}

Test(engine, sampled_self_draft_accepts_every_draft_and_adds_the_bonus)
{
    struct verify_params sp = verify_params_default();
    sp.temperature = 1.0f;
    sp.top_p = 0.95f;
    sp.seed = 77;
    check_self_draft(sp);
}

/* ---------------------------------------------------------------------------------------------- */
/* Prompt caching                                                                                 */

/* A request on an engine of its own: what a request served from kept caches must give. */
static int fresh_generate(struct model *t, struct model *d, const int32_t *prompt, int n_prompt, int n_gen,
                          struct verify_params sp, int32_t *out)
{
    struct engine *e = new_engine(t, d, 4, false);
    const int n = generate(e, prompt, n_prompt, n_gen, d != NULL, sp, 0, out, NULL);
    engine_free(e);
    return n;
}

/* A chat's turns: each prompt repeats the conversation so far and adds to it. The second turn finds
 * the first's caches (all of its tokens but the last generated one, which was never fed), the same
 * prompt again finds all but its own last token, a prompt that leaves the conversation after four
 * tokens finds those four; every output is a fresh engine's. Target-only and speculative, with a fixed
 * γ (so that a seed reproduces its sample). */
static void check_prompt_continuation(struct verify_params sp)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_QWEN2), dc = draft_cfg(MODEL_ARCH_QWEN2);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, be, (struct model_config){0});
    for (int spec = 0; spec < 2; spec++) {
        struct model *dm = spec ? d.m : NULL;
        struct engine *e = new_engine(t.m, dm, 4, false);
        int32_t turn[64], out[24], want[24];
        struct engine_stats st;
        memcpy(turn, prompts[0], sizeof prompts[0]);
        const int n1 = generate(e, turn, 8, 24, spec, sp, 0, out, &st);
        cr_assert_eq(st.n_prompt_cached, 0, "nothing is kept before the first request");
        memcpy(turn + 8, out, sizeof(int32_t) * (size_t)n1);
        const int32_t more[3] = {5, 6, 7};
        memcpy(turn + 8 + n1, more, sizeof more);
        const int n_turn = 8 + n1 + 3;

        const int n2 = generate(e, turn, n_turn, 16, spec, sp, 0, out, &st);
        cr_assert_eq(st.n_prompt_cached, 8 + n1 - 1, "spec %d: %d cached", spec, st.n_prompt_cached);
        cr_assert_eq(fresh_generate(t.m, dm, turn, n_turn, 16, sp, want), n2);
        cr_assert_arr_eq(out, want, sizeof(int32_t) * (size_t)n2, "spec %d: second turn", spec);

        cr_assert_eq(generate(e, turn, n_turn, 16, spec, sp, 0, out, &st), n2);
        cr_assert_eq(st.n_prompt_cached, n_turn - 1, "the same prompt again");
        cr_assert_arr_eq(out, want, sizeof(int32_t) * (size_t)n2, "spec %d: repeated", spec);

        turn[4] = (turn[4] + 1) % 300;
        const int n3 = generate(e, turn, n_turn, 16, spec, sp, 0, out, &st);
        cr_assert_eq(st.n_prompt_cached, 4, "a prompt that leaves the history after 4 tokens");
        cr_assert_eq(fresh_generate(t.m, dm, turn, n_turn, 16, sp, want), n3);
        cr_assert_arr_eq(out, want, sizeof(int32_t) * (size_t)n3, "spec %d: diverged", spec);
        engine_free(e);
    }
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

Test(engine, a_prompt_continuing_a_finished_greedy_request_reuses_its_caches)
{
    check_prompt_continuation(verify_params_default());
}

Test(engine, a_prompt_continuing_a_finished_sampled_request_reuses_its_caches)
{
    struct verify_params sp = verify_params_default();
    sp.temperature = 0.9f;
    sp.seed = 9;
    check_prompt_continuation(sp);
}

/* With two slots: a new prompt takes an empty slot rather than another prompt's caches, a repeated
 * prompt finds its own slot, and when every slot keeps something the one unused the longest goes. */
Test(engine, a_request_takes_the_free_slot_holding_the_longest_start_of_its_prompt)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0});
    const struct engine_config cfg = {.target = t.m, .n_ctx = 256, .draft_max = 4, .draft_min = 1,
                                      .penalty_window = 64, .max_seqs = 2};
    struct engine *e = NULL;
    cr_assert_eq(engine_new(&cfg, &e), SPEC_OK);
    const struct verify_params greedy = verify_params_default();
    int32_t out[8];
    struct engine_stats st;
    const int order[] = {0, 3, 0, 3, 1, 3, 0}, cached[] = {0, 0, 7, 7, 0, 7, 0};
    for (int i = 0; i < 7; i++) {
        generate(e, prompts[order[i]], 8, 8, false, greedy, 0, out, &st);
        cr_assert_eq(st.n_prompt_cached, cached[i], "request %d (prompt %d): %d cached, want %d", i, order[i],
                     st.n_prompt_cached, cached[i]);
    }
    engine_free(e);
    tsupport_mem_model_free(&t);
}

Test(engine, prompt_filling_the_context_is_a_named_error)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0});
    struct engine *e = new_engine(t.m, NULL, 4, true);
    int32_t *prompt = calloc(256, sizeof *prompt), out[4];
    const struct engine_request req = {.prompt = prompt, .n_prompt = 256, .max_tokens = 4,
                                       .sampling = verify_params_default(), .speculative = true};
    int n;
    enum engine_finish fin;
    cr_assert_eq(engine_generate(e, &req, NULL, NULL, out, 4, &n, &fin, NULL), SPEC_E_CONTEXT_FULL);
    free(prompt);
    engine_free(e);
    tsupport_mem_model_free(&t);
}

Test(engine, generation_stops_with_length_at_the_context_limit)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA), dc = draft_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}), d = tsupport_load_synth(&dc, be, (struct model_config){0});
    struct engine *e = new_engine(t.m, d.m, 8, false);
    int32_t prompt[250] = {0}, out[64];
    for (int i = 0; i < 250; i++)
        prompt[i] = (i * 37) % 300;
    const struct engine_request req = {.prompt = prompt, .n_prompt = 250, .max_tokens = 64,
                                       .sampling = verify_params_default(), .speculative = true};
    int n;
    enum engine_finish fin;
    cr_assert_eq(engine_generate(e, &req, NULL, NULL, out, 64, &n, &fin, NULL), SPEC_OK);
    cr_assert_eq(fin, ENGINE_FINISH_LENGTH);
    cr_assert_eq(n, 6, "250 prompt tokens leave room for 6 in a 256 context, got %d", n);
    engine_free(e);
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

static int cancel_after_first(void *user, const struct engine_update *u)
{
    *(int *)user += u->n_tokens;
    return 1;
}

Test(engine, token_callback_can_cancel)
{
    struct model_synth_config tc = target_cfg(MODEL_ARCH_LLAMA);
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0});
    struct engine *e = new_engine(t.m, NULL, 4, true);
    int32_t out[32];
    int seen = 0, n;
    enum engine_finish fin;
    const struct engine_request req = {.prompt = prompts[1], .n_prompt = 8, .max_tokens = 32,
                                       .sampling = verify_params_default(), .speculative = true};
    cr_assert_eq(engine_generate(e, &req, cancel_after_first, &seen, out, 32, &n, &fin, NULL), SPEC_OK);
    cr_assert_eq(fin, ENGINE_FINISH_CANCELLED);
    cr_assert_eq(n, seen);
    cr_assert_lt(n, 32);
    engine_free(e);
    tsupport_mem_model_free(&t);
}

/* 0.1% critical value of chi-square with df degrees of freedom (Wilson-Hilferty). */
static double chi2_critical(int df)
{
    const double z = 3.090, h = 2.0 / (9.0 * df);
    return df * pow(1.0 - h + z * sqrt(h), 3.0);
}

/* Two-sample chi-square over cells; cells with fewer than 10 observations in total are pooled. */
static void check_same_distribution(const int *a, const int *b, int n_cells, const char *what)
{
    double chi = 0.0;
    int df = -1, pool_a = 0, pool_b = 0;
    for (int i = 0; i < n_cells; i++) {
        if (a[i] + b[i] < 10) {
            pool_a += a[i];
            pool_b += b[i];
            continue;
        }
        chi += (double)(a[i] - b[i]) * (a[i] - b[i]) / (a[i] + b[i]);
        df++;
    }
    if (pool_a + pool_b > 0) {
        chi += (double)(pool_a - pool_b) * (pool_a - pool_b) / (pool_a + pool_b);
        df++;
    }
    cr_assert_gt(df, 0, "%s: degenerate distribution", what);
    cr_assert_lt(chi, chi2_critical(df), "%s: chi-square %.1f over %d df", what, chi, df);
}

enum { SMALL_VOCAB = 64, N_SAMPLES = 20000, N_POS = 3 };

/* Counts of each of the first three tokens over N_SAMPLES independent requests. */
static void sample_counts(struct engine *e, struct verify_params sp, bool spec, int (*counts)[SMALL_VOCAB])
{
    static const int32_t prompt[4] = {1, 20, 30, 40};
    for (uint64_t s = 0; s < N_SAMPLES; s++) {
        int32_t out[N_POS];
        const int n = generate(e, prompt, 4, N_POS, spec, sp, s, out, NULL);
        for (int i = 0; i < n; i++)
            counts[i][out[i]]++;
    }
}

/* Speculative sampling against direct target sampling, for the first three tokens' marginals; the
 * draft scores the first draft_vocab ids (0: all). */
static void check_distribution(struct verify_params sp, int draft_vocab)
{
    struct model_synth_config tc = {.arch = MODEL_ARCH_LLAMA, .wtype = SPEC_F32, .n_layer = 1, .n_embd = 32,
                                    .n_head = 2, .n_head_kv = 1, .n_ff = 64, .n_vocab = SMALL_VOCAB, .n_ctx = 32,
                                    .tok_kind = TOK_KIND_SPM, .seed = 3};
    struct model_synth_config dc = tc;
    dc.n_embd = 16;
    dc.n_head = 1;
    struct mem_model t = tsupport_load_synth(&tc, be, (struct model_config){0}),
                     d = tsupport_load_synth(&dc, be, (struct model_config){.n_logits = draft_vocab});
    struct engine *e = new_engine(t.m, d.m, 3, false);
    static int spec[N_POS][SMALL_VOCAB], direct[N_POS][SMALL_VOCAB];
    memset(spec, 0, sizeof spec);
    memset(direct, 0, sizeof direct);
    sample_counts(e, sp, true, spec);
    sp.seed += 1000003; /* an independent stream for the baseline */
    sample_counts(e, sp, false, direct);
    for (int i = 0; i < N_POS; i++) {
        char what[96];
        snprintf(what, sizeof what, "T=%.1f top_k=%d top_p=%.2f min_p=%.2f token %d", sp.temperature, sp.top_k,
                 sp.top_p, sp.min_p, i);
        check_same_distribution(spec[i], direct[i], SMALL_VOCAB, what);
    }
    engine_free(e);
    tsupport_mem_model_free(&d);
    tsupport_mem_model_free(&t);
}

/* At each temperature, with the given filters (0, 1, 0: none). */
static void check_filtered(int32_t top_k, float top_p, float min_p, uint64_t seed, int draft_vocab)
{
    const float temps[] = {0.5f, 1.0f, 1.5f};
    for (int i = 0; i < 3; i++) {
        struct verify_params sp = verify_params_default();
        sp.temperature = temps[i];
        sp.seed = seed;
        sp.top_k = top_k;
        sp.top_p = top_p;
        sp.min_p = min_p;
        check_distribution(sp, draft_vocab);
    }
}

Test(engine, sampled_speculative_matches_target_distribution_plain, .timeout = 300)
{
    check_filtered(0, 1.0f, 0.0f, 11, 0);
}

/* Each filter alone and all together. */

Test(engine, sampled_speculative_matches_target_distribution_top_k, .timeout = 300)
{
    check_filtered(20, 1.0f, 0.0f, 13, 0);
}

Test(engine, sampled_speculative_matches_target_distribution_top_p, .timeout = 300)
{
    check_filtered(0, 0.9f, 0.0f, 14, 0);
}

Test(engine, sampled_speculative_matches_target_distribution_min_p, .timeout = 300)
{
    check_filtered(0, 1.0f, 0.01f, 15, 0);
}

Test(engine, sampled_speculative_matches_target_distribution_all_filters, .timeout = 300)
{
    check_filtered(20, 0.9f, 0.01f, 12, 0);
}

/* The draft gives q = 0 to ids 32..63, which the target still samples: only the residual draw can
 * produce them, so a residual that is not max(0, p - q) normalised shows here. */
Test(engine, sampled_speculative_with_a_vocabulary_limited_draft_matches_target_distribution, .timeout = 300)
{
    check_filtered(0, 1.0f, 0.0f, 16, SMALL_VOCAB / 2);
}
