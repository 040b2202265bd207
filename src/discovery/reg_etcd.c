/* SPDX-License-Identifier: MIT */
/*
 * The etcd v3 registry ("etcd://127.0.0.1:2379,10.0.0.2:2379/prefix"),
 * spoken with mica's own gRPC client (etcd.proto: our subset of etcd's API).
 *
 * Keys. Instance `id` of service `s` lives at "<prefix>/<s>/<id>", its value
 * the instance as JSON, attached to this process's lease. The key is the
 * instance's own, so writing it again -- after a restart, a lease loss, an
 * outage -- replaces it: registrations never pile up (go-zero's keys end
 * in a lease id, and go-zero #5260 found 20,000 keys of one service).
 *
 * The session: one coroutine per registry owns the lease. It grants one
 * (ttl_s), writes every instance not yet written under it, and sends a
 * keep-alive every ttl/3 on a LeaseKeepAlive stream (a reader coroutine
 * takes the answers, as clientv3's does). It keeps its own idea of the
 * lease's deadline: the send time of the last answered keep-alive plus the
 * TTL that answer gave. When etcd answers TTL <= 0 (the lease is gone:
 * etcd lost its data, or the lease expired while we could not reach it), a
 * Put says "lease not found", or our deadline passes while etcd cannot be
 * reached, the lease is *lost*: counted, logged, and never used again -- a
 * new one is granted and every instance written again. An expired lease
 * is never revived (rpcx #420 kept writing with an expired lease and got
 * "requested lease not found" until restarted; go-zero #1926 and #4201:
 * instances not back after an outage). Every failure is retried after
 * 250 ms, doubling to retry_max_ms / 2, forever: there is no "give up
 * after N tries" (Kratos #3883). With the gRPC client's connect back-off
 * capped at retry_max_ms, an instance is written again within about 1.5 s
 * of etcd answering.
 *
 * Watches: one coroutine per followed service. It lists the service's
 * prefix (Range), publishes, then watches from the list's revision + 1,
 * so a change between the two is not missed (go-zero #227). A watch
 * cancelled by compaction, or a stream that breaks, lists again and watches
 * from there: with the whole list re-read nothing is lost, whatever
 * happened meanwhile (even an etcd whose data was wiped, whose revisions
 * start again from 1). After a broken stream, instances missing from the
 * re-list are kept for relist_grace_ms, for them to re-register: an etcd
 * that restarted empty must not empty every client. A ticker sends a
 * progress request every 3 s on an idle watch; a stream silent for longer
 * than two of those is taken as dead (a network partition sends no RST).
 * While etcd cannot be reached, the services keep their lists (static
 * stability), logged once and counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "discovery/internal.h"
#include "etcd.pb-c.h"
#include "mica/grpc.h"
#include "mica/net.h"

#define PROBE_MS 3000
#define RETRY_FIRST_MS 250

typedef struct etcd {
    mica_registry_t *reg;
    mica_grpc_client_t *gc;
    char *prefix;    /* "/mica": no trailing slash */
    char *target;    /* the gRPC client's target, for logs */
    mica_ctx_t *ctx; /* every coroutine of ours ends with it (stop) */
    int retry_max_ms;

    /* the session */
    atomic_bool session_started;
    _Atomic int64_t lease;     /* 0: none */
    int64_t lease_ttl_s;       /* as granted */
    int64_t lease_deadline_ms; /* our estimate of its expiry (session only) */
    mica_event_t wake;         /* something to write: register, or shutdown */
    mica_event_t progress;     /* a round of the session ended */
    mica_mutex_t *mu;          /* one writer at a time: a round, a deregistration */
    /* the keep-alive stream: the session sends, ka_reader receives (same worker) */
    mica_grpc_stream_t *ka;
    mica_ctx_t *ka_ctx;
    bool ka_live;
    uint64_t ka_seq; /* answers received */
    int64_t ka_ttl;  /* the last answer's TTL */
    mica_event_t ka_ev;
} etcd_t;

_Atomic int mica__etcd_watch_delay_ms;
_Atomic(mica_registry_t *) mica__etcd_paused;

