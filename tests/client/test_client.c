/* libspecd-client and specctl against a scripted fake daemon: a thread listening on a temporary Unix
 * socket that reads the client's requests (kept byte for byte for the checks) and answers with the
 * exact messages a test spells out, well-formed or hostile. No real daemon is involved. */
#include <criterion/criterion.h>
#include <errno.h>
#include <linux/sockios.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client/frame.h"
#include "specd_client.h"
#include "tests/client/cli.h"

/* ---- the fake daemon ---- */

#define MAX_REQ 8

struct req {
    uint8_t bytes[4096];
    size_t len;
    msgpack_unpacked up;
    uint32_t id;
    const msgpack_object *params; /* the params map, or NULL for [] */
};

/* Every request read in this test, freed when it ends. */
#define MAX_ALL_REQS 64
static struct req *all_reqs[MAX_ALL_REQS];
static int n_all_reqs;

static void free_reqs(void)
{
    for (int i = 0; i < n_all_reqs; i++) {
        msgpack_unpacked_destroy(&all_reqs[i]->up);
        free(all_reqs[i]);
    }
    n_all_reqs = 0;
}

struct peer {
    char dir[64], path[128];
    int lfd, fd;
    pthread_t th;
    void (*script)(struct peer *);
    bool bytewise;  /* send every message one byte per read of the client */
    bool may_close; /* the client is expected to hang up while the script still sends */
    uint8_t in[1 << 15];
    size_t in_len;
    struct req *req[MAX_REQ]; /* they outlive the peer, for the checks after peer_finish() */
    int n_req;
    char fail[256]; /* the first thing that went wrong in the script (asserted by the test thread) */
};

static void peer_fail(struct peer *p, const char *fmt, ...)
{
    if (p->fail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->fail, sizeof p->fail, fmt, ap);
    va_end(ap);
}

/* Takes the next connection (closing the previous one). */
static bool peer_accept(struct peer *p)
{
    if (p->fd >= 0)
        close(p->fd);
    p->in_len = 0;
    p->fd = accept(p->lfd, NULL, NULL);
    if (p->fd < 0) {
        peer_fail(p, "accept: %s", strerror(errno));
        return false;
    }
    /* A script waiting for a request that never comes must end, not hang the suite. */
    const struct timeval tv = {.tv_sec = 10};
    setsockopt(p->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return true;
}

static void *peer_main(void *arg)
{
    struct peer *p = arg;
    if (peer_accept(p))
        p->script(p);
    return NULL;
}

static void peer_start(struct peer *p, void (*script)(struct peer *))
{
    strcpy(p->dir, "/tmp/specd-client-test-XXXXXX");
    cr_assert_not_null(mkdtemp(p->dir));
    snprintf(p->path, sizeof p->path, "%s/specd.sock", p->dir);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, p->path);
    p->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    p->fd = -1;
    cr_assert_geq(p->lfd, 0);
    cr_assert_eq(bind(p->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(p->lfd, 4), 0);
    p->script = script;
    cr_assert_eq(pthread_create(&p->th, NULL, peer_main, p), 0);
}

/* Joins the script and checks it saw what it expected. */
static void peer_finish(struct peer *p)
{
    pthread_join(p->th, NULL);
    if (p->fd >= 0)
        close(p->fd);
    close(p->lfd);
    unlink(p->path);
    rmdir(p->dir);
    cr_assert_str_empty(p->fail, "fake daemon: %s", p->fail);
}

/* Reads the client's next message; it must be a request [0, msgid, method, params]. */
static struct req *peer_read(struct peer *p, const char *method)
{
    if (p->fail[0])
        return NULL;
    for (;;) {
        size_t off = 0;
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        const int r = p->in_len ? msgpack_unpack_next(&up, (const char *)p->in, p->in_len, &off)
                                : MSGPACK_UNPACK_CONTINUE;
        msgpack_unpacked_destroy(&up);
        if (r == MSGPACK_UNPACK_SUCCESS || r == MSGPACK_UNPACK_EXTRA_BYTES) {
            struct req *q = calloc(1, sizeof *q);
            if (p->n_req == MAX_REQ || n_all_reqs == MAX_ALL_REQS || off > sizeof q->bytes || !q) {
                free(q);
                peer_fail(p, "too many or too long requests");
                return NULL;
            }
            p->req[p->n_req++] = all_reqs[n_all_reqs++] = q;
            memcpy(q->bytes, p->in, off);
            q->len = off;
            memmove(p->in, p->in + off, p->in_len - off);
            p->in_len -= off;
            msgpack_unpacked_init(&q->up);
            size_t o2 = 0;
            msgpack_unpack_next(&q->up, (const char *)q->bytes, q->len, &o2);
            const msgpack_object *root = &q->up.data;
            const msgpack_object *a = root->via.array.ptr;
            if (root->type != MSGPACK_OBJECT_ARRAY || root->via.array.size != 4 ||
                a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[0].via.u64 != 0 ||
                a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > UINT32_MAX ||
                a[2].type != MSGPACK_OBJECT_STR || a[3].type != MSGPACK_OBJECT_ARRAY || a[3].via.array.size > 1 ||
                (a[3].via.array.size == 1 && a[3].via.array.ptr[0].type != MSGPACK_OBJECT_MAP)) {
                peer_fail(p, "request %d is not [0, uint32, str, [] or [map]]", p->n_req);
                return NULL;
            }
            if (a[2].via.str.size != strlen(method) || memcmp(a[2].via.str.ptr, method, a[2].via.str.size)) {
                peer_fail(p, "request %d: method %.*s, expected %s", p->n_req, (int)a[2].via.str.size,
                          a[2].via.str.ptr, method);
                return NULL;
            }
            q->id = (uint32_t)a[1].via.u64;
            q->params = a[3].via.array.size ? &a[3].via.array.ptr[0] : NULL;
            return q;
        }
        if (r != MSGPACK_UNPACK_CONTINUE) {
            peer_fail(p, "the client sent bytes that are not MessagePack");
            return NULL;
        }
        const ssize_t n = recv(p->fd, p->in + p->in_len, sizeof p->in - p->in_len, 0);
        if (n <= 0) {
            peer_fail(p, "no %s request came (%s)", method, n == 0 ? "closed" : strerror(errno));
            return NULL;
        }
        p->in_len += (size_t)n;
    }
}

/* Waits until the client has read everything sent so far. */
static void peer_drain(struct peer *p)
{
    for (int i = 0; i < 200000; i++) {
        int queued = 0;
        if (ioctl(p->fd, SIOCOUTQ, &queued) != 0 || queued == 0)
            return;
        nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
    }
    peer_fail(p, "the client stopped reading");
}

static void peer_send_bytes(struct peer *p, const void *data, size_t len)
{
    const uint8_t *b = data;
    while (len && !p->fail[0]) {
        const size_t n = p->bytewise ? 1 : len;
        const ssize_t w = send(p->fd, b, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (!p->may_close)
                peer_fail(p, "send: %s", strerror(errno));
            return;
        }
        if (p->bytewise)
            peer_drain(p);
        b += w;
        len -= (size_t)w;
    }
}

/* Packs by a format: A and M take an int count (array / map header), s a string, i an int, I a
 * long long, u an unsigned, d a double, n nil, t true, f false. */
static void vpack(msgpack_packer *pk, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        switch (*fmt) {
        case 'A': msgpack_pack_array(pk, (size_t)va_arg(ap, int)); break;
        case 'M': msgpack_pack_map(pk, (size_t)va_arg(ap, int)); break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            msgpack_pack_str_with_body(pk, s, strlen(s));
            break;
        }
        case 'i': msgpack_pack_int(pk, va_arg(ap, int)); break;
        case 'I': msgpack_pack_long_long(pk, va_arg(ap, long long)); break;
        case 'u': msgpack_pack_unsigned_int(pk, va_arg(ap, unsigned)); break;
        case 'd': msgpack_pack_double(pk, va_arg(ap, double)); break;
        case 'n': msgpack_pack_nil(pk); break;
        case 't': msgpack_pack_true(pk); break;
        case 'f': msgpack_pack_false(pk); break;
        default: cr_assert_fail("bad pack format %c", *fmt);
        }
    }
}

