/* The CUDA backend: kernels/backend.h on one GPU.
 *
 * Tensors live in device memory (cudaMalloc); weights are uploaded once by weight_from_host and stay
 * in their GGUF encoding. Every op is enqueued on the backend's one stream and returns without
 * waiting; rows_to_host waits for the stream, so results reach the host in order. Host arrays that
 * ops take (token ids, positions) are copied before the op returns: cudaMemcpyAsync from pageable
 * memory stages the bytes before it returns, and rows_from_host waits for its copy.
 *
 * Steps as graphs: the first step of a shape runs op by op (it sizes the scratch buffers). The next
 * two are recorded, one on each stage (below): between step_begin and step_end the stream is captured
 * (cudaStreamBeginCapture), and step_end launches what it recorded as one graph, updating the
 * executable graph kept for the shape and stage (cudaGraphExecUpdate) instead of building one. While
 * recording, every launch and copy also goes into the shape's trace (cuda_ops.h: the words of each
 * node). The steps after that are replayed: their
 * ops launch nothing and capture nothing, they only trace and stage their host arrays, and when the
 * trace equals the recorded one, step_end launches the kept graph as it is. That is what pays: a small
 * model's decode step is bound by the host's launches, and capturing them costs the host nearly as
 * much as launching them. For a replay to find the same nodes, what changes from step to step lives
 * where the graph reads it when it runs, not in the launches: host arrays (token ids, the RoPE table)
 * are staged in page-locked memory its copies read, the positions of store_rows and attention go into
 * a block of step values copied in by the graph's first node, and attention's grid covers a power of
 * two of chunks. Steps take two stages in turn, so that the host can stage a step (a draft's next
 * pass, whose token stays on the device) while the graph of the one before still reads its own. A
 * replay whose trace differs (other tensors, a longer cache's grid, an op that waits
 * for the device somewhere else) has run nothing: step_end says `again`, the caller issues the step
 * once more, and it is recorded anew. An op that waits for the device or returns data (argmax,
 * rows_to_host, allocation...) ends a recording early (what was recorded runs first, the rest of the
 * step op by op); a replay reaching it where the recording ended runs the graph there. Only with
 * kern_backend_config.graphs (opt-in until timed on a GPU).
 *
 * Every op runs the shared argument check of kernels/backend.h first (so both backends refuse the
 * same calls with the same codes), then this backend's own limits (types, 32-bit sizes, head_dim).
 * A CUDA failure comes back as SPEC_E_NOMEM (allocation) or SPEC_E_IO (anything else). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_profiler_api.h>

extern "C" {
#include "common/err.h"
}
#include "kernels/cuda/backend_cuda.h"
#include "kernels/cuda/cuda_ops.h"

#define CUDA_GRAPHS 64             /* shapes of steps kept as executable graphs */
#define CUDA_STAGE_BYTES (1 << 18) /* per recorded step; past it the step runs on op by op */
#define CUDA_STEP_VALUES 256       /* distinct positions a recorded step reads from device memory */
#define CUDA_STAGES 2              /* recorded steps' stages, in turn: the host stages a step while the
                                    * graph of the one before still reads its own */

/* The executable graph kept for a step shape. */
struct cuda_graph {
    uint64_t shape;
    int stage;            /* the stage its copies read: a shape has a graph for each */
    cudaGraphExec_t exec; /* NULL until the shape's first recorded step */
    unsigned long used;   /* for eviction: the least recently used goes */
    bool set;
    uint64_t *trace;      /* the recording's nodes (cuda_ops.h), each its count of words, then its words */
    int n_trace, trace_cap; /* words */
    int n_nodes;
    bool replayable;      /* trace stands for every node of exec */
};

/* How the ops of the current step run. */
enum cuda_step_mode {
    STEP_OPS,    /* each as it comes */
    STEP_RECORD, /* captured into a graph, and traced */
    STEP_REPLAY, /* traced only, to run the kept graph */
};

/* A traced step's state; the traces of all of this thread's backends in such a step form a list. */
struct cuda_trace {
    cudaStream_t st;
    struct cuda_graph *g;
    bool replaying;
    int at;       /* replaying: the trace's words that matched the recording so far */
    bool invalid; /* the trace cannot stand for the graph: a replayed node differed, or a recorded one
                   * could not be kept */
    struct cuda_trace *next;
};

struct cuda_backend {
    struct kern_backend base; /* first: the interface's pointer is this struct's */
    cudaStream_t stream;
    uint64_t step_shape;  /* the shape of the step begun (step_begin) */
    struct cuda_act act;  /* matmul: converted activations, kept until device memory is written */
    bool tensor_cores;    /* kern_backend_config.tensor_cores: quantised matmuls on int8 tensor cores */
    bool join_sequences;  /* a step's sequences share the store and attention launches (off with
                           * SPECD_CUDA_JOIN=0, for the A/B: each sequence's launch alone) */
    struct cuda_mem mem;  /* every byte of device memory below, the tensors', weights' and caches' too */
    struct cuda_blas *blas; /* kern_backend_config.blas_prefill: a prefill's matmuls through cuBLAS */
    struct cuda_buf part; /* attention: per-chunk partial results */
    struct cuda_buf counters; /* attention and argmax: their blocks' arrival counters (cuda_reserve_counters) */
    struct cuda_buf ids;  /* get_rows: token ids */
    struct cuda_buf rope; /* rope: the (cos, sin) table of the positions below */
    struct cuda_buf pick; /* argmax: each row's id and probability, the slices' partials */
    struct cuda_buf sample; /* sampling: the descriptors, tokens and uniforms of a call, then its results */
    uint8_t *sample_host;   /* their host copy */
    size_t sample_host_cap;
    /* The positions and parameters the device table was made for: every layer's q and k of one
     * forward step rotate by the same positions, so the table is computed and uploaded once. */
    int32_t *rope_pos;
    float *rope_ff;
    int rope_n, rope_cap, rope_n_rot;
    float rope_base, rope_scale;
    bool rope_has_ff;
    float *rope_host; /* staging for the table */
    size_t rope_host_cap;
    /* profiling marks: events recorded on the stream, reused after marks_reset */
    cudaEvent_t *events;
    int n_marks, n_events;
    /* steps as graphs */
    bool graphs; /* kern_backend_config.graphs; off: every step runs op by op */
    enum cuda_step_mode step;
    struct cuda_trace trace;
    struct cuda_graph graph[CUDA_GRAPHS];
    unsigned long clock;
    /* page-locked copies of what a recorded step reads from the host: first its step values (copied to
     * `values` by its first node), then the host arrays of its ops. Steps take the stages in turn, and
     * stage_read[i] follows the last graph that reads stages[i]: a step waits for the graph before the
     * one before it, not for the one before, so the host issues a step while the GPU runs the last. */
    uint8_t *stages[CUDA_STAGES];
    cudaEvent_t stage_read[CUDA_STAGES];
    int stage_next;
    uint8_t *stage; /* the step's */
    size_t stage_used;
    int *values; /* device memory: CUDA_STEP_VALUES ints */
    int n_values;
    struct kern_step_stats stats;
};

static struct cuda_backend *cuda_of(struct kern_backend *be)
{
    return (struct cuda_backend *)be;
}

static int err_of(cudaError_t e)
{
    if (e == cudaSuccess)
        return SPEC_OK;
    cudaGetLastError(); /* clear a non-sticky error so that later calls report their own */
    return e == cudaErrorMemoryAllocation ? SPEC_E_NOMEM : SPEC_E_IO;
}

