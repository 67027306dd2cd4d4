// The BPF programs' decision logic, compiled for the host from the same header.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include "cordon_decide.h"

namespace {

constexpr __u32 kMark = 0xc0d0;

cordon_connect_facts tcp_to_target(__u32 scope = CORDON_SCOPE_ENFORCE)
{
	cordon_connect_facts f{};
	f.port_flags = CORDON_PORT_TCP_CAPTURE | CORDON_PORT_UDP_REFUSE;
	f.scope = scope;
	f.sock_type = CORDON_SOCK_STREAM;
	f.is_target = 1;
	f.same_netns = 1;
	return f;
}

TEST(Decide, EnforcedTcpToTargetIsRedirected)
{
	auto f = tcp_to_target();
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REDIRECT);
	EXPECT_EQ(d.counter, CORDON_CTR_REDIRECTED);
}

TEST(Decide, NonTargetPassesUncounted)
{
	auto f = tcp_to_target();
	f.is_target = 0;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, -1);
}

// Strict mode (capture.mode: all-tls): every destination on a captured port, decided by SNI later.
TEST(Decide, StrictModeRedirectsEveryDestinationOnACapturedPort)
{
	auto f = tcp_to_target();
	f.is_target = 0;
	f.port_flags |= CORDON_PORT_ALL_DESTINATIONS;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REDIRECT);
	EXPECT_EQ(d.counter, CORDON_CTR_REDIRECTED);
	// ... and refuses UDP on a QUIC port to any address, so clients fall back to TCP.
	f.sock_type = CORDON_SOCK_DGRAM;
	d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REFUSE);
	// But not on ports it does not capture, and never for cordond's own sockets or exempt cgroups.
	f.sock_type = CORDON_SOCK_STREAM;
	f.port_flags = CORDON_PORT_ALL_DESTINATIONS | CORDON_PORT_UDP_REFUSE;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	f.port_flags = CORDON_PORT_TCP_CAPTURE | CORDON_PORT_ALL_DESTINATIONS;
	f.scope = CORDON_SCOPE_EXEMPT;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	f.scope = CORDON_SCOPE_ENFORCE;
	f.in_cordond_cgroup = 1;
	f.sk_mark = kMark;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	f.in_cordond_cgroup = 0;
	f.scope = CORDON_SCOPE_NONE;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
}

// Loopback, link-local (the metadata service): strict capture leaves the job's own connection.
TEST(Decide, StrictExemptRangesPassUnlessATargetLiesThere)
{
	auto f = tcp_to_target();
	f.is_target = 0;
	f.strict_exempt = 1;
	f.port_flags |= CORDON_PORT_ALL_DESTINATIONS;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	f.sock_type = CORDON_SOCK_DGRAM;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	// A target inside an exempt range is a target (the trie's longest match says so).
	f.sock_type = CORDON_SOCK_STREAM;
	f.is_target = 1;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_REDIRECT);
}

TEST(Decide, UncapturedPortPassesUncounted)
{
	auto f = tcp_to_target();
	f.port_flags = CORDON_PORT_UDP_REFUSE; // e.g. 443 listed only as a QUIC port
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, -1);
}

TEST(Decide, CordondUpstreamSocketIsExemptByMark)
{
	auto f = tcp_to_target();
	f.sk_mark = kMark;
	f.in_cordond_cgroup = 1;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, CORDON_CTR_EXEMPT);
}

TEST(Decide, TheMarkAloneFromAJobIsNotExempt)
{
	// CAP_NET_RAW suffices for SO_MARK since Linux 5.17, and containers often keep it.
	auto f = tcp_to_target();
	f.sk_mark = kMark;
	f.in_cordond_cgroup = 0;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_REDIRECT);
}

TEST(Decide, MarkFromAnotherNetnsIsNotTrusted)
{
	// Root inside a container's own user+net namespace can set SO_MARK there.
	auto f = tcp_to_target();
	f.sk_mark = kMark;
	f.in_cordond_cgroup = 1;
	f.same_netns = 0;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REFUSE);
	EXPECT_EQ(d.counter, CORDON_CTR_REFUSED_NETNS);
}

