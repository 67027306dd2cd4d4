#include "daemon/memory_guard.h"

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>

#include "common/cgroup.h"
#include "common/unique_fd.h"

namespace cordon {
namespace {

// Values at or above this are v1's "unlimited" (PAGE_COUNTER_MAX pages, rounded): no limit.
constexpr uint64_t kUnlimited = uint64_t{1} << 62;
constexpr auto kSampleEvery = std::chrono::milliseconds(100);
constexpr auto kLimitLookupEvery = std::chrono::seconds(2); // set-property takes effect soon
constexpr auto kTrimEvery = std::chrono::seconds(1);
constexpr unsigned kHysteresisPercent = 5;

std::string_view trim(std::string_view s)
{
	while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n'))
		s.remove_prefix(1);
	while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n'))
		s.remove_suffix(1);
	return s;
}

std::optional<uint64_t> to_u64(std::string_view s)
{
	uint64_t v = 0;
	auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
	if (ec != std::errc() || end != s.data() + s.size() || s.empty())
		return std::nullopt;
	return v;
}

// Small kernel files (proc, cgroupfs) in one go; nullopt when absent or unreadable.
std::optional<std::string> read_small_file(const std::string &path)
{
	UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
	if (!fd)
		return std::nullopt;
	std::string text;
	char buf[4096];
	for (;;) {
		ssize_t n = ::read(fd.get(), buf, sizeof(buf));
		if (n < 0)
			return std::nullopt;
		if (n == 0)
			return text;
		text.append(buf, static_cast<size_t>(n));
		if (text.size() > (1 << 20))
			return std::nullopt;
	}
}

template <typename Fn> void for_each_line(std::string_view text, Fn fn)
{
	while (!text.empty()) {
		size_t nl = text.find('\n');
		fn(text.substr(0, nl));
		if (nl == std::string_view::npos)
			break;
		text.remove_prefix(nl + 1);
	}
}

// `mount` + `path` and each ancestor up to the mount, lowest limit among `files` wins.
void lowest_over_ancestors(const std::string &mount, std::string path, std::initializer_list<const char *> files,
                           MemoryLimit &best)
{
	for (;;) {
		const std::string dir = mount + (path == "/" ? "" : path);
		for (const char *file : files) {
			auto text = read_small_file(dir + "/" + file);
			auto limit = text ? parse_memory_limit(*text) : std::nullopt;
			if (limit && (best.bytes == 0 || *limit < best.bytes)) {
				best.bytes = *limit;
				best.source = dir + "/" + file;
			}
		}
		if (path == "/" || path.empty())
			return;
		size_t slash = path.rfind('/');
		path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
	}
}

uint64_t own_rss_anon()
{
	auto text = read_small_file("/proc/self/status");
	auto rss = text ? parse_kb_field(*text, "RssAnon:") : std::nullopt;
	return rss.value_or(0);
}

} // namespace

ProcCgroups parse_proc_cgroups(std::string_view text)
{
	ProcCgroups out;
	for_each_line(text, [&out](std::string_view line) {
		size_t first = line.find(':');
		if (first == std::string_view::npos)
			return;
		size_t second = line.find(':', first + 1);
		if (second == std::string_view::npos)
			return;
		std::string_view controllers = line.substr(first + 1, second - first - 1);
		std::string path(line.substr(second + 1));
		if (line.substr(0, first) == "0" && controllers.empty()) {
			out.unified = path;
			return;
		}
		// "memory" among comma-separated controllers (v1 may co-mount several).
		while (!controllers.empty()) {
			size_t comma = controllers.find(',');
			if (controllers.substr(0, comma) == "memory")
				out.memory_v1 = path;
			if (comma == std::string_view::npos)
				break;
			controllers.remove_prefix(comma + 1);
		}
	});
	return out;
}

std::optional<uint64_t> parse_memory_limit(std::string_view text)
{
	text = trim(text);
	if (text == "max")
		return std::nullopt;
	auto v = to_u64(text);
	if (!v || *v >= kUnlimited)
		return std::nullopt;
	return v;
}

std::optional<uint64_t> parse_kb_field(std::string_view text, std::string_view key)
{
	std::optional<uint64_t> out;
	for_each_line(text, [&out, key](std::string_view line) {
		if (line.substr(0, key.size()) != key)
			return;
		line = trim(line.substr(key.size()));
		if (line.size() < 3 || line.substr(line.size() - 3) != " kB")
			return;
		if (auto kb = to_u64(trim(line.substr(0, line.size() - 3))); kb && *kb < (kUnlimited >> 10))
			out = *kb << 10;
	});
	return out;
}

MemoryLimit find_cgroup_memory_limit()
{
	MemoryLimit best;
	auto own = read_small_file("/proc/self/cgroup");
	auto mounts = read_small_file("/proc/mounts");
	if (!own || !mounts)
		return best;
	ProcCgroups cgroups = parse_proc_cgroups(*own);
	if (cgroups.unified) {
		if (auto mount = parse_cgroup2_mount(*mounts))
			lowest_over_ancestors(*mount, *cgroups.unified, {"memory.max", "memory.high"}, best);
	}
	if (cgroups.memory_v1) {
		if (auto mount = find_mount(*mounts, "cgroup", "memory"))
			lowest_over_ancestors(*mount, *cgroups.memory_v1, {"memory.limit_in_bytes"}, best);
	}
	return best;
}

MemoryGuard::MemoryGuard(uint64_t configured_bytes, unsigned shed_percent)
    : configured_(configured_bytes), percent_(shed_percent)
{}

bool MemoryGuard::decide(bool shedding_now, uint64_t used, uint64_t limit, unsigned percent)
{
	if (limit == 0 || percent == 0)
		return false;
	// In 128-bit-free arithmetic: limit / 100 first loses under 100 bytes, which does not matter.
	const uint64_t start = limit / 100 * percent;
	const uint64_t end = limit / 100 * (percent > kHysteresisPercent ? percent - kHysteresisPercent : 0);
	return shedding_now ? used >= end : used >= start;
}

uint64_t MemoryGuard::threshold() const
{
	return last_.limit == 0 || percent_ == 0 ? 0 : last_.limit / 100 * percent_;
}

void MemoryGuard::refresh_limit(Clock::time_point now)
{
	if (now < next_limit_lookup_)
		return;
	next_limit_lookup_ = now + kLimitLookupEvery;
	if (configured_ != 0) {
		last_.limit = configured_;
		last_.source = "daemon.memory_limit_mb";
		return;
	}
	MemoryLimit found = find_cgroup_memory_limit();
	if (found.bytes == 0) {
		// No cgroup limit: the machine's memory is the last line. Shedding at 90% of it is late,
		// but better than the OOM killer choosing.
		auto meminfo = read_small_file("/proc/meminfo");
		if (auto total = meminfo ? parse_kb_field(*meminfo, "MemTotal:") : std::nullopt) {
			found.bytes = *total;
			found.source = "/proc/meminfo MemTotal";
		}
	}
	last_.limit = found.bytes;
	last_.source = found.source;
}

MemoryGuard::Change MemoryGuard::update(Clock::time_point now)
{
	if (percent_ == 0 || now < next_sample_)
		return Change::None;
	next_sample_ = now + kSampleEvery;
	refresh_limit(now);
	if (last_.limit == 0) {
		const bool was = shedding_;
		shedding_ = false;
		return was ? Change::Ended : Change::None;
	}
	last_.used = own_rss_anon();
	// While shedding, hand freed heap back to the kernel: glibc keeps it otherwise, and the
	// resident set would never fall below the line after the load is gone.
	if (shedding_ && now >= next_trim_) {
		next_trim_ = now + kTrimEvery;
		::malloc_trim(0);
		last_.used = own_rss_anon();
	}
	const bool next = decide(shedding_, last_.used, last_.limit, percent_);
	if (next == shedding_)
		return Change::None;
	shedding_ = next;
	return next ? Change::Started : Change::Ended;
}

} // namespace cordon
