/* Tokenizer internals shared by model/tokenizer.c (loading, special tokens, decoding),
 * model/tok_bpe.c, model/tok_spm.c and model/tok_synth.c. Not a public interface. */
#ifndef SPECD_MODEL_TOK_INTERNAL_H
#define SPECD_MODEL_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"

/* Token attributes, a bit set as llama.cpp's llama_token_attr (a token forced to control keeps its
 * other bits), plus our end-of-generation mark. */
enum {
    TOK_ATTR_UNKNOWN = 1 << 0,
    TOK_ATTR_UNUSED = 1 << 1,
    TOK_ATTR_NORMAL = 1 << 2,
    TOK_ATTR_CONTROL = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE = 1 << 5,
    TOK_ATTR_EOG = 1 << 6,
};

/* Pre-tokenizers (tokenizer.ggml.pre), each a sequence of llama.cpp's split regexes. */
enum tok_pre {
    TOK_PRE_DEFAULT,
    TOK_PRE_LLAMA3,
    TOK_PRE_QWEN2,
    TOK_PRE_SMOLLM,
    TOK_PRE_GPT2,
};

struct tok_merge {
    uint64_t key;   /* (left id << 32) | right id; TOK_MERGE_EMPTY in free slots */
    int32_t rank;
    int32_t result; /* id of the concatenation */
};
#define TOK_MERGE_EMPTY UINT64_MAX

struct tok {
    enum tok_kind kind;
    enum tok_pre pre;
    int32_t n_vocab;

    char *text;          /* every token's vocabulary string, back to back */
    uint32_t *text_off;  /* token i is text[text_off[i] .. text_off[i + 1]) */
    float *score;
    uint8_t *attr;
    char *piece;         /* decoded bytes of every token as rendered with special = true */
    uint32_t *piece_off;
    size_t max_piece;

    int32_t *index;      /* open-addressing hash of token strings -> id, -1 free */
    uint32_t index_mask;

    struct tok_merge *merges; /* BPE: (left, right) -> rank, result */
    uint32_t merge_mask;

    /* BPE: id of the token spelling byte b in bytes-to-unicode form; SPM: byte-fallback id. -1: none. */
    int32_t byte_tok[256];
    /* BPE: id of the token whose text is the single raw byte b (llama.cpp's last-resort lookup). */
    int32_t raw_byte_tok[256];
    /* GPT-2 bytes-to-unicode: byte -> code point (< 324) and back (-1: not a mapped code point). */
    uint16_t byte_cp[256];
    int16_t cp_byte[324];

    int32_t bos, eos, eot, eom, unk;
    bool add_bos, add_eos, add_space_prefix;
    bool ignore_merges; /* llama3: a word that is already a token skips the merges */

    int32_t *special;   /* control/user-defined/unknown ids, longest text first */
    size_t n_special;

    bool chat_ml;       /* tokenizer.chat_template is of the ChatML family */
    char *chat_system;  /* its default system message, or NULL */
};

/* Where tok_encode collects ids: the first cap are stored, all are counted. */
struct tok_sink {
    int32_t *ids;
    size_t cap;
    size_t n;
};

static inline void tok_sink_push(struct tok_sink *s, int32_t id)
{
    if (s->n < s->cap)
        s->ids[s->n] = id;
    s->n++;
}

/* Vocabulary lookups. */
int32_t tok_lookup(const struct tok *t, const char *s, size_t len);
static inline const char *tok_str(const struct tok *t, int32_t id, size_t *len)
{
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

/* GPT-2's bytes-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes
 * to U+0100.. in byte order. */
void tok_bytes_to_unicode(uint16_t byte_cp[256]);

/* A binary min-heap of candidate merges ordered by key (smaller first). */
struct tok_pair {
    uint64_t key;
    int32_t left, right;
    uint32_t size; /* bytes of left + right when queued: a later mismatch marks it stale */
};
struct tok_heap {
    struct tok_pair *a;
    size_t n, cap;
};
int tok_heap_push(struct tok_heap *h, struct tok_pair p);
struct tok_pair tok_heap_pop(struct tok_heap *h);

/* tokenizer.ggml.pre name -> regex set and llama.cpp's per-name flags; SPEC_E_UNSUPPORTED if unknown. */
int tok_pre_from_name(const char *name, size_t len, enum tok_pre *pre, bool *ignore_merges, bool *add_bos);

/* Encode one raw-text fragment (no special tokens in it). */
int tok_bpe_encode(const struct tok *t, const char *text, size_t len, struct tok_sink *out);
int tok_spm_encode(const struct tok *t, const char *text, size_t len, bool space_prefix, struct tok_sink *out);

/* Pre-tokenize code points cpts[0..n) (with flags fl) as pre says: writes word lengths (in code
 * points, summing to n) to words, which needs n entries, and scratch (n entries) is clobbered.
 * Returns the word count. */
size_t tok_pre_split(enum tok_pre pre, const uint32_t *cpts, const uint16_t *fl, size_t n, size_t *words,
                     size_t *scratch);

/* tokenizer.chat_template, recognised (tok_chat.c): SPEC_E_TYPE when it is not a string. */
int tok_chat_load(struct tok *t, const struct gguf *g);

/* Training text of the synthetic vocabularies (tok_synth_text.c). */
extern const char *const tok_synth_text[];
extern const size_t tok_synth_text_count;

#endif
