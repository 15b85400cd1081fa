/* Byte-level BPE (tokenizer.ggml.model "gpt2"): llama.cpp's pre-tokenizer regexes as hand-written
 * matchers over code point classes, then merges by rank.
 *
 * llama.cpp runs each pre-tokenizer regex over the pieces the previous one left (a regex never
 * looks past its piece); every match becomes a piece and so does every unmatched stretch between
 * matches. llama3 and gpt2 use hand-written splitters there; the others run std::regex over a
 * "collapsed" text in which each non-ASCII code point stands for its class. Both reduce to the
 * regex semantics over code point classes implemented here: leftmost alternative first, greedy
 * quantifiers, \s = White_Space. */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/tok_internal.h"
#include "model/unicode.h"

#define WS UNICODE_WHITESPACE
#define LETTER UNICODE_LETTER
#define NUMBER UNICODE_NUMBER

/* Length of the match of one regex at pos within its piece [.., end); 0 when none starts there. */
typedef size_t (*match_fn)(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end);

/* [^\s\p{L}\p{N}] */
static bool is_other(uint16_t f)
{
    return !(f & (WS | LETTER | NUMBER));
}

static size_t run_of(const uint16_t *fl, size_t pos, size_t end, uint16_t cls)
{
    size_t p = pos;
    while (p < end && (fl[p] & cls))
        p++;
    return p - pos;
}

static size_t run_of_other(const uint16_t *fl, size_t pos, size_t end)
{
    size_t p = pos;
    while (p < end && is_other(fl[p]))
        p++;
    return p - pos;
}

static uint32_t ascii_lower(uint32_t c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* 's|'t|'re|'ve|'m|'ll|'d, case-insensitively for llama3/qwen2 ((?i:...) / '[sS]...). Only ASCII
 * letters lower to these letters (checked by tools/gen-unicode-tables.py), so ASCII folding is
 * llama.cpp's unicode_tolower() here. */
