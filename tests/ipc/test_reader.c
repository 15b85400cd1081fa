/* The frame reader: whole messages out of bytes fed in any split, frames over the limit refused from
 * their header alone (before msgpack-c would allocate what a header claims), undecodable bytes told
 * apart, and no crash on random input. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ipc/ipc.h"
#include "tests/ipc/lit.h"

static struct ipc_reader *reader(size_t max_frame)
{
    struct ipc_reader *r = NULL;
    cr_assert_eq(ipc_reader_new(max_frame, &r), SPEC_OK);
    return r;
}

/* The decoded form of one literal, to compare against what the reader yields. */
struct expect {
    msgpack_sbuffer sb;
    msgpack_zone zone;
    msgpack_object obj;
};

static void expect_init(struct expect *x, const char *text)
{
    msgpack_sbuffer_init(&x->sb);
    lit(&x->sb, text);
    msgpack_zone_init(&x->zone, 1024);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack(x->sb.data, x->sb.size, &off, &x->zone, &x->obj), MSGPACK_UNPACK_SUCCESS);
}

static void expect_free(struct expect *x)
{
    msgpack_zone_destroy(&x->zone);
    msgpack_sbuffer_destroy(&x->sb);
}

static const char *const samples[] = {
    "[0, 1, 'generate', [{'prompt': 'hello', 'max_tokens': 8, 'stop': ['\\n\\n', 'END']}]]",
    "[0, 4294967295, 'health', []]",
    "5",
    "{'a': [1, -2, 3.5, nil, true, false, '', {}]}",
    "[0, 2, 'tokenize', [{'text': 'caf\\xc3\\xa9 \\xe2\\x82\\xac'}]]",
    "[]",
};
#define N_SAMPLES (sizeof samples / sizeof samples[0])

Test(reader, splits_frames_fed_byte_by_byte)
{
    struct expect x[N_SAMPLES];
    msgpack_sbuffer all;
    msgpack_sbuffer_init(&all);
    for (size_t i = 0; i < N_SAMPLES; i++) {
        expect_init(&x[i], samples[i]);
        msgpack_sbuffer_write(&all, x[i].sb.data, x[i].sb.size);
    }
    struct ipc_reader *r = reader(4096);
    size_t got = 0, next_end = x[0].sb.size;
    for (size_t pos = 0; pos < all.size; pos++) {
        cr_assert_eq(ipc_reader_feed(r, all.data + pos, 1), SPEC_OK);
        const msgpack_object *m;
        cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK);
        if (pos + 1 < next_end) {
            cr_assert_null(m, "message %zu came out early, at byte %zu of %zu", got, pos + 1, next_end);
            continue;
        }
        cr_assert_not_null(m, "message %zu did not come out at its last byte", got);
        cr_assert(msgpack_object_equal(*m, x[got].obj), "message %zu differs", got);
        cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK);
        cr_assert_null(m);
        if (++got < N_SAMPLES)
            next_end += x[got].sb.size;
    }
    cr_assert_eq(got, N_SAMPLES);
    cr_assert_eq(ipc_reader_buffered(r), 0);
    ipc_reader_free(r);
    for (size_t i = 0; i < N_SAMPLES; i++)
        expect_free(&x[i]);
    msgpack_sbuffer_destroy(&all);
}

Test(reader, yields_many_messages_from_one_read_in_order)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    enum { N = 2000 };
    for (int i = 0; i < N; i++) {
        char text[64];
        snprintf(text, sizeof text, "[0, %d, 'health', []]", i);
        lit(&sb, text);
    }
    msgpack_sbuffer_write(&sb, "\x94\x00", 2); /* and the start of one more */
    struct ipc_reader *r = reader(1024);
    cr_assert_eq(ipc_reader_feed(r, sb.data, sb.size), SPEC_OK);
    for (int i = 0; i < N; i++) {
        const msgpack_object *m;
        cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK);
        cr_assert_not_null(m, "message %d missing", i);
        cr_assert_eq(m->via.array.ptr[1].via.u64, (uint64_t)i);
    }
    const msgpack_object *m;
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK);
    cr_assert_null(m);
    cr_assert_eq(ipc_reader_buffered(r), 2, "the partial frame stays buffered");
    ipc_reader_free(r);
    msgpack_sbuffer_destroy(&sb);
}

static void feed_bytes(struct ipc_reader *r, const void *p, size_t n)
{
    cr_assert_eq(ipc_reader_feed(r, p, n), SPEC_OK);
}

