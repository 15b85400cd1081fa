/* Synthetic llama/qwen2 models: the metadata and tensors model_load() expects, random weights from a
 * seed, and a synthetic vocabulary from the tokenizer component. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "model/model.h"

/* splitmix64: tiny, seedable, and good enough for test weights. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]. */
static double rng_unit(uint64_t *s)
{
    return (double)((rng_next(s) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* Standard normal by Box-Muller. */
static float rng_normal(uint64_t *s)
{
    double u = rng_unit(s), v = rng_unit(s);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

struct synth {
    const struct model_synth_config *cfg;
    struct gguf_writer *w;
    uint64_t rng;
    float *row; /* scratch: one row of the widest tensor */
};

/* A tensor of ne1 rows of ne0 values mean + std * N(0,1), stored as `type`. */
static int add_tensor(struct synth *sy, const char *name, enum spec_dtype type, int64_t ne0, int64_t ne1,
                      float mean, float std)
{
    uint64_t row_bytes;
    int err = kern_row_bytes(type, (uint64_t)ne0, &row_bytes);
    if (err)
        return SPEC_E_INVALID_ARG;
    uint8_t *data = malloc((size_t)row_bytes * (size_t)ne1);
    if (!data)
        return SPEC_E_NOMEM;
    for (int64_t r = 0; r < ne1 && !err; r++) {
        for (int64_t i = 0; i < ne0; i++)
            sy->row[i] = mean + std * rng_normal(&sy->rng);
        err = kern_quantize_row(type, sy->row, data + (size_t)r * row_bytes, ne0);
    }
    if (!err) {
        const uint64_t ne[2] = {(uint64_t)ne0, (uint64_t)ne1};
        err = gguf_writer_add_tensor(sy->w, name, type, ne1 == 1 ? 1 : 2, ne, data, row_bytes * (uint64_t)ne1);
    }
    free(data);
    return err == SPEC_E_UNSUPPORTED || err == SPEC_E_RANGE ? SPEC_E_INVALID_ARG : err;
}

static int set_hparams(struct synth *sy, int n_rot)
{
    const struct model_synth_config *c = sy->cfg;
    const char *arch = model_arch_name(c->arch);
    struct gguf_writer *w = sy->w;
    char key[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    SPEC_TRY(gguf_writer_set_str(w, "general.architecture", arch));
    SPEC_TRY(gguf_writer_set_str(w, "general.name", "specd synthetic"));
    SPEC_TRY(gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)c->n_ctx));
    SPEC_TRY(gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)c->n_embd));
    SPEC_TRY(gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)c->n_layer));
    SPEC_TRY(gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->n_ff));
    SPEC_TRY(gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)c->n_head));
    SPEC_TRY(gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_head_kv));
    SPEC_TRY(gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->arch == MODEL_ARCH_QWEN2 ? 1e-6f : 1e-5f));
    SPEC_TRY(gguf_writer_set_f32(w, KEY("rope.freq_base"), c->rope_freq_base > 0.0f ? c->rope_freq_base : 10000.0f));
    SPEC_TRY(gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)n_rot));
    if (c->rope_scale > 0.0f) {
        SPEC_TRY(gguf_writer_set_str(w, KEY("rope.scaling.type"), "linear"));
        SPEC_TRY(gguf_writer_set_f32(w, KEY("rope.scaling.factor"), c->rope_scale));
    }
#undef KEY
    return SPEC_OK;
}

