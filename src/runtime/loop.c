/* SPDX-License-Identifier: MIT */
/*
 * The per-worker event loop and scheduler.
 *
 * One iteration: run every coroutine that was runnable when the iteration
 * began (so a coroutine that yields in a loop cannot starve I/O), then block
 * in epoll_wait until the nearest timer, then turn I/O events and expired
 * timers into runnable coroutines.
 *
 * fds are registered once, edge-triggered for both directions, and never
 * modified again: a request costs no epoll_ctl. An edge that arrives while
 * nobody waits is remembered in the fd's slot (`readable`/`writable`), so a
 * coroutine that goes to wait after a short read, while data it has not seen
 * arrived in between, returns at once instead of sleeping forever.
 *
 * Timers are a binary min-heap of the waiting coroutines themselves (each
 * coroutine waits for at most one deadline at a time), so arming and
 * disarming a timeout allocates nothing: a spawn reserves the heap slot its
 * coroutine may need, and a wait can never fail for want of memory.
 */
#include <assert.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "runtime/internal.h"

static _Thread_local mica__loop_t *tls_loop;

mica__loop_t *mica__loop_current(void)
{
    return tls_loop;
}

static void update_time(mica__loop_t *loop)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    loop->now_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    loop->now_ms = loop->now_us / 1000;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    loop->now_sec_wall = ts.tv_sec;
}

int mica__loop_init(mica__loop_t *loop, int id, mica_runtime_t *rt, size_t stack_bytes)
{
    memset(loop, 0, sizeof(*loop));
    loop->id = id;
    loop->rt = rt;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        return -errno;
    loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wakefd < 0) {
        int rc = -errno;
        close(loop->epfd);
        return rc;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = loop->wakefd};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wakefd, &ev) != 0) {
        int rc = -errno;
        close(loop->wakefd);
        close(loop->epfd);
        return rc;
    }
    pthread_mutex_init(&loop->remote_lock, NULL);
    mica__stack_pool_init(loop, stack_bytes);
    update_time(loop);
    return 0;
}

void mica__loop_destroy(mica__loop_t *loop)
{
    assert(loop->ncoros == 0);
    /* Spawns posted after this worker stopped are dropped (wake-ups cannot
     * be left: the loop only exits once no coroutine, zombies included, is left). */
    for (mica__msg_t *m = loop->remote_head, *next; m; m = next) {
        next = m->next;
        mica__free(m);
    }
    pthread_mutex_destroy(&loop->remote_lock);
    mica__free(loop->spawns);
    mica__stack_pool_destroy(loop);
    mica__free(loop->heap);
    mica__free(loop->io);
    close(loop->wakefd);
    close(loop->epfd);
    loop->heap = NULL;
    loop->io = NULL;
}

/* ---- timer heap ------------------------------------------------------------ */

static void heap_swap(mica__coro_t **h, size_t a, size_t b)
{
    mica__coro_t *t = h[a];
    h[a] = h[b];
    h[b] = t;
    h[a]->heap_index = a;
    h[b]->heap_index = b;
}

static void heap_up(mica__coro_t **h, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h[parent]->deadline_ms <= h[i]->deadline_ms)
            break;
        heap_swap(h, i, parent);
        i = parent;
    }
}

static void heap_down(mica__coro_t **h, size_t len, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, min = i;
        if (l < len && h[l]->deadline_ms < h[min]->deadline_ms)
            min = l;
        if (r < len && h[r]->deadline_ms < h[min]->deadline_ms)
            min = r;
        if (min == i)
            return;
        heap_swap(h, i, min);
        i = min;
    }
}

int mica__loop_reserve_timers(mica__loop_t *loop, size_t n)
{
    if (n <= loop->heap_cap)
        return 0;
    size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 256;
    while (cap < n)
        cap *= 2;
    mica__coro_t **h = mica__realloc(loop->heap, cap * sizeof(*h));
    if (!h)
        return MICA_ENOMEM;
    loop->heap = h;
    loop->heap_cap = cap;
    return 0;
}

