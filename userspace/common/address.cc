#include "common/address.h"

#include <arpa/inet.h>
#include <sys/un.h>

#include <charconv>
#include <cstring>

namespace cordon {

IpAddress IpAddress::from_v4(uint32_t ip_be)
{
	IpAddress a;
	a.bytes[10] = 0xff;
	a.bytes[11] = 0xff;
	std::memcpy(&a.bytes[12], &ip_be, 4);
	return a;
}

IpAddress IpAddress::from_v6(const in6_addr &ip)
{
	IpAddress a;
	std::memcpy(a.bytes.data(), ip.s6_addr, 16);
	return a;
}

Result<IpAddress> IpAddress::parse(std::string_view text)
{
	std::string s(text);
	in_addr v4{};
	if (inet_pton(AF_INET, s.c_str(), &v4) == 1)
		return from_v4(v4.s_addr);
	in6_addr v6{};
	if (inet_pton(AF_INET6, s.c_str(), &v6) == 1)
		return from_v6(v6);
	return plain_error("'" + s + "' is not an IPv4 or IPv6 address");
}

bool IpAddress::is_v4() const
{
	for (int i = 0; i < 10; i++)
		if (bytes[i] != 0)
			return false;
	return bytes[10] == 0xff && bytes[11] == 0xff;
}

uint32_t IpAddress::v4_be() const
{
	uint32_t ip;
	std::memcpy(&ip, &bytes[12], 4);
	return ip;
}

in6_addr IpAddress::v6() const
{
	in6_addr out{};
	std::memcpy(out.s6_addr, bytes.data(), 16);
	return out;
}

bool IpAddress::is_loopback() const
{
	if (is_v4())
		return bytes[12] == 127;
	in6_addr a = v6();
	return IN6_IS_ADDR_LOOPBACK(&a);
}

bool IpAddress::is_internal() const
{
	if (is_v4()) {
		const uint8_t a = bytes[12], b = bytes[13];
		const uint8_t c = bytes[14];
		return a == 0 || a == 10 || a == 127 || (a == 100 && (b & 0xc0) == 64) || (a == 169 && b == 254) ||
		       (a == 172 && (b & 0xf0) == 16) || (a == 192 && b == 168) || (a == 192 && b == 0 && c == 0) ||
		       (a == 198 && (b & 0xfe) == 18) || a >= 224; // IETF protocol, benchmarking, multicast, reserved
	}
	in6_addr addr = v6();
	return IN6_IS_ADDR_LOOPBACK(&addr) || IN6_IS_ADDR_UNSPECIFIED(&addr) || IN6_IS_ADDR_LINKLOCAL(&addr) ||
	       (bytes[0] & 0xfe) == 0xfc;
}

std::string IpAddress::to_string() const
{
	char buf[INET6_ADDRSTRLEN] = {};
	if (is_v4()) {
		in_addr a{v4_be()};
		inet_ntop(AF_INET, &a, buf, sizeof(buf));
	} else {
		in6_addr a = v6();
		inet_ntop(AF_INET6, &a, buf, sizeof(buf));
	}
	return buf;
}

namespace {
Result<uint16_t> parse_port(std::string_view text, std::string_view whole)
{
	unsigned value = 0;
	auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
	if (ec != std::errc() || end != text.data() + text.size() || text.empty() || value > 65535)
		return plain_error("bad port in '" + std::string(whole) + "'");
	return static_cast<uint16_t>(value);
}
} // namespace

Result<SocketAddress> SocketAddress::parse(std::string_view text)
{
	std::string_view host, port;
	if (!text.empty() && text.front() == '[') {
		auto close = text.find(']');
		if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
			return plain_error("expected [IPv6]:port, got '" + std::string(text) + "'");
		host = text.substr(1, close - 1);
		port = text.substr(close + 2);
	} else {
		auto colon = text.rfind(':');
		if (colon == std::string_view::npos || text.find(':') != colon)
			return plain_error("expected IPv4:port or [IPv6]:port, got '" + std::string(text) + "'");
		host = text.substr(0, colon);
		port = text.substr(colon + 1);
	}
	auto ip = IpAddress::parse(host);
	if (!ip)
		return ip.error();
	auto p = parse_port(port, text);
	if (!p)
		return p.error();
	return SocketAddress{*ip, *p};
}

Result<ListenEndpoint> ListenEndpoint::parse(std::string_view text)
{
	constexpr std::string_view kUnix = "unix:";
	ListenEndpoint e;
	if (text.substr(0, kUnix.size()) == kUnix) {
		auto path = text.substr(kUnix.size());
		if (path.empty() || path.front() != '/')
			return plain_error("'" + std::string(text) + "': the socket path must be absolute");
		// sockaddr_un's sun_path, with its terminating NUL.
		if (path.size() >= sizeof(sockaddr_un::sun_path))
			return plain_error("'" + std::string(text) + "': the socket path is too long");
		if (path.find('\0') != std::string_view::npos)
			return plain_error("'" + std::string(text) + "': the socket path holds a NUL");
		e.unix_path = std::string(path);
		return e;
	}
	auto addr = SocketAddress::parse(text);
	if (!addr)
		return plain_error("expected unix:/PATH, IPv4:port or [IPv6]:port, got '" + std::string(text) + "'");
	if (addr->port == 0)
		return plain_error("'" + std::string(text) + "': port 0 is not a fixed port");
	e.inet = *addr;
	return e;
}

std::string ListenEndpoint::to_string() const
{
	return is_unix() ? "unix:" + unix_path : inet.to_string();
}

Result<SocketAddress> SocketAddress::from_sockaddr(const sockaddr *sa, socklen_t len)
{
	if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
		auto *in = reinterpret_cast<const sockaddr_in *>(sa);
		return SocketAddress{IpAddress::from_v4(in->sin_addr.s_addr), ntohs(in->sin_port)};
	}
	if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
		auto *in6 = reinterpret_cast<const sockaddr_in6 *>(sa);
		return SocketAddress{IpAddress::from_v6(in6->sin6_addr), ntohs(in6->sin6_port)};
	}
	return plain_error("unsupported socket address family " + std::to_string(sa->sa_family));
}