/* Sends one message packed by format. */
static void peer_send(struct peer *p, const char *fmt, ...)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    va_list ap;
    va_start(ap, fmt);
    vpack(&pk, fmt, ap);
    va_end(ap);
    peer_send_bytes(p, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void send_chunk(struct peer *p, uint32_t id, const char *text, int tok0, int tok1)
{
    peer_send(p, "AisAMsusssAii", 3, 2, "chunk", 1, 3, "id", id, "text", text, "tokens", 2, tok0, tok1);
}

static void send_error(struct peer *p, uint32_t id, int code, const char *name, const char *message)
{
    peer_send(p, "AiuMsissssn", 4, 1, id, 3, "code", code, "name", name, "message", message);
}

/* A complete generate result; `omit` names one key left out (or NULL). */
static void send_result_omitting(struct peer *p, uint32_t id, const char *text, const char *finish, const char *omit)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    static const char *const keys[] = {"text", "tokens", "finish_reason", "seed", "usage", "speculative", "timing"};
    int n = 0;
    for (int i = 0; i < 7; i++)
        n += !omit || strcmp(omit, keys[i]);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_unsigned_int(&pk, id);
    msgpack_pack_nil(&pk);
    msgpack_pack_map(&pk, (size_t)n);
    for (int i = 0; i < 7; i++) {
        if (omit && !strcmp(omit, keys[i]))
            continue;
        msgpack_pack_str_with_body(&pk, keys[i], strlen(keys[i]));
        switch (i) {
        case 0: msgpack_pack_str_with_body(&pk, text, strlen(text)); break;
        case 1:
            msgpack_pack_array(&pk, 4);
            msgpack_pack_int(&pk, 104);
            msgpack_pack_int(&pk, 101);
            msgpack_pack_unsigned_int(&pk, 300);
            msgpack_pack_unsigned_int(&pk, 70000);
            break;
        case 2: msgpack_pack_str_with_body(&pk, finish, strlen(finish)); break;
        case 3: msgpack_pack_uint64(&pk, 1ull << 40); break;
        case 4:
            msgpack_pack_map(&pk, 3);
            msgpack_pack_str_with_body(&pk, "prompt_tokens", 13);
            msgpack_pack_int(&pk, 3);
            msgpack_pack_str_with_body(&pk, "cached_tokens", 13);
            msgpack_pack_int(&pk, 2);
            msgpack_pack_str_with_body(&pk, "completion_tokens", 17);
            msgpack_pack_int(&pk, 4);
            break;
        case 5:
            msgpack_pack_map(&pk, 6);
            msgpack_pack_str_with_body(&pk, "enabled", 7);
            msgpack_pack_true(&pk);
            msgpack_pack_str_with_body(&pk, "drafted", 7);
            msgpack_pack_int(&pk, 4);
            msgpack_pack_str_with_body(&pk, "accepted", 8);
            msgpack_pack_int(&pk, 3);
            msgpack_pack_str_with_body(&pk, "acceptance", 10);
            msgpack_pack_double(&pk, 0.75);
            msgpack_pack_str_with_body(&pk, "target_passes", 13);
            msgpack_pack_int(&pk, 2);
            msgpack_pack_str_with_body(&pk, "tokens_per_pass", 15);
            msgpack_pack_int(&pk, 2); /* an integer where a float is expected */
            break;
        default: {
            static const char *const t[] = {"queue_ms", "prefill_ms", "draft_ms", "target_ms", "total_ms"};
            msgpack_pack_map(&pk, 5);
            for (int k = 0; k < 5; k++) {
                msgpack_pack_str_with_body(&pk, t[k], strlen(t[k]));
                msgpack_pack_double(&pk, 1.5 * (k + 1));
            }
        }
        }
    }
    peer_send_bytes(p, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void send_result(struct peer *p, uint32_t id, const char *text, const char *finish)
{
    send_result_omitting(p, id, text, finish, NULL);
}

static struct spc_client *connect_to(const struct peer *p, size_t max_frame)
{
    struct spc_client *c = NULL;
    /* The timeout only ends a test whose fake daemon went wrong; no test expects it but one. */
    const int err = spc_connect(&(struct spc_options){.socket_path = p->path, .timeout_ms = 10000,
                                                      .max_frame = max_frame},
                                &c);
    cr_assert_eq(err, SPC_OK, "connect: %s", spc_strerror(err));
    return c;
}

/* The request's params map key, or NULL. */
static const msgpack_object *param(const struct req *q, const char *key)
{
    if (!q || !q->params)
        return NULL;
    for (uint32_t i = 0; i < q->params->via.map.size; i++) {
        const msgpack_object *k = &q->params->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            !memcmp(k->via.str.ptr, key, k->via.str.size))
            return &q->params->via.map.ptr[i].val;
    }
    return NULL;
}

/* Bytes of `[0, id, method, <params bytes>]` as a client must send them (msgid < 128). */
static size_t expected_request(uint8_t *out, uint32_t id, const char *method, const char *params_hex)
{
    size_t n = 0;
    out[n++] = 0x94;
    out[n++] = 0x00;
    out[n++] = (uint8_t)id;
    out[n++] = (uint8_t)(0xa0 | strlen(method));
    memcpy(out + n, method, strlen(method));
    n += strlen(method);
    for (const char *h = params_hex; h[0] && h[1]; h += 2) {
        unsigned v;
        sscanf(h, "%2x", &v);
        out[n++] = (uint8_t)v;
    }
    return n;
}

static void assert_request_bytes(const struct req *q, const char *method, const char *params_hex)
{
    cr_assert_not_null(q);
    cr_assert_lt(q->id, 128);
    uint8_t want[256];
    const size_t n = expected_request(want, q->id, method, params_hex);
    cr_assert_eq(q->len, n, "%s request is %zu bytes, expected %zu", method, q->len, n);
    cr_assert_arr_eq(q->bytes, want, n, "%s request bytes differ", method);
}

static void expect_int(const struct req *q, const char *key, long long v)
{
    const msgpack_object *o = param(q, key);
    cr_assert_not_null(o, "param %s missing", key);
    cr_assert(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER,
              "param %s is not an integer", key);
    cr_assert_eq(o->via.i64, v, "param %s = %lld, expected %lld", key, (long long)o->via.i64, v);
}

static void expect_float(const struct req *q, const char *key, double v)
{
    const msgpack_object *o = param(q, key);
    cr_assert_not_null(o, "param %s missing", key);
    cr_assert(o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32, "param %s is not a float", key);
    cr_assert_float_eq(o->via.f64, v, 1e-6, "param %s", key);
}

static void expect_bool(const struct req *q, const char *key, bool v)
{
    const msgpack_object *o = param(q, key);
    cr_assert_not_null(o, "param %s missing", key);
    cr_assert_eq(o->type, MSGPACK_OBJECT_BOOLEAN, "param %s is not a bool", key);
    cr_assert_eq(o->via.boolean, v, "param %s", key);
}

static void expect_str(const msgpack_object *o, const char *v, const char *what)
{
    cr_assert_not_null(o, "%s missing", what);
    cr_assert_eq(o->type, MSGPACK_OBJECT_STR, "%s is not a string", what);
    cr_assert(o->via.str.size == strlen(v) && !memcmp(o->via.str.ptr, v, o->via.str.size),
              "%s is '%.*s', expected '%s'", what, (int)o->via.str.size, o->via.str.ptr, v);
}

TestSuite(client, .fini = free_reqs, .timeout = 60);

/* ---- request shapes ---- */

static void script_tokenize_info(struct peer *p)
{
    struct req *q = peer_read(p, "tokenize");
    if (!q)
        return;
    peer_send(p, "AiunMsAiIIu", 4, 1, q->id, 1, "tokens", 4, 5, -1ll, 4294967296ll, 300u);
    if (!peer_accept(p))
        return;
    q = peer_read(p, "tokenize");
    if (q)
        peer_send(p, "AiunMsAiu", 4, 1, q->id, 1, "tokens", 2, 1, 70000u);
    q = peer_read(p, "info");
    if (q)
        send_error(p, q->id, -32601, "METHOD_NOT_FOUND", "later");
}

Test(client, tokenize_request_bytes_follow_the_protocol_and_ids_come_back)
{
    struct peer p = {0};
    peer_start(&p, script_tokenize_info);
    struct spc_client *c = connect_to(&p, 0);
    int32_t *t = NULL;
    size_t n = 0;
    /* The first answer holds an id beyond int32: refused, not truncated. */
    cr_assert_eq(spc_tokenize(c, "hi", -1, &t, &n), SPC_E_PROTOCOL);
    cr_assert_null(t);
    spc_close(c);
    c = connect_to(&p, 0);
    cr_assert_eq(spc_tokenize(c, "hé", 1, &t, &n), SPC_OK);
    cr_assert_eq(n, 2);
    cr_assert_eq(t[0], 1);
    cr_assert_eq(t[1], 70000);
    spc_free(t);
    struct spc_info *in = NULL;
    cr_assert_eq(spc_info(c, &in), SPC_E_DAEMON);
    cr_assert_null(in);
    spc_close(c);
    peer_finish(&p);
    /* {"text": "hi"}; {"text": "hé", "add_special": true}; info's params are []. */
    assert_request_bytes(p.req[0], "tokenize", "9181a474657874a26869");
    assert_request_bytes(p.req[1], "tokenize", "9182a474657874a368c3a9ab6164645f7370656369616cc3");
    assert_request_bytes(p.req[2], "info", "90");
    cr_assert_neq(p.req[1]->id, p.req[2]->id, "msgids of one connection must differ");
}

static void script_generate_params(struct peer *p)
{
    for (int i = 0; i < 3; i++) {
        struct req *q = peer_read(p, "generate");
        if (q)
            send_result(p, q->id, "ok", "length");
    }
}

Test(client, generate_sends_set_params_with_protocol_types_and_omits_unset_ones)
{
    struct peer p = {0};
    peer_start(&p, script_generate_params);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_result *r;

    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "hi";
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_OK);
    spc_free(r);

    const char *stops[] = {"\n\n", "END"};
    gp = (struct spc_gen_params){.prompt = "hi", .add_special = 0, .max_tokens = 7, .temperature = 0.5, .top_k = -1,
                                 .top_p = 0.9, .min_p = 0, .repeat_penalty = 1.1, .frequency_penalty = -0.5,
                                 .presence_penalty = 2, .has_seed = true, .seed = 1ull << 63, .stop = stops,
                                 .n_stop = 2, .speculative = 0, .draft_max = 3};
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_OK);
    spc_free(r);

    const int32_t toks[] = {1, 70000};
    gp = spc_gen_params_default();
    gp.tokens = toks;
    gp.n_tokens = 2;
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_OK);
    spc_free(r);
    spc_close(c);
    peer_finish(&p);

    assert_request_bytes(p.req[0], "generate", "9181a670726f6d7074a26869"); /* [{"prompt": "hi"}] */
    const struct req *q = p.req[1];
    cr_assert_eq(q->params->via.map.size, 14, "every parameter set, and nothing else");
    expect_str(param(q, "prompt"), "hi", "prompt");
    expect_bool(q, "add_special", false);
    expect_int(q, "max_tokens", 7);
    expect_float(q, "temperature", 0.5);
    expect_int(q, "top_k", -1);
    expect_float(q, "top_p", 0.9);
    expect_float(q, "min_p", 0);
    expect_float(q, "repeat_penalty", 1.1);
    expect_float(q, "frequency_penalty", -0.5);
    expect_float(q, "presence_penalty", 2);
    const msgpack_object *seed = param(q, "seed");
    cr_assert(seed && seed->type == MSGPACK_OBJECT_POSITIVE_INTEGER && seed->via.u64 == 1ull << 63, "seed");
    const msgpack_object *stop = param(q, "stop");
    cr_assert(stop && stop->type == MSGPACK_OBJECT_ARRAY && stop->via.array.size == 2, "stop is an array of 2");
    expect_str(&stop->via.array.ptr[0], "\n\n", "stop[0]");
    expect_str(&stop->via.array.ptr[1], "END", "stop[1]");
    cr_assert_null(param(q, "stream"), "not streamed: stream is left out (false)");
    expect_bool(q, "speculative", false);
    expect_int(q, "draft_max", 3);
    /* [{"tokens": [1, 70000]}] */
    assert_request_bytes(p.req[2], "generate", "9181a6746f6b656e739201ce00011170");
}

