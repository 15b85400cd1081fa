/* GGUF writer: owns deep copies of every key, value and tensor (or the callback that produces a
 * tensor's rows), and serialises them with one routine that either counts bytes, fills a buffer or
 * streams to a file, so the three cannot disagree. */
#include "model/gguf.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define ALIGNMENT_KEY "general.alignment"

struct wr_tensor {
    char *name;
    size_t name_len;
    enum spec_dtype type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    void *data; /* NULL when rows supplies the bytes */
    uint64_t n_bytes;
    gguf_rows_fn rows;
    void *rows_ctx;
    uint64_t n_rows, row_bytes;
};

struct gguf_writer {
    uint32_t version;
    uint32_t alignment;
    struct gguf_kv *kv; /* keys and values owned (malloc'd) */
    size_t n_kv, cap_kv;
    struct wr_tensor *tensors;
    size_t n_tensors, cap_tensors;
};

/* ---------------------------------------------------------------------------------------------- */
/* Owned values                                                                                    */

static void owned_array_free(const struct gguf_array *a);

static void owned_value_free(const struct gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING)
        free((void *)v->v.str.ptr);
    else if (v->type == GGUF_TYPE_ARRAY)
        owned_array_free(&v->v.arr);
}

/* String arrays are one block (the gguf_str table, then the bytes); nested items are freed one by one. */
static void owned_array_free(const struct gguf_array *a)
{
    free((void *)a->raw);
    free((void *)a->strs);
    if (a->items)
        for (uint64_t i = 0; i < a->n; i++)
            owned_value_free(&a->items[i]);
    free((void *)a->items);
}

static int copy_bytes(const void *src, uint64_t n, void **out)
{
    if (n && !src)
        return SPEC_E_INVALID_ARG;
    if (n > SIZE_MAX - 1)
        return SPEC_E_RANGE;
    /* Never malloc(0): an empty string still gets a valid pointer. */
    void *p = malloc(n ? (size_t)n : 1);
    if (!p)
        return SPEC_E_NOMEM;
    if (n)
        memcpy(p, src, (size_t)n);
    *out = p;
    return 0;
}

/* A scalar that its declared type can hold, so the bytes written read back as the same value. */
static int check_scalar(const struct gguf_value *v)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8: return v->v.u64 <= UINT8_MAX ? 0 : SPEC_E_INVALID_ARG;
    case GGUF_TYPE_UINT16: return v->v.u64 <= UINT16_MAX ? 0 : SPEC_E_INVALID_ARG;
    case GGUF_TYPE_UINT32: return v->v.u64 <= UINT32_MAX ? 0 : SPEC_E_INVALID_ARG;
    case GGUF_TYPE_INT8: return v->v.i64 >= INT8_MIN && v->v.i64 <= INT8_MAX ? 0 : SPEC_E_INVALID_ARG;
    case GGUF_TYPE_INT16: return v->v.i64 >= INT16_MIN && v->v.i64 <= INT16_MAX ? 0 : SPEC_E_INVALID_ARG;
    case GGUF_TYPE_INT32: return v->v.i64 >= INT32_MIN && v->v.i64 <= INT32_MAX ? 0 : SPEC_E_INVALID_ARG;
    case GGUF_TYPE_FLOAT32: return isfinite(v->v.f64) && fabs(v->v.f64) > FLT_MAX ? SPEC_E_INVALID_ARG : 0;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
    case GGUF_TYPE_BOOL:
        return 0;
    default:
        return SPEC_E_INVALID_ARG;
    }
}

static int copy_array(const struct gguf_array *src, int depth, struct gguf_array *out);

static int copy_value(const struct gguf_value *src, int depth, struct gguf_value *out)
{
    struct gguf_value v = *src;
    int rc;
    void *p;
    if (src->type == GGUF_TYPE_STRING) {
        if ((rc = copy_bytes(src->v.str.ptr, src->v.str.len, &p)) < 0)
            return rc;
        v.v.str.ptr = p;
    } else if (src->type == GGUF_TYPE_ARRAY) {
        if ((rc = copy_array(&src->v.arr, depth + 1, &v.v.arr)) < 0)
            return rc;
    } else if ((rc = check_scalar(src)) < 0) {
        return rc;
    }
    *out = v;
    return 0;
}

