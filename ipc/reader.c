/* Incremental frame reader: an own structural scan finds where each MessagePack message ends and
 * bounds every declared size before msgpack-c sees a byte (see ipc.h for why). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ipc/ipc.h"

enum scan_state {
    SCAN_HEAD = 0, /* expecting a type byte */
    SCAN_LEN,      /* collecting the big-endian length/count that follows the type byte */
    SCAN_SKIP,     /* skipping a payload (string, bin, ext, fixed-width number) */
};

/* What the length collected in SCAN_LEN means. */
enum len_kind { LEN_BYTES = 0, LEN_EXT, LEN_ARRAY, LEN_MAP };

struct ipc_reader {
    size_t max_frame;
    char *buf;
    size_t cap, len;
    size_t start; /* first byte of the frame being scanned */
    size_t scan;  /* next byte to scan */

    enum scan_state state;
    enum len_kind len_kind;
    int len_need;          /* bytes of the length still to collect */
    uint64_t len_val;
    uint64_t skip;         /* payload bytes still to skip */
    int depth;
    uint64_t remaining[IPC_MAX_DEPTH]; /* elements still to start in each open container */
    uint64_t open_elems;   /* sum of remaining[] */

    int err;
    char why[160];
    msgpack_zone zone; /* the decoded message's arrays and maps */
    msgpack_object obj;
};

int ipc_reader_new(size_t max_frame, struct ipc_reader **out)
{
    if (!out || max_frame < 16)
        return SPEC_E_INVALID_ARG;
    struct ipc_reader *r = calloc(1, sizeof *r);
    if (!r)
        return SPEC_E_NOMEM;
    if (!msgpack_zone_init(&r->zone, 4096)) {
        free(r);
        return SPEC_E_NOMEM;
    }
    r->max_frame = max_frame;
    *out = r;
    return SPEC_OK;
}

void ipc_reader_free(struct ipc_reader *r)
{
    if (!r)
        return;
    msgpack_zone_destroy(&r->zone);
    free(r->buf);
    free(r);
}

const char *ipc_reader_error(const struct ipc_reader *r)
{
    return r->why;
}

size_t ipc_reader_buffered(const struct ipc_reader *r)
{
    return r->len - r->start;
}

int ipc_reader_feed(struct ipc_reader *r, const void *data, size_t n)
{
    if (r->err)
        return r->err;
    if (r->start > 0) { /* drop delivered frames; the last message handed out is no longer valid */
        memmove(r->buf, r->buf + r->start, r->len - r->start);
        r->len -= r->start;
        r->scan -= r->start;
        r->start = 0;
    }
    if (n > r->cap - r->len) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap - r->len < n)
            cap *= 2;
        char *b = realloc(r->buf, cap);
        if (!b)
            return SPEC_E_NOMEM;
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    return SPEC_OK;
}

__attribute__((format(printf, 3, 4))) static int fail(struct ipc_reader *r, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    r->err = err;
    return err;
}

/* Bytes of the current frame consumed so far plus the least it still needs. Every step that can raise
 * it (a length or count read, a fixed-width payload) checks it, so a frame never grows past the
 * limit unnoticed, whether it arrives byte by byte or in one read. */
static uint64_t frame_lower_bound(const struct ipc_reader *r)
{
    return (uint64_t)(r->scan - r->start) + (uint64_t)r->len_need + r->skip + r->open_elems;
}

static int check_bound(struct ipc_reader *r)
{
    const uint64_t need = frame_lower_bound(r);
    if (need > r->max_frame)
        return fail(r, SPEC_E_RANGE, "message of at least %llu bytes is over the %zu-byte frame limit",
                    (unsigned long long)need, r->max_frame);
    return SPEC_OK;
}

static int push(struct ipc_reader *r, uint64_t n)
{
    if (r->depth == IPC_MAX_DEPTH)
        return fail(r, SPEC_E_FORMAT, "nesting deeper than %d levels at byte %zu", IPC_MAX_DEPTH,
                    r->scan - r->start);
    r->remaining[r->depth++] = n;
    r->open_elems += n;
    return check_bound(r);
}

/* An element ended: close every container whose last element it was. True when the frame ended. */
static bool element_done(struct ipc_reader *r)
{
    while (r->depth > 0 && r->remaining[r->depth - 1] == 0)
        r->depth--;
    return r->depth == 0;
}