Test(client, generate_params_are_checked_before_anything_is_sent)
{
    struct peer p = {0};
    peer_start(&p, script_generate_params);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_result *r = NULL;
    const int32_t toks[] = {1};
    struct spc_gen_params gp = spc_gen_params_default();
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_E_INVALID_ARG, "neither prompt nor tokens");
    gp.prompt = "x";
    gp.tokens = toks;
    gp.n_tokens = 1;
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_E_INVALID_ARG, "both prompt and tokens");
    gp.tokens = NULL;
    gp.speculative = 2;
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_E_INVALID_ARG, "speculative is -1, 0 or 1");
    gp.speculative = -1;
    gp.n_stop = 1;
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_E_INVALID_ARG, "n_stop without stop");
    cr_assert_null(r);
    /* The connection is still fine: three generates go through. */
    gp.n_stop = 0;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_OK);
        spc_free(r);
    }
    spc_close(c);
    peer_finish(&p);
    cr_assert_eq(p.n_req, 3);
}

/* ---- streaming ---- */

struct collect {
    char text[256];
    int32_t tokens[16];
    int n_chunks, n_tokens, stop_after;
    uint32_t id;
};

static int collect_chunk(void *user, const struct spc_chunk *ch)
{
    struct collect *k = user;
    k->id = ch->id;
    strncat(k->text, ch->text, sizeof k->text - strlen(k->text) - 1);
    for (size_t i = 0; i < ch->n_tokens && k->n_tokens < 16; i++)
        k->tokens[k->n_tokens++] = ch->tokens[i];
    return ++k->n_chunks == k->stop_after;
}

static void script_stream(struct peer *p)
{
    struct req *q = peer_read(p, "generate");
    if (!q)
        return;
    send_chunk(p, q->id, "he", 104, 101);
    peer_send(p, "AisAM", 3, 2, "log", 1, 0); /* a notification this client does not know */
    send_chunk(p, q->id, "ll", 108, 108);
    send_chunk(p, q->id, "o\xc3\xa9", 111, 233);
    send_result(p, q->id, "hello\xc3\xa9", "stop");
}

static void check_stream(bool bytewise)
{
    struct peer p = {.bytewise = bytewise};
    peer_start(&p, script_stream);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "say hello";
    struct collect k = {0};
    struct spc_gen_result *r = NULL;
    const int err = spc_generate(c, &gp, collect_chunk, &k, &r);
    cr_assert_eq(err, SPC_OK, "%s", spc_strerror(err));
    spc_close(c);
    peer_finish(&p);
    expect_bool(p.req[0], "stream", true);
    cr_assert_eq(k.n_chunks, 3);
    cr_assert_eq(k.id, p.req[0]->id);
    cr_assert_str_eq(k.text, "hello\xc3\xa9");
    const int32_t want_tokens[] = {104, 101, 108, 108, 111, 233};
    cr_assert_eq(k.n_tokens, 6);
    cr_assert_arr_eq(k.tokens, want_tokens, sizeof want_tokens);
    /* Every field of the result. */
    cr_assert_str_eq(r->text, "hello\xc3\xa9");
    cr_assert_eq(r->text_len, 7);
    cr_assert_eq(r->n_tokens, 4);
    const int32_t want_result_tokens[] = {104, 101, 300, 70000};
    cr_assert_arr_eq(r->tokens, want_result_tokens, sizeof want_result_tokens);
    cr_assert_eq(r->finish, SPC_FINISH_STOP);
    cr_assert_str_eq(spc_finish_name(r->finish), "stop");
    cr_assert_eq(r->seed, 1ull << 40);
    cr_assert_eq(r->prompt_tokens, 3);
    cr_assert_eq(r->cached_tokens, 2);
    cr_assert_eq(r->completion_tokens, 4);
    cr_assert(r->spec.enabled);
    cr_assert_eq(r->spec.drafted, 4);
    cr_assert_eq(r->spec.accepted, 3);
    cr_assert_float_eq(r->spec.acceptance, 0.75, 1e-12);
    cr_assert_eq(r->spec.target_passes, 2);
    cr_assert_float_eq(r->spec.tokens_per_pass, 2.0, 1e-12);
    cr_assert_float_eq(r->timing.queue_ms, 1.5, 1e-12);
    cr_assert_float_eq(r->timing.prefill_ms, 3.0, 1e-12);
    cr_assert_float_eq(r->timing.draft_ms, 4.5, 1e-12);
    cr_assert_float_eq(r->timing.target_ms, 6.0, 1e-12);
    cr_assert_float_eq(r->timing.total_ms, 7.5, 1e-12);
    spc_free(r);
}

