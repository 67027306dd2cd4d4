// The Host of a plain HTTP/1.x request head, read before anything is forwarded: strict capture
// (capture.mode: all-tls) catches port-80 connections to any address and decides by the name.
#pragma once
#include <string>
#include <string_view>

namespace cordon::proxy {

enum class HttpHeadStatus {
	NeedMore, // no end of the head yet, and still under the limit
	Complete, // `host` holds the Host header's name (lowercased, port and brackets removed; "" if none)
	NotHttp,  // the first line is no HTTP/1.x request line
	// HTTP/2 with prior knowledge (h2c): the host is in HPACK-coded HEADERS, not read here.
	Http2,
	TooLarge, // no end of the head within `limit` bytes
	// Names that disagree (two Host headers, or an absolute-form target naming another host): a
	// server may follow either, so the head cannot be judged by one.
	Ambiguous,
};

inline constexpr size_t kMaxHttpHead = 16 << 10;

HttpHeadStatus parse_http_host(std::string_view data, std::string &host, size_t limit = kMaxHttpHead);

} // namespace cordon::proxy
