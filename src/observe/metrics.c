/* SPDX-License-Identifier: MIT */
/*
 * Metrics (include/mica/metrics.h): registries of families, their series,
 * per-thread shards of values, collectors, and the Prometheus text format.
 *
 * Values live in *slots*: 64-bit words numbered process-wide. A series owns
 * a run of consecutive slots (a counter 1, a gauge 1, a histogram one per
 * bucket, +Inf, and the sum), handed out when it is made and never reused.
 * Every thread that updates a metric has its own *shard*: a table of chunks
 * of 4096 slots, allocated the first time the thread touches a slot in
 * them. So an update is: the thread's shard (one TLS load), the chunk, then
 * a load and a store of a word no other thread writes -- no lock, no
 * locked instruction, no cache line another writer touches. (Only this
 * thread writes its shard, so a relaxed load + store is an exact
 * increment; the atomics are for the scraping thread, which reads every
 * shard's word and adds them up.) A run never straddles two chunks, so one
 * chunk lookup serves a whole histogram. When a thread exits, its shard
 * goes back to a free list and the next new thread takes it over with its
 * values: sums never go backwards.
 *
 * A histogram's count is not stored: a scrape sums the buckets it read,
 * so _count always equals the +Inf bucket, and buckets are cumulative by
 * construction. Only _sum may be a few observations off from a count read
 * at the same moment (client_golang's hot/cold swap removes even that, at
 * the price of an atomic on every observation).
 *
 * Gauges have both faces: add() is sharded like a counter, set() writes
 * one shared word; the value is the set word plus the shards' sum.
 *
 * Registration and label resolution take the registry's mutex; the hot
 * path never does. A scrape holds it while it writes, so collectors must
 * not register or resolve in the registry they are called for.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "observe/internal.h"

/* ---- slots and shards ------------------------------------------------------------------ */

#define CHUNK_SHIFT 12
#define CHUNK_SLOTS (1u << CHUNK_SHIFT)
#define CHUNK_MASK (CHUNK_SLOTS - 1)
#define MAX_CHUNKS 1024 /* 4M slots */
#define MAX_BUCKETS 256

typedef _Atomic uint64_t slot_t;

typedef struct shard {
    _Atomic(slot_t *) chunks[MAX_CHUNKS]; /* written by the owner, read by scrapes */
    struct shard *next;                   /* all shards; set before publication */
    bool free;                            /* owner gone (under shards_lock) */
} shard_t;

static pthread_mutex_t shards_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(shard_t *) shards; /* push-only list */
static uint32_t next_slot = 1;    /* under shards_lock */
static pthread_key_t shard_key;
static pthread_once_t shard_key_once = PTHREAD_ONCE_INIT;
static _Thread_local shard_t *my_shard;
static slot_t lost_slots[MAX_BUCKETS + 2]; /* where updates go when memory runs out */

static void shard_release(void *p)
{
    shard_t *s = p;
    pthread_mutex_lock(&shards_lock);
    s->free = true;
    pthread_mutex_unlock(&shards_lock);
}

static void make_key(void)
{
    pthread_key_create(&shard_key, shard_release);
}

static shard_t *shard_attach(void)
{
    pthread_once(&shard_key_once, make_key);
    pthread_mutex_lock(&shards_lock);
    shard_t *s = atomic_load_explicit(&shards, memory_order_relaxed);
    for (; s; s = s->next)
        if (s->free)
            break;
    if (s) {
        s->free = false;
    } else if ((s = mica__calloc(1, sizeof(*s)))) {
        s->next = atomic_load_explicit(&shards, memory_order_relaxed);
        atomic_store_explicit(&shards, s, memory_order_release);
    }
    pthread_mutex_unlock(&shards_lock);
    if (s) {
        my_shard = s;
        pthread_setspecific(shard_key, s);
    }
    return s;
}

/* Allocates `n` consecutive slots within one chunk. 0 when the space is used up. */
static uint32_t slots_alloc(uint32_t n)
{
    pthread_mutex_lock(&shards_lock);
    uint32_t base = next_slot;
    if ((base & CHUNK_MASK) + n > CHUNK_SLOTS)
        base = (base + CHUNK_MASK) & ~CHUNK_MASK;
    if ((uint64_t)base + n > (uint64_t)MAX_CHUNKS * CHUNK_SLOTS)
        base = 0;
    else
        next_slot = base + n;
    pthread_mutex_unlock(&shards_lock);
    return base;
}

