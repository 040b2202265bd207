/* SPDX-License-Identifier: MIT */
/*
 * Blocking DNS lookups (dnsq.h), run on offload threads by their callers.
 *
 * A/AAAA with a known port go through getaddrinfo(), which follows
 * nsswitch.conf (files, DNS, whatever the host uses). SRV records have no
 * such library call: glibc's res_nsearch() sends the query (resolv.conf's
 * servers, search list, ndots, timeouts and the TCP retry of truncated
 * answers) with a res_state of our own per call, so threads never share
 * one, and mica__dns_parse() reads the answer: dn_expand() for names (it
 * bounds compression pointers), our own code for the fixed fields. We take
 * the SRV records of the lowest priority (RFC 2782: the others are
 * fallbacks) with their weights, and their targets' addresses from the
 * additional section when the server sent them (Kubernetes' does), else by
 * a lookup of each target. A server named in the target ("dns://10.96.0.10/")
 * replaces resolv.conf's, IPv4 only (res_state keeps IPv6 servers apart).
 */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <stdbool.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/alloc.h"
#include "common/dnsq.h"
#include "mica/error.h"

#define MAX_RR 128
#define ANSWER_BYTES 65536

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* Skips (or expands into name) the domain name at *p. Returns 0 or -1. */
static int name_at(const uint8_t *msg, size_t len, const uint8_t **p, char *name, size_t size)
{
    char tmp[NS_MAXDNAME];
    int n = dn_expand(msg, msg + len, *p, tmp, sizeof(tmp));
    if (n < 0)
        return -1;
    *p += n;
    if (name) {
        size_t k = strlen(tmp);
        if (k && tmp[k - 1] == '.')
            tmp[--k] = '\0';
        if (k >= size)
            return -1;
        memcpy(name, tmp, k + 1);
    }
    return 0;
}

int mica__dns_parse(const uint8_t *msg, size_t len, mica__dns_rr_t *rr, size_t max, size_t *n)
{
    *n = 0;
    if (len < 12)
        return MICA_EPROTO;
    const uint8_t *end = msg + len, *p = msg + 12;
    unsigned qd = get16(msg + 4), an = get16(msg + 6), ns = get16(msg + 8), ar = get16(msg + 10);
    for (unsigned i = 0; i < qd; i++) {
        if (name_at(msg, len, &p, NULL, 0) != 0 || end - p < 4)
            return MICA_EPROTO;
        p += 4; /* QTYPE, QCLASS */
    }
    for (unsigned i = 0; i < an + ns + ar; i++) {
        mica__dns_rr_t r = {0};
        if (name_at(msg, len, &p, r.name, sizeof(r.name)) != 0 || end - p < 10)
            return MICA_EPROTO;
        uint16_t type = get16(p), class = get16(p + 2), rdlen = get16(p + 8);
        p += 10;
        if (end - p < rdlen)
            return MICA_EPROTO;
        const uint8_t *rd = p;
        p += rdlen;
        if (i >= an && i < an + ns) /* the authority section: nothing for us */
            continue;
        if (class != C_IN)
            continue;
        if (type == T_A && rdlen == 4) {
            inet_ntop(AF_INET, rd, r.ip, sizeof(r.ip));
        } else if (type == T_AAAA && rdlen == 16) {
            inet_ntop(AF_INET6, rd, r.ip, sizeof(r.ip));
        } else if (type == T_SRV && rdlen >= 7) {
            r.prio = get16(rd);
            r.weight = get16(rd + 2);
            r.port = get16(rd + 4);
            const uint8_t *t = rd + 6;
            if (name_at(msg, len, &t, r.target, sizeof(r.target)) != 0 || t != p)
                return MICA_EPROTO;
        } else if (type == T_A || type == T_AAAA || type == T_SRV) {
            return MICA_EPROTO; /* a known type with a wrong size */
        } else {
            continue;
        }
        r.type = type;
        if (*n < max)
            rr[(*n)++] = r;
    }
    return 0;
}

/* ---- lookups ---------------------------------------------------------------------- */

static void fail(mica__dns_result_t *out, int err, const char *why)
{
    out->n = 0;
    out->err = err;
    snprintf(out->why, sizeof(out->why), "%s", why);
}

