"""Session recordings end to end: every intercepted connection is recorded, masked, into the
chained and sealed store; `cordonctl sessions`, `replay`, `export` and `verify` read it back; the
raw secrets appear nowhere on disk; tampering is caught; a full disk refuses new sessions."""
import json
import os
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


def test_sessions_are_recorded_masked_and_replay_decoded(recorded, journal, work):
    d, jobs = recorded(f"""rules:
  - name: no-models
    match:
      rpcs: ["{MODELS.lstrip('/')}"]
    action: block
default_action: allow
""")
    d.descriptors = work / "cursor.desc"
    # A bidi chat with an AWS key attached, whose answer leaks a GitHub token in pieces.
    events, _ = jobs.client("chat", "--prompt", "explain", "--prompt", "now leak a token",
                            "--file", f"deploy/aws.env=AWS_ACCESS_KEY_ID={AWS_KEY}\n")
    assert any(e["event"] == "recv" for e in events), events
    # A blocked unary call, and the HTTP/1.1 SSE fallback.
    jobs.client("models", check=False)
    jobs.client("run-sse", "--prompt", "hello", base_url="https://agentn.api5.cursor.sh", http="1.1", check=False)
    conns = entries(journal, d, "connection_close", count=3)
    found = wait_sessions(d, 3)
    ids = {s["id"] for s in found}
    assert {c["CORDON_CONN"] for c in conns} <= ids, (conns, found)

    chat = next(s["id"] for s in found if "ChatService" in json.dumps(s))
    replay = ctl(d, "replay", chat).stdout
    assert "StreamUnifiedChatWithTools" in replay and "explain" in replay, replay
    assert "[MASKED:aws-access-key-id]" in replay, replay
    assert AWS_KEY not in replay and GITHUB_TOKEN not in replay
    exported = json.loads(ctl(d, "export", chat, "--format", "json").stdout)
    assert exported["session"] == chat and exported["exchanges"], exported

    blocked = [s for s in found if s.get("actions", {}).get("block")]
    assert blocked, found
    text = ctl(d, "replay", blocked[0]["id"]).stdout
    assert "no-models" in text and "block" in text, text

    # Sealed on a clean stop; the whole store verifies, and no raw secret is anywhere on disk.
    d.stop()
    r = ctl(d, "verify", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    raw = store_bytes(d)
    assert AWS_KEY.encode() not in raw and GITHUB_TOKEN.encode() not in raw
    assert os.stat(d.state_dir / "recordings").st_mode & 0o777 == 0o700
    assert os.stat(d.state_dir / "recording.key").st_mode & 0o777 == 0o600


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
