/*
 * ternctl.c -- the command line client of a running ternd: the core's
 * admin endpoint (ping, stats, reload) and the broker's HTTP API (pub,
 * pause, stats) and TCP protocol V2 (tail). Needs libc and jansson only.
 * See ternctl(1).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "tcl_net.h"

#define NAME_MAX_LEN 64       /* broker topic and channel names */
#define MAX_FRAME (256u << 20) /* larger frames mean a confused stream */

static struct {
    const char *admin, *broker_http, *broker_tcp;
    int timeout_ms;
} opt = {"127.0.0.1:4171", "127.0.0.1:4151", "127.0.0.1:4150", 5000};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ternctl [-a ADMIN] [-b HTTP] [-t TCP] [-T SECONDS] COMMAND [ARGS]\n"
            "  -a HOST:PORT  ternd's admin endpoint (default 127.0.0.1:4171)\n"
            "  -b HOST:PORT  the broker's HTTP API (default 127.0.0.1:4151)\n"
            "  -t HOST:PORT  the broker's TCP protocol (default 127.0.0.1:4150)\n"
            "  -T SECONDS    network time limit (default 5)\n"
            "commands:\n"
            "  ping [admin|broker]        check that the endpoints answer\n"
            "  stats [-S FILE]            topics and channels, with rates since the last call\n"
            "  pub TOPIC [MESSAGE|-]      publish one message (- or none: standard input)\n"
            "  tail [-n N] [-c CHANNEL] TOPIC\n"
            "                             print messages of TOPIC as they come\n"
            "  pause TOPIC [CHANNEL]      stop delivery of a topic or channel\n"
            "  unpause TOPIC [CHANNEL]    resume it\n"
            "  reload [-p PIDFILE]        reload the configuration (POST /reload, or SIGHUP)\n");
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
    va_list ap;

    fputs("ternctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

/* ---- HTTP calls ----------------------------------------------------------- */

/* The useful part of an error body: nsqd's {"message":"CODE"}, else the
 * text up to the first line end. */
static void error_text(const struct tcl_str *body, char *buf, size_t len)
{
    json_t *j = body->p ? json_loads(body->p, JSON_DECODE_ANY, NULL) : NULL;
    const char *m = json_string_value(json_object_get(j, "message"));

    snprintf(buf, len, "%s", m ? m : body->p ? body->p : "");
    buf[strcspn(buf, "\r\n")] = '\0';
    json_decref(j);
}

/* An HTTP server of ternd: its name and the option that sets its address,
 * for the messages. */
struct endpoint {
    const char *name, *flag;
    const char **addr;
};

static const struct endpoint admin_ep = {"admin endpoint", "-a", &opt.admin};
static const struct endpoint broker_ep = {"broker HTTP API", "-b", &opt.broker_http};

/* One request; returns the status (with the body in out) or -1 after
 * saying what failed. */
static int call(const struct endpoint *ep, const char *method, const char *target,
                const char *body, size_t blen, struct tcl_str *out)
{
    char err[512];
    int st =
        tcl_http(*ep->addr, method, target, body, blen, opt.timeout_ms, out, err, sizeof(err));

    if (st < 0)
        fail("%s: %s (is ternd running? see %s)", ep->name, err, ep->flag);
    return st;
}

/* A call whose success is 200: 0, or 1 after reporting the answer. */
static int call_ok(const struct endpoint *ep, const char *method, const char *target,
                   const char *body, size_t blen, struct tcl_str *out)
{
    int st = call(ep, method, target, body, blen, out);
    char msg[256];

    if (st < 0)
        return 1;
    if (st != 200) {
        error_text(out, msg, sizeof(msg));
        return fail("%s %s: %d %s", method, target, st, msg);
    }
    return 0;
}

static json_t *get_json(const struct endpoint *ep, const char *target)
{
    struct tcl_str body = {0};
    json_t *j = NULL;
    json_error_t je;

    if (call_ok(ep, "GET", target, NULL, 0, &body) == 0 &&
        !(j = json_loads(body.p ? body.p : "", 0, &je)))
        fail("%s: GET %s: bad JSON: %s", ep->name, target, je.text);
    tcl_str_free(&body);
    return j;
}

/* ---- ping ------------------------------------------------------------------- */

static int ping_one(const char *label, const struct endpoint *ep)
{
    struct tcl_str body = {0};
    int st = call(ep, "GET", "/ping", NULL, 0, &body);
    char msg[256];

    if (st >= 0) {
        error_text(&body, msg, sizeof(msg));
        printf("%s %s: %s%s\n", label, *ep->addr, st == 200 ? "" : "failing: ", msg);
    }
    tcl_str_free(&body);
    return st == 200 ? 0 : 1;
}

static int cmd_ping(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    int rc = 0;

    if (argc > 2 || (only && strcmp(only, "admin") != 0 && strcmp(only, "broker") != 0))
        return fail("usage: ternctl ping [admin|broker]");
    if (!only || strcmp(only, "admin") == 0)
        rc |= ping_one("admin", &admin_ep);
    if (!only || strcmp(only, "broker") == 0)
        rc |= ping_one("broker", &broker_ep);
    return rc;
}

/* ---- pub, pause, unpause ------------------------------------------------------ */

static int check_name(const char *kind, const char *name)
{
    if (!*name || strlen(name) > NAME_MAX_LEN)
        return fail("bad %s name \"%s\" (1..%d characters)", kind, name, NAME_MAX_LEN);
    return 0;
}

static int read_stdin(struct tcl_str *s)
{
    char buf[8192];
    size_t n;

    while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0)
        if (tcl_str_add(s, buf, n) != 0)
            return fail("out of memory");
    if (ferror(stdin))
        return fail("reading standard input: %s", strerror(errno));
    return tcl_str_add(s, "", 0) == 0 ? 0 : fail("out of memory");
}

