#include "proxy/message_decoder.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/utf8.h"

namespace cordon::proxy {

namespace pb = google::protobuf;

// A nested message carried inside a field as bytes (or as their hex), worth one more level of
// decoding: BidiAppend carries the agent's client messages this way.
struct NestedPayload {
	const pb::FieldDescriptor *field;
	bool hex;
	const pb::Descriptor *type;
};

struct MessageDecoder::Schema {
	pb::DescriptorPool pool;
	std::unique_ptr<pb::DynamicMessageFactory> factory; // after pool: destroyed before it
	// The pool is built from a rewritten copy of the set (see rewrite_message): these remember what
	// the rewrite changed.
	std::unordered_set<const pb::Descriptor *> map_entries;
	std::unordered_set<const pb::FieldDescriptor *> string_fields;
	std::vector<NestedPayload> nested;
};

namespace {

constexpr uint64_t kMaxExactInteger = uint64_t{1} << 53; // beyond it a JSON number loses digits
constexpr size_t kMaxWireFields = size_t{1} << 17;       // generic field records alive at once
// What protobuf's parser may allocate for one message. Small fields cost it far more than their
// wire bytes (16 MiB of empty submessages take about 1 GB), so a payload that would pass
// this is decoded generically instead, within its own bounds.
constexpr size_t kMaxParseCost = size_t{64} << 20;
constexpr int kMaxParseDepth = 100; // protobuf's own recursion limit

// ---- text ----

enum class TextKind {
	Printable, // UTF-8 without any control character
	Text,      // UTF-8 whose only control characters are tab, newline, carriage return
	Utf8,      // UTF-8 with other control characters (NUL, ...): binary that happens to be UTF-8
	Binary,    // not UTF-8
};

TextKind classify(std::string_view s)
{
	bool whitespace = false, control = false;
	for (size_t i = 0; i < s.size();) {
		const size_t n = utf8_sequence(s, i);
		if (n == 0)
			return TextKind::Binary;
		const auto c = static_cast<unsigned char>(s[i]);
		if (c == '\t' || c == '\n' || c == '\r')
			whitespace = true;
		else if (c < 0x20 || c == 0x7f)
			control = true;
		i += n;
	}
	return control ? TextKind::Utf8 : whitespace ? TextKind::Text : TextKind::Printable;
}

bool is_text(TextKind k)
{
	return k == TextKind::Printable || k == TextKind::Text;
}

// Empty unless `s` is non-empty hex of whole bytes.
std::string unhex(std::string_view s)
{
	std::string out;
	if (s.empty() || s.size() % 2 != 0)
		return out;
	out.reserve(s.size() / 2);
	for (size_t i = 0; i < s.size(); i += 2) {
		const int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);
		if (hi < 0 || lo < 0)
			return {};
		out.push_back(static_cast<char>(hi << 4 | lo));
	}
	return out;
}

// ---- JSON output with a hard size bound ----

// Compact JSON into a string that never grows past `limit`. Every open container keeps room to be
// closed (with its "#truncated" marker), and one more value keeps room to be written, so that
// a key, once written, always gets its value and the text stays valid JSON whatever is cut.
class JsonWriter {
public:
	explicit JsonWriter(size_t limit) : limit_(limit) {}

	// Whether another member or element may start; false (and the output marked truncated) once
	// the bound is near. Callers check it before every key and every array element.
	bool fits()
	{
		if (!truncated_ && available() < kMinRoom)
			truncated_ = true;
		return !truncated_;
	}
	void cut() { truncated_ = true; }
	bool truncated() const { return truncated_; }

	void begin_object() { open('{', true); }
	void begin_array() { open('[', false); }
	void end_object()
	{
		if (truncated_) {
			if (!stack_.back().first)
				out_ += ',';
			out_ += "\"#truncated\":true";
		}
		close('}');
	}
	void end_array() { close(']'); }

