/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the discovery tests: a runtime whose objects are made before
 * it runs (registries and clients must be), timing slack for slow builds,
 * files written the way editors write them, and a throwaway etcd server
 * (Debian's etcd-server 3.4) on loopback ports with its own data dir.
 */
#ifndef MICA_DISC_HELPERS_H
#define MICA_DISC_HELPERS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/helpers.h"

/* helpers.h's EXPECT_EQ evaluates its arguments twice: calls with effects must run once. */
static inline int expect_eq_once(long long a, long long b, const char *file, int line,
                                 const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
#undef EXPECT_EQ
#define EXPECT_EQ(a, b)                                                                           \
    expect_eq_once((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* Timing bounds stretch under valgrind and the sanitizers (slower CPU, not slower waits). */
static inline int64_t slack_ms(int64_t ms)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return ms * 4;
#else
    return RUNNING_ON_VALGRIND ? ms * 20 : ms;
#endif
}

static inline int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A runtime on which setup(rt, arg) makes objects, then body(arg) runs on worker 0. */
struct disc_run {
    mica_runtime_t *rt;
    void (*body)(void *arg);
    void *arg;
};

static void disc_run_start(int worker, void *arg)
{
    struct disc_run *r = arg;
    if (worker != 0)
        return;
    r->body(r->arg);
    mica_runtime_stop(r->rt);
}

static inline mica_runtime_t *disc_runtime(int workers)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = workers, .no_signals = true, .drain_timeout_ms = 5000,
                             .offload_threads = 2, .offload_queue = 64};
    return mica_runtime_new(&rt, &o) == 0 ? rt : NULL;
}

/* Runs body on `rt` (made by disc_runtime, objects already made). Returns run's result. */
static inline int disc_run(mica_runtime_t *rt, void (*body)(void *), void *arg)
{
    struct disc_run r = {.rt = rt, .body = body, .arg = arg};
    mica_runtime_on_start(rt, disc_run_start, &r);
    return mica_runtime_run(rt);
}

/* Writes `text` to `path` as editors do: a file aside, renamed over. */
static inline void write_file(const char *path, const char *text)
{
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s.edit~", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

/* A loopback port nobody listens on now. */
static inline int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- etcd -------------------------------------------------------------------------------- */

struct etcd_server {
    char dir[128];
    int client_port, peer_port;
    pid_t pid;
};

static inline int etcd_healthy(const struct etcd_server *e)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:%d --command-timeout=1s endpoint "
             "health >/dev/null 2>&1",
             e->client_port);
    return system(cmd) == 0;
}

/* Starts etcd on e's ports and data dir; waits until it answers. Returns 0 or -1. */
static inline int etcd_start(struct etcd_server *e)
{
    char data[160], log[160], curl[64], purl[64], cluster[96];
    snprintf(data, sizeof(data), "%s/data", e->dir);
    snprintf(log, sizeof(log), "%s/etcd.log", e->dir);
    snprintf(curl, sizeof(curl), "http://127.0.0.1:%d", e->client_port);
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", e->peer_port);
    snprintf(cluster, sizeof(cluster), "t=%s", purl);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        execlp("etcd", "etcd", "--name", "t", "--data-dir", data, "--listen-client-urls", curl,
               "--advertise-client-urls", curl, "--listen-peer-urls", purl,
               "--initial-advertise-peer-urls", purl, "--initial-cluster", cluster,
               "--heartbeat-interval", "50", "--election-timeout", "500", (char *)NULL);
        _exit(127);
    }
    e->pid = pid;
    for (int i = 0; i < 200; i++) {
        if (etcd_healthy(e))
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            e->pid = 0;
            return -1;
        }
        usleep(50 * 1000);
    }
    return -1;
}

/* Stops etcd: SIGKILL (`hard`) or SIGTERM, and waits for it. */
static inline void etcd_stop(struct etcd_server *e, int hard)
{
    if (e->pid > 0) {
        kill(e->pid, hard ? SIGKILL : SIGTERM);
        waitpid(e->pid, NULL, 0);
        e->pid = 0;
    }
}

/* Removes etcd's data: the next start is an empty etcd. */
static inline void etcd_wipe(struct etcd_server *e)
{
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s/data", e->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "etcd_wipe: %s failed\n", cmd);
}

static inline int etcd_new(struct etcd_server *e)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/mica-etcd-XXXXXX");
    if (!mkdtemp(e->dir))
        return -1;
    e->client_port = free_port();
    e->peer_port = free_port();
    return etcd_start(e);
}

static inline void etcd_free(struct etcd_server *e)
{
    etcd_stop(e, 1);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
    if (e->dir[0] && system(cmd) != 0)
        fprintf(stderr, "etcd_free: %s failed\n", cmd);
}

/* Runs an etcdctl command against `e` (e.g. "compact 12"); returns its exit status. */
static inline int etcdctl(const struct etcd_server *e, const char *args)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:%d %s >/dev/null 2>&1",
             e->client_port, args);
    return system(cmd);
}

#endif
