/* SPDX-License-Identifier: MIT */
/*
 * Worker threads, start/stop/shutdown hooks and graceful shutdown.
 *
 * mica_runtime_run() blocks SIGTERM/SIGINT in every thread and waits for
 * them on a signalfd in the calling (main) thread, beside an eventfd that
 * mica_runtime_stop(), the shutdown driver and exiting workers write to.
 * The main thread turns stop *requests* (stop_level: 1 the first, 2 any
 * later one) into what the workers act on (drain_level: 1 drain, 2 cancel
 * everything), in the order runtime.h promises:
 *
 *   request -- drain deadline fixed -- shutdown phases (a coroutine on
 *   worker 0 runs each phase's hooks and waits for them) -- drain_level 1:
 *   every worker runs its stop hooks and lets coroutines finish -- at the
 *   drain deadline, or on a second request, drain_level 2: cancel.
 *
 * Workers are told through their loop's eventfd: the hot path shares
 * nothing with this file. Signals registered with mica_runtime_on_signal()
 * (SIGHUP for log reopening) are read from the same signalfd and handed to
 * their callbacks on the main thread.
 */
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/sync.h"
#include "runtime/internal.h"

typedef struct hook {
    mica_worker_cb cb;
    void *arg;
} hook_t;

typedef struct signal_hook {
    int signo;
    mica_signal_cb cb;
    void *arg;
} signal_hook_t;

typedef struct shutdown_hook {
    mica_shutdown_cb cb;
    void *arg;
    mica_shutdown_phase_t phase;
    mica_runtime_t *rt;
} shutdown_hook_t;

/* The phase being run by the shutdown driver (worker 0 only). */
struct phase_run {
    mica_ctx_t *ctx;  /* ends at the drain deadline; shared by every hook */
    int pending;      /* hooks of this run that have not returned */
    mica_event_t done; /* set when pending drops to 0 */
};

struct mica_runtime {
    int nworkers;
    size_t stack_bytes;
    int64_t drain_ms;
    bool no_signals;
    int offload_threads;
    size_t offload_queue;
    mica_offload_pool_t *offload;

    hook_t *start_hooks, *stop_hooks;
    size_t nstart, nstop;
    mica__poll_hook_t *poll_hooks;
    size_t npoll;
    signal_hook_t *signal_hooks;
    size_t nsignal;
    shutdown_hook_t **shutdown_hooks; /* stable addresses: coroutines point at them */
    size_t nshutdown;
    struct phase_run *phase_run; /* worker 0's driver only */

    mica__loop_t *loops;
    /* for mica_runtime_stats() from any thread: the loops once initialized,
     * and the offload pool's lifetime under stats_lock */
    _Atomic(mica__loop_t *) stats_loops;
    pthread_mutex_t stats_lock;
    pthread_t *threads;
    int stopfd; /* eventfd: stop requests and worker exits wake the main thread */
    atomic_int stop_level;  /* requests: 0 none, 1 stop, 2+ stop now */
    atomic_int drain_level; /* what workers do: 0 run, 1 drain, 2 cancel everything */
    _Atomic int64_t drain_deadline_ms; /* fixed by the first request */
    atomic_bool phases_done;
    atomic_int exited;
    atomic_bool cancelled_work;
    atomic_bool start_failed; /* a start hook could not be spawned */
};

int mica__env_int(const char *name, int64_t min, int64_t max, int64_t *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end || n < min || n > max) {
        mica__log_error("invalid environment variable", "name", name, "value", v);
        return MICA_EINVAL;
    }
    *out = n;
    return 0;
}

