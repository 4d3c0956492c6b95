/*
 * ws.c -- the WebSocket transport (RFC 6455) on the core HTTP server's
 * upgrade. The frame layer is libwslay's event API: it unmasks (and
 * refuses unmasked client frames), reassembles fragments, answers pings,
 * runs the close handshake, checks UTF-8 in text messages and close
 * reasons, and enforces the message size limit. It reads from the core's
 * c->in through recv_cb and writes into c->out through send_cb, so no I/O
 * blocks and the core's output limits stay the back-pressure.
 *
 * permessage-deflate (RFC 7692) sits on top: wslay passes RSV1 through
 * (allowed_rsv_bits) and this file inflates and deflates with zlib,
 * without context takeover in both directions, so one zlib stream pair
 * serves every connection.
 *
 * Idle connections are kept small: a connection holds a wslay context
 * (about 9 KiB) only while it has something in flight (a fragmented
 * message, queued frames, a close handshake). Otherwise it borrows the one
 * spare context for a read or a send and gives it back (see spare below),
 * and gives back the core's read buffer once it is empty.
 *
 * Each binary message carries one whole packet, size field included, as
 * due's WebSocket server expects; text messages are refused (1003) once
 * they are valid UTF-8.
 */
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wslay/wslay.h>
#include <zlib.h>

#include "gateway.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_REASON_MAX 123 /* bytes of a close reason (125 minus the code) */

struct ws_conn {
    struct tn_conn *c;
    struct gw_session *s;
    struct gw *gw;
    struct ws_ctx *ctx;          /* NULL while quiescent */
    size_t feed;                 /* bytes of c->in wslay may read: whole frames */
    uint8_t deflate;             /* permessage-deflate negotiated */
    uint8_t frag_open;           /* a fragmented message is being received */
    uint8_t closing;             /* our close frame is queued */
    uint8_t failed;              /* we failed the connection (logged) */
    uint8_t in_recv;             /* inside wslay_event_recv: settle after it */
};

/* One deflate and one inflate stream for all connections: every message is
 * compressed on its own (no context takeover), on the loop thread. */
static struct {
    z_stream in, out;
    int in_ok, out_ok;
    struct tn_buf buf;  /* scratch: the inflated message being handled */
    struct tn_buf dbuf; /* scratch: a deflated message being sent (apart from
                           buf: a reply is sent while the request in buf is
                           still in use, e.g. forwarded to a node after) */
} z;

/* A wslay context and the connection it works for now (its user_data, so
 * that it can change hands). */
struct ws_ctx {
    wslay_event_context_ptr w;
    struct ws_conn *ws;
};

/*
 * The spare context. Between whole frames (wslay only ever reads whole
 * ones, see whole_frames), with no fragmented message open, nothing queued
 * and no close sent or received, a server context is in exactly the state
 * of a fresh one: it can serve any connection. A connection without a
 * context borrows the spare for a read or a send and gives it back when
 * that leaves it in this state; otherwise it keeps it (and the next
 * borrower gets a new one).
 */
static struct {
    struct ws_ctx *spare;
    struct tn_buf flat; /* scratch: a packet's pieces in one piece */
} pool;

/* ---- UTF-8 (inflated text: wslay checks only what it sees uncompressed) ------------ */

