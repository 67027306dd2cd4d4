"""Who may do what, end to end: jobs enroll their CI's OIDC token with `cordonctl enroll`, rules
decide by verified claims (and unenrolled callers by their own default), `approve` rules hold a
request or a streamed message until root answers with cordonctl, and `inject` rules replace the
job's placeholder credential with the key only cordond holds. Real kernel hooks, the real
Connect client and the Cursor stand-in throughout; tokens are signed here with keys made here."""
import base64
import hashlib
import json
import os
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from conftest import CORDONCTL, NOBODY, ROOT
from test_intercept import INTERCEPT_HOSTS, Jobs, entries, tls_yaml, work  # noqa: F401
from test_standin import Standin

# This file's addresses: 127.77.90.0/24.
STANDIN_IP = "127.77.90.1"
ISSUER_IP = "127.77.90.2"
CAPTURED = [f"{STANDIN_IP}/32"]
MODELS = "/aiserver.v1.AiService/AvailableModels"
ISSUER = "https://ci.example.test"
AUDIENCE = "cordon"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA key of a CI's token service: signs tokens, publishes its JWKS."""

    def __init__(self, kid):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self):
        n = self.key.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                "n": b64url(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")), "e": b64url(n.e.to_bytes(3, "big"))}

    def token(self, issuer=ISSUER, aud=AUDIENCE, lifetime=600, **claims):
        now = int(time.time())
        payload = {"iss": issuer, "aud": aud, "iat": now, "nbf": now - 5, "exp": now + lifetime,
                   "sub": f"repo:{claims.get('repository', 'acme/app')}:ref:refs/heads/main",
                   "repository": "acme/app", "ref": "refs/heads/main", "run_id": str(now), **claims}
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(sig)}"


@pytest.fixture(scope="module")
def standin(work):
    s = Standin(work, STANDIN_IP)
    yield s
    s.stop()


@pytest.fixture
def signer():
    return Signer("key-1")


def identity_yaml(jwks_file=None, issuer=ISSUER, ca_file=None, extra_issuer="", refetch=60):
    keys = f"      jwks_file: {jwks_file}\n" if jwks_file else ""
    ca = f"      ca_file: {ca_file}\n" if ca_file else ""
    return ("identity:\n  issuers:\n    - name: ci\n"
            f"      issuer: {issuer}\n"
            f"      audiences: [{AUDIENCE}]\n" + keys + ca +
            "      required_claims: {repository: 'acme/*'}\n"
            "      journal_claims: [repository, ref]\n" + extra_issuer +
            f"  jwks_refetch_seconds: {refetch}\n")


@pytest.fixture
def governed(cgroups, cordond, standin, work, tmp_path):
    def start(rules_yaml):
        for child in ("job/enrolled", "job/plain"):
            (cgroups.base / child).mkdir(exist_ok=True)
            # A runner's cgroup holds the runner itself between its jobs' processes: a binding
            # ends when its cgroup empties, and without this one it could end (cordond sweeps
            # once a second) between the enrolling process and the job's next one.
            cgroups.spawn(child, ["sleep", "3600"])
        tls = tls_yaml(work, extra=f"  descriptors: {work / 'cursor.desc'}\n")
        d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls, extra_yaml=rules_yaml)
        jobs = {name: SubJobs(cgroups, d, work, tmp_path, f"job/{name}") for name in ("enrolled", "plain")}
        for j in jobs.values():
            j.map_hosts(STANDIN_IP)
        return d, jobs
    return start


class SubJobs(Jobs):
    """Jobs in one child cgroup of the enforced `job` cgroup."""

    def __init__(self, cgroups, d, work, tmp, child):
        sub = tmp / child.replace("/", "-")
        sub.mkdir(exist_ok=True)
        os.chmod(sub, 0o755)
        super().__init__(cgroups, d, work, sub, child=child)

    def enroll(self, token, check=True):
        path = self.tmp / "token"
        path.write_text(token)
        os.chmod(path, 0o644)
        return self.run([str(CORDONCTL), "--socket", self.d.socket, "enroll", "--token-file", str(path)],
                        check=check)