static slot_t *slots_slow(uint32_t slot)
{
    shard_t *s = my_shard ? my_shard : shard_attach();
    if (!s || slot == 0)
        return lost_slots;
    _Atomic(slot_t *) *cp = &s->chunks[slot >> CHUNK_SHIFT];
    slot_t *c = atomic_load_explicit(cp, memory_order_relaxed);
    if (!c) {
        /* 64-byte aligned, so no line of it is shared with another thread's data. */
        char *raw = mica__calloc(1, CHUNK_SLOTS * sizeof(slot_t) + 64);
        if (!raw)
            return lost_slots;
        c = (slot_t *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
        atomic_store_explicit(cp, c, memory_order_release);
    }
    return c + (slot & CHUNK_MASK);
}

/* The calling thread's words for the run starting at `slot`. */
static inline slot_t *slots(uint32_t slot)
{
    shard_t *s = my_shard;
    if (__builtin_expect(s != NULL, 1)) {
        slot_t *c = atomic_load_explicit(&s->chunks[slot >> CHUNK_SHIFT], memory_order_relaxed);
        if (__builtin_expect(c != NULL, 1))
            return c + (slot & CHUNK_MASK);
    }
    return slots_slow(slot);
}

/* Adds to a word only this thread writes (no locked instruction). */
static inline void bump(slot_t *p, uint64_t n)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t d2u(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static inline double u2d(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static inline void bump_double(slot_t *p, double d)
{
    atomic_store_explicit(p, d2u(u2d(atomic_load_explicit(p, memory_order_relaxed)) + d),
                          memory_order_relaxed);
}

/* Sums slot `slot` over every shard into *sum (integers) and *fsum (doubles). */
static void read_slots(uint32_t slot, uint32_t n, uint64_t *out)
{
    memset(out, 0, n * sizeof(*out));
    if (slot == 0)
        return;
    for (shard_t *s = atomic_load_explicit(&shards, memory_order_acquire); s; s = s->next) {
        slot_t *c = atomic_load_explicit(&s->chunks[slot >> CHUNK_SHIFT], memory_order_acquire);
        if (!c)
            continue;
        for (uint32_t i = 0; i < n; i++)
            out[i] += atomic_load_explicit(&c[(slot & CHUNK_MASK) + i], memory_order_relaxed);
    }
}

static double read_double(uint32_t slot)
{
    double sum = 0;
    if (slot == 0)
        return 0;
    for (shard_t *s = atomic_load_explicit(&shards, memory_order_acquire); s; s = s->next) {
        slot_t *c = atomic_load_explicit(&s->chunks[slot >> CHUNK_SHIFT], memory_order_acquire);
        if (c)
            sum += u2d(atomic_load_explicit(&c[slot & CHUNK_MASK], memory_order_relaxed));
    }
    return sum;
}

/* ---- families and series --------------------------------------------------------------- */

typedef enum kind { K_COUNTER, K_GAUGE, K_HISTOGRAM } kind_t;

typedef struct family family_t;

typedef struct series {
    family_t *fam;
    uint32_t slot; /* first of its run: counter/gauge 1; histogram nbounds + 2 (+Inf, sum) */
    _Atomic uint64_t set_bits; /* gauges: the last set(), as double bits */
    uint64_t hash;
    char **values; /* one per label */
} series_t;

struct family {
    mica_metrics_t *reg;
    kind_t kind;
    bool vec;
    char *name, *help;
    char **labels;
    size_t nlabels;
    double *bounds; /* histograms */
    size_t nbounds;
    series_t **series; /* in creation order */
    size_t nseries, cap;
};

typedef struct collector {
    mica_collect_fn fn;
    void *arg;
} collector_t;

struct mica_metrics {
    pthread_mutex_t lock;
    family_t **fams;
    size_t nfams;
    collector_t *collectors;
    size_t ncollectors;
    series_t *refused;        /* mica_metrics_series_refused_total */
    series_t *collect_errors; /* mica_metrics_collect_errors_total */
};

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon && c == ':') || (p != s && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (h ^ 0xff) * 0x100000001b3ull; /* a separator, so ("ab","c") != ("a","bc") */
}

static void family_free(family_t *f)
{
    for (size_t i = 0; i < f->nseries; i++) {
        series_t *s = f->series[i];
        for (size_t j = 0; j < f->nlabels && s->values; j++)
            mica__free(s->values[j]);
        mica__free(s->values);
        mica__free(s);
    }
    for (size_t j = 0; j < f->nlabels && f->labels; j++)
        mica__free(f->labels[j]);
    mica__free(f->labels);
    mica__free(f->series);
    mica__free(f->bounds);
    mica__free(f->name);
    mica__free(f->help);
    mica__free(f);
}

static family_t *find_family(mica_metrics_t *reg, const char *name)
{
    for (size_t i = 0; i < reg->nfams; i++)
        if (strcmp(reg->fams[i]->name, name) == 0)
            return reg->fams[i];
    return NULL;
}

static uint32_t run_length(const family_t *f)
{
    return f->kind == K_HISTOGRAM ? (uint32_t)f->nbounds + 2 : 1;
}

/* Makes a series of `f` with `values` (under reg->lock). */
static int series_make(family_t *f, const char *const *values, uint64_t hash, series_t **out)
{
    if (f->nseries >= MICA_METRICS_MAX_SERIES)
        return MICA_ELIMIT;
    if (f->nseries == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 4;
        series_t **a = mica__realloc(f->series, cap * sizeof(*a));
        if (!a)
            return MICA_ENOMEM;
        f->series = a;
        f->cap = cap;
    }
    series_t *s = mica__calloc(1, sizeof(*s));
    if (!s)
        return MICA_ENOMEM;
    s->fam = f;
    s->hash = hash;
    if (f->nlabels) {
        if (!(s->values = mica__calloc(f->nlabels, sizeof(char *)))) {
            mica__free(s);
            return MICA_ENOMEM;
        }
        for (size_t i = 0; i < f->nlabels; i++)
            if (!(s->values[i] = mica__strdup(values[i]))) {
                for (size_t j = 0; j < i; j++)
                    mica__free(s->values[j]);
                mica__free(s->values);
                mica__free(s);
                return MICA_ENOMEM;
            }
    }
    if (!(s->slot = slots_alloc(run_length(f)))) {
        for (size_t j = 0; j < f->nlabels; j++)
            mica__free(s->values[j]);
        mica__free(s->values);
        mica__free(s);
        return MICA_ENOMEM;
    }
    f->series[f->nseries++] = s;
    *out = s;
    return 0;
}

static int family_new(mica_metrics_t *reg, kind_t kind, bool vec, const char *name,
                      const char *help, const double *bounds, size_t nbounds,
                      const char *const *labels, size_t nlabels, family_t **out)
{
    if (!reg)
        reg = mica_metrics_default();
    if (!valid_name(name, true) || nlabels > MICA_METRICS_MAX_LABELS || (nlabels && !labels) ||
        (kind == K_COUNTER && !ends_with(name, "_total")) ||
        (kind != K_COUNTER && ends_with(name, "_total")))
        return MICA_EINVAL;
    for (size_t i = 0; i < nlabels; i++) {
        if (!valid_name(labels[i], false) || strncmp(labels[i], "__", 2) == 0 ||
            (kind == K_HISTOGRAM && strcmp(labels[i], "le") == 0))
            return MICA_EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0)
                return MICA_EINVAL;
    }
    if (kind == K_HISTOGRAM) {
        if (!bounds || nbounds == 0 || nbounds > MAX_BUCKETS)
            return MICA_EINVAL;
        for (size_t i = 0; i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                return MICA_EINVAL;
    }
    family_t *f = mica__calloc(1, sizeof(*f));
    if (!f)
        return MICA_ENOMEM;
    *f = (family_t){.reg = reg, .kind = kind, .vec = vec, .nlabels = nlabels};
    f->name = mica__strdup(name);
    f->help = mica__strdup(help ? help : "");
    if (nlabels)
        f->labels = mica__calloc(nlabels, sizeof(char *));
    if (nbounds && kind == K_HISTOGRAM) {
        if ((f->bounds = mica__malloc(nbounds * sizeof(double)))) {
            memcpy(f->bounds, bounds, nbounds * sizeof(double));
            f->nbounds = nbounds;
        }
    }
    bool ok = f->name && f->help && (!nlabels || f->labels) &&
              (kind != K_HISTOGRAM || f->bounds);
    for (size_t i = 0; ok && i < nlabels; i++)
        ok = (f->labels[i] = mica__strdup(labels[i])) != NULL;
    if (!ok) {
        family_free(f);
        return MICA_ENOMEM;
    }
    pthread_mutex_lock(&reg->lock);
    int rc = 0;
    if (find_family(reg, name)) {
        rc = MICA_EEXIST;
    } else {
        family_t **a = mica__realloc(reg->fams, (reg->nfams + 1) * sizeof(*a));
        if (!a) {
            rc = MICA_ENOMEM;
        } else {
            reg->fams = a;
            series_t *s;
            /* A family without labels has its one series from the start. */
            if (!vec && (rc = series_make(f, NULL, fnv(0xcbf29ce484222325ull, ""), &s)) != 0) {
                ; /* nothing registered */
            } else {
                reg->fams[reg->nfams++] = f;
            }
        }
    }
    pthread_mutex_unlock(&reg->lock);
    if (rc != 0) {
        family_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

static int family_with(family_t *f, const char *const *values, series_t **out)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < f->nlabels; i++) {
        if (!values || !values[i])
            return MICA_EINVAL;
        h = fnv(h, values[i]);
    }
    mica_metrics_t *reg = f->reg;
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < f->nseries; i++) {
        series_t *s = f->series[i];
        if (s->hash != h)
            continue;
        size_t j = 0;
        while (j < f->nlabels && strcmp(s->values[j], values[j]) == 0)
            j++;
        if (j == f->nlabels) {
            pthread_mutex_unlock(&reg->lock);
            *out = s;
            return 0;
        }
    }
    int rc = series_make(f, values, h, out);
    pthread_mutex_unlock(&reg->lock);
    if (rc == MICA_ELIMIT && reg->refused)
        bump(slots(reg->refused->slot), 1);
    return rc;
}

/* ---- registries ------------------------------------------------------------------------- */

static int registry_init(mica_metrics_t *reg)
{
    pthread_mutex_init(&reg->lock, NULL);
    family_t *f;
    int rc = family_new(reg, K_COUNTER, false, "mica_metrics_series_refused_total",
                        "Label sets refused because a vector had MICA_METRICS_MAX_SERIES.", NULL,
                        0, NULL, 0, &f);
    if (rc == 0) {
        reg->refused = f->series[0];
        rc = family_new(reg, K_COUNTER, false, "mica_metrics_collect_errors_total",
                        "Collected samples dropped: bad or duplicate names or labels.", NULL, 0,
                        NULL, 0, &f);
    }
    if (rc == 0)
        reg->collect_errors = f->series[0];
    return rc;
}

static mica_metrics_t *default_reg;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void make_default(void)
{
    static mica_metrics_t reg;
    if (registry_init(&reg) != 0) {
        fprintf(stderr, "mica: out of memory creating the metrics registry\n");
        abort(); /* at startup, like any allocation failure there */
    }
    default_reg = &reg;
}

mica_metrics_t *mica_metrics_default(void)
{
    pthread_once(&default_once, make_default);
    return default_reg;
}

int mica_metrics_new(mica_metrics_t **out)
{
    mica_metrics_t *reg = mica__calloc(1, sizeof(*reg));
    if (!reg)
        return MICA_ENOMEM;
    int rc = registry_init(reg);
    if (rc != 0) {
        mica_metrics_free(reg);
        return rc;
    }
    *out = reg;
    return 0;
}

void mica_metrics_free(mica_metrics_t *reg)
{
    if (!reg || reg == default_reg)
        return;
    for (size_t i = 0; i < reg->nfams; i++)
        family_free(reg->fams[i]);
    mica__free(reg->fams);
    mica__free(reg->collectors);
    pthread_mutex_destroy(&reg->lock);
    mica__free(reg);
}

int mica_metrics_add_collector(mica_metrics_t *reg, mica_collect_fn fn, void *arg)
{
    if (!reg)
        reg = mica_metrics_default();
    if (!fn)
        return MICA_EINVAL;
    pthread_mutex_lock(&reg->lock);
    collector_t *c = mica__realloc(reg->collectors, (reg->ncollectors + 1) * sizeof(*c));
    if (c) {
        c[reg->ncollectors++] = (collector_t){fn, arg};
        reg->collectors = c;
    }
    pthread_mutex_unlock(&reg->lock);
    return c ? 0 : MICA_ENOMEM;
}

void mica_metrics_remove_collector(mica_metrics_t *reg, mica_collect_fn fn, void *arg)
{
    if (!reg)
        reg = mica_metrics_default();
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->ncollectors; i++)
        if (reg->collectors[i].fn == fn && reg->collectors[i].arg == arg) {
            memmove(&reg->collectors[i], &reg->collectors[i + 1],
                    (reg->ncollectors - i - 1) * sizeof(*reg->collectors));
            reg->ncollectors--;
            break;
        }
    pthread_mutex_unlock(&reg->lock);
}

