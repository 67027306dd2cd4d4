#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tls/client_hello.h"

using namespace cordon::tls;
using testing::HasSubstr;
using testing::Not;

namespace {

using Bytes = std::vector<uint8_t>;

void put8(Bytes &b, size_t v)
{
	b.push_back(static_cast<uint8_t>(v));
}
void put16(Bytes &b, size_t v)
{
	put8(b, v >> 8);
	put8(b, v);
}
void put24(Bytes &b, size_t v)
{
	put8(b, v >> 16);
	put16(b, v);
}
void append(Bytes &b, const Bytes &more)
{
	b.insert(b.end(), more.begin(), more.end());
}
void append(Bytes &b, std::string_view more)
{
	b.insert(b.end(), more.begin(), more.end());
}

HelloParse parse(const Bytes &b)
{
	return parse_client_hello(b);
}

// --- real ClientHellos, written by an OpenSSL 3 client into a memory BIO pair ---

struct ClientOptions {
	const char *sni = nullptr;
	std::vector<std::string> alpn;
	bool tls12_only = false;
	unsigned max_fragment = 0; // OpenSSL splits its handshake into records of at most this
};

Bytes openssl_hello(const ClientOptions &o)
{
	std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
	if (!ctx)
		return {};
	if (o.tls12_only && !SSL_CTX_set_max_proto_version(ctx.get(), TLS1_2_VERSION))
		return {};
	std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
	BIO *internal = nullptr, *network = nullptr;
	// Large enough for a hello of any size we ask for, so SSL_connect never waits to write.
	if (!ssl || !BIO_new_bio_pair(&internal, 256 * 1024, &network, 256 * 1024))
		return {};
	std::unique_ptr<BIO, decltype(&BIO_free)> network_owner(network, BIO_free);
	SSL_set_bio(ssl.get(), internal, internal);
	if (o.sni && !SSL_set_tlsext_host_name(ssl.get(), o.sni))
		return {};
	if (!o.alpn.empty()) {
		Bytes wire;
		for (const auto &p : o.alpn) {
			put8(wire, p.size());
			append(wire, p);
		}
		if (SSL_set_alpn_protos(ssl.get(), wire.data(), static_cast<unsigned>(wire.size())) != 0)
			return {};
	}
	if (o.max_fragment && !SSL_set_max_send_fragment(ssl.get(), o.max_fragment))
		return {};
	if (SSL_connect(ssl.get()) != -1 || SSL_get_error(ssl.get(), -1) != SSL_ERROR_WANT_READ)
		return {};
	Bytes out(BIO_ctrl_pending(network));
	if (out.empty() || BIO_read(network, out.data(), static_cast<int>(out.size())) != static_cast<int>(out.size()))
		return {};
	return out;
}

Bytes openssl_hello_with_sni(const char *sni)
{
	ClientOptions o;
	o.sni = sni;
	return openssl_hello(o);
}

// --- record framing ---

// The payloads of the records in `records`, joined: the handshake message(s) they carry.
Bytes payload(const Bytes &records)
{
	Bytes out;
	for (size_t at = 0; at + 5 <= records.size();) {
		size_t length = size_t{records[at + 3]} << 8 | records[at + 4];
		out.insert(out.end(), records.begin() + at + 5, records.begin() + at + 5 + length);
		at += 5 + length;
	}
	return out;
}

// `message` in handshake records of at most `chunk` bytes each.
Bytes frame(const Bytes &message, size_t chunk, uint8_t type = 22)
{
	Bytes out;
	for (size_t at = 0; at < message.size(); at += chunk) {
		size_t n = std::min(chunk, message.size() - at);
		put8(out, type);
		put16(out, 0x0301);
		put16(out, n);
		out.insert(out.end(), message.begin() + at, message.begin() + at + n);
	}
	return out;
}

// --- hand-built ClientHellos, for what OpenSSL will not send ---

Bytes ext(uint16_t type, const Bytes &body)
{
	Bytes b;
	put16(b, type);
	put16(b, body.size());
	append(b, body);
	return b;
}

Bytes sni_ext(std::string_view name)
{
	Bytes list;
	put8(list, 0);
	put16(list, name.size());
	append(list, name);
	Bytes body;
	put16(body, list.size());
	append(body, list);
	return ext(0, body);
}

Bytes alpn_ext(const std::vector<std::string> &names)
{
	Bytes list;
	for (const auto &n : names) {
		put8(list, n.size());
		append(list, n);
	}
	Bytes body;
	put16(body, list.size());
	append(body, list);
	return ext(16, body);
}

Bytes versions_ext(const std::vector<uint16_t> &versions)
{
	Bytes body;
	put8(body, versions.size() * 2);
	for (uint16_t v : versions)
		put16(body, v);
	return ext(43, body);
}

// A ClientHello handshake message: a 32-byte session id, two suites, null compression, and `tail`
// (normally an extensions block; see hello()).
Bytes hello_message(const Bytes &tail)
{
	Bytes body;
	put16(body, 0x0303);
	body.insert(body.end(), 32, 0x5a); // random
	put8(body, 32);
	body.insert(body.end(), 32, 0x11);
	put16(body, 4);
	put16(body, 0x1301);
	put16(body, 0xc02f);
	put8(body, 1);
	put8(body, 0);
	append(body, tail);
	Bytes msg;
	put8(msg, 1);
	put24(msg, body.size());
	append(msg, body);
	return msg;
}

Bytes extensions_block(const std::vector<Bytes> &extensions)
{
	Bytes all;
	for (const auto &e : extensions)
		append(all, e);
	Bytes block;
	put16(block, all.size());
	append(block, all);
	return block;
}

// One record holding a hello with these extensions.
Bytes hello(const std::vector<Bytes> &extensions)
{
	return frame(hello_message(extensions_block(extensions)), 16384);
}

void expect_same(const ClientHello &a, const ClientHello &b)
{
	EXPECT_EQ(a.sni, b.sni);
	EXPECT_EQ(a.alpn, b.alpn);
	EXPECT_EQ(a.supported_versions, b.supported_versions);
	EXPECT_EQ(a.legacy_version, b.legacy_version);
	EXPECT_EQ(a.has_ech, b.has_ech);
}

// Feeds `input` one more byte at a time, as a slow client would, and checks that the verdict never
// changes once given: every prefix is NeedMore or the final answer. Returns the final answer.
HelloParse parse_growing(const Bytes &input)
{
	HelloParse last;
	for (size_t n = 0; n <= input.size(); n++) {
		HelloParse r = parse_client_hello(std::span(input.data(), n));
		if (last.status != HelloStatus::NeedMore) {
			EXPECT_EQ(r.status, last.status) << "at " << n << " of " << input.size() << " bytes";
			EXPECT_EQ(r.error, last.error);
		}
		if (r.status == HelloStatus::NeedMore) {
			EXPECT_EQ(r.error, "") << "at " << n;
		}
		last = std::move(r);
	}
	return last;
}

Bytes tls13_hello()
{
	ClientOptions o;
	o.sni = "API2.Cursor.sh";
	o.alpn = {"h2", "http/1.1"};
	return openssl_hello(o);
}

} // namespace

