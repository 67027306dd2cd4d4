#include "daemon/approvals.h"

#include <openssl/rand.h>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "daemon/journal.h"

namespace cordon {
namespace {

using SystemClock = std::chrono::system_clock;

int64_t unix_seconds(SystemClock::time_point t)
{
	return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

std::string new_id()
{
	unsigned char bytes[5];
	if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
		static uint64_t fallback = 0;
		return "ap" + std::to_string(++fallback);
	}
	static const char hex[] = "0123456789abcdef";
	std::string id = "ap-";
	for (unsigned char b : bytes) {
		id.push_back(hex[b >> 4]);
		id.push_back(hex[b & 15]);
	}
	return id;
}

void add_subject(JournalEntry &e, const ApprovalSubject &s)
{
	e.add("CORDON_IDENTITY", s.identity)
	    .add_if("CORDON_CONN", s.connection)
	    .add("CORDON_CGROUP", s.cgroup)
	    .add_if("CORDON_EXE", s.exe)
	    .add_if("CORDON_USER", s.user)
	    .add("CORDON_HOST", s.host)
	    .add("CORDON_WHAT", s.what)
	    .add("CORDON_DIRECTION", s.direction)
	    .add("CORDON_RULE", s.rule)
	    .add("CORDON_ACTION", "approve");
}

} // namespace

std::optional<proxy::Verdict> PendingApproval::poll()
{
	switch (state_) {
	case State::Pending:
		return std::nullopt;
	case State::Approved:
		return proxy::Verdict::forward();
	case State::Denied:
	case State::TimedOut:
		break;
	}
	std::string why = "cordon: " + reason_ + " (policy rule '" + subject_.rule + "', approval " + id_ + ")";
	if (!subject_.rule_message.empty())
		why += ": " + subject_.rule_message;
	return proxy::Verdict::refuse("permission_denied", why);
}

std::string PendingApproval::state_name() const
{
	switch (state_) {
	case State::Pending:
		return "pending";
	case State::Approved:
		return by_grant_ ? "granted" : "approved";
	case State::Denied:
		return "denied";
	case State::TimedOut:
		return "timed_out";
	}
	return "pending";
}

void Approvals::configure(std::chrono::seconds timeout, size_t max_pending)
{
	timeout_ = timeout;
	max_pending_ = max_pending;
}

size_t Approvals::pending() const
{
	size_t n = 0;
	for (const auto &[id, weak] : pending_)
		if (auto a = weak.lock(); a && a->state() == PendingApproval::State::Pending)
			n++;
	return n;
}

std::shared_ptr<PendingApproval> Approvals::open(ApprovalSubject subject)
{
	auto a = std::make_shared<PendingApproval>();
	a->id_ = new_id();
	a->subject_ = std::move(subject);
	a->created_ = SystemClock::now();
	a->expires_ = a->created_ + timeout_;
	const auto &s = a->subject_;
	for (const auto &g : grants_)
		if (g.until > a->created_ && g.identity == s.identity && g.rule == s.rule && g.what == s.what &&
		    g.host == s.host && (s.identity != "unenrolled" || g.cgroup == s.cgroup)) {
			a->state_ = PendingApproval::State::Approved;
			a->by_grant_ = true;
			a->approver_ = g.approver;
			a->answered_ = a->created_;
			JournalEntry e;
			e.message = "approval " + a->id_ + " granted by a standing grant from " + g.approver + ": " +
			            s.identity + " " + s.what;
			e.add("CORDON_EVENT", "approval").add("CORDON_APPROVAL_ID", a->id_);
			add_subject(e, s);
			e.add("CORDON_APPROVAL", "granted").add("CORDON_APPROVER", g.approver);
			journal_.send(std::move(e));
			return a;
		}
	if (pending() >= max_pending_) {
		decide(*a, PendingApproval::State::Denied, "cordond",
		       "denied: " + std::to_string(max_pending_) + " approvals are already waiting");
		return a;
	}
	// One caller (a job flooding held requests) cannot take every slot from the others.
	const size_t per_caller = std::max<size_t>(1, max_pending_ / 10);
	size_t mine = 0;
	for (const auto &[id, weak] : pending_)
		if (auto other = weak.lock(); other && other->state() == PendingApproval::State::Pending &&
		                              other->subject().identity == s.identity &&
		                              other->subject().cgroup == s.cgroup)
			mine++;
	if (mine >= per_caller) {
		decide(*a, PendingApproval::State::Denied, "cordond",
		       "denied: this caller already has " + std::to_string(mine) + " approvals waiting");
		return a;
	}
	pending_[a->id_] = a;
	JournalEntry e;
	e.priority = 5;
	e.message = "approval " + a->id_ + " pending: " + s.identity + " " + s.direction + " " + s.host + " " + s.what +
	            " (rule '" + s.rule + "'); answer with `cordonctl approve " + a->id_ + "` or `cordonctl deny " +
	            a->id_ + "`";
	e.add("CORDON_EVENT", "approval").add("CORDON_APPROVAL_ID", a->id_);
	add_subject(e, s);
	e.add("CORDON_APPROVAL", "pending").add("CORDON_EXCERPT", s.excerpt);
	journal_.send(std::move(e));
	return a;
}

void Approvals::decide(PendingApproval &a, PendingApproval::State state, const std::string &approver,
                       const std::string &reason)
{
	a.state_ = state;
	a.approver_ = approver;
	a.answered_ = SystemClock::now();
	a.reason_ = reason;
	JournalEntry e;
	e.priority = state == PendingApproval::State::Approved ? 5 : 4;
	e.message = "approval " + a.id_ + " " + a.state_name() + (approver.empty() ? "" : " by " + approver) + ": " +
	            a.subject_.identity + " " + a.subject_.what;
	e.add("CORDON_EVENT", "approval").add("CORDON_APPROVAL_ID", a.id_);
	add_subject(e, a.subject_);
	e.add("CORDON_APPROVAL", a.state_name()).add_if("CORDON_APPROVER", approver);
	journal_.send(std::move(e));
}

Result<std::string> Approvals::answer(const std::string &id, bool approve, const std::string &approver,
                                      long for_seconds)
{
	auto it = pending_.find(id);
	std::shared_ptr<PendingApproval> a = it == pending_.end() ? nullptr : it->second.lock();
	if (!a) {
		if (it != pending_.end())
			pending_.erase(it);
		return plain_error("no pending approval " + id + " (answered, timed out, or its connection closed)");
	}
	if (a->state() != PendingApproval::State::Pending)
		return plain_error("approval " + id + " is already " + a->state_name());
	pending_.erase(it);
	if (!approve) {
		decide(*a, PendingApproval::State::Denied, approver, "denied by " + approver);
		return "denied " + id;
	}
	decide(*a, PendingApproval::State::Approved, approver, "");
	std::string message = "approved " + id;
	if (for_seconds > 0) {
		const auto &s = a->subject();
		Grant g;
		g.identity = s.identity;
		g.cgroup = s.cgroup;
		g.host = s.host;
		g.rule = s.rule;
		g.what = s.what;
		g.approver = approver;
		g.until = SystemClock::now() + std::chrono::seconds(for_seconds);
		JournalEntry e;
		e.priority = 5;
		e.message = "grant by " + approver + ": " + s.identity + " may " + s.what + " under rule '" + s.rule +
		            "' for " + std::to_string(for_seconds) + " s";
		e.add("CORDON_EVENT", "approval_grant").add("CORDON_APPROVAL_ID", id);
		add_subject(e, s);
		e.add("CORDON_APPROVER", approver).add("CORDON_GRANT_UNTIL", std::to_string(unix_seconds(g.until)));
		journal_.send(std::move(e));
		grants_.push_back(std::move(g));
		message += "; " + s.identity + " may " + s.what + " for " + std::to_string(for_seconds) + " s";
	}
	return message;
}

void Approvals::tick()
{
	const auto now = SystemClock::now();
	for (auto it = pending_.begin(); it != pending_.end();) {
		auto a = it->second.lock();
		if (!a) {
			it = pending_.erase(it); // its exchange is gone
			continue;
		}
		if (a->state() == PendingApproval::State::Pending && a->expires_ <= now) {
			decide(*a, PendingApproval::State::TimedOut, "",
			       "no approval within " + std::to_string(timeout_.count()) + " s");
			it = pending_.erase(it);
			continue;
		}
		++it;
	}
	std::erase_if(grants_, [&](const Grant &g) { return g.until <= now; });
}

nlohmann::json Approvals::list() const
{
	nlohmann::json pending = nlohmann::json::array();
	for (const auto &[id, weak] : pending_) {
		auto a = weak.lock();
		if (!a || a->state() != PendingApproval::State::Pending)
			continue;
		const auto &s = a->subject();
		pending.push_back({{"id", id},
		                   {"identity", s.identity},
		                   {"cgroup", s.cgroup},
		                   {"exe", s.exe},
		                   {"user", s.user},
		                   {"connection", s.connection},
		                   {"host", s.host},
		                   {"rpc", s.what},
		                   {"direction", s.direction},
		                   {"rule", s.rule},
		                   {"excerpt", s.excerpt},
		                   {"created_at", unix_seconds(a->created_)},
		                   {"expires_at", unix_seconds(a->expires_)}});
	}
	nlohmann::json grants = nlohmann::json::array();
	for (const auto &g : grants_)
		grants.push_back({{"identity", g.identity},
		                  {"cgroup", g.cgroup},
		                  {"host", g.host},
		                  {"rule", g.rule},
		                  {"rpc", g.what},
		                  {"approver", g.approver},
		                  {"until", unix_seconds(g.until)}});
	return {{"ok", true}, {"pending", pending}, {"grants", grants}};
}

} // namespace cordon
