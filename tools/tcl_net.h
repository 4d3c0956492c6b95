/*
 * tcl_net.h -- ternctl's blocking network helpers: TCP connections with a
 * time limit and one-shot HTTP/1.0 requests (the server closes after the
 * answer, so the body is everything up to EOF: no chunked decoding).
 */
#ifndef TCL_NET_H
#define TCL_NET_H

#include <stddef.h>

/* A growable byte string, always NUL-terminated. */
struct tcl_str {
    char *p;
    size_t len, cap;
};

void tcl_str_free(struct tcl_str *s);
/* Room for n more bytes (and the NUL): 0, or -1 out of memory. */
int tcl_str_reserve(struct tcl_str *s, size_t n);
int tcl_str_add(struct tcl_str *s, const void *p, size_t n);

/* Connect to "host:port" ("[v6]:port" too); every later read and write on
 * the socket fails after timeout_ms without progress. Returns the fd, or -1
 * with a message in err. */
int tcl_connect(const char *addr, int timeout_ms, char *err, size_t errlen);

/* Reads and writes on fd fail after timeout_ms without progress; 0: never. */
void tcl_set_timeout(int fd, int timeout_ms);

int tcl_write_all(int fd, const void *p, size_t n);
/* Exactly n bytes: 0, or -1 on EOF, timeout or error. */
int tcl_read_exact(int fd, void *p, size_t n);

/* One HTTP request to addr; body may be NULL. Returns the status code with
 * the reply body in out, or -1 with a message in err. */
int tcl_http(const char *addr, const char *method, const char *target, const char *body,
             size_t body_len, int timeout_ms, struct tcl_str *out, char *err, size_t errlen);

/* Percent-encode s for a query string into buf; 0, or -1 when it does not fit. */
int tcl_urlencode(const char *s, char *buf, size_t len);

#endif
