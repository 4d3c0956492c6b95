/*
 * test_http.c -- the shared HTTP/1.1 server on the real loop over loopback:
 * routing, keep-alive, pipelining, limits and automatic answers, HEAD,
 * chunked bodies both ways, async handlers, upgrade, query helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core.h"
#include "netutil.h"

static struct tn_http_server *srv;
static struct tn_addr srv_addr;
static int aborted;
static struct tn_http_req *async_req;
static ev_timer async_timer;

/* ---- handlers ---------------------------------------------------------------- */

static int h_hello(struct tn_http_req *r, void *ud)
{
    tn_http_reply_str(r, 200, "text/plain", "hello\n");
    return TN_HTTP_DONE;
}

static int h_put_hello(struct tn_http_req *r, void *ud)
{
    tn_http_reply_str(r, 200, "text/plain", "put\n");
    return TN_HTTP_DONE;
}

static int h_echo(struct tn_http_req *r, void *ud)
{
    char len[32];

    snprintf(len, sizeof(len), "%zu", r->body_len);
    tn_http_add_header(r, "X-Body-Len", len);
    tn_http_add_header(r, "X-Bad", "a\r\nInjected: yes"); /* refused */
    tn_http_reply(r, 200, "application/octet-stream", r->body, r->body_len);
    return TN_HTTP_DONE;
}

/* Replies with the route that matched and the path it saw. */
static int h_path(struct tn_http_req *r, void *ud)
{
    char out[256];

    snprintf(out, sizeof(out), "%s %s", (const char *)ud, r->path);
    tn_http_reply_str(r, 200, "text/plain", out);
    return TN_HTTP_DONE;
}

static int h_args(struct tn_http_req *r, void *ud)
{
    char a[16], b[16], out[64];
    long na = tn_http_arg(r, "a", a, sizeof(a)), nb = tn_http_arg(r, "b", b, sizeof(b));

    snprintf(out, sizeof(out), "%ld:%s|%ld:%s", na, na >= 0 ? a : "", nb, nb >= 0 ? b : "");
    tn_http_reply_str(r, 200, "text/plain", out);
    return TN_HTTP_DONE;
}

static void async_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct tn_http_req *r = async_req;

    async_req = NULL;
    if (r)
        tn_http_reply_str(r, 200, "text/plain", "late\n");
}

static void async_abort(struct tn_http_req *r)
{
    aborted++;
    async_req = NULL;
    ev_timer_stop(tn_loop(), &async_timer);
}

static int h_async(struct tn_http_req *r, void *ud)
{
    async_req = r;
    r->on_abort = async_abort;
    ev_timer_init(&async_timer, async_fire, 0.05, 0.);
    ev_timer_start(tn_loop(), &async_timer);
    return TN_HTTP_ASYNC;
}

static int h_chunks(struct tn_http_req *r, void *ud)
{
    tn_http_chunk_start(r, 200, "text/plain");
    tn_http_chunk(r, "one,", 4);
    tn_http_chunk(r, "", 0); /* ignored: it would end the body */
    tn_http_chunk(r, "two,", 4);
    tn_http_chunk(r, "three", 5);
    tn_http_chunk_end(r);
    return TN_HTTP_DONE;
}

/* Held until the test answers it. */
static struct tn_http_req *held;

static int h_hold(struct tn_http_req *r, void *ud)
{
    held = r;
    return TN_HTTP_ASYNC;
}

/* Replies with two request headers (case-insensitive lookup). */
static int h_hdr(struct tn_http_req *r, void *ud)
{
    char out[128];
    const char *a = tn_http_header(r, "x-a"), *e = tn_http_header(r, "X-EMPTY");

    snprintf(out, sizeof(out), "%s|%s|%s|%zu", a ? a : "-", e ? e : "-", r->query ? r->query : "-",
             r->nheaders);
    tn_http_reply_str(r, 200, "text/plain", out);
    return TN_HTTP_DONE;
}

static int h_nothing(struct tn_http_req *r, void *ud)
{
    return TN_HTTP_DONE;
}

/* After the upgrade the connection echoes bytes in upper case. */
static void up_read(struct tn_conn *c)
{
    size_t i, n = tn_buf_rlen(&c->in);
    char *p = tn_buf_rptr(&c->in);

    for (i = 0; i < n; i++) {
        if (p[i] >= 'a' && p[i] <= 'z')
            p[i] = (char)(p[i] - 32);
    }
    tn_conn_write(c, p, n);
    tn_buf_consume(&c->in, n);
}

