/* Hostile and corrupt GGUF files: each must be refused with its named error, never crash, never
 * read outside the buffer (run under `make SAN=1` too), never allocate what the file cannot back.
 * Every parse goes through parse_copy(), which hands the reader an exact-size heap copy so that
 * AddressSanitizer sees any read past the end, and walks everything an accepted file exposes. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void b_put(struct buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void b_u32(struct buf *b, uint32_t x)
{
    b_put(b, &x, 4);
}

static void b_u64(struct buf *b, uint64_t x)
{
    b_put(b, &x, 8);
}

static void b_u8(struct buf *b, uint8_t x)
{
    b_put(b, &x, 1);
}

static void b_str(struct buf *b, const char *s)
{
    b_u64(b, strlen(s));
    b_put(b, s, strlen(s));
}

static void b_zeros(struct buf *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b_u8(b, 0);
}

static void b_pad(struct buf *b, size_t align)
{
    b_zeros(b, (align - b->n % align) % align);
}

static void b_header(struct buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b_put(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}

struct tinfo {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS + 1];
    uint32_t type;
    uint64_t offset;
};

static void b_tinfo(struct buf *b, const struct tinfo *t)
{
    b_str(b, t->name);
    b_u32(b, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims && d <= GGUF_MAX_DIMS; d++)
        b_u64(b, t->ne[d]);
    b_u32(b, t->type);
    b_u64(b, t->offset);
}

static uint64_t sink;

static void walk_value(const struct gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < v->v.str.len; i++)
            sink += (uint8_t)v->v.str.ptr[i];
        return;
    }
    if (v->type != GGUF_TYPE_ARRAY)
        return;
    const struct gguf_array *a = &v->v.arr;
    for (uint64_t i = 0; i < a->n; i++) {
        float f;
        if (a->type == GGUF_TYPE_STRING)
            walk_value(&(struct gguf_value){.type = GGUF_TYPE_STRING, .v.str = a->strs[i]});
        else if (a->type == GGUF_TYPE_ARRAY)
            walk_value(&a->items[i]);
        else if (a->type == GGUF_TYPE_BOOL)
            sink += ((const uint8_t *)a->raw)[i];
        else if (gguf_arr_get_f32(a, i, &f) == 0)
            sink += (uint64_t)(f == f);
    }
}

/* Everything an accepted file exposes must be readable and consistent. */
static void walk(const struct gguf *g, size_t size)
{
    for (uint64_t i = 0; i < gguf_kv_count(g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        walk_value(&kv->value);
        char *key = gguf_str_dup(kv->key);
        cr_assert_not_null(key);
        if (strlen(key) == kv->key.len)
            cr_assert_eq(gguf_find(g, key), &kv->value, "index lost key %s", key);
        free(key);
    }
    uint32_t align = gguf_alignment(g);
    cr_assert(align && (align & (align - 1)) == 0);
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        cr_assert(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS);
        cr_assert_eq(t->offset % align, 0);
        cr_assert_leq(gguf_data_offset(g) + t->offset + t->n_bytes, size);
        for (uint64_t j = 0; j < t->n_bytes; j++)
            sink += ((const uint8_t *)t->data)[j];
        char *name = gguf_str_dup(t->name);
        cr_assert_not_null(name);
        if (strlen(name) == t->name.len)
            cr_assert_eq(gguf_find_tensor(g, name), t, "index lost tensor %s", name);
        free(name);
    }
}

static int parse_copy(const void *data, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    cr_assert_not_null(copy);
    if (n)
        memcpy(copy, data, n);
    struct gguf *g = NULL;
    int rc = gguf_open_memory(copy, n, &g);
    if (rc == 0) {
        walk(g, n);
        gguf_close(g);
    } else {
        cr_assert_null(g, "out-param set on failure");
    }
    free(copy);
    return rc;
}

static int parse_buf(struct buf *b)
{
    int rc = parse_copy(b->p, b->n);
    free(b->p);
    *b = (struct buf){0};
    return rc;
}

#define expect_rc(rc, want) \
    cr_assert_eq((rc), (want), "got %s, want %s", spec_errname(rc), spec_errname(want))