/* Well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF)? */
static int utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t b = p[i];
        size_t len;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xC2 && b <= 0xDF) {
            len = 2;
            cp = b & 0x1F;
        } else if (b >= 0xE0 && b <= 0xEF) {
            len = 3;
            cp = b & 0x0F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            len = 4;
            cp = b & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

/* ---- zlib ----------------------------------------------------------------------------- */

static int z_init(void)
{
    if (!z.out_ok) {
        if (deflateInit2(&z.out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) !=
            Z_OK)
            return TN_ENOMEM;
        z.out_ok = 1;
    }
    if (!z.in_ok) {
        if (inflateInit2(&z.in, -15) != Z_OK)
            return TN_ENOMEM;
        z.in_ok = 1;
    }
    return 0;
}

/* Compress p[0..n) into z.dbuf without the final 00 00 ff ff. */
static int deflate_msg(const void *p, size_t n)
{
    if (z_init() != 0)
        return TN_ENOMEM;
    tn_buf_reset(&z.dbuf);
    if (tn_buf_reserve(&z.dbuf, deflateBound(&z.out, n) + 16) != 0)
        return TN_ENOMEM;
    deflateReset(&z.out);
    z.out.next_in = (Bytef *)p;
    z.out.avail_in = (uInt)n;
    z.out.next_out = (Bytef *)tn_buf_wptr(&z.dbuf);
    z.out.avail_out = (uInt)tn_buf_wlen(&z.dbuf);
    if (deflate(&z.out, Z_SYNC_FLUSH) != Z_OK || z.out.avail_in != 0)
        return TN_EIO;
    tn_buf_commit(&z.dbuf, tn_buf_wlen(&z.dbuf) - z.out.avail_out);
    if (tn_buf_rlen(&z.dbuf) < 4)
        return TN_EIO;
    z.dbuf.len -= 4;
    return 0;
}

/* Inflate a compressed message into z.buf, at most limit bytes. */
static int inflate_msg(const uint8_t *p, size_t n, size_t limit)
{
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    int rc = Z_OK;

    if (z_init() != 0)
        return TN_ENOMEM;
    inflateReset(&z.in);
    tn_buf_reset(&z.buf);
    for (int part = 0; part < 2 && rc != Z_STREAM_END; part++) {
        z.in.next_in = (Bytef *)(part ? tail : p);
        z.in.avail_in = part ? 4 : (uInt)n;
        while (z.in.avail_in > 0) {
            if (tn_buf_reserve(&z.buf, 16 * 1024) != 0)
                return TN_ENOMEM;
            z.in.next_out = (Bytef *)tn_buf_wptr(&z.buf);
            z.in.avail_out = (uInt)tn_buf_wlen(&z.buf);
            rc = inflate(&z.in, Z_SYNC_FLUSH);
            tn_buf_commit(&z.buf, tn_buf_wlen(&z.buf) - z.in.avail_out);
            if (tn_buf_rlen(&z.buf) > limit)
                return TN_ETOOBIG;
            if (rc == Z_STREAM_END)
                break;
            if (rc != Z_OK && rc != Z_BUF_ERROR)
                return TN_EPROTO;
            if (rc == Z_BUF_ERROR && z.in.avail_out != 0)
                break;
        }
    }
    return 0;
}

/* ---- wslay callbacks ------------------------------------------------------------------------ */

/* wslay reads whole frames from c->in, never more than ws->feed bytes. */
static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *ud)
{
    struct ws_conn *ws = ((struct ws_ctx *)ud)->ws;
    size_t n = len < ws->feed ? len : ws->feed;

    if (n == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    memcpy(buf, tn_buf_rptr(&ws->c->in), n);
    tn_buf_consume(&ws->c->in, n);
    ws->feed -= n;
    return (ssize_t)n;
}

/* Frames go into c->out; the core's limits apply there. Bytes are always
 * taken, so wslay's own state never stalls: a connection over its output
 * limit is being closed by the core anyway. */
static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    struct ws_conn *ws = ((struct ws_ctx *)ud)->ws;

    if (!tn_conn_closing(ws->c))
        tn_conn_write(ws->c, data, len);
    return (ssize_t)len;
}

static void frame_start_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *arg, void *ud)
{
    struct ws_conn *ws = ((struct ws_ctx *)ud)->ws;

    if (!(arg->opcode & 0x8)) /* data or continuation */
        ws->frag_open = !arg->fin;
}

static void msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud);

static const struct wslay_event_callbacks ws_callbacks = {
    recv_cb, send_cb, NULL, frame_start_cb, NULL, NULL, msg_cb};

static void ctx_free(struct ws_ctx *x)
{
    wslay_event_context_free(x->w);
    free(x);
}

