/* Encoders for responses and notifications, the latency histograms and the Prometheus text. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ipc/ipc.h"

/* A packer over an sbuffer that remembers a failed write, so an encoder checks once at the end and
 * takes back the partial message instead of leaving half a frame in the buffer. */
struct out {
    msgpack_sbuffer *sb;
    size_t start;
    bool failed;
    msgpack_packer pk;
};

static int out_write(void *data, const char *buf, size_t len)
{
    struct out *o = data;
    if (!o->failed && msgpack_sbuffer_write(o->sb, buf, len) != 0)
        o->failed = true;
    return o->failed ? -1 : 0;
}

static void out_init(struct out *o, msgpack_sbuffer *sb)
{
    *o = (struct out){.sb = sb, .start = sb->size};
    msgpack_packer_init(&o->pk, o, out_write);
}

static int out_end(struct out *o)
{
    if (!o->failed)
        return SPEC_OK;
    o->sb->size = o->start;
    return SPEC_E_NOMEM;
}

static void str(struct out *o, const char *s)
{
    msgpack_pack_str_with_body(&o->pk, s, strlen(s));
}

static void strn(struct out *o, const char *s, size_t n)
{
    msgpack_pack_str_with_body(&o->pk, s, n);
}

static void kv_int(struct out *o, const char *k, int64_t v)
{
    str(o, k);
    msgpack_pack_int64(&o->pk, v);
}

static void kv_uint(struct out *o, const char *k, uint64_t v)
{
    str(o, k);
    msgpack_pack_uint64(&o->pk, v);
}

static void kv_double(struct out *o, const char *k, double v)
{
    str(o, k);
    msgpack_pack_double(&o->pk, v);
}

static void kv_str(struct out *o, const char *k, const char *v)
{
    str(o, k);
    str(o, v);
}

static void kv_bool(struct out *o, const char *k, bool v)
{
    str(o, k);
    if (v)
        msgpack_pack_true(&o->pk);
    else
        msgpack_pack_false(&o->pk);
}

