"""Metrics end to end: real traffic through cordond (an allowed unary call, a blocked one, a chat
carrying a secret) moves the Prometheus counters by exactly what the journal says happened; the
endpoint is valid text exposition format (checked line by line and by Prometheus' own Python
parser), root only on its unix socket, bounded against idle scrapers, and never a reason for
cordond to stop."""
import json
import math
import os
import re
import socket
import stat
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import NOBODY
from test_intercept import INTERCEPT_HOSTS, Jobs, entries, tls_yaml, work  # noqa: F401
from test_standin import Standin

# This file's addresses: 127.77.110.0/24.
STANDIN_IP = "127.77.110.1"
METRICS_IP = "127.77.110.2"  # the TCP metrics endpoint
TAKEN_IP = "127.77.110.3"  # an address whose port someone else holds
METRICS_PORT = 9464
CAPTURED = [f"{STANDIN_IP}/32"]
AWS_KEY = "AKIAQYLPMN5HFIQR7XYZ"
FILE_SYNC = "aiserver.v1.RepositoryService/FastUpdateFileV2"
MODELS = "/aiserver.v1.AiService/AvailableModels"
RULES = f"""rules:
  - name: no-file-sync
    match:
      rpcs: ["{FILE_SYNC}"]
    action: block
default_action: allow
"""

# One line of the text format: a comment (HELP, TYPE or other) or a sample.
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|[+-]Inf|NaN)"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(?:{LABEL})(?:,{LABEL})*,?\}})? {VALUE}(?: -?\d+)?$")
HELP = re.compile(rf"^# HELP ({NAME}) (?:[^\\\n]|\\[\\n])*$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")


@pytest.fixture(scope="module")
def standin(work):
    s = Standin(work, STANDIN_IP)
    yield s
    s.stop()


@pytest.fixture
def metered(cgroups, cordond, standin, work, tmp_path):
    def start(listen, rules=RULES):
        tls = tls_yaml(work, extra=f"  descriptors: {work / 'cursor.desc'}\n")
        d = cordond(CAPTURED, ports=(443,), hosts=INTERCEPT_HOSTS, tls_yaml=tls, metrics_listen=listen,
                    extra_yaml=rules)
        jobs = Jobs(cgroups, d, work, tmp_path)
        jobs.map_hosts(STANDIN_IP)
        return d, jobs
    return start


