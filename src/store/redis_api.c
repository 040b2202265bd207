/* SPDX-License-Identifier: MIT */
/*
 * The Redis client's typed layer over mica_redis_cmd(): helpers for the
 * common commands (each maps its reply onto a return code), Lua scripts
 * (EVALSHA, then EVAL once on NOSCRIPT), pub/sub on a dedicated connection,
 * and stream consumer groups with an at-least-once consumer loop.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/net.h"
#include "store/internal.h"

/* ---- typed helpers ------------------------------------------------------------------ */

/* Runs a command and checks the reply's type; *out gets it (caller frees) if non-NULL. */
static int expect(mica_redis_t *r, mica_ctx_t *ctx, int argc, const char *const *argv,
                  const size_t *lens, mica_redis_type_t type, mica_redis_reply_t **out)
{
    mica_redis_reply_t *rep = NULL;
    int rc = mica_redis_cmd(r, ctx, argc, argv, lens, &rep);
    if (rc == 0 && rep->type != type && !(type == MICA_REDIS_STRING && rep->type == MICA_REDIS_NIL)) {
        mica__redis_seterr(r, "%s: unexpected reply type %d", argv[0], (int)rep->type);
        rc = MICA_EPROTO;
    }
    if (rc == 0 && out)
        *out = rep;
    else
        mica_redis_reply_free(rep);
    return rc;
}

static int get_string(mica_redis_t *r, mica_ctx_t *ctx, int argc, const char *const *argv,
                      mica_redis_reply_t **val)
{
    *val = NULL;
    mica_redis_reply_t *rep;
    int rc = expect(r, ctx, argc, argv, NULL, MICA_REDIS_STRING, &rep);
    if (rc != 0)
        return rc;
    if (rep->type == MICA_REDIS_NIL) {
        mica_redis_reply_free(rep);
        return MICA_ENOTFOUND;
    }
    *val = rep;
    return 0;
}

static int get_integer(mica_redis_t *r, mica_ctx_t *ctx, int argc, const char *const *argv,
                       const size_t *lens, int64_t *v)
{
    mica_redis_reply_t *rep;
    int rc = expect(r, ctx, argc, argv, lens, MICA_REDIS_INTEGER, &rep);
    if (rc == 0) {
        if (v)
            *v = rep->integer;
        mica_redis_reply_free(rep);
    }
    return rc;
}

int mica_redis_get(mica_redis_t *r, mica_ctx_t *ctx, const char *key, mica_redis_reply_t **val)
{
    const char *argv[] = {"GET", key};
    return get_string(r, ctx, 2, argv, val);
}

int mica_redis_set(mica_redis_t *r, mica_ctx_t *ctx, const char *key, const void *val, size_t len,
                   int64_t ttl_ms, int flags)
{
    const char *argv[6] = {"SET", key, val};
    size_t lens[6] = {3, strlen(key), len};
    char ttl[24];
    int argc = 3;
    if (ttl_ms < 0 || (flags & MICA_REDIS_NX && flags & MICA_REDIS_XX))
        return MICA_EINVAL;
    if (ttl_ms > 0) {
        bool secs = ttl_ms % 1000 == 0;
        snprintf(ttl, sizeof(ttl), "%lld", (long long)(secs ? ttl_ms / 1000 : ttl_ms));
        argv[argc] = secs ? "EX" : "PX";
        lens[argc++] = 2;
        argv[argc] = ttl;
        lens[argc++] = strlen(ttl);
    }
    if (flags & (MICA_REDIS_NX | MICA_REDIS_XX)) {
        argv[argc] = flags & MICA_REDIS_NX ? "NX" : "XX";
        lens[argc++] = 2;
    }
    mica_redis_reply_t *rep = NULL;
    int rc = mica_redis_cmd(r, ctx, argc, argv, lens, &rep);
    if (rc == 0 && rep->type == MICA_REDIS_NIL) /* the NX/XX condition did not hold */
        rc = flags & MICA_REDIS_NX ? MICA_EEXIST : MICA_ENOTFOUND;
    mica_redis_reply_free(rep);
    return rc;
}

