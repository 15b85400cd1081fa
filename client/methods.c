/* libspecd-client: the methods of docs/protocol.md, their requests and their results. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"

/* ---- requests ---- */

struct req {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint32_t id;
    int bad; /* a pack call failed (out of memory) */
};

static void p_str(struct req *r, const char *s)
{
    r->bad |= msgpack_pack_str_with_body(&r->pk, s, strlen(s));
}

static void p_int(struct req *r, int64_t v)
{
    r->bad |= msgpack_pack_int64(&r->pk, v);
}

static void p_bool(struct req *r, bool v)
{
    r->bad |= v ? msgpack_pack_true(&r->pk) : msgpack_pack_false(&r->pk);
}

static void p_tokens(struct req *r, const int32_t *t, size_t n)
{
    r->bad |= msgpack_pack_array(&r->pk, n);
    for (size_t i = 0; i < n; i++)
        p_int(r, t[i]);
}

/* Starts [0, msgid, method, params]: params [] when n_keys is 0, else [{...}] of n_keys keys. */
static void req_begin(struct spc_client *c, struct req *r, const char *method, size_t n_keys)
{
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&r->pk, &r->sb, msgpack_sbuffer_write);
    r->bad = 0;
    r->id = spc_next_id(c);
    r->bad |= msgpack_pack_array(&r->pk, 4);
    p_int(r, 0);
    p_int(r, r->id);
    p_str(r, method);
    r->bad |= msgpack_pack_array(&r->pk, n_keys ? 1 : 0);
    if (n_keys)
        r->bad |= msgpack_pack_map(&r->pk, n_keys);
}

static int req_send(struct spc_client *c, struct req *r)
{
    const int err = r->bad ? SPC_E_NOMEM : spc_send(c, r->sb.data, r->sb.size);
    msgpack_sbuffer_destroy(&r->sb);
    return err;
}

/* The result of response m, or SPC_E_DAEMON with c->err set (m is then released). */
static int response(struct spc_client *c, struct spc_msg *m, const msgpack_object **result)
{
    if (!m->error) {
        *result = m->result;
        return SPC_OK;
    }
    const int err = spc_parse_error(c, m->error);
    spc_msg_release(c, m);
    return spc_fail(c, err);
}

/* Sends r and waits for its result; on success the caller releases m. */
static int call(struct spc_client *c, struct req *r, struct spc_msg *m, const msgpack_object **result)
{
    int err = req_send(c, r);
    if (!err)
        err = spc_await(c, r->id, m);
    return err ? err : response(c, m, result);
}

/* ---- results ---- */

/* Reading a result's fields: a missing key or a wrong type marks the whole result bad. */
struct dec {
    bool bad;
    char *p, *end; /* the rest of the result's allocation, for its strings and arrays */
};

static const msgpack_object *d_obj(struct dec *d, const msgpack_object *map, const char *key,
                                   msgpack_object_type type)
{
    const msgpack_object *o = map ? spc_get(map, key) : NULL;
    if (o && o->type == type)
        return o;
    d->bad = true;
    return NULL;
}

