"""What happens around cordond's lifetime: stop, crash, restart, fail-open, and capture targets
that come from host names."""
import json
import os
import signal
import subprocess
import time

from conftest import CORDOND, http_handler


def test_stopped_cordond_fails_closed(cgroups, cordond, upstream, journal):
    server = upstream("127.77.30.1", 80)
    upstream("127.77.30.2", 80)
    d = cordond(["127.77.30.1/32"])
    assert cgroups.client("job", "peer", "127.77.30.1", 80)["reply"] == "ping\n"
    assert d.stop() == 0
    assert journal.wait_for(d.pid, CORDON_EVENT="daemon_stop")

    # The programs stay attached: with no cordond listener there, a captured connect() is refused.
    before = len(server.peers)
    res = cgroups.client("job", "connect-only", "127.77.30.1", 80)
    assert res == {"connected": False, "errno": "EPERM"}
    assert len(server.peers) == before, "a connection reached the target while cordond was down"
    # Nothing else on the host is affected.
    assert cgroups.client("job", "peer", "127.77.30.2", 80)["reply"] == "ping\n"
    assert cgroups.client("other", "peer", "127.77.30.1", 80)["reply"] == "ping\n"

    st = d.ctl("status", check=False)
    assert st.returncode == 3
    assert "not running" in st.stderr and "connect4" in st.stderr and "fail closed" in st.stderr
    st_json = json.loads(d.ctl("status", "--json", check=False).stdout)
    assert st_json["running"] is False and "connect4" in st_json["pinned_links"]

    # Detaching on purpose opens the path again (this is what `cordonctl detach` is for).
    d.detach()
    res = cgroups.client("job", "peer", "127.77.30.1", 80)
    assert list(server.peers[-1]) == res["local"]


def test_kill_9_keeps_failing_closed_and_a_restart_adopts_the_pins(cgroups, cordond, upstream, journal):
    upstream("127.77.31.1", 80)
    d = cordond(["127.77.31.1/32"])
    assert cgroups.client("job", "churn", "127.77.31.1", 80, 3) == {"ok": 3}
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    assert cgroups.client("job", "connect-only", "127.77.31.1", 80) == {"connected": False, "errno": "EPERM"}

    d2 = cordond(["127.77.31.1/32"])
    st = d2.status()
    assert st["programs"]["adopted"] is True
    assert len(st["programs"]["attached"]) == 9  # with recvmsg4/6 for the DNS proxy
    # Counters live in the pinned maps and carry over: 3 relayed, 1 refused during the gap.
    assert st["counters"]["redirected"] == 3
    assert st["counters"]["refused_no_listener"] == 1
    assert cgroups.client("job", "churn", "127.77.31.1", 80, 2) == {"ok": 2}
    assert d2.status()["counters"]["redirected"] == 5
    entries = journal.wait_for(d2.pid, CORDON_EVENT="bpf_attach")
    assert entries and entries[0]["CORDON_ADOPTED"] == "1"
    # The killed cordond's cgroup still exists (it could not clean up); the fixture removes it.


def test_fail_open_mode_detaches_on_a_clean_stop(cgroups, cordond, upstream, journal):
    server = upstream("127.77.32.1", 80)
    d = cordond(["127.77.32.1/32"], extra_yaml="  failure_mode: open\n")
    assert cgroups.client("job", "peer", "127.77.32.1", 80)["reply"] == "ping\n"
    d.stop()
    assert not os.path.exists(d.pin_dir)
    res = cgroups.client("job", "peer", "127.77.32.1", 80)
    assert list(server.peers[-1]) == res["local"]
    assert journal.wait_for(d.pid, CORDON_EVENT="bpf_detach")


