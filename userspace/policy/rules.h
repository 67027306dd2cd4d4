// The policy's rules: who may do what. First matching rule wins, `default_action` otherwise.
//
// A rule without `content` conditions matches a request when it starts (caller, host, RPC,
// path). The first such rule that matches decides the request. Rules with `content` conditions
// match single messages. Only those listed before the deciding rule can still decide a message
// of that request, since a rule listed later was never the first match.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "cordon/config.pb.h"
#include "proxy/exchange.h"

namespace cordon::policy {

// Who is calling, as the rules see it.
struct Caller {
	std::string cgroup; // path
	std::string user;   // name ("" if the uid has none)
	uint32_t uid = 0;
	std::string exe; // "" if unknown: then no `exes` condition matches
	// Set when the caller's cgroup enrolled a verified workload token.
	bool enrolled = false;
	std::string issuer{};                        // the issuer's name in the policy
	std::map<std::string, std::string> claims{}; // the token's claims, as text
};

enum class Action { Allow, Block, Approve, Inject };
const char *to_string(Action a);

// Where an inject rule's credential comes from (see config::Inject).
struct InjectSpec {
	std::string credential_file;
	bool basic = false; // otherwise bearer
	std::vector<std::string> strip_headers;
};

struct Decision {
	std::string rule = "default"; // the deciding rule's name
	Action action = Action::Allow;
	std::string message;                        // the rule's message for the client
	std::shared_ptr<const InjectSpec> inject{}; // with Action::Inject
	// Filled in on the data path for the journal: an approve rule's outcome.
	std::string approval_id{}, approval{}, approver{};
	// ... and for the recording: when it was decided (answered), and on which message.
	int64_t decided_us = 0, answered_us = 0;
	bool on_message = false, response = false;
	uint64_t message_index = 0;
};

class Rules {
public:
	// The policy's rules, compiled (globs, host patterns, RE2). Errors name the rule.
	static Result<std::shared_ptr<const Rules>> compile(const config::Policy &policy);
	~Rules();
	Rules(const Rules &) = delete;
	Rules &operator=(const Rules &) = delete;

	struct Plan {
		Decision decision;                 // from the first request-level rule that matched
		std::vector<size_t> content_rules; // content rules before it that matched the request
	};
	Plan plan(const Caller &caller, const proxy::RequestInfo &request) const;
	// The first of the plan's content rules matching `message` (decoded to JSON), if any.
	// `undecoded`, when given, is searched as one more string of every field: the message's raw
	// bytes, for a message the decoder could not show whole (cut at its output limit, or parts
	// shown as hex), so nothing it left out can slip past a rule.
	std::optional<Decision> decide_message(const Plan &plan, proxy::Direction direction,
	                                       const nlohmann::json &message, std::string_view undecoded = {}) const;
	size_t size() const;

	struct Compiled; // opaque: globs, host patterns and RE2 stay out of this header

private:
	Rules() = default;
	std::unique_ptr<Compiled> compiled_;
};

// The strings at a decoded field path ("a.b.c"; arrays are searched element by element), or
// every string value in the message when `path` is empty. Numbers and booleans count as their
// JSON text.
std::vector<std::string> strings_at(const nlohmann::json &message, const std::string &path);

} // namespace cordon::policy
