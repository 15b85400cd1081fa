/* Tokenizer loading (llama.cpp's llama_vocab::impl::load), special-token splitting
 * (tokenizer_st_partition), the encode driver, pieces, decoding and the streaming decoder.
 * The BPE and SPM algorithms are in tok_bpe.c and tok_spm.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/tok_internal.h"
#include "model/unicode.h"

/* ---------------------------------------------------------------------------------------------- */
/* Shared helpers */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

int32_t tok_lookup(const struct tok *t, const char *s, size_t len)
{
    uint32_t i = (uint32_t)hash_bytes(s, len) & t->index_mask;
    for (;;) {
        int32_t id = t->index[i];
        if (id < 0)
            return -1;
        size_t l;
        const char *x = tok_str(t, id, &l);
        if (l == len && memcmp(x, s, len) == 0)
            return id;
        i = (i + 1) & t->index_mask;
    }
}

void tok_bytes_to_unicode(uint16_t byte_cp[256])
{
    uint16_t next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_cp[b] = printable ? (uint16_t)b : next++;
    }
}

int tok_heap_push(struct tok_heap *h, struct tok_pair p)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct tok_pair *a = realloc(h->a, cap * sizeof(*a));
        if (!a)
            return SPEC_E_NOMEM;
        h->a = a;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h->a[parent].key <= p.key)
            break;
        h->a[i] = h->a[parent];
        i = parent;
    }
    h->a[i] = p;
    return 0;
}

struct tok_pair tok_heap_pop(struct tok_heap *h)
{
    struct tok_pair top = h->a[0];
    struct tok_pair last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->a[c + 1].key < h->a[c].key)
            c++;
        if (last.key <= h->a[c].key)
            break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n)
        h->a[i] = last;
    return top;
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t p = 2;
    while (p < n)
        p *= 2;
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* Loading */

struct pre_name {
    const char *name;
    enum tok_pre pre;
    bool ignore_merges, add_bos;
};

/* llama-vocab.cpp's tokenizer.ggml.pre names for the regex sets implemented here. */
static const struct pre_name pre_names[] = {
    {"default", TOK_PRE_DEFAULT, false, false},
    {"llama3", TOK_PRE_LLAMA3, true, true},
    {"llama-v3", TOK_PRE_LLAMA3, true, true},
    {"llama-bpe", TOK_PRE_LLAMA3, true, true},
    {"dbrx", TOK_PRE_LLAMA3, false, false},
    {"smaug-bpe", TOK_PRE_LLAMA3, false, false},
    {"qwen2", TOK_PRE_QWEN2, false, false},
    {"deepseek-r1-qwen", TOK_PRE_QWEN2, false, false},
    {"stablelm2", TOK_PRE_QWEN2, false, false},
    {"megrez", TOK_PRE_QWEN2, false, false},
    {"smollm", TOK_PRE_SMOLLM, false, false},
    {"starcoder", TOK_PRE_SMOLLM, false, false},
    {"refact", TOK_PRE_SMOLLM, false, false},
    {"codeshell", TOK_PRE_SMOLLM, false, false},
    {"gpt-2", TOK_PRE_GPT2, false, false},
    {"phi-2", TOK_PRE_GPT2, false, false},
    {"mpt", TOK_PRE_GPT2, false, false},
    {"olmo", TOK_PRE_GPT2, false, false},
};

/* Token texts llama.cpp recognises when the metadata does not name the token (its auto-detection
 * in llama_vocab::impl::load); a recognised token is forced to control type. */
static const char *const eot_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                        "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                                        "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
                                        "<end_of_utterance>", NULL};
static const char *const eom_texts[] = {"<|eom_id|>", NULL};
static const char *const fim_pre_texts[] = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
                                            "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>",
                                            "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const fim_suf_texts[] = {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
                                            "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "hole\xEF\xBD\x9C>", "<SUF>",
                                            "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const fim_mid_texts[] = {"<|fim_middle|>", "<fim-middle>", "<fim_middle>",
                                            "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>",
                                            "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
                                            NULL};
static const char *const fim_sep_texts[] = {"<|file_sep|>", NULL};
/* Every token with one of these texts ends generation. */
static const char *const eog_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                        "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                                        "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
                                        "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                                        "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
                                        "[e~[", NULL};