static const ProtobufCServiceDescriptor *kv = &etcdserverpb__kv__descriptor;
static const ProtobufCServiceDescriptor *lease_svc = &etcdserverpb__lease__descriptor;
static const ProtobufCServiceDescriptor *watch_svc = &etcdserverpb__watch__descriptor;

static ProtobufCBinaryData bin(const char *s)
{
    return (ProtobufCBinaryData){.len = strlen(s), .data = (uint8_t *)s};
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* A unary call bounded by `ctx` (NULL: ours) and the call timeout. 0 or a MICA_E* code. */
static int call(etcd_t *e, mica_ctx_t *ctx, const ProtobufCServiceDescriptor *svc,
                const char *method, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
    mica_ctx_t *c;
    *resp = NULL;
    if (mica_ctx_with_timeout(ctx ? ctx : e->ctx, e->reg->o.call_timeout_ms, &c) != 0)
        return MICA_ENOMEM;
    mica_grpc_result_t res;
    int code = mica_grpc_unary(e->gc, c, svc, method, NULL, req, resp, &res);
    mica_ctx_free(c);
    if (code != MICA_GRPC_OK && mica_log_enabled(MICA_LOG_DEBUG))
        mica__log_debug("etcd registry: call failed", "method", method, "code",
                        mica_grpc_code_name(code), "message", res.message);
    return code == MICA_GRPC_OK ? 0 : mica_err_from_grpc(code);
}

static char *key_of(etcd_t *e, const mica_instance_t *i)
{
    return mica__aprintf("%s/%s/%s", e->prefix, i->service, i->id);
}

/* ---- the session: lease, writes, keep-alives ----------------------------------------- */

static void ka_reset(etcd_t *e)
{
    if (e->ka_ctx)
        mica_ctx_cancel(e->ka_ctx); /* the reader sees its stream end and cleans up */
}

static void lease_lost(etcd_t *e, const char *why)
{
    int64_t id = atomic_exchange(&e->lease, 0);
    if (!id)
        return;
    ka_reset(e);
    MICA__COUNT(e->reg, lease_losses);
    char hex[24];
    snprintf(hex, sizeof(hex), "%llx", (unsigned long long)id);
    mica__log_warn("etcd registry: lease lost: registering again under a new lease", "lease", hex,
                   "reason", why, "registry", e->reg->url);
}

static int grant(etcd_t *e)
{
    Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    req.ttl = e->reg->o.ttl_s;
    ProtobufCMessage *out;
    int64_t t0 = mica_now_ms();
    int rc = call(e, NULL, lease_svc, "LeaseGrant", &req.base, &out);
    if (rc != 0)
        return rc;
    Etcdserverpb__LeaseGrantResponse *r = (Etcdserverpb__LeaseGrantResponse *)out;
    if (r->id == 0 || r->ttl <= 0 || (r->error && *r->error)) {
        mica__log_warn("etcd registry: lease refused", "error", r->error);
        protobuf_c_message_free_unpacked(out, NULL);
        return MICA_EUNAVAILABLE;
    }
    ka_reset(e); /* a stream of an older lease is of no use */
    e->lease_ttl_s = r->ttl;
    e->lease_deadline_ms = t0 + r->ttl * 1000;
    atomic_store(&e->lease, r->id);
    MICA__COUNT(e->reg, lease_grants);
    char hex[24];
    snprintf(hex, sizeof(hex), "%llx", (unsigned long long)r->id);
    mica_log_fields(MICA_LOG_INFO, "etcd registry: lease granted",
                    (mica_log_field_t[]){MICA_LOG_STR("lease", hex), MICA_LOG_INT("ttl_s", r->ttl),
                                         MICA_LOG_STR("registry", e->reg->url)},
                    3);
    protobuf_c_message_free_unpacked(out, NULL);
    return 0;
}

/* Writes every kept instance not yet written under the current lease (holding mu). */
static int write_pending(etcd_t *e)
{
    int64_t lease = atomic_load(&e->lease);
    size_t n;
    mica__rinst_t **v = mica__registry_insts(e->reg, &n);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        mica__rinst_t *ri = v[i];
        if (atomic_load(&ri->removed) || atomic_load(&ri->written) == lease ||
            atomic_load(&e->reg->closing))
            continue;
        char *key = key_of(e, &ri->i);
        if (!key) {
            rc = MICA_ENOMEM;
            break;
        }
        Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
        req.key = bin(key);
        req.value = bin(ri->record);
        req.lease = lease;
        ProtobufCMessage *out;
        rc = call(e, NULL, kv, "Put", &req.base, &out);
        protobuf_c_message_free_unpacked(out, NULL);
        mica__free(key);
        if (rc == 0) {
            atomic_store(&ri->written, lease);
            mica__rinst_written(e->reg, ri);
        }
    }
    for (size_t i = 0; i < n; i++)
        mica__rinst_unref(v[i]);
    mica__free(v);
    return rc;
}