/* ws's context: its own, or the spare (or a new one) borrowed. */
static int ws_ctx(struct ws_conn *ws)
{
    struct ws_ctx *x = pool.spare;

    if (ws->ctx)
        return 0;
    if (x) {
        pool.spare = NULL;
    } else {
        if (!(x = calloc(1, sizeof(*x))))
            return TN_ENOMEM;
        if (wslay_event_context_server_init(&x->w, &ws_callbacks, x) != 0) {
            free(x);
            return TN_ENOMEM;
        }
    }
    x->ws = ws;
    wslay_event_config_set_allowed_rsv_bits(x->w, ws->deflate ? WSLAY_RSV1_BIT : WSLAY_RSV_NONE);
    wslay_event_config_set_max_recv_msg_length(x->w, ws->gw->codec.max_size);
    ws->ctx = x;
    return 0;
}

/* Give ws's context back when nothing is in flight on it. */
static void ws_ctx_return(struct ws_conn *ws)
{
    struct ws_ctx *x = ws->ctx;

    if (!x || ws->in_recv || ws->closing || ws->failed || ws->frag_open ||
        wslay_event_want_write(x->w) || !wslay_event_get_read_enabled(x->w) ||
        !wslay_event_get_write_enabled(x->w) || wslay_event_get_close_received(x->w))
        return;
    ws->ctx = NULL;
    x->ws = NULL;
    if (pool.spare)
        ctx_free(x);
    else
        pool.spare = x;
}

/* ---- closing ------------------------------------------------------------------------------ */

static void queue_close(struct ws_conn *ws, int code, const char *why)
{
    size_t n = strlen(why);

    ws->closing = 1;
    if (ws_ctx(ws) != 0) {
        tn_conn_close(ws->c, TN_ENOMEM);
        return;
    }
    wslay_event_queue_close(ws->ctx->w, (uint16_t)code, (const uint8_t *)why,
                            n > WS_REASON_MAX ? WS_REASON_MAX : n);
}

static void ws_settle(struct ws_conn *ws);

/* A failure we detected: close frame with code, then the TCP connection. */
static void ws_fail(struct ws_conn *ws, int code, const char *why)
{
    tn_log_info(GW_LOG, "websocket %s: %s, closing with %d", ws->c->peer, why, code);
    if (code == GW_CLOSE_TOO_BIG)
        ws->gw->st.oversize++;
    ws->failed = 1;
    if (!ws->closing)
        queue_close(ws, code, why);
    if (ws->ctx)
        wslay_event_shutdown_read(ws->ctx->w);
    if (ws->s)
        ws->s->tpclosed = 1;
    if (!ws->in_recv)
        ws_settle(ws);
}

/* A failure wslay detected (it queued the close frame itself). */
static void wslay_failed(struct ws_conn *ws)
{
    int code = wslay_event_get_status_code_sent(ws->ctx->w);
    const char *why = code == GW_CLOSE_TOO_BIG    ? "message over packet.max_size"
                      : code == GW_CLOSE_BAD_DATA ? "text is not UTF-8"
                                                  : "protocol error";

    tn_log_info(GW_LOG, "websocket %s: %s, closing with %d", ws->c->peer, why, code);
    if (code == GW_CLOSE_TOO_BIG)
        ws->gw->st.oversize++;
    ws->failed = 1;
}

/*
 * After wslay ran: write what it queued, then end the connection once a
 * close went both ways or the connection failed, or give the context back
 * when nothing is in flight.
 */
static void ws_settle(struct ws_conn *ws)
{
    wslay_event_context_ptr w;

    if (!ws->ctx)
        return;
    w = ws->ctx->w;
    if (wslay_event_send(w) != 0) {
        tn_conn_close(ws->c, TN_ENOMEM);
        return;
    }
    if (wslay_event_get_close_received(w) || !wslay_event_get_read_enabled(w)) {
        if (!wslay_event_get_close_received(w) && !ws->failed)
            wslay_failed(ws);
        if (ws->s)
            ws->s->tpclosed = 1;
        tn_conn_close_after_write(ws->c);
        return;
    }
    ws_ctx_return(ws);
}

