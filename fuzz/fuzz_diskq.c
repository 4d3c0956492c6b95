/*
 * fuzz_diskq.c -- libFuzzer target: disk queue recovery
 * (modules/broker/diskq.c). The input is split into files of one queue --
 * its metadata and two segments -- written to a fresh directory; the queue
 * is then opened (recovered), read to the end, written to and reopened.
 * Whatever the files hold, open must not crash and every record handed out
 * must be one that was framed and checksummed correctly.
 *
 * Input: [2B len][metadata][2B len][segment 0][rest: segment 1], the
 * lengths big-endian and cut to what is there.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskq.h"
#include "fz.h"

#define Q "fz"
#define READS_MAX 512

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

/* Read up to READS_MAX records; every one must fit the configured limits. */
static void drain(struct tn_diskq *q, const struct tn_diskq_opts *o)
{
    for (int i = 0; i < READS_MAX; i++) {
        const void *p;
        size_t len;
        if (tn_diskq_peek(q, &p, &len) != 0)
            return;
        if (len < o->min_msg_size || len > o->max_msg_size)
            abort();
        if (len)
            (void)*(volatile const char *)((const char *)p + len - 1);
        tn_diskq_advance(q);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tn_diskq_opts o = {.max_bytes_per_file = 1024, .min_msg_size = 1,
                              .max_msg_size = 512, .sync_every = 64};
    const uint8_t *p = data, *meta, *seg0, *seg1;
    size_t left = size, nmeta, nseg0, nseg1;
    struct tn_diskq *q;
    int err = 0;

    meta = piece(&p, &left, &nmeta, 0);
    seg0 = piece(&p, &left, &nseg0, 0);
    seg1 = piece(&p, &left, &nseg1, 1);
    clear_dir();
    if (nmeta)
        put_file(Q ".diskqueue.meta.dat", meta, nmeta);
    put_file(Q ".diskqueue.000000.dat", seg0, nseg0);
    if (nseg1)
        put_file(Q ".diskqueue.000001.dat", seg1, nseg1);
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
