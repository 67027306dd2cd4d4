"""Session recordings end to end: every intercepted connection is recorded, masked, into the
chained and sealed store; `cordonctl sessions`, `replay`, `export` and `verify` read it back (unary,
server streaming, bidi, the HTTP/1.1 SSE fallback, blocked, approved and denied); the raw secrets
appear nowhere on disk or in the journal; tampering is caught; a full disk refuses new sessions."""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import CORDONCTL
from test_intercept import INTERCEPT_HOSTS, Jobs, entries, tls_yaml, work  # noqa: F401
from test_standin import Standin

# This file's addresses: 127.77.100.0/24.
STANDIN_IP = "127.77.100.1"
CAPTURED = [f"{STANDIN_IP}/32"]
AWS_KEY = "AKIAQYLPMN5HFIQR7XYZ"
GITHUB_TOKEN = "ghp_R8fK2mQ9xLpW4vZ7nT1bY6cH3jD0sA5eG2uK"
MODELS = "/aiserver.v1.AiService/AvailableModels"


@pytest.fixture(scope="module")
def standin(work):
    s = Standin(work, STANDIN_IP, extra=("--leak-text", GITHUB_TOKEN, "--leak-pieces", "3"))
    yield s
    s.stop()


@pytest.fixture
def recorded(cgroups, cordond, standin, work, tmp_path):
    def start(extra_yaml="default_action: allow\n"):
        tls = tls_yaml(work, extra=f"  descriptors: {work / 'cursor.desc'}\n")
        d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls, extra_yaml=extra_yaml)
        jobs = Jobs(cgroups, d, work, tmp_path)
        jobs.map_hosts(STANDIN_IP)
        return d, jobs
    return start


def ctl(d, *args, check=True):
    return d.ctl("--state-dir", str(d.state_dir), "--descriptors", str(d.descriptors), *args, check=check)


def sessions(d):
    return json.loads(ctl(d, "sessions", "--json").stdout)


