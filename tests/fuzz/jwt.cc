// libFuzzer target for CI workload-token verification (identity/jwt.h). Every input is tried as a
// token (decode, verify), as a JWKS (KeySet::parse) and as a glob and base64url text. Besides
// crashes, leaks, hangs and undefined behaviour under the sanitizers, it checks:
// - verify accepts only what decode accepts, never more than kMaxTokenBytes, only with the alg the
//   key is pinned to, and only claims that pass the policy (issuer, audience, times, sub, globs);
// - re-signed with the real ES256 key (so arbitrary headers and claims get past the signature),
//   the token is still judged by the same rules;
// - a key set that parses holds only RS256/ES256 keys, each found by its kid;
// - the strict base64url decoder is canonical: what it accepts encodes back to the same text;
// - glob_match agrees with a plain dynamic-programming matcher.
//
// The keys are fixed (test-only, below) so that seed tokens carry valid signatures. Rebuild the seed
// corpus with:
//   clang++ -std=c++20 -Iuserspace -DCORDON_JWT_FUZZ_WRITE_SEEDS tests/fuzz/jwt.cc \
//       userspace/identity/jwt.cc -lcrypto -o /tmp/jwt-seeds && /tmp/jwt-seeds tests/fuzz/corpus/jwt
#include "identity/jwt.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

using namespace cordon;
using namespace cordon::identity;
using json = nlohmann::json;

namespace {

// Test-only keys: never trusted anywhere.
constexpr const char *kRsaPem = R"(-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCWELPqtMT7Aq7V
vYq2Anyd76JWYwLzxEzQCwATxlrRqeec3ihSI6gxGiVn3YB1MIdxuR1G/U7aPo44
gByp+tP6+50LVRCnRtiYg098jsNHsSgW+mTdj8fIGenIrtojRZ5Okr6AZ5IMAOqJ
wWi+p5ZJxc+9sdfI+sC0m8zDFVU+0hzXPcaZ/ZFKp9KVb0wghMWsUDkQUSzAnraV
uvdpxY5oVnB6xzqb5S1GK1sQOYkzaFGO9PUbMxFIEJ5d3IO8AQTKty8fC/wb3BZr
4VP4f6rs0TQNtbg3YR2X5LtixGykSmF+/TmZ5AGPKUM+q1mLrewwkK1kJw13gfqg
vuPdk/erAgMBAAECggEAF7s0eJ11uSxHcc2zrezewCsxRPALe3lDnHLg5D+uBRIV
ap1HSxYQdxNnbvF8awvtn3JiyuMsIR9bZlv8LHVaKIq53xzosUtm3VeGrm/1OdUu
PdQDN3aRZXeTnQTpwkI0MsDKF4xJcFSEwpwvcFcYUTpTC/Cf60ycRPOOghtRi8l4
dORb+qtKMGJEXW4HZP4b8hYhsYk79ID1AqVyLvLibJfHzPniYNnZLZpXpyQ3xtY0
V66Uklu23a65QuypT6RpmpfF9w3xqwhwQN54X5n05JYllV3xPhA4HnyL/tpkNxEf
w62OK918Ula8uzhfLpD3V5alO1kV+kAsYE+SGgtvwQKBgQDLguu1o4IgqMMp82fX
PV8rl/utA2vYJABqkPIo3BV26fyTjkzW3ep0HcDVL7O4afv2gLQ2ZTRrRXsZwBIp
qA4B2arXymg9AAxXcrF4D5AeYTnb5E9qQKaIe5JjZDSId8zsfUxxGlh7ueXTxJu1
FGCKadHisQnuP0I942LsdKWT0wKBgQC8xO+8Np+t/1mfpjfy4tA2Yb2t8r1HOvpY
Lms4KiqTAsrJJPO8f7pA1CYFZVFgqwqoxHkn0JDY9U4b8VSrx+1ABtmK1hMUjLEi
b68WWbY7EX5kbOTn/5XGDORQZr2pDaFaA2+5izZZeX+H7oXzI89C75nRqlyesVQ5
OF74QlwdyQKBgF8bENJy1iYzF/mr4ZRJ/wbdYOVK2wRIVtV2ZWTI7VMEKGBAuRIU
5TNckDhQsZl2FiTtospk42laMBwpkZNcESe2NEviMHKJajsXw24LP9uiripf+Oj7
y5euwAuo0ZARBHhkWevlVwKDLq+XivjFzBQDPe3FtJFdiLRpZlqAbLy3AoGAHt2k
xYW4/l5ubShkpZZorTu2JCc4w9jk7l5IsdpTM86VEea04/GOpuMJhIBYmhHdoFLf
7J6x0Ifrya3gRmZeaMW19HmkjQukOxk/68unfGkT3Z/gnf6wor2g53SlNmtAItPF
BPW6YU74h2V9CZClZzB+WkYc9uXP+7s37CgNn+ECgYEAiX3+kX1ijnRs7Ad8qrnD
hc3EjuA5YiOpS8KvRzygL8AXE6LUgwqFqwW64z8zNJXDN7fm3ZXbGXwf7MgZTDyF
jFhUb7hZ/6et2OXxVGSasFyH3UeDvLfF8TYW8ALP06efmmFt5vk/E2VggxPM4g3o
30dBUJcvCVzOm2IgPwbhq4A=
-----END PRIVATE KEY-----
)";
constexpr const char *kEcPem = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgGgk9H/sOAsv1Al5X
3jEHQZy119kHhGk7wmKDjVw547WhRANCAAS/8VjV7e9TYVGg3cjCZyG6xDQPED2h
X2CWxBzJjHYto/dO71U+qGmN5BbTmOojbLepINXoGsXVSPU1Mc+ARRGz
-----END PRIVATE KEY-----
)";

