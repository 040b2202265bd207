/* SPDX-License-Identifier: MIT */
/*
 * A growable byte buffer with a cap set when it is made (curl's dynbuf):
 * growing past the cap fails with MICA_ELIMIT instead of eating memory, so
 * every buffer that fills from the network has a stated bound. Bytes live in
 * data[off, len); consuming from the front moves `off`, and the buffer
 * compacts itself when it must grow.
 *
 *     mica__buf_t b;
 *     mica__buf_init(&b, 64 * 1024);            // never more than 64 KiB
 *     if ((rc = mica__buf_append(&b, p, n)) != 0) return rc;   // ELIMIT, ENOMEM
 *     write(fd, mica__buf_data(&b), mica__buf_len(&b));
 *     mica__buf_free(&b);
 */
#ifndef MICA_COMMON_BUF_H
#define MICA_COMMON_BUF_H

#include <stddef.h>

typedef struct mica__buf {
    char *data;
    size_t off; /* first unconsumed byte */
    size_t len; /* end of the bytes (off <= len <= cap) */
    size_t cap; /* allocated */
    size_t max; /* the cap: data never grows beyond it */
} mica__buf_t;

/* An empty buffer that will hold at most `max` bytes. Allocates nothing. */
void mica__buf_init(mica__buf_t *b, size_t max);
/* Frees the memory; the buffer is empty and may be used again. */
void mica__buf_free(mica__buf_t *b);
/* Empties the buffer, keeping its memory. */
void mica__buf_reset(mica__buf_t *b);

/*
 * Makes room for `n` more bytes after the end and returns where they go
 * (commit them with mica__buf_commit), or NULL with *err = MICA_ELIMIT
 * (len + n over the cap) or MICA_ENOMEM.
 */
char *mica__buf_reserve(mica__buf_t *b, size_t n, int *err);
/* Adds `n` bytes written into the reserved space to the end. */
void mica__buf_commit(mica__buf_t *b, size_t n);
/* Appends `n` bytes. Returns 0, MICA_ELIMIT or MICA_ENOMEM (nothing appended). */
int mica__buf_append(mica__buf_t *b, const void *p, size_t n);
/* Drops `n` bytes from the front (n <= mica__buf_len). */
void mica__buf_consume(mica__buf_t *b, size_t n);

static inline char *mica__buf_data(const mica__buf_t *b)
{
    return b->data + b->off;
}

static inline size_t mica__buf_len(const mica__buf_t *b)
{
    return b->len - b->off;
}

#endif /* MICA_COMMON_BUF_H */