static void tokens(struct out *o, const int32_t *t, size_t n)
{
    msgpack_pack_array(&o->pk, n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_int32(&o->pk, t[i]);
}

static void error_map(struct out *o, const struct ipc_error *e)
{
    msgpack_pack_map(&o->pk, 3);
    kv_int(o, "code", e->code);
    kv_str(o, "name", ipc_code_name(e->code));
    kv_str(o, "message", e->message);
}

/* [1, id, nil, <result follows>] */
static void result_head(struct out *o, uint32_t id)
{
    msgpack_pack_array(&o->pk, 4);
    msgpack_pack_uint8(&o->pk, 1);
    msgpack_pack_uint32(&o->pk, id);
    msgpack_pack_nil(&o->pk);
}

int ipc_encode_error(msgpack_sbuffer *sb, const struct ipc_error *e)
{
    struct out o;
    out_init(&o, sb);
    msgpack_pack_array(&o.pk, 4);
    msgpack_pack_uint8(&o.pk, 1);
    if (e->has_id)
        msgpack_pack_uint32(&o.pk, e->id);
    else
        msgpack_pack_nil(&o.pk);
    error_map(&o, e);
    msgpack_pack_nil(&o.pk);
    return out_end(&o);
}

int ipc_encode_error_notify(msgpack_sbuffer *sb, const struct ipc_error *e)
{
    struct out o;
    out_init(&o, sb);
    msgpack_pack_array(&o.pk, 3);
    msgpack_pack_uint8(&o.pk, 2);
    str(&o, "error");
    msgpack_pack_array(&o.pk, 1);
    error_map(&o, e);
    return out_end(&o);
}

int ipc_encode_chunk(msgpack_sbuffer *sb, uint32_t id, const char *text, size_t n_text, const int32_t *toks,
                     int n_tokens)
{
    struct out o;
    out_init(&o, sb);
    msgpack_pack_array(&o.pk, 3);
    msgpack_pack_uint8(&o.pk, 2);
    str(&o, "chunk");
    msgpack_pack_array(&o.pk, 1);
    msgpack_pack_map(&o.pk, 3);
    kv_uint(&o, "id", id);
    str(&o, "text");
    strn(&o, text, n_text);
    str(&o, "tokens");
    tokens(&o, toks, (size_t)n_tokens);
    return out_end(&o);
}

int ipc_encode_generate(msgpack_sbuffer *sb, uint32_t id, const struct ipc_generate_result *r)
{
    struct out o;
    out_init(&o, sb);
    result_head(&o, id);
    msgpack_pack_map(&o.pk, 7);
    str(&o, "text");
    strn(&o, r->text, r->n_text);
    str(&o, "tokens");
    tokens(&o, r->tokens, (size_t)r->n_tokens);
    kv_str(&o, "finish_reason", r->finish_reason);
    kv_uint(&o, "seed", r->seed);

    str(&o, "usage");
    msgpack_pack_map(&o.pk, 3);
    kv_int(&o, "prompt_tokens", r->prompt_tokens);
    kv_int(&o, "cached_tokens", r->cached_tokens);
    kv_int(&o, "completion_tokens", r->n_tokens);

    str(&o, "speculative");
    msgpack_pack_map(&o.pk, 6);
    kv_bool(&o, "enabled", r->speculative);
    kv_int(&o, "drafted", r->drafted);
    kv_int(&o, "accepted", r->accepted);
    kv_double(&o, "acceptance", r->drafted > 0 ? (double)r->accepted / r->drafted : 0.0);
    kv_int(&o, "target_passes", r->target_passes);
    kv_double(&o, "tokens_per_pass", r->target_passes > 0 ? (double)r->n_tokens / r->target_passes : 0.0);

    str(&o, "timing");
    msgpack_pack_map(&o.pk, 5);
    kv_double(&o, "queue_ms", r->queue_ms);
    kv_double(&o, "prefill_ms", r->prefill_ms);
    kv_double(&o, "draft_ms", r->draft_ms);
    kv_double(&o, "target_ms", r->target_ms);
    kv_double(&o, "total_ms", r->total_ms);
    return out_end(&o);
}

int ipc_encode_cancelled(msgpack_sbuffer *sb, uint32_t id)
{
    struct out o;
    out_init(&o, sb);
    result_head(&o, id);
    msgpack_pack_map(&o.pk, 1);
    kv_bool(&o, "cancelled", true);
    return out_end(&o);
}

int ipc_encode_tokens(msgpack_sbuffer *sb, uint32_t id, const int32_t *toks, size_t n)
{
    struct out o;
    out_init(&o, sb);
    result_head(&o, id);
    msgpack_pack_map(&o.pk, 1);
    str(&o, "tokens");
    tokens(&o, toks, n);
    return out_end(&o);
}

int ipc_encode_text(msgpack_sbuffer *sb, uint32_t id, const char *text, size_t n)
{
    struct out o;
    out_init(&o, sb);
    result_head(&o, id);
    msgpack_pack_map(&o.pk, 1);
    str(&o, "text");
    strn(&o, text, n);
    return out_end(&o);
}

static void model_info(struct out *o, const struct ipc_model_info *m)
{
    msgpack_pack_map(&o->pk, 6);
    kv_str(o, "path", m->path);
    kv_str(o, "arch", m->arch);
    kv_int(o, "n_vocab", m->n_vocab);
    kv_int(o, "n_ctx_train", m->n_ctx_train);
    kv_int(o, "n_layer", m->n_layer);
    kv_int(o, "n_embd", m->n_embd);
}

int ipc_encode_info(msgpack_sbuffer *sb, uint32_t id, const struct ipc_info *in)
{
    struct out o;
    out_init(&o, sb);
    result_head(&o, id);
    msgpack_pack_map(&o.pk, 6);
    kv_str(&o, "version", in->version);
    kv_int(&o, "protocol", IPC_PROTOCOL_VERSION);
    kv_str(&o, "backend", in->backend);
    str(&o, "target");
    model_info(&o, &in->target);
    str(&o, "draft");
    if (in->draft)
        model_info(&o, in->draft);
    else
        msgpack_pack_nil(&o.pk);
    str(&o, "limits");
    msgpack_pack_map(&o.pk, 9);
    kv_int(&o, "n_ctx", in->n_ctx);
    kv_int(&o, "max_seqs", in->max_seqs);
    kv_int(&o, "max_clients", in->max_clients);
    kv_int(&o, "max_queue", in->max_queue);
    kv_int(&o, "max_pending_per_client", in->max_pending_per_client);
    kv_uint(&o, "max_frame", in->max_frame);
    kv_int(&o, "draft_max", in->draft_max);
    kv_int(&o, "max_stop", IPC_MAX_STOP);
    kv_int(&o, "max_stop_len", IPC_MAX_STOP_LEN);
    return out_end(&o);
}

/* ---------------------------------------------------------------------------------------------- */
/* Statistics. */

const double ipc_hist_bounds[IPC_HIST_BUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                      0.25,  0.5,    1,     2.5,  5,     10,   30};

void ipc_hist_observe(struct ipc_hist *h, double seconds)
{
    int b = 0;
    while (b < IPC_HIST_BUCKETS - 1 && seconds > ipc_hist_bounds[b])
        b++;
    h->bucket[b]++;
    h->count++;
    h->sum += seconds;
}

static void hist_map(struct out *o, const char *name, const struct ipc_hist *h)
{
    str(o, name);
    msgpack_pack_map(&o->pk, 3);
    str(o, "buckets");
    msgpack_pack_array(&o->pk, IPC_HIST_BUCKETS);
    uint64_t cum = 0;
    for (int b = 0; b < IPC_HIST_BUCKETS; b++) {
        cum += h->bucket[b];
        msgpack_pack_array(&o->pk, 2);
        msgpack_pack_double(&o->pk, b < IPC_HIST_BUCKETS - 1 ? ipc_hist_bounds[b] : INFINITY);
        msgpack_pack_uint64(&o->pk, cum);
    }
    kv_double(o, "sum", h->sum);
    kv_uint(o, "count", h->count);
}

/* One table drives both formats, so the map and the Prometheus text always list the same things. */
enum metric_kind { COUNTER, GAUGE };
static const struct {
    const char *name;
    enum metric_kind kind;
    size_t off;
    const char *help;
} metrics[] = {
#define M(n, k, h) {#n, k, offsetof(struct ipc_stats, n), h}
    M(requests_total, COUNTER, "Requests answered, every method."),
    M(requests_failed, COUNTER, "Requests answered with an error."),
    M(requests_cancelled, COUNTER, "Generate requests that ended cancelled."),
    M(tokens_generated, COUNTER, "Tokens generated."),
    M(tokens_drafted, COUNTER, "Draft tokens proposed."),
    M(tokens_accepted, COUNTER, "Draft tokens accepted."),
    M(target_passes, COUNTER, "Batched target passes that advanced a request."),
    M(prompt_tokens, COUNTER, "Prompt tokens of finished generate requests."),
    M(prompt_tokens_cached, COUNTER, "Prompt tokens found in the prompt cache (no prefill)."),
    M(clients_connected, GAUGE, "Clients connected now."),
    M(connections_total, COUNTER, "Connections accepted."),
    M(connections_rejected, COUNTER, "Connections refused (uid, client limit, draining)."),
    M(active, GAUGE, "Generate requests in the batch now."),
    M(queued, GAUGE, "Generate requests waiting for a batch slot now."),
#undef M
};
#define N_METRICS (sizeof metrics / sizeof metrics[0])

static uint64_t metric(const struct ipc_stats *s, size_t i)
{
    uint64_t v;
    memcpy(&v, (const char *)s + metrics[i].off, sizeof v);
    return v;
}

int ipc_encode_stats(msgpack_sbuffer *sb, uint32_t id, const struct ipc_stats *s, bool prometheus)
{
    struct out o;
    if (prometheus) {
        char *text;
        size_t len;
        SPEC_TRY(ipc_stats_prometheus(s, &text, &len));
        out_init(&o, sb);
        result_head(&o, id);
        msgpack_pack_map(&o.pk, 1);
        str(&o, "text");
        strn(&o, text, len);
        free(text);
        return out_end(&o);
    }
    out_init(&o, sb);
    result_head(&o, id);
    msgpack_pack_map(&o.pk, N_METRICS + 4);
    for (size_t i = 0; i < N_METRICS; i++)
        kv_uint(&o, metrics[i].name, metric(s, i));
    kv_double(&o, "uptime_s", s->uptime_s);
    hist_map(&o, "queue_seconds", &s->queue_seconds);
    hist_map(&o, "first_token_seconds", &s->first_token_seconds);
    hist_map(&o, "request_seconds", &s->request_seconds);
    return out_end(&o);
}

int ipc_encode_health(msgpack_sbuffer *sb, uint32_t id, bool draining, uint64_t active, uint64_t queued,
                      double uptime_s)
{
    struct out o;
    out_init(&o, sb);
    result_head(&o, id);
    msgpack_pack_map(&o.pk, 4);
    kv_str(&o, "status", draining ? "draining" : "ok");
    kv_uint(&o, "active", active);
    kv_uint(&o, "queued", queued);
    kv_double(&o, "uptime_s", uptime_s);
    return out_end(&o);
}

/* Growable text for the Prometheus exposition. */
struct text {
    char *p;
    size_t len, cap;
    bool failed;
};

__attribute__((format(printf, 2, 3))) static void tprintf(struct text *t, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !t->failed; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        const int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if (t->p && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap : 1024;
        while (cap - t->len <= (size_t)n)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->failed = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

static void prom_hist(struct text *t, const char *name, const char *help, const struct ipc_hist *h)
{
    tprintf(t, "# HELP specd_%s %s\n# TYPE specd_%s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < IPC_HIST_BUCKETS; b++) {
        cum += h->bucket[b];
        if (b < IPC_HIST_BUCKETS - 1)
            tprintf(t, "specd_%s_bucket{le=\"%g\"} %llu\n", name, ipc_hist_bounds[b], (unsigned long long)cum);
        else
            tprintf(t, "specd_%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    tprintf(t, "specd_%s_sum %.9g\nspecd_%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

int ipc_stats_prometheus(const struct ipc_stats *s, char **text, size_t *len)
{
    struct text t = {0};
    for (size_t i = 0; i < N_METRICS; i++) {
        /* Prometheus names counters NAME_total; the map's keys stay as they are. */
        const char *name = metrics[i].name;
        const size_t n = strlen(name);
        const bool add_total = metrics[i].kind == COUNTER && !(n > 6 && !strcmp(name + n - 6, "_total"));
        const char *sfx = add_total ? "_total" : "";
        tprintf(&t, "# HELP specd_%s%s %s\n# TYPE specd_%s%s %s\nspecd_%s%s %llu\n", name, sfx, metrics[i].help, name,
                sfx, metrics[i].kind == COUNTER ? "counter" : "gauge", name, sfx, (unsigned long long)metric(s, i));
    }
    tprintf(&t, "# HELP specd_uptime_seconds Seconds since the daemon started.\n"
                "# TYPE specd_uptime_seconds gauge\nspecd_uptime_seconds %.3f\n",
            s->uptime_s);
    prom_hist(&t, "queue_seconds", "Time from receipt until a generate joined the batch.", &s->queue_seconds);
    prom_hist(&t, "first_token_seconds", "Time from receipt until a generate's first token.",
              &s->first_token_seconds);
    prom_hist(&t, "request_seconds", "Time from receipt until a generate finished.", &s->request_seconds);
    if (t.failed) {
        free(t.p);
        return SPEC_E_NOMEM;
    }
    *text = t.p;
    *len = t.len;
    return SPEC_OK;
}
