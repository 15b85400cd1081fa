/* CUDA-internal: the launchers the backend (backend_cuda.cu) calls and the device helpers its kernel
 * files share. Included only by the .cu files beside it.
 *
 * Conventions: every launcher enqueues on `st` and returns cudaGetLastError(); strides are in
 * elements of the pointed-to type; arguments were validated by the backend. Every kernel reads only
 * what it is given, so no launch depends on another except through the stream's order. */
#ifndef SPECD_KERNELS_CUDA_CUDA_OPS_H
#define SPECD_KERNELS_CUDA_CUDA_OPS_H

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <utility>

extern "C" {
#include "kernels/backend.h"
}

/* ---------------------------------------------------------------------------------------------- */
/* Launches, and the trace that lets a recorded step be replayed                                  */

/* While the backend records a step as a graph or replays one (backend_cuda.cu), every launch and copy
 * on its stream is also a node of the step's trace: the words of what the node does (the kernel, the
 * launch shape and every argument's bits; a copy's ends and length). Two steps with equal traces make
 * the same graph, so a recorded graph can run again without its ops being launched or captured: only
 * the host arrays it copies from change, and those it reads when it runs. A replay compares its
 * nodes' words with the recording's, which is exact and, unlike a hash's chain of multiplies, costs
 * the host little: it is done for every argument of a step's ~150 launches while the GPU waits. */
struct cuda_trace;
extern thread_local struct cuda_trace *cuda_tracing; /* the backend's trace during such a step, else NULL */
/* Recorded kernels launch as programmatic dependents (below) unless SPECD_CUDA_PDL=0 (for the A/B). */
extern bool cuda_dependent_launches;
/* The matmuls prefetch their weights, and attention its chunks' keys and values, before they wait
 * (cuda_prefetch_l2) unless SPECD_CUDA_PREFETCH=0 (for the A/B). */
extern bool cuda_prefetch_weights;
/* A prefill's attention takes several (query, head) pairs a block (cuda_attention) unless
 * SPECD_CUDA_ATT_TILE=0 (for the A/B). */
extern bool cuda_attention_tiles;
/* What waits for a matmul of one row (a norm, a rope and its store) runs in the matmul's last thread
 * block (cuda_act) unless SPECD_CUDA_AFTER_MATMUL=0 (for the A/B). */
extern bool cuda_after_matmul;
/* Quantised rows of more units than a warp has lanes take a block each (matmul.cu's mmv_wide) unless
 * SPECD_CUDA_WIDE=0 (for the A/B; either way a run's matmuls all sum such rows one way). */
extern bool cuda_wide_rows;

/* One node's words (a launch of 16 sequences' stores and attention takes ~200). A node of more cannot
 * be traced: its step is never replayed. */
#define CUDA_NODE_WORDS 512

struct cuda_node {
    uint64_t w[CUDA_NODE_WORDS];
    int n;
};

static inline void cuda_node_word(cuda_node &nd, uint64_t w)
{
    if (nd.n < CUDA_NODE_WORDS)
        nd.w[nd.n] = w;
    nd.n++;
}

/* Adds a node to the trace when st is the traced stream. true: make the launch or copy (not traced,
 * or recording); false: replaying, the graph will run it. */
bool cuda_trace_node(cudaStream_t st, const cuda_node &nd);

/* A kernel argument's bits, a word each. A struct passed by value adds its members in an overload of
 * its own (padding bytes hold anything). */
template <class T>
static inline void cuda_trace_arg(cuda_node &nd, const T &v)
{
    static_assert(std::is_scalar<T>::value, "a kernel parameter passed by value needs a cuda_trace_arg overload");
    static_assert(sizeof v <= sizeof(uint64_t), "a scalar wider than a word");
    uint64_t w = 0;
    memcpy(&w, &v, sizeof v);
    cuda_node_word(nd, w);
}

template <class... T>
static inline void cuda_trace_args(cuda_node &nd, const T &...v)
{
    (cuda_trace_arg(nd, v), ...);
}

/* The launch itself: <<< >>> for nvcc; the CPU simulator that runs these sources in CI
 * (tests/support/cudasim) defines its own, as a host compiler has none. A recorded step's kernels
 * launch as programmatic dependents of the kernel before them (the graph's edges between kernels
 * become programmatic): each may be scheduled while the one before finishes, and waits for it in
 * cuda_grid_wait, before it reads anything a kernel writes, so only its launch and what it does before
 * (the matmuls' prefetch of their weights) overlap. */
#ifndef CUDA_KERNEL_LAUNCH
#define CUDA_KERNEL_LAUNCH(grid, block, st, kernel, ...) kernel<<<grid, block, 0, st>>>(__VA_ARGS__)

template <class... P, class... A>
static inline void cuda_launch_dependent(dim3 grid, dim3 block, cudaStream_t st, void (*kernel)(P...), A... args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kernel, args...);
}
#define CUDA_KERNEL_LAUNCH_DEPENDENT(grid, block, st, kernel, ...)                                                \
    cuda_launch_dependent(grid, block, st, kernel, __VA_ARGS__)
#endif

/* Every kernel calls it before it reads what a kernel writes (most, first): lets the next kernel of a
 * recorded step be scheduled, then waits until the grids before this one have finished and their
 * writes are visible (PTX griddepcontrol; nothing to wait for when the kernel was launched plainly). */
static __device__ __forceinline__ void cuda_grid_wait(void)
{
#if defined(__CUDA_ARCH__)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#elif defined(CUDASIM)
    cudasim::grid_wait();
#endif
}

