"""`make install` / `make uninstall`, and the Debian package from `make deb`: installed, upgraded,
removed and purged for real with dpkg, without touching the host.

Each package scenario runs in a private mount namespace, held open by a sleeping process, whose
root (entered with chroot) is an overlay: the host's / read-only below, a tmpfs above. dpkg's
database, /usr, /etc, the trust store and /var/lib/cordon change only in the tmpfs, which goes away
with the namespace. /proc, /dev and /sys are the host's, except /sys/fs/bpf: a fresh bpffs, so the
package's pins in /sys/fs/bpf/cordon are private too. A cordond started there attaches to the
host's cgroup2 root like any other (the kernel has one), enforcing only an empty cgroup of the test.

The module builds two packages once: the default version and a higher DEB_VERSION, to upgrade to.
Before and after, it checks that the host has no cordon package and that the files a package
would touch are byte-identical.
"""
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

import conftest

ROOT = conftest.ROOT
UPSTREAM = re.search(r'kCordonVersion = "([^"]+)"', (ROOT / "userspace/daemon/daemon.h").read_text()).group(1)
VERSION = f"{UPSTREAM}-1"  # what `make deb` builds by default
UPGRADE = f"{UPSTREAM}-2"
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C",
             "DEBIAN_FRONTEND": "noninteractive"}
TRUSTED_CERT = "/usr/local/share/ca-certificates/cordon-ca.crt"
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
ENV_LINE = f"NODE_EXTRA_CA_CERTS={TRUSTED_CERT}"
# Everything `cordonctl ca install` writes besides the certificate (and /etc/environment's line).
CA_DROP_INS = ["/etc/profile.d/cordon-ca.sh", "/etc/systemd/system.conf.d/cordon-ca.conf",
               "/etc/environment.d/90-cordon-ca.conf"]
WANTS = "/etc/systemd/system/multi-user.target.wants/cordon.service"
PACKAGE_FILES = ["/usr/sbin/cordond", "/usr/bin/cordonctl", "/lib/systemd/system/cordon.service",
                 "/usr/lib/tmpfiles.d/cordon.conf", "/etc/cordon/policy.yaml", "/usr/share/cordon/cursor.desc",
                 "/usr/share/doc/cordon/copyright", "/usr/share/doc/cordon/changelog.Debian.gz",
                 "/usr/share/man/man8/cordond.8.gz", "/usr/share/man/man1/cordonctl.1.gz",
                 "/usr/sbin/cordon-runner-setup", "/usr/share/man/man8/cordon-runner-setup.8.gz",
                 "/usr/share/cordon/runner-hooks/github-job-started.sh"]
# What installing, upgrading or purging the package touches on a host: must not change on this one.
HOST_PATHS = PACKAGE_FILES + CA_DROP_INS + [
    "/etc/cordon", "/var/lib/cordon", "/usr/share/cordon", "/usr/share/doc/cordon", "/usr/local/share/ca-certificates",
    "/etc/ssl/certs/cordon-ca.pem", BUNDLE, "/etc/environment", "/etc/systemd/system/multi-user.target.wants",
    "/etc/systemd/system/cordon.service", "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-helper-masked"]


def snapshot(paths, root=""):
    """Every file, directory and symlink under `paths` (seen under `root`): type, mode, owner, and
    content hash or link target; None for a path that does not exist."""
    out = {}

    def record(path, key):
        st = os.lstat(path)
        entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
        if stat.S_ISLNK(st.st_mode):
            entry.append(os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                entry.append(hashlib.sha256(f.read()).hexdigest())
        out[key] = tuple(entry)

    for p in paths:
        base = root + p
        if not os.path.lexists(base):
            out[p] = None
            continue
        record(base, p)
        if os.path.isdir(base) and not os.path.islink(base):
            for dirpath, dirnames, filenames in os.walk(base):
                for name in dirnames + filenames:
                    full = os.path.join(dirpath, name)
                    record(full, p + full[len(base):])
    return out


def host_package_state():
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "cordon"], capture_output=True, text=True)
    return (r.returncode, r.stdout, sorted(str(p) for p in pathlib.Path("/var/lib/dpkg/info").glob("cordon.*")))