int mica_runtime_new(mica_runtime_t **out, const mica_runtime_opts_t *opts)
{
    mica_runtime_opts_t o = {0};
    if (opts)
        o = *opts;
    int64_t workers = o.workers, drain = o.drain_timeout_ms;
    if (workers < 0 || drain < 0)
        return MICA_EINVAL;
    if (workers == 0) {
        workers = sysconf(_SC_NPROCESSORS_ONLN);
        if (workers < 1)
            workers = 1;
        if (mica__env_int("MICA_WORKERS", 1, 1024, &workers) != 0)
            return MICA_EINVAL;
    }
    if (drain == 0) {
        drain = 10000;
        if (mica__env_int("MICA_DRAIN_TIMEOUT_MS", 0, INT_MAX, &drain) != 0)
            return MICA_EINVAL;
    }
    int64_t othreads = o.offload_threads, oqueue = (int64_t)o.offload_queue;
    if (othreads < 0)
        return MICA_EINVAL;
    if (othreads == 0) {
        othreads = 4;
        if (mica__env_int("MICA_OFFLOAD_THREADS", 1, 1024, &othreads) != 0)
            return MICA_EINVAL;
    }
    if (oqueue == 0) {
        oqueue = 1024;
        if (mica__env_int("MICA_OFFLOAD_QUEUE", 1, 1 << 24, &oqueue) != 0)
            return MICA_EINVAL;
    }
    mica_runtime_t *rt = mica__calloc(1, sizeof(*rt));
    if (!rt)
        return MICA_ENOMEM;
    rt->nworkers = (int)workers;
    rt->drain_ms = drain;
    rt->stack_bytes = o.stack_bytes ? o.stack_bytes : 64 * 1024;
    rt->no_signals = o.no_signals;
    rt->offload_threads = (int)othreads;
    rt->offload_queue = (size_t)oqueue;
    rt->stopfd = -1;
    pthread_mutex_init(&rt->stats_lock, NULL);
    *out = rt;
    return 0;
}

int mica_runtime_workers(const mica_runtime_t *rt)
{
    return rt->nworkers;
}

static int add_hook(hook_t **hooks, size_t *n, mica_worker_cb cb, void *arg)
{
    hook_t *h = mica__realloc(*hooks, (*n + 1) * sizeof(*h));
    if (!h)
        return MICA_ENOMEM;
    h[*n] = (hook_t){cb, arg};
    *hooks = h;
    (*n)++;
    return 0;
}

int mica_runtime_on_start(mica_runtime_t *rt, mica_worker_cb cb, void *arg)
{
    return add_hook(&rt->start_hooks, &rt->nstart, cb, arg);
}

int mica_runtime_on_stop(mica_runtime_t *rt, mica_worker_cb cb, void *arg)
{
    return add_hook(&rt->stop_hooks, &rt->nstop, cb, arg);
}

int mica_runtime_on_shutdown(mica_runtime_t *rt, mica_shutdown_phase_t phase, mica_shutdown_cb cb,
                             void *arg)
{
    if (!cb || (unsigned)phase >= MICA_SHUTDOWN_PHASES)
        return MICA_EINVAL;
    shutdown_hook_t *h = mica__malloc(sizeof(*h));
    shutdown_hook_t **all = h ? mica__realloc(rt->shutdown_hooks,
                                              (rt->nshutdown + 1) * sizeof(*all))
                              : NULL;
    if (!all) {
        mica__free(h);
        return MICA_ENOMEM;
    }
    *h = (shutdown_hook_t){cb, arg, phase, rt};
    all[rt->nshutdown++] = h;
    rt->shutdown_hooks = all;
    return 0;
}

int mica_runtime_on_poll(mica_runtime_t *rt, mica_poll_cb before, mica_poll_cb after, void *arg)
{
    if (!before && !after)
        return MICA_EINVAL;
    mica__poll_hook_t *h = mica__realloc(rt->poll_hooks, (rt->npoll + 1) * sizeof(*h));
    if (!h)
        return MICA_ENOMEM;
    h[rt->npoll++] = (mica__poll_hook_t){before, after, arg};
    rt->poll_hooks = h;
    return 0;
}