TEST(Decide, WrongMarkIsNotExempt)
{
	auto f = tcp_to_target();
	f.sk_mark = kMark + 1;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_REDIRECT);
}

TEST(Decide, ZeroMarkNeverExempts)
{
	// An unmarked socket must not be exempt even if the configured mark were 0.
	auto f = tcp_to_target();
	f.sk_mark = 0;
	EXPECT_EQ(cordon_decide_connect(&f, 0).verdict, CORDON_VERDICT_REDIRECT);
}

TEST(Decide, ExemptCgroupPasses)
{
	auto f = tcp_to_target(CORDON_SCOPE_EXEMPT);
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, CORDON_CTR_EXEMPT);
}

TEST(Decide, UnenforcedCgroupPassesCounted)
{
	auto f = tcp_to_target(CORDON_SCOPE_NONE);
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, CORDON_CTR_UNENFORCED);
}

TEST(Decide, ForeignNetnsIsRefused)
{
	auto f = tcp_to_target();
	f.same_netns = 0;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REFUSE);
	EXPECT_EQ(d.counter, CORDON_CTR_REFUSED_NETNS);
}

TEST(Decide, ForeignNetnsGoesToTheHostListenerWhenThereIsOne)
{
	// A container (veth + NAT) reaches cordond's host address through its default route.
	auto f = tcp_to_target();
	f.same_netns = 0;
	f.netns_listener = 1;
	f.ipv4 = 1;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REDIRECT_NETNS);
	EXPECT_EQ(d.counter, CORDON_CTR_REDIRECTED_NETNS);
	// Strict capture too: any address on a captured port.
	f.is_target = 0;
	f.port_flags |= CORDON_PORT_ALL_DESTINATIONS;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_REDIRECT_NETNS);
	// The same namespace keeps the loopback listener.
	f.same_netns = 1;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_REDIRECT);
}

TEST(Decide, ForeignNetnsIpv6OrUdpIsStillRefused)
{
	auto f = tcp_to_target();
	f.same_netns = 0;
	f.netns_listener = 1;
	f.ipv4 = 0; // the host listener is IPv4: an IPv6 destination has no way there
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REFUSE);
	EXPECT_EQ(d.counter, CORDON_CTR_REFUSED_NETNS);
	f.ipv4 = 1;
	f.sock_type = CORDON_SOCK_DGRAM; // QUIC from a container
	d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REFUSE);
	EXPECT_EQ(d.counter, CORDON_CTR_REFUSED_NETNS);
	// A mark set inside the container never exempts it.
	f.sock_type = CORDON_SOCK_STREAM;
	f.sk_mark = kMark;
	f.in_cordond_cgroup = 1;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_REDIRECT_NETNS);
}

TEST(Decide, UdpToQuicPortOfTargetIsRefused)
{
	auto f = tcp_to_target();
	f.sock_type = CORDON_SOCK_DGRAM;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_REFUSE);
	EXPECT_EQ(d.counter, CORDON_CTR_REFUSED_QUIC);
}

TEST(Decide, UdpToTcpOnlyPortPasses)
{
	auto f = tcp_to_target();
	f.sock_type = CORDON_SOCK_DGRAM;
	f.port_flags = CORDON_PORT_TCP_CAPTURE; // port 80: TCP captured, UDP not refused
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
}

TEST(Decide, UdpFromUnenforcedCgroupPasses)
{
	auto f = tcp_to_target(CORDON_SCOPE_NONE);
	f.sock_type = CORDON_SOCK_DGRAM;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
}

TEST(Decide, OtherSocketTypesPass)
{
	auto f = tcp_to_target();
	f.sock_type = 3; // SOCK_RAW
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
}

cordon_connect_facts dns_query(__u32 sock_type = CORDON_SOCK_DGRAM, __u32 scope = CORDON_SCOPE_ENFORCE)
{
	cordon_connect_facts f{};
	f.port_flags = CORDON_PORT_DNS;
	f.scope = scope;
	f.sock_type = sock_type;
	f.is_target = 0; // DNS goes to the proxy whoever the resolver is
	f.same_netns = 1;
	return f;
}

