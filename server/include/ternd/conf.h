/*
 * conf.h -- the YAML configuration: nodes with positions, key tables that
 * turn a section into a typed struct, and error reporting by place.
 *
 * The core loads the file with libyaml into a tree of tn_conf_node (each
 * with its file:line:col), then applies each module's key table to the
 * module's section. Every problem is reported as
 *     file:line:col: key.path: message
 * and collected: all errors of a file are printed, not just the first.
 * All memory (nodes, strings, module conf structs) belongs to the config
 * generation (struct tn_conf) and is freed with it. Loop thread only.
 */
#ifndef TERND_CONF_H
#define TERND_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <ternd/core.h>

struct tn_conf;

enum tn_conf_node_type { TN_NODE_SCALAR = 1, TN_NODE_MAP, TN_NODE_SEQ };

struct tn_conf_mark {
    const char *file; /* owned by the config */
    int line;         /* 1-based */
    int col;          /* 1-based */
};

struct tn_conf_node {
    int type;                 /* enum tn_conf_node_type */
    struct tn_conf_mark mark; /* where the node starts */
    const char *value;        /* SCALAR: the text (NUL-terminated) */
    size_t vlen;              /* SCALAR: its length */
    int plain;                /* SCALAR: unquoted (so "~"/"null" mean null) */
    size_t n;                 /* MAP: pairs, SEQ: items */
    struct tn_conf_node **keys;  /* MAP: scalar keys, in file order */
    struct tn_conf_node **items; /* MAP: values (parallel to keys); SEQ: items */
};

/* Is the node a plain null scalar (~, null, Null, NULL, or empty)? */
TN_API int tn_conf_is_null(const struct tn_conf_node *n);

/* Value types for key tables. */
enum tn_conf_type {
    TN_CONF_BOOL = 1, /* int: true/false yes/no on/off */
    TN_CONF_INT,      /* int64_t; arg: const struct tn_conf_range * or NULL */
    TN_CONF_SIZE,     /* uint64_t bytes: 512, 64KiB, 1MiB, 2GiB, 10KB (=10000), 4k (=4096);
                         arg: const struct tn_conf_range * (bytes) or NULL */
    TN_CONF_DURATION, /* int64_t milliseconds: 250ms, 10s, 5m, 2h, 1d; 0 needs no unit;
                         arg: const struct tn_conf_range * (ms) or NULL */
    TN_CONF_STRING,   /* char * (NULL when null) */
    TN_CONF_PATH,     /* char *: like STRING, made absolute against the working directory at load */
    TN_CONF_ENUM,     /* int; arg: const struct tn_conf_enum[] ending in {NULL, 0} */
    TN_CONF_ADDR,     /* struct tn_addr: host:port, [v6]:port, :port, unix:/path */
    TN_CONF_ADDR_LIST,/* struct tn_addr_list: a sequence of ADDR (or one scalar) */
    TN_CONF_STR_LIST, /* struct tn_str_list: a sequence of scalars (or one scalar) */
    TN_CONF_SECTION,  /* a nested mapping applied to the same struct;
                         arg: const struct tn_conf_cmd[] (offset is added to
                         every inner offset) */
    TN_CONF_CUSTOM    /* cmd->set does the work (maps of sections, lists of
                         objects, ...) */
};

struct tn_conf_range {
    int64_t min, max;
};

struct tn_conf_enum {
    const char *name;
    int value;
};

#define TN_ADDR_TEXT_MAX 128

struct tn_addr {
    struct sockaddr_storage sa; /* AF_INET, AF_INET6 or AF_UNIX */
    socklen_t len;              /* 0: not set */
    char text[TN_ADDR_TEXT_MAX]; /* as written, e.g. "127.0.0.1:4150" */
    struct tn_conf_mark mark;   /* where it was configured (file NULL if default) */
};

struct tn_addr_list {
    size_t n;
    struct tn_addr *v;
};

struct tn_str_list {
    size_t n;
    char **v;
};

struct tn_conf_cmd;

/* Setter: parse node into conf (the struct of the enclosing table). On bad
 * input call tn_conf_error() and return TN_ECONF. */
