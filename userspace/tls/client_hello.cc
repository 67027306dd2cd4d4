#include "tls/client_hello.h"

#include <algorithm>
#include <bitset>
#include <string_view>
#include <utility>

namespace cordon::tls {
namespace {

constexpr uint8_t kHandshakeRecord = 22;
constexpr uint8_t kClientHelloType = 1;
constexpr size_t kRecordHeaderBytes = 5;
constexpr size_t kHandshakeHeaderBytes = 4;
// RFC 8446 §5.1 caps a plaintext record at 2^14. We allow up to 2^14 + 2048, the largest record TLS
// 1.2 permits at all (TLSCiphertext, RFC 5246 §6.2.3), so a slightly lenient client is not refused
// for that alone.
constexpr size_t kMaxRecordPayload = (1u << 14) + 2048;

constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint16_t kExtSupportedVersions = 43;
constexpr uint16_t kExtEncryptedClientHello = 0xfe0d;

// RFC 8701: 0x0a0a, 0x1a1a, ... 0xfafa. Clients sprinkle these to keep servers tolerant of unknown
// values; they carry no meaning.
bool is_grease(uint16_t v)
{
	return (v >> 8) == (v & 0xff) && (v & 0x0f) == 0x0a;
}

std::string num(size_t n)
{
	return std::to_string(n);
}

// WHATWG URL "ends in a number": a last label of digits, or 0x + hex digits, makes the name an IPv4
// literal to every resolver that follows inet_aton ("127.1", "0x7f000001").
bool ends_in_number(std::string_view label)
{
	auto digits = [](std::string_view s, bool hex) {
		return std::all_of(s.begin(), s.end(),
		                   [hex](char c) { return (c >= '0' && c <= '9') || (hex && c >= 'a' && c <= 'f'); });
	};
	if (label.substr(0, 2) == "0x")
		return digits(label.substr(2), true);
	return !label.empty() && digits(label, false);
}

// Lower-cases `name` in place and drops a trailing dot. Returns why it is not a DNS host name, or
// nullptr. The reasons never quote the name: it is client data and goes to the journal.
const char *normalize_sni(std::string &name)
{
	if (!name.empty() && name.back() == '.')
		name.pop_back();
	if (name.empty())
		return "SNI host_name is empty";
	if (name.size() > 253)
		return "SNI host_name is longer than 253 characters";
	size_t label = 0, last_label = 0;
	for (size_t i = 0; i < name.size(); i++) {
		char &c = name[i];
		if (c == '.') {
			if (label == 0)
				return "SNI host_name has an empty label";
			label = 0;
			last_label = i + 1;
			continue;
		}
		if (c >= 'A' && c <= 'Z')
			c = static_cast<char>(c - 'A' + 'a');
		if (c == ':')
			return "SNI host_name contains ':' (an IPv6 literal or a port), which RFC 6066 §3 forbids";
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return "SNI host_name has a character not allowed in a DNS name";
		if (++label > 63)
			return "SNI host_name has a label longer than 63 characters";
	}
	if (label == 0)
		return "SNI host_name has an empty label";
	if (ends_in_number(std::string_view(name).substr(last_label)))
		return "SNI host_name is an IP address literal, which RFC 6066 §3 forbids";
	return nullptr;
}

// Reads the handshake message as one byte stream, stepping over record headers where they fall, so a
// hello cut into records of any size parses in place without being copied together first. Every
// read either succeeds or stops the parse with a verdict; running out of input is NeedMore, and
// every other verdict depends only on bytes already read, so a longer buffer can never change it.
class Parser {
public:
	explicit Parser(std::span<const uint8_t> data) : data_(data) {}

	// Walks the records of the whole handshake message without looking inside it: one step per
	// record, no allocation. A caller re-parsing a growing buffer pays only this until the message
	// is all there. On success, `bytes` is where its last record ends.
	bool frame(size_t &bytes)
	{
		if (!handshake_header() || !skip(message_end_ - pos_))
			return false;
		// RFC 8446 §5.1: a ClientHello must end at a record boundary. Anything else in its last record
		// would be a second handshake message, which a client may not send before the ServerHello.
		if (record_left_ != 0)
			return malformed("the ClientHello's last record carries " + num(record_left_) +
			                 " more bytes after it");
		bytes = in_;
		return true;
	}

