/* GGUF writer -> reader round trips, getters, writer rules, and the real model file. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "model/gguf.h"

/* A file image and its parse; the image must outlive the parse. */
struct parsed {
    void *buf;
    size_t size;
    struct gguf *g;
};

static struct parsed parse_writer(const struct gguf_writer *w)
{
    struct parsed p = {0};
    cr_assert_eq(gguf_writer_write_memory(w, &p.buf, &p.size), 0);
    int rc = gguf_open_memory(p.buf, p.size, &p.g);
    cr_assert_eq(rc, 0, "reading back what the writer wrote failed: %s", spec_errname(rc));
    return p;
}

static void parsed_free(struct parsed *p)
{
    gguf_close(p->g);
    free(p->buf);
}

static struct gguf_writer *new_writer(uint32_t version)
{
    struct gguf_writer *w = NULL;
    cr_assert_eq(gguf_writer_new(version, &w), 0);
    return w;
}

static bool value_eq(const struct gguf_value *a, const struct gguf_value *b);

static bool str_same(struct gguf_str a, struct gguf_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static bool array_eq(const struct gguf_array *a, const struct gguf_array *b)
{
    if (a->type != b->type || a->n != b->n)
        return false;
    for (uint64_t i = 0; i < a->n; i++) {
        if (a->type == GGUF_TYPE_STRING && !str_same(a->strs[i], b->strs[i]))
            return false;
        if (a->type == GGUF_TYPE_ARRAY && !value_eq(&a->items[i], &b->items[i]))
            return false;
    }
    size_t sz = gguf_type_size(a->type);
    return sz == 0 || a->n == 0 || memcmp(a->raw, b->raw, a->n * sz) == 0;
}

/* Deep equality; floats compare by bit pattern so NaN payloads count. */
static bool value_eq(const struct gguf_value *a, const struct gguf_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case GGUF_TYPE_STRING: return str_same(a->v.str, b->v.str);
    case GGUF_TYPE_ARRAY: return array_eq(&a->v.arr, &b->v.arr);
    case GGUF_TYPE_BOOL: return a->v.b == b->v.b;
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64: return memcmp(&a->v.f64, &b->v.f64, sizeof(double)) == 0;
    default: return a->v.u64 == b->v.u64;
    }
}

static struct gguf_value scalar_u(enum gguf_type t, uint64_t u)
{
    return (struct gguf_value){.type = t, .v.u64 = u};
}

static struct gguf_value scalar_i(enum gguf_type t, int64_t i)
{
    return (struct gguf_value){.type = t, .v.i64 = i};
}

static struct gguf_value scalar_f(enum gguf_type t, double f)
{
    return (struct gguf_value){.type = t, .v.f64 = f};
}

static struct gguf_value str_value(const char *p, size_t n)
{
    return (struct gguf_value){.type = GGUF_TYPE_STRING, .v.str = {n, p}};
}

static struct gguf_value arr_value(enum gguf_type t, const void *raw, uint64_t n)
{
    return (struct gguf_value){.type = GGUF_TYPE_ARRAY, .v.arr = {.type = t, .n = n, .raw = raw}};
}

/* Writes each (key, value) into a fresh writer of `version`, reads the file back and checks every
 * value is deep-equal and in the same order. */
static void check_metadata_round_trip(uint32_t version, const char *const *keys, const struct gguf_value *vals,
                                      size_t n)
{
    struct gguf_writer *w = new_writer(version);
    for (size_t i = 0; i < n; i++) {
        int rc = gguf_writer_set(w, keys[i], &vals[i]);
        cr_assert_eq(rc, 0, "set %s: %s", keys[i], spec_errname(rc));
    }
    struct parsed p = parse_writer(w);
    cr_assert_eq(gguf_version(p.g), version);
    cr_assert_eq(gguf_kv_count(p.g), n);
    for (size_t i = 0; i < n; i++) {
        const struct gguf_kv *kv = gguf_kv_at(p.g, i);
        cr_assert(gguf_str_eq(kv->key, keys[i]), "key %zu out of order", i);
        cr_assert(value_eq(&kv->value, &vals[i]), "value of %s changed (type %s)", keys[i],
                  gguf_type_name(vals[i].type));
        cr_assert_eq(gguf_find(p.g, keys[i]), &kv->value);
    }
    parsed_free(&p);
    gguf_writer_free(w);
}

static const char utf8_with_nul[] = "caf\xc3\xa9 \xe2\x82\xac\0tail\xf0\x9f\x98\x80";

