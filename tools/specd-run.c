/* specd-run: one-shot speculative generation from the command line, with the statistics a user
 * needs to judge it, and the same request without speculation for an A/B comparison. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "engine/engine.h"
#include "model/model.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: specd-run --target T.gguf [--draft D.gguf] -p PROMPT [options]\n"
            "  -n N                tokens to generate (default 128)\n"
            "  --temp T            temperature, 0 = greedy (default 0)\n"
            "  --top-k K --top-p P --min-p P\n"
            "  --repeat-penalty R --frequency-penalty F --presence-penalty P\n"
            "  --seed S            sampling seed (default 0)\n"
            "  --stop STR          end the text before STR (repeatable, up to 8)\n"
            "  --draft-max N       largest draft run (default 8)\n"
            "  --draft-min N       smallest adaptive draft run; 0: a round may go undrafted (default 1)\n"
            "  --fixed-draft       always draft --draft-max tokens (no adaptive choice)\n"
            "  --draft-min-prob P  end a draft run when the draft's probability drops below P (default 0)\n"
            "  --draft-vocab N     the draft scores only token ids below N (default: all; output unchanged)\n"
            "  --no-spec           target-only decoding\n"
            "  --ab                run speculative and target-only, and compare\n"
            "  --device D          auto | cpu | cuda (default auto: CUDA when usable, else the CPU)\n"
            "  --cuda-graphs       CUDA: record each model step as a graph and replay it (experimental)\n"
            "  --tensor-cores      CUDA: quantised matmuls on int8 tensor cores (experimental)\n"
            "  --blas-prefill      CUDA: the prompt's matmuls through cuBLAS (experimental)\n"
            "  --ctx N --threads N --ids\n"
            "Without --draft, drafts come from prompt lookup (n-grams of the context).\n");
}

struct args {
    const char *target, *draft, *prompt, *device;
    int n_gen, n_ctx, n_threads, draft_max, draft_min, draft_vocab;
    float draft_min_prob;
    bool no_spec, ab, fixed, ids, cuda_graphs, tensor_cores, blas_prefill;
    struct verify_params sp;
    const char *stop[ENGINE_MAX_STOP];
    int n_stop;
};

static int parse_args(int argc, char **argv, struct args *a)
{
    *a = (struct args){.device = "auto", .n_gen = 128, .draft_max = 8, .draft_min = 1, .sp = verify_params_default()};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            exit(0);
        }
        bool *flag = !strcmp(o, "--no-spec") ? &a->no_spec
                     : !strcmp(o, "--ab")        ? &a->ab
                     : !strcmp(o, "--fixed-draft") ? &a->fixed
                     : !strcmp(o, "--ids")       ? &a->ids
                     : !strcmp(o, "--cuda-graphs") ? &a->cuda_graphs
                     : !strcmp(o, "--tensor-cores") ? &a->tensor_cores
                     : !strcmp(o, "--blas-prefill") ? &a->blas_prefill
                                                 : NULL;
        if (flag) {
            *flag = true;
            continue;
        }
        if (!v)
            return -1;
        char *end = NULL;
        if (!strcmp(o, "--target") || !strcmp(o, "-m"))
            a->target = v;
        else if (!strcmp(o, "--draft"))
            a->draft = v;
        else if (!strcmp(o, "-p"))
            a->prompt = v;
        else if (!strcmp(o, "--device"))
            a->device = v;
        else if (!strcmp(o, "-n"))
            a->n_gen = (int)strtol(v, &end, 10);
        else if (!strcmp(o, "--ctx"))
            a->n_ctx = (int)strtol(v, &end, 10);
        else if (!strcmp(o, "--threads") || !strcmp(o, "-t"))
            a->n_threads = (int)strtol(v, &end, 10);
        else if (!strcmp(o, "--draft-max"))
            a->draft_max = (int)strtol(v, &end, 10);
        else if (!strcmp(o, "--draft-min"))
            a->draft_min = (int)strtol(v, &end, 10);
        else if (!strcmp(o, "--draft-vocab"))
            a->draft_vocab = (int)strtol(v, &end, 10);
        else if (!strcmp(o, "--draft-min-prob"))
            a->draft_min_prob = strtof(v, &end);
        else if (!strcmp(o, "--temp"))
            a->sp.temperature = strtof(v, &end);
        else if (!strcmp(o, "--top-k"))
            a->sp.top_k = (int32_t)strtol(v, &end, 10);
        else if (!strcmp(o, "--top-p"))
            a->sp.top_p = strtof(v, &end);
        else if (!strcmp(o, "--min-p"))
            a->sp.min_p = strtof(v, &end);
        else if (!strcmp(o, "--repeat-penalty"))
            a->sp.repeat_penalty = strtof(v, &end);
        else if (!strcmp(o, "--frequency-penalty"))
            a->sp.frequency_penalty = strtof(v, &end);
        else if (!strcmp(o, "--presence-penalty"))
            a->sp.presence_penalty = strtof(v, &end);
        else if (!strcmp(o, "--seed"))
            a->sp.seed = strtoull(v, &end, 10);
        else if (!strcmp(o, "--stop") && a->n_stop < ENGINE_MAX_STOP)
            a->stop[a->n_stop++] = v;
        else
            return -1;
        if (end && (*end != '\0' || end == v))
            return -1;
        i++;
    }
    return a->target && a->prompt && a->n_gen >= 0 && a->n_gen <= 1 << 20 ? 0 : -1;
}

static int fail(const char *what, int err, const char *why)
{
    fprintf(stderr, "specd-run: %s: %s (%s)%s%s\n", what, spec_strerror(err), spec_errname(err),
            why && why[0] ? ": " : "", why ? why : "");
    return 1;
}

/* Streams each round's text (the engine never splits a UTF-8 character) or token ids. */
static int print_update(void *user, const struct engine_update *u)
{
    const struct args *a = user;
    if (a->ids)
        for (int i = 0; i < u->n_tokens; i++)
            printf(" %d", u->tokens[i]);
    else
        fwrite(u->text, 1, u->n_text, stdout);
    fflush(stdout);
    return 0;
}