/* A hint that the block reads [p, p + bytes) soon: its threads bring the range's 128-byte lines into
 * L2. Issued before cuda_grid_wait for what the kernels before mostly do not write (weights, the cache
 * rows of earlier steps), it lets a recorded step's memory traffic overlap the end of the kernel
 * before, whose last blocks leave the memory idle. L2 is where global memory is coherent, so the hint
 * can never make a load see stale values, even of a line written after it. */
static __device__ __forceinline__ void cuda_prefetch_l2(const void *p, size_t bytes)
{
    const uintptr_t start = (uintptr_t)p, end = start + bytes;
    for (uintptr_t line = (start & ~(uintptr_t)127) + 128u * threadIdx.x; line < end; line += 128u * blockDim.x) {
        const uintptr_t at = line < start ? start : line;
#if defined(__CUDA_ARCH__)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(at));
#elif defined(CUDASIM)
        cudasim::prefetch((const void *)at);
#endif
    }
}

template <class... P>
struct cuda_launch {
    dim3 grid, block;
    cudaStream_t st;
    void (*kernel)(P...);

    /* The arguments are converted to the kernel's parameter types first, as a launch converts them. */
    template <class... A>
    void operator()(A &&...args) const
    {
        run(P(std::forward<A>(args))...);
    }

    void run(P... p) const
    {
        if (cuda_tracing) {
            cuda_node nd;
            nd.n = 0;
            cuda_trace_args(nd, kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z, p...);
            if (!cuda_trace_node(st, nd)) /* replaying */
                return;
            if (cuda_dependent_launches) {
                CUDA_KERNEL_LAUNCH_DEPENDENT(grid, block, st, kernel, p...);
                return;
            }
        }
        CUDA_KERNEL_LAUNCH(grid, block, st, kernel, p...);
    }
};

template <class... P>
static inline cuda_launch<P...> cuda_launcher(dim3 grid, dim3 block, cudaStream_t st, void (*kernel)(P...))
{
    return cuda_launch<P...>{grid, block, st, kernel};
}

/* Every kernel launch: CUDA_LAUNCH(grid, block, stream, kernel)(arguments...). */
#define CUDA_LAUNCH(grid, block, st, ...) cuda_launcher(grid, block, st, &__VA_ARGS__)

/* A backend's device memory: the bytes it holds (weights, caches, scratch) and the most it may hold
 * (kern_backend_config.device_bytes; 0: what the GPU has). */
struct cuda_mem {
    size_t used, cap;
    bool short_of; /* an allocation failed since the step began */
};

/* cudaMalloc within m's cap (cudaErrorMemoryAllocation past it, as from the GPU; either sets
 * m->short_of), and its cudaFree; bytes as allocated. */
cudaError_t cuda_mem_alloc(struct cuda_mem *m, void **p, size_t bytes);
void cuda_mem_free(struct cuda_mem *m, void *p, size_t bytes);

/* A grow-only device buffer for scratch data (converted activations, attention partials, ids). */
#define CUDA_BUF_RETIRED 4

struct cuda_buf {
    void *p;
    size_t cap;
    void *retired[CUDA_BUF_RETIRED]; /* outgrown during a capture: freed when nothing can use them */
    size_t retired_cap[CUDA_BUF_RETIRED];
    struct cuda_mem *mem; /* the backend's, set when the backend is made */
};

/* Scratch buffers are carved into parts at 256-byte boundaries. */
static inline size_t cuda_align256(size_t bytes)
{
    return (bytes + 255) & ~(size_t)255;
}

/* Makes b at least `bytes` long; the contents are lost when it grows. cudaFree waits for work in
 * flight, so a kernel still reading the old buffer finishes first. While st is being captured into
 * a graph (which may not wait), an outgrown block is kept in b->retired until the next growth outside
 * a capture or the release: nodes captured before still name it. */
cudaError_t cuda_buf_reserve(cudaStream_t st, struct cuda_buf *b, size_t bytes);
void cuda_buf_release(struct cuda_buf *b);

/* Elementwise kernels: CUDA_ELT_THREADS threads a block, a grid of cuda_elt_blocks(total) blocks, each
 * thread taking elements i, i + the grid's threads, ... (CUDA_GRID_STRIDE). */
#define CUDA_ELT_THREADS 256
#define CUDA_ELT_MAX_BLOCKS 4096

static inline unsigned cuda_elt_blocks(int64_t total)
{
    const int64_t b = (total + CUDA_ELT_THREADS - 1) / CUDA_ELT_THREADS;
    return (unsigned)(b < 1 ? 1 : b > CUDA_ELT_MAX_BLOCKS ? CUDA_ELT_MAX_BLOCKS : b);
}

#define CUDA_GRID_STRIDE(i, total)                                                                         \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total);                         \
         i += (int64_t)gridDim.x * blockDim.x)

/* ggml_silu_f32 of the gate g, times the up value u: swiglu's expression, wherever it is computed. */
static __device__ __forceinline__ float cuda_silu_mul(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

/* Called by every thread of a block after its writes: true (in all of them) in the last of n blocks to
 * arrive at *count, which it resets to zero for the next launch; that block sees the others' writes
 * through L2 (__ldcg), each having fenced them before arriving. */
static __device__ __forceinline__ bool cuda_last_to_arrive(int *count, int n)
{
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(count, 1) == n - 1;
        if (last)
            *count = 0;
    }
    __syncthreads();
    return last;
}

