// CI workload tokens: the verification table (each accepted or refused for the right reason), key
// sets, the key cache with a fake fetcher, and OIDC discovery + JWKS download from an in-process
// TLS server with a test CA.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <ostream>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "identity/jwks_fetch.h"
#include "identity/jwt.h"
#include "tls/openssl_ptr.h"

using namespace cordon;
using namespace cordon::identity;
using namespace std::chrono_literals;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, tls::OpensslDeleter<ECDSA_SIG_free>>;

constexpr int64_t kNow = 1'700'000'000;
constexpr const char *kIssuer = "https://token.actions.githubusercontent.com";

// --- test-only signer ---

tls::EvpPkeyPtr rsa_keygen(unsigned bits)
{
	return tls::EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(bits)));
}

tls::EvpPkeyPtr ec_keygen(const char *curve = "P-256")
{
	return tls::EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", curve));
}

std::string bn_bytes(const BIGNUM *bn, int pad = 0)
{
	std::string out(pad ? static_cast<size_t>(pad) : static_cast<size_t>(BN_num_bytes(bn)), '\0');
	BN_bn2binpad(bn, reinterpret_cast<unsigned char *>(out.data()), static_cast<int>(out.size()));
	return out;
}

std::string bn_param(EVP_PKEY *key, const char *name, int pad = 0)
{
	BIGNUM *bn = nullptr;
	EXPECT_EQ(EVP_PKEY_get_bn_param(key, name, &bn), 1) << name;
	tls::BignumPtr owned(bn);
	return bn_bytes(bn, pad);
}

json rsa_jwk(EVP_PKEY *key, const std::string &kid)
{
	return {{"kty", "RSA"},
	        {"kid", kid},
	        {"use", "sig"},
	        {"n", base64url_encode(bn_param(key, OSSL_PKEY_PARAM_RSA_N))},
	        {"e", base64url_encode(bn_param(key, OSSL_PKEY_PARAM_RSA_E))}};
}

json ec_jwk(EVP_PKEY *key, const std::string &kid, const char *crv = "P-256", int coordinate = 32)
{
	return {{"kty", "EC"},
	        {"kid", kid},
	        {"crv", crv},
	        {"x", base64url_encode(bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, coordinate))},
	        {"y", base64url_encode(bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, coordinate))}};
}

std::string public_pem(EVP_PKEY *key)
{
	tls::BioPtr bio(BIO_new(BIO_s_mem()));
	PEM_write_bio_PUBKEY(bio.get(), key);
	char *data = nullptr;
	const long len = BIO_get_mem_data(bio.get(), &data);
	return std::string(data, static_cast<size_t>(len));
}

std::string digest_sign(EVP_PKEY *key, const char *digest, std::string_view input)
{
	tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
	size_t len = 0;
	EXPECT_EQ(EVP_DigestSignInit_ex(ctx.get(), nullptr, digest, nullptr, nullptr, key, nullptr), 1);
	EXPECT_EQ(EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char *>(input.data()),
	                         input.size()),
	          1);
	std::string sig(len, '\0');
	EXPECT_EQ(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char *>(sig.data()), &len,
	                         reinterpret_cast<const unsigned char *>(input.data()), input.size()),
	          1);
	sig.resize(len);
	return sig;
}

enum class Sig { rs256, rs512, es256_raw, es256_der, hs256, none };

std::string sign(Sig how, EVP_PKEY *key, std::string_view input, std::string_view hmac_secret = {})
{
	switch (how) {
	case Sig::rs256:
		return digest_sign(key, "SHA256", input);
	case Sig::rs512:
		return digest_sign(key, "SHA512", input);
	case Sig::es256_der:
		return digest_sign(key, "SHA256", input);
	case Sig::es256_raw: {
		const std::string der = digest_sign(key, "SHA256", input);
		const auto *p = reinterpret_cast<const unsigned char *>(der.data());
		EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
		EXPECT_TRUE(sig);
		return bn_bytes(ECDSA_SIG_get0_r(sig.get()), 32) + bn_bytes(ECDSA_SIG_get0_s(sig.get()), 32);
	}
	case Sig::hs256: {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int len = 0;
		HMAC(EVP_sha256(), hmac_secret.data(), static_cast<int>(hmac_secret.size()),
		     reinterpret_cast<const unsigned char *>(input.data()), input.size(), md, &len);
		return std::string(reinterpret_cast<const char *>(md), len);
	}
	case Sig::none:
		return {};
	}
	return {};
}

std::string b64json(const json &j)
{
	return base64url_encode(j.dump());
}

std::string make_token(const json &header, const json &payload, Sig how, EVP_PKEY *key,
                       std::string_view hmac_secret = {})
{
	const std::string input = b64json(header) + "." + b64json(payload);
	return input + "." + base64url_encode(sign(how, key, input, hmac_secret));
}

// Generated once: RSA key generation is the slow part of this file.
struct TestKeys {
	tls::EvpPkeyPtr rsa = rsa_keygen(2048);
	tls::EvpPkeyPtr ec = ec_keygen();
	tls::EvpPkeyPtr other_ec = ec_keygen();
	std::string jwks = json{{"keys", {rsa_jwk(rsa.get(), "rsa1"), ec_jwk(ec.get(), "ec1")}}}.dump();
	KeySet set = KeySet::parse(jwks).value();

	static TestKeys &get()
	{
		static TestKeys keys;
		return keys;
	}
};

json claims()
{
	return {{"iss", kIssuer},           {"aud", "cordon"},          {"sub", "repo:acme/app:ref:refs/heads/main"},
	        {"repository", "acme/app"}, {"ref", "refs/heads/main"}, {"run_attempt", 1},
	        {"exp", kNow + 600},        {"nbf", kNow - 10},         {"iat", kNow - 10}};
}

json header(const char *alg, const char *kid)
{
	return {{"alg", alg}, {"kid", kid}, {"typ", "JWT"}};
}

