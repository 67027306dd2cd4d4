#include "proxy/rpc.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace cordon::rpc {
namespace {

std::string lower(std::string_view s)
{
	std::string out(s);
	std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
	return out;
}

// The media type without parameters ("application/json; charset=utf-8" -> "application/json").
std::string media_type(std::string_view content_type)
{
	auto semi = content_type.find(';');
	std::string_view t = content_type.substr(0, semi);
	while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back())))
		t.remove_suffix(1);
	while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front())))
		t.remove_prefix(1);
	return lower(t);
}

bool starts_with(std::string_view s, std::string_view prefix)
{
	return s.substr(0, prefix.size()) == prefix;
}

} // namespace

const char *to_string(Protocol p)
{
	switch (p) {
	case Protocol::ConnectUnary:
		return "connect_unary";
	case Protocol::ConnectStream:
		return "connect_stream";
	case Protocol::Grpc:
		return "grpc";
	case Protocol::GrpcWeb:
		return "grpc_web";
	case Protocol::Sse:
		return "sse";
	case Protocol::Rest:
		return "rest";
	case Protocol::Other:
		return "other";
	}
	return "other";
}

RpcName parse_rpc_path(std::string_view path)
{
	auto query = path.find('?');
	path = path.substr(0, query);
	if (path.size() < 4 || path.front() != '/')
		return {};
	path.remove_prefix(1);
	auto slash = path.find('/');
	if (slash == std::string_view::npos || slash == 0 || slash + 1 >= path.size())
		return {};
	std::string_view service = path.substr(0, slash), method = path.substr(slash + 1);
	if (method.find('/') != std::string_view::npos || service.find('.') == std::string_view::npos)
		return {};
	auto ok = [](std::string_view s) {
		return std::all_of(s.begin(), s.end(), [](char c) {
			return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_';
		});
	};
	if (!ok(service) || !ok(method))
		return {};
	return RpcName{std::string(service), std::string(method)};
}

Result<std::string> normalize_path(std::string_view path)
{
	std::string_view query;
	if (auto q = path.find('?'); q != std::string_view::npos) {
		query = path.substr(q);
		path = path.substr(0, q);
	}
	if (path.empty() || path.front() != '/')
		return plain_error("request target '" + std::string(path.substr(0, 64)) +
		                   "' is not an origin-form path");
	std::string out;
	for (size_t i = 0; i < path.size(); i++) {
		if (path[i] != '%') {
			out.push_back(path[i]);
			continue;
		}
		auto hex = [](char c) -> int {
			if (c >= '0' && c <= '9')
				return c - '0';
			c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
			return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		};
		if (i + 2 >= path.size() || hex(path[i + 1]) < 0 || hex(path[i + 2]) < 0)
			return plain_error("malformed percent-encoding in the request path");
		const char c = static_cast<char>(hex(path[i + 1]) * 16 + hex(path[i + 2]));
		// An encoded separator or dot can make a server route elsewhere than it looks.
		if (c == '/' || c == '.' || c == '\\' || static_cast<unsigned char>(c) < 0x20)
			return plain_error("encoded '/', '.' or control characters in the request path");
		// An encoded '?' or '#' is part of a segment, not a delimiter: decoded, it would end the
		// path early here (the RPC name read from before it) while the server routes on all of it.
		// Found by fuzzing (tests/fuzz/corpus/rpc_envelope/crash_path_encoded_question_mark.bin).
		if (c == '?' || c == '#')
			out.append(path.substr(i, 3));
		else
			out.push_back(c);
		i += 2;
	}
	for (size_t seg = 0; seg < out.size();) {
		size_t end = out.find('/', seg + 1);
		std::string_view part =
		    std::string_view(out).substr(seg + 1, end == std::string::npos ? std::string::npos : end - seg - 1);
		if (part == "." || part == "..")
			return plain_error("dot segments in the request path");
		if (end == std::string::npos)
			break;
		seg = end;
	}
	return out + std::string(query);
}

Protocol classify_request(std::string_view method, std::string_view path, std::string_view content_type)
{
	const std::string type = media_type(content_type);
	if (starts_with(type, "application/connect+"))
		return Protocol::ConnectStream;
	if (type == "application/grpc" || starts_with(type, "application/grpc+"))
		return Protocol::Grpc;
	// grpc-web-text (base64) is not decoded: treated as opaque.
	if (starts_with(type, "application/grpc-web") && type.find("text") == std::string::npos)
		return Protocol::GrpcWeb;
	const bool rpc_path = !parse_rpc_path(path).empty();
	const bool body_method = method == "POST" || method == "PUT" || method == "PATCH";
	// A protobuf body is one message whatever the path; so is any body posted to an RPC path, so
	// that an odd content type cannot slip it past the message engine.
	if (body_method && (type == "application/proto" || rpc_path))
		return Protocol::ConnectUnary;
	if (type == "application/json")
		return Protocol::Rest;
	if (type.empty() && (method == "GET" || method == "HEAD" || method == "DELETE"))
		return Protocol::Rest;
	return Protocol::Other;
}

