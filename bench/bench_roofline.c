/* bench_roofline: how close one backend's decoding comes to its memory bandwidth, and what a
 * verification pass costs relative to one decode step.
 *
 *   bench_roofline --model M.gguf [--device auto|cpu|cuda] [--threads N] [--pos P] [--gamma-max G]
 *                  [--seconds S] [--copy-mib MIB] [--profile STEPS] [--graphs]
 *                  [--tensor-cores] [--blas-prefill] [--batch N] [--seqs S]
 *                  [--trace PASSES [--trace-positions N]]
 *
 * It prints, as markdown:
 *  - copy bandwidth: the backend copying an F32 tensor of MIB MiB into another (store_rows), counted
 *    as bytes read + bytes written per second, the fastest of repeated copies;
 *  - prefill of the P tokens of context (no outputs, as the engine's prefill): tokens/s, the batch
 *    being the model's internal step of N tokens (model_config.max_batch, default 64);
 *  - decode at batch 1 after P tokens of context: tokens/s, and the bytes one step must read (every
 *    weight matrix once, the embedding row aside, plus the K and V caches of the P positions) divided
 *    by the step time, as a percentage of the copy bandwidth (the roofline);
 *  - with --seqs S (2 … 64), decode steps of S sequences at once (each after its own P tokens, as the
 *    engine batches concurrent requests): the time of a step and its tokens/s against batch 1's;
 *  - verification of γ+1 positions (the last accepted token and γ drafts) for γ = 1 … G, as a
 *    multiple of one decode step's time.
 *  - where the backend keeps greedy ids (argmax_keep), decode in runs of G + 1 steps each fed the id the
 *    step before kept on the device, read back at the run's end (a draft model's greedy run): with no
 *    round trip a token, what the steps cost the GPU, without the host's share between them.
 * Decode and verification return each position's greedy id (the backend's argmax), as the engine
 * runs greedy requests; one more line times decode with the whole row of logits copied to the host.
 * Two more time a sampled verification pass of min(G + 1, 8) positions (temperature 0.8 with
 * llama.cpp's default filters, prompt-lookup drafts): its rows processed and the round run on the
 * host (verify/), and where the backend can, on the backend (sample_process/sample_choose).
 * --graphs records each step as a CUDA graph and replays it (kern_backend_config.graphs), for an A/B against
 * op by op; the table then counts how the steps ran. --tensor-cores multiplies the quantised weights on
 * int8 tensor cores (kern_backend_config.tensor_cores), for an A/B against dp4a; --blas-prefill runs the
 * prefill's matmuls through cuBLAS (kern_backend_config.blas_prefill), for an A/B of the prefill. Every figure is the
 * median of repeated runs, each rolled back so that all start at position P.
 * With --profile, STEPS more decode steps run with every op timed (kern_profile_start), then STEPS
 * verification passes of 8 positions: per kind of op, calls, host time and device time per pass, and the bandwidth of the ones that read weights or
 * the cache; the device's busy share of the profiled step says whether the kernels or their
 * launching set the pace (the timing itself slows the steps a little).
 * With --trace, it times nothing else: after the prefill and 3 passes of N positions (default 1, a
 * decode step; with --graphs, the first op by op and two recorded), PASSES more run inside the backend's
 * profiler region (kern_backend_ops.profiler_region), and it prints their wall time a pass. Under
 * `ncu --profile-from-start off` the region's kernels, and only they, are profiled: each kernel of a
 * steady-state step on its own, the graphs' included (bench/gpu/measure.sh's kernels step). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "common/err.h"
#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/model.h"
#include "verify/verify.h"

#define MAX_SEQS 64 /* --seqs */

struct args {
    const char *model, *device;
    int n_threads, pos, gamma_max, profile_steps, trace, trace_positions;
    bool graphs, tensor_cores, blas_prefill;
    double seconds;
    int copy_mib, batch, seqs;
};

