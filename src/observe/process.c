/* SPDX-License-Identifier: MIT */
/*
 * Collectors of the runtime's counters (mica_runtime_stats(), per worker)
 * and of the process's (client_golang's process collector: CPU, memory,
 * file descriptors, start time, read from /proc at scrape time).
 */
#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/alloc.h"
#include "observe/internal.h"

static void gauge(mica_collect_t *out, const char *name, const char *help, const char *const *l,
                  const char *const *v, size_t n, double value)
{
    mica_collect_sample(out, MICA_METRIC_GAUGE, name, help, l, v, n, value);
}

static void counter(mica_collect_t *out, const char *name, const char *help, const char *const *l,
                    const char *const *v, size_t n, double value)
{
    mica_collect_sample(out, MICA_METRIC_COUNTER, name, help, l, v, n, value);
}

static void collect_runtime(mica_collect_t *out, void *arg)
{
    mica_runtime_t *rt = arg;
    int nw = mica_runtime_workers(rt);
    mica_worker_stats_t *per = mica__calloc((size_t)nw, sizeof(*per));
    mica_runtime_stats_t s;
    int n = mica_runtime_stats(rt, &s, per, per ? nw : 0);
    gauge(out, "mica_runtime_workers", "Worker threads (event loops) of the runtime.", NULL, NULL,
          0, s.workers);
    const char *l[] = {"worker"};
    for (int i = 0; i < n; i++) {
        char id[12];
        snprintf(id, sizeof(id), "%d", i);
        const char *v[] = {id};
        const mica_worker_stats_t *w = &per[i];
        gauge(out, "mica_runtime_coroutines", "Live coroutines: running, runnable or waiting.", l,
              v, 1, (double)w->coroutines);
        gauge(out, "mica_runtime_runnable_coroutines",
              "Run-queue length: coroutines ready to run, waiting for the CPU.", l, v, 1,
              (double)w->runnable);
        gauge(out, "mica_runtime_watched_fds", "File descriptors registered with the worker's epoll.",
              l, v, 1, (double)w->watched_fds);
        counter(out, "mica_runtime_coroutines_spawned_total", "Coroutines created.", l, v, 1,
                (double)w->spawned);
        counter(out, "mica_runtime_spawn_failures_total", "Spawns refused for want of memory.", l,
                v, 1, (double)w->spawn_failed);
        counter(out, "mica_runtime_loop_iterations_total", "Event loop iterations (epoll_wait calls).",
                l, v, 1, (double)w->polls);
        counter(out, "mica_runtime_coroutine_switches_total", "Coroutine switch-ins.", l, v, 1,
                (double)w->runs);
        counter(out, "mica_runtime_timers_fired_total", "Timers that came due.", l, v, 1,
                (double)w->timers_fired);
        counter(out, "mica_runtime_timer_lag_seconds_total",
                "Sum over fired timers of how late the loop noticed them (loop lag); divide the "
                "rate by mica_runtime_timers_fired_total's for the mean.",
                l, v, 1, (double)w->lag_us_sum / 1e6);
        gauge(out, "mica_runtime_loop_lag_seconds",
              "Lag of the most overdue timer of the latest loop iteration that fired any.", l, v, 1,
              (double)w->lag_us_last / 1e6);
        gauge(out, "mica_runtime_loop_lag_max_seconds", "The largest loop lag seen.", l, v, 1,
              (double)w->lag_us_max / 1e6);
    }
    gauge(out, "mica_offload_threads", "Threads of the runtime's offload pool.", NULL, NULL, 0,
          (double)s.offload_threads);
    gauge(out, "mica_offload_queued_jobs", "Offload jobs waiting for a thread.", NULL, NULL, 0,
          (double)s.offload_queued);
    gauge(out, "mica_offload_busy_threads", "Offload threads running a job.", NULL, NULL, 0,
          (double)s.offload_busy);
    counter(out, "mica_offload_rejected_jobs_total", "Offload jobs refused: queue full.", NULL,
            NULL, 0, (double)s.offload_rejected);
    mica__free(per);
}

/* Reads up to cap-1 bytes of `path` into buf. Returns the length or -1. */
static ssize_t slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (ssize_t)n;
}

static void collect_process(mica_collect_t *out, void *arg)
{
    char buf[4096];
    double tick = (double)sysconf(_SC_CLK_TCK), page = (double)sysconf(_SC_PAGESIZE);
    if (slurp("/proc/self/stat", buf, sizeof(buf)) > 0) {
        const char *p = strrchr(buf, ')');
        unsigned long long utime = 0, stime = 0, start = 0, vsize = 0;
        long long rss = 0;
        /* Fields 3.. after the command: state ppid pgrp session tty tpgid flags minflt
         * cminflt majflt cmajflt utime stime cutime cstime priority nice threads
         * itrealvalue starttime vsize rss. */
        if (p && sscanf(p + 2,
                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                        "%*d %*d %llu %llu %lld",
                        &utime, &stime, &start, &vsize, &rss) == 5) {
            counter(out, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                    NULL, NULL, 0, (double)(utime + stime) / tick);
            gauge(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.", NULL, NULL,
                  0, (double)vsize);
            gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.", NULL, NULL,
                  0, (double)rss * page);
            char st[8192];
            const char *bt = slurp("/proc/stat", st, sizeof(st)) > 0 ? strstr(st, "\nbtime ") : NULL;
            if (bt)
                gauge(out, "process_start_time_seconds",
                      "Start time of the process since unix epoch in seconds.", NULL, NULL, 0,
                      strtod(bt + 7, NULL) + (double)start / tick);
        }
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        double n = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            n += e->d_name[0] != '.';
        closedir(d);
        gauge(out, "process_open_fds", "Number of open file descriptors.", NULL, NULL, 0, n - 1);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        gauge(out, "process_max_fds", "Maximum number of open file descriptors.", NULL, NULL, 0,
              rl.rlim_cur == RLIM_INFINITY ? 1e308 : (double)rl.rlim_cur);
}

int mica__process_collectors(mica_metrics_t *reg, mica_runtime_t *rt)
{
    int rc = mica_metrics_add_collector(reg, collect_runtime, rt);
    static atomic_bool process_added; /* the process is one: add it once */
    if (rc == 0 && !atomic_exchange(&process_added, true)) {
        rc = mica_metrics_add_collector(reg, collect_process, NULL);
        if (rc != 0)
            atomic_store(&process_added, false);
    }
    return rc;
}

void mica__process_collectors_remove(mica_metrics_t *reg, mica_runtime_t *rt)
{
    mica_metrics_remove_collector(reg, collect_runtime, rt);
}
