// Masking across streamed messages. A chat answer arrives as many small messages, and a secret
// in it may be cut anywhere: "AKIAIOSF" in one message, "ODNN7EXAMPLE" in the next. Each text
// field is therefore joined to the same field of the messages before it (a "run" per field
// path), scanned as one text, and a message is held back while its end could still be the
// start of a secret: from the last whitespace or quote on, or from an unclosed "-----BEGIN".
// The next message (or the end of the stream, or a deadline the caller keeps) settles it.
//
// What leaves is each message with its texts masked: a secret that spans messages is replaced
// by the replacement text where it starts and removed from the messages it continues into, so
// the joined text a client builds reads "[MASKED:rule]".
//
// A join is a guess, and some messages carry whole values instead (each request of a bidi chat
// sends its attached files again). A text is not joined to the run before it when the joined
// reading would move or hide a secret the text holds on its own; the run then starts over, and
// what it held leaves as it reads alone. Nor does a join unmask what an earlier reading found in
// the text held. So a value sent again is masked in each message, and no text is removed from a
// message unless it continues a secret begun in the one before.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cordon::mask {

// A secret found in a text: where, and which rule.
// A private key streamed slower than the hold allows is cut: what already left is masked, and
// the rest of it is removed as it comes (Hit::continuation), up to its END line.
struct Hit {
	size_t offset = 0, length = 0;
	std::string rule;
	// The rest of a private key whose start already left masked (held too long): removed, with
	// no second replacement and not counted again.
	bool continuation = false;
};
// The scanner, as the stream sees it.
using FindSecrets = std::function<std::vector<Hit>(std::string_view text)>;
// The text that replaces a secret of `length` bytes found by `rule`.
using Replacement = std::function<std::string(const std::string &rule, size_t length)>;

// One text of a message and where it sits (a field path such as "2.1" or "$.messages[].text").
struct Leaf {
	std::string path;
	std::string text;
};

struct TextStreamLimits {
	size_t context_bytes = 512;        // settled text kept before the unsettled part of a run
	size_t max_held_bytes = 64 * 1024; // beyond this, everything held is settled at once
	size_t max_runs = 256;             // distinct field paths followed per stream
};

class TextStream {
public:
	TextStream(FindSecrets find, Replacement replacement, TextStreamLimits limits = {});

	// A message's texts, in order. Returns its sequence number (0, 1, ...).
	using Clock = std::chrono::steady_clock;
	// `now`: when the message arrived; a field that stops being continued is settled by
	// settle_idle() (its run went idle), so one quiet field does not hold up the others.
	uint64_t add(std::vector<Leaf> leaves, Clock::time_point now = {});
	// Settles everything held because it was held too long: a private key still open is cut,
	// and the rest of it is removed as it comes.
	void settle_all();
	// The end of the data: settles everything held as the scanner sees it.
	void finish();
	// Settles the runs that hold text and had nothing added for `idle` (at `now`).
	void settle_idle(Clock::time_point now, Clock::duration idle);
	// The earliest time a run holding text went quiet (its last addition), if any holds text.
	std::optional<Clock::time_point> oldest_quiet() const;

	struct Settled {
		uint64_t seq = 0;
		std::vector<std::string> texts;    // masked, one per leaf
		std::vector<std::string> original; // as added
		std::vector<std::string> rules;    // one entry per secret masked in this message
		bool changed = false;
	};
	// Messages whose texts are all settled, oldest first, up to the first that is not.
	std::vector<Settled> take_settled();

	size_t held_bytes() const { return held_bytes_; }
	// Whether texts were added at `path` before (its run is followed).
	bool follows(const std::string &path) const { return runs_.count(path) != 0; }
	// Messages added and not yet taken.
	size_t pending() const { return pending_.size(); }

private:
	struct Piece {
		uint64_t seq;
		size_t leaf;
		size_t start, length; // in the run's text
	};
	struct Run {
		std::string text;          // settled context, then the unsettled pieces
		size_t unsettled_from = 0; // where the first piece starts
		std::vector<Piece> pieces;
		std::vector<Hit> hits; // for `text`, merged and sorted
		// A private key cut by a forced settle (its END not seen yet): what follows up to its
		// END line is the rest of it, whatever the scanner can still see of it.
		std::string block_rule;
		bool block_needs_marker = false; // its start left unmasked (too short to tell then)
		bool block_end_seen = false;     // "-----END" arrived; the block ends with the next "-----"
		std::vector<Hit> block_hits;     // continuation hits of pieces not settled yet
		Clock::time_point last_added{};
	};
	struct Pending {
		uint64_t seq;
		std::vector<std::string> original, masked;
		std::vector<bool> settled;
		size_t unsettled = 0;
		std::vector<std::string> rules;
		bool changed = false;
	};

	void append(Run &run, uint64_t seq, size_t leaf, const std::string &text);
	// Whether `text`, joined to the run at `start` (`joined`: the hits of the joined text), reads
	// as the continuation of what the run holds (text_stream.cc says when it does not).
	bool continues(const Run &run, size_t start, const std::vector<Hit> &joined, std::string_view text);
	// Settles the pieces that end before `until` (the run's text offset).
	void settle(Run &run, size_t until);
	void settle_run(Run &run) { settle(run, run.text.size()); }
	Pending *find_pending(uint64_t seq);
	static size_t open_tail(std::string_view text, size_t from);
	static size_t unclosed_begin(std::string_view text, size_t from);
	void cut_block(Run &run);

	FindSecrets find_;
	Replacement replacement_;
	TextStreamLimits limits_;
	std::map<std::string, Run> runs_;
	std::deque<Pending> pending_;
	uint64_t next_seq_ = 0;
	size_t held_bytes_ = 0;
};

// Merges overlapping and touching hits (the first rule names the merged one); sorts by offset.
std::vector<Hit> merge_hits(std::vector<Hit> hits);

} // namespace cordon::mask