cudaError_t cuda_mem_alloc(struct cuda_mem *m, void **p, size_t bytes)
{
    const cudaError_t e = m->cap && bytes > m->cap - m->used ? cudaErrorMemoryAllocation : cudaMalloc(p, bytes);
    if (e == cudaSuccess)
        m->used += bytes;
    else
        m->short_of = true;
    return e;
}

void cuda_mem_free(struct cuda_mem *m, void *p, size_t bytes)
{
    if (!p)
        return;
    cudaFree(p);
    m->used -= bytes;
}

cudaError_t cuda_buf_reserve(cudaStream_t st, struct cuda_buf *b, size_t bytes)
{
    if (bytes <= b->cap)
        return cudaSuccess;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    cudaError_t e = cudaStreamIsCapturing(st, &capture);
    if (e != cudaSuccess)
        return e;
    if (capture == cudaStreamCaptureStatusNone) {
        cuda_buf_release(b);
    } else if (b->p) {
        int i = 0;
        while (i < CUDA_BUF_RETIRED && b->retired[i])
            i++;
        if (i == CUDA_BUF_RETIRED) { /* short of places to keep it: the step ran short, as of memory */
            b->mem->short_of = true;
            return cudaErrorMemoryAllocation;
        }
        b->retired[i] = b->p;
        b->retired_cap[i] = b->cap;
        b->p = NULL;
        b->cap = 0;
    }
    void *p;
    if ((e = cuda_mem_alloc(b->mem, &p, bytes)) != cudaSuccess)
        return e;
    b->p = p;
    b->cap = bytes;
    return cudaSuccess;
}

void cuda_buf_release(struct cuda_buf *b)
{
    bool any = b->p != NULL;
    for (int i = 0; i < CUDA_BUF_RETIRED; i++)
        any = any || b->retired[i];
    if (!any)
        return;
    cudaDeviceSynchronize(); /* kernels in flight may still read them */
    cuda_mem_free(b->mem, b->p, b->cap);
    for (int i = 0; i < CUDA_BUF_RETIRED; i++) {
        cuda_mem_free(b->mem, b->retired[i], b->retired_cap[i]);
        b->retired[i] = NULL;
    }
    b->p = NULL;
    b->cap = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Steps as graphs                                                                                */

thread_local struct cuda_trace *cuda_tracing;
bool cuda_dependent_launches = true;
bool cuda_prefetch_weights = true;
bool cuda_attention_tiles = true;
bool cuda_after_matmul = true;
bool cuda_wide_rows = true;

bool cuda_trace_node(cudaStream_t st, const cuda_node &nd)
{
    struct cuda_trace *t = cuda_tracing;
    while (t && t->st != st)
        t = t->next;
    if (!t)
        return true;
    struct cuda_graph *g = t->g;
    if (nd.n > CUDA_NODE_WORDS) { /* cannot stand in the trace: the step runs, and is never replayed */
        t->invalid = true;
        return !t->replaying;
    }
    const int words = 1 + nd.n;
    if (t->replaying) {
        if (!t->invalid && words <= g->n_trace - t->at && g->trace[t->at] == (uint64_t)nd.n &&
            !memcmp(g->trace + t->at + 1, nd.w, (size_t)nd.n * sizeof nd.w[0]))
            t->at += words;
        else
            t->invalid = true;
        return false;
    }
    if (words > g->trace_cap - g->n_trace) {
        int cap = g->trace_cap ? 2 * g->trace_cap : 16384;
        while (cap - g->n_trace < words)
            cap *= 2;
        uint64_t *grown = (uint64_t *)realloc(g->trace, (size_t)cap * sizeof *grown);
        if (!grown) {
            t->invalid = true; /* the step still runs; the next one is recorded again */
            return true;
        }
        g->trace = grown;
        g->trace_cap = cap;
    }
    g->trace[g->n_trace] = (uint64_t)nd.n;
    memcpy(g->trace + g->n_trace + 1, nd.w, (size_t)nd.n * sizeof nd.w[0]);
    g->n_trace += words;
    g->n_nodes++;
    return true;
}

/* The entry kept for a step shape and stage, or NULL. */
static struct cuda_graph *graph_of(struct cuda_backend *cb, uint64_t shape, int stage)
{
    for (int i = 0; i < CUDA_GRAPHS; i++)
        if (cb->graph[i].set && cb->graph[i].shape == shape && cb->graph[i].stage == stage)
            return &cb->graph[i];
    return NULL;
}

/* Launches a step's graph; its stage is free again once the graph has run. */
static cudaError_t graph_launch(struct cuda_backend *cb, const struct cuda_graph *g)
{
    const cudaError_t e = cudaGraphLaunch(g->exec, cb->stream);
    return e == cudaSuccess ? cudaEventRecord(cb->stage_read[g->stage], cb->stream) : e;
}

/* The rest of the step runs op by op. */
static void step_ops(struct cuda_backend *cb)
{
    if (cb->step == STEP_OPS)
        return;
    cb->step = STEP_OPS;
    struct cuda_trace **link = &cuda_tracing;
    while (*link && *link != &cb->trace)
        link = &(*link)->next;
    if (*link)
        *link = cb->trace.next;
}

/* Ends a recording and launches what it recorded, as the kept graph of its shape. */
static int record_launch(struct cuda_backend *cb)
{
    struct cuda_graph *g = cb->trace.g;
    const bool traced = !cb->trace.invalid;
    step_ops(cb);
    cudaGraph_t recorded = NULL;
    cudaError_t e = cudaStreamEndCapture(cb->stream, &recorded);
    if (e == cudaSuccess) {
        cudaGraphExecUpdateResultInfo info;
        if (g->exec && cudaGraphExecUpdate(g->exec, recorded, &info) != cudaSuccess) {
            cudaGetLastError(); /* another sequence of kernels: build it anew */
            cudaGraphExecDestroy(g->exec);
            g->exec = NULL;
        }
        if (!g->exec)
            e = cudaGraphInstantiate(&g->exec, recorded, 0);
        if (e == cudaSuccess)
            e = graph_launch(cb, g);
    }
    if (recorded)
        cudaGraphDestroy(recorded);
    g->replayable = e == cudaSuccess && traced;
    cb->stats.recorded++;
    cb->stats.nodes = g->n_nodes;
    return err_of(e);
}

/* Forgets what the host keeps about device memory (the kept conversion, the RoPE table): a recorded or
 * replayed step starts without it, so that the same step issues the same nodes, and an abandoned
 * replay never made it true. */
static void forget_device_state(struct cuda_backend *cb)
{
    cuda_act_forget(&cb->act);
    cb->rope_n = 0;
    /* Each output conversion kept swaps act's two buffers (cuda_act_out_keep): the step starts with
     * them as the step before it started, so that it uses the ones its recording did (a decode step
     * with norms after its matmuls swaps an odd number of times). */
    struct cuda_act *a = &cb->act;
    if (a->swaps % 2) {
        const struct cuda_buf first = a->next;
        a->next = a->buf;
        a->buf = first;
    }
    a->swaps = 0;
}

/* A replay that cannot run its graph: nothing of the step ran, and the shape is recorded next, on the
 * same stage (nothing reads what the step staged). Its graphs of the other stages were recorded from the
 * same ops, so they cannot serve either. */
static void replay_abandon(struct cuda_backend *cb)
{
    const struct cuda_graph *g = cb->trace.g;
    for (int s = 0; s < CUDA_STAGES; s++) {
        struct cuda_graph *other = graph_of(cb, g->shape, s);
        if (other)
            other->replayable = false;
    }
    cb->stage_next = g->stage;
    forget_device_state(cb);
    step_ops(cb);
    cb->stats.repeated++;
}

/* Before an op that waits for the device or returns data: what the step has so far runs first. A
 * replay can run its graph only where the recording ended; elsewhere its ops are void from here on
 * (SPEC_E_CANCELLED), and step_end says `again`. */
static int settle(struct cuda_backend *cb)
{
    SPEC_TRY(err_of(cuda_act_flush(cb->stream, &cb->act)));
    if (cb->step == STEP_RECORD)
        return record_launch(cb);
    if (cb->step != STEP_REPLAY)
        return SPEC_OK;
    struct cuda_trace *t = &cb->trace;
    if (t->invalid || t->at != t->g->n_trace) {
        t->invalid = true;
        return SPEC_E_CANCELLED;
    }
    step_ops(cb);
    cb->stats.replayed++;
    return err_of(graph_launch(cb, t->g));
}

/* A copy from host memory as a node of the step: staged while recording or replaying (the graph
 * copies when it runs, and the caller's array may change before). */
static int copy_in(struct cuda_backend *cb, void *dst, const void *src, size_t bytes)
{
    if (cb->step != STEP_OPS) {
        cuda_node nd;
        nd.n = 0;
        cuda_trace_args(nd, dst, src, bytes);
        if (!cuda_trace_node(cb->stream, nd))
            return SPEC_OK;
    }
    return err_of(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->stream));
}

