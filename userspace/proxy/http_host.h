// The Host of a plain HTTP/1.x request head, read before anything is forwarded: strict capture
// (capture.mode: all-tls) catches port-80 connections to any address and decides by the name.
// Parsed as leniently as the most lenient server would (leading empty lines, bare LF, runs of
// spaces, space before a header's colon), so no spelling of a request reads differently here
// than at the server; what a server might read two ways is Ambiguous.
#pragma once
#include <string>
#include <string_view>

namespace cordon::proxy {

enum class HttpHeadStatus {
	NeedMore, // no end of the head yet, and still under the limit
	Complete, // see HttpHead
	NotHttp,  // the first line is no HTTP/1.x request line
	// HTTP/2 with prior knowledge (h2c): the host is in HPACK-coded HEADERS, not read here.
	Http2,
	TooLarge, // no end of the head within `limit` bytes
	// Names that disagree (two Host headers, or an absolute-form target naming another host), or
	// a folded header line: a server may read either way, so the head cannot be judged.
	Ambiguous,
};

struct HttpHead {
	std::string host;     // lowercased, port, brackets and a trailing dot removed; "" when none
	bool upgrade = false; // an Upgrade header: what follows is another protocol, unread
};

inline constexpr size_t kMaxHttpHead = 16 << 10;

HttpHeadStatus parse_http_head(std::string_view data, HttpHead &head, size_t limit = kMaxHttpHead);

} // namespace cordon::proxy