	void key(std::string_view name)
	{
		if (stack_.empty() || !stack_.back().object)
			return;
		separate();
		quoted(name);
		out_ += ':';
		after_key_ = true;
	}
	void string(std::string_view utf8)
	{
		separate();
		quoted(utf8);
	}
	void hex(std::string_view bytes, size_t max_bytes)
	{
		static constexpr char digits[] = "0123456789abcdef";
		separate();
		out_ += '"';
		const size_t n = std::min(bytes.size(), max_bytes);
		for (size_t i = 0; i < n; i++) {
			if (out_.size() + 3 > budget()) {
				truncated_ = true;
				break;
			}
			const auto b = static_cast<unsigned char>(bytes[i]);
			out_ += digits[b >> 4];
			out_ += digits[b & 15];
		}
		out_ += '"';
	}
	// Integers beyond 2^53 as strings: a JSON reader would round them.
	void unsigned_number(uint64_t v)
	{
		separate();
		if (v > kMaxExactInteger)
			out_ += '"' + std::to_string(v) + '"';
		else
			out_ += std::to_string(v);
	}
	void signed_number(int64_t v)
	{
		separate();
		const uint64_t magnitude = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
		if (magnitude > kMaxExactInteger)
			out_ += '"' + std::to_string(v) + '"';
		else
			out_ += std::to_string(v);
	}
	template <typename Float> void real(Float v)
	{
		separate();
		if (std::isnan(v)) {
			out_ += "\"NaN\"";
		} else if (std::isinf(v)) {
			out_ += v > 0 ? "\"Infinity\"" : "\"-Infinity\"";
		} else {
			char buffer[64];
			const auto r = std::to_chars(buffer, buffer + sizeof buffer, v); // shortest round trip
			out_.append(buffer, r.ec == std::errc() ? r.ptr : buffer);
			if (r.ec != std::errc())
				out_ += '0';
		}
	}
	void boolean(bool v)
	{
		separate();
		out_ += v ? "true" : "false";
	}
	void null()
	{
		separate();
		out_ += "null";
	}

	std::string take()
	{
		while (!stack_.empty())
			stack_.back().object ? end_object() : end_array();
		return std::move(out_);
	}

private:
	struct Frame {
		bool object;
		bool first;
	};
	static constexpr size_t kCloseRoom = 24; // ,"#truncated":true}
	static constexpr size_t kValueRoom = 64; // the longest number, quotes, a separator
	static constexpr size_t kMinRoom = 32;

	// What may be written before only the closing of open containers (one more of them, and a
	// value in it) is left.
	size_t budget() const
	{
		const size_t reserve = (stack_.size() + 2) * kCloseRoom + kValueRoom;
		return limit_ > reserve ? limit_ - reserve : 0;
	}
	size_t available() const { return out_.size() < budget() ? budget() - out_.size() : 0; }

	void separate()
	{
		if (stack_.empty())
			return;
		Frame &top = stack_.back();
		if (top.object && after_key_) {
			after_key_ = false;
			return;
		}
		if (!top.first)
			out_ += ',';
		top.first = false;
	}
	void open(char c, bool object)
	{
		separate();
		out_ += c;
		stack_.push_back({object, true});
	}
	void close(char c)
	{
		if (stack_.empty())
			return;
		stack_.pop_back();
		after_key_ = false;
		out_ += c;
	}

	// A JSON string literal of `s`, cut at a character boundary when the bound is reached. Bytes
	// that are not UTF-8 become U+FFFD, so the output is valid whatever the caller passes.
	void quoted(std::string_view s)
	{
		static constexpr char digits[] = "0123456789abcdef";
		out_ += '"';
		const size_t end = budget();
		for (size_t i = 0; i < s.size();) {
			const size_t n = utf8_sequence(s, i);
			const auto c = static_cast<unsigned char>(s[i]);
			char escaped[8];
			std::string_view piece;
			if (n == 0) {
				piece = "\xef\xbf\xbd";
			} else if (c == '"' || c == '\\') {
				escaped[0] = '\\';
				escaped[1] = static_cast<char>(c);
				piece = std::string_view(escaped, 2);
			} else if (c < 0x20) {
				const char *named = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : nullptr;
				if (named) {
					piece = named;
				} else {
					const char u[6] = {'\\', 'u', '0', '0', digits[c >> 4], digits[c & 15]};
					std::copy(u, u + 6, escaped);
					piece = std::string_view(escaped, 6);
				}
			} else {
				piece = s.substr(i, n);
			}
			if (out_.size() + piece.size() + 1 > end) {
				truncated_ = true;
				break;
			}
			out_ += piece;
			i += n == 0 ? 1 : n;
		}
		out_ += '"';
	}

