// One HTTP exchange (request + response) as the later stages see it: request facts, and each
// direction's body turned into messages that observers may inspect, replace, or refuse.
//
// The promise to clients: what no observer touched leaves byte for byte as it arrived
// (including compression); what an observer replaced is re-encoded correctly (envelope length,
// compression, content-length); what an observer refused ends in the protocol's own error.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "proxy/rpc.h"

namespace cordon::proxy {

enum class Direction { Request, Response };
const char *to_string(Direction d);

struct Header {
	std::string name; // lower case
	std::string value;
};
using Headers = std::vector<Header>;
std::string header_value(const Headers &headers, std::string_view name);
bool has_header(const Headers &headers, std::string_view name);
void remove_header(Headers &headers, std::string_view name);
void set_header(Headers &headers, std::string_view name, std::string value);

struct RequestInfo {
	std::string connection; // the connection id (CORDON_CONN)
	uint64_t number = 0;    // n-th exchange on the connection
	std::string http;       // "2" or "1.1"
	std::string host;       // :authority / Host, without port
	std::string method, path;
	std::string content_type;
	std::string content_encoding; // unary body compression ("gzip" or "")
	std::string stream_encoding;  // per-envelope compression (connect-content-encoding, grpc-encoding)
	rpc::RpcName rpc;
	rpc::Protocol protocol = rpc::Protocol::Other;
	std::chrono::steady_clock::time_point started;
};

struct ResponseInfo {
	int status = 0;
	std::string content_type;
	std::string content_encoding;
	std::string stream_encoding;
	rpc::Protocol protocol = rpc::Protocol::Other;
};

struct Message {
	Direction direction = Direction::Request;
	uint64_t index = 0;         // per direction, from 0
	uint8_t flags = 0;          // envelope flags as received (0 for a unary body)
	bool end_of_stream = false; // Connect end-of-stream JSON or gRPC-web trailer frame
	bool compressed = false;    // arrived compressed
	std::string payload;        // decompressed
	// Set by whoever changed `payload` (masking, an observer): the message is re-encoded.
	// Otherwise `original` leaves exactly as it arrived.
	bool modified = false;
	std::string original; // the bytes as received (envelope included)
	// Non-empty when the payload could not be decoded (corrupt compression): `payload` then holds
	// the raw bytes, and masking's policy decides whether the message may pass unscanned.
	std::string unscannable;
};

class Deferred;

struct Verdict {
	enum class Kind { Forward, Replace, Refuse, Defer };
	Kind kind = Kind::Forward;
	std::string replacement;                // Replace: the new payload, uncompressed
	std::string code = "permission_denied"; // Refuse: a Connect error code
	std::string reason;                     // Refuse: says why (names the rule)
	bool bad_input = false;                 // Refuse: the data could not be inspected (journaled as bad_input)
	std::shared_ptr<Deferred> deferred{};   // Defer: asks later

	static Verdict forward() { return {}; }
	static Verdict replace(std::string payload) { return {Kind::Replace, std::move(payload), {}, {}}; }
	static Verdict refuse(std::string code, std::string reason)
	{
		return {Kind::Refuse, {}, std::move(code), std::move(reason)};
	}
	static Verdict refuse_bad_input(std::string code, std::string reason)
	{
		return {Kind::Refuse, {}, std::move(code), std::move(reason), true, nullptr};
	}
	static Verdict defer(std::shared_ptr<Deferred> d) { return {Kind::Defer, {}, {}, {}, false, std::move(d)}; }
};

// An answer that is not ready yet: a person must approve. While it is undecided, the message it
// was asked about and everything after it in that direction wait (nothing is forwarded), and
// the pipe asks again every kDeferredPoll. Decided, it is Forward (the message goes on to the
// next observer) or Refuse (the exchange ends with that error).
class Deferred {
public:
	virtual ~Deferred() = default;
	virtual std::optional<Verdict> poll() = 0;
};
inline constexpr std::chrono::milliseconds kDeferredPoll{20};

struct ExchangeSummary {
	ResponseInfo response;
	uint64_t request_bytes = 0, response_bytes = 0; // body bytes as received
	uint64_t request_messages = 0, response_messages = 0;
	std::chrono::microseconds duration{0};
	std::chrono::microseconds first_response_byte{0};
	std::string result; // "ok", "refused", "reset", "upstream_error", ...
	std::string error;  // the refusal or failure reason
};

using Clock = std::chrono::steady_clock;

// Between the decoder and the observers of one direction's body: masking. It may change a
// message (setting `modified`) and hold streamed messages back for a bounded time, so a secret
// split across messages is seen whole before any part of it leaves.
class MessageStage {
public:
	virtual ~MessageStage() = default;
	// A whole message (an envelope, or a unary body). Appends the messages now free to go, oldest
	// first. Refuse: the exchange ends with that error (messages already in `ready` go first).
	virtual Verdict push(Message message, std::vector<Message> &ready) = 0;
	// A body that is not made of messages (Protocol::Other): appends the bytes free to go. The
	// length never changes (such bodies may be framed by content-length).
	virtual Verdict push_bytes(std::string_view in, std::string &out) = 0;
	// `end`: the body is complete, everything held goes. Otherwise the hold deadline passed at
	// `now`: what has waited long enough goes.
	virtual Verdict flush(bool end, Clock::time_point now, std::vector<Message> &ready, std::string &bytes_out) = 0;
	virtual size_t held_bytes() const = 0;
	// When what is held must go even if nothing follows it; nullopt when nothing is held.
	virtual std::optional<Clock::time_point> hold_deadline() const = 0;
};

// Policy, masking, recording and the journal plug in here. Called on the loop thread, in order:
// each observer sees messages and headers as the observers before it left them.
class ExchangeObserver {
public:
	virtual ~ExchangeObserver() = default;
	// Header values may be rewritten in place (masking); names are lower case, pseudo-headers
	// (":path") included. Refuse ends the exchange.
	virtual Verdict on_headers(const RequestInfo &, Direction, bool /*trailers*/, Headers &)
	{
		return Verdict::forward();
	}
	// One direction's body stage (masking), or null. The first observer to return one owns it.
	virtual std::unique_ptr<MessageStage> make_stage(Direction, const RequestInfo &, rpc::Protocol,
	                                                 const std::string & /*content_type*/,
	                                                 const std::string & /*content_encoding*/)
	{
		return nullptr;
	}
	// Refuse here and nothing is sent upstream. Defer: nothing is sent upstream (headers
	// included) until it is decided.
	virtual Verdict on_request(const RequestInfo &) { return Verdict::forward(); }
	// Replace: later observers see the replacement. Defer: see Deferred.
	virtual Verdict on_message(const RequestInfo &, const Message &) { return Verdict::forward(); }
	virtual void on_response(const RequestInfo &, const ResponseInfo &) {}
	virtual void on_complete(const RequestInfo &, const ExchangeSummary &) {}
};

struct Limits {
	size_t max_message = 16 << 20; // one message, decompressed
	size_t max_unary_body = 16 << 20;
	size_t max_header_bytes = 64 << 10; // an HTTP/1.1 head, or an HTTP/2 decoded header list
	uint32_t max_streams = 256;         // concurrent HTTP/2 streams a job's connection may open
};

// Runs every observer's on_headers in order; the first refusal wins.
Verdict inspect_headers(const std::vector<ExchangeObserver *> &observers, const RequestInfo &request,
                        Direction direction, bool trailers, Headers &headers);

// A refusal, rendered the way the client's protocol expects it.
struct Refusal {
	int status = 403;
	Headers headers; // response headers (beyond :status)
	std::string body;
	Headers trailers; // gRPC
};
// `headers_sent`: the response is already streaming; only in-band endings are possible then.
Refusal render_refusal(rpc::Protocol protocol, std::string_view code, std::string_view message, bool headers_sent);

// One direction of one exchange: body bytes in (HTTP framing already removed), body bytes out.
class BodyPipe {
public:
	BodyPipe(Direction direction, const RequestInfo &request, rpc::Protocol protocol, std::string unary_encoding,
	         std::string stream_encoding, std::vector<ExchangeObserver *> observers, Limits limits,
	         const std::string &content_type = {});

