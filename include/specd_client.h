/* libspecd-client: the C client of the specd daemon (docs/protocol.md, protocol version 1).
 *
 * Link build/libspecd-client.a and -lmsgpackc; nothing else of specd is needed.
 *
 *     struct spc_client *c;
 *     if (spc_connect(NULL, &c) == SPC_OK) {             // default socket, no timeout
 *         struct spc_gen_params p = spc_gen_params_default();
 *         p.prompt = "Once upon a time";
 *         struct spc_gen_result *r;
 *         if (spc_generate(c, &p, print_chunk, NULL, &r) == SPC_OK)  // callback NULL: not streamed
 *             spc_free(r);
 *         spc_close(c);
 *     }
 *
 * Every call returns SPC_OK (0) or a negative enum spc_err and fills its out-parameters only on
 * success. SPC_E_DAEMON means the daemon answered with an error response: spc_last_error() holds its
 * {code, name, message}; the connection stays usable. SPC_E_IO, SPC_E_TIMEOUT, SPC_E_PROTOCOL and
 * SPC_E_FRAME_TOO_LARGE leave the stream in an unknown place, and so does SPC_E_DAEMON when it comes
 * from the daemon's "error" notification (sent before it closes a connection) or from an error
 * response without a msgid: then the connection is closed and every later call returns SPC_E_CLOSED.
 *
 * Results are single allocations owned by the caller: release each with spc_free().
 *
 * Memory is bounded whatever the daemon sends: one message may hold at most max_frame bytes (checked
 * from its headers before the bytes arrive, so a declared 4 GiB string or array is refused at once),
 * decoding it allocates at most a small multiple of that, and the messages held back while another
 * call waits (chunks of a generate in flight) are limited to max_frame bytes in total.
 *
 * Threads: a connection is not thread-safe; use one connection per thread (or serialise every call
 * on it). Distinct connections are independent; the library has no global state. Writes use
 * MSG_NOSIGNAL, so a daemon that goes away yields SPC_E_IO, never SIGPIPE. */
#ifndef SPECD_CLIENT_H
#define SPECD_CLIENT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPC_PROTOCOL_VERSION 1
/* A client's default bound on one message from the daemon. Larger than the daemon's default
 * --max-frame (which bounds what the daemon reads) because a long generate's result carries its text
 * and its token ids. */
#define SPC_DEFAULT_MAX_FRAME (16u << 20)

enum spc_err {
    SPC_OK = 0,
    SPC_E_DAEMON = -1,          /* the daemon answered with an error: see spc_last_error() */
    SPC_E_CONNECT = -2,         /* nothing accepts connections on the socket (errno says why) */
    SPC_E_IO = -3,              /* a read or write failed, or the daemon closed the connection */
    SPC_E_TIMEOUT = -4,         /* the daemon sent or accepted no byte within timeout_ms */
    SPC_E_PROTOCOL = -5,        /* the daemon sent something that breaks the protocol */
    SPC_E_FRAME_TOO_LARGE = -6, /* a message (or the messages held back) over max_frame bytes */
    SPC_E_NOMEM = -7,           /* allocation failed */
    SPC_E_INVALID_ARG = -8,     /* bad arguments, or a call that the connection's state forbids */
    SPC_E_CLOSED = -9,          /* an earlier error closed this connection: reconnect */
};

/* Stable short description of an error, never NULL. */
const char *spc_strerror(int err);

/* The daemon's error codes (docs/protocol.md, "Error codes"). */
enum spc_code {
    SPC_CODE_PARSE_ERROR = -32700,
    SPC_CODE_INVALID_REQUEST = -32600,
    SPC_CODE_METHOD_NOT_FOUND = -32601,
    SPC_CODE_INVALID_PARAMS = -32602,
    SPC_CODE_PROMPT_TOO_LONG = 1,
    SPC_CODE_BUSY = 2,
    SPC_CODE_NOT_FOUND = 3,
    SPC_CODE_FRAME_TOO_LARGE = 4,
    SPC_CODE_SHUTTING_DOWN = 5,
    SPC_CODE_INTERNAL = 6,
};

