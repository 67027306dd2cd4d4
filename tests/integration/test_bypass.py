"""The bypass suite (issue #7): a job tries every way around cordon it has.

Every attempt runs as an unprivileged user (nobody) in the enforced cgroup, unless a row needs
root, against the Cursor stand-in. Each must be intercepted (a journal entry, a leaf from
cordon's CA) or refused (an errno, a TLS alert), and none may reach the stand-in unseen.

"Unseen" is judged by a witness of its own: the stand-in sits behind a `Tap`, a TCP listener
that asks the kernel (sock_diag) about every connection it accepts, at once: the connecting
socket's cgroup and SO_MARK. Every connection must come from cordond's cgroup with cordond's
upstream mark, and where cordond lives to journal it, be a `CORDON_UPSTREAM_LOCAL` of its
journal. A job's own socket reaching the stand-in would show its own cgroup there.

The rows of issue #7, the test here that makes each attempt, and (in brackets) where the
same ground is covered in more depth:

- IPv4, IPv6, v4-mapped IPv6: test_tls_to_cursor_is_intercepted[ipv4, ipv6, v4-mapped]
  (test_redirect, test_intercept). Also connects the hooks see another way, TCP Fast Open
  (connect inside sendto) and MPTCP: test_fast_open_and_mptcp_connects_are_caught.
- UDP/443: test_udp_443_is_refused (test_redirect, test_strict).
- An address the host never resolved, learned by the DNS proxy:
  test_an_address_only_dns_named_is_intercepted_first_time (test_dns); caught by strict mode:
  test_strict_mode_catches_cursor_at_an_address_nobody_resolved (test_strict).
- A resolver other than the system's: test_a_resolver_of_the_jobs_choosing_never_hears_the_query
  [sendto, connected, tcp] (test_dns).
- Plain HTTP on port 80: test_plain_http_naming_cursor_is_refused[targets, strict] (test_strict).
- h2c with prior knowledge: test_h2c_with_prior_knowledge_is_refused[targets, strict] (test_strict).
- A non-target SNI to a target address (domain fronting):
  test_a_foreign_sni_on_cursors_address_is_refused (test_intercept).
- Setting SO_MARK: test_so_mark_does_not_exempt_a_job (test_redirect).
- Detaching programs or writing maps: test_the_job_cannot_detach_programs_or_touch_maps, and
  test_a_pin_directory_made_by_the_job_is_not_trusted (a bypass this suite found where
  /sys/fs/bpf is world-writable, fixed: cordond takes such a directory back).
- Reading the CA key, the recording key or the recordings:
  test_the_job_cannot_read_keys_or_recordings (test_recording and test_ca check the modes).
- Control-socket commands other than enroll: test_the_job_may_only_enroll_on_the_control_socket
  (test_redirect, test_identity).
- A container in its own network namespace:
  test_a_container_in_its_own_network_namespace_is_relayed_or_refused (test_containers).
- kill -9 cordond during traffic: test_kill_9_during_traffic_lets_nothing_through_and_recovers
  (test_lifecycle, test_recording).
"""
import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import CORDONCTL, NOBODY, PYTHON
import test_containers as containers
from test_containers import host_and_container  # noqa: F401  (fixture)
from test_dns import build_query, encode_name, parse_answer, read_name
from test_intercept import entries, tls_yaml, work  # noqa: F401  (work: certificates, descriptors, npm packages)
from test_standin import CLIENT as CLIENT_MJS, CURSOR_HOSTS, Standin

# This file's addresses: 127.77.150.0/24, and fd00:c0d0:150::1 on lo while the module runs.
CURSOR_IP = "127.77.150.1"       # Cursor's address: a capture target (CIDR); a tap in front of the stand-in
CURSOR_IP6 = "fd00:c0d0:150::1"  # Cursor's IPv6 address: a capture target too
MAPPED_IP = "::ffff:" + CURSOR_IP
LEARNED_IP = "127.77.150.3"      # edge42.cursor.sh: an address only DNS ever names
UNRESOLVED_IP = "127.77.150.4"   # Cursor's names at an address nobody resolved (strict capture)
PLAIN_IP = "127.77.150.5"        # not a target: plain HTTP under strict capture
DNS_IP = "127.77.150.53"         # the system's resolver (the job's resolv.conf, cordond's dns_upstream)
ROGUE_DNS_IP = "127.77.150.99"   # a resolver the job picks for itself
STANDIN_IP = "127.77.150.100"    # the stand-in itself, behind the taps; jobs never name it

FAMILIES = {"ipv4": CURSOR_IP, "ipv6": CURSOR_IP6, "v4-mapped": MAPPED_IP}
CAPTURE_HOSTS = ["*.cursor.sh", "*.cursor.com"]  # patterns only: nothing is resolved on the real network
MARK = 0xc0d0                                    # cordond's default upstream mark
ROOT = 0                                         # for the few attempts a root job makes


# --- the witness: who connected to "Cursor" ------------------------------------------------------

NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLMSG_ERROR, NLM_F_REQUEST = 4, 20, 2, 1
INET_DIAG_MARK, INET_DIAG_CGROUP_ID = 15, 21


def _diag_addr(family, ip):
    return socket.inet_pton(family, ip).ljust(16, b"\0")


def socket_owner(family, local, remote):
    """The cgroup id and SO_MARK of the TCP socket at `local` connected to `remote` (each
    (ip, port)), as the kernel's sock_diag says; None if that socket is already gone."""
    sockid = (struct.pack("!HH", local[1], remote[1]) + _diag_addr(family, local[0]) +
              _diag_addr(family, remote[0]) + struct.pack("=III", 0, 0xffffffff, 0xffffffff))
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xffffffff) + sockid
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req, (0, 0))
        data = nl.recv(65536)
    if struct.unpack_from("=H", data, 4)[0] == NLMSG_ERROR:
        return None
    msg = data[16:struct.unpack_from("=I", data)[0]]
    owner, off = {"cgroup": None, "mark": None}, 72  # struct inet_diag_msg, then attributes
    while off + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, off)
        if length < 4:
            break
        if kind == INET_DIAG_MARK:
            owner["mark"] = struct.unpack_from("=I", msg, off + 4)[0]
        elif kind == INET_DIAG_CGROUP_ID:
            owner["cgroup"] = struct.unpack_from("=Q", msg, off + 4)[0]
        off += (length + 3) & ~3
    return owner


class Tap:
    """A TCP listener where the job thinks Cursor is. It records every connection it accepts,
    with its owner (cgroup, mark) asked of the kernel right away, then forwards the bytes to the
    stand-in, or hands the connection to `handler`."""

    def __init__(self, host, port, handler=None):
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(256)
        self.host, self.port, self.handler = host, port, handler or self._forward
        self.peers = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            owner = socket_owner(self.family, peer[:2], conn.getsockname()[:2])
            self.peers.append({"peer": peer[:2], **(owner or {"cgroup": None, "mark": None})})
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            with conn:
                self.handler(conn)
        except OSError:
            pass

    @staticmethod
    def _forward(conn):
        with socket.create_connection((STANDIN_IP, 443), timeout=30) as up:
            def pump(src, dst):
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            t = threading.Thread(target=pump, args=(up, conn), daemon=True)
            t.start()
            pump(conn, up)
            t.join(timeout=30)

    def name(self, peer):
        return ("[%s]:%d" if self.family == socket.AF_INET6 else "%s:%d") % tuple(peer)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)


