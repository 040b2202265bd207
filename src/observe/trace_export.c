/* SPDX-License-Identifier: MIT */
/*
 * The batch span processor, one per worker (OpenTelemetry's
 * BatchSpanProcessor with its defaults: a queue of 2048, batches of 512,
 * an export at least every 5 s, 30 s per export).
 *
 * A span that ends is appended to its worker's queue: a plain list that
 * only that worker's thread touches, so ending a span takes no lock and
 * no atomic read-modify-write; a full queue drops the span and counts it.
 * The worker's exporter coroutine wakes when a batch is full or the delay
 * has passed, encodes up to one batch (trace_otlp.c) and posts it through
 * the transport (trace_transport.c). A request never waits for any of
 * this: export happens in its own coroutine, and while it waits on the
 * receiver -- one that hangs, one that asks to retry -- new spans pile up
 * in the queue until it is full, then are dropped.
 *
 * Retries (OTLP/HTTP): 429, 502, 503 and 504, and failures to connect or
 * to get an answer, are retried with exponential backoff (1 s doubling to
 * 30 s, with jitter) or after the receiver's Retry-After, as long as the
 * export's 30 s last; any other status drops the batch.
 *
 * Shutdown: when the worker drains, the exporter stops waiting for full
 * batches, cuts short an export in progress, and flushes what is queued
 * with a short deadline, until no recording span of the tracer is still
 * open on any worker; the runtime's drain deadline bounds it all.
 */
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "observe/trace_internal.h"

#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 30000
#define FLUSH_BUDGET_MS 3000 /* each export once the worker drains */

/* Per exporter coroutine; lives on its stack. */
typedef struct exporter {
    mica_tracer_t *t;
    mica__trace_worker_t *w;
    void *conn;
    mica__span_rec_t **batch; /* room for max_batch */
    mica_ctx_t *run_ctx;      /* cancelled when the worker drains: ends a pending export */
    int64_t stop_ms;          /* when the drain began, 0 before */
    unsigned seed;
    mica__post_result_t res; /* the last answer */
} exporter_t;

static void set_len(mica__trace_worker_t *w, size_t len)
{
    w->len = len;
    atomic_store_explicit(&w->queued, len, memory_order_relaxed);
}

void mica__trace_enqueue(mica_tracer_t *t, mica__span_rec_t *r)
{
    mica__trace_worker_t *w = mica__trace_worker(t);
    if (!w) { /* ended on a thread that is not one of the tracer's workers */
        atomic_fetch_add(&t->dropped_elsewhere, 1);
        atomic_fetch_add(&t->ended_elsewhere, 1);
        mica__free(r);
        return;
    }
    mica__count(&w->ended, 1);
    if (w->len >= t->o.max_queue) {
        mica__count(&w->dropped, 1);
        mica__rec_put(w, r);
        return;
    }
    r->next = NULL;
    if (w->tail)
        w->tail->next = r;
    else
        w->head = r;
    w->tail = r;
    set_len(w, w->len + 1);
    if (w->len == t->o.max_batch || w->stopping)
        mica_event_set(&w->wake);
}

/* Whether every recording span of the tracer, on any worker, has ended. */
static bool all_ended(const mica_tracer_t *t)
{
    uint64_t started = 0, ended = atomic_load_explicit(&t->ended_elsewhere, memory_order_relaxed);
    for (int i = 0; i < t->nworkers; i++) {
        started += atomic_load_explicit(&t->w[i].started, memory_order_relaxed);
        ended += atomic_load_explicit(&t->w[i].ended, memory_order_relaxed);
    }
    return ended >= started;
}

static int64_t backoff_ms(exporter_t *x, int64_t base)
{
    /* +-20 % so that the workers' exporters do not retry in step */
    int64_t j = base / 5;
    return base - j + (int64_t)(rand_r(&x->seed) % (unsigned)(2 * j + 1));
}

static bool retryable(int status)
{
    return status == 429 || status == 502 || status == 503 || status == 504;
}

/*
 * Posts `body` until it is accepted, refused for good, or time is up.
 * Returns the spans the receiver accepted: n, fewer when it answered with
 * a partial success (logged), or 0.
 */
