// Carrier rewriters (see carriers.h for what each promises). Every walker here is iterative or
// depth-bounded, touches each input byte a bounded number of times per nesting level, and
// splices: it copies the untouched stretch since the last change and appends only what changed,
// so unchanged input comes back as the very same bytes.
#include "mask/carriers.h"

#include <google/protobuf/descriptor.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <utility>
#include <vector>

#include "common/utf8.h"

namespace cordon::mask {

namespace {

// ---- text ----

// The code point of a sequence utf8_sequence() accepted.
uint32_t code_point(std::string_view s, size_t i, size_t n)
{
	static constexpr unsigned char kLead[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
	uint32_t cp = static_cast<unsigned char>(s[i]) & kLead[n];
	for (size_t k = 1; k < n; k++)
		cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
	return cp;
}

void append_utf8(std::string &out, uint32_t cp)
{
	if (cp < 0x80) {
		out += static_cast<char>(cp);
	} else if (cp < 0x800) {
		out += static_cast<char>(0xc0 | cp >> 6);
		out += static_cast<char>(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) { // surrogates too: WTF-8
		out += static_cast<char>(0xe0 | cp >> 12);
		out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
		out += static_cast<char>(0x80 | (cp & 0x3f));
	} else {
		out += static_cast<char>(0xf0 | cp >> 18);
		out += static_cast<char>(0x80 | (cp >> 12 & 0x3f));
		out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
		out += static_cast<char>(0x80 | (cp & 0x3f));
	}
}

constexpr std::string_view kReplacement = "\xef\xbf\xbd"; // U+FFFD

// Offset of the first byte that is not well-formed UTF-8, or npos.
size_t invalid_utf8_at(std::string_view s)
{
	for (size_t i = 0; i < s.size();) {
		// ASCII runs dominate real text: skip them without the sequence decoder.
		if (static_cast<unsigned char>(s[i]) < 0x80) {
			i++;
			continue;
		}
		const size_t n = utf8_sequence(s, i);
		if (n == 0)
			return i;
		i += n;
	}
	return std::string_view::npos;
}

// The rewriter's output made well-formed UTF-8: each byte that starts no valid sequence becomes
// U+FFFD. Text carriers promise their readers UTF-8 (proto3 refuses a string field without it).
std::string valid_utf8(std::string s)
{
	size_t bad = invalid_utf8_at(s);
	if (bad == std::string::npos)
		return s;
	std::string out(s, 0, bad);
	for (size_t i = bad; i < s.size();) {
		const size_t n = utf8_sequence(s, i);
		if (n == 0) {
			out += kReplacement;
			i++;
		} else {
			out.append(s, i, n);
			i += n;
		}
	}
	return out;
}

// What a span of bytes looks like as text.
struct TextShape {
	bool utf8 = true;
	size_t nul = 0;
	size_t esc = 0;
	size_t other_controls = 0; // C0 controls other than NUL, \t, \n, \r, ESC; and DEL
};

// Byte classes for shape_of: one table lookup per ASCII byte, no branches on the common path.
enum ByteClass : uint8_t { kPlain, kNul, kEsc, kOtherControl, kNonAscii };
constexpr std::array<uint8_t, 256> byte_classes()
{
	std::array<uint8_t, 256> t{};
	for (int c = 0; c < 256; c++) {
		if (c >= 0x80)
			t[c] = kNonAscii;
		else if (c == 0)
			t[c] = kNul;
		else if (c == 0x1b)
			t[c] = kEsc;
		else if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f)
			t[c] = kOtherControl;
		else
			t[c] = kPlain;
	}
	return t;
}
constexpr std::array<uint8_t, 256> kByteClass = byte_classes();

TextShape shape_of(std::string_view s)
{
	TextShape t;
	size_t counts[kNonAscii] = {};
	const auto *p = reinterpret_cast<const unsigned char *>(s.data());
	for (size_t i = 0; i < s.size();) {
		// Plain ASCII (kPlain is 0) eight bytes at a time: independent loads, no counting.
		if (i + 8 <= s.size() &&
		    (kByteClass[p[i]] | kByteClass[p[i + 1]] | kByteClass[p[i + 2]] | kByteClass[p[i + 3]] |
		     kByteClass[p[i + 4]] | kByteClass[p[i + 5]] | kByteClass[p[i + 6]] | kByteClass[p[i + 7]]) == 0) {
			i += 8;
			continue;
		}
		const uint8_t k = kByteClass[p[i]];
		if (k != kNonAscii) {
			counts[k]++;
			i++;
			continue;
		}
		const size_t n = utf8_sequence(s, i);
		if (n == 0) {
			t.utf8 = false;
			return t;
		}
		i += n;
	}
	t.nul = counts[kNul];
	t.esc = counts[kEsc];
	t.other_controls = counts[kOtherControl];
	return t;
}

// Text as a person writes it: UTF-8 whose only control characters are tab, newline, return.
bool plain_text(const TextShape &t)
{
	return t.utf8 && t.nul == 0 && t.esc == 0 && t.other_controls == 0;
}

// Text that may carry a few control characters (terminal output with ESC colour codes, a stray
// form feed) but is not packed numbers, which are mostly control bytes and often NUL.
bool loose_text(const TextShape &t, size_t size)
{
	return t.utf8 && t.nul == 0 && t.other_controls * 16 <= size;
}

// Calls the rewriter and keeps the count.
class Texts {
public:
	Texts(const PathTextRewriter &rewrite, RewriteStats &stats) : rewrite_(rewrite), stats_(&stats) {}

	std::string operator()(std::string_view text)
	{
		stats_->texts++;
		return rewrite_(path_, text);
	}
	void changed() { stats_->changed++; }
	RewriteStats &stats() { return *stats_; }

	// Where the walk is (see PathTextRewriter); pushed and popped by the walkers.
	size_t push(std::string_view component)
	{
		const size_t mark = path_.size();
		if (!path_.empty())
			path_ += '.';
		path_ += component;
		return mark;
	}
	void pop(size_t mark) { path_.resize(mark); }

private:
	friend class StatsScope;
	const PathTextRewriter &rewrite_;
	RewriteStats *stats_;
	std::string path_;
};

// Pushes a path component for the lifetime of the scope.
class PathScope {
public:
	PathScope(Texts &texts, std::string_view component) : texts_(texts), mark_(texts.push(component)) {}
	~PathScope() { texts_.pop(mark_); }
	PathScope(const PathScope &) = delete;
	PathScope &operator=(const PathScope &) = delete;

private:
	Texts &texts_;
	size_t mark_;
};

// Counts into `local` while it lives: for a reading that may be dropped.
class StatsScope {
public:
	StatsScope(Texts &texts, RewriteStats &local) : texts_(texts), outer_(std::exchange(texts.stats_, &local)) {}
	~StatsScope() { texts_.stats_ = outer_; }
	StatsScope(const StatsScope &) = delete;
	StatsScope &operator=(const StatsScope &) = delete;

private:
	Texts &texts_;
	RewriteStats *outer_;
};

Error error_at(const char *carrier, std::string_view what, size_t offset)
{
	return plain_error(std::string(carrier) + ": " + std::string(what) + " at offset " + std::to_string(offset));
}

// The callback is someone else's code: whatever it throws (bad_alloc included) becomes an error,
// so the caller blocks the message instead of sending it unmasked.
template <typename F> Result<std::string> guarded(const char *carrier, F &&body)
{
	try {
		return body();
	} catch (const std::exception &e) {
		return plain_error(std::string(carrier) + ": rewriting failed: " + e.what());
	} catch (...) {
		return plain_error(std::string(carrier) + ": rewriting failed");
	}
}

// ---- JSON ----

constexpr std::string_view kBom = "\xef\xbb\xbf";

void append_u_escape(std::string &out, uint32_t unit)
{
	static constexpr char kDigits[] = "0123456789abcdef";
	out += "\\u";
	for (int shift = 12; shift >= 0; shift -= 4)
		out += kDigits[unit >> shift & 15];
}

// A rewritten string as a JSON string literal. Minimal escaping, or \uXXXX for everything
// non-ASCII when `ascii` (the original was written that way). WTF-8 surrogates go back to the
// escapes they came from; bytes that are no UTF-8 at all become U+FFFD.
void append_json_string(std::string &out, std::string_view s, bool ascii)
{
	out += '"';
	for (size_t i = 0; i < s.size();) {
		const auto c = static_cast<unsigned char>(s[i]);
		if (c < 0x80) {
			switch (c) {
			case '"':
				out += "\\\"";
				break;
			case '\\':
				out += "\\\\";
				break;
			case '\b':
				out += "\\b";
				break;
			case '\f':
				out += "\\f";
				break;
			case '\n':
				out += "\\n";
				break;
			case '\r':
				out += "\\r";
				break;
			case '\t':
				out += "\\t";
				break;
			default:
				if (c < 0x20)
					append_u_escape(out, c);
				else
					out += static_cast<char>(c);
			}
			i++;
			continue;
		}
		const size_t n = utf8_sequence(s, i, true);
		if (n == 0) {
			if (ascii)
				append_u_escape(out, 0xfffd);
			else
				out += kReplacement;
			i++;
			continue;
		}
		const uint32_t cp = code_point(s, i, n);
		if (is_surrogate(cp)) {
			append_u_escape(out, cp);
		} else if (!ascii) {
			out.append(s, i, n);
		} else if (cp < 0x10000) {
			append_u_escape(out, cp);
		} else {
			append_u_escape(out, 0xd800 + ((cp - 0x10000) >> 10));
			append_u_escape(out, 0xdc00 + ((cp - 0x10000) & 0x3ff));
		}
		i += n;
	}
	out += '"';
}

// One pass over the document with an explicit stack (no recursion, so depth costs no C stack).
class JsonRewriter {
public:
	JsonRewriter(std::string_view in, Texts &texts) : in_(in), texts_(texts) {}

	Result<std::string> run()
	{
		if (in_.substr(0, kBom.size()) == kBom)
			pos_ = kBom.size();
		State state = State::Value;
		for (;;) {
			skip_whitespace();
			switch (state) {
			case State::Value:
				if (pos_ == in_.size())
					return fail(stack_.empty() ? "empty document"
					                           : "unexpected end, expected a value");
				switch (in_[pos_]) {
				case '{':
				case '[':
					if (stack_.size() >= static_cast<size_t>(kMaxJsonDepth))
						return fail("nesting deeper than " + std::to_string(kMaxJsonDepth) +
						            " levels");
					stack_.push_back(in_[pos_++]);
					marks_.push_back(texts_.push(stack_.back() == '[' ? "[]" : ""));
					skip_whitespace();
					if (pos_ < in_.size() && in_[pos_] == (stack_.back() == '{' ? '}' : ']')) {
						pos_++;
						close();
						state = State::AfterValue;
					} else {
						state = stack_.back() == '{' ? State::Key : State::Value;
					}
					continue;
				case '"':
					if (auto s = string(); !s)
						return s.error();
					break;
				case 't':
					if (auto s = literal("true"); !s)
						return s.error();
					break;
				case 'f':
					if (auto s = literal("false"); !s)
						return s.error();
					break;
				case 'n':
					if (auto s = literal("null"); !s)
						return s.error();
					break;
				default:
					if (auto s = number(); !s)
						return s.error();
				}
				state = State::AfterValue;
				continue;
			case State::Key:
				if (pos_ == in_.size() || in_[pos_] != '"')
					return fail("expected a string key");
				if (auto s = string(true); !s)
					return s.error();
				skip_whitespace();
				if (pos_ == in_.size() || in_[pos_] != ':')
					return fail("expected ':' after a key");
				pos_++;
				state = State::Value;
				continue;
			case State::AfterValue:
				if (stack_.empty()) {
					if (pos_ != in_.size())
						return fail("data after the document");
					return finish();
				}
				if (pos_ == in_.size())
					return fail("unexpected end, expected ',' or a closing bracket");
				if (in_[pos_] == ',') {
					pos_++;
					state = stack_.back() == '{' ? State::Key : State::Value;
					continue;
				}
				if (in_[pos_] != (stack_.back() == '{' ? '}' : ']'))
					return fail(stack_.back() == '{' ? "expected ',' or '}'"
					                                 : "expected ',' or ']'");
				pos_++;
				close();
				continue;
			}
		}
	}

private:
	enum class State { Value, Key, AfterValue };

	Error fail(std::string_view what) const { return error_at("json", what, pos_); }

	void close()
	{
		stack_.pop_back();
		texts_.pop(marks_.back());
		marks_.pop_back();
	}

	void skip_whitespace()
	{
		while (pos_ < in_.size() &&
		       (in_[pos_] == ' ' || in_[pos_] == '\t' || in_[pos_] == '\n' || in_[pos_] == '\r'))
			pos_++;
	}

	Status literal(std::string_view word)
	{
		if (in_.substr(pos_, word.size()) != word)
			return fail("invalid literal");
		pos_ += word.size();
		return {};
	}

	Status digits()
	{
		const size_t start = pos_;
		while (pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '9')
			pos_++;
		if (pos_ == start)
			return fail("expected a digit");
		return {};
	}

	// Checked, never rewritten: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
	Status number()
	{
		if (in_[pos_] == '-')
			pos_++;
		if (pos_ == in_.size() || in_[pos_] < '0' || in_[pos_] > '9')
			return fail("expected a value");
		if (in_[pos_] == '0')
			pos_++;
		else if (auto s = digits(); !s)
			return s;
		if (pos_ < in_.size() && in_[pos_] == '.') {
			pos_++;
			if (auto s = digits(); !s)
				return s;
		}
		if (pos_ < in_.size() && (in_[pos_] == 'e' || in_[pos_] == 'E')) {
			pos_++;
			if (pos_ < in_.size() && (in_[pos_] == '+' || in_[pos_] == '-'))
				pos_++;
			if (auto s = digits(); !s)
				return s;
		}
		return {};
	}

	// Four hex digits at pos_ (after "\u"), or -1.
	int32_t u_escape_at(size_t p) const
	{
		if (in_.size() - p < 4)
			return -1;
		int32_t v = 0;
		for (size_t k = 0; k < 4; k++) {
			const int d = hex_digit(in_[p + k]);
			if (d < 0)
				return -1;
			v = v << 4 | d;
		}
		return v;
	}

	// A string (value or key) at pos_: decoded, rewritten, and spliced back if it changed. A key
	// names the path of the value that follows it; keys themselves are at "<object>.{}".
	Status string(bool key = false)
	{
		const size_t start = pos_++;
		decoded_.clear();
		bool escaped = false, raw_non_ascii = false, escaped_non_ascii = false;
		for (;;) {
			// Plain bytes in bulk: the common case, and what keeps huge strings linear.
			const size_t run = pos_;
			while (pos_ < in_.size()) {
				const auto c = static_cast<unsigned char>(in_[pos_]);
				if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80)
					break;
				pos_++;
			}
			if (escaped)
				decoded_.append(in_, run, pos_ - run);
			if (pos_ == in_.size()) {
				pos_ = start;
				return fail("unterminated string");
			}
			const auto c = static_cast<unsigned char>(in_[pos_]);
			if (c == '"')
				break;
			if (c < 0x20)
				return fail("control character in a string");
			if (c >= 0x80) {
				const size_t n = utf8_sequence(in_, pos_);
				if (n == 0)
					return fail("invalid UTF-8 in a string");
				if (escaped)
					decoded_.append(in_, pos_, n);
				raw_non_ascii = true;
				pos_ += n;
				continue;
			}
			// A backslash: from here on the decoded text differs from the raw bytes.
			if (!escaped) {
				decoded_.assign(in_, start + 1, pos_ - start - 1);
				escaped = true;
			}
			if (pos_ + 1 == in_.size())
				return fail("unterminated escape");
			const char e = in_[pos_ + 1];
			static constexpr std::string_view kSimple = "\"\\/bfnrt", kMeaning = "\"\\/\b\f\n\r\t";
			if (const size_t k = kSimple.find(e); k != std::string_view::npos) {
				decoded_ += kMeaning[k];
				pos_ += 2;
				continue;
			}
			if (e != 'u')
				return fail("invalid escape");
			const int32_t unit = u_escape_at(pos_ + 2);
			if (unit < 0)
				return fail("invalid \\u escape");
			pos_ += 6;
			uint32_t cp = static_cast<uint32_t>(unit);
			if (cp >= 0xd800 && cp <= 0xdbff && in_.substr(pos_, 2) == "\\u") {
				const int32_t low = u_escape_at(pos_ + 2);
				if (low >= 0xdc00 && low <= 0xdfff) {
					cp = 0x10000 + ((cp - 0xd800) << 10) + (static_cast<uint32_t>(low) - 0xdc00);
					pos_ += 6;
				}
			}
			if (cp >= 0x80)
				escaped_non_ascii = true;
			append_utf8(decoded_, cp); // a lone surrogate stays one, as WTF-8
		}
		pos_++; // the closing quote
		const std::string_view text =
		    escaped ? std::string_view(decoded_) : in_.substr(start + 1, pos_ - start - 2);
		if (key) {
			// The object's path component becomes this key (for its value), after the key
			// itself was seen at "{}".
			texts_.pop(marks_.back());
			marks_.back() = texts_.push("{}");
			std::string key_text(text);
			Status st =
			    text.empty() ? Status{} : rewrite_string(start, text, escaped_non_ascii && !raw_non_ascii);
			texts_.pop(marks_.back());
			marks_.back() = texts_.push(key_text);
			return st;
		}
		if (text.empty())
			return {};
		return rewrite_string(start, text, escaped_non_ascii && !raw_non_ascii);
	}

	Status rewrite_string(size_t start, std::string_view text, bool escape_non_ascii)
	{
		std::string rewritten = texts_(text);
		if (rewritten == text)
			return {};
		texts_.changed();
		out_.append(in_, copied_, start - copied_);
		append_json_string(out_, rewritten, escape_non_ascii);
		copied_ = pos_;
		return {};
	}

	Result<std::string> finish()
	{
		if (copied_ == 0)
			return std::string(in_);
		out_.append(in_, copied_, std::string_view::npos);
		return std::move(out_);
	}

	std::string_view in_;
	Texts &texts_;
	size_t pos_ = 0;
	size_t copied_ = 0; // in_[0, copied_) is accounted for in out_
	std::string out_;
	std::string decoded_;
	std::vector<char> stack_;   // '{' or '['
	std::vector<size_t> marks_; // the path before each level
};

// ---- protobuf ----

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

struct WireField {
	uint32_t number = 0;
	uint8_t type = 0;
	size_t payload = 0;   // offset of a length-delimited payload (after its length)
	size_t length = 0;    // its length
	size_t length_at = 0; // offset of the length varint
};

// `strict`: only the shortest encoding, as every protobuf encoder writes it; a nested span that
// uses another one is more likely text or binary than a message.
bool read_varint(std::string_view s, size_t &pos, uint64_t &value, bool strict)
{
	value = 0;
	for (int i = 0; i < 10; i++) {
		if (pos == s.size())
			return false;
		const auto b = static_cast<uint8_t>(s[pos++]);
		if (i == 9 && b > 1)
			return false; // more than 64 bits
		value |= uint64_t{b & 0x7fu} << (7 * i);
		if (!(b & 0x80))
			return !(strict && i > 0 && b == 0);
	}
	return false;
}

void append_varint(std::string &out, uint64_t v)
{
	while (v >= 0x80) {
		out += static_cast<char>(v | 0x80);
		v >>= 7;
	}
	out += static_cast<char>(v);
}

// Reads the field at `pos` and moves past it. Null on success, else what is wrong.
// `strict` also wants the field plausible inside a nested message: shortest varints, no field
// numbers from the range protobuf reserves (19000-19999).
const char *read_field(std::string_view s, size_t &pos, bool strict, WireField &f)
{
	uint64_t tag;
	if (!read_varint(s, pos, tag, strict) || tag > UINT32_MAX)
		return "invalid tag";
	f.number = static_cast<uint32_t>(tag >> 3);
	f.type = static_cast<uint8_t>(tag & 7);
	if (f.number == 0 || (strict && f.number >= 19000 && f.number <= 19999))
		return "invalid field number";
	uint64_t value;
	switch (f.type) {
	case 0:
		if (!read_varint(s, pos, value, strict))
			return "truncated or overlong varint";
		return nullptr;
	case 1:
	case 5: {
		const size_t width = f.type == 1 ? 8 : 4;
		if (s.size() - pos < width)
			return "truncated fixed-width value";
		pos += width;
		return nullptr;
	}
	case 2:
		f.length_at = pos;
		if (!read_varint(s, pos, value, strict))
			return "invalid length";
		if (value > s.size() - pos)
			return "length past the end";
		f.payload = pos;
		f.length = static_cast<size_t>(value);
		pos += f.length;
		return nullptr;
	case 3:
	case 4:
		return "group (wire type 3/4, not supported)";
	default:
		return "invalid wire type";
	}
}

// Whether the bytes are, to the last byte, a plausible non-empty message.
bool plausible_message(std::string_view s)
{
	if (s.empty())
		return false;
	WireField f;
	for (size_t pos = 0; pos < s.size();)
		if (read_field(s, pos, true, f))
			return false;
	return true;
}

bool is_hex(std::string_view s, bool &upper)
{
	bool has_upper = false, has_lower = false;
	for (char c : s) {
		if (c >= 'a' && c <= 'f')
			has_lower = true;
		else if (c >= 'A' && c <= 'F')
			has_upper = true;
		else if (c < '0' || c > '9')
			return false;
	}
	upper = has_upper && !has_lower;
	return true;
}

std::string unhex(std::string_view s)
{
	std::string out;
	out.reserve(s.size() / 2);
	for (size_t i = 0; i + 1 < s.size(); i += 2)
		out += static_cast<char>(hex_digit(s[i]) << 4 | hex_digit(s[i + 1]));
	return out;
}

std::string to_hex(std::string_view bytes, bool upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	std::string out;
	out.reserve(bytes.size() * 2);
	for (unsigned char c : bytes) {
		out += digits[c >> 4];
		out += digits[c & 15];
	}
	return out;
}

// nullopt: unchanged (the caller keeps the original bytes).
using Rewritten = std::optional<std::string>;

// GCC 12 at -O1 (the sanitizer build) reports the empty std::optional<std::string> returned
// below as "may be used uninitialized" (a known false positive of -Wmaybe-uninitialized with
// optional); -O2 and clang do not.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

class ProtobufRewriter {
public:
	ProtobufRewriter(Texts &texts, const std::unordered_set<const FieldDescriptor *> *strings)
	    : texts_(texts), strings_(strings)
	{}

