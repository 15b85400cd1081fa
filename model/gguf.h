/* GGUF v2/v3 reader (mmap, fully validated) and writer.
 *
 * The reader never trusts the file: every count, length, type, dimension and offset is checked
 * against the file size and for overflow before use; a bad file yields a named error, never a crash.
 * Strings point into the mapping and are NOT NUL-terminated: use gguf_str_eq()/gguf_str_dup(). */
#ifndef SPECD_MODEL_GGUF_H
#define SPECD_MODEL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
/* Reader and writer limits: the spec's key limit, llama.cpp's tensor name limit (GGML_MAX_NAME 64
 * including the NUL), and a nesting bound for arrays of arrays (a top-level array is depth 1). */
#define GGUF_MAX_KEY_LEN 65535
#define GGUF_MAX_NAME_LEN 63
#define GGUF_MAX_ARRAY_DEPTH 8

enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT = 13,
};

struct gguf_str {
    uint64_t len;
    const char *ptr; /* not NUL-terminated */
};

struct gguf_value;

struct gguf_array {
    enum gguf_type type;          /* element type */
    uint64_t n;                   /* element count */
    const void *raw;              /* numeric/bool elements: packed little-endian in the file, maybe unaligned */
    const struct gguf_str *strs;  /* GGUF_TYPE_STRING elements, n of them */
    const struct gguf_value *items; /* GGUF_TYPE_ARRAY elements (nested arrays), n of them */
};

struct gguf_value {
    enum gguf_type type;
    union {
        uint64_t u64; /* UINT8/16/32/64 */
        int64_t i64;  /* INT8/16/32/64 */
        double f64;   /* FLOAT32/64 */
        bool b;
        struct gguf_str str;
        struct gguf_array arr;
    } v;
};

struct gguf_kv {
    struct gguf_str key;
    struct gguf_value value;
};

/* Dimensions may be 0 (an empty tensor, n_bytes 0), as ggml allows; n_dims is 1..4. */
struct gguf_tensor {
    struct gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    enum spec_dtype type;
    uint64_t offset;   /* relative to the data section, aligned */
    uint64_t n_elems;
    uint64_t n_bytes;
    const void *data;  /* inside the mapping, verified to lie within the file */
};

struct gguf;

/* Open and validate a file (mmap). *out is set only on success.
 * Errors: SPEC_E_IO (open/mmap), SPEC_E_BAD_MAGIC, SPEC_E_VERSION (not v2/v3), SPEC_E_UNSUPPORTED
 * (byte-swapped version: a big-endian file; unknown tensor type), SPEC_E_TRUNCATED (a count, string,
 * array or tensor extends past the end), SPEC_E_RANGE (limits, n_dims, overflowing sizes or offsets),
 * SPEC_E_FORMAT (bad value type, bool not 0/1), SPEC_E_DUPLICATE, SPEC_E_TYPE (general.alignment not a
 * u32), SPEC_E_ALIGNMENT (alignment not a power of two, tensor offset not aligned), SPEC_E_NOMEM.
 * Tensors may overlap and need not be packed; each must lie inside the file. */
int gguf_open(const char *path, struct gguf **out);
/* Parse a buffer in memory, which the caller keeps alive and unchanged until gguf_close(). */
int gguf_open_memory(const void *data, size_t size, struct gguf **out);
void gguf_close(struct gguf *g);

uint32_t gguf_version(const struct gguf *g);
uint32_t gguf_alignment(const struct gguf *g);
uint64_t gguf_data_offset(const struct gguf *g); /* start of the tensor data section in the file */

uint64_t gguf_kv_count(const struct gguf *g);
const struct gguf_kv *gguf_kv_at(const struct gguf *g, uint64_t i);
/* NULL when absent. */
const struct gguf_value *gguf_find(const struct gguf *g, const char *key);

/* Typed getters: SPEC_E_NOT_FOUND when absent, SPEC_E_TYPE when the stored type cannot represent
 * the request (any integer type is accepted if the value fits, else SPEC_E_RANGE; bool is not an
 * integer; float getters accept F32/F64, SPEC_E_RANGE for a finite F64 beyond float range). */
int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out);
int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out);
int gguf_get_i32(const struct gguf *g, const char *key, int32_t *out);
int gguf_get_f32(const struct gguf *g, const char *key, float *out);
int gguf_get_bool(const struct gguf *g, const char *key, bool *out);
int gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out);
/* elem_type GGUF_TYPE_COUNT accepts any element type. */
int gguf_get_arr(const struct gguf *g, const char *key, enum gguf_type elem_type, const struct gguf_array **out);

/* Element access for numeric arrays, bounds-checked (SPEC_E_RANGE). _i64 takes integer elements
 * (SPEC_E_RANGE for a u64 above INT64_MAX); _f32 takes integer and float elements. Others: SPEC_E_TYPE. */
