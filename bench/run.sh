#!/usr/bin/env bash
# make bench: cordon's data path measured side by side in one run, printed as Markdown tables.
# Everything runs on loopback addresses in 127.88.0.0/24; the clients run in a temporary enforced
# cgroup, exactly where a CI job would be. Machines here are shared and noisy: read the ratios.
#
#   BENCH_ROUNDS   rounds of the alternating measurements (default 3); medians are reported
#   BENCH_BYTES    bytes per bulk transfer (default 4 GiB)
#   BENCH_HOLD     idle connections for the RSS measurement (default 10000)
#   BENCH_ONLY     run only these sections: any of "connect relay memory" (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$PWD/build
B=$BUILD/cordon-bench
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root" >&2; exit 1; }
ROUNDS=${BENCH_ROUNDS:-3}
BYTES=${BENCH_BYTES:-$((4 << 30))}
HOLD=${BENCH_HOLD:-10000}
ONLY=${BENCH_ONLY:-connect relay memory}
section() { [[ " $ONLY " == *" $1 "* ]]; }
# A relay holds two descriptors per connection; where the hard limit cannot be raised (no
# CAP_SYS_RESOURCE), hold as many as fit and say so.
FD_HARD=$(ulimit -Hn)
if [ "$FD_HARD" != unlimited ] && [ $(( (FD_HARD - 256) / 2 )) -lt "$HOLD" ]; then
	if ! prlimit --pid $$ --nofile=$((2 * HOLD + 1024)):$((2 * HOLD + 1024)) 2>/dev/null; then
		HOLD_NOTE="(the open-file hard limit here is $FD_HARD and cannot be raised, so $(( (FD_HARD - 256) / 2 - 100 )) instead of $HOLD)"
		HOLD=$(( (FD_HARD - 256) / 2 - 100 ))
	fi
fi

TARGET=127.88.0.1      # the "Cursor" host: captured on port 443
OTHER=127.88.0.3       # a non-target host on the same port
RELAYS=127.88.0.2      # haproxy :9001, socat :9002
WORK=$(mktemp -d /tmp/cordon-bench.XXXXXX)
CG_MOUNT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
CG=/cordon-bench-$$
PIN_DIR=/sys/fs/bpf/cordon-bench-$$
SOCK=$WORK/control.sock
PIDS=()
CORDOND_PID=""

