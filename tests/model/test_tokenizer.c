/* Tokenizer behaviour on synthetic and hand-made vocabularies (no model files needed). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

/* ---------------------------------------------------------------------------------------------- */
/* Helpers */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Loads the writer's GGUF; the buffer is wiped and freed before returning, so a tokenizer that
 * kept pointers into it would fail the tests. */
static int load_writer(struct gguf_writer *w, struct tok **t)
{
    void *mem;
    size_t size;
    cr_assert_eq(gguf_writer_write_memory(w, &mem, &size), 0);
    struct gguf *g;
    cr_assert_eq(gguf_open_memory(mem, size, &g), 0);
    int rc = tok_load(g, t);
    gguf_close(g);
    memset(mem, 0xAB, size);
    free(mem);
    return rc;
}

static struct gguf_writer *synth_writer(enum tok_kind kind, uint32_t n_vocab, const char *pre, bool add_bos)
{
    struct gguf_writer *w;
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    struct tok_synth_config cfg = {kind, n_vocab, 0, pre, add_bos};
    cr_assert_eq(tok_synth_write(w, &cfg), 0);
    return w;
}

static struct tok *synth(enum tok_kind kind, uint32_t n_vocab, const char *pre, bool add_bos)
{
    struct gguf_writer *w = synth_writer(kind, n_vocab, pre, add_bos);
    struct tok *t;
    cr_assert_eq(load_writer(w, &t), 0);
    gguf_writer_free(w);
    return t;
}

/* A hand-made vocabulary: model, optional pre, tokens with types (NULL: all normal), merges
 * (gpt2) or scores (llama). */
static struct gguf_writer *hand_writer(const char *model, const char *pre, const char *const *tokens,
                                       const int32_t *types, size_t n, const char *const *merges, size_t n_merges,
                                       const float *scores)
{
    struct gguf_writer *w;
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", model), 0);
    if (pre)
        cr_assert_eq(gguf_writer_set_str(w, "tokenizer.ggml.pre", pre), 0);
    cr_assert_eq(gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", tokens, n), 0);
    if (types)
        cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, n), 0);
    if (merges)
        cr_assert_eq(gguf_writer_set_str_arr(w, "tokenizer.ggml.merges", merges, n_merges), 0);
    if (scores)
        cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, n), 0);
    return w;
}

/* An empty merges list (NULL writes no merges key at all). */
static const char *const no_merges[] = {""};

static struct tok *hand(struct gguf_writer *w)
{
    struct tok *t;
    cr_assert_eq(load_writer(w, &t), 0);
    gguf_writer_free(w);
    return t;
}

static size_t encode(const struct tok *t, const char *s, size_t len, bool add_special, bool parse_special,
                     int32_t *ids, size_t cap)
{
    size_t n = 0;
    int rc = tok_encode(t, s, len, add_special, parse_special, ids, cap, &n);
    cr_assert_eq(rc, 0, "tok_encode: %s", spec_errname(rc));
    return n;
}

static size_t decode(const struct tok *t, const int32_t *ids, size_t n, bool special, char *buf, size_t cap)
{
    size_t m = 0;
    int rc = tok_decode(t, ids, n, special, buf, cap, &m);
    cr_assert_eq(rc, 0, "tok_decode: %s", spec_errname(rc));
    return m;
}

static int32_t id_of(const struct tok *t, const char *s)
{
    int32_t id = tok_find(t, s, strlen(s));
    cr_assert_geq(id, 0, "no token %s", s);
    return id;
}

static bool contains(const int32_t *ids, size_t n, int32_t id)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == id)
            return true;
    }
    return false;
}

/* UTF-8 encoding of cp <= U+10FFFF, written here so the tests do not rely on model/unicode.c. */
static size_t put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Random valid UTF-8: mostly ASCII words and spaces, some 2-, 3- and 4-byte characters. */
static size_t random_utf8(uint64_t *rng, char *out, size_t max_chars)
{
    size_t n = rng_next(rng) % (max_chars + 1), k = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(rng) % 100;
        uint32_t cp;
        if (r < 60)
            cp = 0x20 + (uint32_t)(rng_next(rng) % 95);
        else if (r < 70)
            cp = "\n\t '0123456789"[rng_next(rng) % 14];
        else if (r < 80)
            cp = 0x80 + (uint32_t)(rng_next(rng) % (0x800 - 0x80));
        else if (r < 95) {
            do
                cp = 0x800 + (uint32_t)(rng_next(rng) % (0x10000 - 0x800));
            while (cp >= 0xD800 && cp < 0xE000);
        } else
            cp = 0x10000 + (uint32_t)(rng_next(rng) % (0x110000 - 0x10000));
        k += put_utf8(cp, out + k);
    }
    return k;
}

/* What llama.cpp makes of arbitrary bytes before BPE: a lead byte with enough continuation bytes is
 * one code point (even overlong or a surrogate), re-encoded in shortest form; any other byte is
 * U+FFFD. Written independently of model/unicode.c. */