/* A buffer of such counters and nothing else: zeroed whenever it is made anew, as the kernels leave
 * them at zero after every launch. (Counters beside other data would be that data's bytes wherever a
 * later launch needs more counters than an earlier one did.) */
static inline cudaError_t cuda_reserve_counters(cudaStream_t st, struct cuda_buf *b, size_t bytes)
{
    void *before = b->p;
    cudaError_t err = cuda_buf_reserve(st, b, bytes);
    if (err == cudaSuccess && b->p != before)
        err = cudaMemsetAsync(b->p, 0, b->cap, st);
    return err;
}

/* Which weight types the matmul and get_rows kernels take (the CPU backend's nine). */
bool cuda_weight_type_ok(enum spec_dtype t);

/* kern_backend.h's rms_norm over `rows` rows of ne0: x += res first when res is not NULL, then
 * y = x / sqrt(mean(x^2) + eps) * w (y may be x or res). */
struct cuda_norm {
    float *x;
    size_t x_stride;
    const float *res;
    size_t res_stride;
    const float *w;
    float eps;
    float *y;
    size_t y_stride;
    int ne0, rows;
};

/* For a recorded step's trace: a norm passed by value, member by member. */
static inline void cuda_trace_arg(cuda_node &nd, const cuda_norm &nm)
{
    cuda_trace_args(nd, nm.x, nm.x_stride, nm.res, nm.res_stride, nm.w, nm.eps, nm.y, nm.y_stride, nm.ne0, nm.rows);
}

/* A rope: the first n_rot dimensions of every head of every row of x rotated in place; table holds,
 * per row, n_rot floats: (cos, sin) of each rotated pair (computed on the host, as the CPU backend
 * does). */
struct cuda_rope {
    float *x;
    size_t x_stride;
    int rows, n_head, head_dim, n_rot;
    bool neox;
    const float *table;
};

static inline void cuda_trace_arg(cuda_node &nd, const cuda_rope &rp)
{
    cuda_trace_args(nd, rp.x, rp.x_stride, rp.rows, rp.n_head, rp.head_dim, rp.n_rot, rp.neox, rp.table);
}

cudaError_t cuda_rope_rows(cudaStream_t st, const struct cuda_rope *rp);

/* Sequences a step's stores and attention take in one launch (a step of more runs more launches). */
#define CUDA_STEP_SEQS 16

/* A store of rows src_row0 .. src_row0 + rows - 1 of a rope's x (src: the first of them, possibly
 * columns past the rope's heads, as V beside K) into dst rows row0 .. (row0 from row0_at when not
 * NULL), F16 or F32. */
struct cuda_store {
    const float *src;
    size_t src_stride;
    void *dst;
    size_t dst_row_bytes;
    const int *row0_at;
    int row0, src_row0, ne0, rows;
    bool f16;
};

static inline void cuda_trace_arg(cuda_node &nd, const cuda_store &sp)
{
    cuda_trace_args(nd, sp.src, sp.src_stride, sp.dst, sp.dst_row_bytes, sp.row0_at, sp.row0, sp.src_row0, sp.ne0,
                    sp.rows, sp.f16);
}

/* The stores of a step's sequences (each its K and V into its own cache), of rows of one rope. */
struct cuda_stores {
    struct cuda_store s[CUDA_STEP_SEQS];
    int n;
};

static inline void cuda_trace_arg(cuda_node &nd, const cuda_stores &ss)
{
    for (int i = 0; i < ss.n; i++)
        cuda_trace_arg(nd, ss.s[i]);
    cuda_trace_arg(nd, ss.n);
}

/* kern_backend.h's attention for a step's sequences in one launch: sequence i's n queries are the rows
 * of q and out after those of sequences 0 .. i-1, at positions pos0 .. pos0 + n - 1 (pos0 read from
 * device memory at pos0_at when that is not NULL) over its cache rows 0 .. pos0 + n - 1. part and
 * counters: the backend's scratch (cuda_attention). */
struct cuda_attn_seq {
    const void *k, *v;
    const int *pos0_at;
    int pos0, n;
};

struct cuda_attn {
    struct cuda_buf *part, *counters;
    const float *q;
    size_t q_stride;
    float *out;
    size_t out_stride;
    size_t k_row_bytes, v_row_bytes;
    enum spec_dtype k_type, v_type;
    int n_head, n_head_kv, head_dim;
    float scale;
    struct cuda_attn_seq seq[CUDA_STEP_SEQS];
    int n_seq, n; /* sequences; queries, all sequences' */
};

/* Queries from which a sequence's attention is a prefill's, whose blocks take several (query, head)
 * pairs (cuda_attention): one launch takes sequences of one kind. */
#define CUDA_ATT_TILE_MIN_QUERIES 48

/* Which Q8 form a conversion makes (in kernels; cuda_act.form names it as an activation type). */
enum q8_form {
    Q8_0_FORM,
    Q8_1_FORM,
    Q8_K_FORM,
};

/* A conversion that a kernel makes of its own output for the matmul after it, into cuda_act.next, in
 * the layout the matmul's own conversion takes; count: the arrival counters of the blocks that write
 * the output (cuda_last_to_arrive), the last of which converts. q NULL: no conversion. */
struct cuda_q8_out {
    int8_t *q;
    float *d, *s; /* s: Q8_1 only */
    int *sum16, *count;
    int form; /* enum q8_form */
};

static inline void cuda_trace_arg(cuda_node &nd, const cuda_q8_out &o)
{
    cuda_trace_args(nd, o.q, o.d, o.s, o.sum16, o.count, o.form);
}

