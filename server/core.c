/*
 * core.c -- process-wide state of the core: the loop, the data directory,
 * the stopping flag and the executable's directory.
 */
#include <ev.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

static struct ev_loop *core_loop;
static char core_data_dir[PATH_MAX] = ".";
static int core_stopping;
static int64_t core_started_ms;

static pthread_t core_loop_thread;
static int core_loop_thread_set;

void tn_core_init(struct ev_loop *loop, const char *data_dir)
{
    core_loop = loop;
    core_loop_thread = pthread_self();
    core_loop_thread_set = 1;
    core_started_ms = (int64_t)(ev_now(loop) * 1000.0);
    if (data_dir) {
        size_t n = strlen(data_dir);
        while (n > 1 && data_dir[n - 1] == '/')
            n--;
        if (n >= sizeof(core_data_dir))
            n = sizeof(core_data_dir) - 1;
        memcpy(core_data_dir, data_dir, n);
        core_data_dir[n] = '\0';
    }
}

int tn_on_loop_thread(void)
{
    /* before tn_core_init (unit tests) there is only the caller */
    return !core_loop_thread_set || pthread_equal(pthread_self(), core_loop_thread);
}

struct ev_loop *tn_loop(void)
{
    if (!core_loop)
        core_loop = ev_default_loop(EVFLAG_AUTO);
    return core_loop;
}

int64_t tn_now_ms(void) { return (int64_t)(ev_now(tn_loop()) * 1000.0); }

int64_t tn_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t tn_core_started_ms(void) { return core_started_ms; }

const char *tn_data_dir(void) { return core_data_dir; }

int tn_stopping(void) { return core_stopping; }

void tn_core_set_stopping(void) { core_stopping = 1; }

const char *tn_exe_dir(void)
{
    static char dir[PATH_MAX];
    static int done;

    if (!done) {
        ssize_t n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
        done = 1;
        if (n <= 0) {
            dir[0] = '\0';
        } else {
            char *slash;
            dir[n] = '\0';
            slash = strrchr(dir, '/');
            if (slash)
                *slash = '\0';
        }
    }
    return dir[0] ? dir : NULL;
}

/* The signal watcher in main.c does the work, exactly as for kill -TERM. */
void tn_shutdown(void) { raise(SIGTERM); }
