// TLS over memory BIOs: the io_uring loop moves ciphertext, OpenSSL never touches a socket.
// One TlsEndpoint per side of an intercepted connection: a server toward the job (with a leaf
// minted for the SNI), a client toward Cursor (verifying Cursor's real certificate).
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace cordon::proxy {

struct SslCtxDeleter {
	void operator()(SSL_CTX *c) const { SSL_CTX_free(c); }
};
struct SslDeleter {
	void operator()(SSL *s) const { SSL_free(s); }
};
using SslCtxHandle = std::unique_ptr<SSL_CTX, SslCtxDeleter>;
using SslHandle = std::unique_ptr<SSL, SslDeleter>;

// Drains OpenSSL's error queue into one line.
std::string openssl_errors();

// Toward the job: TLS 1.2+, the leaf is set per connection, ALPN answers with what the
// upstream chose (set_alpn_choice before the handshake).
Result<SslCtxHandle> make_server_context();
// Toward Cursor: TLS 1.2+, full verification against the system store or `ca_file`. A chain
// anchored at `own_ca` (cordon's host CA, which `cordonctl ca install` adds to the system store)
// is rejected: Cursor never presents cordon's certificates.
Result<SslCtxHandle> make_client_context(const std::string &ca_file, X509 *own_ca);

// Wire-format ALPN list ("\x02h2\x08http/1.1") from protocol names.
std::string alpn_wire(const std::vector<std::string> &protocols);

class TlsEndpoint {
public:
	enum class Role { Server, Client };
	enum class Step { Done, WantIo, Failed };

	// Server: `certificate`/`key` is the leaf for this connection's SNI.
	static Result<std::unique_ptr<TlsEndpoint>> server(SSL_CTX *ctx, X509 *certificate, EVP_PKEY *key,
	                                                   std::string alpn_choice);
	// Client: SNI and host name check for `host`, offering `alpn`.
	static Result<std::unique_ptr<TlsEndpoint>> client(SSL_CTX *ctx, const std::string &host,
	                                                   const std::vector<std::string> &alpn);

	// Ciphertext that arrived from the peer.
	Status feed(std::span<const uint8_t> ciphertext);
	Step handshake();
	bool established() const { return established_; }
	// After a failed handshake: why, in words (certificate verification, alert, ...).
	const std::string &error() const { return error_; }
	std::string alpn_selected() const;
	std::string version() const;

	// Plaintext from the peer into `out` (appends at most `max` bytes). Returns false once the
	// peer has closed the TLS session (close_notify) or on error (see error()).
	bool read(std::string &out, size_t max);
	bool peer_closed() const { return peer_closed_; }
	// Ciphertext fed but not yet turned into plaintext, or plaintext not yet read.
	bool has_buffered_input() const;
	bool failed() const { return failed_; }
	// Plaintext to the peer; always accepted (the memory BIO grows; callers bound what they
	// write by watching pending_ciphertext()).
	Status write(std::span<const uint8_t> plaintext);
	void close_notify();
	// Ciphertext waiting to go to the peer.
	size_t pending_ciphertext() const;
	void take_ciphertext(std::string &out);

private:
	TlsEndpoint() = default;
	SslHandle ssl_;
	BIO *rbio_ = nullptr; // owned by ssl_
	BIO *wbio_ = nullptr; // owned by ssl_
	Role role_ = Role::Server;
	bool established_ = false;
	bool peer_closed_ = false;
	bool failed_ = false;
	std::string error_;
	std::string alpn_choice_;
};

} // namespace cordon::proxy
