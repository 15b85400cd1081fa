/* y = x . w^T on the thread pool.
 *
 * One task does both phases: the threads first convert the activation rows to the weight's vec_dot
 * type (into pool scratch), meet at a barrier, then take chunks of weight rows from a shared counter.
 * Each weight row is dotted with a tile of up to ACT_TILE activation rows while it is in L1, so for
 * the small batches of speculative verification every weight byte comes from memory once. Where the
 * ISA has a tile kernel for the type and batch size (AMX), weight rows go CPU_TILE_ROWS at a time
 * through it, with up to CPU_TILE_MAX_BATCH activation rows per pass (the weights are rearranged
 * once per pass); its results are bit-identical to the dot kernel's, so which path a batch takes
 * never shows in the logits. */
#include <stdatomic.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"

/* Activation rows per pass over a chunk of weight rows: all of a verification batch. */
#define ACT_TILE 16
/* Elements of an activation row converted as one unit of work (a multiple of every block size). */
#define CONVERT_UNIT 1024
/* Weight bytes per chunk: enough work to amortise taking it, little enough to stay in L2 while the
 * later activation tiles of a large batch reuse it. */
#define CHUNK_BYTES (64 * 1024)

struct matmul_task {
    struct cpu_pool *pool;
    cpu_dot_fn dot;
    cpu_tile_fn tile; /* NULL: dot kernel only */
    cpu_from_float_fn from_float; /* NULL when x is used as it is (F32 weights) */
    const char *w;
    size_t w_row_bytes;
    int64_t rows, k;
    const float *x;
    int64_t x_stride;
    int64_t n;
    float *y;
    int64_t y_stride;
    const char *xq; /* activation rows in the vec_dot type */
    size_t xq_stride;
    enum spec_dtype vtype;
    uint32_t v_block, v_type_size; /* vec_dot type's block */
    int64_t chunk_rows;
    int64_t act_rows; /* activation rows per pass over a chunk */
    atomic_llong next_chunk;
};

static void convert_activations(struct matmul_task *t, int ith, int nth)
{
    const int64_t per_row = (t->k + CONVERT_UNIT - 1) / CONVERT_UNIT;
    for (int64_t u = ith; u < t->n * per_row; u += nth) {
        const int64_t r = u / per_row, e0 = (u % per_row) * CONVERT_UNIT;
        const int64_t len = t->k - e0 < CONVERT_UNIT ? t->k - e0 : CONVERT_UNIT;
        char *row = (char *)t->xq + (size_t)r * t->xq_stride;
        t->from_float(t->x + r * t->x_stride + e0, row + (size_t)(e0 / t->v_block) * t->v_type_size, len);
        cpu_act_fill_scales(t->vtype, row, t->k, e0 / t->v_block, (e0 + len) / t->v_block);
    }
}

static void matmul_worker(void *arg, int ith, int nth)
{
    struct matmul_task *t = arg;
    if (t->from_float) {
        convert_activations(t, ith, nth);
        cpu_pool_barrier(t->pool);
    }
    for (;;) {
        const int64_t j0 = atomic_fetch_add_explicit(&t->next_chunk, 1, memory_order_relaxed) * t->chunk_rows;
        if (j0 >= t->rows)
            break;
        const int64_t j1 = j0 + t->chunk_rows < t->rows ? j0 + t->chunk_rows : t->rows;
        for (int64_t r0 = 0; r0 < t->n; r0 += t->act_rows) {
            const int nx = (int)(t->n - r0 < t->act_rows ? t->n - r0 : t->act_rows);
            const char *xq = t->xq + (size_t)r0 * t->xq_stride;
            int64_t j = j0;
            if (t->tile)
                for (; j + CPU_TILE_ROWS <= j1; j += CPU_TILE_ROWS)
                    t->tile(t->k, t->w + (size_t)j * t->w_row_bytes, t->w_row_bytes, xq, t->xq_stride, nx,
                            t->y + r0 * t->y_stride + j, (size_t)t->y_stride);
            for (; j < j1; j++)
                t->dot(t->k, t->w + (size_t)j * t->w_row_bytes, xq, t->xq_stride, nx, t->y + r0 * t->y_stride + j,
                       (size_t)t->y_stride);
        }
    }
}