	size_t limit_;
	std::string out_;
	std::vector<Frame> stack_;
	bool after_key_ = false;
	bool truncated_ = false;
};

// ---- the protobuf wire format, without a schema ----

struct WireField {
	uint32_t number;
	uint8_t type;
	uint64_t value;         // varint, fixed64, fixed32
	std::string_view bytes; // length-delimited
};

// `strict`: only the shortest encoding, as every protobuf encoder writes it. A nested span that
// uses another one is more likely text or binary than a message.
bool read_varint(const uint8_t *&p, const uint8_t *end, uint64_t &value, bool strict)
{
	value = 0;
	for (int i = 0; i < 10; i++) {
		if (p == end)
			return false;
		const uint8_t b = *p++;
		if (i == 9 && b > 1)
			return false; // more than 64 bits
		value |= uint64_t{b & 0x7fu} << (7 * i);
		if (!(b & 0x80))
			return !(strict && i > 0 && b == 0);
	}
	return false;
}

uint64_t little_endian(const uint8_t *p, int bytes)
{
	uint64_t v = 0;
	for (int i = bytes - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

// Walks the fields of `bytes`, calling `on_field` for each until it returns false. False when the
// bytes are not a whole message: a bad tag, a wire type other than 0/1/2/5 (groups are long
// deprecated), a value past the end. `strict` also wants it plausible as a nested message:
// shortest varints, no field numbers from the range protobuf reserves (19000-19999).
template <typename OnField> bool walk(std::string_view bytes, bool strict, OnField &&on_field)
{
	const auto *p = reinterpret_cast<const uint8_t *>(bytes.data());
	const auto *end = p + bytes.size();
	while (p < end) {
		uint64_t tag;
		if (!read_varint(p, end, tag, strict) || tag > UINT32_MAX)
			return false;
		WireField f{static_cast<uint32_t>(tag >> 3), static_cast<uint8_t>(tag & 7), 0, {}};
		if (f.number == 0 || (strict && f.number >= 19000 && f.number <= 19999))
			return false;
		switch (f.type) {
		case 0:
			if (!read_varint(p, end, f.value, strict))
				return false;
			break;
		case 1:
			if (end - p < 8)
				return false;
			f.value = little_endian(p, 8);
			p += 8;
			break;
		case 5:
			if (end - p < 4)
				return false;
			f.value = little_endian(p, 4);
			p += 4;
			break;
		case 2: {
			uint64_t length;
			if (!read_varint(p, end, length, strict) || length > static_cast<uint64_t>(end - p))
				return false;
			f.bytes = std::string_view(reinterpret_cast<const char *>(p), length);
			p += length;
			break;
		}
		default:
			return false;
		}
		if (!on_field(f))
			return true;
	}
	return true;
}

bool is_message(std::string_view bytes, bool strict)
{
	return walk(bytes, strict, [](const WireField &) { return true; });
}

// The wire type protobuf expects for a field (a repeated scalar also takes 2: packed).
int wire_type(const pb::FieldDescriptor *f)
{
	switch (f->type()) {
	case pb::FieldDescriptor::TYPE_STRING:
	case pb::FieldDescriptor::TYPE_BYTES:
	case pb::FieldDescriptor::TYPE_MESSAGE:
		return 2;
	case pb::FieldDescriptor::TYPE_GROUP:
		return 3;
	case pb::FieldDescriptor::TYPE_DOUBLE:
	case pb::FieldDescriptor::TYPE_FIXED64:
	case pb::FieldDescriptor::TYPE_SFIXED64:
		return 1;
	case pb::FieldDescriptor::TYPE_FLOAT:
	case pb::FieldDescriptor::TYPE_FIXED32:
	case pb::FieldDescriptor::TYPE_SFIXED32:
		return 5;
	default:
		return 0;
	}
}

// Adds to `cost` roughly what protobuf's parser would allocate for `bytes` as `type`: a message
// object per submessage, a string per string or unknown field, 8 bytes per packed element. False
// past kMaxParseCost, and for bytes that are not a message by walk(): groups especially, whose
// contents protobuf would take without their being counted here.
bool parse_cost(std::string_view bytes, const pb::Descriptor *type, int depth, size_t &cost)
{
	if (depth > kMaxParseDepth)
		return false;
	bool within = true;
	const bool valid = walk(bytes, false, [&](const WireField &w) {
		const pb::FieldDescriptor *f = type->FindFieldByNumber(static_cast<int>(w.number));
		const bool packed = f && f->is_repeated() && f->is_packable() && w.type == 2;
		if (!f || (w.type != wire_type(f) && !packed)) {
			cost += 32 + w.bytes.size(); // kept as an unknown field
		} else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
			cost += 64 + 16 * static_cast<size_t>(f->message_type()->field_count());
			within = parse_cost(w.bytes, f->message_type(), depth + 1, cost);
		} else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
			cost += 48 + w.bytes.size();
		} else {
			cost += packed ? 8 * w.bytes.size() : 8;
		}
		within = within && cost <= kMaxParseCost;
		return within;
	});
	return valid && within;
}

// `bytes` parsed as `type` by protobuf, or null: not that type, or too costly to parse.
std::unique_ptr<pb::Message> parse_bounded(const MessageDecoder::Schema &schema, const pb::Descriptor *type,
                                           std::string_view bytes)
{
	size_t cost = 0;
	if (bytes.size() > INT_MAX || !parse_cost(bytes, type, 0, cost))
		return nullptr;
	const pb::Message *prototype = schema.factory->GetPrototype(type);
	if (!prototype)
		return nullptr;
	std::unique_ptr<pb::Message> m(prototype->New());
	if (!m->ParsePartialFromArray(bytes.data(), static_cast<int>(bytes.size())))
		return nullptr;
	return m;
}

std::string field_key(uint32_t number)
{
	return "#" + std::to_string(number);
}

// ---- printing ----

class Printer {
public:
	Printer(const MessageDecoder::Schema *schema, size_t limit) : schema_(schema), w_(limit) {}