TEST(DecideDns, EnforcedQueriesGoToTheProxyOverUdpAndTcp)
{
	for (__u32 type : {CORDON_SOCK_DGRAM, CORDON_SOCK_STREAM}) {
		auto f = dns_query(type);
		auto d = cordon_decide_connect(&f, kMark);
		EXPECT_EQ(d.verdict, CORDON_VERDICT_DNS);
		EXPECT_EQ(d.counter, CORDON_CTR_DNS_REDIRECTED);
		EXPECT_TRUE(cordon_port_relevant(f.port_flags, type));
	}
}

TEST(DecideDns, ATargetResolverIsStillDns)
{
	// Port 53 to a captured address: the DNS decision wins, nothing is refused or relayed as TLS.
	auto f = dns_query();
	f.port_flags |= CORDON_PORT_TCP_CAPTURE | CORDON_PORT_UDP_REFUSE;
	f.is_target = 1;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_DNS);
}

TEST(DecideDns, CordondsOwnQueriesAreExempt)
{
	auto f = dns_query();
	f.sk_mark = kMark;
	f.in_cordond_cgroup = 1;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, CORDON_CTR_EXEMPT);
	// The mark alone, from a job, is not enough.
	f.in_cordond_cgroup = 0;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_DNS);
}

TEST(DecideDns, ExemptAndUnenforcedCgroupsPassUncounted)
{
	auto exempt = dns_query(CORDON_SOCK_DGRAM, CORDON_SCOPE_EXEMPT);
	EXPECT_EQ(cordon_decide_connect(&exempt, kMark).verdict, CORDON_VERDICT_PASS);
	auto unenforced = dns_query(CORDON_SOCK_DGRAM, CORDON_SCOPE_NONE);
	auto d = cordon_decide_connect(&unenforced, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, -1); // ordinary DNS of the rest of the host is not worth a counter
}

TEST(DecideDns, AnotherNamespacesDnsPasses)
{
	// 127.0.0.1 there is not cordond, and refusing would break every container's resolver.
	auto f = dns_query();
	f.same_netns = 0;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_PASS);
	EXPECT_EQ(d.counter, -1);
}

TEST(DecideDns, AnotherNamespacesDnsGoesToTheHostProxyUnlessItIsItsOwn)
{
	auto f = dns_query();
	f.same_netns = 0;
	f.netns_listener = 1;
	f.netns_dns = 1;
	f.ipv4 = 1;
	auto d = cordon_decide_connect(&f, kMark);
	EXPECT_EQ(d.verdict, CORDON_VERDICT_DNS_NETNS);
	EXPECT_EQ(d.counter, CORDON_CTR_DNS_REDIRECTED);
	// Its own loopback resolver (docker's 127.0.0.11) knows the container names: left alone.
	f.dst_loopback = 1;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	// IPv6 has no way to the host address; without the host proxy nothing changes either.
	f.dst_loopback = 0;
	f.ipv4 = 0;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	f.ipv4 = 1;
	f.netns_dns = 0;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	// Unenforced containers' DNS is theirs.
	f.netns_dns = 1;
	f.scope = CORDON_SCOPE_NONE;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
}

TEST(DecideAddress, Loopback)
{
	__u8 a[16];
	cordon_addr_from_ip4(a, htonl(0x7f00000b)); // 127.0.0.11
	EXPECT_TRUE(cordon_addr_is_loopback(a));
	cordon_addr_from_ip4(a, htonl(0x0a000001));
	EXPECT_FALSE(cordon_addr_is_loopback(a));
	__u8 v6[16] = {};
	v6[15] = 1;
	EXPECT_TRUE(cordon_addr_is_loopback(v6));
	v6[0] = 0xfe;
	EXPECT_FALSE(cordon_addr_is_loopback(v6));
}

TEST(DecideDns, WithoutTheDnsFlagPort53IsOrdinary)
{
	auto f = dns_query();
	f.port_flags = 0;
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
	EXPECT_FALSE(cordon_port_relevant(0, CORDON_SOCK_DGRAM));
}

