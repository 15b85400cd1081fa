/* Request validation: every row of docs/protocol.md's error table that the codec decides, each
 * parameter's type and range checks with a message naming the field, defaults and boundaries. */
#include <criterion/criterion.h>
#include <string.h>

#include "common/err.h"
#include "ipc/ipc.h"
#include "tests/ipc/lit.h"

static const struct ipc_limits lim = {.n_vocab = 300, .n_ctx = 256, .draft_max = 8};

static int parse_with(const char *text, const struct ipc_limits *l, struct ipc_request *req, struct ipc_error *err)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    lit(&sb, text);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object obj;
    size_t off = 0;
    cr_assert_eq(msgpack_unpack(sb.data, sb.size, &off, &z, &obj), MSGPACK_UNPACK_SUCCESS);
    const int rc = ipc_parse_request(&obj, l, req, err);
    msgpack_zone_destroy(&z);
    msgpack_sbuffer_destroy(&sb); /* the request must not point into the message */
    return rc;
}

static struct ipc_request parse_ok(const char *text)
{
    struct ipc_request req;
    struct ipc_error err;
    const int rc = parse_with(text, &lim, &req, &err);
    cr_assert_eq(rc, SPEC_OK, "%s rejected: %s", text, err.message);
    return req;
}

struct bad {
    const char *text;
    int code;
    const char *needle; /* must appear in the message */
    int id;             /* msgid the error answers, -1: none */
};

static void check_bad(const struct bad *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct bad *c = &cases[i];
        struct ipc_request req;
        struct ipc_error err;
        memset(&req, 0xab, sizeof req);
        const int rc = parse_with(c->text, &lim, &req, &err);
        cr_assert_eq(rc, SPEC_E_FORMAT, "%s accepted", c->text);
        cr_expect_eq(err.code, c->code, "%s: code %d (%s), want %s: %s", c->text, err.code, ipc_code_name(err.code),
                     ipc_code_name(c->code), err.message);
        cr_expect(strstr(err.message, c->needle), "%s: message \"%s\" does not name \"%s\"", c->text, err.message,
                  c->needle);
        cr_expect_eq(err.has_id, c->id >= 0, "%s: has_id", c->text);
        if (c->id >= 0)
            cr_expect_eq(err.id, (uint32_t)c->id, "%s: id", c->text);
    }
}

Test(request, malformed_envelopes_are_invalid_request)
{
    const struct bad cases[] = {
        {"5", IPC_INVALID_REQUEST, "[0, msgid, method, params]", -1},
        {"{'a': 1}", IPC_INVALID_REQUEST, "a map", -1},
        {"[0, 1, 'health']", IPC_INVALID_REQUEST, "3 elements", -1},
        {"[0, 1, 'health', [], 5]", IPC_INVALID_REQUEST, "5 elements", -1},
        {"[1, 7, 'health', []]", IPC_INVALID_REQUEST, "type", 7},
        {"[2, 7, 'health', []]", IPC_INVALID_REQUEST, "type", 7},
        {"['0', 7, 'health', []]", IPC_INVALID_REQUEST, "type", 7},
        {"[0, -1, 'health', []]", IPC_INVALID_REQUEST, "msgid", -1},
        {"[0, 4294967296, 'health', []]", IPC_INVALID_REQUEST, "msgid", -1},
        {"[0, 'x', 'health', []]", IPC_INVALID_REQUEST, "msgid", -1},
        {"[0, 1.0, 'health', []]", IPC_INVALID_REQUEST, "msgid", -1},
        {"[0, 7, 5, []]", IPC_INVALID_REQUEST, "method", 7},
        {"[0, 7, 'health', {}]", IPC_INVALID_REQUEST, "params", 7},
        {"[0, 7, 'health', nil]", IPC_INVALID_REQUEST, "params", 7},
    };
    check_bad(cases, sizeof cases / sizeof cases[0]);
}

Test(request, unknown_method_is_method_not_found)
{
    const struct bad cases[] = {
        {"[0, 9, 'frobnicate', []]", IPC_METHOD_NOT_FOUND, "frobnicate", 9},
        {"[0, 9, 'Generate', []]", IPC_METHOD_NOT_FOUND, "Generate", 9},
        {"[0, 9, '', []]", IPC_METHOD_NOT_FOUND, "unknown method", 9},
        {"[0, 9, 'health\\x00', []]", IPC_METHOD_NOT_FOUND, "health?", 9},
    };
    check_bad(cases, sizeof cases / sizeof cases[0]);
}

