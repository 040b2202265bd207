/* SPDX-License-Identifier: MIT */
/*
 * Coroutine-aware TCP: the system call is tried first, and only when it
 * would block does the coroutine wait for the fd's edge (loop.c). errno is
 * read right after each call and turned into a MICA_E* code, before anything
 * can suspend: coroutines on one thread share errno.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mica/net.h"
#include "runtime/internal.h"

int mica_net_parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];
    const char *port;
    memset(ss, 0, sizeof(*ss));
    if (!addr)
        return MICA_EINVAL;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= sizeof(host))
            return MICA_EINVAL;
        memcpy(host, addr + 1, (size_t)(end - addr - 1));
        host[end - addr - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (!colon) {
            host[0] = '\0';
            port = addr;
        } else {
            if ((size_t)(colon - addr) >= sizeof(host))
                return MICA_EINVAL;
            memcpy(host, addr, (size_t)(colon - addr));
            host[colon - addr] = '\0';
            port = colon + 1;
        }
    }
    char *end;
    if (!*port)
        return MICA_EINVAL;
    long p = strtol(port, &end, 10);
    if (*end || p < 0 || p > 65535)
        return MICA_EINVAL;

    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (host[0] == '\0' || inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        if (host[0] == '\0')
            in4->sin_addr.s_addr = htonl(INADDR_ANY);
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p);
        *len = sizeof(*in4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        *len = sizeof(*in6);
        return 0;
    }
    return MICA_EINVAL;
}

int mica_net_format_addr(const struct sockaddr *sa, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];
    int n;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
        n = snprintf(buf, size, "%s:%u", host, ntohs(in4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        n = snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        return MICA_EINVAL;
    }
    return n < 0 || (size_t)n >= size ? MICA_ELIMIT : 0;
}

int mica_net_listen(const char *addr, int backlog, int reuseport)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int rc = mica_net_parse_addr(addr, &ss, &len);
    if (rc != 0)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        goto fail;
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0)
        goto fail;
    return fd;
fail:
    rc = -errno;
    close(fd);
    return rc;
}

static mica__loop_t *need_loop(void)
{
    mica__loop_t *loop = mica__loop_current();
    return loop && loop->current ? loop : NULL;
}

int mica_net_accept(int fd, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica__loop_t *loop = need_loop();
    if (!loop)
        return MICA_EINVAL;
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0) {
            int one = 1;
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            return c;
        }
        int err = errno;
        if (err == EINTR || err == ECONNABORTED)
            continue;
        if (err != EAGAIN)
            return -err;
        int rc = mica__io_wait(loop, fd, false, ctx, deadline_ms);
        if (rc != 0)
            return rc;
    }
}

int mica_net_connect(const char *addr, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica__loop_t *loop = need_loop();
    if (!loop)
        return MICA_EINVAL;
    struct sockaddr_storage ss;
    socklen_t len;
    int rc = mica_net_parse_addr(addr, &ss, &len);
    if (rc != 0)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        if (errno != EINPROGRESS) {
            rc = -errno;
            goto fail;
        }
        rc = mica__io_wait(loop, fd, true, ctx, deadline_ms);
        if (rc == 0) {
            int err = 0;
            socklen_t elen = sizeof(err);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
            rc = -err;
        }
        if (rc != 0)
            goto fail;
    }
    return fd;
fail:
    mica_net_close(fd);
    return rc;
}

ssize_t mica_net_read(int fd, void *buf, size_t len, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica__loop_t *loop = need_loop();
    if (!loop)
        return MICA_EINVAL;
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0)
            return n;
        int err = errno;
        if (err == EINTR)
            continue;
        if (err != EAGAIN)
            return -err;
        int rc = mica__io_wait(loop, fd, false, ctx, deadline_ms);
        if (rc != 0)
            return rc;
    }
}

int mica_net_write(int fd, const void *buf, size_t len, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica__loop_t *loop = need_loop();
    if (!loop)
        return MICA_EINVAL;
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n >= 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        int err = errno;
        if (err == EINTR)
            continue;
        if (err != EAGAIN)
            return -err;
        int rc = mica__io_wait(loop, fd, true, ctx, deadline_ms);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int mica_net_close(int fd)
{
    mica__loop_t *loop = mica__loop_current();
    if (loop)
        mica__io_forget(loop, fd);
    return close(fd) == 0 ? 0 : -errno;
}

int mica_net_wait(int fd, int events, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica__loop_t *loop = need_loop();
    if (!loop)
        return MICA_EINVAL;
    return mica__io_wait(loop, fd, events & MICA_NET_WRITABLE, ctx, deadline_ms);
}

int mica_net_on_readable(int fd, mica_coro_fn fn, void *arg)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop)
        return MICA_EINVAL;
    int rc = mica__io_watch(loop, fd);
    if (rc != 0)
        return rc;
    mica__io_t *io = &loop->io[fd];
    if (io->readable || io->hup) {
        io->readable = false;
        return MICA_EAGAIN;
    }
    io->on_read = fn;
    io->on_read_arg = arg;
    return 0;
}

void mica_net_cancel_on_hup(int fd, mica_ctx_t *ctx)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop || mica__io_watch(loop, fd) != 0)
        return;
    loop->io[fd].hup_ctx = ctx;
}

void mica_net_cancel(int fd)
{
    mica__loop_t *loop = mica__loop_current();
    if (loop)
        mica__io_cancel(loop, fd);
}
