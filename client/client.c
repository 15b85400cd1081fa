/* libspecd-client: the connection, its framing and the routing of the daemon's messages.
 * Method calls and their results are in methods.c. */
#include "client/client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* Bytes asked of one recv(); the read buffer never exceeds max_frame plus this. */
#define READ_CHUNK (64u << 10)

const char *spc_strerror(int err)
{
    switch (err) {
    case SPC_OK: return "success";
    case SPC_E_DAEMON: return "the daemon answered with an error";
    case SPC_E_CONNECT: return "cannot connect to the daemon's socket";
    case SPC_E_IO: return "connection to the daemon failed or was closed";
    case SPC_E_TIMEOUT: return "the daemon did not answer in time";
    case SPC_E_PROTOCOL: return "the daemon sent a message that breaks the protocol";
    case SPC_E_FRAME_TOO_LARGE: return "the daemon sent a message larger than max_frame";
    case SPC_E_NOMEM: return "out of memory";
    case SPC_E_INVALID_ARG: return "invalid argument";
    case SPC_E_CLOSED: return "the connection was closed by an earlier error";
    default: return "unknown error";
    }
}

void spc_free(void *result)
{
    free(result);
}

int spc_default_socket_path(char *buf, size_t cap)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    const int n = xdg && xdg[0] ? snprintf(buf, cap, "%s/specd.sock", xdg)
                                : snprintf(buf, cap, "/tmp/specd-%u.sock", (unsigned)getuid());
    return n >= 0 && (size_t)n < cap ? SPC_OK : SPC_E_INVALID_ARG;
}

int spc_connect(const struct spc_options *options, struct spc_client **out)
{
    const struct spc_options none = {0}, *opt = options ? options : &none;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (opt->socket_path) {
        if (strlen(opt->socket_path) >= sizeof sa.sun_path)
            return SPC_E_INVALID_ARG;
        strcpy(sa.sun_path, opt->socket_path);
    } else if (spc_default_socket_path(sa.sun_path, sizeof sa.sun_path)) {
        return SPC_E_INVALID_ARG;
    }
    if (opt->timeout_ms < 0)
        return SPC_E_INVALID_ARG;
    struct spc_client *c = calloc(1, sizeof *c);
    if (!c)
        return SPC_E_NOMEM;
    c->max_frame = opt->max_frame ? opt->max_frame : SPC_DEFAULT_MAX_FRAME;
    spc_scan_reset(&c->scan);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (const struct sockaddr *)&sa, sizeof sa) != 0) {
        const int saved = errno;
        if (c->fd >= 0)
            close(c->fd);
        free(c);
        errno = saved;
        return SPC_E_CONNECT;
    }
    if (opt->timeout_ms) {
        /* Blocking calls give up with EAGAIN after this long without progress. */
        const struct timeval tv = {.tv_sec = opt->timeout_ms / 1000, .tv_usec = opt->timeout_ms % 1000 * 1000};
        if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
            setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv)) {
            spc_close(c);
            return SPC_E_IO;
        }
    }
    *out = c;
    return SPC_OK;
}

static void drop_held(struct spc_client *c)
{
    while (c->held_head) {
        struct spc_held *h = c->held_head;
        c->held_head = h->next;
        free(h);
    }
    c->held_tail = NULL;
    c->held_bytes = 0;
}

void spc_close(struct spc_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    drop_held(c);
    free(c->buf);
    free(c->chunk_text);
    free(c->chunk_tokens);
    free(c);
}

const struct spc_error *spc_last_error(const struct spc_client *c)
{
    return &c->err;
}

/* Closes the connection for good after an error that leaves the byte stream in an unknown place. */
static int close_with(struct spc_client *c, int err)
{
    if (!c->closed) {
        c->closed = err;
        close(c->fd);
        c->fd = -1;
        drop_held(c);
        c->gen_active = false;
    }
    return err;
}

int spc_fail(struct spc_client *c, int err)
{
    return err == SPC_E_DAEMON || err == SPC_E_INVALID_ARG ? err : close_with(c, err);
}

uint32_t spc_next_id(struct spc_client *c)
{
    do
        c->last_id++;
    while (c->gen_active && c->last_id == c->gen_id);
    return c->last_id;
}

