/*
 * diskq.c -- the broker's crash-safe disk queue: append-only segment files
 * of crc-checked records, a metadata file replaced atomically, and the
 * recovery that makes a crash (of the process or the machine) lose at most
 * what was not yet synced. See diskq.h for the format and the guarantees.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <ternd/error.h>
#include <ternd/log.h>

#include "diskq.h"

#define LOG_WHO "broker"
#define HDR_SIZE 8             /* [4B length][4B crc] */
#define READ_CHUNK (64 * 1024) /* bytes read ahead per pread */
#define FNAME_MAX (TN_DISKQ_NAME_MAX + 40)
#define META_MAX 256                  /* the metadata text is far shorter */
#define POS_LIMIT ((uint64_t)1 << 62) /* saner than any real offset */

/* A read-ahead window over one file: bytes [base, base + len) are in buf. */
struct rd {
    int fd;
    unsigned char *buf;
    size_t cap;
    uint64_t base;
    size_t len;
};

struct tn_diskq {
    char *name;
    int dirfd;
    struct tn_diskq_opts o;

    /* Positions, persisted in the metadata. Records live in files
     * rfile..wfile, from rpos in rfile up to wpos in wfile. */
    uint32_t rfile, wfile;
    uint64_t rpos, wpos;
    uint64_t depth;

    int wfd;       /* write segment, -1 when not open */
    unsigned char *wbuf; /* records put but not yet written (o.write_buffer) */
    size_t wlen;         /* their bytes: the segment file ends at wpos - wlen */
    int werr;            /* the last flush failed with this (0: none) */
    int glinked;         /* on o.group's dirty list */
    struct tn_diskq *gnext;
    struct rd r;   /* read segment (r.fd -1 when not open) */
    uint64_t rend; /* end of the read segment when rfile < wfile */
    int peeked;    /* a record is peeked: [rpos, peek_next) */
    uint64_t peek_next;
    size_t peek_len;
    const unsigned char *peek_data;

    /* Records taken and not yet released (tn_diskq_take), oldest first.
     * The committed position is the oldest one's (cfile, cpos), copied
     * here whenever the head changes so that a close or a sync never
     * touches a hold; with none held it is the read position. */
    struct tn_diskq_hold *hhead, *htail;
    uint64_t nheld;
    uint64_t rseq;  /* records taken, advanced or skipped past since open */
    uint32_t cfile; /* the oldest held record: segment, */
    uint64_t cpos;  /* offset */
    uint64_t cseq;  /* and rseq when it was taken */
    uint32_t gen;   /* holds of another generation are not ours (empty) */

    uint32_t del_from; /* segments below the committed one from here on are deleted at sync */
    int data_dirty;    /* written since the last fsync of wfd */
    int meta_dirty;    /* positions changed since the metadata was written */
    uint32_t ops;      /* puts and commit moves since the last sync */
    struct sync_job *job; /* the automatic sync running, or NULL */
    int64_t dirty_since;
    struct tn_diskq_stats st;
};

enum { FR_OK, FR_END, FR_BADLEN, FR_BADCRC, FR_IOERR };

#define SYNC_THREADS_MAX 8      /* automatic syncs running at once, all queues */
#define SYNC_STACK (256 * 1024) /* the worker needs a few hundred bytes */
static atomic_int sync_threads; /* running now */
static atomic_uint next_gen;    /* generations of queues and their holds */

/* An automatic sync run on a thread of its own (opts.async_sync): the
 * fsyncs and the metadata write of a snapshot taken on the queue's
 * thread. The worker touches only this and q's immutable dirfd and name;
 * the queue's thread reaps it (sync_finish) and then deletes the segments
 * the new metadata no longer needs. */
struct sync_job {
    pthread_t th;
    const struct tn_diskq *q;
    int fd;       /* a dup of the write segment to fsync, or -1 */
    int meta_len; /* 0: no metadata to write */
    char meta[META_MAX];
    uint32_t del_upto; /* rfile of the snapshot */
    int rc, fsyncs;
    atomic_int done;
};

/* ---- small helpers --------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void seg_name(const struct tn_diskq *q, uint32_t n, char *buf)
{
    snprintf(buf, FNAME_MAX, "%s.diskqueue.%06" PRIu32 ".dat", q->name, n);
}

static void meta_name(const struct tn_diskq *q, char *buf, int tmp)
{
    snprintf(buf, FNAME_MAX, "%s.diskqueue.meta.dat%s", q->name, tmp ? ".tmp" : "");
}

/* Segment number of a file name of this queue, or -1. */
static int64_t seg_number(const struct tn_diskq *q, const char *fname)
{
    size_t nl = strlen(q->name);
    const char *p;
    char *end;
    unsigned long long n;

    if (strncmp(fname, q->name, nl) != 0 || strncmp(fname + nl, ".diskqueue.", 11) != 0)
        return -1;
    p = fname + nl + 11;
    if (*p < '0' || *p > '9')
        return -1;
    errno = 0;
    n = strtoull(p, &end, 10);
    if (errno || end - p < 6 || strcmp(end, ".dat") != 0 || n > UINT32_MAX)
        return -1;
    return (int64_t)n;
}

static int do_fsync(struct tn_diskq *q, int fd)
{
    q->st.fsyncs++;
    return fsync(fd) < 0 ? -errno : 0;
}

/* ---- the committed position ---------------------------------------------- */

/* A fresh generation: holds taken before are no longer ours. Never 0. */
static uint32_t new_gen(void)
{
    uint32_t g;

    while ((g = atomic_fetch_add(&next_gen, 1) + 1) == 0)
        ;
    return g;
}

/* The segment the committed position is in: nothing below it is needed. */
static uint32_t commit_file(const struct tn_diskq *q)
{
    return q->hhead != NULL ? q->cfile : q->rfile;
}

/* The position the metadata records and the records from there on: the
 * unread ones and those read since the oldest held one. */
static void committed(const struct tn_diskq *q, uint32_t *file, uint64_t *pos, uint64_t *depth)
{
    *file = q->rfile;
    *pos = q->rpos;
    *depth = q->depth;
    if (q->hhead != NULL) {
        *file = q->cfile;
        *pos = q->cpos;
        *depth += q->rseq - q->cseq;
    }
}

/* ---- the write buffer ---------------------------------------------------- */

static void group_link(struct tn_diskq *q)
{
    struct tn_diskq_group *g = q->o.group;

    if (g == NULL || q->glinked)
        return;
    q->glinked = 1;
    q->gnext = g->dirty;
    g->dirty = q;
}

static void group_unlink(struct tn_diskq *q)
{
    struct tn_diskq **pp;

    if (!q->glinked)
        return;
    for (pp = &q->o.group->dirty; *pp != q; pp = &(*pp)->gnext)
        ;
    *pp = q->gnext;
    q->gnext = NULL;
    q->glinked = 0;
}

