// Loading the policy file: YAML onto the protobuf schema in proto/cordon/config.proto.
// Every error names file:line:column and what was expected; nothing is half-applied.
#pragma once

#include <string>

#include "common/result.h"
#include "cordon/config.pb.h"

namespace cordon {

extern const char kDefaultPolicyYaml[];
inline constexpr const char *kDefaultPolicyPath = "/etc/cordon/policy.yaml";

// The embedded default policy (validated by the unit tests; cannot fail at run time).
config::Policy default_policy();

// The default policy with `yaml` applied on top; `source` names it in errors.
Result<config::Policy> load_policy_text(const std::string &yaml, const std::string &source);
Result<config::Policy> load_policy_file(const std::string &path);
// Applies more YAML on top of `policy` with the same rules (used for command-line overrides).
Status apply_policy_yaml(config::Policy &policy, const std::string &yaml, const std::string &source);
// The effective policy as YAML, for --check-config and status.
std::string policy_to_yaml(const config::Policy &policy);

} // namespace cordon
