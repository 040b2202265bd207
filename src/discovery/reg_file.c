/* SPDX-License-Identifier: MIT */
/*
 * The static-file registry ("file:///etc/shop/registry.json"): one JSON
 * file on this machine, the embedded default for `make run`.
 *
 *     {"services": {"user": [{"id": "user-1", "addr": "127.0.0.1:50051",
 *                             "weight": 1, "zone": "a", "metadata": {"v": "2"}}]}}
 *
 * Watching. inotify watches the file's *directory*, not the file: editors
 * and tools replace a file by writing a temporary one and renaming it over
 * (vim, sed -i, our own writes, Kubernetes' ConfigMap volumes, which swap a
 * "..data" symlink), and a watch on the old inode would see none of that.
 * Any event naming the file (or a ".." entry) reloads it after a 20 ms
 * pause that lets a burst of events settle; a stat every 2 s covers
 * filesystems without inotify. Reading and parsing go to the offload pool
 * (file I/O never runs on a worker). A file that is missing or not valid
 * JSON keeps every service's last list (logged, counted): a half-written
 * edit must not empty a service.
 *
 * Writing. register and deregister edit the file in place for this one
 * machine: under an flock on "<file>.lock" they read it, change this
 * instance's entry (by id), write "<file>.tmp.<pid>" and rename it over,
 * so readers never see a partial file. There is no lease: an instance
 * that dies without deregistering stays listed (active health checks are
 * what take it out of clients' picks).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "common/alloc.h"
#include "common/log.h"
#include "discovery/internal.h"
#include "mica/net.h"

#define SETTLE_MS 20
#define POLL_MS 2000

typedef struct fsrc {
    mica_registry_t *reg;
    char *path;      /* "/etc/shop/registry.json" */
    char *dir;       /* "/etc/shop" */
    const char *base; /* "registry.json", in path */
    mica_ctx_t *ctx; /* ends the watcher: cancelled by stop */
    atomic_bool running;
    mica_event_t kick; /* reload now: a new service followed, or we wrote the file */
    struct stat seen;  /* of the file last loaded */
    bool loaded_ok;    /* the last read gave a valid file */
    bool tried;        /* a read was made */
    int fd;            /* inotify, or -1 */
} fsrc_t;

/* ---- reading (offload thread) --------------------------------------------------- */

typedef struct load {
    const char *path;
    json_t *root; /* the parsed file */
    struct stat st;
    int err;
    char why[200]; /* "line N: " and jansson's 160-byte text */
} load_t;

static int load_run(void *arg)
{
    load_t *q = arg;
    if (stat(q->path, &q->st) != 0) {
        q->err = -errno;
        snprintf(q->why, sizeof(q->why), "%s", strerror(errno));
        return 0;
    }
    json_error_t je;
    q->root = json_load_file(q->path, JSON_REJECT_DUPLICATES, &je);
    if (!q->root) {
        q->err = MICA_EINVAL;
        snprintf(q->why, sizeof(q->why), "line %d: %s", je.line, je.text);
    } else if (!json_is_object(q->root) ||
               (json_object_get(q->root, "services") &&
                !json_is_object(json_object_get(q->root, "services")))) {
        q->err = MICA_EINVAL;
        snprintf(q->why, sizeof(q->why), "not {\"services\": {name: [instances]}}");
    }
    return 0;
}

/* The views the registry follows now; their pointers live as long as the registry. */
static mica__svc_t **followed(mica_registry_t *reg, size_t *n)
{
    size_t k = 0, cap = 0;
    mica__svc_t **v = NULL;
    pthread_mutex_lock(&reg->lock);
    mica__list_foreach(it, &reg->svcs)
    {
        mica__svc_t *s = mica__list_entry(it, mica__svc_t, link);
        if (!atomic_load(&s->followed))
            continue;
        if (k == cap) {
            cap = cap ? 2 * cap : 8;
            mica__svc_t **nv = mica__realloc(v, cap * sizeof(*v));
            if (!nv)
                break;
            v = nv;
        }
        v[k++] = s;
    }
    pthread_mutex_unlock(&reg->lock);
    *n = k;
    return v;
}