/* ---- sending ------------------------------------------------------------------------------ */

/* The pieces of a packet as one message, compressed when worth it. */
static int ws_send(struct gw_session *s, const struct iovec *iov, int n)
{
    struct ws_conn *ws = s->tpdata;
    struct wslay_event_msg m = {WSLAY_BINARY_FRAME, NULL, 0};
    uint8_t rsv = WSLAY_RSV_NONE;
    int rc;

    if (ws->closing)
        return TN_ECLOSED;
    tn_buf_reset(&pool.flat);
    for (int i = 0; i < n; i++)
        if (tn_buf_append(&pool.flat, iov[i].iov_base, iov[i].iov_len) != 0)
            return TN_ENOMEM;
    m.msg = (const uint8_t *)tn_buf_rptr(&pool.flat);
    m.msg_length = tn_buf_rlen(&pool.flat);
    if (ws->deflate && m.msg_length >= ws->gw->conf->ws_compress_min &&
        deflate_msg(m.msg, m.msg_length) == 0) {
        m.msg = (const uint8_t *)tn_buf_rptr(&z.dbuf);
        m.msg_length = tn_buf_rlen(&z.dbuf);
        rsv = WSLAY_RSV1_BIT;
    }
    if (ws_ctx(ws) != 0)
        return TN_ENOMEM;
    rc = wslay_event_queue_msg_ex(ws->ctx->w, &m, rsv);
    if (rc == WSLAY_ERR_NO_MORE_MSG)
        return TN_ECLOSED;
    /* out now, also from inside wslay_event_recv: wslay sends queued
     * control frames first, and a close must not overtake a reply */
    if (rc != 0 || wslay_event_send(ws->ctx->w) != 0)
        return TN_ENOMEM;
    ws_ctx_return(ws);
    return tn_conn_closing(ws->c) ? TN_ECLOSED : 0;
}

/* Start the close handshake: our close frame, then wait (bounded) for the
 * client's. */
static void ws_close(struct gw_session *s, int code, const char *why)
{
    struct ws_conn *ws = s->tpdata;

    if (ws->closing)
        return;
    queue_close(ws, code, why);
    tn_conn_set_idle_timeout(ws->c, ws->gw->conf->ws_close_timeout);
    if (!ws->in_recv)
        ws_settle(ws);
}

static const char *ws_addr(const struct gw_session *s)
{
    return ((struct ws_conn *)s->tpdata)->c->peer;
}

static void ws_free(struct ws_conn *ws)
{
    if (ws->ctx)
        ctx_free(ws->ctx);
    free(ws);
}

static void ws_detach(struct gw_session *s)
{
    struct ws_conn *ws = s->tpdata;

    ws->c->data = NULL;
    tn_conn_close(ws->c, 0);
    ws_free(ws);
}

static const struct gw_transport ws_transport = {"ws", ws_send, ws_close, ws_addr, ws_detach};

/* ---- receiving -------------------------------------------------------------------------- */

/* A whole data message arrived (wslay already checked the UTF-8 of an
 * uncompressed text message). */
static void ws_message(struct ws_conn *ws, int op, int compressed, const uint8_t *p, size_t n)
{
    struct gw_packet pk;
    long r;

    if (ws->closing || !ws->s)
        return;
    if (compressed) {
        int rc = inflate_msg(p, n, (size_t)ws->gw->codec.max_size);
        if (rc == TN_ETOOBIG) {
            ws_fail(ws, GW_CLOSE_TOO_BIG, "message over packet.max_size once inflated");
            return;
        }
        if (rc != 0) {
            ws_fail(ws, GW_CLOSE_BAD_DATA, "bad deflate data");
            return;
        }
        p = (const uint8_t *)tn_buf_rptr(&z.buf);
        n = tn_buf_rlen(&z.buf);
    }
    if (op == WSLAY_TEXT_FRAME) {
        if (compressed && !utf8_valid(p, n))
            ws_fail(ws, GW_CLOSE_BAD_DATA, "text message is not UTF-8");
        else
            ws_fail(ws, GW_CLOSE_UNSUPPORTED, "binary messages only");
        return;
    }
    r = gw_decode(&ws->gw->codec, (const char *)p, n, &pk);
    if (r <= 0 || r != (long)n) { /* r == n == 0: an empty message, no packet */
        ws->gw->st.bad_packets++;
        ws_fail(ws, GW_CLOSE_POLICY, "a message must hold exactly one packet");
        return;
    }
    gw_session_packet(ws->s, &pk);
}