/* Never fails: mica__coro_new() reserved a slot for every live coroutine. */
static void heap_push(mica__loop_t *loop, mica__coro_t *co)
{
    assert(loop->heap_len < loop->heap_cap);
    co->heap_index = loop->heap_len;
    loop->heap[loop->heap_len++] = co;
    heap_up(loop->heap, co->heap_index);
}

static void heap_remove(mica__loop_t *loop, mica__coro_t *co)
{
    size_t i = co->heap_index, last = --loop->heap_len;
    if (i != last) {
        heap_swap(loop->heap, i, last);
        heap_up(loop->heap, i);
        heap_down(loop->heap, loop->heap_len, i);
    }
    co->deadline_ms = MICA_NO_DEADLINE;
}

/* ---- scheduling ------------------------------------------------------------ */

void mica__loop_wake(mica__loop_t *loop, mica__coro_t *co, int result)
{
    if (co->queued)
        return;
    co->queued = true;
    loop->nrunnable++;
    co->wake_result = result;
    co->next_ready = NULL;
    if (loop->ready_tail)
        loop->ready_tail->next_ready = co;
    else
        loop->ready_head = co;
    loop->ready_tail = co;
}

uint64_t mica__wait_prepare(mica__loop_t *loop)
{
    return ++loop->current->wait_seq;
}

int mica__wait(mica__loop_t *loop, int64_t deadline_ms)
{
    mica__wait_prepare(loop);
    return mica__wait_seq(loop, deadline_ms);
}

int mica__wait_seq(mica__loop_t *loop, int64_t deadline_ms)
{
    mica__coro_t *co = loop->current;
    assert(co != NULL);
    if (loop->cancel_all)
        return MICA_ECANCELED;
    if (deadline_ms != MICA_NO_DEADLINE) {
        if (deadline_ms <= loop->now_ms)
            return MICA_ETIMEDOUT;
        co->deadline_ms = deadline_ms;
        heap_push(loop, co);
    }
    co->waiting = true;
    mica__coro_suspend(loop);
    co->waiting = false;
    if (co->deadline_ms != MICA_NO_DEADLINE)
        heap_remove(loop, co);
    return co->wake_result;
}

void mica__loop_yield(mica__loop_t *loop)
{
    mica__coro_t *co = loop->current;
    co->queued = true; /* also keeps mica__coro_suspend from handing off */
    loop->nrunnable++;
    co->wake_result = 0;
    co->next_ready = NULL;
    if (loop->yield_tail)
        loop->yield_tail->next_ready = co;
    else
        loop->yield_head = co;
    loop->yield_tail = co;
    mica__coro_suspend(loop);
}

#define DEPTH_BUDGET 256 /* runs (hand-offs included) after one of the round */
#define POLL_EVERY_RUNS 256 /* with work left, poll for I/O and timers this often */

static mica__coro_t *pop_ready(mica__loop_t *loop)
{
    mica__coro_t *co = loop->ready_head;
    loop->ready_head = co->next_ready;
    if (!loop->ready_head)
        loop->ready_tail = NULL;
    co->queued = false;
    loop->nrunnable--;
    return co;
}

/*
 * Runs one round: the coroutines that were runnable when it began, then those
 * that yielded. What each of them makes ready (a connection's request
 * handlers, a receiver it woke) runs right after it, up to DEPTH_BUDGET,
 * while the data they share is still in cache: Go's runnext, for a batch.
 * Without that, a worker serving many HTTP/2 connections would parse every
 * connection's requests before running any handler, and hold thousands of
 * streams and stacks live at once.
 */
static void run_ready(mica__loop_t *loop)
{
    if (loop->yield_head) {
        if (loop->ready_tail)
            loop->ready_tail->next_ready = loop->yield_head;
        else
            loop->ready_head = loop->yield_head;
        loop->ready_tail = loop->yield_tail;
        loop->yield_head = loop->yield_tail = NULL;
    }
    mica__coro_t *co = loop->ready_head, *last = loop->ready_tail;
    loop->ready_head = loop->ready_tail = NULL;
    while (co) {
        mica__coro_t *next = co->next_ready;
        co->queued = false;
        loop->nrunnable--;
        mica__coro_resume(loop, co); /* may free co */
        uint64_t until = loop->runs + DEPTH_BUDGET;
        while (loop->ready_head && loop->runs < until)
            mica__coro_resume(loop, pop_ready(loop));
        if (co == last)
            break;
        co = next;
    }
}

