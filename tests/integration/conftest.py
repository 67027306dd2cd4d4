"""Integration fixtures: a real kernel, real cgroups, a real journald, real clients.

Everything a test creates (cgroups, BPF pins, processes, a journald it had to start) is removed
again, also when the test fails. Tests need root; without it they fail, loudly.
"""
import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from hostenv import cgroup2_mount, journald_running  # noqa: F401 (test_limits.py imports cgroup2_mount from here)

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
# Where cordond and cordonctl come from: build/ unless CORDON_BIN_DIR names another directory
# (relative to the repository), e.g. build/san-bin, their ASan + UBSan builds (make test-sanitize).
BIN_DIR = ROOT / os.environ["CORDON_BIN_DIR"] if os.environ.get("CORDON_BIN_DIR") else BUILD
CORDOND = BIN_DIR / "cordond"
CORDONCTL = BIN_DIR / "cordonctl"
# How long a cordond may take to come up: sanitizer builds start several times slower (compiling
# the masking rules alone took 9.5 s under TSan on a loaded 2-core runner).
START_TIMEOUT = 60 if BIN_DIR != BUILD else 15
CLIENT = pathlib.Path(__file__).with_name("client.py")
PYTHON = "/usr/bin/python3"
NOBODY = 65534


def sanitizer_options(log_dir, detect_leaks=True):
    """ASan/UBSan/TSan options for the sanitizer builds (plain builds ignore them): each report goes to
    its own file, log_dir/report.<pid>, never into the output a test reads; the first error stops
    the process; leaks found at exit are errors."""
    base = pathlib.Path(log_dir) / "report"
    return {"ASAN_OPTIONS": f"log_path={base}:halt_on_error=1:detect_leaks={int(detect_leaks)}:abort_on_error=0",
            "UBSAN_OPTIONS": f"log_path={base}:halt_on_error=1:print_stacktrace=1",
            # TSan (make integration-tsan) reports every race and carries on.
            "TSAN_OPTIONS": f"log_path={base}:halt_on_error=0:second_deadlock_stack=1"}


def sanitizer_dir(parent=None):
    """A directory for reports; anyone may write there (cordond and cordonctl run as nobody too)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="cordon-sanitizer-", dir=parent))
    os.chmod(d, 0o1777)
    return d


def take_sanitizer_reports(reports):
    """The reports' text ("" when none); each is renamed so that it is reported only once."""
    text = ""
    for f in sorted(reports):
        text += f"--- {f} ---\n{f.read_text(errors='replace')}\n"
        f.rename(f.with_name("reported" + f.name[len("report"):]))
    return text


# The session's report directory: processes a test starts itself report here, each Cordond in a
# directory of its own below it.
SANITIZER_SESSION = []


@pytest.fixture(scope="session", autouse=True)
def _sanitizer_session():
    """Every cordond and cordonctl a test starts inherits these options. A report is pinned on the
    cordond fixture's teardown, else on the test during which it appeared (_sanitizer_check), else
    (a daemon stopped after its module) on the session's end."""
    d = sanitizer_dir()
    SANITIZER_SESSION.append(d)
    saved = {k: os.environ.get(k) for k in sanitizer_options(d)}
    os.environ.update(sanitizer_options(d))
    yield d
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    SANITIZER_SESSION.remove(d)
    left = take_sanitizer_reports(d.rglob("report.*"))
    shutil.rmtree(d, ignore_errors=True)
    if left:
        pytest.fail(f"a sanitizer reported errors in a cordond or cordonctl of this session:\n{left}", pytrace=False)


@pytest.fixture(autouse=True)
def _sanitizer_check(_sanitizer_session):
    yield
    text = take_sanitizer_reports(_sanitizer_session.rglob("report.*"))
    if text:
        pytest.fail(f"a sanitizer reported an error in a process this test ran:\n{text}", pytrace=False)


