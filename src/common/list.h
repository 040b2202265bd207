/* SPDX-License-Identifier: MIT */
/*
 * Intrusive circular doubly-linked list with a sentinel head (the Linux
 * kernel's list_head, libuv's queue.h): a node lives inside the element, so
 * linking and unlinking never allocate, and unlinking needs no list pointer.
 *
 *     typedef struct conn { ...; mica__list_t link; } conn_t;
 *     mica__list_t conns;  mica__list_init(&conns);
 *     mica__list_push_back(&conns, &c->link);
 *     mica__list_foreach_safe(n, next, &conns) {
 *         conn_t *c = mica__list_entry(n, conn_t, link); ...
 *     }
 */
#ifndef MICA_COMMON_LIST_H
#define MICA_COMMON_LIST_H

#include <stdbool.h>
#include <stddef.h>

/* include/mica/sync.h embeds this same struct in mica_event_t and
 * mica_once_t (as libuv's uv.h does with struct uv__queue); whichever header
 * comes first defines it. Keep the two definitions identical. */
#ifndef MICA__LIST_DEFINED
#define MICA__LIST_DEFINED
struct mica__list {
    struct mica__list *prev, *next;
};
#endif
typedef struct mica__list mica__list_t;

/* The element that contains list node `node` as its field `member`. */
#define mica__list_entry(node, type, member) ((type *)((char *)(node) - offsetof(type, member)))

/* Iterates `n` over the nodes of `head`; the _safe form allows unlinking `n`. */
#define mica__list_foreach(n, head) for (mica__list_t *n = (head)->next; n != (head); n = n->next)
#define mica__list_foreach_safe(n, nx, head)                                                      \
    for (mica__list_t *n = (head)->next, *nx = n->next; n != (head); n = nx, nx = n->next)

/* Makes `l` an empty list (a head), or marks a node as on no list. */
static inline void mica__list_init(mica__list_t *l)
{
    l->prev = l->next = l;
}

static inline bool mica__list_empty(const mica__list_t *l)
{
    return l->next == l;
}

/* Whether node `n` is on a list (it was initialized or removed since otherwise). */
static inline bool mica__list_linked(const mica__list_t *n)
{
    return n->next != n && n->next != NULL;
}

static inline void mica__list_insert_after(mica__list_t *at, mica__list_t *n)
{
    n->prev = at;
    n->next = at->next;
    at->next->prev = n;
    at->next = n;
}

static inline void mica__list_push_back(mica__list_t *head, mica__list_t *n)
{
    mica__list_insert_after(head->prev, n);
}

static inline void mica__list_push_front(mica__list_t *head, mica__list_t *n)
{
    mica__list_insert_after(head, n);
}

/* Unlinks `n` from its list and leaves it on none (safe to remove twice). */
static inline void mica__list_remove(mica__list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    mica__list_init(n);
}

/* Unlinks and returns the first node, or NULL when empty. */
static inline mica__list_t *mica__list_pop_front(mica__list_t *head)
{
    if (mica__list_empty(head))
        return NULL;
    mica__list_t *n = head->next;
    mica__list_remove(n);
    return n;
}

/* The first node, or NULL when empty. */
static inline mica__list_t *mica__list_first(const mica__list_t *head)
{
    return mica__list_empty(head) ? NULL : head->next;
}

#endif /* MICA_COMMON_LIST_H */
