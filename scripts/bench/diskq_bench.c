/*
 * diskq_bench.c -- put and read throughput of the broker's disk queue for
 * fixed-size records, at a given sync_every. Not built by default; from the
 * top of the tree:
 *
 *   gcc -std=gnu11 -O2 -D_GNU_SOURCE -Iserver/include -Imodules/broker \
 *       scripts/bench/diskq_bench.c modules/broker/diskq.c server/error.c server/log.c \
 *       -lz -o /tmp/diskq_bench
 *   /tmp/diskq_bench [-n records] [-s size] [-e sync_every] [-d dir]
 *
 * Defaults: 1000000 records of 100 bytes, sync_every 2500, a fresh
 * directory under /tmp (removed afterwards). Each phase is timed with
 * CLOCK_MONOTONIC and includes the final sync.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ternd/error.h>

#include "diskq.h"

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *what, unsigned long n, size_t size, double secs,
                   const struct tn_diskq_stats *st)
{
    printf("%-5s %9lu records in %8.3f s: %11.0f rec/s %8.1f MiB/s  (fsyncs %lu)\n", what, n, secs,
           (double)n / secs, (double)n * (double)size / secs / (1024.0 * 1024.0),
           (unsigned long)st->fsyncs);
}

int main(int argc, char **argv)
{
    struct tn_diskq_opts o = {0};
    struct tn_diskq_stats st0, st1;
    struct tn_diskq *q;
    char tmpdir[] = "/tmp/diskq_bench.XXXXXX", *dir = NULL, *rec;
    unsigned long n = 1000000, i;
    size_t size = 100, len;
    const void *data;
    double t0;
    int opt, err = 0;

    o.sync_every = 2500;
    while ((opt = getopt(argc, argv, "n:s:e:d:")) != -1) {
        switch (opt) {
        case 'n':
            n = strtoul(optarg, NULL, 10);
            break;
        case 's':
            size = strtoul(optarg, NULL, 10);
            break;
        case 'e':
            o.sync_every = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'd':
            dir = optarg;
            break;
        default:
            fprintf(stderr, "usage: %s [-n records] [-s size] [-e sync_every] [-d dir]\n", argv[0]);
            return 2;
        }
    }
    if (dir == NULL && (dir = mkdtemp(tmpdir)) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    rec = malloc(size > 0 ? size : 1);
    if (rec == NULL)
        return 1;
    memset(rec, 'x', size);
    q = tn_diskq_open(dir, "bench", &o, &err);
    if (q == NULL) {
        fprintf(stderr, "open %s: %s\n", dir, tn_strerror(err));
        return 1;
    }
    printf("%lu records of %zu bytes, sync_every %u, dir %s\n", n, size, o.sync_every, dir);

    tn_diskq_get_stats(q, &st0);
    t0 = now_s();
    for (i = 0; i < n; i++) {
        memcpy(rec, &i, size < sizeof(i) ? size : sizeof(i));
        if ((err = tn_diskq_put(q, rec, size)) != 0) {
            fprintf(stderr, "put: %s\n", tn_strerror(err));
            return 1;
        }
    }
    tn_diskq_sync(q);
    tn_diskq_get_stats(q, &st1);
    st1.fsyncs -= st0.fsyncs;
    report("put", n, size, now_s() - t0, &st1);

    st0 = st1;
    tn_diskq_get_stats(q, &st0);
    t0 = now_s();
    for (i = 0; i < n; i++) {
        if ((err = tn_diskq_peek(q, &data, &len)) != 0 || len != size) {
            fprintf(stderr, "peek %lu: %s\n", i, tn_strerror(err));
            return 1;
        }
        tn_diskq_advance(q);
    }
    tn_diskq_sync(q);
    tn_diskq_get_stats(q, &st1);
    st1.fsyncs -= st0.fsyncs;
    report("read", n, size, now_s() - t0, &st1);

    tn_diskq_delete(q); /* leaves the directory as it found it */
    if (dir == tmpdir)
        rmdir(dir);
    free(rec);
    return 0;
}
