/* Request validation: [0, msgid, method, params] and every parameter of docs/protocol.md, checked for
 * type and range before anything else sees it. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ipc/ipc.h"

static const struct {
    int code;
    const char *name;
} codes[] = {
    {IPC_PARSE_ERROR, "PARSE_ERROR"},
    {IPC_INVALID_REQUEST, "INVALID_REQUEST"},
    {IPC_METHOD_NOT_FOUND, "METHOD_NOT_FOUND"},
    {IPC_INVALID_PARAMS, "INVALID_PARAMS"},
    {IPC_PROMPT_TOO_LONG, "PROMPT_TOO_LONG"},
    {IPC_BUSY, "BUSY"},
    {IPC_NOT_FOUND, "NOT_FOUND"},
    {IPC_FRAME_TOO_LARGE, "FRAME_TOO_LARGE"},
    {IPC_SHUTTING_DOWN, "SHUTTING_DOWN"},
    {IPC_INTERNAL, "INTERNAL"},
};

const char *ipc_code_name(int code)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == code)
            return codes[i].name;
    return "INTERNAL";
}

static const char *const method_names[] = {
    [IPC_GENERATE] = "generate", [IPC_CANCEL] = "cancel", [IPC_TOKENIZE] = "tokenize",
    [IPC_DETOKENIZE] = "detokenize", [IPC_INFO] = "info", [IPC_STATS] = "stats", [IPC_HEALTH] = "health",
};
#define N_METHODS (sizeof method_names / sizeof method_names[0])

const char *ipc_method_name(enum ipc_method m)
{
    return (unsigned)m < N_METHODS ? method_names[m] : "?";
}

void ipc_error_set(struct ipc_error *e, int code, const char *fmt, ...)
{
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

/* A client string quoted into a message: printable ASCII kept, the rest as '?', cut at 40 bytes. */
static const char *quote(const msgpack_object_str *s, char buf[48])
{
    size_t n = s->size < 40 ? s->size : 40;
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s->ptr[i];
        buf[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (s->size > n) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

static bool str_eq(const msgpack_object_str *s, const char *lit)
{
    const size_t n = strlen(lit);
    return s->size == n && memcmp(s->ptr, lit, n) == 0;
}

static const char *type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_BIN: return "bin";
    case MSGPACK_OBJECT_EXT: return "ext";
    }
    return "?";
}

/* Every check below fails through here: INVALID_PARAMS naming the field. */
__attribute__((format(printf, 2, 3))) static int bad(struct ipc_error *err, const char *fmt, ...)
{
    err->code = IPC_INVALID_PARAMS;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return SPEC_E_FORMAT;
}

static int want_type(const msgpack_object *o, const char *key, const char *what, bool ok, struct ipc_error *err)
{
    return ok ? SPEC_OK : bad(err, "%s: expected %s, got %s", key, what, type_name(o));
}

static int get_bool(const msgpack_object *o, const char *key, bool *out, struct ipc_error *err)
{
    SPEC_TRY(want_type(o, key, "a bool", o->type == MSGPACK_OBJECT_BOOLEAN, err));
    *out = o->via.boolean;
    return SPEC_OK;
}

static int get_int(const msgpack_object *o, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   struct ipc_error *err)
{
    SPEC_TRY(want_type(o, key, "an integer",
                       o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER, err));
    const bool pos = o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
    const bool ok = pos ? o->via.u64 <= (uint64_t)INT64_MAX && (int64_t)o->via.u64 >= lo && (int64_t)o->via.u64 <= hi
                        : o->via.i64 >= lo && o->via.i64 <= hi;
    if (!ok) {
        char v[24];
        if (pos)
            snprintf(v, sizeof v, "%llu", (unsigned long long)o->via.u64);
        else
            snprintf(v, sizeof v, "%lld", (long long)o->via.i64);
        return bad(err, "%s: %s is out of range %lld .. %lld", key, v, (long long)lo, (long long)hi);
    }
    *out = pos ? (int64_t)o->via.u64 : o->via.i64;
    return SPEC_OK;
}

