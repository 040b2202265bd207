/* SPDX-License-Identifier: MIT */
/*
 * Router: a tree of path segments. Each node has literal children, at most
 * one parameter child ("{id}") and a small list of (method, handler) pairs.
 * Matching walks the request path segment by segment, trying the literal
 * child first and backtracking to the parameter child, so "/users/me" beats
 * "/users/{id}" without making "/users/{id}/orders" unreachable. Routes are
 * few and registered at start-up, so nodes use plain arrays.
 */
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "http/internal.h"

typedef mica__route_t handler_t;

typedef struct node node_t;
struct node {
    char *lit; /* literal segment; NULL for the root and parameter nodes */
    size_t lit_len;
    char *param; /* parameter name for parameter nodes */
    node_t **kids;
    size_t nkids;
    node_t *param_kid;
    handler_t *handlers;
    size_t nhandlers;
};

struct mica__router {
    node_t root;
};

int mica__router_new(mica__router_t **out)
{
    *out = mica__calloc(1, sizeof(**out));
    return *out ? 0 : MICA_ENOMEM;
}

static void node_free(node_t *n)
{
    for (size_t i = 0; i < n->nkids; i++) {
        node_free(n->kids[i]);
        mica__free(n->kids[i]);
    }
    if (n->param_kid) {
        node_free(n->param_kid);
        mica__free(n->param_kid);
    }
    for (size_t i = 0; i < n->nhandlers; i++) {
        mica__free(n->handlers[i].method);
        mica__free(n->handlers[i].pattern);
    }
    mica__free(n->kids);
    mica__free(n->handlers);
    mica__free(n->lit);
    mica__free(n->param);
}

void mica__router_free(mica__router_t *r)
{
    if (!r)
        return;
    node_free(&r->root);
    mica__free(r);
}

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static node_t *child(node_t *n, const char *seg, size_t len, bool create)
{
    bool param = len >= 2 && seg[0] == '{' && seg[len - 1] == '}';
    if (param) {
        if (n->param_kid) {
            /* One parameter name per position, or params would shadow each other. */
            if (strlen(n->param_kid->param) != len - 2 ||
                memcmp(n->param_kid->param, seg + 1, len - 2) != 0)
                return NULL;
            return n->param_kid;
        }
        if (!create)
            return NULL;
        node_t *k = mica__calloc(1, sizeof(*k));
        if (!k || !(k->param = mica__strndup(seg + 1, len - 2))) {
            mica__free(k);
            return NULL;
        }
        n->param_kid = k;
        return k;
    }
    for (size_t i = 0; i < n->nkids; i++)
        if (n->kids[i]->lit_len == len && memcmp(n->kids[i]->lit, seg, len) == 0)
            return n->kids[i];
    if (!create)
        return NULL;
    node_t **kids = mica__realloc(n->kids, (n->nkids + 1) * sizeof(*kids));
    if (!kids)
        return NULL;
    n->kids = kids;
    node_t *k = mica__calloc(1, sizeof(*k));
    if (!k || !(k->lit = mica__strndup(seg, len))) {
        mica__free(k);
        return NULL;
    }
    k->lit_len = len;
    n->kids[n->nkids++] = k;
    return k;
}

static bool valid_segment(const char *seg, size_t len)
{
    if (len >= 2 && seg[0] == '{' && seg[len - 1] == '}') {
        for (size_t i = 1; i + 1 < len; i++)
            if (!(is_tchar((unsigned char)seg[i])) || seg[i] == '{' || seg[i] == '}')
                return false;
        return len > 2;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)seg[i];
        if (c <= 0x20 || c >= 0x7f || c == '{' || c == '}' || c == '?' || c == '#')
            return false;
    }
    return true;
}

