# discovery.mk -- the discovery module (nsqlookupd-compatible directory and
# service registry), included from the top-level Makefile.am. Builds
# modules/discovery/discovery.la (discovery.so) and its unit test; installs
# the service header as <ternd/tn_discovery.h>.

mod_LTLIBRARIES += modules/discovery/discovery.la
DISCOVERY_SOURCES = \
	modules/discovery/discovery.c modules/discovery/lookup_db.c modules/discovery/services.c \
	modules/discovery/proto_v1.c modules/discovery/api_http.c modules/discovery/api_lua.c \
	modules/discovery/service.c modules/discovery/etcd.c \
	modules/discovery/discovery.h modules/discovery/tn_discovery.h
modules_discovery_discovery_la_SOURCES = $(DISCOVERY_SOURCES)
modules_discovery_discovery_la_LDFLAGS = $(MODULE_LDFLAGS)
modules_discovery_discovery_la_LIBADD = $(JANSSON_LIBS) $(HTTP_PARSER_LIBS)

discoveryincludedir = $(includedir)/ternd
discoveryinclude_HEADERS = modules/discovery/tn_discovery.h

# A test module calling the discovery.registry service (check_ only).
check_LTLIBRARIES += t/modules/dscclient.la
t_modules_dscclient_la_SOURCES = t/modules/dscclient.c
t_modules_dscclient_la_CFLAGS = $(AM_CFLAGS) -I$(top_srcdir)/modules/discovery
t_modules_dscclient_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)

if HAVE_CMOCKA
UNIT_TESTS += t/unit/test_discovery
t_unit_test_discovery_SOURCES = t/unit/test_discovery.c modules/discovery/lookup_db.c \
	modules/discovery/services.c $(CORE_SOURCES)
t_unit_test_discovery_CFLAGS = $(UNIT_CFLAGS) -I$(top_srcdir)/modules/discovery
t_unit_test_discovery_LDADD = $(UNIT_LIBS)
endif

EXTRA_DIST += t/integration/discovery modules/discovery/README.md t/interop/nsqjs/lookupd.js \
	scripts/bench/discovery_bench.py