/* ---- the typed API ----------------------------------------------------------------------- */

int mica_counter_new(mica_counter_t **out, mica_metrics_t *reg, const char *name,
                     const char *help)
{
    family_t *f;
    int rc = family_new(reg, K_COUNTER, false, name, help, NULL, 0, NULL, 0, &f);
    if (rc == 0)
        *out = (mica_counter_t *)f->series[0];
    return rc;
}

int mica_gauge_new(mica_gauge_t **out, mica_metrics_t *reg, const char *name, const char *help)
{
    family_t *f;
    int rc = family_new(reg, K_GAUGE, false, name, help, NULL, 0, NULL, 0, &f);
    if (rc == 0)
        *out = (mica_gauge_t *)f->series[0];
    return rc;
}

int mica_histogram_new(mica_histogram_t **out, mica_metrics_t *reg, const char *name,
                       const char *help, const double *buckets, size_t n)
{
    family_t *f;
    int rc = family_new(reg, K_HISTOGRAM, false, name, help, buckets, n, NULL, 0, &f);
    if (rc == 0)
        *out = (mica_histogram_t *)f->series[0];
    return rc;
}

int mica_counter_vec_new(mica_counter_vec_t **out, mica_metrics_t *reg, const char *name,
                         const char *help, const char *const *labels, size_t nlabels)
{
    return family_new(reg, K_COUNTER, true, name, help, NULL, 0, labels, nlabels,
                      (family_t **)out);
}