/* A type byte: counts it against the enclosing container, then sets up what follows. */
static int head(struct ipc_reader *r, uint8_t b, bool *done)
{
    if (r->depth > 0) {
        r->remaining[r->depth - 1]--;
        r->open_elems--;
    }
    *done = false;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) { /* fixint, nil, bool */
        *done = element_done(r);
        return SPEC_OK;
    }
    if (b >= 0x80 && b <= 0x8f) {
        SPEC_TRY(push(r, 2u * (b & 0x0fu)));
        *done = element_done(r);
        return SPEC_OK;
    }
    if (b >= 0x90 && b <= 0x9f) {
        SPEC_TRY(push(r, b & 0x0fu));
        *done = element_done(r);
        return SPEC_OK;
    }
    if (b >= 0xa0 && b <= 0xbf) {
        r->skip = b & 0x1fu;
    } else {
        switch (b) {
        case 0xc4: case 0xd9: r->len_kind = LEN_BYTES; r->len_need = 1; break;
        case 0xc5: case 0xda: r->len_kind = LEN_BYTES; r->len_need = 2; break;
        case 0xc6: case 0xdb: r->len_kind = LEN_BYTES; r->len_need = 4; break;
        case 0xc7: r->len_kind = LEN_EXT; r->len_need = 1; break;
        case 0xc8: r->len_kind = LEN_EXT; r->len_need = 2; break;
        case 0xc9: r->len_kind = LEN_EXT; r->len_need = 4; break;
        case 0xdc: r->len_kind = LEN_ARRAY; r->len_need = 2; break;
        case 0xdd: r->len_kind = LEN_ARRAY; r->len_need = 4; break;
        case 0xde: r->len_kind = LEN_MAP; r->len_need = 2; break;
        case 0xdf: r->len_kind = LEN_MAP; r->len_need = 4; break;
        case 0xca: r->skip = 4; break;
        case 0xcb: r->skip = 8; break;
        case 0xcc: case 0xd0: r->skip = 1; break;
        case 0xcd: case 0xd1: r->skip = 2; break;
        case 0xce: case 0xd2: r->skip = 4; break;
        case 0xcf: case 0xd3: r->skip = 8; break;
        case 0xd4: r->skip = 2; break; /* fixext: type byte + data */
        case 0xd5: r->skip = 3; break;
        case 0xd6: r->skip = 5; break;
        case 0xd7: r->skip = 9; break;
        case 0xd8: r->skip = 17; break;
        default: /* 0xc1 is never used by MessagePack */
            return fail(r, SPEC_E_FORMAT, "byte 0x%02x at offset %zu is not MessagePack", b, r->scan - 1 - r->start);
        }
    }
    r->len_val = 0;
    r->state = r->len_need ? SCAN_LEN : SCAN_SKIP;
    SPEC_TRY(check_bound(r));
    if (r->state == SCAN_SKIP && r->skip == 0) {
        r->state = SCAN_HEAD;
        *done = element_done(r);
    }
    return SPEC_OK;
}

/* The length is complete. */
static int length_done(struct ipc_reader *r, bool *done)
{
    *done = false;
    r->state = SCAN_HEAD;
    switch (r->len_kind) {
    case LEN_ARRAY:
        SPEC_TRY(push(r, r->len_val));
        *done = element_done(r);
        return SPEC_OK;
    case LEN_MAP:
        SPEC_TRY(push(r, 2 * r->len_val));
        *done = element_done(r);
        return SPEC_OK;
    case LEN_EXT:
        r->skip = r->len_val + 1; /* the type byte, then the data */
        break;
    case LEN_BYTES:
        r->skip = r->len_val;
        break;
    }
    SPEC_TRY(check_bound(r));
    if (r->skip == 0)
        *done = element_done(r);
    else
        r->state = SCAN_SKIP;
    return SPEC_OK;
}

/* Scan forward until the current frame ends (*done) or the bytes run out. */
static int scan(struct ipc_reader *r, bool *done)
{
    *done = false;
    while (r->scan < r->len && !*done) {
        switch (r->state) {
        case SCAN_HEAD: {
            const uint8_t b = (uint8_t)r->buf[r->scan++];
            SPEC_TRY(head(r, b, done));
            break;
        }
        case SCAN_LEN:
            r->len_val = (r->len_val << 8) | (uint8_t)r->buf[r->scan++];
            if (--r->len_need == 0)
                SPEC_TRY(length_done(r, done));
            break;
        case SCAN_SKIP: {
            const size_t avail = r->len - r->scan;
            const size_t n = r->skip < avail ? (size_t)r->skip : avail;
            r->scan += n;
            r->skip -= n;
            if (r->skip == 0) {
                r->state = SCAN_HEAD;
                *done = element_done(r);
            }
            break;
        }
        }
    }
    return SPEC_OK;
}

int ipc_reader_next(struct ipc_reader *r, const msgpack_object **msg)
{
    if (r->err)
        return r->err;
    *msg = NULL;
    bool done;
    SPEC_TRY(scan(r, &done));
    if (!done)
        return SPEC_OK;
    const size_t begin = r->start, end = r->scan;
    r->start = end;
    msgpack_zone_clear(&r->zone);
    size_t off = 0;
    const msgpack_unpack_return ur = msgpack_unpack(r->buf + begin, end - begin, &off, &r->zone, &r->obj);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        return fail(r, SPEC_E_NOMEM, "out of memory decoding a %zu-byte message", end - begin);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != end - begin)
        return fail(r, SPEC_E_FORMAT, "message of %zu bytes does not decode", end - begin);
    *msg = &r->obj;
    return SPEC_OK;
}
