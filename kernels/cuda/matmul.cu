/* y = x . w^T on the GPU for every weight type the CPU backend computes with: the activations are
 * converted once (and kept for the next matmul of the same input: q, k and v share one conversion,
 * gate and up another), then one kernel reads each weight row once for all activation rows.
 *
 * Numerics, chosen so that a row's result never depends on the batch and stays close to the CPU's:
 *  - Activations are converted exactly as the CPU backend converts them (bit for bit): to Q8_0 for
 *    Q4_0/Q5_0/Q8_0 weights, Q8_1 for Q4_1, Q8_K for Q4_K/Q6_K (ggml's reference quantisers), to F16
 *    for F16 weights, BF16 for BF16 weights; F32 weights take the F32 rows as they are.
 *  - A weight row is cut into units: one block for the 32-element quants, a quarter super-block
 *    (64 elements) for Q4_K and Q6_K, 8 elements for the float types. A unit's dot product is an
 *    exact integer for the quantised types (dp4a), which is scaled into a float accumulator by one
 *    fused multiply-add per scale; float units add their 8 products in order, also with fmaf.
 *  - One warp owns a few weight rows (RPW): lane l adds units l, l+32, l+64, ... of each in that order
 *    into one accumulator per (weight row, activation row), and lane 0 takes the sum of the 32 lanes
 *    by a fixed butterfly. A quantised row of more units than lanes takes a block of 4 warps instead
 *    (mmv_wide: lane l of 128 adds units l, l+128, ...; the warps' sums added in order).
 *    The activation rows are walked in tiles of MMV_TILE (a single row in a tile of one), each row in
 *    its own accumulator with the same instructions, so nothing in a row's order of operations
 *    depends on how many rows share the call or where the row sits in it: n rows in one call give the
 *    bits of n one-row calls.
 * The order differs from the CPU's (8 float lanes per row, one float accumulator for the K-quants),
 * so results differ from the CPU backend by float rounding of the sum only
 * (tests/kernels/test_backend_conformance.c holds the bound).
 *
 * With tensor cores (kern_backend_config.tensor_cores), the quantised types go through mmq instead:
 * int8 mma gives the same exact integer dots of a unit for 16 weight rows and 8 activation rows at
 * once, and each (weight row, activation row) pair is summed in an order fixed by k alone (per warp
 * over its units, then the warps in order), so it too is batch-invariant. One activation row takes
 * mmv_ordered, dp4a in mmq's order, with mmq's bits.
 *
 * All files in kernels/cuda are compiled with -fmad=false: no multiply-add is fused unless written. */
#include "kernels/cuda/cuda_ops.h"

#define MMV_WARPS 4 /* warps per thread block */
#define MMV_TILE 8  /* activation rows per pass over a weight row */
#define MMV_WIDE_AHEAD 2 /* units of its row a lane of mmv_wide loads before using the first */
#define MMV_THREADS (MMV_WARPS * CUDA_WARP)

/* For a recorded step's trace: the members that reach the kernel (not the padding between them). */
static inline void cuda_trace_arg(cuda_node &nd, const cuda_mm_args &a)
{
    for (int i = 0; i < a.n_parts; i++) {
        const cuda_mm_part &p = a.part[i];
        cuda_trace_args(nd, p.w, p.w_row_bytes, p.rows, p.bias, p.y, p.y_stride);
    }
    cuda_trace_args(nd, a.n_parts, a.block1, a.block2, a.k, a.n, a.swiglu, a.vec, a.prefetch, a.xq, a.q_stride, a.xd,
                    a.xs, a.xsum, a.out, a.after, a.after_count);
    if (a.after == CUDA_MM_AFTER_NORM)
        cuda_trace_args(nd, a.norm, a.norm_out);
    else if (a.after == CUDA_MM_AFTER_ROPE)
        cuda_trace_args(nd, a.rope, a.store);
}

/* ---------------------------------------------------------------------------------------------- */
/* Activation conversion                                                                          */

/* The rows of x converted, one warp a block. */
template <q8_form F>
__global__ void __launch_bounds__(MMV_THREADS)
    quantize_rows(const float *x, size_t x_stride, int k, int n, int8_t *q, float *d, float *s, int *sum16)
{
    cuda_grid_wait();
    const int nb = k / (F == Q8_K_FORM ? 256 : 32);
    const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / CUDA_WARP) + threadIdx.x / CUDA_WARP;
    if (blk >= (int64_t)nb * n)
        return; /* the whole warp leaves together */
    quantize_block<F>(x, x_stride, k, (int)(blk / nb), (int)(blk % nb), q, d, s, sum16, threadIdx.x % CUDA_WARP);
}

/* A norm and the conversion of its output in one launch: a block a row normalises it (rms_norm_row,
 * which ends at a barrier, so the row's y is there for all its threads), then its warps convert the
 * row's blocks from that y, as quantize_rows would: the bits of the two launches. */
template <q8_form F>
__global__ void __launch_bounds__(RMS_THREADS)
    rms_norm_quantize(const cuda_norm nm, int8_t *q, float *d, float *s, int *sum16)
{
    cuda_grid_wait();
    __shared__ double part[RMS_THREADS];
    const int nb = nm.ne0 / (F == Q8_K_FORM ? 256 : 32), warp = threadIdx.x / CUDA_WARP;
    for (int r = blockIdx.x; r < nm.rows; r += gridDim.x) {
        rms_norm_row(nm, r, part, threadIdx.x);
        for (int b = warp; b < nb; b += RMS_THREADS / CUDA_WARP)
            quantize_block<F>(nm.y, nm.y_stride, nm.ne0, r, b, q, d, s, sum16, threadIdx.x % CUDA_WARP);
    }
}

/* F32 rows to F16 (round to nearest even) or BF16 (ggml's rounding, NaN kept quiet). */
template <bool BF16>
__global__ void convert_rows(const float *x, size_t x_stride, int k, int n, uint16_t *out)
{
    cuda_grid_wait();
    CUDA_GRID_STRIDE(i, (int64_t)k * n)
    {
        const int r = (int)(i / k), c = (int)(i % k);
        const float f = x[(size_t)r * x_stride + c];
        uint16_t h;
        if (BF16) {
            const uint32_t u = __float_as_uint(f);
            h = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 64) : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        } else {
            h = __half_as_ushort(__float2half_rn(f));
        }
        out[i] = h;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Weight units                                                                                   */

/* Each weight type W gives: U (a unit of one weight row in registers), X (the matching unit of one
 * activation row), units(k), load(), load_x() and dot(), which adds the unit's contribution to acc. */

/* 32 quantised activations of one block with their scale and sum. */
struct x_q8_32 {
    int q[8];
    float d;
    float s; /* Q8_1 only */
    int sum;
};

static __device__ __forceinline__ void load_x_q8_32(const cuda_mm_args &a, int r, int u, bool q8_1, x_q8_32 &x)
{
    const int4 *p = (const int4 *)(a.xq + (size_t)r * a.q_stride + 32 * u);
    const int4 v0 = p[0], v1 = p[1];
    x.q[0] = v0.x, x.q[1] = v0.y, x.q[2] = v0.z, x.q[3] = v0.w;
    x.q[4] = v1.x, x.q[5] = v1.y, x.q[6] = v1.z, x.q[7] = v1.w;
    const size_t nb = (size_t)a.k / 32;
    x.d = a.xd[(size_t)r * nb + u];
    x.s = q8_1 ? a.xs[(size_t)r * nb + u] : 0.0f;
    const int2 s2 = *(const int2 *)(a.xsum + (size_t)r * (a.k / 16) + 2 * u);
    x.sum = s2.x + s2.y;
}

/* The weights' values are unpacked into bytes once per unit in load(), not once per activation row
 * in dot(): dot() is what a batch repeats. */

/* 16 bytes of nibbles (element j low, j+16 high) as the bytes of elements 0-15 (lo) and 16-31 (hi). */
static __device__ __forceinline__ void split_nibbles(const uint32_t qs[4], uint32_t lo[4], uint32_t hi[4])
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        lo[i] = qs[i] & 0x0f0f0f0fu;
        hi[i] = (qs[i] >> 4) & 0x0f0f0f0fu;
    }
}

/* Integer dot of 32 unpacked values (elements 0-15 in lo, 16-31 in hi) with 32 int8 activations. */
static __device__ __forceinline__ int dot_bytes32(const uint32_t lo[4], const uint32_t hi[4], const int x[8])
{
    int s = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        s = __dp4a((int)lo[i], x[i], s);
        s = __dp4a((int)hi[i], x[4 + i], s);
    }
    return s;
}

/* Tensor cores (the mmq kernel): each type also gives A (unit u of weight rows g and g+8 as mma
 * fragments, with their scales), B (unit u of activation row r as the fragment of column g), XS (that
 * row's scales and sums for unit u), load_a(), load_b(), load_xs() and mma_acc(), which multiplies
 * the unit and adds its contribution to the lane's four (weight row, activation row) pairs:
 * acc[j] for weight row g + 8 (j / 2) and the activation row of xs[j % 2]. The integer dots are
 * exact, so a pair's float operations are mmv's dot() on the same unit. */

/* The fragments of the 32-element types: a[0..3] as cuda_mma_s8<32> takes them, each row's scale
 * (and Q4_1's min). */
struct a_q32 {
    uint32_t q[4];
    float d[2], m[2];
};

/* What the 32-element types share on tensor cores: the activations' side (Q8_0, or Q8_1) and the
 * product of a unit. */
