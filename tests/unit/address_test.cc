#include <gtest/gtest.h>

#include "common/address.h"
#include "common/local_address.h"

using namespace cordon;

TEST(IpAddress, ParsesAndFormatsBothFamilies)
{
	auto v4 = IpAddress::parse("192.0.2.7");
	ASSERT_TRUE(v4);
	EXPECT_TRUE(v4->is_v4());
	EXPECT_EQ(v4->to_string(), "192.0.2.7");
	auto v6 = IpAddress::parse("2001:DB8::1");
	ASSERT_TRUE(v6);
	EXPECT_FALSE(v6->is_v4());
	EXPECT_EQ(v6->to_string(), "2001:db8::1");
	// A v4-mapped IPv6 literal is the same address as the IPv4 one.
	auto mapped = IpAddress::parse("::ffff:192.0.2.7");
	ASSERT_TRUE(mapped);
	EXPECT_EQ(*mapped, *v4);
	EXPECT_FALSE(IpAddress::parse("192.0.2.256"));
	EXPECT_FALSE(IpAddress::parse("api2.cursor.sh"));
}

TEST(IpAddress, Loopback)
{
	EXPECT_TRUE(IpAddress::parse("127.3.4.5")->is_loopback());
	EXPECT_TRUE(IpAddress::parse("::1")->is_loopback());
	EXPECT_FALSE(IpAddress::parse("10.0.0.1")->is_loopback());
}

TEST(SocketAddress, ParseFormatAndSockaddrRoundTrip)
{
	for (const char *text : {"127.0.0.1:443", "[::1]:15443", "[2001:db8::5]:80"}) {
		auto a = SocketAddress::parse(text);
		ASSERT_TRUE(a) << text;
		EXPECT_EQ(a->to_string(), text);
		sockaddr_storage ss;
		socklen_t len = a->to_sockaddr(ss);
		auto back = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&ss), len);
		ASSERT_TRUE(back);
		EXPECT_EQ(*back, *a);
	}
	EXPECT_EQ(SocketAddress::parse("127.0.0.1:443")->family(), AF_INET);
	EXPECT_EQ(SocketAddress::parse("[::1]:443")->family(), AF_INET6);
	EXPECT_FALSE(SocketAddress::parse("::1:443"));
	EXPECT_FALSE(SocketAddress::parse("127.0.0.1:65536"));
	EXPECT_FALSE(SocketAddress::parse("127.0.0.1:"));
	EXPECT_FALSE(SocketAddress::parse("[::1]443"));
}

TEST(Cidr, Ipv4PrefixesLiveInMappedSpace)
{
	auto c = Cidr::parse("10.1.0.0/16");
	ASSERT_TRUE(c);
	EXPECT_EQ(c->prefix_len, 96u + 16u);
	EXPECT_EQ(c->to_string(), "10.1.0.0/16");
	EXPECT_TRUE(c->contains(*IpAddress::parse("10.1.200.3")));
	EXPECT_FALSE(c->contains(*IpAddress::parse("10.2.0.1")));
	EXPECT_FALSE(c->contains(*IpAddress::parse("2001:db8::1")));
	auto host = Cidr::parse("127.0.0.9");
	ASSERT_TRUE(host);
	EXPECT_EQ(host->prefix_len, 128u);
}

TEST(Cidr, Ipv6)
{
	auto c = Cidr::parse("2001:db8::/32");
	ASSERT_TRUE(c);
	EXPECT_EQ(c->prefix_len, 32u);
	EXPECT_TRUE(c->contains(*IpAddress::parse("2001:db8:ffff::1")));
	EXPECT_FALSE(c->contains(*IpAddress::parse("2001:db9::1")));
}

TEST(Cidr, RejectsTyposInsteadOfGuessing)
{
	EXPECT_FALSE(Cidr::parse("10.1.2.3/8"));  // host bits set
	EXPECT_FALSE(Cidr::parse("10.0.0.0/33")); // too long for IPv4
	EXPECT_FALSE(Cidr::parse("10.0.0.0/"));
	EXPECT_FALSE(Cidr::parse("10.0.0.0/x"));
	EXPECT_FALSE(Cidr::parse("::/129"));
}

TEST(LocalAddressLabel, StablePerInstanceAndFitsAnInterfaceLabel)
{
	const std::string label = cordon::local_address_label("/sys/fs/bpf/cordon");
	EXPECT_EQ(label, cordon::local_address_label("/sys/fs/bpf/cordon"));
	EXPECT_NE(label, cordon::local_address_label("/sys/fs/bpf/cordon-test"));
	EXPECT_EQ(label.rfind("lo:cdn", 0), 0u); // a label on lo must start with "lo"
	EXPECT_LT(label.size(), 16u);            // IFNAMSIZ, with its terminating NUL
}

TEST(IpAddress, InternalAddressesAreTheOnesOffThePublicInternet)
{
	for (const char *internal :
	     {"10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "100.127.255.255", "127.0.0.1",
	      "169.254.169.254", "0.1.2.3", "192.0.0.9", "198.19.1.1", "224.0.0.1", "240.0.0.1", "::1", "::", "fe80::1",
	      "fd00::1", "fc00::1"})
		EXPECT_TRUE(IpAddress::parse(internal)->is_internal()) << internal;
	for (const char *global :
	     {"8.8.8.8", "172.32.0.1", "172.15.255.255", "100.128.0.1", "100.63.255.255", "192.169.0.1", "203.0.113.10",
	      "198.20.0.1", "192.0.1.1", "2001:db8::1", "2606:4700::1"})
		EXPECT_FALSE(IpAddress::parse(global)->is_internal()) << global;
}
