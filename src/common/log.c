/* SPDX-License-Identifier: MIT */
/*
 * JSON-lines logging (include/mica/log.h) for the runtime's own events and
 * for applications. Each line is built in a stack buffer and handed to the
 * sink whole -- by default one write(2) to stderr, so lines from different
 * threads never interleave -- and nothing is allocated.
 *
 * The sink (a function and its argument) can be swapped while other threads
 * log, so the pair is published under a sequence lock: readers retry when a
 * swap overlapped their two loads, and a line goes to one consistent pair,
 * old or new. The trace function (the seam the tracing layer fills, so
 * lines logged with a ctx carry its span's ids) is published the same way.
 * The service name is a JSON fragment built once when it is set and
 * published by one pointer; fragments replaced later stay allocated (a
 * concurrent line may still be copying one) until the process exits. The
 * level is one relaxed atomic, seeded from $MICA_LOG_LEVEL on first use.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/log.h"

/* ---- level ------------------------------------------------------------------ */

static atomic_int level = -1; /* -1: not read from the environment yet */

static const char *const names[] = {"debug", "info", "warn", "error", "off"};

const char *mica_log_level_name(mica_log_level_t l)
{
    return (unsigned)l <= MICA_LOG_OFF ? names[l] : "off";
}

int mica_log_parse_level(const char *name, mica_log_level_t *out)
{
    if (!name)
        return MICA_EINVAL;
    for (int i = 0; i <= MICA_LOG_OFF; i++)
        if (strcasecmp(name, names[i]) == 0) {
            *out = (mica_log_level_t)i;
            return 0;
        }
    if (strcasecmp(name, "warning") == 0) {
        *out = MICA_LOG_WARN;
        return 0;
    }
    return MICA_EINVAL;
}

static int level_from_env(void)
{
    const char *v = getenv("MICA_LOG_LEVEL");
    mica_log_level_t l = MICA_LOG_INFO;
    bool bad = v && *v && mica_log_parse_level(v, &l) != 0;
    int expected = -1;
    if (!atomic_compare_exchange_strong(&level, &expected, (int)l))
        return expected; /* set meanwhile (mica_log_set_level, another thread) */
    if (bad)
        mica_log(MICA_LOG_WARN, "invalid environment variable", "name", "MICA_LOG_LEVEL", "value",
                 v, (const char *)0);
    return (int)l;
}

static inline int threshold(void)
{
    int l = atomic_load_explicit(&level, memory_order_relaxed);
    return l >= 0 ? l : level_from_env();
}

void mica_log_set_level(mica_log_level_t l)
{
    atomic_store(&level, (int)l);
}

mica_log_level_t mica_log_level(void)
{
    return (mica_log_level_t)threshold();
}

bool mica_log_enabled(mica_log_level_t l)
{
    return (int)l >= threshold() && l < MICA_LOG_OFF;
}

/* ---- sink --------------------------------------------------------------------- */

static struct {
    pthread_mutex_t writers;
    atomic_uint seq; /* odd while a swap is in progress */
    _Atomic(mica_log_sink_fn) fn;
    _Atomic(void *) arg;
} sink = {.writers = PTHREAD_MUTEX_INITIALIZER};

void mica_log_set_sink(mica_log_sink_fn fn, void *arg)
{
    pthread_mutex_lock(&sink.writers);
    unsigned s = atomic_load_explicit(&sink.seq, memory_order_relaxed);
    atomic_store_explicit(&sink.seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&sink.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&sink.arg, arg, memory_order_relaxed);
    atomic_store_explicit(&sink.seq, s + 2, memory_order_release);
    pthread_mutex_unlock(&sink.writers);
}

