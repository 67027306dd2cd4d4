"""scripts/cordon-runner-setup: a runner's jobs as the enforced scope, and their enrollment hooks.

Every run works on a fake root (`--root`) holding fake runner installations: unit files, a
GitHub runner directory with its .env, GitLab's config.toml, docker's daemon.json, a passwd. The
policies it writes are checked with the real build/cordond. The last test runs cordond on the real
kernel with the cgroups the script enforces, mapped below a test cgroup. Nothing touches the
host's /etc.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest

from conftest import CORDOND, NOBODY, ROOT, echo_handler

SCRIPT = ROOT / "scripts" / "cordon-runner-setup"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
       "CORDOND": str(CORDOND)}
GH_UNIT = "actions.runner.acme-app.runner1.service"
GH_DIR = "/home/runner/actions-runner"
SLICE = "/cordon.slice/cordon-jobs.slice"
HOOK_LINE = "ACTIONS_RUNNER_HOOK_JOB_STARTED=/usr/share/cordon/runner-hooks/github-job-started.sh"
ENV_MARK = "# cordon-runner-setup added the next line; cordon-runner-setup --undo removes both"
TOML_LINE = '  pre_build_script = ". /usr/share/cordon/runner-hooks/gitlab-pre-build.sh"'
ENV_FILE = "LANG=C.UTF-8\nJAVA_HOME=/usr/lib/jvm/java-17\n"
CONFIG_TOML = """concurrent = 2
check_interval = 0

[session_server]
  session_timeout = 1800

[[runners]]
  name = "shell"
  url = "https://gitlab.example.com"
  token = "glrt-shell"
  executor = "shell"
  [runners.cache]
    MaxUploadedArchiveSize = 0

[[runners]]
  name = "docker"
  url = "https://gitlab.example.com"
  token = "glrt-docker"
  executor = "docker"
  [runners.docker]
    image = "debian:bookworm"
    pre_build_script = "a key of the docker table, not of the runner"

[[runners]]
  name = "own-script"
  url = "https://gitlab.example.com"
  token = "glrt-own"
  executor = "shell"
  pre_build_script = "echo site setup"
"""
DAEMON_JSON = '{\n  "log-driver": "journald",\n  "live-restore": true\n}\n'


def fake_root(base, policy=None):
    """A host with a GitHub runner (user runner, uid 1001) and a GitLab runner (gitlab-runner,
    uid 998), laid out as their installers leave them."""
    root = base / "root"
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nrunner:x:1001:1001::/home/runner:/bin/bash\n"
                      "gitlab-runner:x:998:998:GitLab Runner:/home/gitlab-runner:/bin/bash\n",
        # What the runner's svc.sh writes.
        f"etc/systemd/system/{GH_UNIT}": f"""[Unit]
Description=GitHub Actions Runner (acme-app.runner1)
After=network.target

[Service]
ExecStart={GH_DIR}/runsvc.sh
User=runner
WorkingDirectory={GH_DIR}
KillMode=process
KillSignal=SIGTERM
TimeoutStopSec=5min

[Install]
WantedBy=multi-user.target
""",
        f"{GH_DIR[1:]}/.env": ENV_FILE,
        f"{GH_DIR[1:]}/runsvc.sh": "#!/bin/bash\n",
        # What `gitlab-runner install --user gitlab-runner` writes.
        "lib/systemd/system/gitlab-runner.service": """[Unit]
Description=GitLab Runner
ConditionFileIsExecutable=/usr/bin/gitlab-runner
After=syslog.target network.target

[Service]
StartLimitInterval=5
StartLimitBurst=10
ExecStart=/usr/bin/gitlab-runner "run" "--working-directory" "/home/gitlab-runner" "--config" "/etc/gitlab-runner/config.toml" "--service" "gitlab-runner" "--user" "gitlab-runner"
Restart=always
RestartSec=120

[Install]
WantedBy=multi-user.target
""",
        "etc/gitlab-runner/config.toml": CONFIG_TOML,
        "etc/docker/daemon.json": DAEMON_JSON,
        "etc/systemd/system/multi-user.target.wants/.keep": "",
    }
    if policy is not None:
        files["etc/cordon/policy.yaml"] = policy
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "etc/gitlab-runner/config.toml").chmod(0o600)
    (root / GH_DIR[1:] / "runsvc.sh").chmod(0o755)
    return root


def snapshot(root):
    """Every file, directory and symlink under root: type, mode, owner, content or target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = pathlib.Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", st.st_mode, st.st_uid, st.st_gid, p.read_bytes())
    return out