std::string rs256(const json &payload, const char *kid = "rsa1")
{
	return make_token(header("RS256", kid), payload, Sig::rs256, TestKeys::get().rsa.get());
}

std::string es256(const json &payload)
{
	return make_token(header("ES256", "ec1"), payload, Sig::es256_raw, TestKeys::get().ec.get());
}

json with(json j, const std::string &name, json value)
{
	j[name] = std::move(value);
	return j;
}

json without(json j, const std::string &name)
{
	j.erase(name);
	return j;
}

IssuerPolicy policy()
{
	IssuerPolicy p;
	p.issuer = kIssuer;
	p.audiences = {"cordon", "cordon-staging"};
	return p;
}

// --- the verification table ---

struct Case {
	const char *name;
	std::function<std::string()> token;
	const char *error; // nullptr: the token is valid
	int64_t leeway = 30;
	std::vector<std::pair<std::string, std::string>> required_claims = {};
};

void PrintTo(const Case &c, std::ostream *os)
{
	*os << c.name;
}

const std::vector<Case> &cases()
{
	static const std::vector<Case> all = {
	    {"ValidRs256", [] { return rs256(claims()); }, nullptr},
	    {"ValidEs256", [] { return es256(claims()); }, nullptr},
	    {"AlgNone", [] { return make_token(header("none", "rsa1"), claims(), Sig::none, nullptr); },
	     "algorithm none not allowed for key kid=rsa1 (pinned RS256)"},
	    {"Hs256WithRsaPublicKeyAsSecret",
	     [] {
		     const std::string pem = public_pem(TestKeys::get().rsa.get());
		     return make_token(header("HS256", "rsa1"), claims(), Sig::hs256, nullptr, pem);
	     },
	     "algorithm HS256 not allowed for key kid=rsa1 (pinned RS256)"},
	    {"Rs512UnderRs256Key",
	     [] { return make_token(header("RS512", "rsa1"), claims(), Sig::rs512, TestKeys::get().rsa.get()); },
	     "algorithm RS512 not allowed for key kid=rsa1 (pinned RS256)"},
	    {"Es256HeaderOnRsaKey",
	     [] { return make_token(header("ES256", "rsa1"), claims(), Sig::es256_raw, TestKeys::get().ec.get()); },
	     "algorithm ES256 not allowed for key kid=rsa1 (pinned RS256)"},
	    {"WrongIssuer", [] { return rs256(with(claims(), "iss", "https://gitlab.example.com")); },
	     "issuer mismatch: token iss \"https://gitlab.example.com\""},
	    {"WrongAudience", [] { return rs256(with(claims(), "aud", "sigstore")); },
	     "audience mismatch: token aud [\"sigstore\"] not in [\"cordon\",\"cordon-staging\"]"},
	    {"AudienceArrayContainingOurs",
	     [] {
		     return rs256(with(claims(), "aud", json::array({"sigstore", "cordon-staging"})));
	     },
	     nullptr},
	    {"AudienceArrayWithoutOurs",
	     [] {
		     return rs256(with(claims(), "aud", json::array({"sigstore", "other"})));
	     },
	     "audience mismatch: token aud [\"sigstore\",\"other\"]"},
	    {"MissingAudience", [] { return rs256(without(claims(), "aud")); }, "token has no aud"},
	    {"Expired", [] { return rs256(with(claims(), "exp", kNow - 31)); }, "token expired at 1699999969"},
	    {"ExpiredWithinLeeway", [] { return rs256(with(claims(), "exp", kNow - 30)); }, nullptr},
	    {"ExpiredNoLeeway", [] { return rs256(with(claims(), "exp", kNow - 1)); }, "token expired at", 0},
	    {"LeewayClampedTo60s", [] { return rs256(with(claims(), "exp", kNow - 61)); }, "token expired at", 3600},
	    {"NotYetValid", [] { return rs256(with(claims(), "nbf", kNow + 31)); },
	     "token not valid before 1700000031"},
	    {"NbfWithinLeeway", [] { return rs256(with(claims(), "nbf", kNow + 30)); }, nullptr},
	    {"IssuedInTheFuture", [] { return rs256(with(claims(), "iat", kNow + 120)); },
	     "token issued in the future at 1700000120"},
	    {"MissingExp", [] { return rs256(without(claims(), "exp")); }, "token has no exp"},
	    {"ExpNotANumber", [] { return rs256(with(claims(), "exp", "tomorrow")); }, "claim exp is a string"},
	    {"ExpHuge", [] { return rs256(with(claims(), "exp", UINT64_MAX)); }, "claim exp is out of range"},
	    {"ExpFractional", [] { return rs256(with(claims(), "exp", kNow + 0.5)); }, nullptr},
	    {"MissingSub", [] { return rs256(without(claims(), "sub")); }, "token has no sub"},
	    {"SubNotAString", [] { return rs256(with(claims(), "sub", 42)); }, "token sub is not a string"},
	    {"UnknownKid", [] { return rs256(claims(), "rotated-key"); }, "unknown kid rotated-key"},
	    {"MissingKid",
	     [] {
		     return make_token({{"alg", "RS256"}}, claims(), Sig::rs256, TestKeys::get().rsa.get());
	     },
	     "token header has no kid"},
	    {"TamperedPayload",
	     [] {
		     const std::string good = rs256(claims());
		     const size_t a = good.find('.'), b = good.rfind('.');
		     const std::string payload = b64json(with(claims(), "sub", "repo:evil/app:ref:refs/heads/main"));
		     return good.substr(0, a + 1) + payload + good.substr(b);
	     },
	     "signature does not verify with key kid=rsa1 (RS256)"},
	    {"SignedByAnotherEcKey",
	     [] {
		     return make_token(header("ES256", "ec1"), claims(), Sig::es256_raw,
		                       TestKeys::get().other_ec.get());
	     },
	     "signature does not verify with key kid=ec1 (ES256)"},
	    {"CritHeader",
	     [] {
		     return make_token(with(header("RS256", "rsa1"), "crit", json::array({"exp"})), claims(),
		                       Sig::rs256, TestKeys::get().rsa.get());
	     },
	     "token header has crit [\"exp\"]"},
	    {"Es256DerSignature",
	     [] { return make_token(header("ES256", "ec1"), claims(), Sig::es256_der, TestKeys::get().ec.get()); },
	     "bytes; JWS wants 64 (raw r||s)"},
	    {"RsaSignatureTruncated",
	     [] {
		     const std::string good = rs256(claims());
		     return good.substr(0, good.size() - 2);
	     },
	     "RS256 signature is 255 bytes; the key's modulus is 256"},
	    {"RequiredClaimsMatch",
	     [] { return rs256(claims()); },
	     nullptr,
	     30,
	     {{"repository", "acme/*"}, {"ref", "refs/heads/ma?n"}, {"run_attempt", "1"}, {"sub", "repo:acme/*"}}},
	    {"RequiredClaimMismatch",
	     [] { return rs256(with(claims(), "repository", "evil/app")); },
	     "required claim repository = \"evil/app\" does not match \"acme/*\"",
	     30,
	     {{"repository", "acme/*"}}},
	    {"RequiredClaimMissing",
	     [] { return rs256(claims()); },
	     "required claim environment missing",
	     30,
	     {{"environment", "*"}}},
	    {"RequiredClaimObject",
	     [] { return rs256(with(claims(), "environment", json::object())); },
	     "required claim environment is a object",
	     30,
	     {{"environment", "*"}}},
	    {"TwoSegments",
	     [] {
		     const std::string good = rs256(claims());
		     return good.substr(0, good.rfind('.'));
	     },
	     "2 dot-separated segments, not 3"},
	    {"FourSegments", [] { return rs256(claims()) + ".x"; }, "4 dot-separated segments, not 3"},
	    {"BadBase64", [] { return "eyJhbGciOiJSUzI1NiJ9.e*J9.c2ln"; },
	     "token payload: character \"*\" at offset 1"},
	    {"PaddedBase64", [] { return b64json(header("RS256", "rsa1")) + "." + b64json(claims()) + "==.c2ln"; },
	     "is padded"},
	    {"NonObjectJson",
	     [] { return b64json(header("RS256", "rsa1")) + "." + base64url_encode("[1,2]") + ".c2ln"; },
	     "token payload is a JSON array, not an object"},
	    {"NotJson", [] { return base64url_encode("{\"alg\":") + "." + b64json(claims()) + ".c2ln"; },
	     "token header is not valid JSON"},
	    {"DuplicateClaim",
	     [] {
		     const std::string input = b64json(header("RS256", "rsa1")) + "." +
		                               base64url_encode(R"({"sub":"a","iss":"x","sub":"b"})");
		     return input + "." + base64url_encode(sign(Sig::rs256, TestKeys::get().rsa.get(), input));
	     },
	     "token payload has the member sub more than once"},
	    {"Oversized", [] { return rs256(with(claims(), "padding", std::string(16 * 1024, 'x'))); },
	     "bytes, more than the 16384 allowed"},
	    {"Empty", [] { return std::string(); }, "token is empty"},
	};
	return all;
}

