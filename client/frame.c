/* MessagePack message boundaries (format spec: github.com/msgpack/msgpack/blob/master/spec.md). */
#include "client/frame.h"

#include "specd_client.h"

static uint64_t read_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

int spc_frame_scan(struct spc_scan *s, const uint8_t *buf, size_t len, size_t max_frame, size_t *frame_len)
{
    while (s->remaining > 0) {
        if (s->pos >= len)
            return 0;
        const uint8_t b = buf[s->pos];
        uint64_t head = 1, payload = 0, children = 0;
        /* Types with a big-endian length after the type byte: its width, and what the length counts. */
        int len_bytes = 0;
        enum { BYTES, EXT, ELEMS, PAIRS } counts = BYTES;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* a fixint, nil or a bool: the type byte alone */
        } else if (b <= 0x8f)
            children = 2u * (b & 0x0f);
        else if (b <= 0x9f)
            children = b & 0x0f;
        else if (b <= 0xbf)
            payload = b & 0x1f;
        else if (b == 0xc1)
            return SPC_E_PROTOCOL;
        else if (b <= 0xc6)
            len_bytes = 1 << (b - 0xc4);
        else if (b <= 0xc9)
            len_bytes = 1 << (b - 0xc7), counts = EXT;
        else if (b == 0xca)
            head = 5;
        else if (b == 0xcb)
            head = 9;
        else if (b <= 0xd3)
            head = 1 + (1u << ((b - 0xcc) & 3));
        else if (b <= 0xd8)
            head = 2 + (1u << (b - 0xd4));
        else if (b <= 0xdb)
            len_bytes = 1 << (b - 0xd9);
        else if (b <= 0xdd)
            len_bytes = b == 0xdc ? 2 : 4, counts = ELEMS;
        else
            len_bytes = b == 0xde ? 2 : 4, counts = PAIRS;
        head += (uint64_t)len_bytes;
        if (len_bytes) {
            if (s->pos + head > len)
                return s->pos + head > max_frame ? SPC_E_FRAME_TOO_LARGE : 0;
            const uint64_t n = read_be(buf + s->pos + 1, len_bytes);
            if (counts == BYTES)
                payload = n;
            else if (counts == EXT)
                payload = n + 1;
            else
                children = counts == ELEMS ? n : 2 * n;
        }
        /* Every object still to come takes at least one byte: refuse what cannot fit before waiting. */
        if (s->pos + head + payload + (s->remaining - 1) + children > max_frame)
            return SPC_E_FRAME_TOO_LARGE;
        if (s->pos + head + payload > len)
            return 0;
        s->pos += head + payload;
        s->remaining = s->remaining - 1 + children;
    }
    *frame_len = s->pos;
    return 1;
}