static int cuda_step_begin(struct kern_backend *be, uint64_t shape)
{
    struct cuda_backend *cb = cuda_of(be);
    cb->stats.steps++;
    if (!cb->graphs || cb->step != STEP_OPS)
        return SPEC_OK;
    cb->step_shape = shape;
    cb->mem.short_of = false;
    const int s = cb->stage_next;
    struct cuda_graph *g = graph_of(cb, shape, s);
    if (!g) {
        bool sized = false; /* by a step of the shape on another stage */
        for (int o = 0; o < CUDA_STAGES; o++)
            sized = sized || graph_of(cb, shape, o);
        g = &cb->graph[0];
        for (int i = 1; i < CUDA_GRAPHS; i++)
            if (!cb->graph[i].set || (g->set && cb->graph[i].used < g->used))
                g = &cb->graph[i];
        if (g->exec)
            cudaGraphExecDestroy(g->exec);
        uint64_t *trace = g->trace;
        const int cap = g->trace_cap;
        *g = cuda_graph{shape, s, NULL, ++cb->clock, true, trace, 0, cap, 0, false};
        if (!sized) /* a new shape: this step runs op by op and sizes the buffers */
            return SPEC_OK;
    }
    g->used = ++cb->clock;
    /* a graph is for speed: without the memory to record one, the step runs op by op */
    if ((!cb->stages[s] && err_of(cudaMallocHost((void **)&cb->stages[s], CUDA_STAGE_BYTES))) ||
        (!cb->stage_read[s] && err_of(cudaEventCreateWithFlags(&cb->stage_read[s], cudaEventDisableTiming))) ||
        (!cb->values && err_of(cuda_mem_alloc(&cb->mem, (void **)&cb->values, CUDA_STEP_VALUES * sizeof(int))))) {
        cb->mem.short_of = false;
        return SPEC_OK;
    }
    /* the last graph that read this stage: the step before the last, or earlier */
    const int err = err_of(cudaEventSynchronize(cb->stage_read[s]));
    if (err)
        return err;
    forget_device_state(cb);
    const bool replay = g->replayable && g->exec;
    if (!replay) {
        if (cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
            cudaGetLastError(); /* the step runs op by op */
            return SPEC_OK;
        }
        g->n_trace = 0;
        g->n_nodes = 0;
        g->replayable = false;
    }
    cb->step = replay ? STEP_REPLAY : STEP_RECORD;
    cb->trace = cuda_trace{cb->stream, g, replay, 0, false, cuda_tracing};
    cuda_tracing = &cb->trace;
    cb->stage = cb->stages[s];
    cb->stage_next = (s + 1) % CUDA_STAGES;
    cb->n_values = 0;
    cb->stage_used = CUDA_STEP_VALUES * sizeof(int);
    return copy_in(cb, cb->values, cb->stage, CUDA_STEP_VALUES * sizeof(int));
}

/* The end of a step whose op found no device memory (and failed): nothing recorded or replayed runs, and
 * the shape's next step runs op by op and sizes the buffers anew, as a recording that grows a buffer
 * holds the old one and the new at once. */
static void step_short_of_memory(struct cuda_backend *cb)
{
    if (cb->step == STEP_RECORD) {
        cudaGraph_t recorded = NULL;
        if (cudaStreamEndCapture(cb->stream, &recorded) == cudaSuccess && recorded)
            cudaGraphDestroy(recorded);
        cudaGetLastError();
    }
    step_ops(cb);
    cuda_act_forget(&cb->act); /* what it kept may never have been made */
    cb->rope_n = 0;
    for (int s = 0; s < CUDA_STAGES; s++) {
        struct cuda_graph *g = graph_of(cb, cb->step_shape, s);
        if (g) {
            if (g->exec)
                cudaGraphExecDestroy(g->exec);
            g->exec = NULL;
            g->set = false;
        }
    }
    cb->mem.short_of = false;
}

static int cuda_step_end(struct kern_backend *be, bool *again)
{
    struct cuda_backend *cb = cuda_of(be);
    *again = false;
    if (cb->graphs && cb->mem.short_of) {
        step_short_of_memory(cb);
        return SPEC_OK;
    }
    const bool replaying = cb->step == STEP_REPLAY;
    const int err = settle(cb);
    if (replaying && err == SPEC_E_CANCELLED) {
        replay_abandon(cb);
        *again = true;
        return SPEC_OK;
    }
    return err;
}

static int cuda_step_stats(struct kern_backend *be, struct kern_step_stats *out)
{
    *out = cuda_of(be)->stats;
    return SPEC_OK;
}

/* Where a recorded or replayed step's kernels read a step value (a position) that changes from step
 * to step: in the block its first node copies in. NULL when the step runs op by op or the block is
 * full: the value is then the launch's own. */
static const int *step_value(struct cuda_backend *cb, int64_t value)
{
    if (cb->step == STEP_OPS)
        return NULL;
    int *staged = (int *)cb->stage;
    for (int i = 0; i < cb->n_values; i++)
        if (staged[i] == value)
            return cb->values + i;
    if (cb->n_values == CUDA_STEP_VALUES)
        return NULL;
    staged[cb->n_values] = (int)value;
    return cb->values + cb->n_values++;
}

/* Copies host bytes to device memory in stream order (staged while recording or replaying). */
static int upload(struct cuda_backend *cb, void *dst, const void *src, size_t bytes)
{
    if (cb->step != STEP_OPS) {
        if (cb->stage_used + bytes > CUDA_STAGE_BYTES) {
            const int err = settle(cb);
            if (err)
                return err;
        } else {
            memcpy(cb->stage + cb->stage_used, src, bytes);
            src = cb->stage + cb->stage_used;
            cb->stage_used += (bytes + 15) & ~(size_t)15;
        }
    }
    return copy_in(cb, dst, src, bytes);
}

/* For an op about to write device memory: what waits in act (a norm, a rope and its stores,
 * attentions) runs first (the op may read or overwrite its tensors), and matmuls can no longer reuse a
 * kept conversion. */