class JwtVerify : public ::testing::TestWithParam<Case> {};

TEST_P(JwtVerify, Decides)
{
	const Case &c = GetParam();
	IssuerPolicy p = policy();
	p.required_claims = c.required_claims;
	const std::string token = c.token();
	auto result = verify(token, TestKeys::get().set, p, kNow, c.leeway);
	if (!c.error) {
		ASSERT_TRUE(result.ok()) << result.error().message();
		EXPECT_EQ(result->issuer, kIssuer);
		EXPECT_EQ(result->subject, "repo:acme/app:ref:refs/heads/main");
		EXPECT_EQ(result->claims.value("repository", ""), "acme/app");
		EXPECT_EQ(result->fingerprint.size(), 64u);
		EXPECT_EQ(result->fingerprint.find_first_not_of("0123456789abcdef"), std::string::npos);
	} else {
		ASSERT_FALSE(result.ok()) << "accepted";
		EXPECT_NE(result.error().message().find(c.error), std::string::npos)
		    << "error: " << result.error().message() << "\nwanted: " << c.error;
	}
}

INSTANTIATE_TEST_SUITE_P(Jwt, JwtVerify, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case> &info) { return std::string(info.param.name); });

TEST(Jwt, VerifiedFieldsAndFingerprint)
{
	const std::string token = es256(claims());
	auto a = verify(token, TestKeys::get().set, policy(), kNow, 0);
	ASSERT_TRUE(a.ok()) << a.error().message();
	EXPECT_EQ(a->expires_at, kNow + 600);
	EXPECT_EQ(a->claims, claims());
	auto again = verify(token, TestKeys::get().set, policy(), kNow, 0);
	ASSERT_TRUE(again.ok());
	EXPECT_EQ(a->fingerprint, again->fingerprint);
	auto other = verify(es256(with(claims(), "jti", "2")), TestKeys::get().set, policy(), kNow, 0);
	ASSERT_TRUE(other.ok());
	EXPECT_NE(a->fingerprint, other->fingerprint);
}

TEST(Jwt, DecodeWithoutVerifying)
{
	auto d = decode(rs256(claims(), "any-kid"));
	ASSERT_TRUE(d.ok()) << d.error().message();
	EXPECT_EQ(d->header["kid"], "any-kid");
	EXPECT_EQ(d->payload["iss"], kIssuer);
	EXPECT_EQ(d->signature.size(), 256u);
	EXPECT_EQ(std::count(d->signing_input.begin(), d->signing_input.end(), '.'), 1);
	EXPECT_FALSE(decode("a.b").ok());
	EXPECT_FALSE(decode("..").ok());
}

