/* Synthetic vocabularies for test models: greedy most-frequent-pair BPE learned from
 * tok_synth_text (see tokenizer.h for the layouts). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/tok_internal.h"
#include "model/unicode.h"

/* ---------------------------------------------------------------------------------------------- */
/* The vocabulary being built: strings with a hash index (a merge may rebuild an existing string). */

struct vocab {
    char **text;
    int32_t *type;
    float *score;
    size_t n, cap;
    int32_t *index; /* -1 free */
    size_t index_cap;
    char **merges;  /* BPE: "left right" */
    size_t n_merges, merges_cap;
};

static uint64_t str_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

static int32_t vocab_find(const struct vocab *v, const char *s)
{
    size_t i = (size_t)str_hash(s) & (v->index_cap - 1);
    while (v->index[i] >= 0) {
        if (strcmp(v->text[v->index[i]], s) == 0)
            return v->index[i];
        i = (i + 1) & (v->index_cap - 1);
    }
    return -1;
}

/* Appends s (taking ownership) unless present; *id is the token's id either way. */
static int vocab_add(struct vocab *v, char *s, int32_t type, float score, int32_t *id)
{
    if (!s)
        return SPEC_E_NOMEM;
    int32_t found = vocab_find(v, s);
    if (found >= 0) {
        free(s);
        *id = found;
        return 0;
    }
    if (v->n == v->cap) {
        free(s);
        return SPEC_E_INVALID_ARG; /* callers size the vocabulary first */
    }
    size_t i = (size_t)str_hash(s) & (v->index_cap - 1);
    while (v->index[i] >= 0)
        i = (i + 1) & (v->index_cap - 1);
    v->index[i] = (int32_t)v->n;
    v->text[v->n] = s;
    v->type[v->n] = type;
    v->score[v->n] = score;
    *id = (int32_t)v->n++;
    return 0;
}

static int vocab_add_new(struct vocab *v, const char *s, int32_t type, float score)
{
    if (vocab_find(v, s) >= 0)
        return SPEC_E_TOKENIZER; /* a fixed token the training text happened to produce */
    int32_t id;
    return vocab_add(v, strdup(s), type, score, &id);
}

static int vocab_init(struct vocab *v, size_t n)
{
    memset(v, 0, sizeof(*v));
    v->cap = n;
    v->index_cap = 2;
    while (v->index_cap < 2 * n)
        v->index_cap *= 2;
    v->text = calloc(n, sizeof(*v->text));
    v->type = calloc(n, sizeof(*v->type));
    v->score = calloc(n, sizeof(*v->score));
    v->index = malloc(v->index_cap * sizeof(*v->index));
    if (!v->text || !v->type || !v->score || !v->index)
        return SPEC_E_NOMEM;
    memset(v->index, 0xff, v->index_cap * sizeof(*v->index));
    return 0;
}

static void vocab_free(struct vocab *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->text[i]);
    for (size_t i = 0; i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->text);
    free(v->type);
    free(v->score);
    free(v->index);
    free(v->merges);
}

static char *concat(const char *a, const char *sep, const char *b)
{
    size_t la = strlen(a), ls = strlen(sep), lb = strlen(b);
    char *s = malloc(la + ls + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, sep, ls);
        memcpy(s + la + ls, b, lb + 1);
    }
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* Training words: distinct words in first-appearance order, each a run of symbol ids (-1: a
 * character left out of a tiny vocabulary, which never merges) with its frequency. */

struct words {
    int32_t *sym;
    size_t n_sym, sym_cap;
    size_t *start;
    uint32_t *len, *count;
    size_t n, cap;
    char **key; /* the word's bytes, for de-duplication */
    size_t *index;
    size_t index_cap;
};

static void words_free(struct words *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->key[i]);
    free(w->sym);
    free(w->start);
    free(w->len);
    free(w->count);
    free(w->key);
    free(w->index);
}