constexpr int64_t kNow = 1'700'000'000;
constexpr int64_t kLeeway = 30;
constexpr const char *kIssuer = "https://issuer.example";

void check(bool ok, const char *what, std::string_view detail = {})
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n%.2000s\n", what, std::string(detail).c_str());
		std::abort();
	}
}

tls::EvpPkeyPtr load_key(const char *pem)
{
	tls::BioPtr bio(BIO_new_mem_buf(pem, -1));
	tls::EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
	check(key != nullptr, "test key loads");
	return key;
}

std::string bn_param(EVP_PKEY *key, const char *name, int pad = 0)
{
	BIGNUM *bn = nullptr;
	check(EVP_PKEY_get_bn_param(key, name, &bn) == 1, "key parameter");
	tls::BignumPtr owned(bn);
	std::string out(pad ? static_cast<size_t>(pad) : static_cast<size_t>(BN_num_bytes(bn)), '\0');
	BN_bn2binpad(bn, reinterpret_cast<unsigned char *>(out.data()), static_cast<int>(out.size()));
	return out;
}

std::string digest_sign(EVP_PKEY *key, const char *digest, std::string_view input)
{
	tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
	size_t len = 0;
	check(EVP_DigestSignInit_ex(ctx.get(), nullptr, digest, nullptr, nullptr, key, nullptr) == 1, "sign init");
	check(EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char *>(input.data()),
	                     input.size()) == 1,
	      "sign size");
	std::string sig(len, '\0');
	check(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char *>(sig.data()), &len,
	                     reinterpret_cast<const unsigned char *>(input.data()), input.size()) == 1,
	      "sign");
	sig.resize(len);
	return sig;
}

std::string es256_raw(EVP_PKEY *key, std::string_view input)
{
	const std::string der = digest_sign(key, "SHA256", input);
	const auto *p = reinterpret_cast<const unsigned char *>(der.data());
	ECDSA_SIG *sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
	check(sig != nullptr, "ECDSA signature parses");
	std::string out(64, '\0');
	BN_bn2binpad(ECDSA_SIG_get0_r(sig), reinterpret_cast<unsigned char *>(out.data()), 32);
	BN_bn2binpad(ECDSA_SIG_get0_s(sig), reinterpret_cast<unsigned char *>(out.data()) + 32, 32);
	ECDSA_SIG_free(sig);
	return out;
}