/* A small valid file using every section: scalars, strings, arrays (nested too), two tensors, the
 * last of which ends exactly at EOF (its size is a multiple of the alignment), so that no proper
 * prefix is itself a valid file. */
static void valid_file(void **out, size_t *size)
{
    struct gguf_writer *w = NULL;
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    cr_assert_eq(gguf_writer_set_u32(w, "llama.block_count", 2), 0);
    cr_assert_eq(gguf_writer_set_bool(w, "flag", true), 0);
    static const char *const toks[] = {"<s>", "a", ""};
    cr_assert_eq(gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", toks, 3), 0);
    static const float scores[] = {0.5f, -1.0f, 2.0f};
    cr_assert_eq(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 3), 0);
    static const int16_t i16[] = {-1, 2};
    const struct gguf_value inner[] = {
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_INT16, .n = 2, .raw = i16}},
        {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_STRING, .n = 0}},
    };
    struct gguf_value nested = {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_ARRAY, .n = 2, .items = inner}};
    cr_assert_eq(gguf_writer_set(w, "nested", &nested), 0);
    static const uint8_t q8[34] = {1, 2, 3}, f32[32] = {4, 5, 6};
    const uint64_t ne_q8[2] = {32, 1}, ne_f32[1] = {8};
    cr_assert_eq(gguf_writer_add_tensor(w, "q", SPEC_Q8_0, 2, ne_q8, q8, sizeof q8), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "f", SPEC_F32, 1, ne_f32, f32, sizeof f32), 0);
    cr_assert_eq(gguf_writer_write_memory(w, out, size), 0);
    gguf_writer_free(w);
}

/* ---------------------------------------------------------------------------------------------- */

Test(gguf_hostile, the_valid_base_file_parses)
{
    void *f;
    size_t n;
    valid_file(&f, &n);
    expect_rc(parse_copy(f, n), 0);
    free(f);
}

Test(gguf_hostile, rejects_bad_magic)
{
    void *f;
    size_t n;
    valid_file(&f, &n);
    memcpy(f, "GGML", 4);
    expect_rc(parse_copy(f, n), SPEC_E_BAD_MAGIC);
    free(f);
    expect_rc(parse_copy("gguf\3\0\0\0", 8), SPEC_E_BAD_MAGIC);
    expect_rc(parse_copy("PK", 2), SPEC_E_BAD_MAGIC);
}

Test(gguf_hostile, rejects_versions_other_than_2_and_3)
{
    static const uint32_t bad[] = {0, 1, 4, 0xFFFF, 0x00010001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct buf b = {0};
        b_header(&b, bad[i], 0, 0);
        expect_rc(parse_buf(&b), SPEC_E_VERSION);
    }
    struct buf b = {0};
    b_header(&b, 2, 0, 0);
    expect_rc(parse_buf(&b), 0);
}

Test(gguf_hostile, rejects_a_big_endian_file_by_its_byte_swapped_version)
{
    void *f;
    size_t n;
    valid_file(&f, &n);
    static const uint8_t be3[4] = {0, 0, 0, 3};
    memcpy((uint8_t *)f + 4, be3, 4);
    expect_rc(parse_copy(f, n), SPEC_E_UNSUPPORTED);
    free(f);
}

Test(gguf_hostile, every_proper_prefix_of_a_valid_file_is_truncated)
{
    void *f;
    size_t n;
    valid_file(&f, &n);
    for (size_t len = 0; len < n; len++) {
        int rc = parse_copy(f, len);
        cr_assert_eq(rc, SPEC_E_TRUNCATED, "prefix of %zu/%zu bytes: %s", len, n, spec_errname(rc));
    }
    expect_rc(parse_copy(f, n), 0);
    free(f);
}

Test(gguf_hostile, rejects_counts_the_file_cannot_hold_without_allocating)
{
    /* 2^40 kvs would be ~64 TiB of parsed entries: a reader that allocates first fails with NOMEM. */
    static const uint64_t huge[] = {1ull << 40, 1ull << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        struct buf b = {0};
        b_header(&b, 3, 0, huge[i]);
        b_zeros(&b, 64);
        expect_rc(parse_buf(&b), SPEC_E_TRUNCATED);
        b_header(&b, 3, huge[i], 0);
        b_zeros(&b, 64);
        expect_rc(parse_buf(&b), SPEC_E_TRUNCATED);
    }
}

