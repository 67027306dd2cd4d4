#!/usr/bin/env bash
# bench/run-tls.sh: the issue-#3 benchmark. Connect calls over TLS + HTTP/2, side by side in one
# run, printed as Markdown tables:
#   direct     h2load -> the upstream
#   cordond    h2load -> (kernel redirect) -> cordond: TLS terminated with a leaf from cordon's CA,
#              HTTP/2 and Connect parsed, secrets masked (issue #4), the upstream's certificate
#              verified -> the upstream
#   cordond-nomask  the same through a second cordond (same binary, its own captured address,
#              listener and pins, the same job cgroup) whose policy is identical but for
#              `mask: enabled: false`: masking on vs off in the same run (issue #4)
#   nginx      h2load -> nginx, a TLS-terminating reverse proxy (HTTP/2 to the client, HTTP/1.1 +
#              TLS with certificate verification to the upstream, response buffering off)
#   mitmproxy  h2load -> mitmdump in reverse mode: TLS intercepted with leaves minted from a CA,
#              HTTP/2 both ways, upstream certificate verified, large bodies streamed
# Workloads, the same for every path, interleaved round by round (the order rotates each round),
# medians reported:
#   unary      POST /aiserver.v1.AiService/AvailableModels, 1 KiB application/proto each way:
#              1 connection x 1 stream (latency), then BENCH_CLIENTS x BENCH_STREAMS (load)
#   stream     one Connect server stream: BENCH_STREAM_BYTES of 16 KiB application/connect+proto
#              messages, one connection; proxy CPU (utime+stime, /proc/<pid>/stat) per GB
# plus cordon's leaf micro-benchmark (build/cordon-microbench, Google Benchmark) when it is built.
# Payloads (protobuf field 1 of every body, BENCH_PAYLOAD): random bytes (not text: a masking proxy
# has nothing to scan), or source-code-like text with an AWS access key id and a GitHub token per
# MiB (a masking proxy scans all of it and replaces those two: responses then come back shorter or
# longer by a few bytes, so a text stream must complete within what masking can change, not to the
# byte; the bytes received are reported, and compared with the exact size masking should give).
#
# The upstream is bench/tls/upstream.cc (compiled here into a temporary directory): one thread,
# epoll, OpenSSL, nghttp2, HTTP/2 and HTTP/1.1, with a certificate for api2.cursor.sh from a test
# CA made by tests/standin/make-certs.sh. Clients and proxies trust that CA; cordond verifies the
# upstream against it (tls.upstream_ca_file). Everything stays on 127.88.3.0/24 loopback
# addresses; h2load runs inside a temporary cgroup that cordond enforces, where a CI job would be.
# The script creates only a temporary directory, cgroups /cordon-bench-tls-PID/{job,daemon,servers}
# and the pin directories /sys/fs/bpf/cordon-bench-tls-PID{,-nomask}; it changes no sysctl and
# nothing in /etc or the trust store, and removes everything on exit, also on failure or Ctrl-C. A
# run that fails (a request not answered 2xx, a short stream) is left out of the medians and listed
# at the end.
#
#   BENCH_ROUNDS         rounds (default 5)
#   BENCH_DURATION       seconds measured per unary run, after 1 s of warm-up (default 4)
#   BENCH_CLIENTS        connections of the unary load run (default 8)
#   BENCH_STREAMS        concurrent streams per connection in the load run (default 8)
#   BENCH_STREAM_BYTES   streamed payload per transfer (default 1 GiB)
#   BENCH_MITM_STREAM_BYTES  the same, for mitmproxy only (default: BENCH_STREAM_BYTES)
#   BENCH_PATHS          subset/order of "direct cordond cordond-nomask nginx mitmproxy"
#                        (default: "direct cordond nginx mitmproxy")
#   BENCH_PAYLOAD        random (default) or text
#   BENCH_LISTEN_PORT    cordond's loopback listener (default 14888; cordond-nomask's is the next port)
#   BENCH_RULES          policy rules given to the `cordond` path only (default 0): request-level
#                        rules and content rules (over every string) that match nothing, before one
#                        catch-all allow, so every request and message is tried against all of them
#   BENCH_CONTENT_PERCENT  how many of those rules are content rules (default 10)
#   BENCH_SECOND_MASK    mask.enabled of the cordond-nomask path (default false). With true and
#                        BENCH_RULES=N, the two daemons differ only in their rules: policy on vs off
#   BENCH_SECOND_RECORD  recording.enabled of the cordond-nomask path (default true). With
#                        BENCH_SECOND_MASK=true and false here: recording on vs off
#   BENCH_MICRO          0 skips the leaf micro-benchmark (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ "$(id -u)" -eq 0 ] || { echo "run-tls: run as root (cgroups, BPF)" >&2; exit 1; }
for tool in h2load nginx mitmdump g++ openssl; do
	command -v "$tool" >/dev/null || { echo "run-tls: $tool is missing" >&2; exit 1; }
done
for f in build/cordond build/cordonctl; do
	[ -x "$f" ] || { echo "run-tls: $f is missing: run make first" >&2; exit 1; }
done

ROUNDS=${BENCH_ROUNDS:-5}
DUR=${BENCH_DURATION:-4}
CLIENTS=${BENCH_CLIENTS:-8}
STREAMS=${BENCH_STREAMS:-8}
STREAM_BYTES=${BENCH_STREAM_BYTES:-$((1 << 30))}
MITM_STREAM_BYTES=${BENCH_MITM_STREAM_BYTES:-$STREAM_BYTES}
PATHS=${BENCH_PATHS:-direct cordond nginx mitmproxy}
LISTEN_PORT=${BENCH_LISTEN_PORT:-14888}
MICRO=${BENCH_MICRO:-1}
PAYLOAD=${BENCH_PAYLOAD:-random}
case $PAYLOAD in random | text) ;; *) echo "run-tls: BENCH_PAYLOAD must be random or text" >&2; exit 2 ;; esac

CAPTURED=127.88.3.1 # the upstream as cordond's capture target (port 443 captured)
NGINX_IP=127.88.3.2
MITM_IP=127.88.3.3
UPSTREAM=127.88.3.4 # the same upstream process, an address nobody captures
NOMASK_IP=127.88.3.5 # the upstream as cordond-nomask's capture target
# Both cordonds use this replacement (the default one, spelled out): it names the rule, so a
# masked response is a few bytes longer or shorter than the upstream's (visible in the byte
# counts) while both paths still carry practically the same bytes.
MASK_REPLACEMENT='[MASKED:{rule}]'
HOST=api2.cursor.sh
UNARY_URL=https://$HOST/aiserver.v1.AiService/AvailableModels
STREAM_URL=https://$HOST/aiserver.v1.AiService/StreamCpp
declare -A ADDR=([direct]=$UPSTREAM [cordond]=$CAPTURED [cordond-nomask]=$NOMASK_IP [nginx]=$NGINX_IP [mitmproxy]=$MITM_IP)
for p in $PATHS; do [ -n "${ADDR[$p]:-}" ] || { echo "run-tls: unknown path '$p'" >&2; exit 2; }; done

