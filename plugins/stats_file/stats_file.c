/*
 * stats_file.c -- a drop-in plugin writing every metric to a file every
 * `interval`, replaced atomically (write a temporary file, rename it over),
 * for node_exporter's textfile collector (Prometheus text, *.prom), or for
 * anything that reads the /stats JSON from disk. /metrics already serves
 * the same text over HTTP; this covers hosts that scrape files, not ports.
 * Without `stats_file.path` it does nothing.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <ternd/ternd.h>

#define SF_NAME "stats_file"

struct sf_conf {
    char *path;       /* NULL: off */
    int format;       /* TN_STATS_* */
    int64_t interval; /* ms */
};

/* Readable by the collector running as another user; metrics are no secret
 * (the admin port serves them to anyone who can connect). */
#define SF_MODE 0644

struct sf_state {
    const struct sf_conf *conf;
    int active;
    ev_timer timer;
    struct tn_buf buf;
    uint64_t writes, errors;
};

/* Write all of b to fd; 0 or -errno. */
static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Render, write next to the target and rename over it: a reader sees the
 * old file or the new one, never half of one. */
static int write_file(struct sf_state *st)
{
    const struct sf_conf *c = st->conf;
    char tmp[4096];
    int fd = -1, rc;

    tn_buf_reset(&st->buf);
    if ((rc = tn_stats_render(&st->buf, c->format)) != 0)
        goto fail;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", c->path) >= sizeof(tmp)) {
        rc = TN_ETOOBIG;
        goto fail;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, SF_MODE);
    if (fd < 0 || fchmod(fd, SF_MODE) != 0) {
        rc = -errno;
        goto fail;
    }
    if ((rc = write_all(fd, tn_buf_rptr(&st->buf), tn_buf_rlen(&st->buf))) != 0)
        goto fail;
    if (close(fd) != 0) {
        fd = -1;
        rc = -errno;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, c->path) != 0) {
        rc = -errno;
        goto fail;
    }
    st->writes++;
    tn_buf_shrink(&st->buf, 64 * 1024);
    return 0;
fail:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    if (st->errors++ == 0 || tn_log_enabled(TN_LOG_DEBUG)) /* once, not every interval */
        tn_log_warn(SF_NAME, "writing %s: %s", c->path, tn_strerror(rc));
    return rc;
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    write_file(w->data);
}

/* With a path: write now (so the file exists as soon as ternd runs) and
 * then every interval. */
static void sf_activate(struct sf_state *st)
{
    const struct sf_conf *c = st->conf;

    if (!c->path)
        return;
    ev_timer_init(&st->timer, timer_cb, (double)c->interval / 1000.0, (double)c->interval / 1000.0);
    st->timer.data = st;
    ev_timer_start(tn_loop(), &st->timer);
    st->active = 1;
    write_file(st);
    tn_log_info(SF_NAME, "writing %s every %lldms", c->path, (long long)c->interval);
}

static void sf_deactivate(struct sf_state *st)
{
    if (st->active)
        ev_timer_stop(tn_loop(), &st->timer);
    st->active = 0;
}

static int sf_create_conf(struct tn_mod *m, void *conf)
{
    struct sf_conf *c = conf;

    c->format = TN_STATS_PROMETHEUS;
    c->interval = 15 * 1000;
    return 0;
}

static int sf_start(struct tn_mod *m)
{
    struct sf_state *st = calloc(1, sizeof(*st));

    if (!st)
        return TN_ENOMEM;
    st->conf = m->conf;
    m->data = st;
    sf_activate(st);
    return 0;
}

static int sf_reload(struct tn_mod *m, void *new_conf)
{
    struct sf_state *st = m->data;

    sf_deactivate(st);
    st->conf = new_conf;
    sf_activate(st);
    return 0;
}

static int sf_stop(struct tn_mod *m)
{
    struct sf_state *st = m->data;

    if (st && st->active)
        write_file(st); /* the last figures before exit */
    if (st)
        sf_deactivate(st);
    return 0;
}

static void sf_fini(struct tn_mod *m)
{
    struct sf_state *st = m->data;

    if (!st)
        return;
    sf_deactivate(st);
    tn_buf_free(&st->buf);
    free(st);
    m->data = NULL;
}

static void sf_stats(struct tn_mod *m, struct tn_stats_out *o)
{
    const struct sf_state *st = m->data;

    if (!st || !st->active)
        return;
    tn_stats_emit(o, "ternd_stats_file_writes_total", TN_STAT_COUNTER, "Stats files written", NULL,
                  (double)st->writes);
    tn_stats_emit(o, "ternd_stats_file_errors_total", TN_STAT_COUNTER,
                  "Stats files that could not be written", NULL, (double)st->errors);
}

static const struct tn_conf_enum sf_formats[] = {{"prometheus", TN_STATS_PROMETHEUS},
                                                 {"json", TN_STATS_JSON},
                                                 {"text", TN_STATS_TEXT},
                                                 {NULL, 0}};
static const struct tn_conf_range r_interval = {10, 24LL * 3600 * 1000};

#define OFF(f) offsetof(struct sf_conf, f)
static const struct tn_conf_cmd sf_conf_table[] = {
    {"path", TN_CONF_PATH, OFF(path), NULL, NULL, NULL},
    {"format", TN_CONF_ENUM, OFF(format), sf_formats, NULL, NULL},
    {"interval", TN_CONF_DURATION, OFF(interval), &r_interval, NULL, NULL},
    TN_CONF_END};

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD(SF_NAME, TN_VERSION_STRING),
    NULL,
    sf_conf_table,
    sizeof(struct sf_conf),
    sf_create_conf,
    NULL,
    NULL,
    sf_start,
    sf_stop,
    sf_fini,
    sf_reload,
    sf_stats,
};
