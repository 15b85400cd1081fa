/* model_convert() (specd-quantize) on synthetic models, and the GGUF writer's streamed tensors that it
 * writes with. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/model.h"

static char dir[64];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/specd-convert-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(convert, .init = setup, .fini = teardown);
TestSuite(gguf_rows, .init = setup, .fini = teardown);

static const char *tmp_path(const char *name)
{
    static char paths[16][128];
    static int next;
    char *p = paths[next++ % 16];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* A qwen2 (biases, 1-D norms) whose matrices take every block size, K-quants included. */
static struct model_synth_config synth_cfg(enum spec_dtype wtype)
{
    return (struct model_synth_config){.arch = MODEL_ARCH_QWEN2, .wtype = wtype, .n_layer = 2, .n_embd = 256,
                                       .n_head = 4, .n_head_kv = 2, .n_ff = 512, .n_vocab = 300, .n_ctx = 64,
                                       .seed = 5};
}

static const char *write_synth(const struct model_synth_config *c, const char *name)
{
    const char *path = tmp_path(name);
    cr_assert_eq(model_synth_write(c, path), 0);
    return path;
}

static void convert_ok(const char *in, const char *out, enum spec_dtype type)
{
    char why[256];
    int err = model_convert(in, out, type, why, sizeof why);
    cr_assert_eq(err, 0, "convert %s -> %s: %s: %s", in, out, spec_errname(err), why);
    char part[160];
    snprintf(part, sizeof part, "%s.part", out);
    cr_assert_not(exists(part), "%s was left behind", part);
}

static struct gguf *open_ok(const char *path)
{
    struct gguf *g;
    cr_assert_eq(gguf_open(path, &g), 0, "%s", path);
    return g;
}

static uint32_t file_type(const struct gguf *g)
{
    uint32_t ft = 999;
    cr_assert_eq(gguf_get_u32(g, "general.file_type", &ft), 0);
    return ft;
}

static void *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(*size);
    cr_assert_eq(fread(buf, 1, *size, f), *size);
    fclose(f);
    return buf;
}

/* Element j of tensor t's row r, dequantised. */
static float *dequant_tensor(const struct gguf_tensor *t)
{
    const int64_t rows = (int64_t)(t->n_elems / t->ne[0]);
    const size_t row_bytes = (size_t)(t->n_bytes / (uint64_t)rows);
    float *out = malloc(sizeof(float) * t->n_elems);
    for (int64_t r = 0; r < rows; r++)
        cr_assert_eq(kern_dequantize_row(t->type, (const char *)t->data + (size_t)r * row_bytes,
                                         out + r * (int64_t)t->ne[0], (int64_t)t->ne[0]),
                     0);
    return out;
}

/* The writer's serialisation of one key, so that values compare as the file stores them. */
static void *kv_bytes(const struct gguf_kv *kv, size_t *size)
{
    struct gguf_writer *w;
    void *buf;
    char *key = gguf_str_dup(kv->key);
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_set(w, key, &kv->value), 0);
    cr_assert_eq(gguf_writer_write_memory(w, &buf, size), 0);
    gguf_writer_free(w);
    free(key);
    return buf;
}

