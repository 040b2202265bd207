/* SPDX-License-Identifier: MIT */
/*
 * Test helper: a real redis-server of the test's own, on a free loopback
 * port with a temp dir and a config without persistence, started and
 * stopped (or killed and restarted on the same port) by the test; plus a
 * runner that gives a coroutine on worker 0 a client of it.
 */
#ifndef MICA_TEST_REDIS_SERVER_H
#define MICA_TEST_REDIS_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mica/redis.h"
#include "mica/runtime.h"

struct redis_server {
    pid_t pid;
    int port;
    char dir[64];
    char url[64];
    char addr[32];
};

static inline int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static inline void test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* PINGs 127.0.0.1:port with a blocking socket; true on +PONG. */
static inline int redis_ping(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && write(fd, "PING\r\n", 6) == 6) {
        char buf[16] = {0};
        ok = read(fd, buf, sizeof(buf) - 1) >= 5 && strncmp(buf, "+PONG", 5) == 0;
    }
    close(fd);
    return ok;
}

/* Starts redis-server on s->port (0: a free one; the same one again after redis_kill). */
static inline int redis_start(struct redis_server *s)
{
    if (!s->dir[0]) {
        snprintf(s->dir, sizeof(s->dir), "/tmp/mica-redis-XXXXXX");
        if (!mkdtemp(s->dir))
            return -1;
    }
    if (!s->port && (s->port = test_free_port()) < 0)
        return -1;
    snprintf(s->url, sizeof(s->url), "redis://127.0.0.1:%d", s->port);
    snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%d", s->port);
    char conf[128];
    snprintf(conf, sizeof(conf), "%s/redis.conf", s->dir);
    FILE *f = fopen(conf, "w");
    if (!f)
        return -1;
    fprintf(f,
            "port %d\nbind 127.0.0.1\ndir %s\nsave \"\"\nappendonly no\ndaemonize no\n"
            "logfile %s/redis.log\nprotected-mode no\n",
            s->port, s->dir, s->dir);
    fclose(f);
    s->pid = fork();
    if (s->pid == 0) {
        execlp("redis-server", "redis-server", conf, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* up to 5 s */
        if (redis_ping(s->port))
            return 0;
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return -1;
        }
        test_sleep_ms(10);
    }
    return -1;
}

/* Kills the server at once (SIGKILL: a crash, no goodbye to clients). */
static inline void redis_kill(struct redis_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

static inline void redis_cleanup(struct redis_server *s)
{
    redis_kill(s);
    if (s->dir[0]) {
        char path[128];
        const char *files[] = {"redis.conf", "redis.log", "dump.rdb"};
        for (size_t i = 0; i < 3; i++) {
            snprintf(path, sizeof(path), "%s/%s", s->dir, files[i]);
            unlink(path);
        }
        rmdir(s->dir);
        s->dir[0] = '\0';
    }
}

/* ---- runner -------------------------------------------------------------------- */

struct redis_run {
    mica_runtime_t *rt;
    mica_redis_t *r;
    void (*body)(mica_redis_t *r, void *arg);
    void *arg;
};

static inline void redis_run_start(int worker, void *arg)
{
    struct redis_run *x = arg;
    if (worker != 0)
        return;
    x->body(x->r, x->arg);
    mica_runtime_stop(x->rt);
}

/* Runs body(client, arg) on worker 0 of a `workers`-worker runtime. Returns run's result. */
static inline int run_with_redis(int workers, const char *url, const mica_redis_opts_t *opts,
                                 void (*body)(mica_redis_t *, void *), void *arg)
{
    struct redis_run x = {.body = body, .arg = arg};
    mica_runtime_opts_t o = {.workers = workers, .no_signals = true, .drain_timeout_ms = 5000,
                             .offload_threads = 1, .offload_queue = 4};
    if (mica_runtime_new(&x.rt, &o) != 0)
        return -1;
    if (mica_redis_new(&x.r, x.rt, url, opts) != 0) {
        mica_runtime_free(x.rt);
        return -2;
    }
    mica_runtime_on_start(x.rt, redis_run_start, &x);
    int rc = mica_runtime_run(x.rt);
    mica_redis_free(x.r);
    mica_runtime_free(x.rt);
    return rc;
}

#endif
