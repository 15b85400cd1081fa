/* The one door to the compute kernels.
 *
 * Two halves:
 *  1. Tensor data types with GGUF/ggml numbering and byte layouts, plus host-side conversion
 *     (quantise / dequantise a row). The GGUF reader, the synthetic-model tool and the tests use these.
 *  2. The backend interface: the ops a transformer forward pass needs. The CPU backend is the
 *     reference; the CUDA backend implements the same ops. Nothing outside kernels/cuda/ includes a
 *     CUDA header. */
#ifndef SPECD_KERNELS_BACKEND_H
#define SPECD_KERNELS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ggml_type numbering, as stored in GGUF tensor infos. Every ggml type is listed so that the GGUF
 * reader can size any tensor; `kern_dtype_info()->cpu` says which ones the kernels compute with. */
enum spec_dtype {
    SPEC_F32 = 0,
    SPEC_F16 = 1,
    SPEC_Q4_0 = 2,
    SPEC_Q4_1 = 3,
    /* 4 and 5 were Q4_2/Q4_3, removed from ggml */
    SPEC_Q5_0 = 6,
    SPEC_Q5_1 = 7,
    SPEC_Q8_0 = 8,
    SPEC_Q8_1 = 9,
    SPEC_Q2_K = 10,
    SPEC_Q3_K = 11,
    SPEC_Q4_K = 12,
    SPEC_Q5_K = 13,
    SPEC_Q6_K = 14,
    SPEC_Q8_K = 15,
    SPEC_IQ2_XXS = 16,
    SPEC_IQ2_XS = 17,
    SPEC_IQ3_XXS = 18,
    SPEC_IQ1_S = 19,
    SPEC_IQ4_NL = 20,
    SPEC_IQ3_S = 21,
    SPEC_IQ2_S = 22,
    SPEC_IQ4_XS = 23,
    SPEC_I8 = 24,
    SPEC_I16 = 25,
    SPEC_I32 = 26,
    SPEC_I64 = 27,
    SPEC_F64 = 28,
    SPEC_IQ1_M = 29,
    SPEC_BF16 = 30,
    /* 31..33 were Q4_0_4_4 etc., removed from ggml */
    SPEC_TQ1_0 = 34,
    SPEC_TQ2_0 = 35,
    SPEC_DTYPE_COUNT = 36,
};

struct kern_dtype_info {
    const char *name;    /* "Q4_K" */
    uint32_t block_size; /* elements per block (1 for plain types) */
    uint32_t type_size;  /* bytes per block */
    bool cpu;            /* the kernels can dequantise and multiply this type */
};

/* NULL when `type` is not a known ggml type. */
const struct kern_dtype_info *kern_dtype_info(uint32_t type);

/* Bytes of a row of n elements: SPEC_E_INVALID_ARG for an unknown type, SPEC_E_RANGE when n is not a
 * multiple of the block size or the size overflows. */
int kern_row_bytes(uint32_t type, uint64_t n, uint64_t *out);

/* Bytes of one row and of ne1 rows of ne0 elements: SPEC_E_RANGE for an empty shape or an overflow,
 * otherwise kern_row_bytes' errors. */
int kern_tensor_bytes(uint32_t type, int64_t ne0, int64_t ne1, size_t *row_bytes, size_t *total);

/* Scalar conversions with ggml's rounding (round to nearest even; NaN stays NaN). */
float kern_fp16_to_fp32(uint16_t h);
uint16_t kern_fp32_to_fp16(float f);
float kern_bf16_to_fp32(uint16_t h);
uint16_t kern_fp32_to_bf16(float f);

/* Host-side row conversion; n must be a multiple of the block size.
 * Dequantisation is bit-exact with ggml's reference. Quantisation produces valid blocks (the
 * reference quantisers of ggml for Q8_0, Q8_1, Q8_K, Q4_0, Q4_1, Q5_0; a simple valid encoder for K-quants).
 * Return 0, SPEC_E_UNSUPPORTED for a type the CPU kernels lack, SPEC_E_RANGE for a bad n. */
