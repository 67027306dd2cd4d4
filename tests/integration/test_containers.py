"""Jobs in their own network namespace: a container on a veth pair, as docker's bridge runs it.

The "host" here is a network namespace the test creates (H): cordond, the upstream standing in
for Cursor's address (203.0.113.10 on H's loopback) and the veth's host end live there, so the
real host's interfaces and addresses are never touched. The container (C) has only its loopback
and eth0 (10.77.161.2/30), with its default route via H (10.77.161.1), as a docker container
has. Without cordon the container reaches the upstream through that route; with cordon its
captured connections are redirected to cordond's host address (daemon.netns_listen), which
cordond puts on H's `lo` and `cordonctl detach` removes.

Docker also masquerades the bridge's traffic on its way out of the host. That NAT does not touch
these connections: they are delivered locally, to cordond, before any POSTROUTING rule.
"""
import contextlib
import ctypes
import json
import os
import socket
import struct
import subprocess
import time

import pytest

from conftest import CLIENT, CORDONCTL, PYTHON

CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71
# Addresses on the public internet, as Cursor's are (cordond passes nothing through from a
# container to an internal address); they exist only inside H.
CURSOR_IP = "203.0.113.10"
FRESH_IP = "203.0.113.7"  # a capture host's address nobody has resolved yet
NETNS_LISTEN_IP = "169.254.77.160"
NETNS_LISTEN = f"{NETNS_LISTEN_IP}:1023"
JOB_UID = 65534
RESOLVER_IP = "10.77.160.53"  # the resolver the container asks (in H, as a host's upstream would be)
NETNS_DNS_PORT = 1022

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def inside(netns):
    """Run the calling thread in network namespace `netns` (sockets made here stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        if _libc.setns(own, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(own)
        os.close(target)


def netns_cookie(netns):
    with inside(netns):
        with socket.socket() as s:
            return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture
def host_and_container(cgroups):
    host, container = f"{cgroups.name}-h", f"{cgroups.name}-c"
    try:
        sh("ip", "netns", "add", host)
        sh("ip", "netns", "add", container)
        sh("ip", "-n", host, "link", "set", "lo", "up")
        sh("ip", "-n", host, "addr", "add", f"{CURSOR_IP}/32", "dev", "lo")
        sh("ip", "-n", host, "addr", "add", f"{RESOLVER_IP}/32", "dev", "lo")
        sh("ip", "-n", host, "addr", "add", f"{FRESH_IP}/32", "dev", "lo")
        sh("ip", "-n", host, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", container)
        sh("ip", "-n", host, "addr", "add", "10.77.161.1/30", "dev", "veth0")
        sh("ip", "-n", host, "link", "set", "veth0", "up")
        sh("ip", "-n", container, "link", "set", "lo", "up")
        sh("ip", "-n", container, "addr", "add", "10.77.161.2/30", "dev", "eth0")
        sh("ip", "-n", container, "link", "set", "eth0", "up")
        sh("ip", "-n", container, "route", "add", "default", "via", "10.77.161.1")
        yield host, container
    finally:
        subprocess.run(["ip", "netns", "del", container], capture_output=True)
        subprocess.run(["ip", "netns", "del", host], capture_output=True)


def in_container(cgroups, child, container, *args, check=True):
    """client.py as the job user, in cgroup `child`, inside the container's network namespace."""
    r = cgroups.run(child, ["nsenter", f"--net=/run/netns/{container}", "setpriv", f"--reuid={JOB_UID}",
                            f"--regid={JOB_UID}", "--clear-groups", "--", PYTHON, str(CLIENT),
                            *map(str, args)], check=check)
    return json.loads(r.stdout)


