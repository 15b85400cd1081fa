/* Chat prompts from tokenizer.chat_template without a Jinja engine: the template is recognised by
 * its markers, as llama.cpp's llama_chat_apply_template does, and rendered here. Only the ChatML
 * family is recognised. Its templates often open a conversation that lacks a system message with a
 * default one (Qwen2.5: "You are Qwen, created by Alibaba Cloud. ..."; SmolLM2: "You are a helpful
 * AI assistant named SmolLM, ..."); that text is the one string literal of the template reading
 * "<|im_start|>system" + newline + text + "<|im_end|>", and is found and kept at load time. */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/tok_internal.h"

static const char IM_START[] = "<|im_start|>", IM_END[] = "<|im_end|>";

/* First occurrence of needle in hay[0..n), or NULL. */
static const char *find(const char *hay, size_t n, const char *needle)
{
    return memmem(hay, n, needle, strlen(needle));
}

/* The default system text: after "<|im_start|>system" and a newline (written as "\n" or as the
 * character), plain text up to "<|im_end|>" with nothing of Jinja in it (no quote, brace, plus or
 * backslash, which would mean an expression such as messages[0]['content']). */
static int default_system(const char *tp, size_t n, char **out)
{
    static const char marker[] = "<|im_start|>system";
    for (const char *p = find(tp, n, marker); p; p = find(p + 1, n - (size_t)(p + 1 - tp), marker)) {
        const char *s = p + sizeof marker - 1, *end = tp + n;
        if (end - s >= 2 && s[0] == '\\' && s[1] == 'n')
            s += 2;
        else if (s < end && s[0] == '\n')
            s += 1;
        else
            continue;
        const char *e = find(s, (size_t)(end - s), IM_END);
        bool plain = e && e > s;
        for (const char *c = "'\"{+\\"; plain && *c; c++)
            plain = !memchr(s, *c, (size_t)(e - s));
        if (!plain)
            continue;
        *out = strndup(s, (size_t)(e - s));
        return *out ? SPEC_OK : SPEC_E_NOMEM;
    }
    return SPEC_OK;
}

int tok_chat_load(struct tok *t, const struct gguf *g)
{
    const struct gguf_value *v = gguf_find(g, "tokenizer.chat_template");
    if (!v)
        return SPEC_OK;
    if (v->type != GGUF_TYPE_STRING)
        return SPEC_E_TYPE;
    const char *tp = v->v.str.ptr;
    const size_t n = (size_t)v->v.str.len;
    if (!find(tp, n, IM_START) || !find(tp, n, IM_END))
        return SPEC_OK; /* another family: tok_chat_render says so */
    t->chat_ml = true;
    return default_system(tp, n, &t->chat_system);
}

static bool is_role(const char *r)
{
    return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant");
}

/* Appends the turn "<|im_start|>role\ncontent<|im_end|>\n" at out + *at (out may be NULL: only
 * counts). */
static void turn(char *out, size_t *at, const char *role, const char *content, size_t content_len)
{
    const struct {
        const char *p;
        size_t n;
    } parts[] = {{IM_START, sizeof IM_START - 1}, {role, strlen(role)}, {"\n", 1}, {content, content_len},
                 {IM_END, sizeof IM_END - 1}, {"\n", 1}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (out)
            memcpy(out + *at, parts[i].p, parts[i].n);
        *at += parts[i].n;
    }
}

int tok_chat_render(const struct tok *t, const struct tok_chat_message *m, int n, char **out, size_t *len)
{
    if (!t || !out || !len || n <= 0 || !m)
        return SPEC_E_INVALID_ARG;
    if (!t->chat_ml)
        return SPEC_E_UNSUPPORTED;
    for (int i = 0; i < n; i++)
        if (!m[i].role || !is_role(m[i].role) || (!m[i].content && m[i].content_len))
            return SPEC_E_INVALID_ARG;
    static const char opening[] = "<|im_start|>assistant\n";
    const bool add_system = t->chat_system && strcmp(m[0].role, "system") != 0;
    char *buf = NULL;
    for (int pass = 0; pass < 2; pass++) { /* count, then write */
        size_t at = 0;
        if (add_system)
            turn(buf, &at, "system", t->chat_system, strlen(t->chat_system));
        for (int i = 0; i < n; i++)
            turn(buf, &at, m[i].role, m[i].content, m[i].content_len);
        if (buf)
            memcpy(buf + at, opening, sizeof opening); /* with the NUL */
        at += sizeof opening - 1;
        if (buf) {
            *out = buf;
            *len = at;
            return SPEC_OK;
        }
        if (!(buf = malloc(at + 1)))
            return SPEC_E_NOMEM;
    }
    return SPEC_E_INVALID_ARG; /* not reached */
}