static mica_log_sink_fn current_sink(void **arg)
{
    for (;;) {
        unsigned s = atomic_load_explicit(&sink.seq, memory_order_acquire);
        mica_log_sink_fn fn = atomic_load_explicit(&sink.fn, memory_order_relaxed);
        *arg = atomic_load_explicit(&sink.arg, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (!(s & 1) && atomic_load_explicit(&sink.seq, memory_order_relaxed) == s)
            return fn;
    }
}

/* ---- trace ids and service -------------------------------------------------------- */

static struct {
    atomic_uint seq; /* odd while a swap is in progress; swaps under sink.writers */
    _Atomic(mica_log_trace_fn) fn;
    _Atomic(void *) arg;
} trace;

void mica_log_set_trace(mica_log_trace_fn fn, void *arg)
{
    pthread_mutex_lock(&sink.writers);
    unsigned s = atomic_load_explicit(&trace.seq, memory_order_relaxed);
    atomic_store_explicit(&trace.seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&trace.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&trace.arg, arg, memory_order_relaxed);
    atomic_store_explicit(&trace.seq, s + 2, memory_order_release);
    pthread_mutex_unlock(&sink.writers);
}

bool mica_log_has_trace(void)
{
    return atomic_load_explicit(&trace.fn, memory_order_relaxed) != NULL;
}

static mica_log_trace_fn current_trace(void **arg)
{
    for (;;) {
        unsigned s = atomic_load_explicit(&trace.seq, memory_order_acquire);
        mica_log_trace_fn fn = atomic_load_explicit(&trace.fn, memory_order_relaxed);
        *arg = atomic_load_explicit(&trace.arg, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (!(s & 1) && atomic_load_explicit(&trace.seq, memory_order_relaxed) == s)
            return fn;
    }
}

struct service_frag {
    struct service_frag *older; /* kept: a line may still be copying it */
    char json[];                /* ,"service":"..." */
};
static struct service_frag *service_frags; /* under sink.writers */
static _Atomic(const char *) service_json;

static bool needs_no_escape(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == '"' || *s == '\\')
            return false;
    return true;
}

int mica_log_set_service(const char *name)
{
    if (!name || !*name) {
        atomic_store_explicit(&service_json, NULL, memory_order_release);
        return 0;
    }
    size_t n = strlen(name);
    if (n > 128 || !needs_no_escape(name))
        return MICA_EINVAL;
    struct service_frag *f = mica__malloc(sizeof(*f) + n + 16);
    if (!f)
        return MICA_ENOMEM;
    snprintf(f->json, n + 16, ",\"service\":\"%s\"", name);
    pthread_mutex_lock(&sink.writers);
    f->older = service_frags;
    service_frags = f;
    atomic_store_explicit(&service_json, f->json, memory_order_release);
    pthread_mutex_unlock(&sink.writers);
    return 0;
}

/* ---- formatting ------------------------------------------------------------------- */

#define TRUNCATED ",\"truncated\":true"

struct line {
    char buf[MICA_LOG_LINE_MAX + 2]; /* + the newline or NUL */
    size_t len;
    bool full; /* a field was cut: no more fields, and the line says so */
};

/* Bytes left for fields, keeping room for TRUNCATED and the closing brace. */
static size_t room(const struct line *l)
{
    size_t limit = MICA_LOG_LINE_MAX - (sizeof(TRUNCATED) - 1) - 1;
    return l->len < limit ? limit - l->len : 0;
}

static bool put(struct line *l, const char *s, size_t n)
{
    if (l->full || n > room(l)) {
        l->full = true;
        return false;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return true;
}

/* A JSON string. When it does not fit, its content is cut at a character
 * boundary (never inside an escape or a UTF-8 sequence) and closed. */
static void put_str(struct line *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (room(l) < 2) { /* not even "" */
        l->full = true;
        return;
    }
    put(l, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[6];
        size_t n = 1;
        if (c == '"' || c == '\\') {
            e[0] = '\\', e[1] = (char)c, n = 2;
        } else if (c < 0x20) {
            e[0] = '\\', e[1] = 'u', e[2] = '0', e[3] = '0', e[4] = hex[c >> 4], e[5] = hex[c & 15];
            n = 6;
        } else {
            e[0] = (char)c;
        }
        if (n + 1 > room(l)) { /* + 1: the closing quote */
            if ((c & 0xC0) == 0x80) { /* inside a multi-byte character: drop its start */
                while (l->len > 0 && ((unsigned char)l->buf[l->len - 1] & 0xC0) == 0x80)
                    l->len--;
                if (l->len > 0 && (unsigned char)l->buf[l->len - 1] >= 0xC0)
                    l->len--;
            }
            l->buf[l->len++] = '"';
            l->full = true;
            return;
        }
        memcpy(l->buf + l->len, e, n);
        l->len += n;
    }
    l->buf[l->len++] = '"';
}

/* ,"key": -- or nothing (and the line full) if not even that fits. */
static bool put_key(struct line *l, const char *key)
{
    size_t at = l->len;
    if (!put(l, ",", 1))
        return false;
    put_str(l, key ? key : "");
    if (l->full || !put(l, ":", 1)) {
        l->len = at; /* drop the cut key */
        l->full = true;
        return false;
    }
    return true;
}

static void put_scalar(struct line *l, const char *key, const char *text)
{
    size_t at = l->len;
    if (put_key(l, key) && !put(l, text, strlen(text)))
        l->len = at;
}

static _Thread_local struct {
    time_t sec;
    char stamp[24]; /* YYYY-MM-DDTHH:MM:SS */
} ts_cache;

static void begin(struct line *l, mica_log_level_t lvl, const char *msg, mica_ctx_t *ctx)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != ts_cache.sec || !ts_cache.stamp[0]) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(ts_cache.stamp, sizeof(ts_cache.stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        ts_cache.sec = ts.tv_sec;
    }
    char stamp[40];
    snprintf(stamp, sizeof(stamp), "%s.%03ldZ", ts_cache.stamp, ts.tv_nsec / 1000000);
    l->len = 0;
    l->full = false;
    put(l, "{\"ts\":", 6);
    put_str(l, stamp);
    put(l, ",\"level\":", 9);
    put_str(l, mica_log_level_name(lvl));
    const char *svc = atomic_load_explicit(&service_json, memory_order_acquire);
    if (svc)
        put(l, svc, strlen(svc));
    put(l, ",\"msg\":", 7);
    put_str(l, msg ? msg : "");
    if (ctx) {
        void *arg;
        mica_log_trace_fn fn = current_trace(&arg);
        char tid[33], sid[17];
        if (fn && fn(ctx, tid, sid, arg)) {
            tid[32] = sid[16] = '\0';
            if (put_key(l, "trace_id"))
                put_str(l, tid);
            if (put_key(l, "span_id"))
                put_str(l, sid);
        }
    }
}

static void close_line(struct line *l)
{
    if (l->full) {
        memcpy(l->buf + l->len, TRUNCATED, sizeof(TRUNCATED) - 1);
        l->len += sizeof(TRUNCATED) - 1;
    }
    l->buf[l->len++] = '}';
}

static void finish(struct line *l, mica_log_level_t lvl)
{
    close_line(l);
    void *arg;
    mica_log_sink_fn fn = current_sink(&arg);
    if (fn) {
        l->buf[l->len] = '\0';
        fn(lvl, l->buf, l->len, arg);
        return;
    }
    l->buf[l->len] = '\n';
    ssize_t rc = write(STDERR_FILENO, l->buf, l->len + 1);
    (void)rc; /* nowhere to report a failed log write */
}

static void logv(mica_ctx_t *ctx, mica_log_level_t lvl, const char *msg, va_list ap)
{
    if (!mica_log_enabled(lvl))
        return;
    struct line l;
    begin(&l, lvl, msg, ctx);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (put_key(&l, k))
            put_str(&l, v ? v : "");
    }
    finish(&l, lvl);
}