Test(client, streamed_generate_gives_chunks_in_order_then_the_full_result)
{
    check_stream(false);
}

Test(client, messages_split_into_one_byte_reads_are_reassembled)
{
    check_stream(true);
}

static void script_chunk_unasked(struct peer *p)
{
    struct req *q = peer_read(p, "generate");
    if (q)
        send_chunk(p, q->id, "he", 104, 101);
}

Test(client, chunk_of_a_generate_that_did_not_ask_to_stream_breaks_the_protocol)
{
    struct peer p = {0};
    peer_start(&p, script_chunk_unasked);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "x";
    struct spc_gen_result *r = NULL;
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_E_PROTOCOL);
    cr_assert_eq(spc_health(c, &(struct spc_health){0}), SPC_E_CLOSED);
    spc_close(c);
    peer_finish(&p);
}

/* ---- out-of-order responses and cancel ---- */

static void script_overtake(struct peer *p)
{
    struct req *g = peer_read(p, "generate");
    struct req *t = peer_read(p, "tokenize");
    if (!g || !t)
        return;
    /* A chunk, then the tokenize answer overtakes the generate. */
    send_chunk(p, g->id, "a", 97, 98);
    peer_send(p, "AiunMsAi", 4, 1, t->id, 1, "tokens", 1, 9);
    t = peer_read(p, "tokenize");
    if (!t)
        return;
    /* The generate finishes while the second tokenize waits. */
    send_chunk(p, g->id, "b", 99, 100);
    send_result(p, g->id, "ab", "length");
    peer_send(p, "AiunMsAi", 4, 1, t->id, 1, "tokens", 1, 8);
}

Test(client, responses_out_of_order_are_matched_by_msgid_and_generate_events_wait)
{
    struct peer p = {0};
    peer_start(&p, script_overtake);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "x";
    uint32_t id;
    cr_assert_eq(spc_generate_start(c, &gp, true, &id), SPC_OK);
    uint32_t id2;
    cr_assert_eq(spc_generate_start(c, &gp, true, &id2), SPC_E_INVALID_ARG, "one generate in flight");
    int32_t *t;
    size_t n;
    cr_assert_eq(spc_tokenize(c, "x", -1, &t, &n), SPC_OK);
    cr_assert(n == 1 && t[0] == 9);
    spc_free(t);
    cr_assert_eq(spc_tokenize(c, "y", -1, &t, &n), SPC_OK);
    cr_assert(n == 1 && t[0] == 8);
    spc_free(t);
    const struct spc_chunk *ch;
    struct spc_gen_result *r;
    cr_assert_eq(spc_generate_next(c, &ch, &r), SPC_OK);
    cr_assert(ch && !r);
    cr_assert_str_eq(ch->text, "a");
    cr_assert_eq(ch->id, id);
    cr_assert_eq(spc_generate_next(c, &ch, &r), SPC_OK);
    cr_assert(ch && !r);
    cr_assert_str_eq(ch->text, "b");
    cr_assert_eq(ch->tokens[1], 100);
    cr_assert_eq(spc_generate_next(c, &ch, &r), SPC_OK);
    cr_assert(!ch && r);
    cr_assert_str_eq(r->text, "ab");
    cr_assert_eq(r->finish, SPC_FINISH_LENGTH);
    spc_free(r);
    cr_assert_eq(spc_generate_next(c, &ch, &r), SPC_E_INVALID_ARG, "nothing in flight any more");
    spc_close(c);
    peer_finish(&p);
    cr_assert_eq(p.req[0]->id, id);
}

static void script_cancel(struct peer *p)
{
    struct req *g = peer_read(p, "generate");
    if (!g)
        return;
    send_chunk(p, g->id, "a", 1, 2);
    struct req *k = peer_read(p, "cancel");
    if (!k)
        return;
    /* One more round was under way; then the generate's result comes before the cancel's answer. */
    send_chunk(p, g->id, "b", 3, 4);
    send_result(p, g->id, "ab", "cancelled");
    peer_send(p, "AiunMst", 4, 1, k->id, 1, "cancelled");
}

Test(client, nonzero_callback_cancels_and_the_result_comes_cancelled)
{
    struct peer p = {0};
    peer_start(&p, script_cancel);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "x";
    struct collect k = {.stop_after = 1};
    struct spc_gen_result *r = NULL;
    cr_assert_eq(spc_generate(c, &gp, collect_chunk, &k, &r), SPC_OK);
    cr_assert_eq(k.n_chunks, 1, "no chunk after the callback asked to stop");
    cr_assert_eq(r->finish, SPC_FINISH_CANCELLED);
    cr_assert_str_eq(r->text, "ab");
    spc_free(r);
    spc_close(c);
    peer_finish(&p);
    /* [0, id, "cancel", [{"id": <the generate's msgid>}]] */
    char hex[16];
    snprintf(hex, sizeof hex, "9181a26964%02x", (unsigned)p.req[0]->id);
    assert_request_bytes(p.req[1], "cancel", hex);
}

static void script_cancel_too_late(struct peer *p)
{
    struct req *g = peer_read(p, "generate");
    if (!g)
        return;
    send_chunk(p, g->id, "a", 1, 2);
    send_result(p, g->id, "a", "length");
    struct req *k = peer_read(p, "cancel");
    if (k)
        send_error(p, k->id, 3, "NOT_FOUND", "no unfinished generate 1");
}

Test(client, cancel_after_the_generate_ended_still_returns_its_result)
{
    struct peer p = {0};
    peer_start(&p, script_cancel_too_late);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "x";
    struct collect k = {.stop_after = 1};
    struct spc_gen_result *r = NULL;
    cr_assert_eq(spc_generate(c, &gp, collect_chunk, &k, &r), SPC_OK);
    cr_assert_eq(r->finish, SPC_FINISH_LENGTH);
    spc_free(r);
    cr_assert_eq(spc_last_error(c)->code, SPC_CODE_NOT_FOUND);
    spc_close(c);
    peer_finish(&p);
}

/* ---- errors ---- */

static void script_errors(struct peer *p)
{
    struct req *q = peer_read(p, "tokenize");
    if (q)
        send_error(p, q->id, -32602, "INVALID_PARAMS", "text: expected a string");
    q = peer_read(p, "generate");
    if (q)
        send_error(p, q->id, 1, "PROMPT_TOO_LONG", "prompt: 300 tokens, n_ctx 256");
    q = peer_read(p, "health");
    if (q)
        peer_send(p, "AiunMsssisisd", 4, 1, q->id, 4, "status", "ok", "active", 2, "queued", 0, "uptime_s", 1.5);
}