int mica__router_add(mica__router_t *r, const char *method, const char *pattern,
                     mica_http_handler_fn fn, void *arg, bool stream, size_t max_buffer)
{
    if (!method || !*method || !pattern || pattern[0] != '/' || !fn)
        return MICA_EINVAL;
    for (const char *m = method; *m; m++)
        if (!is_tchar((unsigned char)*m))
            return MICA_EINVAL;
    size_t nparams = 0;
    node_t *n = &r->root;
    const char *p = pattern + 1;
    if (*pattern && pattern[1] != '\0') {
        for (;;) {
            const char *slash = strchr(p, '/');
            size_t len = slash ? (size_t)(slash - p) : strlen(p);
            if (!valid_segment(p, len))
                return MICA_EINVAL;
            if (len >= 2 && p[0] == '{' && ++nparams > MICA__HTTP_MAX_PARAMS)
                return MICA_EINVAL;
            n = child(n, p, len, true);
            if (!n)
                return MICA_EINVAL; /* conflicting parameter name, or ENOMEM */
            if (!slash)
                break;
            p = slash + 1;
        }
    }
    for (size_t i = 0; i < n->nhandlers; i++)
        if (strcmp(n->handlers[i].method, method) == 0)
            return MICA_EEXIST;
    handler_t *h = mica__realloc(n->handlers, (n->nhandlers + 1) * sizeof(*h));
    if (!h)
        return MICA_ENOMEM;
    n->handlers = h;
    char *m = mica__strdup(method), *pat = mica__strdup(pattern);
    if (!m || !pat) {
        mica__free(m);
        mica__free(pat);
        return MICA_ENOMEM;
    }
    h[n->nhandlers++] = (handler_t){m, pat, fn, arg, stream, max_buffer};
    return 0;
}

/* Depth-first match of path[0..len) (after the leading '/') below `n`. */
static const node_t *walk(const node_t *n, const char *path, size_t len, bool at_end,
                          mica__route_match_t *m)
{
    if (at_end)
        return n->nhandlers ? n : NULL;
    const char *slash = memchr(path, '/', len);
    size_t seg = slash ? (size_t)(slash - path) : len;
    const char *rest = slash ? slash + 1 : path + len;
    size_t rest_len = slash ? len - seg - 1 : 0;
    bool end = slash == NULL;

    for (size_t i = 0; i < n->nkids; i++) {
        const node_t *k = n->kids[i];
        if (k->lit_len == seg && memcmp(k->lit, path, seg) == 0) {
            const node_t *hit = walk(k, rest, rest_len, end, m);
            if (hit)
                return hit;
            break;
        }
    }
    if (n->param_kid && seg > 0 && m->nparams < MICA__HTTP_MAX_PARAMS) {
        size_t i = m->nparams++;
        m->names[i] = n->param_kid->param;
        m->values[i] = path;
        m->value_lens[i] = seg;
        const node_t *hit = walk(n->param_kid, rest, rest_len, end, m);
        if (hit)
            return hit;
        m->nparams--;
    }
    return NULL;
}

static void append_allow(char *buf, size_t size, const char *method)
{
    size_t len = strlen(buf), mlen = strlen(method);
    if (len + mlen + 3 > size)
        return;
    if (len) {
        memcpy(buf + len, ", ", 2);
        len += 2;
    }
    memcpy(buf + len, method, mlen + 1);
}

int mica__router_match(const mica__router_t *r, const char *method, size_t method_len,
                       const char *path, size_t path_len, mica__route_match_t *m)
{
    m->route = NULL;
    m->nparams = 0;
    m->allow[0] = '\0';
    if (path_len == 0 || path[0] != '/')
        return -404;
    /* "/" is the root itself; "/a/b" walks "a" then "b". */
    const node_t *n = walk(&r->root, path + 1, path_len - 1, path_len == 1, m);
    if (!n)
        return -404;
    const handler_t *get = NULL;
    bool is_head = method_len == 4 && memcmp(method, "HEAD", 4) == 0;
    for (size_t i = 0; i < n->nhandlers; i++) {
        const handler_t *h = &n->handlers[i];
        if (strlen(h->method) == method_len && memcmp(h->method, method, method_len) == 0) {
            m->route = h;
            return 0;
        }
        if (strcmp(h->method, "GET") == 0)
            get = h;
    }
    if (is_head && get) {
        m->route = get;
        return 0;
    }
    for (size_t i = 0; i < n->nhandlers; i++) {
        append_allow(m->allow, sizeof(m->allow), n->handlers[i].method);
        if (strcmp(n->handlers[i].method, "GET") == 0)
            append_allow(m->allow, sizeof(m->allow), "HEAD");
    }
    return -405;
}
