# gateway.mk -- the gateway module (client connections over TCP and
# WebSocket, due's packet format, Lua routing, backend nodes), included from
# the top-level Makefile.am: gateway.so and its codec unit test.
mod_LTLIBRARIES += modules/gateway/gateway.la
modules_gateway_gateway_la_SOURCES = \
	modules/gateway/gateway.c modules/gateway/config.c modules/gateway/codec.c \
	modules/gateway/session.c modules/gateway/ws.c modules/gateway/luaapi.c \
	modules/gateway/node.c modules/gateway/registry.c \
	modules/gateway/kcp.c modules/gateway/kcp_transport.c modules/gateway/auth.c \
	modules/gateway/gateway.h modules/gateway/codec.h modules/gateway/kcp.h
# tn_discovery.h (the discovery module's service) when that module is in the tree
modules_gateway_gateway_la_CFLAGS = $(AM_CFLAGS) -I$(top_srcdir)/modules/discovery \
	$(WSLAY_CFLAGS) $(CRYPTO_CFLAGS)
modules_gateway_gateway_la_LDFLAGS = $(MODULE_LDFLAGS)
modules_gateway_gateway_la_LIBADD = $(LUA_LIBS) $(ZLIB_LIBS) $(JANSSON_LIBS) $(WSLAY_LIBS) $(CRYPTO_LIBS)

if HAVE_CMOCKA
UNIT_TESTS += t/unit/test_gateway_codec
t_unit_test_gateway_codec_SOURCES = t/unit/test_gateway_codec.c modules/gateway/codec.c
t_unit_test_gateway_codec_CFLAGS = $(UNIT_CFLAGS) -I$(top_srcdir)/modules/gateway
t_unit_test_gateway_codec_LDADD = $(CMOCKA_LIBS)
UNIT_TESTS += t/unit/test_kcp
t_unit_test_kcp_SOURCES = t/unit/test_kcp.c modules/gateway/kcp.c
t_unit_test_kcp_CFLAGS = $(UNIT_CFLAGS) -I$(top_srcdir)/modules/gateway
t_unit_test_kcp_LDADD = $(CMOCKA_LIBS)
endif

# The gateway's load generator (scripts/bench/run-gateway), standalone like
# nsq_bench: built with the tree so it never rots.
noinst_PROGRAMS += scripts/bench/gw_bench
scripts_bench_gw_bench_SOURCES = scripts/bench/gw_bench.c
scripts_bench_gw_bench_CPPFLAGS =
