// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* cordon's kernel half: cgroup socket programs attached at the cgroup2 root.
 *
 *  connect4/6      TCP to a capture target from an enforced cgroup -> rewrite to cordond's
 *                  listener, remembering caller and original destination in socket storage;
 *                  UDP to a refused port (QUIC) -> EPERM.
 *  sendmsg4/6      the same refusal for unconnected UDP (sendto).
 *  sockops         at ACTIVE_ESTABLISHED, publish the origin under the connection's 4-tuple so
 *                  cordond can find it after accept(); at TCP_CLOSE, withdraw it.
 *  getpeername4/6  a redirected client sees the peer it asked for.
 *  DNS             with cordond's DNS proxy on, an enforced workload's UDP and TCP to port 53
 *                  (connect4/6 for TCP and connected UDP, sendmsg4/6 for sendto) goes to the
 *                  proxy; recvmsg4/6 show its answers as coming from the resolver the job asked.
 *  containers      from another network namespace the loopback listeners are out of reach:
 *                  TCP captures and DNS go to cordond's host address (netns_listen_ip4).
 *
 * Decisions live in cordon_decide.h (host-tested); this file only gathers facts. */
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "cordon/bpf_shared.h"
#include "cordon_decide.h"

#define AF_INET 2
#define AF_INET6 10
#define TCP_STATE_CLOSE 7

/* Set by cordond before load. Addresses and port in network byte order. */
const volatile __u32 listen_ip4 = 0;
const volatile __u32 listen_ip6[4] = {};
const volatile __u32 listen_port_be = 0;
const volatile __u32 upstream_mark = 0;
const volatile __u64 host_netns_cookie = 0;
const volatile __u64 cordond_cgroup_id = 0;
/* cordond's DNS proxy port (network order) on listen_ip4 / listen_ip6; 0: no DNS proxy. */
const volatile __u32 dns_port_be = 0;
/* While the proxy is not there: 0 refuses DNS (fail closed), 1 lets it go where it was sent. */
const volatile __u32 dns_pass_when_down = 0;
/* cordond's listener for jobs in other network namespaces: an IPv4 address local to the host
 * (not loopback, which is each namespace's own) and a privileged port, so that only root can
 * take it while cordond is down. 0: such jobs are refused. */
const volatile __u32 netns_listen_ip4 = 0;
const volatile __u32 netns_listen_port_be = 0;
/* cordond's DNS proxy on netns_listen_ip4 (privileged too); 0: other namespaces' DNS passes. */
const volatile __u32 netns_dns_port_be = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct cordon_target_key);
	__type(value, struct cordon_target_value);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CORDON_PORT_SPACE);
	__type(key, __u32);
	__type(value, __u32);
} capture_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} cgroup_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cordon_sk_state);
} origin_store SEC(".maps");

/* Not LRU on purpose: an LRU would evict origins of live connections under churn. Entries are
 * removed when cordond consumes them or when the client socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct cordon_tuple);
	__type(value, struct cordon_origin);
} origins SEC(".maps");

/* Tags cordond's listening sockets (written from userspace with the socket fd as key). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cordon_listener_tag);
} listener_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CORDON_CTR__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(int counter)
{
	__u32 key;
	__u64 *value;

	if (counter < 0)
		return;
	key = (__u32)counter;
	value = bpf_map_lookup_elem(&counters, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline __u32 port_flags(__u16 port)
{
	__u32 key = port;
	__u32 *flags = bpf_map_lookup_elem(&capture_ports, &key);

	return flags ? *flags : 0;
}

/* The sources of the most specific targets entry holding addr (0: none). */
static __always_inline __u32 target_sources(const __u8 addr[16])
{
	struct cordon_target_key key = {.prefixlen = 128};
	struct cordon_target_value *value;

	__builtin_memcpy(key.addr, addr, 16);
	value = bpf_map_lookup_elem(&targets, &key);
	return value ? value->sources : 0;
}

static __always_inline int is_target(const __u8 addr[16])
{
	return (target_sources(addr) & (CORDON_TARGET_RESOLVED | CORDON_TARGET_CIDR)) != 0;
}