/* Elements in a conversion block of the activation type `form` (Q8_0, Q8_1, Q8_K); 0 for any other. */
int cuda_q8_block_len(enum spec_dtype form);

/* Readies *out for a kernel converting its output (n rows of k values, k a multiple of the block) into
 * act->next in `form`, with `counters` zeroed counters. */
cudaError_t cuda_act_out_prepare(cudaStream_t st, struct cuda_act *act, enum spec_dtype form, int k, int n,
                                 size_t counters, struct cuda_q8_out *out);

/* After that kernel's launch: its output's conversion becomes the kept one (act->next and act->buf swap). */
void cuda_act_out_keep(struct cuda_act *act, const float *y, size_t y_stride, int k, int n, enum spec_dtype form);

/* One weight matrix of a matmul and its output: y[r * y_stride + j] = dot(w row j, x row r) (+ bias[j]
 * when bias is not NULL) for r < n, j < rows. */
#define CUDA_MM_PARTS 3
struct cuda_mm_part {
    const uint8_t *w;
    size_t w_row_bytes;
    int rows;
    const float *bias;
    float *y;
    size_t y_stride;
};

enum cuda_mm_after {
    CUDA_MM_AFTER_NONE,
    CUDA_MM_AFTER_NORM,
    CUDA_MM_AFTER_ROPE,
};

/* A quantised matmul's launch (kernels/cuda/matmul.cu). The converted activations: int8 rows of k
 * values (q_stride bytes apart), the fp32 value of each block's scale (k/32 per row for Q8_0/Q8_1,
 * k/256 for Q8_K), for Q8_1 the fp32 value of d * sum(q) per block, and the sum of every 16 quantised
 * values (k/16 per row); float weights take rows of F32, F16 or BF16 values at xq, q_stride bytes
 * apart. */
struct cuda_mm_args {
    struct cuda_mm_part part[CUDA_MM_PARTS]; /* the weights x multiplies, with their outputs */
    int n_parts;
    int block1, block2; /* the first thread blocks of parts 1 and 2 */
    bool swiglu;        /* two parts, each warp on the same rows of both: part 0's y = silu(y0) * y1 */
    int k;
    const uint8_t *xq;
    size_t q_stride;
    const float *xd;
    const float *xs;
    const int *xsum;
    bool vec;      /* float types: rows and unit starts are 16-byte aligned and k % 8 == 0 */
    bool prefetch; /* each block prefetches its weight rows before it waits (cuda_prefetch_weights) */
    int n;
    /* With swiglu: part 0's output converted for the next matmul (a counter per conversion block) */
    struct cuda_q8_out out;
    /* What waited for a matmul of one row without swiglu (cuda_act), run by the launch's last thread
     * block to finish (a counter at after_count): a norm adding part 0's y as its residual, its y
     * converted into norm_out; or the rope of the row, then the store of it (store.rows 0: none). */
    int after; /* enum cuda_mm_after */
    int *after_count;
    struct cuda_norm norm;
    struct cuda_q8_out norm_out;
    struct cuda_rope rope;
    struct cuda_store store;
};

/* The parts' matmuls of x in one launch (their w rows hold k elements of wtype; x rows are x_stride
 * floats apart); with swiglu (two parts of one shape) part 0's y becomes silu(y0) * y1 afterwards.
 * The activations' conversion is kept in (or taken from) act; no y may overlap x. tensor_cores: the
 * quantised types multiply on int8 tensor cores (another order of float sums than dp4a: a backend
 * uses one or the other for all its matmuls). */
cudaError_t cuda_matmul(cudaStream_t st, struct cuda_act *act, enum spec_dtype wtype, int k, const float *x,
                        size_t x_stride, int n, const struct cuda_mm_part *parts, int n_parts, bool swiglu,
                        bool tensor_cores);

/* The activations as the last matmul converted them (Q8 blocks, F16 or BF16), and what from: matmuls
 * of one input with weights of one kind (q, k and v; gate and up) convert it once. The backend calls
 * cuda_act_forget before anything else writes device memory, so a kept conversion is never stale.
 * A norm, a rope or an attention waits here for the op after it (one of them at a time): a norm
 * when that is a matmul of its output y by a quantised weight (one kernel normalises and converts,
 * cuda_matmul), a rope when it is a store of rows it rotates, and the stores of the step's other
 * sequences after it (cuda_rope_store), an attention when it is the next sequence's attention of the
 * step (cuda_attention); anything else launches what waits first (cuda_act_flush). A quantised
 * matmul of one row without swiglu (a decode step's q|k|v, wo and w_down) waits too: for a norm adding
 * its output as the residual (the next norm of the layer), the two then waiting for the matmul of the
 * norm's output, into whose conversion the first matmul's last thread block normalises
 * (cuda_mm_args.norm); or for a rope of one row and its store, which its last block runs
 * (cuda_mm_args.rope). So these norms and ropes launch no kernel of their own (cuda_after_matmul; with
 * it false, or before any other op, each launches alone). Two kernels leave
 * their output converted here for the matmul after them: a matmul with a swiglu (for w_down, in the
 * form its own weights take, which a Q4_K_M model's Q6_K w_down shares), and attention (for wo, in
 * the form of the conversion before it, q|k|v's, which wo shares in the models this runs). A matmul
 * of another form converts anew. */
