/* GGUF reader: one pass over an untrusted buffer (an mmap of the file or caller memory).
 *
 * Every read goes through a cursor that knows how many bytes remain, and every count is checked
 * against those bytes (each element needs at least N bytes) before anything is allocated, so the
 * memory used is bounded by a small multiple of the file size whatever the header claims. */
#include "model/gguf.h"

#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

/* Scalars are copied out of the file with memcpy: only a little-endian host reads them right. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "specd's GGUF code assumes a little-endian host"
#endif

#define ALIGNMENT_KEY "general.alignment"

/* Smallest encodings: a kv is a key length, a type and a 1-byte value; a tensor info is a name
 * length, n_dims, one dimension, a type and an offset; a string is its length; an array its header. */
enum {
    MIN_KV_BYTES = 8 + 4 + 1,
    MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8,
    MIN_STRING_BYTES = 8,
    MIN_ARRAY_BYTES = 4 + 8,
};

/* Open-addressing hash from a name to an index into the kv or tensor array (slot = index + 1). */
struct name_index {
    uint64_t *slots;
    uint64_t mask; /* capacity - 1; slots is NULL when there is nothing to index */
    const struct gguf_str *names; /* names[i * stride bytes] is item i's name */
    size_t stride;
};

struct gguf {
    const uint8_t *base;
    size_t size;
    bool mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    struct gguf_tensor *tensors;
    struct name_index kv_index;
    struct name_index tensor_index;
};

struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
};

/* ---------------------------------------------------------------------------------------------- */
/* Small shared helpers                                                                            */

