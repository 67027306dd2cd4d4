// Carrier rewriters: find every piece of text inside a message (JSON, protobuf, hex-encoded
// protobuf, server-sent events, a header value), hand it to a callback that may rewrite it (the
// secret scanner), and put the result back so the message stays valid for whoever reads it next.
//
// Two promises hold for every carrier:
// - A rewriter that changes nothing gives back the input byte for byte (original escapes,
//   varint encodings and line endings included), so untouched traffic is never re-encoded.
// - Whatever the rewriter returns, the output is as valid as the input was: lengths are
//   re-encoded, JSON strings re-escaped, text kept UTF-8 (a rewriter's invalid UTF-8 becomes
//   U+FFFD), header values kept free of control characters.
//
// Empty texts are not passed to the rewriter: there is nothing in them to mask. The functions that
// return a Result turn anything the rewriter throws (and running out of memory) into an error, so
// the caller blocks the message rather than sending it unmasked; rewrite_header_value cannot.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_set>

#include "common/result.h"

namespace google::protobuf {
class Descriptor;
class FieldDescriptor;
} // namespace google::protobuf

namespace cordon::mask {

// Rewrites one piece of text (decoded: JSON escapes resolved, protobuf bytes as-is). Returns the
// text unchanged when there is nothing to mask. It may change the length.
using TextRewriter = std::function<std::string(std::string_view text)>;
// The same, told where the text sits, so that the same field of successive messages can be
// followed (mask/text_stream.h). Paths join components with '.': protobuf field numbers
// ("2.25.1"), "hex" for a hex-encoded message, JSON object keys and "[]" for array elements
// ("messages.[].text"); a JSON key itself is at "<object>.{}".
using PathTextRewriter = std::function<std::string(std::string_view path, std::string_view text)>;

// `texts`: calls made to the rewriter. `changed`: texts whose rewritten form is in the output.
// Where a carrier tries two readings of the same bytes (see rewrite_protobuf), the rewriter may be
// called more than once for them, and only the reading kept counts as changed.
struct RewriteStats {
	size_t texts = 0;
	size_t changed = 0;
};

// Bounds: nesting beyond them is an error (the data could not be inspected), never a stack overflow.
inline constexpr int kMaxJsonDepth = 512;     // arrays and objects
inline constexpr int kMaxProtobufDepth = 100; // nested messages, hex levels included (protobuf's own limit)

// JSON (escape-aware): every string value AND every object key is decoded (\uXXXX incl.
// surrogate pairs, \n, ...), passed to `rewrite`, and re-encoded; numbers, literals and
// structure are left byte for byte; output stays valid JSON; unchanged input -> identical bytes.
// Not JSON (or not UTF-8 where JSON requires it) -> an error saying where.
//
// Details: RFC 8259 grammar, any value at the top, surrounding whitespace and one leading UTF-8 BOM
// kept. A lone surrogate escape (\ud800, which JavaScript's JSON.stringify writes for a cut emoji)
// reaches the rewriter as its 3-byte WTF-8 form and is written back as the same escape. A changed
// string is re-escaped minimally (", \, control characters), and with \uXXXX for all non-ASCII if
// the original spelled its non-ASCII characters that way. A rewritten key may duplicate another.
Result<std::string> rewrite_json(std::string_view json, const TextRewriter &rewrite, RewriteStats *stats = nullptr);
Result<std::string> rewrite_json_at(std::string_view json, const PathTextRewriter &rewrite,
                                    RewriteStats *stats = nullptr);

// Protobuf wire format without a schema: walks every field; a length-delimited field that parses
// completely as a plausible nested message is recursed into, otherwise if it is text (valid
// UTF-8) it is passed to `rewrite`; other bytes are left alone, unless they are a hex string
// (see below). Lengths are re-encoded; fields keep their order and numbers; unchanged input ->
// identical bytes. Malformed wire data -> an error. Depth-bounded.
// A length-delimited field whose text is an even-length hex string that decodes to a plausible
// protobuf message (BidiAppend's `data` = hex(AgentClientMessage)) is decoded, rewritten
// recursively, and re-encoded as hex of the same case.
//
// How a length-delimited field is read, in this order:
// 1. Hex of a plausible message: the hex text itself goes to `rewrite` first (a hex token may be
//    the secret); if that changes it, it is text. Otherwise decoded, rewritten, re-encoded
//    (upper case if the original had only upper-case letters, else lower case).
// 2. Plausible message ("plausible" = every tag, length and value in place to the last byte,
//    shortest varints, no wire types 3/4/6/7, no field number 0 or 19000-19999) whose bytes are
//    NOT text: a nested message, recursed into.
// 3. Plausible message whose bytes ARE text (UTF-8 whose only control characters are \t \n \r):
//    ambiguous. Short words parse as messages ("hi" = field 13, varint 105), but so does a real
//    message whose only field is a 32-126 byte string ("\n(" + 40 characters). Both readings are
//    rewritten. If neither changes, the bytes stay. If the message reading changes and its result
//    is still UTF-8 in which `rewrite` finds nothing left as text, it is kept: a reader taking the
//    field as a string and one taking it as a message both get valid data with nothing to mask.
//    Otherwise the text reading is kept when it changed (a secret straddling what would be a tag
//    is masked; the message reader loses), else the message reading (only it saw the secret, e.g.
//    in hex one level down; masking wins over a string reader's view of the new length bytes).
// 4. Not a message, UTF-8, no NUL, and few other control characters (ESC, as in terminal
//    output, is allowed; at most 1 in 16 bytes otherwise): text. This keeps packed repeated
//    scalars ([1, 2, 3] = "\x01\x02\x03", all control bytes) out of the rewriter.
// 5. Anything else (binary, non-UTF-8): left alone.
// Groups (wire types 3/4) are deprecated and not walked: at the top level they are an error (the
// message cannot be inspected); inside a field they make it "not a message" (rules 4/5 apply).
// Nesting deeper than kMaxProtobufDepth that still parses as a message is an error.
Result<std::string> rewrite_protobuf(std::string_view message, const TextRewriter &rewrite,
                                     RewriteStats *stats = nullptr);
// With paths, and with the message's type when it is known (Cursor's descriptors): a string
// field is text (or hex, rule 1) even when its bytes would parse as a message, and a message
// field that parses is a message. Everything else (bytes, packed numbers, a declared message
// that does not parse: a schema out of date) and fields the type does not know get the rules
// above.
struct ProtobufType {
	const google::protobuf::Descriptor *type = nullptr;
	// Fields declared `string` that the descriptor pool holds as bytes (proxy/message_decoder.h).
	const std::unordered_set<const google::protobuf::FieldDescriptor *> *strings = nullptr;
};
Result<std::string> rewrite_protobuf_at(std::string_view message, const PathTextRewriter &rewrite,
                                        RewriteStats *stats = nullptr, ProtobufType type = {});

// Server-sent events as text (lines "data: ...", "event: ..."): the value of each field passed
// to `rewrite`; line structure kept. For complete events only (the caller buffers partial ones).
//
// Details: lines end in \r\n, \n or \r, each kept as it was; the one optional space after the
// colon is kept and not passed. Comment lines (":...") are text too, and so are the names of
// fields other than data/event/id/retry (a line without a colon is all name). A rewritten value
// that contains line breaks becomes several lines for data and comments, and has them replaced
// by spaces elsewhere. Input that is not UTF-8 is an error: it is not SSE text (Cursor's
// HTTP/1.1 fallback labels binary Connect envelopes text/event-stream; those take the envelope
// path).
Result<std::string> rewrite_sse(std::string_view events, const TextRewriter &rewrite, RewriteStats *stats = nullptr);

// An HTTP header value (Authorization: Bearer ..., custom tokens).
//
// The whole value goes to `rewrite`. For "Basic <base64>" the decoded credentials ("user:pass";
// Cursor's API takes the key as the user name) go to `rewrite` first and are re-encoded the same
// way (padding kept or left out as it was). Control characters other than tab that the rewriter
// puts in are replaced by '?' so the value stays a valid field value (no header injection).
// The rewriter's exceptions pass through: there is no error channel here.
std::string rewrite_header_value(std::string_view value, const TextRewriter &rewrite);

} // namespace cordon::mask
