# kmsd — see README.md. `make run` and `make check` are the two commands that matter.
CC      ?= cc
BUILD   ?= build
SAN     ?=

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wformat=2 -Wvla -Wpointer-arith -Wno-unused-parameter
INCS    := -I. $(shell pkg-config --cflags p11-kit-1 2>/dev/null || echo -I/usr/include/p11-kit-1)
LIBS    := -lmicrohttpd -ljansson -lsqlite3 -lcrypto -ldl -lpthread
ifeq ($(SAN),1)
OPT     := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
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

.PHONY: all deps run check check-unit check-integration asan tests clean
.DEFAULT_GOAL := all

all: $(BUILD)/kmsd

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libkms.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/kmsd: $(BUILD)/kms/kmsd.o $(BUILD)/libkms.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TCOM_OBJ) $(BUILD)/libkms.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lcmocka

tests: all $(UNIT_BIN)

# The ASan+UBSan build lives beside the normal one and runs the same tests.
asan:
	$(MAKE) BUILD=build/asan SAN=1 tests

deps:
	@sh scripts/deps.sh

run: deps
	$(MAKE) all
	sh scripts/dev-run.sh

check: deps
	$(MAKE) tests
	$(MAKE) asan
	sh scripts/check.sh

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(TCOM_OBJ:.o=.d) $(BUILD)/kms/kmsd.d $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%.d)
