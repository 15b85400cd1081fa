/* The CUDA backend's other ops: embedding rows, RMS norm, RoPE, KV-cache stores, elementwise ops and
 * attention. Each mirrors the CPU backend's arithmetic expression by expression (files here are built
 * with -fmad=false, so `a * b + c` rounds twice as it does in the C code); where the GPU must order a
 * reduction differently the order is fixed per row, so no result depends on the batch. */
#include "kernels/cuda/cuda_ops.h"

/* ---------------------------------------------------------------------------------------------- */
/* get_rows: dequantisation, bit-exact with kern_dequantize_row()                                 */

template <enum spec_dtype T>
static __device__ float dequant(const uint8_t *row, int e)
{
    const int j = e % 32;
    switch (T) {
    case SPEC_F32:
        return ((const float *)row)[e];
    case SPEC_F16:
        return ld_f16(row + 2 * e);
    case SPEC_BF16:
        return bf16_to_f32(((const uint16_t *)row)[e]);
    case SPEC_Q4_0: {
        const uint8_t *b = row + 18 * (e / 32);
        const int q = j < 16 ? (b[2 + j] & 0x0f) : (b[2 + j - 16] >> 4);
        return (float)(q - 8) * ld_f16(b);
    }
    case SPEC_Q4_1: {
        const uint8_t *b = row + 20 * (e / 32);
        const int q = j < 16 ? (b[4 + j] & 0x0f) : (b[4 + j - 16] >> 4);
        return (float)q * ld_f16(b) + ld_f16(b + 2);
    }
    case SPEC_Q5_0: {
        const uint8_t *b = row + 22 * (e / 32);
        const uint32_t qh = ld_u32_a2(b + 2);
        const int lo = j < 16 ? (b[6 + j] & 0x0f) : (b[6 + j - 16] >> 4);
        const int q = lo | (int)(((qh >> j) & 1u) << 4);
        return (float)(q - 16) * ld_f16(b);
    }
    case SPEC_Q8_0: {
        const uint8_t *b = row + 34 * (e / 32);
        return (float)(int8_t)b[2 + j] * ld_f16(b);
    }
    case SPEC_Q4_K: {
        const uint8_t *b = row + 144 * (e / 256);
        const int sub = (e % 256) / 32;
        int sc, m;
        q4_K_scale_min(b + 4, sub, sc, m);
        const uint8_t qb = b[16 + 32 * (sub / 2) + j];
        const int q = sub % 2 ? qb >> 4 : qb & 0x0f;
        const float d1 = ld_f16(b) * (float)sc, m1 = ld_f16(b + 2) * (float)m;
        return d1 * (float)q - m1;
    }
    case SPEC_Q6_K: {
        const uint8_t *b = row + 210 * (e / 256);
        const int w = e % 256, h = w / 128, quarter = (w % 128) / 32;
        const uint8_t ql = b[64 * h + j + 32 * (quarter & 1)];
        const int lo = quarter < 2 ? (ql & 0x0f) : (ql >> 4);
        const int hi = (b[128 + 32 * h + j] >> (2 * quarter)) & 3;
        const int8_t q = (int8_t)((lo | (hi << 4)) - 32);
        const int8_t scale = (int8_t)b[192 + w / 16];
        return ld_f16(b + 208) * (float)scale * (float)q;
    }
    default:
        return 0.0f;
    }
}

/* Rows ids[r] of table (rows r when ids is NULL; ids from *ids_at on when that is not NULL), dequantised
 * into F32 or (HALF) rounded to F16. An id outside the table's n_table rows (argmax's -1, chained on the
 * device) gives zeros. */
template <enum spec_dtype T, bool HALF>
__global__ void get_rows_kernel(const uint8_t *table, size_t row_bytes, int ne0, int n_table, const int32_t *ids,
                                const int *ids_at, int n, void *out, size_t out_stride)
{
    cuda_grid_wait();
    const int32_t *id = ids && ids_at ? ids + *ids_at : ids;
    CUDA_GRID_STRIDE(i, (int64_t)ne0 * n)
    {
        const int r = (int)(i / ne0), e = (int)(i % ne0), row = id ? id[r] : r;
        const float v = row >= 0 && row < n_table ? dequant<T>(table + (size_t)row * row_bytes, e) : 0.0f;
        if (HALF)
            ((__half *)out)[(size_t)r * out_stride + e] = __float2half_rn(v);
        else
            ((float *)out)[(size_t)r * out_stride + e] = v;
    }
}

struct rows_args {
    const void *table;
    size_t row_bytes;
    int ne0, n_table;
    const int32_t *ids;
    const int *ids_at;
    int n;
    void *out;
    size_t out_stride;
};

template <enum spec_dtype T, bool HALF>
static cudaError_t launch_rows(cudaStream_t st, const rows_args &a)
{
    CUDA_LAUNCH(cuda_elt_blocks((int64_t)a.ne0 * a.n), CUDA_ELT_THREADS, st, get_rows_kernel<T, HALF>)
    ((const uint8_t *)a.table, a.row_bytes, a.ne0, a.n_table, a.ids, a.ids_at, a.n, a.out, a.out_stride);
    return cudaGetLastError();
}