static size_t llama_sanitize(const uint8_t *s, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t len = s[i] < 0x80 ? 1 : s[i] < 0xC0 ? 0 : s[i] < 0xE0 ? 2 : s[i] < 0xF0 ? 3 : s[i] < 0xF8 ? 4 : 0;
        uint32_t cp = len == 1 ? s[i] : len == 2 ? (s[i] & 0x1Fu) : len == 3 ? (s[i] & 0x0Fu) : (s[i] & 0x07u);
        for (size_t j = 1; len && j < len; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80)
                len = 0;
            else
                cp = (cp << 6) | (s[i + j] & 0x3Fu);
        }
        if (len == 0 || cp > 0x10FFFF) {
            cp = 0xFFFD;
            len = 1;
        }
        i += len;
        k += put_utf8(cp, out + k);
    }
    return k;
}

/* Strict UTF-8 validation with one U+FFFD per maximal ill-formed subpart (what Python's
 * bytes.decode("utf-8", "replace") gives), by table rather than model/unicode.c's code. */
static size_t lossy_utf8(const uint8_t *s, size_t n, char *out)
{
    static const struct {
        uint8_t lo, hi, len, b2lo, b2hi;
    } leads[] = {
        {0x00, 0x7F, 1, 0, 0},       {0xC2, 0xDF, 2, 0x80, 0xBF}, {0xE0, 0xE0, 3, 0xA0, 0xBF},
        {0xE1, 0xEC, 3, 0x80, 0xBF}, {0xED, 0xED, 3, 0x80, 0x9F}, {0xEE, 0xEF, 3, 0x80, 0xBF},
        {0xF0, 0xF0, 4, 0x90, 0xBF}, {0xF1, 0xF3, 4, 0x80, 0xBF}, {0xF4, 0xF4, 4, 0x80, 0x8F},
    };
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t L = 0, ok = 1;
        for (size_t e = 0; e < sizeof(leads) / sizeof(leads[0]); e++) {
            if (s[i] >= leads[e].lo && s[i] <= leads[e].hi) {
                L = leads[e].len;
                if (L > 1) {
                    if (i + 1 < n && s[i + 1] >= leads[e].b2lo && s[i + 1] <= leads[e].b2hi) {
                        ok = 2;
                        while (ok < L && i + ok < n && (s[i + ok] & 0xC0) == 0x80)
                            ok++;
                    }
                } else {
                    ok = 1;
                }
            }
        }
        if (L && ok == L) {
            memcpy(out + k, s + i, L);
            k += L;
            i += L;
        } else {
            memcpy(out + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i += L ? ok : 1;
        }
    }
    return k;
}

static bool is_valid_utf8(const char *s, size_t n)
{
    char *tmp = malloc(3 * n + 1);
    size_t m = lossy_utf8((const uint8_t *)s, n, tmp);
    bool same = m == n && memcmp(tmp, s, n) == 0;
    free(tmp);
    return same;
}

/* ---------------------------------------------------------------------------------------------- */
/* Byte-level BPE */

Test(tokenizer, bpe_roundtrips_random_utf8)
{
    struct tok *t = synth(TOK_KIND_BPE, 1024, NULL, true);
    uint64_t rng = 12345;
    char text[4 * 64], back[4 * 64 + 64];
    int32_t ids[512];
    for (int iter = 0; iter < 500; iter++) {
        size_t len = random_utf8(&rng, text, 64);
        size_t n = encode(t, text, len, false, false, ids, 512);
        size_t m = decode(t, ids, n, false, back, sizeof(back));
        cr_assert(m == len && memcmp(back, text, len) == 0, "iteration %d: %zu bytes back, want %zu", iter, m, len);
        /* With BOS added, decoding without special tokens still gives the text. */
        n = encode(t, text, len, true, false, ids, 512);
        cr_assert_eq(ids[0], tok_bos(t));
        m = decode(t, ids, n, false, back, sizeof(back));
        cr_assert(m == len && memcmp(back, text, len) == 0);
    }
    tok_free(t);
}

Test(tokenizer, bpe_invalid_utf8_decodes_as_llamacpp_replacement_characters)
{
    struct tok *t = synth(TOK_KIND_BPE, 512, "qwen2", false);
    int32_t ids[256];
    char back[512], want[512];
    /* A stray byte, a truncated 3-byte sequence, an overlong NUL and a lead byte beyond U+10FFFF. */
    static const char bad[] = "a\xFF" "b\xE2\x82" "c\xC0\x80" "d\xF7\xBF\xBF\xBF";
    size_t n = encode(t, bad, sizeof(bad) - 1, false, false, ids, 256);
    size_t m = decode(t, ids, n, false, back, sizeof(back));
    static const char expect[] = "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD" "c\0" "d\xEF\xBF\xBD\xEF\xBF\xBD"
                                 "\xEF\xBF\xBD\xEF\xBF\xBD";
    cr_assert_eq(m, sizeof(expect) - 1);
    cr_assert_arr_eq(back, expect, m);

    uint64_t rng = 99;
    uint8_t raw[48];
    for (int iter = 0; iter < 300; iter++) {
        size_t len = rng_next(&rng) % sizeof(raw);
        for (size_t i = 0; i < len; i++)
            raw[i] = (uint8_t)rng_next(&rng);
        n = encode(t, (const char *)raw, len, false, false, ids, 256);
        m = decode(t, ids, n, false, back, sizeof(back));
        size_t w = llama_sanitize(raw, len, want);
        cr_assert(m == w && memcmp(back, want, w) == 0, "iteration %d", iter);
    }
    tok_free(t);
}

