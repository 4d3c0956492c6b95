/*
 * nsq_bench.c -- a load generator for servers speaking NSQ's TCP protocol V2
 * (ternd's broker, nsqd): publishers (PUB, or MPUB for batches), consumers
 * (SUB, RDY, FIN of every message) or both at once, all on one poll() loop.
 * Prints msg/s and MB/s per role and, for consumers, end-to-end latency
 * percentiles read from a timestamp that publishers write into each body,
 * with a sequence number by which consumers count duplicates (-n runs).
 *
 * Standalone on purpose: it shares no code with ternd, so a bug in ternd's
 * framing cannot hide behind the same bug here. Run with -h for usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAGIC_V2 "  V2"
#define FRAME_RESPONSE 0
#define FRAME_ERROR 1
#define FRAME_MESSAGE 2
#define MSG_HEADER 26 /* 8 timestamp, 2 attempts, 16 id */
#define MSG_ID_LEN 16
#define MAX_FRAME (64u << 20) /* larger frames are a protocol error */
#define MAX_PIPELINE 64       /* unanswered PUB/MPUB per connection */
/* Stamped bodies start with the magic, the send time (8-byte BE ns) and a
 * sequence number (8-byte BE, 0..N-1 over all publishers of a -n run). */
#define STAMP_MAGIC "NSQB"
#define STAMP_LEN 20
#define READ_CHUNK (256u << 10) /* bytes asked of each read() */

/* Latency histogram in microseconds: exact below 64, then 32 buckets per
 * power of two (about 3% precision) up to 2^63. */
#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

enum role { ROLE_PUB, ROLE_SUB };

enum state {
    ST_IDENTIFY,  /* IDENTIFY sent, waiting for its answer */
    ST_SUBSCRIBE, /* SUB sent, waiting for OK */
    ST_READY,     /* set up, waiting for every other connection */
    ST_RUNNING,
    ST_CLOSING, /* CLS sent (consumers) or draining answers (publishers) */
    ST_CLOSED
};

struct buf {
    char *data;
    size_t len; /* bytes held */
    size_t off; /* bytes already consumed (in) or written (out) */
    size_t cap;
};

struct conn {
    int fd;
    int id;
    enum role role;
    enum state state;
    struct buf in, out;
    /* publishers: messages in each unanswered command, oldest first */
    uint32_t pending[MAX_PIPELINE];
    unsigned pending_head, pending_n;
};

struct stats {
    uint64_t msgs;   /* published and acknowledged, or received */
    uint64_t bytes;  /* message bodies */
    uint64_t errors; /* E_* frames and broken connections */
    double start, end;
    uint64_t hist[HIST_BUCKETS];
    uint64_t lat_n, lat_sum_us, lat_max_us;
    uint64_t dups; /* consumers: sequence numbers seen before */
};

struct options {
    const char *host, *port;
    const char *topic, *channel;
    int conns;
    int pubs;   /* publisher connections; 0: conns */
    int fanout; /* consumer i subscribes to channel <channel><i> */
    unsigned batch;
    size_t size;
    uint64_t count;  /* 0: run for duration */
    double duration; /* seconds */
    unsigned rdy;
    unsigned pipeline;
    long heartbeat_ms; /* 0: server default */
    double idle;       /* seconds without progress that count as a stall */
    int stamp;         /* write/read body stamps */
    int pub, sub;
};

static struct options opt = {
    .host = "127.0.0.1",
    .port = "4150",
    .topic = "sub_bench",
    .channel = "ch",
    .conns = 0,
    .batch = 200,
    .size = 200,
    .rdy = 2500,
    .pipeline = 1,
    .idle = 10.0,
    .stamp = 1,
};

static struct stats pub_st, sub_st;
static struct conn *conns;
static int nconns;
static uint64_t pub_sent;    /* messages handed to publishers so far */
static double last_progress; /* time of the last ack or message */
static volatile sig_atomic_t interrupted;
static char *body_template;     /* one message body, opt.size bytes */
static unsigned char *seq_seen; /* consumers in -n runs: one bit a sequence number */

/* ---- small helpers ------------------------------------------------------ */

static double now_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wall-clock nanoseconds: what publishers stamp, so that a consumer on
 * another (synchronised) host can still compute a latency. */