TEST(ClientHello, OpenSslTls13WithSniAndAlpn)
{
	Bytes in = tls13_hello();
	ASSERT_FALSE(in.empty());
	HelloParse r = parse(in);
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.error, "");
	EXPECT_EQ(r.hello.sni, "api2.cursor.sh");
	EXPECT_EQ(r.hello.alpn, (std::vector<std::string>{"h2", "http/1.1"}));
	ASSERT_FALSE(r.hello.supported_versions.empty());
	EXPECT_EQ(r.hello.supported_versions.front(), 0x0304);
	EXPECT_THAT(r.hello.supported_versions, testing::Contains(0x0303));
	EXPECT_EQ(r.hello.legacy_version, 0x0303);
	EXPECT_FALSE(r.hello.has_ech);
	EXPECT_EQ(r.hello.bytes, in.size());
}

TEST(ClientHello, OpenSslTls12OnlyHasNoSupportedVersions)
{
	ClientOptions o;
	o.sni = "cursor.com";
	o.alpn = {"http/1.1"};
	o.tls12_only = true;
	Bytes in = openssl_hello(o);
	ASSERT_FALSE(in.empty());
	HelloParse r = parse(in);
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.sni, "cursor.com");
	EXPECT_EQ(r.hello.alpn, std::vector<std::string>{"http/1.1"});
	EXPECT_TRUE(r.hello.supported_versions.empty());
	EXPECT_EQ(r.hello.legacy_version, 0x0303);
	EXPECT_EQ(r.hello.bytes, in.size());
}

