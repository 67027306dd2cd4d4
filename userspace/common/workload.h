// Who a connection's caller is, beyond the numbers the BPF programs record: what its cgroup
// path says (systemd unit, container, pod), its executable, and its user name.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/result.h"

namespace cordon {

// What a cgroup path tells about the workload in it. Empty strings where it tells nothing.
struct CgroupWorkload {
	std::string unit;      // the innermost systemd unit (".service" or ".scope")
	std::string container; // a container id: docker, containerd/CRI-O (kubernetes), podman
	std::string pod;       // a kubernetes pod uid
};
CgroupWorkload describe_cgroup(std::string_view path);

// The executable of process `tgid`, read through an open /proc/<tgid> directory so that every
// read concerns one process. `connected_boot_ns` (bpf_ktime_get_boot_ns() at connect) guards
// against PID reuse: a process that started after the connect is not the caller, and the read
// fails instead of naming someone else's binary. " (deleted)" marks a replaced binary.
Result<std::string> caller_executable(uint32_t tgid, uint64_t connected_boot_ns, const std::string &proc = "/proc");

// uid -> user name through NSS, cached: the lookup may read files or ask a directory service.
class UserNames {
public:
	explicit UserNames(size_t capacity = 1024) : capacity_(capacity) {}
	std::string name(uint32_t uid); // "" when the uid has no name

private:
	size_t capacity_;
	std::unordered_map<uint32_t, std::string> names_;
};

} // namespace cordon