Test(gguf, every_scalar_type_round_trips_in_v2_and_v3)
{
    static const char *const keys[] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f32.nan", "f64", "f64.tiny",
        "bool.t", "bool.f", "str", "str.empty", "str.nul_utf8",
    };
    const struct gguf_value vals[] = {
        scalar_u(GGUF_TYPE_UINT8, 255),
        scalar_i(GGUF_TYPE_INT8, -128),
        scalar_u(GGUF_TYPE_UINT16, 65535),
        scalar_i(GGUF_TYPE_INT16, -32768),
        scalar_u(GGUF_TYPE_UINT32, 4294967295u),
        scalar_i(GGUF_TYPE_INT32, INT32_MIN),
        scalar_u(GGUF_TYPE_UINT64, UINT64_MAX),
        scalar_i(GGUF_TYPE_INT64, INT64_MIN),
        scalar_f(GGUF_TYPE_FLOAT32, -1.5e-3f),
        scalar_f(GGUF_TYPE_FLOAT32, (float)NAN),
        scalar_f(GGUF_TYPE_FLOAT64, 1.0 / 3.0),
        scalar_f(GGUF_TYPE_FLOAT64, 4.9e-324),
        {.type = GGUF_TYPE_BOOL, .v.b = true},
        {.type = GGUF_TYPE_BOOL, .v.b = false},
        str_value("llama", 5),
        str_value("", 0),
        str_value(utf8_with_nul, sizeof utf8_with_nul - 1),
    };
    _Static_assert(sizeof keys / sizeof keys[0] == sizeof vals / sizeof vals[0], "one value per key");
    check_metadata_round_trip(2, keys, vals, sizeof vals / sizeof vals[0]);
    check_metadata_round_trip(3, keys, vals, sizeof vals / sizeof vals[0]);
}

Test(gguf, arrays_of_every_element_type_round_trip_including_empty_ones)
{
    static const uint8_t u8[] = {0, 1, 255};
    static const int8_t i8[] = {-128, 0, 127};
    static const uint16_t u16[] = {0, 65535, 258};
    static const int16_t i16[] = {-32768, 32767, -1};
    static const uint32_t u32[] = {0, 4294967295u, 16909060};
    static const int32_t i32[] = {INT32_MIN, INT32_MAX, -7};
    static const uint64_t u64[] = {UINT64_MAX, 0, 1ull << 40};
    static const int64_t i64[] = {INT64_MIN, INT64_MAX, -1};
    static const float f32[] = {-0.0f, 3.25f, INFINITY};
    static const double f64[] = {-1e300, 2.5, 0.1};
    static const bool bools[] = {true, false, true};
    static const struct gguf_str strs[] = {{5, "hello"}, {0, ""}, {sizeof utf8_with_nul - 1, utf8_with_nul}};
    static const char *const keys[] = {
        "a.u8", "a.i8", "a.u16", "a.i16", "a.u32", "a.i32", "a.u64", "a.i64", "a.f32", "a.f64", "a.bool",
        "a.str", "e.u8", "e.f64", "e.bool", "e.str", "e.arr",
    };
    struct gguf_value vals[] = {
        arr_value(GGUF_TYPE_UINT8, u8, 3),
        arr_value(GGUF_TYPE_INT8, i8, 3),
        arr_value(GGUF_TYPE_UINT16, u16, 3),
        arr_value(GGUF_TYPE_INT16, i16, 3),
        arr_value(GGUF_TYPE_UINT32, u32, 3),
        arr_value(GGUF_TYPE_INT32, i32, 3),
        arr_value(GGUF_TYPE_UINT64, u64, 3),
        arr_value(GGUF_TYPE_INT64, i64, 3),
        arr_value(GGUF_TYPE_FLOAT32, f32, 3),
        arr_value(GGUF_TYPE_FLOAT64, f64, 3),
        arr_value(GGUF_TYPE_BOOL, bools, 3),
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_STRING, .n = 3, .strs = strs}},
        arr_value(GGUF_TYPE_UINT8, NULL, 0),
        arr_value(GGUF_TYPE_FLOAT64, NULL, 0),
        arr_value(GGUF_TYPE_BOOL, NULL, 0),
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_STRING, .n = 0}},
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 0}},
    };
    _Static_assert(sizeof keys / sizeof keys[0] == sizeof vals / sizeof vals[0], "one value per key");
    check_metadata_round_trip(2, keys, vals, sizeof vals / sizeof vals[0]);
    check_metadata_round_trip(3, keys, vals, sizeof vals / sizeof vals[0]);
}

Test(gguf, nested_arrays_of_strings_and_arrays_round_trip)
{
    static const struct gguf_str s1[] = {{1, "a"}, {3, "b\0c"}};
    static const struct gguf_str s2[] = {{0, ""}};
    static const int32_t ints[] = {1, -2, 3};
    static const float floats[] = {0.5f};
    /* [[["a","b\0c"],[""]], [[1,-2,3],[0.5]], []] : inner arrays of different element types */
    const struct gguf_value strs_pair[] = {
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_STRING, .n = 2, .strs = s1}},
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_STRING, .n = 1, .strs = s2}},
    };
    const struct gguf_value nums_pair[] = {
        arr_value(GGUF_TYPE_INT32, ints, 3),
        arr_value(GGUF_TYPE_FLOAT32, floats, 1),
    };
    const struct gguf_value outer[] = {
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 2, .items = strs_pair}},
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 2, .items = nums_pair}},
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 0}},
    };
    static const char *const keys[] = {"nested.strings", "nested.deep"};
    const struct gguf_value vals[] = {
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 2, .items = strs_pair}},
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 3, .items = outer}},
    };
    check_metadata_round_trip(2, keys, vals, 2);
    check_metadata_round_trip(3, keys, vals, 2);
}

/* Builds a value nested `depth` arrays deep around one u8 array; items[] supplies the storage. */
static struct gguf_value nest(struct gguf_value *items, int depth)
{
    static const uint8_t leaf[] = {7};
    items[0] = arr_value(GGUF_TYPE_UINT8, leaf, 1);
    for (int d = 1; d < depth; d++)
        items[d] = (struct gguf_value){.type = GGUF_TYPE_ARRAY,
                                       .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 1, .items = &items[d - 1]}};
    return items[depth - 1];
}