static void print_stats(const char *label, const struct engine_stats *s, enum engine_finish fin)
{
    const double t_decode = s->t_draft + s->t_target;
    fprintf(stderr, "[%s] finish=%s prompt=%d tokens (%.3f s), generated=%d in %.3f s: %.2f tok/s\n", label,
            engine_finish_name(fin), s->n_prompt, s->t_prefill, s->n_generated, t_decode,
            t_decode > 0 ? s->n_generated / t_decode : 0.0);
    if (s->n_drafted == 0)
        return;
    fprintf(stderr,
            "[%s] drafted=%d accepted=%d acceptance=%.3f target passes=%d\n"
            "[%s] tokens per target pass: %.3f with the bonus/corrected token, %.3f accepted drafts only\n"
            "[%s] time split: draft %.3f s (%.0f%%), target+verify %.3f s (%.0f%%)\n",
            label, s->n_drafted, s->n_accepted, (double)s->n_accepted / s->n_drafted, s->n_target_passes, label,
            (double)s->n_generated / s->n_target_passes, (double)s->n_accepted / s->n_target_passes, label,
            s->t_draft, 100.0 * s->t_draft / t_decode, s->t_target, 100.0 * s->t_target / t_decode);
}

static int run_once(struct engine *e, const struct args *a, const int32_t *prompt, int n_prompt, bool spec,
                    int32_t *out, struct engine_stats *st, int *n_out)
{
    const struct engine_request req = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = a->n_gen,
                                       .sampling = a->sp, .speculative = spec, .seq_id = 0, .stop = a->stop,
                                       .n_stop = a->n_stop};
    enum engine_finish fin;
    if (!a->ids)
        fputs(a->prompt, stdout);
    int err = engine_generate(e, &req, print_update, (void *)a, out, a->n_gen, n_out, &fin, st);
    if (err)
        return err;
    printf("\n");
    fflush(stdout);
    print_stats(spec ? "speculative" : "target-only", st, fin);
    return SPEC_OK;
}

