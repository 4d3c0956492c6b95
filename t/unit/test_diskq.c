/*
 * test_diskq.c -- the broker's disk queue: order across segment roll-overs,
 * reopening, crash recovery (a child process that dies without closing),
 * torn and corrupt data, damaged metadata, missing segments, limits, syncs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zlib.h>

#include <ternd/error.h>

#include "../../modules/broker/diskq.h"

#define QNAME "topic1"

/* ---- helpers ------------------------------------------------------------- */

static int setup_dir(void **state)
{
    char *dir = strdup("/tmp/test_diskq.XXXXXX");

    if (dir == NULL || mkdtemp(dir) == NULL)
        return -1;
    *state = dir;
    return 0;
}

static int teardown_dir(void **state)
{
    char *dir = *state, path[512];
    struct dirent *de;
    DIR *d = opendir(dir);

    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
    free(dir);
    return 0;
}

static void seg_path(char *buf, size_t n, const char *dir, const char *name, unsigned num)
{
    snprintf(buf, n, "%s/%s.diskqueue.%06u.dat", dir, name, num);
}

static void meta_path(char *buf, size_t n, const char *dir, const char *name)
{
    snprintf(buf, n, "%s/%s.diskqueue.meta.dat", dir, name);
}

static int count_files(const char *dir)
{
    struct dirent *de;
    DIR *d = opendir(dir);
    int n = 0;

    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static off_t file_size(const char *path)
{
    struct stat sb;

    return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* Record i: its number (4 bytes) then a pattern; 4..123 bytes long. */
static size_t make_rec(unsigned i, unsigned char *buf)
{
    size_t len = 4 + (i * 7) % 120, j;

    buf[0] = (unsigned char)(i >> 24);
    buf[1] = (unsigned char)(i >> 16);
    buf[2] = (unsigned char)(i >> 8);
    buf[3] = (unsigned char)i;
    for (j = 4; j < len; j++)
        buf[j] = (unsigned char)(i * 31 + j);
    return len;
}

/* Size of records from..to-1 on disk, framing included. */
static off_t recs_size(unsigned from, unsigned to)
{
    unsigned char buf[256];
    off_t n = 0;

    for (; from < to; from++)
        n += 8 + (off_t)make_rec(from, buf);
    return n;
}

/* The first record that does not fit in a segment of seg_max bytes
 * starting with record `first` (what put_range into such segments does). */
static unsigned seg_next(unsigned first, off_t seg_max)
{
    unsigned i = first;

    while (recs_size(first, i + 1) <= seg_max)
        i++;
    return i;
}

/* Open QNAME with 4 KiB records at most; file_size_max 0 and sync_every 0
 * take the defaults (100 MiB, 2500). */
static struct tn_diskq *qopen(const char *dir, uint64_t file_size_max, uint32_t sync_every)
{
    struct tn_diskq_opts o = {0};
    struct tn_diskq *q;
    int err = 0;

    o.max_bytes_per_file = file_size_max;
    o.max_msg_size = 4096;
    o.sync_every = sync_every > 0 ? sync_every : TN_DISKQ_DEFAULT_SYNC_EVERY;
    q = tn_diskq_open(dir, QNAME, &o, &err);
    assert_non_null(q);
    assert_int_equal(err, 0);
    return q;
}

static void put_range(struct tn_diskq *q, unsigned from, unsigned to)
{
    unsigned char buf[256];
    unsigned i;

    for (i = from; i < to; i++)
        assert_int_equal(tn_diskq_put(q, buf, make_rec(i, buf)), 0);
}

/* Read one record and check it is record i. */
static void expect_rec(struct tn_diskq *q, unsigned i)
{
    unsigned char want[256];
    const void *data;
    size_t len, wlen = make_rec(i, want);

    assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
    assert_int_equal(len, wlen);
    assert_memory_equal(data, want, wlen);
    assert_int_equal(tn_diskq_advance(q), 0);
}

static void expect_range(struct tn_diskq *q, unsigned from, unsigned to)
{
    unsigned i;

    for (i = from; i < to; i++)
        expect_rec(q, i);
}

static void expect_empty(struct tn_diskq *q)
{
    const void *data;
    size_t len;

    assert_int_equal(tn_diskq_peek(q, &data, &len), TN_EAGAIN);
    assert_int_equal(tn_diskq_depth(q), 0);
}

/* The queue holds records first..end-1 for some first <= max_first:
 * check the depth and read them all. */
static void expect_from_first(struct tn_diskq *q, unsigned max_first, unsigned end)
{
    const unsigned char *p;
    const void *data;
    size_t len;
    unsigned first;

    assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
    p = data;
    first = (unsigned)p[0] << 24 | (unsigned)p[1] << 16 | (unsigned)p[2] << 8 | p[3];
    assert_true(first <= max_first);
    assert_int_equal(tn_diskq_depth(q), end - first);
    expect_range(q, first, end);
    expect_empty(q);
}

/* Run fn in a child that then dies without closing the queue: what a
 * crash of the process leaves behind. */
static void in_crashing_child(void (*fn)(const char *dir), const char *dir)
{
    int status;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        fn(dir);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void flip_byte(const char *path, off_t off)
{
    unsigned char c;
    int fd = open(path, O_RDWR);

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &c, 1, off), 1);
    c ^= 0x5a;
    assert_int_equal(pwrite(fd, &c, 1, off), 1);
    close(fd);
}

/* ---- tests ----------------------------------------------------------------- */

static void test_names_and_options(void **state)
{
    static const char *bad[] = {"", "a/b", ".", "..", "tab\there", "/abs"};
    struct tn_diskq_opts o = {0};
    char longname[TN_DISKQ_NAME_MAX + 2];
    const char *dir = *state;
    struct tn_diskq *q;
    size_t i;
    int err;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = 0;
        assert_null(tn_diskq_open(dir, bad[i], NULL, &err));
        assert_int_equal(err, TN_EINVAL);
    }
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_null(tn_diskq_open(dir, longname, NULL, &err));
    assert_int_equal(err, TN_EINVAL);
    longname[TN_DISKQ_NAME_MAX] = '\0';
    assert_true(tn_diskq_name_ok(longname));
    assert_true(tn_diskq_name_ok("topic:chan#ephemeral"));

    o.min_msg_size = 10;
    o.max_msg_size = 5;
    assert_null(tn_diskq_open(dir, "q", &o, &err));
    assert_int_equal(err, TN_EINVAL);
    o.min_msg_size = 0;
    o.max_msg_size = TN_DISKQ_MSG_LIMIT + 1;
    assert_null(tn_diskq_open(dir, "q", &o, &err));
    assert_int_equal(err, TN_EINVAL);
    assert_null(tn_diskq_open("/nonexistent/dir/x", "q", NULL, &err));
    assert_int_equal(err, -ENOENT);
    assert_int_equal(count_files(dir), 0);

    q = tn_diskq_open(dir, "q", NULL, &err); /* all defaults */
    assert_non_null(q);
    assert_int_equal(tn_diskq_close(q), 0);
}

