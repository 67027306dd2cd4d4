// Keeps the kernel's capture targets in step with DNS: resolves every exact host name of the
// policy, adds new addresses at once, re-resolves on the answer's TTL (clamped), and drops an
// address only after it has not been seen for `retain` seconds, so connections opened with a
// slightly stale answer are still captured. Runs on its own thread: lookups may block.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/address.h"
#include "common/result.h"

namespace cordon {

class KernelPrograms;
class Journal;

// Smallest TTL among the answer records of a DNS response, if it has any.
std::optional<uint32_t> min_answer_ttl(const uint8_t *message, size_t length);

struct ResolvedName {
	std::vector<IpAddress> addresses;
	std::optional<uint32_t> ttl; // absent when the answer came from /etc/hosts or similar
};
// getaddrinfo (so /etc/hosts and nsswitch apply, as they do for the job) plus a DNS query for
// the TTL.
Result<ResolvedName> resolve_name(const std::string &name);

struct NameStatus {
	std::string name;
	std::vector<std::string> addresses;
	std::string error;
	int64_t next_refresh_in_s = 0;
};

class TargetResolver {
public:
	struct Settings {
		std::vector<std::string> names;
		std::chrono::seconds refresh_min{10};
		std::chrono::seconds refresh_max{300};
		std::chrono::seconds retain{3600};
	};
	TargetResolver(KernelPrograms &kernel, Journal &journal, Settings settings);
	~TargetResolver();
	TargetResolver(const TargetResolver &) = delete;
	TargetResolver &operator=(const TargetResolver &) = delete;

	// Addresses found in the pinned map at start: kept for `retain` unless resolved again.
	void inherit(const std::vector<IpAddress> &addresses);
	// Resolves on a thread: every name at once, then each on its TTL.
	void start();

	// A DNS answer the proxy saw for a capture host (`host` the question, `chain` the names
	// followed): its addresses become targets at once, before the answer is released. Each is
	// kept for the TTL (clamped to refresh_min/max), then `retain`, and while a connection to it
	// lives. Journals `dns_capture` when something was added.
	struct DnsWitness {
		std::vector<std::pair<std::string, std::string>> fields; // CORDON_* of who asked, if known
	};
	struct Learned {
		std::vector<IpAddress> added;
		bool complete = true; // false: an address could not be written (a full map); not captured
	};
	Learned learn(const std::string &host, const std::vector<std::string> &chain,
	              const std::vector<IpAddress> &addresses, uint32_t ttl, const DnsWitness &witness);
	// Live connections to an address keep it captured past its TTL and retain time.
	void connection_opened(const IpAddress &destination);
	void connection_closed(const IpAddress &destination);
	std::vector<NameStatus> snapshot() const;

private:
	using Clock = std::chrono::steady_clock;
	struct NameState {
		std::set<IpAddress> addresses;
		std::string error;
		Clock::time_point next_refresh;
	};
	struct AddressState {
		std::set<std::string> names;
		// Last time a configured name resolved to it, or the end of a DNS answer's TTL.
		Clock::time_point last_seen;
	};

	void refresh(const std::string &name, Clock::time_point now);
	void expire(Clock::time_point now);
	Clock::time_point next_expiry() const; // with mutex_ held
	void run();

	KernelPrograms &kernel_;
	Journal &journal_;
	Settings settings_;
	mutable std::mutex mutex_;
	std::condition_variable wake_;
	bool stopping_ = false;
	bool rescan_ = false; // a DNS answer added an address: recompute when to wake
	std::map<std::string, NameState> names_;
	std::map<IpAddress, AddressState> addresses_;
	std::map<IpAddress, uint32_t> live_connections_;
	std::thread thread_;
};

} // namespace cordon