def run_setup(root, *args, check=True, env=None):
    r = subprocess.run([str(SCRIPT), *args, "--root", str(root)], capture_output=True, text=True,
                       env=env or ENV, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def effective_enforce(policy):
    """enforce.cgroups and exempt_cgroups as the real cordond loads them from the file."""
    r = subprocess.run([str(CORDOND), "--check-config", "--config", str(policy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    section = re.search(r"^enforce:\n((?:  .*\n)+)", r.stdout, re.M).group(1)
    lists = {m.group(1): re.findall(r'"([^"]*)"', m.group(2)) for m in re.finditer(r"^  (\w+): (.*)$", section, re.M)}
    return lists["cgroups"], lists["exempt_cgroups"]


def test_github_jobs_go_into_the_slice_the_policy_enforces_and_the_hook_is_added_once(tmp_path):
    root = fake_root(tmp_path)
    before = snapshot(root)
    r = run_setup(root, "github")

    dropin = (root / f"etc/systemd/system/{GH_UNIT}.d/zz-cordon-runner-setup.conf").read_text()
    assert "\n[Service]\nSlice=cordon-jobs.slice\n" in dropin
    # The runner does not start while cordond is down (Wants= alone would let it).
    assert "\nExecStartPre=+/bin/sh -c 'systemctl is-active --quiet cordon.service'\n" in dropin
    assert "\n[Unit]\nWants=cordon.service\nAfter=cordon.service\n" in dropin
    # The enforced cgroups exist before cordond starts: cordon.service pulls their slices in.
    cordon = (root / "etc/systemd/system/cordon.service.d/zz-cordon-runner-setup.conf").read_text()
    assert "\nWants=cordon-jobs.slice user-1001.slice\nAfter=cordon-jobs.slice user-1001.slice\n" in cordon
    assert (root / "etc/systemd/system/cordon-jobs.slice").exists()
    # A new policy file with only the enforce block, which the real cordond loads.
    policy = root / "etc/cordon/policy.yaml"
    assert effective_enforce(policy) == ([SLICE, "/user.slice/user-1001.slice"], [])
    assert policy.read_text().count("enforce:") == 1
    assert f"--check-config accepts the new policy; enforce.cgroups: {SLICE} /user.slice/user-1001.slice" in r.stdout
    assert (root / GH_DIR[1:] / ".env").read_text() == ENV_FILE + ENV_MARK + "\n" + HOOK_LINE + "\n"
    # Not under --root: what systemd would be asked, in the order that keeps jobs enforced.
    commands = [line.strip() for line in r.stdout.splitlines() if line.startswith("  systemctl")]
    assert commands == ["systemctl daemon-reload", "systemctl start cordon-jobs.slice user-1001.slice",
                        f"systemctl try-restart {GH_UNIT}", "systemctl try-restart cordon.service"]
    # Docker is left alone without --docker, but the admin is told about container jobs.
    assert (root / "etc/docker/daemon.json").read_text() == DAEMON_JSON
    assert "--docker puts them in cordon-jobs.slice" in r.stdout

    after = snapshot(root)
    r = run_setup(root, "github")
    assert snapshot(root) == after, "a second run changed something"
    assert "nothing to change" in r.stdout and "systemctl" not in r.stdout

    r = run_setup(root, "github", "--undo")
    assert snapshot(root) == before
    commands = [line.strip() for line in r.stdout.splitlines() if line.startswith("  systemctl")]
    assert commands == ["systemctl daemon-reload", "systemctl try-restart cordon.service",
                        f"systemctl try-restart {GH_UNIT}"]
    assert "nothing to change" in run_setup(root, "github", "--undo").stdout


def test_a_dry_run_shows_the_diffs_and_changes_nothing(tmp_path):
    root = fake_root(tmp_path)
    before = snapshot(root)
    r = run_setup(root, "github", "--docker", "--dry-run")
    assert snapshot(root) == before
    assert "+Slice=cordon-jobs.slice" in r.stdout
    assert f"+{HOOK_LINE}" in r.stdout
    assert '+  "cgroup-parent": "cordon-jobs.slice",' in r.stdout
    assert f'+  cgroups: ["{SLICE}", "/user.slice/user-1001.slice"]' in r.stdout
    assert "then it would run:" in r.stdout and r.stdout.rstrip().endswith("dry run, nothing changed")
    # An undo with nothing set up has nothing to do.
    r = run_setup(root, "github", "--undo", "--dry-run", check=False)
    assert snapshot(root) == before


def test_a_policy_with_its_own_enforce_section_is_never_rewritten(tmp_path):
    own = "# site policy\nenforce:\n  cgroups: [\"/system.slice\"]\ndefault_action: allow\n"
    root = fake_root(tmp_path, policy=own)
    before = snapshot(root)
    r = run_setup(root, "github", check=False)
    assert r.returncode == 1
    assert snapshot(root) == before
    # Exactly what to put there, and that nothing happened.
    assert (f'does not enforce ["{SLICE}", "/user.slice/user-1001.slice"]. It is left as it is: make its enforce '
            f'section read\n  enforce:\n    cgroups: ["{SLICE}", "/user.slice/user-1001.slice"]\n') in r.stderr
    assert "nothing was changed" in r.stderr

    # A section that already enforces those cgroups (here: everything) is fine as it is.
    everything = "enforce:\n  cgroups: [\"/\"]\n"
    (root / "etc/cordon/policy.yaml").write_text(everything)
    r = run_setup(root, "github")
    assert (root / "etc/cordon/policy.yaml").read_text() == everything
    assert "has its own 'enforce:' section, which already enforces" in r.stdout
    assert "try-restart cordon.service" not in r.stdout  # the policy did not change
    assert (root / f"etc/systemd/system/{GH_UNIT}.d/zz-cordon-runner-setup.conf").exists()

    # ... unless it exempts them.
    (root / "etc/cordon/policy.yaml").write_text(everything + "  exempt_cgroups: [\"/cordon.slice\"]\n")
    assert run_setup(root, "github", check=False).returncode == 1


def test_a_policy_without_enforce_gets_the_block_appended_and_undo_takes_it_out_byte_for_byte(tmp_path):
    # The package's policy.yaml: the embedded default, commented out (scripts/build-deb.sh).
    default = (ROOT / "userspace/config/default_policy.yaml").read_text()
    packaged = "# cordon's policy.\n#\n" + "".join(
        "#\n" if line == "" else f"# {line}\n" for line in default.splitlines())
    root = fake_root(tmp_path, policy=packaged)
    before = snapshot(root)
    run_setup(root, "github")
    text = (root / "etc/cordon/policy.yaml").read_text()
    assert text.startswith(packaged)
    assert effective_enforce(root / "etc/cordon/policy.yaml") == ([SLICE, "/user.slice/user-1001.slice"], [])
    run_setup(root, "github", "--undo")
    assert snapshot(root) == before

    # Hand edits inside the block stop the undo before anything changes.
    run_setup(root, "github")
    policy = root / "etc/cordon/policy.yaml"
    policy.write_text(policy.read_text().replace('"/user.slice/user-1001.slice"]', '"/user.slice"]\n  exempt_cgroups: []'))
    edited = snapshot(root)
    r = run_setup(root, "github", "--undo", check=False)
    assert r.returncode == 1 and "was edited by hand" in r.stderr
    assert snapshot(root) == edited


def test_gitlab_edit_config_adds_pre_build_script_where_missing_and_undo_restores(tmp_path):
    root = fake_root(tmp_path)
    before = snapshot(root)
    # Without --edit-config: printed, not edited.
    r = run_setup(root, "gitlab")
    assert (root / "etc/gitlab-runner/config.toml").read_text() == CONFIG_TOML
    assert f"(or run with --edit-config):\n{TOML_LINE}\n" in r.stdout
    assert "runner 'own-script'" in r.stdout and "has its own pre_build_script: make it start with" in r.stdout
    assert 'cgroup_parent = "cordon-jobs.slice"' in r.stdout  # the docker runner's instructions
    # gitlab-runner runs as root with --user: its shell jobs go through su into the user's slice.
    assert effective_enforce(root / "etc/cordon/policy.yaml") == ([SLICE, "/user.slice/user-998.slice"], [])
    dropin = root / "etc/systemd/system/gitlab-runner.service.d/zz-cordon-runner-setup.conf"
    assert "Slice=cordon-jobs.slice" in dropin.read_text()

    run_setup(root, "gitlab", "--edit-config")
    config = root / "etc/gitlab-runner/config.toml"
    text = config.read_text()
    assert text.count(TOML_LINE) == 2
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    runners = tomllib.loads(text)["runners"]
    hook = ". /usr/share/cordon/runner-hooks/gitlab-pre-build.sh"
    assert [r.get("pre_build_script") for r in runners] == [hook, hook, "echo site setup"]
    assert runners[1]["docker"]["pre_build_script"] == "a key of the docker table, not of the runner"
    assert tomllib.loads(CONFIG_TOML)["runners"][0] | {"pre_build_script": hook} == runners[0]

    after = snapshot(root)
    run_setup(root, "gitlab", "--edit-config")
    assert snapshot(root) == after
    run_setup(root, "gitlab", "--undo")
    assert snapshot(root) == before


def test_docker_gets_the_slice_as_cgroup_parent_merged_into_its_config(tmp_path):
    root = fake_root(tmp_path)
    before = snapshot(root)
    r = run_setup(root, "github", "--docker")
    daemon = root / "etc/docker/daemon.json"
    assert json.loads(daemon.read_text()) == {**json.loads(DAEMON_JSON), "cgroup-parent": "cordon-jobs.slice"}
    assert "systemctl restart docker" in r.stdout
    run_setup(root, "github", "--docker")
    run_setup(root, "github", "--undo")
    assert snapshot(root) == before

    # No daemon.json yet: a new one, removed again.
    daemon.unlink()
    before = snapshot(root)
    run_setup(root, "github", "--docker")
    assert json.loads(daemon.read_text()) == {"cgroup-parent": "cordon-jobs.slice"}
    run_setup(root, "github", "--undo")
    assert snapshot(root) == before

    # Another parent, or the cgroupfs driver: refused, nothing changed.
    for other in ('{"cgroup-parent": "ci.slice"}\n', '{"exec-opts": ["native.cgroupdriver=cgroupfs"]}\n'):
        daemon.write_text(other)
        before = snapshot(root)
        r = run_setup(root, "github", "--docker", check=False)
        assert r.returncode == 1 and snapshot(root) == before, r.stderr
    daemon.unlink()
    shutil.rmtree(root / "etc/docker")
    r = run_setup(root, "github", "--docker", check=False)
    assert r.returncode == 1 and "is docker installed?" in r.stderr


def test_without_python_existing_json_and_toml_are_not_edited(tmp_path):
    """python3 checks every edit of an existing daemon.json or config.toml: without it, none."""
    root = fake_root(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/bin", "/usr/sbin"):
        for tool in os.listdir(d):
            if not tool.startswith("python") and not (bin_dir / tool).exists():
                (bin_dir / tool).symlink_to(f"{d}/{tool}")
    env = {**ENV, "PATH": str(bin_dir)}
    before = snapshot(root)
    r = run_setup(root, "github", "--docker", check=False, env=env)
    assert r.returncode == 1 and "add \"cgroup-parent\": \"cordon-jobs.slice\" to it yourself" in r.stderr
    r = run_setup(root, "gitlab", "--edit-config", check=False, env=env)
    assert r.returncode == 1 and "needs python3 with tomllib" in r.stderr and TOML_LINE in r.stderr
    assert snapshot(root) == before


def test_another_job_started_hook_stops_the_setup_until_it_calls_cordons(tmp_path):
    root = fake_root(tmp_path)
    env = root / GH_DIR[1:] / ".env"
    env.write_text(ENV_FILE + "ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/site/job-started.sh\n")
    before = snapshot(root)
    r = run_setup(root, "github", check=False)
    assert r.returncode == 1 and snapshot(root) == before
    assert "already sets ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/site/job-started.sh" in r.stderr
    hook = root / "opt/site/job-started.sh"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\n/usr/share/cordon/runner-hooks/github-job-started.sh\nsite-setup\n")
    r = run_setup(root, "github")
    assert "already calls /usr/share/cordon/runner-hooks/github-job-started.sh" in r.stdout
    assert env.read_text() == ENV_FILE + "ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/site/job-started.sh\n"


def test_github_and_gitlab_runners_on_one_host_share_the_scope(tmp_path):
    root = fake_root(tmp_path)
    before = snapshot(root)
    run_setup(root, "github", "--docker")
    run_setup(root, "gitlab", "--edit-config")
    policy = root / "etc/cordon/policy.yaml"
    assert effective_enforce(policy)[0] == [SLICE, "/user.slice/user-1001.slice", "/user.slice/user-998.slice"]
    run_setup(root, "github", "--undo")
    # gitlab still needs the slice, its user's slice and docker's parent.
    assert effective_enforce(policy)[0] == [SLICE, "/user.slice/user-998.slice"]
    assert "cordon-jobs.slice" in (root / "etc/docker/daemon.json").read_text()
    assert (root / GH_DIR[1:] / ".env").read_text() == ENV_FILE
    run_setup(root, "gitlab", "--undo")
    assert snapshot(root) == before


def test_units_named_or_missing(tmp_path):
    root = fake_root(tmp_path)
    r = run_setup(root, "github", "--unit", "actions.runner.other.service", check=False)
    assert r.returncode == 1 and "no unit file for actions.runner.other.service" in r.stderr
    (root / f"etc/systemd/system/{GH_UNIT}").unlink()
    r = run_setup(root, "github", check=False)
    assert r.returncode == 1 and "no GitHub Actions runner unit" in r.stderr
    r = run_setup(root, "bitbucket", check=False)
    assert r.returncode == 2


def test_the_written_units_pass_systemd_analyze_verify(tmp_path):
    root = fake_root(tmp_path)
    run_setup(root, "github")
    units = tmp_path / "units"
    shutil.copytree(root / "etc/systemd/system", units, symlinks=True)
    unit = units / GH_UNIT
    # Runnable here: the fake runner's paths do not exist on this host, nor (--man=no) the manual page.
    unit.write_text(unit.read_text().replace(f"{GH_DIR}/runsvc.sh", "/bin/true")
                    .replace(f"WorkingDirectory={GH_DIR}", "WorkingDirectory=/")
                    .replace("User=runner", "User=root"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit), str(units / "cordon-jobs.slice")],
                       capture_output=True, text=True, env={**ENV, "SYSTEMD_LOG_LEVEL": "debug"})
    assert r.returncode == 0, r.stderr
    # The drop-in was read, and the dash put the jobs' slice inside cordon.slice.
    dump = r.stdout + r.stderr
    assert f"DropIn Path: {units}/{GH_UNIT}.d/zz-cordon-runner-setup.conf" in dump
    assert "Slice: cordon.slice" in dump


def test_shellcheck_finds_nothing():
    r = subprocess.run(["shellcheck", str(SCRIPT), *map(str, sorted((ROOT / "scripts/runner-hooks").glob("*.sh")))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_cordond_enforcing_the_scripts_cgroups_intercepts_the_runner_and_not_beside_it(
        tmp_path, cgroups, cordond, upstream, journal):
    """The cgroups the script enforces, below a test cgroup instead of the host's root: a client in
    the runner's unit, a job's su session and a job container are intercepted; another service is
    not."""
    root = fake_root(tmp_path)
    run_setup(root, "github")
    enforced, exempt = effective_enforce(root / "etc/cordon/policy.yaml")
    assert enforced == [SLICE, "/user.slice/user-1001.slice"] and exempt == []
    base = cgroups.path("").rstrip("/")
    container = "c0" * 32
    places = {
        f"cordon.slice/cordon-jobs.slice/{GH_UNIT}": True,
        f"cordon.slice/cordon-jobs.slice/docker-{container}.scope": True,
        "user.slice/user-1001.slice/session-c1.scope": True,
        "system.slice/backup.service": False,
        "user.slice/user-1002.slice/session-c2.scope": False,
    }
    for place in places:
        (cgroups.base / place).mkdir(parents=True)
    server = upstream("127.77.170.1", 80, echo_handler)
    args = [a for path in enforced for a in ("--enforce-cgroup", base + path)]
    d = cordond(["127.77.170.1/32"], args=args)
    assert d.status()["enforce"]["cgroups"] == [base + path for path in enforced]

    for n, (place, intercepted) in enumerate(places.items()):
        res = cgroups.client(place, "peer", "127.77.170.1", 80, user=NOBODY)
        assert res["reply"] == "ping\n" and res["peer"] == ["127.77.170.1", 80]
        # Intercepted: the server saw cordond's upstream socket, not the client's own.
        assert (list(server.peers[n]) != res["local"]) == intercepted, place
    st = d.status()
    assert st["counters"]["redirected"] == 3 and st["counters"]["unenforced"] == 2
    closes = journal.wait_for(d.pid, count=3, CORDON_EVENT="connection_close")
    seen = {e["CORDON_CGROUP"]: e for e in closes}
    assert sorted(seen) == sorted(f"{base}/{p}" for p, i in places.items() if i)
    assert seen[f"{base}/cordon.slice/cordon-jobs.slice/{GH_UNIT}"]["CORDON_UNIT"] == GH_UNIT
    assert seen[f"{base}/cordon.slice/cordon-jobs.slice/docker-{container}.scope"]["CORDON_CONTAINER"] == container


# --- files the jobs own --------------------------------------------------------------------------
JOB_UID = NOBODY


@pytest.fixture
def open_base():
    """A base directory others may traverse: the runner user must reach its directory under the
    fake root, which pytest's own tmp_path (0700) would not let it."""
    import tempfile
    base = pathlib.Path(tempfile.mkdtemp(prefix="cordon-runner-setup-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def own_runner_home(root, uid=JOB_UID):
    """/home/runner and everything below it belong to the runner user, as the installer leaves it."""
    home = root / "home/runner"
    for p in [home, *home.rglob("*")]:
        os.lchown(p, uid, uid)


def owners_below(path):
    return {str(p.relative_to(path)): p.lstat().st_uid for p in [path, *path.rglob("*")]}


def test_a_runner_directory_the_jobs_own_is_written_as_its_owner(open_base):
    root = fake_root(open_base)
    env = root / GH_DIR[1:] / ".env"
    env.chmod(0o640)
    own_runner_home(root)
    before = snapshot(root)
    run_setup(root, "github")
    assert env.read_text() == ENV_FILE + ENV_MARK + "\n" + HOOK_LINE + "\n"
    st = env.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (JOB_UID, JOB_UID, 0o640)
    # No root-owned file (a temporary one, a new .env) anywhere the jobs own.
    runner = root / GH_DIR[1:]
    assert set(owners_below(root / "home/runner").values()) == {JOB_UID}
    assert sorted(p.name for p in runner.iterdir()) == [".env", "runsvc.sh"]
    assert "nothing to change" in run_setup(root, "github").stdout
    run_setup(root, "github", "--undo")
    assert snapshot(root) == before

    # Written with the owner's rights, not root's: a directory its owner may not write in is refused
    # (root could have written there).
    runner.chmod(0o555)
    before = snapshot(root)
    r = run_setup(root, "github", check=False)
    assert r.returncode == 1 and f"is not a directory uid {JOB_UID} can write in" in r.stderr
    assert "nothing was changed" in r.stderr and snapshot(root) == before


@pytest.mark.parametrize("owner", [0, JOB_UID])
def test_an_env_that_is_a_symlink_is_neither_read_nor_written(open_base, owner):
    root = fake_root(open_base)
    secret = root / "etc/runner-secret"
    secret.write_text("SECRET_TOKEN=hunter2\n")
    secret.chmod(0o600)
    env = root / GH_DIR[1:] / ".env"
    env.unlink()
    env.symlink_to(secret)
    if owner:
        own_runner_home(root, owner)
    before = snapshot(root)
    for args in (["github"], ["github", "--dry-run"], ["github", "--undo"]):
        r = run_setup(root, *args, check=False)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert f"{env} is a symbolic link: not following it" in r.stderr
        assert "hunter2" not in r.stdout + r.stderr
        assert snapshot(root) == before, args
    assert secret.read_text() == "SECRET_TOKEN=hunter2\n"


def test_a_runner_directory_replaced_by_a_symlink_is_refused(open_base):
    root = fake_root(open_base)
    private = root / "etc/private"
    private.mkdir(mode=0o700)
    (private / ".env").write_text("SECRET_TOKEN=hunter2\n")
    (private / ".env").chmod(0o600)
    runner = root / GH_DIR[1:]
    shutil.rmtree(runner)
    runner.symlink_to(private)
    # The jobs own /home/runner, so they could have made that link: only their rights apply there.
    own_runner_home(root)
    before = snapshot(root)
    r = run_setup(root, "github", check=False)
    assert r.returncode == 1 and "nothing was changed" in r.stderr
    assert f"is not a directory uid {JOB_UID} can write in" in r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    assert snapshot(root) == before

    # /home/runner is root's, but the link is not: not followed at all.
    os.lchown(root / "home/runner", 0, 0)
    before = snapshot(root)
    r = run_setup(root, "github", check=False)
    assert r.returncode == 1 and f"{runner} is a symbolic link owned by uid {JOB_UID}: not following it" in r.stderr
    assert snapshot(root) == before


def test_root_owned_directories_others_may_write_in_are_refused(tmp_path):
    root = fake_root(tmp_path)
    (root / "etc/cordon").mkdir()
    (root / "etc/cordon").chmod(0o777)
    before = snapshot(root)
    r = run_setup(root, "github", check=False)
    assert r.returncode == 1
    assert f"{root}/etc/cordon is owned by root but writable by its group or by others" in r.stderr
    assert snapshot(root) == before


def test_a_hook_line_that_was_there_before_survives_the_undo(tmp_path):
    root = fake_root(tmp_path)
    env = root / GH_DIR[1:] / ".env"
    env.write_text(ENV_FILE + HOOK_LINE + "\n")
    before = snapshot(root)
    run_setup(root, "github")
    assert env.read_text() == ENV_FILE + HOOK_LINE + "\n"
    r = run_setup(root, "github", "--undo")
    assert "without cordon-runner-setup's marker above it" in r.stdout
    assert snapshot(root) == before


def test_the_earlier_drop_in_name_is_replaced_and_undone(tmp_path):
    root = fake_root(tmp_path)
    before = snapshot(root)
    run_setup(root, "github")
    after = snapshot(root)
    dirs = [root / f"etc/systemd/system/{GH_UNIT}.d", root / "etc/systemd/system/cordon.service.d"]
    for d in dirs:  # as an earlier version named them
        (d / "zz-cordon-runner-setup.conf").rename(d / "cordon-runner-setup.conf")
    run_setup(root, "github")
    assert snapshot(root) == after
    for d in dirs:
        (d / "zz-cordon-runner-setup.conf").rename(d / "cordon-runner-setup.conf")
    run_setup(root, "github", "--undo")
    assert snapshot(root) == before


def test_scope_escapes_are_warned_about(tmp_path):
    root = fake_root(tmp_path)
    (root / "etc/group").write_text("root:x:0:\ndocker:x:999:admin,runner\n")
    r = run_setup(root, "github", "--dry-run")
    assert "jobs run as 'runner', who is in the docker group" in r.stderr
    assert "may use cron (no" in r.stderr and "may use at (no" in r.stderr
    assert "a local proxy or any other service outside the scope" in r.stdout
    (root / "etc/group").write_text("root:x:0:\ndocker:x:999:admin\n")
    (root / "etc/cron.allow").write_text("root\n")
    (root / "etc/at.allow").write_text("root\nrunner\n")
    r = run_setup(root, "github", "--dry-run")
    assert "docker group" not in r.stderr and "may use cron" not in r.stderr
    assert "'runner' may use at (no" in r.stderr
    # Enforcing / (the admin's own section) leaves nothing to escape to.
    (root / "etc/cordon").mkdir()
    (root / "etc/cordon/policy.yaml").write_text('enforce:\n  cgroups: ["/"]\n')
    r = run_setup(root, "github", "--dry-run")
    assert "may use at" not in r.stderr and "local proxy" not in r.stdout


def test_docker_changes_hold_back_narrowing_until_docker_restarted(tmp_path):
    root = fake_root(tmp_path)
    r = run_setup(root, "github", "--docker")
    commands = [line.strip() for line in r.stdout.splitlines() if line.startswith("  systemctl")]
    assert commands == ["systemctl daemon-reload", "systemctl start cordon-jobs.slice user-1001.slice",
                        f"systemctl try-restart {GH_UNIT}"]
    held = r.stdout[r.stdout.index("restart docker first"):]
    assert held.index("systemctl restart docker.service") < held.index("systemctl try-restart cordon.service")