static int parse_args(int argc, char **argv, struct args *a)
{
    *a = (struct args){.device = "auto", .pos = 512, .gamma_max = 16, .seconds = 1.0, .copy_mib = 256,
                       .trace_positions = 1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--graphs")) {
            a->graphs = true;
            continue;
        }
        if (!strcmp(o, "--tensor-cores")) {
            a->tensor_cores = true;
            continue;
        }
        if (!strcmp(o, "--blas-prefill")) {
            a->blas_prefill = true;
            continue;
        }
        if (i + 1 >= argc)
            return -1;
        const char *v = argv[++i];
        if (!strcmp(o, "--model"))
            a->model = v;
        else if (!strcmp(o, "--device"))
            a->device = v;
        else if (!strcmp(o, "--threads"))
            a->n_threads = atoi(v);
        else if (!strcmp(o, "--pos"))
            a->pos = atoi(v);
        else if (!strcmp(o, "--gamma-max"))
            a->gamma_max = atoi(v);
        else if (!strcmp(o, "--seconds"))
            a->seconds = atof(v);
        else if (!strcmp(o, "--copy-mib"))
            a->copy_mib = atoi(v);
        else if (!strcmp(o, "--profile"))
            a->profile_steps = atoi(v);
        else if (!strcmp(o, "--batch"))
            a->batch = atoi(v);
        else if (!strcmp(o, "--seqs"))
            a->seqs = atoi(v);
        else if (!strcmp(o, "--trace"))
            a->trace = atoi(v);
        else if (!strcmp(o, "--trace-positions"))
            a->trace_positions = atoi(v);
        else
            return -1;
    }
    if (!a->model || a->pos < 1 || a->gamma_max < 1 || a->gamma_max > 64 || a->seconds <= 0 || a->copy_mib < 1 ||
        a->profile_steps < 0 || a->batch < 0 || a->seqs < 0 || a->seqs == 1 || a->seqs > MAX_SEQS || a->trace < 0 ||
        a->trace_positions < 1 || a->trace_positions > a->gamma_max + 1)
        return -1;
    return 0;
}

