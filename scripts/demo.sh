#!/usr/bin/env bash
# make demo: cordon end to end on one machine, against a local stand-in for Cursor.
#
#  1. a private name mapping (a mount namespace over /etc/hosts; the real file is never edited)
#     sends api2.cursor.sh and friends to 127.0.0.77, where a Connect-RPC server stands in for
#     Cursor, with a certificate from a throwaway "public" CA;
#  2. cordond starts on its embedded default policy (Cursor's host names, ports 443 and 80, every
#     cgroup enforced) plus one rule, creates its host CA, and attaches its programs to the
#     cgroup2 root;
#  3. a job, unprivileged and in a demo cgroup, trusting cordon's CA the way `cordonctl ca
#     install` makes every job trust it, runs curl and a real Connect client's streaming chat:
#     the kernel redirects both into cordond, which terminates TLS, verifies the stand-in's real
#     certificate, and passes every message through, decoded live in `cordonctl watch`; the chat
#     attaches a file holding an AWS key, and the stand-in's answer streams back a GitHub token
#     cut across three messages: both arrive masked, and the journal counts them; an agent run
#     whose answer tells the job to run `rm -rf /` is cut off by a policy rule; launching a cloud
#     agent waits until `cordonctl approve` lets it go; and the job trades a placeholder for
#     Cursor's short-lived token while only cordond ever holds the real API key (inject);
#  4. the journal and `cordonctl status` show who called, what they called, and what happened;
#  5. cordond stops: the same request is refused (fail closed);
#  6. `cordonctl replay` shows the chat session as recorded, and `cordonctl verify` checks the
#     whole store; then everything is cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=$ROOT/build
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it attaches BPF programs and creates cgroups)" >&2; exit 1; }

STANDIN_IP=127.0.0.77
# Realistic-looking secrets (not AWS's documented example key, which every scanner allowlists).
DEMO_AWS_KEY=AKIAQYLPMN5HFIQR7XYZ
DEMO_GITHUB_TOKEN=ghp_R8fK2mQ9xLpW4vZ7nT1bY6cH3jD0sA5eG2uK
# The team's Cursor API key: in a root-only file on the runner, never in any job.
DEMO_CURSOR_KEY=crsr_7d0c4e9a1f6b2835d0c4e9a1f6b28357d0c4e9a1f6b2835
NOBODY=65534
WORK=$(mktemp -d /tmp/cordon-demo.XXXXXX)
chmod 755 "$WORK"
CG_MOUNT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
[ -n "$CG_MOUNT" ] || { echo "demo: no cgroup2 mount found in /proc/mounts" >&2; exit 1; }
CG=/cordon-demo-$$
PIN_DIR=/sys/fs/bpf/cordon-demo-$$
SOCK=$WORK/control.sock
JOURNALD_PID=""
CORDOND_PID=""
STANDIN_PID=""
WATCH_PID=""
CREATED_DIRS=()

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { "$BUILD/cordonctl" --socket "$SOCK" --pin-dir "$PIN_DIR" "$@"; }