WORK=$(mktemp -d /tmp/cordon-bench-tls.XXXXXX)
chmod 755 "$WORK"
CG_MOUNT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
CG=/cordon-bench-tls-$$
PIN_DIR=/sys/fs/bpf/cordon-bench-tls-$$
SOCK=$WORK/control.sock
NOMASK_PIN_DIR=$PIN_DIR-nomask
NOMASK_SOCK=$WORK/control-nomask.sock
CORDOND_PID="" NOMASK_PID="" NGINX_PID="" MITM_PID="" UPSTREAM_PID=""
TICK=$(getconf CLK_TCK)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

cleanup() {
	set +e
	# The job cgroup first: no client outlives the run.
	if [ -d "$CG_MOUNT$CG/job" ]; then echo 1 > "$CG_MOUNT$CG/job/cgroup.kill"; fi 2>/dev/null
	local pid pin
	for pid in $CORDOND_PID $NOMASK_PID; do kill "$pid" 2>/dev/null; done
	for pid in $CORDOND_PID $NOMASK_PID; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	for pin in "$PIN_DIR" "$NOMASK_PIN_DIR"; do
		[ -d "$pin" ] && "$WORK/bin/cordonctl" --pin-dir "$pin" detach >/dev/null 2>&1
		[ -d "$pin" ] && "$ROOT/build/cordonctl" --pin-dir "$pin" detach >/dev/null 2>&1
	done
	for p in $MITM_PID $NGINX_PID $UPSTREAM_PID; do kill "$p" 2>/dev/null; done
	for p in $MITM_PID $NGINX_PID $UPSTREAM_PID; do wait "$p" 2>/dev/null; done
	for d in job daemon servers ""; do
		d=$CG_MOUNT$CG${d:+/$d}
		[ -d "$d" ] || continue
		echo 1 > "$d/cgroup.kill" 2>/dev/null
		for _ in $(seq 100); do [ -z "$(cat "$d/cgroup.procs" 2>/dev/null)" ] && break; sleep 0.05; done
		rmdir "$d" 2>/dev/null || echo "run-tls: could not remove cgroup $d" >&2
	done
	for pin in "$PIN_DIR" "$NOMASK_PIN_DIR"; do
		[ -d "$pin" ] && echo "run-tls: $pin is still there" >&2
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Runs a command in one of our cgroups, replacing the calling (sub)shell: call it with & or
# inside ( ), so that $! is the command's own pid.
in_cg() { local g=$1; shift; exec sh -c "echo \$\$ > '$CG_MOUNT$CG/$g/cgroup.procs' && exec \"\$@\"" in_cg "$@"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "nan" }'; }
job_cpu_us() { awk '$1 == "usage_usec" { print $2 }' "$CG_MOUNT$CG/job/cpu.stat"; }
cpu_ticks() { # utime+stime of the given pids (all their threads), in clock ticks
	local t=0 p v
	for p in "$@"; do
		v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || v=0
		t=$((t + ${v:-0}))
	done
	echo "$t"
}
proxy_pids() {
	case $1 in
	cordond) echo "$CORDOND_PID" ;;
	cordond-nomask) echo "$NOMASK_PID" ;;
	nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
	mitmproxy) echo "$MITM_PID" ;;
	*) echo "" ;;
	esac
}
wait_listen() { # addr port what
	for _ in $(seq 300); do
		[ -n "$(ss -Htln "src $1:$2")" ] && return 0
		sleep 0.05
	done
	echo "run-tls: $3 did not start listening on $1:$2" >&2
	return 1
}
journald_pid() { # the journald actually listening on the socket, if any
	"$PY" -c 'import socket; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect("/run/systemd/journal/socket")' \
		2>/dev/null && pgrep -x systemd-journal | head -1
	return 0
}

mkdir -p "$CG_MOUNT$CG/job" "$CG_MOUNT$CG/daemon" "$CG_MOUNT$CG/servers" "$WORK/bin"
# One binary for the whole run, even if the tree is rebuilt meanwhile.
cp build/cordond build/cordonctl "$WORK/bin/"
CORDOND_ID="build/cordond built $(date -u -r build/cordond +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$WORK/bin/cordond" | cut -c1-12), tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- userspace bpf include proto 2>/dev/null || echo ' + uncommitted changes under userspace/bpf/include/proto')"

# --- certificates, request bodies, the upstream ---------------------------------------------------
tests/standin/make-certs.sh "$WORK/certs" >/dev/null
CERTS=$WORK/certs
printf '\x00\x00\x00\x00\x00' > "$WORK/stream-request.bin" # one empty Connect message
g++ -O2 -std=c++20 -o "$WORK/bin/upstream" bench/tls/upstream.cc -lssl -lcrypto -lnghttp2
if [ "$PAYLOAD" = text ]; then # 1 KiB protobuf (field 1, 1021 bytes of code-like text, no secret)
	"$WORK/bin/upstream" --payload=text --request-body > "$WORK/unary.bin"
else # 1 KiB protobuf (field 1, 1021 random bytes)
	{ printf '\x0a\xfd\x07'; head -c 1021 /dev/urandom; } > "$WORK/unary.bin"
fi
in_cg servers "$WORK/bin/upstream" "--payload=$PAYLOAD" "$CERTS/standin.pem" "$CERTS/standin.key" \
	"$CAPTURED:443" "$UPSTREAM:443" "$NOMASK_IP:443" >> "$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
wait_listen "$UPSTREAM" 443 upstream
wait_listen "$CAPTURED" 443 upstream
wait_listen "$NOMASK_IP" 443 upstream

