// Any intercepted message as readable JSON: field names where Cursor's shapes are known
// (proto/cursor, compiled into a descriptor set), field numbers where they are not. Used by
// `cordonctl watch`, the journal, and session recordings.
//
// The payload comes from a job that may be hostile: decoding never throws, never fails, bounds
// its recursion and its output, and always returns valid JSON.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>

#include "common/result.h"
#include "proxy/exchange.h"
#include "proxy/rpc.h"

namespace google::protobuf {
class Descriptor;
class FieldDescriptor;
} // namespace google::protobuf

namespace cordon::proxy {

// Bounds on what one decoded message can cost.
inline constexpr size_t kDecoderMaxOutput = 1 << 20; // bytes of JSON; past it: "#truncated": true
inline constexpr int kDecoderMaxDepth = 32;          // nested messages; deeper ones are shown as hex
inline constexpr size_t kDecoderMaxHexBytes = 4096;  // bytes shown as hex; "#length" gives the rest

// JSON shapes (keys starting with '#' are never proto field names):
//   known field            "name": value (proto field names; enum value names; 64-bit integers
//                          as numbers up to 2^53, else as strings; maps as objects;
//                          google.protobuf.Value/Struct/ListValue in their JSON form)
//   unknown field          "#<number>": value, decoded generically; repeated numbers -> arrays
//   binary bytes           {"#hex": "..."} (+ "#length": n when cut to kDecoderMaxHexBytes)
//   not a message at all   {"#raw_hex": "...", "#length": n}
//   output cut at the bound "#truncated": true in every object left open at the cut
//   BidiAppend's hex data  "data#decoded": {...} (the agent.v1.AgentClientMessage inside)
class MessageDecoder {
public:
	// Loads a FileDescriptorSet (protoc --include_imports). An empty decoder (no file) still
	// decodes generically by field number.
	static Result<std::unique_ptr<MessageDecoder>> load(const std::string &descriptor_set_path);
	static std::unique_ptr<MessageDecoder> generic_only();

	~MessageDecoder();
	MessageDecoder(const MessageDecoder &) = delete;
	MessageDecoder &operator=(const MessageDecoder &) = delete;

	// The message type of an RPC's request or response, e.g. ("aiserver.v1.ChatService",
	// "StreamUnifiedChatWithTools", Request) -> "aiserver.v1.StreamUnifiedChatRequestWithTools";
	// "" if unknown.
	std::string message_type(const rpc::RpcName &rpc, Direction direction) const;

	// A decoded payload as compact JSON. `json_codec`: the payload is already JSON (Connect's
	// +json codecs, REST, a Connect end-of-stream message): returned as is if it parses, else as
	// a JSON string. Protobuf: with a known type, field names and enum value names; fields the
	// descriptor does not know appear by number as "#<n>"; without a known type the whole message
	// is decoded generically.
	std::string to_json(const rpc::RpcName &rpc, Direction direction, std::string_view payload,
	                    bool json_codec) const;
	// The same as to_json_generic for a type name the descriptor set does not have, for bytes that
	// do not parse as that type, and for a message whose parse would cost protobuf more memory
	// than a bound (many tiny fields: its objects are far larger than their wire bytes).
	std::string to_json_typed(const std::string &full_type_name, std::string_view payload) const;
	// By field number only. A length-delimited field is shown as a nested message when it parses
	// as one completely and plausibly, else as text when it is UTF-8 text, else as hex. Text with
	// no control characters at all is taken as text first: short words parse as messages ("hi" is
	// field 13 = 105), while a real message nearly always has a tag or length byte below 0x20.
	std::string to_json_generic(std::string_view payload) const;

	// For walkers that read payloads by their schema (masking): the type of an RPC's message
	// (null if unknown), and the fields declared `string` (the pool holds every string field as
	// bytes, so that text that is not UTF-8 still decodes).
	const google::protobuf::Descriptor *descriptor(const rpc::RpcName &rpc, Direction direction) const;
	const std::unordered_set<const google::protobuf::FieldDescriptor *> *string_fields() const;

	// Plumbing of the implementation (message_decoder.cc).
	struct Schema;

private:
	explicit MessageDecoder(std::unique_ptr<Schema> schema);
	std::unique_ptr<Schema> schema_; // null: generic only
};

} // namespace cordon::proxy
