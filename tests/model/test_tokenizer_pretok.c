/* Pre-tokenizer splits and code point classes. The expected splits were produced by running
 * llama.cpp's regexes for each tokenizer.ggml.pre (llama-vocab.cpp) through Python's `regex`
 * module, with \s restricted to Unicode White_Space as llama.cpp's tables define it. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok_internal.h"
#include "model/unicode.h"

struct split_case {
    enum tok_pre pre;
    const char *text;
    const char *pieces; /* expected pieces joined by '|' */
};

static const struct split_case cases[] = {
    {TOK_PRE_LLAMA3, "Hello world", "Hello| world"},
    {TOK_PRE_LLAMA3, "  Hello  ", " | Hello|  "},
    {TOK_PRE_LLAMA3, "I'm DON'T we'LL it's", "I|'m| DON|'T| we|'LL| it|'s"},
    {TOK_PRE_LLAMA3, "1234567 x42", "123|456|7| x|42"},
    {TOK_PRE_LLAMA3, "a\x0A\x0A  b", "a|\x0A\x0A| | b"},
    {TOK_PRE_LLAMA3, "x  \x09 y", "x|  \x09| y"},
    {TOK_PRE_LLAMA3, "\xC3\xA9lan 3.14!", "\xC3\xA9lan| |3|.|14|!"},
    {TOK_PRE_LLAMA3, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E| \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88"},
    {TOK_PRE_LLAMA3, " ?!! <a>", " ?!!| <|a|>"},
    {TOK_PRE_LLAMA3, "\x0D\x0A\x0D\x0A z", "\x0D\x0A\x0D\x0A| z"},
    {TOK_PRE_LLAMA3, "abc123def", "abc|123|def"},
    {TOK_PRE_LLAMA3, "$x += y^2 ~z && w", "$x| +=| y|^|2| ~|z| &&| w"},
    {TOK_PRE_LLAMA3, "a\xC2\xA0" "b\xE3\x80\x80" "c", "a|\xC2\xA0" "b|\xE3\x80\x80" "c"},
    {TOK_PRE_LLAMA3, "e\xCC\x81t\xC3\xA9", "e|\xCC\x81t\xC3\xA9"},
    {TOK_PRE_LLAMA3, "tab\x09" "end\x0A", "tab|\x09" "end|\x0A"},
    {TOK_PRE_QWEN2, "Hello world", "Hello| world"},
    {TOK_PRE_QWEN2, "  Hello  ", " | Hello|  "},
    {TOK_PRE_QWEN2, "I'm DON'T we'LL it's", "I|'m| DON|'T| we|'LL| it|'s"},
    {TOK_PRE_QWEN2, "1234567 x42", "1|2|3|4|5|6|7| x|4|2"},
    {TOK_PRE_QWEN2, "a\x0A\x0A  b", "a|\x0A\x0A| | b"},
    {TOK_PRE_QWEN2, "x  \x09 y", "x|  \x09| y"},
    {TOK_PRE_QWEN2, "\xC3\xA9lan 3.14!", "\xC3\xA9lan| |3|.|1|4|!"},
    {TOK_PRE_QWEN2, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E| \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88"},
    {TOK_PRE_QWEN2, " ?!! <a>", " ?!!| <|a|>"},
    {TOK_PRE_QWEN2, "\x0D\x0A\x0D\x0A z", "\x0D\x0A\x0D\x0A| z"},
    {TOK_PRE_QWEN2, "abc123def", "abc|1|2|3|def"},
    {TOK_PRE_QWEN2, "$x += y^2 ~z && w", "$x| +=| y|^|2| ~|z| &&| w"},
    {TOK_PRE_QWEN2, "a\xC2\xA0" "b\xE3\x80\x80" "c", "a|\xC2\xA0" "b|\xE3\x80\x80" "c"},
    {TOK_PRE_QWEN2, "e\xCC\x81t\xC3\xA9", "e|\xCC\x81t\xC3\xA9"},
    {TOK_PRE_QWEN2, "tab\x09" "end\x0A", "tab|\x09" "end|\x0A"},
    {TOK_PRE_SMOLLM, "Hello world", "Hello| world"},
    {TOK_PRE_SMOLLM, "  Hello  ", " | Hello|  "},
    {TOK_PRE_SMOLLM, "I'm DON'T we'LL it's", "I|'m| DON|'|T| we|'|LL| it|'s"},
    {TOK_PRE_SMOLLM, "1234567 x42", "1|2|3|4|5|6|7| x|4|2"},
    {TOK_PRE_SMOLLM, "a\x0A\x0A  b", "a|\x0A\x0A | b"},
    {TOK_PRE_SMOLLM, "x  \x09 y", "x|  \x09| y"},
    {TOK_PRE_SMOLLM, "\xC3\xA9lan 3.14!", "\xC3\xA9lan| |3|.|1|4|!"},
    {TOK_PRE_SMOLLM, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E| \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88"},
    {TOK_PRE_SMOLLM, " ?!! <a>", " ?!!| <|a|>"},
    {TOK_PRE_SMOLLM, "\x0D\x0A\x0D\x0A z", "\x0D\x0A\x0D\x0A| z"},
    {TOK_PRE_SMOLLM, "abc123def", "abc|1|2|3|def"},
    {TOK_PRE_SMOLLM, "$x += y^2 ~z && w", "$|x| +=| y|^|2| ~|z| &&| w"},
    {TOK_PRE_SMOLLM, "a\xC2\xA0" "b\xE3\x80\x80" "c", "a|\xC2\xA0|b|\xE3\x80\x80|c"},
    {TOK_PRE_SMOLLM, "e\xCC\x81t\xC3\xA9", "e|\xCC\x81|t\xC3\xA9"},
    {TOK_PRE_SMOLLM, "tab\x09" "end\x0A", "tab|\x09|end|\x0A"},
    {TOK_PRE_GPT2, "Hello world", "Hello| world"},
    {TOK_PRE_GPT2, "  Hello  ", " | Hello|  "},
    {TOK_PRE_GPT2, "I'm DON'T we'LL it's", "I|'m| DON|'|T| we|'|LL| it|'s"},
    {TOK_PRE_GPT2, "1234567 x42", "1234567| x|42"},
    {TOK_PRE_GPT2, "a\x0A\x0A  b", "a|\x0A\x0A | b"},
    {TOK_PRE_GPT2, "x  \x09 y", "x|  \x09| y"},
    {TOK_PRE_GPT2, "\xC3\xA9lan 3.14!", "\xC3\xA9lan| 3|.|14|!"},
    {TOK_PRE_GPT2, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E| \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88"},
    {TOK_PRE_GPT2, " ?!! <a>", " ?!!| <|a|>"},
    {TOK_PRE_GPT2, "\x0D\x0A\x0D\x0A z", "\x0D\x0A\x0D\x0A| z"},
    {TOK_PRE_GPT2, "abc123def", "abc|123|def"},
    {TOK_PRE_GPT2, "$x += y^2 ~z && w", "$|x| +=| y|^|2| ~|z| &&| w"},
    {TOK_PRE_GPT2, "a\xC2\xA0" "b\xE3\x80\x80" "c", "a|\xC2\xA0|b|\xE3\x80\x80|c"},
    {TOK_PRE_GPT2, "e\xCC\x81t\xC3\xA9", "e|\xCC\x81|t\xC3\xA9"},
    {TOK_PRE_GPT2, "tab\x09" "end\x0A", "tab|\x09|end|\x0A"},
    {TOK_PRE_DEFAULT, "Hello world", "Hello| world"},
    {TOK_PRE_DEFAULT, "  Hello  ", " | Hello|  "},
    {TOK_PRE_DEFAULT, "I'm DON'T we'LL it's", "I|'|m| DON|'|T| we|'|LL| it|'|s"},
    {TOK_PRE_DEFAULT, "1234567 x42", "123|456|7| x|42"},
    {TOK_PRE_DEFAULT, "a\x0A\x0A  b", "a|\x0A\x0A | b"},
    {TOK_PRE_DEFAULT, "x  \x09 y", "x|  \x09| y"},
    {TOK_PRE_DEFAULT, "\xC3\xA9lan 3.14!", "\xC3\xA9lan| |3|.|14|!"},
    {TOK_PRE_DEFAULT, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E| \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88"},
    {TOK_PRE_DEFAULT, " ?!! <a>", " |?!!| |<|a|>"},
    {TOK_PRE_DEFAULT, "\x0D\x0A\x0D\x0A z", "\x0D\x0A\x0D\x0A| z"},
    {TOK_PRE_DEFAULT, "abc123def", "abc|123|def"},
    {TOK_PRE_DEFAULT, "$x += y^2 ~z && w", "$|x| |+=| y|^|2| |~|z| |&&| w"},
    {TOK_PRE_DEFAULT, "a\xC2\xA0" "b\xE3\x80\x80" "c", "a|\xC2\xA0|b|\xE3\x80\x80|c"},
    {TOK_PRE_DEFAULT, "e\xCC\x81t\xC3\xA9", "e|\xCC\x81|t\xC3\xA9"},
    {TOK_PRE_DEFAULT, "tab\x09" "end\x0A", "tab|\x09|end|\x0A"},
};

static const char *pre_name(enum tok_pre pre)
{
    static const char *const names[] = {"default", "llama3", "qwen2", "smollm", "gpt2"};
    return names[pre];
}

Test(tokenizer_pretok, splits_text_as_llamacpp_regexes_do)
{
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const char *s = cases[c].text;
        size_t len = strlen(s);
        uint32_t *cp = malloc((len + 1) * sizeof(*cp));
        uint16_t *fl = malloc((len + 1) * sizeof(*fl));
        size_t *words = malloc((len + 1) * sizeof(*words)), *scratch = malloc((len + 1) * sizeof(*scratch));
        size_t n = unicode_decode_lenient((const uint8_t *)s, len, cp);
        for (size_t i = 0; i < n; i++)
            fl[i] = unicode_flags(cp[i]);
        size_t n_words = tok_pre_split(cases[c].pre, cp, fl, n, words, scratch);
        /* Join the pieces' bytes with '|' and compare. */
        char got[256];
        size_t k = 0, at = 0;
        for (size_t w = 0; w < n_words; w++) {
            if (w)
                got[k++] = '|';
            for (size_t i = 0; i < words[w]; i++, at++) {
                uint8_t u[4];
                size_t ul = unicode_encode(cp[at], u);
                memcpy(got + k, u, ul);
                k += ul;
            }
        }
        got[k] = 0;
        cr_expect_str_eq(got, cases[c].pieces, "%s: \"%s\"", pre_name(cases[c].pre), s);
        free(cp);
        free(fl);
        free(words);
        free(scratch);
    }
}

Test(tokenizer_pretok, classes_follow_unicode_15_1_as_llamacpp)
{
    cr_assert_eq(unicode_flags('a'), UNICODE_LETTER);
    cr_assert_eq(unicode_flags('7'), UNICODE_NUMBER);
    cr_assert_eq(unicode_flags(' '), UNICODE_SEPARATOR | UNICODE_WHITESPACE);
    cr_assert_eq(unicode_flags('\n'), UNICODE_CONTROL | UNICODE_WHITESPACE);
    cr_assert_eq(unicode_flags(0x1C), UNICODE_CONTROL, "U+001C is not White_Space");
    cr_assert_eq(unicode_flags(0x85), UNICODE_CONTROL | UNICODE_WHITESPACE);
    cr_assert_eq(unicode_flags(0x3000), UNICODE_SEPARATOR | UNICODE_WHITESPACE);
    cr_assert_eq(unicode_flags(0x0301), UNICODE_MARK);
    cr_assert_eq(unicode_flags(0x2167), UNICODE_NUMBER); /* Roman numeral eight, Nl */
    cr_assert_eq(unicode_flags(0x1F600), UNICODE_SYMBOL);
    cr_assert_eq(unicode_flags(0xFEFF), UNICODE_CONTROL);
    cr_assert_eq(unicode_flags(0x0378), UNICODE_UNDEFINED);
    cr_assert_eq(unicode_flags(0x2EBF0), UNICODE_LETTER, "CJK Extension I is Unicode 15.1");
    cr_assert_eq(unicode_flags(0x1C89), UNICODE_UNDEFINED, "U+1C89 is Unicode 16: not in llama.cpp's table");
    cr_assert_eq(unicode_flags(0x10FFFD), UNICODE_CONTROL); /* private use */
    cr_assert_eq(unicode_flags(0x110000), UNICODE_UNDEFINED);
}
