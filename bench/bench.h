/* What the benchmark programs share (each bench/NAME.c is one program). */
#ifndef SPECD_BENCH_BENCH_H
#define SPECD_BENCH_BENCH_H

#include <stdlib.h>
#include <time.h>

static inline double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A comma-separated list of integers ("1,4,16") into out[max]: the count, or -1 when malformed or
 * longer than max. */
static inline int bench_int_list(const char *text, int *out, int max)
{
    int n = 0;
    for (const char *s = text; *s;) {
        char *end;
        const long v = strtol(s, &end, 10);
        if (end == s || n == max)
            return -1;
        out[n++] = (int)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return n > 0 ? n : -1;
}

#endif
