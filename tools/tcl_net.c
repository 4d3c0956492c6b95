/*
 * tcl_net.c -- see tcl_net.h.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "tcl_net.h"

void tcl_str_free(struct tcl_str *s)
{
    free(s->p);
    s->p = NULL;
    s->len = s->cap = 0;
}

int tcl_str_reserve(struct tcl_str *s, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        char *np;
        while (cap < s->len + n + 1)
            cap *= 2;
        if (!(np = realloc(s->p, cap)))
            return -1;
        s->p = np;
        s->cap = cap;
    }
    return 0;
}

int tcl_str_add(struct tcl_str *s, const void *p, size_t n)
{
    if (tcl_str_reserve(s, n) != 0)
        return -1;
    if (n)
        memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
    return 0;
}

/* "host:port" or "[host]:port" into host and port; 0 or -1. */
static int split_addr(const char *addr, char *host, size_t hlen, const char **port)
{
    const char *colon = strrchr(addr, ':');
    const char *h = addr;
    size_t n;

    if (!colon || !colon[1])
        return -1;
    n = (size_t)(colon - addr);
    if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= hlen)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = colon + 1;
    return 0;
}

void tcl_set_timeout(int fd, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};

    /* on Linux SO_SNDTIMEO also bounds connect() */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int tcl_connect(const char *addr, int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints, *res, *ai;
    char host[256];
    const char *port;
    int fd = -1, rc, saved = 0;

    if (split_addr(addr, host, sizeof(host), &port) != 0) {
        snprintf(err, errlen, "bad address \"%s\" (want HOST:PORT)", addr);
        return -1;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
        snprintf(err, errlen, "%s: %s", addr, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        tcl_set_timeout(fd, timeout_ms);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "cannot connect to %s: %s", addr,
                 saved == EINPROGRESS || saved == EAGAIN ? "timed out" : strerror(saved));
    return fd;
}

int tcl_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int tcl_read_exact(int fd, void *p, size_t n)
{
    char *c = p;

    while (n > 0) {
        ssize_t r = recv(fd, c, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static int read_to_eof(int fd, struct tcl_str *s)
{
    char buf[16384];

    for (;;) {
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return 0;
        if (tcl_str_add(s, buf, (size_t)r) != 0)
            return -1;
    }
}

/* Split a whole reply in raw into its status and body (moved into out). */
static int parse_reply(struct tcl_str *raw, struct tcl_str *out)
{
    int status;
    char *end;

    if (raw->len < 12 || sscanf(raw->p, "HTTP/1.%*d %3d", &status) != 1)
        return -1;
    if (!(end = strstr(raw->p, "\r\n\r\n")))
        return -1;
    end += 4;
    if (tcl_str_add(out, end, raw->len - (size_t)(end - raw->p)) != 0)
        return -1;
    return status;
}

int tcl_http(const char *addr, const char *method, const char *target, const char *body,
             size_t body_len, int timeout_ms, struct tcl_str *out, char *err, size_t errlen)
{
    struct tcl_str req = {0}, raw = {0};
    char head[1024];
    int fd, n, status = -1;

    if ((fd = tcl_connect(addr, timeout_ms, err, errlen)) < 0)
        return -1;
    n = snprintf(head, sizeof(head),
                 "%s %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: ternctl\r\nContent-Length: %zu\r\n\r\n",
                 method, target, addr, body ? body_len : 0);
    if (n < 0 || (size_t)n >= sizeof(head) || tcl_str_add(&req, head, (size_t)n) != 0 ||
        (body && tcl_str_add(&req, body, body_len) != 0)) {
        snprintf(err, errlen, "request too large");
        goto out;
    }
    if (tcl_write_all(fd, req.p, req.len) != 0 || read_to_eof(fd, &raw) != 0) {
        snprintf(err, errlen, "%s: %s", addr,
                 errno == EAGAIN ? "no answer (timed out)" : strerror(errno));
        goto out;
    }
    if ((status = parse_reply(&raw, out)) < 0)
        snprintf(err, errlen, "%s: not an HTTP answer", addr);
out:
    close(fd);
    tcl_str_free(&req);
    tcl_str_free(&raw);
    return status;
}

int tcl_urlencode(const char *s, char *buf, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.' || c == '~';
        if (o + (plain ? 1 : 3) >= len)
            return -1;
        if (plain) {
            buf[o++] = (char)c;
        } else {
            buf[o++] = '%';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        }
    }
    buf[o] = '\0';
    return 0;
}
