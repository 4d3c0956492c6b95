/*
 * ws.c -- the WebSocket transport (RFC 6455) on the core HTTP server's
 * upgrade: the handshake, frames (masking required from clients,
 * fragmentation, ping/pong, the close handshake with codes, UTF-8 checks,
 * size limits) and permessage-deflate (RFC 7692, without context takeover
 * in both directions, so one zlib stream pair serves every connection).
 * Each binary message carries one whole packet, size field included, as
 * due's WebSocket server expects; text messages are refused (1003) once
 * they are valid UTF-8.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "gateway.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_FIN 0x80
#define WS_RSV1 0x40
#define WS_RSV_ALL 0x70
enum { WS_CONT = 0, WS_TEXT = 1, WS_BINARY = 2, WS_CLOSE = 8, WS_PING = 9, WS_PONG = 10 };

struct ws_conn {
    struct tn_conn *c;
    struct gw_session *s;
    struct gw *gw;
    struct tn_buf msg; /* fragments of the message being received */
    uint8_t msg_op;    /* WS_TEXT / WS_BINARY while a fragmented message is open */
    uint8_t msg_rsv1;  /* that message is compressed */
    uint8_t deflate;   /* permessage-deflate negotiated */
    uint8_t closing;   /* our close frame is out: waiting for the client's */
};

/* One deflate and one inflate stream for all connections: every message is
 * compressed on its own (no context takeover), on the loop thread. */
static struct {
    z_stream in, out;
    int in_ok, out_ok;
    struct tn_buf buf; /* scratch: inflated or deflated message */
} z;

/* ---- SHA-1 and base64, for Sec-WebSocket-Accept ------------------------------------ */

static uint32_t rol(uint32_t v, int n)
{
    return v << n | v >> (32 - n);
}

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f, k, t;

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