# --- cordond (and cordond-nomask) ---------------------------------------------------------------------
# Both enforce the same job cgroup (their programs are attached with BPF links, side by side); each
# captures only its own address and has its own listener, pins, control socket and state.
RULES=${BENCH_RULES:-0}
SECOND_MASK=${BENCH_SECOND_MASK:-false}
SECOND_RECORD=${BENCH_SECOND_RECORD:-true}
# N rules that each cost a full evaluation and never match, then one that always does.
bench_rules() { # count
	[ "$1" -gt 0 ] || return 0
	echo "rules:"
	local i content=$(($1 * ${BENCH_CONTENT_PERCENT:-10} / 100))
	for ((i = 0; i < $1 - 1; i++)); do
		if [ "$i" -lt "$content" ]; then
			printf '  - name: content-%d
    match:
      content: [{field: "", regex: "rm\\\\s+-rf\\\\s+/never-%d"}]
    action: block
' "$i" "$i"
		else
			printf '  - name: rule-%d
    match:
      cgroups: ["/system.slice/runner-%d.service/*"]
      rpcs: ["agent.v1.AgentService/*"]
    action: block
' "$i" "$i"
		fi
	done
	printf '  - name: everything-else
    match: {}
    action: allow
'
}
write_policy() { # file captured-ip port pin-dir socket state-dir mask-enabled [rules] [recording-enabled]
	cat > "$1" <<-YAML
	tls:
	  upstream_ca_file: $CERTS/ca.pem
	  missing_sni: refuse
	  non_target_sni: refuse
	capture:
	  hosts: ["*.cursor.sh"]
	  cidrs: ["$2/32"]
	  ports: [443]
	  quic_ports: [443]
	enforce:
	  cgroups: ["$CG/job"]
	  exempt_cgroups: []
	daemon:
	  listen_port: $3
	  pin_dir: $4
	  control_socket: $5
	  state_dir: $6
	  metrics_listen: "unix:$6/metrics.sock"
	  netns_listen: ""
	  dns_port: $(($3 + 100))
	mask:
	  enabled: $7
	  replacement: "$MASK_REPLACEMENT"
	recording:
	  enabled: ${9:-true}
	YAML
	bench_rules "${8:-0}" >> "$1"
}
wait_cordond() { # pid socket log: cordond compiles its masking rules first, which takes seconds
	local deadline=$((SECONDS + 30))
	until "$WORK/bin/cordonctl" --socket "$2" status >/dev/null 2>&1; do
		if ! kill -0 "$1" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
			echo "run-tls: cordond ($3) did not come up within 30 s:" >&2
			cat "$3" >&2
			exit 1
		fi
		sleep 0.1
	done
}
if [[ " $PATHS " == *" cordond "* ]]; then
	write_policy "$WORK/policy.yaml" "$CAPTURED" "$LISTEN_PORT" "$PIN_DIR" "$SOCK" "$WORK/state" true "$RULES"
	"$WORK/bin/cordond" --config "$WORK/policy.yaml" --cgroup "$CG/daemon" >> "$WORK/cordond.log" 2>&1 &
	CORDOND_PID=$!
fi
if [[ " $PATHS " == *" cordond-nomask "* ]]; then
	write_policy "$WORK/policy-nomask.yaml" "$NOMASK_IP" $((LISTEN_PORT + 1)) "$NOMASK_PIN_DIR" "$NOMASK_SOCK" \
		"$WORK/state-nomask" "$SECOND_MASK" 0 "$SECOND_RECORD"
	"$WORK/bin/cordond" --config "$WORK/policy-nomask.yaml" --cgroup "$CG/daemon" >> "$WORK/cordond-nomask.log" 2>&1 &
	NOMASK_PID=$!
fi
# Started together, waited for together: each compiles its rules on its own.
if [ -n "$CORDOND_PID" ]; then
	wait_cordond "$CORDOND_PID" "$SOCK" "$WORK/cordond.log"
	cp "$WORK/cordond.log" "$WORK/cordond-startup.log"
fi
if [ -n "$NOMASK_PID" ]; then
	wait_cordond "$NOMASK_PID" "$NOMASK_SOCK" "$WORK/cordond-nomask.log"
	cp "$WORK/cordond-nomask.log" "$WORK/cordond-nomask-startup.log"
fi

# --- nginx: 1 worker, TLS both ways, the upstream verified, one access-log line per request ---------
if [[ " $PATHS " == *" nginx "* ]]; then
	N=$WORK/nginx
	mkdir -p "$N"
	cat > "$N/nginx.conf" <<-CONF
	daemon off;
	master_process on;
	worker_processes 1;
	pid $N/nginx.pid;
	error_log $N/error.log warn;
	events { worker_connections 8192; }
	http {
	  access_log $N/access.log;
	  client_body_temp_path $N/body;
	  proxy_temp_path $N/proxy;
	  fastcgi_temp_path $N/fastcgi;
	  uwsgi_temp_path $N/uwsgi;
	  scgi_temp_path $N/scgi;
	  upstream cursor {
	    server $UPSTREAM:443;
	    keepalive 512;
	    keepalive_requests 1000000000;
	  }
	  server {
	    listen $NGINX_IP:443 ssl http2;
	    server_name $HOST;
	    ssl_certificate $CERTS/standin.pem;
	    ssl_certificate_key $CERTS/standin.key;
	    ssl_protocols TLSv1.2 TLSv1.3; # 1.22's default stops at TLS 1.2; the others speak 1.3
	    keepalive_requests 1000000000;
	    http2_max_concurrent_streams 256;
	    location / {
	      proxy_pass https://cursor;
	      proxy_http_version 1.1;
	      proxy_set_header Connection "";
	      proxy_set_header Host \$host;
	      proxy_ssl_server_name on;
	      proxy_ssl_name $HOST;
	      proxy_ssl_verify on;
	      proxy_ssl_trusted_certificate $CERTS/ca.pem;
	      proxy_ssl_session_reuse on;
	      proxy_buffering off;
	      proxy_buffer_size 64k;
	      proxy_buffers 4 64k;
	      proxy_busy_buffers_size 128k;
	    }
	  }
	}
	CONF
	in_cg servers nginx -e "$N/error.log" -p "$N" -c "$N/nginx.conf" >> "$N/out.log" 2>&1 &
	NGINX_PID=$!
	wait_listen "$NGINX_IP" 443 nginx || { cat "$N/out.log" "$N/error.log" >&2; exit 1; }
fi

# --- mitmproxy: reverse mode, leaves minted from the test CA, the upstream verified ---------------
if [[ " $PATHS " == *" mitmproxy "* ]]; then
	M=$WORK/mitm
	mkdir -p "$M/home"
	cat "$CERTS/ca.key" "$CERTS/ca.pem" > "$M/mitmproxy-ca.pem" # the CA it mints leaves from
	# connection_strategy=lazy: connect upstream after the ClientHello, so the upstream SNI is
	# the client's (api2.cursor.sh) and the certificate check is by name, not by IP.
	HOME=$M/home in_cg servers mitmdump --mode "reverse:https://$UPSTREAM:443" \
		--listen-host "$MITM_IP" --listen-port 443 --set confdir="$M" \
		--set keep_host_header=true --set connection_strategy=lazy \
		--set ssl_verify_upstream_trusted_ca="$CERTS/ca.pem" --set stream_large_bodies=1m \
		>> "$M/out.log" 2>&1 &
	MITM_PID=$!
	wait_listen "$MITM_IP" 443 mitmproxy || { cat "$M/out.log" >&2; exit 1; }
