/*
 * pool.h -- named worker thread pools, for modules that need to run
 * blocking or CPU-heavy work off the loop thread (the pool module, pool.so).
 *
 * Modules never link to each other, so the pool module publishes a
 * struct tn_pool_api under the service name "pool" and the inline
 * functions below call through it. A module using pools lists "pool" in its
 * deps (so pool.so loads, inits before it and stops after it), then finds
 * its pools by name in init or start:
 *
 *     struct tn_pool *p = tn_pool_find("default");
 *     rc = tn_pool_submit(p, work, arg, work_done, arg);
 *
 * The model is Go's ants pool: a pool has a capacity (the most worker
 * threads it runs); a worker is started on demand and exits after it has
 * been idle for the pool's expiry. When every worker is busy a task waits in
 * the pool's queue (bounded by max_waiting), or is refused at once when the
 * pool is nonblocking. The submitter never blocks.
 */
#ifndef TERND_POOL_H
#define TERND_POOL_H

#include <stdint.h>
#include <ternd/core.h>
#include <ternd/service.h>

#define TN_POOL_SERVICE "pool"

/* A pool. Owned by the pool module; a pointer stays valid until the pool
 * module's fini, even when a reload removes the pool (it is then released:
 * submits return TN_ESTOPPED). */
struct tn_pool {
    const struct tn_pool_api *api;
};

/* The task: runs on a worker thread. Returns 0 (or a positive value) on
 * success, a negative TN_* code on failure; failures are counted and
 * reported by the pool, they never stop it. */
typedef int (*tn_pool_task_pt)(void *arg);
/* Completion: runs on the loop thread once the task ran (rc is what it
 * returned) or was cancelled by a release (rc is TN_ESTOPPED). */
typedef void (*tn_pool_done_pt)(void *udata, int rc);

struct tn_pool_info {
    int64_t capacity; /* most workers */
    int64_t running;  /* workers alive (busy or idle), as ants' Running() */
    int64_t idle;     /* of those, waiting for a task */
    int64_t free;     /* capacity - running */
    int64_t waiting;  /* tasks queued for a worker */
    uint64_t submitted, completed, failed, rejected, cancelled;
};

struct tn_pool_api {
    uint32_t size; /* sizeof(struct tn_pool_api); new members go at the end */
    struct tn_pool *(*find)(const char *name);
    int (*submit)(struct tn_pool *p, tn_pool_task_pt fn, void *arg, tn_pool_done_pt done,
                  void *udata);
    int (*tune)(struct tn_pool *p, int64_t capacity);
    void (*info)(struct tn_pool *p, struct tn_pool_info *out);
    int (*wait)(struct tn_pool *p, int64_t timeout_ms);
    void (*release)(struct tn_pool *p);
    int (*release_timeout)(struct tn_pool *p, int64_t timeout_ms);
    int (*reboot)(struct tn_pool *p);
};

/* The pool named name, or NULL (no pool module loaded, or no such pool).
 * Loop thread. */
static inline struct tn_pool *tn_pool_find(const char *name)
{
    const struct tn_pool_api *api = (const struct tn_pool_api *)tn_service_lookup(TN_POOL_SERVICE);
    return api ? api->find(name) : NULL;
}

/* Queue fn(arg) on a worker; done(udata, rc) runs later on the loop thread
 * (done may be NULL). Returns 0, TN_EOVERLOAD (nonblocking pool with every
 * worker busy, or max_waiting tasks already queued), TN_ESTOPPED (pool
 * released) or TN_ENOMEM. On error neither fn nor done is ever called, so
 * the caller still owns arg and udata. Any thread. */
static inline int tn_pool_submit(struct tn_pool *p, tn_pool_task_pt fn, void *arg,
                                 tn_pool_done_pt done, void *udata)
{
    return p->api->submit(p, fn, arg, done, udata);
}

/* Change the capacity (>= 1) at run time: more workers start for queued
 * tasks, surplus idle workers exit at once and busy ones after their task.
 * 0 or TN_EINVAL. Any thread. */
static inline int tn_pool_tune(struct tn_pool *p, int64_t capacity)
{
    return p->api->tune(p, capacity);
}

/* Counts and counters at this moment. Any thread. */
static inline void tn_pool_info(struct tn_pool *p, struct tn_pool_info *out)
{
    p->api->info(p, out);
}

/* Wait until no task is queued or running (completions may still be on
 * their way to the loop); timeout_ms < 0 waits forever. 0 or TN_ETIMEDOUT.
 * Blocks the calling thread: from the loop thread only at stop. */
static inline int tn_pool_wait(struct tn_pool *p, int64_t timeout_ms)
{
    return p->api->wait(p, timeout_ms);
}

/* Close the pool: submits return TN_ESTOPPED, queued tasks are cancelled
 * (done gets TN_ESTOPPED), idle workers exit, busy ones after their task.
 * release_timeout also waits (up to timeout_ms, < 0 forever) until every
 * worker has exited: 0 or TN_ETIMEDOUT. reboot reopens a released pool.
 * Any thread. */
static inline void tn_pool_release(struct tn_pool *p)
{
    p->api->release(p);
}
static inline int tn_pool_release_timeout(struct tn_pool *p, int64_t timeout_ms)
{
    return p->api->release_timeout(p, timeout_ms);
}
static inline int tn_pool_reboot(struct tn_pool *p)
{
    return p->api->reboot(p);
}

#endif
