// `cordonctl watch`: every intercepted request and message, decoded, streamed live to root's
// control sessions. Costs nothing while nobody watches.
#pragma once

#include <map>
#include <string>

#include "daemon/relay.h"
#include "proxy/exchange.h"

namespace cordon {

class ControlServer;
namespace proxy {
class MessageDecoder;
}

class WatchHub {
public:
	WatchHub(ControlServer &control, const proxy::MessageDecoder &decoder) : control_(control), decoder_(decoder) {}
	bool active() const;
	void request(const ConnectionIdentity &id, const proxy::RequestInfo &r);
	void message(const ConnectionIdentity &id, const proxy::RequestInfo &r, const proxy::Message &m,
	             bool json_codec);
	void complete(const ConnectionIdentity &id, const proxy::RequestInfo &r, const proxy::ExchangeSummary &s);

private:
	ControlServer &control_;
	const proxy::MessageDecoder &decoder_;
};

// One per intercepted connection: passes its exchanges to the hub with the connection's identity.
class ConnectionWatch : public proxy::ExchangeObserver {
public:
	ConnectionWatch(WatchHub &hub, const ConnectionIdentity &id) : hub_(hub), id_(id) {}
	proxy::Verdict on_request(const proxy::RequestInfo &r) override;
	proxy::Verdict on_message(const proxy::RequestInfo &r, const proxy::Message &m) override;
	void on_response(const proxy::RequestInfo &r, const proxy::ResponseInfo &response) override;
	void on_complete(const proxy::RequestInfo &r, const proxy::ExchangeSummary &s) override;

private:
	WatchHub &hub_;
	const ConnectionIdentity &id_;
	std::map<uint64_t, bool> json_responses_; // request number -> the response uses a JSON codec
};

} // namespace cordon