size_t gguf_type_size(enum gguf_type t)
{
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL:
        return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
        return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
        return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

const char *gguf_type_name(enum gguf_type t)
{
    static const char *const names[GGUF_TYPE_COUNT] = {
        "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",   "FLOAT32",
        "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64",
    };
    return (unsigned)t < GGUF_TYPE_COUNT ? names[t] : "unknown";
}

bool gguf_str_eq(struct gguf_str s, const char *cstr)
{
    size_t n = strlen(cstr);
    return s.len == n && (n == 0 || memcmp(s.ptr, cstr, n) == 0);
}

char *gguf_str_dup(struct gguf_str s)
{
    if (s.len >= SIZE_MAX)
        return NULL;
    char *d = malloc((size_t)s.len + 1);
    if (!d)
        return NULL;
    if (s.len)
        memcpy(d, s.ptr, (size_t)s.len);
    d[s.len] = '\0';
    return d;
}

int gguf_tensor_size(uint32_t type, uint32_t n_dims, const uint64_t *ne, uint64_t *n_elems, uint64_t *n_bytes)
{
    if (!ne || !n_elems || !n_bytes)
        return SPEC_E_INVALID_ARG;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return SPEC_E_RANGE;
    const struct kern_dtype_info *info = kern_dtype_info(type);
    if (!info)
        return SPEC_E_UNSUPPORTED;
    /* ggml stores dimensions as int64_t and requires the element count to fit one too. */
    uint64_t elems = 1;
    for (uint32_t i = 0; i < n_dims; i++) {
        if (ne[i] > INT64_MAX)
            return SPEC_E_RANGE;
        if (ne[i] != 0 && elems > INT64_MAX / ne[i])
            return SPEC_E_RANGE;
        elems *= ne[i];
    }
    uint64_t row;
    int rc = kern_row_bytes(type, ne[0], &row);
    if (rc < 0)
        return SPEC_E_RANGE;
    uint64_t bytes = row;
    for (uint32_t i = 1; i < n_dims; i++) {
        if (ne[i] != 0 && bytes > UINT64_MAX / ne[i])
            return SPEC_E_RANGE;
        bytes *= ne[i];
    }
    *n_elems = elems;
    *n_bytes = bytes;
    return 0;
}

/* FNV-1a: names are short and mostly distinct; nothing here needs more. */
static uint64_t hash_str(struct gguf_str s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < s.len; i++) {
        h ^= (uint8_t)s.ptr[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static bool str_eq(struct gguf_str a, struct gguf_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, (size_t)a.len) == 0);
}

static int index_init(struct name_index *ix, uint64_t n, const struct gguf_str *names, size_t stride)
{
    ix->names = names;
    ix->stride = stride;
    ix->slots = NULL;
    ix->mask = 0;
    if (n == 0)
        return 0;
    /* At most half full keeps probes short; n is already bounded by the file size. */
    uint64_t cap = 8;
    while (cap < 2 * n)
        cap *= 2;
    ix->slots = calloc((size_t)cap, sizeof *ix->slots);
    if (!ix->slots)
        return SPEC_E_NOMEM;
    ix->mask = cap - 1;
    return 0;
}

static const struct gguf_str *index_name(const struct name_index *ix, uint64_t i)
{
    return (const struct gguf_str *)((const char *)ix->names + (size_t)i * ix->stride);
}

/* The slot holding `name`, or the empty slot where it would go. Only valid when slots != NULL. */
static uint64_t *index_probe(const struct name_index *ix, struct gguf_str name)
{
    uint64_t i = hash_str(name) & ix->mask;
    while (ix->slots[i] != 0 && !str_eq(*index_name(ix, ix->slots[i] - 1), name))
        i = (i + 1) & ix->mask;
    return &ix->slots[i];
}

/* Adds item i (whose name is already stored); SPEC_E_DUPLICATE when the name is taken. */
static int index_add(struct name_index *ix, uint64_t i)
{
    uint64_t *slot = index_probe(ix, *index_name(ix, i));
    if (*slot != 0)
        return SPEC_E_DUPLICATE;
    *slot = i + 1;
    return 0;
}

/* Index of the item named `name` plus one, 0 when absent. */
static uint64_t index_find(const struct name_index *ix, const char *name)
{
    if (!ix->slots || !name)
        return 0;
    struct gguf_str s = {strlen(name), name};
    return *index_probe(ix, s);
}

/* ---------------------------------------------------------------------------------------------- */
/* Parsing                                                                                         */

static size_t remaining(const struct cursor *c)
{
    return c->size - c->pos;
}

static int rd_bytes(struct cursor *c, uint64_t n, const uint8_t **out)
{
    if (n > remaining(c))
        return SPEC_E_TRUNCATED;
    *out = c->base + c->pos;
    c->pos += (size_t)n;
    return 0;
}

static int rd_u32(struct cursor *c, uint32_t *out)
{
    const uint8_t *p;
    int rc = rd_bytes(c, 4, &p);
    if (rc == 0)
        memcpy(out, p, 4);
    return rc;
}

static int rd_u64(struct cursor *c, uint64_t *out)
{
    const uint8_t *p;
    int rc = rd_bytes(c, 8, &p);
    if (rc == 0)
        memcpy(out, p, 8);
    return rc;
}

/* A length-prefixed string; SPEC_E_RANGE when longer than max_len. */
static int rd_str(struct cursor *c, uint64_t max_len, struct gguf_str *out)
{
    uint64_t len;
    const uint8_t *p;
    int rc = rd_u64(c, &len);
    if (rc < 0)
        return rc;
    if (len > max_len)
        return SPEC_E_RANGE;
    rc = rd_bytes(c, len, &p);
    if (rc < 0)
        return rc;
    out->len = len;
    out->ptr = (const char *)p;
    return 0;
}

static void array_free(const struct gguf_array *a);

static void value_free(const struct gguf_value *v)
{
    if (v->type == GGUF_TYPE_ARRAY)
        array_free(&v->v.arr);
}

/* Frees what the parser allocated; strings and raw elements point into the file. */
static void array_free(const struct gguf_array *a)
{
    if (a->type == GGUF_TYPE_STRING) {
        free((void *)a->strs);
    } else if (a->type == GGUF_TYPE_ARRAY && a->items) {
        for (uint64_t i = 0; i < a->n; i++)
            value_free(&a->items[i]);
        free((void *)a->items);
    }
}

static uint64_t min_elem_bytes(enum gguf_type t)
{
    if (t == GGUF_TYPE_STRING)
        return MIN_STRING_BYTES;
    if (t == GGUF_TYPE_ARRAY)
        return MIN_ARRAY_BYTES;
    return gguf_type_size(t);
}

static int rd_array(struct cursor *c, int depth, struct gguf_array *out);

/* A numeric or bool value from its gguf_type_size(t) little-endian bytes. */
static struct gguf_value decode_scalar(enum gguf_type t, const uint8_t *p)
{
    struct gguf_value v = {.type = t};
    switch (t) {
    case GGUF_TYPE_UINT8: v.v.u64 = p[0]; break;
    case GGUF_TYPE_INT8: v.v.i64 = (int8_t)p[0]; break;
    case GGUF_TYPE_UINT16: { uint16_t x; memcpy(&x, p, 2); v.v.u64 = x; break; }
    case GGUF_TYPE_INT16: { int16_t x; memcpy(&x, p, 2); v.v.i64 = x; break; }
    case GGUF_TYPE_UINT32: { uint32_t x; memcpy(&x, p, 4); v.v.u64 = x; break; }
    case GGUF_TYPE_INT32: { int32_t x; memcpy(&x, p, 4); v.v.i64 = x; break; }
    case GGUF_TYPE_FLOAT32: { float x; memcpy(&x, p, 4); v.v.f64 = x; break; }
    case GGUF_TYPE_UINT64: memcpy(&v.v.u64, p, 8); break;
    case GGUF_TYPE_INT64: memcpy(&v.v.i64, p, 8); break;
    case GGUF_TYPE_FLOAT64: memcpy(&v.v.f64, p, 8); break;
    case GGUF_TYPE_BOOL: v.v.b = p[0] != 0; break;
    default: break;
    }
    return v;
}

/* One value of a known-valid type (the caller read and checked the type tag). */
static int rd_value(struct cursor *c, enum gguf_type type, int depth, struct gguf_value *out)
{
    struct gguf_value v = {.type = type};
    const uint8_t *p;
    int rc;
    if (type == GGUF_TYPE_STRING) {
        rc = rd_str(c, UINT64_MAX, &v.v.str);
    } else if (type == GGUF_TYPE_ARRAY) {
        rc = rd_array(c, depth + 1, &v.v.arr);
    } else {
        rc = rd_bytes(c, gguf_type_size(type), &p);
        /* The spec calls a bool other than 0/1 invalid; rejecting it keeps `raw` bool arrays trustworthy. */
        if (rc == 0 && type == GGUF_TYPE_BOOL && p[0] > 1)
            rc = SPEC_E_FORMAT;
        if (rc == 0)
            v = decode_scalar(type, p);
    }
    if (rc == 0)
        *out = v;
    return rc;
}

static int rd_type(struct cursor *c, enum gguf_type *out)
{
    uint32_t t;
    int rc = rd_u32(c, &t);
    if (rc < 0)
        return rc;
    if (t >= GGUF_TYPE_COUNT)
        return SPEC_E_FORMAT;
    *out = (enum gguf_type)t;
    return 0;
}

/* An array body (element type, count, elements) at nesting `depth`. */
static int rd_array(struct cursor *c, int depth, struct gguf_array *out)
{
    struct gguf_array a = {0};
    int rc;
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return SPEC_E_RANGE;
    if ((rc = rd_type(c, &a.type)) < 0 || (rc = rd_u64(c, &a.n)) < 0)
        return rc;
    /* Refuse a count the remaining bytes cannot hold before allocating anything for it. */
    if (a.n > remaining(c) / min_elem_bytes(a.type))
        return SPEC_E_TRUNCATED;

    if (a.type == GGUF_TYPE_STRING) {
        struct gguf_str *strs = a.n ? calloc((size_t)a.n, sizeof *strs) : NULL;
        if (a.n && !strs)
            return SPEC_E_NOMEM;
        for (uint64_t i = 0; i < a.n && rc == 0; i++)
            rc = rd_str(c, UINT64_MAX, &strs[i]);
        if (rc < 0) {
            free(strs);
            return rc;
        }
        a.strs = strs;
    } else if (a.type == GGUF_TYPE_ARRAY) {
        /* calloc: items not yet read are zero (UINT8), which array_free skips. */
        struct gguf_value *items = a.n ? calloc((size_t)a.n, sizeof *items) : NULL;
        if (a.n && !items)
            return SPEC_E_NOMEM;
        for (uint64_t i = 0; i < a.n && rc == 0; i++)
            rc = rd_value(c, GGUF_TYPE_ARRAY, depth, &items[i]);
        a.items = items;
        if (rc < 0) {
            array_free(&a);
            return rc;
        }
    } else {
        const uint8_t *p;
        rc = rd_bytes(c, a.n * gguf_type_size(a.type), &p);
        if (rc < 0)
            return rc;
        if (a.type == GGUF_TYPE_BOOL)
            for (uint64_t i = 0; i < a.n; i++)
                if (p[i] > 1)
                    return SPEC_E_FORMAT;
        a.raw = p;
    }
    *out = a;
    return 0;
}

static int parse_header(struct gguf *g, struct cursor *c, uint64_t *n_tensors, uint64_t *n_kv)
{
    static const uint8_t magic[4] = {'G', 'G', 'U', 'F'};
    /* Compare what is there first, so a short non-GGUF file reads as "not GGUF" rather than "truncated". */
    size_t have = c->size < 4 ? c->size : 4;
    if (have && memcmp(c->base, magic, have) != 0)
        return SPEC_E_BAD_MAGIC;
    const uint8_t *p;
    int rc = rd_bytes(c, 4, &p);
    if (rc < 0 || (rc = rd_u32(c, &g->version)) < 0)
        return rc;
    if (g->version != 2 && g->version != 3) {
        /* A big-endian file's version reads as 0x0N000000 here (llama.cpp's test too). */
        if (g->version != 0 && (g->version & 0xFFFFu) == 0)
            return SPEC_E_UNSUPPORTED;
        return SPEC_E_VERSION;
    }
    if ((rc = rd_u64(c, n_tensors)) < 0 || (rc = rd_u64(c, n_kv)) < 0)
        return rc;
    if (*n_kv > remaining(c) / MIN_KV_BYTES || *n_tensors > remaining(c) / MIN_TENSOR_INFO_BYTES)
        return SPEC_E_TRUNCATED;
    return 0;
}

static int parse_kvs(struct gguf *g, struct cursor *c, uint64_t n_kv)
{
    int rc;
    if (n_kv) {
        g->kv = calloc((size_t)n_kv, sizeof *g->kv);
        if (!g->kv)
            return SPEC_E_NOMEM;
    }
    if ((rc = index_init(&g->kv_index, n_kv, g->kv ? &g->kv[0].key : NULL, sizeof *g->kv)) < 0)
        return rc;
    for (uint64_t i = 0; i < n_kv; i++) {
        struct gguf_kv *kv = &g->kv[i];
        enum gguf_type type;
        if ((rc = rd_str(c, GGUF_MAX_KEY_LEN, &kv->key)) < 0)
            return rc;
        /* Counted now so that gguf_close frees this entry however the rest goes. */
        g->n_kv = i + 1;
        if ((rc = index_add(&g->kv_index, i)) < 0)
            return rc;
        if ((rc = rd_type(c, &type)) < 0 || (rc = rd_value(c, type, 0, &kv->value)) < 0)
            return rc;
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const struct gguf_value *a = gguf_find(g, ALIGNMENT_KEY);
    if (a) {
        if (a->type != GGUF_TYPE_UINT32)
            return SPEC_E_TYPE;
        if (a->v.u64 == 0 || (a->v.u64 & (a->v.u64 - 1)) != 0)
            return SPEC_E_ALIGNMENT;
        g->alignment = (uint32_t)a->v.u64;
    }
    return 0;
}

static int parse_tensor_info(struct gguf *g, struct cursor *c, uint64_t i)
{
    struct gguf_tensor *t = &g->tensors[i];
    uint32_t type;
    int rc;
    if ((rc = rd_str(c, GGUF_MAX_NAME_LEN, &t->name)) < 0)
        return rc;
    if ((rc = index_add(&g->tensor_index, i)) < 0)
        return rc;
    if ((rc = rd_u32(c, &t->n_dims)) < 0)
        return rc;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return SPEC_E_RANGE;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && (rc = rd_u64(c, &t->ne[d])) < 0)
            return rc;
    }
    if ((rc = rd_u32(c, &type)) < 0)
        return rc;
    if ((rc = gguf_tensor_size(type, t->n_dims, t->ne, &t->n_elems, &t->n_bytes)) < 0)
        return rc;
    t->type = (enum spec_dtype)type;
    if ((rc = rd_u64(c, &t->offset)) < 0)
        return rc;
    if (t->offset % g->alignment != 0)
        return SPEC_E_ALIGNMENT;
    return 0;
}