cleanup() {
	set +e
	[ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null && wait "$WATCH_PID" 2>/dev/null
	[ -n "$CORDOND_PID" ] && kill "$CORDOND_PID" 2>/dev/null && wait "$CORDOND_PID" 2>/dev/null
	[ -d "$PIN_DIR" ] && "$BUILD/cordonctl" --pin-dir "$PIN_DIR" detach >/dev/null
	[ -n "$STANDIN_PID" ] && kill "$STANDIN_PID" 2>/dev/null && wait "$STANDIN_PID" 2>/dev/null
	for d in "$CG_MOUNT$CG/job" "$CG_MOUNT$CG/daemon" "$CG_MOUNT$CG"; do
		[ -d "$d" ] || continue
		[ -e "$d/cgroup.kill" ] && echo 1 > "$d/cgroup.kill" 2>/dev/null
		for _ in $(seq 50); do [ -z "$(cat "$d/cgroup.procs" 2>/dev/null)" ] && break; sleep 0.05; done
		rmdir "$d" 2>/dev/null
	done
	if [ -n "$JOURNALD_PID" ]; then
		kill "$JOURNALD_PID" 2>/dev/null && wait "$JOURNALD_PID" 2>/dev/null
		for ((i=${#CREATED_DIRS[@]}-1; i>=0; i--)); do rm -rf "${CREATED_DIRS[$i]}"; done
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

# The socket file outlives a killed journald: only a connect proves one is listening.
journald_running() {
	python3 -c 'import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect("/run/systemd/journal/socket")' 2>/dev/null
}

bold "journal"
if journald_running; then
	echo "using the running systemd-journald"
else
	for d in /run/systemd /run/systemd/journal /run/log /run/log/journal; do
		[ -d "$d" ] || { mkdir -p "$d"; CREATED_DIRS+=("$d"); }
	done
	/lib/systemd/systemd-journald & JOURNALD_PID=$!
	for _ in $(seq 100); do journald_running && break; sleep 0.05; done
	echo "started systemd-journald (pid $JOURNALD_PID) for the demo; it stops again at the end"
fi

bold "a stand-in for Cursor on $STANDIN_IP:443"
tests/standin/make-certs.sh "$WORK/certs" > /dev/null
node tests/standin/standin.mjs --host "$STANDIN_IP" --port 443 --cert "$WORK/certs/standin.pem" \
	--key "$WORK/certs/standin.key" --log "$WORK/standin.jsonl" --descriptors "$BUILD/cursor.desc" \
	--leak-text "$DEMO_GITHUB_TOKEN" --leak-pieces 3 > "$WORK/standin.out" 2>&1 & STANDIN_PID=$!
for _ in $(seq 200); do grep -q listening "$WORK/standin.out" 2>/dev/null && break; sleep 0.05; done
cat "$WORK/standin.out"

bold "cordond on the default policy plus three rules"
# The file replaces only what it names: everything else is the embedded default policy.
printf '%s\n' "$DEMO_CURSOR_KEY" > "$WORK/cursor.key"
chmod 600 "$WORK/cursor.key"
cat > "$WORK/policy.yaml" <<YAML
rules:
  - name: cloud-agents-need-approval
    match:
      paths: ["/v0/agents", "/v1/agents"]
    action: approve
    message: launching a cloud agent needs a person's approval
  - name: ci-uses-the-team-key
    match:
      paths: ["/auth/exchange_user_api_key"]
    action: inject
    inject:
      credential_file: $WORK/cursor.key
      scheme: bearer
  - name: no-destructive-commands
    match:
      direction: response
      content:
        - field: exec_server_message.shell_args.command
          regex: 'rm\\s+-rf\\s+/'
    action: block
    message: Cursor asked the job to delete everything
default_action: allow
approvals:
  timeout_seconds: 60
YAML
sed 's/^/  /' "$WORK/policy.yaml"
"$BUILD/cordonctl" policy check "$WORK/policy.yaml"
printf '127.0.0.1 localhost\n%s api2.cursor.sh agentn.api5.cursor.sh repo42.cursor.sh api.cursor.com\n' "$STANDIN_IP" > "$WORK/hosts"
echo "private name mapping: Cursor's names -> $STANDIN_IP (a mount namespace over /etc/hosts)"
echo "cordond verifies the stand-in against the demo's \"public\" CA (--upstream-ca), as it verifies Cursor against the system store"
mkdir -p "$CG_MOUNT$CG/job" "$CG_MOUNT$CG/daemon"
# cordond runs in the private mount namespace so it resolves Cursor's names as the job does.
unshare --mount --propagation private sh -c \
	"mount --bind '$WORK/hosts' /etc/hosts && exec '$BUILD/cordond' --config '$WORK/policy.yaml' --cgroup '$CG/daemon' \
	 --pin-dir '$PIN_DIR' --control-socket '$SOCK' --state-dir '$WORK/state' --metrics-listen 'unix:$WORK/metrics.sock' --netns-listen '' \
	 --upstream-ca '$WORK/certs/ca.pem' --descriptors '$BUILD/cursor.desc'" 2> "$WORK/cordond.log" & CORDOND_PID=$!
for _ in $(seq 200); do ctl status >/dev/null 2>&1 && break; sleep 0.05; done
ctl status >/dev/null || { cat "$WORK/cordond.log"; exit 1; }
grep -v "^<7>" "$WORK/cordond.log" | sed 's/^<[0-9]>//; s/ CORDON_.*//' | sed -n "1,4p"

# What `cordonctl ca install` does on a real host, done inside the job's private namespace: the OS
# bundle gains cordon's CA and Node is pointed at it.
cp "$WORK/state/ca/ca.crt" "$WORK/cordon-ca.crt"
cat /etc/ssl/certs/ca-certificates.crt "$WORK/cordon-ca.crt" > "$WORK/ca-bundle.crt"
chmod 644 "$WORK/cordon-ca.crt" "$WORK/ca-bundle.crt"

# A job: unprivileged, in its own cgroup, seeing Cursor's names and trusting cordon's CA.
job() {
	nsenter --target "$CORDOND_PID" --mount -- sh -c \
		"mount --bind '$WORK/ca-bundle.crt' /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true
		 echo \$\$ > '$CG_MOUNT$CG/job/cgroup.procs' && exec setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups -- \
		 env NODE_EXTRA_CA_CERTS='$WORK/cordon-ca.crt' HOME=/tmp \"\$@\"" job "$@"
}

ctl watch > "$WORK/watch.txt" 2>&1 & WATCH_PID=$!
sleep 0.3

bold "the job: curl https://api2.cursor.sh/ as uid $NOBODY in cgroup $CG/job (OS trust store)"
job curl -sS --http2 https://api2.cursor.sh/

bold "the job: a real Connect client, a streaming chat (aiserver.v1.ChatService/StreamUnifiedChatWithTools)"
echo "  (it attaches deploy/aws.env, which holds an AWS key; the second prompt makes the stand-in leak a token)"
job node "$ROOT/tests/standin/client.mjs" --descriptors "$BUILD/cursor.desc" chat \
	--prompt "explain this repository" --prompt "now leak a token" --pause-ms 300 \
	--file "deploy/aws.env=AWS_ACCESS_KEY_ID=$DEMO_AWS_KEY
AWS_REGION=eu-west-1
" \
	| tee "$WORK/client.jsonl" | node -e 'require("readline").createInterface({input: process.stdin}).on("line", l => {
		const e = JSON.parse(l);
		if (e.event === "sent") console.log(`  sent     ${JSON.stringify(e.json).slice(0, 110)}`);
		const text = e.json?.streamUnifiedChatResponse?.text;
		if (e.event === "recv") console.log(`  received ${text !== undefined ? JSON.stringify(text) : JSON.stringify(e.json).slice(0, 110)}`);
	})'
# The stand-in sends the token in pieces, so look for it in the text the job assembles.
if node -e 'const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
	const text = lines.map(e => e.json?.streamUnifiedChatResponse?.text ?? "").join("");
	process.exit(text.includes(process.argv[2]) || !text.includes("[MASKED:github-pat]") ? 0 : 1)' \
	"$WORK/client.jsonl" "$DEMO_GITHUB_TOKEN"; then
	echo "demo: the token the stand-in leaked did not reach the job masked; that must not happen" >&2
	exit 1
fi
bold "the job: a Cursor agent run whose answer tells the job to run rm -rf / (agent.v1.AgentService/Run)"
job node "$ROOT/tests/standin/client.mjs" --base-url https://agentn.api5.cursor.sh --descriptors "$BUILD/cursor.desc" \
	run --prompt "clean up, rm -rf / is fine" > "$WORK/run.jsonl" || true
node -e 'const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
	for (const e of lines) {
		if (e.event === "recv") console.log(`  received ${JSON.stringify(e.json).slice(0, 110)}`);
		if (e.event === "error") console.log(`  error    ${e.code}: ${e.message}`);
	}' "$WORK/run.jsonl"
if grep -q execServerMessage "$WORK/run.jsonl" || ! grep -q "no-destructive-commands" "$WORK/run.jsonl"; then
	echo "demo: the destructive command was not blocked; that must not happen" >&2
	exit 1
fi

bold "the job: launch a Cursor cloud agent (POST https://api.cursor.com/v0/agents): held for approval"
job curl -sS --max-time 60 -X POST -H "Authorization: Bearer crsr_job_placeholder" -H "content-type: application/json" \
	-d '{"prompt":{"text":"fix the flaky test"},"source":{"repository":"https://github.com/acme/app"}}' \
	https://api.cursor.com/v0/agents > "$WORK/agent.json" 2>&1 & CURL_PID=$!
APPROVAL=""
for _ in $(seq 200); do
	APPROVAL=$(ctl approvals --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const p=JSON.parse(s).pending;console.log(p.length?p[0].id:"")})')
	[ -n "$APPROVAL" ] && break; sleep 0.05
done
[ -n "$APPROVAL" ] || { echo "demo: the cloud agent launch was not held for approval; that must not happen" >&2; exit 1; }
echo "\$ cordonctl approvals"
ctl approvals | sed 's/^/  /'
if grep -q '"/v0/agents"' "$WORK/standin.jsonl"; then
	echo "demo: the held request reached the stand-in before it was approved; that must not happen" >&2
	exit 1
fi
echo "\$ cordonctl approve $APPROVAL"
ctl approve "$APPROVAL" | sed 's/^/  /'
wait "$CURL_PID" || true
echo "the job got: $(cut -c1-160 "$WORK/agent.json")"
grep -q '"status":"CREATING"' "$WORK/agent.json" || { echo "demo: the approved launch did not go through" >&2; exit 1; }

bold "the job: trade a placeholder for Cursor's short-lived token (POST /auth/exchange_user_api_key)"
echo "  the job sends 'Bearer crsr_job_placeholder'; cordond injects the team key from a root-only file"
job node "$ROOT/tests/standin/client.mjs" --descriptors "$BUILD/cursor.desc" auth --key crsr_job_placeholder \
	> "$WORK/auth.jsonl"
node -e 'const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
	const r = lines.find(e => e.event === "response");
	const claims = JSON.parse(Buffer.from(r.json.accessToken.split(".")[1], "base64url"));
	console.log(`  the job got HTTP ${r.status}: an access token for ${claims.sub}, valid until ${new Date(claims.exp * 1000).toISOString()}`);' \
	"$WORK/auth.jsonl"
node -e 'const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
	const r = lines.find(e => e.event === "request" && e.path === "/auth/exchange_user_api_key");
	console.log(`  the stand-in saw authorization: ${r.headers.authorization.slice(0, 16)}... (the team key)`);' \
	"$WORK/standin.jsonl"
if grep -q "$DEMO_CURSOR_KEY" "$WORK/auth.jsonl" || ! grep -q "Bearer $DEMO_CURSOR_KEY" "$WORK/standin.jsonl"; then
	echo "demo: the key was not injected, or it reached the job; that must not happen" >&2
	exit 1
fi
echo "  the team key appears nowhere in what the job received"
sleep 0.5
kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null || true
WATCH_PID=""

bold "cordonctl watch: what cordond saw, decoded (names from proto/cursor)"
cut -c1-230 "$WORK/watch.txt"

bold "what the stand-in received (its log): the client's messages, with the AWS key masked"
node -e 'const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
	for (const e of lines) if (e.event === "message" && e.direction === "received" && "index" in e) {
		console.log(`  ${e.path}  #${e.index} ${e.size} B from ${e.peer} (cordond)`);
		const file = e.json?.streamUnifiedChatRequest?.currentFile?.contents;
		if (file !== undefined) console.log(`      deploy/aws.env as Cursor got it: ${JSON.stringify(file)}`);
	}' "$WORK/standin.jsonl"
if grep -q "$DEMO_AWS_KEY" "$WORK/standin.jsonl"; then
	echo "demo: the AWS key reached the stand-in unmasked; that must not happen" >&2
	exit 1
fi

bold "the journal: journalctl _PID=$CORDOND_PID CORDON_EVENT=request"
journalctl --no-pager _PID="$CORDOND_PID" CORDON_EVENT=request -o cat
echo
echo
echo "\$ journalctl _PID=$CORDOND_PID CORDON_EVENT=approval"
journalctl --no-pager _PID="$CORDOND_PID" CORDON_EVENT=approval -o cat
echo
journalctl --no-pager _PID="$CORDOND_PID" CORDON_EVENT=request -o verbose -n 3 \
	--output-fields=CORDON_CONN,CORDON_PID,CORDON_UID,CORDON_USER,CORDON_COMM,CORDON_EXE,CORDON_CGROUP,CORDON_IDENTITY,CORDON_SNI,CORDON_HOST,CORDON_RPC,CORDON_PATH,CORDON_PROTO,CORDON_HTTP,CORDON_STATUS,CORDON_REQ_MESSAGES,CORDON_RESP_MESSAGES,CORDON_DURATION_US,CORDON_RESULT,CORDON_RULE,CORDON_ACTION,CORDON_APPROVAL_ID,CORDON_APPROVAL,CORDON_APPROVER,CORDON_MASKED,CORDON_MASK_RULES
if journalctl --no-pager _PID="$CORDOND_PID" -o json | grep -q "$DEMO_AWS_KEY\|$DEMO_GITHUB_TOKEN\|$DEMO_CURSOR_KEY"; then
	echo "demo: a secret reached the journal; that must not happen" >&2
	exit 1
fi

bold "cordonctl status"
ctl status

bold "cordond stops: captured connections are refused, nothing reaches Cursor unseen"
kill "$CORDOND_PID"; wait "$CORDOND_PID" || true; STOPPED=$CORDOND_PID; CORDOND_PID=""
# The name mapping went with cordond's namespace; map the name for this one request with --resolve.
if sh -c "echo \$\$ > '$CG_MOUNT$CG/job/cgroup.procs' && exec setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups -- \
	curl -sS --max-time 5 --cacert '$WORK/cordon-ca.crt' --resolve 'api2.cursor.sh:443:$STANDIN_IP' https://api2.cursor.sh/" 2>&1; then
	echo "demo: the request went through while cordond was down; that must not happen" >&2
	exit 1
fi
ctl status 2>&1 || true
echo "(cordond pid $STOPPED has stopped; its programs are detached by the cleanup)"

bold "the recording: cordonctl replay of the chat session"
CHAT_CONN=$(journalctl --no-pager _PID="$STOPPED" CORDON_EVENT=request \
	CORDON_RPC=aiserver.v1.ChatService/StreamUnifiedChatWithTools -o json | sed -n 1p |
	node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).CORDON_CONN))')
echo "\$ cordonctl replay $CHAT_CONN"
"$BUILD/cordonctl" --state-dir "$WORK/state" --descriptors "$BUILD/cursor.desc" replay "$CHAT_CONN" > "$WORK/replay.txt"
sed -n "1,60p" "$WORK/replay.txt" | cut -c1-200
echo "  ... ($(wc -l < "$WORK/replay.txt") lines in all)"
if grep -rqa "$DEMO_AWS_KEY\|$DEMO_GITHUB_TOKEN\|$DEMO_CURSOR_KEY" "$WORK/state/recordings"; then
	echo "demo: a secret reached the recordings; that must not happen" >&2
	exit 1
fi

bold "cordonctl verify: the recordings are whole and untouched"
"$BUILD/cordonctl" --state-dir "$WORK/state" verify

bold "done: everything the demo created is removed"