static uint64_t now_real_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static uint32_t get_be32(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be64(char *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static uint64_t get_be64(const char *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("nsq_bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void warnx_conn(const struct conn *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "nsq_bench: %s conn %d: ", c->role == ROLE_PUB ? "pub" : "sub", c->id);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static struct stats *conn_stats(const struct conn *c)
{
    return c->role == ROLE_PUB ? &pub_st : &sub_st;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
}

static void conn_fail(struct conn *c, const char *why)
{
    warnx_conn(c, "%s", why);
    conn_stats(c)->errors++;
    conn_close(c);
}

/* ---- buffers ------------------------------------------------------------ */

/* Room for n more bytes at the end, moving consumed bytes out first. */
static char *buf_reserve(struct buf *b, size_t n)
{
    if (b->off > 0 && b->cap - b->len < n) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;

        while (cap - b->len < n)
            cap *= 2;
        p = realloc(b->data, cap);
        if (!p)
            die("out of memory (%zu bytes)", cap);
        b->data = p;
        b->cap = cap;
    }
    return b->data + b->len;
}

static void buf_add(struct buf *b, const void *p, size_t n)
{
    memcpy(buf_reserve(b, n), p, n);
    b->len += n;
}

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    va_start(ap, fmt);
    vsnprintf(buf_reserve(b, (size_t)n + 1), (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static size_t buf_pending(const struct buf *b)
{
    return b->len - b->off;
}

/* ---- latency histogram -------------------------------------------------- */

static unsigned hist_index(uint64_t us)
{
    unsigned top, shift;

    if (us < 2 * HIST_SUB)
        return (unsigned)us;
    top = 63u - (unsigned)__builtin_clzll(us);
    shift = top - HIST_SUB_BITS;
    return (shift + 1) * HIST_SUB + (unsigned)((us >> shift) & (HIST_SUB - 1));
}

/* The smallest value that falls in bucket i. */
static uint64_t hist_value(unsigned i)
{
    unsigned shift;

    if (i < 2 * HIST_SUB)
        return i;
    shift = i / HIST_SUB - 1;
    return (uint64_t)(HIST_SUB + i % HIST_SUB) << shift;
}

static void hist_add(struct stats *st, uint64_t us)
{
    st->hist[hist_index(us)]++;
    st->lat_n++;
    st->lat_sum_us += us;
    if (us > st->lat_max_us)
        st->lat_max_us = us;
}

static uint64_t hist_percentile(const struct stats *st, double p)
{
    uint64_t want = (uint64_t)((double)st->lat_n * p / 100.0 + 0.5), seen = 0;

    if (want == 0)
        want = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += st->hist[i];
        if (seen >= want)
            return hist_value(i);
    }
    return st->lat_max_us;
}

/* ---- commands ----------------------------------------------------------- */

static void send_identify(struct conn *c)
{
    char host[256] = "localhost";
    char json[768];
    int n;

    gethostname(host, sizeof(host) - 1);
    n = snprintf(json, sizeof(json),
                 "{\"client_id\":\"nsq_bench-%s-%d\",\"hostname\":\"%s\","
                 "\"user_agent\":\"nsq_bench/1.0\",\"feature_negotiation\":true",
                 c->role == ROLE_PUB ? "pub" : "sub", c->id, host);
    if (opt.heartbeat_ms)
        n += snprintf(json + n, sizeof(json) - (size_t)n, ",\"heartbeat_interval\":%ld",
                      opt.heartbeat_ms);
    n += snprintf(json + n, sizeof(json) - (size_t)n, "}");
    buf_add(&c->out, "IDENTIFY\n", 9);
    put_be32(buf_reserve(&c->out, 4), (uint32_t)n);
    c->out.len += 4;
    buf_add(&c->out, json, (size_t)n);
}

/* One message body: the template, stamped with the send time and seq. */
static void add_body(struct buf *b, uint64_t stamp, uint64_t seq)
{
    char *p = buf_reserve(b, 4 + opt.size);

    put_be32(p, (uint32_t)opt.size);
    memcpy(p + 4, body_template, opt.size);
    if (opt.stamp) {
        put_be64(p + 4 + 4, stamp);
        put_be64(p + 4 + 12, seq);
    }
    b->len += 4 + opt.size;
}

/* PUB for a batch of 1, else MPUB; n is at most opt.batch, numbered from
 * seq on. */
static void send_publish(struct conn *c, uint32_t n, uint64_t seq)
{
    uint64_t stamp = opt.stamp ? now_real_ns() : 0;

    if (opt.batch == 1) {
        buf_printf(&c->out, "PUB %s\n", opt.topic);
        add_body(&c->out, stamp, seq);
    } else {
        size_t body = 4 + (size_t)n * (4 + opt.size);

        buf_printf(&c->out, "MPUB %s\n", opt.topic);
        put_be32(buf_reserve(&c->out, 8), (uint32_t)body);
        put_be32(c->out.data + c->out.len + 4, n);
        c->out.len += 8;
        for (uint32_t i = 0; i < n; i++)
            add_body(&c->out, stamp, seq + i);
    }
    c->pending[(c->pending_head + c->pending_n) % MAX_PIPELINE] = n;
    c->pending_n++;
}

static int publishing_over(void)
{
    if (interrupted)
        return 1;
    if (opt.count)
        return pub_sent >= opt.count;
    return now_mono() - pub_st.start >= opt.duration;
}

/* Keep up to opt.pipeline commands unanswered on a publisher. */
static void fill_pipeline(struct conn *c)
{
    while (c->state == ST_RUNNING && c->pending_n < opt.pipeline && !publishing_over()) {
        uint64_t n = opt.batch;

        if (opt.count && opt.count - pub_sent < n)
            n = opt.count - pub_sent;
        send_publish(c, (uint32_t)n, pub_sent);
        pub_sent += n;
    }
    if (c->state == ST_RUNNING && c->pending_n == 0 && publishing_over())
        conn_close(c); /* everything answered */
}

static void send_rdy(struct conn *c)
{
    buf_printf(&c->out, "RDY %u\n", opt.rdy);
}

/* ---- frames ------------------------------------------------------------- */

static void lower_rdy(const struct conn *c, long max)
{
    if (max > 0 && opt.rdy > (unsigned long)max) {
        warnx_conn(c, "server max_rdy_count is %ld: RDY %u lowered", max, opt.rdy);
        opt.rdy = (unsigned)max;
    }
}

/* IDENTIFY answers OK, or a JSON object when features were negotiated;
 * a consumer's RDY must stay within the server's max_rdy_count. */
static void on_identified(struct conn *c, const char *data, size_t len)
{
    char json[4096];
    const char *p;

    if (len > 0 && data[0] == '{') {
        len = len < sizeof(json) ? len : sizeof(json) - 1;
        memcpy(json, data, len);
        json[len] = '\0';
        p = strstr(json, "\"max_rdy_count\":");
        if (p && c->role == ROLE_SUB)
            lower_rdy(c, strtol(p + 16, NULL, 10));
    } else if (!(len == 2 && memcmp(data, "OK", 2) == 0)) {
        conn_fail(c, "unexpected answer to IDENTIFY");
        return;
    }
    if (c->role == ROLE_SUB) {
        if (opt.fanout)
            buf_printf(&c->out, "SUB %s %s%d\n", opt.topic, opt.channel, c->id);
        else
            buf_printf(&c->out, "SUB %s %s\n", opt.topic, opt.channel);
        c->state = ST_SUBSCRIBE;
    } else {
        c->state = ST_READY;
    }
}

static void on_ack(struct conn *c, int ok)
{
    struct stats *st = &pub_st;
    uint32_t n;

    if (c->pending_n == 0) {
        conn_fail(c, "answer with no command outstanding");
        return;
    }
    n = c->pending[c->pending_head];
    c->pending_head = (c->pending_head + 1) % MAX_PIPELINE;
    c->pending_n--;
    if (ok) {
        st->msgs += n;
        st->bytes += (uint64_t)n * opt.size;
        st->end = now_mono();
        last_progress = st->end;
    }
    fill_pipeline(c);
}

static void on_response(struct conn *c, const char *data, size_t len)
{
    int ok = len == 2 && memcmp(data, "OK", 2) == 0;

    if (len == 11 && memcmp(data, "_heartbeat_", 11) == 0) {
        buf_add(&c->out, "NOP\n", 4);
        return;
    }
    switch (c->state) {
    case ST_IDENTIFY:
        on_identified(c, data, len);
        return;
    case ST_SUBSCRIBE:
        if (!ok) {
            conn_fail(c, "unexpected answer to SUB");
            return;
        }
        c->state = ST_READY;
        return;
    case ST_RUNNING:
    case ST_CLOSING:
        if (len == 10 && memcmp(data, "CLOSE_WAIT", 10) == 0) {
            conn_close(c);
            return;
        }
        if (c->role == ROLE_PUB && ok) {
            on_ack(c, 1);
            return;
        }
        break;
    default:
        break;
    }
    warnx_conn(c, "unexpected response \"%.*s\"", (int)(len > 64 ? 64 : len), data);
    conn_stats(c)->errors++;
}

/* E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED leave the connection open;
 * nsqd closes it after every other error. A publisher's error answers its
 * oldest outstanding command. */
static void on_error(struct conn *c, const char *data, size_t len)
{
    warnx_conn(c, "error \"%.*s\"", (int)(len > 200 ? 200 : len), data);
    conn_stats(c)->errors++;
    if (c->role == ROLE_PUB && c->state == ST_RUNNING && c->pending_n > 0)
        on_ack(c, 0);
    else if (c->state != ST_RUNNING && c->state != ST_CLOSING)
        conn_close(c); /* failed during set-up: no point going on */
}

/* A sequence number delivered again is a duplicate (at-least-once allows
 * them after timeouts and requeues; a clean run should have none). */
static void note_seq(struct stats *st, uint64_t seq)
{
    unsigned char bit;

    if (!seq_seen || seq >= opt.count)
        return;
    bit = (unsigned char)(1u << (seq & 7));
    if (seq_seen[seq >> 3] & bit)
        st->dups++;
    seq_seen[seq >> 3] |= bit;
}

static void on_message(struct conn *c, const char *data, size_t len)
{
    struct stats *st = &sub_st;
    const char *body = data + MSG_HEADER;
    size_t body_len;

    if (c->role != ROLE_SUB || len < MSG_HEADER) {
        conn_fail(c, len < MSG_HEADER ? "message frame too short" : "message on a publisher");
        return;
    }
    body_len = len - MSG_HEADER;
    buf_add(&c->out, "FIN ", 4);
    buf_add(&c->out, data + 10, MSG_ID_LEN);
    buf_add(&c->out, "\n", 1);
    st->msgs++;
    st->bytes += body_len;
    st->end = now_mono();
    last_progress = st->end;
    if (opt.stamp && body_len >= STAMP_LEN && memcmp(body, STAMP_MAGIC, 4) == 0) {
        uint64_t sent = get_be64(body + 4), now = now_real_ns();
        hist_add(st, now > sent ? (now - sent) / 1000 : 0);
        note_seq(st, get_be64(body + 12));
    }
}

/* Handle every complete frame in c->in; a partial one waits for more. */
static void parse_frames(struct conn *c)
{
    struct buf *b = &c->in;

    while (c->fd >= 0 && buf_pending(b) >= 4) {
        const char *p = b->data + b->off;
        uint32_t size = get_be32(p);

        if (size < 4 || size > MAX_FRAME) {
            conn_fail(c, "bad frame size");
            return;
        }
        if (buf_pending(b) < 4 + (size_t)size) {
            buf_reserve(b, 4 + (size_t)size - buf_pending(b));
            return;
        }
        b->off += 4 + (size_t)size;
        switch (get_be32(p + 4)) {
        case FRAME_RESPONSE:
            on_response(c, p + 8, size - 4);
            break;
        case FRAME_ERROR:
            on_error(c, p + 8, size - 4);
            break;
        case FRAME_MESSAGE:
            on_message(c, p + 8, size - 4);
            break;
        default:
            conn_fail(c, "unknown frame type");
            return;
        }
    }
    if (b->off == b->len)
        b->off = b->len = 0;
}

/* ---- sockets ------------------------------------------------------------ */

static int dial(void)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    int fd = -1, one = 1, rc;

    rc = getaddrinfo(opt.host, opt.port, &hints, &res);
    if (rc != 0)
        die("%s:%s: %s", opt.host, opt.port, gai_strerror(rc));
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        die("connect %s:%s: %s", opt.host, opt.port, strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void conn_open(struct conn *c, int id, enum role role)
{
    memset(c, 0, sizeof(*c));
    c->id = id;
    c->role = role;
    c->fd = dial();
    c->state = ST_IDENTIFY;
    buf_add(&c->out, MAGIC_V2, 4);
    send_identify(c);
}

static void conn_read(struct conn *c)
{
    ssize_t n = read(c->fd, buf_reserve(&c->in, READ_CHUNK), READ_CHUNK);

    if (n > 0) {
        c->in.len += (size_t)n;
        parse_frames(c);
    } else if (n == 0) {
        if (c->state == ST_CLOSING)
            conn_close(c); /* the server may close before CLOSE_WAIT arrives */
        else
            conn_fail(c, "closed by the server");
    } else if (errno != EAGAIN && errno != EINTR) {
        conn_fail(c, strerror(errno));
    }
}

static void conn_write(struct conn *c)
{
    struct buf *b = &c->out;
    ssize_t n;

    if (c->fd < 0 || buf_pending(b) == 0)
        return;
    n = send(c->fd, b->data + b->off, buf_pending(b), MSG_NOSIGNAL);
    if (n > 0) {
        b->off += (size_t)n;
        if (b->off == b->len)
            b->off = b->len = 0;
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        conn_fail(c, strerror(errno));
    }
}

/* ---- the loop ----------------------------------------------------------- */

static int all_in_state(enum state s)
{
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != s && conns[i].state != ST_CLOSED)
            return 0;
    return 1;
}

static int any_open(enum role role)
{
    for (int i = 0; i < nconns; i++)
        if (conns[i].role == role && conns[i].state != ST_CLOSED)
            return 1;
    return 0;
}

/* One poll() round: write what is queued, read what arrived. */
static void poll_once(int timeout_ms)
{
    struct pollfd pfd[nconns];

    for (int i = 0; i < nconns; i++) {
        conn_write(&conns[i]);
        pfd[i].fd = conns[i].fd;
        pfd[i].events = POLLIN | (buf_pending(&conns[i].out) ? POLLOUT : 0);
        pfd[i].revents = 0;
    }
    if (poll(pfd, (nfds_t)nconns, timeout_ms) < 0) {
        if (errno != EINTR)
            die("poll: %s", strerror(errno));
        return;
    }
    for (int i = 0; i < nconns; i++) {
        if (conns[i].fd < 0)
            continue;
        if (pfd[i].revents & (POLLIN | POLLERR | POLLHUP))
            conn_read(&conns[i]);
        if (pfd[i].revents & POLLOUT)
            conn_write(&conns[i]);
    }
}

static int consuming_over(void)
{
    if (interrupted)
        return 1;
    if (opt.count)
        return sub_st.msgs >= opt.count;
    return now_mono() - sub_st.start >= opt.duration;
}

static void start_running(void)
{
    double t = now_mono();

    pub_st.start = pub_st.end = sub_st.start = sub_st.end = t;
    last_progress = t;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->state != ST_READY)
            continue;
        c->state = ST_RUNNING;
        if (c->role == ROLE_PUB)
            fill_pipeline(c);
        else
            send_rdy(c);
    }
}

/* Consumers say goodbye with CLS once done, after their last FINs. */
static void stop_consumers(void)
{
    if (!opt.count && !interrupted)
        sub_st.end = now_mono(); /* duration mode: the run ends now */
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->role == ROLE_SUB && c->state == ST_RUNNING) {
            buf_add(&c->out, "CLS\n", 4);
            c->state = ST_CLOSING;
        }
    }
}

