/*
 * test_conn.c -- listeners and connections on the real loop with loopback
 * sockets: echo, limits, back-pressure, close after flush, timeouts,
 * outgoing connects and unix sockets.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h> /* RUNNING_ON_VALGRIND: header only */
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#include "core.h"
#include "netutil.h"

/* What the server side saw. */
static struct {
    int accepted;
    int closed;
    int close_reason;
    size_t max_pending;
    int64_t closed_ms;
    int connect_status;
    int connects;
    char reply[256];
    size_t reply_len;
} seen;

static void reset_seen(void)
{
    memset(&seen, 0, sizeof(seen));
}

static void echo_read(struct tn_conn *c)
{
    size_t n = tn_buf_rlen(&c->in);

    if (tn_conn_write(c, tn_buf_rptr(&c->in), n) != 0)
        return;
    tn_buf_consume(&c->in, n);
    if (tn_conn_pending(c) > seen.max_pending)
        seen.max_pending = tn_conn_pending(c);
}

static void note_close(struct tn_conn *c, int reason)
{
    seen.closed++;
    seen.close_reason = reason;
    seen.closed_ms = tn_now_ms();
}

static const struct tn_conn_handler echo_handler = {echo_read, NULL, NULL, note_close};

static int accept_echo(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    seen.accepted++;
    c->h = ud ? ud : &echo_handler;
    return 0;
}

static struct tn_listener *listen_on(const struct tn_listen_opts *opts, const void *handler,
                                     struct tn_addr *bound)
{
    struct tn_addr a;
    struct tn_listener *l;
    int err = 0;

    nu_addr_loopback(&a, 0);
    l = tn_listen(&a, opts, accept_echo, (void *)handler, &err);
    assert_non_null(l);
    assert_int_equal(err, 0);
    nu_addr_parse(bound, tn_listener_addr(l));
    assert_true(strncmp(tn_listener_addr(l), "127.0.0.1:", 10) == 0);
    assert_int_not_equal(strcmp(tn_listener_addr(l), "127.0.0.1:0"), 0);
    return l;
}

static int is_closed(void *ud)
{
    return seen.closed >= (int)(intptr_t)ud;
}
static int accepted_n(void *ud)
{
    return seen.accepted >= (int)(intptr_t)ud;
}

static int conns_zero(void *ud)
{
    return tn_conns_open() == 0;
}

