// Masking a byte stream whose message boundaries are unknown (plain text, text SSE, the text of a
// sequence of streamed messages), as it arrives.
//
// vectorscan scans the stream in streaming mode, so a secret split across writes is reported when
// its last byte arrives. Because a secret may start in bytes already received, the masker holds
// back the last max_width() bytes: no match still to come can start before them, so everything
// before is final and leaves masked. An opening private-key marker holds back from its start until
// the END line arrives or the block reaches its cap. A finding that could still merge with the
// next one (it touches the hold-back) waits too, unless that would exceed max_hold().
//
// What leaves is byte for byte what Scanner::mask makes of the whole stream, with one exception:
// flush() forwards everything, so a secret cut by an idle flush leaves its first part as it was and
// is masked from the cut on (vectorscan's stream state still sees it whole). A block cut by the cap
// or by a flush keeps masking the base64 body that follows it.
//
// Bounds: held() <= RuleSet::max_hold() after every call. Memory: the held bytes, max_width() bytes
// of context before them, and vectorscan's stream state (RuleSet::stream_state_size()).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mask/scanner.h"

struct hs_stream;

namespace cordon::mask {

class StreamMasker {
public:
	// `scanner` (and its thread) must outlive the masker; the masker borrows its scratch.
	StreamMasker(Scanner &scanner, Direction direction);
	~StreamMasker();
	StreamMasker(const StreamMasker &) = delete;
	StreamMasker &operator=(const StreamMasker &) = delete;

	std::string feed(std::string_view data); // masked bytes safe to forward now
	std::string flush();                     // end of stream or idle: everything held, masked
	size_t held() const { return static_cast<size_t>(total_ - emitted_); }
	uint64_t fed() const { return total_; }
	// Offsets are stream offsets of the input (what was fed), not of the output.
	const std::vector<Finding> &findings() const { return findings_; }

private:
	struct StreamClose {
		void operator()(hs_stream *s) const;
	};

	static int on_hit(unsigned int id, unsigned long long from, unsigned long long to, unsigned int flags,
	                  void *context);
	std::string round(bool final);
	void extend_open_groups();
	void emit(uint64_t upto, std::string &out);
	void trim();
	std::string fail_closed();

	Scanner &scanner_;
	Direction direction_;
	std::unique_ptr<hs_stream, StreamClose> stream_;
	std::string buf_;   // input from stream offset base_ on: context, held bytes
	uint64_t base_ = 0; // stream offset of buf_[0]
	uint64_t total_ = 0, emitted_ = 0;
	std::vector<std::vector<detail::Cluster>> hits_; // per rule, not yet resolved
	std::vector<uint32_t> touched_;
	std::vector<uint64_t> blocks_below_;    // per rule: blocks starting below this were taken
	std::vector<detail::Candidate> groups_; // confirmed, merged, not yet forwarded
	bool continuation_ = false;             // the last forwarded finding is a block that goes on
	bool failed_ = false;                   // vectorscan failed: everything from here is masked
	std::vector<Finding> findings_;
};

} // namespace cordon::mask
