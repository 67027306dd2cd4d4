#include "daemon/resolver.h"

#include <arpa/nameser.h>
#include <netdb.h>
#include <resolv.h>

#include <algorithm>
#include <cstring>

#include "bpf/kernel_programs.h"
#include "common/log.h"
#include "daemon/journal.h"

namespace cordon {

std::optional<uint32_t> min_answer_ttl(const uint8_t *message, size_t length)
{
	ns_msg msg;
	if (length > 65535 || ns_initparse(message, static_cast<int>(length), &msg) != 0)
		return std::nullopt;
	std::optional<uint32_t> ttl;
	for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
		ns_rr rr;
		if (ns_parserr(&msg, ns_s_an, i, &rr) != 0)
			return ttl;
		uint32_t t = ns_rr_ttl(rr);
		ttl = ttl ? std::min(*ttl, t) : t;
	}
	return ttl;
}

Result<ResolvedName> resolve_name(const std::string &name)
{
	addrinfo hints{};
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	addrinfo *list = nullptr;
	int rc = getaddrinfo(name.c_str(), nullptr, &hints, &list);
	if (rc != 0)
		return plain_error("resolve " + name + ": " + gai_strerror(rc));
	ResolvedName out;
	for (addrinfo *ai = list; ai; ai = ai->ai_next) {
		auto sa = SocketAddress::from_sockaddr(ai->ai_addr, ai->ai_addrlen);
		if (sa && std::find(out.addresses.begin(), out.addresses.end(), sa->ip) == out.addresses.end())
			out.addresses.push_back(sa->ip);
	}
	freeaddrinfo(list);

	// getaddrinfo hides the TTL; ask DNS directly for it. A name from /etc/hosts has none.
	struct __res_state state {};
	if (res_ninit(&state) == 0) {
		state.retrans = 2;
		state.retry = 1;
		for (int type : {ns_t_a, ns_t_aaaa}) {
			uint8_t answer[4096];
			int n = res_nquery(&state, name.c_str(), ns_c_in, type, answer, sizeof(answer));
			if (n > 0) {
				auto ttl = min_answer_ttl(answer, static_cast<size_t>(n));
				if (ttl)
					out.ttl = out.ttl ? std::min(*out.ttl, *ttl) : *ttl;
			}
		}
		res_nclose(&state);
	}
	return out;
}

TargetResolver::TargetResolver(KernelPrograms &kernel, Journal &journal, Settings settings)
    : kernel_(kernel), journal_(journal), settings_(std::move(settings))
{
	for (const auto &n : settings_.names)
		names_[n] = NameState{};
}

TargetResolver::~TargetResolver()
{
	{
		std::lock_guard lock(mutex_);
		stopping_ = true;
	}
	wake_.notify_all();
	if (thread_.joinable())
		thread_.join();
}

void TargetResolver::inherit(const std::vector<IpAddress> &addresses)
{
	std::lock_guard lock(mutex_);
	auto now = Clock::now();
	for (const auto &ip : addresses)
		addresses_[ip].last_seen = now;
}

void TargetResolver::start()
{
	// Every name starts due: the thread resolves them all first. Startup never waits on DNS,
	// which may be slow or broken on a runner.
	thread_ = std::thread([this] { run(); });
}

void TargetResolver::refresh(const std::string &name, Clock::time_point now)
{
	auto resolved = resolve_name(name);
	std::lock_guard lock(mutex_);
	NameState &state = names_[name];
	if (!resolved) {
		if (state.error != resolved.error().message())
			log::debug(resolved.error().message());
		state.error = resolved.error().message();
		// Keep the last good addresses; they expire through `retain` like any other.
		state.next_refresh = now + settings_.refresh_min;
		return;
	}
	state.error.clear();
	std::set<IpAddress> fresh(resolved->addresses.begin(), resolved->addresses.end());
	std::vector<std::string> added;
	for (const auto &ip : fresh) {
		auto [it, inserted] = addresses_.try_emplace(ip);
		it->second.names.insert(name);
		it->second.last_seen = now;
		if (inserted) {
			Status st = kernel_.add_target(Cidr{ip, 128}, CORDON_TARGET_RESOLVED);
			if (!st)
				log::error(st.error().message());
			else
				added.push_back(ip.to_string());
		}
	}
	for (const auto &ip : state.addresses)
		if (!fresh.count(ip))
			addresses_[ip].names.erase(name);
	state.addresses = fresh;
	uint32_t ttl = resolved->ttl.value_or(static_cast<uint32_t>(settings_.refresh_min.count()));
	auto interval = std::clamp(std::chrono::seconds(ttl), settings_.refresh_min, settings_.refresh_max);
	state.next_refresh = now + interval;
	if (!added.empty()) {
		std::string list;
		for (const auto &a : added)
			list += (list.empty() ? "" : ",") + a;
		JournalEntry e;
		e.message = "capture targets for " + name + ": added " + list;
		e.add("CORDON_EVENT", "capture_update").add("CORDON_HOST", name).add("CORDON_ADDED", list);
		journal_.send(std::move(e));
	}
}

