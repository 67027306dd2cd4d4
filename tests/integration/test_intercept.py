"""TLS interception end to end: real clients in an enforced cgroup, configured only the way a host
install configures them (the OS trust store and NODE_EXTRA_CA_CERTS, here inside a private mount
namespace), talking to the Cursor stand-in through cordond.

The stand-in's certificates come from a test "public" CA that cordond (and only cordond) trusts
for upstream verification; the jobs trust cordon's own CA.
"""
import base64
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from conftest import NOBODY, ROOT
from test_standin import CLIENT, CURSOR_HOSTS, MAKE_CERTS, Standin

# This file's addresses: 127.77.60.0/24.
STANDIN_IP = "127.77.60.1"   # the stand-in, for Cursor's names
WRONG_IP = "127.77.60.2"     # a stand-in whose certificate names another host
EXPIRED_IP = "127.77.60.3"   # a stand-in with an expired certificate
OTHER_IP = "127.77.60.4"     # an unrelated HTTPS site on a captured address (domain fronting)
UNTRUSTED_IP = "127.77.60.5" # a stand-in with a self-signed certificate nobody trusts
CAPTURED = [f"{ip}/32" for ip in (STANDIN_IP, WRONG_IP, EXPIRED_IP, OTHER_IP, UNTRUSTED_IP)]
INTERCEPT_HOSTS = ["*.cursor.sh", "api.cursor.com", "cursor.com", "*.cursor.com"]


@pytest.fixture(scope="module")
def work():
    subprocess.run(["make", "--no-print-directory", "standin"], cwd=ROOT, check=True, capture_output=True)
    d = pathlib.Path(tempfile.mkdtemp(prefix="cordon-intercept-"))
    os.chmod(d, 0o755)
    subprocess.run([str(MAKE_CERTS), str(d / "certs")], check=True, capture_output=True)
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "cursor").rglob("*.proto"))
    subprocess.run(["protoc", "-Iproto", "--include_imports", f"--descriptor_set_out={d / 'cursor.desc'}", *protos],
                   cwd=ROOT, check=True)
    # other.example: a site that is not Cursor, with a certificate from the same test CA.
    certs = d / "certs"
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
                    "/CN=other.example", "-keyout", str(certs / "other.key"), "-out", str(certs / "other.csr")],
                   check=True, capture_output=True)
    (certs / "other.ext").write_text("subjectAltName=DNS:other.example\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(certs / "other.csr"), "-CA", str(certs / "ca.pem"),
                    "-CAkey", str(certs / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile",
                    str(certs / "other.ext"), "-out", str(certs / "other.pem")], check=True, capture_output=True)
    # Cursor's names, but self-signed: no trust store anywhere vouches for it.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=api2.cursor.sh", "-addext", "subjectAltName=DNS:api2.cursor.sh",
                    "-keyout", str(certs / "untrusted.key"), "-out", str(certs / "untrusted.pem")],
                   check=True, capture_output=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def upstreams(work):
    servers = {
        "standin": Standin(work, STANDIN_IP),
        "wrong": Standin(work, WRONG_IP, cert="wronghost"),
        "expired": Standin(work, EXPIRED_IP, cert="expired"),
        "untrusted": Standin(work, UNTRUSTED_IP, cert="untrusted"),
    }
    other = subprocess.Popen(["openssl", "s_server", "-quiet", "-accept", f"{OTHER_IP}:443", "-cert",
                              str(work / "certs" / "other.pem"), "-key", str(work / "certs" / "other.key"), "-www"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((OTHER_IP, 443), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "openssl s_server did not start"
            time.sleep(0.05)
    yield servers
    for s in servers.values():
        s.stop()
    other.terminate()
    other.wait(timeout=10)


class Jobs:
    """Runs clients as a CI job would: as nobody, in the enforced cgroup, seeing Cursor's names at
    the stand-in and trusting cordon's CA through the OS store and NODE_EXTRA_CA_CERTS."""

    def __init__(self, cgroups, d, work, tmp, child="job"):
        self.cgroups, self.d, self.work, self.tmp, self.child = cgroups, d, work, tmp, child
        # The CA the job trusts: cordon's, as `cordonctl ca install` would install it.
        self.cordon_ca = tmp / "cordon-ca.crt"
        shutil.copy(d.state_dir / "ca" / "ca.crt", self.cordon_ca)
        os.chmod(self.cordon_ca, 0o644)
        self.bundle = tmp / "ca-certificates.crt"
        self.bundle.write_bytes(pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() +
                                self.cordon_ca.read_bytes())
        os.chmod(self.bundle, 0o644)
        self.map_hosts(STANDIN_IP)

    def map_hosts(self, ip, extra=""):
        self.hosts = self.tmp / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n" + f"{ip} {' '.join(CURSOR_HOSTS)}\n" +
                              f"{OTHER_IP} other.example\n" + extra)
        os.chmod(self.hosts, 0o644)

    def spawn(self, argv, user=NOBODY):
        """Starts `argv` as the job; the caller collects it."""
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/ssl/certs/ca-certificates.crt && '
                   'shift && exec "$@"', str(self.hosts), str(self.bundle)]
        env_argv = ["env", f"NODE_EXTRA_CA_CERTS={self.cordon_ca}", "HOME=/tmp"]
        if user is not None:
            env_argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + env_argv
        # Responses may be binary (Connect envelopes): decode what is text, keep the rest visible.
        return self.cgroups.spawn(self.child, wrapped + env_argv + list(argv), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, encoding="utf-8", errors="replace")

    def run(self, argv, check=True, timeout=60, user=NOBODY):
        p = self.spawn(argv, user=user)
        out, err = p.communicate(timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{argv} exited {p.returncode}\nstdout: {out}\nstderr: {err}\n"
                                 f"cordond: {self.d.log_text()[-3000:]}")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def client_argv(self, *args, base_url="https://api2.cursor.sh", http="2"):
        return ["node", str(CLIENT), "--base-url", base_url, "--http", http, "--descriptors",
                str(self.work / "cursor.desc"), *map(str, args)]

    def spawn_client(self, *args, **kwargs):
        return self.spawn(self.client_argv(*args, **kwargs))

    def client(self, *args, base_url="https://api2.cursor.sh", http="2", check=True):
        r = self.run(self.client_argv(*args, base_url=base_url, http=http), check=check)
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()], r


