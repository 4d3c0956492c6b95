/*
 * buf.c -- growable byte buffers with a read offset (see ternd/buf.h).
 * Reserving first slides unread bytes to the front when that makes room,
 * so a buffer that is read as fast as it is filled never grows.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

#define BUF_MIN_CAP 256

int tn_buf_reserve(struct tn_buf *b, size_t n)
{
    size_t used, want, cap;
    char *p;

    if (b->cap - b->len >= n)
        return 0;
    used = b->len - b->pos;
    if (n > SIZE_MAX - used)
        return TN_ENOMEM;
    want = used + n;
    /* Slide the unread bytes to the front first: a realloc would copy them
     * anyway, and often the freed head is room enough. */
    if (b->pos > 0) {
        memmove(b->data, b->data + b->pos, used);
        b->pos = 0;
        b->len = used;
        if (b->cap >= want)
            return 0;
    }
    cap = b->cap ? b->cap : BUF_MIN_CAP;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    p = realloc(b->data, cap);
    if (!p)
        return TN_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int tn_buf_append(struct tn_buf *b, const void *p, size_t n)
{
    int rc;

    if (n == 0)
        return 0;
    rc = tn_buf_reserve(b, n);
    if (rc != 0)
        return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int tn_buf_printf(struct tn_buf *b, const char *fmt, ...)
{
    va_list ap;
    size_t need = 128; /* first try in this much room; most lines fit */
    int n, rc, tries;

    for (tries = 0; tries < 2; tries++) {
        rc = tn_buf_reserve(b, need);
        if (rc != 0)
            return rc;
        va_start(ap, fmt);
        n = vsnprintf(tn_buf_wptr(b), tn_buf_wlen(b), fmt, ap);
        va_end(ap);
        if (n < 0)
            return TN_EINVAL;
        if ((size_t)n < tn_buf_wlen(b)) {
            b->len += (size_t)n;
            return 0;
        }
        need = (size_t)n + 1;
    }
    return TN_ENOMEM;
}

void tn_buf_consume(struct tn_buf *b, size_t n)
{
    if (n > b->len - b->pos)
        n = b->len - b->pos;
    b->pos += n;
    if (b->pos == b->len)
        b->pos = b->len = 0;
}

void tn_buf_reset(struct tn_buf *b)
{
    b->pos = b->len = 0;
}

void tn_buf_shrink(struct tn_buf *b, size_t keep)
{
    char *p;

    if (b->pos != b->len || b->cap <= keep)
        return;
    b->pos = b->len = 0;
    if (keep == 0) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
        return;
    }
    p = realloc(b->data, keep);
    if (p) {
        b->data = p;
        b->cap = keep;
    }
}

void tn_buf_free(struct tn_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->pos = b->len = b->cap = 0;
}
