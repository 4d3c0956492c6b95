# gateway.mk -- the gateway module (client connections over TCP and
# WebSocket, due's packet format, Lua routing, backend nodes), included from
# the top-level Makefile.am: gateway.so and its codec unit test.
if HAVE_CMOCKA
UNIT_TESTS += t/unit/test_gateway_codec
t_unit_test_gateway_codec_SOURCES = t/unit/test_gateway_codec.c modules/gateway/codec.c
t_unit_test_gateway_codec_CFLAGS = $(UNIT_CFLAGS) -I$(top_srcdir)/modules/gateway
t_unit_test_gateway_codec_LDADD = $(CMOCKA_LIBS)
endif
