#!/usr/bin/env bash
# Installs every Debian package that building, testing, benchmarking and the demo need.
# Idempotent: packages already present are skipped, so `make test` can call it every time.
set -euo pipefail

packages=(
  # build
  make g++ pkg-config clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev
  liburing-dev libboost-program-options-dev libsystemd-dev nlohmann-json3-dev
  libyaml-cpp-dev libprotobuf-dev protobuf-compiler clang-format
  # TLS interception, HTTP/2, HTTP/1.1 (Boost.Beast is header-only, in libboost-dev)
  libssl-dev libnghttp2-dev libboost-dev
  # fuzz targets (clang's libFuzzer and sanitizer runtimes)
  libclang-rt-14-dev
  # secret masking: vectorscan (the Hyperscan API) scans, RE2 confirms; PCRE2 for comparison
  libvectorscan-dev libre2-dev libpcre2-dev
  # unit tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # integration tests and demo: real journald, real clients, namespaces, certificates
  systemd curl python3 python3-pytest python3-cryptography iproute2 util-linux procps openssl ca-certificates
  # the metrics test reads the endpoint with Prometheus' own text-format parser
  python3-prometheus-client
  # the DNS proxy tests: dig over UDP and TCP
  bind9-dnsutils
  # the service test: the unit's system call filter, applied without systemd as PID 1
  python3-seccomp
  # side-by-side benchmarks: plain relays, TLS-terminating and TLS-intercepting proxies, h2load
  socat haproxy nginx-light mitmproxy nghttp2-client
  # make deb (dpkg-shlibdeps for the Depends, dpkg-parsechangelog) and its test's lintian run
  dpkg-dev lintian
  # test_runner_setup lints scripts/cordon-runner-setup and the runner hooks
  shellcheck
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
# Node.js (real Node clients and the Cursor stand-in): the runner image may ship its own build;
# only fall back to Debian's when no node is on PATH at all.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
# npm installs the stand-in's pinned packages (tests/standin/package-lock.json); Debian's nodejs
# does not bring it.
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]} — run as root (sudo $0)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
