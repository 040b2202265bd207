/* SPDX-License-Identifier: MIT */
/*
 * The asynchronous log writer: the logger's sink (include/mica/log.h) while
 * observability is on, so that a worker never waits for a disk, a pipe or a
 * terminal.
 *
 * Each thread that logs gets its own ring of `ring_bytes` (single producer,
 * single consumer: the thread appends records, the writer thread takes them
 * out), so logging threads share nothing with each other. A record is a
 * 8-byte header (length, destination) and the line, copied around the end
 * of the ring when it wraps. A line that does not fit is dropped and
 * counted on its ring; nothing ever waits for room.
 *
 * The writer thread drains every ring into one buffer per destination and
 * writes each with as few system calls as it can. While lines keep coming it
 * polls every few milliseconds and nobody wakes it; when a round finds
 * nothing it says it is going to sleep (`sleeping`), looks once more, and
 * sleeps on an eventfd until the first producer that sees the flag clears it
 * and writes the eventfd -- one system call per idle period, not per line.
 * A producer whose ring passes half full pokes it too, once per drain.
 *
 * The writer never blocks for long on its outputs: a socket is written with
 * MSG_DONTWAIT, anything else in pieces of at most PIPE_BUF after poll()
 * said there is room. An output that takes no bytes for a second has the
 * buffered lines dropped (and counted), so the rings fill and producers
 * drop at once instead of waiting; at stop the writer gets 2 s to write
 * what is queued, and what it could not write is counted as dropped too.
 *
 * Rings are never freed: a thread's ring goes back to a free list when the
 * thread exits (a pthread key destructor) and is reused, so a late
 * destructor never touches freed memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "observe/internal.h"

#define HDR 8
#define OUT_BYTES (64 * 1024)
#define BUSY_POLL_MS 5
#define STOP_FLUSH_MS 2000

typedef struct ring {
    struct ring *next; /* every ring; set before publication */
    bool free;         /* no thread owns it (under lock) */
    char *buf;
    size_t cap;             /* a power of two */
    _Atomic size_t head;    /* consumer: bytes taken, ever */
    _Atomic size_t tail;    /* producer: bytes added, ever */
    _Atomic uint64_t dropped; /* producer: lines that did not fit */
    atomic_bool poked;      /* producer asked for an early drain (cleared by the writer) */
} ring_t;

typedef struct output {
    const char *what; /* "log", "access log" */
    char *path;       /* NULL: a standard stream, never reopened */
    int fd;           /* -1: none */
    bool own;         /* fd is ours to close */
    bool sock;        /* send(MSG_DONTWAIT) works */
    char buf[OUT_BYTES];
    size_t len;
} output_t;

static struct {
    pthread_mutex_t lock; /* the ring list, start and stop */
    _Atomic(ring_t *) rings;
    _Atomic uint64_t gen; /* changes at each start: stale thread-local rings are dropped */
    size_t ring_bytes;
    bool running;
    pthread_t thread;
    int wakefd;
    atomic_bool sleeping, stop, reopen;
    output_t out[2];
    _Atomic uint64_t written, dropped_unwritten, write_errors, reopens;
    bool done; /* the thread finished (under lock, with `done_cv`) */
    pthread_cond_t done_cv;
} w = {.lock = PTHREAD_MUTEX_INITIALIZER, .done_cv = PTHREAD_COND_INITIALIZER, .wakefd = -1};

static pthread_key_t ring_key;
static pthread_once_t ring_key_once = PTHREAD_ONCE_INIT;
static _Thread_local struct {
    ring_t *r;
    uint64_t gen;
} mine;

static void ring_release(void *p)
{
    ring_t *r = p;
    pthread_mutex_lock(&w.lock);
    r->free = true;
    pthread_mutex_unlock(&w.lock);
}

static void make_key(void)
{
    pthread_key_create(&ring_key, ring_release);
}

static ring_t *ring_attach(uint64_t gen)
{
    pthread_once(&ring_key_once, make_key);
    pthread_mutex_lock(&w.lock);
    ring_t *r = NULL;
    if (w.running) {
        if (mine.r) /* a ring of an earlier start: ours still */
            r = mine.r;
        for (ring_t *x = atomic_load(&w.rings); !r && x; x = x->next)
            if (x->free && x->cap == w.ring_bytes)
                r = x;
        if (!r && (r = mica__calloc(1, sizeof(*r)))) {
            r->cap = w.ring_bytes;
            if (!(r->buf = mica__malloc(r->cap))) {
                mica__free(r);
                r = NULL;
            } else {
                r->next = atomic_load(&w.rings);
                atomic_store_explicit(&w.rings, r, memory_order_release);
            }
        }
        if (r)
            r->free = false;
    }
    pthread_mutex_unlock(&w.lock);
    if (r) {
        mine.r = r;
        mine.gen = gen;
        pthread_setspecific(ring_key, r);
    }
    return r;
}