TEST(Jwt, PolicyWithoutAudiencesRefused)
{
	IssuerPolicy p = policy();
	p.audiences.clear();
	auto r = verify(rs256(claims()), TestKeys::get().set, p, kNow, 0);
	ASSERT_FALSE(r.ok());
	EXPECT_NE(r.error().message().find("has no audiences"), std::string::npos) << r.error().message();
}

TEST(Jwt, Base64url)
{
	for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar", "\xff\xfe\x00\x01"}) {
		auto back = base64url_decode(base64url_encode(s));
		ASSERT_TRUE(back.ok());
		EXPECT_EQ(*back, s);
	}
	EXPECT_EQ(base64url_encode("\xfb\xff"), "-_8");
	EXPECT_FALSE(base64url_decode("Zg==").ok());  // padding
	EXPECT_FALSE(base64url_decode("Zh").ok());    // non-zero trailing bits
	EXPECT_FALSE(base64url_decode("Zm9vY").ok()); // impossible length
	EXPECT_FALSE(base64url_decode("Zm9v+").ok()); // standard alphabet
	EXPECT_FALSE(base64url_decode("Zm 9v").ok());
}

TEST(Jwt, Glob)
{
	EXPECT_TRUE(glob_match("*", ""));
	EXPECT_TRUE(glob_match("repo:acme/*:ref:refs/heads/main", "repo:acme/app:ref:refs/heads/main"));
	EXPECT_FALSE(glob_match("repo:acme/*:ref:refs/heads/main", "repo:acme/app:ref:refs/heads/mainx"));
	EXPECT_TRUE(glob_match("a*b*c", "aXXbYYbZZc"));
	EXPECT_FALSE(glob_match("a*b*c", "aXXbYYbZZ"));
	EXPECT_TRUE(glob_match("?", "\xc3\xa9")); // one character, two bytes
	EXPECT_FALSE(glob_match("??", "\xc3\xa9"));
	EXPECT_TRUE(glob_match("*?", "x\xc3\xa9"));
	EXPECT_FALSE(glob_match("", "x"));
	EXPECT_TRUE(glob_match("**a**", "bab"));
	EXPECT_FALSE(glob_match("acme/app", "acme/app2"));
}

// --- key sets ---

TEST(JwtKeySet, OctKeySkippedRsaKept)
{
	json jwks = {{"keys",
	              {{{"kty", "oct"}, {"kid", "hmac"}, {"alg", "HS256"}, {"k", "c2VjcmV0"}},
	               rsa_jwk(TestKeys::get().rsa.get(), "rsa1")}}};
	auto set = KeySet::parse(jwks.dump());
	ASSERT_TRUE(set.ok()) << set.error().message();
	EXPECT_EQ(set->size(), 1u);
	EXPECT_EQ(set->find("hmac"), nullptr);
	ASSERT_NE(set->find("rsa1"), nullptr);
	EXPECT_EQ(set->find("rsa1")->alg, "RS256");
	ASSERT_EQ(set->skipped().size(), 1u);
	EXPECT_NE(set->skipped()[0].find("kid=hmac"), std::string::npos) << set->skipped()[0];
	EXPECT_NE(set->skipped()[0].find("alg HS256 is not supported"), std::string::npos) << set->skipped()[0];
	// An HS256 token for the oct key's kid finds no key at all.
	auto r = verify(make_token(header("HS256", "hmac"), claims(), Sig::hs256, nullptr, "secret"), *set, policy(),
	                kNow, 0);
	ASSERT_FALSE(r.ok());
	EXPECT_NE(r.error().message().find("unknown kid hmac"), std::string::npos) << r.error().message();
}

TEST(JwtKeySet, OnlyUnusableKeysIsAnError)
{
	auto p384 = ec_keygen("P-384");
	json rsa_enc = rsa_jwk(TestKeys::get().rsa.get(), "enc");
	rsa_enc["use"] = "enc";
	json rsa512 = rsa_jwk(TestKeys::get().rsa.get(), "rs512");
	rsa512["alg"] = "RS512";
	json mismatched = rsa_jwk(TestKeys::get().rsa.get(), "mismatch");
	mismatched["alg"] = "ES256";
	json no_kid = rsa_jwk(TestKeys::get().rsa.get(), "x");
	no_kid.erase("kid");
	json jwks = {{"keys",
	              {{{"kty", "oct"}, {"kid", "hmac"}, {"k", "c2VjcmV0"}},
	               ec_jwk(p384.get(), "p384", "P-384", 48),
	               rsa_enc,
	               rsa512,
	               mismatched,
	               no_kid,
	               "not an object"}}};
	auto set = KeySet::parse(jwks.dump());
	ASSERT_FALSE(set.ok());
	const std::string m = set.error().message();
	EXPECT_NE(m.find("key set has no usable key"), std::string::npos) << m;
	EXPECT_NE(m.find("kty oct is not supported"), std::string::npos) << m;
	EXPECT_NE(m.find("crv P-384 is not supported"), std::string::npos) << m;
	EXPECT_NE(m.find("use \"enc\" is not \"sig\""), std::string::npos) << m;
	EXPECT_NE(m.find("alg RS512 is not supported"), std::string::npos) << m;
	EXPECT_NE(m.find("alg ES256 does not fit kty RSA"), std::string::npos) << m;
	EXPECT_NE(m.find("no kid"), std::string::npos) << m;
}

TEST(JwtKeySet, AlgorithmsPinnedByKeyType)
{
	json ec = ec_jwk(TestKeys::get().ec.get(), "ec");
	json rsa = rsa_jwk(TestKeys::get().rsa.get(), "rsa");
	rsa["alg"] = "RS256";
	json jwks = {{"keys", {ec, rsa}}};
	auto set = KeySet::parse(jwks.dump());
	ASSERT_TRUE(set.ok()) << set.error().message();
	EXPECT_EQ(set->find("ec")->alg, "ES256");
	EXPECT_EQ(set->find("rsa")->alg, "RS256");
	EXPECT_EQ(set->find("nope"), nullptr);
}

