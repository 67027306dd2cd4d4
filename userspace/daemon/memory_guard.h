// Load shedding under a memory limit. cordond holds every job's connections: if the kernel's OOM
// killer ends it, all of them fail at once (fail closed) and recordings stop. Refusing *new*
// connections while cordond's own memory is close to its limit keeps the ones it has working,
// and says why. Memory is the process's anonymous resident set (its heap, its buffers): page
// cache from recording files is charged to the cgroup too, but the kernel reclaims that first,
// so counting it would shed load for memory that is not short.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cordon {

// Pure parsers, unit-tested.
struct ProcCgroups {
	std::optional<std::string> unified;   // "0::/path"
	std::optional<std::string> memory_v1; // "N:...memory...:/path"
};
ProcCgroups parse_proc_cgroups(std::string_view proc_self_cgroup);
// memory.max / memory.high ("max" or bytes), memory.limit_in_bytes (v1 writes "unlimited" as
// a page-rounded 2^63 - 1): nullopt when there is no limit or the text is not a number.
std::optional<uint64_t> parse_memory_limit(std::string_view text);
// A "Key:   123 kB" line of /proc/<pid>/status or /proc/meminfo ("RssAnon:", "MemTotal:"), in
// bytes.
std::optional<uint64_t> parse_kb_field(std::string_view text, std::string_view key);

struct MemoryLimit {
	uint64_t bytes = 0; // 0: none
	std::string source; // "daemon.memory_limit_mb", or the cgroup file it came from
};
// The lowest limit over cordond's own cgroup and its ancestors: memory.max and memory.high on
// cgroup v2, memory.limit_in_bytes on v1 (hybrid hosts keep the memory controller there).
MemoryLimit find_cgroup_memory_limit();

class MemoryGuard {
public:
	using Clock = std::chrono::steady_clock;
	// `configured_bytes` 0: the cgroup's limit, or without one the machine's memory (MemTotal),
	// looked up again every 2 s (systemctl
	// set-property changes it at run time). `shed_percent` 0: never shed.
	MemoryGuard(uint64_t configured_bytes, unsigned shed_percent);

	struct Sample {
		uint64_t used = 0, limit = 0;
		std::string source;
	};
	enum class Change { None, Started, Ended };
	// Samples at most every 100 ms (cheap enough for the accept path); says whether the
	// shedding state changed with this sample.
	Change update(Clock::time_point now);
	bool shedding() const { return shedding_; }
	const Sample &last() const { return last_; }
	// What shedding would start at; 0 when there is no limit.
	uint64_t threshold() const;

	// The decision alone, for the unit tests: starts at `percent` of the limit and ends 5 points
	// below it, so a process hovering at the line does not flap.
	static bool decide(bool shedding_now, uint64_t used, uint64_t limit, unsigned percent);

private:
	void refresh_limit(Clock::time_point now);

	uint64_t configured_;
	unsigned percent_;
	bool shedding_ = false;
	Sample last_;
	Clock::time_point next_sample_{};
	Clock::time_point next_limit_lookup_{};
	Clock::time_point next_trim_{};
};

} // namespace cordon
