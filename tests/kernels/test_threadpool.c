/* Thread pool: every index runs exactly once per dispatch, dispatches after the workers went to sleep
 * still run, the barrier separates phases, scratch memory grows and stays aligned, and pools can be
 * created and destroyed repeatedly (leaks show under `make SAN=1`). */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/cpu.h"

#define MAX_T 8

struct count_task {
    atomic_int runs[MAX_T];
    atomic_int bad_nth;
    int want_nth;
};

static void count_fn(void *arg, int ith, int nth)
{
    struct count_task *t = arg;
    if (nth != t->want_nth || ith < 0 || ith >= nth)
        atomic_fetch_add(&t->bad_nth, 1);
    else
        atomic_fetch_add(&t->runs[ith], 1);
}

static void check_dispatches(int n_threads, int dispatches, long sleep_ns)
{
    struct cpu_pool *pool;
    cr_assert_eq(cpu_pool_create(n_threads, &pool), 0);
    cr_assert_eq(cpu_pool_size(pool), n_threads);
    struct count_task t = {.want_nth = n_threads};
    for (int d = 0; d < dispatches; d++) {
        cpu_pool_run(pool, count_fn, &t);
        /* when run returns, this dispatch is complete on every thread */
        for (int i = 0; i < n_threads; i++)
            cr_assert_eq(atomic_load(&t.runs[i]), d + 1, "threads=%d dispatch %d index %d", n_threads, d, i);
        if (sleep_ns) {
            struct timespec ts = {0, sleep_ns};
            nanosleep(&ts, NULL);
        }
    }
    cr_expect_eq(atomic_load(&t.bad_nth), 0);
    cpu_pool_destroy(pool);
}

Test(threadpool, every_index_runs_once_per_dispatch, .timeout = 30)
{
    for (int n = 1; n <= MAX_T; n++)
        check_dispatches(n, 2000, 0);
}

Test(threadpool, dispatch_after_workers_sleep_still_runs_everything, .timeout = 30)
{
    /* 20 ms between dispatches: far past the spin phase, so the workers block and must be woken */
    check_dispatches(3, 12, 20 * 1000 * 1000);
}

Test(threadpool, zero_threads_means_one_per_online_core, .timeout = 30)
{
    struct cpu_pool *pool;
    cr_assert_eq(cpu_pool_create(0, &pool), 0);
    cr_expect_eq(cpu_pool_size(pool), (int)sysconf(_SC_NPROCESSORS_ONLN));
    cpu_pool_destroy(pool);
}

struct barrier_task {
    struct cpu_pool *pool;
    int round;
    atomic_int slots[MAX_T];
    atomic_int errors;
};

static void barrier_fn(void *arg, int ith, int nth)
{
    struct barrier_task *t = arg;
    for (int phase = 0; phase < 50; phase++) {
        const int stamp = t->round * 1000 + phase;
        atomic_store(&t->slots[ith], stamp);
        cpu_pool_barrier(t->pool);
        for (int i = 0; i < nth; i++)
            if (atomic_load(&t->slots[i]) != stamp)
                atomic_fetch_add(&t->errors, 1);
        cpu_pool_barrier(t->pool);
    }
}

Test(threadpool, barrier_separates_phases, .timeout = 30)
{
    for (int n = 1; n <= 5; n++) {
        struct cpu_pool *pool;
        cr_assert_eq(cpu_pool_create(n, &pool), 0);
        struct barrier_task t = {.pool = pool};
        for (t.round = 0; t.round < 20; t.round++)
            cpu_pool_run(pool, barrier_fn, &t);
        cr_expect_eq(atomic_load(&t.errors), 0, "threads=%d: a thread saw a slot from another phase", n);
        cpu_pool_destroy(pool);
    }
}

Test(threadpool, scratch_grows_and_stays_aligned, .timeout = 30)
{
    struct cpu_pool *pool;
    cr_assert_eq(cpu_pool_create(2, &pool), 0);
    char *a = cpu_pool_scratch(pool, 100);
    cr_assert_not_null(a);
    cr_expect_eq((uintptr_t)a % 64, 0);
    a[99] = 1;
    cr_expect_eq(cpu_pool_scratch(pool, 64), a, "a smaller request reuses the buffer");
    char *b = cpu_pool_scratch(pool, 1 << 20);
    cr_assert_not_null(b);
    cr_expect_eq((uintptr_t)b % 64, 0);
    b[(1 << 20) - 1] = 2;
    cr_expect_null(cpu_pool_scratch(pool, SIZE_MAX), "an impossible size fails cleanly");
    cr_expect_eq(cpu_pool_scratch(pool, 1 << 20), b, "and leaves the old buffer in place");
    cpu_pool_destroy(pool);
}

Test(threadpool, create_and_destroy_repeatedly, .timeout = 30)
{
    for (int i = 0; i < 200; i++) {
        struct cpu_pool *pool;
        cr_assert_eq(cpu_pool_create(1 + i % 4, &pool), 0);
        if (i % 2) {
            struct count_task t = {.want_nth = 1 + i % 4};
            cpu_pool_run(pool, count_fn, &t);
        }
        cpu_pool_destroy(pool);
    }
    cpu_pool_destroy(NULL);
}