Test(gguf_hostile, rejects_string_lengths_past_the_end)
{
    static const uint64_t lens[] = {100, 1ull << 62, UINT64_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        struct buf b = {0};
        b_header(&b, 3, 0, 1);
        b_str(&b, "k");
        b_u32(&b, GGUF_TYPE_STRING);
        b_u64(&b, lens[i]);
        b_put(&b, "short", 5);
        expect_rc(parse_buf(&b), SPEC_E_TRUNCATED);
    }
}

/* One kv "k" holding an array of `elem` with count n, followed by `pad` zero bytes. */
static int array_with_count(uint32_t elem, uint64_t n, size_t pad)
{
    struct buf b = {0};
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_TYPE_ARRAY);
    b_u32(&b, elem);
    b_u64(&b, n);
    b_zeros(&b, pad);
    return parse_buf(&b);
}

Test(gguf_hostile, rejects_array_lengths_past_the_end_including_ones_whose_byte_size_wraps)
{
    expect_rc(array_with_count(GGUF_TYPE_UINT8, 1ull << 62, 64), SPEC_E_TRUNCATED);
    /* n * 8 and n * 4 wrap to 0 in 64 bits: a check on the byte size alone would accept these. */
    expect_rc(array_with_count(GGUF_TYPE_FLOAT64, 1ull << 61, 64), SPEC_E_TRUNCATED);
    expect_rc(array_with_count(GGUF_TYPE_UINT32, 1ull << 62, 64), SPEC_E_TRUNCATED);
    expect_rc(array_with_count(GGUF_TYPE_STRING, 1ull << 61, 64), SPEC_E_TRUNCATED);
    expect_rc(array_with_count(GGUF_TYPE_ARRAY, 1ull << 60, 64), SPEC_E_TRUNCATED);
    expect_rc(array_with_count(GGUF_TYPE_UINT64, UINT64_MAX, 64), SPEC_E_TRUNCATED);
    /* 9 strings need at least 72 bytes; 64 zero bytes are 8 empty strings and no more. */
    expect_rc(array_with_count(GGUF_TYPE_STRING, 9, 64), SPEC_E_TRUNCATED);
    expect_rc(array_with_count(GGUF_TYPE_STRING, 8, 64), 0);
}

/* "k" = an array nested `depth` deep (a top-level array is depth 1) around an empty u8 array. */
static int nested_depth(int depth)
{
    struct buf b = {0};
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_TYPE_ARRAY);
    for (int d = 1; d < depth; d++) {
        b_u32(&b, GGUF_TYPE_ARRAY);
        b_u64(&b, 1);
    }
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u64(&b, 0);
    return parse_buf(&b);
}

Test(gguf_hostile, rejects_arrays_nested_too_deep)
{
    expect_rc(nested_depth(GGUF_MAX_ARRAY_DEPTH), 0);
    expect_rc(nested_depth(GGUF_MAX_ARRAY_DEPTH + 1), SPEC_E_RANGE);
    expect_rc(nested_depth(10000), SPEC_E_RANGE);
}

static int one_kv_raw(uint32_t type, const void *value, size_t n)
{
    struct buf b = {0};
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, type);
    b_put(&b, value, n);
    return parse_buf(&b);
}

