// cgroup v2: where the hierarchy is mounted, and translating between paths and the 64-bit ids
// the kernel reports (bpf_get_current_cgroup_id). Paths are relative to the cgroup2 mount and
// start with '/', the form /proc/<pid>/cgroup uses ("0::/system.slice/x.service").
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/result.h"
#include "common/unique_fd.h"

namespace cordon {

// Pure parsers, unit-tested: the cgroup2 mount point in /proc/mounts text, and the unified
// ("0::") path in /proc/<pid>/cgroup text.
Result<std::string> parse_cgroup2_mount(std::string_view proc_mounts);
// The mount point (octal escapes undone) of the first mount in /proc/mounts text of type
// `fstype` and, if `option` is not empty, with `option` among its mount options: "cgroup2", or
// "cgroup" with "memory" for the v1 memory controller.
std::optional<std::string> find_mount(std::string_view proc_mounts, std::string_view fstype,
                                      std::string_view option = {});
Result<std::string> parse_unified_cgroup(std::string_view proc_pid_cgroup);
// "/a//b/" -> "/a/b"; rejects "..", which could escape the hierarchy.
Result<std::string> normalize_cgroup_path(std::string_view path);

class CgroupHierarchy {
public:
	// Finds the cgroup2 mount from /proc/mounts (it is /sys/fs/cgroup on unified hosts and
	// /sys/fs/cgroup/unified on hybrid ones; never assume).
	static Result<CgroupHierarchy> open_system();
	static Result<CgroupHierarchy> open_at(std::string mount_point);

	const std::string &mount_point() const { return mount_point_; }
	int mount_fd() const { return mount_fd_.get(); }
	std::string absolute(std::string_view relative) const;

	Result<uint64_t> id_of(std::string_view relative) const;
	// Kernel-attested: opens the cgroup by its id, so it cannot be fooled by a moved process.
	Result<std::string> path_of(uint64_t id) const;
	Result<std::string> path_of_pid(int pid) const;
	Result<std::string> own_path() const { return path_of_pid(0); }

private:
	CgroupHierarchy(std::string mount_point, UniqueFd fd)
	    : mount_point_(std::move(mount_point)), mount_fd_(std::move(fd))
	{}
	std::string mount_point_;
	UniqueFd mount_fd_;
};

// id -> path with a bounded LRU in front: cgroup ids are never reused, so entries stay true.
class CgroupPathCache {
public:
	CgroupPathCache(const CgroupHierarchy &hierarchy, size_t capacity) : hierarchy_(hierarchy), capacity_(capacity)
	{}
	std::string lookup(uint64_t id); // "" if the cgroup is gone and was never seen

private:
	const CgroupHierarchy &hierarchy_;
	size_t capacity_;
	std::list<std::pair<uint64_t, std::string>> order_;
	std::unordered_map<uint64_t, std::list<std::pair<uint64_t, std::string>>::iterator> index_;
};

} // namespace cordon