	// The body, once frame() has found all of it in data_.
	HelloParse parse()
	{
		HelloParse result;
		ClientHello hello;
		if (handshake_header() && body(hello)) {
			hello.bytes = in_;
			result.status = HelloStatus::Complete;
			result.hello = std::move(hello);
		} else {
			result.status = status_;
			result.error = std::move(error_);
		}
		return result;
	}

	HelloParse failure()
	{
		HelloParse result;
		result.status = status_;
		result.error = std::move(error_);
		return result;
	}

private:
	bool fail(HelloStatus status, std::string why)
	{
		status_ = status;
		error_ = std::move(why);
		return false;
	}
	bool malformed(std::string why) { return fail(HelloStatus::Malformed, std::move(why)); }
	bool need_more() { return fail(HelloStatus::NeedMore, {}); }

	// The header of the next record, which must carry more of the handshake message.
	bool next_record()
	{
		const bool first = in_ == 0;
		// Judged before the header arrives, so that a caller holding kMaxClientHelloBytes never
		// gets NeedMore: no record of at least one byte could start here and still fit.
		if (in_ + kRecordHeaderBytes + 1 > kMaxClientHelloBytes)
			return fail(HelloStatus::TooLarge,
			            "the ClientHello's records run past " + num(kMaxClientHelloBytes) + " bytes");
		const size_t avail = data_.size() - in_;
		auto h = data_.subspan(in_);
		// Judged byte by byte, so a verdict comes as early as the bytes allow.
		if (avail < 1)
			return need_more();
		if (h[0] != kHandshakeRecord) {
			if (!first)
				return malformed("a record of type " + num(h[0]) +
				                 " arrived before the ClientHello was complete");
			if (h[0] & 0x80)
				return fail(HelloStatus::NotTls, "an SSLv2-style record header, not TLS");
			if (h[0] >= 0x20 && h[0] < 0x7f)
				return fail(HelloStatus::NotTls, "plaintext (a text protocol such as HTTP?), not TLS");
			return fail(HelloStatus::NotTls,
			            "first record has content type " + num(h[0]) + ", not handshake (22)");
		}
		if (avail < 2)
			return need_more();
		if (h[1] != 3) {
			std::string why = "record version major " + num(h[1]) + " is not TLS";
			return first ? fail(HelloStatus::NotTls, std::move(why)) : malformed(std::move(why));
		}
		if (avail < 3)
			return need_more();
		if (h[2] < 1 || h[2] > 4) {
			std::string why = "record version 3." + num(h[2]) + " is not TLS 1.0-1.3";
			return first ? fail(HelloStatus::NotTls, std::move(why)) : malformed(std::move(why));
		}
		if (avail < kRecordHeaderBytes)
			return need_more();
		const size_t length = size_t{h[3]} << 8 | h[4];
		if (length == 0)
			return malformed("an empty handshake record (RFC 8446 §5.1)");
		if (length > kMaxRecordPayload)
			return malformed("a record of " + num(length) + " bytes, more than " + num(kMaxRecordPayload));
		if (in_ + kRecordHeaderBytes + length > kMaxClientHelloBytes)
			return fail(HelloStatus::TooLarge,
			            "the ClientHello's records run past " + num(kMaxClientHelloBytes) + " bytes");
		in_ += kRecordHeaderBytes;
		record_left_ = length;
		return true;
	}

	// Passes the next n message bytes to sink(pointer, count) in as many pieces as records and input
	// split them into.
	template <typename Sink> bool consume(size_t n, Sink sink)
	{
		while (n > 0) {
			if (record_left_ == 0 && !next_record())
				return false;
			const size_t k = std::min({n, record_left_, data_.size() - in_});
			if (k == 0)
				return need_more();
			sink(data_.data() + in_, k);
			in_ += k;
			record_left_ -= k;
			pos_ += k;
			n -= k;
		}
		return true;
	}
	bool skip(size_t n)
	{
		return consume(n, [](const uint8_t *, size_t) {});
	}
	bool copy(size_t n, std::string &out)
	{
		out.reserve(n);
		return consume(n, [&out](const uint8_t *p, size_t k) { out.append(p, p + k); });
	}
	bool uint(size_t n, uint32_t &out)
	{
		out = 0;
		return consume(n, [&out](const uint8_t *p, size_t k) {
			for (size_t i = 0; i < k; i++)
				out = out << 8 | p[i];
		});
	}
	bool u8(uint8_t &out)
	{
		uint32_t v;
		if (!uint(1, v))
			return false;
		out = static_cast<uint8_t>(v);
		return true;
	}
	bool u16(uint16_t &out)
	{
		uint32_t v;
		if (!uint(2, v))
			return false;
		out = static_cast<uint16_t>(v);
		return true;
	}

