#include "config/mask_rules.h"

#include <algorithm>
#include <set>

namespace cordon {
namespace {

mask::Direction rule_direction(config::MaskDirection d)
{
	switch (d) {
	case config::REQUEST:
		return mask::Direction::Request;
	case config::RESPONSE:
		return mask::Direction::Response;
	default:
		return mask::Direction::Both;
	}
}

} // namespace

Result<std::vector<mask::RuleSpec>> mask_rules_from_policy(const config::Mask &policy)
{
	std::vector<mask::RuleSpec> rules = mask::RuleSet::builtin();
	for (const auto &id : policy.disable()) {
		auto it = std::find_if(rules.begin(), rules.end(), [&](const mask::RuleSpec &r) { return r.id == id; });
		if (it == rules.end())
			return plain_error("mask.disable: no built-in rule '" + id + "' (cordonctl mask --list)");
		rules.erase(it);
	}
	for (const auto &r : policy.rules()) {
		mask::RuleSpec spec;
		spec.id = r.id();
		spec.description = r.description();
		spec.regex = r.regex();
		spec.secret_group = static_cast<int>(r.secret_group());
		spec.keywords.assign(r.keywords().begin(), r.keywords().end());
		spec.min_entropy = r.min_entropy();
		spec.allowlist.assign(r.allowlist().begin(), r.allowlist().end());
		spec.direction = rule_direction(r.direction());
		if (spec.id.empty() || spec.regex.empty())
			return plain_error("mask.rules: every rule needs an id and a regex" +
			                   (spec.id.empty() ? std::string() : " (rule '" + spec.id + "')"));
		rules.push_back(std::move(spec));
	}
	return rules;
}

Result<std::shared_ptr<const mask::RuleSet>> compile_mask_policy(const config::Mask &policy)
{
	auto rules = mask_rules_from_policy(policy);
	if (!rules)
		return rules.error();
	mask::Options options;
	options.replacement = policy.replacement();
	options.global_allowlist.assign(policy.allowlist().begin(), policy.allowlist().end());
	auto compiled = mask::RuleSet::compile(std::move(*rules), options);
	if (!compiled)
		return plain_error("mask: " + compiled.error().message());
	return compiled;
}

Status check_mask_policy(const config::Mask &policy)
{
	auto rules = mask_rules_from_policy(policy);
	if (!rules)
		return rules.error();
	std::set<std::string> ids;
	for (const auto &r : *rules)
		if (!ids.insert(r.id).second)
			return plain_error("mask.rules: rule id '" + r.id +
			                   "' is taken (built-in rules: cordonctl mask --list)");
	if (policy.rules_size() == 0)
		return {};
	// The built-in rules are proven by their own tests; compiling only the policy's keeps a
	// policy check (and a reload) fast.
	std::vector<mask::RuleSpec> own(rules->end() - policy.rules_size(), rules->end());
	mask::Options options;
	options.replacement = policy.replacement();
	options.global_allowlist.assign(policy.allowlist().begin(), policy.allowlist().end());
	if (auto compiled = mask::RuleSet::compile(std::move(own), options); !compiled)
		return plain_error("mask: " + compiled.error().message());
	return {};
}

} // namespace cordon
