#include "mask/text_stream.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>

namespace cordon::mask {

std::vector<Hit> merge_hits(std::vector<Hit> hits)
{
	std::stable_sort(hits.begin(), hits.end(), [](const Hit &a, const Hit &b) {
		return a.offset != b.offset ? a.offset < b.offset : a.length > b.length;
	});
	std::vector<Hit> out;
	for (auto &h : hits) {
		if (h.length == 0)
			continue;
		if (!out.empty() && h.offset <= out.back().offset + out.back().length) {
			Hit &last = out.back();
			last.length = std::max(last.offset + last.length, h.offset + h.length) - last.offset;
			continue;
		}
		out.push_back(std::move(h));
	}
	return out;
}

TextStream::TextStream(FindSecrets find, Replacement replacement, TextStreamLimits limits)
    : find_(std::move(find)), replacement_(std::move(replacement)), limits_(limits)
{}

namespace {
// Characters no secret contains: what follows one of them cannot continue a secret before it.
bool is_boundary(char c)
{
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '"' || c == '\'' || c == '`';
}
} // namespace

size_t TextStream::open_tail(std::string_view text, size_t from)
{
	if (size_t begin = unclosed_begin(text, from); begin != std::string_view::npos)
		return begin;
	size_t i = text.size();
	while (i > from && !is_boundary(text[i - 1]))
		i--;
	return i;
}

// Base64 lines, the "Proc-Type: 4,ENCRYPTED" / "DEK-Info:" / "Version: ... (...)" header lines
// that PEM and PGP blocks may carry, and newlines escaped as "\n" (a key inside a JSON string,
// as in a GCP service-account file).
static bool key_body_so_far(std::string_view body)
{
	for (char c : body)
		if (!std::isalnum(static_cast<unsigned char>(c)) &&
		    (c == '\0' || !std::strchr("+/=:,.()\\- \t\r\n", c)))
			return false;
	return true;
}

size_t TextStream::unclosed_begin(std::string_view text, size_t from)
{
	// A marker may straddle into settled text ("-----BEG" left before "IN" arrived).
	from = from > 9 ? from - 9 : 0;
	// A private key block is one secret from BEGIN to the end of its END line, whitespace and all.
	// An unclosed BEGIN always lies in the unsettled part (it kept its piece from settling), so
	// only that part is searched, forwards (memchr-fast, unlike rfind).
	size_t open_begin = std::string_view::npos;
	for (size_t at = text.find("-----", from); at != std::string_view::npos; at = text.find("-----", at + 5)) {
		std::string_view marker = text.substr(at + 5);
		if (marker.starts_with("BEGIN")) {
			open_begin = at;
			const size_t header_end = text.find("-----", at + 10);
			if (header_end == std::string_view::npos)
				break; // the header line is still arriving
			// What follows the header up to the next marker (or the end) must read like a key:
			// a mention in code or prose ("-----BEGIN RSA PRIVATE KEY-----") is not held.
			const size_t next = text.find("-----", header_end + 5);
			if (!key_body_so_far(text.substr(header_end + 5, next == std::string_view::npos
			                                                     ? std::string_view::npos
			                                                     : next - header_end - 5)))
				open_begin = std::string_view::npos;
			at = header_end;
		} else if (open_begin != std::string_view::npos && marker.starts_with("END")) {
			// Closed once the END line's own dashes arrived.
			const size_t close = text.find("-----", at + 8);
			if (close == std::string_view::npos)
				break;
			open_begin = std::string_view::npos;
			at = close;
		}
	}
	return open_begin;
}

TextStream::Pending *TextStream::find_pending(uint64_t seq)
{
	if (pending_.empty() || seq < pending_.front().seq)
		return nullptr;
	size_t index = static_cast<size_t>(seq - pending_.front().seq);
	return index < pending_.size() ? &pending_[index] : nullptr;
}

uint64_t TextStream::add(std::vector<Leaf> leaves, Clock::time_point now)
{
	const uint64_t seq = next_seq_++;
	Pending p;
	p.seq = seq;
	p.masked.resize(leaves.size());
	p.settled.assign(leaves.size(), false);
	p.unsettled = leaves.size();
	p.original.resize(leaves.size());
	pending_.push_back(std::move(p));

	std::set<std::string> seen;
	for (size_t k = 0; k < leaves.size(); k++) {
		Leaf &leaf = leaves[k];
		if (leaf.text.empty()) {
			Pending &own = pending_.back();
			own.settled[k] = true;
			own.unsettled--;
			continue;
		}
		if (!seen.insert(leaf.path).second) {
			// A second text at the same path in one message (a repeated field) is a sibling of
			// the first, not its continuation: the run starts over.
			Run &old = runs_[leaf.path];
			settle_run(old);
			old = Run{};
		} else if (!runs_.count(leaf.path) && runs_.size() >= limits_.max_runs) {
			settle_all();
			runs_.clear();
		}
		Run &run = runs_[leaf.path];
		run.last_added = now;
		append(run, seq, k, leaf.text);
		pending_.back().original[k] = std::move(leaf.text);
		settle(run, open_tail(run.text, run.unsettled_from));
	}
	if (held_bytes_ > limits_.max_held_bytes)
		settle_all();
	return seq;
}

// Joining is a guess: that the same field of the next message goes on where this one stopped, as
// a streamed answer does. A message may instead carry a whole value of its own (each request of a
// bidi chat carries its conversation, attached files and current file again), and then the join
// reads a text no one sends: "...=AKIA...XYZ" + "AWS_ACCESS_KEY_ID=AKIA...XYZ" is one long
// generic-secret value that would swallow the second text whole, and "hello" + "AKIA... is my key"
// hides the key from the scanner (no word boundary where the texts meet).
// So the guess stands only while a secret the new text holds on its own is still found where it
// starts: the join may add secrets to it (the rest of one begun before), never move or hide them.
// The rest of a secret cut across messages is no secret on its own (it lacks the context that
// makes it one, such as a key's prefix or name).
bool TextStream::continues(const Run &run, size_t start, const std::vector<Hit> &joined, std::string_view text)
{
	// The join changes how the new text reads only through a secret that crosses into it, or where
	// the texts meet inside a word (\b no longer holds there): otherwise spare the second scan.
	const bool crossed = std::any_of(joined.begin(), joined.end(),
	                                 [&](const Hit &j) { return j.offset < start && j.offset + j.length > start; });
	if (!crossed && is_boundary(run.text[start - 1]))
		return true;
	for (const Hit &h : find_(text))
		if (std::none_of(joined.begin(), joined.end(),
		                 [&](const Hit &j) { return j.offset == start + h.offset; }))
			return false;
	return true;
}

void TextStream::append(Run &run, uint64_t seq, size_t leaf, const std::string &text)
{
	const size_t start = run.text.size();
	run.text += text;
	std::vector<Hit> hits = find_(run.text);
	if (start > 0 && run.block_rule.empty() && run.block_hits.empty() && !continues(run, start, hits, text)) {
		// Not a continuation. What is held leaves as its own text reads; as much of the joined
		// reading as lies in it is masked too, in case the guess was wrong the other way.
		run.text.resize(start);
		for (Hit &h : hits)
			if (h.offset < start && h.offset + h.length > run.unsettled_from) {
				h.length = std::min(h.offset + h.length, start) - h.offset;
				run.hits.push_back(std::move(h));
			}
		run.hits = merge_hits(std::move(run.hits)); // the held text's own reading names a secret first
		settle_run(run);
		const Clock::time_point last_added = run.last_added;
		run = Run{};
		run.last_added = last_added;
		append(run, seq, leaf, text);
		return;
	}
	run.pieces.push_back(Piece{seq, leaf, start, text.size()});
	held_bytes_ += text.size();
	// What an earlier reading found in the held text stays found: the joined text may read it
	// otherwise ("AKIA...XYZ" + "thanks" is no key, a value one character longer may fall below
	// its rule's entropy), and either reading may be the one its reader gets.
	for (const Hit &h : run.hits)
		if (h.offset >= run.unsettled_from && !h.continuation)
			hits.push_back(h);
	if (!run.block_rule.empty()) {
		// The rest of a cut private key, up to the end of its END line (markers may straddle
		// pieces: the search starts a marker's length back).
		const std::string rule = run.block_rule;
		size_t end = run.text.size();
		if (!run.block_end_seen) {
			if (size_t marker = run.text.find("-----END", start >= 8 ? start - 8 : 0);
			    marker != std::string::npos) {
				run.block_end_seen = true;
				if (size_t close = run.text.find("-----", marker + 8); close != std::string::npos) {
					end = std::max(close + 5, start);
					run.block_rule.clear();
				}
			}
		} else if (size_t close = run.text.find("-----", start >= 4 ? start - 4 : 0);
		           close != std::string::npos) {
			end = std::max(close + 5, start);
			run.block_rule.clear();
		}
		if (end > start)
			run.block_hits.push_back(Hit{start, end - start, rule, true});
		if (run.block_rule.empty())
			run.block_end_seen = false;
	}
	if (!run.block_hits.empty()) {
		// What the scanner sees starting in the settled context is this same key (its earlier
		// part already left masked): only the continuation counts.
		std::erase_if(hits, [&](const Hit &h) { return h.offset < run.unsettled_from; });
		hits.insert(hits.end(), run.block_hits.begin(), run.block_hits.end());
	}
	run.hits = merge_hits(std::move(hits));
}

void TextStream::finish()
{
	// Nothing follows: the scanner has seen every block whole, so nothing is cut.
	for (auto &[path, run] : runs_)
		settle_run(run);
}

void TextStream::settle_all()
{
	for (auto &[path, run] : runs_) {
		cut_block(run);
		settle_run(run);
	}
}

void TextStream::settle_idle(Clock::time_point now, Clock::duration idle)
{
	for (auto &[path, run] : runs_) {
		if (run.pieces.empty() || now - run.last_added < idle)
			continue;
		cut_block(run);
		settle_run(run);
	}
}

std::optional<TextStream::Clock::time_point> TextStream::oldest_quiet() const
{
	std::optional<Clock::time_point> oldest;
	for (const auto &[path, run] : runs_)
		if (!run.pieces.empty() && (!oldest || run.last_added < *oldest))
			oldest = run.last_added;
	return oldest;
}

// Settling everything while a private key is still open: remember to remove the rest of it.
void TextStream::cut_block(Run &run)
{
	const size_t begin = unclosed_begin(run.text, run.unsettled_from);
	if (begin == std::string_view::npos)
		return;
	run.block_rule = "private-key";
	run.block_needs_marker = true;
	for (const Hit &h : run.hits)
		if (h.offset <= begin && h.offset + h.length > begin) {
			run.block_rule = h.rule;
			run.block_needs_marker = false;
		}
	if (run.block_needs_marker) {
		// Nothing covers it yet (too short to be told from a mention): it goes masked from BEGIN.
		run.hits.push_back(Hit{begin, run.text.size() - begin, run.block_rule, false});
		run.hits = merge_hits(std::move(run.hits));
		run.block_needs_marker = false;
	}
}

void TextStream::settle(Run &run, size_t until)
{
	// Hits that began in text already settled (a secret the hold did not foresee): the rest of
	// them is still masked, with the replacement where it resumes.
	std::set<size_t> resumed;
	// Pieces settle whole, and a secret settles whole: one that reaches into a piece staying
	// held keeps every piece it touches.
	size_t settle_count = 0;
	for (bool moved = true; moved;) {
		moved = false;
		settle_count = 0;
		while (settle_count < run.pieces.size() &&
		       run.pieces[settle_count].start + run.pieces[settle_count].length <= until)
			settle_count++;
		if (settle_count == run.pieces.size())
			break;
		const size_t kept_from = run.pieces[settle_count].start;
		for (const Hit &hit : run.hits)
			if (hit.offset < kept_from && hit.offset + hit.length > kept_from && hit.offset < until) {
				until = hit.offset;
				moved = true;
			}
	}
	size_t done = 0;
	for (; done < settle_count; done++) {
		const Piece &pc = run.pieces[done];
		const size_t end = pc.start + pc.length;
		Pending *p = find_pending(pc.seq);
		std::string out;
		size_t pos = pc.start;
		for (const Hit &hit : run.hits) {
			const size_t hs = hit.offset, he = hit.offset + hit.length;
			if (he <= pc.start || hs >= end)
				continue;
			const size_t a = std::max(hs, pc.start), b = std::min(he, end);
			out.append(run.text, pos, a - pos);
			const bool starts_here = hs >= pc.start;
			const bool resumes_here = hs < run.unsettled_from && resumed.insert(hs).second;
			if ((starts_here || resumes_here) && !hit.continuation) {
				out += replacement_(hit.rule, hit.length);
				if (p)
					p->rules.push_back(hit.rule);
			}
			pos = b;
		}
		out.append(run.text, pos, end - pos);
		held_bytes_ -= pc.length;
		if (p && !p->settled[pc.leaf]) {
			p->changed |= out != p->original[pc.leaf];
			p->masked[pc.leaf] = std::move(out);
			p->settled[pc.leaf] = true;
			p->unsettled--;
		}
	}
	if (done == 0)
		return;
	run.pieces.erase(run.pieces.begin(), run.pieces.begin() + static_cast<std::ptrdiff_t>(done));
	// Keep a little settled text as context for what comes next; drop the rest.
	const size_t first = run.pieces.empty() ? run.text.size() : run.pieces.front().start;
	const size_t cut = first > limits_.context_bytes ? first - limits_.context_bytes : 0;
	run.text.erase(0, cut);
	for (auto &pc : run.pieces)
		pc.start -= cut;
	std::vector<Hit> kept;
	for (auto &h : run.hits) {
		if (h.offset + h.length <= cut)
			continue;
		if (h.offset < cut) {
			h.length -= cut - h.offset;
			h.offset = 0;
		} else {
			h.offset -= cut;
		}
		kept.push_back(std::move(h));
	}
	run.hits = std::move(kept);
	run.unsettled_from = first - cut;
	std::erase_if(run.block_hits, [&](const Hit &h) { return h.offset + h.length <= first; });
	for (auto &h : run.block_hits)
		h.offset -= cut;
}

std::vector<TextStream::Settled> TextStream::take_settled()
{
	std::vector<Settled> out;
	while (!pending_.empty() && pending_.front().unsettled == 0) {
		Pending &p = pending_.front();
		out.push_back(
		    Settled{p.seq, std::move(p.masked), std::move(p.original), std::move(p.rules), p.changed});
		pending_.pop_front();
	}
	return out;
}

} // namespace cordon::mask