static int64_t d_int(struct dec *d, const msgpack_object *map, const char *key)
{
    const msgpack_object *o = map ? spc_get(map, key) : NULL;
    if (o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
        return (int64_t)o->via.u64;
    if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    d->bad = true;
    return 0;
}

static uint64_t d_uint(struct dec *d, const msgpack_object *map, const char *key)
{
    const msgpack_object *o = d_obj(d, map, key, MSGPACK_OBJECT_POSITIVE_INTEGER);
    return o ? o->via.u64 : 0;
}

/* A number: floats, and integers where floats are expected (as the daemon accepts them). */
static bool as_f64(const msgpack_object *o, double *v)
{
    if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
        *v = o->via.f64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        *v = (double)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *v = (double)o->via.i64;
    else
        return false;
    return true;
}

static double d_f64(struct dec *d, const msgpack_object *map, const char *key)
{
    const msgpack_object *o = map ? spc_get(map, key) : NULL;
    double v = 0;
    if (!o || !as_f64(o, &v))
        d->bad = true;
    return v;
}

static bool d_bool(struct dec *d, const msgpack_object *map, const char *key)
{
    const msgpack_object *o = d_obj(d, map, key, MSGPACK_OBJECT_BOOLEAN);
    return o && o->via.boolean;
}

/* Room for n bytes of the result's allocation, 8-aligned. */
static void *d_take(struct dec *d, size_t n)
{
    char *p = (char *)(((uintptr_t)d->p + 7) & ~(uintptr_t)7);
    if (p > d->end || (size_t)(d->end - p) < n) {
        d->bad = true;
        return NULL;
    }
    d->p = p + n;
    return p;
}

/* A NUL-terminated copy of a string field ("" when bad); len may be NULL. */
static char *d_str(struct dec *d, const msgpack_object *map, const char *key, size_t *len)
{
    const msgpack_object *o = d_obj(d, map, key, MSGPACK_OBJECT_STR);
    char *s = d_take(d, (o ? o->via.str.size : 0) + 1);
    if (!s)
        return "";
    if (o)
        memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o ? o->via.str.size : 0] = '\0';
    if (len)
        *len = o ? o->via.str.size : 0;
    return s;
}

/* Token ids into dst (the array's size), each within int32_t. */
static void d_tokens(struct dec *d, const msgpack_object *arr, int32_t *dst)
{
    for (uint32_t i = 0; arr && dst && i < arr->via.array.size; i++) {
        const msgpack_object *t = &arr->via.array.ptr[i];
        if (t->type == MSGPACK_OBJECT_POSITIVE_INTEGER && t->via.u64 <= INT32_MAX)
            dst[i] = (int32_t)t->via.u64;
        else if (t->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && t->via.i64 >= INT32_MIN)
            dst[i] = (int32_t)t->via.i64;
        else
            d->bad = true;
    }
}

/* An upper bound of what copying o's strings and arrays into a result takes. */
static size_t copy_bound(const msgpack_object *o)
{
    size_t n = 0;
    if (o->type == MSGPACK_OBJECT_STR) {
        n = o->via.str.size + 1 + 8;
    } else if (o->type == MSGPACK_OBJECT_ARRAY) {
        n = (size_t)o->via.array.size * sizeof(struct spc_bucket) + 8;
        for (uint32_t i = 0; i < o->via.array.size; i++)
            n += copy_bound(&o->via.array.ptr[i]);
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++)
            n += copy_bound(&o->via.map.ptr[i].val);
    }
    return n;
}

/* One zeroed allocation for a result struct of `head` bytes and everything res holds. */
static void *d_alloc(struct dec *d, size_t head, const msgpack_object *res)
{
    head = (head + 7) & ~(size_t)7;
    const size_t size = head + copy_bound(res);
    char *p = calloc(1, size);
    if (p)
        *d = (struct dec){.p = p + head, .end = p + size};
    return p;
}

/* Ends a call: on a bad result the allocation is dropped and the connection closed. */
static int finish(struct spc_client *c, struct spc_msg *m, struct dec *d, void *res, void **out)
{
    spc_msg_release(c, m);
    if (!res)
        return spc_fail(c, SPC_E_NOMEM);
    if (d->bad) {
        free(res);
        return spc_fail(c, SPC_E_PROTOCOL);
    }
    *out = res;
    return SPC_OK;
}

/* ---- generate ---- */

struct spc_gen_params spc_gen_params_default(void)
{
    return (struct spc_gen_params){.max_tokens = SPC_UNSET, .top_k = SPC_UNSET, .draft_max = SPC_UNSET,
                                   .temperature = NAN, .top_p = NAN, .min_p = NAN, .repeat_penalty = NAN,
                                   .frequency_penalty = NAN, .presence_penalty = NAN, .add_special = -1,
                                   .speculative = -1};
}

