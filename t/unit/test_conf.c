/*
 * test_conf.c -- the configuration layer: YAML loading with positions, key
 * tables for every value type, the text parsers, and the exact error lines
 * for a table of bad files (t/unit/conf_cases/NAME.yaml + NAME.expect).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "core.h"

#ifndef TEST_SRCDIR
#define TEST_SRCDIR "."
#endif
#define CASES_DIR TEST_SRCDIR "/t/unit/conf_cases/"

/* ---- a module-like schema using every key type ------------------------------ */

enum { MODE_FAST = 1, MODE_SAFE, MODE_OFF };

struct route {
    char *path;
    struct tn_addr target;
};

struct test_conf {
    int flag;
    int64_t count, any_int;
    uint64_t max_msg_size, block;
    int64_t timeout, retry;
    char *name, *path;
    int mode;
    struct tn_addr listen;
    struct tn_addr_list peers;
    struct tn_str_list tags;
    struct {
        int64_t depth, window;
        struct {
            int64_t level;
        } inner;
    } limits;
    struct route *routes;
    size_t nroutes;
    int block_checks; /* how often the check callback ran */
};

static const struct tn_conf_range count_range = {1, 100};
static const struct tn_conf_range depth_range = {0, 10};
static const struct tn_conf_range level_range = {1, 5};
static const struct tn_conf_range block_range = {512, 1024 * 1024};
static const struct tn_conf_range retry_range = {100, 60 * 1000};
static const struct tn_conf_enum modes[] = {
    {"fast", MODE_FAST}, {"safe", MODE_SAFE}, {"off", MODE_OFF}, {NULL, 0}};

static int check_block(struct tn_conf *cf, const struct tn_conf_node *node,
                       const struct tn_conf_cmd *cmd, void *conf)
{
    struct test_conf *tc = conf;
    uint64_t v = *(uint64_t *)((char *)conf + cmd->offset);

    tc->block_checks++;
    if (v % 512 != 0)
        return tn_conf_error(cf, node, "must be a multiple of 512");
    return 0;
}

static const struct tn_conf_cmd route_table[] = {
    {"path", TN_CONF_STRING, offsetof(struct route, path), NULL, NULL, NULL},
    {"target", TN_CONF_ADDR, offsetof(struct route, target), NULL, NULL, NULL},
    TN_CONF_END};

/* A list of objects: the CUSTOM way, one mapping per route. */
static int set_routes(struct tn_conf *cf, const struct tn_conf_node *node,
                      const struct tn_conf_cmd *cmd, void *conf)
{
    struct test_conf *tc = conf;
    int rc = 0;

    if (tn_conf_is_null(node))
        return 0;
    if (node->type != TN_NODE_SEQ)
        return tn_conf_error(cf, node, "expected a sequence of routes");
    tc->routes = tn_conf_alloc(cf, (node->n + 1) * sizeof(*tc->routes));
    if (!tc->routes)
        return tn_conf_error(cf, node, "out of memory");
    tc->nroutes = node->n;
    for (size_t i = 0; i < node->n; i++) {
        tn_conf_push_index(cf, i);
        if (tn_conf_apply(cf, node->items[i], route_table, &tc->routes[i]) != 0)
            rc = TN_ECONF;
        tn_conf_pop(cf);
    }
    return rc;
}

static const struct tn_conf_cmd inner_table[] = {
    {"level", TN_CONF_INT,
     offsetof(struct test_conf, limits.inner.level) - offsetof(struct test_conf, limits.inner),
     &level_range, NULL, NULL},
    TN_CONF_END};

#define LIM_OFF(f) (offsetof(struct test_conf, limits.f) - offsetof(struct test_conf, limits))

static const struct tn_conf_cmd limits_table[] = {
    {"depth", TN_CONF_INT, LIM_OFF(depth), &depth_range, NULL, NULL},
    {"window", TN_CONF_DURATION, LIM_OFF(window), NULL, NULL, NULL},
    {"inner", TN_CONF_SECTION, LIM_OFF(inner), inner_table, NULL, NULL},
    TN_CONF_END};

#define TC_OFF(f) offsetof(struct test_conf, f)

static const struct tn_conf_cmd test_table[] = {
    {"flag", TN_CONF_BOOL, TC_OFF(flag), NULL, NULL, NULL},
    {"count", TN_CONF_INT, TC_OFF(count), &count_range, NULL, NULL},
    {"any_int", TN_CONF_INT, TC_OFF(any_int), NULL, NULL, NULL},
    {"max_msg_size", TN_CONF_SIZE, TC_OFF(max_msg_size), NULL, NULL, NULL},
    {"block", TN_CONF_SIZE, TC_OFF(block), &block_range, NULL, check_block},
    {"timeout", TN_CONF_DURATION, TC_OFF(timeout), NULL, NULL, NULL},
    {"retry", TN_CONF_DURATION, TC_OFF(retry), &retry_range, NULL, NULL},
    {"name", TN_CONF_STRING, TC_OFF(name), NULL, NULL, NULL},
    {"path", TN_CONF_PATH, TC_OFF(path), NULL, NULL, NULL},
    {"mode", TN_CONF_ENUM, TC_OFF(mode), modes, NULL, NULL},
    {"listen", TN_CONF_ADDR, TC_OFF(listen), NULL, NULL, NULL},
    {"peers", TN_CONF_ADDR_LIST, TC_OFF(peers), NULL, NULL, NULL},
    {"tags", TN_CONF_STR_LIST, TC_OFF(tags), NULL, NULL, NULL},
    {"limits", TN_CONF_SECTION, TC_OFF(limits), limits_table, NULL, NULL},
    {"routes", TN_CONF_CUSTOM, 0, NULL, set_routes, NULL},
    TN_CONF_END};

