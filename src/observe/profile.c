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
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
    char secs_s[24];
    snprintf(secs_s, sizeof(secs_s), "%ld", secs);
    mica__log_info("cpu profile started", "seconds", secs_s);

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

/* ---- /debug/pprof/symbol: pprof's symbolz protocol ------------------------------------ */
/*
 * `pprof -symbolize=remote` (and gperftools' pprof) POSTs the profile's
 * addresses here as "0x1234+0x5678" and reads back "0x1234 name" lines. Go's
 * pprof finds no function names in the DWARF of an LTO build (they hang off
 * abstract origins it does not follow), so the service names them itself:
 * the executable's own .symtab (static functions included), read once from
 * /proc/self/exe and shifted by its load bias, then dladdr() for the shared
 * libraries' exported symbols.
 */

typedef struct sym {
    uintptr_t addr;
    size_t size;
    uint32_t name; /* offset in names */
} sym_t;

static struct {
    pthread_once_t once;
    sym_t *syms;
    size_t n;
    char *names;
} table = {.once = PTHREAD_ONCE_INIT};

static int first_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    *(uintptr_t *)arg = (uintptr_t)info->dlpi_addr;
    return 1; /* the first object is the executable */
}

static int by_addr(const void *a, const void *b)
{
    uintptr_t x = ((const sym_t *)a)->addr, y = ((const sym_t *)b)->addr;
    return x < y ? -1 : x > y;
}

static void load_symbols(void)
{
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
        if (fd >= 0)
            close(fd);
        return;
    }
    size_t len = (size_t)st.st_size;
    const unsigned char *f = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f == MAP_FAILED)
        return;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)f;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(f + eh->e_shoff);
    bool ok = memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64 &&
              eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) <= len;
    const Elf64_Shdr *symtab = NULL;
    for (int pass = 0; ok && pass < 2 && !symtab; pass++)
        for (unsigned i = 0; i < eh->e_shnum; i++)
            if (sh[i].sh_type == (pass ? SHT_DYNSYM : SHT_SYMTAB) && sh[i].sh_link < eh->e_shnum)
                symtab = &sh[i];
    if (symtab && symtab->sh_offset + symtab->sh_size <= len &&
        sh[symtab->sh_link].sh_offset + sh[symtab->sh_link].sh_size <= len) {
        const Elf64_Sym *s = (const Elf64_Sym *)(f + symtab->sh_offset);
        size_t n = symtab->sh_size / sizeof(*s);
        const char *str = (const char *)(f + sh[symtab->sh_link].sh_offset);
        size_t strsz = sh[symtab->sh_link].sh_size;
        uintptr_t bias = 0;
        dl_iterate_phdr(first_object, &bias);
        table.syms = mica__calloc(n ? n : 1, sizeof(sym_t));
        table.names = mica__malloc(strsz + 1);
        if (table.syms && table.names) {
            memcpy(table.names, str, strsz);
            table.names[strsz] = '\0';
            for (size_t i = 0; i < n; i++)
                if (ELF64_ST_TYPE(s[i].st_info) == STT_FUNC && s[i].st_value && s[i].st_name < strsz)
                    table.syms[table.n++] = (sym_t){bias + s[i].st_value, s[i].st_size, s[i].st_name};
            qsort(table.syms, table.n, sizeof(sym_t), by_addr);
        }
    }
    munmap((void *)f, len);
}

static const char *symbol_of(uintptr_t a)
{
    size_t lo = 0, hi = table.n;
    while (lo < hi) { /* the last symbol at or below a */
        size_t mid = (lo + hi) / 2;
        if (table.syms[mid].addr <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && a < table.syms[lo - 1].addr + (table.syms[lo - 1].size ? table.syms[lo - 1].size : 1))
        return table.names + table.syms[lo - 1].name;
    Dl_info info;
    if (dladdr((void *)a, &info) && info.dli_sname)
        return info.dli_sname;
    return NULL;
}

static int load_job(void *arg)
{
    pthread_once(&table.once, load_symbols);
    return 0;
}

int mica__symbol_handler(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    int res;
    int rc = mica_offload(NULL, mica_http_req_ctx(req), load_job, NULL, &res);
    if (rc != 0)
        return rc;
    if (strcmp(mica_http_req_method(req), "POST") != 0)
        return mica_http_resp_text(resp, 200, table.n ? "num_symbols: 1\n" : "num_symbols: 0\n");
    size_t len;
    const char *body = mica_http_req_body(req, &len);
    size_t cap = len * 4 + 64, used = 0;
    char *out = mica_http_req_alloc(req, cap);
    if (!out)
        return MICA_ENOMEM;
    for (const char *p = body, *end = body + len; p < end;) {
        char *next;
        unsigned long long a = strtoull(p, &next, 16);
        if (next == p)
            break;
        const char *name = symbol_of((uintptr_t)a);
        if (name) {
            int n = snprintf(out + used, cap - used, "%#llx %s\n", a, name);
            if (n < 0 || (size_t)n >= cap - used) { /* long names: grow */
                size_t ncap = cap * 2 + (size_t)(n > 0 ? n : 0);
                char *bigger = mica_http_req_alloc(req, ncap);
                if (!bigger)
                    return MICA_ENOMEM;
                memcpy(bigger, out, used);
                out = bigger, cap = ncap;
                continue; /* this address again */
            }
            used += (size_t)n;
        }
        p = next;
        while (p < end && (*p == '+' || *p == ' ' || *p == '\n'))
            p++;
    }
    return mica_http_resp_send(resp, 200, "text/plain; charset=utf-8", out, used);
}