template <bool Q8_1>
struct mma_q32 {
    typedef a_q32 A;
    struct B {
        uint32_t q[2]; /* elements 4t.. and 16+4t.. of the block */
    };
    struct XS {
        float d, s; /* s: Q8_1's d * sum(q) */
        int sum;    /* the sum of the block's 32 values */
    };
    static __device__ void load_b(const cuda_mm_args &a, int r, int u, int t, B &b)
    {
        const uint32_t *q = (const uint32_t *)(a.xq + (size_t)r * a.q_stride + 32 * (size_t)u);
        b.q[0] = q[t];
        b.q[1] = q[4 + t];
    }
    static __device__ void load_xs(const cuda_mm_args &a, int r, int u, XS &x)
    {
        const size_t nb = (size_t)a.k / 32;
        x.d = a.xd[(size_t)r * nb + u];
        x.s = Q8_1 ? a.xs[(size_t)r * nb + u] : 0.0f;
        const int2 s2 = *(const int2 *)(a.xsum + (size_t)r * (a.k / 16) + 2 * u);
        x.sum = s2.x + s2.y;
    }
    /* Adds d dx (q . x - off sum(x)) to each pair, the codes being stored as q + off. */
    static __device__ void add_scaled(const A &w, const B &b, const XS xs[2], int off, float acc[4])
    {
        int c[4];
        cuda_mma_s8<32>(c, w.q, b.q);
        for (int j = 0; j < 4; j++) {
            const int h = j / 2, x = j % 2;
            acc[j] = __fmaf_rn(w.d[h] * xs[x].d, (float)(c[j] - off * xs[x].sum), acc[j]);
        }
    }
};

struct w_q4_0 : mma_q32<false> {
    struct U {
        float d;
        uint32_t lo[4], hi[4];
    };
    typedef x_q8_32 X;
    static __host__ __device__ int units(int k) { return k / 32; }
    static __device__ void load(const cuda_mm_args &a, const uint8_t *wrow, int u, U &w)
    {
        const uint8_t *b = wrow + 18 * (size_t)u;
        w.d = ld_f16(b);
        uint32_t qs[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            qs[i] = ld_u32_a2(b + 2 + 4 * i);
        split_nibbles(qs, w.lo, w.hi);
    }
    static __device__ void load_x(const cuda_mm_args &a, int r, int u, X &x) { load_x_q8_32(a, r, u, false, x); }
    static __device__ float dot(const U &w, const X &x, float acc)
    {
        const int s = dot_bytes32(w.lo, w.hi, x.q) - 8 * x.sum; /* nibbles are q + 8 */
        return __fmaf_rn(w.d * x.d, (float)s, acc);
    }

    static __device__ void load_a(const cuda_mm_args &a, const uint8_t *w0, const uint8_t *w1, int u, int t, A &f)
    {
        const uint8_t *rows[2] = {w0 + 18 * (size_t)u, w1 + 18 * (size_t)u};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            f.d[h] = ld_f16(rows[h]);
            const uint32_t qs = ld_u32_a2(rows[h] + 2 + 4 * t); /* elements 4t.. low, 16+4t.. high */
            f.q[h] = qs & 0x0f0f0f0fu;
            f.q[2 + h] = (qs >> 4) & 0x0f0f0f0fu;
        }
    }
    static __device__ void mma_acc(const A &w, const B &b, const XS xs[2], float acc[4])
    {
        add_scaled(w, b, xs, 8, acc);
    }
};

struct w_q4_1 : mma_q32<true> {
    struct U {
        float d, m;
        uint32_t lo[4], hi[4];
    };
    typedef x_q8_32 X;
    static __host__ __device__ int units(int k) { return k / 32; }
    static __device__ void load(const cuda_mm_args &a, const uint8_t *wrow, int u, U &w)
    {
        const uint8_t *b = wrow + 20 * (size_t)u;
        const uint32_t *p = (const uint32_t *)b; /* 20-byte blocks: 4-byte aligned */
        const uint32_t dm = p[0];
        w.d = __half2float(__ushort_as_half((uint16_t)(dm & 0xffffu)));
        w.m = __half2float(__ushort_as_half((uint16_t)(dm >> 16)));
        const uint32_t qs[4] = {p[1], p[2], p[3], p[4]};
        split_nibbles(qs, w.lo, w.hi);
    }
    static __device__ void load_x(const cuda_mm_args &a, int r, int u, X &x) { load_x_q8_32(a, r, u, true, x); }
    static __device__ float dot(const U &w, const X &x, float acc)
    {
        /* sum (d q + m) dx x = d dx sum(q x) + m (dx sum x), the last factor being Q8_1's s */
        acc = __fmaf_rn(w.d * x.d, (float)dot_bytes32(w.lo, w.hi, x.q), acc);
        return __fmaf_rn(w.m, x.s, acc);
    }

    static __device__ void load_a(const cuda_mm_args &a, const uint8_t *w0, const uint8_t *w1, int u, int t, A &f)
    {
        const uint32_t *rows[2] = {(const uint32_t *)(w0 + 20 * (size_t)u), (const uint32_t *)(w1 + 20 * (size_t)u)};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint32_t dm = rows[h][0], qs = rows[h][1 + t];
            f.d[h] = __half2float(__ushort_as_half((uint16_t)(dm & 0xffffu)));
            f.m[h] = __half2float(__ushort_as_half((uint16_t)(dm >> 16)));
            f.q[h] = qs & 0x0f0f0f0fu;
            f.q[2 + h] = (qs >> 4) & 0x0f0f0f0fu;
        }
    }
    static __device__ void mma_acc(const A &w, const B &b, const XS xs[2], float acc[4])
    {
        add_scaled(w, b, xs, 0, acc);
        for (int j = 0; j < 4; j++) /* + m (dx sum x) */
            acc[j] = __fmaf_rn(w.m[j / 2], xs[j % 2].s, acc[j]);
    }
};

/* Bit k of the 4-bit value b moved to bit 4 of byte k. */
static __device__ __forceinline__ uint32_t spread4(uint32_t b)
{
    return ((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25);
}

struct w_q5_0 : mma_q32<false> {
    struct U {
        float d;
        uint32_t lo[4], hi[4]; /* with the fifth bits */
    };
    typedef x_q8_32 X;
    static __host__ __device__ int units(int k) { return k / 32; }
    static __device__ void load(const cuda_mm_args &a, const uint8_t *wrow, int u, U &w)
    {
        const uint8_t *b = wrow + 22 * (size_t)u;
        w.d = ld_f16(b);
        const uint32_t qh = ld_u32_a2(b + 2);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            /* element j's fifth bit is bit j of qh (elements 4i.. low nibbles, 16+4i.. high) */
            const uint32_t qs = ld_u32_a2(b + 6 + 4 * i);
            w.lo[i] = (qs & 0x0f0f0f0fu) | spread4((qh >> (4 * i)) & 15u);
            w.hi[i] = ((qs >> 4) & 0x0f0f0f0fu) | spread4((qh >> (16 + 4 * i)) & 15u);
        }
    }
    static __device__ void load_x(const cuda_mm_args &a, int r, int u, X &x) { load_x_q8_32(a, r, u, false, x); }
    static __device__ float dot(const U &w, const X &x, float acc)
    {
        const int s = dot_bytes32(w.lo, w.hi, x.q) - 16 * x.sum; /* the stored values are q + 16 */
        return __fmaf_rn(w.d * x.d, (float)s, acc);
    }

    static __device__ void load_a(const cuda_mm_args &a, const uint8_t *w0, const uint8_t *w1, int u, int t, A &f)
    {
        const uint8_t *rows[2] = {w0 + 22 * (size_t)u, w1 + 22 * (size_t)u};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            f.d[h] = ld_f16(rows[h]);
            const uint32_t qh = ld_u32_a2(rows[h] + 2), qs = ld_u32_a2(rows[h] + 6 + 4 * t);
            f.q[h] = (qs & 0x0f0f0f0fu) | spread4((qh >> (4 * t)) & 15u);
            f.q[2 + h] = ((qs >> 4) & 0x0f0f0f0fu) | spread4((qh >> (16 + 4 * t)) & 15u);
        }
    }
    static __device__ void mma_acc(const A &w, const B &b, const XS xs[2], float acc[4])
    {
        add_scaled(w, b, xs, 16, acc);
    }
};

struct w_q8_0 : mma_q32<false> {
    struct U {
        float d;
        int qs[8];
    };
    typedef x_q8_32 X;
    static __host__ __device__ int units(int k) { return k / 32; }
    static __device__ void load(const cuda_mm_args &a, const uint8_t *wrow, int u, U &w)
    {
        const uint8_t *b = wrow + 34 * (size_t)u;
        w.d = ld_f16(b);
#pragma unroll
        for (int i = 0; i < 8; i++)
            w.qs[i] = (int)ld_u32_a2(b + 2 + 4 * i);
    }
    static __device__ void load_x(const cuda_mm_args &a, int r, int u, X &x) { load_x_q8_32(a, r, u, false, x); }
    static __device__ float dot(const U &w, const X &x, float acc)
    {
        int s = 0;
#pragma unroll
        for (int i = 0; i < 8; i++)
            s = __dp4a(w.qs[i], x.q[i], s);
        return __fmaf_rn(w.d * x.d, (float)s, acc);
    }

    static __device__ void load_a(const cuda_mm_args &a, const uint8_t *w0, const uint8_t *w1, int u, int t, A &f)
    {
        const uint8_t *rows[2] = {w0 + 34 * (size_t)u, w1 + 34 * (size_t)u};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            f.d[h] = ld_f16(rows[h]);
            f.q[h] = ld_u32_a2(rows[h] + 2 + 4 * t);
            f.q[2 + h] = ld_u32_a2(rows[h] + 18 + 4 * t);
        }
    }
    static __device__ void mma_acc(const A &w, const B &b, const XS xs[2], float acc[4])
    {
        add_scaled(w, b, xs, 0, acc);
    }
};