int tok_pre_from_name(const char *name, size_t len, enum tok_pre *pre, bool *ignore_merges, bool *add_bos)
{
    for (size_t i = 0; i < sizeof(pre_names) / sizeof(pre_names[0]); i++) {
        if (strlen(pre_names[i].name) == len && memcmp(pre_names[i].name, name, len) == 0) {
            *pre = pre_names[i].pre;
            *ignore_merges = pre_names[i].ignore_merges;
            *add_bos = pre_names[i].add_bos;
            return 0;
        }
    }
    return SPEC_E_UNSUPPORTED;
}

static int32_t find_cstr(const struct tok *t, const char *s)
{
    return tok_lookup(t, s, strlen(s));
}

/* Optional bool key: SPEC_E_TYPE when present with another type. */
static int get_opt_bool(const struct gguf *g, const char *key, bool *v)
{
    int rc = gguf_get_bool(g, key, v);
    return rc == SPEC_E_NOT_FOUND ? 0 : rc;
}

/* Optional token id key; an id outside the vocabulary is inconsistent metadata. */
static int get_opt_id(const struct gguf *g, const struct tok *t, const char *key, int32_t *id)
{
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v);
    if (rc == SPEC_E_NOT_FOUND)
        return 0;
    if (rc)
        return rc;
    if (v >= (uint32_t)t->n_vocab)
        return SPEC_E_TOKENIZER;
    *id = (int32_t)v;
    return 0;
}

static int load_kind(struct tok *t, const struct gguf *g, bool *add_bos)
{
    struct gguf_str model;
    int rc = gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc)
        return rc;
    if (gguf_str_eq(model, "gpt2"))
        t->kind = TOK_KIND_BPE;
    else if (gguf_str_eq(model, "llama"))
        t->kind = TOK_KIND_SPM;
    else
        return SPEC_E_UNSUPPORTED;
    *add_bos = t->kind == TOK_KIND_SPM;
    t->add_space_prefix = t->kind == TOK_KIND_SPM;
    t->pre = TOK_PRE_DEFAULT;
    if (t->kind != TOK_KIND_BPE)
        return 0;
    const struct gguf_value *v = gguf_find(g, "tokenizer.ggml.pre");
    if (!v)
        return 0; /* llama.cpp warns and uses "default" */
    if (v->type != GGUF_TYPE_STRING)
        return SPEC_E_TYPE;
    return tok_pre_from_name(v->v.str.ptr, (size_t)v->v.str.len, &t->pre, &t->ignore_merges, add_bos);
}

static int load_tokens(struct tok *t, const struct gguf *g)
{
    const struct gguf_array *toks;
    int rc = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks);
    if (rc)
        return rc;
    if (toks->n == 0 || toks->n >= INT32_MAX)
        return SPEC_E_TOKENIZER;
    t->n_vocab = (int32_t)toks->n;
    size_t n = toks->n;
    char empty[32];
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        /* llama.cpp names an empty token "[EMPTY_<id>]" (an empty string cannot be split out). */
        total += toks->strs[i].len ? toks->strs[i].len : (uint64_t)snprintf(empty, sizeof(empty), "[EMPTY_%zu]", i);
    }
    if (total > UINT32_MAX)
        return SPEC_E_RANGE;
    t->text = malloc(total ? total : 1);
    t->text_off = malloc((n + 1) * sizeof(*t->text_off));
    t->score = calloc(n, sizeof(*t->score));
    t->attr = malloc(n);
    if (!t->text || !t->text_off || !t->score || !t->attr)
        return SPEC_E_NOMEM;
    uint32_t off = 0;
    for (size_t i = 0; i < n; i++) {
        t->text_off[i] = off;
        if (toks->strs[i].len) {
            memcpy(t->text + off, toks->strs[i].ptr, toks->strs[i].len);
            off += (uint32_t)toks->strs[i].len;
        } else {
            int k = snprintf(empty, sizeof(empty), "[EMPTY_%zu]", i);
            memcpy(t->text + off, empty, (size_t)k);
            off += (uint32_t)k;
        }
        t->attr[i] = TOK_ATTR_NORMAL;
    }
    t->text_off[n] = off;

    t->index_mask = pow2_at_least(2 * (uint64_t)n) - 1;
    t->index = malloc(((size_t)t->index_mask + 1) * sizeof(*t->index));
    if (!t->index)
        return SPEC_E_NOMEM;
    memset(t->index, 0xff, ((size_t)t->index_mask + 1) * sizeof(*t->index));
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tok_str(t, (int32_t)i, &len);
        uint32_t h = (uint32_t)hash_bytes(s, len) & t->index_mask;
        for (;; h = (h + 1) & t->index_mask) {
            int32_t other = t->index[h];
            if (other < 0)
                break;
            size_t ol;
            const char *os = tok_str(t, other, &ol);
            if (ol == len && memcmp(os, s, len) == 0)
                return SPEC_E_TOKENIZER; /* duplicate token */
        }
        t->index[h] = (int32_t)i;
    }
    return 0;
}

