#include "bpf/kernel_programs.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/local_address.h"
#include "common/log.h"
#include "cordon.skel.h"

namespace cordon {
namespace {

// Every map the programs share with userspace (and with the next cordond), by pin name.
std::vector<std::pair<std::string, bpf_map *>> shared_maps(cordon_bpf *skel)
{
	return {
	    {"targets", skel->maps.targets},           {"capture_ports", skel->maps.capture_ports},
	    {"cgroup_scope", skel->maps.cgroup_scope}, {"origin_store", skel->maps.origin_store},
	    {"origins", skel->maps.origins},           {"counters", skel->maps.counters},
	};
}

std::vector<std::pair<std::string, bpf_program *>> programs(cordon_bpf *skel)
{
	return {
	    {"connect4", skel->progs.cordon_connect4},         {"connect6", skel->progs.cordon_connect6},
	    {"sendmsg4", skel->progs.cordon_sendmsg4},         {"sendmsg6", skel->progs.cordon_sendmsg6},
	    {"getpeername4", skel->progs.cordon_getpeername4}, {"getpeername6", skel->progs.cordon_getpeername6},
	    {"sockops", skel->progs.cordon_sockops},           {"recvmsg4", skel->progs.cordon_recvmsg4},
	    {"recvmsg6", skel->progs.cordon_recvmsg6},
	};
}

const char *const kLinkNames[] = {"connect4",     "connect6", "sendmsg4", "sendmsg6", "getpeername4",
                                  "getpeername6", "sockops",  "recvmsg4", "recvmsg6"};
const char *const kMapNames[] = {"targets", "capture_ports", "cgroup_scope", "origin_store",
                                 "origins", "counters",      "listener_tags"};

std::string link_pin(const std::string &dir, const std::string &name)
{
	return dir + "/link_" + name;
}
std::string map_pin(const std::string &dir, const std::string &name)
{
	return dir + "/map_" + name;
}

bool exists(const std::string &path)
{
	struct stat st;
	return ::stat(path.c_str(), &st) == 0;
}

// A pinned map can be reused only if the new object declares it identically.
bool compatible(int fd, bpf_map *map)
{
	bpf_map_info info{};
	uint32_t len = sizeof(info);
	if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0)
		return false;
	return info.type == bpf_map__type(map) && info.key_size == bpf_map__key_size(map) &&
	       info.value_size == bpf_map__value_size(map) && info.max_entries == bpf_map__max_entries(map) &&
	       info.map_flags == bpf_map__map_flags(map);
}

int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	// libbpf's debug output is hundreds of lines per load; only on explicit request.
	static const bool verbose = std::getenv("CORDON_LIBBPF_DEBUG") != nullptr;
	if (level == LIBBPF_DEBUG && !verbose)
		return 0;
	char buf[1024];
	int n = vsnprintf(buf, sizeof(buf), fmt, args);
	std::string line(buf);
	while (!line.empty() && line.back() == '\n')
		line.pop_back();
	log::write(level == LIBBPF_WARN ? log::Level::warning : log::Level::debug, "libbpf: " + line);
	return n;
}

Status make_dir(const std::string &dir)
{
	if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
		return system_error("mkdir " + dir);
	return {};
}

// Whoever owns the pin directory can unpin the links, and then a cordond crash detaches the
// programs: capture fails open. A bpf file system mounted without mode= is world-writable
// (1777), so a job may have made the directory before cordond did. Take it back, or refuse.
Status own_pin_dir(int fd, const std::string &dir)
{
	struct stat st;
	if (::fstat(fd, &st) != 0)
		return system_error("stat " + dir);
	if (st.st_uid == ::geteuid() && (st.st_mode & 077) == 0)
		return {};
	const std::string was = "owned by uid " + std::to_string(st.st_uid) + ", mode " +
	                        std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
	                        std::to_string(st.st_mode & 7);
	const std::string remedy = ": someone else made it and could unpin cordon's programs; remove it "
	                           "(rm -r) and start cordond again";
	if (::fchown(fd, ::geteuid(), ::getegid()) != 0 || ::fchmod(fd, 0700) != 0)
		return system_error("pin directory " + dir + " is " + was + remedy);
	// Until the fchown the owner could rename the directory away and make another at the path
	// (pins go by path), or leave entries to be followed: only an empty directory that is still
	// the one at the path is kept.
	struct stat at_path;
	if (::lstat(dir.c_str(), &at_path) != 0 || at_path.st_dev != st.st_dev || at_path.st_ino != st.st_ino)
		return plain_error("pin directory " + dir + " was " + was + " and was replaced while cordond took it" +
		                   remedy);
	UniqueFd listing(::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	DIR *d = listing ? ::fdopendir(listing.release()) : nullptr;
	if (!d)
		return system_error("list " + dir);
	bool empty = true;
	while (dirent *e = ::readdir(d))
		empty = empty && (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0);
	::closedir(d);
	if (!empty)
		return plain_error("pin directory " + dir + " was " + was + " and holds entries cordond did not make" +
		                   remedy);
	log::warning("pin directory " + dir + " was " + was + ": made it root's, mode 700");
	return {};
}

} // namespace