static void test_order_across_rollovers(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = qopen(dir, 1024, 100000); /* no automatic sync */
    struct tn_diskq_stats st;
    char path[512];

    put_range(q, 0, 2000);
    assert_int_equal(tn_diskq_depth(q), 2000);
    tn_diskq_get_stats(q, &st);
    assert_true(st.write_file >= 100); /* ~70 bytes a record, 1 KiB files */
    assert_int_equal(st.read_file, 0);
    assert_int_equal(st.files, st.write_file + 1);
    /* No segment grows past the limit (every record is far smaller). */
    seg_path(path, sizeof(path), dir, QNAME, 3);
    assert_true(file_size(path) <= 1024 && file_size(path) > 900);

    expect_range(q, 0, 1000);
    assert_int_equal(tn_diskq_depth(q), 1000);
    /* Read segments go away at the next sync, not before. */
    seg_path(path, sizeof(path), dir, QNAME, 0);
    assert_true(file_size(path) > 0);
    assert_int_equal(tn_diskq_sync(q), 0);
    assert_int_equal(file_size(path), -1);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(count_files(dir), st.files + 1); /* + metadata */

    expect_range(q, 1000, 2000);
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.reads, 2000);
    assert_int_equal(st.puts, 2000);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(tn_diskq_close(q), 0);
    assert_int_equal(count_files(dir), 2); /* the last segment + metadata */
}

static void test_depth_peek_advance(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = qopen(dir, 0, 0);
    const void *d1, *d2;
    size_t l1, l2;

    expect_empty(q);
    assert_int_equal(tn_diskq_advance(q), TN_EINVAL);
    put_range(q, 0, 3);
    assert_int_equal(tn_diskq_depth(q), 3);
    assert_int_equal(tn_diskq_peek(q, &d1, &l1), 0);
    assert_int_equal(tn_diskq_peek(q, &d2, &l2), 0); /* same record again */
    assert_ptr_equal(d1, d2);
    assert_int_equal(l1, l2);
    put_range(q, 3, 5); /* puts leave the peeked record alone */
    assert_int_equal(tn_diskq_depth(q), 5);
    expect_rec(q, 0);
    assert_int_equal(tn_diskq_depth(q), 4);
    assert_int_equal(tn_diskq_advance(q), TN_EINVAL); /* nothing peeked */
    assert_int_equal(tn_diskq_depth(q), 4);
    expect_range(q, 1, 5);
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_interleaved_reader(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = qopen(dir, 512, 0);
    unsigned i;

    /* A reader that keeps up with the writer, through roll-overs. */
    for (i = 0; i < 500; i++) {
        put_range(q, 2 * i, 2 * i + 2);
        expect_rec(q, i);
    }
    assert_int_equal(tn_diskq_depth(q), 500);
    expect_range(q, 500, 1000);
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_reopen_keeps_everything(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = qopen(dir, 4096, 0);
    struct tn_diskq_stats st;

    put_range(q, 0, 500);
    expect_range(q, 0, 120);
    assert_int_equal(tn_diskq_close(q), 0);

    q = qopen(dir, 4096, 0);
    assert_int_equal(tn_diskq_depth(q), 380);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.recovered, 0);
    assert_int_equal(st.corrupt, 0);
    put_range(q, 500, 600);
    expect_range(q, 120, 300);
    assert_int_equal(tn_diskq_close(q), 0);

    q = qopen(dir, 4096, 0);
    assert_int_equal(tn_diskq_depth(q), 300);
    expect_range(q, 300, 600);
    expect_empty(q);
    tn_diskq_close(q);
}

/* Child: 300 records synced, then 700 more (several roll-overs) never
 * synced, then death. */
static void crash_after_unsynced_puts(const char *dir)
{
    struct tn_diskq *q = qopen(dir, 2048, 100000);

    put_range(q, 0, 300);
    if (tn_diskq_sync(q) != 0)
        _exit(1);
    put_range(q, 300, 1000);
}

static void test_crash_meta_older_than_data(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q;

    in_crashing_child(crash_after_unsynced_puts, dir);
    q = qopen(dir, 2048, 0);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.recovered, 700);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(tn_diskq_depth(q), 1000);
    expect_range(q, 0, 1000); /* each exactly once, in order */
    expect_empty(q);
    assert_int_equal(tn_diskq_close(q), 0);

    /* The recovery was made durable: a second open finds nothing new. */
    q = qopen(dir, 2048, 0);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.recovered, 0);
    expect_empty(q);
    tn_diskq_close(q);
}

/* Child: 50 records, a read of 10 never synced, death. */
static void crash_after_unsynced_reads(const char *dir)
{
    struct tn_diskq *q = qopen(dir, 0, 100000);

    put_range(q, 0, 50);
    tn_diskq_sync(q);
    expect_range(q, 0, 10);
}

static void test_crash_redelivers_unsynced_reads(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q;

    in_crashing_child(crash_after_unsynced_reads, dir);
    q = qopen(dir, 0, 0);
    assert_int_equal(tn_diskq_depth(q), 50); /* at least once */
    expect_range(q, 0, 50);
    tn_diskq_close(q);
}

/* Child: 20 records of 4 + 7i % 120 bytes, unsynced, death. */
static void crash_with_20(const char *dir)
{
    struct tn_diskq *q = qopen(dir, 0, 100000);

    put_range(q, 0, 20);
}

static void test_torn_tail(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q;
    off_t full = recs_size(0, 20), last = recs_size(0, 19);
    char path[512];

    in_crashing_child(crash_with_20, dir);
    seg_path(path, sizeof(path), dir, QNAME, 0);
    assert_int_equal(file_size(path), full);
    assert_int_equal(truncate(path, full - 3), 0); /* the last write was torn */

    q = qopen(dir, 0, 0);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 1);
    assert_int_equal(st.recovered, 19);
    assert_int_equal(file_size(path), last); /* cut back to the last whole record */
    assert_int_equal(tn_diskq_depth(q), 19);
    expect_range(q, 0, 19);
    expect_empty(q);
    /* New records follow the cut cleanly. */
    put_range(q, 100, 102);
    expect_range(q, 100, 102);
    tn_diskq_close(q);
}

