/* The libuv side: connections, request dispatch, responses, limits, backpressure, drain.
 *
 * A connection is created on accept and freed in one place (conn_unref) once its handle is closed
 * and no request of it is still in the engine or the thread pool; uv_close() is the only way a
 * handle goes away, and write requests own their buffer until their callback. */
#include <assert.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "daemon/daemon.h"

static_assert(IPC_MAX_STOP <= ENGINE_MAX_STOP && IPC_MAX_STOP_LEN <= ENGINE_MAX_STOP_LEN,
              "the protocol allows more stop strings than the engine takes");

/* Output a client has not taken yet (libuv's write queue, beyond the kernel's socket buffer):
 * past PAUSE_BYTES (or --max-output, if smaller) its requests are no longer read; reading resumes
 * once the queue is empty. */
#define PAUSE_BYTES (64u << 10)
#define READ_BUF (64u << 10)

struct pend { /* an unfinished request of a connection */
    uint32_t msgid;
    struct job *job; /* generate: its job; NULL for tokenize/detokenize */
};

struct server;

struct conn {
    uv_pipe_t pipe;
    struct server *srv;
    struct conn *prev, *next;
    bool listed; /* counted in the server's connections (accepted, not refused) */
    struct ipc_reader *reader;
    unsigned id;
    uid_t uid;
    pid_t pid;
    bool closing;    /* uv_close() called */
    bool paused;     /* reading stopped: too much output queued */
    bool over_limit; /* its generations were cancelled for not reading */
    int refs;        /* the handle, each unfinished request, each write in flight */
    struct pend *pend;
    int n_pend;
};

struct server {
    uv_loop_t loop;
    const struct options *opt;
    const struct server_models *m;
    const struct tok *tok;
    struct ipc_limits lim;
    struct ipc_info info;
    struct ipc_model_info draft_info;
    struct worker worker;
    uv_pipe_t listener;
    uv_async_t wake;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    struct conn *conns;
    int n_conns;
    struct job *jobs; /* every accepted, unfinished generate */
    int n_jobs;
    int n_work;       /* tokenizer jobs in the thread pool */
    bool draining, finishing;
    unsigned next_conn_id;
    uint64_t rng;
    double t_start;
    struct ipc_stats st;
    char readbuf[READ_BUF];
};

/* A request (or a generate's prompt) for the tokenizer, run on libuv's thread pool. */
struct work {
    uv_work_t req;
    struct server *srv;
    struct conn *conn;
    struct job *job;       /* a generate's prompt */
    struct ipc_request r;  /* tokenize / detokenize */
    int err;
    int32_t *ids;
    size_t n_ids;
    char *text;
    size_t n_text;
};

struct wreq {
    uv_write_t req;
    struct conn *conn;
    char *data;
};

static void conn_close(struct conn *c, enum dlog_level l, const char *why);
static void maybe_finish(struct server *s);

/* ---------------------------------------------------------------------------------------------- */
/* Connections: lifetime and output. */

static void conn_unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    ipc_reader_free(c->reader);
    free(c->pend);
    free(c);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct server *s = c->srv;
    if (c->listed) {
        if (c->prev)
            c->prev->next = c->next;
        else
            s->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        s->n_conns--;
    }
    conn_unref(c);
}

static void cancel_conn_jobs(struct conn *c)
{
    bool any = false;
    for (int i = 0; i < c->n_pend; i++)
        if (c->pend[i].job) {
            atomic_store(&c->pend[i].job->cancel, true);
            any = true;
        }
    if (any)
        worker_wake(&c->srv->worker);
}

static void conn_close(struct conn *c, enum dlog_level l, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    dlog(l, "client %u (pid %d): closing: %s%s", c->id, (int)c->pid, why,
         c->n_pend ? "; cancelling its requests" : "");
    cancel_conn_jobs(c);
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    *buf = uv_buf_init(c->srv->readbuf, READ_BUF); /* fed to the reader before the next read */
}

static void conn_process(struct conn *c);