def make(*args, timeout=1800):
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"make {' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def debs():
    """{version: path} of the two packages; the host checked untouched around the whole module."""
    before = (host_package_state(), snapshot(HOST_PATHS))
    assert before[0][0] != 0 and not before[0][2], f"cordon is installed on this host: {before[0]}"
    out = pathlib.Path(tempfile.mkdtemp(prefix="cordon-it-pkg-"))
    try:
        built = {}
        for version, args in ((VERSION, []), (UPGRADE, [f"DEB_VERSION={UPGRADE}"])):
            printed = make("deb", f"DEB_OUT={out}", *args).strip().splitlines()[-1]
            built[version] = pathlib.Path(printed)
            assert built[version] == out / f"cordon_{version}_{dpkg_arch()}.deb" and built[version].exists()
        yield built
    finally:
        shutil.rmtree(out, ignore_errors=True)
    after = (host_package_state(), snapshot(HOST_PATHS))
    assert after[0] == before[0], "the host's dpkg database changed"
    changed = [k for k in sorted(set(before[1]) | set(after[1])) if before[1].get(k) != after[1].get(k)]
    assert not changed, f"the host changed: {changed}"


def dpkg_arch():
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


class OverlayRoot:
    """A private mount namespace whose chroot is an overlay of the host's / on a tmpfs."""

    def __init__(self, tmp):
        self.base = tmp / "overlay"
        self.base.mkdir()
        self.root = self.base / "root"
        b = self.base
        script = (
            "set -e\n"
            f"mount -t tmpfs cordon-it-pkg {b}\n"
            f"mkdir {b}/upper {b}/work {b}/root\n"
            f"mount -t overlay cordon-it-pkg -o lowerdir=/,upperdir={b}/upper,workdir={b}/work {b}/root\n"
            f"mount -t proc proc {b}/root/proc\n"
            f"mount --rbind /dev {b}/root/dev\n"
            f"mount --rbind /sys {b}/root/sys\n"
            f"mount -t bpf cordon-it-pkg {b}/root/sys/fs/bpf\n"
            "echo ready\n"
            "exec sleep infinity\n")
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.kill()
            raise AssertionError(f"could not set up the overlay root: {self.holder.stderr.read()}")
        # overlayfs takes one file system: /usr or /var on mounts of their own would be missing.
        for p in ("/usr/bin/dpkg", "/var/lib/dpkg/status", "/etc/ssl/certs"):
            if not os.path.exists(self.path(p)):
                self.close()
                raise AssertionError(f"{p} is not on the root file system: the overlay root cannot hold dpkg")

    def path(self, p):
        """`p` inside the chroot, as this process reaches it."""
        return pathlib.Path(f"/proc/{self.holder.pid}/root{self.root}{p}")

    def argv(self, *argv):
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", "chroot", str(self.root),
                *map(str, argv)]

    def run(self, *argv, check=True, timeout=300):
        r = subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV)
        if check and r.returncode != 0:
            raise AssertionError(f"{list(argv)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def dpkg(self, *args):
        return self.run("dpkg", *args)

    def copy_in(self, src):
        """A file of the host, put in the chroot's /root."""
        shutil.copy(src, self.path(f"/root/{src.name}"))
        return f"/root/{src.name}"

    def exists(self, p):
        return os.path.lexists(self.path(p))

    def read(self, p):
        return self.path(p).read_text()

    def package(self):
        r = self.run("dpkg-query", "-W", "-f", "${Status} ${Version}", "cordon", check=False)
        return r.stdout if r.returncode == 0 else None

    def fingerprint(self):
        show = self.run("cordonctl", "ca", "show").stdout
        return re.search(r"^SHA-256:\s+(\S+)", show, re.M).group(1), "trusted:     yes" in show

    def ca_pem(self):
        return self.read("/var/lib/cordon/ca/ca.crt")

    def verifies(self, pem):
        """Whether a certificate verifies against the chroot's OS bundle, as curl or Python check."""
        self.path("/root/check.pem").write_text(pem)
        return self.run("openssl", "verify", "-CAfile", BUNDLE, "/root/check.pem", check=False).returncode == 0

    def leaf(self):
        """A leaf for a Cursor-like name from the host CA, as cordond mints them."""
        issued = self.run("cordonctl", "ca", "issue", "api2.cursor.sh").stdout
        return issued[:issued.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")]

    def close(self):
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def chroot(tmp_path):
    root = OverlayRoot(tmp_path)
    yield root
    root.close()


def assert_trusted(root, pem):
    assert root.read(TRUSTED_CERT) == pem
    assert os.readlink(root.path("/etc/ssl/certs/cordon-ca.pem")) == TRUSTED_CERT
    assert pem.strip() in root.read(BUNDLE)
    assert ENV_LINE in root.read("/etc/environment").splitlines()
    for p in CA_DROP_INS:
        assert root.exists(p), p
    assert root.verifies(pem) and root.verifies(root.leaf())


def assert_untrusted(root, pem):
    assert not root.exists(TRUSTED_CERT) and not root.exists("/etc/ssl/certs/cordon-ca.pem")
    assert pem.strip() not in root.read(BUNDLE)
    assert ENV_LINE not in root.read("/etc/environment").splitlines()
    for p in CA_DROP_INS:
        assert not root.exists(p), p
    assert not root.verifies(pem)


def assert_purged(root, pem):
    assert root.package() is None
    assert "not installed" in root.run("dpkg", "-s", "cordon", check=False).stderr
    for p in PACKAGE_FILES + ["/etc/cordon", "/var/lib/cordon", "/run/cordon", "/usr/share/cordon",
                              "/usr/share/doc/cordon", "/sys/fs/bpf/cordon", WANTS,
                              "/etc/systemd/system/cordon.service",
                              "/var/lib/systemd/deb-systemd-helper-enabled/cordon.service.dsh-also",
                              "/var/lib/systemd/deb-systemd-helper-masked/cordon.service"]:
        assert not root.exists(p), f"{p} outlived the purge"
    assert_untrusted(root, pem)


def test_install_upgrade_and_purge_with_a_running_cordond(debs, chroot, cgroups, tmp_path):
    root = chroot
    v1, v2 = root.copy_in(debs[VERSION]), root.copy_in(debs[UPGRADE])

    # Install, on a host where PID 1 is not systemd (this one): nothing is started, nothing fails.
    out = root.dpkg("-i", v1).stdout
    assert "systemd is not running here" in out
    assert root.package() == f"install ok installed {VERSION}"
    assert root.run("dpkg", "--verify", "cordon").stdout == ""  # md5sums match what was unpacked
    assert root.run("cordonctl", "version").stdout == f"cordonctl {UPSTREAM}\n"
    assert root.run("cordond", "--version").stdout == f"cordond {UPSTREAM}\n"
    assert ".TH CORDOND 8" in root.run("zcat", "/usr/share/man/man8/cordond.8.gz").stdout
    assert ".TH CORDONCTL 1" in root.run("zcat", "/usr/share/man/man1/cordonctl.1.gz").stdout

    # The unit names the binary where the package put it, and systemd accepts it.
    unit = root.read("/lib/systemd/system/cordon.service")
    assert "ExecStart=/usr/sbin/cordond\n" in unit and "/usr/local" not in unit
    verify = root.run("systemd-analyze", "verify", "/lib/systemd/system/cordon.service", check=False)
    assert verify.returncode == 0, verify.stderr
    assert os.readlink(root.path(WANTS)) == "/lib/systemd/system/cordon.service"  # enabled for the next boot
    # tmpfiles.d made the state directory root-only.
    assert stat.S_IMODE(os.stat(root.path("/var/lib/cordon")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root.path("/run/cordon")).st_mode) == 0o755
    # The default policy: /etc/cordon/policy.yaml names nothing, so the embedded default applies.
    effective = root.run("cordond", "--check-config").stdout.splitlines()
    assert effective[0] == "# effective policy (from /etc/cordon/policy.yaml and the command line)"
    embedded = subprocess.run([str(conftest.CORDOND), "--check-config", "--config",
                               str(ROOT / "userspace/config/default_policy.yaml")],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert effective[1:] == embedded[1:]

    # The CA was created and the host trusts it.
    fingerprint, trusted = root.fingerprint()
    assert trusted
    pem = root.ca_pem()
    assert_trusted(root, pem)

    # An admin's policy (kept over the upgrade as a changed conffile), and a cordond running on it
    # that enforces only the test's empty cgroup, pinned in the chroot's own bpffs.
    policy = ("capture:\n  hosts: []\n  cidrs: [\"127.77.252.1/32\"]\n  ports: [80]\n"
              f"enforce:\n  cgroups: [\"{cgroups.path('job')}\"]\n"
              f"daemon:\n  listen_port: {18500 + os.getpid() % 500}\n")
    root.path("/etc/cordon/policy.yaml").write_text(policy)
    log_path = tmp_path / "cordond.log"
    with open(log_path, "wb") as log:
        cordond = subprocess.Popen(root.argv("/usr/sbin/cordond", "--cgroup", cgroups.path("daemon")),
                                   env=CLEAN_ENV, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while root.run("cordonctl", "status", "--json", check=False).returncode != 0:
            assert cordond.poll() is None, f"cordond exited {cordond.returncode}: {log_path.read_text()}"
            assert time.monotonic() < deadline, "cordond did not come up"
            time.sleep(0.1)
        status = json.loads(root.run("cordonctl", "status", "--json").stdout)
        assert status["pid"] == cordond.pid and status["programs"]["pin_dir"] == "/sys/fs/bpf/cordon"
        # A stand-in for a recording: whatever the state directory holds must survive the upgrade.
        root.path("/var/lib/cordon/recordings/cordon-it-sentinel").write_text("a recorded session\n")
        state = snapshot(["/var/lib/cordon"], root=str(root.path("")))
        assert "/var/lib/cordon/recording.key" in state and "/var/lib/cordon/ca/ca.key" in state

        # Upgrade while cordond runs: it keeps running on its pins (postinst would restart it under
        # systemd, see below); the CA, the state and the admin's policy stay as they were.
        root.dpkg("-i", v2)
        assert root.package() == f"install ok installed {UPGRADE}"
        status = json.loads(root.run("cordonctl", "status", "--json").stdout)
        assert status["pid"] == cordond.pid
        assert snapshot(["/var/lib/cordon"], root=str(root.path(""))) == state
        assert root.fingerprint() == (fingerprint, True)
        assert root.read("/etc/cordon/policy.yaml") == policy
        assert_trusted(root, pem)

        # cordond stops: its programs stay attached, refusing captured connections (fail closed).
        cordond.send_signal(signal.SIGTERM)
        cordond.wait(timeout=30)
        links = []
        for pin in sorted(root.path("/sys/fs/bpf/cordon").glob("link_*")):
            shown = root.run("bpftool", "-j", "link", "show", "pinned", f"/sys/fs/bpf/cordon/{pin.name}")
            links.append(json.loads(shown.stdout)["id"])
        assert links and len(links) == len(status["programs"]["attached"])

        # Purge: prerm detaches them, so no program is left refusing connections with no cordond to
        # come back; the trust, the CA, the state and the package's files are gone.
        out = root.dpkg("--purge", "cordon").stdout
        assert "detached cordon's programs" in out
        for link in links:
            assert root.run("bpftool", "link", "show", "id", str(link), check=False).returncode != 0, link
        assert_purged(root, pem)
    finally:
        if cordond.poll() is None:
            cordond.kill()
            cordond.wait()
        if root.exists("/sys/fs/bpf/cordon") and root.exists("/usr/bin/cordonctl"):
            root.run("cordonctl", "detach", check=False)


def test_systemd_start_restart_stop_and_a_remove_before_the_purge(debs, chroot):
    """Where systemd is PID 1 (/run/systemd/system exists), with deb-systemd-invoke and systemctl
    recording what they are asked instead of doing it (but `systemctl preset`, which
    deb-systemd-helper enables with and which works offline): start on install, restart on
    upgrade with no stop before it, stop on removal. Removal without purge keeps the CA and the
    state but withdraws the trust; installing again trusts the same CA."""
    root = chroot
    v1, v2 = root.copy_in(debs[VERSION]), root.copy_in(debs[UPGRADE])
    root.path("/run/systemd/system").mkdir(parents=True)
    for tool, real in (("systemctl", "/bin/systemctl"), ("deb-systemd-invoke", None)):
        stub = root.path(f"/usr/local/sbin/{tool}")
        passthrough = f'case "$*" in *" preset "*) exec {real} "$@";; esac\n' if real else ""
        stub.write_text(f"#!/bin/sh\n{passthrough}echo \"{tool} $*\" >> /root/systemd-calls\n")
        stub.chmod(0o755)
    calls_file = root.path("/root/systemd-calls")
    reload = "systemctl --system daemon-reload"

    def invoked(reloaded=True):
        """What the maintainer scripts asked deb-systemd-invoke since the last call."""
        lines = calls_file.read_text().splitlines() if calls_file.exists() else []
        calls_file.write_text("")
        assert (reload in lines) == reloaded, lines
        return [line for line in lines if line.startswith("deb-systemd-invoke ")]

    out = root.dpkg("-i", v1).stdout
    assert "systemd is not running" not in out
    assert invoked() == ["deb-systemd-invoke start cordon.service"]
    assert root.exists(WANTS)
    fingerprint, trusted = root.fingerprint()
    pem = root.ca_pem()
    assert trusted

    root.dpkg("-i", v2)
    assert invoked() == ["deb-systemd-invoke restart cordon.service"]  # no stop: adoption, no gap

    root.dpkg("--remove", "cordon")
    assert invoked() == ["deb-systemd-invoke stop cordon.service"]
    assert root.package() == f"deinstall ok config-files {UPGRADE}"
    assert not root.exists("/usr/sbin/cordond")
    assert root.ca_pem() == pem and root.exists("/var/lib/cordon/ca/ca.key")  # kept until the purge
    assert root.exists("/etc/cordon/policy.yaml")
    assert_untrusted(root, pem)
    assert os.readlink(root.path("/etc/systemd/system/cordon.service")) == "/dev/null"  # masked while removed

    root.dpkg("-i", v2)
    assert invoked() == ["deb-systemd-invoke restart cordon.service"]
    assert root.fingerprint() == (fingerprint, True)
    assert_trusted(root, pem)
    assert not root.exists("/etc/systemd/system/cordon.service") and root.exists(WANTS)

    root.dpkg("--purge", "cordon")
    assert invoked() == ["deb-systemd-invoke stop cordon.service"]
    assert_purged(root, pem)


def test_a_refused_trust_stops_the_configuration_before_the_service(debs, chroot):
    """Another NODE_EXTRA_CA_CERTS in /etc/environment: `ca install` refuses to replace it (Node
    reads one file), postinst fails before enabling the service, and once the admin has sorted it
    out `dpkg --configure` finishes the job."""
    root = chroot
    v1 = root.copy_in(debs[VERSION])
    original = root.read("/etc/environment")
    theirs = "NODE_EXTRA_CA_CERTS=/etc/ssl/their-ca.pem\n"
    root.path("/etc/environment").write_text(original + theirs)
    r = root.run("dpkg", "-i", v1, check=False)
    assert r.returncode != 0
    assert "already sets NODE_EXTRA_CA_CERTS=/etc/ssl/their-ca.pem" in r.stderr
    assert "dpkg --configure cordon" in r.stderr
    assert root.package() == f"install ok half-configured {VERSION}"
    assert not root.exists(WANTS) and not root.exists(TRUSTED_CERT)

    root.path("/etc/environment").write_text(original)
    root.run("dpkg", "--configure", "cordon")
    assert root.package() == f"install ok installed {VERSION}"
    assert root.exists(WANTS)
    assert_trusted(root, root.ca_pem())
    root.dpkg("--purge", "cordon")
    assert root.read("/etc/environment") == original


def test_lintian_reports_only_what_the_readme_lists(debs):
    r = subprocess.run(["lintian", "--pedantic", "-I", str(debs[VERSION])], capture_output=True, text=True,
                       timeout=600)
    found = sorted(set(re.findall(r"^[EWIPX]: cordon: (\S+)", r.stdout, re.M)))
    readme = (ROOT / "README.md").read_text()
    listed = sorted(set(re.findall(r"^\| `([a-z0-9][a-z0-9.+-]*)` \| [EWIPX] \|", readme, re.M)))
    assert found == listed, f"lintian now says:\n{r.stdout}"


def test_make_install_and_uninstall_leave_nothing_behind(tmp_path):
    dest = tmp_path / "dest"
    make("install", f"DESTDIR={dest}", "PREFIX=/usr/local")
    files = sorted("/" + str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert files == sorted([
        "/usr/local/sbin/cordond", "/usr/local/bin/cordonctl", "/usr/local/lib/systemd/system/cordon.service",
        "/usr/local/lib/tmpfiles.d/cordon.conf", "/usr/local/share/doc/cordon/README.md",
        "/usr/local/share/man/man8/cordond.8", "/usr/local/share/man/man1/cordonctl.1",
        "/usr/share/cordon/cursor.desc", "/usr/share/cordon/policy.yaml.example",
        "/usr/local/sbin/cordon-runner-setup", "/usr/local/share/man/man8/cordon-runner-setup.8",
        "/usr/local/share/doc/cordon/runners.md", "/usr/share/cordon/runner-hooks/github-job-started.sh",
        "/usr/share/cordon/runner-hooks/gitlab-pre-build.sh"])
    unit = (dest / "usr/local/lib/systemd/system/cordon.service").read_text()
    assert "ExecStart=/usr/local/sbin/cordond\n" in unit
    assert "file:///usr/local/share/doc/cordon/README.md" in unit
    assert os.access(dest / "usr/local/sbin/cordond", os.X_OK)

    make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr/local")
    left = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert not left, f"make uninstall left {left}"
    # Only the standard directories `install -D` made stay; cordon's own go.
    for own in ("usr/share/cordon", "usr/local/share/doc/cordon"):
        assert not (dest / own).exists()