static int writing(struct cuda_backend *cb)
{
    const int err = err_of(cuda_act_flush(cb->stream, &cb->act));
    cuda_act_forget(&cb->act);
    return err;
}

/* For an op about to write device memory that waits in act with what waits there (joins: its launch
 * will follow theirs), only the kept conversion is forgotten; any other op runs what waits first. */
static int writing_after(struct cuda_backend *cb, bool joins)
{
    if (!joins)
        return writing(cb);
    cuda_act_forget(&cb->act);
    return SPEC_OK;
}

static char *row_ptr(const struct kern_tensor *t, int64_t r)
{
    return (char *)t->data + (size_t)r * t->row_bytes;
}

/* Element stride of an F32 tensor's rows. */
static size_t fstride(const struct kern_tensor *t)
{
    return t->row_bytes / sizeof(float);
}

/* ---------------------------------------------------------------------------------------------- */
/* Memory                                                                                         */

/* Kernels index rows and elements with 32-bit ints. */
static int tensor_shape(enum spec_dtype type, int64_t ne0, int64_t ne1, size_t *row_bytes, size_t *total)
{
    if (ne0 > INT32_MAX || ne1 > INT32_MAX)
        return SPEC_E_RANGE;
    return kern_tensor_bytes(type, ne0, ne1, row_bytes, total);
}

static int cuda_tensor_alloc(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                             struct kern_tensor *out)
{
    size_t row_bytes, total;
    int err = tensor_shape(type, ne0, ne1, &row_bytes, &total);
    if (err || (err = settle(cuda_of(be))))
        return err;
    void *data;
    struct cuda_backend *cb = cuda_of(be);
    if ((err = err_of(cuda_mem_alloc(&cb->mem, &data, total))))
        return err;
    /* zeroed, as the CPU backend's tensors are */
    if ((err = writing(cb)) || (err = err_of(cudaMemsetAsync(data, 0, total, cb->stream)))) {
        cuda_mem_free(&cb->mem, data, total);
        return err;
    }
    *out = (struct kern_tensor){.type = type, .ne0 = ne0, .ne1 = ne1, .row_bytes = row_bytes, .data = data,
                                .owned = true};
    return SPEC_OK;
}

static void cuda_tensor_free(struct kern_backend *be, struct kern_tensor *t)
{
    if (!t)
        return;
    if (t->owned) {
        struct cuda_backend *cb = cuda_of(be);
        settle(cb); /* what waits in act (a norm, a rope, attentions), if anything, runs */
        cuda_act_forget(&cb->act);
        cudaStreamSynchronize(cb->stream); /* kernels in flight may still use it */
        cuda_mem_free(&cb->mem, t->data, t->row_bytes * (size_t)t->ne1);
    }
    *t = (struct kern_tensor){};
}

static int cuda_weight_from_host(struct kern_backend *be, enum spec_dtype type, int64_t ne0, int64_t ne1,
                                 const void *host, struct kern_tensor *out)
{
    if (!host)
        return SPEC_E_INVALID_ARG;
    struct kern_tensor t;
    int err = cuda_tensor_alloc(be, type, ne0, ne1, &t);
    if (err)
        return err;
    struct cuda_backend *cb = cuda_of(be);
    const cudaStream_t st = cb->stream; /* the allocation ran writing() */
    const size_t bytes = t.row_bytes * (size_t)t.ne1;
    if ((err = err_of(cudaMemcpyAsync(t.data, host, bytes, cudaMemcpyHostToDevice, st))) ||
        (err = err_of(cudaStreamSynchronize(st)))) {
        cuda_mem_free(&cb->mem, t.data, bytes);
        return err;
    }
    *out = t;
    return SPEC_OK;
}

/* Host rows are packed row_bytes apart, as the tensor's are: one contiguous copy. */
static int cuda_rows_to_host(struct kern_backend *be, const struct kern_tensor *t, int64_t row0, int64_t n,
                             void *host)
{
    int err = kern_rows_check(t, row0, n);
    if (err || n == 0 || (err = settle(cuda_of(be))))
        return err;
    const cudaStream_t st = cuda_of(be)->stream;
    if ((err = err_of(cudaMemcpyAsync(host, row_ptr(t, row0), (size_t)n * t->row_bytes, cudaMemcpyDeviceToHost, st))))
        return err;
    return err_of(cudaStreamSynchronize(st));
}

static int cuda_rows_from_host(struct kern_backend *be, struct kern_tensor *t, int64_t row0, int64_t n,
                               const void *host)
{
    int err = kern_rows_check(t, row0, n);
    struct cuda_backend *cb = cuda_of(be);
    if (err || n == 0 || (err = settle(cb)) || (err = writing(cb)))
        return err;
    const cudaStream_t st = cb->stream;
    if ((err = err_of(cudaMemcpyAsync(row_ptr(t, row0), host, (size_t)n * t->row_bytes, cudaMemcpyHostToDevice, st))))
        return err;
    return err_of(cudaStreamSynchronize(st));
}

/* ---------------------------------------------------------------------------------------------- */
/* Embedding and matmul                                                                           */

static int cuda_get_rows_op(struct kern_backend *be, const struct kern_tensor *table, const int32_t *ids, int n,
                            struct kern_tensor *out)
{
    int err = kern_get_rows_check(table, ids, n, out);
    if (err)
        return err;
    if (!cuda_weight_type_ok(table->type))
        return SPEC_E_UNSUPPORTED;
    struct cuda_backend *cb = cuda_of(be);
    if ((err = writing(cb)) || (err = err_of(cuda_buf_reserve(cb->stream, &cb->ids, (size_t)n * sizeof(int32_t)))))
        return err;
    if ((err = upload(cb, cb->ids.p, ids, (size_t)n * sizeof(int32_t))))
        return err;
    return err_of(cuda_get_rows(cb->stream, table->type, table->data, table->row_bytes, (int)table->ne0,
                                (int)table->ne1, (const int32_t *)cb->ids.p, NULL, n, (float *)out->data, fstride(out)));
}

/* In a recorded step, row0 is a step value: a chain's steps replay the same graphs. */
static int cuda_get_rows_kept_op(struct kern_backend *be, const struct kern_tensor *table,
                                 const struct kern_tensor *ids, int64_t row0, int n, struct kern_tensor *out)
{
    int err = kern_get_rows_kept_check(table, ids, row0, n, out);
    if (err)
        return err;
    if (!cuda_weight_type_ok(table->type))
        return SPEC_E_UNSUPPORTED;
    struct cuda_backend *cb = cuda_of(be);
    if ((err = writing(cb)))
        return err;
    const int *row0_at = step_value(cb, row0);
    const int32_t *first = (const int32_t *)ids->data + (row0_at ? 0 : row0);
    return err_of(cuda_get_rows(cb->stream, table->type, table->data, table->row_bytes, (int)table->ne0,
                                (int)table->ne1, first, row0_at, n, (float *)out->data, fstride(out)));
}

/* mm[0..n)'s weights as the kernels take them; SPEC_E_UNSUPPORTED or SPEC_E_RANGE for what they cannot. */
static int mm_parts(const struct kern_matmul *mm, int n, struct cuda_mm_part *parts)
{
    const enum spec_dtype type = mm[0].w->type;
    if (!cuda_weight_type_ok(type))
        return SPEC_E_UNSUPPORTED;
    if (mm[0].w->ne0 % kern_dtype_info(type)->block_size)
        return SPEC_E_RANGE;
    for (int i = 0; i < n; i++) {
        const struct kern_matmul *m = &mm[i];
        if (m->w->ne1 > INT32_MAX)
            return SPEC_E_RANGE;
        parts[i] = cuda_mm_part{(const uint8_t *)m->w->data, m->w->row_bytes, (int)m->w->ne1,
                                m->bias ? (const float *)m->bias->data : NULL, (float *)m->y->data, fstride(m->y)};
    }
    return SPEC_OK;
}

