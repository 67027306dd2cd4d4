// CI workload tokens: OIDC ID tokens (JWS compact serialization, RS256 or ES256) that a CI system
// (GitHub Actions, GitLab, ...) hands a job, verified against the issuer's published key set.
//
// Nothing on the verification path throws: JSON is parsed with exceptions off, every failure is an
// Error whose text says what was wrong. Algorithms are pinned per key (never taken from the token),
// so "alg":"none", HMAC with a public key as the secret and algorithm substitution cannot pass.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common/result.h"
#include "tls/openssl_ptr.h"

namespace cordon::identity {

inline constexpr size_t kMaxTokenBytes = 16 * 1024;
inline constexpr int64_t kMaxLeewaySeconds = 60;
// Header and payload nesting beyond this is refused (real tokens nest two or three levels).
inline constexpr int kMaxTokenJsonDepth = 32;
// RSA moduli outside this range are skipped when a key set is read.
inline constexpr int kMinRsaBits = 2048;
inline constexpr int kMaxRsaBits = 8192;

// One verification key from a JWKS, with the one algorithm it may verify.
struct Jwk {
	std::string kid;
	std::string alg; // "RS256" (an RSA key) or "ES256" (an EC P-256 key)
	tls::EvpPkeyPtr key;
};

// A JWKS ({"keys":[...]}) reduced to the keys this verifier can use. Keys of other types, curves or
// algorithms, keys whose "use" is not "sig" (or whose "key_ops" lack "verify"), keys without a
// kid, malformed keys and RSA keys under 2048 bits are skipped, each with a reason (skipped()), so
// one odd key does not break the set; a set left with no usable key is an error. When two usable
// keys share a kid the first is kept.
class KeySet {
public:
	static Result<KeySet> parse(std::string_view jwks_json);

	const Jwk *find(std::string_view kid) const; // nullptr if unknown
	size_t size() const { return keys_.size(); }
	const std::vector<Jwk> &keys() const { return keys_; }
	// "key 2 (kid=abc): kty oct is not supported", one per skipped key.
	const std::vector<std::string> &skipped() const { return skipped_; }

private:
	std::vector<Jwk> keys_;
	std::vector<std::string> skipped_;
};

struct IssuerPolicy {
	std::string issuer; // exact "iss"
	std::vector<std::string>
	    audiences; // token "aud" (string or array) must contain one of these; must be non-empty
	// claim name -> glob ('*' any run, '?' one character) over the claim's string value (numbers and
	// booleans as their JSON text); the claim must exist. Objects, arrays and null never match.
	std::vector<std::pair<std::string, std::string>> required_claims;
};

struct VerifiedToken {
	std::string issuer, subject;
	nlohmann::json claims;  // the whole verified payload
	int64_t expires_at = 0; // exp, unix seconds
	// Hex SHA-256 of the signed part (header.payload): identifies the token without storing it,
	// and stays the same when a malleable (ECDSA) signature is rewritten.
	std::string fingerprint;
};

// The header and payload decoded without verification (for picking the issuer and kid).
struct UnverifiedToken {
	nlohmann::json header, payload;
	std::string signing_input; // "<header b64>.<payload b64>", the bytes the signature covers
	std::string signature;     // decoded signature bytes
};

// Errors for anything that is not three unpadded base64url segments (at most kMaxTokenBytes in all)
// whose first two are JSON objects without duplicate member names, nested at most
// kMaxTokenJsonDepth deep.
Result<UnverifiedToken> decode(std::string_view token);

// Full verification, failing on the first broken rule with a distinct message: size, shape, no
// "crit" header, a "kid" naming a key of `keys` ("unknown kid ..." otherwise: the caller may
// refetch), header "alg" equal to the key's pinned algorithm, the signature (ES256 only as the
// 64-byte JWS r||s form), iss == policy.issuer, aud in policy.audiences, exp present and
// now <= exp + leeway, nbf (if present) <= now + leeway, iat (if present) <= now + leeway, sub a
// string, then the required claims. `now` is unix seconds; leeway is clamped to [0, 60] s.
Result<VerifiedToken> verify(std::string_view token, const KeySet &keys, const IssuerPolicy &policy, int64_t now,
                             int64_t leeway_seconds);

// Exposed for tests and policy checks: '*' matches any run (also empty), '?' one UTF-8 character.
bool glob_match(std::string_view pattern, std::string_view text);
// Unpadded base64url (RFC 7515 §2), strict: no padding, no whitespace, zero trailing bits.
Result<std::string> base64url_decode(std::string_view in);
std::string base64url_encode(std::string_view in);

// Last good key set per issuer. A refetch (initial load or unknown kid) is accepted at most once
// per `cooldown` per issuer, measured on the steady clock from the last accepted request (a
// cooldown of 0 accepts every request); a failed fetch keeps the last good set. Fetches run one at
// a time on a background thread owned by this object; the destructor drops queued fetches, waits
// for a running one and joins the thread. Thread-safe.
class KeyCache {
public:
	using Fetcher = std::function<Result<KeySet>(const std::string &issuer)>;

	KeyCache(Fetcher fetcher, std::chrono::seconds cooldown);
	~KeyCache();
	KeyCache(const KeyCache &) = delete;
	KeyCache &operator=(const KeyCache &) = delete;

	// Keys from a file: replace whatever the issuer had; the issuer is never fetched again.
	void set_static(const std::string &issuer, KeySet keys);
	std::shared_ptr<const KeySet> keys(const std::string &issuer) const; // null if none yet
	// Queues a background fetch. False if refused: a static issuer, or within the cooldown of the
	// last accepted request. A request while one for the issuer is still queued is accepted (and
	// coalesced) when the cooldown allows it.
	bool request_refetch(const std::string &issuer);
	// Queues the initial fetch of an issuer's keys. Unlike request_refetch() it does not start
	// the cooldown: a token naming a key rotated in since still gets its one refetch.
	bool load(const std::string &issuer);
	// A fetch for the issuer is queued or running: an unknown kid may yet become known.
	bool fetching(const std::string &issuer) const;
	// Waits until no fetch is queued or running (bounded by timeout); true if idle.
	bool wait_idle(std::chrono::milliseconds timeout);

	struct Stats {
		uint64_t fetches = 0, failures = 0; // fetches counts every attempt, failures the failed ones
		std::string last_error;
	};
	Stats stats(const std::string &issuer) const;

private:
	struct Entry {
		std::shared_ptr<const KeySet> keys;
		bool is_static = false;
		bool requested = false; // a request was ever accepted (the cooldown applies from then)
		bool queued = false;
		std::chrono::steady_clock::time_point last_request{};
		Stats stats;
	};

	void run();

	Fetcher fetcher_;
	std::chrono::steady_clock::duration cooldown_;
	mutable std::mutex mutex_;
	std::condition_variable wake_;    // the worker: work queued or stopping
	std::condition_variable idle_cv_; // wait_idle: queue drained and nothing running
	std::map<std::string, Entry> entries_;
	std::deque<std::string> queue_;
	bool running_ = false;
	std::string running_issuer_;
	bool stopping_ = false;
	std::thread worker_;
};

} // namespace cordon::identity
