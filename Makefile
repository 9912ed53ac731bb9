# kmsd — see README.md. `make run` and `make check` are the two commands that matter.
CC      ?= cc
BUILD   ?= build
SAN     ?=

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wformat=2 -Wvla -Wpointer-arith -Wno-unused-parameter
INCS    := -I. $(shell pkg-config --cflags p11-kit-1 2>/dev/null || echo -I/usr/include/p11-kit-1) \
           $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
LIBS    := -lmicrohttpd -lgnutls -ljansson -lsqlite3 -lpq -lcrypto -ldl -lpthread -lm
ifeq ($(SAN),1)
OPT     := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
SANLD   := -fsanitize=address,undefined
else ifeq ($(SAN),thread)
# ThreadSanitizer (gcc's libtsan). libmicrohttpd, SoftHSM2, SQLite, GnuTLS and OpenSSL are
# not instrumented: tests/tsan.supp names the races inside them, never kmsd's own.
OPT     := -O1 -g -fsanitize=thread -fno-omit-frame-pointer
SANLD   := -fsanitize=thread
else ifeq ($(SAN),fuzz)
OPT     := -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
SANLD   := -fsanitize=address,undefined
else
OPT     := -O2 -g -D_FORTIFY_SOURCE=2
SANLD   :=
endif
HARDEN  := -fstack-protector-strong -fstack-clash-protection -fcf-protection -fPIE \
           -fno-strict-aliasing
CFLAGS  += -std=gnu11 $(OPT) $(HARDEN) $(WARN) $(INCS) -D_GNU_SOURCE -MMD -MP
LDFLAGS += -pie -Wl,-z,relro,-z,now -Wl,-z,noexecstack $(SANLD)

