/*
 * diskq.h -- the crash-safe disk queue a broker topic or channel overflows
 * to once its memory queue is full (the model is nsqd's go-diskqueue).
 *
 * A queue is a FIFO of opaque records stored in DIR as segment files
 *   <name>.diskqueue.NNNNNN.dat   records: [4B BE length][4B BE crc][payload]
 * plus one metadata file
 *   <name>.diskqueue.meta.dat     depth, committed file/pos, write file/pos
 * which is replaced atomically (tmp file, fsync, rename, fsync dir). The crc
 * is zlib's crc32 over the 4 length bytes followed by the payload: covering
 * the length means a zero-filled region (a common crash leftover) never
 * parses as a run of valid empty records.
 *
 * Crash safety: tn_diskq_sync() fsyncs the data before it writes the
 * metadata, so everything the metadata counts is on disk. On open, records
 * found beyond the recorded write position (written but not yet synced when
 * the process or machine died) are checked and kept; a torn or corrupt tail
 * is cut off; corrupt records met while reading are skipped and counted; a
 * missing segment is skipped. All of this is logged (tn_log_warn, naming
 * the file and offset) and never returns garbage: every record handed out
 * passed its length and crc checks.
 *
 * Delivery is at least once. The queue reads ahead with an in-memory read
 * position, but the metadata records the committed position: the oldest
 * record taken with tn_diskq_take and not yet released (the read position
 * when none is held), with the depth counted from there. A record's
 * message handed to a consumer is therefore never lost to a crash before
 * the owner is done with it: after a crash (or a close with records still
 * held) reading restarts at the committed position, so the held records
 * come back together with everything read after the oldest of them,
 * released or not, and with records released after the last sync. Nothing
 * before the committed position ever comes back, and segment files are
 * deleted only below the committed one. Taking changes nothing durable;
 * releasing the oldest held record moves the committed position (an
 * operation toward sync_every). The holds are the caller's memory (one per
 * record held, no allocation here): their number is bounded by what the
 * caller keeps in memory -- the broker holds a record per message in
 * flight (at most max_rdy_count per consumer), deferred or requeued to
 * memory after being read from a channel's queue, and one at a time while
 * a topic's record is copied to its channels. A record held for long (a
 * long REQ delay) keeps its segment and the later ones on disk.
 *
 * Write buffering (opts.write_buffer > 0; the broker uses it): a put
 * frames the record into a user-space buffer instead of writing it at once,
 * and the buffer goes to the segment in one write when it is full, when the
 * reader reaches buffered records (reads always see every record put), on
 * every sync (and so before any metadata is written, and before a
 * sync_every-triggered fsync), on roll-over and close, and when the owner
 * calls tn_diskq_flush() or tn_diskq_group_flush(). Crash safety is then
 * the owner's part: it must flush before it tells anyone a record was
 * stored -- the broker flushes its group before any reply acknowledging a
 * publish can reach a socket (see broker.c's prepare watcher and proto.c's
 * on_read) -- and a kill -9 afterwards finds the records in the page cache,
 * as with one write per record. A failed flush keeps the records buffered
 * and retries at the next one; puts fail meanwhile. Queues may share a
 * tn_diskq_group: a sync of one first flushes all of them, so no metadata
 * counts a record as moved away from a queue while the queue it moved to
 * still holds it only in memory.
 *
 * Threading: a queue is used by one thread at a time (the broker's loop
 * thread); nothing here blocks on anything but the disk, and there is no
 * libev inside. With opts.async_sync, a sync that sync_every triggers
 * (when it is over 1) writes the buffer on the calling thread and leaves
 * the fsyncs and the metadata write of that moment to a short-lived
 * thread, one at a time per queue and at most 8 at once in the process
 * (a queue left out tries again on its next operations, and the
 * sync_timeout sync bounds the wait), so puts and reads never wait for an
 * fsync; the queue's thread reaps it on a later operation and deletes the
 * segments that metadata no longer needs. The guarantee is that of a late
 * sync: what the metadata does not count yet is recovered (puts) or
 * redelivered (reads, releases) after a crash. tn_diskq_sync, close, empty and
 * delete wait for a running one. A queue may be open only once at a time
 * (no lock file).
 * Resources: three fds (directory, write and read segment); once read
 * from, a read-ahead buffer of 64 KiB (or the largest record); once put to
 * with a write buffer, that buffer. The caller drives periodic syncs:
 * tn_diskq_sync_due() on a timer, tn_diskq_sync() when it says so. Puts,
 * advances and releases that move the committed position sync on their
 * own every `sync_every` operations.
 */
