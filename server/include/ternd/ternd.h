/*
 * ternd.h -- the one header a module or plugin includes.
 *
 * It pulls in the whole public API of the ternd core. Everything declared
 * TN_API is exported by the ternd binary (-export-dynamic) and may be called
 * by loaded modules; unless a comment says otherwise, every call must be
 * made on the loop thread.
 */
#ifndef TERND_TERND_H
#define TERND_TERND_H

#include <ternd/core.h>
#include <ternd/error.h>
#include <ternd/log.h>
#include <ternd/buf.h>
#include <ternd/conf.h>
#include <ternd/module.h>
#include <ternd/conn.h>
#include <ternd/http.h>
#include <ternd/lua.h>
#include <ternd/stats.h>
#include <ternd/service.h>
#include <ternd/pool.h>
#include <ternd/tls.h>
#include <ternd/map.h>

#endif