static int copy_str_array(const struct gguf_array *src, struct gguf_array *a)
{
    if (!src->strs)
        return SPEC_E_INVALID_ARG;
    if (src->n > (SIZE_MAX / 2) / sizeof(struct gguf_str))
        return SPEC_E_RANGE;
    uint64_t total = src->n * sizeof(struct gguf_str);
    for (uint64_t i = 0; i < src->n; i++) {
        if (src->strs[i].len && !src->strs[i].ptr)
            return SPEC_E_INVALID_ARG;
        if (src->strs[i].len > SIZE_MAX / 2 - total)
            return SPEC_E_RANGE;
        total += src->strs[i].len;
    }
    struct gguf_str *strs = malloc((size_t)total);
    if (!strs)
        return SPEC_E_NOMEM;
    char *bytes = (char *)(strs + src->n);
    for (uint64_t i = 0; i < src->n; i++) {
        strs[i].len = src->strs[i].len;
        strs[i].ptr = bytes;
        if (strs[i].len)
            memcpy(bytes, src->strs[i].ptr, (size_t)strs[i].len);
        bytes += strs[i].len;
    }
    a->strs = strs;
    return 0;
}

static int copy_array(const struct gguf_array *src, int depth, struct gguf_array *out)
{
    struct gguf_array a = {.type = src->type, .n = src->n};
    int rc = 0;
    void *p;
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return SPEC_E_RANGE;
    if ((unsigned)src->type >= GGUF_TYPE_COUNT)
        return SPEC_E_INVALID_ARG;
    if (src->n == 0) {
        *out = a;
        return 0;
    }
    if (src->type == GGUF_TYPE_STRING) {
        rc = copy_str_array(src, &a);
    } else if (src->type == GGUF_TYPE_ARRAY) {
        if (!src->items)
            return SPEC_E_INVALID_ARG;
        if (src->n > SIZE_MAX / sizeof(struct gguf_value))
            return SPEC_E_RANGE;
        /* calloc: items not yet copied are UINT8 zeros, which owned_array_free skips. */
        struct gguf_value *items = calloc((size_t)src->n, sizeof *items);
        if (!items)
            return SPEC_E_NOMEM;
        a.items = items;
        for (uint64_t i = 0; i < src->n && rc == 0; i++)
            rc = src->items[i].type != GGUF_TYPE_ARRAY ? SPEC_E_INVALID_ARG
                                                       : copy_value(&src->items[i], depth, &items[i]);
    } else {
        size_t sz = gguf_type_size(src->type);
        if (src->n > UINT64_MAX / sz)
            return SPEC_E_RANGE;
        if ((rc = copy_bytes(src->raw, src->n * sz, &p)) < 0)
            return rc;
        a.raw = p;
        /* The reader rejects other bool bytes; refuse to write a file it would refuse. */
        if (src->type == GGUF_TYPE_BOOL)
            for (uint64_t i = 0; i < src->n && rc == 0; i++)
                if (((const uint8_t *)p)[i] > 1)
                    rc = SPEC_E_INVALID_ARG;
    }
    if (rc < 0) {
        owned_array_free(&a);
        return rc;
    }
    *out = a;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Building                                                                                        */

int gguf_writer_new(uint32_t version, struct gguf_writer **out)
{
    if (!out)
        return SPEC_E_INVALID_ARG;
    if (version != 2 && version != 3)
        return SPEC_E_VERSION;
    struct gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return SPEC_E_NOMEM;
    w->version = version;
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    *out = w;
    return 0;
}

void gguf_writer_free(struct gguf_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free((void *)w->kv[i].key.ptr);
        owned_value_free(&w->kv[i].value);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    free(w);
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    if (c > SIZE_MAX / elem)
        return SPEC_E_NOMEM;
    void *p = realloc(*arr, c * elem);
    if (!p)
        return SPEC_E_NOMEM;
    *arr = p;
    *cap = c;
    return 0;
}

static struct gguf_kv *find_kv(const struct gguf_writer *w, const char *key)
{
    for (size_t i = 0; i < w->n_kv; i++)
        if (gguf_str_eq(w->kv[i].key, key))
            return &w->kv[i];
    return NULL;
}

/* Stores an owned value under key, replacing (and freeing) any previous value in its place. */
static int put_kv(struct gguf_writer *w, const char *key, struct gguf_value v)
{
    struct gguf_kv *kv = find_kv(w, key);
    if (kv) {
        owned_value_free(&kv->value);
        kv->value = v;
        return 0;
    }
    void *k;
    int rc = grow((void **)&w->kv, &w->cap_kv, w->n_kv, sizeof *w->kv);
    if (rc == 0)
        rc = copy_bytes(key, strlen(key), &k);
    if (rc < 0) {
        owned_value_free(&v);
        return rc;
    }
    w->kv[w->n_kv++] = (struct gguf_kv){.key = {strlen(key), k}, .value = v};
    return 0;
}

static void remove_kv(struct gguf_writer *w, const char *key)
{
    struct gguf_kv *kv = find_kv(w, key);
    if (!kv)
        return;
    free((void *)kv->key.ptr);
    owned_value_free(&kv->value);
    size_t i = (size_t)(kv - w->kv);
    memmove(kv, kv + 1, (w->n_kv - i - 1) * sizeof *kv);
    w->n_kv--;
}

int gguf_writer_set_alignment(struct gguf_writer *w, uint32_t alignment)
{
    if (!w)
        return SPEC_E_INVALID_ARG;
    if (alignment == 0 || (alignment & (alignment - 1)) != 0)
        return SPEC_E_ALIGNMENT;
    /* The key list is the one truth about what gets written; the default stays implicit. */
    if (alignment == GGUF_DEFAULT_ALIGNMENT) {
        remove_kv(w, ALIGNMENT_KEY);
    } else {
        int rc = put_kv(w, ALIGNMENT_KEY, (struct gguf_value){.type = GGUF_TYPE_UINT32, .v.u64 = alignment});
        if (rc < 0)
            return rc;
    }
    w->alignment = alignment;
    return 0;
}

int gguf_writer_set(struct gguf_writer *w, const char *key, const struct gguf_value *v)
{
    if (!w || !key || !v)
        return SPEC_E_INVALID_ARG;
    if (strlen(key) > GGUF_MAX_KEY_LEN)
        return SPEC_E_RANGE;
    if (strcmp(key, ALIGNMENT_KEY) == 0) {
        if (v->type != GGUF_TYPE_UINT32)
            return SPEC_E_TYPE;
        if (v->v.u64 > UINT32_MAX)
            return SPEC_E_INVALID_ARG;
        return gguf_writer_set_alignment(w, (uint32_t)v->v.u64);
    }
    struct gguf_value copy;
    int rc = copy_value(v, 0, &copy);
    if (rc < 0)
        return rc;
    return put_kv(w, key, copy);
}

int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
    return gguf_writer_set(w, key, &(struct gguf_value){.type = GGUF_TYPE_UINT32, .v.u64 = v});
}