Test(gguf, nesting_up_to_the_depth_limit_round_trips_and_deeper_is_refused)
{
    struct gguf_value items[GGUF_MAX_ARRAY_DEPTH + 1];
    struct gguf_value at_limit = nest(items, GGUF_MAX_ARRAY_DEPTH);
    static const char *const keys[] = {"deep"};
    check_metadata_round_trip(3, keys, &at_limit, 1);

    struct gguf_writer *w = new_writer(3);
    struct gguf_value too_deep = nest(items, GGUF_MAX_ARRAY_DEPTH + 1);
    cr_assert_eq(gguf_writer_set(w, "deep", &too_deep), SPEC_E_RANGE);
    gguf_writer_free(w);
}

/* Copies every key and tensor of a parsed file into a new writer and checks the output is the same
 * bytes: the writer lays files out exactly as the reader (and llama.cpp) expect. */
static void check_rewrites_identically(const struct parsed *p)
{
    struct gguf_writer *copy = new_writer(gguf_version(p->g));
    for (uint64_t i = 0; i < gguf_kv_count(p->g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(p->g, i);
        char *key = gguf_str_dup(kv->key);
        cr_assert_eq(gguf_writer_set(copy, key, &kv->value), 0, "copying %s", key);
        free(key);
    }
    for (uint64_t i = 0; i < gguf_tensor_count(p->g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(p->g, i);
        char *name = gguf_str_dup(t->name);
        cr_assert_eq(gguf_writer_add_tensor(copy, name, t->type, t->n_dims, t->ne, t->data, t->n_bytes), 0);
        free(name);
    }
    void *again;
    size_t again_size;
    cr_assert_eq(gguf_writer_write_memory(copy, &again, &again_size), 0);
    cr_assert_eq(again_size, p->size);
    size_t d = 0;
    while (d < p->size && ((uint8_t *)again)[d] == ((uint8_t *)p->buf)[d])
        d++;
    cr_assert_eq(d, p->size, "rewritten file differs at byte %zu of %zu", d, p->size);
    free(again);
    gguf_writer_free(copy);
}

Test(gguf, reader_output_written_back_gives_identical_bytes)
{
    static const struct gguf_str toks[] = {{3, "<s>"}, {4, "\xe2\x96\x81" "a"}, {1, "\0"}};
    static const float scores[] = {0.0f, -1.25f, -2.5f};
    static const int32_t types[] = {3, 1, 6};
    static const uint8_t data[64] = {1, 2, 3};
    const uint64_t ne[2] = {8, 2};
    struct gguf_writer *w = new_writer(3);
    cr_assert_eq(gguf_writer_set_alignment(w, 64), 0);
    cr_assert_eq(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    struct gguf_value tv = {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_STRING, .n = 3, .strs = toks}};
    cr_assert_eq(gguf_writer_set(w, "tokenizer.ggml.tokens", &tv), 0);
    cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 3), 0);
    cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 3), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "a", SPEC_F32, 2, ne, data, 64), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "b", SPEC_F16, 1, ne, data, 16), 0);
    struct parsed p = parse_writer(w);

    check_rewrites_identically(&p);
    parsed_free(&p);
    gguf_writer_free(w);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Adds one tensor of every type the kernels know, with 1..4 dims, and checks each reads back with
 * the same shape, size and bytes, at an aligned offset inside the data section. */
static void check_every_tensor_type(uint32_t alignment)
{
    struct gguf_writer *w = new_writer(3);
    cr_assert_eq(gguf_writer_set_alignment(w, alignment), 0);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    struct expect {
        char name[32];
        uint32_t type, n_dims;
        uint64_t ne[4], n_elems, n_bytes;
        uint8_t *data;
    } ex[SPEC_DTYPE_COUNT];
    int n = 0;
    for (uint32_t type = 0; type < SPEC_DTYPE_COUNT + 8; type++) {
        const struct kern_dtype_info *info = kern_dtype_info(type);
        if (!info)
            continue;
        cr_assert_lt(n, SPEC_DTYPE_COUNT);
        struct expect *e = &ex[n];
        snprintf(e->name, sizeof e->name, "t.%s", info->name);
        e->type = type;
        e->n_dims = 1 + (uint32_t)(n % 4);
        const uint64_t dims[4] = {2 * (uint64_t)info->block_size, 3, 2, 5};
        e->n_elems = 1;
        for (uint32_t d = 0; d < 4; d++) {
            e->ne[d] = d < e->n_dims ? dims[d] : 1;
            e->n_elems *= e->ne[d];
        }
        e->n_bytes = e->n_elems / info->block_size * info->type_size;
        e->data = malloc(e->n_bytes);
        for (uint64_t i = 0; i < e->n_bytes; i++)
            e->data[i] = (uint8_t)rng_next(&seed);
        int rc = gguf_writer_add_tensor(w, e->name, type, e->n_dims, e->ne, e->data, e->n_bytes);
        cr_assert_eq(rc, 0, "add %s: %s", e->name, spec_errname(rc));
        n++;
    }
    cr_assert_geq(n, 30, "only %d types have kern_dtype_info", n);

    struct parsed p = parse_writer(w);
    cr_assert_eq(gguf_alignment(p.g), alignment);
    cr_assert_eq(gguf_data_offset(p.g) % alignment, 0);
    cr_assert_eq(gguf_tensor_count(p.g), (uint64_t)n);
    for (int i = 0; i < n; i++) {
        const struct expect *e = &ex[i];
        const struct gguf_tensor *t = gguf_find_tensor(p.g, e->name);
        cr_assert_not_null(t, "%s missing", e->name);
        cr_assert_eq(t, gguf_tensor_at(p.g, (uint64_t)i), "%s out of order", e->name);
        cr_assert_eq(t->type, e->type);
        cr_assert_eq(t->n_dims, e->n_dims);
        cr_assert_arr_eq(t->ne, e->ne, sizeof e->ne);
        cr_assert_eq(t->n_elems, e->n_elems);
        cr_assert_eq(t->n_bytes, e->n_bytes, "%s: %lu bytes, expected %lu", e->name, (unsigned long)t->n_bytes,
                     (unsigned long)e->n_bytes);
        cr_assert_eq(t->offset % alignment, 0, "%s offset %lu", e->name, (unsigned long)t->offset);
        cr_assert_eq((const uint8_t *)t->data, (const uint8_t *)p.buf + gguf_data_offset(p.g) + t->offset);
        cr_assert(memcmp(t->data, e->data, e->n_bytes) == 0, "%s data differs", e->name);
        free(ex[i].data);
    }
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, tensors_of_every_known_type_round_trip_byte_for_byte)
{
    check_every_tensor_type(GGUF_DEFAULT_ALIGNMENT);
}