Test(reader, byte_c1_is_a_parse_error_and_sticks)
{
    struct ipc_reader *r = reader(1024);
    const uint8_t bytes[] = {0x93, 0x01, 0xc1, 0x02};
    feed_bytes(r, bytes, sizeof bytes);
    const msgpack_object *m;
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_E_FORMAT);
    cr_assert(strstr(ipc_reader_error(r), "0xc1"), "%s", ipc_reader_error(r));
    cr_assert(strstr(ipc_reader_error(r), "offset 2"), "%s", ipc_reader_error(r));
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_E_FORMAT);
    cr_assert_eq(ipc_reader_feed(r, bytes, 1), SPEC_E_FORMAT);
    ipc_reader_free(r);
}

/* A header claiming more than the frame limit is refused as soon as the header is complete, before
 * any payload arrives: msgpack-c would otherwise reserve 16 bytes per declared array element. */
static void assert_refused_from_header(const uint8_t *hdr, size_t n, size_t max_frame)
{
    struct ipc_reader *r = reader(max_frame);
    const msgpack_object *m;
    for (size_t i = 0; i + 1 < n; i++) {
        feed_bytes(r, hdr + i, 1);
        cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK, "refused before the header (0x%02x) was complete", hdr[0]);
        cr_assert_null(m);
    }
    feed_bytes(r, hdr + n - 1, 1);
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_E_RANGE, "header 0x%02x not refused", hdr[0]);
    cr_assert(strstr(ipc_reader_error(r), "frame limit"), "%s", ipc_reader_error(r));
    ipc_reader_free(r);
}

Test(reader, huge_declared_lengths_are_refused_from_the_header)
{
    const uint8_t str32[] = {0xdb, 0xff, 0xff, 0xff, 0xff};
    const uint8_t bin32[] = {0xc6, 0x80, 0x00, 0x00, 0x00};
    const uint8_t ext32[] = {0xc9, 0xff, 0xff, 0xff, 0xf0};
    const uint8_t array32[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    const uint8_t map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    const uint8_t array16[] = {0xdc, 0x10, 0x00}; /* 4096 elements under a 1 KiB limit */
    /* Nested: [0, 1, 'x', [array32 of 2^31]] */
    const uint8_t nested[] = {0x94, 0x00, 0x01, 0xa1, 'x', 0x91, 0xdd, 0x80, 0x00, 0x00, 0x00};
    assert_refused_from_header(str32, sizeof str32, IPC_DEFAULT_MAX_FRAME);
    assert_refused_from_header(bin32, sizeof bin32, IPC_DEFAULT_MAX_FRAME);
    assert_refused_from_header(ext32, sizeof ext32, IPC_DEFAULT_MAX_FRAME);
    assert_refused_from_header(array32, sizeof array32, IPC_DEFAULT_MAX_FRAME);
    assert_refused_from_header(map32, sizeof map32, IPC_DEFAULT_MAX_FRAME);
    assert_refused_from_header(array16, sizeof array16, 1024);
    assert_refused_from_header(nested, sizeof nested, IPC_DEFAULT_MAX_FRAME);
}

/* A message of exactly max_frame bytes passes; one byte more does not. */
Test(reader, frame_limit_is_exact)
{
    const size_t max = 300;
    for (size_t extra = 0; extra < 2; extra++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        const size_t body = max - 3 + extra; /* str16 header is 3 bytes */
        char *s = calloc(body, 1);
        msgpack_pack_str_with_body(&pk, s, body);
        free(s);
        cr_assert_eq(sb.size, max + extra);
        struct ipc_reader *r = reader(max);
        feed_bytes(r, sb.data, sb.size);
        const msgpack_object *m;
        if (extra == 0) {
            cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK);
            cr_assert_not_null(m);
            cr_assert_eq(m->via.str.size, body);
        } else {
            cr_assert_eq(ipc_reader_next(r, &m), SPEC_E_RANGE);
        }
        ipc_reader_free(r);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Declared sizes add up across elements: an array whose count fits, then a first element whose
 * length pushes the least possible total past the limit. */
Test(reader, declared_sizes_add_up_across_elements)
{
    struct ipc_reader *r = reader(64);
    const uint8_t hdr[] = {0xdc, 0x00, 0x3c}; /* array16 of 60: fits the declared bound */
    feed_bytes(r, hdr, sizeof hdr);
    const msgpack_object *m;
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK);
    const uint8_t str8[] = {0xd9, 0x20}; /* a 32-byte string as the first element: 3 + 2 + 32 + 59 > 64 */
    feed_bytes(r, str8, sizeof str8);
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_E_RANGE);
    ipc_reader_free(r);
}

/* Fixed-width payloads (float64 here) count as they are announced: 20 of them in an array make a
 * 183-byte message, refused under a 182-byte limit even when it arrives in one read. */