int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v)
{
    return gguf_writer_set(w, key, &(struct gguf_value){.type = GGUF_TYPE_INT32, .v.i64 = v});
}

int gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v)
{
    return gguf_writer_set(w, key, &(struct gguf_value){.type = GGUF_TYPE_UINT64, .v.u64 = v});
}

int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v)
{
    return gguf_writer_set(w, key, &(struct gguf_value){.type = GGUF_TYPE_FLOAT32, .v.f64 = v});
}

int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v)
{
    return gguf_writer_set(w, key, &(struct gguf_value){.type = GGUF_TYPE_BOOL, .v.b = v});
}

int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v)
{
    if (!v)
        return SPEC_E_INVALID_ARG;
    return gguf_writer_set(w, key, &(struct gguf_value){.type = GGUF_TYPE_STRING, .v.str = {strlen(v), v}});
}

int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_type elem_type, const void *data,
                        uint64_t n)
{
    if (gguf_type_size(elem_type) == 0)
        return SPEC_E_INVALID_ARG;
    struct gguf_value v = {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = elem_type, .n = n, .raw = data}};
    return gguf_writer_set(w, key, &v);
}

int gguf_writer_set_str_arr(struct gguf_writer *w, const char *key, const char *const *strs, uint64_t n)
{
    if (n && !strs)
        return SPEC_E_INVALID_ARG;
    if (n > SIZE_MAX / sizeof(struct gguf_str))
        return SPEC_E_RANGE;
    struct gguf_str *tmp = n ? malloc((size_t)n * sizeof *tmp) : NULL;
    if (n && !tmp)
        return SPEC_E_NOMEM;
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        if (!strs[i])
            rc = SPEC_E_INVALID_ARG;
        else
            tmp[i] = (struct gguf_str){strlen(strs[i]), strs[i]};
    }
    if (rc == 0) {
        struct gguf_value v = {.type = GGUF_TYPE_ARRAY, .v.arr = {.type = GGUF_TYPE_STRING, .n = n, .strs = tmp}};
        rc = gguf_writer_set(w, key, &v);
    }
    free(tmp);
    return rc;
}

