/* Re-encoding a GGUF's matrices as another type, as llama-quantize does: every tensor of two or more
 * dimensions whose rows fit the type's blocks is dequantised and quantised again; the rest (norms,
 * biases) and all metadata are kept, and general.file_type names the new type. Tensors stream from
 * the input mapping through the writer's row callbacks, so a file larger than memory converts. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/model.h"

/* llama.cpp's llama_ftype for a file whose matrices are all of one type (the K-quants as their
 * plain _S variant). */
static int llama_ftype(enum spec_dtype type)
{
    switch (type) {
    case SPEC_F32: return 0;
    case SPEC_F16: return 1;
    case SPEC_Q4_0: return 2;
    case SPEC_Q4_1: return 3;
    case SPEC_Q8_0: return 7;
    case SPEC_Q5_0: return 8;
    case SPEC_Q4_K: return 14;
    case SPEC_Q6_K: return 18;
    case SPEC_BF16: return 32;
    default: return -1;
    }
}

struct conv_tensor {
    const struct gguf_tensor *src;
    enum spec_dtype type; /* in the output */
    uint64_t src_row_bytes, dst_row_bytes;
    float *scratch;       /* one row, shared by all tensors (rows are produced one tensor at a time) */
};

static int convert_rows(void *ctx, uint64_t row0, uint64_t n, void *buf)
{
    const struct conv_tensor *ct = ctx;
    const int64_t ne0 = (int64_t)ct->src->ne[0];
    const uint8_t *src = (const uint8_t *)ct->src->data + row0 * ct->src_row_bytes;
    uint8_t *dst = buf;
    if (ct->type == ct->src->type) {
        memcpy(dst, src, (size_t)(n * ct->src_row_bytes));
        return 0;
    }
    for (uint64_t r = 0; r < n; r++, src += ct->src_row_bytes, dst += ct->dst_row_bytes) {
        /* F32 rows are dequantised in place: the result is exactly ggml's dequantised values. */
        float *row = ct->type == SPEC_F32 ? (float *)(void *)dst : ct->scratch;
        int err = kern_dequantize_row(ct->src->type, src, row, ne0);
        if (!err && ct->type != SPEC_F32)
            err = kern_quantize_row(ct->type, row, dst, ne0);
        if (err)
            return err;
    }
    return 0;
}

static int fail(char *why, size_t why_cap, int err, const char *fmt, ...)
{
    if (why && why_cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_cap, fmt, ap);
        va_end(ap);
    }
    return err;
}

/* Dimensions as ggml_n_dims() counts them: trailing ones do not count, so a [n, 1] tensor is 1-D. */
static uint32_t real_dims(const struct gguf_tensor *t)
{
    uint32_t d = t->n_dims;
    while (d > 1 && t->ne[d - 1] == 1)
        d--;
    return d;
}

/* Chooses each tensor's output type and sizes its rows; *widest gets the longest row converted. */
static int plan(const struct gguf *g, enum spec_dtype type, struct conv_tensor *cts, int64_t *widest, char *why,
                size_t why_cap)
{
    const uint32_t block = kern_dtype_info(type)->block_size;
    *widest = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        struct conv_tensor *ct = &cts[i];
        ct->src = t;
        ct->type = real_dims(t) >= 2 && t->ne[0] % block == 0 ? type : t->type;
        const struct kern_dtype_info *info = kern_dtype_info(t->type), *out = kern_dtype_info(ct->type);
        const uint64_t rows = t->ne[0] ? t->n_elems / t->ne[0] : 0;
        ct->src_row_bytes = rows ? t->n_bytes / rows : 0;
        ct->dst_row_bytes = t->ne[0] / out->block_size * out->type_size;
        if (ct->type == t->type)
            continue;
        if (!info->cpu)
            return fail(why, why_cap, SPEC_E_UNSUPPORTED, "tensor %.*s: type %s cannot be dequantised here",
                        (int)t->name.len, t->name.ptr, info->name);
        if ((int64_t)t->ne[0] > *widest)
            *widest = (int64_t)t->ne[0];
    }
    return 0;
}