/* Publishes one service's entries of `root`. */
static void publish_service(mica__svc_t *svc, json_t *root)
{
    json_t *arr = json_object_get(json_object_get(root, "services"), svc->name);
    size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
    mica_instance_t **own = n ? mica__calloc(n, sizeof(*own)) : NULL;
    mica_instance_t *v = n ? mica__calloc(n, sizeof(*v)) : NULL;
    if (n && (!own || !v)) {
        mica__free(own);
        mica__free(v);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if ((own[k] = mica__instance_from_json(json_array_get(arr, i), svc->name)))
            v[k] = *own[k], k++;
    mica__svc_publish(svc, v, k);
    for (size_t i = 0; i < k; i++)
        mica__free(own[i]);
    mica__free(own);
    mica__free(v);
}

/* Reads the file and publishes every followed service, or keeps their lists. */
static void reload(fsrc_t *f, bool only_if_changed)
{
    load_t *q = mica__calloc(1, sizeof(*q));
    if (!q)
        return;
    q->path = f->path;
    int res, rc = mica_offload(NULL, f->ctx, load_run, q, &res);
    if (rc == 0 && only_if_changed && q->err == 0 && f->loaded_ok &&
        q->st.st_ino == f->seen.st_ino && q->st.st_size == f->seen.st_size &&
        q->st.st_mtim.tv_sec == f->seen.st_mtim.tv_sec &&
        q->st.st_mtim.tv_nsec == f->seen.st_mtim.tv_nsec) {
        json_decref(q->root);
        mica__free(q);
        return;
    }
    size_t n;
    mica__svc_t **svcs = rc == 0 ? followed(f->reg, &n) : NULL;
    if (rc != 0) {
        /* the offload queue is full, or we are stopping: try again later */
    } else if (q->err) {
        if (f->loaded_ok || !f->tried)
            mica__log_warn("file registry: cannot use the file: keeping the lists last read",
                           "path", f->path, "error", q->why);
        f->loaded_ok = false;
        mica__registry_reachable(f->reg, false, q->err);
        for (size_t i = 0; i < n; i++)
            mica__svc_unreachable(svcs[i], q->err);
    } else {
        f->seen = q->st;
        f->loaded_ok = true;
        mica__registry_reachable(f->reg, true, 0);
        for (size_t i = 0; i < n; i++)
            publish_service(svcs[i], q->root);
    }
    f->tried = true;
    mica__free(svcs);
    json_decref(q->root);
    mica__free(q);
}

/* Whether an inotify batch names our file (or a ConfigMap "..data" swap). */
static bool relevant(fsrc_t *f, const char *buf, ssize_t len)
{
    for (const char *p = buf; p < buf + len;) {
        const struct inotify_event *ev = (const struct inotify_event *)p;
        if (ev->mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF))
            return true;
        if (ev->len && (strcmp(ev->name, f->base) == 0 || strncmp(ev->name, "..", 2) == 0))
            return true;
        p += sizeof(*ev) + ev->len;
    }
    return false;
}

/* Waits on the inotify fd and kicks the watcher when the file may have changed. */
static void notifier(void *arg)
{
    fsrc_t *f = arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    while (mica_net_wait(f->fd, MICA_NET_READABLE, f->ctx, MICA_NO_DEADLINE) == 0) {
        bool hit = false;
        ssize_t n;
        while ((n = read(f->fd, buf, sizeof(buf))) > 0)
            hit |= relevant(f, buf, n);
        if (hit)
            mica_event_set(&f->kick);
    }
    mica_net_close(f->fd);
    f->fd = -1;
}