void TargetResolver::expire(Clock::time_point now)
{
	std::vector<IpAddress> gone;
	{
		// The map write happens under the lock: a DNS answer learning the same address meanwhile
		// must not have its fresh entry removed by this older decision.
		std::lock_guard lock(mutex_);
		for (auto it = addresses_.begin(); it != addresses_.end();) {
			if (it->second.names.empty() && now - it->second.last_seen > settings_.retain &&
			    !live_connections_.count(it->first)) {
				Status st = kernel_.remove_target(Cidr{it->first, 128}, CORDON_TARGET_RESOLVED);
				if (!st)
					log::error(st.error().message());
				gone.push_back(it->first);
				it = addresses_.erase(it);
			} else {
				++it;
			}
		}
	}
	for (const auto &ip : gone) {
		JournalEntry e;
		e.message = "capture target " + ip.to_string() + " expired";
		e.add("CORDON_EVENT", "capture_update").add("CORDON_REMOVED", ip.to_string());
		journal_.send(std::move(e));
	}
}

void TargetResolver::run()
{
	std::unique_lock lock(mutex_);
	while (!stopping_) {
		auto now = Clock::now();
		std::vector<std::string> due;
		auto next = now + settings_.refresh_max;
		for (auto &[name, state] : names_) {
			if (state.next_refresh <= now)
				due.push_back(name);
			else
				next = std::min(next, state.next_refresh);
		}
		lock.unlock();
		for (const auto &name : due)
			refresh(name, now);
		expire(now);
		lock.lock();
		for (auto &[name, state] : names_)
			next = std::min(next, state.next_refresh);
		// Wake when the next retained address is due, and at least once a minute.
		next = std::min({next, next_expiry(), Clock::now() + std::chrono::seconds(60)});
		wake_.wait_until(lock, next, [this] { return stopping_ || rescan_; });
		rescan_ = false;
	}
}

TargetResolver::Clock::time_point TargetResolver::next_expiry() const
{
	auto next = Clock::time_point::max();
	for (const auto &[ip, state] : addresses_)
		if (state.names.empty() && !live_connections_.count(ip))
			next = std::min(next, state.last_seen + settings_.retain + std::chrono::milliseconds(10));
	return next;
}

TargetResolver::Learned TargetResolver::learn(const std::string &host, const std::vector<std::string> &chain,
                                              const std::vector<IpAddress> &addresses, uint32_t ttl,
                                              const DnsWitness &witness)
{
	const auto now = Clock::now();
	const auto valid_until =
	    now + std::clamp(std::chrono::seconds(ttl), settings_.refresh_min, settings_.refresh_max);
	Learned learned;
	std::vector<IpAddress> &added = learned.added;
	{
		std::lock_guard lock(mutex_);
		for (const auto &ip : addresses) {
			auto [it, inserted] = addresses_.try_emplace(ip);
			it->second.last_seen = std::max(it->second.last_seen, valid_until);
			if (!inserted)
				continue;
			// Written before the proxy releases the answer: the job's first connect() is caught.
			Status st = kernel_.add_target(Cidr{ip, 128}, CORDON_TARGET_RESOLVED);
			if (!st) {
				log::error(st.error().message());
				addresses_.erase(it);
				learned.complete = false;
				continue;
			}
			added.push_back(ip);
		}
		rescan_ = !added.empty();
	}
	// The resolver thread may sleep longer than this answer's addresses are due.
	if (!added.empty())
		wake_.notify_all();
	if (added.empty())
		return learned;
	std::string list, names;
	for (const auto &ip : added)
		list += (list.empty() ? "" : ",") + ip.to_string();
	for (const auto &n : chain)
		names += (names.empty() ? "" : ",") + n;
	JournalEntry e;
	e.message = "capture targets for " + host + " from DNS" + (chain.size() > 1 ? " (via " + names + ")" : "") +
	            ": added " + list;
	e.add("CORDON_EVENT", "dns_capture")
	    .add("CORDON_HOST", host)
	    .add("CORDON_CNAME_CHAIN", names)
	    .add("CORDON_ADDED", list)
	    .add("CORDON_TTL", std::to_string(ttl));
	for (const auto &[key, value] : witness.fields)
		e.add(key, value);
	journal_.send(std::move(e));
	return learned;
}

void TargetResolver::connection_opened(const IpAddress &destination)
{
	std::lock_guard lock(mutex_);
	live_connections_[destination]++;
}

void TargetResolver::connection_closed(const IpAddress &destination)
{
	{
		std::lock_guard lock(mutex_);
		auto it = live_connections_.find(destination);
		if (it == live_connections_.end() || --it->second > 0)
			return;
		live_connections_.erase(it);
		// Its last connection kept it past its time: let the resolver thread look again.
		auto address = addresses_.find(destination);
		if (address == addresses_.end() || !address->second.names.empty())
			return;
		rescan_ = true;
	}
	wake_.notify_all();
}

std::vector<NameStatus> TargetResolver::snapshot() const
{
	std::lock_guard lock(mutex_);
	std::vector<NameStatus> out;
	auto now = Clock::now();
	for (const auto &[name, state] : names_) {
		NameStatus s;
		s.name = name;
		for (const auto &ip : state.addresses)
			s.addresses.push_back(ip.to_string());
		s.error = state.error;
		s.next_refresh_in_s =
		    std::chrono::duration_cast<std::chrono::seconds>(state.next_refresh - now).count();
		out.push_back(std::move(s));
	}
	return out;
}

} // namespace cordon