/* Receives keep-alive answers until the stream ends; owns the stream's end. */
static void ka_reader(void *arg)
{
    etcd_t *e = arg;
    mica_grpc_stream_t *st = e->ka;
    mica_ctx_t *ctx = e->ka_ctx;
    ProtobufCMessage *m;
    while (mica_grpc_stream_recv(st, &m) == 0) {
        Etcdserverpb__LeaseKeepAliveResponse *r = (Etcdserverpb__LeaseKeepAliveResponse *)m;
        if (r->id == atomic_load(&e->lease)) {
            e->ka_ttl = r->ttl;
            e->ka_seq++;
            mica_event_set(&e->ka_ev);
        }
        protobuf_c_message_free_unpacked(m, NULL);
    }
    if (e->ka == st) {
        e->ka = NULL;
        e->ka_ctx = NULL;
        e->ka_live = false;
        mica_event_set(&e->ka_ev);
    }
    mica_ctx_cancel(ctx);
    mica_grpc_stream_finish(st, NULL);
    mica_ctx_free(ctx);
}

/*
 * One keep-alive: send, wait for the answer (bounded by the call timeout
 * and the lease's deadline). Returns 0 (deadline moved), MICA_ENOTFOUND
 * (etcd says the lease is gone) or an error (the stream is reset).
 */
static int keepalive(etcd_t *e)
{
    int64_t lease = atomic_load(&e->lease);
    int rc;
    if (!e->ka_live) {
        mica_ctx_t *c;
        if (mica_ctx_with_cancel(e->ctx, &c) != 0)
            return MICA_ENOMEM;
        if ((rc = mica_grpc_stream_open(e->gc, c, lease_svc, "LeaseKeepAlive", NULL, &e->ka)) !=
            0) {
            mica_ctx_free(c);
            return rc;
        }
        e->ka_ctx = c;
        e->ka_live = true;
        if ((rc = mica_go(ka_reader, e)) != 0) {
            mica_grpc_stream_finish(e->ka, NULL);
            mica_ctx_free(c);
            e->ka = NULL;
            e->ka_ctx = NULL;
            e->ka_live = false;
            return rc;
        }
    }
    uint64_t seq = e->ka_seq;
    int64_t t0 = mica_now_ms();
    mica_event_reset(&e->ka_ev);
    Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    req.id = lease;
    if ((rc = mica_grpc_stream_send(e->ka, &req.base)) != 0) {
        ka_reset(e);
        return rc == MICA_ECLOSED ? MICA_EUNAVAILABLE : rc;
    }
    int64_t deadline = min64(t0 + e->reg->o.call_timeout_ms, e->lease_deadline_ms);
    while (e->ka_seq == seq && e->ka_live) {
        if ((rc = mica_event_wait(&e->ka_ev, e->ctx, deadline)) != 0) {
            ka_reset(e);
            return rc;
        }
        mica_event_reset(&e->ka_ev);
    }
    if (e->ka_seq == seq)
        return MICA_EUNAVAILABLE; /* the stream ended first */
    if (e->ka_ttl <= 0)
        return MICA_ENOTFOUND;
    e->lease_deadline_ms = t0 + e->ka_ttl * 1000;
    return 0;
}