def http_ok(conn):
    """A plain HTTP server's answer: what a leak on port 80 would get."""
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")


class UdpWitness:
    """UDP sockets where QUIC to Cursor would land: records every datagram."""

    def __init__(self, *addrs):
        self.socks, self.datagrams = [], []
        for host, port in addrs:
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, port))
            s.settimeout(0.2)
            self.socks.append(s)

    def drain(self):
        for s in self.socks:
            try:
                while True:
                    self.datagrams.append(s.recvfrom(65535))
            except OSError:
                pass
        return self.datagrams

    def close(self):
        for s in self.socks:
            s.close()


# --- the world: the stand-in, Cursor's addresses, cordond, a job ---------------------------------

@pytest.fixture(scope="module")
def standin(work):
    s = Standin(work, STANDIN_IP)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ipv6_address():
    """Cursor's IPv6 address on lo (a ULA of this file's own), removed again afterwards."""
    present = subprocess.run(["ip", "-6", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
    assert CURSOR_IP6 not in present, f"{CURSOR_IP6} is already on lo: another run of this file?"
    subprocess.run(["ip", "-6", "addr", "add", f"{CURSOR_IP6}/128", "dev", "lo", "nodad"], check=True)
    try:
        yield CURSOR_IP6
    finally:
        subprocess.run(["ip", "-6", "addr", "del", f"{CURSOR_IP6}/128", "dev", "lo"], check=True)


class Job:
    """Runs argv the way a CI job runs: as nobody (or `user`) in the enforced cgroup, on a host
    where cordon is installed (its CA in the OS store and NODE_EXTRA_CA_CERTS), seeing Cursor's
    names at CURSOR_IP (/etc/hosts) and asking DNS_IP (/etc/resolv.conf), both bind-mounted in a
    private mount namespace."""

    def __init__(self, cgroups, d, tmp, cursor_ip=CURSOR_IP):
        self.cgroups = cgroups
        self.ca = tmp / "cordon-ca.crt"
        shutil.copy(d.state_dir / "ca" / "ca.crt", self.ca)
        self.bundle = tmp / "ca-certificates.crt"
        self.bundle.write_bytes(open("/etc/ssl/certs/ca-certificates.crt", "rb").read() + self.ca.read_bytes())
        self.hosts = tmp / "hosts"
        names = f"{cursor_ip} {' '.join(CURSOR_HOSTS)}\n" if cursor_ip else ""
        self.hosts.write_text("127.0.0.1 localhost\n" + names)
        self.resolv = tmp / "resolv.conf"
        self.resolv.write_text(f"nameserver {DNS_IP}\noptions timeout:2 attempts:1\n")
        for f in (self.ca, self.bundle, self.hosts, self.resolv):
            os.chmod(f, 0o644)

    def spawn(self, argv, user=NOBODY, child="job", stdin=subprocess.DEVNULL):
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && '
                   'mount --bind "$2" /etc/ssl/certs/ca-certificates.crt && shift 2 && exec "$@"',
                   str(self.hosts), str(self.resolv), str(self.bundle)]
        env = ["env", f"NODE_EXTRA_CA_CERTS={self.ca}", "HOME=/tmp"]
        if user is not None:
            env = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + env
        return self.cgroups.spawn(child, wrapped + env + list(map(str, argv)), stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, errors="replace")

    def run(self, argv, user=NOBODY, check=True, timeout=60, child="job"):
        p = self.spawn(argv, user=user, child=child)
        out, err = p.communicate(timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{argv} exited {p.returncode}\nstdout: {out}\nstderr: {err}")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def python(self, code, *args, user=NOBODY, child="job"):
        r = self.run([PYTHON, "-c", code, *args], user=user, child=child)
        return json.loads(r.stdout)


class World:
    def __init__(self, cgroups, journal, d, job, taps):
        self.cgroups, self.journal, self.d, self.job, self.taps = cgroups, journal, d, job, taps

    def only_cordond_reached_cursor(self, pids=None, journaled=True):
        """The witness: every connection any tap accepted was cordond's upstream socket, by the
        kernel's account (its cgroup, its mark), and each is a CORDON_UPSTREAM_LOCAL in the
        connection_close entries of the cordonds `pids` (default: this one). `journaled=False`
        (a cordond that died mid-connection writes no close entry) asks the journal only about
        sockets the kernel could no longer describe. Returns how many connections it saw."""
        cordond_cgroup = os.stat(self.cgroups.base / "daemon").st_ino
        peers = [(tap.name(p["peer"]), p) for tap in self.taps for p in tap.peers]
        strangers = [(name, p) for name, p in peers
                     if p["cgroup"] is not None and (p["cgroup"], p["mark"]) != (cordond_cgroup, MARK)]
        assert not strangers, f"reached the stand-in without cordond (cordond's cgroup is {cordond_cgroup}): " \
                              f"{strangers}"
        vouch = {name for name, p in peers if journaled or p["cgroup"] is None}
        deadline = time.monotonic() + 10
        while True:
            relayed = {e.get("CORDON_UPSTREAM_LOCAL") for pid in (pids or [self.d.pid])
                       for e in self.journal.entries(pid, CORDON_EVENT="connection_close")}
            if vouch <= relayed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert vouch <= relayed, f"the stand-in saw connections cordond did not journal: {vouch - relayed}"
        return len(peers)

    def close_taps(self):
        for tap in self.taps:
            tap.close()


STRICT = "  mode: all-tls\n  strict_exempt_cidrs: [\"169.254.0.0/16\"]\n"  # loopback is not exempt here


@pytest.fixture
def world(cgroups, cordond, journal, tmp_path, standin, ipv6_address, work):
    """Factory: cordond capturing Cursor's addresses (or, `mode="strict"`, every address), taps
    on Cursor's addresses (443 IPv4 and IPv6, 80 IPv4, or `taps`), and a job. cordond records
    (the default policy's recording section) and enforces the `job` cgroup only."""
    made = []

    def start(mode="targets", capture_yaml="", taps=((CURSOR_IP, 443), (CURSOR_IP6, 443), (CURSOR_IP, 80)),
              cursor_ip=CURSOR_IP):
        cidrs = [f"{CURSOR_IP}/32", f"{CURSOR_IP6}/128"] if mode == "targets" else []
        d = cordond(cidrs, ports=(443, 80), quic_ports=(443,), hosts=CAPTURE_HOSTS, tls_yaml=tls_yaml(work),
                    capture_yaml=(STRICT if mode == "strict" else "") + capture_yaml)
        w = World(cgroups, journal, d, Job(cgroups, d, tmp_path, cursor_ip),
                  [Tap(host, port, http_ok if port == 80 else None) for host, port in taps])
        made.append(w)
        return w

    yield start
    for w in made:
        w.close_taps()


# --- what a job runs -----------------------------------------------------------------------------

# Connect to an address, speak TLS for a name trusting cordon's CA only, GET /. A response means
# cordond intercepted: nothing else holds a leaf from that CA. A name of "-": no SNI, no checks.
TLS_GET = r"""
import errno, json, socket, ssl, sys
host, port, sni, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sni = None if sni == "-" else sni
out = {"pid": __import__("os").getpid()}
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(10)
if len(sys.argv) > 5:  # SO_MARK first (root only)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[5], 0))
try:
    s.connect((host, port))
except OSError as e:
    out["connect"] = errno.errorcode.get(e.errno, str(e))
    print(json.dumps(out)); sys.exit()
out["connect"], out["peer"] = "ok", list(s.getpeername()[:2])
ctx = ssl.create_default_context(cafile=cafile) if sni else ssl._create_unverified_context()
ctx.set_alpn_protocols(["http/1.1"])
try:
    t = ctx.wrap_socket(s, server_hostname=sni)
    t.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (sni or host)).encode())
    data = b""
    while chunk := t.recv(65536):
        data += chunk
    out["response"] = data.decode(errors="replace")
except ssl.SSLError as e:
    out["tls"] = e.reason or str(e)
except OSError as e:
    out["tls"] = errno.errorcode.get(e.errno, str(e)) if e.errno else repr(e)
print(json.dumps(out))
"""


def tls_get(w, host, sni="api2.cursor.sh", user=NOBODY, port=443, mark=None):
    return w.job.python(TLS_GET, host, port, sni, w.job.ca, *([hex(mark)] if mark is not None else []), user=user)


def intercepted(got):
    return got.get("connect") == "ok" and got.get("response", "").startswith("HTTP/1.1 200") and \
        "stand-in" in got["response"]


def opened_by(journal, d, pid, count=1):
    found = [e for e in entries(journal, d, "connection_open", count=count) if e["CORDON_PID"] == str(pid)]
    assert found, f"no connection_open entry for pid {pid}:\n{d.log_text()[-3000:]}"
    return found


# --- IPv4, IPv6, v4-mapped -----------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_tls_to_cursor_is_intercepted(world, journal, family):
    """Deeper: test_redirect (identity, getpeername, ::1 and a veth peer), test_intercept (every
    client and protocol)."""
    w = world()
    got = tls_get(w, FAMILIES[family])
    assert intercepted(got), got
    assert got["peer"] == [FAMILIES[family], 443]  # the job sees the peer it asked for
    e = opened_by(journal, w.d, got["pid"])[0]
    assert e["CORDON_MODE"] == "intercept" and e["CORDON_UID"] == str(NOBODY), e
    assert e["CORDON_DST"] == (f"[{CURSOR_IP6}]:443" if family == "ipv6" else f"{CURSOR_IP}:443"), e
    assert e["CORDON_CGROUP"] == w.cgroups.path("job")
    if family == "ipv4":
        # A real client, by name, trusting the OS store the way `cordonctl ca install` sets it up.
        r = w.job.run(["curl", "-sS", "--max-time", "10", "https://api2.cursor.sh/"])
        assert r.stdout.startswith("hello from the api2.cursor.sh stand-in"), r.stdout
        assert len(entries(journal, w.d, "request", count=2)) >= 2
    assert w.only_cordond_reached_cursor() >= 1


# TCP Fast Open connects inside sendto(MSG_FASTOPEN); MPTCP connects a subflow underneath.
# Plain bytes on port 80: captured, then refused as not TLS (missing_sni: refuse).
SIDE_DOOR = r"""
import errno, json, socket, sys
how, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
out = {"pid": __import__("os").getpid()}
try:
    if how == "fastopen":
        s = socket.socket(fam, socket.SOCK_STREAM)  # blocking: sendto waits for the handshake
        s.sendto(b"GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n", socket.MSG_FASTOPEN, (host, port))
        s.settimeout(5)
    else:
        s = socket.socket(fam, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
        s.settimeout(5)
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n")
    out["sent"] = True
    out["reply"] = s.recv(100).decode(errors="replace")
except OSError as e:
    out["error"] = errno.errorcode.get(e.errno, str(e))
print(json.dumps(out))
"""


@pytest.mark.parametrize("how", ["fastopen", "mptcp"])
def test_fast_open_and_mptcp_connects_are_caught(world, journal, how):
    """Not rows of the issue: two other ways into connect() that the hooks must see too."""
    w = world()
    got = w.job.python(SIDE_DOOR, how, CURSOR_IP, 80)
    assert not got.get("reply"), got  # the stand-in's "ok" never came back
    e = opened_by(journal, w.d, got["pid"])[0]
    assert e["CORDON_MODE"] == "refused" and e["CORDON_DST"] == f"{CURSOR_IP}:80", (got, e)
    assert all(tap.peers == [] for tap in w.taps)
    assert w.d.status()["counters"]["redirected"] == 1


# --- UDP/443 -------------------------------------------------------------------------------------

UDP = r"""
import errno, json, socket, sys
host, port, decoy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
decoy = "::1" if fam == socket.AF_INET6 else decoy
def attempt(f):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        f(s)
        return "sent"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
print(json.dumps({
    "connect": attempt(lambda s: (s.connect((host, port)), s.send(b"quic initial"))),
    "sendto": attempt(lambda s: s.sendto(b"quic initial", (host, port))),
    "sendmsg": attempt(lambda s: s.sendmsg([b"quic", b" initial"], [], 0, (host, port))),
    # Connected elsewhere first, then an explicit destination on the same socket.
    "redirected": attempt(lambda s: (s.connect((decoy, 4433)), s.sendto(b"quic initial", (host, port)))),
}))
"""


def test_udp_443_is_refused(world):
    """QUIC: connect, sendto, sendmsg, and sendto past a connected socket's own peer, IPv4, IPv6
    and v4-mapped. Deeper: test_redirect (other ports, other cgroups), test_strict (any address)."""
    w = world()
    witness = UdpWitness((CURSOR_IP, 443), (CURSOR_IP6, 443))
    try:
        for family, addr in FAMILIES.items():
            got = w.job.python(UDP, addr, 443, PLAIN_IP)
            assert got == {"connect": "EPERM", "sendto": "EPERM", "sendmsg": "EPERM", "redirected": "EPERM"}, \
                (family, got)
        time.sleep(0.3)
        assert witness.drain() == []
    finally:
        witness.close()
    assert w.d.status()["counters"]["refused_quic"] == 12
    w.only_cordond_reached_cursor()


# --- addresses nobody resolved, and resolvers of the job's choosing ------------------------------

A, CNAME = 1, 5
ZONE = {"repo42.cursor.sh": (CNAME, "edge42.cursor.sh"), "edge42.cursor.sh": (A, LEARNED_IP)}


class Resolver:
    """An authoritative server for ZONE over UDP and TCP on `ip`:53 that keeps every question
    it was asked."""

    def __init__(self, ip):
        self.queries = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((ip, 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((ip, 53))
        self.tcp.listen(16)
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._udp, self._tcp)]
        for t in self.threads:
            t.start()

    def answer(self, query):
        qid, flags = struct.unpack("!HH", query[:4])
        name, off = read_name(query, 12)
        self.queries.append(name)
        records, current = b"", name.lower()
        count = 0
        while current in ZONE:
            kind, value = ZONE[current]
            rdata = encode_name(value) if kind == CNAME else socket.inet_aton(value)
            records += encode_name(current) + struct.pack("!HHIH", kind, 1, 30, len(rdata)) + rdata
            count += 1
            current = value if kind == CNAME else None
        rcode = 0 if count else 3
        return (struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, count, 0, 0) +
                query[12:off + 4] + records)

    def _udp(self):
        while True:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            try:
                self.udp.sendto(self.answer(data), peer)
            except (OSError, IndexError, struct.error):
                pass

    def _tcp(self):
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    n = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
                    reply = self.answer(conn.recv(n, socket.MSG_WAITALL))
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except (OSError, IndexError, struct.error):
                    pass

    def close(self):
        for s in (self.udp, self.tcp):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def resolvers():
    system, rogue = Resolver(DNS_IP), Resolver(ROGUE_DNS_IP)
    yield system, rogue
    system.close()
    rogue.close()


def dns_world(world):
    # Nothing names LEARNED_IP but DNS: no CIDR, no host cordond resolves, not in /etc/hosts.
    return world(capture_yaml=f"  dns_upstream: \"{DNS_IP}:53\"\n", cursor_ip=None,
                 taps=((LEARNED_IP, 443), (CURSOR_IP, 443), (CURSOR_IP6, 443)))


def targets(d):
    return {t["cidr"] for t in d.status()["capture"]["targets"]}


def test_an_address_only_dns_named_is_intercepted_first_time(world, journal, resolvers):
    """Deeper: test_dns.py (CNAME chains, TCP, expiry, no proxy as the control)."""
    w = dns_world(world)
    assert f"{LEARNED_IP}/32" not in targets(w.d)
    # The job looks the name up with its ordinary resolver and connects at once.
    r = w.job.run(["curl", "-sS", "--max-time", "10", "https://repo42.cursor.sh/"])
    assert r.stdout.startswith("hello from the") and "stand-in" in r.stdout, r.stdout
    captured = entries(journal, w.d, "dns_capture")[0]
    assert captured["CORDON_CNAME_CHAIN"] == "repo42.cursor.sh,edge42.cursor.sh", captured
    assert captured["CORDON_ADDED"] == LEARNED_IP
    e = entries(journal, w.d, "connection_open")[0]
    assert e["CORDON_MODE"] == "intercept" and e["CORDON_DST"] == f"{LEARNED_IP}:443", e
    assert e["CORDON_UID"] == str(NOBODY) and e["CORDON_COMM"] == "curl"
    assert resolvers[0].queries and resolvers[1].queries == []
    assert w.only_cordond_reached_cursor() == 1


# Ask a resolver directly: sendto on an unconnected socket, a connected UDP socket, TCP. Then
# connect to what it answered, speaking TLS for the name.
ASK_AND_CONNECT = r"""
import errno, json, socket, ssl, struct, sys
server, mode, query, name, cafile = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4], sys.argv[5]
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
out = {}
try:
    if mode == "tcp":
        s = socket.create_connection((server, 53), timeout=5)
        s.sendall(struct.pack("!H", len(query)) + query)
        data = s.recv(struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0], socket.MSG_WAITALL)
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(5)
        if mode == "connected":
            s.connect((server, 53))
            s.send(query)
        else:
            s.sendto(query, (server, 53))
        data, source = s.recvfrom(65535)
        out["source"] = list(source[:2])
except OSError as e:
    print(json.dumps({"error": errno.errorcode.get(e.errno, repr(e))})); sys.exit()
out["answer"] = data.hex()
rdata = data[-4:]  # the chain ends with the A record
ip = socket.inet_ntoa(rdata)
ctx = ssl.create_default_context(cafile=cafile)
try:
    t = ctx.wrap_socket(socket.create_connection((ip, 443), timeout=5), server_hostname=name)
    t.sendall(b"GET / HTTP/1.1\r\nHost: " + name.encode() + b"\r\nConnection: close\r\n\r\n")
    out["response"] = t.recv(200).decode(errors="replace")
except (OSError, ssl.SSLError) as e:
    out["tls"] = repr(e)
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["sendto", "connected", "tcp"])
def test_a_resolver_of_the_jobs_choosing_never_hears_the_query(world, journal, resolvers, mode):
    """The job asks ROGUE_DNS_IP itself, hoping to learn Cursor's address where cordond does not
    look. Deeper: test_dns.py (::1, answers byte for byte, other names)."""
    w = dns_world(world)
    system, rogue = resolvers
    got = w.job.python(ASK_AND_CONNECT, ROGUE_DNS_IP, mode, build_query("repo42.cursor.sh").hex(),
                       "repo42.cursor.sh", w.job.ca)
    rcode, records = parse_answer(bytes.fromhex(got["answer"]))
    assert rcode == 0 and records[-1] == ("edge42.cursor.sh", A, LEARNED_IP), got
    if "source" in got:
        assert got["source"] == [ROGUE_DNS_IP, 53]  # seemingly from the resolver asked
    assert got.get("response", "").startswith("HTTP/1.1 200"), got
    assert rogue.queries == [], "the job's own resolver heard the question"
    assert system.queries == ["repo42.cursor.sh"]  # asked by cordond's proxy instead
    assert entries(journal, w.d, "dns_capture")[0]["CORDON_ADDED"] == LEARNED_IP
    e = entries(journal, w.d, "connection_open")[0]
    assert e["CORDON_MODE"] == "intercept" and e["CORDON_DST"] == f"{LEARNED_IP}:443", e
    assert w.only_cordond_reached_cursor() == 1


def test_strict_mode_catches_cursor_at_an_address_nobody_resolved(world, journal):
    """A hard-coded address (no DNS at all). Deeper: test_strict.py."""
    w = world(mode="strict", taps=((UNRESOLVED_IP, 443), (CURSOR_IP, 443)), cursor_ip=UNRESOLVED_IP)
    assert targets(w.d) == set()
    got = tls_get(w, UNRESOLVED_IP)
    assert intercepted(got), got
    e = opened_by(journal, w.d, got["pid"])[0]
    assert e["CORDON_MODE"] == "intercept" and e["CORDON_SNI"] == "api2.cursor.sh", e
    assert e["CORDON_DST"] == f"{UNRESOLVED_IP}:443"
    r = w.job.run(["curl", "-sS", "--max-time", "10", "https://api2.cursor.sh/"])
    assert r.stdout.startswith("hello from the api2.cursor.sh stand-in"), r.stdout
    assert w.only_cordond_reached_cursor() == 2


# --- plain HTTP, h2c, domain fronting ------------------------------------------------------------

def plain_world(world, mode):
    """Targets: Cursor's own address on port 80. Strict: a plain HTTP server elsewhere, asked for
    Cursor by name."""
    if mode == "targets":
        return world(), "http://api2.cursor.sh/", []
    w = world(mode="strict", taps=((PLAIN_IP, 80), (CURSOR_IP, 443)))
    return w, f"http://{PLAIN_IP}/", ["-H", "Host: api2.cursor.sh"]


@pytest.mark.parametrize("mode", ["targets", "strict"])
def test_plain_http_naming_cursor_is_refused(world, journal, mode):
    w, url, extra = plain_world(world, mode)
    r = w.job.run(["curl", "-sS", "--max-time", "10", *extra, url], check=False)
    assert r.returncode != 0 and "ok" not in r.stdout, r
    e = entries(journal, w.d, "connection_open")[0]
    assert e["CORDON_MODE"] == "refused" and e["CORDON_DST"].endswith(":80") and e["CORDON_COMM"] == "curl", e
    assert e["CORDON_REASON"] == ("plain HTTP to capture host api2.cursor.sh" if mode == "strict" else
                                  "not TLS: plaintext (a text protocol such as HTTP?), not TLS"), e
    assert all(tap.peers == [] for tap in w.taps)


@pytest.mark.parametrize("mode", ["targets", "strict"])
def test_h2c_with_prior_knowledge_is_refused(world, journal, mode):
    w, url, extra = plain_world(world, mode)
    r = w.job.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", *extra, url], check=False)
    assert r.returncode != 0, r
    e = entries(journal, w.d, "connection_open")[0]
    assert e["CORDON_MODE"] == "refused" and e["CORDON_DST"].endswith(":80"), e
    assert e["CORDON_REASON"] == ("HTTP/2 with prior knowledge (h2c) (strict capture)" if mode == "strict" else
                                  "not TLS: plaintext (a text protocol such as HTTP?), not TLS"), e
    assert all(tap.peers == [] for tap in w.taps)


def test_a_foreign_sni_on_cursors_address_is_refused(world, journal):
    """Domain fronting: Cursor's address, another site's name (and no name at all). The reverse,
    Cursor's SNI carrying another Host, is test_intercept's
    test_a_request_for_another_host_on_an_intercepted_connection_is_refused."""
    w = world()
    for host in (CURSOR_IP, CURSOR_IP6, MAPPED_IP):
        got = tls_get(w, host, sni="evil.example")
        assert got["connect"] == "ok" and "response" not in got and "DENIED" in got["tls"].upper(), got
    got = tls_get(w, CURSOR_IP, sni="-")
    assert got["connect"] == "ok" and "response" not in got, got
    found = entries(journal, w.d, "connection_open", count=4)
    reasons = sorted(e.get("CORDON_REASON", "") for e in found)
    assert all(e["CORDON_MODE"] == "refused" for e in found), found
    assert reasons == ["ClientHello without SNI"] + ["SNI evil.example is not a capture host"] * 3, reasons
    assert all(tap.peers == [] for tap in w.taps)


# --- SO_MARK -------------------------------------------------------------------------------------

SET_MARK = r"""
import errno, json, socket, sys
s = socket.socket()
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[1], 0))
    print(json.dumps("set"))