static void test_echo(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    char buf[64];
    int fd, eof;

    reset_seen();
    l = listen_on(NULL, NULL, &a);
    fd = nu_connect(&a);
    assert_true(fd >= 0);
    assert_int_equal(nu_send_str(fd, "hello"), 0);
    assert_int_equal(nu_recv(fd, buf, 5, 2000, &eof), 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(seen.accepted, 1);
    assert_int_equal(tn_conns_open(), 1);
    assert_int_equal(tn_listener_conns(l), 1);
    /* many small writes in one go come back whole */
    assert_int_equal(nu_send_str(fd, "a"), 0);
    assert_int_equal(nu_send_str(fd, "bc"), 0);
    assert_int_equal(nu_recv(fd, buf, 3, 2000, &eof), 3);
    assert_memory_equal(buf, "abc", 3);
    close(fd);
    assert_true(nu_until(is_closed, (void *)1, 5000));
    assert_int_equal(seen.close_reason, TN_EPEER);
    assert_int_equal(tn_conns_open(), 0);
    assert_int_equal(tn_listener_conns(l), 0);
    tn_listener_close(l);
}

static void test_process_limit(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    char buf[16];
    int fd1, fd2, eof;

    reset_seen();
    tn_conns_set_limit(1);
    l = listen_on(NULL, NULL, &a);
    fd1 = nu_connect(&a);
    assert_int_equal(nu_send_str(fd1, "x"), 0);
    assert_int_equal(nu_recv(fd1, buf, 1, 2000, &eof), 1);
    fd2 = nu_connect(&a);
    nu_spin(20);
    /* the extra connection is closed at once, without a handler */
    assert_int_equal(nu_recv(fd2, buf, 1, 2000, &eof), 0);
    assert_true(eof);
    assert_int_equal(seen.accepted, 1);
    assert_int_equal(tn_conns_open(), 1);
    /* the first one still works */
    assert_int_equal(nu_send_str(fd1, "y"), 0);
    assert_int_equal(nu_recv(fd1, buf, 1, 2000, &eof), 1);
    assert_int_equal(buf[0], 'y');
    close(fd1);
    close(fd2);
    assert_true(nu_until(conns_zero, NULL, 2000));
    tn_conns_set_limit(0);
    tn_listener_close(l);
}

static void test_listener_limit(void **state)
{
    struct tn_listen_opts o = {.max_conns = 2, .name = "limited"};
    struct tn_addr a;
    struct tn_listener *l;
    char buf[16];
    int fds[3], i, eof;

    reset_seen();
    l = listen_on(&o, NULL, &a);
    for (i = 0; i < 3; i++) {
        fds[i] = nu_connect(&a);
        nu_spin(10);
    }
    assert_int_equal(seen.accepted, 2);
    assert_int_equal(tn_listener_conns(l), 2);
    assert_int_equal(nu_recv(fds[2], buf, 1, 2000, &eof), 0);
    assert_true(eof);
    /* a slot frees up when a client leaves */
    close(fds[0]);
    assert_true(nu_until(is_closed, (void *)1, 2000));
    fds[0] = nu_connect(&a);
    assert_int_equal(nu_send_str(fds[0], "z"), 0);
    assert_int_equal(nu_recv(fds[0], buf, 1, 2000, &eof), 1);
    assert_int_equal(seen.accepted, 3);
    for (i = 0; i < 3; i++)
        close(fds[i]);
    assert_true(nu_until(conns_zero, NULL, 2000));
    tn_listener_close(l);
}

/* A client that writes and does not read: the server's output queue stays
 * near out_high, the server stops reading, the client's sends block; once
 * the client reads, everything arrives intact. */
static void test_back_pressure(void **state)
{
    struct tn_listen_opts o = {.lim = {.out_high = 64 * 1024, .read_size = 4096}};
    struct tn_addr a;
    struct tn_listener *l;
    size_t total = 64 * 1024 * 1024, sent = 0, got = 0, i;
    char *chunk = malloc(65536), *in = malloc(65536);
    int fd, eof, stuck = 0;

    reset_seen();
    for (i = 0; i < 65536; i++)
        chunk[i] = (char)(i * 7 + i / 256);
    l = listen_on(&o, NULL, &a);
    fd = nu_connect(&a);
    while (sent < total && stuck < 50) {
        ssize_t k = send(fd, chunk + sent % 65536, 65536 - sent % 65536, MSG_DONTWAIT);
        if (k > 0) {
            sent += (size_t)k;
            stuck = 0;
        } else {
            stuck++;
            nu_step(2);
        }
    }
    /* the socket buffers filled up long before 64 MiB */
    assert_true(sent < total);
    assert_true(seen.max_pending > 0);
    assert_true(seen.max_pending <= 64 * 1024 + 4096);
    /* now read it all back */
    while (got < sent) {
        size_t want = sent - got < 65536 ? sent - got : 65536;
        size_t n = nu_recv(fd, in, want, 3000, &eof);
        assert_true(n > 0);
        assert_memory_equal(in, chunk + got % 65536,
                            n < 65536 - got % 65536 ? n : 65536 - got % 65536);
        got += n;
    }
    assert_int_equal(got, sent);
    assert_int_equal(seen.closed, 0);
    close(fd);
    assert_true(nu_until(conns_zero, NULL, 2000));
    tn_listener_close(l);
    free(chunk);
    free(in);
}

/* Past out_max the connection is closed with TN_ELIMIT. */
static void flood_read(struct tn_conn *c)
{
    static char block[65536];
    int i, rc = 0;

    tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
    for (i = 0; i < 1024 && rc == 0; i++)
        rc = tn_conn_write(c, block, sizeof(block));
    seen.connect_status = rc;
}

static const struct tn_conn_handler flood_handler = {flood_read, NULL, NULL, note_close};

static void test_out_max(void **state)
{
    struct tn_listen_opts o = {.lim = {.out_high = 64 * 1024, .out_max = 1024 * 1024}};
    struct tn_addr a;
    struct tn_listener *l;
    int fd;

    reset_seen();
    l = listen_on(&o, &flood_handler, &a);
    fd = nu_connect(&a);
    assert_int_equal(nu_send_str(fd, "go"), 0);
    assert_true(nu_until(is_closed, (void *)1, 2000));
    assert_int_equal(seen.close_reason, TN_ELIMIT);
    assert_int_equal(seen.connect_status, TN_ELIMIT);
    close(fd);
    tn_listener_close(l);
}

/* Input that the handler never consumes is bounded by in_max. */
static void hoard_read(struct tn_conn *c) {}
static const struct tn_conn_handler hoard_handler = {hoard_read, NULL, NULL, note_close};

static void test_in_max(void **state)
{
    struct tn_listen_opts o = {.lim = {.in_max = 10000}};
    struct tn_addr a;
    struct tn_listener *l;
    char block[30000];
    int fd;

    reset_seen();
    memset(block, 'i', sizeof(block));
    l = listen_on(&o, &hoard_handler, &a);
    fd = nu_connect(&a);
    nu_send(fd, block, sizeof(block), 2000);
    assert_true(nu_until(is_closed, (void *)1, 2000));
    assert_int_equal(seen.close_reason, TN_ETOOBIG);
    close(fd);
    tn_listener_close(l);
}

/* close_after_write: everything queued arrives, then EOF. */
static void bye_read(struct tn_conn *c)
{
    static char block[300000];
    size_t i;

    for (i = 0; i < sizeof(block); i++)
        block[i] = (char)('A' + i % 26);
    tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
    assert_int_equal(tn_conn_write(c, block, sizeof(block)), 0);
    tn_conn_close_after_write(c);
    assert_true(tn_conn_closing(c));
    /* writing after the close was asked is refused */
    assert_int_equal(tn_conn_write(c, "x", 1), TN_ECLOSED);
}

static const struct tn_conn_handler bye_handler = {bye_read, NULL, NULL, note_close};

static void test_close_after_write(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    char *buf = malloc(400000);
    size_t n;
    int fd, eof;

    reset_seen();
    l = listen_on(NULL, &bye_handler, &a);
    fd = nu_connect(&a);
    assert_int_equal(nu_send_str(fd, "bye"), 0);
    n = nu_recv(fd, buf, 400000, 3000, &eof);
    assert_int_equal(n, 300000);
    assert_true(eof);
    assert_int_equal(buf[0], 'A');
    assert_int_equal(buf[299999], 'A' + 299999 % 26);
    assert_true(nu_until(is_closed, (void *)1, 2000));
    assert_int_equal(seen.close_reason, 0);
    close(fd);
    tn_listener_close(l);
    free(buf);
}

static int accept_idle(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    c->h = &echo_handler;
    tn_conn_set_idle_timeout(c, 1000); /* far above the test's 100 ms steps, even on a busy machine */
    return 0;
}

static void test_idle_timeout(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    char buf[8];
    int64_t start;
    int fd, eof, err = 0;

    reset_seen();
    nu_addr_loopback(&a, 0);
    l = tn_listen(&a, NULL, accept_idle, NULL, &err);
    assert_non_null(l);
    nu_addr_parse(&a, tn_listener_addr(l));
    fd = nu_connect(&a);
    /* activity keeps it open past the timeout */
    for (int i = 0; i < 4; i++) {
        nu_spin(100);
        assert_int_equal(nu_send_str(fd, "k"), 0);
        assert_int_equal(nu_recv(fd, buf, 1, 1000, &eof), 1);
    }
    assert_int_equal(seen.closed, 0);
    start = tn_now_ms();
    assert_true(nu_until(is_closed, (void *)1, 2000));
    assert_int_equal(seen.close_reason, TN_ETIMEDOUT);
    assert_true(seen.closed_ms - start >= 950);
    assert_int_equal(nu_recv(fd, buf, 1, 1000, &eof), 0);
    assert_true(eof);
    close(fd);
    tn_listener_close(l);
}

/* Outgoing connections: a connect to our own listener, and a refused one. */
static void out_connect(struct tn_conn *c, int status)
{
    seen.connects++;
    seen.connect_status = status;
    if (status == 0)
        tn_conn_write(c, "ping", 4);
}

static void out_read(struct tn_conn *c)
{
    size_t n = tn_buf_rlen(&c->in);

    memcpy(seen.reply + seen.reply_len, tn_buf_rptr(&c->in), n);
    seen.reply_len += n;
    tn_buf_consume(&c->in, n);
    if (seen.reply_len >= 4)
        tn_conn_close(c, 0);
}

static void out_close(struct tn_conn *c, int reason)
{
    seen.close_reason = reason;
}

static const struct tn_conn_handler out_handler = {out_read, out_connect, NULL, out_close};

static int got_reply(void *ud)
{
    return seen.reply_len >= 4 && tn_conns_open() == 0;
}
static int connect_failed(void *ud)
{
    return seen.connects > 0 && tn_conns_open() == 0;
}

static void test_connect(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    struct tn_conn *c;
    int err = 0, hold;

    reset_seen();
    l = listen_on(NULL, NULL, &a);
    c = tn_connect(&a, &out_handler, NULL, NULL, &err);
    assert_non_null(c);
    assert_true(nu_until(got_reply, NULL, 2000));
    assert_int_equal(seen.connect_status, 0);
    assert_memory_equal(seen.reply, "ping", 4);
    tn_listener_close(l);

    /* a port bound but not listening (held, so nobody else takes it) */
    reset_seen();
    seen.close_reason = 12345;
    nu_addr_loopback(&a, 0);
    hold = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(hold, (struct sockaddr *)&a.sa, a.len), 0);
    assert_int_equal(getsockname(hold, (struct sockaddr *)&a.sa, &a.len), 0);
    c = tn_connect(&a, &out_handler, NULL, NULL, &err);
    if (c) {
        assert_true(nu_until(connect_failed, NULL, 2000));
        assert_int_equal(seen.connect_status, -ECONNREFUSED);
        assert_int_equal(seen.close_reason, 12345); /* no on_close */
    } else {
        assert_int_equal(err, -ECONNREFUSED);
    }
    close(hold);
}

