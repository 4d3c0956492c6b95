/*
 * pool_core.h -- the thread pool engine of the pool module: workers,
 * queue, expiry, tune, drain, release. Plain pthreads: no libev, no Lua, so
 * the unit tests and the benchmark drive it directly. All functions are
 * thread-safe unless a comment says otherwise.
 */
#ifndef TERND_POOL_CORE_H
#define TERND_POOL_CORE_H

#include <stdint.h>
#include <ternd/error.h>
#include <ternd/pool.h>

struct pool;

/* One submitted task. Nodes are recycled by the pool (no malloc per task
 * in steady state); a deliver hook owns the node until it hands it back
 * with pool_task_finish. */
struct pool_task {
    struct pool_task *next;
    struct pool *pool;
    tn_pool_task_pt fn;
    void *arg;
    tn_pool_done_pt done;
    void *udata;
    int rc; /* what fn returned, or TN_ESTOPPED when cancelled */
};

struct pool_opts {
    int64_t capacity;    /* most workers, >= 1 */
    int64_t expiry_ms;   /* an idle worker exits after this long (> 0) */
    int64_t max_waiting; /* most queued tasks; 0: no limit */
    int prealloc;        /* start every worker at create, reboot and tune */
    int nonblocking;     /* refuse instead of queueing when every worker is busy */
    int disable_purge;   /* idle workers never expire */
};

struct pool_hooks {
    /* Worker thread (or the releasing thread for cancelled tasks): take a
     * finished task; call pool_task_finish(t) later, on any thread. NULL:
     * done runs on the worker thread right after the task. */
    void (*deliver)(struct pool_task *t, void *ud);
    /* Worker thread: a task returned rc < 0. */
    void (*on_failure)(struct pool *p, int rc, void *ud);
    /* Worker thread, just before it exits (free thread-local state). */
    void (*worker_exit)(struct pool *p, void *ud);
    void *ud;
};

/* A new pool (name is copied; hooks may be NULL). Starts the workers when
 * opts->prealloc. NULL with *err set (TN_EINVAL, TN_ENOMEM, -errno). */
struct pool *pool_create(const char *name, const struct pool_opts *opts,
                         const struct pool_hooks *hooks, int *err);
/* Release, wait for every worker to exit (however long it takes), free. */
void pool_destroy(struct pool *p);

const char *pool_name(const struct pool *p);
/* The public handle (its api member is for the module to set). */
struct tn_pool *pool_handle(struct pool *p);
struct pool *pool_from_handle(struct tn_pool *h);

int pool_submit(struct pool *p, tn_pool_task_pt fn, void *arg, tn_pool_done_pt done, void *udata);
/* Call t->done(t->udata, t->rc) and recycle the node (deliver users). */
void pool_task_finish(struct pool_task *t);

int pool_tune(struct pool *p, int64_t capacity);
/* Adopt new options (reload): capacity through pool_tune, the others at
 * once; idle workers re-arm their expiry. 0 or TN_EINVAL. */
int pool_set_opts(struct pool *p, const struct pool_opts *opts);
void pool_info(struct pool *p, struct tn_pool_info *out);

int pool_wait(struct pool *p, int64_t timeout_ms);
void pool_release(struct pool *p);
int pool_release_timeout(struct pool *p, int64_t timeout_ms);
int pool_reboot(struct pool *p);
int pool_is_closed(struct pool *p);

#endif
