/*
 * test_zmtp.c -- the ZMTP 3.x codec: greeting build/parse and signature
 * checks, short/long frames and their limits, commands, READY properties,
 * ERROR, and the socket-type pairs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "core.h"
#include "zmtp.h"

static void test_greeting(void **state)
{
    uint8_t g[ZMTP_GREETING_LEN];
    struct zmtp_greeting pg;

    zmtp_greeting_build(g, 1);
    assert_int_equal(g[0], 0xff);
    assert_int_equal(g[9], 0x7f);
    assert_int_equal(g[10], 3);
    assert_int_equal(g[11], 1);
    assert_memory_equal(g + 12, "NULL\0\0\0\0", 8);
    assert_int_equal(zmtp_signature_check(g, ZMTP_SIG_LEN), 0);
    assert_int_equal(zmtp_greeting_parse(g, &pg), 0);
    assert_int_equal(pg.major, 3);
    assert_int_equal(pg.minor, 1);
    assert_string_equal(pg.mechanism, "NULL");
    assert_int_equal(pg.as_server, 0);
    /* too short to decide, not ZMTP, ZMTP 1.0 (byte 9 even), ZMTP 2 */
    assert_int_equal(zmtp_signature_check(g, 10), TN_EINVAL);
    g[0] = 'G';
    assert_int_equal(zmtp_signature_check(g, ZMTP_SIG_LEN), TN_EPROTO);
    g[0] = 0xff;
    g[9] = 0x00;
    assert_int_equal(zmtp_signature_check(g, ZMTP_SIG_LEN), TN_EPROTO);
    g[9] = 0x7f;
    g[10] = 1;
    assert_int_equal(zmtp_signature_check(g, ZMTP_SIG_LEN), TN_EPROTO);
    assert_int_equal(zmtp_greeting_parse(g, &pg), TN_EPROTO);
}

static void test_frames_short_long(void **state)
{
    struct tn_buf b = TN_BUF_INIT;
    struct zmtp_frame f;
    uint8_t big[300];
    const uint8_t *p;

    memset(big, 'x', sizeof(big));
    assert_int_equal(zmtp_frame_append(&b, ZMTP_MORE, "abc", 3), 0);
    assert_int_equal(zmtp_frame_append(&b, 0, big, sizeof(big)), 0);
    assert_int_equal(zmtp_frame_append(&b, 0, NULL, 0), 0);
    assert_int_equal(tn_buf_rlen(&b), 2 + 3 + 9 + 300 + 2);
    p = (const uint8_t *)tn_buf_rptr(&b);
    assert_int_equal(p[0], 0x01);
    assert_int_equal(p[1], 3);
    /* every prefix shorter than the frame asks for more */
    for (size_t n = 0; n < 5; n++)
        assert_int_equal(zmtp_frame_parse(p, n, 1000, &f), 0);
    assert_int_equal(zmtp_frame_parse(p, tn_buf_rlen(&b), 1000, &f), 5);
    assert_int_equal(f.flags, ZMTP_MORE);
    assert_int_equal(f.len, 3);
    assert_memory_equal(f.body, "abc", 3);
    p += 5;
    assert_int_equal(p[0], ZMTP_LONG);
    for (size_t n = 0; n < 309; n++)
        assert_int_equal(zmtp_frame_parse(p, n, 1000, &f), 0);
    assert_int_equal(zmtp_frame_parse(p, 309, 1000, &f), 309);
    assert_int_equal(f.len, 300);
    assert_int_equal(f.flags & ZMTP_MORE, 0);
    /* over the limit: refused from the header alone */
    assert_int_equal(zmtp_frame_parse(p, 9, 299, &f), TN_ETOOBIG);
    p += 309;
    assert_int_equal(zmtp_frame_parse(p, 2, 1000, &f), 2);
    assert_int_equal(f.len, 0);
    tn_buf_free(&b);
}

static void test_frames_bad_flags(void **state)
{
    struct zmtp_frame f;
    const uint8_t reserved[] = {0x08, 0};
    const uint8_t cmd_more[] = {ZMTP_COMMAND | ZMTP_MORE, 0};
    /* a long header announcing 2^63 bytes must not wrap */
    const uint8_t huge[] = {ZMTP_LONG, 0x80, 0, 0, 0, 0, 0, 0, 1};

    assert_int_equal(zmtp_frame_parse(reserved, 2, 10, &f), TN_EPROTO);
    assert_int_equal(zmtp_frame_parse(cmd_more, 2, 10, &f), TN_EPROTO);
    assert_int_equal(zmtp_frame_parse(huge, 9, UINT64_MAX - 100, &f), 0);
    assert_int_equal(zmtp_frame_parse(huge, 9, 1 << 20, &f), TN_ETOOBIG);
}