static void session(void *arg)
{
    etcd_t *e = arg;
    mica_registry_t *reg = e->reg;
    int64_t backoff = 0, ka_due = 0;
    while (!mica_ctx_err(e->ctx) && !atomic_load(&reg->closing)) {
        if (atomic_load(&mica__etcd_paused) == reg) { /* tests: as if this process hung */
            if (mica_ctx_sleep(e->ctx, 20) != 0)
                break;
            continue;
        }
        mica_event_reset(&e->wake);
        int rc = 0;
        bool granted = false;
        if (atomic_load(&e->lease) && mica_now_ms() >= e->lease_deadline_ms)
            lease_lost(e, "expired while etcd could not be reached");
        if (!atomic_load(&e->lease)) {
            if ((rc = grant(e)) == 0) {
                granted = true;
                ka_due = mica_now_ms() + e->lease_ttl_s * 1000 / 3;
            }
        }
        if (rc == 0 && (rc = mica_mutex_lock(e->mu, e->ctx)) == 0) {
            rc = write_pending(e);
            mica_mutex_unlock(e->mu);
        }
        if (rc == 0 && mica_now_ms() >= ka_due && (rc = keepalive(e)) == 0)
            ka_due = mica_now_ms() + e->lease_ttl_s * 1000 / 3;
        if (rc == MICA_ENOTFOUND) { /* etcd does not know the lease (any more) */
            lease_lost(e, "etcd does not know it");
            if (!granted) { /* at once; a lease refused as soon as granted backs off below */
                mica_event_set(&e->progress);
                continue;
            }
        }
        mica_event_set(&e->progress);
        if (rc == MICA_ECANCELED && mica_ctx_err(e->ctx))
            break;
        if (rc != 0) {
            mica__registry_reachable(reg, false, rc);
            backoff = backoff ? min64(backoff * 2, e->retry_max_ms / 2) : RETRY_FIRST_MS;
            if (mica_ctx_sleep(e->ctx, backoff) != 0)
                break;
            continue;
        }
        backoff = 0;
        mica__registry_reachable(reg, true, 0);
        /* Until the next keep-alive is due, or an instance wants writing. */
        int wrc = mica_event_wait(&e->wake, e->ctx, ka_due);
        if (wrc == MICA_ECANCELED)
            break;
    }
    ka_reset(e);
    atomic_store(&e->session_started, false);
    mica_event_set(&e->progress);
}

static int etcd_put(void *state, mica_ctx_t *ctx, mica__rinst_t *ri)
{
    etcd_t *e = state;
    if (!atomic_exchange(&e->session_started, true)) {
        int rc = mica_go(session, e);
        if (rc != 0) {
            atomic_store(&e->session_started, false);
            return rc;
        }
    }
    mica_event_set(&e->wake);
    for (;;) {
        mica_event_reset(&e->progress);
        int64_t lease = atomic_load(&e->lease);
        if (lease && atomic_load(&ri->written) == lease)
            return 0;
        if (mica_ctx_err(e->ctx))
            return MICA_ECANCELED;
        int rc = mica_event_wait(&e->progress, ctx, MICA_NO_DEADLINE);
        if (rc != 0)
            return rc; /* the session goes on trying */
    }
}

static int delete_key(etcd_t *e, mica_ctx_t *ctx, mica__rinst_t *ri)
{
    char *key = key_of(e, &ri->i);
    if (!key)
        return MICA_ENOMEM;
    Etcdserverpb__DeleteRangeRequest req = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    req.key = bin(key);
    ProtobufCMessage *out;
    int rc = call(e, ctx, kv, "DeleteRange", &req.base, &out);
    protobuf_c_message_free_unpacked(out, NULL);
    mica__free(key);
    return rc;
}

static int etcd_del(void *state, mica_ctx_t *ctx, mica__rinst_t *ri)
{
    etcd_t *e = state;
    int rc = mica_mutex_lock(e->mu, ctx);
    if (rc != 0)
        return rc;
    rc = delete_key(e, ctx, ri);
    mica_mutex_unlock(e->mu);
    if (rc != 0)
        mica__registry_reachable(e->reg, false, rc);
    return rc;
}