static int parse_tensors(struct gguf *g, struct cursor *c, uint64_t n_tensors)
{
    int rc;
    /* The kv section used some of the bytes the header check counted on. */
    if (n_tensors > remaining(c) / MIN_TENSOR_INFO_BYTES)
        return SPEC_E_TRUNCATED;
    if (n_tensors) {
        g->tensors = calloc((size_t)n_tensors, sizeof *g->tensors);
        if (!g->tensors)
            return SPEC_E_NOMEM;
    }
    g->n_tensors = n_tensors;
    if ((rc = index_init(&g->tensor_index, n_tensors, g->tensors ? &g->tensors[0].name : NULL,
                         sizeof *g->tensors)) < 0)
        return rc;
    for (uint64_t i = 0; i < n_tensors; i++)
        if ((rc = parse_tensor_info(g, c, i)) < 0)
            return rc;

    /* The data section starts at the next aligned offset (the padding may be absent when there is no
     * data); c->pos <= size < 2^64 - alignment, so this cannot wrap. */
    g->data_offset = ((uint64_t)c->pos + g->alignment - 1) / g->alignment * g->alignment;
    for (uint64_t i = 0; i < n_tensors; i++) {
        struct gguf_tensor *t = &g->tensors[i];
        if (t->offset > UINT64_MAX - g->data_offset)
            return SPEC_E_RANGE;
        uint64_t start = g->data_offset + t->offset;
        if (t->n_bytes > UINT64_MAX - start)
            return SPEC_E_RANGE;
        if (start > g->size || t->n_bytes > g->size - start)
            return SPEC_E_TRUNCATED;
        t->data = g->base + start;
    }
    return 0;
}