Test(reader, fixed_width_elements_count_toward_the_limit)
{
    uint8_t msg[183] = {0xdc, 0x00, 20};
    for (int i = 0; i < 20; i++)
        msg[3 + 9 * i] = 0xcb;
    for (size_t max = 182; max <= 183; max++) {
        struct ipc_reader *r = reader(max);
        feed_bytes(r, msg, sizeof msg);
        const msgpack_object *m;
        cr_assert_eq(ipc_reader_next(r, &m), max == 183 ? SPEC_OK : SPEC_E_RANGE, "limit %zu", max);
        if (max == 183)
            cr_assert_eq(m->via.array.size, 20);
        ipc_reader_free(r);
    }
}

Test(reader, nesting_deeper_than_the_cap_is_a_parse_error)
{
    uint8_t deep[IPC_MAX_DEPTH + 2];
    memset(deep, 0x91, sizeof deep); /* [[[[...]]]] */
    deep[sizeof deep - 1] = 0x00;
    struct ipc_reader *r = reader(1024);
    feed_bytes(r, deep, sizeof deep);
    const msgpack_object *m;
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_E_FORMAT);
    cr_assert(strstr(ipc_reader_error(r), "nesting"), "%s", ipc_reader_error(r));
    ipc_reader_free(r);

    r = reader(1024);
    feed_bytes(r, deep + 2, sizeof deep - 2); /* IPC_MAX_DEPTH levels: fine */
    cr_assert_eq(ipc_reader_next(r, &m), SPEC_OK);
    cr_assert_not_null(m);
    ipc_reader_free(r);
}

/* splitmix64: a seeded stream of random bytes for the fuzz tests. */
static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Random bytes in random splits: every call returns a documented result, an error sticks, and
 * every message handed out re-encodes to exactly the bytes it came from. */
Test(reader, random_bytes_give_messages_or_a_clean_error)
{
    uint64_t seed = 42;
    int n_msgs = 0, n_errors = 0;
    for (int round = 0; round < 4000; round++) {
        const size_t len = 1 + rnd(&seed) % 200;
        uint8_t *bytes = malloc(len);
        for (size_t i = 0; i < len; i++)
            bytes[i] = (uint8_t)rnd(&seed);
        /* Bias toward structure: small containers and strings in front so decoding goes deeper. */
        if (round % 2)
            bytes[0] = (uint8_t)(0x90 | (rnd(&seed) & 0x0f));
        struct ipc_reader *r = reader(128);
        size_t pos = 0, consumed = 0;
        int err = SPEC_OK;
        while (pos < len && !err) {
            size_t n = 1 + rnd(&seed) % 16;
            if (n > len - pos)
                n = len - pos;
            cr_assert_eq(ipc_reader_feed(r, bytes + pos, n), SPEC_OK);
            pos += n;
            const msgpack_object *m;
            while (!(err = ipc_reader_next(r, &m)) && m) {
                /* The message is whole and sound: it re-encodes, and that decodes back to an encoding
                 * equal byte for byte (objects are compared by encoding, as NaN != NaN). */
                msgpack_sbuffer a, b;
                msgpack_sbuffer_init(&a);
                msgpack_sbuffer_init(&b);
                msgpack_packer pk;
                msgpack_packer_init(&pk, &a, msgpack_sbuffer_write);
                msgpack_pack_object(&pk, *m);
                msgpack_zone z;
                msgpack_zone_init(&z, 256);
                msgpack_object back;
                size_t off = 0;
                cr_assert_eq(msgpack_unpack(a.data, a.size, &off, &z, &back), MSGPACK_UNPACK_SUCCESS);
                cr_assert_eq(off, a.size);
                msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
                msgpack_pack_object(&pk, back);
                cr_assert(a.size == b.size && !memcmp(a.data, b.data, a.size));
                msgpack_zone_destroy(&z);
                msgpack_sbuffer_destroy(&a);
                msgpack_sbuffer_destroy(&b);
                consumed = pos - ipc_reader_buffered(r);
                n_msgs++;
            }
        }
        if (err) {
            cr_assert(err == SPEC_E_FORMAT || err == SPEC_E_RANGE, "unexpected %s", spec_errname(err));
            cr_assert(ipc_reader_error(r)[0]);
            const msgpack_object *m;
            cr_assert_eq(ipc_reader_next(r, &m), err);
            n_errors++;
        }
        cr_assert_leq(consumed, len);
        ipc_reader_free(r);
        free(bytes);
    }
    cr_assert_gt(n_msgs, 1000, "the fuzz input never produced messages (%d)", n_msgs);
    cr_assert_gt(n_errors, 100, "the fuzz input never produced errors (%d)", n_errors);
}
