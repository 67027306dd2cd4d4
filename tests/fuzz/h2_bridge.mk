FUZZ_DEPS_h2_bridge := userspace/proxy/h2_bridge.cc userspace/proxy/exchange.cc userspace/proxy/rpc.cc \
	userspace/common/log.cc
FUZZ_LIBS_h2_bridge := -lnghttp2 -lz