Test(convert, f32_holds_exactly_the_dequantized_values_of_every_type)
{
    static const enum spec_dtype types[] = {SPEC_Q4_0, SPEC_Q4_1, SPEC_Q5_0, SPEC_Q8_0, SPEC_Q4_K,
                                            SPEC_Q6_K, SPEC_F16,  SPEC_BF16};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        struct model_synth_config c = synth_cfg(types[k]);
        const char *in = write_synth(&c, "in.gguf"), *out = tmp_path("out.gguf");
        convert_ok(in, out, SPEC_F32);
        struct gguf *gi = open_ok(in), *go = open_ok(out);
        cr_assert_eq(file_type(go), 0, "ALL_F32");
        cr_assert_eq(gguf_tensor_count(go), gguf_tensor_count(gi));
        int n_converted = 0;
        for (uint64_t i = 0; i < gguf_tensor_count(gi); i++) {
            const struct gguf_tensor *ti = gguf_tensor_at(gi, i), *to = gguf_tensor_at(go, i);
            cr_assert(to->name.len == ti->name.len && memcmp(to->name.ptr, ti->name.ptr, ti->name.len) == 0);
            cr_assert_eq(to->n_dims, ti->n_dims);
            cr_assert_arr_eq(to->ne, ti->ne, sizeof ti->ne);
            cr_assert_eq(to->type, SPEC_F32, "%.*s", (int)ti->name.len, ti->name.ptr);
            if (ti->type == SPEC_F32) {
                cr_assert_eq(memcmp(to->data, ti->data, ti->n_bytes), 0);
                continue;
            }
            float *want = dequant_tensor(ti);
            cr_assert_eq(memcmp(to->data, want, sizeof(float) * ti->n_elems), 0, "%s: %.*s differs",
                         kern_dtype_info(types[k])->name, (int)ti->name.len, ti->name.ptr);
            free(want);
            n_converted++;
        }
        cr_assert_eq(n_converted, 2 + 7 * c.n_layer, "%s: token_embd, output and 7 matrices per layer",
                     kern_dtype_info(types[k])->name);
        gguf_close(gi);
        gguf_close(go);
    }
}

Test(convert, copies_every_metadata_key_in_order_and_sets_the_file_type)
{
    struct model_synth_config c = synth_cfg(SPEC_Q4_K);
    const char *in = write_synth(&c, "in.gguf"), *out = tmp_path("out.gguf");
    convert_ok(in, out, SPEC_Q8_0);
    struct gguf *gi = open_ok(in), *go = open_ok(out);
    cr_assert_eq(gguf_version(go), gguf_version(gi));
    cr_assert_null(gguf_find(gi, "general.file_type"), "the synthetic input has no file type");
    cr_assert_eq(gguf_kv_count(go), gguf_kv_count(gi) + 1);
    for (uint64_t i = 0; i < gguf_kv_count(gi); i++) {
        size_t na, nb;
        void *a = kv_bytes(gguf_kv_at(gi, i), &na), *b = kv_bytes(gguf_kv_at(go, i), &nb);
        cr_assert(na == nb && memcmp(a, b, na) == 0, "key %" PRIu64 " (%.*s) differs", i,
                  (int)gguf_kv_at(gi, i)->key.len, gguf_kv_at(gi, i)->key.ptr);
        free(a);
        free(b);
    }
    cr_assert_eq(file_type(go), 7, "MOSTLY_Q8_0");
    gguf_close(gi);
    gguf_close(go);

    /* Converting again replaces the file type in place and changes nothing else. */
    const char *again = tmp_path("again.gguf");
    convert_ok(out, again, SPEC_F16);
    go = open_ok(again);
    cr_assert_eq(file_type(go), 1, "MOSTLY_F16");
    cr_assert(gguf_str_eq(gguf_kv_at(go, gguf_kv_count(go) - 1)->key, "general.file_type"));
    gguf_close(go);
}