#define GEN(params) "[0, 3, 'generate', [{" params "}]]"
#define P IPC_INVALID_PARAMS

Test(request, generate_param_errors_name_the_field)
{
    const struct bad cases[] = {
        {"[0, 3, 'generate', []]", P, "prompt: missing", 3},
        {GEN(""), P, "prompt: missing", 3},
        {"[0, 3, 'generate', [{}, {}]]", P, "2 elements", 3},
        {"[0, 3, 'generate', [5]]", P, "params[0]", 3},
        {GEN("'prompt': 5"), P, "prompt: expected a string", 3},
        {GEN("'prompt': 'a', 'tokens': [1]"), P, "give one of them", 3},
        {GEN("'prompt': 'a', 'messages': [{'role': 'user', 'content': 'b'}]"), P, "give one of them", 3},
        {GEN("'messages': 'hi'"), P, "messages: expected an array", 3},
        {GEN("'messages': []"), P, "messages: 0 messages, must be 1 .. 256", 3},
        {GEN("'messages': ['hi']"), P, "messages[0]: expected a map of role and content, got a string", 3},
        {GEN("'messages': [{'role': 'user'}]"), P, "messages[0]: expected a map", 3},
        {GEN("'messages': [{'role': 'user', 'text': 'a'}]"), P, "messages[0]: expected the keys role and content", 3},
        {GEN("'messages': [{'role': 'user', 'content': 'a', 'name': 'b'}]"), P, "messages[0]: expected a map", 3},
        {GEN("'messages': [{'role': 'user', 'content': 'a'}, {'role': 'bot', 'content': 'b'}]"), P,
         "messages[1].role: must be", 3},
        {GEN("'messages': [{'role': 'user', 'content': 5}]"), P, "messages[0].content: expected a string", 3},
        {GEN("'tokens': []"), P, "tokens: empty", 3},
        {GEN("'tokens': 5"), P, "tokens: expected", 3},
        {GEN("'tokens': [300]"), P, "tokens[0]: token id out of range 0 .. 299", 3},
        {GEN("'tokens': [-1]"), P, "tokens[0]", 3},
        {GEN("'tokens': [1, 'a']"), P, "tokens[1]: expected a token id, got a string", 3},
        {GEN("'tokens': [1, 2.0]"), P, "tokens[1]", 3},
        {GEN("'prompt': 'a', 'max_tokens': -1"), P, "max_tokens: -1 is out of range 0 .. 256", 3},
        {GEN("'prompt': 'a', 'max_tokens': 257"), P, "max_tokens: 257", 3},
        {GEN("'prompt': 'a', 'max_tokens': 18446744073709551615"), P, "max_tokens", 3},
        {GEN("'prompt': 'a', 'max_tokens': 1.5"), P, "max_tokens: expected an integer, got a float", 3},
        {GEN("'prompt': 'a', 'temperature': -0.1"), P, "temperature", 3},
        {GEN("'prompt': 'a', 'temperature': 100.5"), P, "temperature", 3},
        {GEN("'prompt': 'a', 'temperature': 'hot'"), P, "temperature: expected a number, got a string", 3},
        {GEN("'prompt': 'a', 'temperature': nil"), P, "temperature: expected a number, got nil", 3},
        {GEN("'prompt': 'a', 'temperature': 1e400"), P, "temperature", 3},
        {GEN("'prompt': 'a', 'top_k': 'a'"), P, "top_k", 3},
        {GEN("'prompt': 'a', 'top_k': 4294967296"), P, "top_k", 3},
        {GEN("'prompt': 'a', 'top_p': 0"), P, "top_p", 3},
        {GEN("'prompt': 'a', 'top_p': 1.5"), P, "top_p", 3},
        {GEN("'prompt': 'a', 'min_p': 1"), P, "min_p", 3},
        {GEN("'prompt': 'a', 'min_p': -0.1"), P, "min_p", 3},
        {GEN("'prompt': 'a', 'repeat_penalty': 0"), P, "repeat_penalty", 3},
        {GEN("'prompt': 'a', 'repeat_penalty': 1e39"), P, "repeat_penalty", 3},
        {GEN("'prompt': 'a', 'frequency_penalty': 2.5"), P, "frequency_penalty", 3},
        {GEN("'prompt': 'a', 'frequency_penalty': -3"), P, "frequency_penalty", 3},
        {GEN("'prompt': 'a', 'presence_penalty': 3"), P, "presence_penalty", 3},
        {GEN("'prompt': 'a', 'seed': -1"), P, "seed: expected an unsigned integer", 3},
        {GEN("'prompt': 'a', 'seed': 1.5"), P, "seed", 3},
        {GEN("'prompt': 'a', 'stop': 'x'"), P, "stop: expected an array", 3},
        {GEN("'prompt': 'a', 'stop': [5]"), P, "stop[0]: expected a string", 3},
        {GEN("'prompt': 'a', 'stop': ['x', '']"), P, "stop[1]: 0 bytes", 3},
        {GEN("'prompt': 'a', 'stop': ['a\\x00b']"), P, "stop[0]: contains a NUL", 3},
        {GEN("'prompt': 'a', 'stop': ['1','2','3','4','5','6','7','8','9']"), P, "stop: 9 strings, at most 8", 3},
        {GEN("'prompt': 'a', 'stream': 1"), P, "stream: expected a bool", 3},
        {GEN("'prompt': 'a', 'speculative': 'yes'"), P, "speculative", 3},
        {GEN("'prompt': 'a', 'add_special': 0"), P, "add_special", 3},
        {GEN("'prompt': 'a', 'draft_max': 0"), P, "draft_max: 0 is out of range 1 .. 8", 3},
        {GEN("'prompt': 'a', 'draft_max': 9"), P, "draft_max", 3},
        {GEN("'prompt': 'a', 'temprature': 0"), P, "unknown key \"temprature\"", 3},
        {GEN("'prompt': 'a', 'prompt': 'b'"), P, "duplicate key \"prompt\"", 3},
        {GEN("1: 2"), P, "keys must be strings", 3},
        {GEN("'prompt': 'a', '\\x01\\xff': 1"), P, "unknown key \"??\"", 3},
    };
    check_bad(cases, sizeof cases / sizeof cases[0]);
}