static void test_defaults(struct test_conf *tc)
{
    memset(tc, 0, sizeof(*tc));
    tc->count = 7;
    tc->mode = MODE_FAST;
    tc->max_msg_size = 1024;
}

/* What a module's check_conf does: cross-key checks named by key. */
static void test_check_conf(struct tn_conf *cf, const struct test_conf *tc)
{
    if (tc->mode == MODE_OFF && tc->listen.len)
        tn_conf_error_key(cf, "listen", "must be ~ when mode is off");
    for (size_t i = 0; i < tc->nroutes; i++) {
        char key[64];
        snprintf(key, sizeof(key), "routes[%zu].target", i);
        if (tc->routes[i].target.len == 0)
            tn_conf_error_key(cf, key, "a target is required");
    }
    if (tc->tags.n && !tc->name)
        tn_conf_error_key(cf, "name", "required when tags are set");
}

/* Run a loaded file the way main.c and module.c do: the daemon section,
 * then each other top-level key as a module section ("test" is known). */
static void run_sections(struct tn_conf *cf, struct tn_daemon_conf *dc, struct test_conf *tc)
{
    const struct tn_conf_node *root = tn_conf_root(cf);

    tn_daemon_conf_default(dc);
    test_defaults(tc);
    if (!root)
        return;
    const struct tn_conf_node *daemon = tn_conf_map_get(root, "daemon");
    tn_conf_set_section(cf, "daemon", daemon);
    if (daemon && !tn_conf_is_null(daemon))
        tn_conf_apply(cf, daemon, tn_daemon_conf_table, dc);
    tn_conf_set_section(cf, NULL, NULL);

    for (size_t i = 0; i < root->n; i++) {
        const char *key = root->keys[i]->value;
        if (strcmp(key, "daemon") == 0)
            continue;
        if (strcmp(key, "test") != 0) {
            tn_conf_push_key(cf, key);
            tn_conf_error(cf, root->keys[i], "unknown module");
            tn_conf_pop(cf);
            continue;
        }
        int before = tn_conf_errors(cf);
        tn_conf_set_section(cf, "test", root->items[i]);
        if (!tn_conf_is_null(root->items[i]))
            tn_conf_apply(cf, root->items[i], test_table, tc);
        if (tn_conf_errors(cf) == before)
            test_check_conf(cf, tc);
        tn_conf_set_section(cf, NULL, NULL);
    }
}

/* ---- the table of bad files ------------------------------------------------- */

static const char *const cases[] = {"syntax_error",
                                    "tab_indent",
                                    "duplicate_key",
                                    "unknown_key_suggest",
                                    "unknown_key",
                                    "expect_mapping",
                                    "expect_mapping_top",
                                    "expect_scalar",
                                    "expect_sequence",
                                    "bad_size",
                                    "size_fraction",
                                    "size_overflow",
                                    "size_range",
                                    "bad_duration",
                                    "duration_range",
                                    "int_range",
                                    "int_overflow",
                                    "bad_bool",
                                    "bad_enum",
                                    "bad_addr",
                                    "bad_port",
                                    "unix_too_long",
                                    "anchor_alias",
                                    "merge_key",
                                    "yaml_tag",
                                    "multiple_errors",
                                    "nested_section",
                                    "list_index",
                                    "error_key",
                                    "null_values",
                                    "empty",
                                    "comment_only",
                                    "non_map_root",
                                    "scalar_root",
                                    "daemon_bad",
                                    "unknown_section",
                                    "multi_doc",
                                    "complex_key",
                                    "too_deep",
                                    "check_callback",
                                    "multiline_value",
                                    "tab_after_utf8",
                                    "bad_utf8",
                                    "not_a_file"};

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *s;
    long len;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    s = calloc(1, (size_t)len + 1);
    if (s && fread(s, 1, (size_t)len, f) != (size_t)len) {
        free(s);
        s = NULL;
    }
    fclose(f);
    return s;
}

/* The error lines with the directory of the case files cut off. */
static char *actual_errors(struct tn_conf *cf)
{
    size_t cap = 1, dirlen = strlen(CASES_DIR);
    char *out;

    for (size_t i = 0; i < tn_conf_error_count(cf); i++)
        cap += strlen(tn_conf_error_text(cf, i)) + 1;
    out = calloc(1, cap);
    assert_non_null(out);
    for (size_t i = 0; i < tn_conf_error_count(cf); i++) {
        const char *line = tn_conf_error_text(cf, i);
        assert_int_equal(strncmp(line, CASES_DIR, dirlen), 0);
        strcat(out, line + dirlen);
        strcat(out, "\n");
    }
    return out;
}

