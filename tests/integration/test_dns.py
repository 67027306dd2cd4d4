"""The transparent DNS proxy end to end: a job in an enforced cgroup resolves Cursor's names
through its ordinary resolver (glibc, dig, Python), the BPF programs send that DNS to cordond,
and cordond captures the answer's addresses before the job sees them, so the job's very first
connection to an address nobody had resolved before is intercepted.

A small authoritative DNS server (UDP and TCP) run by the test answers on 127.77.140.53:53; the
job's /etc/resolv.conf (bind-mounted in a private mount namespace) and cordond's dns_upstream
both point at it.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import NOBODY, PYTHON

# This file's addresses: 127.77.140.0/24.
DNS_IP = "127.77.140.53"      # the test's authoritative server
FRESH_IP = "127.77.140.7"     # edge.cursor.sh, reached as fresh.cursor.sh through a CNAME
DIRECT_IP = "127.77.140.8"    # direct.cursor.sh
OTHER_IP = "127.77.140.9"     # other.example.org: not a capture host
SHORT_IP = "127.77.140.10"    # short.cursor.sh, TTL 1
HELD_IP = "127.77.140.11"     # held.cursor.sh, TTL 1, with a connection kept open
ALIASED_IP = "127.77.140.12"  # alias.example.org -> api9.cursor.sh: only the chain's end is Cursor's
NOBODY_IP = "127.77.140.99"   # no resolver here: a job that asks it is still answered, by the proxy

A, CNAME, AAAA = 1, 5, 28
ZONE = {
    "fresh.cursor.sh": [(CNAME, "edge.cursor.sh", 5)],
    "edge.cursor.sh": [(A, FRESH_IP, 5)],
    "direct.cursor.sh": [(A, DIRECT_IP, 5)],
    "other.example.org": [(A, OTHER_IP, 5)],
    "short.cursor.sh": [(A, SHORT_IP, 1)],
    "held.cursor.sh": [(A, HELD_IP, 1)],
    "alias.example.org": [(CNAME, "api9.cursor.sh", 30)],
    "api9.cursor.sh": [(A, ALIASED_IP, 30)],
}
CAPTURE = ["*.cursor.sh"]


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def read_name(msg, off):
    labels = []
    while msg[off]:
        n = msg[off]
        labels.append(msg[off + 1:off + 1 + n].decode())
        off += 1 + n
    return ".".join(labels), off + 1


def build_query(name, qtype=A, qid=0x4242):
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def answer(query):
    """The zone's answer: CNAMEs followed, A records; NXDOMAIN for names it does not have."""
    qid, flags = struct.unpack("!HH", query[:4])
    name, off = read_name(query, 12)
    qtype, _ = struct.unpack("!HH", query[off:off + 4])
    question = query[12:off + 4]
    records, current, rcode = [], name.lower(), 0
    if current not in ZONE:
        rcode = 3
    while current in ZONE:
        step = None
        for rtype, value, ttl in ZONE[current]:
            if rtype == CNAME:
                records.append((current, CNAME, ttl, encode_name(value)))
                step = value
            elif rtype == qtype:
                records.append((current, rtype, ttl, socket.inet_aton(value)))
        if step is None:
            break
        current = step
    out = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, len(records), 0, 0) + question
    for owner, rtype, ttl, rdata in records:
        out += encode_name(owner) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return out


def parse_answer(msg):
    """(rcode, [(name, type, value)]) of a response."""
    ancount = struct.unpack("!H", msg[6:8])[0]
    _, off = read_name(msg, 12)
    off += 4
    out = []
    for _ in range(ancount):
        if msg[off] & 0xC0 == 0xC0:
            owner, off = "(pointer)", off + 2
        else:
            owner, off = read_name(msg, off)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        rdata = msg[off + 10:off + 10 + rdlen]
        off += 10 + rdlen
        value = socket.inet_ntoa(rdata) if rtype == A else rdata
        out.append((owner, rtype, value))
    return msg[3] & 0x0F, out