Test(request, stop_string_longer_than_the_limit_is_refused)
{
    char text[400], s[IPC_MAX_STOP_LEN + 2];
    memset(s, 'x', sizeof s - 1);
    s[sizeof s - 1] = '\0';
    snprintf(text, sizeof text, GEN("'prompt': 'a', 'stop': ['%s']"), s);
    const struct bad c = {text, P, "stop[0]: 129 bytes, must be 1 .. 128", 3};
    check_bad(&c, 1);
}

Test(request, other_methods_param_errors_name_the_field)
{
    const struct bad cases[] = {
        {"[0, 4, 'cancel', []]", P, "id: missing", 4},
        {"[0, 4, 'cancel', [{'id': -1}]]", P, "id", 4},
        {"[0, 4, 'cancel', [{'id': 'a'}]]", P, "id: expected an integer", 4},
        {"[0, 4, 'cancel', [{'id': 4294967296}]]", P, "id", 4},
        {"[0, 4, 'cancel', [{'id': 1, 'x': 2}]]", P, "unknown key \"x\"", 4},
        {"[0, 4, 'tokenize', []]", P, "text: missing", 4},
        {"[0, 4, 'tokenize', [{'text': 5}]]", P, "text: expected a string", 4},
        {"[0, 4, 'tokenize', [{'text': 'a', 'add_special': 1}]]", P, "add_special", 4},
        {"[0, 4, 'tokenize', [{'text': 'a', 'parse': true}]]", P, "unknown key \"parse\"", 4},
        {"[0, 4, 'detokenize', [{}]]", P, "tokens: missing", 4},
        {"[0, 4, 'detokenize', [{'tokens': [300]}]]", P, "tokens[0]", 4},
        {"[0, 4, 'detokenize', [{'tokens': 'ab'}]]", P, "tokens: expected", 4},
        {"[0, 4, 'stats', [{'format': 'xml'}]]", P, "format", 4},
        {"[0, 4, 'stats', [{'format': 5}]]", P, "format: expected a string", 4},
        {"[0, 4, 'info', [{'verbose': true}]]", P, "unknown key \"verbose\"", 4},
        {"[0, 4, 'health', [{'x': 1}]]", P, "unknown key \"x\"", 4},
        {"[0, 4, 'health', [[]]]", P, "params[0]: expected a map", 4},
    };
    check_bad(cases, sizeof cases / sizeof cases[0]);
}