static int etcd_del_all(void *state, mica_ctx_t *ctx)
{
    etcd_t *e = state;
    int rc = mica_mutex_lock(e->mu, ctx);
    if (rc != 0)
        return rc;
    size_t n;
    mica__rinst_t **v = mica__registry_insts(e->reg, &n);
    for (size_t i = 0; i < n; i++) {
        int r = delete_key(e, ctx, v[i]);
        rc = rc ? rc : r;
        mica__rinst_unref(v[i]);
    }
    mica__free(v);
    int64_t lease = atomic_exchange(&e->lease, 0);
    if (lease) { /* nothing of ours is left on it: let it go now rather than at its TTL */
        Etcdserverpb__LeaseRevokeRequest req = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
        req.id = lease;
        ProtobufCMessage *out;
        call(e, ctx, lease_svc, "LeaseRevoke", &req.base, &out);
        protobuf_c_message_free_unpacked(out, NULL);
    }
    mica_mutex_unlock(e->mu);
    mica_event_set(&e->wake); /* the session sees `closing` and ends */
    return rc;
}

/* ---- watches ---------------------------------------------------------------------------- */

typedef struct entry {
    char *key;
    mica_instance_t *inst; /* one allocation */
    int64_t held_until;    /* > 0: missing from the last re-list, kept until then */
} entry_t;

typedef struct watch {
    etcd_t *e;
    mica__svc_t *svc;
    char *key, *end; /* "<prefix>/<svc>/" and its range end */
    entry_t *v;
    size_t n, cap;
    int64_t rev;
    /* the current watch stream */
    mica_grpc_stream_t *st;
    uint64_t stream_gen; /* which stream the ticker serves */
    bool live;
    bool ticking;        /* the ticker runs: the watcher frees w only after it ended */
    int64_t heard_ms;
    mica_ctx_t *sctx;
    mica_event_t tick; /* wakes the ticker (stream end) */
} watch_t;

static void entry_free(entry_t *x)
{
    mica__free(x->key);
    mica__free(x->inst);
}

static ssize_t find(watch_t *w, const uint8_t *key, size_t len)
{
    for (size_t i = 0; i < w->n; i++)
        if (strlen(w->v[i].key) == len && memcmp(w->v[i].key, key, len) == 0)
            return (ssize_t)i;
    return -1;
}

static void drop(watch_t *w, size_t i)
{
    entry_free(&w->v[i]);
    w->v[i] = w->v[--w->n];
}

/* Sets key -> the instance its value describes (an invalid value removes it). */
static void set(watch_t *w, const Etcdserverpb__KeyValue *kvp)
{
    ssize_t i = find(w, kvp->key.data, kvp->key.len);
    mica_instance_t *inst =
        mica__instance_parse((const char *)kvp->value.data, kvp->value.len, w->svc->name);
    if (!inst) {
        if (i >= 0)
            drop(w, (size_t)i);
        return;
    }
    if (i >= 0) {
        mica__free(w->v[i].inst);
        w->v[i].inst = inst;
        w->v[i].held_until = 0;
        return;
    }
    char *key = mica__strndup((const char *)kvp->key.data, kvp->key.len);
    if (key && w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        entry_t *nv = mica__realloc(w->v, cap * sizeof(*nv));
        if (nv) {
            w->v = nv;
            w->cap = cap;
        }
    }
    if (!key || w->n == w->cap) {
        mica__free(key);
        mica__free(inst);
        return; /* no memory: this key is missed until the next re-list */
    }
    w->v[w->n++] = (entry_t){.key = key, .inst = inst};
}

/* Publishes the entries, dropping held ones whose time ran out. */
static void publish(watch_t *w)
{
    int64_t now = mica_now_ms();
    for (size_t i = 0; i < w->n;)
        if (w->v[i].held_until && w->v[i].held_until <= now)
            drop(w, i);
        else
            i++;
    mica_instance_t *v = mica__calloc(w->n ? w->n : 1, sizeof(*v));
    if (!v)
        return;
    for (size_t i = 0; i < w->n; i++)
        v[i] = *w->v[i].inst;
    mica__svc_publish(w->svc, v, w->n);
    mica__free(v);
}

