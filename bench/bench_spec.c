/* bench_spec: the A/B speed benchmark. For each prompt of a Spec-Bench style JSONL file it runs
 * target-only greedy decoding and speculative decoding (fixed γ values and adaptive) on the same
 * machine in the same process, checks that the greedy outputs are identical, and prints per-category
 * acceptance, tokens per target pass and speedup as a markdown table, then for each γ the time a drafted
 * token and a target pass took (engine_stats' t_draft and t_target).
 *
 *   bench_spec --target T.gguf [--draft D.gguf] --prompts FILE [--per-category N] [-n TOKENS]
 *              [--gammas 2,4,8,0] [--draft-vocab N] [--threads N] [--concurrency C] [--device auto|cpu|cuda]
 *              [--temperature T] [--sampling backend|host] [--draft-ids backend|host] [--graphs]
 *              [--tensor-cores] [--blas-prefill]
 * γ = 0 in --gammas means adaptive (draft_min 1, draft_max 8). --draft-vocab N: the draft scores only
 * token ids below N (model_config.n_logits). --temperature T > 0 samples (llama.cpp's defaults besides:
 * top-k 40, top-p 0.95, min-p 0.05; seed 1) instead of decoding greedily: the outputs then follow the
 * same distribution without being the same tokens, and the identity column says "sampled".
 * --sampling host processes and verifies sampled rows on the host even where the backend could
 * (engine_config.host_sampling), for the A/B of sampling on the GPU; --draft-ids host has a draft model's
 * greedy runs bring each token to the host every pass even where the backend could keep them there
 * until a run ends (engine_config.host_draft_ids), for the A/B of that. --graphs records each model step
 * as a CUDA graph and replays it (kern_backend_config.graphs), for both sides of the A/B; --tensor-cores
 * multiplies the quantised weights on int8 tensor cores (kern_backend_config.tensor_cores); --blas-prefill
 * runs the prompts' matmuls through cuBLAS (kern_backend_config.blas_prefill).
 *
 * With --concurrency C it checks greedy identity instead, on up to --per-category prompts of every
 * category: each prompt decoded target-only and speculatively (adaptive γ), both requests side by
 * side, C requests at a time through the engine's continuous batching (bit-identical per request);
 * each prompt's verdict goes to stderr as soon as its pair is done, the table to stdout at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "common/err.h"
#include "engine/engine.h"
#include "model/model.h"

#define MAX_CATS 32
#define MAX_GAMMAS 8

/* Decodes the JSON string value of "key" in one JSONL line into a malloc'd UTF-8 string. */
static char *json_string_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(line, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ' || *p == ':')
        p++;
    if (*p++ != '"')
        return NULL;
    char *out = malloc(strlen(p) + 1), *o = out;
    if (!out)
        return NULL;
    while (*p && *p != '"') {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        p++;
        unsigned cp = 0;
        switch (*p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u':
            if (sscanf(p + 1, "%4x", &cp) != 1)
                goto bad;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p[1] == '\\' && p[2] == 'u') {
                unsigned lo;
                if (sscanf(p + 3, "%4x", &lo) == 1 && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) {
                *o++ = (char)(0xC0 | cp >> 6);
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xE0 | cp >> 12);
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xF0 | cp >> 18);
                *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        case '\0':
            goto bad;
        default: *o++ = *p; break; /* \" \\ \/ */
        }
        p++;
    }
    if (*p != '"')
        goto bad;
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

struct cat_stats {
    char name[64];
    int n_prompts;
    int n_identical[MAX_GAMMAS];
    double t_base, t_spec[MAX_GAMMAS];   /* decode seconds */
    long tok_base, tok_spec[MAX_GAMMAS]; /* generated tokens */
    long drafted[MAX_GAMMAS], accepted[MAX_GAMMAS], passes[MAX_GAMMAS];
    double t_draft[MAX_GAMMAS], t_target[MAX_GAMMAS]; /* seconds drafting and scoring (engine_stats) */
};

