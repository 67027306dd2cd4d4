// The transparent relay: accepts redirected connections, learns from the kernel who made them
// and where they were going, reads the TLS ClientHello, and then either
//  - intercepts (the SNI is a capture host): TLS terminated on both sides, HTTP and RPC
//    messages visible to the message engine (InterceptConnection, daemon/intercept.cc);
//  - passes through (any other SNI, by policy): bytes relayed unchanged, never decrypted;
//  - refuses (no SNI, not TLS, or a non-target SNI, by policy): closed and journaled.
#pragma once

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/address.h"
#include "common/host_pattern.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "common/workload.h"
#include "cordon/bpf_shared.h"
#include "daemon/event_loop.h"
#include "daemon/memory_guard.h"
#include "identity/enrollment.h"
#include "proxy/exchange.h"

namespace cordon {

class Approvals;
class DaemonMetrics;
class Recorder;

class KernelPrograms;
class Journal;
struct JournalEntry;
class CgroupPathCache;
class RelayConnection;
class InterceptConnection;
class WatchHub;
namespace tls {
class LeafCache;
}

class MaskEngine;
namespace policy {
class Rules;
}
namespace proxy {
class MessageDecoder;
}

enum class SniAction { Intercept, Passthrough, Refuse };
const char *to_string(SniAction a);

struct TlsSettings {
	std::vector<HostPattern> intercept_hosts; // capture.hosts
	SniAction missing_sni = SniAction::Refuse;
	SniAction non_target_sni = SniAction::Refuse;
	// capture.mode: all-tls. A connection the kernel caught only for its port (not a target
	// address) is intercepted for a capture host's SNI and passed through otherwise; plain
	// HTTP naming a capture host in Host is refused.
	bool capture_all = false;
	std::chrono::milliseconds hello_timeout{5000};
	std::chrono::milliseconds handshake_timeout{15000};
	SSL_CTX *server_ctx = nullptr; // toward jobs
	SSL_CTX *client_ctx = nullptr; // toward Cursor
	tls::LeafCache *leaves = nullptr;
	proxy::Limits limits;
	// Extra observers for every intercepted exchange (later: policy, masking, recording).
	std::vector<proxy::ExchangeObserver *> observers;
	WatchHub *watch = nullptr;                          // `cordonctl watch`
	std::shared_ptr<MaskEngine> mask;                   // masking; null when the policy turns it off
	std::shared_ptr<const policy::Rules> rules;         // who may do what
	const proxy::MessageDecoder *decoder = nullptr;     // field names for content rules
	const identity::Enrollments *enrollments = nullptr; // who enrolled a workload token
	Approvals *approvals = nullptr;                     // what `approve` rules hold
	Recorder *recorder = nullptr;                       // session recordings; null when off
	std::string policy_version;                         // recorded with each session
};

struct RelaySettings {
	std::vector<SocketAddress> listen; // loopback, one per family
	uint32_t upstream_mark = 0;
	std::chrono::milliseconds connect_timeout{10000};
	std::chrono::seconds idle_timeout{0}; // 0: never
	uint32_t max_connections = 20000;
	// Load shedding (MemoryGuard): 0 bytes takes the cgroup's limit; 0 percent never sheds.
	uint64_t memory_limit_bytes = 0;
	unsigned shed_memory_percent = 90;
	// cordond's network namespace: connections from other ones (containers) are not passed
	// through to internal addresses (see Connection::decide).
	uint64_t own_netns_cookie = 0;
	TlsSettings tls;
	DaemonMetrics *metrics = nullptr; // counted into; the server keeps its own when null
};

// What `cordonctl status` shows for one live connection.
struct ConnectionInfo {
	std::string id;
	uint32_t pid = 0, uid = 0, gid = 0;
	std::string comm, cgroup, client, destination, upstream_local, state, mode, sni, alpn;
	uint64_t bytes_up = 0, bytes_down = 0, requests = 0;
	int64_t age_ms = 0;
};

struct RelayStats {
	uint64_t accepted = 0;      // connections with an origin
	uint64_t lookup_missed = 0; // accepted, but nothing redirected them: refused
	uint64_t over_limit = 0;    // refused at max_connections
	uint64_t shed = 0;          // refused while memory was short (MemoryGuard)
	uint64_t upstream_failed = 0;
	uint64_t closed = 0;
	uint64_t intercepted = 0, passed_through = 0, refused = 0;
	uint64_t requests = 0;
};

// Who made a connection and where it was going: the kernel's word, plus what cordon learned.
struct ConnectionIdentity {
	std::string id;
	cordon_origin origin{};
	SocketAddress client, destination;
	std::string cgroup;
	CgroupWorkload workload; // what the cgroup path says: unit, container, pod
	std::string exe;         // the caller's executable ("" when it could not be read safely)
	std::string user;        // the uid's name ("" when it has none)
	// The cgroup's verified workload token, if it enrolled one (looked up at accept).
	std::shared_ptr<const identity::Enrolled> enrolled;
	std::string sni;
	std::chrono::steady_clock::time_point started;

