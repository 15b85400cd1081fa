/* Code point classes and llama.cpp-compatible UTF-8 decoding, for the tokenizer's pre-tokenizers.
 * Internal to model/ (the tokenizer is the only user). */
#ifndef SPECD_MODEL_UNICODE_H
#define SPECD_MODEL_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* One category class per code point (llama.cpp's unicode_cpt_flags), plus WHITESPACE. */
enum {
    UNICODE_UNDEFINED = 0x01,   /* Cn, and anything beyond U+10FFFF */
    UNICODE_NUMBER = 0x02,      /* \p{N} */
    UNICODE_LETTER = 0x04,      /* \p{L} */
    UNICODE_SEPARATOR = 0x08,   /* \p{Z} */
    UNICODE_MARK = 0x10,        /* \p{M} */
    UNICODE_PUNCTUATION = 0x20, /* \p{P} */
    UNICODE_SYMBOL = 0x40,      /* \p{S} */
    UNICODE_CONTROL = 0x80,     /* \p{C} other than Cn */
    UNICODE_WHITESPACE = 0x100, /* \s: Unicode White_Space */
};

#define UNICODE_MAX_CP 0x10FFFFu
#define UNICODE_REPLACEMENT 0xFFFDu

/* Generated tables (model/unicode_data.c, tools/gen-unicode-tables.py). */
extern const uint32_t unicode_range_start[];
extern const uint16_t unicode_range_flags[];
extern const size_t unicode_range_count;

uint16_t unicode_flags(uint32_t cp);

/* Decode s[0..n) into code points the way llama.cpp's unicode_cpts_from_utf8() does: a lead byte
 * followed by the right number of continuation bytes is accepted as is (overlong forms and
 * surrogates included); anything else yields U+FFFD and consumes one byte. Sequences decoding
 * above U+10FFFF (which make llama.cpp throw) are treated as invalid too. cpts needs n entries;
 * returns the count. */
size_t unicode_decode_lenient(const uint8_t *s, size_t n, uint32_t *cpts);
/* UTF-8 encoding of cp <= U+10FFFF (1..4 bytes), llama.cpp's unicode_cpt_to_utf8(). */
size_t unicode_encode(uint32_t cp, uint8_t out[4]);
/* Length of the sequence a lead byte announces, from its top four bits (llama.cpp's
 * unicode_len_utf8(): 1 for ASCII and stray continuation bytes, 4 for F0..FF). */
size_t unicode_lead_len(uint8_t lead);

/* Strict UTF-8 (no overlongs, surrogates or values above U+10FFFF): length of the well-formed
 * character at s[0..n); 0 if s starts an ill-formed sequence. *partial is set when s[0..n) is a
 * proper prefix of some well-formed character (more bytes could complete it). */
size_t unicode_valid_len(const uint8_t *s, size_t n, int *partial);
/* Length of the maximal ill-formed subpart at s (>= 1): the bytes one U+FFFD replaces. */
size_t unicode_invalid_len(const uint8_t *s, size_t n);

#endif