def tls_yaml(work, non_target="refuse", extra=""):
    return ("tls:\n"
            f"  upstream_ca_file: {work / 'certs' / 'ca.pem'}\n"
            "  missing_sni: refuse\n"
            f"  non_target_sni: {non_target}\n" + extra)


@pytest.fixture
def intercept(cgroups, cordond, upstreams, work, tmp_path):
    def start(non_target="refuse", tls_extra=""):
        d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls_yaml(work, non_target, tls_extra))
        return d, Jobs(cgroups, d, work, tmp_path)
    return start


def entries(journal, d, event, count=1, **match):
    found = journal.wait_for(d.pid, count=count, CORDON_EVENT=event, **match)
    assert len(found) >= count, f"expected {count} {event} entries, got {len(found)}:\n{d.log_text()[-3000:]}"
    return found


def standin_requests(standin, path):
    return standin.requests(path)


# --- real clients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,http", [("--http2", "2"), ("--http1.1", "1.1")])
def test_curl_through_cordond_with_the_os_trust_store(intercept, upstreams, journal, flag, http):
    d, jobs = intercept()
    before = len(upstreams["standin"].log())
    r = jobs.run(["curl", "-sS", flag, "--max-time", "10", "https://api2.cursor.sh/"])
    assert r.stdout.startswith("hello from the api2.cursor.sh stand-in")
    req = entries(journal, d, "request")[0]
    assert req["CORDON_HTTP"] == http and req["CORDON_STATUS"] == "200" and req["CORDON_RESULT"] == "ok"
    assert req["CORDON_HOST"] == "api2.cursor.sh" and req["CORDON_COMM"] == "curl"
    assert req["CORDON_UID"] == str(NOBODY) and req["CORDON_SNI"] == "api2.cursor.sh"
    close = entries(journal, d, "connection_close")[0]
    assert close["CORDON_MODE"] == "intercept" and close["CORDON_ALPN"] == ("h2" if http == "2" else "http/1.1")
    # The stand-in talked to cordond's upstream socket.
    seen = [e for e in upstreams["standin"].log()[before:] if e["event"] == "request"]
    assert seen and seen[-1]["peer"] == close["CORDON_UPSTREAM_LOCAL"]