fi

# --- one measurement ---------------------------------------------------------------------------------
declare -A R # R[path,metric] = space-separated values, one per round
declare -A CIPHER # what h2load negotiated on each path
NOTES=()
record() { R[$1,$2]+="$3 "; }
h2_common() { # path -> h2load arguments shared by every run
	echo "-t 1 --connect-to=${ADDR[$1]}:443 -H connect-protocol-version:1"
}
h2_ok() { # h2load output file -> 0 if every request succeeded
	# (h2load -D may stop with a last request counted as done but without its status: tolerated.)
	awk '/^requests:/ { done = $6; ok = $8; failed = $10; errored = $12 }
	     /^status codes:/ { s2 = $3; s3 = $5; s4 = $7; s5 = $9 }
	     END { exit !(ok > 0 && ok == done && failed == 0 && errored == 0 && s3 + s4 + s5 == 0 && s2 > 0) }' "$1"
}
reset_logs() { # each measurement starts with empty logs (all opened for appending), so a failure shows its own
	local f
	for f in "$WORK/upstream.log" "$WORK/cordond.log" "$WORK/cordond-nomask.log" "$WORK/nginx/access.log" "$WORK/nginx/error.log" "$WORK/mitm/out.log"; do
		if [ -f "$f" ]; then : > "$f"; fi
	done
}
fail_note() { # path what output-file (never fails itself)
	local why logs=""
	why=$({ grep -E '^(requests|status codes):' "$3"; tail -n 3 "$3"; } 2>/dev/null | tr '\n' ' ' || true)
	case $1 in
	cordond | cordond-nomask)
		logs=$(grep -v 'CORDON_EVENT=request\|CORDON_EVENT=connection' "$WORK/$1.log" 2>/dev/null | tail -c 600 | tr '\n' ' ' || true) ;;
	nginx) logs=$(tail -n 4 "$WORK/nginx/error.log" 2>/dev/null | cut -c1-300 | tr '\n' ' ' || true) ;;
	mitmproxy) logs=$(grep -F '<<' "$WORK/mitm/out.log" 2>/dev/null | grep -v ' 200 OK' | sed 's/^ *//' |
		sort | uniq -c | sort -rn | head -n 6 | cut -c1-200 | tr '\n' ' ' || true) ;;
	esac
	logs+=$(tail -n 5 "$WORK/upstream.log" 2>/dev/null | sed 's/^/ upstream: /' | tr '\n' ' ' || true)
	NOTES+=("$1 $2 failed (round $r): $why${logs:+ — $1 log: $logs}")
	return 0
}