TEST(ClientHello, OpenSslWithoutSniOrAlpn)
{
	Bytes in = openssl_hello({});
	ASSERT_FALSE(in.empty());
	HelloParse r = parse(in);
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.sni, "");
	EXPECT_TRUE(r.hello.alpn.empty());
	EXPECT_EQ(r.hello.bytes, in.size());
}

TEST(ClientHello, SniTrailingDotRemovedAndLowerCased)
{
	HelloParse r = parse(openssl_hello_with_sni("Agent.API5.cursor.SH."));
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.sni, "agent.api5.cursor.sh");

	std::string longest = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
	                      std::string(61, 'd'); // 253
	r = parse(hello({sni_ext(longest + ".")}));
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.sni, longest);
	r = parse(hello({sni_ext("_acme-challenge.x-1.example")}));
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.sni, "_acme-challenge.x-1.example");
}

TEST(ClientHello, EveryPrefixOfARealHelloNeedsMore)
{
	ClientOptions tls12;
	tls12.sni = "api2.cursor.sh";
	tls12.tls12_only = true;
	for (const Bytes &in : {tls13_hello(), openssl_hello(tls12), frame(payload(tls13_hello()), 1)}) {
		ASSERT_FALSE(in.empty());
		for (size_t n = 0; n < in.size(); n++) {
			HelloParse r = parse_client_hello(std::span(in.data(), n));
			ASSERT_EQ(r.status, HelloStatus::NeedMore) << "prefix of " << n << " bytes: " << r.error;
			EXPECT_EQ(r.error, "");
		}
		EXPECT_EQ(parse(in).status, HelloStatus::Complete);
	}
}

TEST(ClientHello, ReframedIntoSmallRecordsIsIdentical)
{
	Bytes in = tls13_hello();
	HelloParse whole = parse(in);
	ASSERT_EQ(whole.status, HelloStatus::Complete);
	Bytes message = payload(in);
	for (size_t chunk : {1, 2, 3, 4, 5, 7, 38, 100, 255}) {
		Bytes framed = frame(message, chunk);
		HelloParse r = parse(framed);
		ASSERT_EQ(r.status, HelloStatus::Complete) << "records of " << chunk << ": " << r.error;
		expect_same(r.hello, whole.hello);
		EXPECT_EQ(r.hello.bytes, framed.size());
	}
}

TEST(ClientHello, OpenSslFragmentedHello)
{
	// OpenSSL itself splitting its handshake: small records on request, and 2^14-byte records when
	// the hello is larger than that.
	ClientOptions small;
	small.sni = "api2.cursor.sh";
	for (int i = 0; i < 12; i++)
		small.alpn.push_back("protocol-" + std::to_string(i) + std::string(40, 'x'));
	small.max_fragment = 512;
	ClientOptions large = small;
	large.alpn.clear();
	for (int i = 0; i < 100; i++)
		large.alpn.push_back(std::to_string(i) + std::string(200, 'p'));
	large.max_fragment = 0;
	for (const ClientOptions &o : {small, large}) {
		Bytes in = openssl_hello(o);
		ASSERT_FALSE(in.empty());
		ASSERT_GT(in.size(), payload(in).size() + 5) << "OpenSSL wrote one record";
		HelloParse r = parse(in);
		ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
		EXPECT_EQ(r.hello.sni, "api2.cursor.sh");
		EXPECT_EQ(r.hello.alpn, o.alpn);
		EXPECT_EQ(r.hello.bytes, in.size());
	}
}

