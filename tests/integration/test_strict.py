"""Strict capture (`capture.mode: all-tls`): every TCP connection an enforced job makes on a
captured port reaches cordond, whatever the address, and is decided by what it names: Cursor's
SNI is intercepted even at an address no resolver ever returned; other TLS passes through unread;
plain HTTP naming Cursor, and h2c whose host cannot be read, are refused; other plain HTTP
passes; UDP on a QUIC port is refused everywhere."""
import socket
import subprocess
import sys
import time

import pytest

from test_intercept import INTERCEPT_HOSTS, Jobs, entries, tls_yaml, work  # noqa: F401
from test_standin import Standin

# This file's addresses: 127.77.130.0/24. None of them is a capture target: no CIDR names them
# and no capture host resolves to them.
STANDIN_IP = "127.77.130.1"  # Cursor's names, at an address cordond was never told about
OTHER_IP = "127.77.130.2"    # other.example, TLS
PLAIN_IP = "127.77.130.3"    # a plain HTTP server on port 80
QUIC_IP = "127.77.130.4"
EXEMPT_IP = "127.77.130.5"   # a plain HTTP server in a range strict capture leaves alone


@pytest.fixture(scope="module")
def servers(work):
    standin = Standin(work, STANDIN_IP)
    certs = work / "certs"
    other = subprocess.Popen(["openssl", "s_server", "-quiet", "-accept", f"{OTHER_IP}:443", "-cert",
                              str(certs / "other.pem"), "-key", str(certs / "other.key"), "-www"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plain = [subprocess.Popen([sys.executable, "-m", "http.server", "80", "--bind", ip, "--directory", str(work)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for ip in (PLAIN_IP, EXEMPT_IP)]
    for ip, port in ((OTHER_IP, 443), (PLAIN_IP, 80), (EXEMPT_IP, 80)):
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((ip, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nothing listens on {ip}:{port}"
                time.sleep(0.05)
    yield standin
    for p in (other, *plain):
        p.terminate()
        p.wait()
    standin.stop()


@pytest.fixture
def strict(cgroups, cordond, servers, work, tmp_path):
    d = cordond([], ports=(443, 80), quic_ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls_yaml(work),
                # The tests' addresses are loopback, which the default exempts: exempt one only.
                capture_yaml=f"  mode: all-tls\n  strict_exempt_cidrs: [\"{EXEMPT_IP}/32\"]\n")
    jobs = Jobs(cgroups, d, work, tmp_path)
    jobs.map_hosts(STANDIN_IP)
    return d, jobs


def opened(journal, d, dst):
    return [e for e in entries(journal, d, "connection_open") if e.get("CORDON_DST") == dst]


def test_cursor_at_an_address_nobody_resolved_is_intercepted(strict, journal):
    d, jobs = strict
    events, _ = jobs.client("models")
    assert any(e["event"] == "response" for e in events), events
    e = opened(journal, d, f"{STANDIN_IP}:443")
    assert e and e[0]["CORDON_MODE"] == "intercept" and e[0]["CORDON_SNI"] == "api2.cursor.sh", e
    assert entries(journal, d, "request")[0]["CORDON_RPC"] == "aiserver.v1.AiService/AvailableModels"


def test_other_tls_passes_through_unread(strict, journal, work):
    d, jobs = strict
    r = jobs.run(["curl", "-sS", "--max-time", "10", "--cacert", str(work / "certs" / "ca.pem"),
                  "--resolve", f"other.example:443:{OTHER_IP}", "https://other.example/"])
    assert "s_server" in r.stdout or "<HTML>" in r.stdout.upper(), r.stdout
    e = opened(journal, d, f"{OTHER_IP}:443")
    assert e and e[0]["CORDON_MODE"] == "passthrough" and "strict capture" in e[0]["CORDON_REASON"], e


def test_plain_http_is_decided_by_its_host(strict, journal):
    d, jobs = strict
    # Another site over plain HTTP: through, unchanged.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                  f"http://{PLAIN_IP}/"])
    assert r.stdout == "200", r
    # Naming Cursor, at an address that is not Cursor's: refused, nothing reaches the server.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "-H", "Host: api2.cursor.sh", f"http://{PLAIN_IP}/"],
                 check=False)
    assert r.returncode != 0, r
    # Or naming it in an absolute-form target, with another Host header.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "--request-target", "http://api2.cursor.sh/", "-H",
                  "Host: example.org", f"http://{PLAIN_IP}/"], check=False)
    assert r.returncode != 0, r
    # h2c with prior knowledge: its host is inside HPACK, unread, so refused.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", f"http://{PLAIN_IP}/"],
                 check=False)
    assert r.returncode != 0, r
    found = entries(journal, d, "connection_open", count=4)
    reasons = [(e["CORDON_MODE"], e.get("CORDON_REASON", "")) for e in found if e.get("CORDON_DST") == f"{PLAIN_IP}:80"]
    assert ("passthrough", f"plain HTTP to {PLAIN_IP} (strict capture)") in reasons, reasons
    assert ("refused", "plain HTTP to capture host api2.cursor.sh") in reasons, reasons
    assert ("refused", "plain HTTP a server could read two ways (strict capture)") in reasons, reasons
    assert ("refused", "HTTP/2 with prior knowledge (h2c) (strict capture)") in reasons, reasons


def test_udp_on_a_quic_port_is_refused_everywhere(strict):
    d, jobs = strict
    probe = ("import socket\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "try:\n"
             f"    s.sendto(b'quic', ('{QUIC_IP}', 443)); print('sent')\n"
             "except PermissionError:\n"
             "    print('refused')\n"
             f"s.sendto(b'dns', ('{QUIC_IP}', 53)); print('other port sent')\n")
    r = jobs.run([sys.executable, "-c", probe])
    assert r.stdout.split("\n")[:2] == ["refused", "other port sent"], r.stdout


def test_later_requests_and_upgrades_on_a_plain_connection_are_watched(strict, journal):
    d, jobs = strict
    # A first request for another site, then one naming Cursor on the same kept-alive connection.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n",
                  f"http://{PLAIN_IP}/", "--next", "-sS", "--max-time", "10", "-o", "/dev/null", "-H",
                  "Host: api2.cursor.sh", f"http://{PLAIN_IP}/"], check=False)
    assert r.stdout.startswith("200 1"), r
    assert r.returncode != 0, r  # the second request never got an answer
    # An upgrade (h2c, WebSocket): what follows is another protocol, unread.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "--http2", f"http://{PLAIN_IP}/"], check=False)
    assert r.returncode != 0, r
    found = entries(journal, d, "connection_open", count=2)
    reasons = [e.get("CORDON_REASON", "") for e in found if e.get("CORDON_DST") == f"{PLAIN_IP}:80"]
    assert "plain HTTP upgrade to another protocol (strict capture)" in reasons, reasons


def test_exempt_ranges_are_left_to_the_job(strict, journal):
    d, jobs = strict
    # Loopback, link-local and the metadata service by default; here one test address. The
    # connection is the job's own, even naming Cursor: cordond never sees it.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                  "Host: api2.cursor.sh", f"http://{EXEMPT_IP}/"])
    assert r.stdout == "200", r
    assert d.status()["capture"]["strict_exempt"] == [f"{EXEMPT_IP}/32"]
    time.sleep(0.5)
    opened = journal.entries(d.pid, CORDON_EVENT="connection_open")
    assert not [e for e in opened if e.get("CORDON_DST") == f"{EXEMPT_IP}:80"], opened