/* 64 activations of a Q8_K block (a quarter of it) with its scale and the sums of 16. */
struct x_q8_K64 {
    int q[16];
    float d;
    int sum16[4];
};

static __device__ __forceinline__ void load_x_q8_K64(const cuda_mm_args &a, int r, int e0, x_q8_K64 &x)
{
    const int4 *p = (const int4 *)(a.xq + (size_t)r * a.q_stride + e0);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int4 v = p[i];
        x.q[4 * i] = v.x, x.q[4 * i + 1] = v.y, x.q[4 * i + 2] = v.z, x.q[4 * i + 3] = v.w;
    }
    x.d = a.xd[(size_t)r * (a.k / 256) + e0 / 256];
    const int4 s = *(const int4 *)(a.xsum + (size_t)r * (a.k / 16) + e0 / 16);
    x.sum16[0] = s.x, x.sum16[1] = s.y, x.sum16[2] = s.z, x.sum16[3] = s.w;
}

/* A Q8_K quarter block's scale and the sums of its four groups of 16. */
struct xs_q8_K64 {
    float d;
    int sum16[4];
};

/* Q4_K: a unit is sub-blocks 2p and 2p+1 of a super-block, which share 32 bytes of qs (2p in the low
 * nibbles, 2p+1 in the high ones). Contribution: d dx sum_j sc_j (q_j . x_j) - dmin dx sum_j m_j sum(x_j). */
struct w_q4_K {
    struct U {
        float d, dmin;
        int sc[2], m[2];
        uint32_t lo[8], hi[8]; /* sub-blocks 2p and 2p+1 */
    };
    typedef x_q8_K64 X;
    static __host__ __device__ int units(int k) { return k / 64; }
    static __device__ void load(const cuda_mm_args &a, const uint8_t *wrow, int u, U &w)
    {
        const int p = u % 4;
        const uint8_t *b = wrow + 144 * (size_t)(u / 4); /* 16-byte aligned */
        const uint32_t dm = *(const uint32_t *)b;
        w.d = __half2float(__ushort_as_half((uint16_t)(dm & 0xffffu)));
        w.dmin = __half2float(__ushort_as_half((uint16_t)(dm >> 16)));
#pragma unroll
        for (int h = 0; h < 2; h++)
            q4_K_scale_min(b + 4, 2 * p + h, w.sc[h], w.m[h]);
        const uint4 *q = (const uint4 *)(b + 16 + 32 * p);
        const uint4 q0 = q[0], q1 = q[1];
        const uint32_t qs[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            w.lo[i] = qs[i] & 0x0f0f0f0fu;
            w.hi[i] = (qs[i] >> 4) & 0x0f0f0f0fu;
        }
    }
    static __device__ void load_x(const cuda_mm_args &a, int r, int u, X &x) { load_x_q8_K64(a, r, 64 * u, x); }
    static __device__ float dot(const U &w, const X &x, float acc)
    {
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            s0 = __dp4a((int)w.lo[i], x.q[i], s0);
            s1 = __dp4a((int)w.hi[i], x.q[8 + i], s1);
        }
        const int sumi = w.sc[0] * s0 + w.sc[1] * s1;
        const int summ = w.m[0] * (x.sum16[0] + x.sum16[1]) + w.m[1] * (x.sum16[2] + x.sum16[3]);
        acc = __fmaf_rn(w.d * x.d, (float)sumi, acc);
        return __fmaf_rn(-(w.dmin * x.d), (float)summ, acc);
    }

    /* Fragments: a lane holds bytes 8t .. 8t+7 of each row's 32 bytes of qs, so k runs through the
     * elements in the order 8t.., 8t+4.. (lane t) and B takes the same order; a dot is a sum, and
     * each lane's eight bytes are one load. q[0..3]: sub-block 2p, q[4..7]: sub-block 2p+1. */
    struct A {
        uint32_t q[8];
        float d[2], dmin[2];
        int sc[2][2], m[2][2];
    };
    struct B {
        uint32_t q[4];
    };
    typedef xs_q8_K64 XS;
    static __device__ void load_a(const cuda_mm_args &a, const uint8_t *w0, const uint8_t *w1, int u, int t, A &f)
    {
        const int p = u % 4;
        const uint8_t *rows[2] = {w0 + 144 * (size_t)(u / 4), w1 + 144 * (size_t)(u / 4)};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint8_t *b = rows[h];
            const uint32_t dm = *(const uint32_t *)b;
            f.d[h] = __half2float(__ushort_as_half((uint16_t)(dm & 0xffffu)));
            f.dmin[h] = __half2float(__ushort_as_half((uint16_t)(dm >> 16)));
#pragma unroll
            for (int s = 0; s < 2; s++)
                q4_K_scale_min(b + 4, 2 * p + s, f.sc[h][s], f.m[h][s]);
            const uint2 qs = *(const uint2 *)(b + 16 + 32 * p + 8 * t);
            f.q[h] = qs.x & 0x0f0f0f0fu; /* sub-block 2p: elements 8t.. and 8t+4.. */
            f.q[2 + h] = qs.y & 0x0f0f0f0fu;
            f.q[4 + h] = (qs.x >> 4) & 0x0f0f0f0fu; /* sub-block 2p+1 */
            f.q[6 + h] = (qs.y >> 4) & 0x0f0f0f0fu;
        }
    }
    static __device__ void load_b(const cuda_mm_args &a, int r, int u, int t, B &b)
    {
        const uint8_t *x = a.xq + (size_t)r * a.q_stride + 64 * (size_t)u + 8 * t;
        const uint2 lo = *(const uint2 *)x, hi = *(const uint2 *)(x + 32);
        b.q[0] = lo.x, b.q[1] = lo.y, b.q[2] = hi.x, b.q[3] = hi.y;
    }
    static __device__ void load_xs(const cuda_mm_args &a, int r, int u, XS &x)
    {
        x.d = a.xd[(size_t)r * (a.k / 256) + u / 4];
        const int4 s = *(const int4 *)(a.xsum + (size_t)r * (a.k / 16) + 4 * u);
        x.sum16[0] = s.x, x.sum16[1] = s.y, x.sum16[2] = s.z, x.sum16[3] = s.w;
    }
    static __device__ void mma_acc(const A &w, const B &b, const XS xs[2], float acc[4])
    {
        int c0[4], c1[4];
        cuda_mma_s8<32>(c0, w.q, b.q);
        cuda_mma_s8<32>(c1, w.q + 4, b.q + 2);
        for (int j = 0; j < 4; j++) {
            const int h = j / 2, x = j % 2;
            const int *s16 = xs[x].sum16;
            const int sumi = w.sc[h][0] * c0[j] + w.sc[h][1] * c1[j];
            const int summ = w.m[h][0] * (s16[0] + s16[1]) + w.m[h][1] * (s16[2] + s16[3]);
            acc[j] = __fmaf_rn(w.d[h] * xs[x].d, (float)sumi, acc[j]);
            acc[j] = __fmaf_rn(-(w.dmin[h] * xs[x].d), (float)summ, acc[j]);
        }
    }
};

/* Q6_K: a unit is quarters a and a+2 of half h of a super-block (elements 128h + 32a + l and
 * 128h + 64 + 32a + l, l < 32): they share 32 bytes of ql (low and high nibbles) and the 32 bytes of
 * qh of half h (bits 2a and 2a+4). Values are stored as q + 32 with a scale per 16 elements. */
