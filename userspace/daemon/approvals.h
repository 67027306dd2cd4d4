// Requests and messages held for a person: `approve` rules open a pending approval, the data path
// waits on it (proxy::Deferred), and `cordonctl approve ID [--for D]` / `cordonctl deny ID`
// answer it. Unanswered, it is denied after approvals.timeout_seconds. An approval `--for` a
// duration also grants the same identity the same RPC under the same rule until then.
//
// Lives for the daemon's lifetime, so pending approvals and grants survive policy reloads.
// Loop thread only.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "proxy/exchange.h"

namespace cordon {

class Journal;

// What waits, as `cordonctl approvals` and the journal show it.
struct ApprovalSubject {
	std::string identity; // CORDON_IDENTITY
	std::string cgroup, exe, user, connection;
	std::string host;
	std::string what;      // "package.Service/Method", or "METHOD /path"
	std::string direction; // "request" or "response"
	std::string rule, rule_message;
	std::string excerpt; // masked: the policy observer sees messages after masking
};

class PendingApproval : public proxy::Deferred {
public:
	enum class State { Pending, Approved, Denied, TimedOut };
	std::optional<proxy::Verdict> poll() override;

	const std::string &id() const { return id_; }
	State state() const { return state_; }
	const std::string &approver() const { return approver_; }
	// When it was answered (a person, a grant or the timeout); epoch when still pending.
	std::chrono::system_clock::time_point answered_at() const { return answered_; }
	const ApprovalSubject &subject() const { return subject_; }
	// "pending", "approved", "denied", "timed_out", "granted" (a standing grant let it through).
	std::string state_name() const;

private:
	friend class Approvals;
	std::string id_;
	ApprovalSubject subject_;
	State state_ = State::Pending;
	bool by_grant_ = false;
	std::string approver_, reason_;
	std::chrono::system_clock::time_point created_, expires_, answered_{};
};

class Approvals {
public:
	explicit Approvals(Journal &journal) : journal_(journal) {}
	void configure(std::chrono::seconds timeout, size_t max_pending);

	// A ticket for `subject`: already approved when a grant covers it, already denied when too
	// many wait, pending otherwise (and journaled).
	std::shared_ptr<PendingApproval> open(ApprovalSubject subject);
	// `cordonctl approve` / `deny`. `for_seconds` > 0 with approve: a grant as well.
	Result<std::string> answer(const std::string &id, bool approve, const std::string &approver, long for_seconds);
	// Once a second: unanswered approvals past their time are denied, expired grants dropped.
	void tick();
	nlohmann::json list() const;
	size_t pending() const;

private:
	// For the same identity, host, rule and RPC. Unenrolled callers share the identity "unenrolled", so
	// a grant to one of them holds for its cgroup only.
	struct Grant {
		std::string identity, cgroup, host, rule, what, approver;
		std::chrono::system_clock::time_point until;
	};
	void decide(PendingApproval &a, PendingApproval::State state, const std::string &approver,
	            const std::string &reason);

	Journal &journal_;
	std::chrono::seconds timeout_{300};
	size_t max_pending_ = 1000;
	// Tickets are owned by the exchanges waiting on them: a connection that goes away withdraws
	// its approvals.
	std::map<std::string, std::weak_ptr<PendingApproval>> pending_;
	std::vector<Grant> grants_;
};

} // namespace cordon
