/*
 * main.c -- ternd's entry point: command line, choosing and checking the
 * configuration, starting the modules, the signal-driven lifecycle
 * (SIGHUP reload, SIGTERM/SIGINT graceful stop, SIGUSR1 log reopen) and the
 * systemd notifications that go with it.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

extern const char tn_default_conf[];
extern const size_t tn_default_conf_len;

#define EMBEDDED_NAME "<embedded>"

/* One loaded configuration: the file's generation, its daemon section and
 * the module set it asks for. */
struct generation {
    struct tn_conf *cf;
    struct tn_daemon_conf dc;
    struct tn_modset *ms;
};

static struct {
    const char *conf_path; /* NULL: the embedded default */
    struct generation *run;
    ev_signal sig_hup, sig_term, sig_int, sig_usr1;
    ev_timer watchdog, drain;
    int64_t drain_deadline;
    int stopping;
    int pid_written;
} g;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ternd [-c FILE] [-t] [-d] [-V] [-h]\n"
            "  -c FILE  configuration file (default: conf/ternd.yaml beside the install\n"
            "           prefix, then %s/ternd.yaml, then the built-in default)\n"
            "  -t       check the configuration, scripts and modules, then exit\n"
            "  -d       run in the background (default: foreground, as systemd wants)\n"
            "  -V       print the version and exit\n"
            "  -h       this help\n",
            TERND_SYSCONF_DIR);
}

static int readable(const char *path) { return access(path, R_OK) == 0; }

/* -c, else conf/ternd.yaml next to the binary's prefix, else sysconfdir,
 * else NULL for the embedded copy of conf/ternd.yaml. */
static const char *find_conf(const char *given)
{
    static char buf[PATH_MAX];
    const char *exe = tn_exe_dir();

    if (given)
        return given;
    if (exe) {
        snprintf(buf, sizeof(buf), "%s/../conf/ternd.yaml", exe);
        if (readable(buf))
            return buf;
    }
    snprintf(buf, sizeof(buf), "%s/ternd.yaml", TERND_SYSCONF_DIR);
    if (readable(buf))
        return buf;
    return NULL;
}

static void generation_free(struct generation *gen)
{
    if (!gen)
        return;
    tn_modset_free(gen->ms);
    if (gen->cf)
        tn_conf_free(gen->cf);
    free(gen);
}

/* Load and check a whole configuration; on errors return NULL after
 * handing each message to report (stderr at start, the log on reload). */
static struct generation *generation_load(const char *path, struct generation *reuse,
                                          void (*report)(const char *line))
{
    struct generation *gen = calloc(1, sizeof(*gen));
    const struct tn_conf_node *root;

    if (!gen) {
        report("out of memory");
        return NULL;
    }
    gen->cf = path ? tn_conf_load_file(path)
                   : tn_conf_load_string(EMBEDDED_NAME, tn_default_conf, tn_default_conf_len);
    if (!gen->cf) {
        report("out of memory");
        free(gen);
        return NULL;
    }
    tn_daemon_conf_default(&gen->dc);
    root = tn_conf_root(gen->cf);
    if (root) {
        const struct tn_conf_node *daemon = tn_conf_map_get(root, "daemon");
        tn_conf_set_section(gen->cf, "daemon", daemon);
        if (daemon && !tn_conf_is_null(daemon))
            tn_conf_apply(gen->cf, daemon, tn_daemon_conf_table, &gen->dc);
        tn_conf_set_section(gen->cf, NULL, NULL);
        /* module sections are checked even when the daemon section had
         * errors, so one run reports every problem of the file */
        gen->ms = tn_modset_prepare(gen->cf, &gen->dc, reuse ? reuse->ms : NULL);
    }
    if (tn_conf_errors(gen->cf)) {
        for (size_t i = 0; i < tn_conf_error_count(gen->cf); i++)
            report(tn_conf_error_text(gen->cf, i));
        generation_free(gen);
        return NULL;
    }
    if (!gen->ms) {
        report("out of memory");
        generation_free(gen);
        return NULL;
    }
    return gen;
}

static void report_stderr(const char *line) { fprintf(stderr, "ternd: %s\n", line); }

