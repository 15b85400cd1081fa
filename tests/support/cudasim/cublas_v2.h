/* cudasim's cuBLAS: the part kernels/cuda/blas.cu uses (a handle on a stream, cublasGemmEx with F16 or
 * F32 operands and F32 accumulation), computed on the CPU in stream order as cudasim's kernels are. The
 * names are those the library exports (cublas_v2.h maps cublasCreate to cublasCreate_v2 & co.), so
 * that blas.cu takes the same functions from here that it looks up in libcublas on a GPU machine.
 *
 * What it cannot show: cuBLAS's own order of sums (here each output is a plain loop over k in float),
 * so bits against the real library are the GPU's to check (make test-cuda). */
#ifndef SPECD_CUDASIM_CUBLAS_V2_H
#define SPECD_CUDASIM_CUBLAS_V2_H

#include "cuda_runtime.h"

#define CUBLAS_VER_MAJOR 13

typedef struct cublasContext *cublasHandle_t;

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;

typedef enum {
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
} cublasOperation_t;

typedef enum {
    CUDA_R_32F = 0,
    CUDA_R_16F = 2,
} cudaDataType;

typedef enum {
    CUBLAS_COMPUTE_32F = 68,
} cublasComputeType_t;

typedef enum {
    CUBLAS_GEMM_DEFAULT = -1,
} cublasGemmAlgo_t;

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle);
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle);
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t st);
/* C = alpha op(A) op(B) + beta C, column-major, as the library's: A and B of one type (F16 or F32), C F32,
 * alpha and beta floats in host memory (beta 0: C is not read); A, B and C must be device memory. */
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo);

#endif
