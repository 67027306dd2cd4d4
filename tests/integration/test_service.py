"""The systemd unit (systemd/cordon.service): it verifies, its exposure is what the README says,
cordond speaks the notify protocol it declares (READY only once capture works, watchdog pings, a
stop), and cordond does its whole job with nothing but the unit's capabilities, no new
privileges and a read-only file system outside the paths the unit makes writable.

PID 1 is not systemd on the test machines, so the unit's sandbox is reproduced with the tools
that build it (a capability bounding set, no_new_privs, a read-only bind of /); `systemd-analyze`
checks the unit itself."""
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import CORDOND, ROOT
from test_intercept import INTERCEPT_HOSTS, Jobs, entries, tls_yaml, work  # noqa: F401
from test_standin import Standin

# This file's addresses: 127.77.120.0/24.
STANDIN_IP = "127.77.120.1"
CAPTURED = [f"{STANDIN_IP}/32"]
UNIT = ROOT / "systemd" / "cordon.service"
# The README states this figure; a change to the unit that raises it must be a decision.
MAX_EXPOSURE = 5.0


def unit_setting(name):
    values = [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines()
              if line.startswith(name + "=")]
    assert values, f"{UNIT} sets no {name}="
    return values


def installed_unit(tmp_path):
    """The unit as `make install` writes it, with ExecStart at a binary that exists here."""
    text = UNIT.read_text().replace("ExecStart=/usr/local/sbin/cordond", f"ExecStart={CORDOND}")
    path = tmp_path / "cordon.service"
    path.write_text(text)
    return path