struct w_q6_K {
    struct U {
        float d;
        int sc[4]; /* quarter a: l < 16, l >= 16; quarter a+2: l < 16, l >= 16 */
        uint32_t lo[8], hi[8]; /* the 6-bit values (0..63) of quarters a and a+2, four per word */
    };
    struct X {
        int qa[8], qb[8];
        float d;
        int sum16[4];
    };
    static __host__ __device__ int units(int k) { return k / 64; }
    static __device__ void load(const cuda_mm_args &a, const uint8_t *wrow, int u, U &w)
    {
        const int h = (u % 4) / 2, qa = u % 2;
        const uint8_t *b = wrow + 210 * (size_t)(u / 4); /* 2-byte aligned */
        const uint8_t *ql = b + 64 * h + 32 * qa, *qh = b + 128 + 32 * h;
        const int8_t *scales = (const int8_t *)(b + 192 + 8 * h + 2 * qa);
        w.d = ld_f16(b + 208);
        w.sc[0] = scales[0], w.sc[1] = scales[1], w.sc[2] = scales[4], w.sc[3] = scales[5];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t l4 = ld_u32_a2(ql + 4 * i), h2 = ld_u32_a2(qh + 4 * i);
            w.lo[i] = (l4 & 0x0f0f0f0fu) | (((h2 >> (2 * qa)) & 0x03030303u) << 4);
            w.hi[i] = ((l4 >> 4) & 0x0f0f0f0fu) | (((h2 >> (2 * qa + 4)) & 0x03030303u) << 4);
        }
    }
    static __device__ void load_x(const cuda_mm_args &a, int r, int u, X &x)
    {
        const int h = (u % 4) / 2, qa = u % 2;
        const int e0 = 256 * (u / 4) + 128 * h + 32 * qa; /* quarter a; quarter a+2 is 64 further */
        const uint8_t *row = a.xq + (size_t)r * a.q_stride;
        const int4 *pa = (const int4 *)(row + e0), *pb = (const int4 *)(row + e0 + 64);
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int4 va = pa[i], vb = pb[i];
            x.qa[4 * i] = va.x, x.qa[4 * i + 1] = va.y, x.qa[4 * i + 2] = va.z, x.qa[4 * i + 3] = va.w;
            x.qb[4 * i] = vb.x, x.qb[4 * i + 1] = vb.y, x.qb[4 * i + 2] = vb.z, x.qb[4 * i + 3] = vb.w;
        }
        x.d = a.xd[(size_t)r * (a.k / 256) + u / 4];
        const int *s = a.xsum + (size_t)r * (a.k / 16);
        const int2 sa = *(const int2 *)(s + e0 / 16), sb = *(const int2 *)(s + (e0 + 64) / 16);
        x.sum16[0] = sa.x, x.sum16[1] = sa.y, x.sum16[2] = sb.x, x.sum16[3] = sb.y;
    }
    static __device__ float dot(const U &w, const X &x, float acc)
    {
        int g[4] = {0, 0, 0, 0};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            g[0] = __dp4a((int)w.lo[i], x.qa[i], g[0]);
            g[1] = __dp4a((int)w.lo[4 + i], x.qa[4 + i], g[1]);
            g[2] = __dp4a((int)w.hi[i], x.qb[i], g[2]);
            g[3] = __dp4a((int)w.hi[4 + i], x.qb[4 + i], g[3]);
        }
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 4; i++)
            sumi += w.sc[i] * (g[i] - 32 * x.sum16[i]);
        return __fmaf_rn(w.d * x.d, (float)sumi, acc);
    }

    /* Fragments of the unit's four 16-element groups (a scale each), one m16n8k16 each: q[2i + h] is
     * group i of row g + 8h (elements 4t..; groups: quarter a l < 16, l >= 16, quarter a+2 the same). */
    struct A {
        uint32_t q[8];
        float d[2];
        int sc[2][4];
    };
    struct B {
        uint32_t q[4];
    };
    typedef xs_q8_K64 XS;
    static __device__ void load_a(const cuda_mm_args &a, const uint8_t *w0, const uint8_t *w1, int u, int t, A &f)
    {
        const int h2 = (u % 4) / 2, qa = u % 2;
        const uint8_t *rows[2] = {w0 + 210 * (size_t)(u / 4), w1 + 210 * (size_t)(u / 4)};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint8_t *b = rows[h], *ql = b + 64 * h2 + 32 * qa, *qh = b + 128 + 32 * h2;
            const int8_t *scales = (const int8_t *)(b + 192 + 8 * h2 + 2 * qa);
            f.d[h] = ld_f16(b + 208);
            f.sc[h][0] = scales[0], f.sc[h][1] = scales[1], f.sc[h][2] = scales[4], f.sc[h][3] = scales[5];
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const uint32_t l4 = ld_u32_a2(ql + 16 * half + 4 * t), hb = ld_u32_a2(qh + 16 * half + 4 * t);
                f.q[2 * half + h] = (l4 & 0x0f0f0f0fu) | (((hb >> (2 * qa)) & 0x03030303u) << 4);
                f.q[4 + 2 * half + h] = ((l4 >> 4) & 0x0f0f0f0fu) | (((hb >> (2 * qa + 4)) & 0x03030303u) << 4);
            }
        }
    }
    static __device__ void load_b(const cuda_mm_args &a, int r, int u, int t, B &b)
    {
        const int e0 = 256 * (u / 4) + 128 * ((u % 4) / 2) + 32 * (u % 2); /* quarter a; a+2 is 64 further */
        const uint8_t *x = a.xq + (size_t)r * a.q_stride + e0 + 4 * t;
        b.q[0] = *(const uint32_t *)x, b.q[1] = *(const uint32_t *)(x + 16);
        b.q[2] = *(const uint32_t *)(x + 64), b.q[3] = *(const uint32_t *)(x + 80);
    }
    static __device__ void load_xs(const cuda_mm_args &a, int r, int u, XS &x)
    {
        const int e0 = 256 * (u / 4) + 128 * ((u % 4) / 2) + 32 * (u % 2);
        x.d = a.xd[(size_t)r * (a.k / 256) + u / 4];
        const int *s = a.xsum + (size_t)r * (a.k / 16);
        const int2 sa = *(const int2 *)(s + e0 / 16), sb = *(const int2 *)(s + (e0 + 64) / 16);
        x.sum16[0] = sa.x, x.sum16[1] = sa.y, x.sum16[2] = sb.x, x.sum16[3] = sb.y;
    }
    static __device__ void mma_acc(const A &w, const B &b, const XS xs[2], float acc[4])
    {
        int c[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            cuda_mma_s8<16>(c[i], w.q + 2 * i, b.q + i);
        for (int j = 0; j < 4; j++) {
            const int h = j / 2, x = j % 2;
            int sumi = 0;
#pragma unroll
            for (int i = 0; i < 4; i++)
                sumi += w.sc[h][i] * (c[i][j] - 32 * xs[x].sum16[i]);
            acc[j] = __fmaf_rn(w.d[h] * xs[x].d, (float)sumi, acc[j]);
        }
    }
};

/* Float weights: 8 elements per unit. */
template <enum spec_dtype T>
struct w_float {
    struct U {
        float v[8];
    };
    typedef U X;
    static __host__ __device__ int units(int k) { return (k + 7) / 8; }
    static __device__ float elem(const uint8_t *row, int e)
    {
        if (T == SPEC_F32)
            return ((const float *)row)[e];
        if (T == SPEC_F16)
            return __half2float(__ushort_as_half(((const uint16_t *)row)[e]));
        return bf16_to_f32(((const uint16_t *)row)[e]);
    }
    /* 8 elements from e0 of a row of type T (or of its activation type, which is the same). */
    static __device__ void load8(const uint8_t *row, int e0, int k, bool vec, float v[8])
    {
        if (!vec) {
#pragma unroll
            for (int i = 0; i < 8; i++)
                v[i] = e0 + i < k ? elem(row, e0 + i) : 0.0f;
        } else if (T == SPEC_F32) {
            const float4 a = ((const float4 *)row)[e0 / 4], b = ((const float4 *)row)[e0 / 4 + 1];
            v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        } else {
            const uint4 raw = ((const uint4 *)row)[e0 / 8];
            const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint16_t lo = (uint16_t)(words[i] & 0xffffu), hi = (uint16_t)(words[i] >> 16);
                v[2 * i] = T == SPEC_F16 ? __half2float(__ushort_as_half(lo)) : bf16_to_f32(lo);
                v[2 * i + 1] = T == SPEC_F16 ? __half2float(__ushort_as_half(hi)) : bf16_to_f32(hi);
            }
        }
    }
    static __device__ void load(const cuda_mm_args &a, const uint8_t *wrow, int u, U &w)
    {
        load8(wrow, 8 * u, a.k, a.vec, w.v);
    }
    static __device__ void load_x(const cuda_mm_args &a, int r, int u, X &x)
    {
        load8(a.xq + (size_t)r * a.q_stride, 8 * u, a.k, a.vec, x.v);
    }
    static __device__ float dot(const U &w, const X &x, float acc)
    {
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc = __fmaf_rn(w.v[i], x.v[i], acc);
        return acc;
    }
};

/* ---------------------------------------------------------------------------------------------- */
/* The mat-vec kernel                                                                             */

/* A finished sum v[0] of weight row `row` for activation row t (with SW, v[1] the up row's: the gate
 * times the up row, as swiglu does, and the up row as it is). */
template <bool SW>
static __device__ __forceinline__ void store_sum(const cuda_mm_part &mine, const cuda_mm_part &other, int t, int row,
                                                 const float *v)
{
    if constexpr (SW) {
        mine.y[(size_t)t * mine.y_stride + row] = cuda_silu_mul(v[0], v[1]);
        other.y[(size_t)t * other.y_stride + row] = v[1];
    } else {
        mine.y[(size_t)t * mine.y_stride + row] = v[0];
    }
}

/* Part q of a, without indexing the kernel's parameters at run time. */
static __device__ __forceinline__ cuda_mm_part part_of(const cuda_mm_args &a, int q)
{
    return q == 0 ? a.part[0] : q == 1 ? a.part[1] : a.part[2];
}

/* Every matmul kernel's start: the thread block's part of a (*part) and its index among that part's
 * blocks. The block's weight rows (rows_per_block from its first, clipped to the matrix; with SW
 * swiglu's up rows too) are prefetched into L2 before the kernel waits for the one before it: a
 * step's weights are never written, and their fetch is what the wait would otherwise hold back. */
template <bool SW>
static __device__ __forceinline__ int block_start(const cuda_mm_args &a, int rows_per_block, int *part)
{
    const int p = blockIdx.x >= (unsigned)a.block2 ? 2 : blockIdx.x >= (unsigned)a.block1 ? 1 : 0;
    const int block = (int)blockIdx.x - (p == 2 ? a.block2 : p == 1 ? a.block1 : 0);
    const cuda_mm_part mine = part_of(a, p);
    const int row0 = block * rows_per_block, end = min(row0 + rows_per_block, mine.rows);
    if (a.prefetch && row0 < end) {
        cuda_prefetch_l2(mine.w + (size_t)row0 * mine.w_row_bytes, (size_t)(end - row0) * mine.w_row_bytes);
        if (SW)
            cuda_prefetch_l2(a.part[1].w + (size_t)row0 * a.part[1].w_row_bytes,
                             (size_t)(end - row0) * a.part[1].w_row_bytes);
    }
    cuda_grid_wait();
    *part = p;
    return block;
}

