/* SPDX-License-Identifier: MIT */
/*
 * The DNS registry ("dns://" or "dns://10.96.0.10:53"): Kubernetes'
 * headless Services and anything else that publishes instances as DNS
 * records. The platform registers (a pod is listed once its readiness probe
 * passes), so register and deregister write nothing and say so once.
 * Resolving a service polls its records every dns_refresh_ms on the
 * offload pool (src/common/dnsq.c): "user.shop.svc:50051" asks for A/AAAA
 * records with that port, "_grpc._tcp.user.shop.svc" for SRV records. A
 * failed lookup keeps the last list (static stability), as the "dns:///"
 * resolver scheme of the runtime does for clients.
 */
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/dnsq.h"
#include "common/log.h"
#include "discovery/internal.h"

typedef struct dnsreg {
    mica_registry_t *reg;
    char *server; /* NULL: resolv.conf's */
    mica_ctx_t *ctx;
    atomic_bool told; /* "registration is the platform's" logged */
} dnsreg_t;

typedef struct poll_job {
    dnsreg_t *d;
    mica__svc_t *svc;
    char *host;
    const char *port; /* in host's allocation, or NULL: SRV */
    mica__dns_result_t res;
} poll_job_t;

static int lookup_run(void *arg)
{
    poll_job_t *j = arg;
    mica__dns_lookup(j->d->server, j->host, j->port, &j->res);
    return 0;
}

static void poller(void *arg)
{
    poll_job_t *j = arg;
    dnsreg_t *d = j->d;
    int64_t retry_ms = 1000;
    while (!mica_ctx_err(d->ctx)) {
        int res, rc = mica_offload(NULL, d->ctx, lookup_run, j, &res);
        if (rc == 0 && j->res.err == 0) {
            mica_instance_t v[MICA__DNS_MAX_ADDRS];
            for (size_t i = 0; i < j->res.n; i++)
                v[i] = (mica_instance_t){.id = j->res.a[i].addr, .addr = j->res.a[i].addr,
                                         .weight = j->res.a[i].weight};
            mica__registry_reachable(d->reg, true, 0);
            mica__svc_publish(j->svc, v, j->res.n);
            retry_ms = 1000;
        } else if (!mica_ctx_err(d->ctx)) {
            int err = rc ? rc : j->res.err;
            mica__log_debug("dns registry: lookup failed", "name", j->host, "error",
                            rc ? mica_strerror(rc) : j->res.why);
            mica__registry_reachable(d->reg, false, err);
            mica__svc_unreachable(j->svc, err);
        }
        int64_t next = rc == 0 && j->res.err == 0 ? d->reg->o.dns_refresh_ms : retry_ms;
        if (next != d->reg->o.dns_refresh_ms)
            retry_ms = retry_ms * 2 > 30000 ? 30000 : retry_ms * 2;
        if (mica_ctx_sleep(d->ctx, next) != 0)
            break;
    }
    mica__free(j->host);
    mica__free(j);
}

static int dns_follow(void *state, mica__svc_t *svc)
{
    dnsreg_t *d = state;
    poll_job_t *j = mica__calloc(1, sizeof(*j));
    if (!j || !(j->host = mica__strdup(svc->name))) {
        mica__free(j);
        return MICA_ENOMEM;
    }
    /* "name:port" -> A/AAAA; a name alone -> SRV */
    char *colon = strrchr(j->host, ':');
    if (colon && j->host[0] != '[') {
        *colon = '\0';
        j->port = colon + 1;
    }
    j->d = d;
    j->svc = svc;
    int rc = mica_go(poller, j);
    if (rc != 0) {
        mica__free(j->host);
        mica__free(j);
    }
    return rc;
}

static int dns_put(void *state, mica_ctx_t *ctx, mica__rinst_t *ri)
{
    dnsreg_t *d = state;
    if (!atomic_exchange(&d->told, true))
        mica__log_info("dns registry: registration is the platform's (a Kubernetes Service's "
                       "endpoints): nothing is written",
                       "svc", ri->i.service);
    atomic_store(&ri->written, 1);
    return 0;
}

static int dns_del(void *state, mica_ctx_t *ctx, mica__rinst_t *ri)
{
    return 0;
}

static int dns_del_all(void *state, mica_ctx_t *ctx)
{
    return 0;
}

static void dns_stop(void *state)
{
    dnsreg_t *d = state;
    mica_ctx_cancel(d->ctx);
}

static void dns_close(void *state)
{
    dnsreg_t *d = state;
    mica_ctx_free(d->ctx);
    mica__free(d->server);
    mica__free(d);
}

static int dns_open(mica_registry_t *reg, const char *rest, void **state)
{
    dnsreg_t *d = mica__calloc(1, sizeof(*d));
    if (!d)
        return MICA_ENOMEM;
    d->reg = reg;
    size_t n = strcspn(rest, "/");
    if ((n && !(d->server = mica__strndup(rest, n))) || mica_ctx_with_cancel(NULL, &d->ctx) != 0) {
        dns_close(d);
        return MICA_ENOMEM;
    }
    *state = d;
    return 0;
}

const mica__registry_ops_t mica__registry_dns = {
    .scheme = "dns",
    .open = dns_open,
    .close = dns_close,
    .stop = dns_stop,
    .put = dns_put,
    .del = dns_del,
    .del_all = dns_del_all,
    .follow = dns_follow,
};
