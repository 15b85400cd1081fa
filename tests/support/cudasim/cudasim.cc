/* cudasim's runtime and scheduler (see cuda_runtime.h): device memory is host memory, and a kernel's
 * blocks run one after another with their threads as fibers that switch only at barriers. The switch
 * is a few instructions of x86-64 (callee-saved registers and the stack pointer): ucontext's costs a
 * system call, and under ASan a clear of the whole stack's shadow, per switch.
 *
 * A GPU runs blocks in no promised order, so neither does the simulator: each launch takes its blocks
 * in an order of its own (a stride through the grid from a starting block, both changing from launch
 * to launch, the same in every run), so that the last block of a grid to arrive, which combines what
 * the others left, is not always the one with the highest index.
 *
 * The scheduler resumes the threads of a block in order (every other block from the last thread
 * down), each until it waits or ends, when it hands over to the next directly. When none can run, it
 * releases every warp whose live lanes all wait at a shuffle, else the block if all its live threads
 * wait at __syncthreads(); when nothing can be released the kernel is wrong (a barrier or a shuffle
 * that some threads never reach) and the process aborts with what was found. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <deque>
#include <map>
#include <memory>
#include <new>
#include <vector>

#include "cublas_v2.h"
#include "cuda_fp16.h"
#include "cuda_profiler_api.h"
#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIM_ASAN 1
#else
#define SIM_ASAN 0
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;

#if !defined(__x86_64__)
#error "cudasim switches threads in x86-64 assembly"
#endif

/* Saves the callee-saved registers on the current stack and its pointer in *from, then continues on
 * `to`, a stack saved the same way (or made by start_thread). The kernels leave the floating-point
 * control registers alone, so they need no saving. */
extern "C" void cudasim_switch(void **from, void *to);
asm(R"(
    .text
    .globl cudasim_switch
    .type cudasim_switch, @function
cudasim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cudasim_switch, .-cudasim_switch
)");