	std::string take() { return w_.take(); }

	// `bytes` as an object, field by field; `bytes` must satisfy is_message.
	void generic_message(std::string_view bytes, int depth)
	{
		std::vector<WireField> fields;
		bool capped = false;
		walk(bytes, false, [&](const WireField &f) {
			if (wire_fields_ >= kMaxWireFields) {
				capped = true;
				return false;
			}
			fields.push_back(f);
			wire_fields_++;
			return true;
		});
		// Grouped by number (repeated numbers become arrays), in number order as encoders write.
		std::stable_sort(fields.begin(), fields.end(),
		                 [](const WireField &a, const WireField &b) { return a.number < b.number; });
		w_.begin_object();
		for (size_t i = 0; i < fields.size();) {
			size_t j = i + 1;
			while (j < fields.size() && fields[j].number == fields[i].number)
				j++;
			if (!w_.fits())
				break;
			w_.key(field_key(fields[i].number));
			if (j - i == 1) {
				wire_value(fields[i], depth);
			} else {
				w_.begin_array();
				for (size_t k = i; k < j && w_.fits(); k++)
					wire_value(fields[k], depth);
				w_.end_array();
			}
			i = j;
		}
		if (capped)
			w_.cut();
		w_.end_object();
		wire_fields_ -= fields.size();
	}

	// Bytes that are not a message at all.
	void raw(std::string_view bytes)
	{
		w_.begin_object();
		w_.key("#raw_hex");
		w_.hex(bytes, kDecoderMaxHexBytes);
		w_.key("#length");
		w_.unsigned_number(bytes.size());
		w_.end_object();
	}

	// Text too long for the bound, said so.
	void long_text(std::string_view text)
	{
		w_.begin_object();
		w_.key("#length");
		w_.unsigned_number(text.size());
		w_.key("#text");
		w_.string(text);
		w_.end_object();
	}

	void message(const pb::Message &m, int depth)
	{
		const pb::Reflection *r = m.GetReflection();
		std::vector<const pb::FieldDescriptor *> fields;
		r->ListFields(m, &fields);
		w_.begin_object();
		for (const pb::FieldDescriptor *f : fields) {
			if (!w_.fits())
				break;
			w_.key(f->name());
			if (f->is_repeated() && is_map(f)) {
				map(m, f, depth);
			} else if (f->is_repeated()) {
				w_.begin_array();
				const int n = r->FieldSize(m, f);
				for (int i = 0; i < n && w_.fits(); i++)
					value(m, f, i, depth);
				w_.end_array();
			} else {
				value(m, f, -1, depth);
			}
			nested_payload(m, f, depth);
		}
		unknown(r->GetUnknownFields(m), depth);
		w_.end_object();
	}

private:
	void wire_value(const WireField &f, int depth)
	{
		switch (f.type) {
		case 0:
		case 1:
		case 5:
			w_.unsigned_number(f.value);
			break;
		default:
			length_delimited(f.bytes, depth);
		}
	}

	// A length-delimited field of a message at `depth` whose type is not known.
	void length_delimited(std::string_view bytes, int depth)
	{
		const TextKind kind = classify(bytes);
		if (bytes.empty() || kind == TextKind::Printable)
			w_.string(bytes);
		else if (depth < kDecoderMaxDepth && is_message(bytes, true))
			generic_message(bytes, depth + 1);
		else if (is_text(kind))
			w_.string(bytes);
		else
			hex_object(bytes);
	}

	void hex_object(std::string_view bytes)
	{
		w_.begin_object();
		w_.key("#hex");
		w_.hex(bytes, kDecoderMaxHexBytes);
		if (bytes.size() > kDecoderMaxHexBytes && w_.fits()) {
			w_.key("#length");
			w_.unsigned_number(bytes.size());
		}
		w_.end_object();
	}

	bool is_map(const pb::FieldDescriptor *f) const
	{
		const pb::Descriptor *entry = f->message_type();
		return entry && (entry->options().map_entry() || (schema_ && schema_->map_entries.count(entry)));
	}

	// A string field (declared so: the pool has it as bytes) is text whenever it is UTF-8; a bytes
	// field only when it looks like text.
	void bytes_value(const pb::FieldDescriptor *f, const std::string &s)
	{
		const TextKind kind = classify(s);
		const bool string_field =
		    f->type() == pb::FieldDescriptor::TYPE_STRING || (schema_ && schema_->string_fields.count(f));
		if (is_text(kind) || (string_field && kind == TextKind::Utf8))
			w_.string(s);
		else
			hex_object(s);
	}