typedef int (*tn_conf_set_pt)(struct tn_conf *cf, const struct tn_conf_node *node,
                              const struct tn_conf_cmd *cmd, void *conf);
/* Check: called after a successful set; the value is at (char *)conf + offset. */
typedef int (*tn_conf_check_pt)(struct tn_conf *cf, const struct tn_conf_node *node,
                                const struct tn_conf_cmd *cmd, void *conf);

struct tn_conf_cmd {
    const char *key;
    int type;              /* enum tn_conf_type */
    size_t offset;         /* offsetof(struct your_conf, field) */
    const void *arg;       /* type-specific, see enum tn_conf_type */
    tn_conf_set_pt set;    /* CUSTOM only (ignored otherwise) */
    tn_conf_check_pt check;/* optional */
};
#define TN_CONF_END {NULL, 0, 0, NULL, NULL, NULL}

/*
 * Apply a key table to a mapping node: every key must be in the table
 * (unknown keys, duplicate keys and wrong node kinds are errors). Keys not
 * present keep the values already in conf (the defaults). Continues past
 * errors so all of them are reported. Returns 0 or TN_ECONF.
 */
TN_API int tn_conf_apply(struct tn_conf *cf, const struct tn_conf_node *map,
                         const struct tn_conf_cmd *table, void *conf);

/* The key path used in messages: push before descending, pop after.
 * tn_conf_push_index pushes "[i]". Paths join with '.'. */
TN_API void tn_conf_push_key(struct tn_conf *cf, const char *key);
TN_API void tn_conf_push_index(struct tn_conf *cf, size_t i);
TN_API void tn_conf_pop(struct tn_conf *cf);

/* Report an error at node (or at the enclosing section when node is NULL)
 * for the current key path. Always returns TN_ECONF. */
TN_API int tn_conf_error(struct tn_conf *cf, const struct tn_conf_node *node,
                         const char *fmt, ...) TN_PRINTF(3, 4);
/* Report an error for a key relative to the section being checked (used by
 * a module's check_conf): finds the node for "lua.script" or "listen[1].addr"
 * under the module's section and prints its position (or the section's if
 * the key is absent). Returns TN_ECONF. */
TN_API int tn_conf_error_key(struct tn_conf *cf, const char *relpath,
                             const char *fmt, ...) TN_PRINTF(3, 4);
/* Number of errors reported so far. */
TN_API int tn_conf_errors(const struct tn_conf *cf);

/* Individual parsers, shared by the setters and usable by custom ones.
 * Each returns 0 or TN_ECONF after reporting at node. */
TN_API int tn_conf_parse_bool(struct tn_conf *cf, const struct tn_conf_node *n, int *out);
TN_API int tn_conf_parse_int(struct tn_conf *cf, const struct tn_conf_node *n,
                             const struct tn_conf_range *r, int64_t *out);
TN_API int tn_conf_parse_size(struct tn_conf *cf, const struct tn_conf_node *n, uint64_t *out);
TN_API int tn_conf_parse_duration(struct tn_conf *cf, const struct tn_conf_node *n, int64_t *out);
TN_API int tn_conf_parse_addr(struct tn_conf *cf, const struct tn_conf_node *n, struct tn_addr *out);
TN_API int tn_conf_parse_string(struct tn_conf *cf, const struct tn_conf_node *n, char **out);

/* Text parsers without a config (for HTTP/Lua arguments): 0 or TN_EINVAL. */
TN_API int tn_parse_size(const char *s, uint64_t *out);
TN_API int tn_parse_duration(const char *s, int64_t *out_ms);
/* Parse an address; on error writes a reason to err. */
TN_API int tn_parse_addr(const char *s, struct tn_addr *out, char *err, size_t errlen);

/* Memory that lives as long as the config generation (zeroed). */
TN_API void *tn_conf_alloc(struct tn_conf *cf, size_t n);
TN_API char *tn_conf_strdup(struct tn_conf *cf, const char *s);

/* The file this config came from ("<embedded>" for the built-in default). */
TN_API const char *tn_conf_file(const struct tn_conf *cf);

#endif
