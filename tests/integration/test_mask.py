"""Masking end to end: real Connect clients in an enforced cgroup send secrets to the Cursor
stand-in through cordond, and the stand-in streams secrets back. What the stand-in receives,
what the client receives, what `cordonctl watch` shows and what the journal records must never
hold the secret; the journal says how many were masked and by which rules.
"""
import json
import re
import subprocess
import time

import pytest

from conftest import CORDONCTL
from test_intercept import INTERCEPT_HOSTS, Jobs, entries, tls_yaml, work  # noqa: F401
from test_standin import Standin

# This file's addresses: 127.77.70.0/24.
KEY_IP = "127.77.70.1"  # a stand-in whose answers leak an AWS key id, cut across three deltas
PEM_IP = "127.77.70.2"  # a stand-in whose answers leak a private key, cut across many deltas
CAPTURED = [f"{KEY_IP}/32", f"{PEM_IP}/32"]

AWS_KEY = "AKIAQYLPMN5HFIQR7XYZ"
GITHUB_TOKEN = "ghp_R8fK2mQ9xLpW4vZ7nT1bY6cH3jD0sA5eG2uK"
CHAT = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"


@pytest.fixture(scope="module")
def private_key(work):
    pem = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                         check=True, capture_output=True, text=True).stdout.strip()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    return pem


@pytest.fixture(scope="module")
def leaky(work, private_key):
    servers = {"key": Standin(work, KEY_IP, extra=["--leak-text", AWS_KEY, "--leak-pieces", "3"])}
    try:
        servers["pem"] = Standin(work, PEM_IP, extra=[f"--leak-text={private_key}", "--leak-pieces", "12"])
    except BaseException:
        servers["key"].stop()
        raise
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture
def masked(cgroups, cordond, leaky, work, tmp_path):
    def start(mask_yaml="", typed=True):
        # Cursor's message shapes, as `make install` puts them where the default policy looks.
        # Without them (typed=False) fields are read by the wire format alone.
        tls = tls_yaml(work, extra=f"  descriptors: {work / 'cursor.desc' if typed else '/nonexistent'}\n")
        d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls, extra_yaml=mask_yaml)
        jobs = Jobs(cgroups, d, work, tmp_path)
        jobs.map_hosts(KEY_IP)
        return d, jobs
    return start


def received(standin, path):
    """The messages the stand-in received on its last request to `path`."""
    return [e for e in standin.requests(path)[-1] if e["event"] == "message" and e["direction"] == "received"]


def assert_nowhere(secret, journal, d, *texts):
    for text in texts:
        assert secret not in text
    for e in journal.entries(d.pid):
        assert secret not in json.dumps(e), f"the journal holds the secret: {e}"


def test_a_key_in_an_attached_code_chunk_arrives_masked(masked, leaky, journal):
    d, jobs = masked()
    events, _ = jobs.client("chat", "--prompt", "what does this do?",
                            "--file", f"deploy/aws.env=AWS_ACCESS_KEY_ID={AWS_KEY}\nREGION=eu-west-1\n")
    sent = [e for e in events if e["event"] == "sent"]
    assert AWS_KEY in json.dumps(sent), "the client did send the key"
    got = json.dumps(received(leaky["key"], CHAT))
    assert "[MASKED:aws-access-key-id]" in got and "REGION=eu-west-1" in got
    req = entries(journal, d, "request")[0]
    # The client puts the file in two places (an attached chunk and the current file).
    copies = json.dumps(sent[0]["json"]).count(AWS_KEY)
    assert copies == 2 and got.count("[MASKED:aws-access-key-id]") == copies
    assert int(req["CORDON_MASKED"]) == copies and req["CORDON_MASK_RULES"] == "aws-access-key-id"
    assert req["CORDON_RESULT"] == "ok"
    assert_nowhere(AWS_KEY, journal, d, got, d.log_text())


def test_a_token_inside_a_bidi_append_hex_payload_arrives_masked(masked, leaky, journal):
    d, jobs = masked()
    events, _ = jobs.client("run-sse", "--prompt", "deploy it", "--file", f"ci/env.sh=export GITHUB_TOKEN={GITHUB_TOKEN}\n",
                            http="1.1")
    assert [e for e in events if e["event"] == "recv"]
    appends = [m for r in leaky["key"].requests("/aiserver.v1.BidiService/BidiAppend") for m in r
               if m["event"] == "message" and m["direction"] == "received"]
    inner = json.dumps([m.get("inner") for m in appends])
    assert "[MASKED:github-pat]" in inner, inner[:2000]
    raw = json.dumps(appends)
    assert GITHUB_TOKEN not in raw and GITHUB_TOKEN.encode().hex() not in raw
    reqs = entries(journal, d, "request", count=2, CORDON_RPC="aiserver.v1.BidiService/BidiAppend")
    assert any("github-pat" in r.get("CORDON_MASK_RULES", "") for r in reqs)
    assert_nowhere(GITHUB_TOKEN, journal, d, d.log_text())


