/* SPDX-License-Identifier: MIT */
/*
 * SQLite inserts through mica's writer: `clients` coroutines on one worker
 * each inserting orders one statement at a time for `seconds`.
 *
 *   bench_sqlite group  PATH clients seconds   group commit (max_group 512)
 *   bench_sqlite single PATH clients seconds   one transaction per insert (max_group 1)
 *
 * Prints "<mode> clients=N inserts/s=X commits/s=Y rows/commit=Z errors=E".
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
static int clients, seconds;
static int64_t end_ms;
static atomic_long inserts, errors;
static mica_wg_t *wg;

static void client(void *arg)
{
    int64_t user = (intptr_t)arg;
    long n = 0, e = 0;
    while (mica_now_ms() < end_ms) {
        mica_db_value_t p[] = {mica_db_int64(user), mica_db_int64(1999 + n % 100),
                               mica_db_text("created")};
        if (mica_db_exec(db, NULL,
                         "INSERT INTO orders (user_id, amount_cents, status) VALUES ($1, $2, $3)",
                         p, 3, NULL) == 0)
            n++;
        else
            e++;
    }
    atomic_fetch_add(&inserts, n);
    atomic_fetch_add(&errors, e);
    mica_wg_done(wg);
}

static void start(int worker, void *arg)
{
    if (worker != 0)
        return;
    mica_db_exec(db, NULL,
                 "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, user_id INTEGER, "
                 "amount_cents INTEGER, status TEXT)",
                 NULL, 0, NULL);
    mica_db_stats_t s0, s1;
    mica_db_stats(db, &s0);
    int64_t t0 = mica_now_ms();
    end_ms = t0 + seconds * 1000;
    mica_wg_new(&wg);
    mica_wg_add(wg, clients);
    for (int i = 0; i < clients; i++)
        mica_go(client, (void *)(intptr_t)i);
    mica_wg_wait(wg, NULL);
    double secs = (double)(mica_now_ms() - t0) / 1000.0;
    mica_db_stats(db, &s1);
    double commits = (double)(s1.group_commits - s0.group_commits);
    printf("clients=%d inserts/s=%.0f commits/s=%.0f rows/commit=%.1f errors=%ld\n", clients,
           (double)atomic_load(&inserts) / secs, commits / secs,
           commits > 0 ? (double)atomic_load(&inserts) / commits : 0, atomic_load(&errors));
    mica_wg_free(wg);
    mica_runtime_stop(rt);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s group|single PATH clients seconds\n", argv[0]);
        return 2;
    }
    clients = (int)strtol(argv[3], NULL, 10);
    seconds = (int)strtol(argv[4], NULL, 10);
    char url[512];
    snprintf(url, sizeof(url), "sqlite://%s", argv[2]);
    mica_db_opts_t o = {.max_group = !strcmp(argv[1], "single") ? 1 : 0};
    printf("%s ", argv[1]);
    fflush(stdout);
    if (mica_db_open(&db, url, &o) != 0)
        return 1;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    mica_runtime_new(&rt, &ro);
    mica_runtime_on_start(rt, start, NULL);
    int rc = mica_runtime_run(rt);
    mica_runtime_free(rt);
    mica_db_close(db);
    return rc == 0 ? 0 : 1;
}