template <bool HALF>
static cudaError_t dequant_rows(cudaStream_t st, enum spec_dtype type, const rows_args &a)
{
    switch (type) {
    case SPEC_F32:
        return launch_rows<SPEC_F32, HALF>(st, a);
    case SPEC_F16:
        return launch_rows<SPEC_F16, HALF>(st, a);
    case SPEC_BF16:
        return launch_rows<SPEC_BF16, HALF>(st, a);
    case SPEC_Q4_0:
        return launch_rows<SPEC_Q4_0, HALF>(st, a);
    case SPEC_Q4_1:
        return launch_rows<SPEC_Q4_1, HALF>(st, a);
    case SPEC_Q5_0:
        return launch_rows<SPEC_Q5_0, HALF>(st, a);
    case SPEC_Q8_0:
        return launch_rows<SPEC_Q8_0, HALF>(st, a);
    case SPEC_Q4_K:
        return launch_rows<SPEC_Q4_K, HALF>(st, a);
    case SPEC_Q6_K:
        return launch_rows<SPEC_Q6_K, HALF>(st, a);
    default:
        return cudaErrorInvalidValue;
    }
}

cudaError_t cuda_get_rows(cudaStream_t st, enum spec_dtype type, const void *table, size_t row_bytes, int ne0,
                          int n_table, const int32_t *ids, const int *ids_at, int n, float *out, size_t out_stride)
{
    return dequant_rows<false>(st, type, rows_args{table, row_bytes, ne0, n_table, ids, ids_at, n, out, out_stride});
}

cudaError_t cuda_rows_to_f16(cudaStream_t st, enum spec_dtype type, const void *w, size_t row_bytes, int ne0,
                             int rows, uint16_t *out)
{
    return dequant_rows<true>(st, type, rows_args{w, row_bytes, ne0, rows, NULL, NULL, rows, out, (size_t)ne0});
}

/* ---------------------------------------------------------------------------------------------- */
/* RMS norm (cuda_ops.h's rms_norm_row)                                                           */

__global__ void __launch_bounds__(RMS_THREADS) rms_norm_kernel(const cuda_norm nm)
{
    cuda_grid_wait();
    __shared__ double part[RMS_THREADS];
    for (int r = blockIdx.x; r < nm.rows; r += gridDim.x)
        rms_norm_row(nm, r, part, threadIdx.x);
}

cudaError_t cuda_rms_norm(cudaStream_t st, const struct cuda_norm *nm)
{
    const unsigned blocks = (unsigned)(nm->rows < 65535 ? nm->rows : 65535);
    CUDA_LAUNCH(blocks, RMS_THREADS, st, rms_norm_kernel)(*nm);
    return cudaGetLastError();
}