static int byte_token_value(const struct tok *t, int32_t id)
{
    size_t len;
    const char *s = tok_str(t, id, &len);
    unsigned v;
    char end;
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>' || sscanf(s + 3, "%2x%c", &v, &end) != 2)
        return -1;
    return (int)v;
}

static int load_scores_types(struct tok *t, const struct gguf *g)
{
    const struct gguf_value *v = gguf_find(g, "tokenizer.ggml.scores");
    if (v) {
        if (v->type != GGUF_TYPE_ARRAY || (v->v.arr.type != GGUF_TYPE_FLOAT32 && v->v.arr.type != GGUF_TYPE_INT32))
            return SPEC_E_TYPE;
        if (v->v.arr.n != (uint64_t)t->n_vocab)
            return SPEC_E_TOKENIZER;
        for (int32_t i = 0; i < t->n_vocab; i++) {
            int rc = gguf_arr_get_f32(&v->v.arr, (uint64_t)i, &t->score[i]);
            if (rc)
                return rc;
            if (t->score[i] != t->score[i])
                return SPEC_E_TOKENIZER; /* NaN has no place in a merge order */
        }
    }
    v = gguf_find(g, "tokenizer.ggml.token_type");
    if (!v)
        return 0;
    if (v->type != GGUF_TYPE_ARRAY || v->v.arr.type != GGUF_TYPE_INT32)
        return SPEC_E_TYPE;
    if (v->v.arr.n != (uint64_t)t->n_vocab)
        return SPEC_E_TOKENIZER;
    static const uint8_t attr_of_type[] = {
        [TOK_TYPE_UNDEFINED] = 0,
        [TOK_TYPE_NORMAL] = TOK_ATTR_NORMAL,
        [TOK_TYPE_UNKNOWN] = TOK_ATTR_UNKNOWN,
        [TOK_TYPE_CONTROL] = TOK_ATTR_CONTROL,
        [TOK_TYPE_USER_DEFINED] = TOK_ATTR_USER_DEFINED,
        [TOK_TYPE_UNUSED] = TOK_ATTR_UNUSED,
        [TOK_TYPE_BYTE] = TOK_ATTR_BYTE,
    };
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int64_t ty;
        int rc = gguf_arr_get_i64(&v->v.arr, (uint64_t)i, &ty);
        if (rc)
            return rc;
        if (ty < TOK_TYPE_UNDEFINED || ty > TOK_TYPE_BYTE)
            return SPEC_E_TOKENIZER;
        t->attr[i] = attr_of_type[ty];
        if (ty == TOK_TYPE_BYTE && byte_token_value(t, i) < 0)
            return SPEC_E_TOKENIZER; /* byte tokens must read <0xXX> */
    }
    return 0;
}