/* ---- messages from other threads ----------------------------------------- */

static void poke(int fd)
{
    uint64_t one = 1;
    ssize_t rc = write(fd, &one, sizeof(one));
    (void)rc; /* EAGAIN: the counter is non-zero, a wake-up is pending anyway */
}

/* Appends `m` under remote_lock (held); returns whether the queue was empty. */
static bool append_msg(mica__loop_t *loop, mica__msg_t *m)
{
    bool was_empty = loop->remote_head == NULL;
    m->next = NULL;
    if (loop->remote_tail)
        loop->remote_tail->next = m;
    else
        loop->remote_head = m;
    loop->remote_tail = m;
    return was_empty;
}

static void posted(mica__loop_t *loop, bool was_empty)
{
    atomic_store_explicit(&loop->remote_posted, true, memory_order_release);
    if (was_empty)
        poke(loop->wakefd);
}

void mica__wake_any(mica__loop_t *loop, mica__coro_t *co, uint64_t seq, int result)
{
    if (loop == tls_loop) {
        if (co->waiting && co->wait_seq == seq)
            mica__loop_wake(loop, co, result);
        return;
    }
    /* The coroutine's own message: when it is already queued, a wake for a
     * later wait replaces it (the earlier wait has ended), one for the same
     * or an earlier wait is dropped (the first wake of a wait wins). */
    mica__msg_t *m = &co->wake_msg;
    pthread_mutex_lock(&loop->remote_lock);
    bool was_empty = false, queued = atomic_load_explicit(&co->wake_posted, memory_order_relaxed);
    if (!queued || seq > m->seq) {
        m->seq = seq;
        m->result = result;
    }
    if (!queued) {
        m->co = co;
        atomic_store_explicit(&co->wake_posted, true, memory_order_relaxed);
        was_empty = append_msg(loop, m);
    }
    pthread_mutex_unlock(&loop->remote_lock);
    if (!queued)
        posted(loop, was_empty);
}

int mica__loop_post_spawn(mica__loop_t *loop, mica_coro_fn fn, void *arg)
{
    mica__msg_t *m = mica__malloc(sizeof(*m));
    if (!m)
        return MICA_ENOMEM;
    *m = (mica__msg_t){.fn = fn, .arg = arg};
    pthread_mutex_lock(&loop->remote_lock);
    bool was_empty = append_msg(loop, m);
    pthread_mutex_unlock(&loop->remote_lock);
    posted(loop, was_empty);
    return 0;
}

/*
 * Delivers the messages of other threads. Wake-ups are applied under
 * remote_lock: each is a coroutine's own wake_msg, which another thread may
 * queue again the moment it is off the list, so it is read while still
 * owned. Spawns (allocated by their poster, owned by us once taken) and the
 * zombies whose last wake-up this was are handled after the unlock.
 */
static void drain_messages(mica__loop_t *loop)
{
    atomic_store_explicit(&loop->remote_posted, false, memory_order_relaxed);
    mica__msg_t *spawns = NULL, **spawns_tail = &spawns;
    mica__coro_t *reap = NULL;
    pthread_mutex_lock(&loop->remote_lock);
    if (loop->remote_head)
        loop->last_remote_ms = loop->now_ms;
    for (mica__msg_t *m = loop->remote_head, *next; m; m = next) {
        next = m->next;
        mica__coro_t *co = m->co;
        if (!co) {
            *spawns_tail = m;
            spawns_tail = &m->next;
            continue;
        }
        if (co->waiting && co->wait_seq == m->seq)
            mica__loop_wake(loop, co, m->result);
        atomic_store_explicit(&co->wake_posted, false, memory_order_relaxed);
        if (co->zombie) {
            co->zombie = false; /* on `reap` now, not on loop->zombies */
            mica__coro_t **pp = &loop->zombies;
            while (*pp != co)
                pp = &(*pp)->next_ready;
            *pp = co->next_ready;
            co->next_ready = reap;
            reap = co;
        }
    }
    loop->remote_head = loop->remote_tail = NULL;
    pthread_mutex_unlock(&loop->remote_lock);
    *spawns_tail = NULL;
    while (reap) {
        mica__coro_t *co = reap;
        reap = co->next_ready;
        mica__coro_free(loop, co);
    }
    while (spawns) {
        mica__msg_t *m = spawns;
        spawns = m->next;
        mica__coro_t *nco;
        if (mica__coro_new(loop, m->fn, m->arg, &nco) == 0) /* else dropped, and counted */
            mica__loop_wake(loop, nco, 0);
        mica__free(m);
    }
}