/* Before matmuls write mm[0..n)'s outputs: one written over the rows whose conversion is kept would make
 * it stale. (The matmuls may then keep a conversion of their input, which no output overlaps, or of
 * their swiglu's output, which is what they write.) */
static void outputs_overwrite(struct cuda_backend *cb, const struct kern_matmul *mm, int n)
{
    const struct cuda_act *a = &cb->act;
    const char *kept = (const char *)a->x;
    const size_t kept_bytes = ((size_t)(a->n - 1) * a->x_stride + (size_t)a->k) * sizeof(float);
    for (int i = 0; i < n && a->valid; i++) {
        const char *out = (const char *)mm[i].y->data;
        const size_t out_bytes = (size_t)mm[i].y->ne1 * mm[i].y->row_bytes;
        if (out < kept + kept_bytes && kept < out + out_bytes)
            cuda_act_forget(&cb->act);
    }
}

/* The matmuls of x by mm[0..n) (checked) in one launch. */
static int matmuls_run(struct cuda_backend *cb, const struct kern_tensor *x, const struct kern_matmul *mm, int n,
                       bool swiglu)
{
    struct cuda_mm_part parts[CUDA_MM_PARTS];
    SPEC_TRY(mm_parts(mm, n, parts));
    outputs_overwrite(cb, mm, n);
    return err_of(cuda_matmul(cb->stream, &cb->act, mm[0].w->type, (int)x->ne0, (const float *)x->data, fstride(x),
                              (int)x->ne1, parts, n, swiglu, cb->tensor_cores));
}

static int cuda_matmul_op(struct kern_backend *be, const struct kern_tensor *w, const struct kern_tensor *x,
                          const struct kern_tensor *bias, struct kern_tensor *y)
{
    const int err = kern_matmul_check(w, x, bias, y);
    if (err)
        return err;
    const struct kern_matmul mm = {w, bias, y};
    return matmuls_run(cuda_of(be), x, &mm, 1, false);
}

static int cuda_matmuls_op(struct kern_backend *be, const struct kern_tensor *x, const struct kern_matmul *mm, int n,
                           enum kern_matmuls_then then)
{
    const int err = kern_matmuls_check(x, mm, n, then);
    if (err)
        return err;
    return matmuls_run(cuda_of(be), x, mm, n, then == KERN_MATMULS_SWIGLU);
}

/* Through cuBLAS with blas_prefill. Its library launches kernels this backend cannot trace, so a
 * recorded step ends before it (settle) and the rest of the step runs op by op: a prefill's steps are
 * long and rarely of one shape twice, so recording them would not pay anyway. */
static int cuda_matmuls_prefill_op(struct kern_backend *be, const struct kern_tensor *x, const struct kern_matmul *mm,
                                   int n, enum kern_matmuls_then then)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_matmuls_check(x, mm, n, then);
    if (err)
        return err;
    if (!cb->blas)
        return matmuls_run(cb, x, mm, n, then == KERN_MATMULS_SWIGLU);
    struct cuda_mm_part parts[CUDA_MM_PARTS];
    if ((err = mm_parts(mm, n, parts)) || (err = settle(cb)))
        return err;
    outputs_overwrite(cb, mm, n);
    return err_of(cuda_blas_matmul(cb->stream, cb->blas, mm[0].w->type, (int)x->ne0, (const float *)x->data,
                                   fstride(x), (int)x->ne1, parts, n, then == KERN_MATMULS_SWIGLU));
}

/* ---------------------------------------------------------------------------------------------- */
/* Elementwise and norm                                                                           */

static int cuda_swiglu(struct kern_backend *be, const struct kern_tensor *gate, const struct kern_tensor *up,
                       struct kern_tensor *out)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_eltwise_check(gate, up, out);
    if (err || (err = writing(cb)))
        return err;
    return err_of(cuda_eltwise(cb->stream, CUDA_SWIGLU, (const float *)gate->data, fstride(gate),
                               (const float *)up->data, fstride(up), (float *)out->data, fstride(out), (int)out->ne0,
                               (int)out->ne1));
}

static int cuda_add(struct kern_backend *be, const struct kern_tensor *a, const struct kern_tensor *b,
                    struct kern_tensor *out)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_eltwise_check(a, b, out);
    if (err || (err = writing(cb)))
        return err;
    return err_of(cuda_eltwise(cb->stream, CUDA_ADD, (const float *)a->data, fstride(a),
                               (const float *)b->data, fstride(b), (float *)out->data, fstride(out), (int)out->ne0,
                               (int)out->ne1));
}

static int cuda_rms_norm_op(struct kern_backend *be, struct kern_tensor *x, const struct kern_tensor *residual,
                            const struct kern_tensor *w, float eps, struct kern_tensor *y)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_rms_norm_check(x, residual, w, eps, y);
    if (err)
        return err;
    /* adding the output of the matmul waiting (one row): it waits with it, for that matmul's last block */
    const struct cuda_mm_part *waiting = &cb->act.mm.part[0];
    const bool after_matmul = cb->act.mm_pending && !cb->act.rope_pending && residual &&
                              (const float *)residual->data == waiting->y && fstride(residual) == waiting->y_stride &&
                              x->data != residual->data && x->ne1 == 1 && x->ne0 == waiting->rows;
    if ((err = writing_after(cb, after_matmul)))
        return err;
    /* launched by the next op: with a matmul of y by a quantised weight, in the same kernel */
    cb->act.norm = cuda_norm{(float *)x->data, fstride(x), residual ? (const float *)residual->data : NULL,
                             residual ? fstride(residual) : 0, (const float *)w->data, eps, (float *)y->data,
                             fstride(y), (int)x->ne0, (int)x->ne1};
    cb->act.norm_pending = true;
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE                                                                                           */

/* The CPU backend's table, computed the same way (ggml_rope_cache_init with ext_factor 0 and
 * attn_factor 1: theta multiplied by freq_base^(-2/n_rot) per pair in float, glibc's cosf and sinf)
 * so that rotated values are bit-identical to the CPU's. Reuses the device table when the positions
 * and parameters are the ones it was made for. */