Test(gguf, non_default_alignment_is_written_as_u32_and_aligns_offsets)
{
    check_every_tensor_type(128);
    check_every_tensor_type(1);

    struct gguf_writer *w = new_writer(2);
    cr_assert_eq(gguf_writer_set_alignment(w, 256), 0);
    struct parsed p = parse_writer(w);
    const struct gguf_value *a = gguf_find(p.g, "general.alignment");
    cr_assert_not_null(a);
    cr_assert_eq(a->type, GGUF_TYPE_UINT32);
    cr_assert_eq(a->v.u64, 256);
    cr_assert_eq(gguf_data_offset(p.g) % 256, 0);
    parsed_free(&p);

    /* Back to the default: the key disappears rather than being written redundantly. */
    cr_assert_eq(gguf_writer_set_alignment(w, GGUF_DEFAULT_ALIGNMENT), 0);
    p = parse_writer(w);
    cr_assert_null(gguf_find(p.g, "general.alignment"));
    cr_assert_eq(gguf_alignment(p.g), GGUF_DEFAULT_ALIGNMENT);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, tensor_data_is_laid_out_in_insertion_order_and_zero_padded)
{
    static const uint8_t d1[6] = {1, 2, 3, 4, 5, 6}, d2[4] = {9, 9, 9, 9};
    const uint64_t ne1[1] = {3}, ne2[1] = {1};
    struct gguf_writer *w = new_writer(3);
    cr_assert_eq(gguf_writer_add_tensor(w, "second_name_first", SPEC_F16, 1, ne1, d1, 6), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "a", SPEC_F32, 1, ne2, d2, 4), 0);
    struct parsed p = parse_writer(w);
    const struct gguf_tensor *t0 = gguf_tensor_at(p.g, 0), *t1 = gguf_tensor_at(p.g, 1);
    cr_assert_eq(t0->offset, 0);
    cr_assert_eq(t1->offset, GGUF_DEFAULT_ALIGNMENT);
    const uint8_t *pad = (const uint8_t *)t0->data + 6;
    for (int i = 0; i < GGUF_DEFAULT_ALIGNMENT - 6; i++)
        cr_assert_eq(pad[i], 0);
    /* The last tensor is padded too, as llama.cpp reads whole padded sizes. */
    cr_assert_eq(p.size, gguf_data_offset(p.g) + 2 * GGUF_DEFAULT_ALIGNMENT);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, empty_tensor_with_a_zero_dimension_is_accepted)
{
    const uint64_t ne[2] = {32, 0};
    struct gguf_writer *w = new_writer(3);
    cr_assert_eq(gguf_writer_add_tensor(w, "empty", SPEC_Q8_0, 2, ne, NULL, 0), 0);
    struct parsed p = parse_writer(w);
    const struct gguf_tensor *t = gguf_find_tensor(p.g, "empty");
    cr_assert_not_null(t);
    cr_assert_eq(t->n_elems, 0);
    cr_assert_eq(t->n_bytes, 0);
    cr_assert_eq(t->ne[1], 0);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, finds_each_of_many_tensors_by_exact_name)
{
    enum { N = 600 };
    static const uint8_t data[4];
    const uint64_t ne[1] = {1};
    struct gguf_writer *w = new_writer(3);
    char name[64];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", i);
        cr_assert_eq(gguf_writer_add_tensor(w, name, SPEC_F32, 1, ne, data, 4), 0);
    }
    struct parsed p = parse_writer(w);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", i);
        const struct gguf_tensor *t = gguf_find_tensor(p.g, name);
        cr_assert_eq(t, gguf_tensor_at(p.g, (uint64_t)i), "%s found at the wrong place", name);
    }
    cr_assert_null(gguf_find_tensor(p.g, "blk.1.attn_q"));
    cr_assert_null(gguf_find_tensor(p.g, "blk.1.attn_q.weightx"));
    cr_assert_null(gguf_find_tensor(p.g, ""));
    cr_assert_null(gguf_find(p.g, "blk.0.attn_q.weight"));
    cr_assert_null(gguf_tensor_at(p.g, N));
    parsed_free(&p);
    gguf_writer_free(w);
}