def tampered(token):
    """The same signature over a payload that now claims another repository."""
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["repository"] = "acme/other"
    return f"{header}.{b64url(json.dumps(claims).encode())}.{sig}"


def write_jwks(tmp_path, *signers):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [s.jwk() for s in signers]}))
    return path


def errors(events):
    return [e for e in events if e["event"] == "error"]


def ok(events):
    return not errors(events) and any(e["event"] == "response" for e in events)


# --- enrollment -----------------------------------------------------------------------------------

def test_an_enrolled_job_and_an_unenrolled_process_get_different_decisions(governed, signer, tmp_path, journal):
    jwks = write_jwks(tmp_path, signer)
    d, jobs = governed(identity_yaml(jwks) + f"""rules:
  - name: acme-ci-may-list-models
    match:
      claims: {{repository: "acme/*", ref: "refs/heads/main"}}
      rpcs: ["{MODELS.lstrip('/')}"]
    action: allow
  - name: unenrolled-may-not
    match:
      enrollment: unenrolled
      rpcs: ["{MODELS.lstrip('/')}"]
    action: block
    message: enroll the job first
default_action: allow
""")
    r = jobs["enrolled"].enroll(signer.token())
    assert "enrolled as ci:repo:acme/app:ref:refs/heads/main" in r.stdout, r.stdout
    enrolled = entries(journal, d, "enroll")[0]
    assert enrolled["CORDON_RESULT"] == "ok" and enrolled["CORDON_CGROUP"].endswith("/job/enrolled")
    assert json.loads(enrolled["CORDON_CLAIMS"]) == {"repository": "acme/app", "ref": "refs/heads/main"}

    events, _ = jobs["enrolled"].client("models")
    assert ok(events), events
    events, _ = jobs["plain"].client("models", check=False)
    err = errors(events)
    assert err and err[0]["code"] == "permission_denied" and "unenrolled-may-not" in err[0]["message"], events

    reqs = {e["CORDON_CGROUP"].rsplit("/", 1)[1]: e for e in entries(journal, d, "request", count=2)}
    assert reqs["enrolled"]["CORDON_IDENTITY"] == "ci:repo:acme/app:ref:refs/heads/main"
    assert reqs["enrolled"]["CORDON_RULE"] == "acme-ci-may-list-models"
    assert json.loads(reqs["enrolled"]["CORDON_CLAIMS"])["repository"] == "acme/app"
    assert reqs["plain"]["CORDON_IDENTITY"] == "unenrolled" and "CORDON_CLAIMS" not in reqs["plain"]
    assert reqs["plain"]["CORDON_RULE"] == "unenrolled-may-not" and reqs["plain"]["CORDON_ACTION"] == "block"

    listed = json.loads(d.ctl("identities", "--json").stdout)["identities"]
    assert [i["identity"] for i in listed] == ["ci:repo:acme/app:ref:refs/heads/main"]
    # Jobs may enroll; only root may list who did.
    denied = d.ctl("identities", check=False, user=NOBODY)
    assert denied.returncode != 0 and "for root" in denied.stderr


def test_a_token_cannot_be_bound_to_a_second_cgroup(governed, signer, tmp_path, journal):
    d, jobs = governed(identity_yaml(write_jwks(tmp_path, signer)) + "default_action: allow\n")
    token = signer.token()
    jobs["enrolled"].enroll(token)
    # The same token, read out of the first job, presented from another cgroup: refused.
    r = jobs["plain"].enroll(token, check=False)
    assert r.returncode == 1 and "already enrolled for another cgroup" in r.stderr, r
    refused = entries(journal, d, "enroll", CORDON_RESULT="refused")[0]
    assert refused["CORDON_CGROUP"].endswith("/job/plain")
    # The other cgroup's connections stay unenrolled.
    events, _ = jobs["plain"].client("models")
    req = entries(journal, d, "request")[0]
    assert req["CORDON_IDENTITY"] == "unenrolled"