Test(convert, q8_0_output_is_within_half_a_step_of_the_source_and_runs)
{
    struct model_synth_config c = synth_cfg(SPEC_F32);
    const char *in = write_synth(&c, "in.gguf"), *out = tmp_path("out.gguf");
    convert_ok(in, out, SPEC_Q8_0);
    struct gguf *gi = open_ok(in), *go = open_ok(out);
    for (uint64_t i = 0; i < gguf_tensor_count(go); i++) {
        const struct gguf_tensor *ti = gguf_tensor_at(gi, i), *to = gguf_tensor_at(go, i);
        cr_assert_eq(to->type, to->n_dims >= 2 ? SPEC_Q8_0 : SPEC_F32, "%.*s", (int)to->name.len, to->name.ptr);
        if (to->type != SPEC_Q8_0)
            continue;
        /* Each block of 32 has a step d = max|x| / 127 (stored as fp16, so up to 2^-11 off): every
         * value comes back within d/2 + 127 * d * 2^-11. */
        const float *x = ti->data;
        float *y = dequant_tensor(to);
        for (uint64_t b = 0; b < ti->n_elems; b += 32) {
            float amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(x[b + j]));
            const float d = amax / 127;
            for (int j = 0; j < 32; j++)
                cr_assert_leq(fabsf(y[b + j] - x[b + j]), 0.57f * d, "%.*s[%" PRIu64 "]: %g for %g",
                              (int)to->name.len, to->name.ptr, b + j, y[b + j], x[b + j]);
        }
        free(y);
    }
    gguf_close(gi);
    gguf_close(go);

    struct kern_backend *be;
    struct model *m;
    struct model_seq *s;
    cr_assert_eq(kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = 1}, &be), 0);
    cr_assert_eq(model_load(out, be, &m), 0);
    cr_assert_eq(model_seq_new(m, 0, &s), 0);
    const int32_t prompt[] = {1, 77, 260, 5, 299, 42, 42, 180};
    float *logits = malloc(sizeof(float) * (size_t)c.n_vocab);
    cr_assert_eq(model_forward_last(m, s, prompt, sizeof prompt / sizeof prompt[0], logits), 0);
    for (int i = 0; i < c.n_vocab; i++)
        cr_assert(isfinite(logits[i]));
    free(logits);
    model_seq_free(s);
    model_free(m);
    kern_backend_destroy(be);
}

Test(convert, keeps_matrices_whose_rows_do_not_fit_the_blocks)
{
    /* ffn_down's rows are n_ff = 320 long: not a multiple of Q4_K's 256. */
    struct model_synth_config c = synth_cfg(SPEC_F32);
    c.n_ff = 320;
    const char *in = write_synth(&c, "in.gguf"), *out = tmp_path("out.gguf");
    convert_ok(in, out, SPEC_Q4_K);
    struct gguf *go = open_ok(out);
    cr_assert_eq(gguf_find_tensor(go, "blk.0.ffn_down.weight")->type, SPEC_F32);
    cr_assert_eq(gguf_find_tensor(go, "blk.0.ffn_up.weight")->type, SPEC_Q4_K);
    cr_assert_eq(gguf_find_tensor(go, "blk.1.attn_q.weight")->type, SPEC_Q4_K);
    cr_assert_eq(file_type(go), 14, "MOSTLY_Q4_K_S");
    gguf_close(go);
    struct kern_backend *be;
    struct model *m;
    cr_assert_eq(kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = 1}, &be), 0);
    cr_assert_eq(model_load(out, be, &m), 0, "the mixed-type file loads");
    model_free(m);
    kern_backend_destroy(be);
}

Test(convert, a_matrix_of_one_row_counts_as_1d_as_in_ggml)
{
    struct gguf_writer *w;
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)i / 7;
    const uint64_t one_row[2] = {32, 1}, two_rows[2] = {32, 2};
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "one_row", SPEC_F32, 2, one_row, x, 32 * sizeof(float)), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "two_rows", SPEC_F32, 2, two_rows, x, sizeof x), 0);
    const char *in = tmp_path("in.gguf"), *out = tmp_path("out.gguf");
    cr_assert_eq(gguf_writer_write_file(w, in), 0);
    gguf_writer_free(w);
    convert_ok(in, out, SPEC_Q8_0);
    struct gguf *go = open_ok(out);
    cr_assert_eq(gguf_find_tensor(go, "one_row")->type, SPEC_F32);
    cr_assert_eq(gguf_find_tensor(go, "one_row")->n_dims, 2);
    cr_assert_eq(gguf_find_tensor(go, "two_rows")->type, SPEC_Q8_0);
    gguf_close(go);
}