int kern_dequantize_row(enum spec_dtype type, const void *src, float *dst, int64_t n);
int kern_quantize_row(enum spec_dtype type, const float *src, void *dst, int64_t n);

/* ---------------------------------------------------------------------------------------------- */
/* Backend interface                                                                              */

/* A 2-D tensor: ne1 rows of ne0 elements, rows row_bytes apart. `data` is backend memory (host
 * memory on the CPU, device memory on CUDA). Activations are always SPEC_F32. */
struct kern_tensor {
    enum spec_dtype type;
    int64_t ne0;
    int64_t ne1;
    size_t row_bytes;
    void *data;
    bool owned; /* allocated by the backend (freed by kern_tensor_free), else a view */
};


enum kern_rope_mode {
    KERN_ROPE_NORM = 0, /* llama: rotate adjacent pairs (x[2i], x[2i+1]) */
    KERN_ROPE_NEOX = 2, /* qwen2/neox: rotate halves (x[i], x[i + n_rot/2]) */
};

struct kern_rope_params {
    enum kern_rope_mode mode;
    int n_rot;          /* rotated dimensions per head (<= head_dim, even) */
    float freq_base;    /* rope.freq_base */
    float freq_scale;   /* 1 / rope.scaling.factor for linear scaling, else 1 */
    const float *freq_factors; /* optional per-dimension divisors (n_rot/2 floats, host memory), or NULL */
};

/* One sequence's attention: n queries at positions pos0 .. pos0+n-1 attend causally to cache rows
 * 0 .. pos0+n-1 (the new keys/values must already be in the cache). */
struct kern_attn_params {
    int n_head;
    int n_head_kv; /* GQA: n_head is a multiple of n_head_kv */
    int head_dim;
    int pos0;
    float scale; /* usually 1/sqrt(head_dim) */
};

/* One of the matmuls of one input (the matmuls op): y = x . w^T (+ bias). */
#define KERN_MATMULS_MAX 3
struct kern_matmul {
    const struct kern_tensor *w;
    const struct kern_tensor *bias; /* NULL or one F32 row of w->ne1 */
    struct kern_tensor *y;
};

/* What follows the matmuls op's products. */
enum kern_matmuls_then {
    KERN_MATMULS_PLAIN = 0,  /* nothing */
    KERN_MATMULS_SWIGLU = 1, /* two products of one shape: y0 = silu(y0) * y1, as swiglu(y0, y1, y0) */
};

/* Sampler settings, as verify/verify.h's verify_params (without the seed: random draws are made by the
 * caller and passed in as uniforms). */
struct kern_sampler {
    float temperature;       /* 0: one-hot on the argmax (lowest id on ties) */
    int32_t top_k;           /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off */
    float frequency_penalty; /* 0: off */
    float presence_penalty;  /* 0: off */
};

/* One row for sample_process: logits row `row` becomes the processed distribution in row `out_row` of
 * `out` (F32, at least as wide as the logits: ids past the logits count as -inf, as a draft's logits of
 * its first ids only do). `recent` (host memory) is the penalty window. */
struct kern_sample_row {
    const struct kern_sampler *s;
    int64_t row;
    struct kern_tensor *out;
    int64_t out_row;
    const int32_t *recent;
    int n_recent;
};

/* One round of rejection sampling for sample_choose, on processed rows that stay on the backend: the
 * n_draft draft tokens against target rows p (n_draft + 1 rows from p_row) and draft rows q (n_draft
 * rows from q_row; q NULL: one-hot on each draft token, as prompt lookup proposes). Draft token i is
 * accepted when u_accept[i] < min(1, p(x)/q(x)); at the first rejection the token is drawn from
 * normalise(max(0, p - q)) of that position with u_sample[i], and when all are accepted from the last p
 * row with u_sample[n_draft]. n_draft = 0 draws one token from p's row: how a draft samples its own q. */