/* Reloads on kicks (inotify, our writes, new services) and, as a safety net, on a poll. */
static void watcher(void *arg)
{
    fsrc_t *f = arg;
    f->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (f->fd >= 0 &&
        inotify_add_watch(f->fd, f->dir,
                          IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |
                              IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) < 0) {
        close(f->fd);
        f->fd = -1;
    }
    if (f->fd < 0 || mica_go(notifier, f) != 0) {
        mica__log_warn("file registry: no inotify: polling every 2 s", "path", f->path);
        if (f->fd >= 0)
            close(f->fd);
        f->fd = -1;
    }
    mica_event_reset(&f->kick);
    reload(f, false);
    int64_t next_poll = mica_now_ms() + POLL_MS;
    for (;;) {
        int rc = mica_event_wait(&f->kick, f->ctx, next_poll);
        if (rc == MICA_ECANCELED || mica_ctx_err(f->ctx))
            break;
        if (rc == 0) {
            if (mica_ctx_sleep(f->ctx, SETTLE_MS) != 0) /* let a burst of events settle */
                break;
            mica_event_reset(&f->kick); /* what comes after this reset reloads again */
            reload(f, false);
        } else {
            reload(f, true);
            next_poll = mica_now_ms() + POLL_MS;
        }
    }
    atomic_store(&f->running, false);
}

/* ---- writing (offload thread) ---------------------------------------------------- */

typedef struct edit {
    const char *path;
    mica__rinst_t **add; /* entries to put (replacing the same id) */
    size_t nadd;
    mica__rinst_t **del; /* entries to remove */
    size_t ndel;
    char why[200]; /* "line N: " and jansson's 160-byte text */
} edit_t;

static int remove_id(json_t *arr, const char *id)
{
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const char *x = json_string_value(json_object_get(json_array_get(arr, i), "id"));
        const char *a = json_string_value(json_object_get(json_array_get(arr, i), "addr"));
        if ((x && strcmp(x, id) == 0) || (!x && a && strcmp(a, id) == 0)) {
            json_array_remove(arr, i);
            return 1;
        }
    }
    return 0;
}

/* Read, change, write aside, rename over: under an flock on "<path>.lock". */
static int edit_run(void *arg)
{
    edit_t *e = arg;
    char *lock = mica__aprintf("%s.lock", e->path);
    char *tmp = mica__aprintf("%s.tmp.%d", e->path, (int)getpid());
    int lfd = lock ? open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644) : -1;
    int rc = 0;
    if (!lock || !tmp) {
        rc = MICA_ENOMEM;
    } else if (lfd < 0 || flock(lfd, LOCK_EX) != 0) {
        rc = -errno;
        snprintf(e->why, sizeof(e->why), "lock %s: %s", lock, strerror(errno));
    }
    json_t *root = NULL;
    if (rc == 0) {
        json_error_t je;
        root = json_load_file(e->path, JSON_REJECT_DUPLICATES, &je);
        if (!root && access(e->path, F_OK) == 0) {
            rc = MICA_EINVAL; /* never overwrite a file we cannot read */
            snprintf(e->why, sizeof(e->why), "line %d: %s", je.line, je.text);
        } else if (!root) {
            root = json_object();
        }
    }
    json_t *svcs = root ? json_object_get(root, "services") : NULL;
    if (rc == 0 && root && !svcs) {
        svcs = json_object();
        json_object_set_new(root, "services", svcs);
    }
    if (rc == 0 && (!json_is_object(root) || !json_is_object(svcs))) {
        rc = MICA_EINVAL;
        snprintf(e->why, sizeof(e->why), "not {\"services\": {...}}");
    }
    for (size_t i = 0; rc == 0 && i < e->ndel; i++)
        remove_id(json_object_get(svcs, e->del[i]->i.service), e->del[i]->i.id);
    for (size_t i = 0; rc == 0 && i < e->nadd; i++) {
        const mica_instance_t *in = &e->add[i]->i;
        json_t *arr = json_object_get(svcs, in->service);
        if (!json_is_array(arr)) {
            arr = json_array();
            json_object_set_new(svcs, in->service, arr);
        }
        remove_id(arr, in->id);
        json_t *rec = json_loads(e->add[i]->record, 0, NULL);
        if (!rec || json_array_append_new(arr, rec) != 0)
            rc = MICA_ENOMEM;
    }
    if (rc == 0 && json_dump_file(root, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
        rc = MICA_EIO;
        snprintf(e->why, sizeof(e->why), "cannot write %s", tmp);
    }
    if (rc == 0 && rename(tmp, e->path) != 0) {
        rc = -errno;
        snprintf(e->why, sizeof(e->why), "rename: %s", strerror(errno));
        unlink(tmp);
    }
    json_decref(root);
    if (lfd >= 0)
        close(lfd); /* drops the flock */
    mica__free(lock);
    mica__free(tmp);
    return rc;
}