TEST(ClientHello, BytesAfterTheHelloAreIgnored)
{
	Bytes in = tls13_hello();
	Bytes more = in;
	append(more, Bytes{20, 3, 3, 0, 1, 1}); // change_cipher_spec, as TLS 1.3 middlebox compatibility sends
	append(more, Bytes{23, 3, 3, 0x40, 0}); // early data, cut off
	HelloParse r = parse(more);
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.bytes, in.size());
	EXPECT_EQ(r.hello.sni, "api2.cursor.sh");
}

TEST(ClientHello, GreaseIgnoredAndEchNoticed)
{
	Bytes in = hello({ext(0x0a0a, {}), sni_ext("api2.cursor.sh"), versions_ext({0x3a3a, 0x0304, 0x0303}),
	                  ext(0xfe0d, Bytes(90, 7)), ext(0xfafa, {0}), ext(0x0a0a, {})});
	HelloParse r = parse(in);
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.supported_versions, (std::vector<uint16_t>{0x0304, 0x0303}));
	EXPECT_TRUE(r.hello.has_ech);
	EXPECT_EQ(r.hello.sni, "api2.cursor.sh");
}

TEST(ClientHello, OldHelloWithoutExtensions)
{
	HelloParse r = parse(frame(hello_message({}), 16384));
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.sni, "");
	EXPECT_TRUE(r.hello.supported_versions.empty());
}

TEST(ClientHello, NotTls)
{
	auto not_tls = [](const Bytes &in) {
		HelloParse r = parse_growing(in);
		EXPECT_EQ(r.status, HelloStatus::NotTls);
		EXPECT_NE(r.error, "");
		return r.error;
	};
	Bytes http;
	append(http, "GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\nAuthorization: Bearer key_0123\r\n\r\n");
	std::string why = not_tls(http);
	EXPECT_THAT(why, HasSubstr("plaintext"));
	EXPECT_THAT(why, Not(HasSubstr("GET"))); // client bytes stay out of the journal
	EXPECT_EQ(parse(Bytes{'P'}).status, HelloStatus::NotTls) << "the first byte decides";

	// SSLv2-compatible CLIENT-HELLO (2-byte header with the high bit set, version 3.1).
	EXPECT_THAT(not_tls({0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10}), HasSubstr("SSLv2"));
	EXPECT_THAT(not_tls({22, 3, 0, 0, 50}), HasSubstr("3.0")); // SSL 3.0 record
	EXPECT_THAT(not_tls({22, 3, 5, 0, 50}), HasSubstr("3.5"));
	EXPECT_THAT(not_tls({22, 2, 0}), HasSubstr("major 2"));
	EXPECT_THAT(not_tls({23, 3, 3, 0, 10}), HasSubstr("content type 23"));

	std::mt19937 rng(42);
	for (int i = 0; i < 500; i++) {
		Bytes junk(1 + rng() % 64);
		for (auto &b : junk)
			b = static_cast<uint8_t>(rng());
		if (junk[0] == 22)
			junk[0] = 0;
		not_tls(junk);
	}
}