static int cmp_double(const void *x, const void *y)
{
    const double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

#define MAX_RUNS 256

/* Median seconds of one forward of n tokens in each of the n_seqs sequences s[] at once (then each
 * rolled back), every position's greedy id to `ids` (n_seqs x n) or, when logits is not NULL (one
 * sequence), its logits to `logits`; repeated for about `seconds` (at least 3 runs). */
static int time_forward(struct model *m, struct model_seq *const *s, int n_seqs, const int32_t *tokens, int n,
                        int32_t *ids, float *logits, double seconds, double *median)
{
    struct model_batch_item it[MAX_SEQS];
    int pos[MAX_SEQS];
    for (int i = 0; i < n_seqs; i++) {
        it[i] = (struct model_batch_item){.s = s[i], .tokens = tokens, .n = n, .all_logits = true, .logits = logits,
                                          .argmax = logits ? NULL : ids + (size_t)i * n};
        pos[i] = model_seq_len(s[i]);
    }
    double t[MAX_RUNS];
    int runs = 0;
    const double end = bench_now_s() + seconds;
    while (runs < MAX_RUNS && (runs < 3 || bench_now_s() < end)) {
        const double t0 = bench_now_s();
        int err = model_forward_batch(m, it, n_seqs);
        t[runs++] = bench_now_s() - t0;
        for (int i = 0; i < n_seqs && !err; i++)
            err = model_seq_truncate(s[i], pos[i]);
        if (err)
            return err;
    }
    qsort(t, (size_t)runs, sizeof t[0], cmp_double);
    *median = t[runs / 2];
    return SPEC_OK;
}

/* Median seconds a token of a run of n decode steps each fed the greedy id the step before kept on the
 * backend (kern_backend_ops.argmax_keep into `ids`, a draft model's greedy run), the ids read back once,
 * at the run's end (then rolled back); repeated for about `seconds` (at least 3 runs). */
static int time_chain(struct model *m, struct model_seq *s, int32_t first, int n, struct kern_tensor *ids,
                      double seconds, double *median)
{
    struct kern_backend *be = model_backend(m);
    const int pos = model_seq_len(s);
    int32_t host[65]; /* n <= gamma_max + 1 */
    double t[MAX_RUNS];
    int runs = 0;
    const double end = bench_now_s() + seconds;
    while (runs < MAX_RUNS && (runs < 3 || bench_now_s() < end)) {
        const double t0 = bench_now_s();
        int err = SPEC_OK;
        for (int k = 0; k < n && !err; k++) {
            const struct model_batch_item it = {.s = s, .tokens = k ? NULL : &first, .kept_tokens = k ? ids : NULL,
                                                .kept_row0 = k - 1, .n = 1, .keep_argmax = ids, .keep_row0 = k};
            err = model_forward_batch(m, &it, 1);
        }
        if (!err)
            err = be->ops->rows_to_host(be, ids, 0, n, host);
        t[runs++] = (bench_now_s() - t0) / n;
        if (!err)
            err = model_seq_truncate(s, pos);
        if (err)
            return err;
    }
    qsort(t, (size_t)runs, sizeof t[0], cmp_double);
    *median = t[runs / 2];
    return SPEC_OK;
}

/* Median seconds of a prefill of tokens[0 .. n) into the emptied sequence s, until the backend has
 * finished it (a row read back from a tensor of its own waits for everything enqueued before); repeated
 * for about `seconds` (at least 3 runs). */
static int time_prefill(struct model *m, struct model_seq *s, const int32_t *tokens, int n, double seconds,
                        double *median)
{
    struct kern_backend *be = model_backend(m);
    struct kern_tensor done;
    SPEC_TRY(be->ops->tensor_alloc(be, SPEC_F32, 1, 1, &done));
    double t[MAX_RUNS];
    float sink;
    int runs = 0, err = SPEC_OK;
    const double end = bench_now_s() + seconds;
    while (!err && runs < MAX_RUNS && (runs < 3 || bench_now_s() < end)) {
        if ((err = model_seq_truncate(s, 0)))
            break;
        const double t0 = bench_now_s();
        if (!(err = model_forward_last(m, s, tokens, n, NULL)) && !(err = be->ops->rows_to_host(be, &done, 0, 1, &sink)))
            t[runs++] = bench_now_s() - t0;
    }
    be->ops->tensor_free(be, &done);
    if (err)
        return err;
    qsort(t, (size_t)runs, sizeof t[0], cmp_double);
    *median = t[runs / 2];
    return SPEC_OK;
}

/* Median seconds of a sampled verification pass of n positions (then rolled back): the forward, each
 * row's processed distribution and the round of rejection sampling against one-hot drafts (the
 * tokens themselves), on the backend (`dev`: n rows of n_vocab there) or, when dev is NULL, on the
 * host (`rows`: n x n_vocab floats). */
static int time_sampled(struct model *m, struct model_seq *s, const int32_t *tokens, int n, struct kern_tensor *dev,
                        float *rows, double seconds, double *median)
{
    struct verify_params vp = verify_params_default();
    vp.temperature = 0.8f, vp.top_k = 40, vp.top_p = 0.95f, vp.min_p = 0.05f, vp.seed = 1;
    const struct kern_sampler ks = verify_sampler(&vp);
    const int32_t n_vocab = model_n_vocab(m);
    struct verify_scratch *vs = NULL;
    float *p = malloc((size_t)n * (size_t)n_vocab * sizeof *p), *q = calloc((size_t)n * (size_t)n_vocab, sizeof *q),
          *residual = malloc((size_t)n_vocab * sizeof *residual);
    int err = p && q && residual ? verify_scratch_new(n_vocab, &vs) : SPEC_E_NOMEM;
    for (int i = 0; i + 1 < n; i++)
        q[(size_t)i * n_vocab + tokens[i + 1]] = 1.0f;
    struct model_batch_item it = {.s = s, .tokens = tokens, .n = n, .all_logits = true, .logits = rows};
    if (dev)
        it = (struct model_batch_item){.s = s, .tokens = tokens, .n = n, .all_logits = true, .sampler = &ks,
                                       .probs = dev, .window_ctx = tokens, .window_end0 = 1, .window_len = 64};
    double t[MAX_RUNS], u[2 * 65];
    int runs = 0;
    const int pos = model_seq_len(s);
    const double end = bench_now_s() + seconds;
    while (!err && runs < MAX_RUNS && (runs < 3 || bench_now_s() < end)) {
        const double t0 = bench_now_s();
        int32_t out[65];
        int n_out;
        err = model_forward_batch(m, &it, 1);
        if (!err && dev) {
            verify_round_draws(vp.seed, 0, (uint64_t)pos + 1, n - 1, u, u + 65);
            struct kern_choose round = {.p = dev, .draft = tokens + 1, .n_draft = n - 1, .u_accept = u,
                                        .u_sample = u + 65};
            struct kern_backend *be = model_backend(m);
            err = be->ops->sample_choose(be, &round, 1);
        }
        for (int i = 0; i < n && !err && !dev; i++)
            err = verify_process(&vp, rows + (size_t)i * n_vocab, n_vocab, tokens, (size_t)i + 1, vs,
                                 p + (size_t)i * n_vocab);
        if (!err && !dev) {
            const struct verify_round r = {.p = p, .q = q, .draft = tokens + 1, .n_draft = n - 1, .n_vocab = n_vocab,
                                           .seed = vp.seed, .pos0 = (uint64_t)pos + 1, .scratch = residual};
            err = verify_round_sampled(&r, out, &n_out);
        }
        t[runs++] = bench_now_s() - t0;
        if (!err)
            err = model_seq_truncate(s, pos);
    }
    verify_scratch_free(vs);
    free(p), free(q), free(residual);
    if (err)
        return err;
    qsort(t, (size_t)runs, sizeof t[0], cmp_double);
    *median = t[runs / 2];
    return SPEC_OK;
}

/* Bytes read by the copy and written by it, per second: the fastest of repeated copies. */
static int copy_bandwidth(struct kern_backend *be, int mib, double seconds, double *bytes_per_s)
{
    const int64_t cols = 1 << 16, rows = (int64_t)mib * (1 << 20) / (cols * 4);
    struct kern_tensor src, dst;
    int err = be->ops->tensor_alloc(be, SPEC_F32, cols, rows, &src);
    if (err)
        return err;
    if ((err = be->ops->tensor_alloc(be, SPEC_F32, cols, rows, &dst))) {
        be->ops->tensor_free(be, &src);
        return err;
    }
    float *host = calloc((size_t)cols, sizeof *host);
    double best = 1e30;
    const int reps = 8; /* copies per timing, so that launching and waiting are amortised */
    if (!host)
        err = SPEC_E_NOMEM;
    for (int64_t r = 0; r < rows && !err; r++)
        err = be->ops->rows_from_host(be, &src, r, 1, host);
    const double end = bench_now_s() + seconds;
    for (int runs = 0; !err && (runs < 3 || bench_now_s() < end); runs++) {
        const double t0 = bench_now_s();
        for (int i = 0; i < reps && !err; i++)
            err = be->ops->store_rows(be, &src, &dst, 0);
        if (!err) /* waits for the copies: results reach the host in order */
            err = be->ops->rows_to_host(be, &dst, rows - 1, 1, host);
        const double t = (bench_now_s() - t0) / reps;
        if (t < best)
            best = t;
    }
    *bytes_per_s = 2.0 * (double)src.row_bytes * (double)rows / best;
    free(host);
    be->ops->tensor_free(be, &dst);
    be->ops->tensor_free(be, &src);
    return err;
}

/* STEPS passes of n positions (n = 1: decode; more: a verification pass) with every op timed, then
 * the table per kind of op (per pass). */
static int profile_pass(struct kern_backend *be, struct model *m, struct model_seq *s, const int32_t *tokens, int n,
                        int steps)
{
    int32_t ids[65];
    const struct model_batch_item it = {.s = s, .tokens = tokens, .n = n, .all_logits = true, .argmax = ids};
    const int pos = model_seq_len(s);
    int err = kern_profile_start(be);
    const double t0 = bench_now_s();
    for (int i = 0; i < steps && !err; i++)
        if (!(err = model_forward_batch(m, &it, 1)))
            err = model_seq_truncate(s, pos);
    const double wall_ms = (bench_now_s() - t0) * 1e3 / steps;
    struct kern_op_profile ops[48];
    int n_ops = 0;
    if (err || (err = kern_profile_stop(be, ops, 48, &n_ops)))
        return err;
    printf("\n| op (%d profiled passes of %d position%s) | calls/pass | host µs/pass | device µs/pass | GB/s read |\n"
           "|---|---|---|---|---|\n", steps, n, n > 1 ? "s" : "");
    double host = 0.0, device = 0.0;
    for (int i = 0; i < n_ops; i++) {
        const double dev_us = ops[i].device_ms * 1e3 / steps;
        printf("| %s | %.1f | %.1f | %.1f |", ops[i].op, (double)ops[i].calls / steps, ops[i].host_ms * 1e3 / steps,
               dev_us);
        if (ops[i].bytes > 0 && ops[i].device_ms > 0)
            printf(" %.1f |\n", ops[i].bytes / (ops[i].device_ms * 1e-3) / 1e9);
        else
            printf(" |\n");
        host += ops[i].host_ms;
        device += ops[i].device_ms;
    }
    printf("| all | | %.1f | %.1f | |\n", host * 1e3 / steps, device * 1e3 / steps);
    printf("\nprofiled pass: %.3f ms wall; the device busy %.0f%% of it, the host inside ops %.0f%%\n", wall_ms,
           100.0 * device / steps / wall_ms, 100.0 * host / steps / wall_ms);
    return SPEC_OK;
}

/* --trace: `passes` passes of n positions inside the backend's profiler region, after 3 outside it (with
 * graphs: the step recorded, then replayed), so that the region holds steady-state steps only; *ms: the
 * wall time of a pass there, *ran: how the region's steps ran (zeros without step_stats). */
static int trace_passes(struct kern_backend *be, struct model *m, struct model_seq *s, const int32_t *tokens, int n,
                        int passes, double *ms, struct kern_step_stats *ran)
{
    int32_t ids[65];
    const struct model_batch_item it = {.s = s, .tokens = tokens, .n = n, .all_logits = true, .argmax = ids};
    const int pos = model_seq_len(s), warm = 3;
    struct kern_step_stats st0 = {0};
    *ran = (struct kern_step_stats){0};
    int err = SPEC_OK;
    double t0 = 0.0;
    for (int i = 0; i < warm + passes && !err; i++) {
        if (i == warm && be->ops->step_stats && (err = be->ops->step_stats(be, &st0)))
            break;
        if (i == warm && be->ops->profiler_region && (err = be->ops->profiler_region(be, true)))
            break;
        if (i == warm)
            t0 = bench_now_s();
        if (!(err = model_forward_batch(m, &it, 1)))
            err = model_seq_truncate(s, pos);
    }
    if (err)
        return err;
    *ms = (bench_now_s() - t0) * 1e3 / passes;
    if (be->ops->profiler_region && (err = be->ops->profiler_region(be, false)))
        return err;
    if (be->ops->step_stats && !(err = be->ops->step_stats(be, ran)))
        *ran = (struct kern_step_stats){ran->steps - st0.steps, ran->recorded - st0.recorded,
                                        ran->replayed - st0.replayed, ran->repeated - st0.repeated, ran->nodes};
    return err;
}

/* What one decode step reads: every tensor but the token embedding, which is read one row at a time
 * unless the output layer shares it (no output.weight). */
static int weight_bytes(const char *path, double *bytes)
{
    struct gguf *g;
    const int err = gguf_open(path, &g);
    if (err)
        return err;
    const bool tied = gguf_find_tensor(g, "output.weight") == NULL;
    double total = 0.0;
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        if (!tied && gguf_str_eq(t->name, "token_embd.weight"))
            continue;
        total += (double)t->n_bytes;
    }
    gguf_close(g);
    *bytes = total;
    return SPEC_OK;
}

