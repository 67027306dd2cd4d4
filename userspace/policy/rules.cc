#include "policy/rules.h"

#include <fnmatch.h>
#include <re2/re2.h>
#include <re2/set.h>

#include <map>
#include <nlohmann/json.hpp>

#include "common/host_pattern.h"

namespace cordon::policy {

const char *to_string(Action a)
{
	switch (a) {
	case Action::Block:
		return "block";
	case Action::Approve:
		return "approve";
	case Action::Inject:
		return "inject";
	case Action::Allow:
		break;
	}
	return "allow";
}

struct Rules::Compiled {
	struct Content {
		std::string field;
		std::unique_ptr<RE2> regex;
	};
	struct Rule {
		Decision decision;
		uint64_t all_conditions = 0;                                // one bit per content condition
		std::vector<std::string> cgroups, users, exes, rpcs, paths; // globs and names
		std::vector<HostPattern> hosts;
		config::MaskDirection direction = config::BOTH;
		std::vector<Content> content;
		std::vector<std::pair<std::string, std::string>> claims; // name, glob
		std::vector<std::string> issuers;
		config::Enrollment enrollment = config::ENROLLMENT_UNSPECIFIED;
	};
	std::vector<Rule> rules;
	Decision fallback, unenrolled_fallback;
	// Every content condition on one field, as one RE2::Set: a message's strings are searched
	// once per field, not once per rule. owners[k] is set pattern k's (rule, condition).
	struct FieldSet {
		std::string field;
		std::unique_ptr<RE2::Set> set; // null when it could not be built: each regex alone then
		std::vector<std::pair<size_t, size_t>> owners;
	};
	std::vector<FieldSet> field_sets;
};

namespace {

bool glob_any(const std::vector<std::string> &globs, const std::string &value)
{
	if (globs.empty())
		return true;
	for (const auto &g : globs)
		if (fnmatch(g.c_str(), value.c_str(), 0) == 0)
			return true;
	return false;
}

bool applies(config::MaskDirection rule, proxy::Direction d)
{
	return rule == config::BOTH || rule == config::MASK_DIRECTION_UNSPECIFIED ||
	       (rule == config::REQUEST) == (d == proxy::Direction::Request);
}

void collect(const nlohmann::json &node, const std::vector<std::string> &path, size_t depth, bool everywhere,
             std::vector<std::string> &out)
{
	if (node.is_array()) {
		for (const auto &element : node)
			collect(element, path, depth, everywhere, out);
		return;
	}
	if (everywhere && node.is_object()) {
		for (const auto &[key, value] : node.items())
			collect(value, path, depth, everywhere, out);
		return;
	}
	if (depth < path.size()) {
		if (!node.is_object())
			return;
		auto it = node.find(path[depth]);
		if (it != node.end())
			collect(*it, path, depth + 1, everywhere, out);
		return;
	}
	if (node.is_string())
		out.push_back(node.get<std::string>());
	else if (node.is_number() || node.is_boolean())
		out.push_back(node.dump());
}

bool identity_matches(const Rules::Compiled::Rule &r, const Caller &caller)
{
	if (r.enrollment == config::ENROLLED && !caller.enrolled)
		return false;
	if (r.enrollment == config::UNENROLLED && caller.enrolled)
		return false;
	if ((!r.claims.empty() || !r.issuers.empty()) && !caller.enrolled)
		return false;
	if (!r.issuers.empty() && std::find(r.issuers.begin(), r.issuers.end(), caller.issuer) == r.issuers.end())
		return false;
	for (const auto &[name, glob] : r.claims) {
		auto it = caller.claims.find(name);
		if (it == caller.claims.end() || fnmatch(glob.c_str(), it->second.c_str(), 0) != 0)
			return false;
	}
	return true;
}

} // namespace

std::vector<std::string> strings_at(const nlohmann::json &message, const std::string &path)
{
	std::vector<std::string> parts;
	for (size_t start = 0; start < path.size();) {
		size_t dot = path.find('.', start);
		if (dot == std::string::npos)
			dot = path.size();
		parts.push_back(path.substr(start, dot - start));
		start = dot + 1;
	}
	std::vector<std::string> out;
	collect(message, parts, 0, path.empty(), out);
	return out;
}

Rules::~Rules() = default;

Result<std::shared_ptr<const Rules>> Rules::compile(const config::Policy &policy)
{
	auto rules = std::shared_ptr<Rules>(new Rules());
	rules->compiled_ = std::make_unique<Compiled>();
	Compiled &c = *rules->compiled_;
	const auto action = [](config::Rule::Action a) {
		switch (a) {
		case config::Rule::BLOCK:
			return Action::Block;
		case config::Rule::APPROVE:
			return Action::Approve;
		case config::Rule::INJECT:
			return Action::Inject;
		default:
			return Action::Allow;
		}
	};
	for (const auto &r : policy.rules()) {
		Compiled::Rule rule;
		rule.decision = {r.name(), action(r.action()), r.message(), nullptr};
		if (r.action() == config::Rule::INJECT) {
			auto spec = std::make_shared<InjectSpec>();
			spec->credential_file = r.inject().credential_file();
			spec->basic = r.inject().scheme() == "basic";
			spec->strip_headers.assign(r.inject().strip_headers().begin(),
			                           r.inject().strip_headers().end());
			if (spec->strip_headers.empty())
				spec->strip_headers = {"authorization", "x-api-key"};
			rule.decision.inject = std::move(spec);
		}
		const auto &m = r.match();
		rule.cgroups.assign(m.cgroups().begin(), m.cgroups().end());
		rule.users.assign(m.users().begin(), m.users().end());
		rule.exes.assign(m.exes().begin(), m.exes().end());
		rule.rpcs.assign(m.rpcs().begin(), m.rpcs().end());
		rule.paths.assign(m.paths().begin(), m.paths().end());
		for (const auto &h : m.hosts()) {
			auto pattern = HostPattern::parse(h);
			if (!pattern)
				return plain_error("rule '" + r.name() + "': " + pattern.error().message());
			rule.hosts.push_back(std::move(*pattern));
		}
		rule.direction = m.direction();
		for (const auto &[name, glob] : m.claims())
			rule.claims.emplace_back(name, glob);
		std::sort(rule.claims.begin(), rule.claims.end()); // map order is unspecified; keep it stable
		rule.issuers.assign(m.issuers().begin(), m.issuers().end());
		rule.enrollment = m.enrollment();
		for (const auto &content : m.content()) {
			auto re = std::make_unique<RE2>(content.regex(), RE2::Quiet);
			if (!re->ok())
				return plain_error("rule '" + r.name() + "': bad regex '" + content.regex() +
				                   "': " + re->error());
			rule.content.push_back({content.field(), std::move(re)});
		}
		if (rule.content.size() > 63)
			return plain_error("rule '" + r.name() + "': more than 63 content conditions");
		rule.all_conditions = (uint64_t{1} << rule.content.size()) - 1;
		c.rules.push_back(std::move(rule));
	}
	std::map<std::string, size_t> by_field;
	for (size_t i = 0; i < c.rules.size(); i++)
		for (size_t j = 0; j < c.rules[i].content.size(); j++) {
			const std::string &field = c.rules[i].content[j].field;
			auto [it, fresh] = by_field.try_emplace(field, c.field_sets.size());
			if (fresh)
				c.field_sets.push_back({field, nullptr, {}});
			c.field_sets[it->second].owners.emplace_back(i, j);
		}
	for (auto &fs : c.field_sets) {
		RE2::Options options;
		options.set_log_errors(false);
		auto set = std::make_unique<RE2::Set>(options, RE2::UNANCHORED);
		bool added = true;
		for (const auto &[i, j] : fs.owners)
			added = added && set->Add(c.rules[i].content[j].regex->pattern(), nullptr) >= 0;
		if (added && set->Compile())
			fs.set = std::move(set);
	}
	c.fallback.action = action(policy.default_action());
	c.unenrolled_fallback = c.fallback;
	if (policy.unenrolled_action() != config::Rule::ACTION_UNSPECIFIED) {
		c.unenrolled_fallback.action = action(policy.unenrolled_action());
		c.unenrolled_fallback.rule = "unenrolled";
	}
	return std::shared_ptr<const Rules>(std::move(rules));
}

size_t Rules::size() const
{
	return compiled_->rules.size();
}

Rules::Plan Rules::plan(const Caller &caller, const proxy::RequestInfo &request) const
{
	Plan plan;
	plan.decision = caller.enrolled ? compiled_->fallback : compiled_->unenrolled_fallback;
	const std::string rpc = request.rpc.empty() ? std::string() : request.rpc.full();
	const std::string path = request.path.substr(0, request.path.find('?'));
	const std::string uid = std::to_string(caller.uid);
	for (size_t i = 0; i < compiled_->rules.size(); i++) {
		const auto &r = compiled_->rules[i];
		const bool user_ok =
		    r.users.empty() || std::any_of(r.users.begin(), r.users.end(), [&](const std::string &u) {
			    return u == uid || (!caller.user.empty() && u == caller.user);
		    });
		const bool host_ok =
		    r.hosts.empty() || std::any_of(r.hosts.begin(), r.hosts.end(),
		                                   [&](const HostPattern &h) { return h.matches(request.host); });
		const bool matches = user_ok && host_ok && glob_any(r.cgroups, caller.cgroup) &&
		                     (r.exes.empty() || (!caller.exe.empty() && glob_any(r.exes, caller.exe))) &&
		                     (r.rpcs.empty() || (!rpc.empty() && glob_any(r.rpcs, rpc))) &&
		                     glob_any(r.paths, path) && identity_matches(r, caller);
		if (!matches)
			continue;
		if (!r.content.empty()) {
			plan.content_rules.push_back(i);
			continue;
		}
		plan.decision = r.decision;
		break;
	}
	return plan;
}

std::optional<Decision> Rules::decide_message(const Plan &plan, proxy::Direction direction,
                                              const nlohmann::json &message, std::string_view undecoded) const
{
	if (plan.content_rules.empty())
		return std::nullopt;
	const Compiled &c = *compiled_;
	// Which conditions of the plan's rules some string of the message satisfies: one bit each,
	// per rule (indexed by the rule's place in the policy; rules outside the plan have none).
	constexpr uint64_t kNotInPlan = ~uint64_t{0};
	std::vector<uint64_t> satisfied(c.rules.size(), kNotInPlan);
	bool any = false;
	for (size_t i : plan.content_rules)
		if (applies(c.rules[i].direction, direction)) {
			satisfied[i] = 0;
			any = true;
		}
	if (!any)
		return std::nullopt;
	const auto in_plan = [&](size_t i) { return satisfied[i] != kNotInPlan; };
	const auto mark = [&](size_t i, size_t j) {
		if (in_plan(i))
			satisfied[i] |= uint64_t{1} << j;
	};
	std::vector<int> hits;
	for (const auto &fs : c.field_sets) {
		const bool wanted = std::any_of(fs.owners.begin(), fs.owners.end(),
		                                [&](const auto &owner) { return in_plan(owner.first); });
		if (!wanted)
			continue;
		std::vector<std::string> texts = strings_at(message, fs.field);
		if (!undecoded.empty())
			texts.emplace_back(undecoded);
		for (const std::string &text : texts) {
			hits.clear();
			RE2::Set::ErrorInfo error{};
			const bool matched = fs.set && fs.set->Match(text, &hits, &error);
			if (fs.set && (matched || error.kind == RE2::Set::kNoError)) {
				for (int k : hits)
					mark(fs.owners[static_cast<size_t>(k)].first,
					     fs.owners[static_cast<size_t>(k)].second);
				continue;
			}
			// No set (or its DFA ran out of memory on this input): each regex on its own.
			for (const auto &[i, j] : fs.owners)
				if (in_plan(i) && !(satisfied[i] >> j & 1) &&
				    RE2::PartialMatch(text, *c.rules[i].content[j].regex))
					mark(i, j);
		}
	}
	for (size_t i : plan.content_rules) // first match wins, in the policy's order
		if (in_plan(i) && satisfied[i] == c.rules[i].all_conditions)
			return c.rules[i].decision;
	return std::nullopt;
}

} // namespace cordon::policy