/* One round trip through an echo listener at a, then the client leaves. */
static void echo_once(const struct tn_addr *a, const char *msg)
{
    char buf[64];
    size_t n = strlen(msg);
    int fd = nu_connect(a), eof;

    assert_true(fd >= 0);
    assert_int_equal(nu_send_str(fd, msg), 0);
    assert_int_equal(nu_recv(fd, buf, n, 2000, &eof), n);
    assert_memory_equal(buf, msg, n);
    close(fd);
    assert_true(nu_until(conns_zero, NULL, 2000));
}

static void test_unix(void **state)
{
    char path[108];
    struct tn_addr a;
    struct tn_listener *l;
    struct stat st;
    int fd, err = 0;

    reset_seen();
    snprintf(path, sizeof(path), "/tmp/tn-test-conn-%d.sock", (int)getpid());
    nu_addr_unix(&a, path);
    /* a stale socket file left by a dead process */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a.sa, a.len), 0);
    close(fd);
    assert_int_equal(stat(path, &st), 0);
    l = tn_listen(&a, NULL, accept_echo, NULL, &err);
    assert_non_null(l);
    /* a second listener on a live socket is refused */
    assert_null(tn_listen(&a, NULL, accept_echo, NULL, &err));
    assert_int_equal(err, -EADDRINUSE);
    echo_once(&a, "unix");
    tn_listener_close(l);
    assert_int_not_equal(stat(path, &st), 0);
}

