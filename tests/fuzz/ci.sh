#!/bin/bash
# make fuzz-ci: every fuzz target for FUZZ_CI_SECONDS, FUZZ_CI_JOBS at a time.
#
#   tests/fuzz/ci.sh BUILD NAME...
#
# Each target fuzzes a working copy of its seed corpus (BUILD/fuzz/ci/NAME/corpus: the repository's
# tests/fuzz/corpus/NAME is only read), logs to BUILD/fuzz/ci/NAME/log, and writes what it finds
# (crash-*, leak-*, timeout-*, oom-*) to BUILD/fuzz/artifacts/NAME/. Any finding fails the run,
# naming the target, the input and the tail of the log. Fix it, then keep the input as a regression
# input: cp BUILD/fuzz/artifacts/NAME/crash-... tests/fuzz/corpus/NAME/
set -euo pipefail

if [ "${1:-}" = --one ]; then
	# One target (run by xargs below): prints one line, "ok NAME ..." or "FAIL NAME ...".
	build=$2 name=$3
	dir=$build/fuzz/ci/$name
	art=$build/fuzz/artifacts/$name
	rm -rf "$dir" "$art"
	mkdir -p "$dir/corpus" "$art"
	cp -a "tests/fuzz/corpus/$name/." "$dir/corpus/"
	start=$(date +%s)
	# -timeout: one input taking this long is a finding (timeout-*); the rss limit keeps two
	# targets side by side well inside the machine. Leaks are findings too (libFuzzer's default).
	rc=0
	"$build/fuzz/$name" -max_total_time="$FUZZ_CI_SECONDS" -timeout=30 -rss_limit_mb=2560 \
		-print_final_stats=1 -artifact_prefix="$art/" "$dir/corpus" > "$dir/log" 2>&1 || rc=$?
	took=$(($(date +%s) - start))
	found=$(find "$art" -type f | sort)
	if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
		echo "FAIL $name exit $rc after ${took}s"
		exit 1
	fi
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
	echo "ok   $name ${took}s, ${execs:-?} runs, corpus $(ls "$dir/corpus" | wc -l) inputs"
	exit 0
fi

build=$1
shift
: "${FUZZ_CI_SECONDS:=60}" "${FUZZ_CI_JOBS:=2}"
export FUZZ_CI_SECONDS
echo "fuzz-ci: $# targets for ${FUZZ_CI_SECONDS} s each, ${FUZZ_CI_JOBS} at a time"
start=$(date +%s)
# Every target runs to its end even when another fails: all findings at once.
printf '%s\n' "$@" | xargs -P "$FUZZ_CI_JOBS" -I{} "$0" --one "$build" {} | tee "$build/fuzz/ci.summary" || true
failed=$(sed -n 's/^FAIL \([^ ]*\).*/\1/p' "$build/fuzz/ci.summary")
ran=$(grep -c '^ok\|^FAIL' "$build/fuzz/ci.summary" || true)
if [ -z "$failed" ] && [ "$ran" -ne "$#" ]; then
	echo "fuzz-ci: only $ran of $# targets reported" >&2
	exit 1
fi
for name in $failed; do
	echo
	echo "=================== fuzz-ci: $name FAILED ==================="
	found=$(find "$build/fuzz/artifacts/$name" -type f | sort)
	if [ -n "$found" ]; then
		for f in $found; do echo "input: $f ($(stat -c %s "$f") bytes)"; done
		echo "reproduce: $build/fuzz/$name $(echo "$found" | head -n1)"
	else
		echo "no input saved (the fuzzer itself failed): see $build/fuzz/ci/$name/log"
	fi
	echo "--- tail of $build/fuzz/ci/$name/log ---"
	tail -n 60 "$build/fuzz/ci/$name/log"
done
if [ -n "$failed" ]; then
	echo >&2
	echo "fuzz-ci: FAILED: $(echo $failed)" >&2
	echo "fix each, then keep its input: cp $build/fuzz/artifacts/NAME/<input> tests/fuzz/corpus/NAME/" >&2
	exit 1
fi
echo "fuzz-ci: all $# targets ran ${FUZZ_CI_SECONDS} s without a finding ($(($(date +%s) - start)) s)"
