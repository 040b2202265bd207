/* SPDX-License-Identifier: MIT */
/* Test helpers for the store layer: a throwaway PostgreSQL cluster (pg_server.sh). */
#ifndef MICA_STORE_HELPERS_H
#define MICA_STORE_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>

/*
 * helpers.h's EXPECT_EQ evaluates its arguments twice (once to compare,
 * once to report); the store tests put statements inside it, so they use
 * this one, which evaluates each argument once.
 */
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
    return ms * 5;
#else
    return RUNNING_ON_VALGRIND ? ms * 20 : ms;
#endif
}

static char pg_dir[128];
static int pg_port;

static inline void pg_stop(void)
{
    if (!pg_dir[0])
        return;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "%s/tests/unit/store/pg_server.sh stop %s", MICA_SOURCE_DIR, pg_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "pg_stop: %s failed\n", cmd);
    pg_dir[0] = '\0';
}

/* Starts a cluster; returns 0 and sets pg_port, or -1. Stopped at exit. */
static inline int pg_start(void)
{
    snprintf(pg_dir, sizeof(pg_dir), "/tmp/mica-pg-XXXXXX");
    if (!mkdtemp(pg_dir))
        return -1;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "%s/tests/unit/store/pg_server.sh start %s %d", MICA_SOURCE_DIR,
             pg_dir, (int)getpid());
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char line[64] = "";
    char *got = fgets(line, sizeof(line), f);
    int rc = pclose(f);
    if (!got || rc != 0)
        return -1;
    pg_port = (int)strtol(line, NULL, 10);
    atexit(pg_stop);
    return pg_port > 0 ? 0 : -1;
}

/* The cluster's URL over TCP. */
static inline const char *pg_url(void)
{
    static char url[256];
    snprintf(url, sizeof(url), "postgres://postgres@127.0.0.1:%d/postgres?application_name=mica_test",
             pg_port);
    return url;
}

/* The cluster's conninfo over its Unix socket. */
static inline const char *pg_unix_url(void)
{
    static char url[256];
    snprintf(url, sizeof(url), "postgres:host=%s port=%d user=postgres dbname=postgres", pg_dir,
             pg_port);
    return url;
}

#endif
