/* The wire codec of docs/protocol.md: MessagePack-RPC frames in, typed requests out, responses and
 * notifications back into buffers. No I/O and no threads here; the daemon owns the sockets.
 *
 * Reading: bytes are fed as they arrive and whole messages come out one at a time. msgpack-c's
 * unpacker allocates an array's or map's element table as soon as it reads the header, so an
 * array32 header claiming 4 G elements would ask for 64 GiB. The reader therefore scans every
 * frame itself first: each declared length or count must fit in what is left of --max-frame (every
 * element takes at least one byte), nesting is capped, and only a complete, bounded frame is handed
 * to msgpack-c. Decoding one frame then allocates at most 16 bytes per frame byte. */
#ifndef SPECD_IPC_IPC_H
#define SPECD_IPC_IPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "verify/verify.h"

#define IPC_PROTOCOL_VERSION 1
#define IPC_DEFAULT_MAX_FRAME (1u << 20)
/* Stop strings per generate and bytes per stop string (the daemon checks the engine takes as many). */
#define IPC_MAX_STOP 8
#define IPC_MAX_STOP_LEN 128
/* Chat turns per generate. */
#define IPC_MAX_MESSAGES 256
/* Deepest nesting the reader accepts; the protocol needs 5 ([0, id, m, [{"messages": [{..}]}]]). */
#define IPC_MAX_DEPTH 16

/* ---------------------------------------------------------------------------------------------- */
/* Protocol error codes (docs/protocol.md, "Error codes"). */
enum ipc_code {
    IPC_PARSE_ERROR = -32700,
    IPC_INVALID_REQUEST = -32600,
    IPC_METHOD_NOT_FOUND = -32601,
    IPC_INVALID_PARAMS = -32602,
    IPC_PROMPT_TOO_LONG = 1,
    IPC_BUSY = 2,
    IPC_NOT_FOUND = 3,
    IPC_FRAME_TOO_LARGE = 4,
    IPC_SHUTTING_DOWN = 5,
    IPC_INTERNAL = 6,
};

/* "PARSE_ERROR", ...; "INTERNAL" for a code not in the table. */
const char *ipc_code_name(int code);

/* An error to send: a response to msgid (nil when the request had no usable msgid) or, for the
 * connection-closing errors, an "error" notification. */
struct ipc_error {
    int code;
    bool has_id;
    uint32_t id;
    char message[240]; /* names the offending field or limit */
};