/* A file with one key of each kind the getters deal with. */
static struct parsed getter_file(struct gguf_writer **w)
{
    *w = new_writer(3);
    cr_assert_eq(gguf_writer_set(*w, "u8", &(struct gguf_value){.type = GGUF_TYPE_UINT8, .v.u64 = 200}), 0);
    cr_assert_eq(gguf_writer_set(*w, "i64.pos", &(struct gguf_value){.type = GGUF_TYPE_INT64, .v.i64 = 70000}), 0);
    cr_assert_eq(gguf_writer_set(*w, "i8.neg", &(struct gguf_value){.type = GGUF_TYPE_INT8, .v.i64 = -5}), 0);
    cr_assert_eq(gguf_writer_set_u64(*w, "u64.big", 1ull << 40), 0);
    cr_assert_eq(gguf_writer_set_u32(*w, "u32.max", UINT32_MAX), 0);
    cr_assert_eq(gguf_writer_set_i32(*w, "i32", -123456), 0);
    cr_assert_eq(gguf_writer_set_f32(*w, "f32", 1e-5f), 0);
    cr_assert_eq(gguf_writer_set(*w, "f64", &(struct gguf_value){.type = GGUF_TYPE_FLOAT64, .v.f64 = 10000.0}), 0);
    cr_assert_eq(gguf_writer_set(*w, "f64.huge", &(struct gguf_value){.type = GGUF_TYPE_FLOAT64, .v.f64 = 1e300}),
                 0);
    cr_assert_eq(gguf_writer_set_bool(*w, "bool", true), 0);
    cr_assert_eq(gguf_writer_set_str(*w, "str", "gpt2"), 0);
    static const char *const strs[] = {"x", "", "zz"};
    cr_assert_eq(gguf_writer_set_str_arr(*w, "arr.str", strs, 3), 0);
    static const uint16_t u16s[] = {1, 65535};
    cr_assert_eq(gguf_writer_set_arr(*w, "arr.u16", GGUF_TYPE_UINT16, u16s, 2), 0);
    static const uint64_t u64s[] = {5, UINT64_MAX};
    cr_assert_eq(gguf_writer_set_arr(*w, "arr.u64", GGUF_TYPE_UINT64, u64s, 2), 0);
    static const int8_t i8s[] = {-3};
    cr_assert_eq(gguf_writer_set_arr(*w, "arr.i8", GGUF_TYPE_INT8, i8s, 1), 0);
    static const double f64s[] = {0.25, 1e300};
    cr_assert_eq(gguf_writer_set_arr(*w, "arr.f64", GGUF_TYPE_FLOAT64, f64s, 2), 0);
    static const bool bools[] = {true};
    cr_assert_eq(gguf_writer_set_arr(*w, "arr.bool", GGUF_TYPE_BOOL, bools, 1), 0);
    return parse_writer(*w);
}

