// The policy's mask section as scanner rules: the built-in rules minus `disable`, plus the
// policy's own.
#pragma once

#include <memory>
#include <vector>

#include "common/result.h"
#include "cordon/config.pb.h"
#include "mask/rules.h"

namespace cordon {

// Errors name the policy key and the rule.
Result<std::vector<mask::RuleSpec>> mask_rules_from_policy(const config::Mask &policy);
// The rules and options compiled (about a second for the built-in rules); errors as above.
Result<std::shared_ptr<const mask::RuleSet>> compile_mask_policy(const config::Mask &policy);
// What compile_mask_policy would reject, found without compiling the built-in rules: unknown
// disabled ids, ids taken twice, and the policy's own rules compiled on their own.
Status check_mask_policy(const config::Mask &policy);

} // namespace cordon
