// Finding and masking secrets in a whole text (one message, one header value, one file).
//
// A Scanner owns vectorscan scratch space, so it belongs to one thread; the RuleSet it scans with
// is shared. Hits from vectorscan (end offsets) are confirmed with RE2 over a window reaching back
// the rule's max width (see rules.h), so no start-of-match tracking is needed in vectorscan.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "mask/rules.h"

struct hs_scratch;
struct hs_database;

namespace cordon::mask {

namespace detail {

struct HsScratchFree {
	void operator()(hs_scratch *s) const;
};
using HsScratchPtr = std::unique_ptr<hs_scratch, HsScratchFree>;

// What the stream masker needs to know of a compiled rule set (RuleSet::Compiled lives in scanner.cc).
size_t rule_width(const RuleSet &rules, uint32_t index); // vectorscan max_width of its regex
bool is_block_rule(const RuleSet &rules, uint32_t index);
Direction rule_direction(const RuleSet &rules, uint32_t index);
const hs_database *stream_database(const RuleSet &rules); // null when there are no rules
const hs_database *block_database(const RuleSet &rules);  // (for benchmarks: the scan alone)

// The copy of a rule regex RE2 compiles: counted repeats over 1000 (RE2's limit) split into
// consecutive pieces that match the same strings. (Also what a benchmark gives RE2::Set.)
std::string re2_pattern(std::string_view regex);

// Hit end offsets of one rule, folded into ranges whose confirmation windows overlap.
struct Cluster {
	uint64_t lo = 0, hi = 0; // first and last end offset
};
void add_hit(std::vector<Cluster> &clusters, uint64_t end, size_t width);
void normalize(std::vector<Cluster> &clusters, size_t width); // sort and merge out-of-order ones

// A confirmed secret, before merging.
struct Candidate {
	uint32_t rule = 0;
	uint64_t match_start = 0; // where the rule's match starts (decides whether it is final)
	uint64_t start = 0, end = 0;
	bool open = false; // a private-key block that may go on past `end` (cap or end of data)
};

// The bytes a confirmation can see.
struct Window {
	std::string_view buf;
	uint64_t base = 0;         // absolute offset of buf[0]
	bool final = true;         // buf ends where the data ends (whole text, flush)
	uint64_t accept_below = 0; // matches starting at or after this are left for later
};

// Confirms rule `index`'s hits in `cluster`. Appends candidates; a private-key block that may still
// grow with more data lowers `hold_from` to its start instead. Blocks starting below
// `skip_blocks_below` were found before and are skipped.
void confirm(const RuleSet &rules, uint32_t index, const Cluster &cluster, const Window &window,
             std::vector<Candidate> &out, uint64_t &hold_from, uint64_t skip_blocks_below = 0);

// The end of the base64 body that continues at `from` (continuation of an open block).
size_t continuation_end(std::string_view buf, size_t from);

// Sorts candidates and merges overlapping or adjacent ones (the first keeps its rule).
void merge(std::vector<Candidate> &candidates);

} // namespace detail

class Scanner { // one per thread (owns vectorscan scratch)
public:
	explicit Scanner(std::shared_ptr<const RuleSet> rules);
	~Scanner();
	Scanner(const Scanner &) = delete;
	Scanner &operator=(const Scanner &) = delete;

	// Scratch allocation can fail (memory). A failed scanner fails closed: every text it is given
	// is one finding of rule "scanner-unavailable", so nothing unscanned leaves.
	bool ok() const { return !failed_; }
	const Error &error() const { return error_; }

	// Findings in `text`, confirmed (capture group, entropy, allowlists) and with overlaps merged,
	// in offset order.
	std::vector<Finding> scan(std::string_view text, Direction direction);
	// `text` with every finding replaced; findings appended to `found` when given.
	std::string mask(std::string_view text, Direction direction, std::vector<Finding> *found = nullptr);

	const RuleSet &rules() const { return *rules_; }
	const std::shared_ptr<const RuleSet> &shared_rules() const { return rules_; }

	// `text` with `findings` (sorted, disjoint, from scan) replaced per `options`.
	static std::string apply(std::string_view text, const std::vector<Finding> &findings, const Options &options);

private:
	friend class StreamMasker;
	static int on_hit(unsigned int id, unsigned long long from, unsigned long long to, unsigned int flags,
	                  void *context);
	void reset_hits();

	std::shared_ptr<const RuleSet> rules_;
	detail::HsScratchPtr scratch_;
	Error error_;
	bool failed_ = false;
	Direction direction_ = Direction::Both;          // of the scan under way (read by on_hit)
	std::vector<std::vector<detail::Cluster>> hits_; // per rule
	std::vector<uint32_t> touched_;                  // rules with hits
};

} // namespace cordon::mask
