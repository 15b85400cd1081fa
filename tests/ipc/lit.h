/* Test helper (header-only, shared by tests/ipc and tests/daemon): packs a compact literal such as
 *   [0, 7, 'generate', [{'prompt': 'hi', 'top_p': 1.5}]]
 * into MessagePack, so a test reads like the message it sends. Grammar: [a, b], {k: v}, 'str' (escapes
 * \' \\ \n \xNN), integers (uint64 or negative int64), floats (with '.' or 'e'), true, false, nil. A
 * malformed literal aborts: it is a bug in the test. */
#ifndef SPECD_TESTS_IPC_LIT_H
#define SPECD_TESTS_IPC_LIT_H

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

static inline void lit_die(const char *s)
{
    fprintf(stderr, "bad test literal at: %.40s\n", s);
    abort();
}

static inline void lit_ws(const char **s)
{
    while (isspace((unsigned char)**s))
        (*s)++;
}

/* Packs one value when pk is not NULL, else only skips it. */
static inline void lit_value(msgpack_packer *pk, const char **s);

static inline size_t lit_count(const char *s, char close, int per_item)
{
    size_t n = 0;
    lit_ws(&s);
    if (*s == close)
        return 0;
    for (;;) {
        for (int i = 0; i < per_item; i++) {
            lit_value(NULL, &s);
            lit_ws(&s);
            if (i + 1 < per_item) {
                if (*s != ':')
                    lit_die(s);
                s++;
            }
        }
        n++;
        if (*s == close)
            return n;
        if (*s != ',')
            lit_die(s);
        s++;
    }
}

static inline void lit_items(msgpack_packer *pk, const char **s, char close, int per_item)
{
    (*s)++;
    const size_t n = lit_count(*s, close, per_item);
    if (pk) {
        if (per_item == 1)
            msgpack_pack_array(pk, n);
        else
            msgpack_pack_map(pk, n);
    }
    for (size_t k = 0; k < n; k++) {
        for (int i = 0; i < per_item; i++) {
            lit_value(pk, s);
            lit_ws(s);
            (*s)++; /* ':' or ',' or the closing bracket, checked by lit_count */
        }
    }
    if (n == 0) {
        lit_ws(s);
        (*s)++;
    }
}

static inline void lit_value(msgpack_packer *pk, const char **s)
{
    lit_ws(s);
    const char *p = *s;
    if (*p == '[') {
        lit_items(pk, s, ']', 1);
    } else if (*p == '{') {
        lit_items(pk, s, '}', 2);
    } else if (*p == '\'') {
        char buf[4096];
        size_t n = 0;
        for (p++; *p != '\''; p++) {
            if (!*p || n == sizeof buf)
                lit_die(*s);
            if (*p == '\\' && p[1] == 'x') {
                char hex[3] = {p[2], p[3], 0};
                buf[n++] = (char)strtoul(hex, NULL, 16);
                p += 3;
            } else if (*p == '\\' && p[1] == 'n') {
                buf[n++] = '\n';
                p++;
            } else if (*p == '\\') {
                buf[n++] = *++p;
            } else {
                buf[n++] = *p;
            }
        }
        if (pk)
            msgpack_pack_str_with_body(pk, buf, n);
        *s = p + 1;
    } else if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5) || !strncmp(p, "nil", 3)) {
        if (pk)
            *p == 't' ? msgpack_pack_true(pk) : *p == 'f' ? msgpack_pack_false(pk) : msgpack_pack_nil(pk);
        *s = p + (*p == 't' ? 4 : *p == 'f' ? 5 : 3);
    } else if (*p == '-' || isdigit((unsigned char)*p)) {
        const char *e = p + 1;
        while (isalnum((unsigned char)*e) || *e == '.' || ((*e == '-' || *e == '+') && (e[-1] == 'e')))
            e++;
        const int is_float = memchr(p, '.', (size_t)(e - p)) || memchr(p, 'e', (size_t)(e - p));
        char *end;
        if (is_float) {
            const double d = strtod(p, &end);
            if (pk)
                msgpack_pack_double(pk, d);
        } else if (*p == '-') {
            const long long v = strtoll(p, &end, 10);
            if (pk)
                msgpack_pack_int64(pk, v);
        } else {
            const unsigned long long v = strtoull(p, &end, 10);
            if (pk)
                msgpack_pack_uint64(pk, v);
        }
        if (end != e)
            lit_die(p);
        *s = e;
    } else {
        lit_die(p);
    }
}

/* Append the literal's message to sb. */
static inline void lit(msgpack_sbuffer *sb, const char *text)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    const char *s = text;
    lit_value(&pk, &s);
    lit_ws(&s);
    if (*s)
        lit_die(s);
}

#endif
