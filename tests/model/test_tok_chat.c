/* Chat prompts from tokenizer.chat_template (model/tok_chat.c): the ChatML family rendered as the
 * templates themselves render it (Hugging Face's apply_chat_template with add_generation_prompt),
 * default system messages included; other templates refused by name. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

/* Qwen2.5's template, abridged to the branches without tools (the GGUF's text for those). */
static const char qwen_template[] =
    "{%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n";

/* SmolLM2's, with real newlines inside its string literals. */
static const char smollm_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n"
    "' + message['content'] + '<|im_end|>' + '\n"
    "'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}";

/* Plain ChatML, no default system message. */
static const char chatml_template[] =
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static const char llama3_template[] =
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + "
    "'<|eot_id|>' }}{% endfor %}";

/* A two-token SentencePiece vocabulary, to which a test adds its chat_template. */
static struct gguf_writer *vocabulary(void)
{
    static const char *const tokens[] = {"<unk>", "a"};
    static const float scores[] = {0.0f, 0.0f};
    struct gguf_writer *w;
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"), 0);
    cr_assert_eq(gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", tokens, 2), 0);
    cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 2), 0);
    return w;
}

/* Loads (and frees) the writer's tokenizer; the file is wiped first, as the tokenizer must keep no
 * pointer into it. */
static int load_writer(struct gguf_writer *w, struct tok **t)
{
    void *mem;
    size_t size;
    cr_assert_eq(gguf_writer_write_memory(w, &mem, &size), 0);
    gguf_writer_free(w);
    struct gguf *g;
    cr_assert_eq(gguf_open_memory(mem, size, &g), 0);
    const int rc = tok_load(g, t);
    gguf_close(g);
    memset(mem, 0xAB, size);
    free(mem);
    return rc;
}

/* The vocabulary with the given chat_template (NULL: none). */
static int load(const char *tmpl, struct tok **t)
{
    struct gguf_writer *w = vocabulary();
    if (tmpl)
        cr_assert_eq(gguf_writer_set_str(w, "tokenizer.chat_template", tmpl), 0);
    return load_writer(w, t);
}

static struct tok_chat_message msg(const char *role, const char *content)
{
    return (struct tok_chat_message){.role = role, .content = content, .content_len = strlen(content)};
}

static void expect(const char *tmpl, const struct tok_chat_message *m, int n, const char *want)
{
    struct tok *t;
    cr_assert_eq(load(tmpl, &t), SPEC_OK);
    char *out;
    size_t len;
    cr_assert_eq(tok_chat_render(t, m, n, &out, &len), SPEC_OK);
    cr_assert_eq(len, strlen(want), "%zu bytes, want %zu:\n%s", len, strlen(want), out);
    cr_assert_str_eq(out, want);
    free(out);
    tok_free(t);
}

Test(tok_chat, qwen_opens_a_conversation_without_system_message_with_its_default)
{
    const struct tok_chat_message m[] = {msg("user", "Hello")};
    expect(qwen_template, m, 1,
           "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
           "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
}

Test(tok_chat, smollm_template_with_literal_newlines_gives_its_own_default)
{
    const struct tok_chat_message m[] = {msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "2+2?")};
    expect(smollm_template, m, 3,
           "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
           "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
           "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
}

Test(tok_chat, a_system_message_of_the_callers_replaces_the_default)
{
    const struct tok_chat_message m[] = {msg("system", "Be brief."), msg("user", "Hi")};
    expect(qwen_template, m, 2,
           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

Test(tok_chat, plain_chatml_adds_no_system_message_and_keeps_content_bytes)
{
    const struct tok_chat_message m[] = {{.role = "user", .content = "a\0b", .content_len = 3}};
    struct tok *t;
    cr_assert_eq(load(chatml_template, &t), SPEC_OK);
    char *out;
    size_t len;
    cr_assert_eq(tok_chat_render(t, m, 1, &out, &len), SPEC_OK);
    static const char want[] = "<|im_start|>user\na\0b<|im_end|>\n<|im_start|>assistant\n";
    cr_assert_eq(len, sizeof want - 1);
    cr_assert_eq(memcmp(out, want, len), 0);
    cr_assert_eq(out[len], '\0');
    free(out);
    tok_free(t);
}

Test(tok_chat, other_templates_no_template_and_bad_roles_are_named_errors)
{
    const struct tok_chat_message ok[] = {msg("user", "Hi")}, bad[] = {msg("tool", "Hi")};
    char *out = NULL;
    size_t len;
    struct tok *t;
    cr_assert_eq(load(llama3_template, &t), SPEC_OK, "an unknown family still loads");
    cr_assert_eq(tok_chat_render(t, ok, 1, &out, &len), SPEC_E_UNSUPPORTED);
    tok_free(t);
    cr_assert_eq(load(NULL, &t), SPEC_OK);
    cr_assert_eq(tok_chat_render(t, ok, 1, &out, &len), SPEC_E_UNSUPPORTED);
    tok_free(t);
    cr_assert_eq(load(chatml_template, &t), SPEC_OK);
    cr_assert_eq(tok_chat_render(t, bad, 1, &out, &len), SPEC_E_INVALID_ARG);
    cr_assert_eq(tok_chat_render(t, ok, 0, &out, &len), SPEC_E_INVALID_ARG);
    cr_assert_null(out);
    tok_free(t);
}

Test(tok_chat, a_chat_template_that_is_not_a_string_is_a_type_error)
{
    struct gguf_writer *w = vocabulary();
    cr_assert_eq(gguf_writer_set_u32(w, "tokenizer.chat_template", 7), 0);
    struct tok *t = NULL;
    cr_assert_eq(load_writer(w, &t), SPEC_E_TYPE);
    cr_assert_null(t);
}