const char *counter_name(int counter)
{
	switch (counter) {
	case CORDON_CTR_REDIRECTED:
		return "redirected";
	case CORDON_CTR_EXEMPT:
		return "exempt";
	case CORDON_CTR_UNENFORCED:
		return "unenforced";
	case CORDON_CTR_REFUSED_QUIC:
		return "refused_quic";
	case CORDON_CTR_REFUSED_NETNS:
		return "refused_netns";
	case CORDON_CTR_ORIGIN_LOST:
		return "origin_lost";
	case CORDON_CTR_PEER_REWRITTEN:
		return "peer_rewritten";
	case CORDON_CTR_LOOKUP_MISSED:
		return "lookup_missed";
	case CORDON_CTR_REFUSED_NO_LISTENER:
		return "refused_no_listener";
	case CORDON_CTR_DNS_REDIRECTED:
		return "dns_redirected";
	case CORDON_CTR_REDIRECTED_NETNS:
		return "redirected_netns";
	case CORDON_CTR_DNS_REPLY_REWRITTEN:
		return "dns_reply_rewritten";
	default:
		return "unknown";
	}
}

Status ensure_bpffs(const std::string &pin_dir)
{
	struct statfs fs;
	std::string parent = pin_dir.substr(0, pin_dir.rfind('/'));
	if (parent.empty())
		parent = "/";
	if (::statfs(parent.c_str(), &fs) == 0 && fs.f_type == BPF_FS_MAGIC)
		return {};
	if (parent != "/sys/fs/bpf")
		return plain_error("pin directory parent " + parent + " is not on a bpf file system");
	if (::mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") != 0)
		return system_error("mount bpf file system on /sys/fs/bpf");
	log::info("mounted a bpf file system on /sys/fs/bpf");
	return {};
}

Result<std::unique_ptr<KernelPrograms>> KernelPrograms::attach(const KernelSettings &s)
{
	libbpf_set_print(libbpf_print);
	if (Status st = ensure_bpffs(s.pin_dir); !st)
		return st.error();
	if (Status st = make_dir(s.pin_dir); !st)
		return st.error();

	std::unique_ptr<KernelPrograms> kp(new KernelPrograms());
	kp->pin_dir_ = s.pin_dir;
	// Two daemons on one pin directory would swap each other's programs: hold a lock on it.
	kp->pin_lock_.reset(::open(s.pin_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
	if (!kp->pin_lock_)
		return system_error("open " + s.pin_dir + " (a directory, not a symbolic link)");
	if (Status st = own_pin_dir(kp->pin_lock_.get(), s.pin_dir); !st)
		return st.error();
	if (::flock(kp->pin_lock_.get(), LOCK_EX | LOCK_NB) != 0)
		return errno == EWOULDBLOCK ? plain_error("another cordond is running on " + s.pin_dir)
		                            : system_error("lock " + s.pin_dir);
	kp->skel_ = cordon_bpf__open();
	if (!kp->skel_)
		return system_error("open BPF object");
	auto *ro = kp->skel_->rodata;
	ro->listen_ip4 = s.listen_ipv4.v4_be();
	in6_addr v6 = s.listen_ipv6.v6();
	std::memcpy(const_cast<__u32 *>(ro->listen_ip6), v6.s6_addr, 16);
	ro->listen_port_be = htons(s.listen_port);
	ro->upstream_mark = s.upstream_mark;
	ro->host_netns_cookie = s.netns_cookie;
	ro->cordond_cgroup_id = s.cgroup_id;
	ro->dns_port_be = htons(s.dns_port);
	ro->dns_pass_when_down = s.dns_pass_when_down ? 1 : 0;
	if (s.netns_listen.port != 0) {
		ro->netns_listen_ip4 = s.netns_listen.ip.v4_be();
		ro->netns_listen_port_be = htons(s.netns_listen.port);
		ro->netns_dns_port_be = htons(s.netns_dns_port);
	}

	// Adopt the maps the previous cordond pinned, when every one of them still fits: the
	// origins of connections in flight, the targets and the counters carry over.
	const bool links_pinned = exists(link_pin(s.pin_dir, "connect4"));
	std::vector<std::pair<bpf_map *, UniqueFd>> reusable;
	for (auto &[name, map] : shared_maps(kp->skel_)) {
		UniqueFd fd(bpf_obj_get(map_pin(s.pin_dir, name).c_str()));
		if (fd && compatible(fd.get(), map))
			reusable.emplace_back(map, std::move(fd));
	}
	if (reusable.size() == shared_maps(kp->skel_).size()) {
		for (auto &[map, fd] : reusable)
			if (bpf_map__reuse_fd(map, fd.get()) != 0)
				return system_error(std::string("reuse pinned map ") + bpf_map__name(map));
		kp->adopted_ = links_pinned;
	} else if (links_pinned) {
		// A layout change between versions: start with new maps. The old programs stay attached
		// (and keep refusing) until each new one is attached below.
		log::warning("pinned BPF maps in " + s.pin_dir + " do not match this cordond; replacing them");
	}
	if (cordon_bpf__load(kp->skel_) != 0)
		return system_error("load BPF programs (is this kernel built with BTF and cgroup BPF?)");

	UniqueFd cgroup_fd(::open(s.cgroup_mount.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!cgroup_fd)
		return system_error("open cgroup2 root " + s.cgroup_mount);

	for (auto &[name, prog] : programs(kp->skel_)) {
		std::string pin = link_pin(s.pin_dir, name);
		bpf_link *link = nullptr;
		if (kp->adopted_ && exists(pin)) {
			link = bpf_link__open(pin.c_str());
			if (link && bpf_link__update_program(link, prog) == 0) {
				kp->links_.push_back(link);
				kp->program_names_.push_back(name);
				continue;
			}
			int err = errno;
			if (link)
				bpf_link__destroy(link);
			log::warning("pinned link " + pin + " could not be updated (" + std::strerror(err) +
			             "); attaching anew");
		}
		link = bpf_program__attach_cgroup(prog, cgroup_fd.get());
		if (!link)
			return system_error("attach " + name + " to cgroup2 root " + s.cgroup_mount);
		kp->links_.push_back(link);
		kp->program_names_.push_back(name);
		// The new link is attached before the old one goes: no gap in enforcement.
		if (exists(pin)) {
			UniqueFd old(bpf_obj_get(pin.c_str()));
			if (old)
				bpf_link_detach(old.get());
			::unlink(pin.c_str());
		}
		if (bpf_link__pin(link, pin.c_str()) != 0)
			return system_error("pin link " + pin);
	}
	for (auto &[name, map] : shared_maps(kp->skel_)) {
		std::string pin = map_pin(s.pin_dir, name);
		if (exists(pin)) {
			UniqueFd fd(bpf_obj_get(pin.c_str()));
			bpf_map_info a{}, b{};
			uint32_t la = sizeof(a), lb = sizeof(b);
			if (fd && bpf_obj_get_info_by_fd(fd.get(), &a, &la) == 0 &&
			    bpf_obj_get_info_by_fd(bpf_map__fd(map), &b, &lb) == 0 && a.id == b.id)
				continue; // already ours
			::unlink(pin.c_str());
		}
		if (bpf_map__pin(map, pin.c_str()) != 0)
			return system_error("pin map " + pin);
	}
	return kp;
}

KernelPrograms::~KernelPrograms()
{
	// Destroying a bpf_link object closes its fd; pinned links stay attached (fail closed).
	for (bpf_link *link : links_)
		bpf_link__destroy(link);
	if (skel_)
		cordon_bpf__destroy(skel_);
}

Status KernelPrograms::detach()
{
	for (bpf_link *link : links_) {
		if (bpf_link__detach(link) != 0)
			return system_error("detach link");
		bpf_link__unpin(link);
	}
	return detach_pinned(pin_dir_);
}

Status KernelPrograms::set_ports(const std::map<uint16_t, uint32_t> &flags)
{
	std::vector<__u32> keys(CORDON_PORT_SPACE), values(CORDON_PORT_SPACE, 0);
	for (uint32_t i = 0; i < CORDON_PORT_SPACE; i++)
		keys[i] = i;
	for (auto [port, f] : flags)
		values[port] = f;
	__u32 count = CORDON_PORT_SPACE;
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	if (bpf_map_update_batch(bpf_map__fd(skel_->maps.capture_ports), keys.data(), values.data(), &count, &opts) !=
	    0)
		return system_error("update capture_ports");
	return {};
}

Status KernelPrograms::set_scopes(const std::map<uint64_t, uint32_t> &scopes)
{
	int fd = bpf_map__fd(skel_->maps.cgroup_scope);
	for (auto [id, scope] : scopes)
		if (bpf_map_update_elem(fd, &id, &scope, BPF_ANY) != 0)
			return system_error("update cgroup_scope");
	std::vector<uint64_t> stale;
	uint64_t key = 0, next = 0;
	uint64_t *prev = nullptr;
	while (bpf_map_get_next_key(fd, prev, &next) == 0) {
		if (!scopes.count(next))
			stale.push_back(next);
		key = next;
		prev = &key;
	}
	for (uint64_t id : stale)
		if (bpf_map_delete_elem(fd, &id) != 0 && errno != ENOENT)
			return system_error("delete from cgroup_scope");
	return {};
}

namespace {
cordon_target_key target_key(const Cidr &cidr)
{
	cordon_target_key key{};
	key.prefixlen = cidr.prefix_len;
	std::memcpy(key.addr, cidr.base.bytes.data(), 16);
	return key;
}
} // namespace

Status KernelPrograms::add_target(const Cidr &cidr, uint32_t source)
{
	const int fd = bpf_map__fd(skel_->maps.targets);
	cordon_target_key key = target_key(cidr);
	cordon_target_value value{};
	if (bpf_map_lookup_elem(fd, &key, &value) != 0)
		value = cordon_target_value{};
	value.sources |= source;
	if (bpf_map_update_elem(fd, &key, &value, BPF_ANY) != 0)
		return system_error("add capture target " + cidr.to_string());
	return {};
}

Status KernelPrograms::remove_target(const Cidr &cidr, uint32_t source)
{
	const int fd = bpf_map__fd(skel_->maps.targets);
	cordon_target_key key = target_key(cidr);
	cordon_target_value value{};
	if (bpf_map_lookup_elem(fd, &key, &value) != 0)
		return {};
	value.sources &= ~source;
	if (value.sources != 0) {
		if (bpf_map_update_elem(fd, &key, &value, BPF_EXIST) != 0)
			return system_error("update capture target " + cidr.to_string());
		return {};
	}
	if (bpf_map_delete_elem(fd, &key) != 0 && errno != ENOENT)
		return system_error("remove capture target " + cidr.to_string());
	return {};
}

Status KernelPrograms::tag_listener(int fd)
{
	cordon_listener_tag tag{CORDON_LISTENER_MAGIC};
	if (bpf_map_update_elem(bpf_map__fd(skel_->maps.listener_tags), &fd, &tag, BPF_ANY) != 0)
		return system_error("tag listener socket");
	return {};
}

Result<std::vector<std::pair<Cidr, uint32_t>>> KernelPrograms::list_targets() const
{
	int fd = bpf_map__fd(skel_->maps.targets);
	std::vector<std::pair<Cidr, uint32_t>> out;
	cordon_target_key key{}, next{};
	cordon_target_key *prev = nullptr;
	while (bpf_map_get_next_key(fd, prev, &next) == 0) {
		cordon_target_value value{};
		if (bpf_map_lookup_elem(fd, &next, &value) == 0) {
			Cidr c;
			std::memcpy(c.base.bytes.data(), next.addr, 16);
			c.prefix_len = next.prefixlen;
			out.emplace_back(c, value.sources);
		}
		key = next;
		prev = &key;
	}
	if (errno != ENOENT)
		return system_error("iterate capture targets");
	return out;
}

Result<std::optional<cordon_origin>> KernelPrograms::take_origin(const cordon_tuple &tuple)
{
	cordon_origin origin{};
	if (bpf_map_lookup_and_delete_elem(bpf_map__fd(skel_->maps.origins), &tuple, &origin) != 0) {
		if (errno == ENOENT)
			return std::optional<cordon_origin>();
		return system_error("look up connection origin");
	}
	return std::optional<cordon_origin>(origin);
}

namespace {
Result<size_t> count_entries(int fd, size_t key_size)
{
	std::vector<uint8_t> key(key_size), next(key_size);
	size_t n = 0;
	void *prev = nullptr;
	while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
		n++;
		key = next;
		prev = key.data();
	}
	if (errno != ENOENT)
		return system_error("iterate map");
	return n;
}

Result<Counters> read_counters(int fd)
{
	int cpus = libbpf_num_possible_cpus();
	if (cpus <= 0)
		return system_error("count possible CPUs", -cpus);
	Counters out{};
	std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus));
	for (uint32_t i = 0; i < CORDON_CTR__COUNT; i++) {
		if (bpf_map_lookup_elem(fd, &i, per_cpu.data()) != 0)
			return system_error("read counters");
		for (uint64_t v : per_cpu)
			out[i] += v;
	}
	return out;
}
} // namespace

Result<size_t> KernelPrograms::origin_entries() const
{
	return count_entries(bpf_map__fd(skel_->maps.origins), sizeof(cordon_tuple));
}

Result<size_t> KernelPrograms::sweep_origins(std::chrono::seconds max_age)
{
	timespec ts{};
	::clock_gettime(CLOCK_BOOTTIME, &ts);
	const uint64_t now = static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
	const uint64_t limit = static_cast<uint64_t>(max_age.count()) * 1000000000ULL;
	const int fd = bpf_map__fd(skel_->maps.origins);
	std::vector<cordon_tuple> old;
	cordon_tuple key{}, next{};
	cordon_tuple *prev = nullptr;
	while (bpf_map_get_next_key(fd, prev, &next) == 0) {
		cordon_origin origin{};
		if (bpf_map_lookup_elem(fd, &next, &origin) == 0 && now > origin.connect_boot_ns &&
		    now - origin.connect_boot_ns > limit)
			old.push_back(next);
		key = next;
		prev = &key;
	}
	for (const auto &tuple : old)
		bpf_map_delete_elem(fd, &tuple);
	return old.size();
}

Result<Counters> KernelPrograms::counters() const
{
	return read_counters(bpf_map__fd(skel_->maps.counters));
}

Status KernelPrograms::add_to_counter(cordon_counter counter, uint64_t amount)
{
	// Only cordond writes this slot (the programs never touch it), so read-add-write is safe.
	int fd = bpf_map__fd(skel_->maps.counters);
	int cpus = libbpf_num_possible_cpus();
	std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus > 0 ? cpus : 1));
	uint32_t key = counter;
	if (bpf_map_lookup_elem(fd, &key, per_cpu.data()) != 0)
		return system_error("read counter");
	per_cpu[0] += amount;
	if (bpf_map_update_elem(fd, &key, per_cpu.data(), BPF_ANY) != 0)
		return system_error("update counter");
	return {};
}

