/* The clients against the real daemon: build/bin/specd on a temporary socket with synthetic models,
 * then the Python example (tools/specd_client_example.py, a msgpack implementation that is not
 * ours), specctl and libspecd-client must all see the same greedy text. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model/model.h"
#include "specd_client.h"
#include "tests/client/cli.h"

#define PROMPT "The quick brown fox"
#define MAX_TOKENS "64"

struct daemon {
    char dir[64], sock[128], log[128];
    pid_t pid;
};

static struct daemon d;

/* A skip that shows in the suite's summary too, not only in Criterion's verbose output. */
#define SKIP_LOUDLY(...)                                                                                     \
    do {                                                                                                     \
        fprintf(stderr, "SKIPPED: " __VA_ARGS__);                                                            \
        fputc('\n', stderr);                                                                                 \
        cr_skip_test(__VA_ARGS__);                                                                           \
    } while (0)

static void write_models(void)
{
    /* Same seed and vocabulary, different shapes: a draft that mostly disagrees, as in test_engine. */
    const struct model_synth_config tc = {.arch = MODEL_ARCH_LLAMA, .wtype = SPEC_Q8_0, .n_layer = 2, .n_embd = 64,
                                          .n_head = 4, .n_head_kv = 2, .n_ff = 128, .n_vocab = 300, .n_ctx = 256,
                                          .seed = 5};
    struct model_synth_config dc = tc;
    dc.n_layer = 1;
    dc.n_embd = 32;
    dc.n_head = 2;
    dc.n_head_kv = 1;
    dc.n_ff = 64;
    char path[192];
    snprintf(path, sizeof path, "%s/target.gguf", d.dir);
    cr_assert_eq(model_synth_write(&tc, path), 0);
    snprintf(path, sizeof path, "%s/draft.gguf", d.dir);
    cr_assert_eq(model_synth_write(&dc, path), 0);
}

static char *read_log(void)
{
    FILE *f = fopen(d.log, "r");
    return f ? cli_slurp(f) : strdup("(no log)");
}

/* Starts specd and waits until it answers health; skips loudly when it has not been built. */
static void start_daemon(void)
{
    char bin[PATH_MAX];
    cli_bin("specd", bin, sizeof bin);
    if (access(bin, X_OK) != 0)
        SKIP_LOUDLY("daemon binary missing: %s (daemon/*.c not built yet): the clients were not tested against "
                    "the real daemon",
                    bin);
    strcpy(d.dir, "/tmp/specd-clients-XXXXXX");
    cr_assert_not_null(mkdtemp(d.dir));
    snprintf(d.sock, sizeof d.sock, "%s/specd.sock", d.dir);
    snprintf(d.log, sizeof d.log, "%s/specd.log", d.dir);
    write_models();
    char target[192], draft[192];
    snprintf(target, sizeof target, "%s/target.gguf", d.dir);
    snprintf(draft, sizeof draft, "%s/draft.gguf", d.dir);
    fflush(NULL);
    d.pid = fork();
    cr_assert_geq(d.pid, 0);
    if (d.pid == 0) {
        FILE *log = freopen(d.log, "w", stderr);
        if (!log || dup2(fileno(log), 1) < 0)
            _exit(127);
        execl(bin, bin, "--target", target, "--draft", draft, "--socket", d.sock, "--ctx", "256", "--threads", "1",
              (char *)NULL);
        _exit(127);
    }
    /* Ready once health answers; a daemon that exits instead fails the test with its log. */
    for (int i = 0; i < 6000; i++) {
        int st;
        if (waitpid(d.pid, &st, WNOHANG) == d.pid) {
            d.pid = 0;
            char *log = read_log();
            cr_assert_fail("specd exited (status %d) before answering:\n%s", st, log);
        }
        struct spc_client *c;
        if (spc_connect(&(struct spc_options){.socket_path = d.sock, .timeout_ms = 10000}, &c) == SPC_OK) {
            struct spc_health h;
            const int err = spc_health(c, &h);
            spc_close(c);
            cr_assert_eq(err, SPC_OK, "health: %s", spc_strerror(err));
            return;
        }
        nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
    }
    cr_assert_fail("specd did not answer on %s within a minute", d.sock);
}

