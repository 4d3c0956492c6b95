/*
 * codec.c -- encode and decode the gateway's client packets (see codec.h).
 * Integers of 1, 2, 4 or 8 bytes in either byte order; route and seq are
 * sign-extended from their width.
 */
#include <ternd/error.h>

#include "codec.h"

static uint64_t get_uint(const uint8_t *p, int n, int big)
{
    uint64_t v = 0;

    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[big ? i : n - 1 - i] << (8 * (n - 1 - i));
    return v;
}

static void put_uint(uint8_t *p, uint64_t v, int n, int big)
{
    for (int i = 0; i < n; i++)
        p[big ? n - 1 - i : i] = (uint8_t)(v >> (8 * i));
}

static int32_t get_signed(const uint8_t *p, int n, int big)
{
    uint64_t v = get_uint(p, n, big);
    uint64_t sign = (uint64_t)1 << (8 * n - 1);

    /* two's complement from an n-byte field */
    return (int32_t)(int64_t)((v ^ sign) - sign);
}

static int fits(int64_t v, int n)
{
    int64_t lim;

    if (n == 0)
        return v == 0;
    lim = (int64_t)1 << (8 * n - 1);
    return v >= -lim && v < lim;
}

static int width_ok(int n, int zero_ok)
{
    return n == 1 || n == 2 || n == 4 || (zero_ok && n == 0);
}

int gw_codec_valid(const struct gw_codec *c)
{
    return width_ok(c->route_bytes, 0) && width_ok(c->seq_bytes, 1) &&
           c->max_size >= GW_HEARTBEAT_MAX && c->max_size >= gw_codec_head_len(c) &&
           c->max_size <= (uint64_t)UINT32_MAX;
}

size_t gw_codec_head_len(const struct gw_codec *c)
{
    return GW_SIZE_BYTES + 1 + (size_t)c->route_bytes + (size_t)c->seq_bytes;
}

static long decode_heartbeat(const struct gw_codec *c, const uint8_t *b, uint64_t size,
                             struct gw_packet *pk)
{
    if (size != 1 && size != 9)
        return TN_EPROTO;
    pk->has_time = size == 9;
    if (pk->has_time)
        pk->time_ns = (int64_t)get_uint(b + GW_SIZE_BYTES + 1, 8, c->big_endian);
    return (long)(GW_SIZE_BYTES + size);
}

long gw_decode(const struct gw_codec *c, const void *p, size_t n, struct gw_packet *pk)
{
    const uint8_t *b = p;
    uint64_t size;
    size_t off;

    if (n < GW_SIZE_BYTES)
        return 0;
    size = get_uint(b, GW_SIZE_BYTES, c->big_endian);
    if (size == 0)
        return TN_EPROTO;
    if (size + GW_SIZE_BYTES > c->max_size)
        return TN_ETOOBIG;
    if (n < GW_SIZE_BYTES + size)
        return 0;
    pk->heartbeat = (b[GW_SIZE_BYTES] & GW_HEARTBEAT_FLAG) != 0;
    pk->extcode = b[GW_SIZE_BYTES] & GW_EXTCODE_MASK;
    pk->has_time = 0;
    pk->time_ns = 0;
    pk->route = pk->seq = 0;
    pk->data = NULL;
    pk->len = 0;
    if (pk->heartbeat)
        return decode_heartbeat(c, b, size, pk);
    if (size + GW_SIZE_BYTES < gw_codec_head_len(c))
        return TN_EPROTO;
    off = GW_SIZE_BYTES + 1;
    pk->route = get_signed(b + off, c->route_bytes, c->big_endian);
    off += (size_t)c->route_bytes;
    if (c->seq_bytes)
        pk->seq = get_signed(b + off, c->seq_bytes, c->big_endian);
    off += (size_t)c->seq_bytes;
    pk->data = (const char *)b + off;
    pk->len = GW_SIZE_BYTES + size - off;
    return (long)(GW_SIZE_BYTES + size);
}

long gw_encode_head(const struct gw_codec *c, uint8_t *out, int extcode, int32_t route, int32_t seq,
                    size_t len)
{
    size_t head = gw_codec_head_len(c);

    if (!fits(route, c->route_bytes) || !fits(seq, c->seq_bytes) || extcode < 0 ||
        extcode > GW_EXTCODE_MASK)
        return TN_EINVAL;
    if (len > c->max_size || head + len > c->max_size)
        return TN_ETOOBIG;
    put_uint(out, head + len - GW_SIZE_BYTES, GW_SIZE_BYTES, c->big_endian);
    out[GW_SIZE_BYTES] = (uint8_t)extcode;
    put_uint(out + GW_SIZE_BYTES + 1, (uint32_t)route, c->route_bytes, c->big_endian);
    if (c->seq_bytes)
        put_uint(out + GW_SIZE_BYTES + 1 + c->route_bytes, (uint32_t)seq, c->seq_bytes,
                 c->big_endian);
    return (long)head;
}

size_t gw_encode_heartbeat(const struct gw_codec *c, uint8_t *out, int with_time, int64_t time_ns)
{
    put_uint(out, with_time ? 9 : 1, GW_SIZE_BYTES, c->big_endian);
    out[GW_SIZE_BYTES] = GW_HEARTBEAT_FLAG;
    if (!with_time)
        return GW_SIZE_BYTES + 1;
    put_uint(out + GW_SIZE_BYTES + 1, (uint64_t)time_ns, 8, c->big_endian);
    return GW_HEARTBEAT_MAX;
}