struct kern_choose {
    const struct kern_tensor *p;
    int64_t p_row;
    const struct kern_tensor *q;
    int64_t q_row;
    const int32_t *draft;    /* host memory */
    int n_draft;
    const double *u_accept;  /* n_draft uniforms in [0, 1), host memory */
    const double *u_sample;  /* n_draft + 1 uniforms in [0, 1), host memory */
    /* results */
    int n_accepted; /* the round's tokens are draft[0 .. n_accepted) then token */
    int32_t token;
    float prob;     /* token's probability in p row n_accepted */
    int err;        /* SPEC_E_NUMERIC when the row drawn from has no mass, else SPEC_OK */
};

/* Argument checks every backend runs before an op (kernels/check.c), so that all backends refuse the
 * same calls with the same codes: SPEC_E_INVALID_ARG (missing tensor, mismatched shapes, an
 * activation that is not F32 with at most INT32_MAX rows and columns), then SPEC_E_UNSUPPORTED (a
 * type the op cannot take), then SPEC_E_RANGE (rows or ids outside a tensor). Each takes the
 * arguments of the op of the same name below. */

/* SPEC_E_RANGE unless t has data and rows [row0, row0 + n) lie within its ne1 rows (n may be 0). */
int kern_rows_check(const struct kern_tensor *t, int64_t row0, int64_t n);
int kern_get_rows_check(const struct kern_tensor *table, const int32_t *ids, int n, const struct kern_tensor *out);
int kern_matmul_check(const struct kern_tensor *w, const struct kern_tensor *x, const struct kern_tensor *bias,
                      const struct kern_tensor *y);
/* Each part as kern_matmul_check, 1 .. KERN_MATMULS_MAX parts of one weight type, no output overlapping
 * x or another output, and SWIGLU with exactly two outputs of one shape (SPEC_E_INVALID_ARG). */
int kern_matmuls_check(const struct kern_tensor *x, const struct kern_matmul *mm, int n, enum kern_matmuls_then then);
/* swiglu and add: three F32 tensors of one shape */
int kern_eltwise_check(const struct kern_tensor *a, const struct kern_tensor *b, const struct kern_tensor *out);
int kern_rms_norm_check(const struct kern_tensor *x, const struct kern_tensor *residual, const struct kern_tensor *w,
                        float eps, const struct kern_tensor *y);
int kern_rope_check(const struct kern_tensor *x, int n_head, int head_dim, const int32_t *pos,
                    const struct kern_rope_params *p);
int kern_store_rows_check(const struct kern_tensor *src, const struct kern_tensor *dst, int64_t dst_row0);
int kern_attention_check(const struct kern_tensor *q, const struct kern_tensor *k_cache,
                         const struct kern_tensor *v_cache, const struct kern_attn_params *p,
                         const struct kern_tensor *out);
int kern_argmax_check(const struct kern_tensor *x, const int32_t *ids);
/* ids: one SPEC_I32 column (SPEC_E_INVALID_ARG), whose rows from row0 must hold x's rows' or n
 * (SPEC_E_RANGE). */
int kern_argmax_keep_check(const struct kern_tensor *x, const struct kern_tensor *ids, int64_t row0);
int kern_get_rows_kept_check(const struct kern_tensor *table, const struct kern_tensor *ids, int64_t row0, int n,
                             const struct kern_tensor *out);
/* SPEC_E_RANGE for a setting out of range or NaN (verify_params_check's rules). */
int kern_sampler_check(const struct kern_sampler *s);
/* Rows: logits F32 and each out F32, one width for all, at least the logits' (SPEC_E_INVALID_ARG, as a
 * missing sampler or window, or n < 0), then the sampler (kern_sampler_check), then rows inside their
 * tensors (SPEC_E_RANGE). Window tokens outside the vocabulary are ignored, as verify_process ignores them. */
int kern_sample_process_check(const struct kern_tensor *logits, const struct kern_sample_row *rows, int n);
/* Jobs: p F32 (one width for all), q NULL or F32 of p's width, uniforms and drafts present, n_draft >= 0
 * (SPEC_E_INVALID_ARG), then rows inside p and q and draft ids inside the vocabulary (SPEC_E_RANGE). */
int kern_sample_choose_check(const struct kern_choose *jobs, int n);

struct kern_backend;

