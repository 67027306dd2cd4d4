// libFuzzer target for the ClientHello parser. Besides crashes, leaks and undefined behaviour under
// the sanitizers, it checks what cordond relies on: a verdict, once given, is the verdict for every
// longer buffer; a Complete hello is self-consistent and its SNI a valid lower-case DNS name; the
// records around the handshake message do not change what it says.
#include "tls/client_hello.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

using namespace cordon::tls;

namespace {

void check(bool ok, const char *what)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n", what);
		std::abort();
	}
}

bool same(const ClientHello &a, const ClientHello &b)
{
	return a.sni == b.sni && a.alpn == b.alpn && a.supported_versions == b.supported_versions &&
	       a.legacy_version == b.legacy_version && a.has_ech == b.has_ech;
}

bool is_grease(uint16_t v)
{
	return (v >> 8) == (v & 0xff) && (v & 0x0f) == 0x0a;
}

// Written apart from the parser's own check, as an oracle: lower-case letters, digits, '-', '_';
// dot-separated labels of 1-63; at most 253 in all; the last label not a number.
bool valid_sni(std::string_view s)
{
	if (s.empty() || s.size() > 253)
		return false;
	size_t start = 0;
	while (true) {
		size_t dot = s.find('.', start);
		std::string_view label =
		    s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
		if (label.empty() || label.size() > 63)
			return false;
		for (char c : label)
			if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
				return false;
		if (dot == std::string_view::npos) {
			bool numeric = label.find_first_not_of("0123456789") == std::string_view::npos;
			bool hex = label.substr(0, 2) == "0x" &&
			           label.find_first_not_of("0123456789abcdef", 2) == std::string_view::npos;
			return !numeric && !hex;
		}
		start = dot + 1;
	}
}

// The journal gets `error`: it must be printable text of our making, never the client's bytes.
bool printable(const std::string &s)
{
	for (unsigned char c : s)
		if (c < 0x20 || c > 0x7e) {
			// The only non-ASCII we write is the UTF-8 section sign of "§".
			if (c != 0xc2 && c != 0xa7)
				return false;
		}
	return true;
}

HelloParse parse(const uint8_t *data, size_t size)
{
	return parse_client_hello(std::span<const uint8_t>(data, size));
}

// The handshake bytes carried by the first `bytes` bytes of records.
std::vector<uint8_t> payload(const uint8_t *data, size_t bytes)
{
	std::vector<uint8_t> out;
	for (size_t at = 0; at + 5 <= bytes;) {
		size_t length = size_t{data[at + 3]} << 8 | data[at + 4];
		out.insert(out.end(), data + at + 5, data + at + 5 + length);
		at += 5 + length;
	}
	return out;
}

std::vector<uint8_t> frame(const std::vector<uint8_t> &message, size_t chunk)
{
	std::vector<uint8_t> out;
	for (size_t at = 0; at < message.size(); at += chunk) {
		size_t n = std::min(chunk, message.size() - at);
		out.insert(out.end(), {22, 3, 3, static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)});
		out.insert(out.end(), message.begin() + at, message.begin() + at + n);
	}
	return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const HelloParse full = parse(data, size);
	const bool verdict = full.status != HelloStatus::NeedMore;

	check(full.error.empty() == (full.status == HelloStatus::NeedMore || full.status == HelloStatus::Complete),
	      "an error exactly for NotTls, Malformed and TooLarge");
	check(printable(full.error), "error is printable text");
	check(size < kMaxClientHelloBytes || verdict, "kMaxClientHelloBytes of input always gives a verdict");
	if (size > 0 && data[0] != 22)
		check(full.status == HelloStatus::NotTls, "anything not starting with a handshake record is NotTls");
	if (full.status != HelloStatus::Complete) {
		const ClientHello empty;
		check(same(full.hello, empty) && full.hello.bytes == 0, "hello left empty unless Complete");
	}

	if (full.status == HelloStatus::Complete) {
		const ClientHello &h = full.hello;
		check(h.bytes <= size && h.bytes <= kMaxClientHelloBytes, "bytes within the input and the bound");
		check(h.bytes >= 5 + 4 + 2 + 32 + 1 + 2 + 2 + 1 + 1, "bytes cover at least a minimal hello");
		check(h.sni.empty() || valid_sni(h.sni), "SNI is a valid lower-case DNS name");
		for (const auto &p : h.alpn)
			check(!p.empty() && p.size() <= 255, "ALPN names are 1-255 bytes");
		for (uint16_t v : h.supported_versions)
			check(!is_grease(v), "GREASE removed from supported_versions");
		check(h.supported_versions.size() <= 127, "at most 127 versions");
		check(h.legacy_version >> 8 == 3, "legacy_version is 3.x");

		// Exactly the hello's bytes give the same hello; what follows them is never read.
		HelloParse exact = parse(data, h.bytes);
		check(exact.status == HelloStatus::Complete && same(exact.hello, h) && exact.hello.bytes == h.bytes,
		      "the hello's own bytes parse alike");

		// The same handshake message in records of another size says the same thing, or is TooLarge
		// when the extra record headers push it past the bound.
		std::vector<uint8_t> message = payload(data, h.bytes);
		size_t chunk = 1 + (size_t{data[h.bytes - 1]} * 131 + h.bytes) % 600;
		std::vector<uint8_t> framed = frame(message, chunk);
		HelloParse again = parse(framed.data(), framed.size());
		if (framed.size() <= kMaxClientHelloBytes)
			check(again.status == HelloStatus::Complete && same(again.hello, h) &&
			          again.hello.bytes == framed.size(),
			      "re-framed hello parses alike");
		else
			check(again.status == HelloStatus::TooLarge, "re-framed hello past the bound is TooLarge");
	}

	// Prefixes: NeedMore until the verdict, then the same verdict. Every prefix of a small input,
	// a spread of them for a large one (all of them would make each run quadratic).
	const size_t step = size <= 512 ? 1 : size / 61 + 1;
	for (size_t n = 0; n < size; n += step) {
		HelloParse r = parse(data, n);
		if (r.status == HelloStatus::NeedMore) {
			check(r.error.empty(), "NeedMore has no error");
			continue;
		}
		check(verdict && r.status == full.status, "a verdict on a prefix holds for the whole input");
		check(r.error == full.error, "and gives the same reason");
		if (r.status == HelloStatus::Complete)
			check(same(r.hello, full.hello) && r.hello.bytes == full.hello.bytes, "and the same hello");
	}
	if (full.status == HelloStatus::Complete && full.hello.bytes > 0) {
		HelloParse r = parse(data, full.hello.bytes - 1);
		check(r.status == HelloStatus::NeedMore, "one byte short of a Complete hello is NeedMore");
	}
	return 0;
}