	// The fields of a whole message at `depth` (0: the top, parsed leniently and with errors that
	// say where; deeper: already known to be plausible). `type`, when known, says what each field
	// is, which settles what the wire format leaves ambiguous.
	Result<Rewritten> message(std::string_view bytes, int depth, const Descriptor *type = nullptr)
	{
		const bool top = depth == 0;
		std::string out;
		size_t copied = 0;
		for (size_t pos = 0; pos < bytes.size();) {
			if (top)
				top_field_ = pos;
			const size_t start = pos;
			WireField f;
			if (const char *what = read_field(bytes, pos, !top, f))
				return plain_error(std::string("protobuf: ") + what + " in the field at offset " +
				                   std::to_string(start));
			if (f.type != 2)
				continue;
			const FieldDescriptor *field =
			    type ? type->FindFieldByNumber(static_cast<int>(f.number)) : nullptr;
			char number[16];
			std::snprintf(number, sizeof(number), "%u", f.number);
			const PathScope at(texts_, number);
			auto r = field ? typed_field(bytes.substr(f.payload, f.length), depth, field)
			               : length_delimited(bytes.substr(f.payload, f.length), depth);
			if (!r)
				return r.error();
			if (!r->has_value())
				continue;
			if (copied == 0)
				out.reserve(bytes.size() + (**r).size());
			out.append(bytes, copied, f.length_at - copied); // everything up to the length: the tag too
			append_varint(out, (**r).size());
			out += **r;
			copied = f.payload + f.length;
		}
		if (copied == 0)
			return Rewritten{};
		out.append(bytes, copied, std::string_view::npos);
		return Rewritten{std::move(out)};
	}

private:
	Error too_deep() const
	{
		return plain_error("protobuf: messages nested deeper than " + std::to_string(kMaxProtobufDepth) +
		                   " levels, in the field at offset " + std::to_string(top_field_));
	}