/* The end of a swiglu matmul that converts its output for the next matmul (a.out.q): a thread block's
 * rows_per_block rows lie in one conversion block of part 0's output, and the last thread block of the
 * launch to finish one converts it for every activation row. Every thread of the block calls it. */
static __device__ __forceinline__ void convert_out(const cuda_mm_args &a, int first_row, int rows_per_block)
{
    const int len = a.out.form == Q8_K_FORM ? 256 : 32, b = first_row / len;
    if (!cuda_last_to_arrive(a.out.count + b, len / rows_per_block))
        return;
    const cuda_mm_part &p = a.part[0];
    for (int r = threadIdx.x / CUDA_WARP; r < a.n; r += blockDim.x / CUDA_WARP)
        cuda_convert_out_block(a.out, p.y, p.y_stride, p.rows, r, b, threadIdx.x % CUDA_WARP);
}

/* The end of a one-row matmul with work after it (a.after), by its last thread block to finish, with
 * the code and bits of the kernels it replaces, by a block of THREADS threads: a norm, which adds part
 * 0's output as its residual, and the conversion of its output for the next matmul (rms_norm_quantize);
 * or the rope of the row and its store (rope_store_kernel). Every thread of every block calls it. */
template <int THREADS>
static __device__ __forceinline__ void after_matmul(const cuda_mm_args &a)
{
    __shared__ double part[RMS_THREADS];
    if (!cuda_last_to_arrive(a.after_count, (int)gridDim.x))
        return;
    if (a.after == CUDA_MM_AFTER_ROPE) {
        cuda_rope_row<true>(a.rope, 0, threadIdx.x, THREADS);
        cuda_store_row<true>(a.store, 0, threadIdx.x, THREADS);
        return;
    }
    const int nb = a.norm.ne0 / (a.norm_out.form == Q8_K_FORM ? 256 : 32);
    rms_norm_row<THREADS, true>(a.norm, 0, part, threadIdx.x);
    for (int b = threadIdx.x / CUDA_WARP; b < nb; b += THREADS / CUDA_WARP)
        cuda_convert_out_block(a.norm_out, a.norm.y, a.norm.y_stride, a.norm.ne0, 0, b, threadIdx.x % CUDA_WARP);
}

/* acc[i][r] = the sum over units u0, u0 + stride, ... (in that order, with dot()) of weight row wrow[i]
 * times activation row t0 + r, for r < nt <= T: each unit's weights unpacked once for all the rows,
 * AHEAD units loaded before the first of them is used (more bytes in flight where a lane has many
 * units). */
template <class W, int NR, int AHEAD, int T>
static __device__ __forceinline__ void mmv_units(const cuda_mm_args &a, const uint8_t *const wrow[NR], int t0, int nt,
                                                 int u0, int stride, float acc[NR][T])
{
#pragma unroll
    for (int i = 0; i < NR; i++)
#pragma unroll
        for (int r = 0; r < T; r++)
            acc[i][r] = 0.0f;
    const int n_units = W::units(a.k);
    for (int ub = u0; ub < n_units; ub += AHEAD * stride) {
        typename W::U wu[AHEAD][NR];
#pragma unroll
        for (int s = 0; s < AHEAD; s++)
            if (ub + s * stride < n_units)
#pragma unroll
                for (int i = 0; i < NR; i++)
                    W::load(a, wrow[i], ub + s * stride, wu[s][i]);
#pragma unroll
        for (int s = 0; s < AHEAD; s++) {
            const int u = ub + s * stride;
            if (u >= n_units)
                break;
#pragma unroll
            for (int r = 0; r < T; r++) {
                if (r < nt) {
                    typename W::X xu;
                    W::load_x(a, t0 + r, u, xu);
#pragma unroll
                    for (int i = 0; i < NR; i++)
                        acc[i][r] = W::dot(wu[s][i], xu, acc[i][r]);
                }
            }
        }
    }
}

/* RPW: weight rows per warp, each activation load serving all of them: RPW rows of one part, or with
 * SW (swiglu) RPW/2 rows of part 0 and the same rows of part 1. T: activation rows a pass over the
 * weights (MMV_TILE for batches; 1 for one row, whose accumulators then hold no registers for rows
 * that are not there: more warps fit an SM, and more weight bytes are in flight). AFTER: one row with
 * work after it (after_matmul; a kernel of its own, so that the others keep their registers). */
template <class W, int RPW, bool SW, int T, bool AFTER = false>
__global__ void __launch_bounds__(MMV_THREADS) mmv(const cuda_mm_args a)
{
    static_assert(!AFTER || (!SW && T == 1), "work after a matmul of one row");
    constexpr int per_part = SW ? RPW / 2 : RPW;
    int p;
    const int block = block_start<SW>(a, MMV_WARPS * per_part, &p);
    const int lane = threadIdx.x % CUDA_WARP;
    const int row0 = (block * MMV_WARPS + threadIdx.x / CUDA_WARP) * per_part;
    const cuda_mm_part mine = part_of(a, p), other = a.part[1]; /* other: swiglu's up rows */
    const int rows = mine.rows;
    const uint8_t *wrow[RPW];
#pragma unroll
    for (int i = 0; i < RPW; i++) { /* rows past the end repeat the last one, unused */
        const int row = min(row0 + i % per_part, rows - 1);
        const cuda_mm_part &o = i < per_part ? mine : other;
        wrow[i] = o.w + (size_t)row * o.w_row_bytes;
    }
    for (int t0 = 0; t0 < a.n; t0 += T) {
        const int nt = min(T, a.n - t0);
        float acc[RPW][T];
        mmv_units<W, RPW, 1, T>(a, wrow, t0, nt, lane, CUDA_WARP, acc);
#pragma unroll
        for (int r = 0; r < T; r++) {
            if (r < nt) {
                float v[RPW];
#pragma unroll
                for (int i = 0; i < RPW; i++) {
                    const cuda_mm_part &o = i < per_part ? mine : other;
                    const int row = row0 + i % per_part;
                    v[i] = warp_sum(acc[i][r]);
                    if (o.bias && row < rows)
                        v[i] = v[i] + o.bias[row];
                }
#pragma unroll
                for (int i = 0; i < RPW; i++) {
                    const cuda_mm_part &o = i < per_part ? mine : other;
                    const int row = row0 + i % per_part;
                    if (lane != 0 || row >= rows)
                        continue;
                    float y = v[i];
                    if (SW && i < per_part) /* the gate times the up row, as swiglu does */
                        y = cuda_silu_mul(v[i], v[SW ? i + per_part : i]);
                    o.y[(size_t)(t0 + r) * o.y_stride + row] = y;
                }
            }
        }
    }
    if (SW && a.out.q)
        convert_out(a, block * MMV_WARPS * per_part, MMV_WARPS * per_part);
    if constexpr (AFTER)
        after_matmul<MMV_THREADS>(a);
}

/* A quantised row of more units than a warp has lanes (k past 32 units: w_down's 140 Q4_K units at
 * k = 8960) takes a whole block: lane L of its MMV_THREADS adds units L, L + MMV_THREADS, ... in that
 * order (MMV_WIDE_AHEAD loaded before the first is used), each warp sums its lanes by the butterfly,
 * and the block adds the warps' sums in warp order, then the bias. Such matrices are narrow (w_down's
 * 1536 rows): a warp a row would take 4-5 units a lane one after another, and a batch's 4 rows a warp
 * only 96 blocks, fewer than the GPU's multiprocessors; a block a row gives 1536 blocks of one or two
 * units a lane. The order depends on k alone, so a row's bits are the same in a decode step and in a
 * batch. Activation rows in tiles of MMV_TILE, one row too (rare shapes: no kernels of their own for
 * it), and the work after a one-row matmul (a.after) in the same kernel, which it costs no registers.
 * SW: the block holds the row of both parts. */
template <class W, bool SW>
__global__ void __launch_bounds__(MMV_THREADS) mmv_wide(const cuda_mm_args a)
{
    constexpr int T = MMV_TILE;
    constexpr int NP = SW ? 2 : 1; /* parts whose row the block holds */
    __shared__ float sums[MMV_WARPS][NP][T];
    int p;
    const int row = block_start<SW>(a, 1, &p);
    const int lane = threadIdx.x % CUDA_WARP, warp = threadIdx.x / CUDA_WARP;
    const cuda_mm_part mine = part_of(a, p), other = a.part[1]; /* other: swiglu's up row */
    const uint8_t *wrow[NP];
#pragma unroll
    for (int q = 0; q < NP; q++)
        wrow[q] = (q == 0 ? mine : other).w + (size_t)row * (q == 0 ? mine : other).w_row_bytes;
    for (int t0 = 0; t0 < a.n; t0 += T) {
        const int nt = min(T, a.n - t0);
        float acc[NP][T];
        mmv_units<W, NP, MMV_WIDE_AHEAD, T>(a, wrow, t0, nt, (int)threadIdx.x, MMV_THREADS, acc);
#pragma unroll
        for (int q = 0; q < NP; q++)
#pragma unroll
            for (int r = 0; r < T; r++) {
                if (r >= nt) /* the same for the whole block */
                    break;
                const float v = warp_sum(acc[q][r]);
                if (lane == 0)
                    sums[warp][q][r] = v;
            }
        __syncthreads();
        const int r = (int)threadIdx.x;
        if (r < nt) { /* thread r finishes activation row t0 + r */
            float v[NP];
#pragma unroll
            for (int q = 0; q < NP; q++) {
                const cuda_mm_part &o = q == 0 ? mine : other;
                float y = sums[0][q][r];
                for (int w = 1; w < MMV_WARPS; w++)
                    y = y + sums[w][q][r];
                v[q] = o.bias ? y + o.bias[row] : y;
            }
            store_sum<SW>(mine, other, t0 + r, row, v);
        }
        __syncthreads(); /* sums are written again for the next tile */
    }
    if (SW && a.out.q)
        convert_out(a, row, 1);
    if (!SW && a.after != CUDA_MM_AFTER_NONE)
        after_matmul<MMV_THREADS>(a);
}