def test_node_fetch_and_node_http2(intercept, journal):
    d, jobs = intercept()
    fetch = jobs.run(["node", "-e", "fetch('https://api2.cursor.sh/').then(r=>r.text()).then(t=>console.log(t))"])
    assert fetch.stdout.startswith("hello from the api2.cursor.sh stand-in (HTTP/1.1")
    h2 = jobs.run(["node", "-e",
                   "const h=require('http2').connect('https://api2.cursor.sh');"
                   "const r=h.request({':path':'/'});let b='';r.on('data',c=>b+=c);"
                   "r.on('end',()=>{console.log(b);h.close()});r.end()"])
    assert h2.stdout.startswith("hello from the api2.cursor.sh stand-in (HTTP/2.0")
    reqs = entries(journal, d, "request", count=2)
    assert sorted(e["CORDON_HTTP"] for e in reqs) == ["1.1", "2"]
    assert all(e["CORDON_COMM"] == "node" for e in reqs)


@pytest.mark.parametrize("http", ["2", "1.1"])
@pytest.mark.parametrize("codec", ["proto", "json"])
def test_connect_unary_reaches_cursor_byte_for_byte(intercept, upstreams, journal, http, codec):
    d, jobs = intercept()
    events, _ = jobs.client("unary", "--method", "aiserver.v1.AiService/AvailableModels", "--codec", codec, http=http)
    sent = [e for e in events if e["event"] == "sent"]
    assert [e for e in events if e["event"] == "response" and e.get("status") == 200], events

    got = [e for e in upstreams["standin"].requests("/aiserver.v1.AiService/AvailableModels")[-1]
           if e["event"] == "message" and e["direction"] == "received"]
    assert [m["raw_base64"] for m in got] == [m["raw_base64"] for m in sent]
    req = entries(journal, d, "request")[0]
    assert req["CORDON_RPC"] == "aiserver.v1.AiService/AvailableModels"
    assert req["CORDON_PROTO"] == "connect_unary" and req["CORDON_STATUS"] == "200"
    assert req["CORDON_REQ_MESSAGES"] == "1" and req["CORDON_RESP_MESSAGES"] == "1"


@pytest.mark.parametrize("http", ["2", "1.1"])
def test_connect_server_streaming(intercept, journal, http):
    d, jobs = intercept()
    events, _ = jobs.client("server-stream", http=http)
    recv = [e for e in events if e["event"] == "recv"]
    assert len(recv) >= 3 and any(e["event"] == "end" for e in events)
    req = entries(journal, d, "request")[0]
    assert req["CORDON_PROTO"] in ("connect_stream", "sse") and int(req["CORDON_RESP_MESSAGES"]) >= len(recv)


def test_bidi_chat_streams_through_message_by_message(intercept, upstreams, journal):
    d, jobs = intercept()
    events, _ = jobs.client("chat", "--prompt", "hello", "--prompt", "and more", "--prompt", "bye",
                            "--pause-ms", "400")
    recv = [e for e in events if e["event"] == "recv"]
    closed = [e for e in events if e["event"] == "closed_send"]
    assert recv and closed
    # The first answer arrived while the client was still sending: nothing waited for the
    # request body to end.
    assert recv[0]["t_ms"] < closed[0]["t_ms"]
    sent = [e["raw_base64"] for e in events if e["event"] == "sent"]
    got = [e["raw_base64"] for e in upstreams["standin"].requests(
        "/aiserver.v1.ChatService/StreamUnifiedChatWithTools")[-1]
        if e["event"] == "message" and e["direction"] == "received" and "index" in e]
    assert got == sent
    req = entries(journal, d, "request")[0]
    assert req["CORDON_PROTO"] == "connect_stream" and req["CORDON_REQ_MESSAGES"] == "3"


def test_agent_run_carries_the_exec_message(intercept, journal):
    d, jobs = intercept()
    events, _ = jobs.client("run", "--prompt", "please rm -rf / now", base_url="https://agentn.api5.cursor.sh")
    execs = [e for e in events if e["event"] == "recv" and "execServerMessage" in json.dumps(e)]
    assert execs and "rm -rf /" in json.dumps(execs[0])
    assert entries(journal, d, "request")[0]["CORDON_RPC"] == "agent.v1.AgentService/Run"