/* Stop waiting for publishers' answers (stall or interrupt). */
static void abandon_publishers(void)
{
    for (int i = 0; i < nconns; i++)
        if (conns[i].role == ROLE_PUB && conns[i].state != ST_CLOSED)
            conn_close(&conns[i]);
}

static void run_setup(void)
{
    double deadline = now_mono() + 10.0;

    while (!all_in_state(ST_READY)) {
        if (now_mono() > deadline || interrupted)
            die("connections not set up within 10s");
        poll_once(100);
    }
    if ((opt.pub && !any_open(ROLE_PUB)) || (opt.sub && !any_open(ROLE_SUB)))
        die("every connection failed during set-up");
}

static void run_main(void)
{
    int stalled = 0;

    start_running();
    for (;;) {
        int pub_done = !any_open(ROLE_PUB), sub_closing = 1;
        double t = now_mono();

        if (opt.sub && consuming_over())
            stop_consumers();
        for (int i = 0; i < nconns; i++)
            if (conns[i].role == ROLE_SUB && conns[i].state == ST_RUNNING)
                sub_closing = 0;
        if (pub_done && sub_closing)
            break;
        if (!stalled && t - last_progress > opt.idle) {
            fprintf(stderr, "nsq_bench: no progress for %.0fs: giving up\n", opt.idle);
            stalled = 1;
            (opt.pub ? &pub_st : &sub_st)->errors++;
            interrupted = 1;
            abandon_publishers();
        }
        if (interrupted)
            abandon_publishers();
        /* duration mode: wake up in time to stop */
        poll_once(opt.count ? 100 : 10);
        for (int i = 0; i < nconns; i++)
            if (conns[i].role == ROLE_PUB)
                fill_pipeline(&conns[i]);
    }
}