except OSError as e:
    print(json.dumps(errno.errorcode[e.errno]))
"""


def test_so_mark_does_not_exempt_a_job(world, journal):
    """cordond's upstream sockets carry its mark; the programs exempt the mark only from
    cordond's own cgroup in its own network namespace (bpf/cordon_decide.h, cordon_exempt).
    Also test_redirect's test_a_job_cannot_exempt_itself_with_the_upstream_mark (plain TCP)."""
    w = world()
    # Setting a mark needs CAP_NET_ADMIN (or CAP_NET_RAW) over the host's network namespace...
    assert w.job.python(SET_MARK, hex(MARK)) == "EPERM"
    # ...which "root" in a user namespace of the job's own does not have.
    r = w.job.run(["unshare", "--user", "--map-root-user", PYTHON, "-c", SET_MARK, hex(MARK)])
    assert json.loads(r.stdout) == "EPERM", r
    # Root in the enforced cgroup can set it, and is intercepted all the same: IPv4 and IPv6.
    for host in (CURSOR_IP, CURSOR_IP6):
        got = tls_get(w, host, user=ROOT, mark=MARK)
        assert intercepted(got), got
        e = opened_by(journal, w.d, got["pid"])[0]
        assert e["CORDON_MODE"] == "intercept" and e["CORDON_UID"] == "0", e
    assert w.d.status()["counters"]["redirected"] == 2
    assert w.only_cordond_reached_cursor() == 2


