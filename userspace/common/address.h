// IP addresses in the one form the BPF maps use: 16 bytes, IPv4 as v4-mapped (::ffff:a.b.c.d).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace cordon {

struct IpAddress {
	std::array<uint8_t, 16> bytes{};

	static Result<IpAddress> parse(std::string_view text);
	static IpAddress from_v4(uint32_t ip_be);
	static IpAddress from_v6(const in6_addr &ip);

	bool is_v4() const; // v4-mapped
	uint32_t v4_be() const;
	in6_addr v6() const;
	bool is_loopback() const;
	// Not on the public internet: loopback, private (RFC 1918, ULA), shared (100.64/10),
	// link-local, "this network" (0/8), IETF protocol (192.0.0/24), benchmarking (198.18/15),
	// multicast and reserved (224/3), unspecified. Where a container's own network would
	// have firewall or isolation rules that a connection made by cordond would step over.
	bool is_internal() const;
	std::string to_string() const; // dotted quad for IPv4, RFC 5952 for IPv6

	auto operator<=>(const IpAddress &) const = default;
};

struct SocketAddress {
	IpAddress ip;
	uint16_t port = 0;

	// "1.2.3.4:443", "[::1]:443"
	static Result<SocketAddress> parse(std::string_view text);
	static Result<SocketAddress> from_sockaddr(const sockaddr *sa, socklen_t len);
	// family AF_INET for v4-mapped addresses, AF_INET6 otherwise
	socklen_t to_sockaddr(sockaddr_storage &out) const;
	int family() const { return ip.is_v4() ? AF_INET : AF_INET6; }
	std::string to_string() const;

	auto operator<=>(const SocketAddress &) const = default;
};

// Where a local service listens: "unix:/run/cordon/metrics.sock", "127.0.0.1:9464" or "[::1]:9464".
struct ListenEndpoint {
	std::string unix_path; // set for a unix socket (absolute)
	SocketAddress inet;    // otherwise: an address and a port other than 0

	static Result<ListenEndpoint> parse(std::string_view text);
	bool is_unix() const { return !unix_path.empty(); }
	std::string to_string() const;
};

// A prefix in v4-mapped space: "10.0.0.0/8" becomes ::ffff:10.0.0.0/104.
struct Cidr {
	IpAddress base;
	unsigned prefix_len = 128;

	static Result<Cidr> parse(std::string_view text);
	bool contains(const IpAddress &ip) const;
	std::string to_string() const;
};

} // namespace cordon
