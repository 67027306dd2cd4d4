#include "common/cgroup.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace cordon {
namespace {

// /proc/mounts escapes space, tab, newline and backslash as octal.
std::string unescape_mount_field(std::string_view field)
{
	std::string out;
	for (size_t i = 0; i < field.size(); i++) {
		if (field[i] == '\\' && i + 3 < field.size()) {
			int value = 0;
			bool octal = true;
			for (size_t k = 1; k <= 3; k++) {
				if (field[i + k] < '0' || field[i + k] > '7')
					octal = false;
				else
					value = value * 8 + (field[i + k] - '0');
			}
			if (octal) {
				out.push_back(static_cast<char>(value));
				i += 3;
				continue;
			}
		}
		out.push_back(field[i]);
	}
	return out;
}

Result<std::string> read_file(const std::string &path)
{
	std::ifstream in(path);
	if (!in)
		return system_error("open " + path);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

// kernfs (cgroupfs) file handles are of type FILEID_KERNFS and hold the 64-bit cgroup id.
constexpr int kFileIdKernfs = 0xfe;

struct CgroupHandle {
	struct file_handle header;
	uint64_t id;
};

} // namespace

std::optional<std::string> find_mount(std::string_view proc_mounts, std::string_view fstype, std::string_view option)
{
	size_t pos = 0;
	while (pos < proc_mounts.size()) {
		size_t end = proc_mounts.find('\n', pos);
		if (end == std::string_view::npos)
			end = proc_mounts.size();
		std::string_view line = proc_mounts.substr(pos, end - pos);
		pos = end + 1;
		// device mountpoint fstype options ...
		std::string_view fields[4];
		for (auto &f : fields) {
			size_t sp = line.find(' ');
			f = line.substr(0, sp);
			line = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
		}
		if (fields[2] != fstype)
			continue;
		if (option.empty())
			return unescape_mount_field(fields[1]);
		for (std::string_view options = fields[3]; !options.empty();) {
			size_t comma = options.find(',');
			if (options.substr(0, comma) == option)
				return unescape_mount_field(fields[1]);
			options = comma == std::string_view::npos ? std::string_view{} : options.substr(comma + 1);
		}
	}
	return std::nullopt;
}

Result<std::string> parse_cgroup2_mount(std::string_view proc_mounts)
{
	if (auto mount = find_mount(proc_mounts, "cgroup2"))
		return *mount;
	return plain_error("no cgroup2 file system is mounted (cordon needs the unified hierarchy)");
}

Result<std::string> parse_unified_cgroup(std::string_view text)
{
	size_t pos = 0;
	while (pos < text.size()) {
		size_t end = text.find('\n', pos);
		if (end == std::string_view::npos)
			end = text.size();
		std::string_view line = text.substr(pos, end - pos);
		pos = end + 1;
		if (line.substr(0, 3) == "0::")
			return std::string(line.substr(3));
	}
	return plain_error("no unified (0::) line in cgroup membership");
}

Result<std::string> normalize_cgroup_path(std::string_view path)
{
	if (path.empty() || path.front() != '/')
		return plain_error("cgroup path '" + std::string(path) + "' must start with '/'");
	std::string out;
	size_t pos = 0;
	while (pos < path.size()) {
		size_t slash = path.find('/', pos);
		if (slash == std::string_view::npos)
			slash = path.size();
		std::string_view part = path.substr(pos, slash - pos);
		pos = slash + 1;
		if (part.empty() || part == ".")
			continue;
		if (part == "..")
			return plain_error("cgroup path '" + std::string(path) + "' may not contain '..'");
		out += "/";
		out += part;
	}
	return out.empty() ? std::string("/") : out;
}

Result<CgroupHierarchy> CgroupHierarchy::open_system()
{
	auto mounts = read_file("/proc/mounts");
	if (!mounts)
		return mounts.error();
	auto mount_point = parse_cgroup2_mount(*mounts);
	if (!mount_point)
		return mount_point.error();
	return open_at(*mount_point);
}

Result<CgroupHierarchy> CgroupHierarchy::open_at(std::string mount_point)
{
	UniqueFd fd(::open(mount_point.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!fd)
		return system_error("open cgroup2 mount " + mount_point);
	return CgroupHierarchy(std::move(mount_point), std::move(fd));
}

std::string CgroupHierarchy::absolute(std::string_view relative) const
{
	if (relative == "/" || relative.empty())
		return mount_point_;
	return mount_point_ + std::string(relative);
}

Result<uint64_t> CgroupHierarchy::id_of(std::string_view relative) const
{
	auto norm = normalize_cgroup_path(relative);
	if (!norm)
		return norm.error();
	// The file handle of a cgroup2 directory is its 64-bit cgroup id.
	CgroupHandle handle{};
	handle.header.handle_bytes = sizeof(uint64_t);
	int mount_id = 0;
	std::string path = absolute(*norm);
	if (::name_to_handle_at(AT_FDCWD, path.c_str(), &handle.header, &mount_id, 0) != 0)
		return system_error("cgroup id of " + path);
	return handle.id;
}

Result<std::string> CgroupHierarchy::path_of(uint64_t id) const
{
	CgroupHandle handle{};
	handle.header.handle_bytes = sizeof(uint64_t);
	handle.header.handle_type = kFileIdKernfs;
	handle.id = id;
	UniqueFd fd(::open_by_handle_at(mount_fd_.get(), &handle.header, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!fd)
		return system_error("open cgroup id " + std::to_string(id));
	char link[PATH_MAX + 1] = {};
	std::string proc = "/proc/self/fd/" + std::to_string(fd.get());
	ssize_t n = ::readlink(proc.c_str(), link, PATH_MAX);
	if (n < 0)
		return system_error("readlink " + proc);
	std::string full(link, static_cast<size_t>(n));
	if (full == mount_point_)
		return std::string("/");
	if (full.compare(0, mount_point_.size(), mount_point_) != 0 || full.size() <= mount_point_.size() ||
	    full[mount_point_.size()] != '/')
		return plain_error("cgroup id " + std::to_string(id) + " resolved outside " + mount_point_ + ": " +
		                   full);
	return full.substr(mount_point_.size());
}

Result<std::string> CgroupHierarchy::path_of_pid(int pid) const
{
	std::string file = pid == 0 ? "/proc/self/cgroup" : "/proc/" + std::to_string(pid) + "/cgroup";
	auto text = read_file(file);
	if (!text)
		return text.error();
	return parse_unified_cgroup(*text);
}

std::string CgroupPathCache::lookup(uint64_t id)
{
	auto it = index_.find(id);
	if (it != index_.end()) {
		order_.splice(order_.begin(), order_, it->second);
		return it->second->second;
	}
	auto path = hierarchy_.path_of(id);
	if (!path)
		return "";
	order_.emplace_front(id, *path);
	index_[id] = order_.begin();
	if (order_.size() > capacity_) {
		index_.erase(order_.back().first);
		order_.pop_back();
	}
	return *path;
}

} // namespace cordon