int spc_send(struct spc_client *c, const char *data, size_t len)
{
    if (c->closed)
        return SPC_E_CLOSED;
    while (len) {
        const ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return spc_fail(c, errno == EAGAIN || errno == EWOULDBLOCK ? SPC_E_TIMEOUT : SPC_E_IO);
        data += n;
        len -= (size_t)n;
    }
    return SPC_OK;
}

/* Reads until buf[off..off + *frame_len) holds one whole message. */
static int read_frame(struct spc_client *c, size_t *frame_len)
{
    for (;;) {
        const int r = spc_frame_scan(&c->scan, c->buf + c->off, c->len - c->off, c->max_frame, frame_len);
        if (r == 1)
            return SPC_OK;
        if (r < 0)
            return r;
        /* The message is incomplete, so every buffered byte is part of it: fewer than max_frame. */
        if (c->off) {
            memmove(c->buf, c->buf + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->len == 0 && c->cap > 4 * READ_CHUNK) {
            /* Give back what one large message took. */
            free(c->buf);
            c->buf = NULL;
            c->cap = 0;
        }
        if (c->cap - c->len < READ_CHUNK) {
            uint8_t *nb = realloc(c->buf, c->len + READ_CHUNK);
            if (!nb)
                return SPC_E_NOMEM;
            c->buf = nb;
            c->cap = c->len + READ_CHUNK;
        }
        const ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n > 0)
            c->len += (size_t)n;
        else if (n == 0)
            return SPC_E_IO;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            return SPC_E_TIMEOUT;
        else if (errno != EINTR)
            return SPC_E_IO;
    }
}

void spc_msg_release(struct spc_client *c, struct spc_msg *m)
{
    msgpack_unpacked_destroy(&m->up);
    if (m->held) {
        free(m->held);
    } else if (m->bytes) {
        c->off += m->len;
        spc_scan_reset(&c->scan);
    }
    *m = (struct spc_msg){0};
}

static bool as_u32(const msgpack_object *o, uint32_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX)
        return false;
    *v = (uint32_t)o->via.u64;
    return true;
}

const msgpack_object *spc_get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    const size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen && !memcmp(k->via.str.ptr, key, klen))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* The single map of a notification's params array, or NULL. */
static const msgpack_object *params_map(const msgpack_object *params)
{
    if (params->type != MSGPACK_OBJECT_ARRAY || params->via.array.size != 1 ||
        params->via.array.ptr[0].type != MSGPACK_OBJECT_MAP)
        return NULL;
    return &params->via.array.ptr[0];
}

static bool str_is(const msgpack_object *o, const char *s)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) && !memcmp(o->via.str.ptr, s, o->via.str.size);
}

/* Decodes m->bytes and checks the envelope: a response [1, msgid, error, result] with exactly one of
 * error and result nil, or a notification [2, method, params]. A response [1, nil, error, nil] (the
 * daemon could not read a msgid) answers nothing known, so it is taken as a connection error. */
static int decode(struct spc_msg *m)
{
    size_t off = 0;
    const msgpack_unpack_return r = msgpack_unpack_next(&m->up, (const char *)m->bytes, m->len, &off);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR)
        return SPC_E_NOMEM;
    if (r != MSGPACK_UNPACK_SUCCESS || off != m->len)
        return SPC_E_PROTOCOL;
    const msgpack_object *root = &m->up.data;
    if (root->type != MSGPACK_OBJECT_ARRAY || root->via.array.size < 3)
        return SPC_E_PROTOCOL;
    const msgpack_object *a = root->via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return SPC_E_PROTOCOL;
    if (a[0].via.u64 == 1 && root->via.array.size == 4 && as_u32(&a[1], &m->id)) {
        const bool err_nil = a[2].type == MSGPACK_OBJECT_NIL, res_nil = a[3].type == MSGPACK_OBJECT_NIL;
        if (err_nil == res_nil)
            return SPC_E_PROTOCOL;
        m->kind = SPC_MSG_RESPONSE;
        m->error = err_nil ? NULL : &a[2];
        m->result = &a[3];
        return SPC_OK;
    }
    if (a[0].via.u64 == 1 && root->via.array.size == 4 && a[1].type == MSGPACK_OBJECT_NIL &&
        a[2].type == MSGPACK_OBJECT_MAP) {
        m->kind = SPC_MSG_ERROR;
        m->params = &a[2];
        return SPC_OK;
    }
    if (a[0].via.u64 == 2 && root->via.array.size == 3 && a[1].type == MSGPACK_OBJECT_STR &&
        a[2].type == MSGPACK_OBJECT_ARRAY) {
        m->kind = SPC_MSG_NOTIFICATION;
        m->params = params_map(&a[2]);
        if (str_is(&a[1], "chunk")) {
            const msgpack_object *id = m->params ? spc_get(m->params, "id") : NULL;
            if (!id || !as_u32(id, &m->id))
                return SPC_E_PROTOCOL;
            m->kind = SPC_MSG_CHUNK;
        } else if (str_is(&a[1], "error")) {
            m->kind = SPC_MSG_ERROR;
        }
        return SPC_OK;
    }
    return SPC_E_PROTOCOL;
}