	// Whether n more bytes fit before `end` (a message offset): every length is checked against the
	// block that encloses it before a byte of it is read.
	bool fits(size_t n, size_t end, const char *what)
	{
		if (n > end - pos_)
			return malformed(std::string(what) + " runs past " +
			                 (in_extension_ ? "its extension" : "the ClientHello"));
		return true;
	}

	bool handshake_header()
	{
		uint8_t type;
		uint32_t length;
		if (!u8(type))
			return false;
		if (type != kClientHelloType)
			return malformed("the first handshake message has type " + num(type) + ", not ClientHello (1)");
		if (!uint(3, length))
			return false;
		if (kHandshakeHeaderBytes + length > kMaxClientHelloBytes)
			return fail(HelloStatus::TooLarge, "a ClientHello of " + num(kHandshakeHeaderBytes + length) +
			                                       " bytes, more than " + num(kMaxClientHelloBytes));
		message_end_ = pos_ + length;
		return true;
	}

	bool body(ClientHello &hello)
	{
		const size_t end = message_end_;

		uint8_t session_id, compression;
		uint16_t ciphers;
		if (!fits(2, end, "legacy_version") || !u16(hello.legacy_version))
			return false;
		if (hello.legacy_version >> 8 != 3)
			return malformed("legacy_version major " + num(hello.legacy_version >> 8) + " is not TLS");
		if (!fits(32, end, "random") || !skip(32))
			return false;
		if (!fits(1, end, "legacy_session_id") || !u8(session_id))
			return false;
		if (session_id > 32)
			return malformed("legacy_session_id of " + num(session_id) + " bytes, more than 32");
		if (!fits(session_id, end, "legacy_session_id") || !skip(session_id))
			return false;
		if (!fits(2, end, "cipher_suites") || !u16(ciphers))
			return false;
		if (ciphers == 0 || ciphers % 2 != 0)
			return malformed("cipher_suites of " + num(ciphers) + " bytes (must be even and non-zero)");
		if (!fits(ciphers, end, "cipher_suites") || !skip(ciphers))
			return false;
		if (!fits(1, end, "legacy_compression_methods") || !u8(compression))
			return false;
		if (compression == 0)
			return malformed("legacy_compression_methods is empty");
		if (!fits(compression, end, "legacy_compression_methods") || !skip(compression))
			return false;
		// Before TLS 1.2 the extensions block was optional: the hello may end here.
		return pos_ == end || extensions(hello);
	}

	bool extensions(ClientHello &hello)
	{
		const size_t end = message_end_;
		uint16_t length;
		if (!fits(2, end, "extensions length") || !u16(length))
			return false;
		if (length != end - pos_)
			return malformed("the extensions block is " + num(length) + " bytes but " + num(end - pos_) +
			                 " remain in the ClientHello");
		std::bitset<65536> seen; // 8 KiB on the stack: O(1) duplicate checks, no allocation
		while (pos_ < end) {
			uint16_t type, size;
			if (!fits(4, end, "an extension header") || !u16(type) || !u16(size))
				return false;
			if (!fits(size, end, "an extension"))
				return false;
			if (!is_grease(type)) {
				if (seen.test(type))
					return malformed("extension " + num(type) + " appears twice (RFC 8446 §4.2)");
				seen.set(type);
			}
			const size_t ext_end = pos_ + size;
			bool ok;
			in_extension_ = true;
			switch (type) {
			case kExtServerName:
				ok = server_name(ext_end, hello);
				break;
			case kExtAlpn:
				ok = alpn(ext_end, hello);
				break;
			case kExtSupportedVersions:
				ok = supported_versions(ext_end, hello);
				break;
			case kExtEncryptedClientHello:
				hello.has_ech = true;
				ok = skip(size);
				break;
			default:
				ok = skip(size);
				break;
			}
			in_extension_ = false;
			if (!ok)
				return false;
			// Each parser above consumes exactly its extension; this keeps a future one that does not
			// from silently reading the rest of its bytes as further extensions.
			if (pos_ != ext_end)
				return malformed("extension " + num(type) + " has " + num(ext_end - pos_) +
				                 " bytes left over");
		}
		return true;
	}

