#include "proxy/exchange.h"

#include <algorithm>

namespace cordon::proxy {

const char *to_string(Direction d)
{
	return d == Direction::Request ? "request" : "response";
}

std::string header_value(const Headers &headers, std::string_view name)
{
	for (const auto &h : headers)
		if (h.name == name)
			return h.value;
	return "";
}

bool has_header(const Headers &headers, std::string_view name)
{
	return std::any_of(headers.begin(), headers.end(), [&](const Header &h) { return h.name == name; });
}

void remove_header(Headers &headers, std::string_view name)
{
	std::erase_if(headers, [&](const Header &h) { return h.name == name; });
}

void set_header(Headers &headers, std::string_view name, std::string value)
{
	for (auto &h : headers)
		if (h.name == name) {
			h.value = std::move(value);
			return;
		}
	headers.push_back(Header{std::string(name), std::move(value)});
}

Verdict inspect_headers(const std::vector<ExchangeObserver *> &observers, const RequestInfo &request,
                        Direction direction, bool trailers, Headers &headers)
{
	for (ExchangeObserver *o : observers) {
		Verdict v = o->on_headers(request, direction, trailers, headers);
		if (v.kind == Verdict::Kind::Refuse)
			return v;
	}
	return Verdict::forward();
}

Refusal render_refusal(rpc::Protocol protocol, std::string_view code, std::string_view message, bool headers_sent)
{
	Refusal r;
	switch (protocol) {
	case rpc::Protocol::ConnectStream:
	case rpc::Protocol::Sse:
		// Cursor's SSE fallback carries Connect envelopes too: the same end-of-stream error.
		r.status = 200;
		if (!headers_sent)
			r.headers.push_back({"content-type", protocol == rpc::Protocol::Sse
			                                         ? "text/event-stream"
			                                         : "application/connect+proto"});
		r.body = rpc::connect_end_stream_error(code, message);
		return r;
	case rpc::Protocol::Grpc:
		r.status = 200;
		if (!headers_sent)
			r.headers.push_back({"content-type", "application/grpc"});
		r.trailers.push_back({"grpc-status", std::to_string(rpc::grpc_status_code(code))});
		r.trailers.push_back({"grpc-message", rpc::grpc_percent_encode(message)});
		return r;
	case rpc::Protocol::GrpcWeb:
		r.status = 200;
		if (!headers_sent)
			r.headers.push_back({"content-type", "application/grpc-web+proto"});
		r.body = rpc::grpc_web_trailer_frame(rpc::grpc_status_code(code), message);
		return r;
	case rpc::Protocol::ConnectUnary:
		r.status = rpc::connect_http_status(code);
		r.headers.push_back({"content-type", "application/json"});
		r.body = rpc::connect_unary_error_body(code, message);
		return r;
	case rpc::Protocol::Rest:
	case rpc::Protocol::Other:
		r.status = rpc::connect_http_status(code);
		r.headers.push_back({"content-type", "application/json"});
		r.body = "{\"error\":" + rpc::connect_unary_error_body(code, message) + "}";
		return r;
	}
	return r;
}

BodyPipe::BodyPipe(Direction direction, const RequestInfo &request, rpc::Protocol protocol, std::string unary_encoding,
                   std::string stream_encoding, std::vector<ExchangeObserver *> observers, Limits limits,
                   const std::string &content_type)
    : direction_(direction), request_(request), protocol_(protocol), unary_encoding_(std::move(unary_encoding)),
      stream_encoding_(std::move(stream_encoding)), observers_(std::move(observers)), limits_(limits),
      decoder_(limits.max_message)
{
	enveloped_ = rpc::is_enveloped(protocol);
	// Connect unary and JSON REST bodies are one message each. Other bodies are bytes: only a
	// stage (masking) sees them.
	unary_ = protocol == rpc::Protocol::ConnectUnary || protocol == rpc::Protocol::Rest;
	for (ExchangeObserver *o : observers_) {
		stage_ = o->make_stage(direction, request, protocol, content_type, unary_encoding_);
		if (stage_)
			break;
	}
}

Verdict BodyPipe::ask(Message &message, size_t &next)
{
	for (; next < observers_.size(); next++) {
		Verdict v = observers_[next]->on_message(request_, message);
		if (v.kind == Verdict::Kind::Refuse)
			return v;
		if (v.kind == Verdict::Kind::Defer) {
			next++;
			return v;
		}
		if (v.kind == Verdict::Kind::Replace) {
			message.payload = std::move(v.replacement);
			message.modified = true;
		}
	}
	return Verdict::forward();
}

void BodyPipe::refuse(Verdict v)
{
	if (!refusal_)
		refusal_ = std::move(v);
}

void BodyPipe::hold_until(std::shared_ptr<Deferred> decision)
{
	gate_ = Gate{std::move(decision), std::nullopt, 0};
}

void BodyPipe::emit_bytes(std::string_view bytes, std::string &out)
{
	if (gate_) {
		gated_bytes_.append(bytes);
		gated_size_ += bytes.size();
	} else {
		out.append(bytes);
	}
}

Status BodyPipe::deliver(Message &message, std::string &out)
{
	if (refusal_)
		return {};
	if (gate_) {
		// Behind an undecided message: observers see this one only after that one is decided,
		// so they still see messages in order. The peer's flow-control window bounds this.
		gated_size_ += message.original.size();
		if (gated_size_ > limits_.max_message)
			return plain_error(std::string(to_string(direction_)) + ": more than " +
			                   std::to_string(limits_.max_message) +
			                   " bytes arrived while waiting for approval");
		gated_.push_back(std::move(message));
		return {};
	}
	return deliver_from(message, 0, out);
}

Status BodyPipe::deliver_from(Message &message, size_t first, std::string &out)
{
	size_t next = first;
	Verdict v = ask(message, next);
	if (v.kind == Verdict::Kind::Refuse) {
		refuse(std::move(v));
		return {};
	}
	if (v.kind == Verdict::Kind::Defer) {
		gate_ = Gate{std::move(v.deferred), std::move(message), next};
		return {};
	}
	if (!message.modified) {
		out.append(message.original); // exactly as it arrived
		return {};
	}
	changed_ = true;
	std::string payload = std::move(message.payload);
	if (message.compressed) {
		auto z = rpc::gzip(payload);
		if (!z)
			return z.error();
		payload = std::move(*z);
	}
	if (unary_)
		out.append(payload);
	else
		out.append(rpc::encode_envelope(message.flags, payload));
	return {};
}

Status BodyPipe::deliver_all(std::vector<Message> &ready, std::string &out)
{
	for (auto &m : ready)
		if (Status st = deliver(m, out); !st)
			return st;
	ready.clear();
	return {};
}

Status BodyPipe::take(Message message, std::string &out)
{
	messages_++;
	if (!stage_) {
		if (!message.unscannable.empty())
			return plain_error(message.unscannable);
		return deliver(message, out);
	}
	std::vector<Message> ready;
	Verdict v = stage_->push(std::move(message), ready);
	Status st = deliver_all(ready, out);
	if (v.kind == Verdict::Kind::Refuse)
		refuse(std::move(v));
	return st;
}

Status BodyPipe::write(std::span<const uint8_t> in, std::string &out)
{
	if (refusal_ || finished_)
		return {}; // nothing more goes anywhere
	bytes_in_ += in.size();
	if (unary_) {
		if (body_.size() + in.size() > limits_.max_unary_body)
			return plain_error(std::string(to_string(direction_)) + " body exceeds the " +
			                   std::to_string(limits_.max_unary_body) + "-byte limit");
		body_.append(reinterpret_cast<const char *>(in.data()), in.size());
		return {};
	}
	if (!enveloped_) {
		const std::string_view bytes(reinterpret_cast<const char *>(in.data()), in.size());
		if (!stage_) {
			emit_bytes(bytes, out);
			if (gated_size_ > limits_.max_message)
				return plain_error(std::string(to_string(direction_)) + ": more than " +
				                   std::to_string(limits_.max_message) +
				                   " bytes arrived while waiting for approval");
			return {};
		}
		std::string passed;
		Verdict v = stage_->push_bytes(bytes, passed);
		emit_bytes(passed, out);
		if (v.kind == Verdict::Kind::Refuse)
			refuse(std::move(v));
		if (gated_size_ > limits_.max_message)
			return plain_error(std::string(to_string(direction_)) + ": more than " +
			                   std::to_string(limits_.max_message) +
			                   " bytes arrived while waiting for approval");
		return {};
	}
	std::vector<rpc::Envelope> envelopes;
	Status st = decoder_.feed(in, envelopes);
	for (auto &env : envelopes) {
		if (refusal_)
			break;
		Message m;
		m.direction = direction_;
		m.index = messages_;
		m.flags = env.flags;
		const bool trailer = (env.flags & rpc::kFlagGrpcWebTrailer) && protocol_ == rpc::Protocol::GrpcWeb;
		m.end_of_stream = trailer || ((env.flags & rpc::kFlagEndStream) && protocol_ != rpc::Protocol::Grpc &&
		                              protocol_ != rpc::Protocol::GrpcWeb);
		m.compressed = (env.flags & rpc::kFlagCompressed) != 0;
		m.original = rpc::encode_envelope(env.flags, env.payload);
		if (m.compressed) {
			if (stream_encoding_ != "gzip") {
				m.unscannable =
				    "compressed message with unsupported encoding '" + stream_encoding_ + "'";
				m.payload = std::move(env.payload);
			} else if (auto plain = rpc::gunzip(env.payload, limits_.max_message)) {
				m.payload = std::move(*plain);
			} else if (stage_) {
				m.unscannable = plain.error().message();
				m.payload = std::move(env.payload);
			} else {
				return plain.error();
			}
		} else {
			m.payload = std::move(env.payload);
		}
		if (Status d = take(std::move(m), out); !d)
			return d;
	}
	return st;
}

Status BodyPipe::finish(std::string &out)
{
	if (finished_)
		return {};
	finished_ = true;
	if (refusal_)
		return {};
	auto flush_stage = [&]() -> Status {
		if (!stage_ || refusal_)
			return {};
		std::vector<Message> ready;
		std::string bytes;
		Verdict v = stage_->flush(true, Clock::now(), ready, bytes);
		emit_bytes(bytes, out);
		Status st = deliver_all(ready, out);
		if (v.kind == Verdict::Kind::Refuse)
			refuse(std::move(v));
		return st;
	};
	if (enveloped_ && !unary_) {
		if (!decoder_.at_boundary())
			return plain_error(std::string(to_string(direction_)) + " stream ended inside a message (" +
			                   std::to_string(decoder_.pending_bytes()) + " bytes pending)");
		return flush_stage();
	}
	if (!unary_)
		return flush_stage();
	// A unary RPC carries exactly one message each way, even an empty one (a protobuf message
	// with every field at its default); a bodiless REST call carries none.
	if (body_.empty() && protocol_ != rpc::Protocol::ConnectUnary)
		return {};

	Message m;
	m.direction = direction_;
	m.compressed = unary_encoding_ == "gzip";
	m.original = body_;
	if (!unary_encoding_.empty() && unary_encoding_ != "gzip" && unary_encoding_ != "identity") {
		m.unscannable = "body with unsupported content-encoding '" + unary_encoding_ + "'";
		m.payload = body_;
	} else if (m.compressed) {
		auto plain = rpc::gunzip(body_, limits_.max_message);
		if (plain) {
			m.payload = std::move(*plain);
		} else {
			m.unscannable = plain.error().message();
			m.payload = body_;
		}
	} else {
		m.payload = body_;
	}
	if (Status st = take(std::move(m), out); !st)
		return st;
	return flush_stage();
}

std::optional<Clock::time_point> BodyPipe::hold_deadline() const
{
	if (refusal_)
		return std::nullopt;
	std::optional<Clock::time_point> due;
	if (stage_ && !finished_)
		due = stage_->hold_deadline();
	if (gate_) {
		auto poll = Clock::now() + kDeferredPoll;
		if (!due || poll < *due)
			due = poll;
	}
	return due;
}

Status BodyPipe::release_held(Clock::time_point now, std::string &out)
{
	if (refusal_)
		return {};
	if (auto due = stage_ && !finished_ ? stage_->hold_deadline() : std::nullopt; due && *due <= now) {
		std::vector<Message> ready;
		std::string bytes;
		Verdict v = stage_->flush(false, now, ready, bytes);
		emit_bytes(bytes, out);
		Status st = deliver_all(ready, out);
		if (v.kind == Verdict::Kind::Refuse)
			refuse(std::move(v));
		if (!st)
			return st;
	}
	return open_gate(out);
}

Status BodyPipe::open_gate(std::string &out)
{
	while (gate_ && !refusal_) {
		std::optional<Verdict> decided = gate_->decision->poll();
		if (!decided)
			return {};
		Gate gate = std::move(*gate_);
		gate_.reset();
		if (decided->kind == Verdict::Kind::Refuse) {
			refuse(std::move(*decided));
			gated_.clear();
			gated_bytes_.clear();
			gated_size_ = 0;
			return {};
		}
		if (gate.message)
			if (Status st = deliver_from(*gate.message, gate.next_observer, out); !st)
				return st;
		// What waited behind it, in order, until one of them is held in turn.
		while (!gate_ && !refusal_ && !gated_.empty()) {
			Message m = std::move(gated_.front());
			gated_.pop_front();
			gated_size_ -= std::min(gated_size_, m.original.size());
			if (Status st = deliver_from(m, 0, out); !st)
				return st;
		}
		if (!gate_) {
			out.append(gated_bytes_);
			gated_bytes_.clear();
			gated_size_ = 0;
		}
	}
	return {};
}

} // namespace cordon::proxy
