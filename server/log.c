/*
 * log.c -- leveled log lines to stderr or a file, reopened on SIGUSR1.
 *
 * Each line is formatted into a stack buffer and written with one write(2),
 * so lines from worker threads never interleave; O_APPEND keeps that true
 * across processes sharing the file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

#define TN_LOG_LINE_MAX 4096

static int log_level = TN_LOG_INFO;
static int log_fd = 2;
static char *log_path;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int tn_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    if (strcmp(name, "warning") == 0)
        return TN_LOG_WARN;
    return -1;
}

const char *tn_log_level_name(int level)
{
    return level >= 0 && level < 4 ? level_names[level] : "?";
}

int tn_log_enabled(int level) { return level <= __atomic_load_n(&log_level, __ATOMIC_RELAXED); }

void tn_log_set_level(int level) { __atomic_store_n(&log_level, level, __ATOMIC_RELAXED); }

void tn_logv(int level, const char *who, const char *fmt, va_list ap)
{
    char line[TN_LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int r;

    if (!tn_log_enabled(level))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof(line) - n, ".%03ldZ [%s] %s%s", ts.tv_nsec / 1000000L,
                 tn_log_level_name(level), who ? who : "", who ? ": " : "");
    if (r > 0)
        n += (size_t)r;
    if (n < sizeof(line)) {
        r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        if (r > 0)
            n += (size_t)r;
    }
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2; /* truncated: keep the newline */
    line[n++] = '\n';
    for (size_t off = 0; off < n;) {
        ssize_t w = write(__atomic_load_n(&log_fd, __ATOMIC_RELAXED), line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}

void tn_log(int level, const char *who, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tn_logv(level, who, fmt, ap);
    va_end(ap);
}

/* Open path for appending; the old descriptor is closed only after the new
 * one is in place, so concurrent writers always have a valid fd. */
int tn_log_open(const char *path)
{
    int fd = 2, old;

    if (path && strcmp(path, "stderr") != 0) {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            int err = -errno;
            tn_log_error("core", "cannot open log file %s: %s", path, strerror(errno));
            return err;
        }
    }
    old = __atomic_exchange_n(&log_fd, fd, __ATOMIC_SEQ_CST);
    if (old != 2 && old != fd)
        close(old);
    if (path != log_path) {
        free(log_path);
        log_path = path && strcmp(path, "stderr") != 0 ? strdup(path) : NULL;
    }
    return 0;
}

int tn_log_reopen(void)
{
    char *p = log_path;
    int r;

    if (!p)
        return 0;
    r = tn_log_open(p);
    if (r == 0)
        tn_log_info("core", "log file %s reopened", p);
    return r;
}