TEST(ClientHello, MalformedRecords)
{
	auto malformed = [](const Bytes &in) {
		HelloParse r = parse_growing(in);
		EXPECT_EQ(r.status, HelloStatus::Malformed);
		return r.error;
	};
	EXPECT_THAT(malformed({22, 3, 1, 0x48, 0x01}), HasSubstr("record of 18433 bytes"));
	EXPECT_EQ(parse(Bytes{22, 3, 1, 0x48, 0x00}).status, HelloStatus::NeedMore); // 2^14 + 2048 is allowed
	EXPECT_THAT(malformed({22, 3, 1, 0, 0}), HasSubstr("empty handshake record"));
	EXPECT_THAT(malformed({22, 3, 1, 0, 4, 2, 0, 0, 0}), HasSubstr("type 2, not ClientHello"));

	Bytes message = payload(tls13_hello());
	// A change_cipher_spec record between two pieces of the hello.
	Bytes first = frame(Bytes(message.begin(), message.begin() + 100), 100);
	Bytes interleaved = first;
	append(interleaved, Bytes{20, 3, 3, 0, 1, 1});
	append(interleaved, frame(Bytes(message.begin() + 100, message.end()), 16384));
	EXPECT_THAT(malformed(interleaved), HasSubstr("type 20 arrived before the ClientHello was complete"));
	// A later record with a version no TLS stack writes.
	Bytes bad_version = first;
	append(bad_version, Bytes{22, 2, 0, 0, 1, 0});
	EXPECT_THAT(malformed(bad_version), HasSubstr("major 2"));

	// The hello's record goes on past it: a second handshake message in the same record.
	Bytes extra = message;
	append(extra, Bytes{20, 0, 0, 0});
	EXPECT_THAT(malformed(frame(extra, 16384)), HasSubstr("4 more bytes after it"));
}

TEST(ClientHello, MalformedBody)
{
	auto malformed = [](const Bytes &in) {
		HelloParse r = parse_growing(in);
		EXPECT_EQ(r.status, HelloStatus::Malformed);
		return r.error;
	};
	Bytes good = hello({sni_ext("api2.cursor.sh"), alpn_ext({"h2"})});
	ASSERT_EQ(parse(good).status, HelloStatus::Complete);

	// The extensions block must fill the rest of the hello exactly. Record and handshake lengths
	// are at offsets 3..4 and 6..8.
	Bytes longer = good;
	longer[8] += 3;
	longer[4] += 3;
	append(longer, Bytes{0, 0, 0}); // three bytes of garbage inside the hello, after its extensions
	EXPECT_THAT(malformed(longer), HasSubstr("extensions block is"));
	Bytes shorter = good;
	shorter[8] -= 1;
	shorter[4] -= 1;
	shorter.pop_back();
	EXPECT_THAT(malformed(shorter), HasSubstr("extensions block is"));

	Bytes truncated_ext;
	put16(truncated_ext, 10);
	append(truncated_ext, Bytes{0, 16, 0, 20, 0, 4, 2, 'h', '2', 0});
	EXPECT_THAT(malformed(frame(hello_message(truncated_ext), 16384)), HasSubstr("an extension runs past"));

	EXPECT_THAT(malformed(hello({alpn_ext({"h2"}), sni_ext("a.example"), alpn_ext({"http/1.1"})})),
	            HasSubstr("extension 16 appears twice"));
	EXPECT_THAT(malformed(hello({ext(21, {}), ext(21, {})})), HasSubstr("extension 21 appears twice"));

	EXPECT_THAT(malformed(hello({alpn_ext({"h2", "", "http/1.1"})})), HasSubstr("empty ALPN protocol name"));
	EXPECT_THAT(malformed(hello({ext(16, {0, 0})})), HasSubstr("ALPN list is 0 bytes"));
	EXPECT_THAT(malformed(hello({ext(16, {0, 4, 2, 'h', '2'})})), HasSubstr("ALPN list is 4 bytes"));
	EXPECT_THAT(malformed(hello({ext(16, {0, 3, 5, 'h', '2'})})),
	            HasSubstr("ALPN protocol name runs past its extension"));
	EXPECT_THAT(malformed(hello({ext(43, {3, 3, 4, 3})})), HasSubstr("supported_versions list is 3 bytes"));
	EXPECT_THAT(malformed(hello({ext(43, {})})), HasSubstr("supported_versions length runs past"));

	// The fixed fields.
	auto message = [&](std::initializer_list<uint8_t> b) {
		Bytes m{1, 0, 0, static_cast<uint8_t>(b.size())};
		m.insert(m.end(), b);
		return frame(m, 16384);
	};
	EXPECT_THAT(malformed(message({3})), HasSubstr("legacy_version runs past"));
	EXPECT_THAT(malformed(message({2, 0})), HasSubstr("legacy_version major 2"));
	Bytes m = message({3, 3});
	m.insert(m.end(), 32, 0);
	m.push_back(33); // session id length
	m[8] = static_cast<uint8_t>(m.size() - 9);
	m[4] = static_cast<uint8_t>(m.size() - 5);
	EXPECT_THAT(malformed(m), HasSubstr("legacy_session_id of 33 bytes"));
	m.back() = 0;
	for (uint8_t suites : {0, 3}) {
		Bytes c = m;
		append(c, Bytes{0, suites, 0x13, 0x01, 0x13});
		c[8] = static_cast<uint8_t>(c.size() - 9);
		c[4] = static_cast<uint8_t>(c.size() - 5);
		EXPECT_THAT(malformed(c), HasSubstr("cipher_suites of " + std::to_string(suites) + " bytes"));
	}
	append(m, Bytes{0, 2, 0x13, 0x01, 0});
	m[8] = static_cast<uint8_t>(m.size() - 9);
	m[4] = static_cast<uint8_t>(m.size() - 5);
	EXPECT_THAT(malformed(m), HasSubstr("legacy_compression_methods is empty"));
}