Result<PinnedState> read_pinned_state(const std::string &pin_dir)
{
	PinnedState state;
	if (!exists(pin_dir))
		return state;
	state.present = true;
	for (const char *name : kLinkNames)
		if (exists(link_pin(pin_dir, name)))
			state.links.push_back(name);
	UniqueFd counters(bpf_obj_get(map_pin(pin_dir, "counters").c_str()));
	if (counters) {
		auto c = read_counters(counters.get());
		if (c)
			state.counters = *c;
	}
	UniqueFd origins(bpf_obj_get(map_pin(pin_dir, "origins").c_str()));
	if (origins) {
		auto n = count_entries(origins.get(), sizeof(cordon_tuple));
		if (n)
			state.origin_entries = *n;
	}
	return state;
}

namespace {

// The host address for other namespaces goes last: while a program still redirects there, the
// address must stay local, or a container's connection would be routed out of the host.
Status remove_netns_address(const std::string &pin_dir)
{
	auto removed = remove_local_addresses(local_address_label(pin_dir));
	if (!removed)
		return removed.error();
	return {};
}

} // namespace

Status detach_pinned(const std::string &pin_dir)
{
	if (!exists(pin_dir))
		return remove_netns_address(pin_dir);
	for (const char *name : kLinkNames) {
		std::string pin = link_pin(pin_dir, name);
		if (!exists(pin))
			continue;
		UniqueFd fd(bpf_obj_get(pin.c_str()));
		if (!fd)
			return system_error("open pinned link " + pin);
		if (bpf_link_detach(fd.get()) != 0 && errno != ENOLINK)
			return system_error("detach " + pin);
		if (::unlink(pin.c_str()) != 0)
			return system_error("unpin " + pin);
	}
	for (const char *name : kMapNames) {
		std::string pin = map_pin(pin_dir, name);
		if (exists(pin) && ::unlink(pin.c_str()) != 0)
			return system_error("unpin " + pin);
	}
	if (::rmdir(pin_dir.c_str()) != 0 && errno != ENOENT)
		return system_error("remove " + pin_dir + " (does it hold files cordon did not create?)");
	return remove_netns_address(pin_dir);
}

} // namespace cordon