/* A float (integers accepted) within [lo, hi], an end excluded where its flag says. */
static int get_float(const msgpack_object *o, const char *key, double lo, bool lo_open, double hi, bool hi_open,
                     float *out, struct ipc_error *err)
{
    double v;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: v = o->via.f64; break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: v = (double)o->via.u64; break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: v = (double)o->via.i64; break;
    default: return bad(err, "%s: expected a number, got %s", key, type_name(o));
    }
    const bool ok = isfinite(v) && isfinite((float)v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (!ok)
        return bad(err, "%s: %g is out of range %c%g, %g%c", key, v, lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
    *out = (float)v;
    return SPEC_OK;
}

/* A NUL-terminated copy of a string (which may itself hold NULs). */
static int get_str(const msgpack_object *o, const char *key, char **out, size_t *len, struct ipc_error *err)
{
    SPEC_TRY(want_type(o, key, "a string", o->type == MSGPACK_OBJECT_STR, err));
    char *s = malloc(o->via.str.size + 1);
    if (!s)
        return SPEC_E_NOMEM;
    memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = '\0';
    *out = s;
    *len = o->via.str.size;
    return SPEC_OK;
}

static int get_tokens(const msgpack_object *o, const char *key, int n_vocab, int32_t **out, int *n,
                      struct ipc_error *err)
{
    SPEC_TRY(want_type(o, key, "an array of token ids", o->type == MSGPACK_OBJECT_ARRAY, err));
    const msgpack_object_array *a = &o->via.array;
    int32_t *ids = malloc((a->size ? a->size : 1) * sizeof *ids);
    if (!ids)
        return SPEC_E_NOMEM;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *t = &a->ptr[i];
        if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 >= (uint64_t)n_vocab) {
            free(ids);
            if (t->type == MSGPACK_OBJECT_POSITIVE_INTEGER || t->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return bad(err, "%s[%u]: token id out of range 0 .. %d", key, i, n_vocab - 1);
            return bad(err, "%s[%u]: expected a token id, got %s", key, i, type_name(t));
        }
        ids[i] = (int32_t)t->via.u64;
    }
    *out = ids;
    *n = (int)a->size;
    return SPEC_OK;
}

static int get_stop(const msgpack_object *o, struct ipc_generate *g, struct ipc_error *err)
{
    SPEC_TRY(want_type(o, "stop", "an array of strings", o->type == MSGPACK_OBJECT_ARRAY, err));
    const msgpack_object_array *a = &o->via.array;
    if (a->size > IPC_MAX_STOP)
        return bad(err, "stop: %u strings, at most %d allowed", a->size, IPC_MAX_STOP);
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *s = &a->ptr[i];
        if (s->type != MSGPACK_OBJECT_STR)
            return bad(err, "stop[%u]: expected a string, got %s", i, type_name(s));
        if (s->via.str.size < 1 || s->via.str.size > IPC_MAX_STOP_LEN)
            return bad(err, "stop[%u]: %u bytes, must be 1 .. %d", i, s->via.str.size, IPC_MAX_STOP_LEN);
        if (memchr(s->via.str.ptr, '\0', s->via.str.size))
            return bad(err, "stop[%u]: contains a NUL byte", i);
    }
    g->stop = calloc(a->size ? a->size : 1, sizeof *g->stop);
    if (!g->stop)
        return SPEC_E_NOMEM;
    for (uint32_t i = 0; i < a->size; i++) {
        size_t len;
        SPEC_TRY(get_str(&a->ptr[i], "stop", &g->stop[i], &len, err));
        g->n_stop++;
    }
    return SPEC_OK;
}

