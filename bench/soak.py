#!/usr/bin/python3
"""bench/soak.py: the issue-#8 soak. cordond under a steady mix of real traffic for N minutes.

What runs (all real parts, nothing mocked):
  - build/cordond (copied into a temporary directory first, so a rebuild of the tree during the
    run does not change it), enforcing a temporary cgroup /cordon-soak-PID/job, capturing the
    Cursor stand-in's address (127.77.200.250:443), TLS intercepted, masking and recording on,
    with a policy that has a rule for every class below;
  - the Node Connect-RPC stand-in (tests/standin/standin.mjs) as the upstream, logging every
    request and message it receives;
  - clients as a CI job runs them: in the enforced cgroup, as nobody, trusting cordon's CA through
    the OS bundle and NODE_EXTRA_CA_CERTS (a private mount namespace per call, as
    tests/integration/test_intercept.py's Jobs does): tests/standin/client.mjs (connect-es over
    Node's http2 / https) and curl. One process per call, so every call is a new connection;
  - an approver loop (`cordonctl approvals --json`, then `cordonctl approve ID` or
    `cordonctl deny ID`): what a job in /job/deny asks for is denied, everything else approved.

Classes, cycled through by --workers concurrent callers (a call's variant rotates within its
class), each checked against its expectation:
  unary     AvailableModels (h2 proto; HTTP/1.1 JSON) and curl GET / (h2): the right answer, and
            the stand-in saw the request
  stream    StreamCpp server stream (h2; HTTP/1.1) and an agent Run (bidi, exec "ls -la"): every
            message, the stream's end
  blocked   CppConfig (rule no-cpp-config) and curl POST /v0/agents (rule no-cloud-agents):
            refused naming the rule, and nothing of it reached the stand-in
  approved  FastUpdateFileV2 with "DROP TABLE" (held request, rule approve-schema-changes) and an
            agent Run whose exec message is "rm -rf /" (held response, rule approve-rm-rf):
            approved, so the stand-in got the request / the job got the exec message
  denied    the same two, from /job/deny: permission_denied "denied by root", and the held
            request never reached the stand-in / the exec message never reached the job
  masked    a bidi chat attaching an AWS key id whose answer leaks a GitHub token (the stand-in
            must receive only [MASKED:aws-access-key-id], the job only [MASKED:github-pat]); the
            HTTP/1.1 SSE fallback with a GitHub token in a BidiAppend's hex payload; curl with a
            GitHub token in a header (the stand-in must see [MASKED:github-pat])
Every call carries an `x-soak-id` header, so the stand-in's log lines of each call are found.

Every --sample-seconds cordond is sampled: RSS (VmRSS), open fds, live connections, and the
calls so far per class; a table row is printed each time. At the end: daemon errors (journal
entries from cordond's pid at priority err or worse, and `<3>`-or-worse lines on its stderr),
unexpected client outcomes, RSS after warm-up vs at the end, fds idle before vs after,
calls/s and p50/p99 latency per class (measured by the client: from its first message written to
its last event; held calls include the approver's reaction), and `cordonctl verify` of the
recording store after cordond's clean stop.

Exit status: 0 when there was no daemon error, no unexpected outcome, RSS stayed within the bound
(end - RSS at warm-up <= max(--rss-bound-mib, --rss-bound-pct % of it)), fds came back to where
they were, and the store verified; 1 otherwise; 2 for a setup problem.

Leaves the host as found: the temporary directory, the cgroups /cordon-soak-PID/..., the BPF pins
/sys/fs/bpf/cordon-soak-PID, the stand-in, cordond and a systemd-journald it had to start are
removed or stopped on exit, also on failure or Ctrl-C.

    sudo nice bench/soak.py [--minutes 10] [--workers 3] [--sample-seconds 10]
"""
import argparse
import contextlib
import hashlib
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
STANDIN_DIR = ROOT / "tests" / "standin"
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from hostenv import cgroup2_mount, journald_running  # noqa: E402  (the tests' own)
NOBODY = 65534
STANDIN_IP = "127.77.200.250"  # this script's address (tests/integration/test_standin.py uses .10-.209)
CURSOR_HOSTS = ("api2.cursor.sh", "agentn.api5.cursor.sh", "repo42.cursor.sh", "api.cursor.com")
INTERCEPT_HOSTS = ["*.cursor.sh", "api.cursor.com", "cursor.com", "*.cursor.com"]
AWS_KEY = "AKIAQYLPMN5HFIQR7XYZ"
GITHUB_TOKEN = "ghp_R8fK2mQ9xLpW4vZ7nT1bY6cH3jD0sA5eG2uK"
CLASSES = ["unary", "stream", "blocked", "approved", "denied", "masked"]
# One cycle of the mix: how many calls of each class.
MIX = {"unary": 3, "stream": 3, "blocked": 2, "approved": 2, "denied": 1, "masked": 2}
MODELS = "aiserver.v1.AiService/AvailableModels"
CPP_CONFIG = "aiserver.v1.AiService/CppConfig"
FILE_SYNC = "aiserver.v1.RepositoryService/FastUpdateFileV2"
CHAT = "aiserver.v1.ChatService/StreamUnifiedChatWithTools"

