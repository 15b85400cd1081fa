/* Encoders: each writes exactly one message of the documented shape, back to back in one buffer;
 * histograms and the Prometheus text agree. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "common/err.h"
#include "ipc/ipc.h"

struct decoded {
    msgpack_zone zone;
    msgpack_object obj;
};

/* Decode the message at *off of sb and move past it. */
static msgpack_object next_msg(const msgpack_sbuffer *sb, size_t *off, struct decoded *d)
{
    msgpack_zone_init(&d->zone, 1024);
    const msgpack_unpack_return ur = msgpack_unpack(sb->data, sb->size, off, &d->zone, &d->obj);
    cr_assert(ur == MSGPACK_UNPACK_SUCCESS || ur == MSGPACK_UNPACK_EXTRA_BYTES, "no message at %zu", *off);
    return d->obj;
}

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
    cr_assert_eq(map->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            !memcmp(k->via.str.ptr, key, k->via.str.size))
            return &map->via.map.ptr[i].val;
    }
    cr_assert_fail("key %s missing", key);
    return NULL;
}

static void assert_str(const msgpack_object *o, const char *s)
{
    cr_assert_eq(o->type, MSGPACK_OBJECT_STR);
    cr_assert_eq(o->via.str.size, strlen(s));
    cr_assert_eq(memcmp(o->via.str.ptr, s, o->via.str.size), 0, "%.*s != %s", (int)o->via.str.size,
                 o->via.str.ptr, s);
}

Test(encode, errors_as_response_and_as_notification)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    struct ipc_error e = {.has_id = true, .id = 77};
    ipc_error_set(&e, IPC_BUSY, "limit %d", 3);
    cr_assert_eq(ipc_encode_error(&sb, &e), SPEC_OK);
    e.has_id = false;
    cr_assert_eq(ipc_encode_error(&sb, &e), SPEC_OK);
    ipc_error_set(&e, IPC_PARSE_ERROR, "bad byte");
    cr_assert_eq(ipc_encode_error_notify(&sb, &e), SPEC_OK);

    size_t off = 0;
    struct decoded d[3];
    msgpack_object m = next_msg(&sb, &off, &d[0]);
    cr_assert_eq(m.via.array.size, 4);
    cr_assert_eq(m.via.array.ptr[0].via.u64, 1);
    cr_assert_eq(m.via.array.ptr[1].via.u64, 77);
    cr_assert_eq(get(&m.via.array.ptr[2], "code")->via.i64, 2);
    assert_str(get(&m.via.array.ptr[2], "name"), "BUSY");
    assert_str(get(&m.via.array.ptr[2], "message"), "limit 3");
    cr_assert_eq(m.via.array.ptr[3].type, MSGPACK_OBJECT_NIL);

    m = next_msg(&sb, &off, &d[1]);
    cr_assert_eq(m.via.array.ptr[1].type, MSGPACK_OBJECT_NIL, "no msgid: nil");

    m = next_msg(&sb, &off, &d[2]);
    cr_assert_eq(m.via.array.size, 3);
    cr_assert_eq(m.via.array.ptr[0].via.u64, 2);
    assert_str(&m.via.array.ptr[1], "error");
    const msgpack_object *err = &m.via.array.ptr[2].via.array.ptr[0];
    cr_assert_eq(get(err, "code")->via.i64, -32700);
    assert_str(get(err, "name"), "PARSE_ERROR");
    cr_assert_eq(off, sb.size);
    for (int i = 0; i < 3; i++)
        msgpack_zone_destroy(&d[i].zone);
    msgpack_sbuffer_destroy(&sb);
}