TEST(JwtKeySet, SmallRsaAndBadPointsSkipped)
{
	auto small = rsa_keygen(1024);
	json bad_point = ec_jwk(TestKeys::get().ec.get(), "badpoint");
	std::string y = base64url_decode(bad_point["y"].get<std::string>()).value();
	y[31] ^= 1;
	bad_point["y"] = base64url_encode(y);
	json short_x = ec_jwk(TestKeys::get().ec.get(), "shortx");
	short_x["x"] = base64url_encode(std::string(31, 'a'));
	json jwks = {
	    {"keys", {rsa_jwk(small.get(), "small"), bad_point, short_x, rsa_jwk(TestKeys::get().rsa.get(), "good")}}};
	auto set = KeySet::parse(jwks.dump());
	ASSERT_TRUE(set.ok()) << set.error().message();
	EXPECT_EQ(set->size(), 1u);
	ASSERT_EQ(set->skipped().size(), 3u);
	EXPECT_NE(set->skipped()[0].find("RSA modulus of 1024 bits"), std::string::npos) << set->skipped()[0];
	EXPECT_NE(set->skipped()[1].find("kid=badpoint"), std::string::npos) << set->skipped()[1];
	EXPECT_NE(set->skipped()[2].find("must be 32 bytes"), std::string::npos) << set->skipped()[2];
}

TEST(JwtKeySet, DuplicateKidKeepsFirst)
{
	json jwks = {{"keys", {rsa_jwk(TestKeys::get().rsa.get(), "k"), ec_jwk(TestKeys::get().ec.get(), "k")}}};
	auto set = KeySet::parse(jwks.dump());
	ASSERT_TRUE(set.ok());
	EXPECT_EQ(set->size(), 1u);
	EXPECT_EQ(set->find("k")->alg, "RS256");
}

TEST(JwtKeySet, MalformedSets)
{
	for (const auto &[text, error] : std::vector<std::pair<std::string, std::string>>{
	         {"", "not valid JSON"},
	         {"[]", "is a JSON array, not an object"},
	         {"{}", "no \"keys\" member"},
	         {R"({"keys":{}})", "\"keys\" is a object, not an array"},
	         {R"({"keys":[]})", "has no keys"},
	         {R"({"keys":[{"kty":"RSA","kid":"a","n":"!!","e":"AQAB"}]})", "member \"n\": character"},
	         // Found by tests/fuzz/jwks.cc: the skipped key's reason dumped "use" recursively.
	         {R"({"keys":[{"kid":"a","use":)" + std::string(100000, '[') + std::string(100000, ']') + "}]}",
	          "nests deeper than 32 levels"},
	     }) {
		auto set = KeySet::parse(text);
		ASSERT_FALSE(set.ok()) << text;
		EXPECT_NE(set.error().message().find(error), std::string::npos) << set.error().message();
	}
}

// --- the key cache ---

KeySet set_of(std::initializer_list<json> keys)
{
	json jwks = {{"keys", json::array()}};
	for (const json &k : keys)
		jwks["keys"].push_back(k);
	return KeySet::parse(jwks.dump()).value();
}

TEST(KeyCache, UnknownKidRefetchedOnceThenCooldown)
{
	std::atomic<int> calls{0};
	KeyCache cache(
	    [&](const std::string &) -> Result<KeySet> {
		    calls++;
		    return set_of({rsa_jwk(TestKeys::get().rsa.get(), "rotated")});
	    },
	    60s);
	EXPECT_EQ(cache.keys(kIssuer), nullptr);
	const std::string token = rs256(claims(), "rotated");
	// No keys yet: the token's kid is unknown, so the daemon asks for a fetch.
	ASSERT_TRUE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	auto keys = cache.keys(kIssuer);
	ASSERT_NE(keys, nullptr);
	auto ok = verify(token, *keys, policy(), kNow, 0);
	EXPECT_TRUE(ok.ok()) << ok.error().message();
	// Another unknown kid within the cooldown: refused, nothing fetched.
	auto unknown = verify(rs256(claims(), "other"), *keys, policy(), kNow, 0);
	ASSERT_FALSE(unknown.ok());
	EXPECT_NE(unknown.error().message().find("unknown kid"), std::string::npos);
	EXPECT_FALSE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	EXPECT_EQ(calls.load(), 1);
	EXPECT_EQ(cache.stats(kIssuer).fetches, 1u);
	EXPECT_EQ(cache.stats(kIssuer).failures, 0u);
	// The cooldown is per issuer.
	EXPECT_TRUE(cache.request_refetch("https://gitlab.example.com"));
	ASSERT_TRUE(cache.wait_idle(2s));
	EXPECT_EQ(calls.load(), 2);
}

TEST(KeyCache, TheInitialLoadLeavesTheRefetchForARotatedKey)
{
	std::atomic<int> calls{0};
	KeyCache cache(
	    [&](const std::string &) -> Result<KeySet> {
		    calls++;
		    return set_of({rsa_jwk(TestKeys::get().rsa.get(), calls == 1 ? "old" : "rotated")});
	    },
	    60s);
	ASSERT_TRUE(cache.load(kIssuer)); // at startup
	ASSERT_TRUE(cache.wait_idle(2s));
	EXPECT_FALSE(cache.fetching(kIssuer));
	ASSERT_NE(cache.keys(kIssuer)->find("old"), nullptr);
	// A token for a key rotated in since: its one refetch is allowed, the next is not.
	ASSERT_TRUE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	ASSERT_NE(cache.keys(kIssuer)->find("rotated"), nullptr);
	EXPECT_FALSE(cache.request_refetch(kIssuer));
	EXPECT_EQ(calls.load(), 2);
}