Test(client, error_response_gives_code_name_message_and_the_connection_goes_on)
{
    struct peer p = {0};
    peer_start(&p, script_errors);
    struct spc_client *c = connect_to(&p, 0);
    cr_assert_eq(spc_last_error(c)->code, 0);
    int32_t *t = NULL;
    size_t n;
    cr_assert_eq(spc_tokenize(c, "x", -1, &t, &n), SPC_E_DAEMON);
    cr_assert_null(t);
    const struct spc_error *e = spc_last_error(c);
    cr_assert_eq(e->code, SPC_CODE_INVALID_PARAMS);
    cr_assert_str_eq(e->name, "INVALID_PARAMS");
    cr_assert_str_eq(e->message, "text: expected a string");
    /* A generate's error ends it: another may start. */
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "x";
    struct spc_gen_result *r = NULL;
    cr_assert_eq(spc_generate(c, &gp, collect_chunk, &(struct collect){0}, &r), SPC_E_DAEMON);
    cr_assert_null(r);
    cr_assert_eq(spc_last_error(c)->code, SPC_CODE_PROMPT_TOO_LONG);
    const struct spc_chunk *ch;
    cr_assert_eq(spc_generate_next(c, &ch, &r), SPC_E_INVALID_ARG);
    struct spc_health h;
    cr_assert_eq(spc_health(c, &h), SPC_OK);
    cr_assert(!h.draining);
    cr_assert_eq(h.active, 2);
    cr_assert_float_eq(h.uptime_s, 1.5, 1e-12);
    spc_close(c);
    peer_finish(&p);
}

static void script_error_notification(struct peer *p)
{
    if (!peer_read(p, "health"))
        return;
    peer_send(p, "AisAMsissss", 3, 2, "error", 1, 3, "code", 4, "name", "FRAME_TOO_LARGE", "message",
              "message over 1048576 bytes");
    shutdown(p->fd, SHUT_RDWR);
}

Test(client, error_notification_before_the_daemon_closes_is_reported_and_closes)
{
    struct peer p = {0};
    peer_start(&p, script_error_notification);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_health h;
    cr_assert_eq(spc_health(c, &h), SPC_E_DAEMON);
    cr_assert_eq(spc_last_error(c)->code, SPC_CODE_FRAME_TOO_LARGE);
    cr_assert_str_eq(spc_last_error(c)->message, "message over 1048576 bytes");
    cr_assert_eq(spc_health(c, &h), SPC_E_CLOSED);
    spc_close(c);
    peer_finish(&p);
}

static void script_error_without_msgid(struct peer *p)
{
    if (!peer_read(p, "health"))
        return;
    peer_send(p, "AinMsissssn", 4, 1, 3, "code", -32600, "name", "INVALID_REQUEST", "message", "msgid: not a uint32");
}

Test(client, error_response_without_msgid_is_reported_and_closes)
{
    struct peer p = {0};
    peer_start(&p, script_error_without_msgid);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_health h;
    cr_assert_eq(spc_health(c, &h), SPC_E_DAEMON);
    cr_assert_eq(spc_last_error(c)->code, SPC_CODE_INVALID_REQUEST);
    cr_assert_str_eq(spc_last_error(c)->name, "INVALID_REQUEST");
    cr_assert_eq(spc_health(c, &h), SPC_E_CLOSED, "which request it answered is unknown: the connection is closed");
    spc_close(c);
    peer_finish(&p);
}

static void script_close_mid_stream(struct peer *p)
{
    struct req *q = peer_read(p, "generate");
    if (!q)
        return;
    send_chunk(p, q->id, "a", 1, 2);
    /* Half of the next chunk, then the daemon goes away. */
    const uint8_t partial[] = {0x93, 0x02, 0xa5, 'c', 'h'};
    peer_send_bytes(p, partial, sizeof partial);
    shutdown(p->fd, SHUT_RDWR);
}

Test(client, daemon_closing_mid_stream_is_an_io_error_then_the_connection_is_closed)
{
    struct peer p = {0};
    peer_start(&p, script_close_mid_stream);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "x";
    struct collect k = {0};
    struct spc_gen_result *r = NULL;
    cr_assert_eq(spc_generate(c, &gp, collect_chunk, &k, &r), SPC_E_IO);
    cr_assert_eq(k.n_chunks, 1);
    cr_assert_null(r);
    int32_t *t;
    size_t n;
    cr_assert_eq(spc_tokenize(c, "x", -1, &t, &n), SPC_E_CLOSED);
    cr_assert_eq(spc_generate(c, &gp, NULL, NULL, &r), SPC_E_CLOSED);
    spc_close(c);
    peer_finish(&p);
}

/* Each hostile answer to a health request, and the error it must give. */
static const struct {
    const char *what;
    const char *hex; /* "%u" is the request's msgid (< 128) */
    int err;
} hostile[] = {
    {"the never-used byte 0xc1", "c1", SPC_E_PROTOCOL},
    {"a message that is not an array", "81a16101", SPC_E_PROTOCOL},
    {"a request from the daemon", "9400%02xa1789190", SPC_E_PROTOCOL},
    {"a response to a msgid never sent", "940163c0c3", SPC_E_PROTOCOL},
    {"a response with both error and result nil", "9401%02xc0c0", SPC_E_PROTOCOL},
    {"a response with both error and result set", "9401%02xc3c3", SPC_E_PROTOCOL},
    {"a msgid over 32 bits", "9401cf0000000100000000c0c3", SPC_E_PROTOCOL},
    {"a health result without uptime_s", "9401%02xc083a6737461747573a26f6ba661637469766500a6717565756564"
                                          "00",
     SPC_E_PROTOCOL},
    {"a health status neither ok nor draining",
     "9401%02xc084a6737461747573a3626164a661637469766500a671756575656400a8757074696d655f7300", SPC_E_PROTOCOL},
    {"a 4 GiB string header", "db fffffff0", SPC_E_FRAME_TOO_LARGE},
    {"an array header of 2^32-1 elements", "dd ffffffff", SPC_E_FRAME_TOO_LARGE},
    {"a map header of 2^32-1 pairs", "df ffffffff", SPC_E_FRAME_TOO_LARGE},
    {"a 2 MiB bin header inside a response", "9401%02xc0c6 00200000", SPC_E_FRAME_TOO_LARGE},
    {"an ext header of 2 GiB", "c9 80000000 01", SPC_E_FRAME_TOO_LARGE},
};

static int hostile_case;

static void script_hostile(struct peer *p)
{
    struct req *q = peer_read(p, "health");
    if (!q)
        return;
    char hex[256], clean[256];
    snprintf(hex, sizeof hex, hostile[hostile_case].hex, (unsigned)q->id);
    size_t n = 0;
    for (const char *h = hex; *h; h++)
        if (*h != ' ')
            clean[n++] = *h;
    uint8_t bytes[128];
    size_t len = 0;
    for (size_t i = 0; i + 1 < n; i += 2) {
        unsigned v;
        sscanf(clean + i, "%2x", &v);
        bytes[len++] = (uint8_t)v;
    }
    peer_send_bytes(p, bytes, len);
    /* Keep the connection open and silent: waiting for the declared bytes would hang (until the
     * 10 s timeout, which the test would report as the wrong error). */
    char c;
    recv(p->fd, &c, 1, 0);
}

Test(client, hostile_or_malformed_answers_give_their_named_error_and_close)
{
    for (hostile_case = 0; hostile_case < (int)(sizeof hostile / sizeof hostile[0]); hostile_case++) {
        struct peer p = {0};
        peer_start(&p, script_hostile);
        struct spc_client *c = connect_to(&p, 1 << 20);
        struct spc_health h;
        const int err = spc_health(c, &h);
        cr_expect_eq(err, hostile[hostile_case].err, "%s: got %s", hostile[hostile_case].what, spc_strerror(err));
        cr_expect_eq(spc_health(c, &h), SPC_E_CLOSED, "%s: the connection is closed after it",
                     hostile[hostile_case].what);
        spc_close(c);
        peer_finish(&p);
    }
}

static size_t frame_case;