def test_run_sse_fallback_over_http1(intercept, journal):
    d, jobs = intercept()
    events, _ = jobs.client("run-sse", "--prompt", "hello over SSE", http="1.1")
    assert [e for e in events if e["event"] == "recv"]
    protos = {e["CORDON_RPC"]: e["CORDON_PROTO"] for e in entries(journal, d, "request", count=2)}
    assert protos.get("agent.v1.AgentService/RunSSE") == "sse"


@pytest.mark.parametrize("http", ["2", "1.1"])
def test_auth_exchange_and_rest(intercept, journal, http):
    d, jobs = intercept()
    events, _ = jobs.client("auth", "--key", "crsr_test_key", http=http)
    assert any("accessToken" in json.dumps(e) for e in events)
    events, _ = jobs.client("rest", "--path", "/v0/me", "--bearer", "crsr_test_key",
                            base_url="https://api.cursor.com", http=http)
    assert any(e.get("status") == 200 for e in events if e["event"] == "response")
    reqs = entries(journal, d, "request", count=2)
    assert {e["CORDON_HOST"] for e in reqs} == {"api2.cursor.sh", "api.cursor.com"}


# --- what is not Cursor ---------------------------------------------------------------------------

def test_non_target_sni_passes_through_undecrypted(intercept, journal, work):
    d, jobs = intercept(non_target="passthrough")
    # Trusting only the test CA proves the certificate came from other.example itself: cordond
    # never decrypted the connection (its own leaves come from cordon's CA).
    r = jobs.run(["curl", "-sS", "--max-time", "10", "--cacert", str(work / "certs" / "ca.pem"),
                  "https://other.example/", "-o", "/dev/null", "-w", "%{http_code}"])
    assert r.stdout == "200"
    close = entries(journal, d, "connection_close")[0]
    assert close["CORDON_MODE"] == "passthrough" and close["CORDON_SNI"] == "other.example"
    assert journal.entries(d.pid, CORDON_EVENT="request") == []


def test_non_target_sni_is_refused_by_default(intercept, journal, upstreams):
    d, jobs = intercept()
    # Domain fronting: a Cursor address, someone else's name.
    r = jobs.run(["curl", "-sS", "--max-time", "10", "-k", "--resolve", f"evil.example:443:{STANDIN_IP}",
                  "https://evil.example/"], check=False)
    assert r.returncode == 35 and "access denied" in r.stderr
    close = entries(journal, d, "connection_close")[0]
    assert close["CORDON_MODE"] == "refused" and "evil.example is not a capture host" in close["CORDON_REASON"]


def test_missing_sni_is_refused(intercept, journal):
    d, jobs = intercept()
    r = jobs.run(["curl", "-sS", "--max-time", "10", "-k", f"https://{STANDIN_IP}/"], check=False)
    assert r.returncode != 0
    close = entries(journal, d, "connection_close")[0]
    assert close["CORDON_MODE"] == "refused" and close["CORDON_REASON"] == "ClientHello without SNI"


# --- upstream verification --------------------------------------------------------------------------

@pytest.mark.parametrize("ip,why", [(WRONG_IP, "hostname mismatch"), (EXPIRED_IP, "certificate has expired"),
                                    (UNTRUSTED_IP, "self-signed certificate")])
@pytest.mark.parametrize("flag", ["--http2", "--http1.1"])
def test_an_unverifiable_upstream_is_a_clear_error(intercept, journal, upstreams, ip, why, flag):
    d, jobs = intercept()
    jobs.map_hosts(ip)
    r = jobs.run(["curl", "-sS", flag, "--max-time", "10", "https://api2.cursor.sh/", "-w", "\n%{http_code}"],
                 check=False)
    body, status = r.stdout.rsplit("\n", 1)
    assert status == "503"
    assert why in json.loads(body)["error"]["message"]
    err = entries(journal, d, "upstream_tls_error")[0]
    assert why in err["CORDON_ERROR"]
    # Nothing was sent to the unverified peer.
    served = upstreams[{WRONG_IP: "wrong", EXPIRED_IP: "expired", UNTRUSTED_IP: "untrusted"}[ip]]
    assert [e for e in served.log() if e["event"] == "request"] == []