namespace {

const size_t STACK_BYTES = 256 * 1024; /* sanitizer builds need room; pages are touched lazily */
const int WARP = 32;

enum thread_state { RUNNABLE, AT_SYNC, AT_SHFL, DONE };

struct sim_thread {
    void *sp; /* where the thread's registers were saved when it stopped */
    void *stack;
    dim3 idx;
    thread_state state;
    unsigned shfl_count; /* which of the warp's two exchange rows the next shuffle uses */
    bool waited;         /* has called cuda_grid_wait (cudasim::grid_wait) */
    void *fake_stack;    /* ASan's bookkeeping across switches */
};

struct sim_warp {
    uint64_t xch[2][WARP]; /* alternate rows: a lane may give its next value before all have read */
    uint32_t frag[2][WARP][6]; /* mma_s8: each lane's a and b registers, rows as for xch */
};

struct sim_state {
    sim_thread *threads = nullptr;
    int cap = 0;
    sim_warp *warps = nullptr;
    int n_threads = 0;
    int cur = -1;
    void *sched_sp = nullptr;
    const void *sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
    void (*body)(void *) = nullptr;
    void *ctx = nullptr;
    bool dependent = false; /* the running kernel was launched as a programmatic dependent */
    bool backwards = false; /* the block's threads resume from the last one down */
    bool from_scheduler = false; /* the running thread was resumed by the scheduler, not by another thread */
    cudaError_t last_error = cudaSuccess;
    unsigned long launches = 0;
};

sim_state sim;

[[noreturn]] void die(const char *what)
{
    if (sim.cur >= 0)
        fprintf(stderr, "cudasim: %s (block %u,%u,%u, thread %u,%u,%u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z,
                threadIdx.x, threadIdx.y, threadIdx.z);
    else
        fprintf(stderr, "cudasim: %s\n", what);
    abort();
}

/* The first thread after position `pos` of the scheduler's pass over the block that can run, or -1. */
int next_runnable(int pos)
{
    for (int j = pos + 1; j < sim.n_threads; j++) {
        const int i = sim.backwards ? sim.n_threads - 1 - j : j;
        if (sim.threads[i].state == RUNNABLE)
            return i;
    }
    return -1;
}

/* Thread i runs next (its cur and threadIdx); the caller switches to it. */
void make_current(int i)
{
    sim.cur = i;
    threadIdx = sim.threads[i].idx;
}

/* The running thread stops (`dying` when it has ended): the next thread of the scheduler's pass that
 * can run goes on in its place, directly, which is one switch where going through the scheduler is two
 * (each with ASan's bookkeeping); at the pass's end the scheduler goes on. */
void yield_thread(bool dying)
{
    sim_thread &t = sim.threads[sim.cur];
    const int next = next_runnable(sim.backwards ? sim.n_threads - 1 - sim.cur : sim.cur);
    if (next >= 0) {
        make_current(next);
        sim.from_scheduler = false;
#if SIM_ASAN
        __sanitizer_start_switch_fiber(dying ? nullptr : &t.fake_stack, sim.threads[next].stack, STACK_BYTES);
#endif
        cudasim_switch(&t.sp, sim.threads[next].sp); /* a dying thread is never resumed */
    } else {
#if SIM_ASAN
        __sanitizer_start_switch_fiber(dying ? nullptr : &t.fake_stack, sim.sched_stack_bottom,
                                       sim.sched_stack_size);
#endif
        cudasim_switch(&t.sp, sim.sched_sp);
    }
#if SIM_ASAN
    __sanitizer_finish_switch_fiber(t.fake_stack, nullptr, nullptr);
#endif
}

/* A programmatic dependent waits for the grid before it works with others: not a barrier, shuffle or
 * mma first. */
void check_waited(const char *what)
{
    if (sim.dependent && !sim.threads[sim.cur].waited)
        die(what);
}

[[noreturn]] void thread_main()
{
#if SIM_ASAN
    /* the stack that yield_thread returns to at a pass's end (no locals here: the frame of a
     * thread that ends is never left, and ASan's redzones around them would stay on its stack) */
    const bool sched = sim.from_scheduler;
    __sanitizer_finish_switch_fiber(nullptr, sched ? &sim.sched_stack_bottom : nullptr,
                                    sched ? &sim.sched_stack_size : nullptr);
#endif
    sim.body(sim.ctx);
    check_waited("a kernel launched as a programmatic dependent ended without cuda_grid_wait");
    sim.threads[sim.cur].state = DONE;
    yield_thread(true);
    die("a finished thread was resumed");
}

/* The scheduler's pass over the block from thread i, the first of the pass that can run; returns when
 * the pass has ended. */
void resume(int i)
{
    sim_thread &t = sim.threads[i];
    make_current(i);
    sim.from_scheduler = true;
#if SIM_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, t.stack, STACK_BYTES);
#endif
    cudasim_switch(&sim.sched_sp, t.sp);
#if SIM_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    sim.cur = -1;
}

void reserve_threads(int n)
{
    if (n <= sim.cap)
        return;
    sim_thread *t = (sim_thread *)realloc(sim.threads, (size_t)n * sizeof *t);
    sim_warp *w = (sim_warp *)realloc(sim.warps, (size_t)((n + WARP - 1) / WARP) * sizeof *w);
    if (!t || !w)
        die("out of memory");
    sim.threads = t;
    sim.warps = w;
    for (int i = sim.cap; i < n; i++) {
        void *s = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                       0);
        if (s == MAP_FAILED)
            die("cannot map a thread stack");
        sim.threads[i].stack = s;
    }
    sim.cap = n;
}

