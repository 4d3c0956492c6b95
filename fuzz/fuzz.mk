# fuzz.mk -- `make fuzz`, included from the top-level Makefile.am. The
# libFuzzer targets need clang, so they are built outside automake by
# scripts/dev/fuzz (in build-fuzz/, with fuzz/build.mk); this target only
# runs it: every target for FUZZ_TIME seconds (default 60).
FUZZ_TIME = 60
fuzz:
	FUZZ_TIME=$(FUZZ_TIME) $(SHELL) $(top_srcdir)/scripts/dev/fuzz
.PHONY: fuzz

EXTRA_DIST += scripts/dev/fuzz fuzz/build.mk fuzz/README.md fuzz/mkseeds.py fuzz/fz.h fuzz/fz.c \
	fuzz/fuzz_nsq.c fuzz/fuzz_lookupd.c fuzz/fuzz_http.c fuzz/fuzz_conf.c fuzz/fuzz_diskq.c \
	fuzz/fz_gateway.c fuzz/fuzz_gateway.c fuzz/fuzz_ws.c \
	fuzz/corpus
