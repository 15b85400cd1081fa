/* Finding where one MessagePack message ends in a byte stream, without decoding or allocating, so
 * that a message is bounded by its headers before its bytes are read (msgpack-c's own decoder
 * reserves memory for a container's declared element count up front). */
#ifndef SPECD_CLIENT_FRAME_H
#define SPECD_CLIENT_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* Progress through the message at the start of a buffer, kept between calls as bytes arrive. */
struct spc_scan {
    size_t pos;         /* bytes of whole objects scanned */
    uint64_t remaining; /* objects still to come (container elements count one each) */
};

static inline void spc_scan_reset(struct spc_scan *s)
{
    *s = (struct spc_scan){.pos = 0, .remaining = 1};
}

/* Scans buf[0..len), which begins with the message. Returns 1 with *frame_len set once the whole
 * message is in buf, 0 while more bytes are needed, SPC_E_FRAME_TOO_LARGE as soon as the headers
 * show that the message cannot fit in max_frame bytes, SPC_E_PROTOCOL for the byte 0xc1 (never
 * used). */
int spc_frame_scan(struct spc_scan *s, const uint8_t *buf, size_t len, size_t max_frame, size_t *frame_len);

#endif