int gguf_arr_get_i64(const struct gguf_array *a, uint64_t i, int64_t *out);
int gguf_arr_get_f32(const struct gguf_array *a, uint64_t i, float *out);

uint64_t gguf_tensor_count(const struct gguf *g);
const struct gguf_tensor *gguf_tensor_at(const struct gguf *g, uint64_t i);
const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name);

bool gguf_str_eq(struct gguf_str s, const char *cstr);
/* malloc'd NUL-terminated copy, NULL on allocation failure; caller frees. */
char *gguf_str_dup(struct gguf_str s);
const char *gguf_type_name(enum gguf_type t);
/* Bytes of one numeric/bool value in a file; 0 for STRING, ARRAY and unknown types. */
size_t gguf_type_size(enum gguf_type t);
/* Validate a tensor shape as the reader does and size it: SPEC_E_RANGE for n_dims outside 1..4, a
 * dimension above INT64_MAX, ne[0] not a multiple of the block size or an overflowing size;
 * SPEC_E_UNSUPPORTED for an unknown type. Out-params set only on success. */
int gguf_tensor_size(uint32_t type, uint32_t n_dims, const uint64_t *ne, uint64_t *n_elems, uint64_t *n_bytes);

/* ---------------------------------------------------------------------------------------------- */
/* Writer: collects metadata and tensors in memory (copies everything, except the tensors whose rows a
 * callback produces at write time), then writes a file.
 * Keys keep their first insertion order; setting an existing key replaces its value in place.
 * Tensor data is laid out in insertion order, each tensor at an aligned offset and zero-padded to
 * the alignment (the last one too, as llama.cpp expects). Numeric inputs are in host byte order,
 * which must be little-endian. */

struct gguf_writer;

int gguf_writer_new(uint32_t version, struct gguf_writer **out); /* version 2 or 3 */
void gguf_writer_free(struct gguf_writer *w);

/* Any value, nested arrays included (what the reader returns can be written back). Setting
 * "general.alignment" (a u32, else SPEC_E_TYPE) is the same as gguf_writer_set_alignment().
 * SPEC_E_INVALID_ARG for a bad type, a scalar outside its type's range, a bool array byte not 0/1 or
 * a NULL pointer with n > 0; SPEC_E_RANGE for a key over GGUF_MAX_KEY_LEN or arrays nested over
 * GGUF_MAX_ARRAY_DEPTH. */
int gguf_writer_set(struct gguf_writer *w, const char *key, const struct gguf_value *v);
int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v);
/* Numeric/bool array: `data` holds n packed elements of elem_type. */
int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_type elem_type, const void *data,
                        uint64_t n);
int gguf_writer_set_str_arr(struct gguf_writer *w, const char *key, const char *const *strs, uint64_t n);
/* `general.alignment` is written as a u32 key when not the default (SPEC_E_ALIGNMENT unless a power of two). */
int gguf_writer_set_alignment(struct gguf_writer *w, uint32_t alignment);

/* data holds the whole tensor: n_bytes must equal the size implied by type and dims (else
 * SPEC_E_INVALID_ARG). Shape errors as gguf_tensor_size(); SPEC_E_RANGE for a name over
 * GGUF_MAX_NAME_LEN, SPEC_E_DUPLICATE for a name already added. */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum spec_dtype type, uint32_t n_dims,
                           const uint64_t *ne, const void *data, uint64_t n_bytes);

/* Fills buf with rows [row0, row0 + n) of a tensor (a row is ne[0] elements, packed); 0 or a negative
 * spec_err, which aborts the write and is returned by it. */
typedef int (*gguf_rows_fn)(void *ctx, uint64_t row0, uint64_t n, void *buf);

/* As gguf_writer_add_tensor(), but nothing is copied: while a file or buffer is written, rows(ctx, ...)
 * produces the data in row order (for a file, a few MiB at a time; for a buffer, all rows in one
 * call), so a file can be larger than memory. ctx must stay valid until the writer is freed and rows
 * must give the same bytes on every call. SPEC_E_INVALID_ARG for a NULL rows. */
int gguf_writer_add_tensor_rows(struct gguf_writer *w, const char *name, enum spec_dtype type, uint32_t n_dims,
                                const uint64_t *ne, gguf_rows_fn rows, void *ctx);

/* SPEC_E_IO on any write error, or a rows callback's error, after removing the partial file. */
int gguf_writer_write_file(const struct gguf_writer *w, const char *path);
/* *out is malloc'd; caller frees. A rows callback's error is returned. */
int gguf_writer_write_memory(const struct gguf_writer *w, void **out, size_t *size);

#endif
