/* cudasim: the CUDA runtime as far as kernels/cuda uses it, on the CPU, so that CI (no GPU) runs the
 * CUDA backend's own kernel sources through the conformance suite (make test-cudasim).
 *
 * The .cu files are compiled by the host C++ compiler with this folder ahead of the CUDA headers.
 * Device memory is host memory; every copy and launch runs at once, in stream order. A kernel runs
 * block after block; the threads of a block are fibers: each runs until it reaches __syncthreads()
 * or a warp shuffle, or ends, before the next thread starts. That is the most hostile legal schedule
 * for a missing barrier (thread 0 reads what no other thread has written yet), and the host's
 * sanitizers see the kernels' memory accesses: ASan an out-of-bounds read of a device buffer, UBSan a
 * vector load from an address its type's alignment forbids on a GPU. Misuse the hardware would not
 * forgive either (a shuffle some lanes never reach, a barrier that never completes, a launch shape
 * past the limits, a host pointer handed to a kernel, a copy whose direction does not match its
 * pointers, a free of memory cudaMalloc did not return) aborts with a message or fails the launch as
 * CUDA would.
 *
 * Stream capture records a stream's launches, copies and memsets (their arguments as they are when
 * captured, as CUDA does) into a graph instead of running them; a launched graph runs them in order.
 * What a capture forbids aborts here: a synchronisation or a free while any stream captures, a
 * captured copy from or to host memory that cudaMallocHost did not return (pageable memory), and a
 * cudaMalloc during a capture that is not in relaxed mode.
 *
 * What it cannot show: speed, the GPU's float library (expf & co. are glibc's here), races between
 * blocks, and anything about concurrency beyond one stream. Timings and the numerical bounds of the
 * GPU's own functions need the real device (make test-cuda). */
#ifndef SPECD_CUDASIM_CUDA_RUNTIME_H
#define SPECD_CUDASIM_CUDA_RUNTIME_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

/* ---------------------------------------------------------------------------------------------- */
/* Qualifiers and launch syntax                                                                   */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
/* A block's threads share the one instance; blocks run one after another. */
#define __shared__ static
#define __restrict__ __restrict

/* kernels/cuda is built against the simulator: mma and griddepcontrol come from it (cudasim::). */
#define CUDASIM 1

/* The host compiler has no <<<grid, block, 0, st>>>: kernels/cuda launches through these macros. */
#define CUDA_KERNEL_LAUNCH(grid, block, st, kernel, ...)                                                          \
    ::cudasim::launch(false, grid, block, st, kernel, __VA_ARGS__)
#define CUDA_KERNEL_LAUNCH_DEPENDENT(grid, block, st, kernel, ...)                                                \
    ::cudasim::launch(true, grid, block, st, kernel, __VA_ARGS__)

/* ---------------------------------------------------------------------------------------------- */
/* Types                                                                                          */

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

/* The GPU's alignments: a load of one of these from an address it does not divide faults there and
 * is a UBSan report here. */
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorGraphExecUpdateFailure = 910,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
};

#define cudaStreamNonBlocking 0x01u

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};

enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
};

struct cudaGraphExecUpdateResultInfo {
    int result;
};

struct cudaFuncAttributes {
    int maxThreadsPerBlock;
};

/* ---------------------------------------------------------------------------------------------- */
/* Runtime API                                                                                    */

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetLastError(void);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t st);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t st);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t st);
cudaError_t cudaStreamSynchronize(cudaStream_t st);
cudaError_t cudaDeviceSynchronize(void);
/* An event's time is the host's clock when it completes: when it is recorded, or, recorded after graph
 * launches that have not run yet (cudaGraphLaunch), when they have. cudaEventSynchronize runs them up
 * to the event (cudaSuccess also for an event never recorded, as CUDA's). */
#define cudaEventDisableTiming 0x02u
cudaError_t cudaEventCreate(cudaEvent_t *ev);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t ev);
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st);
cudaError_t cudaEventSynchronize(cudaEvent_t ev);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t from, cudaEvent_t to);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaStreamBeginCapture(cudaStream_t st, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t *graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t st, enum cudaStreamCaptureStatus *status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags);
/* Takes graph's nodes into exec when they are the same kinds in the same order (kernels: the same
 * function), else cudaErrorGraphExecUpdateFailure and exec is unchanged. */
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo *info);
/* A launched graph runs when the host next has to see what it does, not when it is launched, as on a
 * GPU, where it runs while the host goes on: before any launch, copy or memset that runs at once, at a
 * synchronisation (a stream's, the device's, an event's up to that event), a free, or the profiler's
 * start or stop. So a host that rewrites what a launched graph has still to read (page-locked memory
 * its copies take) shows wrong results here too. It runs the nodes it had when launched. */
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t st);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