int mica_redis_del(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t *deleted)
{
    const char *argv[] = {"DEL", key};
    return get_integer(r, ctx, 2, argv, NULL, deleted);
}

int mica_redis_incrby(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t by,
                      int64_t *value)
{
    char n[24];
    snprintf(n, sizeof(n), "%lld", (long long)by);
    const char *argv[] = {"INCRBY", key, n};
    return get_integer(r, ctx, 3, argv, NULL, value);
}

int mica_redis_incr(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t *value)
{
    return mica_redis_incrby(r, ctx, key, 1, value);
}

int mica_redis_expire(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t ttl_ms)
{
    char n[24];
    snprintf(n, sizeof(n), "%lld", (long long)ttl_ms);
    const char *argv[] = {"PEXPIRE", key, n};
    int64_t set = 0;
    int rc = get_integer(r, ctx, 3, argv, NULL, &set);
    return rc == 0 && set == 0 ? MICA_ENOTFOUND : rc;
}

int mica_redis_hget(mica_redis_t *r, mica_ctx_t *ctx, const char *key, const char *field,
                    mica_redis_reply_t **val)
{
    const char *argv[] = {"HGET", key, field};
    return get_string(r, ctx, 3, argv, val);
}

int mica_redis_hset(mica_redis_t *r, mica_ctx_t *ctx, const char *key, const char *field,
                    const void *val, size_t len, int64_t *added)
{
    const char *argv[] = {"HSET", key, field, val};
    size_t lens[] = {4, strlen(key), strlen(field), len};
    return get_integer(r, ctx, 4, argv, lens, added);
}

int mica_redis_hgetall(mica_redis_t *r, mica_ctx_t *ctx, const char *key, mica_redis_reply_t **out)
{
    *out = NULL;
    const char *argv[] = {"HGETALL", key};
    return expect(r, ctx, 2, argv, NULL, MICA_REDIS_ARRAY, out);
}

int mica_redis_mget(mica_redis_t *r, mica_ctx_t *ctx, const char *const *keys, size_t n,
                    mica_redis_reply_t **out)
{
    *out = NULL;
    if (n == 0 || n > 1 << 20)
        return MICA_EINVAL;
    const char **argv = mica__malloc((n + 1) * sizeof(*argv));
    if (!argv)
        return MICA_ENOMEM;
    argv[0] = "MGET";
    memcpy(argv + 1, keys, n * sizeof(*keys));
    int rc = expect(r, ctx, (int)n + 1, argv, NULL, MICA_REDIS_ARRAY, out);
    mica__free(argv);
    return rc;
}

int mica_redis_publish(mica_redis_t *r, mica_ctx_t *ctx, const char *channel, const void *msg,
                       size_t len, int64_t *receivers)
{
    const char *argv[] = {"PUBLISH", channel, msg};
    size_t lens[] = {7, strlen(channel), len};
    return get_integer(r, ctx, 3, argv, lens, receivers);
}

/* ---- scripts -------------------------------------------------------------------------- */

struct mica_redis_script {
    char sha[41];
    char *lua;
};

