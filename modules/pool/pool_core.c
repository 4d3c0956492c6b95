/*
 * pool_core.c -- the thread pool engine, after Go's ants: workers start on
 * demand up to the capacity, idle workers wait on a LIFO list (the most
 * recently used is reused first, so the cold ones at the tail are the ones
 * that expire), and each idle worker's condition-variable wait is its own
 * purge timer: it exits when it has been idle for `expiry`.
 *
 * One mutex per pool guards everything below. A submit queues the task
 * and wakes an idle worker if none is already on its way (woken workers
 * wake the next one while work is left), starts a new worker when none is
 * idle and the pool is below capacity, and otherwise queues it for the next
 * worker that finishes, up to max_waiting; the submitter never blocks.
 * Task nodes are recycled through a small free list so steady-state
 * submits do not malloc.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool_core.h"

#define POOL_FREE_MAX 1024 /* recycled task nodes kept per pool */

struct worker {
    struct worker *prev, *next; /* idle list (head: most recently idle), or dead list */
    struct pool *pool;
    pthread_t tid;
    pthread_cond_t cond;    /* signalled when woken or told to quit */
    struct pool_task *task; /* the first task of a new worker */
    int woken;              /* taken off the idle list to fetch queued work */
    int quit;               /* told to exit; already taken off `running` */
    int64_t idle_since;     /* monotonic ms */
};