static void release(struct kern_backend *be, struct model *m, struct model_seq *s, int32_t *tokens, float *logits)
{
    free(logits);
    free(tokens);
    model_seq_free(s);
    model_free(m);
    kern_backend_destroy(be);
}

/* The table of a --trace run: what ran in the profiler region, and its wall time a pass. */
static void print_trace(const struct kern_backend *be, const struct kern_backend_config *cfg, const struct model *m,
                        const struct args *a, double ms, const struct kern_step_stats *ran)
{
    const struct model_hparams *hp = model_hparams(m);
    char backend[128];
    kern_backend_describe(be, cfg, backend, sizeof backend);
    printf("| measure | value |\n|---|---|\n| backend | %s |\n", backend);
    printf("| model | %s (%s, %d layers, n_embd %d, n_vocab %d) |\n", a->model, model_arch_name(hp->arch), hp->n_layer,
           hp->n_embd, model_n_vocab(m));
    printf("| traced (the profiler's region) | %d passes of %d position%s at pos %d: %.3f ms a pass |\n", a->trace,
           a->trace_positions, a->trace_positions > 1 ? "s" : "", a->pos, ms);
    if (cfg->graphs && be->ops->step_stats)
        printf("| the region's steps as graphs | %ld begun: %ld recorded, %ld replayed, %ld issued again; %ld nodes a "
               "step |\n", ran->steps, ran->recorded, ran->replayed, ran->repeated, ran->nodes);
}

