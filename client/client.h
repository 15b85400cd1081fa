/* What client.c (the connection and its messages) and methods.c (the calls) share. */
#ifndef SPECD_CLIENT_CLIENT_H
#define SPECD_CLIENT_CLIENT_H

#include <msgpack.h>

#include "client/frame.h"
#include "specd_client.h"

/* A message of the generate in flight, held back while another call waited for its response. */
struct spc_held {
    struct spc_held *next;
    size_t len;
    uint8_t bytes[];
};

struct spc_client {
    int fd;
    int closed;              /* 0, or the error that closed the connection */
    size_t max_frame;
    uint32_t last_id;
    struct spc_error err;
    /* Received bytes buf[off..len); the message being read starts at buf[off]. */
    uint8_t *buf;
    size_t off, len, cap;
    struct spc_scan scan;
    /* The generate in flight. */
    bool gen_active, gen_stream;
    uint32_t gen_id;
    struct spc_held *held_head, *held_tail;
    size_t held_bytes;
    /* The last chunk spc_generate_next handed out, in buffers reused for the next. */
    struct spc_chunk chunk;
    char *chunk_text;
    size_t chunk_text_cap;
    int32_t *chunk_tokens;
    size_t chunk_tokens_cap;
};

enum spc_msg_kind { SPC_MSG_RESPONSE, SPC_MSG_CHUNK, SPC_MSG_ERROR, SPC_MSG_NOTIFICATION };

/* A decoded message; its objects point into bytes, so both live until spc_msg_release. */
struct spc_msg {
    msgpack_unpacked up;
    const uint8_t *bytes;
    size_t len;
    struct spc_held *held;   /* owns bytes when the message was held back, else bytes is the read buffer */
    enum spc_msg_kind kind;
    uint32_t id;             /* a response's msgid, or a chunk's generate */
    const msgpack_object *error, *result; /* response: error is NULL on success */
    const msgpack_object *params;         /* notification: the map of its params, or NULL; error: the
                                             error map */
};

/* Returns err, after closing the connection if err leaves the stream in an unknown place. */
int spc_fail(struct spc_client *c, int err);
uint32_t spc_next_id(struct spc_client *c);
/* Writes a whole request. */
int spc_send(struct spc_client *c, const char *data, size_t len);
/* Waits for the response to msgid want or, when want is the generate in flight, for its next chunk.
 * Messages of the generate in flight that arrive while waiting for another response are held back
 * for it; an answer to nothing asked is SPC_E_PROTOCOL; other notifications are skipped. On success
 * the caller releases *m. */
int spc_await(struct spc_client *c, uint32_t want, struct spc_msg *m);
void spc_msg_release(struct spc_client *c, struct spc_msg *m);
/* Copies the daemon's {code, name, message} into c->err: SPC_E_DAEMON, or SPC_E_PROTOCOL when malformed. */
int spc_parse_error(struct spc_client *c, const msgpack_object *e);
/* The value of key in map, or NULL (also when map is not a map). */
const msgpack_object *spc_get(const msgpack_object *map, const char *key);

#endif
