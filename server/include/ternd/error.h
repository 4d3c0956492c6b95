/*
 * error.h -- the error codes of the ternd API.
 *
 * Every function of the core that can fail returns 0 or one of these
 * negative values; tn_strerror() names them. System errors are passed as
 * -errno when no code below fits (tn_strerror handles those too).
 */
#ifndef TERND_ERROR_H
#define TERND_ERROR_H

#include <ternd/core.h>

#define TN_OK 0
#define TN_ERRNO_BASE (-10000) /* codes above this are ternd's own */

enum {
    TN_ENOMEM = -10001,     /* out of memory */
    TN_EINVAL = -10002,     /* invalid argument */
    TN_ECONF = -10003,      /* configuration error (already reported) */
    TN_ENOTFOUND = -10004,  /* no such item */
    TN_EEXIST = -10005,     /* already exists */
    TN_ELIMIT = -10006,     /* a configured limit was reached */
    TN_ETOOBIG = -10007,    /* item larger than allowed */
    TN_ECLOSED = -10008,    /* connection or object already closed */
    TN_EPROTO = -10009,     /* peer violated the protocol */
    TN_ETIMEDOUT = -10010,  /* timed out */
    TN_ELUA = -10011,       /* a Lua call failed (already logged) */
    TN_EABI = -10012,       /* module ABI mismatch */
    TN_EMODULE = -10013,    /* module failed to load or run */
    TN_EAGAIN = -10014,     /* try again later / would block */
    TN_EOVERLOAD = -10015,  /* refused: too busy */
    TN_EIO = -10016,        /* I/O error */
    TN_ECORRUPT = -10017,   /* stored data failed its checksum */
    TN_ESTOPPED = -10018,   /* the server is stopping */
    TN_EPEER = -10019       /* the peer closed the connection */
};

/* Static string describing err (TN_* or -errno). Never NULL. Any thread. */
TN_API const char *tn_strerror(int err);

#endif
