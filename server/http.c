/*
 * http.c -- the shared HTTP/1.1 server (see ternd/http.h) on top of conn.c,
 * parsing with http-parser. Requests of a connection are parsed ahead (at
 * most max_pipeline) into a queue and run one at a time in order, so the
 * answers leave in request order without buffering replies.
 */
#include <ev.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core.h"

#define HTTP_WHO "http"
#define HTTP_SERVER_HEADER "Server: ternd/" TN_VERSION_STRING "\r\n"
#define REQ_KEEP (16 * 1024) /* buffer capacity a reused request keeps */

struct route {
    char *path; /* without the trailing '*' of a prefix route */
    size_t len;
    int prefix;
    unsigned methods;
    tn_http_handler_pt h;
    void *ud;
};

struct hconn;

struct tn_http_server {
    char name[64];
    struct tn_http_limits lim; /* a copy: the caller's config may go away */
    struct tn_listener *l;
    struct route *routes;
    size_t nroutes;
    struct hconn *conns; /* every open connection */
    size_t nconns;
    int closed; /* tn_http_server_close was called */
    int freed;  /* tn_http_server_free was called; released with the last conn */
};

enum { RQ_PARSING, RQ_READY, RQ_RUNNING, RQ_DONE };
enum { CB_NONE, CB_FIELD, CB_VALUE, CB_TRAILER };

struct hreq {
    struct tn_http_req r; /* first: the public part */
    struct hconn *hc;
    struct hreq *next;  /* the connection's queue */
    int state;          /* RQ_* */
    int error;          /* automatic answer (400, 408, 413, 431) or 0 */
    int last_cb;        /* CB_*: where header bytes go (CB_TRAILER: nowhere) */
    int reply_started;  /* the head of the answer went out */
    int streaming;      /* a chunked reply is in progress */
    int chunked;        /* it is chunk-framed (not for HTTP/1.0) */
    size_t url_len;     /* the URL is text[0 .. url_len) */
    size_t head_bytes;  /* request line + headers so far */
    struct tn_buf text; /* URL, header names and values, path, query */
    struct tn_buf hoff; /* size_t offsets into text: name, value, name, ... */
    struct tn_buf hdrs; /* struct tn_http_header[], built at headers end */
    struct tn_buf body;
    struct tn_buf rhdr; /* reply headers added by the handler */
};

struct hconn {
    struct tn_conn *c;
    struct tn_http_server *s;
    struct hconn *prev, *next;
    http_parser parser;
    ev_timer timer;
    struct hreq *cur;         /* being parsed */
    struct hreq *head, *tail; /* parsed, answered in this order */
    size_t nq;
    struct hreq *running;    /* inside its handler right now */
    struct hreq *spare;      /* one request kept for reuse */
    struct tn_buf out;       /* reply head scratch */
    unsigned busy : 1;       /* inside process(); defer re-entry */
    unsigned again : 1;      /* process() must loop once more */
    unsigned stop_parse : 1; /* no more requests on this connection */
    unsigned pipe_full : 1;  /* parser paused: the queue is full */
    unsigned upgraded : 1;   /* the connection was handed over */
};

static const struct http_parser_settings parser_settings;
static uint32_t parser_max_header; /* the global limit of http-parser */

TN_STAT_DECL(st_requests, "ternd_http_requests_total", TN_STAT_COUNTER, "HTTP requests received");
TN_STAT_DECL(st_responses, "ternd_http_responses_total", TN_STAT_COUNTER, "HTTP answers sent");
TN_STAT_DECL(st_auto, "ternd_http_auto_responses_total", TN_STAT_COUNTER,
             "HTTP answers made by the server itself (400, 404, 405, 408, 413, 431, 500)");

static void process(struct hconn *hc);
static void hc_free(struct hconn *hc);
static void server_release(struct tn_http_server *s);

/* ---- small helpers ------------------------------------------------------- */

static int method_bit(unsigned m)
{
    switch (m) {
    case HTTP_GET:
        return TN_HTTP_GET;
    case HTTP_POST:
        return TN_HTTP_POST;
    case HTTP_PUT:
        return TN_HTTP_PUT;
    case HTTP_DELETE:
        return TN_HTTP_DELETE;
    case HTTP_HEAD:
        return TN_HTTP_HEAD;
    case HTTP_OPTIONS:
        return TN_HTTP_OPTIONS;
    case HTTP_PATCH:
        return TN_HTTP_PATCH;
    default:
        return 0;
    }
}