/* SHA-1 of a short text (the key and the GUID: under 120 bytes). */
static void sha1(const char *s, size_t n, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t block[128] = {0};
    size_t nb = n + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;

    memcpy(block, s, n);
    block[n] = 0x80;
    for (int i = 0; i < 8; i++)
        block[nb - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < nb; off += 64)
        sha1_block(h, block + off);
    for (int i = 0; i < 20; i++)
        out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const uint8_t *p, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;

    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

/* ---- UTF-8 -------------------------------------------------------------------------- */

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

/* ---- sending ------------------------------------------------------------------------ */

static size_t frame_head(uint8_t *h, int first, size_t len)
{
    h[0] = (uint8_t)first;
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

/* One unfragmented frame: FIN + opcode (+ RSV1), payload from iov. */
static int ws_frame(struct ws_conn *ws, int first, const struct iovec *iov, int n)
{
    struct iovec v[8];
    uint8_t h[10];
    size_t len = 0;

    if (n > 7)
        return TN_EINVAL;
    for (int i = 0; i < n; i++) {
        len += iov[i].iov_len;
        v[i + 1] = iov[i];
    }
    v[0].iov_base = h;
    v[0].iov_len = frame_head(h, first, len);
    return tn_conn_writev(ws->c, v, n + 1);
}

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

/* Compress the message in iov into z.buf without the final 00 00 ff ff. */
static int deflate_msg(const struct iovec *iov, int n)
{
    size_t total = 0;

    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    tn_buf_reset(&z.buf);
    if (tn_buf_reserve(&z.buf, deflateBound(&z.out, total) + 16) != 0)
        return TN_ENOMEM;
    deflateReset(&z.out);
    z.out.next_out = (Bytef *)tn_buf_wptr(&z.buf);
    z.out.avail_out = (uInt)tn_buf_wlen(&z.buf);
    for (int i = 0; i < n; i++) {
        z.out.next_in = iov[i].iov_base;
        z.out.avail_in = (uInt)iov[i].iov_len;
        if (deflate(&z.out, i + 1 == n ? Z_SYNC_FLUSH : Z_NO_FLUSH) != Z_OK || z.out.avail_in != 0)
            return TN_EIO;
    }
    tn_buf_commit(&z.buf, tn_buf_wlen(&z.buf) - z.out.avail_out);
    if (tn_buf_rlen(&z.buf) < 4)
        return TN_EIO;
    z.buf.len -= 4;
    return 0;
}

static int ws_send(struct gw_session *s, const struct iovec *iov, int n)
{
    struct ws_conn *ws = s->tpdata;
    size_t total = 0;
    struct iovec zv;

    if (ws->closing)
        return TN_ECLOSED;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (ws->deflate && total >= ws->gw->conf->ws_compress_min && z_init() == 0 &&
        deflate_msg(iov, n) == 0) {
        zv.iov_base = tn_buf_rptr(&z.buf);
        zv.iov_len = tn_buf_rlen(&z.buf);
        return ws_frame(ws, WS_FIN | WS_RSV1 | WS_BINARY, &zv, 1);
    }
    return ws_frame(ws, WS_FIN | WS_BINARY, iov, n);
}

static void send_close(struct ws_conn *ws, int code, const char *why)
{
    uint8_t p[125];
    size_t n = 0;
    struct iovec v;

    if (code) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = strlen(why) > 120 ? 120 : strlen(why);
        memcpy(p + 2, why, n);
        n += 2;
    }
    v.iov_base = p;
    v.iov_len = n;
    ws_frame(ws, WS_FIN | WS_CLOSE, &v, 1);
}

/* Start the close handshake: our close frame, then wait (bounded) for the
 * client's. */
static void ws_close(struct gw_session *s, int code, const char *why)
{
    struct ws_conn *ws = s->tpdata;

    if (ws->closing)
        return;
    ws->closing = 1;
    send_close(ws, code, why);
    tn_conn_set_idle_timeout(ws->c, ws->gw->conf->ws_close_timeout);
}

/* A protocol violation: close frame with code, then the TCP connection. */
static void ws_fail(struct ws_conn *ws, int code, const char *why)
{
    tn_log_info(GW_LOG, "websocket %s: %s, closing with %d", ws->c->peer, why, code);
    if (!ws->closing)
        send_close(ws, code, why);
    ws->closing = 1;
    if (ws->s)
        ws->s->tpclosed = 1;
    tn_conn_close_after_write(ws->c);
}

static const char *ws_addr(const struct gw_session *s)
{
    return ((struct ws_conn *)s->tpdata)->c->peer;
}

static void ws_free(struct ws_conn *ws)
{
    tn_buf_free(&ws->msg);
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

/* Inflate a compressed message into z.buf, at most limit bytes. */
static int inflate_msg(const char *p, size_t n, size_t limit)
{
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    int rc = Z_OK;

    if (z_init() != 0)
        return TN_ENOMEM;
    inflateReset(&z.in);
    tn_buf_reset(&z.buf);
    for (int part = 0; part < 2 && rc != Z_STREAM_END; part++) {
        z.in.next_in = (Bytef *)(part ? (const char *)tail : p);
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

/* A whole message arrived. */
static void ws_message(struct ws_conn *ws, int op, int compressed, const char *p, size_t n)
{
    struct gw_packet pk;
    long r;

    if (compressed) {
        int rc = inflate_msg(p, n, (size_t)ws->gw->codec.max_size);
        if (rc == TN_ETOOBIG) {
            ws->gw->st.oversize++;
            ws_fail(ws, GW_CLOSE_TOO_BIG, "message over packet.max_size once inflated");
            return;
        }
        if (rc != 0) {
            ws_fail(ws, GW_CLOSE_BAD_DATA, "bad deflate data");
            return;
        }
        p = tn_buf_rptr(&z.buf);
        n = tn_buf_rlen(&z.buf);
    }
    if (ws->closing || !ws->s)
        return;
    if (op == WS_TEXT) {
        if (!utf8_valid((const uint8_t *)p, n))
            ws_fail(ws, GW_CLOSE_BAD_DATA, "text message is not UTF-8");
        else
            ws_fail(ws, GW_CLOSE_UNSUPPORTED, "binary messages only");
        return;
    }
    r = gw_decode(&ws->gw->codec, p, n, &pk);
    if (r <= 0 || r != (long)n) { /* r == n == 0: an empty message, no packet */
        ws->gw->st.bad_packets++;
        ws_fail(ws, GW_CLOSE_POLICY, "a message must hold exactly one packet");
        return;
    }
    gw_session_packet(ws->s, &pk);
}

static int close_code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* The client's close frame: answer it (echoing its code) unless ours went
 * out first, then end the connection. */
static void ws_close_frame(struct ws_conn *ws, const uint8_t *p, size_t n)
{
    int code = n >= 2 ? p[0] << 8 | p[1] : 0;

    if (n == 1 || (n >= 2 && !close_code_ok(code))) {
        ws_fail(ws, GW_CLOSE_PROTOCOL, "bad close code");
        return;
    }
    if (n > 2 && !utf8_valid(p + 2, n - 2)) {
        ws_fail(ws, GW_CLOSE_BAD_DATA, "close reason is not UTF-8");
        return;
    }
    if (!ws->closing) {
        ws->closing = 1;
        send_close(ws, code, "");
    }
    if (ws->s)
        ws->s->tpclosed = 1;
    tn_conn_close_after_write(ws->c);
}

static void ws_control(struct ws_conn *ws, int op, const uint8_t *p, size_t n)
{
    struct iovec v;

    if (op == WS_PING && !ws->closing) {
        v.iov_base = (void *)p;
        v.iov_len = n;
        ws_frame(ws, WS_FIN | WS_PONG, &v, 1);
    } else if (op == WS_CLOSE) {
        ws_close_frame(ws, p, n);
    }
}

/* Check a frame header; 0 or a close code. */
static int frame_check(struct ws_conn *ws, int b0, int b1, uint64_t len)
{
    int op = b0 & 0x0f, rsv = b0 & WS_RSV_ALL;

    if (!(b1 & 0x80))
        return GW_CLOSE_PROTOCOL; /* clients must mask */
    if (rsv & ~(ws->deflate ? WS_RSV1 : 0))
        return GW_CLOSE_PROTOCOL;
    if (op >= 8) {
        if (op > WS_PONG || !(b0 & WS_FIN) || len > 125 || rsv)
            return GW_CLOSE_PROTOCOL;
        return 0;
    }
    if (op > WS_BINARY || (op == WS_CONT && (!ws->msg_op || rsv)) || (op != WS_CONT && ws->msg_op))
        return GW_CLOSE_PROTOCOL;
    if (len + tn_buf_rlen(&ws->msg) > ws->gw->codec.max_size)
        return GW_CLOSE_TOO_BIG;
    return 0;
}

static void ws_data(struct ws_conn *ws, int b0, const char *p, size_t n)
{
    int op = b0 & 0x0f;

    if (op != WS_CONT && (b0 & WS_FIN)) {
        ws_message(ws, op, (b0 & WS_RSV1) != 0, p, n); /* unfragmented: no copy */
        return;
    }
    if (op != WS_CONT) {
        ws->msg_op = (uint8_t)op;
        ws->msg_rsv1 = (b0 & WS_RSV1) != 0;
    }
    if (tn_buf_append(&ws->msg, p, n) != 0) {
        ws_fail(ws, GW_CLOSE_ERROR, "out of memory");
        return;
    }
    if (b0 & WS_FIN) {
        size_t len = tn_buf_rlen(&ws->msg);
        op = ws->msg_op;
        ws->msg_op = 0;
        /* empty fragments allocate nothing: no pointer arithmetic on NULL */
        ws_message(ws, op, ws->msg_rsv1, len ? tn_buf_rptr(&ws->msg) : "", len);
        tn_buf_reset(&ws->msg);
        tn_buf_shrink(&ws->msg, 0);
    }
}

/* Parse one frame at the front of c->in; returns its length, 0 when
 * incomplete, -1 after a failure. */
static long ws_frame_in(struct ws_conn *ws, uint8_t *p, size_t avail)
{
    size_t hl = 2;
    uint64_t len;
    uint8_t *mask, *payload;
    int code;

    if (avail < 2)
        return 0;
    len = p[1] & 0x7f;
    if (len == 126)
        hl += 2;
    else if (len == 127)
        hl += 8;
    if (avail < hl + 4)
        return 0;
    if (len == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        if (len >> 63) {
            ws_fail(ws, GW_CLOSE_PROTOCOL, "bad frame length");
            return -1;
        }
    }
    if ((code = frame_check(ws, p[0], p[1], len)) != 0) {
        if (code == GW_CLOSE_TOO_BIG)
            ws->gw->st.oversize++;
        ws_fail(ws, code,
                code == GW_CLOSE_TOO_BIG ? "message over packet.max_size" : "protocol error");
        return -1;
    }
    if (avail - hl - 4 < len)
        return 0;
    mask = p + hl;
    payload = mask + 4;
    for (uint64_t i = 0; i < len; i++)
        payload[i] ^= mask[i & 3];
    if ((p[0] & 0x0f) >= 8)
        ws_control(ws, p[0] & 0x0f, payload, (size_t)len);
    else
        ws_data(ws, p[0], (const char *)payload, (size_t)len);
    return (long)(hl + 4 + len);
}

static void ws_on_read(struct tn_conn *c)
{
    struct ws_conn *ws = c->data;
    long r;

    while (ws && !tn_conn_closing(c) && tn_buf_rlen(&c->in) > 0) {
        r = ws_frame_in(ws, (uint8_t *)tn_buf_rptr(&c->in), tn_buf_rlen(&c->in));
        if (r <= 0)
            break;
        tn_buf_consume(&c->in, (size_t)r);
    }
    if (tn_conn_closing(c))
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
    uint8_t digest[20];
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
    sha1(text, strlen(text), digest);
    base64(digest, sizeof(digest), accept);
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
    int err = 0;

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
}
