#include "identity/jwt.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>
#include <openssl/params.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <optional>
#include <set>

namespace cordon::identity {
namespace {

using json = nlohmann::json;
using ParamBldPtr = std::unique_ptr<OSSL_PARAM_BLD, tls::OpensslDeleter<OSSL_PARAM_BLD_free>>;
using ParamPtr = std::unique_ptr<OSSL_PARAM, tls::OpensslDeleter<OSSL_PARAM_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, tls::OpensslDeleter<ECDSA_SIG_free>>;

constexpr const char *kRs256 = "RS256";
constexpr const char *kEs256 = "ES256";
constexpr size_t kEs256SignatureBytes = 64;
constexpr size_t kP256CoordinateBytes = 32;
constexpr size_t kMaxRsaExponentBytes = 8;
constexpr size_t kMaxQuoted = 128;
constexpr size_t kMaxReasonsInError = 6;

// Dumps never throw: text that is not UTF-8 is replaced, not refused.
std::string dump(const json &j)
{
	return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// JSON-quoted (control characters escaped), cut when long.
std::string quote(std::string_view s)
{
	if (s.size() > kMaxQuoted)
		return dump(json(std::string(s.substr(0, kMaxQuoted)))) + "...";
	return dump(json(std::string(s)));
}

// A token- or key-supplied string for an error message: plain when it is short and harmless,
// otherwise JSON-quoted (control characters escaped) and cut.
std::string display(std::string_view s)
{
	bool plain = !s.empty() && s.size() <= 64;
	for (char c : s)
		plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
		                  c == ':' || c == '/' || c == '+' || c == '=' || c == '@');
	if (plain)
		return std::string(s);
	return quote(s);
}

std::string display_json(const json &j)
{
	std::string s = dump(j);
	if (s.size() > kMaxQuoted * 2)
		s = s.substr(0, kMaxQuoted * 2) + "...";
	return s;
}

const char *type_name(const json &j)
{
	return j.type_name(); // "object", "array", "string", "number", "boolean", "null"
}

// The string member `name` of an object, or nullptr when absent or not a string.
const std::string *string_member(const json &obj, const char *name)
{
	auto it = obj.find(name);
	if (it == obj.end())
		return nullptr;
	return it->get_ptr<const std::string *>();
}

// nlohmann keeps the last of duplicate member names; a token whose parts two parsers could read
// differently is refused instead. Depth is bounded too (messages dump values recursively).
Result<json> parse_token_object(std::string_view text, const char *what)
{
	if (text.find('\0') != std::string_view::npos)
		return plain_error(std::string(what) + " contains a NUL byte");
	std::vector<std::set<std::string>> open_objects;
	std::string duplicate;
	bool too_deep = false;
	json::parser_callback_t check = [&](int depth, json::parse_event_t event, json &parsed) {
		switch (event) {
		case json::parse_event_t::object_start:
			open_objects.emplace_back();
			too_deep = too_deep || depth >= kMaxTokenJsonDepth;
			break;
		case json::parse_event_t::array_start:
			too_deep = too_deep || depth >= kMaxTokenJsonDepth;
			break;
		case json::parse_event_t::object_end:
			if (!open_objects.empty())
				open_objects.pop_back();
			break;
		case json::parse_event_t::key:
			if (const std::string *k = parsed.get_ptr<const std::string *>();
			    k && !open_objects.empty() && !open_objects.back().insert(*k).second && duplicate.empty())
				duplicate = *k;
			break;
		default:
			break;
		}
		return true;
	};
	json parsed = json::parse(text.begin(), text.end(), check, false);
	if (parsed.is_discarded())
		return plain_error(std::string(what) + " is not valid JSON");
	if (!parsed.is_object())
		return plain_error(std::string(what) + " is a JSON " + type_name(parsed) + ", not an object");
	if (too_deep)
		return plain_error(std::string(what) + " nests deeper than " + std::to_string(kMaxTokenJsonDepth) +
		                   " levels");
	if (!duplicate.empty())
		return plain_error(std::string(what) + " has the member " + display(duplicate) + " more than once");
	return parsed;
}

std::string hex(const unsigned char *p, size_t n)
{
	static constexpr char digits[] = "0123456789abcdef";
	std::string out;
	out.reserve(n * 2);
	for (size_t i = 0; i < n; i++) {
		out += digits[p[i] >> 4];
		out += digits[p[i] & 0xf];
	}
	return out;
}

std::string sha256_hex(std::string_view data)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) {
		ERR_clear_error();
		return {};
	}
	return hex(md, len);
}