/* Answers tokenize with a message of exactly frame_case bytes: [1, id, nil, {"tokens": [], "pad": "…"}]. */
static void script_sized(struct peer *p)
{
    struct req *q = peer_read(p, "tokenize");
    if (!q)
        return;
    /* 4 (array, 1, id, nil) + 1 (map) + 7 ("tokens") + 1 ([]) + 4 ("pad") + str8 header 2 = 19 bytes. */
    const size_t pad = frame_case - 19;
    char *s = malloc(pad + 1);
    memset(s, 'x', pad);
    s[pad] = '\0';
    cr_assert(pad >= 32 && pad < 256);
    peer_send(p, "AiunMsAss", 4, 1, q->id, 2, "tokens", 0, "pad", s);
    free(s);
}

Test(client, max_frame_accepts_a_message_of_exactly_its_size_and_refuses_one_byte_more)
{
    for (frame_case = 100; frame_case <= 101; frame_case++) {
        struct peer p = {0};
        peer_start(&p, script_sized);
        struct spc_client *c = connect_to(&p, 100);
        int32_t *t;
        size_t n;
        cr_assert_eq(spc_tokenize(c, "x", -1, &t, &n), frame_case == 100 ? SPC_OK : SPC_E_FRAME_TOO_LARGE,
                     "a %zu-byte answer with max_frame 100", frame_case);
        if (frame_case == 100) {
            cr_assert_eq(n, 0);
            spc_free(t);
        }
        spc_close(c);
        peer_finish(&p);
    }
}

static void script_flood(struct peer *p)
{
    struct req *g = peer_read(p, "generate");
    struct req *t = peer_read(p, "tokenize");
    if (!g || !t)
        return;
    /* Chunks that nobody reads while the tokenize waits: more than max_frame of them in all. */
    for (int i = 0; i < 64 && !p->fail[0]; i++)
        send_chunk(p, g->id, "0123456789abcdefghij", 1, 2);
    peer_send(p, "AiunMsAi", 4, 1, t->id, 1, "tokens", 1, 9);
}

Test(client, messages_held_back_for_a_generate_are_bounded_by_max_frame)
{
    struct peer p = {.may_close = true};
    peer_start(&p, script_flood);
    struct spc_client *c = connect_to(&p, 1024);
    struct spc_gen_params gp = spc_gen_params_default();
    gp.prompt = "x";
    uint32_t id;
    cr_assert_eq(spc_generate_start(c, &gp, true, &id), SPC_OK);
    int32_t *t;
    size_t n;
    cr_assert_eq(spc_tokenize(c, "x", -1, &t, &n), SPC_E_FRAME_TOO_LARGE);
    spc_close(c);
    peer_finish(&p);
}

static void script_silent(struct peer *p)
{
    if (!peer_read(p, "health"))
        return;
    char c;
    recv(p->fd, &c, 1, 0); /* until the client hangs up */
}

Test(client, silent_daemon_gives_a_timeout)
{
    struct peer p = {0};
    peer_start(&p, script_silent);
    struct spc_client *c = NULL;
    cr_assert_eq(spc_connect(&(struct spc_options){.socket_path = p.path, .timeout_ms = 50}, &c), SPC_OK);
    struct spc_health h;
    cr_assert_eq(spc_health(c, &h), SPC_E_TIMEOUT);
    cr_assert_eq(spc_health(c, &h), SPC_E_CLOSED);
    spc_close(c);
    peer_finish(&p);
}

/* ---- results of info, stats, detokenize ---- */