int cpu_matmul(struct cpu_pool *pool, enum spec_dtype wtype, const void *w, size_t w_row_bytes, int64_t rows,
               int64_t k, const float *x, int64_t x_stride, int64_t n, float *y, int64_t y_stride)
{
    if (!pool || (rows && n && (!w || !x || !y)))
        return SPEC_E_INVALID_ARG;
    const enum cpu_isa isa = cpu_isa_active();
    const enum spec_dtype vtype = cpu_vec_dot_type(wtype);
    cpu_dot_fn dot = cpu_dot_kernel(wtype, isa);
    if (vtype == SPEC_DTYPE_COUNT || !dot)
        return SPEC_E_UNSUPPORTED;
    uint64_t w_bytes;
    size_t xq_bytes;
    if (k <= 0 || rows < 0 || n < 0 || x_stride < k || y_stride < rows ||
        kern_row_bytes((uint32_t)wtype, (uint64_t)k, &w_bytes) || cpu_act_row_bytes(vtype, k, &xq_bytes) ||
        w_row_bytes < w_bytes)
        return SPEC_E_RANGE;
    if (rows == 0 || n == 0)
        return SPEC_OK;

    const struct kern_dtype_info *vinfo = kern_dtype_info((uint32_t)vtype);
    struct matmul_task t = {
        .pool = pool,
        .dot = dot,
        /* the tile kernel addresses its 16 rows with int32 offsets */
        .tile = w_row_bytes <= INT32_MAX / CPU_TILE_ROWS ? cpu_tile_kernel(wtype, isa, n) : NULL,
        .w = w,
        .w_row_bytes = w_row_bytes,
        .rows = rows,
        .k = k,
        .x = x,
        .x_stride = x_stride,
        .n = n,
        .y = y,
        .y_stride = y_stride,
        .vtype = vtype,
        .v_block = vinfo->block_size,
        .v_type_size = vinfo->type_size,
    };
    if (vtype == SPEC_F32) {
        t.xq = (const char *)x;
        t.xq_stride = (size_t)x_stride * sizeof(float);
    } else {
        t.from_float = cpu_from_float_kernel(vtype, isa);
        t.xq_stride = xq_bytes;
        /* the tile kernel reads whole tiles of activation rows in batches over one tile: zero rows pad */
        const int64_t n_alloc =
            t.tile && n > CPU_TILE_ROWS ? (n + CPU_TILE_ROWS - 1) / CPU_TILE_ROWS * CPU_TILE_ROWS : n;
        if ((uint64_t)n_alloc > SIZE_MAX / xq_bytes)
            return SPEC_E_RANGE;
        char *xq = cpu_pool_scratch(pool, (size_t)n_alloc * xq_bytes);
        if (!xq)
            return SPEC_E_NOMEM;
        memset(xq + (size_t)n * xq_bytes, 0, (size_t)(n_alloc - n) * xq_bytes);
        t.xq = xq;
    }
    t.act_rows = t.tile ? CPU_TILE_MAX_BATCH : ACT_TILE;

    /* Several chunks per thread so a thread slowed by another process does not hold up the rest. */
    const int nth = cpu_pool_size(pool);
    int64_t chunk = (int64_t)(CHUNK_BYTES / w_row_bytes);
    const int64_t balanced = rows / ((int64_t)nth * 4);
    if (chunk > balanced)
        chunk = balanced;
    if (t.tile) /* whole tiles of weight rows, except at the end; one tile when each is much work */
        chunk = chunk < CPU_TILE_ROWS || n > CPU_TILE_ROWS ? CPU_TILE_ROWS : chunk - chunk % CPU_TILE_ROWS;
    t.chunk_rows = chunk > 0 ? chunk : 1;
    atomic_init(&t.next_chunk, 0);
    cpu_pool_run(pool, matmul_worker, &t);
    return SPEC_OK;
}