static int cmd_pub(int argc, char **argv)
{
    struct tcl_str msg = {0}, out = {0};
    char topic[3 * NAME_MAX_LEN + 1], target[256];
    int rc;

    if (argc < 2 || argc > 3)
        return fail("usage: ternctl pub TOPIC [MESSAGE|-]");
    if (check_name("topic", argv[1]) || tcl_urlencode(argv[1], topic, sizeof(topic)) != 0)
        return 1;
    if (argc == 3 && strcmp(argv[2], "-") != 0)
        rc = tcl_str_add(&msg, argv[2], strlen(argv[2])) == 0 ? 0 : fail("out of memory");
    else
        rc = read_stdin(&msg);
    if (rc == 0) {
        snprintf(target, sizeof(target), "/pub?topic=%s", topic);
        rc = call_ok(&broker_ep, "POST", target, msg.p ? msg.p : "",
                     msg.len, &out);
    }
    tcl_str_free(&msg);
    tcl_str_free(&out);
    return rc;
}

/* pause/unpause TOPIC [CHANNEL]: the broker's /topic/OP or /channel/OP. */
static int cmd_pause(int argc, char **argv)
{
    struct tcl_str out = {0};
    char topic[3 * NAME_MAX_LEN + 1], channel[3 * NAME_MAX_LEN + 1], target[512];
    int rc;

    if (argc < 2 || argc > 3)
        return fail("usage: ternctl %s TOPIC [CHANNEL]", argv[0]);
    if (check_name("topic", argv[1]) || tcl_urlencode(argv[1], topic, sizeof(topic)) != 0)
        return 1;
    if (argc == 3) {
        if (check_name("channel", argv[2]) ||
            tcl_urlencode(argv[2], channel, sizeof(channel)) != 0)
            return 1;
        snprintf(target, sizeof(target), "/channel/%s?topic=%s&channel=%s", argv[0], topic,
                 channel);
    } else {
        snprintf(target, sizeof(target), "/topic/%s?topic=%s", argv[0], topic);
    }
    rc = call_ok(&broker_ep, "POST", target, NULL, 0, &out);
    tcl_str_free(&out);
    return rc;
}

/* ---- reload -------------------------------------------------------------------- */

static int signal_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;

    if (!f)
        return fail("%s: %s", path, strerror(errno));
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 1) {
        fclose(f);
        return fail("%s: no process id in it", path);
    }
    fclose(f);
    if (kill((pid_t)pid, SIGHUP) != 0)
        return fail("cannot signal process %ld (from %s): %s", pid, path, strerror(errno));
    printf("sent SIGHUP to %ld: see ternd's log for the result\n", pid);
    return 0;
}