# --- detaching programs, writing maps ------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321  # x86_64
BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD = 7, 15


def bpf_ids(pin_dir):
    """{pin name: (kind, id)} of every object cordond pinned, read as root."""
    out = {}
    for name in sorted(os.listdir(pin_dir)):
        path = ctypes.create_string_buffer(os.path.join(pin_dir, name).encode())
        attr = ctypes.create_string_buffer(struct.pack("=QII", ctypes.addressof(path), 0, 0), 128)
        fd = libc.syscall(SYS_BPF, BPF_OBJ_GET, attr, 128)
        assert fd >= 0, (name, os.strerror(ctypes.get_errno()))
        try:
            info = ctypes.create_string_buffer(256)
            attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, 256, ctypes.addressof(info)), 128)
            assert libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, attr, 128) == 0, os.strerror(ctypes.get_errno())
            # bpf_map_info and bpf_link_info both start with (type, id).
            out[name] = ("map" if name.startswith("map_") else "link", struct.unpack_from("=II", info.raw)[1])
        finally:
            os.close(fd)
    return out


# Everything a job might try on the BPF side, by hand (no bpftool), each reported by its errno.
HANDS_OFF = r"""
import ctypes, errno, json, os, struct, sys
pin_dir, cgroup_root, job_cgroup, other_cgroup = sys.argv[1:5]
ids = json.loads(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(321, cmd, buf, 128)
    if r < 0:
        return errno.errorcode[ctypes.get_errno()]
    if cmd in (7, 13, 14, 30):  # these return a new fd
        os.close(r)
    return "ok"
def call(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def obj_get(path):
    p = ctypes.create_string_buffer(path.encode())
    return bpf(7, struct.pack("=QII", ctypes.addressof(p), 0, 0))
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
out = {
    "list pins": call(lambda: os.listdir(pin_dir)),
    "open map for writing": call(lambda: os.close(os.open(pin_dir + "/map_targets", os.O_RDWR))),
    "unlink a link": call(lambda: os.unlink(pin_dir + "/link_connect4")),
    "rename the pin dir": call(lambda: os.rename(pin_dir, pin_dir + ".gone")),
    "BPF_OBJ_GET map": obj_get(pin_dir + "/map_targets"),
    "BPF_OBJ_GET link": obj_get(pin_dir + "/link_connect4"),
    "BPF_MAP_GET_NEXT_ID": bpf(12, struct.pack("=II", 0, 0)),
    "BPF_PROG_GET_NEXT_ID": bpf(11, struct.pack("=II", 0, 0)),
    "BPF_LINK_GET_NEXT_ID": bpf(31, struct.pack("=II", 0, 0)),
}
for name, (kind, id) in ids.items():
    out[f"{kind.upper()}_GET_FD_BY_ID {name}"] = bpf(14 if kind == "map" else 30, struct.pack("=II", id, 0))
root = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
for name, attach_type in (("connect4", 10), ("connect6", 11), ("sendmsg4", 14), ("sock_ops", 3)):
    out[f"BPF_PROG_DETACH {name}"] = bpf(9, struct.pack("=IIII", root, 0, attach_type, 0))
# Leave the enforced cgroup: for an unenforced one, or the root.
out["move to another cgroup"] = call(lambda: write(other_cgroup + "/cgroup.procs", str(os.getpid())))
out["move to the root cgroup"] = call(lambda: write(cgroup_root + "/cgroup.procs", str(os.getpid())))
out["make a sub-cgroup"] = call(lambda: os.mkdir(job_cgroup + "/escape"))
print(json.dumps(out))
"""