int mica_runtime_on_signal(mica_runtime_t *rt, int signo, mica_signal_cb fn, void *arg)
{
    switch (signo) {
    case SIGTERM: case SIGINT: case SIGKILL: case SIGSTOP: case SIGPROF: case SIGPIPE:
    case SIGSEGV: case SIGBUS: case SIGFPE: case SIGILL: case SIGTRAP: case SIGABRT: case SIGSYS:
        return MICA_EINVAL;
    }
    if (!fn || signo < 1 || signo >= SIGRTMIN)
        return MICA_EINVAL;
    signal_hook_t *h = mica__realloc(rt->signal_hooks, (rt->nsignal + 1) * sizeof(*h));
    if (!h)
        return MICA_ENOMEM;
    h[rt->nsignal++] = (signal_hook_t){signo, fn, arg};
    rt->signal_hooks = h;
    return 0;
}

static void add_stats(mica_worker_stats_t *t, const mica_worker_stats_t *w)
{
    t->coroutines += w->coroutines;
    t->runnable += w->runnable;
    t->watched_fds += w->watched_fds;
    t->spawned += w->spawned;
    t->spawn_failed += w->spawn_failed;
    t->polls += w->polls;
    t->runs += w->runs;
    t->timers_fired += w->timers_fired;
    t->lag_us_sum += w->lag_us_sum;
    if (w->lag_us_last > t->lag_us_last)
        t->lag_us_last = w->lag_us_last;
    if (w->lag_us_max > t->lag_us_max)
        t->lag_us_max = w->lag_us_max;
}

int mica_runtime_stats(mica_runtime_t *rt, mica_runtime_stats_t *out,
                       mica_worker_stats_t *per_worker, int max_workers)
{
    memset(out, 0, sizeof(*out));
    out->workers = rt->nworkers;
    mica__loop_t *loops = atomic_load_explicit(&rt->stats_loops, memory_order_acquire);
    int n = per_worker ? (max_workers < rt->nworkers ? max_workers : rt->nworkers) : 0;
    for (int i = 0; i < rt->nworkers; i++) {
        mica_worker_stats_t w = {0};
        if (loops) {
            const mica__loop_stats_t *s = &loops[i].stats;
#define GET(field) w.field = atomic_load_explicit(&s->field, memory_order_relaxed)
            GET(coroutines);
            GET(runnable);
            GET(watched_fds);
            GET(spawned);
            GET(spawn_failed);
            GET(polls);
            GET(runs);
            GET(timers_fired);
            GET(lag_us_last);
            GET(lag_us_max);
            GET(lag_us_sum);
#undef GET
        }
        add_stats(&out->total, &w);
        if (i < n)
            per_worker[i] = w;
    }
    /* The pool comes and goes with mica_runtime_run(): read it under the
     * lock that run() takes to publish and withdraw it (workers never do). */
    pthread_mutex_lock(&rt->stats_lock);
    if (rt->offload) {
        out->offload_threads = (uint64_t)rt->offload_threads;
        mica__offload_stats(rt->offload, &out->offload_queued, &out->offload_busy,
                            &out->offload_rejected);
    }
    pthread_mutex_unlock(&rt->stats_lock);
    return n;
}

mica_offload_pool_t *mica__runtime_offload_pool(mica_runtime_t *rt)
{
    return rt->offload;
}

mica__loop_t *mica__runtime_loop(mica_runtime_t *rt, int id)
{
    return id >= 0 && id < rt->nworkers && rt->loops ? &rt->loops[id] : NULL;
}

int64_t mica__runtime_drain_deadline(const mica_runtime_t *rt)
{
    return atomic_load_explicit(&rt->drain_deadline_ms, memory_order_acquire);
}

int mica__runtime_drain_level(const mica_runtime_t *rt)
{
    return atomic_load_explicit(&rt->drain_level, memory_order_acquire);
}

void mica__runtime_run_stop_hooks(mica_runtime_t *rt, int worker_id)
{
    for (size_t i = 0; i < rt->nstop; i++)
        rt->stop_hooks[i].cb(worker_id, rt->stop_hooks[i].arg);
}

static void poke(int fd)
{
    uint64_t one = 1;
    ssize_t rc = write(fd, &one, sizeof(one));
    (void)rc; /* EAGAIN: the counter is already non-zero, the wake-up is pending */
}

static void raise_stop_level(mica_runtime_t *rt, int level)
{
    int cur = atomic_load(&rt->stop_level);
    while (cur < level && !atomic_compare_exchange_weak(&rt->stop_level, &cur, level))
        ;
}

