/* The real daemon, end to end: build/bin/specd (from the same build directory as this binary, so the
 * ASan build tests the ASan daemon and LSan judges its exit) runs as a child process on a temporary
 * socket with synthetic models, and the tests speak MessagePack to it directly.
 *
 * Timeouts here are hang guards only. Where a request must still be running when the test acts
 * (cancel, disconnect, drain, backpressure), it is a greedy generation the synthetic target keeps up
 * for 4000 tokens (seconds of work: it is cut short, never awaited). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "ipc/ipc.h"
#include "model/model.h"
#include "tests/ipc/lit.h"

#define HANG_GUARD_S 120
/* Greedy from this prompt the synthetic target cycles without an end-of-generation token. */
#define LONG_PROMPT "The quick brown fox"
#define LONG_TOKENS 4000

/* ---------------------------------------------------------------------------------------------- */
/* The daemon as a child process. */

struct daemon {
    pid_t pid;
    char dir[64];
    char sock[108];
    char log[96];
    char target[96], draft[96];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* build/tests/daemon/test_daemon -> build/bin/NAME */
static void bin_path(const char *name, char *out, size_t cap)
{
    char exe[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert_gt(n, 0);
    exe[n] = '\0';
    for (int i = 0; i < 3; i++)
        *strrchr(exe, '/') = '\0';
    cr_assert_lt(strlen(exe) + strlen(name) + 6, cap);
    memcpy(out, exe, strlen(exe));
    snprintf(out + strlen(exe), cap - strlen(exe), "/bin/%s", name);
    cr_assert_eq(access(out, X_OK), 0, "%s is not built", out);
}

static void write_models(struct daemon *d)
{
    /* Same seed: the same synthetic vocabulary; different shapes: different weights. */
    const struct model_synth_config t = {.arch = MODEL_ARCH_LLAMA, .wtype = SPEC_Q8_0, .n_layer = 2, .n_embd = 256,
                                         .n_head = 4, .n_head_kv = 2, .n_ff = 512, .n_vocab = 300, .n_ctx = 4096,
                                         .seed = 5};
    const struct model_synth_config dr = {.arch = MODEL_ARCH_LLAMA, .wtype = SPEC_Q4_0, .n_layer = 1, .n_embd = 64,
                                          .n_head = 2, .n_head_kv = 1, .n_ff = 128, .n_vocab = 300, .n_ctx = 4096,
                                          .seed = 5};
    snprintf(d->target, sizeof d->target, "%s/t.gguf", d->dir);
    snprintf(d->draft, sizeof d->draft, "%s/d.gguf", d->dir);
    cr_assert_eq(model_synth_write(&t, d->target), SPEC_OK);
    cr_assert_eq(model_synth_write(&dr, d->draft), SPEC_OK);
}

static void daemon_init(struct daemon *d)
{
    memset(d, 0, sizeof *d);
    snprintf(d->dir, sizeof d->dir, "/tmp/specd-test-XXXXXX");
    cr_assert_not_null(mkdtemp(d->dir));
    snprintf(d->sock, sizeof d->sock, "%s/s.sock", d->dir);
    snprintf(d->log, sizeof d->log, "%s/log", d->dir);
    write_models(d);
}

static void dump_log(const struct daemon *d)
{
    FILE *f = fopen(d->log, "r");
    if (!f)
        return;
    char line[512];
    fprintf(stderr, "---- daemon log %s\n", d->log);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

static bool log_has(const struct daemon *d, const char *needle)
{
    FILE *f = fopen(d->log, "r");
    if (!f)
        return false;
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* Start specd with the models and extra args (NULL-terminated); listen_fd >= 0 is passed as a
 * systemd-activated socket. Does not wait for readiness. */
static pid_t spawn(struct daemon *d, const char *sock, int listen_fd, const char *const *extra)
{
    char specd[PATH_MAX];
    bin_path("specd", specd, sizeof specd);
    const char *argv[48] = {specd, "--target", d->target, "--draft", d->draft, "--socket", sock,
                            "--threads", "1", "--log-level", "debug"};
    int n = 11;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    fflush(NULL);
    const pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* Dies with the test (a failed assertion ends the test's process without stopping it). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        const int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        const int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (listen_fd >= 0)
            dup2(listen_fd, 3);
        /* Nothing of Criterion's (pipes, arenas) leaks into the daemon. */
        close_range(listen_fd >= 0 ? 4 : 3, ~0u, 0);
        if (listen_fd >= 0) {
            char pidbuf[24];
            snprintf(pidbuf, sizeof pidbuf, "%d", (int)getpid());
            setenv("LISTEN_PID", pidbuf, 1);
            setenv("LISTEN_FDS", "1", 1);
        }
        /* The test runner sets exitcode=0 for Criterion's own leak; the daemon's leaks must fail it. */
        const char *lsan = getenv("LSAN_OPTIONS");
        char opts[512];
        snprintf(opts, sizeof opts, "%s%sexitcode=23", lsan ? lsan : "", lsan && *lsan ? ":" : "");
        setenv("LSAN_OPTIONS", opts, 1);
        execv(specd, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Wait for pid to exit; its exit status, or fails the test after the hang guard. */
static int wait_exit(const struct daemon *d, pid_t pid)
{
    const double t0 = now_s();
    int status;
    for (;;) {
        const pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (now_s() - t0 > HANG_GUARD_S) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            dump_log(d);
            cr_assert_fail("daemon %d did not exit", (int)pid);
        }
        usleep(10000);
    }
    if (!WIFEXITED(status)) {
        dump_log(d);
        cr_assert_fail("daemon died by signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    }
    return WEXITSTATUS(status);
}

static int connect_to(const char *path)
{
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    const struct timeval tv = {.tv_sec = HANG_GUARD_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* ---------------------------------------------------------------------------------------------- */
/* A client speaking raw MessagePack. */

struct client {
    int fd;
    msgpack_unpacker up;
    msgpack_unpacked msg;
};

static struct client *cl_wrap(int fd)
{
    struct client *c = calloc(1, sizeof *c);
    c->fd = fd;
    cr_assert(msgpack_unpacker_init(&c->up, 1 << 16));
    msgpack_unpacked_init(&c->msg);
    return c;
}

static struct client *cl_open(const struct daemon *d)
{
    const int fd = connect_to(d->sock);
    cr_assert_geq(fd, 0, "connect %s: %s", d->sock, strerror(errno));
    return cl_wrap(fd);
}

static void cl_close(struct client *c)
{
    close(c->fd);
    msgpack_unpacked_destroy(&c->msg);
    msgpack_unpacker_destroy(&c->up);
    free(c);
}

static void cl_raw(struct client *c, const void *p, size_t n)
{
    const char *b = p;
    while (n > 0) {
        const ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
        cr_assert_gt(w, 0, "send: %s", strerror(errno));
        b += w;
        n -= (size_t)w;
    }
}

__attribute__((format(printf, 2, 3))) static void cl_send(struct client *c, const char *fmt, ...)
{
    char text[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    lit(&sb, text);
    cl_raw(c, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* The next message, or NULL at end of stream (or reset). Fails on the hang guard. */
static const msgpack_object *cl_next(struct client *c)
{
    for (;;) {
        const msgpack_unpack_return r = msgpack_unpacker_next(&c->up, &c->msg);
        if (r == MSGPACK_UNPACK_SUCCESS)
            return &c->msg.data;
        cr_assert_eq(r, MSGPACK_UNPACK_CONTINUE, "the daemon sent bytes that are not MessagePack");
        cr_assert(msgpack_unpacker_reserve_buffer(&c->up, 1 << 16));
        const ssize_t n = recv(c->fd, msgpack_unpacker_buffer(&c->up), msgpack_unpacker_buffer_capacity(&c->up), 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return NULL;
        cr_assert_gt(n, 0, "recv: %s (hang guard)", strerror(errno));
        msgpack_unpacker_buffer_consumed(&c->up, (size_t)n);
    }
}

static const msgpack_object *mget(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            !memcmp(k->via.str.ptr, key, k->via.str.size))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static bool is_str(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           !memcmp(o->via.str.ptr, s, o->via.str.size);
}

static bool has_substr(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && memmem(o->via.str.ptr, o->via.str.size, s, strlen(s));
}

/* Expect the next message to be the successful response to msgid; its result. */
static const msgpack_object *expect_result(struct client *c, uint32_t msgid)
{
    const msgpack_object *m = cl_next(c);
    cr_assert_not_null(m, "connection closed waiting for %u", msgid);
    cr_assert_eq(m->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(m->via.array.size, 4);
    const msgpack_object *f = m->via.array.ptr;
    cr_assert_eq(f[0].via.u64, 1, "not a response");
    cr_assert_eq(f[1].via.u64, msgid, "response to %llu, want %u", (unsigned long long)f[1].via.u64, msgid);
    const msgpack_object *msg = mget(&f[2], "message");
    cr_assert_eq(f[2].type, MSGPACK_OBJECT_NIL, "error for %u: %.*s", msgid, msg ? (int)msg->via.str.size : 0,
                 msg ? msg->via.str.ptr : "");
    return &f[3];
}

/* Expect the next message to be an error response (msgid < 0: nil msgid) with code and a message
 * containing needle. */
static void expect_error(struct client *c, int64_t msgid, int code, const char *needle)
{
    const msgpack_object *m = cl_next(c);
    cr_assert_not_null(m, "connection closed waiting for error %s", ipc_code_name(code));
    cr_assert_eq(m->via.array.size, 4);
    const msgpack_object *f = m->via.array.ptr;
    cr_assert_eq(f[0].via.u64, 1);
    if (msgid < 0)
        cr_assert_eq(f[1].type, MSGPACK_OBJECT_NIL);
    else
        cr_assert_eq(f[1].via.u64, (uint64_t)msgid);
    cr_assert_eq(f[2].type, MSGPACK_OBJECT_MAP, "no error for %lld", (long long)msgid);
    cr_assert_eq(f[3].type, MSGPACK_OBJECT_NIL);
    const msgpack_object *msg = mget(&f[2], "message");
    cr_assert_eq(mget(&f[2], "code")->via.i64, code, "code %lld, want %d (%s): %.*s",
                 (long long)mget(&f[2], "code")->via.i64, code, ipc_code_name(code), (int)msg->via.str.size,
                 msg->via.str.ptr);
    cr_assert(is_str(mget(&f[2], "name"), ipc_code_name(code)));
    cr_assert(has_substr(msg, needle), "message \"%.*s\" lacks \"%s\"", (int)msg->via.str.size, msg->via.str.ptr,
              needle);
}

/* Expect an "error" notification with code, then the end of the stream. */
static void expect_closed_with(struct client *c, int code)
{
    const msgpack_object *m = cl_next(c);
    cr_assert_not_null(m, "closed without the %s notification", ipc_code_name(code));
    cr_assert_eq(m->via.array.size, 3);
    cr_assert_eq(m->via.array.ptr[0].via.u64, 2);
    cr_assert(is_str(&m->via.array.ptr[1], "error"));
    const msgpack_object *e = &m->via.array.ptr[2].via.array.ptr[0];
    cr_assert_eq(mget(e, "code")->via.i64, code, "notification code %lld, want %d",
                 (long long)mget(e, "code")->via.i64, code);
    cr_assert_null(cl_next(c), "the connection stayed open");
}

static void health_ok(struct client *c, uint32_t msgid)
{
    cl_send(c, "[0, %u, 'health', []]", msgid);
    const msgpack_object *r = expect_result(c, msgid);
    cr_assert(is_str(mget(r, "status"), "ok"));
}

/* Start and wait until it answers health. */
static void daemon_start(struct daemon *d, const char *const *extra)
{
    d->pid = spawn(d, d->sock, -1, extra);
    const double t0 = now_s();
    int fd;
    while ((fd = connect_to(d->sock)) < 0) {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            dump_log(d);
            cr_assert_fail("the daemon exited at start");
        }
        cr_assert_lt(now_s() - t0, HANG_GUARD_S, "the daemon never listened");
        usleep(10000);
    }
    struct client *c = cl_wrap(fd);
    health_ok(c, 0);
    cl_close(c);
}

/* SIGTERM; it must exit 0 (LSan-clean under ASan) and take its socket file with it. */
static void daemon_stop(struct daemon *d)
{
    kill(d->pid, SIGTERM);
    const int code = wait_exit(d, d->pid);
    if (code != 0 || log_has(d, "Sanitizer"))
        dump_log(d);
    cr_assert_eq(code, 0, "exit status %d", code);
    cr_assert_not(log_has(d, "Sanitizer"), "sanitizer report in the daemon's log");
    cr_assert_neq(access(d->sock, F_OK), 0, "the socket file is still there");
}

static void daemon_cleanup(struct daemon *d)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", d->dir);
    cr_assert_eq(system(cmd), 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Generate results and their streams. */

struct gen {
    uint32_t id;
    bool done;
    int n_chunks;
    char *chunk_text;
    size_t n_chunk_text;
    int32_t *chunk_tokens;
    int n_chunk_tokens;
    char *text;
    size_t n_text;
    int32_t *tokens;
    int n_tokens;
    char finish[16];
    uint64_t seed;
    int prompt_tokens, cached_tokens;
    int err_code; /* 0: a result */
};

static void append(void **p, size_t *n, const void *src, size_t len, size_t elem)
{
    *p = realloc(*p, (*n + len) * elem + 1);
    memcpy((char *)*p + *n * elem, src, len * elem);
    *n += len;
}

static void take_tokens(const msgpack_object *a, int32_t **out, int *n)
{
    cr_assert_eq(a->type, MSGPACK_OBJECT_ARRAY);
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const int32_t t = (int32_t)a->via.array.ptr[i].via.u64;
        size_t k = (size_t)*n;
        append((void **)out, &k, &t, 1, sizeof t);
        *n = (int)k;
    }
}

/* Read until every generate in g[0..n) has its response; chunks are routed by id and must belong
 * to one of them and precede its response. Other responses are not expected. */
static void collect(struct client *c, struct gen *g, int n)
{
    for (int left = n; left > 0;) {
        const msgpack_object *m = cl_next(c);
        cr_assert_not_null(m, "connection closed with %d generate(s) unanswered", left);
        const msgpack_object *f = m->via.array.ptr;
        if (f[0].via.u64 == 2) {
            cr_assert(is_str(&f[1], "chunk"), "unexpected notification");
            const msgpack_object *ch = &f[2].via.array.ptr[0];
            const uint32_t id = (uint32_t)mget(ch, "id")->via.u64;
            struct gen *x = NULL;
            for (int i = 0; i < n; i++)
                if (g[i].id == id)
                    x = &g[i];
            cr_assert_not_null(x, "chunk for id %u, which this connection did not send", id);
            cr_assert_not(x->done, "chunk for %u after its response", id);
            const msgpack_object *t = mget(ch, "text");
            append((void **)&x->chunk_text, &x->n_chunk_text, t->via.str.ptr, t->via.str.size, 1);
            take_tokens(mget(ch, "tokens"), &x->chunk_tokens, &x->n_chunk_tokens);
            x->n_chunks++;
            continue;
        }
        cr_assert_eq(f[0].via.u64, 1);
        struct gen *x = NULL;
        for (int i = 0; i < n; i++)
            if (g[i].id == f[1].via.u64)
                x = &g[i];
        cr_assert_not_null(x, "response to unknown id %llu", (unsigned long long)f[1].via.u64);
        cr_assert_not(x->done, "two responses to %u", x->id);
        x->done = true;
        left--;
        if (f[2].type != MSGPACK_OBJECT_NIL) {
            x->err_code = (int)mget(&f[2], "code")->via.i64;
            continue;
        }
        const msgpack_object *r = &f[3];
        const msgpack_object *t = mget(r, "text");
        append((void **)&x->text, &x->n_text, t->via.str.ptr, t->via.str.size, 1);
        take_tokens(mget(r, "tokens"), &x->tokens, &x->n_tokens);
        const msgpack_object *fin = mget(r, "finish_reason");
        snprintf(x->finish, sizeof x->finish, "%.*s", (int)fin->via.str.size, fin->via.str.ptr);
        x->seed = mget(r, "seed")->via.u64;
        cr_assert_eq(mget(mget(r, "usage"), "completion_tokens")->via.i64, x->n_tokens);
        x->prompt_tokens = (int)mget(mget(r, "usage"), "prompt_tokens")->via.i64;
        x->cached_tokens = (int)mget(mget(r, "usage"), "cached_tokens")->via.i64;
    }
}

/* A streamed result is whole: its chunks add up to exactly its text and tokens. */
static void assert_stream_matches(const struct gen *g)
{
    cr_assert_eq(g->err_code, 0, "generate %u failed with %d", g->id, g->err_code);
    cr_assert_eq(g->n_chunk_text, g->n_text, "generate %u: chunks have %zu bytes, text %zu", g->id,
                 g->n_chunk_text, g->n_text);
    cr_assert(g->n_text == 0 || !memcmp(g->chunk_text, g->text, g->n_text), "generate %u: chunk text differs",
              g->id);
    cr_assert_eq(g->n_chunk_tokens, g->n_tokens, "generate %u: chunk tokens %d, result %d", g->id,
                 g->n_chunk_tokens, g->n_tokens);
    cr_assert(g->n_tokens == 0 || !memcmp(g->chunk_tokens, g->tokens, (size_t)g->n_tokens * sizeof(int32_t)));
}

static void gen_free(struct gen *g)
{
    free(g->chunk_text);
    free(g->chunk_tokens);
    free(g->text);
    free(g->tokens);
}

/* Read until the first chunk of a streaming generate arrives (proof that it is running). */
static void wait_first_chunk(struct client *c, uint32_t id)
{
    const msgpack_object *m = cl_next(c);
    cr_assert_not_null(m);
    cr_assert_eq(m->via.array.ptr[0].via.u64, 2, "expected a chunk of %u first", id);
    cr_assert_eq(mget(&m->via.array.ptr[2].via.array.ptr[0], "id")->via.u64, id);
}

#define LONG_GEN(id) "[0, " #id ", 'generate', [{'prompt': '" LONG_PROMPT "', 'max_tokens': 4000, " \
                     "'temperature': 0, 'stream': true}]]"

/* ---------------------------------------------------------------------------------------------- */

TestSuite(daemon, .timeout = 300);

Test(daemon, sixteen_clients_get_complete_unmixed_streams)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    enum { N = 16 };
    static const char *const prompts[4] = {"Once upon a time", "int main(void) {", "hello world",
                                           "The cat sat on the"};
    struct client *c[N];
    for (int i = 0; i < N; i++)
        c[i] = cl_open(&d);
    /* All requests are in before any is read, so they run together (8 in the batch, 8 queued). */
    for (int i = 0; i < N; i++)
        cl_send(c[i], "[0, %d, 'generate', [{'prompt': '%s', 'max_tokens': 48, 'temperature': 0, 'stream': true}]]",
                100 + i, prompts[i % 4]);
    /* One more connection runs three generates at once: chunks of different ids interleave there. */
    struct client *multi = cl_open(&d);
    for (int k = 0; k < 3; k++)
        cl_send(multi, "[0, %d, 'generate', [{'prompt': '%s', 'max_tokens': 32, 'temperature': 0, "
                       "'stream': true, 'speculative': %s}]]", 7 + k, prompts[k], k == 1 ? "false" : "true");
    struct gen g[N] = {{0}}, gm[3] = {{0}};
    for (int i = 0; i < N; i++) {
        g[i].id = (uint32_t)(100 + i);
        collect(c[i], &g[i], 1);
        assert_stream_matches(&g[i]);
        cr_assert_gt(g[i].n_tokens, 0);
        cr_assert_gt(g[i].n_chunks, 1, "client %d: not streamed", i);
        cr_assert(!strcmp(g[i].finish, "length") || !strcmp(g[i].finish, "stop"));
    }
    for (int i = 4; i < N; i++) { /* greedy: the same prompt gives the same output on any client */
        cr_assert_eq(g[i].n_tokens, g[i % 4].n_tokens, "client %d differs from client %d", i, i % 4);
        cr_assert_eq(memcmp(g[i].tokens, g[i % 4].tokens, (size_t)g[i].n_tokens * sizeof(int32_t)), 0);
        cr_assert_eq(memcmp(g[i].text, g[i % 4].text, g[i].n_text), 0);
    }
    for (int k = 0; k < 3; k++)
        gm[k].id = (uint32_t)(7 + k);
    collect(multi, gm, 3);
    for (int k = 0; k < 3; k++) {
        assert_stream_matches(&gm[k]);
        /* 32 tokens of the same greedy run (spec or not) are a prefix of the 48. */
        cr_assert_leq(gm[k].n_tokens, g[k].n_tokens);
        cr_assert_eq(memcmp(gm[k].tokens, g[k].tokens, (size_t)gm[k].n_tokens * sizeof(int32_t)), 0,
                     "generate %d of the shared connection differs", k);
    }
    for (int i = 0; i < N; i++) {
        gen_free(&g[i]);
        cl_close(c[i]);
    }
    for (int k = 0; k < 3; k++)
        gen_free(&gm[k]);
    cl_close(multi);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

/* specd-run's tokens for the prompt (its --ids output). */
static int specd_run_ids(const struct daemon *d, const char *prompt, const char *const *opts, int32_t *ids, int cap)
{
    char run[PATH_MAX], cmd[2048];
    bin_path("specd-run", run, sizeof run);
    int n = snprintf(cmd, sizeof cmd, "'%s' --target '%s' --draft '%s' --threads 1 --ids -p '%s'", run, d->target,
                     d->draft, prompt);
    for (int i = 0; opts[i]; i++)
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, " %s", opts[i]);
    snprintf(cmd + n, sizeof cmd - (size_t)n, " 2>/dev/null");
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    int k = 0, v;
    while (k < cap && fscanf(p, "%d", &v) == 1)
        ids[k++] = v;
    cr_assert_eq(pclose(p), 0, "specd-run failed: %s", cmd);
    return k;
}

Test(daemon, output_equals_specd_run_greedy_and_seeded)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    struct client *c = cl_open(&d);
    int32_t want[256];
    const char *greedy[] = {"-n", "40", "--temp", "0", NULL};
    const int n_greedy = specd_run_ids(&d, "Once upon a time", greedy, want, 256);
    cr_assert_gt(n_greedy, 0);
    for (int spec = 0; spec < 2; spec++) {
        cl_send(c, "[0, 1, 'generate', [{'prompt': 'Once upon a time', 'max_tokens': 40, 'temperature': 0, "
                   "'speculative': %s}]]", spec ? "true" : "false");
        struct gen g = {.id = 1};
        collect(c, &g, 1);
        cr_assert_eq(g.n_tokens, n_greedy, "speculative %d: %d tokens, specd-run %d", spec, g.n_tokens, n_greedy);
        cr_assert_eq(memcmp(g.tokens, want, (size_t)n_greedy * sizeof *want), 0, "speculative %d differs", spec);
        cr_assert_eq(g.n_chunks, 0, "not streamed unless asked");
        /* the second request finds the first one's caches: all of its prompt but the last token */
        cr_assert_eq(g.cached_tokens, spec ? g.prompt_tokens - 1 : 0, "speculative %d: %d of %d prompt tokens cached",
                     spec, g.cached_tokens, g.prompt_tokens);
        gen_free(&g);
    }
    /* Sampled with a seed: the same random stream as specd-run's (filters off there by default).
     * Target-only: with speculation the tokens also depend on the drafts, whose length the engine
     * adapts to measured timings. */
    const char *sampled[] = {"-n", "40", "--temp", "0.9", "--seed", "7", "--no-spec", NULL};
    const int n_sampled = specd_run_ids(&d, "int main(void) {", sampled, want, 256);
    cr_assert_gt(n_sampled, 2);
    for (int rep = 0; rep < 2; rep++) {
        cl_send(c, "[0, 2, 'generate', [{'prompt': 'int main(void) {', 'max_tokens': 40, 'temperature': 0.9, "
                   "'top_k': 0, 'top_p': 1, 'min_p': 0, 'seed': 7, 'speculative': false}]]");
        struct gen g = {.id = 2};
        collect(c, &g, 1);
        cr_assert_eq(g.seed, 7);
        cr_assert_eq(g.n_tokens, n_sampled);
        cr_assert_eq(memcmp(g.tokens, want, (size_t)n_sampled * sizeof *want), 0, "seeded run %d differs", rep);
        if (rep) /* (the first run may share a BOS with the greedy prompt) */
            cr_assert_eq(g.cached_tokens, g.prompt_tokens - 1, "seeded run %d", rep);
        gen_free(&g);
    }
    cl_close(c);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

/* messages are rendered by the model's chat template (the synthetic models carry a ChatML one with
 * a default system message): the same tokens as the prompt written out by hand, which then finds the
 * first request's caches. */
Test(daemon, chat_messages_equal_the_prompt_their_template_renders)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    struct client *c = cl_open(&d);
    struct gen g[2] = {{.id = 1}, {.id = 2}};
    cl_send(c, "[0, 1, 'generate', [{'messages': [{'role': 'user', 'content': 'Once upon a time'}], "
               "'max_tokens': 24, 'temperature': 0}]]");
    collect(c, &g[0], 1);
    cl_send(c, "[0, 2, 'generate', [{'prompt': '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n"
               "<|im_start|>user\\nOnce upon a time<|im_end|>\\n<|im_start|>assistant\\n', "
               "'max_tokens': 24, 'temperature': 0}]]");
    collect(c, &g[1], 1);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(g[i].err_code, 0, "generate %d failed with %d", i + 1, g[i].err_code);
    cr_assert_eq(g[0].prompt_tokens, g[1].prompt_tokens);
    cr_assert_eq(g[1].cached_tokens, g[1].prompt_tokens - 1, "the same tokens: the first request's caches");
    cr_assert_eq(g[0].n_tokens, g[1].n_tokens);
    cr_assert_eq(memcmp(g[0].tokens, g[1].tokens, (size_t)g[0].n_tokens * sizeof(int32_t)), 0);
    gen_free(&g[0]);
    gen_free(&g[1]);
    cl_close(c);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

/* A draft that scores only the first 100 of 300 ids (--draft-vocab) changes how fast, not what. */
Test(daemon, a_vocabulary_limited_draft_gives_the_target_only_output)
{
    struct daemon d;
    daemon_init(&d);
    const char *extra[] = {"--draft-vocab", "100", NULL};
    daemon_start(&d, extra);
    struct client *c = cl_open(&d);
    int32_t want[256];
    const char *greedy[] = {"-n", "40", "--temp", "0", "--no-spec", NULL};
    const int n_greedy = specd_run_ids(&d, "Once upon a time", greedy, want, 256);
    cr_assert_gt(n_greedy, 0);
    cl_send(c, "[0, 1, 'generate', [{'prompt': 'Once upon a time', 'max_tokens': 40, 'temperature': 0}]]");
    struct gen g = {.id = 1};
    collect(c, &g, 1);
    cr_assert_eq(g.n_tokens, n_greedy);
    cr_assert_eq(memcmp(g.tokens, want, (size_t)n_greedy * sizeof *want), 0);
    gen_free(&g);
    cl_close(c);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

Test(daemon, cancel_ends_a_generate_with_cancelled)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    struct client *c = cl_open(&d);
    /* Cancelled in the same write as the request: it never runs. */
    cl_send(c, "[0, 1, 'generate', [{'prompt': 'hello', 'max_tokens': 100, 'stream': true}]]");
    cl_send(c, "[0, 2, 'cancel', [{'id': 1}]]");
    const msgpack_object *r = expect_result(c, 2);
    cr_assert(mget(r, "cancelled")->via.boolean);
    struct gen g = {.id = 1};
    collect(c, &g, 1);
    cr_assert_str_eq(g.finish, "cancelled");
    cr_assert_eq(g.n_tokens, 0);
    gen_free(&g);

    /* Mid-stream. */
    cl_send(c, LONG_GEN(3));
    wait_first_chunk(c, 3);
    cl_send(c, "[0, 4, 'cancel', [{'id': 3}]]");
    struct gen g3 = {.id = 3};
    /* The cancel's response may come before or between the remaining chunks. */
    bool cancel_ok = false;
    while (!g3.done) {
        const msgpack_object *m = cl_next(c);
        cr_assert_not_null(m);
        const msgpack_object *f = m->via.array.ptr;
        if (f[0].via.u64 == 1 && f[1].via.u64 == 4) {
            cr_assert(mget(&f[3], "cancelled")->via.boolean);
            cancel_ok = true;
            continue;
        }
        if (f[0].via.u64 == 2) {
            const msgpack_object *ch = &f[2].via.array.ptr[0];
            const msgpack_object *t = mget(ch, "text");
            append((void **)&g3.chunk_text, &g3.n_chunk_text, t->via.str.ptr, t->via.str.size, 1);
            take_tokens(mget(ch, "tokens"), &g3.chunk_tokens, &g3.n_chunk_tokens);
            continue;
        }
        cr_assert_eq(f[1].via.u64, 3);
        g3.done = true;
        const msgpack_object *res = &f[3];
        cr_assert(is_str(mget(res, "finish_reason"), "cancelled"), "the long generate was not cancelled");
        const msgpack_object *t = mget(res, "text");
        append((void **)&g3.text, &g3.n_text, t->via.str.ptr, t->via.str.size, 1);
        take_tokens(mget(res, "tokens"), &g3.tokens, &g3.n_tokens);
    }
    /* The first chunk was consumed above, so the rest of the chunks are a suffix of the result. */
    cr_assert(cancel_ok, "no response to the cancel before the generate's");
    cr_assert_gt(g3.n_tokens, 0);
    cr_assert_lt(g3.n_tokens, LONG_TOKENS);
    cr_assert_leq(g3.n_chunk_tokens, g3.n_tokens);
    cr_assert_eq(memcmp(g3.chunk_tokens, g3.tokens + (g3.n_tokens - g3.n_chunk_tokens),
                        (size_t)g3.n_chunk_tokens * sizeof(int32_t)), 0);
    gen_free(&g3);

    /* Nothing left to cancel: NOT_FOUND, for a finished, an unknown or a non-generate id. */
    cl_send(c, "[0, 5, 'cancel', [{'id': 3}]]");
    expect_error(c, 5, IPC_NOT_FOUND, "id: 3");
    cl_send(c, "[0, 6, 'cancel', [{'id': 6}]]");
    expect_error(c, 6, IPC_NOT_FOUND, "not an unfinished generate");
    cl_close(c);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

static uint64_t stat_counter(struct client *c, uint32_t msgid, const char *name)
{
    cl_send(c, "[0, %u, 'stats', []]", msgid);
    const msgpack_object *v = mget(expect_result(c, msgid), name);
    cr_assert_not_null(v, "stats lack %s", name);
    return v->via.u64;
}

Test(daemon, disconnect_mid_stream_cancels_it_and_the_daemon_keeps_serving)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    struct client *a = cl_open(&d);
    cl_send(a, LONG_GEN(1));
    cl_send(a, LONG_GEN(2)); /* and one more of the same client, still unread */
    const msgpack_object *m = cl_next(a); /* a chunk of either: both run in one batch */
    cr_assert(m && m->via.array.ptr[0].via.u64 == 2, "expected a chunk first");
    cl_close(a);
    /* The engine ends both (rather than generating 8000 tokens for nobody). */
    struct client *b = cl_open(&d);
    const double t0 = now_s();
    uint32_t id = 10;
    while (stat_counter(b, id++, "requests_cancelled") < 2) {
        cr_assert_lt(now_s() - t0, HANG_GUARD_S, "the disconnected client's generates were not cancelled");
        usleep(10000);
    }
    cr_assert_eq(stat_counter(b, id++, "active"), 0);
    cl_send(b, "[0, 3, 'generate', [{'prompt': 'hello', 'max_tokens': 16, 'temperature': 0}]]");
    struct gen g = {.id = 3};
    collect(b, &g, 1);
    cr_assert_eq(g.err_code, 0);
    cr_assert_gt(g.n_tokens, 0);
    gen_free(&g);
    cl_close(b);
    daemon_stop(&d); /* with ASan: LSan checks nothing of the disconnected client was leaked */
    daemon_cleanup(&d);
}

Test(daemon, bad_input_gets_the_documented_error_while_another_client_streams)
{
    struct daemon d;
    daemon_init(&d);
    const char *extra[] = {"--max-frame", "65536", NULL};
    daemon_start(&d, extra);
    struct client *s = cl_open(&d);
    cl_send(s, LONG_GEN(1));
    wait_first_chunk(s, 1);

    struct client *c = cl_open(&d);
    /* Wrong types and out-of-range values: an error naming the field; the connection stays usable. */
    cl_send(c, "[0, 1, 'generate', [{'prompt': 5}]]");
    expect_error(c, 1, IPC_INVALID_PARAMS, "prompt");
    cl_send(c, "[0, 2, 'generate', [{'prompt': 'a', 'temperature': 'hot'}]]");
    expect_error(c, 2, IPC_INVALID_PARAMS, "temperature");
    cl_send(c, "[0, 3, 'generate', [{'prompt': 'a', 'max_tokens': 5000}]]");
    expect_error(c, 3, IPC_INVALID_PARAMS, "max_tokens");
    cl_send(c, "[0, 4, 'generate', [{'tokens': [1, 300]}]]");
    expect_error(c, 4, IPC_INVALID_PARAMS, "tokens[1]");
    cl_send(c, "[0, 5, 'generate', [{'prompt': 'a', 'draft_max': 99}]]");
    expect_error(c, 5, IPC_INVALID_PARAMS, "draft_max");
    cl_send(c, "[0, 6, 'generate', [{'prompt': 'a', 'bogus': 1}]]");
    expect_error(c, 6, IPC_INVALID_PARAMS, "bogus");
    cl_send(c, "[0, 7, 'frobnicate', []]");
    expect_error(c, 7, IPC_METHOD_NOT_FOUND, "frobnicate");
    cl_send(c, "[0, 'x', 'health', []]");
    expect_error(c, -1, IPC_INVALID_REQUEST, "msgid");
    cl_send(c, "17");
    expect_error(c, -1, IPC_INVALID_REQUEST, "[0, msgid, method, params]");
    /* A msgid still in flight on this connection. */
    cl_send(c, "[0, 8, 'generate', [{'prompt': 'a', 'max_tokens': 4}]]");
    cl_send(c, "[0, 8, 'health', []]");
    expect_error(c, 8, IPC_INVALID_REQUEST, "repeats");
    struct gen g8 = {.id = 8};
    collect(c, &g8, 1);
    cr_assert_eq(g8.err_code, 0);
    gen_free(&g8);
    /* Prompts the context cannot hold: as text (tokenized by the daemon) and as ids. */
    {
        char big[20000];
        for (size_t i = 0; i < sizeof big; i++)
            big[i] = "abcdefgh "[i % 9];
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint8(&pk, 0);
        msgpack_pack_uint8(&pk, 9);
        msgpack_pack_str_with_body(&pk, "generate", 8);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "prompt", 6);
        msgpack_pack_str_with_body(&pk, big, sizeof big);
        cl_raw(c, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    expect_error(c, 9, IPC_PROMPT_TOO_LONG, "context");
    {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint8(&pk, 0);
        msgpack_pack_uint8(&pk, 10);
        msgpack_pack_str_with_body(&pk, "generate", 8);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "tokens", 6);
        msgpack_pack_array(&pk, 4096);
        for (int i = 0; i < 4096; i++)
            msgpack_pack_int32(&pk, i % 250);
        cl_raw(c, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    expect_error(c, 10, IPC_PROMPT_TOO_LONG, "4096 tokens");
    /* A truncated frame completed by a later write is just a message. */
    {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        lit(&sb, "[0, 11, 'health', []]");
        cl_raw(c, sb.data, 5);
        cl_raw(c, sb.data + 5, sb.size - 5);
        msgpack_sbuffer_destroy(&sb);
        cr_assert(is_str(mget(expect_result(c, 11), "status"), "ok"));
    }
    cl_close(c);

    /* Connection-ending input, each on its own connection. */
    c = cl_open(&d);
    cl_raw(c, "\x93\x00\xc1", 3); /* 0xc1 is never MessagePack */
    expect_closed_with(c, IPC_PARSE_ERROR);
    cl_close(c);
    c = cl_open(&d);
    cl_raw(c, "\x94\x00\x01\xdb\xff\xff\xff\xff", 8); /* a method string claiming 4 GiB */
    expect_closed_with(c, IPC_FRAME_TOO_LARGE);
    cl_close(c);
    c = cl_open(&d);
    cl_raw(c, "\xdd\x7f\xff\xff\xff", 5); /* an array claiming 2^31 elements */
    expect_closed_with(c, IPC_FRAME_TOO_LARGE);
    cl_close(c);
    c = cl_open(&d);
    {
        char *text = malloc(70000);
        memset(text, 'a', 69999);
        text[69999] = '\0';
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint8(&pk, 0);
        msgpack_pack_uint8(&pk, 1);
        msgpack_pack_str_with_body(&pk, "tokenize", 8);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "text", 4);
        msgpack_pack_str_with_body(&pk, text, 69999); /* over --max-frame 65536 */
        cl_raw(c, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        free(text);
    }
    expect_closed_with(c, IPC_FRAME_TOO_LARGE);
    cl_close(c);
    c = cl_open(&d);
    cl_raw(c, "\x94\x00\x05\xa8gene", 7); /* truncated, then the client leaves */
    shutdown(c->fd, SHUT_WR);
    cr_assert_null(cl_next(c), "no answer to half a message, and the daemon closes at end of stream");
    cl_close(c);

    /* The streaming client never noticed: it is answered between its chunks, and its stream ends
     * whole when cancelled. */
    cl_send(s, "[0, 20, 'health', []]");
    cl_send(s, "[0, 21, 'cancel', [{'id': 1}]]");
    struct gen g = {.id = 1};
    bool cancelled = false, healthy = false;
    while (!g.done) {
        const msgpack_object *m = cl_next(s);
        cr_assert_not_null(m);
        const msgpack_object *f = m->via.array.ptr;
        if (f[0].via.u64 == 2)
            continue;
        cr_assert_eq(f[2].type, MSGPACK_OBJECT_NIL);
        if (f[1].via.u64 == 20)
            healthy = is_str(mget(&f[3], "status"), "ok");
        else if (f[1].via.u64 == 21)
            cancelled = mget(&f[3], "cancelled")->via.boolean;
        else {
            cr_assert_eq(f[1].via.u64, 1);
            cr_assert(is_str(mget(&f[3], "finish_reason"), "cancelled"));
            g.done = true;
        }
    }
    cr_assert(healthy);
    cr_assert(cancelled);
    cl_close(s);
    cr_assert(log_has(&d, "PARSE_ERROR"), "the closing reason was not logged");
    cr_assert(log_has(&d, "FRAME_TOO_LARGE"));
    daemon_stop(&d);
    daemon_cleanup(&d);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

Test(daemon, random_bytes_only_affect_their_own_connection)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    struct client *s = cl_open(&d);
    uint64_t seed = 1234;
    int closed_by_daemon = 0;
    for (int round = 0; round < 200; round++) {
        struct client *c = cl_open(&d);
        uint8_t bytes[512];
        const size_t n = 1 + splitmix(&seed) % sizeof bytes;
        for (size_t i = 0; i < n; i++)
            bytes[i] = (uint8_t)splitmix(&seed);
        cl_raw(c, bytes, n);
        shutdown(c->fd, SHUT_WR);
        /* Whatever comes back is a documented error (a response, or the closing notification). */
        const msgpack_object *m;
        while ((m = cl_next(c))) {
            cr_assert_eq(m->type, MSGPACK_OBJECT_ARRAY);
            const msgpack_object *f = m->via.array.ptr;
            const msgpack_object *err = f[0].via.u64 == 1 ? &f[2] : &f[2].via.array.ptr[0];
            const int code = (int)mget(err, "code")->via.i64;
            cr_assert(strcmp(ipc_code_name(code), "INTERNAL") != 0, "round %d: code %d", round, code);
            if (f[0].via.u64 == 2)
                closed_by_daemon++;
        }
        cl_close(c);
        if (round % 50 == 0)
            health_ok(s, (uint32_t)round);
    }
    cr_assert_gt(closed_by_daemon, 10, "random bytes never hit a closing error (%d)", closed_by_daemon);
    cl_send(s, "[0, 999, 'generate', [{'prompt': 'hello', 'max_tokens': 8, 'temperature': 0}]]");
    struct gen g = {.id = 999};
    collect(s, &g, 1);
    cr_assert_eq(g.err_code, 0);
    gen_free(&g);
    cl_close(s);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

Test(daemon, limits_answer_busy)
{
    struct daemon d;
    daemon_init(&d);
    const char *extra[] = {"--max-seqs", "1", "--max-queue", "1", "--max-pending", "3", "--max-clients", "2", NULL};
    daemon_start(&d, extra);
    struct client *a = cl_open(&d);
    /* Three generates in one write: the daemon holds max-seqs + max-queue = 2. */
    {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        for (int i = 1; i <= 3; i++) {
            char text[160];
            snprintf(text, sizeof text, "[0, %d, 'generate', [{'prompt': 'hello', 'max_tokens': 8}]]", i);
            lit(&sb, text);
        }
        cl_raw(a, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    expect_error(a, 3, IPC_BUSY, "--max-queue");
    struct gen g[2] = {{.id = 1}, {.id = 2}};
    collect(a, g, 2);
    cr_assert_eq(g[0].err_code, 0);
    cr_assert_eq(g[1].err_code, 0);
    gen_free(&g[0]);
    gen_free(&g[1]);
    /* Four tokenizer requests in one write: three may be pending per connection. */
    {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        for (int i = 11; i <= 14; i++) {
            char text[160];
            snprintf(text, sizeof text, "[0, %d, 'tokenize', [{'text': 'some text'}]]", i);
            lit(&sb, text);
        }
        cl_raw(a, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    expect_error(a, 14, IPC_BUSY, "--max-pending");
    for (int i = 0; i < 3; i++) {
        const msgpack_object *m = cl_next(a);
        cr_assert_not_null(m);
        cr_assert_eq(m->via.array.ptr[2].type, MSGPACK_OBJECT_NIL, "tokenize failed");
    }
    /* Two clients at most: the third is told and closed; the others go on. */
    struct client *b = cl_open(&d);
    health_ok(b, 1);
    struct client *c = cl_open(&d);
    expect_closed_with(c, IPC_BUSY);
    cl_close(c);
    health_ok(a, 20);
    cl_send(a, "[0, 21, 'stats', []]");
    cr_assert_eq(mget(expect_result(a, 21), "connections_rejected")->via.u64, 1);
    cl_close(b);
    cl_close(a);
    cr_assert(log_has(&d, "--max-clients"), "the refusal was not logged");
    daemon_stop(&d);
    daemon_cleanup(&d);
}

/* A client that writes requests but never reads: the daemon must stop reading it (so our writes
 * block) rather than buffer its responses without bound, cancel its generation past --max-output,
 * keep serving others, and deliver everything once the client reads again. */
Test(daemon, client_that_does_not_read_is_throttled_not_buffered)
{
    struct daemon d;
    daemon_init(&d);
    const char *extra[] = {"--max-output", "32768", "--max-pending", "4", NULL};
    daemon_start(&d, extra);
    struct client *c = cl_open(&d);
    cl_send(c, LONG_GEN(1));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    lit(&sb, "[0, 2, 'health', []]");
    const size_t req_len = sb.size;
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    size_t written = 0;
    uint64_t n_health = 0;
    for (;;) {
        const ssize_t w = send(c->fd, sb.data, req_len, MSG_NOSIGNAL);
        if (w == (ssize_t)req_len) {
            written += req_len;
            n_health++;
            cr_assert_lt(written, (size_t)64 << 20, "the daemon kept reading a client that never reads");
            continue;
        }
        cr_assert(w < 0 && errno == EAGAIN, "short or failed send: %zd %s", w, strerror(errno));
        /* Blocked: stopped for good, or just behind? A stopped daemon leaves us unwritable. */
        struct pollfd p = {.fd = c->fd, .events = POLLOUT};
        if (poll(&p, 1, 500) == 0)
            break;
    }
    msgpack_sbuffer_destroy(&sb);
    /* Others are served meanwhile. */
    struct client *o = cl_open(&d);
    health_ok(o, 1);
    fcntl(c->fd, F_SETFL, 0);
    /* Everything it asked for arrives once it reads: every health, then or before the generate's
     * response, which ended cancelled when the unread output passed --max-output. */
    uint64_t got = 0;
    bool gen_done = false;
    while (got < n_health || !gen_done) {
        const msgpack_object *m = cl_next(c);
        cr_assert_not_null(m, "closed after %llu of %llu responses", (unsigned long long)got,
                           (unsigned long long)n_health);
        const msgpack_object *f = m->via.array.ptr;
        if (f[0].via.u64 == 2)
            continue; /* a chunk */
        if (f[1].via.u64 == 1) {
            cr_assert_eq(f[2].type, MSGPACK_OBJECT_NIL);
            cr_assert(is_str(mget(&f[3], "finish_reason"), "cancelled"));
            gen_done = true;
            continue;
        }
        cr_assert_eq(f[1].via.u64, 2);
        cr_assert_eq(f[2].type, MSGPACK_OBJECT_NIL);
        got++;
    }
    health_ok(c, 3);
    cr_assert(log_has(&d, "not reading"), "the cancellation was not logged");
    cl_close(o);
    cl_close(c);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

Test(daemon, sigterm_drains_refuses_new_work_and_removes_the_socket)
{
    struct daemon d;
    daemon_init(&d);
    const char *extra[] = {"--drain-timeout", "3", NULL};
    daemon_start(&d, extra);
    struct client *a = cl_open(&d), *b = cl_open(&d), *e = cl_open(&d);
    cl_send(a, LONG_GEN(1));
    wait_first_chunk(a, 1);
    cl_send(e, "[0, 1, 'generate', [{'prompt': 'hello', 'max_tokens': 12, 'temperature': 0, 'stream': true}]]");
    health_ok(b, 1);
    kill(d.pid, SIGTERM);
    /* The long generate keeps the daemon draining (it is cancelled at --drain-timeout). */
    const double t0 = now_s();
    for (uint32_t id = 2;; id++) {
        cl_send(b, "[0, %u, 'health', []]", id);
        if (is_str(mget(expect_result(b, id), "status"), "draining"))
            break;
        cr_assert_lt(now_s() - t0, HANG_GUARD_S, "never draining");
        usleep(1000);
    }
    cl_send(b, "[0, 100, 'generate', [{'prompt': 'hello'}]]");
    expect_error(b, 100, IPC_SHUTTING_DOWN, "shutting down");
    cl_send(b, "[0, 101, 'tokenize', [{'text': 'hello'}]]");
    expect_error(b, 101, IPC_SHUTTING_DOWN, "shutting down");
    cr_assert_lt(connect_to(d.sock), 0, "a new connection was accepted while draining");
    /* In-flight requests end with whole responses. */
    struct gen ge = {.id = 1};
    collect(e, &ge, 1);
    assert_stream_matches(&ge);
    cr_assert_str_neq(ge.finish, "cancelled", "a short request was cut by the drain");
    gen_free(&ge);
    struct gen ga = {.id = 1};
    collect(a, &ga, 1);
    cr_assert_eq(ga.err_code, 0);
    cr_assert_str_eq(ga.finish, "cancelled");
    gen_free(&ga);
    cr_assert_null(cl_next(a), "the daemon closes connections when it exits");
    const int code = wait_exit(&d, d.pid);
    if (code)
        dump_log(&d);
    cr_assert_eq(code, 0);
    cr_assert_not(log_has(&d, "Sanitizer"));
    cr_assert_neq(access(d.sock, F_OK), 0, "the socket file is still there");
    cl_close(a);
    cl_close(b);
    cl_close(e);
    daemon_cleanup(&d);
}

Test(daemon, stale_socket_is_replaced_but_a_live_daemon_or_a_file_is_not)
{
    struct daemon d;
    daemon_init(&d);
    /* A socket file nobody listens on, as a killed daemon leaves it. */
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", d.sock);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    close(fd);
    cr_assert_eq(access(d.sock, F_OK), 0);
    daemon_start(&d, NULL);
    cr_assert(log_has(&d, "stale"));

    /* A second daemon on the same path refuses to start and leaves the first alone. */
    const pid_t second = spawn(&d, d.sock, -1, NULL);
    cr_assert_eq(wait_exit(&d, second), 1);
    cr_assert(log_has(&d, "another daemon"));
    struct client *c = cl_open(&d);
    health_ok(c, 1);
    cl_close(c);
    daemon_stop(&d);

    /* Not a socket: never removed. */
    char path[128];
    snprintf(path, sizeof path, "%s/file", d.dir);
    FILE *f = fopen(path, "w");
    fputs("keep me", f);
    fclose(f);
    const pid_t third = spawn(&d, path, -1, NULL);
    cr_assert_eq(wait_exit(&d, third), 1);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert(S_ISREG(st.st_mode) && st.st_size == 7);
    daemon_cleanup(&d);
}

Test(daemon, socket_mode_and_systemd_activation)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    struct stat st;
    cr_assert_eq(stat(d.sock, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
    daemon_stop(&d);
    const char *extra[] = {"--socket-mode", "0660", NULL};
    daemon_start(&d, extra);
    cr_assert_eq(stat(d.sock, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0660, "mode %o", st.st_mode & 0777);
    daemon_stop(&d);

    /* Socket activation: the listening socket arrives as fd 3; --socket is then ignored, and the
     * socket file belongs to systemd, so it stays. */
    char act[108];
    snprintf(act, sizeof act, "%s/act.sock", d.dir);
    const int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", act);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(lfd, 16), 0);
    d.pid = spawn(&d, d.sock, lfd, NULL);
    close(lfd);
    const int fd = connect_to(act);
    cr_assert_geq(fd, 0);
    struct client *c = cl_wrap(fd);
    health_ok(c, 1);
    cl_close(c);
    cr_assert_neq(access(d.sock, F_OK), 0, "--socket was used despite activation");
    kill(d.pid, SIGTERM);
    cr_assert_eq(wait_exit(&d, d.pid), 0);
    cr_assert_eq(access(act, F_OK), 0, "the activated socket's file was removed");
    daemon_cleanup(&d);
}

/* The CUDA settings on a daemon without CUDA: it says they do nothing there and serves as usual. */
Test(daemon, cuda_settings_on_the_cpu_are_named_and_harmless)
{
    struct daemon d;
    daemon_init(&d);
    const char *extra[] = {"--device", "cpu", "--cuda-graphs", "--tensor-cores", "--blas-prefill",
                           "--gpu-memory", "512", NULL};
    daemon_start(&d, extra);
    struct client *c = cl_wrap(connect_to(d.sock));
    health_ok(c, 1);
    cl_close(c);
    daemon_stop(&d);
    cr_assert(log_has(&d, "--cuda-graphs, --tensor-cores, --blas-prefill and --gpu-memory do nothing on the CPU"));
    cr_assert(log_has(&d, "backend cpu") && !log_has(&d, "backend cpu, "), "the backend line names no CUDA setting");
    daemon_cleanup(&d);
}

Test(daemon, info_stats_health_and_tokenizer_methods)
{
    struct daemon d;
    daemon_init(&d);
    daemon_start(&d, NULL);
    struct client *c = cl_open(&d);
    cl_send(c, "[0, 1, 'info', []]");
    const msgpack_object *r = expect_result(c, 1);
    cr_assert_eq(mget(r, "protocol")->via.i64, IPC_PROTOCOL_VERSION);
    cr_assert(is_str(mget(r, "backend"), "cpu"));
    cr_assert_eq(mget(mget(r, "target"), "n_vocab")->via.i64, 300);
    cr_assert(is_str(mget(mget(r, "target"), "path"), d.target));
    cr_assert(is_str(mget(mget(r, "draft"), "arch"), "llama"));
    cr_assert_eq(mget(mget(r, "limits"), "n_ctx")->via.i64, 4096);
    cr_assert_eq(mget(mget(r, "limits"), "max_stop")->via.i64, IPC_MAX_STOP);

    /* Tokenize as the library does; detokenize back. */
    struct gguf *g;
    struct tok *tok;
    cr_assert_eq(gguf_open(d.target, &g), SPEC_OK);
    cr_assert_eq(tok_load(g, &tok), SPEC_OK);
    gguf_close(g);
    const char *text = "The quick brown fox, caf\xc3\xa9!";
    int32_t want[64];
    size_t n_want;
    cr_assert_eq(tok_encode(tok, text, strlen(text), false, true, want, 64, &n_want), SPEC_OK);
    tok_free(tok);
    cl_send(c, "[0, 2, 'tokenize', [{'text': 'The quick brown fox, caf\\xc3\\xa9!'}]]");
    const msgpack_object *ids = mget(expect_result(c, 2), "tokens");
    cr_assert_eq(ids->via.array.size, n_want);
    for (size_t i = 0; i < n_want; i++)
        cr_assert_eq(ids->via.array.ptr[i].via.u64, (uint64_t)want[i]);
    char req[1024];
    int n = snprintf(req, sizeof req, "[0, 3, 'detokenize', [{'tokens': [");
    for (size_t i = 0; i < n_want; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "%s%d", i ? ", " : "", want[i]);
    snprintf(req + n, sizeof req - (size_t)n, "]}]]");
    cl_send(c, "%s", req);
    cr_assert(is_str(mget(expect_result(c, 3), "text"), text));
    /* A lone lead byte (byte tokens are ids 0..255) becomes U+FFFD. */
    cl_send(c, "[0, 4, 'detokenize', [{'tokens': [104, 195]}]]");
    cr_assert(is_str(mget(expect_result(c, 4), "text"), "h\xef\xbf\xbd"));

    cl_send(c, "[0, 5, 'generate', [{'prompt': 'hello', 'max_tokens': 10, 'temperature': 0}]]");
    struct gen gen = {.id = 5};
    collect(c, &gen, 1);
    cl_send(c, "[0, 6, 'stats', []]");
    r = expect_result(c, 6);
    cr_assert_eq(mget(r, "tokens_generated")->via.u64, (uint64_t)gen.n_tokens);
    cr_assert_eq(mget(r, "prompt_tokens")->via.u64, (uint64_t)gen.prompt_tokens);
    cr_assert_eq(mget(r, "prompt_tokens_cached")->via.u64, (uint64_t)gen.cached_tokens);
    cr_assert_geq(mget(r, "requests_total")->via.u64, 6);
    cr_assert_eq(mget(r, "clients_connected")->via.u64, 1);
    cr_assert_eq(mget(mget(r, "request_seconds"), "count")->via.u64, 1);
    cr_assert_eq(mget(mget(r, "first_token_seconds"), "count")->via.u64, 1);
    cl_send(c, "[0, 7, 'stats', [{'format': 'prometheus'}]]");
    const msgpack_object *prom = mget(expect_result(c, 7), "text");
    char line[64];
    snprintf(line, sizeof line, "\nspecd_tokens_generated_total %d\n", gen.n_tokens);
    cr_assert(has_substr(prom, line), "%.*s", (int)prom->via.str.size, prom->via.str.ptr);
    cr_assert(has_substr(prom, "specd_request_seconds_count 1\n"));
    gen_free(&gen);
    health_ok(c, 8);
    cl_close(c);
    daemon_stop(&d);
    daemon_cleanup(&d);
}

Test(daemon, peer_with_another_uid_is_refused)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to connect as another uid");
    struct daemon d;
    daemon_init(&d);
    /* 0666 so that only the SO_PEERCRED check stands between uid 65534 and the daemon. */
    const char *extra[] = {"--socket-mode", "0666", NULL};
    cr_assert_eq(chmod(d.dir, 0711), 0);
    daemon_start(&d, extra);
    for (int allowed = 0; allowed < 2; allowed++) {
        const pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) { /* plain system calls only: Criterion's assertions belong to the test process */
            if (setuid(65534))
                _exit(3);
            const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_un a = {.sun_family = AF_UNIX};
            snprintf(a.sun_path, sizeof a.sun_path, "%s", d.sock);
            const struct timeval tv = {.tv_sec = HANG_GUARD_S};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            if (connect(fd, (struct sockaddr *)&a, sizeof a))
                _exit(4);
            static const char health[] = "\x94\x00\x01\xa6health\x90"; /* [0, 1, "health", []] */
            /* A refused peer may already be closed by the time it sends. */
            if (send(fd, health, sizeof health - 1, MSG_NOSIGNAL) != (ssize_t)sizeof health - 1)
                _exit(errno == EPIPE || errno == ECONNRESET ? 1 : 5);
            char buf[256];
            const ssize_t n = recv(fd, buf, sizeof buf, 0);
            _exit(n > 0 ? 0 : n == 0 || errno == ECONNRESET ? 1 : 6); /* 0: answered, 1: closed */
        }
        int status;
        waitpid(pid, &status, 0);
        cr_assert(WIFEXITED(status));
        cr_assert_eq(WEXITSTATUS(status), allowed ? 0 : 1, "allowed=%d: child status %d", allowed,
                     WEXITSTATUS(status));
        if (!allowed) {
            cr_assert(log_has(&d, "uid 65534 is not allowed"));
            daemon_stop(&d);
            const char *extra2[] = {"--socket-mode", "0666", "--allow-uid", "65534", NULL};
            daemon_start(&d, extra2);
        }
    }
    daemon_stop(&d);
    daemon_cleanup(&d);
}