static void poke(void)
{
    uint64_t one = 1;
    ssize_t n = write(w.wakefd, &one, sizeof(one));
    (void)n; /* EAGAIN: a wake-up is pending already */
}

static void copy_in(ring_t *r, size_t at, const void *p, size_t n)
{
    size_t off = at & (r->cap - 1), first = r->cap - off < n ? r->cap - off : n;
    memcpy(r->buf + off, p, first);
    memcpy(r->buf, (const char *)p + first, n - first);
}

static void copy_out(const ring_t *r, size_t at, void *p, size_t n)
{
    size_t off = at & (r->cap - 1), first = r->cap - off < n ? r->cap - off : n;
    memcpy(p, r->buf + off, first);
    memcpy((char *)p + first, r->buf, n - first);
}

bool mica__logw_push(int dest, mica_log_level_t level, const char *line, size_t len)
{
    uint64_t gen = atomic_load_explicit(&w.gen, memory_order_acquire);
    ring_t *r = mine.r && mine.gen == gen ? mine.r : ring_attach(gen);
    if (!r)
        return false;
    size_t need = (HDR + len + 1 + 7) & ~(size_t)7; /* + the newline, 8-aligned */
    size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (need > r->cap - (tail - head)) {
        atomic_store_explicit(&r->dropped,
                              atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        return false;
    }
    uint32_t h[2] = {(uint32_t)len + 1, (uint32_t)dest | (uint32_t)level << 8};
    copy_in(r, tail, h, HDR);
    copy_in(r, tail + HDR, line, len);
    copy_in(r, tail + HDR + len, "\n", 1);
    atomic_store_explicit(&r->tail, tail + need, memory_order_release);
    size_t used = tail + need - head;
    if ((atomic_load_explicit(&w.sleeping, memory_order_relaxed) &&
         atomic_exchange(&w.sleeping, false)) ||
        (used > r->cap / 2 && !atomic_load_explicit(&r->poked, memory_order_relaxed) &&
         !atomic_exchange(&r->poked, true)))
        poke();
    return true;
}

static void sink(mica_log_level_t level, const char *line, size_t len, void *arg)
{
    mica__logw_push(MICA__LOG_MAIN, level, line, len);
}

bool mica__logw_access_on(void)
{
    return atomic_load_explicit(&w.gen, memory_order_relaxed) & 1; /* odd: running with one */
}

/* ---- the writer thread ----------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes o's buffer; gives up, dropping what is left, at `deadline` (0: a
 * second from now) -- so a stop request is seen within about a second. */
static void flush(output_t *o, int64_t deadline)
{
    bool normal = !deadline; /* not the stop's last attempt: a stop request ends it */
    if (normal)
        deadline = mono_ms() + 1000;
    size_t off = 0;
    while (off < o->len && o->fd >= 0) {
        ssize_t n;
        if (o->sock) {
            n = send(o->fd, o->buf + off, o->len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            struct pollfd p = {.fd = o->fd, .events = POLLOUT};
            int r = poll(&p, 1, 100);
            if (r < 0 && errno != EINTR)
                break;
            if (r <= 0) {
                n = -1;
                errno = EAGAIN;
            } else {
                size_t k = o->len - off > PIPE_BUF ? PIPE_BUF : o->len - off;
                n = write(o->fd, o->buf + off, k);
            }
        }
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && o->sock && errno == ENOTSOCK) {
            o->sock = false;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (mono_ms() >= deadline || (normal && atomic_load(&w.stop)))
                break;
            if (o->sock)
                poll(&(struct pollfd){.fd = o->fd, .events = POLLOUT}, 1, 100);
            continue;
        }
        atomic_fetch_add(&w.write_errors, 1);
        break;
    }
    if (off < o->len) { /* count the lines we could not write */
        uint64_t lost = 0;
        for (size_t i = off; i < o->len; i++)
            lost += o->buf[i] == '\n';
        atomic_fetch_add(&w.dropped_unwritten, lost);
        atomic_fetch_sub(&w.written, lost);
    }
    o->len = 0;
}

/* Moves every complete record of every ring into the output buffers, writing
 * a buffer out when it fills (deadline as flush()). Returns lines moved. */
static size_t drain(int64_t deadline)
{
    size_t lines = 0;
    for (ring_t *r = atomic_load_explicit(&w.rings, memory_order_acquire); r; r = r->next) {
        size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        while (head != tail) {
            uint32_t h[2];
            copy_out(r, head, h, HDR);
            output_t *o = &w.out[(h[1] & 0xff) == MICA__LOG_ACCESS];
            size_t len = h[0];
            if (o->fd >= 0) {
                if (len > OUT_BYTES - o->len)
                    flush(o, deadline);
                if (len <= OUT_BYTES) {
                    copy_out(r, head + HDR, o->buf + o->len, len);
                    o->len += len;
                    atomic_fetch_add_explicit(&w.written, 1, memory_order_relaxed);
                }
            }
            head += (HDR + len + 7) & ~(size_t)7;
            lines++;
        }
        atomic_store_explicit(&r->head, head, memory_order_release);
        atomic_store_explicit(&r->poked, false, memory_order_relaxed);
    }
    return lines;
}

static int open_output(output_t *o, const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (o->own && o->fd >= 0)
        close(o->fd);
    o->fd = fd;
    o->own = true;
    o->sock = false;
    return 0;
}

static void reopen_all(void)
{
    for (int i = 0; i < 2; i++) {
        output_t *o = &w.out[i];
        if (!o->path)
            continue;
        flush(o, mono_ms() + 100);
        int rc = open_output(o, o->path);
        if (rc != 0) {
            atomic_fetch_add(&w.write_errors, 1);
            char line[512];
            int n = snprintf(line, sizeof(line),
                             "{\"level\":\"error\",\"msg\":\"cannot reopen %s\",\"path\":\"%s\","
                             "\"error\":\"%s\"}\n",
                             o->what, o->path, mica_strerror(rc));
            ssize_t k = write(STDERR_FILENO, line, n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0);
            (void)k;
        }
    }
    atomic_fetch_add(&w.reopens, 1);
}

static void *writer_main(void *arg)
{
    bool idle = false;
    for (;;) {
        bool stopping = atomic_load(&w.stop);
        if (atomic_exchange(&w.reopen, false))
            reopen_all();
        int64_t deadline = stopping ? mono_ms() + STOP_FLUSH_MS : 0;
        size_t n = drain(deadline);
        for (int i = 0; i < 2; i++)
            if (w.out[i].len)
                flush(&w.out[i], deadline);
        if (stopping)
            break;
        if (n > 0) {
            idle = false;
        } else if (!idle) {
            idle = true;
        } else {
            /* A quiet round: sleep until poked. Publish the flag, then look
             * once more, so a line pushed in between is not left waiting. */
            atomic_store(&w.sleeping, true);
            if (drain(0) > 0) {
                atomic_store(&w.sleeping, false);
                idle = false;
                continue;
            }
        }
        struct pollfd p = {.fd = w.wakefd, .events = POLLIN};
        poll(&p, 1, atomic_load(&w.sleeping) ? -1 : BUSY_POLL_MS);
        uint64_t v;
        ssize_t k = read(w.wakefd, &v, sizeof(v));
        (void)k;
        atomic_store(&w.sleeping, false);
    }
    pthread_mutex_lock(&w.lock);
    w.done = true;
    pthread_cond_broadcast(&w.done_cv);
    pthread_mutex_unlock(&w.lock);
    return arg;
}

/* ---- start and stop ---------------------------------------------------------------------- */

static void close_outputs(void)
{
    for (int i = 0; i < 2; i++) {
        output_t *o = &w.out[i];
        if (o->own && o->fd >= 0)
            close(o->fd);
        mica__free(o->path);
        o->path = NULL;
        o->fd = -1;
        o->own = false;
        o->len = 0;
    }
}

static int setup_output(output_t *o, const char *what, const char *spec, int std_fd)
{
    o->what = what;
    o->fd = -1;
    o->len = 0;
    if (!spec || !*spec) {
        o->fd = std_fd;
    } else if (strcmp(spec, "-") == 0) {
        o->fd = STDOUT_FILENO;
    } else {
        if (!(o->path = mica__strdup(spec)))
            return MICA_ENOMEM;
        int rc = open_output(o, spec);
        if (rc != 0) {
            mica__log_error("cannot open log file", "what", what, "path", spec, "error",
                            mica_strerror(rc));
            return MICA_EINVAL;
        }
        return 0;
    }
    if (o->fd >= 0) {
        int type;
        socklen_t len = sizeof(type);
        o->sock = getsockopt(o->fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
    }
    return 0;
}

int mica__logw_start(const char *log_file, const char *access_log, size_t ring_bytes)
{
    size_t cap = 4096;
    while (cap < ring_bytes && cap < ((size_t)1 << 30))
        cap <<= 1;
    pthread_mutex_lock(&w.lock);
    if (w.running) {
        pthread_mutex_unlock(&w.lock);
        return MICA_EBUSY;
    }
    int rc = setup_output(&w.out[MICA__LOG_MAIN], "log", log_file, STDERR_FILENO);
    if (rc == 0)
        rc = setup_output(&w.out[MICA__LOG_ACCESS], "access log", access_log, -1);
    if (rc == 0 && (w.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        rc = -errno;
    if (rc == 0) {
        /* The thread starts with every signal blocked: SIGTERM, SIGHUP and the
         * rest belong to the runtime's signalfd, SIGPROF to the profiled. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        atomic_store(&w.stop, false);
        atomic_store(&w.sleeping, false);
        atomic_store(&w.reopen, false);
        w.done = false;
        rc = -pthread_create(&w.thread, NULL, writer_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rc != 0) {
        close_outputs();
        if (w.wakefd >= 0)
            close(w.wakefd);
        w.wakefd = -1;
        pthread_mutex_unlock(&w.lock);
        return rc;
    }
    /* Rings of a different size (an earlier start) are left out for good. */
    for (ring_t *r = atomic_load(&w.rings); r; r = r->next) {
        atomic_store(&r->head, 0);
        atomic_store(&r->tail, 0);
    }
    w.ring_bytes = cap;
    w.running = true;
    uint64_t g = atomic_load(&w.gen);
    g = (g | 1) + 1; /* even */
    if (w.out[MICA__LOG_ACCESS].fd >= 0)
        g |= 1; /* odd: access lines have somewhere to go */
    atomic_store_explicit(&w.gen, g, memory_order_release);
    pthread_mutex_unlock(&w.lock);
    mica_log_set_sink(sink, NULL);
    return 0;
}

void mica__logw_stop(void)
{
    pthread_mutex_lock(&w.lock);
    bool running = w.running;
    pthread_mutex_unlock(&w.lock);
    if (!running)
        return;
    mica_log_set_sink(NULL, NULL);
    atomic_store(&w.stop, true);
    poke();
    pthread_mutex_lock(&w.lock);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += STOP_FLUSH_MS / 1000 + 2;
    while (!w.done && pthread_cond_timedwait(&w.done_cv, &w.lock, &until) == 0)
        ;
    bool done = w.done;
    w.running = false;
    atomic_store_explicit(&w.gen, (atomic_load(&w.gen) | 1) + 1, memory_order_release);
    pthread_mutex_unlock(&w.lock);
    if (!done) { /* stuck in a write: leave it, with what it uses, to the exiting process */
        pthread_detach(w.thread);
        mica__log_error("log writer did not stop in time; lines may be lost");
        return;
    }
    pthread_join(w.thread, NULL);
    for (ring_t *r = atomic_load(&w.rings); r; r = r->next) { /* queued after the last drain */
        size_t tail = atomic_load(&r->tail);
        for (size_t head = atomic_load(&r->head); head != tail;) {
            uint32_t h[2];
            copy_out(r, head, h, HDR);
            head += (HDR + h[0] + 7) & ~(size_t)7;
            atomic_fetch_add(&w.dropped_unwritten, 1);
        }
    }
    close_outputs();
    close(w.wakefd);
    w.wakefd = -1;
}

void mica__logw_reopen(void)
{
    atomic_store(&w.reopen, true);
    if (w.wakefd >= 0)
        poke();
}

/* ---- metrics -------------------------------------------------------------------------- */

static void collect(mica_collect_t *out, void *arg)
{
    uint64_t dropped = atomic_load(&w.dropped_unwritten);
    for (ring_t *r = atomic_load_explicit(&w.rings, memory_order_acquire); r; r = r->next)
        dropped += atomic_load_explicit(&r->dropped, memory_order_relaxed);
    mica_collect_sample(out, MICA_METRIC_COUNTER, "mica_log_dropped_lines_total",
                        "Log lines dropped because the logging thread's queue was full.", NULL,
                        NULL, 0, (double)dropped);
    mica_collect_sample(out, MICA_METRIC_COUNTER, "mica_log_written_lines_total",
                        "Log lines handed to the log outputs.", NULL, NULL, 0,
                        (double)atomic_load(&w.written));
    mica_collect_sample(out, MICA_METRIC_COUNTER, "mica_log_write_errors_total",
                        "Failed writes to, or reopens of, the log outputs.", NULL, NULL, 0,
                        (double)atomic_load(&w.write_errors));
    mica_collect_sample(out, MICA_METRIC_COUNTER, "mica_log_reopens_total",
                        "Log file reopenings (SIGHUP).", NULL, NULL, 0,
                        (double)atomic_load(&w.reopens));
}

int mica__logw_metrics(mica_metrics_t *reg)
{
    static atomic_bool added;
    if (atomic_exchange(&added, true))
        return 0;
    int rc = mica_metrics_add_collector(reg, collect, NULL);
    if (rc != 0)
        atomic_store(&added, false);
    return rc;
}
