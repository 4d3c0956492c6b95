/*
 * ps_bench.c -- a pub/sub load generator for Redis (RESP: PUBLISH,
 * SUBSCRIBE) and NATS (text protocol: PUB, SUB with an optional queue
 * group), the counterpart of nsq_bench for scripts/bench/run-compare.
 *
 * Publishers send batches of -b messages, each message its own command, and
 * wait for the batch to be answered before sending the next (Redis: one
 * integer reply per PUBLISH; NATS: a PING after the batch, its PONG), so
 * every server sees the same "batch per round trip" as nsq_bench's MPUB.
 * Subscribers count what arrives. The run lasts -d seconds from the moment
 * every subscriber is subscribed; it prints nsq_bench's result lines.
 *
 * Standalone on purpose (no client library, no ternd code). -h for usage.
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK (256u << 10)
#define MAX_CONNS 256

enum proto { P_REDIS, P_NATS };
enum role { ROLE_PUB, ROLE_SUB };
enum state { ST_SETUP, ST_READY, ST_RUNNING, ST_CLOSED };

struct buf {
    char *data;
    size_t len, off, cap;
};

struct conn {
    int fd;
    enum role role;
    enum state state;
    struct buf in, out;
    uint32_t unanswered; /* publishers: replies still due for the batch */
};

struct stats {
    uint64_t msgs, bytes, errors;
};

static struct {
    enum proto proto;
    const char *host, *port, *subject, *queue;
    int pubs, subs;
    unsigned batch;
    size_t size;
    double duration;
} opt = {.host = "127.0.0.1", .subject = "bench", .pubs = 1, .subs = 1, .batch = 200,
         .size = 100, .duration = 5.0};

static struct conn conns[MAX_CONNS];
static int nconns;
static struct stats pub_st, sub_st;
static char *batch_cmds; /* one batch of publish commands, built once */
static size_t batch_len;
static int running;
static volatile sig_atomic_t interrupted;