// --- keys ---

Result<tls::EvpPkeyPtr> pkey_from_params(const char *type, OSSL_PARAM_BLD *bld, const std::string &what)
{
	ParamPtr params(OSSL_PARAM_BLD_to_param(bld));
	if (!params)
		return tls::openssl_error(what + ": building key parameters");
	tls::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
	if (!ctx)
		return tls::openssl_error(what + ": no " + type + " support");
	EVP_PKEY *raw = nullptr;
	if (EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
	    EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
		return tls::openssl_error(what + ": not a valid " + type + " public key");
	return tls::EvpPkeyPtr(raw);
}

Result<std::string> key_bytes(const json &jwk, const char *name)
{
	const std::string *text = string_member(jwk, name);
	if (!text)
		return plain_error(std::string("member \"") + name + "\" missing or not a string");
	auto bytes = base64url_decode(*text);
	if (!bytes)
		return plain_error(std::string("member \"") + name + "\": " + bytes.error().message());
	return bytes;
}

Result<tls::EvpPkeyPtr> rsa_key(const json &jwk)
{
	auto n = key_bytes(jwk, "n");
	if (!n)
		return n.error();
	auto e = key_bytes(jwk, "e");
	if (!e)
		return e.error();
	tls::BignumPtr bn_n(
	    BN_bin2bn(reinterpret_cast<const unsigned char *>(n->data()), static_cast<int>(n->size()), nullptr));
	tls::BignumPtr bn_e(
	    BN_bin2bn(reinterpret_cast<const unsigned char *>(e->data()), static_cast<int>(e->size()), nullptr));
	if (!bn_n || !bn_e)
		return tls::openssl_error("reading n and e");
	const int bits = BN_num_bits(bn_n.get());
	if (bits < kMinRsaBits || bits > kMaxRsaBits)
		return plain_error("RSA modulus of " + std::to_string(bits) + " bits (" + std::to_string(kMinRsaBits) +
		                   ".." + std::to_string(kMaxRsaBits) + " allowed)");
	if (!BN_is_odd(bn_n.get()))
		return plain_error("RSA modulus is even");
	if (!BN_is_odd(bn_e.get()) || BN_num_bits(bn_e.get()) < 2 ||
	    static_cast<size_t>(BN_num_bytes(bn_e.get())) > kMaxRsaExponentBytes)
		return plain_error("RSA exponent must be odd, at least 3 and at most 64 bits");
	ParamBldPtr bld(OSSL_PARAM_BLD_new());
	if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
	    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1)
		return tls::openssl_error("RSA key parameters");
	return pkey_from_params("RSA", bld.get(), "RSA key");
}

Result<tls::EvpPkeyPtr> ec_p256_key(const json &jwk)
{
	auto x = key_bytes(jwk, "x");
	if (!x)
		return x.error();
	auto y = key_bytes(jwk, "y");
	if (!y)
		return y.error();
	if (x->size() != kP256CoordinateBytes || y->size() != kP256CoordinateBytes)
		return plain_error("P-256 coordinates must be 32 bytes each (x " + std::to_string(x->size()) + ", y " +
		                   std::to_string(y->size()) + ")");
	std::string point = "\x04" + *x + *y;
	ParamBldPtr bld(OSSL_PARAM_BLD_new());
	if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) != 1 ||
	    OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1)
		return tls::openssl_error("EC key parameters");
	auto key = pkey_from_params("EC", bld.get(), "EC key");
	if (!key)
		return key.error();
	tls::EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key->get(), nullptr));
	if (!check || EVP_PKEY_public_check(check.get()) != 1)
		return tls::openssl_error("EC point is not a valid P-256 public key");
	return key;
}