TEST(ClientHello, MalformedSni)
{
	auto bad_sni = [](const Bytes &in) {
		EXPECT_FALSE(in.empty());
		HelloParse r = parse_growing(in);
		EXPECT_EQ(r.status, HelloStatus::Malformed);
		EXPECT_THAT(r.error, HasSubstr("SNI host_name"));
		return r.error;
	};
	// What a real client sends when told to use these names.
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("104.18.19.125")), HasSubstr("IP address literal"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("127.1")), HasSubstr("IP address literal"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("0x7f000001")), HasSubstr("IP address literal"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("10.0.0.1.")), HasSubstr("IP address literal"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("2606:4700::6812:137d")), HasSubstr("':'"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("api2.cursor.sh:443")), HasSubstr("':'"));
	std::string why = bad_sni(openssl_hello_with_sni("bad host.cursor.sh"));
	EXPECT_THAT(why, HasSubstr("character not allowed"));
	EXPECT_THAT(why, Not(HasSubstr("bad host"))); // client bytes stay out of the journal
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("api2*.cursor.sh")), HasSubstr("character not allowed"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("api2..cursor.sh")), HasSubstr("empty label"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni(".cursor.sh")), HasSubstr("empty label"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni("cursor.sh..")), HasSubstr("empty label"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni(".")), HasSubstr("empty"));
	EXPECT_THAT(bad_sni(openssl_hello_with_sni((std::string(64, 'a') + ".com").c_str())), HasSubstr("63"));
	// Names OpenSSL will not send.
	EXPECT_THAT(bad_sni(hello({sni_ext("")})), HasSubstr("empty"));
	EXPECT_THAT(bad_sni(hello({sni_ext(std::string("api2\0.cursor.sh", 15))})), HasSubstr("character not allowed"));
	EXPECT_THAT(bad_sni(hello({sni_ext("caf\xc3\xa9.example")})), HasSubstr("character not allowed"));
	std::string too_long = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
	                       std::string(62, 'd'); // 254
	EXPECT_THAT(bad_sni(hello({sni_ext(too_long)})), HasSubstr("longer than 253"));
	EXPECT_THAT(bad_sni(hello({sni_ext(too_long + ".")})), HasSubstr("longer than 253"));
	EXPECT_THAT(bad_sni(hello({sni_ext(std::string(300, 'a'))})), HasSubstr("longer than 253"));

	// The list around the name.
	auto malformed = [](const Bytes &in) {
		HelloParse r = parse_growing(in);
		EXPECT_EQ(r.status, HelloStatus::Malformed);
		return r.error;
	};
	EXPECT_THAT(malformed(hello({ext(0, {0, 0})})), HasSubstr("server_name list is 0 bytes"));
	EXPECT_THAT(malformed(hello({ext(0, {})})), HasSubstr("server_name list length runs past"));
	EXPECT_THAT(malformed(hello({ext(0, {0, 6, 0, 0, 2, 'a', 'b'})})), HasSubstr("server_name list is 6 bytes"));
	EXPECT_THAT(malformed(hello({ext(0, {0, 4, 0, 0, 2, 'a'})})), HasSubstr("server_name entry runs past"));
	Bytes two;
	append(two, Bytes{0, 14, 0, 0, 4});
	append(two, "a.io");
	append(two, Bytes{0, 0, 4});
	append(two, "b.io");
	EXPECT_THAT(malformed(hello({ext(0, two)})), HasSubstr("more than one host_name"));

	// An unknown name type is skipped; the host_name after it is the SNI.
	Bytes other{0, 15, 7, 0, 3, 'x', 'y', 'z', 0, 0, 6};
	append(other, "a.b.io");
	HelloParse r = parse(hello({ext(0, other)}));
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.sni, "a.b.io");
}