def wait_sessions(d, count, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        found = sessions(d)
        found = found["sessions"] if isinstance(found, dict) else found
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def store_bytes(d):
    out = b""
    for root, _, files in os.walk(d.state_dir / "recordings"):
        for f in files:
            out += (open(os.path.join(root, f), "rb")).read()
    return out


FILE_SYNC = "aiserver.v1.RepositoryService/FastUpdateFileV2"


def sessions_of(found, rpc):
    """The ids of the recorded sessions that called `rpc`."""
    ids = [s["id"] for s in found if any(rpc in r for r in s.get("rpcs", []))]
    assert ids, (rpc, found)
    return ids


def journal_bytes(journal, d):
    """Every field of every journal entry of this cordond's lifetime, as journald stores them."""
    args = ["journalctl", "--no-pager", "-o", "export", f"_PID={d.pid}", f"--since=@{journal._since(d.pid):.3f}"]
    return subprocess.run(args, capture_output=True, check=True).stdout


def assert_no_raw_secret(journal, d, *secrets):
    raw, logged = store_bytes(d), journal_bytes(journal, d)
    assert b"CORDON_EVENT=request" in logged and b"CORDON_EVENT=connection_close" in logged, logged[-2000:]
    for secret in secrets:
        assert secret.encode() not in raw, f"{secret} is in the recordings"
        assert secret.encode() not in logged, f"{secret} is in the journal"
        assert secret.encode() not in d.log_path.read_bytes(), f"{secret} is in cordond's output"


def test_sessions_are_recorded_masked_and_replay_decoded(recorded, journal, work):
    d, jobs = recorded(f"""rules:
  - name: no-file-sync
    match:
      rpcs: ["{FILE_SYNC}"]
    action: block
default_action: allow
""")
    d.descriptors = work / "cursor.desc"
    # A unary call, and a server-streaming one.
    events, _ = jobs.client("models", "--body", '{"isNightly": true}')
    assert any(e["event"] == "response" for e in events), events
    events, _ = jobs.client("server-stream", "--body",
                            '{"currentFile": {"relativeWorkspacePath": "src/fib.c", "contents": "int fib(int n) {"}}')
    assert [e for e in events if e["event"] == "done"][0]["received"] == 4, events
    # A bidi chat with an AWS key attached, whose answer leaks a GitHub token in pieces.
    events, _ = jobs.client("chat", "--prompt", "explain", "--prompt", "now leak a token",
                            "--file", f"deploy/aws.env=AWS_ACCESS_KEY_ID={AWS_KEY}\n")
    assert any(e["event"] == "recv" for e in events), events
    # A blocked unary call, and the HTTP/1.1 SSE fallback (its appends carry the key too).
    events, _ = jobs.client("unary", "--method", FILE_SYNC, "--body",
                            '{"relativeWorkspacePath": "db/schema.sql", "contents": "DROP TABLE users;"}', check=False)
    assert [e for e in events if e["event"] == "error"][0]["code"] == "permission_denied", events
    events, _ = jobs.client("run-sse", "--prompt", "hello over sse", "--file",
                            f"deploy/aws.env=AWS_ACCESS_KEY_ID={AWS_KEY}\n", base_url="https://agentn.api5.cursor.sh",
                            http="1.1")
    assert [e for e in events if e["event"] == "done"], events
    # Six connections: RunSSE and its BidiAppends go over two.
    conns = entries(journal, d, "connection_close", count=6)
    found = wait_sessions(d, 6)
    ids = {s["id"] for s in found}
    assert {c["CORDON_CONN"] for c in conns} <= ids, (conns, found)

    def replay(rpc):
        text = "".join(ctl(d, "replay", id).stdout for id in sessions_of(found, rpc))
        assert rpc in text, text
        assert AWS_KEY not in text and GITHUB_TOKEN not in text, text
        return text

    # Unary: the request as sent, Cursor's answer, the default decision.
    text = replay(MODELS.lstrip("/"))
    assert '{"is_nightly":true}' in text, text
    assert "claude-4-sonnet" in text and "decision: rule 'default' → allow" in text, text
    # Server streaming: the request, then every streamed message to the end.
    text = replay("StreamCpp")
    assert "src/fib.c" in text and "int fib(int n) {" in text, text
    assert "// completion for src/fib.c" in text and "return 42;" in text, text
    # Bidi: both prompts, the attached file masked, the answer's leaked token masked.
    text = replay("StreamUnifiedChatWithTools")
    assert "explain" in text and "now leak a token" in text and "Stand-in reply" in text, text
    assert "[MASKED:aws-access-key-id]" in text, text
    assert "[MASKED:" in text.split("now leak a token", 1)[1], text
    chat = sessions_of(found, "StreamUnifiedChatWithTools")[0]
    exported = json.loads(ctl(d, "export", chat, "--format", "json").stdout)
    assert exported["session"] == chat and exported["exchanges"], exported
    # Blocked: the rule and its action, and nothing from Cursor.
    text = replay(FILE_SYNC)
    assert "decision: rule 'no-file-sync' → block" in text, text
    assert "end: refused (cordon: blocked by policy rule 'no-file-sync')" in text and "← " not in text, text
    blocked = [s for s in found if s.get("actions", {}).get("block")]
    assert [s["id"] for s in blocked] == sessions_of(found, FILE_SYNC), found
    # The SSE fallback: the prompt in the appended client messages (decoded from their hex, the
    # key masked), the answer streamed back over the event stream.
    text = replay("BidiAppend")
    assert "hello over sse" in text and "[MASKED:aws-access-key-id]" in text and "shell_result" in text, text
    text = replay("RunSSE")
    assert "(sse)" in text and "you said" in text and "turn_ended" in text, text

    # Sealed on a clean stop; the whole store verifies, and no raw secret is on disk or in the journal.
    d.stop()
    r = ctl(d, "verify", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_no_raw_secret(journal, d, AWS_KEY, GITHUB_TOKEN)
    assert os.stat(d.state_dir / "recordings").st_mode & 0o777 == 0o700
    assert os.stat(d.state_dir / "recording.key").st_mode & 0o777 == 0o600


APPROVALS = rf"""approvals:
  timeout_seconds: 60
rules:
  - name: approve-rm-rf
    match:
      direction: response
      content:
        - field: exec_server_message.shell_args.command
          regex: 'rm\s+-rf\s+/'
    action: approve
  - name: approve-schema-changes
    match:
      rpcs: ["{FILE_SYNC}"]
      direction: request
      content:
        - field: contents
          regex: 'DROP TABLE'
    action: approve
default_action: allow
"""


def wait_pending(d, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        pending = json.loads(d.ctl("approvals", "--json").stdout)["pending"]
        if pending:
            return pending[0]
        assert time.monotonic() < deadline, f"no pending approval:\n{d.log_text()[-3000:]}"
        time.sleep(0.1)


def finish(p):
    out, _ = p.communicate(timeout=60)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_approved_and_denied_sessions_replay_with_the_approval(recorded, journal, work):
    d, jobs = recorded(APPROVALS)
    d.descriptors = work / "cursor.desc"
    # An agent run whose exec message waits for a person, who approves it.
    p = jobs.spawn_client("run", "--prompt", "please rm -rf / now", "--file",
                          f"deploy/aws.env=AWS_ACCESS_KEY_ID={AWS_KEY}\n", base_url="https://agentn.api5.cursor.sh")
    approved = wait_pending(d)
    assert approved["rule"] == "approve-rm-rf", approved
    d.ctl("approve", approved["id"])
    events = finish(p)
    assert [e for e in events if e["event"] == "done"], events
    # A file sync whose message waits too (a token in it), and is denied.
    p = jobs.spawn_client("unary", "--method", FILE_SYNC, "--body", json.dumps(
        {"relativeWorkspacePath": "db/schema.sql", "contents": f"DROP TABLE users; -- {GITHUB_TOKEN}"}))
    denied = wait_pending(d)
    assert denied["rule"] == "approve-schema-changes", denied
    assert "DROP TABLE users; -- [MASKED:github-pat]" in denied["excerpt"], denied
    d.ctl("deny", denied["id"])
    events = finish(p)
    assert [e for e in events if e["event"] == "error"][0]["code"] == "permission_denied", events
    entries(journal, d, "connection_close", count=2)
    found = wait_sessions(d, 2)

    run = ctl(d, "replay", sessions_of(found, "AgentService/Run")[0]).stdout
    assert "agent.v1.AgentService/Run" in run and "please rm -rf / now" in run, run
    assert "[MASKED:aws-access-key-id]" in run and '"command": "rm -rf /"' in run, run
    # The decision where it was made, on the held message, with when it was answered.
    assert re.search(rf"decision: rule 'approve-rm-rf' → approve on ← #\d+ \(approval {approved['id']} "
                     r"approved by root.* at \+[\d.]+ m?s, after ", run), run
    assert "shell_result" in run and "turn_ended" in run, run
    sync = ctl(d, "replay", sessions_of(found, FILE_SYNC)[0]).stdout
    assert FILE_SYNC in sync, sync
    assert re.search(rf"decision: rule 'approve-schema-changes' → approve on → #0 \(approval {denied['id']} "
                     r"denied by root.* at ", sync), sync
    assert "that message is recorded as the job sent it; it was never forwarded" in sync, sync
    assert "end: refused (cordon: denied by root" in sync, sync
    for text in (run, sync):
        assert AWS_KEY not in text and GITHUB_TOKEN not in text, text

    # The held messages' excerpts reached the journal masked; no raw secret is anywhere.
    excerpts = [e["CORDON_EXCERPT"] for e in entries(journal, d, "approval", count=2, CORDON_APPROVAL="pending")]
    assert any("[MASKED:github-pat]" in e for e in excerpts), excerpts
    d.stop()
    assert_no_raw_secret(journal, d, AWS_KEY, GITHUB_TOKEN)
    r = ctl(d, "verify", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def verify_results(store):
    """The CORDON_RESULT of every `cordonctl verify` journaled for `store`."""
    out = subprocess.run(["journalctl", "--no-pager", "-o", "json", "SYSLOG_IDENTIFIER=cordonctl",
                          "CORDON_EVENT=recording_verify", f"CORDON_RECORDINGS={store}"],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line)["CORDON_RESULT"] for line in out.splitlines() if line.strip()]


def test_an_edited_or_deleted_segment_is_named_by_verify(recorded, journal, work):
    d, jobs = recorded()
    d.descriptors = work / "cursor.desc"
    jobs.client("models")
    entries(journal, d, "connection_close")
    d.stop()
    d.start()  # a second segment, chained to the first
    jobs.client("models")
    entries(journal, d, "connection_close")  # the new cordond's (entries are per process)
    d.stop()
    assert ctl(d, "verify", check=False).returncode == 0
    segments = sorted((d.state_dir / "recordings").glob("segment-*.rec"))
    assert len(segments) >= 2, segments
    first = segments[0]
    original = first.read_bytes()
    # One flipped byte in the middle of the first segment.
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    first.write_bytes(bytes(flipped))
    r = ctl(d, "verify", check=False)
    assert r.returncode == 1 and first.name in r.stdout + r.stderr, r.stdout + r.stderr
    # The whole first segment deleted.
    first.unlink()
    r = ctl(d, "verify", check=False)
    assert r.returncode == 1 and "missing" in r.stdout + r.stderr, r.stdout + r.stderr
    first.write_bytes(original)
    os.chmod(first, 0o600)
    assert ctl(d, "verify", check=False).returncode == 0

    # The newest segment deleted: the chain alone cannot tell (it looks like a shorter store),
    # but cordond journaled every segment it started and sealed.
    sealed = entries(journal, d, "recording_segment", CORDON_SEGMENT_STATE="sealed")
    newest = segments[-1]
    assert sealed[-1]["CORDON_SEGMENT"] == newest.name, sealed
    assert sealed[-1]["CORDON_RECORDINGS"] == str((d.state_dir / "recordings").resolve()), sealed
    kept = newest.read_bytes()
    newest.unlink()
    assert ctl(d, "verify", "--no-journal", check=False).returncode == 0
    r = ctl(d, "verify", check=False)
    assert r.returncode == 1 and f"{newest.name} is missing" in r.stdout and "journal" in r.stdout, r.stdout
    newest.write_bytes(kept)
    os.chmod(newest, 0o600)
    r = ctl(d, "verify", check=False)
    assert r.returncode == 0 and "the journal witnessed" in r.stdout, r.stdout
    # Each verify is journaled by cordonctl, with its finding.
    store = (d.state_dir / "recordings").resolve()
    results = verify_results(store)
    deadline = time.monotonic() + 10
    while results.count("tampered") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        results = verify_results(store)
    assert results.count("tampered") == 3 and "ok" in results, results


def test_two_hundred_parallel_sessions_all_verify(recorded, journal, work):
    d, jobs = recorded()
    d.descriptors = work / "cursor.desc"
    r = jobs.run(["sh", "-c", "seq 200 | xargs -P 40 -I{} curl -sS --http1.1 -o /dev/null --max-time 30 "
                  "https://api2.cursor.sh/"], timeout=180)
    assert r.returncode == 0, r.stderr
    found = wait_sessions(d, 200, timeout=30)
    assert len(found) >= 200
    d.stop()
    r = ctl(d, "verify", check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs for the recordings: filled by the test, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_refuses_new_sessions_and_what_was_written_verifies(recorded, journal, work, small_disk):
    d, jobs = recorded(f"recording:\n  dir: {small_disk / 'recordings'}\n  sync_ms: 100\ndefault_action: allow\n")
    d.descriptors = work / "cursor.desc"
    events, _ = jobs.client("models")
    assert any(e["event"] == "response" for e in events)
    # Fill the disk behind cordond's back, leaving room for nothing.
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=4k"], capture_output=True)
    # Traffic until a write fails (each request is a few hundred bytes of records).
    refused = None
    for _ in range(50):
        events, _ = jobs.client("chat", "--prompt", "x" * 4000, check=False)
        err = [e for e in events if e["event"] == "error"]
        if err and "recording is failing" in err[0]["message"]:
            refused = err[0]
            break
        time.sleep(0.1)
    assert refused and refused["code"] == "unavailable", events
    failure = entries(journal, d, "recording_failure")[0]
    assert "No space left on device" in failure["CORDON_ERROR"], failure
    d.stop()
    r = d.ctl("--state-dir", str(d.state_dir), "--recordings", str(small_disk / "recordings"), "verify", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
