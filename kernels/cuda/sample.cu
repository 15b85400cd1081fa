/* Sampling on the device: verify/'s processing of a row of logits into its distribution
 * (verify_process) and its rounds of rejection sampling (verify_round_sampled), a block per row or
 * round, so that only a round's token ids and counts cross to the host.
 *
 * Top-k and top-p need the best candidates in order. Instead of sorting a 150k vocabulary, a search
 * narrows the threshold: each pass counts (top-k) or weighs (top-p) the candidates at or above 16
 * evenly spaced keys of the remaining key range, keeps the sub-range where the threshold lies and
 * stops once at most SAMPLE_CAP candidates remain in it, which are then sorted in shared memory. A key
 * orders like verify/'s candidates (larger logit first, lower id on ties). Every sum is a double sum
 * in a fixed order (per thread, then a fixed tree), so a row's result does not depend on anything
 * but the row; it differs from the host's sequential sums only in rounding. */
#include <math.h>

extern "C" {
#include "common/err.h"
}
#include "kernels/cuda/cuda_ops.h"

#define SAMPLE_THREADS 512
#define SAMPLE_WARPS (SAMPLE_THREADS / CUDA_WARP)
#define SAMPLE_PIVOTS 16
#define SAMPLE_CAP 4096

/* Order-preserving key of (logit, id): a larger logit, then a lower id, gives a larger key. -0 counts
 * as +0, as the host's comparisons do. */
static __device__ __forceinline__ uint64_t sample_key(float l, int i)
{
    const uint32_t u = __float_as_uint(l == 0.0f ? 0.0f : l);
    const uint32_t ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)ord << 32) | (uint64_t)(~(uint32_t)i);
}

static __device__ __forceinline__ float key_logit(uint64_t k)
{
    const uint32_t ord = (uint32_t)(k >> 32);
    return __uint_as_float((ord & 0x80000000u) ? (ord & 0x7fffffffu) : ~ord);
}

/* Lane 0 gets the warp's sum by a fixed butterfly (the others may differ in the last bit). */
template <class T>
static __device__ __forceinline__ T warp_total(T v)
{
    for (int off = CUDA_WARP / 2; off > 0; off >>= 1)
        v += __shfl_xor_sync(CUDA_FULL_MASK, v, off);
    return v;
}

struct sample_smem {
    unsigned wc[SAMPLE_WARPS][SAMPLE_PIVOTS];
    double wm[SAMPLE_WARPS][SAMPLE_PIVOTS];
    unsigned c[SAMPLE_PIVOTS];
    double m[SAMPLE_PIVOTS];
    double part[SAMPLE_THREADS];
    int idx[SAMPLE_THREADS];
    float best_v[SAMPLE_THREADS];
    uint64_t keys[SAMPLE_CAP];
};

/* ---------------------------------------------------------------------------------------------- */
/* Processing a row                                                                               */

#define SAMPLE_LOADS 8 /* logits a thread loads before using the first: their latencies overlap */

/* f(i, row[i]) for the thread's ids i = tid, tid + SAMPLE_THREADS, ... below n, in that order (values
 * at n_read and past it read as -inf), SAMPLE_LOADS loaded at a time: a loop that loaded and used one
 * at a time would wait a memory latency per logit of its ~300. */
template <class F>
static __device__ __forceinline__ void each_logit(const float *row, int n, int n_read, int tid, F f)
{
    for (int i0 = tid; i0 < n; i0 += SAMPLE_LOADS * SAMPLE_THREADS) {
        float l[SAMPLE_LOADS];
#pragma unroll
        for (int b = 0; b < SAMPLE_LOADS; b++) {
            const int i = i0 + b * SAMPLE_THREADS;
            l[b] = i < n_read ? row[i] : -INFINITY;
        }
#pragma unroll
        for (int b = 0; b < SAMPLE_LOADS; b++)
            if (i0 + b * SAMPLE_THREADS < n)
                f(i0 + b * SAMPLE_THREADS, l[b]);
    }
}

/* Thread tid's contiguous share [c0, c1) of n items (running sums that are prefixed in thread order). */
static __device__ __forceinline__ void thread_chunk(int n, int tid, int *c0, int *c1)
{
    const int chunk = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    *c0 = tid * chunk < n ? tid * chunk : n;
    *c1 = *c0 + chunk < n ? *c0 + chunk : n;
}

