/*
 * error.c -- names for the TN_* error codes and for -errno values.
 */
#include <string.h>
#include <ternd/error.h>

static const char *const tn_errors[] = {
    "out of memory",                  /* TN_ENOMEM */
    "invalid argument",               /* TN_EINVAL */
    "configuration error",            /* TN_ECONF */
    "not found",                      /* TN_ENOTFOUND */
    "already exists",                 /* TN_EEXIST */
    "limit reached",                  /* TN_ELIMIT */
    "too big",                        /* TN_ETOOBIG */
    "closed",                         /* TN_ECLOSED */
    "protocol error",                 /* TN_EPROTO */
    "timed out",                      /* TN_ETIMEDOUT */
    "Lua error",                      /* TN_ELUA */
    "module ABI mismatch",            /* TN_EABI */
    "module error",                   /* TN_EMODULE */
    "try again",                      /* TN_EAGAIN */
    "overloaded",                     /* TN_EOVERLOAD */
    "I/O error",                      /* TN_EIO */
    "checksum mismatch",              /* TN_ECORRUPT */
    "server stopping",                /* TN_ESTOPPED */
    "closed by peer",                 /* TN_EPEER */
};

const char *tn_strerror(int err)
{
    if (err == 0)
        return "success";
    if (err < TN_ERRNO_BASE) {
        size_t i = (size_t)(TN_ERRNO_BASE - err) - 1;
        if (i < sizeof(tn_errors) / sizeof(tn_errors[0]))
            return tn_errors[i];
        return "unknown error";
    }
    if (err < 0)
        return strerror(-err);
    return "unknown error";
}
