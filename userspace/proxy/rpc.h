// What travels inside an HTTP exchange with Cursor: which RPC protocol it is, Connect/gRPC
// envelopes, compression, and the protocol-correct way to refuse. Pure functions and small
// incremental codecs: everything here is unit-tested and fuzzed on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace cordon::rpc {

enum class Protocol {
	ConnectUnary,  // application/proto or application/json on /pkg.Service/Method
	ConnectStream, // application/connect+proto | +json: enveloped both ways
	Grpc,          // application/grpc[+proto]: enveloped, status in trailers
	GrpcWeb,       // application/grpc-web[+proto]: enveloped, trailers as a 0x80 frame
	Sse,           // text/event-stream response (Cursor's HTTP/1.1 fallback carries envelopes)
	Rest,          // JSON over plain HTTP (Cloud Agents, Admin API, /auth/...)
	Other,         // anything else: passed through as bytes
};
const char *to_string(Protocol p);

// "/aiserver.v1.ChatService/StreamUnifiedChatWithTools" -> service + method; empty when the
// path is not of that form.
struct RpcName {
	std::string service; // "aiserver.v1.ChatService"
	std::string method;  // "StreamUnifiedChatWithTools"
	bool empty() const { return service.empty(); }
	std::string full() const { return service + "/" + method; }
};
RpcName parse_rpc_path(std::string_view path);

// The request path as the upstream will route it: %XX of unreserved characters decoded (so
// "/a.B/%4dethod" is seen as "/a.B/Method"); encoded '/', '.', controls and dot segments are
// refused, because they let a path look like one thing to cordon and another to the server.
Result<std::string> normalize_path(std::string_view path);
// From the request line and headers (names lower-case); `path` normalized.
Protocol classify_request(std::string_view method, std::string_view path, std::string_view content_type);
// What the response body is, given what was asked: an RPC answer in the matching content type, or
// plain bytes (error pages, downloads, text event streams) that pass through as they come.
Protocol classify_response(Protocol request_protocol, int status, std::string_view content_type);
bool is_enveloped(Protocol p);

// Envelope flags (Connect; gRPC uses the compression bit and grpc-web the trailer bit).
inline constexpr uint8_t kFlagCompressed = 0x01;
inline constexpr uint8_t kFlagEndStream = 0x02; // Connect end-of-stream JSON
inline constexpr uint8_t kFlagGrpcWebTrailer = 0x80;

struct Envelope {
	uint8_t flags = 0;
	std::string payload; // as on the wire (still compressed when flags say so)
};

// Splits a byte stream into envelopes. A header or payload may arrive in any number of pieces;
// a length beyond `max_message` is an error (and stays an error).
class EnvelopeDecoder {
public:
	explicit EnvelopeDecoder(size_t max_message) : max_message_(max_message) {}
	// Appends complete envelopes to `out`.
	Status feed(std::span<const uint8_t> data, std::vector<Envelope> &out);
	// True when no partial envelope is pending (a clean place for the stream to end).
	bool at_boundary() const { return pending_.empty(); }
	size_t pending_bytes() const { return pending_.size(); }

private:
	size_t max_message_;
	std::string pending_;
	bool failed_ = false;
};

std::string encode_envelope(uint8_t flags, std::string_view payload);

// gzip with a hard output limit: a "gzip bomb" fails instead of filling memory.
Result<std::string> gunzip(std::string_view compressed, size_t max_output);
Result<std::string> gzip(std::string_view plain);

// Refusals the client's library understands, naming the reason.
// Connect end-of-stream (flag 0x02) carrying {"error":{"code":...,"message":...}}.
std::string connect_end_stream_error(std::string_view code, std::string_view message);
// Connect unary error body; pair it with connect_http_status(code).
std::string connect_unary_error_body(std::string_view code, std::string_view message);
int connect_http_status(std::string_view code);
// gRPC status number for a Connect code name ("permission_denied" -> 7).
int grpc_status_code(std::string_view code);
// gRPC-web trailer frame (0x80) with grpc-status and grpc-message.
std::string grpc_web_trailer_frame(int status, std::string_view message);
// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
std::string grpc_percent_encode(std::string_view message);
// A JSON string literal (quotes included), for building error bodies.
std::string json_quote(std::string_view s);

} // namespace cordon::rpc