/* Releases what can go on after every thread has stopped; false when nothing can (a hang on a GPU). */
bool release_barriers()
{
    bool released = false;
    int live = 0, at_sync = 0;
    for (int w0 = 0; w0 < sim.n_threads; w0 += WARP) {
        const int end = w0 + WARP < sim.n_threads ? w0 + WARP : sim.n_threads;
        int warp_live = 0, warp_shfl = 0;
        for (int i = w0; i < end; i++) {
            const thread_state s = sim.threads[i].state;
            warp_live += s != DONE;
            warp_shfl += s == AT_SHFL;
            at_sync += s == AT_SYNC;
        }
        live += warp_live;
        if (warp_shfl == 0)
            continue;
        if (warp_shfl != end - w0)
            die(warp_shfl == warp_live ? "a full-mask shuffle after some lanes of the warp ended"
                                       : "lanes of one warp wait at a shuffle and at a barrier");
        for (int i = w0; i < end; i++)
            sim.threads[i].state = RUNNABLE;
        released = true;
    }
    if (released)
        return true;
    if (live > 0 && at_sync == live) {
        for (int i = 0; i < sim.n_threads; i++)
            if (sim.threads[i].state == AT_SYNC)
                sim.threads[i].state = RUNNABLE;
        return true;
    }
    return false;
}

/* Sets thread i up to start the kernel from the top: a stack whose first switch pops six zero
 * registers and returns into thread_main, with the stack aligned as at a call. */
void start_thread(int i)
{
    sim_thread &t = sim.threads[i];
    const unsigned lin = (unsigned)i;
    t.idx = dim3(lin % blockDim.x, lin / blockDim.x % blockDim.y, lin / (blockDim.x * blockDim.y));
    t.state = RUNNABLE;
    t.shfl_count = 0;
    t.waited = false;
    t.fake_stack = nullptr;
    void **top = (void **)((char *)t.stack + STACK_BYTES);
    *--top = nullptr; /* thread_main's return address: it never returns */
    *--top = (void *)&thread_main;
    for (int r = 0; r < 6; r++)
        *--top = nullptr;
    t.sp = top;
}

/* backwards: the threads resume from the last one down, so that a missing barrier shows whichever way
 * data flows between the threads (every other block) */
void run_block(bool backwards)
{
    for (int i = 0; i < sim.n_threads; i++)
        start_thread(i);
    sim.backwards = backwards;
    for (;;) {
        const int first = next_runnable(-1);
        if (first >= 0)
            resume(first);
        bool live = false;
        for (int i = 0; i < sim.n_threads && !live; i++)
            live = sim.threads[i].state != DONE;
        if (!live)
            return;
        if (first < 0 && !release_barriers())
            die("deadlock: threads wait at a __syncthreads() that the others never reach");
    }
}

