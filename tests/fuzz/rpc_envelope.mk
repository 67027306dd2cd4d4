FUZZ_DEPS_rpc_envelope := userspace/proxy/rpc.cc userspace/proxy/exchange.cc
FUZZ_LIBS_rpc_envelope := -lz
