/* SPDX-License-Identifier: MIT */
/*
 * Test helpers that speak to a server over loopback from a coroutine: raw
 * HTTP/1.1 exchanges and hand-built HTTP/2 frames (HPACK literals without
 * indexing), with every wait bounded. Nothing here asserts: results are
 * returned for EXPECT (tests/unit/runtime/helpers.h).
 */
#ifndef MICA_TEST_WIRE_H
#define MICA_TEST_WIRE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "mica/net.h"
#include "mica/runtime.h"

#define WIRE_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

/* Sends `req` on a new connection and reads until EOF (or `ms`), into out. Returns bytes or < 0. */
static inline ssize_t wire_exchange(const char *addr, const char *req, size_t len, char *out,
                                    size_t cap, int ms)
{
    int64_t deadline = mica_deadline_in(ms);
    int fd = mica_net_connect(addr, NULL, deadline);
    if (fd < 0)
        return fd;
    mica_net_write(fd, req, len, NULL, deadline); /* the server may close early: read anyway */
    size_t total = 0;
    for (;;) {
        ssize_t n = mica_net_read(fd, out + total, cap - 1 - total, NULL, deadline);
        if (n == MICA_ETIMEDOUT) {
            mica_net_close(fd);
            return MICA_ETIMEDOUT;
        }
        if (n <= 0)
            break; /* EOF or reset: the server closed */
        total += (size_t)n;
        if (total == cap - 1)
            break;
    }
    out[total] = '\0';
    mica_net_close(fd);
    return (ssize_t)total;
}

/* Appends an HTTP/2 frame header and payload at *p. */
static inline void wire_frame(char **p, int type, int flags, uint32_t stream, const void *payload,
                              size_t len)
{
    unsigned char *h = (unsigned char *)*p;
    h[0] = (unsigned char)(len >> 16);
    h[1] = (unsigned char)(len >> 8);
    h[2] = (unsigned char)len;
    h[3] = (unsigned char)type;
    h[4] = (unsigned char)flags;
    h[5] = (unsigned char)(stream >> 24);
    h[6] = (unsigned char)(stream >> 16);
    h[7] = (unsigned char)(stream >> 8);
    h[8] = (unsigned char)stream;
    if (len)
        memcpy(*p + 9, payload, len);
    *p += 9 + len;
}

/* Appends an HPACK "literal without indexing, new name" field (short name and value). */
static inline size_t wire_hpack(char *p, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    p[0] = 0;
    p[1] = (char)nl;
    memcpy(p + 2, name, nl);
    p[2 + nl] = (char)vl;
    memcpy(p + 3 + nl, value, vl);
    return 3 + nl + vl;
}

/*
 * Reads HTTP/2 frames from fd until `streams` streams have ended (END_STREAM
 * or RST_STREAM), a GOAWAY, EOF or the deadline. Returns the number of
 * streams that ended, or MICA_ETIMEDOUT. *found is set when a DATA payload
 * contains `want` (may be NULL).
 */
static inline int wire_h2_read(int fd, int streams, int64_t deadline, const char *want,
                               size_t want_len, bool *found)
{
    static char buf[20000]; /* not on the coroutine's stack; tests run one reader at a time */
    size_t have = 0;
    int ended = 0;
    for (;;) {
        while (have >= 9) {
            const unsigned char *h = (const unsigned char *)buf;
            size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
            if (have < 9 + len)
                break;
            int type = h[3], flags = h[4];
            if (type == 0 && want && found)
                for (size_t i = 0; i + want_len <= len; i++)
                    if (memcmp(buf + 9 + i, want, want_len) == 0)
                        *found = true;
            if (((type == 0 || type == 1) && (flags & 1)) || type == 3)
                ended++;
            memmove(buf, buf + 9 + len, have - 9 - len);
            have -= 9 + len;
            if (type == 7 || ended >= streams)
                return ended;
        }
        if (have == sizeof(buf))
            return ended; /* a frame too large for this reader: give up */
        ssize_t n = mica_net_read(fd, buf + have, sizeof(buf) - have, NULL, deadline);
        if (n == MICA_ETIMEDOUT)
            return MICA_ETIMEDOUT;
        if (n <= 0)
            return ended;
        have += (size_t)n;
    }
}

#endif
