// libFuzzer target for the strict-capture HTTP head parser (proxy/http_host.h). Besides crashes,
// leaks and undefined behaviour under the sanitizers (every parse reads from a buffer of exactly
// its size, so a read past the end is caught), it checks what capture relies on: a Complete head's
// host is in the documented form (lower case, no trailing dot); a verdict, once
// given on a prefix, is the verdict for every longer buffer; NeedMore never outlives the limit.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/http_host.h"

using namespace cordon::proxy;

namespace {

void check(bool ok, const char *what)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n", what);
		std::abort();
	}
}

// Parses a copy of exactly `n` bytes on the heap, so ASan sees any read past them.
HttpHeadStatus parse(const uint8_t *data, size_t n, HttpHead &head, size_t limit)
{
	std::unique_ptr<char[]> copy(new char[n ? n : 1]);
	if (n)
		std::memcpy(copy.get(), data, n);
	return parse_http_head(std::string_view(copy.get(), n), head, limit);
}

// The bytes left once the leading empty lines servers skip are gone.
size_t skipped(const uint8_t *data, size_t size)
{
	size_t i = 0;
	while (i < size && (data[i] == '\r' || data[i] == '\n'))
		i++;
	return i;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	// The first byte picks the limit: the default one, or a small one so TooLarge is reached.
	if (size == 0)
		return 0;
	const size_t limit = data[0] < 0x80 ? kMaxHttpHead : 1 + data[0] % 97;
	data++;
	size--;

	HttpHead full;
	const HttpHeadStatus status = parse(data, size, full, limit);
	const size_t lead = skipped(data, size);
	const size_t body = size - lead; // what the parser judges after the leading empty lines

	check(status != HttpHeadStatus::NeedMore || body < limit, "NeedMore only under the limit");
	if (status == HttpHeadStatus::Complete) {
		for (char c : full.host) {
			check(!(c >= 'A' && c <= 'Z'), "the host is lower case");
			check(c != '\n', "the host holds no line end");
		}
		check(full.host.empty() || full.host.back() != '.', "no trailing dot on the host");
		// Parsing is a function of the bytes: the same input gives the same head.
		HttpHead again;
		check(parse(data, size, again, limit) == status && again.host == full.host &&
		          again.upgrade == full.upgrade,
		      "parsing is deterministic");
	}
	if (status == HttpHeadStatus::Http2)
		check(body >= 16 && std::memcmp(data + lead, "PRI * HTTP/2.0\r\n", 16) == 0,
		      "Http2 only for the connection preface");

	// Prefixes: NeedMore until the verdict, then the same verdict (and for a Complete or
	// Ambiguous head, the same head: nothing after its end is read). Every prefix of a small
	// input, a spread of them for a large one.
	const size_t step = size <= 512 ? 1 : size / 61 + 1;
	for (size_t n = 0; n < size; n += step) {
		HttpHead head;
		const HttpHeadStatus r = parse(data, n, head, limit);
		if (r == HttpHeadStatus::NeedMore)
			continue;
		check(r == status, "a verdict on a prefix holds for the whole input");
		if (r == HttpHeadStatus::Complete)
			check(head.host == full.host && head.upgrade == full.upgrade, "and gives the same head");
	}
	return 0;
}