static void test_zero_filled_tail_is_not_records(void **state)
{
    const char *dir = *state;
    static const unsigned char zeros[4096];
    struct tn_diskq_opts o = {0};
    struct tn_diskq_stats st;
    struct tn_diskq *q;
    char path[512];
    int fd, err = 0;

    /* Zero-length records allowed: zeros would parse as empty records if
     * the checksum did not cover the length. */
    q = tn_diskq_open(dir, QNAME, &o, &err);
    assert_non_null(q);
    put_range(q, 0, 5);
    tn_diskq_close(q);
    seg_path(path, sizeof(path), dir, QNAME, 0);
    fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, zeros, sizeof(zeros)), (ssize_t)sizeof(zeros));
    close(fd);

    q = tn_diskq_open(dir, QNAME, &o, &err);
    assert_non_null(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.recovered, 0);
    assert_int_equal(st.corrupt, 1);
    assert_int_equal(tn_diskq_depth(q), 5);
    expect_range(q, 0, 5);
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_corrupt_middle_record(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q;
    char path[512];

    q = qopen(dir, 0, 0);
    put_range(q, 0, 10);
    tn_diskq_close(q);
    seg_path(path, sizeof(path), dir, QNAME, 0);
    flip_byte(path, recs_size(0, 5) + 8 + 2); /* inside record 5's payload */

    q = qopen(dir, 0, 0);
    assert_int_equal(tn_diskq_depth(q), 10); /* not known until read */
    expect_range(q, 0, 5);
    expect_range(q, 6, 10); /* 5 skipped, the later ones delivered */
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 1);
    assert_int_equal(st.reads, 9);
    tn_diskq_close(q);
}

/* 100 records in 1 KiB segments, closed; returns segment 0's path. */
static void fill_segments(const char *dir, char *path, size_t n)
{
    struct tn_diskq *q = qopen(dir, 1024, 0);

    put_range(q, 0, 100);
    assert_int_equal(tn_diskq_close(q), 0);
    seg_path(path, n, dir, QNAME, 0);
}

/* Segment 0 was damaged at record `bad` so that the records after it
 * cannot be delimited: those before come, then segment 1 on. */
static void expect_segment0_cut(const char *dir, unsigned bad)
{
    unsigned n0 = seg_next(0, 1024);
    struct tn_diskq_stats st;
    struct tn_diskq *q = qopen(dir, 1024, 0);

    expect_range(q, 0, bad);
    expect_rec(q, n0);
    assert_int_equal(tn_diskq_depth(q), 100 - n0 - 1); /* recounted */
    expect_range(q, n0 + 1, 100);
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 1);
    tn_diskq_close(q);
}

static void test_corrupt_length_skips_rest_of_segment(void **state)
{
    char path[512];

    fill_segments(*state, path, sizeof(path));
    flip_byte(path, recs_size(0, 3)); /* record 3's length: now huge */
    expect_segment0_cut(*state, 3);
}

static void test_truncated_older_segment(void **state)
{
    char path[512];

    fill_segments(*state, path, sizeof(path));
    assert_int_equal(truncate(path, recs_size(0, 4) + 5), 0); /* record 4 cut short */
    expect_segment0_cut(*state, 4);
}

static void test_garbage_meta(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q;
    char path[512];
    FILE *f;

    q = qopen(dir, 1024, 0);
    put_range(q, 0, 300);
    tn_diskq_close(q);

    meta_path(path, sizeof(path), dir, QNAME);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("\x01\x02 not a metadata file \xff\n", f);
    fclose(f);
    q = qopen(dir, 1024, 0); /* rebuilt from the segments */
    assert_int_equal(tn_diskq_depth(q), 300);
    expect_range(q, 0, 150);
    tn_diskq_close(q);

    /* Well-formed text whose checksum does not match is just as bad. */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("ternd-diskq 1\n5\n0,0\n0,0\ncrc 00000000\n", f);
    fclose(f);
    q = qopen(dir, 1024, 0);
    /* The read position is lost with it: delivery restarts at the oldest
     * segment left (at least once), never with garbage. */
    expect_from_first(q, 150, 300);
    tn_diskq_close(q);

    /* An empty metadata file and a missing one: the same, and what was
     * read from the last segment comes again. */
    f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    q = qopen(dir, 1024, 0);
    expect_from_first(q, 299, 300);
    tn_diskq_close(q);
    unlink(path);
    q = qopen(dir, 1024, 0);
    expect_from_first(q, 299, 300);
    tn_diskq_close(q);
}

static void test_missing_segment(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q;
    /* Segment boundaries: records [0, n0) in 0, [n0, n1) in 1. */
    unsigned n0 = seg_next(0, 1024), n1 = seg_next(n0, 1024);
    char path[512];

    q = qopen(dir, 1024, 0);
    put_range(q, 0, 100);
    tn_diskq_close(q);
    seg_path(path, sizeof(path), dir, QNAME, 1);
    assert_int_equal(unlink(path), 0);

    q = qopen(dir, 1024, 0);
    assert_int_equal(tn_diskq_depth(q), 100 - (n1 - n0)); /* recounted at open */
    expect_range(q, 0, n0);
    expect_range(q, n1, 100);
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.missing_files, 1);
    tn_diskq_close(q);
}

static void test_empty(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q = qopen(dir, 1024, 0);

    put_range(q, 0, 200);
    expect_range(q, 0, 10);
    assert_int_equal(tn_diskq_empty(q), 0);
    expect_empty(q);
    assert_int_equal(count_files(dir), 2); /* a fresh segment + metadata */
    put_range(q, 500, 510);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.read_file, st.write_file);
    tn_diskq_close(q);

    q = qopen(dir, 1024, 0);
    assert_int_equal(tn_diskq_depth(q), 10);
    expect_range(q, 500, 510);
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_delete_removes_files(void **state)
{
    const char *dir = *state;
    struct tn_diskq *other, *q = qopen(dir, 1024, 0);
    char path[512];
    int err;

    /* "topic1x" shares a prefix with "topic1": its files must survive. */
    other = tn_diskq_open(dir, QNAME "x", NULL, &err);
    assert_non_null(other);
    assert_int_equal(tn_diskq_put(other, "abc", 3), 0);
    put_range(q, 0, 300);
    expect_range(q, 0, 100);
    assert_true(count_files(dir) > 10);
    assert_int_equal(tn_diskq_delete(q), 0);
    assert_int_equal(count_files(dir), 2);
    seg_path(path, sizeof(path), dir, QNAME "x", 0);
    assert_true(file_size(path) > 0);
    assert_int_equal(tn_diskq_delete(other), 0);
    assert_int_equal(count_files(dir), 0);
}