static void cancel_everything(mica__loop_t *loop)
{
    loop->cancel_all = true;
    for (mica__coro_t *co = loop->all; co; co = co->all_next)
        if (co->waiting)
            mica__loop_wake(loop, co, MICA_ECANCELED);
}

void mica__loop_begin_stop(mica__loop_t *loop)
{
    if (loop->stopping)
        return;
    loop->stopping = true;
    loop->drain_deadline_ms = mica__runtime_drain_deadline(loop->rt);
    mica__runtime_run_stop_hooks(loop->rt, loop->id);
}

static void on_wakefd(mica__loop_t *loop)
{
    uint64_t n;
    while (read(loop->wakefd, &n, sizeof(n)) > 0)
        ;
    drain_messages(loop);
    int req = mica__runtime_drain_level(loop->rt);
    if (req >= 1)
        mica__loop_begin_stop(loop);
    if (req >= 2 && !loop->cancel_all)
        cancel_everything(loop);
}

static int defer_spawn(mica__loop_t *loop, int fd, mica_coro_fn fn, void *arg)
{
    if (loop->nspawns == loop->spawns_cap) {
        size_t cap = loop->spawns_cap ? loop->spawns_cap * 2 : 64;
        struct mica__spawn *s = mica__realloc(loop->spawns, cap * sizeof(*s));
        if (!s)
            return MICA_ENOMEM;
        loop->spawns = s;
        loop->spawns_cap = cap;
    }
    loop->spawns[loop->nspawns++] = (struct mica__spawn){fn, arg, fd};
    return 0;
}

/* Runs the deferred spawns: create, run until the coroutine first suspends
 * or ends, then the next, so a batch of short-lived coroutines (parked
 * connections answering one request) shares one cache-hot stack. */
static void run_spawns(mica__loop_t *loop)
{
    for (size_t i = 0; i < loop->nspawns; i++) {
        mica__coro_t *co;
        if (!loop->spawns[i].fn)
            continue; /* its fd was closed meanwhile (mica__io_forget) */
        /* On failure (counted) the owner's idle timeout closes the fd. */
        if (mica__coro_new(loop, loop->spawns[i].fn, loop->spawns[i].arg, &co) == 0)
            mica__coro_resume(loop, co);
    }
    loop->nspawns = 0;
}

static void dispatch(mica__loop_t *loop, struct epoll_event *ev)
{
    int fd = ev->data.fd;
    if (fd == loop->wakefd) {
        on_wakefd(loop);
        return;
    }
    if ((size_t)fd >= loop->io_cap)
        return;
    mica__io_t *io = &loop->io[fd];
    uint32_t e = ev->events;
    if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        /* No further edge will come: a reader that stopped short of the EOF
         * (a short read) must still find the fd readable. */
        io->hup = true;
        if (io->hup_ctx) {
            mica_ctx_cancel(io->hup_ctx);
            io->hup_ctx = NULL;
        }
    }
    if (e & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
        io->readable = true;
        if (io->reader) {
            mica__wake_any(loop, io->reader->co, io->reader->seq, 0);
        } else if (io->on_read && defer_spawn(loop, fd, io->on_read, io->on_read_arg) == 0) {
            io->on_read = NULL;
            io->readable = false; /* the spawned coroutine consumes this edge */
        } /* else: no memory now; the next edge (or the owner's timeout) retries */
    }
    if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        io->writable = true;
        if (io->writer)
            mica__wake_any(loop, io->writer->co, io->writer->seq, 0);
    }
}