static void report_log(const char *line) { tn_log_error("core", "%s", line); }

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);

    if (n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Refuse to start over a live process; replace a stale pid file. */
static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;
    char tmp[PATH_MAX];

    if (f) {
        if (fscanf(f, "%ld", &pid) == 1 && pid > 0 && pid != (long)getpid() &&
            (kill((pid_t)pid, 0) == 0 || errno == EPERM)) {
            fclose(f);
            tn_log_error("core", "pid file %s names running process %ld: already running?",
                         path, pid);
            return TN_EEXIST;
        }
        fclose(f);
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0 ||
        rename(tmp, path) != 0) {
        int err = -errno;
        tn_log_error("core", "cannot write pid file %s: %s", path, strerror(errno));
        return err;
    }
    g.pid_written = 1;
    return 0;
}

/* ---- reload ---------------------------------------------------------------- */

static void apply_daemon_changes(const struct tn_daemon_conf *old, const struct tn_daemon_conf *nu)
{
    tn_log_set_level(nu->log_level);
    if ((old->log_file == NULL) != (nu->log_file == NULL) ||
        (old->log_file && strcmp(old->log_file, nu->log_file) != 0))
        tn_log_open(nu->log_file);
    tn_conns_set_limit((size_t)nu->max_connections);
    tn_http_set_defaults(&nu->http);
    tn_dashboard_enable(nu->dashboard);
    if (strcmp(old->admin_listen.text, nu->admin_listen.text) != 0)
        tn_log_warn("core", "daemon.admin_listen changed (%s -> %s): takes effect on restart",
                    old->admin_listen.text, nu->admin_listen.text);
    tn_admin_reload_tls(old, nu);
    if ((old->data_dir && nu->data_dir && strcmp(old->data_dir, nu->data_dir) != 0))
        tn_log_warn("core", "daemon.data_dir changed: takes effect on restart");
    if ((old->pid_file == NULL) != (nu->pid_file == NULL) ||
        (old->pid_file && strcmp(old->pid_file, nu->pid_file) != 0))
        tn_log_warn("core", "daemon.pid_file changed: takes effect on restart");
}

/* SIGHUP and the admin endpoint's POST /reload: 0, or TN_EINVAL when the
 * new configuration was rejected (the running one stays). */
static int do_reload(void)
{
    struct generation *next;
    char state[64];
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%lld",
             (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000);
    tn_notify(state);
    tn_log_info("core", "reloading %s", g.conf_path ? g.conf_path : EMBEDDED_NAME);
    next = generation_load(g.conf_path, g.run, report_log);
    if (!next) {
        tn_log_error("core", "reload rejected: keeping the running configuration");
        tn_notify("READY=1");
        return TN_EINVAL;
    }
    apply_daemon_changes(&g.run->dc, &next->dc);
    /* keep what cannot move at run time */
    next->dc.data_dir = tn_conf_strdup(next->cf, tn_data_dir());
    if (tn_modset_reload(g.run->ms, next->ms) != 0)
        tn_log_error("core", "reload: a new module failed to start (see above)");
    tn_modset_set_current(next->ms);
    tn_admin_set_modset(next->ms);
    generation_free(g.run);
    g.run = next;
    tn_log_info("core", "reload done");
    tn_notify("READY=1");
    return 0;
}

/* ---- graceful stop ---------------------------------------------------------- */

static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    if (tn_conns_open() == 0 || tn_now_ms() >= g.drain_deadline) {
        if (tn_conns_open())
            tn_log_warn("core", "shutdown timeout: closing %zu connections", tn_conns_open());
        ev_timer_stop(loop, w);
        ev_break(loop, EVBREAK_ALL);
    }
}

static void begin_stop(struct ev_loop *loop, const char *why)
{
    if (g.stopping) {
        tn_log_warn("core", "%s again: stopping now", why);
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    g.stopping = 1;
    tn_log_info("core", "%s: stopping gracefully", why);
    tn_notify("STOPPING=1");
    tn_core_set_stopping();
    tn_admin_stop();
    tn_modset_stop(g.run->ms);
    g.drain_deadline = tn_now_ms() + g.run->dc.shutdown_timeout;
    ev_timer_init(&g.drain, drain_cb, 0., 0.05);
    ev_timer_again(loop, &g.drain);
    ev_feed_event(loop, &g.drain, EV_TIMER);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    switch (w->signum) {
    case SIGHUP:
        if (!g.stopping)
            (void)do_reload();
        break;
    case SIGUSR1:
        tn_log_reopen();
        break;
    case SIGTERM:
        begin_stop(loop, "SIGTERM");
        break;
    case SIGINT:
        begin_stop(loop, "SIGINT");
        break;
    }
}

static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    tn_notify("WATCHDOG=1");
}

