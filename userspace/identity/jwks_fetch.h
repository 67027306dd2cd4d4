// OIDC discovery and JWKS download over HTTPS: synchronous and bounded (one deadline for the whole
// exchange, a body size limit), meant for a worker thread such as KeyCache's. Plain OpenSSL on a
// non-blocking socket; nothing throws, and SIGPIPE is held off while the socket is written.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "common/result.h"
#include "identity/jwt.h"

namespace cordon::identity {

struct FetchOptions {
	std::string ca_file; // PEM trust anchors; empty: the system trust store
	std::chrono::milliseconds timeout{5000};
	size_t max_bytes = 1 << 20; // response body limit
};

// GET `url` (https:// only, no user info): resolve (on a helper thread, so a slow resolver cannot
// outlast the timeout), connect, TLS 1.2+ with the chain verified and the host name (or, for an IP
// literal, an IP SAN) checked, one HTTP/1.1 request. The status must be 200; redirects are not
// followed. The body (Content-Length, chunked, or up to the close) at most max_bytes. The whole
// exchange finishes within options.timeout.
Result<std::string> https_get(const std::string &url, const FetchOptions &options);

// GET {issuer}/.well-known/openid-configuration (the document's "issuer" must equal `issuer`), take
// "jwks_uri" (https:// only), GET it and KeySet::parse it. Both requests share options.timeout.
// The jwks_uri an OpenID discovery document names, checked: a JSON object whose issuer is
// exactly `issuer`, and an https:// jwks_uri. Pure (fuzzed by tests/fuzz/jwks); errors name
// `discovery_url`.
Result<std::string> discovery_jwks_uri(const std::string &issuer, const std::string &discovery_url,
                                       std::string_view document);
Result<KeySet> fetch_discovered_jwks(const std::string &issuer, const FetchOptions &options);

} // namespace cordon::identity
