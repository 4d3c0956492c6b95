/*
 * test_stats.c -- the metrics registry and its renderings (Prometheus text,
 * plain text, JSON), and the service/event registry.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <jansson.h>
#include <string.h>

#include "core.h"

/* tn_stats_format calls the module set's stats hooks; the tests pass none
 * and emit labelled samples through a fake set built here instead. */
TN_STAT_DECL(st_req, "ternd_test_requests_total", TN_STAT_COUNTER, "Requests \\ seen\nhere");
TN_STAT_DECL(st_depth, "ternd_test_depth", TN_STAT_GAUGE, "Depth");

static char *render(int format)
{
    struct tn_buf b = TN_BUF_INIT;
    char *s;

    assert_int_equal(tn_stats_format(&b, format, NULL), 0);
    tn_buf_append(&b, "", 1);
    s = strdup(tn_buf_rptr(&b));
    tn_buf_free(&b);
    return s;
}

static void test_prometheus(void **state)
{
    char *s;

    tn_stat_register(&st_req);
    tn_stat_register(&st_req); /* twice is harmless */
    tn_stat_register(&st_depth);
    tn_stat_add(&st_req, 41);
    tn_stat_inc(&st_req);
    tn_stat_set(&st_depth, -3);
    s = render(TN_STATS_PROMETHEUS);
    assert_non_null(strstr(s, "# HELP ternd_test_requests_total Requests \\\\ seen\\nhere\n"
                              "# TYPE ternd_test_requests_total counter\n"
                              "ternd_test_requests_total 42\n"));
    assert_non_null(strstr(s, "# TYPE ternd_test_depth gauge\nternd_test_depth -3\n"));
    assert_non_null(strstr(s, "ternd_info{version=\"" TN_VERSION_STRING "\"} 1\n"));
    assert_non_null(strstr(s, "# TYPE ternd_uptime_seconds gauge\n"));
    /* each metric's HELP appears once */
    assert_non_null(strstr(s, "# HELP ternd_test_depth"));
    assert_null(strstr(strstr(s, "# HELP ternd_test_depth") + 1, "# HELP ternd_test_depth"));
    free(s);

    s = render(TN_STATS_TEXT);
    assert_null(strstr(s, "# HELP"));
    assert_non_null(strstr(s, "ternd_test_requests_total 42\n"));
    free(s);
    tn_stat_unregister(&st_req);
    tn_stat_unregister(&st_depth);
    s = render(TN_STATS_TEXT);
    assert_null(strstr(s, "ternd_test_requests_total"));
    free(s);
}

static void test_json(void **state)
{
    char *s;
    json_t *root, *metrics, *m;
    json_error_t err;
    size_t i;
    int found = 0;

    tn_stat_register(&st_req);
    tn_stat_set(&st_req, 7);
    s = render(TN_STATS_JSON);
    root = json_loads(s, 0, &err);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "version")), TN_VERSION_STRING);
    metrics = json_object_get(root, "metrics");
    assert_true(json_is_array(metrics));
    json_array_foreach(metrics, i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "name")), "ternd_test_requests_total") ==
            0) {
            assert_string_equal(json_string_value(json_object_get(m, "type")), "counter");
            assert_int_equal(json_integer_value(json_object_get(m, "value")), 7);
            found = 1;
        }
    }
    assert_true(found);
    json_decref(root);
    free(s);
    tn_stat_unregister(&st_req);
}

static int ev_a(const char *event, void *arg, void *ud)
{
    *(int *)arg = *(int *)arg * 10 + 1;
    return 0;
}

static int ev_b(const char *event, void *arg, void *ud)
{
    *(int *)arg = *(int *)arg * 10 + 2;
    return (int)(intptr_t)ud;
}

static int ev_c(const char *event, void *arg, void *ud)
{
    *(int *)arg = *(int *)arg * 10 + 3;
    return 0;
}

/* tn_stats_visit: what a plugin exporting elsewhere sees. */
struct seen {
    int depth, info, total;
    double depth_value;
};

static void visit(const struct tn_stats_sample *s, void *ud)
{
    struct seen *w = ud;

    w->total++;
    if (strcmp(s->name, "ternd_test_depth") == 0) {
        w->depth++;
        w->depth_value = s->value;
        assert_int_equal(s->type, TN_STAT_GAUGE);
        assert_string_equal(s->help, "Depth");
        assert_null(s->labels);
    } else if (strcmp(s->name, "ternd_info") == 0) {
        w->info++;
        assert_non_null(s->labels);
        assert_string_equal(s->labels[0], "version");
        assert_string_equal(s->labels[1], TN_VERSION_STRING);
        assert_null(s->labels[2]);
    }
}

