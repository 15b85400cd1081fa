/* libFuzzer harness for the GGUF reader (not built by `make`: it needs clang's -fsanitize=fuzzer).
 *
 *   clang -std=c11 -g -O1 -I. -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *       tools/fuzz/fuzz_gguf.c common/err.c kernels/dtype.c model/gguf.c model/gguf_write.c -lm -o fuzz_gguf
 *   ./fuzz_gguf -max_total_time=60 corpus/
 *
 * Any input must either parse or fail with a named error; an accepted file must expose only memory
 * inside the input (AddressSanitizer checks the walk below) and must write back to a file that the
 * reader accepts again. */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/gguf.h"

static volatile uint64_t sink;

static void walk_value(const struct gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < v->v.str.len; i++)
            sink += (uint8_t)v->v.str.ptr[i];
    } else if (v->type == GGUF_TYPE_ARRAY) {
        const struct gguf_array *a = &v->v.arr;
        for (uint64_t i = 0; i < a->n; i++) {
            float f;
            if (a->type == GGUF_TYPE_STRING)
                walk_value(&(struct gguf_value){.type = GGUF_TYPE_STRING, .v.str = a->strs[i]});
            else if (a->type == GGUF_TYPE_ARRAY)
                walk_value(&a->items[i]);
            else if (gguf_arr_get_f32(a, i, &f) == 0)
                sink += (uint64_t)(f == f);
        }
    }
}

/* Writing an accepted file back must succeed and read back with the same counts. */
static void rewrite(const struct gguf *g)
{
    struct gguf_writer *w;
    if (gguf_writer_new(gguf_version(g), &w) != 0)
        abort();
    for (uint64_t i = 0; i < gguf_kv_count(g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        char *key = gguf_str_dup(kv->key);
        /* A key with an embedded NUL cannot be named through the C-string API; skip it. */
        if (key && strlen(key) == kv->key.len && gguf_writer_set(w, key, &kv->value) != 0)
            abort();
        free(key);
    }
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        char *name = gguf_str_dup(t->name);
        if (name && strlen(name) == t->name.len &&
            gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->n_bytes) != 0)
            abort();
        free(name);
    }
    void *buf;
    size_t size;
    struct gguf *again;
    if (gguf_writer_write_memory(w, &buf, &size) != 0 || gguf_open_memory(buf, size, &again) != 0)
        abort();
    gguf_close(again);
    free(buf);
    gguf_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gguf *g;
    int rc = gguf_open_memory(data, size, &g);
    if (rc != 0) {
        if (rc == SPEC_E_NOMEM || rc == SPEC_E_INVALID_ARG || rc == SPEC_E_IO)
            abort();
        return 0;
    }
    for (uint64_t i = 0; i < gguf_kv_count(g); i++)
        walk_value(&gguf_kv_at(g, i)->value);
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        for (uint64_t j = 0; j < t->n_bytes; j++)
            sink += ((const uint8_t *)t->data)[j];
    }
    /* A tensor-less file may declare a huge alignment it never pads to; the writer would pad. */
    if (gguf_alignment(g) <= 4096)
        rewrite(g);
    gguf_close(g);
    return 0;
}
