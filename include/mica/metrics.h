/* SPDX-License-Identifier: MIT */
/*
 * Metrics in the Prometheus model: counters, gauges and histograms, each
 * alone or as a vector with labels (client_golang's CounterVec), kept in a
 * registry and written in the Prometheus text format 0.0.4.
 *
 *     static mica_counter_vec_t *orders;      // registered once, at startup
 *     mica_counter_vec_new(&orders, NULL, "shop_orders_total", "Orders placed.",
 *                          (const char *[]){"outcome"}, 1);
 *     mica_counter_t *ok;                     // a label set, resolved once
 *     mica_counter_vec_with(orders, (const char *[]){"ok"}, &ok);
 *     mica_counter_inc(ok);                   // the hot path: no lock, no shared line
 *
 * Updates go to a shard of the calling thread (each worker has its own), so
 * the hot path takes no lock and writes no cache line another thread writes;
 * a scrape sums the shards. Resolving a label set (`_with`) takes the
 * registry's lock: do it once and keep the handle. Handles live as long as
 * their registry (the default one: the process).
 *
 * Names follow Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*, base units (seconds,
 * bytes), counters end in "_total". Values that other code already counts
 * (a pool's statistics) are exported at scrape time by a collector
 * (mica_metrics_add_collector()), not copied into counters.
 */
#ifndef MICA_METRICS_H
#define MICA_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/error.h"

typedef struct mica_metrics mica_metrics_t; /* a registry */
typedef struct mica_counter mica_counter_t;
typedef struct mica_gauge mica_gauge_t;
typedef struct mica_histogram mica_histogram_t;
typedef struct mica_counter_vec mica_counter_vec_t;
typedef struct mica_gauge_vec mica_gauge_vec_t;
typedef struct mica_histogram_vec mica_histogram_vec_t;

/* Most labels a family may have, and most label sets (series) a vector makes. */
#define MICA_METRICS_MAX_LABELS 8
#define MICA_METRICS_MAX_SERIES 10000

