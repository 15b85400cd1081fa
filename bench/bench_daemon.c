/* bench_daemon: what the daemon costs and what continuous batching gains. It starts the real
 * `specd` (from the same build directory) on a private socket, has 1, 4 and 16 concurrent clients
 * (libspecd-client, one connection each) send greedy requests, and reports aggregate tokens/s; then
 * it runs the single-client request sequence in-process through the engine with the same settings,
 * so that the daemon's overhead is a ratio measured in one run on one machine.
 *
 *   bench_daemon --target T.gguf [--draft D.gguf] [-n TOKENS] [--requests R] [--clients 1,4,16]
 *                [--threads N] [--pairs P] [--draft-min G] [--no-spec] [--chatml]
 * --draft-min G: the daemon's smallest adaptive draft length (default 1; 0 lets a round go undrafted).
 * The overhead is the median over P (default 16) back-to-back pairs of one request through the daemon
 * and the same request in-process.
 * --chatml wraps each prompt in the ChatML template of SmolLM2/Qwen2.5 instruct models, so that they
 * answer at length instead of ending a raw prompt early. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "common/err.h"
#include "engine/engine.h"
#include "model/model.h"
#include "specd_client.h"

#define MAX_LEVELS 8
#define MAX_PAIRS 256
#define CTX 2048
#define DRAFT_MAX 8

static const char *const prompts[] = {
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a hash table handles collisions, with an example.",
    "def merge_sort(xs):\n    \"\"\"Sort a list with merge sort.\"\"\"\n",
    "List five practical tips for writing clear technical documentation.",
    "What are the main differences between TCP and UDP?",
    "Translate to French: The weather is lovely today, let us walk to the harbour.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "A train travels 120 km in 1.5 hours. What is its average speed? Explain step by step.",
};
#define N_PROMPTS (int)(sizeof prompts / sizeof prompts[0])

struct args {
    const char *target, *draft;
    int n_gen, requests, n_threads, n_levels, pairs, draft_min;
    int levels[MAX_LEVELS];
    bool no_spec, chatml;
};

#define PROMPT_CAP 1024

/* Prompt i as sent: raw, or in the ChatML template. */
static const char *prompt_text(const struct args *a, int i, char *buf)
{
    if (!a->chatml)
        return prompts[i % N_PROMPTS];
    snprintf(buf, PROMPT_CAP, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", prompts[i % N_PROMPTS]);
    return buf;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    *a = (struct args){.n_gen = 64, .requests = 4, .n_threads = 2, .n_levels = 3, .levels = {1, 4, 16}, .pairs = 16,
                       .draft_min = 1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--no-spec") || !strcmp(o, "--chatml")) {
            *(o[2] == 'n' ? &a->no_spec : &a->chatml) = true;
            continue;
        }
        if (i + 1 >= argc)
            return -1;
        const char *v = argv[++i];
        if (!strcmp(o, "--target"))
            a->target = v;
        else if (!strcmp(o, "--draft"))
            a->draft = v;
        else if (!strcmp(o, "-n"))
            a->n_gen = atoi(v);
        else if (!strcmp(o, "--requests"))
            a->requests = atoi(v);
        else if (!strcmp(o, "--threads"))
            a->n_threads = atoi(v);
        else if (!strcmp(o, "--pairs"))
            a->pairs = atoi(v);
        else if (!strcmp(o, "--draft-min"))
            a->draft_min = atoi(v);
        else if (!strcmp(o, "--clients")) {
            if ((a->n_levels = bench_int_list(v, a->levels, MAX_LEVELS)) < 0)
                return -1;
        } else
            return -1;
    }
    for (int i = 0; i < a->n_levels; i++)
        if (a->levels[i] < 1 || a->levels[i] > 64)
            return -1;
    return a->target && a->n_gen > 0 && a->requests > 0 && a->n_threads > 0 && a->pairs > 0 && a->pairs <= MAX_PAIRS &&
                   a->draft_min >= 0 && a->draft_min <= DRAFT_MAX
               ? 0
               : -1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Through the daemon                                                                             */

struct client_job {
    const struct args *a;
    const char *socket;
    int index;
    pthread_barrier_t *start;
    long tokens;
    int err;
};

/* Request r through a connected client: its completion tokens. */
static int daemon_request(const struct args *a, struct spc_client *c, int r, long *tokens)
{
    char buf[PROMPT_CAP];
    struct spc_gen_params p = spc_gen_params_default();
    p.prompt = prompt_text(a, r, buf);
    p.max_tokens = a->n_gen;
    p.temperature = 0.0;
    p.speculative = !a->no_spec;
    struct spc_gen_result *res = NULL;
    const int err = spc_generate(c, &p, NULL, NULL, &res);
    if (!err) {
        *tokens = res->completion_tokens;
        spc_free(res);
    } else if (err == SPC_E_DAEMON) {
        fprintf(stderr, "bench_daemon: request %d: %s: %s\n", r, spc_last_error(c)->name, spc_last_error(c)->message);
    }
    return err;
}

static void *client_main(void *arg)
{
    struct client_job *j = arg;
    struct spc_client *c = NULL;
    j->err = spc_connect(&(struct spc_options){.socket_path = j->socket}, &c);
    pthread_barrier_wait(j->start);
    for (int r = 0; !j->err && r < j->a->requests; r++) {
        long n = 0;
        j->err = daemon_request(j->a, c, j->index * j->a->requests + r, &n);
        j->tokens += n;
    }
    spc_close(c);
    return NULL;
}

/* Aggregate tokens/s of n_clients clients sending their requests at once. */
static int run_level(const struct args *a, const char *socket, int n_clients, double *tok_s)
{
    struct client_job jobs[64];
    pthread_t th[64];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n_clients + 1);
    for (int i = 0; i < n_clients; i++) {
        jobs[i] = (struct client_job){.a = a, .socket = socket, .index = i, .start = &start};
        pthread_create(&th[i], NULL, client_main, &jobs[i]);
    }
    pthread_barrier_wait(&start);
    const double t0 = bench_now_s();
    long tokens = 0;
    int err = 0;
    for (int i = 0; i < n_clients; i++) {
        pthread_join(th[i], NULL);
        tokens += jobs[i].tokens;
        err = err ? err : jobs[i].err;
    }
    const double t = bench_now_s() - t0;
    pthread_barrier_destroy(&start);
    if (err) {
        fprintf(stderr, "bench_daemon: %d clients: %s\n", n_clients, spc_strerror(err));
        return -1;
    }
    *tok_s = tokens / t;
    fprintf(stderr, "%d clients: %ld tokens in %.2f s\n", n_clients, tokens, t);
    return 0;
}

