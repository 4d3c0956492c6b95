/*
 * stats.c -- the metrics registry and its three renderings: JSON (/stats),
 * Prometheus text exposition (/metrics) and plain text.
 *
 * A render collects samples (registered counters, process gauges, and what
 * each module's stats hook emits) into a tn_stats_out, groups them by name
 * in first-seen order, then formats. Rendering happens on request only, so
 * it favours simplicity over speed.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

struct sample {
    char *name;
    char *help;
    int type;
    char **labels; /* k, v, ..., NULL (owned) */
    double value;
    size_t group;  /* first-seen index of the name, for stable grouping */
};

struct tn_stats_out {
    struct sample *v;
    size_t n, cap;
    int oom;
};

static struct tn_stat *registry;

void tn_stat_register(struct tn_stat *s)
{
    for (struct tn_stat *it = registry; it; it = it->next)
        if (it == s)
            return;
    s->next = registry;
    registry = s;
}

void tn_stat_unregister(struct tn_stat *s)
{
    for (struct tn_stat **pp = &registry; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            s->next = NULL;
            return;
        }
    }
}

static char **copy_labels(const char *const *labels)
{
    size_t n = 0;
    char **v;

    if (!labels)
        return NULL;
    while (labels[n] && labels[n + 1])
        n += 2;
    v = calloc(n + 1, sizeof(*v));
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(v[i] = strdup(labels[i]))) {
            for (size_t j = 0; j < i; j++)
                free(v[j]);
            free(v);
            return NULL;
        }
    }
    return v;
}

void tn_stats_emit(struct tn_stats_out *o, const char *name, int type, const char *help,
                   const char *const *labels, double value)
{
    struct sample *s;
    size_t group = o->n;

    if (o->oom)
        return;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        struct sample *v = realloc(o->v, cap * sizeof(*v));
        if (!v) {
            o->oom = 1;
            return;
        }
        o->v = v;
        o->cap = cap;
    }
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->v[i].name, name) == 0) {
            group = o->v[i].group;
            break;
        }
    }
    s = &o->v[o->n];
    memset(s, 0, sizeof(*s));
    s->name = strdup(name);
    s->help = strdup(help ? help : "");
    s->labels = copy_labels(labels);
    if (!s->name || !s->help || (labels && labels[0] && !s->labels)) {
        free(s->name);
        free(s->help);
        o->oom = 1;
        return;
    }
    s->type = type;
    s->value = value;
    s->group = group;
    o->n++;
}

static void out_free(struct tn_stats_out *o)
{
    for (size_t i = 0; i < o->n; i++) {
        free(o->v[i].name);
        free(o->v[i].help);
        if (o->v[i].labels) {
            for (char **l = o->v[i].labels; *l; l++)
                free(*l);
            free(o->v[i].labels);
        }
    }
    free(o->v);
}

static int by_group(const void *a, const void *b)
{
    const struct sample *x = a, *y = b;
    if (x->group != y->group)
        return x->group < y->group ? -1 : 1;
    return x < y ? -1 : (x > y); /* stable within a group */
}