static int64_t next_hold(watch_t *w)
{
    int64_t t = INT64_MAX;
    for (size_t i = 0; i < w->n; i++)
        if (w->v[i].held_until && w->v[i].held_until < t)
            t = w->v[i].held_until;
    return t;
}

/* Lists the service: replaces the entries (keeping missing ones for `grace_ms` when > 0). */
static int list(watch_t *w, int64_t grace_ms)
{
    etcd_t *e = w->e;
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key = bin(w->key);
    req.range_end = bin(w->end);
    ProtobufCMessage *out;
    int rc = call(e, NULL, kv, "Range", &req.base, &out);
    if (rc != 0)
        return rc;
    Etcdserverpb__RangeResponse *r = (Etcdserverpb__RangeResponse *)out;
    /* mark everything, then unmark what the list has */
    int64_t hold = grace_ms > 0 ? mica_now_ms() + grace_ms : 1;
    for (size_t i = 0; i < w->n; i++)
        if (!w->v[i].held_until)
            w->v[i].held_until = -1;
    for (size_t i = 0; i < r->n_kvs; i++)
        set(w, r->kvs[i]); /* clears the mark of what it finds */
    size_t held = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->v[i].held_until == -1) {
            w->v[i].held_until = hold;
            held++;
        }
    if (held && grace_ms > 0)
        mica_log_fields(MICA_LOG_INFO,
                        "etcd registry: instances missing after the outage are kept a while",
                        (mica_log_field_t[]){MICA_LOG_STR("svc", w->svc->name),
                                             MICA_LOG_INT("instances", held),
                                             MICA_LOG_INT("grace_ms", grace_ms)},
                        3);
    w->rev = r->header ? r->header->revision : 0;
    protobuf_c_message_free_unpacked(out, NULL);
    publish(w);
    return 0;
}

/* Keeps an idle watch honest: progress requests, and a deadline for silence. */
static void ticker(void *arg)
{
    watch_t *w = arg;
    mica_grpc_stream_t *st = w->st;
    uint64_t gen = w->stream_gen;
    while (w->live && w->stream_gen == gen) {
        int64_t due = min64(mica_now_ms() + PROBE_MS, next_hold(w));
        mica_event_reset(&w->tick);
        int rc = mica_event_wait(&w->tick, w->e->ctx, due);
        if (rc == MICA_ECANCELED || !w->live || w->stream_gen != gen)
            break;
        if (next_hold(w) <= mica_now_ms())
            publish(w);
        int64_t silent = mica_now_ms() - w->heard_ms;
        if (silent > 2 * PROBE_MS + w->e->reg->o.call_timeout_ms) {
            mica__log_warn("etcd registry: watch silent: restarting it", "svc", w->svc->name);
            mica_ctx_cancel(w->sctx);
            break;
        }
        if (silent >= PROBE_MS) {
            Etcdserverpb__WatchProgressRequest pr = ETCDSERVERPB__WATCH_PROGRESS_REQUEST__INIT;
            Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
            req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST;
            req.progress_request = &pr;
            mica_grpc_stream_send(st, &req.base);
        }
    }
    w->ticking = false;
}

/*
 * Watches from w->rev + 1 until the stream ends. Returns 1 when the watch
 * was cancelled because its revision was compacted, else 0.
 */