TEST(DecideDns, RawSocketsPass)
{
	auto f = dns_query(3);
	EXPECT_FALSE(cordon_port_relevant(f.port_flags, 3));
	EXPECT_EQ(cordon_decide_connect(&f, kMark).verdict, CORDON_VERDICT_PASS);
}

TEST(DecideDns, OnlyTheProxysAnswersOnARedirectedSocketAreRewritten)
{
	__u8 listener[16], other[16];
	cordon_addr_from_ip4(listener, inet_addr("127.0.0.1"));
	cordon_addr_from_ip4(other, inet_addr("127.0.0.2"));
	EXPECT_TRUE(cordon_dns_reply_rewrite(CORDON_SK_DNS, listener, 15353, listener, 15353));
	EXPECT_TRUE(cordon_dns_reply_rewrite(CORDON_SK_DNS | CORDON_SK_REDIRECTED, listener, 15353, listener, 15353));
	// A socket whose DNS never went to the proxy: untouched.
	EXPECT_FALSE(cordon_dns_reply_rewrite(CORDON_SK_REDIRECTED, listener, 15353, listener, 15353));
	EXPECT_FALSE(cordon_dns_reply_rewrite(0, listener, 15353, listener, 15353));
	// Someone else's datagram on the same socket: another address or port.
	EXPECT_FALSE(cordon_dns_reply_rewrite(CORDON_SK_DNS, other, 15353, listener, 15353));
	EXPECT_FALSE(cordon_dns_reply_rewrite(CORDON_SK_DNS, listener, 15354, listener, 15353));
	// No proxy configured.
	EXPECT_FALSE(cordon_dns_reply_rewrite(CORDON_SK_DNS, listener, 0, listener, 0));
}

TEST(Decide, DeeperScopeOverridesAncestor)
{
	EXPECT_EQ(cordon_scope_merge(CORDON_SCOPE_ENFORCE, CORDON_SCOPE_EXEMPT), (__u32)CORDON_SCOPE_EXEMPT);
	EXPECT_EQ(cordon_scope_merge(CORDON_SCOPE_EXEMPT, CORDON_SCOPE_ENFORCE), (__u32)CORDON_SCOPE_ENFORCE);
	EXPECT_EQ(cordon_scope_merge(CORDON_SCOPE_ENFORCE, CORDON_SCOPE_NONE), (__u32)CORDON_SCOPE_ENFORCE);
}

TEST(Decide, AddressHelpers)
{
	__u8 addr[16];
	cordon_addr_from_ip4(addr, inet_addr("10.1.2.3"));
	EXPECT_TRUE(cordon_addr_is_v4_mapped(addr));
	EXPECT_EQ(cordon_addr_ip4(addr), inet_addr("10.1.2.3"));

	in6_addr v6{};
	inet_pton(AF_INET6, "2001:db8::1", &v6);
	__u32 words[4];
	memcpy(words, v6.s6_addr, 16);
	cordon_addr_from_ip6(addr, words);
	EXPECT_FALSE(cordon_addr_is_v4_mapped(addr));
	EXPECT_EQ(memcmp(addr, v6.s6_addr, 16), 0);

	inet_pton(AF_INET6, "::ffff:127.0.0.1", &v6);
	memcpy(words, v6.s6_addr, 16);
	cordon_addr_from_ip6(addr, words);
	EXPECT_TRUE(cordon_addr_is_v4_mapped(addr));
	EXPECT_EQ(cordon_addr_ip4(addr), inet_addr("127.0.0.1"));
}

TEST(SharedLayout, StructsHaveNoHiddenPadding)
{
	// Both compilers must agree; explicit reserved fields keep the sizes multiples of 8.
	EXPECT_EQ(sizeof(cordon_tuple), 40u);
	EXPECT_EQ(sizeof(cordon_origin), 88u);
	EXPECT_EQ(sizeof(cordon_target_key), 20u);
	EXPECT_EQ(sizeof(cordon_sk_state), 136u);
}

} // namespace
