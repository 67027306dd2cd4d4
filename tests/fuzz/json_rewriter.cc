// libFuzzer target for rewrite_json. Besides crashes, leaks, hangs and undefined behaviour under
// the sanitizers, it checks the promises masking relies on:
// - a rewriter that changes nothing gets the input back byte for byte;
// - the rewriter accepts exactly what nlohmann::json accepts, except documents nested deeper than
//   kMaxJsonDepth (refused), lone surrogate escapes (which JavaScript writes) and numbers beyond a
//   double (both valid JSON grammar, both kept byte for byte);
// - a growing rewriter (quotes, backslashes, control characters, non-ASCII) and an emptying one
//   leave valid JSON, and reading the grown output again finds exactly the texts it wrote;
// - a rewriter returning bytes that are not UTF-8 still leaves valid JSON.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

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

// A lone surrogate reaches the rewriter as WTF-8: ED A0..BF xx.
bool has_surrogate(std::string_view s)
{
	for (size_t i = 0; i + 1 < s.size(); i++)
		if (static_cast<unsigned char>(s[i]) == 0xed && static_cast<unsigned char>(s[i + 1]) >= 0xa0 &&
		    static_cast<unsigned char>(s[i + 1]) <= 0xbf)
			return true;
	return false;
}

// Why nlohmann refuses a document: its first error. It refuses two things JSON allows and the
// rewriter keeps as they are: lone surrogate escapes and numbers beyond a double (1e400).
std::string nlohmann_error(std::string_view in)
{
	try {
		(void)nlohmann::json::parse(in);
		return {};
	} catch (const nlohmann::json::exception &e) {
		return e.what();
	}
}

std::string grow(std::string_view t)
{
	return "<\"\\\n\x01\x7f\xc3\xa9\xf0\x9f\x98\x80" + std::string(t) + "\xe2\x80\xa8/>";
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view in(reinterpret_cast<const char *>(data), size);

	std::vector<std::string> seen;
	RewriteStats stats;
	auto same = rewrite_json(
	    in,
	    [&](std::string_view t) {
		    seen.emplace_back(t);
		    return std::string(t);
	    },
	    &stats);
	// nlohmann's lexer takes a NUL byte for the end of the input; JSON has no place for one.
	const bool has_nul = in.find('\0') != std::string_view::npos;
	check(!has_nul || !same.ok(), "a raw NUL is never JSON");
	const bool accepted = !has_nul && nlohmann::json::accept(in);
	if (!same.ok()) {
		check(!accepted || same.error().message().find("nesting deeper") != std::string::npos,
		      "refuses only what nlohmann refuses, or what is too deep", same.error().message());
		return 0;
	}
	check(*same == in, "identity gives the input back");
	check(stats.texts == seen.size() && stats.changed == 0, "identity stats");
	if (!accepted) {
		bool lone = false;
		for (const std::string &s : seen)
			lone = lone || has_surrogate(s);
		const std::string why = nlohmann_error(in);
		check((lone && why.find("surrogate") != std::string::npos) ||
		          why.find("number overflow") != std::string::npos,
		      "accepts only what nlohmann accepts, or lone surrogates, or numbers beyond a double", why);
	}

	// Growing: valid, and the texts read back are exactly the ones written.
	std::vector<std::string> written;
	auto grown = rewrite_json(in, [&](std::string_view t) {
		written.push_back(grow(t));
		return written.back();
	});
	check(grown.ok(), "a growing rewrite succeeds");
	check(!accepted || nlohmann::json::accept(*grown), "grown output is JSON", *grown);
	std::vector<std::string> reread;
	auto again = rewrite_json(*grown, [&](std::string_view t) {
		reread.emplace_back(t);
		return std::string(t);
	});
	check(again.ok() && *again == *grown, "grown output reads back", *grown);
	check(reread == written, "grown output carries exactly the rewritten texts", *grown);

	// Emptying and garbage.
	auto emptied = rewrite_json(in, [](std::string_view) { return std::string(); });
	check(emptied.ok() && (!accepted || nlohmann::json::accept(*emptied)), "emptied output is JSON");
	auto garbage = rewrite_json(in, [](std::string_view t) { return "\xff\xc0\x80" + std::string(t) + "\xed"; });
	check(garbage.ok() && (!accepted || nlohmann::json::accept(*garbage)), "garbage-rewritten output is JSON");
	return 0;
}