/* Consumers' last FINs and CLS go out; CLOSE_WAIT (or 2s) ends them. */
static void run_drain(void)
{
    double deadline = now_mono() + 2.0;

    while (any_open(ROLE_SUB) && now_mono() < deadline)
        poll_once(50);
    for (int i = 0; i < nconns; i++)
        conn_close(&conns[i]);
}

/* ---- results ------------------------------------------------------------ */

static void report(const char *name, const struct stats *st)
{
    double secs = st->end - st->start;

    if (secs <= 0)
        secs = 1e-9;
    printf("%s msgs=%llu secs=%.3f msg_per_s=%.0f mb_per_s=%.2f errors=%llu", name,
           (unsigned long long)st->msgs, secs, (double)st->msgs / secs,
           (double)st->bytes / secs / 1e6, (unsigned long long)st->errors);
    if (st->lat_n && seq_seen)
        printf(" dups=%llu", (unsigned long long)st->dups);
    if (st->lat_n)
        printf(" p50_us=%llu p99_us=%llu max_us=%llu avg_us=%.0f",
               (unsigned long long)hist_percentile(st, 50.0),
               (unsigned long long)hist_percentile(st, 99.0), (unsigned long long)st->lat_max_us,
               (double)st->lat_sum_us / (double)st->lat_n);
    printf("\n");
}