static void test_oversize_and_putv(void **state)
{
    const char *dir = *state;
    static unsigned char big[4097];
    struct tn_diskq *q = qopen(dir, 0, 0); /* max_msg_size 4096 */
    struct iovec v[TN_DISKQ_IOV_MAX + 1];
    const void *data;
    size_t len;
    int i;

    assert_int_equal(tn_diskq_put(q, big, 4097), TN_ETOOBIG);
    assert_int_equal(tn_diskq_depth(q), 0);
    memset(big, 7, sizeof(big));
    assert_int_equal(tn_diskq_put(q, big, 4096), 0);

    v[0].iov_base = big;
    v[0].iov_len = 4000;
    v[1].iov_base = big;
    v[1].iov_len = 97;
    assert_int_equal(tn_diskq_putv(q, v, 2), TN_ETOOBIG);
    v[0].iov_base = "head:";
    v[0].iov_len = 5;
    v[1].iov_base = "body";
    v[1].iov_len = 4;
    assert_int_equal(tn_diskq_putv(q, v, 2), 0);
    v[2] = v[1];
    v[1].iov_base = NULL; /* an empty piece changes nothing */
    v[1].iov_len = 0;
    assert_int_equal(tn_diskq_putv(q, v, 3), 0);
    for (i = 0; i <= TN_DISKQ_IOV_MAX; i++)
        v[i] = v[0];
    assert_int_equal(tn_diskq_putv(q, v, TN_DISKQ_IOV_MAX + 1), TN_EINVAL);
    assert_int_equal(tn_diskq_depth(q), 3);
    tn_diskq_close(q);

    q = qopen(dir, 0, 0); /* read back from the file, checksums checked */
    assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
    assert_int_equal(len, 4096);
    assert_int_equal(tn_diskq_advance(q), 0);
    for (i = 0; i < 2; i++) {
        assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
        assert_int_equal(len, 9);
        assert_memory_equal(data, "head:body", 9);
        assert_int_equal(tn_diskq_advance(q), 0);
    }
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_record_larger_than_segment(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = qopen(dir, 64, 0);

    /* Each record is bigger than a segment: one segment each. */
    put_range(q, 100, 140);
    expect_range(q, 100, 140);
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_zero_length_and_min_size(void **state)
{
    const char *dir = *state;
    struct tn_diskq_opts o = {0};
    struct tn_diskq *q;
    const void *data;
    size_t len;
    int err;

    q = tn_diskq_open(dir, "zero", &o, &err); /* min_msg_size 0 */
    assert_non_null(q);
    assert_int_equal(tn_diskq_put(q, NULL, 0), 0);
    assert_int_equal(tn_diskq_put(q, "x", 1), 0);
    tn_diskq_close(q);
    q = tn_diskq_open(dir, "zero", &o, &err);
    assert_non_null(q);
    assert_int_equal(tn_diskq_depth(q), 2);
    assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(tn_diskq_advance(q), 0);
    assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
    assert_int_equal(len, 1);
    assert_int_equal(tn_diskq_advance(q), 0);
    expect_empty(q);
    tn_diskq_close(q);

    o.min_msg_size = 4;
    q = tn_diskq_open(dir, "min4", &o, &err);
    assert_non_null(q);
    assert_int_equal(tn_diskq_put(q, NULL, 0), TN_EINVAL);
    assert_int_equal(tn_diskq_put(q, "abc", 3), TN_EINVAL);
    assert_int_equal(tn_diskq_put(q, "abcd", 4), 0);
    assert_int_equal(tn_diskq_depth(q), 1);
    tn_diskq_close(q);
}

static void test_sync_every(void **state)
{
    const char *dir = *state;
    struct tn_diskq_opts o = {0};
    struct tn_diskq_stats st0, st;
    struct tn_diskq *q;
    struct timespec ts = {0, 80 * 1000000};
    int err;

    o.sync_every = 0; /* like 1: every operation */
    q = tn_diskq_open(dir, "each", &o, &err);
    assert_non_null(q);
    tn_diskq_get_stats(q, &st0);
    put_range(q, 0, 10);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.syncs - st0.syncs, 10);
    /* data file, metadata tmp file, directory: three per sync */
    assert_int_equal(st.fsyncs - st0.fsyncs, 30);
    assert_false(tn_diskq_sync_due(q));
    expect_rec(q, 0); /* a read is synced too (metadata only) */
    tn_diskq_get_stats(q, &st0);
    assert_int_equal(st0.syncs - st.syncs, 1);
    assert_int_equal(st0.fsyncs - st.fsyncs, 2);
    tn_diskq_close(q);

    o.sync_every = 10;
    o.sync_timeout_ms = 50;
    q = tn_diskq_open(dir, "ten", &o, &err);
    assert_non_null(q);
    tn_diskq_get_stats(q, &st0);
    put_range(q, 0, 25);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.syncs - st0.syncs, 2);
    assert_false(tn_diskq_sync_due(q)); /* dirty, but only just */
    nanosleep(&ts, NULL);
    assert_true(tn_diskq_sync_due(q));
    assert_int_equal(tn_diskq_sync(q), 0);
    assert_false(tn_diskq_sync_due(q));
    tn_diskq_get_stats(q, &st0);
    assert_int_equal(st0.syncs - st.syncs, 1);
    assert_int_equal(tn_diskq_sync(q), 0); /* nothing changed: no work */
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.fsyncs, st0.fsyncs);
    assert_int_equal(st.sync_errors, 0);
    /* Reads make it due as well; their sync writes only metadata. */
    expect_rec(q, 0);
    nanosleep(&ts, NULL);
    assert_true(tn_diskq_sync_due(q));
    assert_int_equal(tn_diskq_sync(q), 0);
    tn_diskq_get_stats(q, &st0);
    assert_int_equal(st0.fsyncs - st.fsyncs, 2);
    tn_diskq_close(q);
}

static void test_unreadable_meta_fails_open(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = qopen(dir, 1024, 0);
    char path[512];
    int err = 0;

    put_range(q, 0, 50);
    tn_diskq_close(q);
    /* A metadata file that cannot be read (here: a directory) is not a
     * damaged one: rebuilding would redeliver what was read. */
    meta_path(path, sizeof(path), dir, QNAME);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_null(tn_diskq_open(dir, QNAME, NULL, &err));
    assert_int_equal(err, -EISDIR);
    assert_int_equal(rmdir(path), 0);
    q = qopen(dir, 1024, 0); /* no metadata now: rebuilt, nothing lost */
    expect_from_first(q, 0, 50);
    tn_diskq_close(q);
}

/* Child: fill the disk (a file size limit) until a put fails; exit with
 * the number of records that went in, or 250+ when something is wrong. */
static void fill_until_failure(const char *dir)
{
    struct rlimit rl = {1000, 1000};
    unsigned char buf[256];
    struct tn_diskq *q = qopen(dir, 0, 1);
    unsigned i;
    int rc = 0;

    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
        _exit(250);
    for (i = 0; i < 200 && rc == 0; i++)
        rc = tn_diskq_put(q, buf, make_rec(i, buf));
    if (rc != -EFBIG)
        _exit(251);
    if (tn_diskq_depth(q) != i - 1)
        _exit(252);
    _exit((int)i - 1);
}