// One JWK: a usable key, or the reason it is skipped.
Result<Jwk> read_jwk(const json &jwk)
{
	if (!jwk.is_object())
		return plain_error(std::string("a JSON ") + type_name(jwk) + ", not an object");
	const std::string *kid = string_member(jwk, "kid");
	if (!kid || kid->empty())
		return plain_error("no kid (tokens name their key by kid)");
	if (auto use = jwk.find("use"); use != jwk.end() && *use != "sig")
		return plain_error("use " + display_json(*use) + " is not \"sig\"");
	if (auto ops = jwk.find("key_ops"); ops != jwk.end()) {
		bool verify = false;
		if (ops->is_array())
			for (const json &op : *ops)
				verify = verify || op == "verify";
		if (!verify)
			return plain_error("key_ops " + display_json(*ops) + " lack \"verify\"");
	}
	const std::string *kty = string_member(jwk, "kty");
	if (!kty)
		return plain_error("kty missing or not a string");
	std::string alg;
	if (auto a = jwk.find("alg"); a != jwk.end()) {
		const std::string *s = a->get_ptr<const std::string *>();
		if (!s)
			return plain_error("alg is not a string");
		if (*s != kRs256 && *s != kEs256)
			return plain_error("alg " + display(*s) + " is not supported (RS256, ES256)");
		alg = *s;
	}
	Jwk out;
	out.kid = *kid;
	if (*kty == "RSA") {
		if (!alg.empty() && alg != kRs256)
			return plain_error("alg " + alg + " does not fit kty RSA");
		auto key = rsa_key(jwk);
		if (!key)
			return key.error();
		out.alg = kRs256;
		out.key = std::move(*key);
	} else if (*kty == "EC") {
		if (!alg.empty() && alg != kEs256)
			return plain_error("alg " + alg + " does not fit kty EC");
		const std::string *crv = string_member(jwk, "crv");
		if (!crv || *crv != "P-256")
			return plain_error("crv " + (crv ? display(*crv) : std::string("(none)")) +
			                   " is not supported (P-256)");
		auto key = ec_p256_key(jwk);
		if (!key)
			return key.error();
		out.alg = kEs256;
		out.key = std::move(*key);
	} else {
		return plain_error("kty " + display(*kty) + " is not supported (RSA, EC)");
	}
	return out;
}

// --- signatures ---

Status verify_signature(const Jwk &key, std::string_view signing_input, std::string_view signature)
{
	std::string der;
	std::string_view sig = signature;
	if (key.alg == kEs256) {
		if (signature.size() != kEs256SignatureBytes)
			return plain_error("ES256 signature is " + std::to_string(signature.size()) +
			                   " bytes; JWS wants 64 (raw r||s)");
		const auto *p = reinterpret_cast<const unsigned char *>(signature.data());
		tls::BignumPtr r(BN_bin2bn(p, 32, nullptr));
		tls::BignumPtr s(BN_bin2bn(p + 32, 32, nullptr));
		EcdsaSigPtr ecdsa(ECDSA_SIG_new());
		if (!r || !s || !ecdsa || ECDSA_SIG_set0(ecdsa.get(), r.get(), s.get()) != 1)
			return tls::openssl_error("ES256 signature");
		(void)r.release(); // owned by ecdsa now
		(void)s.release();
		unsigned char *out = nullptr;
		const int len = i2d_ECDSA_SIG(ecdsa.get(), &out);
		if (len <= 0)
			return tls::openssl_error("ES256 signature encoding");
		der.assign(reinterpret_cast<const char *>(out), static_cast<size_t>(len));
		OPENSSL_free(out);
		sig = der;
	} else {
		const int size = EVP_PKEY_get_size(key.key.get());
		if (size <= 0 || signature.size() != static_cast<size_t>(size))
			return plain_error("RS256 signature is " + std::to_string(signature.size()) +
			                   " bytes; the key's modulus is " + std::to_string(size));
	}
	tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
	if (!ctx ||
	    EVP_DigestVerifyInit_ex(ctx.get(), nullptr, "SHA256", nullptr, nullptr, key.key.get(), nullptr) != 1)
		return tls::openssl_error("signature check setup");
	const int rc =
	    EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char *>(sig.data()), sig.size(),
	                     reinterpret_cast<const unsigned char *>(signing_input.data()), signing_input.size());
	if (rc != 1) {
		ERR_clear_error();
		return plain_error("signature does not verify with key kid=" + display(key.kid) + " (" + key.alg + ")");
	}
	return {};
}

// --- claims ---