static void test_commands_ready(void **state)
{
    struct tn_buf b = TN_BUF_INIT;
    struct zmtp_frame f;
    struct zmtp_cmd c;
    const uint8_t *v;
    size_t vlen;
    ssize_t used;

    assert_int_equal(zmtp_ready_append(&b, "ROUTER", "id1", 3), 0);
    used = zmtp_frame_parse((const uint8_t *)tn_buf_rptr(&b), tn_buf_rlen(&b), 1000, &f);
    assert_int_equal(used, (ssize_t)tn_buf_rlen(&b));
    assert_int_equal(f.flags, ZMTP_COMMAND);
    assert_int_equal(zmtp_cmd_parse(f.body, f.len, &c), 0);
    assert_true(zmtp_cmd_is(&c, "READY"));
    assert_false(zmtp_cmd_is(&c, "READ"));
    assert_int_equal(zmtp_props_valid(c.data, c.dlen), 0);
    /* names match case-insensitively */
    assert_int_equal(zmtp_prop_find(c.data, c.dlen, "socket-type", &v, &vlen), 1);
    assert_int_equal(vlen, 6);
    assert_memory_equal(v, "ROUTER", 6);
    assert_int_equal(zmtp_prop_find(c.data, c.dlen, "IDENTITY", &v, &vlen), 1);
    assert_memory_equal(v, "id1", 3);
    assert_int_equal(zmtp_prop_find(c.data, c.dlen, "Resource", &v, &vlen), 0);
    /* a value length past the end, an empty name: malformed */
    assert_int_equal(zmtp_props_valid(c.data, c.dlen - 1), TN_EPROTO);
    assert_int_equal(zmtp_props_valid((const uint8_t *)"\0\0\0\0\0", 5), TN_EPROTO);
    assert_int_equal(zmtp_props_valid(NULL, 0), 0);
    /* command bodies: empty, zero-length name, name past the end */
    assert_int_equal(zmtp_cmd_parse((const uint8_t *)"", 0, &c), TN_EPROTO);
    assert_int_equal(zmtp_cmd_parse((const uint8_t *)"\0", 1, &c), TN_EPROTO);
    assert_int_equal(zmtp_cmd_parse((const uint8_t *)"\5PING", 5, &c), TN_EPROTO);
    assert_int_equal(zmtp_cmd_parse((const uint8_t *)"\4PING\0\0ctx", 10, &c), 0);
    assert_true(zmtp_cmd_is(&c, "PING"));
    assert_int_equal(c.dlen, 5);
    tn_buf_free(&b);
}

static void test_error_and_subscribe(void **state)
{
    struct tn_buf b = TN_BUF_INIT;
    struct zmtp_frame f;
    struct zmtp_cmd c;
    char reason[400];
    ssize_t used;

    memset(reason, 'r', sizeof(reason) - 1);
    reason[sizeof(reason) - 1] = '\0';
    assert_int_equal(zmtp_error_append(&b, reason), 0);
    used = zmtp_frame_parse((const uint8_t *)tn_buf_rptr(&b), tn_buf_rlen(&b), 1000, &f);
    assert_true(used > 0);
    assert_int_equal(f.flags, ZMTP_COMMAND | ZMTP_LONG);
    assert_int_equal(zmtp_cmd_parse(f.body, f.len, &c), 0);
    assert_true(zmtp_cmd_is(&c, "ERROR"));
    assert_int_equal(c.data[0], 255);
    assert_int_equal(c.dlen, 256);
    tn_buf_consume(&b, (size_t)used);
    assert_int_equal(zmtp_cmd_append(&b, "SUBSCRIBE", "top", 3), 0);
    assert_memory_equal(tn_buf_rptr(&b), "\x04\x0d\x09SUBSCRIBEtop", 15);
    assert_int_equal(zmtp_cmd_append(&b, "", "x", 1), TN_EINVAL);
    tn_buf_free(&b);
}

static void test_socket_pairs(void **state)
{
    assert_true(zmtp_socket_compatible("PUB", (const uint8_t *)"SUB", 3));
    assert_true(zmtp_socket_compatible("PUB", (const uint8_t *)"XSUB", 4));
    assert_false(zmtp_socket_compatible("PUB", (const uint8_t *)"PUB", 3));
    assert_true(zmtp_socket_compatible("SUB", (const uint8_t *)"XPUB", 4));
    assert_true(zmtp_socket_compatible("PULL", (const uint8_t *)"PUSH", 4));
    assert_false(zmtp_socket_compatible("PULL", (const uint8_t *)"PUSHX", 5));
    assert_true(zmtp_socket_compatible("PUSH", (const uint8_t *)"PULL", 4));
    assert_true(zmtp_socket_compatible("ROUTER", (const uint8_t *)"REQ", 3));
    assert_true(zmtp_socket_compatible("ROUTER", (const uint8_t *)"DEALER", 6));
    assert_false(zmtp_socket_compatible("ROUTER", (const uint8_t *)"REP", 3));
    assert_false(zmtp_socket_compatible("NOPE", (const uint8_t *)"REQ", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting),
        cmocka_unit_test(test_frames_short_long),
        cmocka_unit_test(test_frames_bad_flags),
        cmocka_unit_test(test_commands_ready),
        cmocka_unit_test(test_error_and_subscribe),
        cmocka_unit_test(test_socket_pairs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
