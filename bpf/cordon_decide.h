/* Decision logic of the cgroup socket programs, as pure functions.
 *
 * The BPF programs gather facts (map lookups, socket fields) and call these; the unit tests
 * compile this same header for the host and check every branch, since BPF_PROG_TEST_RUN does
 * not run sock_addr programs. No helpers, no maps, no globals in here. */
#ifndef CORDON_DECIDE_H
#define CORDON_DECIDE_H

#include "cordon/bpf_shared.h"

#ifdef __bpf__
#define CORDON_INLINE static __always_inline
#else
#define CORDON_INLINE static inline
#endif

#define CORDON_SOCK_STREAM 1
#define CORDON_SOCK_DGRAM 2

/* What a connect()/sendmsg() hook knows when it has to decide. */
struct cordon_connect_facts {
	__u32 port_flags;       /* capture_ports[destination port] */
	__u32 scope;            /* enum cordon_scope of the deepest listed ancestor cgroup */
	__u32 sk_mark;          /* SO_MARK of the calling socket */
	__u32 sock_type;        /* SOCK_STREAM or SOCK_DGRAM */
	__u8 is_target;         /* destination is in the targets trie */
	__u8 same_netns;        /* the socket lives in cordond's network namespace */
	__u8 in_cordond_cgroup; /* the caller is cordond itself (its own cgroup) */
	__u8 strict_exempt;     /* in a strict-capture exempt range (and not a target) */
	__u8 netns_listener;    /* cordond listens on a host address for other namespaces */
	__u8 ipv4;              /* the destination is IPv4 (or v4-mapped) */
	__u8 netns_dns;         /* cordond's DNS proxy listens on that host address too */
	__u8 dst_loopback;      /* the destination is a loopback address (127/8, ::1) */
};

enum cordon_verdict {
	CORDON_VERDICT_PASS = 0,     /* let the call proceed untouched */
	CORDON_VERDICT_REDIRECT = 1, /* rewrite the destination to cordond's listener */
	CORDON_VERDICT_REFUSE = 2,   /* fail the call with EPERM */
	CORDON_VERDICT_DNS = 3,      /* rewrite the destination to cordond's DNS proxy */
	/* From another network namespace (a container): rewrite to cordond's host address, which
	 * the namespace reaches through its default route (veth + NAT). */
	CORDON_VERDICT_REDIRECT_NETNS = 4,
	/* DNS from another network namespace: to cordond's DNS proxy on that host address. */
	CORDON_VERDICT_DNS_NETNS = 5,
};

struct cordon_decision {
	enum cordon_verdict verdict;
	int counter; /* enum cordon_counter to bump, or -1 */
};

/* Cheap first filter: only ports that are captured (TCP) or refused (UDP) need any more work.
 * This is all a connect() to a non-target port pays. */
CORDON_INLINE int cordon_port_relevant(__u32 port_flags, __u32 sock_type)
{
	if ((port_flags & CORDON_PORT_DNS) && (sock_type == CORDON_SOCK_STREAM || sock_type == CORDON_SOCK_DGRAM))
		return 1;
	if (sock_type == CORDON_SOCK_STREAM)
		return (port_flags & CORDON_PORT_TCP_CAPTURE) != 0;
	if (sock_type == CORDON_SOCK_DGRAM)
		return (port_flags & CORDON_PORT_UDP_REFUSE) != 0;
	return 0;
}

/* A deeper cgroup listed in the scope map overrides its ancestors. */
CORDON_INLINE __u32 cordon_scope_merge(__u32 inherited, __u32 at_this_level)
{
	return at_this_level != CORDON_SCOPE_NONE ? at_this_level : inherited;
}

/* cordond's own upstream sockets: marked, in cordond's namespace, from cordond's cgroup. The
 * mark alone is not enough: since Linux 5.17 CAP_NET_RAW may set SO_MARK, and container
 * runtimes hand that out. Explicitly exempt cgroups pass too. */
CORDON_INLINE int cordon_exempt(const struct cordon_connect_facts *f, __u32 upstream_mark)
{
	return (f->same_netns && f->in_cordond_cgroup && upstream_mark != 0 && f->sk_mark == upstream_mark) ||
	       f->scope == CORDON_SCOPE_EXEMPT;
}

/* DNS (port 53 with CORDON_PORT_DNS, any destination): an enforced workload's query goes to
 * cordond's proxy, which learns the capture hosts' addresses before the answer is released.
 * From another network namespace (a container) it goes to the proxy on cordond's host address,
 * unless it asks a resolver on its own loopback (docker's embedded 127.0.0.11 knows the
 * container names; its own upstream queries come through here again) or has no IPv4 way to
 * cordond: then it passes, since refusing would break the container's name resolution.
 * cordond's own queries to its upstream are exempt like its other upstream sockets. Nothing here
 * is counted unless redirected: DNS from unenforced cgroups is ordinary traffic. */
