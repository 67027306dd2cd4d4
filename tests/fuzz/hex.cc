// libFuzzer target for the tree's hex and percent decoding: the masking carriers' hex messages
// (BidiAppend's `data` is hex(AgentClientMessage): mask/carriers.cc's is_hex, unhex, to_hex), the
// message decoder's "data#decoded" (proxy/message_decoder.cc's unhex) and its "#hex" output
// (JsonWriter::hex), the shared hex_digit (common/utf8.h), and the request path's %XX
// (proxy/rpc.h's normalize_path). The hex helpers live in the two files' anonymous namespaces,
// so the files are compiled into this target itself (hex.mk lists neither).
//
// Besides crashes, leaks and undefined behaviour under the sanitizers, it checks round trips
// where the code has an encoder, and each decoder against an oracle written apart from it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mask/carriers.cc"
#include "proxy/message_decoder.cc"
#include "proxy/rpc.h"

namespace {

void check(bool ok, const char *what)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n", what);
		std::abort();
	}
}

int oracle_digit(char c)
{
	const std::string_view lower = "0123456789abcdef", upper = "0123456789ABCDEF";
	if (auto at = lower.find(c); at != std::string_view::npos)
		return static_cast<int>(at);
	if (auto at = upper.find(c); at != std::string_view::npos)
		return static_cast<int>(at);
	return -1;
}

std::string cased(std::string_view s, bool upper)
{
	std::string out(s);
	for (char &c : out)
		c = static_cast<char>(upper ? std::toupper(static_cast<unsigned char>(c))
		                            : std::tolower(static_cast<unsigned char>(c)));
	return out;
}

// The hex text's bytes, or nullopt unless it is non-empty hex of whole bytes.
std::optional<std::string> oracle_unhex(std::string_view s)
{
	if (s.empty() || s.size() % 2)
		return std::nullopt;
	std::string out;
	for (size_t i = 0; i < s.size(); i += 2) {
		const int hi = oracle_digit(s[i]), lo = oracle_digit(s[i + 1]);
		if (hi < 0 || lo < 0)
			return std::nullopt;
		out += static_cast<char>(hi * 16 + lo);
	}
	return out;
}

// normalize_path as documented: %XX decoded (but an encoded '?' or '#', which would end the path
// early); a malformed escape, an encoded '/', '.', '\' or control, or a dot segment after
// decoding is refused; the query is left as it is.
std::optional<std::string> oracle_normalize(std::string_view target)
{
	const size_t q = target.find('?');
	const std::string_view path = target.substr(0, q);
	const std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q);
	if (path.empty() || path[0] != '/')
		return std::nullopt;
	std::string out;
	for (size_t i = 0; i < path.size(); i++) {
		if (path[i] != '%') {
			out += path[i];
			continue;
		}
		if (i + 2 >= path.size())
			return std::nullopt;
		const int hi = oracle_digit(path[i + 1]), lo = oracle_digit(path[i + 2]);
		if (hi < 0 || lo < 0)
			return std::nullopt;
		const auto c = static_cast<unsigned char>(hi * 16 + lo);
		if (c == '/' || c == '.' || c == '\\' || c < 0x20)
			return std::nullopt;
		if (c == '?' || c == '#') // part of a segment, not a delimiter: left encoded
			out += path.substr(i, 3);
		else
			out += static_cast<char>(c);
		i += 2;
	}
	for (size_t start = 1; start <= out.size();) {
		size_t end = out.find('/', start);
		if (end == std::string::npos)
			end = out.size();
		const std::string_view segment = std::string_view(out).substr(start, end - start);
		if (segment == "." || segment == "..")
			return std::nullopt;
		start = end + 1;
	}
	return out + std::string(query);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view in(reinterpret_cast<const char *>(data), size);

	// hex_digit, against the oracle, for every byte.
	for (char c : in)
		check(cordon::hex_digit(c) == oracle_digit(c), "hex_digit agrees with the oracle");

	// The input as hex text: the carriers' and the decoder's decoding, and back.
	bool upper = false;
	const bool is_hex = cordon::mask::is_hex(in, upper);
	const auto expected = oracle_unhex(in);
	bool only_hex = true, has_upper = false, has_lower = false;
	for (char c : in) {
		only_hex = only_hex && oracle_digit(c) >= 0;
		has_upper = has_upper || (c >= 'A' && c <= 'F');
		has_lower = has_lower || (c >= 'a' && c <= 'f');
	}
	check(is_hex == only_hex, "is_hex: exactly the hex digits");
	if (is_hex)
		check(upper == (has_upper && !has_lower), "is_hex: upper for upper-case letters only");
	const std::string decoded = cordon::proxy::unhex(in);
	check(expected ? decoded == *expected : decoded.empty(), "the decoder's unhex agrees with the oracle");
	if (is_hex && in.size() % 2 == 0) {
		const std::string raw = cordon::mask::unhex(in);
		check(expected ? raw == *expected : in.empty() && raw.empty(),
		      "the carriers' unhex agrees with the oracle");
		// What a rewritten hex message is re-encoded with: the same text, in the case it came in.
		check(cordon::mask::to_hex(raw, upper) == cased(in, upper), "to_hex(unhex(s)) gives s back");
	}

	// The input as bytes: encoded, then decoded, in both cases.
	for (bool up : {false, true}) {
		const std::string text = cordon::mask::to_hex(in, up);
		check(text.size() == 2 * in.size(), "to_hex: two digits a byte");
		bool text_upper = false;
		check(cordon::mask::is_hex(text, text_upper), "to_hex gives hex");
		check(cordon::mask::unhex(text) == in, "unhex(to_hex(b)) gives b back (carriers)");
		check(in.empty() || cordon::proxy::unhex(text) == in, "unhex(to_hex(b)) gives b back (decoder)");
	}

	// The decoder's "#hex" output: lower-case hex of a prefix of whole bytes, the whole of the
	// shown bytes when there is room.
	const size_t max_bytes = size ? data[0] % 64 + (data[0] & 0x80 ? size : 0) : 0;
	const size_t limit = size ? 64 + 4 * size * (data[size - 1] & 3) : 256;
	cordon::proxy::JsonWriter w(limit);
	w.hex(in, max_bytes);
	const std::string json = w.take();
	check(json.size() >= 2 && json.front() == '"' && json.back() == '"', "#hex is a JSON string");
	const std::string_view digits = std::string_view(json).substr(1, json.size() - 2);
	check(digits.size() % 2 == 0 && digits.size() / 2 <= std::min(size, max_bytes),
	      "#hex: whole bytes, at most max");
	check(cased(digits, false) == digits, "#hex is lower case");
	check(cordon::mask::unhex(digits) == in.substr(0, digits.size() / 2), "#hex decodes to the bytes it shows");
	if (!w.truncated())
		check(digits.size() / 2 == std::min(size, max_bytes), "#hex shows every byte unless cut");

	// The input as a request target: %XX decoding against the oracle.
	const auto normalized = cordon::rpc::normalize_path(in);
	const auto oracle = oracle_normalize(in);
	check(normalized.ok() == oracle.has_value(), "normalize_path refuses exactly what the oracle does");
	if (normalized && oracle)
		check(*normalized == *oracle, "normalize_path decodes like the oracle");
	return 0;
}
