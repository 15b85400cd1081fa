/* specd, the daemon: internal interfaces between its parts.
 *
 * Threads: the libuv loop (main thread) owns every socket, connection and buffer and never computes;
 * ONE engine thread (worker.c) owns the engine and the models' forward passes. They meet in struct
 * worker: the loop hands over generate jobs under its mutex and signals a condition variable; the
 * engine thread hands back events (stream chunks, the final result) under the same mutex and wakes
 * the loop with uv_async_send(). Tokenizing and detokenizing run on libuv's thread pool (the
 * tokenizer is immutable and thread-safe), so a 1 MiB prompt neither stalls the loop nor the batch. */
#ifndef SPECD_DAEMON_DAEMON_H
#define SPECD_DAEMON_DAEMON_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "engine/engine.h"
#include "ipc/ipc.h"

#define SPECD_VERSION "0.4.0"

/* ---------------------------------------------------------------------------------------------- */
/* Logging to stderr (log.c); safe from any thread. */
enum dlog_level { DLOG_ERROR = 0, DLOG_WARN, DLOG_INFO, DLOG_DEBUG };

void dlog_set_level(enum dlog_level l);
int dlog_parse_level(const char *s, enum dlog_level *out);
void dlog(enum dlog_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------------------------------------- */
/* Options (main.c). */
#define OPT_MAX_ALLOW_UID 16

struct options {
    const char *target, *draft;
    char socket_path[108]; /* sun_path */
    unsigned socket_mode;
    uid_t allow_uid[OPT_MAX_ALLOW_UID];
    int n_allow_uid;
    const char *device;
    bool cuda_graphs, tensor_cores, blas_prefill; /* kern_backend_config.graphs, .tensor_cores, .blas_prefill */
    int gpu_memory_mib;                           /* kern_backend_config.device_bytes in MiB; 0: no cap */
    bool ctx_given;
    int n_ctx, draft_max, draft_min, draft_vocab, max_seqs, max_clients, max_queue, max_pending, threads;
    size_t max_frame;
    size_t max_output; /* per client: queued output past which its generations are cancelled */
    double drain_timeout;
};

/* ---------------------------------------------------------------------------------------------- */
/* The listening socket (sock.c). */

/* The systemd-activated socket (LISTEN_PID/LISTEN_FDS naming this process, one AF_UNIX stream
 * socket on fd 3): *fd set, or -1 when not activated. SPEC_E_INVALID_ARG when the passed fds are not
 * one listening Unix stream socket. */
int sock_activated(int *fd);

/* Bind and listen on path with mode. A socket file left by a dead daemon (nothing accepts on it) is
 * removed first; SPEC_E_BUSY when a live daemon answers, SPEC_E_DUPLICATE when path exists and is not
 * a socket. *ino identifies the file for sock_remove(). */
int sock_listen(const char *path, unsigned mode, int *fd, ino_t *ino);

/* Unlink path if it is still the socket file we created. */
void sock_remove(const char *path, ino_t ino);

/* The peer's uid and pid (SO_PEERCRED). */
int sock_peer(int fd, uid_t *uid, pid_t *pid);

/* ---------------------------------------------------------------------------------------------- */
/* A generate request on its way through the engine (worker.c). Fields are grouped by who may touch
 * them when; the hand-over points are the worker's mutex (submit, event delivery). */
struct conn;
struct job;
struct worker;

enum event_kind { EV_CHUNK = 0, EV_DONE };

/* From the engine thread to the loop. A chunk's tokens and text live in the same allocation. */
struct event {
    enum event_kind kind;
    struct job *job;
    struct event *next;
    int n_tokens;
    size_t n_text;
    int32_t *tokens;
    char *text;
};

struct job {
    /* Set by the loop before worker_submit(); read-only afterwards. */
    struct conn *conn;
    uint32_t msgid;
    struct ipc_generate gen; /* the parsed params (prompt text, stop strings) */
    int32_t *prompt;         /* tokenized prompt (or gen.tokens) */
    int n_prompt;
    struct engine_request req;
    uint64_t seed;
    double t_recv;

    atomic_bool cancel; /* set by the loop (cancel, disconnect, drain, backpressure) */

    /* The engine thread's until the job's done event, then the loop's. */
    struct worker *worker;
    uint32_t engine_id;
    bool submitted, cancel_sent, finished;
    int fail;          /* a daemon-side error (memory) that ends the job as ENGINE_FINISH_ERROR */
    int32_t *out;      /* every accepted token */
    int n_out;
    size_t cap_out;
    char *text;        /* every text delta */
    size_t n_text, cap_text;
    double t_submit, t_first, t_done;
    enum engine_finish finish;
    int error;
    struct engine_stats stats;
    struct job *wnext; /* inbox, waiting and active lists */
    struct event done_ev; /* the last event, part of the job so that sending it cannot fail */

    /* The loop's. */
    struct job *prev, *next; /* server-wide list of unfinished jobs */
};

struct worker {
    struct engine *engine;
    uv_async_t *wake_loop;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* Under mu. */
    struct job *inbox, *inbox_tail;
    struct event *events, *events_tail;
    bool stop;
    /* Published for stats and health. */
    atomic_int n_active, n_queued;
    /* The engine thread's. */
    struct job *waiting, *waiting_tail, *active;
};

/* Monotonic seconds: the clock of every job timestamp. */
double worker_now(void);
/* Start the engine thread; wake_loop is sent whenever events are ready. */
int worker_start(struct worker *w, struct engine *e, uv_async_t *wake_loop);
/* Queue a job; it joins the batch when a slot is free. */
void worker_submit(struct worker *w, struct job *j);
/* Make the engine thread look at cancel flags now. */
void worker_wake(struct worker *w);
/* Take every pending event, oldest first (the caller frees chunks with free(); a done event lives
 * inside its job). */
struct event *worker_take_events(struct worker *w);
/* Let the engine thread finish (every job must be done) and join it. */
void worker_stop(struct worker *w);

/* ---------------------------------------------------------------------------------------------- */
/* The server (server.c). */
struct server_models {
    struct model *target, *draft;
    struct engine *engine;
    const char *backend;
};

/* Serve on listen_fd until SIGTERM/SIGINT and the drain; 0 on a clean exit. */
int server_run(const struct options *opt, const struct server_models *m, int listen_fd);

#endif