/* ---- options ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nsq_bench pub|sub|pubsub [options]\n"
            "  -a HOST:PORT  server (127.0.0.1:4150)\n"
            "  -t TOPIC      topic (sub_bench)\n"
            "  -C CHANNEL    channel (ch)\n"
            "  -c N          connections per role (the number of CPUs)\n"
            "  -P N          publisher connections, if not -c\n"
            "  -F            fan-out: consumer i subscribes to channel CHANNEL<i>\n"
            "  -b N          messages per publish: 1 sends PUB, more MPUB (200)\n"
            "  -s BYTES      message size (200); 20 or more carry a stamp (see -T)\n"
            "  -n N          stop after N messages per role (default: run -d)\n"
            "  -d SECONDS    run this long when no -n (10)\n"
            "  -r N          consumers' RDY count (2500)\n"
            "  -p N          unanswered publish commands per connection, 1..%d (1)\n"
            "  -H MS         heartbeat_interval asked in IDENTIFY (server default)\n"
            "  -i SECONDS    give up after this long without progress (10)\n"
            "  -T            no stamps in bodies (no latency or duplicate figures)\n"
            "Prints one line per role: msgs, secs, msg_per_s, mb_per_s (10^6 bytes of\n"
            "bodies per second), errors and, for sub with stamped bodies, latency\n"
            "percentiles in us and dups (with -n: messages received twice).\n"
            "Exit status: 0 ok, 1 errors or a stall, 2 bad usage or set-up failure.\n",
            MAX_PIPELINE);
}

static double parse_num(const char *s, double min, double max, char flag)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || *end || v < min || v > max)
        die("-%c: expected a number in %g..%g, got \"%s\"", flag, min, max, s);
    return v;
}

static void parse_addr(char *s)
{
    char *colon = strrchr(s, ':');

    if (!colon || colon == s || !colon[1])
        die("-a: expected HOST:PORT, got \"%s\"", s);
    *colon = '\0';
    opt.host = s;
    opt.port = colon + 1;
    if (opt.host[0] == '[' && colon[-1] == ']') { /* [::1]:4150 */
        colon[-1] = '\0';
        opt.host++;
    }
}