static void stop_daemon(void)
{
    if (d.pid > 0) {
        kill(d.pid, SIGTERM);
        int st;
        for (int i = 0; i < 1000 && waitpid(d.pid, &st, WNOHANG) == 0; i++)
            nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
        if (kill(d.pid, 0) == 0) {
            kill(d.pid, SIGKILL);
            waitpid(d.pid, &st, 0);
        }
    }
    if (d.dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", d.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", d.dir);
    }
}

TestSuite(clients_vs_daemon, .fini = stop_daemon, .timeout = 120);

static struct spc_client *client(void)
{
    struct spc_client *c;
    const int err = spc_connect(&(struct spc_options){.socket_path = d.sock, .timeout_ms = 60000}, &c);
    cr_assert_eq(err, SPC_OK, "%s", spc_strerror(err));
    return c;
}

/* The reference: a blocking, non-streamed greedy generate through libspecd-client. */
static struct spc_gen_result *greedy(struct spc_client *c, int max_tokens)
{
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = PROMPT;
    gp.max_tokens = max_tokens;
    gp.temperature = 0;
    struct spc_gen_result *r = NULL;
    const int err = spc_generate(c, &gp, NULL, NULL, &r);
    cr_assert_eq(err, SPC_OK, "generate: %s %s", spc_strerror(err), spc_last_error(c)->message);
    cr_assert_gt(r->completion_tokens, 0, "the reference generated nothing: the comparisons would be vacuous");
    cr_assert_gt(r->text_len, 0);
    return r;
}

/* A python3 that has the msgpack module, or a loud skip. */
static void find_python(char *out, size_t cap)
{
    const char *cands[] = {getenv("PYTHON"), "python3", "/usr/bin/python3"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        if (!cands[i] || !cands[i][0])
            continue;
        char *argv[] = {(char *)cands[i], "-c", "import msgpack", NULL};
        struct cli_run r = cli_run(argv);
        cli_run_free(&r);
        if (r.status == 0) {
            snprintf(out, cap, "%s", cands[i]);
            return;
        }
    }
    SKIP_LOUDLY("no python3 with the msgpack module (apt-get install python3-msgpack): the Python client was "
                "not tested");
}

static char *repo_file(const char *rel)
{
    char dir[PATH_MAX], path[PATH_MAX + 64];
    cli_build_dir(dir, sizeof dir);
    *strrchr(dir, '/') = '\0'; /* the repository holds the build directory */
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    return cli_slurp(f);
}

Test(clients_vs_daemon, python_example_streams_the_greedy_text_and_its_stats)
{
    char py[PATH_MAX];
    find_python(py, sizeof py);
    start_daemon();
    struct spc_client *c = client();
    struct spc_gen_result *ref = greedy(c, atoi(MAX_TOKENS));
    spc_close(c);

    char script[PATH_MAX];
    cli_build_dir(script, sizeof script);
    *strrchr(script, '/') = '\0';
    strcat(script, "/tools/specd_client_example.py");
    setenv("PYTHONIOENCODING", "utf-8", 1);
    char *argv[] = {py, script, PROMPT, d.sock, NULL};
    struct cli_run r = cli_run(argv);
    cr_assert_eq(r.status, 0, "python client failed: %s", r.err);
    char *want = malloc(ref->text_len + 128);
    memcpy(want, ref->text, ref->text_len);
    snprintf(want + ref->text_len, 128, "\n[%s] %lld tokens in ", spc_finish_name(ref->finish),
             (long long)ref->completion_tokens);
    cr_assert(!strncmp(r.out, want, strlen(want)), "python printed:\n%s\nexpected it to start with:\n%s", r.out, want);
    cr_assert(strstr(r.out, ", acceptance "), "%s", r.out);
    free(want);
    cli_run_free(&r);
    spc_free(ref);

    /* The documentation shows this very script. */
    char *doc = repo_file("docs/python-client.md"), *src = repo_file("tools/specd_client_example.py");
    cr_assert(strstr(doc, src), "docs/python-client.md no longer shows tools/specd_client_example.py verbatim");
    free(doc);
    free(src);
}