# --- bad input ---------------------------------------------------------------------------------------

def raw_tls(d, jobs, alpn):
    """A TLS connection from the test process into the job cgroup's view: connect as the job
    would (the test process joins the job cgroup for one connect via a helper process)."""
    ctx = ssl.create_default_context(cafile=str(jobs.cordon_ca))
    ctx.set_alpn_protocols(alpn)
    return ctx


def run_py(jobs, code, check=True):
    return jobs.run(["/usr/bin/python3", "-c", code], check=check)


def test_a_broken_client_hello_is_refused_and_journaled(intercept, journal):
    d, jobs = intercept()
    r = run_py(jobs, "import socket\n"
                     f"s=socket.create_connection(('{STANDIN_IP}',443),timeout=5)\n"
                     "s.sendall(bytes([0x16,3,1,0,40,1,0,0,36])+b'\\xff'*36)\n"
                     "print(repr(s.recv(100)))\n")
    assert "\\x15" in r.stdout  # an alert, then the close
    close = entries(journal, d, "connection_close")[0]
    assert close["CORDON_MODE"] == "refused" and close["CORDON_REASON"].startswith("bad ClientHello")
    assert d.status()["ok"]


def test_invalid_http2_frames_after_a_valid_preface_close_that_connection_only(intercept, journal):
    d, jobs = intercept()
    r = run_py(jobs, "import socket,ssl,os,struct\n"
                     "ctx=ssl.create_default_context(cafile=os.environ['NODE_EXTRA_CA_CERTS'])\n"
                     "ctx.set_alpn_protocols(['h2'])\n"
                     f"s=ctx.wrap_socket(socket.create_connection(('{STANDIN_IP}',443),timeout=5),"
                     "server_hostname='api2.cursor.sh')\n"
                     "frame=lambda t,f,sid,p: struct.pack('>I',len(p))[1:]+bytes([t,f])+struct.pack('>I',sid)+p\n"
                     "s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'+frame(4,0,0,b'')"
                     "+frame(0,1,0,b'DATA on stream zero'))\n"
                     "data=b''\n"
                     "try:\n"
                     "  while True:\n"
                     "    c=s.recv(4096)\n"
                     "    if not c: break\n"
                     "    data+=c\n"
                     "except (ConnectionError, ssl.SSLError): pass\n"
                     "types=[]\n"
                     "while len(data)>=9:\n"
                     "  n=int.from_bytes(data[:3],'big');types.append(data[3]);data=data[9+n:]\n"
                     "print('goaway' if 7 in types else 'no goaway: %r' % types)\n")
    assert r.stdout.strip() == "goaway"  # a GOAWAY (frame type 7), then the close
    close = entries(journal, d, "connection_close")[0]
    assert close["CORDON_MODE"] == "intercept"
    assert jobs.run(["curl", "-sS", "--http2", "https://api2.cursor.sh/"]).stdout.startswith("hello")


def test_an_invalid_http2_preface_closes_that_connection_only(intercept, journal):
    d, jobs = intercept()
    r = run_py(jobs, "import socket,ssl,os\n"
                     "ctx=ssl.create_default_context(cafile=os.environ['NODE_EXTRA_CA_CERTS'])\n"
                     "ctx.set_alpn_protocols(['h2'])\n"
                     f"s=ctx.wrap_socket(socket.create_connection(('{STANDIN_IP}',443),timeout=5),"
                     "server_hostname='api2.cursor.sh')\n"
                     "print(s.selected_alpn_protocol())\n"
                     "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'*4)\n"
                     "data=b''\n"
                     "try:\n"
                     "  while True:\n"
                     "    c=s.recv(4096)\n"
                     "    if not c: break\n"
                     "    data+=c\n"
                     "except (ConnectionError, ssl.SSLError): pass\n"
                     "print('closed')\n")
    assert r.stdout.split() == ["h2", "closed"]
    close = entries(journal, d, "connection_close")[0]
    assert close["CORDON_RESULT"] == "client_protocol_error"
    # The daemon carries on.
    assert jobs.run(["curl", "-sS", "--http2", "https://api2.cursor.sh/"]).stdout.startswith("hello")


