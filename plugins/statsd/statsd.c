/*
 * statsd.c -- a drop-in plugin pushing every metric to a statsd server over
 * UDP, like nsqd's --statsd-address: every `interval` each counter is sent
 * as the change since the last push ("name:5|c") and each gauge as its
 * value ("name:42|g"), lines batched into datagrams of at most
 * `udp_packet_size` bytes. Without `statsd.address` it does nothing.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <ternd/ternd.h>

#define SD_NAME "statsd"
#define SD_KEY_MAX 512

struct sd_conf {
    struct tn_addr address; /* len 0: off */
    char *prefix;           /* "%s" becomes the host name, dots as '_' */
    int64_t interval;       /* ms */
    int64_t udp_packet_size;
};

/* The last value sent of one counter, to send differences. */
struct sd_last {
    struct tn_map_node node; /* in st->last, key: key */
    double value;
    unsigned gen; /* the push that last saw it */
    char key[];
};

struct sd_state {
    const struct sd_conf *conf;
    int fd;
    ev_timer timer;
    char prefix[256];
    struct tn_buf line, packet;
    struct tn_map last; /* counter name -> struct sd_last */
    unsigned gen;
    uint64_t packets, errors;
};

/* ---- names ------------------------------------------------------------------ */

/* statsd splits on '.', ':', '|' and '@': everything but [A-Za-z0-9_-]
 * becomes '_'. */
static void append_clean(struct tn_buf *b, const char *s)
{
    for (; *s; s++) {
        char c = *s;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-';
        tn_buf_append(b, ok ? &c : "_", 1);
    }
}

/* prefix + name without "ternd_" + ".key.value" per label. */
static void build_key(struct sd_state *st, const struct tn_stats_sample *s)
{
    const char *name = strncmp(s->name, "ternd_", 6) == 0 ? s->name + 6 : s->name;

    tn_buf_reset(&st->line);
    tn_buf_append(&st->line, st->prefix, strlen(st->prefix));
    append_clean(&st->line, name);
    for (const char *const *l = s->labels; l && l[0] && l[1]; l += 2) {
        tn_buf_append(&st->line, ".", 1);
        append_clean(&st->line, l[0]);
        tn_buf_append(&st->line, ".", 1);
        append_clean(&st->line, l[1]);
    }
}

/* The configured prefix with %s as the host name (dots as '_', as nsqd's
 * statsd host key), ending in '.' unless empty. */