static const char *const finish_names[] = {"stop", "length", "cancelled"};

const char *spc_finish_name(enum spc_finish f)
{
    return (unsigned)f < 3 ? finish_names[f] : "?";
}

/* Counts a key of the params map and, when packing (r not NULL), packs it: its value follows. */
static bool key(struct req *r, size_t *n, const char *k)
{
    ++*n;
    if (r)
        p_str(r, k);
    return r != NULL;
}

/* The generate params map: counts its keys, and packs them when r is not NULL. Parameters left
 * unset are not sent. */
static size_t gen_params(struct req *r, const struct spc_gen_params *p, bool stream)
{
    size_t n = 0;
    if (p->prompt && key(r, &n, "prompt"))
        p_str(r, p->prompt);
    if (p->tokens && key(r, &n, "tokens"))
        p_tokens(r, p->tokens, p->n_tokens);
    if (p->messages && key(r, &n, "messages")) {
        r->bad |= msgpack_pack_array(&r->pk, p->n_messages);
        for (size_t i = 0; i < p->n_messages; i++) {
            r->bad |= msgpack_pack_map(&r->pk, 2);
            p_str(r, "role");
            p_str(r, p->messages[i].role);
            p_str(r, "content");
            p_str(r, p->messages[i].content);
        }
    }
    if (p->add_special >= 0 && key(r, &n, "add_special"))
        p_bool(r, p->add_special);
    if (p->max_tokens != SPC_UNSET && key(r, &n, "max_tokens"))
        p_int(r, p->max_tokens);
    if (p->top_k != SPC_UNSET && key(r, &n, "top_k"))
        p_int(r, p->top_k);
    const struct {
        const char *name;
        double v;
    } floats[] = {{"temperature", p->temperature},       {"top_p", p->top_p},
                  {"min_p", p->min_p},                   {"repeat_penalty", p->repeat_penalty},
                  {"frequency_penalty", p->frequency_penalty}, {"presence_penalty", p->presence_penalty}};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        if (!isnan(floats[i].v) && key(r, &n, floats[i].name))
            r->bad |= msgpack_pack_double(&r->pk, floats[i].v);
    if (p->has_seed && key(r, &n, "seed"))
        r->bad |= msgpack_pack_uint64(&r->pk, p->seed);
    if (p->n_stop && key(r, &n, "stop")) {
        r->bad |= msgpack_pack_array(&r->pk, p->n_stop);
        for (size_t i = 0; i < p->n_stop; i++)
            p_str(r, p->stop[i]);
    }
    if (stream && key(r, &n, "stream"))
        p_bool(r, true);
    if (p->speculative >= 0 && key(r, &n, "speculative"))
        p_bool(r, p->speculative);
    if (p->draft_max != SPC_UNSET && key(r, &n, "draft_max"))
        p_int(r, p->draft_max);
    return n;
}

static bool gen_params_valid(const struct spc_gen_params *p)
{
    if (!!p->prompt + !!p->tokens + !!p->messages != 1 || (p->messages && p->n_messages == 0))
        return false;
    for (size_t i = 0; p->messages && i < p->n_messages; i++)
        if (!p->messages[i].role || !p->messages[i].content)
            return false;
    if (p->add_special < -1 || p->add_special > 1 || p->speculative < -1 || p->speculative > 1)
        return false;
    if (p->n_stop && !p->stop)
        return false;
    for (size_t i = 0; i < p->n_stop; i++)
        if (!p->stop[i])
            return false;
    return true;
}

int spc_generate_start(struct spc_client *c, const struct spc_gen_params *p, bool stream, uint32_t *id)
{
    if (c->closed)
        return SPC_E_CLOSED;
    if (c->gen_active || !gen_params_valid(p))
        return SPC_E_INVALID_ARG;
    struct req r;
    req_begin(c, &r, "generate", gen_params(NULL, p, stream));
    gen_params(&r, p, stream);
    const int err = req_send(c, &r);
    if (err)
        return err;
    c->gen_active = true;
    c->gen_stream = stream;
    c->gen_id = r.id;
    *id = r.id;
    return SPC_OK;
}

