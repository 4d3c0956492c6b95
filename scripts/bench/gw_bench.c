/*
 * gw_bench.c -- a load generator for ternd's gateway: clients over TCP or
 * WebSocket send due-format packets (size|header|route|seq|data, big
 * endian, route and seq 2 bytes each) to a route whose script echoes them,
 * keeping `pipeline` packets in flight per connection, all on one poll()
 * loop; prints packets/s and the round-trip latency percentiles of every
 * packet (answers come back in order on a connection, so each is matched
 * with its send time). With -i it only opens N connections and holds them,
 * each after one heartbeat (for measuring the server's memory per idle
 * connection); they come from several loopback source addresses
 * (127.0.0.1, .2, ...: -S, default one per 20,000 connections) so that one
 * address's ephemeral ports do not run out, with RLIMIT_NOFILE raised to
 * its hard limit.
 *
 * Standalone on purpose: it shares no code with ternd, so a bug in the
 * gateway's framing cannot hide behind the same bug here. -h for usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD 9 /* size 4, header 1, route 2, seq 2 */
#define MAX_PACKET 65536

struct client {
    int fd;
    unsigned char in[4 * MAX_PACKET];
    size_t len;
    uint16_t seq;
    double *sent; /* send times of the packets in flight, a ring */
    size_t head, count;
};

/* Every round trip, in microseconds, for the percentiles. */
static struct {
    float *v;
    size_t n, cap;
} lat;

static int ws_mode;
static int pipeline = 16;
static size_t payload = 64;
static const char *path = "/ws";

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* src: the local address to connect from (0: any). */
static int dial(const struct sockaddr_in *sa, in_addr_t src)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

    if (fd < 0)
        die("socket");
    if (src) {
        struct sockaddr_in la;
        memset(&la, 0, sizeof(la));
        la.sin_family = AF_INET;
        la.sin_addr.s_addr = src;
        /* the port is picked at connect, per destination: more of them */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&la, sizeof(la)) != 0)
            die("bind");
    }
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0)
        die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("send");
        c += w;
        n -= (size_t)w;
    }
}

