"""Runs many curl transfers at once, for the fault suite's repeated rounds (test_faults.py).

    curl_rounds.py COUNT PARALLEL KILL_MS -- CURL_ARGS...

Runs `curl CURL_ARGS` COUNT times, PARALLEL at a time; with KILL_MS > 0 each curl is killed
(SIGKILL, no goodbye) that long after it started. Prints one JSON object: how many exited with each
code, how many printed each distinct stdout (with `-o /dev/null -w ...`, what -w wrote), the
slowest run in seconds, and a few distinct stderr lines.
"""
import collections
import concurrent.futures
import json
import subprocess
import sys
import time


def one(argv, kill_ms):
    started = time.monotonic()
    p = subprocess.Popen(["curl", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=kill_ms / 1000 if kill_ms > 0 else None)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, time.monotonic() - started, out, err.strip()


def main():
    count, parallel, kill_ms = map(int, sys.argv[1:4])
    assert sys.argv[4] == "--"
    argv = sys.argv[5:]
    codes = collections.Counter()
    outputs = collections.Counter()
    slowest = 0.0
    stderr = set()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        for rc, seconds, out, err in pool.map(lambda _: one(argv, kill_ms), range(count)):
            codes[str(rc)] += 1
            outputs[out] += 1
            slowest = max(slowest, seconds)
            if err and len(stderr) < 5:
                stderr.add(err.splitlines()[-1])
    print(json.dumps({"codes": dict(codes), "outputs": dict(outputs), "slowest": round(slowest, 2), "stderr": sorted(stderr)}))


if __name__ == "__main__":
    main()
