FUZZ_DEPS_http_head := userspace/proxy/http_host.cc