	// RFC 6066 §3: ServerNameList server_name_list<1..2^16-1>, entries of name_type + HostName.
	bool server_name(size_t end, ClientHello &hello)
	{
		uint16_t length;
		if (!fits(2, end, "server_name list length") || !u16(length))
			return false;
		if (length == 0 || length != end - pos_)
			return malformed("server_name list is " + num(length) + " bytes in an extension with " +
			                 num(end - pos_) + " left");
		bool have_host = false;
		while (pos_ < end) {
			uint8_t name_type;
			uint16_t size;
			if (!fits(3, end, "a server_name entry") || !u8(name_type) || !u16(size))
				return false;
			if (!fits(size, end, "a server_name entry"))
				return false;
			if (name_type != 0) {
				// No other name type was ever defined; every stack frames them like host_name.
				if (!skip(size))
					return false;
				continue;
			}
			// A second name would let us and the server each act on a different one.
			if (have_host)
				return malformed("server_name lists more than one host_name (RFC 6066 §3)");
			have_host = true;
			if (size > 254) // 253 plus a trailing dot
				return malformed("SNI host_name is longer than 253 characters");
			if (!copy(size, hello.sni))
				return false;
			if (const char *why = normalize_sni(hello.sni))
				return malformed(why);
		}
		return true;
	}

	// RFC 7301 §3.1: ProtocolNameList protocol_name_list<2..2^16-1>, each ProtocolName<1..2^8-1>.
	bool alpn(size_t end, ClientHello &hello)
	{
		uint16_t length;
		if (!fits(2, end, "ALPN list length") || !u16(length))
			return false;
		if (length == 0 || length != end - pos_)
			return malformed("ALPN list is " + num(length) + " bytes in an extension with " +
			                 num(end - pos_) + " left");
		while (pos_ < end) {
			uint8_t size;
			if (!u8(size))
				return false;
			if (size == 0)
				return malformed("an empty ALPN protocol name (RFC 7301 §3.1)");
			if (!fits(size, end, "an ALPN protocol name"))
				return false;
			std::string name;
			if (!copy(size, name))
				return false;
			hello.alpn.push_back(std::move(name));
		}
		return true;
	}

	// RFC 8446 §4.2.1: ProtocolVersion versions<2..254> in a ClientHello.
	bool supported_versions(size_t end, ClientHello &hello)
	{
		uint8_t length;
		if (!fits(1, end, "supported_versions length") || !u8(length))
			return false;
		if (length == 0 || length % 2 != 0 || length != end - pos_)
			return malformed("supported_versions list is " + num(length) + " bytes in an extension with " +
			                 num(end - pos_) + " left (must be even and non-zero)");
		while (pos_ < end) {
			uint16_t version;
			if (!u16(version))
				return false;
			if (!is_grease(version))
				hello.supported_versions.push_back(version);
		}
		return true;
	}

	std::span<const uint8_t> data_;
	size_t in_ = 0;             // input offset of the next byte
	size_t record_left_ = 0;    // handshake bytes left in the current record
	size_t pos_ = 0;            // offset of the next byte within the handshake message
	size_t message_end_ = 0;    // its length, header included, once known
	bool in_extension_ = false; // for errors: whose length was overrun
	HelloStatus status_ = HelloStatus::NeedMore;
	std::string error_;
};

} // namespace

HelloParse parse_client_hello(std::span<const uint8_t> data)
{
	// Two passes: the framing decides NeedMore cheaply, and the body is parsed once, when it is all
	// there. A verdict stays final: the framing reads the same bytes in the same order however long
	// the buffer, and the body pass sees exactly the hello's records whatever follows them.
	size_t bytes = 0;
	Parser framing(data);
	if (!framing.frame(bytes))
		return framing.failure();
	return Parser(data.first(bytes)).parse();
}

const char *to_string(HelloStatus status)
{
	switch (status) {
	case HelloStatus::NeedMore:
		return "need_more";
	case HelloStatus::Complete:
		return "complete";
	case HelloStatus::NotTls:
		return "not_tls";
	case HelloStatus::Malformed:
		return "malformed";
	case HelloStatus::TooLarge:
		return "too_large";
	}
	return "unknown";
}

} // namespace cordon::tls
