// A realistic fake secret (positive) and a near miss (negative) for every built-in rule, shared
// by the rule tests and the carrier tests. Generated from a fixed seed, so no real-looking secret
// is committed.
#pragma once

#include <string>
#include <vector>

namespace cordon::mask::testing {

struct Example {
	std::string rule;
	std::string prefix, secret, suffix; // positive = prefix + secret + suffix; the secret is what is masked
	std::string negative;               // a near miss: no finding at all
	std::string positive() const { return prefix + secret + suffix; }
};

// At least one per built-in rule.
const std::vector<Example> &all_examples();

} // namespace cordon::mask::testing