static int words_init(struct words *w, size_t max_words, size_t max_syms)
{
    memset(w, 0, sizeof(*w));
    w->cap = max_words;
    w->sym_cap = max_syms;
    w->index_cap = 2;
    while (w->index_cap < 2 * max_words)
        w->index_cap *= 2;
    w->sym = malloc(max_syms * sizeof(*w->sym));
    w->start = malloc(max_words * sizeof(*w->start));
    w->len = malloc(max_words * sizeof(*w->len));
    w->count = malloc(max_words * sizeof(*w->count));
    w->key = malloc(max_words * sizeof(*w->key));
    w->index = malloc(w->index_cap * sizeof(*w->index));
    if (!w->sym || !w->start || !w->len || !w->count || !w->key || !w->index)
        return SPEC_E_NOMEM;
    memset(w->index, 0xff, w->index_cap * sizeof(*w->index));
    return 0;
}

/* Counts one occurrence of the word key; a new word gets the symbols syms[0..n). */
static int words_add(struct words *w, const char *key, const int32_t *syms, size_t n)
{
    size_t i = (size_t)str_hash(key) & (w->index_cap - 1);
    for (; w->index[i] != SIZE_MAX; i = (i + 1) & (w->index_cap - 1)) {
        if (strcmp(w->key[w->index[i]], key) == 0) {
            w->count[w->index[i]]++;
            return 0;
        }
    }
    char *k = strdup(key);
    if (!k)
        return SPEC_E_NOMEM;
    w->index[i] = w->n;
    w->key[w->n] = k;
    w->start[w->n] = w->n_sym;
    w->len[w->n] = (uint32_t)n;
    w->count[w->n] = 1;
    w->n++;
    memcpy(w->sym + w->n_sym, syms, n * sizeof(*syms));
    w->n_sym += n;
    return 0;
}

struct pair_slot {
    uint64_t key; /* UINT64_MAX: free */
    uint64_t count;
    uint32_t order; /* first appearance, which breaks ties */
};

/* One greedy step: the most frequent adjacent pair (ties: first seen). False when none is left. */
static bool best_pair(const struct words *w, struct pair_slot *slots, size_t cap, int32_t *a, int32_t *b)
{
    for (size_t i = 0; i < cap; i++)
        slots[i].key = UINT64_MAX;
    uint32_t order = 0;
    struct pair_slot *best = NULL;
    for (size_t k = 0; k < w->n; k++) {
        const int32_t *s = w->sym + w->start[k];
        for (uint32_t j = 0; j + 1 < w->len[k]; j++) {
            if (s[j] < 0 || s[j + 1] < 0)
                continue;
            uint64_t key = ((uint64_t)(uint32_t)s[j] << 32) | (uint32_t)s[j + 1];
            size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
            while (slots[h].key != UINT64_MAX && slots[h].key != key)
                h = (h + 1) & (cap - 1);
            if (slots[h].key == UINT64_MAX)
                slots[h] = (struct pair_slot){key, 0, order++};
            slots[h].count += w->count[k];
            if (!best || slots[h].count > best->count ||
                (slots[h].count == best->count && slots[h].order < best->order))
                best = &slots[h];
        }
    }
    if (!best)
        return false;
    *a = (int32_t)(best->key >> 32);
    *b = (int32_t)(uint32_t)best->key;
    return true;
}

static void apply_merge(struct words *w, int32_t a, int32_t b, int32_t id)
{
    for (size_t k = 0; k < w->n; k++) {
        int32_t *s = w->sym + w->start[k];
        uint32_t o = 0;
        for (uint32_t j = 0; j < w->len[k]; j++) {
            if (j + 1 < w->len[k] && s[j] == a && s[j + 1] == b) {
                s[o++] = id;
                j++;
            } else {
                s[o++] = s[j];
            }
        }
        w->len[k] = o;
    }
}

/* Learns merges until the vocabulary holds `until` tokens or no pair is left. BPE records the
 * merge rules; SPM scores each new piece by learning order (first learned scores highest). */
