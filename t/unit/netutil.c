/*
 * netutil.c -- loopback client sockets stepped with the real loop, for the
 * connection and HTTP unit tests (see netutil.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "netutil.h"

void nu_addr_loopback(struct tn_addr *a, int port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&a->sa;

    memset(a, 0, sizeof(*a));
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a->len = sizeof(*in);
    snprintf(a->text, sizeof(a->text), "127.0.0.1:%d", port);
}

void nu_addr_unix(struct tn_addr *a, const char *path)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&a->sa;

    memset(a, 0, sizeof(*a));
    un->sun_family = AF_UNIX;
    snprintf(un->sun_path, sizeof(un->sun_path), "%s", path);
    a->len = sizeof(*un);
    snprintf(a->text, sizeof(a->text), "unix:%s", path);
}

void nu_addr_parse(struct tn_addr *a, const char *text)
{
    const char *colon = strrchr(text, ':');

    nu_addr_loopback(a, colon ? atoi(colon + 1) : 0);
}

static void wake_cb(struct ev_loop *loop, ev_timer *w, int revents) {}

void nu_step(int ms)
{
    ev_timer t;

    ev_timer_init(&t, wake_cb, ms / 1000.0, 0.);
    ev_timer_start(tn_loop(), &t);
    ev_run(tn_loop(), EVRUN_ONCE);
    ev_timer_stop(tn_loop(), &t);
}

static int64_t clock_ms(void)
{
    ev_now_update(tn_loop());
    return tn_now_ms();
}

int nu_until(int (*pred)(void *ud), void *ud, int timeout_ms)
{
    int64_t end = clock_ms() + timeout_ms;

    while (!pred(ud) && clock_ms() < end)
        nu_step(5);
    return pred(ud);
}

void nu_spin(int ms)
{
    int64_t end = clock_ms() + ms;

    while (clock_ms() < end)
        nu_step(5);
}

int nu_connect(const struct tn_addr *a)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)&a->sa, a->len) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    nu_step(1);
    return fd;
}

int nu_send(int fd, const void *p, size_t n, int timeout_ms)
{
    const char *s = p;
    int64_t end = clock_ms() + timeout_ms;

    while (n > 0) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k > 0) {
            s += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (clock_ms() >= end)
            return -1;
        nu_step(2);
    }
    nu_step(1);
    return 0;
}

int nu_send_str(int fd, const char *s)
{
    return nu_send(fd, s, strlen(s), 2000);
}

/* Read what is there; 1 if progress, 0 if nothing yet, -1 on EOF/error. */
static int recv_some(int fd, char *buf, size_t cap, size_t *got)
{
    ssize_t k = recv(fd, buf + *got, cap - *got, MSG_DONTWAIT);

    if (k > 0) {
        *got += (size_t)k;
        return 1;
    }
    if (k < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    return -1;
}

/* Read until want bytes, or until the text contains `until`, EOF or
 * timeout. buf has room for cap bytes plus a NUL. */
static size_t recv_loop(int fd, char *buf, size_t cap, const char *until, int timeout_ms, int *eof)
{
    size_t got = 0;
    int64_t end = clock_ms() + timeout_ms;

    *eof = 0;
    while (got < cap) {
        int rc = recv_some(fd, buf, cap, &got);
        if (rc < 0) {
            *eof = 1;
            break;
        }
        if (until) {
            buf[got] = '\0';
            if (strstr(buf, until))
                break;
        }
        if (rc == 0) {
            if (clock_ms() >= end)
                break;
            nu_step(2);
        }
    }
    return got;
}

size_t nu_recv(int fd, char *buf, size_t want, int timeout_ms, int *eof)
{
    return recv_loop(fd, buf, want, NULL, timeout_ms, eof);
}

size_t nu_recv_until(int fd, char *buf, size_t cap, const char *until, int timeout_ms, int *eof)
{
    size_t n = recv_loop(fd, buf, cap - 1, until, timeout_ms, eof);

    buf[n] = '\0';
    return n;
}

size_t nu_recv_all(int fd, char *buf, size_t cap, int timeout_ms, int *eof)
{
    return nu_recv_until(fd, buf, cap, NULL, timeout_ms, eof);
}
