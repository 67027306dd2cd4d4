# cordon — build, test, demo, bench, install.
#   make          build/cordond, build/cordonctl, build/cordon.bpf.o
#   make test     install missing packages, format check, build, unit tests, fuzz corpus replay,
#                 integration tests, then test-sanitize and fuzz-ci (below)
#   make unit / unit-san / integration / fuzz-regress   one part of make test
#   make test-sanitize  unit tests under ASan+UBSan (unit-san), the integration suite against
#                 cordond/cordonctl built with ASan+UBSan (integration-san: build/san-bin), and the
#                 threaded parts (recorder, journal, KeyCache, JWKS lookups, resolver, DNS proxy)
#                 under TSan (unit-tsan: build/tsan, integration-tsan: build/tsan-bin)
#   make fuzz     every libFuzzer target for FUZZ_SECONDS (30) from its seed corpus
#   make fuzz-ci  every target for FUZZ_CI_SECONDS (60), FUZZ_CI_JOBS (nproc) at a time, on a copy
#                 of its corpus; findings in build/fuzz/artifacts/NAME/, and the run fails
#   make demo     install missing packages, build, run the end-to-end demo
#   make bench    benchmarks, figures printed as tables (see bench/RESULTS.md)
#   make soak     10 minutes of mixed traffic through cordond: RSS, fds, errors (SOAK_ARGS)
#   make install  PREFIX (/usr/local), DESTDIR; make uninstall removes exactly what it put there
#   make deb      a Debian package in $(BUILD) (scripts/build-deb.sh; DEB_VERSION to override)

BUILD    ?= build
CXX      ?= g++
CLANG    ?= clang
BPFTOOL  ?= bpftool
PROTOC   ?= protoc
PYTHON   ?= /usr/bin/python3
PREFIX   ?= /usr/local
DESTDIR  ?=
# Where `make install` puts the rest. systemd and systemd-tmpfiles read both /usr/lib and
# /usr/local/lib, so each follows PREFIX; for PREFIX=/usr the unit goes where Debian 12 keeps
# packaged units (`pkg-config --variable=systemdsystemunitdir systemd`).
UNITDIR     ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCDIR      ?= $(PREFIX)/share/doc/cordon
MANDIR      ?= $(PREFIX)/share/man
# Not under PREFIX: the embedded default policy reads /usr/share/cordon/cursor.desc.
DATADIR     := /usr/share/cordon
# make deb: the package's version (default: kCordonVersion, Debian revision 1) and where it goes.
DEB_VERSION ?=
DEB_OUT     ?= $(BUILD)

ARCH := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')

INCLUDES := -I$(BUILD) -I$(BUILD)/gen -Iinclude -Iuserspace -Ibpf
CXXFLAGS_BASE := -std=c++20 -Wall -Wextra -Werror -g $(INCLUDES) -MMD -MP
CXXFLAGS ?= -O2
# Debian's hardening for the two installed binaries: a read-only GOT (relro + bindnow).
LDFLAGS ?= -Wl,-z,relro -Wl,-z,now
SAN_FLAGS := -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
TSAN_FLAGS := -O1 -fsanitize=thread -fno-omit-frame-pointer
LIBS := -lbpf -lelf -luring -lsystemd -lboost_program_options -lyaml-cpp -lprotobuf -lssl -lcrypto -lnghttp2 -lz \
	-lhs -lre2 -lpcre2-8 -lresolv -lpthread
TEST_LIBS := -lgtest -lgmock -lpthread

