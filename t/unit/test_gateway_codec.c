/*
 * test_gateway_codec.c -- the gateway's packet codec: round trips for every
 * width and byte order, split and merged packets, oversize, malformed
 * headers, heartbeats with and without time, signed ranges.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>
#include <ternd/error.h>

#include "codec.h"

static struct gw_codec codec(int big, int rb, int sb)
{
    struct gw_codec c = {big, rb, sb, 64 * 1024};
    return c;
}

/* Encode a whole packet into out; returns its length. */
static size_t make(const struct gw_codec *c, uint8_t *out, int32_t route, int32_t seq,
                   const char *data, size_t len)
{
    long h = gw_encode_head(c, out, 0, route, seq, len);

    assert_true(h > 0);
    memcpy(out + h, data, len);
    return (size_t)h + len;
}

static void test_valid_configs(void **state)
{
    static const int widths[] = {0, 1, 2, 3, 4, 8};
    for (size_t r = 0; r < 6; r++)
        for (size_t s = 0; s < 6; s++) {
            struct gw_codec c = codec(1, widths[r], widths[s]);
            int ok = (widths[r] == 1 || widths[r] == 2 || widths[r] == 4) &&
                     (widths[s] == 0 || widths[s] == 1 || widths[s] == 2 || widths[s] == 4);
            assert_int_equal(gw_codec_valid(&c), ok);
        }
    struct gw_codec small = {1, 2, 2, 8};
    assert_false(gw_codec_valid(&small));
}

/* Every width and byte order: extreme route/seq values survive a round trip,
 * and the bytes on the wire are in the configured order. */
static void test_roundtrip_all_widths(void **state)
{
    static const int rws[] = {1, 2, 4}, sws[] = {0, 1, 2, 4};
    uint8_t buf[256];
    struct gw_packet pk;

    for (int big = 0; big <= 1; big++)
        for (size_t r = 0; r < 3; r++)
            for (size_t s = 0; s < 4; s++) {
                struct gw_codec c = codec(big, rws[r], sws[s]);
                int32_t rmax = (int32_t)(((int64_t)1 << (8 * rws[r] - 1)) - 1);
                int32_t rmin = -rmax - 1;
                int32_t smax = sws[s] ? (int32_t)(((int64_t)1 << (8 * sws[s] - 1)) - 1) : 0;
                int32_t vals[][2] = {{rmax, smax}, {rmin, sws[s] ? -smax - 1 : 0}, {1, 0}};
                for (size_t v = 0; v < 3; v++) {
                    size_t n = make(&c, buf, vals[v][0], vals[v][1], "abc", 3);
                    assert_int_equal(n, 4 + 1 + rws[r] + sws[s] + 3);
                    assert_int_equal(gw_decode(&c, buf, n, &pk), (long)n);
                    assert_false(pk.heartbeat);
                    assert_int_equal(pk.route, vals[v][0]);
                    assert_int_equal(pk.seq, vals[v][1]);
                    assert_int_equal(pk.len, 3);
                    assert_memory_equal(pk.data, "abc", 3);
                }
                /* size field: n - 4 in the chosen order */
                make(&c, buf, 1, 0, "abc", 3);
                uint32_t size = (uint32_t)(1 + rws[r] + sws[s] + 3);
                if (big)
                    assert_int_equal(buf[3], size);
                else
                    assert_int_equal(buf[0], size);
            }
}

static void test_wire_bytes(void **state)
{
    struct gw_codec c = codec(1, 2, 2);
    uint8_t buf[32];
    static const uint8_t big[] = {0, 0, 0, 7, 0, 0x01, 0x02, 0xff, 0xfe, 'h', 'i'};
    static const uint8_t little[] = {7, 0, 0, 0, 0, 0x02, 0x01, 0xfe, 0xff, 'h', 'i'};

    assert_int_equal(make(&c, buf, 0x0102, -2, "hi", 2), sizeof(big));
    assert_memory_equal(buf, big, sizeof(big));
    c.big_endian = 0;
    assert_int_equal(make(&c, buf, 0x0102, -2, "hi", 2), sizeof(little));
    assert_memory_equal(buf, little, sizeof(little));
}

static void test_out_of_range(void **state)
{
    struct gw_codec c = codec(1, 1, 0);
    uint8_t buf[32];

    assert_int_equal(gw_encode_head(&c, buf, 0, 128, 0, 0), TN_EINVAL);
    assert_int_equal(gw_encode_head(&c, buf, 0, -129, 0, 0), TN_EINVAL);
    /* no sequence numbers: only seq 0 is encodable */
    assert_int_equal(gw_encode_head(&c, buf, 0, 1, 5, 0), TN_EINVAL);
    assert_int_equal(gw_encode_head(&c, buf, 128, 1, 0, 0), TN_EINVAL);
    assert_int_equal(gw_encode_head(&c, buf, 0, 127, 0, 0), 6);
    c = codec(0, 2, 2);
    assert_int_equal(gw_encode_head(&c, buf, 0, 1, 32768, 0), TN_EINVAL);
    assert_int_equal(gw_encode_head(&c, buf, 0, 1, -32768, 0), 9);
}

/* A packet arriving one byte at a time decodes only when complete. */
static void test_split(void **state)
{
    struct gw_codec c = codec(1, 2, 2);
    uint8_t buf[64];
    struct gw_packet pk;
    size_t n = make(&c, buf, 7, 9, "payload", 7);

    for (size_t i = 0; i < n; i++)
        assert_int_equal(gw_decode(&c, buf, i, &pk), 0);
    assert_int_equal(gw_decode(&c, buf, n, &pk), (long)n);
    assert_int_equal(pk.route, 7);
    assert_int_equal(pk.seq, 9);
}