Test(convert, is_deterministic_and_can_replace_its_own_input)
{
    struct model_synth_config c = synth_cfg(SPEC_Q4_1);
    const char *in = write_synth(&c, "in.gguf"), *a = tmp_path("a.gguf"), *b = tmp_path("b.gguf");
    convert_ok(in, a, SPEC_F16);
    convert_ok(in, b, SPEC_F16);
    /* In place: the input is still mapped while the output is written. */
    convert_ok(in, in, SPEC_F16);
    size_t na, nb, ni;
    void *da = read_all(a, &na), *db = read_all(b, &nb), *di = read_all(in, &ni);
    cr_assert(na == nb && memcmp(da, db, na) == 0, "two conversions differ");
    cr_assert(na == ni && memcmp(da, di, na) == 0, "the in-place conversion differs");
    free(da);
    free(db);
    free(di);
}

Test(convert, bad_input_gives_a_named_error_and_no_output)
{
    char why[256];
    const char *out = tmp_path("out.gguf");
    struct model_synth_config c = synth_cfg(SPEC_Q8_0);
    const char *good = write_synth(&c, "good.gguf");

    cr_assert_eq(model_convert(tmp_path("missing.gguf"), out, SPEC_F32, why, sizeof why), SPEC_E_IO);
    cr_assert_not_null(strstr(why, "missing.gguf"), "%s", why);

    const char *junk = tmp_path("junk.gguf");
    FILE *f = fopen(junk, "wb");
    fputs("this is not a gguf file at all", f);
    fclose(f);
    cr_assert_eq(model_convert(junk, out, SPEC_F32, why, sizeof why), SPEC_E_BAD_MAGIC);
    cr_assert_not_null(strstr(why, "junk.gguf"), "%s", why);

    /* No quantiser, or not a type a model can hold. */
    cr_assert_eq(model_convert(good, out, SPEC_Q5_1, why, sizeof why), SPEC_E_UNSUPPORTED);
    cr_assert_not_null(strstr(why, "Q5_1"), "%s", why);
    cr_assert_eq(model_convert(good, out, SPEC_Q8_K, why, sizeof why), SPEC_E_UNSUPPORTED);
    cr_assert_eq(model_convert(good, out, (enum spec_dtype)4, why, sizeof why), SPEC_E_UNSUPPORTED);

    /* A matrix of a type the kernels cannot dequantise (IQ4_NL): named. */
    struct gguf_writer *w;
    const uint64_t ne[2] = {32, 2};
    uint8_t blocks[2 * 18] = {0};
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "odd.weight", SPEC_IQ4_NL, 2, ne, blocks, sizeof blocks), 0);
    const char *odd = tmp_path("odd.gguf");
    cr_assert_eq(gguf_writer_write_file(w, odd), 0);
    gguf_writer_free(w);
    cr_assert_eq(model_convert(odd, out, SPEC_F32, why, sizeof why), SPEC_E_UNSUPPORTED);
    cr_assert_not_null(strstr(why, "odd.weight"), "%s", why);
    cr_assert_not_null(strstr(why, "IQ4_NL"), "%s", why);

    /* An output that cannot be written. */
    cr_assert_eq(model_convert(good, "/nonexistent-dir/out.gguf", SPEC_F32, why, sizeof why), SPEC_E_IO);
    cr_assert_not_null(strstr(why, "/nonexistent-dir/out.gguf"), "%s", why);

    cr_assert_eq(model_convert(NULL, out, SPEC_F32, NULL, 0), SPEC_E_INVALID_ARG);
    cr_assert_not(exists(out), "a failed conversion left %s", out);
}

/* ---------------------------------------------------------------------------------------------- */
/* Streamed tensors in the writer                                                                 */

/* Rows of a float tensor whose element (r, j) is r * 1000 + j; fails at row fail_row if >= 0. */
struct pattern {
    uint64_t ne0;
    int64_t fail_row;
    int calls;
};