static void parse_options(int argc, char **argv)
{
    int ch;

    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 2 : 0);
    }
    opt.pub = !strcmp(argv[1], "pub") || !strcmp(argv[1], "pubsub");
    opt.sub = !strcmp(argv[1], "sub") || !strcmp(argv[1], "pubsub");
    if (!opt.pub && !opt.sub)
        die("unknown mode \"%s\" (pub, sub or pubsub)", argv[1]);
    optind = 2;
    while ((ch = getopt(argc, argv, "a:t:C:c:P:Fb:s:n:d:r:p:H:i:Th")) != -1) {
        switch (ch) {
        case 'a':
            parse_addr(optarg);
            break;
        case 't':
            opt.topic = optarg;
            break;
        case 'C':
            opt.channel = optarg;
            break;
        case 'c':
            opt.conns = (int)parse_num(optarg, 1, 1000, 'c');
            break;
        case 'b':
            opt.batch = (unsigned)parse_num(optarg, 1, 1e6, 'b');
            break;
        case 's':
            opt.size = (size_t)parse_num(optarg, 1, 64 << 20, 's');
            break;
        case 'n':
            opt.count = (uint64_t)parse_num(optarg, 1, 1e15, 'n');
            break;
        case 'd':
            opt.duration = parse_num(optarg, 0.001, 1e7, 'd');
            break;
        case 'r':
            opt.rdy = (unsigned)parse_num(optarg, 1, 1e9, 'r');
            break;
        case 'p':
            opt.pipeline = (unsigned)parse_num(optarg, 1, MAX_PIPELINE, 'p');
            break;
        case 'H':
            opt.heartbeat_ms = (long)parse_num(optarg, -1, 1e9, 'H');
            break;
        case 'i':
            opt.idle = parse_num(optarg, 0.1, 1e7, 'i');
            break;
        case 'P':
            opt.pubs = (int)parse_num(optarg, 1, 1000, 'P');
            break;
        case 'F':
            opt.fanout = 1;
            break;
        case 'T':
            opt.stamp = 0;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc)
        die("unexpected argument \"%s\"", argv[optind]);
    if (!opt.count && opt.duration == 0)
        opt.duration = 10.0;
    if (opt.conns == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        opt.conns = n > 0 ? (int)n : 1;
    }
    if (opt.pubs == 0)
        opt.pubs = opt.conns;
    if (opt.fanout && opt.count)
        die("-F counts every copy: use -d, not -n");
    if (opt.size < STAMP_LEN)
        opt.stamp = 0;
    if ((uint64_t)opt.batch * (4 + opt.size) + 4 > INT32_MAX)
        die("-b x -s: an MPUB body over 2 GiB");
}

