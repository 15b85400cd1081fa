/* The llama/qwen2 decoder-only transformer.
 *
 * A model is three things, as in llama2.c: hyper-parameters (struct model_hparams), weights (views
 * of the GGUF mapping made usable by a backend) and scratch activations. The per-sequence state is
 * the KV cache (struct model_seq), so one loaded model serves many sequences. A model's scratch is
 * shared by its sequences: one forward call at a time per model.
 *
 * Numerics follow llama.cpp's CPU path op by op (F16 KV cache, ggml's rms_norm, rope and softmax,
 * activations quantized to the weights' vec_dot type). Where rounding cannot cascade (float or 4-bit
 * weights, short contexts) logits agree with llama.cpp to ~1e-5; on real models every rounding of
 * activations (to 8 bits for quantized weights, to F16 for F16 weights and for the F16 KV cache)
 * amplifies last-bit differences, and agreement is within llama.cpp's own batch-versus-decode spread.
 * With F32 weights and an F32 KV cache (kv_f32) the real models agree to ~1e-6 (see
 * tests/model/test_model_llamacpp.c). */
#ifndef SPECD_MODEL_MODEL_H
#define SPECD_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

enum model_arch {
    MODEL_ARCH_LLAMA = 0, /* rope NORM, no attention biases */
    MODEL_ARCH_QWEN2 = 1, /* rope NEOX, q/k/v biases */
};

struct model_hparams {
    enum model_arch arch;
    int n_vocab;     /* rows of token_embd */
    int n_ctx_train; /* <arch>.context_length */
    int n_embd;
    int n_layer;
    int n_ff;
    int n_head;
    int n_head_kv;
    int head_dim;    /* n_embd / n_head */
    int n_rot;       /* <arch>.rope.dimension_count, default head_dim */
    float norm_eps;  /* <arch>.attention.layer_norm_rms_epsilon */
    float rope_freq_base;
    float rope_freq_scale; /* 1 / rope.scaling.factor for linear scaling, else 1 */
};

/* Tokens processed per internal forward step when the caller does not choose. */
#define MODEL_DEFAULT_MAX_BATCH 64

struct model_config {
    int max_batch; /* tokens per internal forward step (scratch buffers are sized for it); longer
                    * inputs are split transparently. <= 0: MODEL_DEFAULT_MAX_BATCH */
    char *why;     /* optional: on a failed load, a NUL-terminated reason naming the key or tensor */
    size_t why_cap;
    bool kv_f32;   /* F32 KV caches instead of llama.cpp's default F16 (its type_k = type_v = f32): no
                    * rounding of keys, values, queries or attention weights to F16 */
    int n_logits;  /* compute logits for token ids [0, n_logits) only and report -INFINITY for the
                    * rest; <= 0 or >= n_vocab: all. For a draft model: its output matrix is often a
                    * third of what it reads per token, and byte-level BPE ids are in merge order, so
                    * the first ids are the frequent ones (FR-Spec). Drafting never proposes a later
                    * id, which verification corrects like any other miss. */
};

struct model;
struct model_seq;

/* Load a llama or qwen2 GGUF. Every hyper-parameter is range-checked (SPEC_E_RANGE) and every
 * tensor's presence (SPEC_E_NOT_FOUND), type (SPEC_E_UNSUPPORTED) and shape (SPEC_E_SHAPE) checked
 * against them; an unknown architecture or rope scaling is SPEC_E_UNSUPPORTED. The backend must
 * outlive the model. The model keeps the file mapped and owns its tokenizer. cfg may be NULL. */
int model_load(const char *path, struct kern_backend *be, struct model **out);
int model_load_cfg(const char *path, struct kern_backend *be, const struct model_config *cfg, struct model **out);
/* Same from an open GGUF, which the caller keeps open until model_free(). */
int model_load_gguf(const struct gguf *g, struct kern_backend *be, const struct model_config *cfg,
                    struct model **out);
void model_free(struct model *m);

const struct model_hparams *model_hparams(const struct model *m);
int model_n_vocab(const struct model *m);
int model_n_ctx_train(const struct model *m);
const char *model_arch_name(enum model_arch arch);
/* The backend the model computes on (the one it was loaded with). */
struct kern_backend *model_backend(const struct model *m);
/* The model's tokenizer (owned by the model). */
const struct tok *model_tokenizer(const struct model *m);

/* A sequence: a KV cache of n_ctx positions (F16, or F32 with model_config.kv_f32) and a length.
 * n_ctx <= 0 means n_ctx_train. */
int model_seq_new(struct model *m, int n_ctx, struct model_seq **out);
void model_seq_free(struct model_seq *s);
int model_seq_len(const struct model_seq *s);
int model_seq_n_ctx(const struct model_seq *s);
/* Forget every position >= len (rolls back rejected draft tokens); SPEC_E_RANGE if len is
 * negative or beyond the current length. Later forwards overwrite the dropped cache rows. */
int model_seq_truncate(struct model_seq *s, int len);

/* Append n tokens at the sequence's current length (causal attention over everything before)
 * and write the logits of EVERY new position to `logits` (n x n_vocab floats, host memory).
 * SPEC_E_CONTEXT_FULL when len + n > n_ctx, SPEC_E_INVALID_ARG for a token id outside the
 * vocabulary; on any error the sequence is unchanged. */
int model_forward(struct model *m, struct model_seq *s, const int32_t *tokens, int n, float *logits);
/* As model_forward() but only the last position's logits (n_vocab floats) are computed, which
 * skips the output matmul for the others (prefill). `logits` may be NULL: no logits at all. */
int model_forward_last(struct model *m, struct model_seq *s, const int32_t *tokens, int n, float *logits);