// A NumericDate claim (RFC 7519 §2): absent, or seconds (fractions floored); anything else is an error.
Result<std::optional<int64_t>> numeric_date(const json &payload, const char *name)
{
	auto it = payload.find(name);
	if (it == payload.end())
		return std::optional<int64_t>();
	if (const auto *u = it->get_ptr<const json::number_unsigned_t *>()) {
		if (*u > static_cast<json::number_unsigned_t>(INT64_MAX))
			return plain_error(std::string("claim ") + name + " is out of range");
		return std::optional<int64_t>(static_cast<int64_t>(*u));
	}
	if (const auto *i = it->get_ptr<const json::number_integer_t *>())
		return std::optional<int64_t>(static_cast<int64_t>(*i));
	if (const auto *f = it->get_ptr<const json::number_float_t *>()) {
		// 9.2e18 is just below 2^63: the floored value fits.
		if (!std::isfinite(*f) || *f < -9.2e18 || *f > 9.2e18)
			return plain_error(std::string("claim ") + name + " is out of range");
		return std::optional<int64_t>(static_cast<int64_t>(std::floor(*f)));
	}
	return plain_error(std::string("claim ") + name + " is a " + type_name(*it) + ", not a number");
}

std::string time_note(int64_t now, int64_t leeway)
{
	return "(now " + std::to_string(now) + ", leeway " + std::to_string(leeway) + " s)";
}

Status check_audience(const json &payload, const IssuerPolicy &policy)
{
	auto it = payload.find("aud");
	if (it == payload.end())
		return plain_error("token has no aud");
	std::vector<const std::string *> auds;
	if (const std::string *s = it->get_ptr<const std::string *>()) {
		auds.push_back(s);
	} else if (it->is_array()) {
		for (const json &a : *it) {
			const std::string *s2 = a.get_ptr<const std::string *>();
			if (!s2)
				return plain_error("token aud array holds a " + std::string(type_name(a)) +
				                   ", not a string");
			auds.push_back(s2);
		}
	} else {
		return plain_error("token aud is a " + std::string(type_name(*it)) + ", not a string or array");
	}
	for (const std::string *a : auds)
		for (const std::string &want : policy.audiences)
			if (*a == want)
				return {};
	json want = policy.audiences;
	json have = json::array();
	for (const std::string *a : auds)
		have.push_back(*a);
	return plain_error("audience mismatch: token aud " + display_json(have) + " not in " + display_json(want));
}

Status check_required_claim(const json &payload, const std::string &name, const std::string &pattern)
{
	auto it = payload.find(name);
	if (it == payload.end())
		return plain_error("required claim " + display(name) + " missing");
	std::string value;
	if (const std::string *s = it->get_ptr<const std::string *>())
		value = *s;
	else if (it->is_number() || it->is_boolean())
		value = dump(*it);
	else
		return plain_error("required claim " + display(name) + " is a " + type_name(*it) +
		                   ", not a string, number or boolean");
	if (!glob_match(pattern, value))
		return plain_error("required claim " + display(name) + " = " + quote(value) + " does not match " +
		                   quote(pattern));
	return {};
}

bool is_continuation(unsigned char c)
{
	return (c & 0xc0) == 0x80;
}

size_t next_char(std::string_view s, size_t i)
{
	i++;
	while (i < s.size() && is_continuation(static_cast<unsigned char>(s[i])))
		i++;
	return i;
}

int8_t base64url_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return static_cast<int8_t>(c - 'A');
	if (c >= 'a' && c <= 'z')
		return static_cast<int8_t>(c - 'a' + 26);
	if (c >= '0' && c <= '9')
		return static_cast<int8_t>(c - '0' + 52);
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

} // namespace

// --- base64url, glob ---

Result<std::string> base64url_decode(std::string_view in)
{
	if (in.size() % 4 == 1)
		return plain_error("base64url text of impossible length " + std::to_string(in.size()));
	std::string out;
	out.reserve(in.size() * 3 / 4);
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < in.size(); i++) {
		const int8_t v = base64url_value(in[i]);
		if (v < 0) {
			if (in[i] == '=')
				return plain_error("base64url text is padded ('=' at offset " + std::to_string(i) +
				                   ")");
			return plain_error("character " + display_json(json(std::string(1, in[i]))) + " at offset " +
			                   std::to_string(i) + " is not base64url");
		}
		acc = (acc << 6) | static_cast<uint32_t>(v);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out += static_cast<char>((acc >> bits) & 0xff);
		}
	}
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
		return plain_error("base64url text has non-zero trailing bits");
	return out;
}