TEST(KeyCache, ZeroCooldownRefetchesEveryTime)
{
	std::atomic<int> calls{0};
	KeyCache cache(
	    [&](const std::string &) -> Result<KeySet> {
		    const int n = ++calls;
		    return set_of({rsa_jwk(TestKeys::get().rsa.get(), "v" + std::to_string(n))});
	    },
	    0s);
	ASSERT_TRUE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	ASSERT_TRUE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	EXPECT_EQ(calls.load(), 2);
	auto keys = cache.keys(kIssuer);
	ASSERT_NE(keys, nullptr);
	EXPECT_NE(keys->find("v2"), nullptr);
	EXPECT_EQ(keys->find("v1"), nullptr);
}

TEST(KeyCache, FailedFetchKeepsLastGoodSet)
{
	std::atomic<int> calls{0};
	KeyCache cache(
	    [&](const std::string &) -> Result<KeySet> {
		    if (++calls == 1)
			    return set_of({rsa_jwk(TestKeys::get().rsa.get(), "rsa1")});
		    return plain_error("GET https://issuer/jwks: timed out after 5000 ms");
	    },
	    0s);
	ASSERT_TRUE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	auto good = cache.keys(kIssuer);
	ASSERT_NE(good, nullptr);
	ASSERT_TRUE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	EXPECT_EQ(cache.keys(kIssuer), good);
	const KeyCache::Stats stats = cache.stats(kIssuer);
	EXPECT_EQ(stats.fetches, 2u);
	EXPECT_EQ(stats.failures, 1u);
	EXPECT_NE(stats.last_error.find("timed out"), std::string::npos) << stats.last_error;
	EXPECT_TRUE(verify(rs256(claims()), *cache.keys(kIssuer), policy(), kNow, 0).ok());
}

TEST(KeyCache, StaticIssuerNeverRefetched)
{
	std::atomic<int> calls{0};
	KeyCache cache(
	    [&](const std::string &) -> Result<KeySet> {
		    calls++;
		    return plain_error("must not be called");
	    },
	    0s);
	cache.set_static(kIssuer, KeySet::parse(TestKeys::get().jwks).value());
	EXPECT_FALSE(cache.request_refetch(kIssuer));
	EXPECT_FALSE(cache.request_refetch(kIssuer));
	ASSERT_TRUE(cache.wait_idle(2s));
	EXPECT_EQ(calls.load(), 0);
	ASSERT_NE(cache.keys(kIssuer), nullptr);
	EXPECT_EQ(cache.keys(kIssuer)->size(), 2u);
	EXPECT_EQ(cache.stats(kIssuer).fetches, 0u);
}

TEST(KeyCache, DestructorWaitsForRunningFetchAndDropsQueued)
{
	std::atomic<int> calls{0};
	{
		KeyCache cache(
		    [&](const std::string &) -> Result<KeySet> {
			    calls++;
			    std::this_thread::sleep_for(50ms);
			    return plain_error("slow");
		    },
		    0s);
		EXPECT_TRUE(cache.request_refetch("https://a.example"));
		EXPECT_TRUE(cache.request_refetch("https://b.example"));
		EXPECT_TRUE(cache.request_refetch("https://c.example"));
		std::this_thread::sleep_for(10ms);
	}
	EXPECT_GE(calls.load(), 1);
	EXPECT_LE(calls.load(), 2);
}

TEST(KeyCache, ConcurrentReadersAndRequests)
{
	KeyCache cache([&](const std::string &) -> Result<KeySet> { return KeySet::parse(TestKeys::get().jwks); }, 0s);
	std::vector<std::thread> threads;
	std::atomic<int> verified{0};
	const std::string token = es256(claims());
	for (int t = 0; t < 4; t++)
		threads.emplace_back([&] {
			for (int i = 0; i < 50; i++) {
				(void)cache.request_refetch(kIssuer);
				if (auto keys = cache.keys(kIssuer);
				    keys && verify(token, *keys, policy(), kNow, 0).ok())
					verified++;
			}
		});
	for (auto &t : threads)
		t.join();
	EXPECT_TRUE(cache.wait_idle(2s));
	EXPECT_NE(cache.keys(kIssuer), nullptr);
	EXPECT_GE(cache.stats(kIssuer).fetches, 1u);
}

// --- HTTPS: an in-process TLS server with a test CA ---

class TempDir {
public:
	TempDir()
	{
		std::string tmpl = (fs::temp_directory_path() / "cordon-jwt-test-XXXXXX").string();
		path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
	}
	~TempDir()
	{
		std::error_code ec;
		fs::remove_all(path_, ec);
	}
	std::string file(const std::string &name, const std::string &content) const
	{
		const std::string p = path_ + "/" + name;
		std::ofstream(p) << content;
		return p;
	}

private:
	std::string path_;
};

void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
	tls::X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
	ASSERT_TRUE(ext) << value;
	ASSERT_EQ(X509_add_ext(cert, ext.get(), -1), 1);
}

// A CA certificate (issuer null) or a server leaf for IP 127.0.0.1.
tls::X509Ptr make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key)
{
	static std::atomic<long> serial{1};
	tls::X509Ptr cert(X509_new());
	X509_set_version(cert.get(), 2);
	ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
	X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
	X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
	X509_set_pubkey(cert.get(), key);
	X509_NAME *name = X509_get_subject_name(cert.get());
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char *>(cn), -1, -1, 0);
	X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
	X509 *signer = issuer ? issuer : cert.get();
	if (!issuer) {
		add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
		add_ext(cert.get(), signer, NID_key_usage, "critical,digitalSignature");
		add_ext(cert.get(), signer, NID_ext_key_usage, "serverAuth");
		add_ext(cert.get(), signer, NID_subject_alt_name, "IP:127.0.0.1");
	}
	EXPECT_GT(X509_sign(cert.get(), issuer ? issuer_key : key, EVP_sha256()), 0);
	return cert;
}

