# fuzz/build.mk -- builds the libFuzzer targets with clang, outside automake
# (the tree's own build stays gcc). Run by scripts/dev/fuzz from the fuzz
# build directory, which holds a config.h made by `configure CC=clang`:
#     make -f ../fuzz/build.mk TOP=.. [targets]
# Every object is built with -fsanitize=fuzzer-no-link,address,undefined,
# the targets link -fsanitize=fuzzer (libFuzzer's main).
TOP ?= ..
CC = clang
SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
PKGS = yaml-0.1 lua5.4 jansson zlib
CFLAGS = -g -O1 -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Werror $(SAN) \
	-fsanitize=fuzzer-no-link
CPPFLAGS = -include config.h -I$(TOP)/server/include -I$(TOP)/server -I$(TOP)/modules/broker \
	-I$(TOP)/modules/discovery -I$(TOP)/modules/gateway -I$(TOP)/fuzz \
	-DTERND_MODULES_DIR='"/nonexistent"' -DTERND_PLUGINS_DIR='"/nonexistent"' \
	-DTERND_SYSCONF_DIR='"/nonexistent"' \
	$(shell pkg-config --cflags $(PKGS))
LDFLAGS = $(SAN) -fsanitize=fuzzer
LIBS = $(shell pkg-config --libs $(PKGS)) -lev -lhttp_parser -lm -ldl -lpthread

# The sources of the core and the modules, as in Makefile.am (CORE_SOURCES)
# and modules/*/*.mk: keep them in step (a missing one fails the link).
CORE = core error log buf service stats conf conn http lua module admin notify daemon_conf
CORE_OBJS = $(CORE:%=obj/server/%.o) obj/fuzz/fz.o
BROKER = broker config store proto http hook lookupd local diskq
BROKER_OBJS = $(BROKER:%=obj/modules/broker/%.o)
DISCOVERY = discovery lookup_db services proto_v1 api_http api_lua service hash
DISCOVERY_OBJS = $(DISCOVERY:%=obj/modules/discovery/%.o)
GATEWAY = gateway config codec session ws luaapi node map registry
GATEWAY_OBJS = $(GATEWAY:%=obj/modules/gateway/%.o) obj/fuzz/fz_gateway.o

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
