/*
 * zmtp.c -- the ZMTP 3.x codec declared in zmtp.h: greeting, frame and
 * command encoding and decoding, READY properties, socket-type pairs.
 * Stateless; the connection logic that drives it is in zmtp_bind.c.
 */
#include <string.h>
#include <strings.h>
#include <ternd/error.h>

#include "zmtp.h"

#define SIG_PAD 8
#define MECH_LEN 20

void zmtp_greeting_build(uint8_t out[ZMTP_GREETING_LEN], int minor)
{
    memset(out, 0, ZMTP_GREETING_LEN);
    out[0] = 0xff;
    out[9] = 0x7f;
    out[10] = 3;
    out[11] = (uint8_t)minor;
    memcpy(out + 12, "NULL", 4);
    /* as-server (byte 32) and filler stay zero */
}

int zmtp_signature_check(const uint8_t *p, size_t n)
{
    if (n < ZMTP_SIG_LEN)
        return TN_EINVAL;
    /* byte 9's low bit is what tells ZMTP 2+ from 1.0 (libzmq checks the
     * same); the major version must be 3 for this codec */
    if (p[0] != 0xff || (p[9] & 1) == 0 || p[10] < 3)
        return TN_EPROTO;
    return 0;
}

int zmtp_greeting_parse(const uint8_t *p, struct zmtp_greeting *g)
{
    if (zmtp_signature_check(p, ZMTP_GREETING_LEN) != 0)
        return TN_EPROTO;
    g->major = p[10];
    g->minor = p[11];
    memcpy(g->mechanism, p + 12, MECH_LEN);
    g->mechanism[MECH_LEN] = '\0';
    g->as_server = p[32];
    return 0;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

ssize_t zmtp_frame_parse(const uint8_t *p, size_t n, uint64_t max, struct zmtp_frame *f)
{
    size_t hlen;
    uint64_t len;

    if (n < 2)
        return 0;
    if (p[0] & ~(ZMTP_MORE | ZMTP_LONG | ZMTP_COMMAND))
        return TN_EPROTO;
    if ((p[0] & ZMTP_COMMAND) && (p[0] & ZMTP_MORE))
        return TN_EPROTO;
    if (p[0] & ZMTP_LONG) {
        if (n < 9)
            return 0;
        hlen = 9;
        len = get_be64(p + 1);
    } else {
        hlen = 2;
        len = p[1];
    }
    if (len > max)
        return TN_ETOOBIG;
    if (n - hlen < len)
        return 0;
    f->flags = p[0];
    f->body = p + hlen;
    f->len = len;
    return (ssize_t)(hlen + len);
}

size_t zmtp_frame_header(uint8_t hdr[9], int flags, uint64_t len)
{
    flags &= ZMTP_MORE | ZMTP_COMMAND;
    if (len <= 255) {
        hdr[0] = (uint8_t)flags;
        hdr[1] = (uint8_t)len;
        return 2;
    }
    hdr[0] = (uint8_t)(flags | ZMTP_LONG);
    put_be64(hdr + 1, len);
    return 9;
}

int zmtp_frame_append(struct tn_buf *b, int flags, const void *body, size_t len)
{
    uint8_t hdr[9];
    size_t h = zmtp_frame_header(hdr, flags, len);

    if (tn_buf_reserve(b, h + len) != 0)
        return TN_ENOMEM;
    memcpy(tn_buf_wptr(b), hdr, h);
    if (len)
        memcpy(tn_buf_wptr(b) + h, body, len);
    tn_buf_commit(b, h + len);
    return 0;
}

int zmtp_cmd_parse(const uint8_t *body, size_t len, struct zmtp_cmd *c)
{
    if (len < 1 || body[0] == 0 || (size_t)body[0] > len - 1)
        return TN_EPROTO;
    c->nlen = body[0];
    c->name = body + 1;
    c->data = body + 1 + c->nlen;
    c->dlen = len - 1 - c->nlen;
    return 0;
}

int zmtp_cmd_is(const struct zmtp_cmd *c, const char *name)
{
    size_t n = strlen(name);

    return c->nlen == n && memcmp(c->name, name, n) == 0;
}

int zmtp_cmd_append(struct tn_buf *b, const char *name, const void *data, size_t len)
{
    size_t nlen = strlen(name);
    uint8_t hdr[9];
    size_t h;

    if (nlen == 0 || nlen > 255)
        return TN_EINVAL;
    h = zmtp_frame_header(hdr, ZMTP_COMMAND, 1 + nlen + len);
    if (tn_buf_reserve(b, h + 1 + nlen + len) != 0)
        return TN_ENOMEM;
    tn_buf_append(b, hdr, h);
    tn_buf_append(b, (uint8_t[]){(uint8_t)nlen}, 1);
    tn_buf_append(b, name, nlen);
    tn_buf_append(b, data, len);
    return 0;
}

/* One property at p: its name, value and total size; 0 when malformed. */
static size_t prop_next(const uint8_t *p, size_t n, const uint8_t **name, size_t *nlen,
                        const uint8_t **v, size_t *vlen)
{
    uint64_t len;

    if (n < 1 || p[0] == 0 || n < 1 + (size_t)p[0] + 4)
        return 0;
    *nlen = p[0];
    *name = p + 1;
    len = (uint64_t)p[1 + *nlen] << 24 | (uint64_t)p[2 + *nlen] << 16 |
          (uint64_t)p[3 + *nlen] << 8 | p[4 + *nlen];
    if (len > n - 5 - *nlen)
        return 0;
    *v = p + 5 + *nlen;
    *vlen = (size_t)len;
    return 5 + *nlen + (size_t)len;
}

int zmtp_props_valid(const uint8_t *p, size_t n)
{
    const uint8_t *name, *v;
    size_t nlen, vlen, used;

    while (n > 0) {
        if (!(used = prop_next(p, n, &name, &nlen, &v, &vlen)))
            return TN_EPROTO;
        p += used;
        n -= used;
    }
    return 0;
}

int zmtp_prop_find(const uint8_t *p, size_t n, const char *want, const uint8_t **v, size_t *vlen)
{
    size_t wlen = strlen(want), nlen, used;
    const uint8_t *name;

    while (n > 0 && (used = prop_next(p, n, &name, &nlen, v, vlen))) {
        if (nlen == wlen && strncasecmp((const char *)name, want, wlen) == 0)
            return 1;
        p += used;
        n -= used;
    }
    return 0;
}

static int prop_append(struct tn_buf *b, const char *name, const void *v, size_t vlen)
{
    size_t nlen = strlen(name);
    uint8_t len[4] = {(uint8_t)(vlen >> 24), (uint8_t)(vlen >> 16), (uint8_t)(vlen >> 8),
                      (uint8_t)vlen};

    if (tn_buf_append(b, (uint8_t[]){(uint8_t)nlen}, 1) != 0 || tn_buf_append(b, name, nlen) != 0 ||
        tn_buf_append(b, len, 4) != 0 || tn_buf_append(b, v, vlen) != 0)
        return TN_ENOMEM;
    return 0;
}

int zmtp_ready_append(struct tn_buf *b, const char *socket_type, const void *id, size_t idlen)
{
    struct tn_buf props = TN_BUF_INIT;
    int rc = prop_append(&props, "Socket-Type", socket_type, strlen(socket_type));

    if (rc == 0 && idlen > 0)
        rc = prop_append(&props, "Identity", id, idlen > 255 ? 255 : idlen);
    if (rc == 0)
        rc = zmtp_cmd_append(b, "READY", tn_buf_rptr(&props), tn_buf_rlen(&props));
    tn_buf_free(&props);
    return rc;
}

int zmtp_error_append(struct tn_buf *b, const char *reason)
{
    size_t n = strlen(reason);
    uint8_t data[256];

    if (n > 255)
        n = 255;
    data[0] = (uint8_t)n;
    memcpy(data + 1, reason, n);
    return zmtp_cmd_append(b, "ERROR", data, n + 1);
}

/* The valid pairs of 23/ZMTP: each type and the peer types it accepts. */
static const struct {
    const char *type;
    const char *peers[4];
} pairs[] = {
    {"REQ", {"REP", "ROUTER"}},
    {"REP", {"REQ", "DEALER"}},
    {"DEALER", {"REP", "DEALER", "ROUTER"}},
    {"ROUTER", {"REQ", "DEALER", "ROUTER"}},
    {"PUB", {"SUB", "XSUB"}},
    {"XPUB", {"SUB", "XSUB"}},
    {"SUB", {"PUB", "XPUB"}},
    {"XSUB", {"PUB", "XPUB"}},
    {"PUSH", {"PULL"}},
    {"PULL", {"PUSH"}},
    {"PAIR", {"PAIR"}},
};

int zmtp_socket_compatible(const char *ours, const uint8_t *peer, size_t n)
{
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (strcmp(pairs[i].type, ours) != 0)
            continue;
        for (size_t j = 0; j < 4 && pairs[i].peers[j]; j++)
            if (strlen(pairs[i].peers[j]) == n && memcmp(pairs[i].peers[j], peer, n) == 0)
                return 1;
    }
    return 0;
}