/* ---------------------------------------------------------------------------------------------- */
/* The mat-vec kernel in mmq's order                                                              */

#define MMO_LANES 8 /* lanes a weight row: lane w adds units w, w + 8, ... as mmq's warp w does */
#define MMO_ROWS (MMV_WARPS * CUDA_WARP / MMO_LANES) /* weight rows a block (each of both parts with SW) */
/* Units a lane loads before using the first: w_down's 140 units a row (k = 8960) are 17-18 a lane, and
 * its 1536 rows only 12,288 lanes, each of which would otherwise wait for one unit at a time. (A swiglu
 * pair, with both parts' units in registers, loads one at a time: gate|up has rows enough.) */
#define MMO_AHEAD 4

/* dp4a with mmq's order of float operations: lane w of a row's 8 adds the units w, w + 8, ... in that
 * order, each with mmv's dot() (the same operations as mmq's mma_acc() on the same unit), and the 8
 * sums are added in lane order, then the bias, as mmq adds its warps' sums: the bits of mmq, so that
 * with tensor cores one activation row (a decode step) need not pay for a whole mma tile. With SW each
 * lane holds the same row of both parts. */
template <class W, bool SW, bool AFTER = false>
__global__ void __launch_bounds__(MMV_THREADS) mmv_ordered(const cuda_mm_args a)
{
    static_assert(!AFTER || !SW, "work after a matmul without swiglu");
    constexpr int NW = SW ? 2 : 1;
    int p;
    const int block = block_start<SW>(a, MMO_ROWS, &p);
    const int lane = threadIdx.x % CUDA_WARP, w = lane % MMO_LANES, first = lane - w;
    const int row = block * MMO_ROWS + (int)threadIdx.x / MMO_LANES;
    const cuda_mm_part mine = part_of(a, p), other = a.part[1];
    const int rows = mine.rows;
    const uint8_t *wrow[NW]; /* a row past the end repeats the last one, unused */
#pragma unroll
    for (int q = 0; q < NW; q++) {
        const cuda_mm_part &o = q == 0 ? mine : other;
        wrow[q] = o.w + (size_t)min(row, rows - 1) * o.w_row_bytes;
    }
    for (int t = 0; t < a.n; t++) { /* a row a pass: it serves decode steps (launch_quantised) */
        float acc[NW][1];
        mmv_units<W, NW, SW ? 1 : MMO_AHEAD, 1>(a, wrow, t, 1, w, MMO_LANES, acc);
        float v[NW];
#pragma unroll
        for (int q = 0; q < NW; q++) {
            const cuda_mm_part &o = q == 0 ? mine : other;
            float y = __shfl_sync(CUDA_FULL_MASK, acc[q][0], first);
            for (int j = 1; j < MMO_LANES; j++)
                y = y + __shfl_sync(CUDA_FULL_MASK, acc[q][0], first + j);
            v[q] = o.bias && row < rows ? y + o.bias[row] : y;
        }
        if (w != 0 || row >= rows)
            continue;
        store_sum<SW>(mine, other, t, row, v);
    }
    if (SW && a.out.q)
        convert_out(a, block * MMO_ROWS, MMO_ROWS);
    if constexpr (AFTER)
        after_matmul<MMV_THREADS>(a);
}

/* ---------------------------------------------------------------------------------------------- */
/* The tensor-core kernel (int8 mma)                                                              */

#define MMQ_ROWS 16  /* weight rows of a block: the mma's M */
#define MMQ_WARPS 8  /* warps of a block, on the same rows: warp w adds units w, w + 8, ... */
#define MMQ_TILES 4  /* 8-row tiles of activations (the mma's N) per pass over the weights */
#define MMQ_THREADS (MMQ_WARPS * CUDA_WARP)

/* Each warp multiplies 16 weight rows by up to 4 tiles of 8 activation rows, unit by unit (its units
 * of the row: w, w + 8, ...), into one float accumulator per (weight row, activation row) pair; the
 * block then adds the 8 warps' sums in warp order, and the bias. Every pair's operations are fixed by
 * k alone: an activation row gets the same bits whatever else shares its tile or the call (rows past
 * n repeat the last one, and their results are dropped). With SW, each warp also multiplies the same
 * rows of part 1 (swiglu's up). */