int mica_redis_script_new(mica_redis_script_t **out, const char *lua)
{
    mica_redis_script_t *s = mica__calloc(1, sizeof(*s));
    if (!s || !(s->lua = mica__strdup(lua))) {
        mica__free(s);
        return MICA_ENOMEM;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(lua, strlen(lua), md, &n, EVP_sha1(), NULL) != 1 || n != 20) {
        mica_redis_script_free(s);
        return MICA_ENOMEM;
    }
    for (unsigned i = 0; i < 20; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    *out = s;
    return 0;
}

void mica_redis_script_free(mica_redis_script_t *s)
{
    if (!s)
        return;
    mica__free(s->lua);
    mica__free(s);
}

const char *mica_redis_script_sha(const mica_redis_script_t *s)
{
    return s->sha;
}

int mica_redis_eval(mica_redis_t *r, mica_ctx_t *ctx, const mica_redis_script_t *s, int nkeys,
                    const char *const *keys, int nargs, const char *const *args,
                    mica_redis_reply_t **out)
{
    if (out)
        *out = NULL;
    if (nkeys < 0 || nargs < 0 || nkeys > 1 << 16 || nargs > 1 << 16)
        return MICA_EINVAL;
    int argc = 3 + nkeys + nargs;
    const char *small[16];
    const char **argv = argc <= 16 ? small : mica__malloc((size_t)argc * sizeof(*argv));
    if (!argv)
        return MICA_ENOMEM;
    char nk[16];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[0] = "EVALSHA";
    argv[1] = s->sha;
    argv[2] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    mica_redis_reply_t *rep = NULL;
    int rc = mica_redis_cmd(r, ctx, argc, argv, NULL, &rep);
    if (rc == MICA_EPROTO && rep && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* Not in this server's script cache (new, restarted, or SCRIPT FLUSHed):
         * EVAL runs it and caches it, so the next EVALSHA finds it. */
        mica_redis_reply_free(rep);
        rep = NULL;
        argv[0] = "EVAL";
        argv[1] = s->lua;
        rc = mica_redis_cmd(r, ctx, argc, argv, NULL, &rep);
    }
    if (argv != small)
        mica__free(argv);
    if (out)
        *out = rep;
    else
        mica_redis_reply_free(rep);
    return rc;
}

/* ---- pub/sub ---------------------------------------------------------------------------- */

struct mica_redis_sub {
    mica_redis_t *r;
    mica_redis_conn_t *cn;
    bool patterns;
    size_t n;
    char **channels;
    mica_redis_reply_t *last; /* the message handed out last */
    int failures;
};

/* Opens the connection and subscribes to every channel, waiting for each confirmation. */
static int sub_connect(mica_redis_sub_t *s, mica_ctx_t *ctx)
{
    int rc = mica__redis_conn_open(s->r, ctx, &s->cn);
    if (rc != 0)
        return rc;
    const char **argv = mica__malloc((s->n + 1) * sizeof(*argv));
    if (!argv)
        return MICA_ENOMEM;
    argv[0] = s->patterns ? "PSUBSCRIBE" : "SUBSCRIBE";
    for (size_t i = 0; i < s->n; i++)
        argv[i + 1] = s->channels[i];
    rc = mica__redis_conn_send(s->cn, ctx, (int)s->n + 1, argv, NULL);
    mica__free(argv);
    for (size_t i = 0; rc == 0 && i < s->n; i++) {
        mica_redis_reply_t *rep;
        int64_t deadline = mica_deadline_in(3000);
        if ((rc = mica__redis_conn_recv(s->cn, ctx, deadline, &rep)) != 0)
            break;
        if (rep->type != MICA_REDIS_ARRAY || rep->len < 3 ||
            rep->element[0]->type != MICA_REDIS_STRING) {
            mica__redis_seterr(s->r, "subscribe: %s", rep->type == MICA_REDIS_ERROR ? rep->str
                                                                                  : "bad reply");
            rc = MICA_EPROTO;
        }
        mica_redis_reply_free(rep);
    }
    if (rc != 0) {
        mica__redis_conn_close(s->cn);
        s->cn = NULL;
    }
    return rc;
}

int mica_redis_subscribe(mica_redis_t *r, mica_ctx_t *ctx, const char *const *channels, size_t n,
                         bool patterns, mica_redis_sub_t **out)
{
    if (n == 0 || n > 1 << 16)
        return MICA_EINVAL;
    mica_redis_sub_t *s = mica__calloc(1, sizeof(*s));
    if (!s || !(s->channels = mica__calloc(n, sizeof(char *)))) {
        mica__free(s);
        return MICA_ENOMEM;
    }
    s->r = r;
    s->n = n;
    s->patterns = patterns;
    for (size_t i = 0; i < n; i++)
        if (!(s->channels[i] = mica__strdup(channels[i]))) {
            mica_redis_sub_free(s);
            return MICA_ENOMEM;
        }
    int rc = sub_connect(s, ctx);
    if (rc != 0) {
        mica_redis_sub_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int mica_redis_sub_next(mica_redis_sub_t *s, mica_ctx_t *ctx, mica_redis_msg_t *msg)
{
    mica_redis_reply_free(s->last);
    s->last = NULL;
    if (!s->cn)
        return MICA_ECONNRESET;
    for (;;) {
        mica_redis_reply_t *rep;
        int rc = mica__redis_conn_recv(s->cn, ctx, MICA_NO_DEADLINE, &rep);
        if (rc != 0) {
            if (rc != MICA_ETIMEDOUT && rc != MICA_ECANCELED) {
                mica__redis_seterr(s->r, "subscriber connection: %s", mica_strerror(rc));
                mica__redis_conn_close(s->cn);
                s->cn = NULL;
            } else if (mica_worker_stopping()) {
                mica__redis_conn_close(s->cn);
                s->cn = NULL;
            }
            return rc;
        }
        mica_redis_reply_t **e = rep->element;
        bool pm = rep->type == MICA_REDIS_ARRAY && rep->len == 4 && e[0]->type == MICA_REDIS_STRING &&
                  strcmp(e[0]->str, "pmessage") == 0;
        bool m = rep->type == MICA_REDIS_ARRAY && rep->len == 3 && e[0]->type == MICA_REDIS_STRING &&
                 strcmp(e[0]->str, "message") == 0;
        if (!pm && !m) { /* a confirmation or a pong */
            mica_redis_reply_free(rep);
            continue;
        }
        const mica_redis_reply_t *ch = e[pm ? 2 : 1], *data = e[pm ? 3 : 2];
        *msg = (mica_redis_msg_t){.channel = ch->str, .channel_len = ch->len,
                                  .pattern = pm ? e[1]->str : NULL, .data = data->str,
                                  .len = data->len};
        s->last = rep;
        return 0;
    }
}

int mica_redis_sub_run(mica_redis_sub_t *s, mica_ctx_t *ctx, mica_redis_msg_fn fn, void *arg)
{
    for (;;) {
        int rc = ctx ? mica_ctx_err(ctx) : 0;
        if (rc != 0)
            return rc;
        if (!s->cn) {
            if ((rc = sub_connect(s, ctx)) != 0) {
                s->failures++;
                int64_t delay = mica__redis_backoff_ms(s->r, s->failures);
                char d[24];
                snprintf(d, sizeof(d), "%lld", (long long)delay);
                mica__log_warn("redis: resubscribe failed", "error", mica_err_name(rc),
                               "retry_in_ms", d);
                if ((rc = mica_ctx_sleep(ctx, delay)) != 0)
                    return rc;
                continue;
            }
            if (s->failures)
                mica__log_info("redis: resubscribed", "channels", s->channels[0]);
            s->failures = 0;
        }
        mica_redis_msg_t m;
        rc = mica_redis_sub_next(s, ctx, &m);
        if (rc == MICA_ETIMEDOUT || rc == MICA_ECANCELED)
            return rc;
        if (rc != 0) {
            mica__log_warn("redis: subscriber connection lost, resubscribing", "error",
                           mica_err_name(rc));
            continue;
        }
        if ((rc = fn(&m, arg)) != 0)
            return rc;
    }
}

void mica_redis_sub_free(mica_redis_sub_t *s)
{
    if (!s)
        return;
    mica__redis_conn_close(s->cn);
    mica_redis_reply_free(s->last);
    for (size_t i = 0; s->channels && i < s->n; i++)
        mica__free(s->channels[i]);
    mica__free(s->channels);
    mica__free(s);
}

/* ---- streams ------------------------------------------------------------------------------ */

int mica_redis_xadd(mica_redis_t *r, mica_ctx_t *ctx, const char *stream,
                    const mica_redis_field_t *fields, size_t n, int64_t maxlen, char *id,
                    size_t size)
{
    if (n == 0 || n > 1 << 16)
        return MICA_EINVAL;
    size_t argc = 0, cap = 6 + 2 * n;
    const char **argv = mica__malloc(cap * sizeof(*argv));
    size_t *lens = mica__malloc(cap * sizeof(*lens));
    if (!argv || !lens) {
        mica__free(argv);
        mica__free(lens);
        return MICA_ENOMEM;
    }
    char ml[24];
#define ARG(p, l) (argv[argc] = (p), lens[argc++] = (l))
    ARG("XADD", 4);
    ARG(stream, strlen(stream));
    if (maxlen > 0) {
        snprintf(ml, sizeof(ml), "%lld", (long long)maxlen);
        ARG("MAXLEN", 6);
        ARG("~", 1);
        ARG(ml, strlen(ml));
    }
    ARG("*", 1);
    for (size_t i = 0; i < n; i++) {
        ARG(fields[i].name, strlen(fields[i].name));
        ARG(fields[i].value, fields[i].len);
    }
#undef ARG
    mica_redis_reply_t *rep = NULL;
    int rc = expect(r, ctx, (int)argc, argv, lens, MICA_REDIS_STRING, &rep);
    if (rc == 0 && id && size)
        snprintf(id, size, "%s", rep->type == MICA_REDIS_STRING ? rep->str : "");
    mica_redis_reply_free(rep);
    mica__free(argv);
    mica__free(lens);
    return rc;
}

int mica_redis_xgroup_create(mica_redis_t *r, mica_ctx_t *ctx, const char *stream,
                             const char *group, const char *start)
{
    mica_redis_reply_t *rep = NULL;
    int rc = mica_redis_cmdl(r, ctx, &rep, "XGROUP", "CREATE", stream, group, start ? start : "0",
                             "MKSTREAM", (const char *)NULL);
    if (rc == MICA_EPROTO && rep && strncmp(rep->str, "BUSYGROUP", 9) == 0)
        rc = 0;
    mica_redis_reply_free(rep);
    return rc;
}

int mica_redis_xreadgroup(mica_redis_t *r, mica_ctx_t *ctx, const char *stream, const char *group,
                          const char *consumer, int count, int64_t block_ms, const char *id,
                          mica_redis_reply_t **out)
{
    *out = NULL;
    char c[16], b[24];
    snprintf(c, sizeof(c), "%d", count > 0 ? count : 1);
    const char *argv[11] = {"XREADGROUP", "GROUP", group, consumer, "COUNT", c};
    int argc = 6;
    if (block_ms >= 0) {
        /* Never block past the ctx's deadline: the connection would be lost to it. */
        int64_t dl = mica_ctx_deadline(ctx ? ctx : mica_ctx_background());
        if (dl != MICA_NO_DEADLINE) {
            int64_t left = dl - mica_now_ms();
            if (left < 1)
                left = 1;
            if (block_ms == 0 || left < block_ms) /* BLOCK 0 is forever */
                block_ms = left;
        }
        snprintf(b, sizeof(b), "%lld", (long long)block_ms);
        argv[argc++] = "BLOCK";
        argv[argc++] = b;
    }
    argv[argc++] = "STREAMS";
    argv[argc++] = stream;
    argv[argc++] = id ? id : ">";
    mica_redis_reply_t *rep = NULL;
    int rc = mica_redis_cmd(r, ctx, argc, argv, NULL, &rep);
    if (rc != 0) {
        if (out && rep)
            *out = rep;
        else
            mica_redis_reply_free(rep);
        return rc;
    }
    const mica_redis_reply_t *e = mica_redis_xentries(rep);
    if (!e || e->len == 0) {
        mica_redis_reply_free(rep);
        return MICA_ENOTFOUND;
    }
    *out = rep;
    return 0;
}

int mica_redis_xack(mica_redis_t *r, mica_ctx_t *ctx, const char *stream, const char *group,
                    const char *id, int64_t *acked)
{
    const char *argv[] = {"XACK", stream, group, id};
    return get_integer(r, ctx, 4, argv, NULL, acked);
}

int mica_redis_xautoclaim(mica_redis_t *r, mica_ctx_t *ctx, const char *stream, const char *group,
                          const char *consumer, int64_t min_idle_ms, const char *start, int count,
                          mica_redis_reply_t **out)
{
    *out = NULL;
    char idle[24], c[16];
    snprintf(idle, sizeof(idle), "%lld", (long long)min_idle_ms);
    snprintf(c, sizeof(c), "%d", count > 0 ? count : 16);
    const char *argv[] = {"XAUTOCLAIM", stream,  group, consumer, idle,
                          start ? start : "0-0", "COUNT", c};
    return expect(r, ctx, 8, argv, NULL, MICA_REDIS_ARRAY, out);
}

const mica_redis_reply_t *mica_redis_xentries(const mica_redis_reply_t *rep)
{
    if (!rep || rep->type != MICA_REDIS_ARRAY || rep->len == 0)
        return NULL;
    const mica_redis_reply_t *e0 = rep->element[0];
    if (e0->type == MICA_REDIS_STRING && rep->len >= 2) /* XAUTOCLAIM: [next, entries, ...] */
        return rep->element[1]->type == MICA_REDIS_ARRAY ? rep->element[1] : NULL;
    /* XREADGROUP: [[stream, entries], ...] */
    if (e0->type == MICA_REDIS_ARRAY && e0->len == 2 && e0->element[1]->type == MICA_REDIS_ARRAY)
        return e0->element[1];
    return NULL;
}

/* ---- the consumer loop ------------------------------------------------------------------- */

/* Calls fn for each entry and acknowledges those it accepted. Returns a ctx error or 0. */
static int handle(mica_redis_t *r, mica_ctx_t *ctx, const mica_redis_consumer_opts_t *o,
                  const mica_redis_reply_t *entries, mica_redis_stream_fn fn, void *arg,
                  size_t *handled)
{
    *handled = 0;
    for (size_t i = 0; entries && i < entries->len; i++) {
        const mica_redis_reply_t *e = entries->element[i];
        if (e->type != MICA_REDIS_ARRAY || e->len != 2 || e->element[0]->type != MICA_REDIS_STRING)
            continue;
        const char *id = e->element[0]->str;
        if (e->element[1]->type != MICA_REDIS_ARRAY) {
            /* Deleted from the stream while pending (XDEL/trim): nothing to run. */
            mica_redis_xack(r, ctx, o->stream, o->group, id, NULL);
            continue;
        }
        (*handled)++;
        if (fn(ctx, id, e->element[1], arg) != 0)
            continue; /* stays pending: claimed again after claim_idle_ms */
        /* Not with ctx: an entry handled just as the loop's ctx ended is still acked
         * (the call is bounded by read_timeout_ms). */
        int rc = mica_redis_xack(r, NULL, o->stream, o->group, id, NULL);
        if (rc != 0) {
            char why[64];
            snprintf(why, sizeof(why), "%s", mica_err_name(rc));
            mica__log_warn("redis: XACK failed, entry will be redelivered", "stream", o->stream,
                           "id", id, "error", why);
        }
    }
    return 0;
}

int mica_redis_consume(mica_redis_t *r, mica_ctx_t *ctx, const mica_redis_consumer_opts_t *opts,
                       mica_redis_stream_fn fn, void *arg)
{
    if (!opts || !opts->stream || !opts->group || !opts->consumer || !fn)
        return MICA_EINVAL;
    mica_redis_consumer_opts_t o = *opts;
    o.start = o.start ? o.start : "0";
    o.count = o.count > 0 ? o.count : 16;
    o.block_ms = o.block_ms > 0 ? o.block_ms : 1000;
    o.claim_idle_ms = o.claim_idle_ms > 0 ? o.claim_idle_ms : 30000;
    o.claim_every_ms = o.claim_every_ms > 0 ? o.claim_every_ms : 1000;

    bool grouped = false, own_done = false;
    char own_id[64] = "0"; /* our own pending entries, read from "0" upwards */
    int failures = 0;
    int64_t next_claim = 0;
    for (;;) {
        int rc = ctx ? mica_ctx_err(ctx) : 0;
        if (rc != 0)
            return rc;
        mica_redis_reply_t *rep = NULL;
        size_t n = 0;
        if (!grouped) {
            rc = mica_redis_xgroup_create(r, ctx, o.stream, o.group, o.start);
            grouped = rc == 0;
        } else if (!own_done) {
            /* After a restart under the same name: what we were given but never acked. */
            rc = mica_redis_xreadgroup(r, ctx, o.stream, o.group, o.consumer, o.count, -1, own_id,
                                       &rep);
            if (rc == MICA_ENOTFOUND) {
                own_done = true;
                rc = 0;
            } else if (rc == 0) {
                const mica_redis_reply_t *e = mica_redis_xentries(rep);
                snprintf(own_id, sizeof(own_id), "%s", e->element[e->len - 1]->element[0]->str);
                rc = handle(r, ctx, &o, e, fn, arg, &n);
            }
        } else if (mica_now_ms() >= next_claim) {
            /* Entries another consumer took and never acked (it died): ours now. */
            char start[64] = "0-0";
            do {
                mica_redis_reply_free(rep);
                rep = NULL;
                rc = mica_redis_xautoclaim(r, ctx, o.stream, o.group, o.consumer, o.claim_idle_ms,
                                           start, o.count, &rep);
                if (rc != 0)
                    break;
                const mica_redis_reply_t *e = mica_redis_xentries(rep);
                if (e && e->len) {
                    char ids[24];
                    snprintf(ids, sizeof(ids), "%zu", e->len);
                    mica__log_info("redis: claimed stuck stream entries", "stream", o.stream,
                                   "group", o.group, "consumer", o.consumer, "entries", ids);
                }
                if ((rc = handle(r, ctx, &o, e, fn, arg, &n)) != 0)
                    break;
                snprintf(start, sizeof(start), "%s", rep->element[0]->str);
            } while (strcmp(start, "0-0") != 0);
            next_claim = mica_now_ms() + o.claim_every_ms;
        } else {
            int64_t block = next_claim - mica_now_ms();
            rc = mica_redis_xreadgroup(r, ctx, o.stream, o.group, o.consumer, o.count,
                                       block < o.block_ms ? (block > 0 ? block : 1) : o.block_ms,
                                       ">", &rep);
            if (rc == MICA_ENOTFOUND)
                rc = 0;
            else if (rc == 0)
                rc = handle(r, ctx, &o, mica_redis_xentries(rep), fn, arg, &n);
        }
        mica_redis_reply_free(rep);
        if (rc == 0) {
            failures = 0;
            continue;
        }
        int cerr = ctx ? mica_ctx_err(ctx) : 0;
        if (cerr != 0)
            return cerr;
        if (rc == MICA_ECANCELED && mica_worker_stopping())
            return rc;
        failures++;
        int64_t delay = mica__redis_backoff_ms(r, failures);
        char d[24];
        snprintf(d, sizeof(d), "%lld", (long long)delay);
        mica__log_warn("redis: stream consumer error, retrying", "stream", o.stream, "error",
                       mica_err_name(rc), "detail", mica_redis_errmsg(r), "retry_in_ms", d);
        if ((rc = mica_ctx_sleep(ctx, delay)) != 0)
            return rc;
    }
}