struct Fixture {
	tls::EvpPkeyPtr rsa = load_key(kRsaPem);
	tls::EvpPkeyPtr ec = load_key(kEcPem);
	std::string jwks;
	KeySet keys;
	IssuerPolicy policy;

	Fixture()
	{
		json set = {{"keys",
		             {{{"kty", "RSA"},
		               {"kid", "rsa1"},
		               {"use", "sig"},
		               {"alg", "RS256"},
		               {"n", base64url_encode(bn_param(rsa.get(), OSSL_PKEY_PARAM_RSA_N))},
		               {"e", base64url_encode(bn_param(rsa.get(), OSSL_PKEY_PARAM_RSA_E))}},
		              {{"kty", "EC"},
		               {"kid", "ec1"},
		               {"crv", "P-256"},
		               {"x", base64url_encode(bn_param(ec.get(), OSSL_PKEY_PARAM_EC_PUB_X, 32))},
		               {"y", base64url_encode(bn_param(ec.get(), OSSL_PKEY_PARAM_EC_PUB_Y, 32))}}}}};
		jwks = set.dump();
		auto parsed = KeySet::parse(jwks);
		check(parsed.ok() && parsed->size() == 2, "the fixed key set parses");
		keys = std::move(parsed).value();
		policy.issuer = kIssuer;
		policy.audiences = {"cordon", "cordon-ci"};
		policy.required_claims = {{"repository", "acme/*"}, {"run_attempt", "?"}};
	}

	static Fixture &get()
	{
		static Fixture f;
		return f;
	}
};

// An oracle for glob_match: match[i][j] says pattern[i..] matches text[j..]. Literals take one byte,
// '?' one UTF-8 character, '*' any number of characters.
[[maybe_unused]] bool glob_reference(std::string_view p, std::string_view t)
{
	auto next = [&](size_t j) {
		j++;
		while (j < t.size() && (static_cast<unsigned char>(t[j]) & 0xc0) == 0x80)
			j++;
		return j;
	};
	std::vector<std::vector<char>> match(p.size() + 1, std::vector<char>(t.size() + 1, 0));
	match[p.size()][t.size()] = 1;
	for (size_t i = p.size(); i-- > 0;)
		for (size_t j = t.size() + 1; j-- > 0;) {
			if (p[i] == '*')
				match[i][j] = match[i + 1][j] || (j < t.size() && match[i][next(j)]);
			else if (p[i] == '?')
				match[i][j] = j < t.size() && match[i + 1][next(j)];
			else
				match[i][j] = j < t.size() && p[i] == t[j] && match[i + 1][j + 1];
		}
	return match[0][0];
}

