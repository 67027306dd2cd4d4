"""The host CA and the host trust stores: `cordonctl ca init/install/uninstall` for real, checked with
real clients (openssl verify, curl, Node), in a private mount namespace so the real host never changes.

In the namespace, /etc is an overlay whose writes land in a temporary directory (install rewrites
/etc/environment by rename within /etc, so a bind-mounted copy of the single file would not do:
rename onto a mount point fails, and the temporary file would be created in the real /etc), and
/usr/local/share/ca-certificates and /etc/hosts are bind-mounted temporary copies.
/etc/ca-certificates/update.d is hidden behind an empty directory: its Java hook runs dpkg triggers,
which would write to the real /var/lib/dpkg. Every test in the namespace also checks that the real
files are byte-identical before and after.
"""
import hashlib
import json
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import threading
import time

import pytest

import conftest
from conftest import NOBODY

# build/cordonctl, as in conftest.py; CORDON_BUILD=build-ca (say) tests another build directory's.
CORDONCTL = (conftest.ROOT / os.environ["CORDON_BUILD"] / "cordonctl") if os.environ.get("CORDON_BUILD") \
    else conftest.CORDONCTL

OUR_CERT = "/usr/local/share/ca-certificates/cordon-ca.crt"
ENV_LINE = f"NODE_EXTRA_CA_CERTS={OUR_CERT}"
# What install may touch, and what the namespace makes private.
PROTECTED = ["/etc/ssl/certs", "/usr/local/share/ca-certificates", "/etc/environment", "/etc/profile.d",
             "/etc/systemd", "/etc/environment.d", "/etc/hosts", "/etc/ca-certificates"]
TEST_NAME = "ci-gate.cordon.test"
SERVER_ADDR = "127.77.250.1"
# Clients run with only this: the harness's environment names CA bundles (CURL_CA_BUNDLE,
# NODE_EXTRA_CA_CERTS, ...) that would decide the outcome instead of the host's trust stores.
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "LC_ALL": "C"}


def snapshot(paths, root=""):
    """Every file, directory and symlink under `paths` (seen under `root`): type, mode, owner, and
    content hash or link target."""
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


def diff(before, after):
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k)]