static void test_failed_write_leaves_no_partial_record(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q;
    char path[512];
    unsigned k;
    int status;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0)
        fill_until_failure(dir);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    k = (unsigned)WEXITSTATUS(status);
    assert_true(k > 5 && k < 250);
    seg_path(path, sizeof(path), dir, QNAME, 0);
    assert_int_equal(file_size(path), recs_size(0, k)); /* the failed write was cut back */

    q = qopen(dir, 0, 0);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(tn_diskq_depth(q), k);
    expect_range(q, 0, k);
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_100k_round_trip(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = qopen(dir, 1024 * 1024, 0);
    struct tn_diskq_stats st;

    put_range(q, 0, 100000);
    assert_int_equal(tn_diskq_depth(q), 100000);
    expect_range(q, 0, 40000);
    assert_int_equal(tn_diskq_close(q), 0);
    q = qopen(dir, 1024 * 1024, 0);
    assert_int_equal(tn_diskq_depth(q), 60000);
    expect_range(q, 40000, 100000);
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(tn_diskq_close(q), 0);
    assert_int_equal(count_files(dir), 2);
}

/* ---- write buffering ------------------------------------------------------- */

static struct tn_diskq_group group; /* the buffered queues' group */

/* Open `name` with a write buffer of wbuf bytes in `group`. */
static struct tn_diskq *bopen(const char *dir, const char *name, uint64_t file_size_max,
                              uint32_t wbuf)
{
    struct tn_diskq_opts o = {0};
    struct tn_diskq *q;
    int err = 0;

    o.max_bytes_per_file = file_size_max;
    o.max_msg_size = 4096;
    o.sync_every = 100000;
    o.write_buffer = wbuf;
    o.group = &group;
    q = tn_diskq_open(dir, name, &o, &err);
    assert_non_null(q);
    return q;
}

static void test_buffered_one_write_in_order(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = bopen(dir, QNAME, 0, 256 * 1024);
    struct tn_diskq_stats st;
    char path[512];

    seg_path(path, sizeof(path), dir, QNAME, 0);
    put_range(q, 0, 300);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.writes, 0); /* all still buffered */
    assert_int_equal(file_size(path), 0);
    assert_int_equal(tn_diskq_depth(q), 300);
    assert_int_equal(tn_diskq_group_flush(&group), 0);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.writes, 1);
    assert_int_equal(file_size(path), recs_size(0, 300));
    assert_null(group.dirty);
    /* buffered records are read too, after those on disk, in order */
    put_range(q, 300, 400);
    expect_range(q, 0, 250);
    put_range(q, 400, 450);
    expect_range(q, 250, 450);
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.writes, 2); /* the reader caught up once */
    assert_int_equal(tn_diskq_close(q), 0);
}

static void test_buffered_small_buffer_and_rollovers(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = bopen(dir, QNAME, 2048, 1024);
    struct tn_diskq_stats st;

    put_range(q, 0, 1000);
    tn_diskq_get_stats(q, &st);
    assert_true(st.writes > 0 && st.writes < 1000 / 4);
    assert_true(st.write_file > 10);
    expect_range(q, 0, 600);
    assert_int_equal(tn_diskq_close(q), 0);
    q = bopen(dir, QNAME, 2048, 1024);
    assert_int_equal(tn_diskq_depth(q), 400);
    expect_range(q, 600, 1000);
    expect_empty(q);
    tn_diskq_close(q);
}

static void test_buffered_flush_on_close(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = bopen(dir, QNAME, 0, 256 * 1024);
    struct tn_diskq_stats st;

    put_range(q, 0, 50);
    assert_non_null(group.dirty);
    assert_int_equal(tn_diskq_close(q), 0);
    assert_null(group.dirty); /* a closed queue leaves the group */
    q = bopen(dir, QNAME, 0, 256 * 1024);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.recovered, 0); /* the close synced them */
    expect_range(q, 0, 50);
    expect_empty(q);
    tn_diskq_close(q);
}

/* Child: 300 records flushed (never synced), 7 more only buffered, death. */
static void crash_after_flush(const char *dir)
{
    struct tn_diskq *q = bopen(dir, QNAME, 2048, 256 * 1024);

    put_range(q, 0, 300);
    if (tn_diskq_group_flush(&group) != 0)
        _exit(1);
    put_range(q, 300, 307);
}

static void test_buffered_crash_after_flush_keeps_all(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q;

    in_crashing_child(crash_after_flush, dir);
    q = bopen(dir, QNAME, 2048, 256 * 1024);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.recovered, 300);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(tn_diskq_depth(q), 300); /* the unflushed 7 died with the process */
    expect_range(q, 0, 300);
    expect_empty(q);
    tn_diskq_close(q);
}

/* A sync of one queue of a group writes out the others first. */
static void test_group_sync_flushes_all(void **state)
{
    const char *dir = *state;
    struct tn_diskq *a = bopen(dir, "a", 0, 256 * 1024);
    struct tn_diskq *b = bopen(dir, "b", 0, 256 * 1024);
    char path[512];

    seg_path(path, sizeof(path), dir, "a", 0);
    put_range(a, 0, 20);
    put_range(b, 0, 5);
    assert_int_equal(file_size(path), 0);
    expect_range(b, 0, 1);
    assert_int_equal(tn_diskq_sync(b), 0);
    assert_int_equal(file_size(path), recs_size(0, 20));
    assert_null(group.dirty);
    expect_range(a, 0, 20);
    expect_range(b, 1, 5);
    tn_diskq_close(a);
    tn_diskq_close(b);
}

/* sync_every 1 with a buffer: every put is written and fsynced before
 * the put returns (what "fsync before the OK" needs). */
static void test_buffered_sync_every_one(void **state)
{
    const char *dir = *state;
    struct tn_diskq_opts o = {0};
    struct tn_diskq_stats st;
    struct tn_diskq *q;
    char path[512];
    int err;

    o.sync_every = 1;
    o.write_buffer = 64 * 1024;
    o.group = &group;
    q = tn_diskq_open(dir, QNAME, &o, &err);
    assert_non_null(q);
    seg_path(path, sizeof(path), dir, QNAME, 0);
    put_range(q, 0, 10);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.writes, 10);
    assert_int_equal(file_size(path), recs_size(0, 10));
    assert_false(tn_diskq_sync_due(q));
    tn_diskq_close(q);
}

static void test_buffered_larger_record_keeps_order(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = bopen(dir, QNAME, 0, 64); /* records over 64 bytes bypass it */
    struct tn_diskq_opts o = {0};
    int err = 0;

    put_range(q, 0, 200);
    expect_range(q, 0, 200);
    expect_empty(q);
    tn_diskq_close(q);
    o.write_buffer = TN_DISKQ_WRITE_BUFFER_MAX + 1;
    assert_null(tn_diskq_open(dir, QNAME, &o, &err));
    assert_int_equal(err, TN_EINVAL);
}