	// Appends what may be forwarded now to `out`.
	Status write(std::span<const uint8_t> in, std::string &out);
	// End of body: appends the rest.
	Status finish(std::string &out);
	// Messages the stage held back whose deadline passed (`now` >= hold_deadline()).
	Status release_held(Clock::time_point now, std::string &out);
	std::optional<Clock::time_point> hold_deadline() const;

	// Unary bodies are held until complete (so a replacement can fix content-length); the
	// headers must wait for finish().
	bool holds_whole_body() const { return unary_; }
	// Set when an observer refused a message: stop forwarding and end the exchange with it.
	const std::optional<Verdict> &refusal() const { return refusal_; }
	// From on_request's Defer: nothing passes (the bridge holds the headers too) until decided.
	void hold_until(std::shared_ptr<Deferred> decision);
	// A Deferred is undecided: output waits, and the bridge must not end this direction (or,
	// for a held body, send its headers) until it stops waiting; release_held() asks again.
	bool waiting() const { return gate_.has_value(); }
	bool changed() const { return changed_; } // some message was replaced
	uint64_t bytes_in() const { return bytes_in_; }
	// Bytes taken in but not yet passed on (a held unary body, a partial envelope): the bridges
	// count them against flow-control windows and a per-connection budget.
	size_t held_bytes() const
	{
		return body_.size() + decoder_.pending_bytes() + (stage_ ? stage_->held_bytes() : 0) + gated_size_;
	}
	uint64_t messages() const { return messages_; }

private:
	Status take(Message message, std::string &out);
	Status deliver(Message &message, std::string &out);
	// Asks observers from `first` on, then encodes the message into `out`.
	Status deliver_from(Message &message, size_t first, std::string &out);
	Status deliver_all(std::vector<Message> &ready, std::string &out);
	// Observers from `next` on; on Defer, `next` is the observer after the deferring one.
	Verdict ask(Message &message, size_t &next);
	void refuse(Verdict v);
	void emit_bytes(std::string_view bytes, std::string &out);
	Status open_gate(std::string &out);

	struct Gate {
		std::shared_ptr<Deferred> decision;
		std::optional<Message> message; // the message asked about (none for on_request's Defer)
		size_t next_observer = 0;
	};
	std::optional<Gate> gate_;
	std::deque<Message> gated_; // messages behind the gate, not yet shown to any observer
	std::string gated_bytes_;   // a byte body's output behind the gate
	size_t gated_size_ = 0;

	Direction direction_;
	const RequestInfo &request_;
	rpc::Protocol protocol_;
	std::string unary_encoding_, stream_encoding_;
	std::vector<ExchangeObserver *> observers_;
	std::unique_ptr<MessageStage> stage_;
	Limits limits_;
	bool unary_ = false;
	bool enveloped_ = false;
	rpc::EnvelopeDecoder decoder_;
	std::string body_; // unary: the whole body
	std::optional<Verdict> refusal_;
	bool changed_ = false;
	bool finished_ = false;
	uint64_t bytes_in_ = 0, messages_ = 0;
};

} // namespace cordon::proxy