static void make_body_template(void)
{
    body_template = malloc(opt.size);
    if (!body_template)
        die("out of memory");
    for (size_t i = 0; i < opt.size; i++)
        body_template[i] = (char)('a' + i % 26);
    if (opt.stamp)
        memcpy(body_template, STAMP_MAGIC, 4);
    if (opt.stamp && opt.sub && opt.count) {
        seq_seen = calloc((size_t)(opt.count / 8 + 1), 1);
        if (!seq_seen)
            die("out of memory (-n too large for the duplicate map)");
    }
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

int main(int argc, char **argv)
{
    int n = 0;

    parse_options(argc, argv);
    make_body_template();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    nconns = opt.conns * opt.sub + opt.pubs * opt.pub;
    conns = calloc((size_t)nconns, sizeof(*conns));
    if (!conns)
        die("out of memory");
    for (int i = 0; i < opt.conns && opt.sub; i++)
        conn_open(&conns[n++], i, ROLE_SUB);
    for (int i = 0; i < opt.pubs && opt.pub; i++)
        conn_open(&conns[n++], i, ROLE_PUB);
    run_setup();
    run_main();
    run_drain();
    if (opt.pub)
        report("pub", &pub_st);
    if (opt.sub)
        report("sub", &sub_st);
    return pub_st.errors || sub_st.errors || interrupted ? 1 : 0;
}
