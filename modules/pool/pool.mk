# pool.mk -- the pool module (named worker thread pools), included from
# Makefile.am: pool.so, its unit test, and the TSan run of that test.
mod_LTLIBRARIES += modules/pool/pool.la
modules_pool_pool_la_SOURCES = \
	modules/pool/pool_core.c modules/pool/pool_core.h \
	modules/pool/pool_module.c modules/pool/pool_module.h \
	modules/pool/pool_lua.c
modules_pool_pool_la_LDFLAGS = $(MODULE_LDFLAGS)
modules_pool_pool_la_LIBADD = $(LUA_LIBS) $(EV_LIBS) -lpthread

if HAVE_CMOCKA
UNIT_TESTS += t/unit/test_pool
t_unit_test_pool_SOURCES = t/unit/test_pool.c modules/pool/pool_core.c $(CORE_SOURCES)
t_unit_test_pool_CFLAGS = $(UNIT_CFLAGS)
t_unit_test_pool_LDADD = $(UNIT_LIBS) -lpthread
endif

# The engine's unit test under ThreadSanitizer (not part of `make check`:
# TSan cannot share a build with ASan). Run: make tsan-pool
TSAN_POOL = t/unit/test_pool_tsan
tsan-pool: $(srcdir)/t/unit/test_pool.c $(srcdir)/modules/pool/pool_core.c $(srcdir)/modules/pool/pool_core.h
	$(AM_V_CC)$(CC) -std=gnu11 -O1 -g -fsanitize=thread -Wall -Wextra -Werror -Wno-unused-parameter \
	  -I$(top_srcdir)/server/include $(CMOCKA_CFLAGS) -o $(TSAN_POOL) \
	  $(srcdir)/t/unit/test_pool.c $(srcdir)/modules/pool/pool_core.c $(CMOCKA_LIBS) -lpthread
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ./$(TSAN_POOL)
CLEANFILES += $(TSAN_POOL)
.PHONY: tsan-pool

# A test module using the C API through the "pool" service (check only).
check_LTLIBRARIES += t/modules/pooluser.la
t_modules_pooluser_la_SOURCES = t/modules/pooluser.c
t_modules_pooluser_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
t_modules_pooluser_la_LIBADD = -lpthread