static int gen_result(struct spc_client *c, struct spc_msg *m, const msgpack_object *res,
                      struct spc_gen_result **out)
{
    struct dec d = {0};
    struct spc_gen_result *g = d_alloc(&d, sizeof *g, res);
    if (g) {
        g->text = d_str(&d, res, "text", &g->text_len);
        const msgpack_object *toks = d_obj(&d, res, "tokens", MSGPACK_OBJECT_ARRAY);
        g->n_tokens = toks ? toks->via.array.size : 0;
        g->tokens = d_take(&d, g->n_tokens * sizeof *g->tokens);
        d_tokens(&d, toks, g->tokens);
        const msgpack_object *fin = d_obj(&d, res, "finish_reason", MSGPACK_OBJECT_STR);
        int f = 0;
        while (fin && f < 3 && !(strlen(finish_names[f]) == fin->via.str.size &&
                                 !memcmp(finish_names[f], fin->via.str.ptr, fin->via.str.size)))
            f++;
        d.bad |= f == 3;
        g->finish = (enum spc_finish)f;
        g->seed = d_uint(&d, res, "seed");
        const msgpack_object *usage = d_obj(&d, res, "usage", MSGPACK_OBJECT_MAP);
        g->prompt_tokens = d_int(&d, usage, "prompt_tokens");
        g->cached_tokens = d_int(&d, usage, "cached_tokens");
        g->completion_tokens = d_int(&d, usage, "completion_tokens");
        const msgpack_object *sp = d_obj(&d, res, "speculative", MSGPACK_OBJECT_MAP);
        g->spec.enabled = d_bool(&d, sp, "enabled");
        g->spec.drafted = d_int(&d, sp, "drafted");
        g->spec.accepted = d_int(&d, sp, "accepted");
        g->spec.acceptance = d_f64(&d, sp, "acceptance");
        g->spec.target_passes = d_int(&d, sp, "target_passes");
        g->spec.tokens_per_pass = d_f64(&d, sp, "tokens_per_pass");
        const msgpack_object *t = d_obj(&d, res, "timing", MSGPACK_OBJECT_MAP);
        g->timing.queue_ms = d_f64(&d, t, "queue_ms");
        g->timing.prefill_ms = d_f64(&d, t, "prefill_ms");
        g->timing.draft_ms = d_f64(&d, t, "draft_ms");
        g->timing.target_ms = d_f64(&d, t, "target_ms");
        g->timing.total_ms = d_f64(&d, t, "total_ms");
    }
    return finish(c, m, &d, g, (void **)out);
}

/* Copies a chunk into the connection's chunk buffers. */
static int take_chunk(struct spc_client *c, const msgpack_object *map)
{
    struct dec d = {0};
    const msgpack_object *text = d_obj(&d, map, "text", MSGPACK_OBJECT_STR);
    const msgpack_object *toks = d_obj(&d, map, "tokens", MSGPACK_OBJECT_ARRAY);
    if (d.bad)
        return SPC_E_PROTOCOL;
    const size_t tlen = text->via.str.size, n = toks->via.array.size;
    if (tlen + 1 > c->chunk_text_cap) {
        char *p = realloc(c->chunk_text, tlen + 1);
        if (!p)
            return SPC_E_NOMEM;
        c->chunk_text = p;
        c->chunk_text_cap = tlen + 1;
    }
    if (n > c->chunk_tokens_cap) {
        int32_t *p = realloc(c->chunk_tokens, n * sizeof *p);
        if (!p)
            return SPC_E_NOMEM;
        c->chunk_tokens = p;
        c->chunk_tokens_cap = n;
    }
    d_tokens(&d, toks, c->chunk_tokens);
    if (d.bad)
        return SPC_E_PROTOCOL;
    memcpy(c->chunk_text, text->via.str.ptr, tlen);
    c->chunk_text[tlen] = '\0';
    c->chunk = (struct spc_chunk){.id = c->gen_id, .text = c->chunk_text, .text_len = tlen,
                                  .tokens = c->chunk_tokens, .n_tokens = n};
    return SPC_OK;
}