cleanup() {
	set +e
	[ -n "$CORDOND_PID" ] && kill "$CORDOND_PID" 2>/dev/null && wait "$CORDOND_PID" 2>/dev/null
	[ -d "$PIN_DIR" ] && "$BUILD/cordonctl" --pin-dir "$PIN_DIR" detach >/dev/null
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	for d in "$CG_MOUNT$CG/job" "$CG_MOUNT$CG/daemon" "$CG_MOUNT$CG"; do
		[ -d "$d" ] || continue
		echo 1 > "$d/cgroup.kill" 2>/dev/null
		for _ in $(seq 50); do [ -z "$(cat "$d/cgroup.procs" 2>/dev/null)" ] && break; sleep 0.05; done
		rmdir "$d" 2>/dev/null
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

in_job() { sh -c "echo \$\$ > '$CG_MOUNT$CG/job/cgroup.procs' && exec \"\$@\"" job "$@"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

# The relay benchmark speaks plaintext on the captured port: pass it through (the client speaks
# first, so the ClientHello stage sees its first bytes at once and adds no wait).
printf 'tls:\n  missing_sni: passthrough\n' > "$WORK/policy.yaml"
start_cordond() {
	"$BUILD/cordond" --config "$WORK/policy.yaml" --state-dir "$WORK/state" \
		--target "$TARGET/32" --host localhost.invalid --enforce-cgroup "$CG/job" \
		--cgroup "$CG/daemon" --pin-dir "$PIN_DIR" --control-socket "$SOCK" --listen 15888 \
		2>> "$WORK/cordond.log" & CORDOND_PID=$!
	for _ in $(seq 200); do "$BUILD/cordonctl" --socket "$SOCK" status >/dev/null 2>&1 && return; sleep 0.05; done
	cat "$WORK/cordond.log"; exit 1
}
stop_cordond() {
	kill "$CORDOND_PID"; wait "$CORDOND_PID" || true; CORDOND_PID=""
	"$BUILD/cordonctl" --pin-dir "$PIN_DIR" detach >/dev/null
}

mkdir -p "$CG_MOUNT$CG/job" "$CG_MOUNT$CG/daemon"
for addr in "$TARGET 443" "$TARGET 9000" "$OTHER 443"; do
	set -- $addr
	$B server "$1" "$2" > "$WORK/server-$1-$2.out" & PIDS+=($!)
done
cat > "$WORK/haproxy.cfg" <<CFG
global
    maxconn $((HOLD + 50))
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen relay
    bind $RELAYS:9001
    maxconn $((HOLD + 50))
    server peer $TARGET:9000
CFG
haproxy -q -f "$WORK/haproxy.cfg" & PIDS+=($!)
socat TCP-LISTEN:9002,bind=$RELAYS,fork,reuseaddr,nodelay TCP:$TARGET:9000,nodelay & PIDS+=($!)
sleep 0.5

echo "# cordon bench — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r)"
echo
echo "Command: \`make bench\` (BENCH_ROUNDS=$ROUNDS BENCH_BYTES=$BYTES BENCH_HOLD=$HOLD). Medians of $ROUNDS rounds, attached/detached alternating."

# --- 1. connect() cost of the hooks for non-target destinations --------------------------------
# Wall-clock A/B (attached vs detached, alternating) plus the kernel's own accounting of each
# program's run time (kernel.bpf_stats_enabled), which is immune to scheduling noise.
if section connect; then
declare -A CONNECT
N=100000
CONNECT_ROUNDS=$((ROUNDS * 3))
STATS_BEFORE=$(cat /proc/sys/kernel/bpf_stats_enabled)
restore_stats() { echo "$STATS_BEFORE" > /proc/sys/kernel/bpf_stats_enabled; }
trap 'restore_stats; cleanup' EXIT
echo 1 > /proc/sys/kernel/bpf_stats_enabled
prog_stats() { # link name -> "run_time_ns run_cnt"
	local id
	id=$(bpftool link show pinned "$PIN_DIR/link_$1" | sed -n 's/.*prog \([0-9]*\).*/\1/p')
	bpftool prog show id "$id" | sed -n 's/.*run_time_ns \([0-9]*\) run_cnt \([0-9]*\).*/\1 \2/p'
}
declare -A RUNTIME
for r in $(seq "$CONNECT_ROUNDS"); do
	for state in attached detached; do
		[ "$state" = attached ] && start_cordond
		CONNECT[$state-udp443]+="$(in_job $B connect $OTHER 443 udp $N) "
		CONNECT[$state-udp9999]+="$(in_job $B connect $OTHER 9999 udp $N) "
		CONNECT[$state-tcp443]+="$(in_job $B connect $OTHER 443 tcp 20000) "
		if [ "$state" = attached ]; then
			for prog in connect4 sockops; do
				read -r ns cnt <<< "$(prog_stats $prog)"
				RUNTIME[$prog-ns]=$(( ${RUNTIME[$prog-ns]:-0} + ns ))
				RUNTIME[$prog-cnt]=$(( ${RUNTIME[$prog-cnt]:-0} + cnt ))
			done
			stop_cordond
		fi
	done
done
echo
echo "## connect() to a non-target, programs attached vs detached (ns per socket+connect+close, $CONNECT_ROUNDS rounds)"
echo
echo "| case | detached | attached | added | ratio |"
echo "|---|---:|---:|---:|---:|"
for c in "udp443:UDP, captured port 443, other IP (port + LPM lookup)" \
	 "udp9999:UDP, uncaptured port (port lookup only)" \
	 "tcp443:TCP to a listening non-target :443 (handshake included)"; do
	key=${c%%:*}; label=${c#*:}
	det=$(echo ${CONNECT[detached-$key]} | tr ' ' '\n' | median)
	att=$(echo ${CONNECT[attached-$key]} | tr ' ' '\n' | median)
	awk -v l="$label" -v d="$det" -v a="$att" 'BEGIN { printf "| %s | %.0f | %.0f | %+.0f ns | %.2f |\n", l, d, a, a - d, a / d }'
done
echo
echo "Kernel-measured program run time while attached (kernel.bpf_stats_enabled), all invocations above:"
echo
echo "| program | invocations | mean ns per invocation |"
echo "|---|---:|---:|"
for prog in connect4 sockops; do
	awk -v p="$prog" -v n="${RUNTIME[$prog-ns]}" -v c="${RUNTIME[$prog-cnt]}" \
		'BEGIN { printf "| %s | %d | %.0f |\n", p, c, (c ? n / c : 0) }'
done
restore_stats
fi

# --- 2-3. setup latency and bulk throughput: direct vs cordond vs haproxy vs socat --------------
start_cordond
if section relay; then
declare -A SETUP UP DOWN
PATHS="direct:$TARGET:9000 cordond:$TARGET:443 haproxy:$RELAYS:9001 socat:$RELAYS:9002"
for r in $(seq "$ROUNDS"); do
	for p in $PATHS; do
		IFS=: read -r name host port <<< "$p"
		SETUP[$name]+="$(in_job $B setup "$host" "$port" 2000 | awk '{print $1":"$2}') "
		UP[$name]+="$(in_job $B bulk "$host" "$port" "$BYTES" up) "
		DOWN[$name]+="$(in_job $B bulk "$host" "$port" "$BYTES" down) "
	done
done
echo
echo "## Connection setup: connect + first byte echoed (µs, 2000 connections per round)"
echo
echo "| path | p50 | p99 | p50 added over direct |"
echo "|---|---:|---:|---:|"
d50=$(echo ${SETUP[direct]} | tr ' ' '\n' | cut -d: -f1 | median)
for p in $PATHS; do
	name=${p%%:*}
	p50=$(echo ${SETUP[$name]} | tr ' ' '\n' | cut -d: -f1 | median)
	p99=$(echo ${SETUP[$name]} | tr ' ' '\n' | cut -d: -f2 | median)
	awk -v n="$name" -v a="$p50" -v b="$p99" -v d="$d50" 'BEGIN { printf "| %s | %.1f | %.1f | %+.1f |\n", n, a, b, a - d }'
done
echo
echo "## Bulk relay throughput, one connection, $((BYTES >> 20)) MiB per transfer (GB/s)"
echo
echo "| path | upload | download | upload vs direct | download vs direct |"
echo "|---|---:|---:|---:|---:|"
du=$(echo ${UP[direct]} | tr ' ' '\n' | median); dd=$(echo ${DOWN[direct]} | tr ' ' '\n' | median)
for p in $PATHS; do
	name=${p%%:*}
	u=$(echo ${UP[$name]} | tr ' ' '\n' | median); w=$(echo ${DOWN[$name]} | tr ' ' '\n' | median)
	awk -v n="$name" -v u="$u" -v w="$w" -v du="$du" -v dd="$dd" \
		'BEGIN { printf "| %s | %.2f | %.2f | %.2f | %.2f |\n", n, u, w, u / du, w / dd }'
done
fi

# --- 4. memory per idle relayed connection ------------------------------------------------------
section memory || exit 0
echo
echo "## Memory per idle relayed connection ($HOLD connections${HOLD_NOTE:+ $HOLD_NOTE})"
echo
echo "| relay | RSS before (KiB) | RSS with $HOLD idle (KiB) | per connection |"
echo "|---|---:|---:|---:|"
measure_hold() { # name pid host port
	local before after
	sleep 0.3
	before=$(rss_kib "$2")
	coproc HOLDER { in_job $B hold "$3" "$4" "$HOLD"; }
	read -r ready _ <&"${HOLDER[0]}"
	sleep 1
	after=$(rss_kib "$2")
	eval "exec ${HOLDER[1]}>&-"
	wait "$HOLDER_PID" 2>/dev/null || true
	awk -v n="$1" -v b="$before" -v a="$after" -v h="$HOLD" \
		'BEGIN { printf "| %s | %d | %d | %.2f KiB |\n", n, b, a, (a - b) / h }'
}
measure_hold cordond "$CORDOND_PID" "$TARGET" 443
HAPROXY_PID=$(pgrep -n -x haproxy)
measure_hold haproxy "$HAPROXY_PID" "$RELAYS" 9001
echo
echo "socat forks a process per connection, so it is left out of the memory comparison."