/* Open QNAME buffered, with automatic syncs every 10 operations on a thread. */
static struct tn_diskq *aopen(const char *dir)
{
    struct tn_diskq_opts o = {0};
    struct tn_diskq *q;
    int err = 0;

    o.max_bytes_per_file = 2048;
    o.max_msg_size = 4096;
    o.sync_every = 10;
    o.write_buffer = 4096;
    o.group = &group;
    o.async_sync = 1;
    q = tn_diskq_open(dir, QNAME, &o, &err);
    assert_non_null(q);
    return q;
}

static void test_async_sync(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = aopen(dir);
    struct tn_diskq_stats st;

    put_range(q, 0, 1000);
    expect_range(q, 0, 1000);
    expect_empty(q);
    assert_int_equal(tn_diskq_sync(q), 0); /* waits for the job running */
    tn_diskq_get_stats(q, &st);
    assert_true(st.syncs >= 2);
    assert_true(st.fsyncs >= 3);
    assert_int_equal(st.sync_errors, 0);
    assert_int_equal(count_files(dir), 2); /* read segments deleted: metadata + one */
    assert_int_equal(tn_diskq_close(q), 0);
    q = aopen(dir);
    expect_empty(q);
    tn_diskq_close(q);
}

/* A finished job makes the queue due for a sync even when nothing else
 * happens (the sync reaps it). */
static void test_async_sync_due_when_done(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q = aopen(dir);
    struct timespec ts = {0, 10 * 1000000};
    struct tn_diskq_stats st;
    int i;

    put_range(q, 0, 10); /* the 10th starts a job; nothing is dirty after it */
    assert_int_equal(count_files(dir), 2);
    for (i = 0; i < 1000 && !tn_diskq_sync_due(q); i++)
        nanosleep(&ts, NULL);
    assert_true(tn_diskq_sync_due(q));
    assert_int_equal(tn_diskq_sync(q), 0);
    assert_false(tn_diskq_sync_due(q));
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.syncs, 2); /* the open's and the job's */
    tn_diskq_close(q);
}

/* More queues syncing at once than sync threads may run: those left out
 * sync later, and nothing is lost. */
static void test_async_sync_many_queues(void **state)
{
    const char *dir = *state;
    struct tn_diskq_opts o = {0};
    struct tn_diskq *q[24];
    struct tn_diskq_stats st;
    char name[16];
    int i, err = 0;

    o.sync_every = 5;
    o.write_buffer = 4096;
    o.group = &group;
    o.async_sync = 1;
    for (i = 0; i < 24; i++) {
        snprintf(name, sizeof(name), "q%d", i);
        q[i] = tn_diskq_open(dir, name, &o, &err);
        assert_non_null(q[i]);
    }
    for (i = 0; i < 24 * 40; i++)
        put_range(q[i % 24], (unsigned)(i / 24), (unsigned)(i / 24) + 1);
    for (i = 0; i < 24; i++) {
        tn_diskq_get_stats(q[i], &st);
        assert_int_equal(st.sync_errors, 0);
        assert_int_equal(tn_diskq_close(q[i]), 0);
    }
    for (i = 0; i < 24; i++) {
        snprintf(name, sizeof(name), "q%d", i);
        q[i] = tn_diskq_open(dir, name, &o, &err);
        assert_non_null(q[i]);
        tn_diskq_get_stats(q[i], &st);
        assert_int_equal(st.recovered, 0); /* every close synced */
        expect_range(q[i], 0, 40);
        expect_empty(q[i]);
        tn_diskq_close(q[i]);
    }
}

/* Child: 1000 records with syncs on threads, 400 read, all flushed, death
 * (maybe while a sync runs). */
static void crash_during_async_syncs(const char *dir)
{
    struct tn_diskq *q = aopen(dir);

    put_range(q, 0, 1000);
    expect_range(q, 0, 400);
    if (tn_diskq_group_flush(&group) != 0)
        _exit(1);
}

static void test_async_sync_crash_keeps_all(void **state)
{
    const char *dir = *state;
    struct tn_diskq_stats st;
    struct tn_diskq *q;

    in_crashing_child(crash_during_async_syncs, dir);
    q = aopen(dir);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 0);
    expect_from_first(q, 400, 1000); /* reads may come back, puts are all there */
    tn_diskq_close(q);
}

/* ---- held records: tn_diskq_take / tn_diskq_release ------------------------ */

/* Peek record i and take it into h. */
static void take_rec(struct tn_diskq *q, unsigned i, struct tn_diskq_hold *h)
{
    unsigned char want[256];
    const void *data;
    size_t len, wlen = make_rec(i, want);

    assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
    assert_int_equal(len, wlen);
    assert_memory_equal(data, want, wlen);
    assert_int_equal(tn_diskq_take(q, h), 0);
}

static void expect_commit(struct tn_diskq *q, uint32_t file, uint64_t pos, uint64_t held)
{
    struct tn_diskq_stats st;

    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.commit_file, file);
    assert_int_equal(st.commit_pos, pos);
    assert_int_equal(st.held, held);
}

/* Releases in any order: the committed position moves over the released
 * prefix only, stopping at the oldest record still held. */
static void test_hold_out_of_order_release(void **state)
{
    const char *dir = *state;
    struct tn_diskq_hold h[10] = {0}, never = {0};
    struct tn_diskq *q = qopen(dir, 0, 1);
    struct tn_diskq_stats st;
    unsigned i;

    put_range(q, 0, 12);
    assert_int_equal(tn_diskq_take(q, &h[0]), TN_EINVAL); /* nothing peeked */
    for (i = 0; i < 10; i++)
        take_rec(q, i, &h[i]);
    assert_int_equal(tn_diskq_depth(q), 2); /* unread */
    expect_commit(q, 0, 0, 10);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.read_pos, recs_size(0, 10));

    assert_int_equal(tn_diskq_release(q, &h[3]), 0);
    assert_int_equal(tn_diskq_release(q, &h[5]), 0);
    assert_int_equal(tn_diskq_release(q, &h[9]), 0);
    expect_commit(q, 0, 0, 7);
    assert_int_equal(tn_diskq_release(q, &h[0]), 0);
    expect_commit(q, 0, recs_size(0, 1), 6);
    assert_int_equal(tn_diskq_release(q, &h[2]), 0);
    expect_commit(q, 0, recs_size(0, 1), 5);
    assert_int_equal(tn_diskq_release(q, &h[1]), 0); /* 1, 2, 3 done: on to 4 */
    expect_commit(q, 0, recs_size(0, 4), 4);
    assert_int_equal(tn_diskq_release(q, &h[1]), TN_ENOTFOUND); /* twice */
    assert_int_equal(tn_diskq_release(q, &never), TN_ENOTFOUND);
    assert_int_equal(tn_diskq_release(q, &h[4]), 0);
    expect_commit(q, 0, recs_size(0, 6), 3);

    /* advancing past a record while others are held moves nothing */
    expect_rec(q, 10);
    expect_commit(q, 0, recs_size(0, 6), 3);
    assert_int_equal(tn_diskq_release(q, &h[6]), 0);
    assert_int_equal(tn_diskq_release(q, &h[8]), 0);
    assert_int_equal(tn_diskq_release(q, &h[7]), 0); /* the last: the read position */
    expect_commit(q, 0, recs_size(0, 11), 0);
    expect_rec(q, 11); /* none held: an advance commits at once */
    expect_commit(q, 0, recs_size(0, 12), 0);
    expect_empty(q);
    tn_diskq_close(q);
}