/* Counts of steps (step_begin .. step_end) since the backend was made. */
struct kern_step_stats {
    long steps;    /* begun */
    long recorded; /* recorded as a unit and run */
    long replayed; /* ran a recorded unit again, without their ops being launched or recorded */
    long repeated; /* replays given up, the caller told to issue the step again (step_end's *again) */
    long nodes;    /* launches and copies of the last recorded unit */
};

struct kern_backend_ops {
    const char *name;
    void (*destroy)(struct kern_backend *be);

    int (*tensor_alloc)(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                        struct kern_tensor *out);
    void (*tensor_free)(struct kern_backend *be, struct kern_tensor *t);
    /* Make weights usable by this backend: the CPU wraps `host` (which must outlive the tensor,
     * e.g. the GGUF mmap); CUDA uploads a copy. */
    int (*weight_from_host)(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                            const void *host, struct kern_tensor *out);
    /* Copy rows [row0, row0+n) between host memory and a tensor of any type. */
    int (*rows_to_host)(struct kern_backend *be, const struct kern_tensor *t, int64_t row0, int64_t n,
                        void *host);
    int (*rows_from_host)(struct kern_backend *be, struct kern_tensor *t, int64_t row0, int64_t n,
                          const void *host);

    /* out[i] = dequant(table[ids[i]]), ids in host memory, out F32 with n rows. */
    int (*get_rows)(struct kern_backend *be, const struct kern_tensor *table, const int32_t *ids, int n,
                    struct kern_tensor *out);
    /* y[r][j] = sum_k x[r][k] * w[j][k] (+ bias[j]): w is ne1 x K of any cpu type, x is n x K F32,
     * y n x ne1 F32, bias NULL or one F32 row of ne1. The bias is added to the finished sum, as a
     * separate add would: the bits are those of the sum plus the bias in float. */
    int (*matmul)(struct kern_backend *be, const struct kern_tensor *w, const struct kern_tensor *x,
                  const struct kern_tensor *bias, struct kern_tensor *y);
    /* The matmuls of one input with up to KERN_MATMULS_MAX weights of one type (a layer's q, k and v;
     * gate and up), then `then`: the bits of that many matmul calls followed by swiglu(y0, y1, y0) for
     * SWIGLU. The CUDA backend converts x once and runs them in one launch, the swiglu included. */
    int (*matmuls)(struct kern_backend *be, const struct kern_tensor *x, const struct kern_matmul *mm, int n,
                   enum kern_matmuls_then then);
    /* Optional (NULL: matmuls serves): as matmuls, for the rows of a prefill, whose results only the KV
     * cache reads. The backend may take a path for wide batches there whose bits differ from matmuls'
     * (within the error bounds of tests/kernels/test_backend_conformance.c), but, as matmuls', a row's
     * bits depend on that row alone, never on the others of the call. CUDA with
     * kern_backend_config.blas_prefill: cuBLAS; without, matmuls. */
    int (*matmuls_prefill)(struct kern_backend *be, const struct kern_tensor *x, const struct kern_matmul *mm,
                           int n, enum kern_matmuls_then then);
    /* y = x / sqrt(mean(x^2) + eps) * w, row by row (y may be x). With a residual (NULL or x's shape),
     * x += residual first, in place, as add would (y may also be the residual): a transformer's
     * "add the sublayer's output, normalise for the next" in one op. */
    int (*rms_norm)(struct kern_backend *be, struct kern_tensor *x, const struct kern_tensor *residual,
                    const struct kern_tensor *w, float eps, struct kern_tensor *y);
    /* In place on x (rows of n_head * head_dim); pos[r] is row r's position (host memory). */
    int (*rope)(struct kern_backend *be, struct kern_tensor *x, int n_head, int head_dim, const int32_t *pos,
                const struct kern_rope_params *p);
    /* Write rows of src (F32) into dst (any plain type, e.g. the F16 KV cache) starting at dst_row0. */
    int (*store_rows)(struct kern_backend *be, const struct kern_tensor *src, struct kern_tensor *dst,
                      int64_t dst_row0);
    /* q: n x (n_head*head_dim), k/v cache: rows x (n_head_kv*head_dim), out: n x (n_head*head_dim). */
    int (*attention)(struct kern_backend *be, const struct kern_tensor *q, const struct kern_tensor *k_cache,
                     const struct kern_tensor *v_cache, const struct kern_attn_params *p,
                     struct kern_tensor *out);
    /* out = silu(gate) * up, elementwise (out may alias either input). */
    int (*swiglu)(struct kern_backend *be, const struct kern_tensor *gate, const struct kern_tensor *up,
                  struct kern_tensor *out);
    /* out = a + b, elementwise (out may alias either input). */
    int (*add)(struct kern_backend *be, const struct kern_tensor *a, const struct kern_tensor *b,
               struct kern_tensor *out);
    /* Greedy choices without moving rows of logits to the host. For every row r of x (F32), ids[r] is
     * the index of its largest value, the lowest index on ties, never a NaN or -inf (-1 when the row
     * holds nothing else). probs, when not NULL, gets that value's softmax probability over the row:
     * 1 / sum_j exp(x_j - x_best) over the non-NaN x_j, summed in double (1 when x_best is +inf, 0
     * when ids[r] is -1). ids and probs are host arrays of x->ne1 entries. */
    int (*argmax)(struct kern_backend *be, const struct kern_tensor *x, int32_t *ids, float *probs);
    /* Optional (NULL: every greedy id crosses to the host, through argmax and get_rows): greedy choices
     * that stay on the backend, so that a chain of steps each fed the token the step before chose (a
     * draft model's run) takes no round trip to the host per token. argmax_keep writes argmax's id of
     * each row of x (the same choice) into rows row0 .. row0 + x->ne1 - 1 of ids, a tensor of one
     * SPEC_I32 column; get_rows_kept is get_rows with its n ids read from rows row0 .. of such a
     * tensor. An id outside the table there (argmax's -1 of a row without a number) gives a row of
     * zeros, so the chain goes on with numbers: where it failed shows in its ids, read back at its end
     * (rows_to_host). Neither waits for the device: in a step (step_begin), both are part of it. */
    int (*argmax_keep)(struct kern_backend *be, const struct kern_tensor *x, struct kern_tensor *ids, int64_t row0);
    int (*get_rows_kept)(struct kern_backend *be, const struct kern_tensor *table, const struct kern_tensor *ids,
                         int64_t row0, int n, struct kern_tensor *out);

