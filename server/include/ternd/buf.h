/*
 * buf.h -- a growable byte buffer with a read offset.
 *
 * Bytes live in data[pos .. len); appends go at len, reads consume from pos.
 * The buffer owns data (malloc); tn_buf_free releases it. Not thread-safe.
 */
#ifndef TERND_BUF_H
#define TERND_BUF_H

#include <stddef.h>
#include <ternd/core.h>

struct tn_buf {
    char *data;
    size_t pos; /* first unread byte */
    size_t len; /* end of valid bytes */
    size_t cap; /* allocated size */
};

#define TN_BUF_INIT {NULL, 0, 0, 0}

static inline char *tn_buf_rptr(const struct tn_buf *b) { return b->data + b->pos; }
static inline size_t tn_buf_rlen(const struct tn_buf *b) { return b->len - b->pos; }
static inline char *tn_buf_wptr(const struct tn_buf *b) { return b->data + b->len; }
static inline size_t tn_buf_wlen(const struct tn_buf *b) { return b->cap - b->len; }

/* Make room for at least n more bytes after len (may move data to the front
 * or realloc). Returns 0 or TN_ENOMEM. */
TN_API int tn_buf_reserve(struct tn_buf *b, size_t n);
TN_API int tn_buf_append(struct tn_buf *b, const void *p, size_t n);
TN_API int tn_buf_printf(struct tn_buf *b, const char *fmt, ...) TN_PRINTF(2, 3);
/* Mark n bytes (n <= rlen) as read; resets to empty when all are read. */
TN_API void tn_buf_consume(struct tn_buf *b, size_t n);
/* Mark n bytes written directly at wptr (after a reserve). */
static inline void tn_buf_commit(struct tn_buf *b, size_t n) { b->len += n; }
TN_API void tn_buf_reset(struct tn_buf *b);
/* Release memory beyond `keep` bytes of capacity when the buffer is empty. */
TN_API void tn_buf_shrink(struct tn_buf *b, size_t keep);
TN_API void tn_buf_free(struct tn_buf *b);

#endif