template <class W, bool SW>
__global__ void __launch_bounds__(MMQ_THREADS) mmq(const cuda_mm_args a)
{
    constexpr int NW = SW ? 2 : 1; /* weight matrices a warp multiplies */
    __shared__ float sums[MMQ_WARPS][NW][MMQ_TILES][4][CUDA_WARP];
    int p;
    const int row0 = block_start<SW>(a, MMQ_ROWS, &p) * MMQ_ROWS;
    const int lane = threadIdx.x % CUDA_WARP, warp = threadIdx.x / CUDA_WARP, g = lane / 4, t = lane % 4;
    const cuda_mm_part mine = part_of(a, p), other = a.part[1];
    const int rows = mine.rows;
    const uint8_t *w[NW][2]; /* rows g and g + 8; rows past the end repeat the last one, unused */
#pragma unroll
    for (int q = 0; q < NW; q++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const cuda_mm_part &o = q == 0 ? mine : other;
            w[q][h] = o.w + (size_t)min(row0 + g + 8 * h, rows - 1) * o.w_row_bytes;
        }
    const int n_units = W::units(a.k);
    for (int t0 = 0; t0 < a.n; t0 += 8 * MMQ_TILES) {
        const int tiles = min(MMQ_TILES, (a.n - t0 + 7) / 8);
        float acc[NW][MMQ_TILES][4] = {};
        /* two units at a time, both loaded before either is multiplied: more bytes in flight */
        for (int u = warp; u < n_units; u += 2 * MMQ_WARPS) {
            const int here = u + MMQ_WARPS < n_units ? 2 : 1;
            typename W::A wa[2][NW];
#pragma unroll
            for (int s = 0; s < 2; s++)
                if (s < here)
#pragma unroll
                    for (int q = 0; q < NW; q++)
                        W::load_a(a, w[q][0], w[q][1], u + s * MMQ_WARPS, t, wa[s][q]);
#pragma unroll
            for (int s = 0; s < 2; s++)
#pragma unroll
                for (int i = 0; i < MMQ_TILES; i++) {
                    if (s < here && i < tiles) {
                        const int r0 = t0 + 8 * i, us = u + s * MMQ_WARPS;
                        typename W::B xb;
                        W::load_b(a, min(r0 + g, a.n - 1), us, t, xb);
                        typename W::XS xs[2];
                        W::load_xs(a, min(r0 + 2 * t, a.n - 1), us, xs[0]);
                        W::load_xs(a, min(r0 + 2 * t + 1, a.n - 1), us, xs[1]);
#pragma unroll
                        for (int q = 0; q < NW; q++)
                            W::mma_acc(wa[s][q], xb, xs, acc[q][i]);
                    }
                }
        }
#pragma unroll
        for (int q = 0; q < NW; q++)
#pragma unroll
            for (int i = 0; i < MMQ_TILES; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    sums[warp][q][i][j][lane] = acc[q][i][j];
        __syncthreads();
        for (int e = threadIdx.x; e < MMQ_TILES * 4 * CUDA_WARP; e += MMQ_THREADS) {
            const int i = e / (4 * CUDA_WARP), j = e / CUDA_WARP % 4, l = e % CUDA_WARP;
            const int row = row0 + l / 4 + 8 * (j / 2), r = t0 + 8 * i + 2 * (l % 4) + j % 2;
            if (i >= tiles || row >= rows || r >= a.n)
                continue;
            float v[NW];
#pragma unroll
            for (int q = 0; q < NW; q++) {
                const cuda_mm_part &o = q == 0 ? mine : other;
                float y = sums[0][q][i][j][l];
                for (int ww = 1; ww < MMQ_WARPS; ww++)
                    y = y + sums[ww][q][i][j][l];
                v[q] = o.bias ? y + o.bias[row] : y;
            }
            store_sum<SW>(mine, other, r, row, v);
        }
        __syncthreads(); /* sums is written again by the next pass */
    }
    if (SW && a.out.q)
        convert_out(a, row0, MMQ_ROWS);
}

/* ---------------------------------------------------------------------------------------------- */
/* Host side                                                                                      */

bool cuda_weight_type_ok(enum spec_dtype t)
{
    switch (t) {
    case SPEC_F32:
    case SPEC_F16:
    case SPEC_BF16:
    case SPEC_Q4_0:
    case SPEC_Q4_1:
    case SPEC_Q5_0:
    case SPEC_Q8_0:
    case SPEC_Q4_K:
    case SPEC_Q6_K:
        return true;
    default:
        return false;
    }
}

static bool aligned16(const void *p, size_t stride_bytes)
{
    return (uintptr_t)p % 16 == 0 && stride_bytes % 16 == 0;
}

/* Each part's rows take whole thread blocks of their own, rows_per_block each: sets a's first blocks
 * of parts 1 and 2 and returns the number of blocks (with swiglu, part 0's: part 1 rides along). */
static unsigned part_blocks(cuda_mm_args &a, int rows_per_block)
{
    int blocks[CUDA_MM_PARTS] = {0, 0, 0};
    for (int p = 0; p < (a.swiglu ? 1 : a.n_parts); p++)
        blocks[p] = (a.part[p].rows + rows_per_block - 1) / rows_per_block;
    a.block1 = blocks[0];
    a.block2 = blocks[0] + blocks[1];
    return (unsigned)(a.block2 + blocks[2]);
}

typedef void (*mm_kernel)(const cuda_mm_args);

/* One launch for every part, rows_per_block rows of a part (with a swiglu, of both) a block of
 * `threads`: the kernel with the swiglu, the one with work after it (NULL: none for this shape), or
 * the plain one. */
static cudaError_t launch_parts(cudaStream_t st, cuda_mm_args a, int rows_per_block, unsigned threads,
                                mm_kernel with_swiglu, mm_kernel with_after, mm_kernel plain)
{
    const mm_kernel k = a.swiglu ? with_swiglu : a.after != CUDA_MM_AFTER_NONE ? with_after : plain;
    if (!k)
        return cudaErrorInvalidValue;
    const unsigned blocks = part_blocks(a, rows_per_block);
    CUDA_LAUNCH(blocks, threads, st, *k)(a);
    return cudaGetLastError();
}

/* Whether W is a float type (whose matmuls never wait for anything: cuda_matmul). */
template <class W>
constexpr bool float_weights = false;
template <enum spec_dtype T>
constexpr bool float_weights<w_float<T> > = true;

template <class W, int RPW, int T>
static cudaError_t launch_mmv_rpw(cudaStream_t st, const cuda_mm_args &a)
{
    mm_kernel with_after = NULL;
    if constexpr (T == 1 && !float_weights<W>)
        with_after = mmv<W, RPW, false, T, true>;
    return launch_parts(st, a, MMV_WARPS * (a.swiglu ? RPW / 2 : RPW), MMV_THREADS, mmv<W, RPW, true, T>,
                        with_after, mmv<W, RPW, false, T>);
}

template <class W>
static cudaError_t launch_mmv_ordered(cudaStream_t st, const cuda_mm_args &a)
{
    return launch_parts(st, a, MMO_ROWS, MMV_THREADS, mmv_ordered<W, true>, mmv_ordered<W, false, true>,
                        mmv_ordered<W, false>);
}

template <class W>
static cudaError_t launch_mmq(cudaStream_t st, const cuda_mm_args &a)
{
    return launch_parts(st, a, MMQ_ROWS, MMQ_THREADS, mmq<W, true>, NULL, mmq<W, false>);
}

/* Batches take 4 weight rows a warp (each activation load serves 4 rows: a verification pass of 8
 * positions 1.52x -> 1.45x a decode step on an H200) and tiles of MMV_TILE rows; one row takes 2 (4
 * was no faster there) and a tile of one. The choice changes no result: each (weight row, activation
 * row) pair is summed the same way. */
static int mmv_rows_per_warp(int n)
{
    return n > 1 ? 4 : 2;
}

/* A block a row (mmv_wide): one row of a block tiles any conversion block (output_conversion). */
template <class W>
static cudaError_t launch_mmv_wide(cudaStream_t st, const cuda_mm_args &a)
{
    return launch_parts(st, a, 1, MMV_THREADS, mmv_wide<W, true>, mmv_wide<W, false>, mmv_wide<W, false>);
}

template <class W>
static cudaError_t launch_mmv(cudaStream_t st, const cuda_mm_args &a)
{
    if constexpr (!float_weights<W>)
        if (cuda_wide_rows && W::units(a.k) > CUDA_WARP)
            return launch_mmv_wide<W>(st, a);
    return mmv_rows_per_warp(a.n) == 4 ? launch_mmv_rpw<W, 4, MMV_TILE>(st, a) : launch_mmv_rpw<W, 2, 1>(st, a);
}

/* A quantised type's kernel. dp4a (mmv) for every batch size, or with tensor cores mmq's order for
 * every batch size: mmq, and for one activation row (a decode step, where an mma would use one of its
 * 8 columns) mmv_ordered, which gives mmq's bits. mmv and mmq add a row's units in orders of their
 * own, so a model's steps never mix the two. */
template <class W>
static cudaError_t launch_quantised(cudaStream_t st, const cuda_mm_args &a, bool tensor_cores)
{
    if (!tensor_cores)
        return launch_mmv<W>(st, a);
    return a.n == 1 ? launch_mmv_ordered<W>(st, a) : launch_mmq<W>(st, a);
}

/* The activation type a weight type multiplies with (its conversion's name in cuda_act.form). */
static enum spec_dtype act_form(enum spec_dtype wtype)
{
    switch (wtype) {
    case SPEC_Q4_1:
        return SPEC_Q8_1;
    case SPEC_Q4_K:
    case SPEC_Q6_K:
        return SPEC_Q8_K;
    case SPEC_F16:
    case SPEC_BF16:
        return wtype;
    default:
        return SPEC_Q8_0;
    }
}

/* act's buffer now holds the conversion of x (n rows of k values, x_stride apart) to `form`. */
static void act_holds(struct cuda_act *act, const float *x, size_t x_stride, int k, int n, enum spec_dtype form)
{
    act->x = x;
    act->x_stride = x_stride;
    act->k = k;
    act->n = n;
    act->form = form;
    act->valid = true;
}

/* Makes act hold x in `form`, `bytes` long: kept from the last matmul when it converted the same
 * rows the same way (nothing has written device memory since: cuda_act_forget), else converted by
 * `convert` (which enqueues the conversion into act->buf.p). */
template <class F>
static cudaError_t convert_act(cudaStream_t st, struct cuda_act *act, enum spec_dtype form, const float *x,
                               size_t x_stride, int k, int n, size_t bytes, F convert)
{
    if (act->valid && act->form == form && act->x == x && act->x_stride == x_stride && act->k == k && act->n == n)
        return cudaSuccess;
    act->valid = false;
    cudaError_t err = cuda_buf_reserve(st, &act->buf, bytes);
    if (err == cudaSuccess) {
        convert();
        err = cudaGetLastError();
    }
    if (err != cudaSuccess)
        return err;
    act_holds(act, x, x_stride, k, n, form);
    return cudaSuccess;
}

/* The conversion of rows that a waiting norm writes: in the norm's launch (nm not NULL) or alone. */
template <q8_form F>
static void launch_quantize(cudaStream_t st, const cuda_norm *nm, const float *x, size_t x_stride, int k, int n,
                            size_t nb, int8_t *q, float *d, float *s, int *sum16)
{
    const unsigned warps_per_block = MMV_THREADS / CUDA_WARP;
    if (nm)
        CUDA_LAUNCH((unsigned)(n < 65535 ? n : 65535), RMS_THREADS, st, rms_norm_quantize<F>)(*nm, q, d, s, sum16);
    else
        CUDA_LAUNCH((unsigned)((nb + warps_per_block - 1) / warps_per_block), MMV_THREADS, st, quantize_rows<F>)(
            x, x_stride, k, n, q, d, s, sum16);
}

static cudaError_t launch_by_type(cudaStream_t st, enum spec_dtype wtype, const cuda_mm_args &a, bool tensor_cores);

cudaError_t cuda_act_flush(cudaStream_t st, struct cuda_act *act)
{
    if (act->mm_pending) { /* with the rope and store waiting after it, or before the norm waiting */
        act->mm_pending = false;
        cuda_mm_args &mm = act->mm;
        cudaError_t err = cudaSuccess;
        if (act->rope_pending && act->stores.n <= 1 &&
            (err = cuda_reserve_counters(st, &act->count, sizeof(int))) == cudaSuccess) {
            act->rope_pending = false;
            mm.after = CUDA_MM_AFTER_ROPE;
            mm.after_count = (int *)act->count.p;
            mm.rope = act->rope;
            mm.store = act->stores.n ? act->stores.s[0] : cuda_store{};
        }
        if (err != cudaSuccess || (err = launch_by_type(st, act->mm_wtype, mm, act->mm_tensor_cores)) != cudaSuccess)
            return err;
    }
    if (act->rope_pending) {
        act->rope_pending = false;
        return act->stores.n ? cuda_rope_store(st, &act->rope, &act->stores) : cuda_rope_rows(st, &act->rope);
    }
    if (act->attn_pending) {
        act->attn_pending = false;
        return cuda_attention(st, act, &act->attn);
    }
    if (!act->norm_pending)
        return cudaSuccess;
    act->norm_pending = false;
    return cuda_rms_norm(st, &act->norm);
}

/* How a conversion of n rows of k values to a Q8 form lies in its buffer: the quantised values, the
 * scales, for Q8_1 the sums d * sum(q), the 16-value group sums, each part 256-byte aligned. */
struct q8_layout {
    size_t nb; /* conversion blocks, all rows */
    size_t q_bytes, d_bytes, s_bytes, sum_bytes;
};

static q8_layout q8_layout_of(enum spec_dtype form, int k, int n)
{
    const size_t nb = (size_t)n * (size_t)(k / (form == SPEC_Q8_K ? 256 : 32)),
                 d_bytes = cuda_align256(nb * sizeof(float));
    return q8_layout{nb, cuda_align256((size_t)n * k), d_bytes, form == SPEC_Q8_1 ? d_bytes : 0,
                     cuda_align256((size_t)n * (k / 16) * sizeof(int))};
}

/* Converts x to the activation type of a quantised weight type into act and fills a's x fields; when
 * x is the output of the norm waiting in act, the norm runs in the same launch, or in the last block
 * of the matmul waiting with it (which converts x there). */
static cudaError_t quantize_act(cudaStream_t st, struct cuda_act *act, enum spec_dtype wtype, int k, const float *x,
                                size_t x_stride, int n, cuda_mm_args &a)
{
    const enum spec_dtype form = act_form(wtype);
    const bool q8_K = form == SPEC_Q8_K, q8_1 = form == SPEC_Q8_1;
    const q8_layout l = q8_layout_of(form, k, n);
    const size_t nb = l.nb, q_bytes = l.q_bytes, d_bytes = l.d_bytes, s_bytes = l.s_bytes, sum_bytes = l.sum_bytes;
    const cuda_norm *nm = act->norm_pending && act->norm.y == x && act->norm.y_stride == x_stride &&
                                  act->norm.ne0 == k && act->norm.rows == n
                              ? &act->norm
                              : NULL;
    cudaError_t err = nm ? cudaSuccess : cuda_act_flush(st, act);
    if (err == cudaSuccess && nm && act->mm_pending) { /* the matmul before the norm runs it, and converts */
        cuda_mm_args &mm = act->mm;
        act->mm_pending = act->norm_pending = false;
        err = cuda_act_out_prepare(st, act, form, k, n, 1, &mm.norm_out);
        if (err == cudaSuccess) {
            mm.after = CUDA_MM_AFTER_NORM;
            mm.after_count = mm.norm_out.count;
            mm.norm = *nm;
            err = launch_by_type(st, act->mm_wtype, mm, act->mm_tensor_cores);
        }
        if (err == cudaSuccess)
            cuda_act_out_keep(act, x, x_stride, k, n, form);
    }
    if (err != cudaSuccess)
        return err;
    err = convert_act(st, act, form, x, x_stride, k, n, q_bytes + d_bytes + s_bytes + sum_bytes, [&] {
        uint8_t *base = (uint8_t *)act->buf.p;
        int8_t *q = (int8_t *)base;
        float *d = (float *)(base + q_bytes), *s = q8_1 ? (float *)(base + q_bytes + d_bytes) : NULL;
        int *sum16 = (int *)(base + q_bytes + d_bytes + s_bytes);
        if (q8_K)
            launch_quantize<Q8_K_FORM>(st, nm, x, x_stride, k, n, nb, q, d, s, sum16);
        else if (q8_1)
            launch_quantize<Q8_1_FORM>(st, nm, x, x_stride, k, n, nb, q, d, s, sum16);
        else
            launch_quantize<Q8_0_FORM>(st, nm, x, x_stride, k, n, nb, q, d, s, sum16);
        act->norm_pending = false;
    });
    if (err != cudaSuccess)
        return err;
    const uint8_t *base = (const uint8_t *)act->buf.p;
    a.xq = base;
    a.q_stride = (size_t)k;
    a.xd = (const float *)(base + q_bytes);
    a.xs = q8_1 ? (const float *)(base + q_bytes + d_bytes) : NULL;
    a.xsum = (const int *)(base + q_bytes + d_bytes + s_bytes);
    return cudaSuccess;
}

int cuda_q8_block_len(enum spec_dtype form)
{
    return form == SPEC_Q8_K ? 256 : form == SPEC_Q8_0 || form == SPEC_Q8_1 ? 32 : 0;
}

cudaError_t cuda_act_out_prepare(cudaStream_t st, struct cuda_act *act, enum spec_dtype form, int k, int n,
                                 size_t counters, struct cuda_q8_out *out)
{
    const q8_layout l = q8_layout_of(form, k, n);
    cudaError_t err = cuda_buf_reserve(st, &act->next, l.q_bytes + l.d_bytes + l.s_bytes + l.sum_bytes);
    if (err == cudaSuccess)
        err = cuda_reserve_counters(st, &act->count, counters * sizeof(int));
    if (err != cudaSuccess)
        return err;
    uint8_t *base = (uint8_t *)act->next.p;
    out->q = (int8_t *)base;
    out->d = (float *)(base + l.q_bytes);
    out->s = form == SPEC_Q8_1 ? (float *)(base + l.q_bytes + l.d_bytes) : NULL;
    out->sum16 = (int *)(base + l.q_bytes + l.d_bytes + l.s_bytes);
    out->count = (int *)act->count.p;
    out->form = form == SPEC_Q8_K ? Q8_K_FORM : form == SPEC_Q8_1 ? Q8_1_FORM : Q8_0_FORM;
    return cudaSuccess;
}

void cuda_act_out_keep(struct cuda_act *act, const float *y, size_t y_stride, int k, int n, enum spec_dtype form)
{
    const struct cuda_buf made = act->next;
    act->next = act->buf;
    act->buf = made;
    act->swaps++;
    act_holds(act, y, y_stride, k, n, form);
}

/* With a swiglu: makes a's kernel convert part 0's output for the next matmul (in the form of its own
 * weight type), when the rows of its thread blocks tile the conversion blocks. */
static cudaError_t output_conversion(cudaStream_t st, struct cuda_act *act, enum spec_dtype wtype, bool tensor_cores,
                                     cuda_mm_args &a)
{
    const enum spec_dtype form = act_form(wtype);
    const int rows = a.part[0].rows, len = cuda_q8_block_len(form),
              rows_per_block = !tensor_cores ? MMV_WARPS * mmv_rows_per_warp(a.n) / 2
                               : a.n == 1   ? MMO_ROWS
                                            : MMQ_ROWS;
    if (rows % len || len % rows_per_block)
        return cudaSuccess;
    return cuda_act_out_prepare(st, act, form, rows, a.n, (size_t)(rows / len), &a.out);
}

cudaError_t cuda_matmul(cudaStream_t st, struct cuda_act *act, enum spec_dtype wtype, int k, const float *x,
                        size_t x_stride, int n, const struct cuda_mm_part *parts, int n_parts, bool swiglu,
                        bool tensor_cores)
{
    cuda_mm_args a = {};
    bool w_aligned = true;
    for (int p = 0; p < n_parts; p++) {
        a.part[p] = parts[p];
        w_aligned = w_aligned && aligned16(parts[p].w, parts[p].w_row_bytes);
    }
    a.n_parts = n_parts;
    a.swiglu = swiglu;
    a.prefetch = cuda_prefetch_weights;
    a.k = k;
    a.n = n;
    const bool quantised = wtype != SPEC_F32 && wtype != SPEC_F16 && wtype != SPEC_BF16;
    cudaError_t err = quantised ? cudaSuccess : cuda_act_flush(st, act); /* quantize_act may fuse it */
    if (err != cudaSuccess)
        return err;
    switch (wtype) {
    case SPEC_F32:
        a.xq = (const uint8_t *)x;
        a.q_stride = x_stride * sizeof(float);
        a.vec = k % 8 == 0 && w_aligned && aligned16(x, a.q_stride);
        return launch_mmv<w_float<SPEC_F32> >(st, a);
    case SPEC_F16:
    case SPEC_BF16: {
        const int64_t total = (int64_t)n * k;
        const unsigned blocks = cuda_elt_blocks(total);
        err = convert_act(st, act, wtype, x, x_stride, k, n, (size_t)total * sizeof(uint16_t), [&] {
            uint16_t *out = (uint16_t *)act->buf.p;
            if (wtype == SPEC_BF16)
                CUDA_LAUNCH(blocks, CUDA_ELT_THREADS, st, convert_rows<true>)(x, x_stride, k, n, out);
            else
                CUDA_LAUNCH(blocks, CUDA_ELT_THREADS, st, convert_rows<false>)(x, x_stride, k, n, out);
        });
        if (err != cudaSuccess)
            return err;
        a.xq = (const uint8_t *)act->buf.p;
        a.q_stride = (size_t)k * sizeof(uint16_t);
        a.vec = k % 8 == 0 && w_aligned && aligned16(a.xq, a.q_stride);
        return wtype == SPEC_F16 ? launch_mmv<w_float<SPEC_F16> >(st, a) : launch_mmv<w_float<SPEC_BF16> >(st, a);
    }
    default:
        break;
    }
    if ((err = quantize_act(st, act, wtype, k, x, x_stride, n, a)) != cudaSuccess ||
        (swiglu && (err = output_conversion(st, act, wtype, tensor_cores, a)) != cudaSuccess))
        return err;
    if (cuda_after_matmul && n == 1 && !swiglu) { /* waits for a norm, or a rope (cuda_act) */
        act->mm = a;
        act->mm_wtype = wtype;
        act->mm_tensor_cores = tensor_cores;
        act->mm_pending = true;
        return cudaSuccess;
    }
    err = launch_by_type(st, wtype, a, tensor_cores);
    if (err == cudaSuccess && a.out.q) /* the output's conversion is kept in place of the input's */
        cuda_act_out_keep(act, a.part[0].y, a.part[0].y_stride, a.part[0].rows, n, act_form(wtype));
    return err;
}

static cudaError_t launch_by_type(cudaStream_t st, enum spec_dtype wtype, const cuda_mm_args &a, bool tensor_cores)
{
    switch (wtype) {
    case SPEC_Q4_0:
        return launch_quantised<w_q4_0>(st, a, tensor_cores);
    case SPEC_Q4_1:
        return launch_quantised<w_q4_1>(st, a, tensor_cores);
    case SPEC_Q5_0:
        return launch_quantised<w_q5_0>(st, a, tensor_cores);
    case SPEC_Q8_0:
        return launch_quantised<w_q8_0>(st, a, tensor_cores);
    case SPEC_Q4_K:
        return launch_quantised<w_q4_K>(st, a, tensor_cores);
    case SPEC_Q6_K:
        return launch_quantised<w_q6_K>(st, a, tensor_cores);
    default:
        return cudaErrorInvalidValue;
    }
}
