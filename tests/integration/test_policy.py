"""Policy rules end to end: a real Connect client in an enforced cgroup, the Cursor stand-in, and
cordond deciding per caller, RPC and message. A block is a protocol-correct refusal that names
the rule, nothing of it reaches the stand-in, and the journal says which rule decided."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CORDOND, CORDONCTL
from test_intercept import INTERCEPT_HOSTS, Jobs, entries, tls_yaml, work  # noqa: F401
from test_standin import Standin

# This file's addresses: 127.77.80.0/24.
STANDIN_IP = "127.77.80.1"
CAPTURED = [f"{STANDIN_IP}/32"]
MODELS = "/aiserver.v1.AiService/AvailableModels"
CHAT = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"


@pytest.fixture(scope="module")
def standin(work):
    s = Standin(work, STANDIN_IP)
    yield s
    s.stop()


@pytest.fixture
def governed(cgroups, cordond, standin, work, tmp_path):
    def start(rules_yaml):
        tls = tls_yaml(work, extra=f"  descriptors: {work / 'cursor.desc'}\n")
        d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls, extra_yaml=rules_yaml)
        jobs = Jobs(cgroups, d, work, tmp_path)
        jobs.map_hosts(STANDIN_IP)
        return d, jobs
    return start


def errors(events):
    return [e for e in events if e["event"] == "error"]


@pytest.mark.parametrize("command,path", [("models", MODELS), ("chat", CHAT)])
def test_a_blocked_rpc_is_refused_by_name_and_never_reaches_cursor(governed, standin, journal, cgroups, command,
                                                                   path):
    d, jobs = governed(f"""rules:
  - name: no-{command}-in-ci
    match:
      cgroups: ["{cgroups.path('job')}*"]
      rpcs: ["{path.lstrip('/')}"]
    action: block
    message: ask the platform team
default_action: allow
""")
    before = len(standin.requests(path))
    args = ["--prompt", "hello"] if command == "chat" else []
    events, r = jobs.client(command, *args, check=False)
    err = errors(events)
    assert err, (events, r.stderr)
    assert err[0]["code"] == "permission_denied"
    assert f"blocked by policy rule 'no-{command}-in-ci': ask the platform team" in err[0]["message"]
    assert len(standin.requests(path)) == before, "the blocked call reached the stand-in"
    req = entries(journal, d, "request")[0]
    assert req["CORDON_RULE"] == f"no-{command}-in-ci" and req["CORDON_ACTION"] == "block"
    assert req["CORDON_RESULT"] == "refused"


def test_rules_decide_by_executable_first_match_wins(governed, journal):
    d, jobs = governed("""rules:
  - name: curl-may-not
    match:
      exes: ["*/curl"]
    action: block
  - name: everything-else
    match: {}
    action: allow
default_action: block
""")
    r = jobs.run(["curl", "-sS", "--max-time", "10", "https://api2.cursor.sh/", "-w", "\n%{http_code}"], check=False)
    assert r.stdout.endswith("\n403"), r.stdout
    assert "blocked by policy rule 'curl-may-not'" in r.stdout
    events, _ = jobs.client("models")
    assert not errors(events) and any(e["event"] == "response" for e in events), events
    reqs = {e["CORDON_COMM"]: e for e in entries(journal, d, "request", count=2)}
    assert reqs["curl"]["CORDON_RULE"] == "curl-may-not" and reqs["curl"]["CORDON_ACTION"] == "block"
    assert reqs["node"]["CORDON_RULE"] == "everything-else" and reqs["node"]["CORDON_ACTION"] == "allow"


def test_a_dangerous_command_from_cursor_is_blocked_before_the_job_sees_it(governed, journal):
    d, jobs = governed(r"""rules:
  - name: no-rm-rf
    match:
      direction: response
      content:
        - field: exec_server_message.shell_args.command
          regex: 'rm\s+-rf\s+/'
    action: block
    message: destructive command
default_action: allow
""")
    events, _ = jobs.client("run", "--prompt", "please rm -rf / now", base_url="https://agentn.api5.cursor.sh",
                            check=False)
    # The stand-in echoes the prompt in text deltas; the exec message itself must never arrive.
    assert not [e for e in events if e["event"] == "recv" and "execServerMessage" in json.dumps(e)], events
    err = errors(events)
    assert err and err[0]["code"] == "permission_denied" and "no-rm-rf" in err[0]["message"], events
    req = entries(journal, d, "request")[0]
    assert req["CORDON_RULE"] == "no-rm-rf" and req["CORDON_ACTION"] == "block"

    # A harmless command passes the same rule.
    events, _ = jobs.client("run", "--prompt", "please run it", base_url="https://agentn.api5.cursor.sh")
    execs = [e for e in events if e["event"] == "recv" and "execServerMessage" in json.dumps(e)]
    assert execs and "ls -la" in json.dumps(execs[0]), events
    reqs = entries(journal, d, "request", count=2)
    assert reqs[1]["CORDON_RULE"] == "default" and reqs[1]["CORDON_ACTION"] == "allow"


def test_a_broken_rule_is_reported_with_file_and_line(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: bad\n    action: block\n    match:\n      content: [{regex: '(unclosed'}]\n")
    for argv in ([str(CORDOND), "--config", str(policy), "--check-config"],
                 [str(CORDONCTL), "policy", "check", str(policy)]):
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode != 0 and f"{policy}:5:" in r.stderr, (argv, r.stderr)


def test_policy_check_accepts_a_good_policy(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: no-agents\n    action: block\n    match: {rpcs: ['agent.v1.AgentService/*']}\n"
                      "default_action: allow\n")
    r = subprocess.run([str(CORDONCTL), "policy", "check", str(policy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{policy}: ok: 1 rules, default action allow, masking on\n"


BLOCK_MODELS = """rules:
  - name: no-models
    match:
      rpcs: ["aiserver.v1.AiService/AvailableModels"]
    action: block
