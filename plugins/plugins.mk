# plugins.mk -- the drop-in plugins, included from the top-level Makefile.am.
# Each is a libtool module installed into $(plugindir), where ternd loads
# every .so at start and on SIGHUP (server/module.c); in the build tree they
# are linked into lib/ternd/plugins, where an uninstalled server/ternd looks.

plugindir = $(pkglibdir)/plugins
plugin_LTLIBRARIES = plugins/auth_file/auth_file.la plugins/statsd/statsd.la \
	plugins/stats_file/stats_file.la

plugins_auth_file_auth_file_la_SOURCES = plugins/auth_file/auth_file.c
plugins_auth_file_auth_file_la_LDFLAGS = $(MODULE_LDFLAGS)
plugins_auth_file_auth_file_la_LIBADD = $(JANSSON_LIBS)

plugins_statsd_statsd_la_SOURCES = plugins/statsd/statsd.c
plugins_statsd_statsd_la_LDFLAGS = $(MODULE_LDFLAGS)

plugins_stats_file_stats_file_la_SOURCES = plugins/stats_file/stats_file.c
plugins_stats_file_stats_file_la_LDFLAGS = $(MODULE_LDFLAGS)

all-local: build-plugins-dir
build-plugins-dir: $(plugin_LTLIBRARIES)
	@$(MKDIR_P) lib/ternd/plugins
	@for la in $(plugin_LTLIBRARIES); do \
	  so=`dirname $$la`/.libs/`basename $$la .la`.so; \
	  ln -sf "$(abs_builddir)/$$so" lib/ternd/plugins/; \
	done

# The example a third party builds against the installed headers
# (plugins/README.md; t/integration/plugins/test_thirdparty.py builds it).
EXTRA_DIST += plugins/README.md plugins/example/hello.c plugins/auth_file/secrets.example.json