/* Child: 25 records, 0..19 taken, some released, death (sync_every 1:
 * every move of the committed position is durable at once). */
static void crash_with_holds(const char *dir)
{
    static const unsigned done[] = {0, 1, 2, 5, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
    struct tn_diskq_hold h[20] = {0};
    struct tn_diskq *q = qopen(dir, 0, 1);
    unsigned i;

    put_range(q, 0, 25);
    for (i = 0; i < 20; i++)
        take_rec(q, i, &h[i]);
    for (i = 0; i < sizeof(done) / sizeof(done[0]); i++)
        assert_int_equal(tn_diskq_release(q, &h[done[i]]), 0);
}

/* After a crash, reading restarts at the oldest record not released (3):
 * the unreleased ones (3, 4, 6, 8, 9) come back, with what was read after
 * the first of them (released or not), and the unread ones; nothing before. */
static void test_hold_crash_redelivers_unreleased(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q;

    in_crashing_child(crash_with_holds, dir);
    q = qopen(dir, 0, 1);
    assert_int_equal(tn_diskq_depth(q), 22);
    expect_range(q, 3, 25);
    expect_empty(q);
    tn_diskq_close(q);
}

/* Child: 25 records, all 20 taken released in reverse, death. */
static void crash_all_released(const char *dir)
{
    struct tn_diskq_hold h[20] = {0};
    struct tn_diskq *q = qopen(dir, 0, 1);
    int i;

    put_range(q, 0, 25);
    for (i = 0; i < 20; i++)
        take_rec(q, (unsigned)i, &h[i]);
    for (i = 19; i >= 0; i--)
        assert_int_equal(tn_diskq_release(q, &h[i]), 0);
}

static void test_hold_crash_after_all_released(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q;

    in_crashing_child(crash_all_released, dir);
    q = qopen(dir, 0, 1);
    assert_int_equal(tn_diskq_depth(q), 5);
    expect_range(q, 20, 25);
    expect_empty(q);
    tn_diskq_close(q);
}

/* A clean close keeps held records too: they are not done. */
static void test_hold_close_keeps_held(void **state)
{
    const char *dir = *state;
    struct tn_diskq_hold h[5] = {0};
    struct tn_diskq *q = qopen(dir, 0, 0);
    unsigned i;

    put_range(q, 0, 8);
    for (i = 0; i < 5; i++)
        take_rec(q, i, &h[i]);
    assert_int_equal(tn_diskq_release(q, &h[0]), 0);
    assert_int_equal(tn_diskq_release(q, &h[2]), 0);
    assert_int_equal(tn_diskq_close(q), 0);
    q = qopen(dir, 0, 0);
    assert_int_equal(tn_diskq_depth(q), 7);
    expect_range(q, 1, 8);
    expect_empty(q);
    tn_diskq_close(q);
}

/* Segments are deleted only below the committed one: a record held in an
 * early segment keeps it and every later one on disk. */
static void test_hold_segments_kept_from_committed(void **state)
{
    const char *dir = *state;
    struct tn_diskq_hold *h = calloc(300, sizeof(*h));
    struct tn_diskq_stats st;
    struct tn_diskq *q = qopen(dir, 1024, 1);
    unsigned i, keep = seg_next(seg_next(0, 1024), 1024) + 3; /* in segment 2 */
    char path[512];

    assert_non_null(h);
    put_range(q, 0, 300);
    for (i = 0; i < 300; i++)
        take_rec(q, i, &h[i]);
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_true(st.write_file > 4);
    assert_int_equal(st.read_file, st.write_file);
    assert_int_equal(count_files(dir), (int)st.write_file + 2); /* all + metadata */

    for (i = 1; i < 300; i++)
        if (i != keep)
            assert_int_equal(tn_diskq_release(q, &h[i]), 0);
    expect_commit(q, 0, 0, 2); /* record 0 still held */
    assert_int_equal(tn_diskq_sync(q), 0);
    assert_int_equal(count_files(dir), (int)st.write_file + 2);

    assert_int_equal(tn_diskq_release(q, &h[0]), 0);
    assert_int_equal(tn_diskq_sync(q), 0);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.commit_file, 2);
    assert_int_equal(st.commit_pos, recs_size(seg_next(seg_next(0, 1024), 1024), keep));
    assert_int_equal(st.files, st.write_file - 1);
    assert_int_equal(count_files(dir), (int)st.files + 1);
    seg_path(path, sizeof(path), dir, QNAME, 1);
    assert_int_equal(file_size(path), -1);
    seg_path(path, sizeof(path), dir, QNAME, 2);
    assert_true(file_size(path) > 0);

    assert_int_equal(tn_diskq_release(q, &h[keep]), 0);
    assert_int_equal(tn_diskq_sync(q), 0);
    assert_int_equal(count_files(dir), 2); /* the write segment + metadata */
    tn_diskq_close(q);
    free(h);

    q = qopen(dir, 1024, 1);
    expect_empty(q);
    tn_diskq_close(q);
}

/* Emptying forgets the holds without touching them; their release after
 * is refused and changes nothing. */
static void test_hold_empty_forgets(void **state)
{
    const char *dir = *state;
    struct tn_diskq_hold h[3] = {0};
    struct tn_diskq *q = qopen(dir, 0, 1);
    struct tn_diskq_stats st;

    put_range(q, 0, 5);
    take_rec(q, 0, &h[0]);
    take_rec(q, 1, &h[1]);
    assert_int_equal(tn_diskq_empty(q), 0);
    expect_commit(q, 1, 0, 0);
    assert_int_equal(tn_diskq_release(q, &h[1]), TN_ENOTFOUND);
    assert_int_equal(tn_diskq_release(q, &h[0]), TN_ENOTFOUND);
    put_range(q, 10, 12);
    take_rec(q, 10, &h[2]);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.held, 1);
    assert_int_equal(tn_diskq_close(q), 0);
    q = qopen(dir, 0, 1);
    expect_range(q, 10, 12);
    expect_empty(q);
    tn_diskq_close(q);
}

/* A corrupt record skipped while an earlier one is held stays counted
 * from the committed position: a reopen finds the depth it will meet. */