def test_the_job_cannot_detach_programs_or_touch_maps(world, journal):
    """The pins, the BPF objects by id, the programs' attachments, the cgroup tree: the job
    reaches none of them, and everything is as it was afterwards."""
    w = world()
    pins_before = sorted(os.listdir(w.d.pin_dir))
    ids = bpf_ids(w.d.pin_dir)
    st = w.d.status()
    attached, targets_before = st["programs"]["attached"], targets(w.d)
    got = w.job.python(HANDS_OFF, w.d.pin_dir, w.cgroups.mount, w.cgroups.base / "job", w.cgroups.base / "other",
                       json.dumps(ids))
    # Detaching by program: the job has no program fd to name (below), so the kernel has nothing
    # to detach (EINVAL on this kernel; older ones check CAP_NET_ADMIN first: EPERM). cordond's
    # attachments are links, which BPF_PROG_DETACH never removes anyway.
    detach = {k: got.pop(k) for k in list(got) if k.startswith("BPF_PROG_DETACH")}
    assert len(detach) == 4 and set(detach.values()) <= {"EINVAL", "EPERM"}, detach
    # The pin directory is root's, 0700: nothing in it can be named, opened, unlinked or moved.
    expected = {"list pins": "EACCES", "open map for writing": "EACCES", "unlink a link": "EACCES",
                "rename the pin dir": "EPERM", "BPF_OBJ_GET map": "EACCES", "BPF_OBJ_GET link": "EACCES"}
    # Nor reached by id: that needs CAP_SYS_ADMIN.
    expected.update({f"BPF_{kind}_GET_NEXT_ID": "EPERM" for kind in ("MAP", "PROG", "LINK")})
    expected.update({f"{kind.upper()}_GET_FD_BY_ID {name}": "EPERM" for name, (kind, _) in ids.items()})
    # And the job cannot leave the enforced cgroup.
    expected.update({"move to another cgroup": "EACCES", "move to the root cgroup": "EACCES",
                     "make a sub-cgroup": "EACCES"})
    assert got == expected
    # cordonctl says no before it tries; had it tried, the kernel would have (above).
    r = w.d.ctl("detach", check=False, user=NOBODY)
    assert r.returncode == 1 and "detach is for root" in r.stderr, r
    # All still in place: the same pins naming the same objects, the programs attached, the
    # maps as cordond wrote them, and the next connection intercepted.
    assert sorted(os.listdir(w.d.pin_dir)) == pins_before and bpf_ids(w.d.pin_dir) == ids
    st = w.d.status()
    assert st["programs"]["attached"] == attached and len(attached) == 9, st["programs"]
    assert targets(w.d) == targets_before
    assert intercepted(tls_get(w, CURSOR_IP))
    assert w.only_cordond_reached_cursor() == 1


