# broker.mk -- the broker module (an nsqd-compatible message broker), included
# from the top-level Makefile.am. Builds modules/broker/broker.la (broker.so)
# and its unit test; installs the service header as <ternd/tn_broker.h>.

mod_LTLIBRARIES += modules/broker/broker.la
BROKER_SOURCES = \
	modules/broker/broker.c modules/broker/config.c modules/broker/store.c modules/broker/proto.c \
	modules/broker/http.c modules/broker/hook.c modules/broker/lookupd.c modules/broker/local.c \
	modules/broker/diskq.c modules/broker/broker.h modules/broker/diskq.h modules/broker/tn_broker.h \
	modules/broker/zmtp.c modules/broker/zmtp.h modules/broker/zmtp_conf.c modules/broker/zmtp_bind.c \
	modules/broker/zmtp_peer.h modules/broker/mdp.c
modules_broker_broker_la_SOURCES = $(BROKER_SOURCES)
modules_broker_broker_la_CFLAGS = $(AM_CFLAGS) -I$(top_srcdir)/modules/discovery
modules_broker_broker_la_LDFLAGS = $(MODULE_LDFLAGS)
modules_broker_broker_la_LIBADD = $(JANSSON_LIBS) $(ZLIB_LIBS)

brokerincludedir = $(includedir)/ternd
brokerinclude_HEADERS = modules/broker/tn_broker.h

if HAVE_CMOCKA
UNIT_TESTS += t/unit/test_broker_store
t_unit_test_broker_store_SOURCES = t/unit/test_broker_store.c modules/broker/store.c modules/broker/config.c \
	modules/broker/zmtp_conf.c modules/broker/diskq.c $(CORE_SOURCES)
t_unit_test_broker_store_CFLAGS = $(UNIT_CFLAGS) -I$(top_srcdir)/modules/broker
t_unit_test_broker_store_LDADD = $(UNIT_LIBS)

UNIT_TESTS += t/unit/test_zmtp
t_unit_test_zmtp_SOURCES = t/unit/test_zmtp.c modules/broker/zmtp.c $(CORE_SOURCES)
t_unit_test_zmtp_CFLAGS = $(UNIT_CFLAGS) -I$(top_srcdir)/modules/broker
t_unit_test_zmtp_LDADD = $(UNIT_LIBS)
endif

# A test plugin using the broker's service and events (check only).
check_LTLIBRARIES += t/modules/brokerplug.la
t_modules_brokerplug_la_SOURCES = t/modules/brokerplug.c
t_modules_brokerplug_la_CFLAGS = $(AM_CFLAGS) -I$(top_srcdir)/modules/broker
t_modules_brokerplug_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)

# The example on_publish hook (scripts/broker.lua), installed for reference.
brokerscriptdir = $(pkgdatadir)/scripts
dist_brokerscript_DATA = scripts/broker.lua