static const struct tn_conn_handler up_handler = {up_read, NULL, NULL, NULL};

static int h_upgrade(struct tn_http_req *r, void *ud)
{
    struct tn_conn *c = r->conn;

    const char *ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: upper\r\n\r\n";

    tn_conn_write(c, ok, strlen(ok));
    assert_ptr_equal(tn_http_upgrade(r, &up_handler, NULL), c);
    return TN_HTTP_DONE;
}

/* ---- fixture ------------------------------------------------------------------ */

static int setup(void **state)
{
    struct tn_http_limits *lim = calloc(1, sizeof(*lim));
    struct tn_addr a;
    int err = 0;

    lim->max_header_size = 1024;
    lim->max_body_size = 1000;
    lim->request_timeout = 300;
    lim->keepalive_timeout = 600;
    lim->max_pipeline = 4;
    nu_addr_loopback(&a, 0);
    srv = tn_http_server_create("test", &a, lim, &err);
    /* the server keeps its own copy of the limits */
    memset(lim, 0xff, sizeof(*lim));
    free(lim);
    assert_non_null(srv);
    nu_addr_parse(&srv_addr, tn_http_server_addr(srv));
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/hello", h_hello, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_PUT, "/hello", h_put_hello, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET | TN_HTTP_PUT, "/hello", h_hello, NULL),
                     TN_EEXIST);
    assert_int_equal(tn_http_route(srv, TN_HTTP_POST, "/echo", h_echo, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_ANY, "/items/*", h_path, "prefix"), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_ANY, "/items/deep/*", h_path, "longer"), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/items/special", h_path, "exact"), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/args", h_args, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/async", h_async, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/chunks", h_chunks, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/nothing", h_nothing, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/up", h_upgrade, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/hold", h_hold, NULL), 0);
    assert_int_equal(tn_http_route(srv, TN_HTTP_GET, "/hdr", h_hdr, NULL), 0);
    aborted = 0;
    held = NULL;
    return 0;
}

static int conns_zero(void *ud)
{
    return tn_conns_open() == 0;
}

static int teardown(void **state)
{
    tn_http_server_close(srv);
    tn_http_server_free(srv);
    srv = NULL;
    assert_true(nu_until(conns_zero, NULL, 2000));
    return 0;
}

/* ---- a small response reader -------------------------------------------------- */

struct resp {
    int status;
    char head[2048]; /* status line and headers */
    char body[8192];
    size_t body_len;
    int eof;
};

static const char *resp_header(const struct resp *rs, const char *name)
{
    static char val[256];
    const char *p = rs->head;
    size_t nlen = strlen(name);

    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1, *e;
            while (*v == ' ')
                v++;
            e = strstr(v, "\r\n");
            snprintf(val, sizeof(val), "%.*s", (int)(e ? e - v : (long)strlen(v)), v);
            return val;
        }
    }
    return NULL;
}

/* Pending bytes read past the end of the previous response. */
static char carry[16384];
static size_t carry_len;

static int fill(int fd, int *eof)
{
    size_t n;

    if (carry_len >= sizeof(carry) - 1)
        return -1;
    n = nu_recv(fd, carry + carry_len, 1, 2000, eof);
    if (n == 0)
        return -1;
    carry_len += n;
    carry[carry_len] = '\0';
    return 0;
}

static void take(char *out, size_t n)
{
    if (out)
        memcpy(out, carry, n);
    memmove(carry, carry + n, carry_len - n);
    carry_len -= n;
    carry[carry_len] = '\0';
}

static void read_chunked(int fd, struct resp *rs)
{
    for (;;) {
        char *crlf;
        size_t size;
        while (!(crlf = strstr(carry, "\r\n")))
            assert_int_equal(fill(fd, &rs->eof), 0);
        size = strtoul(carry, NULL, 16);
        take(NULL, (size_t)(crlf - carry) + 2);
        while (carry_len < size + 2)
            assert_int_equal(fill(fd, &rs->eof), 0);
        take(rs->body + rs->body_len, size);
        rs->body_len += size;
        take(NULL, 2);
        if (size == 0)
            return;
    }
}

