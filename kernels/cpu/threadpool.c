/* Fork-join thread pool with persistent workers.
 *
 * A dispatch publishes (fn, arg) and bumps a generation counter; workers spin on the counter for a
 * while after each task, so back-to-back dispatches during decode cost no syscall, and then sleep on
 * a condition variable. The generation is bumped under the mutex and a worker re-checks it under the
 * mutex before sleeping, so no wake-up is lost. Completion works the same way in reverse: the last
 * worker to finish wakes the caller only if the caller went to sleep. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/err.h"
#include "kernels/cpu/cpu.h"

/* Spin iterations before sleeping: on the order of 100 microseconds of pause instructions, longer
 * than the gap between two matmuls of a forward pass. */
#define SPIN_LIMIT (1 << 14)

/* One step of a spin-wait. After a short pure spin it also yields now and then, so that when there
 * are more threads than free cores (another process, or a pool larger than the machine) the thread
 * being waited for gets the core; with nothing else runnable sched_yield returns at once. */
static inline void spin_step(int i)
{
    if (i >= 256 && i % 32 == 0) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

struct worker {
    struct cpu_pool *pool;
    int ith;
    pthread_t thread;
};

struct cpu_pool {
    int n_threads;
    struct worker *workers; /* n_threads - 1 of them; the caller is thread 0 */

    pthread_mutex_t mutex;
    pthread_cond_t work_cond; /* workers wait here for a new generation */
    pthread_cond_t done_cond; /* the caller waits here for pending == 0 */
    int sleeping_workers;     /* under mutex */
    bool caller_sleeping;     /* under mutex */

    _Atomic unsigned generation;
    cpu_task_fn fn; /* NULL in the generation that tells workers to exit */
    void *arg;
    atomic_int pending; /* workers that have not finished the current generation */

    atomic_int barrier_count;
    _Atomic unsigned barrier_phase;

    void *scratch;
    size_t scratch_size;
};

static void *worker_main(void *p)
{
    struct worker *self = p;
    struct cpu_pool *pool = self->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        for (int spin = 0; gen == seen && spin < SPIN_LIMIT; spin++) {
            spin_step(spin);
            gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->mutex);
            pool->sleeping_workers++;
            while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool->work_cond, &pool->mutex);
            pool->sleeping_workers--;
            pthread_mutex_unlock(&pool->mutex);
        }
        seen = gen;
        if (!pool->fn)
            return NULL;
        pool->fn(pool->arg, self->ith, pool->n_threads);
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->mutex);
            if (pool->caller_sleeping)
                pthread_cond_signal(&pool->done_cond);
            pthread_mutex_unlock(&pool->mutex);
        }
    }
}

static void publish(struct cpu_pool *pool, cpu_task_fn fn, void *arg, int n_workers)
{
    pthread_mutex_lock(&pool->mutex);
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->pending, n_workers, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    if (pool->sleeping_workers)
        pthread_cond_broadcast(&pool->work_cond);
    pthread_mutex_unlock(&pool->mutex);
}

/* Stops and joins the first n_started workers and frees the pool. */
static void pool_free(struct cpu_pool *pool, int n_started)
{
    publish(pool, NULL, NULL, 0);
    for (int i = 0; i < n_started; i++)
        pthread_join(pool->workers[i].thread, NULL);
    pthread_cond_destroy(&pool->done_cond);
    pthread_cond_destroy(&pool->work_cond);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->scratch);
    free(pool->workers);
    free(pool);
}

int cpu_pool_create(int n_threads, struct cpu_pool **out)
{
    if (!out)
        return SPEC_E_INVALID_ARG;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    struct cpu_pool *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return SPEC_E_NOMEM;
    pool->workers = calloc((size_t)n_threads, sizeof(*pool->workers));
    if (!pool->workers) {
        free(pool);
        return SPEC_E_NOMEM;
    }
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->work_cond, NULL);
    pthread_cond_init(&pool->done_cond, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->barrier_count, 0);
    atomic_init(&pool->barrier_phase, 0);

    for (int i = 0; i < n_threads - 1; i++) {
        pool->workers[i] = (struct worker){.pool = pool, .ith = i + 1};
        if (pthread_create(&pool->workers[i].thread, NULL, worker_main, &pool->workers[i]) != 0) {
            pool_free(pool, i);
            return SPEC_E_NOMEM;
        }
    }
    *out = pool;
    return SPEC_OK;
}

void cpu_pool_destroy(struct cpu_pool *pool)
{
    if (pool)
        pool_free(pool, pool->n_threads - 1);
}

int cpu_pool_size(const struct cpu_pool *pool)
{
    return pool->n_threads;
}

void cpu_pool_run(struct cpu_pool *pool, cpu_task_fn fn, void *arg)
{
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    publish(pool, fn, arg, pool->n_threads - 1);
    fn(arg, 0, pool->n_threads);
    for (int spin = 0; spin < SPIN_LIMIT; spin++) {
        if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0)
            return;
        spin_step(spin);
    }
    pthread_mutex_lock(&pool->mutex);
    pool->caller_sleeping = true;
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0)
        pthread_cond_wait(&pool->done_cond, &pool->mutex);
    pool->caller_sleeping = false;
    pthread_mutex_unlock(&pool->mutex);
}

/* Sense-reversing barrier: the last thread to arrive resets the count and advances the phase. */
void cpu_pool_barrier(struct cpu_pool *pool)
{
    const int n = pool->n_threads;
    if (n == 1)
        return;
    const unsigned phase = atomic_load_explicit(&pool->barrier_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->barrier_count, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&pool->barrier_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool->barrier_phase, 1, memory_order_release);
        return;
    }
    for (int spin = 0; atomic_load_explicit(&pool->barrier_phase, memory_order_acquire) == phase; spin++)
        spin_step(spin);
}

void *cpu_pool_scratch(struct cpu_pool *pool, size_t bytes)
{
    if (bytes <= pool->scratch_size)
        return pool->scratch;
    size_t size = (bytes + 63) & ~(size_t)63;
    if (size < bytes)
        return NULL;
    void *p = aligned_alloc(64, size);
    if (!p)
        return NULL;
    free(pool->scratch);
    pool->scratch = p;
    pool->scratch_size = size;
    return p;
}