struct cuda_act {
    struct cuda_buf buf;
    struct cuda_buf next;  /* a conversion being made while buf is read: an output converted by the
                            * kernel that makes it (cuda_q8_out), then swapped with buf */
    struct cuda_buf count; /* that conversion's arrival counters (cuda_last_to_arrive) */
    int swaps;             /* of buf and next since a step began (the backend puts them back) */
    bool valid;
    const float *x;
    size_t x_stride;
    int k, n;
    int form; /* the conversion: which activation type (kept when it is forgotten, for attention) */
    struct cuda_norm norm;
    bool norm_pending;
    struct cuda_rope rope;
    bool rope_pending;
    struct cuda_stores stores; /* the stores waiting with the rope */
    struct cuda_attn attn;
    bool attn_pending;
    struct cuda_mm_args mm; /* a matmul waiting (nothing else waits with it but its norm, or its rope) */
    enum spec_dtype mm_wtype;
    bool mm_tensor_cores, mm_pending;
};

/* Launches what waits in act, if anything. */
cudaError_t cuda_act_flush(cudaStream_t st, struct cuda_act *act);

static inline void cuda_act_forget(struct cuda_act *a)
{
    a->valid = false;
}

/* The same matmuls through cuBLAS (kernels/cuda/blas.cu), for a prefill's wide steps: weights dequantised
 * to F16, activations rounded to F16, F32 accumulation, every GEMM CUDA_BLAS_ROWS rows wide so that a
 * row's bits depend on that row alone. cuda_blas_open: SPEC_E_UNSUPPORTED when libcublas cannot be
 * loaded or gives no handle; its buffers count against mem (the library's own workspace does not). */
#define CUDA_BLAS_ROWS 128
struct cuda_blas;
int cuda_blas_open(cudaStream_t st, struct cuda_mem *mem, struct cuda_blas **out);
void cuda_blas_close(struct cuda_blas *b);
cudaError_t cuda_blas_matmul(cudaStream_t st, struct cuda_blas *b, enum spec_dtype wtype, int k, const float *x,
                             size_t x_stride, int n, const struct cuda_mm_part *parts, int n_parts, bool swiglu);

/* out[i * out_stride + e] = dequant(table row ids[i])[e] for i < n, e < ne0, zeros for an id outside the
 * table's n_table rows; ids in device memory, from ids + *ids_at on when ids_at (device memory) is not NULL. */
cudaError_t cuda_get_rows(cudaStream_t st, enum spec_dtype type, const void *table, size_t row_bytes, int ne0,
                          int n_table, const int32_t *ids, const int *ids_at, int n, float *out, size_t out_stride);

/* out[r * ne0 + e] = dequant(w row r)[e] rounded to F16, for r < rows, e < ne0 (weights for cuBLAS). */
cudaError_t cuda_rows_to_f16(cudaStream_t st, enum spec_dtype type, const void *w, size_t row_bytes, int ne0,
                             int rows, uint16_t *out);

/* The norm alone. */
cudaError_t cuda_rms_norm(cudaStream_t st, const struct cuda_norm *nm);

/* The rope, then the stores, in one launch (each rotated row is stored by the block that rotated it). */
cudaError_t cuda_rope_store(cudaStream_t st, const struct cuda_rope *rp, const struct cuda_stores *ss);

/* dst rows row0 .. row0 + rows - 1 (F16 or F32, dst_row_bytes apart) = src rows rounded to the dst type;
 * row0 is read from device memory at row0_at when that is not NULL. */
cudaError_t cuda_store_rows(cudaStream_t st, const float *src, size_t src_stride, void *dst, size_t dst_row_bytes,
                            const int *row0_at, int row0, enum spec_dtype dst_type, int ne0, int rows);

enum cuda_eltwise_op {
    CUDA_ADD,    /* out = a + b */
    CUDA_SWIGLU, /* out = silu(a) * b */
};

/* Elementwise over rows x ne0; b_stride 0 broadcasts b's first row (a bias). */
cudaError_t cuda_eltwise(cudaStream_t st, enum cuda_eltwise_op op, const float *a, size_t a_stride, const float *b,
                         size_t b_stride, float *out, size_t out_stride, int ne0, int rows);

/* Largest head_dim the attention kernels take (one head of q lives in shared memory). */
#define CUDA_ATTN_MAX_HEAD_DIM 256

/* The attention of a step's sequences (cuda_attn) in one launch. `part` is scratch for the per-chunk
 * partial results, `counters` (cuda_reserve_counters) for the counters that find each (head, query)'s
 * last chunk to finish. With a pos0_at (device memory, holding pos0) the kernels read the position
 * there, and the grid covers a power of two of chunks (the unused leave at once): a recorded step's
 * launches then stay those of the next positions, up to the next power. The output is left converted
 * in act (forgotten: nothing waits in it) in act->form when that is a Q8 form whose blocks the heads
 * tile. */
cudaError_t cuda_attention(cudaStream_t st, struct cuda_act *act, const struct cuda_attn *a);

/* kern_backend.h's argmax of `rows` rows of ne0 logits into scratch (grown as needed): *ids the ids,
 * *probs (with_probs, else NULL) the probabilities, both in device memory; `counters`
 * (cuda_reserve_counters) finds each row's last slice to finish. keep (not NULL): the ids go there
 * instead (from keep + *keep_at on when keep_at, device memory, is not NULL), and *ids is keep. */
cudaError_t cuda_argmax(cudaStream_t st, struct cuda_buf *scratch, struct cuda_buf *counters, const float *x,
                        size_t x_stride, int ne0, int rows, bool with_probs, int32_t *keep, const int *keep_at,
                        int32_t **ids, float **probs);