static int cmd_reload(int argc, char **argv)
{
    struct tcl_str out = {0};
    const char *pid_file = NULL;
    int c, rc;

    optind = 1;
    while ((c = getopt(argc, argv, "p:")) != -1) {
        if (c != 'p')
            return fail("usage: ternctl reload [-p PIDFILE]");
        pid_file = optarg;
    }
    if (optind != argc)
        return fail("usage: ternctl reload [-p PIDFILE]");
    if (pid_file)
        return signal_pid_file(pid_file);
    rc = call_ok(&admin_ep, "POST", "/reload", NULL, 0, &out);
    if (rc == 0)
        fputs(out.p ? out.p : "reload done\n", stdout);
    tcl_str_free(&out);
    return rc;
}

/* ---- stats ----------------------------------------------------------------------- */

/* The previous call's message counts, for rates: a small JSON file. */
struct sample {
    json_t *prev;   /* {"broker", "start_time", "ms", "counts": {name: n}} or NULL */
    json_t *counts; /* this call's counts */
    double elapsed; /* seconds since prev; 0: no rates */
};

static const char *default_state_file(char *buf, size_t len)
{
    const char *dir = getenv("XDG_RUNTIME_DIR"), *home = getenv("HOME");

    if (dir && *dir)
        snprintf(buf, len, "%s/ternctl-stats.json", dir);
    else if (home && *home)
        snprintf(buf, len, "%s/.ternctl-stats.json", home);
    else
        return NULL;
    return buf;
}

