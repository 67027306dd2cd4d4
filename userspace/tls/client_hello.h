// The first thing cordond reads from a redirected connection: the TLS ClientHello, parsed just far
// enough to choose between intercepting (SNI is a Cursor host), byte-exact passthrough (another SNI)
// and refusing (no SNI, not TLS). It runs on hostile input before anything else has looked at it, so
// it is our own small parser: it copies nothing but the fields it returns and reads nothing past the
// buffer, and its verdict on a prefix never contradicts its verdict on the whole stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cordon::tls {

// Largest ClientHello (handshake message, across however many records) we will buffer. Post-quantum
// key shares make real ones 1.5-2 KiB; anything past this is refused as TooLarge.
// The bound covers the record headers too, so a caller that has buffered kMaxClientHelloBytes always
// has a verdict other than NeedMore.
inline constexpr size_t kMaxClientHelloBytes = 64 * 1024;

struct ClientHello {
	std::string sni;                          // host_name from server_name, lower-cased; empty if absent
	std::vector<std::string> alpn;            // protocols as offered, in order (e.g. "h2", "http/1.1")
	std::vector<uint16_t> supported_versions; // from supported_versions, GREASE removed
	uint16_t legacy_version = 0;              // ClientHello.legacy_version
	bool has_ech = false;                     // encrypted_client_hello (0xfe0d) present
	size_t bytes = 0;                         // bytes of input the ClientHello occupied (all records)
};

enum class HelloStatus {
	NeedMore,  // a valid prefix: read more and call again with the longer buffer
	Complete,  // `hello` is filled in
	NotTls,    // the first bytes are not a TLS handshake record (e.g. "GET / HTTP/1.1", SSLv2)
	Malformed, // TLS, but broken: bad lengths, duplicate extensions, bad SNI, ...
	TooLarge,  // would exceed kMaxClientHelloBytes
};

struct HelloParse {
	HelloStatus status = HelloStatus::NeedMore;
	ClientHello hello; // meaningful only when Complete
	std::string error; // why, for NotTls/Malformed/TooLarge (goes to the journal; no raw bytes)
};

// Parses the start of a client's byte stream. Pure and bounded: never reads past data.size(),
// never allocates more than the result, handles a ClientHello fragmented across several TLS
// records and a buffer cut at any byte (NeedMore, never Malformed, for every prefix of a valid one).
// Verdicts are final: once a prefix yields anything but NeedMore, every longer buffer yields the
// same. The ClientHello must end at a record boundary (RFC 8446 §5.1); bytes after its last
// record belong to later records and are not looked at.
HelloParse parse_client_hello(std::span<const uint8_t> data);

const char *to_string(HelloStatus status);

} // namespace cordon::tls
