#include "daemon/masking.h"

#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <deque>

#include "config/mask_rules.h"
#include "mask/carriers.h"
#include "mask/stream_masker.h"
#include "mask/text_stream.h"
#include "proxy/message_decoder.h"

namespace cordon {
namespace {

using proxy::Direction;
using proxy::Message;
using proxy::Verdict;
using Clock = std::chrono::steady_clock;

mask::Direction scan_direction(Direction d)
{
	return d == Direction::Request ? mask::Direction::Request : mask::Direction::Response;
}

std::string media_type(const std::string &content_type)
{
	std::string t = content_type.substr(0, content_type.find(';'));
	while (!t.empty() && t.back() == ' ')
		t.pop_back();
	std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
	return t;
}

// How a message's payload is taken apart.
enum class Carrier { Protobuf, Json, Text };

Carrier carrier_for(const std::string &media)
{
	if (media.find("json") != std::string::npos)
		return Carrier::Json;
	if (media.find("proto") != std::string::npos || media == "application/grpc" || media == "application/grpc-web")
		return Carrier::Protobuf;
	return Carrier::Text;
}

const char *to_string(Carrier c)
{
	switch (c) {
	case Carrier::Protobuf:
		return "protobuf";
	case Carrier::Json:
		return "JSON";
	case Carrier::Text:
		return "text";
	}
	return "?";
}

// Runs the carrier over `payload`, handing each text (with its place) to `rewrite`.
Result<std::string> walk(Carrier carrier, std::string_view payload, const mask::PathTextRewriter &rewrite,
                         const mask::ProtobufType &type)
{
	switch (carrier) {
	case Carrier::Protobuf:
		return mask::rewrite_protobuf_at(payload, rewrite, nullptr, type);
	case Carrier::Json:
		return mask::rewrite_json_at(payload, rewrite);
	case Carrier::Text:
		return payload.empty() ? std::string() : rewrite("", payload);
	}
	return plain_error("unknown carrier");
}

std::string unscannable_reason(Direction d, const std::string &why)
{
	return "cordon: cannot inspect the " + std::string(proxy::to_string(d)) + " (" + why +
	       "); data that cannot be inspected is blocked (policy mask.unscannable)";
}

// Masking for a body made of messages (envelopes, or one unary body).
class MessageMaskStage : public proxy::MessageStage {
public:
	MessageMaskStage(MaskEngine &engine, Direction direction, rpc::Protocol protocol, Carrier carrier,
	                 std::shared_ptr<MaskTally> tally, mask::ProtobufType type)
	    : engine_(engine), direction_(direction), protocol_(protocol), carrier_(carrier), tally_(std::move(tally)),
	      type_(type), stream_(
	                       [this](std::string_view text) {
		                       std::vector<mask::Hit> hits;
		                       for (const auto &f : engine_.scanner().scan(text, scan_direction(direction_)))
			                       hits.push_back({f.offset, f.length, f.rule});
		                       return hits;
	                       },
	                       [this](const std::string &rule, size_t length) {
		                       return mask::replacement(engine_.scanner().rules().options(), rule, length);
	                       })
	{
		streamed_ = rpc::is_enveloped(protocol);
	}

	Verdict push(Message message, std::vector<Message> &ready) override
	{
		Held h;
		const auto now = Clock::now();
		h.carrier = carrier_of(message);
		if (message.unscannable.empty()) {
			auto collected = walk(
			    h.carrier, message.payload,
			    [&](std::string_view path, std::string_view text) {
				    h.leaves.push_back({std::string(path), std::string(text)});
				    return std::string(text);
			    },
			    type_);
			if (!collected) {
				h.leaves.clear();
				message.unscannable = std::string("not valid ") + to_string(h.carrier) + ": " +
				                      collected.error().message();
			} else if (h.carrier == Carrier::Protobuf) {
				choose_readings(h.leaves);
			}
		}
		if (!message.unscannable.empty()) {
			if (engine_.block_unscannable()) {
				flush(true, Clock::now(), ready, ignored_);
				return Verdict::refuse_bad_input("invalid_argument",
				                                 unscannable_reason(direction_, message.unscannable));
			}
			tally_->unscanned++;
			h.opaque = true;
		}
		const bool last = message.end_of_stream;
		h.bytes = message.payload.size();
		h.message = std::move(message);
		std::vector<mask::Leaf> leaves = std::move(h.leaves);
		held_bytes_ += h.bytes;
		held_.push_back(std::move(h));
		stream_.add(std::move(leaves), now);
		if (!streamed_ || last)
			stream_.finish();
		return release(ready);
	}

