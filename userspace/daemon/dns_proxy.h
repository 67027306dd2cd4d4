// cordond's transparent DNS proxy. The BPF programs send every enforced workload's DNS (UDP and
// TCP port 53, whatever resolver it asked) here; the proxy forwards each query unchanged to its
// upstream resolver from an exempt socket, reads the answer, and when the question or any name
// of its CNAME chain is a capture host, adds the answer's addresses to the capture targets
// *before* releasing the answer. A job's first connect() to an address it just learned is
// therefore always caught: the resolve-then-connect race is closed.
//
// It runs on its own thread with non-blocking sockets and poll(): the work per query is small,
// the only state it shares is the TargetResolver's bookkeeping (already guarded by its mutex,
// since the resolver thread writes the same map), and the relay's loop stays untouched by DNS.
// Queries in flight are bounded, each with a deadline; answers it cannot read are passed on
// unchanged, except for a capture host, which gets SERVFAIL (never an address cordon did not see).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "common/address.h"
#include "common/host_pattern.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace cordon {

class KernelPrograms;
class TargetResolver;

struct DnsProxySettings {
	std::vector<SocketAddress> listen; // loopback, one per family; UDP and TCP on each
	SocketAddress upstream;            // where queries go
	uint32_t upstream_mark = 0;        // exempts the proxy's own queries from the redirect
	std::vector<HostPattern> hosts;    // capture.hosts
	std::chrono::milliseconds timeout{5000};
	size_t max_in_flight = 1024; // UDP queries and TCP sessions together
};

struct DnsProxyStats {
	uint64_t udp_queries = 0, tcp_queries = 0, answered = 0, captured_answers = 0, added_addresses = 0;
	uint64_t unreadable_answers = 0, servfail = 0, timeouts = 0, dropped = 0;
};

// The resolver the host itself uses: the first `nameserver` of /etc/resolv.conf, port 53. If
// that is a loopback stub and systemd-resolved lists its upstreams, the first of those instead.
Result<SocketAddress> system_resolver(const std::string &resolv_conf = "/etc/resolv.conf",
                                      const std::string &resolved_conf = "/run/systemd/resolve/resolv.conf");

class DnsProxy {
public:
	// Binds the listeners and tags them for the BPF listener check (on the caller's thread, so
	// a port in use fails the start); `start` then serves on a thread of its own.
	static Result<std::unique_ptr<DnsProxy>> create(DnsProxySettings settings, KernelPrograms &kernel,
	                                                TargetResolver &resolver);
	~DnsProxy();
	DnsProxy(const DnsProxy &) = delete;
	DnsProxy &operator=(const DnsProxy &) = delete;

	void start();
	DnsProxyStats stats() const;
	const DnsProxySettings &settings() const { return settings_; }

private:
	class Worker;
	DnsProxy(DnsProxySettings settings, KernelPrograms &kernel, TargetResolver &resolver);

	DnsProxySettings settings_;
	KernelPrograms &kernel_;
	TargetResolver &resolver_;
	std::vector<UniqueFd> udp_listeners_, tcp_listeners_;
	UniqueFd wake_; // eventfd: stop
	std::unique_ptr<Worker> worker_;
	std::thread thread_;
};

} // namespace cordon