unsigned long gcd(unsigned long a, unsigned long b)
{
    while (b) {
        const unsigned long t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* The limits of compute capability 9.0. */
bool shape_ok(dim3 grid, dim3 block)
{
    const unsigned long threads = (unsigned long)block.x * block.y * block.z;
    return grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 &&
           grid.z <= 65535 && block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 && block.y <= 1024 &&
           block.z <= 64 && threads <= 1024;
}

} // namespace

namespace cudasim {

void run(dim3 grid, dim3 block, void (*body)(void *), void *ctx, bool dependent)
{
    /* For timing the host's side of steps (docs/cuda.md, steps as graphs): no kernel runs, so what a
     * step costs is the backend's bookkeeping and the copies. */
    static const bool skip = getenv("CUDASIM_SKIP_KERNELS") != NULL;
    if (skip)
        return;
    sim.dependent = dependent;
    if (!shape_ok(grid, block)) {
        sim.last_error = cudaErrorInvalidConfiguration;
        return;
    }
    sim.n_threads = (int)(block.x * block.y * block.z);
    reserve_threads(sim.n_threads);
    sim.body = body;
    sim.ctx = ctx;
    gridDim = grid;
    blockDim = block;
    /* block i of the launch's order: (start + i * stride) mod n, a stride coprime with n (else 1) */
    const unsigned long n = (unsigned long)grid.x * grid.y * grid.z, launch = sim.launches++;
    static const unsigned long primes[] = {7919, 104729, 3, 65537, 5};
    unsigned long stride = primes[launch % (sizeof primes / sizeof primes[0])] % n;
    if (stride == 0 || gcd(stride, n) != 1)
        stride = 1;
    const unsigned long start = (launch * 2654435761u) % n;
    for (unsigned long i = 0; i < n; i++) {
        const unsigned long b = (start + i * stride) % n;
        blockIdx = dim3((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y));
        run_block(i % 2 == 1);
    }
}

void grid_wait()
{
    if (sim.cur < 0)
        die("cuda_grid_wait outside a kernel");
    sim.threads[sim.cur].waited = true;
}

/* A warp's exchange: the running thread gives bits and, once every lane of its warp has, gets the row
 * of the 32 values given (valid until the warp's next exchange but one). */
static const uint64_t *exchange(unsigned mask, uint64_t bits, const char *what)
{
    if (sim.cur < 0)
        die(what);
    check_waited("a shuffle before cuda_grid_wait in a programmatic dependent");
    if (mask != 0xffffffffu || sim.n_threads % WARP)
        die("only full-mask shuffles of whole warps are simulated");
    const int i = sim.cur;
    sim_thread &t = sim.threads[i];
    sim_warp &w = sim.warps[i / WARP];
    const unsigned row = t.shfl_count++ & 1u;
    w.xch[row][i % WARP] = bits;
    t.state = AT_SHFL;
    yield_thread(false);
    return w.xch[row];
}

uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask)
{
    if (lane_mask < 0 || lane_mask >= WARP)
        die("__shfl_xor_sync lane mask out of range");
    return exchange(mask, bits, "__shfl_xor_sync outside a kernel")[(sim.cur % WARP) ^ lane_mask];
}

uint64_t shfl(unsigned mask, uint64_t bits, int src_lane)
{
    if (src_lane < 0 || src_lane >= WARP)
        die("__shfl_sync source lane out of range");
    return exchange(mask, bits, "__shfl_sync outside a kernel")[src_lane];
}

/* Byte i % 4 of register r of lane l, as a signed value. */
static int frag_byte(const uint32_t (*frag)[6], int l, int r, int i)
{
    return (int)(int8_t)(frag[l][r] >> (8 * (i % 4)));
}

void mma_s8(int k, int d[4], const uint32_t *a, const uint32_t *b)
{
    if (sim.cur < 0)
        die("mma outside a kernel");
    if (sim.n_threads % WARP)
        die("mma needs whole warps");
    check_waited("an mma before cuda_grid_wait in a programmatic dependent");
    const int i = sim.cur, lane = i % WARP, na = k == 32 ? 4 : 2, nb = k == 32 ? 2 : 1;
    sim_thread &t = sim.threads[i];
    sim_warp &w = sim.warps[i / WARP];
    const unsigned row = t.shfl_count++ & 1u;
    for (int r = 0; r < na; r++)
        w.frag[row][lane][r] = a[r];
    for (int r = 0; r < nb; r++)
        w.frag[row][lane][4 + r] = b[r];
    t.state = AT_SHFL;
    yield_thread(false);
    /* element (m, kk) of A: lane 4 (m % 8) + (kk % 16) / 4, register (m >= 8) + 2 (kk >= 16), byte kk % 4;
     * element (kk, n) of B: lane 4 n + (kk % 16) / 4, register kk >= 16, byte kk % 4 */
    const uint32_t(*f)[6] = w.frag[row];
    const int g = lane / 4, tq = lane % 4;
    for (int j = 0; j < 4; j++) {
        const int m = g + 8 * (j / 2), n = 2 * tq + j % 2;
        int s = 0;
        for (int kk = 0; kk < k; kk++) {
            const int src = (kk % 16) / 4;
            s += frag_byte(f, 4 * (m % 8) + src, (m >= 8) + 2 * (kk >= 16), kk) *
                 frag_byte(f, 4 * n + src, 4 + (kk >= 16), kk);
        }
        d[j] = s;
    }
}

} // namespace cudasim

void __syncthreads(void)
{
    if (sim.cur < 0)
        die("__syncthreads outside a kernel");
    check_waited("a barrier before cuda_grid_wait in a programmatic dependent");
    sim.threads[sim.cur].state = AT_SYNC;
    yield_thread(false);
}

/* ---------------------------------------------------------------------------------------------- */
/* Runtime API: one device, memory on the host heap, every operation complete when it returns.      */

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    const cudaError_t e = sim.last_error;
    sim.last_error = cudaSuccess;
    return e;
}

