/*
 * core.h -- export macro, version and process-wide accessors of the core:
 * the event loop, the clock and the daemon settings modules may read.
 */
#ifndef TERND_CORE_H
#define TERND_CORE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define TN_API __attribute__((visibility("default")))
#define TN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define TN_UNUSED __attribute__((unused))
#else
#define TN_API
#define TN_PRINTF(f, a)
#define TN_UNUSED
#endif

#define TN_VERSION_MAJOR 0
#define TN_VERSION_MINOR 1
#define TN_VERSION_PATCH 0
#define TN_VERSION_STRING "0.1.0"

struct ev_loop;

/* The one libev loop of the process. Modules start their own watchers on it. */
TN_API struct ev_loop *tn_loop(void);

/* Loop time (cached at the start of each iteration) in milliseconds and as
 * wall-clock nanoseconds since the epoch (a fresh clock read). */
TN_API int64_t tn_now_ms(void);
TN_API int64_t tn_wall_ns(void);

/* Non-zero on the thread that runs the loop (the main thread): code that
 * other threads may reach (Lua openers run by pool workers) asks this
 * instead of keeping a __thread flag -- modules are dlopen()ed, and thread
 * locals in them cost a dynamic TLS lookup and confuse LeakSanitizer. */
TN_API int tn_on_loop_thread(void);

/* daemon.data_dir, absolute, without a trailing slash; created at start. */
TN_API const char *tn_data_dir(void);

/* Non-zero once a graceful stop has begun (SIGTERM/SIGINT): modules should
 * stop accepting work and flush. */
TN_API int tn_stopping(void);

/* Ask the core to stop gracefully, as if SIGTERM arrived. */
TN_API void tn_shutdown(void);

#endif
