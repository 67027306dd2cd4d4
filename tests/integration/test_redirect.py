"""Transparent redirect, end to end: real kernel hooks on a real cgroup, cordond relaying, the
journal read back with journalctl."""
import json
import os
import shutil
import socket
import subprocess
import time

from conftest import NOBODY, echo_handler, http_handler


def close_entries(journal, d, count=1, **match):
    entries = journal.wait_for(d.pid, count=count, CORDON_EVENT="connection_close", **match)
    assert len(entries) >= count, f"expected {count} close entries, journal has {len(entries)}:\n{d.log_text()}"
    return entries


def test_curl_is_redirected_and_journaled_with_its_identity(cgroups, cordond, upstream, journal):
    server = upstream("127.77.1.1", 80, http_handler)
    d = cordond(["127.77.1.1/32"])
    p = cgroups.spawn("job", ["curl", "-sS", "--max-time", "10", "http://127.77.1.1/"], user=NOBODY,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 0, stderr
    assert stdout == "hello from the stand-in\n"

    opened = journal.wait_for(d.pid, CORDON_EVENT="connection_open")
    closed = close_entries(journal, d)
    for e in (opened[0], closed[0]):
        assert e["CORDON_PID"] == str(p.pid)
        assert e["CORDON_UID"] == str(NOBODY)
        assert e["CORDON_COMM"] == "curl"
        assert e["CORDON_USER"] == "nobody"
        assert e["CORDON_EXE"] == os.path.realpath(shutil.which("curl"))
        assert e["CORDON_CGROUP"] == cgroups.path("job")
        assert "CORDON_CONTAINER" not in e and "CORDON_UNIT" not in e
        assert e["CORDON_DST"] == "127.77.1.1:80"
        assert e["SYSLOG_IDENTIFIER"] == "cordond"
    c = closed[0]
    assert c["CORDON_RESULT"] == "ok"
    assert int(c["CORDON_BYTES_UP"]) > 0 and int(c["CORDON_BYTES_DOWN"]) > 0
    assert int(c["CORDON_DURATION_US"]) > 0
    assert c["CORDON_CONN"] == opened[0]["CORDON_CONN"]
    # The stand-in talked to cordond's upstream socket, not to curl's.
    assert len(server.peers) == 1
    seen = "%s:%d" % server.peers[0]
    assert seen == c["CORDON_UPSTREAM_LOCAL"]
    assert seen != c["CORDON_CLIENT"]
    assert d.status()["counters"]["redirected"] == 1


def test_node_client_is_redirected(cgroups, cordond, upstream, journal):
    upstream("127.77.2.1", 80, http_handler)
    d = cordond(["127.77.2.1/32"])
    script = ("const http=require('http');http.get({host:'127.77.2.1',port:80,path:'/'},r=>{let b='';"
              "r.on('data',c=>b+=c);r.on('end',()=>{console.log(JSON.stringify({status:r.statusCode,"
              "remote:r.socket.remoteAddress,port:r.socket.remotePort,body:b}))})}).on('error',e=>{"
              "console.error(e);process.exit(1)})")
    r = cgroups.run("job", ["node", "-e", script], user=NOBODY)
    res = json.loads(r.stdout)
    assert res["status"] == 200 and res["body"] == "hello from the stand-in\n"
    # Node asks getpeername(): the hook answers with the peer it asked for, not cordond.
    assert (res["remote"], res["port"]) == ("127.77.2.1", 80)
    closed = close_entries(journal, d)
    assert closed[0]["CORDON_COMM"] == "node"
    assert closed[0]["CORDON_UID"] == str(NOBODY)


def test_a_container_scope_names_the_container_and_its_unit(cgroups, cordond, upstream, journal):
    """A job in a docker-style scope (systemd cgroup driver): the journal names the container."""
    server = upstream("127.77.1.3", 80, http_handler)
    d = cordond(["127.77.1.3/32"])
    container = "5e" * 32
    scope = f"docker-{container}.scope"
    (cgroups.base / "job" / scope).mkdir()
    cgroups.run(f"job/{scope}", ["curl", "-sS", "--max-time", "10", "http://127.77.1.3/"], user=NOBODY)
    e = close_entries(journal, d)[0]
    assert e["CORDON_CGROUP"] == cgroups.path(f"job/{scope}")
    assert e["CORDON_CONTAINER"] == container and e["CORDON_UNIT"] == scope
    assert e["CORDON_EXE"] == os.path.realpath(shutil.which("curl"))


def test_python_client_sees_original_peer(cgroups, cordond, upstream, journal):
    server = upstream("127.77.3.1", 80)
    d = cordond(["127.77.3.1/32"])
    res = cgroups.client("job", "peer", "127.77.3.1", 80)
    assert res["peer"] == ["127.77.3.1", 80]
    assert res["reply"] == "ping\n"
    closed = close_entries(journal, d)
    assert closed[0]["CORDON_PID"] == str(res["pid"])
    assert closed[0]["CORDON_COMM"] == "python3"
    assert closed[0]["CORDON_CLIENT"] == "%s:%d" % tuple(res["local"])
    assert "%s:%d" % server.peers[0] == closed[0]["CORDON_UPSTREAM_LOCAL"]
    assert d.status()["counters"]["peer_rewritten"] >= 1


def test_process_outside_enforced_cgroups_is_not_redirected(cgroups, cordond, upstream, journal):
    server = upstream("127.77.4.1", 80)
    d = cordond(["127.77.4.1/32"])
    res = cgroups.client("other", "peer", "127.77.4.1", 80)
    assert res["reply"] == "ping\n"
    # The server saw the client's own socket: nothing stood in between.
    assert list(server.peers[0]) == res["local"]
    st = d.status()
    assert st["counters"]["redirected"] == 0
    assert st["counters"]["unenforced"] == 1
    assert journal.entries(d.pid, CORDON_EVENT="connection_open") == []


def test_non_target_destination_is_untouched(cgroups, cordond, upstream, journal):
    upstream("127.77.5.1", 80)
    other = upstream("127.77.5.2", 80)
    d = cordond(["127.77.5.1/32"])
    res = cgroups.client("job", "peer", "127.77.5.2", 80)
    assert list(other.peers[0]) == res["local"]
    assert d.status()["counters"]["redirected"] == 0


def test_uncaptured_port_of_a_target_is_untouched(cgroups, cordond, upstream):
    server = upstream("127.77.6.1", 8080)
    d = cordond(["127.77.6.1/32"])
    res = cgroups.client("job", "peer", "127.77.6.1", 8080)
    assert list(server.peers[0]) == res["local"]
    assert d.status()["counters"]["redirected"] == 0


def test_ipv6_target_is_redirected(cgroups, cordond, upstream, journal):
    server = upstream("::1", 80)
    d = cordond(["::1/128"])
    res = cgroups.client("job", "peer", "::1", 80)
    assert res["peer"] == ["::1", 80]
    assert res["reply"] == "ping\n"
    closed = close_entries(journal, d)
    assert closed[0]["CORDON_DST"] == "[::1]:80"
    assert closed[0]["CORDON_CLIENT"].startswith("[::1]:")
    assert "[%s]:%d" % server.peers[0] == closed[0]["CORDON_UPSTREAM_LOCAL"]


def test_v4_mapped_destination_is_redirected(cgroups, cordond, upstream, journal):
    server = upstream("127.77.7.1", 80)
    d = cordond(["127.77.7.1/32"])
    res = cgroups.client("job", "peer", "::ffff:127.77.7.1", 80)
    assert res["peer"] == ["::ffff:127.77.7.1", 80]
    assert res["reply"] == "ping\n"
    closed = close_entries(journal, d)
    assert closed[0]["CORDON_DST"] == "127.77.7.1:80"
    assert "%s:%d" % server.peers[0] == closed[0]["CORDON_UPSTREAM_LOCAL"]
    assert d.status()["counters"]["redirected"] == 1


def test_udp_443_to_target_is_refused(cgroups, cordond):
    d = cordond(["127.77.8.1/32", "::1/128"])
    assert cgroups.client("job", "udp", "127.77.8.1", 443) == {"connect": "EPERM", "sendto": "EPERM"}
    assert cgroups.client("job", "udp", "::1", 443) == {"connect": "EPERM", "sendto": "EPERM"}
    assert cgroups.client("job", "udp", "::ffff:127.77.8.1", 443) == {"connect": "EPERM", "sendto": "EPERM"}
    # Not a target, or not a QUIC port, or not enforced: UDP is left alone.
    assert cgroups.client("job", "udp", "127.77.8.2", 443) == {"connect": "ok", "sendto": "ok"}
    assert cgroups.client("job", "udp", "127.77.8.1", 53) == {"connect": "ok", "sendto": "ok"}
    assert cgroups.client("other", "udp", "127.77.8.1", 443) == {"connect": "ok", "sendto": "ok"}
    assert d.status()["counters"]["refused_quic"] == 6


def test_200_concurrent_connections_relay_1mib_both_ways_exactly(cgroups, cordond, upstream, journal):
    server = upstream("127.77.9.1", 80, echo_handler)
    d = cordond(["127.77.9.1/32"])
    res = cgroups.client("job", "echo-many", "127.77.9.1", 80, 200, 1 << 20, timeout=300)
    assert res == {"ok": 200, "count": 200, "errors": []}
    assert not server.errors
    closed = close_entries(journal, d, count=200)
    assert all(e["CORDON_RESULT"] == "ok" for e in closed)
    assert all(int(e["CORDON_BYTES_UP"]) == 1 << 20 and int(e["CORDON_BYTES_DOWN"]) == 1 << 20 for e in closed)
    st = d.status()
    assert st["relay"]["active"] == 0
    assert st["origin_entries"] == 0
    assert st["relay"]["buffers_in_use"] == 0


def test_half_close_from_the_client(cgroups, cordond, upstream, journal):
    def read_all_then_answer(conn):
        got = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        conn.sendall(b"received %d bytes after your EOF" % len(got))

    upstream("127.77.10.1", 80, read_all_then_answer)
    d = cordond(["127.77.10.1/32"])
    res = cgroups.client("job", "half-close-client", "127.77.10.1", 80)
    assert res["answer"] == "received 12000 bytes after your EOF"
    assert close_entries(journal, d)[0]["CORDON_RESULT"] == "ok"


def test_half_close_from_the_server(cgroups, cordond, upstream, journal):
    late = []

    def greet_then_listen(conn):
        conn.sendall(b"hello, I am done talking")
        conn.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        late.append(got)

    upstream("127.77.11.1", 80, greet_then_listen)
    d = cordond(["127.77.11.1/32"])
    res = cgroups.client("job", "half-close-server-first", "127.77.11.1", 80)
    assert res["greeting"] == "hello, I am done talking"
    assert close_entries(journal, d)[0]["CORDON_RESULT"] == "ok"
    deadline = time.monotonic() + 5
    while not late and time.monotonic() < deadline:
        time.sleep(0.02)
    assert late == [b"late-data-after-server-eof"]


def test_no_origin_entries_remain_under_churn(cgroups, cordond, upstream, journal):
    upstream("127.77.12.1", 80)
    d = cordond(["127.77.12.1/32"])
    assert cgroups.client("job", "churn", "127.77.12.1", 80, 500) == {"ok": 500}
    close_entries(journal, d, count=500)
    st = d.status()
    assert st["origin_entries"] == 0
    assert st["relay"]["active"] == 0
    assert st["counters"]["redirected"] == 500


def test_status_lists_live_connections_with_callers(cgroups, cordond, upstream):
    upstream("127.77.13.1", 80)
    d = cordond(["127.77.13.1/32"])
    holder = cgroups.spawn("job", ["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "client.py"), "hold",
                                   "127.77.13.1", "80", "3"],
                           user=NOBODY, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(holder.stdout.readline())
        # Silent connections wait hello_timeout_ms for a ClientHello, then pass through.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            conns = d.status()["connections"]
            if len(conns) == 3 and all(c["state"] == "relaying" for c in conns):
                break
            time.sleep(0.05)
        conns = d.status()["connections"]
        assert len(conns) == 3
        for c in conns:
            assert c["pid"] == info["pid"] and c["uid"] == NOBODY and c["comm"] == "python3"
            assert c["cgroup"] == cgroups.path("job") and c["destination"] == "127.77.13.1:80"
            assert c["state"] == "relaying" and c["mode"] == "passthrough"
        text = d.ctl("status").stdout
        assert "127.77.13.1:80" in text and "python3" in text
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_status_is_for_root_only(cgroups, cordond):
    d = cordond(["127.77.14.1/32"])
    r = d.ctl("status", check=False, user=NOBODY)
    assert r.returncode == 1
    assert "permission denied" in r.stderr


def test_direct_connection_to_the_listener_is_refused(cgroups, cordond):
    d = cordond(["127.77.15.1/32"])
    res = cgroups.client("other", "connect-only", "127.0.0.1", d.listen_port)
    # Accepted by the kernel, then reset by cordond: it has no origin to relay to. (The reset can
    # beat a blocking connect() back to user space.)
    assert res["errno"] == "ECONNRESET"
    assert d.status()["counters"]["lookup_missed"] == 1


def test_unreachable_upstream_resets_the_client_and_says_why(cgroups, cordond, journal):
    d = cordond(["127.77.16.1/32"])  # nothing listens there
    res = cgroups.client("job", "connect-only", "127.77.16.1", 80)
    assert res == {"connected": True, "errno": "ECONNRESET"}
    closed = close_entries(journal, d)
    assert closed[0]["CORDON_RESULT"] == "upstream_refused"
    assert closed[0]["CORDON_ERROR"] == "Connection refused"


def test_connections_from_another_network_namespace_are_refused(cgroups, cordond, upstream):
    """127.0.0.1 in a job's own network namespace is not cordond: refuse, never leak."""
    d = cordond(["127.77.40.1/32"])
    r = cgroups.run("job", ["unshare", "--net", "sh", "-c",
                            "ip link set lo up && ip addr add 127.77.40.1/32 dev lo && "
                            "/usr/bin/python3 " + os.path.join(os.path.dirname(__file__), "client.py") +
                            " connect-only 127.77.40.1 80"])
    assert json.loads(r.stdout) == {"connected": False, "errno": "EPERM"}
    assert d.status()["counters"]["refused_netns"] == 1


def test_exempt_cgroups_are_left_alone(cgroups, cordond, upstream):
    server = upstream("127.77.41.1", 80)
    os.mkdir(cgroups.base / "job" / "trusted")
    d = cordond(["127.77.41.1/32"], exempt=["job/trusted"])
    res = cgroups.client("job/trusted", "peer", "127.77.41.1", 80)
    assert list(server.peers[-1]) == res["local"]  # direct: nothing stood in between
    assert cgroups.client("job", "peer", "127.77.41.1", 80)["reply"] == "ping\n"
    st = d.status()
    assert st["counters"]["exempt"] >= 2  # the trusted job, and cordond's own upstream socket
    assert st["counters"]["redirected"] == 1


def test_a_job_cannot_exempt_itself_with_the_upstream_mark(cgroups, cordond, upstream):
    """Root inside an enforced cgroup can set SO_MARK; the mark alone must not exempt it."""
    server = upstream("127.77.42.1", 80)
    d = cordond(["127.77.42.1/32"])
    r = cgroups.run("job", ["/usr/bin/python3", "-c",
                            "import socket\n"
                            "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_MARK,0xc0d0)\n"
                            "s.connect(('127.77.42.1',80));s.sendall(b'ping');s.recv(4)\n"
                            "print(s.getsockname()[1])\n"])
    local_port = int(r.stdout)
    assert server.peers and server.peers[-1][1] != local_port  # it went through cordond
    assert d.status()["counters"]["redirected"] == 1
    # And an unprivileged job cannot set the mark at all.
    r = cgroups.run("job", ["/usr/bin/python3", "-c",
                            "import socket\n"
                            "s=socket.socket()\n"
                            "try:\n s.setsockopt(socket.SOL_SOCKET,socket.SO_MARK,0xc0d0);print('set')\n"
                            "except PermissionError:\n print('denied')\n"], user=65534)
    assert r.stdout.strip() == "denied"


def test_stalled_readers_cannot_starve_other_jobs(cgroups, cordond, upstream):
    """A job that opens downloads and never reads pins relay buffers; under pressure cordond
    evicts the stalled relays and everyone else keeps working."""
    def firehose(conn):
        chunk = b"x" * 65536
        try:
            while True:
                conn.sendall(chunk)
        except OSError:
            pass

    upstream("127.77.43.1", 80, firehose)
    upstream("127.77.43.2", 80)
    d = cordond(["127.77.43.1/32", "127.77.43.2/32"],
                extra_yaml="  buffer_size: 65536\n  buffer_count: 16\n")
    hog = cgroups.spawn("job", ["/usr/bin/python3", "-c",
                                "import socket,sys\n"
                                "socks=[]\n"
                                "for i in range(20):\n"
                                "  s=socket.socket();s.connect(('127.77.43.1',80));s.sendall(b'go');socks.append(s)\n"
                                "print('hogging',flush=True);sys.stdin.read()\n"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "hogging"
        time.sleep(1)
        assert d.status()["relay"]["buffers_in_use"] >= 12  # the pool is under pressure
        started = time.monotonic()
        res = cgroups.client("job", "peer", "127.77.43.2", 80, timeout=30)
        assert res["reply"] == "ping\n"
        assert time.monotonic() - started < 15
    finally:
        hog.stdin.close()
        hog.wait(timeout=10)