    /* Optional (NULL: the caller samples on the host with verify/, as with the CPU backend, where the
     * logits are host memory already): sampling without moving rows of logits to the host.
     * sample_process writes each row's processed distribution as verify_process does (penalties over the
     * window, then top-k, top-p and min-p on the softmax of the penalised logits, then temperature;
     * all zeros when no logit is finite); sample_choose runs each job's round as verify_round_sampled does
     * and fills its results; only those cross to the host. The CUDA backend's error bounds against
     * verify/ are stated in tests/kernels/test_backend_conformance.c. */
    int (*sample_process)(struct kern_backend *be, const struct kern_tensor *logits,
                          const struct kern_sample_row *rows, int n);
    int (*sample_choose)(struct kern_backend *be, struct kern_choose *jobs, int n);

    /* Optional, for profiling (NULL where every op has finished when it returns, as on the CPU):
     * mark records a point on the device's timeline after everything enqueued so far and names it
     * by *id; mark_elapsed waits for two marks and gives the milliseconds between them;
     * marks_reset forgets every mark. */
    int (*mark)(struct kern_backend *be, int *id);
    int (*mark_elapsed)(struct kern_backend *be, int from, int to, float *ms);
    void (*marks_reset)(struct kern_backend *be);

    /* Optional (NULL where every op runs as it comes, as on the CPU): the ops between step_begin and
     * step_end are one forward step, which the backend may record and run as a unit at step_end (CUDA:
     * a graph), and run again for a later step whose ops are the same but for the contents of their
     * host arrays and their positions. `shape` names which steps issue the same ops in the same order
     * (the same kernels, other arguments), so that a unit recorded for one can serve the next. Results
     * are those of the ops run one by one; an op that waits for the device or returns data to the host
     * ends the unit early. step_end must follow every step_begin, also after a failed op. It sets
     * *again when none of the step's ops ran (a replay found them different from the recording; ops
     * that had to return data then returned SPEC_E_CANCELLED): the caller issues the same step once
     * more, which then runs. */
    int (*step_begin)(struct kern_backend *be, uint64_t shape);
    int (*step_end)(struct kern_backend *be, bool *again);
    /* Optional: how the steps ran so far. */
    int (*step_stats)(struct kern_backend *be, struct kern_step_stats *out);
    /* Optional (NULL: no kernel profiler to tell, as on the CPU): from on to off is the region a kernel
     * profiler started with its collection off records (CUDA: cudaProfilerStart/Stop, for `ncu
     * --profile-from-start off`). Both wait for what was enqueued before them, so the region holds the
     * work enqueued between them and nothing else. */
    int (*profiler_region)(struct kern_backend *be, bool on);
    /* Optional (NULL where memory is the host's, as on the CPU): the device memory the backend holds now
     * (kern_backend_config.device_bytes counts it). */
    int (*device_memory)(struct kern_backend *be, size_t *used);
};