int spc_generate_next(struct spc_client *c, const struct spc_chunk **chunk, struct spc_gen_result **result)
{
    if (c->closed)
        return SPC_E_CLOSED;
    if (!c->gen_active)
        return SPC_E_INVALID_ARG;
    struct spc_msg m;
    int err = spc_await(c, c->gen_id, &m);
    if (err)
        return err;
    if (m.kind == SPC_MSG_CHUNK) {
        err = c->gen_stream ? take_chunk(c, m.params) : SPC_E_PROTOCOL;
        spc_msg_release(c, &m);
        if (err)
            return spc_fail(c, err);
        *chunk = &c->chunk;
        *result = NULL;
        return SPC_OK;
    }
    c->gen_active = false;
    const msgpack_object *res = NULL;
    err = response(c, &m, &res);
    if (err)
        return err;
    struct spc_gen_result *g = NULL;
    err = gen_result(c, &m, res, &g);
    if (err)
        return err;
    *chunk = NULL;
    *result = g;
    return SPC_OK;
}

int spc_cancel(struct spc_client *c, uint32_t id)
{
    struct req r;
    req_begin(c, &r, "cancel", 1);
    p_str(&r, "id");
    p_int(&r, id);
    struct spc_msg m;
    const msgpack_object *res = NULL;
    const int err = call(c, &r, &m, &res);
    if (err)
        return err;
    struct dec d = {0};
    d.bad |= !d_bool(&d, res, "cancelled");
    spc_msg_release(c, &m);
    return d.bad ? spc_fail(c, SPC_E_PROTOCOL) : SPC_OK;
}

int spc_generate(struct spc_client *c, const struct spc_gen_params *p, spc_chunk_fn on_chunk, void *user,
                 struct spc_gen_result **out)
{
    uint32_t id;
    int err = spc_generate_start(c, p, on_chunk != NULL, &id);
    bool cancelled = false;
    while (!err) {
        const struct spc_chunk *ch;
        struct spc_gen_result *res;
        err = spc_generate_next(c, &ch, &res);
        if (!err && res) {
            *out = res;
            return SPC_OK;
        }
        if (!err && !cancelled && on_chunk(user, ch)) {
            cancelled = true;
            /* A daemon error (the generate ended first: NOT_FOUND) still leaves its result to read. */
            err = spc_cancel(c, id);
            if (err == SPC_E_DAEMON)
                err = SPC_OK;
        }
    }
    return err;
}

/* ---- the other methods ---- */

int spc_tokenize(struct spc_client *c, const char *text, int add_special, int32_t **tokens, size_t *n_tokens)
{
    if (!text || add_special < -1 || add_special > 1)
        return SPC_E_INVALID_ARG;
    struct req r;
    req_begin(c, &r, "tokenize", add_special >= 0 ? 2 : 1);
    p_str(&r, "text");
    p_str(&r, text);
    if (add_special >= 0) {
        p_str(&r, "add_special");
        p_bool(&r, add_special);
    }
    struct spc_msg m;
    const msgpack_object *res = NULL;
    int err = call(c, &r, &m, &res);
    if (err)
        return err;
    struct dec d = {0};
    void *block = d_alloc(&d, 0, res);
    const msgpack_object *toks = d_obj(&d, res, "tokens", MSGPACK_OBJECT_ARRAY);
    const size_t n = toks ? toks->via.array.size : 0;
    if (block && toks)
        d_tokens(&d, toks, d_take(&d, n * sizeof **tokens));
    err = finish(c, &m, &d, block, (void **)tokens);
    if (!err)
        *n_tokens = n;
    return err;
}

