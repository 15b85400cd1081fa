/* CPU-internal kernels: ggml's block layouts, the vector dot products, the thread pool and the matmul.
 * Only kernels/ includes this header; everything else goes through kernels/backend.h. */
#ifndef SPECD_KERNELS_CPU_CPU_H
#define SPECD_KERNELS_CPU_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/backend.h"

/* ---------------------------------------------------------------------------------------------- */
/* Block layouts, byte for byte as in ggml-common.h (fp16 fields are raw uint16_t bits).            */

#define CPU_QK 32    /* elements per block of the legacy quants and Q8_0/Q8_1 */
#define CPU_QK_K 256 /* elements per K-quant super-block */

struct cpu_block_q4_0 {
    uint16_t d;
    uint8_t qs[CPU_QK / 2]; /* element j in the low nibble of qs[j], element j+16 in the high nibble */
};

struct cpu_block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[CPU_QK / 2];
};

struct cpu_block_q5_0 {
    uint16_t d;
    uint8_t qh[4]; /* fifth bit of element j is bit j of this little-endian word */
    uint8_t qs[CPU_QK / 2];
};

struct cpu_block_q8_0 {
    uint16_t d;
    int8_t qs[CPU_QK];
};

struct cpu_block_q8_1 {
    uint16_t d;
    uint16_t s; /* d * sum(qs) */
    int8_t qs[CPU_QK];
};

struct cpu_block_q4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12]; /* 8 six-bit scales and 8 six-bit mins, packed */
    uint8_t qs[CPU_QK_K / 2];
};

struct cpu_block_q6_K {
    uint8_t ql[CPU_QK_K / 2];
    uint8_t qh[CPU_QK_K / 4];
    int8_t scales[CPU_QK_K / 16];
    uint16_t d;
};

struct cpu_block_q8_K {
    float d;
    int8_t qs[CPU_QK_K];
    int16_t bsums[CPU_QK_K / 16]; /* sums of qs in groups of 16, for the K-quant mins */
};