static int write_all(int fd, struct iovec *iov, int cnt, uint64_t off);
static void sync_finish(struct tn_diskq *q, int wait);

/* Write the buffered records to the segment with one write. On failure the
 * part written is cut off again and the records stay buffered (retried by
 * the next flush); puts fail meanwhile (werr). */
static int wbuf_flush(struct tn_diskq *q)
{
    uint64_t off = q->wpos - q->wlen;
    struct iovec v;
    int rc;

    if (q->wlen == 0)
        return 0;
    v.iov_base = q->wbuf;
    v.iov_len = q->wlen;
    q->st.writes++;
    rc = q->wfd < 0 ? TN_EINVAL : write_all(q->wfd, &v, 1, off);
    if (rc < 0) {
        if (q->wfd >= 0 && ftruncate(q->wfd, (off_t)off) < 0)
            tn_log_error(LOG_WHO, "disk queue %s: cannot cut a failed write: %s", q->name,
                         strerror(errno));
        if (q->werr == 0)
            tn_log_error(LOG_WHO, "disk queue %s: writing %zu buffered bytes: %s", q->name, q->wlen,
                         tn_strerror(rc));
        q->werr = rc;
        group_link(q);
        return rc;
    }
    q->wlen = 0;
    q->werr = 0;
    return 0;
}

/* Flush every queue of g with records buffered (those of a failed flush stay listed). */
int tn_diskq_group_flush(struct tn_diskq_group *g)
{
    struct tn_diskq *q, *list = g->dirty;
    int rc, first = 0;

    g->dirty = NULL;
    while ((q = list) != NULL) {
        list = q->gnext;
        q->gnext = NULL;
        q->glinked = 0;
        rc = wbuf_flush(q);
        if (rc < 0 && first == 0)
            first = rc;
    }
    return first;
}

int tn_diskq_flush(struct tn_diskq *q)
{
    return wbuf_flush(q);
}

/* Before metadata is written: the records of every queue of the group are
 * written first, so metadata never counts a record moved from another
 * queue of the group as gone while its copy is only in this process's memory. */
static int flush_for_sync(struct tn_diskq *q)
{
    if (q->o.group != NULL)
        tn_diskq_group_flush(q->o.group); /* others' errors are theirs to retry */
    return wbuf_flush(q);
}