Test(gguf_hostile, rejects_unknown_value_types_and_bools_other_than_0_or_1)
{
    static const uint8_t eight[8] = {0};
    expect_rc(one_kv_raw(GGUF_TYPE_COUNT, eight, 8), SPEC_E_FORMAT);
    expect_rc(one_kv_raw(0xFFFFFFFFu, eight, 8), SPEC_E_FORMAT);
    static const uint8_t two = 2, one = 1;
    expect_rc(one_kv_raw(GGUF_TYPE_BOOL, &two, 1), SPEC_E_FORMAT);
    expect_rc(one_kv_raw(GGUF_TYPE_BOOL, &one, 1), 0);
    /* array element type 13, and a bool array with a 0xFF element */
    static const uint8_t bad_elem[12] = {13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expect_rc(one_kv_raw(GGUF_TYPE_ARRAY, bad_elem, sizeof bad_elem), SPEC_E_FORMAT);
    static const uint8_t bool_arr[15] = {GGUF_TYPE_BOOL, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xFF};
    expect_rc(one_kv_raw(GGUF_TYPE_ARRAY, bool_arr, sizeof bool_arr), SPEC_E_FORMAT);
}

Test(gguf_hostile, rejects_overlong_keys_and_tensor_names)
{
    struct buf b = {0};
    b_header(&b, 3, 0, 1);
    b_u64(&b, GGUF_MAX_KEY_LEN + 1);
    b_zeros(&b, GGUF_MAX_KEY_LEN + 1 + 8);
    expect_rc(parse_buf(&b), SPEC_E_RANGE);

    char name[GGUF_MAX_NAME_LEN + 2];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    struct tinfo t = {name, 1, {8}, SPEC_F32, 0};
    b_header(&b, 3, 1, 0);
    b_tinfo(&b, &t);
    b_pad(&b, 32);
    b_zeros(&b, 32);
    expect_rc(parse_buf(&b), SPEC_E_RANGE);

    name[GGUF_MAX_NAME_LEN] = '\0'; /* 63 bytes, as llama.cpp allows */
    b_header(&b, 3, 1, 0);
    b_tinfo(&b, &t);
    b_pad(&b, 32);
    b_zeros(&b, 32);
    expect_rc(parse_buf(&b), 0);
}

Test(gguf_hostile, rejects_duplicate_keys)
{
    struct buf b = {0};
    b_header(&b, 3, 0, 3);
    b_str(&b, "a");
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u8(&b, 1);
    b_str(&b, "b");
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u8(&b, 1);
    b_str(&b, "a");
    b_u32(&b, GGUF_TYPE_STRING);
    b_str(&b, "x");
    expect_rc(parse_buf(&b), SPEC_E_DUPLICATE);

    /* Keys are byte strings: equal up to an embedded NUL is still distinct. */
    b_header(&b, 3, 0, 2);
    b_u64(&b, 3);
    b_put(&b, "a\0b", 3);
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u8(&b, 1);
    b_u64(&b, 3);
    b_put(&b, "a\0c", 3);
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u8(&b, 1);
    expect_rc(parse_buf(&b), 0);
}

/* A file of the given tensor infos (no kvs), padded, followed by `data` zero bytes. */
static int tensors_file(const struct tinfo *t, int n, size_t data)
{
    struct buf b = {0};
    b_header(&b, 3, (uint64_t)n, 0);
    for (int i = 0; i < n; i++)
        b_tinfo(&b, &t[i]);
    b_pad(&b, GGUF_DEFAULT_ALIGNMENT);
    b_zeros(&b, data);
    return parse_buf(&b);
}

static int one_tensor(struct tinfo t, size_t data)
{
    return tensors_file(&t, 1, data);
}

Test(gguf_hostile, rejects_duplicate_tensor_names)
{
    const struct tinfo t[2] = {{"w", 1, {8}, SPEC_F32, 0}, {"w", 1, {8}, SPEC_F32, 32}};
    expect_rc(tensors_file(t, 2, 64), SPEC_E_DUPLICATE);
}

Test(gguf_hostile, accepts_overlapping_tensors_that_lie_inside_the_file)
{
    const struct tinfo t[2] = {{"a", 1, {8}, SPEC_F32, 0}, {"b", 1, {4}, SPEC_F32, 0}};
    expect_rc(tensors_file(t, 2, 32), 0);
}

Test(gguf_hostile, rejects_unknown_tensor_types)
{
    static const uint32_t bad[] = {4, 5, 31, SPEC_DTYPE_COUNT, 0x80000000u, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_rc(one_tensor((struct tinfo){"w", 1, {32}, bad[i], 0}, 256), SPEC_E_UNSUPPORTED);
}

Test(gguf_hostile, rejects_n_dims_outside_1_to_4)
{
    expect_rc(one_tensor((struct tinfo){"w", 0, {0}, SPEC_F32, 0}, 32), SPEC_E_RANGE);
    expect_rc(one_tensor((struct tinfo){"w", 5, {1, 1, 1, 1, 1}, SPEC_F32, 0}, 32), SPEC_E_RANGE);
    expect_rc(one_tensor((struct tinfo){"w", 0xFFFFFFFFu, {1}, SPEC_F32, 0}, 32), SPEC_E_RANGE);
    expect_rc(one_tensor((struct tinfo){"w", 4, {1, 1, 1, 1}, SPEC_F32, 0}, 32), 0);
}

Test(gguf_hostile, rejects_dimensions_whose_element_or_byte_count_overflows)
{
    /* 2^32 * 2^32 elements wraps to 0 */
    expect_rc(one_tensor((struct tinfo){"w", 2, {1ull << 32, 1ull << 32}, SPEC_I8, 0}, 32), SPEC_E_RANGE);
    /* 2^62 elements fit int64 but 2^64 F32 bytes wrap to 0: a byte check alone would accept it */
    expect_rc(one_tensor((struct tinfo){"w", 2, {1ull << 31, 1ull << 31}, SPEC_F32, 0}, 32), SPEC_E_RANGE);
    expect_rc(one_tensor((struct tinfo){"w", 4, {1u << 16, 1u << 16, 1u << 16, 1u << 16}, SPEC_I8, 0}, 32),
              SPEC_E_RANGE);
    /* 2^63 Q4_0 elements: the byte size (18/32 per element) fits, the element count does not */
    expect_rc(one_tensor((struct tinfo){"w", 2, {1ull << 32, 1ull << 31}, SPEC_Q4_0, 0}, 32), SPEC_E_RANGE);
    /* a dimension that is negative as ggml's int64_t */
    expect_rc(one_tensor((struct tinfo){"w", 1, {1ull << 63}, SPEC_I8, 0}, 32), SPEC_E_RANGE);
    expect_rc(one_tensor((struct tinfo){"w", 2, {1, UINT64_MAX}, SPEC_I8, 0}, 32), SPEC_E_RANGE);
}

Test(gguf_hostile, rejects_rows_that_are_not_whole_blocks)
{
    expect_rc(one_tensor((struct tinfo){"w", 1, {16}, SPEC_Q4_0, 0}, 64), SPEC_E_RANGE);
    expect_rc(one_tensor((struct tinfo){"w", 2, {128, 2}, SPEC_Q4_K, 0}, 1024), SPEC_E_RANGE);
    expect_rc(one_tensor((struct tinfo){"w", 2, {32, 2}, SPEC_Q4_0, 0}, 64), 0);
}

Test(gguf_hostile, rejects_tensor_data_past_eof)
{
    /* offset itself past the end */
    expect_rc(one_tensor((struct tinfo){"w", 1, {8}, SPEC_F32, 1024}, 32), SPEC_E_TRUNCATED);
    /* offset inside, offset + size past the end by one byte */
    expect_rc(one_tensor((struct tinfo){"w", 1, {8}, SPEC_F32, 32}, 63), SPEC_E_TRUNCATED);
    expect_rc(one_tensor((struct tinfo){"w", 1, {8}, SPEC_F32, 32}, 64), 0);
    /* a huge aligned offset whose sum with the data start wraps */
    expect_rc(one_tensor((struct tinfo){"w", 1, {8}, SPEC_F32, UINT64_MAX & ~31ull}, 32), SPEC_E_RANGE);
    /* a size just under 2^64: past the end, and wrapping it once the offset is added */
    expect_rc(one_tensor((struct tinfo){"w", 2, {1ull << 31, (1ull << 31) - 1}, SPEC_F32, 0}, 32),
              SPEC_E_TRUNCATED);
    expect_rc(one_tensor((struct tinfo){"w", 2, {1ull << 31, (1ull << 31) - 1}, SPEC_F32, 1ull << 34}, 32),
              SPEC_E_RANGE);
}

Test(gguf_hostile, rejects_misaligned_tensor_offsets)
{
    expect_rc(one_tensor((struct tinfo){"w", 1, {1}, SPEC_F32, 4}, 64), SPEC_E_ALIGNMENT);
    expect_rc(one_tensor((struct tinfo){"w", 1, {1}, SPEC_F32, 31}, 64), SPEC_E_ALIGNMENT);
}

/* general.alignment stored as `type` with the given value bytes, and one F32 tensor at `offset`. */
static int alignment_file(uint32_t type, const void *value, size_t n, uint64_t offset)
{
    struct buf b = {0};
    b_header(&b, 3, 1, 1);
    b_str(&b, "general.alignment");
    b_u32(&b, type);
    b_put(&b, value, n);
    b_tinfo(&b, &(struct tinfo){"w", 1, {8}, SPEC_F32, offset});
    b_pad(&b, 256);
    b_zeros(&b, 512);
    return parse_buf(&b);
}

Test(gguf_hostile, rejects_bad_general_alignment)
{
    uint32_t a = 0;
    expect_rc(alignment_file(GGUF_TYPE_UINT32, &a, 4, 0), SPEC_E_ALIGNMENT);
    a = 48;
    expect_rc(alignment_file(GGUF_TYPE_UINT32, &a, 4, 0), SPEC_E_ALIGNMENT);
    a = 0x80000001u;
    expect_rc(alignment_file(GGUF_TYPE_UINT32, &a, 4, 0), SPEC_E_ALIGNMENT);
    uint64_t a64 = 64;
    expect_rc(alignment_file(GGUF_TYPE_UINT64, &a64, 8, 0), SPEC_E_TYPE);
    int32_t ai = 64;
    expect_rc(alignment_file(GGUF_TYPE_INT32, &ai, 4, 0), SPEC_E_TYPE);
    expect_rc(alignment_file(GGUF_TYPE_STRING, "\2\0\0\0\0\0\0\0" "64", 10, 0), SPEC_E_TYPE);
    /* 32-aligned but not 64-aligned under alignment 64 */
    a = 64;
    expect_rc(alignment_file(GGUF_TYPE_UINT32, &a, 4, 32), SPEC_E_ALIGNMENT);
    expect_rc(alignment_file(GGUF_TYPE_UINT32, &a, 4, 128), 0);
}

Test(gguf_hostile, a_file_without_tensors_may_end_before_the_data_padding)
{
    struct buf b = {0};
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u8(&b, 7);
    expect_rc(parse_buf(&b), 0);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static bool is_named_parse_error(int rc)
{
    switch (rc) {
    case SPEC_E_TRUNCATED:
    case SPEC_E_BAD_MAGIC:
    case SPEC_E_VERSION:
    case SPEC_E_UNSUPPORTED:
    case SPEC_E_RANGE:
    case SPEC_E_FORMAT:
    case SPEC_E_DUPLICATE:
    case SPEC_E_TYPE:
    case SPEC_E_ALIGNMENT:
        return true;
    default:
        return false;
    }
}

Test(gguf_hostile, random_bit_flips_either_parse_or_fail_with_a_named_error)
{
    void *f;
    size_t n;
    valid_file(&f, &n);
    uint8_t *m = malloc(n);
    uint64_t seed = 0x243f6a8885a308d3ull;
    int ok = 0, failed = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(m, f, n);
        int flips = 1 + (int)(rng_next(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            uint64_t bit = rng_next(&seed) % (n * 8);
            m[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        int rc = parse_copy(m, n);
        cr_assert(rc == 0 || is_named_parse_error(rc), "iteration %d: %d (%s)", iter, rc, spec_errname(rc));
        if (rc == 0)
            ok++;
        else
            failed++;
    }
    /* Flips in tensor data and string bytes are harmless; flips in lengths are not: both must occur. */
    cr_assert_gt(ok, 100);
    cr_assert_gt(failed, 100);
    free(m);
    free(f);
}

Test(gguf_hostile, every_byte_set_to_extreme_values_parses_or_fails_with_a_named_error)
{
    void *f;
    size_t n;
    valid_file(&f, &n);
    uint8_t *m = malloc(n);
    static const uint8_t vals[] = {0x00, 0x01, 0x7F, 0x80, 0xFF};
    for (size_t pos = 0; pos < n; pos++) {
        for (size_t v = 0; v < sizeof vals; v++) {
            memcpy(m, f, n);
            m[pos] = vals[v];
            int rc = parse_copy(m, n);
            cr_assert(rc == 0 || is_named_parse_error(rc), "byte %zu = %#x: %d (%s)", pos, vals[v], rc,
                      spec_errname(rc));
        }
    }
    free(m);
    free(f);
}