def test_the_unit_verifies(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", str(installed_unit(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_the_units_exposure(tmp_path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(installed_unit(tmp_path))], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for cordon\.service: ([\d.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(f"systemd-analyze security: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, r.stdout
    readme = (ROOT / "README.md").read_text()
    assert f"exposure {exposure}" in readme, f"README must state the exposure, {exposure}"


@pytest.fixture(scope="module")
def standin(work):
    s = Standin(work, STANDIN_IP)
    yield s
    s.stop()


class NotifySocket:
    """The socket systemd gives a Type=notify service (NOTIFY_SOCKET), read by the test."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def wait_for(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while not any(text in m for m in self.messages):
            if time.monotonic() > deadline:
                return False
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return True

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                return

    def count(self, text):
        self.drain()
        return sum(text in m for m in self.messages)


def test_ready_means_capturing_then_watchdog_pings_then_stopping(cgroups, cordond, standin, work, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="3000000")
    d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls_yaml(work), env=env)
    assert notify.wait_for("READY=1"), notify.messages
    # READY=1 came after the programs were pinned and the listener was up (cordond's fixture
    # waits for the control socket too; the order is the daemon's).
    assert any(n.startswith("link_") for n in os.listdir(d.pin_dir)), os.listdir(d.pin_dir)
    # The listener answers: cordond accepts and at once resets a connection nothing redirected,
    # which can reach this connect() before it returns. Refused would mean nothing listens.
    try:
        socket.create_connection(("127.0.0.1", d.listen_port), timeout=2).close()
    except ConnectionResetError:
        pass
    # Pings from the loop's ticker: about one a second, well inside the 3 s watchdog.
    # (Counted over a window wider than two ticks: a loaded test machine may delay one.)
    start = notify.count("WATCHDOG=1")
    deadline = time.monotonic() + 6
    while notify.count("WATCHDOG=1") - start < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert notify.count("WATCHDOG=1") - start >= 3, notify.messages
    assert "watchdog" in d.log_text()
    d.stop()
    assert notify.wait_for("STOPPING=1"), notify.messages


def test_the_sandbox_emulation_bites():
    # Without this, a cordond passing under the emulated sandbox could mean the emulation is empty.
    sandbox = [sys.executable, str(pathlib.Path(__file__).parent / "unit_sandbox.py"), str(UNIT)]
    r = subprocess.run(sandbox + ["/bin/mount", "-t", "tmpfs", "none", "/nonexistent"], capture_output=True)
    assert r.returncode == -signal.SIGSYS, r  # @mount: killed, as systemd's deny list does
    r = subprocess.run(sandbox + [sys.executable, "-c", "import socket; socket.socket(socket.AF_PACKET, 3)"],
                       capture_output=True, text=True)
    assert "Address family not supported" in r.stderr, r.stderr  # RestrictAddressFamilies=
    r = subprocess.run(sandbox + [sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
                       capture_output=True, text=True)
    assert "Operation not permitted" in r.stderr, r.stderr  # MemoryDenyWriteExecute=


def sandboxed(tmp_path, d_state_parent):
    """cordond as the unit runs it: only CapabilityBoundingSet, NoNewPrivileges, and the file
    system read-only but for the test's own directory (standing in for StateDirectory= and
    RuntimeDirectory=) and bpffs (ReadWritePaths=)."""
    caps = unit_setting("CapabilityBoundingSet")[0].split()
    bounding = "-all," + ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
    assert unit_setting("NoNewPrivileges") == ["yes"]
    assert unit_setting("ProtectSystem") == ["strict"]
    assert "/sys/fs/bpf" in unit_setting("ReadWritePaths")[0].split()
    script = ('set -e; mount --make-rprivate /; mount --bind "$0" "$0"; mount -o remount,bind,ro /; '
              'for m in /usr /etc /var /home /opt /boot /srv; do '
              '  mountpoint -q "$m" && mount -o remount,bind,ro "$m" || true; done; '
              'exec setpriv --bounding-set="$1" --inh-caps=-all --no-new-privs -- '
              '/usr/bin/python3 "$2" "$3" "${@:4}"')
    # bash for ${@:4}; the writable directory is the test's tmp (state dir, socket, log). The
    # seccomp part (SystemCallFilter, RestrictAddressFamilies, ...) is unit_sandbox.py's.
    return ["unshare", "--mount", "bash", "-c", script, str(d_state_parent), bounding,
            str(pathlib.Path(__file__).parent / "unit_sandbox.py"), str(UNIT)]


def test_cordond_does_its_job_with_only_the_units_privileges(cgroups, cordond, standin, work, tmp_path, journal):
    prefix = sandboxed(tmp_path, tmp_path)
    # `sandboxed` ends in: setpriv ... -- unit_sandbox.py UNIT: the Cordond fixture appends the binary.
    # With the listener for containers: a privileged port, and an address put on lo over netlink
    # (removed again by the fixture's detach).
    d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS,
                tls_yaml=tls_yaml(work, extra=f"  descriptors: {work / 'cursor.desc'}\n"), prefix=prefix,
                netns_listen="169.254.77.161:1023")
    assert "169.254.77.161:1023" in d.log_text()                         # CAP_NET_BIND_SERVICE
    status = open(f"/proc/{d.pid}/status").read()
    # The process that runs is cordond itself (setpriv and bash exec'd into it), so its
    # capabilities are the bounding set's and nothing more.
    bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", status).group(1), 16)
    assert bounding.bit_count() == len(unit_setting("CapabilityBoundingSet")[0].split()), status
    assert re.search(r"NoNewPrivs:\s*1", status), status
    assert re.search(r"Seccomp:\s*2", status), status  # the unit's system call filter
    jobs = Jobs(cgroups, d, work, tmp_path)
    jobs.map_hosts(STANDIN_IP)
    # Intercepted, decoded, recorded: the CA and recordings are written, the job identified.
    events, _ = jobs.client("models")
    assert any(e["event"] == "response" for e in events), events
    opened = entries(journal, d, "connection_open")[0]
    assert opened["CORDON_MODE"] == "intercept", opened
    assert opened.get("CORDON_EXE", "").endswith("node"), opened          # CAP_SYS_PTRACE
    assert opened["CORDON_CGROUP"].endswith("/job"), opened               # CAP_DAC_READ_SEARCH
    entries(journal, d, "request")
    d.stop()
    assert d.ctl("--state-dir", str(d.state_dir), "verify", check=False).returncode == 0
    # Restart under the same sandbox: it adopts its pinned programs (no new privileges needed).
    d.start()
    attach = entries(journal, d, "bpf_attach")[0]
    assert attach["CORDON_ADOPTED"] in ("1", "true", "yes"), attach
    events, _ = jobs.client("models")
    assert any(e["event"] == "response" for e in events), events
