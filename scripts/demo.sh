#!/usr/bin/env bash
# make demo: cordon end to end on one machine, against a local stand-in for api2.cursor.sh.
#
#  1. a private name mapping (a mount namespace over /etc/hosts: the real file is never edited)
#     sends api2.cursor.sh to 127.0.0.77, where a Node HTTPS server stands in for Cursor;
#  2. cordond starts on its embedded default policy (Cursor's host names, ports 443 and 80, every
#     cgroup enforced) and attaches its programs to the cgroup2 root;
#  3. curl, unprivileged and inside a demo cgroup, asks for https://api2.cursor.sh/ as any job
#     would: the kernel redirects it into cordond, which relays it to the stand-in;
#  4. the journal and `cordonctl status` show who called and where they meant to go;
#  5. cordond stops: the same request is refused (fail closed); then everything is cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=$ROOT/build
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it attaches BPF programs and creates cgroups)" >&2; exit 1; }

STANDIN_IP=127.0.0.77
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
CREATED_DIRS=()

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { "$BUILD/cordonctl" --socket "$SOCK" --pin-dir "$PIN_DIR" "$@"; }

cleanup() {
	set +e
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

bold "a stand-in for api2.cursor.sh on $STANDIN_IP:443"
# The stand-in's certificate comes from a throwaway "public" CA that only this demo's curl trusts.
# (cordon does not look inside TLS yet: here it relays the encrypted bytes unchanged.)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=cordon demo public CA" \
	-keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=api2.cursor.sh" \
	-keyout "$WORK/standin.key" -out "$WORK/standin.csr" 2>/dev/null
printf 'subjectAltName=DNS:api2.cursor.sh\n' > "$WORK/san.ext"
openssl x509 -req -in "$WORK/standin.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 1 \
	-extfile "$WORK/san.ext" -out "$WORK/standin.pem" 2>/dev/null
chmod 644 "$WORK/ca.pem"
node tests/standin/standin.mjs --host "$STANDIN_IP" --port 443 --cert "$WORK/standin.pem" \
	--key "$WORK/standin.key" --log "$WORK/standin.jsonl" > "$WORK/standin.out" & STANDIN_PID=$!
for _ in $(seq 200); do grep -q listening "$WORK/standin.out" 2>/dev/null && break; sleep 0.05; done
cat "$WORK/standin.out"

bold "cordond on its embedded default policy"
printf '127.0.0.1 localhost\n%s api2.cursor.sh\n' "$STANDIN_IP" > "$WORK/hosts"
echo "private name mapping: api2.cursor.sh -> $STANDIN_IP (mount namespace over /etc/hosts)"
mkdir -p "$CG_MOUNT$CG/job" "$CG_MOUNT$CG/daemon"
# cordond runs in the private mount namespace so it resolves Cursor's names as the job does.
unshare --mount --propagation private sh -c \
	"mount --bind '$WORK/hosts' /etc/hosts && exec '$BUILD/cordond' --cgroup '$CG/daemon' \
	 --pin-dir '$PIN_DIR' --control-socket '$SOCK'" 2> "$WORK/cordond.log" & CORDOND_PID=$!
for _ in $(seq 200); do ctl status >/dev/null 2>&1 && break; sleep 0.05; done
ctl status >/dev/null || { cat "$WORK/cordond.log"; exit 1; }
head -n 3 "$WORK/cordond.log" | sed 's/^<[0-9]>//'

# A job: unprivileged, in its own cgroup, in the same name mapping, using curl as it always would.
job() {
	nsenter --target "$CORDOND_PID" --mount -- sh -c \
		"echo \$\$ > '$CG_MOUNT$CG/job/cgroup.procs' && exec setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups -- \"\$@\"" \
		job "$@"
}

bold "the job: curl https://api2.cursor.sh/ as uid $NOBODY in cgroup $CG/job"
job curl -sS --http2 --cacert "$WORK/ca.pem" https://api2.cursor.sh/
sleep 0.3

bold "what the stand-in saw"
sed 's/^/  /' "$WORK/standin.jsonl"

bold "the journal: journalctl _PID=$CORDOND_PID CORDON_EVENT=connection_close"
journalctl --no-pager _PID="$CORDOND_PID" CORDON_EVENT=connection_close -o verbose \
	--output-fields=MESSAGE,CORDON_CONN,CORDON_PID,CORDON_UID,CORDON_COMM,CORDON_CGROUP,CORDON_DST,CORDON_CLIENT,CORDON_UPSTREAM_LOCAL,CORDON_BYTES_UP,CORDON_BYTES_DOWN,CORDON_DURATION_US,CORDON_RESULT

close_field() {
	journalctl --no-pager _PID="$CORDOND_PID" CORDON_EVENT=connection_close -o export | sed -n "s/^$1=//p" | head -n 1
}
echo "curl's own socket was $(close_field CORDON_CLIENT); the stand-in talked to cordond's upstream socket" \
	"$(close_field CORDON_UPSTREAM_LOCAL) — see 'peer' above."

bold "cordonctl status"
ctl status

bold "cordond stops: captured connections are refused, nothing reaches the target unseen"
kill "$CORDOND_PID"; wait "$CORDOND_PID" || true; CORDOND_PID_STOPPED=$CORDOND_PID
# The mount namespace went with cordond; map the name for this one request with curl's --resolve.
CORDOND_PID=""
nsenter_job() {
	sh -c "echo \$\$ > '$CG_MOUNT$CG/job/cgroup.procs' && exec setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups -- \"\$@\"" job "$@"
}
if nsenter_job curl -sS --max-time 5 --cacert "$WORK/ca.pem" --resolve "api2.cursor.sh:443:$STANDIN_IP" \
	https://api2.cursor.sh/ 2>&1; then
	echo "demo: the request went through while cordond was down — that must not happen" >&2
	exit 1
fi
ctl status 2>&1 || true
echo "(cordond pid $CORDOND_PID_STOPPED has stopped; its programs are detached by the cleanup)"

bold "done: everything the demo created is removed"
