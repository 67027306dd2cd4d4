FUZZ_DEPS_json_rewriter := userspace/mask/carriers.cc
# carriers.cc reads protobuf descriptors (schema-typed walking), so it links libprotobuf.
FUZZ_LIBS_json_rewriter := -lprotobuf