def test_host_names_are_resolved_and_followed(cgroups, cordond, upstream, journal, tmp_path):
    """cordond resolves the policy's host names like the job does (nsswitch, /etc/hosts), here
    through a private mount namespace so the real /etc/hosts is never touched."""
    upstream("127.77.33.1", 80)
    upstream("127.77.33.2", 80)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.77.33.1 api2.cursor.sh\n")
    d = cordond([], extra_yaml="", args=[])
    d.stop()
    d.detach()
    # Same daemon, now with a host name and quick refresh, inside the private namespace.
    d.policy.write_text(d.policy.read_text().replace("  hosts: []\n", "  hosts: [\"api2.cursor.sh\", \"*.cursor.sh\"]\n"
                                                     "  refresh_min_seconds: 1\n  retain_seconds: 1\n"))
    d.log = open(d.log_path, "ab")
    d.proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {hosts} /etc/hosts && exec {CORDOND} --config {d.policy} --cgroup {cgroups.path('daemon')}"],
        stdout=d.log, stderr=d.log)
    deadline = time.monotonic() + 15
    while d.ctl("status", "--json", check=False).returncode != 0:
        assert d.proc.poll() is None and time.monotonic() < deadline, d.log_text()
        time.sleep(0.05)

    def targets():
        return {t["cidr"] for t in d.status()["capture"]["targets"]}

    # Resolution runs on its own thread (startup never waits on DNS): give it a moment.
    deadline = time.monotonic() + 10
    while targets() != {"127.77.33.1/32"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert targets() == {"127.77.33.1/32"}
    host = d.status()["capture"]["hosts"]
    assert host == [{"name": "api2.cursor.sh", "addresses": ["127.77.33.1"], "error": "",
                     "next_refresh_s": host[0]["next_refresh_s"]}]
    assert cgroups.client("job", "peer", "127.77.33.1", 80)["reply"] == "ping\n"
    assert d.status()["counters"]["redirected"] == 1

    # The name moves: the new address is captured on the next refresh, the old one expires.
    with open(hosts, "w") as f:  # same inode: the bind mount sees it
        f.write("127.0.0.1 localhost\n127.77.33.2 api2.cursor.sh\n")
    deadline = time.monotonic() + 10
    while targets() != {"127.77.33.2/32"} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert targets() == {"127.77.33.2/32"}
    assert cgroups.client("job", "peer", "127.77.33.2", 80)["reply"] == "ping\n"
    assert d.status()["counters"]["redirected"] == 2
    updates = journal.wait_for(d.proc.pid, count=2, CORDON_EVENT="capture_update")
    assert any(e.get("CORDON_ADDED") == "127.77.33.2" and e.get("CORDON_HOST") == "api2.cursor.sh" for e in updates)


def test_a_second_cordond_on_the_same_pins_is_refused(cgroups, cordond, upstream, tmp_path):
    upstream("127.77.34.1", 80)
    d = cordond(["127.77.34.1/32"])
    other_socket = tmp_path / "other.sock"
    r = subprocess.run([str(CORDOND), "--config", str(d.policy), "--control-socket", str(other_socket),
                        "--cgroup", cgroups.path("daemon")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"another cordond is running on {d.pin_dir}" in r.stderr
    # The first one is undisturbed.
    assert d.status()["programs"]["adopted"] is False
    assert cgroups.client("job", "churn", "127.77.34.1", 80, 1) == {"ok": 1}
    assert d.status()["counters"]["redirected"] == 1


def test_hostile_control_requests_do_not_hurt_the_daemon(cgroups, cordond):
    import socket as s
    d = cordond(["127.77.35.1/32"])
    for payload in [b"[" * 60000 + b"\n", b"{\"command\": 7}\n", b"not json\n", b"\x00\xff" * 100 + b"\n",
                    b"x" * 70000, b"{\"command\":\"enroll\"}\n"]:
        c = s.socket(s.AF_UNIX, s.SOCK_STREAM)
        c.connect(d.socket)
        c.sendall(payload)
        c.shutdown(s.SHUT_WR)
        answer = b""
        try:
            while chunk := c.recv(4096):
                answer += chunk
        except ConnectionResetError:  # closed with our unread excess: the kernel resets
            assert len(payload) > 65536
        c.close()
        assert answer == b"" or json.loads(answer)["ok"] is False
    assert d.proc.poll() is None
    assert d.status()["ok"] is True


def test_broken_policy_is_refused_with_file_and_line(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("capture:\n  ports: [443]\n  cidrz: [10.0.0.0/8]\n")
    r = subprocess.run([str(CORDOND), "--config", str(policy)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{policy}:3:3: unknown key 'cidrz'" in r.stderr


def test_check_config_prints_the_effective_policy(tmp_path):
    r = subprocess.run([str(CORDOND), "--config", "/nonexistent/policy.yaml", "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "No such file" in r.stderr
    r = subprocess.run([str(CORDOND), "--check-config", "--listen", "16001", "--enforce-cgroup", "/ci"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "listen_port: 16001" in r.stdout and '"/ci"' in r.stdout and '"*.cursor.sh"' in r.stdout


def test_without_a_journal_socket_entries_go_to_stderr(cgroups, cordond, upstream):
    """A private mount namespace hides /run/systemd/journal from cordond (journald keeps running)."""
    upstream("127.77.36.1", 80)
    d = cordond([], args=[])
    d.stop()
    d.detach()
    d.policy.write_text(d.policy.read_text().replace("  cidrs: []\n", "  cidrs: [\"127.77.36.1/32\"]\n"))
    d.log = open(d.log_path, "ab")
    d.proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs none /run/systemd/journal && exec {CORDOND} --config {d.policy} "
         f"--cgroup {cgroups.path('daemon')}"],
        stdout=d.log, stderr=d.log)
    deadline = time.monotonic() + 15
    while d.ctl("status", "--json", check=False).returncode != 0:
        assert d.proc.poll() is None and time.monotonic() < deadline, d.log_text()
        time.sleep(0.05)
    res = cgroups.client("job", "peer", "127.77.36.1", 80)
    deadline = time.monotonic() + 10
    while "CORDON_EVENT=connection_close" not in d.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(l for l in d.log_text().splitlines() if "CORDON_EVENT=connection_close" in l)
    assert f"CORDON_PID={res['pid']}" in line and "CORDON_COMM=python3" in line
    assert f"CORDON_CGROUP={cgroups.path('job')}" in line and "CORDON_RESULT=ok" in line
    assert d.status()["journal"]["fell_back"] >= 2


def test_ipv6_host_in_another_network_namespace(cgroups, cordond, journal, tmp_path):
    """A real (non-loopback) IPv6 peer: a test host in a network namespace, reached over veth."""
    ns = cgroups.name
    host_if = "cdn" + ns[-6:]
    try:
        for cmd in (["ip", "netns", "add", ns],
                    ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns],
                    ["ip", "addr", "add", "fd00:c0d0::1/64", "dev", host_if, "nodad"],
                    ["ip", "link", "set", host_if, "up"],
                    ["ip", "-n", ns, "addr", "add", "fd00:c0d0::2/64", "dev", "eth0", "nodad"],
                    ["ip", "-n", ns, "link", "set", "eth0", "up"],
                    ["ip", "-n", ns, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        peers = tmp_path / "peers.txt"
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
             "import socket,sys\n"
             "s=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
             "s.bind(('fd00:c0d0::2',80));s.listen(8);print('ready',flush=True)\n"
             "c,p=s.accept();open(sys.argv[1],'w').write('[%s]:%d'%p[:2]);c.sendall(c.recv(100));c.close()\n",
             str(peers)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        d = cordond(["fd00:c0d0::2/128"])
        res = cgroups.client("job", "peer", "fd00:c0d0::2", 80)
        assert res["peer"] == ["fd00:c0d0::2", 80] and res["reply"] == "ping\n"
        server.wait(timeout=10)
        closed = journal.wait_for(d.pid, CORDON_EVENT="connection_close")
        assert closed and closed[0]["CORDON_DST"] == "[fd00:c0d0::2]:80"
        # The peer saw cordond's upstream socket on the host side of the veth.
        assert peers.read_text() == closed[0]["CORDON_UPSTREAM_LOCAL"]
        assert closed[0]["CORDON_UPSTREAM_LOCAL"].startswith("[fd00:c0d0::1]:")
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_hijacked_listener_port_gets_nothing(cgroups, cordond, upstream):
    """While cordond is down, anyone may bind its (unprivileged) port: the programs must refuse
    rather than hand a job's connection to that listener."""
    import socket as sk
    server = upstream("127.77.37.1", 80)
    d = cordond(["127.77.37.1/32"])
    assert cgroups.client("job", "peer", "127.77.37.1", 80)["reply"] == "ping\n"
    d.stop()
    hijacker = cgroups.spawn("other", ["/usr/bin/python3", "-c",
                                       "import socket,sys,time\n"
                                       f"s=socket.socket();s.bind(('127.0.0.1',{d.listen_port}));s.listen(8)\n"
                                       "s.settimeout(3)\nprint('listening',flush=True)\n"
                                       "try:\n c,_=s.accept();print('GOT A CONNECTION',flush=True)\n"
                                       "except socket.timeout:\n print('nothing',flush=True)\n"],
                             user=65534, stdout=subprocess.PIPE, text=True)
    assert hijacker.stdout.readline().strip() == "listening"
    res = cgroups.client("job", "connect-only", "127.77.37.1", 80)
    assert res == {"connected": False, "errno": "EPERM"}
    assert hijacker.stdout.readline().strip() == "nothing"
    hijacker.wait(timeout=10)
    assert len(server.peers) == 1


def test_control_sessions_per_user_are_capped_and_root_keeps_its_own(cgroups, cordond):
    import socket as sk
    d = cordond(["127.77.38.1/32"])
    holder = cgroups.spawn("other", ["/usr/bin/python3", "-c",
                                     "import socket,sys\n"
                                     "socks=[]\n"
                                     "for i in range(20):\n"
                                     "  s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);socks.append(s)\n"
                                     "s=socks[-1];s.settimeout(5);print(s.recv(200).decode().strip(),flush=True)\n"
                                     "sys.stdin.read()\n", d.socket],
                           user=65534, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        answer = json.loads(holder.stdout.readline())
        assert answer["ok"] is False and "busy" in answer["error"]
        assert d.status()["ok"] is True  # root is not locked out
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_a_job_named_with_invalid_utf8_cannot_crash_status(cgroups, cordond, upstream):
    upstream("127.77.39.1", 80)
    d = cordond(["127.77.39.1/32"])
    holder = cgroups.spawn("job", ["/usr/bin/python3", "-c",
                                   "import ctypes,socket,sys\n"
                                   "ctypes.CDLL(None).prctl(15, b'\\xff\\xfe\\x1b[2J', 0, 0, 0)\n"
                                   "s=socket.socket();s.connect(('127.77.39.1',80));s.sendall(b'x');s.recv(1)\n"
                                   "print('holding',flush=True);sys.stdin.read()\n"],
                           user=65534, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        st = d.status()
        assert st["ok"] is True and len(st["connections"]) == 1
        assert "\ufffd" in st["connections"][0]["comm"]
        text = d.ctl("status").stdout
        assert "\x1b" not in text  # no terminal escapes reach the operator
        assert d.proc.poll() is None
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