int spc_parse_error(struct spc_client *c, const msgpack_object *e)
{
    const msgpack_object *code = spc_get(e, "code"), *name = spc_get(e, "name"), *msg = spc_get(e, "message");
    if (!code || !name || !msg || name->type != MSGPACK_OBJECT_STR || msg->type != MSGPACK_OBJECT_STR)
        return SPC_E_PROTOCOL;
    if (code->type == MSGPACK_OBJECT_POSITIVE_INTEGER && code->via.u64 <= INT64_MAX)
        c->err.code = (int64_t)code->via.u64;
    else if (code->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        c->err.code = code->via.i64;
    else
        return SPC_E_PROTOCOL;
    snprintf(c->err.name, sizeof c->err.name, "%.*s", (int)name->via.str.size, name->via.str.ptr);
    snprintf(c->err.message, sizeof c->err.message, "%.*s", (int)msg->via.str.size, msg->via.str.ptr);
    return SPC_E_DAEMON;
}

/* Keeps a message of the generate in flight for spc_generate_next; they are bounded together. */
static int hold(struct spc_client *c, struct spc_msg *m)
{
    if (c->held_bytes + m->len > c->max_frame)
        return SPC_E_FRAME_TOO_LARGE;
    struct spc_held *h = malloc(sizeof *h + m->len);
    if (!h)
        return SPC_E_NOMEM;
    h->next = NULL;
    h->len = m->len;
    memcpy(h->bytes, m->bytes, m->len);
    if (c->held_tail)
        c->held_tail->next = h;
    else
        c->held_head = h;
    c->held_tail = h;
    c->held_bytes += m->len;
    return SPC_OK;
}

/* Next message: first those held back for the generate in flight when that is what the caller waits
 * for, else from the socket. */
static int next_msg(struct spc_client *c, bool for_generate, struct spc_msg *m)
{
    msgpack_unpacked_init(&m->up);
    if (for_generate && c->held_head) {
        struct spc_held *h = c->held_head;
        c->held_head = h->next;
        if (!c->held_head)
            c->held_tail = NULL;
        c->held_bytes -= h->len;
        m->held = h;
        m->bytes = h->bytes;
        m->len = h->len;
    } else {
        const int err = read_frame(c, &m->len);
        if (err)
            return err;
        m->bytes = c->buf + c->off;
    }
    return decode(m);
}

static int await_once(struct spc_client *c, uint32_t want, struct spc_msg *m)
{
    const bool gen = c->gen_active;
    for (;;) {
        int err = next_msg(c, gen && want == c->gen_id, m);
        if (err)
            return err;
        if (m->kind == SPC_MSG_RESPONSE || m->kind == SPC_MSG_CHUNK) {
            if (m->kind == SPC_MSG_RESPONSE && m->id == want)
                return SPC_OK;
            if (!gen || m->id != c->gen_id)
                return SPC_E_PROTOCOL; /* an answer to nothing this connection asked */
            if (want == c->gen_id)
                return SPC_OK;
            err = hold(c, m);
            if (err)
                return err;
        } else if (m->kind == SPC_MSG_ERROR) {
            /* The daemon is closing this connection, or answers what it could not match, and says why. */
            return m->params ? spc_parse_error(c, m->params) : SPC_E_PROTOCOL;
        }
        spc_msg_release(c, m);
    }
}

int spc_await(struct spc_client *c, uint32_t want, struct spc_msg *m)
{
    if (c->closed)
        return SPC_E_CLOSED;
    *m = (struct spc_msg){0};
    const int err = await_once(c, want, m);
    if (err) {
        spc_msg_release(c, m);
        /* A daemon error here came from an "error" notification: the daemon is closing the connection. */
        return err == SPC_E_DAEMON ? close_with(c, err) : spc_fail(c, err);
    }
    return SPC_OK;
}
