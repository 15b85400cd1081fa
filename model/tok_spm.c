/* SentencePiece BPE (tokenizer.ggml.model "llama"), as llama.cpp's llm_tokenizer_spm: spaces become
 * U+2581, the text is cut into UTF-8 characters (by lead byte, without validation), and the adjacent
 * pair whose concatenation is the highest-scoring token is merged until none is left; a final piece
 * that is not a token falls back to <0xXX> byte tokens. */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/tok_internal.h"
#include "model/unicode.h"

struct spm_sym {
    uint32_t off, len; /* bytes in the escaped text; len 0 once merged into the left neighbour */
    int32_t prev, next;
};

/* Sortable bits of a float: larger float -> larger unsigned. */
static uint32_t float_order(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static int add_pair(const struct tok *t, const char *s, const struct spm_sym *sym, int32_t left, int32_t right,
                    struct tok_heap *heap)
{
    if (left < 0 || right < 0)
        return 0;
    uint32_t size = sym[left].len + sym[right].len;
    int32_t id = tok_lookup(t, s + sym[left].off, size);
    if (id < 0)
        return 0;
    /* Highest score first, then the leftmost pair (llama.cpp's llm_bigram_spm comparator). */
    uint64_t key = ((uint64_t)~float_order(t->score[id]) << 32) | (uint32_t)left;
    return tok_heap_push(heap, (struct tok_pair){key, left, right, size});
}

int tok_spm_encode(const struct tok *t, const char *text, size_t len, bool space_prefix, struct tok_sink *out)
{
    static const char escaped_space[] = "\xE2\x96\x81"; /* U+2581 */
    size_t cap = (len + 1) * 3;
    char *s = malloc(cap);
    /* A symbol per byte at worst: a stray lead byte can split an escaped space into pieces. */
    struct spm_sym *sym = malloc(cap * sizeof(*sym));
    struct tok_heap heap = {0};
    int rc = 0;
    if (!s || !sym) {
        rc = SPEC_E_NOMEM;
        goto done;
    }
    size_t n = 0;
    if (space_prefix) {
        memcpy(s, escaped_space, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s + n, escaped_space, 3);
            n += 3;
        } else {
            s[n++] = text[i];
        }
    }
    int32_t n_sym = 0;
    for (size_t off = 0; off < n;) {
        size_t l = unicode_lead_len((uint8_t)s[off]);
        if (l > n - off)
            l = n - off;
        sym[n_sym] = (struct spm_sym){(uint32_t)off, (uint32_t)l, n_sym - 1, off + l < n ? n_sym + 1 : -1};
        n_sym++;
        off += l;
    }
    for (int32_t i = 1; i < n_sym && rc == 0; i++)
        rc = add_pair(t, s, sym, i - 1, i, &heap);
    while (heap.n && rc == 0) {
        struct tok_pair p = tok_heap_pop(&heap);
        struct spm_sym *l = &sym[p.left], *r = &sym[p.right];
        if (l->len == 0 || r->len == 0 || l->next != p.right || l->len + r->len != p.size)
            continue; /* stale: one side has merged since */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = p.left;
        rc = add_pair(t, s, sym, l->prev, p.left, &heap);
        if (rc == 0)
            rc = add_pair(t, s, sym, p.left, l->next, &heap);
    }
    for (int32_t i = n_sym ? 0 : -1; i != -1 && rc == 0; i = sym[i].next) {
        int32_t id = tok_lookup(t, s + sym[i].off, sym[i].len);
        if (id >= 0) {
            tok_sink_push(out, id);
            continue;
        }
        /* Byte fallback; a character whose bytes have no tokens (tiny vocabularies, where
         * llama.cpp would abort) becomes one unknown token. */
        const uint8_t *c = (const uint8_t *)s + sym[i].off;
        uint32_t j = 0;
        while (j < sym[i].len && t->byte_tok[c[j]] >= 0)
            j++;
        if (j == sym[i].len) {
            for (j = 0; j < sym[i].len; j++)
                tok_sink_push(out, t->byte_tok[c[j]]);
        } else if (t->unk >= 0) {
            tok_sink_push(out, t->unk);
        } else {
            rc = SPEC_E_TOKENIZER;
        }
    }
done:
    free(heap.a);
    free(sym);
    free(s);
    return rc;
}