static void add(mica__dns_result_t *out, const char *ip, int family, uint16_t port,
                uint32_t weight)
{
    if (out->n == MICA__DNS_MAX_ADDRS)
        return;
    char *a = out->a[out->n].addr;
    snprintf(a, sizeof(out->a[0].addr), family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
    for (size_t i = 0; i < out->n; i++)
        if (strcmp(out->a[i].addr, a) == 0)
            return;
    out->a[out->n++].weight = weight ? weight : 1;
}

static int herr_to_mica(int h)
{
    switch (h) {
    case HOST_NOT_FOUND:
    case NO_DATA:
        return MICA_ENOTFOUND;
    case TRY_AGAIN:
        return MICA_EAGAIN;
    default:
        return MICA_EUNAVAILABLE;
    }
}

/* getaddrinfo() of host:port into out. Returns 0 or an error (out->why set). */
static int gai(const char *host, const char *port, mica__dns_result_t *out, uint32_t weight)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    /* No AI_ADDRCONFIG: it hides ::1 on hosts whose only IPv6 address is loopback. */
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        int err = rc == EAI_NONAME || rc == EAI_NODATA ? MICA_ENOTFOUND
                  : rc == EAI_AGAIN                    ? MICA_EAGAIN
                  : rc == EAI_MEMORY                   ? MICA_ENOMEM
                  : rc == EAI_SYSTEM && errno          ? -errno
                                                       : MICA_EUNAVAILABLE;
        snprintf(out->why, sizeof(out->why), "%s", rc == EAI_SYSTEM ? mica_strerror(err)
                                                                    : gai_strerror(rc));
        return err;
    }
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        char ip[48];
        if (a->ai_family == AF_INET) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)a->ai_addr;
            inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
            add(out, ip, AF_INET, ntohs(sin->sin_port), weight);
        } else if (a->ai_family == AF_INET6) {
            const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)a->ai_addr;
            inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
            add(out, ip, AF_INET6, ntohs(sin6->sin6_port), weight);
        }
    }
    freeaddrinfo(res);
    return 0;
}

/* One query at the server of `st`; returns the message length or -1 (h_errno in st). */
static int query(res_state st, const char *name, int type, uint8_t *ans)
{
    return res_nsearch(st, name, C_IN, type, ans, ANSWER_BYTES);
}

/* The A and AAAA records of `host` at `st`'s server, with `port`. */
static int addrs_at(res_state st, const char *host, uint16_t port, uint32_t weight, uint8_t *ans,
                    mica__dns_rr_t *rr, mica__dns_result_t *out)
{
    int err = MICA_ENOTFOUND;
    static const int types[] = {T_A, T_AAAA};
    for (int t = 0; t < 2; t++) {
        int len = query(st, host, types[t], ans);
        size_t n = 0;
        if (len < 0) {
            err = herr_to_mica(st->res_h_errno);
            continue;
        }
        if (mica__dns_parse(ans, (size_t)len, rr, MAX_RR, &n) != 0)
            continue;
        for (size_t i = 0; i < n; i++)
            if (rr[i].type == types[t]) {
                add(out, rr[i].ip, types[t] == T_A ? AF_INET : AF_INET6, port, weight);
                err = 0;
            }
    }
    return err;
}

static int cmp_addr(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b); /* addr is each entry's first field */
}

static int set_server(res_state st, const char *server)
{
    char host[64];
    const char *colon = strrchr(server, ':');
    size_t k = colon ? (size_t)(colon - server) : strlen(server);
    long port = colon ? strtol(colon + 1, NULL, 10) : 53;
    struct in_addr ia;
    if (k >= sizeof(host) || port <= 0 || port > 65535)
        return MICA_EINVAL;
    memcpy(host, server, k);
    host[k] = '\0';
    if (inet_pton(AF_INET, host, &ia) != 1)
        return MICA_EINVAL;
    st->nscount = 1;
    memset(&st->nsaddr_list[0], 0, sizeof(st->nsaddr_list[0]));
    st->nsaddr_list[0].sin_family = AF_INET;
    st->nsaddr_list[0].sin_port = htons((uint16_t)port);
    st->nsaddr_list[0].sin_addr = ia;
    st->retry = 2;
    st->retrans = 1;
    return 0;
}