/* Block-wide exclusive prefix of part[] (sequential in thread 0: a fixed order); part[SAMPLE_THREADS - 1]
 * then holds its own prefix and the total goes to *total. */
static __device__ void prefix_part(sample_smem &sm, int tid, double *total)
{
    __syncthreads();
    if (tid == 0) {
        double run = 0.0;
        for (int t = 0; t < SAMPLE_THREADS; t++) {
            const double v = sm.part[t];
            sm.part[t] = run;
            run += v;
        }
        sm.m[0] = run;
    }
    __syncthreads();
    *total = sm.m[0];
    __syncthreads(); /* sm.m is reused by the caller */
}

/* Smallest idx[] over the block. */
static __device__ int block_min_idx(sample_smem &sm, int tid)
{
    __syncthreads();
    for (int half = SAMPLE_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half && sm.idx[tid + half] < sm.idx[tid])
            sm.idx[tid] = sm.idx[tid + half];
        __syncthreads();
    }
    const int v = sm.idx[0];
    __syncthreads();
    return v;
}

/* The threshold key T of a filter over the candidates of row (finite, key >= floor): the largest T
 * with F(key >= T) >= target, where F counts candidates (MASS false) or sums exp(l - max_l) over them.
 * n_in: how many candidates there are; key_top: the best candidate's key. When F of all of them falls
 * short (rounding), the smallest candidate's key. */
