#include "proxy/tls_endpoint.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <cstring>

namespace cordon::proxy {
namespace {

// Index of our ex_data slot holding the TlsEndpoint (for the ALPN callback).
int endpoint_index()
{
	static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
	return index;
}

} // namespace

std::string openssl_errors()
{
	std::string out;
	unsigned long e;
	while ((e = ERR_get_error()) != 0) {
		char buf[256];
		ERR_error_string_n(e, buf, sizeof(buf));
		out += (out.empty() ? "" : "; ") + std::string(buf);
	}
	return out.empty() ? "unknown OpenSSL error" : out;
}

std::string alpn_wire(const std::vector<std::string> &protocols)
{
	std::string wire;
	for (const auto &p : protocols) {
		if (p.empty() || p.size() > 255)
			continue;
		wire.push_back(static_cast<char>(p.size()));
		wire += p;
	}
	return wire;
}

Result<SslCtxHandle> make_server_context()
{
	SslCtxHandle ctx(SSL_CTX_new(TLS_server_method()));
	if (!ctx)
		return plain_error("SSL_CTX_new (server): " + openssl_errors());
	SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
	// Each intercepted connection gets a fresh session: no tickets or cache to keep in step
	// with the leaf cache.
	SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
	SSL_CTX_set_alpn_select_cb(
	    ctx.get(),
	    [](SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen,
	       void *) -> int {
		    auto *self = static_cast<const std::string *>(SSL_get_ex_data(ssl, endpoint_index()));
		    if (!self || self->empty())
			    return SSL_TLSEXT_ERR_NOACK;
		    // Answer with exactly the protocol the upstream chose, if the client offered it.
		    for (unsigned int i = 0; i < inlen;) {
			    unsigned int len = in[i];
			    if (i + 1 + len > inlen)
				    break;
			    if (len == self->size() && std::memcmp(in + i + 1, self->data(), len) == 0) {
				    *out = in + i + 1;
				    *outlen = static_cast<unsigned char>(len);
				    return SSL_TLSEXT_ERR_OK;
			    }
			    i += 1 + len;
		    }
		    return SSL_TLSEXT_ERR_NOACK;
	    },
	    nullptr);
	return ctx;
}

Result<SslCtxHandle> make_client_context(const std::string &ca_file, X509 *own_ca)
{
	SslCtxHandle ctx(SSL_CTX_new(TLS_client_method()));
	if (!ctx)
		return plain_error("SSL_CTX_new (client): " + openssl_errors());
	SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
	SSL_CTX_set_app_data(ctx.get(), own_ca);
	SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, [](int ok, X509_STORE_CTX *store) -> int {
		if (!ok)
			return 0;
		auto *ssl = static_cast<SSL *>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
		auto *own = ssl ? static_cast<X509 *>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl))) : nullptr;
		X509 *cert = X509_STORE_CTX_get_current_cert(store);
		if (own && cert && X509_cmp(cert, own) == 0) {
			X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
			return 0;
		}
		return 1;
	});
	if (ca_file.empty()) {
		if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1)
			return plain_error("load the system trust store: " + openssl_errors());
	} else if (SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) {
		return plain_error("load upstream CA file " + ca_file + ": " + openssl_errors());
	}
	return ctx;
}

Result<std::unique_ptr<TlsEndpoint>> TlsEndpoint::server(SSL_CTX *ctx, X509 *certificate, EVP_PKEY *key,
                                                         std::string alpn_choice)
{
	std::unique_ptr<TlsEndpoint> ep(new TlsEndpoint());
	ep->role_ = Role::Server;
	ep->alpn_choice_ = std::move(alpn_choice);
	ep->ssl_.reset(SSL_new(ctx));
	if (!ep->ssl_)
		return plain_error("SSL_new: " + openssl_errors());
	if (SSL_use_certificate(ep->ssl_.get(), certificate) != 1 || SSL_use_PrivateKey(ep->ssl_.get(), key) != 1)
		return plain_error("use leaf certificate: " + openssl_errors());
	SSL_set_ex_data(ep->ssl_.get(), endpoint_index(), &ep->alpn_choice_);
	ep->rbio_ = BIO_new(BIO_s_mem());
	ep->wbio_ = BIO_new(BIO_s_mem());
	if (!ep->rbio_ || !ep->wbio_)
		return plain_error("BIO_new: " + openssl_errors());
	BIO_set_mem_eof_return(ep->rbio_, -1); // empty means "want more", not end of stream
	SSL_set_bio(ep->ssl_.get(), ep->rbio_, ep->wbio_);
	SSL_set_accept_state(ep->ssl_.get());
	return ep;
}