/* One sequence's part of a batched forward. */
struct model_batch_item {
    struct model_seq *s;
    const int32_t *tokens;
    int n;
    /* NULL: the n tokens are `tokens`, host ids checked against the vocabulary. Else they are rows
     * kept_row0 .. of this backend tensor of ids (kern_backend_ops.get_rows_kept, which the backend must
     * have; `tokens` is not read): ids an earlier pass kept there (keep_argmax) without the host seeing
     * them, so none is checked; one outside the vocabulary is embedded as zeros. */
    const struct kern_tensor *kept_tokens;
    int64_t kept_row0;
    /* NULL: none; else each output position's greedy id goes to rows keep_row0 .. of this backend tensor
     * of ids (kern_backend_ops.argmax_keep), not to the host: argmax's choice, for a later pass's
     * kept_tokens. A chain of such passes (a draft model's greedy run) waits for the device only when its
     * ids are read back at its end. */
    struct kern_tensor *keep_argmax;
    int64_t keep_row0;
    bool all_logits; /* the outputs below cover all n positions, else the last one only */
    float *logits;   /* NULL: none; else n x n_vocab floats (all_logits) or the last position's n_vocab */
    /* NULL: none; else each position's greedy choice, made by the backend without moving its logits to
     * the host: argmax[i] is the largest logit's id (lowest on ties, never NaN; -1 when all are NaN or -inf),
     * argmax_prob[i] (optional) its softmax probability (kern_backend_ops.argmax). */
    int32_t *argmax;
    float *argmax_prob;
    /* NULL: none; else each position's processed distribution, made by the backend without moving its
     * logits to the host (kern_backend_ops.sample_process, which the backend must have): position i's
     * goes to row probs_row0 + i of *probs (a backend tensor of n_vocab columns), with these settings and
     * the penalty window of the last window_len tokens of window_ctx[0 .. window_end0 + i). */
    const struct kern_sampler *sampler;
    struct kern_tensor *probs;
    int64_t probs_row0;
    const int32_t *window_ctx;
    size_t window_end0, window_len;
};

/* Append each item's tokens to its own sequence in one pass: every weight matrix is read once for the
 * positions of all items, attention runs per sequence over its own cache. Each position's logits are
 * bit-identical to what model_forward() on that sequence alone gives (the matmuls are batch-invariant),
 * so batching never changes a greedy choice. An internal step none of whose rows has outputs (every
 * step of a batch whose items want none, as engine's prefill) may take the backend's path for prefills
 * (kern_backend_ops.matmuls_prefill; CUDA's cuBLAS with kern_backend_config.blas_prefill): those rows'
 * cache entries then carry that path's bits, which do not depend on the step's other rows either.
 * Items must name distinct sequences of m. Errors as
 * model_forward(); on any error no sequence's length changes. */
int model_forward_batch(struct model *m, const struct model_batch_item *items, int n_items);

/* ---------------------------------------------------------------------------------------------- */
/* Conversion, as llama-quantize does it: every tensor of two or more dimensions (trailing ones not
 * counted) whose row length is a multiple of `type`'s block is dequantised and re-encoded as `type`
 * (kept as it is when already of that type); other tensors (norms, biases) and every metadata key are
 * copied, and general.file_type is set to llama.cpp's number for `type`. Converting to F32 gives
 * exactly ggml's dequantised values. Deterministic: the same input gives the same bytes. The output
 * is written as OUT.part and renamed, so a failure leaves no OUT. Types: F32, F16, BF16, Q4_0, Q4_1,
 * Q5_0, Q8_0, Q4_K, Q6_K (the K-quants with kern_quantize_row's simple encoder), else
 * SPEC_E_UNSUPPORTED; an input tensor to convert whose type the kernels cannot dequantise is
 * SPEC_E_UNSUPPORTED; reader and writer errors pass through. why (optional) gets a NUL-terminated
 * reason naming the file, key or tensor. */
int model_convert(const char *in_path, const char *out_path, enum spec_dtype type, char *why, size_t why_cap);

/* ---------------------------------------------------------------------------------------------- */
/* Synthetic models: valid llama/qwen2 GGUFs with seeded random weights and a synthetic vocabulary,
 * for tests and benchmarks without downloads. Matrices (token_embd and output included) are
 * N(0, 1/fan_in)-ish so activations and logits stay of order one; norms and biases are F32. */

struct model_synth_config {
    enum model_arch arch;
    enum spec_dtype wtype;   /* type of every matrix: any cpu type whose block size divides its rows */
    int n_layer, n_embd, n_head, n_head_kv, n_ff;
    int n_vocab;             /* TOK_SYNTH_BPE_MIN_VOCAB .. TOK_SYNTH_MAX_VOCAB (spm: from _SPM_MIN_) */
    int n_ctx;               /* <arch>.context_length */
    int n_rot;               /* rope.dimension_count; 0: head_dim */
    float rope_freq_base;    /* 0: 10000 */
    float rope_scale;        /* linear rope.scaling.factor; 0: no scaling keys */
    bool rope_freqs;         /* add a rope_freqs.weight of n_rot/2 divisors */
    bool tied_output;        /* no output.weight: the output reuses token_embd */
    enum tok_kind tok_kind;  /* synthetic vocabulary kind */
    uint64_t seed;
};

/* SPEC_E_INVALID_ARG for an inconsistent configuration (a dimension not divisible as required,
 * a type without a quantiser); writer and I/O errors pass through. */
int model_synth_write(const struct model_synth_config *cfg, const char *path);
/* The same GGUF in a malloc'd buffer (caller frees). */
int model_synth_write_memory(const struct model_synth_config *cfg, void **out, size_t *size);

#endif