def bpffs_open_to_all():
    return os.stat("/sys/fs/bpf").st_mode & 0o002 != 0


def test_a_pin_directory_made_by_the_job_is_not_trusted(world, journal, cgroups):
    """The pin directory does not exist yet (a first start on a runner already running jobs,
    after `cordonctl detach`, after a fail-open stop, after a package remove and reinstall).
    The job makes it, cordond starts, the job unlinks what cordond pinned, cordond crashes:
    the job's next connection to Cursor must still be refused."""
    pin_dir = f"/sys/fs/bpf/{cgroups.name}"
    made = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                           "mkdir", "-m", "0777", pin_dir], capture_output=True, text=True)
    try:
        if made.returncode != 0:
            assert not bpffs_open_to_all(), made.stderr
            return  # the job cannot even make it: nothing to take over
        try:
            w = world()
        except AssertionError as refused:  # refusing to start on a directory it does not own is fine
            assert pin_dir in str(refused), refused
            return
        # cordond took the directory back before pinning into it.
        assert (os.stat(pin_dir).st_uid, os.stat(pin_dir).st_mode & 0o777) == (0, 0o700)
        unlinked = w.job.python("import json, os, sys\n"
                                "d = sys.argv[1]\n"
                                "out = {}\n"
                                "try:\n"
                                "    names = sorted(os.listdir(d))\n"
                                "except OSError as e:\n"
                                "    names, out['listdir'] = [], e.strerror\n"
                                "for n in names:\n"
                                "    try:\n"
                                "        os.unlink(os.path.join(d, n)); out[n] = 'unlinked'\n"
                                "    except OSError as e:\n"
                                "        out[n] = e.strerror\n"
                                "print(json.dumps(out))\n", pin_dir)
        w.d.proc.send_signal(signal.SIGKILL)
        w.d.proc.wait()
        got = tls_get(w, CURSOR_IP)
        assert got["connect"] == "EPERM", (got, f"the job unlinked: {unlinked}",
                                           f"pin dir: {oct(os.stat(pin_dir).st_mode)} uid {os.stat(pin_dir).st_uid}")
        w.only_cordond_reached_cursor(journaled=False)
    finally:
        if os.path.isdir(pin_dir):
            subprocess.run([str(CORDONCTL), "--pin-dir", pin_dir, "detach"], capture_output=True)
        if os.path.isdir(pin_dir):
            os.rmdir(pin_dir)


# --- keys and recordings -------------------------------------------------------------------------