	// Field `f` of `m` (element `index` of a repeated field, or -1).
	void value(const pb::Message &m, const pb::FieldDescriptor *f, int index, int depth)
	{
		const pb::Reflection *r = m.GetReflection();
		const bool one = index < 0;
		switch (f->cpp_type()) {
		case pb::FieldDescriptor::CPPTYPE_INT32:
			w_.signed_number(one ? r->GetInt32(m, f) : r->GetRepeatedInt32(m, f, index));
			break;
		case pb::FieldDescriptor::CPPTYPE_INT64:
			w_.signed_number(one ? r->GetInt64(m, f) : r->GetRepeatedInt64(m, f, index));
			break;
		case pb::FieldDescriptor::CPPTYPE_UINT32:
			w_.unsigned_number(one ? r->GetUInt32(m, f) : r->GetRepeatedUInt32(m, f, index));
			break;
		case pb::FieldDescriptor::CPPTYPE_UINT64:
			w_.unsigned_number(one ? r->GetUInt64(m, f) : r->GetRepeatedUInt64(m, f, index));
			break;
		case pb::FieldDescriptor::CPPTYPE_DOUBLE:
			w_.real(one ? r->GetDouble(m, f) : r->GetRepeatedDouble(m, f, index));
			break;
		case pb::FieldDescriptor::CPPTYPE_FLOAT:
			w_.real(one ? r->GetFloat(m, f) : r->GetRepeatedFloat(m, f, index));
			break;
		case pb::FieldDescriptor::CPPTYPE_BOOL:
			w_.boolean(one ? r->GetBool(m, f) : r->GetRepeatedBool(m, f, index));
			break;
		case pb::FieldDescriptor::CPPTYPE_ENUM: {
			const int v = one ? r->GetEnumValue(m, f) : r->GetRepeatedEnumValue(m, f, index);
			const pb::EnumValueDescriptor *e = f->enum_type()->FindValueByNumber(v);
			if (e)
				w_.string(e->name());
			else
				w_.signed_number(v); // a value newer than the descriptor
			break;
		}
		case pb::FieldDescriptor::CPPTYPE_STRING: {
			std::string scratch;
			bytes_value(f, one ? r->GetStringReference(m, f, &scratch)
			                   : r->GetRepeatedStringReference(m, f, index, &scratch));
			break;
		}
		case pb::FieldDescriptor::CPPTYPE_MESSAGE: {
			const pb::Message &sub = one ? r->GetMessage(m, f) : r->GetRepeatedMessage(m, f, index);
			nested_message(sub, depth + 1);
			break;
		}
		}
	}

	void nested_message(const pb::Message &m, int depth)
	{
		if (depth > kDecoderMaxDepth) {
			hex_object(m.SerializePartialAsString());
			return;
		}
		const std::string &name = m.GetDescriptor()->full_name();
		if (name == "google.protobuf.Value")
			wkt_value(m, depth);
		else if (name == "google.protobuf.Struct" || name == "google.protobuf.ListValue")
			wkt_container(m, depth);
		else
			message(m, depth);
	}

	// google.protobuf.Value as the JSON value it stands for (MCP tool arguments are Values).
	void wkt_value(const pb::Message &m, int depth)
	{
		const pb::Descriptor *d = m.GetDescriptor();
		const pb::OneofDescriptor *kind = d->FindOneofByName("kind");
		if (!kind) {
			message(m, depth);
			return;
		}
		const pb::FieldDescriptor *f = m.GetReflection()->GetOneofFieldDescriptor(m, kind);
		if (!f || f->name() == "null_value")
			w_.null();
		else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE)
			nested_message(m.GetReflection()->GetMessage(m, f), depth); // same level: Value is a wrapper
		else
			value(m, f, -1, depth);
	}

	// google.protobuf.Struct as an object, ListValue as an array.
	void wkt_container(const pb::Message &m, int depth)
	{
		const pb::Descriptor *d = m.GetDescriptor();
		const pb::FieldDescriptor *f = d->FindFieldByNumber(1);
		if (!f || !f->is_repeated() || f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
			message(m, depth);
			return;
		}
		if (is_map(f)) {
			map(m, f, depth);
			return;
		}
		const pb::Reflection *r = m.GetReflection();
		w_.begin_array();
		const int n = r->FieldSize(m, f);
		for (int i = 0; i < n && w_.fits(); i++)
			value(m, f, i, depth);
		w_.end_array();
	}