static int load_merges(struct tok *t, const struct gguf *g)
{
    const struct gguf_array *mg;
    int rc = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &mg);
    if (rc)
        return rc;
    if (mg->n >= INT32_MAX)
        return SPEC_E_TOKENIZER;
    t->merge_mask = pow2_at_least(2 * mg->n) - 1;
    t->merges = malloc(((size_t)t->merge_mask + 1) * sizeof(*t->merges));
    size_t longest = 0;
    for (uint64_t i = 0; i < mg->n; i++)
        longest = mg->strs[i].len > longest ? mg->strs[i].len : longest;
    char *joined = malloc(longest + 1);
    if (!t->merges || !joined) {
        free(joined);
        return SPEC_E_NOMEM;
    }
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].key = TOK_MERGE_EMPTY;
    rc = 0;
    for (uint64_t i = 0; i < mg->n && rc == 0; i++) {
        const char *s = mg->strs[i].ptr;
        size_t len = mg->strs[i].len;
        /* "left right", split at the first space after the first byte, as llama.cpp does. */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) {
            rc = SPEC_E_TOKENIZER;
            break;
        }
        size_t ll = (size_t)(sp - s), rl = len - ll - 1;
        memcpy(joined, s, ll);
        memcpy(joined + ll, sp + 1, rl);
        int32_t left = tok_lookup(t, s, ll), right = tok_lookup(t, sp + 1, rl);
        int32_t result = tok_lookup(t, joined, ll + rl);
        if (left < 0 || right < 0 || result < 0) {
            rc = SPEC_E_TOKENIZER;
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
        uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->merge_mask;
        while (t->merges[h].key != TOK_MERGE_EMPTY && t->merges[h].key != key)
            h = (h + 1) & t->merge_mask;
        if (t->merges[h].key == TOK_MERGE_EMPTY) /* a repeated pair keeps its first rank */
            t->merges[h] = (struct tok_merge){key, (int32_t)i, result};
    }
    free(joined);
    return rc;
}

/* An id from the metadata, else the first token with one of the texts (forced to control). */
static void detect_special(struct tok *t, int32_t *id, const char *const *texts)
{
    for (size_t i = 0; *id < 0 && texts[i]; i++) {
        *id = find_cstr(t, texts[i]);
        if (*id >= 0)
            t->attr[*id] |= TOK_ATTR_CONTROL;
    }
}

