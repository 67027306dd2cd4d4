// libFuzzer target for what cordond reads from a CI issuer when it fetches the issuer's keys
// (identity/jwks_fetch.cc, identity/jwt.h): the HTTP/1.1 response (ResponseReader: status line,
// headers, Content-Length, chunked or close-delimited body), the URLs it connects to (parse_url:
// the issuer's discovery URL and the document's jwks_uri) and the key set in the body
// (KeySet::parse, also what a policy's jwks_file holds), and the discovery document that names
// the key set's URL (discovery_jwks_uri).
//
// ResponseReader and parse_url are file-local, so this target includes jwks_fetch.cc itself.
// Besides crashes, leaks, hangs and undefined behaviour under the sanitizers, it checks:
// - a response reads the same whichever way the connection splits it into reads (all at once, or
//   in pieces the input chooses), and a body it returns is at most the limit;
// - a URL that parses has a lower-case host, a port, a target starting with '/', no spaces or
//   controls, and its authority and target parse back to the same URL;
// - a key set that parses holds only usable keys (RS256 with an RSA key of 2048..8192 bits, ES256
//   with a P-256 key), each found by its kid, and every entry of "keys" is either kept or skipped
//   with a reason.
#include <openssl/evp.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "identity/jwks_fetch.cc"

using namespace cordon;
using namespace cordon::identity;

namespace {

// Small enough that the fuzzer meets it; the real limit is 1 MiB.
constexpr size_t kFuzzMaxBody = 2048;

void check(bool ok, const char *what, std::string_view detail = {})
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n%.2000s\n", what, std::string(detail).c_str());
		std::abort();
	}
}

struct Outcome {
	bool ok = false;
	std::string body;
};

// Feeds `in` in pieces ending at `cuts` (ascending), then the close, as get_until does.
Outcome read_response(std::string_view in, const std::vector<size_t> &cuts)
{
	ResponseReader reader(kFuzzMaxBody);
	size_t start = 0;
	for (size_t i = 0; i <= cuts.size(); i++) {
		const size_t end = i < cuts.size() ? cuts[i] : in.size();
		if (end == start)
			continue;
		auto progress = reader.feed(in.substr(start, end - start));
		start = end;
		if (!progress) {
			check(!progress.error().message().empty(), "errors say something");
			return {};
		}
		if (*progress == ResponseReader::Progress::done)
			return {true, reader.take_body()};
	}
	auto body = reader.finish();
	if (!body)
		return {};
	return {true, std::move(*body)};
}

void fuzz_response(std::string_view in)
{
	const Outcome whole = read_response(in, {});
	if (whole.ok)
		check(whole.body.size() <= kFuzzMaxBody, "a body is at most the limit");
	// Cut points from the input's own bytes, so the fuzzer steers them: every 7th byte's value,
	// taken as a stride of 1..64 bytes (below 128) or of up to 2 KiB (past the header and chunk
	// line limits).
	std::vector<size_t> cuts;
	size_t at = 0;
	for (size_t i = 0; i < in.size() && cuts.size() < 16; i += 7) {
		const unsigned char b = static_cast<unsigned char>(in[i]);
		at += b < 128 ? 1 + b % 64 : 1 + (b - 128) * 16u;
		if (at >= in.size())
			break;
		cuts.push_back(at);
	}
	std::vector<size_t> bytewise;
	if (in.size() <= 256)
		for (size_t i = 1; i < in.size(); i++)
			bytewise.push_back(i);
	for (const auto *split : {&cuts, &bytewise}) {
		const Outcome pieces = read_response(in, *split);
		check(pieces.ok == whole.ok, "a response reads the same however it is split", in);
		check(pieces.body == whole.body, "the body is the same however the response is split", in);
	}
	// The body is what KeySet::parse reads.
	if (whole.ok)
		(void)KeySet::parse(whole.body);
}

void fuzz_url(std::string_view in)
{
	if (in.size() > 512)
		return;
	auto url = parse_url(in);
	if (!url)
		return;
	check(!url->host.empty(), "a URL has a host", in);
	for (char c : url->host)
		check(!std::isupper(static_cast<unsigned char>(c)), "the host is lower case", in);
	check(url->port != 0, "a port", in);
	check(!url->target.empty() && url->target[0] == '/', "the target starts with '/'", in);
	for (char c : url->target)
		check(static_cast<unsigned char>(c) > 0x20 && c != 0x7f && c != '#', "no space, control or fragment",
		      in);
	check(url->authority.find('@') == std::string::npos, "no user info", in);
	auto again = parse_url("https://" + url->authority + url->target);
	check(again.ok(), "authority and target parse again", in);
	check(again->host == url->host && again->port == url->port && again->target == url->target &&
	          again->authority == url->authority && again->ip_literal == url->ip_literal,
	      "authority and target parse to the same URL", in);
}

void fuzz_key_set(std::string_view in)
{
	auto set = KeySet::parse(in);
	if (!set) {
		check(!set.error().message().empty(), "errors say something");
		return;
	}
	const json doc = json::parse(in.begin(), in.end(), nullptr, false);
	check(doc.is_object() && doc.contains("keys") && doc["keys"].is_array(), "a set is {\"keys\":[...]}", in);
	check(set->size() >= 1, "a parsed set is not empty", in);
	check(set->size() + set->skipped().size() == doc["keys"].size(), "each entry is kept or skipped", in);
	for (const Jwk &k : set->keys()) {
		check(!k.kid.empty() && set->find(k.kid) == &k, "each key is found by its kid", in);
		check(k.key != nullptr, "each key holds a public key", in);
		if (k.alg == "RS256") {
			check(EVP_PKEY_is_a(k.key.get(), "RSA") == 1, "RS256 keys are RSA", in);
			const int bits = EVP_PKEY_get_bits(k.key.get());
			check(bits >= kMinRsaBits && bits <= kMaxRsaBits, "RSA keys are 2048..8192 bits", in);
		} else {
			check(k.alg == "ES256", "keys are RS256 or ES256", in);
			check(EVP_PKEY_is_a(k.key.get(), "EC") == 1, "ES256 keys are EC", in);
			char group[64] = {};
			size_t len = 0;
			check(EVP_PKEY_get_utf8_string_param(k.key.get(), "group", group, sizeof(group), &len) == 1 &&
			          std::string_view(group, len) == "prime256v1",
			      "ES256 keys are P-256", in);
		}
	}
	for (const std::string &why : set->skipped())
		check(why.find(": ") != std::string::npos, "a skipped key has a reason", why);
}

void fuzz_discovery(std::string_view in)
{
	const std::string issuer = "https://issuer.example";
	auto uri = discovery_jwks_uri(issuer, issuer + "/.well-known/openid-configuration", in);
	if (!uri) {
		check(uri.error().message().starts_with(issuer + "/.well-known/openid-configuration: "),
		      "errors name the document", uri.error().message());
		return;
	}
	const json doc = json::parse(in.begin(), in.end(), nullptr, false);
	check(doc.is_object() && doc.value("issuer", "") == issuer, "only the configured issuer's document", in);
	check(uri->starts_with("https://"), "the key set is fetched over https", in);
	fuzz_url(*uri);
}

} // namespace

// Undefined behaviour is a finding, not a warning: FUZZ_FLAGS lets UBSan recover and go on.
extern "C" const char *__ubsan_default_options()
{
	return "halt_on_error=1:print_stacktrace=1";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view in(reinterpret_cast<const char *>(data), size);
	fuzz_key_set(in);
	fuzz_response(in);
	fuzz_url(in);
	fuzz_discovery(in);
	return 0;
}