default_action: allow
"""


def test_reload_applies_new_rules_keeps_live_streams_and_survives_a_broken_file(governed, journal):
    d, jobs = governed("default_action: allow\n")
    events, _ = jobs.client("models")
    assert not errors(events)
    # A chat stream that is live across the reloads: it must finish unharmed.
    chat = jobs.spawn_client("chat", "--prompt", "one", "--prompt", "two", "--pause-ms", "1500")
    time.sleep(0.5)

    text = d.policy.read_text()
    d.policy.write_text(text.replace("default_action: allow\n", BLOCK_MODELS))
    r = d.ctl("reload")
    assert r.returncode == 0 and "1 rules, masking on" in r.stdout, (r.stdout, r.stderr)
    events, _ = jobs.client("models", check=False)
    assert errors(events) and "no-models" in errors(events)[0]["message"], events

    # A broken file changes nothing, and says where.
    good = d.policy.read_text()
    d.policy.write_text(good.replace("action: block", "action: nuke"))
    r = d.ctl("reload", check=False)
    assert r.returncode == 1 and f"{d.policy}:" in r.stderr and "nuke" in r.stderr, r.stderr
    events, _ = jobs.client("models", check=False)
    assert errors(events) and "no-models" in errors(events)[0]["message"], "the running rules stay"

    # SIGHUP reloads too: back to allowing.
    d.policy.write_text(text)
    os.kill(d.pid, signal.SIGHUP)
    reloads = journal.wait_for(d.pid, count=3, CORDON_EVENT="policy_reload")
    assert [e["CORDON_RESULT"] for e in reloads[:3]] == ["ok", "failed", "ok"], reloads
    assert "nuke" in reloads[1]["CORDON_ERROR"]
    events, _ = jobs.client("models")
    assert not errors(events)

    out, err = chat.communicate(timeout=60)
    assert chat.returncode == 0, err
    received = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert not errors(received) and sum(e["event"] == "recv" for e in received) > 4, received


def test_reload_reports_settings_that_need_a_restart(governed):
    d, jobs = governed("default_action: allow\n")
    d.policy.write_text(d.policy.read_text().replace("daemon:\n", "daemon:\n  connect_timeout_ms: 4321\n"))
    r = d.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert "daemon: changed, but takes a restart" in r.stdout, r.stdout


def test_curl_over_http2_sees_the_refusal_of_a_blocked_request_with_a_body(governed, standin, cgroups):
    """cordond answers a blocked request before its body has arrived. An immediate RST_STREAM made
    curl (7.88) report a framing error about half the time instead of the 403 (found by the soak);
    cordond now reads and drops the rest of a short body first."""
    d, jobs = governed(f"""rules:
  - name: no-agents-api
    match:
      cgroups: ["{cgroups.path('job')}*"]
      paths: ["/v0/agents"]
    action: block
    message: ask the platform team
default_action: allow
""")
    for attempt in range(8):
        r = jobs.run(["curl", "-sS", "--http2", "--max-time", "10", "-w", "\n%{http_code}", "-X", "POST",
                      "--data", '{"prompt": "' + "x" * 3000 + '"}', "https://api.cursor.com/v0/agents"], check=False)
        assert r.returncode == 0 and r.stdout.endswith("\n403"), (attempt, r)
        assert "ask the platform team" in r.stdout
    assert not standin.requests("/v0/agents")


def test_a_refused_request_is_journaled_even_when_the_job_hangs_up_before_ending_its_body(governed, journal,
                                                                                          cgroups):
    """The refusal is answered while the job's body is still open; the job reads it and closes the
    connection without ever ending its body. The request is still journaled, with its rule (the
    soak found one such entry missing)."""
    d, jobs = governed(f"""rules:
  - name: no-models
    match:
      cgroups: ["{cgroups.path('job')}*"]
      rpcs: ["{MODELS.lstrip('/')}"]
    action: block
    message: not here
default_action: allow
""")
    r = jobs.run(["node", "-e", f"""
const h = require('http2').connect('https://api2.cursor.sh');
const r = h.request({{':method': 'POST', ':path': '{MODELS}', 'content-type': 'application/json',
                      'connect-protocol-version': '1'}}, {{endStream: false}});
r.write('{{');  // part of a body, never ended
let status = 0, body = '';
r.on('response', hd => status = hd[':status']);
r.on('data', c => body += c);
r.on('end', () => {{ console.log(JSON.stringify({{status, body}})); h.destroy(); }});
"""])
    out = json.loads(r.stdout)
    assert out["status"] == 403 and "not here" in out["body"], out
    found = journal.wait_for(d.pid, CORDON_EVENT="request", CORDON_RULE="no-models", timeout=10)
    assert found and found[0]["CORDON_ACTION"] == "block" and found[0]["CORDON_RESULT"] == "refused", found