// Well-formed UTF-8 (shortest forms, no surrogates, at most U+10FFFF).
[[maybe_unused]] bool valid_utf8(std::string_view s)
{
	for (size_t i = 0; i < s.size();) {
		const unsigned char c = static_cast<unsigned char>(s[i]);
		size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
		if (n == 0 || i + n > s.size())
			return false;
		uint32_t cp = n == 1 ? c : c & (0xff >> (n + 1));
		for (size_t k = 1; k < n; k++) {
			const unsigned char cc = static_cast<unsigned char>(s[i + k]);
			if ((cc & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (cc & 0x3f);
		}
		static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
		if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n;
	}
	return true;
}

// What an accepted token must satisfy, checked apart from verify's own code.
[[maybe_unused]] void check_accepted(std::string_view token, const VerifiedToken &v, const Fixture &f)
{
	check(token.size() <= kMaxTokenBytes, "accepted tokens are at most kMaxTokenBytes");
	auto d = decode(token);
	check(d.ok(), "verify accepts only what decode accepts", token);
	const Jwk *key = f.keys.find(d->header.value("kid", ""));
	check(key != nullptr, "accepted with a known kid", token);
	check(d->header.value("alg", "") == key->alg, "accepted only with the pinned alg", token);
	check(!d->header.contains("crit"), "crit refused", token);
	check(v.claims == d->payload, "claims are the payload", token);
	check(v.issuer == kIssuer && d->payload.value("iss", "") == kIssuer, "issuer", token);
	const json &aud = d->payload["aud"];
	bool aud_ok = aud == "cordon" || aud == "cordon-ci";
	if (aud.is_array())
		for (const json &a : aud)
			aud_ok = aud_ok || a == "cordon" || a == "cordon-ci";
	check(aud_ok, "audience", token);
	check(d->payload.contains("exp") && d->payload["exp"].is_number(), "exp present", token);
	check(v.expires_at + kLeeway >= kNow, "not expired", token);
	check(d->payload["sub"].is_string() && v.subject == d->payload["sub"].get<std::string>(), "sub", token);
	check(d->payload["repository"].is_string() &&
	          d->payload["repository"].get<std::string>().rfind("acme/", 0) == 0,
	      "required claim glob", token);
	check(v.fingerprint.size() == 64, "fingerprint is hex SHA-256", token);
}

} // namespace

#ifndef CORDON_JWT_FUZZ_WRITE_SEEDS

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Fixture &f = Fixture::get();
	const std::string_view in(reinterpret_cast<const char *>(data), size);

	// As a token, signature and all.
	auto decoded = decode(in);
	auto verified = verify(in, f.keys, f.policy, kNow, kLeeway);
	check(!verified.ok() || decoded.ok(), "verify accepts only what decode accepts");
	if (verified)
		check_accepted(in, *verified, f);
	if (!decoded)
		check(!decoded.error().message().empty(), "errors say something");

	// Re-signed with the real EC key: the claim rules, not the signature, decide.
	if (decoded) {
		const std::string token =
		    decoded->signing_input + "." + base64url_encode(es256_raw(f.ec.get(), decoded->signing_input));
		auto resigned = verify(token, f.keys, f.policy, kNow, kLeeway);
		if (resigned)
			check_accepted(token, *resigned, f);
		else
			check(!resigned.error().message().empty(), "errors say something");
	}

	// As a key set.
	if (auto set = KeySet::parse(in); set) {
		check(set->size() >= 1, "a parsed set is not empty");
		for (const Jwk &k : set->keys()) {
			check(k.alg == "RS256" || k.alg == "ES256", "keys are RS256 or ES256");
			check(set->find(k.kid) == &k, "each key is found by its kid");
			check(k.key != nullptr, "each key holds a public key");
		}
	}

	// base64url: strict means canonical.
	if (auto bytes = base64url_decode(in); bytes)
		check(base64url_encode(*bytes) == in, "base64url decode is canonical", in);
	auto back = base64url_decode(base64url_encode(in));
	check(back.ok() && *back == in, "base64url round trip");

	// glob: against the reference, on small valid-UTF-8 inputs split at the first newline.
	if (size <= 64) {
		const size_t nl = in.find('\n');
		if (nl != std::string_view::npos) {
			std::string_view pattern = in.substr(0, nl), text = in.substr(nl + 1);
			if (valid_utf8(pattern) && valid_utf8(text))
				check(glob_match(pattern, text) == glob_reference(pattern, text),
				      "glob agrees with reference", in);
		}
	}
	return 0;
}

#else // the seed corpus

namespace {

std::string b64json(const json &j)
{
	return base64url_encode(j.dump());
}

json claims()
{
	return {{"iss", kIssuer},           {"aud", "cordon"},  {"sub", "repo:acme/app:ref:refs/heads/main"},
	        {"repository", "acme/app"}, {"run_attempt", 1}, {"exp", kNow + 600},
	        {"iat", kNow - 10},         {"nbf", kNow - 10}};
}

std::string token(const json &header, const json &payload, const std::string &signature_of_input = "es256")
{
	Fixture &f = Fixture::get();
	const std::string input = b64json(header) + "." + b64json(payload);
	std::string sig;
	if (signature_of_input == "es256")
		sig = es256_raw(f.ec.get(), input);
	else if (signature_of_input == "es256-der")
		sig = digest_sign(f.ec.get(), "SHA256", input);
	else if (signature_of_input == "rs256")
		sig = digest_sign(f.rsa.get(), "SHA256", input);
	else if (signature_of_input == "rs512")
		sig = digest_sign(f.rsa.get(), "SHA512", input);
	else if (signature_of_input == "hs256") {
		tls::BioPtr bio(BIO_new(BIO_s_mem()));
		PEM_write_bio_PUBKEY(bio.get(), f.rsa.get());
		char *pem = nullptr;
		const long len = BIO_get_mem_data(bio.get(), &pem);
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int md_len = 0;
		HMAC(EVP_sha256(), pem, static_cast<int>(len), reinterpret_cast<const unsigned char *>(input.data()),
		     input.size(), md, &md_len);
		sig.assign(reinterpret_cast<const char *>(md), md_len);
	}
	return input + "." + base64url_encode(sig);
}

void write(const std::string &dir, const std::string &name, const std::string &content)
{
	std::ofstream(dir + "/" + name, std::ios::binary) << content;
}

} // namespace