Test(encode, chunk_and_generate_result_shapes)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    const int32_t toks[] = {5, 6, 7, 8};
    cr_assert_eq(ipc_encode_chunk(&sb, 9, "ab", 2, toks, 2), SPEC_OK);
    const struct ipc_generate_result r = {
        .text = "abcd", .n_text = 4, .tokens = toks, .n_tokens = 4, .finish_reason = "length", .seed = 123,
        .prompt_tokens = 3, .cached_tokens = 2, .speculative = true, .drafted = 10, .accepted = 5, .target_passes = 2,
        .queue_ms = 1, .prefill_ms = 2, .draft_ms = 3, .target_ms = 4, .total_ms = 10};
    cr_assert_eq(ipc_encode_generate(&sb, 9, &r), SPEC_OK);

    size_t off = 0;
    struct decoded d[2];
    msgpack_object m = next_msg(&sb, &off, &d[0]);
    assert_str(&m.via.array.ptr[1], "chunk");
    const msgpack_object *c = &m.via.array.ptr[2].via.array.ptr[0];
    cr_assert_eq(get(c, "id")->via.u64, 9);
    assert_str(get(c, "text"), "ab");
    cr_assert_eq(get(c, "tokens")->via.array.size, 2);
    cr_assert_eq(get(c, "tokens")->via.array.ptr[1].via.u64, 6);

    m = next_msg(&sb, &off, &d[1]);
    cr_assert_eq(m.via.array.ptr[2].type, MSGPACK_OBJECT_NIL);
    const msgpack_object *res = &m.via.array.ptr[3];
    assert_str(get(res, "text"), "abcd");
    cr_assert_eq(get(res, "tokens")->via.array.size, 4);
    assert_str(get(res, "finish_reason"), "length");
    cr_assert_eq(get(res, "seed")->via.u64, 123);
    cr_assert_eq(get(get(res, "usage"), "prompt_tokens")->via.i64, 3);
    cr_assert_eq(get(get(res, "usage"), "cached_tokens")->via.i64, 2);
    cr_assert_eq(get(get(res, "usage"), "completion_tokens")->via.i64, 4);
    const msgpack_object *sp = get(res, "speculative");
    cr_assert(get(sp, "enabled")->via.boolean);
    cr_assert_float_eq(get(sp, "acceptance")->via.f64, 0.5, 1e-12);
    cr_assert_float_eq(get(sp, "tokens_per_pass")->via.f64, 2.0, 1e-12);
    cr_assert_float_eq(get(get(res, "timing"), "total_ms")->via.f64, 10.0, 1e-12);
    cr_assert_eq(off, sb.size);
    for (int i = 0; i < 2; i++)
        msgpack_zone_destroy(&d[i].zone);
    msgpack_sbuffer_destroy(&sb);
}

Test(encode, info_lists_models_and_limits)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    const struct ipc_info in = {
        .version = "0.1", .backend = "cpu",
        .target = {.path = "t.gguf", .arch = "llama", .n_vocab = 300, .n_ctx_train = 256, .n_layer = 2, .n_embd = 64},
        .n_ctx = 256, .max_seqs = 8, .max_clients = 64, .max_queue = 32, .max_pending_per_client = 16,
        .draft_max = 8, .max_frame = 1 << 20};
    cr_assert_eq(ipc_encode_info(&sb, 1, &in), SPEC_OK);
    size_t off = 0;
    struct decoded d;
    msgpack_object m = next_msg(&sb, &off, &d);
    const msgpack_object *res = &m.via.array.ptr[3];
    cr_assert_eq(get(res, "protocol")->via.i64, IPC_PROTOCOL_VERSION);
    assert_str(get(get(res, "target"), "arch"), "llama");
    cr_assert_eq(get(res, "draft")->type, MSGPACK_OBJECT_NIL);
    const msgpack_object *l = get(res, "limits");
    cr_assert_eq(get(l, "max_frame")->via.u64, 1 << 20);
    cr_assert_eq(get(l, "max_stop")->via.i64, IPC_MAX_STOP);
    cr_assert_eq(get(l, "max_stop_len")->via.i64, IPC_MAX_STOP_LEN);
    cr_assert_eq(get(l, "max_pending_per_client")->via.i64, 16);
    msgpack_zone_destroy(&d.zone);
    msgpack_sbuffer_destroy(&sb);
}