POLICY_RULES = r"""approvals:
  timeout_seconds: 120
rules:
  - name: no-cpp-config
    match:
      rpcs: ["aiserver.v1.AiService/CppConfig"]
    action: block
    message: soak says no
  - name: no-cloud-agents
    match:
      paths: ["/v0/agents", "/v1/agents"]
    action: block
    message: soak says no
  - name: approve-schema-changes
    match:
      rpcs: ["aiserver.v1.RepositoryService/FastUpdateFileV2"]
      direction: request
      content:
        - field: contents
          regex: 'DROP TABLE'
    action: approve
  - name: approve-rm-rf
    match:
      direction: response
      content:
        - field: exec_server_message.shell_args.command
          regex: 'rm\s+-rf\s+/'
    action: approve
default_action: allow
"""


def log(*a):
    print(*a, flush=True)


def free_port_pair(start):
    """Two consecutive free TCP+UDP ports on loopback from `start` on (cordond's listener and DNS)."""
    for port in range(start, start + 400, 2):
        ok = True
        for p in (port, port + 1):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_INET, kind)
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                finally:
                    s.close()
        if ok:
            return port
    raise SystemExit("soak: no free port pair")


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))]


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def metric_sum(metrics, name):
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


class StandinLog:
    """Tails the stand-in's JSON log and groups its lines by the x-soak-id of their request."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.req_soak = {}  # stand-in request id -> soak id
        self.by_soak = {}  # soak id -> [lines]
        self.lock = threading.Lock()

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            if not raw.strip():
                continue
            e = json.loads(raw)
            rid = e.get("id")
            if e.get("event") == "request":
                sid = (e.get("headers") or {}).get("x-soak-id")
                if sid is None:
                    continue
                self.req_soak[rid] = sid
            sid = self.req_soak.get(rid)
            if sid is not None:
                self.by_soak.setdefault(sid, []).append(e)

    def take(self, soak_id):
        """The lines of every request that carried `soak_id` (and forgets them)."""
        with self.lock:
            self._read()
            return self.by_soak.pop(soak_id, [])


class Soak:
    def __init__(self, args):
        self.args = args
        self.pid = os.getpid()
        self.cg_mount = cgroup2_mount()
        self.cg_name = f"cordon-soak-{self.pid}"
        self.cg = self.cg_mount / self.cg_name
        self.pin_dir = f"/sys/fs/bpf/{self.cg_name}"
        self.work = None
        self.journald = None
        self.journald_dirs = []
        self.standin = None
        self.cordond = None
        self.cordond_log = None
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.counts = {c: 0 for c in CLASSES}
        self.latency = {c: [] for c in CLASSES}
        self.failures = []  # (class, variant, soak id, why)
        self.approver_log = {"approved": 0, "denied": 0, "errors": []}
        self.samples = []
        self.seq = itertools.count(1)

    # --- setup --------------------------------------------------------------------------------

    def setup(self):
        a = self.args
        for tool in ("node", "curl", "protoc", "unshare", "setpriv", "journalctl", "openssl"):
            if shutil.which(tool) is None:
                raise SystemExit(f"soak: {tool} is missing")
        for f in ("cordond", "cordonctl"):
            if not (ROOT / "build" / f).exists():
                raise SystemExit(f"soak: build/{f} is missing: run make first")
        if not (STANDIN_DIR / "node_modules" / "@connectrpc").exists():
            raise SystemExit("soak: the stand-in's npm packages are missing: make standin")
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="cordon-soak-"))
        os.chmod(self.work, 0o755)
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        for f in ("cordond", "cordonctl"):
            shutil.copy2(ROOT / "build" / f, bin_dir / f)
        self.cordond_bin, self.cordonctl_bin = bin_dir / "cordond", bin_dir / "cordonctl"
        digest = hashlib.sha256(self.cordond_bin.read_bytes()).hexdigest()[:12]
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "userspace", "bpf", "include", "proto"],
                               cwd=ROOT).returncode != 0
        built = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime((ROOT / "build" / "cordond").stat().st_mtime))
        self.binary_id = (f"build/cordond built {built}, sha256 {digest}, tree at {head}"
                          + (" + uncommitted changes under userspace/bpf/include/proto" if dirty else ""))

        # Certificates (a test CA the stand-in's certificate chains to) and Cursor's descriptors.
        subprocess.run([str(STANDIN_DIR / "make-certs.sh"), str(self.work / "certs")], check=True,
                       capture_output=True)
        protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "cursor").rglob("*.proto"))
        self.desc = self.work / "cursor.desc"
        subprocess.run(["protoc", "-Iproto", "--include_imports", f"--descriptor_set_out={self.desc}", *protos],
                       cwd=ROOT, check=True)

        # Cgroups: the daemon's, the servers', and two job cgroups under the enforced one.
        for child in ("daemon", "servers", "job/run", "job/deny"):
            (self.cg / child).mkdir(parents=True)

        # A journal: started by hand when none listens (PID 1 is not systemd here).
        if not journald_running():
            for d in ("/run/systemd", "/run/systemd/journal"):
                if not os.path.isdir(d):
                    os.makedirs(d)
                    self.journald_dirs.append(d)
            self.journald = subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not journald_running():
                if self.journald.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("soak: could not start systemd-journald")
                time.sleep(0.05)
        self.started_wall = time.time()

        # The stand-in, leaking a GitHub token when a prompt says "leak".
        self.standin_log = self.work / "standin.jsonl"
        self.standin_out = open(self.work / "standin.out", "wb")
        self.standin = self.spawn_in("servers", [
            "node", str(STANDIN_DIR / "standin.mjs"), "--host", STANDIN_IP, "--port", "443",
            "--cert", str(self.work / "certs" / "standin.pem"), "--key", str(self.work / "certs" / "standin.key"),
            "--log", str(self.standin_log), "--descriptors", str(self.desc), "--delay-ms", "10",
            "--leak-text", GITHUB_TOKEN, "--leak-pieces", "3"], stdout=self.standin_out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while b"listening" not in (self.work / "standin.out").read_bytes():
            if self.standin.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("soak: the stand-in did not start:\n" + (self.work / "standin.out").read_text())
            time.sleep(0.05)
        self.slog = StandinLog(self.standin_log)

        # cordond.
        port = free_port_pair(16600 + (self.pid % 100) * 4)
        self.socket = str(self.work / "control.sock")
        self.state_dir = self.work / "state"
        self.policy = self.work / "policy.yaml"
        self.policy.write_text(
            "tls:\n"
            f"  upstream_ca_file: {self.work / 'certs' / 'ca.pem'}\n"
            "  missing_sni: refuse\n"
            "  non_target_sni: refuse\n"
            f"  descriptors: {self.desc}\n"
            "capture:\n"
            f"  hosts: {json.dumps(INTERCEPT_HOSTS)}\n"
            f"  cidrs: [\"{STANDIN_IP}/32\"]\n"
            "  ports: [443]\n"
            "  quic_ports: [443]\n"
            "enforce:\n"
            f"  cgroups: [\"/{self.cg_name}/job\"]\n"
            "  exempt_cgroups: []\n"
            "daemon:\n"
            f"  listen_port: {port}\n"
            f"  dns_port: {port + 1}\n"
            f"  pin_dir: {self.pin_dir}\n"
            f"  control_socket: {self.socket}\n"
            f"  state_dir: {self.state_dir}\n"
            f"  metrics_listen: \"unix:{self.work / 'metrics.sock'}\"\n"
            "  netns_listen: \"\"\n"
            "mask:\n"
            "  enabled: true\n"
            "recording:\n"
            "  enabled: true\n" + POLICY_RULES)
        self.cordond_log_path = self.work / "cordond.log"
        self.cordond_log = open(self.cordond_log_path, "ab")
        self.cordond = subprocess.Popen(
            [str(self.cordond_bin), "--config", str(self.policy), "--cgroup", f"/{self.cg_name}/daemon"],
            stdout=self.cordond_log, stderr=self.cordond_log)
        deadline = time.monotonic() + 60
        while self.ctl("status", "--json", check=False).returncode != 0:
            if self.cordond.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("soak: cordond did not come up:\n" + self.cordond_log_path.read_text(errors="replace"))
            time.sleep(0.1)

        # What the jobs see: Cursor's names at the stand-in, cordon's CA in the OS bundle.
        self.cordon_ca = self.work / "cordon-ca.crt"
        shutil.copy(self.state_dir / "ca" / "ca.crt", self.cordon_ca)
        self.bundle = self.work / "ca-certificates.crt"
        self.bundle.write_bytes(pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() +
                                self.cordon_ca.read_bytes())
        self.hosts = self.work / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n" + f"{STANDIN_IP} {' '.join(CURSOR_HOSTS)}\n")
        for f in (self.cordon_ca, self.bundle, self.hosts):
            os.chmod(f, 0o644)

    def spawn_in(self, child, argv, **kw):
        """Starts argv in one of our cgroups (the shell joins it, then execs)."""
        procs = self.cg / child / "cgroup.procs"
        return subprocess.Popen(["sh", "-c", f"echo $$ > '{procs}' && exec \"$@\"", "in-cgroup", *argv], **kw)

    def ctl(self, *args, check=True, timeout=30):
        return subprocess.run([str(self.cordonctl_bin), "--socket", self.socket, "--pin-dir", self.pin_dir, *args],
                              capture_output=True, text=True, check=check, timeout=timeout)

    # --- a job's call -------------------------------------------------------------------------

    def job(self, child, argv, timeout=150):
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/ssl/certs/ca-certificates.crt && '
                   'shift && exec "$@"', str(self.hosts), str(self.bundle),
                   "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                   "env", f"NODE_EXTRA_CA_CERTS={self.cordon_ca}", "HOME=/tmp", *argv]
        p = self.spawn_in(f"job/{child}", wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          encoding="utf-8", errors="replace")
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            return -9, out, err + f"\n(soak: killed after {timeout} s)"
        return p.returncode, out, err

    def node(self, child, sid, *args, base_url="https://api2.cursor.sh", http="2", extra_headers=()):
        argv = ["node", str(STANDIN_DIR / "client.mjs"), "--base-url", base_url, "--http", http, "--descriptors",
                str(self.desc), "--header", f"x-soak-id: {sid}", "--timeout-ms", "140000"]
        for h in extra_headers:
            argv += ["--header", h]
        rc, out, err = self.job(child, argv + list(args))
        events = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        sent = [e["t_ms"] for e in events if e.get("event") == "sent"]
        latency = (events[-1]["t_ms"] - sent[0]) if sent and events else None
        return rc, events, err, latency

    def curl(self, child, sid, *args):
        rc, out, err = self.job(child, ["curl", "-sS", "--max-time", "140", "-H", f"x-soak-id: {sid}",
                                        "-w", "\n%{http_code} %{time_total} %{http_version}", *args])
        body, _, tail = out.rpartition("\n")
        parts = tail.split()
        code = int(parts[0]) if parts and parts[0].isdigit() else 0
        latency = float(parts[1]) * 1000 if len(parts) > 1 else None
        version = parts[2] if len(parts) > 2 else ""
        return rc, body, code, version, err, latency

    # --- the classes --------------------------------------------------------------------------
    # Each returns (latency ms or None, None when as expected or a string saying what was not).

    @staticmethod
    def of(events, name):
        return [e for e in events if e.get("event") == name]

    def expect_ok(self, rc, events, err):
        if rc != 0 or not self.of(events, "done") or self.of(events, "error"):
            return f"rc {rc}, errors {self.of(events, 'error')}, stderr {err[-300:]!r}"
        return None

    def expect_denied(self, rc, events, err, needle):
        errs = self.of(events, "error")
        if rc == 0 or not errs or errs[0].get("code") != "permission_denied" or needle not in errs[0].get("message", ""):
            return f"expected permission_denied with {needle!r}: rc {rc}, errors {errs}, stderr {err[-300:]!r}"
        return None

    def standin_requests(self, sid):
        lines = self.slog.take(sid)
        return lines, [e for e in lines if e.get("event") == "request"]

    def call_unary(self, variant, sid):
        if variant == 2:
            rc, body, code, version, err, lat = self.curl("run", sid, "--http2", "https://api2.cursor.sh/")
            if rc != 0 or code != 200 or version != "2" or not body.startswith("hello from the api2.cursor.sh stand-in"):
                return lat, f"curl GET /: rc {rc} code {code} http {version} body {body[:200]!r} {err[-300:]!r}"
            _, reqs = self.standin_requests(sid)
            if [r["path"] for r in reqs] != ["/"]:
                return lat, f"stand-in saw {[r['path'] for r in reqs]}"
            return lat, None
        args = ("models",) if variant == 0 else ("models", "--codec", "json")
        rc, events, err, lat = self.node("run", sid, *args, http="2" if variant == 0 else "1.1")
        why = self.expect_ok(rc, events, err)
        if why:
            return lat, why
        res = self.of(events, "response")
        if not res or res[0]["json"].get("modelNames") != ["claude-4-sonnet", "gpt-5", "cursor-small"]:
            return lat, f"wrong answer {res}"
        _, reqs = self.standin_requests(sid)
        if [r.get("rpc") for r in reqs] != [MODELS]:
            return lat, f"stand-in saw {[r.get('rpc') for r in reqs]}"
        return lat, None

    def call_stream(self, variant, sid):
        if variant == 2:  # bidi agent run, exec "ls -la" answered, one turn
            rc, events, err, lat = self.node("run", sid, "run", "--prompt", f"list the files ({sid})",
                                             base_url="https://agentn.api5.cursor.sh")
            why = self.expect_ok(rc, events, err)
            if why:
                return lat, why
            execs = [e for e in self.of(events, "recv") if "execServerMessage" in json.dumps(e)]
            if not execs or "ls -la" not in json.dumps(execs[0]) or self.of(events, "done")[0].get("turns") != 1:
                return lat, f"agent run: no exec message or no turn end: {events[-3:]}"
            _, reqs = self.standin_requests(sid)
            if [r.get("rpc") for r in reqs] != ["agent.v1.AgentService/Run"]:
                return lat, f"stand-in saw {[r.get('rpc') for r in reqs]}"
            return lat, None
        rc, events, err, lat = self.node("run", sid, "server-stream", http="2" if variant == 0 else "1.1")
        why = self.expect_ok(rc, events, err)
        if why:
            return lat, why
        recv = self.of(events, "recv")
        if self.of(events, "done")[0].get("received") != 4 or recv[-1]["json"] != {"doneStream": True}:
            return lat, f"stream: {len(recv)} messages, last {recv[-1:]}"
        lines, reqs = self.standin_requests(sid)
        sent = [e for e in lines if e.get("event") == "message" and e.get("direction") == "sent" and "index" in e]
        if [r.get("rpc") for r in reqs] != ["aiserver.v1.AiService/StreamCpp"] or len(sent) != 4:
            return lat, f"stand-in saw {[r.get('rpc') for r in reqs]}, sent {len(sent)}"
        return lat, None

    def call_blocked(self, variant, sid):
        if variant in (1, 2):
            # HTTP/1.1 with a body, HTTP/2 without one. (curl 7.88 over HTTP/2 with a body fails about
            # half the time with error 92 instead of showing the 403: cordond answers early and
            # resets the stream with NO_ERROR while curl still sends; see bench/RESULTS.md.)
            body_args = (["--http1.1", "-X", "POST", "-H", "content-type: application/json", "--data",
                          '{"prompt": {"text": "hi"}}', "https://api.cursor.com/v0/agents"] if variant == 1 else
                         ["--http2", "https://api.cursor.com/v1/agents"])
            rc, body, code, version, err, lat = self.curl("run", sid, "-H", "authorization: Bearer crsr_soak_key",
                                                          *body_args)
            if (code != 403 or version != ("1.1" if variant == 1 else "2")
                    or "blocked by policy rule 'no-cloud-agents': soak says no" not in body):
                return lat, f"curl {body_args[0]} /v?/agents: rc {rc} code {code} body {body[:300]!r} {err[-300:]!r}"
        else:
            rc, events, err, lat = self.node("run", sid, "unary", "--method", CPP_CONFIG, "--body", "{}")
            why = self.expect_denied(rc, events, err, "blocked by policy rule 'no-cpp-config': soak says no")
            if why:
                return lat, why
        lines, _ = self.standin_requests(sid)
        if lines:
            return lat, f"a blocked call reached the stand-in: {lines[:2]}"
        return lat, None

    def call_held(self, variant, sid, approve):
        child = "run" if approve else "deny"
        if variant == 0:  # a held request: FastUpdateFileV2 with DROP TABLE in its contents
            body = {"relativeWorkspacePath": "db/schema.sql", "contents": f"DROP TABLE soak_{sid.replace('-', '_')};"}
            rc, events, err, lat = self.node(child, sid, "unary", "--method", FILE_SYNC, "--body", json.dumps(body))
            lines, reqs = self.standin_requests(sid)
            if approve:
                why = self.expect_ok(rc, events, err)
                if why:
                    return lat, why
                got = [e for e in lines if e.get("event") == "message" and e.get("direction") == "received"]
                if [r.get("rpc") for r in reqs] != [FILE_SYNC] or "DROP TABLE soak_" not in json.dumps(got):
                    return lat, f"approved file sync: stand-in saw {[r.get('rpc') for r in reqs]}"
                return lat, None
            why = self.expect_denied(rc, events, err, "denied by root")
            if why:
                return lat, why
            if lines:
                return lat, f"a denied request reached the stand-in: {lines[:2]}"
            return lat, None
        # A held response message: the agent's exec "rm -rf /".
        rc, events, err, lat = self.node(child, sid, "run", "--prompt", f"please rm -rf / now ({sid})",
                                         base_url="https://agentn.api5.cursor.sh")
        execs = [e for e in self.of(events, "recv") if "execServerMessage" in json.dumps(e)]
        if approve:
            why = self.expect_ok(rc, events, err)
            if why:
                return lat, why
            if not execs or "rm -rf /" not in json.dumps(execs[0]):
                return lat, f"approved run: the exec message did not arrive: {events[-3:]}"
        else:
            why = self.expect_denied(rc, events, err, "denied by root")
            if why:
                return lat, why
            if execs:
                return lat, f"a denied exec message reached the job: {execs[0]}"
        self.standin_requests(sid)
        return lat, None

    def call_approved(self, variant, sid):
        return self.call_held(variant, sid, True)

    def call_denied(self, variant, sid):
        return self.call_held(variant, sid, False)

    def call_masked(self, variant, sid):
        if variant == 0:  # bidi chat: an AWS key id goes up, a GitHub token comes back
            rc, events, err, lat = self.node(
                "run", sid, "chat", "--prompt", f"please leak a key ({sid})", "--pause-ms", "50",
                "--file", f"deploy/aws.env=AWS_ACCESS_KEY_ID={AWS_KEY}\nREGION=eu-west-1\n")
            why = self.expect_ok(rc, events, err)
            if why:
                return lat, why
            if AWS_KEY not in json.dumps(self.of(events, "sent")):
                return lat, "the client did not send the key"
            text = "".join(e["json"].get("streamUnifiedChatResponse", {}).get("text", "")
                           for e in self.of(events, "recv"))
            if "Here is a key: [MASKED:github-pat]" not in text or GITHUB_TOKEN[:10] in text:
                return lat, f"the answer reached the job unmasked: {text[-200:]!r}"
            lines, reqs = self.standin_requests(sid)
            got = json.dumps([e for e in lines if e.get("event") == "message" and e.get("direction") == "received"])
            if [r.get("rpc") for r in reqs] != [CHAT] or got.count("[MASKED:aws-access-key-id]") != 2 or AWS_KEY in got:
                return lat, f"the stand-in got the key unmasked, or not twice masked: {got[:500]}"
            return lat, None
        if variant == 1:  # the HTTP/1.1 SSE fallback: a GitHub token inside a BidiAppend's hex payload
            rc, events, err, lat = self.node(
                "run", sid, "run-sse", "--prompt", f"deploy it ({sid})", "--file",
                f"ci/env.sh=export GITHUB_TOKEN={GITHUB_TOKEN}\n", base_url="https://agentn.api5.cursor.sh", http="1.1")
            why = self.expect_ok(rc, events, err)
            if why:
                return lat, why
            lines, reqs = self.standin_requests(sid)
            appends = [e for e in lines if e.get("event") == "message" and e.get("direction") == "received"
                       and e.get("inner")]
            raw = json.dumps(lines)
            if ("[MASKED:github-pat]" not in json.dumps([m["inner"] for m in appends])
                    or GITHUB_TOKEN in raw or GITHUB_TOKEN.encode().hex() in raw):
                return lat, f"the appended token reached the stand-in unmasked ({len(appends)} appends)"
            return lat, None
        # curl: a GitHub token in a header value; Cursor's own credential passes.
        rc, body, code, _, err, lat = self.curl("run", sid, "-H", "authorization: Bearer crsr_test_key", "-H",
                                                f"x-debug-token: {GITHUB_TOKEN}", "https://api.cursor.com/v0/me")
        if rc != 0 or code != 200:
            return lat, f"curl /v0/me: rc {rc} code {code} body {body[:200]!r} {err[-300:]!r}"
        _, reqs = self.standin_requests(sid)
        if (len(reqs) != 1 or reqs[0]["headers"].get("x-debug-token") != "[MASKED:github-pat]"
                or reqs[0]["headers"].get("authorization") != "Bearer crsr_test_key"):
            return lat, f"header not masked at the stand-in: {[r['headers'] for r in reqs]}"
        return lat, None

    # --- loops --------------------------------------------------------------------------------

    def worker(self, schedule, end):
        variants = {c: itertools.count() for c in CLASSES}
        while time.monotonic() < end and not self.stop_event.is_set():
            with self.lock:
                cls = next(schedule)
                variant = next(variants[cls]) % 3
                sid = f"s{next(self.seq):06d}"
            if cls in ("approved", "denied"):
                variant %= 2
            try:
                lat, why = getattr(self, f"call_{cls}")(variant, sid)
            except Exception as e:  # a bug here is an unexpected outcome too, never silent
                lat, why = None, f"soak exception: {e!r}"
            with self.lock:
                self.counts[cls] += 1
                if lat is not None and why is None:
                    self.latency[cls].append(lat)
                if why is not None:
                    self.failures.append((cls, variant, sid, time.monotonic() - self.t0, why))

    def approver(self):
        answered = set()
        while not self.stop_event.is_set():
            try:
                pending = json.loads(self.ctl("approvals", "--json").stdout)["pending"]
            except Exception as e:
                self.approver_log["errors"].append(f"approvals: {e!r}")
                time.sleep(1)
                continue
            for p in pending:
                if p["id"] in answered:
                    continue
                answered.add(p["id"])
                deny = p["cgroup"].endswith("/job/deny")
                r = self.ctl("deny" if deny else "approve", p["id"], check=False)
                if r.returncode != 0:
                    self.approver_log["errors"].append(f"{'deny' if deny else 'approve'} {p['id']}: {r.stderr.strip()}")
                else:
                    self.approver_log["denied" if deny else "approved"] += 1
            time.sleep(0.1)

    def sample(self):
        pid = self.cordond.pid
        with open(f"/proc/{pid}/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        try:
            metrics = parse_metrics(self.ctl("metrics").stdout)
        except Exception:
            metrics = {}
        with self.lock:
            counts = dict(self.counts)
            failed = len(self.failures)
        return {"t": time.monotonic() - self.t0, "rss_mib": rss_kib / 1024, "fds": fds, "counts": counts,
                "failed": failed, "conns": metrics.get("cordon_connections_active", float("nan")),
                "requests": metric_sum(metrics, "cordon_requests_total"),
                "errors_total": metric_sum(metrics, "cordon_errors_total"),
                "journal_dropped": metrics.get("cordon_journal_dropped_total", 0),
                "recording_lost": metrics.get("cordon_recording_lost_total", 0),
                "masked": metrics.get("cordon_masked_secrets_total", 0),
                "journald": journald_running()}

    HEADER = ("| t (s) | RSS MiB | fds | conns | " + " | ".join(CLASSES) + " | unexpected | cordond requests |"
              " cordond errors_total |")

    def row(self, s):
        return (f"| {s['t']:.0f} | {s['rss_mib']:.1f} | {s['fds']} | {s['conns']:.0f} | "
                + " | ".join(str(s["counts"][c]) for c in CLASSES)
                + f" | {s['failed']} | {s['requests']:.0f} | {s['errors_total']:.0f} |")

    def sampler(self, end):
        next_at = self.t0 + self.args.sample_seconds
        while not self.stop_event.is_set():
            if self.stop_event.wait(max(0, next_at - time.monotonic())):
                return
            next_at += self.args.sample_seconds
            s = self.sample()
            self.samples.append(s)
            log(self.row(s) + ("" if s["journald"] else "  (no journald listening!)"))
            if self.cordond.poll() is not None:
                log(f"soak: cordond exited {self.cordond.returncode} during the run")
                self.stop_event.set()
                return

    def idle_fds(self, timeout=20):
        """fds once no connection is live (the count settles)."""
        deadline = time.monotonic() + timeout
        while True:
            m = parse_metrics(self.ctl("metrics").stdout)
            if m.get("cordon_connections_active", 1) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(1)
        return len(os.listdir(f"/proc/{self.cordond.pid}/fd")), m.get("cordon_connections_active")

    # --- the run ------------------------------------------------------------------------------

    def run(self):
        a = self.args
        self.setup()
        log(f"# cordon soak: {a.minutes} min, {a.workers} callers, mix per cycle {MIX}")
        log(f"# {self.binary_id}")
        log(f"# cordond pid {self.cordond.pid}, cgroup /{self.cg_name}, stand-in {STANDIN_IP}:443, "
            f"journald {'started by the soak' if self.journald else 'already running'}, "
            f"load average before: {open('/proc/loadavg').read().split()[:3]}")
        time.sleep(1)
        fds_before, _ = self.idle_fds()
        rss_before = self.sample_rss()
        log(f"# idle before traffic: RSS {rss_before:.1f} MiB, {fds_before} fds")
        log("")
        log(self.HEADER)
        log("|" + "---:|" * (len(CLASSES) + 7))
        # Interleave the cycle so the classes are spread out rather than in runs.
        order = []
        pools = {c: MIX[c] for c in CLASSES}
        while any(pools.values()):
            for c in CLASSES:
                if pools[c]:
                    order.append(c)
                    pools[c] -= 1
        schedule = itertools.cycle(order)
        self.t0 = time.monotonic()
        end = self.t0 + a.minutes * 60
        threads = [threading.Thread(target=self.approver, daemon=True),
                   threading.Thread(target=self.sampler, args=(end,), daemon=True)]
        workers = [threading.Thread(target=self.worker, args=(schedule, end), daemon=True) for _ in range(a.workers)]
        for t in threads + workers:
            t.start()
        for t in workers:
            while t.is_alive():
                t.join(timeout=1)
        traffic_seconds = time.monotonic() - self.t0
        last = self.sample()  # the end of traffic
        self.samples.append(last)
        log(self.row(last) + "  (end of traffic)")
        self.stop_event.set()
        for t in threads:
            t.join(timeout=10)
        fds_after, live = self.idle_fds()
        rss_after = self.sample_rss()
        return self.finish(traffic_seconds, fds_before, fds_after, live, rss_before, rss_after)

    def sample_rss(self):
        with open(f"/proc/{self.cordond.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def finish(self, secs, fds_before, fds_after, live, rss_before, rss_after):
        a = self.args
        problems = []
        pid = self.cordond.pid
        # A clean stop seals the recording store.
        self.cordond.send_signal(signal.SIGTERM)
        try:
            rc = self.cordond.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.cordond.kill()
            rc = self.cordond.wait()
            problems.append("cordond did not stop on SIGTERM within 30 s")
        if rc != 0:
            problems.append(f"cordond exited {rc}")
        time.sleep(1)  # journald takes the last entries in
        journal = subprocess.run(["journalctl", "--no-pager", "-o", "json", f"_PID={pid}", "-p", "err",
                                  f"--since=@{self.started_wall - 1:.3f}"], capture_output=True, text=True)
        errs = [json.loads(line) for line in journal.stdout.splitlines() if line.strip()]
        all_entries = subprocess.run(["journalctl", "--no-pager", "-o", "cat", f"_PID={pid}",
                                      f"--since=@{self.started_wall - 1:.3f}"], capture_output=True, text=True)
        n_entries = len(all_entries.stdout.splitlines())
        # cordond's own account of the decisions, from its request entries.
        decided = {"block": 0, "approved": 0, "denied": 0, "masked_requests": 0}
        reqs = subprocess.run(["journalctl", "--no-pager", "-o", "json", f"_PID={pid}", "CORDON_EVENT=request",
                               f"--since=@{self.started_wall - 1:.3f}"], capture_output=True, text=True)
        for line in reqs.stdout.splitlines():
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                decided["block"] += e.get("CORDON_ACTION") == "block"
                decided["approved"] += e.get("CORDON_APPROVAL") == "approved"
                decided["denied"] += e.get("CORDON_APPROVAL") == "denied"
                decided["masked_requests"] += int(e.get("CORDON_MASKED", "0") or 0) > 0
        stderr_errs = [line for line in self.cordond_log_path.read_text(errors="replace").splitlines()
                       if re.match(r"<[0-3]>", line)]
        verify = subprocess.run([str(self.cordonctl_bin), "--state-dir", str(self.state_dir), "verify"],
                                capture_output=True, text=True)
        sessions = subprocess.run([str(self.cordonctl_bin), "--state-dir", str(self.state_dir), "--descriptors",
                                   str(self.desc), "sessions", "--json"], capture_output=True, text=True)
        try:
            found = json.loads(sessions.stdout)
            n_sessions = len(found["sessions"] if isinstance(found, dict) else found)
        except ValueError:
            n_sessions = None
        store_mib = sum(f.stat().st_size for f in (self.state_dir / "recordings").rglob("*") if f.is_file()) / 2**20

        # RSS: after warm-up vs the end of traffic.
        warm = min(a.warmup_seconds, 0.2 * a.minutes * 60)
        after_warm = [s for s in self.samples if s["t"] >= warm - 1e-6]
        rss_warm = after_warm[0]["rss_mib"] if after_warm else self.samples[0]["rss_mib"]
        rss_end = self.samples[-1]["rss_mib"]
        bound = max(a.rss_bound_mib, rss_warm * a.rss_bound_pct / 100)
        growth = rss_end - rss_warm
        rss_max = max(s["rss_mib"] for s in self.samples)
        slope = float("nan")
        if len(after_warm) >= 3:
            xs = [s["t"] / 60 for s in after_warm]
            ys = [s["rss_mib"] for s in after_warm]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            den = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")

        last = self.samples[-1]
        total = sum(self.counts.values())
        log("")
        log("## Per class")
        log("")
        log("| class | calls | calls/s | unexpected | p50 ms | p99 ms | max ms |")
        log("|---|---:|---:|---:|---:|---:|---:|")
        for c in CLASSES:
            lat = self.latency[c]
            bad = sum(1 for f in self.failures if f[0] == c)
            log(f"| {c} | {self.counts[c]} | {self.counts[c] / secs:.2f} | {bad} | {pct(lat, 50):.0f} | "
                f"{pct(lat, 99):.0f} | {max(lat) if lat else float('nan'):.0f} |")
        log(f"| all | {total} | {total / secs:.2f} | {len(self.failures)} | | | |")
        log("")
        log("## Summary")
        log("")
        log(f"- traffic: {secs:.0f} s, {total} calls ({total / secs:.2f}/s) by {a.workers} concurrent callers; "
            f"approver answered {self.approver_log['approved']} approve + {self.approver_log['denied']} deny")
        log(f"- daemon errors: {len(errs)} journal entries at priority err or worse from cordond (pid {pid}; "
            f"{n_entries} entries in all), {len(stderr_errs)} error lines on its stderr")
        log(f"- unexpected client outcomes: {len(self.failures)}; approver errors: {len(self.approver_log['errors'])}")
        log(f"- cordond's own counts: {last['requests']:.0f} requests, errors_total {last['errors_total']:.0f}, "
            f"{last['masked']:.0f} secrets masked, journal entries dropped {last['journal_dropped']:.0f}, "
            f"recording records lost {last['recording_lost']:.0f}")
        log(f"- cordond's journal: {decided['block']} requests blocked by a rule, {decided['approved']} approved, "
            f"{decided['denied']} denied, {decided['masked_requests']} with secrets masked (the clients: "
            f"{self.counts['blocked']} blocked, {self.counts['approved']} approved, {self.counts['denied']} denied)")
        log(f"- RSS: {rss_before:.1f} MiB idle before; {rss_warm:.1f} MiB at {warm:.0f} s (after warm-up), "
            f"{rss_end:.1f} MiB at the end (growth {growth:+.1f} MiB, bound {bound:.1f} MiB = "
            f"max({a.rss_bound_mib} MiB, {a.rss_bound_pct}%)), max {rss_max:.1f} MiB, slope after warm-up "
            f"{slope:+.2f} MiB/min; {rss_after:.1f} MiB idle after")
        log(f"- fds: {fds_before} idle before, {fds_after} idle after ({live:.0f} connections live then); "
            f"max during traffic {max(s['fds'] for s in self.samples)}")
        log(f"- recordings: {n_sessions} sessions, {store_mib:.1f} MiB; `cordonctl verify`: exit {verify.returncode}: "
            f"{(verify.stdout + verify.stderr).strip().splitlines()[-1:] if (verify.stdout + verify.stderr).strip() else ''}")
        log(f"- cordond stopped with exit {rc}; load average after: {open('/proc/loadavg').read().split()[:3]}")

        if errs:
            problems.append(f"{len(errs)} daemon error entries in the journal")
            for e in errs[:20]:
                log(f"  journal p{e.get('PRIORITY')}: {e.get('CORDON_EVENT', '')} {e.get('MESSAGE', '')[:300]} "
                    f"{ {k: v for k, v in e.items() if k.startswith('CORDON_') and k not in ('CORDON_EVENT',)} }"[:800])
        if stderr_errs:
            problems.append(f"{len(stderr_errs)} error lines on cordond's stderr")
            for line in stderr_errs[:20]:
                log(f"  stderr: {line[:400]}")
        if self.failures:
            problems.append(f"{len(self.failures)} unexpected client outcomes")
            for cls, variant, sid, t, why in self.failures[:25]:
                log(f"  unexpected: {cls}/{variant} {sid} at {t:.0f} s: {why[:600]}")
        if self.approver_log["errors"]:
            problems.append(f"{len(self.approver_log['errors'])} approver errors")
            for e in self.approver_log["errors"][:10]:
                log(f"  approver: {e[:300]}")
        if growth > bound:
            problems.append(f"RSS grew {growth:.1f} MiB after warm-up (bound {bound:.1f} MiB)")
        if fds_after > fds_before + a.fd_slack:
            problems.append(f"fds {fds_before} -> {fds_after} idle (more than {a.fd_slack} up)")
        if verify.returncode != 0:
            problems.append(f"cordonctl verify exit {verify.returncode}: {(verify.stdout + verify.stderr)[-800:]}")
        expect = {"block": self.counts["blocked"], "approved": self.counts["approved"], "denied": self.counts["denied"]}
        for k, v in expect.items():
            if decided[k] != v:
                problems.append(f"the journal has {decided[k]} {k} requests, the clients made {v}")
        if last["journal_dropped"] or last["recording_lost"]:
            problems.append("journal entries dropped or recording records lost")
        if not all(s["journald"] for s in self.samples):
            problems.append("journald was not listening at some sample: the journal check is incomplete")
        for c in CLASSES:
            if self.counts[c] == 0:
                problems.append(f"no {c} call ran")
        log("")
        if problems:
            log("RESULT: FAIL")
            for p in problems:
                log(f"  - {p}")
            return 1
        log("RESULT: PASS (no daemon error, every outcome as expected, RSS flat, fds back, store verified)")
        return 0

    # --- cleanup ------------------------------------------------------------------------------

    def cleanup(self):
        self.stop_event.set()
        with contextlib.suppress(OSError):
            if (self.cg / "job").exists():
                for child in ("job/run", "job/deny", "job"):
                    with contextlib.suppress(OSError):
                        (self.cg / child / "cgroup.kill").write_text("1")
        if self.cordond and self.cordond.poll() is None:
            self.cordond.send_signal(signal.SIGTERM)
            try:
                self.cordond.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.cordond.kill()
                self.cordond.wait()
        if os.path.exists(self.pin_dir):
            binary = getattr(self, "cordonctl_bin", ROOT / "build" / "cordonctl")
            subprocess.run([str(binary), "--pin-dir", self.pin_dir, "detach"], capture_output=True)
        if self.standin and self.standin.poll() is None:
            self.standin.terminate()
            try:
                self.standin.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.standin.kill()
                self.standin.wait()
        if self.cg.exists():
            for d in sorted([p for p in self.cg.rglob("*") if p.is_dir()], key=lambda p: -len(p.parts)) + [self.cg]:
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
                deadline = time.monotonic() + 5
                while (d / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                    time.sleep(0.05)
                try:
                    d.rmdir()
                except OSError as e:
                    log(f"soak: could not remove cgroup {d}: {e}")
        if self.journald:
            self.journald.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.journald.wait(timeout=10)
            for d in reversed(self.journald_dirs):
                shutil.rmtree(d, ignore_errors=True)
        for f in (self.cordond_log, getattr(self, "standin_out", None)):
            if f:
                f.close()
        if os.path.exists(self.pin_dir):
            log(f"soak: {self.pin_dir} is still there")
        if self.work:
            if self.args.keep:
                log(f"soak: kept {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--workers", type=int, default=3, help="concurrent callers (default 3)")
    ap.add_argument("--sample-seconds", type=float, default=10)
    ap.add_argument("--warmup-seconds", type=float, default=120,
                    help="RSS is compared from here to the end (at most a fifth of the run; default 120)")
    ap.add_argument("--rss-bound-mib", type=float, default=8)
    ap.add_argument("--rss-bound-pct", type=float, default=10)
    ap.add_argument("--fd-slack", type=int, default=4, help="idle fds may end this many above the start (default 4)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, store)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: run as root (cgroups, BPF, port 443)", file=sys.stderr)
        return 2
    soak = Soak(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        return soak.run()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