static void msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    /* pings, pongs and closes: wslay answers them */
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME)
        /* an empty message may come as NULL: no pointer arithmetic on it */
        ws_message(((struct ws_ctx *)ud)->ws, arg->opcode, wslay_get_rsv1(arg->rsv),
                   arg->msg_length ? arg->msg : (const uint8_t *)"", arg->msg_length);
}

/*
 * The header size of the frame at p and its payload length in *len: 0
 * while the header is incomplete, -1 for a header wslay's frame layer
 * would refuse with a bare close frame (a control frame over 125 bytes or
 * fragmented, a length not in its shortest form) or accept although RFC
 * 6455 forbids it (a 1-byte close payload): those get 1002 here.
 */
static long frame_size(const uint8_t *p, size_t avail, uint64_t *len)
{
    size_t hl = 2;
    uint64_t n;

    if (avail < 2)
        return 0;
    n = p[1] & 0x7f;
    if ((p[0] & 0x08) && (n > 125 || !(p[0] & 0x80)))
        return -1;
    if ((p[0] & 0x0f) == WSLAY_CONNECTION_CLOSE && n == 1)
        return -1; /* a close payload is empty or starts with a 2-byte code */
    hl += n == 126 ? 2 : n == 127 ? 8 : 0;
    hl += (p[1] & 0x80) ? 4 : 0;
    if (avail < hl)
        return 0;
    if (n == 126) {
        n = (uint64_t)p[2] << 8 | p[3];
        if (n < 126)
            return -1;
    } else if (n == 127) {
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[2 + i];
        if (n >> 63 || n <= 0xFFFF)
            return -1;
    }
    *len = n;
    return (long)hl;
}

/* How many bytes at the front of c->in wslay may read: whole frames only,
 * so that a context with nothing in flight holds no partial frame and can
 * be freed. A frame declaring more than the limit is handed over at once
 * for wslay to refuse (1009). -1 after a failure. */
static long whole_frames(struct ws_conn *ws, const uint8_t *p, size_t avail)
{
    size_t off = 0;
    uint64_t len = 0;
    long hl;

    while (off < avail) {
        hl = frame_size(p + off, avail - off, &len);
        if (hl < 0) {
            ws->feed = off;
            return -1;
        }
        if (hl == 0)
            break;
        if (len > ws->gw->codec.max_size)
            return (long)avail;
        if (avail - off - (size_t)hl < len)
            break;
        off += (size_t)hl + (size_t)len;
    }
    return (long)off;
}

static void ws_on_read(struct tn_conn *c)
{
    struct ws_conn *ws = c->data;
    long n;
    int bad, rc;

    if (!ws || ws->failed || tn_conn_closing(c))
        goto drop;
    n = whole_frames(ws, (const uint8_t *)tn_buf_rptr(&c->in), tn_buf_rlen(&c->in));
    bad = n < 0;
    if (!bad)
        ws->feed = (size_t)n;
    if (ws->feed > 0) {
        if (ws_ctx(ws) != 0) {
            tn_conn_close(c, TN_ENOMEM);
            return;
        }
        ws->in_recv = 1;
        rc = wslay_event_recv(ws->ctx->w);
        ws->in_recv = 0;
        ws->feed = 0;
        if (rc == WSLAY_ERR_NOMEM) {
            tn_conn_close(c, TN_ENOMEM);
            return;
        }
        /* any other error left reading disabled and a close queued:
         * ws_settle sends it and ends the connection */
    }
    if (bad && !ws->failed)
        ws_fail(ws, GW_CLOSE_PROTOCOL, "protocol error");
    else
        ws_settle(ws);
    if (!ws->failed && !tn_conn_closing(c)) {
        /* an idle connection keeps no read buffer either */
        if (tn_buf_rlen(&c->in) == 0)
            tn_buf_shrink(&c->in, 0);
        return;
    }
drop:
    tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
}