cudaError_t cuda_kernels_usable(void)
{
    cudaFuncAttributes attr;
    return cudaFuncGetAttributes(&attr, rms_norm_kernel);
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE (cuda_ops.h's cuda_rope_pair)                                                             */

__global__ void rope_kernel(const cuda_rope rp)
{
    cuda_grid_wait();
    const int row_pairs = rp.n_head * (rp.n_rot / 2);
    CUDA_GRID_STRIDE(i, (int64_t)rp.rows * row_pairs)
    cuda_rope_pair(rp, (int)(i / row_pairs), (int)(i % row_pairs));
}

cudaError_t cuda_rope_rows(cudaStream_t st, const struct cuda_rope *rp)
{
    const unsigned blocks = cuda_elt_blocks((int64_t)rp->rows * rp->n_head * (rp->n_rot / 2));
    CUDA_LAUNCH(blocks, CUDA_ELT_THREADS, st, rope_kernel)(*rp);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------------------------------------- */
/* KV-cache stores                                                                                */

__global__ void store_rows_kernel(const float *src, size_t src_stride, uint8_t *dst, size_t dst_row_bytes,
                                  const int *row0_at, int row0, bool f16, int ne0, int rows)
{
    cuda_grid_wait();
    dst += (size_t)cuda_step_value(row0_at, row0) * dst_row_bytes;
    CUDA_GRID_STRIDE(i, (int64_t)ne0 * rows)
    cuda_store_elem(src, src_stride, dst, dst_row_bytes, f16, (int)(i / ne0), (int)(i % ne0));
}

/* F32 rows into F32 rows, four floats a thread: 16-byte loads and stores. */
__global__ void store_rows_vec4_kernel(const float4 *src, size_t src_stride4, float4 *dst, size_t dst_stride4,
                                       const int *row0_at, int row0, int ne0_4, int rows)
{
    cuda_grid_wait();
    dst += (size_t)cuda_step_value(row0_at, row0) * dst_stride4;
    CUDA_GRID_STRIDE(i, (int64_t)ne0_4 * rows)
    {
        const int r = (int)(i / ne0_4), e = (int)(i % ne0_4);
        dst[(size_t)r * dst_stride4 + e] = src[(size_t)r * src_stride4 + e];
    }
}

cudaError_t cuda_store_rows(cudaStream_t st, const float *src, size_t src_stride, void *dst, size_t dst_row_bytes,
                            const int *row0_at, int row0, enum spec_dtype dst_type, int ne0, int rows)
{
    if (dst_type == SPEC_F32 && ne0 % 4 == 0 && src_stride % 4 == 0 && dst_row_bytes % 16 == 0 &&
        (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 16 == 0) {
        const unsigned blocks = cuda_elt_blocks((int64_t)ne0 / 4 * rows);
        CUDA_LAUNCH(blocks, CUDA_ELT_THREADS, st, store_rows_vec4_kernel)((const float4 *)src, src_stride / 4,
                                                                     (float4 *)dst, dst_row_bytes / 16, row0_at,
                                                                     row0, ne0 / 4, rows);
        return cudaGetLastError();
    }
    const unsigned blocks = cuda_elt_blocks((int64_t)ne0 * rows);
    CUDA_LAUNCH(blocks, CUDA_ELT_THREADS, st, store_rows_kernel)(src, src_stride, (uint8_t *)dst, dst_row_bytes, row0_at,
                                                            row0, dst_type == SPEC_F16, ne0, rows);
    return cudaGetLastError();
}

/* A rope and the stores of rows it rotates (each sequence's K and V after K's rope) in one launch: a
 * block a row rotates the row as rope_kernel would, then, after a barrier, stores it if a store takes
 * it (one at most: the stores' rows are apart). */
__global__ void rope_store_kernel(const cuda_rope rp, const cuda_stores ss)
{
    cuda_grid_wait();
    for (int r = blockIdx.x; r < rp.rows; r += gridDim.x) {
        cuda_rope_row(rp, r, threadIdx.x, blockDim.x);
#pragma unroll
        for (int i = 0; i < CUDA_STEP_SEQS; i++) /* constant indices: the stores stay in parameter space */
            if (i < ss.n)
                cuda_store_row(ss.s[i], r, threadIdx.x, blockDim.x);
    }
}

cudaError_t cuda_rope_store(cudaStream_t st, const struct cuda_rope *rp, const struct cuda_stores *ss)
{
    CUDA_LAUNCH((unsigned)(rp->rows < 65535 ? rp->rows : 65535), CUDA_ELT_THREADS, st, rope_store_kernel)(*rp, *ss);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------------------------------------- */
/* Elementwise                                                                                    */

__global__ void eltwise_kernel(enum cuda_eltwise_op op, const float *a, size_t a_stride, const float *b,
                               size_t b_stride, float *out, size_t out_stride, int ne0, int rows)
{
    cuda_grid_wait();
    CUDA_GRID_STRIDE(i, (int64_t)ne0 * rows)
    {
        const int r = (int)(i / ne0), e = (int)(i % ne0);
        const float av = a[(size_t)r * a_stride + e], bv = b[(size_t)r * b_stride + e];
        out[(size_t)r * out_stride + e] = op == CUDA_ADD ? av + bv : cuda_silu_mul(av, bv);
    }
}

cudaError_t cuda_eltwise(cudaStream_t st, enum cuda_eltwise_op op, const float *a, size_t a_stride, const float *b,
                         size_t b_stride, float *out, size_t out_stride, int ne0, int rows)
{
    const unsigned blocks = cuda_elt_blocks((int64_t)ne0 * rows);
    CUDA_LAUNCH(blocks, CUDA_ELT_THREADS, st, eltwise_kernel)(op, a, a_stride, b, b_stride, out, out_stride, ne0, rows);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------------------------------------- */
/* Greedy choice: a block per row. The argmax with the lowest index on ties does not depend on the
 * order of comparison, so it is the CPU's exactly; the probability's double sum runs in a fixed tree. */

#define PICK_THREADS 256
#define PICK_SLICE 4096     /* a row is cut into slices of at least this many logits, a block each */
#define PICK_MAX_SLICES 256 /* at most PICK_THREADS: the combining block holds a slice a thread */

/* How many slices a row of ne0 logits is cut into: fixed by ne0, so a row's result never depends on
 * how many rows share the call. */
static int pick_slices(int ne0)
{
    const int s = ne0 / PICK_SLICE;
    return s < 1 ? 1 : s > PICK_MAX_SLICES ? PICK_MAX_SLICES : s;
}

/* Each block finds its slice's largest logit (the lowest id on ties; NaN and -inf never count) and,
 * for probs, the sum of exp(l - its max) in double; the last of a row's slices to finish (a counter
 * per row, as in attention) combines them: the largest of the slices' (value, id) with the lowest id
 * on ties, which is the row's argmax whatever the order, and sum_s e^(m_s - M) sum_s, in slice order
 * by a fixed tree, whose inverse is the argmax's probability. A wide row (151,936 logits) is then
 * read by 37 blocks instead of one. */
__global__ void __launch_bounds__(PICK_THREADS)
    argmax_kernel(const float *x, size_t x_stride, int ne0, int slices, int32_t *ids, const int *ids_at, float *probs,
                  float *part_v, int *part_i, double *part_s, int *done)
{
    cuda_grid_wait();
    __shared__ float best_v[PICK_THREADS];
    __shared__ int best_i[PICK_THREADS];
    __shared__ double sums[PICK_THREADS];
    const int tid = threadIdx.x, sl = blockIdx.x, r = blockIdx.y;
    const float *row = x + (size_t)r * x_stride;
    const int lo = (int)((int64_t)ne0 * sl / slices), hi = (int)((int64_t)ne0 * (sl + 1) / slices);
    float bv = -INFINITY;
    int bi = -1;
    for (int i = lo + tid; i < hi; i += PICK_THREADS) { /* ascending: a later equal value never wins */
        const float v = row[i];
        if (!isnan(v) && v != -INFINITY && (bi < 0 || v > bv)) {
            bv = v;
            bi = i;
        }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    block_best<PICK_THREADS>(best_v, best_i, tid);
    const int best = best_i[0];
    const float max = best_v[0];
    double s = 0.0;
    if (probs && best >= 0 && max != INFINITY)
        for (int i = lo + tid; i < hi; i += PICK_THREADS)
            if (!isnan(row[i]))
                s += exp((double)row[i] - (double)max);
    sums[tid] = s;
    block_sum<PICK_THREADS>(sums, tid);
    const size_t slot = (size_t)r * slices + sl;
    if (tid == 0) {
        part_v[slot] = max;
        part_i[slot] = best;
        part_s[slot] = sums[0];
    }
    if (!cuda_last_to_arrive(&done[r], slices))
        return;
    const size_t slot0 = (size_t)r * slices;
    const float mv = tid < slices ? __ldcg(&part_v[slot0 + tid]) : -INFINITY;
    const int mi = tid < slices ? __ldcg(&part_i[slot0 + tid]) : -1;
    const double ms = tid < slices ? __ldcg(&part_s[slot0 + tid]) : 0.0;
    best_v[tid] = mv;
    best_i[tid] = mi;
    block_best<PICK_THREADS>(best_v, best_i, tid);
    const int row_best = best_i[0];
    const float row_max = best_v[0];
    if (tid == 0)
        ids[(ids_at ? *ids_at : 0) + r] = row_best;
    if (!probs)
        return; /* the same for every thread: no barrier follows for anyone */
    sums[tid] = mi >= 0 && row_max != INFINITY ? ms * exp((double)mv - (double)row_max) : 0.0;
    block_sum<PICK_THREADS>(sums, tid);
    if (tid == 0)
        probs[r] = row_best < 0 ? 0.0f : row_max == INFINITY ? 1.0f : (float)(1.0 / sums[0]);
}

cudaError_t cuda_argmax(cudaStream_t st, struct cuda_buf *scratch, struct cuda_buf *counters, const float *x,
                        size_t x_stride, int ne0, int rows, bool with_probs, int32_t *keep, const int *keep_at,
                        int32_t **ids, float **probs)
{
    const int slices = pick_slices(ne0);
    const size_t n = (size_t)rows, parts = n * (size_t)slices;
    const size_t ids_bytes = cuda_align256(n * sizeof(int32_t)), probs_bytes = cuda_align256(n * sizeof(float)),
                 v_bytes = cuda_align256(parts * sizeof(float)), i_bytes = cuda_align256(parts * sizeof(int));
    cudaError_t err = cuda_reserve_counters(st, counters, n * sizeof(int));
    if (err == cudaSuccess)
        err = cuda_buf_reserve(st, scratch, ids_bytes + probs_bytes + v_bytes + i_bytes + parts * sizeof(double));
    if (err != cudaSuccess)
        return err;
    uint8_t *base = (uint8_t *)scratch->p;
    int *done = (int *)counters->p;
    *ids = keep ? keep : (int32_t *)base;
    *probs = with_probs ? (float *)(base + ids_bytes) : NULL;
    float *part_v = (float *)(base + ids_bytes + probs_bytes);
    int *part_i = (int *)((uint8_t *)part_v + v_bytes);
    double *part_s = (double *)((uint8_t *)part_i + i_bytes);
    CUDA_LAUNCH(dim3((unsigned)slices, (unsigned)rows), PICK_THREADS, st, argmax_kernel)(
        x, x_stride, ne0, slices, *ids, keep ? keep_at : NULL, *probs, part_v, part_i, part_s, done);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------------------------------------- */
/* Attention, split over the cache (flash-decoding).
 *
 * Query i sees keys 0 .. pos0 + i. The keys are cut into chunks of ATT_CHUNK at fixed boundaries; for
 * each (query, head) pair and chunk a block computes the chunk's scores, their max m, the sum l of
 * exp(s - m) and o = sum exp(s - m) v, in a fixed order. The last block of a pair to finish (a counter
 * per pair) combines its chunks in chunk order: o = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c, so
 * one launch does it all. Everything depends on the query's own key count only, never on how many
 * queries share the call, how many pairs a block takes or which block finishes last.
 *
 * A block takes one pair (decode steps and verification passes: the most blocks, the shortest
 * chains) or, for a prompt's prefill, ATT_TILE pairs of one KV head (its query heads, queries in
 * order): each key and value the block loads then serves all of them, where a pair a block would
 * read the chunk from L2 once a pair (a 2048-token prompt: ~13 GB a layer on Qwen2.5 1.5B). Each
 * pair's operations are the same in both.
 *
 * As on the CPU, q is rounded to F16 when the key cache is F16 (the products are then exact). The
 * CPU also rounds the normalised weights to F16 before they weight V (llama.cpp's mul_mat); a split
 * softmax cannot know the normalised weights per chunk, so here they stay F32: the difference is at
 * most 2^-11 of sum_j p_j |v_j| per output (see the conformance test's bound).                    */

#define ATT_CHUNK 128 /* keys per block: one per thread for the scores */
#define ATT_THREADS ATT_CHUNK
#define ATT_WARPS (ATT_THREADS / CUDA_WARP)
#define ATT_LOADS 8 /* cache loads a thread issues before using the first: their latencies overlap */
#define ATT_DIMS (CUDA_ATTN_MAX_HEAD_DIM / ATT_THREADS) /* output dimensions a thread combines, at most */
#define ATT_TILE 8  /* (query, head) pairs a block of a prefill takes; verification passes (at most 33
                     * queries a sequence) and decode steps keep a pair a block, the most blocks for the
                     * latency-bound shapes */

static __device__ __forceinline__ float cache_elem(const uint8_t *row, bool f16, int e)
{
    return f16 ? ld_f16(row + 2 * e) : ((const float *)row)[e];
}

/* Elements e0 .. e0+7 of a cache row (F16 or F32) as floats, zero past dim. vec: the row is 16-byte
 * aligned and dim % 8 == 0, so that one or two 16-byte loads fetch them. */
static __device__ __forceinline__ void cache_load8(const uint8_t *row, bool f16, bool vec, int e0, int dim,
                                                   float v[8])
{
    if (vec && f16) {
        const int4 raw = *(const int4 *)(row + 2 * e0);
        const uint32_t words[4] = {(uint32_t)raw.x, (uint32_t)raw.y, (uint32_t)raw.z, (uint32_t)raw.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[2 * i] = __half2float(__ushort_as_half((uint16_t)(words[i] & 0xffffu)));
            v[2 * i + 1] = __half2float(__ushort_as_half((uint16_t)(words[i] >> 16)));
        }
    } else if (vec) {
        const float4 a = *(const float4 *)(row + 4 * e0), b = *(const float4 *)(row + 4 * e0 + 16);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[i] = e0 + i < dim ? cache_elem(row, f16, e0 + i) : 0.0f;
    }
}

/* After head h of query i is written: the conversion of the query's output for wo. A conversion
 * block spans heads_per_group heads (Q8_K's 256 values, two heads of 128) or a head spans blocks (Q8_0's
 * 32); the last of a group's heads to be written (a counter per group and query) converts the group's
 * blocks, a warp a block. Every thread of the block calls it. */
static __device__ __forceinline__ void convert_heads(const cuda_q8_out &conv, const float *out, size_t out_stride,
                                                     int n_head, int head_dim, int h, int i)
{
    const int len = conv.form == Q8_K_FORM ? 256 : 32, heads_per_group = max(1, len / head_dim);
    const int group = h / heads_per_group, groups = n_head / heads_per_group;
    if (!cuda_last_to_arrive(conv.count + (size_t)i * groups + group, heads_per_group))
        return;
    const int b0 = group * heads_per_group * head_dim / len, blocks = max(1, head_dim / len);
    for (int b = b0 + (int)threadIdx.x / CUDA_WARP; b < b0 + blocks; b += ATT_WARPS)
        cuda_convert_out_block(conv, out, out_stride, n_head * head_dim, i, b, threadIdx.x % CUDA_WARP);
}

/* A launch's sequences as its blocks find them: sequence i's blocks are z0 .. (z0 of i + 1) - 1 of the
 * grid's z, its queries rows row0 .. of q and out. */
struct attn_seq {
    const uint8_t *k, *v;
    const int *pos0_at;
    int pos0, n, row0, z0;
};

struct attn_seqs {
    attn_seq s[CUDA_STEP_SEQS];
    int n;
};

static inline void cuda_trace_arg(cuda_node &nd, const attn_seq &sq)
{
    cuda_trace_args(nd, sq.k, sq.v, sq.pos0_at, sq.pos0, sq.n, sq.row0, sq.z0);
}

static inline void cuda_trace_arg(cuda_node &nd, const attn_seqs &ss)
{
    for (int i = 0; i < ss.n; i++)
        cuda_trace_arg(nd, ss.s[i]);
    cuda_trace_arg(nd, ss.n);
}

/* The sequence whose blocks include block z (constant indices: the sequences stay in parameter
 * space). */
static __device__ __forceinline__ attn_seq seq_of_block(const attn_seqs &ss, int z)
{
    attn_seq sq = ss.s[0];
#pragma unroll
    for (int i = 1; i < CUDA_STEP_SEQS; i++)
        if (i < ss.n && z >= ss.s[i].z0)
            sq = ss.s[i];
    return sq;
}

/* R pairs a block: pair r of block z (of its sequence's) is f = z R + r of the KV head's n x group
 * pairs, the sequence's query f / group (row row0 + f / group) and query head g group + f % group. Thread t scores key j0 + t against each pair's q (a chain of fmaf
 * over the dimensions, in order; the loads of ATT_LOADS units issued before the first is used, as a
 * loop would wait for each). Each pair's max and sum come from fixed butterflies and the warps in
 * order; for o, the head's dimensions are cut into units of 8, and each of `sets` groups of threads
 * adds every sets-th key (keys s, s + sets, ...) into one unit, the sets then summed in order: every
 * step is fixed by the query's key count alone. */
template <int R>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_chunk_kernel(const float *q, size_t q_stride, const attn_seqs ss, size_t k_row_bytes, bool k_f16, bool k_vec,
                      size_t v_row_bytes, bool v_f16, bool v_vec, int n_head, int group, int head_dim, float scale,
                      int n_chunks, float *part_o, float *part_ml, int *done, float *out, size_t out_stride,
                      const cuda_q8_out conv, bool prefetch)
{
    constexpr int V_LOADS = R == 1 ? ATT_LOADS : 4; /* value loads ahead: R pairs' o[8] share the registers */
    __shared__ float qs[R][CUDA_ATTN_MAX_HEAD_DIM];
    __shared__ float p[R][ATT_CHUNK];
    __shared__ float red[2][R][ATT_WARPS];
    __shared__ float os[ATT_THREADS * 8];
    const attn_seq sq = seq_of_block(ss, (int)blockIdx.z);
    const uint8_t *k = sq.k, *v = sq.v;
    const int c = blockIdx.x, g = blockIdx.y, f0 = ((int)blockIdx.z - sq.z0) * R, pairs = min(R, sq.n * group - f0);
    /* the sequence's query i sees first_kv + i keys */
    const int first_kv = cuda_step_value(sq.pos0_at, sq.pos0) + 1, j0 = c * ATT_CHUNK;
    /* the chunk's keys each pair sees (none past its query's): more for later queries */
    int len[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        len[r] = r < pairs ? min(ATT_CHUNK, first_kv + (f0 + r) / group - j0) : 0;
    const int len_max = min(ATT_CHUNK, first_kv + (f0 + pairs - 1) / group - j0); /* the last pair's len */
    /* The chunk's key and value rows into L2 before the wait, as the matmuls prefetch their weights: the
     * rows before this step's are not written in it, and the hint cannot make a load see stale values
     * of the ones that are (cuda_prefetch_l2). The position read above is the step's first copy's, done
     * before any kernel of the step started. */
    if (prefetch && len_max > 0) { /* a row's values end before its stride does (a view of K|V rows) */
        const size_t kv_width = (size_t)(n_head / group) * head_dim;
        cuda_prefetch_l2(k + (size_t)j0 * k_row_bytes,
                         (size_t)(len_max - 1) * k_row_bytes + kv_width * (k_f16 ? 2 : 4));
        cuda_prefetch_l2(v + (size_t)j0 * v_row_bytes,
                         (size_t)(len_max - 1) * v_row_bytes + kv_width * (v_f16 ? 2 : 4));
    }
    cuda_grid_wait();
    if (len_max <= 0)
        return; /* past every pair's keys: the whole block leaves, before any barrier */
    const int tid = threadIdx.x, lane = tid % CUDA_WARP, warp = tid / CUDA_WARP;
    const int n_units = (head_dim + 7) / 8, row_len = 8 * n_units;

    for (int d = tid; d < R * row_len; d += ATT_THREADS) {
        const int r = d / row_len, e = d % row_len, f = f0 + r;
        const float *qh = q + (size_t)(sq.row0 + f / group) * q_stride + (size_t)(g * group + f % group) * head_dim;
        qs[r][e] = r >= pairs || e >= head_dim ? 0.0f : k_f16 ? __half2float(__float2half_rn(qh[e])) : qh[e];
    }
    __syncthreads();

    float s[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        s[r] = -INFINITY;
    if (tid < len_max) {
        const uint8_t *kr = k + (size_t)(j0 + tid) * k_row_bytes + (size_t)g * head_dim * (k_f16 ? 2 : 4);
        float dot[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            dot[r] = 0.0f;
        for (int u0 = 0; u0 < n_units; u0 += ATT_LOADS) {
            float kv[ATT_LOADS][8];
#pragma unroll
            for (int b = 0; b < ATT_LOADS; b++)
                if (u0 + b < n_units)
                    cache_load8(kr, k_f16, k_vec, 8 * (u0 + b), head_dim, kv[b]);
#pragma unroll
            for (int b = 0; b < ATT_LOADS; b++)
                if (u0 + b < n_units)
#pragma unroll
                    for (int r = 0; r < R; r++)
#pragma unroll
                        for (int e = 0; e < 8; e++)
                            dot[r] = __fmaf_rn(qs[r][8 * (u0 + b) + e], kv[b][e], dot[r]);
        }
#pragma unroll
        for (int r = 0; r < R; r++)
            if (tid < len[r])
                s[r] = dot[r] * scale;
    }
    float m[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        float x = s[r];
        for (int off = CUDA_WARP / 2; off > 0; off >>= 1)
            x = fmaxf(x, __shfl_xor_sync(CUDA_FULL_MASK, x, off));
        if (lane == 0)
            red[0][r][warp] = x;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = red[0][r][0];
        for (int w = 1; w < ATT_WARPS; w++)
            m[r] = fmaxf(m[r], red[0][r][w]);
        const float e = tid < len[r] ? expf(s[r] - m[r]) : 0.0f;
        p[r][tid] = e;
        const float wsum = warp_sum(e);
        if (lane == 0)
            red[1][r][warp] = wsum;
    }
    __syncthreads();

    const int sets = ATT_THREADS / n_units, set = tid / n_units, unit = tid % n_units;
    float o[R][8];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int e8 = 0; e8 < 8; e8++)
            o[r][e8] = 0.0f;
    if (set < sets) {
        const uint8_t *vg = v + (size_t)g * head_dim * (v_f16 ? 2 : 4);
        for (int js = set; js < len_max; js += V_LOADS * sets) {
            float vv[V_LOADS][8];
#pragma unroll
            for (int b = 0; b < V_LOADS; b++)
                if (js + b * sets < len_max)
                    cache_load8(vg + (size_t)(j0 + js + b * sets) * v_row_bytes, v_f16, v_vec, 8 * unit, head_dim,
                                vv[b]);
#pragma unroll
            for (int b = 0; b < V_LOADS; b++)
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (js + b * sets < len[r]) {
                        const float pj = p[r][js + b * sets];
#pragma unroll
                        for (int e8 = 0; e8 < 8; e8++)
                            o[r][e8] = __fmaf_rn(pj, vv[b][e8], o[r][e8]);
                    }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (len[r] <= 0) /* the same in every thread: barriers below stay uniform */
            continue;
        if (set < sets)
#pragma unroll
            for (int e8 = 0; e8 < 8; e8++)
                os[set * row_len + 8 * unit + e8] = o[r][e8];
        __syncthreads();
        const int f = f0 + r, i = sq.row0 + f / group, h = g * group + f % group;
        const size_t slot = ((size_t)i * n_head + h) * n_chunks + c;
        for (int d = tid; d < head_dim; d += ATT_THREADS) {
            float od = os[d];
            for (int t = 1; t < sets; t++)
                od += os[t * row_len + d];
            part_o[slot * head_dim + d] = od;
        }
        if (tid == 0) {
            float l = red[1][r][0];
            for (int w = 1; w < ATT_WARPS; w++)
                l += red[1][r][w];
            part_ml[2 * slot] = m[r];
            part_ml[2 * slot + 1] = l;
        }
        __syncthreads(); /* os is written again for the next pair */
    }

    /* the last of a pair's used chunks combines them (what other blocks wrote is read from L2: __ldcg,
     * after their writers' fences): the chunks' maxima at once, then up to ATT_THREADS chunks at a time
     * their weights exp(m - max) and sums into shared memory, and each thread's partials ATT_LOADS at a
     * time, so that the reads are a few round trips to L2 and not three a chunk; the float operations
     * are the chunks' in order all the same */
    __shared__ float cmax[ATT_WARPS];
    float *wsh = os, *lsh = os + ATT_THREADS; /* os is free again */
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (len[r] <= 0)
            continue;
        const int f = f0 + r, i = sq.row0 + f / group, h = g * group + f % group;
        const int used = (first_kv + f / group + ATT_CHUNK - 1) / ATT_CHUNK;
        if (!cuda_last_to_arrive(done + (size_t)i * n_head + h, used))
            continue;
        const size_t slot0 = ((size_t)i * n_head + h) * n_chunks;
        float mx = -INFINITY;
        for (int cc = tid; cc < used; cc += ATT_THREADS)
            mx = fmaxf(mx, __ldcg(&part_ml[2 * (slot0 + cc)]));
        for (int off = CUDA_WARP / 2; off > 0; off >>= 1)
            mx = fmaxf(mx, __shfl_xor_sync(CUDA_FULL_MASK, mx, off));
        if (lane == 0)
            cmax[warp] = mx;
        __syncthreads();
        mx = cmax[0];
        for (int w = 1; w < ATT_WARPS; w++)
            mx = fmaxf(mx, cmax[w]);
        float lsum = 0.0f, od[ATT_DIMS];
#pragma unroll
        for (int di = 0; di < ATT_DIMS; di++)
            od[di] = 0.0f;
        for (int c0 = 0; c0 < used; c0 += ATT_THREADS) {
            const int nc = min(ATT_THREADS, used - c0);
            if (tid < nc) {
                const size_t slot = slot0 + c0 + tid;
                wsh[tid] = expf(__ldcg(&part_ml[2 * slot]) - mx);
                lsh[tid] = __ldcg(&part_ml[2 * slot + 1]);
            }
            __syncthreads();
            for (int cc = 0; cc < nc; cc++)
                lsum = __fmaf_rn(wsh[cc], lsh[cc], lsum);
#pragma unroll
            for (int di = 0; di < ATT_DIMS; di++) {
                const int d = tid + di * ATT_THREADS;
                if (d >= head_dim)
                    break;
                const float *po = part_o + (slot0 + c0) * head_dim + d;
                for (int b0 = 0; b0 < nc; b0 += ATT_LOADS) {
                    float pv[ATT_LOADS];
#pragma unroll
                    for (int b = 0; b < ATT_LOADS; b++)
                        pv[b] = b0 + b < nc ? __ldcg(po + (size_t)(b0 + b) * head_dim) : 0.0f;
#pragma unroll
                    for (int b = 0; b < ATT_LOADS; b++)
                        if (b0 + b < nc)
                            od[di] = __fmaf_rn(wsh[b0 + b], pv[b], od[di]);
                }
            }
            __syncthreads(); /* wsh and lsh are written again for the next chunks, or the next pair */
        }
#pragma unroll
        for (int di = 0; di < ATT_DIMS; di++)
            if (tid + di * ATT_THREADS < head_dim)
                out[(size_t)i * out_stride + (size_t)h * head_dim + tid + di * ATT_THREADS] = od[di] / lsum;
        if (conv.q)
            convert_heads(conv, out, out_stride, n_head, head_dim, h, i);
    }
}

cudaError_t cuda_attention(cudaStream_t st, struct cuda_act *act, const struct cuda_attn *a)
{
    /* the sequences' blocks one after another along z, and as many chunks as the longest cache needs */
    const int group = a->n_head / a->n_head_kv;
    const int per_block = cuda_attention_tiles && a->seq[0].n >= CUDA_ATT_TILE_MIN_QUERIES ? ATT_TILE : 1;
    attn_seqs ss = {};
    int n_chunks = 1, z = 0, row = 0;
    bool at_device = false, k_aligned = true, v_aligned = true;
    for (int i = 0; i < a->n_seq; i++) {
        const cuda_attn_seq *sq = &a->seq[i];
        /* the position itself only when it is not read from device memory, so that a replayed step's
         * launches are the recorded ones */
        ss.s[i] = attn_seq{(const uint8_t *)sq->k, (const uint8_t *)sq->v, sq->pos0_at, sq->pos0_at ? 0 : sq->pos0,
                           sq->n, row, z};
        n_chunks = max(n_chunks, (sq->pos0 + sq->n + ATT_CHUNK - 1) / ATT_CHUNK);
        at_device = at_device || sq->pos0_at;
        k_aligned = k_aligned && (uintptr_t)sq->k % 16 == 0;
        v_aligned = v_aligned && (uintptr_t)sq->v % 16 == 0;
        z += (sq->n * group + per_block - 1) / per_block;
        row += sq->n;
    }
    ss.n = a->n_seq;
    while (at_device && (n_chunks & (n_chunks - 1)))
        n_chunks += n_chunks & -n_chunks; /* up to the next power of two */
    const size_t pairs = (size_t)a->n * a->n_head, slots = pairs * n_chunks;
    const size_t o_bytes = cuda_align256(slots * a->head_dim * sizeof(float)),
                 ml_bytes = cuda_align256(slots * 2 * sizeof(float));
    cudaError_t err = cuda_reserve_counters(st, a->counters, pairs * sizeof(int));
    if (err == cudaSuccess)
        err = cuda_buf_reserve(st, a->part, o_bytes + ml_bytes);
    if (err != cudaSuccess)
        return err;
    int *done = (int *)a->counters->p;
    float *part_o = (float *)a->part->p, *part_ml = (float *)((uint8_t *)a->part->p + o_bytes);
    const dim3 grid((unsigned)n_chunks, (unsigned)a->n_head_kv, (unsigned)z);
    /* 16-byte loads when every head's slice of every row starts 16-byte aligned */
    const bool k_vec = a->head_dim % 8 == 0 && k_aligned && a->k_row_bytes % 16 == 0,
               v_vec = a->head_dim % 8 == 0 && v_aligned && a->v_row_bytes % 16 == 0;
    /* wo's conversion, in the form of the one before (q|k|v's) */
    const enum spec_dtype form = (enum spec_dtype)act->form;
    const int len = cuda_q8_block_len(form), width = a->n_head * a->head_dim;
    cuda_q8_out conv = {};
    if (len && width % len == 0 && (len % a->head_dim == 0 || a->head_dim % len == 0)) {
        const int heads_per_group = len > a->head_dim ? len / a->head_dim : 1;
        const cudaError_t cerr = cuda_act_out_prepare(st, act, form, width, a->n,
                                                      (size_t)a->n * (size_t)(a->n_head / heads_per_group), &conv);
        if (cerr != cudaSuccess)
            return cerr;
    }
    CUDA_LAUNCH(grid, ATT_THREADS, st, *(per_block == 1 ? attn_chunk_kernel<1> : attn_chunk_kernel<ATT_TILE>))(
        a->q, a->q_stride, ss, a->k_row_bytes, a->k_type == SPEC_F16, k_vec, a->v_row_bytes, a->v_type == SPEC_F16,
        v_vec, a->n_head, group, a->head_dim, a->scale, n_chunks, part_o, part_ml, done, a->out, a->out_stride, conv,
        cuda_prefetch_weights);
    const cudaError_t lerr = cudaGetLastError();
    if (lerr == cudaSuccess && conv.q)
        cuda_act_out_keep(act, a->out, a->out_stride, width, a->n, form);
    return lerr;
}
