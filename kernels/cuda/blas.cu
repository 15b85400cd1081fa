/* A prefill's matmuls through cuBLAS (kern_backend_config.blas_prefill).
 *
 * A prompt's positions go through every layer in wide steps, where a GEMM on tensor cores reads each
 * weight once for many rows at F16 rates. Per matmul: the weights are dequantised into an F16 copy
 * (the GGUF encoding stays the resident one), the activations rounded to F16, and cublasGemmEx
 * multiplies them with F32 accumulation into an F32 scratch, which one kernel then adds the biases to
 * (and applies the swiglu) on the way to the outputs.
 *
 * A row's bits must not depend on the other rows of its pass, which cuBLAS does not promise across
 * shapes (it picks its kernel, tiling and split of k by the shape). So every GEMM has one shape: the
 * rows go in chunks of CUDA_BLAS_ROWS, the last padded with zero rows; a row's result is then a
 * function of that row and the weights alone, whatever the chunk and wherever in it the row lies.
 *
 * libcublas is loaded when a backend asks for this path (dlopen), not linked: the binaries keep
 * starting on machines without it, as with the static CUDA runtime. On the simulator the same
 * functions come from cudasim's cublas_v2.h. */
#include <cublas_v2.h>
#if !defined(CUDASIM)
#include <dlfcn.h>
#endif
#include <stdlib.h>

extern "C" {
#include "common/err.h"
}
#include "kernels/cuda/cuda_ops.h"

#ifndef SPEC_CUDA_LIB_DIR /* the Makefile names the toolkit it builds with */
#define SPEC_CUDA_LIB_DIR "/usr/local/cuda/lib64"
#endif
#define STR_(x) #x
#define STR(x) STR_(x)

struct cuda_blas {
    void *lib; /* dlopen's handle; NULL on the simulator */
    cublasHandle_t handle;
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                           const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                           cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t); /* C++ overloads it */
    struct cuda_buf w16; /* one part's weights in F16 */
    struct cuda_buf x16; /* the activations in F16, rows padded to whole chunks */
    struct cuda_buf out; /* the parts' products, CUDA_BLAS_ROWS-padded rows of each part's width */
};

/* The library's functions into b: from libcublas (its soname for the headers' major version, first on
 * the loader's path, then in the toolkit the build used), or the simulator's. */
static bool blas_load(struct cuda_blas *b)
{
#if defined(CUDASIM)
    b->create = cublasCreate_v2;
    b->destroy = cublasDestroy_v2;
    b->set_stream = cublasSetStream_v2;
    b->gemm = cublasGemmEx;
    return true;
#else
    static const char *const names[] = {"libcublas.so." STR(CUBLAS_VER_MAJOR), SPEC_CUDA_LIB_DIR "/libcublas.so." STR(
                                                                                   CUBLAS_VER_MAJOR)};
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !b->lib; i++)
        b->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!b->lib)
        return false;
    b->create = (decltype(b->create))dlsym(b->lib, "cublasCreate_v2");
    b->destroy = (decltype(b->destroy))dlsym(b->lib, "cublasDestroy_v2");
    b->set_stream = (decltype(b->set_stream))dlsym(b->lib, "cublasSetStream_v2");
    b->gemm = (decltype(b->gemm))dlsym(b->lib, "cublasGemmEx");
    return b->create && b->destroy && b->set_stream && b->gemm;
#endif
}

int cuda_blas_open(cudaStream_t st, struct cuda_mem *mem, struct cuda_blas **out)
{
    struct cuda_blas *b = (struct cuda_blas *)calloc(1, sizeof *b);
    if (!b)
        return SPEC_E_NOMEM;
    b->w16.mem = b->x16.mem = b->out.mem = mem;
    *out = NULL;
    if (!blas_load(b) || b->create(&b->handle) != CUBLAS_STATUS_SUCCESS) {
        cuda_blas_close(b);
        return SPEC_E_UNSUPPORTED;
    }
    if (b->set_stream(b->handle, st) != CUBLAS_STATUS_SUCCESS) {
        cuda_blas_close(b);
        return SPEC_E_IO;
    }
    *out = b;
    return SPEC_OK;
}

void cuda_blas_close(struct cuda_blas *b)
{
    if (!b)
        return;
    cuda_buf_release(&b->w16);
    cuda_buf_release(&b->x16);
    cuda_buf_release(&b->out);
    if (b->handle)
        b->destroy(b->handle);
#if !defined(CUDASIM)
    if (b->lib)
        dlclose(b->lib);
#endif
    free(b);
}

/* x16 row r = x row r rounded to F16 for r < n, zeros for n <= r < rows. */
__global__ void blas_x16_kernel(const float *x, size_t x_stride, int k, int n, int rows, __half *x16)
{
    cuda_grid_wait();
    CUDA_GRID_STRIDE(i, (int64_t)rows * k)
    {
        const int r = (int)(i / k), e = (int)(i % k);
        x16[i] = __float2half_rn(r < n ? x[(size_t)r * x_stride + e] : 0.0f);
    }
}

/* The products' epilogue: part p's y row r = its product row r + its bias, as a matmul's bias is added
 * to the finished sum; with swiglu part 0's y = silu(y0) * y1 after both are made (ggml_silu_f32). */
