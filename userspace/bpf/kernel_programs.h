// Owner of cordon's BPF programs, links and maps.
//
// Links and maps are pinned under the pin directory, so the programs stay attached when cordond
// stops: redirected connections then meet a closed port and are refused (fail closed). A
// starting cordond adopts what is pinned: it reuses the pinned maps and swaps each pinned link's
// program atomically (BPF_LINK_UPDATE), so there is never a moment without enforcement.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/address.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "cordon/bpf_shared.h"

struct cordon_bpf;
struct bpf_link;

namespace cordon {

struct KernelSettings {
	IpAddress listen_ipv4;
	IpAddress listen_ipv6;
	uint16_t listen_port = 0;
	uint16_t dns_port = 0;           // cordond's DNS proxy on the same addresses; 0: no DNS proxy
	bool dns_pass_when_down = false; // DNS goes straight to its resolver while the proxy is away
	uint32_t upstream_mark = 0;
	uint64_t netns_cookie = 0; // cordond's network namespace
	// cordond's host address for jobs in other network namespaces (port 0: they are refused).
	SocketAddress netns_listen;
	uint16_t netns_dns_port = 0; // the DNS proxy on netns_listen's address (0: none)
	uint64_t cgroup_id = 0;      // cordond's own cgroup: with the mark, it exempts upstream sockets
	std::string pin_dir;
	std::string cgroup_mount; // cgroup2 root the programs attach to
};

using Counters = std::array<uint64_t, CORDON_CTR__COUNT>;

class KernelPrograms {
public:
	static Result<std::unique_ptr<KernelPrograms>> attach(const KernelSettings &settings);
	~KernelPrograms();
	KernelPrograms(const KernelPrograms &) = delete;
	KernelPrograms &operator=(const KernelPrograms &) = delete;

	bool adopted() const { return adopted_; }
	const std::vector<std::string> &program_names() const { return program_names_; }

	// Replace the whole port table: port -> enum cordon_port_flag bits.
	Status set_ports(const std::map<uint16_t, uint32_t> &flags);
	// Replace the whole scope table: cgroup id -> enum cordon_scope.
	Status set_scopes(const std::map<uint64_t, uint32_t> &scopes);
	// Targets carry a set of sources (enum cordon_target_source bits): a key stays while any
	// source still wants it, so a resolved name can never remove a configured CIDR.
	Status add_target(const Cidr &cidr, uint32_t source);
	Status remove_target(const Cidr &cidr, uint32_t source);
	// Marks one of cordond's listening sockets: the programs redirect only to tagged listeners.
	Status tag_listener(int fd);
	Result<std::vector<std::pair<Cidr, uint32_t>>> list_targets() const;

	// The origin published for an accepted connection, removed from the map as it is read.
	Result<std::optional<cordon_origin>> take_origin(const cordon_tuple &tuple);
	Result<size_t> origin_entries() const;
	// Deletes origins published longer ago than `max_age` that nobody accepted (the handshake's
	// last ACK was lost and the client never sent): they would otherwise stay forever.
	Result<size_t> sweep_origins(std::chrono::seconds max_age);
	Result<Counters> counters() const;
	Status add_to_counter(cordon_counter counter, uint64_t amount);

	// Detach and unpin everything (a deliberate stop in fail-open mode).
	Status detach();

private:
	KernelPrograms() = default;
	cordon_bpf *skel_ = nullptr;
	std::vector<bpf_link *> links_;
	std::vector<std::string> program_names_;
	std::string pin_dir_;
	UniqueFd pin_lock_; // flock on the pin directory, held for the daemon's lifetime
	bool adopted_ = false;
};

// What cordonctl can do with the pins alone, with or without a running cordond.
struct PinnedState {
	bool present = false;
	std::vector<std::string> links; // pinned link names
	std::optional<Counters> counters;
	std::optional<size_t> origin_entries;
};
Result<PinnedState> read_pinned_state(const std::string &pin_dir);
// Detach every pinned link and remove the pin directory. Root only.
Status detach_pinned(const std::string &pin_dir);

// Makes sure a bpf file system is mounted at /sys/fs/bpf (some hosts do not mount it).
Status ensure_bpffs(const std::string &pin_dir);

// Counter names, for status output and metrics.
const char *counter_name(int counter);

} // namespace cordon