@pytest.mark.parametrize("flag", ["--http2", "--http1.1"])
@pytest.mark.parametrize("case", ["oversize", "bomb", "truncated"])
def test_bad_envelopes_end_that_request_with_a_clear_error(intercept, journal, tmp_path, flag, case):
    import gzip
    d, jobs = intercept(tls_extra="  max_message_bytes: 1048576\n")
    if case == "oversize":
        body = bytes([0, 0xff, 0xff, 0xff, 0xf0]) + b"x" * 100
        why = "exceeds"
    elif case == "bomb":
        bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
        body = bytes([1]) + len(bomb).to_bytes(4, "big") + bomb
        why = "beyond"
    else:
        body = bytes([0, 0, 0, 0, 100]) + b"only part of it"
        why = "inside a message"
    payload = tmp_path / "body.bin"
    payload.write_bytes(body)
    os.chmod(payload, 0o644)
    r = jobs.run(["curl", "-sS", flag, "--max-time", "15", "-X", "POST", "--data-binary", f"@{payload}",
                  "-H", "content-type: application/connect+proto", "-H", "connect-content-encoding: gzip",
                  "-H", "connect-protocol-version: 1",
                  "https://api2.cursor.sh/agent.v1.AgentService/RunSSE", "-o", "-"],

                 check=False)
    assert why in r.stdout, (r.stdout, r.stderr)
    req = entries(journal, d, "request")[0]
    assert req["CORDON_RESULT"] == "bad_input" and why in req["CORDON_ERROR"]
    assert d.status()["ok"]


# --- what the review found -------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--http2", "--http1.1"])
def test_a_request_for_another_host_on_an_intercepted_connection_is_refused(intercept, journal, upstreams, flag):
    """SNI api2.cursor.sh, Host evil.example: the request must not reach Cursor under a name
    cordon did not decide on."""
    d, jobs = intercept()
    before = len([e for e in upstreams["standin"].log() if e["event"] == "request"])
    r = jobs.run(["curl", "-sS", flag, "--max-time", "10", "-H", "Host: evil.example", "https://api2.cursor.sh/",
                  "-w", "\n%{http_code}"], check=False)
    assert r.stdout.endswith("403"), r.stdout
    assert "request for evil.example on a connection for api2.cursor.sh" in r.stdout
    assert len([e for e in upstreams["standin"].log() if e["event"] == "request"]) == before


@pytest.mark.parametrize("flag", ["--http2", "--http1.1"])
def test_a_large_unary_upload_goes_through(intercept, journal, tmp_path, flag):
    """Several megabytes in one unary message: held whole (it may be rewritten), forwarded when
    complete, nothing stranded between TLS reads. The message is valid protobuf (one field of
    random bytes, unknown to the schema, so the stand-in skips it), so masking inspects it and
    lets it through."""
    d, jobs = intercept()
    body = tmp_path / "big.bin"
    length = (3 << 20) - 5  # field tag (1 byte) + a 4-byte varint length + the bytes
    varint = bytes([(length & 0x7f) | 0x80, ((length >> 7) & 0x7f) | 0x80, ((length >> 14) & 0x7f) | 0x80,
                    length >> 21])
    body.write_bytes(b"\x7a" + varint + os.urandom(length))  # field 15, length-delimited
    os.chmod(body, 0o644)
    r = jobs.run(["curl", "-sS", flag, "--max-time", "30", "-X", "POST", "--data-binary", f"@{body}",
                  "-H", "content-type: application/proto", "-H", "connect-protocol-version: 1",
                  "https://api2.cursor.sh/aiserver.v1.AiService/AvailableModels", "-o", "/dev/null",
                  "-w", "%{http_code}"], check=False)
    assert r.returncode == 0, r.stderr
    req = entries(journal, d, "request")[0]
    assert req["CORDON_REQ_BYTES"] == str(3 << 20)
    assert r.stdout == "200" and req["CORDON_STATUS"] == "200", (r.stdout, req.get("CORDON_ERROR"))