template <bool MASS>
static __device__ uint64_t threshold(sample_smem &sm, const float *row, int n_vocab, uint64_t floor, uint64_t key_top,
                                     unsigned n_in, double max_l, double target)
{
    const int tid = threadIdx.x, lane = tid % CUDA_WARP, warp = tid / CUDA_WARP;
    uint64_t lo = floor, hi = key_top + 1;
    double acc = 0.0; /* F of the candidates at or above hi */
    unsigned acc_n = 0;
    while (n_in > SAMPLE_CAP) {
        const uint64_t step = (hi - lo) / SAMPLE_PIVOTS; /* >= 1: hi - lo >= n_in > SAMPLE_CAP */
        unsigned cnt[SAMPLE_PIVOTS];
        double mass[SAMPLE_PIVOTS];
#pragma unroll
        for (int j = 0; j < SAMPLE_PIVOTS; j++) {
            cnt[j] = 0;
            mass[j] = 0.0;
        }
        each_logit(row, n_vocab, n_vocab, tid, [&](int i, float l) {
            if (l == -INFINITY)
                return;
            const uint64_t k = sample_key(l, i);
            if (k < lo || k >= hi)
                return;
            const double w = MASS ? exp((double)l - max_l) : 0.0;
#pragma unroll
            for (int j = 0; j < SAMPLE_PIVOTS; j++) {
                const bool above = k >= lo + (uint64_t)j * step;
                cnt[j] += above;
                if (MASS && above)
                    mass[j] += w;
            }
        });
#pragma unroll
        for (int j = 0; j < SAMPLE_PIVOTS; j++) {
            const unsigned cj = warp_total(cnt[j]);
            const double mj = MASS ? warp_total(mass[j]) : 0.0;
            if (lane == 0) {
                sm.wc[warp][j] = cj;
                sm.wm[warp][j] = mj;
            }
        }
        __syncthreads();
        if (tid < SAMPLE_PIVOTS) {
            unsigned c = 0;
            double m = 0.0;
            for (int w = 0; w < SAMPLE_WARPS; w++) {
                c += sm.wc[w][tid];
                m += sm.wm[w][tid];
            }
            sm.c[tid] = c;
            sm.m[tid] = m;
        }
        __syncthreads();
        int pick = 0;
        for (int j = SAMPLE_PIVOTS - 1; j > 0; j--) {
            const double f = MASS ? acc + sm.m[j] : (double)(acc_n + sm.c[j]);
            if (f >= target) {
                pick = j;
                break;
            }
        }
        const bool top = pick == SAMPLE_PIVOTS - 1;
        n_in = sm.c[pick] - (top ? 0u : sm.c[pick + 1]);
        if (!top) {
            acc += sm.m[pick + 1];
            acc_n += sm.c[pick + 1];
            hi = lo + (uint64_t)(pick + 1) * step;
        }
        lo += (uint64_t)pick * step;
        __syncthreads(); /* sm.c and sm.m are rewritten by the next pass */
    }

    /* Gather the remaining candidates in thread order, then sort them best first. */
    unsigned mine = 0;
    each_logit(row, n_vocab, n_vocab, tid, [&](int i, float l) {
        const uint64_t k = sample_key(l, i);
        mine += l != -INFINITY && k >= lo && k < hi;
    });
    sm.part[tid] = (double)mine;
    double total;
    prefix_part(sm, tid, &total);
    const int n = (int)total;
    int at = (int)sm.part[tid];
    each_logit(row, n_vocab, n_vocab, tid, [&](int i, float l) {
        const uint64_t k = sample_key(l, i);
        if (l != -INFINITY && k >= lo && k < hi)
            sm.keys[at++] = k;
    });
    int m = 1;
    while (m < n)
        m <<= 1;
    for (int i = n + tid; i < m; i += SAMPLE_THREADS)
        sm.keys[i] = 0; /* below every candidate */
    __syncthreads();
    for (int size = 2; size <= m; size <<= 1) {
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int i = tid; i < m / 2; i += SAMPLE_THREADS) {
                const int a = 2 * i - (i & (stride - 1)), b = a + stride;
                const bool desc = (a & size) == 0;
                const uint64_t ka = sm.keys[a], kb = sm.keys[b];
                if ((ka < kb) == desc) {
                    sm.keys[a] = kb;
                    sm.keys[b] = ka;
                }
            }
            __syncthreads();
        }
    }
    if (n == 0)
        return lo;

    if (!MASS) {
        const double need = target - (double)acc_n; /* >= 1 candidate of these */
        const int at_k = need < 1.0 ? 0 : need > (double)n ? n - 1 : (int)need - 1;
        return sm.keys[at_k];
    }
    /* The first sorted candidate where the running mass reaches the target: contiguous chunks per
     * thread, their sums prefixed in thread order. */
    int c0, c1;
    thread_chunk(n, tid, &c0, &c1);
    double s = 0.0;
    for (int i = c0; i < c1; i++)
        s += exp((double)key_logit(sm.keys[i]) - max_l);
    sm.part[tid] = s;
    prefix_part(sm, tid, &total);
    double cum = acc + sm.part[tid];
    int first = n;
    for (int i = c0; i < c1; i++) {
        cum += exp((double)key_logit(sm.keys[i]) - max_l);
        if (cum >= target) {
            first = i;
            break;
        }
    }
    sm.idx[tid] = first;
    first = block_min_idx(sm, tid);
    return sm.keys[first < n ? first : n - 1];
}

/* verify_process on one row of n_in logits (ids from n_in to n_vocab count as -inf): out = penalised
 * logits, then filtered and normalised in place. */