template <class F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, F *)
{
    attr->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}

/* ---------------------------------------------------------------------------------------------- */
/* Inside a kernel                                                                                */

/* The running thread's coordinates, set by the scheduler whenever it switches threads. */
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

void __syncthreads(void);

/* Blocks run one after another and a thread runs until it reaches a barrier or a shuffle: an atomic is
 * a plain update, a fence has nothing to order, and every load sees the last store. */
static inline int atomicAdd(int *p, int v)
{
    const int old = *p;
    *p = old + v;
    return old;
}
static inline void __threadfence(void) {}
static inline float __ldcg(const float *p) { return *p; }
static inline int __ldcg(const int *p) { return *p; }
static inline double __ldcg(const double *p) { return *p; }

namespace cudasim {
/* Aborts with a message unless p is NULL or points into (or just past) memory from cudaMalloc: a
 * kernel handed a host pointer faults on a GPU. `arg` numbers the kernel's parameter. */
void check_device_arg(const void *p, int arg);
/* A warp's exchange: every lane of the running thread's warp gives `bits` and gets lane ^ lane_mask's
 * (shfl_xor) or src_lane's (shfl). */
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask);
uint64_t shfl(unsigned mask, uint64_t bits, int src_lane);
/* The warp's int8 tensor-core product d = A B (k 32 or 16), from the fragments every lane holds in the
 * layout of PTX's mma.m16n8k32 / m16n8k16 with s8 inputs (kernels/cuda/cuda_ops.h: cuda_mma_s8). */
void mma_s8(int k, int d[4], const uint32_t *a, const uint32_t *b);
/* Runs body(ctx) as every thread of every block of the grid; a bad shape sets the launch error.
 * dependent: launched as a programmatic dependent (every thread must call grid_wait, first). */
void run(dim3 grid, dim3 block, void (*body)(void *), void *ctx, bool dependent);
/* cuda_grid_wait: the grids before have finished (here always; the call is checked for). */
void grid_wait();
/* cuda_prefetch_l2's hint for the byte at p: nothing to fetch here, but it must be device memory (a
 * prefetch past a tensor's end reads what the kernel does not own). */
void prefetch(const void *p);
/* When st is capturing: appends a node (kind: the kernel, or what a copy is) and returns true. */
bool record(cudaStream_t st, const void *kind, std::function<void()> node);

template <class T>
static void check_one(const T &v, int arg)
{
    if constexpr (std::is_pointer_v<T>)
        check_device_arg((const void *)v, arg);
}

/* A launch with its arguments already of the kernel's parameter types (CUDA_LAUNCH converts them),
 * copied now, as a launch copies them; dependent: as a programmatic dependent launch. */
template <class... P>
void launch(bool dependent, dim3 grid, dim3 block, cudaStream_t st, void (*kernel)(P...), P... args)
{
    struct call {
        void (*kernel)(P...);
        std::tuple<P...> params;
        static void body(void *c)
        {
            call *self = (call *)c;
            std::apply(self->kernel, self->params);
        }
    } c{kernel, std::tuple<P...>(args...)};
    int arg = 0;
    (check_one(args, arg++), ...);
    if (!record(st, (const void *)kernel,
                [grid, block, c, dependent]() mutable { run(grid, block, &call::body, &c, dependent); }))
        run(grid, block, &call::body, &c, dependent);
}
} // namespace cudasim

namespace cudasim {
template <class T, class F>
static inline T shuffled(T v, F exchange)
{
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 64 bits");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = exchange(bits);
    memcpy(&v, &bits, sizeof v);
    return v;
}
} // namespace cudasim

template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask)
{
    return cudasim::shuffled(v, [&](uint64_t bits) { return cudasim::shfl_xor(mask, bits, lane_mask); });
}

template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src_lane)
{
    return cudasim::shuffled(v, [&](uint64_t bits) { return cudasim::shfl(mask, bits, src_lane); });
}

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline int __float2int_rn(float f) { return (int)nearbyintf(f); }

static inline float __uint_as_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t __float_as_uint(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Four signed bytes of a times those of b, plus c. */
static inline int __dp4a(int a, int b, int c)
{
    for (int i = 0; i < 4; i++)
        c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}

#endif
