/* The llama/qwen2 transformer: loading (hyper-parameters and weights from a GGUF, every shape
 * checked) and the forward pass, written against the backend ops so that it reads like the paper. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "model/model.h"

struct model_layer {
    struct kern_tensor attn_norm;
    struct kern_tensor wq, wk, wv, wo;
    struct kern_tensor bq, bk, bv; /* qwen2 only (data NULL otherwise) */
    struct kern_tensor ffn_norm;
    struct kern_tensor w_gate, w_up, w_down;
};

/* Activations for up to max_batch tokens, one row per token. */
struct model_scratch {
    struct kern_tensor x;         /* n_embd: the residual stream */
    struct kern_tensor xb;        /* n_embd: normalised input, then a block's output */
    struct kern_tensor qkv;       /* a row's q (n_head * head_dim), k and v (n_head_kv * head_dim each) side by
                                   * side: one rope rotates q and k, one store_rows caches k and v */
    struct kern_tensor att;       /* n_head * head_dim: attention output */
    struct kern_tensor gate, up;  /* n_ff */
    struct kern_tensor logits;    /* n_logits */
    int32_t *pos;                 /* host: each row's position */
    int32_t *ids;                 /* host: each row's token, then the rows that want logits */
    int32_t *pick;                /* host: each logits row's argmax */
    struct kern_tensor pick_dev;  /* where the backend keeps ids (argmax_keep): the same, made inside the
                                   * step (with graphs, a node of it) and read back after it */
    float *pick_prob;             /* host: its probability */
    struct kern_sample_row *sample; /* host: the rows processed on the backend */
};

struct model {
    struct model_hparams hp;
    struct kern_backend *be;
    struct gguf *own_gguf; /* the mapping model_load() opened; NULL when the caller owns it */
    struct tok *tok;
    struct kern_rope_params rope;
    struct kern_tensor tok_embd, output_norm, output;
    bool tied_output; /* output is tok_embd */
    int n_logits;     /* logits computed for token ids [0, n_logits); -INFINITY after */
    struct model_layer *layers;
    int max_batch;
    enum spec_dtype kv_type; /* F16 like llama.cpp's default, or F32 */
    struct model_scratch s;
};

struct model_seq {
    struct model *m;
    int n_ctx;
    int len;
    struct kern_tensor *kv;      /* n_layer tensors of n_ctx rows of the model's kv_type: a position's key,
                                  * then its value */
    struct kern_tensor *k_cache; /* views of the keys and of the values in kv */
    struct kern_tensor *v_cache;
};

/* Columns [c0, c0 + n) of the rows of t (of a plain type) as a tensor of their own. */
static struct kern_tensor cols(const struct kern_tensor *t, int64_t c0, int64_t n)
{
    struct kern_tensor v = *t;
    v.data = (char *)t->data + (size_t)c0 * kern_dtype_info((uint32_t)t->type)->type_size;
    v.ne0 = n;
    v.owned = false;
    return v;
}

/* ---------------------------------------------------------------------------------------------- */
/* Loading                                                                                        */

struct loader {
    const struct gguf *g;
    struct kern_backend *be;
    const char *arch;
    char *why;
    size_t why_cap;
};

/* Records a human-readable reason for the failure (first one wins) and returns err. */
static int fail(struct loader *ld, int err, const char *fmt, ...)
{
    if (ld->why && ld->why_cap && !ld->why[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ld->why, ld->why_cap, fmt, ap);
        va_end(ap);
    }
    return err;
}

/* Upper bound for every count, so that products of two of them fit in int64 and rows fit in int. */
#define HP_MAX (1 << 24)

static int hp_int(struct loader *ld, const char *suffix, bool required, int def, int *out)
{
    char key[128];
    uint32_t v;
    snprintf(key, sizeof key, "%s.%s", ld->arch, suffix);
    int err = gguf_get_u32(ld->g, key, &v);
    if (err == SPEC_E_NOT_FOUND && !required) {
        *out = def;
        return SPEC_OK;
    }
    if (err)
        return fail(ld, err, "%s: %s", key, err == SPEC_E_NOT_FOUND ? "missing" : "not a valid integer");
    if (v == 0 || v > HP_MAX)
        return fail(ld, SPEC_E_RANGE, "%s = %u is out of range", key, v);
    *out = (int)v;
    return SPEC_OK;
}

static int hp_float(struct loader *ld, const char *suffix, float def, float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", ld->arch, suffix);
    int err = gguf_get_f32(ld->g, key, out);
    if (err == SPEC_E_NOT_FOUND) {
        *out = def;
        return SPEC_OK;
    }
    if (err)
        return fail(ld, err, "%s: not a float", key);
    if (!isfinite(*out))
        return fail(ld, SPEC_E_RANGE, "%s is not finite", key);
    return SPEC_OK;
}