/* The deepest ancestor (or self) listed in cgroup_scope decides. */
static __always_inline __u32 current_scope(void)
{
	__u32 scope = CORDON_SCOPE_NONE;
	int level;

	for (level = 0; level < CORDON_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		__u32 *listed;

		if (!id)
			break;
		listed = bpf_map_lookup_elem(&cgroup_scope, &id);
		if (listed)
			scope = cordon_scope_merge(scope, *listed);
	}
	return scope;
}

/* Facts and verdict for a connect/sendmsg to addr:port. Returns PASS early, before any work
 * beyond one array lookup, for ports that are neither captured nor refused. */
static __always_inline struct cordon_decision decide(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port)
{
	struct cordon_connect_facts facts = {};
	struct cordon_decision pass = {CORDON_VERDICT_PASS, -1};
	struct cordon_decision d;
	__u32 sources;

	facts.sock_type = ctx->type;
	facts.port_flags = port_flags(port);
	if (!cordon_port_relevant(facts.port_flags, facts.sock_type))
		return pass;
	if (!(facts.port_flags & CORDON_PORT_DNS)) {
		sources = target_sources(addr);
		facts.is_target = (sources & (CORDON_TARGET_RESOLVED | CORDON_TARGET_CIDR)) != 0;
		facts.strict_exempt = !facts.is_target && (sources & CORDON_TARGET_STRICT_EXEMPT);
		if (!facts.is_target && (!(facts.port_flags & CORDON_PORT_ALL_DESTINATIONS) || facts.strict_exempt))
			return pass;
	}
	facts.scope = current_scope();
	facts.sk_mark = ctx->sk->mark;
	facts.same_netns = bpf_get_netns_cookie(ctx) == host_netns_cookie;
	facts.in_cordond_cgroup = cordond_cgroup_id != 0 && bpf_get_current_cgroup_id() == cordond_cgroup_id;
	facts.netns_listener = netns_listen_ip4 != 0 && netns_listen_port_be != 0;
	facts.ipv4 = cordon_addr_is_v4_mapped(addr);
	facts.netns_dns = facts.netns_listener && netns_dns_port_be != 0;
	facts.dst_loopback = cordon_addr_is_loopback(addr);
	d = cordon_decide_connect(&facts, upstream_mark);
	/* A redirect is counted by the caller once it really happens (the listener check may
	 * still refuse it). */
	if (d.verdict == CORDON_VERDICT_PASS || d.verdict == CORDON_VERDICT_REFUSE)
		count(d.counter);
	return d;
}

/* Remember who is calling and where they meant to go, in the socket's own storage (freed with
 * the socket). Returns 0 when storage cannot be had: the caller then refuses, fail closed. */
static __always_inline int remember_origin(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port, __u16 family,
                                           __u32 flags)
{
	struct cordon_sk_state *st;
	__u64 pid_tgid, uid_gid;

	st = bpf_sk_storage_get(&origin_store, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count(CORDON_CTR_ORIGIN_LOST);
		return 0;
	}
	__builtin_memcpy(st->origin.dst_addr, addr, 16);
	st->origin.dst_port = port;
	st->origin.family = family;
	pid_tgid = bpf_get_current_pid_tgid();
	st->origin.tgid = pid_tgid >> 32;
	st->origin.tid = (__u32)pid_tgid;
	uid_gid = bpf_get_current_uid_gid();
	st->origin.uid = (__u32)uid_gid;
	st->origin.gid = uid_gid >> 32;
	st->origin.cgroup_id = bpf_get_current_cgroup_id();
	st->origin.netns_cookie = bpf_get_netns_cookie(ctx);
	st->origin.flags = is_target(addr) ? CORDON_ORIGIN_TARGET : 0;
	st->origin.socket_cookie = 0;
	st->origin.connect_boot_ns = bpf_ktime_get_boot_ns();
	bpf_get_current_comm(st->origin.comm, sizeof(st->origin.comm));
	st->flags = flags;
	return 1;
}

/* Is the socket listening on our redirect address really cordond's? A port above 1024 can be
 * taken by anyone while cordond is down; such a listener must never receive a job's traffic. */