struct args {
    const char *target, *draft, *prompts, *device;
    int per_category, n_gen, n_threads, n_gammas, concurrency, draft_vocab;
    int gammas[MAX_GAMMAS];
    float temperature;
    bool host_sampling, host_draft_ids;
    bool graphs, tensor_cores, blas_prefill;
};

static int parse_args(int argc, char **argv, struct args *a)
{
    *a = (struct args){.device = "auto", .per_category = 3, .n_gen = 64, .n_gammas = 4, .gammas = {2, 4, 8, 0}};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--graphs")) {
            a->graphs = true;
            continue;
        }
        if (!strcmp(argv[i], "--blas-prefill")) {
            a->blas_prefill = true;
            continue;
        }
        if (!strcmp(argv[i], "--tensor-cores")) {
            a->tensor_cores = true;
            continue;
        }
        if (i + 1 == argc)
            return -1;
        const char *o = argv[i], *v = argv[++i];
        if (!strcmp(o, "--target"))
            a->target = v;
        else if (!strcmp(o, "--draft"))
            a->draft = v;
        else if (!strcmp(o, "--device"))
            a->device = v;
        else if (!strcmp(o, "--prompts"))
            a->prompts = v;
        else if (!strcmp(o, "--per-category"))
            a->per_category = atoi(v);
        else if (!strcmp(o, "-n"))
            a->n_gen = atoi(v);
        else if (!strcmp(o, "--threads"))
            a->n_threads = atoi(v);
        else if (!strcmp(o, "--concurrency"))
            a->concurrency = atoi(v);
        else if (!strcmp(o, "--draft-vocab"))
            a->draft_vocab = atoi(v);
        else if (!strcmp(o, "--temperature"))
            a->temperature = (float)atof(v);
        else if (!strcmp(o, "--sampling") && (!strcmp(v, "host") || !strcmp(v, "backend")))
            a->host_sampling = !strcmp(v, "host");
        else if (!strcmp(o, "--draft-ids") && (!strcmp(v, "host") || !strcmp(v, "backend")))
            a->host_draft_ids = !strcmp(v, "host");
        else if (!strcmp(o, "--gammas")) {
            if ((a->n_gammas = bench_int_list(v, a->gammas, MAX_GAMMAS)) < 0)
                return -1;
        } else
            return -1;
    }
    return a->target && a->prompts && a->n_gen > 0 && a->per_category > 0 && a->concurrency >= 0 &&
                   a->concurrency <= ENGINE_MAX_SEQS && a->temperature >= 0.0f &&
                   (a->temperature == 0.0f || !a->concurrency)
               ? 0
               : -1;
}

static struct cat_stats *category(struct cat_stats *cats, int *n_cats, const char *name)
{
    for (int i = 0; i < *n_cats; i++)
        if (!strcmp(cats[i].name, name))
            return &cats[i];
    if (*n_cats == MAX_CATS)
        return NULL;
    struct cat_stats *c = &cats[(*n_cats)++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    return c;
}

/* Greedy, or at a temperature with llama.cpp's default filters. */
static struct verify_params sampling(float temperature)
{
    struct verify_params sp = verify_params_default();
    if (temperature > 0.0f) {
        sp.temperature = temperature;
        sp.top_k = 40;
        sp.top_p = 0.95f;
        sp.min_p = 0.05f;
        sp.seed = 1;
    }
    return sp;
}

static int run(struct engine *e, const int32_t *prompt, int n_prompt, int n_gen, float temperature, bool spec,
               int32_t *out, int *n_out, struct engine_stats *st)
{
    const struct engine_request req = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = n_gen,
                                       .sampling = sampling(temperature), .speculative = spec};
    enum engine_finish fin;
    return engine_generate(e, &req, NULL, NULL, out, n_gen, n_out, &fin, st);
}