static int load_specials(struct tok *t, const struct gguf *g, bool add_bos)
{
    /* llama.cpp's defaults when the metadata names no token. */
    t->bos = t->kind == TOK_KIND_SPM ? 1 : 11;
    t->eos = t->kind == TOK_KIND_SPM ? 2 : 11;
    t->unk = t->kind == TOK_KIND_SPM ? 0 : -1;
    t->eot = t->eom = -1;
    if (t->bos >= t->n_vocab)
        t->bos = -1;
    if (t->eos >= t->n_vocab)
        t->eos = -1;
    int32_t pad = -1, fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
    const struct {
        const char *key;
        int32_t *id;
    } keys[] = {
        {"tokenizer.ggml.bos_token_id", &t->bos},
        {"tokenizer.ggml.eos_token_id", &t->eos},
        {"tokenizer.ggml.eot_token_id", &t->eot},
        {"tokenizer.ggml.eom_token_id", &t->eom},
        {"tokenizer.ggml.unknown_token_id", &t->unk},
        {"tokenizer.ggml.padding_token_id", &pad},
        {"tokenizer.ggml.fim_pre_token_id", &fim_pre},
        {"tokenizer.ggml.fim_suf_token_id", &fim_suf},
        {"tokenizer.ggml.fim_mid_token_id", &fim_mid},
        {"tokenizer.ggml.fim_pad_token_id", &fim_pad},
        {"tokenizer.ggml.fim_rep_token_id", &fim_rep},
        {"tokenizer.ggml.fim_sep_token_id", &fim_sep},
        {"tokenizer.ggml.prefix_token_id", &fim_pre},
        {"tokenizer.ggml.suffix_token_id", &fim_suf},
        {"tokenizer.ggml.middle_token_id", &fim_mid},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        int rc = get_opt_id(g, t, keys[i].key, keys[i].id);
        if (rc)
            return rc;
    }
    bool add_eos = false;
    int rc = get_opt_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    if (rc == 0)
        rc = get_opt_bool(g, "tokenizer.ggml.add_eos_token", &add_eos);
    if (rc)
        return rc;
    if ((add_bos && t->bos < 0) || (add_eos && t->eos < 0))
        return SPEC_E_TOKENIZER;
    t->add_bos = add_bos;
    t->add_eos = add_eos;

    detect_special(t, &t->eot, eot_texts);
    detect_special(t, &t->eom, eom_texts);
    detect_special(t, &fim_pre, fim_pre_texts);
    detect_special(t, &fim_suf, fim_suf_texts);
    detect_special(t, &fim_mid, fim_mid_texts);
    detect_special(t, &fim_pad, fim_pad_texts);
    detect_special(t, &fim_rep, fim_rep_texts);
    detect_special(t, &fim_sep, fim_sep_texts);

    const int32_t eog_ids[] = {fim_pad, fim_rep, fim_sep, t->eos, t->eot, t->eom};
    for (size_t i = 0; i < sizeof(eog_ids) / sizeof(eog_ids[0]); i++) {
        if (eog_ids[i] >= 0)
            t->attr[eog_ids[i]] |= TOK_ATTR_EOG;
    }
    for (size_t i = 0; eog_texts[i]; i++) {
        int32_t id = find_cstr(t, eog_texts[i]);
        if (id >= 0)
            t->attr[id] |= TOK_ATTR_EOG | TOK_ATTR_CONTROL;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Candidates for tokenizer_st_partition: control, user-defined and unknown-type tokens, longest
 * text first (ties by id; llama.cpp's std::sort leaves their order unspecified). */
static int load_special_list(struct tok *t)
{
    size_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        n += (t->attr[i] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) != 0;
    uint64_t *keys = malloc((n ? n : 1) * sizeof(*keys));
    t->special = malloc((n ? n : 1) * sizeof(*t->special));
    if (!keys || !t->special) {
        free(keys);
        return SPEC_E_NOMEM;
    }
    n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (t->attr[i] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) {
            uint32_t len = t->text_off[i + 1] - t->text_off[i];
            keys[n++] = ((uint64_t)(UINT32_MAX - len) << 32) | (uint32_t)i;
        }
    }
    qsort(keys, n, sizeof(*keys), cmp_u64);
    for (size_t i = 0; i < n; i++)
        t->special[i] = (int32_t)(uint32_t)keys[i];
    t->n_special = n;
    free(keys);
    return 0;
}

static void load_byte_tables(struct tok *t)
{
    tok_bytes_to_unicode(t->byte_cp);
    for (size_t i = 0; i < sizeof(t->cp_byte) / sizeof(t->cp_byte[0]); i++)
        t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
        char raw = (char)b;
        t->raw_byte_tok[b] = tok_lookup(t, &raw, 1);
        if (t->kind == TOK_KIND_BPE) {
            uint8_t u[4];
            size_t n = unicode_encode(t->byte_cp[b], u);
            t->byte_tok[b] = tok_lookup(t, (const char *)u, n);
        } else {
            char hex[8];
            snprintf(hex, sizeof(hex), "<0x%02X>", b);
            int32_t id = find_cstr(t, hex);
            t->byte_tok[b] = id >= 0 ? id : t->raw_byte_tok[b];
        }
    }
}

/* Piece of a normal byte-level BPE token: each code point maps back to its byte; one that is not
 * in the table renders as llama.cpp's "[UNK_BYTE_0x<hex><token text>]". Returns the length and
 * writes to out when not NULL. */
static size_t bpe_decode_text(const struct tok *t, const char *s, size_t len, uint32_t *cpts, char *out)
{
    size_t n = unicode_decode_lenient((const uint8_t *)s, len, cpts);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (cpts[i] < 324 && t->cp_byte[cpts[i]] >= 0) {
            if (out)
                out[k] = (char)t->cp_byte[cpts[i]];
            k++;
            continue;
        }
        uint8_t u[4];
        size_t ul = unicode_encode(cpts[i], u);
        char buf[32];
        int hl = snprintf(buf, sizeof(buf), "[UNK_BYTE_0x");
        for (size_t j = 0; j < ul; j++)
            hl += snprintf(buf + hl, sizeof(buf) - (size_t)hl, "%02x", u[j]);
        if (out) {
            memcpy(out + k, buf, (size_t)hl);
            memcpy(out + k + (size_t)hl, s, len);
            out[k + (size_t)hl + len] = ']';
        }
        k += (size_t)hl + len + 1;
    }
    return k;
}