static __always_inline int cordond_listening_on(struct bpf_sock_addr *ctx, int v6, __u16 port_be, int udp)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	struct cordon_listener_tag *tag;
	int ours = 0;
	__u32 size;

	if (v6) {
		tuple.ipv6.daddr[0] = listen_ip6[0];
		tuple.ipv6.daddr[1] = listen_ip6[1];
		tuple.ipv6.daddr[2] = listen_ip6[2];
		tuple.ipv6.daddr[3] = listen_ip6[3];
		tuple.ipv6.dport = port_be;
		size = sizeof(tuple.ipv6);
	} else {
		tuple.ipv4.daddr = listen_ip4;
		tuple.ipv4.dport = port_be;
		size = sizeof(tuple.ipv4);
	}
	if (udp)
		sk = bpf_sk_lookup_udp(ctx, &tuple, size, BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_tcp(ctx, &tuple, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	tag = bpf_sk_storage_get(&listener_tags, sk, 0, 0);
	ours = tag && tag->magic == CORDON_LISTENER_MAGIC;
	bpf_sk_release(sk);
	return ours;
}

static __always_inline int cordond_listening(struct bpf_sock_addr *ctx, int v6)
{
	return cordond_listening_on(ctx, v6, (__u16)listen_port_be, 0);
}

/* Point the call at ip4 (IPv4, or v4-mapped on an IPv6 socket) or at cordond's IPv6 listener
 * (v6), on port_be. One place for the three redirects: TCP, DNS, other namespaces. */
static __always_inline void rewrite_destination(struct bpf_sock_addr *ctx, __u16 family, int v6, __u32 ip4,
                                                __u32 port_be)
{
	if (family == AF_INET) {
		ctx->user_ip4 = ip4;
	} else if (!v6) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = ip4;
	} else {
		ctx->user_ip6[0] = listen_ip6[0];
		ctx->user_ip6[1] = listen_ip6[1];
		ctx->user_ip6[2] = listen_ip6[2];
		ctx->user_ip6[3] = listen_ip6[3];
	}
	ctx->user_port = port_be;
}

/* Does anything listen on cordond's host address in the caller's own namespace? Then that
 * namespace owns the address (root in a user namespace can add it to its own lo), and a
 * redirect would hand the job's connection to that listener instead of cordond, which never
 * listens in another namespace. */
static __always_inline int host_address_taken_here(struct bpf_sock_addr *ctx, __u32 port_be, int udp)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;

	tuple.ipv4.daddr = netns_listen_ip4;
	tuple.ipv4.dport = (__u16)port_be;
	if (udp)
		sk = bpf_sk_lookup_udp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	count(CORDON_CTR_REFUSED_NETNS);
	return 1;
}

/* A job in another network namespace (a container): to cordond's host address, reached through
 * the namespace's default route. The listener check above cannot see into cordond's namespace
 * from here; the privileged port stands in for it (only root can listen there), and a listener
 * on that address in the job's own namespace is refused. IPv4 only: the decision refuses IPv6. */
static __always_inline int redirect_netns(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port, __u16 family)
{
	if (host_address_taken_here(ctx, netns_listen_port_be, 0))
		return 0;
	if (!remember_origin(ctx, addr, port, family, CORDON_SK_REDIRECTED))
		return 0;
	count(CORDON_CTR_REDIRECTED_NETNS);
	rewrite_destination(ctx, family, 0, netns_listen_ip4, netns_listen_port_be);
	return 1;
}

/* Send a DNS query to cordond's proxy (same family, or IPv4 for a v4-mapped destination). The
 * original resolver stays in the socket's storage for recvmsg and getpeername. As with TCP
 * capture, a proxy that is not there means refusal (fail closed): while cordond restarts,
 * lookups fail fast and are retried, instead of learning addresses nobody captures. Unless the
 * policy prefers the host's DNS working during such a gap (dns_pass_when_down). */
static __always_inline int redirect_dns(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port, __u16 family,
                                        int connecting)
{
	int v6 = family == AF_INET6 && !cordon_addr_is_v4_mapped(addr);
	int udp = ctx->type == CORDON_SOCK_DGRAM;
	/* connect() on UDP or TCP makes the rewrite permanent: getpeername answers for it, and
	 * sockops publishes a TCP origin for the proxy's accept(). sendto() is per datagram. */
	__u32 flags = CORDON_SK_DNS | (connecting ? CORDON_SK_REDIRECTED : 0);

	if (!cordond_listening_on(ctx, v6, (__u16)dns_port_be, udp)) {
		if (dns_pass_when_down)
			return 1;
		count(CORDON_CTR_REFUSED_NO_LISTENER);
		return 0;
	}
	if (!remember_origin(ctx, addr, port, family, flags))
		return 0;
	count(CORDON_CTR_DNS_REDIRECTED);
	rewrite_destination(ctx, family, v6, listen_ip4, dns_port_be);
	return 1;
}