Test(clients_vs_daemon, specctl_prints_the_greedy_text_streamed_or_not)
{
    start_daemon();
    struct spc_client *c = client();
    struct spc_gen_result *ref = greedy(c, atoi(MAX_TOKENS));
    spc_close(c);
    char bin[PATH_MAX];
    cli_bin("specctl", bin, sizeof bin);
    for (int stream = 0; stream < 2; stream++) {
        char *argv[] = {bin, "--socket", d.sock, "generate", PROMPT, "--max-tokens", MAX_TOKENS, "--temperature", "0",
                        stream ? "--stream" : NULL, NULL};
        struct cli_run r = cli_run(argv);
        cr_assert_eq(r.status, 0, "specctl: %s", r.err);
        cr_assert_eq(strlen(r.out), ref->text_len + 1, "stream %d: specctl printed:\n%s\nthe result is:\n%s", stream,
                     r.out, ref->text);
        cr_assert(!memcmp(r.out, ref->text, ref->text_len) && r.out[ref->text_len] == '\n',
                  "stream %d: specctl printed:\n%s\nthe result is:\n%s", stream, r.out, ref->text);
        cli_run_free(&r);
    }
    spc_free(ref);
}

struct stream_acc {
    char *text;
    size_t len;
    int32_t tokens[512];
    size_t n_tokens;
    int n_chunks;
};

static int accumulate(void *user, const struct spc_chunk *ch)
{
    struct stream_acc *a = user;
    a->text = realloc(a->text, a->len + ch->text_len + 1);
    memcpy(a->text + a->len, ch->text, ch->text_len);
    a->len += ch->text_len;
    for (size_t i = 0; i < ch->n_tokens && a->n_tokens < 512; i++)
        a->tokens[a->n_tokens++] = ch->tokens[i];
    a->n_chunks++;
    return 0;
}

Test(clients_vs_daemon, library_stream_chunks_add_up_to_the_result)
{
    start_daemon();
    struct spc_client *c = client();
    struct spc_gen_result *ref = greedy(c, atoi(MAX_TOKENS));
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = PROMPT;
    gp.max_tokens = atoi(MAX_TOKENS);
    gp.temperature = 0;
    struct stream_acc a = {0};
    struct spc_gen_result *r;
    cr_assert_eq(spc_generate(c, &gp, accumulate, &a, &r), SPC_OK);
    cr_assert_geq(a.n_chunks, 1);
    cr_assert_eq(a.len, r->text_len);
    cr_assert(!memcmp(a.text, r->text, a.len), "the chunks' text differs from the result's");
    cr_assert_eq(a.n_tokens, r->n_tokens);
    cr_assert_arr_eq(a.tokens, r->tokens, r->n_tokens * sizeof *r->tokens);
    cr_assert_eq(r->text_len, ref->text_len, "streamed and blocking greedy texts differ");
    cr_assert(!memcmp(r->text, ref->text, r->text_len));
    free(a.text);
    spc_free(r);
    spc_free(ref);
    spc_close(c);
}