/* Live allocations, base -> bytes: device memory (cudaMalloc) and page-locked host memory
 * (cudaMallocHost). */
typedef std::map<uintptr_t, size_t> registry;
static registry allocations, pinned;

/* Whether [p, p + bytes] lies in one allocation of r (its end included: a pointer just past it). */
static bool in_registry(const registry &r, const void *p, size_t bytes)
{
    const uintptr_t a = (uintptr_t)p;
    auto it = r.upper_bound(a);
    if (it == r.begin())
        return false;
    --it;
    return a - it->first <= it->second && bytes <= it->second - (a - it->first);
}

static bool is_device(const void *p, size_t bytes)
{
    return in_registry(allocations, p, bytes);
}

void cudasim::prefetch(const void *p)
{
    if (sim.cur < 0)
        die("cuda_prefetch_l2 outside a kernel");
    if (!is_device(p, 1))
        die("cuda_prefetch_l2 of a byte outside device memory");
}

static bool is_pinned(const void *p, size_t bytes)
{
    return in_registry(pinned, p, bytes);
}

/* posix_memalign'd memory entered in r (ASan sees every byte past `bytes` as out of bounds). */
static cudaError_t registered_alloc(registry &r, void **p, size_t bytes, size_t align)
{
    if (posix_memalign(p, align, bytes ? bytes : 1)) {
        *p = nullptr;
        return sim.last_error = cudaErrorMemoryAllocation;
    }
    r[(uintptr_t)*p] = bytes;
    return cudaSuccess;
}

static cudaError_t registered_free(registry &r, void *p, const char *stray)
{
    if (!p)
        return cudaSuccess;
    if (!r.erase((uintptr_t)p))
        die(stray);
    free(p);
    return cudaSuccess;
}

void cudasim::check_device_arg(const void *p, int arg)
{
    if (p && !is_device(p, 0)) {
        fprintf(stderr, "cudasim: kernel argument %d (%p) is not device memory\n", arg, p);
        abort();
    }
}

struct sim_node {
    const void *kind;
    std::function<void()> run;
};

struct CUstream_st {
    unsigned flags;
    bool capturing;
    cudaStreamCaptureMode mode;
    std::vector<sim_node> nodes;
};

struct CUgraph_st {
    std::vector<sim_node> nodes;
};

struct CUgraphExec_st {
    std::shared_ptr<const std::vector<sim_node> > nodes; /* shared with its launches not run yet */
};

struct CUevent_st {
    double ms;
    bool recorded; /* complete: recorded with nothing pending before it, or reached */
};

/* Graph launches not run yet, each with the nodes it had, and the events recorded after them. */
struct pending_item {
    std::shared_ptr<const std::vector<sim_node> > nodes; /* NULL for an event alone */
    cudaEvent_t ev;
};
static std::deque<pending_item> pending;

static void complete(cudaEvent_t ev)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ev->ms = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
    ev->recorded = true;
}

/* Runs the pending launches in order, up to event `until`'s record (all of them when NULL). */
static void run_pending(cudaEvent_t until = NULL)
{
    while (!pending.empty()) {
        pending_item it = std::move(pending.front());
        pending.pop_front();
        for (size_t i = 0; it.nodes && i < it.nodes->size(); i++)
            (*it.nodes)[i].run();
        if (it.ev)
            complete(it.ev);
        if (it.ev && it.ev == until)
            return;
    }
}

static int n_capturing;         /* streams capturing now */
static bool relaxed_capture = true; /* whether all of them capture in relaxed mode */

static void forbid_in_capture(const char *what)
{
    if (n_capturing > 0) {
        fprintf(stderr, "cudasim: %s while a stream is capturing\n", what);
        abort();
    }
}

bool cudasim::record(cudaStream_t st, const void *kind, std::function<void()> node)
{
    if (!st || !st->capturing) { /* runs at once, after the graphs launched before it */
        run_pending();
        return false;
    }
    st->nodes.push_back(sim_node{kind, std::move(node)});
    return true;
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    forbid_in_capture("cudaMallocHost");
    return registered_alloc(pinned, p, bytes, 4096);
}

