"""The Cursor stand-in (tests/standin) on its own, without cordond: a real Connect client
(tests/standin/client.mjs) against the stand-in, over HTTP/2 and HTTP/1.1, with Cursor's host names
mapped by a private mount namespace over /etc/hosts and trust coming only from
NODE_EXTRA_CA_CERTS. Checks what each RPC answers and that the stand-in's log holds every message
byte for byte as the client sent it.
"""
import base64
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STANDIN_DIR = ROOT / "tests" / "standin"
STANDIN = STANDIN_DIR / "standin.mjs"
CLIENT = STANDIN_DIR / "client.mjs"
MAKE_CERTS = STANDIN_DIR / "make-certs.sh"
CURSOR_HOSTS = ("api2.cursor.sh", "agentn.api5.cursor.sh", "repo42.cursor.sh", "api.cursor.com")
# This file's addresses: 127.77.200.0/24 only.
BASE_OCTET = 10 + os.getpid() % 200


@pytest.fixture(scope="session", autouse=True)
def _root_and_build():
    """Overrides conftest's session check: the stand-in needs root (port 443, mount namespaces)
    but not cordond."""
    if os.geteuid() != 0:
        pytest.fail("the stand-in tests bind port 443 and use mount namespaces: run them as root")
    yield


class Standin:
    """A running stand-in: its address, log, certificates and a client that sees Cursor's names
    at that address."""

    def __init__(self, work, ip, cert="standin", extra=()):
        self.work = work
        self.ip = ip
        self.log_path = work / f"standin-{ip}.jsonl"
        self.out_path = work / f"standin-{ip}.out"
        self.hosts = work / f"hosts-{ip}"
        self.hosts.write_text("127.0.0.1 localhost\n" + f"{ip} {' '.join(CURSOR_HOSTS)}\n")
        self.ca = work / "certs" / "ca.pem"
        self.desc = work / "cursor.desc"
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                ["node", str(STANDIN), "--host", ip, "--port", "443", "--cert", str(work / "certs" / f"{cert}.pem"),
                 "--key", str(work / "certs" / f"{cert}.key"), "--log", str(self.log_path),
                 "--descriptors", str(self.desc), "--delay-ms", "10", *extra],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while b"listening" not in self.out_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the stand-in did not start:\n{self.out_path.read_text()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, *args, base_url="https://api2.cursor.sh", http="2", check=True, timeout=60):
        """Runs client.mjs in a private mount namespace whose /etc/hosts maps Cursor's names here.
        Returns (events, completed process)."""
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(self.ca))
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts),
                "node", str(CLIENT), "--base-url", base_url, "--http", http, "--descriptors", str(self.desc),
                *map(str, args)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        events = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
        if check and p.returncode != 0:
            raise AssertionError(f"client {args} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
                                 f"\nstand-in: {self.out_path.read_text()}")
        return events, p

    def log(self):
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def requests(self, path):
        """Log lines grouped by request, for requests to `path`, in arrival order."""
        lines = self.log()
        ids = [e["id"] for e in lines if e["event"] == "request" and e["path"] == path]
        return [[e for e in lines if e.get("id") == i] for i in ids]