/* A result {"text": str} as a NUL-terminated string. */
static int text_result(struct spc_client *c, struct spc_msg *m, const msgpack_object *res, char **text, size_t *len)
{
    struct dec d = {0};
    void *block = d_alloc(&d, 0, res);
    size_t n = 0;
    if (block)
        d_str(&d, res, "text", &n);
    const int err = finish(c, m, &d, block, (void **)text);
    if (!err && len)
        *len = n;
    return err;
}

int spc_detokenize(struct spc_client *c, const int32_t *tokens, size_t n_tokens, char **text, size_t *len)
{
    if (!tokens && n_tokens)
        return SPC_E_INVALID_ARG;
    struct req r;
    req_begin(c, &r, "detokenize", 1);
    p_str(&r, "tokens");
    p_tokens(&r, tokens, n_tokens);
    struct spc_msg m;
    const msgpack_object *res = NULL;
    const int err = call(c, &r, &m, &res);
    return err ? err : text_result(c, &m, res, text, len);
}

static void model_info(struct dec *d, const msgpack_object *map, struct spc_model_info *mi)
{
    mi->path = d_str(d, map, "path", NULL);
    mi->arch = d_str(d, map, "arch", NULL);
    mi->n_vocab = d_int(d, map, "n_vocab");
    mi->n_ctx_train = d_int(d, map, "n_ctx_train");
    mi->n_layer = d_int(d, map, "n_layer");
    mi->n_embd = d_int(d, map, "n_embd");
}

int spc_info(struct spc_client *c, struct spc_info **out)
{
    struct req r;
    req_begin(c, &r, "info", 0);
    struct spc_msg m;
    const msgpack_object *res = NULL;
    const int err = call(c, &r, &m, &res);
    if (err)
        return err;
    struct dec d = {0};
    struct spc_info *in = d_alloc(&d, sizeof *in, res);
    if (in) {
        in->version = d_str(&d, res, "version", NULL);
        in->protocol = d_int(&d, res, "protocol");
        in->backend = d_str(&d, res, "backend", NULL);
        model_info(&d, d_obj(&d, res, "target", MSGPACK_OBJECT_MAP), &in->target);
        const msgpack_object *draft = spc_get(res, "draft");
        in->has_draft = draft && draft->type != MSGPACK_OBJECT_NIL;
        if (in->has_draft)
            model_info(&d, draft, &in->draft);
        else
            d.bad |= !draft;
        const msgpack_object *l = d_obj(&d, res, "limits", MSGPACK_OBJECT_MAP);
        in->limits.n_ctx = d_int(&d, l, "n_ctx");
        in->limits.max_seqs = d_int(&d, l, "max_seqs");
        in->limits.max_clients = d_int(&d, l, "max_clients");
        in->limits.max_queue = d_int(&d, l, "max_queue");
        in->limits.max_pending_per_client = d_int(&d, l, "max_pending_per_client");
        in->limits.max_frame = d_int(&d, l, "max_frame");
        in->limits.draft_max = d_int(&d, l, "draft_max");
        in->limits.max_stop = d_int(&d, l, "max_stop");
        in->limits.max_stop_len = d_int(&d, l, "max_stop_len");
    }
    return finish(c, &m, &d, in, (void **)out);
}