void mica_logv(mica_log_level_t lvl, const char *msg, va_list ap)
{
    logv(NULL, lvl, msg, ap);
}

void mica_log_ctx(mica_ctx_t *ctx, mica_log_level_t lvl, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    logv(ctx, lvl, msg, ap);
    va_end(ap);
}

void mica_log(mica_log_level_t lvl, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    mica_logv(lvl, msg, ap);
    va_end(ap);
}

static void put_fields(struct line *l, const mica_log_field_t *fields, size_t n)
{
    char num[40];
    for (size_t i = 0; i < n && !l->full; i++) {
        const mica_log_field_t *f = &fields[i];
        switch (f->type) {
        case MICA_LOG_T_STR:
            if (put_key(l, f->key))
                put_str(l, f->v.s ? f->v.s : "");
            break;
        case MICA_LOG_T_INT:
            snprintf(num, sizeof(num), "%lld", (long long)f->v.i);
            put_scalar(l, f->key, num);
            break;
        case MICA_LOG_T_FLOAT:
            if (!isfinite(f->v.f))
                snprintf(num, sizeof(num), "null");
            else if (snprintf(num, sizeof(num), "%.15g", f->v.f), strtod(num, NULL) != f->v.f)
                snprintf(num, sizeof(num), "%.17g", f->v.f); /* 15 digits did not round-trip */
            put_scalar(l, f->key, num);
            break;
        case MICA_LOG_T_BOOL:
            put_scalar(l, f->key, f->v.b ? "true" : "false");
            break;
        }
    }
}

void mica_log_ctx_fields(mica_ctx_t *ctx, mica_log_level_t lvl, const char *msg,
                         const mica_log_field_t *fields, size_t n)
{
    if (!mica_log_enabled(lvl))
        return;
    struct line l;
    begin(&l, lvl, msg, ctx);
    put_fields(&l, fields, n);
    finish(&l, lvl);
}

void mica_log_fields(mica_log_level_t lvl, const char *msg, const mica_log_field_t *fields,
                     size_t n)
{
    mica_log_ctx_fields(NULL, lvl, msg, fields, n);
}

size_t mica_log_format(char *buf, size_t cap, mica_ctx_t *ctx, mica_log_level_t lvl,
                       const char *msg, const mica_log_field_t *fields, size_t n)
{
    struct line l;
    begin(&l, lvl, msg, ctx);
    put_fields(&l, fields, n);
    close_line(&l);
    if (l.len + 1 > cap)
        return 0;
    memcpy(buf, l.buf, l.len);
    buf[l.len] = '\0';
    return l.len;
}

/* ---- the runtime's internal entry point (common/log.h) --------------------------- */

void mica__log(const char *lvl, const char *msg, ...)
{
    mica_log_level_t l = MICA_LOG_INFO;
    mica_log_parse_level(lvl, &l);
    va_list ap;
    va_start(ap, msg);
    mica_logv(l, msg, ap);
    va_end(ap);
}