static int parse(struct gguf *g)
{
    struct cursor c = {g->base, g->size, 0};
    uint64_t n_tensors, n_kv;
    int rc = parse_header(g, &c, &n_tensors, &n_kv);
    if (rc == 0)
        rc = parse_kvs(g, &c, n_kv);
    if (rc == 0)
        rc = parse_tensors(g, &c, n_tensors);
    return rc;
}

static void gguf_free_parsed(struct gguf *g)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        value_free(&g->kv[i].value);
    free(g->kv);
    free(g->tensors);
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
}

static int open_buffer(const void *data, size_t size, bool mapped, struct gguf **out)
{
    struct gguf *g = calloc(1, sizeof *g);
    if (!g)
        return SPEC_E_NOMEM;
    g->base = data;
    g->size = size;
    g->mapped = mapped;
    int rc = parse(g);
    if (rc < 0) {
        gguf_free_parsed(g);
        free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int gguf_open_memory(const void *data, size_t size, struct gguf **out)
{
    if (!out || (!data && size))
        return SPEC_E_INVALID_ARG;
    return open_buffer(data, size, false, out);
}

int gguf_open(const char *path, struct gguf **out)
{
    if (!path || !out)
        return SPEC_E_INVALID_ARG;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SPEC_E_IO;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return SPEC_E_IO;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return SPEC_E_RANGE;
    }
    size_t size = (size_t)st.st_size;
    /* mmap rejects length 0; an empty file is simply a truncated one. */
    void *map = NULL;
    if (size) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return SPEC_E_IO;
        }
    }
    close(fd);
    int rc = open_buffer(map, size, size != 0, out);
    if (rc < 0 && map)
        munmap(map, size);
    return rc;
}