static void print_table(const struct args *a, const struct cat_stats *cats, int n_cats)
{
    printf("| category | prompts |");
    for (int g = 0; g < a->n_gammas; g++) {
        if (a->gammas[g])
            printf(" γ=%d accept | γ=%d tok/pass | γ=%d speedup |", a->gammas[g], a->gammas[g], a->gammas[g]);
        else
            printf(" adaptive accept | adaptive tok/pass | adaptive speedup |");
    }
    printf(" greedy identical |\n|---|---|");
    for (int g = 0; g < a->n_gammas; g++)
        printf("---|---|---|");
    printf("---|\n");
    for (int c = 0; c <= n_cats; c++) {
        struct cat_stats all = {0};
        const struct cat_stats *s = &cats[c];
        if (c == n_cats) { /* the overall row */
            snprintf(all.name, sizeof all.name, "**all**");
            for (int i = 0; i < n_cats; i++) {
                all.n_prompts += cats[i].n_prompts;
                all.t_base += cats[i].t_base;
                all.tok_base += cats[i].tok_base;
                for (int g = 0; g < a->n_gammas; g++) {
                    all.n_identical[g] += cats[i].n_identical[g];
                    all.t_spec[g] += cats[i].t_spec[g];
                    all.tok_spec[g] += cats[i].tok_spec[g];
                    all.drafted[g] += cats[i].drafted[g];
                    all.accepted[g] += cats[i].accepted[g];
                    all.passes[g] += cats[i].passes[g];
                }
            }
            s = &all;
        }
        printf("| %s | %d |", s->name, s->n_prompts);
        int identical = 0;
        for (int g = 0; g < a->n_gammas; g++) {
            const double base = s->tok_base / s->t_base, spec = s->tok_spec[g] / s->t_spec[g];
            printf(" %.3f | %.2f | %.2fx |", s->drafted[g] ? (double)s->accepted[g] / s->drafted[g] : 0.0,
                   s->passes[g] ? (double)s->tok_spec[g] / s->passes[g] : 0.0, spec / base);
            identical += s->n_identical[g];
        }
        if (a->temperature > 0.0f)
            printf(" sampled |\n");
        else
            printf(" %d/%d |\n", identical, s->n_prompts * a->n_gammas);
    }
}

