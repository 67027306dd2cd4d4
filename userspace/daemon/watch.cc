#include "daemon/watch.h"

#include <chrono>
#include <nlohmann/json.hpp>

#include "daemon/control_server.h"
#include "proxy/message_decoder.h"

namespace cordon {
namespace {

using nlohmann::json;

bool json_codec(const std::string &content_type)
{
	return content_type.find("json") != std::string::npos;
}

double now_ms()
{
	return std::chrono::duration<double, std::milli>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json who(const ConnectionIdentity &id, const proxy::RequestInfo &r)
{
	return json{{"conn", id.id},         {"request", r.number},
	            {"pid", id.origin.tgid}, {"uid", id.origin.uid},
	            {"comm", id.comm()},     {"cgroup", id.cgroup},
	            {"host", r.host},        {"rpc", r.rpc.empty() ? r.path : r.rpc.full()}};
}

std::string line(const json &j)
{
	return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace

bool WatchHub::active() const
{
	return control_.subscribers() > 0;
}

void WatchHub::request(const ConnectionIdentity &id, const proxy::RequestInfo &r)
{
	json j = who(id, r);
	j["event"] = "request";
	j["time_ms"] = now_ms();
	j["method"] = r.method;
	j["http"] = r.http;
	j["protocol"] = rpc::to_string(r.protocol);
	control_.broadcast(line(j));
}

void WatchHub::message(const ConnectionIdentity &id, const proxy::RequestInfo &r, const proxy::Message &m,
                       bool json_codec)
{
	json j = who(id, r);
	j["event"] = "message";
	j["time_ms"] = now_ms();
	j["direction"] = proxy::to_string(m.direction);
	j["index"] = m.index;
	j["size"] = m.payload.size();
	if (m.compressed)
		j["compressed"] = true;
	if (m.end_of_stream) {
		// End-of-stream is JSON by the protocol; the decoder's JSON path keeps any bytes valid.
		j["end_of_stream"] = true;
		auto decoded = json::parse(decoder_.to_json(r.rpc, m.direction, m.payload, true), nullptr, false);
		j["json"] = decoded.is_discarded() ? json(nullptr) : decoded;
	} else {
		j["type"] = decoder_.message_type(r.rpc, m.direction);
		auto decoded = json::parse(decoder_.to_json(r.rpc, m.direction, m.payload, json_codec), nullptr, false);
		j["json"] = decoded.is_discarded() ? json(nullptr) : decoded;
	}
	control_.broadcast(line(j));
}

void WatchHub::complete(const ConnectionIdentity &id, const proxy::RequestInfo &r, const proxy::ExchangeSummary &s)
{
	json j = who(id, r);
	j["event"] = "complete";
	j["time_ms"] = now_ms();
	j["status"] = s.response.status;
	j["result"] = s.result;
	if (!s.error.empty())
		j["error"] = s.error;
	j["duration_us"] = s.duration.count();
	control_.broadcast(line(j));
}

proxy::Verdict ConnectionWatch::on_request(const proxy::RequestInfo &r)
{
	if (hub_.active())
		hub_.request(id_, r);
	return proxy::Verdict::forward();
}

proxy::Verdict ConnectionWatch::on_message(const proxy::RequestInfo &r, const proxy::Message &m)
{
	if (!hub_.active())
		return proxy::Verdict::forward();
	const bool json_payload =
	    m.direction == proxy::Direction::Request ? json_codec(r.content_type) : json_responses_[r.number];
	hub_.message(id_, r, m, json_payload);
	return proxy::Verdict::forward();
}

void ConnectionWatch::on_response(const proxy::RequestInfo &r, const proxy::ResponseInfo &response)
{
	json_responses_[r.number] = json_codec(response.content_type);
}

void ConnectionWatch::on_complete(const proxy::RequestInfo &r, const proxy::ExchangeSummary &s)
{
	json_responses_.erase(r.number);
	if (hub_.active())
		hub_.complete(id_, r, s);
}

} // namespace cordon