std::string cert_pem(X509 *cert)
{
	tls::BioPtr bio(BIO_new(BIO_s_mem()));
	PEM_write_bio_X509(bio.get(), cert);
	char *data = nullptr;
	const long len = BIO_get_mem_data(bio.get(), &data);
	return std::string(data, static_cast<size_t>(len));
}

struct Route {
	int status = 200;
	std::string body;
	enum { length, chunked, close } framing = length;
};

class TlsServer {
public:
	TlsServer()
	{
		ca_key_ = ec_keygen();
		ca_ = make_cert(ca_key_.get(), "cordon test CA", nullptr, nullptr);
		leaf_key_ = ec_keygen();
		leaf_ = make_cert(leaf_key_.get(), "127.0.0.1", ca_.get(), ca_key_.get());
		ca_file_ = dir_.file("ca.pem", cert_pem(ca_.get()));
		ctx_.reset(SSL_CTX_new(TLS_server_method()));
		EXPECT_EQ(SSL_CTX_use_certificate(ctx_.get(), leaf_.get()), 1);
		EXPECT_EQ(SSL_CTX_use_PrivateKey(ctx_.get(), leaf_key_.get()), 1);
		listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
		sockaddr_in addr{};
		addr.sin_family = AF_INET;
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		EXPECT_EQ(::bind(listen_.get(), reinterpret_cast<sockaddr *>(&addr), sizeof(addr)), 0);
		EXPECT_EQ(::listen(listen_.get(), 16), 0);
		socklen_t len = sizeof(addr);
		::getsockname(listen_.get(), reinterpret_cast<sockaddr *>(&addr), &len);
		port_ = ntohs(addr.sin_port);
		thread_ = std::thread([this] { serve(); });
	}
	~TlsServer()
	{
		stop_ = true;
		thread_.join();
	}

	std::string base() const { return "https://127.0.0.1:" + std::to_string(port_); }
	const std::string &ca_file() const { return ca_file_; }
	uint16_t port() const { return port_; }
	void route(const std::string &path, Route r)
	{
		std::lock_guard lock(mutex_);
		routes_[path] = std::move(r);
	}
	std::string other_ca_file()
	{
		auto key = ec_keygen();
		auto other = make_cert(key.get(), "cordon test CA", nullptr, nullptr);
		return dir_.file("other-ca.pem", cert_pem(other.get()));
	}

private:
	void serve()
	{
		// Clients that give up early would raise SIGPIPE here.
		sigset_t pipe;
		sigemptyset(&pipe);
		sigaddset(&pipe, SIGPIPE);
		pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
		while (!stop_) {
			pollfd p{listen_.get(), POLLIN, 0};
			if (::poll(&p, 1, 20) <= 0)
				continue;
			UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
			if (fd)
				handle(fd.get());
		}
	}

	void handle(int fd)
	{
		timeval tv{1, 0};
		::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		tls::SslPtr ssl(SSL_new(ctx_.get()));
		SSL_set_fd(ssl.get(), fd);
		if (SSL_accept(ssl.get()) != 1) {
			ERR_clear_error();
			return;
		}
		std::string request;
		char buf[4096];
		while (request.find("\r\n\r\n") == std::string::npos) {
			const int n = SSL_read(ssl.get(), buf, sizeof(buf));
			if (n <= 0) {
				ERR_clear_error();
				return;
			}
			request.append(buf, static_cast<size_t>(n));
		}
		const size_t sp1 = request.find(' '), sp2 = request.find(' ', sp1 + 1);
		const std::string path = request.substr(sp1 + 1, sp2 - sp1 - 1);
		Route r{404, "not found"};
		{
			std::lock_guard lock(mutex_);
			if (auto it = routes_.find(path); it != routes_.end())
				r = it->second;
		}
		std::string response =
		    "HTTP/1.1 " + std::to_string(r.status) + " X\r\nContent-Type: application/json\r\n";
		if (r.framing == Route::length) {
			response += "Content-Length: " + std::to_string(r.body.size()) + "\r\n\r\n" + r.body;
		} else if (r.framing == Route::chunked) {
			response += "Transfer-Encoding: chunked\r\n\r\n";
			for (size_t off = 0; off < r.body.size(); off += 100) {
				const std::string piece = r.body.substr(off, 100);
				char size[16];
				std::snprintf(size, sizeof(size), "%zx", piece.size());
				response += std::string(size) + "\r\n" + piece + "\r\n";
			}
			response += "0\r\n\r\n";
		} else {
			response += "Connection: close\r\n\r\n" + r.body;
		}
		if (SSL_write(ssl.get(), response.data(), static_cast<int>(response.size())) > 0)
			SSL_shutdown(ssl.get());
		ERR_clear_error();
	}

	TempDir dir_;
	tls::EvpPkeyPtr ca_key_, leaf_key_;
	tls::X509Ptr ca_, leaf_;
	std::string ca_file_;
	tls::SslCtxPtr ctx_;
	UniqueFd listen_;
	uint16_t port_ = 0;
	std::atomic<bool> stop_{false};
	std::mutex mutex_;
	std::map<std::string, Route> routes_;
	std::thread thread_;
};

FetchOptions options_for(const TlsServer &server)
{
	FetchOptions o;
	o.ca_file = server.ca_file();
	o.timeout = 2000ms;
	return o;
}

void serve_discovery(TlsServer &server, const std::string &jwks_uri, const std::string &prefix = "")
{
	server.route(prefix + "/.well-known/openid-configuration",
	             {200, json{{"issuer", server.base() + prefix}, {"jwks_uri", jwks_uri}}.dump()});
	server.route("/jwks", {200, TestKeys::get().jwks});
}

void expect_error(const Result<std::string> &r, const std::string &want)
{
	ASSERT_FALSE(r.ok()) << "succeeded";
	EXPECT_NE(r.error().message().find(want), std::string::npos) << r.error().message();
}