int mica_gauge_vec_new(mica_gauge_vec_t **out, mica_metrics_t *reg, const char *name,
                       const char *help, const char *const *labels, size_t nlabels)
{
    return family_new(reg, K_GAUGE, true, name, help, NULL, 0, labels, nlabels, (family_t **)out);
}

int mica_histogram_vec_new(mica_histogram_vec_t **out, mica_metrics_t *reg, const char *name,
                           const char *help, const double *buckets, size_t n,
                           const char *const *labels, size_t nlabels)
{
    return family_new(reg, K_HISTOGRAM, true, name, help, buckets, n, labels, nlabels,
                      (family_t **)out);
}

int mica_counter_vec_with(mica_counter_vec_t *v, const char *const *values, mica_counter_t **out)
{
    return family_with((family_t *)v, values, (series_t **)out);
}

int mica_gauge_vec_with(mica_gauge_vec_t *v, const char *const *values, mica_gauge_t **out)
{
    return family_with((family_t *)v, values, (series_t **)out);
}

int mica_histogram_vec_with(mica_histogram_vec_t *v, const char *const *values,
                            mica_histogram_t **out)
{
    return family_with((family_t *)v, values, (series_t **)out);
}

void mica_counter_inc(mica_counter_t *c)
{
    bump(slots(((series_t *)c)->slot), 1);
}