void gguf_close(struct gguf *g)
{
    if (!g)
        return;
    gguf_free_parsed(g);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(g);
}

/* ---------------------------------------------------------------------------------------------- */
/* Accessors                                                                                       */

uint32_t gguf_version(const struct gguf *g)
{
    return g->version;
}

uint32_t gguf_alignment(const struct gguf *g)
{
    return g->alignment;
}

uint64_t gguf_data_offset(const struct gguf *g)
{
    return g->data_offset;
}

uint64_t gguf_kv_count(const struct gguf *g)
{
    return g->n_kv;
}

const struct gguf_kv *gguf_kv_at(const struct gguf *g, uint64_t i)
{
    return i < g->n_kv ? &g->kv[i] : NULL;
}

const struct gguf_value *gguf_find(const struct gguf *g, const char *key)
{
    uint64_t slot = index_find(&g->kv_index, key);
    return slot ? &g->kv[slot - 1].value : NULL;
}

uint64_t gguf_tensor_count(const struct gguf *g)
{
    return g->n_tensors;
}

const struct gguf_tensor *gguf_tensor_at(const struct gguf *g, uint64_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name)
{
    uint64_t slot = index_find(&g->tensor_index, name);
    return slot ? &g->tensors[slot - 1] : NULL;
}

static bool is_uint(enum gguf_type t)
{
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_UINT64;
}

