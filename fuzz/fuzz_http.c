/*
 * fuzz_http.c -- libFuzzer target: the core's HTTP/1.1 server
 * (server/http.c over server/conn.c) with small limits and routes that use
 * every reply style: whole, echoed body, chunked, prefix routes reading
 * headers and query arguments, and a WebSocket-style upgrade to an echo
 * handler. One input is one client connection (pipelining included).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fz.h"

static char sock[512];

static int h_root(struct tn_http_req *r, void *ud)
{
    tn_http_reply_str(r, 200, "text/plain", "ok\n");
    return TN_HTTP_DONE;
}

static int h_echo(struct tn_http_req *r, void *ud)
{
    const char *ct = tn_http_header(r, "Content-Type");

    tn_http_add_header(r, "X-Echo", ct ? ct : "none");
    tn_http_reply(r, 200, "application/octet-stream", r->body, r->body_len);
    return TN_HTTP_DONE;
}

static int h_chunk(struct tn_http_req *r, void *ud)
{
    tn_http_chunk_start(r, 200, "text/plain");
    tn_http_chunk(r, r->path, strlen(r->path));
    if (r->query)
        tn_http_chunk(r, r->query, strlen(r->query));
    if (r->body_len)
        tn_http_chunk(r, r->body, r->body_len);
    tn_http_chunk_end(r);
    return TN_HTTP_DONE;
}

/* Prefix route: query arguments, a form body, header lookups. */
static int h_prefix(struct tn_http_req *r, void *ud)
{
    char a[64], b[8], out[256];
    long na = tn_http_arg(r, "a", a, sizeof(a));
    long nb = r->body ? tn_http_query_get(r->body, "b", b, sizeof(b)) : -1;

    if (tn_http_header(r, "X-Silent"))
        return TN_HTTP_DONE; /* no reply: the server answers 500 */
    snprintf(out, sizeof(out), "%s %ld %s %ld %zu", r->path, na, na >= 0 ? a : "-", nb,
             r->nheaders);
    tn_http_reply_str(r, na >= 0 ? 200 : 404, "text/plain", out);
    return TN_HTTP_DONE;
}

/* After the upgrade: echo what arrives, stop at a 'q'. */
static void up_read(struct tn_conn *c)
{
    size_t n = tn_buf_rlen(&c->in);
    const char *q = memchr(tn_buf_rptr(&c->in), 'q', n);

    tn_conn_write(c, tn_buf_rptr(&c->in), q ? (size_t)(q - tn_buf_rptr(&c->in)) : n);
    tn_buf_consume(&c->in, n);
    if (q)
        tn_conn_close_after_write(c);
}

static const struct tn_conn_handler up_handler = {up_read, NULL, NULL, NULL};

static int h_upgrade(struct tn_http_req *r, void *ud)
{
    const char *up = tn_http_header(r, "Upgrade");

    if (!up || strcmp(up, "echo") != 0) {
        tn_http_reply_str(r, 400, "text/plain", "no upgrade\n");
        return TN_HTTP_DONE;
    }
    tn_http_upgrade(r, &up_handler, NULL);
    return TN_HTTP_DONE;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct tn_http_limits lim = {0};
    struct tn_http_server *s;
    struct tn_addr addr;
    char text[600], err[128];
    int rc = 0;

    fz_init();
    snprintf(sock, sizeof(sock), "%s", fz_path("http.sock"));
    snprintf(text, sizeof(text), "unix:%s", sock);
    if (tn_parse_addr(text, &addr, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz: %s: %s\n", text, err);
        exit(1);
    }
    lim.max_header_size = 1024;
    lim.max_body_size = 4096;
    lim.max_pipeline = 4;
    if (!(s = tn_http_server_create("fuzz.http", &addr, &lim, &rc))) {
        fprintf(stderr, "fuzz: http server: %s\n", tn_strerror(rc));
        exit(1);
    }
    rc |= tn_http_route(s, TN_HTTP_GET, "/", h_root, NULL);
    rc |= tn_http_route(s, TN_HTTP_POST | TN_HTTP_PUT, "/echo", h_echo, NULL);
    rc |= tn_http_route(s, TN_HTTP_ANY, "/chunk", h_chunk, NULL);
    rc |= tn_http_route(s, TN_HTTP_GET | TN_HTTP_POST | TN_HTTP_DELETE, "/p/*", h_prefix, NULL);
    rc |= tn_http_route(s, TN_HTTP_GET, "/ws", h_upgrade, NULL);
    if (rc != 0) {
        fprintf(stderr, "fuzz: routes: %s\n", tn_strerror(rc));
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_feed(sock, data, size);
    return 0;
}