#ifndef TERND_BROKER_DISKQ_H
#define TERND_BROKER_DISKQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define TN_DISKQ_DEFAULT_FILE_SIZE (100u * 1024 * 1024) /* max_bytes_per_file */
#define TN_DISKQ_DEFAULT_MAX_MSG (1024u * 1024)         /* max_msg_size */
#define TN_DISKQ_DEFAULT_SYNC_EVERY 2500u
#define TN_DISKQ_DEFAULT_SYNC_TIMEOUT_MS 2000u
#define TN_DISKQ_MSG_LIMIT (256u * 1024 * 1024) /* hard cap on max_msg_size */
#define TN_DISKQ_NAME_MAX 200                   /* longest queue name */
#define TN_DISKQ_IOV_MAX 16                     /* most iovecs tn_diskq_putv takes */
#define TN_DISKQ_WRITE_BUFFER_MAX (64u * 1024 * 1024) /* largest opts.write_buffer */

struct tn_diskq;

/* Queues flushed together (see above); zero-initialize, and keep it alive
 * as long as any queue opened with it. One thread, like the queues. */
struct tn_diskq_group {
    struct tn_diskq *dirty; /* queues holding buffered records */
};

/* Options; zero fields take the defaults above, except sync_every, where 0
 * (like 1) means a sync after every operation; a NULL opts gives 2500.
 * The file size may change
 * between runs. The message limits also bound what a read accepts as a
 * record: lowering max_msg_size (or raising min_msg_size) past a stored
 * record makes it undelimitable, and the rest of its segment is skipped as
 * corrupt; change them only on a drained queue. */
struct tn_diskq_opts {
    uint64_t max_bytes_per_file; /* roll to a new segment past this (100 MiB) */
    uint32_t min_msg_size;       /* smallest payload accepted (0: empty allowed) */
    uint32_t max_msg_size;       /* largest payload accepted (1 MiB, <= MSG_LIMIT) */
    uint32_t sync_every;         /* sync after this many puts + commits (0, 1: each) */
    uint32_t sync_timeout_ms;    /* tn_diskq_sync_due() once dirty this long (2000) */
    uint32_t write_buffer;       /* bytes of records buffered before a write (0: none,
                                    each put writes; <= WRITE_BUFFER_MAX) */
    struct tn_diskq_group *group; /* NULL: none */
    int async_sync;               /* syncs counted by sync_every (> 1) run on a
                                     thread of their own; see above */
};

/* A record taken off the queue but not yet released (tn_diskq_take). The
 * caller provides the storage (the broker gives one, from a free list, to
 * each message entry read from disk) and keeps it valid until
 * tn_diskq_release, or until the queue is emptied, closed or deleted,
 * which forget every hold without touching it. Zero-initialized means not
 * held. Fields are the queue's. */
struct tn_diskq_hold {
    struct tn_diskq_hold *prev, *next; /* the queue's held records, oldest first */
    uint64_t seq;                      /* records read before this one */
    uint64_t pos;                      /* where the record starts in `file` */
    uint32_t file;
    uint32_t gen; /* the queue's generation when taken; 0: not held */
};

/* Counters since open (depth and positions are current values). */
struct tn_diskq_stats {
    uint64_t depth;         /* records queued (put, not yet read) */
    uint64_t puts;          /* records written */
    uint64_t bytes_written; /* bytes appended to segments, framing included */
    uint64_t writes;        /* write calls made for them (the buffer saves most) */
    uint64_t reads;         /* records handed out and advanced past */
    uint64_t bytes_read;    /* payload bytes of those */
    uint64_t corrupt;       /* corrupt records / torn tails skipped */
    uint64_t missing_files; /* segment files found missing and skipped */
    uint64_t recovered;     /* records kept from beyond the metadata at open */
    uint64_t syncs;         /* tn_diskq_sync rounds that wrote metadata */
    uint64_t fsyncs;        /* fsync(2) calls made (data, metadata, dir) */
    uint64_t sync_errors;   /* automatic syncs that failed (retried later) */
    uint32_t read_file;     /* current read segment number */
    uint32_t write_file;    /* current write segment number */
    uint64_t read_pos;      /* byte offset in read_file */
    uint64_t write_pos;     /* byte offset in write_file */
    uint32_t files;         /* segment files the queue spans (write - commit + 1) */
    uint64_t held;          /* records taken and not yet released */
    uint32_t commit_file;   /* the committed position (see tn_diskq_take): */
    uint64_t commit_pos;    /* where reading restarts after a crash */
};

