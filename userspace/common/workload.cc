#include "common/workload.h"

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "common/unique_fd.h"

namespace cordon {
namespace {

constexpr size_t kContainerIdLength = 64;

bool is_hex(std::string_view s)
{
	return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool ends_with(std::string_view s, std::string_view suffix)
{
	return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// "docker-<id>.scope", "cri-containerd-<id>.scope", "crio-<id>.scope", "libpod-<id>.scope", or
// a bare "<id>" (cgroupfs drivers): the 64-hex id, or "".
std::string container_id(std::string_view component)
{
	if (ends_with(component, ".scope"))
		component.remove_suffix(6);
	if (component.size() < kContainerIdLength)
		return {};
	const std::string_view id = component.substr(component.size() - kContainerIdLength);
	const bool whole = component.size() == kContainerIdLength;
	if (!is_hex(id) || (!whole && component[component.size() - kContainerIdLength - 1] != '-'))
		return {};
	return std::string(id);
}

// "pod<uid>" (cgroupfs) or "kubepods-<qos>-pod<uid with _ for ->.slice" (systemd driver).
std::string pod_uid(std::string_view component)
{
	if (ends_with(component, ".slice"))
		component.remove_suffix(6);
	const size_t at = component.rfind("pod");
	if (at == std::string_view::npos || (at != 0 && component[at - 1] != '-'))
		return {};
	std::string uid(component.substr(at + 3));
	if (uid.size() != 36)
		return {};
	std::replace(uid.begin(), uid.end(), '_', '-');
	for (size_t i = 0; i < uid.size(); i++) {
		const char c = uid[i];
		const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
		if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return {};
	}
	return uid;
}

} // namespace

CgroupWorkload describe_cgroup(std::string_view path)
{
	std::vector<std::string_view> components;
	for (size_t start = 0; start <= path.size();) {
		size_t end = path.find('/', start);
		if (end == std::string_view::npos)
			end = path.size();
		if (end > start)
			components.push_back(path.substr(start, end - start));
		start = end + 1;
	}
	CgroupWorkload w;
	// Innermost first: a unit inside a container's scope, a container inside a pod.
	for (auto it = components.rbegin(); it != components.rend(); ++it) {
		const std::string_view c = *it;
		if (w.unit.empty() && (ends_with(c, ".service") || ends_with(c, ".scope")))
			w.unit = std::string(c);
		if (w.container.empty())
			w.container = container_id(c);
		if (w.pod.empty())
			w.pod = pod_uid(c);
	}
	return w;
}

Result<std::string> caller_executable(uint32_t tgid, uint64_t connected_boot_ns, const std::string &proc)
{
	const std::string dir = proc + "/" + std::to_string(tgid);
	UniqueFd dirfd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!dirfd)
		return system_error("open " + dir);
	// Reads through this directory fail once its process is gone, even if the PID is reused.
	UniqueFd stat_fd(openat(dirfd.get(), "stat", O_RDONLY | O_CLOEXEC));
	if (!stat_fd)
		return system_error("open " + dir + "/stat");
	char buf[1024];
	const ssize_t n = read(stat_fd.get(), buf, sizeof(buf) - 1);
	if (n <= 0)
		return system_error("read " + dir + "/stat", n == 0 ? EIO : errno);
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields count from
	// the last ')'. starttime is field 22, the 20th after it.
	const std::string_view stat(buf, static_cast<size_t>(n));
	const size_t close = stat.rfind(')');
	if (close == std::string_view::npos)
		return plain_error(dir + "/stat: unexpected format");
	std::string_view rest = stat.substr(close + 1);
	uint64_t start_ticks = 0;
	bool found = false;
	for (int field = 3; !rest.empty() && field <= 22; field++) {
		rest.remove_prefix(std::min(rest.find_first_not_of(' '), rest.size()));
		const size_t end = std::min(rest.find(' '), rest.size());
		if (field == 22) {
			const std::string token(rest.substr(0, end));
			char *parsed_end = nullptr;
			start_ticks = std::strtoull(token.c_str(), &parsed_end, 10);
			found = !token.empty() && *parsed_end == '\0';
		}
		rest.remove_prefix(end);
	}
	if (!found)
		return plain_error(dir + "/stat: no start time");
	const long ticks_per_second = sysconf(_SC_CLK_TCK);
	if (ticks_per_second <= 0)
		return system_error("sysconf(_SC_CLK_TCK)");
	// Rounded down to a tick, so a start after the connect is certain, never a rounding artefact.
	const uint64_t start_ns = start_ticks * (1000000000ull / static_cast<uint64_t>(ticks_per_second));
	if (start_ns > connected_boot_ns)
		return plain_error("pid " + std::to_string(tgid) +
		                   " started after the connect: the caller is gone and " + "its pid reused");
	char target[4096];
	const ssize_t len = readlinkat(dirfd.get(), "exe", target, sizeof(target));
	if (len < 0)
		return system_error("readlink " + dir + "/exe");
	if (static_cast<size_t>(len) == sizeof(target))
		return plain_error(dir + "/exe: path too long");
	return std::string(target, static_cast<size_t>(len));
}

std::string UserNames::name(uint32_t uid)
{
	if (auto it = names_.find(uid); it != names_.end())
		return it->second;
	std::string name;
	std::vector<char> buf(4096);
	passwd pw{};
	passwd *found = nullptr;
	int rc;
	while ((rc = getpwuid_r(uid, &pw, buf.data(), buf.size(), &found)) == ERANGE && buf.size() < (1 << 20))
		buf.resize(buf.size() * 2);
	if (rc == 0 && found)
		name = found->pw_name;
	if (names_.size() >= capacity_)
		names_.clear(); // a bounded cache; rare uids simply get looked up again
	names_.emplace(uid, name);
	return name;
}

} // namespace cordon