class PrivateHost:
    """A mount namespace held open by a sleeping process; commands enter it with nsenter."""

    def __init__(self, tmp):
        self.tmp = tmp
        upper, work, cas, hooks = (tmp / d for d in ("etc-upper", "etc-work", "ca-certificates", "no-hooks"))
        for d in (upper, work, hooks):
            d.mkdir()
        shutil.copytree("/usr/local/share/ca-certificates", cas, symlinks=True)
        hosts = tmp / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{SERVER_ADDR} {TEST_NAME}\n")
        script = (
            "set -e\n"
            f"mount -t overlay cordon-it-etc -o lowerdir=/etc,upperdir={upper},workdir={work} /etc\n"
            f"mount --bind {cas} /usr/local/share/ca-certificates\n"
            f"mount --bind {hooks} /etc/ca-certificates/update.d\n"
            f"mount --bind {hosts} /etc/hosts\n"
            "echo ready\n"
            "exec sleep 3600\n")
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.kill()
            raise AssertionError(f"could not set up the private namespace: {self.holder.stderr.read()}")

    def path(self, p):
        """`p` as the namespace sees it."""
        return pathlib.Path(f"/proc/{self.holder.pid}/root{p}")

    def snapshot(self):
        return snapshot(PROTECTED, root=f"/proc/{self.holder.pid}/root")

    def run(self, *argv, user=None, env=None, check=False, timeout=60):
        argv = [str(a) for a in argv]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + argv
        argv = ["nsenter", f"--target={self.holder.pid}", "--mount", "--"] + argv
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env=env if env is not None else CLEAN_ENV)
        if check and r.returncode != 0:
            raise AssertionError(f"{argv} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def ctl(self, state, *args, check=False):
        return self.run(CORDONCTL, "--state-dir", state, "ca", *args, check=check)

    def close(self):
        self.holder.kill()
        self.holder.wait()
        self.holder.stdout.close()
        self.holder.stderr.close()


@pytest.fixture
def host(tmp_path):
    if not CORDONCTL.exists():
        pytest.fail(f"{CORDONCTL} is missing: run `make` first")
    real_before = snapshot(PROTECTED)
    h = PrivateHost(tmp_path)
    try:
        yield h
    finally:
        h.close()
        assert not diff(real_before, snapshot(PROTECTED)), "the real host's files changed"
        leftovers = [p for p in os.listdir("/etc") if ".cordon-" in p] + \
            [p for p in os.listdir("/usr/local/share/ca-certificates") if "cordon" in p]
        assert not leftovers, f"files of ours on the real host: {leftovers}"


@pytest.fixture
def tls_server(tmp_path):
    """openssl s_server on SERVER_ADDR:443 presenting a given certificate+key PEM file."""
    procs = []

    def start(pem):
        p = subprocess.Popen(["openssl", "s_server", "-accept", f"{SERVER_ADDR}:443", "-cert", str(pem),
                              "-key", str(pem), "-www", "-quiet"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((SERVER_ADDR, 443), timeout=1).close()
                return p
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"s_server did not start: {p.stderr.read()}")
                time.sleep(0.05)

    yield start
    for p in procs:
        p.kill()
        p.wait()
        p.stderr.close()


NODE_GET = ("const https=require('https');https.get('https://%s/',r=>{r.resume();r.on('end',()=>"
            "console.log(JSON.stringify({status:r.statusCode})))}).on('error',e=>{"
            "console.log(JSON.stringify({error:e.code||String(e)}));process.exit(1)})" % TEST_NAME)


def read_env_file(host, name):
    """KEY=VALUE lines of a file in the namespace, the way pam_env reads /etc/environment."""
    env = {}
    for line in host.path(name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip().strip('"')
    return env


def clients(host, leaf):
    """What each real client, run as nobody with the host's defaults, says about the leaf and the
    server presenting it: "trusted", or why not."""
    verify = host.run("openssl", "verify", "-verify_hostname", TEST_NAME, leaf, user=NOBODY)
    curl = host.run("curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                    f"https://{TEST_NAME}/", user=NOBODY)
    env = dict(CLEAN_ENV)
    extra = read_env_file(host, "/etc/environment").get("NODE_EXTRA_CA_CERTS")
    if extra:
        env["NODE_EXTRA_CA_CERTS"] = extra
    node = host.run("node", "-e", NODE_GET, user=NOBODY, env=env)
    return {
        "openssl": "trusted" if verify.returncode == 0 else verify.stdout + verify.stderr,
        "curl": "trusted" if curl.returncode == 0 and curl.stdout == "200" else curl.stderr,
        "node": "trusted" if node.returncode == 0 and json.loads(node.stdout) == {"status": 200} else node.stdout,
    }


def assert_untrusted(result):
    """Refused, and for the right reason: an unknown issuer (not a missing file or a dead server)."""
    assert "unable to get local issuer certificate" in result["openssl"], result
    assert "curl: (60) SSL certificate problem: unable to get local issuer certificate" in result["curl"], result
    assert json.loads(result["node"]) == {"error": "UNABLE_TO_VERIFY_LEAF_SIGNATURE"}, result


def test_install_makes_real_clients_trust_the_ca_and_uninstall_restores_every_file(host, tls_server, tmp_path):
    state = tmp_path / "state"
    r = host.ctl(state, "init", check=True)
    assert r.stdout.startswith(f"created the cordon host CA in {state}/ca\n")
    crt, key = state / "ca" / "ca.crt", state / "ca" / "ca.key"
    fingerprint = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-fingerprint", "-sha256"],
                                 capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
    assert f"SHA-256:     {fingerprint}\n" in r.stdout
    assert f"certificate: {crt}\n" in r.stdout
    modes = {p: (stat.S_IMODE(os.stat(p).st_mode), os.stat(p).st_uid) for p in (state, state / "ca", key, crt)}
    assert modes == {state: (0o700, 0), state / "ca": (0o700, 0), key: (0o600, 0), crt: (0o644, 0)}
    again = host.ctl(state, "init", check=True)
    assert again.stdout.startswith("the cordon host CA already exists") and fingerprint in again.stdout

    leaf = tmp_path / "leaf.pem"
    issued = host.ctl(state, "issue", TEST_NAME, check=True)
    leaf.write_text(issued.stdout)
    os.chmod(leaf, 0o644)  # the clients run as nobody; the key in it is a throwaway
    tls_server(leaf)

    # update-ca-certificates rewrites a store that is not in its own canonical form (this host has a
    # regular file where it puts a symlink); one run first, so what follows measures cordon alone.
    host.run("update-ca-certificates", check=True)
    before = host.snapshot()
    env_before = host.path("/etc/environment").read_text()
    assert_untrusted(clients(host, leaf))

    r = host.ctl(state, "install", check=True)
    assert fingerprint in r.stdout
    installed = host.snapshot()
    # Only ours changed: our files, our /etc/environment line, and what update-ca-certificates derives.
    subject_hash = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-subject_hash"], capture_output=True,
                                  text=True, check=True).stdout.strip()
    expected = {OUR_CERT, "/etc/environment", "/etc/profile.d/cordon-ca.sh", "/etc/environment.d/90-cordon-ca.conf",
                "/etc/systemd/system.conf.d/cordon-ca.conf", "/etc/ssl/certs/cordon-ca.pem",
                f"/etc/ssl/certs/{subject_hash}.0", "/etc/ssl/certs/ca-certificates.crt"}
    if "/etc/systemd/system.conf.d" not in before:
        expected.add("/etc/systemd/system.conf.d")
    assert {line.split(": ")[0] for line in diff(before, installed)} == expected
    assert clients(host, leaf) == {"openssl": "trusted", "curl": "trusted", "node": "trusted"}
    # Node trusts it because of the variable, not by chance: without it, the same call fails.
    bare = host.run("node", "-e", NODE_GET, user=NOBODY)
    assert json.loads(bare.stdout) == {"error": "UNABLE_TO_VERIFY_LEAF_SIGNATURE"}, bare.stdout + bare.stderr

    assert host.path(OUR_CERT).read_text() == crt.read_text()
    assert stat.S_IMODE(host.path(OUR_CERT).stat().st_mode) == 0o644
    assert host.path("/etc/ssl/certs/cordon-ca.pem").is_symlink()
    assert crt.read_text() in host.path("/etc/ssl/certs/ca-certificates.crt").read_text()
    assert host.path("/etc/environment").read_text() == \
        (env_before + ENV_LINE + "\n" if not env_before or env_before.endswith("\n") else env_before + "\n" + ENV_LINE)
    login = host.run("sh", "-lc", "echo \"$NODE_EXTRA_CA_CERTS\"", user=NOBODY, check=True)
    assert login.stdout == OUR_CERT + "\n"
    dropin = host.path("/etc/systemd/system.conf.d/cordon-ca.conf").read_text()
    assert f"[Manager]\nDefaultEnvironment={ENV_LINE}\n" in dropin
    assert read_env_file(host, "/etc/environment.d/90-cordon-ca.conf") == {"NODE_EXTRA_CA_CERTS": OUR_CERT}
    for f in ("/etc/profile.d/cordon-ca.sh", "/etc/systemd/system.conf.d/cordon-ca.conf",
              "/etc/environment.d/90-cordon-ca.conf"):
        st = host.path(f).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, 0), f
    shown = host.ctl(state, "show", check=True).stdout
    assert f"SHA-256:     {fingerprint}\n" in shown and f"trusted:     yes ({OUR_CERT})" in shown
    assert "subject:     O = cordon, CN = cordon host CA (" in shown
    assert shown.endswith(crt.read_text())

    # Idempotent: a second install changes nothing.
    host.ctl(state, "install", check=True)
    assert not diff(installed, host.snapshot())

    host.ctl(state, "uninstall", check=True)
    assert not diff(before, host.snapshot()), "uninstall did not restore the trust stores byte for byte"
    assert_untrusted(clients(host, leaf))
    host.ctl(state, "uninstall", check=True)
    assert not diff(before, host.snapshot())
    assert "trusted:     no" in host.ctl(state, "show", check=True).stdout


def test_install_refuses_to_replace_another_node_extra_ca_certs(host, tmp_path):
    state = tmp_path / "state"
    host.ctl(state, "init", check=True)
    host.path("/etc/environment").write_text("LANG=C.UTF-8\nNODE_EXTRA_CA_CERTS=\"/opt/corp/ca.pem\"\n")
    before = host.snapshot()
    r = host.ctl(state, "install")
    assert r.returncode == 1
    assert "/etc/environment line 2 already sets NODE_EXTRA_CA_CERTS=/opt/corp/ca.pem" in r.stderr
    assert "cordonctl ca install" in r.stderr
    # Refused before anything changed: not even the OS store.
    assert not diff(before, host.snapshot())


def test_other_environment_lines_survive_install_and_uninstall(host, tmp_path):
    state = tmp_path / "state"
    for original in ["PATH=\"/usr/local/bin:/usr/bin:/bin\"\n# proxy settings\n\nLANG=C.UTF-8\n",
                     "LANG=C.UTF-8\nTZ=UTC",  # no final newline
                     # Already ours in another spelling: kept, and left alone by uninstall.
                     f"export NODE_EXTRA_CA_CERTS='{OUR_CERT}'\n"]:
        host.path("/etc/environment").write_text(original)
        os.chmod(host.path("/etc/environment"), 0o640)
        host.ctl(state, "install", check=True)
        content = host.path("/etc/environment").read_text()
        if ENV_LINE in original or OUR_CERT in original:
            assert content == original
        else:
            assert content.startswith(original) and content.count(ENV_LINE) == 1
            assert read_env_file(host, "/etc/environment")["NODE_EXTRA_CA_CERTS"] == OUR_CERT
        assert stat.S_IMODE(host.path("/etc/environment").stat().st_mode) == 0o640
        host.ctl(state, "uninstall", check=True)
        assert host.path("/etc/environment").read_text() == original


def test_ca_commands_are_root_only_and_check_their_usage(tmp_path):
    state = tmp_path / "state"

    def ctl(*args, user=None):
        argv = [str(CORDONCTL), "--state-dir", str(state), *args]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + argv
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    for args in (["ca", "init"], ["ca", "show"], ["ca", "install"], ["ca", "uninstall"]):
        r = ctl(*args, user=NOBODY)
        assert r.returncode == 1 and "is for root" in r.stderr, (args, r.stderr)
    assert not state.exists()
    for args in (["ca"], ["ca", "frob"], ["ca", "init", "extra"], ["ca", "issue"]):
        r = ctl(*args)
        assert r.returncode == 2 and "usage: cordonctl" in r.stderr, (args, r.stderr)
    r = ctl("ca", "show")
    assert r.returncode == 1 and "cordonctl ca init" in r.stderr
    assert "ca init | show | install | uninstall" in subprocess.run(
        [str(CORDONCTL), "--help"], capture_output=True, text=True).stdout


def test_a_key_others_can_read_is_refused(tmp_path):
    state = tmp_path / "state"
    subprocess.run([str(CORDONCTL), "--state-dir", str(state), "ca", "init"], check=True, capture_output=True)
    key = state / "ca" / "ca.key"
    os.chmod(key, 0o640)
    r = subprocess.run([str(CORDONCTL), "--state-dir", str(state), "ca", "show"], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{key} has mode 0640" in r.stderr and "chmod 600" in r.stderr
    os.chmod(key, 0o600)
    subprocess.run([str(CORDONCTL), "--state-dir", str(state), "ca", "show"], check=True, capture_output=True)


def test_concurrent_init_creates_one_ca(tmp_path):
    state = tmp_path / "state"
    results = [None] * 8

    def init(i):
        results[i] = subprocess.run([str(CORDONCTL), "--state-dir", str(state), "ca", "init"],
                                    capture_output=True, text=True, timeout=30)

    threads = [threading.Thread(target=init, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sum(r.stdout.startswith("created") for r in results) == 1
    assert len({r.stdout.splitlines()[3] for r in results}) == 1  # one fingerprint
    assert sorted(os.listdir(state)) == ["ca"] and sorted(os.listdir(state / "ca")) == ["ca.crt", "ca.key"]


def test_a_recreated_ca_replaces_the_old_one_everywhere(host, tmp_path):
    old_state, new_state = tmp_path / "old", tmp_path / "new"
    host.run("update-ca-certificates", check=True)
    before = host.snapshot()
    leaves = {}
    for name, state in (("old", old_state), ("new", new_state)):
        host.ctl(state, "init", check=True)
        leaves[name] = tmp_path / f"{name}-leaf.pem"
        leaves[name].write_text(host.ctl(state, "issue", TEST_NAME, check=True).stdout)
        os.chmod(leaves[name], 0o644)
    host.ctl(old_state, "install", check=True)
    host.ctl(new_state, "install", check=True)

    def verifies(leaf, *where):
        return host.run("openssl", "verify", *where, leaf, user=NOBODY).returncode == 0

    # Through the bundle file and through the hashed directory alike.
    for where in ((), ("-no-CAfile", "-CApath", "/etc/ssl/certs")):
        assert verifies(leaves["new"], *where), where
        assert not verifies(leaves["old"], *where), where
    bundle = host.path("/etc/ssl/certs/ca-certificates.crt").read_text()
    assert (new_state / "ca" / "ca.crt").read_text() in bundle
    assert (old_state / "ca" / "ca.crt").read_text() not in bundle
    host.ctl(new_state, "uninstall", check=True)
    assert not diff(before, host.snapshot())