void mica_runtime_stop(mica_runtime_t *rt)
{
    raise_stop_level(rt, 1);
    if (rt->stopfd >= 0)
        poke(rt->stopfd);
}

/* ---- shutdown phases ------------------------------------------------------ */

static const char *const phase_names[] = {"unready", "deregister"};

static void run_shutdown_hook(void *arg)
{
    shutdown_hook_t *h = arg;
    struct phase_run *pr = h->rt->phase_run;
    h->cb(pr->ctx, h->arg);
    if (--pr->pending == 0) /* worker 0 only: no atomics needed */
        mica_event_set(&pr->done);
}

/*
 * Runs the phases on worker 0: each phase's hooks start together, each in
 * its own coroutine, and the next phase starts when they have all
 * returned. At the drain deadline (or on a second stop request) the
 * remaining phases are skipped. `pr` lives on this coroutine's stack, so it
 * returns only once every hook has, however late (the drain's cancellation
 * ends their waits).
 */
static void shutdown_driver(void *arg)
{
    mica_runtime_t *rt = arg;
    int64_t deadline = mica__runtime_drain_deadline(rt);
    struct phase_run pr = {.done = MICA_EVENT_INIT};
    if (mica_ctx_with_deadline(NULL, deadline, &pr.ctx) != 0) {
        mica__log_error("shutdown hooks skipped: out of memory");
        goto done;
    }
    rt->phase_run = &pr;
    for (int phase = 0; phase < MICA_SHUTDOWN_PHASES; phase++) {
        mica_event_reset(&pr.done);
        for (size_t i = 0; i < rt->nshutdown; i++) {
            if ((int)rt->shutdown_hooks[i]->phase != phase)
                continue;
            pr.pending++;
            if (mica_go(run_shutdown_hook, rt->shutdown_hooks[i]) != 0) {
                pr.pending--;
                mica__log_error("shutdown hook skipped: out of memory", "phase",
                                phase_names[phase]);
            }
        }
        if (pr.pending == 0)
            continue;
        int rc = mica_event_wait(&pr.done, NULL, deadline);
        if (rc != 0) {
            mica_ctx_cancel(pr.ctx);
            mica__log_warn("shutdown phase cut short", "phase", phase_names[phase], "reason",
                           rc == MICA_ETIMEDOUT ? "drain deadline" : "cancelled");
            break;
        }
    }
done:
    atomic_store_explicit(&rt->phases_done, true, memory_order_release);
    poke(rt->stopfd);
    while (pr.pending > 0) /* stragglers: cancelled by the drain, they return soon */
        if (mica_event_wait(&pr.done, NULL, MICA_NO_DEADLINE) != 0)
            mica_yield(); /* past the drain deadline waits fail at once */
    mica_ctx_free(pr.ctx);
}

/* ---- workers ----------------------------------------------------------- */

static void run_start_hook(void *arg)
{
    hook_t *h = arg; /* rt->start_hooks stays put while the runtime runs */
    h->cb(mica_worker_id(), h->arg);
}

static void *worker_main(void *arg)
{
    mica__loop_t *loop = arg;
    mica_runtime_t *rt = loop->rt;
    char name[16];
    snprintf(name, sizeof(name), "mica-w%d", loop->id);
    pthread_setname_np(pthread_self(), name);

    for (size_t i = 0; i < rt->nstart; i++) {
        mica__coro_t *co;
        if (mica__coro_new(loop, run_start_hook, &rt->start_hooks[i], &co) != 0) {
            /* A worker without its start hooks would serve nothing: stop
             * the runtime, and have run() say why. */
            mica__log_error("cannot run a start hook: out of memory");
            atomic_store(&rt->start_failed, true);
            mica_runtime_stop(rt);
            break;
        }
        mica__loop_wake(loop, co, 0);
    }
    /* A drain that raced with thread start-up must still be seen. */
    if (mica__runtime_drain_level(rt) > 0)
        poke(loop->wakefd);
    mica__loop_run(loop);
    if (loop->cancel_all)
        atomic_store(&rt->cancelled_work, true);
    atomic_fetch_add(&rt->exited, 1);
    poke(rt->stopfd);
    return NULL;
}