Test(tokenizer, bpe_applies_merges_by_rank_not_by_position)
{
    static const char *const toks[] = {"a", "b", "c", "ab", "bc", "abc"};
    /* "b c" outranks "a b": "abc" becomes a + bc; with the order swapped, ab + c. */
    static const char *const bc_first[] = {"b c", "a b"};
    static const char *const ab_first[] = {"a b", "b c"};
    int32_t ids[8];
    struct tok *t = hand(hand_writer("gpt2", "gpt-2", toks, NULL, 6, bc_first, 2, NULL));
    cr_assert_eq(encode(t, "abc", 3, false, false, ids, 8), 2);
    cr_assert_eq(ids[0], 0);
    cr_assert_eq(ids[1], 4);
    tok_free(t);
    t = hand(hand_writer("gpt2", "gpt-2", toks, NULL, 6, ab_first, 2, NULL));
    cr_assert_eq(encode(t, "abc", 3, false, false, ids, 8), 2);
    cr_assert_eq(ids[0], 3);
    cr_assert_eq(ids[1], 2);
    tok_free(t);
}

Test(tokenizer, bpe_equal_rank_pairs_merge_leftmost_first)
{
    static const char *const toks[] = {"a", "aa"};
    static const char *const merges[] = {"a a"};
    struct tok *t = hand(hand_writer("gpt2", "gpt-2", toks, NULL, 2, merges, 1, NULL));
    int32_t ids[8];
    cr_assert_eq(encode(t, "aaa", 3, false, false, ids, 8), 2);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 0);
    tok_free(t);
}

Test(tokenizer, llama3_takes_a_word_that_is_a_token_without_merging)
{
    /* "abc" is a token no merge leads to: llama-bpe (ignore_merges) uses it, qwen2 merges to ab + c. */
    static const char *const toks[] = {"a", "b", "c", "ab", "abc"};
    static const char *const merges[] = {"a b"};
    int32_t ids[8];
    struct gguf_writer *w = hand_writer("gpt2", "llama-bpe", toks, NULL, 5, merges, 1, NULL);
    cr_assert_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false), 0);
    struct tok *t = hand(w);
    cr_assert_eq(encode(t, "abc", 3, false, false, ids, 8), 1);
    cr_assert_eq(ids[0], 4);
    tok_free(t);
    t = hand(hand_writer("gpt2", "qwen2", toks, NULL, 5, merges, 1, NULL));
    cr_assert_eq(encode(t, "abc", 3, false, false, ids, 8), 2);
    cr_assert_eq(ids[0], 3);
    tok_free(t);
}