void mica_counter_add(mica_counter_t *c, uint64_t n)
{
    bump(slots(((series_t *)c)->slot), n);
}

void mica_gauge_add(mica_gauge_t *g, double delta)
{
    bump_double(slots(((series_t *)g)->slot), delta);
}

void mica_gauge_inc(mica_gauge_t *g)
{
    mica_gauge_add(g, 1);
}

void mica_gauge_dec(mica_gauge_t *g)
{
    mica_gauge_add(g, -1);
}

void mica_gauge_set(mica_gauge_t *g, double value)
{
    atomic_store_explicit(&((series_t *)g)->set_bits, d2u(value), memory_order_relaxed);
}

void mica_histogram_observe(mica_histogram_t *hist, double v)
{
    series_t *s = (series_t *)hist;
    const family_t *f = s->fam;
    size_t n = f->nbounds, i = 0;
    if (n <= 16) {
        while (i < n && v > f->bounds[i])
            i++;
    } else { /* the first bound >= v */
        size_t hi = n;
        while (i < hi) {
            size_t mid = (i + hi) / 2;
            if (v > f->bounds[mid])
                i = mid + 1;
            else
                hi = mid;
        }
    }
    if (v != v) /* NaN: counted in +Inf, as Prometheus does */
        i = n;
    slot_t *w = slots(s->slot);
    bump(&w[i], 1);
    bump_double(&w[n + 1], v);
}