static int train(struct vocab *v, struct words *w, size_t until, bool spm)
{
    size_t cap = 2;
    while (cap < 2 * w->n_sym)
        cap *= 2;
    struct pair_slot *slots = malloc(cap * sizeof(*slots));
    if (!slots)
        return SPEC_E_NOMEM;
    int rc = 0;
    int32_t a, b;
    size_t step = 0;
    while (rc == 0 && v->n < until && best_pair(w, slots, cap, &a, &b)) {
        int32_t id;
        rc = vocab_add(v, concat(v->text[a], "", v->text[b]), TOK_TYPE_NORMAL, -(float)step, &id);
        if (rc == 0 && !spm) {
            if (v->n_merges == v->merges_cap) {
                size_t mc = v->merges_cap ? 2 * v->merges_cap : 256;
                char **m = realloc(v->merges, mc * sizeof(*m));
                if (!m) {
                    rc = SPEC_E_NOMEM;
                    break;
                }
                v->merges = m;
                v->merges_cap = mc;
            }
            v->merges[v->n_merges] = concat(v->text[a], " ", v->text[b]);
            if (!v->merges[v->n_merges])
                rc = SPEC_E_NOMEM;
            else
                v->n_merges++;
        }
        if (rc == 0)
            apply_merge(w, a, b, id);
        step++;
    }
    free(slots);
    return rc;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The training text with its paragraphs in the seed's order, separated by blank lines. */
static char *training_text(uint64_t seed, size_t *len)
{
    size_t n = tok_synth_text_count, total = 0;
    size_t *order = malloc(n * sizeof(*order));
    if (!order)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        order[i] = i;
        total += strlen(tok_synth_text[i]) + 2;
    }
    for (size_t i = n - 1; i > 0 && seed; i--) {
        size_t j = (size_t)(splitmix64(&seed) % (i + 1));
        size_t tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    char *text = malloc(total + 1);
    if (text) {
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(tok_synth_text[order[i]]);
            memcpy(text + off, tok_synth_text[order[i]], l);
            memcpy(text + off + l, "\n\n", 2);
            off += l + 2;
        }
        text[off] = 0;
        *len = off;
    }
    free(order);
    return text;
}

/* ---------------------------------------------------------------------------------------------- */
/* BPE */

static const char *const bpe_specials[] = {"<|bos|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"};