	Verdict push_bytes(std::string_view in, std::string &out) override
	{
		out.append(in); // not used: this stage is for messages
		return Verdict::forward();
	}

	Verdict flush(bool end, Clock::time_point now, std::vector<Message> &ready, std::string &) override
	{
		if (end)
			stream_.finish();
		else
			stream_.settle_idle(now, engine_.hold());
		return release(ready);
	}

	size_t held_bytes() const override { return held_bytes_; }

	// Idle time per field, not age: while a field keeps being continued, its next text settles
	// what is held (a key streamed token by token is seen whole); a field that went quiet lets
	// its text go after hold_ms, so it does not hold up the messages behind it. What is held is
	// bounded in bytes by the text stream.
	std::optional<Clock::time_point> hold_deadline() const override
	{
		if (held_.empty())
			return std::nullopt;
		auto quiet = stream_.oldest_quiet();
		return (quiet ? *quiet : Clock::now()) + engine_.hold();
	}

private:
	struct Held {
		Message message;
		Carrier carrier = Carrier::Text;
		std::vector<mask::Leaf> leaves; // until handed to the text stream
		bool opaque = false;            // passed unscanned
		size_t bytes = 0;
	};

	// Without a schema, protobuf bytes that are both text and a message reach the rewriter both
	// ways: as text at "2", then as the message's fields at "2.1". One reading is kept:
	//   - the text, when the same field carried text in the stream's earlier messages: a piece
	//     of streamed text (a slice of a private key's base64) can parse as a message by chance,
	//     and reading it as fields would break the text the stream is joining;
	//   - otherwise the fields: they are what a reader of the message sees, and the outer
	//     reading would show every secret twice (with tag bytes in between).
	// The rebuild still masks the other reading on its own if the carrier keeps it.
	void choose_readings(std::vector<mask::Leaf> &leaves) const
	{
		const auto inside = [](const std::string &inner, const std::string &outer) {
			return inner.size() > outer.size() + 1 && inner.compare(0, outer.size(), outer) == 0 &&
			       inner[outer.size()] == '.' &&
			       std::isdigit(static_cast<unsigned char>(inner[outer.size() + 1]));
		};
		std::vector<mask::Leaf> kept;
		kept.reserve(leaves.size());
		for (size_t i = 0; i < leaves.size(); i++) {
			const bool container = i + 1 < leaves.size() && inside(leaves[i + 1].path, leaves[i].path);
			if (container && !stream_.follows(leaves[i].path))
				continue;
			mask::Leaf leaf = std::move(leaves[i]);
			if (container) // the text: skip its fields
				while (i + 1 < leaves.size() && inside(leaves[i + 1].path, leaf.path))
					i++;
			kept.push_back(std::move(leaf));
		}
		leaves = std::move(kept);
	}

	Carrier carrier_of(const Message &m) const
	{
		// The end of a Connect stream is JSON whatever the messages are; a gRPC-web trailer
		// frame is header lines.
		if ((protocol_ == rpc::Protocol::ConnectStream || protocol_ == rpc::Protocol::Sse) &&
		    (m.flags & rpc::kFlagEndStream))
			return Carrier::Json;
		if (protocol_ == rpc::Protocol::GrpcWeb && (m.flags & rpc::kFlagGrpcWebTrailer))
			return Carrier::Text;
		if (protocol_ == rpc::Protocol::Sse) {
			// Cursor's HTTP/1.1 fallback labels the stream text/event-stream; the envelopes
			// inside are its messages, protobuf unless they are plainly JSON.
			auto first = m.payload.find_first_not_of(" \t\r\n");
			return first != std::string::npos && m.payload[first] == '{' ? Carrier::Json
			                                                             : Carrier::Protobuf;
		}
		return carrier_;
	}