static int rope_table(struct cuda_backend *cb, const int32_t *pos, int n, const struct kern_rope_params *p)
{
    const int n_rot = p->n_rot;
    const bool has_ff = p->freq_factors != NULL;
    if (cb->rope_n == n && cb->rope_n_rot == n_rot && cb->rope_base == p->freq_base &&
        cb->rope_scale == p->freq_scale && cb->rope_has_ff == has_ff &&
        memcmp(cb->rope_pos, pos, (size_t)n * sizeof(int32_t)) == 0 &&
        (!has_ff || memcmp(cb->rope_ff, p->freq_factors, (size_t)(n_rot / 2) * sizeof(float)) == 0))
        return SPEC_OK;

    cb->rope_n = 0; /* invalid until the new table is uploaded */
    const size_t floats = (size_t)n * (size_t)n_rot;
    if (floats > cb->rope_host_cap) {
        float *h = (float *)realloc(cb->rope_host, floats * sizeof(float));
        if (!h)
            return SPEC_E_NOMEM;
        cb->rope_host = h;
        cb->rope_host_cap = floats;
    }
    if (n > cb->rope_cap || n_rot / 2 > cb->rope_cap) {
        const int cap = n > n_rot / 2 ? n : n_rot / 2;
        int32_t *np = (int32_t *)realloc(cb->rope_pos, (size_t)cap * sizeof(int32_t));
        if (np)
            cb->rope_pos = np;
        float *nf = (float *)realloc(cb->rope_ff, (size_t)cap * sizeof(float));
        if (nf)
            cb->rope_ff = nf;
        if (!np || !nf)
            return SPEC_E_NOMEM;
        cb->rope_cap = cap;
    }
    const float theta_scale = powf(p->freq_base, -2.0f / (float)n_rot);
    for (int r = 0; r < n; r++) {
        float *cache = cb->rope_host + (size_t)r * n_rot;
        float theta = (float)pos[r];
        for (int i0 = 0; i0 < n_rot; i0 += 2) {
            const float ff = has_ff ? p->freq_factors[i0 / 2] : 1.0f;
            const float th = p->freq_scale * (theta / ff);
            cache[i0] = cosf(th);
            cache[i0 + 1] = sinf(th);
            theta *= theta_scale;
        }
    }
    int err = err_of(cuda_buf_reserve(cb->stream, &cb->rope, floats * sizeof(float)));
    if (err || (err = upload(cb, cb->rope.p, cb->rope_host, floats * sizeof(float))))
        return err;
    memcpy(cb->rope_pos, pos, (size_t)n * sizeof(int32_t));
    if (has_ff)
        memcpy(cb->rope_ff, p->freq_factors, (size_t)(n_rot / 2) * sizeof(float));
    cb->rope_n = n;
    cb->rope_n_rot = n_rot;
    cb->rope_base = p->freq_base;
    cb->rope_scale = p->freq_scale;
    cb->rope_has_ff = has_ff;
    return SPEC_OK;
}

static int cuda_rope_op(struct kern_backend *be, struct kern_tensor *x, int n_head, int head_dim, const int32_t *pos,
                        const struct kern_rope_params *p)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_rope_check(x, n_head, head_dim, pos, p);
    if (err)
        return err;
    /* a rope of one row waits with the matmul waiting (one row; everything before it is done when its
     * last block runs the rope) */
    const bool after_matmul = cb->act.mm_pending && !cb->act.norm_pending && x->ne1 == 1;
    if ((err = writing_after(cb, after_matmul)))
        return err;
    if ((err = rope_table(cb, pos, (int)x->ne1, p)))
        return err;
    /* launched by the next op: with a store of rows it rotates (K and V into the cache), in one kernel */
    cb->act.rope = cuda_rope{(float *)x->data, fstride(x), (int)x->ne1, n_head, head_dim, p->n_rot,
                             p->mode == KERN_ROPE_NEOX, (const float *)cb->rope.p};
    cb->act.rope_pending = true;
    cb->act.stores.n = 0;
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* KV cache and attention                                                                         */

static int cuda_store_rows_op(struct kern_backend *be, const struct kern_tensor *src, struct kern_tensor *dst,
                              int64_t dst_row0)
{
    int err = kern_store_rows_check(src, dst, dst_row0);
    if (err)
        return err;
    if (dst->type != SPEC_F16 && dst->type != SPEC_F32)
        return SPEC_E_UNSUPPORTED;
    struct cuda_backend *cb = cuda_of(be);
    /* rows of the waiting rope's x (possibly columns past its heads, as V beside K): the store waits
     * with the rope, and the step's other sequences' stores join them, for one launch */
    const struct cuda_rope *rp = &cb->act.rope;
    struct cuda_stores *ss = &cb->act.stores;
    const uintptr_t at = (uintptr_t)src->data, x0 = (uintptr_t)rp->x;
    const size_t off = (at - x0) / sizeof(float), stride = rp->x_stride;
    const bool after_rope = cb->act.rope_pending && ss->n < (cb->join_sequences ? CUDA_STEP_SEQS : 1) &&
                            fstride(src) == stride && at >= x0 &&
                            (at - x0) % sizeof(float) == 0 && off / stride + (size_t)src->ne1 <= (size_t)rp->rows &&
                            off % stride + (size_t)src->ne0 <= stride;
    if ((err = writing_after(cb, after_rope)))
        return err;
    const int *row0_at = step_value(cb, dst_row0);
    const int row0 = row0_at ? 0 : (int)dst_row0;
    if (after_rope) {
        ss->s[ss->n++] = cuda_store{(const float *)src->data, fstride(src), dst->data, dst->row_bytes, row0_at, row0,
                                    (int)(off / stride), (int)src->ne0, (int)src->ne1, dst->type == SPEC_F16};
        return SPEC_OK;
    }
    return err_of(cuda_store_rows(cb->stream, (const float *)src->data, fstride(src), dst->data, dst->row_bytes,
                                  row0_at, row0, dst->type, (int)src->ne0, (int)src->ne1));
}

/* Waits in act for the next op: the attention of the step's next sequence (the rows after these, of
 * the same q and out, over a cache of the same layout) joins it, for one launch. */
static int cuda_attention_op(struct kern_backend *be, const struct kern_tensor *q, const struct kern_tensor *k_cache,
                             const struct kern_tensor *v_cache, const struct kern_attn_params *p,
                             struct kern_tensor *out)
{
    int err = kern_attention_check(q, k_cache, v_cache, p, out);
    if (err)
        return err;
    if (p->head_dim > CUDA_ATTN_MAX_HEAD_DIM)
        return SPEC_E_UNSUPPORTED;
    struct cuda_backend *cb = cuda_of(be);
    struct cuda_attn *a = &cb->act.attn;
    const bool prefill = q->ne1 >= CUDA_ATT_TILE_MIN_QUERIES;
    const bool joins = cb->join_sequences && cb->act.attn_pending && a->n_seq < CUDA_STEP_SEQS &&
                       (a->seq[0].n >= CUDA_ATT_TILE_MIN_QUERIES) == prefill && fstride(q) == a->q_stride &&
                       (const float *)q->data == a->q + (size_t)a->n * a->q_stride && fstride(out) == a->out_stride &&
                       (float *)out->data == a->out + (size_t)a->n * a->out_stride &&
                       k_cache->row_bytes == a->k_row_bytes && k_cache->type == a->k_type &&
                       v_cache->row_bytes == a->v_row_bytes && v_cache->type == a->v_type && p->n_head == a->n_head &&
                       p->n_head_kv == a->n_head_kv && p->head_dim == a->head_dim && p->scale == a->scale;
    if (!joins) {
        if ((err = writing(cb))) /* launches the attention waiting, if any */
            return err;
        *a = cuda_attn{};
        a->part = &cb->part, a->counters = &cb->counters;
        a->q = (const float *)q->data, a->q_stride = fstride(q);
        a->out = (float *)out->data, a->out_stride = fstride(out);
        a->k_row_bytes = k_cache->row_bytes, a->v_row_bytes = v_cache->row_bytes;
        a->k_type = k_cache->type, a->v_type = v_cache->type;
        a->n_head = p->n_head, a->n_head_kv = p->n_head_kv, a->head_dim = p->head_dim, a->scale = p->scale;
        cb->act.attn_pending = true;
    }
    a->seq[a->n_seq++] = cuda_attn_seq{k_cache->data, v_cache->data, step_value(cb, p->pos0), p->pos0, (int)q->ne1};
    a->n += (int)q->ne1;
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Greedy choice: only an id (and a probability) per row comes back to the host                  */

static int cuda_argmax_op(struct kern_backend *be, const struct kern_tensor *x, int32_t *ids, float *probs)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_argmax_check(x, ids);
    if (err || (err = settle(cb)) || (err = writing(cb)))
        return err;
    const size_t rows = (size_t)x->ne1;
    int32_t *d_ids;
    float *d_probs;
    if ((err = err_of(cuda_argmax(cb->stream, &cb->pick, &cb->counters, (const float *)x->data, fstride(x),
                                  (int)x->ne0, (int)rows, probs != NULL, NULL, NULL, &d_ids, &d_probs))) ||
        (err = err_of(cudaMemcpyAsync(ids, d_ids, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, cb->stream))))
        return err;
    if (probs &&
        (err = err_of(cudaMemcpyAsync(probs, d_probs, rows * sizeof(float), cudaMemcpyDeviceToHost, cb->stream))))
        return err;
    return err_of(cudaStreamSynchronize(cb->stream));
}