	std::string map_key(const pb::Message &entry, const pb::FieldDescriptor *key)
	{
		const pb::Reflection *r = entry.GetReflection();
		switch (key->cpp_type()) {
		case pb::FieldDescriptor::CPPTYPE_INT32:
			return std::to_string(r->GetInt32(entry, key));
		case pb::FieldDescriptor::CPPTYPE_INT64:
			return std::to_string(r->GetInt64(entry, key));
		case pb::FieldDescriptor::CPPTYPE_UINT32:
			return std::to_string(r->GetUInt32(entry, key));
		case pb::FieldDescriptor::CPPTYPE_UINT64:
			return std::to_string(r->GetUInt64(entry, key));
		case pb::FieldDescriptor::CPPTYPE_BOOL:
			return r->GetBool(entry, key) ? "true" : "false";
		case pb::FieldDescriptor::CPPTYPE_STRING: {
			std::string k = r->GetString(entry, key);
			if (classify(k) == TextKind::Binary) {
				static constexpr char digits[] = "0123456789abcdef";
				std::string h = "#hex:";
				for (size_t i = 0; i < k.size() && i < kDecoderMaxHexBytes; i++) {
					h += digits[static_cast<unsigned char>(k[i]) >> 4];
					h += digits[static_cast<unsigned char>(k[i]) & 15];
				}
				return h;
			}
			return k;
		}
		default:
			return "#invalid_key";
		}
	}

	// A map as an object. As when protobuf merges a map, the last entry for a key wins; keys keep
	// the place of their first entry.
	void map(const pb::Message &m, const pb::FieldDescriptor *f, int depth)
	{
		const pb::Descriptor *entry = f->message_type();
		const pb::FieldDescriptor *key = entry->FindFieldByNumber(1);
		const pb::FieldDescriptor *val = entry->FindFieldByNumber(2);
		const pb::Reflection *r = m.GetReflection();
		const int n = r->FieldSize(m, f);
		if (!key || !val || key->is_repeated() || val->is_repeated()) {
			w_.begin_array();
			for (int i = 0; i < n && w_.fits(); i++)
				value(m, f, i, depth);
			w_.end_array();
			return;
		}
		std::vector<std::pair<std::string, int>> entries; // key, index of its last entry
		std::unordered_map<std::string, size_t> position;
		for (int i = 0; i < n; i++) {
			std::string k = map_key(r->GetRepeatedMessage(m, f, i), key);
			auto [it, added] = position.emplace(k, entries.size());
			if (added)
				entries.emplace_back(std::move(k), i);
			else
				entries[it->second].second = i;
		}
		w_.begin_object();
		for (const auto &[k, i] : entries) {
			if (!w_.fits())
				break;
			w_.key(k);
			// The entry is the map's own plumbing, not a level of the user's data.
			value(r->GetRepeatedMessage(m, f, i), val, -1, depth);
		}
		w_.end_object();
	}

	// "<field>#decoded": the message inside a field that carries one as bytes or hex.
	void nested_payload(const pb::Message &m, const pb::FieldDescriptor *f, int depth)
	{
		if (!schema_ || f->is_repeated() || f->cpp_type() != pb::FieldDescriptor::CPPTYPE_STRING)
			return;
		for (const NestedPayload &n : schema_->nested) {
			if (n.field != f)
				continue;
			std::string scratch;
			const std::string &value = m.GetReflection()->GetStringReference(m, f, &scratch);
			const std::string bytes = n.hex ? unhex(value) : value;
			if (bytes.empty() || depth + 1 > kDecoderMaxDepth)
				return;
			std::unique_ptr<pb::Message> inner = parse_bounded(*schema_, n.type, bytes);
			if (!inner || !w_.fits())
				return;
			w_.key(f->name() + "#decoded");
			nested_message(*inner, depth + 1);
			return;
		}
	}

	void unknown(const pb::UnknownFieldSet &set, int depth)
	{
		const int n = set.field_count();
		std::vector<int> order(static_cast<size_t>(n));
		std::iota(order.begin(), order.end(), 0);
		std::stable_sort(order.begin(), order.end(),
		                 [&](int a, int b) { return set.field(a).number() < set.field(b).number(); });
		for (size_t i = 0; i < order.size();) {
			const int number = set.field(order[i]).number();
			size_t j = i + 1;
			while (j < order.size() && set.field(order[j]).number() == number)
				j++;
			if (!w_.fits())
				break;
			w_.key(field_key(static_cast<uint32_t>(number)));
			if (j - i == 1) {
				unknown_value(set.field(order[i]), depth);
			} else {
				w_.begin_array();
				for (size_t k = i; k < j && w_.fits(); k++)
					unknown_value(set.field(order[k]), depth);
				w_.end_array();
			}
			i = j;
		}
	}

	void unknown_value(const pb::UnknownField &f, int depth)
	{
		switch (f.type()) {
		case pb::UnknownField::TYPE_VARINT:
			w_.unsigned_number(f.varint());
			break;
		case pb::UnknownField::TYPE_FIXED32:
			w_.unsigned_number(f.fixed32());
			break;
		case pb::UnknownField::TYPE_FIXED64:
			w_.unsigned_number(f.fixed64());
			break;
		case pb::UnknownField::TYPE_LENGTH_DELIMITED:
			length_delimited(f.length_delimited(), depth);
			break;
		case pb::UnknownField::TYPE_GROUP:
			w_.begin_object();
			if (depth < kDecoderMaxDepth)
				unknown(f.group(), depth + 1);
			else
				w_.cut();
			w_.end_object();
			break;
		}
	}