class DnsServer:
    """Authoritative for ZONE over UDP and TCP; counts what it answered, by transport."""

    def __init__(self, ip=DNS_IP, port=53):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((ip, port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((ip, port))
        self.tcp.listen(64)
        self.queries = {"udp": [], "tcp": []}
        self.running = True
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def _serve_udp(self):
        while self.running:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            if not self.running:
                return
            try:
                self.queries["udp"].append((read_name(data, 12)[0], peer))
                self.udp.sendto(answer(data), peer)
            except (IndexError, struct.error, OSError):
                pass  # not a query this zone answers

    def _serve_tcp(self):
        while self.running:
            try:
                conn, peer = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    while True:
                        head = conn.recv(2, socket.MSG_WAITALL)
                        if len(head) < 2:
                            break
                        data = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                        self.queries["tcp"].append((read_name(data, 12)[0], peer))
                        reply = answer(data)
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    pass

    def close(self):
        self.running = False
        for s in (self.udp, self.tcp):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def dns_server():
    s = DnsServer()
    yield s
    s.close()


class DnsJob:
    """Runs argv as nobody in the enforced cgroup, with /etc/resolv.conf pointing at the test
    server and an /etc/hosts that knows none of the names (so they are looked up in DNS)."""

    def __init__(self, cgroups, tmp):
        self.cgroups = cgroups
        self.resolv = tmp / "resolv.conf"
        self.resolv.write_text(f"nameserver {DNS_IP}\noptions timeout:2 attempts:2\n")
        self.hosts = tmp / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n")
        for f in (self.resolv, self.hosts):
            os.chmod(f, 0o644)

    def spawn(self, argv, child="job", stdin=subprocess.DEVNULL):
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/hosts && shift && exec "$@"',
                   str(self.resolv), str(self.hosts),
                   "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]
        return self.cgroups.spawn(child, wrapped, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)

    def run(self, argv, child="job", timeout=30, check=True):
        p = self.spawn(argv, child=child)
        out, err = p.communicate(timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{argv} exited {p.returncode}\nstdout: {out}\nstderr: {err}")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def python(self, code, *args, **kwargs):
        r = self.run([PYTHON, "-c", code, *map(str, args)], **kwargs)
        return json.loads(r.stdout)


# Resolve with glibc and connect at once, the way any client does; then offer TLS for the name.
RESOLVE_AND_CONNECT = r"""
import json, socket, ssl, sys
name = sys.argv[1]
ip = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
s = socket.create_connection((ip, 443), timeout=5)
peer = s.getpeername()[0]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    ctx.wrap_socket(s, server_hostname=name).close()
except (OSError, ssl.SSLError):
    pass
print(json.dumps({"ip": ip, "peer": peer}))
"""

# Ask a given resolver directly: sendto on an unconnected socket, a connected UDP socket, TCP.
ASK = r"""
import json, socket, struct, sys
server, port, mode, query = sys.argv[1], int(sys.argv[2]), sys.argv[3], bytes.fromhex(sys.argv[4])
family = socket.AF_INET6 if ":" in server else socket.AF_INET
out = {}
if mode == "sendto":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(query, (server, port))
    data, source = s.recvfrom(65535)
    out["source"] = list(source[:2])
elif mode == "connected":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((server, port))
    s.send(query)
    data, source = s.recvfrom(65535)
    out["source"] = list(source[:2])
    out["peer"] = list(s.getpeername()[:2])
else:
    s = socket.create_connection((server, port), timeout=5)
    s.sendall(struct.pack("!H", len(query)) + query)
    n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
    data = s.recv(n, socket.MSG_WAITALL)
    out["peer"] = list(s.getpeername()[:2])
out["answer"] = data.hex()
print(json.dumps(out))
"""


def dns_cordond(cordond, *, proxy=True, ports=(443,), extra_capture=""):
    capture = (f"  dns_proxy: {'true' if proxy else 'false'}\n"
               f"  dns_upstream: \"{DNS_IP}:53\"\n" + extra_capture)
    return cordond([], hosts=CAPTURE, ports=ports, capture_yaml=capture)


def targets(d):
    return {t["cidr"] for t in d.status()["capture"]["targets"]}


@pytest.fixture
def stand_in(upstream):
    """Plain TCP listeners where Cursor's fresh addresses point: they record who connected."""
    return {ip: upstream(ip, 443) for ip in (FRESH_IP, DIRECT_IP, SHORT_IP, HELD_IP, ALIASED_IP, OTHER_IP)}


def test_the_first_connection_to_a_freshly_resolved_address_is_intercepted(cordond, cgroups, journal, tmp_path,
                                                                           dns_server, stand_in):
    d = dns_cordond(cordond)
    assert f"{FRESH_IP}/32" not in targets(d)  # nobody had resolved it
    job = DnsJob(cgroups, tmp_path)
    got = job.python(RESOLVE_AND_CONNECT, "fresh.cursor.sh")
    assert got == {"ip": FRESH_IP, "peer": FRESH_IP}  # the job saw the address it asked for

    learned = journal.wait_for(d.pid, CORDON_EVENT="dns_capture")
    assert learned, d.log_text()
    assert learned[0]["CORDON_HOST"] == "fresh.cursor.sh"
    assert learned[0]["CORDON_CNAME_CHAIN"] == "fresh.cursor.sh,edge.cursor.sh"
    assert learned[0]["CORDON_ADDED"] == FRESH_IP
    opened = journal.wait_for(d.pid, CORDON_EVENT="connection_open")
    assert opened, d.log_text()
    assert opened[0]["CORDON_MODE"] == "intercept"
    assert opened[0]["CORDON_DST"] == f"{FRESH_IP}:443"
    assert opened[0]["CORDON_SNI"] == "fresh.cursor.sh"
    st = d.status()
    assert st["counters"]["dns_redirected"] >= 1
    assert st["dns"]["captured_answers"] >= 1
    assert f"{FRESH_IP}/32" in targets(d)


def test_without_the_proxy_the_same_connection_passes_unseen(cordond, cgroups, journal, tmp_path, dns_server,
                                                             stand_in):
    """The race the proxy closes: an address cordond never resolved is not a target."""
    d = dns_cordond(cordond, proxy=False)
    job = DnsJob(cgroups, tmp_path)
    got = job.python(RESOLVE_AND_CONNECT, "fresh.cursor.sh")
    assert got["ip"] == FRESH_IP
    time.sleep(0.5)
    assert not journal.entries(d.pid, CORDON_EVENT="connection_open")
    assert len(stand_in[FRESH_IP].peers) == 1  # the job itself, straight through
    assert d.status()["counters"]["dns_redirected"] == 0


def test_real_resolvers_get_correct_answers_over_udp_and_tcp(cordond, cgroups, journal, tmp_path, dns_server,
                                                             stand_in):
    d = dns_cordond(cordond)
    job = DnsJob(cgroups, tmp_path)
    udp = job.run(["dig", "+time=3", "+tries=1", "fresh.cursor.sh", "A"])
    assert "edge.cursor.sh." in udp.stdout and FRESH_IP in udp.stdout, udp.stdout
    assert "unexpected source" not in udp.stdout + udp.stderr
    tcp = job.run(["dig", "+tcp", "+time=3", "+tries=1", "direct.cursor.sh", "A"])
    assert DIRECT_IP in tcp.stdout, tcp.stdout
    assert any(name == "direct.cursor.sh" for name, _ in dns_server.queries["tcp"])
    getent = job.run(["getent", "ahostsv4", "alias.example.org"])
    assert ALIASED_IP in getent.stdout, getent.stdout
    py = job.python("import json, socket; print(json.dumps(socket.gethostbyname_ex('fresh.cursor.sh')))")
    assert py == ["edge.cursor.sh", ["fresh.cursor.sh"], [FRESH_IP]]

    # Every query came from cordond (the job's went to the proxy), and each capture name added
    # its addresses, the CNAME chain's end included when only that end is Cursor's.
    assert all(peer[0] == "127.0.0.1" or peer[0].startswith("127.") for _, peer in dns_server.queries["udp"])
    have = targets(d)
    assert {f"{FRESH_IP}/32", f"{DIRECT_IP}/32", f"{ALIASED_IP}/32"} <= have, have
    entries = journal.wait_for(d.pid, count=3, CORDON_EVENT="dns_capture")
    chains = {e["CORDON_HOST"]: e["CORDON_CNAME_CHAIN"] for e in entries}
    assert chains["alias.example.org"] == "alias.example.org,api9.cursor.sh"
    tcp_entry = [e for e in entries if e["CORDON_HOST"] == "direct.cursor.sh"]
    assert tcp_entry and tcp_entry[0]["CORDON_PID"].isdigit() and tcp_entry[0]["CORDON_COMM"]  # a dig thread


@pytest.mark.parametrize("server", [NOBODY_IP, "::1"])
def test_a_resolver_other_than_the_systems_is_proxied_too(cordond, cgroups, journal, tmp_path, dns_server, stand_in,
                                                          server):
    d = dns_cordond(cordond)
    job = DnsJob(cgroups, tmp_path)
    query = build_query("direct.cursor.sh").hex()
    for mode in ("sendto", "connected", "tcp"):
        got = job.python(ASK, server, 53, mode, query)
        rcode, records = parse_answer(bytes.fromhex(got["answer"]))
        assert rcode == 0 and records == [("direct.cursor.sh", A, DIRECT_IP)], (mode, got)
        # The answer reads as coming from the resolver the job asked (glibc drops others).
        if "source" in got:
            assert got["source"] == [server, 53], (mode, got)
        if "peer" in got:
            assert got["peer"] == [server, 53], (mode, got)
    assert f"{DIRECT_IP}/32" in targets(d)
    assert d.status()["counters"]["dns_reply_rewritten"] >= 2


def test_answers_for_other_names_pass_unchanged_and_add_nothing(cordond, cgroups, journal, tmp_path, dns_server,
                                                                stand_in):
    d = dns_cordond(cordond)
    before = targets(d)
    job = DnsJob(cgroups, tmp_path)
    for name in ("other.example.org", "missing.example.org"):
        query = build_query(name)
        got = job.python(ASK, DNS_IP, 53, "sendto", query.hex())
        assert bytes.fromhex(got["answer"]) == answer(query)  # byte for byte what the server said
    assert targets(d) == before
    time.sleep(0.3)
    assert not journal.entries(d.pid, CORDON_EVENT="dns_capture")


def test_a_learned_address_expires_after_ttl_and_retain_unless_a_connection_lives(cordond, cgroups, journal,
                                                                                  tmp_path, dns_server, stand_in):
    d = dns_cordond(cordond, extra_capture="  refresh_min_seconds: 1\n  retain_seconds: 2\n")
    job = DnsJob(cgroups, tmp_path)
    # short.cursor.sh: TTL 1, nobody connects. held.cursor.sh: TTL 1, a connection stays open.
    job.python(ASK, DNS_IP, 53, "sendto", build_query("short.cursor.sh").hex())
    holder = job.spawn([PYTHON, "-c", r"""
import socket, sys, time
ip = socket.gethostbyname("held.cursor.sh")
s = socket.create_connection((ip, 443), timeout=5)
print("connected", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "connected"
    started = time.monotonic()
    assert {f"{SHORT_IP}/32", f"{HELD_IP}/32"} <= targets(d)
    deadline = started + 10
    while f"{SHORT_IP}/32" in targets(d):
        assert time.monotonic() < deadline, "short.cursor.sh's address never expired"
        time.sleep(0.2)
    assert time.monotonic() - started >= 2.5  # TTL (1 s) + retain (2 s), give or take the first poll
    removed = journal.wait_for(d.pid, CORDON_EVENT="capture_update", CORDON_REMOVED=SHORT_IP)
    assert removed
    time.sleep(1.0)
    assert f"{HELD_IP}/32" in targets(d)  # its connection still lives
    holder.stdin.close()
    holder.wait(timeout=10)
    deadline = time.monotonic() + 10
    while f"{HELD_IP}/32" in targets(d):
        assert time.monotonic() < deadline, "held.cursor.sh's address outlived its connection"
        time.sleep(0.2)


def test_dns_can_pass_while_cordond_is_down_if_the_policy_says_so(cordond, cgroups, journal, tmp_path, dns_server):
    d = dns_cordond(cordond, extra_capture="  dns_pass_when_down: true\n")
    d.stop()
    job = DnsJob(cgroups, tmp_path)
    got = job.python(ASK, DNS_IP, 53, "sendto", build_query("direct.cursor.sh").hex())
    assert got["source"] == [DNS_IP, 53]
    assert parse_answer(bytes.fromhex(got["answer"]))[1] == [("direct.cursor.sh", A, DIRECT_IP)]


def test_dns_is_refused_not_leaked_while_cordond_is_down(cordond, cgroups, journal, tmp_path, dns_server):
    """Fail closed: with cordond stopped, an enforced job's DNS is refused at once rather than
    answered unseen; unenforced cgroups are unaffected."""
    d = dns_cordond(cordond)
    d.stop()
    job = DnsJob(cgroups, tmp_path)
    r = job.run([PYTHON, "-c", ASK, DNS_IP, "53", "sendto", build_query("direct.cursor.sh").hex()], check=False)
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    other = job.python(ASK, DNS_IP, 53, "sendto", build_query("direct.cursor.sh").hex(), child="other")
    assert parse_answer(bytes.fromhex(other["answer"]))[1] == [("direct.cursor.sh", A, DIRECT_IP)]