@pytest.mark.parametrize("flag", ["--http2", "--http1.1"])
def test_a_refused_request_is_journaled_with_the_status_the_client_got(intercept, journal, tmp_path, flag):
    """A unary message that is not the protobuf it claims to be cannot be inspected: it is
    blocked (the default policy), and the journal says so with the client's status."""
    d, jobs = intercept()
    r = jobs.run(["curl", "-sS", flag, "--max-time", "30", "-X", "POST", "--data-binary", "\xff\xff not protobuf",
                  "-H", "content-type: application/proto", "-H", "connect-protocol-version: 1",
                  "https://api2.cursor.sh/aiserver.v1.AiService/AvailableModels", "-w", "\n%{http_code}"],
                 check=False)
    assert r.returncode == 0, r.stderr
    assert "cannot inspect the request" in r.stdout, r.stdout
    req = entries(journal, d, "request")[0]
    assert req["CORDON_STATUS"] == r.stdout.rsplit("\n", 1)[1] != "200"
    assert req["CORDON_RESULT"] == "bad_input" and "cannot inspect" in req["CORDON_ERROR"]


def test_grpc_calls_and_trailers_only_errors_pass_intact(intercept, journal):
    d, jobs = intercept()
    events, _ = jobs.client("--protocol", "grpc", "models")
    assert any(e["event"] == "response" for e in events), events
    # The stand-in refuses an append without a request id: a gRPC trailers-only error.
    events, p = jobs.client("--protocol", "grpc", "append", "--request-id", "", "--seqno", "0", "--message", "{}",
                            check=False)
    errors = [e for e in events if e["event"] == "error"]
    # The server's own status, not a cordon-made "internal" error.
    assert errors and errors[0]["code"] == "invalid_argument", (events, p.stdout, p.stderr)


# --- limits (issue #8): each configurable, each a clear answer when hit ---------------------------

@pytest.mark.parametrize("flag", ["--http1.1", "--http2"])
def test_a_header_block_over_max_header_bytes_is_refused_and_never_reaches_cursor(intercept, upstreams, flag):
    d, jobs = intercept(tls_extra="  max_header_bytes: 4096\n")
    before = len(upstreams["standin"].requests("/"))
    small = jobs.run(["curl", "-sS", flag, "--max-time", "10", "-H", "X-Pad: " + "a" * 2000,
                      "https://api2.cursor.sh/"])
    assert small.stdout.startswith("hello from the api2.cursor.sh stand-in"), small
    big = jobs.run(["curl", "-sS", flag, "--max-time", "10", "-w", "\n%{http_code}", "-H", "X-Pad: " + "a" * 6000,
                    "https://api2.cursor.sh/"], check=False)
    if flag == "--http1.1":
        # HTTP/1.1 has a status for it, and the body names the setting.
        assert big.returncode == 0 and big.stdout.endswith("\n431"), big
        assert "tls.max_header_bytes (4096)" in big.stdout
    else:
        # HTTP/2: the limit is advertised (SETTINGS_MAX_HEADER_LIST_SIZE); over it the stream is
        # reset and curl says so, the connection's other streams unharmed.
        assert big.returncode != 0 and "HTTP/2" in big.stderr, big
    assert len(upstreams["standin"].requests("/")) == before + 1  # only the small one
    assert d.proc.poll() is None


def test_max_streams_per_connection_is_advertised_and_clients_queue_behind_it(intercept):
    d, jobs = intercept(tls_extra="  max_streams_per_connection: 3\n")
    # Node's HTTP/2 client reads cordond's SETTINGS and queues beyond them: eight requests at
    # once on one connection all complete, never more than three in flight.
    r = jobs.run(["node", "-e", """
const h = require('http2').connect('https://api2.cursor.sh');
h.on('remoteSettings', s => {
  const done = [];
  for (let i = 0; i < 8; i++) {
    const r = h.request({':path': '/'});
    let b = ''; r.on('data', c => b += c);
    r.on('end', () => { done.push(b.startsWith('hello')); if (done.length === 8) {
      console.log(JSON.stringify({max: s.maxConcurrentStreams, ok: done.filter(x => x).length})); h.close(); } });
    r.end();
  }
});"""])
    out = json.loads(r.stdout)
    assert out == {"max": 3, "ok": 8}, (out, r.stderr)