static int watch_stream(watch_t *w)
{
    etcd_t *e = w->e;
    if (mica_ctx_with_cancel(e->ctx, &w->sctx) != 0)
        return 0;
    int compacted = 0;
    if (mica_grpc_stream_open(e->gc, w->sctx, watch_svc, "Watch", NULL, &w->st) != 0) {
        mica_ctx_free(w->sctx);
        w->sctx = NULL;
        return 0;
    }
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    cr.key = bin(w->key);
    cr.range_end = bin(w->end);
    cr.start_revision = w->rev + 1;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    req.create_request = &cr;
    w->live = true;
    w->stream_gen++;
    w->heard_ms = mica_now_ms();
    if (mica_grpc_stream_send(w->st, &req.base) == 0 && mica_go(ticker, w) == 0) {
        w->ticking = true;
        ProtobufCMessage *m;
        while (mica_grpc_stream_recv(w->st, &m) == 0) {
            Etcdserverpb__WatchResponse *r = (Etcdserverpb__WatchResponse *)m;
            w->heard_ms = mica_now_ms();
            if (r->canceled) {
                if (r->compact_revision > 0) {
                    compacted = 1;
                    MICA__COUNT(e->reg, compactions);
                    char rev[24];
                    snprintf(rev, sizeof(rev), "%lld", (long long)r->compact_revision);
                    mica__log_warn("etcd registry: watch revision compacted: listing again",
                                   "svc", w->svc->name, "compact_revision", rev);
                }
                protobuf_c_message_free_unpacked(m, NULL);
                break;
            }
            for (size_t i = 0; i < r->n_events; i++) {
                Etcdserverpb__Event *ev = r->events[i];
                if (!ev->kv)
                    continue;
                if (ev->type == ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE) {
                    ssize_t k = find(w, ev->kv->key.data, ev->kv->key.len);
                    if (k >= 0)
                        drop(w, (size_t)k);
                } else {
                    set(w, ev->kv);
                }
                if (ev->kv->mod_revision > w->rev)
                    w->rev = ev->kv->mod_revision;
            }
            if (r->header && r->header->revision > w->rev && r->n_events == 0 && !r->created)
                w->rev = r->header->revision; /* a progress notification */
            if (r->n_events)
                publish(w);
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    w->live = false;
    mica_event_set(&w->tick);
    while (w->ticking) /* not a wait: it works past the drain deadline too */
        mica_yield();
    mica_grpc_result_t res;
    mica_grpc_stream_finish(w->st, &res);
    w->st = NULL;
    mica_ctx_free(w->sctx);
    w->sctx = NULL;
    return compacted;
}

static void watcher(void *arg)
{
    watch_t *w = arg;
    etcd_t *e = w->e;
    int64_t backoff = 0;
    bool first = true, after_outage = false;
    while (!mica_ctx_err(e->ctx)) {
        int rc = list(w, after_outage && !first ? e->reg->o.relist_grace_ms : 0);
        if (rc != 0) {
            if (mica_ctx_err(e->ctx))
                break;
            mica__registry_reachable(e->reg, false, rc);
            mica__svc_unreachable(w->svc, rc);
            after_outage = true;
            backoff = backoff ? min64(backoff * 2, e->retry_max_ms / 2) : RETRY_FIRST_MS;
            if (mica_ctx_sleep(e->ctx, backoff) != 0)
                break;
            continue;
        }
        mica__registry_reachable(e->reg, true, 0);
        first = false;
        after_outage = false;
        backoff = 0;
        int delay = atomic_load(&mica__etcd_watch_delay_ms); /* tests: a window to compact in */
        if (delay && mica_ctx_sleep(e->ctx, delay) != 0)
            break;
        int compacted = watch_stream(w);
        if (mica_ctx_err(e->ctx))
            break;
        MICA__COUNT(e->reg, watch_restarts);
        after_outage = !compacted; /* a broken stream may hide an outage */
        mica__log_info("etcd registry: watch ended: listing again", "svc", w->svc->name,
                       "reason", compacted ? "compacted" : "stream closed");
    }
    for (size_t i = 0; i < w->n; i++)
        entry_free(&w->v[i]);
    mica__free(w->v);
    mica__free(w->key);
    mica__free(w->end);
    mica__free(w);
}

static int etcd_follow(void *state, mica__svc_t *svc)
{
    etcd_t *e = state;
    if (mica_ctx_err(e->ctx))
        return MICA_ECANCELED;
    watch_t *w = mica__calloc(1, sizeof(*w));
    if (!w)
        return MICA_ENOMEM;
    w->e = e;
    w->svc = svc;
    w->key = mica__aprintf("%s/%s/", e->prefix, svc->name);
    w->end = w->key ? mica__strdup(w->key) : NULL;
    int rc = w->end ? 0 : MICA_ENOMEM;
    if (rc == 0) {
        w->end[strlen(w->end) - 1]++; /* '/' + 1: the end of the prefix's range */
        rc = mica_go(watcher, w);
    }
    if (rc != 0) {
        mica__free(w->key);
        mica__free(w->end);
        mica__free(w);
    }
    return rc;
}

/* ---- the backend --------------------------------------------------------------------- */

static void etcd_stop(void *state)
{
    etcd_t *e = state;
    mica_ctx_cancel(e->ctx);
    mica_event_set(&e->wake);
}

static void etcd_close(void *state)
{
    etcd_t *e = state;
    mica_grpc_client_free(e->gc);
    mica_mutex_free(e->mu);
    mica_ctx_free(e->ctx);
    mica__free(e->prefix);
    mica__free(e->target);
    mica__free(e);
}

/* "h1:p,h2:p[/prefix]" -> the gRPC client's target and the key prefix. */
static int parse(const char *rest, char **target, char **prefix)
{
    const char *slash = strchr(rest, '/');
    size_t hl = slash ? (size_t)(slash - rest) : strlen(rest);
    char *hosts = mica__strndup(rest, hl);
    if (!hosts)
        return MICA_ENOMEM;
    bool literals = true;
    size_t count = 0;
    for (char *p = hosts, *next; p; p = next) {
        if ((next = strchr(p, ',')))
            *next = '\0';
        struct sockaddr_storage ss;
        socklen_t len;
        literals &= mica_net_parse_addr(p, &ss, &len) == 0 && p[0] != ':';
        count++;
        if (next)
            *next++ = ',';
    }
    int rc = 0;
    if (hl == 0 || (!literals && count > 1)) {
        mica__log_error("etcd registry: the URL is etcd://ip:port[,ip:port...][/prefix] or "
                        "etcd://one.name:port[/prefix]",
                        "url", rest);
        rc = MICA_EINVAL;
    } else {
        *target = mica__aprintf("%s:///%s", literals ? "static" : "dns", hosts);
        const char *pre = slash && slash[1] ? slash : "/mica";
        size_t pl = strlen(pre);
        while (pl > 1 && pre[pl - 1] == '/')
            pl--;
        *prefix = mica__strndup(pre, pl);
        if (!*target || !*prefix)
            rc = MICA_ENOMEM;
    }
    mica__free(hosts);
    return rc;
}

static int etcd_open(mica_registry_t *reg, const char *rest, void **state)
{
    if (!reg->rt)
        return MICA_EINVAL;
    if (reg->o.ttl_s < 2) {
        mica__log_error("etcd registry: ttl_s must be at least 2 (etcd's minimum)", "url",
                        reg->url);
        return MICA_EINVAL;
    }
    etcd_t *e = mica__calloc(1, sizeof(*e));
    if (!e)
        return MICA_ENOMEM;
    e->reg = reg;
    e->retry_max_ms = reg->o.retry_max_ms < 2 * RETRY_FIRST_MS ? 2 * RETRY_FIRST_MS
                                                               : reg->o.retry_max_ms;
    int rc = parse(rest, &e->target, &e->prefix);
    if (rc == 0 && (mica_ctx_with_cancel(NULL, &e->ctx) != 0 || mica_mutex_new(&e->mu) != 0))
        rc = MICA_ENOMEM;
    if (rc == 0) {
        mica_grpc_client_opts_t o = {
            .conns_per_worker = 1,
            .connect_timeout_ms = reg->o.call_timeout_ms < 2000 ? reg->o.call_timeout_ms : 2000,
            .backoff_max_ms = e->retry_max_ms, /* see etcd again soon after it comes back */
        };
        rc = mica_grpc_client_new(&e->gc, reg->rt, e->target, &o);
    }
    if (rc != 0) {
        etcd_close(e);
        return rc;
    }
    *state = e;
    return 0;
}

const mica__registry_ops_t mica__registry_etcd = {
    .scheme = "etcd",
    .open = etcd_open,
    .close = etcd_close,
    .stop = etcd_stop,
    .put = etcd_put,
    .del = etcd_del,
    .del_all = etcd_del_all,
    .follow = etcd_follow,
};
