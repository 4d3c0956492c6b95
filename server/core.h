/*
 * core.h -- internals shared by the files of the core (not installed).
 * Modules see only server/include/ternd/.
 */
#ifndef TERND_SERVER_CORE_H
#define TERND_SERVER_CORE_H

#include <stdio.h>
#include <ternd/ternd.h>

/* ---- config loading (conf.c) ---------------------------------------------- */

/* Parse a YAML file / text into a new config generation. Never NULL unless
 * out of memory; check tn_conf_errors() for syntax errors (reported with
 * their position). The root must be a mapping. */
struct tn_conf *tn_conf_load_file(const char *path);
struct tn_conf *tn_conf_load_string(const char *name, const char *text, size_t len);
void tn_conf_free(struct tn_conf *cf);
/* The root node (a mapping), or NULL when the document failed to parse or
 * was empty (an empty document is a valid, empty mapping: then an empty
 * map node is returned). */
const struct tn_conf_node *tn_conf_root(const struct tn_conf *cf);
/* Look up a key in a mapping node; NULL if absent. */
const struct tn_conf_node *tn_conf_map_get(const struct tn_conf_node *map, const char *key);
/* Set the section tn_conf_error_key() resolves against, and the key path
 * prefix for messages (e.g. "broker"); NULL node clears it. */
void tn_conf_set_section(struct tn_conf *cf, const char *name, const struct tn_conf_node *node);
/* Collected error lines ("file:line:col: key.path: message"), in order. */
size_t tn_conf_error_count(const struct tn_conf *cf);
const char *tn_conf_error_text(const struct tn_conf *cf, size_t i);

/* ---- the daemon section (daemon_conf.c) ------------------------------------ */

struct tn_daemon_conf {
    int log_level;             /* TN_LOG_* (info) */
    char *log_file;            /* NULL or "stderr": stderr; else a path */
    char *pid_file;            /* NULL: none */
    char *data_dir;            /* ./data */
    char *modules_dir;         /* NULL: built-in search */
    char *plugins_dir;         /* NULL: built-in search; plugins load from it */
    struct tn_str_list plugins;/* explicit plugin .so paths or names */
    struct tn_addr admin_listen; /* 127.0.0.1:4171; len 0: admin off */
    int64_t max_connections;   /* 10000 process-wide */
    int64_t shutdown_timeout;  /* ms (10s) */
    int dashboard;             /* serve the admin dashboard at / (1) */
    struct tn_http_limits http; /* shared HTTP defaults */
    struct tn_tls_conf admin_tls; /* cert set: the admin endpoints over HTTPS */
};
extern const struct tn_conf_cmd tn_daemon_conf_table[];
void tn_daemon_conf_default(struct tn_daemon_conf *dc);

/* ---- process state (core.c) ----------------------------------------------- */

void tn_core_init(struct ev_loop *loop, const char *data_dir);
void tn_core_set_stopping(void);
int64_t tn_core_started_ms(void); /* tn_now_ms() at tn_core_init */
const char *tn_exe_dir(void);     /* dir of /proc/self/exe, or NULL */

/* ---- logging (log.c) ------------------------------------------------------ */

int tn_log_open(const char *path);  /* NULL or "stderr": stderr */
int tn_log_reopen(void);
void tn_log_set_level(int level);

/* ---- connections (conn.c) ------------------------------------------------- */

void tn_conns_set_limit(size_t max_connections);

/* ---- TLS sessions for conn.c (tls.c) ------------------------------------------ */

/* One TLS session over memory BIOs: the connection feeds it
 * the ciphertext it reads, takes plaintext out into c->in, puts c->out's
 * plaintext in and drains ciphertext to send. Errors are TN_EPROTO (with
 * OpenSSL's reason in why), TN_EPEER (close_notify) or TN_ENOMEM. */
struct tn_tls_sess;
struct tn_tls_ctx *tn_tls_ctx_ref(struct tn_tls_ctx *ctx);
struct tn_tls_sess *tn_tls_sess_new(struct tn_tls_ctx *ctx);
/* The client side: a session in connect state for a client context (NULL
 * when ctx is not one, or out of memory), checking server_name, else the
 * context's, else the host of addr. */