TEST(JwksFetch, DiscoveryThenJwksThroughTestCa)
{
	TlsServer server;
	serve_discovery(server, server.base() + "/jwks");
	auto keys = fetch_discovered_jwks(server.base(), options_for(server));
	ASSERT_TRUE(keys.ok()) << keys.error().message();
	EXPECT_EQ(keys->size(), 2u);
	ASSERT_NE(keys->find("rsa1"), nullptr);
	EXPECT_TRUE(verify(es256(claims()), *keys, policy(), kNow, 0).ok());
}

TEST(JwksFetch, IssuerWithPathAndTrailingSlash)
{
	TlsServer server;
	serve_discovery(server, server.base() + "/jwks", "/tenant");
	auto keys = fetch_discovered_jwks(server.base() + "/tenant", options_for(server));
	ASSERT_TRUE(keys.ok()) << keys.error().message();
	// The document names the issuer without the slash: not the same issuer.
	auto slash = fetch_discovered_jwks(server.base() + "/tenant/", options_for(server));
	ASSERT_FALSE(slash.ok());
	EXPECT_NE(slash.error().message().find("document issuer"), std::string::npos) << slash.error().message();
}

TEST(JwksFetch, ChunkedAndCloseDelimitedBodies)
{
	TlsServer server;
	const std::string body = TestKeys::get().jwks;
	server.route("/chunked", {200, body, Route::chunked});
	server.route("/close", {200, body, Route::close});
	auto chunked = https_get(server.base() + "/chunked", options_for(server));
	ASSERT_TRUE(chunked.ok()) << chunked.error().message();
	EXPECT_EQ(*chunked, body);
	auto closed = https_get(server.base() + "/close", options_for(server));
	ASSERT_TRUE(closed.ok()) << closed.error().message();
	EXPECT_EQ(*closed, body);
}

TEST(JwksFetch, WrongCaRejected)
{
	TlsServer server;
	serve_discovery(server, server.base() + "/jwks");
	FetchOptions o = options_for(server);
	o.ca_file = server.other_ca_file();
	expect_error(https_get(server.base() + "/jwks", o), "certificate verification failed");
	auto keys = fetch_discovered_jwks(server.base(), o);
	ASSERT_FALSE(keys.ok());
	EXPECT_NE(keys.error().message().find("certificate verification failed"), std::string::npos);
}

TEST(JwksFetch, HostNameMustMatchCertificate)
{
	TlsServer server;
	server.route("/jwks", {200, TestKeys::get().jwks});
	// The leaf names IP 127.0.0.1 only; "localhost" reaches the same server but is not in it.
	expect_error(https_get("https://localhost:" + std::to_string(server.port()) + "/jwks", options_for(server)),
	             "certificate verification failed");
}

TEST(JwksFetch, NonHttpsJwksUriRejected)
{
	TlsServer server;
	serve_discovery(server, "http://127.0.0.1:" + std::to_string(server.port()) + "/jwks");
	auto keys = fetch_discovered_jwks(server.base(), options_for(server));
	ASSERT_FALSE(keys.ok());
	EXPECT_NE(keys.error().message().find("jwks_uri \"http://127.0.0.1"), std::string::npos)
	    << keys.error().message();
	EXPECT_NE(keys.error().message().find("is not an https:// URL"), std::string::npos);
	expect_error(https_get("http://127.0.0.1:1/jwks", options_for(server)), "not an https:// URL");
	EXPECT_FALSE(fetch_discovered_jwks("http://127.0.0.1:1", options_for(server)).ok());
}

TEST(JwksFetch, OversizedBodyRejected)
{
	TlsServer server;
	const std::string big(4096, 'x');
	server.route("/big", {200, big, Route::length});
	server.route("/big-chunked", {200, big, Route::chunked});
	server.route("/big-close", {200, big, Route::close});
	FetchOptions o = options_for(server);
	o.max_bytes = 1024;
	expect_error(https_get(server.base() + "/big", o), "larger than the limit of 1024 bytes");
	expect_error(https_get(server.base() + "/big-chunked", o), "larger than the limit of 1024 bytes");
	expect_error(https_get(server.base() + "/big-close", o), "larger than the limit of 1024 bytes");
}

TEST(JwksFetch, StatusMustBe200)
{
	TlsServer server;
	server.route("/moved", {301, "", Route::length});
	expect_error(https_get(server.base() + "/missing", options_for(server)), "HTTP status 404");
	expect_error(https_get(server.base() + "/moved", options_for(server)), "redirects are not followed");
}

TEST(JwksFetch, SilentServerTimesOut)
{
	// Listening, never accepting: the TCP handshake completes in the kernel, TLS never starts.
	UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	sockaddr_in addr{};
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof(addr)), 0);
	ASSERT_EQ(::listen(fd.get(), 4), 0);
	socklen_t len = sizeof(addr);
	::getsockname(fd.get(), reinterpret_cast<sockaddr *>(&addr), &len);
	FetchOptions o;
	o.timeout = 300ms;
	const auto start = std::chrono::steady_clock::now();
	auto r = https_get("https://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/jwks", o);
	const auto elapsed = std::chrono::steady_clock::now() - start;
	expect_error(r, "timed out after 300 ms (TLS handshake");
	EXPECT_GE(elapsed, 290ms);
	EXPECT_LT(elapsed, 1000ms);
}

TEST(JwksFetch, BadUrls)
{
	FetchOptions o;
	o.timeout = 200ms;
	expect_error(https_get("https://user@127.0.0.1/", o), "user info");
	expect_error(https_get("https://127.0.0.1:99999/", o), "bad port");
	expect_error(https_get("https:///jwks", o), "no host");
	expect_error(https_get("https://127.0.0.1/a b", o), "space or control character");
	expect_error(https_get("https://[::1/", o), "unterminated IPv6 literal");
}

} // namespace