/* A listener closed while a connection is open: the connection lives on. */
static void test_listener_close_keeps_conns(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    char buf[8];
    int fd, fd2, eof;

    reset_seen();
    l = listen_on(NULL, NULL, &a);
    fd = nu_connect(&a);
    assert_true(nu_until(accepted_n, (void *)1, 2000));
    assert_int_equal(seen.accepted, 1);
    tn_listener_close(l);
    assert_int_equal(nu_send_str(fd, "still"), 0);
    assert_int_equal(nu_recv(fd, buf, 5, 2000, &eof), 5);
    fd2 = nu_connect(&a);
    assert_true(fd2 < 0 || nu_recv(fd2, buf, 1, 500, &eof) == 0);
    close(fd);
    if (fd2 >= 0)
        close(fd2);
    assert_true(nu_until(conns_zero, NULL, 2000));
}

/* Application back-pressure: nothing is delivered while paused. */
static struct tn_conn *paused_conn;

static void pausing_read(struct tn_conn *c)
{
    size_t n = tn_buf_rlen(&c->in);

    memcpy(seen.reply + seen.reply_len, tn_buf_rptr(&c->in), n);
    seen.reply_len += n;
    tn_buf_consume(&c->in, n);
    if (memchr(seen.reply, 'P', seen.reply_len) && !paused_conn) {
        paused_conn = c;
        tn_conn_pause_read(c);
    }
}

static const struct tn_conn_handler pausing_handler = {pausing_read, NULL, NULL, note_close};

static int got_paused(void *ud)
{
    return paused_conn != NULL;
}

static int got_def(void *ud)
{
    return seen.reply_len >= 7;
}