LIB_SRC  := $(filter-out kms/kmsd.c,$(wildcard kms/*.c)) \
            $(wildcard kms/base/*.c kms/store/*.c kms/audit/*.c kms/core/*.c kms/http/*.c \
                       pkcs11/*.c policy/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TCOM_SRC := $(wildcard tests/common/*.c)
TCOM_OBJ := $(TCOM_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
CLI_SRC  := $(wildcard kms/cli/*.c)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
SHIM_SRC := $(wildcard tests/p11shim/*.c)
SHIM_SO  := $(if $(SHIM_SRC),$(BUILD)/tests/p11shim.so)
IOF_SRC  := $(wildcard tests/iofault/*.c)
IOF_SO   := $(if $(IOF_SRC),$(BUILD)/tests/iofault.so)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/bin/%)
FUZZ_SECONDS ?= 60
BENCH_BIN := $(BUILD)/bench/p11loop $(BUILD)/bench/fsyncloop

# libkmsclient (docs/CLIENT.md): its own sources and the pure base modules it shares with
# kmsctl, built position-independent with only the kmsc_ API visible.
KMSC_SOVER := 0
KMSC_VER   := 0.1.0
KMSC_SRC  := $(wildcard kms/client/*.c) kms/base/seal.c kms/base/secret.c kms/base/b64.c kms/base/err.c
KMSC_OBJ  := $(KMSC_SRC:%.c=$(BUILD)/pic/%.o)
KMSC_LIBS := -lcurl -ljansson -lcrypto -lpthread
KMSC_A    := $(BUILD)/libkmsclient.a
KMSC_SO   := $(BUILD)/libkmsclient.so
CLIENT    := $(KMSC_A) $(KMSC_SO) $(BUILD)/kmsclient.pc $(BUILD)/tests/kmsc_itest
EXAMPLES  := $(BUILD)/examples/phi-records/phi-records $(BUILD)/examples/phi-records/phi-records-shared
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include

.PHONY: all deps run check check-pg asan tsan valgrind tests clean fuzz fuzz-build fuzz-replay bench \
        bench-tools client examples install cluster cluster-check
.DEFAULT_GOAL := all

all: $(BUILD)/kmsd $(if $(CLI_SRC),$(BUILD)/kmsctl)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libkms.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/kmsd: $(BUILD)/kms/kmsd.o $(BUILD)/libkms.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/kmsctl: $(CLI_OBJ) $(BUILD)/libkms.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lcurl -lqrencode

# A PKCS#11 module that forwards to SoftHSM2 and injects faults on command.
$(BUILD)/tests/p11shim.so: $(SHIM_SRC) $(wildcard tests/p11shim/*.h)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) -fPIC -shared $(WARN) $(INCS) -D_GNU_SOURCE -o $@ $(SHIM_SRC) -ldl

# test_core_nodes stands between the core and two store reads (ld --wrap): another
# node's change landing during every read of a key, a store error in a rotation's retry.
$(BUILD)/tests/test_core_nodes: TEST_WRAP := -Wl,--wrap=store_version_list -Wl,--wrap=store_key_latest

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TCOM_OBJ) $(BUILD)/libkms.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(TEST_WRAP) -o $@ $^ $(LIBS) -lcmocka

# An LD_PRELOAD library that fails file I/O on command (tests/iofault/iofault.c).
# Built without sanitizers: it is preloaded into the ASan build too.
$(BUILD)/tests/iofault.so: $(IOF_SRC)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O1 -g -fPIC -shared $(WARN) -D_GNU_SOURCE -o $@ $(IOF_SRC) -ldl -lpthread

tests: all $(UNIT_BIN) $(SHIM_SO) $(IOF_SO) $(CLIENT) $(EXAMPLES)

# ---- libkmsclient, its integration driver, the example --------------------------------
client: $(CLIENT)

$(BUILD)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -fvisibility=hidden -c $< -o $@

$(KMSC_A): $(KMSC_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(KMSC_SO): $(KMSC_OBJ)
	$(CC) -shared -Wl,-soname,libkmsclient.so.$(KMSC_SOVER) -Wl,-z,relro,-z,now -Wl,-z,noexecstack \
	  -Wl,--no-undefined $(SANLD) -o $@.$(KMSC_VER) $^ $(KMSC_LIBS)
	ln -sf libkmsclient.so.$(KMSC_VER) $@.$(KMSC_SOVER)
	ln -sf libkmsclient.so.$(KMSC_VER) $@

$(BUILD)/kmsclient.pc: kms/client/kmsclient.pc.in Makefile
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	  -e 's|@VERSION@|$(KMSC_VER)|' $< > $@

# The cache's unit test needs the cache module.
$(BUILD)/tests/test_kmsc_cache: $(KMSC_A)
$(BUILD)/tests/test_kmsc_cache: LIBS += -lcurl

$(BUILD)/tests/kmsc_itest: $(BUILD)/tests/client/kmsc_itest.o $(KMSC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(KMSC_LIBS)

examples: $(EXAMPLES)

# Built as a customer would: <kmsclient.h> from include/, the static library.
$(BUILD)/examples/%.o $(BUILD)/tests/client/%.o: CFLAGS += -Iinclude

$(BUILD)/examples/phi-records/phi-records: $(BUILD)/examples/phi-records/phi-records.o $(KMSC_A)
	$(CC) $(LDFLAGS) -o $@ $^ $(KMSC_LIBS) -lsqlite3

# The same against the shared library (found beside it in $(BUILD) through its rpath).
$(BUILD)/examples/phi-records/phi-records-shared: $(BUILD)/examples/phi-records/phi-records.o $(KMSC_SO)
	$(CC) $(LDFLAGS) -o $@ $< -L$(BUILD) -lkmsclient -Wl,-rpath,'$$ORIGIN/../..' -ljansson -lsqlite3

install: $(KMSC_A) $(KMSC_SO) $(BUILD)/kmsclient.pc
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)
	install -m 644 $(KMSC_A) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(KMSC_SO).$(KMSC_VER) $(DESTDIR)$(LIBDIR)/
	ln -sf libkmsclient.so.$(KMSC_VER) $(DESTDIR)$(LIBDIR)/libkmsclient.so.$(KMSC_SOVER)
	ln -sf libkmsclient.so.$(KMSC_VER) $(DESTDIR)$(LIBDIR)/libkmsclient.so
	install -m 644 include/kmsclient.h $(DESTDIR)$(INCDIR)/
	@# written here, not copied: PREFIX/LIBDIR/INCDIR of this run, whatever build/ holds
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	  -e 's|@VERSION@|$(KMSC_VER)|' kms/client/kmsclient.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/kmsclient.pc
	chmod 644 $(DESTDIR)$(LIBDIR)/pkgconfig/kmsclient.pc

# libFuzzer harnesses (clang): `make fuzz FUZZ_SECONDS=N` explores, `make fuzz-replay`
# runs every checked-in corpus once (part of `make check`).
fuzz-build:
	$(MAKE) BUILD=build/fuzz SAN=fuzz CC=clang build/fuzz/libkms.a $(FUZZ_BIN)

build/fuzz/bin/%: tests/fuzz/%.c build/fuzz/libkms.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< build/fuzz/libkms.a $(LIBS)

fuzz: fuzz-build
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p build/fuzz/corpus/$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/corpus/$$n tests/fuzz/corpus/$$n || exit 1; done

fuzz-replay: fuzz-build
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); \
	  $$f -runs=0 tests/fuzz/corpus/$$n >/dev/null 2>build/fuzz/$$n.log || { cat build/fuzz/$$n.log; exit 1; }; \
	  echo "fuzz-replay: $$n: $$(ls tests/fuzz/corpus/$$n | wc -l) inputs ok"; done

# The ASan+UBSan build lives beside the normal one and runs the same tests.
asan:
	$(MAKE) BUILD=build/asan SAN=1 tests

# The ThreadSanitizer build (docs/SECURITY.md, "Concurrency"): `make check` runs
# tests/integration/test_stress.py against build/tsan/kmsd.
tsan:
	$(MAKE) BUILD=build/tsan SAN=thread all

# kmsd under valgrind memcheck for the integration suite (not in `make check`: slow).
# Any error or definite/indirect leak fails the module (conftest.py). test_abuse (RSS,
# descriptor counts, timing) and test_crash (kill -9 loops) measure the process itself
# and are left out. VALGRIND_TESTS narrows the run.
VALGRIND_TESTS ?= tests/integration --ignore=tests/integration/test_abuse.py \
                  --ignore=tests/integration/test_crash.py
VALGRIND := valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
            --errors-for-leak-kinds=definite,indirect --num-callers=30 \
            --suppressions=$(CURDIR)/tests/valgrind.supp
valgrind:
	@sh scripts/deps.sh valgrind
	$(MAKE) tests
	KMSD_PREFIX="$(VALGRIND)" KMSD_STARTUP_TIMEOUT=180 STRESS_SECONDS=$${STRESS_SECONDS:-10} \
	  /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE --tb=short --color=no $(VALGRIND_TESTS)

deps:
	@sh scripts/deps.sh

run: deps
	$(MAKE) all
	sh scripts/dev-run.sh

# The builds run in parallel, one job a core (JOBS=1 for a serial build); the tests
# themselves run one suite at a time (scripts/check.sh).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

check: deps
	$(MAKE) -j$(JOBS) tests bench-tools
	$(MAKE) -j$(JOBS) asan
	$(MAKE) -j$(JOBS) tsan
	$(MAKE) -j$(JOBS) fuzz-build
	sh scripts/check.sh

# The PostgreSQL store alone (check.sh part 5; make check runs it too): a throwaway
# loopback server, the store's unit tests and an integration subset against it.
check-pg: deps
	$(MAKE) -j$(JOBS) tests
	sh scripts/check.sh pg

# The local cluster (docs/SCALE-OUT.md): `make cluster` = scripts/cluster.sh up;
# `make cluster-check` builds, then runs tests/cluster (each module starts and stops a
# cluster of its own on free loopback ports; KMS_CLUSTER_STORE=pg|sqlite, default pg).
# scripts/check.sh (make check) runs them too.
cluster: deps
	$(MAKE) all
	sh scripts/cluster.sh up

cluster-check: deps
	$(MAKE) -j$(JOBS) all
	KMSD_BIN=$(BUILD)/kmsd /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE --tb=short \
	  $(if $(shell /usr/bin/python3 -c 'import xdist' 2>/dev/null && echo y),-n 3 --dist loadfile) tests/cluster

# The measuring harness (docs/BENCH.md): never part of `make check`, never asserts a timing.
# BENCH_QUICK=1 is a smoke run; BENCH_SECONDS, BENCH_RUNS, BENCH_CONNS, BENCH_OPS,
# BENCH_BATCHES, BENCH_WORKERS override the defaults.
bench-tools: $(BENCH_BIN)

$(BUILD)/bench/p11loop: $(BUILD)/bench/p11loop.o $(BUILD)/libkms.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/bench/fsyncloop: $(BUILD)/bench/fsyncloop.o
	$(CC) $(LDFLAGS) -o $@ $^

bench:
	@sh scripts/deps.sh bench
	$(MAKE) -s all bench-tools
	BUILD=$(BUILD) BENCH_QUICK=$(BENCH_QUICK) BENCH_SECONDS=$(BENCH_SECONDS) \
	  BENCH_RUNS=$(BENCH_RUNS) BENCH_CONNS="$(BENCH_CONNS)" BENCH_OPS="$(BENCH_OPS)" \
	  BENCH_BATCHES="$(BENCH_BATCHES)" BENCH_WORKERS=$(BENCH_WORKERS) \
	  BENCH_SCALING=$(BENCH_SCALING) BENCH_SCALE_KEYS="$(BENCH_SCALE_KEYS)" BENCH_IDLE_CONNS=$(BENCH_IDLE_CONNS) \
	  BENCH_CLUSTER=$(BENCH_CLUSTER) \
	  /usr/bin/python3 bench/bench.py

clean:
	rm -rf build

-include $(KMSC_OBJ:.o=.d) $(BUILD)/tests/client/kmsc_itest.d $(BUILD)/examples/phi-records/phi-records.d
-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TCOM_OBJ:.o=.d) $(BUILD)/kms/kmsd.d $(BENCH_BIN:%=%.d) $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%.d)
