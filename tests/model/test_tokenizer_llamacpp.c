/* Agreement with llama.cpp on the real vocabularies: every line of the fixtures written by
 * tools/fixtures/gen_tokenizer.py must tokenize to the same ids. Needs `make models`. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#define FIXTURE_DIR "tests/fixtures/llamacpp"

static const char *model_dir(void)
{
    const char *d = getenv("SPECD_MODEL_DIR");
    return d && *d ? d : ".models";
}

/* The tokenizer of a model file; skips the test (loudly) when the file is missing. */
static struct tok *load_model_tok(const char *file)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", model_dir(), file);
    FILE *f = fopen(path, "rb");
    if (!f)
        cr_skip_test("%s not found: run `make models` to test against llama.cpp", path);
    fclose(f);
    struct gguf *g;
    int rc = gguf_open(path, &g);
    cr_assert_eq(rc, 0, "%s: %s", path, spec_errname(rc));
    struct tok *t;
    rc = tok_load(g, &t);
    cr_assert_eq(rc, 0, "%s: tok_load: %s", path, spec_errname(rc));
    gguf_close(g);
    return t;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static int hex_val(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void check_fixture(const char *model_file, const char *fixture)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", FIXTURE_DIR, fixture);
    size_t len;
    char *data = read_file(path, &len);
    if (!data)
        cr_skip_test("%s not found: generate it with tools/fixtures/gen_tokenizer.py", path);
    struct tok *t = load_model_tok(model_file);
    size_t lines = 0, mismatches = 0;
    uint8_t *text = malloc(len);
    int32_t *want = malloc(len * sizeof(int32_t)), *got = malloc(len * sizeof(int32_t));
    cr_assert(text && want && got);
    for (char *line = data; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (line[0] == '#' || line[0] == 0) {
            line = next;
            continue;
        }
        char *hex = strchr(line, '\t');
        cr_assert(hex, "%s: line without tabs", path);
        *hex++ = 0;
        char *ids = strchr(hex, '\t');
        cr_assert(ids, "%s: line with one tab", path);
        *ids++ = 0;
        cr_assert(strcmp(line, "00") == 0 || strcmp(line, "11") == 0, "%s: flags %s", path, line);
        bool special = line[0] == '1';
        size_t n_text = strlen(hex) / 2;
        for (size_t i = 0; i < n_text; i++) {
            int hi = hex_val(hex[2 * i]), lo = hex_val(hex[2 * i + 1]);
            cr_assert(hi >= 0 && lo >= 0, "%s: bad hex", path);
            text[i] = (uint8_t)(hi * 16 + lo);
        }
        size_t n_want = 0;
        for (char *p = ids; *p;) {
            char *end;
            want[n_want++] = (int32_t)strtol(p, &end, 10);
            cr_assert(end != p, "%s: bad id list", path);
            p = end + strspn(end, " ");
        }
        size_t n_got = 0;
        int rc = tok_encode(t, (const char *)text, n_text, special, special, got, len, &n_got);
        lines++;
        if (rc != 0 || n_got != n_want || memcmp(got, want, n_got * sizeof(int32_t)) != 0) {
            if (++mismatches <= 10) {
                char shown[256];
                size_t k = 0;
                for (size_t i = 0; i < n_got && k < sizeof(shown) - 12; i++)
                    k += (size_t)snprintf(shown + k, sizeof(shown) - k, "%d ", got[i]);
                shown[k] = 0;
                cr_log_error("%s flags %s input %.80s: rc %s, %zu ids (want %zu): %s| want %.120s", fixture, line,
                             hex, spec_errname(rc), n_got, n_want, shown, ids);
            }
        }
        line = next;
    }
    cr_log_info("%s: %zu of %zu lines match llama.cpp", fixture, lines - mismatches, lines);
    cr_assert_gt(lines, 100, "%s: too few lines", fixture);
    cr_assert_eq(mismatches, 0, "%s: %zu of %zu lines tokenize differently from llama.cpp", fixture, mismatches,
                 lines);
    free(text);
    free(want);
    free(got);
    free(data);
    tok_free(t);
}

Test(tokenizer_llamacpp, smollm2_matches_llamacpp_on_every_fixture_line, .timeout = 120)
{
    check_fixture("smollm2-135m-instruct-q4_1.gguf", "tokenizer-smollm2.tsv");
}