Test(encode, stats_histograms_are_cumulative_in_both_formats)
{
    struct ipc_stats s = {.requests_total = 5, .requests_failed = 1, .active = 2, .uptime_s = 3.5};
    ipc_hist_observe(&s.request_seconds, 0.0005); /* first bucket */
    ipc_hist_observe(&s.request_seconds, 0.001);  /* le is inclusive */
    ipc_hist_observe(&s.request_seconds, 0.2);
    ipc_hist_observe(&s.request_seconds, 1000);   /* +Inf only */
    cr_assert_eq(s.request_seconds.count, 4);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    cr_assert_eq(ipc_encode_stats(&sb, 2, &s, false), SPEC_OK);
    size_t off = 0;
    struct decoded d;
    msgpack_object m = next_msg(&sb, &off, &d);
    const msgpack_object *res = &m.via.array.ptr[3];
    cr_assert_eq(get(res, "requests_total")->via.u64, 5);
    cr_assert_eq(get(res, "active")->via.u64, 2);
    const msgpack_object *h = get(res, "request_seconds");
    const msgpack_object *b = get(h, "buckets");
    cr_assert_eq(b->via.array.size, IPC_HIST_BUCKETS);
    cr_assert_float_eq(b->via.array.ptr[0].via.array.ptr[0].via.f64, 0.001, 1e-12);
    cr_assert_eq(b->via.array.ptr[0].via.array.ptr[1].via.u64, 2);
    cr_assert_eq(b->via.array.ptr[6].via.array.ptr[1].via.u64, 2, "0.1: 0.2 not yet counted");
    cr_assert_eq(b->via.array.ptr[7].via.array.ptr[1].via.u64, 3, "0.25 includes 0.2");
    cr_assert_eq(b->via.array.ptr[IPC_HIST_BUCKETS - 2].via.array.ptr[1].via.u64, 3);
    cr_assert(isinf(b->via.array.ptr[IPC_HIST_BUCKETS - 1].via.array.ptr[0].via.f64));
    cr_assert_eq(b->via.array.ptr[IPC_HIST_BUCKETS - 1].via.array.ptr[1].via.u64, 4);
    cr_assert_eq(get(h, "count")->via.u64, 4);
    get(res, "queue_seconds");
    get(res, "first_token_seconds");
    msgpack_zone_destroy(&d.zone);

    char *text;
    size_t len;
    cr_assert_eq(ipc_stats_prometheus(&s, &text, &len), SPEC_OK);
    cr_assert_eq(strlen(text), len);
    cr_assert(strstr(text, "# TYPE specd_requests_total counter\nspecd_requests_total 5\n"), "%s", text);
    cr_assert(strstr(text, "# TYPE specd_active gauge\nspecd_active 2\n"));
    cr_assert(strstr(text, "specd_request_seconds_bucket{le=\"0.001\"} 2\n"));
    cr_assert(strstr(text, "specd_request_seconds_bucket{le=\"0.25\"} 3\n"));
    cr_assert(strstr(text, "specd_request_seconds_bucket{le=\"+Inf\"} 4\n"));
    cr_assert(strstr(text, "specd_request_seconds_count 4\n"));
    cr_assert(strstr(text, "# TYPE specd_queue_seconds histogram\n"));
    /* Every line is a comment or "specd_<name>[{labels}] <value>". */
    for (const char *line = text; *line; line = strchr(line, '\n') + 1)
        cr_assert(line[0] == '#' || !strncmp(line, "specd_", 6), "line: %.40s", line);
    free(text);

    cr_assert_eq(ipc_encode_stats(&sb, 3, &s, true), SPEC_OK);
    m = next_msg(&sb, &off, &d);
    const msgpack_object *pt = get(&m.via.array.ptr[3], "text");
    cr_assert(memmem(pt->via.str.ptr, pt->via.str.size, "specd_tokens_generated", 22));
    msgpack_zone_destroy(&d.zone);
    msgpack_sbuffer_destroy(&sb);
}

Test(encode, small_results)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    const int32_t t[] = {1, 2, 3};
    cr_assert_eq(ipc_encode_cancelled(&sb, 1), SPEC_OK);
    cr_assert_eq(ipc_encode_tokens(&sb, 2, t, 3), SPEC_OK);
    cr_assert_eq(ipc_encode_text(&sb, 3, "x\0y", 3), SPEC_OK);
    cr_assert_eq(ipc_encode_health(&sb, 4, true, 1, 2, 0.5), SPEC_OK);
    size_t off = 0;
    struct decoded d[4];
    msgpack_object m = next_msg(&sb, &off, &d[0]);
    cr_assert(get(&m.via.array.ptr[3], "cancelled")->via.boolean);
    m = next_msg(&sb, &off, &d[1]);
    cr_assert_eq(get(&m.via.array.ptr[3], "tokens")->via.array.ptr[2].via.u64, 3);
    m = next_msg(&sb, &off, &d[2]);
    cr_assert_eq(get(&m.via.array.ptr[3], "text")->via.str.size, 3);
    m = next_msg(&sb, &off, &d[3]);
    assert_str(get(&m.via.array.ptr[3], "status"), "draining");
    cr_assert_eq(get(&m.via.array.ptr[3], "queued")->via.u64, 2);
    cr_assert_eq(off, sb.size);
    for (int i = 0; i < 4; i++)
        msgpack_zone_destroy(&d[i].zone);
    msgpack_sbuffer_destroy(&sb);
}