# Each attempt reported by its errno: open for reading, list a directory, read cordond's memory.
READ_SECRETS = r"""
import ctypes, errno, json, os, sys
paths, pid = json.loads(sys.argv[1]), int(sys.argv[2])
def call(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def read(path):
    with open(path, "rb") as f:
        f.read(1)
out = {}
for what, path in paths.items():
    out[what] = call(lambda: os.listdir(path) if os.path.isdir(path) or what.endswith("/") else read(path))
out["/proc/cordond/mem"] = call(lambda: read(f"/proc/{pid}/mem"))
out["/proc/cordond/environ"] = call(lambda: read(f"/proc/{pid}/environ"))
out["/proc/cordond/fd/"] = call(lambda: os.listdir(f"/proc/{pid}/fd"))
out["/proc/cordond/map_files/"] = call(lambda: os.listdir(f"/proc/{pid}/map_files"))
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(64)
local, remote = iovec(ctypes.addressof(buf), 64), iovec(0x400000, 64)
n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
out["process_vm_readv"] = "ok" if n >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


def test_the_job_cannot_read_keys_or_recordings(world, journal):
    """The state directory (the CA and its key, the recording key, the recordings) is root's.
    Modes are checked in test_recording.py and test_ca.py; here the job tries to read."""
    w = world()
    assert intercepted(tls_get(w, CURSOR_IP))  # one recorded session, so there are recordings
    entries(journal, w.d, "connection_close")
    state = w.d.state_dir
    segments = []
    deadline = time.monotonic() + 10
    while not segments and time.monotonic() < deadline:
        segments = sorted((state / "recordings").glob("segment-*"))
        time.sleep(0.1)
    assert segments, sorted(p.name for p in (state / "recordings").iterdir())
    paths = {"state/": state, "ca/": state / "ca", "CA key": state / "ca" / "ca.key",
             "recording key": state / "recording.key", "recordings/": state / "recordings",
             "a segment": segments[0]}
    for path in paths.values():
        assert os.path.exists(path), path
    got = w.job.python(READ_SECRETS, json.dumps({k: str(v) for k, v in paths.items()}), str(w.d.pid))
    assert got == {**{what: "EACCES" for what in paths},
                   "/proc/cordond/mem": "EACCES", "/proc/cordond/environ": "EACCES", "/proc/cordond/fd/": "EACCES",
                   "/proc/cordond/map_files/": "EACCES", "process_vm_readv": "EPERM"}, got
    # cordonctl reads the same files, so it cannot show them to the job either.
    for args in (["sessions"], ["verify"], ["replay", "1"], ["export", "1", "--format", "json"]):
        r = w.d.ctl("--state-dir", str(state), *args, check=False, user=NOBODY)
        assert r.returncode != 0 and "ermission denied" in r.stderr + r.stdout, (args, r)
    r = w.d.ctl("--state-dir", str(state), "sessions", "--json")  # root, for contrast
    assert json.loads(r.stdout), r.stdout


# --- the control socket --------------------------------------------------------------------------

CONTROL = r"""
import json, socket, sys
path, requests = sys.argv[1], json.loads(sys.argv[2])
out = []
for request in requests:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    s.sendall((json.dumps(request) + "\n").encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    out.append(json.loads(data.splitlines()[0]))
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(sys.argv[3])
    metrics = "ok"
except OSError as e:
    metrics = e.strerror
print(json.dumps({"answers": out, "metrics socket": metrics}))
"""

ROOT_COMMANDS = [{"command": "status"}, {"command": "watch"}, {"command": "approvals"},
                 {"command": "approve", "id": "ap-0000000000"}, {"command": "deny", "id": "ap-0000000000"},
                 {"command": "identities"}, {"command": "metrics"}, {"command": "reload"}]


def test_the_job_may_only_enroll_on_the_control_socket(world, journal):
    """Deeper: test_redirect (status, per-user session cap, hostile requests), test_identity
    (enrollment itself, impersonation)."""
    w = world()
    metrics = str(w.d.policy.parent / "metrics.sock")
    requests = ROOT_COMMANDS + [{"command": "detach"}, {"command": "enroll", "token": "a.b.c"}]
    got = w.job.python(CONTROL, w.d.socket, json.dumps(requests), metrics)
    answers = dict(zip([r["command"] for r in requests], got["answers"]))
    for request in ROOT_COMMANDS:
        a = answers[request["command"]]
        assert a == {"ok": False, "error": f"permission denied: {request['command']} is for root"}, (request, a)
    assert answers["detach"] == {"ok": False, "error": "unknown command 'detach'"}  # pins only, root only (above)
    # enroll is heard (and refused on its merits: this cordond accepts no tokens), journaled as the job.
    assert answers["enroll"]["ok"] is False and "accepts no workload tokens" in answers["enroll"]["error"], answers
    e = entries(journal, w.d, "enroll")[0]
    assert e["CORDON_UID"] == str(NOBODY) and e["CORDON_RESULT"] == "refused", e
    assert got["metrics socket"] == "Permission denied"  # root only, 0600
    # The same through cordonctl, and as "root" of a user namespace of the job's own: the kernel
    # tells cordond the real uid.
    for args in (["status"], ["approvals"], ["identities"], ["metrics"], ["reload"], ["approve", "ap-0000000000"],
                 ["deny", "ap-0000000000"], ["watch", "--count", "1", "--seconds", "1"]):
        for wrap in ([], ["unshare", "--user", "--map-root-user"]):
            r = w.job.run(wrap + [CORDONCTL, "--socket", w.d.socket, *args], check=False)
            assert "permission denied" in r.stderr and r.stdout == "", (wrap, args, r)
            assert r.returncode != 0, (wrap, args, r)
    # Root of a container without a user namespace (its own PID namespace, uid 0 to the kernel)
    # given the socket to enroll: enroll and unenroll only, never root's commands.
    for args in (["approvals"], ["identities"], ["reload"], ["watch", "--count", "1", "--seconds", "1"]):
        r = w.job.run(["unshare", "--pid", "--fork", "--mount-proc", CORDONCTL, "--socket", w.d.socket, *args],
                      user=0, check=False)
        assert "permission denied" in r.stderr and r.returncode != 0, (args, r)
    r = w.job.run(["unshare", "--pid", "--fork", "--mount-proc", CORDONCTL, "--socket", w.d.socket, "unenroll"],
                  user=0)
    assert "was not enrolled" in r.stdout, r
    assert w.d.status()["ok"] is True  # and root, for contrast


# --- a container in its own network namespace ----------------------------------------------------

def test_a_container_in_its_own_network_namespace_is_relayed_or_refused(cgroups, cordond, upstream,
                                                                          host_and_container):
    """A docker-style container (veth, default route to the host): its connection to Cursor's
    address goes to cordond, never the direct way it has; QUIC and IPv6 are refused; and a
    container that puts cordond's host address on its own lo and listens there (root of its
    own user namespace can) does not get its jobs' connections. (test_containers: identity,
    DNS, restarts.)"""
    host, container = host_and_container
    with containers.inside(host):
        server = upstream(containers.CURSOR_IP, 80)
    d = containers.start_in_host(cordond, host)
    job = functools.partial(containers.in_container, cgroups, "job", container)
    res = job("peer", containers.CURSOR_IP, 80)
    assert res["reply"] == "ping\n" and server.peers[-1][0] != "10.77.161.2", server.peers
    assert job("udp", containers.CURSOR_IP, 443) == {"connect": "EPERM", "sendto": "EPERM"}
    # Root of the container takes cordond's address and port inside its own namespace.
    sh = ["nsenter", f"--net=/run/netns/{container}"]
    subprocess.run(sh + ["ip", "addr", "add", f"{containers.NETNS_LISTEN_IP}/32", "dev", "lo"], check=True)
    squatter = subprocess.Popen(sh + [PYTHON, "-c",
                                      "import socket\ns=socket.socket()\n"
                                      f"s.bind(('{containers.NETNS_LISTEN_IP}',1023));s.listen(8)\n"
                                      "s.settimeout(3)\nprint('listening',flush=True)\n"
                                      "try:\n s.accept();print('GOT A CONNECTION',flush=True)\n"
                                      "except socket.timeout:\n print('nothing',flush=True)\n"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "listening"
        assert job("connect-only", containers.CURSOR_IP, 80) == {"connected": False, "errno": "EPERM"}
        assert squatter.stdout.readline().strip() == "nothing"
    finally:
        squatter.kill()
        squatter.wait()
    assert len(server.peers) == 1
    counters = d.status()["counters"]
    assert counters["redirected_netns"] == 1 and counters["refused_netns"] >= 2, counters


# --- kill -9 during traffic ----------------------------------------------------------------------

# New connections, one after another, round the given addresses until stdin closes: each one's
# outcome on a line. A certificate that is not cordon's would mean the stand-in itself answered.
CONNECTOR = r"""
import errno, json, select, socket, ssl, sys, time
sni, cafile, hosts = sys.argv[1], sys.argv[2], sys.argv[3:]
ctx = ssl.create_default_context(cafile=cafile)
i = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    host = hosts[i % len(hosts)]
    i += 1
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect((host, 443))
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e))
    else:
        try:
            t = ctx.wrap_socket(s, server_hostname=sni)
            t.sendall(b"GET / HTTP/1.1\r\nHost: " + sni.encode() + b"\r\nConnection: close\r\n\r\n")
            result = "intercepted" if t.recv(100).startswith(b"HTTP/1.1 200") else "cut"
        except ssl.SSLCertVerificationError:
            result = "UNVERIFIED"
        except (OSError, ssl.SSLError):
            result = "cut"  # cordond died under it
    s.close()
    print(json.dumps({"t": time.monotonic(), "host": host, "result": result}), flush=True)
    time.sleep(0.02)