Test(clients_vs_daemon, library_cancel_ends_a_stream_with_a_prefix_of_the_text)
{
    start_daemon();
    struct spc_client *c = client();
    /* Long enough that the cancel usually arrives first; when it does not, the result is the whole text. */
    struct spc_gen_result *ref = greedy(c, 200);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = PROMPT;
    gp.max_tokens = 200;
    gp.temperature = 0;
    uint32_t id;
    cr_assert_eq(spc_generate_start(c, &gp, true, &id), SPC_OK);
    const struct spc_chunk *ch;
    struct spc_gen_result *r = NULL;
    cr_assert_eq(spc_generate_next(c, &ch, &r), SPC_OK);
    const int err = spc_cancel(c, id);
    const bool too_late = err == SPC_E_DAEMON && spc_last_error(c)->code == SPC_CODE_NOT_FOUND;
    cr_assert(err == SPC_OK || too_late, "cancel: %s %s", spc_strerror(err), spc_last_error(c)->message);
    while (!r)
        cr_assert_eq(spc_generate_next(c, &ch, &r), SPC_OK);
    cr_assert_eq(r->finish, too_late ? ref->finish : SPC_FINISH_CANCELLED);
    cr_assert_leq(r->n_tokens, ref->n_tokens);
    cr_assert_arr_eq(r->tokens, ref->tokens, r->n_tokens * sizeof *r->tokens,
                     "the cancelled tokens begin the full ones");
    /* The text too, but for a character the last token left unfinished: the daemon ends it with U+FFFD. */
    size_t len = r->text_len;
    const bool prefix = len <= ref->text_len && !memcmp(r->text, ref->text, len);
    if (!prefix && len >= 3 && !memcmp(r->text + len - 3, "\xef\xbf\xbd", 3))
        len -= 3;
    cr_assert_leq(len, ref->text_len);
    cr_assert(!memcmp(r->text, ref->text, len), "a cancelled text is a prefix of the full one");
    spc_free(r);
    spc_free(ref);
    /* The connection goes on. */
    struct spc_health h;
    cr_assert_eq(spc_health(c, &h), SPC_OK);
    spc_close(c);
}

Test(clients_vs_daemon, specctl_info_stats_health_and_token_round_trip)
{
    start_daemon();
    char bin[PATH_MAX];
    cli_bin("specctl", bin, sizeof bin);
    char *info[] = {bin, "--socket", d.sock, "info", NULL};
    struct cli_run r = cli_run(info);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "target.gguf") && strstr(r.out, "draft.gguf"), "%s", r.out);
    cli_run_free(&r);

    char *stats[] = {bin, "--socket", d.sock, "stats", NULL};
    r = cli_run(stats);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "request_seconds_count"), "%s", r.out);
    cli_run_free(&r);
    char *prom[] = {bin, "--socket", d.sock, "stats", "--prometheus", NULL};
    r = cli_run(prom);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "specd_requests_total"), "%s", r.out);
    cli_run_free(&r);

    char *health[] = {bin, "--socket", d.sock, "health", NULL};
    r = cli_run(health);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(!strncmp(r.out, "ok ", 3), "%s", r.out);
    cli_run_free(&r);

    char *tok[] = {bin, "--socket", d.sock, "tokenize", PROMPT, NULL};
    r = cli_run(tok);
    cr_assert_eq(r.status, 0, "%s", r.err);
    /* specctl detokenize ID... */
    char *argv[64] = {bin, "--socket", d.sock, "detokenize"};
    int n = 4;
    for (char *save, *t = strtok_r(r.out, " \n", &save); t && n < 63; t = strtok_r(NULL, " \n", &save))
        argv[n++] = t;
    cr_assert_gt(n, 4, "no ids");
    struct cli_run back = cli_run(argv);
    cr_assert_eq(back.status, 0, "%s", back.err);
    cr_assert_str_eq(back.out, PROMPT "\n");
    cli_run_free(&back);
    cli_run_free(&r);

    char *bad[] = {bin, "--socket", d.sock, "generate", PROMPT, "--temperature", "-1", NULL};
    r = cli_run(bad);
    cr_assert_eq(r.status, 1, "a daemon error response exits 1: %s", r.err);
    cr_assert(strstr(r.err, "INVALID_PARAMS"), "%s", r.err);
    cli_run_free(&r);
}