/* Validates name and shape as both add functions must and describes the tensor in *t (no data yet). */
static int check_tensor(const struct gguf_writer *w, const char *name, enum spec_dtype type, uint32_t n_dims,
                        const uint64_t *ne, struct wr_tensor *t)
{
    if (!w || !name || !ne)
        return SPEC_E_INVALID_ARG;
    size_t name_len = strlen(name);
    if (name_len > GGUF_MAX_NAME_LEN)
        return SPEC_E_RANGE;
    for (size_t i = 0; i < w->n_tensors; i++)
        if (w->tensors[i].name_len == name_len && memcmp(w->tensors[i].name, name, name_len) == 0)
            return SPEC_E_DUPLICATE;
    uint64_t n_elems, n_bytes;
    int rc = gguf_tensor_size((uint32_t)type, n_dims, ne, &n_elems, &n_bytes);
    if (rc < 0)
        return rc;
    *t = (struct wr_tensor){.name_len = name_len, .type = type, .n_dims = n_dims, .n_bytes = n_bytes};
    for (uint32_t i = 0; i < GGUF_MAX_DIMS; i++)
        t->ne[i] = i < n_dims ? ne[i] : 1;
    t->n_rows = t->ne[0] ? n_elems / t->ne[0] : 0;
    t->row_bytes = t->n_rows ? n_bytes / t->n_rows : 0;
    return 0;
}

/* Appends t with a copy of its name; t's data (if any) becomes the writer's only on success. */
static int push_tensor(struct gguf_writer *w, const char *name, struct wr_tensor t)
{
    void *p;
    int rc = grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors, sizeof *w->tensors);
    if (rc == 0)
        rc = copy_bytes(name, t.name_len + 1, &p);
    if (rc < 0)
        return rc;
    t.name = p;
    w->tensors[w->n_tensors++] = t;
    return 0;
}

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum spec_dtype type, uint32_t n_dims,
                           const uint64_t *ne, const void *data, uint64_t n_bytes)
{
    struct wr_tensor t;
    int rc = check_tensor(w, name, type, n_dims, ne, &t);
    if (rc < 0)
        return rc;
    if (n_bytes != t.n_bytes)
        return SPEC_E_INVALID_ARG;
    if ((rc = copy_bytes(data, n_bytes, &t.data)) < 0)
        return rc;
    if ((rc = push_tensor(w, name, t)) < 0)
        free(t.data);
    return rc;
}