/* The piece of token id as llama.cpp's token_to_piece(special = true); out may be NULL. */
static size_t render_piece(const struct tok *t, int32_t id, uint32_t *cpts, char *out)
{
    size_t len;
    const char *s = tok_str(t, id, &len);
    uint8_t a = t->attr[id];
    if (a & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) {
        if (out)
            memcpy(out, s, len);
        return len;
    }
    if (a & TOK_ATTR_NORMAL) {
        if (t->kind == TOK_KIND_BPE)
            return bpe_decode_text(t, s, len, cpts, out);
        size_t k = 0;
        for (size_t i = 0; i < len; i++) {
            if (i + 2 < len && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                if (out)
                    out[k] = ' ';
                i += 2;
            } else if (out) {
                out[k] = s[i];
            }
            k++;
        }
        return k;
    }
    if (a & TOK_ATTR_BYTE) {
        if (out)
            out[0] = (char)byte_token_value(t, id);
        return 1;
    }
    return 0;
}

static int load_pieces(struct tok *t)
{
    uint32_t longest = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        uint32_t l = t->text_off[i + 1] - t->text_off[i];
        longest = l > longest ? l : longest;
    }
    uint32_t *cpts = malloc(((size_t)longest + 1) * sizeof(*cpts));
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof(*t->piece_off));
    if (!cpts || !t->piece_off) {
        free(cpts);
        return SPEC_E_NOMEM;
    }
    uint64_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t l = render_piece(t, i, cpts, NULL);
        t->max_piece = l > t->max_piece ? l : t->max_piece;
        total += l;
    }
    if (total > UINT32_MAX) {
        free(cpts);
        return SPEC_E_RANGE;
    }
    t->piece = malloc(total ? total : 1);
    if (!t->piece) {
        free(cpts);
        return SPEC_E_NOMEM;
    }
    uint32_t off = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        t->piece_off[i] = off;
        off += (uint32_t)render_piece(t, i, cpts, t->piece + off);
    }
    t->piece_off[t->n_vocab] = off;
    free(cpts);
    return 0;
}

static int load(struct tok *t, const struct gguf *g)
{
    bool add_bos;
    int rc = load_kind(t, g, &add_bos);
    if (rc == 0)
        rc = load_tokens(t, g);
    if (rc == 0)
        rc = load_scores_types(t, g);
    if (rc == 0)
        rc = get_opt_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix);
    if (rc == 0 && t->kind == TOK_KIND_BPE)
        rc = load_merges(t, g);
    if (rc == 0)
        rc = load_specials(t, g, add_bos);
    if (rc == 0)
        rc = load_special_list(t);
    if (rc == 0)
        rc = tok_chat_load(t, g);
    if (rc)
        return rc;
    load_byte_tables(t);
    return load_pieces(t);
}

