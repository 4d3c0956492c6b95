/*
 * test_buf.c -- the growable byte buffer: append, printf, consume, reserve
 * (sliding and growing), commit, reset, shrink.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "core.h"

static void test_append_consume(void **state)
{
    struct tn_buf b = TN_BUF_INIT;

    assert_int_equal(tn_buf_rlen(&b), 0);
    assert_int_equal(tn_buf_append(&b, "hello ", 6), 0);
    assert_int_equal(tn_buf_append(&b, "world", 5), 0);
    assert_int_equal(tn_buf_rlen(&b), 11);
    assert_memory_equal(tn_buf_rptr(&b), "hello world", 11);
    tn_buf_consume(&b, 6);
    assert_int_equal(tn_buf_rlen(&b), 5);
    assert_memory_equal(tn_buf_rptr(&b), "world", 5);
    /* reading everything resets the offsets so the space is reused */
    tn_buf_consume(&b, 5);
    assert_int_equal(b.pos, 0);
    assert_int_equal(b.len, 0);
    /* consuming more than there is stops at empty */
    tn_buf_append(&b, "ab", 2);
    tn_buf_consume(&b, 10);
    assert_int_equal(tn_buf_rlen(&b), 0);
    assert_int_equal(tn_buf_append(&b, NULL, 0), 0);
    tn_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
}

static void test_printf(void **state)
{
    struct tn_buf b = TN_BUF_INIT;
    char big[5000];

    assert_int_equal(tn_buf_printf(&b, "%d-%s", 42, "x"), 0);
    assert_int_equal(tn_buf_rlen(&b), 4);
    assert_memory_equal(tn_buf_rptr(&b), "42-x", 4);
    /* a line larger than the free room takes the second path */
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(tn_buf_printf(&b, "[%s]", big), 0);
    assert_int_equal(tn_buf_rlen(&b), 4 + 2 + sizeof(big) - 1);
    assert_int_equal(tn_buf_rptr(&b)[4], '[');
    assert_int_equal(tn_buf_rptr(&b)[tn_buf_rlen(&b) - 1], ']');
    assert_int_equal(tn_buf_rptr(&b)[4 + 1 + 4998], 'q');
    tn_buf_free(&b);
}

static void test_reserve_slides(void **state)
{
    struct tn_buf b = TN_BUF_INIT;
    char chunk[200];
    size_t cap;

    memset(chunk, 'a', sizeof(chunk));
    assert_int_equal(tn_buf_append(&b, chunk, sizeof(chunk)), 0);
    cap = b.cap;
    assert_true(cap >= 200);
    tn_buf_consume(&b, 190);
    /* 10 unread bytes at offset 190: reserving the rest of the capacity
     * moves them to the front instead of growing */
    assert_int_equal(tn_buf_reserve(&b, cap - 10), 0);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.pos, 0);
    assert_int_equal(tn_buf_rlen(&b), 10);
    assert_true(tn_buf_wlen(&b) >= cap - 10);
    /* a larger reserve grows and keeps the content */
    memcpy(tn_buf_wptr(&b), "XYZ", 3);
    tn_buf_commit(&b, 3);
    assert_int_equal(tn_buf_reserve(&b, 10 * cap), 0);
    assert_true(tn_buf_wlen(&b) >= 10 * cap);
    assert_int_equal(tn_buf_rlen(&b), 13);
    assert_memory_equal(tn_buf_rptr(&b) + 10, "XYZ", 3);
    /* absurd sizes fail cleanly */
    assert_int_equal(tn_buf_reserve(&b, SIZE_MAX), TN_ENOMEM);
    assert_int_equal(tn_buf_rlen(&b), 13);
    tn_buf_free(&b);
}

static void test_large_appends(void **state)
{
    struct tn_buf b = TN_BUF_INIT;
    char chunk[1000];
    size_t i, total = 0;

    for (i = 0; i < 1000; i++) {
        memset(chunk, (int)('a' + i % 26), sizeof(chunk));
        assert_int_equal(tn_buf_append(&b, chunk, sizeof(chunk)), 0);
        total += sizeof(chunk);
        if (i % 3 == 0) {
            tn_buf_consume(&b, 500);
            total -= 500;
        }
    }
    assert_int_equal(tn_buf_rlen(&b), total);
    /* the last chunk is intact at the end */
    assert_int_equal(tn_buf_rptr(&b)[total - 1], 'a' + 999 % 26);
    tn_buf_free(&b);
}

static void test_reset_shrink(void **state)
{
    struct tn_buf b = TN_BUF_INIT;

    assert_int_equal(tn_buf_reserve(&b, 100000), 0);
    tn_buf_commit(&b, 100);
    /* not empty: shrink does nothing */
    tn_buf_shrink(&b, 1024);
    assert_true(b.cap >= 100000);
    tn_buf_reset(&b);
    assert_int_equal(tn_buf_rlen(&b), 0);
    tn_buf_shrink(&b, 1024);
    assert_int_equal(b.cap, 1024);
    assert_int_equal(tn_buf_append(&b, "z", 1), 0);
    assert_int_equal(b.cap, 1024);
    tn_buf_consume(&b, 1);
    tn_buf_shrink(&b, 0);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    assert_int_equal(tn_buf_printf(&b, "%s", "again"), 0);
    assert_memory_equal(tn_buf_rptr(&b), "again", 5);
    tn_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_consume), cmocka_unit_test(test_printf),
        cmocka_unit_test(test_reserve_slides), cmocka_unit_test(test_large_appends),
        cmocka_unit_test(test_reset_shrink),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