	Result<Rewritten> nested(std::string_view bytes, int depth, const Descriptor *type = nullptr)
	{
		if (depth + 1 > kMaxProtobufDepth)
			return too_deep();
		return message(bytes, depth + 1, type);
	}

	// A field the schema knows. A string is text (or hex of a message, rule 1), never a message;
	// a message field that parses is a message; everything else (bytes, packed numbers, a
	// declared message that does not parse: a schema out of date) gets the wire-format rules.
	Result<Rewritten> typed_field(std::string_view bytes, int depth, const FieldDescriptor *field)
	{
		const bool declared_string =
		    field->type() == FieldDescriptor::TYPE_STRING || (strings_ && strings_->count(field));
		switch (declared_string ? FieldDescriptor::TYPE_STRING : field->type()) {
		case FieldDescriptor::TYPE_MESSAGE:
			if (plausible_message(bytes))
				return nested(bytes, depth, field->message_type());
			return length_delimited(bytes, depth);
		case FieldDescriptor::TYPE_STRING: {
			if (bytes.empty())
				return Rewritten{};
			if (auto hex = hex_message(bytes, depth))
				return std::move(*hex);
			std::string rewritten = texts_(bytes);
			if (rewritten == bytes)
				return Rewritten{};
			return changed_text(std::move(rewritten));
		}
		default:
			// Bytes; packed numbers; or a wire type the schema does not expect (a field Cursor
			// would skip as unknown, but that still leaves the host): the wire-format rules.
			return length_delimited(bytes, depth);
		}
	}