std::string base64url_encode(std::string_view in)
{
	static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	std::string out;
	out.reserve((in.size() * 4 + 2) / 3);
	uint32_t acc = 0;
	int bits = 0;
	for (char c : in) {
		acc = (acc << 8) | static_cast<unsigned char>(c);
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			out += alphabet[(acc >> bits) & 0x3f];
		}
	}
	if (bits > 0)
		out += alphabet[(acc << (6 - bits)) & 0x3f];
	return out;
}

bool glob_match(std::string_view pattern, std::string_view text)
{
	size_t p = 0, t = 0;
	size_t star = std::string_view::npos, resume = 0;
	while (t < text.size()) {
		if (p < pattern.size() && pattern[p] == '*') {
			star = p++;
			resume = t;
		} else if (p < pattern.size() && pattern[p] == '?') {
			p++;
			t = next_char(text, t);
		} else if (p < pattern.size() && pattern[p] == text[t]) {
			p++;
			t++;
		} else if (star != std::string_view::npos) {
			p = star + 1;
			resume = next_char(text, resume);
			t = resume;
		} else {
			return false;
		}
	}
	while (p < pattern.size() && pattern[p] == '*')
		p++;
	return p == pattern.size();
}

// --- KeySet ---

Result<KeySet> KeySet::parse(std::string_view jwks_json)
{
	// Depth is bounded as in tokens: a skipped key's reason dumps its members recursively, and a
	// deeply nested "use" or "key_ops" overflowed the stack (found by tests/fuzz/jwks.cc).
	bool too_deep = false;
	json::parser_callback_t check = [&](int depth, json::parse_event_t event, json &) {
		if (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start)
			too_deep = too_deep || depth >= kMaxTokenJsonDepth;
		return true;
	};
	json doc = json::parse(jwks_json.begin(), jwks_json.end(), check, false);
	if (doc.is_discarded())
		return plain_error("key set is not valid JSON");
	if (too_deep)
		return plain_error("key set nests deeper than " + std::to_string(kMaxTokenJsonDepth) + " levels");
	if (!doc.is_object())
		return plain_error(std::string("key set is a JSON ") + type_name(doc) + ", not an object");
	auto keys = doc.find("keys");
	if (keys == doc.end())
		return plain_error("key set has no \"keys\" member");
	if (!keys->is_array())
		return plain_error(std::string("key set \"keys\" is a ") + type_name(*keys) + ", not an array");
	if (keys->empty())
		return plain_error("key set has no keys");
	KeySet set;
	size_t index = 0;
	for (const json &entry : *keys) {
		auto jwk = read_jwk(entry);
		std::string label = "key " + std::to_string(index++);
		if (entry.is_object())
			if (const std::string *kid = string_member(entry, "kid"))
				label += " (kid=" + display(*kid) + ")";
		if (!jwk) {
			set.skipped_.push_back(label + ": " + jwk.error().message());
			continue;
		}
		if (set.find(jwk->kid)) {
			set.skipped_.push_back(label + ": a usable key with this kid came first");
			continue;
		}
		set.keys_.push_back(std::move(*jwk));
	}
	if (set.keys_.empty()) {
		std::string why;
		for (size_t i = 0; i < set.skipped_.size() && i < kMaxReasonsInError; i++)
			why += (i ? "; " : "") + set.skipped_[i];
		if (set.skipped_.size() > kMaxReasonsInError)
			why += "; ...";
		return plain_error("key set has no usable key (" + why + ")");
	}
	return set;
}

const Jwk *KeySet::find(std::string_view kid) const
{
	for (const Jwk &k : keys_)
		if (k.kid == kid)
			return &k;
	return nullptr;
}

// --- tokens ---

