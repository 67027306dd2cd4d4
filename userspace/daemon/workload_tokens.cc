#include "daemon/workload_tokens.h"

#include <fstream>
#include <map>
#include <sstream>

#include "identity/jwks_fetch.h"

namespace cordon {
namespace {

Result<identity::KeySet> read_jwks_file(const std::string &path)
{
	std::ifstream in(path);
	if (!in)
		return system_error("open JWKS " + path);
	std::stringstream ss;
	ss << in.rdbuf();
	auto keys = identity::KeySet::parse(ss.str());
	if (!keys)
		return plain_error(path + ": " + keys.error().message());
	return keys;
}

std::string claim_text(const nlohmann::json &v)
{
	return v.is_string() ? v.get<std::string>() : v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

} // namespace

Result<std::unique_ptr<TokenVerifier>> TokenVerifier::create(const config::Identity &identity)
{
	std::vector<Issuer> issuers;
	std::map<std::string, std::string> ca_files;
	for (const auto &c : identity.issuers()) {
		Issuer i;
		i.config = c;
		i.policy.issuer = c.issuer();
		i.policy.audiences.assign(c.audiences().begin(), c.audiences().end());
		for (const auto &[name, glob] : c.required_claims())
			i.policy.required_claims.emplace_back(name, glob);
		ca_files[c.issuer()] = c.ca_file();
		issuers.push_back(std::move(i));
	}
	auto fetch = [ca_files](const std::string &issuer) -> Result<identity::KeySet> {
		identity::FetchOptions options;
		if (auto it = ca_files.find(issuer); it != ca_files.end())
			options.ca_file = it->second;
		return identity::fetch_discovered_jwks(issuer, options);
	};
	auto keys = std::make_unique<identity::KeyCache>(fetch, std::chrono::seconds(identity.jwks_refetch_seconds()));
	for (const auto &i : issuers) {
		if (i.config.jwks_file().empty()) {
			keys->load(i.config.issuer()); // discovery starts now, in the background
			continue;
		}
		auto set = read_jwks_file(i.config.jwks_file());
		if (!set)
			return plain_error("identity issuer '" + i.config.name() + "': " + set.error().message());
		keys->set_static(i.config.issuer(), std::move(*set));
	}
	return std::unique_ptr<TokenVerifier>(
	    new TokenVerifier(std::move(issuers), std::move(keys), identity.leeway_seconds()));
}

Result<identity::Enrolled> TokenVerifier::verify(std::string_view token, const std::string &cgroup, int64_t now)
{
	auto unverified = identity::decode(token);
	if (!unverified)
		return unverified.error();
	const auto iss = unverified->payload.find("iss");
	if (iss == unverified->payload.end() || !iss->is_string())
		return plain_error("the token has no issuer (iss)");
	const Issuer *issuer = nullptr;
	for (const auto &i : issuers_)
		if (i.config.issuer() == iss->get<std::string>())
			issuer = &i;
	if (!issuer)
		return plain_error("issuer '" + iss->get<std::string>() + "' is not in the policy's identity.issuers");
	auto keys = keys_->keys(issuer->config.issuer());
	if (!keys) {
		if (!keys_->fetching(issuer->config.issuer()))
			keys_->request_refetch(
			    issuer->config.issuer()); // the first fetch failed: again, within the cooldown
		auto stats = keys_->stats(issuer->config.issuer());
		return Error{EAGAIN, "the keys of issuer '" + issuer->config.name() + "' are not loaded yet" +
		                         (stats.last_error.empty() ? "" : " (last fetch: " + stats.last_error + ")")};
	}
	auto verified = identity::verify(token, *keys, issuer->policy, now, leeway_);
	if (!verified) {
		const std::string why = verified.error().message();
		// A key rotated in since the last fetch: fetch again, at most once per cooldown.
		if (why.find("unknown kid") != std::string::npos &&
		    (keys_->fetching(issuer->config.issuer()) || keys_->request_refetch(issuer->config.issuer())))
			return Error{EAGAIN, why + "; refetching the issuer's keys"};
		return verified.error();
	}
	identity::Enrolled e;
	e.issuer = issuer->config.name();
	e.subject = verified->subject;
	e.expires_at = verified->expires_at;
	e.fingerprint = verified->fingerprint;
	e.cgroup = cgroup;
	nlohmann::json journal = nlohmann::json::object();
	for (const auto &[name, value] : verified->claims.items())
		e.claims[name] = claim_text(value);
	for (const auto &name : issuer->config.journal_claims())
		if (auto it = e.claims.find(name); it != e.claims.end())
			journal[name] = it->second;
	e.journal_claims = journal.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
	return e;
}

} // namespace cordon