struct blas_epilogue {
    const float *out[CUDA_MM_PARTS]; /* the products: rows of the part's width, contiguous */
    const float *bias[CUDA_MM_PARTS];
    float *y[CUDA_MM_PARTS];
    size_t y_stride[CUDA_MM_PARTS];
    int width[CUDA_MM_PARTS];
    int n_parts, n;
    bool swiglu;
};

static inline void cuda_trace_arg(cuda_node &nd, const blas_epilogue &ep)
{
    for (int p = 0; p < CUDA_MM_PARTS; p++)
        cuda_trace_args(nd, ep.out[p], ep.bias[p], ep.y[p], ep.y_stride[p], ep.width[p]);
    cuda_trace_args(nd, ep.n_parts, ep.n, ep.swiglu);
}

__global__ void blas_epilogue_kernel(const blas_epilogue ep)
{
    cuda_grid_wait();
    for (int p = 0; p < ep.n_parts; p++) {
        const int w = ep.width[p];
        CUDA_GRID_STRIDE(i, (int64_t)ep.n * w)
        {
            const int r = (int)(i / w), j = (int)(i % w);
            float v = ep.out[p][i];
            if (ep.bias[p])
                v = v + ep.bias[p][j];
            if (ep.swiglu && p == 0) {
                float u = ep.out[1][i];
                if (ep.bias[1])
                    u = u + ep.bias[1][j];
                v = cuda_silu_mul(v, u);
            }
            ep.y[p][(size_t)r * ep.y_stride[p] + j] = v;
        }
    }
}

static cudaError_t status_of(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS         ? cudaSuccess
           : s == CUBLAS_STATUS_ALLOC_FAILED ? cudaErrorMemoryAllocation
                                              : cudaErrorInvalidValue;
}

cudaError_t cuda_blas_matmul(cudaStream_t st, struct cuda_blas *b, enum spec_dtype wtype, int k, const float *x,
                             size_t x_stride, int n, const struct cuda_mm_part *parts, int n_parts, bool swiglu)
{
    const int rows = (n + CUDA_BLAS_ROWS - 1) / CUDA_BLAS_ROWS * CUDA_BLAS_ROWS;
    size_t w_max = 0, out_elems = 0, out_at[CUDA_MM_PARTS];
    for (int p = 0; p < n_parts; p++) {
        const size_t w = (size_t)parts[p].rows * (size_t)k;
        w_max = w > w_max ? w : w_max;
        out_at[p] = out_elems;
        out_elems += cuda_align256((size_t)rows * (size_t)parts[p].rows * sizeof(float)) / sizeof(float);
    }
    cudaError_t e;
    if ((e = cuda_buf_reserve(st, &b->w16, w_max * sizeof(__half))) != cudaSuccess ||
        (e = cuda_buf_reserve(st, &b->x16, (size_t)rows * (size_t)k * sizeof(__half))) != cudaSuccess ||
        (e = cuda_buf_reserve(st, &b->out, out_elems * sizeof(float))) != cudaSuccess)
        return e;
    __half *x16 = (__half *)b->x16.p, *w16 = (__half *)b->w16.p;
    CUDA_LAUNCH(cuda_elt_blocks((int64_t)rows * k), CUDA_ELT_THREADS, st, blas_x16_kernel)(x, x_stride, k, n, rows, x16);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return e;
    blas_epilogue ep = {};
    const float one = 1.0f, zero = 0.0f;
    for (int p = 0; p < n_parts; p++) {
        const struct cuda_mm_part *mp = &parts[p];
        /* F16 weights are used as they lie; the others are dequantised into w16 */
        const void *w = mp->w;
        int ldw = (int)(mp->w_row_bytes / sizeof(__half));
        if (wtype != SPEC_F16 || mp->w_row_bytes % sizeof(__half)) {
            if ((e = cuda_rows_to_f16(st, wtype, mp->w, mp->w_row_bytes, k, mp->rows, (uint16_t *)w16)) != cudaSuccess)
                return e;
            w = w16;
            ldw = k;
        }
        float *out = (float *)b->out.p + out_at[p];
        /* column-major, the product is out^T (rows x chunk) = w (rows x k, stored as its transpose) times
         * x16^T (k x chunk) */
        for (int r0 = 0; r0 < rows; r0 += CUDA_BLAS_ROWS) {
            const cublasStatus_t s =
                b->gemm(b->handle, CUBLAS_OP_T, CUBLAS_OP_N, mp->rows, CUDA_BLAS_ROWS, k, &one, w, CUDA_R_16F, ldw,
                        x16 + (size_t)r0 * k, CUDA_R_16F, k, &zero, out + (size_t)r0 * mp->rows, CUDA_R_32F,
                        mp->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS)
                return status_of(s);
        }
        ep.out[p] = out;
        ep.bias[p] = mp->bias;
        ep.y[p] = mp->y;
        ep.y_stride[p] = mp->y_stride;
        ep.width[p] = mp->rows;
    }
    ep.n_parts = n_parts;
    ep.n = n;
    ep.swiglu = swiglu;
    CUDA_LAUNCH(cuda_elt_blocks((int64_t)n * parts[0].rows), CUDA_ELT_THREADS, st, blas_epilogue_kernel)(ep);
    return cudaGetLastError();
}