void mica__dns_lookup(const char *server, const char *host, const char *port,
                      mica__dns_result_t *out)
{
    memset(out, 0, sizeof(*out));
    if (port && !server) {
        if ((out->err = gai(host, port, out, 1)) == 0 && out->n == 0)
            fail(out, MICA_ENOTFOUND, "no IPv4 or IPv6 address");
        goto done;
    }
    struct __res_state *st = mica__calloc(1, sizeof(*st));
    uint8_t *ans = mica__malloc(ANSWER_BYTES);
    mica__dns_rr_t *rr = mica__calloc(MAX_RR, sizeof(*rr));
    if (!st || !ans || !rr) {
        fail(out, MICA_ENOMEM, "out of memory");
    } else if (res_ninit(st) != 0) {
        fail(out, MICA_EUNAVAILABLE, "res_ninit failed (resolv.conf)");
    } else if (server && set_server(st, server) != 0) {
        fail(out, MICA_EINVAL, "the DNS server must be an IPv4 address[:port]");
        res_nclose(st);
    } else if (port) {
        int err = addrs_at(st, host, (uint16_t)strtol(port, NULL, 10), 1, ans, rr, out);
        if (out->n == 0)
            fail(out, err ? err : MICA_ENOTFOUND, "no A or AAAA record");
        res_nclose(st);
    } else {
        size_t n = 0;
        int len = query(st, host, T_SRV, ans);
        if (len < 0)
            fail(out, herr_to_mica(st->res_h_errno), hstrerror(st->res_h_errno));
        else if (mica__dns_parse(ans, (size_t)len, rr, MAX_RR, &n) != 0)
            fail(out, MICA_EPROTO, "malformed DNS answer");
        int prio = 65536;
        for (size_t i = 0; i < n; i++)
            if (rr[i].type == T_SRV && rr[i].prio < prio)
                prio = rr[i].prio;
        if (len >= 0 && prio == 65536 && !out->err)
            fail(out, MICA_ENOTFOUND, "no SRV record");
        /* Copy the records out: looking up targets reuses rr. */
        mica__dns_rr_t *srv = out->err ? NULL : mica__calloc(n ? n : 1, sizeof(*srv));
        size_t ns = 0, nrr = n;
        mica__dns_rr_t *extra = srv ? mica__calloc(n ? n : 1, sizeof(*extra)) : NULL;
        if (!out->err && (!srv || !extra))
            fail(out, MICA_ENOMEM, "out of memory");
        for (size_t i = 0; extra && i < nrr; i++) {
            if (rr[i].type == T_SRV && rr[i].prio == prio)
                srv[ns++] = rr[i];
            extra[i] = rr[i];
        }
        for (size_t i = 0; extra && i < ns; i++) {
            if (strcmp(srv[i].target, "") == 0 || strcmp(srv[i].target, ".") == 0)
                continue; /* "." says: no such service here */
            bool found = false;
            for (size_t j = 0; j < nrr; j++)
                if ((extra[j].type == T_A || extra[j].type == T_AAAA) &&
                    strcasecmp(extra[j].name, srv[i].target) == 0) {
                    add(out, extra[j].ip, extra[j].type == T_A ? AF_INET : AF_INET6,
                        srv[i].port, srv[i].weight);
                    found = true;
                }
            if (found)
                continue;
            if (server) {
                addrs_at(st, srv[i].target, srv[i].port, srv[i].weight, ans, rr, out);
            } else {
                char p[8];
                snprintf(p, sizeof(p), "%u", srv[i].port);
                mica__dns_result_t *one = mica__calloc(1, sizeof(*one));
                if (one && gai(srv[i].target, p, one, srv[i].weight) == 0)
                    for (size_t k = 0; k < one->n; k++)
                        if (out->n < MICA__DNS_MAX_ADDRS) {
                            size_t dup = 0;
                            for (size_t m = 0; m < out->n; m++)
                                dup |= strcmp(out->a[m].addr, one->a[k].addr) == 0;
                            if (!dup)
                                out->a[out->n++] = one->a[k];
                        }
                mica__free(one);
            }
        }
        if (!out->err && out->n == 0)
            fail(out, MICA_ENOTFOUND, "no address for the SRV targets");
        mica__free(srv);
        mica__free(extra);
        res_nclose(st);
    }
    mica__free(st);
    mica__free(ans);
    mica__free(rr);
done:
    if (out->n)
        qsort(out->a, out->n, sizeof(out->a[0]), cmp_addr);
}