	// Rule 1: hex text of a plausible message. nullopt when the bytes are not that.
	std::optional<Result<Rewritten>> hex_message(std::string_view bytes, int depth)
	{
		bool upper = false;
		if (bytes.size() % 2 != 0 || !is_hex(bytes, upper))
			return std::nullopt;
		const std::string raw = unhex(bytes);
		if (!plausible_message(raw))
			return std::nullopt;
		std::string as_text = texts_(bytes);
		if (as_text != bytes)
			return Result<Rewritten>(changed_text(std::move(as_text)));
		const PathScope at(texts_, "hex");
		auto inner = nested(raw, depth);
		if (!inner || !inner->has_value())
			return inner;
		return Result<Rewritten>(Rewritten{to_hex(**inner, upper)});
	}

	// Text that went to the rewriter and came back different.
	Rewritten changed_text(std::string rewritten)
	{
		texts_.changed();
		return Rewritten{valid_utf8(std::move(rewritten))};
	}

	// The payload of a length-delimited field of a message at `depth` (the order is carriers.h's).
	Result<Rewritten> length_delimited(std::string_view bytes, int depth)
	{
		if (bytes.empty())
			return Rewritten{};
		if (auto hex = hex_message(bytes, depth))
			return std::move(*hex);

		const TextShape shape = shape_of(bytes);
		const bool text = plain_text(shape);
		if (plausible_message(bytes)) {
			if (!text)
				return nested(bytes, depth);
			if (depth + 1 <= kMaxProtobufDepth)
				return ambiguous(bytes, depth);
		}
		if (!text && !loose_text(shape, bytes.size()))
			return Rewritten{}; // binary: not ours to judge
		std::string rewritten = texts_(bytes);
		if (rewritten == bytes)
			return Rewritten{};
		return changed_text(std::move(rewritten));
	}