/* Returns nothing, so it stays in a recorded step, row0 a step value (as get_rows_kept's). */
static int cuda_argmax_keep_op(struct kern_backend *be, const struct kern_tensor *x, struct kern_tensor *ids,
                               int64_t row0)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_argmax_keep_check(x, ids, row0);
    if (err || (err = writing(cb)))
        return err;
    const int *row0_at = step_value(cb, row0);
    int32_t *d_ids;
    float *d_probs;
    return err_of(cuda_argmax(cb->stream, &cb->pick, &cb->counters, (const float *)x->data, fstride(x), (int)x->ne0,
                              (int)x->ne1, false, (int32_t *)ids->data + (row0_at ? 0 : row0), row0_at, &d_ids,
                              &d_probs));
}

/* ---------------------------------------------------------------------------------------------- */
/* Sampling: rows of logits become distributions on the device; only a round's tokens come back    */

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* The host staging area for a call's arguments, at least `bytes` long. */
static uint8_t *sample_staging(struct cuda_backend *cb, size_t bytes)
{
    if (bytes > cb->sample_host_cap) {
        uint8_t *h = (uint8_t *)realloc(cb->sample_host, bytes);
        if (!h)
            return NULL;
        cb->sample_host = h;
        cb->sample_host_cap = bytes;
    }
    return cb->sample_host;
}

static int cuda_sample_process_op(struct kern_backend *be, const struct kern_tensor *logits,
                                  const struct kern_sample_row *rows, int n)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_sample_process_check(logits, rows, n);
    if (err || n == 0 || (err = writing(cb)))
        return err;
    size_t n_recent = 0;
    for (int i = 0; i < n; i++)
        n_recent += (size_t)rows[i].n_recent;
    if (n_recent > INT32_MAX)
        return SPEC_E_RANGE;
    const size_t desc_bytes = align16((size_t)n * sizeof(struct cuda_sample_row));
    const size_t bytes = desc_bytes + n_recent * sizeof(int32_t);
    uint8_t *h = sample_staging(cb, bytes);
    if (!h)
        return SPEC_E_NOMEM;
    struct cuda_sample_row *d = (struct cuda_sample_row *)h;
    int32_t *recent = (int32_t *)(h + desc_bytes);
    int off = 0;
    for (int i = 0; i < n; i++) {
        const struct kern_sample_row *r = &rows[i];
        d[i] = cuda_sample_row{(const float *)row_ptr(logits, r->row), (float *)row_ptr(r->out, r->out_row), *r->s, off,
                               r->n_recent};
        if (r->n_recent > 0)
            memcpy(recent + off, r->recent, (size_t)r->n_recent * sizeof(int32_t));
        off += r->n_recent;
    }
    if ((err = err_of(cuda_buf_reserve(cb->stream, &cb->sample, bytes))) ||
        (err = upload(cb, cb->sample.p, h, bytes)))
        return err;
    const uint8_t *dev = (const uint8_t *)cb->sample.p;
    return err_of(cuda_sample_process(cb->stream, (const struct cuda_sample_row *)dev, n,
                                      (const int32_t *)(dev + desc_bytes), (int)logits->ne0, (int)rows[0].out->ne0));
}

