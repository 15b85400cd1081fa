#include "model/unicode.h"

uint16_t unicode_flags(uint32_t cp)
{
    if (cp > UNICODE_MAX_CP)
        return UNICODE_UNDEFINED;
    /* Last range whose start is <= cp; range 0 starts at 0. */
    size_t lo = 0, hi = unicode_range_count;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (unicode_range_start[mid] <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return unicode_range_flags[lo];
}

static int is_cont(uint8_t b)
{
    return (b & 0xC0) == 0x80;
}

size_t unicode_decode_lenient(const uint8_t *s, size_t n, uint32_t *cpts)
{
    size_t count = 0;
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        uint32_t cp = UNICODE_REPLACEMENT;
        size_t len = 1;
        if (b < 0x80) {
            cp = b;
        } else if ((b & 0xE0) == 0xC0) {
            if (i + 1 < n && is_cont(s[i + 1])) {
                cp = ((uint32_t)(b & 0x1F) << 6) | (s[i + 1] & 0x3F);
                len = 2;
            }
        } else if ((b & 0xF0) == 0xE0) {
            if (i + 2 < n && is_cont(s[i + 1]) && is_cont(s[i + 2])) {
                cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
                len = 3;
            }
        } else if ((b & 0xF8) == 0xF0) {
            if (i + 3 < n && is_cont(s[i + 1]) && is_cont(s[i + 2]) && is_cont(s[i + 3])) {
                uint32_t v = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
                             ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
                if (v <= UNICODE_MAX_CP) {
                    cp = v;
                    len = 4;
                }
            }
        }
        cpts[count++] = cp;
        i += len;
    }
    return count;
}

size_t unicode_encode(uint32_t cp, uint8_t out[4])
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

size_t unicode_lead_len(uint8_t lead)
{
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[lead >> 4];
}

/* Well-formed UTF-8 (Unicode Table 3-7): the sequence length a lead byte starts (0 if it cannot
 * start one) and the allowed range of the second byte; later bytes are 80..BF. */
static size_t strict_lead(uint8_t b, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b < 0x80)
        return 1;
    if (b < 0xC2)
        return 0;
    if (b < 0xE0)
        return 2;
    if (b < 0xF0) {
        if (b == 0xE0)
            *lo = 0xA0;
        else if (b == 0xED)
            *hi = 0x9F;
        return 3;
    }
    if (b < 0xF5) {
        if (b == 0xF0)
            *lo = 0x90;
        else if (b == 0xF4)
            *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Number of bytes from s[0] that still form a prefix of a well-formed sequence of length want. */
static size_t strict_prefix(const uint8_t *s, size_t n, size_t want, uint8_t lo, uint8_t hi)
{
    size_t i = 1;
    while (i < want && i < n) {
        uint8_t b = s[i];
        if (i == 1 ? (b < lo || b > hi) : !is_cont(b))
            break;
        i++;
    }
    return i;
}

size_t unicode_valid_len(const uint8_t *s, size_t n, int *partial)
{
    uint8_t lo, hi;
    *partial = 0;
    if (n == 0)
        return 0;
    size_t want = strict_lead(s[0], &lo, &hi);
    if (want == 0)
        return 0;
    size_t got = strict_prefix(s, n, want, lo, hi);
    if (got == want)
        return want;
    *partial = got == n;
    return 0;
}

size_t unicode_invalid_len(const uint8_t *s, size_t n)
{
    uint8_t lo, hi;
    size_t want = strict_lead(s[0], &lo, &hi);
    if (want <= 1)
        return 1;
    return strict_prefix(s, n, want, lo, hi);
}