int tn_diskq_name_ok(const char *name)
{
    size_t i, n;

    if (name == NULL)
        return 0;
    n = strlen(name);
    if (n == 0 || n > TN_DISKQ_NAME_MAX || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return 0;
    for (i = 0; i < n; i++)
        if (name[i] == '/' || (unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return 0;
    return 1;
}

/* ---- reading frames -------------------------------------------------------- */

/* Make [pos, pos + n) of the file available (never reading at or past
 * limit). 1 and *p on success, 0 when the file ends first, -errno. */
static int rd_get(struct rd *r, uint64_t pos, size_t n, uint64_t limit, const unsigned char **p)
{
    size_t want;
    ssize_t got;

    if (pos >= r->base && pos + n <= r->base + r->len) {
        *p = r->buf + (pos - r->base);
        return 1;
    }
    if (pos + n > limit)
        return 0;
    if (n > r->cap) {
        /* Allocated on first use: a queue that is only written to (or
         * never overflows) costs no read buffer. */
        size_t cap = n > READ_CHUNK ? n : READ_CHUNK;
        unsigned char *nb = realloc(r->buf, cap);

        if (nb == NULL)
            return TN_ENOMEM;
        r->buf = nb;
        r->cap = cap;
    }
    want = limit - pos < r->cap ? (size_t)(limit - pos) : r->cap;
    r->base = pos;
    r->len = 0;
    while (r->len < want) {
        got = pread(r->fd, r->buf + r->len, want - r->len, (off_t)(pos + r->len));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -errno;
        if (got == 0)
            break;
        r->len += (size_t)got;
    }
    if (r->len < n)
        return 0;
    *p = r->buf;
    return 1;
}

/* ---- the record crc: zlib's crc32, computed faster ------------------------ */

/* Every message is checksummed twice (put and read), and zlib 1.2's
 * crc32 was a quarter of the broker's profile. The same CRC-32 (IEEE,
 * reflected) is computed here by slicing-by-8 table lookups, and on x86-64
 * CPUs with PCLMULQDQ by folding 16-byte blocks with carry-less multiplies
 * first: with a block read little-endian, bit i is the coefficient of
 * x^(127-i); folding block A onto the next block B replaces A*x^128 by a
 * congruent polynomial of degree < 96, so the CRC of what remains is the
 * same. Tables and constants are computed once, on first open. */
static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CRC_CLMUL 1
static int crc_clmul_ok;
static uint64_t crc_k_lo, crc_k_hi; /* fold constants, see crc_init */
#endif

/* x^n mod P (P = 0x104c11db7), bit j the coefficient of x^j. */
static uint32_t crc_xpow(unsigned n)
{
    uint32_t r = 1;

    while (n-- > 0)
        r = r & 0x80000000u ? (r << 1) ^ 0x04c11db7u : r << 1;
    return r;
}

/* A polynomial of degree < 32 as a 64-bit operand of a reflected
 * carry-less multiply: bit m the coefficient of x^(63-m). */
static uint64_t crc_refl64(uint32_t poly)
{
    uint64_t k = 0;
    int j;

    for (j = 0; j < 32; j++)
        if (poly & (1u << j))
            k |= (uint64_t)1 << (63 - j);
    return k;
}

static void crc_init(void)
{
    uint32_t i, c;
    int k;

    for (i = 0; i < 256; i++) {
        for (c = i, k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0xedb88320u : c >> 1;
        crc_tab[0][i] = c;
    }
    for (k = 1; k < 8; k++)
        for (i = 0; i < 256; i++)
            crc_tab[k][i] = (crc_tab[k - 1][i] >> 8) ^ crc_tab[0][crc_tab[k - 1][i] & 0xff];
#ifdef CRC_CLMUL
    /* A block's low 64 bits L stand for L(x)*x^64, its high ones H for
     * H(x): A*x^128 = L*x^192 + H*x^128. A reflected 64x64 multiply yields
     * x times the product, hence x^191 and x^127. */
    crc_k_lo = crc_refl64(crc_xpow(191));
    crc_k_hi = crc_refl64(crc_xpow(127));
    __builtin_cpu_init();
    crc_clmul_ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#else
    (void)crc_xpow;
    (void)crc_refl64;
#endif
}

/* The table-driven CRC register update (no inversions). */
static uint32_t crc_table(uint32_t crc, const unsigned char *p, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;

        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_tab[7][w & 0xff] ^ crc_tab[6][(w >> 8) & 0xff] ^ crc_tab[5][(w >> 16) & 0xff] ^
              crc_tab[4][(w >> 24) & 0xff] ^ crc_tab[3][(w >> 32) & 0xff] ^
              crc_tab[2][(w >> 40) & 0xff] ^ crc_tab[1][(w >> 48) & 0xff] ^ crc_tab[0][w >> 56];
    }
#endif
    for (; n > 0; p++, n--)
        crc = (crc >> 8) ^ crc_tab[0][(crc ^ *p) & 0xff];
    return crc;
}

#ifdef CRC_CLMUL
/* n >= 16: the register goes into the first 4 bytes, blocks are folded
 * onto the next one, and the last block and the tail go through the table. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_fold(uint32_t crc,
                                                                  const unsigned char *p, size_t n)
{
    __m128i k = _mm_set_epi64x((long long)crc_k_hi, (long long)crc_k_lo);
    __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)p),
                              _mm_cvtsi32_si128((int)crc));
    unsigned char last[16];

    for (p += 16, n -= 16; n >= 16; p += 16, n -= 16)
        v = _mm_xor_si128(
            _mm_xor_si128(_mm_clmulepi64_si128(v, k, 0x00), _mm_clmulepi64_si128(v, k, 0x11)),
            _mm_loadu_si128((const __m128i *)(const void *)p));
    _mm_storeu_si128((__m128i *)(void *)last, v);
    return crc_table(crc_table(0, last, 16), p, n);
}
#endif

/* crc32(crc, p, n) as zlib computes it (also for n == 0). */
static uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
#ifdef CRC_CLMUL
    if (n >= 32 && crc_clmul_ok)
        return ~crc_fold(~crc, p, n);
#endif
    return ~crc_table(~crc, p, n);
}

static uint32_t frame_crc(const unsigned char *hdr, const unsigned char *payload, uint32_t len)
{
    return crc_update(crc_update(0, hdr, 4), payload, len);
}

/* Parse the frame at pos (ending at or before limit). FR_OK with *len (and
 * *payload when check_crc); FR_END at limit; FR_BADLEN when the length is
 * out of bounds or the frame runs past limit; FR_BADCRC; FR_IOERR (*err). */
static int read_frame(const struct tn_diskq *q, struct rd *r, uint64_t pos, uint64_t limit,
                      int check_crc, const unsigned char **payload, uint32_t *len, int *err)
{
    const unsigned char *h;
    int rc;

    if (pos >= limit)
        return FR_END;
    rc = rd_get(r, pos, HDR_SIZE, limit, &h);
    if (rc <= 0) {
        *err = rc;
        return rc < 0 ? FR_IOERR : FR_BADLEN;
    }
    *len = get_be32(h);
    if (*len < q->o.min_msg_size || *len > q->o.max_msg_size || pos + HDR_SIZE + *len > limit)
        return FR_BADLEN;
    if (!check_crc)
        return FR_OK;
    rc = rd_get(r, pos, HDR_SIZE + (size_t)*len, limit, &h);
    if (rc <= 0) {
        *err = rc;
        return rc < 0 ? FR_IOERR : FR_BADLEN;
    }
    if (frame_crc(h, h + HDR_SIZE, *len) != get_be32(h + 4))
        return FR_BADCRC;
    *payload = h + HDR_SIZE;
    return FR_OK;
}

/* Walk valid frames of fd from pos to limit; *count of them, returns where
 * they end (the first invalid frame or limit). */
static uint64_t scan_frames(const struct tn_diskq *q, int fd, uint64_t pos, uint64_t limit,
                            int check_crc, uint64_t *count, int *err)
{
    struct rd r = {fd, NULL, 0, 0, 0};
    const unsigned char *payload;
    uint32_t len;
    int rc;

    *err = 0;
    while ((rc = read_frame(q, &r, pos, limit, check_crc, &payload, &len, err)) == FR_OK) {
        pos += HDR_SIZE + (uint64_t)len;
        (*count)++;
    }
    free(r.buf);
    return pos;
}

/* ---- metadata -------------------------------------------------------------- */

/* The read position recorded is the committed one (see committed()). */
static int meta_format(const struct tn_diskq *q, char *buf)
{
    uint32_t cf;
    uint64_t cp, depth;
    int n;

    committed(q, &cf, &cp, &depth);
    n = snprintf(buf, META_MAX,
                 "ternd-diskq 1\n%" PRIu64 "\n%" PRIu32 ",%" PRIu64 "\n%" PRIu32 ",%" PRIu64 "\n",
                 depth, cf, cp, q->wfile, q->wpos);
    return n + snprintf(buf + n, META_MAX - (size_t)n, "crc %08" PRIx32 "\n",
                        (uint32_t)crc32(0L, (const unsigned char *)buf, (uInt)n));
}

/* Write the metadata to a temporary file, fsync it, rename it over the old
 * one and fsync the directory: a crash leaves the old or the new, whole. */
static int meta_store(const struct tn_diskq *q, const char *text, int n, int *fsyncs)
{
    char tmp[FNAME_MAX], fin[FNAME_MAX];
    int fd, rc = 0;
    ssize_t w;

    meta_name(q, tmp, 1);
    meta_name(q, fin, 0);
    fd = openat(q->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    w = write(fd, text, (size_t)n);
    if (w != n)
        rc = w < 0 ? -errno : TN_EIO;
    if (rc == 0) {
        (*fsyncs)++;
        if (fsync(fd) < 0)
            rc = -errno;
    }
    close(fd);
    if (rc == 0 && renameat(q->dirfd, tmp, q->dirfd, fin) < 0)
        rc = -errno;
    if (rc == 0) {
        (*fsyncs)++;
        if (fsync(q->dirfd) < 0)
            rc = -errno;
    }
    return rc;
}

static int meta_write(struct tn_diskq *q)
{
    char text[META_MAX], fin[FNAME_MAX];
    int n = meta_format(q, text), fsyncs = 0;
    int rc = meta_store(q, text, n, &fsyncs);

    q->st.fsyncs += (uint64_t)fsyncs;
    meta_name(q, fin, 0);
    if (rc != 0)
        tn_log_error(LOG_WHO, "disk queue %s: cannot write %s: %s", q->name, fin, tn_strerror(rc));
    return rc;
}

/* Load the metadata: 0, TN_ENOTFOUND (no file), TN_ECORRUPT, or -errno when
 * it cannot be read (then nothing is rebuilt: the open fails). */
static int meta_read(struct tn_diskq *q)
{
    char text[META_MAX + 1], fname[FNAME_MAX], *crcline;
    uint64_t depth, rpos, wpos;
    uint32_t rfile, wfile, crc;
    ssize_t n;
    int fd, used = -1;

    meta_name(q, fname, 0);
    fd = openat(q->dirfd, fname, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? TN_ENOTFOUND : -errno; /* unreadable is not damaged */
    n = read(fd, text, META_MAX);
    if (n < 0)
        n = -errno;
    close(fd);
    if (n < 0)
        return (int)n;
    if (n == 0)
        return TN_ECORRUPT;
    text[n] = '\0';
    crcline = strstr(text, "crc ");
    if (crcline == NULL || sscanf(crcline, "crc %8" SCNx32 "\n", &crc) != 1 ||
        crc != (uint32_t)crc32(0L, (const unsigned char *)text, (uInt)(crcline - text)))
        return TN_ECORRUPT;
    *crcline = '\0';
    if (sscanf(text,
               "ternd-diskq 1\n%" SCNu64 "\n%" SCNu32 ",%" SCNu64 "\n%" SCNu32 ",%" SCNu64 "\n%n",
               &depth, &rfile, &rpos, &wfile, &wpos, &used) != 5 ||
        used != crcline - text)
        return TN_ECORRUPT;
    if (rfile > wfile || (rfile == wfile && rpos > wpos) || wpos >= POS_LIMIT ||
        rpos >= POS_LIMIT || depth >= POS_LIMIT)
        return TN_ECORRUPT;
    q->depth = depth;
    q->rfile = rfile;
    q->rpos = rpos;
    q->wfile = wfile;
    q->wpos = wpos;
    return 0;
}

/* ---- segment files --------------------------------------------------------- */

/* Walk the segment files of this queue in the directory, removing those
 * numbered below `below` (UINT32_MAX + 1: all); the lowest and highest
 * number of the others go to *lo and *hi. Returns 1 when any was kept, 0
 * when none, or -errno (of the listing, or of the first removal failed). */
static int scan_dir(const struct tn_diskq *q, int64_t below, uint32_t *lo, uint32_t *hi)
{
    struct dirent *de;
    DIR *d;
    int fd, found = 0, err = 0;
    int64_t n;

    fd = openat(q->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return -errno;
    }
    while ((de = readdir(d)) != NULL) {
        n = seg_number(q, de->d_name);
        if (n < 0)
            continue;
        if (n < below) {
            if (unlinkat(q->dirfd, de->d_name, 0) < 0 && errno != ENOENT && err == 0)
                err = -errno;
            continue;
        }
        if (!found || (uint32_t)n < *lo)
            *lo = (uint32_t)n;
        if (!found || (uint32_t)n > *hi)
            *hi = (uint32_t)n;
        found = 1;
    }
    closedir(d);
    return err < 0 ? err : found;
}

#define ALL_SEGMENTS ((int64_t)UINT32_MAX + 1)

/* Remove every segment (and with meta, the metadata) of this queue found in
 * the directory. 0 or the first -errno. */
static int remove_files(const struct tn_diskq *q, int meta)
{
    char fname[FNAME_MAX];
    uint32_t lo = 0, hi = 0;
    int err;

    err = scan_dir(q, ALL_SEGMENTS, &lo, &hi);
    if (meta) {
        meta_name(q, fname, 0);
        if (unlinkat(q->dirfd, fname, 0) < 0 && errno != ENOENT && err == 0)
            err = -errno;
        meta_name(q, fname, 1);
        unlinkat(q->dirfd, fname, 0);
    }
    return err;
}

static int seg_exists(const struct tn_diskq *q, uint32_t n)
{
    char fname[FNAME_MAX];

    seg_name(q, n, fname);
    return faccessat(q->dirfd, fname, F_OK, 0) == 0;
}

/* Open segment n for writing. A fresh segment should not exist yet: one
 * that does is a leftover no metadata counts, and is truncated. */
static int open_write(struct tn_diskq *q, uint32_t n, int fresh)
{
    char fname[FNAME_MAX];
    int fd;

    seg_name(q, n, fname);
    fd = openat(q->dirfd, fname, O_RDWR | O_CREAT | O_CLOEXEC | (fresh ? O_EXCL : 0), 0640);
    if (fd < 0 && fresh && errno == EEXIST) {
        tn_log_warn(LOG_WHO, "disk queue %s: stale segment %s truncated", q->name, fname);
        fd = openat(q->dirfd, fname, O_RDWR | O_TRUNC | O_CLOEXEC, 0640);
    }
    if (fd < 0) {
        int err = -errno;

        tn_log_error(LOG_WHO, "disk queue %s: cannot open %s: %s", q->name, fname,
                     tn_strerror(err));
        return err;
    }
    q->wfd = fd;
    return 0;
}

static void close_read(struct tn_diskq *q)
{
    if (q->r.fd >= 0)
        close(q->r.fd);
    q->r.fd = -1;
    q->r.len = 0;
    q->peeked = 0;
}

/* Open the read segment. 0, TN_ENOTFOUND when it is missing, -errno. */
static int open_read(struct tn_diskq *q)
{
    char fname[FNAME_MAX];
    struct stat sb;

    seg_name(q, q->rfile, fname);
    q->r.fd = openat(q->dirfd, fname, O_RDONLY | O_CLOEXEC);
    if (q->r.fd < 0)
        return errno == ENOENT ? TN_ENOTFOUND : -errno;
    q->r.len = 0;
    if (q->rfile < q->wfile) {
        if (fstat(q->r.fd, &sb) < 0) {
            int err = -errno;

            close_read(q);
            return err;
        }
        q->rend = (uint64_t)sb.st_size;
    }
    return 0;
}

/* The read position moves to the start of the next segment; the finished
 * one is deleted by the next sync once the metadata no longer needs it
 * (once the committed position has left it too). */
static void next_read_file(struct tn_diskq *q)
{
    close_read(q);
    q->rfile++;
    q->rpos = 0;
    if (q->hhead == NULL) /* else the committed position stays where it is */
        q->meta_dirty = 1;
}

/* ---- recovery -------------------------------------------------------------- */

/* Count the frames between the read and the write position again, after
 * anything that made the recorded depth unreliable. Frames are counted by
 * their length only: a frame failing its crc is counted here and removed
 * from the depth when the reader skips it. */
static void recount_depth(struct tn_diskq *q)
{
    char fname[FNAME_MAX];
    struct stat sb;
    uint64_t count = 0, start, limit;
    uint32_t n;
    int fd, err;

    wbuf_flush(q); /* the count reads the files; an error leaves records out of it */
    for (n = q->rfile;; n++) {
        seg_name(q, n, fname);
        fd = openat(q->dirfd, fname, O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && fstat(fd, &sb) == 0) {
            start = n == q->rfile ? q->rpos : 0;
            limit = n == q->wfile ? q->wpos : (uint64_t)sb.st_size;
            scan_frames(q, fd, start, limit, 0, &count, &err);
        }
        if (fd >= 0)
            close(fd);
        if (n == q->wfile)
            break;
    }
    if (count != q->depth)
        tn_log_warn(LOG_WHO, "disk queue %s: depth recounted: %" PRIu64 " (was %" PRIu64 ")",
                    q->name, count, q->depth);
    q->depth = count;
    q->meta_dirty = 1;
}

/* Check one write segment from `start`: keep the complete records, cut off
 * a torn tail. Adds the records kept to *n. -errno or 0. */
static int check_write_segment(struct tn_diskq *q, uint64_t start, uint64_t size, uint64_t *n)
{
    char fname[FNAME_MAX];
    uint64_t end;
    int err;

    end = scan_frames(q, q->wfd, start, size, 1, n, &err);
    if (err < 0)
        return err;
    if (end < size) {
        seg_name(q, q->wfile, fname);
        tn_log_warn(LOG_WHO,
                    "disk queue %s: %s: torn or corrupt record at offset %" PRIu64 ", %" PRIu64
                    " bytes cut off",
                    q->name, fname, end, size - end);
        q->st.corrupt++;
        if (ftruncate(q->wfd, (off_t)end) < 0)
            return -errno;
        q->data_dirty = 1;
    }
    if (end != q->wpos)
        q->meta_dirty = 1;
    q->wpos = end;
    if (q->rfile == q->wfile && q->rpos > q->wpos)
        q->rpos = q->wpos;
    return 0;
}

/* Check the write segment against the metadata, keep complete records
 * written after it (a crash before the sync) and cut off a torn tail. A
 * segment after it means the crash came after a roll-over: follow it.
 * Returns 1 when the depth must be recounted, 0, or -errno. */
static int recover_tail(struct tn_diskq *q, int rebuild)
{
    char fname[FNAME_MAX];
    struct stat sb;
    uint64_t n = 0, start, from_pos = q->wpos;
    uint32_t from_file = q->wfile;
    int rc, recount = rebuild;

    for (;;) {
        rc = open_write(q, q->wfile, 0);
        if (rc < 0)
            return rc;
        if (fstat(q->wfd, &sb) < 0)
            return -errno;
        start = q->wpos;
        if ((uint64_t)sb.st_size < q->wpos) {
            /* Synced data went missing: keep what is still valid. */
            seg_name(q, q->wfile, fname);
            tn_log_warn(LOG_WHO, "disk queue %s: %s is %jd bytes, metadata says %" PRIu64, q->name,
                        fname, (intmax_t)sb.st_size, q->wpos);
            start = q->rfile == q->wfile ? q->rpos : 0;
            if (start > (uint64_t)sb.st_size)
                start = (uint64_t)sb.st_size;
            recount = 1;
        }
        rc = check_write_segment(q, start, (uint64_t)sb.st_size, &n);
        if (rc < 0)
            return rc;
        if (q->wfile == UINT32_MAX || !seg_exists(q, q->wfile + 1))
            break;
        close(q->wfd);
        q->wfd = -1;
        q->wfile++;
        q->wpos = 0;
        q->meta_dirty = 1;
    }
    if (!recount && n > 0) {
        seg_name(q, from_file, fname);
        q->st.recovered += n;
        q->depth += n;
        tn_log_info(LOG_WHO, "disk queue %s: %" PRIu64 " records recovered after %s:%" PRIu64,
                    q->name, n, fname, from_pos);
    }
    return recount;
}

/* Drop segments below the read segment (already consumed) and note those
 * missing between the read and the write segment. Returns 1 when one is
 * missing (the depth must be recounted). */
static int check_segments(struct tn_diskq *q)
{
    char fname[FNAME_MAX];
    uint32_t lo = 0, hi = 0, n;
    int rc, missing = 0;

    rc = scan_dir(q, q->rfile, &lo, &hi);
    if (rc < 0)
        tn_log_warn(LOG_WHO, "disk queue %s: cannot remove read segments: %s", q->name,
                    tn_strerror(rc));
    q->del_from = q->rfile;
    for (n = q->rfile; n < q->wfile; n++)
        if (!seg_exists(q, n)) {
            seg_name(q, n, fname);
            tn_log_warn(LOG_WHO, "disk queue %s: segment %s is missing, its records are lost",
                        q->name, fname);
            missing = 1;
        }
    return missing;
}

/* Establish the positions: from the metadata, or when it is missing or
 * damaged, from the segment files present. 1: recount needed, 0, -errno. */
static int recover(struct tn_diskq *q)
{
    char fname[FNAME_MAX];
    uint32_t lo = 0, hi = 0;
    int rc, found, recount = 0;

    rc = meta_read(q);
    if (rc < 0 && rc != TN_ENOTFOUND && rc != TN_ECORRUPT) {
        meta_name(q, fname, 0);
        tn_log_error(LOG_WHO, "disk queue %s: cannot read %s: %s", q->name, fname, tn_strerror(rc));
        return rc;
    }
    if (rc != 0) {
        found = scan_dir(q, 0, &lo, &hi);
        if (found < 0)
            return found;
        meta_name(q, fname, 0);
        if (rc == TN_ECORRUPT)
            tn_log_warn(LOG_WHO, "disk queue %s: %s is damaged; rebuilding from the segments",
                        q->name, fname);
        else if (found)
            tn_log_warn(LOG_WHO, "disk queue %s: %s is missing; rebuilding from the segments",
                        q->name, fname);
        q->rfile = found ? lo : 0;
        q->wfile = found ? hi : 0;
        q->rpos = q->wpos = 0;
        q->depth = 0;
        q->meta_dirty = 1;
        recount = found;
    }
    rc = recover_tail(q, recount);
    if (rc < 0)
        return rc;
    return recount | rc | check_segments(q);
}

/* ---- the API --------------------------------------------------------------- */

static int opts_apply(struct tn_diskq_opts *o, const struct tn_diskq_opts *in)
{
    if (in != NULL) {
        *o = *in;
    } else {
        memset(o, 0, sizeof(*o));
        o->sync_every = TN_DISKQ_DEFAULT_SYNC_EVERY;
    }
    if (o->max_bytes_per_file == 0)
        o->max_bytes_per_file = TN_DISKQ_DEFAULT_FILE_SIZE;
    if (o->max_msg_size == 0)
        o->max_msg_size = TN_DISKQ_DEFAULT_MAX_MSG;
    if (o->sync_every == 0)
        o->sync_every = 1;
    if (o->sync_timeout_ms == 0)
        o->sync_timeout_ms = TN_DISKQ_DEFAULT_SYNC_TIMEOUT_MS;
    if (o->max_msg_size > TN_DISKQ_MSG_LIMIT || o->min_msg_size > o->max_msg_size ||
        o->max_bytes_per_file >= POS_LIMIT || o->write_buffer > TN_DISKQ_WRITE_BUFFER_MAX)
        return TN_EINVAL;
    return 0;
}

static void diskq_free(struct tn_diskq *q)
{
    sync_finish(q, 1);
    group_unlink(q);
    free(q->wbuf);
    close_read(q);
    if (q->wfd >= 0)
        close(q->wfd);
    if (q->dirfd >= 0)
        close(q->dirfd);
    free(q->r.buf);
    free(q->name);
    free(q);
}

struct tn_diskq *tn_diskq_open(const char *dir, const char *name, const struct tn_diskq_opts *o,
                               int *err)
{
    struct tn_diskq *q;
    int rc;

    pthread_once(&crc_once, crc_init);
    if (dir == NULL || !tn_diskq_name_ok(name)) {
        *err = TN_EINVAL;
        return NULL;
    }
    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        *err = TN_ENOMEM;
        return NULL;
    }
    q->dirfd = q->wfd = q->r.fd = -1;
    q->gen = new_gen();
    rc = opts_apply(&q->o, o);
    if (rc < 0)
        goto fail;
    q->name = strdup(name);
    if (q->name == NULL) {
        rc = TN_ENOMEM;
        goto fail;
    }
    q->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (q->dirfd < 0) {
        rc = -errno;
        tn_log_error(LOG_WHO, "disk queue %s: cannot open directory %s: %s", name, dir,
                     tn_strerror(rc));
        goto fail;
    }
    rc = recover(q);
    if (rc < 0)
        goto fail;
    if (rc > 0)
        recount_depth(q);
    rc = tn_diskq_sync(q);
    if (rc < 0)
        goto fail;
    return q;
fail:
    *err = rc;
    diskq_free(q);
    return NULL;
}

/* Delete the segments below `upto` that the metadata no longer counts. */
static void drop_read_segments(struct tn_diskq *q, uint32_t upto)
{
    char fname[FNAME_MAX];

    for (; q->del_from < upto; q->del_from++) {
        seg_name(q, q->del_from, fname);
        if (unlinkat(q->dirfd, fname, 0) < 0 && errno != ENOENT)
            tn_log_warn(LOG_WHO, "disk queue %s: cannot remove %s: %s", q->name, fname,
                        strerror(errno));
    }
}

/* ---- automatic syncs on a thread (opts.async_sync) ------------------------ */

static void *sync_main(void *arg)
{
    struct sync_job *j = arg;
    int rc = 0;

    if (j->fd >= 0) {
        j->fsyncs++;
        if (fsync(j->fd) < 0)
            rc = -errno;
        close(j->fd);
    }
    if (rc == 0 && j->meta_len > 0)
        rc = meta_store(j->q, j->meta, j->meta_len, &j->fsyncs);
    j->rc = rc;
    atomic_fetch_sub(&sync_threads, 1);
    atomic_store_explicit(&j->done, 1, memory_order_release);
    return NULL;
}

/* Reap the job when it is done (or, wait: once it is). A failed one leaves
 * the queue dirty, so the next sync does it again. */
static void sync_finish(struct tn_diskq *q, int wait)
{
    struct sync_job *j = q->job;

    if (j == NULL || (!wait && !atomic_load_explicit(&j->done, memory_order_acquire)))
        return;
    pthread_join(j->th, NULL);
    q->job = NULL;
    q->st.fsyncs += (uint64_t)j->fsyncs;
    if (j->rc < 0) {
        q->data_dirty = q->meta_dirty = 1;
        if (q->dirty_since == 0)
            q->dirty_since = mono_ms();
        q->st.sync_errors++;
        tn_log_error(LOG_WHO, "disk queue %s: sync failed: %s", q->name, tn_strerror(j->rc));
    } else {
        if (j->meta_len > 0)
            q->st.syncs++;
        drop_read_segments(q, j->del_upto);
    }
    free(j);
}

static int sync_spawn(struct sync_job *j)
{
    pthread_attr_t a;
    int rc;

    if (pthread_attr_init(&a) != 0)
        return TN_ENOMEM;
    pthread_attr_setstacksize(&a, SYNC_STACK);
    rc = pthread_create(&j->th, &a, sync_main, j);
    pthread_attr_destroy(&a);
    return rc == 0 ? 0 : TN_ENOMEM;
}

/* Write the buffer, then fsync and write the metadata of this moment on a
 * new thread; the queue goes on meanwhile. 0; TN_EAGAIN when
 * SYNC_THREADS_MAX are running (a later operation tries again, and the
 * sync_timeout sync bounds the wait); other <0: sync inline instead. */
static int sync_start(struct tn_diskq *q)
{
    struct sync_job *j;
    int rc;

    if (atomic_fetch_add(&sync_threads, 1) >= SYNC_THREADS_MAX) {
        atomic_fetch_sub(&sync_threads, 1);
        return TN_EAGAIN;
    }
    rc = flush_for_sync(q);
    j = rc < 0 ? NULL : calloc(1, sizeof(*j));
    if (j != NULL) {
        j->q = q;
        j->fd = -1;
        if (q->data_dirty && q->wfd >= 0 && (j->fd = fcntl(q->wfd, F_DUPFD_CLOEXEC, 0)) < 0)
            rc = -errno;
        if (q->meta_dirty)
            j->meta_len = meta_format(q, j->meta);
        j->del_upto = commit_file(q);
        if (rc == 0)
            rc = sync_spawn(j);
    }
    if (j == NULL || rc < 0) {
        atomic_fetch_sub(&sync_threads, 1);
        if (j != NULL && j->fd >= 0)
            close(j->fd);
        free(j);
        return rc < 0 ? rc : TN_ENOMEM;
    }
    q->job = j;
    q->data_dirty = q->meta_dirty = 0;
    q->ops = 0;
    q->dirty_since = 0;
    return 0;
}

/* Count one put or move of the committed position toward the next automatic sync. */
static void note_op(struct tn_diskq *q)
{
    int rc;

    if (q->job != NULL)
        sync_finish(q, 0);
    if (q->dirty_since == 0)
        q->dirty_since = mono_ms();
    if (++q->ops < q->o.sync_every)
        return;
    /* sync_every 1 means "durable before the put returns": never async */
    if (q->o.async_sync && q->o.sync_every > 1) {
        if (q->job != NULL)
            return; /* one job at a time: the ops after it start the next */
        rc = sync_start(q);
        if (rc == 0 || rc == TN_EAGAIN)
            return;
    }
    rc = tn_diskq_sync(q);
    if (rc < 0) {
        q->ops = 0; /* retried after the next sync_every operations */
        q->st.sync_errors++;
        tn_log_error(LOG_WHO, "disk queue %s: sync failed: %s", q->name, tn_strerror(rc));
    }
}

/* Finish the write segment (fsynced, so no metadata can count records of
 * it that are not on disk) and start the next one. */
static int roll_write(struct tn_diskq *q)
{
    int rc = wbuf_flush(q);

    if (rc < 0)
        return rc;
    if (q->data_dirty) {
        rc = do_fsync(q, q->wfd);
        if (rc < 0)
            return rc;
        q->data_dirty = 0;
    }
    if (q->wfile == UINT32_MAX)
        return TN_ELIMIT;
    close(q->wfd);
    q->wfd = -1;
    if (q->rfile == q->wfile)
        q->rend = q->wpos;
    q->wfile++;
    q->wpos = 0;
    q->meta_dirty = 1;
    return open_write(q, q->wfile, 1);
}

/* pwritev until everything is written (the iov array is consumed). */
static int write_all(int fd, struct iovec *iov, int cnt, uint64_t off)
{
    ssize_t n;

    while (cnt > 0) {
        n = pwritev(fd, iov, cnt, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        off += (uint64_t)n;
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

static void put_done(struct tn_diskq *q, uint64_t len)
{
    q->wpos += HDR_SIZE + len;
    q->depth++;
    q->st.puts++;
    q->st.bytes_written += HDR_SIZE + len;
    q->data_dirty = q->meta_dirty = 1;
    note_op(q);
}

/* Append the framed record to the write buffer (written out first when it
 * is full, or holds records of a failed write). */
static int put_buffered(struct tn_diskq *q, const struct iovec *iov, int iovcnt, uint32_t len)
{
    unsigned char *p;
    int i, rc;

    if (q->werr != 0 || q->wlen + HDR_SIZE + len > q->o.write_buffer) {
        rc = wbuf_flush(q);
        if (rc < 0)
            return rc;
    }
    if (q->wbuf == NULL && (q->wbuf = malloc(q->o.write_buffer)) == NULL)
        return TN_ENOMEM;
    p = q->wbuf + q->wlen;
    put_be32(p, len);
    for (i = 0, len = HDR_SIZE; i < iovcnt; i++) {
        if (iov[i].iov_len > 0)
            memcpy(p + len, iov[i].iov_base, iov[i].iov_len);
        len += (uint32_t)iov[i].iov_len;
    }
    len -= HDR_SIZE;
    put_be32(p + 4, frame_crc(p, p + HDR_SIZE, len));
    q->wlen += HDR_SIZE + len;
    group_link(q);
    put_done(q, len);
    return 0;
}

int tn_diskq_putv(struct tn_diskq *q, const struct iovec *iov, int iovcnt)
{
    struct iovec v[TN_DISKQ_IOV_MAX + 1];
    unsigned char hdr[HDR_SIZE];
    uint64_t len = 0;
    uint32_t crc;
    int i, rc;

    if (iovcnt < 0 || iovcnt > TN_DISKQ_IOV_MAX)
        return TN_EINVAL;
    for (i = 0; i < iovcnt; i++) {
        len += iov[i].iov_len;
        if (len > q->o.max_msg_size)
            return TN_ETOOBIG;
    }
    if (len < q->o.min_msg_size)
        return TN_EINVAL;
    if (q->wfd < 0) {
        /* A roll-over or empty() could not open the new segment: retry. */
        rc = open_write(q, q->wfile, 0);
        if (rc < 0)
            return rc;
    }
    if (q->wpos > 0 && q->wpos + HDR_SIZE + len > q->o.max_bytes_per_file) {
        rc = roll_write(q);
        if (rc < 0)
            return rc;
    }
    if (q->o.write_buffer > 0 && HDR_SIZE + len <= q->o.write_buffer)
        return put_buffered(q, iov, iovcnt, (uint32_t)len);
    rc = wbuf_flush(q); /* a record too large for the buffer goes out alone, in order */
    if (rc < 0)
        return rc;
    put_be32(hdr, (uint32_t)len);
    crc = crc_update(0, hdr, 4);
    v[0].iov_base = hdr;
    v[0].iov_len = HDR_SIZE;
    for (i = 0; i < iovcnt; i++) {
        crc = crc_update(crc, iov[i].iov_base, iov[i].iov_len);
        v[i + 1] = iov[i];
    }
    put_be32(hdr + 4, (uint32_t)crc);
    q->st.writes++;
    rc = write_all(q->wfd, v, iovcnt + 1, q->wpos);
    if (rc < 0) {
        /* Leave no partial record behind for the reader or a recovery. */
        if (ftruncate(q->wfd, (off_t)q->wpos) < 0)
            tn_log_error(LOG_WHO, "disk queue %s: cannot cut a failed write: %s", q->name,
                         strerror(errno));
        return rc;
    }
    put_done(q, len);
    return 0;
}

int tn_diskq_put(struct tn_diskq *q, const void *data, size_t len)
{
    struct iovec v = {(void *)data, len};

    return tn_diskq_putv(q, &v, len > 0 ? 1 : 0);
}

/* The reader met a frame it cannot delimit: the rest of the segment is
 * unusable. Skip it and recount what is left. */
static void skip_rest(struct tn_diskq *q, uint64_t limit, const char *why)
{
    char fname[FNAME_MAX];

    seg_name(q, q->rfile, fname);
    tn_log_warn(LOG_WHO, "disk queue %s: %s: %s at offset %" PRIu64 ", %" PRIu64 " bytes skipped",
                q->name, fname, why, q->rpos, limit - q->rpos);
    q->st.corrupt++;
    q->rpos = limit;
    q->meta_dirty = 1;
    recount_depth(q);
}

/* Skip one record whose crc failed; its length was plausible. */
static void skip_bad_crc(struct tn_diskq *q, uint32_t len)
{
    char fname[FNAME_MAX];

    seg_name(q, q->rfile, fname);
    tn_log_warn(LOG_WHO,
                "disk queue %s: %s: record at offset %" PRIu64 " fails its checksum, skipped",
                q->name, fname, q->rpos);
    q->st.corrupt++;
    q->rpos += HDR_SIZE + (uint64_t)len;
    if (q->depth > 0)
        q->depth--;
    q->rseq++; /* passed like a read: it stays counted from a held record before it */
    q->meta_dirty = 1;
}

/* Move the reader to a segment that has data left, or say there is none:
 * 1 ready (read segment open, limit set), 0 empty, -errno. */
static int read_ready(struct tn_diskq *q, uint64_t *limit)
{
    char fname[FNAME_MAX];
    int rc;

    for (;;) {
        if (q->rfile == q->wfile && q->rpos >= q->wpos) {
            if (q->depth != 0) {
                tn_log_warn(LOG_WHO,
                            "disk queue %s: depth %" PRIu64 " at the end of the data,"
                            " set to 0",
                            q->name, q->depth);
                q->depth = 0;
                q->meta_dirty = 1;
            }
            return 0;
        }
        if (q->r.fd < 0) {
            rc = open_read(q);
            if (rc == TN_ENOTFOUND) {
                seg_name(q, q->rfile, fname);
                tn_log_warn(LOG_WHO, "disk queue %s: segment %s is missing, skipped", q->name,
                            fname);
                q->st.missing_files++;
                if (q->rfile == q->wfile) /* removed under us: nothing left to read */
                    q->rpos = q->wpos;
                else
                    next_read_file(q);
                recount_depth(q);
                continue;
            }
            if (rc < 0)
                return rc;
        }
        if (q->rfile == q->wfile && q->wlen > 0 && q->rpos >= q->wpos - q->wlen) {
            /* the reader caught up with records still buffered */
            rc = wbuf_flush(q);
            if (rc < 0)
                return rc;
        }
        *limit = q->rfile == q->wfile ? q->wpos - q->wlen : q->rend;
        if (q->rpos < *limit)
            return 1;
        next_read_file(q);
    }
}

int tn_diskq_peek(struct tn_diskq *q, const void **data, size_t *len)
{
    const unsigned char *payload = NULL;
    uint64_t limit = 0;
    uint32_t flen = 0;
    int rc, err = 0;

    if (q->peeked) {
        *data = q->peek_data;
        *len = q->peek_len;
        return 0;
    }
    for (;;) {
        rc = read_ready(q, &limit);
        if (rc <= 0)
            return rc == 0 ? TN_EAGAIN : rc;
        switch (read_frame(q, &q->r, q->rpos, limit, 1, &payload, &flen, &err)) {
        case FR_OK:
            if (q->depth == 0) /* skipped garbage threw the count off */
                recount_depth(q);
            q->peeked = 1;
            q->peek_data = payload;
            q->peek_len = flen;
            q->peek_next = q->rpos + HDR_SIZE + flen;
            *data = payload;
            *len = flen;
            return 0;
        case FR_BADCRC:
            skip_bad_crc(q, flen);
            break;
        case FR_IOERR:
            return err;
        default:
            skip_rest(q, limit, "record with an impossible length");
            break;
        }
    }
}

/* Move the read position past the peeked record. */
static void read_past(struct tn_diskq *q)
{
    q->peeked = 0;
    q->rpos = q->peek_next;
    if (q->depth > 0)
        q->depth--;
    q->rseq++;
    q->st.reads++;
    q->st.bytes_read += q->peek_len;
    if (q->rfile < q->wfile && q->rpos >= q->rend)
        next_read_file(q);
}

int tn_diskq_advance(struct tn_diskq *q)
{
    if (!q->peeked)
        return TN_EINVAL;
    read_past(q);
    if (q->hhead != NULL)
        return 0; /* the committed position stays at the oldest held record */
    q->meta_dirty = 1;
    note_op(q);
    return 0;
}

int tn_diskq_take(struct tn_diskq *q, struct tn_diskq_hold *h)
{
    if (!q->peeked)
        return TN_EINVAL;
    h->file = q->rfile;
    h->pos = q->rpos;
    h->seq = q->rseq;
    h->gen = q->gen;
    h->next = NULL;
    h->prev = q->htail;
    if (q->htail != NULL) {
        q->htail->next = h;
    } else {
        /* it becomes the committed position, which was already here:
         * nothing durable changes */
        q->hhead = h;
        q->cfile = h->file;
        q->cpos = h->pos;
        q->cseq = h->seq;
    }
    q->htail = h;
    q->nheld++;
    read_past(q);
    return 0;
}

int tn_diskq_release(struct tn_diskq *q, struct tn_diskq_hold *h)
{
    if (h->gen == 0 || h->gen != q->gen)
        return TN_ENOTFOUND;
    h->gen = 0;
    if (h->next != NULL)
        h->next->prev = h->prev;
    else
        q->htail = h->prev;
    q->nheld--;
    if (h->prev != NULL) {
        h->prev->next = h->next;
        h->prev = h->next = NULL;
        return 0; /* an older one still holds the committed position */
    }
    q->hhead = h->next;
    h->next = NULL;
    if (q->hhead != NULL) {
        q->hhead->prev = NULL;
        q->cfile = q->hhead->file;
        q->cpos = q->hhead->pos;
        q->cseq = q->hhead->seq;
    }
    q->meta_dirty = 1;
    note_op(q);
    return 0;
}

uint64_t tn_diskq_depth(const struct tn_diskq *q)
{
    return q->depth;
}

int tn_diskq_sync(struct tn_diskq *q)
{
    int rc;

    sync_finish(q, 1);
    rc = flush_for_sync(q);
    if (rc < 0)
        return rc;
    if (q->data_dirty && q->wfd >= 0) {
        rc = do_fsync(q, q->wfd);
        if (rc < 0)
            return rc;
        q->data_dirty = 0;
    }
    if (q->meta_dirty) {
        rc = meta_write(q);
        if (rc < 0)
            return rc;
        q->meta_dirty = 0;
        q->st.syncs++;
    }
    q->ops = 0;
    q->dirty_since = 0;
    drop_read_segments(q, commit_file(q));
    return 0;
}

int tn_diskq_sync_due(const struct tn_diskq *q)
{
    /* a finished automatic sync: the sync reaps it and deletes the segments
     * it made unneeded, also when the queue has gone quiet since */
    if (q->job != NULL && atomic_load_explicit(&q->job->done, memory_order_acquire))
        return 1;
    if (!q->data_dirty && !q->meta_dirty)
        return 0;
    return mono_ms() - q->dirty_since >= (int64_t)q->o.sync_timeout_ms;
}

int tn_diskq_empty(struct tn_diskq *q)
{
    uint32_t lo = 0, hi = 0;
    int rc;

    sync_finish(q, 1);
    close_read(q);
    if (q->wfd >= 0)
        close(q->wfd);
    q->wfd = -1;
    q->wlen = 0; /* buffered records are dropped with the rest */
    q->werr = 0;
    /* Point the metadata at a fresh segment first, then remove the old
     * ones: a crash in between leaves files the next open deletes, never
     * metadata counting records that are gone. Numbers keep growing, so
     * an old segment is never taken for a new one. */
    if (q->wfile == UINT32_MAX)
        return TN_ELIMIT;
    q->wfile++;
    q->rfile = q->del_from = q->wfile;
    q->rpos = q->wpos = q->depth = 0;
    q->hhead = q->htail = NULL; /* forgotten untouched: see struct tn_diskq_hold */
    q->nheld = 0;
    q->gen = new_gen();
    q->data_dirty = 0;
    q->meta_dirty = 1;
    rc = open_write(q, q->wfile, 1);
    if (rc == 0)
        rc = tn_diskq_sync(q);
    if (rc == 0)
        rc = scan_dir(q, q->wfile, &lo, &hi);
    if (rc < 0)
        tn_log_error(LOG_WHO, "disk queue %s: emptying: %s", q->name, tn_strerror(rc));
    return rc < 0 ? rc : 0;
}

int tn_diskq_close(struct tn_diskq *q)
{
    int rc;

    if (q == NULL)
        return 0;
    rc = tn_diskq_sync(q);
    diskq_free(q);
    return rc;
}

int tn_diskq_delete(struct tn_diskq *q)
{
    int rc;

    if (q == NULL)
        return 0;
    sync_finish(q, 1);
    close_read(q);
    rc = remove_files(q, 1);
    if (rc == 0)
        rc = do_fsync(q, q->dirfd);
    diskq_free(q);
    return rc;
}

void tn_diskq_get_stats(const struct tn_diskq *q, struct tn_diskq_stats *out)
{
    uint64_t depth;

    *out = q->st;
    out->depth = q->depth;
    out->read_file = q->rfile;
    out->write_file = q->wfile;
    out->read_pos = q->rpos;
    out->write_pos = q->wpos;
    out->files = q->wfile - commit_file(q) + 1;
    out->held = q->nheld;
    committed(q, &out->commit_file, &out->commit_pos, &depth);
}