static void test_pause_resume(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    int fd;

    reset_seen();
    paused_conn = NULL;
    l = listen_on(NULL, &pausing_handler, &a);
    fd = nu_connect(&a);
    assert_int_equal(nu_send_str(fd, "abcP"), 0);
    assert_true(nu_until(got_paused, NULL, 2000));
    assert_int_equal(nu_send_str(fd, "def"), 0);
    nu_spin(50);
    assert_int_equal(seen.reply_len, 4);
    tn_conn_resume_read(paused_conn);
    assert_true(nu_until(got_def, NULL, 1000));
    assert_memory_equal(seen.reply, "abcPdef", 7);
    close(fd);
    assert_true(nu_until(conns_zero, NULL, 2000));
    tn_listener_close(l);
}

/* A peer that resets the connection in the middle of a large answer. */
static void big_read(struct tn_conn *c)
{
    static char block[1 << 20];

    tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
    tn_conn_write(c, block, sizeof(block));
}

static const struct tn_conn_handler big_handler = {big_read, NULL, NULL, note_close};

static void test_peer_reset(void **state)
{
    struct tn_listen_opts o = {.lim = {.out_high = 4 << 20, .out_max = 64 << 20}};
    struct linger lg = {1, 0};
    struct tn_addr a;
    struct tn_listener *l;
    char buf[1000];
    int fd, eof, i;

    reset_seen();
    l = listen_on(&o, &big_handler, &a);
    for (i = 0; i < 5; i++) {
        fd = nu_connect(&a);
        assert_int_equal(nu_send_str(fd, "go"), 0);
        nu_recv(fd, buf, sizeof(buf), 500, &eof);
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
        close(fd);
    }
    assert_true(nu_until(conns_zero, NULL, 2000));
    assert_int_equal(seen.closed, 5);
    assert_true(seen.close_reason == -ECONNRESET || seen.close_reason == -EPIPE ||
                seen.close_reason == TN_EPEER);
    tn_listener_close(l);
}

/* Out of descriptors: accept backs off instead of spinning, and picks up
 * again once descriptors are free. */
static void test_accept_emfile(void **state)
{
    struct rlimit old, low;
    struct tn_addr a;
    struct tn_listener *l;
    char buf[8];
    int fd, spare, eof;

    /* valgrind virtualises RLIMIT_NOFILE (it keeps descriptors of its
     * own): there the accept never comes back after the limit is restored */
    if (RUNNING_ON_VALGRIND)
        skip();
    reset_seen();
    l = listen_on(NULL, NULL, &a);
    spare = dup(0); /* the lowest free descriptor number */
    assert_true(spare >= 0);
    close(spare);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = (rlim_t)spare + 1; /* room for the client socket only */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    fd = nu_connect(&a);
    assert_true(fd >= 0);
    assert_int_equal(nu_send_str(fd, "x"), 0);
    nu_spin(50);
    assert_int_equal(seen.accepted, 0);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    /* accepted after the back-off, and served */
    assert_int_equal(nu_recv(fd, buf, 1, 2000, &eof), 1);
    assert_int_equal(seen.accepted, 1);
    close(fd);
    assert_true(nu_until(conns_zero, NULL, 2000));
    tn_listener_close(l);
}

static void test_ipv6(void **state)
{
    struct tn_addr a;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a.sa;
    struct tn_listener *l;
    int err = 0;

    reset_seen();
    memset(&a, 0, sizeof(a));
    in6->sin6_family = AF_INET6;
    in6->sin6_addr = in6addr_loopback;
    a.len = sizeof(*in6);
    snprintf(a.text, sizeof(a.text), "[::1]:0");
    l = tn_listen(&a, NULL, accept_echo, NULL, &err);
    if (!l) {
        /* a host without IPv6 loopback */
        assert_true(err == -EADDRNOTAVAIL || err == -EAFNOSUPPORT);
        skip();
    }
    assert_true(strncmp(tn_listener_addr(l), "[::1]:", 6) == 0);
    in6->sin6_port = htons((uint16_t)atoi(tn_listener_addr(l) + 6));
    echo_once(&a, "six");
    tn_listener_close(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo),
        cmocka_unit_test(test_process_limit),
        cmocka_unit_test(test_listener_limit),
        cmocka_unit_test(test_back_pressure),
        cmocka_unit_test(test_out_max),
        cmocka_unit_test(test_in_max),
        cmocka_unit_test(test_close_after_write),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_connect),
        cmocka_unit_test(test_unix),
        cmocka_unit_test(test_listener_close_keeps_conns),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_peer_reset),
        cmocka_unit_test(test_accept_emfile),
        cmocka_unit_test(test_ipv6),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