static void test_case_files(void **state)
{
    size_t ncases = sizeof(cases) / sizeof(cases[0]);
    int failures = 0;

    assert_true(ncases >= 25);
    for (size_t i = 0; i < ncases; i++) {
        char ypath[PATH_MAX], epath[PATH_MAX];
        struct tn_daemon_conf dc;
        struct test_conf tc;

        snprintf(ypath, sizeof(ypath), CASES_DIR "%s.yaml", cases[i]);
        snprintf(epath, sizeof(epath), CASES_DIR "%s.expect", cases[i]);
        char *expect = read_text(epath);
        if (!expect)
            fail_msg("missing %s", epath);
        struct tn_conf *cf = tn_conf_load_file(ypath);
        assert_non_null(cf);
        run_sections(cf, &dc, &tc);
        char *got = actual_errors(cf);
        /* the count agrees with the lines */
        assert_int_equal((size_t)tn_conf_errors(cf), tn_conf_error_count(cf));
        if (strcmp(got, expect) != 0) {
            print_error("case %s:\n--- expected\n%s--- got\n%s", cases[i], expect, got);
            failures++;
        }
        free(got);
        free(expect);
        tn_conf_free(cf);
    }
    assert_int_equal(failures, 0);
}

/* ---- positive: every type and unit --------------------------------------------- */

static struct tn_conf *load(const char *text)
{
    struct tn_conf *cf = tn_conf_load_string("test.yaml", text, strlen(text));
    assert_non_null(cf);
    return cf;
}

/* Apply text's "test" section; asserts it has no errors. */
static struct tn_conf *apply_ok(const char *text, struct test_conf *tc)
{
    struct tn_conf *cf = load(text);
    struct tn_daemon_conf dc;

    run_sections(cf, &dc, tc);
    for (size_t i = 0; i < tn_conf_error_count(cf); i++)
        print_error("%s\n", tn_conf_error_text(cf, i));
    assert_int_equal(tn_conf_errors(cf), 0);
    return cf;
}

static void test_all_types(void **state)
{
    struct test_conf tc;
    struct tn_conf *cf = apply_ok("test:\n"
                                  "  flag: Yes\n"
                                  "  count: 42\n"
                                  "  any_int: -9000000000\n"
                                  "  max_msg_size: 10KB\n"
                                  "  block: 1.5KiB\n"
                                  "  timeout: 1m30s\n"
                                  "  retry: 250ms\n"
                                  "  name: \"hello world\"\n"
                                  "  path: /var/lib/x\n"
                                  "  mode: SAFE\n"
                                  "  listen: 127.0.0.1:4150\n"
                                  "  peers: ['[::1]:80', ':9000', unix:/tmp/t.sock]\n"
                                  "  tags: [a, 'b c']\n"
                                  "  limits:\n"
                                  "    depth: 10\n"
                                  "    window: 2h\n"
                                  "    inner: {level: 5}\n"
                                  "  routes:\n"
                                  "    - {path: /a, target: '10.1.2.3:80'}\n"
                                  "    - path: /b\n"
                                  "      target: unix:/tmp/r.sock\n",
                                  &tc);
    const struct sockaddr_in *in = (const struct sockaddr_in *)&tc.listen.sa;
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&tc.peers.v[0].sa;
    const struct sockaddr_in *any = (const struct sockaddr_in *)&tc.peers.v[1].sa;
    const struct sockaddr_un *un = (const struct sockaddr_un *)&tc.peers.v[2].sa;

    assert_int_equal(tc.flag, 1);
    assert_int_equal(tc.count, 42);
    assert_true(tc.any_int == -9000000000LL);
    assert_int_equal(tc.max_msg_size, 10000);
    assert_int_equal(tc.block, 1536);
    assert_int_equal(tc.block_checks, 1);
    assert_int_equal(tc.timeout, 90000);
    assert_int_equal(tc.retry, 250);
    assert_string_equal(tc.name, "hello world");
    assert_string_equal(tc.path, "/var/lib/x");
    assert_int_equal(tc.mode, MODE_SAFE);

    assert_int_equal(in->sin_family, AF_INET);
    assert_int_equal(ntohs(in->sin_port), 4150);
    assert_int_equal(ntohl(in->sin_addr.s_addr), 0x7f000001);
    assert_int_equal(tc.listen.len, sizeof(struct sockaddr_in));
    assert_string_equal(tc.listen.text, "127.0.0.1:4150");
    assert_string_equal(tc.listen.mark.file, "test.yaml");
    assert_int_equal(tc.listen.mark.line, 12);
    assert_int_equal(tc.listen.mark.col, 11);

    assert_int_equal(tc.peers.n, 3);
    assert_int_equal(in6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(in6->sin6_port), 80);
    assert_true(IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr));
    assert_string_equal(tc.peers.v[0].text, "[::1]:80");
    assert_int_equal(any->sin_family, AF_INET);
    assert_int_equal(any->sin_addr.s_addr, htonl(INADDR_ANY));
    assert_int_equal(ntohs(any->sin_port), 9000);
    assert_int_equal(un->sun_family, AF_UNIX);
    assert_string_equal(un->sun_path, "/tmp/t.sock");
    assert_string_equal(tc.peers.v[2].text, "unix:/tmp/t.sock");

    assert_int_equal(tc.tags.n, 2);
    assert_string_equal(tc.tags.v[0], "a");
    assert_string_equal(tc.tags.v[1], "b c");
    assert_int_equal(tc.limits.depth, 10);
    assert_int_equal(tc.limits.window, 2 * 3600 * 1000);
    assert_int_equal(tc.limits.inner.level, 5);
    assert_int_equal(tc.nroutes, 2);
    assert_string_equal(tc.routes[0].path, "/a");
    assert_string_equal(tc.routes[0].target.text, "10.1.2.3:80");
    assert_int_equal(tc.routes[1].target.sa.ss_family, AF_UNIX);
    tn_conf_free(cf);
}