Test(request, generate_defaults_follow_the_protocol)
{
    struct ipc_request r = parse_ok(GEN("'prompt': 'hi'"));
    cr_assert_eq(r.msgid, 3);
    cr_assert_eq(r.method, IPC_GENERATE);
    const struct ipc_generate *g = &r.u.generate;
    cr_assert_str_eq(g->prompt, "hi");
    cr_assert_eq(g->prompt_len, 2);
    cr_assert_null(g->tokens);
    cr_assert(g->add_special);
    cr_assert_eq(g->max_tokens, 128);
    cr_assert_float_eq(g->sampling.temperature, 0.8f, 1e-6);
    cr_assert_eq(g->sampling.top_k, 40);
    cr_assert_float_eq(g->sampling.top_p, 0.95f, 1e-6);
    cr_assert_float_eq(g->sampling.min_p, 0.05f, 1e-6);
    cr_assert_float_eq(g->sampling.repeat_penalty, 1.0f, 1e-6);
    cr_assert_float_eq(g->sampling.frequency_penalty, 0.0f, 1e-6);
    cr_assert_float_eq(g->sampling.presence_penalty, 0.0f, 1e-6);
    cr_assert_not(g->has_seed);
    cr_assert_eq(g->n_stop, 0);
    cr_assert_not(g->stream);
    cr_assert(g->speculative);
    cr_assert_eq(g->draft_max, 0);
    ipc_request_free(&r);

    /* A context shorter than the default max_tokens caps it. */
    struct ipc_request r2;
    struct ipc_error err;
    const struct ipc_limits small = {.n_vocab = 300, .n_ctx = 64, .draft_max = 4};
    cr_assert_eq(parse_with(GEN("'prompt': 'hi'"), &small, &r2, &err), SPEC_OK);
    cr_assert_eq(r2.u.generate.max_tokens, 64);
    ipc_request_free(&r2);
}

Test(request, generate_takes_every_key_and_ints_for_floats)
{
    struct ipc_request r = parse_ok(GEN("'tokens': [0, 299, 7], 'add_special': false, 'max_tokens': 256, "
                                        "'temperature': 1, 'top_k': -1, 'top_p': 1, 'min_p': 0, "
                                        "'repeat_penalty': 2, 'frequency_penalty': -2, 'presence_penalty': 2.0, "
                                        "'seed': 18446744073709551615, 'stop': ['\\n', 'END'], 'stream': true, "
                                        "'speculative': false, 'draft_max': 8"));
    const struct ipc_generate *g = &r.u.generate;
    cr_assert_null(g->prompt);
    cr_assert_eq(g->n_tokens, 3);
    cr_assert_eq(g->tokens[0], 0);
    cr_assert_eq(g->tokens[1], 299);
    cr_assert_eq(g->tokens[2], 7);
    cr_assert_not(g->add_special);
    cr_assert_eq(g->max_tokens, 256);
    cr_assert_float_eq(g->sampling.temperature, 1.0f, 0);
    cr_assert_eq(g->sampling.top_k, -1);
    cr_assert_float_eq(g->sampling.top_p, 1.0f, 0);
    cr_assert_float_eq(g->sampling.min_p, 0.0f, 0);
    cr_assert_float_eq(g->sampling.repeat_penalty, 2.0f, 0);
    cr_assert_float_eq(g->sampling.frequency_penalty, -2.0f, 0);
    cr_assert_float_eq(g->sampling.presence_penalty, 2.0f, 0);
    cr_assert(g->has_seed);
    cr_assert_eq(g->sampling.seed, UINT64_MAX);
    cr_assert_eq(g->n_stop, 2);
    cr_assert_str_eq(g->stop[0], "\n");
    cr_assert_str_eq(g->stop[1], "END");
    cr_assert(g->stream);
    cr_assert_not(g->speculative);
    cr_assert_eq(g->draft_max, 8);
    cr_assert_eq(verify_params_check(&g->sampling), SPEC_OK);
    ipc_request_free(&r);
}

Test(request, generate_takes_chat_messages)
{
    struct ipc_request r = parse_ok(GEN("'messages': [{'role': 'system', 'content': 'Be brief.'}, "
                                        "{'content': 'a\\x00b', 'role': 'user'}]"));
    const struct ipc_generate *g = &r.u.generate;
    cr_assert_null(g->prompt);
    cr_assert_null(g->tokens);
    cr_assert_eq(g->n_messages, 2);
    cr_assert_str_eq(g->messages[0].role, "system");
    cr_assert_str_eq(g->messages[0].content, "Be brief.");
    cr_assert_str_eq(g->messages[1].role, "user");
    cr_assert_eq(g->messages[1].content_len, 3);
    cr_assert_eq(memcmp(g->messages[1].content, "a\0b", 3), 0);
    ipc_request_free(&r);
}

