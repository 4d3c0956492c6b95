/*
 * log.h -- leveled logging to stderr or a file.
 *
 * Lines look like `2026-11-22T20:57:00.123Z [info] broker: text`. Safe to
 * call from any thread (one write(2) per line). SIGUSR1 reopens the file.
 */
#ifndef TERND_LOG_H
#define TERND_LOG_H

#include <stdarg.h>
#include <ternd/core.h>

enum { TN_LOG_ERROR = 0, TN_LOG_WARN = 1, TN_LOG_INFO = 2, TN_LOG_DEBUG = 3 };

/* who: short name of the subsystem ("core", "broker", ...), may be NULL. */
TN_API void tn_log(int level, const char *who, const char *fmt, ...) TN_PRINTF(3, 4);
TN_API void tn_logv(int level, const char *who, const char *fmt, va_list ap);
TN_API int tn_log_enabled(int level);
/* Parse "error" | "warn" | "info" | "debug"; -1 if unknown. */
TN_API int tn_log_level_parse(const char *name);
TN_API const char *tn_log_level_name(int level);

#define tn_log_error(who, ...) tn_log(TN_LOG_ERROR, who, __VA_ARGS__)
#define tn_log_warn(who, ...) tn_log(TN_LOG_WARN, who, __VA_ARGS__)
#define tn_log_info(who, ...) tn_log(TN_LOG_INFO, who, __VA_ARGS__)
#define tn_log_debug(who, ...)                                                 \
    do {                                                                       \
        if (tn_log_enabled(TN_LOG_DEBUG))                                      \
            tn_log(TN_LOG_DEBUG, who, __VA_ARGS__);                            \
    } while (0)

#endif