static void test_hold_skipped_corrupt_record_counted(void **state)
{
    const char *dir = *state;
    struct tn_diskq_hold h = {0};
    struct tn_diskq_stats st;
    struct tn_diskq *q = qopen(dir, 0, 1);
    char path[512];

    put_range(q, 0, 10);
    tn_diskq_close(q);
    seg_path(path, sizeof(path), dir, QNAME, 0);
    flip_byte(path, recs_size(0, 5) + 8 + 2); /* inside record 5's payload */

    q = qopen(dir, 0, 1);
    take_rec(q, 0, &h);
    expect_range(q, 1, 5);
    expect_range(q, 6, 10); /* 5 skipped */
    expect_empty(q);
    assert_int_equal(tn_diskq_close(q), 0); /* record 0 still held */

    q = qopen(dir, 0, 1);
    assert_int_equal(tn_diskq_depth(q), 10);
    expect_range(q, 0, 5);
    expect_range(q, 6, 10);
    expect_empty(q);
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 1);
    tn_diskq_close(q);
}

/* Child: async syncs every 10 operations; 1000 records all taken, all
 * released but record 500, a sync, death. */
static void crash_async_with_hold(const char *dir)
{
    struct tn_diskq_hold *h = calloc(1000, sizeof(*h));
    struct tn_diskq *q = aopen(dir);
    unsigned i;

    assert_non_null(h);
    put_range(q, 0, 1000);
    for (i = 0; i < 1000; i++)
        take_rec(q, i, &h[i]);
    for (i = 0; i < 1000; i++)
        if (i != 500)
            assert_int_equal(tn_diskq_release(q, &h[i]), 0);
    assert_int_equal(tn_diskq_sync(q), 0);
}

/* The asynchronous syncs write the committed position of their moment:
 * after the crash reading restarts at the record still held. */
static void test_hold_async_sync_crash(void **state)
{
    const char *dir = *state;
    struct tn_diskq *q;

    in_crashing_child(crash_async_with_hold, dir);
    q = aopen(dir);
    assert_int_equal(tn_diskq_depth(q), 500);
    expect_range(q, 500, 1000);
    expect_empty(q);
    tn_diskq_close(q);
}

#define HDR_BYTES 8 /* [4B length][4B crc] */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* The record crc is zlib's crc32 (the on-disk format): records the queue
 * writes check out with zlib, and records framed with zlib read back. */
static void test_crc_is_zlibs(void **state)
{
    const char *dir = *state;
    unsigned char buf[HDR_BYTES + 300], *file;
    struct tn_diskq_stats st;
    struct tn_diskq *q = qopen(dir, 0, 0);
    char path[512];
    size_t off, size;
    unsigned i, n = 0;
    FILE *f;

    for (i = 0; i < 300; i++) {
        memset(buf, (int)(i * 13), i);
        assert_int_equal(tn_diskq_put(q, buf, i), 0);
    }
    tn_diskq_close(q);
    seg_path(path, sizeof(path), dir, QNAME, 0);
    file = malloc(64 * 1024); /* 300 records of 0..299 bytes: 47,250 */
    f = fopen(path, "rb");
    assert_non_null(file);
    assert_non_null(f);
    size = fread(file, 1, 64 * 1024, f);
    fclose(f);
    assert_int_equal(size, 300 * HDR_BYTES + 299 * 300 / 2);
    for (off = 0; off < size; n++) {
        uint32_t len = be32(file + off), crc = be32(file + off + 4);
        uLong c = crc32(0L, file + off, 4);

        assert_int_equal(len, n);
        assert_int_equal(crc, (uint32_t)crc32(c, file + off + HDR_BYTES, len));
        off += HDR_BYTES + len;
    }
    assert_int_equal(n, 300);
    free(file);

    /* the other way: a segment framed with zlib, no metadata */
    assert_int_equal(unlink(path), 0);
    meta_path(path, sizeof(path), dir, QNAME);
    assert_int_equal(unlink(path), 0);
    seg_path(path, sizeof(path), dir, QNAME, 5);
    f = fopen(path, "wb");
    assert_non_null(f);
    for (i = 0; i < 100; i++) {
        uint32_t len = (i * 37) % 257;
        uLong c;

        put32(buf, len);
        memset(buf + HDR_BYTES, (int)i, len);
        c = crc32(0L, buf, 4);
        put32(buf + 4, (uint32_t)crc32(c, buf + HDR_BYTES, len));
        assert_int_equal(fwrite(buf, 1, HDR_BYTES + len, f), HDR_BYTES + len);
    }
    fclose(f);
    q = qopen(dir, 0, 0);
    assert_int_equal(tn_diskq_depth(q), 100);
    for (i = 0; i < 100; i++) {
        const void *data;
        size_t len;

        assert_int_equal(tn_diskq_peek(q, &data, &len), 0);
        assert_int_equal(len, (i * 37) % 257);
        assert_int_equal(tn_diskq_advance(q), 0);
    }
    tn_diskq_get_stats(q, &st);
    assert_int_equal(st.corrupt, 0);
    tn_diskq_close(q);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)
    const struct CMUnitTest tests[] = {
        T(test_names_and_options),
        T(test_order_across_rollovers),
        T(test_depth_peek_advance),
        T(test_interleaved_reader),
        T(test_reopen_keeps_everything),
        T(test_crash_meta_older_than_data),
        T(test_crash_redelivers_unsynced_reads),
        T(test_torn_tail),
        T(test_zero_filled_tail_is_not_records),
        T(test_corrupt_middle_record),
        T(test_corrupt_length_skips_rest_of_segment),
        T(test_garbage_meta),
        T(test_missing_segment),
        T(test_empty),
        T(test_delete_removes_files),
        T(test_oversize_and_putv),
        T(test_record_larger_than_segment),
        T(test_zero_length_and_min_size),
        T(test_sync_every),
        T(test_truncated_older_segment),
        T(test_unreadable_meta_fails_open),
        T(test_failed_write_leaves_no_partial_record),
        T(test_100k_round_trip),
        T(test_buffered_one_write_in_order),
        T(test_buffered_small_buffer_and_rollovers),
        T(test_buffered_flush_on_close),
        T(test_buffered_crash_after_flush_keeps_all),
        T(test_group_sync_flushes_all),
        T(test_buffered_sync_every_one),
        T(test_buffered_larger_record_keeps_order),
        T(test_async_sync),
        T(test_async_sync_crash_keeps_all),
        T(test_async_sync_due_when_done),
        T(test_async_sync_many_queues),
        T(test_crc_is_zlibs),
        T(test_hold_out_of_order_release),
        T(test_hold_crash_redelivers_unreleased),
        T(test_hold_crash_after_all_released),
        T(test_hold_close_keeps_held),
        T(test_hold_segments_kept_from_committed),
        T(test_hold_empty_forgets),
        T(test_hold_async_sync_crash),
        T(test_hold_skipped_corrupt_record_counted),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