Result<UnverifiedToken> decode(std::string_view token)
{
	if (token.empty())
		return plain_error("token is empty");
	if (token.size() > kMaxTokenBytes)
		return plain_error("token is " + std::to_string(token.size()) + " bytes, more than the " +
		                   std::to_string(kMaxTokenBytes) + " allowed");
	std::array<std::string_view, 3> parts;
	size_t count = 0, start = 0;
	for (;;) {
		const size_t dot = token.find('.', start);
		if (count < parts.size())
			parts[count] =
			    token.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
		count++;
		if (dot == std::string_view::npos)
			break;
		start = dot + 1;
	}
	if (count != 3)
		return plain_error("token is not a compact JWS: " + std::to_string(count) +
		                   " dot-separated segments, not 3");
	if (parts[0].empty())
		return plain_error("token header segment is empty");
	if (parts[1].empty())
		return plain_error("token payload segment is empty");
	auto header_text = base64url_decode(parts[0]);
	if (!header_text)
		return plain_error("token header: " + header_text.error().message());
	auto payload_text = base64url_decode(parts[1]);
	if (!payload_text)
		return plain_error("token payload: " + payload_text.error().message());
	auto signature = base64url_decode(parts[2]);
	if (!signature)
		return plain_error("token signature: " + signature.error().message());
	auto header = parse_token_object(*header_text, "token header");
	if (!header)
		return header.error();
	auto payload = parse_token_object(*payload_text, "token payload");
	if (!payload)
		return payload.error();
	UnverifiedToken out;
	out.header = std::move(*header);
	out.payload = std::move(*payload);
	out.signing_input = std::string(token.substr(0, parts[0].size() + 1 + parts[1].size()));
	out.signature = std::move(*signature);
	return out;
}

Result<VerifiedToken> verify(std::string_view token, const KeySet &keys, const IssuerPolicy &policy, int64_t now,
                             int64_t leeway_seconds)
{
	const int64_t leeway = std::clamp<int64_t>(leeway_seconds, 0, kMaxLeewaySeconds);
	if (policy.issuer.empty())
		return plain_error("issuer policy has no issuer");
	if (policy.audiences.empty())
		return plain_error("issuer policy for " + display(policy.issuer) + " has no audiences");
	auto decoded = decode(token);
	if (!decoded)
		return decoded.error();
	const json &header = decoded->header;
	const json &payload = decoded->payload;

	// The header: only what picks and pins the key counts; "jku", "jwk", "x5u" are never followed.
	if (auto crit = header.find("crit"); crit != header.end())
		return plain_error("token header has crit " + display_json(*crit) +
		                   "; no critical extensions are supported");
	auto alg_it = header.find("alg");
	if (alg_it == header.end())
		return plain_error("token header has no alg");
	const std::string *alg = alg_it->get_ptr<const std::string *>();
	if (!alg)
		return plain_error("token header alg is a " + std::string(type_name(*alg_it)) + ", not a string");
	auto kid_it = header.find("kid");
	if (kid_it == header.end())
		return plain_error("token header has no kid");
	const std::string *kid = kid_it->get_ptr<const std::string *>();
	if (!kid)
		return plain_error("token header kid is a " + std::string(type_name(*kid_it)) + ", not a string");
	const Jwk *key = keys.find(*kid);
	if (!key)
		return plain_error("unknown kid " + display(*kid) + " (not in the key set of " +
		                   display(policy.issuer) + ")");
	if (*alg != key->alg)
		return plain_error("algorithm " + display(*alg) + " not allowed for key kid=" + display(key->kid) +
		                   " (pinned " + key->alg + ")");
	if (Status s = verify_signature(*key, decoded->signing_input, decoded->signature); !s)
		return s.error();

	// The claims, now authenticated.
	const std::string *iss = string_member(payload, "iss");
	if (!iss)
		return plain_error(payload.contains("iss") ? "token iss is not a string" : "token has no iss");
	if (*iss != policy.issuer)
		return plain_error("issuer mismatch: token iss " + quote(*iss) + " is not " + quote(policy.issuer));
	if (Status s = check_audience(payload, policy); !s)
		return s.error();
	auto exp = numeric_date(payload, "exp");
	if (!exp)
		return exp.error();
	if (!*exp)
		return plain_error("token has no exp");
	if (static_cast<__int128>(now) > static_cast<__int128>(**exp) + leeway)
		return plain_error("token expired at " + std::to_string(**exp) + " " + time_note(now, leeway));
	auto nbf = numeric_date(payload, "nbf");
	if (!nbf)
		return nbf.error();
	if (*nbf && static_cast<__int128>(now) + leeway < static_cast<__int128>(**nbf))
		return plain_error("token not valid before " + std::to_string(**nbf) + " " + time_note(now, leeway));
	auto iat = numeric_date(payload, "iat");
	if (!iat)
		return iat.error();
	if (*iat && static_cast<__int128>(**iat) > static_cast<__int128>(now) + leeway)
		return plain_error("token issued in the future at " + std::to_string(**iat) + " " +
		                   time_note(now, leeway));
	const std::string *sub = string_member(payload, "sub");
	if (!sub)
		return plain_error(payload.contains("sub") ? "token sub is not a string" : "token has no sub");
	for (const auto &[name, pattern] : policy.required_claims)
		if (Status s = check_required_claim(payload, name, pattern); !s)
			return s.error();

	VerifiedToken out;
	out.issuer = *iss;
	out.subject = *sub;
	out.expires_at = **exp;
	// Over what the signature signs, not the signature: an ECDSA signature has a second valid
	// form (r, n - s), so a token's bytes can change while it still verifies.
	out.fingerprint = sha256_hex(decoded->signing_input);
	out.claims = std::move(decoded->payload);
	return out;
}