/* Fill e (printf-style message). */
void ipc_error_set(struct ipc_error *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------------------------------------- */
/* Frame reader. */
struct ipc_reader;

/* max_frame: largest message in bytes (>= 16). */
int ipc_reader_new(size_t max_frame, struct ipc_reader **out);
void ipc_reader_free(struct ipc_reader *r);

/* Append received bytes. Call ipc_reader_next() until it yields no message before feeding again, so
 * that at most one partial frame (< max_frame bytes) plus one read stays buffered. SPEC_E_NOMEM. */
int ipc_reader_feed(struct ipc_reader *r, const void *data, size_t n);

/* The next whole message: 0 with *msg pointing at it (valid until the next feed or next call), or 0
 * with *msg = NULL when more bytes are needed. SPEC_E_FORMAT: the bytes are not MessagePack (or nest
 * deeper than IPC_MAX_DEPTH); SPEC_E_RANGE: the message is, or declares itself, larger than
 * max_frame; SPEC_E_NOMEM. After an error the reader stays failed and returns it again;
 * ipc_reader_error() says why. */
int ipc_reader_next(struct ipc_reader *r, const msgpack_object **msg);

/* Why the reader failed, for logs and the error notification; "" while it has not. */
const char *ipc_reader_error(const struct ipc_reader *r);

/* Bytes held: the unfinished frame and anything fed after it. */
size_t ipc_reader_buffered(const struct ipc_reader *r);

/* ---------------------------------------------------------------------------------------------- */
/* Requests. */
enum ipc_method {
    IPC_GENERATE = 0,
    IPC_CANCEL,
    IPC_TOKENIZE,
    IPC_DETOKENIZE,
    IPC_INFO,
    IPC_STATS,
    IPC_HEALTH,
};

const char *ipc_method_name(enum ipc_method m);

/* Daemon-dependent bounds the parameter checks need. */
struct ipc_limits {
    int n_vocab;   /* token ids are 0 .. n_vocab-1 */
    int n_ctx;     /* max_tokens <= n_ctx */
    int draft_max; /* draft_max <= this */
};

/* A chat turn: role is "system", "user" or "assistant". */
struct ipc_message {
    char role[16];
    char *content;      /* NUL-terminated copy (may hold NULs: use content_len) */
    size_t content_len;
};

struct ipc_generate {
    char *prompt;       /* NUL-terminated copy (may hold NULs: use prompt_len); NULL with tokens */
    size_t prompt_len;
    int32_t *tokens;    /* ids instead of a prompt; NULL with prompt */
    int n_tokens;
    struct ipc_message *messages; /* chat turns instead of a prompt, for the model's chat template */
    int n_messages;
    bool add_special;
    int max_tokens;
    struct verify_params sampling;
    bool has_seed;      /* false: sampling.seed is 0 and the daemon picks one */
    char **stop;        /* n_stop NUL-terminated strings of 1..IPC_MAX_STOP_LEN bytes */
    int n_stop;
    bool stream;
    bool speculative;
    int draft_max;      /* 0: the daemon's */
};

struct ipc_request {
    uint32_t msgid;
    enum ipc_method method;
    union {
        struct ipc_generate generate;
        struct {
            uint32_t id;
        } cancel;
        struct {
            char *text;
            size_t len;
            bool add_special;
        } tokenize;
        struct {
            int32_t *tokens;
            int n_tokens;
        } detokenize;
        struct {
            bool prometheus;
        } stats;
    } u;
};

/* Validate msg as [0, msgid, method, params] and its params as docs/protocol.md says, into req
 * (which the caller releases with ipc_request_free()). A bad request is SPEC_E_FORMAT with err set:
 * INVALID_REQUEST (err->has_id when a msgid could be read), METHOD_NOT_FOUND or INVALID_PARAMS, the
 * message naming the field. SPEC_E_NOMEM (err set to INTERNAL). */
int ipc_parse_request(const msgpack_object *msg, const struct ipc_limits *lim, struct ipc_request *req,
                      struct ipc_error *err);
void ipc_request_free(struct ipc_request *req);

/* ---------------------------------------------------------------------------------------------- */
/* Latency histograms: per-bucket counts over fixed upper bounds in seconds, the last bucket +Inf. */
#define IPC_HIST_BUCKETS 15
extern const double ipc_hist_bounds[IPC_HIST_BUCKETS - 1];

struct ipc_hist {
    uint64_t bucket[IPC_HIST_BUCKETS];
    uint64_t count;
    double sum;
};

void ipc_hist_observe(struct ipc_hist *h, double seconds);

struct ipc_stats {
    uint64_t requests_total;     /* requests answered, every method */
    uint64_t requests_failed;    /* answered with an error */
    uint64_t requests_cancelled; /* generates that ended cancelled */
    uint64_t tokens_generated;
    uint64_t tokens_drafted;
    uint64_t tokens_accepted;
    uint64_t target_passes;
    uint64_t prompt_tokens;      /* prompt tokens of finished generates */
    uint64_t prompt_tokens_cached; /* of those, the ones kept from an earlier request (no prefill) */
    uint64_t clients_connected;  /* now */
    uint64_t connections_total;  /* accepted since start */
    uint64_t connections_rejected;
    uint64_t active;             /* generates in the batch now */
    uint64_t queued;             /* generates waiting for a slot now */
    double uptime_s;
    struct ipc_hist queue_seconds;
    struct ipc_hist first_token_seconds;
    struct ipc_hist request_seconds;
};

/* The Prometheus text exposition of s (NUL-terminated, malloc'd: the caller frees). */
int ipc_stats_prometheus(const struct ipc_stats *s, char **text, size_t *len);

/* ---------------------------------------------------------------------------------------------- */
/* Encoders: each appends one whole message to sb, or nothing (SPEC_E_NOMEM). */

int ipc_encode_error(msgpack_sbuffer *sb, const struct ipc_error *e);        /* [1, id|nil, {..}, nil] */
int ipc_encode_error_notify(msgpack_sbuffer *sb, const struct ipc_error *e); /* [2, "error", [{..}]] */

int ipc_encode_chunk(msgpack_sbuffer *sb, uint32_t id, const char *text, size_t n_text, const int32_t *tokens,
                     int n_tokens);

struct ipc_generate_result {
    const char *text;
    size_t n_text;
    const int32_t *tokens;
    int n_tokens;
    const char *finish_reason; /* "stop" | "length" | "cancelled" */
    uint64_t seed;
    int prompt_tokens;
    int cached_tokens; /* prompt tokens whose KV rows were kept from an earlier request */
    bool speculative;
    int drafted, accepted, target_passes;
    double queue_ms, prefill_ms, draft_ms, target_ms, total_ms;
};

int ipc_encode_generate(msgpack_sbuffer *sb, uint32_t id, const struct ipc_generate_result *r);
int ipc_encode_cancelled(msgpack_sbuffer *sb, uint32_t id);
int ipc_encode_tokens(msgpack_sbuffer *sb, uint32_t id, const int32_t *tokens, size_t n);
int ipc_encode_text(msgpack_sbuffer *sb, uint32_t id, const char *text, size_t n);

struct ipc_model_info {
    const char *path;
    const char *arch;
    int n_vocab, n_ctx_train, n_layer, n_embd;
};

struct ipc_info {
    const char *version;
    const char *backend;
    struct ipc_model_info target;
    const struct ipc_model_info *draft; /* NULL: prompt-lookup drafting */
    int n_ctx, max_seqs, max_clients, max_queue, max_pending_per_client, draft_max;
    size_t max_frame;
};

int ipc_encode_info(msgpack_sbuffer *sb, uint32_t id, const struct ipc_info *info);
/* {"format": "map"} or, with prometheus, {"text": ...}. */
int ipc_encode_stats(msgpack_sbuffer *sb, uint32_t id, const struct ipc_stats *s, bool prometheus);
int ipc_encode_health(msgpack_sbuffer *sb, uint32_t id, bool draining, uint64_t active, uint64_t queued,
                      double uptime_s);

#endif