/* The upgrade request; the 101 answer is read before anything else. */
static void ws_handshake(int fd, const char *host)
{
    char req[512], resp[2048];
    size_t got = 0;
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, host);

    send_all(fd, req, (size_t)n);
    while (got < sizeof(resp) - 1) {
        ssize_t r = recv(fd, resp + got, 1, 0); /* byte by byte: no frame is read ahead */
        if (r <= 0)
            die("handshake");
        got++;
        if (got >= 4 && memcmp(resp + got - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    resp[got] = '\0';
    if (strncmp(resp, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "handshake refused: %.40s\n", resp);
        exit(1);
    }
}

static void send_packet(struct client *c)
{
    unsigned char buf[14 + HEAD + MAX_PACKET], *p = buf + 14;
    size_t n = HEAD + payload, off;
    uint32_t size = (uint32_t)(n - 4);

    p[0] = (unsigned char)(size >> 24);
    p[1] = (unsigned char)(size >> 16);
    p[2] = (unsigned char)(size >> 8);
    p[3] = (unsigned char)size;
    p[4] = 0;
    p[5] = 0;
    p[6] = 1; /* route 1 */
    p[7] = (unsigned char)(c->seq >> 8);
    p[8] = (unsigned char)c->seq;
    c->seq++;
    c->sent[(c->head + c->count++) % (size_t)pipeline] = now();
    memset(p + HEAD, 'x', payload);
    if (!ws_mode) {
        send_all(c->fd, p, n);
        return;
    }
    /* a masked binary frame; the mask is zero, so the payload is as is */
    off = 14 - 4;
    if (n < 126) {
        off -= 2;
        buf[off] = 0x82;
        buf[off + 1] = (unsigned char)(0x80 | n);
    } else {
        off -= 4;
        buf[off] = 0x82;
        buf[off + 1] = 0x80 | 126;
        buf[off + 2] = (unsigned char)(n >> 8);
        buf[off + 3] = (unsigned char)n;
    }
    memset(buf + 10, 0, 4);
    send_all(c->fd, buf + off, 14 - off + n);
}

static void record(struct client *c, double t)
{
    if (c->count == 0) {
        fprintf(stderr, "an answer to no packet\n");
        exit(1);
    }
    if (lat.n == lat.cap) {
        lat.cap = lat.cap ? lat.cap * 2 : 1 << 20;
        if (!(lat.v = realloc(lat.v, lat.cap * sizeof(*lat.v))))
            die("realloc");
    }
    lat.v[lat.n++] = (float)((t - c->sent[c->head]) * 1e6);
    c->head = (c->head + 1) % (size_t)pipeline;
    c->count--;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;

    return x < y ? -1 : x > y;
}

static double pct(double q)
{
    size_t i = (size_t)(q * (double)(lat.n - 1));

    return lat.n ? lat.v[i] : 0;
}

/* Count whole answers at the front of c->in and drop them, recording the
 * round trip of each. */
static long take_answers(struct client *c)
{
    size_t off = 0;
    long n = 0;
    double t = now();

    for (;;) {
        size_t avail = c->len - off, need, plen;
        const unsigned char *p = c->in + off;
        if (ws_mode) {
            size_t hl = 2;
            if (avail < 2)
                break;
            plen = p[1] & 0x7f;
            if (plen == 126) {
                if (avail < 4)
                    break;
                plen = (size_t)p[2] << 8 | p[3];
                hl = 4;
            } else if (plen == 127) {
                fprintf(stderr, "unexpected huge frame\n");
                exit(1);
            }
            need = hl + plen;
        } else {
            if (avail < 4)
                break;
            need = 4 + ((size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3]);
        }
        if (avail < need)
            break;
        off += need;
        n++;
        record(c, t);
    }
    memmove(c->in, c->in + off, c->len - off);
    c->len -= off;
    return n;
}

/* One heartbeat and its answer: an idle client has been active once, so
 * the server holds what it keeps for a connection that has read. */
static void heartbeat(int fd)
{
    static const unsigned char tcp_hb[] = {0, 0, 0, 1, 0x80};
    static const unsigned char ws_hb[] = {0x82, 0x85, 0, 0, 0, 0, 0, 0, 0, 1, 0x80};
    unsigned char ans[64];
    size_t want = ws_mode ? 2 + 5 : 5, got = 0;

    if (ws_mode)
        send_all(fd, ws_hb, sizeof(ws_hb));
    else
        send_all(fd, tcp_hb, sizeof(tcp_hb));
    while (got < want) {
        ssize_t r = recv(fd, ans + got, want - got, 0);
        if (r <= 0)
            die("heartbeat");
        got += (size_t)r;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: gw_bench [-a 127.0.0.1:3553] [-m tcp|ws] [-P /ws] [-c conns]\n"
                    "                [-p pipeline] [-s payload bytes] [-d seconds] [-i idle conns]\n"
                    "                [-S source addresses]\n"
                    "Echo load against a gateway whose route 1 answers with the same data;\n"
                    "-i N only opens N connections (from -S loopback addresses 127.0.0.1,\n"
                    ".2, ...) and holds them for -d seconds.\n");
    exit(2);
}

int main(int argc, char **argv)
{
    char host[128] = "127.0.0.1";
    int port = 3553, conns = 2, idle = 0, nsrc = 0, opt;
    double secs = 5, t0, t1;
    struct sockaddr_in sa;
    struct client *cl;
    struct pollfd *pf;
    long total = 0;

    while ((opt = getopt(argc, argv, "a:m:P:c:p:s:d:i:S:h")) != -1) {
        switch (opt) {
        case 'a': {
            char *colon = strrchr(optarg, ':');
            if (!colon || (size_t)(colon - optarg) >= sizeof(host))
                usage();
            memcpy(host, optarg, (size_t)(colon - optarg));
            host[colon - optarg] = '\0';
            port = atoi(colon + 1);
            break;
        }
        case 'm':
            ws_mode = strcmp(optarg, "ws") == 0;
            break;
        case 'P':
            path = optarg;
            break;
        case 'c':
            conns = atoi(optarg);
            break;
        case 'p':
            pipeline = atoi(optarg);
            break;
        case 's':
            payload = (size_t)atol(optarg);
            break;
        case 'd':
            secs = atof(optarg);
            break;
        case 'i':
            idle = atoi(optarg);
            break;
        case 'S':
            nsrc = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (conns < 1 || pipeline < 1 || payload > MAX_PACKET - HEAD || idle < 0 || nsrc < 0 ||
        nsrc > 250)
        usage();
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        usage();
    if (idle) {
        int *fds = calloc((size_t)idle, sizeof(int));
        struct rlimit rl;
        double ti = now();
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        if (!nsrc)
            nsrc = 1 + idle / 20000;
        for (int i = 0; i < idle; i++) {
            /* 127.0.0.1, 127.0.0.2, ... in turn */
            fds[i] = dial(&sa, htonl(INADDR_LOOPBACK + (in_addr_t)(i % nsrc)));
            if (ws_mode)
                ws_handshake(fds[i], host);
            heartbeat(fds[i]);
        }
        printf("idle %d connected from %d addresses in %.1fs\n", idle, nsrc, now() - ti);
        fflush(stdout);
        usleep((useconds_t)(secs * 1e6));
        for (int i = 0; i < idle; i++)
            close(fds[i]);
        free(fds);
        return 0;
    }
    cl = calloc((size_t)conns, sizeof(*cl));
    pf = calloc((size_t)conns, sizeof(*pf));
    if (!cl || !pf)
        die("calloc");
    for (int i = 0; i < conns; i++) {
        if (!(cl[i].sent = calloc((size_t)pipeline, sizeof(double))))
            die("calloc");
        cl[i].fd = dial(&sa, 0);
        if (ws_mode)
            ws_handshake(cl[i].fd, host);
        pf[i].fd = cl[i].fd;
        pf[i].events = POLLIN;
    }
    t0 = now();
    for (int i = 0; i < conns; i++)
        for (int k = 0; k < pipeline; k++)
            send_packet(&cl[i]);
    while ((t1 = now()) - t0 < secs) {
        if (poll(pf, (nfds_t)conns, 100) < 0 && errno != EINTR)
            die("poll");
        for (int i = 0; i < conns; i++) {
            ssize_t r;
            long got;
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            r = recv(cl[i].fd, cl[i].in + cl[i].len, sizeof(cl[i].in) - cl[i].len, 0);
            if (r <= 0) {
                fprintf(stderr, "connection %d closed by the server\n", i);
                return 1;
            }
            cl[i].len += (size_t)r;
            got = take_answers(&cl[i]);
            total += got;
            for (long k = 0; k < got; k++)
                send_packet(&cl[i]);
        }
    }
    qsort(lat.v, lat.n, sizeof(*lat.v), cmp_float);
    printf("%s conns=%d pipeline=%d size=%zu: %ld packets in %.2fs = %.0f packets/s; "
           "latency us p50 %.0f p99 %.0f p99.9 %.0f max %.0f\n",
           ws_mode ? "ws" : "tcp", conns, pipeline, payload, total, t1 - t0,
           (double)total / (t1 - t0), pct(0.5), pct(0.99), pct(0.999), pct(1.0));
    return 0;
}