/* DNS from another network namespace: to the proxy on cordond's host address. As with TCP from
 * there, the kernel cannot see whether cordond listens (the port is privileged instead); while
 * it is down the query fails (port unreachable, or a reset for TCP) and is retried. */
static __always_inline int redirect_dns_netns(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port, __u16 family,
                                              int connecting)
{
	__u32 flags = CORDON_SK_DNS | (connecting ? CORDON_SK_REDIRECTED : 0);

	if (host_address_taken_here(ctx, netns_dns_port_be, ctx->type == CORDON_SOCK_DGRAM))
		return 0;
	if (!remember_origin(ctx, addr, port, family, flags))
		return 0;
	count(CORDON_CTR_DNS_REDIRECTED);
	rewrite_destination(ctx, family, 0, netns_listen_ip4, netns_dns_port_be);
	return 1;
}

/* A UDP socket connected elsewhere after a DNS redirect must not keep answering getpeername or
 * recvmsg with the old resolver. */
static __always_inline void forget_dns(struct bpf_sock_addr *ctx)
{
	struct cordon_sk_state *st;

	if (ctx->type != CORDON_SOCK_DGRAM)
		return;
	st = bpf_sk_storage_get(&origin_store, ctx->sk, 0, 0);
	if (st)
		st->flags = 0;
}

SEC("cgroup/connect4")
int cordon_connect4(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u8 addr[16];
	struct cordon_decision d;

	cordon_addr_from_ip4(addr, ctx->user_ip4);
	d = decide(ctx, addr, port);
	if (d.verdict == CORDON_VERDICT_PASS) {
		forget_dns(ctx);
		return 1;
	}
	if (d.verdict == CORDON_VERDICT_REFUSE)
		return 0;
	if (d.verdict == CORDON_VERDICT_DNS)
		return redirect_dns(ctx, addr, port, AF_INET, 1);
	if (d.verdict == CORDON_VERDICT_DNS_NETNS)
		return redirect_dns_netns(ctx, addr, port, AF_INET, 1);
	if (d.verdict == CORDON_VERDICT_REDIRECT_NETNS)
		return redirect_netns(ctx, addr, port, AF_INET);
	if (!cordond_listening(ctx, 0)) {
		count(CORDON_CTR_REFUSED_NO_LISTENER);
		return 0;
	}
	if (!remember_origin(ctx, addr, port, AF_INET, CORDON_SK_REDIRECTED))
		return 0;
	count(CORDON_CTR_REDIRECTED);
	rewrite_destination(ctx, AF_INET, 0, listen_ip4, listen_port_be);
	return 1;
}

SEC("cgroup/connect6")
int cordon_connect6(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 ip6[4];
	__u8 addr[16];
	struct cordon_decision d;

	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	cordon_addr_from_ip6(addr, ip6);
	d = decide(ctx, addr, port);
	if (d.verdict == CORDON_VERDICT_PASS) {
		forget_dns(ctx);
		return 1;
	}
	if (d.verdict == CORDON_VERDICT_REFUSE)
		return 0;
	if (d.verdict == CORDON_VERDICT_DNS)
		return redirect_dns(ctx, addr, port, AF_INET6, 1);
	if (d.verdict == CORDON_VERDICT_DNS_NETNS)
		return redirect_dns_netns(ctx, addr, port, AF_INET6, 1);
	if (d.verdict == CORDON_VERDICT_REDIRECT_NETNS)
		return redirect_netns(ctx, addr, port, AF_INET6);
	/* A v4-mapped destination (a dual-stack socket talking IPv4) goes to the IPv4 listener,
	 * v4-mapped. */
	if (!cordond_listening(ctx, !cordon_addr_is_v4_mapped(addr))) {
		count(CORDON_CTR_REFUSED_NO_LISTENER);
		return 0;
	}
	if (!remember_origin(ctx, addr, port, AF_INET6, CORDON_SK_REDIRECTED))
		return 0;
	count(CORDON_CTR_REDIRECTED);
	rewrite_destination(ctx, AF_INET6, !cordon_addr_is_v4_mapped(addr), listen_ip4, listen_port_be);
	return 1;
}