static bool is_sint(enum gguf_type t)
{
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
}

static int find_typed(const struct gguf *g, const char *key, const struct gguf_value **out)
{
    if (!g || !key)
        return SPEC_E_INVALID_ARG;
    *out = gguf_find(g, key);
    return *out ? 0 : SPEC_E_NOT_FOUND;
}

/* An integer value as unsigned, if it lies in [0, max]. */
static int get_uint(const struct gguf *g, const char *key, uint64_t max, uint64_t *out)
{
    const struct gguf_value *v;
    int rc = find_typed(g, key, &v);
    if (rc < 0)
        return rc;
    if (is_uint(v->type)) {
        if (v->v.u64 > max)
            return SPEC_E_RANGE;
        *out = v->v.u64;
    } else if (is_sint(v->type)) {
        if (v->v.i64 < 0 || (uint64_t)v->v.i64 > max)
            return SPEC_E_RANGE;
        *out = (uint64_t)v->v.i64;
    } else {
        return SPEC_E_TYPE;
    }
    return 0;
}

int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out)
{
    uint64_t x;
    int rc = get_uint(g, key, UINT32_MAX, &x);
    if (rc == 0)
        *out = (uint32_t)x;
    return rc;
}

int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out)
{
    return get_uint(g, key, UINT64_MAX, out);
}