Test(request, boundaries_are_accepted)
{
    const char *ok[] = {
        GEN("'prompt': 'a', 'temperature': 0, 'max_tokens': 0, 'draft_max': 1"),
        GEN("'prompt': 'a', 'temperature': 100.0, 'top_p': 0.0001, 'min_p': 0.9999"),
        GEN("'prompt': '', 'frequency_penalty': 2, 'presence_penalty': -2.0"),
        "[0, 4294967295, 'health', []]",
        "[0, 0, 'info', [{}]]",
        "[0, 1, 'stats', []]",
        "[0, 1, 'detokenize', [{'tokens': []}]]",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct ipc_request r = parse_ok(ok[i]);
        ipc_request_free(&r);
    }
    char text[2048], s[IPC_MAX_STOP_LEN + 1];
    memset(s, 'x', IPC_MAX_STOP_LEN);
    s[IPC_MAX_STOP_LEN] = '\0';
    int n = snprintf(text, sizeof text, "[0, 3, 'generate', [{'prompt': 'a', 'stop': ['%s'", s);
    for (int i = 1; i < IPC_MAX_STOP; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, ", '%s'", s);
    snprintf(text + n, sizeof text - (size_t)n, "]}]]");
    struct ipc_request r = parse_ok(text);
    cr_assert_eq(r.u.generate.n_stop, IPC_MAX_STOP);
    cr_assert_eq(strlen(r.u.generate.stop[IPC_MAX_STOP - 1]), IPC_MAX_STOP_LEN);
    ipc_request_free(&r);
}

Test(request, other_methods_parse_into_their_fields)
{
    struct ipc_request r = parse_ok("[0, 5, 'cancel', [{'id': 4294967295}]]");
    cr_assert_eq(r.method, IPC_CANCEL);
    cr_assert_eq(r.u.cancel.id, UINT32_MAX);
    ipc_request_free(&r);

    r = parse_ok("[0, 5, 'tokenize', [{'text': 'a\\x00b', 'add_special': true}]]");
    cr_assert_eq(r.method, IPC_TOKENIZE);
    cr_assert_eq(r.u.tokenize.len, 3);
    cr_assert_eq(memcmp(r.u.tokenize.text, "a\0b", 3), 0);
    cr_assert(r.u.tokenize.add_special);
    ipc_request_free(&r);

    r = parse_ok("[0, 5, 'tokenize', [{'text': 'x'}]]");
    cr_assert_not(r.u.tokenize.add_special, "tokenize's add_special defaults to false");
    ipc_request_free(&r);

    r = parse_ok("[0, 5, 'detokenize', [{'tokens': [1, 2]}]]");
    cr_assert_eq(r.method, IPC_DETOKENIZE);
    cr_assert_eq(r.u.detokenize.n_tokens, 2);
    cr_assert_eq(r.u.detokenize.tokens[1], 2);
    ipc_request_free(&r);

    r = parse_ok("[0, 5, 'stats', [{'format': 'prometheus'}]]");
    cr_assert(r.u.stats.prometheus);
    ipc_request_free(&r);
    r = parse_ok("[0, 5, 'stats', [{'format': 'map'}]]");
    cr_assert_not(r.u.stats.prometheus);
    ipc_request_free(&r);

    r = parse_ok("[0, 5, 'health', []]");
    cr_assert_eq(r.method, IPC_HEALTH);
    ipc_request_free(&r);
}

Test(request, code_table_matches_the_protocol)
{
    const struct {
        int code;
        const char *name;
    } rows[] = {
        {-32700, "PARSE_ERROR"}, {-32600, "INVALID_REQUEST"}, {-32601, "METHOD_NOT_FOUND"},
        {-32602, "INVALID_PARAMS"}, {1, "PROMPT_TOO_LONG"}, {2, "BUSY"}, {3, "NOT_FOUND"},
        {4, "FRAME_TOO_LARGE"}, {5, "SHUTTING_DOWN"}, {6, "INTERNAL"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        cr_assert_str_eq(ipc_code_name(rows[i].code), rows[i].name);
    const char *methods[] = {"generate", "cancel", "tokenize", "detokenize", "info", "stats", "health"};
    for (int m = IPC_GENERATE; m <= IPC_HEALTH; m++)
        cr_assert_str_eq(ipc_method_name((enum ipc_method)m), methods[m]);
}
