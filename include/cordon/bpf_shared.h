/* Every type shared by the BPF programs and userspace, defined exactly once.
 *
 * Compiled three ways: by clang -target bpf (types from vmlinux.h), by the host C++ compiler
 * for cordond/cordonctl, and by the unit tests. Only fixed-width __u* types, no pointers, and
 * explicit padding so both sides agree on layout. */
#ifndef CORDON_BPF_SHARED_H
#define CORDON_BPF_SHARED_H

#ifndef __bpf__
#include <linux/types.h>
#endif

#define CORDON_COMM_LEN 16
/* Deepest cgroup nesting the scope walk looks at; deeper cgroups inherit from their ancestor at
 * this depth. systemd + container runtimes stay well below 16. */
#define CORDON_MAX_CGROUP_DEPTH 32
#define CORDON_PORT_SPACE 65536

/* Indices of the per-CPU `counters` map. */
enum cordon_counter {
	CORDON_CTR_REDIRECTED = 0,           /* TCP connect to a capture target, rewritten to cordond */
	CORDON_CTR_EXEMPT = 1,               /* target destination, but cordond's own socket (mark/cgroup) */
	CORDON_CTR_UNENFORCED = 2,           /* target destination from a cgroup outside the enforced scope */
	CORDON_CTR_REFUSED_QUIC = 3,         /* UDP to a target on a refused port (QUIC) */
	CORDON_CTR_REFUSED_NETNS = 4,        /* from another network namespace, with no way to cordond (IPv6, off) */
	CORDON_CTR_ORIGIN_LOST = 5,          /* a redirect whose origin could not be stored/published */
	CORDON_CTR_PEER_REWRITTEN = 6,       /* getpeername answered with the original destination */
	CORDON_CTR_LOOKUP_MISSED = 7,        /* written by cordond: accepted connection with no origin */
	CORDON_CTR_REFUSED_NO_LISTENER = 8,  /* redirect refused: cordond's own listener is not there */
	CORDON_CTR_DNS_REDIRECTED = 9,       /* a DNS query (UDP or TCP port 53) sent to cordond's DNS proxy */
	CORDON_CTR_DNS_REPLY_REWRITTEN = 10, /* a DNS answer's source shown as the resolver the job asked */
	CORDON_CTR_REDIRECTED_NETNS = 11,    /* like REDIRECTED, from another network namespace (a container) */
	CORDON_CTR__COUNT = 12,
};

/* Values of the `cgroup_scope` map (cgroup id -> scope). The deepest listed ancestor decides. */
enum cordon_scope {
	CORDON_SCOPE_NONE = 0,
	CORDON_SCOPE_ENFORCE = 1,
	CORDON_SCOPE_EXEMPT = 2,
};

/* Bits of the `capture_ports` map (port -> flags). */
enum cordon_port_flag {
	CORDON_PORT_TCP_CAPTURE = 1, /* redirect TCP connections to targets on this port */
	CORDON_PORT_UDP_REFUSE = 2,  /* refuse UDP to targets on this port (QUIC) */
	/* Strict mode (capture.mode: all-tls): the two above apply to every destination, target or
	 * not; cordond then decides by SNI / Host. Catches addresses no resolver has seen yet. */
	CORDON_PORT_ALL_DESTINATIONS = 4,
	CORDON_PORT_DNS = 8, /* DNS: UDP and TCP to any address go to cordond's DNS proxy */
};

/* Key of the `targets` LPM trie. IPv4 is stored v4-mapped (::ffff:a.b.c.d, prefix 96 + n) so
 * one trie answers connect4, connect6 and v4-mapped connect6 alike. */
struct cordon_target_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Why an address is a capture target: a bit set, so a configured CIDR and a resolved name that
 * share one key keep it until neither wants it. */
enum cordon_target_source {
	CORDON_TARGET_RESOLVED = 1, /* a configured name resolved to it, or a DNS answer for a capture host */
	CORDON_TARGET_CIDR = 2,     /* a configured CIDR */
	/* Not a target, and never caught by strict capture either (capture.strict_exempt_cidrs:
	 * loopback, link-local, the cloud metadata service): a job's connections there stay its own,
	 * under the host's per-user firewall rules, instead of leaving from cordond. A more specific
	 * target inside such a range still wins (the trie's longest match). */
	CORDON_TARGET_STRICT_EXEMPT = 4,
};

struct cordon_target_value {
	__u32 sources; /* enum cordon_target_source bits */
	__u32 reserved;
};

/* Socket storage cordond puts on its own listening sockets. connect4/6 redirect only to a
 * listener carrying it: another process that grabbed the port (say while cordond restarts)
 * gets nothing, the job's connect() is refused instead. */
struct cordon_listener_tag {
	__u64 magic; /* CORDON_LISTENER_MAGIC */
};
#define CORDON_LISTENER_MAGIC 0x636f72646f6e4c53ULL /* "cordonLS" */

/* A TCP connection as cordond sees it after accept(): the client's address and port, and the
 * listener address the client was redirected to. Addresses v4-mapped, ports in host order. */
struct cordon_tuple {
	__u8 client_addr[16];
	__u8 listen_addr[16];
	__u16 client_port;
	__u16 listen_port;
	__u32 reserved;
};

/* Who connected, and where they meant to go. Written in connect4/6 (caller's context) into the
 * socket's local storage, published by 4-tuple at ACTIVE_ESTABLISHED_CB, consumed by cordond. */
struct cordon_origin {
	__u8 dst_addr[16]; /* original destination, IPv4 v4-mapped */
	__u16 dst_port;    /* host order */
	__u16 family;      /* AF_INET (connect4) or AF_INET6 (connect6, maybe v4-mapped) */
	__u32 tgid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u32 flags; /* enum cordon_origin_flag */
	__u64 cgroup_id;
	__u64 netns_cookie;
	__u64 socket_cookie;   /* set at publish; guards the delete at close against tuple reuse */
	__u64 connect_boot_ns; /* bpf_ktime_get_boot_ns() at connect */
	char comm[CORDON_COMM_LEN];
};

enum cordon_origin_flag {
	CORDON_ORIGIN_TARGET = 1, /* the destination was a capture target (else: strict mode caught it) */
};

/* Per-socket local storage (`origin_store`): the origin plus the tuple it was published under. */
enum cordon_sk_state_flag {
	CORDON_SK_REDIRECTED = 1, /* connect() was rewritten: getpeername and sockops act on it */
	CORDON_SK_PUBLISHED = 2,
	CORDON_SK_DNS = 4, /* DNS went to cordond's proxy: its answers show the resolver the job asked */
};

struct cordon_sk_state {
	struct cordon_origin origin;
	struct cordon_tuple tuple;
	__u32 flags;
	__u32 reserved;
};

#endif /* CORDON_BPF_SHARED_H */
