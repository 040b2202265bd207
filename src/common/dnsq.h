/* SPDX-License-Identifier: MIT */
/*
 * Blocking DNS lookups for the DNS resolver (src/runtime/dns.c) and the DNS
 * registry (src/discovery/reg_dns.c), which both run them on the offload
 * pool: A/AAAA records of "host" with a known port, or SRV records (RFC
 * 2782) of "_service._proto.name", which carry the ports too. Not public.
 */
#ifndef MICA_COMMON_DNSQ_H
#define MICA_COMMON_DNSQ_H

#include <stddef.h>
#include <stdint.h>

#define MICA__DNS_MAX_ADDRS 64

/* What a lookup found: "ip:port" endpoints (sorted), or why none. */
typedef struct mica__dns_result {
    size_t n;
    struct {
        char addr[64];   /* "10.0.0.1:50051", "[fd00::1]:50051" */
        uint32_t weight; /* the SRV record's weight (0 counts as 1); 1 for A/AAAA */
    } a[MICA__DNS_MAX_ADDRS];
    int err;       /* 0, MICA_ENOTFOUND, MICA_EAGAIN, MICA_EUNAVAILABLE, MICA_EINVAL, ... */
    char why[128]; /* the failure in words */
} mica__dns_result_t;

/*
 * Looks `host` up, blocking. With `port`: its A and AAAA records, each with
 * that port (through getaddrinfo(), so /etc/hosts counts, unless `server`
 * is given). Without: its SRV records of the lowest priority, each target's
 * addresses from the answer's additional section or a lookup of their own.
 * `server` ("10.96.0.10", "127.0.0.1:5353"; IPv4) asks that server instead
 * of resolv.conf's. Fills *out (err 0 when n > 0).
 */
void mica__dns_lookup(const char *server, const char *host, const char *port,
                      mica__dns_result_t *out);

/* One resource record of a DNS message, as mica__dns_parse() reads it. */
typedef struct mica__dns_rr {
    int type;                      /* 1 A, 28 AAAA, 33 SRV (others are skipped) */
    char name[256];                /* owner, without the final dot */
    uint16_t prio, weight, port;   /* SRV */
    char target[256];              /* SRV */
    char ip[48];                   /* A, AAAA */
} mica__dns_rr_t;

/*
 * Reads the answer and additional sections of DNS message `msg` (`len`
 * bytes) into rr[0..max), *n of them. Returns 0 or MICA_EPROTO (malformed:
 * compression loops, lengths past the end, bad RDATA sizes).
 */
int mica__dns_parse(const uint8_t *msg, size_t len, mica__dns_rr_t *rr, size_t max, size_t *n);

#endif /* MICA_COMMON_DNSQ_H */