/* Several packets in one read (with a heartbeat in the middle) decode one
 * after another; a partial tail waits. */
static void test_merged(void **state)
{
    struct gw_codec c = codec(0, 4, 1);
    uint8_t buf[256];
    struct gw_packet pk;
    size_t n = 0, off = 0;
    long r;

    n += make(&c, buf + n, 1, 1, "one", 3);
    n += gw_encode_heartbeat(&c, buf + n, 0, 0);
    n += make(&c, buf + n, 2, 2, "", 0);
    n += make(&c, buf + n, 3, 3, "three", 5);
    r = gw_decode(&c, buf + off, n - 2 - off, &pk);
    assert_int_equal(pk.route, 1);
    assert_memory_equal(pk.data, "one", 3);
    off += (size_t)r;
    r = gw_decode(&c, buf + off, n - 2 - off, &pk);
    assert_int_equal(r, 5);
    assert_true(pk.heartbeat);
    off += (size_t)r;
    r = gw_decode(&c, buf + off, n - 2 - off, &pk);
    assert_int_equal(pk.route, 2);
    assert_int_equal(pk.len, 0);
    off += (size_t)r;
    /* the last packet lacks 2 bytes */
    assert_int_equal(gw_decode(&c, buf + off, n - 2 - off, &pk), 0);
    r = gw_decode(&c, buf + off, n - off, &pk);
    assert_int_equal(off + (size_t)r, n);
    assert_int_equal(pk.route, 3);
    assert_memory_equal(pk.data, "three", 5);
}

/* Oversize is known from the size field alone; encoding refuses too. */
static void test_oversize(void **state)
{
    struct gw_codec c = codec(1, 2, 2);
    uint8_t buf[16];
    struct gw_packet pk;

    c.max_size = 100;
    /* 4 + 96 = 100 bytes: allowed (but incomplete) */
    memcpy(buf, "\0\0\0\x60\0", 5);
    assert_int_equal(gw_decode(&c, buf, 5, &pk), 0);
    memcpy(buf, "\0\0\0\x61\0", 5);
    assert_int_equal(gw_decode(&c, buf, 4, &pk), TN_ETOOBIG);
    memcpy(buf, "\xff\xff\xff\xff", 4);
    assert_int_equal(gw_decode(&c, buf, 4, &pk), TN_ETOOBIG);
    assert_int_equal(gw_encode_head(&c, buf, 0, 1, 1, 91), 9);
    assert_int_equal(gw_encode_head(&c, buf, 0, 1, 1, 92), TN_ETOOBIG);
    assert_int_equal(gw_encode_head(&c, buf, 0, 1, 1, SIZE_MAX), TN_ETOOBIG);
}

static void test_bad_header(void **state)
{
    struct gw_codec c = codec(1, 2, 2);
    struct gw_packet pk;

    /* size 0 */
    assert_int_equal(gw_decode(&c, "\0\0\0\0", 4, &pk), TN_EPROTO);
    /* a data packet shorter than header + route + seq */
    assert_int_equal(gw_decode(&c, "\0\0\0\x04\0\0\1\0", 8, &pk), TN_EPROTO);
    /* heartbeats are 1 or 9 bytes long */
    assert_int_equal(gw_decode(&c, "\0\0\0\x02\x80\0", 6, &pk), TN_EPROTO);
    assert_int_equal(gw_decode(&c, "\0\0\0\x05\x80\0\0\0\0", 9, &pk), TN_EPROTO);
    /* a data packet with an extension code passes it through */
    assert_int_equal(gw_decode(&c, "\0\0\0\x05\x05\0\1\0\2", 9, &pk), 9);
    assert_int_equal(pk.extcode, 5);
    assert_int_equal(pk.route, 1);
    assert_int_equal(pk.seq, 2);
}

static void test_heartbeat(void **state)
{
    uint8_t buf[GW_HEARTBEAT_MAX];
    struct gw_packet pk;

    for (int big = 0; big <= 1; big++) {
        struct gw_codec c = codec(big, 1, 0);
        assert_int_equal(gw_encode_heartbeat(&c, buf, 0, 0), 5);
        assert_int_equal(buf[4], 0x80);
        assert_int_equal(buf[big ? 3 : 0], 1);
        assert_int_equal(gw_decode(&c, buf, 5, &pk), 5);
        assert_true(pk.heartbeat);
        assert_false(pk.has_time);
        assert_int_equal(gw_encode_heartbeat(&c, buf, 1, 0x0102030405060708LL), 13);
        assert_int_equal(buf[big ? 5 : 12], 0x01);
        assert_int_equal(gw_decode(&c, buf, 12, &pk), 0);
        assert_int_equal(gw_decode(&c, buf, 13, &pk), 13);
        assert_true(pk.heartbeat);
        assert_true(pk.has_time);
        assert_int_equal(pk.time_ns, 0x0102030405060708LL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_configs), cmocka_unit_test(test_roundtrip_all_widths),
        cmocka_unit_test(test_wire_bytes),    cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_split),         cmocka_unit_test(test_merged),
        cmocka_unit_test(test_oversize),      cmocka_unit_test(test_bad_header),
        cmocka_unit_test(test_heartbeat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