@pytest.fixture(scope="module")
def work():
    if shutil.which("node") is None:
        pytest.fail("node is missing: run scripts/install-deps.sh")
    # The pinned npm packages (tests/standin/package-lock.json); a no-op when installed.
    subprocess.run(["make", "--no-print-directory", "standin"], cwd=ROOT, check=True, capture_output=True)
    d = pathlib.Path(tempfile.mkdtemp(prefix="cordon-standin-"))
    os.chmod(d, 0o755)
    subprocess.run([str(MAKE_CERTS), str(d / "certs")], check=True, capture_output=True)
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "cursor").rglob("*.proto"))
    subprocess.run(["protoc", "-Iproto", "--include_imports", f"--descriptor_set_out={d / 'cursor.desc'}", *protos],
                   cwd=ROOT, check=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def standin(work):
    s = Standin(work, f"127.77.200.{BASE_OCTET}")
    yield s
    s.stop()


def of(events, name):
    return [e for e in events if e["event"] == name]


def messages(lines, direction):
    return [e for e in lines if e["event"] == "message" and e["direction"] == direction and "index" in e]


def one(lines, event):
    found = [e for e in lines if e["event"] == event]
    assert len(found) == 1, f"expected one {event} in {lines}"
    return found[0]


HTTP = [pytest.param("2", id="h2"), pytest.param("1.1", id="h1")]


@pytest.mark.parametrize("http", HTTP)
def test_get_root(standin, http):
    events, _ = standin.client("rest", "--path", "/", http=http)
    res = one(events, "response")
    assert res["status"] == 200
    assert "stand-in" in res["body"]
    req = one(standin.requests("/")[-1], "request")
    assert req["http"] == ("2.0" if http == "2" else "1.1")
    assert req["host"] == "api2.cursor.sh" and req["sni"] == "api2.cursor.sh"
    assert req["method"] == "GET" and req["rpc"] is None
    ip, port = req["peer"].rsplit(":", 1)
    assert ip.startswith("127.") and int(port) > 0
    assert req["local"] == f"{standin.ip}:443"


@pytest.mark.parametrize("codec", ["proto", "json"])
@pytest.mark.parametrize("http", HTTP)
def test_unary(standin, http, codec):
    body = {"isNightly": True, "includeLongContextModels": True}
    events, _ = standin.client("models", "--codec", codec, "--body", json.dumps(body), http=http)
    sent, res = one(events, "sent"), one(events, "response")
    assert res["json"]["modelNames"] == ["claude-4-sonnet", "gpt-5", "cursor-small"]
    assert res["headers"]["content-type"] == f"application/{codec}"
    assert res["headers"]["content-encoding"] == "gzip"

    lines = standin.requests("/aiserver.v1.AiService/AvailableModels")[-1]
    req = one(lines, "request")
    assert req["rpc"] == "aiserver.v1.AiService/AvailableModels" and req["method_kind"] == "unary"
    assert req["headers"]["content-type"] == f"application/{codec}"
    assert req["headers"]["x-cursor-client-type"] == "cli"
    [got] = messages(lines, "received")
    assert got["codec"] == codec and got["compressed"] and got["encoding"] == "gzip"
    assert got["raw_base64"] == sent["raw_base64"]  # byte for byte, after decompression
    assert got["type"] == "aiserver.v1.AvailableModelsRequest"
    assert got["json"] == body
    [answer] = messages(lines, "sent")
    assert answer["json"] == res["json"]
    assert one(lines, "response_end")["messages"] == 1


@pytest.mark.parametrize("http", HTTP)
def test_server_streaming(standin, http):
    body = {"currentFile": {"relativeWorkspacePath": "src/app.py", "contents": "TOKEN = 'abc'\n"}}
    events, _ = standin.client("server-stream", "--body", json.dumps(body), http=http)
    recv = of(events, "recv")
    assert [e["json"].get("text") for e in recv][:3] == ["// completion for src/app.py", "\n", "return 42;"]
    assert recv[-1]["json"] == {"doneStream": True}
    headers = one(events, "headers")
    # On HTTP/1.1 Cursor labels streams text/event-stream although they hold Connect envelopes.
    assert headers["wire_content_type"] == ("application/connect+proto" if http == "2" else "text/event-stream")

    lines = standin.requests("/aiserver.v1.AiService/StreamCpp")[-1]
    [got] = messages(lines, "received")
    assert got["raw_base64"] == one(events, "sent")["raw_base64"]
    assert got["flags"] == 1 and got["encoding"] == "gzip"
    resp = one(lines, "response")
    assert resp["headers"]["content-type"] == ("application/connect+proto" if http == "2" else "text/event-stream")
    assert resp["wire_content_type"] == "application/connect+proto"
    sent = messages(lines, "sent")
    assert [m["json"] for m in sent] == [e["json"] for e in recv]
    assert all(m["flags"] == 1 and m["compressed"] for m in sent)  # gzip, message by message
    end = [e for e in lines if e["event"] == "message" and e.get("end_stream")]
    assert len(end) == 1 and end[0]["json"] == {} and end[0]["direction"] == "sent"


def test_bidi_chat_streams_each_answer_before_the_stream_ends(standin):
    events, _ = standin.client("chat", "--prompt", "hello there", "--prompt", "sk-live-é secret ✓",
                               "--count", "3", "--pause-ms", "400",
                               "--file", "config/settings.py=API_KEY = 'AKIAIOSFODNN7EXAMPLE'")
    sent, recv = of(events, "sent"), of(events, "recv")
    closed = one(events, "closed_send")
    assert len(sent) == 3 and len(recv) >= 3 * 4
    assert recv[0]["json"] == {"streamStart": {}}
    # The first answer came while the request stream was open, before the second message was sent.
    assert recv[0]["t_ms"] < sent[1]["t_ms"] < closed["t_ms"]
    texts = [e["json"]["streamUnifiedChatResponse"].get("text", "") for e in recv if "streamUnifiedChatResponse" in e["json"]]
    assert "sk-live-é secret ✓" in "".join(texts)

    lines = standin.requests("/aiserver.v1.ChatService/StreamUnifiedChatWithTools")[-1]
    req = one(lines, "request")
    assert req["http"] == "2.0" and req["method_kind"] == "bidi_streaming"
    assert req["headers"]["connect-content-encoding"] == "gzip"
    got = messages(lines, "received")
    assert [m["raw_base64"] for m in got] == [m["raw_base64"] for m in sent]
    assert all(m["flags"] == 1 for m in got)
    first = got[0]["json"]["streamUnifiedChatRequest"]
    chunk = first["conversation"][0]["attachedCodeChunks"][0]
    assert chunk == {"relativeWorkspacePath": "config/settings.py", "startLineNumber": 1,
                     "lines": ["API_KEY = 'AKIAIOSFODNN7EXAMPLE'"]}
    assert first["conversation"][0]["type"] == "MESSAGE_TYPE_HUMAN"
    # The stand-in answered before the client's request body ended.
    first_answer = min(e["seq"] for e in messages(lines, "sent"))
    assert first_answer < one(lines, "request_end")["seq"]
    assert one(lines, "request_end")["messages"] == 3


def test_bidi_chat_tool_call(standin):
    events, _ = standin.client("chat", "--prompt", "please run the tests", "--pause-ms", "300",
                               "--exec-stdout", "ok\n")
    calls = [e["json"]["clientSideToolV2Call"] for e in of(events, "recv") if "clientSideToolV2Call" in e["json"]]
    assert len(calls) == 1
    assert calls[0]["tool"] == "CLIENT_SIDE_TOOL_V2_RUN_TERMINAL_COMMAND_V2"
    assert json.loads(calls[0]["rawArgs"])["command"] == "ls -la"
    lines = standin.requests("/aiserver.v1.ChatService/StreamUnifiedChatWithTools")[-1]
    result = messages(lines, "received")[-1]["json"]["clientSideToolV2Result"]
    assert result["runTerminalCommandV2Result"]["output"] == "ok\n"


@pytest.mark.parametrize("prompt,command", [("please rm -rf / now", "rm -rf /"), ("list the files", "ls -la")])
def test_agent_run_with_exec(standin, prompt, command):
    events, _ = standin.client("run", "--prompt", prompt, "--prompt", "and then?",
                               "--file", "secrets.env=DB_PASSWORD=hunter2", "--exec-stdout", "total 0\n",
                               base_url="https://agentn.api5.cursor.sh")
    recv = of(events, "recv")
    execs = [e for e in recv if "execServerMessage" in e["json"]]
    assert len(execs) == 2
    assert execs[0]["json"]["execServerMessage"]["shellArgs"] == {
        "command": command, "workingDirectory": "/workspace", "timeout": 30000, "toolCallId": "toolu_standin_1"}
    kinds = [next(iter(e["json"].get("interactionUpdate", {"exec": 0}))) for e in recv]
    assert kinds[:2] == ["thinking", "textDelta"]
    assert kinds.count("turnEnded") == 2
    # Turn 1's exec message and turn_ended arrived while the request stream was still open.
    assert execs[0]["t_ms"] < one(events, "closed_send")["t_ms"]
    assert any("Stand-in got exec 1 result: success" in e["json"]["interactionUpdate"].get("textDelta", {}).get("text", "")
               for e in recv if "interactionUpdate" in e["json"])

    lines = standin.requests("/agent.v1.AgentService/Run")[-1]
    req = one(lines, "request")
    assert req["host"] == "agentn.api5.cursor.sh" and req["sni"] == "agentn.api5.cursor.sh"
    got = messages(lines, "received")
    assert [m["raw_base64"] for m in got] == [m["raw_base64"] for m in of(events, "sent")]
    user = got[0]["json"]["runRequest"]["action"]["userMessageAction"]["userMessage"]
    assert user["text"] == prompt
    assert user["selectedContext"]["files"] == [{"path": "secrets.env", "content": "DB_PASSWORD=hunter2"}]
    shell = got[1]["json"]["execClientMessage"]
    assert shell["id"] == 1 and shell["shellResult"]["success"]["stdout"] == "total 0\n"
    sent_exec = [m for m in messages(lines, "sent") if "execServerMessage" in (m["json"] or {})]
    assert sent_exec[0]["json"]["execServerMessage"]["shellArgs"]["command"] == command


@pytest.mark.parametrize("binary", [False, True], ids=["hex", "binary"])
def test_run_sse_with_bidi_append_over_http1(standin, binary):
    args = ["run-sse", "--prompt", "please rm -rf / quickly", "--file", "id_rsa=-----BEGIN OPENSSH PRIVATE KEY-----"]
    events, _ = standin.client(*args, *(["--binary"] if binary else []),
                               base_url="https://agentn.api5.cursor.sh", http="1.1")
    assert one(events, "headers")["wire_content_type"] == "text/event-stream"
    recv = of(events, "recv")
    execs = [e for e in recv if "execServerMessage" in e["json"]]
    assert execs[0]["json"]["execServerMessage"]["shellArgs"]["command"] == "rm -rf /"
    assert "turnEnded" in recv[-1]["json"]["interactionUpdate"]
    sent = of(events, "sent")
    assert [e["seqno"] for e in sent] == [0, 1]
    # The exec message reached the client before it sent its result: the stream was not buffered.
    assert execs[0]["t_ms"] < sent[1]["t_ms"] < recv[-1]["t_ms"]
    request_id = one(events, "done")["request_id"]

    sse = standin.requests("/agent.v1.AgentService/RunSSE")[-1]
    assert one(sse, "request")["http"] == "1.1"
    assert one(sse, "response")["headers"]["content-type"] == "text/event-stream"
    assert messages(sse, "received")[0]["json"] == {"requestId": request_id}
    assert [m["json"] for m in messages(sse, "sent")] == [e["json"] for e in recv]

    appends = standin.requests("/aiserver.v1.BidiService/BidiAppend")[-2:]
    for lines, mine in zip(appends, sent):
        assert one(lines, "request")["http"] == "1.1"
        [got] = messages(lines, "received")
        assert got["raw_base64"] == mine["append_raw_base64"]
        assert got["json"]["requestId"] == {"requestId": request_id}
        inner = got["inner"]
        assert inner["source"] == ("data_binary" if binary else "data")
        assert inner["raw_base64"] == mine["raw_base64"]  # the AgentClientMessage, byte for byte
        assert inner["type"] == "agent.v1.AgentClientMessage" and inner["json"] == mine["json"]
        if not binary:
            assert got["json"]["data"] == base64.b64decode(mine["raw_base64"]).hex()
    user = messages(appends[0], "received")[0]["inner"]["json"]["runRequest"]["action"]["userMessageAction"]["userMessage"]
    assert user["selectedContext"]["files"] == [{"path": "id_rsa", "content": "-----BEGIN OPENSSH PRIVATE KEY-----"}]


@pytest.mark.parametrize("http", HTTP)
def test_auth_exchange(standin, http):
    events, _ = standin.client("auth", "--key", "crsr_0123456789abcdef", http=http)
    res = one(events, "response")
    assert res["status"] == 200
    access, refresh = res["json"]["accessToken"], res["json"]["refreshToken"]
    head, claims, sig = access.split(".")
    claims = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert claims["iss"] == "https://authentication.cursor.sh"
    assert claims["exp"] - claims["iat"] == 3600
    assert len(refresh.split(".")) == 3 and refresh != access
    lines = standin.requests("/auth/exchange_user_api_key")[-1]
    assert one(lines, "request")["headers"]["authorization"] == "Bearer crsr_0123456789abcdef"
    [got] = messages(lines, "received")
    assert base64.b64decode(got["raw_base64"]) == b"{}" and got["json"] == {}
    [answer] = messages(lines, "sent")
    assert answer["json"]["accessToken"] == access

    events, _ = standin.client("auth", "--key", "crsr_in_body", "--in-body", http=http)
    assert one(events, "response")["status"] == 200
    events, p = standin.client("auth", "--key", "not-a-cursor-key", http=http, check=False)
    assert one(events, "response")["status"] == 401 and p.returncode == 0


REST_AUTH = [
    pytest.param(["--bearer", "key_cloud_123"], 200, id="bearer"),
    pytest.param(["--basic", "key_cloud_123"], 200, id="basic"),
    pytest.param([], 401, id="none"),
    pytest.param(["--basic-raw", "key_cloud_123:password"], 401, id="basic-with-password"),
]


@pytest.mark.parametrize("http", HTTP)
@pytest.mark.parametrize("auth,status", REST_AUTH)
def test_cloud_agents_rest(standin, http, auth, status):
    fingerprint = hashlib.sha256(b"key_cloud_123").hexdigest()[:16]
    events, _ = standin.client("rest", "--path", "/v0/me", *auth, base_url="https://api.cursor.com", http=http)
    res = one(events, "response")
    assert res["status"] == status
    if status == 200:
        assert res["json"]["keyFingerprint"] == fingerprint
    else:
        assert res["headers"]["www-authenticate"].startswith("Basic")

    body = json.dumps({"prompt": {"text": "fix the flaky test"}, "source": {"repository": "https://github.com/o/r"}})
    events, _ = standin.client("rest", "--path", "/v0/agents", "--body", body, *auth,
                               base_url="https://api.cursor.com", http=http)
    res = one(events, "response")
    assert res["status"] == status
    lines = standin.requests("/v0/agents")[-1]
    assert one(lines, "request")["host"] == "api.cursor.com"
    [got] = messages(lines, "received")
    assert base64.b64decode(got["raw_base64"]) == body.encode()
    if status == 200:
        assert res["json"]["id"].startswith("bc_standin_") and res["json"]["status"] == "CREATING"


def test_append_and_repository_on_other_hosts(standin):
    msg = {"execClientMessage": {"id": 7, "shellResult": {"success": {"stdout": "secret=1\n"}}}}
    events, _ = standin.client("append", "--request-id", "req-unpaired", "--seqno", "0",
                               "--message", json.dumps(msg), "--codec", "json", base_url="https://api2.cursor.sh")
    lines = standin.requests("/aiserver.v1.BidiService/BidiAppend")[-1]
    [got] = messages(lines, "received")
    assert got["codec"] == "json"
    assert got["inner"]["raw_base64"] == one(events, "done")["raw_base64"]
    assert got["inner"]["json"] == msg

    body = {"relativeWorkspacePath": "src/db.py", "contents": "PASSWORD = 'x'\n"}
    events, _ = standin.client("unary", "--method", "aiserver.v1.RepositoryService/FastUpdateFileV2",
                               "--body", json.dumps(body), base_url="https://repo42.cursor.sh")
    assert one(events, "response")["json"] == {"ok": True}
    lines = standin.requests("/aiserver.v1.RepositoryService/FastUpdateFileV2")[-1]
    assert one(lines, "request")["sni"] == "repo42.cursor.sh"
    assert messages(lines, "received")[0]["json"] == body


def test_connect_error_is_logged(standin):
    events, p = standin.client("append", "--request-id", "", "--seqno", "0", "--message", "{}", check=False)
    assert p.returncode == 1
    assert one(events, "error")["code"] == "invalid_argument"
    lines = standin.requests("/aiserver.v1.BidiService/BidiAppend")[-1]
    assert one(lines, "response")["status"] == 400
    [err] = messages(lines, "sent")
    assert err["error"] and err["json"]["code"] == "invalid_argument"


@pytest.mark.parametrize("cert,why", [("wronghost", "altnames"), ("expired", "expired")])
def test_test_certificates_are_refused_by_a_normal_client(work, cert, why):
    s = Standin(work, f"127.77.200.{BASE_OCTET + (1 if cert == 'wronghost' else 2)}", cert=cert)
    try:
        events, p = s.client("models", check=False)
    finally:
        s.stop()
    assert p.returncode == 1
    assert why in one(events, "error")["message"]
    assert not [e for e in s.log() if e["event"] == "request"]


@pytest.mark.parametrize("http", HTTP)
def test_large_messages_split_across_frames(standin, http):
    """A message far larger than an HTTP/2 frame or a TLS record reaches the log intact."""
    content = base64.b64encode(os.urandom(90_000)).decode()
    if http == "2":
        events, _ = standin.client("run", "--prompt", "big file", "--file", f"big.txt={content}",
                                   base_url="https://agentn.api5.cursor.sh")
        got = messages(standin.requests("/agent.v1.AgentService/Run")[-1], "received")[0]
    else:
        events, _ = standin.client("run-sse", "--prompt", "big file", "--file", f"big.txt={content}",
                                   base_url="https://agentn.api5.cursor.sh", http="1.1")
        got = messages(standin.requests("/aiserver.v1.BidiService/BidiAppend")[-2], "received")[0]["inner"]
    sent = of(events, "sent")[0]
    assert got["raw_base64"] == sent["raw_base64"] and got["size"] > 120_000
    user = got["json"]["runRequest"]["action"]["userMessageAction"]["userMessage"]
    assert user["selectedContext"]["files"][0]["content"] == content


def test_require_auth(work):
    s = Standin(work, f"127.77.200.{BASE_OCTET + 3}", extra=["--require-auth"])
    try:
        events, p = s.client("models", check=False)
        assert p.returncode == 1 and one(events, "error")["code"] == "unauthenticated"
        events, _ = s.client("--token", "eyJhbGciOiJIUzI1NiJ9.e30.sig", "models")
        assert one(events, "response")["status"] == 200
        req = [e for e in s.log() if e["event"] == "request"][-1]
        assert req["headers"]["authorization"] == "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"
    finally:
        s.stop()