static int build(const struct gguf *g, enum spec_dtype type, struct conv_tensor *cts, struct gguf_writer *w,
                 char *why, size_t why_cap)
{
    int err = 0;
    char name[GGUF_MAX_NAME_LEN + 1];
    for (uint64_t i = 0; i < gguf_kv_count(g) && !err; i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        char *key = gguf_str_dup(kv->key);
        err = key ? gguf_writer_set(w, key, &kv->value) : SPEC_E_NOMEM;
        if (err)
            fail(why, why_cap, err, "copying metadata key %s", key ? key : "?");
        free(key);
    }
    if (!err && (err = gguf_writer_set_u32(w, "general.file_type", (uint32_t)llama_ftype(type))))
        fail(why, why_cap, err, "setting general.file_type");
    for (uint64_t i = 0; i < gguf_tensor_count(g) && !err; i++) {
        const struct gguf_tensor *t = cts[i].src;
        /* The reader bounds names by GGUF_MAX_NAME_LEN. */
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        if ((err = gguf_writer_add_tensor_rows(w, name, cts[i].type, t->n_dims, t->ne, convert_rows, &cts[i])))
            fail(why, why_cap, err, "adding tensor %s", name);
    }
    return err;
}

int model_convert(const char *in_path, const char *out_path, enum spec_dtype type, char *why, size_t why_cap)
{
    if (why && why_cap)
        why[0] = '\0';
    if (!in_path || !out_path)
        return fail(why, why_cap, SPEC_E_INVALID_ARG, "no input or output path");
    if (llama_ftype(type) < 0) {
        const struct kern_dtype_info *info = kern_dtype_info((uint32_t)type);
        return fail(why, why_cap, SPEC_E_UNSUPPORTED, "cannot convert to type %s", info ? info->name : "(unknown)");
    }
    struct gguf *g;
    int err = gguf_open(in_path, &g);
    if (err)
        return fail(why, why_cap, err, "%s is not a readable GGUF: %s", in_path, spec_strerror(err));

    const uint64_t n = gguf_tensor_count(g);
    struct conv_tensor *cts = calloc(n ? (size_t)n : 1, sizeof *cts);
    struct gguf_writer *w = NULL;
    char *part = malloc(strlen(out_path) + sizeof ".part");
    int64_t widest = 0;
    err = cts && part ? plan(g, type, cts, &widest, why, why_cap) : SPEC_E_NOMEM;
    float *scratch = err ? NULL : malloc(sizeof(float) * (size_t)(widest ? widest : 1));
    if (!err && !scratch)
        err = SPEC_E_NOMEM;
    for (uint64_t i = 0; i < n && !err; i++)
        cts[i].scratch = scratch;
    if (!err && (err = gguf_writer_new(gguf_version(g), &w)))
        fail(why, why_cap, err, "GGUF version %u cannot be written", gguf_version(g));
    if (!err)
        err = build(g, type, cts, w, why, why_cap);
    /* Written beside the target and renamed, so a failed or interrupted run never leaves a file that
     * looks finished, and converting a file onto itself never truncates the mapping being read. */
    if (!err) {
        sprintf(part, "%s.part", out_path);
        if ((err = gguf_writer_write_file(w, part)))
            fail(why, why_cap, err, "writing %s", part);
        else if (rename(part, out_path) != 0) {
            remove(part);
            err = fail(why, why_cap, SPEC_E_IO, "renaming %s to %s", part, out_path);
        }
    }
    if (err == SPEC_E_NOMEM && why && why_cap && !why[0])
        fail(why, why_cap, err, "out of memory");
    gguf_writer_free(w);
    free(scratch);
    free(part);
    free(cts);
    gguf_close(g);
    return err;
}