/*
 * Before going to sleep in epoll_wait, a loop that exchanged messages with
 * other workers within SPIN_AFTER_MS spins for a few tens of microseconds
 * watching for the next one: waking a sleeping thread through its eventfd
 * costs ~30 us on a VM, which would otherwise be the price of every
 * cross-worker channel hand-off. Loops without cross-worker traffic (an
 * HTTP worker) never spin. Go's idle Ps spin the same way.
 */
#define SPIN_AFTER_MS 2
#define SPIN_ROUNDS 2000 /* pause instructions: ~20-60 us */

static bool spin(mica__loop_t *loop)
{
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load_explicit(&loop->remote_posted, memory_order_acquire))
            return true;
        __builtin_ia32_pause();
        if (i % 256 == 255)
            sched_yield(); /* the thread we wait for may share our CPU */
    }
    return false;
}

/* Copies this worker's counters where mica_runtime_stats() reads them. */
static void publish_stats(mica__loop_t *loop)
{
    mica__loop_stats_t *s = &loop->stats;
#define PUB(field, value) atomic_store_explicit(&s->field, (uint64_t)(value), memory_order_relaxed)
    PUB(coroutines, loop->ncoros);
    PUB(runnable, loop->nrunnable);
    PUB(watched_fds, loop->nwatched);
    PUB(spawned, loop->stat_spawned);
    PUB(spawn_failed, loop->stat_spawn_failed);
    PUB(polls, loop->polls);
    PUB(runs, loop->runs);
    PUB(timers_fired, loop->timers_fired);
    PUB(lag_us_last, loop->lag_us_last);
    PUB(lag_us_max, loop->lag_us_max);
    PUB(lag_us_sum, loop->lag_us_sum);
#undef PUB
}

/* Wakes the coroutines whose deadline has come, measuring how late each is
 * (runtime.h defines the loop lag). The heap yields the most overdue first. */
static void fire_timers(mica__loop_t *loop)
{
    bool fired = false;
    while (loop->heap_len && loop->heap[0]->deadline_ms <= loop->now_ms) {
        mica__coro_t *co = loop->heap[0];
        int64_t late = loop->now_us - co->deadline_ms * 1000;
        uint64_t lag = late > 0 ? (uint64_t)late : 0;
        if (!fired)
            loop->lag_us_last = lag;
        fired = true;
        if (lag > loop->lag_us_max)
            loop->lag_us_max = lag;
        loop->lag_us_sum += lag;
        loop->timers_fired++;
        heap_remove(loop, co);
        mica__loop_wake(loop, co, MICA_ETIMEDOUT);
    }
}

static void poll_hooks(mica__loop_t *loop, bool after)
{
    for (size_t i = 0; i < loop->npoll_hooks; i++) {
        const mica__poll_hook_t *h = &loop->poll_hooks[i];
        mica_poll_cb cb = after ? h->after : h->before;
        if (cb)
            cb(loop->id, h->arg);
    }
}

void mica__loop_run(mica__loop_t *loop)
{
    struct epoll_event events[256];
    tls_loop = loop;
    for (;;) {
        run_ready(loop);
        if (loop->stopping && loop->ncoros == 0)
            break;

        int timeout = -1;
        if (loop->ready_head || loop->yield_head) {
            /* Runnable work left: poll for I/O and timers only every
             * POLL_EVERY_RUNS coroutine runs or 64th busy round, so a yield
             * does not cost a system call, yet neither is ever starved. */
            if ((++loop->busy_rounds & 63) != 0 &&
                loop->runs - loop->runs_at_poll < POLL_EVERY_RUNS)
                continue;
            timeout = 0;
        } else {
            int64_t next = MICA_NO_DEADLINE;
            if (loop->heap_len)
                next = loop->heap[0]->deadline_ms;
            if (loop->stopping && !loop->cancel_all && loop->drain_deadline_ms < next)
                next = loop->drain_deadline_ms;
            if (next != MICA_NO_DEADLINE) {
                int64_t d = next - loop->now_ms;
                timeout = d < 0 ? 0 : d > 60000 ? 60000 : (int)d;
            }
        }
        if (timeout != 0 && loop->now_ms - loop->last_remote_ms <= SPIN_AFTER_MS && spin(loop))
            timeout = 0; /* a message came while spinning: take it without sleeping */
        loop->runs_at_poll = loop->runs;
        loop->polls++;
        publish_stats(loop);
        if (loop->npoll_hooks) /* nothing to pay when none is set */
            poll_hooks(loop, false);
        int n = epoll_wait(loop->epfd, events, 256, timeout);
        update_time(loop);
        if (loop->npoll_hooks)
            poll_hooks(loop, true);
        for (int i = 0; i < n; i++)
            dispatch(loop, &events[i]);
        run_spawns(loop);
        fire_timers(loop);
        if (loop->stopping && !loop->cancel_all && loop->now_ms >= loop->drain_deadline_ms)
            cancel_everything(loop);
    }
    publish_stats(loop);
    tls_loop = NULL;
}

