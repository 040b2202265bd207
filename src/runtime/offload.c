/* SPDX-License-Identifier: MIT */
/*
 * Offload pool: a fixed set of threads and a bounded FIFO of jobs, for work
 * that would block a worker's loop (file I/O, SQLite, CPU-heavy code).
 *
 * A job is a waiter record (wait.h) and the pool's FIFO of jobs is a wait
 * queue: a thread takes the first job off it, runs it, and wakes its
 * coroutine. The job lives on the submitting coroutine's stack, which is
 * safe because the coroutine never returns while the pool can still touch
 * the job: a ctx that ends while the job is queued takes it off the queue;
 * once a thread has started it, the coroutine waits for the end. A full
 * queue refuses at once with MICA_EOVERLOAD rather than letting latency
 * grow without bound.
 */
#include <sched.h>
#include <stdlib.h>

#include "common/alloc.h"
#include "runtime/internal.h"

typedef struct job {
    mica__waiter_t w; /* the submitting coroutine; on the pool's queue while queued */
    mica_offload_fn fn;
    void *arg;
    int result;
    int state; /* 0 queued, 1 running, 2 done */
} job_t;

struct mica_offload_pool {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mica__waitq_t jobs;
    size_t len, cap;
    bool stop;
    int nthreads;
    pthread_t *threads;
    /* for mica_runtime_stats(): written under the lock, read from anywhere */
    atomic_size_t stat_queued;
    atomic_int stat_busy;
    atomic_uint_fast64_t stat_rejected;
};

static void set_len(mica_offload_pool_t *p, size_t len)
{
    p->len = len;
    atomic_store_explicit(&p->stat_queued, len, memory_order_relaxed);
}

static void *pool_main(void *arg)
{
    mica_offload_pool_t *p = arg;
    pthread_setname_np(pthread_self(), "mica-offload");
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (mica__waitq_empty(&p->jobs) && !p->stop)
            pthread_cond_wait(&p->cond, &p->lock);
        mica__waiter_t *first = mica__waitq_first(&p->jobs);
        if (!first)
            break;
        job_t *j = mica__list_entry(first, job_t, w);
        mica__waitq_remove(&j->w);
        set_len(p, p->len - 1);
        j->state = 1;
        atomic_fetch_add_explicit(&p->stat_busy, 1, memory_order_relaxed);
        pthread_mutex_unlock(&p->lock);
        int result = j->fn(j->arg);
        pthread_mutex_lock(&p->lock);
        atomic_fetch_sub_explicit(&p->stat_busy, 1, memory_order_relaxed);
        j->result = result;
        j->state = 2;
        mica__waiter_wake(&j->w, 0);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int mica_offload_pool_new(mica_offload_pool_t **out, int threads, size_t queue_len)
{
    if (threads <= 0 || queue_len == 0)
        return MICA_EINVAL;
    mica_offload_pool_t *p = mica__calloc(1, sizeof(*p));
    if (!p || !(p->threads = mica__calloc((size_t)threads, sizeof(pthread_t)))) {
        mica__free(p);
        return MICA_ENOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    mica__waitq_init(&p->jobs);
    p->cap = queue_len;
    for (; p->nthreads < threads; p->nthreads++) {
        if (pthread_create(&p->threads[p->nthreads], NULL, pool_main, p) != 0) {
            mica_offload_pool_free(p);
            return MICA_ENOMEM;
        }
    }
    *out = p;
    return 0;
}

void mica_offload_pool_free(mica_offload_pool_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    mica__free(p->threads);
    mica__free(p);
}

int mica_offload(mica_offload_pool_t *p, mica_ctx_t *ctx, mica_offload_fn fn, void *arg,
                 int *result)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop || !loop->current || !fn)
        return MICA_EINVAL;
    if (!p && !(p = mica__runtime_offload_pool(loop->rt)))
        return MICA_EINVAL;
    int err = mica_ctx_err(ctx);
    if (err)
        return err;
    job_t j = {.fn = fn, .arg = arg};
    pthread_mutex_lock(&p->lock);
    if (p->len >= p->cap || p->stop) {
        pthread_mutex_unlock(&p->lock);
        atomic_fetch_add_explicit(&p->stat_rejected, 1, memory_order_relaxed);
        return MICA_EOVERLOAD;
    }
    mica__waiter_init(&j.w);
    mica__waitq_push(&p->jobs, &j.w);
    set_len(p, p->len + 1);
    pthread_cond_signal(&p->cond);
    /* Not mica__waiter_park(): a job that has started cannot be withdrawn,
     * so an ended ctx stops the wait only while the job is still queued. */
    for (;;) {
        pthread_mutex_unlock(&p->lock);
        int rc = loop->cancel_all ? (sched_yield(), MICA_ECANCELED)
                                  : mica__wait_ctx(loop, ctx, MICA_NO_DEADLINE, j.w.seq);
        pthread_mutex_lock(&p->lock);
        if (j.state == 2)
            break;
        if (rc != 0 && j.state == 0) {
            mica__waitq_remove(&j.w);
            set_len(p, p->len - 1);
            pthread_mutex_unlock(&p->lock);
            return rc;
        }
        if (rc != 0)
            ctx = NULL; /* running: it cannot be stopped, wait for it to end */
        j.w.seq = mica__wait_prepare(loop);
    }
    pthread_mutex_unlock(&p->lock);
    if (result)
        *result = j.result;
    return 0;
}

void mica__offload_stats(mica_offload_pool_t *p, uint64_t *queued, uint64_t *busy,
                         uint64_t *rejected)
{
    *queued = atomic_load_explicit(&p->stat_queued, memory_order_relaxed);
    *busy = (uint64_t)atomic_load_explicit(&p->stat_busy, memory_order_relaxed);
    *rejected = atomic_load_explicit(&p->stat_rejected, memory_order_relaxed);
}