struct kern_backend {
    const struct kern_backend_ops *ops;
};

struct kern_backend_config {
    int n_threads; /* CPU worker threads; <= 0 means one per online core */
    bool profile;  /* wrap the backend so that kern_profile_start/stop can time its ops */
    bool graphs;   /* CUDA: record steps as graphs and replay them (step_begin/step_end); off, every op runs
                    * as it comes. Opt-in until timed on a GPU: recording was bit-identical on an H200,
                    * replays are checked on the simulator, the speed of neither is measured yet */
    bool tensor_cores; /* CUDA: quantised matmuls (every batch size, decode included) on int8 tensor cores
                        * (mma) instead of dp4a. Opt-in until timed on a GPU; checked on the simulator */
    bool blas_prefill; /* CUDA: a prefill's matmuls (matmuls_prefill) through cuBLAS on F16 copies of the
                        * weights, made per matmul. Opt-in until timed on a GPU against dp4a and tensor
                        * cores; needs libcublas at run time (else kern_backend_create fails) */
    size_t device_bytes; /* CUDA: the most device memory the backend holds at once (weights, KV caches,
                          * scratch; not cuBLAS's workspace), for a GPU shared with other programs; an
                          * allocation past it fails with SPEC_E_NOMEM as one past the GPU's memory does.
                          * 0: no cap but the GPU's */
};

/* name: "cpu", "cuda" or "auto" (CUDA when a device is usable, else CPU).
 * SPEC_E_UNSUPPORTED when the named backend is not built in or has no device. */
int kern_backend_create(const char *name, const struct kern_backend_config *cfg, struct kern_backend **out);
void kern_backend_destroy(struct kern_backend *be);

/* The backend's name and the CUDA settings of cfg it runs with, for people: "cuda, steps as graphs". */
void kern_backend_describe(const struct kern_backend *be, const struct kern_backend_config *cfg, char *buf,
                           size_t cap);
/* Whether cfg asks for anything only the CUDA backend does (a CPU backend ignores it). */
bool kern_backend_config_cuda_only(const struct kern_backend_config *cfg);

/* Where a backend's time goes, per kind of op (matmuls per weight type and shape): calls, the host's time
 * inside the op, the device's time from just before the op's work to just after it (the host's
 * time where the backend has no marks), and the bytes the op must read: weights for a matmul, the
 * K and V rows for attention, 0 for the others. When the host enqueues work more slowly than the
 * device runs it, the device's time includes its waits for the host. */
struct kern_op_profile {
    char op[32]; /* "matmul Q4_K 8960x1536" (output rows x input width), "attention", ... */
    long calls;
    double host_ms;
    double device_ms;
    double bytes;
};

/* Profiling a backend made with cfg.profile (else SPEC_E_UNSUPPORTED): start clears the counts
 * and times every op from then on; stop waits for the device, stops timing and gives up to cap
 * kinds (*n of them, in the order first seen). Until started, the wrapper only forwards. */
int kern_profile_start(struct kern_backend *be);
int kern_profile_stop(struct kern_backend *be, struct kern_op_profile *out, int cap, int *n);

#endif
