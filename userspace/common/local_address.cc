#include "common/local_address.h"

#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "common/unique_fd.h"

namespace cordon {
namespace {

constexpr const char *kLoopback = "lo";

// One rtnetlink request with room for an ifaddrmsg and its attributes.
struct AddressRequest {
	nlmsghdr header;
	ifaddrmsg address;
	std::array<char, 256> attributes;
};

struct RouteRequest {
	nlmsghdr header;
	rtmsg route;
	std::array<char, 64> attributes;
};

// Marks cordon's fallback routes (any protocol number that is not the kernel's or a routing
// daemon's will do; `ip route` shows it as "proto 205").
constexpr unsigned char kRouteProtocol = 205;

template <typename Request> void add_attribute(Request &req, unsigned short type, const void *data, size_t size)
{
	// Fixed attributes only (addresses, a label under IFNAMSIZ): they always fit.
	if (NLMSG_ALIGN(req.header.nlmsg_len) + RTA_SPACE(size) > sizeof(req))
		std::abort();
	auto *rta = reinterpret_cast<rtattr *>(reinterpret_cast<char *>(&req) + NLMSG_ALIGN(req.header.nlmsg_len));
	rta->rta_type = type;
	rta->rta_len = static_cast<unsigned short>(RTA_LENGTH(size));
	std::memcpy(RTA_DATA(rta), data, size);
	req.header.nlmsg_len = NLMSG_ALIGN(req.header.nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

Result<UniqueFd> open_route_socket()
{
	UniqueFd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
	if (!fd)
		return system_error("open rtnetlink socket");
	sockaddr_nl local{};
	local.nl_family = AF_NETLINK;
	if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&local), sizeof(local)) != 0)
		return system_error("bind rtnetlink socket");
	return fd;
}

// Sends one request and reads answers until the kernel's ACK/error (or a dump's end). Every
// RTM_NEWADDR in a dump goes to on_address. A dump the kernel marks interrupted (the addresses
// changed while it ran) is an EAGAIN error: the caller's answer would be incomplete.
template <typename Request>
Status transact(int fd, const Request &request, const std::string &what,
                const std::function<void(const nlmsghdr &)> &on_address = {})
{
	sockaddr_nl kernel{};
	kernel.nl_family = AF_NETLINK;
	if (::sendto(fd, &request, request.header.nlmsg_len, 0, reinterpret_cast<sockaddr *>(&kernel), sizeof(kernel)) <
	    0)
		return system_error(what);
	alignas(nlmsghdr) std::array<char, 32768> buffer;
	bool interrupted = false;
	for (;;) {
		ssize_t n = ::recv(fd, buffer.data(), buffer.size(), MSG_TRUNC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return system_error(what + ": reading the kernel's answer");
		}
		if (static_cast<size_t>(n) > buffer.size())
			return plain_error(what + ": the kernel's answer did not fit " + std::to_string(buffer.size()) +
			                   " bytes");
		auto remaining = static_cast<int>(n);
		for (auto *h = reinterpret_cast<nlmsghdr *>(buffer.data()); NLMSG_OK(h, remaining);
		     h = NLMSG_NEXT(h, remaining)) {
			if (h->nlmsg_seq != request.header.nlmsg_seq)
				continue;
			interrupted = interrupted || (h->nlmsg_flags & NLM_F_DUMP_INTR);
			if (h->nlmsg_type == NLMSG_DONE)
				return interrupted ? system_error(what + ": interrupted", EAGAIN) : Status{};
			if (h->nlmsg_type == NLMSG_ERROR) {
				if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr)))
					return plain_error(what + ": a short error message from the kernel");
				const auto *err = static_cast<const nlmsgerr *>(NLMSG_DATA(h));
				if (err->error == 0)
					return {};
				return system_error(what, -err->error);
			}
			if (h->nlmsg_type == RTM_NEWADDR && on_address)
				on_address(*h);
		}
	}
}

// The fallback behind the address: an `unreachable` route to it in the main table. While the
// address is on lo the local table answers first; should it vanish (an `ip addr flush dev lo`),
// a container's connection meant for cordond fails at the host instead of following the
// default route out.
Status change_fallback_route(const IpAddress &ip, bool add)
{
	auto fd = open_route_socket();
	if (!fd)
		return fd.error();
	RouteRequest req{};
	req.header.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
	req.header.nlmsg_type = add ? RTM_NEWROUTE : RTM_DELROUTE;
	req.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_EXCL : 0);
	req.header.nlmsg_seq = 4;
	req.route.rtm_family = AF_INET;
	req.route.rtm_dst_len = 32;
	req.route.rtm_table = RT_TABLE_MAIN;
	req.route.rtm_protocol = kRouteProtocol;
	req.route.rtm_scope = RT_SCOPE_UNIVERSE;
	req.route.rtm_type = RTN_UNREACHABLE;
	const uint32_t v4 = ip.v4_be();
	add_attribute(req, RTA_DST, &v4, sizeof(v4));
	const std::string what = std::string(add ? "add" : "remove") + " the unreachable route to " + ip.to_string();
	Status st = transact(fd->get(), req, what);
	if (!st && st.error().code == (add ? EEXIST : ESRCH))
		return {};
	return st;
}

Result<int> loopback_index()
{
	unsigned index = ::if_nametoindex(kLoopback);
	if (index == 0)
		return system_error("find interface lo");
	return static_cast<int>(index);
}

} // namespace

