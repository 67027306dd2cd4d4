// Masking on the data path: every header value and every message, both directions, passes
// through the secret scanner before anyone (Cursor, the job, the journal, a recording) sees it.
//
// Messages are taken apart by their carrier (protobuf, JSON, text; hex and Basic credentials
// inside them), each text is scanned, and the message is put back together valid. Streamed
// messages are joined field by field (mask/text_stream.h), so a secret cut across messages is
// still found, at the price of holding a message back until the next one (or the policy's
// hold_ms) shows where its last word ends. Bodies that are not messages are masked as a byte
// stream with length-preserving replacement (their length may be fixed by content-length).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "common/result.h"
#include "cordon/config.pb.h"
#include "mask/rules.h"
#include "mask/scanner.h"
#include "proxy/exchange.h"

namespace cordon {
namespace proxy {
class MessageDecoder;
}

// Compiled rules and scanners, built when the policy loads. cordond's loop is one thread, so
// one scanner (vectorscan scratch) serves every connection.
class MaskEngine {
public:
	// `decoder`: Cursor's message shapes, so that fields are read as declared (optional; it
	// must outlive the engine).
	static Result<std::unique_ptr<MaskEngine>> create(const config::Mask &policy,
	                                                  const proxy::MessageDecoder *decoder = nullptr);
	const proxy::MessageDecoder *decoder() const { return decoder_; }

	mask::Scanner &scanner() { return *scanner_; }
	// Replaces a secret with '*' of its length: for bodies whose length must not change.
	mask::Scanner &fixed_length_scanner() { return *fixed_length_scanner_; }
	bool block_unscannable() const { return block_unscannable_; }
	std::chrono::milliseconds hold() const { return hold_; }
	bool header_exempt(proxy::Direction d, const std::string &name) const;
	bool response_exempt(const std::string &path) const;
	size_t rule_count() const { return scanner_->rules().rules().size(); }

private:
	std::unique_ptr<mask::Scanner> scanner_, fixed_length_scanner_;
	const proxy::MessageDecoder *decoder_ = nullptr;
	bool block_unscannable_ = true;
	std::chrono::milliseconds hold_{200};
	std::set<std::string> request_headers_exempt_;
	std::vector<std::string> response_exempt_paths_;
};

// What masking did in one exchange, for its journal entry. Never the secrets themselves.
struct MaskTally {
	uint64_t masked = 0;         // secrets replaced
	std::set<std::string> rules; // ids of the rules that found them
	uint64_t unscanned = 0;      // messages or bodies let through without inspection (policy)
};

// One connection's masking: an observer that rewrites header values and gives each body a
// masking stage. Must come first among the observers, so the rest only ever see masked data.
class ConnectionMasker : public proxy::ExchangeObserver {
public:
	// Holds the engine: a reload may replace it for new connections while this one lives on.
	explicit ConnectionMasker(std::shared_ptr<MaskEngine> engine) : keep_(std::move(engine)), engine_(*keep_) {}

	proxy::Verdict on_headers(const proxy::RequestInfo &, proxy::Direction, bool trailers,
	                          proxy::Headers &headers) override;
	std::unique_ptr<proxy::MessageStage> make_stage(proxy::Direction, const proxy::RequestInfo &, rpc::Protocol,
	                                                const std::string &content_type,
	                                                const std::string &content_encoding) override;

	// The tally of exchange `number` (removed: ask once, when the exchange is journaled).
	MaskTally take(uint64_t number);

private:
	std::shared_ptr<MaskTally> tally(uint64_t number);

	std::shared_ptr<MaskEngine> keep_;
	MaskEngine &engine_;
	std::map<uint64_t, std::shared_ptr<MaskTally>> tallies_;
};

} // namespace cordon
