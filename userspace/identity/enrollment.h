// Which cgroups enrolled a verified workload token, and with what claims.
//
// A job runs `cordonctl enroll`; cordond verifies its CI's OIDC token and binds the claims to the
// caller's cgroup (taken from the control socket's peer, never from the job's word). Connections
// from that cgroup, or from cgroups below it (a job's containers), then carry the identity. A
// binding ends when the token expires or the cgroup empties. A token binds to one cgroup only:
// the same token enrolled from elsewhere is refused until it expires, so a token read out of one
// job's environment cannot lend its identity to another.
//
// Loop thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

namespace cordon::identity {

struct Enrolled {
	std::string issuer; // the issuer's name in the policy
	std::string subject;
	std::map<std::string, std::string> claims; // every claim, as text (strings bare, others as JSON)
	std::string journal_claims;                // the issuer's journal_claims, as a JSON object
	int64_t expires_at = 0;                    // unix seconds
	std::string fingerprint;                   // SHA-256 of the token
	std::string cgroup;                        // the enrolled cgroup's path
	int64_t enrolled_at = 0;

	// CORDON_IDENTITY: "<issuer>:<sub>".
	std::string identity() const { return issuer + ":" + subject; }
};

class Enrollments {
public:
	// Binds `e` to e.cgroup, replacing an earlier binding of that cgroup (the next job on the
	// same runner). Refused when the token is already bound to another cgroup.
	Result<std::shared_ptr<const Enrolled>> bind(Enrolled e, int64_t now);
	// Ends the binding of exactly `cgroup` (a job leaving, or the next job on a runner whose
	// cgroup outlives its jobs); returns it, or null when there was none. The token stays spent.
	std::shared_ptr<const Enrolled> unbind(const std::string &cgroup);
	// The binding for a connection from `cgroup`: its own, else its nearest enrolled ancestor's
	// (never the root cgroup's: enrolling from there is refused).
	std::shared_ptr<const Enrolled> lookup(const std::string &cgroup, int64_t now) const;
	// Ends expired bindings and those whose cgroup no longer holds a process. Returns what ended,
	// with the reason ("expired", "cgroup empty").
	std::vector<std::pair<std::shared_ptr<const Enrolled>, std::string>>
	sweep(int64_t now, const std::function<bool(const std::string &cgroup)> &populated);
	std::vector<std::shared_ptr<const Enrolled>> list() const;
	size_t size() const { return by_cgroup_.size(); }

private:
	std::map<std::string, std::shared_ptr<const Enrolled>> by_cgroup_;
	// fingerprint -> (cgroup, expiry): kept until the token expires, even after its binding ended.
	std::map<std::string, std::pair<std::string, int64_t>> tokens_;
};

} // namespace cordon::identity
