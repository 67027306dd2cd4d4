#include "mask/stream_masker.h"

#include <hs/hs.h>

#include <algorithm>
#include <climits>

namespace cordon::mask {

namespace {

constexpr const char *kEngineError = "scanner-error";
// Below this, trimming the buffer's consumed prefix costs more than it saves.
constexpr size_t kTrimMin = 4096;

} // namespace

void StreamMasker::StreamClose::operator()(hs_stream *s) const
{
	hs_close_stream(s, nullptr, nullptr, nullptr);
}

StreamMasker::StreamMasker(Scanner &scanner, Direction direction) : scanner_(scanner), direction_(direction)
{
	const RuleSet &rules = scanner_.rules();
	hits_.resize(rules.rules().size());
	blocks_below_.assign(rules.rules().size(), 0);
	if (!scanner_.ok()) {
		failed_ = true;
		return;
	}
	const hs_database_t *db = detail::stream_database(rules);
	if (!db) // no rules: everything passes through
		return;
	hs_stream_t *stream = nullptr;
	if (hs_open_stream(db, 0, &stream) != HS_SUCCESS) {
		failed_ = true;
		return;
	}
	stream_.reset(stream);
}

StreamMasker::~StreamMasker() = default;

int StreamMasker::on_hit(unsigned int id, unsigned long long, unsigned long long to, unsigned int, void *context)
{
	auto *self = static_cast<StreamMasker *>(context);
	const RuleSet &rules = self->scanner_.rules();
	if (!applies(detail::rule_direction(rules, id), self->direction_))
		return 0;
	auto &clusters = self->hits_[id];
	if (clusters.empty())
		self->touched_.push_back(id);
	detail::add_hit(clusters, to, detail::rule_width(rules, id));
	return 0;
}

// vectorscan failed mid-stream: it can no longer say what is safe, so nothing more leaves unmasked.
std::string StreamMasker::fail_closed()
{
	const uint64_t n = total_ - emitted_;
	std::string out;
	if (n > 0) {
		out = replacement(scanner_.rules().options(), kEngineError, n);
		findings_.push_back({kEngineError, static_cast<size_t>(emitted_), static_cast<size_t>(n)});
	}
	emitted_ = total_;
	base_ = total_;
	buf_.clear();
	groups_.clear();
	return out;
}

std::string StreamMasker::feed(std::string_view data)
{
	if (data.empty())
		return {};
	total_ += data.size();
	if (failed_)
		return fail_closed();
	buf_.append(data);
	if (stream_) {
		for (size_t off = 0; off < data.size();) {
			const size_t n = std::min<size_t>(data.size() - off, 1u << 30);
			if (hs_scan_stream(stream_.get(), data.data() + off, static_cast<unsigned int>(n), 0,
			                   scanner_.scratch_.get(), &StreamMasker::on_hit, this) != HS_SUCCESS) {
				failed_ = true;
				return fail_closed();
			}
			off += n;
		}
	}
	return round(false);
}

std::string StreamMasker::flush()
{
	if (failed_)
		return fail_closed();
	if (stream_) {
		// Matches that need the end of the data ($, a trailing \b) are reported only when a stream
		// closes; close a copy so that the stream itself can go on after an idle flush.
		hs_stream_t *copy = nullptr;
		if (hs_copy_stream(&copy, stream_.get()) != HS_SUCCESS ||
		    hs_close_stream(copy, scanner_.scratch_.get(), &StreamMasker::on_hit, this) != HS_SUCCESS) {
			failed_ = true;
			return fail_closed();
		}
	}
	return round(true);
}

// A held block that reached the end of the data so far grows with the base64 that followed.
void StreamMasker::extend_open_groups()
{
	for (detail::Candidate &g : groups_) {
		if (!g.open)
			continue;
		g.end = base_ + detail::continuation_end(buf_, static_cast<size_t>(g.end - base_));
		g.open = g.end == total_;
	}
}

std::string StreamMasker::round(bool final)
{
	std::string out;
	const RuleSet &rules = scanner_.rules();

	// The block forwarded last goes on: its body is masked as it comes (nothing to hold back).
	if (continuation_) {
		const size_t from = static_cast<size_t>(emitted_ - base_);
		const size_t to = detail::continuation_end(buf_, from);
		if (to > from) {
			if (rules.options().replacement == kSameLength)
				out.append(to - from, '*');
			findings_.back().length += to - from;
			emitted_ += to - from;
		}
		if (to < buf_.size())
			continuation_ = false;
	}
	extend_open_groups();

	// Nothing before `accept` can be the start of a match still to come: any match is at most
	// max_width() long, and every one that ends in the data seen so far has been reported.
	const uint64_t width = rules.max_width();
	uint64_t accept = final ? total_ : (total_ > width ? total_ - width : 0);
	accept = std::max(accept, emitted_);
	detail::Window window{buf_, base_, final, accept};
	std::vector<detail::Candidate> found;

	// Blocks first: one still growing (no END line yet) pulls `accept` back to its start.
	uint64_t hold = UINT64_MAX;
	for (uint32_t r : touched_) {
		if (!detail::is_block_rule(rules, r))
			continue;
		const size_t w = detail::rule_width(rules, r);
		for (const detail::Cluster &c : hits_[r])
			if (final || c.lo < accept + w)
				detail::confirm(rules, r, c, window, found, hold, blocks_below_[r]);
	}
	if (hold < accept)
		accept = std::max(emitted_, hold);
	window.accept_below = accept;
	std::erase_if(found, [&](const detail::Candidate &c) { return c.match_start >= accept; });
	for (const detail::Candidate &c : found)
		blocks_below_[c.rule] = std::max(blocks_below_[c.rule], c.match_start + 1);

	uint64_t unused = UINT64_MAX;
	for (uint32_t r : touched_) {
		if (detail::is_block_rule(rules, r))
			continue;
		const size_t w = detail::rule_width(rules, r);
		detail::normalize(hits_[r], w);
		for (const detail::Cluster &c : hits_[r])
			if (final || c.lo < accept + w)
				detail::confirm(rules, r, c, window, found, unused);
	}

	// Hits ending at or before `accept` belong to matches starting before it: all resolved now.
	std::erase_if(touched_, [&](uint32_t r) {
		auto &clusters = hits_[r];
		std::erase_if(clusters, [&](const detail::Cluster &c) { return c.hi <= accept; });
		for (detail::Cluster &c : clusters)
			c.lo = std::max(c.lo, accept + 1);
		return clusters.empty();
	});

	for (detail::Candidate &c : found) {
		if (c.end <= emitted_)
			continue; // forwarded already (found again from a later window)
		c.start = std::max(c.start, emitted_);
		groups_.push_back(c);
	}
	detail::merge(groups_);

	// Forward up to `accept`, but never split a finding that may still merge with one to come.
	uint64_t upto = accept;
	if (!final) {
		for (const detail::Candidate &g : groups_) {
			if (g.start < accept && g.end >= accept) {
				upto = g.start;
				// Bounded hold-back: a finding (or chain of adjacent ones) held too long leaves as it
				// is.
				if (total_ - upto > rules.max_hold())
					upto = g.end;
				break;
			}
		}
	}
	emit(upto, out);
	trim();
	return out;
}

void StreamMasker::emit(uint64_t upto, std::string &out)
{
	const Options &options = scanner_.rules().options();
	uint64_t at = emitted_;
	size_t n = 0;
	for (; n < groups_.size() && groups_[n].start < upto; n++) {
		const detail::Candidate &g = groups_[n];
		out.append(buf_, static_cast<size_t>(at - base_), static_cast<size_t>(g.start - at));
		const std::string &id = scanner_.rules().rules()[g.rule].id;
		out += replacement(options, id, static_cast<size_t>(g.end - g.start));
		findings_.push_back({id, static_cast<size_t>(g.start), static_cast<size_t>(g.end - g.start)});
		continuation_ = g.open;
		at = g.end;
	}
	groups_.erase(groups_.begin(), groups_.begin() + static_cast<std::ptrdiff_t>(n));
	if (upto > at) {
		out.append(buf_, static_cast<size_t>(at - base_), static_cast<size_t>(upto - at));
		continuation_ = false;
		at = upto;
	}
	emitted_ = at;
}

// Keep what later confirmations may read: max_width() bytes before the forwarding point (a match
// found later may start there, and is then masked from the forwarding point on) and every window
// of unresolved hits.
void StreamMasker::trim()
{
	const RuleSet &rules = scanner_.rules();
	const uint64_t width = rules.max_width();
	uint64_t keep = emitted_ > width ? emitted_ - width : 0;
	for (uint32_t r : touched_) {
		const size_t w = detail::rule_width(rules, r);
		for (const detail::Cluster &c : hits_[r])
			keep = std::min<uint64_t>(keep, c.lo > w ? c.lo - w : 0);
	}
	for (const detail::Candidate &g : groups_)
		keep = std::min(keep, g.match_start);
	if (keep <= base_)
		return;
	const size_t drop = static_cast<size_t>(keep - base_);
	if (drop < kTrimMin && drop * 2 < buf_.size())
		return;
	buf_.erase(0, drop);
	base_ = keep;
}

} // namespace cordon::mask