static int load_hparams(struct loader *ld, struct model_hparams *hp)
{
    struct gguf_str arch;
    int err = gguf_get_str(ld->g, "general.architecture", &arch);
    if (err)
        return fail(ld, err, "general.architecture: %s", err == SPEC_E_NOT_FOUND ? "missing" : "not a string");
    if (gguf_str_eq(arch, "llama"))
        hp->arch = MODEL_ARCH_LLAMA;
    else if (gguf_str_eq(arch, "qwen2"))
        hp->arch = MODEL_ARCH_QWEN2;
    else
        return fail(ld, SPEC_E_UNSUPPORTED, "architecture \"%.*s\" is not supported (llama, qwen2)",
                    (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    ld->arch = model_arch_name(hp->arch);

    SPEC_TRY(hp_int(ld, "context_length", true, 0, &hp->n_ctx_train));
    SPEC_TRY(hp_int(ld, "embedding_length", true, 0, &hp->n_embd));
    SPEC_TRY(hp_int(ld, "block_count", true, 0, &hp->n_layer));
    SPEC_TRY(hp_int(ld, "feed_forward_length", true, 0, &hp->n_ff));
    SPEC_TRY(hp_int(ld, "attention.head_count", true, 0, &hp->n_head));
    SPEC_TRY(hp_int(ld, "attention.head_count_kv", false, hp->n_head, &hp->n_head_kv));
    if (hp->n_embd % hp->n_head)
        return fail(ld, SPEC_E_RANGE, "embedding_length %d is not a multiple of head_count %d", hp->n_embd,
                    hp->n_head);
    if (hp->n_head % hp->n_head_kv)
        return fail(ld, SPEC_E_RANGE, "head_count %d is not a multiple of head_count_kv %d", hp->n_head,
                    hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    int key_len, value_len;
    SPEC_TRY(hp_int(ld, "attention.key_length", false, hp->head_dim, &key_len));
    SPEC_TRY(hp_int(ld, "attention.value_length", false, hp->head_dim, &value_len));
    if (key_len != hp->head_dim || value_len != hp->head_dim)
        return fail(ld, SPEC_E_UNSUPPORTED, "attention key/value length %d/%d differs from embedding/heads %d",
                    key_len, value_len, hp->head_dim);
    SPEC_TRY(hp_int(ld, "rope.dimension_count", false, hp->head_dim, &hp->n_rot));
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return fail(ld, SPEC_E_RANGE, "rope.dimension_count %d: must be even and at most %d", hp->n_rot,
                    hp->head_dim);

    SPEC_TRY(hp_float(ld, "attention.layer_norm_rms_epsilon", 0.0f, &hp->norm_eps));
    if (!(hp->norm_eps > 0.0f))
        return fail(ld, SPEC_E_RANGE, "%s.attention.layer_norm_rms_epsilon missing or not positive", ld->arch);
    SPEC_TRY(hp_float(ld, "rope.freq_base", 10000.0f, &hp->rope_freq_base));
    if (!(hp->rope_freq_base > 0.0f))
        return fail(ld, SPEC_E_RANGE, "%s.rope.freq_base is not positive", ld->arch);

    /* llama.cpp applies 1/factor to the frequencies whatever the scaling type; only types that
     * change the formula (yarn, longrope...) are refused. */
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", ld->arch);
    struct gguf_str type;
    err = gguf_get_str(ld->g, key, &type);
    if (err && err != SPEC_E_NOT_FOUND)
        return fail(ld, err, "%s: not a string", key);
    if (!err && !gguf_str_eq(type, "none") && !gguf_str_eq(type, "linear"))
        return fail(ld, SPEC_E_UNSUPPORTED, "%s \"%.*s\" is not supported (none, linear)", key,
                    (int)(type.len > 64 ? 64 : type.len), type.ptr);
    float factor;
    SPEC_TRY(hp_float(ld, "rope.scaling.factor", 0.0f, &factor));
    if (factor == 0.0f)
        SPEC_TRY(hp_float(ld, "rope.scale_linear", 0.0f, &factor));
    if (factor < 0.0f)
        return fail(ld, SPEC_E_RANGE, "%s.rope.scaling.factor is negative", ld->arch);
    hp->rope_freq_scale = factor == 0.0f ? 1.0f : 1.0f / factor;
    return SPEC_OK;
}

enum tensor_kind {
    T_MATRIX, /* any type the kernels compute with */
    T_F32,    /* norms, biases, rope factors */
};

/* Finds `name`, checks its type and that its shape is [ne0, ne1], and wraps it for the backend.
 * When optional, an absent tensor leaves *out zeroed and returns SPEC_OK. */
static int load_tensor(struct loader *ld, const char *name, int64_t ne0, int64_t ne1, enum tensor_kind kind,
                       bool optional, struct kern_tensor *out)
{
    const struct gguf_tensor *t = gguf_find_tensor(ld->g, name);
    *out = (struct kern_tensor){0};
    if (!t)
        return optional ? SPEC_OK : fail(ld, SPEC_E_NOT_FOUND, "tensor %s is missing", name);
    if (t->ne[0] != (uint64_t)ne0 || t->ne[1] != (uint64_t)ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return fail(ld, SPEC_E_SHAPE, "tensor %s has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld]", name,
                    (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
                    (unsigned long long)t->ne[3], (long long)ne0, (long long)ne1);
    const struct kern_dtype_info *info = kern_dtype_info(t->type);
    bool ok = kind == T_F32 ? t->type == SPEC_F32 : info && info->cpu;
    if (!ok)
        return fail(ld, SPEC_E_UNSUPPORTED, "tensor %s has type %s, which is not supported here", name,
                    info ? info->name : "unknown");
    int err = ld->be->ops->weight_from_host(ld->be, t->type, ne0, ne1, t->data, out);
    if (err)
        return fail(ld, err, "tensor %s: backend refused it (%s)", name, spec_errname(err));
    return SPEC_OK;
}

static int load_layer(struct loader *ld, const struct model_hparams *hp, int il, struct model_layer *L)
{
    const int64_t q_dim = (int64_t)hp->n_head * hp->head_dim, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    const bool bias = hp->arch == MODEL_ARCH_QWEN2;
    char name[64];
#define LT(field, suffix, ne0, ne1, kind)                                                                    \
    do {                                                                                                     \
        snprintf(name, sizeof name, "blk.%d." suffix, il);                                                   \
        SPEC_TRY(load_tensor(ld, name, ne0, ne1, kind, false, &L->field));                                        \
    } while (0)
    LT(attn_norm, "attn_norm.weight", hp->n_embd, 1, T_F32);
    LT(wq, "attn_q.weight", hp->n_embd, q_dim, T_MATRIX);
    LT(wk, "attn_k.weight", hp->n_embd, kv_dim, T_MATRIX);
    LT(wv, "attn_v.weight", hp->n_embd, kv_dim, T_MATRIX);
    if (bias) {
        LT(bq, "attn_q.bias", q_dim, 1, T_F32);
        LT(bk, "attn_k.bias", kv_dim, 1, T_F32);
        LT(bv, "attn_v.bias", kv_dim, 1, T_F32);
    }
    LT(wo, "attn_output.weight", q_dim, hp->n_embd, T_MATRIX);
    LT(ffn_norm, "ffn_norm.weight", hp->n_embd, 1, T_F32);
    LT(w_gate, "ffn_gate.weight", hp->n_embd, hp->n_ff, T_MATRIX);
    LT(w_up, "ffn_up.weight", hp->n_embd, hp->n_ff, T_MATRIX);
    LT(w_down, "ffn_down.weight", hp->n_ff, hp->n_embd, T_MATRIX);
#undef LT
    return SPEC_OK;
}

static void scratch_free(struct model *m)
{
    struct kern_backend *be = m->be;
    struct kern_tensor *all[] = {&m->s.x,    &m->s.xb, &m->s.qkv,   &m->s.att,
                                 &m->s.gate, &m->s.up, &m->s.logits};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->data)
            be->ops->tensor_free(be, all[i]);
    if (m->s.pick_dev.data)
        be->ops->tensor_free(be, &m->s.pick_dev);
    free(m->s.pos);
    free(m->s.ids);
    free(m->s.pick);
    free(m->s.pick_prob);
    free(m->s.sample);
    m->s = (struct model_scratch){0};
}

static int scratch_alloc(struct model *m)
{
    const struct model_hparams *hp = &m->hp;
    struct kern_backend *be = m->be;
    const int64_t nb = m->max_batch, q_dim = (int64_t)hp->n_head * hp->head_dim,
                  kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    struct {
        struct kern_tensor *t;
        int64_t ne0;
    } plan[] = {
        {&m->s.x, hp->n_embd},  {&m->s.xb, hp->n_embd}, {&m->s.qkv, q_dim + 2 * kv_dim}, {&m->s.att, q_dim},
        {&m->s.gate, hp->n_ff}, {&m->s.up, hp->n_ff},   {&m->s.logits, m->n_logits},
    };
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++)
        SPEC_TRY(be->ops->tensor_alloc(be, SPEC_F32, plan[i].ne0, nb, plan[i].t));
    if (be->ops->argmax_keep)
        SPEC_TRY(be->ops->tensor_alloc(be, SPEC_I32, 1, nb, &m->s.pick_dev));
    m->s.pos = malloc((size_t)nb * sizeof(int32_t));
    m->s.ids = malloc((size_t)nb * sizeof(int32_t));
    m->s.pick = malloc((size_t)nb * sizeof(int32_t));
    m->s.pick_prob = malloc((size_t)nb * sizeof(float));
    m->s.sample = malloc((size_t)nb * sizeof(struct kern_sample_row));
    return m->s.pos && m->s.ids && m->s.pick && m->s.pick_prob && m->s.sample ? SPEC_OK : SPEC_E_NOMEM;
}

static int model_build(struct loader *ld, const struct model_config *cfg, struct model *m)
{
    struct model_hparams *hp = &m->hp;
    SPEC_TRY(load_hparams(ld, hp));

    const struct gguf_tensor *embd = gguf_find_tensor(ld->g, "token_embd.weight");
    if (!embd)
        return fail(ld, SPEC_E_NOT_FOUND, "tensor token_embd.weight is missing");
    if (embd->ne[1] == 0 || embd->ne[1] > HP_MAX)
        return fail(ld, SPEC_E_SHAPE, "tensor token_embd.weight has %llu rows", (unsigned long long)embd->ne[1]);
    hp->n_vocab = (int)embd->ne[1];

    int err = tok_load(ld->g, &m->tok);
    if (err)
        return fail(ld, err, "tokenizer: %s", spec_strerror(err));
    if (tok_n_vocab(m->tok) != hp->n_vocab)
        return fail(ld, SPEC_E_SHAPE, "tensor token_embd.weight has %d rows but the vocabulary has %d tokens",
                    hp->n_vocab, (int)tok_n_vocab(m->tok));

    SPEC_TRY(load_tensor(ld, "token_embd.weight", hp->n_embd, hp->n_vocab, T_MATRIX, false, &m->tok_embd));
    SPEC_TRY(load_tensor(ld, "output_norm.weight", hp->n_embd, 1, T_F32, false, &m->output_norm));
    SPEC_TRY(load_tensor(ld, "output.weight", hp->n_embd, hp->n_vocab, T_MATRIX, true, &m->output));
    if (!m->output.data) {
        m->output = m->tok_embd;
        m->tied_output = true;
    }

    /* Every layer has tensors of its own: a block_count beyond the tensor count is a lie, found
     * here before it sizes any allocation. */
    if ((uint64_t)hp->n_layer > gguf_tensor_count(ld->g))
        return fail(ld, SPEC_E_RANGE, "%s.block_count = %d but the file holds %llu tensors", ld->arch, hp->n_layer,
                    (unsigned long long)gguf_tensor_count(ld->g));
    m->layers = calloc((size_t)hp->n_layer, sizeof(*m->layers));
    if (!m->layers)
        return SPEC_E_NOMEM;
    for (int il = 0; il < hp->n_layer; il++)
        SPEC_TRY(load_layer(ld, hp, il, &m->layers[il]));

    /* Optional per-dimension frequency divisors (llama 3.x long-context rope); host memory. */
    const struct gguf_tensor *rf = gguf_find_tensor(ld->g, "rope_freqs.weight");
    if (rf) {
        if (rf->type != SPEC_F32 || rf->ne[0] != (uint64_t)(hp->n_rot / 2) || rf->ne[1] != 1 || rf->ne[2] != 1 ||
            rf->ne[3] != 1)
            return fail(ld, SPEC_E_SHAPE, "tensor rope_freqs.weight must be %d F32 values", hp->n_rot / 2);
        m->rope.freq_factors = rf->data;
    }
    m->rope.mode = hp->arch == MODEL_ARCH_QWEN2 ? KERN_ROPE_NEOX : KERN_ROPE_NORM;
    m->rope.n_rot = hp->n_rot;
    m->rope.freq_base = hp->rope_freq_base;
    m->rope.freq_scale = hp->rope_freq_scale;

    m->kv_type = cfg && cfg->kv_f32 ? SPEC_F32 : SPEC_F16;
    m->n_logits = cfg && cfg->n_logits > 0 && cfg->n_logits < hp->n_vocab ? cfg->n_logits : hp->n_vocab;
    m->max_batch = cfg && cfg->max_batch > 0 ? cfg->max_batch : MODEL_DEFAULT_MAX_BATCH;
    if (m->max_batch > HP_MAX)
        return fail(ld, SPEC_E_INVALID_ARG, "max_batch %d is too large", m->max_batch);
    err = scratch_alloc(m);
    if (err)
        return fail(ld, err, "scratch buffers for %d tokens: %s", m->max_batch, spec_strerror(err));
    return SPEC_OK;
}

int model_load_gguf(const struct gguf *g, struct kern_backend *be, const struct model_config *cfg,
                    struct model **out)
{
    if (cfg && cfg->why && cfg->why_cap)
        cfg->why[0] = '\0';
    if (!g || !be || !out)
        return SPEC_E_INVALID_ARG;
    struct model *m = calloc(1, sizeof(*m));
    if (!m)
        return SPEC_E_NOMEM;
    m->be = be;
    struct loader ld = {.g = g, .be = be, .why = cfg ? cfg->why : NULL, .why_cap = cfg ? cfg->why_cap : 0};
    int err = model_build(&ld, cfg, m);
    if (err) {
        model_free(m);
        return err;
    }
    *out = m;
    return SPEC_OK;
}

int model_load_cfg(const char *path, struct kern_backend *be, const struct model_config *cfg, struct model **out)
{
    if (cfg && cfg->why && cfg->why_cap)
        cfg->why[0] = '\0';
    if (!path || !be || !out)
        return SPEC_E_INVALID_ARG;
    struct gguf *g;
    int err = gguf_open(path, &g);
    if (err) {
        if (cfg && cfg->why && cfg->why_cap)
            snprintf(cfg->why, cfg->why_cap, "the file is not a readable GGUF");
        return err;
    }
    struct model *m;
    err = model_load_gguf(g, be, cfg, &m);
    if (err) {
        gguf_close(g);
        return err;
    }
    m->own_gguf = g;
    *out = m;
    return SPEC_OK;
}

int model_load(const char *path, struct kern_backend *be, struct model **out)
{
    return model_load_cfg(path, be, NULL, out);
}

void model_free(struct model *m)
{
    if (!m)
        return;
    struct kern_backend *be = m->be;
    if (m->layers) {
        for (int il = 0; il < m->hp.n_layer; il++) {
            struct model_layer *L = &m->layers[il];
            struct kern_tensor *all[] = {&L->attn_norm, &L->wq,       &L->wk,   &L->wv,    &L->bq,  &L->bk,
                                         &L->bv,        &L->wo,       &L->ffn_norm, &L->w_gate, &L->w_up,
                                         &L->w_down};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                if (all[i]->data)
                    be->ops->tensor_free(be, all[i]);
        }
        free(m->layers);
    }
    if (m->output.data && !m->tied_output)
        be->ops->tensor_free(be, &m->output);
    if (m->tok_embd.data)
        be->ops->tensor_free(be, &m->tok_embd);
    if (m->output_norm.data)
        be->ops->tensor_free(be, &m->output_norm);
    scratch_free(m);
    tok_free(m->tok);
    gguf_close(m->own_gguf);
    free(m);
}

const struct model_hparams *model_hparams(const struct model *m)
{
    return &m->hp;
}

struct kern_backend *model_backend(const struct model *m)
{
    return m->be;
}

int model_n_vocab(const struct model *m)
{
    return m->hp.n_vocab;
}

int model_n_ctx_train(const struct model *m)
{
    return m->hp.n_ctx_train;
}

const char *model_arch_name(enum model_arch arch)
{
    switch (arch) {
    case MODEL_ARCH_LLAMA:
        return "llama";
    case MODEL_ARCH_QWEN2:
        return "qwen2";
    }
    return "unknown";
}

const struct tok *model_tokenizer(const struct model *m)
{
    return m->tok;
}

/* ---------------------------------------------------------------------------------------------- */
/* Sequences                                                                                      */

int model_seq_new(struct model *m, int n_ctx, struct model_seq **out)
{
    if (!m || !out)
        return SPEC_E_INVALID_ARG;
    if (n_ctx <= 0)
        n_ctx = m->hp.n_ctx_train;
    struct model_seq *s = calloc(1, sizeof(*s));
    if (!s)
        return SPEC_E_NOMEM;
    s->m = m;
    s->n_ctx = n_ctx;
    s->kv = calloc((size_t)m->hp.n_layer, sizeof(*s->kv));
    s->k_cache = calloc((size_t)m->hp.n_layer, sizeof(*s->k_cache));
    s->v_cache = calloc((size_t)m->hp.n_layer, sizeof(*s->v_cache));
    if (!s->kv || !s->k_cache || !s->v_cache) {
        model_seq_free(s);
        return SPEC_E_NOMEM;
    }
    const int64_t kv_dim = (int64_t)m->hp.n_head_kv * m->hp.head_dim;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const int err = m->be->ops->tensor_alloc(m->be, m->kv_type, 2 * kv_dim, n_ctx, &s->kv[il]);
        if (err) {
            model_seq_free(s);
            return err;
        }
        s->k_cache[il] = cols(&s->kv[il], 0, kv_dim);
        s->v_cache[il] = cols(&s->kv[il], kv_dim, kv_dim);
    }
    *out = s;
    return SPEC_OK;
}

void model_seq_free(struct model_seq *s)
{
    if (!s)
        return;
    struct kern_backend *be = s->m->be;
    for (int il = 0; s->kv && il < s->m->hp.n_layer; il++)
        if (s->kv[il].data)
            be->ops->tensor_free(be, &s->kv[il]);
    free(s->kv);
    free(s->k_cache);
    free(s->v_cache);
    free(s);
}

int model_seq_len(const struct model_seq *s)
{
    return s->len;
}

int model_seq_n_ctx(const struct model_seq *s)
{
    return s->n_ctx;
}

int model_seq_truncate(struct model_seq *s, int len)
{
    if (!s || len < 0 || len > s->len)
        return SPEC_E_RANGE;
    s->len = len;
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Forward pass                                                                                   */

/* Segments per internal step before it is flushed early (a step of many one-token items). */
#define MODEL_MAX_SEGMENTS 64

/* A run of consecutive tokens of one item inside one internal step. */
struct segment {
    const struct model_batch_item *it;
    int off;  /* first token of the item in this segment */
    int n;
    int row0; /* its first row in the step's activations */
};

/* Rows [row0, row0 + n) of t as a tensor of its own. */
static struct kern_tensor rows(const struct kern_tensor *t, int64_t row0, int64_t n)
{
    struct kern_tensor v = *t;
    v.data = (char *)t->data + (size_t)row0 * t->row_bytes;
    v.ne1 = n;
    v.owned = false;
    return v;
}

/* Copies n logit rows to host rows of n_vocab floats, padding the ids past n_logits with -INFINITY. */
static int logits_to_host(struct model *m, const struct kern_tensor *lg, int row0, int n, float *host)
{
    const struct kern_backend_ops *op = m->be->ops;
    const size_t nv = (size_t)m->hp.n_vocab, nl = (size_t)m->n_logits;
    if (nl == nv)
        return op->rows_to_host(m->be, lg, row0, n, host);
    for (int r = 0; r < n; r++) {
        float *dst = host + (size_t)r * nv;
        SPEC_TRY(op->rows_to_host(m->be, lg, row0 + r, 1, dst));
        for (size_t j = nl; j < nv; j++)
            dst[j] = -INFINITY;
    }
    return SPEC_OK;
}

/* Which of segment sg's rows have outputs: the first (relative to sg's rows) and how many. */
static int output_rows(const struct segment *sg, int *first)
{
    const struct model_batch_item *it = sg->it;
    *first = 0;
    if (!it->logits && !it->argmax && !it->probs && !it->keep_argmax)
        return 0;
    if (it->all_logits)
        return sg->n;
    *first = sg->n - 1;
    return sg->off + sg->n == it->n ? 1 : 0;
}

/* The rows the segments want outputs of, as rows of the step, into m->s.ids; returns how many. */
static int output_ids(struct model *m, const struct segment *sg, int n_sg)
{
    int n_out = 0;
    for (int i = 0; i < n_sg; i++) {
        int first;
        const int k = output_rows(&sg[i], &first);
        for (int r = 0; r < k; r++)
            m->s.ids[n_out++] = sg[i].row0 + first + r;
    }
    return n_out;
}

/* The logits of the step's n_out output rows (output_ids), after the last layer: its feed-forward
 * output (in xb) is added to x, the output rows are normalised into xb and multiplied by the output
 * matrix (its first n_logits rows). When every row of the step is an output row (a decode step, a
 * verification pass), the output norm adds the residual itself, and no rows are gathered: the same
 * expressions, so the same bits, in fewer ops. */
static int step_logits(struct model *m, const struct segment *sg, int n_sg, int n)
{
    struct kern_backend *be = m->be;
    const struct kern_backend_ops *op = be->ops;
    const int n_out = output_ids(m, sg, n_sg);
    bool every_row = n_out == n;
    for (int i = 0; every_row && i < n_out; i++)
        every_row = m->s.ids[i] == i;
    struct kern_tensor x = rows(&m->s.x, 0, n), xb = rows(&m->s.xb, 0, n), xo = rows(&m->s.xb, 0, n_out),
                       lg = rows(&m->s.logits, 0, n_out), head = rows(&m->output, 0, m->n_logits);
    if (every_row) {
        SPEC_TRY(op->rms_norm(be, &x, &xb, &m->output_norm, m->hp.norm_eps, &xb));
    } else {
        SPEC_TRY(op->add(be, &x, &xb, &x));
        if (n_out == 0)
            return SPEC_OK;
        SPEC_TRY(op->get_rows(be, &m->s.x, m->s.ids, n_out, &xo));
        SPEC_TRY(op->rms_norm(be, &xo, NULL, &m->output_norm, m->hp.norm_eps, &xo));
    }
    return op->matmul(be, &head, &xo, NULL, &lg);
}

/* Whether the step's output rows include some whose greedy ids go to the host (*pick), and some with
 * their probabilities (*pick_prob). */
static void step_picks(const struct segment *sg, int n_sg, bool *pick, bool *pick_prob)
{
    *pick = *pick_prob = false;
    for (int i = 0; i < n_sg; i++) {
        int first;
        const int k = output_rows(&sg[i], &first);
        *pick |= k > 0 && sg[i].it->argmax;
        *pick_prob |= k > 0 && sg[i].it->argmax && sg[i].it->argmax_prob;
    }
}

/* The step's n_out outputs to the items: logits copied to those that want them, one argmax call over
 * all output rows for those that want greedy choices, and one sampling call for those that want
 * distributions on the backend. */
static int step_deliver(struct model *m, const struct segment *sg, int n_sg, int n_out)
{
    struct kern_backend *be = m->be;
    const size_t nv = (size_t)m->hp.n_vocab;
    if (n_out == 0)
        return SPEC_OK;
    bool pick, pick_prob;
    step_picks(sg, n_sg, &pick, &pick_prob);
    int n_sample = 0, row = 0;
    for (int i = 0; i < n_sg; i++) {
        const struct model_batch_item *it = sg[i].it;
        int first;
        const int k = output_rows(&sg[i], &first);
        for (int r = 0; r < k && it->probs; r++) {
            const size_t pos = (size_t)(sg[i].off + first + r); /* the item's position of this output */
            const size_t end = it->window_end0 + pos, start = end > it->window_len ? end - it->window_len : 0;
            m->s.sample[n_sample++] = (struct kern_sample_row){
                .s = it->sampler, .row = row + r, .out = it->probs, .out_row = it->probs_row0 + (int64_t)pos,
                .recent = it->window_ctx + start, .n_recent = (int)(end - start)};
        }
        row += k;
    }
    struct kern_tensor lg = rows(&m->s.logits, 0, n_out);
    if (pick && !pick_prob && m->s.pick_dev.data) /* made in the step (step_keep) */
        SPEC_TRY(be->ops->rows_to_host(be, &m->s.pick_dev, 0, n_out, m->s.pick));
    else if (pick)
        SPEC_TRY(be->ops->argmax(be, &lg, m->s.pick, pick_prob ? m->s.pick_prob : NULL));
    if (n_sample > 0)
        SPEC_TRY(be->ops->sample_process(be, &lg, m->s.sample, n_sample));
    row = 0;
    for (int i = 0; i < n_sg; i++) {
        const struct model_batch_item *it = sg[i].it;
        int first;
        const int k = output_rows(&sg[i], &first);
        if (k == 0)
            continue;
        const int at = it->all_logits ? sg[i].off : 0; /* the item's index of this segment's first output */
        if (it->logits)
            SPEC_TRY(logits_to_host(m, &lg, row, k, it->logits + (size_t)at * nv));
        if (it->argmax)
            memcpy(it->argmax + at, m->s.pick + row, (size_t)k * sizeof *it->argmax);
        if (it->argmax && it->argmax_prob)
            memcpy(it->argmax_prob + at, m->s.pick_prob + row, (size_t)k * sizeof *it->argmax_prob);
        row += k;
    }
    return SPEC_OK;
}

/* An optional tensor (the biases of qwen2's q, k and v): NULL where the model has none. */
static const struct kern_tensor *present(const struct kern_tensor *t)
{
    return t->data ? t : NULL;
}

/* A layer's matmuls of x; in a prefill step (no row has outputs: only the KV cache reads its results)
 * through the backend's path for prefills where it has one. */
static int layer_matmuls(struct model *m, bool prefill, const struct kern_tensor *x, const struct kern_matmul *mm,
                         int n, enum kern_matmuls_then then)
{
    const struct kern_backend_ops *op = m->be->ops;
    if (prefill && op->matmuls_prefill)
        return op->matmuls_prefill(m->be, x, mm, n, then);
    return op->matmuls(m->be, x, mm, n, then);
}

/* One weight's matmul of x, as layer_matmuls. */
static int layer_matmul(struct model *m, bool prefill, const struct kern_tensor *w, const struct kern_tensor *x,
                        struct kern_tensor *y)
{
    const struct kern_matmul mm = {w, NULL, y};
    if (prefill && m->be->ops->matmuls_prefill)
        return m->be->ops->matmuls_prefill(m->be, x, &mm, 1, KERN_MATMULS_PLAIN);
    return m->be->ops->matmul(m->be, w, x, NULL, y);
}

/* The device work of one internal step: the segments' rows (at most max_batch) go through every
 * layer together, so each weight matrix is read once for all of them; RoPE takes each row's own
 * position and attention runs per segment over its own sequence's cache; then the output rows'
 * logits. */
static int step_layers(struct model *m, const struct segment *sg, int n_sg, int n, bool prefill)
{
    const struct model_hparams *hp = &m->hp;
    struct kern_backend *be = m->be;
    const struct kern_backend_ops *op = be->ops;
    const int64_t q_dim = (int64_t)hp->n_head * hp->head_dim, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    struct kern_tensor x = rows(&m->s.x, 0, n), xb = rows(&m->s.xb, 0, n), qkv = rows(&m->s.qkv, 0, n),
                       att = rows(&m->s.att, 0, n), gate = rows(&m->s.gate, 0, n), up = rows(&m->s.up, 0, n);
    struct kern_tensor q = cols(&qkv, 0, q_dim), k = cols(&qkv, q_dim, kv_dim), v = cols(&qkv, q_dim + kv_dim, kv_dim),
                       qk = cols(&qkv, 0, q_dim + kv_dim), kv = cols(&qkv, q_dim, 2 * kv_dim);
    bool kept = false;
    for (int i = 0; i < n_sg; i++) {
        kept |= sg[i].it->kept_tokens != NULL;
        for (int r = 0; r < sg[i].n; r++) {
            m->s.ids[sg[i].row0 + r] = sg[i].it->kept_tokens ? 0 : sg[i].it->tokens[sg[i].off + r];
            m->s.pos[sg[i].row0 + r] = sg[i].it->s->len + sg[i].off + r;
        }
    }

    if (!kept)
        SPEC_TRY(op->get_rows(be, &m->tok_embd, m->s.ids, n, &x));
    for (int i = 0; kept && i < n_sg; i++) {
        const struct model_batch_item *it = sg[i].it;
        struct kern_tensor xs = rows(&x, sg[i].row0, sg[i].n);
        if (it->kept_tokens)
            SPEC_TRY(op->get_rows_kept(be, &m->tok_embd, it->kept_tokens, it->kept_row0 + sg[i].off, sg[i].n, &xs));
        else
            SPEC_TRY(op->get_rows(be, &m->tok_embd, m->s.ids + sg[i].row0, sg[i].n, &xs));
    }
    /* Each residual add is folded into the norm that reads its result: the feed-forward output
     * (in xb) is added to x by the next layer's attention norm, the last one in step_logits. */
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];

        /* attention: x += wo . attn(rope(wq . norm(x)), rope(wk . norm(x)), wv . norm(x)) */
        SPEC_TRY(op->rms_norm(be, &x, il > 0 ? &xb : NULL, &L->attn_norm, hp->norm_eps, &xb));
        const struct kern_matmul proj[3] = {
            {&L->wq, present(&L->bq), &q}, {&L->wk, present(&L->bk), &k}, {&L->wv, present(&L->bv), &v}};
        if (L->wq.type == L->wk.type && L->wq.type == L->wv.type) {
            SPEC_TRY(layer_matmuls(m, prefill, &xb, proj, 3, KERN_MATMULS_PLAIN));
        } else { /* e.g. Q4_K_M's Q6_K attn_v */
            SPEC_TRY(layer_matmuls(m, prefill, &xb, proj, 2, KERN_MATMULS_PLAIN));
            SPEC_TRY(layer_matmuls(m, prefill, &xb, &proj[2], 1, KERN_MATMULS_PLAIN));
        }
        SPEC_TRY(op->rope(be, &qk, hp->n_head + hp->n_head_kv, hp->head_dim, m->s.pos, &m->rope));
        /* every segment's store, then every segment's attention: a backend can take each run of calls
         * into one launch (CUDA: the stores with the rope, the attentions together) */
        for (int i = 0; i < n_sg; i++) {
            const struct kern_tensor kvs = rows(&kv, sg[i].row0, sg[i].n);
            SPEC_TRY(op->store_rows(be, &kvs, &sg[i].it->s->kv[il], sg[i].it->s->len + sg[i].off));
        }
        for (int i = 0; i < n_sg; i++) {
            struct model_seq *s = sg[i].it->s;
            const struct kern_attn_params ap = {.n_head = hp->n_head, .n_head_kv = hp->n_head_kv,
                                                .head_dim = hp->head_dim, .pos0 = s->len + sg[i].off,
                                                .scale = 1.0f / sqrtf((float)hp->head_dim)};
            struct kern_tensor qs = rows(&q, sg[i].row0, sg[i].n), as = rows(&att, sg[i].row0, sg[i].n);
            SPEC_TRY(op->attention(be, &qs, &s->k_cache[il], &s->v_cache[il], &ap, &as));
        }
        SPEC_TRY(layer_matmul(m, prefill, &L->wo, &att, &xb));

        /* feed-forward: x += w_down . (silu(w_gate . norm(x)) * (w_up . norm(x))) */
        SPEC_TRY(op->rms_norm(be, &x, &xb, &L->ffn_norm, hp->norm_eps, &xb));
        const struct kern_matmul gate_up[2] = {{&L->w_gate, NULL, &gate}, {&L->w_up, NULL, &up}};
        if (L->w_gate.type == L->w_up.type) {
            SPEC_TRY(layer_matmuls(m, prefill, &xb, gate_up, 2, KERN_MATMULS_SWIGLU));
        } else {
            SPEC_TRY(layer_matmul(m, prefill, &L->w_gate, &xb, &gate));
            SPEC_TRY(layer_matmul(m, prefill, &L->w_up, &xb, &up));
            SPEC_TRY(op->swiglu(be, &gate, &up, &gate));
        }
        SPEC_TRY(layer_matmul(m, prefill, &L->w_down, &gate, &xb));
    }
    return step_logits(m, sg, n_sg, n);
}

/* The greedy ids the step makes on the backend, as part of it: those of the items that keep them there,
 * and, where the backend keeps ids, those bound for the host without probabilities (every output row's,
 * read back by step_deliver), so that no argmax launches after the step. */
static int step_keep(struct model *m, const struct segment *sg, int n_sg, int n_out)
{
    bool pick, pick_prob;
    step_picks(sg, n_sg, &pick, &pick_prob);
    if (pick && !pick_prob && m->s.pick_dev.data) {
        const struct kern_tensor lg = rows(&m->s.logits, 0, n_out);
        SPEC_TRY(m->be->ops->argmax_keep(m->be, &lg, &m->s.pick_dev, 0));
    }
    int row = 0;
    for (int i = 0; i < n_sg; i++) {
        const struct model_batch_item *it = sg[i].it;
        int first;
        const int k = output_rows(&sg[i], &first);
        if (k > 0 && it->keep_argmax) {
            const struct kern_tensor lg = rows(&m->s.logits, row, k);
            const int64_t at = it->all_logits ? sg[i].off : 0; /* the item's index of this segment's first output */
            SPEC_TRY(m->be->ops->argmax_keep(m->be, &lg, it->keep_argmax, it->keep_row0 + at));
        }
        row += k;
    }
    return SPEC_OK;
}

/* The device work of one internal step, bracketed by step_begin/step_end (the CUDA backend records it
 * as a graph, or replays the one recorded for its shape). *again: the backend ran none of it. */
static int step_run(struct model *m, const struct segment *sg, int n_sg, int n, int n_out, uint64_t shape,
                    bool *again)
{
    struct kern_backend *be = m->be;
    const struct kern_backend_ops *op = be->ops;
    *again = false;
    if (op->step_begin)
        SPEC_TRY(op->step_begin(be, shape));
    int err = step_layers(m, sg, n_sg, n, n_out == 0);
    if (!err)
        err = step_keep(m, sg, n_sg, n_out);
    const int ended = op->step_end ? op->step_end(be, again) : SPEC_OK;
    return err ? err : ended;
}

/* One internal step. The ops it issues depend on the model, the rows and each segment's sequence, rows
 * and output rows, which make its shape: steps of one shape differ only in their tokens and
 * positions, so that the backend can replay the last one's recording (a batch of other sequences
 * gets a recording of its own). */
static int forward_step(struct model *m, const struct segment *sg, int n_sg, int n)
{
    uint64_t shape = ((uint64_t)(uintptr_t)m ^ (uint64_t)n) * 0x9e3779b97f4a7c15u;
    int n_out = 0;
    for (int i = 0; i < n_sg; i++) {
        int first;
        const int k = output_rows(&sg[i], &first);
        n_out += k;
        shape = (shape ^ (uint64_t)(uintptr_t)sg[i].it->s) * 0x9e3779b97f4a7c15u;
        const struct model_batch_item *it = sg[i].it;
        const uint64_t kinds = (uint64_t)(it->argmax != NULL) << 60 | (uint64_t)(it->argmax_prob != NULL) << 61 |
                               (uint64_t)(it->kept_tokens != NULL) << 62 | (uint64_t)(it->keep_argmax != NULL) << 63;
        shape = (shape ^ ((uint64_t)sg[i].n | (uint64_t)k << 32 | kinds)) * 0x9e3779b97f4a7c15u;
    }
    bool again;
    int err = step_run(m, sg, n_sg, n, n_out, shape, &again);
    if (again) /* a replay that found other ops: the step issued again runs (backend.h) */
        err = step_run(m, sg, n_sg, n, n_out, shape, &again);
    if (err)
        return err;
    return step_deliver(m, sg, n_sg, n_out);
}

static int check_batch(const struct model *m, const struct model_batch_item *items, int n_items)
{
    if (!m || !items || n_items <= 0)
        return SPEC_E_INVALID_ARG;
    for (int i = 0; i < n_items; i++) {
        const struct model_batch_item *it = &items[i];
        if (!it->s || it->s->m != m || (!it->tokens && !it->kept_tokens) || it->n <= 0)
            return SPEC_E_INVALID_ARG;
        for (int j = 0; j < i; j++)
            if (items[j].s == it->s)
                return SPEC_E_INVALID_ARG; /* one sequence cannot take two appends at once */
        if (it->n > it->s->n_ctx - it->s->len)
            return SPEC_E_CONTEXT_FULL;
        for (int t = 0; !it->kept_tokens && t < it->n; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= m->hp.n_vocab)
                return SPEC_E_INVALID_ARG;
        if ((it->kept_tokens && !m->be->ops->get_rows_kept) || (it->keep_argmax && !m->be->ops->argmax_keep))
            return SPEC_E_UNSUPPORTED;
        if (it->probs && (!it->sampler || (it->window_len > 0 && !it->window_ctx) || it->window_len > INT32_MAX))
            return SPEC_E_INVALID_ARG;
        if (it->probs && !m->be->ops->sample_process)
            return SPEC_E_UNSUPPORTED;
    }
    return SPEC_OK;
}

int model_forward_batch(struct model *m, const struct model_batch_item *items, int n_items)
{
    SPEC_TRY(check_batch(m, items, n_items));
    /* Fill steps of max_batch rows with the items' tokens in order; an item longer than the room left
     * continues in the next step, after its first part is in the cache. Sequence lengths advance only
     * once everything succeeded, so positions are computed from the unchanged lengths. */
    struct segment sg[MODEL_MAX_SEGMENTS];
    int n_sg = 0, n_rows = 0;
    for (int i = 0; i < n_items; i++) {
        for (int off = 0; off < items[i].n;) {
            const int c = items[i].n - off < m->max_batch - n_rows ? items[i].n - off : m->max_batch - n_rows;
            sg[n_sg++] = (struct segment){.it = &items[i], .off = off, .n = c, .row0 = n_rows};
            n_rows += c;
            off += c;
            if (n_rows == m->max_batch || n_sg == MODEL_MAX_SEGMENTS) {
                SPEC_TRY(forward_step(m, sg, n_sg, n_rows));
                n_sg = n_rows = 0;
            }
        }
    }
    if (n_sg > 0)
        SPEC_TRY(forward_step(m, sg, n_sg, n_rows));
    for (int i = 0; i < n_items; i++)
        items[i].s->len += items[i].n;
    return SPEC_OK;
}

int model_forward(struct model *m, struct model_seq *s, const int32_t *tokens, int n, float *logits)
{
    if (!logits)
        return SPEC_E_INVALID_ARG;
    const struct model_batch_item it = {.s = s, .tokens = tokens, .n = n, .logits = logits, .all_logits = true};
    return model_forward_batch(m, &it, 1);
}

int model_forward_last(struct model *m, struct model_seq *s, const int32_t *tokens, int n, float *logits)
{
    const struct model_batch_item it = {.s = s, .tokens = tokens, .n = n, .logits = logits};
    return model_forward_batch(m, &it, 1);
}