PROTOS := $(wildcard proto/cordon/*.proto)
# Cursor's publicly known message shapes: compiled into a descriptor set that cordond and cordonctl
# load at run time to decode any message to JSON (names where known, numbers where not).
CURSOR_PROTOS := $(shell find proto/cursor -name '*.proto' 2>/dev/null | sort)
FUZZ_SRCS := $(wildcard tests/fuzz/*.cc)
FUZZ_TARGETS := $(patsubst tests/fuzz/%.cc,$(BUILD)/fuzz/%,$(FUZZ_SRCS))
FUZZ_SECONDS ?= 30
FUZZ_CI_SECONDS ?= 60
FUZZ_CI_JOBS ?= $(shell nproc)
STANDIN_MODULES := tests/standin/node_modules/.package-lock.json
PROTO_CC := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb.cc,$(PROTOS))
PROTO_H := $(PROTO_CC:.cc=.h)
GEN_HEADERS := $(BUILD)/cordon.skel.h $(PROTO_H)

MAINS := userspace/cordond_main.cc userspace/cordonctl_main.cc
LIB_SRCS := $(filter-out $(MAINS),$(shell find userspace -name '*.cc'))
LIB_OBJS := $(patsubst %.cc,$(BUILD)/obj/%.o,$(LIB_SRCS)) $(patsubst $(BUILD)/gen/%.cc,$(BUILD)/obj/gen/%.o,$(PROTO_CC)) $(BUILD)/obj/gen/default_policy.o
SAN_LIB_OBJS := $(patsubst $(BUILD)/obj/%,$(BUILD)/san/%,$(LIB_OBJS))
UNIT_SRCS := $(wildcard tests/unit/*.cc)
UNIT_OBJS := $(patsubst %.cc,$(BUILD)/obj/%.o,$(UNIT_SRCS))
SAN_UNIT_OBJS := $(patsubst %.cc,$(BUILD)/san/%.o,$(UNIT_SRCS))
TSAN_LIB_OBJS := $(patsubst $(BUILD)/obj/%,$(BUILD)/tsan/%,$(LIB_OBJS))
# The unit tests that start threads (the *_threads_test.cc ones run them against each other), and
# the suites among them unit-tsan runs.
TSAN_UNIT_SRCS := tests/unit/recorder_test.cc tests/unit/jwt_test.cc tests/unit/resolver_test.cc \
	$(wildcard tests/unit/*_threads_test.cc)
TSAN_UNIT_OBJS := $(patsubst %.cc,$(BUILD)/tsan/%.o,$(TSAN_UNIT_SRCS))
TSAN_SUITES := Recorder*:KeyCache*:JwksFetch*:Resolver*:Journal*:*Threads*
BENCH_SRCS := $(wildcard bench/*.cc)
MICROBENCH_SRCS := $(wildcard bench/micro/*.cc)

.PHONY: soak all deps test unit unit-san unit-tsan integration integration-san integration-tsan test-sanitize demo bench \
	fmt fmt-check install uninstall deb clean fuzz fuzz-regress fuzz-ci standin
.DELETE_ON_ERROR:
.SECONDEXPANSION:

all: $(BUILD)/cordond $(BUILD)/cordonctl $(BUILD)/cordon.bpf.o $(if $(CURSOR_PROTOS),$(BUILD)/cursor.desc)

deps:
	./scripts/install-deps.sh

# --- BPF: CO-RE object, vmlinux.h from the running kernel's BTF, skeleton from bpftool ---
$(BUILD)/vmlinux.h:
	@mkdir -p $(@D)
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@

$(BUILD)/cordon.bpf.o: bpf/cordon.bpf.c bpf/cordon_decide.h include/cordon/bpf_shared.h $(BUILD)/vmlinux.h
	$(CLANG) -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror $(INCLUDES) -c $< -o $@

$(BUILD)/cordon.skel.h: $(BUILD)/cordon.bpf.o
	$(BPFTOOL) gen skeleton $< name cordon_bpf > $@

# --- generated C++: protobuf schema, embedded default policy ---
$(BUILD)/gen/%.pb.cc $(BUILD)/gen/%.pb.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	$(PROTOC) -Iproto --cpp_out=$(BUILD)/gen $<

$(BUILD)/cursor.desc: $(CURSOR_PROTOS)
	@mkdir -p $(@D)
	$(PROTOC) -Iproto --include_imports --descriptor_set_out=$@ $(patsubst proto/%,%,$(CURSOR_PROTOS))

# The Cursor stand-in's npm packages, pinned by tests/standin/package-lock.json.
$(STANDIN_MODULES): tests/standin/package.json tests/standin/package-lock.json
	cd tests/standin && npm ci --no-audit --no-fund --loglevel=error

standin: $(STANDIN_MODULES)

$(BUILD)/gen/default_policy.cc: userspace/config/default_policy.yaml
	@mkdir -p $(@D)
	{ printf 'namespace cordon {\nextern const char kDefaultPolicyYaml[];\nconst char kDefaultPolicyYaml[] = R"cordon_yaml('; \
	  cat $<; printf ')cordon_yaml";\n}\n'; } > $@

# --- userspace ---
$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.cc | $(GEN_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_BASE) $(CXXFLAGS) -Wno-unused-parameter -c $< -o $@

$(BUILD)/obj/%.o: %.cc | $(GEN_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_BASE) $(CXXFLAGS) -c $< -o $@

$(BUILD)/san/gen/%.o: $(BUILD)/gen/%.cc | $(GEN_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_BASE) $(SAN_FLAGS) -Wno-unused-parameter -c $< -o $@

$(BUILD)/san/%.o: %.cc | $(GEN_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_BASE) $(SAN_FLAGS) -c $< -o $@

$(BUILD)/tsan/gen/%.o: $(BUILD)/gen/%.cc | $(GEN_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_BASE) $(TSAN_FLAGS) -Wno-unused-parameter -c $< -o $@

$(BUILD)/tsan/%.o: %.cc | $(GEN_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_BASE) $(TSAN_FLAGS) -c $< -o $@

$(BUILD)/libcordon.a: $(LIB_OBJS)
	ar rcs $@ $^

$(BUILD)/libcordon-san.a: $(SAN_LIB_OBJS)
	ar rcs $@ $^

$(BUILD)/cordond: $(BUILD)/obj/userspace/cordond_main.o $(BUILD)/libcordon.a
	$(CXX) $(LDFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/cordonctl: $(BUILD)/obj/userspace/cordonctl_main.o $(BUILD)/libcordon.a
	$(CXX) $(LDFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/libcordon-tsan.a: $(TSAN_LIB_OBJS)
	ar rcs $@ $^

# cordond and cordonctl with ASan+UBSan (integration-san) and with TSan (integration-tsan).
$(BUILD)/san-bin/cordond $(BUILD)/san-bin/cordonctl: $(BUILD)/san-bin/%: $(BUILD)/san/userspace/%_main.o $(BUILD)/libcordon-san.a
	@mkdir -p $(@D)
	$(CXX) -fsanitize=address,undefined $^ -o $@ $(LIBS)

$(BUILD)/tsan-bin/cordond $(BUILD)/tsan-bin/cordonctl: $(BUILD)/tsan-bin/%: $(BUILD)/tsan/userspace/%_main.o $(BUILD)/libcordon-tsan.a
	@mkdir -p $(@D)
	$(CXX) -fsanitize=thread $^ -o $@ $(LIBS)

$(BUILD)/unit-tests: $(UNIT_OBJS) $(BUILD)/libcordon.a
	$(CXX) $^ -o $@ $(TEST_LIBS) $(LIBS) -lgtest_main

$(BUILD)/unit-tests-san: $(SAN_UNIT_OBJS) $(BUILD)/libcordon-san.a
	$(CXX) -fsanitize=address,undefined $^ -o $@ $(TEST_LIBS) $(LIBS) -lgtest_main

$(BUILD)/unit-tests-tsan: $(TSAN_UNIT_OBJS) $(BUILD)/libcordon-tsan.a
	$(CXX) -fsanitize=thread $^ -o $@ $(TEST_LIBS) $(LIBS) -lgtest_main

# Google Benchmark micro-benchmarks of library code (leaf minting, parsers, ...).
$(BUILD)/cordon-microbench: $(patsubst %.cc,$(BUILD)/obj/%.o,$(MICROBENCH_SRCS)) $(BUILD)/libcordon.a
	$(CXX) $^ -o $@ -lbenchmark_main -lbenchmark $(LIBS)

$(BUILD)/cordon-bench: $(patsubst %.cc,$(BUILD)/obj/%.o,$(BENCH_SRCS))
	$(CXX) $^ -o $@

# --- fuzz targets: tests/fuzz/NAME.cc with the sources it needs in FUZZ_DEPS_NAME ---
include $(wildcard tests/fuzz/*.mk)
FUZZ_FLAGS := -g -O1 -std=c++20 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all $(INCLUDES)

$(BUILD)/fuzz/%: tests/fuzz/%.cc $$(FUZZ_DEPS_$$*) | $(GEN_HEADERS)
	@mkdir -p $(@D)
	clang++ $(FUZZ_FLAGS) $< $(FUZZ_DEPS_$*) -o $@ $(FUZZ_LIBS_$*)

# Every target for FUZZ_SECONDS, from its seed corpus; new findings land in build/fuzz/NAME.corpus.
fuzz: $(FUZZ_TARGETS)
	@for t in $(FUZZ_TARGETS); do n=$$(basename $$t); mkdir -p $(BUILD)/fuzz/$$n.corpus; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS) s"; \
	  $$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz/$$n.corpus tests/fuzz/corpus/$$n || exit 1; done

# Replays the seed corpora (and regression inputs) once: quick, part of make test.
fuzz-regress: $(FUZZ_TARGETS)
	@for t in $(FUZZ_TARGETS); do n=$$(basename $$t); \
	  $$t -runs=0 tests/fuzz/corpus/$$n > $(BUILD)/fuzz/$$n.regress.log 2>&1 || { cat $(BUILD)/fuzz/$$n.regress.log; exit 1; }; \
	  echo "fuzz-regress: $$n ok ($$(ls tests/fuzz/corpus/$$n | wc -l) inputs)"; done

# CI: every target for FUZZ_CI_SECONDS from a copy of its corpus, FUZZ_CI_JOBS at a time; fails
# naming the target, the input (build/fuzz/artifacts/NAME/) and the tail of its log.
fuzz-ci: $(FUZZ_TARGETS)
	FUZZ_CI_SECONDS=$(FUZZ_CI_SECONDS) FUZZ_CI_JOBS=$(FUZZ_CI_JOBS) tests/fuzz/ci.sh $(BUILD) $(notdir $(FUZZ_TARGETS))

# --- tests ---
# Everything is built first, on every core: the sanitizer and fuzz builds would otherwise take
# most of CI's time one file at a time.
TEST_BUILDS := all standin $(BUILD)/unit-tests $(BUILD)/unit-tests-san $(BUILD)/unit-tests-tsan \
	$(BUILD)/san-bin/cordond $(BUILD)/san-bin/cordonctl $(BUILD)/tsan-bin/cordond $(BUILD)/tsan-bin/cordonctl \
	$(FUZZ_TARGETS)
test:
	./scripts/install-deps.sh
	$(MAKE) fmt-check
	$(MAKE) -j$(shell nproc) $(TEST_BUILDS)
	$(MAKE) unit fuzz-regress integration
	$(MAKE) test-sanitize
	$(MAKE) fuzz-ci

unit: $(BUILD)/unit-tests
	$(BUILD)/unit-tests

unit-san: $(BUILD)/unit-tests-san
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/unit-tests-san

integration: all standin
	$(PYTHON) -m pytest -v -p no:cacheprovider tests/integration

# --- sanitizers: ASan+UBSan everywhere, TSan on the threaded parts ---
test-sanitize: unit-san integration-san unit-tsan integration-tsan

# The whole suite against build/san-bin; conftest.py gives each cordond and cordonctl ASAN_OPTIONS
# and UBSAN_OPTIONS with a log_path and fails the test whose process reported anything (leaks too).
# INTEGRATION_SAN narrows it (a file, a -k expression) when running it by hand.
INTEGRATION_SAN ?= tests/integration
integration-san: all standin $(BUILD)/san-bin/cordond $(BUILD)/san-bin/cordonctl
	CORDON_BIN_DIR=$(BUILD)/san-bin $(PYTHON) -m pytest -v -p no:cacheprovider $(INTEGRATION_SAN)

# gcc 12's TSan maps its shadow at fixed addresses: with the kernel's larger mmap randomisation
# (vm.mmap_rnd_bits) it can die with "unexpected memory mapping". setarch -R runs it without
# address randomisation instead of changing the sysctl (children inherit it: pytest runs under it
# for integration-tsan); a TSan that cannot start fails the target.
TSAN_RUN := $(if $(shell command -v setarch),setarch $(shell uname -m) -R)
unit-tsan: $(BUILD)/unit-tests-tsan
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(TSAN_RUN) $(BUILD)/unit-tests-tsan \
	  --gtest_filter='$(TSAN_SUITES)' || { echo "unit-tsan: FAILED (a race above, or TSan could not start)" >&2; exit 1; }

# The DNS proxy's workers, the resolver, the journal and the recorder in a running cordond: the
# DNS and recording suites against build/tsan-bin (reports fail the test, as with ASan).
TSAN_INTEGRATION := tests/integration/test_dns.py tests/integration/test_recording.py
integration-tsan: all standin $(BUILD)/tsan-bin/cordond $(BUILD)/tsan-bin/cordonctl
	$(TSAN_RUN) $(BUILD)/tsan-bin/cordonctl --help > /dev/null || { echo "integration-tsan: TSan cannot start here" >&2; exit 1; }
	CORDON_BIN_DIR=$(BUILD)/tsan-bin $(TSAN_RUN) $(PYTHON) -m pytest -v -p no:cacheprovider $(TSAN_INTEGRATION)

demo:
	./scripts/install-deps.sh
	$(MAKE) all standin
	./scripts/demo.sh

# Issue #8's soak: N minutes (default 10) of mixed checked traffic; a table, figures in
# bench/RESULTS.md. Root (BPF, cgroups); SOAK_ARGS="--minutes 2" for a short one.
SOAK_ARGS ?=
soak:
	./scripts/install-deps.sh
	$(MAKE) all standin
	nice $(PYTHON) bench/soak.py $(SOAK_ARGS)

bench:
	./scripts/install-deps.sh
	$(MAKE) all $(BUILD)/cordon-bench $(BUILD)/cordon-microbench
	./bench/run.sh
	./bench/run-tls.sh

fmt:
	clang-format -i $(shell find userspace tests bench -name '*.cc' -o -name '*.h') bpf/*.c bpf/*.h include/cordon/*.h

fmt-check:
	clang-format --dry-run --Werror $(shell find userspace tests bench -name '*.cc' -o -name '*.h') bpf/*.c bpf/*.h include/cordon/*.h

# The unit names /usr/local paths (ExecStart, ...): the installed copy names this PREFIX's.
# State (/var/lib/cordon), the CA's place in the trust store and the pins are not installed
# files: `cordonctl ca uninstall` and `cordonctl detach` remove those (the package does it itself).
install: all
	install -D -m 0755 $(BUILD)/cordond $(DESTDIR)$(PREFIX)/sbin/cordond
	install -D -m 0755 $(BUILD)/cordonctl $(DESTDIR)$(PREFIX)/bin/cordonctl
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/sbin/|$(PREFIX)/sbin/|g' -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' \
	    -e 's|/usr/share/doc/cordon/|$(DOCDIR)/|g' systemd/cordon.service > $(DESTDIR)$(UNITDIR)/cordon.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/cordon.service
	install -D -m 0644 systemd/cordon.tmpfiles $(DESTDIR)$(TMPFILESDIR)/cordon.conf
	install -D -m 0644 userspace/config/default_policy.yaml $(DESTDIR)$(DATADIR)/policy.yaml.example
	install -D -m 0644 $(BUILD)/cursor.desc $(DESTDIR)$(DATADIR)/cursor.desc
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 man/cordond.8 $(DESTDIR)$(MANDIR)/man8/cordond.8
	install -D -m 0644 man/cordonctl.1 $(DESTDIR)$(MANDIR)/man1/cordonctl.1
	install -D -m 0755 scripts/cordon-runner-setup $(DESTDIR)$(PREFIX)/sbin/cordon-runner-setup
	install -D -m 0644 man/cordon-runner-setup.8 $(DESTDIR)$(MANDIR)/man8/cordon-runner-setup.8
	install -D -m 0644 docs/runners.md $(DESTDIR)$(DOCDIR)/runners.md
	install -D -m 0755 scripts/runner-hooks/github-job-started.sh $(DESTDIR)$(DATADIR)/runner-hooks/github-job-started.sh
	install -D -m 0755 scripts/runner-hooks/gitlab-pre-build.sh $(DESTDIR)$(DATADIR)/runner-hooks/gitlab-pre-build.sh

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/cordond $(DESTDIR)$(PREFIX)/bin/cordonctl $(DESTDIR)$(PREFIX)/sbin/cordon-runner-setup
	rm -f $(DESTDIR)$(UNITDIR)/cordon.service $(DESTDIR)$(TMPFILESDIR)/cordon.conf
	rm -f $(DESTDIR)$(MANDIR)/man8/cordond.8 $(DESTDIR)$(MANDIR)/man1/cordonctl.1 $(DESTDIR)$(MANDIR)/man8/cordon-runner-setup.8
	rm -rf $(DESTDIR)$(DATADIR) $(DESTDIR)$(DOCDIR)

# The package is built from `make install DESTDIR=<stage> PREFIX=/usr`; see scripts/build-deb.sh.
deb: all
	MAKE="$(MAKE)" BUILD="$(BUILD)" DEB_VERSION="$(DEB_VERSION)" DEB_OUT="$(DEB_OUT)" ./scripts/build-deb.sh

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
