/* The engine thread: it alone calls the engine. Jobs come in through the inbox; while fewer than
 * max_seqs are active, waiting jobs are submitted (continuous batching: they join between rounds);
 * engine_step() runs while anything is active; with nothing to do the thread sleeps on the
 * condition variable. Updates go back to the loop as events. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "daemon/daemon.h"

double worker_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void post(struct worker *w, struct event *ev)
{
    pthread_mutex_lock(&w->mu);
    if (w->events_tail)
        w->events_tail->next = ev;
    else
        w->events = ev;
    w->events_tail = ev;
    pthread_mutex_unlock(&w->mu);
    uv_async_send(w->wake_loop);
}

/* The job's last event; after it the job belongs to the loop. */
static void post_done(struct worker *w, struct job *j)
{
    j->t_done = worker_now();
    if (j->fail && j->finish != ENGINE_FINISH_ERROR) {
        j->finish = ENGINE_FINISH_ERROR;
        j->error = j->fail;
    }
    j->done_ev = (struct event){.kind = EV_DONE, .job = j};
    post(w, &j->done_ev);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

/* engine_update_fn: runs inside engine_step() on the engine thread. */
static int on_update(void *user, const struct engine_update *u)
{
    struct job *j = user;
    struct worker *w = j->worker;
    if (u->n_tokens > 0 && j->t_first == 0)
        j->t_first = worker_now();
    if (!j->fail && (!grow((void **)&j->out, &j->cap_out, (size_t)j->n_out + (size_t)u->n_tokens, sizeof *j->out) ||
                     !grow((void **)&j->text, &j->cap_text, j->n_text + u->n_text + 1, 1)))
        j->fail = SPEC_E_NOMEM;
    if (!j->fail) {
        memcpy(j->out + j->n_out, u->tokens, (size_t)u->n_tokens * sizeof *u->tokens);
        j->n_out += u->n_tokens;
        memcpy(j->text + j->n_text, u->text, u->n_text);
        j->n_text += u->n_text;
        if (j->gen.stream && (u->n_tokens > 0 || u->n_text > 0)) {
            const size_t tok_bytes = (size_t)u->n_tokens * sizeof(int32_t);
            struct event *ev = malloc(sizeof *ev + tok_bytes + u->n_text);
            if (ev) {
                *ev = (struct event){.kind = EV_CHUNK, .job = j, .n_tokens = u->n_tokens, .n_text = u->n_text};
                ev->tokens = (int32_t *)(ev + 1);
                ev->text = (char *)ev->tokens + tok_bytes;
                memcpy(ev->tokens, u->tokens, tok_bytes);
                memcpy(ev->text, u->text, u->n_text);
                post(w, ev);
            } else {
                j->fail = SPEC_E_NOMEM;
            }
        }
    }
    if (u->done) {
        j->finish = u->finish;
        j->error = u->error;
        j->stats = *u->stats;
        j->finished = true;
    }
    return j->fail ? 1 : 0; /* a job that lost data must end rather than stream with a hole */
}

static void publish(struct worker *w, int n_waiting)
{
    atomic_store(&w->n_active, engine_n_active(w->engine));
    atomic_store(&w->n_queued, n_waiting);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct engine *e = w->engine;
    int n_waiting = 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        /* Take new jobs (FIFO). */
        while (w->inbox) {
            struct job *j = w->inbox;
            w->inbox = j->wnext;
            j->wnext = NULL;
            if (w->waiting_tail)
                w->waiting_tail->wnext = j;
            else
                w->waiting = j;
            w->waiting_tail = j;
            n_waiting++;
        }
        if (!w->inbox)
            w->inbox_tail = NULL;
        const bool idle = !w->waiting && !w->active;
        if (idle && w->stop)
            break;
        if (idle) {
            publish(w, 0);
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        pthread_mutex_unlock(&w->mu);

        /* Cancelled before they got a slot: finish them now rather than when a slot frees. */
        for (struct job **pp = &w->waiting, *prev = NULL; *pp;) {
            struct job *j = *pp;
            if (!atomic_load(&j->cancel)) {
                prev = j;
                pp = &j->wnext;
                continue;
            }
            *pp = j->wnext;
            if (w->waiting_tail == j)
                w->waiting_tail = prev;
            n_waiting--;
            j->finish = ENGINE_FINISH_CANCELLED;
            post_done(w, j);
        }
        for (struct job *j = w->active; j; j = j->wnext)
            if (atomic_load(&j->cancel) && !j->cancel_sent) {
                engine_cancel(e, j->engine_id);
                j->cancel_sent = true;
            }

        /* Join the batch while there is room. */
        while (w->waiting && engine_n_active(e) < engine_max_seqs(e)) {
            struct job *j = w->waiting;
            j->t_submit = worker_now();
            const int rc = engine_submit(e, &j->req, on_update, j, &j->engine_id);
            if (rc == SPEC_E_BUSY)
                break;
            w->waiting = j->wnext;
            if (!w->waiting)
                w->waiting_tail = NULL;
            n_waiting--;
            if (rc) {
                j->finish = ENGINE_FINISH_ERROR;
                j->error = rc;
                post_done(w, j);
                continue;
            }
            j->submitted = true;
            j->wnext = w->active;
            w->active = j;
        }
        publish(w, n_waiting);

        if (engine_n_active(e) > 0) {
            const int rc = engine_step(e);
            if (rc)
                dlog(DLOG_ERROR, "engine step: %s", spec_errname(rc));
        }
        /* Hand finished jobs back; after post_done the job is the loop's. */
        for (struct job **pp = &w->active; *pp;) {
            struct job *j = *pp;
            if (!j->finished) {
                pp = &j->wnext;
                continue;
            }
            *pp = j->wnext;
            post_done(w, j);
        }
        publish(w, n_waiting);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int worker_start(struct worker *w, struct engine *e, uv_async_t *wake_loop)
{
    *w = (struct worker){.engine = e, .wake_loop = wake_loop};
    if (pthread_mutex_init(&w->mu, NULL))
        return SPEC_E_NOMEM;
    if (pthread_cond_init(&w->cv, NULL)) {
        pthread_mutex_destroy(&w->mu);
        return SPEC_E_NOMEM;
    }
    if (pthread_create(&w->thread, NULL, worker_main, w)) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        return SPEC_E_NOMEM;
    }
    return SPEC_OK;
}

void worker_submit(struct worker *w, struct job *j)
{
    j->worker = w;
    j->wnext = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->inbox_tail)
        w->inbox_tail->wnext = j;
    else
        w->inbox = j;
    w->inbox_tail = j;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void worker_wake(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

struct event *worker_take_events(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    struct event *ev = w->events;
    w->events = w->events_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return ev;
}

void worker_stop(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}