Test(tokenizer, merges_never_cross_pre_tokenizer_boundaries)
{
    /* With a merge for "a" + "Ġ" (a then space), "a b" still splits as "a" | " b" first. */
    static const char *const toks[] = {"a", "b", "\xC4\xA0", "a\xC4\xA0", "\xC4\xA0\x62"}; /* \x62: b */
    static const char *const merges[] = {"a \xC4\xA0", "\xC4\xA0 b"};
    struct tok *t = hand(hand_writer("gpt2", "gpt-2", toks, NULL, 5, merges, 2, NULL));
    int32_t ids[8];
    cr_assert_eq(encode(t, "a b", 3, false, false, ids, 8), 2);
    cr_assert_eq(ids[0], 0);
    cr_assert_eq(ids[1], 4);
    tok_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Special tokens */

Test(tokenizer, parse_special_turns_control_texts_into_tokens_only_when_asked)
{
    struct tok *t = synth(TOK_KIND_BPE, 512, NULL, false);
    static const char text[] = "<|im_start|>user\nhi<|im_end|>";
    int32_t ids[64];
    char back[128];
    int32_t start = id_of(t, "<|im_start|>"), end = id_of(t, "<|im_end|>");
    size_t n = encode(t, text, sizeof(text) - 1, false, true, ids, 64);
    cr_assert_eq(ids[0], start);
    cr_assert_eq(ids[n - 1], end);
    cr_assert_eq(decode(t, ids, n, true, back, sizeof(back)), sizeof(text) - 1);
    cr_assert_arr_eq(back, text, sizeof(text) - 1);
    /* Without parse_special they are plain text: no control ids, same bytes back. */
    n = encode(t, text, sizeof(text) - 1, false, false, ids, 64);
    cr_assert_not(contains(ids, n, start) || contains(ids, n, end));
    cr_assert_eq(decode(t, ids, n, false, back, sizeof(back)), sizeof(text) - 1);
    cr_assert_arr_eq(back, text, sizeof(text) - 1);
    tok_free(t);
}

Test(tokenizer, user_defined_tokens_are_split_out_even_without_parse_special)
{
    static const char *const toks[] = {"x", "y", "<", ">", "t", "<t>", "<c>"};
    static const int32_t types[] = {TOK_TYPE_NORMAL,  TOK_TYPE_NORMAL,       TOK_TYPE_NORMAL, TOK_TYPE_NORMAL,
                                    TOK_TYPE_NORMAL, TOK_TYPE_USER_DEFINED, TOK_TYPE_CONTROL};
    struct tok *t = hand(hand_writer("gpt2", "gpt-2", toks, types, 7, no_merges, 0, NULL));
    int32_t ids[16];
    size_t n = encode(t, "x<t>y<c>", 8, false, false, ids, 16);
    cr_assert_eq(n, 5); /* x, <t>, y, <, > ("c" has no token and is dropped, as llama.cpp does) */
    cr_assert_eq(ids[1], 5);
    cr_assert_not(contains(ids, n, 6));
    n = encode(t, "x<t>y<c>", 8, false, true, ids, 16);
    cr_assert_eq(n, 4);
    cr_assert_eq(ids[3], 6);
    tok_free(t);
}

Test(tokenizer, longest_special_token_is_cut_out_first)
{
    static const char *const toks[] = {"x", "<a>", "<a><b>"};
    static const int32_t types[] = {TOK_TYPE_NORMAL, TOK_TYPE_CONTROL, TOK_TYPE_CONTROL};
    struct tok *t = hand(hand_writer("gpt2", "gpt-2", toks, types, 3, no_merges, 0, NULL));
    int32_t ids[8];
    cr_assert_eq(encode(t, "<a><a><b>x", 10, false, true, ids, 8), 3);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 2);
    cr_assert_eq(ids[2], 0);
    tok_free(t);
}

Test(tokenizer, add_special_follows_add_bos_and_add_eos_metadata)
{
    struct gguf_writer *w = synth_writer(TOK_KIND_BPE, 300, NULL, true);
    cr_assert_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", true), 0);
    struct tok *t = hand(w);
    int32_t ids[16];
    size_t n = encode(t, "hi", 2, true, false, ids, 16);
    cr_assert_eq(ids[0], tok_bos(t));
    cr_assert_eq(ids[n - 1], tok_eos(t));
    n = encode(t, "hi", 2, false, false, ids, 16);
    cr_assert_not(contains(ids, n, tok_bos(t)) || contains(ids, n, tok_eos(t)));
    cr_assert_eq(encode(t, "", 0, true, false, ids, 16), 2);
    cr_assert_eq(encode(t, "", 0, false, false, ids, 16), 0);
    tok_free(t);

    t = synth(TOK_KIND_BPE, 300, NULL, false);
    n = encode(t, "hi", 2, true, false, ids, 16);
    cr_assert_neq(ids[0], tok_bos(t));
    cr_assert_not(tok_add_bos(t));
    tok_free(t);
}

Test(tokenizer, too_small_output_reports_the_count_needed)
{
    struct tok *t = synth(TOK_KIND_BPE, 300, NULL, true);
    static const char text[] = "a few words of text";
    int32_t all[64], part[3];
    size_t n_all = encode(t, text, sizeof(text) - 1, true, false, all, 64), n = 0;
    cr_assert_gt(n_all, 3);
    cr_assert_eq(tok_encode(t, text, sizeof(text) - 1, true, false, part, 3, &n), SPEC_E_RANGE);
    cr_assert_eq(n, n_all);
    cr_assert_arr_eq(part, all, 3 * sizeof(int32_t));
    cr_assert_eq(tok_encode(t, text, sizeof(text) - 1, true, false, NULL, 0, &n), SPEC_E_RANGE);
    cr_assert_eq(n, n_all);
    tok_free(t);
}

Test(tokenizer, end_of_generation_covers_eos_and_end_marker_texts)
{
    struct tok *t = synth(TOK_KIND_BPE, 300, NULL, true);
    cr_assert(tok_is_eog(t, tok_eos(t)));
    cr_assert(tok_is_eog(t, id_of(t, "<|endoftext|>")));
    cr_assert(tok_is_eog(t, id_of(t, "<|im_end|>")));
    cr_assert_eq(tok_eot(t), id_of(t, "<|im_end|>"));
    cr_assert_not(tok_is_eog(t, id_of(t, "<|im_start|>")));
    cr_assert_not(tok_is_eog(t, tok_bos(t)));
    cr_assert_not(tok_is_eog(t, id_of(t, "a")));
    cr_assert_not(tok_is_eog(t, -1));
    cr_assert_not(tok_is_eog(t, tok_n_vocab(t)));
    tok_free(t);
}