struct tn_tls_sess *tn_tls_sess_client(struct tn_tls_ctx *ctx, const char *server_name,
                                       const char *addr);
int tn_tls_ctx_is_client(struct tn_tls_ctx *ctx);
int64_t tn_tls_ctx_handshake_ms(struct tn_tls_ctx *ctx); /* 0: none */
void tn_tls_sess_free(struct tn_tls_sess *s);
int tn_tls_sess_feed(struct tn_tls_sess *s, const void *p, size_t n);
/* Handshake as far as the input allows, then decrypt up to room bytes
 * into in (*got of them). 0 when it needs more input (or room ran out). */
int tn_tls_sess_read(struct tn_tls_sess *s, struct tn_buf *in, size_t room, size_t *got,
                     char *why, size_t whylen);
int tn_tls_sess_more(const struct tn_tls_sess *s); /* plaintext or input left inside */
int tn_tls_sess_done(const struct tn_tls_sess *s); /* handshake finished */
/* Encrypt all of out (consumed) once the handshake is done. */
int tn_tls_sess_write(struct tn_tls_sess *s, struct tn_buf *out, char *why, size_t whylen);
int tn_tls_sess_drain(struct tn_tls_sess *s, struct tn_buf *raw);
void tn_tls_sess_shutdown(struct tn_tls_sess *s);
void tn_tls_sess_info(const struct tn_tls_sess *s, const char **version, const char **cipher);

/* ---- HTTP (http.c) ----------------------------------------------------------- */

/* Set the limits of servers created from now on (daemon.http); servers
 * already running keep theirs. */
void tn_http_set_defaults(const struct tn_http_limits *lim);

/* ---- modules (module.c) --------------------------------------------------- */

struct tn_modset;
/* Resolve the module sections of cf into a module set: load every .so
 * named by a top-level key (other than "daemon") or needed as a
 * dependency, check ABI, order by dependency, create_conf + apply table +
 * check_conf. Errors go to cf. `reuse` (the running set, may be NULL)
 * supplies already-loaded modules. */
struct tn_modset *tn_modset_prepare(struct tn_conf *cf, const struct tn_daemon_conf *dc,
                                    struct tn_modset *reuse);
int tn_modset_init_start(struct tn_modset *ms);
void tn_modset_stop(struct tn_modset *ms);
void tn_modset_fini(struct tn_modset *ms);
/* Apply a prepared set (from the new config) to the running one. */
int tn_modset_reload(struct tn_modset *running, struct tn_modset *next);
void tn_modset_free(struct tn_modset *ms);
void tn_modset_stats(struct tn_modset *ms, struct tn_stats_out *out);
struct tn_conf *tn_modset_conf(struct tn_modset *ms);
/* The set tn_module_find() searches (the running one). */
void tn_modset_set_current(struct tn_modset *ms);
struct tn_modset *tn_modset_current(void);
/* Where modules / plugins are searched (buf receives a computed path). */
const char *tn_modules_dir(const struct tn_daemon_conf *dc, char *buf, size_t len);
const char *tn_plugins_dir(const struct tn_daemon_conf *dc, char *buf, size_t len);

/* ---- stats (stats.c) ------------------------------------------------------ */

/* Format every registered metric plus what the stats hooks of ms emit. */
int tn_stats_format(struct tn_buf *b, int format, struct tn_modset *ms);

/* ---- admin HTTP (admin.c), sd_notify (notify.c) --------------------------- */

int tn_admin_start(const struct tn_daemon_conf *dc);
void tn_admin_stop(void);
/* Reload: daemon.admin_tls's certificate read again (kept when it fails). */
void tn_admin_reload_tls(const struct tn_daemon_conf *old, const struct tn_daemon_conf *nu);
void tn_admin_set_modset(struct tn_modset *ms);
/* What POST /reload runs (main's SIGHUP reload): 0, or an error when the new
 * configuration was rejected. NULL: POST /reload answers 501. */
void tn_admin_set_reload(int (*reload)(void));
/* The dashboard's routes on the admin server (dashboard.c); its switch. */
int tn_dashboard_routes(struct tn_http_server *s);
void tn_dashboard_enable(int on);
int tn_notify(const char *state); /* sd_notify; 0 when no NOTIFY_SOCKET */
int64_t tn_notify_watchdog_usec(void);

#endif