/* messages: 1..IPC_MAX_MESSAGES maps of exactly a known role and a string content. */
static int get_messages(const msgpack_object *o, struct ipc_generate *g, struct ipc_error *err)
{
    SPEC_TRY(want_type(o, "messages", "an array of {role, content} maps", o->type == MSGPACK_OBJECT_ARRAY, err));
    const msgpack_object_array *a = &o->via.array;
    if (a->size < 1 || a->size > IPC_MAX_MESSAGES)
        return bad(err, "messages: %u messages, must be 1 .. %d", a->size, IPC_MAX_MESSAGES);
    g->messages = calloc(a->size, sizeof *g->messages);
    if (!g->messages)
        return SPEC_E_NOMEM;
    static const char *const roles[] = {"system", "user", "assistant"};
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *m = &a->ptr[i];
        if (m->type != MSGPACK_OBJECT_MAP || m->via.map.size != 2)
            return bad(err, "messages[%u]: expected a map of role and content, got %s", i, type_name(m));
        const msgpack_object *role = NULL, *content = NULL;
        for (uint32_t k = 0; k < 2; k++) {
            const msgpack_object *key = &m->via.map.ptr[k].key;
            if (key->type == MSGPACK_OBJECT_STR && str_eq(&key->via.str, "role") && !role)
                role = &m->via.map.ptr[k].val;
            else if (key->type == MSGPACK_OBJECT_STR && str_eq(&key->via.str, "content") && !content)
                content = &m->via.map.ptr[k].val;
        }
        if (!role || !content)
            return bad(err, "messages[%u]: expected the keys role and content", i);
        size_t r = 0;
        while (r < 3 && !(role->type == MSGPACK_OBJECT_STR && str_eq(&role->via.str, roles[r])))
            r++;
        if (r == 3)
            return bad(err, "messages[%u].role: must be \"system\", \"user\" or \"assistant\"", i);
        if (content->type != MSGPACK_OBJECT_STR)
            return bad(err, "messages[%u].content: expected a string, got %s", i, type_name(content));
        strcpy(g->messages[i].role, roles[r]);
        SPEC_TRY(get_str(content, "content", &g->messages[i].content, &g->messages[i].content_len, err));
        g->n_messages++;
    }
    return SPEC_OK;
}

/* The params map of a method: keys checked against the method's list (unknown or repeated keys are
 * errors), each value handed to `field` by its index in that list. */
typedef int (*field_fn)(void *ctx, int key, const msgpack_object *val, struct ipc_error *err);

static int walk_params(const msgpack_object *params, const char *const *keys, int n_keys, field_fn field,
                       void *ctx, struct ipc_error *err)
{
    if (params->type != MSGPACK_OBJECT_ARRAY)
        return bad(err, "params: expected an array, got %s", type_name(params));
    if (params->via.array.size > 1)
        return bad(err, "params: expected [] or [map], got %u elements", params->via.array.size);
    if (params->via.array.size == 0)
        return SPEC_OK;
    const msgpack_object *m = &params->via.array.ptr[0];
    if (m->type != MSGPACK_OBJECT_MAP)
        return bad(err, "params[0]: expected a map, got %s", type_name(m));
    uint32_t seen = 0;
    char q[48];
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            return bad(err, "params: keys must be strings, got %s", type_name(k));
        int idx = -1;
        for (int j = 0; j < n_keys && idx < 0; j++)
            if (str_eq(&k->via.str, keys[j]))
                idx = j;
        if (idx < 0)
            return bad(err, "params: unknown key \"%s\"", quote(&k->via.str, q));
        if (seen & (1u << idx))
            return bad(err, "params: duplicate key \"%s\"", keys[idx]);
        seen |= 1u << idx;
        SPEC_TRY(field(ctx, idx, &m->via.map.ptr[i].val, err));
    }
    return SPEC_OK;
}