	// Bytes that read both as text and as a message (see carriers.h, rule 3). Both readings are
	// rewritten: the text scan sees secrets that straddle what would be tags, the message reading
	// sees secrets the text scan cannot (in hex one level down).
	Result<Rewritten> ambiguous(std::string_view bytes, int depth)
	{
		std::string as_text = texts_(bytes);
		const bool text_changed = as_text != bytes;

		RewriteStats reading; // counted as changed only if this reading is the one kept
		Result<Rewritten> as_message = Rewritten{};
		{
			const StatsScope scope(texts_, reading);
			as_message = message(bytes, depth + 1);
		}
		texts_.stats().texts += reading.texts;
		// Too deep to read as a message: it is text then.
		const bool message_changed = as_message.ok() && as_message->has_value();
		if (!text_changed && !message_changed)
			return Rewritten{};
		if (message_changed) {
			const std::string &m = **as_message;
			// Kept if whoever reads the field as a string gets UTF-8 with nothing left to mask, or
			// if the text reading found nothing: then only this reading saw the secret.
			if (!text_changed || (invalid_utf8_at(m) == std::string::npos && texts_(m) == m)) {
				texts_.stats().changed += reading.changed;
				return as_message;
			}
		}
		return changed_text(std::move(as_text));
	}

	Texts &texts_;
	const std::unordered_set<const FieldDescriptor *> *strings_;
	size_t top_field_ = 0;
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// ---- server-sent events ----

bool known_sse_field(std::string_view name)
{
	return name == "data" || name == "event" || name == "id" || name == "retry";
}

// Where the line starting at `pos` ends (its terminator not included), and the terminator.
size_t line_end(std::string_view s, size_t pos, std::string_view &terminator)
{
	const size_t end = s.find_first_of("\r\n", pos);
	if (end == std::string_view::npos) {
		terminator = {};
		return s.size();
	}
	terminator = s.substr(end, s[end] == '\r' && end + 1 < s.size() && s[end + 1] == '\n' ? 2 : 1);
	return end;
}

// The pieces of a rewritten value between its line breaks.
std::vector<std::string_view> split_lines(std::string_view s)
{
	std::vector<std::string_view> pieces;
	size_t pos = 0;
	for (;;) {
		std::string_view terminator;
		const size_t end = line_end(s, pos, terminator);
		pieces.push_back(s.substr(pos, end - pos));
		if (terminator.empty())
			return pieces;
		pos = end + terminator.size();
	}
}

std::string without_line_breaks(std::string s)
{
	for (char &c : s)
		if (c == '\r' || c == '\n')
			c = ' ';
	return s;
}

class SseRewriter {
public:
	SseRewriter(std::string_view in, Texts &texts) : in_(in), texts_(texts) {}