static void broadcast(mica_runtime_t *rt)
{
    for (int i = 0; i < rt->nworkers; i++)
        poke(rt->loops[i].wakefd);
}

int mica_runtime_run(mica_runtime_t *rt)
{
    int rc = 0;
    rt->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (rt->stopfd < 0)
        return -errno;
    signal(SIGPIPE, SIG_IGN);

    sigset_t set, old;
    sigemptyset(&set);
    if (!rt->no_signals) {
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
    }
    for (size_t i = 0; i < rt->nsignal; i++)
        sigaddset(&set, rt->signal_hooks[i].signo);
    bool signals = !rt->no_signals || rt->nsignal > 0;
    int sigfd = -1;
    if (signals) {
        pthread_sigmask(SIG_BLOCK, &set, &old);
        sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
        if (sigfd < 0) {
            rc = -errno;
            goto out_mask;
        }
    }

    mica_offload_pool_t *pool;
    rc = mica_offload_pool_new(&pool, rt->offload_threads, rt->offload_queue);
    if (rc != 0)
        goto out_sig;
    pthread_mutex_lock(&rt->stats_lock);
    rt->offload = pool;
    pthread_mutex_unlock(&rt->stats_lock);
    rt->loops = mica__calloc((size_t)rt->nworkers, sizeof(*rt->loops));
    rt->threads = mica__calloc((size_t)rt->nworkers, sizeof(*rt->threads));
    if (!rt->loops || !rt->threads) {
        rc = MICA_ENOMEM;
        goto out_sig;
    }
    int started = 0, inited = 0;
    for (; inited < rt->nworkers; inited++) {
        rc = mica__loop_init(&rt->loops[inited], inited, rt, rt->stack_bytes);
        if (rc != 0)
            goto out_loops;
        rt->loops[inited].poll_hooks = rt->poll_hooks;
        rt->loops[inited].npoll_hooks = rt->npoll;
    }
    atomic_store_explicit(&rt->stats_loops, rt->loops, memory_order_release);
    for (; started < rt->nworkers; started++) {
        rc = -pthread_create(&rt->threads[started], NULL, worker_main, &rt->loops[started]);
        if (rc != 0) {
            mica_runtime_stop(rt);
            broadcast(rt);
            break;
        }
    }

    struct pollfd pfd[2] = {{.fd = rt->stopfd, .events = POLLIN}, {.fd = sigfd, .events = POLLIN}};
    bool shutting_down = false;
    int sent = 0;
    for (;;) {
        /* Requests -> phases -> drain -> cancel (see the top of the file). */
        int req = atomic_load(&rt->stop_level);
        int64_t now = mica_now_ms(), deadline = MICA_NO_DEADLINE;
        if (req >= 1 && !shutting_down) {
            shutting_down = true;
            deadline = now + rt->drain_ms;
            atomic_store_explicit(&rt->drain_deadline_ms, deadline, memory_order_release);
            if (rt->nshutdown == 0 || started == 0 ||
                mica__loop_post_spawn(&rt->loops[0], shutdown_driver, rt) != 0)
                atomic_store(&rt->phases_done, true);
        }
        if (shutting_down)
            deadline = mica__runtime_drain_deadline(rt);
        bool phases_over = atomic_load_explicit(&rt->phases_done, memory_order_acquire) ||
                           now >= deadline;
        int want = req >= 2 ? 2 : shutting_down && phases_over ? 1 : 0;
        if (want > sent) {
            sent = want;
            atomic_store_explicit(&rt->drain_level, want, memory_order_release);
            broadcast(rt);
        }
        if (atomic_load(&rt->exited) >= started)
            break;
        int timeout = -1; /* phases running: wake at the drain deadline */
        if (shutting_down && sent == 0)
            timeout = deadline - now > INT_MAX ? INT_MAX : (int)(deadline - now);
        poll(pfd, sigfd >= 0 ? 2 : 1, timeout < 0 ? -1 : timeout);
        uint64_t n;
        while (read(rt->stopfd, &n, sizeof(n)) > 0)
            ;
        struct signalfd_siginfo si;
        while (sigfd >= 0 && read(sigfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo != SIGTERM && si.ssi_signo != SIGINT) {
                for (size_t i = 0; i < rt->nsignal; i++)
                    if (rt->signal_hooks[i].signo == (int)si.ssi_signo)
                        rt->signal_hooks[i].cb((int)si.ssi_signo, rt->signal_hooks[i].arg);
                continue;
            }
            raise_stop_level(rt, atomic_load(&rt->stop_level) + 1);
            mica__log_info(atomic_load(&rt->stop_level) == 1 ? "draining" : "cancelling",
                           "signal", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(rt->threads[i], NULL);
    if (rc == 0 && atomic_load(&rt->start_failed))
        rc = MICA_ENOMEM;
    if (rc == 0 && atomic_load(&rt->cancelled_work))
        rc = MICA_ETIMEDOUT;

out_loops:
    for (int i = 0; i < inited; i++)
        mica__loop_destroy(&rt->loops[i]);
out_sig:
    pthread_mutex_lock(&rt->stats_lock);
    pool = rt->offload;
    rt->offload = NULL;
    pthread_mutex_unlock(&rt->stats_lock);
    mica_offload_pool_free(pool);
    if (sigfd >= 0)
        close(sigfd);
out_mask:
    if (signals)
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(rt->stopfd);
    rt->stopfd = -1;
    return rc;
}

void mica_runtime_free(mica_runtime_t *rt)
{
    if (!rt)
        return;
    mica__free(rt->loops);
    mica__free(rt->threads);
    mica__free(rt->start_hooks);
    mica__free(rt->stop_hooks);
    mica__free(rt->poll_hooks);
    mica__free(rt->signal_hooks);
    for (size_t i = 0; i < rt->nshutdown; i++)
        mica__free(rt->shutdown_hooks[i]);
    mica__free(rt->shutdown_hooks);
    pthread_mutex_destroy(&rt->stats_lock);
    mica__free(rt);
}

/* ---- coroutine API ------------------------------------------------------- */

int mica_worker_id(void)
{
    mica__loop_t *loop = mica__loop_current();
    return loop ? loop->id : -1;
}

int mica_worker_count(void)
{
    mica__loop_t *loop = mica__loop_current();
    return loop ? loop->rt->nworkers : 0;
}

bool mica_worker_stopping(void)
{
    mica__loop_t *loop = mica__loop_current();
    return loop && loop->stopping;
}

int mica_go(mica_coro_fn fn, void *arg)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop)
        return MICA_EINVAL;
    mica__coro_t *co;
    int rc = mica__coro_new(loop, fn, arg, &co);
    if (rc != 0)
        return rc;
    mica__loop_wake(loop, co, 0);
    return 0;
}

int mica_go_on(int worker, mica_coro_fn fn, void *arg)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop)
        return MICA_EINVAL;
    mica__loop_t *target = mica__runtime_loop(loop->rt, worker);
    if (!target)
        return MICA_EINVAL;
    if (target == loop)
        return mica_go(fn, arg);
    return mica__loop_post_spawn(target, fn, arg);
}

void mica_yield(void)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop || !loop->current)
        return;
    mica__loop_yield(loop);
}

int mica_sleep_ms(int64_t ms)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop || !loop->current)
        return MICA_EINVAL;
    int rc = mica__wait(loop, mica_deadline_in(ms < 0 ? 0 : ms));
    if (rc == MICA_ETIMEDOUT)
        return 0;
    return rc;
}

int64_t mica_now_ms(void)
{
    mica__loop_t *loop = mica__loop_current();
    if (loop)
        return loop->now_ms;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mica_deadline_in(int64_t timeout_ms)
{
    if (timeout_ms < 0)
        return MICA_NO_DEADLINE;
    int64_t now = mica_now_ms();
    if (timeout_ms > MICA_NO_DEADLINE - now - 1)
        return MICA_NO_DEADLINE;
    return now + timeout_ms;
}
