FUZZ_DEPS_client_hello := userspace/tls/client_hello.cc