static void script_results(struct peer *p)
{
    struct req *q = peer_read(p, "info");
    if (q)
        peer_send(p, "AiunM" "ss" "si" "ss" "sMsssssisisisi" "sn" "sMsisisisisisisisisi", 4, 1, q->id, 6,
                  "version", "0.4.0", "protocol", 1, "backend", "cpu",
                  "target", 6, "path", "/m/t.gguf", "arch", "llama", "n_vocab", 300, "n_ctx_train", 256, "n_layer", 2,
                  "n_embd", 64, "draft",
                  "limits", 9, "n_ctx", 256, "max_seqs", 16, "max_clients", 64, "max_queue", 128,
                  "max_pending_per_client", 8, "max_frame", 1048576, "draft_max", 8, "max_stop", 8, "max_stop_len",
                  128);
    q = peer_read(p, "stats");
    if (q) {
        static const char *const counters[] = {"requests_total", "requests_failed", "requests_cancelled",
                                               "tokens_generated", "tokens_drafted", "tokens_accepted",
                                               "target_passes", "connections_total", "connections_rejected",
                                               "clients_connected", "active", "queued", "prompt_tokens",
                                               "prompt_tokens_cached"};
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 4);
        msgpack_pack_int(&pk, 1);
        msgpack_pack_unsigned_int(&pk, q->id);
        msgpack_pack_nil(&pk);
        msgpack_pack_map(&pk, 14 + 1 + 3 + 1);
        for (int i = 0; i < 14; i++) {
            msgpack_pack_str_with_body(&pk, counters[i], strlen(counters[i]));
            msgpack_pack_int(&pk, 10 + i);
        }
        msgpack_pack_str_with_body(&pk, "uptime_s", 8);
        msgpack_pack_int(&pk, 3); /* an integer where a float is expected */
        msgpack_pack_str_with_body(&pk, "version_2_field", 15); /* a key this client does not know: skipped */
        msgpack_pack_nil(&pk);
        static const char *const hists[] = {"queue_seconds", "first_token_seconds", "request_seconds"};
        for (int h = 0; h < 3; h++) {
            msgpack_pack_str_with_body(&pk, hists[h], strlen(hists[h]));
            msgpack_pack_map(&pk, 3);
            msgpack_pack_str_with_body(&pk, "buckets", 7);
            msgpack_pack_array(&pk, 3);
            for (int b = 0; b < 3; b++) {
                msgpack_pack_array(&pk, 2);
                if (b == 2 && h == 0)
                    msgpack_pack_str_with_body(&pk, "+Inf", 4);
                else if (b == 2)
                    msgpack_pack_double(&pk, INFINITY);
                else
                    msgpack_pack_double(&pk, 0.01 * (b + 1));
                msgpack_pack_int(&pk, b + h);
            }
            msgpack_pack_str_with_body(&pk, "sum", 3);
            msgpack_pack_double(&pk, 0.5 + h);
            msgpack_pack_str_with_body(&pk, "count", 5);
            msgpack_pack_int(&pk, 2 + h);
        }
        peer_send_bytes(p, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    q = peer_read(p, "stats");
    if (q)
        peer_send(p, "AiunMss", 4, 1, q->id, 1, "text", "specd_requests_total 10\n");
    q = peer_read(p, "detokenize");
    if (q) {
        /* A text holding a NUL byte: its length comes back too. */
        const uint8_t msg[] = {0x94, 0x01, (uint8_t)q->id, 0xc0, 0x81, 0xa4, 't', 'e', 'x', 't', 0xa3, 'a', 0, 'b'};
        peer_send_bytes(p, msg, sizeof msg);
    }
}

Test(client, info_stats_and_detokenize_results_are_decoded)
{
    struct peer p = {0};
    peer_start(&p, script_results);
    struct spc_client *c = connect_to(&p, 0);
    struct spc_info *in;
    cr_assert_eq(spc_info(c, &in), SPC_OK);
    cr_assert_str_eq(in->version, "0.4.0");
    cr_assert_eq(in->protocol, 1);
    cr_assert_str_eq(in->backend, "cpu");
    cr_assert_str_eq(in->target.path, "/m/t.gguf");
    cr_assert_str_eq(in->target.arch, "llama");
    cr_assert_eq(in->target.n_vocab, 300);
    cr_assert_eq(in->target.n_embd, 64);
    cr_assert(!in->has_draft, "draft nil: prompt-lookup drafting");
    cr_assert_eq(in->limits.max_pending_per_client, 8);
    cr_assert_eq(in->limits.max_stop_len, 128);
    spc_free(in);

    struct spc_stats *s;
    cr_assert_eq(spc_stats(c, &s), SPC_OK);
    cr_assert_eq(s->requests_total, 10);
    cr_assert_eq(s->connections_total, 17);
    cr_assert_eq(s->connections_rejected, 18);
    cr_assert_eq(s->queued, 21);
    cr_assert_eq(s->prompt_tokens, 22);
    cr_assert_eq(s->prompt_tokens_cached, 23);
    cr_assert_float_eq(s->uptime_s, 3.0, 1e-12);
    cr_assert_eq(s->queue_seconds.n_buckets, 3);
    cr_assert(isinf(s->queue_seconds.buckets[2].le), "\"+Inf\" as a string");
    cr_assert(isinf(s->request_seconds.buckets[2].le), "+Inf as a float");
    cr_assert_float_eq(s->first_token_seconds.buckets[1].le, 0.02, 1e-12);
    cr_assert_eq(s->request_seconds.buckets[2].count, 4);
    cr_assert_float_eq(s->request_seconds.sum, 2.5, 1e-12);
    cr_assert_eq(s->request_seconds.count, 4);
    spc_free(s);

    char *text;
    cr_assert_eq(spc_stats_prometheus(c, &text), SPC_OK);
    cr_assert_str_eq(text, "specd_requests_total 10\n");
    spc_free(text);

    size_t len;
    const int32_t ids[] = {1, 2};
    cr_assert_eq(spc_detokenize(c, ids, 2, &text, &len), SPC_OK);
    cr_assert_eq(len, 3);
    cr_assert_arr_eq(text, "a\0b", 4);
    spc_free(text);
    spc_close(c);
    peer_finish(&p);
    assert_request_bytes(p.req[1], "stats", "90");
    assert_request_bytes(p.req[2], "stats", "9181a6666f726d6174aa70726f6d657468657573"); /* {"format": "prometheus"} */
    assert_request_bytes(p.req[3], "detokenize", "9181a6746f6b656e73920102");
}

/* ---- connecting ---- */

Test(client, connect_to_a_missing_socket_is_a_connect_error)
{
    struct spc_client *c = NULL;
    errno = 0;
    cr_assert_eq(spc_connect(&(struct spc_options){.socket_path = "/nonexistent/specd.sock"}, &c), SPC_E_CONNECT);
    cr_assert_eq(errno, ENOENT, "errno says why");
    cr_assert_null(c);
    char longpath[200];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    cr_assert_eq(spc_connect(&(struct spc_options){.socket_path = longpath}, &c), SPC_E_INVALID_ARG);
    cr_assert_null(c);
}

Test(client, default_socket_is_xdg_runtime_dir_else_tmp_with_the_uid)
{
    char buf[128], want[64];
    setenv("XDG_RUNTIME_DIR", "/run/user/7", 1);
    cr_assert_eq(spc_default_socket_path(buf, sizeof buf), SPC_OK);
    cr_assert_str_eq(buf, "/run/user/7/specd.sock");
    cr_assert_eq(spc_default_socket_path(buf, 10), SPC_E_INVALID_ARG);
    snprintf(want, sizeof want, "/tmp/specd-%u.sock", (unsigned)getuid());
    setenv("XDG_RUNTIME_DIR", "", 1);
    cr_assert_eq(spc_default_socket_path(buf, sizeof buf), SPC_OK);
    cr_assert_str_eq(buf, want);
    unsetenv("XDG_RUNTIME_DIR");
    cr_assert_eq(spc_default_socket_path(buf, sizeof buf), SPC_OK);
    cr_assert_str_eq(buf, want);
}

static void script_health(struct peer *p)
{
    struct req *q = peer_read(p, "health");
    if (q)
        peer_send(p, "AiunMsssisisd", 4, 1, q->id, 4, "status", "ok", "active", 0, "queued", 3, "uptime_s", 2.0);
}

Test(client, connect_without_options_finds_the_daemon_at_the_default_socket)
{
    struct peer p = {0};
    peer_start(&p, script_health);
    setenv("XDG_RUNTIME_DIR", p.dir, 1);
    struct spc_client *c = NULL;
    cr_assert_eq(spc_connect(NULL, &c), SPC_OK);
    struct spc_health h;
    cr_assert_eq(spc_health(c, &h), SPC_OK);
    cr_assert_eq(h.queued, 3);
    spc_close(c);
    peer_finish(&p);
}

/* ---- the frame scanner against msgpack-c ---- */

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A random object using every MessagePack type and length width. */
static void pack_random(msgpack_packer *pk, int depth)
{
    static char bytes[70000];
    const int kind = (int)(rnd() % (depth < 3 ? 12 : 9));
    const size_t lens[] = {0, 5, 31, 32, 255, 256, 65535, 65536};
    const size_t len = lens[rnd() % (depth == 0 ? 8 : 5)];
    switch (kind) {
    case 0: msgpack_pack_int64(pk, (int64_t)rnd() >> (rnd() % 64)); break;
    case 1: msgpack_pack_uint64(pk, rnd() >> (rnd() % 64)); break;
    case 2: rnd() & 1 ? msgpack_pack_double(pk, 0.5) : msgpack_pack_float(pk, 0.25f); break;
    case 3: rnd() % 3 ? msgpack_pack_nil(pk) : msgpack_pack_true(pk); break;
    case 4: msgpack_pack_str_with_body(pk, bytes, len); break;
    case 5: msgpack_pack_bin_with_body(pk, bytes, len); break;
    case 6: msgpack_pack_ext_with_body(pk, bytes, rnd() % 2 ? (size_t)1 << (rnd() % 5) : len, 7); break;
    case 7: msgpack_pack_false(pk); break;
    case 8: msgpack_pack_int8(pk, -3); break;
    case 9:
    case 10: {
        const size_t n = rnd() % 2 ? rnd() % 20 : 16 + rnd() % 3;
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++)
            pack_random(pk, depth + 1);
        break;
    }
    default: {
        const size_t n = rnd() % 2 ? rnd() % 5 : 16;
        msgpack_pack_map(pk, n);
        for (size_t i = 0; i < 2 * n; i++)
            pack_random(pk, depth + 1);
    }
    }
}

