// Verifies the CI tokens jobs enroll with (`cordonctl enroll`), per the policy's identity section:
// which issuers, their audiences and required claims, and their keys (a JWKS file, or discovery
// over HTTPS on a background thread, refetched on an unknown key id with a cooldown).
//
// Replaced as a whole when the policy reloads; the bindings themselves (identity::Enrollments)
// live on.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "cordon/config.pb.h"
#include "identity/enrollment.h"
#include "identity/jwt.h"

namespace cordon {

class TokenVerifier {
public:
	static Result<std::unique_ptr<TokenVerifier>> create(const config::Identity &identity);

	// The verified token as a binding for `cgroup`. An error with code EAGAIN means "try again
	// shortly": the issuer's keys are being fetched.
	Result<identity::Enrolled> verify(std::string_view token, const std::string &cgroup, int64_t now);
	size_t issuers() const { return issuers_.size(); }

private:
	struct Issuer {
		config::Issuer config;
		identity::IssuerPolicy policy;
	};
	explicit TokenVerifier(std::vector<Issuer> issuers, std::unique_ptr<identity::KeyCache> keys, int64_t leeway)
	    : issuers_(std::move(issuers)), keys_(std::move(keys)), leeway_(leeway)
	{}
	std::vector<Issuer> issuers_;
	std::unique_ptr<identity::KeyCache> keys_;
	int64_t leeway_;
};

} // namespace cordon
