// The host's own CA: cordond terminates intercepted TLS with leaves it signs, and the host trust
// stores (trust_store.h) are told to trust it. Its key never leaves <state_dir>/ca (root, 0700).
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/result.h"
#include "tls/openssl_ptr.h"

namespace cordon::tls {

// A certificate for one host name, signed by the CA, with its own private key.
struct Leaf {
	X509Ptr certificate;
	EvpPkeyPtr key;
	std::chrono::system_clock::time_point not_after;
};

class CertificateAuthority {
public:
	// Clients trust a leaf only from after its not_before; backdating absorbs their clock skew.
	static constexpr std::chrono::hours kBackdate{1};

	// Loads <state_dir>/ca/ca.key (mode 0600) and ca.crt (0644). Refuses a key that others could
	// read, files or directories not owned by this user, a key that does not match the
	// certificate, and a certificate that is not a CA or whose self-signature does not verify.
	static Result<CertificateAuthority> load(const std::string &state_dir);
	// As load(), but first creates the CA when <state_dir>/ca does not hold one: state_dir and ca/
	// become 0700, and ca/ appears with both files at once (built in a temporary directory and
	// renamed into place), so a crash or a concurrent caller never sees half a CA.
	static Result<CertificateAuthority> load_or_create(const std::string &state_dir);

	CertificateAuthority(CertificateAuthority &&) noexcept = default;
	CertificateAuthority &operator=(CertificateAuthority &&) noexcept = default;

	X509 *certificate() const { return cert_.get(); }
	EVP_PKEY *key() const { return key_.get(); }
	std::string certificate_pem() const;
	std::string fingerprint_sha256() const; // "AB:CD:..." as `openssl x509 -fingerprint -sha256`
	std::string subject() const;            // "O = cordon, CN = cordon host CA (<hostname>)"
	std::string serial_hex() const;
	std::chrono::system_clock::time_point not_before() const;
	std::chrono::system_clock::time_point not_after() const { return not_after_; }
	const std::string &cert_path() const { return cert_path_; }
	const std::string &key_path() const { return key_path_; }
	// True when load_or_create() made this CA rather than finding it.
	bool created() const { return created_; }

	// Mints a leaf for `host` (a DNS name, not an IP literal; normalized to lower case): a fresh
	// EC P-256 key, SAN DNS:host, serverAuth, valid from now - kBackdate to now + validity (never
	// beyond the CA's own not_after).
	Result<Leaf> issue_leaf(std::string_view host, std::chrono::seconds validity,
	                        std::chrono::system_clock::time_point now = std::chrono::system_clock::now()) const;

private:
	CertificateAuthority() = default;

	X509Ptr cert_;
	EvpPkeyPtr key_;
	std::string cert_path_;
	std::string key_path_;
	std::chrono::system_clock::time_point not_after_{};
	bool created_ = false;
};

// Shared with the trust store and cordonctl.
std::string certificate_to_pem(X509 *cert);
std::string sha256_fingerprint(X509 *cert);
std::chrono::system_clock::time_point asn1_time_to_time_point(const ASN1_TIME *t);
// A host name a leaf may be minted for: normalize_host_name(), and not an IPv4 literal.
Result<std::string> leaf_host_name(std::string_view host);

} // namespace cordon::tls