/* An error as the daemon sent it; name and message are cut to their buffers, always NUL-terminated. */
struct spc_error {
    int64_t code;
    char name[32];
    char message[512];
};

struct spc_options {
    const char *socket_path; /* NULL: spc_default_socket_path() */
    int timeout_ms;          /* longest wait for the daemon to send or accept a byte; 0: wait forever.
                                A non-streamed generate sends nothing until it ends: be generous. */
    size_t max_frame;        /* largest message accepted from the daemon; 0: SPC_DEFAULT_MAX_FRAME */
};

struct spc_client;

/* $XDG_RUNTIME_DIR/specd.sock when that variable is set and not empty, else /tmp/specd-$UID.sock.
 * SPC_E_INVALID_ARG when it does not fit in cap bytes. */
int spc_default_socket_path(char *buf, size_t cap);

/* Connects to the daemon (opt NULL: every option's default). SPC_E_CONNECT when nothing listens
 * there (errno is kept from connect()); SPC_E_INVALID_ARG for a path too long for a Unix socket. */
int spc_connect(const struct spc_options *opt, struct spc_client **out);
void spc_close(struct spc_client *c);

/* The error of the last SPC_E_DAEMON on c (code 0 and empty strings before any). */
const struct spc_error *spc_last_error(const struct spc_client *c);

/* Releases any result of this library. */
void spc_free(void *result);

/* ---- generate ---- */

#define SPC_UNSET INT_MIN /* an int parameter left to the daemon's default */

/* A chat turn: role "system", "user" or "assistant". */
struct spc_message {
    const char *role;
    const char *content;
};

/* Parameters of a generate; exactly one of prompt, tokens and messages. Every parameter left as
 * spc_gen_params_default() sets it is not sent, so the daemon's default applies. */
struct spc_gen_params {
    const char *prompt;            /* UTF-8 text, or NULL */
    const int32_t *tokens;         /* token ids instead of a prompt */
    size_t n_tokens;
    const struct spc_message *messages; /* chat turns instead of a prompt: the daemon renders them with
                                         * the model's chat template */
    size_t n_messages;
    int max_tokens, top_k, draft_max; /* SPC_UNSET */
    double temperature, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty; /* NAN */
    bool has_seed;                 /* false: the daemon picks a seed (echoed in the result) */
    uint64_t seed;
    const char *const *stop;       /* n_stop stop strings */
    size_t n_stop;
    int add_special, speculative;  /* -1 (daemon default), 0 false or 1 true */
};
struct spc_gen_params spc_gen_params_default(void);

enum spc_finish { SPC_FINISH_STOP, SPC_FINISH_LENGTH, SPC_FINISH_CANCELLED };
/* "stop", "length", "cancelled". */
const char *spc_finish_name(enum spc_finish f);

struct spc_gen_result {
    char *text;                    /* NUL-terminated; text_len bytes (the text may hold NUL bytes) */
    size_t text_len;
    int32_t *tokens;
    size_t n_tokens;
    enum spc_finish finish;
    uint64_t seed;
    int64_t prompt_tokens, completion_tokens;
    int64_t cached_tokens; /* prompt tokens the daemon had kept from an earlier request (no prefill) */
    struct {
        bool enabled;
        int64_t drafted, accepted, target_passes;
        double acceptance, tokens_per_pass;
    } spec;
    struct {
        double queue_ms, prefill_ms, draft_ms, target_ms, total_ms;
    } timing;
};

/* A streamed piece of a generate: whole UTF-8 characters and the token ids they came from.
 * Owned by the connection. */
struct spc_chunk {
    uint32_t id;                   /* the generate's msgid */
    const char *text;              /* NUL-terminated; text_len bytes */
    size_t text_len;
    const int32_t *tokens;
    size_t n_tokens;
};