/* Keys that are absent keep the defaults; one scalar is a list of one;
 * null strings, lists, addresses and sections mean "none"/"defaults". */
static void test_defaults_nulls_and_single_items(void **state)
{
    struct test_conf tc;
    struct tn_conf *cf = apply_ok("test:\n"
                                  "  tags: solo\n"
                                  "  name: n\n"
                                  "  peers: 10.0.0.1:1\n"
                                  "  listen: ~\n"
                                  "  limits: ~\n"
                                  "  path: null\n"
                                  "  flag: OFF\n",
                                  &tc);
    assert_int_equal(tc.count, 7);
    assert_int_equal(tc.mode, MODE_FAST);
    assert_int_equal(tc.max_msg_size, 1024);
    assert_int_equal(tc.tags.n, 1);
    assert_string_equal(tc.tags.v[0], "solo");
    assert_null(tc.path);
    assert_int_equal(tc.peers.n, 1);
    assert_string_equal(tc.peers.v[0].text, "10.0.0.1:1");
    assert_int_equal(tc.listen.len, 0);
    assert_int_equal(tc.listen.mark.line, 5);
    assert_int_equal(tc.flag, 0);
    assert_int_equal(tc.block_checks, 0);
    tn_conf_free(cf);

    /* a quoted "~" is text, and an empty list is empty */
    cf = apply_ok("test:\n  name: '~'\n  tags: []\n  peers: []\n", &tc);
    assert_string_equal(tc.name, "~");
    assert_int_equal(tc.tags.n, 0);
    tn_conf_free(cf);
    cf = apply_ok("test:\n  name: ~\n", &tc);
    assert_null(tc.name);
    assert_int_equal(tc.tags.n, 0);
    assert_int_equal(tc.peers.n, 0);
    tn_conf_free(cf);

    /* "test: ~" and "test:" keep every default */
    cf = apply_ok("test:\n", &tc);
    assert_int_equal(tc.count, 7);
    tn_conf_free(cf);
}

static void test_bools(void **state)
{
    static const struct {
        const char *text;
        int value;
    } v[] = {{"true", 1},  {"TRUE", 1},  {"yes", 1}, {"On", 1},
             {"false", 0}, {"False", 0}, {"no", 0},  {"OFF", 0}};

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char text[64];
        struct test_conf tc;
        snprintf(text, sizeof(text), "test:\n  flag: %s\n", v[i].text);
        struct tn_conf *cf = apply_ok(text, &tc);
        assert_int_equal(tc.flag, v[i].value);
        tn_conf_free(cf);
    }
}

/* Bad values are quoted on one line, control characters escaped. */
static void test_value_quoting(void **state)
{
    struct tn_conf *cf = load("test:\n  flag: \"a\\x01\\tb\"\n");
    struct tn_daemon_conf dc;
    struct test_conf tc;

    run_sections(cf, &dc, &tc);
    assert_int_equal(tn_conf_errors(cf), 1);
    assert_string_equal(tn_conf_error_text(cf, 0),
                        "test.yaml:2:9: test.flag: expected a boolean (true/false, yes/no, "
                        "on/off), got \"a\\x01\\tb\"");
    tn_conf_free(cf);
}

static void test_parse_size(void **state)
{
    static const struct {
        const char *text;
        uint64_t value;
    } ok[] = {{"0", 0},
              {"512", 512},
              {"4k", 4096},
              {"4K", 4096},
              {"64KiB", 65536},
              {"1M", 1 << 20},
              {"1MiB", 1 << 20},
              {"2GiB", 2ull << 30},
              {"1T", 1ull << 40},
              {"10KB", 10000},
              {"3MB", 3000000},
              {"1GB", 1000000000},
              {"1.5KiB", 1536},
              {"0.5MB", 500000},
              {"2.25k", 2304},
              {"7B", 7},
              {"+5", 5},
              {"1.000000000000000000000k", 1024},
              {"18446744073709551615", UINT64_MAX},
              {"16777215TiB", 16777215ull << 40}};
    static const char *const bad[] = {"",
                                      "-1",
                                      "1.3KiB",
                                      "0.5",
                                      "12XB",
                                      "KiB",
                                      "1 KiB",
                                      "1.",
                                      ".5k",
                                      "1kib",
                                      "18446744073709551616",
                                      "16777216TiB",
                                      "0x10",
                                      "1e3",
                                      "1.0000000000000000001k"};
    uint64_t v;

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        v = 12345;
        if (tn_parse_size(ok[i].text, &v) != 0)
            fail_msg("size %s refused", ok[i].text);
        assert_true(v == ok[i].value);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (tn_parse_size(bad[i], &v) != TN_EINVAL)
            fail_msg("size \"%s\" accepted", bad[i]);
}