def labelled_addresses(netns):
    out = subprocess.run(["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if " lo:cdn" in line]


def start_in_host(cordond, host, **kwargs):
    return cordond([f"{CURSOR_IP}/32"], prefix=["nsenter", f"--net=/run/netns/{host}"],
                   netns_listen=NETNS_LISTEN, **kwargs)


# Asks `resolver` for `name` over UDP or TCP, the way a stub resolver does (the answer must come
# from the address asked), and prints the answer's source and bytes.
ASK = """
import json, socket, struct, sys
query, resolver, transport = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3]
if transport == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(query, (resolver, 53))
    data, source = s.recvfrom(4096)
else:
    s = socket.create_connection((resolver, 53), timeout=5)
    s.sendall(struct.pack("!H", len(query)) + query)
    n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
    data, source = s.recv(n, socket.MSG_WAITALL), s.getpeername()
print(json.dumps({"source": list(source[:2]), "answer": data.hex()}))
"""


def test_a_containers_connection_is_redirected_identified_and_relayed(cgroups, cordond, upstream, journal,
                                                                       host_and_container):
    host, container = host_and_container
    with inside(host):
        server = upstream(CURSOR_IP, 80)
    # Without cordon the container reaches "Cursor" through its default route: the path a job
    # would take around a cordon that ignored containers.
    direct = in_container(cgroups, "other", container, "peer", CURSOR_IP, 80)
    assert direct["reply"] == "ping\n" and server.peers[-1][0] == "10.77.161.2"

    d = start_in_host(cordond, host)
    assert labelled_addresses(host) == [f"{NETNS_LISTEN_IP}/32"]
    os.mkdir(cgroups.base / "job" / ("docker-" + "c0" * 32 + ".scope"))
    scope = "job/docker-" + "c0" * 32 + ".scope"
    res = in_container(cgroups, scope, container, "peer", CURSOR_IP, 80)
    # The job sees the peer it asked for and its bytes come back.
    assert res["peer"] == [CURSOR_IP, 80] and res["reply"] == "ping\n"
    closed = journal.wait_for(d.pid, CORDON_EVENT="connection_close")
    assert closed, d.log_text()
    e = closed[0]
    assert e["CORDON_DST"] == f"{CURSOR_IP}:80" and e["CORDON_RESULT"] == "ok"
    assert e["CORDON_PID"] == str(res["pid"]) and e["CORDON_UID"] == str(JOB_UID)
    assert e["CORDON_CONTAINER"] == "c0" * 32
    assert e["CORDON_NETNS_COOKIE"] == str(netns_cookie(container)) != str(netns_cookie(host))
    # The upstream saw cordond (its upstream socket in H), never the container.
    assert len(server.peers) == 2
    assert f"{server.peers[-1][0]}:{server.peers[-1][1]}" == e["CORDON_UPSTREAM_LOCAL"]
    counters = d.status()["counters"]
    assert counters["redirected_netns"] == 1 and counters["refused_netns"] == 0


def test_a_container_cannot_go_around_and_is_refused_while_cordond_is_down(cgroups, cordond, upstream, journal,
                                                                            host_and_container):
    host, container = host_and_container
    with inside(host):
        server = upstream(CURSOR_IP, 80)
    d = start_in_host(cordond, host)
    # QUIC to a target: refused outright.
    assert in_container(cgroups, "job", container, "udp", CURSOR_IP, 443) == {"connect": "EPERM",
                                                                              "sendto": "EPERM"}
    d.stop()
    # The gap: the address stays on lo, nothing listens on the privileged port, the connection is
    # refused by the host and nothing reaches the upstream.
    assert labelled_addresses(host) == [f"{NETNS_LISTEN_IP}/32"]
    gap = in_container(cgroups, "job", container, "connect-only", CURSOR_IP, 80)
    assert gap == {"connected": False, "errno": "ECONNREFUSED"}
    assert server.peers == []
    # An unprivileged job in H cannot take cordond's place on the privileged port.
    r = cgroups.run("other", ["nsenter", f"--net=/run/netns/{host}", "setpriv", f"--reuid={JOB_UID}",
                              f"--regid={JOB_UID}", "--clear-groups", "--", PYTHON, "-c",
                              "import socket\ns=socket.socket()\n"
                              f"try:\n s.bind(('{NETNS_LISTEN_IP}',1023));print('bound')\n"
                              "except PermissionError:\n print('refused')\n"])
    assert r.stdout.strip() == "refused"
    # cordond returns, adopts its pins, and the container is relayed again.
    d.start()
    res = in_container(cgroups, "job", container, "peer", CURSOR_IP, 80)
    assert res["peer"] == [CURSOR_IP, 80] and res["reply"] == "ping\n"
    assert len(server.peers) == 1 and server.peers[0][0] != "10.77.161.2", server.peers
    redirected = d.status()["counters"]["redirected_netns"]
    # A new policy moves the address: the old one goes once the programs point at the new one.
    d.stop()
    d.policy.write_text(d.policy.read_text().replace(NETNS_LISTEN, "169.254.77.162:1023"))
    d.start()
    assert labelled_addresses(host) == ["169.254.77.162/32"]
    res = in_container(cgroups, "job", container, "peer", CURSOR_IP, 80)
    assert res["reply"] == "ping\n" and len(server.peers) == 2 and server.peers[1][0] != "10.77.161.2"
    assert d.status()["counters"]["redirected_netns"] == redirected + 1
    # A deliberate detach removes the address with the programs.
    d.stop()
    subprocess.run(["nsenter", f"--net=/run/netns/{host}", str(CORDONCTL), "--pin-dir", d.pin_dir, "detach"],
                   check=True, capture_output=True)
    assert labelled_addresses(host) == [] and fallback_routes(host) == []


def test_without_a_netns_listener_containers_are_refused(cgroups, cordond, upstream, host_and_container):
    host, container = host_and_container
    with inside(host):
        server = upstream(CURSOR_IP, 80)
    d = cordond([f"{CURSOR_IP}/32"], prefix=["nsenter", f"--net=/run/netns/{host}"], netns_listen="")
    assert labelled_addresses(host) == []
    res = in_container(cgroups, "job", container, "connect-only", CURSOR_IP, 80)
    assert res == {"connected": False, "errno": "EPERM"}
    assert server.peers == [] and d.status()["counters"]["refused_netns"] == 1


@pytest.mark.parametrize("value,why", [
    ("127.0.0.2:1023", "not a unicast, non-loopback IPv4"),
    ("[fd00::1]:1023", "not a unicast, non-loopback IPv4"),
    ("169.254.77.77:8443", "the port must be privileged"),
    ("169.254.77.77", "not a unicast, non-loopback IPv4"),
])
def test_a_bad_netns_listen_is_a_clear_error(tmp_path, value, why):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"daemon:\n  netns_listen: \"{value}\"\n")
    from conftest import CORDOND
    r = subprocess.run([str(CORDOND), "--check-config", "--config", str(policy)], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{policy}:2:" in r.stderr and why in r.stderr, r.stderr


def test_a_containers_dns_goes_through_the_proxy_and_its_first_connection_is_captured(
        cgroups, cordond, upstream, journal, host_and_container, monkeypatch):
    """Race-free capture for containers: the container asks a resolver through its default route,
    cordond's proxy answers (learning the capture host's address first), and the container's
    very first connection to that never-seen address is relayed."""
    import test_dns
    from test_dns import A, CNAME, DnsServer, build_query, parse_answer
    monkeypatch.setitem(test_dns.ZONE, "box.cursor.sh", [(CNAME, "edge-box.cursor.sh", 5)])
    monkeypatch.setitem(test_dns.ZONE, "edge-box.cursor.sh", [(A, FRESH_IP, 5)])
    host, container = host_and_container
    with inside(host):
        resolver = DnsServer(ip=RESOLVER_IP)
        server = upstream(FRESH_IP, 80)
    try:
        d = start_in_host(cordond, host, hosts=["*.cursor.sh"],
                          capture_yaml=f"  dns_upstream: \"{RESOLVER_IP}:53\"\n",
                          extra_yaml=f"  netns_dns_port: {NETNS_DNS_PORT}\n")
        for transport, name in (("udp", "box.cursor.sh"), ("tcp", "edge-box.cursor.sh")):
            r = cgroups.run("job", ["nsenter", f"--net=/run/netns/{container}", "setpriv", f"--reuid={JOB_UID}",
                                    f"--regid={JOB_UID}", "--clear-groups", "--", PYTHON, "-c", ASK,
                                    build_query(name).hex(), RESOLVER_IP, transport])
            got = json.loads(r.stdout)
            # The answer reads as coming from the resolver asked, and holds the address.
            assert got["source"] == [RESOLVER_IP, 53], got
            rcode, records = parse_answer(bytes.fromhex(got["answer"]))
            assert rcode == 0 and records[-1][2] == FRESH_IP, records
        # cordond asked the resolver (from H), the container never did.
        peers = {peer[0] for _, peer in resolver.queries["udp"] + resolver.queries["tcp"]}
        assert peers and "10.77.161.2" not in peers, resolver.queries
        captured = journal.wait_for(d.pid, CORDON_EVENT="dns_capture")
        assert captured and FRESH_IP in captured[0]["CORDON_ADDED"], captured
        res = in_container(cgroups, "job", container, "peer", FRESH_IP, 80)
        assert res["peer"] == [FRESH_IP, 80] and res["reply"] == "ping\n"
        # Relayed (a connection the container made itself would show its own address).
        assert len(server.peers) == 1 and server.peers[0][0] != "10.77.161.2", server.peers
        closed = journal.wait_for(d.pid, CORDON_EVENT="connection_close")
        assert closed[0]["CORDON_DST"] == f"{FRESH_IP}:80"
        assert closed[0]["CORDON_NETNS_COOKIE"] == str(netns_cookie(container))
        assert d.status()["counters"]["dns_redirected"] >= 2
    finally:
        resolver.close()


def test_strict_capture_of_a_container_keeps_its_network_walls(cgroups, cordond, upstream, journal,
                                                                host_and_container):
    """Strict capture sends every TCP 80/443 connection of a container to cordond, which would
    make the outgoing connection from the host's namespace. To the public internet that is the
    documented cost; to an internal address it would step over the walls of the container's
    own network (docker's isolation between networks, other tenants' service containers), so
    cordond refuses it, and strict_exempt_cidrs leaves such ranges to the container itself."""
    host, container = host_and_container
    with inside(host):
        public = upstream(CURSOR_IP, 80)        # not a target here: someone else's site
        internal = upstream(RESOLVER_IP, 80)    # a service on an internal network
    d = cordond([], prefix=["nsenter", f"--net=/run/netns/{host}"], netns_listen=NETNS_LISTEN,
                capture_yaml="  mode: all-tls\n")
    res = in_container(cgroups, "job", container, "peer", CURSOR_IP, 80)
    assert res["reply"] == "ping\n" and public.peers[0][0] != "10.77.161.2", public.peers
    refused = in_container(cgroups, "job", container, "connect-only", RESOLVER_IP, 80)
    assert refused["connected"] and refused.get("reply", "") == "", refused  # closed unanswered
    assert internal.peers == []
    opened = [e for e in journal.wait_for(d.pid, count=2, CORDON_EVENT="connection_open")
              if e["CORDON_DST"] == f"{RESOLVER_IP}:80"]
    assert opened and opened[0]["CORDON_MODE"] == "refused", opened
    assert "internal address" in opened[0]["CORDON_REASON"], opened
    # Exempt, the range is the container's own again: its connection goes the way it would
    # without cordon, through its own network.
    d.stop()
    d.detach()
    exempt = cordond([], prefix=["nsenter", f"--net=/run/netns/{host}"], netns_listen=NETNS_LISTEN,
                     capture_yaml="  mode: all-tls\n  strict_exempt_cidrs: [\"10.0.0.0/8\"]\n")
    res = in_container(cgroups, "job", container, "peer", RESOLVER_IP, 80)
    assert res["reply"] == "ping\n" and internal.peers == [("10.77.161.2", res["local"][1])], internal.peers
    assert exempt.status()["counters"]["redirected_netns"] == 0


def test_where_any_user_may_bind_low_ports_containers_are_refused(cgroups, cordond, upstream, journal,
                                                                    host_and_container):
    """The privileged port is the only guard of the host listener while cordond is down. Hosts
    for rootless containers often lower net.ipv4.ip_unprivileged_port_start; then any user could
    take the port, so cordond does not listen there and containers are refused instead."""
    host, container = host_and_container
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0")
    with inside(host):
        server = upstream(CURSOR_IP, 80)
    d = start_in_host(cordond, host)
    off = journal.wait_for(d.pid, CORDON_EVENT="netns_listen_off")
    assert off and "ip_unprivileged_port_start is 0" in off[0]["CORDON_REASON"], off
    assert labelled_addresses(host) == []
    res = in_container(cgroups, "job", container, "connect-only", CURSOR_IP, 80)
    assert res == {"connected": False, "errno": "EPERM"} and server.peers == []
    assert d.status()["counters"]["refused_netns"] == 1


def fallback_routes(netns):
    out = subprocess.run(["ip", "-n", netns, "-4", "route", "show", "table", "main", "proto", "205"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_should_the_address_vanish_a_containers_connection_still_never_leaves(cgroups, cordond, upstream,
                                                                               host_and_container):
    """Behind the address on lo, an unreachable route to it: should someone flush lo, a captured
    connection from a container fails at the host instead of following the default route out."""
    host, container = host_and_container
    with inside(host):
        server = upstream(CURSOR_IP, 80)
    # H's default route leads back out of the veth: without the fallback, a packet for the
    # vanished address would leave this "host" (and, with nobody answering, time out).
    # H forwards, as a docker host does.
    sh("ip", "-n", host, "route", "add", "default", "via", "10.77.161.2")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    d = start_in_host(cordond, host)
    assert fallback_routes(host)[:2] == ["unreachable", NETNS_LISTEN_IP], fallback_routes(host)
    sh("ip", "-n", host, "addr", "flush", "dev", "lo", "label", "lo:cdn*")
    assert labelled_addresses(host) == []
    res = in_container(cgroups, "job", container, "connect-only", CURSOR_IP, 80)
    assert res == {"connected": False, "errno": "EHOSTUNREACH"} and server.peers == [], res
    d.stop()
    subprocess.run(["nsenter", f"--net=/run/netns/{host}", str(CORDONCTL), "--pin-dir", d.pin_dir, "detach"],
                   check=True, capture_output=True)
    # The address was gone already; detach only knows cordon's addresses, so the route that
    # stood for it stays (an unreachable route to an address nobody uses) until the next start.
    d2 = start_in_host(cordond, host)
    assert labelled_addresses(host) == [f"{NETNS_LISTEN_IP}/32"]
    d2.stop()
    subprocess.run(["nsenter", f"--net=/run/netns/{host}", str(CORDONCTL), "--pin-dir", d2.pin_dir, "detach"],
                   check=True, capture_output=True)
    assert labelled_addresses(host) == [] and fallback_routes(host) == []
