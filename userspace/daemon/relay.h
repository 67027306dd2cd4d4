// The transparent relay: accepts redirected connections, learns from the kernel who made them
// and where they were going, connects there, and moves bytes both ways unchanged.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/address.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "cordon/bpf_shared.h"
#include "daemon/event_loop.h"

namespace cordon {

class KernelPrograms;
class Journal;
class CgroupPathCache;
class RelayConnection;

struct RelaySettings {
	std::vector<SocketAddress> listen; // loopback, one per family
	uint32_t upstream_mark = 0;
	std::chrono::milliseconds connect_timeout{10000};
	std::chrono::seconds idle_timeout{0}; // 0: never
	uint32_t max_connections = 20000;
};

// What `cordonctl status` shows for one live connection.
struct ConnectionInfo {
	std::string id;
	uint32_t pid = 0, uid = 0, gid = 0;
	std::string comm, cgroup, client, destination, upstream_local, state;
	uint64_t bytes_up = 0, bytes_down = 0;
	int64_t age_ms = 0;
};

struct RelayStats {
	uint64_t accepted = 0;      // connections with an origin
	uint64_t lookup_missed = 0; // accepted, but nothing redirected them: refused
	uint64_t over_limit = 0;    // refused at max_connections
	uint64_t upstream_failed = 0;
	uint64_t closed = 0;
};

class RelayServer {
public:
	RelayServer(EventLoop &loop, BufferPool &pool, KernelPrograms &kernel, Journal &journal,
	            CgroupPathCache &cgroups, RelaySettings settings);
	~RelayServer();

	// Binds and listens on every listen address; the first failure is returned. An IPv6
	// listener that cannot bind (IPv6 disabled) is reported but not fatal.
	Status start();
	// Called once a second from the loop: idle timeouts.
	void tick(std::chrono::steady_clock::time_point now);
	// Called after every completion batch: resumes receives that ran out of buffers.
	void resume_starved();

	std::vector<ConnectionInfo> connections() const;
	const RelayStats &stats() const { return stats_; }
	const std::vector<SocketAddress> &listening() const { return listening_; }
	size_t active() const { return live_.size(); }

private:
	friend class RelayConnection;
	friend class Listener;
	void on_accepted(int fd, const SocketAddress &local);
	void starve(RelayConnection *conn, int flow);
	void forget(RelayConnection *conn);
	std::string next_id();

	EventLoop &loop_;
	BufferPool &pool_;
	KernelPrograms &kernel_;
	Journal &journal_;
	CgroupPathCache &cgroups_;
	RelaySettings settings_;
	RelayStats stats_;
	std::vector<SocketAddress> listening_;
	std::unordered_set<RelayConnection *> live_;
	std::deque<std::pair<RelayConnection *, int>> starved_;
	std::string instance_;
	uint64_t sequence_ = 0;
	std::chrono::steady_clock::time_point last_miss_log_{}, last_limit_log_{};
};

} // namespace cordon