static void ws_on_close(struct tn_conn *c, int reason)
{
    struct ws_conn *ws = c->data;

    if (!ws)
        return;
    c->data = NULL;
    if (reason == TN_ETIMEDOUT && !ws->closing && ws->s)
        tn_log_info(GW_LOG, "session %llu (%s): no packet for %lld ms, closed",
                    (unsigned long long)ws->s->id, c->peer, (long long)ws->gw->idle_ms);
    if (ws->s)
        gw_session_closed(ws->s);
    ws_free(ws);
}

static const struct tn_conn_handler ws_handler = {ws_on_read, NULL, NULL, ws_on_close};

/* ---- the handshake -------------------------------------------------------------------------- */

/* Does the comma-separated header value hold token (case-insensitive)? */
static int has_token(const char *v, const char *token)
{
    size_t tl = strlen(token);

    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        if (strncasecmp(v, token, tl) == 0 && (v[tl] == '\0' || v[tl] == ',' || v[tl] == ' '))
            return 1;
        v = strchr(v, ',');
    }
    return 0;
}

/* Is one permessage-deflate offer (text between commas) acceptable? We
 * answer with no context takeover both ways and a 15-bit window, so an
 * offer limiting our window below that is declined. */
static int deflate_offer_ok(const char *o, size_t n)
{
    char buf[256], *save = NULL, *tok;
    int first = 1;

    if (n >= sizeof(buf))
        return 0;
    memcpy(buf, o, n);
    buf[n] = '\0';
    for (tok = strtok_r(buf, ";", &save); tok; tok = strtok_r(NULL, ";", &save), first = 0) {
        char *eq;
        while (*tok == ' ' || *tok == '\t')
            tok++;
        for (char *e = tok + strlen(tok); e > tok && (e[-1] == ' ' || e[-1] == '\t');)
            *--e = '\0';
        if (first) {
            if (strcasecmp(tok, "permessage-deflate") != 0)
                return 0;
            continue;
        }
        eq = strchr(tok, '=');
        if (eq)
            *eq++ = '\0';
        if (strcasecmp(tok, "server_max_window_bits") == 0) {
            if (!eq || atoi(eq[0] == '"' ? eq + 1 : eq) != 15)
                return 0;
        } else if (strcasecmp(tok, "client_max_window_bits") != 0 &&
                   strcasecmp(tok, "server_no_context_takeover") != 0 &&
                   strcasecmp(tok, "client_no_context_takeover") != 0) {
            return 0;
        }
    }
    return !first;
}

static int deflate_wanted(const char *ext)
{
    while (ext && *ext) {
        const char *end = strchr(ext, ',');
        size_t n = end ? (size_t)(end - ext) : strlen(ext);
        if (deflate_offer_ok(ext, n))
            return 1;
        ext = end ? end + 1 : NULL;
    }
    return 0;
}

static int handshake_ok(struct tn_http_req *r, const char **key)
{
    const char *up = tn_http_header(r, "Upgrade"), *conn = tn_http_header(r, "Connection");
    const char *ver = tn_http_header(r, "Sec-WebSocket-Version");

    *key = tn_http_header(r, "Sec-WebSocket-Key");
    if (!up || !has_token(up, "websocket") || !conn || !has_token(conn, "upgrade") || !*key ||
        strlen(*key) != 24) {
        tn_http_reply_str(r, 400, "text/plain", "a WebSocket handshake is expected here\n");
        return 0;
    }
    if (!ver || strcmp(ver, "13") != 0) {
        tn_http_add_header(r, "Sec-WebSocket-Version", "13");
        tn_http_reply_str(r, 426, "text/plain", "WebSocket version 13 only\n");
        return 0;
    }
    return 1;
}