/* {"buckets": [[le, count]...], "sum", "count"}; le may also be the string "+Inf". */
static void histogram(struct dec *d, const msgpack_object *stats, const char *key, struct spc_histogram *h)
{
    const msgpack_object *map = d_obj(d, stats, key, MSGPACK_OBJECT_MAP);
    const msgpack_object *b = d_obj(d, map, "buckets", MSGPACK_OBJECT_ARRAY);
    h->sum = d_f64(d, map, "sum");
    h->count = d_uint(d, map, "count");
    h->n_buckets = b ? b->via.array.size : 0;
    h->buckets = d_take(d, h->n_buckets * sizeof *h->buckets);
    for (size_t i = 0; h->buckets && i < h->n_buckets; i++) {
        const msgpack_object *pair = &b->via.array.ptr[i];
        if (pair->type != MSGPACK_OBJECT_ARRAY || pair->via.array.size != 2 ||
            pair->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            d->bad = true;
            return;
        }
        const msgpack_object *le = &pair->via.array.ptr[0];
        if (le->type == MSGPACK_OBJECT_STR && le->via.str.size == 4 && !memcmp(le->via.str.ptr, "+Inf", 4))
            h->buckets[i].le = INFINITY;
        else if (!as_f64(le, &h->buckets[i].le))
            d->bad = true;
        h->buckets[i].count = pair->via.array.ptr[1].via.u64;
    }
}

int spc_stats(struct spc_client *c, struct spc_stats **out)
{
    struct req r;
    req_begin(c, &r, "stats", 0);
    struct spc_msg m;
    const msgpack_object *res = NULL;
    const int err = call(c, &r, &m, &res);
    if (err)
        return err;
    struct dec d = {0};
    struct spc_stats *s = d_alloc(&d, sizeof *s, res);
    if (s) {
        const struct {
            const char *name;
            uint64_t *v;
        } counters[] = {{"requests_total", &s->requests_total},
                        {"requests_failed", &s->requests_failed},
                        {"requests_cancelled", &s->requests_cancelled},
                        {"tokens_generated", &s->tokens_generated},
                        {"tokens_drafted", &s->tokens_drafted},
                        {"tokens_accepted", &s->tokens_accepted},
                        {"target_passes", &s->target_passes},
                        {"prompt_tokens", &s->prompt_tokens},
                        {"prompt_tokens_cached", &s->prompt_tokens_cached},
                        {"connections_total", &s->connections_total},
                        {"connections_rejected", &s->connections_rejected},
                        {"clients_connected", &s->clients_connected},
                        {"active", &s->active},
                        {"queued", &s->queued}};
        for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
            *counters[i].v = d_uint(&d, res, counters[i].name);
        s->uptime_s = d_f64(&d, res, "uptime_s");
        histogram(&d, res, "queue_seconds", &s->queue_seconds);
        histogram(&d, res, "first_token_seconds", &s->first_token_seconds);
        histogram(&d, res, "request_seconds", &s->request_seconds);
    }
    return finish(c, &m, &d, s, (void **)out);
}

int spc_stats_prometheus(struct spc_client *c, char **text)
{
    struct req r;
    req_begin(c, &r, "stats", 1);
    p_str(&r, "format");
    p_str(&r, "prometheus");
    struct spc_msg m;
    const msgpack_object *res = NULL;
    const int err = call(c, &r, &m, &res);
    return err ? err : text_result(c, &m, res, text, NULL);
}

int spc_health(struct spc_client *c, struct spc_health *out)
{
    struct req r;
    req_begin(c, &r, "health", 0);
    struct spc_msg m;
    const msgpack_object *res = NULL;
    const int err = call(c, &r, &m, &res);
    if (err)
        return err;
    struct dec d = {0};
    const msgpack_object *st = d_obj(&d, res, "status", MSGPACK_OBJECT_STR);
    const bool ok = st && st->via.str.size == 2 && !memcmp(st->via.str.ptr, "ok", 2);
    const bool draining = st && st->via.str.size == 8 && !memcmp(st->via.str.ptr, "draining", 8);
    const struct spc_health h = {.draining = draining, .active = d_int(&d, res, "active"),
                                 .queued = d_int(&d, res, "queued"), .uptime_s = d_f64(&d, res, "uptime_s")};
    spc_msg_release(c, &m);
    if (d.bad || !(ok || draining))
        return spc_fail(c, SPC_E_PROTOCOL);
    *out = h;
    return SPC_OK;
}