static void test_parse_duration(void **state)
{
    static const struct {
        const char *text;
        int64_t ms;
    } ok[] = {{"0", 0},           {"0s", 0},
              {"250ms", 250},     {"10s", 10000},
              {"5m", 300000},     {"2h", 7200000},
              {"1d", 86400000},   {"1m30s", 90000},
              {"1h30m", 5400000}, {"1d2h3m4s5ms", 93784005},
              {"1.5s", 1500},     {"0.25h", 900000},
              {"2m0s", 120000},   {"+2s", 2000}};
    static const char *const bad[] = {"",
                                      "10",
                                      "-1s",
                                      "1s1m",
                                      "5x",
                                      "1m1m",
                                      "1h30",
                                      "0.5ms",
                                      "1 s",
                                      "s",
                                      "10sec",
                                      "ms5",
                                      "999999999999999d",
                                      "1s-5"};
    int64_t v;

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        v = -1;
        if (tn_parse_duration(ok[i].text, &v) != 0)
            fail_msg("duration %s refused", ok[i].text);
        assert_true(v == ok[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (tn_parse_duration(bad[i], &v) != TN_EINVAL)
            fail_msg("duration \"%s\" accepted", bad[i]);
}

static void test_parse_addr(void **state)
{
    static const char *const ok[] = {"127.0.0.1:0",   "0.0.0.0:65535",    ":1",           "[::]:80",
                                     "[fe80::1]:443", "unix:/run/x.sock", "unix:rel.sock"};
    static const struct {
        const char *text, *reason;
    } bad[] = {{"127.0.0.1", "expected host:port"},
               {"127.0.0.1:65536", "port must be between 0 and 65535"},
               {"127.0.0.1:-1", "bad port"},
               {"127.0.0.1:", "missing port"},
               {"::1:80", "IPv6 addresses need brackets"},
               {"[::1:80", "expected [ipv6]:port"},
               {"[]:80", "empty IPv6 address"},
               {"[127.0.0.1]:80", "not an IPv6 address"},
               {"unix:", "empty unix socket path"},
               {"no-such-host.invalid:80", "cannot resolve host \"no-such-host.invalid\""}};
    struct tn_addr a;
    char err[256], longpath[200];

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (tn_parse_addr(ok[i], &a, err, sizeof(err)) != 0)
            fail_msg("address %s refused: %s", ok[i], err);
        assert_string_equal(a.text, ok[i]);
        assert_true(a.len > 0);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (tn_parse_addr(bad[i].text, &a, err, sizeof(err)) != TN_EINVAL)
            fail_msg("address \"%s\" accepted", bad[i].text);
        if (strncmp(err, bad[i].reason, strlen(bad[i].reason)) != 0)
            fail_msg("address \"%s\": reason \"%s\"", bad[i].text, err);
    }

    /* the longest unix path that fits, and one byte more */
    struct sockaddr_un un;
    memset(longpath, 0, sizeof(longpath));
    memcpy(longpath, "unix:/", 6);
    memset(longpath + 6, 'p', sizeof(un.sun_path) - 2);
    assert_int_equal(tn_parse_addr(longpath, &a, err, sizeof(err)), 0);
    assert_int_equal(strlen(((struct sockaddr_un *)&a.sa)->sun_path), sizeof(un.sun_path) - 1);
    longpath[strlen(longpath)] = 'p';
    assert_int_equal(tn_parse_addr(longpath, &a, err, sizeof(err)), TN_EINVAL);
    assert_non_null(strstr(err, "unix socket path too long (108 bytes, at most 107)"));

    /* a host name goes to the resolver; localhost is always known */
    assert_int_equal(tn_parse_addr("localhost:8080", &a, err, sizeof(err)), 0);
    assert_true(a.sa.ss_family == AF_INET || a.sa.ss_family == AF_INET6);
    assert_string_equal(a.text, "localhost:8080");
    if (a.sa.ss_family == AF_INET)
        assert_int_equal(ntohs(((struct sockaddr_in *)&a.sa)->sin_port), 8080);
    else
        assert_int_equal(ntohs(((struct sockaddr_in6 *)&a.sa)->sin6_port), 8080);
}

static void test_path_made_absolute(void **state)
{
    char cwd[PATH_MAX], want[PATH_MAX + 16];
    struct test_conf tc;
    struct tn_conf *cf;

    assert_non_null(getcwd(cwd, sizeof(cwd)));
    cf = apply_ok("test:\n  path: ./data/q\n", &tc);
    snprintf(want, sizeof(want), "%s/data/q", cwd);
    assert_string_equal(tc.path, want);
    tn_conf_free(cf);
    cf = apply_ok("test:\n  path: logs\n", &tc);
    snprintf(want, sizeof(want), "%s/logs", cwd);
    assert_string_equal(tc.path, want);
    tn_conf_free(cf);
    cf = apply_ok("test:\n  path: .\n", &tc);
    assert_string_equal(tc.path, cwd);
    tn_conf_free(cf);
}

/* The shipped ternd.yaml must say exactly what tn_daemon_conf_default does. */
static void test_daemon_defaults_match_shipped_yaml(void **state)
{
    struct tn_conf *cf = tn_conf_load_file(TEST_SRCDIR "/conf/ternd.yaml");
    struct tn_daemon_conf def, dc;
    char cwd[PATH_MAX], data[PATH_MAX + 8];

    assert_non_null(cf);
    tn_daemon_conf_default(&def);
    tn_daemon_conf_default(&dc);
    memset(&dc.http, 0xff, sizeof(dc.http)); /* all of it must come from the file */
    dc.max_connections = dc.shutdown_timeout = -5;
    dc.log_level = -1;
    dc.dashboard = -1;
    const struct tn_conf_node *daemon = tn_conf_map_get(tn_conf_root(cf), "daemon");
    assert_non_null(daemon);
    tn_conf_set_section(cf, "daemon", daemon);
    assert_int_equal(tn_conf_apply(cf, daemon, tn_daemon_conf_table, &dc), 0);
    assert_int_equal(tn_conf_errors(cf), 0);

    assert_int_equal(dc.log_level, TN_LOG_INFO);
    assert_int_equal(def.log_level, TN_LOG_INFO);
    assert_string_equal(dc.log_file, "stderr");
    assert_null(def.log_file); /* NULL and "stderr" both mean stderr */
    assert_null(dc.pid_file);
    assert_null(def.pid_file);
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    snprintf(data, sizeof(data), "%s/data", cwd);
    assert_string_equal(dc.data_dir, data);
    assert_string_equal(def.data_dir, "./data");
    assert_null(dc.modules_dir);
    assert_null(dc.plugins_dir);
    assert_int_equal(dc.plugins.n, 0);
    assert_int_equal(def.plugins.n, 0);
    assert_string_equal(dc.admin_listen.text, def.admin_listen.text);
    assert_string_equal(def.admin_listen.text, "127.0.0.1:4171");
    assert_int_equal(dc.admin_listen.len, def.admin_listen.len);
    assert_memory_equal(&dc.admin_listen.sa, &def.admin_listen.sa, def.admin_listen.len);
    assert_null(def.admin_listen.mark.file);
    assert_int_equal(dc.max_connections, def.max_connections);
    assert_int_equal(def.max_connections, 10000);
    assert_int_equal(dc.shutdown_timeout, def.shutdown_timeout);
    assert_int_equal(def.shutdown_timeout, 10000);
    assert_int_equal(dc.dashboard, def.dashboard);
    assert_int_equal(def.dashboard, 1);
    assert_memory_equal(&dc.http, &def.http, sizeof(def.http));
    assert_int_equal(def.http.max_header_size, 8192);
    assert_int_equal(def.http.max_body_size, 5 * 1024 * 1024);
    assert_int_equal(def.http.keepalive_timeout, 65000);
    assert_int_equal(def.http.request_timeout, 30000);
    assert_int_equal(def.http.max_conns, 0);
    assert_int_equal(def.http.max_pipeline, 16);
    tn_conf_free(cf);
}

static void test_daemon_settings(void **state)
{
    static const char text[] = "daemon:\n"
                               "  log_level: debug\n"
                               "  log_file: /var/log/ternd.log\n"
                               "  pid_file: /run/ternd.pid\n"
                               "  plugins: [auth, /opt/p/x.so]\n"
                               "  admin_listen: ~\n"
                               "  max_connections: 5\n"
                               "  shutdown_timeout: 0\n"
                               "  dashboard: off\n"
                               "  http:\n"
                               "    max_header_size: 1KiB\n"
                               "    max_body_size: 0\n"
                               "    max_conns: 3\n"
                               "    max_pipeline: 1024\n";
    struct tn_conf *cf = load(text);
    struct tn_daemon_conf dc;
    struct test_conf tc;

    run_sections(cf, &dc, &tc);
    assert_int_equal(tn_conf_errors(cf), 0);
    assert_int_equal(dc.log_level, TN_LOG_DEBUG);
    assert_string_equal(dc.log_file, "/var/log/ternd.log");
    assert_string_equal(dc.pid_file, "/run/ternd.pid");
    assert_int_equal(dc.plugins.n, 2);
    assert_string_equal(dc.plugins.v[1], "/opt/p/x.so");
    assert_int_equal(dc.admin_listen.len, 0); /* off */
    assert_int_equal(dc.max_connections, 5);
    assert_int_equal(dc.shutdown_timeout, 0);
    assert_int_equal(dc.dashboard, 0);
    assert_int_equal(dc.http.max_header_size, 1024);
    assert_int_equal(dc.http.max_body_size, 0);
    assert_int_equal(dc.http.keepalive_timeout, 65000); /* untouched */
    assert_int_equal(dc.http.max_conns, 3);
    assert_int_equal(dc.http.max_pipeline, 1024);
    tn_conf_free(cf);
}

/* ---- the tree, positions, paths, error API -------------------------------------- */

static void test_tree_and_marks(void **state)
{
    struct tn_conf *cf = load("# comment\n"
                              "a:\n"
                              "  b: [x, 'y']\n"
                              "  c: {d: 1}\n"
                              "e: \"q\"\n");
    const struct tn_conf_node *root = tn_conf_root(cf), *a, *b, *c, *e;

    assert_non_null(root);
    assert_int_equal(root->type, TN_NODE_MAP);
    assert_int_equal(root->n, 2);
    assert_string_equal(root->keys[0]->value, "a");
    assert_int_equal(root->keys[0]->mark.line, 2);
    assert_int_equal(root->keys[0]->mark.col, 1);
    assert_string_equal(tn_conf_file(cf), "test.yaml");
    assert_ptr_equal(root->mark.file, tn_conf_file(cf));

    a = tn_conf_map_get(root, "a");
    assert_int_equal(a->type, TN_NODE_MAP);
    assert_int_equal(a->mark.line, 3);
    assert_int_equal(a->mark.col, 3);
    b = tn_conf_map_get(a, "b");
    assert_int_equal(b->type, TN_NODE_SEQ);
    assert_int_equal(b->n, 2);
    assert_int_equal(b->mark.col, 6);
    assert_string_equal(b->items[1]->value, "y");
    assert_int_equal(b->items[1]->vlen, 1);
    assert_int_equal(b->items[0]->plain, 1);
    assert_int_equal(b->items[1]->plain, 0);
    assert_int_equal(b->items[1]->mark.line, 3);
    assert_int_equal(b->items[1]->mark.col, 10);
    c = tn_conf_map_get(a, "c");
    assert_string_equal(tn_conf_map_get(c, "d")->value, "1");
    e = tn_conf_map_get(root, "e");
    assert_int_equal(e->type, TN_NODE_SCALAR);
    assert_int_equal(e->plain, 0);
    assert_null(tn_conf_map_get(root, "z"));
    assert_null(tn_conf_map_get(e, "q")); /* not a mapping */
    assert_null(tn_conf_map_get(NULL, "q"));
    tn_conf_free(cf);

    /* the name given is the file of every mark; empty text is an empty map */
    cf = tn_conf_load_string("<embedded>", "", 0);
    root = tn_conf_root(cf);
    assert_non_null(root);
    assert_int_equal(root->type, TN_NODE_MAP);
    assert_int_equal(root->n, 0);
    assert_string_equal(tn_conf_file(cf), "<embedded>");
    assert_int_equal(tn_conf_errors(cf), 0);
    tn_conf_free(cf);

    /* an empty or null document is an empty mapping too */
    for (int i = 0; i < 2; i++) {
        cf = load(i ? "~\n" : "---\n");
        root = tn_conf_root(cf);
        assert_non_null(root);
        assert_int_equal(root->type, TN_NODE_MAP);
        assert_int_equal(root->n, 0);
        assert_int_equal(tn_conf_errors(cf), 0);
        tn_conf_free(cf);
    }

    /* syntax errors leave no tree */
    cf = load("a: [1\n");
    assert_null(tn_conf_root(cf));
    assert_int_equal(tn_conf_errors(cf), 1);
    assert_int_equal(strncmp(tn_conf_error_text(cf, 0), "test.yaml:2:1: a: syntax error: ", 32), 0);
    assert_null(tn_conf_error_text(cf, 1));
    tn_conf_free(cf);
}

static void test_is_null(void **state)
{
    static const char *const nulls[] = {"~", "null", "Null", "NULL", ""};
    static const char *const not_nulls[] = {"'~'", "\"null\"", "nULL", "none", "0", "[]", "{}"};

    assert_int_equal(tn_conf_is_null(NULL), 1);
    for (size_t i = 0; i < 5; i++) {
        char text[32];
        snprintf(text, sizeof(text), "k: %s\n", nulls[i]);
        struct tn_conf *cf = load(text);
        assert_int_equal(tn_conf_is_null(tn_conf_map_get(tn_conf_root(cf), "k")), 1);
        tn_conf_free(cf);
    }
    for (size_t i = 0; i < sizeof(not_nulls) / sizeof(not_nulls[0]); i++) {
        char text[32];
        snprintf(text, sizeof(text), "k: %s\n", not_nulls[i]);
        struct tn_conf *cf = load(text);
        assert_int_equal(tn_conf_is_null(tn_conf_map_get(tn_conf_root(cf), "k")), 0);
        tn_conf_free(cf);
    }
}

static void test_error_paths_and_order(void **state)
{
    struct tn_conf *cf = load("x:\n  y: 1\n  z: [a, b]\n");
    const struct tn_conf_node *x = tn_conf_map_get(tn_conf_root(cf), "x");
    const struct tn_conf_node *z = tn_conf_map_get(x, "z");

    /* reported out of order: printed by position, ties in report order */
    tn_conf_push_key(cf, "x");
    tn_conf_push_key(cf, "z");
    tn_conf_push_index(cf, 1);
    assert_int_equal(tn_conf_error(cf, z->items[1], "third %d", 3), TN_ECONF);
    tn_conf_pop(cf);
    tn_conf_pop(cf);
    tn_conf_push_key(cf, "y");
    tn_conf_error(cf, tn_conf_map_get(x, "y"), "first");
    tn_conf_error(cf, tn_conf_map_get(x, "y"), "second");
    tn_conf_pop(cf);
    tn_conf_pop(cf);
    tn_conf_error(cf, NULL, "no section: top of the file");
    /* node NULL: the section being applied */
    tn_conf_set_section(cf, "x", x);
    tn_conf_error(cf, NULL, "at the section");
    /* error_key: found, partly found (deepest existing), absent */
    tn_conf_error_key(cf, "z[0]", "by key");
    tn_conf_error_key(cf, "z[5]", "index out of range");
    tn_conf_error_key(cf, "w.v", "absent");
    tn_conf_set_section(cf, NULL, NULL);
    tn_conf_error(cf, NULL, "cleared");

    static const char *const want[] = {
        "test.yaml:1:1: no section: top of the file",
        "test.yaml:1:1: cleared",
        "test.yaml:2:3: x: at the section",
        "test.yaml:2:3: x.w.v: absent",
        "test.yaml:2:6: x.y: first",
        "test.yaml:2:6: x.y: second",
        "test.yaml:3:6: x.z[5]: index out of range",
        "test.yaml:3:7: x.z[0]: by key",
        "test.yaml:3:10: x.z[1]: third 3",
    };
    assert_int_equal(tn_conf_error_count(cf), sizeof(want) / sizeof(want[0]));
    assert_int_equal(tn_conf_errors(cf), sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        assert_string_equal(tn_conf_error_text(cf, i), want[i]);
    tn_conf_pop(cf); /* popping an empty path is harmless */
    tn_conf_free(cf);
}

/* Paths deeper than the messages show still push and pop in balance. */
static void test_deep_path(void **state)
{
    struct tn_conf *cf = load("");

    for (int i = 0; i < 200; i++)
        tn_conf_push_key(cf, "k");
    tn_conf_error(cf, NULL, "deep");
    for (int i = 0; i < 199; i++)
        tn_conf_pop(cf);
    tn_conf_push_index(cf, 3);
    tn_conf_error(cf, NULL, "shallow");
    tn_conf_pop(cf);
    tn_conf_pop(cf);
    tn_conf_error(cf, NULL, "none");
    assert_int_equal(tn_conf_errors(cf), 3);
    assert_non_null(strstr(tn_conf_error_text(cf, 0), ": k.k.k.k."));
    assert_string_equal(tn_conf_error_text(cf, 1), "test.yaml:1:1: k[3]: shallow");
    assert_string_equal(tn_conf_error_text(cf, 2), "test.yaml:1:1: none");
    tn_conf_free(cf);
}

static void test_alloc_and_strdup(void **state)
{
    struct tn_conf *cf = load("");
    unsigned char *small = tn_conf_alloc(cf, 10), *big = tn_conf_alloc(cf, 100000);
    char *s = tn_conf_strdup(cf, "abc");

    assert_non_null(small);
    assert_non_null(big);
    for (size_t i = 0; i < 100000; i++)
        assert_int_equal(big[i], 0);
    for (size_t i = 0; i < 10; i++)
        assert_int_equal(small[i], 0);
    assert_int_equal((uintptr_t)small % _Alignof(max_align_t), 0);
    memset(big, 1, 100000);
    memset(small, 1, 10);
    assert_string_equal(s, "abc");
    assert_null(tn_conf_strdup(cf, NULL));
    for (int i = 0; i < 5000; i++) /* many blocks */
        assert_non_null(tn_conf_alloc(cf, 24));
    tn_conf_free(cf);
    tn_conf_free(NULL);
}

static void test_load_file_errors(void **state)
{
    struct tn_conf *cf = tn_conf_load_file("/nonexistent/ternd.yaml");

    assert_non_null(cf);
    assert_null(tn_conf_root(cf));
    assert_int_equal(tn_conf_errors(cf), 1);
    assert_string_equal(tn_conf_error_text(cf, 0),
                        "/nonexistent/ternd.yaml: cannot read the file: No such file or directory");
    assert_string_equal(tn_conf_file(cf), "/nonexistent/ternd.yaml");
    tn_conf_free(cf);

    cf = tn_conf_load_file(TEST_SRCDIR "/t/unit/conf_cases");
    assert_int_equal(tn_conf_errors(cf), 1);
    assert_string_equal(tn_conf_error_text(cf, 0),
                        TEST_SRCDIR "/t/unit/conf_cases: cannot read the file: Is a directory");
    tn_conf_free(cf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_case_files),
        cmocka_unit_test(test_all_types),
        cmocka_unit_test(test_defaults_nulls_and_single_items),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_value_quoting),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_addr),
        cmocka_unit_test(test_path_made_absolute),
        cmocka_unit_test(test_daemon_defaults_match_shipped_yaml),
        cmocka_unit_test(test_daemon_settings),
        cmocka_unit_test(test_tree_and_marks),
        cmocka_unit_test(test_is_null),
        cmocka_unit_test(test_error_paths_and_order),
        cmocka_unit_test(test_deep_path),
        cmocka_unit_test(test_alloc_and_strdup),
        cmocka_unit_test(test_load_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