/* Unconnected UDP (sendto): QUIC to targets is refused; DNS goes to the proxy. */
SEC("cgroup/sendmsg4")
int cordon_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u8 addr[16];
	struct cordon_decision d;

	cordon_addr_from_ip4(addr, ctx->user_ip4);
	d = decide(ctx, addr, port);
	if (d.verdict == CORDON_VERDICT_DNS)
		return redirect_dns(ctx, addr, port, AF_INET, 0);
	if (d.verdict == CORDON_VERDICT_DNS_NETNS)
		return redirect_dns_netns(ctx, addr, port, AF_INET, 0);
	return d.verdict == CORDON_VERDICT_REFUSE ? 0 : 1;
}

SEC("cgroup/sendmsg6")
int cordon_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 ip6[4];
	__u8 addr[16];
	struct cordon_decision d;

	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	cordon_addr_from_ip6(addr, ip6);
	d = decide(ctx, addr, port);
	if (d.verdict == CORDON_VERDICT_DNS)
		return redirect_dns(ctx, addr, port, AF_INET6, 0);
	if (d.verdict == CORDON_VERDICT_DNS_NETNS)
		return redirect_dns_netns(ctx, addr, port, AF_INET6, 0);
	return d.verdict == CORDON_VERDICT_REFUSE ? 0 : 1;
}

static __always_inline struct cordon_sk_state *redirected_state(struct bpf_sock *sk)
{
	struct cordon_sk_state *st = bpf_sk_storage_get(&origin_store, sk, 0, 0);

	return st && (st->flags & CORDON_SK_REDIRECTED) ? st : NULL;
}

SEC("cgroup/getpeername4")
int cordon_getpeername4(struct bpf_sock_addr *ctx)
{
	struct cordon_sk_state *st = redirected_state(ctx->sk);

	if (!st)
		return 1;
	ctx->user_ip4 = cordon_addr_ip4(st->origin.dst_addr);
	ctx->user_port = bpf_htons(st->origin.dst_port);
	count(CORDON_CTR_PEER_REWRITTEN);
	return 1;
}

SEC("cgroup/getpeername6")
int cordon_getpeername6(struct bpf_sock_addr *ctx)
{
	struct cordon_sk_state *st = redirected_state(ctx->sk);
	__u32 ip6[4];

	if (!st)
		return 1;
	__builtin_memcpy(ip6, st->origin.dst_addr, 16);
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
	ctx->user_port = bpf_htons(st->origin.dst_port);
	count(CORDON_CTR_PEER_REWRITTEN);
	return 1;
}

/* Is this datagram source one of cordond's DNS proxy listeners, on a socket whose query the
 * proxy took? The loopback listener (same family as the source) or, for IPv4, the host address
 * for other namespaces. */
static __always_inline int from_dns_proxy(const struct cordon_sk_state *st, const __u8 source[16], __u16 source_port)
{
	__u8 listener[16];
	__u32 ip6[4];

	if (cordon_addr_is_v4_mapped(source)) {
		cordon_addr_from_ip4(listener, listen_ip4);
		if (cordon_dns_reply_rewrite(st->flags, source, source_port, listener, bpf_ntohs((__u16)dns_port_be)))
			return 1;
		cordon_addr_from_ip4(listener, netns_listen_ip4);
		return netns_listen_ip4 != 0 && cordon_dns_reply_rewrite(st->flags, source, source_port, listener,
		                                                         bpf_ntohs((__u16)netns_dns_port_be));
	}
	ip6[0] = listen_ip6[0];
	ip6[1] = listen_ip6[1];
	ip6[2] = listen_ip6[2];
	ip6[3] = listen_ip6[3];
	cordon_addr_from_ip6(listener, ip6);
	return cordon_dns_reply_rewrite(st->flags, source, source_port, listener, bpf_ntohs((__u16)dns_port_be));
}

/* An answer from the DNS proxy reads as coming from the resolver the job asked (recvmsg runs
 * only when the caller asks for the source address; it must always return 1). */