static void signals_start(struct ev_loop *loop)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    ev_signal_init(&g.sig_hup, on_signal, SIGHUP);
    ev_signal_init(&g.sig_term, on_signal, SIGTERM);
    ev_signal_init(&g.sig_int, on_signal, SIGINT);
    ev_signal_init(&g.sig_usr1, on_signal, SIGUSR1);
    ev_signal_start(loop, &g.sig_hup);
    ev_signal_start(loop, &g.sig_term);
    ev_signal_start(loop, &g.sig_int);
    ev_signal_start(loop, &g.sig_usr1);
}

static int daemonize(void)
{
    pid_t pid = fork();
    int fd;

    if (pid < 0)
        return -errno;
    if (pid > 0)
        _exit(0);
    if (setsid() < 0)
        return -errno;
    fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (g.run->dc.log_file && strcmp(g.run->dc.log_file, "stderr") != 0)
            dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *given = NULL;
    int test_only = 0, background = 0, opt, rc;
    struct ev_loop *loop;
    int64_t wd;

    while ((opt = getopt(argc, argv, "c:tdVh")) != -1) {
        switch (opt) {
        case 'c':
            given = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 'd':
            background = 1;
            break;
        case 'V':
            printf("ternd %s (module ABI %d.%d)\n", TN_VERSION_STRING, TN_ABI_MAJOR,
                   TN_ABI_MINOR);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ternd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 1;
    }

    loop = ev_default_loop(EVFLAG_AUTO | EVFLAG_NOENV);
    if (!loop) {
        fprintf(stderr, "ternd: cannot initialise the event loop\n");
        return 1;
    }
    tn_core_init(loop, NULL);
    g.conf_path = find_conf(given);
    if (test_only)
        tn_log_set_level(TN_LOG_ERROR);
    g.run = generation_load(g.conf_path, NULL, report_stderr);
    if (!g.run) {
        fprintf(stderr, "ternd: %s: configuration check failed\n",
                g.conf_path ? g.conf_path : EMBEDDED_NAME);
        return 1;
    }
    if (test_only) {
        printf("ternd: %s: configuration OK\n", g.conf_path ? g.conf_path : EMBEDDED_NAME);
        generation_free(g.run);
        return 0;
    }

    tn_log_set_level(g.run->dc.log_level);
    if (tn_log_open(g.run->dc.log_file) != 0)
        return 1;
    if ((rc = mkdir_p(g.run->dc.data_dir)) != 0) {
        tn_log_error("core", "cannot create data_dir %s: %s", g.run->dc.data_dir,
                     tn_strerror(rc));
        return 1;
    }
    tn_core_init(loop, g.run->dc.data_dir);
    if (background && daemonize() != 0) {
        tn_log_error("core", "cannot run in the background: %s", strerror(errno));
        return 1;
    }
    if (g.run->dc.pid_file && write_pid_file(g.run->dc.pid_file) != 0)
        return 1;
    tn_conns_set_limit((size_t)g.run->dc.max_connections);
    signals_start(loop);
    tn_log_info("core", "ternd %s starting, config %s, pid %ld", TN_VERSION_STRING,
                g.conf_path ? g.conf_path : EMBEDDED_NAME, (long)getpid());

    tn_http_set_defaults(&g.run->dc.http);
    rc = tn_admin_start(&g.run->dc);
    if (rc != 0) {
        tn_log_error("core", "admin HTTP on %s: %s", g.run->dc.admin_listen.text,
                     tn_strerror(rc));
        goto out;
    }
    tn_modset_set_current(g.run->ms);
    tn_admin_set_modset(g.run->ms);
    tn_admin_set_reload(do_reload);
    rc = tn_modset_init_start(g.run->ms);
    if (rc != 0) {
        tn_log_error("core", "startup failed: %s", tn_strerror(rc));
        tn_admin_stop();
        goto out;
    }
    tn_notify("READY=1\nSTATUS=serving");
    if ((wd = tn_notify_watchdog_usec()) > 0) {
        ev_timer_init(&g.watchdog, watchdog_cb, 0., (double)wd / 2e6);
        ev_timer_again(loop, &g.watchdog);
    }
    tn_log_info("core", "ready");

    ev_run(loop, 0);

    tn_modset_stop(g.run->ms); /* no-op for modules already stopped */
    tn_modset_fini(g.run->ms);
    tn_admin_stop();
    tn_log_info("core", "stopped");
out:
    tn_modset_set_current(NULL);
    if (g.pid_written)
        unlink(g.run->dc.pid_file);
    generation_free(g.run);
    return rc == 0 ? 0 : 1;
}