Result<std::unique_ptr<TlsEndpoint>> TlsEndpoint::client(SSL_CTX *ctx, const std::string &host,
                                                         const std::vector<std::string> &alpn)
{
	std::unique_ptr<TlsEndpoint> ep(new TlsEndpoint());
	ep->role_ = Role::Client;
	ep->ssl_.reset(SSL_new(ctx));
	if (!ep->ssl_)
		return plain_error("SSL_new: " + openssl_errors());
	if (SSL_set_tlsext_host_name(ep->ssl_.get(), host.c_str()) != 1)
		return plain_error("set SNI: " + openssl_errors());
	// The certificate must name the host the job asked for.
	if (SSL_set1_host(ep->ssl_.get(), host.c_str()) != 1)
		return plain_error("set host name check: " + openssl_errors());
	SSL_set_hostflags(ep->ssl_.get(), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	const std::string wire = alpn_wire(alpn);
	if (!wire.empty() && SSL_set_alpn_protos(ep->ssl_.get(), reinterpret_cast<const unsigned char *>(wire.data()),
	                                         static_cast<unsigned int>(wire.size())) != 0)
		return plain_error("set ALPN: " + openssl_errors());
	ep->rbio_ = BIO_new(BIO_s_mem());
	ep->wbio_ = BIO_new(BIO_s_mem());
	if (!ep->rbio_ || !ep->wbio_)
		return plain_error("BIO_new: " + openssl_errors());
	BIO_set_mem_eof_return(ep->rbio_, -1);
	SSL_set_bio(ep->ssl_.get(), ep->rbio_, ep->wbio_);
	SSL_set_connect_state(ep->ssl_.get());
	return ep;
}

Status TlsEndpoint::feed(std::span<const uint8_t> ciphertext)
{
	size_t off = 0;
	while (off < ciphertext.size()) {
		int n = BIO_write(rbio_, ciphertext.data() + off, static_cast<int>(ciphertext.size() - off));
		if (n <= 0)
			return plain_error("BIO_write: " + openssl_errors());
		off += static_cast<size_t>(n);
	}
	return {};
}

TlsEndpoint::Step TlsEndpoint::handshake()
{
	if (established_)
		return Step::Done;
	if (failed_)
		return Step::Failed;
	ERR_clear_error();
	int rc = SSL_do_handshake(ssl_.get());
	if (rc == 1) {
		established_ = true;
		return Step::Done;
	}
	int err = SSL_get_error(ssl_.get(), rc);
	if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
		return Step::WantIo;
	failed_ = true;
	if (role_ == Role::Client) {
		long verify = SSL_get_verify_result(ssl_.get());
		if (verify != X509_V_OK) {
			error_ = std::string("upstream certificate rejected: ") + X509_verify_cert_error_string(verify);
			ERR_clear_error();
			return Step::Failed;
		}
	}
	error_ = "TLS handshake failed: " + openssl_errors();
	return Step::Failed;
}

std::string TlsEndpoint::alpn_selected() const
{
	const unsigned char *data = nullptr;
	unsigned int len = 0;
	SSL_get0_alpn_selected(ssl_.get(), &data, &len);
	return std::string(reinterpret_cast<const char *>(data), len);
}

std::string TlsEndpoint::version() const
{
	return SSL_get_version(ssl_.get());
}

bool TlsEndpoint::read(std::string &out, size_t max)
{
	if (failed_ || peer_closed_)
		return false;
	char buf[16384];
	size_t got = 0;
	while (got < max) {
		ERR_clear_error();
		int n = SSL_read(ssl_.get(), buf, static_cast<int>(std::min(sizeof(buf), max - got)));
		if (n > 0) {
			out.append(buf, static_cast<size_t>(n));
			got += static_cast<size_t>(n);
			continue;
		}
		int err = SSL_get_error(ssl_.get(), n);
		if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
			return true;
		if (err == SSL_ERROR_ZERO_RETURN) {
			peer_closed_ = true;
			return false;
		}
		failed_ = true;
		error_ = "TLS read failed: " + openssl_errors();
		return false;
	}
	return true;
}

Status TlsEndpoint::write(std::span<const uint8_t> plaintext)
{
	size_t off = 0;
	while (off < plaintext.size()) {
		ERR_clear_error();
		int n = SSL_write(ssl_.get(), plaintext.data() + off, static_cast<int>(plaintext.size() - off));
		if (n <= 0) {
			failed_ = true;
			error_ = "TLS write failed: " + openssl_errors();
			return plain_error(error_);
		}
		off += static_cast<size_t>(n);
	}
	return {};
}

void TlsEndpoint::close_notify()
{
	ERR_clear_error();
	if (established_ && !failed_)
		SSL_shutdown(ssl_.get()); // queues close_notify; the peer's answer is not awaited
}

size_t TlsEndpoint::pending_ciphertext() const
{
	return BIO_ctrl_pending(wbio_);
}

bool TlsEndpoint::has_buffered_input() const
{
	return BIO_ctrl_pending(rbio_) > 0 || SSL_pending(ssl_.get()) > 0;
}

void TlsEndpoint::take_ciphertext(std::string &out)
{
	size_t pending = BIO_ctrl_pending(wbio_);
	if (pending == 0)
		return;
	size_t old = out.size();
	out.resize(old + pending);
	int n = BIO_read(wbio_, out.data() + old, static_cast<int>(pending));
	out.resize(old + (n > 0 ? static_cast<size_t>(n) : 0));
}

} // namespace cordon::proxy