static int ws_upgrade(struct tn_http_req *r, void *ud)
{
    struct gw *gw = ud;
    struct ws_conn *ws;
    struct tn_conn *c;
    const char *key;
    char text[128], accept[32], head[512];
    uint8_t digest[SHA_DIGEST_LENGTH];
    int n;

    if (gw->stopping) {
        tn_http_reply_str(r, 503, "text/plain", "stopping\n");
        return TN_HTTP_DONE;
    }
    if (!handshake_ok(r, &key))
        return TN_HTTP_DONE;
    if (!(ws = calloc(1, sizeof(*ws)))) {
        tn_http_reply_str(r, 503, "text/plain", "out of memory\n");
        return TN_HTTP_DONE;
    }
    ws->gw = gw;
    ws->deflate =
        gw->conf->ws_deflate && deflate_wanted(tn_http_header(r, "Sec-WebSocket-Extensions"));
    snprintf(text, sizeof(text), "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)text, strlen(text), digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, sizeof(digest)); /* 28 chars + NUL */
    if (!(c = tn_http_upgrade(r, &ws_handler, ws))) {
        free(ws);
        tn_http_reply_str(r, 400, "text/plain", "cannot upgrade a pipelined request\n");
        return TN_HTTP_DONE;
    }
    ws->c = c;
    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
                 accept,
                 ws->deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                               "server_no_context_takeover; client_no_context_takeover\r\n"
                             : "");
    tn_conn_write(c, head, (size_t)n);
    /* a frame holds at most one message of max_size, plus its header */
    c->lim.in_max = gw->codec.max_size + 64 * 1024;
    c->lim.out_max = gw->conf->max_output;
    c->lim.out_high = gw->conf->max_output / 2;
    if (!(ws->s = gw_session_open(gw, &ws_transport, ws))) {
        ws_fail(ws, GW_CLOSE_ERROR, "out of memory");
        return TN_HTTP_DONE;
    }
    if (ws->s->refused) {
        gw_session_close(ws->s, GW_CLOSE_POLICY, "refused");
        return TN_HTTP_DONE;
    }
    tn_conn_set_idle_timeout(c, gw->idle_ms);
    if (tn_buf_rlen(&c->in))
        ws_on_read(c);
    return TN_HTTP_DONE;
}

int gw_ws_listen(struct gw *gw, const struct gw_listen_conf *lc)
{
    struct gw_listener *gl = calloc(1, sizeof(*gl));
    struct tn_http_limits lim = {0};
    uint8_t digest[SHA_DIGEST_LENGTH];
    int err = 0;

    /* libcrypto loads its configuration and providers on first use (a few
     * ms): pay that now, not in the first client's handshake */
    SHA1((const unsigned char *)WS_GUID, strlen(WS_GUID), digest);
    if (!gl || !(gl->path = strdup(lc->path))) {
        free(gl);
        return TN_ENOMEM;
    }
    lim.max_conns = (size_t)gw->conf->max_connections;
    lim.max_body_size = 4096;
    if (!(gl->http = tn_http_server_create("gateway.ws", &lc->addr, &lim, &err)) ||
        (err = tn_http_route(gl->http, TN_HTTP_GET, gl->path, ws_upgrade, gw)) != 0) {
        if (gl->http)
            tn_http_server_free(gl->http);
        free(gl->path);
        free(gl);
        return err;
    }
    gl->proto = GW_PROTO_WS;
    gl->next = gw->listeners;
    gw->listeners = gl;
    tn_log_info(GW_LOG, "WebSocket listening on ws://%s%s", tn_http_server_addr(gl->http),
                gl->path);
    return 0;
}

void gw_ws_fini(void)
{
    if (z.in_ok)
        inflateEnd(&z.in);
    if (z.out_ok)
        deflateEnd(&z.out);
    z.in_ok = z.out_ok = 0;
    tn_buf_free(&z.buf);
    tn_buf_free(&z.dbuf);
    if (pool.spare)
        ctx_free(pool.spare);
    pool.spare = NULL;
    tn_buf_free(&pool.flat);
}
