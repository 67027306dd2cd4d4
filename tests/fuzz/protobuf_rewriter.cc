// libFuzzer target for rewrite_protobuf. Besides crashes, leaks, hangs and undefined behaviour
// under the sanitizers, it checks the promises masking relies on:
// - a rewriter that changes nothing gets the input back byte for byte;
// - what the rewriter accepts, libprotobuf parses too (as fields without a schema);
// - a growing rewriter (its length varints cross 127) and an emptying one leave wire data that
//   libprotobuf parses and that the rewriter walks again unchanged.
#include <google/protobuf/unknown_field_set.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mask/carriers.h"

using namespace cordon::mask;

namespace {

void check(bool ok, const char *what, std::string_view detail = {})
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n%.2000s\n", what, std::string(detail).c_str());
		std::abort();
	}
}

bool wire_valid(std::string_view bytes)
{
	google::protobuf::UnknownFieldSet set;
	return set.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

bool too_deep(const cordon::Error &e)
{
	return e.message().find("nested deeper") != std::string::npos;
}

// Walks the output again with an identity rewriter: it must be accepted and come back unchanged.
void walks_again(const std::string &out, const char *what)
{
	check(wire_valid(out), what, out);
	auto again = rewrite_protobuf(out, [](std::string_view t) { return std::string(t); });
	// A rewritten text may itself read as a message, one level deeper than the bound allows.
	check(again.ok() ? *again == out : too_deep(again.error()), what, out);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view in(reinterpret_cast<const char *>(data), size);

	size_t calls = 0;
	RewriteStats stats;
	auto same = rewrite_protobuf(
	    in,
	    [&](std::string_view t) {
		    calls++;
		    return std::string(t);
	    },
	    &stats);
	if (!same.ok())
		return 0;
	check(*same == in, "identity gives the input back");
	check(stats.texts == calls && stats.changed == 0, "identity stats");
	check(wire_valid(in), "accepts only what libprotobuf parses");

	// "{" first: a group tag, so a grown text never reads as a message.
	auto grown = rewrite_protobuf(
	    in, [](std::string_view t) { return "{" + std::string(t) + "\xc3\xa9" + std::string(130, 'x'); });
	// It explores no more than the identity walk did (a changed text is not decoded further), and
	// where it does (a message that is also text), a failure falls back to the text reading.
	check(grown.ok(), "a growing rewrite succeeds", grown.ok() ? "" : grown.error().message());
	walks_again(*grown, "grown output is wire format and walks again");

	auto emptied = rewrite_protobuf(in, [](std::string_view) { return std::string(); });
	check(emptied.ok(), "an emptying rewrite succeeds");
	walks_again(*emptied, "emptied output is wire format and walks again");
	return 0;
}