uint64_t mica_counter_value(const mica_counter_t *c)
{
    uint64_t v;
    read_slots(((const series_t *)c)->slot, 1, &v);
    return v;
}

double mica_gauge_value(const mica_gauge_t *g)
{
    const series_t *s = (const series_t *)g;
    return u2d(atomic_load_explicit(&s->set_bits, memory_order_relaxed)) + read_double(s->slot);
}

uint64_t mica_histogram_count(const mica_histogram_t *hist, double *sum)
{
    const series_t *s = (const series_t *)hist;
    size_t n = s->fam->nbounds + 1;
    uint64_t b[MAX_BUCKETS + 1], count = 0;
    read_slots(s->slot, (uint32_t)n, b);
    for (size_t i = 0; i < n; i++)
        count += b[i];
    if (sum)
        *sum = read_double(s->slot + (uint32_t)n);
    return count;
}

/* ---- text format ------------------------------------------------------------------------ */

#define TEXT_MAX ((size_t)256 << 20)

static int put(mica__buf_t *b, const char *s)
{
    return mica__buf_append(b, s, strlen(s));
}

int mica__metrics_put_double(mica__buf_t *b, double v)
{
    char num[40];
    if (v != v)
        return put(b, "NaN");
    if (isinf(v))
        return put(b, v > 0 ? "+Inf" : "-Inf");
    snprintf(num, sizeof(num), "%.15g", v);
    if (strtod(num, NULL) != v)
        snprintf(num, sizeof(num), "%.17g", v);
    return put(b, num);
}

static int put_u64(mica__buf_t *b, uint64_t v)
{
    char num[24];
    snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    return put(b, num);
}

/* A label value or help text: \ and newline escaped, and " too in label values. */
static int put_escaped(mica__buf_t *b, const char *s, bool quote)
{
    int rc = 0;
    const char *run = s;
    for (; *s && rc == 0; s++) {
        const char *e = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : quote && *s == '"' ? "\\\"" : NULL;
        if (!e)
            continue;
        rc = mica__buf_append(b, run, (size_t)(s - run));
        if (rc == 0)
            rc = put(b, e);
        run = s + 1;
    }
    return rc ? rc : mica__buf_append(b, run, (size_t)(s - run));
}

static int put_header(mica__buf_t *b, const char *name, const char *help, const char *type)
{
    int rc = put(b, "# HELP ");
    rc = rc ? rc : put(b, name);
    rc = rc ? rc : put(b, " ");
    rc = rc ? rc : put_escaped(b, help, false);
    rc = rc ? rc : put(b, "\n# TYPE ");
    rc = rc ? rc : put(b, name);
    rc = rc ? rc : put(b, " ");
    rc = rc ? rc : put(b, type);
    return rc ? rc : put(b, "\n");
}

/* {a="x",b="y"[,le="..."]} -- or nothing without labels. */
static int put_labels(mica__buf_t *b, char *const *names, char *const *values, size_t n,
                      const char *le)
{
    if (n == 0 && !le)
        return 0;
    int rc = put(b, "{");
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = i ? put(b, ",") : 0;
        rc = rc ? rc : put(b, names[i]);
        rc = rc ? rc : put(b, "=\"");
        rc = rc ? rc : put_escaped(b, values[i], true);
        rc = rc ? rc : put(b, "\"");
    }
    if (le && rc == 0) {
        rc = n ? put(b, ",le=\"") : put(b, "le=\"");
        rc = rc ? rc : put(b, le);
        rc = rc ? rc : put(b, "\"");
    }
    return rc ? rc : put(b, "}");
}

