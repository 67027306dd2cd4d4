// The policy's rules on the data path: one observer per intercepted connection, after masking
// (so content rules and approval excerpts read masked messages) and after watch (so a blocked
// message is still seen).
#pragma once

#include <map>
#include <memory>
#include <optional>

#include "daemon/approvals.h"
#include "policy/rules.h"
#include "proxy/exchange.h"

namespace cordon {
namespace proxy {
class MessageDecoder;
}

class PolicyObserver : public proxy::ExchangeObserver {
public:
	// `decoder` (optional, outliving the observer) names fields for content rules. `approvals`
	// (optional, outliving the observer) holds what `approve` rules stop; without it they deny.
	// `who` describes this connection's caller in approvals.
	PolicyObserver(std::shared_ptr<const policy::Rules> rules, policy::Caller caller,
	               const proxy::MessageDecoder *decoder, Approvals *approvals = nullptr, ApprovalSubject who = {})
	    : rules_(std::move(rules)), caller_(std::move(caller)), decoder_(decoder), approvals_(approvals),
	      who_(std::move(who))
	{}

	// The request's plan is made here, before its headers go anywhere: inject swaps credentials.
	proxy::Verdict on_headers(const proxy::RequestInfo &request, proxy::Direction direction, bool trailers,
	                          proxy::Headers &headers) override;
	proxy::Verdict on_request(const proxy::RequestInfo &request) override;
	proxy::Verdict on_message(const proxy::RequestInfo &request, const proxy::Message &message) override;

	// What decided exchange `number` (removed: ask once, when it is journaled).
	policy::Decision take(uint64_t number);

private:
	struct Exchange {
		policy::Rules::Plan plan;
		policy::Decision decided; // the plan's decision, or the content rule that fired
		std::shared_ptr<PendingApproval> approval;
		std::string credential; // inject: the held key, for a key in the body
		std::shared_ptr<const policy::InjectSpec> inject;
	};
	// The plan's content rules on one message: Forward, or the block / approve verdict.
	proxy::Verdict judge(Exchange &e, const proxy::RequestInfo &request, const proxy::Message &message);
	Exchange &plan(const proxy::RequestInfo &request);
	proxy::Verdict refuse(const policy::Decision &d) const;
	proxy::Verdict hold(Exchange &e, const proxy::RequestInfo &request, proxy::Direction direction,
	                    std::string excerpt);

	std::shared_ptr<const policy::Rules> rules_;
	policy::Caller caller_;
	const proxy::MessageDecoder *decoder_;
	Approvals *approvals_;
	ApprovalSubject who_;
	std::map<uint64_t, Exchange> exchanges_;
};

// An inject rule's credential: the file must be a regular file owned by root and not readable
// by group or others. Returns the header value ("Bearer <key>", "Basic <base64>") and the key.
struct InjectedCredential {
	std::string header_value, key;
};
Result<InjectedCredential> load_credential(const policy::InjectSpec &spec);

} // namespace cordon