SEC("cgroup/recvmsg4")
int cordon_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct cordon_sk_state *st;
	__u8 source[16];

	if (ctx->user_port == 0 || (ctx->user_port != dns_port_be && ctx->user_port != netns_dns_port_be))
		return 1;
	st = bpf_sk_storage_get(&origin_store, ctx->sk, 0, 0);
	if (!st)
		return 1;
	cordon_addr_from_ip4(source, ctx->user_ip4);
	if (!from_dns_proxy(st, source, bpf_ntohs((__u16)ctx->user_port)) ||
	    !cordon_addr_is_v4_mapped(st->origin.dst_addr))
		return 1;
	ctx->user_ip4 = cordon_addr_ip4(st->origin.dst_addr);
	ctx->user_port = bpf_htons(st->origin.dst_port);
	count(CORDON_CTR_DNS_REPLY_REWRITTEN);
	return 1;
}

SEC("cgroup/recvmsg6")
int cordon_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct cordon_sk_state *st;
	__u8 source[16];
	__u32 ip6[4];

	if (ctx->user_port == 0 || (ctx->user_port != dns_port_be && ctx->user_port != netns_dns_port_be))
		return 1;
	st = bpf_sk_storage_get(&origin_store, ctx->sk, 0, 0);
	if (!st)
		return 1;
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	cordon_addr_from_ip6(source, ip6);
	/* A dual-stack socket that asked a v4-mapped resolver hears the IPv4 listener, v4-mapped. */
	if (!from_dns_proxy(st, source, bpf_ntohs((__u16)ctx->user_port)))
		return 1;
	__builtin_memcpy(ip6, st->origin.dst_addr, 16);
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
	ctx->user_port = bpf_htons(st->origin.dst_port);
	count(CORDON_CTR_DNS_REPLY_REWRITTEN);
	return 1;
}

static __always_inline void publish_origin(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	struct cordon_sk_state *st;
	__u32 ip6[4];

	if (!sk)
		return;
	st = redirected_state(sk);
	if (!st)
		return;
	if (ops->family == AF_INET) {
		cordon_addr_from_ip4(st->tuple.client_addr, ops->local_ip4);
		cordon_addr_from_ip4(st->tuple.listen_addr, ops->remote_ip4);
	} else {
		ip6[0] = ops->local_ip6[0];
		ip6[1] = ops->local_ip6[1];
		ip6[2] = ops->local_ip6[2];
		ip6[3] = ops->local_ip6[3];
		cordon_addr_from_ip6(st->tuple.client_addr, ip6);
		ip6[0] = ops->remote_ip6[0];
		ip6[1] = ops->remote_ip6[1];
		ip6[2] = ops->remote_ip6[2];
		ip6[3] = ops->remote_ip6[3];
		cordon_addr_from_ip6(st->tuple.listen_addr, ip6);
	}
	st->tuple.client_port = (__u16)ops->local_port;
	st->tuple.listen_port = (__u16)bpf_ntohl(ops->remote_port);
	st->origin.socket_cookie = bpf_get_socket_cookie(ops);
	if (bpf_map_update_elem(&origins, &st->tuple, &st->origin, BPF_ANY) != 0) {
		count(CORDON_CTR_ORIGIN_LOST);
		return;
	}
	st->flags |= CORDON_SK_PUBLISHED;
	/* Ask for state changes so the entry goes when the socket closes, consumed or not. */
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void withdraw_origin(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	struct cordon_sk_state *st;
	struct cordon_origin *published;

	if (!sk)
		return;
	st = redirected_state(sk);
	if (!st || !(st->flags & CORDON_SK_PUBLISHED))
		return;
	st->flags &= ~CORDON_SK_PUBLISHED;
	published = bpf_map_lookup_elem(&origins, &st->tuple);
	/* Only our own entry: the tuple may already belong to a newer connection. */
	if (published && published->socket_cookie == st->origin.socket_cookie)
		bpf_map_delete_elem(&origins, &st->tuple);
}

SEC("sockops")
int cordon_sockops(struct bpf_sock_ops *ops)
{
	switch (ops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		publish_origin(ops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == TCP_STATE_CLOSE)
			withdraw_origin(ops);
		break;
	default:
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