static int add_tensors(struct synth *sy, int head_dim, int n_rot)
{
    const struct model_synth_config *c = sy->cfg;
    const enum spec_dtype wt = c->wtype;
    const int64_t q_dim = (int64_t)c->n_head * head_dim, kv_dim = (int64_t)c->n_head_kv * head_dim;
    const float s_embd = 1.0f / sqrtf((float)c->n_embd), s_ff = 1.0f / sqrtf((float)c->n_ff),
                s_q = 1.0f / sqrtf((float)q_dim);
    char name[64];

    SPEC_TRY(add_tensor(sy, "token_embd.weight", wt, c->n_embd, c->n_vocab, 0.0f, 1.0f));
    SPEC_TRY(add_tensor(sy, "output_norm.weight", SPEC_F32, c->n_embd, 1, 1.0f, 0.1f));
    if (!c->tied_output)
        SPEC_TRY(add_tensor(sy, "output.weight", wt, c->n_embd, c->n_vocab, 0.0f, s_embd));
    if (c->rope_freqs)
        SPEC_TRY(add_tensor(sy, "rope_freqs.weight", SPEC_F32, n_rot / 2, 1, 1.5f, 0.2f));
    for (int il = 0; il < c->n_layer; il++) {
#define T(suffix, type, ne0, ne1, mean, std)                                                                 \
    do {                                                                                                     \
        snprintf(name, sizeof name, "blk.%d." suffix, il);                                                   \
        SPEC_TRY(add_tensor(sy, name, type, ne0, ne1, mean, std));                                                \
    } while (0)
        T("attn_norm.weight", SPEC_F32, c->n_embd, 1, 1.0f, 0.1f);
        T("attn_q.weight", wt, c->n_embd, q_dim, 0.0f, s_embd);
        T("attn_k.weight", wt, c->n_embd, kv_dim, 0.0f, s_embd);
        T("attn_v.weight", wt, c->n_embd, kv_dim, 0.0f, s_embd);
        if (c->arch == MODEL_ARCH_QWEN2) {
            T("attn_q.bias", SPEC_F32, q_dim, 1, 0.0f, 0.1f);
            T("attn_k.bias", SPEC_F32, kv_dim, 1, 0.0f, 0.1f);
            T("attn_v.bias", SPEC_F32, kv_dim, 1, 0.0f, 0.1f);
        }
        T("attn_output.weight", wt, q_dim, c->n_embd, 0.0f, s_q);
        T("ffn_norm.weight", SPEC_F32, c->n_embd, 1, 1.0f, 0.1f);
        T("ffn_gate.weight", wt, c->n_embd, c->n_ff, 0.0f, s_embd);
        T("ffn_up.weight", wt, c->n_embd, c->n_ff, 0.0f, s_embd);
        T("ffn_down.weight", wt, c->n_ff, c->n_embd, 0.0f, s_ff);
#undef T
    }
    return SPEC_OK;
}

static int build(const struct model_synth_config *c, struct gguf_writer **out)
{
    if (!c || (c->arch != MODEL_ARCH_LLAMA && c->arch != MODEL_ARCH_QWEN2) || c->n_layer <= 0 || c->n_embd <= 0 ||
        c->n_head <= 0 || c->n_head_kv <= 0 || c->n_ff <= 0 || c->n_ctx <= 0 || c->n_vocab <= 0 ||
        c->n_embd % c->n_head || c->n_head % c->n_head_kv || c->rope_scale < 0.0f)
        return SPEC_E_INVALID_ARG;
    const int head_dim = c->n_embd / c->n_head;
    const int n_rot = c->n_rot > 0 ? c->n_rot : head_dim;
    if (n_rot > head_dim || n_rot % 2)
        return SPEC_E_INVALID_ARG;
    const struct kern_dtype_info *info = kern_dtype_info(c->wtype);
    if (!info || !info->cpu)
        return SPEC_E_INVALID_ARG;

    int widest = c->n_embd > c->n_ff ? c->n_embd : c->n_ff;
    struct synth sy = {.cfg = c, .rng = c->seed, .row = malloc((size_t)widest * sizeof(float))};
    if (!sy.row)
        return SPEC_E_NOMEM;
    int err = gguf_writer_new(3, &sy.w);
    if (!err)
        err = set_hparams(&sy, n_rot);
    if (!err) {
        const struct tok_synth_config tc = {.kind = c->tok_kind, .n_vocab = (uint32_t)c->n_vocab, .seed = c->seed,
                                            .add_bos = c->tok_kind == TOK_KIND_SPM};
        err = tok_synth_write(sy.w, &tc);
    }
    if (!err)
        err = add_tensors(&sy, head_dim, n_rot);
    free(sy.row);
    if (err) {
        gguf_writer_free(sy.w);
        return err;
    }
    *out = sy.w;
    return SPEC_OK;
}

int model_synth_write(const struct model_synth_config *cfg, const char *path)
{
    struct gguf_writer *w;
    if (!path)
        return SPEC_E_INVALID_ARG;
    SPEC_TRY(build(cfg, &w));
    int err = gguf_writer_write_file(w, path);
    gguf_writer_free(w);
    return err;
}

int model_synth_write_memory(const struct model_synth_config *cfg, void **out, size_t *size)
{
    struct gguf_writer *w;
    if (!out || !size)
        return SPEC_E_INVALID_ARG;
    SPEC_TRY(build(cfg, &w));
    int err = gguf_writer_write_memory(w, out, size);
    gguf_writer_free(w);
    return err;
}
