/* SPDX-License-Identifier: MIT */
/*
 * An out-of-tree program built against an installed mica (scripts/install-
 * check.sh builds it with pkg-config and with find_package(mica)): it serves
 * GET /hello on a loopback port, asks itself for it over a mica socket, and
 * exits 0 only if the answer came back right.
 */
#include <stdio.h>
#include <string.h>

#include <mica/mica.h>

static mica_runtime_t *rt;
static mica_http_server_t *srv;
static int result = 1;

static int hello(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    (void)req;
    (void)arg;
    return mica_http_resp_text(resp, 200, "hello from an installed mica\n");
}

static void ask(int worker, void *arg)
{
    (void)arg;
    if (worker != 0)
        return;
    char addr[64], buf[1024];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", mica_http_server_port(srv, 0));
    int fd = mica_net_connect(addr, NULL, mica_deadline_in(5000));
    if (fd < 0) {
        fprintf(stderr, "connect %s: %s\n", addr, mica_strerror(fd));
        goto out;
    }
    static const char req[] = "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    size_t got = 0;
    if (mica_net_write(fd, req, sizeof req - 1, NULL, mica_deadline_in(5000)) == 0) {
        for (;;) {
            ssize_t n = mica_net_read(fd, buf + got, sizeof buf - 1 - got, NULL, mica_deadline_in(5000));
            if (n <= 0)
                break;
            got += (size_t)n;
        }
    }
    buf[got] = '\0';
    mica_net_close(fd);
    if (strncmp(buf, "HTTP/1.1 200", 12) == 0 && strstr(buf, "hello from an installed mica")) {
        printf("ok: %s\n", strstr(buf, "hello"));
        result = 0;
    } else {
        fprintf(stderr, "unexpected answer: %s\n", buf);
    }
out:
    mica_runtime_stop(rt);
}

int main(void)
{
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    if (mica_runtime_new(&rt, &ro) != 0 || mica_http_server_new(&srv, NULL) != 0)
        return 1;
    if (mica_http_route(srv, "GET", "/hello", hello, NULL) != 0 ||
        mica_http_server_listen(srv, "127.0.0.1:0") != 0 ||
        mica_http_server_attach(srv, rt) != 0 || mica_runtime_on_start(rt, ask, NULL) != 0)
        return 1;
    int rc = mica_runtime_run(rt);
    mica_http_server_free(srv);
    mica_runtime_free(rt);
    return rc == 0 ? result : 1;
}