@pytest.mark.parametrize("case,make,expect", [
    ("expired", lambda s: s.token(lifetime=-120), "expired"),
    ("wrong audience", lambda s: s.token(aud="someone-else"), "audience"),
    ("wrong issuer", lambda s: s.token(issuer="https://evil.example"), "not in the policy's identity.issuers"),
    ("required claim", lambda s: s.token(repository="other-org/app"), "repository"),
    ("unknown key", lambda s: Signer("key-2").token(), "unknown kid"),
    ("tampered", lambda s: tampered(s.token()), "signature"),
])
def test_bad_tokens_are_refused_and_bind_nothing(governed, signer, tmp_path, journal, case, make, expect):
    d, jobs = governed(identity_yaml(write_jwks(tmp_path, signer)) + "default_action: allow\n")
    r = jobs["enrolled"].enroll(make(signer), check=False)
    assert r.returncode == 1, (case, r)
    assert expect in r.stderr, (case, r.stderr)
    assert json.loads(d.ctl("identities", "--json").stdout)["identities"] == []


class Discovery:
    """An OIDC issuer on loopback over HTTPS: discovery document and JWKS, keys swappable."""

    def __init__(self, tmp_path, signers):
        self.signers = list(signers)
        self.fetches = 0
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer CA")])
        now = time.time()
        import datetime
        import ipaddress
        start = datetime.datetime.fromtimestamp(now - 60, datetime.timezone.utc)
        end = datetime.datetime.fromtimestamp(now + 3600, datetime.timezone.utc)
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
              .serial_number(1).not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER_IP)]))
                .issuer_name(name).public_key(key.public_key()).serial_number(2)
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ISSUER_IP))]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_file = tmp_path / "issuer-ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        cert_file = tmp_path / "issuer.pem"
        cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) +
                              key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": outer.issuer, "jwks_uri": outer.issuer + "/jwks"}
                elif self.path == "/jwks":
                    outer.fetches += 1
                    body = {"keys": [s.jwk() for s in outer.signers]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((ISSUER_IP, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.issuer = f"https://{ISSUER_IP}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_keys_come_from_https_discovery_and_a_rotated_key_is_fetched_once(governed, signer, tmp_path, journal):
    issuer = Discovery(tmp_path, [signer])
    try:
        d, jobs = governed(identity_yaml(issuer=issuer.issuer, ca_file=issuer.ca_file) + "default_action: allow\n")
        r = jobs["enrolled"].enroll(signer.token(issuer=issuer.issuer))
        assert "enrolled as ci:" in r.stdout, r
        assert issuer.fetches == 1
        # The issuer rotates in a new key: the unknown kid makes cordond fetch again, once.
        rotated = Signer("key-2")
        issuer.signers.append(rotated)
        r = jobs["plain"].enroll(rotated.token(issuer=issuer.issuer, run_id="2"))
        assert "enrolled as ci:" in r.stdout, r
        assert issuer.fetches == 2
        # A key the issuer never published, within the refetch cooldown: refused, no fetch.
        r = jobs["plain"].enroll(Signer("key-3").token(issuer=issuer.issuer), check=False)
        assert r.returncode == 1 and "unknown kid" in r.stderr, r
        assert issuer.fetches == 2
    finally:
        issuer.stop()


# --- approvals ------------------------------------------------------------------------------------

APPROVE_RM = r"""approvals:
  timeout_seconds: {timeout}
rules:
  - name: approve-rm-rf
    match:
      direction: response
      content:
        - field: exec_server_message.shell_args.command
          regex: 'rm\s+-rf\s+/'
    action: approve
    message: destructive command
default_action: allow
"""


def wait_pending(d, count=1, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        pending = json.loads(d.ctl("approvals", "--json").stdout)["pending"]
        if len(pending) >= count:
            return pending
        assert time.monotonic() < deadline, f"no pending approval:\n{d.log_text()[-3000:]}"
        time.sleep(0.1)


def exec_messages(events):
    return [e for e in events if e["event"] == "recv" and "execServerMessage" in json.dumps(e)]


@pytest.mark.parametrize("answer", ["approve", "deny", "timeout"])
def test_a_dangerous_exec_message_waits_for_a_person(governed, journal, answer):
    d, jobs = governed(APPROVE_RM.format(timeout=3 if answer == "timeout" else 60))
    job = jobs["plain"]
    p = job.spawn_client("run", "--prompt", "please rm -rf / now", base_url="https://agentn.api5.cursor.sh")
    pending = wait_pending(d)[0]
    assert pending["rule"] == "approve-rm-rf" and pending["direction"] == "response"
    assert pending["rpc"] == "agent.v1.AgentService/Run" and "rm -rf /" in pending["excerpt"]
    assert pending["identity"] == "unenrolled" and pending["cgroup"].endswith("/job/plain")
    journaled = entries(journal, d, "approval", CORDON_APPROVAL="pending")[0]
    assert journaled["CORDON_APPROVAL_ID"] == pending["id"] and "rm -rf /" in journaled["CORDON_EXCERPT"]
    human = d.ctl("approvals").stdout
    assert pending["id"] in human and "approve-rm-rf" in human
    if answer != "timeout":
        r = d.ctl(answer, pending["id"])
        assert pending["id"] in r.stdout
    out, err = p.communicate(timeout=60)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    req = entries(journal, d, "request")[0]
    assert req["CORDON_APPROVAL_ID"] == pending["id"] and req["CORDON_ACTION"] == "approve"
    if answer == "approve":
        assert exec_messages(events) and "rm -rf /" in json.dumps(exec_messages(events)[0]), events
        assert not errors(events), events
        assert req["CORDON_APPROVAL"] == "approved" and req["CORDON_APPROVER"].startswith("root")
        assert req["CORDON_RESULT"] == "ok"
        return
    # Denied or unanswered: the exec message never reaches the job, the stream ends in an error.
    assert not exec_messages(events), events
    err_ = errors(events)
    assert err_ and err_[0]["code"] == "permission_denied", events
    if answer == "deny":
        assert "denied by root" in err_[0]["message"] and req["CORDON_APPROVAL"] == "denied"
    else:
        assert "no approval within 3 s" in err_[0]["message"] and req["CORDON_APPROVAL"] == "timed_out"
    assert req["CORDON_RESULT"] == "refused"


def test_a_held_request_reaches_cursor_only_once_approved_and_a_grant_lets_the_next_through(
        governed, standin, journal):
    d, jobs = governed(f"""rules:
  - name: models-need-approval
    match:
      rpcs: ["{MODELS.lstrip('/')}"]
    action: approve
default_action: allow
""")
    job = jobs["plain"]
    before = len(standin.requests(MODELS))
    p = job.spawn_client("models")
    pending = wait_pending(d)[0]
    assert pending["direction"] == "request" and pending["rpc"] == MODELS.lstrip("/")
    time.sleep(0.5)
    assert len(standin.requests(MODELS)) == before, "a held request reached the stand-in"
    # Pending approvals survive a policy reload.
    reload = d.ctl("reload")
    assert reload.returncode == 0, reload.stderr
    assert [a["id"] for a in wait_pending(d)] == [pending["id"]]
    non_root = d.ctl("approve", pending["id"], check=False, user=NOBODY)
    assert non_root.returncode != 0 and "for root" in non_root.stderr
    d.ctl("approve", pending["id"], "--for", "10m")
    out, _ = p.communicate(timeout=60)
    assert ok([json.loads(line) for line in out.splitlines() if line.strip()]), out
    assert len(standin.requests(MODELS)) == before + 1
    grants = json.loads(d.ctl("approvals", "--json").stdout)["grants"]
    assert [(g["identity"], g["rpc"]) for g in grants] == [("unenrolled", MODELS.lstrip("/"))]
    # The grant covers the same identity and RPC: no new approval, straight through.
    events, _ = job.client("models")
    assert ok(events), events
    reqs = entries(journal, d, "request", count=2)
    assert reqs[0]["CORDON_APPROVAL"] == "approved" and reqs[1]["CORDON_APPROVAL"] == "granted"
    assert json.loads(d.ctl("approvals", "--json").stdout)["pending"] == []


# --- injection ------------------------------------------------------------------------------------

HELD_KEY = "crsr_" + "4f1c9a7e2b8d6035" * 4


@pytest.fixture
def credential(tmp_path):
    path = tmp_path / "cursor.key"
    path.write_text(HELD_KEY + "\n")
    os.chmod(path, 0o600)
    return path


def inject_yaml(credential):
    return f"""rules:
  - name: ci-uses-the-held-key
    match:
      paths: ["/auth/exchange_user_api_key", "/v0/me"]
    action: inject
    inject:
      credential_file: {credential}
      scheme: bearer
default_action: allow
"""


@pytest.mark.parametrize("in_body", [False, True])
def test_the_job_exchanges_a_placeholder_and_never_sees_the_held_key(governed, standin, journal, credential,
                                                                     in_body):
    d, jobs = governed(inject_yaml(credential))
    job = jobs["plain"]
    path = "/auth/exchange_user_api_key"
    args = ["auth", "--key", "crsr_placeholder"] + (["--in-body"] if in_body else [])
    events, r = job.client(*args)
    response = [e for e in events if e["event"] == "response"][0]
    assert response["status"] == 200 and "accessToken" in response["json"], events
    # Cursor's answer is a short-lived token for the held key's user; the key itself never shows.
    claims = json.loads(base64.urlsafe_b64decode(response["json"]["accessToken"].split(".")[1] + "=="))
    assert claims["sub"] == "standin|user_" + hashlib.sha256(HELD_KEY.encode()).hexdigest()[:16]
    assert HELD_KEY not in r.stdout and HELD_KEY not in r.stderr
    seen = standin.requests(path)[-1]
    assert seen[0]["headers"]["authorization"] == f"Bearer {HELD_KEY}"
    req = entries(journal, d, "request")[0]
    assert req["CORDON_RULE"] == "ci-uses-the-held-key" and req["CORDON_ACTION"] == "inject"
    assert HELD_KEY not in json.dumps(req)


def test_rest_calls_carry_the_held_key_and_a_loose_key_file_is_refused(governed, standin, credential, journal):
    d, jobs = governed(inject_yaml(credential))
    job = jobs["plain"]
    r = job.run(["curl", "-sS", "--max-time", "10", "-H", "Authorization: Bearer placeholder",
                 "-H", "x-api-key: placeholder", "https://api.cursor.com/v0/me"])
    me = json.loads(r.stdout)
    assert me["keyFingerprint"] == hashlib.sha256(HELD_KEY.encode()).hexdigest()[:16], r.stdout
    headers = standin.requests("/v0/me")[-1][0]["headers"]
    assert "x-api-key" not in headers and headers["authorization"] == f"Bearer {HELD_KEY}"
    # A key file others could read is not used: the request is refused, naming the rule.
    os.chmod(credential, 0o644)
    r = job.run(["curl", "-sS", "--max-time", "10", "-H", "Authorization: Bearer placeholder",
                 "https://api.cursor.com/v0/me", "-w", "\n%{http_code}"], check=False)
    assert r.stdout.endswith("\n503"), r.stdout
    assert "ci-uses-the-held-key" in r.stdout and "mode 0600" in r.stdout


# --- the policy file --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,line,message", [
    ("identity:\n  issuers:\n    - name: ci\n      issuer: http://plain.example\n", 4, "not an https:// issuer"),
    ("identity:\n  issuers:\n    - name: ci\n      isuer: https://x.example\n", 4, "unknown key 'isuer'"),
    ("rules:\n  - name: x\n    action: inject\n    inject:\n      scheme: token\n", 5, "not bearer or basic"),
    ("rules:\n  - name: x\n    action: allow\n    match:\n      enrollment: maybe\n", 5, "enrollment"),
])
def test_broken_identity_and_rule_settings_name_the_line(tmp_path, bad, line, message):
    policy = tmp_path / "policy.yaml"
    policy.write_text(bad)
    r = subprocess.run([str(CORDONCTL), "policy", "check", str(policy)], capture_output=True, text=True)
    assert r.returncode != 0 and f"{policy}:{line}:" in r.stderr and message in r.stderr, r.stderr


def test_whole_policy_checks_catch_what_no_single_line_shows(tmp_path):
    policy = tmp_path / "policy.yaml"
    for text, message in [
        ("rules:\n  - name: x\n    action: inject\n", "needs inject.credential_file"),
        ("rules:\n  - name: x\n    action: allow\n    match: {issuers: [gh]}\n", "names issuer 'gh'"),
        ("identity:\n  issuers:\n    - {name: ci, issuer: 'https://x.example'}\n", "needs audiences"),
    ]:
        policy.write_text(text)
        r = subprocess.run([str(CORDONCTL), "policy", "check", str(policy)], capture_output=True, text=True)
        assert r.returncode != 0 and message in r.stderr, (text, r.stderr)


# --- runner hooks -----------------------------------------------------------------------------------

HOOKS = ROOT / "scripts" / "runner-hooks"
TOKEN_SERVICE_IP = "127.77.90.3"


def test_the_github_job_started_hook_enrolls_the_job(governed, signer, tmp_path, journal):
    d, jobs = governed(identity_yaml(write_jwks(tmp_path, signer)) + "default_action: allow\n")
    token = signer.token(repository="acme/app", workflow="build")
    asked = []

    class TokenService(BaseHTTPRequestHandler):
        def do_GET(self):
            # GitHub's token endpoint: the runner's request token as bearer, the audience asked for.
            asked.append((self.path, self.headers.get("authorization")))
            data = json.dumps({"count": 1, "value": token}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((TOKEN_SERVICE_IP, 0), TokenService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{TOKEN_SERVICE_IP}:{server.server_address[1]}/token?api-version=2.0"
        r = jobs["enrolled"].run(["env", f"ACTIONS_ID_TOKEN_REQUEST_URL={url}",
                                  "ACTIONS_ID_TOKEN_REQUEST_TOKEN=runner-request-token",
                                  f"CORDONCTL={CORDONCTL}", f"CORDON_CONTROL_SOCKET={d.socket}",
                                  "sh", str(HOOKS / "github-job-started.sh")])
        assert "enrolled as ci:" in r.stdout, r
        assert asked == [("/token?api-version=2.0&audience=cordon", "bearer runner-request-token")]
    finally:
        server.shutdown()
        server.server_close()
    # Without an OIDC token the hook says why and lets the job run unenrolled.
    r = jobs["plain"].run(["env", f"CORDONCTL={CORDONCTL}", f"CORDON_CONTROL_SOCKET={d.socket}",
                           "sh", str(HOOKS / "github-job-started.sh")])
    assert "runs unenrolled" in r.stderr
    listed = json.loads(d.ctl("identities", "--json").stdout)["identities"]
    assert [i["cgroup"].rsplit("/", 1)[1] for i in listed] == ["enrolled"]
    # The next job on the same runner (the same cgroup, which outlives its jobs) gets no token:
    # it must not run under the previous job's identity.
    r = jobs["enrolled"].run(["env", f"CORDONCTL={CORDONCTL}", f"CORDON_CONTROL_SOCKET={d.socket}",
                              "sh", str(HOOKS / "github-job-started.sh")])
    assert "runs unenrolled" in r.stderr, r
    assert json.loads(d.ctl("identities", "--json").stdout)["identities"] == []
    ended = journal.wait_for(d.pid, CORDON_EVENT="unenroll")
    assert ended and ended[0]["CORDON_IDENTITY"].startswith("ci:") and ended[0]["CORDON_UID"] != "0", ended


def test_the_gitlab_pre_build_script_enrolls_the_job(governed, signer, tmp_path):
    d, jobs = governed(identity_yaml(write_jwks(tmp_path, signer)) + "default_action: allow\n")
    r = jobs["enrolled"].run(["env", f"CORDON_ID_TOKEN={signer.token()}", f"CORDONCTL={CORDONCTL}",
                              f"CORDON_CONTROL_SOCKET={d.socket}", "sh", "-c",
                              f". {HOOKS / 'gitlab-pre-build.sh'} && echo job script runs"])
    assert "enrolled as ci:" in r.stdout and "job script runs" in r.stdout, r
    r = jobs["plain"].run(["env", f"CORDONCTL={CORDONCTL}", f"CORDON_CONTROL_SOCKET={d.socket}",
                           "CORDON_ENROLL_REQUIRED=1", "sh", "-c",
                           f". {HOOKS / 'gitlab-pre-build.sh'} && echo job script runs"], check=False)
    assert r.returncode == 1 and "job script runs" not in r.stdout and "no CORDON_ID_TOKEN" in r.stderr