	Result<std::string> run()
	{
		if (const size_t bad = invalid_utf8_at(in_); bad != std::string_view::npos)
			return error_at("sse", "invalid UTF-8 (not event-stream text)", bad);
		size_t pos = in_.substr(0, kBom.size()) == kBom ? kBom.size() : 0;
		while (pos < in_.size()) {
			std::string_view terminator;
			const size_t end = line_end(in_, pos, terminator);
			line(pos, end, terminator);
			pos = end + terminator.size();
		}
		if (copied_ == 0)
			return std::string(in_);
		out_.append(in_, copied_, std::string_view::npos);
		return std::move(out_);
	}

private:
	// Rewritten text, or nullopt when unchanged.
	std::optional<std::string> rewrite(std::string_view text)
	{
		if (text.empty())
			return std::nullopt;
		std::string r = texts_(text);
		if (r == text)
			return std::nullopt;
		texts_.changed();
		return valid_utf8(std::move(r));
	}

	void line(size_t start, size_t end, std::string_view terminator)
	{
		const std::string_view l = in_.substr(start, end - start);
		if (l.empty())
			return; // dispatches the event
		const size_t colon = l.find(':');
		const std::string_view name = l.substr(0, colon);
		std::optional<std::string> new_name;
		if (!known_sse_field(name))
			if ((new_name = rewrite(name)))
				*new_name = without_line_breaks(std::move(*new_name));
		std::optional<std::string> new_value;
		size_t value_at = l.size();
		if (colon != std::string_view::npos) {
			value_at = colon + 1;
			if (value_at < l.size() && l[value_at] == ' ')
				value_at++;
			new_value = rewrite(l.substr(value_at));
		}
		if (!new_name && !new_value)
			return;

		out_.append(in_, copied_, start - copied_);
		copied_ = end; // the terminator is copied with what follows
		// The name (perhaps rewritten), then the colon and the optional space as they were.
		std::string prefix = new_name ? *new_name : std::string(name);
		if (colon != std::string_view::npos)
			prefix += l.substr(colon, value_at - colon);
		if (!new_value) {
			out_ += prefix;
			out_ += l.substr(value_at);
			return;
		}
		if (name != "data" && !name.empty()) {
			out_ += prefix;
			out_ += without_line_breaks(std::move(*new_value));
			return;
		}
		// Data and comments may span lines: each piece on a line of its own with the same prefix.
		// A data reader joins them with "\n" again.
		const std::string_view separator = terminator.empty() ? std::string_view("\n") : terminator;
		const std::vector<std::string_view> pieces = split_lines(*new_value);
		for (size_t i = 0; i < pieces.size(); i++) {
			if (i > 0)
				out_ += separator;
			out_ += prefix;
			out_ += pieces[i];
		}
	}