enum gen_key {
    G_PROMPT, G_TOKENS, G_ADD_SPECIAL, G_MAX_TOKENS, G_TEMPERATURE, G_TOP_K, G_TOP_P, G_MIN_P, G_REPEAT,
    G_FREQUENCY, G_PRESENCE, G_SEED, G_STOP, G_STREAM, G_SPECULATIVE, G_DRAFT_MAX, G_MESSAGES, G_N_KEYS
};

static const char *const gen_keys[G_N_KEYS] = {
    [G_PROMPT] = "prompt", [G_TOKENS] = "tokens", [G_ADD_SPECIAL] = "add_special", [G_MAX_TOKENS] = "max_tokens",
    [G_TEMPERATURE] = "temperature", [G_TOP_K] = "top_k", [G_TOP_P] = "top_p", [G_MIN_P] = "min_p",
    [G_REPEAT] = "repeat_penalty", [G_FREQUENCY] = "frequency_penalty", [G_PRESENCE] = "presence_penalty",
    [G_SEED] = "seed", [G_STOP] = "stop", [G_STREAM] = "stream", [G_SPECULATIVE] = "speculative",
    [G_DRAFT_MAX] = "draft_max", [G_MESSAGES] = "messages",
};

struct gen_ctx {
    struct ipc_generate *g;
    const struct ipc_limits *lim;
};

static int gen_field(void *ctx, int key, const msgpack_object *v, struct ipc_error *err)
{
    struct gen_ctx *c = ctx;
    struct ipc_generate *g = c->g;
    struct verify_params *sp = &g->sampling;
    const char *name = gen_keys[key];
    int64_t i;
    switch ((enum gen_key)key) {
    case G_PROMPT: return get_str(v, name, &g->prompt, &g->prompt_len, err);
    case G_TOKENS:
        SPEC_TRY(get_tokens(v, name, c->lim->n_vocab, &g->tokens, &g->n_tokens, err));
        return g->n_tokens > 0 ? SPEC_OK : bad(err, "tokens: empty");
    case G_ADD_SPECIAL: return get_bool(v, name, &g->add_special, err);
    case G_MAX_TOKENS:
        SPEC_TRY(get_int(v, name, 0, c->lim->n_ctx, &i, err));
        g->max_tokens = (int)i;
        return SPEC_OK;
    case G_TEMPERATURE: return get_float(v, name, 0, false, 100, false, &sp->temperature, err);
    case G_TOP_K:
        SPEC_TRY(get_int(v, name, INT32_MIN, INT32_MAX, &i, err));
        sp->top_k = (int32_t)i;
        return SPEC_OK;
    case G_TOP_P: return get_float(v, name, 0, true, 1, false, &sp->top_p, err);
    case G_MIN_P: return get_float(v, name, 0, false, 1, true, &sp->min_p, err);
    case G_REPEAT: return get_float(v, name, 0, true, HUGE_VAL, false, &sp->repeat_penalty, err);
    case G_FREQUENCY: return get_float(v, name, -2, false, 2, false, &sp->frequency_penalty, err);
    case G_PRESENCE: return get_float(v, name, -2, false, 2, false, &sp->presence_penalty, err);
    case G_SEED:
        SPEC_TRY(want_type(v, name, "an unsigned integer", v->type == MSGPACK_OBJECT_POSITIVE_INTEGER, err));
        sp->seed = v->via.u64;
        g->has_seed = true;
        return SPEC_OK;
    case G_STOP: return get_stop(v, g, err);
    case G_STREAM: return get_bool(v, name, &g->stream, err);
    case G_SPECULATIVE: return get_bool(v, name, &g->speculative, err);
    case G_DRAFT_MAX:
        SPEC_TRY(get_int(v, name, 1, c->lim->draft_max, &i, err));
        g->draft_max = (int)i;
        return SPEC_OK;
    case G_MESSAGES: return get_messages(v, g, err);
    case G_N_KEYS: break;
    }
    return SPEC_E_INVALID_ARG;
}