def check_exposition(text):
    """Every line is valid 0.0.4 text format, and Prometheus' parser reads it all. Returns
    {(sample name, frozenset of labels): value}."""
    assert text.endswith("\n"), text[-200:]
    typed = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert HELP.match(line), line
        elif line.startswith("# TYPE "):
            m = TYPE.match(line)
            assert m, line
            typed[m.group(1)] = m.group(2)
        else:
            m = SAMPLE.match(line)
            assert m, f"not a valid sample line: {line!r}"
            name = m.group(1)
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
            assert base in typed, f"{name} has no TYPE before it"
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"{key} twice"
            samples[key] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name, **labels):
    """Summed over every series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def scrape_tcp(host=METRICS_IP, port=METRICS_PORT, path="/metrics"):
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "-D", "-", f"http://{host}:{port}{path}"],
                       capture_output=True, check=True)  # bytes: the head's CRLFs stay
    head, _, body = r.stdout.decode().partition("\r\n\r\n")
    return head, body


def scrape_unix(path):
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--unix-socket", str(path), "http://cordond/metrics"],
                          capture_output=True, text=True)


def test_real_traffic_moves_the_counters_by_what_the_journal_says(metered, standin, journal):
    d, jobs = metered(f"{METRICS_IP}:{METRICS_PORT}")
    head, body = scrape_tcp()
    assert head.startswith("HTTP/1.1 200 OK"), head
    assert "Content-Type: text/plain; version=0.0.4; charset=utf-8" in head, head
    before = check_exposition(body)
    assert value(before, "cordon_build_info", version=d.status()["version"]) == 1
    assert value(before, "cordon_connections_active") == 0

    # An allowed unary call, a blocked one, and a chat that sends an AWS key (masked on the way).
    events, _ = jobs.client("models", "--body", '{"isNightly": true}')
    assert any(e["event"] == "response" for e in events), events
    blocked_before = len(standin.requests("/" + FILE_SYNC))
    events, _ = jobs.client("unary", "--method", FILE_SYNC, "--body",
                            '{"relativeWorkspacePath": "db/schema.sql", "contents": "DROP TABLE users;"}', check=False)
    assert [e for e in events if e["event"] == "error"][0]["code"] == "permission_denied", events
    assert len(standin.requests("/" + FILE_SYNC)) == blocked_before
    events, _ = jobs.client("chat", "--prompt", "explain", "--file", f"deploy/aws.env=AWS_ACCESS_KEY_ID={AWS_KEY}\n")
    assert any(e["event"] == "recv" for e in events), events

    # The journal is written after the counters move (same loop turn): once it shows every close,
    # the metrics hold everything.
    closes = entries(journal, d, "connection_close", count=3)
    requests = entries(journal, d, "request", count=3)
    assert len(closes) == 3 and len(requests) == 3, (closes, requests)
    _, body = scrape_tcp()
    after = check_exposition(body)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    # Requests, by protocol and result exactly as journaled; decisions by action.
    assert delta("cordon_requests_total") == 3
    for r in requests:
        assert delta("cordon_requests_total", protocol=r["CORDON_PROTO"], result=r["CORDON_RESULT"]) >= 1, r
    assert delta("cordon_requests_total", result="refused") == 1
    assert delta("cordon_decisions_total", action="allow") == 2
    assert delta("cordon_decisions_total", action="block") == 1
    assert delta("cordon_decisions_total") == 3
    # Masking: the secrets the journal counted, and some were.
    masked = sum(int(r.get("CORDON_MASKED", "0")) for r in requests)
    assert masked >= 1
    assert delta("cordon_masked_secrets_total") == masked
    # Latency: one observation per request, the same durations as the journal's.
    assert delta("cordon_request_duration_seconds_count") == 3
    assert delta("cordon_request_duration_seconds_bucket", le="+Inf") == 3
    journaled = sum(int(r["CORDON_DURATION_US"]) for r in requests) / 1e6
    assert math.isclose(delta("cordon_request_duration_seconds_sum"), journaled, abs_tol=1e-6)
    # Connections and bytes, as the close entries count them.
    assert delta("cordon_connections_total", mode="intercept") == 3
    assert delta("cordon_connections_total") == 3
    assert value(after, "cordon_connections_active") == 0
    assert delta("cordon_bytes_total", direction="up") == sum(int(c["CORDON_BYTES_UP"]) for c in closes)
    assert delta("cordon_bytes_total", direction="down") == sum(int(c["CORDON_BYTES_DOWN"]) for c in closes)
    assert delta("cordon_bytes_total", direction="up") > 0
    # The kernel's view, the approvals, the errors (none), the journal and the recordings.
    assert delta("cordon_bpf_redirected_total") == 3
    assert value(after, "cordon_approvals_pending") == 0
    assert delta("cordon_errors_total") == 0
    assert value(after, "cordon_journal_entries_total") >= len(closes) + len(requests)
    assert value(after, "cordon_journal_dropped_total") == 0
    assert value(after, "cordon_recording_records_total") > 0 and value(after, "cordon_recording_failed") == 0
    assert value(after, "cordon_recording_lost_total") == 0

    # `cordonctl metrics` prints the same families (root only).
    text = d.ctl("metrics").stdout
    via_ctl = check_exposition(text)
    assert {n for n, _ in via_ctl} == {n for n, _ in after}
    denied = d.ctl("metrics", check=False, user=NOBODY)
    assert denied.returncode == 1 and "metrics is for root" in denied.stderr
    assert d.status()["metrics"] == {"listen": f"{METRICS_IP}:{METRICS_PORT}", "error": ""}
    # Nothing but GET and HEAD of /metrics.
    head, _ = scrape_tcp(path="/")
    assert head.startswith("HTTP/1.1 404"), head


def test_the_unix_socket_is_root_only_and_idle_scrapers_cannot_hold_it(metered, journal, tmp_path):
    sock = tmp_path / "run" / "metrics.sock"
    d, jobs = metered(f"unix:{sock}")
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    r = scrape_unix(sock)
    assert r.returncode == 0, r.stderr
    check_exposition(r.stdout)
    # Another user cannot even connect.
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", "/usr/bin/python3",
                        "-c", "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])", str(sock)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "PermissionError" in r.stderr, (r.stdout, r.stderr)

    # Reloads count by result.
    d.ctl("reload")
    good = d.policy.read_text()
    d.policy.write_text(good + "rules: [[[\n")
    assert d.ctl("reload", check=False).returncode == 1
    d.policy.write_text(good)
    samples = check_exposition(scrape_unix(sock).stdout)
    assert value(samples, "cordon_policy_reloads_total", result="ok") == 1
    assert value(samples, "cordon_policy_reloads_total", result="failed") == 1

    # Scrapers that connect and say nothing take every slot: one more is told 503 at once, the
    # data path does not notice, and the deadline frees the slots again.
    idle = []
    time.sleep(0.5)  # curl hangs up once it has the body: let the last scrape's session end first
    try:
        for _ in range(16):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(sock))
            idle.append(s)
        time.sleep(0.2)
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                            "--unix-socket", str(sock), "http://cordond/metrics"], capture_output=True, text=True)
        assert r.stdout == "503", (r.stdout, r.stderr)
        events, _ = jobs.client("models")
        assert any(e["event"] == "response" for e in events), events
        for s in idle:
            s.settimeout(10)
            assert s.recv(1024) == b""  # closed by the deadline, unanswered
    finally:
        for s in idle:
            s.close()
    r = scrape_unix(sock)
    assert r.returncode == 0, r.stderr
    assert value(check_exposition(r.stdout), "cordon_requests_total", protocol="connect_unary", result="ok") == 1

    # A clean stop removes the socket.
    d.stop()
    assert not sock.exists()


def test_an_endpoint_that_cannot_open_is_reported_and_cordond_runs_on(metered, journal):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((TAKEN_IP, METRICS_PORT))
    holder.listen(1)
    try:
        d, jobs = metered(f"{TAKEN_IP}:{METRICS_PORT}")
        error = d.status()["metrics"]["error"]
        assert "Address already in use" in error, error
        found = entries(journal, d, "metrics_error")
        assert found[0]["CORDON_METRICS_LISTEN"] == f"{TAKEN_IP}:{METRICS_PORT}"
        assert found[0]["PRIORITY"] == "3" and "Address already in use" in found[0]["CORDON_ERROR"]
        # The gateway works, and its numbers are still there through the control socket.
        events, _ = jobs.client("models")
        assert any(e["event"] == "response" for e in events), events
        entries(journal, d, "request")
        samples = check_exposition(d.ctl("metrics").stdout)
        assert total(samples, "cordon_requests_total") == 1
    finally:
        holder.close()


def test_metrics_can_be_turned_off(metered):
    d, _ = metered("")
    assert d.status()["metrics"] == {"listen": "", "error": ""}
    assert "cordond serves" not in d.log_text() and "metrics at" not in d.log_text()
    check_exposition(d.ctl("metrics").stdout)