/* Resident set size from /proc/self/statm, in bytes (0 if unknown). */
static double process_rss(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

static void collect(struct tn_stats_out *o, struct tn_modset *ms)
{
    static const char *const version_labels[] = {"version", TN_VERSION_STRING, NULL};

    tn_stats_emit(o, "ternd_info", TN_STAT_GAUGE, "ternd build information", version_labels, 1);
    tn_stats_emit(o, "ternd_uptime_seconds", TN_STAT_GAUGE, "Seconds since ternd started", NULL,
                  (double)(tn_now_ms() - tn_core_started_ms()) / 1000.0);
    tn_stats_emit(o, "ternd_resident_memory_bytes", TN_STAT_GAUGE, "Resident set size", NULL,
                  process_rss());
    tn_stats_emit(o, "ternd_connections_open", TN_STAT_GAUGE, "Open connections, all listeners",
                  NULL, (double)tn_conns_open());
    for (struct tn_stat *s = registry; s; s = s->next)
        tn_stats_emit(o, s->name, s->type, s->help, NULL, (double)tn_stat_get(s));
    if (ms)
        tn_modset_stats(ms, o);
    qsort(o->v, o->n, sizeof(*o->v), by_group);
}

static void prom_escape(struct tn_buf *b, const char *s, int help)
{
    for (; *s; s++) {
        if (*s == '\\')
            tn_buf_append(b, "\\\\", 2);
        else if (*s == '\n')
            tn_buf_append(b, "\\n", 2);
        else if (*s == '"' && !help)
            tn_buf_append(b, "\\\"", 2);
        else
            tn_buf_append(b, s, 1);
    }
}

static void format_value(struct tn_buf *b, double v)
{
    if (isnan(v))
        tn_buf_append(b, "NaN", 3);
    else if (isinf(v))
        tn_buf_printf(b, "%s", v > 0 ? "+Inf" : "-Inf");
    else if (v == (double)(int64_t)v && fabs(v) < 9e15)
        tn_buf_printf(b, "%lld", (long long)v);
    else
        tn_buf_printf(b, "%.17g", v);
}

static void format_prom(struct tn_buf *b, const struct tn_stats_out *o, int comments)
{
    for (size_t i = 0; i < o->n; i++) {
        const struct sample *s = &o->v[i];
        if (comments && (i == 0 || o->v[i - 1].group != s->group)) {
            tn_buf_printf(b, "# HELP %s ", s->name);
            prom_escape(b, s->help, 1);
            tn_buf_printf(b, "\n# TYPE %s %s\n", s->name,
                          s->type == TN_STAT_COUNTER ? "counter" : "gauge");
        }
        tn_buf_append(b, s->name, strlen(s->name));
        if (s->labels && s->labels[0]) {
            tn_buf_append(b, "{", 1);
            for (char **l = s->labels; *l; l += 2) {
                tn_buf_printf(b, "%s%s=\"", l == s->labels ? "" : ",", l[0]);
                prom_escape(b, l[1], 0);
                tn_buf_append(b, "\"", 1);
            }
            tn_buf_append(b, "}", 1);
        }
        tn_buf_append(b, " ", 1);
        format_value(b, s->value);
        tn_buf_append(b, "\n", 1);
    }
}

static int format_json(struct tn_buf *b, const struct tn_stats_out *o)
{
    json_t *root = json_object(), *arr = json_array();
    char *text = NULL;
    int rc = TN_ENOMEM;

    if (!root || !arr)
        goto fail;
    json_object_set_new(root, "version", json_string(TN_VERSION_STRING));
    json_object_set_new(root, "uptime_ms", json_integer(tn_now_ms() - tn_core_started_ms()));
    for (size_t i = 0; i < o->n; i++) {
        const struct sample *s = &o->v[i];
        json_t *m = json_object(), *labels = json_object();
        if (!m || !labels) {
            json_decref(m);
            json_decref(labels);
            goto fail;
        }
        json_object_set_new(m, "name", json_string(s->name));
        json_object_set_new(m, "type",
                            json_string(s->type == TN_STAT_COUNTER ? "counter" : "gauge"));
        for (char **l = s->labels; l && *l; l += 2)
            json_object_set_new(labels, l[0], json_string(l[1]));
        json_object_set_new(m, "labels", labels);
        if (s->value == (double)(int64_t)s->value && fabs(s->value) < 9e15)
            json_object_set_new(m, "value", json_integer((json_int_t)s->value));
        else
            json_object_set_new(m, "value", json_real(isfinite(s->value) ? s->value : 0));
        json_array_append_new(arr, m);
    }
    json_object_set_new(root, "metrics", arr);
    arr = NULL;
    text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    if (!text)
        goto fail;
    rc = tn_buf_append(b, text, strlen(text));
    if (rc == 0)
        rc = tn_buf_append(b, "\n", 1);
fail:
    free(text);
    json_decref(arr);
    json_decref(root);
    return rc;
}

int tn_stats_visit(tn_stats_visit_pt fn, void *ud)
{
    struct tn_stats_out o = {0};
    int rc = 0;

    collect(&o, tn_modset_current());
    if (o.oom) {
        rc = TN_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < o.n; i++) {
        const struct sample *s = &o.v[i];
        struct tn_stats_sample out = {s->name, s->help, s->type,
                                      (const char *const *)s->labels, s->value};
        fn(&out, ud);
    }
fail:
    out_free(&o);
    return rc;
}

int tn_stats_render(struct tn_buf *b, int format)
{
    return tn_stats_format(b, format, tn_modset_current());
}

int tn_stats_format(struct tn_buf *b, int format, struct tn_modset *ms)
{
    struct tn_stats_out o = {0};
    int rc = 0;

    collect(&o, ms);
    if (o.oom) {
        rc = TN_ENOMEM;
        goto fail;
    }
    switch (format) {
    case TN_STATS_JSON:
        rc = format_json(b, &o);
        break;
    case TN_STATS_PROMETHEUS:
        format_prom(b, &o, 1);
        break;
    default:
        format_prom(b, &o, 0);
        break;
    }
fail:
    out_free(&o);
    return rc;
}