static double now_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *msg, const char *detail)
{
    fprintf(stderr, "ps_bench: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    exit(2);
}

/* Room for n more bytes. Consumed bytes leave only in buf_compact (after
 * each parse), so a buffer grows to twice its largest unconsumed load. */
static char *buf_reserve(struct buf *b, size_t n)
{
    size_t need = b->len + n;

    if (need > b->cap) {
        b->cap = need < 4096 ? 4096 : 2 * need;
        b->data = realloc(b->data, b->cap);
        if (!b->data)
            die("out of memory", NULL);
    }
    return b->data + b->len;
}

static void buf_compact(struct buf *b)
{
    if (b->off == 0)
        return;
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
}

static void buf_add(struct buf *b, const void *p, size_t n)
{
    memcpy(buf_reserve(b, n), p, n);
    b->len += n;
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void conn_fail(struct conn *c, const char *why)
{
    fprintf(stderr, "ps_bench: %s conn: %s\n", c->role == ROLE_PUB ? "pub" : "sub", why);
    (c->role == ROLE_PUB ? &pub_st : &sub_st)->errors++;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
}

/* ---- publish commands ---------------------------------------------------- */

static void make_batch(void)
{
    char head[128];
    char *body = malloc(opt.size);
    struct buf b = {0};
    int n;

    if (!body)
        die("out of memory", NULL);
    for (size_t i = 0; i < opt.size; i++)
        body[i] = (char)('a' + i % 26);
    if (opt.proto == P_REDIS)
        n = snprintf(head, sizeof(head), "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%zu\r\n",
                     strlen(opt.subject), opt.subject, opt.size);
    else
        n = snprintf(head, sizeof(head), "PUB %s %zu\r\n", opt.subject, opt.size);
    for (unsigned i = 0; i < opt.batch; i++) {
        buf_add(&b, head, (size_t)n);
        buf_add(&b, body, opt.size);
        buf_add(&b, "\r\n", 2);
    }
    if (opt.proto == P_NATS)
        buf_str(&b, "PING\r\n");
    batch_cmds = b.data;
    batch_len = b.len;
    free(body);
}

static void send_batch(struct conn *c)
{
    buf_add(&c->out, batch_cmds, batch_len);
    c->unanswered = opt.proto == P_REDIS ? opt.batch : 1;
}

static void on_reply(struct conn *c)
{
    if (c->unanswered == 0) {
        conn_fail(c, "a reply nothing asked for");
        return;
    }
    if (--c->unanswered > 0)
        return;
    if (running) {
        pub_st.msgs += opt.batch;
        pub_st.bytes += (uint64_t)opt.batch * opt.size;
        send_batch(c);
    }
}

/* ---- Redis replies ------------------------------------------------------- */

/* Length of the line at p (up to CRLF) or -1 when incomplete. */
static long line_len(const char *p, size_t n)
{
    const char *e = memmem(p, n, "\r\n", 2);

    return e ? e - p : -1;
}

/* One RESP value at p: its size in bytes, 0 when incomplete, -1 when
 * malformed. *kind gets the first bulk string of an array (message,
 * subscribe) or the type byte. */
static long resp_value(const char *p, size_t n, char *kind, size_t kind_cap)
{
    long l = line_len(p, n), off, cnt, sz;

    if (l < 0)
        return 0;
    off = l + 2;
    switch (p[0]) {
    case '+':
    case '-':
    case ':':
        snprintf(kind, kind_cap, "%c", p[0]);
        return off;
    case '$':
        sz = strtol(p + 1, NULL, 10);
        if (sz < 0)
            return off;
        if ((size_t)(off + sz + 2) > n)
            return 0;
        snprintf(kind, kind_cap, "%.*s", (int)(sz < (long)kind_cap ? sz : (long)kind_cap - 1),
                 p + off);
        return off + sz + 2;
    case '*':
        cnt = strtol(p + 1, NULL, 10);
        for (long i = 0; i < cnt; i++) {
            char k[32];
            long v = resp_value(p + off, n - (size_t)off, k, sizeof(k));

            if (v <= 0)
                return v;
            if (i == 0)
                snprintf(kind, kind_cap, "%s", k);
            off += v;
        }
        return off;
    default:
        return -1;
    }
}

static void parse_redis(struct conn *c)
{
    struct buf *b = &c->in;

    while (c->fd >= 0 && b->off < b->len) {
        char kind[32] = "";
        long v = resp_value(b->data + b->off, b->len - b->off, kind, sizeof(kind));

        if (v == 0)
            break;
        if (v < 0 || kind[0] == '-') {
            conn_fail(c, "bad or error reply");
            return;
        }
        b->off += (size_t)v;
        if (c->role == ROLE_PUB) {
            on_reply(c);
        } else if (strcmp(kind, "message") == 0) {
            if (running) {
                sub_st.msgs++;
                sub_st.bytes += opt.size;
            }
        } else if (strcmp(kind, "subscribe") == 0) {
            c->state = ST_READY;
        }
    }
}

/* ---- NATS operations ----------------------------------------------------- */

static void parse_nats(struct conn *c)
{
    struct buf *b = &c->in;

    while (c->fd >= 0 && b->off < b->len) {
        char *p = b->data + b->off;
        long l = line_len(p, b->len - b->off);

        if (l < 0)
            break;
        if (strncmp(p, "MSG ", 4) == 0) {
            /* MSG <subject> <sid> [reply-to] <#bytes>: the size is last */
            char *sp = memrchr(p, ' ', (size_t)l);
            size_t sz = (size_t)strtoul(sp + 1, NULL, 10), need = (size_t)l + 2 + sz + 2;

            if (b->len - b->off < need)
                break;
            b->off += need;
            if (running) {
                sub_st.msgs++;
                sub_st.bytes += sz;
            }
            continue;
        }
        b->off += (size_t)l + 2;
        if (strncmp(p, "PING", 4) == 0) {
            buf_str(&c->out, "PONG\r\n");
        } else if (strncmp(p, "PONG", 4) == 0) {
            if (c->state == ST_SETUP)
                c->state = ST_READY;
            else if (c->role == ROLE_PUB)
                on_reply(c);
        } else if (strncmp(p, "-ERR", 4) == 0) {
            conn_fail(c, "-ERR from the server");
            return;
        }
        /* INFO and +OK need nothing */
    }
}

/* ---- sockets and the loop ------------------------------------------------ */

static int dial(void)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int fd, one = 1, rc = getaddrinfo(opt.host, opt.port, &hints, &res);

    if (rc != 0)
        die("getaddrinfo", gai_strerror(rc));
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) < 0)
        die("connect", strerror(errno));
    freeaddrinfo(res);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void conn_open(struct conn *c, enum role role)
{
    char cmd[512];

    memset(c, 0, sizeof(*c));
    c->role = role;
    c->fd = dial();
    c->state = ST_SETUP;
    if (opt.proto == P_REDIS) {
        if (role == ROLE_PUB) {
            c->state = ST_READY;
            return;
        }
        snprintf(cmd, sizeof(cmd), "*2\r\n$9\r\nSUBSCRIBE\r\n$%zu\r\n%s\r\n", strlen(opt.subject),
                 opt.subject);
    } else if (role == ROLE_SUB) {
        snprintf(cmd, sizeof(cmd),
                 "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB %s%s%s 1\r\nPING\r\n",
                 opt.subject, opt.queue ? " " : "", opt.queue ? opt.queue : "");
    } else {
        snprintf(cmd, sizeof(cmd), "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
    }
    buf_str(&c->out, cmd);
}

static void conn_io(struct conn *c, short revents)
{
    if (revents & (POLLIN | POLLERR | POLLHUP)) {
        ssize_t n = read(c->fd, buf_reserve(&c->in, READ_CHUNK), READ_CHUNK);

        if (n > 0) {
            c->in.len += (size_t)n;
            if (opt.proto == P_REDIS)
                parse_redis(c);
            else
                parse_nats(c);
            buf_compact(&c->in);
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            conn_fail(c, n == 0 ? "closed by the server" : strerror(errno));
            return;
        }
    }
    if (c->fd >= 0 && c->out.len > c->out.off) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);

        if (n > 0) {
            c->out.off += (size_t)n;
            if (c->out.off == c->out.len)
                c->out.off = c->out.len = 0;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            conn_fail(c, strerror(errno));
        }
    }
}