static int write_family(mica__buf_t *b, const family_t *f)
{
    if (f->vec && f->nseries == 0)
        return 0; /* nothing to say yet */
    static const char *const types[] = {"counter", "gauge", "histogram"};
    int rc = put_header(b, f->name, f->help, types[f->kind]);
    for (size_t i = 0; i < f->nseries && rc == 0; i++) {
        const series_t *s = f->series[i];
        if (f->kind != K_HISTOGRAM) {
            rc = put(b, f->name);
            rc = rc ? rc : put_labels(b, f->labels, s->values, f->nlabels, NULL);
            rc = rc ? rc : put(b, " ");
            if (rc == 0 && f->kind == K_COUNTER)
                rc = put_u64(b, mica_counter_value((const mica_counter_t *)s));
            else if (rc == 0)
                rc = mica__metrics_put_double(b, mica_gauge_value((const mica_gauge_t *)s));
            rc = rc ? rc : put(b, "\n");
            continue;
        }
        uint64_t counts[MAX_BUCKETS + 1], cum = 0;
        read_slots(s->slot, (uint32_t)f->nbounds + 1, counts);
        double sum = read_double(s->slot + (uint32_t)f->nbounds + 1);
        for (size_t j = 0; j <= f->nbounds && rc == 0; j++) {
            char le[40];
            if (j == f->nbounds) {
                snprintf(le, sizeof(le), "+Inf");
            } else {
                mica__buf_t t;
                mica__buf_init(&t, sizeof(le) - 1);
                if (mica__metrics_put_double(&t, f->bounds[j]) != 0) {
                    mica__buf_free(&t);
                    return MICA_ENOMEM;
                }
                snprintf(le, sizeof(le), "%.*s", (int)mica__buf_len(&t), mica__buf_data(&t));
                mica__buf_free(&t);
            }
            cum += counts[j];
            rc = put(b, f->name);
            rc = rc ? rc : put(b, "_bucket");
            rc = rc ? rc : put_labels(b, f->labels, s->values, f->nlabels, le);
            rc = rc ? rc : put(b, " ");
            rc = rc ? rc : put_u64(b, cum);
            rc = rc ? rc : put(b, "\n");
        }
        rc = rc ? rc : put(b, f->name);
        rc = rc ? rc : put(b, "_sum");
        rc = rc ? rc : put_labels(b, f->labels, s->values, f->nlabels, NULL);
        rc = rc ? rc : put(b, " ");
        rc = rc ? rc : mica__metrics_put_double(b, sum);
        rc = rc ? rc : put(b, "\n");
        rc = rc ? rc : put(b, f->name);
        rc = rc ? rc : put(b, "_count");
        rc = rc ? rc : put_labels(b, f->labels, s->values, f->nlabels, NULL);
        rc = rc ? rc : put(b, " ");
        rc = rc ? rc : put_u64(b, cum);
        rc = rc ? rc : put(b, "\n");
    }
    return rc;
}

/* ---- collectors ------------------------------------------------------------------------- */

typedef struct cfam {
    char *name, *help;
    mica_metric_type_t type;
    mica__buf_t samples; /* the sample lines */
    uint64_t *hashes;    /* of each sample's label set, for duplicates */
    size_t n, cap;
} cfam_t;

struct mica_collect {
    mica_metrics_t *reg;
    cfam_t *fams;
    size_t nfams, cap;
    int err; /* MICA_ENOMEM: the scrape fails */
};

static cfam_t *cfam_get(mica_collect_t *c, mica_metric_type_t type, const char *name,
                        const char *help)
{
    for (size_t i = 0; i < c->nfams; i++)
        if (strcmp(c->fams[i].name, name) == 0)
            return c->fams[i].type == type ? &c->fams[i] : NULL;
    if (c->nfams == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        cfam_t *a = mica__realloc(c->fams, cap * sizeof(*a));
        if (!a) {
            c->err = MICA_ENOMEM;
            return NULL;
        }
        c->fams = a;
        c->cap = cap;
    }
    cfam_t *f = &c->fams[c->nfams];
    *f = (cfam_t){.type = type};
    f->name = mica__strdup(name);
    f->help = mica__strdup(help ? help : "");
    mica__buf_init(&f->samples, TEXT_MAX);
    if (!f->name || !f->help) {
        mica__free(f->name);
        mica__free(f->help);
        c->err = MICA_ENOMEM;
        return NULL;
    }
    c->nfams++;
    return f;
}