std::string local_address_label(const std::string &pin_dir)
{
	// FNV-1a of the pin directory: short, stable, and different per instance. "/x/" and "/x"
	// are one directory.
	std::string dir = pin_dir;
	while (dir.size() > 1 && dir.back() == '/')
		dir.pop_back();
	uint32_t hash = 2166136261u;
	for (unsigned char c : dir) {
		hash ^= c;
		hash *= 16777619u;
	}
	char label[IFNAMSIZ];
	std::snprintf(label, sizeof(label), "lo:cdn%06x", hash & 0xffffffu);
	return label;
}

Status add_local_address(const IpAddress &ip, const std::string &label)
{
	if (!ip.is_v4())
		return plain_error("add " + ip.to_string() + " to lo: only IPv4 is supported");
	if (label.size() >= IFNAMSIZ)
		return plain_error("address label '" + label + "' is too long");
	auto index = loopback_index();
	if (!index)
		return index.error();
	auto fd = open_route_socket();
	if (!fd)
		return fd.error();
	AddressRequest req{};
	req.header.nlmsg_len = NLMSG_LENGTH(sizeof(ifaddrmsg));
	req.header.nlmsg_type = RTM_NEWADDR;
	req.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	req.header.nlmsg_seq = 1;
	req.address.ifa_family = AF_INET;
	req.address.ifa_prefixlen = 32;
	req.address.ifa_scope = RT_SCOPE_HOST;
	req.address.ifa_index = static_cast<unsigned>(*index);
	const uint32_t v4 = ip.v4_be();
	add_attribute(req, IFA_LOCAL, &v4, sizeof(v4));
	add_attribute(req, IFA_ADDRESS, &v4, sizeof(v4));
	add_attribute(req, IFA_LABEL, label.c_str(), label.size() + 1);
	Status st = transact(fd->get(), req, "add " + ip.to_string() + "/32 to lo");
	if (!st && st.error().code != EEXIST)
		return st;
	return change_fallback_route(ip, true);
}

Result<std::vector<IpAddress>> local_addresses_once(const std::string &label);

Result<std::vector<IpAddress>> local_addresses(const std::string &label)
{
	// A dump the kernel marks interrupted (lo's addresses changed meanwhile) is asked again.
	for (int attempt = 0;; attempt++) {
		auto found = local_addresses_once(label);
		if (found || found.error().code != EAGAIN || attempt == 4)
			return found;
	}
}

Result<std::vector<IpAddress>> local_addresses_once(const std::string &label)
{
	auto index = loopback_index();
	if (!index)
		return index.error();
	auto fd = open_route_socket();
	if (!fd)
		return fd.error();
	AddressRequest req{};
	req.header.nlmsg_len = NLMSG_LENGTH(sizeof(ifaddrmsg));
	req.header.nlmsg_type = RTM_GETADDR;
	req.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.header.nlmsg_seq = 2;
	req.address.ifa_family = AF_INET;
	std::vector<IpAddress> found;
	Status st = transact(fd->get(), req, "list the addresses of lo", [&](const nlmsghdr &h) {
		const auto *ifa = static_cast<const ifaddrmsg *>(NLMSG_DATA(&h));
		if (static_cast<int>(ifa->ifa_index) != *index || ifa->ifa_family != AF_INET)
			return;
		int length = static_cast<int>(IFA_PAYLOAD(&h));
		bool labelled = false;
		uint32_t local = 0;
		bool have_local = false;
		for (auto *rta = IFA_RTA(ifa); RTA_OK(rta, length); rta = RTA_NEXT(rta, length)) {
			if (rta->rta_type == IFA_LABEL) {
				const auto *text = static_cast<const char *>(RTA_DATA(rta));
				labelled = std::string(text, ::strnlen(text, RTA_PAYLOAD(rta))) == label;
			}
			if (rta->rta_type == IFA_LOCAL && RTA_PAYLOAD(rta) == sizeof(local)) {
				std::memcpy(&local, RTA_DATA(rta), sizeof(local));
				have_local = true;
			}
		}
		if (labelled && have_local)
			found.push_back(IpAddress::from_v4(local));
	});
	if (!st)
		return st.error();
	return found;
}

Status remove_local_address(const IpAddress &ip, const std::string &label)
{
	if (!ip.is_v4())
		return plain_error("remove " + ip.to_string() + " from lo: only IPv4 is supported");
	auto index = loopback_index();
	if (!index)
		return index.error();
	auto fd = open_route_socket();
	if (!fd)
		return fd.error();
	AddressRequest req{};
	req.header.nlmsg_len = NLMSG_LENGTH(sizeof(ifaddrmsg));
	req.header.nlmsg_type = RTM_DELADDR;
	req.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	req.header.nlmsg_seq = 3;
	req.address.ifa_family = AF_INET;
	req.address.ifa_prefixlen = 32;
	req.address.ifa_index = static_cast<unsigned>(*index);
	const uint32_t v4 = ip.v4_be();
	// Address, prefix length and label together: only cordon's /32, never an administrator's
	// address that happens to match it.
	add_attribute(req, IFA_LOCAL, &v4, sizeof(v4));
	add_attribute(req, IFA_ADDRESS, &v4, sizeof(v4));
	add_attribute(req, IFA_LABEL, label.c_str(), label.size() + 1);
	Status st = transact(fd->get(), req, "remove " + ip.to_string() + " from lo");
	if (!st && st.error().code != EADDRNOTAVAIL)
		return st;
	return change_fallback_route(ip, false);
}

Result<size_t> remove_local_addresses(const std::string &label)
{
	auto addresses = local_addresses(label);
	if (!addresses)
		return addresses.error();
	for (const IpAddress &ip : *addresses)
		if (Status st = remove_local_address(ip, label); !st)
			return st.error();
	return addresses->size();
}

} // namespace cordon