/** Histogram buckets for durations in seconds: 0.005 ... 10 (OTel's HTTP buckets). */
#define MICA_METRICS_DURATION_BUCKETS                                                             \
    (const double[]){0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
#define MICA_METRICS_DURATION_NBUCKETS 14

/* ---- registries --------------------------------------------------------------------- */

/** Returns the process's registry (what NULL means below and what /metrics serves). */
MICA_API mica_metrics_t *mica_metrics_default(void);

/** Creates an empty registry. Returns 0 or MICA_ENOMEM. */
MICA_API int mica_metrics_new(mica_metrics_t **out);

/**
 * Frees a registry made by mica_metrics_new() with its metrics and handles,
 * once no thread updates or scrapes them. NULL and the default are no-ops.
 */
MICA_API void mica_metrics_free(mica_metrics_t *reg);

/* ---- registration (startup) ----------------------------------------------------------- */
/*
 * Each _new registers a family in `reg` (NULL: the default registry) under
 * `name` with `help` (both copied). `labels` names its `nlabels` labels
 * (copied; vectors only). Returns 0, MICA_EINVAL (a bad name or label name,
 * "le" on a histogram, a counter not ending in "_total", too many labels,
 * bad buckets), MICA_EEXIST (the name is taken) or MICA_ENOMEM.
 */

/** Registers a counter (its name ends in "_total") and puts its handle in *out. */
MICA_API int mica_counter_new(mica_counter_t **out, mica_metrics_t *reg, const char *name,
                              const char *help);
/** Registers a gauge and puts its handle in *out. */
MICA_API int mica_gauge_new(mica_gauge_t **out, mica_metrics_t *reg, const char *name,
                            const char *help);
/**
 * Registers a histogram with `n` bucket upper bounds (strictly increasing,
 * finite; +Inf is implied; copied) and puts its handle in *out.
 */
MICA_API int mica_histogram_new(mica_histogram_t **out, mica_metrics_t *reg, const char *name,
                                const char *help, const double *buckets, size_t n);

/** Registers a counter vector with `nlabels` labels; series come from mica_counter_vec_with(). */
MICA_API int mica_counter_vec_new(mica_counter_vec_t **out, mica_metrics_t *reg, const char *name,
                                  const char *help, const char *const *labels, size_t nlabels);
/** Registers a gauge vector with `nlabels` labels. */
MICA_API int mica_gauge_vec_new(mica_gauge_vec_t **out, mica_metrics_t *reg, const char *name,
                                const char *help, const char *const *labels, size_t nlabels);
/** Registers a histogram vector: buckets as mica_histogram_new(), `nlabels` labels. */
MICA_API int mica_histogram_vec_new(mica_histogram_vec_t **out, mica_metrics_t *reg,
                                    const char *name, const char *help, const double *buckets,
                                    size_t n, const char *const *labels, size_t nlabels);

/*
 * Each _with returns in *out the series of the vector with label `values`
 * (one per label, in order; copied), making it on first use. Any thread;
 * takes the registry's lock. Returns 0, MICA_EINVAL (a NULL value),
 * MICA_ELIMIT (MICA_METRICS_MAX_SERIES reached; counted in
 * mica_metrics_series_refused_total) or MICA_ENOMEM.
 */

/** Puts the counter of label `values` in *out (made on first use). */
MICA_API int mica_counter_vec_with(mica_counter_vec_t *v, const char *const *values,
                                   mica_counter_t **out);
/** Puts the gauge of label `values` in *out (made on first use). */
MICA_API int mica_gauge_vec_with(mica_gauge_vec_t *v, const char *const *values,
                                 mica_gauge_t **out);
/** Puts the histogram of label `values` in *out (made on first use). */
MICA_API int mica_histogram_vec_with(mica_histogram_vec_t *v, const char *const *values,
                                     mica_histogram_t **out);

/* ---- updates (the hot path: any thread, no lock, never fails) ------------------------ */

/** Adds 1. */
MICA_API void mica_counter_inc(mica_counter_t *c);
/** Adds `n`. */
MICA_API void mica_counter_add(mica_counter_t *c, uint64_t n);

/**
 * Adds `delta` (may be negative). Sharded like counters: for values many
 * threads move (requests in flight). Do not mix with mica_gauge_set() on
 * one gauge: the value is the last set plus every add.
 */
MICA_API void mica_gauge_add(mica_gauge_t *g, double delta);
/** Adds 1 (sharded, as mica_gauge_add()). */
MICA_API void mica_gauge_inc(mica_gauge_t *g);
/** Subtracts 1 (sharded, as mica_gauge_add()). */
MICA_API void mica_gauge_dec(mica_gauge_t *g);
/** Sets the value (one shared word: for values one thread owns, a queue length). */
MICA_API void mica_gauge_set(mica_gauge_t *g, double value);

/** Counts `value` in the first bucket whose bound is >= it (seconds, bytes, ...). */
MICA_API void mica_histogram_observe(mica_histogram_t *h, double value);

/* ---- reading (tests, scrapes) --------------------------------------------------------- */

/** Returns the counter's value summed over the threads' shards. Any thread. */
MICA_API uint64_t mica_counter_value(const mica_counter_t *c);
/** Returns the gauge's value. Any thread. */
MICA_API double mica_gauge_value(const mica_gauge_t *g);
/** Returns the number of observations and (if `sum` is not NULL) their sum. Any thread. */
MICA_API uint64_t mica_histogram_count(const mica_histogram_t *h, double *sum);

/* ---- collectors: values read at scrape time ------------------------------------------- */

typedef enum mica_metric_type {
    MICA_METRIC_COUNTER,
    MICA_METRIC_GAUGE,
} mica_metric_type_t;

typedef struct mica_collect mica_collect_t;

/**
 * A collector: emits its samples with mica_collect_sample() when the
 * registry is written (each scrape). Runs on the scraping thread -- an
 * offload thread for /metrics -- and must not suspend.
 */
typedef void (*mica_collect_fn)(mica_collect_t *out, void *arg);

/**
 * Adds a collector to `reg` (NULL: default), called at every scrape until
 * the registry is freed; `arg` must live as long. Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_metrics_add_collector(mica_metrics_t *reg, mica_collect_fn fn, void *arg);

/** Removes the collector added with `fn` and `arg` (a no-op when there is none). */
MICA_API void mica_metrics_remove_collector(mica_metrics_t *reg, mica_collect_fn fn, void *arg);

/**
 * Emits one sample of family `name` (a counter's ends in "_total") with
 * `nlabels` label names and values (copied, escaped). Samples of one name
 * are grouped under one HELP/TYPE, whatever the order; the first sample's
 * help and type stand. A sample with a bad name or label, a name a
 * registered family has, or a repeated label set is dropped and counted
 * (mica_metrics_collect_errors_total).
 */
MICA_API void mica_collect_sample(mica_collect_t *out, mica_metric_type_t type, const char *name,
                                  const char *help, const char *const *labels,
                                  const char *const *values, size_t nlabels, double value);

/* ---- exposition ----------------------------------------------------------------------- */

/** The Content-Type of what mica_metrics_write() produces. */
#define MICA_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/**
 * Writes `reg` (NULL: default) in the Prometheus text format 0.0.4 --
 * families sorted by name, collectors run -- into *text (NUL-terminated;
 * free it with mica_metrics_text_free()), its length in *len. Any thread
 * but a worker's (collectors may take a while: use mica_offload()).
 * Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_metrics_write(mica_metrics_t *reg, char **text, size_t *len);

/** Frees what mica_metrics_write() returned. NULL is a no-op. */
MICA_API void mica_metrics_text_free(char *text);

#endif /* MICA_METRICS_H */