TEST(ClientHello, TooLarge)
{
	// The handshake header alone says so.
	HelloParse r = parse_growing({22, 3, 1, 0x40, 0, 1, 0, 0xff, 0xfd});
	EXPECT_EQ(r.status, HelloStatus::TooLarge);
	EXPECT_THAT(r.error, HasSubstr("65537 bytes"));

	// Right at the limit, in 2^14-byte records: a 65516-byte message takes 4 records, 65536 bytes.
	auto padded = [](size_t message_bytes) {
		Bytes m = hello_message(extensions_block({sni_ext("api2.cursor.sh"), ext(21, {})}));
		return hello_message(
		    extensions_block({sni_ext("api2.cursor.sh"), ext(21, Bytes(message_bytes - m.size()))}));
	};
	Bytes at_limit = frame(padded(65516), 16384);
	ASSERT_EQ(at_limit.size(), kMaxClientHelloBytes);
	r = parse(at_limit);
	ASSERT_EQ(r.status, HelloStatus::Complete) << r.error;
	EXPECT_EQ(r.hello.bytes, kMaxClientHelloBytes);
	EXPECT_EQ(r.hello.sni, "api2.cursor.sh");

	Bytes past_limit = frame(padded(65517), 16384);
	r = parse(past_limit);
	EXPECT_EQ(r.status, HelloStatus::TooLarge);
	EXPECT_THAT(r.error, HasSubstr("records run past 65536 bytes"));

	// A message well under the limit, in records so small that buffering it would pass the limit:
	// a caller that holds kMaxClientHelloBytes always has a verdict.
	Bytes tiny_records = frame(padded(12000), 1);
	ASSERT_GT(tiny_records.size(), kMaxClientHelloBytes);
	EXPECT_EQ(parse_client_hello(std::span(tiny_records.data(), kMaxClientHelloBytes)).status,
	          HelloStatus::TooLarge);
}

TEST(ClientHello, StatusNames)
{
	EXPECT_STREQ(to_string(HelloStatus::NeedMore), "need_more");
	EXPECT_STREQ(to_string(HelloStatus::Complete), "complete");
	EXPECT_STREQ(to_string(HelloStatus::NotTls), "not_tls");
	EXPECT_STREQ(to_string(HelloStatus::Malformed), "malformed");
	EXPECT_STREQ(to_string(HelloStatus::TooLarge), "too_large");
}