/* Sampling (sample.cu). A row to process: logits `in` into the distribution `out`, with the penalty
 * window recent[recent_off .. recent_off + n_recent) of the launch's token array. */
struct cuda_sample_row {
    const float *in;
    float *out;
    struct kern_sampler s;
    int recent_off, n_recent;
};

/* A round of rejection sampling: p rows (n_draft + 1), q rows (n_draft; NULL: one-hot on the drafts),
 * the drafts and accept uniforms at draft_off, the sample uniforms at sample_off of the launch's arrays. */
struct cuda_choose_job {
    const float *p;
    size_t p_stride;
    const float *q;
    size_t q_stride;
    int n_draft, draft_off, sample_off;
};

/* What a round gives back (kern_choose's results). */
struct cuda_choice {
    int n_accepted;
    int32_t token;
    float prob;
    int err;
};

/* kern_backend.h's sample_process over n rows of n_in logits into distributions of n_vocab (descriptors
 * and tokens in device memory). */
cudaError_t cuda_sample_process(cudaStream_t st, const struct cuda_sample_row *rows, int n, const int32_t *recent,
                                int n_in, int n_vocab);
/* kern_backend.h's sample_choose over n jobs into out (device memory). */
cudaError_t cuda_sample_choose(cudaStream_t st, const struct cuda_choose_job *jobs, int n, const int32_t *drafts,
                               const double *u_accept, const double *u_sample, int n_vocab, struct cuda_choice *out);

/* cudaSuccess when this device can run the kernels (an image for its architecture is present). */
cudaError_t cuda_kernels_usable(void);

/* ---------------------------------------------------------------------------------------------- */
/* Device helpers                                                                                 */

#define CUDA_WARP 32
#define CUDA_FULL_MASK 0xffffffffu

/* Sum over the warp by a fixed butterfly: lane 0's result does not depend on anything but the 32
 * inputs (the other lanes may differ from it in the last bit). Every lane must call it. */
static __device__ __forceinline__ float warp_sum(float v)
{
    for (int off = CUDA_WARP / 2; off > 0; off >>= 1)
        v += __shfl_xor_sync(CUDA_FULL_MASK, v, off);
    return v;
}

/* part[0] = the sum of part[0 .. N) by a fixed tree, the same whatever the block's THREADS (a divisor
 * of N; N by default). Every thread of the block calls it after writing its parts (tid, tid + THREADS,
 * ...); all may read part[0] afterwards. */
template <int N, int THREADS = N>
static __device__ __forceinline__ void block_sum(double *part, int tid)
{
    __syncthreads();
    for (int half = N / 2; half > 0; half >>= 1) {
        for (int i = tid; i < half; i += THREADS)
            part[i] += part[i + half];
        __syncthreads();
    }
}

/* best_v[0], best_i[0] = the largest of best_v[0 .. N) with the lowest index on ties (index -1: no
 * value; the result does not depend on the order of comparisons), by a fixed tree. Every thread of the
 * block (N threads) calls it after writing its own slots; all may read slot 0 afterwards. */
template <int N>
static __device__ __forceinline__ void block_best(float *best_v, int *best_i, int tid)
{
    __syncthreads();
    for (int half = N / 2; half > 0; half >>= 1) {
        if (tid < half) {
            const float ov = best_v[tid + half];
            const int oi = best_i[tid + half];
            if (oi >= 0 && (best_i[tid] < 0 || ov > best_v[tid] || (ov == best_v[tid] && oi < best_i[tid]))) {
                best_v[tid] = ov;
                best_i[tid] = oi;
            }
        }
        __syncthreads();
    }
}

/* Loads of what other blocks of the launch wrote go through L2 (L2 true). */
template <bool L2>
static __device__ __forceinline__ float cuda_load(const float *p)
{
    return L2 ? __ldcg(p) : *p;
}

/* RMS norm: the CPU sums the squares in double; so does each thread here over its elements, and the
 * block adds the threads' sums by a fixed tree. A double sum of floats rounds to the same float mean
 * in all but vanishingly rare cases, and the rest is the CPU's expression. */
#define RMS_THREADS 256

/* Row r of nm by a block of THREADS threads (a divisor of RMS_THREADS), with the bits of RMS_THREADS:
 * thread t sums the squares of RMS_THREADS's threads t, t + THREADS, ... (each over the elements it
 * owns), and the elements that thread t reads and writes in both passes are the same ones, so x and y
 * (which may be res) are read and written by the one thread that owns an element. RES_L2: res is read
 * through L2 (other blocks of the launch wrote it). Every thread calls it; part is shared scratch,
 * free again when it returns. */
template <int THREADS = RMS_THREADS, bool RES_L2 = false>
static __device__ __forceinline__ void rms_norm_row(const struct cuda_norm &nm, int r, double *part, int tid)
{
    static_assert(RMS_THREADS % THREADS == 0, "a divisor of RMS_THREADS");
    float *xr = nm.x + (size_t)r * nm.x_stride;
    float *yr = nm.y + (size_t)r * nm.y_stride;
    for (int v = tid; v < RMS_THREADS; v += THREADS) {
        double s = 0.0;
        for (int i = v; i < nm.ne0; i += RMS_THREADS) {
            if (nm.res) /* the add op's expression */
                xr[i] = xr[i] + cuda_load<RES_L2>(nm.res + (size_t)r * nm.res_stride + i);
            s += (double)(xr[i] * xr[i]);
        }
        part[v] = s;
    }
    block_sum<RMS_THREADS, THREADS>(part, tid);
    const float mean = (float)(part[0] / (double)nm.ne0);
    const float scale = 1.0f / sqrtf(mean + nm.eps);
    for (int i = tid; i < nm.ne0; i += THREADS)
        yr[i] = (xr[i] * scale) * nm.w[i];
    __syncthreads(); /* part[0] is read by every thread before part is written again */
}