static void generate_free(struct ipc_generate *g)
{
    free(g->prompt);
    free(g->tokens);
    for (int i = 0; i < g->n_messages; i++)
        free(g->messages[i].content);
    free(g->messages);
    for (int i = 0; i < g->n_stop; i++)
        free(g->stop[i]);
    free(g->stop);
}

static int parse_generate(const msgpack_object *params, const struct ipc_limits *lim, struct ipc_generate *g,
                          struct ipc_error *err)
{
    *g = (struct ipc_generate){
        .add_special = true,
        .max_tokens = 128 < lim->n_ctx ? 128 : lim->n_ctx,
        .sampling = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.0f},
        .speculative = true,
    };
    struct gen_ctx c = {g, lim};
    int rc = walk_params(params, gen_keys, G_N_KEYS, gen_field, &c, err);
    const int given = !!g->prompt + !!g->tokens + !!g->messages;
    if (!rc && given != 1)
        rc = bad(err, given ? "prompt, tokens, messages: give one of them"
                            : "prompt: missing (or give tokens or messages)");
    if (rc)
        generate_free(g);
    return rc;
}

/* Methods with at most a few simple keys. */
enum tok_key { T_TEXT, T_ADD_SPECIAL, T_N_KEYS };
static const char *const tok_keys[T_N_KEYS] = {"text", "add_special"};

static int tokenize_field(void *ctx, int key, const msgpack_object *v, struct ipc_error *err)
{
    struct ipc_request *r = ctx;
    if (key == T_TEXT)
        return get_str(v, tok_keys[key], &r->u.tokenize.text, &r->u.tokenize.len, err);
    return get_bool(v, tok_keys[key], &r->u.tokenize.add_special, err);
}

static const char *const detok_keys[] = {"tokens"};

struct detok_ctx {
    struct ipc_request *r;
    const struct ipc_limits *lim;
};

static int detokenize_field(void *ctx, int key, const msgpack_object *v, struct ipc_error *err)
{
    struct detok_ctx *c = ctx;
    return get_tokens(v, detok_keys[key], c->lim->n_vocab, &c->r->u.detokenize.tokens,
                      &c->r->u.detokenize.n_tokens, err);
}

static const char *const cancel_keys[] = {"id"};
struct cancel_ctx {
    struct ipc_request *r;
    bool seen;
};

static int cancel_field(void *ctx, int key, const msgpack_object *v, struct ipc_error *err)
{
    struct cancel_ctx *c = ctx;
    int64_t id;
    SPEC_TRY(get_int(v, cancel_keys[key], 0, UINT32_MAX, &id, err));
    c->r->u.cancel.id = (uint32_t)id;
    c->seen = true;
    return SPEC_OK;
}

static const char *const stats_keys[] = {"format"};

static int stats_field(void *ctx, int key, const msgpack_object *v, struct ipc_error *err)
{
    struct ipc_request *r = ctx;
    SPEC_TRY(want_type(v, stats_keys[key], "a string", v->type == MSGPACK_OBJECT_STR, err));
    if (str_eq(&v->via.str, "prometheus"))
        r->u.stats.prometheus = true;
    else if (!str_eq(&v->via.str, "map"))
        return bad(err, "format: must be \"map\" or \"prometheus\"");
    return SPEC_OK;
}

static int parse_params(const msgpack_object *params, const struct ipc_limits *lim, struct ipc_request *r,
                        struct ipc_error *err)
{
    switch (r->method) {
    case IPC_GENERATE: return parse_generate(params, lim, &r->u.generate, err);
    case IPC_CANCEL: {
        struct cancel_ctx c = {r, false};
        SPEC_TRY(walk_params(params, cancel_keys, 1, cancel_field, &c, err));
        return c.seen ? SPEC_OK : bad(err, "id: missing");
    }
    case IPC_TOKENIZE: {
        int rc = walk_params(params, tok_keys, T_N_KEYS, tokenize_field, r, err);
        if (!rc && !r->u.tokenize.text)
            rc = bad(err, "text: missing");
        if (rc)
            free(r->u.tokenize.text);
        return rc;
    }
    case IPC_DETOKENIZE: {
        struct detok_ctx c = {r, lim};
        SPEC_TRY(walk_params(params, detok_keys, 1, detokenize_field, &c, err));
        return r->u.detokenize.tokens ? SPEC_OK : bad(err, "tokens: missing");
    }
    case IPC_STATS: return walk_params(params, stats_keys, 1, stats_field, r, err);
    case IPC_INFO:
    case IPC_HEALTH: return walk_params(params, NULL, 0, NULL, r, err); /* no keys: any key is unknown */
    }
    return SPEC_E_INVALID_ARG;
}