static void on_written(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct conn *c = w->conn;
    free(w->data);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        char why[96];
        snprintf(why, sizeof why, "write failed: %s", uv_strerror(status));
        conn_close(c, DLOG_INFO, why);
    }
    if (!c->closing && c->paused && uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) == 0) {
        c->paused = false;
        c->over_limit = false;
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
        conn_process(c); /* requests that arrived before the pause */
    }
    conn_unref(c);
}

/* Bound what a client that does not read can make us hold: stop reading its requests, then cancel
 * its generations, then close it. */
static void backpressure(struct conn *c)
{
    const size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
    const size_t limit = c->srv->opt->max_output;
    const size_t pause_at = limit < PAUSE_BYTES ? limit : PAUSE_BYTES;
    if (q > pause_at && !c->paused) {
        c->paused = true;
        uv_read_stop((uv_stream_t *)&c->pipe);
    }
    if (q > limit && !c->over_limit) {
        c->over_limit = true;
        dlog(DLOG_WARN, "client %u (pid %d) is not reading: %zu bytes queued (--max-output %zu); cancelling its generations",
             c->id, (int)c->pid, q, limit);
        cancel_conn_jobs(c);
    }
    if (q > 4 * limit)
        conn_close(c, DLOG_WARN, "not reading its responses");
}

/* Send one encoded message (sb is emptied). */
static void conn_send(struct conn *c, msgpack_sbuffer *sb)
{
    if (c->closing || sb->size == 0) {
        msgpack_sbuffer_destroy(sb);
        return;
    }
    struct wreq *w = malloc(sizeof *w);
    if (!w) {
        msgpack_sbuffer_destroy(sb);
        conn_close(c, DLOG_ERROR, "out of memory for a response");
        return;
    }
    const size_t len = sb->size;
    w->conn = c;
    w->data = msgpack_sbuffer_release(sb);
    const uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    const int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_written);
    if (rc) {
        free(w->data);
        free(w);
        char why[96];
        snprintf(why, sizeof why, "write failed: %s", uv_strerror(rc));
        conn_close(c, DLOG_INFO, why);
        return;
    }
    c->refs++;
    backpressure(c);
}

/* A response to a request; counts it. enc_rc is the encoder's result. */
static void respond(struct conn *c, msgpack_sbuffer *sb, int enc_rc, bool failed)
{
    struct server *s = c->srv;
    s->st.requests_total++;
    s->st.requests_failed += failed;
    if (enc_rc) {
        msgpack_sbuffer_destroy(sb);
        conn_close(c, DLOG_ERROR, "out of memory encoding a response");
        return;
    }
    conn_send(c, sb);
}

static void reply_error(struct conn *c, const struct ipc_error *e)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    respond(c, &sb, ipc_encode_error(&sb, e), true);
}

__attribute__((format(printf, 4, 5))) static void reply_code(struct conn *c, uint32_t msgid, int code,
                                                              const char *fmt, ...)
{
    struct ipc_error e = {.code = code, .has_id = true, .id = msgid};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    reply_error(c, &e);
}

/* A connection-ending error: one "error" notification if the socket takes it now, then close. */
static void close_with_notice(struct conn *c, int code, const char *message)
{
    struct ipc_error e = {.code = code};
    snprintf(e.message, sizeof e.message, "%s", message);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (!ipc_encode_error_notify(&sb, &e)) {
        const uv_buf_t b = uv_buf_init(sb.data, (unsigned)sb.size);
        uv_try_write((uv_stream_t *)&c->pipe, &b, 1); /* best effort: queued output blocks it */
    }
    msgpack_sbuffer_destroy(&sb);
    char why[300];
    snprintf(why, sizeof why, "%s: %s", ipc_code_name(code), message);
    conn_close(c, DLOG_WARN, why);
}

/* ---------------------------------------------------------------------------------------------- */
/* Unfinished requests of a connection. */

static int pend_find(const struct conn *c, uint32_t msgid)
{
    for (int i = 0; i < c->n_pend; i++)
        if (c->pend[i].msgid == msgid)
            return i;
    return -1;
}

static void pend_add(struct conn *c, uint32_t msgid, struct job *j)
{
    c->pend[c->n_pend++] = (struct pend){.msgid = msgid, .job = j};
    c->refs++;
}

