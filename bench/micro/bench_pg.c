/* SPDX-License-Identifier: MIT */
/*
 * PostgreSQL through mica's pool, driven like pgbench: `clients` coroutines
 * on one worker, each with its own pooled connection (pool_size = clients).
 *
 *   bench_pg select URL clients seconds [scale]
 *       pgbench -S's statement, SELECT abalance FROM pgbench_accounts WHERE
 *       aid = $1 with a random aid, prepared once per connection.
 *   bench_pg batch|seq URL clients seconds [scale]
 *       10 such statements per call: one pipelined mica_db_batch() (batch)
 *       or 10 mica_db_query() round trips (seq).
 *
 * Prints one line: "<mode> clients=N statements/s=X calls/s=Y errors=E".
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mica/db.h"
#include "mica/runtime.h"
#include "mica/sync.h"

static mica_runtime_t *rt;
static mica_db_t *db;
static const char *mode;
static int clients, seconds;
static int64_t scale = 1, end_ms;
static atomic_long statements, calls, errors;
static mica_wg_t *wg;

static const char *sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

static int64_t next_aid(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return 1 + (int64_t)(*x % (uint64_t)(100000 * scale));
}

static void client(void *arg)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)((intptr_t)arg + 1);
    long n = 0, c = 0, e = 0;
    while (mica_now_ms() < end_ms) {
        if (!strcmp(mode, "select")) {
            mica_db_value_t p = mica_db_int64(next_aid(&x));
            mica_db_rows_t *r;
            if (mica_db_query(db, NULL, sql, &p, 1, &r) == 0 && mica_db_rows_count(r) == 1)
                n++;
            else
                e++;
            mica_db_rows_free(r);
        } else if (!strcmp(mode, "batch")) {
            mica_db_value_t p[10];
            mica_db_batch_item_t items[10];
            for (int i = 0; i < 10; i++) {
                p[i] = mica_db_int64(next_aid(&x));
                items[i] = (mica_db_batch_item_t){
                    .sql = sql, .params = &p[i], .nparams = 1, .want_rows = true};
            }
            if (mica_db_batch(db, NULL, items, 10) == 0)
                n += 10;
            else
                e++;
            for (int i = 0; i < 10; i++)
                mica_db_rows_free(items[i].rows);
        } else {
            for (int i = 0; i < 10; i++) {
                mica_db_value_t p = mica_db_int64(next_aid(&x));
                mica_db_rows_t *r;
                if (mica_db_query(db, NULL, sql, &p, 1, &r) == 0)
                    n++;
                else
                    e++;
                mica_db_rows_free(r);
            }
        }
        c++;
    }
    atomic_fetch_add(&statements, n);
    atomic_fetch_add(&calls, c);
    atomic_fetch_add(&errors, e);
    mica_wg_done(wg);
}

static void start(int worker, void *arg)
{
    if (worker != 0)
        return;
    /* Warm up: every connection open and its statement prepared. */
    end_ms = mica_now_ms() + 300;
    mica_wg_new(&wg);
    mica_wg_add(wg, clients);
    for (int i = 0; i < clients; i++)
        mica_go(client, (void *)(intptr_t)i);
    mica_wg_wait(wg, NULL);
    atomic_store(&statements, 0);
    atomic_store(&calls, 0);
    atomic_store(&errors, 0);
    int64_t t0 = mica_now_ms();
    end_ms = t0 + seconds * 1000;
    mica_wg_add(wg, clients);
    for (int i = 0; i < clients; i++)
        mica_go(client, (void *)(intptr_t)i);
    mica_wg_wait(wg, NULL);
    double secs = (double)(mica_now_ms() - t0) / 1000.0;
    printf("%s clients=%d statements/s=%.0f calls/s=%.0f errors=%ld\n", mode, clients,
           (double)atomic_load(&statements) / secs, (double)atomic_load(&calls) / secs,
           atomic_load(&errors));
    mica_wg_free(wg);
    mica_runtime_stop(rt);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s select|batch|seq URL clients seconds [scale]\n", argv[0]);
        return 2;
    }
    mode = argv[1];
    clients = (int)strtol(argv[3], NULL, 10);
    seconds = (int)strtol(argv[4], NULL, 10);
    if (argc > 5)
        scale = strtol(argv[5], NULL, 10);
    mica_db_opts_t o = {.pool_size = clients};
    if (mica_db_open(&db, argv[2], &o) != 0)
        return 1;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    mica_runtime_new(&rt, &ro);
    mica_runtime_on_start(rt, start, NULL);
    int rc = mica_runtime_run(rt);
    mica_runtime_free(rt);
    mica_db_close(db);
    return rc == 0 ? 0 : 1;
}