"""


def read_lines(p, into):
    def pump():
        for line in p.stdout:
            if line.strip():
                into.append(json.loads(line))
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def wait_until(predicate, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_kill_9_during_traffic_lets_nothing_through_and_recovers(world, journal, work):
    """A bidi chat streams and new connections keep coming (IPv4, IPv6, v4-mapped) while cordond
    is killed: the stream breaks, every connection in the gap is refused, none reaches the
    stand-in, and the restarted cordond adopts its pins and intercepts again; the recordings of
    both verify. Deeper: test_lifecycle (stop, kill, adoption, hijacked port), test_recording
    (verify), test_dns (DNS refused while down)."""
    w = world()
    chat_events, results = [], []
    # Messages further apart than mask.hold_ms (200 ms): closer ones are held back until the
    # client ends its side, and the chat would not stream through cordond.
    chat = w.job.spawn(["node", CLIENT_MJS, "--descriptors", work / "cursor.desc", "chat", "--prompt",
                        "keep talking", "--count", "100", "--pause-ms", "300"])
    connector = w.job.spawn([PYTHON, "-c", CONNECTOR, "api2.cursor.sh", w.job.ca, *FAMILIES.values()],
                            stdin=subprocess.PIPE)
    readers = [read_lines(chat, chat_events), read_lines(connector, results)]
    try:
        wait_until(lambda: len([e for e in chat_events if e["event"] == "recv"]) >= 5, "the chat to stream")
        wait_until(lambda: {r["host"] for r in results if r["result"] == "intercepted"} == set(FAMILIES.values()),
                   "intercepted connections on every address")
        old = w.d.pid
        entries(journal, w.d, "connection_open", count=4)  # the journal knows this cordond
        w.d.proc.send_signal(signal.SIGKILL)
        w.d.proc.wait()
        killed = time.monotonic()

        # The stream breaks: it does not carry on unseen.
        chat.wait(timeout=30)
        assert chat.returncode != 0 and chat_events[-1]["event"] == "error", chat_events[-3:]
        # The gap: refused on every address, by a real client too.
        for family, host in FAMILIES.items():
            assert tls_get(w, host)["connect"] == "EPERM", family
        r = w.job.run(["curl", "-sS", "--max-time", "5", "https://api2.cursor.sh/"], check=False)
        assert r.returncode == 7 and r.stdout == "", r  # couldn't connect
        wait_until(lambda: len([r for r in results if r["t"] > killed + 0.2]) >= 10, "attempts in the gap")

        starting = time.monotonic()
        w.d.start()
        restarted = time.monotonic()
        st = w.d.status()
        assert st["programs"]["adopted"] is True and len(st["programs"]["attached"]) == 9, st["programs"]
        assert entries(journal, w.d, "bpf_attach")[0]["CORDON_ADOPTED"] == "1"
        wait_until(lambda: len([r for r in results if r["t"] > restarted]) >= 15, "attempts after the restart")
    finally:
        connector.stdin.close()
        connector.wait(timeout=30)
        chat.kill()
        chat.wait()
        for t in readers:
            t.join(timeout=10)

    def outcomes(since, until):
        return {r["result"] for r in results if since < r["t"] < until}

    assert "UNVERIFIED" not in outcomes(0, float("inf")), results
    # Before the kill: intercepted. Around it: cut short, or refused.
    assert "intercepted" in outcomes(0, killed)
    assert outcomes(0, killed + 0.2) <= {"intercepted", "cut", "EPERM", "ECONNREFUSED", "ECONNRESET"}, results
    # The gap: refused at connect(), on every address.
    gap = [r for r in results if killed + 0.2 < r["t"] < starting]
    assert {r["result"] for r in gap} == {"EPERM"} and {r["host"] for r in gap} == set(FAMILIES.values()), gap
    assert outcomes(starting, restarted) <= {"EPERM", "intercepted"}, results
    # Once the restarted cordond answers: intercepted again, every address.
    after = [r for r in results if r["t"] > restarted]
    assert {r["result"] for r in after} == {"intercepted"} and {r["host"] for r in after} == set(FAMILIES.values()), \
        after
    # The kernel counted each refusal, in the maps the new cordond adopted.
    refused = len([r for r in results if r["result"] == "EPERM"]) + 3
    assert w.d.status()["counters"]["refused_no_listener"] >= refused
    # Nothing reached the stand-in but cordond: the killed one's and the new one's.
    intercepted_count = len([r for r in results if r["result"] == "intercepted"])
    assert w.only_cordond_reached_cursor(pids=[old, w.d.pid], journaled=False) >= intercepted_count

    # The recordings, the killed cordond's torn segment included, verify; the chat is in them.
    w.d.stop()
    r = w.d.ctl("--state-dir", str(w.d.state_dir), "verify", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    found = json.loads(w.d.ctl("--state-dir", str(w.d.state_dir), "sessions", "--json").stdout)
    found = found["sessions"] if isinstance(found, dict) else found
    assert any("StreamUnifiedChatWithTools" in rpc for s in found for rpc in s.get("rpcs", [])), found[:3]