static __device__ void process_row(sample_smem &sm, const cuda_sample_row &r, const int32_t *recent, int n_in,
                                   int n_vocab)
{
    const int tid = threadIdx.x;
    float *out = r.out;
    const kern_sampler s = r.s;
    each_logit(r.in, n_vocab, n_in, tid, [&](int i, float l) { out[i] = isnan(l) ? -INFINITY : l; });
    __syncthreads();
    const bool penalised = s.repeat_penalty != 1.0f || s.frequency_penalty != 0.0f || s.presence_penalty != 0.0f;
    if (penalised) {
        /* the thread of a token's first occurrence in the window penalises it, once, by its count */
        const int32_t *w = recent + r.recent_off;
        for (int a = tid; a < r.n_recent; a += SAMPLE_THREADS) {
            const int32_t t = w[a];
            if (t < 0 || t >= n_vocab)
                continue;
            bool first = true;
            for (int b = 0; b < a && first; b++)
                first = w[b] != t;
            if (!first)
                continue;
            int count = 0;
            for (int b = a; b < r.n_recent; b++)
                count += w[b] == t;
            float l = out[t];
            l = l <= 0.0f ? l * s.repeat_penalty : l / s.repeat_penalty;
            l -= (float)count * s.frequency_penalty + s.presence_penalty;
            out[t] = l;
        }
        __syncthreads();
    }

    /* the best candidate (lowest id on ties) and how many are finite */
    float bv = -INFINITY;
    int bi = -1;
    unsigned finite = 0;
    each_logit(out, n_vocab, n_vocab, tid, [&](int i, float l) {
        if (l == -INFINITY)
            return;
        finite++;
        if (bi < 0 || l > bv) {
            bv = l;
            bi = i;
        }
    });
    sm.best_v[tid] = bv;
    sm.idx[tid] = bi;
    sm.part[tid] = (double)finite;
    block_best<SAMPLE_THREADS>(sm.best_v, sm.idx, tid);
    block_sum<SAMPLE_THREADS>(sm.part, tid);
    const int best = sm.idx[0];
    const float best_l = sm.best_v[0];
    const unsigned n_finite = (unsigned)sm.part[0];
    __syncthreads();
    if (best < 0 || s.temperature == 0.0f) { /* nothing finite: no mass (the caller's NUMERIC) */
        for (int i = tid; i < n_vocab; i += SAMPLE_THREADS)
            out[i] = i == best ? 1.0f : 0.0f;
        return;
    }
    const double max_l = best_l;
    const uint64_t key_top = sample_key(best_l, best);

    uint64_t floor = 0;
    unsigned n_cand = n_finite;
    if (s.top_k > 0 && s.top_k < n_vocab && (unsigned)s.top_k < n_finite) {
        floor = threshold<false>(sm, out, n_vocab, 0, key_top, n_finite, max_l, (double)s.top_k);
        n_cand = (unsigned)s.top_k;
    }
    if (s.top_p < 1.0f) {
        double w = 0.0;
        each_logit(out, n_vocab, n_vocab, tid, [&](int i, float l) {
            if (l != -INFINITY && sample_key(l, i) >= floor)
                w += exp((double)l - max_l);
        });
        sm.part[tid] = w;
        block_sum<SAMPLE_THREADS>(sm.part, tid);
        const double total = sm.part[0];
        __syncthreads();
        floor = threshold<true>(sm, out, n_vocab, floor, key_top, n_cand, max_l, (double)s.top_p * total);
    }
    const bool min_p = s.min_p > 0.0f;
    const double min_l = min_p ? max_l + log((double)s.min_p) : 0.0;

    const double inv_t = 1.0 / (double)s.temperature;
    double sum = 0.0;
    each_logit(out, n_vocab, n_vocab, tid, [&](int i, float l) {
        const bool kept = l != -INFINITY && sample_key(l, i) >= floor && (!min_p || (double)l >= min_l);
        float e = 0.0f;
        if (kept) {
            const double ed = exp(((double)l - max_l) * inv_t);
            e = (float)ed;
            sum += ed;
        }
        out[i] = e;
    });
    sm.part[tid] = sum;
    block_sum<SAMPLE_THREADS>(sm.part, tid);
    const double inv = 1.0 / sm.part[0]; /* >= exp(0) from the best candidate, which every filter keeps */
    each_logit(out, n_vocab, n_vocab, tid, [&](int i, float l) { out[i] = (float)((double)l * inv); });
    __syncthreads(); /* sm.part[0] is read by every thread before the next row */
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_process_kernel(const cuda_sample_row *rows, int n, const int32_t *recent, int n_in, int n_vocab)
{
    cuda_grid_wait();
    __shared__ sample_smem sm;
    for (int j = blockIdx.x; j < n; j += gridDim.x)
        process_row(sm, rows[j], recent, n_in, n_vocab);
}

cudaError_t cuda_sample_process(cudaStream_t st, const struct cuda_sample_row *rows, int n, const int32_t *recent,
                                int n_in, int n_vocab)
{
    if (n == 0)
        return cudaSuccess;
    CUDA_LAUNCH((unsigned)(n < 1024 ? n : 1024), SAMPLE_THREADS, st, sample_process_kernel)(rows, n, recent, n_in,
                                                                                             n_vocab);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------------------------------------- */
/* Rounds of rejection sampling                                                                   */

/* The weight verify/ draws token j with: normalise(max(0, p - q)) for a residual (q NULL: one-hot on
 * x), else p where positive and finite. Normalising does not change which token a uniform picks
 * beyond rounding, so the weights stay unnormalised. */
static __device__ __forceinline__ float draw_weight(const float *p, const float *q, int x, bool residual, int j)
{
    if (!residual)
        return p[j] > 0.0f && isfinite(p[j]) ? p[j] : 0.0f;
    const float d = p[j] - (q ? q[j] : j == x ? 1.0f : 0.0f);
    return d > 0.0f ? d : 0.0f;
}

/* verify_sample over the weights: the first token whose running weight exceeds u * total (running
 * sums in contiguous chunks per thread, prefixed in thread order), else the last one with weight.
 * -1 when the total is not positive and finite. */
static __device__ int draw(sample_smem &sm, const float *p, const float *q, int x, bool residual, double u,
                           int n_vocab)
{
    const int tid = threadIdx.x;
    int c0, c1;
    thread_chunk(n_vocab, tid, &c0, &c1);
    double s = 0.0;
    int last = -1;
    for (int j = c0; j < c1; j++) {
        const float w = draw_weight(p, q, x, residual, j);
        if (w > 0.0f) {
            s += w;
            last = j;
        }
    }
    sm.part[tid] = s;
    sm.idx[tid] = -last; /* the largest last as the smallest -last */
    double total;
    prefix_part(sm, tid, &total);
    const int last_all = -block_min_idx(sm, tid);
    if (!(total > 0.0) || !isfinite(total))
        return -1;
    const double target = u * total;
    double cum = sm.part[tid];
    int first = n_vocab;
    for (int j = c0; j < c1; j++) {
        const float w = draw_weight(p, q, x, residual, j);
        if (w > 0.0f) {
            cum += w;
            if (cum > target) {
                first = j;
                break;
            }
        }
    }
    sm.idx[tid] = first;
    first = block_min_idx(sm, tid);
    return first < n_vocab ? first : last_all;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_choose_kernel(const cuda_choose_job *jobs, int n, const int32_t *drafts, const double *u_accept,
                         const double *u_sample, int n_vocab, cuda_choice *out)
{
    cuda_grid_wait();
    __shared__ sample_smem sm;
    for (int jb = blockIdx.x; jb < n; jb += gridDim.x) {
        const cuda_choose_job job = jobs[jb];
        int i = 0;
        for (; i < job.n_draft; i++) {
            const int x = drafts[job.draft_off + i];
            const double px = job.p[(size_t)i * job.p_stride + x];
            const double qx = job.q ? job.q[(size_t)i * job.q_stride + x] : 1.0;
            /* verify_accept_prob */
            const double a = !(qx > 0.0) || !(px > 0.0) ? 0.0 : px >= qx ? 1.0 : px / qx;
            if (!(u_accept[job.draft_off + i] < a))
                break;
        }
        const float *p = job.p + (size_t)i * job.p_stride;
        const float *q = job.q && i < job.n_draft ? job.q + (size_t)i * job.q_stride : NULL;
        const int x = i < job.n_draft ? drafts[job.draft_off + i] : -1;
        const double u = u_sample[job.sample_off + i];
        int token = -1;
        if (i < job.n_draft)
            token = draw(sm, p, q, x, true, u, n_vocab); /* the residual; p itself when it has no mass */
        if (token < 0)
            token = draw(sm, p, q, x, false, u, n_vocab);
        if (threadIdx.x == 0)
            out[jb] = cuda_choice{i, token, token >= 0 ? p[token] : 0.0f, token >= 0 ? SPEC_OK : SPEC_E_NUMERIC};
        __syncthreads(); /* the next job reuses sm */
    }
}

cudaError_t cuda_sample_choose(cudaStream_t st, const struct cuda_choose_job *jobs, int n, const int32_t *drafts,
                               const double *u_accept, const double *u_sample, int n_vocab, struct cuda_choice *out)
{
    if (n == 0)
        return cudaSuccess;
    CUDA_LAUNCH((unsigned)(n < 1024 ? n : 1024), SAMPLE_THREADS, st, sample_choose_kernel)(jobs, n, drafts, u_accept,
                                                                                            u_sample, n_vocab, out);
    return cudaGetLastError();
}
