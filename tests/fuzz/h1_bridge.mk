FUZZ_DEPS_h1_bridge := userspace/proxy/h1_bridge.cc userspace/proxy/exchange.cc userspace/proxy/rpc.cc
# rpc.cc inflates and deflates bodies and envelopes (gzip): zlib.
FUZZ_LIBS_h1_bridge := -lz
