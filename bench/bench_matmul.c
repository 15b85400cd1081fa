/* Matmul throughput: weight bytes streamed per second for y = x . w^T, per type and batch size.
 *
 *   bench_matmul [-t threads] [-r rows] [-k cols] [-s seconds] [-i scalar|avx2|avx512|amx] [TYPE...]
 *
 * Defaults: 1 thread, a 2048 x 2048 weight (it fits in L3 here; use -r 8192 -k 8192 for a
 * DRAM-bound figure), Q4_K Q8_0 Q4_0. For each batch size n the weight is read once per call, so
 * GB/s = weight bytes / time; "x n=1" shows what a batch of n costs relative to one row. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"

static int parse_type(const char *name, enum spec_dtype *out)
{
    for (uint32_t t = 0; t < SPEC_DTYPE_COUNT; t++) {
        const struct kern_dtype_info *info = kern_dtype_info(t);
        if (info && info->cpu && strcmp(info->name, name) == 0) {
            *out = (enum spec_dtype)t;
            return 0;
        }
    }
    return -1;
}

/* The fastest of many single calls: on a shared machine, the calls that nothing preempted. */
static double time_call(struct cpu_pool *pool, enum spec_dtype t, const void *w, size_t wrb, int64_t rows, int64_t k,
                        const float *x, int n, float *y, double seconds)
{
    double best = 1e30;
    const double end = bench_now_s() + seconds;
    while (bench_now_s() < end) {
        const double t0 = bench_now_s();
        cpu_matmul(pool, t, w, wrb, rows, k, x, k, n, y, rows);
        const double dt = bench_now_s() - t0;
        if (dt < best)
            best = dt;
    }
    return best;
}

int main(int argc, char **argv)
{
    int threads = 1;
    int64_t rows = 2048, k = 2048;
    double seconds = 1.0;
    enum spec_dtype types[SPEC_DTYPE_COUNT];
    int n_types = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc)
            rows = atoll(argv[++i]);
        else if (strcmp(argv[i], "-k") == 0 && i + 1 < argc)
            k = atoll(argv[++i]);
        else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "-i") == 0 && i + 1 < argc) {
            ++i;
            int isa = CPU_ISA_SCALAR;
            while (isa < CPU_ISA_COUNT && strcmp(argv[i], cpu_isa_name((enum cpu_isa)isa)) != 0)
                isa++;
            if (isa == CPU_ISA_COUNT || cpu_isa_set((enum cpu_isa)isa) != 0) {
                fprintf(stderr, "ISA %s not available\n", argv[i]);
                return 1;
            }
        } else if (n_types < SPEC_DTYPE_COUNT && parse_type(argv[i], &types[n_types]) == 0)
            n_types++;
        else {
            fprintf(stderr, "usage: %s [-t threads] [-r rows] [-k cols] [-s seconds] [-i scalar|avx2|avx512|amx] [TYPE...]\n",
                    argv[0]);
            return 1;
        }
    }
    if (!n_types) {
        types[n_types++] = SPEC_Q4_K;
        types[n_types++] = SPEC_Q8_0;
        types[n_types++] = SPEC_Q4_0;
    }
    struct cpu_pool *pool;
    if (cpu_pool_create(threads, &pool) != 0)
        return 1;
    static const int batches[] = {1, 2, 4, 8, 9};
    const int nmax = 9;
    float *x = malloc((size_t)(nmax * k) * sizeof(float)), *y = malloc((size_t)(nmax * rows) * sizeof(float));
    float *src = malloc((size_t)k * sizeof(float));
    uint64_t s = 1;
    for (int64_t i = 0; i < nmax * k; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((s >> 40) & 0xffff) / 32768.0f - 1.0f;
    }
    printf("matmul %ld x %ld, %d thread%s, %s\n", (long)rows, (long)k, threads, threads == 1 ? "" : "s",
           cpu_isa_name(cpu_isa_active()));
    printf("%-6s %3s %10s %9s %8s\n", "type", "n", "us/call", "GB/s", "x n=1");
    for (int ti = 0; ti < n_types; ti++) {
        const enum spec_dtype t = types[ti];
        uint64_t wrb;
        if (kern_row_bytes(t, (uint64_t)k, &wrb) != 0) {
            fprintf(stderr, "k=%ld is not a multiple of %s's block\n", (long)k, kern_dtype_info(t)->name);
            return 1;
        }
        uint8_t *w = malloc((size_t)wrb * rows);
        for (int64_t j = 0; j < rows; j++) {
            for (int64_t i = 0; i < k; i++)
                src[i] = x[(j * 7 + i) % (nmax * k)] * 0.1f;
            kern_quantize_row(t, src, w + wrb * j, k);
        }
        double t1 = 0;
        for (size_t b = 0; b < sizeof(batches) / sizeof(batches[0]); b++) {
            const int n = batches[b];
            const double dt = time_call(pool, t, w, (size_t)wrb, rows, k, x, n, y, seconds);
            if (n == 1)
                t1 = dt;
            printf("%-6s %3d %10.1f %9.2f %8.2f\n", kern_dtype_info(t)->name, n, dt * 1e6,
                   (double)wrb * rows / dt / 1e9, dt / t1);
        }
        free(w);
    }
    free(x);
    free(y);
    free(src);
    cpu_pool_destroy(pool);
    return 0;
}