int main(int argc, char **argv)
{
	if (argc != 2) {
		std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	const std::string dir = argv[1];
	Fixture &f = Fixture::get();
	const json es = {{"alg", "ES256"}, {"kid", "ec1"}, {"typ", "JWT"}};
	const json rs = {{"alg", "RS256"}, {"kid", "rsa1"}, {"typ", "JWT"}};
	json aud_array = claims();
	aud_array["aud"] = {"sigstore", "cordon-ci"};
	json expired = claims();
	expired["exp"] = kNow - 3600;
	json float_times = claims();
	float_times["exp"] = static_cast<double>(kNow) + 0.5;
	float_times["nbf"] = static_cast<double>(kNow) - 10.5;
	write(dir, "valid_es256.jwt", token(es, claims()));
	write(dir, "valid_rs256.jwt", token(rs, claims(), "rs256"));
	write(dir, "valid_aud_array.jwt", token(es, aud_array));
	write(dir, "expired.jwt", token(es, expired));
	write(dir, "float_times.jwt", token(es, float_times));
	write(dir, "alg_none.jwt", b64json({{"alg", "none"}, {"kid", "rsa1"}}) + "." + b64json(claims()) + ".");
	write(dir, "hs256_rsa_public_pem.jwt", token({{"alg", "HS256"}, {"kid", "rsa1"}}, claims(), "hs256"));
	write(dir, "rs512_under_rs256.jwt", token({{"alg", "RS512"}, {"kid", "rsa1"}}, claims(), "rs512"));
	write(dir, "es256_der_signature.jwt", token(es, claims(), "es256-der"));
	write(dir, "crit_header.jwt", token({{"alg", "ES256"}, {"kid", "ec1"}, {"crit", {"b64"}}}, claims()));
	write(dir, "duplicate_member.jwt",
	      b64json(es) + "." + base64url_encode(R"({"sub":"a","sub":"b","iss":"https://issuer.example"})") + ".AA");
	write(dir, "deep_nesting.jwt",
	      b64json(es) + "." + base64url_encode("{\"a\":" + std::string(40, '[') + std::string(40, ']') + "}") +
	          ".");
	write(dir, "two_segments.txt", b64json(es) + "." + b64json(claims()));
	write(dir, "bad_base64.txt", "eyJhbGciOiJFUzI1NiJ9.e*J9.c2ln==");
	write(dir, "payload_array.jwt", b64json(es) + "." + base64url_encode("[1,2,3]") + ".AA");
	write(dir, "jwks_mixed.json",
	      json{{"keys",
	            {{{"kty", "oct"}, {"kid", "hmac"}, {"k", "c2VjcmV0"}},
	             {{"kty", "EC"}, {"kid", "p384"}, {"crv", "P-384"}, {"x", "AA"}, {"y", "AA"}},
	             json::parse(f.jwks)["keys"][0],
	             json::parse(f.jwks)["keys"][1]}}}
	          .dump());
	write(
	    dir, "jwks_unusable.json",
	    R"({"keys":[{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},{"kty":"EC","kid":"x","alg":"RS256"}]})");
	write(dir, "glob.txt", "repo:acme/*:ref:refs/heads/ma?n\nrepo:acme/app:ref:refs/heads/main");
	return 0;
}

#endif
