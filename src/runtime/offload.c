/* SPDX-License-Identifier: MIT */
/*
 * Offload pool: a fixed set of threads and a bounded FIFO of jobs, for work
 * that would block a worker's loop (file I/O, SQLite, CPU-heavy code).
 *
 * A job lives on the submitting coroutine's stack, which is safe because the
 * coroutine never returns while the pool can still touch the job: a ctx
 * that ends while the job is queued takes it off the queue; once a thread
 * has started it, the coroutine waits for the end. A full queue refuses at
 * once with MICA_EOVERLOAD rather than letting latency grow without bound.
 */
#include <sched.h>
#include <stdlib.h>

#include "runtime/internal.h"

typedef struct job {
    mica_offload_fn fn;
    void *arg;
    int result;
    int state; /* 0 queued, 1 running, 2 done */
    mica__loop_t *loop;
    mica__coro_t *co;
    uint64_t seq;
    struct job *prev, *next;
} job_t;

struct mica_offload_pool {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job_t *head, *tail;
    size_t len, cap;
    bool stop;
    int nthreads;
    pthread_t *threads;
};

static void unlink_job(mica_offload_pool_t *p, job_t *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        p->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        p->tail = j->prev;
    p->len--;
}

static void *pool_main(void *arg)
{
    mica_offload_pool_t *p = arg;
    pthread_setname_np(pthread_self(), "mica-offload");
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->head && !p->stop)
            pthread_cond_wait(&p->cond, &p->lock);
        if (!p->head)
            break;
        job_t *j = p->head;
        unlink_job(p, j);
        j->state = 1;
        pthread_mutex_unlock(&p->lock);
        int result = j->fn(j->arg);
        pthread_mutex_lock(&p->lock);
        j->result = result;
        j->state = 2;
        mica__wake_any(j->loop, j->co, j->seq, 0);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int mica_offload_pool_new(mica_offload_pool_t **out, int threads, size_t queue_len)
{
    if (threads <= 0 || queue_len == 0)
        return MICA_EINVAL;
    mica_offload_pool_t *p = calloc(1, sizeof(*p));
    if (!p || !(p->threads = calloc((size_t)threads, sizeof(pthread_t)))) {
        free(p);
        return MICA_ENOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
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
    free(p->threads);
    free(p);
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
    job_t j = {.fn = fn, .arg = arg, .loop = loop, .co = loop->current};
    pthread_mutex_lock(&p->lock);
    if (p->len >= p->cap || p->stop) {
        pthread_mutex_unlock(&p->lock);
        return MICA_EOVERLOAD;
    }
    j.seq = mica__wait_prepare(loop);
    j.prev = p->tail;
    if (p->tail)
        p->tail->next = &j;
    else
        p->head = &j;
    p->tail = &j;
    p->len++;
    pthread_cond_signal(&p->cond);
    for (;;) {
        pthread_mutex_unlock(&p->lock);
        int rc = loop->cancel_all ? (sched_yield(), MICA_ECANCELED)
                                  : mica__wait_ctx(loop, ctx, MICA_NO_DEADLINE, j.seq);
        pthread_mutex_lock(&p->lock);
        if (j.state == 2)
            break;
        if (rc != 0 && j.state == 0) {
            unlink_job(p, &j);
            pthread_mutex_unlock(&p->lock);
            return rc;
        }
        if (rc != 0)
            ctx = NULL; /* running: it cannot be stopped, wait for it to end */
        j.seq = mica__wait_prepare(loop);
    }
    pthread_mutex_unlock(&p->lock);
    if (result)
        *result = j.result;
    return 0;
}