int gguf_get_i32(const struct gguf *g, const char *key, int32_t *out)
{
    const struct gguf_value *v;
    int rc = find_typed(g, key, &v);
    if (rc < 0)
        return rc;
    if (is_uint(v->type)) {
        if (v->v.u64 > INT32_MAX)
            return SPEC_E_RANGE;
        *out = (int32_t)v->v.u64;
    } else if (is_sint(v->type)) {
        if (v->v.i64 < INT32_MIN || v->v.i64 > INT32_MAX)
            return SPEC_E_RANGE;
        *out = (int32_t)v->v.i64;
    } else {
        return SPEC_E_TYPE;
    }
    return 0;
}

/* A double to float without the undefined behaviour of converting an out-of-range finite value. */
static int to_f32(double d, float *out)
{
    if (isfinite(d) && fabs(d) > FLT_MAX)
        return SPEC_E_RANGE;
    *out = (float)d;
    return 0;
}

int gguf_get_f32(const struct gguf *g, const char *key, float *out)
{
    const struct gguf_value *v;
    int rc = find_typed(g, key, &v);
    if (rc < 0)
        return rc;
    if (v->type != GGUF_TYPE_FLOAT32 && v->type != GGUF_TYPE_FLOAT64)
        return SPEC_E_TYPE;
    return to_f32(v->v.f64, out);
}

int gguf_get_bool(const struct gguf *g, const char *key, bool *out)
{
    const struct gguf_value *v;
    int rc = find_typed(g, key, &v);
    if (rc < 0)
        return rc;
    if (v->type != GGUF_TYPE_BOOL)
        return SPEC_E_TYPE;
    *out = v->v.b;
    return 0;
}

int gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out)
{
    const struct gguf_value *v;
    int rc = find_typed(g, key, &v);
    if (rc < 0)
        return rc;
    if (v->type != GGUF_TYPE_STRING)
        return SPEC_E_TYPE;
    *out = v->v.str;
    return 0;
}

int gguf_get_arr(const struct gguf *g, const char *key, enum gguf_type elem_type, const struct gguf_array **out)
{
    const struct gguf_value *v;
    int rc = find_typed(g, key, &v);
    if (rc < 0)
        return rc;
    if (v->type != GGUF_TYPE_ARRAY || (elem_type != GGUF_TYPE_COUNT && v->v.arr.type != elem_type))
        return SPEC_E_TYPE;
    *out = &v->v.arr;
    return 0;
}

/* Element i of a numeric (not bool) array. */
static int arr_elem(const struct gguf_array *a, uint64_t i, struct gguf_value *out)
{
    if (!a || !out)
        return SPEC_E_INVALID_ARG;
    size_t sz = gguf_type_size(a->type);
    if (sz == 0 || a->type == GGUF_TYPE_BOOL)
        return SPEC_E_TYPE;
    if (i >= a->n)
        return SPEC_E_RANGE;
    *out = decode_scalar(a->type, (const uint8_t *)a->raw + i * sz);
    return 0;
}

int gguf_arr_get_i64(const struct gguf_array *a, uint64_t i, int64_t *out)
{
    struct gguf_value v;
    int rc = arr_elem(a, i, &v);
    if (rc < 0)
        return rc;
    if (is_uint(v.type)) {
        if (v.v.u64 > INT64_MAX)
            return SPEC_E_RANGE;
        *out = (int64_t)v.v.u64;
    } else if (is_sint(v.type)) {
        *out = v.v.i64;
    } else {
        return SPEC_E_TYPE;
    }
    return 0;
}

int gguf_arr_get_f32(const struct gguf_array *a, uint64_t i, float *out)
{
    struct gguf_value v;
    int rc = arr_elem(a, i, &v);
    if (rc < 0)
        return rc;
    if (is_uint(v.type))
        *out = (float)v.v.u64;
    else if (is_sint(v.type))
        *out = (float)v.v.i64;
    else
        return to_f32(v.v.f64, out);
    return 0;
}