static size_t deliver(exporter_t *x, const uint8_t *body, size_t len, size_t n)
{
    mica_tracer_t *t = x->t;
    mica__trace_worker_t *w = x->w;
    int64_t deadline = mica_deadline_in(t->o.export_timeout_ms);
    int64_t wait = BACKOFF_FIRST_MS;
    for (;;) {
        bool stopping = w->stopping;
        int64_t d = deadline;
        if (stopping && x->stop_ms + FLUSH_BUDGET_MS < d)
            d = x->stop_ms + FLUSH_BUDGET_MS;
        mica__post_result_t *res = &x->res;
        int rc = t->transport->post(x->conn, stopping ? NULL : x->run_ctx, d, body, len, res);
        if (rc == 0 && res->status >= 200 && res->status < 300) {
            char msg[256];
            int64_t rejected = mica__otlp_rejected(res->body, res->body_len, msg, sizeof(msg));
            if (rejected > 0) { /* OTLP partial success: not to be retried */
                mica_log_fields(MICA_LOG_WARN, "trace: the OTLP receiver rejected spans",
                                (mica_log_field_t[]){MICA_LOG_INT("rejected", rejected),
                                                     MICA_LOG_STR("error", msg)},
                                2);
                return rejected >= (int64_t)n ? 0 : n - (size_t)rejected;
            }
            return n;
        }
        mica__count(&w->failures, 1);
        if (!stopping && w->stopping)
            continue; /* cut short by the drain: once more, as a final flush */
        if (rc == 0 && !retryable(res->status)) {
            mica_log_fields(MICA_LOG_WARN, "trace: the OTLP receiver refused spans",
                            (mica_log_field_t[]){MICA_LOG_STR("endpoint", t->endpoint),
                                                 MICA_LOG_INT("status", res->status)},
                            2);
            return 0;
        }
        if (stopping)
            return 0; /* the final flush failed too */
        int64_t pause =
            rc == 0 && res->retry_after_ms >= 0 ? res->retry_after_ms : backoff_ms(x, wait);
        wait = wait * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : wait * 2;
        if (mica_now_ms() + pause >= deadline)
            return 0;
        mica_ctx_sleep(x->run_ctx, pause); /* the drain cuts it short: then the final flush */
    }
}

/* Takes up to one batch off the queue and exports it. */
static void export_batch(exporter_t *x)
{
    mica_tracer_t *t = x->t;
    mica__trace_worker_t *w = x->w;
    size_t n = 0;
    while (w->head && n < t->o.max_batch) {
        x->batch[n++] = w->head;
        w->head = w->head->next;
    }
    if (!w->head)
        w->tail = NULL;
    set_len(w, w->len - n);
    uint8_t *body;
    size_t len, accepted = 0;
    if (mica__otlp_encode(t, x->batch, n, &body, &len) == 0) {
        accepted = deliver(x, body, len, n);
        mica__free(body);
    }
    if (accepted)
        mica__count(&w->exports, 1);
    mica__count(&w->exported, accepted);
    mica__count(&w->dropped, n - accepted);
    for (size_t i = 0; i < n; i++)
        mica__rec_put(w, x->batch[i]);
}

static void exporter_main(int worker, void *arg)
{
    mica_tracer_t *t = arg;
    exporter_t x = {.t = t, .w = &t->w[worker], .seed = (unsigned)worker * 2654435761u + 1};
    mica__trace_worker_t *w = x.w;
    if (t->transport->open(&x.conn, &t->target) != 0 ||
        !(x.batch = mica__malloc(t->o.max_batch * sizeof(*x.batch))) ||
        mica_ctx_with_cancel(NULL, &x.run_ctx) != 0) {
        mica__log_error("trace: no memory for a worker's exporter: its spans are dropped");
        t->transport->close(x.conn);
        mica__free(x.batch);
        return;
    }
    w->run_ctx = x.run_ctx;
    w->running = true;
    int64_t next_ms = mica_now_ms() + t->o.schedule_delay_ms;
    for (;;) {
        mica_event_reset(&w->wake);
        if (w->stopping && !x.stop_ms)
            x.stop_ms = mica_now_ms();
        bool due = mica_now_ms() >= next_ms;
        if (w->len >= t->o.max_batch || (w->len && (due || w->stopping))) {
            export_batch(&x);
            next_ms = mica_now_ms() + t->o.schedule_delay_ms;
            continue;
        }
        if (due)
            next_ms = mica_now_ms() + t->o.schedule_delay_ms;
        if (w->stopping && !w->len && all_ended(t))
            break;
        /* Draining, spans of requests still in flight will come: look again soon. */
        int64_t deadline = w->stopping ? mica_deadline_in(20) : next_ms;
        if (mica_event_wait(&w->wake, NULL, deadline) == MICA_ECANCELED)
            break; /* the drain deadline passed */
    }
    w->running = false;
    w->run_ctx = NULL;
    mica_ctx_free(x.run_ctx);
    t->transport->close(x.conn);
    mica__free(x.batch);
}

static void exporter_stop(int worker, void *arg)
{
    mica_tracer_t *t = arg;
    mica__trace_worker_t *w = &t->w[worker];
    w->stopping = true;
    if (w->run_ctx)
        mica_ctx_cancel(w->run_ctx); /* an export waiting on the receiver stops waiting */
    mica_event_set(&w->wake);
}

int mica__trace_export_start(mica_tracer_t *t)
{
    int rc = mica_runtime_on_start(t->rt, exporter_main, t);
    return rc == 0 ? mica_runtime_on_stop(t->rt, exporter_stop, t) : rc;
}