Test(gguf, integer_getters_accept_any_integer_type_whose_value_fits)
{
    struct gguf_writer *w;
    struct parsed p = getter_file(&w);
    uint32_t u32 = 0;
    uint64_t u64 = 0;
    int32_t i32 = 0;
    cr_assert_eq(gguf_get_u32(p.g, "u8", &u32), 0);
    cr_assert_eq(u32, 200);
    cr_assert_eq(gguf_get_u32(p.g, "i64.pos", &u32), 0);
    cr_assert_eq(u32, 70000);
    cr_assert_eq(gguf_get_u32(p.g, "u32.max", &u32), 0);
    cr_assert_eq(u32, UINT32_MAX);
    cr_assert_eq(gguf_get_i32(p.g, "i8.neg", &i32), 0);
    cr_assert_eq(i32, -5);
    cr_assert_eq(gguf_get_i32(p.g, "i32", &i32), 0);
    cr_assert_eq(i32, -123456);
    cr_assert_eq(gguf_get_u64(p.g, "u64.big", &u64), 0);
    cr_assert_eq(u64, 1ull << 40);

    u32 = 42;
    cr_assert_eq(gguf_get_u32(p.g, "u64.big", &u32), SPEC_E_RANGE);
    cr_assert_eq(gguf_get_u32(p.g, "i8.neg", &u32), SPEC_E_RANGE);
    cr_assert_eq(gguf_get_u64(p.g, "i8.neg", &u64), SPEC_E_RANGE);
    cr_assert_eq(gguf_get_i32(p.g, "u32.max", &i32), SPEC_E_RANGE);
    cr_assert_eq(u32, 42, "out-param written on failure");
    cr_assert_eq(gguf_get_u32(p.g, "bool", &u32), SPEC_E_TYPE, "bool is not an integer");
    cr_assert_eq(gguf_get_u32(p.g, "f32", &u32), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_i32(p.g, "str", &i32), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_u32(p.g, "missing", &u32), SPEC_E_NOT_FOUND);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, float_bool_string_and_array_getters_check_the_stored_type)
{
    struct gguf_writer *w;
    struct parsed p = getter_file(&w);
    float f = 0;
    bool b = false;
    struct gguf_str s;
    const struct gguf_array *a;
    cr_assert_eq(gguf_get_f32(p.g, "f32", &f), 0);
    cr_assert_eq(f, 1e-5f);
    cr_assert_eq(gguf_get_f32(p.g, "f64", &f), 0);
    cr_assert_eq(f, 10000.0f);
    cr_assert_eq(gguf_get_f32(p.g, "f64.huge", &f), SPEC_E_RANGE);
    cr_assert_eq(gguf_get_f32(p.g, "u8", &f), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_bool(p.g, "bool", &b), 0);
    cr_assert(b);
    cr_assert_eq(gguf_get_bool(p.g, "u8", &b), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_str(p.g, "str", &s), 0);
    cr_assert(gguf_str_eq(s, "gpt2"));
    cr_assert_eq(gguf_get_str(p.g, "arr.str", &s), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_str(p.g, "nope", &s), SPEC_E_NOT_FOUND);
    cr_assert_eq(gguf_get_arr(p.g, "arr.str", GGUF_TYPE_STRING, &a), 0);
    cr_assert_eq(a->n, 3);
    cr_assert(gguf_str_eq(a->strs[0], "x") && gguf_str_eq(a->strs[1], "") && gguf_str_eq(a->strs[2], "zz"));
    cr_assert_eq(gguf_get_arr(p.g, "arr.str", GGUF_TYPE_INT32, &a), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_arr(p.g, "arr.u16", GGUF_TYPE_COUNT, &a), 0);
    cr_assert_eq(a->type, GGUF_TYPE_UINT16);
    cr_assert_eq(gguf_get_arr(p.g, "str", GGUF_TYPE_COUNT, &a), SPEC_E_TYPE);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, array_element_getters_widen_numbers_and_check_bounds)
{
    struct gguf_writer *w;
    struct parsed p = getter_file(&w);
    const struct gguf_array *a;
    int64_t i = 0;
    float f = 0;
    cr_assert_eq(gguf_get_arr(p.g, "arr.u16", GGUF_TYPE_COUNT, &a), 0);
    cr_assert_eq(gguf_arr_get_i64(a, 1, &i), 0);
    cr_assert_eq(i, 65535);
    cr_assert_eq(gguf_arr_get_f32(a, 0, &f), 0);
    cr_assert_eq(f, 1.0f);
    cr_assert_eq(gguf_arr_get_i64(a, 2, &i), SPEC_E_RANGE, "index past the end");
    cr_assert_eq(gguf_get_arr(p.g, "arr.i8", GGUF_TYPE_COUNT, &a), 0);
    cr_assert_eq(gguf_arr_get_i64(a, 0, &i), 0);
    cr_assert_eq(i, -3);
    cr_assert_eq(gguf_get_arr(p.g, "arr.u64", GGUF_TYPE_COUNT, &a), 0);
    cr_assert_eq(gguf_arr_get_i64(a, 0, &i), 0);
    cr_assert_eq(i, 5);
    cr_assert_eq(gguf_arr_get_i64(a, 1, &i), SPEC_E_RANGE);
    cr_assert_eq(gguf_get_arr(p.g, "arr.f64", GGUF_TYPE_COUNT, &a), 0);
    cr_assert_eq(gguf_arr_get_f32(a, 0, &f), 0);
    cr_assert_eq(f, 0.25f);
    cr_assert_eq(gguf_arr_get_f32(a, 1, &f), SPEC_E_RANGE);
    cr_assert_eq(gguf_arr_get_i64(a, 0, &i), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_arr(p.g, "arr.str", GGUF_TYPE_COUNT, &a), 0);
    cr_assert_eq(gguf_arr_get_f32(a, 0, &f), SPEC_E_TYPE);
    cr_assert_eq(gguf_get_arr(p.g, "arr.bool", GGUF_TYPE_COUNT, &a), 0);
    cr_assert_eq(gguf_arr_get_i64(a, 0, &i), SPEC_E_TYPE);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, setting_an_existing_key_replaces_it_in_place)
{
    struct gguf_writer *w = new_writer(3);
    cr_assert_eq(gguf_writer_set_str(w, "a", "first"), 0);
    cr_assert_eq(gguf_writer_set_u32(w, "b", 1), 0);
    cr_assert_eq(gguf_writer_set_f32(w, "a", 2.0f), 0);
    struct parsed p = parse_writer(w);
    cr_assert_eq(gguf_kv_count(p.g), 2);
    const struct gguf_kv *kv = gguf_kv_at(p.g, 0);
    cr_assert(gguf_str_eq(kv->key, "a"));
    cr_assert_eq(kv->value.type, GGUF_TYPE_FLOAT32);
    cr_assert_eq(kv->value.v.f64, 2.0);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, writer_refuses_what_the_reader_would_reject)
{
    struct gguf_writer *w = NULL;
    cr_assert_eq(gguf_writer_new(1, &w), SPEC_E_VERSION);
    cr_assert_eq(gguf_writer_new(4, &w), SPEC_E_VERSION);
    cr_assert_null(w);
    w = new_writer(3);
    const uint64_t ne[2] = {32, 2}, ne_bad[1] = {16};
    static const uint8_t data[256];
    char long_name[GGUF_MAX_NAME_LEN + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';

    cr_assert_eq(gguf_writer_add_tensor(w, long_name, SPEC_F32, 1, ne, data, 128), SPEC_E_RANGE);
    long_name[GGUF_MAX_NAME_LEN] = '\0';
    cr_assert_eq(gguf_writer_add_tensor(w, long_name, SPEC_F32, 1, ne, data, 128), 0, "63 bytes is allowed");
    cr_assert_eq(gguf_writer_add_tensor(w, "t", SPEC_F32, 2, ne, data, 255), SPEC_E_INVALID_ARG);
    cr_assert_eq(gguf_writer_add_tensor(w, "t", SPEC_F32, 0, ne, data, 0), SPEC_E_RANGE);
    cr_assert_eq(gguf_writer_add_tensor(w, "t", SPEC_F32, 5, ne, data, 0), SPEC_E_RANGE);
    cr_assert_eq(gguf_writer_add_tensor(w, "t", SPEC_Q4_0, 1, ne_bad, data, 9), SPEC_E_RANGE);
    cr_assert_eq(gguf_writer_add_tensor(w, "t", (enum spec_dtype)4, 1, ne, data, 128), SPEC_E_UNSUPPORTED);
    cr_assert_eq(gguf_writer_add_tensor(w, "t", SPEC_Q8_0, 2, ne, data, 68), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "t", SPEC_Q8_0, 2, ne, data, 68), SPEC_E_DUPLICATE);

    cr_assert_eq(gguf_writer_set_alignment(w, 0), SPEC_E_ALIGNMENT);
    cr_assert_eq(gguf_writer_set_alignment(w, 48), SPEC_E_ALIGNMENT);
    cr_assert_eq(gguf_writer_set_u64(w, "general.alignment", 64), SPEC_E_TYPE);
    cr_assert_eq(gguf_writer_set_u32(w, "general.alignment", 3), SPEC_E_ALIGNMENT);
    cr_assert_eq(gguf_writer_set(w, "u8", &(struct gguf_value){.type = GGUF_TYPE_UINT8, .v.u64 = 256}),
                 SPEC_E_INVALID_ARG);
    cr_assert_eq(gguf_writer_set(w, "x", &(struct gguf_value){.type = GGUF_TYPE_COUNT}), SPEC_E_INVALID_ARG);
    static const uint8_t not_bool[] = {0, 2};
    cr_assert_eq(gguf_writer_set_arr(w, "b", GGUF_TYPE_BOOL, not_bool, 2), SPEC_E_INVALID_ARG);
    cr_assert_eq(gguf_writer_set_arr(w, "s", GGUF_TYPE_STRING, NULL, 0), SPEC_E_INVALID_ARG);
    cr_assert_eq(gguf_writer_set_arr(w, "n", GGUF_TYPE_UINT32, NULL, 3), SPEC_E_INVALID_ARG);
    char *long_key = malloc(GGUF_MAX_KEY_LEN + 2);
    memset(long_key, 'k', GGUF_MAX_KEY_LEN + 1);
    long_key[GGUF_MAX_KEY_LEN + 1] = '\0';
    cr_assert_eq(gguf_writer_set_u32(w, long_key, 1), SPEC_E_RANGE);
    free(long_key);

    /* None of the refused calls left anything behind. */
    struct parsed p = parse_writer(w);
    cr_assert_eq(gguf_kv_count(p.g), 0);
    cr_assert_eq(gguf_tensor_count(p.g), 2);
    parsed_free(&p);
    gguf_writer_free(w);
}