Protocol classify_response(Protocol request_protocol, int status, std::string_view content_type)
{
	const std::string type = media_type(content_type);
	// Cursor's HTTP/1.1 fallback labels Connect envelopes text/event-stream; a real text SSE
	// stream (after a non-Connect request) is just bytes.
	if (type == "text/event-stream")
		return request_protocol == Protocol::ConnectStream ? Protocol::Sse : Protocol::Other;
	switch (request_protocol) {
	case Protocol::ConnectStream:
		// An error page from a load balancer is not an envelope stream.
		return status == 200 && starts_with(type, "application/connect+") ? request_protocol : Protocol::Other;
	case Protocol::Grpc:
		return status == 200 && (type == "application/grpc" || starts_with(type, "application/grpc+"))
		           ? request_protocol
		           : Protocol::Other;
	case Protocol::GrpcWeb:
		return status == 200 && starts_with(type, "application/grpc-web") &&
		               type.find("text") == std::string::npos
		           ? request_protocol
		           : Protocol::Other;
	case Protocol::ConnectUnary:
		return request_protocol; // success and error bodies alike are one message
	case Protocol::Rest:
		// Held (and inspected) when it is JSON; downloads and other bodies stream through.
		return type == "application/json" ? Protocol::Rest : Protocol::Other;
	default:
		return Protocol::Other;
	}
}

bool is_enveloped(Protocol p)
{
	return p == Protocol::ConnectStream || p == Protocol::Grpc || p == Protocol::GrpcWeb || p == Protocol::Sse;
}

Status EnvelopeDecoder::feed(std::span<const uint8_t> data, std::vector<Envelope> &out)
{
	if (failed_)
		return plain_error("envelope stream already failed");
	pending_.append(reinterpret_cast<const char *>(data.data()), data.size());
	size_t pos = 0;
	while (pending_.size() - pos >= 5) {
		const auto *p = reinterpret_cast<const uint8_t *>(pending_.data() + pos);
		const uint32_t length = (uint32_t{p[1]} << 24) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 8) | p[4];
		if (length > max_message_) {
			failed_ = true;
			return plain_error("envelope of " + std::to_string(length) + " bytes exceeds the " +
			                   std::to_string(max_message_) + "-byte message limit");
		}
		if (pending_.size() - pos - 5 < length)
			break;
		out.push_back(Envelope{p[0], pending_.substr(pos + 5, length)});
		pos += 5 + length;
	}
	pending_.erase(0, pos);
	return {};
}

std::string encode_envelope(uint8_t flags, std::string_view payload)
{
	std::string out;
	out.reserve(5 + payload.size());
	const auto n = static_cast<uint32_t>(payload.size());
	out.push_back(static_cast<char>(flags));
	out.push_back(static_cast<char>(n >> 24));
	out.push_back(static_cast<char>(n >> 16));
	out.push_back(static_cast<char>(n >> 8));
	out.push_back(static_cast<char>(n));
	out.append(payload);
	return out;
}