Test(client, frame_scanner_finds_the_end_msgpack_c_finds_whatever_the_split)
{
    for (int round = 0; round < 300; round++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pack_random(&pk, 0);
        const size_t len = sb.size;
        msgpack_pack_int(&pk, 1); /* the start of the next message must not count */
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        cr_assert_eq(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
        cr_assert_eq(off, len);
        msgpack_unpacked_destroy(&up);

        /* Bytes arrive in random pieces; the scan resumes where it stopped. */
        struct spc_scan s;
        spc_scan_reset(&s);
        size_t have = 0, frame = 0;
        int r = 0;
        while (r == 0) {
            cr_assert_lt(have, sb.size, "round %d: not done when all bytes are there", round);
            have += 1 + rnd() % (rnd() % 4 ? 8 : 70000);
            if (have > sb.size)
                have = sb.size;
            r = spc_frame_scan(&s, (const uint8_t *)sb.data, have, len, &frame);
        }
        cr_assert_eq(r, 1, "round %d", round);
        cr_assert_eq(frame, len, "round %d: the message is %zu bytes, scanned %zu", round, len, frame);
        cr_assert_geq(have, len);

        /* One byte less of max_frame is refused, never reported complete. */
        spc_scan_reset(&s);
        cr_assert_eq(spc_frame_scan(&s, (const uint8_t *)sb.data, sb.size, len - 1, &frame), SPC_E_FRAME_TOO_LARGE,
                     "round %d", round);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(client, frame_scanner_refuses_declared_sizes_before_their_bytes_arrive)
{
    struct spc_scan s;
    size_t frame;
    const uint8_t arr32[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    spc_scan_reset(&s);
    cr_assert_eq(spc_frame_scan(&s, arr32, 3, 1 << 20, &frame), 0, "header incomplete: wait");
    cr_assert_eq(spc_frame_scan(&s, arr32, 5, 1 << 20, &frame), SPC_E_FRAME_TOO_LARGE);
    /* An array of 2^20 - 6 nils fits a 1 MiB frame exactly: its header alone is not refused. */
    const uint8_t fits[] = {0xdd, 0x00, 0x0f, 0xff, 0xfb};
    spc_scan_reset(&s);
    cr_assert_eq(spc_frame_scan(&s, fits, 5, 1 << 20, &frame), 0);
    const uint8_t str32[] = {0xdb, 0x00, 0x10, 0x00, 0x00};
    spc_scan_reset(&s);
    cr_assert_eq(spc_frame_scan(&s, str32, 5, 1 << 20, &frame), SPC_E_FRAME_TOO_LARGE);
    const uint8_t never[] = {0x92, 0x01, 0xc1};
    spc_scan_reset(&s);
    cr_assert_eq(spc_frame_scan(&s, never, 3, 64, &frame), SPC_E_PROTOCOL);
}

/* ---- specctl ---- */

static struct cli_run specctl(const char *a0, const char *a1, const char *a2, const char *a3, const char *a4)
{
    char bin[PATH_MAX];
    cli_bin("specctl", bin, sizeof bin);
    char *argv[] = {bin, (char *)a0, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    return cli_run(argv);
}

Test(client, specctl_help_exits_0_and_documents_the_exit_codes)
{
    struct cli_run r = specctl("--help", NULL, NULL, NULL, NULL);
    cr_assert_eq(r.status, 0);
    cr_assert(strstr(r.out, "usage: specctl"), "%s", r.out);
    cr_assert(strstr(r.out, "exit status:") && strstr(r.out, "3  cannot connect"), "%s", r.out);
    cli_run_free(&r);
}

Test(client, specctl_usage_errors_exit_2)
{
    const char *cases[][5] = {
        {NULL},                                     /* no command */
        {"frobnicate", NULL},                       /* unknown command */
        {"generate", NULL},                         /* no prompt */
        {"generate", "a", "b", NULL},               /* two prompts */
        {"generate", "a", "--max-tokens", "ten", NULL},
        {"generate", "a", "--temperature", NULL},   /* missing value */
        {"generate", "a", "--seed", "-1", NULL},
        {"info", "--stream", NULL},                 /* a generate option */
        {"stats", "--special", NULL},
        {"detokenize", NULL},
        {"detokenize", "12", "x", NULL},
        {"health", "--bogus", NULL},
        {"info", "--chat", NULL},                   /* a generate option */
        {"generate", "a", "--system", NULL},        /* missing value */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct cli_run r = specctl(cases[i][0], cases[i][1], cases[i][2], cases[i][3], cases[i][4]);
        cr_expect_eq(r.status, 2, "case %zu (%s %s): exit %d, stderr: %s", i, cases[i][0] ? cases[i][0] : "",
                     cases[i][1] ? cases[i][1] : "", r.status, r.err);
        cr_expect(r.err[0], "case %zu says why on stderr", i);
        cli_run_free(&r);
    }
}

Test(client, specctl_without_a_daemon_exits_3)
{
    struct cli_run r = specctl("--socket", "/nonexistent/specd.sock", "health", NULL, NULL);
    cr_assert_eq(r.status, 3, "stderr: %s", r.err);
    cr_assert(strstr(r.err, "/nonexistent/specd.sock"), "%s", r.err);
    cli_run_free(&r);
}

static void script_specctl_generate(struct peer *p)
{
    struct req *q = peer_read(p, "generate");
    if (!q)
        return;
    send_chunk(p, q->id, "he", 1, 2);
    send_chunk(p, q->id, "llo", 3, 4);
    send_result(p, q->id, "hello", "length");
}

Test(client, specctl_generate_sends_its_options_and_streams_the_text)
{
    struct peer p = {0};
    peer_start(&p, script_specctl_generate);
    char bin[PATH_MAX];
    cli_bin("specctl", bin, sizeof bin);
    char *argv[] = {bin, "--socket", p.path, "generate", "Once", "--stream", "--max-tokens", "5", "--temperature",
                    "0", "--stop", "a", "--stop", "bc", "--no-spec", "--seed", "18446744073709551615", NULL};
    struct cli_run r = cli_run(argv);
    peer_finish(&p);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert_str_eq(r.out, "hello\n");
    cr_assert(strstr(r.err, "[length]"), "the summary names the finish reason: %s", r.err);
    const struct req *q = p.req[0];
    cr_assert_eq(q->params->via.map.size, 7);
    expect_str(param(q, "prompt"), "Once", "prompt");
    expect_bool(q, "stream", true);
    expect_int(q, "max_tokens", 5);
    expect_float(q, "temperature", 0);
    expect_bool(q, "speculative", false);
    const msgpack_object *seed = param(q, "seed");
    cr_assert(seed && seed->type == MSGPACK_OBJECT_POSITIVE_INTEGER && seed->via.u64 == UINT64_MAX);
    const msgpack_object *stop = param(q, "stop");
    cr_assert(stop && stop->type == MSGPACK_OBJECT_ARRAY && stop->via.array.size == 2);
    expect_str(&stop->via.array.ptr[1], "bc", "stop[1]");
    cli_run_free(&r);
}

/* --system (and --chat) send the prompt as chat messages instead of a prompt. */
Test(client, specctl_system_sends_chat_messages)
{
    struct peer p = {0};
    peer_start(&p, script_specctl_generate);
    char bin[PATH_MAX];
    cli_bin("specctl", bin, sizeof bin);
    char *argv[] = {bin, "--socket", p.path, "generate", "Hi there", "--system", "Be brief.", "--stream", NULL};
    struct cli_run r = cli_run(argv);
    peer_finish(&p);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    const struct req *q = p.req[0];
    cr_assert_null(param(q, "prompt"));
    const msgpack_object *m = param(q, "messages");
    cr_assert(m && m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 2);
    const char *want[2][2] = {{"system", "Be brief."}, {"user", "Hi there"}};
    for (int i = 0; i < 2; i++) {
        const msgpack_object *e = &m->via.array.ptr[i];
        cr_assert(e->type == MSGPACK_OBJECT_MAP && e->via.map.size == 2);
        for (uint32_t k = 0; k < 2; k++) {
            const msgpack_object_kv *kv = &e->via.map.ptr[k];
            const bool is_role = kv->key.via.str.size == 4 && !memcmp(kv->key.via.str.ptr, "role", 4);
            expect_str(&kv->val, want[i][is_role ? 0 : 1], "message field");
        }
    }
    cli_run_free(&r);
}

static void script_specctl_error(struct peer *p)
{
    struct req *q = peer_read(p, "tokenize");
    if (q)
        send_error(p, q->id, -32602, "INVALID_PARAMS", "text: not valid UTF-8");
}

Test(client, specctl_daemon_error_exits_1_with_code_name_and_message)
{
    struct peer p = {0};
    peer_start(&p, script_specctl_error);
    struct cli_run r = specctl("--socket", p.path, "tokenize", "x", NULL);
    peer_finish(&p);
    cr_assert_eq(r.status, 1, "stderr: %s", r.err);
    cr_assert(strstr(r.err, "-32602 INVALID_PARAMS: text: not valid UTF-8"), "%s", r.err);
    cli_run_free(&r);
}

static void script_specctl_garbage(struct peer *p)
{
    if (peer_read(p, "info"))
        peer_send_bytes(p, "\xc1", 1);
}

Test(client, specctl_broken_reply_exits_4)
{
    struct peer p = {0};
    peer_start(&p, script_specctl_garbage);
    struct cli_run r = specctl("info", "--socket", p.path, NULL, NULL);
    peer_finish(&p);
    cr_assert_eq(r.status, 4, "stderr: %s", r.err);
    cli_run_free(&r);
}

static void script_specctl_draining(struct peer *p)
{
    struct req *q = peer_read(p, "health");
    if (q)
        peer_send(p, "AiunMsssisisd", 4, 1, q->id, 4, "status", "draining", "active", 1, "queued", 0, "uptime_s", 9.0);
}

Test(client, specctl_health_of_a_draining_daemon_exits_5)
{
    struct peer p = {0};
    peer_start(&p, script_specctl_draining);
    struct cli_run r = specctl("--socket", p.path, "health", NULL, NULL);
    peer_finish(&p);
    cr_assert_eq(r.status, 5, "stderr: %s", r.err);
    cr_assert(!strncmp(r.out, "draining", 8), "%s", r.out);
    cli_run_free(&r);
}
