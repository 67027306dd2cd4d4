# The loader and everything check_whole reaches: address and cgroup parsing, host patterns, and the
# mask section's rules (user rules are compiled with vectorscan, their regexes checked with RE2),
# on the schema from config.proto and the embedded default policy.
FUZZ_DEPS_policy := userspace/config/policy.cc userspace/config/mask_rules.cc userspace/mask/rules.cc \
	userspace/mask/scanner.cc userspace/common/address.cc userspace/common/cgroup.cc \
	userspace/common/host_pattern.cc $(BUILD)/gen/cordon/config.pb.cc $(BUILD)/gen/default_policy.cc
FUZZ_LIBS_policy := -lyaml-cpp -lprotobuf -lre2 -lhs