static const struct {
    int status;
    const char *text;
} status_texts[] = {
    {100, "Continue"},
    {101, "Switching Protocols"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {413, "Payload Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {416, "Range Not Satisfiable"},
    {422, "Unprocessable Entity"},
    {426, "Upgrade Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

const char *tn_http_status_text(int status)
{
    size_t i;

    for (i = 0; i < sizeof(status_texts) / sizeof(status_texts[0]); i++) {
        if (status_texts[i].status == status)
            return status_texts[i].text;
    }
    return "Unknown";
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* %-decode s[0..n), '+' as a space when plus is set; invalid escapes stay
 * as they are. Writes at most cap bytes to out (no NUL) and returns the
 * whole decoded length. */
static size_t url_decode(const char *s, size_t n, char *out, size_t cap, int plus)
{
    size_t i, o = 0;

    for (i = 0; i < n; i++, o++) {
        int hi, lo;
        char ch = s[i];
        if (ch == '%' && i + 2 < n && (hi = hexval((unsigned char)s[i + 1])) >= 0 &&
            (lo = hexval((unsigned char)s[i + 2])) >= 0) {
            ch = (char)(hi << 4 | lo);
            i += 2;
        } else if (plus && ch == '+') {
            ch = ' ';
        }
        if (o < cap)
            out[o] = ch;
    }
    return o;
}

static void hc_arm(struct hconn *hc, int64_t ms)
{
    struct ev_loop *loop = tn_loop();

    ev_timer_stop(loop, &hc->timer);
    if (ms <= 0)
        return;
    ev_timer_set(&hc->timer, (double)ms / 1000.0, 0.);
    ev_timer_start(loop, &hc->timer);
}

/* ---- requests -------------------------------------------------------------- */

static struct hreq *req_new(struct hconn *hc)
{
    struct hreq *q = hc->spare;

    if (q) {
        hc->spare = NULL;
    } else {
        q = calloc(1, sizeof(*q));
        if (!q)
            return NULL;
    }
    q->hc = hc;
    q->state = RQ_PARSING;
    q->r.conn = hc->c;
    q->r.server = hc->s;
    q->r.body = "";
    return q;
}

/* Free a request, or keep it (buffers emptied) as the connection's spare. */
static void req_release(struct hconn *hc, struct hreq *q)
{
    struct tn_buf text = q->text, hoff = q->hoff, hdrs = q->hdrs, body = q->body, rhdr = q->rhdr;

    if (hc && !hc->spare) {
        tn_buf_shrink(&text, REQ_KEEP);
        tn_buf_shrink(&body, REQ_KEEP);
        memset(q, 0, sizeof(*q));
        q->text = text;
        q->hoff = hoff;
        q->hdrs = hdrs;
        q->body = body;
        q->rhdr = rhdr;
        tn_buf_reset(&q->text);
        tn_buf_reset(&q->hoff);
        tn_buf_reset(&q->hdrs);
        tn_buf_reset(&q->body);
        tn_buf_reset(&q->rhdr);
        hc->spare = q;
        return;
    }
    tn_buf_free(&text);
    tn_buf_free(&hoff);
    tn_buf_free(&hdrs);
    tn_buf_free(&body);
    tn_buf_free(&rhdr);
    free(q);
}

static void queue_push(struct hconn *hc, struct hreq *q)
{
    q->next = NULL;
    if (hc->tail)
        hc->tail->next = q;
    else
        hc->head = q;
    hc->tail = q;
    hc->nq++;
}

static void queue_pop(struct hconn *hc)
{
    struct hreq *q = hc->head;

    hc->head = q->next;
    if (!hc->head)
        hc->tail = NULL;
    q->next = NULL;
    hc->nq--;
}

/* ---- parser callbacks ------------------------------------------------------- */

/* Count header bytes against max_header_size (431 past it). */
static int head_grow(struct hreq *q, size_t n)
{
    q->head_bytes += n;
    if (q->head_bytes > q->hc->s->lim.max_header_size) {
        q->error = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct hconn *hc = p->data;

    hc->cur = req_new(hc);
    if (!hc->cur)
        return -1;
    hc_arm(hc, hc->s->lim.request_timeout);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    struct hreq *q = ((struct hconn *)p->data)->cur;

    if (head_grow(q, n) != 0 || tn_buf_append(&q->text, at, n) != 0)
        return -1;
    q->url_len += n;
    return 0;
}

static int text_nul(struct hreq *q)
{
    return tn_buf_append(&q->text, "", 1);
}

static int push_offset(struct hreq *q)
{
    size_t off = q->text.len;
    return tn_buf_append(&q->hoff, &off, sizeof(off));
}

/* End what was being collected: the URL, a value, or a name whose value
 * was empty (http-parser then sends no value bytes). */
static int end_item(struct hreq *q)
{
    if (q->last_cb == CB_FIELD && (text_nul(q) != 0 || push_offset(q) != 0))
        return -1;
    return text_nul(q);
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct hreq *q = ((struct hconn *)p->data)->cur;

    /* Trailers of a chunked body: the public fields already point into
     * text, which must not grow (move) now; they are counted and dropped. */
    if (q->last_cb == CB_TRAILER)
        return head_grow(q, n + 4);
    /* 4 bytes for ": " and CRLF, so many tiny headers count too. */
    if (head_grow(q, n + (q->last_cb != CB_FIELD ? 4 : 0)) != 0)
        return -1;
    if (q->last_cb != CB_FIELD) {
        if (end_item(q) != 0 || push_offset(q) != 0)
            return -1;
        q->last_cb = CB_FIELD;
    }
    return tn_buf_append(&q->text, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct hreq *q = ((struct hconn *)p->data)->cur;

    if (head_grow(q, n) != 0)
        return -1;
    if (q->last_cb == CB_TRAILER)
        return 0;
    if (q->last_cb != CB_VALUE) {
        if (text_nul(q) != 0 || push_offset(q) != 0)
            return -1;
        q->last_cb = CB_VALUE;
    }
    return tn_buf_append(&q->text, at, n);
}

/* Split the URL into a decoded path and the raw query (appended to text;
 * offsets returned). 0, or -1 for a URL that cannot be served. */
static int split_url(struct hreq *q, int is_connect, size_t *path_off, size_t *query_off)
{
    struct http_parser_url u;
    const char *url;
    size_t plen = 0, poff = 0;

    *query_off = (size_t)-1;
    http_parser_url_init(&u);
    url = q->text.data;
    if (q->url_len == 1 && url[0] == '*') {
        poff = 0;
        plen = 1;
    } else {
        if (http_parser_parse_url(url, q->url_len, is_connect, &u) != 0)
            return -1;
        if (u.field_set & (1 << UF_PATH)) {
            poff = u.field_data[UF_PATH].off;
            plen = u.field_data[UF_PATH].len;
        }
    }
    if (tn_buf_reserve(&q->text, plen + 2) != 0)
        return -1;
    url = q->text.data; /* may have moved */
    *path_off = q->text.len;
    if (plen == 0) {
        q->text.data[q->text.len++] = '/';
    } else {
        size_t n = url_decode(url + poff, plen, tn_buf_wptr(&q->text), plen, 0);
        if (memchr(tn_buf_wptr(&q->text), '\0', n))
            return -1; /* an encoded NUL would cut the path short */
        q->text.len += n;
    }
    if (text_nul(q) != 0)
        return -1;
    if (u.field_set & (1 << UF_QUERY)) {
        size_t qlen = u.field_data[UF_QUERY].len;
        /* reserve first: the copy comes from the same buffer */
        if (tn_buf_reserve(&q->text, qlen + 1) != 0)
            return -1;
        *query_off = q->text.len;
        memcpy(tn_buf_wptr(&q->text), q->text.data + u.field_data[UF_QUERY].off, qlen);
        q->text.len += qlen;
        if (text_nul(q) != 0)
            return -1;
    }
    return 0;
}

/* Point the public fields into text, which no longer grows. */
static int finish_head(struct hreq *q, size_t path_off, size_t query_off)
{
    const size_t *off = (const size_t *)(const void *)q->hoff.data;
    size_t i, n = tn_buf_rlen(&q->hoff) / sizeof(size_t) / 2;
    struct tn_http_header *h;

    if (tn_buf_reserve(&q->hdrs, (n ? n : 1) * sizeof(*h)) != 0)
        return -1;
    h = (struct tn_http_header *)(void *)q->hdrs.data;
    for (i = 0; i < n; i++) {
        h[i].name = q->text.data + off[2 * i];
        h[i].value = q->text.data + off[2 * i + 1];
    }
    q->hdrs.len = n * sizeof(*h);
    q->r.headers = h;
    q->r.nheaders = n;
    q->r.path = q->text.data + path_off;
    q->r.query = query_off == (size_t)-1 ? NULL : q->text.data + query_off;
    return 0;
}

static void send_continue(struct hconn *hc, struct hreq *q)
{
    const char *expect = tn_http_header(&q->r, "Expect");

    /* Only when no earlier answer is still due, or it would come first. */
    if (expect && strcasecmp(expect, "100-continue") == 0 && q->r.http_minor >= 1 && hc->nq == 0)
        tn_conn_write(hc->c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

static int on_headers_complete(http_parser *p)
{
    struct hconn *hc = p->data;
    struct hreq *q = hc->cur;
    size_t path_off, query_off;

    if (end_item(q) != 0)
        return -1;
    q->last_cb = CB_TRAILER;
    if (split_url(q, p->method == HTTP_CONNECT, &path_off, &query_off) != 0 ||
        finish_head(q, path_off, query_off) != 0)
        return -1;
    q->r.method = method_bit(p->method);
    q->r.method_name = http_method_str(p->method);
    q->r.http_major = p->http_major;
    q->r.http_minor = p->http_minor;
    q->r.keep_alive = http_should_keep_alive(p) && !hc->s->closed;
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > hc->s->lim.max_body_size) {
        q->error = 413; /* refuse before the body is sent */
        return -1;
    }
    send_continue(hc, q);
    return 0;
}

static int on_chunk_header(http_parser *p)
{
    struct hreq *q = ((struct hconn *)p->data)->cur;

    if (p->content_length > q->hc->s->lim.max_body_size - tn_buf_rlen(&q->body)) {
        q->error = 413;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct hreq *q = ((struct hconn *)p->data)->cur;

    if (n > q->hc->s->lim.max_body_size - tn_buf_rlen(&q->body)) {
        q->error = 413;
        return -1;
    }
    return tn_buf_append(&q->body, at, n);
}

static int on_message_complete(http_parser *p)
{
    struct hconn *hc = p->data;
    struct hreq *q = hc->cur;

    if (tn_buf_rlen(&q->body) > 0) {
        if (tn_buf_append(&q->body, "", 1) != 0)
            return -1;
        q->r.body = tn_buf_rptr(&q->body);
        q->r.body_len = tn_buf_rlen(&q->body) - 1;
    }
    /* A request asking to switch protocols ends HTTP on this connection
     * whether or not the handler upgrades. */
    if (p->upgrade)
        q->r.keep_alive = 0;
    q->state = RQ_READY;
    hc->cur = NULL;
    ev_timer_stop(tn_loop(), &hc->timer);
    queue_push(hc, q);
    tn_stat_inc(&st_requests);
    if (!q->r.keep_alive) {
        hc->stop_parse = 1;
        http_parser_pause(p, 1);
    } else if (hc->nq >= hc->s->lim.max_pipeline) {
        hc->pipe_full = 1;
        http_parser_pause(p, 1);
    }
    return 0;
}

static const struct http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_chunk_header = on_chunk_header,
};

/* ---- parsing ---------------------------------------------------------------- */

/* A request that cannot be parsed further gets an automatic answer in its
 * turn, then the connection closes; nothing more is read. */
static void fail(struct hconn *hc, int status)
{
    struct hreq *q = hc->cur;

    if (!q)
        q = req_new(hc);
    hc->cur = NULL;
    ev_timer_stop(tn_loop(), &hc->timer);
    hc->stop_parse = 1;
    tn_buf_consume(&hc->c->in, tn_buf_rlen(&hc->c->in));
    tn_conn_pause_read(hc->c);
    if (!q) {
        tn_conn_close(hc->c, TN_ENOMEM);
        return;
    }
    q->error = status;
    q->r.keep_alive = 0;
    q->state = RQ_READY;
    queue_push(hc, q);
}

static void parse(struct hconn *hc)
{
    struct tn_conn *c = hc->c;
    size_t len, n;
    enum http_errno e;

    if (hc->stop_parse || hc->pipe_full || tn_conn_closing(c))
        return;
    len = tn_buf_rlen(&c->in);
    if (len == 0)
        return;
    n = http_parser_execute(&hc->parser, &parser_settings, tn_buf_rptr(&c->in), len);
    e = HTTP_PARSER_ERRNO(&hc->parser);
    if (e == HPE_OK || e == HPE_PAUSED) {
        tn_buf_consume(&c->in, n);
        if (e == HPE_PAUSED || hc->parser.upgrade) {
            /* Stop reading until the queue drains, or for good. */
            if (hc->parser.upgrade)
                hc->stop_parse = 1;
            tn_conn_pause_read(c);
        }
        return;
    }
    if (hc->cur && hc->cur->error)
        fail(hc, hc->cur->error);
    else if (e == HPE_HEADER_OVERFLOW)
        fail(hc, 431);
    else
        fail(hc, 400);
}

/* ---- replies ---------------------------------------------------------------- */

static int conn_closes_after(const struct hreq *q)
{
    return !q->r.keep_alive || q->hc->s->closed;
}

/* Write the status line and headers into hc->out. len < 0: chunked (or,
 * for HTTP/1.0, delimited by the close). */
static void build_head(struct hreq *q, int status, const char *ctype, long long len)
{
    struct tn_buf *b = &q->hc->out;
    int no_body = status == 204 || status == 304 || status < 200;

    tn_buf_reset(b);
    tn_buf_printf(b, "HTTP/1.1 %d %s\r\n" HTTP_SERVER_HEADER, status, tn_http_status_text(status));
    if (ctype && !no_body)
        tn_buf_printf(b, "Content-Type: %s\r\n", ctype);
    if (len >= 0 && !no_body)
        tn_buf_printf(b, "Content-Length: %lld\r\n", len);
    else if (len < 0 && q->chunked && !no_body)
        tn_buf_printf(b, "Transfer-Encoding: chunked\r\n");
    if (conn_closes_after(q))
        tn_buf_printf(b, "Connection: close\r\n");
    else if (q->r.http_minor == 0)
        tn_buf_printf(b, "Connection: keep-alive\r\n");
    tn_buf_append(b, tn_buf_rlen(&q->rhdr) ? tn_buf_rptr(&q->rhdr) : "", tn_buf_rlen(&q->rhdr));
    tn_buf_append(b, "\r\n", 2);
}

/* The request is answered: next one, or close, or wait for one. */
static void finish(struct hreq *q)
{
    struct hconn *hc = q->hc;

    q->state = RQ_DONE;
    if (hc->head == q)
        queue_pop(hc);
    if (conn_closes_after(q)) {
        hc->stop_parse = 1;
        tn_conn_close_after_write(hc->c);
    } else if (hc->pipe_full && hc->nq < hc->s->lim.max_pipeline) {
        hc->pipe_full = 0;
        http_parser_pause(&hc->parser, 0);
        tn_conn_resume_read(hc->c);
    }
    if (hc->running != q)
        req_release(hc, q);
    if (hc->nq == 0 && !hc->cur && !hc->stop_parse)
        hc_arm(hc, hc->s->lim.keepalive_timeout);
    /* An answer that came later (ASYNC) lets the next request run. */
    if (!hc->busy && !hc->upgraded)
        process(hc);
    else
        hc->again = 1;
}

static int reply_check(struct hreq *q, const char *what)
{
    if (q->state != RQ_RUNNING || q->reply_started) {
        tn_log_error(HTTP_WHO, "%s: %s on a request already answered", q->hc->s->name, what);
        return -1;
    }
    q->reply_started = 1;
    return 0;
}

static int has_body(int method, int status)
{
    return method != TN_HTTP_HEAD && status >= 200 && status != 204 && status != 304;
}

void tn_http_reply(struct tn_http_req *r, int status, const char *content_type, const void *body,
                   size_t len)
{
    struct hreq *q = (struct hreq *)r;
    struct hconn *hc = q->hc;
    struct iovec iov[2];
    int n = 1;

    if (reply_check(q, "reply") != 0)
        return;
    tn_stat_inc(&st_responses);
    build_head(q, status, content_type, (long long)len);
    iov[0].iov_base = tn_buf_rptr(&hc->out);
    iov[0].iov_len = tn_buf_rlen(&hc->out);
    if (len > 0 && has_body(r->method, status)) {
        iov[1].iov_base = (void *)body;
        iov[1].iov_len = len;
        n = 2;
    }
    tn_conn_writev(hc->c, iov, n);
    finish(q);
}

void tn_http_reply_str(struct tn_http_req *r, int status, const char *content_type,
                       const char *body)
{
    tn_http_reply(r, status, content_type, body, body ? strlen(body) : 0);
}

void tn_http_chunk_start(struct tn_http_req *r, int status, const char *content_type)
{
    struct hreq *q = (struct hreq *)r;

    if (reply_check(q, "chunk_start") != 0)
        return;
    tn_stat_inc(&st_responses);
    q->streaming = has_body(r->method, status) ? 1 : 0;
    /* HTTP/1.0 has no chunked encoding: the close ends the body. */
    q->chunked = !(r->http_major == 1 && r->http_minor == 0);
    if (!q->chunked)
        r->keep_alive = 0;
    build_head(q, status, content_type, -1);
    tn_conn_write(q->hc->c, tn_buf_rptr(&q->hc->out), tn_buf_rlen(&q->hc->out));
}

void tn_http_chunk(struct tn_http_req *r, const void *p, size_t n)
{
    struct hreq *q = (struct hreq *)r;
    struct iovec iov[3];
    char size[24];

    if (q->state != RQ_RUNNING || !q->streaming || n == 0)
        return;
    if (!q->chunked) {
        tn_conn_write(q->hc->c, p, n);
        return;
    }
    iov[0].iov_base = size;
    iov[0].iov_len = (size_t)snprintf(size, sizeof(size), "%zx\r\n", n);
    iov[1].iov_base = (void *)p;
    iov[1].iov_len = n;
    iov[2].iov_base = (void *)"\r\n";
    iov[2].iov_len = 2;
    tn_conn_writev(q->hc->c, iov, 3);
}

void tn_http_chunk_end(struct tn_http_req *r)
{
    struct hreq *q = (struct hreq *)r;

    if (q->state != RQ_RUNNING || !q->reply_started)
        return;
    if (q->streaming && q->chunked)
        tn_conn_write(q->hc->c, "0\r\n\r\n", 5);
    finish(q);
}

void tn_http_add_header(struct tn_http_req *r, const char *name, const char *value)
{
    struct hreq *q = (struct hreq *)r;

    /* CR or LF would let a value inject headers of its own. */
    if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n")) {
        tn_log_warn(HTTP_WHO, "%s: header %s refused: CR/LF in name or value", q->hc->s->name,
                    name);
        return;
    }
    tn_buf_printf(&q->rhdr, "%s: %s\r\n", name, value);
}

/* ---- routing and dispatch --------------------------------------------------- */

/* Exact routes win, then the longest prefix. */
static const struct route *route_path(const struct tn_http_server *s, const char *path)
{
    const struct route *best = NULL;
    size_t i;

    for (i = 0; i < s->nroutes; i++) {
        const struct route *rt = &s->routes[i];
        if (!rt->prefix) {
            if (strcmp(rt->path, path) == 0)
                return rt;
        } else if (strncmp(rt->path, path, rt->len) == 0 && (!best || best->len < rt->len)) {
            best = rt;
        }
    }
    return best;
}

/* The route of the same path that takes method m (HEAD falls back to GET),
 * and the methods that path takes. */
static const struct route *route_method(const struct tn_http_server *s, const struct route *p,
                                        int m, unsigned *allowed)
{
    const struct route *get = NULL, *hit = NULL;
    size_t i;

    *allowed = 0;
    for (i = 0; i < s->nroutes; i++) {
        const struct route *rt = &s->routes[i];
        if (rt->prefix != p->prefix || strcmp(rt->path, p->path) != 0)
            continue;
        *allowed |= rt->methods;
        if (m && (rt->methods & (unsigned)m))
            hit = rt;
        if (rt->methods & TN_HTTP_GET)
            get = rt;
    }
    if (!hit && m == TN_HTTP_HEAD)
        hit = get;
    if (*allowed & TN_HTTP_GET)
        *allowed |= TN_HTTP_HEAD;
    return hit;
}

static void auto_reply(struct hreq *q, int status)
{
    char body[64];

    tn_stat_inc(&st_auto);
    snprintf(body, sizeof(body), "%d %s\n", status, tn_http_status_text(status));
    tn_http_reply_str(&q->r, status, "text/plain; charset=utf-8", body);
}

static void reply_405(struct hreq *q, unsigned allowed)
{
    static const char *const names[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};
    char allow[64] = "";
    size_t i, o = 0;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (allowed & (1u << i))
            o += (size_t)snprintf(allow + o, sizeof(allow) - o, "%s%s", o ? ", " : "", names[i]);
    }
    tn_http_add_header(&q->r, "Allow", allow);
    auto_reply(q, 405);
}

static void run(struct hreq *q)
{
    struct hconn *hc = q->hc;
    const struct route *p, *rt;
    unsigned allowed;
    int rc;

    q->state = RQ_RUNNING;
    if (q->error) {
        auto_reply(q, q->error);
        return;
    }
    p = route_path(hc->s, q->r.path);
    if (!p) {
        auto_reply(q, 404);
        return;
    }
    rt = route_method(hc->s, p, q->r.method, &allowed);
    if (!rt) {
        reply_405(q, allowed);
        return;
    }
    hc->running = q;
    rc = rt->h(&q->r, rt->ud);
    hc->running = NULL;
    if (q->state == RQ_DONE) {
        req_release(hc, q);
        return;
    }
    if (rc == TN_HTTP_ASYNC || q->reply_started)
        return; /* the answer comes later */
    tn_log_error(HTTP_WHO, "%s: handler for %s %s returned without a reply", hc->s->name,
                 q->r.method_name, q->r.path);
    auto_reply(q, 500);
}

static void dispatch(struct hconn *hc)
{
    while (hc->head && hc->head->state == RQ_READY && !hc->upgraded && !tn_conn_closing(hc->c))
        run(hc->head);
}

/* Parse what arrived and run what is ready; loops while either makes
 * progress the other can use. Never re-entered. */
static void process(struct hconn *hc)
{
    if (hc->busy) {
        hc->again = 1;
        return;
    }
    hc->busy = 1;
    do {
        hc->again = 0;
        parse(hc);
        dispatch(hc);
    } while (hc->again && !hc->upgraded);
    hc->busy = 0;
    if (hc->upgraded)
        hc_free(hc);
}

/* ---- connections -------------------------------------------------------------- */

static void http_read(struct tn_conn *c)
{
    process(c->data);
}

static void http_close(struct tn_conn *c, int reason)
{
    struct hconn *hc = c->data;
    struct hreq *q;

    /* An ASYNC handler still working learns that its client left. */
    for (q = hc->head; q; q = q->next) {
        if (q->state == RQ_RUNNING && q->r.on_abort)
            q->r.on_abort(&q->r);
    }
    hc_free(hc);
}

static const struct tn_conn_handler http_handler = {http_read, NULL, NULL, http_close};

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct hconn *hc = w->data;

    if (hc->cur) {
        fail(hc, 408); /* a request began and did not finish in time */
        process(hc);
    } else if (hc->nq == 0 && tn_conn_pending(hc->c) > 0) {
        hc_arm(hc, hc->s->lim.keepalive_timeout); /* still sending: not idle */
    } else if (hc->nq == 0) {
        tn_conn_close(hc->c, TN_ETIMEDOUT); /* idle keep-alive connection */
    }
}

static void hc_free(struct hconn *hc)
{
    struct tn_http_server *s = hc->s;
    struct hreq *q;

    ev_timer_stop(tn_loop(), &hc->timer);
    while ((q = hc->head) != NULL) {
        queue_pop(hc);
        req_release(NULL, q);
    }
    if (hc->cur)
        req_release(NULL, hc->cur);
    if (hc->spare)
        req_release(NULL, hc->spare);
    tn_buf_free(&hc->out);
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        s->conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    s->nconns--;
    free(hc);
    if (s->freed && s->nconns == 0)
        server_release(s);
}

static int http_accept(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    struct tn_http_server *s = ud;
    struct hconn *hc;

    if (s->closed)
        return TN_ECLOSED;
    hc = calloc(1, sizeof(*hc));
    if (!hc)
        return TN_ENOMEM;
    hc->c = c;
    hc->s = s;
    http_parser_init(&hc->parser, HTTP_REQUEST);
    hc->parser.data = hc;
    ev_timer_init(&hc->timer, timer_cb, 0., 0.);
    hc->timer.data = hc;
    /* The first request has request_timeout to arrive. */
    hc_arm(hc, s->lim.request_timeout);
    hc->next = s->conns;
    if (s->conns)
        s->conns->prev = hc;
    s->conns = hc;
    s->nconns++;
    c->h = &http_handler;
    c->data = hc;
    return 0;
}

struct tn_conn *tn_http_upgrade(struct tn_http_req *r, const struct tn_conn_handler *h, void *data)
{
    struct hreq *q = (struct hreq *)r;
    struct hconn *hc = q->hc;
    struct tn_conn *c = hc->c;

    if (q->state != RQ_RUNNING || q->reply_started || hc->head != q || q->next || hc->cur) {
        tn_log_error(HTTP_WHO, "%s: upgrade refused: not the last request of %s", hc->s->name,
                     c->peer);
        return NULL;
    }
    /* Unlink the request; free it now unless its handler is still on the
     * stack (run() does it then). */
    q->state = RQ_DONE;
    queue_pop(hc);
    if (hc->running != q)
        req_release(hc, q);
    hc->upgraded = 1;
    ev_timer_stop(tn_loop(), &hc->timer);
    tn_conn_set_handler(c, h, data);
    tn_conn_resume_read(c);
    if (!hc->busy)
        hc_free(hc);
    return c;
}

/* ---- servers and routes --------------------------------------------------------- */

/* The daemon's `daemon.http` limits (built-in values until the core sets
 * them): what a server gets for NULL limits or a zero field. */
static struct tn_http_limits defaults = {8 * 1024, 5 * 1024 * 1024, 65000, 30000, 0, 16};

static void limits_fill(struct tn_http_limits *dst, const struct tn_http_limits *src)
{
    *dst = src ? *src : defaults;
    if (!dst->max_header_size)
        dst->max_header_size = defaults.max_header_size;
    if (!dst->max_body_size)
        dst->max_body_size = defaults.max_body_size;
    if (!dst->keepalive_timeout)
        dst->keepalive_timeout = defaults.keepalive_timeout;
    if (!dst->request_timeout)
        dst->request_timeout = defaults.request_timeout;
    if (!dst->max_pipeline)
        dst->max_pipeline = defaults.max_pipeline;
}

void tn_http_set_defaults(const struct tn_http_limits *lim)
{
    struct tn_http_limits l;

    limits_fill(&l, lim);
    defaults = l;
}

const struct tn_http_limits *tn_http_defaults(void)
{
    return &defaults;
}

struct tn_http_server *tn_http_server_create(const char *name, const struct tn_addr *addr,
                                             const struct tn_http_limits *lim, int *err)
{
    struct tn_http_server *s = calloc(1, sizeof(*s));
    struct tn_listen_opts o;

    if (!s) {
        *err = TN_ENOMEM;
        return NULL;
    }
    snprintf(s->name, sizeof(s->name), "%s", name ? name : "http");
    tn_stat_register(&st_requests);
    tn_stat_register(&st_responses);
    tn_stat_register(&st_auto);
    limits_fill(&s->lim, lim);
    /* http-parser's own header limit is process-wide: keep it above ours
     * so ours (431) decides. */
    if (s->lim.max_header_size + 1024 > parser_max_header) {
        parser_max_header = (uint32_t)(s->lim.max_header_size + 1024);
        http_parser_set_max_header_size(parser_max_header);
    }
    memset(&o, 0, sizeof(o));
    o.max_conns = s->lim.max_conns;
    o.name = s->name;
    /* Unparsed input is bounded by the parser pausing, not by in_max;
     * in_max only has to exceed one read. */
    o.lim.in_max = s->lim.max_header_size + 64 * 1024;
    s->l = tn_listen(addr, &o, http_accept, s, err);
    if (!s->l) {
        free(s);
        return NULL;
    }
    return s;
}

void tn_http_server_set_tls(struct tn_http_server *s, struct tn_tls_ctx *ctx)
{
    if (s->l)
        tn_listener_set_tls(s->l, ctx);
}

const char *tn_http_server_addr(const struct tn_http_server *s)
{
    return s->l ? tn_listener_addr(s->l) : "";
}

void tn_http_server_close(struct tn_http_server *s)
{
    struct hconn *hc;

    if (!s || s->closed)
        return;
    s->closed = 1;
    /* tn_listener_addr stays valid for logs only while open. */
    tn_listener_close(s->l);
    s->l = NULL;
    for (hc = s->conns; hc; hc = hc->next) {
        if (hc->nq == 0 && !hc->cur)
            tn_conn_close(hc->c, 0);
        else {
            hc->stop_parse = 1; /* answer what is queued, then close */
            tn_conn_pause_read(hc->c);
        }
    }
}

static void server_release(struct tn_http_server *s)
{
    size_t i;

    for (i = 0; i < s->nroutes; i++)
        free(s->routes[i].path);
    free(s->routes);
    free(s);
}

void tn_http_server_free(struct tn_http_server *s)
{
    if (!s)
        return;
    tn_http_server_close(s);
    s->freed = 1;
    if (s->nconns == 0)
        server_release(s);
}

int tn_http_route(struct tn_http_server *s, unsigned methods, const char *path,
                  tn_http_handler_pt h, void *ud)
{
    size_t len = strlen(path), i;
    int prefix = len > 0 && path[len - 1] == '*';
    struct route *v;

    if (prefix)
        len--;
    if (!h || !methods)
        return TN_EINVAL;
    for (i = 0; i < s->nroutes; i++) {
        struct route *rt = &s->routes[i];
        if (rt->prefix == prefix && rt->len == len && memcmp(rt->path, path, len) == 0 &&
            (rt->methods & methods))
            return TN_EEXIST;
    }
    v = realloc(s->routes, (s->nroutes + 1) * sizeof(*v));
    if (!v)
        return TN_ENOMEM;
    s->routes = v;
    v = &s->routes[s->nroutes];
    v->path = strndup(path, len);
    if (!v->path)
        return TN_ENOMEM;
    v->len = len;
    v->prefix = prefix;
    v->methods = methods;
    v->h = h;
    v->ud = ud;
    s->nroutes++;
    return 0;
}

/* ---- request accessors ----------------------------------------------------------- */

const char *tn_http_header(const struct tn_http_req *r, const char *name)
{
    size_t i;

    for (i = 0; i < r->nheaders; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    }
    return NULL;
}

long tn_http_query_get(const char *query, const char *name, char *out, size_t outsz)
{
    size_t nlen = strlen(name);
    const char *p = query;
    char key[256];

    while (p && *p) {
        const char *end = p + strcspn(p, "&");
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *v = eq ? eq + 1 : end;
        size_t klen = (size_t)((eq ? eq : end) - p);
        size_t n;

        if (url_decode(p, klen, key, sizeof(key), 1) == nlen && nlen <= sizeof(key) &&
            memcmp(key, name, nlen) == 0) {
            n = url_decode(v, (size_t)(end - v), out, outsz ? outsz - 1 : 0, 1);
            if (outsz)
                out[n < outsz - 1 ? n : outsz - 1] = '\0';
            return (long)n;
        }
        p = *end ? end + 1 : end;
    }
    return -1;
}

long tn_http_arg(const struct tn_http_req *r, const char *name, char *out, size_t outsz)
{
    return tn_http_query_get(r->query, name, out, outsz);
}
