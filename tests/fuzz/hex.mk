FUZZ_DEPS_hex := userspace/proxy/rpc.cc
# rpc.cc deflates elsewhere (zlib); message_decoder.cc and carriers.cc work on protobuf.
FUZZ_LIBS_hex := -lprotobuf -lz
# hex.cc includes these two itself (their hex helpers are file-local): rebuilt when they change,
# never linked a second time.
$(BUILD)/fuzz/hex: userspace/mask/carriers.cc userspace/proxy/message_decoder.cc