_Static_assert(sizeof(struct cpu_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(struct cpu_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(struct cpu_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(struct cpu_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(struct cpu_block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(struct cpu_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(struct cpu_block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(struct cpu_block_q8_K) == 292, "q8_K layout");

/* Inline fp16 -> fp32 for the kernels' block scales (kern_fp16_to_fp32 is the same function). Exact for
 * every input; a NaN comes out quiet with its payload, as F16C's vcvtph2ps does. */
static inline float cpu_fp16_to_fp32(uint16_t h)
{
    uint32_t bits = (uint32_t)(h & 0x7fff) << 13;
    uint32_t exp = bits & (0x1fu << 23);
    float f;
    bits += (127 - 15) << 23;
    if (exp == (0x1fu << 23)) {
        bits += (128 - 16) << 23; /* Inf/NaN: all-ones exponent */
        if (bits & 0x7fffff)
            bits |= 0x400000;
    } else if (exp == 0) {
        /* subnormal or zero: renormalise with an exact float subtraction */
        const uint32_t magic_bits = 113u << 23;
        float magic;
        bits += 1u << 23;
        memcpy(&f, &bits, sizeof(f));
        memcpy(&magic, &magic_bits, sizeof(magic));
        f -= magic;
        memcpy(&bits, &f, sizeof(bits));
    }
    bits |= (uint32_t)(h & 0x8000) << 16;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* ---------------------------------------------------------------------------------------------- */
/* Vector dot products                                                                             */

/* Instruction sets with their own kernels. Every kernel of one type gives bit-identical results on
 * every ISA: the SIMD code fixes the order of its float operations and the scalar code mirrors it. */
enum cpu_isa {
    CPU_ISA_SCALAR = 0,
    CPU_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    CPU_ISA_AVX512 = 2, /* the AVX2 set + AVX-512 F/BW/VL: a wider Q6_K kernel, AVX2 for the rest */
    CPU_ISA_AMX = 3,    /* the AVX-512 set + AMX-TILE/INT8, granted by the kernel: tile kernels for batches */
    CPU_ISA_COUNT
};

/* "scalar", "avx2", "avx512", "amx"; NULL for a value outside the enum. */
const char *cpu_isa_name(enum cpu_isa isa);
/* The ISA the matmul uses: the best one this CPU has, unless SPECD_CPU_ISA names another one this
 * CPU has (by cpu_isa_name) or cpu_isa_set() chose another. */
enum cpu_isa cpu_isa_active(void);
/* Tests: pin an ISA for later calls (not while a matmul runs). SPEC_E_UNSUPPORTED if the CPU lacks it. */
int cpu_isa_set(enum cpu_isa isa);
bool cpu_isa_available(enum cpu_isa isa);

/* The type a weight type's activations are converted to before the dot product, as in ggml
 * (F32->F32, F16->F16, BF16->BF16, Q4_0/Q5_0/Q8_0->Q8_0, Q4_1->Q8_1, Q4_K/Q6_K->Q8_K).
 * SPEC_DTYPE_COUNT for a type without kernels. */
enum spec_dtype cpu_vec_dot_type(enum spec_dtype wtype);

/* Convert one F32 row of k elements (a multiple of the block size) to a vec_dot type. Same bytes as
 * kern_quantize_row() on every ISA. */
typedef void (*cpu_from_float_fn)(const float *x, void *dst, int64_t k);

/* Activation rows as the dot kernels take them: the vec_dot type's row, then, for Q8_0 and Q8_1 only,
 * at the next 32-byte boundary the fp32 value of every block's d (Q8_1: d and s, interleaved), so that
 * the SIMD kernels need not convert an fp16 scale per block and row. cpu_act_row_bytes() gives the
 * size of such a row (a multiple of 32 bytes for the quantised types); cpu_act_fill_scales() writes
 * the fp32 scales of blocks [b0, b1) of a row whose blocks are already converted. */
int cpu_act_row_bytes(enum spec_dtype vtype, int64_t k, size_t *out);
void cpu_act_fill_scales(enum spec_dtype vtype, void *row, int64_t k, int64_t b0, int64_t b1);

/* Byte offset of the fp32 scales in a Q8_0 or Q8_1 activation row of k elements. */
static inline size_t cpu_act_scales_offset(enum spec_dtype vtype, int64_t k)
{
    const size_t block = vtype == SPEC_Q8_1 ? sizeof(struct cpu_block_q8_1) : sizeof(struct cpu_block_q8_0);
    return ((size_t)(k / CPU_QK) * block + 31) & ~(size_t)31;
}

/* y[r * y_stride] = dot(w, x_r) for r < nx, where w is one weight row of k elements and x_r, the
 * r-th activation row (in the form above), starts x_stride bytes after x_(r-1). The weight row is
 * decoded once for all nx rows; each result is the same whatever nx is. */
typedef void (*cpu_dot_fn)(int64_t k, const void *w, const void *x, size_t x_stride, int nx, float *y,
                           size_t y_stride);

/* Kernels of one ISA (the scalar one where that ISA has no special kernel); NULL when the ISA is not
 * available or the type has no kernel (not a cpu type, or not a vec_dot type). */
cpu_dot_fn cpu_dot_kernel(enum spec_dtype wtype, enum cpu_isa isa);
cpu_from_float_fn cpu_from_float_kernel(enum spec_dtype vtype, enum cpu_isa isa);

/* y[r * y_stride + j] = dot(w row j, x_r) for the CPU_TILE_ROWS weight rows j, w_row_bytes apart, and
 * the nx (1..CPU_TILE_MAX_BATCH) activation rows r, in the form above. Bit-identical to the dot
 * kernels. Above CPU_TILE_ROWS activation rows the kernel reads whole tiles of 16: x must then hold
 * nx rounded up to a multiple of 16 rows (the extra rows' results are dropped). */
#define CPU_TILE_ROWS 16
#define CPU_TILE_MAX_BATCH 64
typedef void (*cpu_tile_fn)(int64_t k, const void *w, size_t w_row_bytes, const void *x, size_t x_stride, int nx,
                            float *y, size_t y_stride);

/* The tile kernel of an ISA for a weight type and a batch of n activation rows; NULL when the ISA
 * has none for the type (every ISA below AMX), is not available, or the dot kernel is the faster
 * one for n rows. */
cpu_tile_fn cpu_tile_kernel(enum spec_dtype wtype, enum cpu_isa isa, int64_t n);

/* The AVX2 tables (quants_avx2.c); call only when cpu_isa_available(CPU_ISA_AVX2). NULL where the
 * scalar kernel serves. */
cpu_dot_fn cpu_avx2_dot_kernel(enum spec_dtype wtype);
cpu_from_float_fn cpu_avx2_from_float_kernel(enum spec_dtype vtype);
/* The AVX-512 table (quants_avx512.c); call only when cpu_isa_available(CPU_ISA_AVX512). NULL where
 * the AVX2 kernel serves. */
cpu_dot_fn cpu_avx512_dot_kernel(enum spec_dtype wtype);
/* The AMX table (quants_amx.c); call only when cpu_isa_available(CPU_ISA_AMX). */
cpu_tile_fn cpu_amx_tile_kernel(enum spec_dtype wtype, int64_t n);

/* ---------------------------------------------------------------------------------------------- */
/* Thread pool                                                                                     */

/* Persistent workers for fork-join parallel loops. The calling thread takes part as thread 0, so a
 * pool of n threads starts n-1 workers. Workers spin briefly after each task (decode dispatches
 * hundreds of small tasks per token) and then sleep. One thread at a time may use a pool. */
struct cpu_pool;

typedef void (*cpu_task_fn)(void *arg, int ith, int nth);

/* n_threads <= 0 means one per online core. */
int cpu_pool_create(int n_threads, struct cpu_pool **out);
void cpu_pool_destroy(struct cpu_pool *pool);
int cpu_pool_size(const struct cpu_pool *pool);
/* Runs fn(arg, ith, nth) once for every ith in [0, nth) and returns when all have returned. */
void cpu_pool_run(struct cpu_pool *pool, cpu_task_fn fn, void *arg);
/* Inside a task: returns when every thread of the task has called it. */
void cpu_pool_barrier(struct cpu_pool *pool);
/* Scratch memory owned by the pool, at least `bytes` long and 64-byte aligned, valid until the next
 * call; it only grows, so a steady workload does not allocate. NULL when out of memory. */
void *cpu_pool_scratch(struct cpu_pool *pool, size_t bytes);

/* ---------------------------------------------------------------------------------------------- */
/* Matrix multiplication                                                                           */

/* y[r * y_stride + j] = dot(x[r * x_stride ...], w row j) for r < n, j < rows.
 * w: `rows` rows of k elements of wtype, w_row_bytes apart; x: n F32 rows of k elements, x_stride
 * floats apart; y: n rows of `rows` floats, y_stride floats apart. Each activation row is converted
 * once to the weight's vec_dot type; every weight row is read once for all n activation rows; rows are
 * split over the pool's threads. y[r] does not depend on n, on the thread count or on the ISA.
 * SPEC_E_UNSUPPORTED for a type without kernels, SPEC_E_RANGE for k not a multiple of the block size
 * or a row stride too short, SPEC_E_NOMEM when the scratch cannot grow. */
int cpu_matmul(struct cpu_pool *pool, enum spec_dtype wtype, const void *w, size_t w_row_bytes, int64_t rows,
               int64_t k, const float *x, int64_t x_stride, int64_t n, float *y, int64_t y_stride);

#endif