static int cuda_sample_choose_op(struct kern_backend *be, struct kern_choose *jobs, int n)
{
    struct cuda_backend *cb = cuda_of(be);
    int err = kern_sample_choose_check(jobs, n);
    if (err || n == 0 || (err = settle(cb)) || (err = writing(cb)))
        return err;
    size_t n_draft = 0;
    for (int i = 0; i < n; i++)
        n_draft += (size_t)jobs[i].n_draft;
    if (n_draft + (size_t)n > INT32_MAX)
        return SPEC_E_RANGE;
    const size_t job_bytes = align16((size_t)n * sizeof(struct cuda_choose_job)),
                 draft_bytes = align16(n_draft * sizeof(int32_t)), acc_bytes = n_draft * sizeof(double),
                 smp_bytes = (n_draft + (size_t)n) * sizeof(double),
                 in_bytes = align16(job_bytes + draft_bytes + acc_bytes + smp_bytes),
                 bytes = in_bytes + (size_t)n * sizeof(struct cuda_choice);
    uint8_t *h = sample_staging(cb, bytes);
    if (!h)
        return SPEC_E_NOMEM;
    struct cuda_choose_job *d = (struct cuda_choose_job *)h;
    int32_t *drafts = (int32_t *)(h + job_bytes);
    double *u_acc = (double *)(h + job_bytes + draft_bytes), *u_smp = u_acc + n_draft;
    int doff = 0, soff = 0;
    for (int i = 0; i < n; i++) {
        const struct kern_choose *j = &jobs[i];
        d[i] = cuda_choose_job{(const float *)row_ptr(j->p, j->p_row), fstride(j->p),
                               j->q ? (const float *)row_ptr(j->q, j->q_row) : NULL, j->q ? fstride(j->q) : 0,
                               j->n_draft, doff, soff};
        if (j->n_draft > 0) {
            memcpy(drafts + doff, j->draft, (size_t)j->n_draft * sizeof(int32_t));
            memcpy(u_acc + doff, j->u_accept, (size_t)j->n_draft * sizeof(double));
        }
        memcpy(u_smp + soff, j->u_sample, (size_t)(j->n_draft + 1) * sizeof(double));
        doff += j->n_draft;
        soff += j->n_draft + 1;
    }
    if ((err = err_of(cuda_buf_reserve(cb->stream, &cb->sample, bytes))) ||
        (err = upload(cb, cb->sample.p, h, in_bytes)))
        return err;
    uint8_t *dev = (uint8_t *)cb->sample.p;
    struct cuda_choice *res = (struct cuda_choice *)(h + in_bytes);
    if ((err = err_of(cuda_sample_choose(
             cb->stream, (const struct cuda_choose_job *)dev, n, (const int32_t *)(dev + job_bytes),
             (const double *)(dev + job_bytes + draft_bytes), (const double *)(dev + job_bytes + draft_bytes) + n_draft,
             (int)jobs[0].p->ne0, (struct cuda_choice *)(dev + in_bytes)))) ||
        (err = err_of(
             cudaMemcpyAsync(res, dev + in_bytes, (size_t)n * sizeof *res, cudaMemcpyDeviceToHost, cb->stream))) ||
        (err = err_of(cudaStreamSynchronize(cb->stream))))
        return err;
    for (int i = 0; i < n; i++) {
        jobs[i].n_accepted = res[i].n_accepted;
        jobs[i].token = res[i].token;
        jobs[i].prob = res[i].prob;
        jobs[i].err = res[i].err;
    }
    return SPEC_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Profiling marks and the profiler's region                                                      */

static int cuda_mark(struct kern_backend *be, int *id)
{
    struct cuda_backend *cb = cuda_of(be);
    const int settled = settle(cb);
    if (settled)
        return settled;
    if (cb->n_marks == cb->n_events) {
        const int cap = cb->n_events ? 2 * cb->n_events : 256;
        cudaEvent_t *ev = (cudaEvent_t *)realloc(cb->events, (size_t)cap * sizeof *ev);
        if (!ev)
            return SPEC_E_NOMEM;
        cb->events = ev;
        for (; cb->n_events < cap; cb->n_events++)
            if (cudaEventCreate(&cb->events[cb->n_events]) != cudaSuccess)
                return err_of(cudaErrorMemoryAllocation);
    }
    const int err = err_of(cudaEventRecord(cb->events[cb->n_marks], cb->stream));
    if (err)
        return err;
    *id = cb->n_marks++;
    return SPEC_OK;
}

static int cuda_mark_elapsed(struct kern_backend *be, int from, int to, float *ms)
{
    struct cuda_backend *cb = cuda_of(be);
    const int settled = settle(cb);
    if (settled)
        return settled;
    if (from < 0 || to < 0 || from >= cb->n_marks || to >= cb->n_marks)
        return SPEC_E_RANGE;
    int err = err_of(cudaEventSynchronize(cb->events[to]));
    if (!err)
        err = err_of(cudaEventElapsedTime(ms, cb->events[from], cb->events[to]));
    return err;
}

static void cuda_marks_reset(struct kern_backend *be)
{
    cuda_of(be)->n_marks = 0;
}

static int cuda_profiler_region(struct kern_backend *be, bool on)
{
    struct cuda_backend *cb = cuda_of(be);
    SPEC_TRY(settle(cb));
    SPEC_TRY(err_of(cudaStreamSynchronize(cb->stream)));
    return err_of(on ? cudaProfilerStart() : cudaProfilerStop());
}

/* ---------------------------------------------------------------------------------------------- */

static void cuda_destroy(struct kern_backend *be)
{
    struct cuda_backend *cb = cuda_of(be);
    settle(cb);
    step_ops(cb); /* a void replay's trace leaves the thread's list */
    cudaStreamSynchronize(cb->stream);
    for (int i = 0; i < CUDA_GRAPHS; i++) {
        if (cb->graph[i].exec)
            cudaGraphExecDestroy(cb->graph[i].exec);
        free(cb->graph[i].trace);
    }
    for (int i = 0; i < CUDA_STAGES; i++) {
        cudaFreeHost(cb->stages[i]);
        if (cb->stage_read[i])
            cudaEventDestroy(cb->stage_read[i]);
    }
    cuda_mem_free(&cb->mem, cb->values, CUDA_STEP_VALUES * sizeof(int));
    cuda_buf_release(&cb->act.buf);
    cuda_buf_release(&cb->act.next);
    cuda_buf_release(&cb->act.count);
    cuda_blas_close(cb->blas);
    cuda_buf_release(&cb->part);
    cuda_buf_release(&cb->counters);
    cuda_buf_release(&cb->ids);
    cuda_buf_release(&cb->rope);
    cuda_buf_release(&cb->pick);
    cuda_buf_release(&cb->sample);
    free(cb->sample_host);
    for (int i = 0; i < cb->n_events; i++)
        cudaEventDestroy(cb->events[i]);
    free(cb->events);
    cudaStreamDestroy(cb->stream);
    free(cb->rope_pos);
    free(cb->rope_ff);
    free(cb->rope_host);
    free(cb);
}

static int cuda_device_memory(struct kern_backend *be, size_t *used)
{
    *used = cuda_of(be)->mem.used;
    return SPEC_OK;
}

static const struct kern_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .tensor_alloc = cuda_tensor_alloc,
    .tensor_free = cuda_tensor_free,
    .weight_from_host = cuda_weight_from_host,
    .rows_to_host = cuda_rows_to_host,
    .rows_from_host = cuda_rows_from_host,
    .get_rows = cuda_get_rows_op,
    .matmul = cuda_matmul_op,
    .matmuls = cuda_matmuls_op,
    .matmuls_prefill = cuda_matmuls_prefill_op,
    .rms_norm = cuda_rms_norm_op,
    .rope = cuda_rope_op,
    .store_rows = cuda_store_rows_op,
    .attention = cuda_attention_op,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .argmax = cuda_argmax_op,
    .argmax_keep = cuda_argmax_keep_op,
    .get_rows_kept = cuda_get_rows_kept_op,
    .sample_process = cuda_sample_process_op,
    .sample_choose = cuda_sample_choose_op,
    .mark = cuda_mark,
    .mark_elapsed = cuda_mark_elapsed,
    .marks_reset = cuda_marks_reset,
    .step_begin = cuda_step_begin,
    .step_end = cuda_step_end,
    .step_stats = cuda_step_stats,
    .profiler_region = cuda_profiler_region,
    .device_memory = cuda_device_memory,
};

/* The A/B switches (SPECD_CUDA_PDL, _PREFETCH, _ATT_TILE, _AFTER_MATMUL, _JOIN, _WIDE): on unless set to 0. */
static bool env_is_zero(const char *name)
{
    const char *v = getenv(name);
    return v && strcmp(v, "0") == 0;
}

extern "C" int kern_cuda_backend_create(const struct kern_backend_config *cfg, struct kern_backend **out)
{
    /* cfg->n_threads is the CPU's */
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0 || cuda_kernels_usable() != cudaSuccess) {
        cudaGetLastError();
        return SPEC_E_UNSUPPORTED;
    }
    struct cuda_backend *cb = (struct cuda_backend *)calloc(1, sizeof(*cb));
    if (!cb)
        return SPEC_E_NOMEM;
    if (cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking) != cudaSuccess) {
        cudaGetLastError();
        free(cb);
        return SPEC_E_NOMEM;
    }
    cb->base.ops = &cuda_ops;
    cb->mem.cap = cfg ? cfg->device_bytes : 0;
    struct cuda_buf *const bufs[] = {&cb->act.buf, &cb->act.next, &cb->act.count, &cb->part, &cb->counters,
                                     &cb->ids, &cb->rope, &cb->pick, &cb->sample};
    for (struct cuda_buf *b : bufs)
        b->mem = &cb->mem;
    cb->graphs = cfg && cfg->graphs;
    cuda_dependent_launches = !env_is_zero("SPECD_CUDA_PDL");
    cuda_prefetch_weights = !env_is_zero("SPECD_CUDA_PREFETCH");
    cuda_attention_tiles = !env_is_zero("SPECD_CUDA_ATT_TILE");
    cuda_after_matmul = !env_is_zero("SPECD_CUDA_AFTER_MATMUL");
    cuda_wide_rows = !env_is_zero("SPECD_CUDA_WIDE");
    cb->join_sequences = !env_is_zero("SPECD_CUDA_JOIN");
    cb->tensor_cores = cfg && cfg->tensor_cores;
    if (cfg && cfg->blas_prefill) {
        const int err = cuda_blas_open(cb->stream, &cb->mem, &cb->blas);
        if (err) {
            cuda_destroy(&cb->base);
            return err;
        }
    }
    *out = &cb->base;
    return SPEC_OK;
}