/* Called for each chunk of a streamed generate; a non-zero return cancels the generate (the
 * callback is not called again and the result comes with finish SPC_FINISH_CANCELLED, unless the
 * generate ended first). */
typedef int (*spc_chunk_fn)(void *user, const struct spc_chunk *chunk);

/* One generate, blocking until its result: streamed when on_chunk is not NULL. */
int spc_generate(struct spc_client *c, const struct spc_gen_params *p, spc_chunk_fn on_chunk, void *user,
                 struct spc_gen_result **out);

/* The same in steps, so that a caller can cancel, or make other calls on c, while it runs. One
 * generate may be in flight per connection (SPC_E_INVALID_ARG for a second). *id receives its msgid. */
int spc_generate_start(struct spc_client *c, const struct spc_gen_params *p, bool stream, uint32_t *id);
/* Waits for the next event of the generate in flight: either *chunk is set (owned by c, valid until
 * the next call on c) and *result is NULL, or *result is set to the final result (the caller frees it)
 * and *chunk is NULL, and no generate is in flight any more. An error response also ends it. */
int spc_generate_next(struct spc_client *c, const struct spc_chunk **chunk, struct spc_gen_result **result);
/* Cancels the generate in flight whose msgid is id; its result (finish SPC_FINISH_CANCELLED) then
 * comes from spc_generate_next. SPC_E_DAEMON with SPC_CODE_NOT_FOUND when it had already ended. */
int spc_cancel(struct spc_client *c, uint32_t id);

/* ---- other methods ---- */

/* add_special: -1 daemon default (false), 0 or 1. *tokens is freed with spc_free. */
int spc_tokenize(struct spc_client *c, const char *text, int add_special, int32_t **tokens, size_t *n_tokens);
/* *text is NUL-terminated (freed with spc_free); len may be NULL. */
int spc_detokenize(struct spc_client *c, const int32_t *tokens, size_t n_tokens, char **text, size_t *len);

struct spc_model_info {
    const char *path, *arch;
    int64_t n_vocab, n_ctx_train, n_layer, n_embd;
};

struct spc_info {
    const char *version;
    int64_t protocol;
    const char *backend;           /* "cpu" or "cuda" */
    struct spc_model_info target;
    bool has_draft;                /* false: drafts come from prompt lookup */
    struct spc_model_info draft;
    struct {
        int64_t n_ctx, max_seqs, max_clients, max_queue, max_pending_per_client, max_frame, draft_max,
            max_stop, max_stop_len;
    } limits;
};
int spc_info(struct spc_client *c, struct spc_info **out);

struct spc_histogram {
    size_t n_buckets;
    struct spc_bucket {
        double le;                 /* upper bound; INFINITY for the last */
        uint64_t count;            /* cumulative, as in Prometheus */
    } *buckets;
    double sum;
    uint64_t count;
};

struct spc_stats {
    /* Counters since start. */
    uint64_t requests_total, requests_failed, requests_cancelled, tokens_generated, tokens_drafted,
        tokens_accepted, target_passes, prompt_tokens, prompt_tokens_cached, connections_total,
        connections_rejected;
    /* Gauges. */
    uint64_t clients_connected, active, queued;
    double uptime_s;
    /* Latencies of generates from receipt, in seconds. */
    struct spc_histogram queue_seconds, first_token_seconds, request_seconds;
};
int spc_stats(struct spc_client *c, struct spc_stats **out);
/* The same in the Prometheus text exposition format; *text is freed with spc_free. */
int spc_stats_prometheus(struct spc_client *c, char **text);

struct spc_health {
    bool draining;                 /* status "draining" (else "ok"): no new work is accepted */
    int64_t active, queued;
    double uptime_s;
};
int spc_health(struct spc_client *c, struct spc_health *out);

#ifdef __cplusplus
}
#endif

#endif
