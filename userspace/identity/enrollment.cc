#include "identity/enrollment.h"

namespace cordon::identity {

Result<std::shared_ptr<const Enrolled>> Enrollments::bind(Enrolled e, int64_t now)
{
	if (e.expires_at <= now)
		return plain_error("token expired");
	if (auto it = tokens_.find(e.fingerprint);
	    it != tokens_.end() && it->second.second > now && it->second.first != e.cgroup)
		return plain_error("this token is already enrolled for another cgroup (" + it->second.first +
		                   "); a token binds to one job only");
	e.enrolled_at = now;
	tokens_[e.fingerprint] = {e.cgroup, e.expires_at};
	auto bound = std::make_shared<const Enrolled>(std::move(e));
	by_cgroup_[bound->cgroup] = bound;
	return bound;
}

std::shared_ptr<const Enrolled> Enrollments::unbind(const std::string &cgroup)
{
	auto it = by_cgroup_.find(cgroup);
	if (it == by_cgroup_.end())
		return nullptr;
	auto ended = std::move(it->second);
	by_cgroup_.erase(it);
	return ended;
}

std::shared_ptr<const Enrolled> Enrollments::lookup(const std::string &cgroup, int64_t now) const
{
	// The cgroup, then its ancestors, never the root (which is refused at enrollment).
	for (std::string path = cgroup; !path.empty() && path != "/";) {
		auto it = by_cgroup_.find(path);
		if (it != by_cgroup_.end())
			return it->second->expires_at > now ? it->second : nullptr;
		auto slash = path.rfind('/');
		if (slash == std::string::npos || slash == 0)
			break;
		path.resize(slash);
	}
	return nullptr;
}

std::vector<std::pair<std::shared_ptr<const Enrolled>, std::string>>
Enrollments::sweep(int64_t now, const std::function<bool(const std::string &)> &populated)
{
	std::vector<std::pair<std::shared_ptr<const Enrolled>, std::string>> ended;
	for (auto it = by_cgroup_.begin(); it != by_cgroup_.end();) {
		const char *why = it->second->expires_at <= now ? "expired"
		                  : !populated(it->first)       ? "cgroup empty"
		                                                : nullptr;
		if (!why) {
			++it;
			continue;
		}
		ended.emplace_back(it->second, why);
		it = by_cgroup_.erase(it);
	}
	for (auto it = tokens_.begin(); it != tokens_.end();)
		it = it->second.second <= now ? tokens_.erase(it) : std::next(it);
	return ended;
}

std::vector<std::shared_ptr<const Enrolled>> Enrollments::list() const
{
	std::vector<std::shared_ptr<const Enrolled>> out;
	for (const auto &[cgroup, e] : by_cgroup_)
		out.push_back(e);
	return out;
}

} // namespace cordon::identity