Test(gguf, file_round_trip_through_mmap)
{
    char path[] = "/tmp/specd_gguf_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    static const float vals[4] = {1, 2, 3, 4};
    const uint64_t ne[2] = {2, 2};
    struct gguf_writer *w = new_writer(3);
    cr_assert_eq(gguf_writer_set_str(w, "general.architecture", "qwen2"), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "w", SPEC_F32, 2, ne, vals, sizeof vals), 0);
    cr_assert_eq(gguf_writer_write_file(w, path), 0);
    gguf_writer_free(w);

    struct gguf *g = NULL;
    cr_assert_eq(gguf_open(path, &g), 0);
    struct gguf_str arch;
    cr_assert_eq(gguf_get_str(g, "general.architecture", &arch), 0);
    cr_assert(gguf_str_eq(arch, "qwen2"));
    const struct gguf_tensor *t = gguf_find_tensor(g, "w");
    cr_assert_not_null(t);
    cr_assert(memcmp(t->data, vals, sizeof vals) == 0);
    gguf_close(g);
    unlink(path);
}

Test(gguf, open_reports_missing_unreadable_and_empty_files)
{
    struct gguf *g = NULL;
    cr_assert_eq(gguf_open("/nonexistent/specd.gguf", &g), SPEC_E_IO);
    cr_assert_eq(gguf_open("/tmp", &g), SPEC_E_IO);
    char path[] = "/tmp/specd_gguf_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(gguf_open(path, &g), SPEC_E_TRUNCATED);
    cr_assert_null(g);
    unlink(path);
}

