// Secret-masking rules in gitleaks' model (id, regex, keywords, entropy, allowlists) plus the
// direction they apply to, and the compiled, immutable set the scanners share.
//
// How a rule finds a secret:
//   1. vectorscan runs every rule's `regex` over the text at once and reports where matches END.
//      We do not ask it for start offsets: HS_FLAG_SOM_LEFTMOST makes some patterns uncompilable
//      and needs a SOM horizon in streaming mode, and RE2 has to run anyway for capture groups.
//   2. For each rule with hits, RE2 re-runs the same `regex` over a window reaching back the rule's
//      max width (vectorscan's hs_expression_info bound) from the first hit to the last, and finds
//      the match starting at every position there. That gives the exact match and its capture group
//      `secret_group`: the secret. RE2 reads bytes (Latin-1), as vectorscan does, so both agree on
//      widths; counted repeats over RE2's limit of 1000 are split for it into equivalent pieces.
//   3. The secret must pass the rule's gates: a keyword inside the match (when keywords are
//      given), Shannon entropy >= min_entropy, and no allowlist regex (the rule's or the global
//      ones) matching it.
// Overlapping or adjacent secrets merge into one finding that keeps the first rule's id (the
// earlier in the rule list when two start at the same offset: specific rules come first).
//
// A regex must be in both engines' subset (no lookaround, no backreferences, `$` only at the end),
// must not match the empty string, and must be bounded (at most 64 KiB long): the longest match is
// what a stream masker holds back.
//
// Block rules (PEM / OpenSSH private keys) are the one case where a secret is not bounded by
// its regex: `regex` finds the opening marker and `block_regex` (RE2, anchored at the marker's
// start, over at most `block_cap` bytes) how far the block reaches.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace cordon::mask {

enum class Direction : uint8_t { Request = 1, Response = 2, Both = 3 };
const char *to_string(Direction d);
inline bool applies(Direction rule, Direction scanned)
{
	return (static_cast<uint8_t>(rule) & static_cast<uint8_t>(scanned)) != 0;
}

struct RuleSpec {
	std::string id;                     // "aws-access-key-id", "github-pat", ... (stable, kebab-case)
	std::string description;            // what it catches
	std::string regex;                  // what vectorscan scans for (and RE2 confirms); must be bounded
	int secret_group = 0;               // capture group holding the secret (0 = whole match); confirmed with RE2
	std::vector<std::string> keywords;  // the match must contain one (case-insensitive); may be empty
	double min_entropy = 0;             // Shannon entropy (bits per byte) the secret must reach, 0 = none
	std::vector<std::string> allowlist; // RE2 regexes: a secret matching any (partially) is not a finding
	Direction direction = Direction::Both;

	// Block rules only (empty / 0 otherwise): private keys, whose secret is not bounded by a regex.
	// `regex` finds the opening marker; the secret starts where its secret_group starts. RE2 matches
	// `block_regex` anchored at the marker's start, over at most `block_cap` bytes: the secret ends
	// where that match ends. `block_end` (RE2) is the closing line: a block whose match does not end
	// with it is open, and is still a finding when it holds at least kMinOpenBlockBody bytes after the
	// marker, reaches the end of the data, or fills the cap. A block cut by the cap (or by an idle
	// flush) keeps masking the base64 body that follows it (continuation).
	std::string block_regex;
	std::string block_end;
	size_t block_cap = 0;
};

// An unclosed block (no END line) shorter than this after its opening marker is a mention of the
// marker, not a key (e.g. `if (s.starts_with("-----BEGIN RSA PRIVATE KEY-----"))`).
inline constexpr size_t kMinOpenBlockBody = 64;

struct Finding {
	std::string rule;
	size_t offset = 0, length = 0; // of the secret within the scanned text (never the secret itself)
};

struct Options {
	// {rule} -> rule id; the special value "same-length" masks with '*' of the secret's length.
	std::string replacement = "[MASKED:{rule}]";
	std::vector<std::string> global_allowlist; // RE2 regexes, applied to every rule's secrets
};

inline constexpr std::string_view kSameLength = "same-length";

// Shannon entropy of `s` in bits per byte (0 for the empty string).
double shannon_entropy(std::string_view s);

// What replaces a secret of `length` bytes found by `rule`.
std::string replacement(const Options &options, std::string_view rule, size_t length);

class RuleSet { // compiled once at policy load, immutable, shared between threads
public:
	static std::vector<RuleSpec> builtin();
	// Errors name the rule id and what is wrong (bad regex, unsupported by vectorscan, unbounded,
	// bad capture group, bad allowlist, duplicate id, ...). Defined in scanner.cc, next to the engine.
	static Result<std::shared_ptr<const RuleSet>> compile(std::vector<RuleSpec> rules, Options options);

	~RuleSet();
	RuleSet(const RuleSet &) = delete;
	RuleSet &operator=(const RuleSet &) = delete;

	// The same compiled rules with another replacement: no second compile (about a second).
	std::shared_ptr<const RuleSet> with_replacement(std::string replacement) const;

	const std::vector<RuleSpec> &rules() const { return rules_; }
	const Options &options() const { return options_; }
	// Longest match of any rule's `regex` (vectorscan's bound): the stream masker holds back this
	// many bytes so that a secret split across writes is still seen whole.
	size_t max_width() const { return max_width_; }
	// Largest block_cap: an open private-key block is held back up to this many bytes.
	size_t max_block() const { return max_block_; }
	// The most a StreamMasker ever holds back.
	size_t max_hold() const { return max_width_ + max_block_; }
	// Bytes of vectorscan stream state each StreamMasker carries.
	size_t stream_state_size() const;

	struct Compiled; // vectorscan databases and RE2 programs (scanner.cc)
	const Compiled &compiled() const { return *compiled_; }

private:
	RuleSet() = default;

	std::vector<RuleSpec> rules_;
	Options options_;
	size_t max_width_ = 0;
	size_t max_block_ = 0;
	std::shared_ptr<const Compiled> compiled_; // shared by with_replacement() copies
};

} // namespace cordon::mask