	std::string_view in_;
	Texts &texts_;
	size_t copied_ = 0;
	std::string out_;
};

// ---- header values ----

bool starts_with_ignoring_case(std::string_view s, std::string_view prefix)
{
	if (s.size() < prefix.size())
		return false;
	for (size_t i = 0; i < prefix.size(); i++) {
		char c = s[i];
		if (c >= 'A' && c <= 'Z')
			c = static_cast<char>(c - 'A' + 'a');
		if (c != prefix[i])
			return false;
	}
	return true;
}

constexpr std::string_view kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Standard base64 with or without padding; nullopt if it is not that. `padded`: whether a
// re-encoding should pad (it did, or its length is what a padding encoder writes).
std::optional<std::string> from_base64(std::string_view s, bool &padded)
{
	padded = s.size() % 4 == 0;
	if (!padded && !s.empty() && s.back() == '=')
		return std::nullopt;
	for (int i = 0; i < 2 && !s.empty() && s.back() == '='; i++)
		s.remove_suffix(1);
	if (s.empty() || s.size() % 4 == 1)
		return std::nullopt;
	std::string out;
	uint32_t bits = 0;
	int count = 0;
	for (char c : s) {
		const size_t v = kBase64.find(c);
		if (v == std::string_view::npos)
			return std::nullopt;
		bits = bits << 6 | static_cast<uint32_t>(v);
		count += 6;
		if (count >= 8) {
			count -= 8;
			out += static_cast<char>(bits >> count & 0xff);
		}
	}
	return out;
}

std::string to_base64(std::string_view bytes, bool padded)
{
	std::string out;
	size_t i = 0;
	for (; i + 3 <= bytes.size(); i += 3) {
		const uint32_t v = static_cast<unsigned char>(bytes[i]) << 16 |
		                   static_cast<unsigned char>(bytes[i + 1]) << 8 |
		                   static_cast<unsigned char>(bytes[i + 2]);
		for (int shift = 18; shift >= 0; shift -= 6)
			out += kBase64[v >> shift & 63];
	}
	const size_t rest = bytes.size() - i;
	if (rest > 0) {
		uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
		if (rest == 2)
			v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
		out += kBase64[v >> 18 & 63];
		out += kBase64[v >> 12 & 63];
		if (rest == 2)
			out += kBase64[v >> 6 & 63];
		if (padded)
			out.append(3 - rest, '=');
	}
	return out;
}

// A field value may hold tab and visible bytes (obs-text included), nothing else.
std::string field_value_safe(std::string s)
{
	for (char &c : s) {
		const auto u = static_cast<unsigned char>(c);
		if ((u < 0x20 && u != '\t') || u == 0x7f)
			c = '?';
	}
	return s;
}

} // namespace

namespace {
PathTextRewriter ignoring_path(const TextRewriter &rewrite)
{
	return [&rewrite](std::string_view, std::string_view text) { return rewrite(text); };
}
} // namespace

Result<std::string> rewrite_json(std::string_view json, const TextRewriter &rewrite, RewriteStats *stats)
{
	return rewrite_json_at(json, ignoring_path(rewrite), stats);
}

Result<std::string> rewrite_json_at(std::string_view json, const PathTextRewriter &rewrite, RewriteStats *stats)
{
	RewriteStats unused;
	Texts texts(rewrite, stats ? *stats : unused);
	return guarded("json", [&] { return JsonRewriter(json, texts).run(); });
}

Result<std::string> rewrite_protobuf(std::string_view message, const TextRewriter &rewrite, RewriteStats *stats)
{
	return rewrite_protobuf_at(message, ignoring_path(rewrite), stats);
}

Result<std::string> rewrite_protobuf_at(std::string_view message, const PathTextRewriter &rewrite, RewriteStats *stats,
                                        ProtobufType type)
{
	RewriteStats unused;
	Texts texts(rewrite, stats ? *stats : unused);
	return guarded("protobuf", [&]() -> Result<std::string> {
		ProtobufRewriter walker(texts, type.strings);
		auto r = walker.message(message, 0, type.type);
		if (!r)
			return r.error();
		if (!r->has_value())
			return std::string(message);
		return std::move(**r);
	});
}

Result<std::string> rewrite_sse(std::string_view events, const TextRewriter &rewrite, RewriteStats *stats)
{
	RewriteStats unused;
	const PathTextRewriter at = ignoring_path(rewrite);
	Texts texts(at, stats ? *stats : unused);
	return guarded("sse", [&] { return SseRewriter(events, texts).run(); });
}

std::string rewrite_header_value(std::string_view value, const TextRewriter &rewrite)
{
	std::string current(value);
	// "Basic <credentials>": the secret is inside the base64.
	if (starts_with_ignoring_case(value, "basic") && value.size() > 5 && (value[5] == ' ' || value[5] == '\t')) {
		size_t begin = 5;
		while (begin < value.size() && (value[begin] == ' ' || value[begin] == '\t'))
			begin++;
		size_t end = value.size();
		while (end > begin && (value[end - 1] == ' ' || value[end - 1] == '\t'))
			end--;
		bool padded = false;
		const auto credentials = from_base64(value.substr(begin, end - begin), padded);
		if (credentials && plain_text(shape_of(*credentials))) {
			const std::string rewritten = rewrite(*credentials);
			if (rewritten != *credentials)
				current = std::string(value.substr(0, begin)) + to_base64(rewritten, padded) +
				          std::string(value.substr(end));
		}
	}
	std::string rewritten = rewrite(current);
	if (rewritten == current)
		return current;
	return field_value_safe(std::move(rewritten));
}

} // namespace cordon::mask