Test(gguf, string_helpers_compare_and_copy_exact_bytes)
{
    struct gguf_str s = {3, "ab\0cd"};
    cr_assert(!gguf_str_eq(s, "ab"));
    cr_assert(gguf_str_eq((struct gguf_str){2, "abc"}, "ab"));
    cr_assert(gguf_str_eq((struct gguf_str){0, NULL}, ""));
    char *d = gguf_str_dup(s);
    cr_assert_not_null(d);
    cr_assert(memcmp(d, "ab\0", 4) == 0);
    free(d);
    cr_assert_str_eq(gguf_type_name(GGUF_TYPE_FLOAT64), "FLOAT64");
    cr_assert_str_eq(gguf_type_name((enum gguf_type)99), "unknown");
}

/* --------------------------------------------------------------------------------------------- */

/* Path of a real model in $SPECD_MODEL_DIR, or false (and the test is skipped) when absent. */
static bool real_model(const char *file, char *path, size_t size)
{
    const char *dir = getenv("SPECD_MODEL_DIR");
    snprintf(path, size, "%s/%s", dir && *dir ? dir : ".models", file);
    struct stat st;
    if (stat(path, &st) == 0)
        return true;
    cr_skip_test("SKIPPED: %s is missing; run `make models` to fetch it", path);
    return false;
}

Test(gguf, real_smollm2_file_has_the_expected_llama_layout)
{
    char path[4096];
    if (!real_model("smollm2-135m-instruct-q4_1.gguf", path, sizeof path))
        return;
    struct gguf *g = NULL;
    int rc = gguf_open(path, &g);
    cr_assert_eq(rc, 0, "%s: %s", path, spec_errname(rc));
    struct gguf_str arch;
    cr_assert_eq(gguf_get_str(g, "general.architecture", &arch), 0);
    cr_assert(gguf_str_eq(arch, "llama"));
    uint32_t n_layer = 0, n_embd = 0, n_ff = 0, n_head = 0, n_head_kv = 0;
    cr_assert_eq(gguf_get_u32(g, "llama.block_count", &n_layer), 0);
    cr_assert_eq(gguf_get_u32(g, "llama.embedding_length", &n_embd), 0);
    cr_assert_eq(gguf_get_u32(g, "llama.feed_forward_length", &n_ff), 0);
    cr_assert_eq(gguf_get_u32(g, "llama.attention.head_count", &n_head), 0);
    cr_assert_eq(gguf_get_u32(g, "llama.attention.head_count_kv", &n_head_kv), 0);
    cr_assert_eq(n_layer, 30);
    cr_assert_eq(n_embd, 576);
    cr_assert_eq(n_ff, 1536);
    cr_assert_eq(n_head, 9);
    cr_assert_eq(n_head_kv, 3);
    /* 9 tensors per block plus token_embd and output_norm; the output projection is tied. */
    cr_assert_eq(gguf_tensor_count(g), 30 * 9 + 2);

    const struct gguf_array *tokens;
    cr_assert_eq(gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &tokens), 0);
    cr_assert_eq(tokens->n, 49152);

    const struct gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    cr_assert_not_null(emb);
    cr_assert_eq(emb->n_dims, 2);
    cr_assert_eq(emb->ne[0], 576);
    cr_assert_eq(emb->ne[1], 49152);
    cr_assert_eq(emb->type, SPEC_Q8_0);
    const struct gguf_tensor *q = gguf_find_tensor(g, "blk.0.attn_q.weight");
    cr_assert_not_null(q);
    cr_assert_eq(q->type, SPEC_Q4_1);
    cr_assert_eq(q->ne[0], 576);
    cr_assert_eq(q->ne[1], 576);
    const struct gguf_tensor *k = gguf_find_tensor(g, "blk.29.attn_k.weight");
    cr_assert_not_null(k);
    cr_assert_eq(k->ne[0], 576);
    cr_assert_eq(k->ne[1], 192);
    const struct gguf_tensor *down = gguf_find_tensor(g, "blk.7.ffn_down.weight");
    cr_assert_not_null(down);
    cr_assert_eq(down->ne[0], 1536);
    cr_assert_eq(down->ne[1], 576);
    const struct gguf_tensor *norm = gguf_find_tensor(g, "output_norm.weight");
    cr_assert_not_null(norm);
    cr_assert_eq(norm->type, SPEC_F32);
    cr_assert_eq(norm->n_dims, 1);
    cr_assert_eq(norm->ne[0], 576);
    cr_assert_null(gguf_find_tensor(g, "output.weight"));
    gguf_close(g);
}

Test(gguf, real_smollm2_file_rewrites_byte_identical)
{
    char path[4096];
    if (!real_model("smollm2-135m-instruct-q4_1.gguf", path, sizeof path))
        return;
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    struct stat st;
    cr_assert_eq(fstat(fileno(f), &st), 0);
    struct parsed p = {.size = (size_t)st.st_size};
    p.buf = malloc(p.size);
    cr_assert_not_null(p.buf);
    cr_assert_eq(fread(p.buf, 1, p.size, f), p.size);
    fclose(f);
    cr_assert_eq(gguf_open_memory(p.buf, p.size, &p.g), 0);
    check_rewrites_identically(&p);
    parsed_free(&p);
}