static int64_t wall_ms(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Rates only make sense against the same broker process. */
static void sample_begin(struct sample *s, const char *path, json_int_t start_time)
{
    json_t *p = path ? json_load_file(path, 0, NULL) : NULL;
    const char *b = json_string_value(json_object_get(p, "broker"));
    json_int_t st = json_integer_value(json_object_get(p, "start_time"));
    double ms = (double)(wall_ms() - json_integer_value(json_object_get(p, "ms")));

    s->counts = json_object();
    s->prev = NULL;
    s->elapsed = 0;
    if (p && b && strcmp(b, opt.broker_http) == 0 && st == start_time && ms > 0) {
        s->prev = p;
        s->elapsed = ms / 1000.0;
    } else {
        json_decref(p);
    }
}

/* "  12.5" per second since the last call for this name, or "     -". */
static void format_rate(struct sample *s, const char *key, json_int_t count, char *buf,
                        size_t len)
{
    json_t *old = json_object_get(json_object_get(s->prev, "counts"), key);

    json_object_set_new(s->counts, key, json_integer(count));
    if (!old || s->elapsed <= 0 || json_integer_value(old) > count)
        snprintf(buf, len, "%8s", "-");
    else
        snprintf(buf, len, "%8.1f", (double)(count - json_integer_value(old)) / s->elapsed);
}

static void sample_end(struct sample *s, const char *path, json_int_t start_time)
{
    json_t *o;
    char tmp[4096];

    if (path && snprintf(tmp, sizeof(tmp), "%s.tmp", path) < (int)sizeof(tmp)) {
        o = json_pack("{s:s, s:I, s:I, s:O}", "broker", opt.broker_http, "start_time",
                      start_time, "ms", (json_int_t)wall_ms(), "counts", s->counts);
        /* no rates next time is all a failure here costs */
        if (o && json_dump_file(o, tmp, JSON_COMPACT) == 0 && rename(tmp, path) != 0)
            unlink(tmp);
        json_decref(o);
    }
    if (s->prev && s->elapsed > 0)
        printf("rates: messages per second over the last %.3fs\n", s->elapsed);
    else
        printf("rates: run again for messages per second\n");
    json_decref(s->prev);
    json_decref(s->counts);
}

static json_int_t jint(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static void print_row(const char *name, json_int_t depth, const char *inflight,
                      const char *clients, json_int_t msgs, const char *rate, int paused)
{
    printf("%-34s %9lld %9s %7s %11lld %s%s\n", name, (long long)depth, inflight, clients,
           (long long)msgs, rate, paused ? "  paused" : "");
}

static void print_channel(struct sample *s, const char *topic, json_t *ch)
{
    const char *name = json_string_value(json_object_get(ch, "channel_name"));
    char key[2 * NAME_MAX_LEN + 2], label[NAME_MAX_LEN + 3], rate[32], infl[24], cl[24];

    snprintf(key, sizeof(key), "%s/%s", topic, name ? name : "");
    snprintf(label, sizeof(label), "  %s", name ? name : "");
    snprintf(infl, sizeof(infl), "%lld", (long long)jint(ch, "in_flight_count"));
    snprintf(cl, sizeof(cl), "%lld", (long long)jint(ch, "client_count"));
    format_rate(s, key, jint(ch, "message_count"), rate, sizeof(rate));
    print_row(label, jint(ch, "depth"), infl, cl, jint(ch, "message_count"), rate,
              json_is_true(json_object_get(ch, "paused")));
}

static void print_topics(struct sample *s, json_t *topics)
{
    size_t i, k;
    json_t *t, *ch;
    char rate[32];

    printf("%-34s %9s %9s %7s %11s %8s\n", "TOPIC / CHANNEL", "DEPTH", "IN-FLIGHT", "CLIENTS",
           "MESSAGES", "MSG/S");
    json_array_foreach(topics, i, t) {
        const char *name = json_string_value(json_object_get(t, "topic_name"));
        if (!name)
            continue;
        format_rate(s, name, jint(t, "message_count"), rate, sizeof(rate));
        print_row(name, jint(t, "depth"), "-", "-", jint(t, "message_count"), rate,
                  json_is_true(json_object_get(t, "paused")));
        json_array_foreach(json_object_get(t, "channels"), k, ch)
            print_channel(s, name, ch);
    }
}

/* The header line from the admin endpoint's metrics. */
static void print_core(json_t *core)
{
    json_t *m;
    size_t i;
    double conns = -1;
    long long up = (long long)(jint(core, "uptime_ms") / 1000);

    json_array_foreach(json_object_get(core, "metrics"), i, m) {
        const char *n = json_string_value(json_object_get(m, "name"));
        if (n && strcmp(n, "ternd_connections_open") == 0)
            conns = json_number_value(json_object_get(m, "value"));
    }
    printf("ternd %s (admin %s): up %lldd%02lldh%02lldm%02llds, connections open: %.0f\n",
           json_string_value(json_object_get(core, "version")) ?: "?", opt.admin, up / 86400,
           up / 3600 % 24, up / 60 % 60, up % 60, conns);
}

static int cmd_stats(int argc, char **argv)
{
    char buf[4096];
    const char *state = default_state_file(buf, sizeof(buf));
    json_t *core, *bk;
    struct sample s;
    int c;

    optind = 1;
    while ((c = getopt(argc, argv, "S:")) != -1) {
        if (c != 'S')
            return fail("usage: ternctl stats [-S STATEFILE]");
        state = optarg;
    }
    if (optind != argc)
        return fail("usage: ternctl stats [-S STATEFILE]");
    core = get_json(&admin_ep, "/stats");
    if (core)
        print_core(core);
    bk = get_json(&broker_ep, "/stats?format=json&include_clients=false&include_mem=false");
    if (bk) {
        json_int_t st = jint(bk, "start_time");
        printf("broker %s (HTTP %s): health %s\n\n",
               json_string_value(json_object_get(bk, "version")) ?: "?", opt.broker_http,
               json_string_value(json_object_get(bk, "health")) ?: "?");
        sample_begin(&s, state, st);
        print_topics(&s, json_object_get(bk, "topics"));
        sample_end(&s, state, st);
    }
    c = core && bk ? 0 : 1;
    json_decref(core);
    json_decref(bk);
    return c;
}

/* ---- tail: a consumer on an ephemeral channel ------------------------------------------ */

enum { FRAME_RESPONSE = 0, FRAME_ERROR = 1, FRAME_MESSAGE = 2 };

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The next frame: its type, with the data in f; -1 when the stream broke. */
static int read_frame(int fd, struct tcl_str *f)
{
    unsigned char hdr[8];
    uint32_t size;

    if (tcl_read_exact(fd, hdr, sizeof(hdr)) != 0)
        return -1;
    size = be32(hdr);
    if (size < 4 || size > MAX_FRAME)
        return -1;
    f->len = 0;
    if (tcl_str_reserve(f, size - 4) != 0 ||
        (size > 4 && tcl_read_exact(fd, f->p, size - 4) != 0))
        return -1;
    f->len = size - 4;
    f->p[f->len] = '\0';
    return (int)be32(hdr + 4);
}

/* RDY: at most max messages in flight, so that with -n none is taken from a
 * named channel only to be requeued when we leave. */
static int tail_subscribe(int fd, const char *topic, const char *channel, long max,
                          struct tcl_str *f)
{
    char cmd[256];
    int n = snprintf(cmd, sizeof(cmd), "  V2SUB %s %s\nRDY %ld\n", topic, channel,
                     max > 0 && max < 32 ? max : 32);

    if (tcl_write_all(fd, cmd, (size_t)n) != 0 || read_frame(fd, f) != FRAME_RESPONSE ||
        strcmp(f->p, "OK") != 0)
        return fail("SUB %s %s on %s: %s", topic, channel, opt.broker_tcp,
                    f->len ? f->p : "connection closed");
    /* from here on only the server's heartbeats keep the connection alive */
    tcl_set_timeout(fd, 0);
    return 0;
}

/* Print one message (26 bytes of timestamp, attempts, id, then the body)
 * and FIN it. */
static int tail_message(int fd, const struct tcl_str *f)
{
    char fin[64];

    if (f->len < 26)
        return -1;
    /* one message per line: a body's own final newline is not doubled */
    fwrite(f->p + 26, 1, f->len - 26, stdout);
    if (f->len == 26 || f->p[f->len - 1] != '\n')
        fputc('\n', stdout);
    fflush(stdout);
    memcpy(fin, "FIN ", 4);
    memcpy(fin + 4, f->p + 10, 16);
    fin[20] = '\n';
    return tcl_write_all(fd, fin, 21);
}

static int tail_loop(int fd, long max)
{
    struct tcl_str f = {0};
    long seen = 0;
    int type, rc = 0;

    while (max <= 0 || seen < max) {
        type = read_frame(fd, &f);
        if (type == FRAME_MESSAGE) {
            if (tail_message(fd, &f) != 0)
                break;
            seen++;
        } else if (type == FRAME_RESPONSE && strcmp(f.p, "_heartbeat_") == 0) {
            if (tcl_write_all(fd, "NOP\n", 4) != 0)
                break;
        } else if (type == FRAME_ERROR) {
            rc = fail("broker: %s", f.p);
            break;
        } else if (type < 0) {
            rc = fail("connection to %s lost", opt.broker_tcp);
            break;
        }
    }
    tcl_str_free(&f);
    return rc;
}

static int cmd_tail(int argc, char **argv)
{
    char channel[NAME_MAX_LEN + 1], err[512];
    const char *chan = NULL;
    struct tcl_str f = {0};
    long max = 0;
    int c, fd, rc;

    optind = 1;
    while ((c = getopt(argc, argv, "n:c:")) != -1) {
        switch (c) {
        case 'n':
            if ((max = strtol(optarg, NULL, 10)) <= 0)
                return fail("tail -n: want a count of messages above 0");
            break;
        case 'c':
            chan = optarg;
            break;
        default:
            return fail("usage: ternctl tail [-n N] [-c CHANNEL] TOPIC");
        }
    }
    if (optind + 1 != argc)
        return fail("usage: ternctl tail [-n N] [-c CHANNEL] TOPIC");
    if (!chan) {
        snprintf(channel, sizeof(channel), "ternctl-%ld#ephemeral", (long)getpid());
        chan = channel;
    }
    if (check_name("topic", argv[optind]) || check_name("channel", chan))
        return 1;
    if ((fd = tcl_connect(opt.broker_tcp, opt.timeout_ms, err, sizeof(err))) < 0)
        return fail("broker TCP: %s (is ternd running? see -t)", err);
    rc = tail_subscribe(fd, argv[optind], chan, max, &f);
    tcl_str_free(&f);
    if (rc == 0)
        rc = tail_loop(fd, max);
    tcl_write_all(fd, "CLS\n", 4);
    close(fd);
    return rc;
}

/* ---- main ---------------------------------------------------------------------- */

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"ping", cmd_ping},   {"stats", cmd_stats},     {"pub", cmd_pub},       {"tail", cmd_tail},
    {"pause", cmd_pause}, {"unpause", cmd_pause},   {"reload", cmd_reload},
};

int main(int argc, char **argv)
{
    int c;
    double secs;

    while ((c = getopt(argc, argv, "+a:b:t:T:hV")) != -1) {
        switch (c) {
        case 'a':
            opt.admin = optarg;
            break;
        case 'b':
            opt.broker_http = optarg;
            break;
        case 't':
            opt.broker_tcp = optarg;
            break;
        case 'T':
            secs = strtod(optarg, NULL);
            if (secs <= 0 || secs > 3600)
                return fail("-T: want seconds in (0, 3600]");
            opt.timeout_ms = (int)(secs * 1000);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("ternctl %s\n", PACKAGE_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[optind], commands[i].name) == 0)
            return commands[i].run(argc - optind, argv + optind);
    fail("unknown command \"%s\"", argv[optind]);
    usage(stderr);
    return 2;
}