	const MessageDecoder::Schema *schema_;
	JsonWriter w_;
	size_t wire_fields_ = 0; // WireField records alive in generic_message frames
};

std::string generic(std::string_view payload)
{
	Printer p(nullptr, kDecoderMaxOutput);
	if (is_message(payload, false))
		p.generic_message(payload, 0);
	else
		p.raw(payload);
	return p.take();
}

// The last word when even the fallback fails (memory): still valid JSON.
constexpr const char *kDecodeFailed = "{\"#error\":\"decode failed\"}";

std::string safe_generic(std::string_view payload) noexcept
{
	try {
		return generic(payload);
	} catch (...) {
		return kDecodeFailed;
	}
}

// ---- loading ----

class FirstError : public pb::DescriptorPool::ErrorCollector {
public:
	void AddError(const std::string &filename, const std::string &element_name, const pb::Message *, ErrorLocation,
	              const std::string &message) override
	{
		if (error.empty())
			error = filename + ": " + element_name + ": " + message;
	}
	std::string error;
};

// The decoder's copy of the schema differs from what protoc wrote in two ways, both so that
// protobuf's parser keeps going where a client's bytes are not what the schema says:
// - string fields become bytes: proto3 refuses a whole message, and logs an error, for one string
//   that is not UTF-8; as bytes the rest still decodes by name (and the field shows as hex);
// - map entries become plain messages, since a map key cannot be bytes.
// Both are undone when printing (Schema::string_fields, Schema::map_entries).
void rewrite_message(pb::DescriptorProto &m, const std::string &scope, std::vector<std::string> &string_fields,
                     std::vector<std::string> &map_entries)
{
	const std::string name = scope.empty() ? m.name() : scope + "." + m.name();
	if (m.options().map_entry()) {
		m.mutable_options()->set_map_entry(false);
		map_entries.push_back(name);
	}
	for (pb::FieldDescriptorProto &f : *m.mutable_field()) {
		if (f.type() == pb::FieldDescriptorProto::TYPE_STRING && !f.has_default_value()) {
			f.set_type(pb::FieldDescriptorProto::TYPE_BYTES);
			string_fields.push_back(name + "." + f.name());
		}
	}
	for (pb::DescriptorProto &nested : *m.mutable_nested_type())
		rewrite_message(nested, name, string_fields, map_entries);
}

Result<std::unique_ptr<MessageDecoder::Schema>> build_schema(pb::FileDescriptorSet set, bool rewrite)
{
	auto schema = std::make_unique<MessageDecoder::Schema>();
	std::vector<std::string> string_fields, map_entries;
	if (rewrite)
		for (pb::FileDescriptorProto &file : *set.mutable_file())
			for (pb::DescriptorProto &m : *file.mutable_message_type())
				rewrite_message(m, file.package(), string_fields, map_entries);

	// Dependencies first, whatever the order of the set.
	std::unordered_map<std::string, const pb::FileDescriptorProto *> files;
	for (const pb::FileDescriptorProto &file : set.file())
		files[file.name()] = &file;
	std::unordered_set<std::string> building;
	FirstError errors;
	std::string missing;
	std::function<bool(const std::string &)> build = [&](const std::string &name) {
		if (schema->pool.FindFileByName(name))
			return true;
		auto it = files.find(name);
		if (it == files.end() || !building.insert(name).second) {
			missing = name;
			return false;
		}
		for (const std::string &dependency : it->second->dependency())
			if (!build(dependency))
				return false;
		return schema->pool.BuildFileCollectingErrors(*it->second, &errors) != nullptr;
	};
	for (const pb::FileDescriptorProto &file : set.file()) {
		if (!build(file.name())) {
			if (!errors.error.empty())
				return plain_error(errors.error);
			return plain_error("import " + missing +
			                   " missing from the set (protoc --include_imports?) or cyclic");
		}
	}

	for (const std::string &name : map_entries)
		if (const pb::Descriptor *d = schema->pool.FindMessageTypeByName(name))
			schema->map_entries.insert(d);
	for (const std::string &name : string_fields)
		if (const pb::FieldDescriptor *f = schema->pool.FindFieldByName(name))
			schema->string_fields.insert(f);
	struct {
		const char *field;
		bool hex;
		const char *type;
	} const nested[] = {
	    {"aiserver.v1.BidiAppendRequest.data", true, "agent.v1.AgentClientMessage"},
	    {"aiserver.v1.BidiAppendRequest.data_binary", false, "agent.v1.AgentClientMessage"},
	};
	for (const auto &n : nested) {
		const pb::FieldDescriptor *f = schema->pool.FindFieldByName(n.field);
		const pb::Descriptor *type = schema->pool.FindMessageTypeByName(n.type);
		if (f && type)
			schema->nested.push_back({f, n.hex, type});
	}
	schema->factory = std::make_unique<pb::DynamicMessageFactory>(&schema->pool);
	return schema;
}