/* ---- fds ------------------------------------------------------------------- */

mica__io_t *mica__io_get(mica__loop_t *loop, int fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= loop->io_cap) {
        size_t cap = loop->io_cap ? loop->io_cap : 1024;
        while (cap <= (size_t)fd)
            cap *= 2;
        mica__io_t *io = mica__realloc(loop->io, cap * sizeof(*io));
        if (!io)
            return NULL;
        memset(io + loop->io_cap, 0, (cap - loop->io_cap) * sizeof(*io));
        loop->io = io;
        loop->io_cap = cap;
    }
    return &loop->io[fd];
}

int mica__io_watch(mica__loop_t *loop, int fd)
{
    mica__io_t *io = mica__io_get(loop, fd);
    if (!io)
        return fd < 0 ? MICA_EBADF : MICA_ENOMEM;
    if (io->registered)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -errno;
    io->registered = true;
    loop->nwatched++;
    io->readable = io->writable = io->hup = false;
    return 0;
}

void mica__io_forget(mica__loop_t *loop, int fd)
{
    if (fd < 0 || (size_t)fd >= loop->io_cap)
        return;
    if (loop->io[fd].registered)
        loop->nwatched--;
    memset(&loop->io[fd], 0, sizeof(loop->io[fd]));
    /* A spawn this fd's edge scheduled must not run on a closed owner:
     * e.g. the drain closes a parked connection in the same iteration. */
    for (size_t i = 0; i < loop->nspawns; i++)
        if (loop->spawns[i].fd == fd)
            loop->spawns[i].fn = NULL;
}

void mica__io_cancel(mica__loop_t *loop, int fd)
{
    if ((size_t)fd >= loop->io_cap)
        return;
    mica__io_t *io = &loop->io[fd];
    if (io->reader)
        mica__wake_any(loop, io->reader->co, io->reader->seq, MICA_ECANCELED);
    if (io->writer)
        mica__wake_any(loop, io->writer->co, io->writer->seq, MICA_ECANCELED);
}

int mica__io_wait(mica__loop_t *loop, int fd, bool write, mica_ctx_t *ctx, int64_t deadline_ms)
{
    int rc = mica__io_watch(loop, fd);
    if (rc != 0)
        return rc;
    mica__io_t *io = &loop->io[fd];
    bool *flag = write ? &io->writable : &io->readable;
    if (*flag || (!write && io->hup)) {
        *flag = false;
        return loop->cancel_all ? MICA_ECANCELED : 0;
    }
    /* A slot holds one waiter, of this worker only: the edge wakes it
     * directly, with no queue, lock or woken flag to maintain. */
    mica__waiter_t me;
    mica__waiter_init_seq(&me, loop, loop->current, mica__wait_prepare(loop));
    *(write ? &io->writer : &io->reader) = &me;
    rc = mica__wait_ctx(loop, ctx, deadline_ms, me.seq);
    /* The table may have been reallocated while we slept. Only a wake by
     * the edge itself consumes it: one that arrived while we were being
     * cancelled or timed out must stay for the next wait to see. */
    io = &loop->io[fd];
    if (write) {
        io->writer = NULL;
        if (rc == 0)
            io->writable = false;
    } else {
        io->reader = NULL;
        if (rc == 0)
            io->readable = false;
    }
    return rc;
}