def cordon_addresses():
    """The addresses a cordond puts on lo for containers, and their unreachable routes."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "main", "proto", "205"], capture_output=True,
                            text=True).stdout
    return ({line.split()[3] + " on lo" for line in out.splitlines() if " lo:cdn" in line} |
            {"route " + line.strip() for line in routes.splitlines() if line.strip()})


@pytest.fixture(scope="session", autouse=True)
def _root_and_build():
    if os.geteuid() != 0:
        pytest.fail("integration tests attach BPF programs and create cgroups: run them as root")
    for binary in (CORDOND, CORDONCTL):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: run `make` first")
    # cordond's production defaults live here; tests must point every path elsewhere.
    host_paths = [pathlib.Path(p) for p in ("/run/cordon", "/var/lib/cordon", "/sys/fs/bpf/cordon")]
    existed = {p for p in host_paths if p.exists()}
    addresses_before = cordon_addresses()
    yield
    leftovers = [p for p in host_paths if p.exists() and p not in existed]
    # Nothing of ours may outlive the session. Ours are named for this process (CgroupTree), so
    # another session running beside this one is not taken for a leak.
    ours = f"cordon-it-{os.getpid()}-*"
    leftovers += [p for p in pathlib.Path("/sys/fs/bpf").glob(ours)]
    leftovers += [p for p in cgroup2_mount().glob(ours)]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    leftovers += [line.split()[0] for line in netns.splitlines() if line.startswith("cordon-it-")]
    # The host address a cordond puts on lo for containers (daemon.netns_listen).
    leftovers += sorted(cordon_addresses() - addresses_before)
    assert not leftovers, f"tests left these behind: {leftovers}"


class Journal:
    """Reads cordond's structured entries back with journalctl.

    PIDs wrap (pid_max is 32768 on small hosts) and the journal keeps earlier runs, so an
    entry is only taken from a process's own lifetime: since it started, while it is alive,
    or since it was last seen alive (at worst, since this session began)."""

    def __init__(self):
        self.session_start = time.time()
        self.started = {}  # pid -> start time of the process last seen with that pid

    def _since(self, pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            with open("/proc/stat") as f:
                boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
            self.started[pid] = boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, StopIteration):
            pass  # gone: the last start seen, if any
        # btime is whole seconds: a second of slack, far less than any pid reuse here.
        return max(self.started.get(pid, self.session_start), self.session_start) - 1

    def entries(self, pid, **match):
        args = ["journalctl", "--no-pager", "-o", "json", f"_PID={pid}", f"--since=@{self._since(pid):.3f}"]
        args += [f"{k}={v}" for k, v in match.items()]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_for(self, pid, count=1, timeout=10.0, **match):
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(pid, **match)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="session")
def journal():
    """The system journal; started by hand (PID 1 is not systemd here) when none runs, and
    stopped again only if we started it."""
    started = None
    created = []
    if not journald_running():
        for d in ("/run/systemd", "/run/systemd/journal"):
            if not os.path.isdir(d):
                os.makedirs(d)
                created.append(d)
        started = subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not journald_running():
            if started.poll() is not None or time.monotonic() > deadline:
                pytest.fail("could not start systemd-journald for the tests")
            time.sleep(0.05)
    yield Journal()
    if started:
        started.terminate()
        started.wait(timeout=10)
        for d in reversed(created):
            shutil.rmtree(d, ignore_errors=True)


class CgroupTree:
    """/cordon-it-<id>/{job,daemon,other} under the cgroup2 mount."""

    def __init__(self):
        self.mount = cgroup2_mount()
        self.name = f"cordon-it-{os.getpid()}-{secrets.token_hex(3)}"
        self.base = self.mount / self.name
        self.base.mkdir()
        for child in ("job", "daemon", "other"):
            (self.base / child).mkdir()

    def path(self, child):
        """The cgroup path as cordon and /proc/<pid>/cgroup write it."""
        return f"/{self.name}/{child}"

    def spawn(self, child, argv, user=None, **kwargs):
        procs = self.base / child / "cgroup.procs"

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + list(argv)
        return subprocess.Popen(argv, preexec_fn=enter, **kwargs)

    def run(self, child, argv, user=None, timeout=60, check=True):
        p = self.spawn(child, argv, user=user, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{argv} exited {p.returncode}\nstdout: {out}\nstderr: {err}")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def client(self, child, *args, user=None, timeout=120, check=True):
        """Runs tests/integration/client.py in the cgroup and returns its JSON output."""
        r = self.run(child, [PYTHON, str(CLIENT), *map(str, args)], user=user, timeout=timeout, check=check)
        return json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr, "rc": r.returncode}

    def cleanup(self):
        for d in sorted(self.base.rglob("*"), key=lambda p: -len(p.parts)) + [self.base]:
            if not d.is_dir():
                continue
            kill = d / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
            deadline = time.monotonic() + 5
            while (d / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.02)
            d.rmdir()


@pytest.fixture
def cgroups():
    tree = CgroupTree()
    yield tree
    tree.cleanup()


_port = [15600 + (os.getpid() % 500) * 4]


class Cordond:
    def __init__(self, cgroups, tmp, targets, ports=(80,), quic_ports=(443,), extra_yaml="", args=(), tls_yaml=None,
                 hosts=(), exempt=(), prefix=(), env=None, capture_yaml="", metrics_listen=None, netns_listen=""):
        # Two ports per instance: the relay's listener and the DNS proxy's.
        _port[0] += 2
        self.cgroups = cgroups
        self.listen_port = _port[0]
        self.dns_port = _port[0] + 1
        self.pin_dir = f"/sys/fs/bpf/{cgroups.name}"
        self.socket = str(tmp / "control.sock")
        self.log_path = tmp / "cordond.log"
        self.policy = tmp / "policy.yaml"
        self.state_dir = tmp / "state"
        # Relay tests speak plaintext on captured ports: pass it through after a short wait for a
        # ClientHello. TLS tests give their own `tls:` section.
        if tls_yaml is None:
            tls_yaml = "tls:\n  missing_sni: passthrough\n  hello_timeout_ms: 200\n"
        self.policy.write_text(
            tls_yaml +
            "capture:\n"
            f"  hosts: {json.dumps(list(hosts))}\n"
            f"  cidrs: {json.dumps(list(targets))}\n"
            f"  ports: {json.dumps(list(ports))}\n"
            f"  quic_ports: {json.dumps(list(quic_ports))}\n" + capture_yaml +
            "enforce:\n"
            f"  cgroups: [\"{cgroups.path('job')}\"]\n"
            f"  exempt_cgroups: {json.dumps([cgroups.path(e) for e in exempt])}\n"
            "daemon:\n"
            f"  listen_port: {self.listen_port}\n"
            f"  dns_port: {self.dns_port}\n"
            f"  pin_dir: {self.pin_dir}\n"
            f"  control_socket: {self.socket}\n"
            f"  state_dir: {self.state_dir}\n"
            # Never the host's /run/cordon: a test leaves nothing behind, and runs side by side.
            f"  metrics_listen: \"{metrics_listen if metrics_listen is not None else 'unix:' + str(tmp / 'metrics.sock')}\"\n"
            # Off unless a test asks: it would put an address on the host's lo.
            f"  netns_listen: \"{netns_listen}\"\n"
            + extra_yaml)
        self.args = list(args)
        self.prefix = list(prefix)  # e.g. setpriv with the unit's capabilities
        self.env = env
        self.proc = None
        # Sanitizer builds report here; the fixture fails the test on any report. Under the unit's
        # sandbox (test_service: unit_sandbox.py) only the test's directory is writable, and its
        # seccomp filter kills ptrace (@debug), which LeakSanitizer needs to stop the threads at
        # exit (cordond hung on SIGTERM): there, ASan and UBSan only, no leak check.
        self.sandboxed = any(str(p).endswith("unit_sandbox.py") for p in self.prefix)
        self.sanitizer_dir = sanitizer_dir(tmp if self.sandboxed or not SANITIZER_SESSION else SANITIZER_SESSION[0])

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, str(CORDOND), "--config", str(self.policy), "--cgroup", self.cgroups.path("daemon"),
             *self.args],
            stdout=self.log, stderr=self.log,
            env={**(os.environ if self.env is None else self.env),
                 **sanitizer_options(self.sanitizer_dir, detect_leaks=not self.sandboxed)})
        if wait:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"cordond exited {self.proc.returncode}:\n{self.log_text()}")
                st = self.ctl("status", "--json", check=False)
                if st.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    self.proc.kill()  # else it outlives the test in its cgroup
                    self.proc.wait()
                    raise AssertionError(f"cordond did not come up:\n{self.log_text()}")
                time.sleep(0.05)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args, check=True, user=None):
        argv = [str(CORDONCTL), "--socket", self.socket, "--pin-dir", self.pin_dir, *args]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + argv
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"cordond did not stop on SIGTERM:\n{self.log_text()}")
        return self.proc.returncode if self.proc else None

    def detach(self):
        subprocess.run([str(CORDONCTL), "--pin-dir", self.pin_dir, "detach"], check=True, capture_output=True)


@pytest.fixture
def cordond(cgroups, journal, tmp_path):
    """Factory: cordond(targets=[...]) starts one enforcing the `job` cgroup. Stopped and
    detached afterwards, whatever happened."""
    started = []

    def start(targets, **kwargs):
        d = Cordond(cgroups, tmp_path, targets, **kwargs).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
        d.detach()
        assert not os.path.exists(d.pin_dir)
    # After the SIGTERM: a leak is only reported when the process exits.
    reports = take_sanitizer_reports(f for d in started for f in d.sanitizer_dir.glob("report.*"))
    if reports:
        pytest.fail(f"the sanitizer reported errors in cordond:\n{reports}", pytrace=False)


class Upstream:
    """A TCP server run by the test process itself (outside every enforced cgroup). Records the
    peer address of every connection it accepts."""

    def __init__(self, host, port, handler):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(512)
        self.host, self.port = host, port
        self.peers = []
        self.handler = handler
        self.errors = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.running = True
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[:2])
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            with conn:
                self.handler(conn)
        except Exception as e:  # recorded, asserted on by tests that care
            self.errors.append(repr(e))

    def close(self):
        self.running = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


def echo_handler(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def http_handler(conn):
    """Just enough HTTP/1.1 for curl and Node: read the head, answer, close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    body = b"hello from the stand-in\n"
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(body), body))


@pytest.fixture
def upstream():
    servers = []

    def make(host, port, handler=echo_handler):
        s = Upstream(host, port, handler)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def tmp_path():
    d = pathlib.Path(tempfile.mkdtemp(prefix="cordon-it-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
