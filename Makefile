# SPDX-License-Identifier: MIT
# Front door: `make run`, `make test`, `make bench`. Each installs the Debian
# packages it needs first (scripts/deps.sh), so a fresh Debian 12 machine
# needs nothing else.

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
TSAN_BUILD ?= build-tsan
JOBS       ?= $(shell nproc)
FUZZ_SECONDS ?= 30
PREFIX     ?= /usr/local

# Every configure states its options, so what a build contains follows from
# the make target alone, never from what was installed or configured before.
# `make build`/`run`/`bench` need the build packages only (no tests); the
# test stages add the tests and the valgrind stack annotations.
CONFIG      = -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX)
TEST_CONFIG = -DMICA_TESTS=ON -DMICA_VALGRIND=ON

.PHONY: all build run test test-release test-asan test-tsan fuzz valgrind lint bench clean \
	install uninstall install-check

all: build

build:
	@scripts/deps.sh build
	@cmake -S . -B $(BUILD) $(CONFIG) -DMICA_TESTS=OFF -DMICA_VALGRIND=OFF >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

# The main job: the seed's UserService in the foreground, REST on :8080 and
# gRPC on :50051 (both answer on either port; Ctrl-C drains and exits).
run: build
	$(BUILD)/examples/user

# Everything CI runs: unit + integration tests (release and ASan+UBSan
# builds), the runtime under TSan, valgrind, a bounded fuzzing run, the lint.
test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory lint test-release test-asan test-tsan valgrind install-check fuzz
	@echo "make test: all suites passed"

test-release:
	@cmake -S . -B $(BUILD) $(CONFIG) $(TEST_CONFIG) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

test-asan:
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMICA_SANITIZE=address -DMICA_TESTS=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j$(JOBS)

# The runtime's, the observe layer's and the resilience layer's unit and
# stress tests (exporters, stats, metric shards, policy counters and the
# rate limiters shared by all workers) under ThreadSanitizer (the coroutine
# switches are annotated as fibers, so TSan follows them).
test-tsan:
	@cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMICA_SANITIZE=thread -DMICA_TESTS=ON >/dev/null
	@cmake --build $(TSAN_BUILD) -j$(JOBS)
	cd $(TSAN_BUILD) && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
		ctest --output-on-failure -R '^(runtime|observe|resilience)/'

# Unit tests and one served-and-drained server run under memcheck.
valgrind:
	@cmake -S . -B $(BUILD) $(CONFIG) $(TEST_CONFIG) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)
	scripts/valgrind.sh $(BUILD)

fuzz:
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMICA_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS)
	scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

lint:
	@scripts/lint.sh

bench:
	@scripts/deps.sh bench
	@cmake -S . -B $(BUILD) $(CONFIG) -DMICA_TESTS=OFF -DMICA_VALGRIND=OFF >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)
	bench/run.sh $(BUILD)

# mica for other projects: libmica.so (with soname) and libmica.a, the
# headers, mica.pc and a CMake package under $(DESTDIR)$(PREFIX).
install: build
	@cmake --install $(BUILD)
	@if [ -z "$(DESTDIR)" ] && [ -w /etc/ld.so.cache ]; then ldconfig; fi

uninstall:
	@cmake --build $(BUILD) --target uninstall
	@if [ -z "$(DESTDIR)" ] && [ -w /etc/ld.so.cache ]; then ldconfig; fi

# Installs into a scratch prefix and builds tests/install/ against it, once
# through pkg-config and once through find_package(mica), then runs both.
install-check:
	scripts/install-check.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD)