static int build_bpe(struct vocab *v, enum tok_pre pre, const char *text, size_t len)
{
    uint16_t byte_cp[256];
    tok_bytes_to_unicode(byte_cp);
    for (int b = 0; b < 256; b++) {
        uint8_t u[5];
        u[unicode_encode(byte_cp[b], u)] = 0;
        int rc = vocab_add_new(v, (const char *)u, TOK_TYPE_NORMAL, 0.0f);
        if (rc)
            return rc;
    }
    uint32_t *cpts = malloc(len * sizeof(*cpts));
    uint16_t *fl = malloc(len * sizeof(*fl));
    size_t *lens = malloc(2 * len * sizeof(*lens));
    int32_t *syms = malloc(len * sizeof(*syms));
    char *key = malloc(len + 1);
    struct words w;
    int rc = words_init(&w, len, len);
    if (!cpts || !fl || !lens || !syms || !key)
        rc = SPEC_E_NOMEM;
    if (rc == 0) {
        size_t n = unicode_decode_lenient((const uint8_t *)text, len, cpts);
        for (size_t i = 0; i < n; i++)
            fl[i] = unicode_flags(cpts[i]);
        size_t n_words = tok_pre_split(pre, cpts, fl, n, lens, lens + len);
        const char *p = text;
        for (size_t k = 0, cp = 0; k < n_words && rc == 0; k++) {
            size_t bytes = 0;
            for (size_t c = 0; c < lens[k]; c++, cp++) {
                uint8_t u[4];
                bytes += unicode_encode(cpts[cp], u); /* the text is valid UTF-8: same bytes */
            }
            for (size_t i = 0; i < bytes; i++)
                syms[i] = (uint8_t)p[i]; /* byte token b has id b */
            memcpy(key, p, bytes);
            key[bytes] = 0;
            rc = words_add(&w, key, syms, bytes);
            p += bytes;
        }
    }
    if (rc == 0)
        rc = train(v, &w, v->cap - 4, false);
    words_free(&w);
    free(cpts);
    free(fl);
    free(lens);
    free(syms);
    free(key);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* SPM */

static int cmp_char_freq(const void *pa, const void *pb)
{
    const uint64_t *a = pa, *b = pb; /* {count, code point}: most frequent first */
    if (a[0] != b[0])
        return a[0] > b[0] ? -1 : 1;
    return a[1] < b[1] ? -1 : a[1] > b[1];
}

static bool is_space(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

/* The next whitespace-separated word at or after *pos as "▁word" in key; false at the end. */
static bool next_word(const char *text, size_t len, size_t *pos, char *key)
{
    size_t i = *pos;
    while (i < len && is_space(text[i]))
        i++;
    if (i == len)
        return false;
    size_t e = i;
    while (e < len && !is_space(text[e]))
        e++;
    memcpy(key, "\xE2\x96\x81", 3);
    memcpy(key + 3, text + i, e - i);
    key[3 + e - i] = 0;
    *pos = e;
    return true;
}

/* Characters of the "▁word" forms, most frequent first, then learned pieces. */
static int build_spm(struct vocab *v, size_t n_vocab, const char *text, size_t len)
{
    int rc = 0;
    uint64_t(*freq)[2] = calloc(len + 1, sizeof(*freq)); /* {count, code point} */
    int32_t *syms = malloc((len + 3) * sizeof(*syms));
    char *key = malloc(len + 4);
    uint32_t *cpts = malloc((len + 3) * sizeof(*cpts));
    struct words w;
    memset(&w, 0, sizeof(w));
    if (!freq || !syms || !key || !cpts) {
        rc = SPEC_E_NOMEM;
        goto done;
    }
    size_t n_chars = 0;
    for (size_t pos = 0; next_word(text, len, &pos, key);) {
        size_t n = unicode_decode_lenient((const uint8_t *)key, strlen(key), cpts);
        for (size_t i = 0; i < n; i++) {
            size_t j = 0;
            while (j < n_chars && freq[j][1] != cpts[i])
                j++;
            if (j == n_chars)
                freq[n_chars++][1] = cpts[i];
            freq[j][0]++;
        }
    }
    qsort(freq, n_chars, sizeof(*freq), cmp_char_freq);
    const size_t fixed = 3 + 2; /* <unk> <s> </s>, and the two chat tokens at the end */
    bool bytes = n_vocab >= fixed + 256 + n_chars;
    size_t keep = bytes ? n_chars : (n_vocab - fixed) * 2 / 3;
    if (keep > n_chars)
        keep = n_chars;

    rc = vocab_add_new(v, "<unk>", TOK_TYPE_UNKNOWN, 0.0f);
    if (rc == 0)
        rc = vocab_add_new(v, "<s>", TOK_TYPE_CONTROL, 0.0f);
    if (rc == 0)
        rc = vocab_add_new(v, "</s>", TOK_TYPE_CONTROL, 0.0f);
    for (int b = 0; bytes && b < 256 && rc == 0; b++) {
        char hex[8];
        snprintf(hex, sizeof(hex), "<0x%02X>", b);
        rc = vocab_add_new(v, hex, TOK_TYPE_BYTE, 0.0f);
    }
    for (size_t i = 0; i < keep && rc == 0; i++) {
        uint8_t u[5];
        u[unicode_encode((uint32_t)freq[i][1], u)] = 0;
        /* Below every learned piece: characters are never the result of a merge. */
        rc = vocab_add_new(v, (const char *)u, TOK_TYPE_NORMAL, -1e6f - (float)i);
    }
    if (rc == 0)
        rc = words_init(&w, len + 1, len + 3 * (len + 1));
    for (size_t pos = 0; rc == 0 && next_word(text, len, &pos, key);) {
        size_t n = 0;
        for (size_t o = 0; key[o];) {
            size_t l = unicode_lead_len((uint8_t)key[o]);
            char c[5] = {0};
            memcpy(c, key + o, l);
            syms[n++] = vocab_find(v, c); /* -1 for a character left out */
            o += l;
        }
        rc = words_add(&w, key, syms, n);
    }
    if (rc == 0)
        rc = train(v, &w, n_vocab - 2, true);
done:
    words_free(&w);
    free(freq);
    free(syms);
    free(key);
    free(cpts);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */

static int write_vocab(struct gguf_writer *gw, const struct tok_synth_config *cfg, const struct vocab *v,
                       const char *pre)
{
    bool spm = cfg->kind == TOK_KIND_SPM;
    int rc = gguf_writer_set_str(gw, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (rc == 0 && !spm)
        rc = gguf_writer_set_str(gw, "tokenizer.ggml.pre", pre);
    if (rc == 0)
        rc = gguf_writer_set_str_arr(gw, "tokenizer.ggml.tokens", (const char *const *)v->text, v->n);
    if (rc == 0)
        rc = gguf_writer_set_arr(gw, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v->type, v->n);
    if (rc == 0 && spm)
        rc = gguf_writer_set_arr(gw, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v->score, v->n);
    if (rc == 0 && !spm)
        rc = gguf_writer_set_str_arr(gw, "tokenizer.ggml.merges", (const char *const *)v->merges, v->n_merges);
    if (rc == 0)
        rc = gguf_writer_set_u32(gw, "tokenizer.ggml.bos_token_id", spm ? 1 : (uint32_t)v->n - 4);
    if (rc == 0)
        rc = gguf_writer_set_u32(gw, "tokenizer.ggml.eos_token_id", spm ? 2 : (uint32_t)v->n - 3);
    if (rc == 0 && spm)
        rc = gguf_writer_set_u32(gw, "tokenizer.ggml.unknown_token_id", 0);
    if (rc == 0)
        rc = gguf_writer_set_bool(gw, "tokenizer.ggml.add_bos_token", cfg->add_bos);
    if (rc == 0)
        rc = gguf_writer_set_bool(gw, "tokenizer.ggml.add_eos_token", false);
    if (rc == 0) /* ChatML with a default system message, the shape of SmolLM2's template */
        rc = gguf_writer_set_str(gw, "tokenizer.chat_template",
                                 "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                                 "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                                 "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
                                 "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                                 "{% endif %}");
    return rc;
}

int tok_synth_write(struct gguf_writer *gw, const struct tok_synth_config *cfg)
{
    if (!gw || !cfg || cfg->n_vocab > TOK_SYNTH_MAX_VOCAB)
        return SPEC_E_INVALID_ARG;
    bool spm = cfg->kind == TOK_KIND_SPM;
    if (cfg->kind != TOK_KIND_BPE && !spm)
        return SPEC_E_INVALID_ARG;
    if (cfg->n_vocab < (spm ? TOK_SYNTH_SPM_MIN_VOCAB : TOK_SYNTH_BPE_MIN_VOCAB))
        return SPEC_E_INVALID_ARG;
    const char *pre = cfg->pre ? cfg->pre : "llama-bpe";
    enum tok_pre pre_type = TOK_PRE_DEFAULT;
    bool ignore_merges, add_bos;
    if (!spm && tok_pre_from_name(pre, strlen(pre), &pre_type, &ignore_merges, &add_bos))
        return SPEC_E_INVALID_ARG;

    size_t len = 0;
    char *text = training_text(cfg->seed, &len);
    struct vocab v;
    memset(&v, 0, sizeof(v));
    int rc = text ? vocab_init(&v, cfg->n_vocab) : SPEC_E_NOMEM;
    if (rc == 0)
        rc = spm ? build_spm(&v, cfg->n_vocab, text, len) : build_bpe(&v, pre_type, text, len);
    /* Fill what the text could not, then the trailing control tokens. */
    size_t n_tail = spm ? 2 : 4;
    for (size_t k = 0; rc == 0 && v.n < cfg->n_vocab - n_tail; k++) {
        char name[32];
        snprintf(name, sizeof(name), "<|unused_%zu|>", k);
        rc = vocab_add_new(&v, name, TOK_TYPE_UNUSED, 0.0f);
    }
    static const char *const spm_specials[] = {"<|im_start|>", "<|im_end|>"};
    for (size_t k = 0; rc == 0 && k < n_tail; k++)
        rc = vocab_add_new(&v, spm ? spm_specials[k] : bpe_specials[k], TOK_TYPE_CONTROL, 0.0f);
    if (rc == 0)
        rc = write_vocab(gw, cfg, &v, pre);
    vocab_free(&v);
    free(text);
    return rc;
}