Result<std::string> gunzip(std::string_view compressed, size_t max_output)
{
	// Past 1 MiB, more than 200:1 is a bomb, not data: text and code compress ~5-20x, and each
	// inflated megabyte costs the shared event loop a millisecond or two.
	constexpr size_t kRatioFreeBytes = 1 << 20;
	constexpr size_t kMaxRatio = 200;
	z_stream zs{};
	// 16 + MAX_WBITS: gzip framing only (Connect and HTTP content-encoding "gzip").
	if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
		return plain_error("zlib inflateInit2 failed");
	std::string out;
	zs.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(compressed.data()));
	zs.avail_in = static_cast<uInt>(compressed.size());
	char chunk[16384];
	int rc = Z_OK;
	while (rc != Z_STREAM_END) {
		zs.next_out = reinterpret_cast<Bytef *>(chunk);
		zs.avail_out = sizeof(chunk);
		rc = inflate(&zs, Z_NO_FLUSH);
		if (rc != Z_OK && rc != Z_STREAM_END) {
			inflateEnd(&zs);
			return plain_error(std::string("corrupt gzip data: ") + (zs.msg ? zs.msg : "inflate failed"));
		}
		const size_t produced = sizeof(chunk) - zs.avail_out;
		if (out.size() + produced > max_output) {
			inflateEnd(&zs);
			return plain_error("gzip data expands beyond the " + std::to_string(max_output) +
			                   "-byte limit (a decompression bomb?)");
		}
		if (out.size() + produced > kRatioFreeBytes && out.size() + produced > kMaxRatio * compressed.size()) {
			inflateEnd(&zs);
			return plain_error("gzip data expands beyond 200 times its size (a decompression bomb?)");
		}
		out.append(chunk, produced);
		if (rc == Z_OK && zs.avail_in == 0 && produced == 0) {
			inflateEnd(&zs);
			return plain_error("truncated gzip data");
		}
	}
	const bool trailing = zs.avail_in != 0;
	inflateEnd(&zs);
	if (trailing)
		return plain_error("trailing bytes after gzip data");
	return out;
}

Result<std::string> gzip(std::string_view plain)
{
	z_stream zs{};
	if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return plain_error("zlib deflateInit2 failed");
	std::string out(deflateBound(&zs, static_cast<uLong>(plain.size())), '\0');
	zs.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(plain.data()));
	zs.avail_in = static_cast<uInt>(plain.size());
	zs.next_out = reinterpret_cast<Bytef *>(out.data());
	zs.avail_out = static_cast<uInt>(out.size());
	const int rc = deflate(&zs, Z_FINISH);
	const size_t produced = out.size() - zs.avail_out;
	deflateEnd(&zs);
	if (rc != Z_STREAM_END)
		return plain_error("zlib deflate failed");
	out.resize(produced);
	return out;
}

std::string json_quote(std::string_view s)
{
	std::string out = "\"";
	for (unsigned char c : s) {
		switch (c) {
		case '"':
			out += "\\\"";
			break;
		case '\\':
			out += "\\\\";
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
			if (c < 0x20) {
				char buf[8];
				std::snprintf(buf, sizeof(buf), "\\u%04x", c);
				out += buf;
			} else {
				out.push_back(static_cast<char>(c));
			}
		}
	}
	return out + "\"";
}

std::string connect_unary_error_body(std::string_view code, std::string_view message)
{
	return "{\"code\":" + json_quote(code) + ",\"message\":" + json_quote(message) + "}";
}

std::string connect_end_stream_error(std::string_view code, std::string_view message)
{
	return encode_envelope(kFlagEndStream, "{\"error\":" + connect_unary_error_body(code, message) + "}");
}

int connect_http_status(std::string_view code)
{
	// connectrpc.com/docs/protocol#error-codes
	if (code == "canceled")
		return 499;
	if (code == "invalid_argument" || code == "failed_precondition" || code == "out_of_range")
		return 400;
	if (code == "deadline_exceeded")
		return 504;
	if (code == "not_found")
		return 404;
	if (code == "already_exists" || code == "aborted")
		return 409;
	if (code == "permission_denied")
		return 403;
	if (code == "resource_exhausted")
		return 429;
	if (code == "unimplemented")
		return 501;
	if (code == "unavailable")
		return 503;
	if (code == "unauthenticated")
		return 401;
	return 500;
}

int grpc_status_code(std::string_view code)
{
	static const char *const names[] = {
	    "ok",        "canceled",       "unknown",           "invalid_argument",   "deadline_exceeded",
	    "not_found", "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
	    "aborted",   "out_of_range",   "unimplemented",     "internal",           "unavailable",
	    "data_loss", "unauthenticated"};
	for (int i = 0; i < static_cast<int>(std::size(names)); i++)
		if (code == names[i])
			return i;
	return 2; // unknown
}

std::string grpc_percent_encode(std::string_view message)
{
	std::string out;
	for (unsigned char c : message) {
		if (c >= 0x20 && c <= 0x7e && c != '%') {
			out.push_back(static_cast<char>(c));
		} else {
			char buf[4];
			std::snprintf(buf, sizeof(buf), "%%%02X", c);
			out += buf;
		}
	}
	return out;
}

std::string grpc_web_trailer_frame(int status, std::string_view message)
{
	std::string block =
	    "grpc-status: " + std::to_string(status) + "\r\ngrpc-message: " + grpc_percent_encode(message) + "\r\n";
	return encode_envelope(kFlagGrpcWebTrailer, block);
}

} // namespace cordon::rpc