/* Read one response; head_only for answers to HEAD. */
static int read_resp(int fd, struct resp *rs, int head_only)
{
    char *end;
    const char *cl, *te;
    size_t hlen;

    memset(rs, 0, sizeof(*rs));
    while (!(end = strstr(carry, "\r\n\r\n"))) {
        if (fill(fd, &rs->eof) != 0)
            return -1;
    }
    hlen = (size_t)(end - carry) + 4;
    assert_true(hlen < sizeof(rs->head));
    take(rs->head, hlen);
    rs->status = atoi(rs->head + 9);
    cl = resp_header(rs, "Content-Length");
    te = resp_header(rs, "Transfer-Encoding");
    if (head_only)
        return 0;
    if (te && strcmp(te, "chunked") == 0) {
        read_chunked(fd, rs);
        return 0;
    }
    rs->body_len = cl ? strtoul(cl, NULL, 10) : 0;
    assert_true(rs->body_len < sizeof(rs->body));
    while (carry_len < rs->body_len)
        assert_int_equal(fill(fd, &rs->eof), 0);
    take(rs->body, rs->body_len);
    rs->body[rs->body_len] = '\0';
    return 0;
}

static int client(void)
{
    int fd = nu_connect(&srv_addr);

    assert_true(fd >= 0);
    carry_len = 0;
    carry[0] = '\0';
    return fd;
}

/* Is the peer gone (EOF within ms, nothing else pending)? */
static int closed_by_server(int fd, int ms)
{
    char b[64];
    int eof = 0;

    nu_recv(fd, b, sizeof(b), ms, &eof);
    return eof;
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_keepalive(void **state)
{
    struct resp rs;
    int fd = client(), i;

    for (i = 0; i < 3; i++) {
        assert_int_equal(nu_send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
        assert_int_equal(read_resp(fd, &rs, 0), 0);
        assert_int_equal(rs.status, 200);
        assert_string_equal(rs.body, "hello\n");
        assert_string_equal(resp_header(&rs, "Content-Type"), "text/plain");
        assert_null(resp_header(&rs, "Connection"));
    }
    assert_int_equal(tn_conns_open(), 1);
    /* same path, other method, other handler */
    assert_int_equal(nu_send_str(fd, "PUT /hello HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "put\n");
    assert_int_equal(tn_conns_open(), 1);
    close(fd);
}

static void test_pipeline_order(void **state)
{
    struct resp rs;
    int fd = client();
    const char *reqs = "GET /items/a HTTP/1.1\r\n\r\n"
                       "GET /async HTTP/1.1\r\n\r\n"
                       "GET /hello HTTP/1.1\r\n\r\n"
                       "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                       "GET /items/special HTTP/1.1\r\n\r\n"
                       "GET /items/deep/x HTTP/1.1\r\n\r\n"
                       "GET /chunks HTTP/1.1\r\n\r\n";

    /* seven requests in one write, more than max_pipeline (4) */
    assert_int_equal(nu_send_str(fd, reqs), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "prefix /items/a");
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "late\n"); /* the async one still comes second */
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "hello\n");
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "abc");
    assert_string_equal(resp_header(&rs, "X-Body-Len"), "3");
    assert_null(resp_header(&rs, "X-Bad"));
    assert_null(resp_header(&rs, "Injected"));
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "exact /items/special");
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "longer /items/deep/x");
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(resp_header(&rs, "Transfer-Encoding"), "chunked");
    assert_int_equal(rs.body_len, 13);
    assert_memory_equal(rs.body, "one,two,three", 13);
    assert_int_equal(carry_len, 0);
    assert_false(closed_by_server(fd, 50));
    close(fd);
}