// --- KeyCache ---

KeyCache::KeyCache(Fetcher fetcher, std::chrono::seconds cooldown)
    : fetcher_(std::move(fetcher)), cooldown_(std::max(cooldown, std::chrono::seconds(0)))
{
	worker_ = std::thread([this] { run(); });
}

KeyCache::~KeyCache()
{
	{
		std::lock_guard lock(mutex_);
		stopping_ = true;
		queue_.clear();
	}
	wake_.notify_all();
	worker_.join();
}

void KeyCache::set_static(const std::string &issuer, KeySet keys)
{
	auto shared = std::make_shared<const KeySet>(std::move(keys));
	std::lock_guard lock(mutex_);
	Entry &e = entries_[issuer];
	e.is_static = true;
	e.keys = std::move(shared);
}

std::shared_ptr<const KeySet> KeyCache::keys(const std::string &issuer) const
{
	std::lock_guard lock(mutex_);
	auto it = entries_.find(issuer);
	return it == entries_.end() ? nullptr : it->second.keys;
}

bool KeyCache::request_refetch(const std::string &issuer)
{
	std::lock_guard lock(mutex_);
	if (stopping_)
		return false;
	Entry &e = entries_[issuer];
	if (e.is_static)
		return false;
	const auto now = std::chrono::steady_clock::now();
	if (e.requested && now - e.last_request < cooldown_)
		return false;
	e.requested = true;
	e.last_request = now;
	if (!e.queued) {
		e.queued = true;
		queue_.push_back(issuer);
		wake_.notify_one();
	}
	return true;
}

bool KeyCache::load(const std::string &issuer)
{
	std::lock_guard lock(mutex_);
	if (stopping_)
		return false;
	Entry &e = entries_[issuer];
	if (e.is_static)
		return false;
	if (!e.queued) {
		e.queued = true;
		queue_.push_back(issuer);
		wake_.notify_one();
	}
	return true;
}

bool KeyCache::fetching(const std::string &issuer) const
{
	std::lock_guard lock(mutex_);
	auto it = entries_.find(issuer);
	return (it != entries_.end() && it->second.queued) || (running_ && running_issuer_ == issuer);
}

bool KeyCache::wait_idle(std::chrono::milliseconds timeout)
{
	std::unique_lock lock(mutex_);
	return idle_cv_.wait_for(lock, timeout, [this] { return queue_.empty() && !running_; });
}

KeyCache::Stats KeyCache::stats(const std::string &issuer) const
{
	std::lock_guard lock(mutex_);
	auto it = entries_.find(issuer);
	return it == entries_.end() ? Stats{} : it->second.stats;
}

void KeyCache::run()
{
	std::unique_lock lock(mutex_);
	for (;;) {
		wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
		if (stopping_)
			break;
		const std::string issuer = std::move(queue_.front());
		queue_.pop_front();
		entries_[issuer].queued = false;
		running_ = true;
		running_issuer_ = issuer;
		lock.unlock();
		Result<KeySet> fetched = fetcher_ ? fetcher_(issuer) : Result<KeySet>(plain_error("no key fetcher"));
		// Built outside the lock; freed outside it too if unused.
		std::shared_ptr<const KeySet> shared;
		if (fetched)
			shared = std::make_shared<const KeySet>(std::move(fetched).value());
		lock.lock();
		running_ = false;
		Entry &e = entries_[issuer];
		e.stats.fetches++;
		if (!fetched) {
			e.stats.failures++;
			e.stats.last_error = fetched.error().message();
		} else if (!e.is_static) {
			std::swap(e.keys, shared);
		}
		if (queue_.empty())
			idle_cv_.notify_all();
		if (shared) {
			lock.unlock();
			shared.reset();
			lock.lock();
		}
	}
	running_ = false;
	idle_cv_.notify_all();
}

} // namespace cordon::identity
