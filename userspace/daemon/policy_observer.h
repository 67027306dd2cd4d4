// The policy's rules on the data path: one observer per intercepted connection, after masking
// (so content rules read masked messages) and after watch (so a blocked message is still seen).
#pragma once

#include <map>
#include <memory>
#include <optional>

#include "policy/rules.h"
#include "proxy/exchange.h"

namespace cordon {
namespace proxy {
class MessageDecoder;
}

class PolicyObserver : public proxy::ExchangeObserver {
public:
	// `decoder` (optional, outliving the observer) names fields for content rules.
	PolicyObserver(std::shared_ptr<const policy::Rules> rules, policy::Caller caller,
	               const proxy::MessageDecoder *decoder)
	    : rules_(std::move(rules)), caller_(std::move(caller)), decoder_(decoder)
	{}

	proxy::Verdict on_request(const proxy::RequestInfo &request) override;
	proxy::Verdict on_message(const proxy::RequestInfo &request, const proxy::Message &message) override;

	// What decided exchange `number` (removed: ask once, when it is journaled).
	policy::Decision take(uint64_t number);

private:
	struct Exchange {
		policy::Rules::Plan plan;
		policy::Decision decided; // the plan's decision, or the content rule that fired
	};
	proxy::Verdict refuse(const policy::Decision &d) const;

	std::shared_ptr<const policy::Rules> rules_;
	policy::Caller caller_;
	const proxy::MessageDecoder *decoder_;
	std::map<uint64_t, Exchange> exchanges_;
};

} // namespace cordon