/* The first row a store writes or a query's first position: from device memory when the step's graph
 * is replayed with other positions (at), else the launch's own value. */
static __device__ __forceinline__ int cuda_step_value(const int *at, int value)
{
    return at ? *at : value;
}

/* RoPE with the host's (cos, sin) table: x0 c - x1 s and x0 s + x1 c, each product rounded. Pair `pair`
 * (of n_head * n_rot / 2) of row r rotated in place. */
template <bool L2 = false>
static __device__ __forceinline__ void cuda_rope_pair(const cuda_rope &rp, int r, int pair)
{
    const int pairs = rp.n_rot / 2, h = pair / pairs, i0 = 2 * (pair % pairs);
    const float c = rp.table[(size_t)r * rp.n_rot + i0], s = rp.table[(size_t)r * rp.n_rot + i0 + 1];
    const int a = rp.neox ? i0 / 2 : i0, stride = rp.neox ? pairs : 1;
    float *p = rp.x + (size_t)r * rp.x_stride + (size_t)h * rp.head_dim;
    const float x0 = cuda_load<L2>(p + a), x1 = cuda_load<L2>(p + a + stride);
    p[a] = x0 * c - x1 * s;
    p[a + stride] = x0 * s + x1 * c;
}

/* Element e of source row r into its destination row (dst: the first row the store writes). */
template <bool L2 = false>
static __device__ __forceinline__ void cuda_store_elem(const float *src, size_t src_stride, uint8_t *dst,
                                                       size_t dst_row_bytes, bool f16, int r, int e)
{
    const float v = cuda_load<L2>(src + (size_t)r * src_stride + e);
    uint8_t *row = dst + (size_t)r * dst_row_bytes;
    if (f16)
        ((uint16_t *)row)[e] = __half_as_ushort(__float2half_rn(v));
    else
        ((float *)row)[e] = v;
}

/* Row r of a rope rotated in place by a block's threads (tid of `threads`), ending at a barrier: every
 * rotated value is there for all of them. Every thread calls it. */
template <bool L2 = false>
static __device__ __forceinline__ void cuda_rope_row(const cuda_rope &rp, int r, int tid, int threads)
{
    const int row_pairs = rp.n_head * (rp.n_rot / 2);
    for (int pair = tid; pair < row_pairs; pair += threads)
        cuda_rope_pair<L2>(rp, r, pair);
    __syncthreads();
}

/* What store sp takes of row r of its source (nothing when the row is not among its rows), by a
 * block's threads. */
template <bool L2 = false>
static __device__ __forceinline__ void cuda_store_row(const cuda_store &sp, int r, int tid, int threads)
{
    const int sr = r - sp.src_row0;
    if (sr < 0 || sr >= sp.rows)
        return;
    uint8_t *dst = (uint8_t *)sp.dst + (size_t)cuda_step_value(sp.row0_at, sp.row0) * sp.dst_row_bytes;
    for (int e = tid; e < sp.ne0; e += threads)
        cuda_store_elem<L2>(sp.src, sp.src_stride, dst, sp.dst_row_bytes, sp.f16, sr, e);
}

/* Int8 tensor cores: d = A B for one warp (PTX's mma.m16n8k32 and m16n8k16, s8 inputs, s32 results,
 * exact). Lane l holds, with g = l / 4 and t = l % 4 (four bytes a register, in k order):
 *   k 32: a[0] = A[g][4t..], a[1] = A[g+8][4t..], a[2] = A[g][16+4t..], a[3] = A[g+8][16+4t..];
 *         b[0] = B[4t..][g], b[1] = B[16+4t..][g];
 *   k 16: a[0] = A[g][4t..], a[1] = A[g+8][4t..]; b[0] = B[4t..][g];
 *   d[0] = D[g][2t], d[1] = D[g][2t+1], d[2] = D[g+8][2t], d[3] = D[g+8][2t+1].
 * Every lane of the warp calls it. The CPU simulator computes the same from the warp's registers. */
template <int K>
static __device__ __forceinline__ void cuda_mma_s8(int d[4], const uint32_t *a, const uint32_t *b)
{
    static_assert(K == 32 || K == 16, "m16n8k32 or m16n8k16");
#if defined(__CUDA_ARCH__)
    if (K == 32)
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%10,%10,%10,%10};"
                     : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
                     "{%7,%7,%7,%7};"
                     : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(b[0]), "r"(0));
#elif defined(CUDASIM)
    cudasim::mma_s8(K, d, a, b);
#else
    (void)d, (void)a, (void)b; /* nvcc's host pass: device code only */
#endif
}