static size_t match_contraction(const uint32_t *cp, size_t pos, size_t end, bool fold)
{
    if (cp[pos] != '\'' || pos + 1 >= end)
        return 0;
    uint32_t a = fold ? ascii_lower(cp[pos + 1]) : cp[pos + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if (pos + 2 >= end)
        return 0;
    uint32_t b = fold ? ascii_lower(cp[pos + 2]) : cp[pos + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+   (llama3: D = 3; qwen2: D = 1) */
static size_t match_llama3_like(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end, size_t max_digits)
{
    size_t n = match_contraction(cp, pos, end, true);
    if (n)
        return n;
    uint32_t c = cp[pos];
    uint16_t f = fl[pos];
    if (c != '\r' && c != '\n' && !(f & NUMBER)) {
        if (f & LETTER)
            return run_of(fl, pos, end, LETTER);
        if (pos + 1 < end && (fl[pos + 1] & LETTER))
            return 1 + run_of(fl, pos + 1, end, LETTER);
    }
    if (f & NUMBER) {
        n = run_of(fl, pos, end, NUMBER);
        return n < max_digits ? n : max_digits;
    }
    size_t p = (c == ' ' && pos + 1 < end && is_other(fl[pos + 1])) ? pos + 1 : pos;
    if (is_other(fl[p])) {
        p += run_of_other(fl, p, end);
        while (p < end && (cp[p] == '\r' || cp[p] == '\n'))
            p++;
        return p - pos;
    }
    n = run_of(fl, pos, end, WS);
    /* \s*[\r\n]+ backtracks to the last line break of the whitespace run. */
    for (size_t i = n; i > 0; i--) {
        if (cp[pos + i - 1] == '\r' || cp[pos + i - 1] == '\n')
            return i;
    }
    /* \s+(?!\S) leaves the last space for the word after it; at the piece's end it takes all. */
    return (n > 1 && pos + n < end) ? n - 1 : n;
}

static size_t match_llama3(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end)
{
    return match_llama3_like(cp, fl, pos, end, 3);
}

static size_t match_qwen2(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end)
{
    return match_llama3_like(cp, fl, pos, end, 1);
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S), plus llama.cpp's
 * splitter's \s+ for a lone space before a word (the regex leaves it unmatched: the same piece). */
static size_t match_gpt2(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end)
{
    size_t n = match_contraction(cp, pos, end, false);
    if (n)
        return n;
    size_t p = (cp[pos] == ' ' && pos + 1 < end) ? pos + 1 : pos;
    uint16_t f = fl[p];
    if (f & LETTER)
        return p - pos + run_of(fl, p, end, LETTER);
    if (f & NUMBER)
        return p - pos + run_of(fl, p, end, NUMBER);
    if (is_other(f))
        return p - pos + run_of_other(fl, p, end);
    n = run_of(fl, pos, end, WS);
    return (n > 1 && pos + n < end) ? n - 1 : n;
}

/* \p{N} */
static size_t match_one_number(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end)
{
    (void)cp;
    (void)end;
    return (fl[pos] & NUMBER) ? 1 : 0;
}

/* \p{N}+ */
static size_t match_numbers(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end)
{
    (void)cp;
    return run_of(fl, pos, end, NUMBER);
}

static bool is_default_punct(uint32_t c, uint16_t f)
{
    if (f & UNICODE_PUNCTUATION)
        return true;
    switch (c) {
    case '$': case '+': case '<': case '=': case '>': case '^': case '~': case '|':
        return true;
    default:
        return false;
    }
}

/* [\p{P}\$\+<=>\^~\|]+ */
static size_t match_punct(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end)
{
    size_t p = pos;
    while (p < end && is_default_punct(cp[p], fl[p]))
        p++;
    return p - pos;
}

/* [0-9][0-9][0-9] */
static size_t match_three_digits(const uint32_t *cp, const uint16_t *fl, size_t pos, size_t end)
{
    (void)fl;
    if (pos + 3 > end)
        return 0;
    for (size_t i = pos; i < pos + 3; i++) {
        if (cp[i] < '0' || cp[i] > '9')
            return 0;
    }
    return 3;
}

/* One regex over every piece: matches and the stretches between them become the new pieces. */
static size_t split_pass(match_fn match, const uint32_t *cp, const uint16_t *fl, const size_t *in, size_t n_in,
                         size_t *out)
{
    size_t n_out = 0;
    size_t start = 0;
    for (size_t s = 0; s < n_in; s++) {
        size_t end = start + in[s];
        size_t gap = start;
        size_t pos = start;
        while (pos < end) {
            size_t len = match(cp, fl, pos, end);
            if (len == 0) {
                pos++;
                continue;
            }
            if (pos > gap)
                out[n_out++] = pos - gap;
            out[n_out++] = len;
            pos += len;
            gap = pos;
        }
        if (end > gap)
            out[n_out++] = end - gap;
        start = end;
    }
    return n_out;
}

size_t tok_pre_split(enum tok_pre pre, const uint32_t *cpts, const uint16_t *fl, size_t n, size_t *words,
                     size_t *scratch)
{
    /* llama-vocab.cpp's regex_exprs per pre-tokenizer type. */
    static const match_fn passes_default[] = {match_punct, match_gpt2, match_numbers, match_three_digits, NULL};
    static const match_fn passes_llama3[] = {match_llama3, NULL};
    static const match_fn passes_qwen2[] = {match_qwen2, NULL};
    static const match_fn passes_smollm[] = {match_one_number, match_gpt2, NULL};
    static const match_fn passes_gpt2[] = {match_gpt2, NULL};
    const match_fn *passes = passes_default;
    switch (pre) {
    case TOK_PRE_DEFAULT: passes = passes_default; break;
    case TOK_PRE_LLAMA3: passes = passes_llama3; break;
    case TOK_PRE_QWEN2: passes = passes_qwen2; break;
    case TOK_PRE_SMOLLM: passes = passes_smollm; break;
    case TOK_PRE_GPT2: passes = passes_gpt2; break;
    }
    if (n == 0)
        return 0;
    size_t *cur = words, *next = scratch;
    cur[0] = n;
    size_t count = 1;
    for (const match_fn *m = passes; *m; m++) {
        count = split_pass(*m, cpts, fl, cur, count, next);
        size_t *tmp = cur;
        cur = next;
        next = tmp;
    }
    if (cur != words)
        memcpy(words, cur, count * sizeof(*words));
    return count;
}

static const struct tok_merge *merge_find(const struct tok *t, int32_t left, int32_t right)
{
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    uint32_t i = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->merge_mask;
    for (;;) {
        const struct tok_merge *m = &t->merges[i];
        if (m->key == key)
            return m;
        if (m->key == TOK_MERGE_EMPTY)
            return NULL;
        i = (i + 1) & t->merge_mask;
    }
}

/* Per-fragment scratch for merging one word at a time. */
struct bpe_work {
    int32_t *id;   /* token of the symbol, -1 if its byte has none */
    uint32_t *len; /* bytes; 0 once merged into its left neighbour */
    int32_t *prev, *next;
    char *enc;     /* the word in bytes-to-unicode form, for llama3's whole-word lookup */
    struct tok_heap heap;
};

static int add_pair(const struct tok *t, struct bpe_work *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0 || w->id[left] < 0 || w->id[right] < 0)
        return 0;
    const struct tok_merge *m = merge_find(t, w->id[left], w->id[right]);
    if (!m)
        return 0;
    struct tok_pair p = {((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)left, left, right,
                         w->len[left] + w->len[right]};
    return tok_heap_push(&w->heap, p);
}

/* A byte with no token: llama.cpp looks its bytes-to-unicode spelling up one byte at a time. */
static void emit_unknown_byte(const struct tok *t, uint8_t b, struct tok_sink *out)
{
    uint8_t u[4];
    size_t n = unicode_encode(t->byte_cp[b], u);
    for (size_t i = 0; i < n; i++) {
        if (t->raw_byte_tok[u[i]] >= 0)
            tok_sink_push(out, t->raw_byte_tok[u[i]]);
    }
}

static int bpe_word(const struct tok *t, struct bpe_work *w, const uint8_t *s, size_t n, struct tok_sink *out)
{
    if (t->ignore_merges) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            m += unicode_encode(t->byte_cp[s[i]], (uint8_t *)w->enc + m);
        int32_t id = tok_lookup(t, w->enc, m);
        if (id >= 0) {
            tok_sink_push(out, id);
            return 0;
        }
    }
    for (size_t i = 0; i < n; i++) {
        w->id[i] = t->byte_tok[s[i]];
        w->len[i] = 1;
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    w->heap.n = 0;
    for (size_t i = 1; i < n; i++) {
        if (add_pair(t, w, (int32_t)i - 1, (int32_t)i))
            return SPEC_E_NOMEM;
    }
    while (w->heap.n) {
        struct tok_pair p = tok_heap_pop(&w->heap);
        int32_t l = p.left, r = p.right;
        if (w->len[l] == 0 || w->len[r] == 0 || w->next[l] != r || w->len[l] + w->len[r] != p.size)
            continue; /* stale: one side has merged since */
        w->id[l] = merge_find(t, w->id[l], w->id[r])->result;
        w->len[l] += w->len[r];
        w->len[r] = 0;
        w->next[l] = w->next[r];
        if (w->next[l] >= 0)
            w->prev[w->next[l]] = l;
        if (add_pair(t, w, w->prev[l], l) || add_pair(t, w, l, w->next[l]))
            return SPEC_E_NOMEM;
    }
    for (int32_t i = 0; i != -1; i = w->next[i]) {
        if (w->id[i] >= 0)
            tok_sink_push(out, w->id[i]);
        else
            emit_unknown_byte(t, s[i], out);
    }
    return 0;
}

int tok_bpe_encode(const struct tok *t, const char *text, size_t len, struct tok_sink *out)
{
    if (len == 0)
        return 0;
    /* Worst cases: one code point per byte, and 3 bytes (U+FFFD) per invalid input byte. */
    char *mem = malloc(len * (3 * sizeof(size_t) + sizeof(uint32_t) + sizeof(uint16_t) + 3) + sizeof(size_t));
    if (!mem)
        return SPEC_E_NOMEM;
    size_t *words = (size_t *)mem;
    size_t *scratch = words + len;
    size_t *cpoff = scratch + len; /* len + 1 entries */
    uint32_t *cpts = (uint32_t *)(cpoff + len + 1);
    uint16_t *fl = (uint16_t *)(cpts + len);
    uint8_t *san = (uint8_t *)(fl + len);

    /* llama.cpp splits and merges the text re-encoded from its lenient decoding. */
    size_t n_cp = unicode_decode_lenient((const uint8_t *)text, len, cpts);
    size_t nb = 0;
    for (size_t i = 0; i < n_cp; i++) {
        cpoff[i] = nb;
        nb += unicode_encode(cpts[i], san + nb);
        fl[i] = unicode_flags(cpts[i]);
    }
    cpoff[n_cp] = nb;
    size_t n_words = tok_pre_split(t->pre, cpts, fl, n_cp, words, scratch);
    size_t longest = 0;
    for (size_t k = 0, cp = 0; k < n_words; cp += words[k], k++) {
        size_t b = cpoff[cp + words[k]] - cpoff[cp];
        longest = b > longest ? b : longest;
    }
    struct bpe_work w = {0};
    char *wmem = malloc(longest * (3 * sizeof(int32_t) + sizeof(uint32_t) + 2));
    if (!wmem) {
        free(mem);
        return SPEC_E_NOMEM;
    }
    w.id = (int32_t *)wmem;
    w.prev = w.id + longest;
    w.next = w.prev + longest;
    w.len = (uint32_t *)(w.next + longest);
    w.enc = (char *)(w.len + longest);
    int rc = 0;
    for (size_t k = 0, cp = 0; k < n_words && rc == 0; cp += words[k], k++) {
        size_t b0 = cpoff[cp], b1 = cpoff[cp + words[k]];
        rc = bpe_word(t, &w, san + b0, b1 - b0, out);
    }
    free(w.heap.a);
    free(wmem);
    free(mem);
    return rc;
}
