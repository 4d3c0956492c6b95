# fuzz/build.mk -- builds the libFuzzer targets with clang, outside automake
# (the tree's own build stays gcc). Run by scripts/dev/fuzz from the fuzz
# build directory, which holds a config.h made by `configure CC=clang`:
#     make -f ../fuzz/build.mk TOP=.. [targets]
# Every object is built with -fsanitize=fuzzer-no-link,address,undefined,
# the targets link -fsanitize=fuzzer (libFuzzer's main).
TOP ?= ..
CC = clang
SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
PKGS = yaml-0.1 lua5.4 jansson zlib openssl
CFLAGS = -g -O1 -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Werror $(SAN) \
	-fsanitize=fuzzer-no-link
CPPFLAGS = -include config.h -I$(TOP)/server/include -I$(TOP)/server -I$(TOP)/modules/broker \
	-I$(TOP)/modules/discovery -I$(TOP)/modules/gateway -I$(TOP)/fuzz \
	-DTERND_MODULES_DIR='"/nonexistent"' -DTERND_PLUGINS_DIR='"/nonexistent"' \
	-DTERND_SYSCONF_DIR='"/nonexistent"' \
	$(shell pkg-config --cflags $(PKGS))
LDFLAGS = $(SAN) -fsanitize=fuzzer
LIBS = $(shell pkg-config --libs $(PKGS)) -lev -lhttp_parser -lm -ldl -lpthread

# The sources: every .c of the core but main.c (plus the generated
# dashboard assets), and every .c of a module's directory -- found, not
# listed, so a file added to the tree needs no change here.
srcs_of = $(patsubst $(TOP)/%.c,obj/%.o,$(wildcard $(TOP)/$(1)/*.c))
CORE_OBJS = $(filter-out obj/server/main.o,$(call srcs_of,server)) obj/gen/dashboard_assets.o \
	obj/fuzz/fz.o
BROKER_OBJS = $(call srcs_of,modules/broker)
DISCOVERY_OBJS = $(call srcs_of,modules/discovery)
GATEWAY_OBJS = $(call srcs_of,modules/gateway) obj/fuzz/fz_gateway.o

DASHBOARD_FILES = $(TOP)/server/dashboard/index.html $(TOP)/server/dashboard/dashboard.css \
	$(TOP)/server/dashboard/dashboard.js
gen/dashboard_assets.c: $(DASHBOARD_FILES) $(TOP)/scripts/dev/embed
	@mkdir -p gen
	{ sh $(TOP)/scripts/dev/embed tn_dash_index_html $(TOP)/server/dashboard/index.html && \
	  sh $(TOP)/scripts/dev/embed tn_dash_css $(TOP)/server/dashboard/dashboard.css && \
	  sh $(TOP)/scripts/dev/embed tn_dash_js $(TOP)/server/dashboard/dashboard.js; } > $@.tmp && mv $@.tmp $@
obj/gen/dashboard_assets.o: gen/dashboard_assets.c config.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

TARGETS = fuzz_nsq fuzz_lookupd fuzz_http fuzz_conf fuzz_diskq fuzz_gateway fuzz_ws
all: $(TARGETS)

fuzz_nsq: obj/fuzz/fuzz_nsq.o $(BROKER_OBJS) $(CORE_OBJS)
fuzz_lookupd: obj/fuzz/fuzz_lookupd.o $(DISCOVERY_OBJS) $(CORE_OBJS)
fuzz_http: obj/fuzz/fuzz_http.o $(CORE_OBJS)
fuzz_conf: obj/fuzz/fuzz_conf.o $(BROKER_OBJS) $(CORE_OBJS)
fuzz_diskq: obj/fuzz/fuzz_diskq.o obj/modules/broker/diskq.o $(CORE_OBJS)
fuzz_gateway: obj/fuzz/fuzz_gateway.o $(GATEWAY_OBJS) $(CORE_OBJS)
fuzz_ws: obj/fuzz/fuzz_ws.o $(GATEWAY_OBJS) $(CORE_OBJS)

$(TARGETS):
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

obj/%.o: $(TOP)/%.c config.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

-include $(shell find obj -name '*.d' 2>/dev/null)
.PHONY: all