static void pend_remove(struct conn *c, uint32_t msgid)
{
    const int i = pend_find(c, msgid);
    if (i >= 0)
        c->pend[i] = c->pend[--c->n_pend];
    conn_unref(c);
}

/* ---------------------------------------------------------------------------------------------- */
/* Generate. */

static uint64_t next_seed(struct server *s)
{
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void job_release(struct job *j)
{
    struct server *s = j->conn->srv;
    if (j->prev)
        j->prev->next = j->next;
    else
        s->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    s->n_jobs--;
    if (j->prompt != j->gen.tokens)
        free(j->prompt);
    struct ipc_request r = {.method = IPC_GENERATE, .u.generate = j->gen};
    ipc_request_free(&r);
    free(j->out);
    free(j->text);
    pend_remove(j->conn, j->msgid);
    free(j);
    maybe_finish(s);
}

/* The prompt's tokens are known: check them against the context and hand the job to the engine. */
static void job_ready(struct job *j)
{
    struct conn *c = j->conn;
    struct server *s = c->srv;
    if (c->closing) {
        job_release(j);
        return;
    }
    if (j->n_prompt == 0) {
        reply_code(c, j->msgid, IPC_INVALID_PARAMS, "prompt: gives no tokens (empty, and no BOS added)");
        job_release(j);
        return;
    }
    if (j->n_prompt >= s->info.n_ctx) {
        reply_code(c, j->msgid, IPC_PROMPT_TOO_LONG, "prompt: %d tokens leave no room in the %d-token context",
                   j->n_prompt, s->info.n_ctx);
        job_release(j);
        return;
    }
    j->gen.sampling.seed = j->seed;
    j->req = (struct engine_request){.prompt = j->prompt, .n_prompt = j->n_prompt,
                                     .max_tokens = j->gen.max_tokens, .sampling = j->gen.sampling,
                                     .speculative = j->gen.speculative, .draft_max = j->gen.draft_max,
                                     .seq_id = 0, .stop = (const char *const *)j->gen.stop, .n_stop = j->gen.n_stop};
    worker_submit(&s->worker, j);
}

static void job_done(struct server *s, struct job *j)
{
    struct ipc_stats *st = &s->st;
    st->requests_cancelled += j->finish == ENGINE_FINISH_CANCELLED;
    st->tokens_generated += (uint64_t)j->n_out;
    st->tokens_drafted += (uint64_t)j->stats.n_drafted;
    st->tokens_accepted += (uint64_t)j->stats.n_accepted;
    st->target_passes += (uint64_t)j->stats.n_target_passes;
    st->prompt_tokens += (uint64_t)j->stats.n_prompt;
    st->prompt_tokens_cached += (uint64_t)j->stats.n_prompt_cached;
    if (j->submitted)
        ipc_hist_observe(&st->queue_seconds, j->t_submit - j->t_recv);
    if (j->t_first > 0)
        ipc_hist_observe(&st->first_token_seconds, j->t_first - j->t_recv);
    ipc_hist_observe(&st->request_seconds, j->t_done - j->t_recv);

    struct conn *c = j->conn;
    if (j->finish == ENGINE_FINISH_ERROR) {
        const int e = j->error;
        if (e == SPEC_E_CONTEXT_FULL)
            reply_code(c, j->msgid, IPC_PROMPT_TOO_LONG, "prompt: leaves no room in the context (%s)",
                       spec_errname(e));
        else if (e == SPEC_E_RANGE || e == SPEC_E_INVALID_ARG)
            reply_code(c, j->msgid, IPC_INVALID_PARAMS, "params: refused by the engine (%s)", spec_errname(e));
        else
            reply_code(c, j->msgid, IPC_INTERNAL, "%s", spec_errname(e));
        if (e != SPEC_E_CONTEXT_FULL && e != SPEC_E_RANGE && e != SPEC_E_INVALID_ARG)
            dlog(DLOG_ERROR, "client %u: generate %u failed: %s", c->id, j->msgid, spec_errname(e));
    } else {
        static const char *const reasons[] = {[ENGINE_FINISH_STOP] = "stop", [ENGINE_FINISH_LENGTH] = "length",
                                              [ENGINE_FINISH_CANCELLED] = "cancelled"};
        const struct ipc_generate_result r = {
            .text = j->text ? j->text : "", .n_text = j->n_text, .tokens = j->out, .n_tokens = j->n_out,
            .finish_reason = reasons[j->finish], .seed = j->seed, .prompt_tokens = j->n_prompt,
            .cached_tokens = j->stats.n_prompt_cached,
            .speculative = j->gen.speculative, .drafted = j->stats.n_drafted, .accepted = j->stats.n_accepted,
            .target_passes = j->stats.n_target_passes,
            .queue_ms = j->submitted ? (j->t_submit - j->t_recv) * 1e3 : 0, .prefill_ms = j->stats.t_prefill * 1e3,
            .draft_ms = j->stats.t_draft * 1e3, .target_ms = j->stats.t_target * 1e3,
            .total_ms = (j->t_done - j->t_recv) * 1e3};
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        respond(c, &sb, ipc_encode_generate(&sb, j->msgid, &r), false);
    }
    job_release(j);
}

static void on_events(uv_async_t *a)
{
    struct server *s = a->data;
    struct event *ev = worker_take_events(&s->worker);
    while (ev) {
        struct event *next = ev->next;
        struct job *j = ev->job;
        if (ev->kind == EV_DONE) {
            job_done(s, j);
        } else {
            msgpack_sbuffer sb;
            msgpack_sbuffer_init(&sb);
            if (ipc_encode_chunk(&sb, j->msgid, ev->text, ev->n_text, ev->tokens, ev->n_tokens))
                conn_close(j->conn, DLOG_ERROR, "out of memory encoding a chunk");
            conn_send(j->conn, &sb);
            free(ev);
        }
        ev = next;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* The tokenizer on the thread pool. */

/* Tokens of text; invalid UTF-8 may need more tokens than bytes, hence the retry. */
static int encode_text(const struct tok *t, const char *text, size_t len, bool add_special, int32_t **out,
                       size_t *n)
{
    size_t cap = len + 2;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids)
            return SPEC_E_NOMEM;
        const int rc = tok_encode(t, text, len, add_special, true, ids, cap, n);
        if (!rc) {
            *out = ids;
            return SPEC_OK;
        }
        free(ids);
        if (rc != SPEC_E_RANGE)
            return rc;
        cap = *n;
    }
    return SPEC_E_RANGE;
}

/* Text of ids as valid UTF-8 (partial characters become U+FFFD), like the streamed text. */
static int decode_ids(const struct tok *t, const int32_t *ids, size_t n, char **out, size_t *len)
{
    const size_t step = tok_stream_max_out(t);
    size_t cap = step * 4 + 64, used = 0;
    char *buf = malloc(cap);
    if (!buf)
        return SPEC_E_NOMEM;
    struct tok_stream ts;
    tok_stream_init(&ts, t, false);
    for (size_t i = 0; i <= n; i++) {
        if (cap - used < step) {
            char *b = realloc(buf, cap * 2);
            if (!b) {
                free(buf);
                return SPEC_E_NOMEM;
            }
            buf = b;
            cap *= 2;
        }
        size_t k = 0;
        const int rc = i < n ? tok_stream_push(&ts, ids[i], buf + used, cap - used, &k)
                             : tok_stream_flush(&ts, buf + used, cap - used, &k);
        if (rc) {
            free(buf);
            return rc;
        }
        used += k;
    }
    *out = buf;
    *len = used;
    return SPEC_OK;
}

static void work_run(uv_work_t *req)
{
    struct work *w = req->data;
    const struct tok *t = w->srv->tok;
    if (w->job)
        w->err = encode_text(t, w->job->gen.prompt, w->job->gen.prompt_len, w->job->gen.add_special, &w->ids,
                             &w->n_ids);
    else if (w->r.method == IPC_TOKENIZE)
        w->err = encode_text(t, w->r.u.tokenize.text, w->r.u.tokenize.len, w->r.u.tokenize.add_special, &w->ids,
                             &w->n_ids);
    else
        w->err = decode_ids(t, w->r.u.detokenize.tokens, (size_t)w->r.u.detokenize.n_tokens, &w->text,
                            &w->n_text);
}

static void work_done(uv_work_t *req, int status)
{
    struct work *w = req->data;
    struct server *s = w->srv;
    struct conn *c = w->conn;
    s->n_work--;
    if (w->job) {
        struct job *j = w->job;
        if (w->err) {
            reply_code(c, j->msgid, IPC_INTERNAL, "prompt: tokenizer failed (%s)", spec_errname(w->err));
            job_release(j);
        } else {
            j->prompt = w->ids;
            j->n_prompt = w->n_ids > INT_MAX ? INT_MAX : (int)w->n_ids; /* over n_ctx either way */
            job_ready(j);
        }
    } else {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        if (w->err)
            reply_code(c, w->r.msgid, IPC_INTERNAL, "%s: %s", ipc_method_name(w->r.method), spec_errname(w->err));
        else if (w->r.method == IPC_TOKENIZE)
            respond(c, &sb, ipc_encode_tokens(&sb, w->r.msgid, w->ids, w->n_ids), false);
        else
            respond(c, &sb, ipc_encode_text(&sb, w->r.msgid, w->text, w->n_text), false);
        msgpack_sbuffer_destroy(&sb);
        free(w->ids);
        free(w->text);
        pend_remove(c, w->r.msgid);
        ipc_request_free(&w->r);
    }
    free(w);
    maybe_finish(s);
}

static int queue_work(struct server *s, struct work *w)
{
    w->req.data = w;
    const int rc = uv_queue_work(&s->loop, &w->req, work_run, work_done);
    if (rc)
        return SPEC_E_NOMEM;
    s->n_work++;
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Requests. */

/* A chat's messages become the prompt text by the target's chat template. */
static int render_messages(const struct tok *t, struct ipc_generate *g)
{
    struct tok_chat_message *m = malloc((size_t)g->n_messages * sizeof *m);
    if (!m)
        return SPEC_E_NOMEM;
    for (int i = 0; i < g->n_messages; i++)
        m[i] = (struct tok_chat_message){.role = g->messages[i].role, .content = g->messages[i].content,
                                         .content_len = g->messages[i].content_len};
    const int rc = tok_chat_render(t, m, g->n_messages, &g->prompt, &g->prompt_len);
    free(m);
    return rc;
}

static void start_generate(struct conn *c, struct ipc_request *r)
{
    struct server *s = c->srv;
    if (r->u.generate.messages) {
        const int rc = render_messages(s->tok, &r->u.generate);
        if (rc == SPEC_E_UNSUPPORTED)
            reply_code(c, r->msgid, IPC_INVALID_PARAMS,
                       "messages: the model's chat template is not one specd renders (ChatML); send a prompt");
        else if (rc)
            reply_code(c, r->msgid, IPC_INTERNAL, "messages: %s", spec_errname(rc));
        if (rc) {
            ipc_request_free(r);
            return;
        }
    }
    struct job *j = calloc(1, sizeof *j);
    struct work *w = r->u.generate.prompt ? calloc(1, sizeof *w) : NULL;
    if (!j || (r->u.generate.prompt && !w)) {
        free(j);
        free(w);
        ipc_request_free(r);
        reply_code(c, r->msgid, IPC_INTERNAL, "out of memory (SPEC_E_NOMEM)");
        return;
    }
    j->conn = c;
    j->msgid = r->msgid;
    j->gen = r->u.generate;
    j->t_recv = worker_now();
    j->seed = j->gen.has_seed ? j->gen.sampling.seed : next_seed(s);
    atomic_init(&j->cancel, false);
    j->next = s->jobs;
    if (s->jobs)
        s->jobs->prev = j;
    s->jobs = j;
    s->n_jobs++;
    pend_add(c, r->msgid, j);
    if (!w) {
        j->prompt = j->gen.tokens;
        j->n_prompt = j->gen.n_tokens;
        job_ready(j);
        return;
    }
    *w = (struct work){.srv = s, .conn = c, .job = j};
    if (queue_work(s, w)) {
        free(w);
        reply_code(c, j->msgid, IPC_INTERNAL, "cannot queue the prompt for the tokenizer");
        job_release(j);
    }
}

static void start_tokenizer_request(struct conn *c, struct ipc_request *r)
{
    struct work *w = calloc(1, sizeof *w);
    if (!w) {
        ipc_request_free(r);
        reply_code(c, r->msgid, IPC_INTERNAL, "out of memory (SPEC_E_NOMEM)");
        return;
    }
    *w = (struct work){.srv = c->srv, .conn = c, .r = *r};
    pend_add(c, r->msgid, NULL);
    if (queue_work(c->srv, w)) {
        reply_code(c, r->msgid, IPC_INTERNAL, "cannot queue the request for the tokenizer");
        ipc_request_free(&w->r);
        free(w);
        pend_remove(c, r->msgid);
    }
}

static void fill_stats(struct server *s)
{
    s->st.clients_connected = (uint64_t)s->n_conns;
    s->st.active = (uint64_t)atomic_load(&s->worker.n_active);
    s->st.queued = (uint64_t)atomic_load(&s->worker.n_queued);
    s->st.uptime_s = worker_now() - s->t_start;
}

static void handle(struct conn *c, const msgpack_object *msg)
{
    struct server *s = c->srv;
    struct ipc_request r;
    struct ipc_error err;
    if (ipc_parse_request(msg, &s->lim, &r, &err)) {
        reply_error(c, &err);
        return;
    }
    if (pend_find(c, r.msgid) >= 0) {
        reply_code(c, r.msgid, IPC_INVALID_REQUEST, "msgid: %u repeats an unfinished request", r.msgid);
        ipc_request_free(&r);
        return;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    switch (r.method) {
    case IPC_HEALTH:
        fill_stats(s);
        respond(c, &sb, ipc_encode_health(&sb, r.msgid, s->draining, s->st.active, s->st.queued, s->st.uptime_s),
                false);
        return;
    case IPC_INFO: respond(c, &sb, ipc_encode_info(&sb, r.msgid, &s->info), false); return;
    case IPC_STATS:
        fill_stats(s);
        respond(c, &sb, ipc_encode_stats(&sb, r.msgid, &s->st, r.u.stats.prometheus), false);
        return;
    case IPC_CANCEL: {
        const int i = pend_find(c, r.u.cancel.id);
        if (i < 0 || !c->pend[i].job) {
            reply_code(c, r.msgid, IPC_NOT_FOUND, "id: %u is not an unfinished generate of this connection",
                       r.u.cancel.id);
            return;
        }
        atomic_store(&c->pend[i].job->cancel, true);
        worker_wake(&s->worker);
        respond(c, &sb, ipc_encode_cancelled(&sb, r.msgid), false);
        return;
    }
    case IPC_GENERATE:
    case IPC_TOKENIZE:
    case IPC_DETOKENIZE: break;
    }
    if (s->draining) {
        reply_code(c, r.msgid, IPC_SHUTTING_DOWN, "the daemon is shutting down");
    } else if (c->n_pend >= s->opt->max_pending) {
        reply_code(c, r.msgid, IPC_BUSY, "%d requests already pending on this connection (--max-pending)",
                   c->n_pend);
    } else if (r.method == IPC_GENERATE && s->n_jobs >= s->opt->max_seqs + s->opt->max_queue) {
        reply_code(c, r.msgid, IPC_BUSY, "%d generate requests in the daemon (--max-seqs + --max-queue)",
                   s->n_jobs);
    } else if (r.method == IPC_GENERATE && c->over_limit) {
        reply_code(c, r.msgid, IPC_BUSY, "%zu bytes of output not read yet (--max-output)",
                   uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe));
    } else {
        if (r.method == IPC_GENERATE)
            start_generate(c, &r);
        else
            start_tokenizer_request(c, &r);
        return;
    }
    ipc_request_free(&r);
}

/* Handle every whole message buffered, unless output backs up or the connection closes. */
static void conn_process(struct conn *c)
{
    while (!c->closing && !c->paused) {
        const msgpack_object *msg;
        const int rc = ipc_reader_next(c->reader, &msg);
        if (rc == SPEC_E_RANGE || rc == SPEC_E_FORMAT) {
            close_with_notice(c, rc == SPEC_E_RANGE ? IPC_FRAME_TOO_LARGE : IPC_PARSE_ERROR,
                              ipc_reader_error(c->reader));
            return;
        }
        if (rc) {
            conn_close(c, DLOG_ERROR, spec_errname(rc));
            return;
        }
        if (!msg)
            return;
        handle(c, msg);
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = st->data;
    if (nread == UV_EOF) {
        conn_close(c, DLOG_DEBUG, "end of stream");
        return;
    }
    if (nread < 0) {
        char why[96];
        snprintf(why, sizeof why, "read failed: %s", uv_strerror((int)nread));
        conn_close(c, DLOG_INFO, why);
        return;
    }
    if (nread == 0)
        return;
    const int rc = ipc_reader_feed(c->reader, buf->base, (size_t)nread);
    if (rc) {
        conn_close(c, DLOG_ERROR, spec_errname(rc));
        return;
    }
    conn_process(c);
}

/* ---------------------------------------------------------------------------------------------- */
/* Accepting. */

static bool uid_allowed(const struct options *o, uid_t uid)
{
    if (uid == geteuid())
        return true;
    for (int i = 0; i < o->n_allow_uid; i++)
        if (o->allow_uid[i] == uid)
            return true;
    return false;
}

static void on_connection(uv_stream_t *l, int status)
{
    struct server *s = l->data;
    if (status < 0) {
        dlog(DLOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        dlog(DLOG_ERROR, "accept: out of memory");
        return;
    }
    c->srv = s;
    c->refs = 1;
    c->id = ++s->next_conn_id;
    uv_pipe_init(&s->loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_accept(l, (uv_stream_t *)&c->pipe)) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
        return;
    }
    uv_os_fd_t fd;
    char why[160];
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) || sock_peer(fd, &c->uid, &c->pid)) {
        s->st.connections_rejected++;
        conn_close(c, DLOG_WARN, "refused: no peer credentials");
        return;
    }
    if (!uid_allowed(s->opt, c->uid)) {
        s->st.connections_rejected++;
        snprintf(why, sizeof why, "refused: uid %u is not allowed (--allow-uid)", (unsigned)c->uid);
        conn_close(c, DLOG_WARN, why);
        return;
    }
    if (s->n_conns >= s->opt->max_clients) {
        s->st.connections_rejected++;
        snprintf(why, sizeof why, "%d clients connected (--max-clients)", s->n_conns);
        close_with_notice(c, IPC_BUSY, why);
        return;
    }
    c->pend = calloc((size_t)s->opt->max_pending, sizeof *c->pend);
    if (!c->pend || ipc_reader_new(s->opt->max_frame, &c->reader)) {
        conn_close(c, DLOG_ERROR, "out of memory");
        return;
    }
    c->listed = true;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    s->st.connections_total++;
    dlog(DLOG_DEBUG, "client %u connected: pid %d uid %u", c->id, (int)c->pid, (unsigned)c->uid);
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* ---------------------------------------------------------------------------------------------- */
/* Shutdown: stop accepting, let in-flight requests finish up to --drain-timeout, cancel the rest,
 * then close everything; libuv's loop ends when the last handle is closed. */

static void finish(struct server *s)
{
    s->finishing = true;
    worker_stop(&s->worker);
    for (struct event *ev = worker_take_events(&s->worker); ev;) { /* none expected: every job is done */
        struct event *next = ev->next;
        if (ev->kind == EV_CHUNK)
            free(ev);
        ev = next;
    }
    for (struct conn *c = s->conns; c; c = c->next)
        conn_close(c, DLOG_DEBUG, "daemon exiting");
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    dlog(DLOG_INFO, "drained; exiting");
}

static void maybe_finish(struct server *s)
{
    if (s->draining && !s->finishing && s->n_jobs == 0 && s->n_work == 0)
        finish(s);
}

static void cancel_all(struct server *s)
{
    for (struct job *j = s->jobs; j; j = j->next)
        atomic_store(&j->cancel, true);
    worker_wake(&s->worker);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct server *s = t->data;
    dlog(DLOG_WARN, "drain timeout: cancelling %d generate requests", s->n_jobs);
    cancel_all(s);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct server *s = h->data;
    if (s->draining) {
        dlog(DLOG_WARN, "%s again: cancelling %d generate requests now", strsignal(signum), s->n_jobs);
        cancel_all(s);
        return;
    }
    s->draining = true;
    dlog(DLOG_INFO, "%s: no new connections or work; draining %d generate and %d tokenizer requests (up to %g s)",
         strsignal(signum), s->n_jobs, s->n_work, s->opt->drain_timeout);
    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_timer_start(&s->drain_timer, on_drain_timeout, (uint64_t)(s->opt->drain_timeout * 1000), 0);
    maybe_finish(s);
}

/* ---------------------------------------------------------------------------------------------- */

static void model_info(const struct model *m, const char *path, struct ipc_model_info *out)
{
    const struct model_hparams *hp = model_hparams(m);
    *out = (struct ipc_model_info){.path = path, .arch = model_arch_name(hp->arch), .n_vocab = hp->n_vocab,
                                   .n_ctx_train = hp->n_ctx_train, .n_layer = hp->n_layer, .n_embd = hp->n_embd};
}

int server_run(const struct options *opt, const struct server_models *m, int listen_fd)
{
    struct server *s = calloc(1, sizeof *s);
    if (!s)
        return SPEC_E_NOMEM;
    s->opt = opt;
    s->m = m;
    s->tok = model_tokenizer(m->target);
    s->t_start = worker_now();
    s->rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    model_info(m->target, opt->target, &s->info.target);
    if (m->draft) {
        model_info(m->draft, opt->draft, &s->draft_info);
        s->info.draft = &s->draft_info;
    }
    s->info.version = SPECD_VERSION;
    s->info.backend = m->backend;
    s->info.n_ctx = engine_n_ctx(m->engine);
    s->info.max_seqs = engine_max_seqs(m->engine);
    s->info.max_clients = opt->max_clients;
    s->info.max_queue = opt->max_queue;
    s->info.max_pending_per_client = opt->max_pending;
    s->info.draft_max = opt->draft_max;
    s->info.max_frame = opt->max_frame;
    s->lim = (struct ipc_limits){.n_vocab = model_n_vocab(m->target), .n_ctx = s->info.n_ctx,
                                 .draft_max = opt->draft_max};

    int rc = uv_loop_init(&s->loop);
    if (rc) {
        dlog(DLOG_ERROR, "event loop: %s", uv_strerror(rc));
        free(s);
        return SPEC_E_IO;
    }
    uv_pipe_init(&s->loop, &s->listener, 0);
    uv_async_init(&s->loop, &s->wake, on_events);
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    uv_timer_init(&s->loop, &s->drain_timer);
    s->listener.data = s->wake.data = s->sigterm.data = s->sigint.data = s->drain_timer.data = s;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    if ((rc = uv_pipe_open(&s->listener, listen_fd)) || (rc = uv_listen((uv_stream_t *)&s->listener, SOMAXCONN,
                                                                           on_connection))) {
        dlog(DLOG_ERROR, "listen: %s", uv_strerror(rc));
        s->draining = true;
        uv_close((uv_handle_t *)&s->listener, NULL);
    }
    int err = rc ? SPEC_E_IO : worker_start(&s->worker, m->engine, &s->wake);
    if (err) {
        if (!rc)
            dlog(DLOG_ERROR, "engine thread: %s", spec_errname(err));
        if (!s->draining)
            uv_close((uv_handle_t *)&s->listener, NULL);
        uv_close((uv_handle_t *)&s->wake, NULL);
        uv_close((uv_handle_t *)&s->sigterm, NULL);
        uv_close((uv_handle_t *)&s->sigint, NULL);
        uv_close((uv_handle_t *)&s->drain_timer, NULL);
    } else {
        dlog(DLOG_INFO, "ready: n_ctx %d, max_seqs %d, max_clients %d", s->info.n_ctx, s->info.max_seqs,
             opt->max_clients);
    }
    uv_run(&s->loop, UV_RUN_DEFAULT);
    if ((rc = uv_loop_close(&s->loop)))
        dlog(DLOG_ERROR, "event loop did not close: %s", uv_strerror(rc));
    free(s);
    return err;
}