/* ggml's get_scale_min_k4: the six-bit scale and min of sub-block j (of 8) from a Q4_K block's 12 bytes. */
static __device__ __forceinline__ void q4_K_scale_min(const uint8_t *scales, int j, int &sc, int &m)
{
    if (j < 4) {
        sc = scales[j] & 63;
        m = scales[j + 4] & 63;
    } else {
        sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

/* An fp16 value at a 2-byte aligned address, exactly as a float. */
static __device__ __forceinline__ float ld_f16(const uint8_t *p)
{
    return __half2float(__ushort_as_half(*(const uint16_t *)p));
}

static __device__ __forceinline__ float bf16_to_f32(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

/* Four bytes at a 2-byte aligned address (the legacy quant blocks are 18, 22 and 34 bytes long). */
static __device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t *p)
{
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

/* ggml's quantize_row_q8_0_ref / q8_1_ref of one 32-element block by one warp, one element per lane:
 * its 32 values at q, its scale at *d (and for Q8_1 d * sum(q) at *s), the sums of its two halves at
 * sum16[0..1]. L2: x is read through L2 (other blocks of the launch wrote it). */
template <bool Q8_1, bool L2>
static __device__ __forceinline__ void quantize_block_q8_32(const float *x, int8_t *q, float *d, float *s, int *sum16,
                                                            int lane)
{
    const float v = cuda_load<L2>(x + lane);
    float amax = fabsf(v);
    for (int off = 16; off > 0; off >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(CUDA_FULL_MASK, amax, off));
    const float dd = amax / 127;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    const int qv = (int)roundf(v * id);
    q[lane] = (int8_t)qv;
    int half_sum = qv; /* lanes 0-15 and 16-31 sum separately */
    for (int off = 8; off > 0; off >>= 1)
        half_sum += __shfl_xor_sync(CUDA_FULL_MASK, half_sum, off);
    const int sum = half_sum + __shfl_xor_sync(CUDA_FULL_MASK, half_sum, 16);
    if (lane % 16 == 0)
        sum16[lane / 16] = half_sum;
    if (lane == 0) {
        *d = __half2float(__float2half_rn(dd));
        if (Q8_1)
            *s = __half2float(__float2half_rn((float)sum * dd));
    }
}

/* ggml's quantize_row_q8_K_ref of one 256-element block by one warp, elements lane + 32 t: its values
 * at q, its scale at *d, the sums of its sixteen 16-element groups at sum16[0..15]. The value of
 * largest magnitude maps to -127; on ties the first one in the row wins, as in the sequential scan. */
template <bool L2>
static __device__ __forceinline__ void quantize_block_q8_K(const float *x, int8_t *q, float *d, int *sum16, int lane)
{
    float v[8];
    float amax = 0.0f, max = 0.0f;
    int idx = INT_MAX;
#pragma unroll
    for (int t = 0; t < 8; t++) {
        v[t] = cuda_load<L2>(x + lane + 32 * t);
        if (fabsf(v[t]) > amax) {
            amax = fabsf(v[t]);
            max = v[t];
            idx = lane + 32 * t;
        }
    }
    for (int off = 16; off > 0; off >>= 1) {
        const float oa = __shfl_xor_sync(CUDA_FULL_MASK, amax, off);
        const float om = __shfl_xor_sync(CUDA_FULL_MASK, max, off);
        const int oi = __shfl_xor_sync(CUDA_FULL_MASK, idx, off);
        if (oa > amax || (oa == amax && oi < idx)) {
            amax = oa;
            max = om;
            idx = oi;
        }
    }
    const float iscale = amax != 0.0f ? -127.f / max : 0.0f;
#pragma unroll
    for (int t = 0; t < 8; t++) {
        const int qv = amax != 0.0f ? min(127, __float2int_rn(iscale * v[t])) : 0;
        q[lane + 32 * t] = (int8_t)qv;
        int half_sum = qv;
        for (int off = 8; off > 0; off >>= 1)
            half_sum += __shfl_xor_sync(CUDA_FULL_MASK, half_sum, off);
        if (lane % 16 == 0)
            sum16[2 * t + lane / 16] = half_sum;
    }
    if (lane == 0)
        *d = amax != 0.0f ? 1 / iscale : 0.0f;
}

/* Block b (256 elements for Q8_K, else 32) of row r of x into the conversion's arrays: q rows of k
 * values, nb scales (and Q8_1 sums) a row, k/16 group sums a row. */
template <q8_form F, bool L2 = false>
static __device__ __forceinline__ void quantize_block(const float *x, size_t x_stride, int k, int r, int b, int8_t *q,
                                                      float *d, float *s, int *sum16, int lane)
{
    const int block = F == Q8_K_FORM ? 256 : 32, nb = k / block;
    const float *xb = x + (size_t)r * x_stride + (size_t)block * b;
    int8_t *qb = q + (size_t)r * k + (size_t)block * b;
    int *sb = sum16 + (size_t)r * (k / 16) + (size_t)(block / 16) * b;
    float *db = d + (size_t)r * nb + b;
    if (F == Q8_K_FORM)
        quantize_block_q8_K<L2>(xb, qb, db, sb, lane);
    else
        quantize_block_q8_32<F == Q8_1_FORM, L2>(xb, qb, db, s ? s + (size_t)r * nb + b : NULL, sb, lane);
}

/* Block b of row r of y (k values a row), which other blocks of the launch wrote, into the conversion o
 * by one warp: quantize_rows' code, so the bits of converting it in a launch of its own. */
static __device__ __forceinline__ void cuda_convert_out_block(const cuda_q8_out &o, const float *y, size_t y_stride,
                                                              int k, int r, int b, int lane)
{
    if (o.form == Q8_K_FORM)
        quantize_block<Q8_K_FORM, true>(y, y_stride, k, r, b, o.q, o.d, o.s, o.sum16, lane);
    else if (o.form == Q8_1_FORM)
        quantize_block<Q8_1_FORM, true>(y, y_stride, k, r, b, o.q, o.d, o.s, o.sum16, lane);
    else
        quantize_block<Q8_0_FORM, true>(y, y_stride, k, r, b, o.q, o.d, o.s, o.sum16, lane);
}

#endif