	Verdict release(std::vector<Message> &ready)
	{
		for (auto &settled : stream_.take_settled()) {
			Held h = std::move(held_.front());
			held_.pop_front();
			held_bytes_ -= h.bytes;
			if (settled.changed && !h.opaque) {
				// The rewrite is a function of the text alone: a carrier may ask about the same bytes
				// more than once (a protobuf field that reads as text and as a message).
				std::map<std::string, std::string, std::less<>> masked_texts;
				for (size_t i = 0; i < settled.original.size(); i++)
					masked_texts.emplace(std::move(settled.original[i]),
					                     std::move(settled.texts[i]));
				auto rebuilt = walk(
				    h.carrier, h.message.payload,
				    [&](std::string_view, std::string_view text) {
					    if (auto it = masked_texts.find(text); it != masked_texts.end())
						    return it->second;
					    // A reading the first pass did not see (the message inside a field
					    // that was masked as text): masked on its own.
					    return engine_.scanner().mask(text, scan_direction(direction_));
				    },
				    type_);
				if (!rebuilt)
					return Verdict::refuse("internal",
					                       "cordon: masking could not rebuild the " +
					                           std::string(proxy::to_string(direction_)) + ": " +
					                           rebuilt.error().message());
				h.message.payload = std::move(*rebuilt);
				h.message.modified = true;
			}
			tally_->masked += settled.rules.size();
			tally_->rules.insert(settled.rules.begin(), settled.rules.end());
			ready.push_back(std::move(h.message));
		}
		return Verdict::forward();
	}

	MaskEngine &engine_;
	Direction direction_;
	rpc::Protocol protocol_;
	Carrier carrier_;
	std::shared_ptr<MaskTally> tally_;
	mask::ProtobufType type_; // Cursor's schema for this RPC, when known
	mask::TextStream stream_;
	bool streamed_ = false;
	std::deque<Held> held_;
	size_t held_bytes_ = 0;
	std::string ignored_;
};

// Masking for a body that is not messages: a byte stream, masked in place, length kept.
class BytesMaskStage : public proxy::MessageStage {
public:
	BytesMaskStage(MaskEngine &engine, Direction direction, std::string refuse_reason,
	               std::shared_ptr<MaskTally> tally, bool scan)
	    : engine_(engine), refuse_reason_(std::move(refuse_reason)), tally_(std::move(tally)), scan_(scan)
	{
		if (scan_)
			masker_ = std::make_unique<mask::StreamMasker>(engine.fixed_length_scanner(),
			                                               scan_direction(direction));
		else if (refuse_reason_.empty())
			tally_->unscanned++;
	}

	Verdict push(Message message, std::vector<Message> &ready) override
	{
		ready.push_back(std::move(message)); // not used: this stage is for byte bodies
		return Verdict::forward();
	}

	Verdict push_bytes(std::string_view in, std::string &out) override
	{
		if (!refuse_reason_.empty())
			return Verdict::refuse_bad_input("invalid_argument", refuse_reason_);
		if (!masker_) {
			out.append(in);
			return Verdict::forward();
		}
		out += masker_->feed(in);
		last_ = Clock::now();
		count();
		return Verdict::forward();
	}

	Verdict flush(bool, Clock::time_point, std::vector<Message> &, std::string &bytes_out) override
	{
		if (masker_) {
			bytes_out += masker_->flush();
			count();
		}
		return Verdict::forward();
	}

	size_t held_bytes() const override { return masker_ ? masker_->held() : 0; }
	std::optional<Clock::time_point> hold_deadline() const override
	{
		if (!masker_ || masker_->held() == 0)
			return std::nullopt;
		return last_ + engine_.hold();
	}

private:
	void count()
	{
		const auto &f = masker_->findings();
		for (; counted_ < f.size(); counted_++) {
			tally_->masked++;
			tally_->rules.insert(f[counted_].rule);
		}
	}

