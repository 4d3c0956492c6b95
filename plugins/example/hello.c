/*
 * hello.c -- the smallest useful third-party plugin, built outside the
 * ternd tree against the installed headers (see plugins/README.md):
 *
 *     cc -shared -fPIC $(pkg-config --cflags ternd) -o hello.so hello.c
 *
 * It logs its greeting at start and on every reload, exports how many
 * reloads it has seen, and watches clients come and go through the core's
 * conn.open / conn.close events.
 */
#include <stddef.h>
#include <ternd/ternd.h>

struct hello_conf {
    char *greeting; /* the `hello: {greeting: ...}` key */
};

TN_STAT_DECL(hello_reloads, "ternd_hello_reloads_total", TN_STAT_COUNTER,
             "Reloads seen by the hello plugin");
TN_STAT_DECL(hello_accepted, "ternd_hello_connections_total", TN_STAT_COUNTER,
             "Connections accepted, as seen through conn.open");
TN_STAT_DECL(hello_open, "ternd_hello_connections_open", TN_STAT_GAUGE,
             "Connections open, as seen through conn.open and conn.close");

static int on_open(const char *event, void *arg, void *ud)
{
    const struct tn_conn *c = arg;

    (void)event, (void)ud;
    tn_stat_inc(&hello_accepted);
    tn_stat_inc(&hello_open);
    tn_log_debug("hello", "%s connected", c->peer);
    return 0;
}

static int on_close(const char *event, void *arg, void *ud)
{
    (void)event, (void)arg, (void)ud;
    tn_stat_dec(&hello_open);
    return 0;
}

static int hello_create_conf(struct tn_mod *m, void *conf)
{
    struct hello_conf *c = conf;

    (void)m;
    c->greeting = "hello, world"; /* the default when the section is absent */
    return 0;
}

static int hello_stop(struct tn_mod *m)
{
    (void)m;
    tn_event_off(TN_CONN_OPEN_EVENT, on_open, NULL);
    tn_event_off(TN_CONN_CLOSE_EVENT, on_close, NULL);
    tn_stat_unregister(&hello_reloads);
    tn_stat_unregister(&hello_accepted);
    tn_stat_unregister(&hello_open);
    return 0;
}

static int hello_start(struct tn_mod *m)
{
    const struct hello_conf *c = m->conf;

    tn_stat_register(&hello_reloads);
    tn_stat_register(&hello_accepted);
    tn_stat_register(&hello_open);
    if (tn_event_on(TN_CONN_OPEN_EVENT, on_open, NULL) != 0 ||
        tn_event_on(TN_CONN_CLOSE_EVENT, on_close, NULL) != 0) {
        hello_stop(m); /* a failed start gets no stop from the core */
        return TN_ENOMEM;
    }
    tn_log_info("hello", "%s", c->greeting);
    return 0;
}

static int hello_reload(struct tn_mod *m, void *new_conf)
{
    const struct hello_conf *c = new_conf; /* m->conf still holds the old one */

    (void)m;
    tn_stat_inc(&hello_reloads);
    tn_log_info("hello", "%s (reload %lld)", c->greeting, (long long)tn_stat_get(&hello_reloads));
    return 0;
}

static const struct tn_conf_cmd hello_conf_table[] = {
    {"greeting", TN_CONF_STRING, offsetof(struct hello_conf, greeting), NULL, NULL, NULL},
    TN_CONF_END};

/* The one exported symbol; the file name (hello.so) must match the name. */
TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("hello", "1.0"),
    NULL, /* deps */
    hello_conf_table,
    sizeof(struct hello_conf),
    hello_create_conf,
    NULL, /* check_conf */
    NULL, /* init */
    hello_start,
    hello_stop,
    NULL, /* fini */
    hello_reload,
    NULL, /* stats: the registered counter is enough */
};