int gguf_writer_add_tensor_rows(struct gguf_writer *w, const char *name, enum spec_dtype type, uint32_t n_dims,
                                const uint64_t *ne, gguf_rows_fn rows, void *ctx)
{
    struct wr_tensor t;
    int rc = rows ? check_tensor(w, name, type, n_dims, ne, &t) : SPEC_E_INVALID_ARG;
    if (rc < 0)
        return rc;
    t.rows = rows;
    t.rows_ctx = ctx;
    return push_tensor(w, name, t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Serialising                                                                                     */

/* Counts bytes (no buf, no file), fills buf, or writes to f; pos is the byte count so far; err is the
 * first failure (a write error or a rows callback's error). */
struct sink {
    uint8_t *buf;
    FILE *f;
    uint64_t pos;
    int err;
};

/* Bytes of rows a file sink asks a rows callback for at a time. */
#define ROWS_CHUNK_BYTES (4u << 20)

static void put(struct sink *s, const void *p, uint64_t n)
{
    if (n == 0)
        return;
    if (s->buf)
        memcpy(s->buf + s->pos, p, (size_t)n);
    else if (s->f && !s->err && fwrite(p, 1, (size_t)n, s->f) != n)
        s->err = SPEC_E_IO;
    s->pos += n;
}

static void put_zeros(struct sink *s, uint64_t n)
{
    static const uint8_t zeros[64];
    while (n) {
        uint64_t k = n < sizeof zeros ? n : sizeof zeros;
        put(s, zeros, k);
        n -= k;
    }
}

static void put_u32(struct sink *s, uint32_t x)
{
    put(s, &x, 4);
}

static void put_u64(struct sink *s, uint64_t x)
{
    put(s, &x, 8);
}

static void put_str(struct sink *s, struct gguf_str str)
{
    put_u64(s, str.len);
    put(s, str.ptr, str.len);
}

static uint64_t align_up(uint64_t x, uint32_t a)
{
    return (x + a - 1) / a * a;
}

static void put_array(struct sink *s, const struct gguf_array *a);

/* A value without its type tag (the caller writes the tag where the format has one). */
static void put_value(struct sink *s, const struct gguf_value *v)
{
    union {
        uint8_t u8;
        uint16_t u16;
        uint32_t u32;
        float f32;
    } x;
    switch (v->type) {
    case GGUF_TYPE_UINT8: x.u8 = (uint8_t)v->v.u64; put(s, &x, 1); break;
    case GGUF_TYPE_INT8: x.u8 = (uint8_t)(int8_t)v->v.i64; put(s, &x, 1); break;
    case GGUF_TYPE_UINT16: x.u16 = (uint16_t)v->v.u64; put(s, &x, 2); break;
    case GGUF_TYPE_INT16: x.u16 = (uint16_t)(int16_t)v->v.i64; put(s, &x, 2); break;
    case GGUF_TYPE_UINT32: put_u32(s, (uint32_t)v->v.u64); break;
    case GGUF_TYPE_INT32: put_u32(s, (uint32_t)(int32_t)v->v.i64); break;
    case GGUF_TYPE_UINT64: put_u64(s, v->v.u64); break;
    case GGUF_TYPE_INT64: put_u64(s, (uint64_t)v->v.i64); break;
    case GGUF_TYPE_FLOAT32: x.f32 = (float)v->v.f64; put(s, &x, 4); break;
    case GGUF_TYPE_FLOAT64: put(s, &v->v.f64, 8); break;
    case GGUF_TYPE_BOOL: x.u8 = v->v.b ? 1 : 0; put(s, &x, 1); break;
    case GGUF_TYPE_STRING: put_str(s, v->v.str); break;
    case GGUF_TYPE_ARRAY: put_array(s, &v->v.arr); break;
    default: break; /* copy_value admitted only valid types */
    }
}

static void put_array(struct sink *s, const struct gguf_array *a)
{
    put_u32(s, (uint32_t)a->type);
    put_u64(s, a->n);
    if (a->n == 0)
        return;
    if (a->type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < a->n; i++)
            put_str(s, a->strs[i]);
    } else if (a->type == GGUF_TYPE_ARRAY) {
        for (uint64_t i = 0; i < a->n; i++)
            put_array(s, &a->items[i].v.arr);
    } else {
        put(s, a->raw, a->n * gguf_type_size(a->type));
    }
}

/* A callback tensor goes straight into the buffer, or to the file through a bounded scratch buffer, so
 * it never has to be in memory whole. */
static void put_rows(struct sink *s, const struct wr_tensor *t)
{
    if (!s->buf && (!s->f || s->err)) {
        s->pos += t->n_bytes;
        return;
    }
    if (t->n_bytes == 0)
        return;
    int rc;
    if (s->buf) {
        if (!s->err && (rc = t->rows(t->rows_ctx, 0, t->n_rows, s->buf + s->pos)) != 0)
            s->err = rc;
        s->pos += t->n_bytes;
        return;
    }
    uint64_t chunk = ROWS_CHUNK_BYTES / t->row_bytes;
    chunk = chunk ? chunk : 1;
    chunk = chunk < t->n_rows ? chunk : t->n_rows;
    void *tmp = chunk * t->row_bytes <= SIZE_MAX ? malloc((size_t)(chunk * t->row_bytes)) : NULL;
    if (!tmp) {
        s->err = SPEC_E_NOMEM;
        return;
    }
    for (uint64_t r0 = 0; r0 < t->n_rows && !s->err; r0 += chunk) {
        const uint64_t n = t->n_rows - r0 < chunk ? t->n_rows - r0 : chunk;
        if ((rc = t->rows(t->rows_ctx, r0, n, tmp)) != 0)
            s->err = rc;
        else
            put(s, tmp, n * t->row_bytes);
    }
    free(tmp);
}

static void serialize(const struct gguf_writer *w, struct sink *s)
{
    put(s, "GGUF", 4);
    put_u32(s, w->version);
    put_u64(s, w->n_tensors);
    put_u64(s, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        put_str(s, w->kv[i].key);
        put_u32(s, (uint32_t)w->kv[i].value.type);
        put_value(s, &w->kv[i].value);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const struct wr_tensor *t = &w->tensors[i];
        put_str(s, (struct gguf_str){t->name_len, t->name});
        put_u32(s, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++)
            put_u64(s, t->ne[d]);
        put_u32(s, (uint32_t)t->type);
        put_u64(s, offset);
        offset += align_up(t->n_bytes, w->alignment);
    }
    put_zeros(s, align_up(s->pos, w->alignment) - s->pos);
    for (size_t i = 0; i < w->n_tensors; i++) {
        const struct wr_tensor *t = &w->tensors[i];
        if (t->rows)
            put_rows(s, t);
        else
            put(s, t->data, t->n_bytes);
        put_zeros(s, align_up(t->n_bytes, w->alignment) - t->n_bytes);
    }
}

int gguf_writer_write_memory(const struct gguf_writer *w, void **out, size_t *size)
{
    if (!w || !out || !size)
        return SPEC_E_INVALID_ARG;
    struct sink count = {0};
    serialize(w, &count);
    if (count.pos > SIZE_MAX)
        return SPEC_E_RANGE;
    uint8_t *buf = malloc((size_t)count.pos);
    if (!buf)
        return SPEC_E_NOMEM;
    struct sink fill = {.buf = buf};
    serialize(w, &fill);
    if (fill.err) {
        free(buf);
        return fill.err;
    }
    *out = buf;
    *size = (size_t)fill.pos;
    return 0;
}

int gguf_writer_write_file(const struct gguf_writer *w, const char *path)
{
    if (!w || !path)
        return SPEC_E_INVALID_ARG;
    FILE *f = fopen(path, "wb");
    if (!f)
        return SPEC_E_IO;
    struct sink s = {.f = f};
    serialize(w, &s);
    if (fclose(f) != 0 && !s.err)
        s.err = SPEC_E_IO;
    if (s.err)
        remove(path);
    return s.err;
}