is_cordond() { [ "$1" = cordond ] || [ "$1" = cordond-nomask ]; }
masked_since() { # path epoch-seconds -> "MASKED REQUESTS": secrets cordond masked (the sum of
	# CORDON_MASKED; 0 where masking is off) in the requests it journaled since then, and how many
	# requests that was. Its stderr log when no journald listens (emptied before each
	# measurement), else the journal.
	local log=$WORK/$1.log
	if grep -q 'CORDON_EVENT=request' "$log" 2>/dev/null; then
		grep 'CORDON_EVENT=request' "$log" |
			awk '{ r++; if (match($0, / CORDON_MASKED=[0-9]+/)) n += substr($0, RSTART + 15, RLENGTH - 15) }
			     END { print n + 0, r + 0 }'
	elif [ -n "$(journald_pid)" ] && command -v journalctl >/dev/null; then
		journalctl --no-pager -q -o export "_PID=$(proxy_pids "$1")" CORDON_EVENT=request --since "@$2" 2>/dev/null |
			awk '/^CORDON_EVENT=request$/ { r++ } /^CORDON_MASKED=/ { n += substr($0, 15) } END { print n + 0, r + 0 }'
	else
		echo "— —"
	fi
	return 0
}
declare -A MASK_RULES # path -> rule ids cordond named in its journal entries
note_rules() { # path
	local ids
	ids=$(grep -o 'CORDON_MASK_RULES=[^ ]*' "$WORK/$1.log" 2>/dev/null | cut -d= -f2 | tr ',' '\n' | sort -u | tr '\n' ' ' || true)
	# shellcheck disable=SC2086 # one id per word
	[ -n "$ids" ] && MASK_RULES[$1]=$(printf '%s\n' ${MASK_RULES[$1]:-} $ids | sort -u | tr '\n' ' ')
	return 0
}
secrets_for() { # stream bytes -> "COUNT MASKED SLACK" (text payload): the secrets the upstream sends in
	# such a stream, the body size if cordond replaces each, the most masking could change the size
	local rule len n repl count=0 masked=0 slack=0
	while read -r rule len n; do
		if [ "$rule" = "=" ]; then masked=$len; continue; fi
		repl=${MASK_REPLACEMENT//\{rule\}/$rule}
		count=$((count + n)) slack=$((slack + n * (${#repl} + len + 1)))
	done < <("$WORK/bin/upstream" --payload=text "--replacement=$MASK_REPLACEMENT" --secrets $(($1 / 16384)))
	echo "$count $masked $slack"
}

unary() { # path kind(latency|load)
	local path=$1 kind=$2 c=1 m=1 out log pids c1 c2 t1 t2 h t0 mk nr
	[ "$kind" = load ] && c=$CLIENTS m=$STREAMS
	out=$WORK/h2load.out log=$WORK/h2load.log
	rm -f "$out" "$log" # h2load appends to its log file
	pids=$(proxy_pids "$path")
	reset_logs
	t0=$(date +%s)
	# shellcheck disable=SC2046
	in_cg job timeout $((DUR + 60)) h2load $(h2_common "$path") -c "$c" -m "$m" -D "$DUR" --warm-up-time 1 \
		-d "$WORK/unary.bin" -H content-type:application/proto --log-file="$log" "$UNARY_URL" > "$out" 2>&1 &
	h=$!
	# Proxy CPU over the measured part only: sample after the warm-up and before the end, and
	# count the requests that started in between (the log has each request's start time).
	sleep 1.25
	c1=$(cpu_ticks $pids) t1=$(date +%s%6N)
	sleep "$(awk -v d="$DUR" 'BEGIN { print d - 0.5 }')"
	c2=$(cpu_ticks $pids) t2=$(date +%s%6N)
	wait "$h" || true
	if ! h2_ok "$out"; then
		fail_note "$path" "unary $kind" "$out"
		return 0
	fi
	record "$path" "$kind-rps" "$(awk '/^finished in/ { print $4 }' "$out")"
	if is_cordond "$path" && [ "$kind" = load ]; then
		read -r mk nr <<< "$(masked_since "$path" "$t0")"
		record "$path" load-masked "$mk"
		record "$path" load-journaled "$nr"
		note_rules "$path"
	fi
	record "$path" "$kind-p50" "$(cut -f3 "$log" | sort -n | awk '{ v[NR] = $1 } END { print v[int(NR * 0.50 + 0.999999)] }')"
	record "$path" "$kind-p99" "$(cut -f3 "$log" | sort -n | awk '{ v[NR] = $1 } END { print v[int(NR * 0.99 + 0.999999)] }')"
	if [ -n "$pids" ]; then
		record "$path" "$kind-cpu-us" "$(awk -v a="$t1" -v b="$t2" -v dc=$((c2 - c1)) -v tick="$TICK" \
			'$1 >= a && $1 < b { n++ } END { printf "%.1f", n ? dc * 1e6 / tick / n : 0 }' "$log")"
	fi
}

stream() { # path
	local path=$1 bytes=$STREAM_BYTES out log pids c1 c2 u1 u2 k1 k2 j1=0 j2=0 jp data dur expect t0 ok=1 ss mk
	[ "$path" = mitmproxy ] && bytes=$MITM_STREAM_BYTES
	out=$WORK/h2load.out log=$WORK/h2load.log
	rm -f "$out" "$log"
	pids=$(proxy_pids "$path")
	jp=""
	is_cordond "$path" && jp=$(journald_pid)
	reset_logs
	t0=$(date +%s)
	c1=$(cpu_ticks $pids) u1=$(cpu_ticks "$UPSTREAM_PID") k1=$(job_cpu_us)
	[ -n "$jp" ] && j1=$(cpu_ticks "$jp")
	# shellcheck disable=SC2046
	(in_cg job timeout 900 h2load $(h2_common "$path") -n 1 -c 1 -m 1 -d "$WORK/stream-request.bin" \
		-H content-type:application/connect+proto -H "x-bench-bytes:$bytes" --log-file="$log" \
		"$STREAM_URL" > "$out" 2>&1) || true
	c2=$(cpu_ticks $pids) u2=$(cpu_ticks "$UPSTREAM_PID") k2=$(job_cpu_us)
	[ -n "$jp" ] && j2=$(cpu_ticks "$jp")
	data=$(sed -n 's/^traffic:.*(\([0-9]*\)) data.*/\1/p' "$out")
	expect=$(( bytes / 16384 * 16389 + 7 ))
	h2_ok "$out" || ok=0
	if [ "$PAYLOAD" = text ]; then
		# Masking changes sizes: every request 2xx, the stream complete, and the size off by no
		# more than replacing every secret could make it (a stream cut short, or ended with an
		# error, misses at least a message).
		read -r _ _ ss <<< "$(secrets_for "$bytes")"
		[ "${data:-0}" -ge $((expect - ss)) ] && [ "${data:-0}" -le $((expect + ss)) ] || ok=0
	else
		[ "${data:-0}" = "$expect" ] || ok=0
	fi
	if [ "$ok" = 0 ]; then
		fail_note "$path" "stream (got ${data:-0} of $expect body bytes)" "$out"
		return 0
	fi
	if is_cordond "$path"; then
		read -r mk _ <<< "$(masked_since "$path" "$t0")"
		record "$path" stream-masked "$mk"
		note_rules "$path"
	fi
	dur=$(awk -F"\t" "NR == 1 { print \$3 }" "$log")
	record "$path" stream-gbps "$(awk -v b="$data" -v d="$dur" 'BEGIN { printf "%.3f", b / d / 1000 }')"
	record "$path" stream-bytes "$data"
	record "$path" client-cpu "$(awk -v c=$((k2 - k1)) -v b="$data" 'BEGIN { printf "%.3f", c / 1e6 / (b / 1e9) }')"
	CIPHER[$path]=$(awk -F': ' '/^Cipher:/ { c = $2 } /^Application protocol:/ { a = $2 } END { print c ", " a }' "$out")
	record "$path" upstream-cpu "$(awk -v c=$((u2 - u1)) -v b="$data" -v t="$TICK" 'BEGIN { printf "%.3f", c / t / (b / 1e9) }')"
	if [ -n "$pids" ]; then
		record "$path" stream-cpu "$(awk -v c=$((c2 - c1)) -v b="$data" -v t="$TICK" 'BEGIN { printf "%.3f", c / t / (b / 1e9) }')"
		record "$path" stream-busy "$(awk -v c=$((c2 - c1)) -v d="$dur" -v t="$TICK" 'BEGIN { printf "%.2f", c / t / (d / 1e6) }')"
	fi
	[ -n "$jp" ] && record "$path" journald-cpu "$(awk -v c=$((j2 - j1)) -v t="$TICK" 'BEGIN { printf "%.2f", c / t }')"
	return 0
}

# --- the rounds ----------------------------------------------------------------------------------------
read -r -a PATH_LIST <<< "$PATHS"
NP=${#PATH_LIST[@]}
JOURNAL_AT_START=$(journald_pid)
START=$(date +%s)
for r in $(seq "$ROUNDS"); do
	for i in $(seq 0 $((NP - 1))); do
		path=${PATH_LIST[$(( (i + r - 1) % NP ))]}
		echo "run-tls: round $r/$ROUNDS: $path" >&2
		unary "$path" latency
		unary "$path" load
		stream "$path"
	done
done
ELAPSED=$(( $(date +%s) - START ))

# Did cordond really intercept? Its status counts requests; the journal/stderr has them too.
CORDON_STATUS=""
if [ -n "$CORDOND_PID" ] && "$WORK/bin/cordonctl" --socket "$SOCK" status --json > "$WORK/status.json" 2>/dev/null; then
	CORDON_STATUS=$WORK/status.json
fi
NOMASK_STATUS=""
if [ -n "$NOMASK_PID" ] &&
	"$WORK/bin/cordonctl" --socket "$NOMASK_SOCK" status --json > "$WORK/status-nomask.json" 2>/dev/null; then
	NOMASK_STATUS=$WORK/status-nomask.json
fi

# --- leaf micro-benchmark -----------------------------------------------------------------------------
MICRO_JSON=""
if [ "$MICRO" = 1 ] && [ -x build/cordon-microbench ]; then
	echo "run-tls: leaf micro-benchmark" >&2
	build/cordon-microbench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
		--benchmark_format=json > "$WORK/micro.json" 2> "$WORK/micro.err" && MICRO_JSON=$WORK/micro.json
fi

# --- tables ----------------------------------------------------------------------------------------------
med() { echo "${R[$1,$2]:-}" | tr ' ' '\n' | awk NF | median; }
vals() { local v=${R[$1,$2]:-—}; echo "${v% }"; } # the per-round values
has() { [[ " $PATHS " == *" $1 "* ]]; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "nan" || v == "") print "—"; else printf f "\n", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || a == "" || b == "" || b == 0) print "—"; else printf "%.2f\n", a / b }'; }

echo "# cordon TLS bench (issue #3) — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r)"
echo
echo "Command: \`bench/run-tls.sh\` (BENCH_ROUNDS=$ROUNDS BENCH_DURATION=$DUR BENCH_CLIENTS=$CLIENTS BENCH_STREAMS=$STREAMS BENCH_STREAM_BYTES=$STREAM_BYTES BENCH_MITM_STREAM_BYTES=$MITM_STREAM_BYTES BENCH_PATHS=\"$PATHS\" BENCH_PAYLOAD=$PAYLOAD), $ELAPSED s."
echo "Medians of $ROUNDS rounds; within a round every path runs the same three workloads, and the order of the paths rotates from round to round."
echo
echo "- **Upstream**: \`bench/tls/upstream.cc\` (one thread, epoll, OpenSSL $(openssl version | awk '{print $2}'), nghttp2 $(h2load --version | awk '{print $2}' | sed 's/.*\///'); HTTP/2 and HTTP/1.1), certificate for $HOST from a test CA (\`tests/standin/make-certs.sh\`). Not the Node stand-in: that one is a real Connect server but too slow to show a proxy's cost."
echo "- **Client**: h2load $(h2load --version | awk '{print $2}' | sed 's/.*\///'), one thread, inside a temporary cgroup that cordond enforces; \`--connect-to\` picks the path, SNI and :authority are always $HOST."
echo "- **direct**: h2load → upstream ($UPSTREAM:443)."
echo "- **cordond**: h2load → $CAPTURED:443 (captured) → kernel redirect → cordond (leaf from cordon's CA, HTTP/2 + Connect parsed, secrets masked with the built-in rules, replacement \`$MASK_REPLACEMENT\`, one journal entry per request, upstream verified with \`tls.upstream_ca_file\`) → upstream. Binary (copied at the start): $CORDOND_ID."
if has cordond-nomask; then
	echo "- **cordond-nomask**: the same binary as a second daemon with the same policy but \`mask: enabled: false\`: h2load → $NOMASK_IP:443 (captured by it only) → its own listener (port $((LISTEN_PORT + 1))) → upstream. Both daemons enforce the same job cgroup side by side (BPF links), and both run throughout, so each measurement of one has the other idle beside it."
fi
if [ "$PAYLOAD" = text ]; then
	echo "- **Payload**: text. Every body's protobuf field 1 (same sizes as below) is code-like ASCII text (C++, Python, YAML, JSON lines, generated deterministically by the upstream); the stream cycles through 64 different 16 KiB messages (1 MiB) holding one AWS access key id and one GitHub token, the unary responses through 1024 different 1 KiB bodies of the same text (so about one response in 512 holds a secret); the 1 KiB request body is text without secrets. A masking proxy scans every field of every message, both ways."
else
	echo "- **Payload**: random. Every body's protobuf field 1 is pseudo-random bytes (not UTF-8): a masking proxy finds no text in it to scan."
fi
echo "- **nginx**: $(nginx -v 2>&1 | sed 's/.*: //'), 1 worker, TLS-terminating reverse proxy on $NGINX_IP:443: HTTP/2 to the client, HTTP/1.1 over TLS with certificate verification and keep-alive to the upstream, \`proxy_buffering off\`, an access-log line per request."
echo "- **mitmproxy**: mitmdump $(mitmdump --version 2>/dev/null | awk '/^Mitmproxy/ {print $2}') in reverse mode on $MITM_IP:443, intercepting TLS with leaves minted from the test CA, HTTP/2 both ways, upstream verified, \`stream_large_bodies=1m\`, default flow logging."
echo "- **TLS as negotiated by h2load** (cipher, ALPN): $(for p in $PATHS; do printf '%s: %s; ' "$p" "${CIPHER[$p]:-?}"; done | sed 's/; $//')."
if [ -n "$JOURNAL_AT_START" ]; then
	echo "- **Journal**: a journald was listening (pid $JOURNAL_AT_START): cordond's entries went to it. Its CPU is not in cordond's figures; see below."
else
	echo "- **Journal**: no journald was listening, so cordond wrote its entries (one per request) to stderr, a file."
fi

echo
echo "## Unary Connect calls, 1 KiB each way — 1 connection, 1 stream (latency)"
echo
echo "| path | requests/s | p50 µs | p99 µs | p50 added over direct | requests/s vs direct |"
echo "|---|---:|---:|---:|---:|---:|"
d50=$(med direct latency-p50) drps=$(med direct latency-rps)
for p in $PATHS; do
	p50=$(med "$p" latency-p50) p99=$(med "$p" latency-p99) rps=$(med "$p" latency-rps)
	add=$(awk -v a="$p50" -v d="$d50" 'BEGIN { if (a == "nan" || d == "nan") print "—"; else printf "%+.0f µs\n", a - d }')
	[ "$p" = direct ] && add="—"
	echo "| $p | $(fmt "$rps" %.0f) | $(fmt "$p50" %.0f) | $(fmt "$p99" %.0f) | $add | $(ratio "$rps" "$drps") |"
done

echo
echo "## Unary Connect calls, 1 KiB each way — $CLIENTS connections × $STREAMS streams (load)"
echo
echo "| path | requests/s | p50 µs | p99 µs | requests/s vs direct | proxy CPU µs per request |"
echo "|---|---:|---:|---:|---:|---:|"
drps=$(med direct load-rps)
for p in $PATHS; do
	rps=$(med "$p" load-rps) p50=$(med "$p" load-p50) p99=$(med "$p" load-p99) cpu=$(med "$p" load-cpu-us)
	echo "| $p | $(fmt "$rps" %.0f) | $(fmt "$p50" %.0f) | $(fmt "$p99" %.0f) | $(ratio "$rps" "$drps") | $([ "$p" = direct ] && echo — || fmt "$cpu" %.1f) |"
done

echo
echo "## One Connect server stream: $((STREAM_BYTES >> 20)) MiB in 16 KiB messages, one connection"
echo
echo "| path | GB/s | vs direct | proxy CPU s per GB | GB per proxy CPU-second | proxy cores busy | client CPU s per GB | upstream CPU s per GB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
dg=$(med direct stream-gbps)
for p in $PATHS; do
	g=$(med "$p" stream-gbps) c=$(med "$p" stream-cpu) u=$(med "$p" upstream-cpu) busy=$(med "$p" stream-busy) k=$(med "$p" client-cpu)
	label=$p
	if [ "$p" = mitmproxy ] && [ "$MITM_STREAM_BYTES" != "$STREAM_BYTES" ]; then
		label="mitmproxy ($((MITM_STREAM_BYTES >> 20)) MiB)"
	fi
	per=$(awk -v c="$c" 'BEGIN { if (c == "nan" || c == 0) print "—"; else printf "%.2f\n", 1 / c }')
	if [ "$p" = direct ]; then c=nan per="—" busy=nan; fi
	echo "| $label | $(fmt "$g" %.2f) | $(ratio "$g" "$dg") | $(fmt "$c" %.3f) | $per | $(fmt "$busy" %.2f) | $(fmt "$k" %.3f) | $(fmt "$u" %.3f) |"
done
echo
echo "GB = 10⁹ bytes of response body (Connect envelopes). CPU is utime+stime of the proxy's processes (nginx: master + worker) from /proc/<pid>/stat over the transfer; softirq work on loopback is charged to whichever process it interrupts, so it is approximate. \"Proxy cores busy\" is proxy CPU seconds per second of transfer: well below 1, the proxy was not what limited the rate. The client (h2load, from its cgroup's cpu.stat) and upstream columns are the two ends' own costs, for scale: three busy processes share $(nproc) cores."
echo
echo "Body bytes received per stream (median): $(for p in $PATHS; do printf '%s %s; ' "$p" "$(fmt "$(med "$p" stream-bytes)" %.0f)"; done | sed 's/; $//')."
for p in cordond cordond-nomask; do
	if has "$p" && [ -n "${R[$p,journald-cpu]:-}" ]; then
		echo "journald CPU during $p's streaming runs (s, per round): ${R[$p,journald-cpu]}"
	fi
done

if has cordond && has cordond-nomask; then
	echo
	echo "## Masking on vs off (same run)"
	echo
	echo "cordond (masking on) against cordond-nomask (the same binary and policy with \`mask: enabled: false\`), both measured in every round, $PAYLOAD payload. Medians as above; \"on − off\" is what masking adds."
	echo
	echo "| metric | better | masking on | masking off | on − off | on / off |"
	echo "|---|---|---:|---:|---:|---:|"
	for m in "latency-p50:unary p50 µs, 1×1:lower:%.0f" "latency-p99:unary p99 µs, 1×1:lower:%.0f" \
		"latency-rps:unary requests/s, 1×1:higher:%.0f" \
		"load-rps:unary requests/s, ${CLIENTS}×${STREAMS}:higher:%.0f" "load-p50:unary p50 µs, ${CLIENTS}×${STREAMS}:lower:%.0f" \
		"load-p99:unary p99 µs, ${CLIENTS}×${STREAMS}:lower:%.0f" \
		"load-cpu-us:proxy CPU µs per request, ${CLIENTS}×${STREAMS}:lower:%.1f" \
		"stream-gbps:stream GB/s:higher:%.2f" "stream-cpu:proxy CPU s per GB (stream):lower:%.3f" \
		"stream-busy:proxy cores busy (stream):lower:%.2f"; do
		IFS=: read -r key label better f <<< "$m"
		on=$(med cordond "$key") off=$(med cordond-nomask "$key")
		diff=$(awk -v a="$on" -v b="$off" -v f="$f" 'BEGIN { if (a == "nan" || b == "nan") print "—"; else printf "%+" substr(f, 2) "\n", a - b }')
		echo "| $label | $better | $(fmt "$on" "$f") | $(fmt "$off" "$f") | $diff | $(ratio "$on" "$off") |"
	done
	echo
	son=$(med cordond stream-bytes) soff=$(med cordond-nomask stream-bytes)
	sent=$(( STREAM_BYTES / 16384 * 16389 + 7 ))
	if [ "$PAYLOAD" = text ]; then
		read -r sc sd _ <<< "$(secrets_for "$STREAM_BYTES")"
		echo "- Stream body bytes received (median): masking on $(fmt "$son" %.0f), off $(fmt "$soff" %.0f); the upstream sent $sent, with $sc secrets in it. With every secret replaced by \`$MASK_REPLACEMENT\` (and the messages re-encoded), the stream is $sd bytes ($(printf '%+d' $((sd - sent)))): masking on $([ "$son" = "$sd" ] && echo "matches it exactly" || echo "does NOT match it"). GB/s and CPU per GB use the bytes received."
		echo "- Secrets masked per stream (journal entries' CORDON_MASKED, per round; $sc sent): cordond $(vals cordond stream-masked); cordond-nomask $(vals cordond-nomask stream-masked)."
		echo "- Secrets masked per unary load run (per round; about one response in 512 carries one): cordond $(vals cordond load-masked) in $(vals cordond load-journaled) journaled requests; cordond-nomask $(vals cordond-nomask load-masked) in $(vals cordond-nomask load-journaled)."
		r1=${MASK_RULES[cordond]:-none} r2=${MASK_RULES[cordond-nomask]:-none}
		echo "- Rules that fired (journal CORDON_MASK_RULES): cordond: ${r1% }; cordond-nomask: ${r2% }."
	else
		echo "- Stream body bytes received (median): masking on $(fmt "$son" %.0f), off $(fmt "$soff" %.0f) (sent: $sent). The random payload has no text, so masking only inspects the messages (\`BENCH_PAYLOAD=text\` makes it scan and rewrite)."
		echo "- Secrets masked per stream / per unary load run (cordond, per round): $(vals cordond stream-masked) / $(vals cordond load-masked)."
	fi
	echo "- Both daemons' startup (rules compiled before the listener opens): $(for p in cordond cordond-nomask; do printf '%s: %s; ' "$p" "$(grep -o 'masking [0-9]* secret rules[^"]*\|masking is off[^"]*' "$WORK/$p-startup.log" 2>/dev/null | head -1 | cut -c1-100 || true)"; done | sed 's/; $//')."
fi

if has cordond; then
	echo
	echo "## cordond against the others (ratios of medians)"
	echo
	echo "| metric | better | cordond / direct | cordond / nginx | cordond / mitmproxy |"
	echo "|---|---|---:|---:|---:|"
	for m in "latency-p50:unary p50 latency, 1×1:lower" "latency-p99:unary p99 latency, 1×1:lower" \
		"load-rps:unary requests/s, ${CLIENTS}×${STREAMS}:higher" "load-p50:unary p50 latency, ${CLIENTS}×${STREAMS}:lower" \
		"load-cpu-us:proxy CPU per request, ${CLIENTS}×${STREAMS}:lower" \
		"stream-gbps:stream GB/s:higher" "stream-cpu:proxy CPU s per GB:lower"; do
		IFS=: read -r key label better <<< "$m"
		cv=$(med cordond "$key")
		row="| $label | $better | "
		for o in direct nginx mitmproxy; do
			if has "$o" && [ -n "${R[$o,$key]:-}" ]; then row+="$(ratio "$cv" "$(med "$o" "$key")") | "; else row+="— | "; fi
		done
		echo "$row"
	done

	echo
	echo "## Goals (issue #3)"
	echo
	echo "| goal | measured | met |"
	echo "|---|---|---|"
	c50=$(med cordond latency-p50) d50=$(med direct latency-p50)
	awk -v c="$c50" -v d="$d50" 'BEGIN { if (c == "nan" || d == "nan") { print "| cordond adds ≤ 100 µs p50 over direct | — | — |"; exit }
		printf "| cordond adds ≤ 100 µs p50 over direct | %+.0f µs (%.0f vs %.0f µs) | %s |\n", c - d, c, d, (c - d <= 100 ? "yes" : "no") }'
	for o in nginx mitmproxy; do
		has "$o" || continue
		awk -v o="$o" -v cl="$c50" -v ol="$(med "$o" latency-p50)" -v cr="$(med cordond load-rps)" -v or="$(med "$o" load-rps)" \
			-v cg="$(med cordond stream-gbps)" -v og="$(med "$o" stream-gbps)" '
			function row(what, c, x, f, unit, lower) {
				if (c == "nan" || x == "nan") { printf "| ahead of %s on %s | — | — |\n", o, what; return }
				printf "| ahead of %s on %s | " f " vs " f " %s | %s |\n", o, what, c, x, unit, ((lower ? c < x : c > x) ? "yes" : "no")
			}
			BEGIN {
				row("latency (unary p50, 1×1)", cl, ol, "%.0f", "µs", 1)
				row("throughput (unary requests/s, load)", cr, or, "%.0f", "requests/s", 0)
				row("throughput (stream)", cg, og, "%.2f", "GB/s", 0)
			}'
	done
	awk -v c="$(med cordond stream-cpu)" 'BEGIN { if (c == "nan" || c == 0) { print "| streams ≥ 1 GB/s per proxy core | — | — |"; exit }
		printf "| streams ≥ 1 GB/s per proxy core | %.2f GB per CPU-second (%.3f CPU s per GB) | %s |\n", 1 / c, c, (1 / c >= 1 ? "yes" : "no") }'
	if [ -n "$MICRO_JSON" ]; then
		"$PY" - "$MICRO_JSON" <<-'PY' || true
		import json, sys
		b = {x["run_name"]: x for x in json.load(open(sys.argv[1]))["benchmarks"] if x.get("aggregate_name") == "median"}
		scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
		def us(name):
		    x = b.get(name)
		    return None if x is None else x["real_time"] * scale[x["time_unit"]]
		mint, hit = us("BM_MintLeaf"), us("BM_CacheHit/real_time/threads:1")
		if mint is not None:
		    print(f"| leaf minting ≤ 1 ms | {mint:.0f} µs | {'yes' if mint <= 1000 else 'no'} |")
		if hit is not None:
		    print(f"| leaf cache hit ≤ 5 µs | {hit * 1000:.0f} ns | {'yes' if hit <= 5 else 'no'} |")
		PY
	fi
fi

if [ -n "$MICRO_JSON" ]; then
	echo
	echo "## Leaf certificates (build/cordon-microbench, Google Benchmark, median of 5 repetitions)"
	echo
	"$PY" - "$MICRO_JSON" <<-'PY' || true
	import json, sys
	d = json.load(open(sys.argv[1]))
	print("| benchmark | wall time | CPU time |")
	print("|---|---:|---:|")
	for x in d["benchmarks"]:
	    if x.get("aggregate_name") != "median":
	        continue
	    u = x["time_unit"]
	    print(f"| {x['run_name']} | {x['real_time']:.3g} {u} | {x['cpu_time']:.3g} {u} |")
	PY
elif [ "$MICRO" = 1 ]; then
	echo
	echo "Leaf micro-benchmark skipped: build/cordon-microbench is not built (\`make build/cordon-microbench\`)."
fi

echo
echo "## Per-round values"
echo
echo "| path | 1×1 p50 µs | ${CLIENTS}×${STREAMS} requests/s | stream GB/s | proxy CPU s per GB | stream bytes received |"
echo "|---|---|---|---|---|---|"
for p in $PATHS; do
	echo "| $p | ${R[$p,latency-p50]:-—} | ${R[$p,load-rps]:-—} | ${R[$p,stream-gbps]:-—} | ${R[$p,stream-cpu]:-—} | ${R[$p,stream-bytes]:-—} |"
done

for st in "cordond:$CORDON_STATUS" "cordond-nomask:$NOMASK_STATUS"; do
	[ -n "${st#*:}" ] || continue
	echo
	"$PY" - "${st%%:*}" "${st#*:}" <<-'PY' 2>/dev/null || true
	import json, sys
	s = json.load(open(sys.argv[2]))
	flat = {}
	def walk(p, v):
	    if isinstance(v, dict):
	        for k, x in v.items(): walk(p + [k], x)
	    elif isinstance(v, (int, float)) and not isinstance(v, bool):
	        flat[".".join(p)] = v
	walk([], s)
	keys = [k for k in flat if k.split(".")[-1] in ("requests", "redirected", "accepted", "intercepted", "closed", "upstream_failed", "dropped") or "mask" in k]
	print(f"{sys.argv[1]}'s own counters at the end: " + ", ".join(f"{k} = {flat[k]}" for k in sorted(keys)))
	PY
done

# What the recordings cost on disk: the store's size after every round (compare with the stream
# bytes and the requests above; logs are reset per measurement, so traffic is not summed here).
echo
echo "## Recordings"
echo
echo "| path | recording | store bytes after all rounds |"
echo "|---|---|---:|"
for pd in "cordond:$WORK/state" "cordond-nomask:$WORK/state-nomask"; do
	name=${pd%%:*} state=${pd#*:}
	[[ " $PATHS " == *" $name "* ]] || continue
	store=$(du -sb "$state/recordings" 2>/dev/null | cut -f1 || true)
	echo "| $name | $([ -d "$state/recordings" ] && echo on || echo off) | ${store:-0} |"
done

if [ ${#NOTES[@]} -gt 0 ]; then
	echo
	echo "## Failures"
	echo
	for n in "${NOTES[@]}"; do echo "- $n"; done
fi