static void build_prefix(struct sd_state *st, const char *fmt)
{
    char host[128] = "localhost", *p, *d = st->prefix, *end = st->prefix + sizeof(st->prefix) - 2;

    if (gethostname(host, sizeof(host) - 1) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    for (p = host; *p; p++)
        if (*p == '.')
            *p = '_';
    for (const char *f = fmt ? fmt : ""; *f && d < end; f++) {
        if (f[0] == '%' && f[1] == 's') {
            for (p = host; *p && d < end; p++)
                *d++ = *p;
            f++;
        } else {
            *d++ = *f;
        }
    }
    if (d > st->prefix && d[-1] != '.')
        *d++ = '.';
    *d = '\0';
}

/* ---- last values ------------------------------------------------------------- */

/* The change of a counter since the last push (the whole value the first
 * time, or after a reset made it smaller). */
static double counter_delta(struct sd_state *st, const char *key, size_t n, double v)
{
    struct sd_last *e = TN_MAP_ENTRY_OR_NULL(tn_map_find(&st->last, key, n), struct sd_last, node);
    double d;

    if (!e) {
        if (!(e = malloc(sizeof(*e) + n + 1)))
            return v;
        memcpy(e->key, key, n);
        e->key[n] = '\0';
        e->value = 0;
        if (tn_map_insert(&st->last, &e->node, e->key, n) != 0) {
            free(e);
            return v;
        }
    }
    d = v >= e->value ? v - e->value : v;
    e->value = v;
    e->gen = st->gen;
    return d;
}

/* Forget counters no longer reported (a deleted topic). */
static void sweep(struct sd_state *st, int all)
{
    struct tn_map_iter it;

    for (struct tn_map_node *n = tn_map_first(&st->last, &it); n; n = tn_map_next(&it)) {
        struct sd_last *e = TN_MAP_ENTRY(n, struct sd_last, node);
        if (all || e->gen != st->gen) {
            tn_map_remove(&st->last, n);
            free(e);
        }
    }
    if (all)
        tn_map_free(&st->last);
}

/* ---- the push ------------------------------------------------------------------ */

static void send_packet(struct sd_state *st)
{
    const struct tn_addr *a = &st->conf->address;

    if (tn_buf_rlen(&st->packet) == 0)
        return;
    if (sendto(st->fd, tn_buf_rptr(&st->packet), tn_buf_rlen(&st->packet), 0,
               (const struct sockaddr *)&a->sa, a->len) < 0) {
        if (st->errors++ == 0) /* once, not every interval */
            tn_log_warn(SD_NAME, "send to %s: %s", a->text, strerror(errno));
    } else {
        st->packets++;
    }
    tn_buf_reset(&st->packet);
}

static void add_line(struct sd_state *st, const char *text, size_t n)
{
    size_t max = (size_t)st->conf->udp_packet_size;

    if (tn_buf_rlen(&st->packet) && tn_buf_rlen(&st->packet) + 1 + n > max)
        send_packet(st);
    if (tn_buf_rlen(&st->packet))
        tn_buf_append(&st->packet, "\n", 1);
    tn_buf_append(&st->packet, text, n); /* a line longer than max goes alone */
}

static void format_value(struct tn_buf *b, double v)
{
    if (v == (double)(int64_t)v && fabs(v) < 9e15)
        tn_buf_printf(b, "%lld", (long long)v);
    else
        tn_buf_printf(b, "%.6f", v);
}

static void visit(const struct tn_stats_sample *s, void *ud)
{
    struct sd_state *st = ud;
    size_t klen;
    double v = s->value;

    if (!isfinite(v))
        return;
    build_key(st, s);
    klen = tn_buf_rlen(&st->line);
    if (klen > SD_KEY_MAX)
        return;
    if (s->type == TN_STAT_COUNTER) {
        v = counter_delta(st, tn_buf_rptr(&st->line), klen, v);
        tn_buf_append(&st->line, ":", 1);
        format_value(&st->line, v);
        tn_buf_append(&st->line, "|c", 2);
    } else {
        /* statsd reads a signed gauge as a change: set 0 first */
        if (v < 0) {
            tn_buf_append(&st->line, ":0|g", 4);
            add_line(st, tn_buf_rptr(&st->line), tn_buf_rlen(&st->line));
            st->line.len = st->line.pos + klen;
        }
        tn_buf_append(&st->line, ":", 1);
        format_value(&st->line, v);
        tn_buf_append(&st->line, "|g", 2);
    }
    add_line(st, tn_buf_rptr(&st->line), tn_buf_rlen(&st->line));
}

static void push(struct sd_state *st)
{
    int rc;

    st->gen++;
    if ((rc = tn_stats_visit(visit, st)) != 0) {
        tn_log_warn(SD_NAME, "collecting metrics: %s", tn_strerror(rc));
        return;
    }
    send_packet(st);
    sweep(st, 0);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    push(w->data);
}

/* ---- the lifecycle ---------------------------------------------------------------- */

static int sd_create_conf(struct tn_mod *m, void *conf)
{
    struct sd_conf *c = conf;

    c->interval = 60 * 1000;
    c->udp_packet_size = 508; /* nsqd's default: fits any path's MTU */
    c->prefix = "ternd.%s";
    return 0;
}

/* Open the socket and start the timer when an address is set. */
static int sd_open(struct sd_state *st)
{
    const struct sd_conf *c = st->conf;
    int fd;

    if (!c->address.len)
        return 0;
    fd = socket(c->address.sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        tn_log_error(SD_NAME, "socket for %s: %s", c->address.text, strerror(errno));
        return -errno;
    }
    st->fd = fd;
    build_prefix(st, c->prefix);
    ev_timer_init(&st->timer, timer_cb, (double)c->interval / 1000.0, (double)c->interval / 1000.0);
    st->timer.data = st;
    ev_timer_start(tn_loop(), &st->timer);
    tn_log_info(SD_NAME, "pushing to %s every %lldms, prefix \"%s\"", c->address.text,
                (long long)c->interval, st->prefix);
    return 0;
}

static void sd_close(struct sd_state *st)
{
    if (st->fd >= 0) {
        ev_timer_stop(tn_loop(), &st->timer);
        close(st->fd);
        st->fd = -1;
    }
}

static int sd_start(struct tn_mod *m)
{
    struct sd_state *st = calloc(1, sizeof(*st));

    if (!st)
        return TN_ENOMEM;
    st->fd = -1;
    st->conf = m->conf;
    m->data = st;
    return sd_open(st);
}

static int sd_reload(struct tn_mod *m, void *new_conf)
{
    struct sd_state *st = m->data;

    sd_close(st);
    st->conf = new_conf;
    return sd_open(st);
}

static int sd_stop(struct tn_mod *m)
{
    struct sd_state *st = m->data;

    if (st)
        sd_close(st);
    return 0;
}

static void sd_fini(struct tn_mod *m)
{
    struct sd_state *st = m->data;

    if (!st)
        return;
    sd_close(st);
    sweep(st, 1);
    tn_buf_free(&st->line);
    tn_buf_free(&st->packet);
    free(st);
    m->data = NULL;
}

static void sd_stats(struct tn_mod *m, struct tn_stats_out *o)
{
    const struct sd_state *st = m->data;

    if (!st || st->fd < 0)
        return;
    tn_stats_emit(o, "ternd_statsd_packets_total", TN_STAT_COUNTER, "Datagrams sent to statsd",
                  NULL, (double)st->packets);
    tn_stats_emit(o, "ternd_statsd_send_errors_total", TN_STAT_COUNTER,
                  "Datagrams that could not be sent", NULL, (double)st->errors);
}

static const struct tn_conf_range r_interval = {10, 24LL * 3600 * 1000};
static const struct tn_conf_range r_packet = {64, 65000};

#define OFF(f) offsetof(struct sd_conf, f)
static const struct tn_conf_cmd sd_conf_table[] = {
    {"address", TN_CONF_ADDR, OFF(address), NULL, NULL, NULL},
    {"prefix", TN_CONF_STRING, OFF(prefix), NULL, NULL, NULL},
    {"interval", TN_CONF_DURATION, OFF(interval), &r_interval, NULL, NULL},
    {"udp_packet_size", TN_CONF_INT, OFF(udp_packet_size), &r_packet, NULL, NULL},
    TN_CONF_END};

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD(SD_NAME, TN_VERSION_STRING),
    NULL,
    sd_conf_table,
    sizeof(struct sd_conf),
    sd_create_conf,
    NULL,
    NULL,
    sd_start,
    sd_stop,
    sd_fini,
    sd_reload,
    sd_stats,
};
