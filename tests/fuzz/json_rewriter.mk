FUZZ_DEPS_json_rewriter := userspace/mask/carriers.cc