int tok_load(const struct gguf *g, struct tok **out)
{
    if (!g || !out)
        return SPEC_E_INVALID_ARG;
    struct tok *t = calloc(1, sizeof(*t));
    if (!t)
        return SPEC_E_NOMEM;
    int rc = load(t, g);
    if (rc) {
        tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tok_free(struct tok *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->text_off);
    free(t->score);
    free(t->attr);
    free(t->piece);
    free(t->piece_off);
    free(t->index);
    free(t->merges);
    free(t->special);
    free(t->chat_system);
    free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Accessors */

static bool valid_id(const struct tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab;
}

enum tok_kind tok_get_kind(const struct tok *t) { return t->kind; }
int32_t tok_n_vocab(const struct tok *t) { return t->n_vocab; }
int32_t tok_bos(const struct tok *t) { return t->bos; }
int32_t tok_eos(const struct tok *t) { return t->eos; }
int32_t tok_eot(const struct tok *t) { return t->eot; }
int32_t tok_unk(const struct tok *t) { return t->unk; }
bool tok_add_bos(const struct tok *t) { return t->add_bos; }
bool tok_add_eos(const struct tok *t) { return t->add_eos; }
size_t tok_max_piece_len(const struct tok *t) { return t->max_piece; }

bool tok_is_eog(const struct tok *t, int32_t id)
{
    return valid_id(t, id) && (t->attr[id] & TOK_ATTR_EOG);
}

bool tok_is_control(const struct tok *t, int32_t id)
{
    return valid_id(t, id) && (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN));
}

const char *tok_text(const struct tok *t, int32_t id, size_t *len)
{
    if (!valid_id(t, id))
        return NULL;
    return tok_str(t, id, len);
}

int32_t tok_find(const struct tok *t, const char *text, size_t len)
{
    return tok_lookup(t, text, len);
}

/* ---------------------------------------------------------------------------------------------- */
/* Encoding */

struct frag {
    int32_t id; /* a special token, or -1 for raw text */
    size_t off, len;
};

/* llama.cpp's tokenizer_st_partition: for each special token, longest first, every occurrence in
 * every remaining raw-text fragment is cut out. Without parse_special only user-defined tokens
 * are. *out has at most len entries. */
static int partition(const struct tok *t, const char *text, size_t len, bool parse_special, struct frag **out,
                     size_t *n_out)
{
    struct frag *a = malloc(len * sizeof(*a)), *b = malloc(len * sizeof(*b));
    if (!a || !b) {
        free(a);
        free(b);
        return SPEC_E_NOMEM;
    }
    size_t n = 1;
    a[0] = (struct frag){-1, 0, len};
    for (size_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (!parse_special && (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)))
            continue;
        size_t sl;
        const char *s = tok_str(t, id, &sl);
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            if (a[i].id >= 0) {
                b[m++] = a[i];
                continue;
            }
            size_t pos = a[i].off, end = a[i].off + a[i].len;
            const char *hit;
            while (pos < end && (hit = memmem(text + pos, end - pos, s, sl)) != NULL) {
                size_t h = (size_t)(hit - text);
                if (h > pos)
                    b[m++] = (struct frag){-1, pos, h - pos};
                b[m++] = (struct frag){id, h, sl};
                pos = h + sl;
            }
            if (pos < end)
                b[m++] = (struct frag){-1, pos, end - pos};
        }
        struct frag *tmp = a;
        a = b;
        b = tmp;
        n = m;
    }
    free(b);
    *out = a;
    *n_out = n;
    return 0;
}

int tok_encode(const struct tok *t, const char *text, size_t len, bool add_special, bool parse_special,
               int32_t *ids, size_t cap, size_t *n_out)
{
    if (!t || !n_out || (len && !text) || (cap && !ids))
        return SPEC_E_INVALID_ARG;
    struct frag *frags = NULL;
    size_t n_frags = 0;
    if (len) {
        int rc = partition(t, text, len, parse_special, &frags, &n_frags);
        if (rc)
            return rc;
    }
    struct tok_sink sink = {ids, cap, 0};
    if (add_special && t->add_bos)
        tok_sink_push(&sink, t->bos);
    bool prev_special = true; /* spm: a space prefix starts the text and follows special tokens */
    int rc = 0;
    for (size_t i = 0; i < n_frags && rc == 0; i++) {
        if (frags[i].id >= 0) {
            tok_sink_push(&sink, frags[i].id);
            prev_special = true;
        } else if (t->kind == TOK_KIND_BPE) {
            rc = tok_bpe_encode(t, text + frags[i].off, frags[i].len, &sink);
        } else {
            rc = tok_spm_encode(t, text + frags[i].off, frags[i].len, t->add_space_prefix && prev_special, &sink);
            prev_special = false;
        }
    }
    free(frags);
    if (rc)
        return rc;
    if (add_special && t->add_eos)
        tok_sink_push(&sink, t->eos);
    *n_out = sink.n;
    return sink.n > cap ? SPEC_E_RANGE : 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Decoding */

/* The bytes id renders to; lstrip drops one leading space (llama.cpp's detokenize of the first
 * token when the vocabulary adds a space prefix). */
static const char *piece_of(const struct tok *t, int32_t id, bool special, bool lstrip, size_t *len)
{
    const char *p = t->piece + t->piece_off[id];
    *len = t->piece_off[id + 1] - t->piece_off[id];
    if (!special && (t->attr[id] & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL)))
        *len = 0;
    if (lstrip && *len && p[0] == ' ') {
        p++;
        (*len)--;
    }
    return p;
}

