/*
 * fuzz_diskq.c -- libFuzzer target: disk queue recovery
 * (modules/broker/diskq.c). The input becomes the files of one queue -- its
 * metadata and two segments -- in a fresh directory; the queue is then
 * opened (recovered), read to the end, written to and reopened. Whatever
 * the files hold, open must not crash and every record handed out must fit
 * the limits; what the run itself wrote must read back.
 *
 * The first byte picks how the input becomes files:
 *   even: raw -- [2B len][metadata][2B len][segment 0][rest: segment 1]
 *         (big-endian lengths, cut to what is there);
 *   odd:  structured -- [4B metadata knobs][1B damage] then records
 *         [1B len][payload]... framed with correct checksums (segment 0
 *         until it passes 1 KiB, then segment 1), and metadata with a
 *         correct checksum whose depth and positions the knobs move off the
 *         truth; damage cuts bytes off a segment's end. Checksums are what
 *         random bytes never get right; this mode reaches the recovery of
 *         well-formed queues that disagree with their metadata.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "diskq.h"
#include "fz.h"

#define Q "fz"
#define READS_MAX 512
#define SEG_ROLL 1024 /* = max_bytes_per_file below */
#define MAX_RECS 256

static char dir[512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    snprintf(dir, sizeof(dir), "%s", fz_path("dq"));
    if (mkdir(dir, 0700) != 0) {
        perror("fuzz: mkdir");
        exit(1);
    }
    return 0;
}

/* Take the next [2B len][bytes] piece of the input (the last piece takes
 * the rest when last is set). */
static const uint8_t *piece(const uint8_t **p, size_t *left, size_t *len, int last)
{
    const uint8_t *start;

    if (last) {
        *len = *left;
    } else {
        *len = 0;
        if (*left >= 2) {
            *len = (size_t)(*p)[0] << 8 | (*p)[1];
            *p += 2;
            *left -= 2;
        }
        if (*len > *left)
            *len = *left;
    }
    start = *p;
    *p += *len;
    *left -= *len;
    return start;
}

static void put_file(const char *name, const uint8_t *p, size_t len)
{
    char path[1024];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, p, len) != (ssize_t)len) {
        perror("fuzz: write");
        abort();
    }
    close(fd);
}

static void clear_dir(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.')
            unlinkat(dirfd(d), e->d_name, 0);
    if (d)
        closedir(d);
}

#define HOLDS 8

/* Read up to READS_MAX records; every one must fit the configured limits.
 * Records are taken into a ring of HOLDS holds (each released when its
 * slot comes round again) and the last ones released newest first: the
 * committed position moves over out-of-order releases, and every record
 * ends up released. */
static void drain(struct tn_diskq *q, const struct tn_diskq_opts *o)
{
    struct tn_diskq_hold h[HOLDS];
    int i, k;

    memset(h, 0, sizeof(h));
    for (i = 0; i < READS_MAX; i++) {
        const void *p;
        size_t len;
        if (tn_diskq_peek(q, &p, &len) != 0)
            break;
        if (len < o->min_msg_size || len > o->max_msg_size)
            abort();
        if (len)
            (void)*(volatile const char *)((const char *)p + len - 1);
        tn_diskq_release(q, &h[i % HOLDS]);
        if (tn_diskq_take(q, &h[i % HOLDS]) != 0)
            abort();
    }
    for (k = HOLDS - 1; k >= 0; k--)
        tn_diskq_release(q, &h[k]);
}

/* The raw mode: the input's bytes are the files. */
static void raw_files(const uint8_t *p, size_t left)
{
    const uint8_t *meta, *seg0, *seg1;
    size_t nmeta, nseg0, nseg1;

    meta = piece(&p, &left, &nmeta, 0);
    seg0 = piece(&p, &left, &nseg0, 0);
    seg1 = piece(&p, &left, &nseg1, 1);
    if (nmeta)
        put_file(Q ".diskqueue.meta.dat", meta, nmeta);
    put_file(Q ".diskqueue.000000.dat", seg0, nseg0);
    if (nseg1)
        put_file(Q ".diskqueue.000001.dat", seg1, nseg1);
}