/* Where the speculative runs' time went, over all prompts: drafting a token and scoring a pass. */
static void print_times(const struct args *a, const struct cat_stats *cats, int n_cats)
{
    printf("\n| γ | draft ms a drafted token | target ms a pass |\n|---|---|---|\n");
    for (int g = 0; g < a->n_gammas; g++) {
        double t_draft = 0.0, t_target = 0.0;
        long drafted = 0, passes = 0;
        for (int c = 0; c < n_cats; c++) {
            t_draft += cats[c].t_draft[g];
            t_target += cats[c].t_target[g];
            drafted += cats[c].drafted[g];
            passes += cats[c].passes[g];
        }
        char name[16] = "adaptive";
        if (a->gammas[g])
            snprintf(name, sizeof name, "%d", a->gammas[g]);
        printf("| %s | %.3f | %.3f |\n", name, drafted ? t_draft * 1e3 / drafted : 0.0,
               passes ? t_target * 1e3 / passes : 0.0);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Greedy identity over many prompts, batched                                                     */

#define MAX_PROMPT 2048
#define IDENTITY_CTX 2560

struct job {
    char category[64];
    int32_t *prompt;
    int n_prompt;
    int32_t *out[2]; /* target-only, speculative */
    int n_out[2];
    bool done[2];
    int error[2];
    struct engine_stats st[2];
};

struct job_ref {
    struct job *j;
    int mode;
};

static int job_update(void *user, const struct engine_update *u)
{
    struct job_ref *r = user;
    struct job *j = r->j;
    memcpy(j->out[r->mode] + j->n_out[r->mode], u->tokens, (size_t)u->n_tokens * sizeof *u->tokens);
    j->n_out[r->mode] += u->n_tokens;
    if (u->done) {
        j->done[r->mode] = true;
        j->error[r->mode] = u->finish == ENGINE_FINISH_ERROR ? u->error : 0;
        j->st[r->mode] = *u->stats;
    }
    return 0;
}

/* The first difference of a job's two outputs: the token index, or -1 when they are identical. */
static int first_difference(const struct job *j)
{
    int k = 0;
    while (k < j->n_out[0] && k < j->n_out[1] && j->out[0][k] == j->out[1][k])
        k++;
    return k == j->n_out[0] && k == j->n_out[1] && !j->error[0] && !j->error[1] ? -1 : k;
}

/* Every job both ways, target-only and speculative side by side in one batch of up to `concurrency`
 * requests (each request's tokens do not depend on its batch-mates), so that each prompt is judged,
 * and a line printed to stderr, as soon as its pair is done: a run cut short has still checked the
 * prompts it finished. Returns 0 or the engine's error. */
static int run_pairs(struct engine *e, struct job *jobs, struct job_ref *refs, int n_jobs, int n_gen)
{
    int next = 0, judged = 0;
    bool *reported = calloc((size_t)n_jobs, sizeof *reported);
    if (!reported)
        return SPEC_E_NOMEM;
    int err = 0;
    while (judged < n_jobs && !err) {
        while (next < 2 * n_jobs && engine_n_active(e) < engine_max_seqs(e)) {
            const int i = next / 2, mode = next % 2;
            const struct engine_request req = {.prompt = jobs[i].prompt, .n_prompt = jobs[i].n_prompt,
                                               .max_tokens = n_gen, .sampling = verify_params_default(),
                                               .speculative = mode == 1, .seq_id = (uint64_t)i};
            refs[next] = (struct job_ref){.j = &jobs[i], .mode = mode};
            uint32_t id;
            if ((err = engine_submit(e, &req, job_update, &refs[next], &id))) {
                fprintf(stderr, "bench_spec: prompt %d: %s\n", i, spec_strerror(err));
                break;
            }
            next++;
        }
        if (err || (err = engine_step(e)))
            break;
        for (int i = 0; i < next / 2 + next % 2; i++) {
            if (reported[i] || !jobs[i].done[0] || !jobs[i].done[1])
                continue;
            reported[i] = true;
            judged++;
            const int k = first_difference(&jobs[i]);
            if (k < 0)
                fprintf(stderr, "prompt %d (%s): identical, %d tokens (%d/%d judged)\n", i, jobs[i].category,
                        jobs[i].n_out[0], judged, n_jobs);
            else
                fprintf(stderr, "prompt %d (%s): DIFFERS at token %d (%d/%d judged)\n", i, jobs[i].category, k,
                        judged, n_jobs);
        }
    }
    free(reported);
    return err;
}

static int check_identity(const struct args *a, struct model *target, struct model *draft, FILE *f)
{
    struct job *jobs = calloc(1024, sizeof *jobs);
    struct job_ref *refs = calloc(2 * 1024, sizeof *refs);
    struct cat_stats cats[MAX_CATS];
    int n_cats = 0, n_jobs = 0, err = jobs && refs ? 0 : SPEC_E_NOMEM;
    char *line = NULL;
    size_t line_cap = 0;
    while (!err && n_jobs < 1024 && getline(&line, &line_cap, f) > 0) {
        char *cat_name = json_string_field(line, "category"), *text = json_string_field(line, "prompt");
        struct cat_stats *c = cat_name ? category(cats, &n_cats, cat_name) : NULL;
        struct job *j = &jobs[n_jobs];
        size_t n_prompt = 0;
        j->prompt = malloc(MAX_PROMPT * sizeof *j->prompt);
        if (c && text && j->prompt && c->n_prompts < a->per_category &&
            tok_encode(model_tokenizer(target), text, strlen(text), true, false, j->prompt, MAX_PROMPT, &n_prompt) == 0 &&
            n_prompt > 0) {
            snprintf(j->category, sizeof j->category, "%s", cat_name);
            j->n_prompt = (int)n_prompt;
            j->out[0] = malloc((size_t)a->n_gen * sizeof *j->out[0]);
            j->out[1] = malloc((size_t)a->n_gen * sizeof *j->out[1]);
            err = j->out[0] && j->out[1] ? 0 : SPEC_E_NOMEM;
            c->n_prompts++;
            n_jobs++;
        } else {
            free(j->prompt);
            j->prompt = NULL;
        }
        free(cat_name);
        free(text);
    }
    free(line);
    struct engine *e = NULL;
    const struct engine_config cfg = {.target = target, .draft = draft, .n_ctx = IDENTITY_CTX, .draft_max = 8,
                                      .draft_min = 1, .adaptive = true, .penalty_window = 64,
                                      .max_seqs = a->concurrency, .host_draft_ids = a->host_draft_ids};
    if (!err)
        err = engine_new(&cfg, &e);
    const double t0 = bench_now_s();
    if (!err)
        err = run_pairs(e, jobs, refs, n_jobs, a->n_gen);
    const double t = bench_now_s() - t0;
    if (!err) {
        printf("| category | prompts | greedy identical | first difference (prompt: token index) |\n|---|---|---|---|\n");
        long tok[2] = {0, 0}, drafted = 0, accepted = 0, passes = 0;
        int total_same = 0, total_err = 0;
        for (int c = 0; c < n_cats; c++) {
            int n = 0, same = 0;
            char diffs[256] = "";
            for (int i = 0; i < n_jobs; i++) {
                struct job *j = &jobs[i];
                if (strcmp(j->category, cats[c].name))
                    continue;
                n++;
                total_err += j->error[0] || j->error[1];
                const int k = first_difference(j);
                if (k < 0)
                    same++;
                else if (strlen(diffs) < 200)
                    snprintf(diffs + strlen(diffs), sizeof diffs - strlen(diffs), "%s%d: %d", diffs[0] ? ", " : "",
                             i, k);
            }
            total_same += same;
            printf("| %s | %d | %d/%d | %s |\n", cats[c].name, n, same, n, diffs[0] ? diffs : "—");
        }
        for (int i = 0; i < n_jobs; i++) {
            tok[0] += jobs[i].n_out[0];
            tok[1] += jobs[i].n_out[1];
            drafted += jobs[i].st[1].n_drafted;
            accepted += jobs[i].st[1].n_accepted;
            passes += jobs[i].st[1].n_target_passes;
        }
        printf("| **all** | %d | %d/%d | %d errors |\n\n", n_jobs, total_same, n_jobs, total_err);
        printf("Concurrency %d (target-only and speculative requests side by side): %ld + %ld tokens in %.1f s; "
               "speculative acceptance %.3f, %.2f tokens per request-pass\n",
               a->concurrency, tok[0], tok[1], t, drafted ? (double)accepted / drafted : 0.0,
               passes ? (double)tok[1] / passes : 0.0);
        err = total_same == n_jobs ? 0 : SPEC_E_RANGE;
    }
    engine_free(e);
    for (int i = 0; i < n_jobs; i++) {
        free(jobs[i].prompt);
        free(jobs[i].out[0]);
        free(jobs[i].out[1]);
    }
    free(jobs);
    free(refs);
    return err;
}

int main(int argc, char **argv)
{
    struct args a;
    if (parse_args(argc, argv, &a)) {
        fprintf(stderr, "usage: bench_spec --target T.gguf [--draft D.gguf] --prompts FILE [--per-category N] "
                        "[-n TOKENS] [--gammas 2,4,8,0] [--draft-vocab N] [--threads N] [--concurrency C] "
                        "[--device auto|cpu|cuda] [--temperature T] [--sampling backend|host] "
                        "[--draft-ids backend|host] [--graphs] [--tensor-cores] [--blas-prefill]\n");
        return 2;
    }
    struct kern_backend *be;
    struct model *target = NULL, *draft = NULL;
    const struct kern_backend_config be_cfg = {.n_threads = a.n_threads, .graphs = a.graphs,
                                               .tensor_cores = a.tensor_cores, .blas_prefill = a.blas_prefill};
    char backend[128];
    int err = kern_backend_create(a.device, &be_cfg, &be);
    if (!err) {
        kern_backend_describe(be, &be_cfg, backend, sizeof backend);
        fprintf(stderr, "bench_spec: backend %s\n", backend);
    }
    if (!err)
        err = model_load(a.target, be, &target);
    if (!err && a.draft)
        err = model_load_cfg(a.draft, be, &(struct model_config){.n_logits = a.draft_vocab}, &draft);
    FILE *f = err ? NULL : fopen(a.prompts, "r");
    if (err || !f) {
        fprintf(stderr, "bench_spec: %s\n", err ? spec_strerror(err) : "cannot open the prompts file");
        return 1;
    }
    if (a.concurrency > 0) {
        err = check_identity(&a, target, draft, f);
        if (err)
            fprintf(stderr, "bench_spec: %s\n", spec_strerror(err));
        fclose(f);
        model_free(draft);
        model_free(target);
        kern_backend_destroy(be);
        return err ? 1 : 0;
    }
    /* engines[0] runs target-only, engines[1 + g] γ = gammas[g]: each engine sees each prompt once,
     * so no run finds its own prompt in a prompt cache an earlier run of the same prompt left. */
    struct engine *engines[1 + MAX_GAMMAS] = {0};
    for (int g = -1; g < a.n_gammas && !err; g++) {
        const bool adaptive = g < 0 || a.gammas[g] == 0;
        const struct engine_config cfg = {.target = target, .draft = draft, .n_ctx = 2048,
                                          .draft_max = adaptive ? 8 : a.gammas[g], .draft_min = 1,
                                          .adaptive = adaptive, .penalty_window = 64,
                                          .host_sampling = a.host_sampling, .host_draft_ids = a.host_draft_ids};
        err = engine_new(&cfg, &engines[1 + g]);
    }
    struct cat_stats cats[MAX_CATS];
    int n_cats = 0;
    int32_t *prompt = malloc(8192 * sizeof *prompt), *want = malloc((size_t)a.n_gen * sizeof *want),
            *got = malloc((size_t)a.n_gen * sizeof *got);
    char *line = NULL;
    size_t line_cap = 0;
    while (!err && getline(&line, &line_cap, f) > 0) {
        char *cat_name = json_string_field(line, "category"), *text = json_string_field(line, "prompt");
        struct cat_stats *c = cat_name ? category(cats, &n_cats, cat_name) : NULL;
        size_t n_prompt = 0;
        if (c && text && c->n_prompts < a.per_category &&
            tok_encode(model_tokenizer(target), text, strlen(text), true, false, prompt, 8192, &n_prompt) == 0 &&
            n_prompt > 0 && n_prompt + (size_t)a.n_gen < 2048) {
            struct engine_stats st;
            int n_want, n_got;
            err = run(engines[0], prompt, (int)n_prompt, a.n_gen, a.temperature, false, want, &n_want, &st);
            c->t_base += st.t_draft + st.t_target;
            c->tok_base += st.n_generated;
            for (int g = 0; g < a.n_gammas && !err; g++) {
                err = run(engines[1 + g], prompt, (int)n_prompt, a.n_gen, a.temperature, true, got, &n_got, &st);
                c->t_spec[g] += st.t_draft + st.t_target;
                c->tok_spec[g] += st.n_generated;
                c->drafted[g] += st.n_drafted;
                c->accepted[g] += st.n_accepted;
                c->passes[g] += st.n_target_passes;
                c->t_draft[g] += st.t_draft;
                c->t_target[g] += st.t_target;
                c->n_identical[g] += n_got == n_want && !memcmp(got, want, (size_t)n_got * sizeof *got);
            }
            c->n_prompts++;
            fprintf(stderr, "%s: %zu prompt tokens done\n", c->name, n_prompt);
        }
        free(cat_name);
        free(text);
    }
    if (err)
        fprintf(stderr, "bench_spec: %s\n", spec_strerror(err));
    else {
        print_table(&a, cats, n_cats);
        print_times(&a, cats, n_cats);
    }
    free(line);
    free(prompt);
    free(want);
    free(got);
    fclose(f);
    for (int g = 0; g <= a.n_gammas; g++)
        engine_free(engines[g]);
    model_free(draft);
    model_free(target);
    kern_backend_destroy(be);
    return err ? 1 : 0;
}
