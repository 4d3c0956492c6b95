/*
 * codec.h -- the gateway's client packet format (dobyte/due's):
 *     size(4) | header(1) | route(1/2/4) | seq(0/1/2/4) | data
 * size counts the bytes after itself; header bit 7 marks a heartbeat, bits
 * 0-6 are the extension code. A heartbeat is size=1|0x80, or size=9|0x80|
 * server time (8 bytes, ns). route and seq are signed. Byte order and the
 * widths come from the config. Pure functions: no allocation, any thread.
 */
#ifndef TERND_GATEWAY_CODEC_H
#define TERND_GATEWAY_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define GW_SIZE_BYTES 4
#define GW_HEARTBEAT_FLAG 0x80
#define GW_EXTCODE_MASK 0x7f
#define GW_HEAD_MAX (GW_SIZE_BYTES + 1 + 4 + 4) /* size, header, route, seq */
#define GW_HEARTBEAT_MAX (GW_SIZE_BYTES + 1 + 8)

struct gw_codec {
    int big_endian;    /* byte order of size, route, seq and heartbeat time */
    int route_bytes;   /* 1, 2 or 4 */
    int seq_bytes;     /* 0 (no sequence numbers), 1, 2 or 4 */
    uint64_t max_size; /* largest whole packet, the size field included */
};

struct gw_packet {
    int heartbeat;   /* header bit 7 */
    int extcode;     /* header bits 0-6 */
    int has_time;    /* heartbeat carrying 8 bytes of time */
    int64_t time_ns; /* that time */
    int32_t route;   /* data packets */
    int32_t seq;
    const char *data; /* points into the decoded bytes */
    size_t len;
};

/* Is the codec's configuration valid (widths, size room for a header)? */
int gw_codec_valid(const struct gw_codec *c);

/* Bytes before the data of a data packet: 4 + 1 + route + seq. */
size_t gw_codec_head_len(const struct gw_codec *c);

/*
 * Decode one packet from p[0..n). Returns the bytes it took (> 0), 0 when
 * more bytes are needed, TN_ETOOBIG when its size is over max_size (known
 * from the first 4 bytes already), or TN_EPROTO for a malformed packet (size
 * 0, a data packet shorter than its header, a heartbeat of another length
 * than 1 or 9). pk->data points into p.
 */
long gw_decode(const struct gw_codec *c, const void *p, size_t n, struct gw_packet *pk);

/*
 * Write the head of a data packet carrying len bytes (size, header with
 * extcode, route, seq) into out (GW_HEAD_MAX bytes). Returns its length,
 * TN_EINVAL when route or seq do not fit their widths (signed) or extcode
 * is over 127, TN_ETOOBIG when the packet would exceed max_size.
 */
long gw_encode_head(const struct gw_codec *c, uint8_t *out, int extcode, int32_t route, int32_t seq,
                    size_t len);

/* A heartbeat into out (GW_HEARTBEAT_MAX bytes), with the time when
 * with_time. Returns its length (5 or 13). */
size_t gw_encode_heartbeat(const struct gw_codec *c, uint8_t *out, int with_time, int64_t time_ns);

#endif