static void test_bad_request(void **state)
{
    struct resp rs;
    int fd = client();

    assert_int_equal(nu_send_str(fd, "\x01\x02garbage here\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 400);
    assert_string_equal(resp_header(&rs, "Connection"), "close");
    assert_true(closed_by_server(fd, 1000));
    close(fd);
}

static void test_404_405(void **state)
{
    struct resp rs;
    int fd = client();

    assert_int_equal(nu_send_str(fd, "GET /nope HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 404);
    /* the connection stays usable */
    assert_int_equal(nu_send_str(fd, "DELETE /hello HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 405);
    assert_string_equal(resp_header(&rs, "Allow"), "GET, PUT, HEAD");
    assert_int_equal(nu_send_str(fd, "GET /hello/more HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 404); /* exact routes do not match longer paths */
    assert_int_equal(nu_send_str(fd, "GET /nothing HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 500);
    assert_false(closed_by_server(fd, 50));
    close(fd);
}

static void test_413_content_length(void **state)
{
    struct resp rs;
    int fd = client();

    /* answered from the headers alone: the body is never sent */
    assert_int_equal(nu_send_str(fd, "POST /echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 413);
    assert_true(closed_by_server(fd, 1000));
    close(fd);
}

static void test_chunked_body(void **state)
{
    struct resp rs;
    char big[700];
    int fd = client();

    assert_int_equal(nu_send_str(fd, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
                     0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(rs.body, "hello world");
    /* two chunks of 700 pass max_body_size (1000) */
    memset(big, 'b', sizeof(big));
    assert_int_equal(nu_send_str(fd, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     "2bc\r\n"),
                     0);
    assert_int_equal(nu_send(fd, big, sizeof(big), 1000), 0);
    assert_int_equal(nu_send_str(fd, "\r\n2bc\r\n"), 0);
    nu_send(fd, big, sizeof(big), 1000);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 413);
    assert_true(closed_by_server(fd, 1000));
    close(fd);
}

static void test_431(void **state)
{
    struct resp rs;
    char req[3000];
    int fd = client();

    snprintf(req, sizeof(req), "GET /hello HTTP/1.1\r\nX-Big: %02000d\r\n\r\n", 7);
    assert_int_equal(nu_send_str(fd, req), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 431);
    assert_true(closed_by_server(fd, 1000));
    close(fd);
}

static void test_408(void **state)
{
    struct resp rs;
    int fd = client();
    int64_t start;

    assert_int_equal(nu_send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n"), 0);
    ev_now_update(tn_loop());
    start = tn_now_ms();
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 408);
    assert_true(tn_now_ms() - start >= 200);
    assert_true(closed_by_server(fd, 1000));
    close(fd);
}

static void test_http10(void **state)
{
    struct resp rs;
    int fd = client();

    assert_int_equal(nu_send_str(fd, "GET /hello HTTP/1.0\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(rs.body, "hello\n");
    assert_string_equal(resp_header(&rs, "Connection"), "close");
    assert_true(closed_by_server(fd, 1000));
    close(fd);
    /* 1.0 asking for keep-alive gets it */
    fd = client();
    assert_int_equal(nu_send_str(fd, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(resp_header(&rs, "Connection"), "keep-alive");
    assert_int_equal(nu_send_str(fd, "GET /chunks HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    /* no chunked encoding for 1.0: the body ends with the connection */
    nu_recv_all(fd, rs.body, sizeof(rs.body), 2000, &rs.eof);
    assert_true(rs.eof);
    assert_null(strstr(rs.body, "Transfer-Encoding"));
    assert_non_null(strstr(rs.body, "\r\n\r\none,two,three"));
    close(fd);
}

static void test_head(void **state)
{
    struct resp rs;
    int fd = client();

    /* the HEAD answer has headers only: the GET answer follows at once */
    assert_int_equal(nu_send_str(fd, "HEAD /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 1), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(resp_header(&rs, "Content-Length"), "6");
    while (!strstr(carry, "\r\n\r\nhello\n"))
        assert_int_equal(fill(fd, &rs.eof), 0);
    assert_true(strncmp(carry, "HTTP/1.1 200", 12) == 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "hello\n");
    close(fd);
}

static void test_keepalive_timeout(void **state)
{
    struct resp rs;
    int fd = client();

    assert_int_equal(nu_send_str(fd, "GET /hello HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    /* idle past keepalive_timeout (600 ms): closed without an answer */
    assert_false(closed_by_server(fd, 300));
    assert_true(closed_by_server(fd, 1500));
    close(fd);
}

static int was_aborted(void *ud)
{
    return aborted > 0;
}

static int async_pending(void *ud)
{
    return async_req != NULL;
}

static void test_async_abort(void **state)
{
    int fd = client();

    assert_int_equal(nu_send_str(fd, "GET /async HTTP/1.1\r\n\r\n"), 0);
    assert_true(nu_until(async_pending, NULL, 2000));
    close(fd);
    assert_true(nu_until(was_aborted, NULL, 1000));
    assert_null(async_req);
}

static void test_args(void **state)
{
    struct resp rs;
    char out[8];
    int fd = client();

    assert_int_equal(nu_send_str(fd, "GET /args?x=1&b=two+words%21&a=%41%42 HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "2:AB|10:two words!");
    assert_int_equal(nu_send_str(fd, "GET /args HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "-1:|-1:");
    /* a long query: the request's text buffer grows while it is split */
    {
        char req[700];
        snprintf(req, sizeof(req), "GET /args?pad=%0400d&a=Z HTTP/1.1\r\n\r\n", 0);
        assert_int_equal(nu_send_str(fd, req), 0);
        assert_int_equal(read_resp(fd, &rs, 0), 0);
        assert_string_equal(rs.body, "1:Z|-1:");
    }
    /* the decoded path: %2F-style escapes are decoded, the query is not part of it */
    assert_int_equal(nu_send_str(fd, "GET /items/a%20b?q=1 HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "prefix /items/a b");
    close(fd);

    assert_int_equal(tn_http_query_get("k=v&empty=&flag&long=abcdefghijk", "k", out, sizeof(out)),
                     1);
    assert_string_equal(out, "v");
    assert_int_equal(tn_http_query_get("k=v&empty=&flag", "empty", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(tn_http_query_get("k=v&empty=&flag", "flag", out, sizeof(out)), 0);
    assert_int_equal(tn_http_query_get("long=abcdefghijk", "long", out, sizeof(out)), 11);
    assert_string_equal(out, "abcdefg"); /* truncated to outsz - 1 */
    assert_int_equal(tn_http_query_get("a%20b=%zz", "a b", out, sizeof(out)), 3);
    assert_string_equal(out, "%zz"); /* an invalid escape stays */
    assert_int_equal(tn_http_query_get("k=v", "missing", out, sizeof(out)), -1);
    assert_int_equal(tn_http_query_get(NULL, "k", out, sizeof(out)), -1);
    assert_string_equal(tn_http_status_text(431), "Request Header Fields Too Large");
}

static void test_upgrade(void **state)
{
    char buf[256];
    int fd = client(), eof;
    size_t n;

    /* bytes of the new protocol in the same packet as the request */
    assert_int_equal(nu_send_str(fd, "GET /up HTTP/1.1\r\nConnection: Upgrade\r\n"
                                     "Upgrade: upper\r\n\r\nearly"),
                     0);
    n = nu_recv_until(fd, buf, sizeof(buf), "EARLY", 2000, &eof);
    assert_true(n > 0);
    assert_non_null(strstr(buf, "HTTP/1.1 101 "));
    assert_non_null(strstr(buf, "\r\n\r\nEARLY"));
    assert_int_equal(nu_send_str(fd, "more"), 0);
    assert_int_equal(nu_recv(fd, buf, 4, 2000, &eof), 4);
    assert_memory_equal(buf, "MORE", 4);
    close(fd);
}

static void test_server_close(void **state)
{
    struct resp rs;
    int fd = client();

    assert_int_equal(nu_send_str(fd, "GET /hello HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    /* an idle keep-alive connection is closed with the server */
    tn_http_server_close(srv);
    assert_true(closed_by_server(fd, 1000));
    close(fd);
    fd = nu_connect(&srv_addr);
    assert_true(fd < 0 || closed_by_server(fd, 500));
    if (fd >= 0)
        close(fd);
}

/* The requests counter, read through the stats text rendering. */
static long requests_seen(void)
{
    struct tn_buf b = TN_BUF_INIT;
    const char *p;
    long n = -1;

    assert_int_equal(tn_stats_format(&b, TN_STATS_TEXT, NULL), 0);
    tn_buf_append(&b, "", 1);
    p = strstr(tn_buf_rptr(&b), "ternd_http_requests_total ");
    if (p)
        n = atol(p + strlen("ternd_http_requests_total "));
    tn_buf_free(&b);
    return n;
}

static int is_held(void *ud)
{
    return held != NULL;
}

static void test_pipeline_limit(void **state)
{
    struct resp rs;
    char reqs[2048] = "GET /hold HTTP/1.1\r\n\r\n";
    long before = requests_seen();
    int fd = client(), i;

    for (i = 0; i < 9; i++)
        strcat(reqs, "GET /hello HTTP/1.1\r\n\r\n");
    assert_int_equal(nu_send_str(fd, reqs), 0);
    assert_true(nu_until(is_held, NULL, 1000));
    nu_spin(50);
    /* the held request and three behind it: max_pipeline (4) parsed */
    assert_int_equal(requests_seen() - before, 4);
    tn_http_reply_str(held, 200, "text/plain", "held\n");
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_string_equal(rs.body, "held\n");
    for (i = 0; i < 9; i++) {
        assert_int_equal(read_resp(fd, &rs, 0), 0);
        assert_string_equal(rs.body, "hello\n");
    }
    assert_int_equal(requests_seen() - before, 10);
    close(fd);
}

/* A request arriving a byte at a time: every parser callback sees
 * fragments. */
static void test_fragmented(void **state)
{
    const char *req = "GET /hdr?x=1&y HTTP/1.1\r\nHost: h\r\nX-A: value one\r\n"
                      "X-Empty:\r\nX-Last: z\r\n\r\n";
    struct resp rs;
    int fd = client();
    size_t i;

    for (i = 0; req[i]; i++)
        assert_int_equal(nu_send(fd, req + i, 1, 1000), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(rs.body, "value one||x=1&y|4");
    close(fd);
}

static void test_expect_continue(void **state)
{
    struct resp rs;
    int fd = client();

    assert_int_equal(nu_send_str(fd, "POST /echo HTTP/1.1\r\nContent-Length: 4\r\n"
                                     "Expect: 100-continue\r\n\r\n"),
                     0);
    assert_int_equal(read_resp(fd, &rs, 1), 0);
    assert_int_equal(rs.status, 100);
    assert_int_equal(nu_send_str(fd, "body"), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(rs.body, "body");
    close(fd);
}

/* Trailers after a chunked body are read and dropped: the request's path
 * and headers, which point into the same text, stay valid however long
 * the trailers are (the fuzzer found them growing the buffer under the
 * handler's feet); trailers still count against max_header_size. */
static void test_chunked_trailers(void **state)
{
    struct resp rs;
    char trailer[600], req[1536];
    int fd = client();

    memset(trailer, 't', sizeof(trailer) - 1);
    trailer[sizeof(trailer) - 1] = '\0';
    snprintf(req, sizeof(req),
             "POST /items/with-trailers HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
             "3\r\nabc\r\n0\r\nX-Trailer: %s\r\nX-More: %s\r\n\r\n",
             trailer + 300, trailer + 300);
    assert_int_equal(nu_send_str(fd, req), 0);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(rs.body, "prefix /items/with-trailers");
    snprintf(req, sizeof(req),
             "POST /items/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
             "3\r\nabc\r\n0\r\nX-Trailer: %s\r\nX-More: %s\r\n\r\n",
             trailer, trailer);
    nu_send(fd, req, strlen(req), 1000);
    assert_int_equal(read_resp(fd, &rs, 0), 0);
    assert_int_equal(rs.status, 431);
    assert_true(closed_by_server(fd, 1000));
    close(fd);
}

/* Mangled requests never crash the server; every connection ends. */
static void test_garbage(void **state)
{
    const char *base = "POST /echo?a=%41 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       "Content-Type: a\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    char req[256], buf[512];
    unsigned seed = 12345;
    int i, j, eof;

    for (i = 0; i < 200; i++) {
        int fd = client();
        size_t n = strlen(base);
        memcpy(req, base, n);
        for (j = 0; j < 1 + i % 6; j++) {
            seed = seed * 1103515245u + 12345u;
            req[(seed >> 8) % n] = (char)(seed >> 16);
        }
        nu_send(fd, req, n - (i % 7), 500);
        if (i % 3 == 0)
            nu_recv_all(fd, buf, sizeof(buf), 20, &eof);
        close(fd);
    }
    assert_true(nu_until(conns_zero, NULL, 3000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipeline_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_404_405, setup, teardown),
        cmocka_unit_test_setup_teardown(test_413_content_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_trailers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_431, setup, teardown),
        cmocka_unit_test_setup_teardown(test_408, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipeline_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fragmented, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