int ipc_parse_request(const msgpack_object *msg, const struct ipc_limits *lim, struct ipc_request *req,
                      struct ipc_error *err)
{
    *err = (struct ipc_error){.code = IPC_INVALID_REQUEST};
    if (msg->type != MSGPACK_OBJECT_ARRAY || msg->via.array.size != 4) {
        if (msg->type == MSGPACK_OBJECT_ARRAY)
            ipc_error_set(err, IPC_INVALID_REQUEST, "a request is [0, msgid, method, params], got %u elements",
                          msg->via.array.size);
        else
            ipc_error_set(err, IPC_INVALID_REQUEST, "a request is [0, msgid, method, params], got %s",
                          type_name(msg));
        return SPEC_E_FORMAT;
    }
    const msgpack_object *f = msg->via.array.ptr;
    if (f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER && f[1].via.u64 <= UINT32_MAX) {
        err->has_id = true;
        err->id = (uint32_t)f[1].via.u64;
    }
    if (f[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[0].via.u64 != 0) {
        ipc_error_set(err, IPC_INVALID_REQUEST, "type: expected 0 (a request)");
        return SPEC_E_FORMAT;
    }
    if (!err->has_id) {
        ipc_error_set(err, IPC_INVALID_REQUEST, "msgid: expected an unsigned integer < 2^32, got %s",
                      type_name(&f[1]));
        return SPEC_E_FORMAT;
    }
    if (f[2].type != MSGPACK_OBJECT_STR) {
        ipc_error_set(err, IPC_INVALID_REQUEST, "method: expected a string, got %s", type_name(&f[2]));
        return SPEC_E_FORMAT;
    }
    if (f[3].type != MSGPACK_OBJECT_ARRAY) {
        ipc_error_set(err, IPC_INVALID_REQUEST, "params: expected an array, got %s", type_name(&f[3]));
        return SPEC_E_FORMAT;
    }
    int m = -1;
    for (size_t i = 0; i < N_METHODS && m < 0; i++)
        if (str_eq(&f[2].via.str, method_names[i]))
            m = (int)i;
    if (m < 0) {
        char q[48];
        ipc_error_set(err, IPC_METHOD_NOT_FOUND, "method: unknown method \"%s\"", quote(&f[2].via.str, q));
        return SPEC_E_FORMAT;
    }
    struct ipc_request r = {.msgid = err->id, .method = (enum ipc_method)m};
    const int rc = parse_params(&f[3], lim, &r, err);
    if (rc == SPEC_E_NOMEM)
        ipc_error_set(err, IPC_INTERNAL, "out of memory (SPEC_E_NOMEM)");
    if (rc)
        return rc;
    *req = r;
    return SPEC_OK;
}

void ipc_request_free(struct ipc_request *req)
{
    if (!req)
        return;
    switch (req->method) {
    case IPC_GENERATE: generate_free(&req->u.generate); break;
    case IPC_TOKENIZE: free(req->u.tokenize.text); break;
    case IPC_DETOKENIZE: free(req->u.detokenize.tokens); break;
    case IPC_CANCEL:
    case IPC_INFO:
    case IPC_STATS:
    case IPC_HEALTH: break;
    }
    memset(&req->u, 0, sizeof req->u);
}