static void poll_once(int timeout_ms)
{
    struct pollfd pfd[MAX_CONNS];

    for (int i = 0; i < nconns; i++) {
        pfd[i].fd = conns[i].fd;
        pfd[i].events = POLLIN | (conns[i].out.len > conns[i].out.off ? POLLOUT : 0);
        pfd[i].revents = 0;
    }
    if (poll(pfd, (nfds_t)nconns, timeout_ms) < 0) {
        if (errno != EINTR)
            die("poll", strerror(errno));
        return;
    }
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0 && pfd[i].revents)
            conn_io(&conns[i], pfd[i].revents);
}

static int all_ready(void)
{
    for (int i = 0; i < nconns; i++)
        if (conns[i].state == ST_SETUP)
            return 0;
    return 1;
}

static void run(void)
{
    double deadline = now_mono() + 10.0, start, end = 0;

    while (!all_ready()) {
        if (now_mono() > deadline || interrupted)
            die("connections not set up within 10s", NULL);
        poll_once(100);
    }
    running = 1;
    start = now_mono();
    for (int i = 0; i < nconns; i++)
        if (conns[i].role == ROLE_PUB && conns[i].fd >= 0)
            send_batch(&conns[i]);
    while (!interrupted && (end = now_mono()) - start < opt.duration)
        poll_once(10);
    running = 0;
    printf("pub msgs=%llu secs=%.3f msg_per_s=%.0f mb_per_s=%.2f errors=%llu\n",
           (unsigned long long)pub_st.msgs, end - start, (double)pub_st.msgs / (end - start),
           (double)pub_st.bytes / (end - start) / 1e6, (unsigned long long)pub_st.errors);
    printf("sub msgs=%llu secs=%.3f msg_per_s=%.0f mb_per_s=%.2f errors=%llu\n",
           (unsigned long long)sub_st.msgs, end - start, (double)sub_st.msgs / (end - start),
           (double)sub_st.bytes / (end - start) / 1e6, (unsigned long long)sub_st.errors);
}

/* ---- options ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: ps_bench redis|nats [options]\n"
          "  -a HOST:PORT  server (127.0.0.1 and 6379 or 4222)\n"
          "  -t SUBJECT    channel (Redis) or subject (NATS) (bench)\n"
          "  -P N          publisher connections (1)\n"
          "  -c N          subscriber connections (1)\n"
          "  -q GROUP      NATS: subscribers join this queue group (load balanced)\n"
          "  -b N          messages per batch, one batch per round trip (200)\n"
          "  -s BYTES      message size (100)\n"
          "  -d SECONDS    run time (5)\n"
          "Prints: pub msgs=... secs=... msg_per_s=... mb_per_s=... errors=... and the\n"
          "same for sub (messages received by all subscribers together).\n",
          f);
}

static long num(const char *s, long min, long max)
{
    char *end;
    long v = strtol(s, &end, 10);

    if (*end || v < min || v > max)
        die("bad number", s);
    return v;
}

static void parse_options(int argc, char **argv)
{
    int ch;
    char *colon;

    if (argc < 2 || (strcmp(argv[1], "redis") && strcmp(argv[1], "nats"))) {
        usage(stderr);
        exit(2);
    }
    opt.proto = strcmp(argv[1], "redis") == 0 ? P_REDIS : P_NATS;
    opt.port = opt.proto == P_REDIS ? "6379" : "4222";
    optind = 2;
    while ((ch = getopt(argc, argv, "a:t:P:c:q:b:s:d:h")) != -1) {
        switch (ch) {
        case 'a':
            colon = strrchr(optarg, ':');
            if (!colon)
                die("-a wants HOST:PORT", optarg);
            *colon = '\0';
            opt.host = optarg;
            opt.port = colon + 1;
            break;
        case 't': opt.subject = optarg; break;
        case 'P': opt.pubs = (int)num(optarg, 0, MAX_CONNS / 2); break;
        case 'c': opt.subs = (int)num(optarg, 0, MAX_CONNS / 2); break;
        case 'q': opt.queue = optarg; break;
        case 'b': opt.batch = (unsigned)num(optarg, 1, 100000); break;
        case 's': opt.size = (size_t)num(optarg, 1, 1 << 20); break;
        case 'd': opt.duration = strtod(optarg, NULL); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (opt.queue && opt.proto != P_NATS)
        die("-q is for NATS only", NULL);
    if (opt.duration <= 0)
        die("-d must be positive", NULL);
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    make_batch();
    for (int i = 0; i < opt.subs; i++)
        conn_open(&conns[nconns++], ROLE_SUB);
    for (int i = 0; i < opt.pubs; i++)
        conn_open(&conns[nconns++], ROLE_PUB);
    run();
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    return pub_st.errors || sub_st.errors ? 1 : 0;
}