	std::string comm() const;
	// CORDON_IDENTITY: "<issuer>:<sub>" for an enrolled caller, "unenrolled" otherwise.
	std::string identity() const { return enrolled ? enrolled->identity() : "unenrolled"; }
	void add_to(JournalEntry &entry) const;
};

// A live connection as the server tracks it (status, idle timeouts, buffer starvation).
class TrackedConnection : public IoHandler {
public:
	virtual ConnectionInfo info(std::chrono::steady_clock::time_point now) const = 0;
	virtual void check_timeouts(std::chrono::steady_clock::time_point now) = 0;
	// A receive ran out of provided buffers earlier; buffers are free again.
	virtual void resume(int flow) = 0;
};

class RelayServer {
public:
	RelayServer(EventLoop &loop, BufferPool &pool, KernelPrograms &kernel, Journal &journal,
	            CgroupPathCache &cgroups, RelaySettings settings);
	~RelayServer();

	// Binds and listens on every listen address; the first failure is returned. An IPv6
	// listener that cannot bind (IPv6 disabled) is reported but not fatal.
	Status start();
	// Called once a second from the loop: idle, hello and handshake timeouts.
	void tick(std::chrono::steady_clock::time_point now);
	// Called after every completion batch: resumes receives that ran out of buffers.
	void resume_starved();

	std::vector<ConnectionInfo> connections() const;
	const RelayStats &stats() const { return stats_; }
	const std::vector<SocketAddress> &listening() const { return listening_; }
	size_t active() const { return live_.size(); }
	const RelaySettings &settings() const { return settings_; }
	// Told when a connection to a destination starts and ends (live connections keep their
	// destination captured).
	using DestinationHook = std::function<void(const IpAddress &destination, bool opened)>;
	void on_destination(DestinationHook hook) { destination_hook_ = std::move(hook); }
	// A reloaded policy's rules and masking, for connections accepted from now on; live ones
	// keep what they started with.
	void reload(std::shared_ptr<const policy::Rules> rules, std::shared_ptr<MaskEngine> mask,
	            std::string policy_version)
	{
		settings_.tls.rules = std::move(rules);
		settings_.tls.mask = std::move(mask);
		settings_.tls.policy_version = std::move(policy_version);
	}

private:
	friend class RelayConnection;
	friend class InterceptConnection;
	friend class Listener;
	void on_accepted(int fd, const SocketAddress &local);
	void starve(TrackedConnection *conn, int flow);
	void forget(TrackedConnection *conn);
	std::string next_id();
	// Takes over a connection whose ClientHello named a capture host.
	void start_intercept(ConnectionIdentity identity, UniqueFd client, std::string hello_bytes,
	                     std::vector<std::string> alpn);
	void track_destination(TrackedConnection *conn, const IpAddress &destination);
	// Samples memory; journals when shedding starts and ends.
	void watch_memory(std::chrono::steady_clock::time_point now);

	EventLoop &loop_;
	BufferPool &pool_;
	KernelPrograms &kernel_;
	Journal &journal_;
	CgroupPathCache &cgroups_;
	UserNames users_;
	RelaySettings settings_;
	RelayStats stats_;
	MemoryGuard memory_;
	std::unique_ptr<DaemonMetrics> own_metrics_; // when the settings bring none
	DaemonMetrics *metrics_ = nullptr;           // never null
	std::vector<SocketAddress> listening_;
	std::unordered_set<TrackedConnection *> live_;
	DestinationHook destination_hook_;
	std::unordered_map<TrackedConnection *, IpAddress> destinations_;
	std::deque<std::pair<TrackedConnection *, int>> starved_;
	std::string instance_;
	uint64_t sequence_ = 0;
	std::chrono::steady_clock::time_point last_miss_log_{}, last_limit_log_{};
	uint64_t shed_since_start_ = 0; // connections refused in the current shedding episode
};

// Shared by the relay and the interceptor.
namespace relay_detail {
// cordond's own connection to the original destination: a non-blocking socket marked as
// cordond's (so the BPF programs exempt it), its connect and a linked timeout submitted
// together. The address and the timeout live here: the kernel reads them until completion.
struct UpstreamConnect {
	sockaddr_storage addr{};
	socklen_t len = 0;
	__kernel_timespec timeout{};
	// 0, or the errno of setting up the socket (nothing was submitted then).
	int start(EventLoop &loop, IoHandler &handler, UniqueFd &fd, const SocketAddress &destination, uint32_t mark,
	          std::chrono::milliseconds connect_timeout, uint8_t connect_op, uint8_t timeout_op);
};
void reset_on_close(int fd);
void set_nodelay(int fd);
std::string human_bytes(uint64_t n);
Result<SocketAddress> local_address(int fd);
} // namespace relay_detail

} // namespace cordon
