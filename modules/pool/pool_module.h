/*
 * pool_module.h -- what the files of the pool module share: the config
 * structs, the module state, and the Lua side's entry points.
 */
#ifndef TERND_POOL_MODULE_H
#define TERND_POOL_MODULE_H

#include <ev.h>
#include <pthread.h>
#include <ternd/ternd.h>

#include "pool_core.h"

#define POOL_NAME_MAX 64

/* One entry of pool.pools; memory belongs to the config generation. */
struct pool_entry_conf {
    char *name;
    int64_t size;        /* capacity: most workers */
    int64_t expiry;      /* ms */
    int64_t max_waiting; /* 0: no limit */
    int prealloc, nonblocking, disable_purge;
};

struct pool_conf {
    struct pool_entry_conf *pools;
    size_t npools;
    int64_t stop_timeout;   /* ms: how long stop waits for queued and running tasks */
    struct tn_lua_conf lua; /* host script on the loop thread; limits also bound workers */
};

/* A pool the module made; kept until fini even when a reload drops it
 * (then it is released), so pointers other modules hold stay valid. */
struct pool_named {
    struct pool_named *next;
    struct pool *core;
    int removed;
};

struct pool_mod {
    struct tn_mod *mod;
    struct pool_named *pools;
    ev_async async;       /* wakes the loop for finished tasks */
    pthread_mutex_t lock; /* guards the finished list and detached */
    struct pool_task *finished, *finished_tail;
    int detached;             /* fini gave up on stuck workers: drop results */
    struct tn_lua *lua;       /* the host script's state, or NULL */
    int64_t fail_log_ms;      /* rate limit of failure logs (atomic) */
    uint64_t fail_suppressed; /* failures not logged since (atomic) */
};

/* The pool named name that is not removed, or NULL. Loop thread. */
struct pool *pool_mod_find(struct pool_mod *pm, const char *name);
/* Log a task failure, at most one line a second (the rest are counted and
 * summed up in the next line). Any thread. */
void pool_mod_log_failure(struct pool_mod *pm, const char *pool, const char *what);
/* Deliver finished tasks now (what the ev_async callback does). Loop thread. */
void pool_mod_deliver(struct pool_mod *pm);

/* pool_lua.c: ternd.pool for every loop-thread state, and the Lua states
 * of the workers. */
int pool_lua_init(struct pool_mod *pm, const struct tn_lua_conf *lc);
/* Remove ternd.pool from new states; with workers_gone also free what the
 * workers shared. */
void pool_lua_fini(struct pool_mod *pm, int workers_gone);
/* New limits for worker states; workers rebuild their state before their
 * next task (scripts are re-required). Loop thread. */
void pool_lua_reconf(const struct tn_lua_conf *lc);
/* The pool worker hook: free this thread's Lua state. */
void pool_lua_worker_exit(struct pool *p, void *ud);

#endif