static int pattern_rows(void *ctx, uint64_t row0, uint64_t n, void *buf)
{
    struct pattern *p = ctx;
    float *out = buf;
    p->calls++;
    for (uint64_t r = row0; r < row0 + n; r++) {
        if ((int64_t)r == p->fail_row)
            return SPEC_E_NUMERIC;
        for (uint64_t j = 0; j < p->ne0; j++)
            *out++ = (float)(r * 1000 + j);
    }
    return 0;
}

Test(gguf_rows, a_streamed_tensor_writes_the_same_bytes_as_a_copied_one)
{
    /* 6 MB: more than one of the file writer's chunks. */
    const uint64_t ne[2] = {1000, 1500};
    struct pattern p = {.ne0 = ne[0], .fail_row = -1};
    float *data = malloc(sizeof(float) * ne[0] * ne[1]);
    cr_assert_eq(pattern_rows(&p, 0, ne[1], data), 0);
    struct gguf_writer *copied, *streamed;
    cr_assert_eq(gguf_writer_new(3, &copied), 0);
    cr_assert_eq(gguf_writer_new(3, &streamed), 0);
    const float small[3] = {1, 2, 3};
    const uint64_t ne_small[1] = {3};
    for (int k = 0; k < 2; k++) {
        struct gguf_writer *w = k ? streamed : copied;
        cr_assert_eq(gguf_writer_set_str(w, "general.name", "rows"), 0);
        cr_assert_eq(gguf_writer_add_tensor(w, "a", SPEC_F32, 1, ne_small, small, sizeof small), 0);
    }
    cr_assert_eq(gguf_writer_add_tensor(copied, "big", SPEC_F32, 2, ne, data, sizeof(float) * ne[0] * ne[1]), 0);
    cr_assert_eq(gguf_writer_add_tensor_rows(streamed, "big", SPEC_F32, 2, ne, pattern_rows, &p), 0);
    cr_assert_eq(gguf_writer_add_tensor_rows(streamed, "big", SPEC_F32, 2, ne, pattern_rows, &p), SPEC_E_DUPLICATE);
    cr_assert_eq(gguf_writer_add_tensor_rows(streamed, "c", SPEC_F32, 2, ne, NULL, &p), SPEC_E_INVALID_ARG);

    void *want, *got_mem;
    size_t n_want, n_got_mem, n_got_file;
    cr_assert_eq(gguf_writer_write_memory(copied, &want, &n_want), 0);
    cr_assert_eq(gguf_writer_write_memory(streamed, &got_mem, &n_got_mem), 0);
    p.calls = 0;
    const char *path = tmp_path("rows.gguf");
    cr_assert_eq(gguf_writer_write_file(streamed, path), 0);
    cr_assert_gt(p.calls, 1, "the file was not written in chunks");
    void *got_file = read_all(path, &n_got_file);
    cr_assert(n_want == n_got_mem && memcmp(want, got_mem, n_want) == 0, "memory image differs");
    cr_assert(n_want == n_got_file && memcmp(want, got_file, n_want) == 0, "file differs");
    free(want);
    free(got_mem);
    free(got_file);
    free(data);
    gguf_writer_free(copied);
    gguf_writer_free(streamed);
}

Test(gguf_rows, a_failing_callback_aborts_the_write_with_its_error)
{
    const uint64_t ne[2] = {1000, 1500};
    struct pattern p = {.ne0 = ne[0], .fail_row = 1400};
    struct gguf_writer *w;
    cr_assert_eq(gguf_writer_new(3, &w), 0);
    cr_assert_eq(gguf_writer_add_tensor_rows(w, "big", SPEC_F32, 2, ne, pattern_rows, &p), 0);
    const char *path = tmp_path("fail.gguf");
    cr_assert_eq(gguf_writer_write_file(w, path), SPEC_E_NUMERIC);
    cr_assert_not(exists(path), "the partial file was left behind");
    void *buf = NULL;
    size_t size;
    cr_assert_eq(gguf_writer_write_memory(w, &buf, &size), SPEC_E_NUMERIC);
    cr_assert_null(buf);
    gguf_writer_free(w);
}
