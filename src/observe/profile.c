/* SPDX-License-Identifier: MIT */
/*
 * GET /debug/pprof/profile?seconds=N: a CPU profile of the whole process
 * by gperftools' profiler (SIGPROF sampling at 100 Hz, written in the legacy
 * format that `go tool pprof` and `pprof` read), taken off the workers.
 *
 * The handler starts a thread and waits on an event with its request's
 * ctx; the thread runs ProfilerStart(), sleeps N seconds (or less, if the
 * handler gives up: the client went away), runs ProfilerStop(), which
 * writes the file, and sets the event. The handler then reads the file on
 * the offload pool and sends it. Whoever of the two lets go of the job
 * last removes the file and frees it, so a client that disconnects
 * mid-profile leaves nothing behind. One profile at a time (gperftools has
 * one profiler): a second request gets 409 until the thread is done.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gperftools/profiler.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/sync.h"
#include "observe/internal.h"

#define MAX_PROFILE_BYTES ((size_t)64 << 20)

static atomic_bool busy;

typedef struct job {
    atomic_int refs; /* the handler and the thread */
    mica_event_t done;
    int seconds;
    int rc; /* set by the thread before `done` */
    char path[128];
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool cancel; /* under lock */
} job_t;

static void job_unref(job_t *j)
{
    if (atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    unlink(j->path);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cv);
    mica__free(j);
}

static void *profile_main(void *arg)
{
    job_t *j = arg;
    if (!ProfilerStart(j->path)) {
        j->rc = MICA_EBUSY; /* CPUPROFILE started one at program start, or it failed */
    } else {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += j->seconds;
        pthread_mutex_lock(&j->lock);
        while (!j->cancel && pthread_cond_timedwait(&j->cv, &j->lock, &until) == 0)
            ;
        pthread_mutex_unlock(&j->lock);
        ProfilerStop();
    }
    atomic_store(&busy, false);
    mica_event_set(&j->done);
    job_unref(j);
    return NULL;
}

typedef struct readjob {
    const char *path;
    char *data;
    size_t len;
} readjob_t;

static int read_profile(void *arg)
{
    readjob_t *r = arg;
    int fd = open(r->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size > MAX_PROFILE_BYTES) {
        close(fd);
        return MICA_ELIMIT;
    }
    r->data = mica__malloc((size_t)st.st_size + 1);
    if (!r->data) {
        close(fd);
        return MICA_ENOMEM;
    }
    while (r->len < (size_t)st.st_size) {
        ssize_t n = read(fd, r->data + r->len, (size_t)st.st_size - r->len);
        if (n <= 0) {
            int err = n < 0 ? -errno : MICA_EIO;
            close(fd);
            return err;
        }
        r->len += (size_t)n;
    }
    close(fd);
    return 0;
}

/* ?seconds=N among other parameters; 30 when absent. -1: malformed. */
static long seconds_of(const char *q)
{
    for (const char *p = q; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (strncmp(p, "seconds=", 8) != 0)
            continue;
        char *end;
        errno = 0;
        long v = strtol(p + 8, &end, 10);
        return errno || end == p + 8 || (*end && *end != '&') ? -1 : v;
    }
    return 30;
}

int mica__profile_handler(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    long max = (long)(intptr_t)arg, secs = seconds_of(mica_http_req_query(req));
    if (secs < 1 || secs > max) {
        char msg[80];
        snprintf(msg, sizeof(msg), "seconds must be 1..%ld", max);
        return mica_http_resp_error(resp, 400, msg);
    }
    if (atomic_exchange(&busy, true))
        return mica_http_resp_error(resp, 409, "a profile is being taken; try again later");
    job_t *j = mica__calloc(1, sizeof(*j));
    if (!j) {
        atomic_store(&busy, false);
        return MICA_ENOMEM;
    }
    atomic_init(&j->refs, 2);
    j->seconds = (int)secs;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cv, NULL);
    const char *tmp = getenv("TMPDIR");
    snprintf(j->path, sizeof(j->path), "%s/mica-profile-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(j->path);
    if (fd < 0) {
        int err = -errno;
        atomic_store(&busy, false);
        j->path[0] = '\0';
        pthread_mutex_destroy(&j->lock);
        pthread_cond_destroy(&j->cv);
        mica__free(j);
        mica__log_error("cannot create the profile file", "error", mica_strerror(err));
        return err;
    }
    close(fd);
    mica__log_info("cpu profile started", "seconds", mica_http_req_query(req) ? mica_http_req_query(req) : "30");

    /* The thread takes no signal but SIGPROF's samples: SIGTERM and SIGHUP
     * belong to the runtime's signalfd. */
    sigset_t all, old;
    sigfillset(&all);
    sigdelset(&all, SIGPROF);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = -pthread_create(&t, &attr, profile_main, j);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        atomic_store(&busy, false);
        atomic_store(&j->refs, 1);
        job_unref(j);
        return rc;
    }

    mica_ctx_t *ctx = mica_http_req_ctx(req);
    rc = mica_event_wait(&j->done, ctx, mica_deadline_in((int64_t)secs * 1000 + 10000));
    if (rc != 0) { /* the client left (or the drain): stop early, the thread cleans up */
        pthread_mutex_lock(&j->lock);
        j->cancel = true;
        pthread_cond_signal(&j->cv);
        pthread_mutex_unlock(&j->lock);
        mica__log_warn("cpu profile abandoned", "error", mica_strerror(rc));
        job_unref(j);
        return rc;
    }
    if (j->rc != 0) {
        job_unref(j);
        return mica_http_resp_error(resp, 409, "the profiler is in use (CPUPROFILE?)");
    }
    readjob_t r = {.path = j->path};
    int res = 0;
    rc = mica_offload(NULL, ctx, read_profile, &r, &res);
    job_unref(j);
    if (rc == 0)
        rc = res;
    if (rc == 0) {
        mica_http_resp_header(resp, "Content-Disposition", "attachment; filename=\"profile\"");
        rc = mica_http_resp_send(resp, 200, "application/octet-stream", r.data, r.len);
        char bytes[24];
        snprintf(bytes, sizeof(bytes), "%zu", r.len);
        mica__log_info("cpu profile sent", "bytes", bytes);
    }
    mica__free(r.data);
    return rc;
}