Test(tokenizer_llamacpp, qwen25_coder_05b_matches_llamacpp_on_every_fixture_line, .timeout = 120)
{
    check_fixture("qwen2.5-coder-0.5b-q4_k_m.gguf", "tokenizer-qwen2.5.tsv");
}

Test(tokenizer_llamacpp, qwen25_coder_15b_matches_llamacpp_on_every_fixture_line, .timeout = 120)
{
    check_fixture("qwen2.5-coder-1.5b-q4_k_m.gguf", "tokenizer-qwen2.5.tsv");
}

Test(tokenizer_llamacpp, smollm2_special_tokens)
{
    struct tok *t = load_model_tok("smollm2-135m-instruct-q4_1.gguf");
    cr_assert_eq(tok_get_kind(t), TOK_KIND_BPE);
    cr_assert_eq(tok_n_vocab(t), 49152);
    cr_assert_eq(tok_bos(t), 1);
    cr_assert_eq(tok_eos(t), 2);
    cr_assert_not(tok_add_bos(t));
    cr_assert(tok_is_eog(t, 2));  /* <|im_end|> */
    cr_assert(tok_is_eog(t, 0));  /* <|endoftext|> */
    cr_assert_not(tok_is_eog(t, 1));
    cr_assert_eq(tok_find(t, "<|im_start|>", 12), 1);
    tok_free(t);
}

Test(tokenizer_llamacpp, qwen25_special_tokens)
{
    struct tok *t = load_model_tok("qwen2.5-coder-0.5b-q4_k_m.gguf");
    cr_assert_eq(tok_n_vocab(t), 151936);
    cr_assert_eq(tok_eos(t), 151645);
    cr_assert_not(tok_add_bos(t));
    cr_assert(tok_is_eog(t, 151643)); /* <|endoftext|> */
    cr_assert(tok_is_eog(t, 151645)); /* <|im_end|> */
    cr_assert(tok_is_eog(t, 151662)); /* <|fim_pad|> */
    cr_assert(tok_is_eog(t, 151664)); /* <|file_sep|> */
    cr_assert_not(tok_is_eog(t, 151644)); /* <|im_start|> */
    cr_assert_eq(tok_find(t, "<|im_start|>", 12), 151644);
    tok_free(t);
}

/* The benchmark prompts file, tokenized whole, decodes back byte for byte (it is valid UTF-8). */
Test(tokenizer_llamacpp, benchmark_prompts_roundtrip_through_real_vocabularies, .timeout = 120)
{
    const char *path = getenv("SPECD_PROMPTS");
    if (!path || !*path)
        path = "../shared/bench/prompts-dev.jsonl";
    size_t len;
    char *text = read_file(path, &len);
    if (!text)
        cr_skip_test("%s not found (set SPECD_PROMPTS)", path);
    static const char *const models[] = {"smollm2-135m-instruct-q4_1.gguf", "qwen2.5-coder-0.5b-q4_k_m.gguf"};
    int32_t *ids = malloc(len * sizeof(int32_t));
    char *back = malloc(len + 1);
    for (size_t m = 0; m < 2; m++) {
        struct tok *t = load_model_tok(models[m]);
        size_t n, b;
        cr_assert_eq(tok_encode(t, text, len, false, false, ids, len, &n), 0);
        cr_assert_lt(n, len / 2, "%s: implausibly many tokens", models[m]);
        cr_assert_eq(tok_decode(t, ids, n, false, back, len, &b), 0);
        cr_assert(b == len && memcmp(back, text, len) == 0, "%s: prompts do not round-trip", models[m]);
        tok_free(t);
    }
    free(ids);
    free(back);
    free(text);
}

/* The real models' chat templates, rendered as Hugging Face renders them (each opens with its own
 * default system message). */
Test(tokenizer_llamacpp, real_chat_templates_render_with_their_default_system_messages)
{
    static const char *const models[] = {"smollm2-135m-instruct-q4_1.gguf", "qwen2.5-coder-0.5b-q4_k_m.gguf"};
    static const char *const system[] = {"You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                                         "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."};
    const struct tok_chat_message m = {.role = "user", .content = "Hello", .content_len = 5};
    for (int i = 0; i < 2; i++) {
        struct tok *t = load_model_tok(models[i]);
        char *out, want[512];
        size_t len;
        cr_assert_eq(tok_chat_render(t, &m, 1, &out, &len), SPEC_OK, "%s", models[i]);
        snprintf(want, sizeof want,
                 "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
                 system[i]);
        cr_assert_str_eq(out, want, "%s", models[i]);
        free(out);
        tok_free(t);
    }
}
