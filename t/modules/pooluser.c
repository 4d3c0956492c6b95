/*
 * pooluser.c -- a test module using the pool module's C API (ternd/pool.h)
 * the way a real module would: it depends on "pool", finds its pool by
 * name at start, submits tasks (every tenth fails on purpose) and logs one
 * summary line once every completion came back. Built only for `make check`.
 */
#include <pthread.h>
#include <stdlib.h>
#include <ternd/ternd.h>

struct pooluser_conf {
    char *pool;    /* the pool to use */
    int64_t tasks; /* how many to submit at start */
    int64_t tune;  /* capacity to set once all are done; 0: leave it */
};

struct job {
    struct pooluser *pu;
    int64_t n;
    int64_t square; /* written by the worker */
};

struct pooluser {
    struct tn_pool *pool;
    struct job *jobs;
    pthread_t loop_thread;
    int64_t want, done, failed, sum, refused, off_loop;
};

static const struct tn_conf_range pooluser_tasks_range = {0, 1000000};
static const struct tn_conf_range pooluser_tune_range = {0, 65536};

static const struct tn_conf_cmd pooluser_table[] = {
    {"pool", TN_CONF_STRING, offsetof(struct pooluser_conf, pool), NULL, NULL, NULL},
    {"tasks", TN_CONF_INT, offsetof(struct pooluser_conf, tasks), &pooluser_tasks_range, NULL,
     NULL},
    {"tune", TN_CONF_INT, offsetof(struct pooluser_conf, tune), &pooluser_tune_range, NULL, NULL},
    TN_CONF_END};

static const char *const pooluser_deps[] = {"pool", NULL};

static int pooluser_create_conf(struct tn_mod *m, void *conf)
{
    struct pooluser_conf *c = conf;
    c->pool = "default";
    c->tasks = 100;
    return 0;
}

/* Worker thread. */
static int square_task(void *arg)
{
    struct job *j = arg;

    if (j->n % 10 == 0)
        return TN_EINVAL;
    j->square = j->n * j->n;
    return 0;
}

/* Loop thread. */
static void square_done(void *udata, int rc)
{
    struct job *j = udata;
    struct pooluser *pu = j->pu;
    struct tn_pool_info info;

    if (!pthread_equal(pthread_self(), pu->loop_thread))
        pu->off_loop++;
    if (rc == 0)
        pu->sum += j->square;
    else
        pu->failed++;
    if (++pu->done + pu->refused < pu->want)
        return;
    tn_pool_info(pu->pool, &info);
    tn_log_info("pooluser",
                "all done: %lld done, %lld failed, %lld refused, sum %lld, "
                "off the loop %lld, pool submitted %llu failed %llu",
                (long long)pu->done, (long long)pu->failed, (long long)pu->refused,
                (long long)pu->sum, (long long)pu->off_loop, (unsigned long long)info.submitted,
                (unsigned long long)info.failed);
}

static int pooluser_start(struct tn_mod *m)
{
    struct pooluser_conf *c = m->conf;
    struct pooluser *pu = calloc(1, sizeof(*pu));

    if (!pu)
        return TN_ENOMEM;
    m->data = pu;
    pu->loop_thread = pthread_self();
    pu->want = c->tasks;
    if (!(pu->pool = tn_pool_find(c->pool))) {
        tn_log_error("pooluser", "no pool named %s", c->pool);
        return TN_ENOTFOUND;
    }
    if (c->tasks && !(pu->jobs = calloc((size_t)c->tasks, sizeof(*pu->jobs))))
        return TN_ENOMEM;
    for (int64_t i = 0; i < c->tasks; i++) {
        struct job *j = &pu->jobs[i];
        j->pu = pu;
        j->n = i + 1;
        if (tn_pool_submit(pu->pool, square_task, j, square_done, j) != 0)
            pu->refused++;
    }
    if (c->tune && tn_pool_tune(pu->pool, c->tune) == 0)
        tn_log_info("pooluser", "tuned %s to %lld", c->pool, (long long)c->tune);
    return 0;
}

static void pooluser_fini(struct tn_mod *m)
{
    struct pooluser *pu = m->data;

    if (pu) {
        free(pu->jobs);
        free(pu);
        m->data = NULL;
    }
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("pooluser", "1.0"),
    pooluser_deps,
    pooluser_table,
    sizeof(struct pooluser_conf),
    pooluser_create_conf,
    NULL,
    NULL,
    pooluser_start,
    NULL,
    pooluser_fini,
    NULL,
    NULL,
};