Test(tokenizer, control_tokens_render_only_when_asked)
{
    struct tok *t = synth(TOK_KIND_BPE, 300, NULL, true);
    char buf[32];
    size_t n = 99;
    cr_assert(tok_is_control(t, tok_bos(t)));
    cr_assert_eq(tok_piece(t, tok_bos(t), false, buf, sizeof(buf), &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(tok_piece(t, tok_bos(t), true, buf, sizeof(buf), &n), 0);
    cr_assert_eq(n, 7);
    cr_assert_arr_eq(buf, "<|bos|>", 7);
    cr_assert_eq(tok_piece(t, tok_bos(t), true, buf, 3, &n), SPEC_E_RANGE);
    cr_assert_eq(n, 7);
    /* A byte-level token comes back as raw bytes: "Ġ" is a space. */
    cr_assert_eq(tok_piece(t, id_of(t, "\xC4\xA0"), false, buf, sizeof(buf), &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(buf[0], ' ');
    cr_assert_eq(tok_piece(t, tok_n_vocab(t), true, buf, sizeof(buf), &n), SPEC_E_INVALID_ARG);
    tok_free(t);
}

struct encode_job {
    const struct tok *t;
    const char *texts[4];
    int32_t expect[4][256];
    size_t n_expect[4];
    bool ok;
};

static void *encode_many(void *arg)
{
    struct encode_job *job = arg;
    int32_t ids[256];
    job->ok = true;
    for (int rep = 0; rep < 200; rep++) {
        for (int k = 0; k < 4; k++) {
            size_t n;
            if (tok_encode(job->t, job->texts[k], strlen(job->texts[k]), true, true, ids, 256, &n) ||
                n != job->n_expect[k] || memcmp(ids, job->expect[k], n * sizeof(int32_t)))
                job->ok = false;
        }
    }
    return NULL;
}

Test(tokenizer, concurrent_encodes_agree_with_a_single_thread)
{
    struct tok *t = synth(TOK_KIND_BPE, 2048, NULL, true);
    struct encode_job jobs[4];
    static const char *const texts[] = {"The river town woke slowly.", "<|im_start|>user\nIt's 2024!<|im_end|>",
                                        "int main(void) { return 0; }", "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC"};
    for (int j = 0; j < 4; j++) {
        jobs[j].t = t;
        for (int k = 0; k < 4; k++) {
            jobs[j].texts[k] = texts[k];
            jobs[j].n_expect[k] = encode(t, texts[k], strlen(texts[k]), true, true, jobs[j].expect[k], 256);
        }
    }
    pthread_t th[4];
    for (int j = 0; j < 4; j++)
        cr_assert_eq(pthread_create(&th[j], NULL, encode_many, &jobs[j]), 0);
    for (int j = 0; j < 4; j++) {
        pthread_join(th[j], NULL);
        cr_assert(jobs[j].ok, "thread %d saw a different tokenization", j);
    }
    tok_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Streaming decode */

Test(tokenizer, stream_holds_back_a_character_split_across_tokens)
{
    struct tok *t = synth(TOK_KIND_BPE, 300, NULL, false);
    /* "é" is C3 A9: two byte tokens, in bytes-to-unicode form "Ã" and "©". */
    int32_t c3 = id_of(t, "\xC3\x83"), a9 = id_of(t, "\xC2\xA9");
    struct tok_stream s;
    tok_stream_init(&s, t, false);
    char out[64];
    size_t n = 99;
    cr_assert_eq(tok_stream_push(&s, c3, out, sizeof(out), &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(tok_stream_push(&s, a9, out, sizeof(out), &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_arr_eq(out, "\xC3\xA9", 2);
    cr_assert_eq(tok_stream_flush(&s, out, sizeof(out), &n), 0);
    cr_assert_eq(n, 0);
    tok_free(t);
}

Test(tokenizer, stream_flush_replaces_an_incomplete_tail)
{
    struct tok *t = synth(TOK_KIND_BPE, 300, NULL, false);
    /* E2 82 (the start of "€") then end of stream: one U+FFFD. */
    int32_t e2 = id_of(t, "\xC3\xA2"), x82 = id_of(t, "\xC4\xA4");
    struct tok_stream s;
    tok_stream_init(&s, t, false);
    char out[64];
    size_t n;
    cr_assert_eq(tok_stream_push(&s, e2, out, sizeof(out), &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(tok_stream_push(&s, x82, out, sizeof(out), &n), 0);
    cr_assert_eq(n, 0);
    /* Too small a buffer leaves the held-back bytes in place. */
    cr_assert_eq(tok_stream_flush(&s, out, 2, &n), SPEC_E_RANGE);
    cr_assert_eq(n, 3);
    cr_assert_eq(tok_stream_flush(&s, out, sizeof(out), &n), 0);
    cr_assert_eq(n, 3);
    cr_assert_arr_eq(out, "\xEF\xBF\xBD", 3);
    /* A broken sequence mid-stream: E2 then "a" gives U+FFFD then "a". */
    int32_t a = id_of(t, "a");
    cr_assert_eq(tok_stream_push(&s, e2, out, sizeof(out), &n), 0);
    cr_assert_eq(tok_stream_push(&s, a, out, 3, &n), SPEC_E_RANGE);
    cr_assert_eq(n, 4);
    cr_assert_eq(tok_stream_push(&s, a, out, sizeof(out), &n), 0);
    cr_assert_arr_eq(out, "\xEF\xBF\xBD" "a", 4);
    tok_free(t);
}

Test(tokenizer, stream_output_is_valid_utf8_and_concatenates_to_the_decode)
{
    struct tok *t = synth(TOK_KIND_BPE, 1024, NULL, true);
    uint64_t rng = 7;
    size_t max_out = tok_stream_max_out(t);
    char *chunk = malloc(max_out), *all = malloc(64 * max_out), *whole = malloc(64 * (tok_max_piece_len(t) + 8));
    char *want = malloc(3 * 64 * (tok_max_piece_len(t) + 8));
    int32_t ids[64];
    for (int iter = 0; iter < 400; iter++) {
        size_t n = 1 + rng_next(&rng) % 63;
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)(rng_next(&rng) % (uint64_t)tok_n_vocab(t));
        bool special = iter & 1;
        struct tok_stream s;
        tok_stream_init(&s, t, special);
        size_t total = 0, m;
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(tok_stream_push(&s, ids[i], chunk, max_out, &m), 0);
            cr_assert(is_valid_utf8(chunk, m), "iteration %d token %zu: invalid UTF-8 out", iter, i);
            memcpy(all + total, chunk, m);
            total += m;
        }
        cr_assert_eq(tok_stream_flush(&s, chunk, max_out, &m), 0);
        memcpy(all + total, chunk, m);
        total += m;
        size_t wl = decode(t, ids, n, special, whole, 64 * (tok_max_piece_len(t) + 8));
        size_t vl = lossy_utf8((const uint8_t *)whole, wl, want);
        cr_assert(total == vl && memcmp(all, want, vl) == 0, "iteration %d: stream differs from decode", iter);
    }
    free(chunk);
    free(all);
    free(whole);
    free(want);
    tok_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* SentencePiece */

Test(tokenizer, spm_roundtrips_text_through_space_prefix_and_byte_fallback)
{
    struct tok *t = synth(TOK_KIND_SPM, 1000, NULL, true);
    cr_assert_eq(tok_get_kind(t), TOK_KIND_SPM);
    uint64_t rng = 4242;
    char text[4 * 64], back[4 * 64 + 64];
    int32_t ids[512];
    for (int iter = 0; iter < 500; iter++) {
        size_t len = random_utf8(&rng, text, 64);
        size_t n = encode(t, text, len, true, false, ids, 512);
        if (len)
            cr_assert_eq(ids[0], tok_bos(t));
        /* llama.cpp's detokenize keeps the prefix space after a leading BOS: drop BOS first. */
        size_t m = decode(t, ids + 1, n - 1, false, back, sizeof(back));
        cr_assert(m == len && memcmp(back, text, len) == 0, "iteration %d", iter);
    }
    tok_free(t);
}

Test(tokenizer, spm_falls_back_to_byte_tokens_for_unknown_characters)
{
    struct tok *t = synth(TOK_KIND_SPM, 1000, NULL, false);
    int32_t ids[16];
    /* U+2135 (E2 84 B5) is not in the training text. */
    size_t n = encode(t, "\xE2\x84\xB5", 3, false, false, ids, 16);
    cr_assert_eq(n, 4);
    cr_assert_eq(ids[0], id_of(t, "\xE2\x96\x81"));
    cr_assert_eq(ids[1], id_of(t, "<0xE2>"));
    cr_assert_eq(ids[2], id_of(t, "<0x84>"));
    cr_assert_eq(ids[3], id_of(t, "<0xB5>"));
    tok_free(t);
}

Test(tokenizer, spm_tiny_vocab_encodes_unknown_characters_as_unk)
{
    struct tok *t = synth(TOK_KIND_SPM, 64, NULL, false);
    cr_assert_eq(tok_n_vocab(t), 64);
    cr_assert_eq(tok_find(t, "<0x41>", 6), -1);
    int32_t ids[16];
    size_t n = encode(t, "\xE2\x84\xB5", 3, false, false, ids, 16);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[1], tok_unk(t));
    tok_free(t);
}

Test(tokenizer, spm_encodes_arbitrary_bytes)
{
    /* Stray lead bytes before spaces cut escaped spaces (E2 96 81) into several symbols. */
    struct tok *t = synth(TOK_KIND_SPM, 1000, NULL, false);
    static const uint8_t alphabet[] = {' ', ' ', 0xC3, 0xE2, 0xF0, 0x96, 0x81, 'a', 'e', 0xFF};
    uint64_t rng = 31337;
    uint8_t raw[64];
    int32_t ids[1024];
    for (int iter = 0; iter < 500; iter++) {
        size_t len = rng_next(&rng) % sizeof(raw);
        for (size_t i = 0; i < len; i++)
            raw[i] = alphabet[rng_next(&rng) % sizeof(alphabet)];
        size_t n = encode(t, (const char *)raw, len, false, false, ids, 1024);
        cr_assert_geq(n, len ? 1 : 0);
        for (size_t i = 0; i < n; i++)
            cr_assert(ids[i] >= 0 && ids[i] < tok_n_vocab(t));
    }
    tok_free(t);
}

Test(tokenizer, spm_merges_the_highest_scoring_pair_first)
{
    static const char *const toks[] = {"<unk>", "a", "b", "c", "ab", "bc"};
    static const int32_t types[] = {TOK_TYPE_UNKNOWN, 1, 1, 1, 1, 1};
    float scores[] = {0, -10, -10, -10, -2, -1};
    int32_t ids[8];
    struct gguf_writer *w = hand_writer("llama", NULL, toks, types, 6, NULL, 0, scores);
    cr_assert_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", false), 0);
    struct tok *t = hand(w);
    cr_assert_eq(encode(t, "abc", 3, false, false, ids, 8), 2);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 5);
    tok_free(t);
    scores[4] = 0;
    w = hand_writer("llama", NULL, toks, types, 6, NULL, 0, scores);
    cr_assert_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", false), 0);
    t = hand(w);
    cr_assert_eq(encode(t, "abc", 3, false, false, ids, 8), 2);
    cr_assert_eq(ids[0], 4);
    cr_assert_eq(ids[1], 3);
    tok_free(t);
}

Test(tokenizer, spm_adds_a_space_prefix_after_each_special_token)
{
    struct tok *t = synth(TOK_KIND_SPM, 1000, NULL, false);
    int32_t ids[32];
    size_t n = encode(t, "<|im_start|>was", 15, false, true, ids, 32);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[0], id_of(t, "<|im_start|>"));
    cr_assert_eq(ids[1], id_of(t, "\xE2\x96\x81was"));
    char back[64];
    n = decode(t, ids, n, true, back, sizeof(back));
    cr_assert_eq(n, 16);
    cr_assert_arr_eq(back, "<|im_start|> was", 16);
    tok_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Synthetic vocabularies */

Test(tokenizer, synth_writes_exact_sizes_deterministically)
{
    static const struct {
        enum tok_kind kind;
        uint32_t n;
    } sizes[] = {{TOK_KIND_SPM, 16}, {TOK_KIND_SPM, 64}, {TOK_KIND_SPM, 300}, {TOK_KIND_SPM, 4096},
                 {TOK_KIND_BPE, 260}, {TOK_KIND_BPE, 4096}, {TOK_KIND_BPE, 12000}};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct tok *a = synth(sizes[i].kind, sizes[i].n, NULL, true);
        struct tok *b = synth(sizes[i].kind, sizes[i].n, NULL, true);
        cr_assert_eq(tok_n_vocab(a), (int32_t)sizes[i].n);
        for (int32_t id = 0; id < tok_n_vocab(a); id++) {
            size_t la, lb;
            const char *sa = tok_text(a, id, &la), *sb = tok_text(b, id, &lb);
            cr_assert(la == lb && memcmp(sa, sb, la) == 0, "size %u id %d differs between runs", sizes[i].n, id);
        }
        tok_free(a);
        tok_free(b);
    }
}

Test(tokenizer, synth_learns_frequent_words_and_rejects_bad_configs)
{
    struct tok *t = synth(TOK_KIND_BPE, 2048, NULL, true);
    cr_assert_geq(tok_find(t, "\xC4\xA0the", 5), 0, "\" the\" should be one token");
    int32_t ids[8];
    cr_assert_eq(encode(t, " the", 4, false, false, ids, 8), 1);
    tok_free(t);

    struct gguf_writer *w;
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    struct tok_synth_config bad = {TOK_KIND_BPE, 64, 0, NULL, true};
    cr_assert_eq(tok_synth_write(w, &bad), SPEC_E_INVALID_ARG);
    bad = (struct tok_synth_config){TOK_KIND_SPM, 15, 0, NULL, true};
    cr_assert_eq(tok_synth_write(w, &bad), SPEC_E_INVALID_ARG);
    bad = (struct tok_synth_config){TOK_KIND_BPE, 512, 0, "no-such-pre", true};
    cr_assert_eq(tok_synth_write(w, &bad), SPEC_E_INVALID_ARG);
    gguf_writer_free(w);
}

/* ---------------------------------------------------------------------------------------------- */
/* Metadata validation */

static int load_hand(struct gguf_writer *w)
{
    struct tok *t = NULL;
    int rc = load_writer(w, &t);
    gguf_writer_free(w);
    if (rc == 0)
        tok_free(t);
    return rc;
}

static const char *const abc[] = {"a", "b", "c", "ab"};
static const char *const ab_merge[] = {"a b"};

Test(tokenizer, rejects_missing_or_mistyped_vocabulary)
{
    struct gguf_writer *w;
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"), 0);
    cr_assert_eq(load_hand(w), SPEC_E_NOT_FOUND);

    w = hand_writer("gpt2", "gpt-2", abc, NULL, 4, ab_merge, 1, NULL);
    uint32_t nums[] = {1, 2};
    cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.tokens", GGUF_TYPE_UINT32, nums, 2), 0);
    cr_assert_eq(load_hand(w), SPEC_E_TYPE);

    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", abc, NULL, 0, ab_merge, 0, NULL)), SPEC_E_TOKENIZER);
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", abc, NULL, 4, NULL, 0, NULL)), SPEC_E_NOT_FOUND);
    cr_assert_eq(load_hand(hand_writer("bert", NULL, abc, NULL, 4, NULL, 0, NULL)), SPEC_E_UNSUPPORTED);
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-9", abc, NULL, 4, ab_merge, 1, NULL)), SPEC_E_UNSUPPORTED);

    static const char *const dup[] = {"a", "b", "a"};
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", dup, NULL, 3, no_merges, 0, NULL)), SPEC_E_TOKENIZER);
}

Test(tokenizer, rejects_merges_that_do_not_name_tokens)
{
    static const char *const unknown_part[] = {"a x"};
    static const char *const no_space[] = {"ab"};
    static const char *const no_result[] = {"b c"};
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", abc, NULL, 4, unknown_part, 1, NULL)), SPEC_E_TOKENIZER);
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", abc, NULL, 4, no_space, 1, NULL)), SPEC_E_TOKENIZER);
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", abc, NULL, 4, no_result, 1, NULL)), SPEC_E_TOKENIZER);
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", abc, NULL, 4, ab_merge, 1, NULL)), 0);
}

Test(tokenizer, rejects_inconsistent_arrays_and_ids)
{
    static const int32_t short_types[] = {1, 1, 1};
    struct gguf_writer *w = hand_writer("gpt2", "gpt-2", abc, NULL, 4, ab_merge, 1, NULL);
    cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, short_types, 3), 0);
    cr_assert_eq(load_hand(w), SPEC_E_TOKENIZER);

    static const int32_t bad_type[] = {1, 1, 9, 1};
    cr_assert_eq(load_hand(hand_writer("gpt2", "gpt-2", abc, bad_type, 4, ab_merge, 1, NULL)), SPEC_E_TOKENIZER);

    static const float short_scores[] = {0, 0};
    w = hand_writer("llama", NULL, abc, NULL, 4, NULL, 0, NULL);
    cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, short_scores, 2), 0);
    cr_assert_eq(load_hand(w), SPEC_E_TOKENIZER);

    w = hand_writer("gpt2", "gpt-2", abc, NULL, 4, ab_merge, 1, NULL);
    cr_assert_eq(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 4), 0);
    cr_assert_eq(load_hand(w), SPEC_E_TOKENIZER);

    /* add_bos with no BOS token: the gpt2 default (id 11) is outside this vocabulary. */
    w = hand_writer("gpt2", "gpt-2", abc, NULL, 4, ab_merge, 1, NULL);
    cr_assert_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true), 0);
    cr_assert_eq(load_hand(w), SPEC_E_TOKENIZER);

    w = hand_writer("gpt2", "gpt-2", abc, NULL, 4, ab_merge, 1, NULL);
    cr_assert_eq(gguf_writer_set_u32(w, "tokenizer.ggml.add_bos_token", 1), 0);
    cr_assert_eq(load_hand(w), SPEC_E_TYPE);

    static const char *const bad_byte[] = {"<unk>", "<0xZZ>"};
    static const int32_t byte_types[] = {TOK_TYPE_UNKNOWN, TOK_TYPE_BYTE};
    cr_assert_eq(load_hand(hand_writer("llama", NULL, bad_byte, byte_types, 2, NULL, 0, NULL)), SPEC_E_TOKENIZER);
}

Test(tokenizer, decode_rejects_ids_outside_the_vocabulary)
{
    struct tok *t = synth(TOK_KIND_BPE, 300, NULL, true);
    int32_t ids[] = {5, 300};
    char buf[16];
    size_t n;
    cr_assert_eq(tok_decode(t, ids, 2, false, buf, sizeof(buf), &n), SPEC_E_INVALID_ARG);
    struct tok_stream s;
    tok_stream_init(&s, t, false);
    cr_assert_eq(tok_stream_push(&s, -1, buf, sizeof(buf), &n), SPEC_E_INVALID_ARG);
    tok_free(t);
}