static pid_t start_daemon(const struct args *a, const char *socket, int max_seqs)
{
    char exe[PATH_MAX], daemon[PATH_MAX + 8], threads[16], seqs[16], ctx[16], dmax[16], dmin[16];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    snprintf(daemon, sizeof daemon, "%s/specd", exe);
    snprintf(threads, sizeof threads, "%d", a->n_threads);
    snprintf(seqs, sizeof seqs, "%d", max_seqs);
    snprintf(ctx, sizeof ctx, "%d", CTX);
    snprintf(dmax, sizeof dmax, "%d", DRAFT_MAX);
    snprintf(dmin, sizeof dmin, "%d", a->draft_min);
    const char *argv[24] = {daemon,        "--target", a->target, "--socket",  socket, "--threads",  threads,
                            "--max-seqs",  seqs,       "--ctx",   ctx,         "--draft-max", dmax, "--draft-min", dmin,
                            "--log-level", "warn",     "--max-clients", "128"};
    int argc = 19;
    if (a->draft) {
        argv[argc++] = "--draft";
        argv[argc++] = a->draft;
    }
    const pid_t pid = fork();
    if (pid == 0) {
        execv(daemon, (char *const *)argv);
        _exit(127);
    }
    /* ready once it accepts a connection */
    for (int i = 0; pid > 0 && i < 600; i++) {
        struct spc_client *c;
        if (spc_connect(&(struct spc_options){.socket_path = socket}, &c) == SPC_OK) {
            spc_close(c);
            return pid;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        usleep(100 * 1000);
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------------- */
/* In-process                                                                                     */

struct in_process {
    struct kern_backend *be;
    struct model *target, *draft;
    struct engine *e;
};

static void in_process_close(struct in_process *ip)
{
    engine_free(ip->e);
    model_free(ip->draft);
    model_free(ip->target);
    kern_backend_destroy(ip->be);
}

/* The engine with the daemon's settings (one sequence at a time). */
static int in_process_open(const struct args *a, struct in_process *ip)
{
    *ip = (struct in_process){0};
    int err = kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = a->n_threads}, &ip->be);
    if (!err)
        err = model_load(a->target, ip->be, &ip->target);
    if (!err && a->draft)
        err = model_load(a->draft, ip->be, &ip->draft);
    const struct engine_config cfg = {.target = ip->target, .draft = ip->draft, .n_ctx = CTX, .draft_max = DRAFT_MAX,
                                      .draft_min = a->draft_min, .adaptive = true, .penalty_window = 64, .max_seqs = 1};
    if (!err)
        err = engine_new(&cfg, &ip->e);
    if (err) {
        fprintf(stderr, "bench_daemon: in-process: %s\n", spec_strerror(err));
        in_process_close(ip);
    }
    return err;
}

/* Request r through engine_generate: its completion tokens. */
static int in_process_request(const struct args *a, struct in_process *ip, int r, long *tokens)
{
    char buf[PROMPT_CAP];
    const char *text = prompt_text(a, r, buf);
    int32_t prompt[1024], *out = malloc((size_t)a->n_gen * sizeof *out);
    size_t n_prompt = 0;
    int err = out ? tok_encode(model_tokenizer(ip->target), text, strlen(text), true, true, prompt, 1024, &n_prompt)
                  : SPEC_E_NOMEM;
    const struct engine_request req = {.prompt = prompt, .n_prompt = (int)n_prompt, .max_tokens = a->n_gen,
                                       .sampling = verify_params_default(), .speculative = !a->no_spec};
    int n_out = 0;
    enum engine_finish fin;
    if (!err)
        err = engine_generate(ip->e, &req, NULL, NULL, out, a->n_gen, &n_out, &fin, NULL);
    free(out);
    if (err)
        fprintf(stderr, "bench_daemon: in-process request %d: %s\n", r, spec_strerror(err));
    *tokens = n_out;
    return err;
}

static int cmp_double(const void *x, const void *y)
{
    const double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}


/* The daemon's cost: the same request through one client and in-process, back to back (alternating
 * which goes first), many times; each pair's ratio of tokens/s sees the same state of a noisy
 * machine, and the median of the ratios is the figure. ratios[] gets them sorted. */
static int measure_overhead(const struct args *a, const char *socket, struct in_process *ip, double *ratios)
{
    struct spc_client *c = NULL;
    int err = spc_connect(&(struct spc_options){.socket_path = socket}, &c);
    for (int p = 0; p < a->pairs && !err; p++) {
        double t[2] = {0.0, 0.0}; /* [0] daemon, [1] in-process */
        long n[2] = {0, 0};
        for (int i = 0; i < 2 && !err; i++) {
            const int which = (p + i) % 2;
            const double t0 = bench_now_s();
            err = which == 0 ? daemon_request(a, c, p, &n[0]) : in_process_request(a, ip, p, &n[1]);
            t[which] = bench_now_s() - t0;
        }
        if (!err && (n[0] <= 0 || n[1] <= 0))
            err = SPEC_E_RANGE;
        if (!err)
            ratios[p] = ((double)n[0] / t[0]) / ((double)n[1] / t[1]);
    }
    spc_close(c);
    if (!err)
        qsort(ratios, (size_t)a->pairs, sizeof *ratios, cmp_double);
    return err;
}

int main(int argc, char **argv)
{
    struct args a;
    if (parse_args(argc, argv, &a)) {
        fprintf(stderr, "usage: bench_daemon --target T.gguf [--draft D.gguf] [-n TOKENS] [--requests R] "
                        "[--clients 1,4,16] [--threads N] [--pairs P] [--no-spec] [--chatml]\n");
        return 2;
    }
    char dir[] = "/tmp/bench-daemon.XXXXXX", socket[64];
    if (!mkdtemp(dir))
        return 1;
    snprintf(socket, sizeof socket, "%s/specd.sock", dir);
    int max_level = 1;
    for (int i = 0; i < a.n_levels; i++)
        max_level = a.levels[i] > max_level ? a.levels[i] : max_level;
    const pid_t pid = start_daemon(&a, socket, max_level);
    if (pid < 0) {
        fprintf(stderr, "bench_daemon: the daemon did not start\n");
        rmdir(dir);
        return 1;
    }
    double rate[MAX_LEVELS], warm_up;
    int err = run_level(&a, socket, 1, &warm_up); /* pages the weights in; not counted */
    for (int i = 0; i < a.n_levels && !err; i++)
        err = run_level(&a, socket, a.levels[i], &rate[i]);
    struct in_process ip;
    double ratios[MAX_PAIRS];
    const bool ip_open = !err && !(err = in_process_open(&a, &ip));
    if (!err)
        err = measure_overhead(&a, socket, &ip, ratios);
    if (ip_open)
        in_process_close(&ip);
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    rmdir(dir);
    if (err)
        return 1;
    double single = rate[0];
    for (int i = 0; i < a.n_levels; i++)
        single = a.levels[i] == 1 ? rate[i] : single;
    printf("| clients | aggregate tok/s | vs 1 client |\n|---|---|---|\n");
    for (int i = 0; i < a.n_levels; i++)
        printf("| %d | %.2f | %.2fx |\n", a.levels[i], rate[i], rate[i] / single);
    const int q = a.pairs / 4;
    printf("\nDaemon vs in-process, one request at a time, %d pairs: tokens/s ratio median %.3f (quartiles %.3f, "
           "%.3f): overhead %.1f%%. Daemon exit status after SIGTERM: %d.\n",
           a.pairs, ratios[a.pairs / 2], ratios[q], ratios[a.pairs - 1 - q], 100.0 * (1.0 - ratios[a.pairs / 2]),
           WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