int main(int argc, char **argv)
{
    struct args a;
    if (parse_args(argc, argv, &a)) {
        fprintf(stderr, "usage: bench_roofline --model M.gguf [--device auto|cpu|cuda] [--threads N] [--pos P] "
                        "[--gamma-max G] [--seconds S] [--copy-mib MIB] [--profile STEPS] [--graphs] "
                        "[--tensor-cores] [--blas-prefill] [--batch N] [--seqs S] "
                        "[--trace PASSES [--trace-positions N]]\n");
        return 2;
    }
    struct kern_backend *be = NULL;
    struct model *m = NULL;
    struct model_seq *s = NULL, *more[MAX_SEQS] = {0}; /* more: s and the --seqs others */
    int32_t *tokens = NULL, ids[MAX_SEQS * 65];
    float *logits = NULL;
    double copy_bw = 0.0, wbytes = 0.0, t_prefill = 0.0;
    const struct kern_backend_config cfg = {.n_threads = a.n_threads, .profile = a.profile_steps > 0,
                                            .graphs = a.graphs, .tensor_cores = a.tensor_cores,
                                            .blas_prefill = a.blas_prefill};
    int err = kern_backend_create(a.device, &cfg, &be);
    if (!err && !a.trace)
        err = copy_bandwidth(be, a.copy_mib, a.seconds, &copy_bw);
    if (!err)
        err = weight_bytes(a.model, &wbytes);
    if (!err)
        err = model_load_cfg(a.model, be, &(struct model_config){.max_batch = a.batch}, &m);
    if (!err)
        err = model_seq_new(m, a.pos + a.gamma_max + 1, &s);
    const int n_vocab = m ? model_n_vocab(m) : 0;
    if (!err) {
        tokens = malloc((size_t)(a.pos + a.gamma_max + 1) * sizeof *tokens);
        logits = malloc((size_t)n_vocab * sizeof *logits);
        if (!tokens || !logits)
            err = SPEC_E_NOMEM;
    }
    if (!err) {
        uint64_t x = 0x9e3779b97f4a7c15u; /* any ids: the cost does not depend on them */
        for (int i = 0; i < a.pos + a.gamma_max + 1; i++) {
            x = x * 6364136223846793005u + 1442695040888963407u;
            tokens[i] = (int32_t)((x >> 33) % (uint64_t)n_vocab);
        }
        err = time_prefill(m, s, tokens, a.pos, a.seconds, &t_prefill);
    }
    if (!err)
        fprintf(stderr, "bench_roofline: prefill of %d tokens %.3f ms\n", a.pos, t_prefill * 1e3);
    if (!err && a.trace) {
        double ms = 0.0;
        struct kern_step_stats ran;
        if (!(err = trace_passes(be, m, s, tokens + a.pos, a.trace_positions, a.trace, &ms, &ran)))
            print_trace(be, &cfg, m, &a, ms, &ran);
        else
            fprintf(stderr, "bench_roofline: trace: %s (%s)\n", spec_strerror(err), spec_errname(err));
        release(be, m, s, tokens, logits);
        return err ? 1 : 0;
    }
    /* each figure also goes to stderr as it is measured: a run cut short still says how far it got */
    double t1 = 0.0, t1_logits = 0.0, tv[65] = {0};
    struct kern_step_stats st0 = {0}, st = {0}; /* around the decode timing, with --graphs */
    const bool stats = a.graphs && be && be->ops->step_stats;
    if (!err && stats)
        err = be->ops->step_stats(be, &st0);
    if (!err && !(err = time_forward(m, &s, 1, tokens + a.pos, 1, ids, NULL, a.seconds, &t1)))
        fprintf(stderr, "bench_roofline: decode %.3f ms\n", t1 * 1e3);
    if (!err && stats)
        err = be->ops->step_stats(be, &st);
    if (!err && !(err = time_forward(m, &s, 1, tokens + a.pos, 1, ids, logits, a.seconds, &t1_logits)))
        fprintf(stderr, "bench_roofline: decode with logits %.3f ms\n", t1_logits * 1e3);
    /* a run of as many steps as the sequence has room for after pos (gamma_max + 1) */
    double t_chain = 0.0;
    struct kern_step_stats st_chain0 = {0}, st_chain = {0};
    const int n_chain = a.gamma_max + 1;
    if (!err && be->ops->argmax_keep && be->ops->get_rows_kept) {
        struct kern_tensor kept;
        if (!(err = be->ops->tensor_alloc(be, SPEC_I32, 1, n_chain, &kept))) {
            if (stats)
                err = be->ops->step_stats(be, &st_chain0);
            if (!err && !(err = time_chain(m, s, tokens[a.pos], n_chain, &kept, a.seconds, &t_chain)))
                fprintf(stderr, "bench_roofline: decode, ids kept %.3f ms\n", t_chain * 1e3);
            if (!err && stats)
                err = be->ops->step_stats(be, &st_chain);
            be->ops->tensor_free(be, &kept);
        }
    }
    for (int g = 1; g <= a.gamma_max && !err; g++)
        if (!(err = time_forward(m, &s, 1, tokens + a.pos, g + 1, ids, NULL, a.seconds, &tv[g])))
            fprintf(stderr, "bench_roofline: verify %d positions %.3f ms\n", g + 1, tv[g] * 1e3);
    /* steps of --seqs sequences: s and seqs - 1 more, each prefilled with the same tokens */
    double t_seqs = 0.0;
    struct kern_step_stats st_seqs0 = {0}, st_seqs = {0};
    if (!err && a.seqs > 1) {
        more[0] = s;
        for (int i = 1; i < a.seqs && !err; i++)
            if (!(err = model_seq_new(m, a.pos + 1, &more[i])))
                err = model_forward_last(m, more[i], tokens, a.pos, NULL);
        if (!err && stats)
            err = be->ops->step_stats(be, &st_seqs0);
        if (!err && !(err = time_forward(m, more, a.seqs, tokens + a.pos, 1, ids, NULL, a.seconds, &t_seqs)))
            fprintf(stderr, "bench_roofline: decode of %d sequences %.3f ms\n", a.seqs, t_seqs * 1e3);
        if (!err && stats)
            err = be->ops->step_stats(be, &st_seqs);
    }
    for (int i = 1; i < a.seqs; i++)
        model_seq_free(more[i]);
    const int n_verify = a.gamma_max < 7 ? a.gamma_max + 1 : 8; /* the sequence holds pos + gamma_max + 1 */
    double ts_host = 0.0, ts_dev = 0.0;
    float *rows = err ? NULL : malloc((size_t)n_verify * (size_t)n_vocab * sizeof *rows);
    if (!err && !rows)
        err = SPEC_E_NOMEM;
    if (!err && !(err = time_sampled(m, s, tokens + a.pos, n_verify, NULL, rows, a.seconds, &ts_host)))
        fprintf(stderr, "bench_roofline: sampled verify on the host %.3f ms\n", ts_host * 1e3);
    free(rows);
    if (!err && be->ops->sample_process) {
        struct kern_tensor dev;
        if (!(err = be->ops->tensor_alloc(be, SPEC_F32, n_vocab, n_verify, &dev))) {
            if (!(err = time_sampled(m, s, tokens + a.pos, n_verify, &dev, NULL, a.seconds, &ts_dev)))
                fprintf(stderr, "bench_roofline: sampled verify on the backend %.3f ms\n", ts_dev * 1e3);
            be->ops->tensor_free(be, &dev);
        }
    }
    if (err) {
        fprintf(stderr, "bench_roofline: %s (%s)\n", spec_strerror(err), spec_errname(err));
        release(be, m, s, tokens, logits);
        return 1;
    }
    const struct model_hparams *hp = model_hparams(m);
    const double kv_bytes = 2.0 /* K and V */ * 2.0 /* F16 */ * hp->n_layer * (double)hp->n_head_kv *
                            hp->head_dim * a.pos;
    const double step_bw = (wbytes + kv_bytes) / t1;
    printf("| measure | value |\n|---|---|\n");
    char backend[128];
    kern_backend_describe(be, &cfg, backend, sizeof backend);
    printf("| backend | %s |\n", backend);
    printf("| model | %s (%s, %d layers, n_embd %d, n_vocab %d) |\n", a.model, model_arch_name(hp->arch),
           hp->n_layer, hp->n_embd, n_vocab);
    printf("| copy bandwidth (read + write, %d MiB) | %.1f GB/s |\n", a.copy_mib, copy_bw / 1e9);
    printf("| bytes per decode step (weights + KV at pos %d) | %.1f MB + %.1f MB |\n", a.pos, wbytes / 1e6,
           kv_bytes / 1e6);
    printf("| prefill of %d tokens, %d a step | %.2f ms, %.0f tokens/s |\n", a.pos,
           a.batch > 0 ? a.batch : MODEL_DEFAULT_MAX_BATCH, t_prefill * 1e3, a.pos / t_prefill);
    printf("| decode, batch 1 (greedy id back) | %.2f ms/token, %.1f tokens/s |\n", t1 * 1e3, 1.0 / t1);
    printf("| decode, batch 1 (logits back) | %.2f ms/token, %.1f tokens/s |\n", t1_logits * 1e3, 1.0 / t1_logits);
    printf("| decode bandwidth | %.1f GB/s = %.1f%% of copy bandwidth |\n", step_bw / 1e9, 100.0 * step_bw / copy_bw);
    if (stats)
        printf("| decode steps as graphs | %ld begun: %ld recorded, %ld replayed, %ld issued again; %ld nodes a step "
               "|\n", st.steps - st0.steps, st.recorded - st0.recorded, st.replayed - st0.replayed,
               st.repeated - st0.repeated, st.nodes);
    if (t_chain > 0.0)
        printf("| decode, batch 1, runs of %d steps fed the ids they keep on the device (a draft's run; read back "
               "at its end) | %.2f ms/token, %.1f tokens/s, %.1f%% of copy bandwidth |\n", n_chain, t_chain * 1e3,
               1.0 / t_chain, 100.0 * (wbytes + kv_bytes) / t_chain / copy_bw);
    if (t_chain > 0.0 && stats)
        printf("| those runs' steps as graphs | %ld begun: %ld recorded, %ld replayed, %ld issued again |\n",
               st_chain.steps - st_chain0.steps, st_chain.recorded - st_chain0.recorded,
               st_chain.replayed - st_chain0.replayed, st_chain.repeated - st_chain0.repeated);
    if (a.seqs > 1)
        printf("| decode, %d sequences a step (greedy ids back) | %.2f ms/step, %.1f tokens/s = %.2fx batch 1 |\n",
               a.seqs, t_seqs * 1e3, a.seqs / t_seqs, t1 * a.seqs / t_seqs);
    if (a.seqs > 1 && stats)
        printf("| steps of %d sequences as graphs | %ld begun: %ld recorded, %ld replayed, %ld issued again; %ld "
               "nodes a step |\n", a.seqs, st_seqs.steps - st_seqs0.steps, st_seqs.recorded - st_seqs0.recorded,
               st_seqs.replayed - st_seqs0.replayed, st_seqs.repeated - st_seqs0.repeated, st_seqs.nodes);
    printf("\n| γ | positions | verify time | verify / decode |\n|---|---|---|---|\n");
    for (int g = 1; g <= a.gamma_max; g++)
        printf("| %d | %d | %.2f ms | %.2fx |\n", g, g + 1, tv[g] * 1e3, tv[g] / t1);
    printf("\n| sampled verification, %d positions (T 0.8, top-k 40, top-p 0.95, min-p 0.05) | time | "
           "/ greedy pass |\n|---|---|---|\n", n_verify);
    printf("| rows processed and verified on the host | %.2f ms | %.2fx |\n", ts_host * 1e3,
           ts_host / tv[n_verify - 1]);
    if (ts_dev > 0.0)
        printf("| rows processed and verified on the backend | %.2f ms | %.2fx |\n", ts_dev * 1e3,
               ts_dev / tv[n_verify - 1]);
    else
        printf("| rows processed and verified on the backend | (the %s backend has no sampling ops) | |\n",
               be->ops->name);
    for (int n = 1; a.profile_steps > 0 && !err; n = n_verify) { /* decode, then a verification pass */
        if ((err = profile_pass(be, m, s, tokens + a.pos, n, a.profile_steps)))
            fprintf(stderr, "bench_roofline: profile: %s (%s)\n", spec_strerror(err), spec_errname(err));
        if (n == n_verify)
            break;
    }
    release(be, m, s, tokens, logits);
    return err ? 1 : 0;
}