static int edit(fsrc_t *f, mica_ctx_t *ctx, mica__rinst_t **add, size_t nadd, mica__rinst_t **del,
                size_t ndel)
{
    edit_t *e = mica__calloc(1, sizeof(*e));
    if (!e)
        return MICA_ENOMEM;
    *e = (edit_t){.path = f->path, .add = add, .nadd = nadd, .del = del, .ndel = ndel};
    int res = 0, rc = mica_offload(NULL, ctx, edit_run, e, &res);
    if (rc == 0 && (rc = res) != 0)
        mica__log_error("file registry: cannot update the file", "path", f->path, "error",
                        e->why[0] ? e->why : mica_strerror(rc));
    mica__free(e);
    if (rc == 0)
        mica_event_set(&f->kick);
    else
        MICA__COUNT(f->reg, errors);
    return rc;
}

/* ---- the backend --------------------------------------------------------------------- */

static int file_put(void *state, mica_ctx_t *ctx, mica__rinst_t *ri)
{
    fsrc_t *f = state;
    int rc = edit(f, ctx, &ri, 1, NULL, 0);
    if (rc == 0) {
        atomic_store(&ri->written, 1);
        mica__rinst_written(f->reg, ri);
    }
    return rc;
}

static int file_del(void *state, mica_ctx_t *ctx, mica__rinst_t *ri)
{
    return edit(state, ctx, NULL, 0, &ri, 1);
}

static int file_del_all(void *state, mica_ctx_t *ctx)
{
    fsrc_t *f = state;
    size_t n;
    mica__rinst_t **v = mica__registry_insts(f->reg, &n);
    int rc = n ? edit(f, ctx, NULL, 0, v, n) : 0;
    for (size_t i = 0; i < n; i++)
        mica__rinst_unref(v[i]);
    mica__free(v);
    return rc;
}

static int file_follow(void *state, mica__svc_t *svc)
{
    fsrc_t *f = state;
    if (atomic_load(&f->reg->stopped))
        return MICA_ECANCELED;
    if (!atomic_exchange(&f->running, true)) {
        int rc = mica_go(watcher, f);
        if (rc != 0) {
            atomic_store(&f->running, false);
            return rc;
        }
    }
    mica_event_set(&f->kick); /* publish the new service from the file */
    return 0;
}

static void file_stop(void *state)
{
    fsrc_t *f = state;
    mica_ctx_cancel(f->ctx);
}

static void file_close(void *state)
{
    fsrc_t *f = state;
    mica_ctx_free(f->ctx);
    mica__free(f->path);
    mica__free(f->dir);
    mica__free(f);
}

static int file_open(mica_registry_t *reg, const char *rest, void **state)
{
    const char *slash = strrchr(rest, '/');
    if (rest[0] != '/' || !slash || !slash[1]) {
        mica__log_error("file registry: the URL is file:///<absolute path>", "path", rest);
        return MICA_EINVAL;
    }
    fsrc_t *f = mica__calloc(1, sizeof(*f));
    if (!f)
        return MICA_ENOMEM;
    f->reg = reg;
    f->fd = -1;
    f->path = mica__strdup(rest);
    f->dir = slash == rest ? mica__strdup("/") : mica__strndup(rest, (size_t)(slash - rest));
    if (!f->path || !f->dir || mica_ctx_with_cancel(NULL, &f->ctx) != 0) {
        file_close(f);
        return MICA_ENOMEM;
    }
    f->base = f->path + (slash - rest) + 1;
    *state = f;
    return 0;
}

const mica__registry_ops_t mica__registry_file = {
    .scheme = "file",
    .open = file_open,
    .close = file_close,
    .stop = file_stop,
    .put = file_put,
    .del = file_del,
    .del_all = file_del_all,
    .follow = file_follow,
};
