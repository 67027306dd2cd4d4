#include "daemon/policy_observer.h"

#include <nlohmann/json.hpp>

#include "proxy/message_decoder.h"
#include "proxy/rpc.h"

namespace cordon {

proxy::Verdict PolicyObserver::refuse(const policy::Decision &d) const
{
	std::string reason = "cordon: blocked by policy rule '" + d.rule + "'";
	if (!d.message.empty())
		reason += ": " + d.message;
	return proxy::Verdict::refuse("permission_denied", reason);
}

proxy::Verdict PolicyObserver::on_request(const proxy::RequestInfo &request)
{
	Exchange &e = exchanges_[request.number];
	e.plan = rules_->plan(caller_, request);
	e.decided = e.plan.decision;
	if (e.decided.action == policy::Action::Block)
		return refuse(e.decided);
	return proxy::Verdict::forward();
}

proxy::Verdict PolicyObserver::on_message(const proxy::RequestInfo &request, const proxy::Message &message)
{
	auto it = exchanges_.find(request.number);
	if (it == exchanges_.end() || it->second.plan.content_rules.empty())
		return proxy::Verdict::forward();
	Exchange &e = it->second;
	// Content rules read the message as `cordonctl watch` shows it: decoded, with field names.
	const bool json_codec = message.end_of_stream || request.content_type.find("json") != std::string::npos;
	std::string text =
	    decoder_ ? decoder_->to_json(request.rpc, message.direction, message.payload, json_codec) : std::string();
	nlohmann::json decoded = nlohmann::json::parse(text, nullptr, false);
	if (decoded.is_discarded())
		decoded = nlohmann::json(message.payload); // undecodable: its bytes as one string
	auto d = rules_->decide_message(e.plan, message.direction, decoded);
	if (!d)
		return proxy::Verdict::forward();
	if (d->action == policy::Action::Block) {
		e.decided = *d;
		return refuse(*d);
	}
	return proxy::Verdict::forward();
}

policy::Decision PolicyObserver::take(uint64_t number)
{
	auto it = exchanges_.find(number);
	if (it == exchanges_.end())
		return {};
	policy::Decision d = std::move(it->second.decided);
	exchanges_.erase(it);
	return d;
}

} // namespace cordon