struct seg {
    uint8_t buf[SEG_ROLL + 8 + 255];
    size_t len;
    size_t ends[MAX_RECS]; /* offset after each record */
    size_t n;
};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Frame [4B len][4B crc over len and payload][payload] as diskq.h says. */
static void frame(struct seg *sg, const uint8_t *payload, size_t len)
{
    uint8_t *h = sg->buf + sg->len;
    uLong crc;

    put_be32(h, (uint32_t)len);
    crc = crc32(crc32(0L, h, 4), payload, (uInt)len);
    put_be32(h + 4, (uint32_t)crc);
    memcpy(h + 8, payload, len);
    sg->len += 8 + len;
    sg->ends[sg->n++] = sg->len;
}

/* The structured mode: valid records, metadata off by the knobs. */
static void structured_files(const uint8_t *p, size_t left)
{
    static struct seg segs[2];
    uint8_t knob[4] = {0}, damage = 0;
    char meta[256];
    size_t nrec = 0, s = 0, rfile, rpos, wpos;
    long depth;
    int n;

    memset(segs, 0, sizeof(segs));
    for (int i = 0; i < 4 && left; i++, p++, left--)
        knob[i] = *p;
    if (left) {
        damage = *p++;
        left--;
    }
    while (left && segs[s].n < MAX_RECS) {
        size_t len = *p++;
        left--;
        if (len > left)
            len = left;
        frame(&segs[s], p, len);
        p += len;
        left -= len;
        nrec++;
        if (segs[s].len >= SEG_ROLL) {
            if (s == 1)
                break;
            s = 1;
        }
    }
    depth = (long)nrec + (int8_t)knob[0];
    rfile = knob[1] % (s + 1);
    rpos = knob[2] % (segs[rfile].n + 1);
    rpos = rpos ? segs[rfile].ends[rpos - 1] : 0;
    wpos = segs[s].len + (size_t)(int8_t)knob[3];
    if (rfile == s && rpos > wpos)
        rpos = wpos;
    n = snprintf(meta, sizeof(meta), "ternd-diskq 1\n%ld\n%zu,%zu\n%zu,%zu\n",
                 depth < 0 ? 0 : depth, rfile, rpos, s, wpos);
    n += snprintf(meta + n, sizeof(meta) - (size_t)n, "crc %08lx\n",
                  crc32(0L, (const Bytef *)meta, (uInt)n));
    if (damage & 0x80) /* no metadata at all */
        n = 0;
    if (damage & 0x3f) { /* a torn end */
        struct seg *sg = &segs[(damage & 0x40) ? s : 0];
        size_t cut = damage & 0x3f;
        sg->len = cut < sg->len ? sg->len - cut : 0;
    }
    if (n)
        put_file(Q ".diskqueue.meta.dat", (const uint8_t *)meta, (size_t)n);
    put_file(Q ".diskqueue.000000.dat", segs[0].buf, segs[0].len);
    if (s == 1)
        put_file(Q ".diskqueue.000001.dat", segs[1].buf, segs[1].len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tn_diskq_opts o = {.max_bytes_per_file = SEG_ROLL, .min_msg_size = 0,
                              .max_msg_size = 512, .sync_every = 64};
    struct tn_diskq *q;
    int err = 0;

    if (size == 0)
        return 0;
    clear_dir();
    if (data[0] & 1)
        structured_files(data + 1, size - 1);
    else
        raw_files(data + 1, size - 1);
    if (!(q = tn_diskq_open(dir, Q, &o, &err)))
        return 0;
    drain(q, &o);
    tn_diskq_put(q, "after recovery", 14);
    tn_diskq_close(q);
    /* what this run wrote must read back cleanly */
    if (!(q = tn_diskq_open(dir, Q, &o, &err)))
        abort();
    drain(q, &o);
    if (tn_diskq_depth(q) != 0)
        abort();
    tn_diskq_close(q);
    return 0;
}