cudaError_t cudaFreeHost(void *p)
{
    forbid_in_capture("cudaFreeHost");
    run_pending();
    return registered_free(pinned, p, "cudaFreeHost of memory that cudaMallocHost did not return");
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (n_capturing > 0 && !relaxed_capture)
        die("cudaMalloc during a stream capture that is not in relaxed mode");
    const cudaError_t e = registered_alloc(allocations, p, bytes, 256); /* cudaMalloc's alignment */
    if (e == cudaSuccess) /* a GPU's new memory holds anything: here NaNs (and -1 as integers), never zeros */
        memset(*p, 0xff, bytes);
    return e;
}

cudaError_t cudaFree(void *p)
{
    forbid_in_capture("cudaFree");
    run_pending();
    return registered_free(allocations, p, "cudaFree of memory that cudaMalloc did not return");
}

static const char copy_node = 0, set_node = 0; /* the kinds of copy and memset nodes */

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t st)
{
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice,
               src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (is_device(dst, bytes) != dst_dev || is_device(src, bytes) != src_dev)
        die("cudaMemcpyAsync: the pointers do not match the copy's direction (or run past an allocation)");
    if (st && st->capturing && ((!dst_dev && !is_pinned(dst, bytes)) || (!src_dev && !is_pinned(src, bytes))))
        die("cudaMemcpyAsync: a captured copy from or to pageable host memory");
    if (!cudasim::record(st, &copy_node, [dst, src, bytes] { memmove(dst, src, bytes); }))
        memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t st)
{
    if (!is_device(p, bytes))
        die("cudaMemsetAsync outside device memory");
    if (!cudasim::record(st, &set_node, [p, value, bytes] { memset(p, value, bytes); }))
        memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags)
{
    *st = new (std::nothrow) CUstream_st{flags, false, cudaStreamCaptureModeGlobal, {}};
    return *st ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaStreamDestroy(cudaStream_t st)
{
    if (st && st->capturing)
        die("cudaStreamDestroy of a capturing stream");
    run_pending();
    delete st;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t)
{
    forbid_in_capture("cudaStreamSynchronize");
    run_pending();
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    forbid_in_capture("cudaDeviceSynchronize");
    run_pending();
    return cudaSuccess;
}

cudaError_t cudaProfilerStart(void)
{
    forbid_in_capture("cudaProfilerStart");
    run_pending();
    return cudaSuccess;
}

cudaError_t cudaProfilerStop(void)
{
    forbid_in_capture("cudaProfilerStop");
    run_pending();
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t st, enum cudaStreamCaptureMode mode)
{
    if (!st || st->capturing)
        return sim.last_error = cudaErrorInvalidValue;
    st->capturing = true;
    st->mode = mode;
    st->nodes.clear();
    n_capturing++;
    relaxed_capture = relaxed_capture && mode == cudaStreamCaptureModeRelaxed;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t *graph)
{
    if (!st || !st->capturing)
        return sim.last_error = cudaErrorInvalidValue;
    st->capturing = false;
    if (--n_capturing == 0)
        relaxed_capture = true;
    *graph = new CUgraph_st{std::move(st->nodes)};
    st->nodes.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t st, enum cudaStreamCaptureStatus *status)
{
    *status = st && st->capturing ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long)
{
    forbid_in_capture("cudaGraphInstantiate");
    *exec = new CUgraphExec_st{std::make_shared<const std::vector<sim_node> >(graph->nodes)};
    return cudaSuccess;
}

cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo *info)
{
    bool same = exec->nodes->size() == graph->nodes.size();
    for (size_t i = 0; same && i < graph->nodes.size(); i++)
        same = (*exec->nodes)[i].kind == graph->nodes[i].kind;
    if (info)
        info->result = same ? 0 : 1;
    if (!same)
        return sim.last_error = cudaErrorGraphExecUpdateFailure;
    exec->nodes = std::make_shared<const std::vector<sim_node> >(graph->nodes);
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t st)
{
    if (st && st->capturing)
        die("cudaGraphLaunch into a capturing stream");
    pending.push_back(pending_item{exec->nodes, NULL});
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *ev)
{
    *ev = (cudaEvent_t)calloc(1, sizeof(CUevent_st));
    return *ev ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned)
{
    return cudaEventCreate(ev);
}

cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    for (pending_item &it : pending) /* CUDA lets an event go before it completes */
        if (it.ev == ev)
            it.ev = NULL;
    free(ev);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st)
{
    if (st && st->capturing)
        die("cudaEventRecord into a capturing stream (event nodes are not simulated)");
    for (pending_item &it : pending) /* recorded again: it completes only where it is now */
        if (it.ev == ev)
            it.ev = NULL;
    ev->recorded = false;
    if (pending.empty())
        complete(ev);
    else
        pending.push_back(pending_item{NULL, ev});
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev)
{
    forbid_in_capture("cudaEventSynchronize");
    for (const pending_item &it : pending)
        if (it.ev == ev) {
            run_pending(ev);
            break;
        }
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t from, cudaEvent_t to)
{
    if (!from->recorded || !to->recorded)
        return cudaErrorInvalidResourceHandle;
    *ms = (float)(to->ms - from->ms);
    return cudaSuccess;
}

/* ---------------------------------------------------------------------------------------------- */
/* cuBLAS (cublas_v2.h)                                                                           */

struct cublasContext {
    cudaStream_t st;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
    *handle = new (std::nothrow) cublasContext{nullptr};
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t st)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->st = st;
    return CUBLAS_STATUS_SUCCESS;
}

/* Element (i, j) of op(M), M column-major with leading dimension ld, of type t. */
static float gemm_elem(const void *m, cudaDataType t, bool trans, int ld, int i, int j)
{
    const size_t at = trans ? (size_t)j + (size_t)i * ld : (size_t)i + (size_t)j * ld;
    return t == CUDA_R_16F ? __half2float(((const __half *)m)[at]) : ((const float *)m)[at];
}

/* Bytes of an operand whose op() is rows x cols: its stored columns are ld apart. */
static size_t gemm_bytes(cudaDataType t, bool trans, int ld, int rows, int cols)
{
    const size_t stored_rows = trans ? cols : rows, stored_cols = trans ? rows : cols;
    return ((stored_cols - 1) * (size_t)ld + stored_rows) * (t == CUDA_R_16F ? 2 : 4);
}

static const char gemm_node = 0;

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (Atype != Btype || (Atype != CUDA_R_16F && Atype != CUDA_R_32F) || Ctype != CUDA_R_32F ||
        computeType != CUBLAS_COMPUTE_32F || algo != CUBLAS_GEMM_DEFAULT)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
    if (m <= 0 || n <= 0 || k <= 0 || lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!is_device(A, gemm_bytes(Atype, ta, lda, m, k)) || !is_device(B, gemm_bytes(Btype, tb, ldb, k, n)) ||
        !is_device(C, gemm_bytes(Ctype, false, ldc, m, n)))
        die("cublasGemmEx: an operand is not device memory (or runs past its allocation)");
    const float a = *(const float *)alpha, b = *(const float *)beta;
    auto run = [=] {
        /* op(A)'s rows and op(B)'s columns as contiguous floats first, so that each sum is a plain loop */
        std::vector<float> ra((size_t)m * k), cb((size_t)n * k);
        for (int i = 0; i < m; i++)
            for (int l = 0; l < k; l++)
                ra[(size_t)i * k + l] = gemm_elem(A, Atype, ta, lda, i, l);
        for (int j = 0; j < n; j++)
            for (int l = 0; l < k; l++)
                cb[(size_t)j * k + l] = gemm_elem(B, Btype, tb, ldb, l, j);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                const float *x = &ra[(size_t)i * k], *y = &cb[(size_t)j * k];
                float sum = 0.0f;
                for (int l = 0; l < k; l++)
                    sum += x[l] * y[l];
                float *c = (float *)C + (size_t)i + (size_t)j * ldc;
                *c = b == 0.0f ? a * sum : a * sum + b * *c;
            }
    };
    if (!cudasim::record(handle->st, &gemm_node, run))
        run();
    return CUBLAS_STATUS_SUCCESS;
}