socklen_t SocketAddress::to_sockaddr(sockaddr_storage &out) const
{
	std::memset(&out, 0, sizeof(out));
	if (ip.is_v4()) {
		auto *in = reinterpret_cast<sockaddr_in *>(&out);
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		in->sin_addr.s_addr = ip.v4_be();
		return sizeof(sockaddr_in);
	}
	auto *in6 = reinterpret_cast<sockaddr_in6 *>(&out);
	in6->sin6_family = AF_INET6;
	in6->sin6_port = htons(port);
	in6->sin6_addr = ip.v6();
	return sizeof(sockaddr_in6);
}

std::string SocketAddress::to_string() const
{
	if (ip.is_v4())
		return ip.to_string() + ":" + std::to_string(port);
	return "[" + ip.to_string() + "]:" + std::to_string(port);
}

Result<Cidr> Cidr::parse(std::string_view text)
{
	auto slash = text.find('/');
	auto ip = IpAddress::parse(text.substr(0, slash));
	if (!ip)
		return ip.error();
	const unsigned family_bits = ip->is_v4() ? 32 : 128;
	unsigned len = family_bits;
	if (slash != std::string_view::npos) {
		auto digits = text.substr(slash + 1);
		auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
		if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty() || len > family_bits)
			return plain_error("bad prefix length in '" + std::string(text) + "'");
	}
	Cidr c{*ip, ip->is_v4() ? 96 + len : len};
	// Host bits set ("10.1.2.3/8") are almost always a typo; refuse instead of guessing.
	for (unsigned bit = c.prefix_len; bit < 128; bit++)
		if (c.base.bytes[bit / 8] & (0x80 >> (bit % 8)))
			return plain_error("'" + std::string(text) + "' has host bits set");
	return c;
}

bool Cidr::contains(const IpAddress &ip) const
{
	for (unsigned bit = 0; bit < prefix_len; bit++) {
		const uint8_t mask = 0x80 >> (bit % 8);
		if ((ip.bytes[bit / 8] & mask) != (base.bytes[bit / 8] & mask))
			return false;
	}
	return true;
}

std::string Cidr::to_string() const
{
	if (base.is_v4())
		return base.to_string() + "/" + std::to_string(prefix_len - 96);
	return base.to_string() + "/" + std::to_string(prefix_len);
}

} // namespace cordon