Result<std::string> read_file(const std::string &path)
{
	std::unique_ptr<FILE, decltype(&std::fclose)> f(std::fopen(path.c_str(), "rbe"), std::fclose);
	if (!f)
		return system_error("open " + path);
	std::string data;
	char buffer[65536];
	size_t n;
	while ((n = std::fread(buffer, 1, sizeof buffer, f.get())) > 0)
		data.append(buffer, n);
	if (std::ferror(f.get()))
		return system_error("read " + path);
	return data;
}

} // namespace

MessageDecoder::MessageDecoder(std::unique_ptr<Schema> schema) : schema_(std::move(schema)) {}

MessageDecoder::~MessageDecoder() = default;

Result<std::unique_ptr<MessageDecoder>> MessageDecoder::load(const std::string &descriptor_set_path)
{
	try {
		auto data = read_file(descriptor_set_path);
		if (!data)
			return data.error();
		pb::FileDescriptorSet set;
		if (!set.ParseFromString(*data))
			return plain_error("descriptor set " + descriptor_set_path + ": not a FileDescriptorSet");
		auto schema = build_schema(set, true);
		if (!schema) // should not happen; the schema as protoc wrote it is still worth having
			schema = build_schema(set, false);
		if (!schema)
			return plain_error("descriptor set " + descriptor_set_path + ": " + schema.error().message());
		return std::unique_ptr<MessageDecoder>(new MessageDecoder(std::move(*schema)));
	} catch (const std::exception &e) {
		return plain_error("descriptor set " + descriptor_set_path + ": " + e.what());
	}
}

std::unique_ptr<MessageDecoder> MessageDecoder::generic_only()
{
	return std::unique_ptr<MessageDecoder>(new MessageDecoder(nullptr));
}

const google::protobuf::Descriptor *MessageDecoder::descriptor(const rpc::RpcName &rpc, Direction direction) const
{
	if (!schema_ || rpc.empty())
		return nullptr;
	const pb::ServiceDescriptor *service = schema_->pool.FindServiceByName(rpc.service);
	const pb::MethodDescriptor *method = service ? service->FindMethodByName(rpc.method) : nullptr;
	if (!method)
		return nullptr;
	return direction == Direction::Request ? method->input_type() : method->output_type();
}

const std::unordered_set<const google::protobuf::FieldDescriptor *> *MessageDecoder::string_fields() const
{
	return schema_ ? &schema_->string_fields : nullptr;
}

std::string MessageDecoder::message_type(const rpc::RpcName &rpc, Direction direction) const
{
	if (!schema_)
		return {};
	try {
		const pb::ServiceDescriptor *service = schema_->pool.FindServiceByName(rpc.service);
		const pb::MethodDescriptor *method = service ? service->FindMethodByName(rpc.method) : nullptr;
		if (!method)
			return {};
		return (direction == Direction::Request ? method->input_type() : method->output_type())->full_name();
	} catch (...) {
		return {};
	}
}

std::string MessageDecoder::to_json(const rpc::RpcName &rpc, Direction direction, std::string_view payload,
                                    bool json_codec) const
{
	if (!json_codec) {
		const std::string type = message_type(rpc, direction);
		return type.empty() ? to_json_generic(payload) : to_json_typed(type, payload);
	}
	try {
		// accept() only validates (no document is built) and does not recurse: a hostile nesting
		// depth costs nothing.
		if (payload.size() <= kDecoderMaxOutput && nlohmann::json::accept(payload.begin(), payload.end()))
			return std::string(payload);
		if (classify(payload) == TextKind::Binary) {
			Printer p(nullptr, kDecoderMaxOutput);
			p.raw(payload);
			return p.take();
		}
		JsonWriter whole(kDecoderMaxOutput);
		whole.string(payload);
		if (!whole.truncated())
			return whole.take();
		Printer p(nullptr, kDecoderMaxOutput);
		p.long_text(payload);
		return p.take();
	} catch (...) {
		return kDecodeFailed;
	}
}

std::string MessageDecoder::to_json_typed(const std::string &full_type_name, std::string_view payload) const
{
	try {
		if (!schema_)
			return to_json_generic(payload);
		const pb::Descriptor *d = schema_->pool.FindMessageTypeByName(full_type_name);
		std::unique_ptr<pb::Message> m = d ? parse_bounded(*schema_, d, payload) : nullptr;
		if (!m)
			return to_json_generic(payload);
		Printer p(schema_.get(), kDecoderMaxOutput);
		p.message(*m, 0);
		return p.take();
	} catch (...) {
		return safe_generic(payload);
	}
}

std::string MessageDecoder::to_json_generic(std::string_view payload) const
{
	return safe_generic(payload);
}

} // namespace cordon::proxy