static void test_visit_and_render(void **state)
{
    struct seen w = {0};
    struct tn_buf b = TN_BUF_INIT;

    tn_stat_register(&st_depth);
    tn_stat_set(&st_depth, 7);
    assert_int_equal(tn_stats_visit(visit, &w), 0);
    assert_int_equal(w.depth, 1);
    assert_int_equal(w.info, 1);
    assert_true(w.depth_value == 7);
    assert_true(w.total >= 5); /* the process gauges too */
    /* tn_stats_render is tn_stats_format on the running set (none here) */
    assert_int_equal(tn_stats_render(&b, TN_STATS_TEXT), 0);
    tn_buf_append(&b, "", 1);
    assert_non_null(strstr(tn_buf_rptr(&b), "ternd_test_depth 7\n"));
    assert_null(strstr(tn_buf_rptr(&b), "# TYPE"));
    tn_buf_free(&b);
    tn_stat_unregister(&st_depth);
    memset(&w, 0, sizeof(w));
    assert_int_equal(tn_stats_visit(visit, &w), 0);
    assert_int_equal(w.depth, 0);
}

static void test_services_events(void **state)
{
    int x = 5, v = 0;

    assert_int_equal(tn_service_register("svc", &x), 0);
    assert_int_equal(tn_service_register("svc", &v), TN_EEXIST);
    assert_ptr_equal(tn_service_lookup("svc"), &x);
    assert_null(tn_service_lookup("other"));
    tn_service_unregister("svc");
    assert_null(tn_service_lookup("svc"));

    assert_false(tn_event_has("auth.check"));
    tn_event_on("auth.check", ev_a, NULL);
    tn_event_on("auth.check", ev_b, NULL);
    tn_event_on("auth.check", ev_c, NULL);
    tn_event_on("other", ev_c, NULL);
    assert_true(tn_event_has("auth.check"));
    assert_int_equal(tn_event_emit("auth.check", &v), 0);
    assert_int_equal(v, 123); /* in subscription order */
    /* a veto stops the chain and is returned */
    tn_event_off("auth.check", ev_b, NULL);
    tn_event_on("auth.check", ev_b, (void *)(intptr_t)-7);
    v = 0;
    assert_int_equal(tn_event_emit("auth.check", &v), -7);
    assert_int_equal(v, 132);
    tn_event_off("auth.check", ev_a, NULL);
    tn_event_off("auth.check", ev_b, (void *)(intptr_t)-7);
    tn_event_off("auth.check", ev_c, NULL);
    tn_event_off("other", ev_c, NULL);
    assert_false(tn_event_has("auth.check"));
}

/* What a service.up/service.down subscriber saw: the event, the name, and
 * whether the name resolved at that moment. */
struct seen_service {
    char log[128];
};

static int on_service(const char *event, void *arg, void *ud)
{
    struct seen_service *s = ud;
    size_t n = strlen(s->log);

    snprintf(s->log + n, sizeof(s->log) - n, "%s %s %s;", event, (const char *)arg,
             tn_service_lookup(arg) ? "resolves" : "gone");
    return 0;
}

static void test_service_up_down_events(void **state)
{
    struct seen_service s = {""};
    int x = 1;

    tn_event_on(TN_SERVICE_UP_EVENT, on_service, &s);
    tn_event_on(TN_SERVICE_DOWN_EVENT, on_service, &s);
    assert_int_equal(tn_service_register("a.svc", &x), 0);
    assert_int_equal(tn_service_register("a.svc", &x), TN_EEXIST); /* no event */
    tn_service_unregister("a.svc");
    tn_service_unregister("a.svc"); /* not registered: no event */
    assert_string_equal(s.log, "service.up a.svc resolves;service.down a.svc resolves;");
    tn_event_off(TN_SERVICE_UP_EVENT, on_service, &s);
    tn_event_off(TN_SERVICE_DOWN_EVENT, on_service, &s);
}

static void test_strerror(void **state)
{
    assert_string_equal(tn_strerror(0), "success");
    assert_string_equal(tn_strerror(TN_ENOMEM), "out of memory");
    assert_string_equal(tn_strerror(TN_EPEER), "closed by peer");
    assert_string_equal(tn_strerror(-2), "No such file or directory");
    assert_string_equal(tn_strerror(TN_ERRNO_BASE - 999), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prometheus),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_visit_and_render),
        cmocka_unit_test(test_services_events),
        cmocka_unit_test(test_service_up_down_events),
        cmocka_unit_test(test_strerror),
    };
    tn_core_init(tn_loop(), NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