int main(int argc, char **argv)
{
    struct args a;
    if (parse_args(argc, argv, &a)) {
        usage(stderr);
        return 2;
    }
    int err = verify_params_check(&a.sp);
    if (err)
        return fail("sampling options", err, NULL);
    struct kern_backend *be = NULL;
    struct model *target = NULL, *draft = NULL;
    struct engine *e = NULL;
    int32_t *prompt = NULL, *out = NULL, *out_ab = NULL;
    char why[256] = "";
    int rc = 1;

    const struct kern_backend_config be_cfg = {.n_threads = a.n_threads, .graphs = a.cuda_graphs,
                                               .tensor_cores = a.tensor_cores, .blas_prefill = a.blas_prefill};
    if ((err = kern_backend_create(a.device, &be_cfg, &be))) {
        fail(a.device, err, NULL);
        goto out;
    }
    char backend[128];
    kern_backend_describe(be, &be_cfg, backend, sizeof backend);
    fprintf(stderr, "backend: %s\n", backend);
    if ((err = model_load_cfg(a.target, be, &(struct model_config){.why = why, .why_cap = sizeof why}, &target))) {
        fail(a.target, err, why);
        goto out;
    }
    if (a.draft &&
        (err = model_load_cfg(a.draft, be,
                              &(struct model_config){.why = why, .why_cap = sizeof why, .n_logits = a.draft_vocab},
                              &draft))) {
        fail(a.draft, err, why);
        goto out;
    }
    const struct tok *tok = model_tokenizer(target);
    const size_t plen = strlen(a.prompt);
    size_t n_prompt = 0;
    prompt = malloc((plen + 2) * sizeof *prompt);
    out = malloc(((size_t)a.n_gen + 1) * sizeof *out);
    out_ab = malloc(((size_t)a.n_gen + 1) * sizeof *out_ab);
    if (!prompt || !out || !out_ab) {
        fail("setup", SPEC_E_NOMEM, NULL);
        goto out;
    }
    err = tok_encode(tok, a.prompt, plen, true, true, prompt, plen + 2, &n_prompt);
    if (err == SPEC_E_RANGE) { /* invalid UTF-8 became U+FFFD, which may take more tokens than bytes */
        int32_t *more = realloc(prompt, n_prompt * sizeof *prompt);
        if (!more) {
            fail("setup", SPEC_E_NOMEM, NULL);
            goto out;
        }
        prompt = more;
        err = tok_encode(tok, a.prompt, plen, true, true, prompt, n_prompt, &n_prompt);
    }
    if (err || n_prompt == 0) {
        fail("tokenize", err ? err : SPEC_E_INVALID_ARG, n_prompt == 0 ? "empty prompt" : NULL);
        goto out;
    }
    const struct engine_config cfg = {.target = target, .draft = draft, .n_ctx = a.n_ctx, .draft_max = a.draft_max,
                                      .draft_min = a.draft_min, .adaptive = !a.fixed,
                                      .draft_min_prob = a.draft_min_prob, .penalty_window = 64};
    if ((err = engine_new(&cfg, &e))) {
        fail("engine", err, NULL);
        goto out;
    }
    struct engine_stats st, st_ab;
    int n_out, n_ab;
    if ((err = run_once(e, &a, prompt, (int)n_prompt, !a.no_spec, out, &st, &n_out))) {
        fail("generate", err, NULL);
        goto out;
    }
    if (a.ab && !a.no_spec) {
        if ((err = run_once(e, &a, prompt, (int)n_prompt, false, out_ab, &st_ab, &n_ab))) {
            fail("generate", err, NULL);
            goto out;
        }
        const double spec_rate = st.n_generated / (st.t_draft + st.t_target);
        const double base_rate = st_ab.n_generated / (st_ab.t_draft + st_ab.t_target);
        const bool same = n_out == n_ab && memcmp(out, out_ab, (size_t)n_out * sizeof *out) == 0;
        fprintf(stderr, "[A/B] speedup %.2fx (%.2f vs %.2f tok/s); outputs %s\n", spec_rate / base_rate, spec_rate,
                base_rate, same ? "identical" : "differ");
    }
    rc = 0;
out:
    engine_free(e);
    free(prompt);
    free(out);
    free(out_ab);
    model_free(draft);
    model_free(target);
    kern_backend_destroy(be);
    return rc;
}