def test_a_key_streamed_back_across_messages_is_masked_before_the_client(masked, leaky, journal):
    d, jobs = masked()
    watch = subprocess.Popen([str(CORDONCTL), "--socket", d.socket, "watch", "--json", "--seconds", "20"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = watch.stdout.readline()  # subscribed before the chat starts
        assert '"watching"' in first, first + watch.stderr.read()
        events, _ = jobs.client("chat", "--prompt", "please leak a key")
        time.sleep(0.5)
    finally:
        watch.terminate()
    watched = first + watch.communicate(timeout=20)[0]
    # The stand-in sent the key cut across messages: no single message held all of it.
    sent = [e for e in leaky["key"].requests(CHAT)[-1] if e["event"] == "message" and e["direction"] == "sent"]
    assert sent and all(AWS_KEY not in json.dumps(m) for m in sent), "the key was not split"
    text = "".join(e["json"].get("streamUnifiedChatResponse", {}).get("text", "")
                   for e in events if e["event"] == "recv")
    assert "Here is a key: [MASKED:aws-access-key-id]" in text, text
    assert "[MASKED:aws-access-key-id]" in watched
    req = entries(journal, d, "request")[0]
    assert int(req["CORDON_MASKED"]) == 1 and req["CORDON_MASK_RULES"] == "aws-access-key-id"
    assert_nowhere(AWS_KEY, journal, d, text, watched, d.log_text())
    for piece in (AWS_KEY[:8], AWS_KEY[8:14], AWS_KEY[14:]):
        assert piece not in text


def test_a_key_streamed_back_over_the_http1_sse_fallback_is_masked(masked, leaky, journal):
    d, jobs = masked()
    events, _ = jobs.client("run-sse", "--prompt", "leak it over SSE", http="1.1")
    text = "".join(json.dumps(e["json"]) for e in events if e["event"] == "recv")
    assert "[MASKED:aws-access-key-id]" in text and AWS_KEY[:8] not in text, text
    reqs = entries(journal, d, "request", count=2)
    sse = [r for r in reqs if r.get("CORDON_RPC") == "agent.v1.AgentService/RunSSE"]
    assert sse and sse[0]["CORDON_PROTO"] == "sse" and sse[0]["CORDON_MASKED"] == "1"
    assert_nowhere(AWS_KEY, journal, d, d.log_text())


@pytest.mark.parametrize("typed", [True, False])
def test_a_private_key_streamed_back_is_masked_whole(masked, leaky, journal, private_key, typed):
    d, jobs = masked(typed=typed)
    jobs.map_hosts(PEM_IP)
    events, _ = jobs.client("chat", "--prompt", "leak your key")
    text = "".join(e["json"].get("streamUnifiedChatResponse", {}).get("text", "")
                   for e in events if e["event"] == "recv")
    assert re.search(r"Here is a key: \[MASKED:private-key[a-z0-9-]*\]$", text), text
    body = private_key.splitlines()[1]
    assert body not in text and "BEGIN PRIVATE KEY" not in text
    req = entries(journal, d, "request")[0]
    assert req["CORDON_MASK_RULES"].startswith("private-key") and req["CORDON_MASKED"] == "1"
    assert_nowhere(body, journal, d, d.log_text())


def test_secrets_in_header_values_are_masked_but_cursors_own_credentials_pass(masked, leaky, journal):
    d, jobs = masked()
    events, _ = jobs.client("--header", f"x-debug-token: {GITHUB_TOKEN}", "rest", "--path", "/v0/me", "--bearer",
                            "crsr_test_key", base_url="https://api.cursor.com")
    assert any(e.get("status") == 200 for e in events if e["event"] == "response"), events
    request = [e for e in leaky["key"].log() if e["event"] == "request" and e["path"] == "/v0/me"][-1]
    headers = request["headers"]
    assert headers["x-debug-token"] == "[MASKED:github-pat]"
    assert headers["authorization"] == "Bearer crsr_test_key", "the job's Cursor credential is exempt"
    assert int(entries(journal, d, "request")[0]["CORDON_MASKED"]) == 1


def test_masking_off_lets_the_secret_through(masked, leaky, journal):
    """The control for the tests above: the same request with masking off reaches the stand-in
    unmasked (so the tests above can fail)."""
    d, jobs = masked("mask:\n  enabled: false\n")
    jobs.client("chat", "--prompt", "hi", "--file", f"a.env=KEY={AWS_KEY}\n")
    assert AWS_KEY in json.dumps(received(leaky["key"], CHAT))
    assert "CORDON_MASKED" not in entries(journal, d, "request")[0]


def test_a_policy_rule_and_allowlist_apply(masked, leaky, journal):
    d, jobs = masked("mask:\n"
                     "  rules:\n"
                     "    - id: acme-internal-token\n"
                     "      regex: 'acme_tok_[0-9a-f]{16}'\n"
                     "  allowlist: ['AKIAQYLPMN5HFIQR7XYZ']\n")
    jobs.client("chat", "--prompt", "hi", "--file", f"a.env=T=acme_tok_0123456789abcdef\nK={AWS_KEY}\n")
    got = json.dumps(received(leaky["key"], CHAT))
    assert "[MASKED:acme-internal-token]" in got and "acme_tok_0123456789abcdef" not in got
    assert AWS_KEY in got, "allowlisted"
    assert entries(journal, d, "request")[0]["CORDON_MASK_RULES"] == "acme-internal-token"


def test_a_broken_policy_rule_is_an_error_with_its_line(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("mask:\n  rules:\n    - id: broken\n      regex: 'abc(['\n")
    r = subprocess.run([str(CORDONCTL).replace("cordonctl", "cordond"), "--config", str(policy), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{policy}:4:" in r.stderr and "regex" in r.stderr, r.stderr