void mica_collect_sample(mica_collect_t *c, mica_metric_type_t type, const char *name,
                         const char *help, const char *const *labels, const char *const *values,
                         size_t nlabels, double value)
{
    bool ok = valid_name(name, true) && (type == MICA_METRIC_COUNTER || type == MICA_METRIC_GAUGE) &&
              (type == MICA_METRIC_COUNTER) == ends_with(name, "_total") &&
              nlabels <= MICA_METRICS_MAX_LABELS && !find_family(c->reg, name);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; ok && i < nlabels; i++) {
        ok = valid_name(labels[i], false) && values[i] && strncmp(labels[i], "__", 2) != 0;
        if (ok)
            h = fnv(fnv(h, labels[i]), values[i]);
    }
    cfam_t *f = ok ? cfam_get(c, type, name, help) : NULL;
    for (size_t i = 0; f && i < f->n; i++)
        if (f->hashes[i] == h)
            f = NULL;
    if (f && f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        uint64_t *a = mica__realloc(f->hashes, cap * sizeof(*a));
        if (a) {
            f->hashes = a;
            f->cap = cap;
        } else {
            c->err = MICA_ENOMEM;
            f = NULL;
        }
    }
    if (!f) {
        if (c->reg->collect_errors)
            bump(slots(c->reg->collect_errors->slot), 1);
        return;
    }
    f->hashes[f->n++] = h;
    mica__buf_t *b = &f->samples;
    int rc = put(b, name);
    rc = rc ? rc : put_labels(b, (char *const *)labels, (char *const *)values, nlabels, NULL);
    rc = rc ? rc : put(b, " ");
    rc = rc ? rc : mica__metrics_put_double(b, value);
    rc = rc ? rc : put(b, "\n");
    if (rc != 0)
        c->err = rc;
}

/* ---- writing a registry ---------------------------------------------------------------- */

/* One family to write: registered (fam) or collected (cfam). */
typedef struct entry {
    const char *name;
    const family_t *fam;
    const cfam_t *cfam;
} entry_t;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const entry_t *)a)->name, ((const entry_t *)b)->name);
}

int mica_metrics_write(mica_metrics_t *reg, char **text, size_t *len)
{
    if (!reg)
        reg = mica_metrics_default();
    mica__buf_t b;
    mica__buf_init(&b, TEXT_MAX);
    mica_collect_t c = {.reg = reg};
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->ncollectors; i++)
        reg->collectors[i].fn(&c, reg->collectors[i].arg);
    int rc = c.err;
    entry_t *all = NULL;
    if (rc == 0 && !(all = mica__malloc((reg->nfams + c.nfams + 1) * sizeof(*all))))
        rc = MICA_ENOMEM;
    size_t n = 0;
    if (rc == 0) {
        for (size_t i = 0; i < reg->nfams; i++)
            all[n++] = (entry_t){reg->fams[i]->name, reg->fams[i], NULL};
        for (size_t i = 0; i < c.nfams; i++)
            all[n++] = (entry_t){c.fams[i].name, NULL, &c.fams[i]};
        qsort(all, n, sizeof(*all), by_name);
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (all[i].fam) {
            rc = write_family(&b, all[i].fam);
            continue;
        }
        const cfam_t *f = all[i].cfam;
        rc = put_header(&b, f->name, f->help, f->type == MICA_METRIC_COUNTER ? "counter" : "gauge");
        rc = rc ? rc : mica__buf_append(&b, mica__buf_data(&f->samples), mica__buf_len(&f->samples));
    }
    pthread_mutex_unlock(&reg->lock);
    mica__free(all);
    for (size_t i = 0; i < c.nfams; i++) {
        mica__free(c.fams[i].name);
        mica__free(c.fams[i].help);
        mica__free(c.fams[i].hashes);
        mica__buf_free(&c.fams[i].samples);
    }
    mica__free(c.fams);
    if (rc == 0)
        rc = mica__buf_append(&b, "", 1); /* the NUL */
    if (rc != 0) {
        mica__buf_free(&b);
        return rc == MICA_ELIMIT ? MICA_ENOMEM : rc;
    }
    *text = mica__buf_data(&b);
    *len = mica__buf_len(&b) - 1;
    return 0;
}

void mica_metrics_text_free(char *text)
{
    mica__free(text);
}