struct pool {
    struct tn_pool pub; /* first: the public handle */
    char *name;
    pthread_mutex_t lock;
    pthread_cond_t changed; /* drained, or a worker exited (waiters only) */
    struct pool_opts o;
    struct pool_hooks h;
    int closed;
    int64_t running;  /* workers counted against the capacity */
    int64_t nthreads; /* worker threads alive (includes quitting ones) */
    int64_t busy;     /* tasks being run */
    int64_t nidle;
    int64_t nwaking; /* woken workers that have not looked at the queue yet */
    struct worker *idle_head, *idle_tail;
    struct pool_task *qhead, *qtail;
    int64_t qlen;
    struct pool_task *free_tasks;
    int nfree;
    struct worker *dead; /* exited workers not joined yet */
    int waiters;         /* threads blocked in wait/release_timeout/destroy */
    uint64_t submitted, rejected, cancelled;
    /* counted before the completion is handed on (a caller that saw every
     * completion sees every count), hence atomic rather than under lock */
    atomic_uint_fast64_t completed, failed;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cond_init(pthread_cond_t *c)
{
    pthread_condattr_t a;
    int rc;

    if ((rc = pthread_condattr_init(&a)) != 0)
        return rc;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

/* Wait on c until signalled or the monotonic deadline (ms; < 0: none).
 * Returns 0 or ETIMEDOUT. */
static int wait_until(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline)
{
    struct timespec ts;

    if (deadline < 0)
        return pthread_cond_wait(c, m);
    ts.tv_sec = deadline / 1000;
    ts.tv_nsec = (deadline % 1000) * 1000000;
    return pthread_cond_timedwait(c, m, &ts);
}

static int64_t deadline_after(int64_t timeout_ms)
{
    return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/* ---- idle list and queue (lock held) ---------------------------------------- */

static void idle_push(struct pool *p, struct worker *w)
{
    w->prev = NULL;
    w->next = p->idle_head;
    if (p->idle_head)
        p->idle_head->prev = w;
    else
        p->idle_tail = w;
    p->idle_head = w;
    p->nidle++;
}

static void idle_remove(struct pool *p, struct worker *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        p->idle_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        p->idle_tail = w->prev;
    w->prev = w->next = NULL;
    p->nidle--;
}

/* Wake the most recently idle worker to fetch from the queue. At most one
 * is on its way at a time: it wakes the next one if work is left when it
 * gets there, so a burst of tiny tasks costs a few wake-ups, not one each. */
static void wake_one(struct pool *p)
{
    struct worker *w = p->idle_head;

    idle_remove(p, w);
    w->woken = 1;
    p->nwaking++;
    pthread_cond_signal(&w->cond); /* under the lock: w may expire once it is free */
}

/* Tell the idle worker w to exit. */
static void idle_quit(struct pool *p, struct worker *w)
{
    idle_remove(p, w);
    w->quit = 1;
    p->running--;
    pthread_cond_signal(&w->cond);
}

static void queue_push(struct pool *p, struct pool_task *t)
{
    t->next = NULL;
    if (p->qtail)
        p->qtail->next = t;
    else
        p->qhead = t;
    p->qtail = t;
    p->qlen++;
}

static struct pool_task *queue_pop(struct pool *p)
{
    struct pool_task *t = p->qhead;

    if (t) {
        p->qhead = t->next;
        if (!p->qhead)
            p->qtail = NULL;
        p->qlen--;
    }
    return t;
}

static struct pool_task *task_get(struct pool *p)
{
    struct pool_task *t = p->free_tasks;

    if (t) {
        p->free_tasks = t->next;
        p->nfree--;
        return t;
    }
    return malloc(sizeof(*t));
}

static void task_put(struct pool *p, struct pool_task *t)
{
    if (p->nfree >= POOL_FREE_MAX) {
        free(t);
        return;
    }
    t->next = p->free_tasks;
    p->free_tasks = t;
    p->nfree++;
}

/* Join the workers that have exited (lock held). Workers are joinable, not
 * detached, so that once the pool says they are gone their threads really
 * have ended (a leak checker stopping the process at exit, or a module
 * unloaded after fini, never meets one half-way out). A worker on the dead
 * list has already let go of the lock, so joining it under the lock is
 * safe and brief. */
static void reap(struct pool *p)
{
    while (p->dead) {
        struct worker *w = p->dead;
        p->dead = w->next;
        pthread_join(w->tid, NULL);
        pthread_cond_destroy(&w->cond);
        free(w);
    }
}

/* Wake wait()ers once nothing is queued or running. */
static void notify_drained(struct pool *p)
{
    if (p->waiters && p->busy == 0 && p->qlen == 0)
        pthread_cond_broadcast(&p->changed);
}

/* ---- workers ---------------------------------------------------------------- */

/* Run t without the lock, hand it on, and come back with the lock held and
 * the counters updated. t must not be touched after deliver: the loop may
 * have recycled it already. */
static void run_task(struct pool *p, struct pool_task *t)
{
    int rc = t->fn ? t->fn(t->arg) : 0;

    t->rc = rc;
    if (rc < 0 && p->h.on_failure)
        p->h.on_failure(p, rc, p->h.ud);
    atomic_fetch_add_explicit(rc < 0 ? &p->failed : &p->completed, 1, memory_order_relaxed);
    if (p->h.deliver) {
        p->h.deliver(t, p->h.ud);
        t = NULL;
    } else if (t->done) {
        t->done(t->udata, rc);
    }
    pthread_mutex_lock(&p->lock);
    if (t)
        task_put(p, t);
    p->busy--;
    notify_drained(p);
}

/* Idle until woken or told to quit (returns 0), or until the expiry passes
 * (returns 1: the worker has taken itself off the counts). */
static int idle_wait(struct pool *p, struct worker *w)
{
    w->idle_since = now_ms();
    idle_push(p, w);
    while (!w->woken && !w->quit) {
        int64_t deadline = p->o.disable_purge ? -1 : w->idle_since + p->o.expiry_ms;
        if (wait_until(&w->cond, &p->lock, deadline) == ETIMEDOUT && !w->woken && !w->quit &&
            !p->o.disable_purge && now_ms() >= w->idle_since + p->o.expiry_ms) {
            idle_remove(p, w);
            p->running--;
            return 1;
        }
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct pool *p = w->pool;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        struct pool_task *t = w->task;
        w->task = NULL;
        if (w->quit) /* never set together with task or woken */
            break;
        if (w->woken) {
            w->woken = 0;
            p->nwaking--;
        }
        if (!t && (t = queue_pop(p))) {
            p->busy++;
            if (p->qhead && p->nidle > 0 && p->nwaking == 0)
                wake_one(p); /* more work than us: bring a helper */
        }
        if (t) {
            pthread_mutex_unlock(&p->lock);
            run_task(p, t);
            if (p->running > p->o.capacity) { /* tuned down while we worked */
                p->running--;
                break;
            }
            continue;
        }
        if (p->closed) {
            p->running--;
            break;
        }
        if (idle_wait(p, w))
            break;
    }
    pthread_mutex_unlock(&p->lock);

    if (p->h.worker_exit)
        p->h.worker_exit(p, p->h.ud);

    /* last touch of the pool: whoever joins us frees w. We join those that
     * went before, so at most one exited worker waits to be joined. */
    pthread_mutex_lock(&p->lock);
    reap(p);
    w->next = p->dead;
    p->dead = w;
    p->nthreads--;
    if (p->waiters)
        pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Start a worker that runs t first (t may be NULL). Lock held. Workers
 * block every signal: the loop thread handles them. */
static int spawn(struct pool *p, struct pool_task *t)
{
    struct worker *w;
    sigset_t all, old;
    int rc;

    reap(p);
    if (!(w = calloc(1, sizeof(*w))))
        return TN_ENOMEM;
    w->pool = p;
    w->task = t;
    if ((rc = cond_init(&w->cond)) != 0) {
        free(w);
        return -rc;
    }
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&w->tid, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&w->cond);
        free(w);
        return -rc;
    }
    p->running++;
    p->nthreads++;
    if (t)
        p->busy++;
    return 0;
}

/* Bring the workers in line with the capacity (lock held): surplus idle
 * ones quit (coldest first), queued tasks get new workers, and a
 * preallocated pool fills up. */
static void adjust(struct pool *p)
{
    while (p->running > p->o.capacity && p->idle_tail)
        idle_quit(p, p->idle_tail);
    if (p->closed)
        return;
    while (p->running < p->o.capacity && p->qhead && p->nidle == 0) {
        struct pool_task *t = queue_pop(p);
        if (spawn(p, t) != 0) {
            t->next = p->qhead; /* back at the front */
            p->qhead = t;
            if (!p->qtail)
                p->qtail = t;
            p->qlen++;
            return;
        }
    }
    while (p->o.prealloc && p->running < p->o.capacity)
        if (spawn(p, NULL) != 0)
            return;
}

/* ---- API -------------------------------------------------------------------- */

static int check_opts(const struct pool_opts *o)
{
    if (o->capacity < 1 || o->max_waiting < 0 || (!o->disable_purge && o->expiry_ms <= 0))
        return TN_EINVAL;
    return 0;
}

struct pool *pool_create(const char *name, const struct pool_opts *opts,
                         const struct pool_hooks *hooks, int *err)
{
    struct pool *p;
    int rc = check_opts(opts);

    if (rc != 0)
        goto fail;
    rc = TN_ENOMEM;
    if (!(p = calloc(1, sizeof(*p))))
        goto fail;
    if (!(p->name = strdup(name))) {
        free(p);
        goto fail;
    }
    p->o = *opts;
    if (hooks)
        p->h = *hooks;
    pthread_mutex_init(&p->lock, NULL);
    if ((rc = cond_init(&p->changed)) != 0) {
        pthread_mutex_destroy(&p->lock);
        free(p->name);
        free(p);
        rc = -rc;
        goto fail;
    }
    pthread_mutex_lock(&p->lock);
    adjust(p);
    pthread_mutex_unlock(&p->lock);
    return p;
fail:
    if (err)
        *err = rc;
    return NULL;
}

void pool_destroy(struct pool *p)
{
    if (!p)
        return;
    pool_release_timeout(p, -1);
    while (p->free_tasks) {
        struct pool_task *t = p->free_tasks;
        p->free_tasks = t->next;
        free(t);
    }
    pthread_cond_destroy(&p->changed);
    pthread_mutex_destroy(&p->lock);
    free(p->name);
    free(p);
}

const char *pool_name(const struct pool *p)
{
    return p->name;
}

struct tn_pool *pool_handle(struct pool *p)
{
    return &p->pub;
}

struct pool *pool_from_handle(struct tn_pool *h)
{
    return (struct pool *)h;
}

int pool_submit(struct pool *p, tn_pool_task_pt fn, void *arg, tn_pool_done_pt done, void *udata)
{
    struct pool_task *t;
    int rc = TN_EOVERLOAD;

    pthread_mutex_lock(&p->lock);
    if (p->closed) {
        rc = TN_ESTOPPED;
        goto refuse;
    }
    if (!(t = task_get(p))) {
        rc = TN_ENOMEM;
        goto refuse;
    }
    t->pool = p;
    t->fn = fn;
    t->arg = arg;
    t->done = done;
    t->udata = udata;
    t->rc = 0;
    if (p->qlen < p->nidle) { /* an idle worker will take it */
        queue_push(p, t);
        if (p->nwaking == 0)
            wake_one(p);
        goto accepted;
    }
    if (p->running < p->o.capacity && (rc = spawn(p, t)) == 0)
        goto accepted;
    if (p->o.nonblocking || (p->o.max_waiting > 0 && p->qlen >= p->o.max_waiting)) {
        rc = TN_EOVERLOAD;
        task_put(p, t);
        goto refuse;
    }
    if (p->running == 0) { /* no worker could be started to ever run it */
        task_put(p, t);
        goto refuse;
    }
    queue_push(p, t);
accepted:
    p->submitted++;
    pthread_mutex_unlock(&p->lock);
    return 0;
refuse:
    p->rejected++;
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void pool_task_finish(struct pool_task *t)
{
    struct pool *p = t->pool;

    if (t->done)
        t->done(t->udata, t->rc);
    pthread_mutex_lock(&p->lock);
    task_put(p, t);
    pthread_mutex_unlock(&p->lock);
}

int pool_tune(struct pool *p, int64_t capacity)
{
    if (capacity < 1)
        return TN_EINVAL;
    pthread_mutex_lock(&p->lock);
    p->o.capacity = capacity;
    adjust(p);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int pool_set_opts(struct pool *p, const struct pool_opts *opts)
{
    if (check_opts(opts) != 0)
        return TN_EINVAL;
    pthread_mutex_lock(&p->lock);
    p->o = *opts;
    for (struct worker *w = p->idle_head; w; w = w->next)
        pthread_cond_signal(&w->cond); /* re-arm with the new expiry */
    adjust(p);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

void pool_info(struct pool *p, struct tn_pool_info *out)
{
    pthread_mutex_lock(&p->lock);
    out->capacity = p->o.capacity;
    out->running = p->running;
    out->idle = p->nidle;
    out->free = p->o.capacity - p->running;
    out->waiting = p->qlen;
    out->submitted = p->submitted;
    out->completed = atomic_load_explicit(&p->completed, memory_order_relaxed);
    out->failed = atomic_load_explicit(&p->failed, memory_order_relaxed);
    out->rejected = p->rejected;
    out->cancelled = p->cancelled;
    pthread_mutex_unlock(&p->lock);
}

int pool_wait(struct pool *p, int64_t timeout_ms)
{
    int64_t deadline = deadline_after(timeout_ms);
    int rc = 0;

    pthread_mutex_lock(&p->lock);
    p->waiters++;
    while ((p->busy > 0 || p->qlen > 0) && rc == 0)
        rc = wait_until(&p->changed, &p->lock, deadline);
    if (p->busy == 0 && p->qlen == 0)
        rc = 0;
    p->waiters--;
    pthread_mutex_unlock(&p->lock);
    return rc == 0 ? 0 : TN_ETIMEDOUT;
}

/* Hand cancelled tasks back: through deliver, or done right here. */
static void cancel_tasks(struct pool *p, struct pool_task *list)
{
    struct pool_task *t, *next, *done = NULL;

    for (t = list; t; t = next) {
        next = t->next;
        t->rc = TN_ESTOPPED;
        if (p->h.deliver) {
            p->h.deliver(t, p->h.ud);
            continue;
        }
        if (t->done)
            t->done(t->udata, TN_ESTOPPED);
        t->next = done;
        done = t;
    }
    pthread_mutex_lock(&p->lock);
    for (t = done; t; t = next) {
        next = t->next;
        task_put(p, t);
    }
    pthread_mutex_unlock(&p->lock);
}

void pool_release(struct pool *p)
{
    struct pool_task *queued;

    pthread_mutex_lock(&p->lock);
    if (p->closed) {
        pthread_mutex_unlock(&p->lock);
        return;
    }
    p->closed = 1;
    queued = p->qhead;
    p->cancelled += (uint64_t)p->qlen;
    p->qhead = p->qtail = NULL;
    p->qlen = 0;
    while (p->idle_tail)
        idle_quit(p, p->idle_tail);
    notify_drained(p);
    pthread_mutex_unlock(&p->lock);
    cancel_tasks(p, queued);
}

int pool_release_timeout(struct pool *p, int64_t timeout_ms)
{
    int64_t deadline = deadline_after(timeout_ms);
    int rc = 0;

    pool_release(p);
    pthread_mutex_lock(&p->lock);
    p->waiters++;
    while (p->nthreads > 0 && rc == 0)
        rc = wait_until(&p->changed, &p->lock, deadline);
    if (p->nthreads == 0) {
        reap(p);
        rc = 0;
    }
    p->waiters--;
    pthread_mutex_unlock(&p->lock);
    return rc == 0 ? 0 : TN_ETIMEDOUT;
}

int pool_reboot(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->closed = 0;
    adjust(p);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int pool_is_closed(struct pool *p)
{
    int closed;

    pthread_mutex_lock(&p->lock);
    closed = p->closed;
    pthread_mutex_unlock(&p->lock);
    return closed;
}