/* Open (or create) the queue `name` in the existing directory `dir` and
 * recover it as described above. `o` may be NULL (all defaults). Returns
 * NULL and sets *err (TN_EINVAL for a bad name or options, TN_ENOMEM,
 * -errno) on failure. The queue owns copies of dir and name. */
struct tn_diskq *tn_diskq_open(const char *dir, const char *name, const struct tn_diskq_opts *o,
                               int *err);

/* Append one record. The data is copied to the file (or, buffered, to the
 * write buffer) before returning.
 * 0, TN_ETOOBIG (len > max_msg_size), TN_EINVAL (len < min_msg_size, or too
 * many iovecs), -errno when the write failed (nothing partial is left in
 * the file then). A failed automatic sync does not fail the put: it is
 * logged, counted in sync_errors and retried by the next sync. */
int tn_diskq_put(struct tn_diskq *q, const void *data, size_t len);
int tn_diskq_putv(struct tn_diskq *q, const struct iovec *iov, int iovcnt);

/* The oldest record, without removing it: *data points into the queue's
 * read buffer and stays valid until the next tn_diskq_peek, advance, empty,
 * close or delete on q (puts, syncs and stats do not disturb it). Peeking
 * twice returns the same record. Corrupt records are skipped (and counted)
 * on the way. 0; TN_EAGAIN when the queue is empty; -errno on a read error
 * (the record stays; try again later). */
int tn_diskq_peek(struct tn_diskq *q, const void **data, size_t *len);

/* Remove the record the last successful peek returned (the caller has
 * taken it, and it is done with as far as the queue is concerned: a take
 * and a release in one). A segment file below the committed position is
 * deleted at the next sync, after the metadata no longer points into it.
 * 0, or TN_EINVAL when no record is peeked. */
int tn_diskq_advance(struct tn_diskq *q);

/* Take the record the last successful peek returned like
 * tn_diskq_advance, but keep it on disk until tn_diskq_release(q, h): the
 * committed position (the one the metadata records, where reading
 * restarts after a crash or a close) never passes a held record. Taking
 * changes nothing durable, so it never syncs. 0, or TN_EINVAL when no
 * record is peeked (h is left alone). */
int tn_diskq_take(struct tn_diskq *q, struct tn_diskq_hold *h);

/* The held record h is dealt with (finished, or stored again elsewhere
 * durably): it may go. When it was the oldest held, the committed
 * position moves on to the next held record (or the read position) and
 * that counts as an operation toward sync_every. 0, or TN_ENOTFOUND when
 * h is not held by q (never taken, released already, or taken before an
 * empty): nothing is touched then. */
int tn_diskq_release(struct tn_diskq *q, struct tn_diskq_hold *h);

/* Records not read yet (held ones are not counted). */
uint64_t tn_diskq_depth(const struct tn_diskq *q);

/* Write the buffered records (one write). 0 or -errno (they stay buffered). */
int tn_diskq_flush(struct tn_diskq *q);
/* tn_diskq_flush every queue of g that holds buffered records; the first error. */
int tn_diskq_group_flush(struct tn_diskq_group *g);

/* Make everything put and advanced so far durable: fsync the write segment
 * (when written to), write the metadata atomically, delete fully read
 * segments. 0 or -errno. Cheap when nothing changed. */
int tn_diskq_sync(struct tn_diskq *q);

/* Non-zero when there are unsynced changes older than sync_timeout_ms
 * (CLOCK_MONOTONIC), or an automatic sync on a thread has finished; the
 * caller then calls tn_diskq_sync(). */
int tn_diskq_sync_due(const struct tn_diskq *q);

/* Drop every record: delete all segment files and start a fresh one. 0 or
 * -errno. */
int tn_diskq_empty(struct tn_diskq *q);

/* Sync and free. Returns the sync's result; q is freed either way. NULL ok. */
int tn_diskq_close(struct tn_diskq *q);

/* Free q and remove all its files (segments and metadata). 0 or -errno of
 * the first removal that failed; q is freed either way. NULL ok. */
int tn_diskq_delete(struct tn_diskq *q);

void tn_diskq_get_stats(const struct tn_diskq *q, struct tn_diskq_stats *out);

/* Non-zero when name is acceptable as a queue name: 1..TN_DISKQ_NAME_MAX
 * bytes, no '/', no control characters, not "." or "..". */
int tn_diskq_name_ok(const char *name);

#endif
