/*
 * fz.c -- the fuzz harness (see fz.h): the core's loop, listeners and
 * connections run for real in the fuzzer process; the fuzzer plays the
 * peer over a unix socket, one connection per input.
 */
#include <errno.h>
#include <ev.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fz.h"

#define FZ_IDLE_MAX 64     /* loop rounds without progress before we give up */
#define FZ_SETTLE_MAX 1000 /* loop rounds for the server to close its side */

static char fz_dir[256];
static struct tn_conf *fz_cf; /* the harness config, kept for the process */

static int fz_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

/* The data directory goes when the fuzzer exits normally (a crash leaves
 * it for a look). */
static void fz_cleanup(void)
{
    nftw(fz_dir, fz_rm, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fz_init(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    const char *log = getenv("FUZZ_LOG");

    if (fz_dir[0])
        return fz_dir;
    snprintf(fz_dir, sizeof(fz_dir), "%s/ternd-fuzz-XXXXXX", base);
    if (!mkdtemp(fz_dir)) {
        perror("fuzz: mkdtemp");
        exit(1);
    }
    atexit(fz_cleanup);
    tn_core_init(ev_default_loop(EVFLAG_AUTO), fz_dir);
    if (log && strcmp(log, "1") == 0) {
        tn_log_set_level(TN_LOG_DEBUG);
    } else {
        tn_log_open("/dev/null");
        tn_log_set_level(TN_LOG_ERROR);
    }
    return fz_dir;
}

const char *fz_path(const char *name)
{
    static char path[512];

    snprintf(path, sizeof(path), "%s/%s", fz_init(), name);
    return path;
}

static void fz_die(struct tn_conf *cf, const char *what)
{
    fprintf(stderr, "fuzz: %s failed\n", what);
    for (size_t i = 0; cf && i < tn_conf_error_count(cf); i++)
        fprintf(stderr, "  %s\n", tn_conf_error_text(cf, i));
    exit(1);
}

struct tn_mod *fz_module_start(const struct tn_module *m, const char *yaml)
{
    /* the config generation and the instance live as long as the process */
    static struct tn_mod mod;
    struct tn_conf *cf;
    const struct tn_conf_node *section;

    fz_init();
    cf = fz_cf = tn_conf_load_string("<fuzz>", yaml, strlen(yaml));
    if (!cf || tn_conf_errors(cf) || !tn_conf_root(cf))
        fz_die(cf, "the harness YAML");
    section = tn_conf_map_get(tn_conf_root(cf), m->name);
    mod.module = m;
    mod.name = m->name;
    mod.path = "<linked>";
    mod.conf = tn_conf_alloc(cf, m->conf_size);
    tn_conf_set_section(cf, m->name, section);
    if (m->create_conf && m->create_conf(&mod, mod.conf) != 0)
        fz_die(cf, "create_conf");
    if (section && tn_conf_apply(cf, section, m->conf_table, mod.conf) != 0)
        fz_die(cf, "the module's key table");
    if (m->check_conf && m->check_conf(&mod, cf, mod.conf) != 0)
        fz_die(cf, "check_conf");
    tn_conf_set_section(cf, NULL, NULL);
    if (m->init && m->init(&mod) != 0)
        fz_die(NULL, "init");
    if (m->start && m->start(&mod) != 0)
        fz_die(NULL, "start");
    mod.started = 1;
    return &mod;
}

const char *fz_module_listen(const struct tn_module *m, const char *sock_name,
                             const char *yaml_fmt)
{
    static char sock[512];
    char yaml[4096];

    snprintf(sock, sizeof(sock), "%s", fz_path(sock_name));
    /* the format comes from the targets, never from an input */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(yaml, sizeof(yaml), yaml_fmt, sock);
#pragma GCC diagnostic pop
    fz_module_start(m, yaml);
    return sock;
}

static int fz_connect(const char *path)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&un, sizeof(un)) != 0) {
        perror("fuzz: connect");
        abort();
    }
    return fd;
}

/* Read what the server sent: 1 when something came, 0 when nothing, -1
 * when the server closed (EOF or reset). */
static int fz_drain(int fd)
{
    char buf[65536];
    int got = 0;

    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n > 0) {
            got = 1;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return got;
        return -1;
    }
}

/* Run the loop until the server has no connection left. */
static void fz_settle(void)
{
    for (int i = 0; i < FZ_SETTLE_MAX && tn_conns_open() > 0; i++)
        ev_run(tn_loop(), EVRUN_NOWAIT);
    if (tn_conns_open() > 0) {
        fprintf(stderr, "fuzz: %zu server connection(s) still open after the peer closed\n",
                tn_conns_open());
        abort();
    }
}

void fz_feed(const char *path, const uint8_t *data, size_t size)
{
    int fd = fz_connect(path), idle = 0, shut = 0;
    size_t off = 0;

    while (idle < FZ_IDLE_MAX) {
        int progress = 0, rc;
        if (off < size) {
            ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += (size_t)n;
                progress = 1;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                break; /* the server closed early */
            }
        }
        if (off == size && !shut) {
            shutdown(fd, SHUT_WR);
            shut = 1;
        }
        ev_run(tn_loop(), EVRUN_NOWAIT);
        if ((rc = fz_drain(fd)) < 0)
            break;
        idle = rc || progress ? 0 : idle + 1;
    }
    close(fd);
    fz_settle();
}
