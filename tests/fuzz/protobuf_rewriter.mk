FUZZ_DEPS_protobuf_rewriter := userspace/mask/carriers.cc
# libprotobuf's own parser judges whether the input and the output are wire format.
FUZZ_LIBS_protobuf_rewriter := -lprotobuf