int tok_piece(const struct tok *t, int32_t id, bool special, char *buf, size_t cap, size_t *n_out)
{
    if (!t || !n_out || (cap && !buf) || !valid_id(t, id))
        return SPEC_E_INVALID_ARG;
    size_t len;
    const char *p = piece_of(t, id, special, false, &len);
    *n_out = len;
    if (len > cap)
        return SPEC_E_RANGE;
    if (len)
        memcpy(buf, p, len);
    return 0;
}

int tok_decode(const struct tok *t, const int32_t *ids, size_t n, bool special, char *buf, size_t cap,
               size_t *n_out)
{
    if (!t || !n_out || (n && !ids) || (cap && !buf))
        return SPEC_E_INVALID_ARG;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!valid_id(t, ids[i]))
            return SPEC_E_INVALID_ARG;
        size_t len;
        const char *p = piece_of(t, ids[i], special, i == 0 && t->add_space_prefix, &len);
        if (len && total + len <= cap)
            memcpy(buf + total, p, len);
        total += len;
    }
    *n_out = total;
    return total > cap ? SPEC_E_RANGE : 0;
}

void tok_stream_init(struct tok_stream *s, const struct tok *t, bool special)
{
    memset(s, 0, sizeof(*s));
    s->tok = t;
    s->special = special;
    s->at_start = true;
}

size_t tok_stream_max_out(const struct tok *t)
{
    /* Held-back bytes plus the piece, each byte at worst replaced by a 3-byte U+FFFD. */
    return 3 * (sizeof(((struct tok_stream *)0)->pending) + t->max_piece);
}

/* Validates pending[0..np) + piece[0..len): writes the complete output to out (when not NULL) and
 * returns its length; *keep is the incomplete tail to hold back. */
static size_t stream_emit(const uint8_t *pending, size_t np, const uint8_t *piece, size_t len, char *out,
                          size_t *keep)
{
    size_t total = np + len, i = 0, k = 0;
    *keep = 0;
    while (i < total) {
        uint8_t win[4];
        size_t w = total - i < 4 ? total - i : 4;
        for (size_t j = 0; j < w; j++)
            win[j] = i + j < np ? pending[i + j] : piece[i + j - np];
        int partial;
        size_t v = unicode_valid_len(win, w, &partial);
        if (v) {
            if (out) {
                for (size_t j = 0; j < v; j++)
                    out[k + j] = (char)win[j];
            }
            k += v;
            i += v;
        } else if (partial) {
            *keep = total - i;
            break;
        } else {
            if (out)
                memcpy(out + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i += unicode_invalid_len(win, w);
        }
    }
    return k;
}

int tok_stream_push(struct tok_stream *s, int32_t id, char *out, size_t cap, size_t *n_out)
{
    if (!s || !s->tok || !n_out || (cap && !out) || !valid_id(s->tok, id))
        return SPEC_E_INVALID_ARG;
    size_t len, keep;
    const uint8_t *p =
        (const uint8_t *)piece_of(s->tok, id, s->special, s->at_start && s->tok->add_space_prefix, &len);
    size_t need = stream_emit(s->pending, s->n_pending, p, len, NULL, &keep);
    *n_out = need;
    if (need > cap)
        return SPEC_E_RANGE;
    stream_emit(s->pending, s->n_pending, p, len, out, &keep);
    uint8_t tail[sizeof(s->pending)];
    size_t total = s->n_pending + len;
    for (size_t j = 0; j < keep; j++) {
        size_t at = total - keep + j;
        tail[j] = at < s->n_pending ? s->pending[at] : p[at - s->n_pending];
    }
    if (keep)
        memcpy(s->pending, tail, keep);
    s->n_pending = (uint8_t)keep;
    s->at_start = false;
    return 0;
}

int tok_stream_flush(struct tok_stream *s, char *out, size_t cap, size_t *n_out)
{
    if (!s || !n_out || (cap && !out))
        return SPEC_E_INVALID_ARG;
    size_t need = s->n_pending ? 3 : 0; /* an incomplete character is one maximal ill-formed subpart */
    *n_out = need;
    if (need > cap)
        return SPEC_E_RANGE;
    if (need)
        memcpy(out, "\xEF\xBF\xBD", need);
    s->n_pending = 0;
    s->at_start = true;
    return 0;
}