	MaskEngine &engine_;
	std::string refuse_reason_;
	std::shared_ptr<MaskTally> tally_;
	bool scan_;
	std::unique_ptr<mask::StreamMasker> masker_;
	size_t counted_ = 0;
	Clock::time_point last_;
};

// Headers that frame or route the exchange: masking them would break it, and they carry no data.
bool structural_header(const std::string &name)
{
	static const std::set<std::string> names = {":method",
	                                            ":scheme",
	                                            ":authority",
	                                            ":status",
	                                            "host",
	                                            "content-type",
	                                            "content-length",
	                                            "content-encoding",
	                                            "transfer-encoding",
	                                            "te",
	                                            "connection",
	                                            "connect-protocol-version",
	                                            "connect-content-encoding",
	                                            "connect-accept-encoding",
	                                            "connect-timeout-ms",
	                                            "grpc-encoding",
	                                            "grpc-accept-encoding",
	                                            "grpc-timeout",
	                                            "grpc-status",
	                                            "accept-encoding",
	                                            "accept",
	                                            "date"};
	return names.count(name) != 0;
}

} // namespace

Result<std::unique_ptr<MaskEngine>> MaskEngine::create(const config::Mask &policy, const proxy::MessageDecoder *decoder)
{
	auto compiled = compile_mask_policy(policy);
	if (!compiled)
		return compiled.error();
	auto engine = std::unique_ptr<MaskEngine>(new MaskEngine());
	engine->scanner_ = std::make_unique<mask::Scanner>(*compiled);
	engine->fixed_length_scanner_ =
	    std::make_unique<mask::Scanner>((*compiled)->with_replacement(std::string(mask::kSameLength)));
	if (!engine->scanner_->ok())
		return engine->scanner_->error();
	if (!engine->fixed_length_scanner_->ok())
		return engine->fixed_length_scanner_->error();
	engine->decoder_ = decoder;
	engine->block_unscannable_ = policy.unscannable() != config::PASS;
	engine->hold_ = std::chrono::milliseconds(policy.hold_ms());
	for (const auto &h : policy.request_headers_exempt()) {
		std::string lower = h;
		std::transform(lower.begin(), lower.end(), lower.begin(),
		               [](unsigned char c) { return std::tolower(c); });
		engine->request_headers_exempt_.insert(lower);
	}
	engine->response_exempt_paths_.assign(policy.response_exempt_paths().begin(),
	                                      policy.response_exempt_paths().end());
	return engine;
}

bool MaskEngine::response_exempt(const std::string &path) const
{
	const std::string bare = path.substr(0, path.find('?'));
	for (const auto &glob : response_exempt_paths_)
		if (fnmatch(glob.c_str(), bare.c_str(), 0) == 0)
			return true;
	return false;
}

bool MaskEngine::header_exempt(Direction d, const std::string &name) const
{
	return structural_header(name) || (d == Direction::Request && request_headers_exempt_.count(name));
}

std::shared_ptr<MaskTally> ConnectionMasker::tally(uint64_t number)
{
	auto &slot = tallies_[number];
	if (!slot)
		slot = std::make_shared<MaskTally>();
	return slot;
}

MaskTally ConnectionMasker::take(uint64_t number)
{
	auto it = tallies_.find(number);
	if (it == tallies_.end())
		return {};
	MaskTally t = *it->second;
	tallies_.erase(it);
	return t;
}

Verdict ConnectionMasker::on_headers(const proxy::RequestInfo &request, Direction direction, bool,
                                     proxy::Headers &headers)
{
	auto t = tally(request.number);
	for (auto &h : headers) {
		if (engine_.header_exempt(direction, h.name))
			continue;
		std::vector<mask::Finding> found;
		std::string masked = mask::rewrite_header_value(h.value, [&](std::string_view text) {
			return engine_.scanner().mask(text, scan_direction(direction), &found);
		});
		if (masked == h.value)
			continue;
		h.value = std::move(masked);
		t->masked += found.size();
		for (const auto &f : found)
			t->rules.insert(f.rule);
	}
	return Verdict::forward();
}

std::unique_ptr<proxy::MessageStage>
ConnectionMasker::make_stage(Direction direction, const proxy::RequestInfo &request, rpc::Protocol protocol,
                             const std::string &content_type, const std::string &content_encoding)
{
	auto t = tally(request.number);
	if (direction == Direction::Response && engine_.response_exempt(request.path))
		return nullptr; // the job's own login tokens
	const bool messages =
	    rpc::is_enveloped(protocol) || protocol == rpc::Protocol::ConnectUnary || protocol == rpc::Protocol::Rest;
	if (messages) {
		mask::ProtobufType type;
		if (const proxy::MessageDecoder *decoder = engine_.decoder()) {
			type.type = decoder->descriptor(request.rpc, direction);
			type.strings = decoder->string_fields();
		}
		return std::make_unique<MessageMaskStage>(engine_, direction, protocol,
		                                          carrier_for(media_type(content_type)), t, type);
	}
	// A plain body. Compressed ones cannot be masked in place: leaving the job they are blocked
	// (or passed, as the policy says); coming from Cursor (downloads) they pass, counted.
	const bool encoded = !content_encoding.empty() && content_encoding != "identity";
	if (!encoded)
		return std::make_unique<BytesMaskStage>(engine_, direction, "", t, true);
	std::string refuse;
	if (direction == Direction::Request && engine_.block_unscannable())
		refuse = unscannable_reason(direction, "a body with content-encoding '" + content_encoding + "'");
	return std::make_unique<BytesMaskStage>(engine_, direction, refuse, t, false);
}

} // namespace cordon