CORDON_INLINE struct cordon_decision cordon_decide_dns(const struct cordon_connect_facts *f, __u32 upstream_mark)
{
	struct cordon_decision d = {CORDON_VERDICT_PASS, -1};

	if (f->sock_type != CORDON_SOCK_STREAM && f->sock_type != CORDON_SOCK_DGRAM)
		return d;
	if (cordon_exempt(f, upstream_mark)) {
		d.counter = CORDON_CTR_EXEMPT;
		return d;
	}
	if (f->scope != CORDON_SCOPE_ENFORCE)
		return d;
	if (!f->same_netns) {
		if (!f->netns_dns || !f->ipv4 || f->dst_loopback)
			return d;
		d.verdict = CORDON_VERDICT_DNS_NETNS;
		d.counter = CORDON_CTR_DNS_REDIRECTED;
		return d;
	}
	d.verdict = CORDON_VERDICT_DNS;
	d.counter = CORDON_CTR_DNS_REDIRECTED;
	return d;
}

CORDON_INLINE struct cordon_decision cordon_decide_connect(const struct cordon_connect_facts *f, __u32 upstream_mark)
{
	struct cordon_decision d = {CORDON_VERDICT_PASS, -1};

	if (f->port_flags & CORDON_PORT_DNS)
		return cordon_decide_dns(f, upstream_mark);
	if (!cordon_port_relevant(f->port_flags, f->sock_type) ||
	    !(f->is_target || ((f->port_flags & CORDON_PORT_ALL_DESTINATIONS) && !f->strict_exempt)))
		return d;
	if (cordon_exempt(f, upstream_mark)) {
		d.counter = CORDON_CTR_EXEMPT;
		return d;
	}
	if (f->scope != CORDON_SCOPE_ENFORCE) {
		d.counter = CORDON_CTR_UNENFORCED;
		return d;
	}
	if (f->sock_type == CORDON_SOCK_DGRAM) {
		d.verdict = CORDON_VERDICT_REFUSE;
		d.counter = f->same_netns ? CORDON_CTR_REFUSED_QUIC : CORDON_CTR_REFUSED_NETNS;
		return d;
	}
	/* 127.0.0.1 in another namespace is not cordond's listener. Its host address is, for IPv4;
	 * without one (or for IPv6, which containers rarely route to the host) refuse, never leak. */
	if (!f->same_netns) {
		if (f->netns_listener && f->ipv4) {
			d.verdict = CORDON_VERDICT_REDIRECT_NETNS;
			d.counter = CORDON_CTR_REDIRECTED_NETNS;
		} else {
			d.verdict = CORDON_VERDICT_REFUSE;
			d.counter = CORDON_CTR_REFUSED_NETNS;
		}
		return d;
	}
	d.verdict = CORDON_VERDICT_REDIRECT;
	d.counter = CORDON_CTR_REDIRECTED;
	return d;
}

/* ip4 in network byte order -> ::ffff:a.b.c.d */
CORDON_INLINE void cordon_addr_from_ip4(__u8 out[16], __u32 ip4_be)
{
	int i;

	for (i = 0; i < 10; i++)
		out[i] = 0;
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &ip4_be, 4);
}

/* ip6 as four __u32 words in network byte order (the layout of user_ip6 / local_ip6). */
CORDON_INLINE void cordon_addr_from_ip6(__u8 out[16], const __u32 ip6_be[4])
{
	__builtin_memcpy(out, ip6_be, 16);
}

CORDON_INLINE int cordon_addr_is_v4_mapped(const __u8 addr[16])
{
	int i;

	for (i = 0; i < 10; i++)
		if (addr[i] != 0)
			return 0;
	return addr[10] == 0xff && addr[11] == 0xff;
}

/* 127.0.0.0/8 (v4-mapped) or ::1 */
CORDON_INLINE int cordon_addr_is_loopback(const __u8 addr[16])
{
	int i;

	if (cordon_addr_is_v4_mapped(addr))
		return addr[12] == 127;
	for (i = 0; i < 15; i++)
		if (addr[i] != 0)
			return 0;
	return addr[15] == 1;
}

/* The IPv4 address (network order) inside a v4-mapped address. */
CORDON_INLINE __u32 cordon_addr_ip4(const __u8 addr[16])
{
	__u32 ip4;

	__builtin_memcpy(&ip4, &addr[12], 4);
	return ip4;
}

/* recvmsg: an answer from cordond's DNS proxy (source = the proxy's listener) on a socket whose
 * query the proxy took is shown as coming from the resolver the job asked. glibc and others
 * drop answers from any other source. */
CORDON_INLINE int cordon_dns_reply_rewrite(__u32 sk_flags, const __u8 source[16], __u16 source_port,
                                           const __u8 dns_listener[16], __u16 dns_port)
{
	int i;

	if (!(sk_flags & CORDON_SK_DNS) || dns_port == 0 || source_port != dns_port)
		return 0;
	for (i = 0; i < 16; i++)
		if (source[i] != dns_listener[i])
			return 0;
	return 1;
}

#endif /* CORDON_DECIDE_H */
