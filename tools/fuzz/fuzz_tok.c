/* libFuzzer harness for the tokenizer on a real vocabulary (not built by `make`: it needs clang's
 * -fsanitize=fuzzer). Text from a client reaches tok_encode() unfiltered (generate, tokenize).
 *
 *   clang -std=c11 -g -O1 -I. -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *       tools/fuzz/fuzz_tok.c model/tokenizer.c model/tok_bpe.c model/tok_spm.c model/unicode.c \
 *       model/unicode_data.c model/gguf.c kernels/dtype.c common/err.c -lm -o fuzz_tok
 *   SPECD_FUZZ_MODEL=.models/qwen2.5-coder-0.5b-q4_k_m.gguf ./fuzz_tok -max_total_time=60 corpus/
 *
 * Any bytes must tokenize and decode without error, back to exactly themselves when they are valid
 * UTF-8 (special-token texts are not parsed here, so every byte comes back); the streaming decoder
 * must emit valid UTF-8 piece by piece whatever the bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

static struct gguf *g;
static const struct tok *t;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = getenv("SPECD_FUZZ_MODEL");
    struct tok *tk;
    if (!path || gguf_open(path, &g) != 0 || tok_load(g, &tk) != 0) {
        fprintf(stderr, "fuzz_tok: set SPECD_FUZZ_MODEL to a GGUF with a tokenizer\n");
        exit(2);
    }
    t = tk;
    return 0;
}

/* Valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        const unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4))
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        if ((len == 3 && c == 0xe0 && s[i + 1] < 0xa0) || (len == 3 && c == 0xed && s[i + 1] >= 0xa0) ||
            (len == 4 && c == 0xf0 && s[i + 1] < 0x90) || (len == 4 && c == 0xf4 && s[i + 1] >= 0x90))
            return 0;
        i += len;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    size_t n = 0;
    int32_t *ids = malloc((size + 1) * sizeof *ids);
    if (tok_encode(t, text, size, true, true, ids, size + 1, &n) != 0) /* as the daemon calls it */
        abort();
    if (tok_encode(t, text, size, false, false, ids, size + 1, &n) != 0 || n > size)
        abort();
    /* Like llama.cpp, the tokenizer reads a byte that starts no well-formed sequence as U+FFFD (3
     * bytes for 1) and lets encoded surrogates through, so only valid UTF-8 must come back byte for
     * byte. */
    char *back = malloc(3 * size + 1);
    size_t n_back = 0;
    if (tok_decode(t, ids, n, true, back, 3 * size + 1, &n_back) != 0)
        abort();
    if (valid_utf8(data, size) && (n_back != size || memcmp(back, text, size)))
        abort();
    struct tok_stream st;
    tok_stream_init(&st, t, true);
    const size_t cap = tok_stream_max_out(t);
    char *chunk = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        size_t got = 0;
        const int rc = i < n ? tok_stream_push(&st, ids[i], chunk, cap, &got) : tok_stream_flush(&st, chunk, cap, &got);
        if (rc != 0 || got > cap || !valid_utf8((const unsigned char *)chunk, got))
            abort();
    }
    free(chunk);
    free(back);
    free(ids);
    return 0;
}
