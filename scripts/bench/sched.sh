#!/usr/bin/env bash
# Who takes the CPU from a proxy's workers, and whom they wake: the scheduler's own events over
# 3 s of scenario a (`wrk -t1 -c64` on /api/v1/small), the whole machine.
#
#   scripts/bench/sched.sh PORT THREAD_NAME
#   e.g. scripts/bench/sched.sh 18090 rampart         # Rampart's workers are named "rampart"
#        scripts/bench/sched.sh 18095 "Pingora HTTP"  # the floor's
#
# The name matches threads of every process: run one proxy at a time. Run as
# target/release/rampart, Rampart's main thread is named "rampart" too; it sleeps throughout
# and adds next to nothing (BENCHMARKS.md's figures ran a copy named otherwise).
#
# Prints, for the threads whose name starts with THREAD_NAME: how many times they were switched
# out, by whom when preempted (still runnable) and who ran when they slept; who woke them; and
# whom they woke (sched_wakeup events whose waker is one of them), with wrk's req/s. Needs
# `perf` (Debian linux-perf) and ../shared/bench started; the proxy must be running.
set -euo pipefail
port=${1:?port} name=${2:?thread name}
data=$(mktemp) text=$(mktemp) out=$(mktemp)
trap 'rm -f "$data" "$text" "$out"' EXIT
wrk -t1 -c64 -d7s "http://127.0.0.1:$port/api/v1/small" >"$out" &
sleep 2
perf record -q -e sched:sched_switch -e sched:sched_wakeup -a -o "$data" -- sleep 3 >/dev/null 2>&1
wait
perf script -i "$data" -F comm,tid,cpu,event,trace 2>/dev/null >"$text"
python3 - "$name" "$text" <<'PY'
import collections, re, sys
name, path = sys.argv[1], sys.argv[2]
switch = re.compile(r"prev_comm=(.*?) prev_pid=\d+ prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=")
wakeup = re.compile(r"^\s*(.*?)\s+\d+\s+\[\d+\].*comm=(.*?) pid=\d+")
preempted, slept, woke_them, they_woke = (collections.Counter() for _ in range(4))
out = 0
for line in open(path):
    if "sched_switch" in line:
        m = switch.search(line)
        if m and m.group(1).startswith(name):
            out += 1
            (preempted if m.group(2).startswith("R") else slept)[m.group(3)] += 1
    elif "sched_wakeup" in line:
        m = wakeup.search(line)
        if not m:
            continue
        waker, wakee = m.groups()
        if wakee.startswith(name):
            woke_them[waker] += 1
        if waker.startswith(name):
            they_woke[wakee] += 1
print(f"switched out: {out} (preempted {sum(preempted.values())}, slept {sum(slept.values())})")
print("preempted by:", preempted.most_common(6))
print("slept, then ran:", slept.most_common(5))
print("woken by:", woke_them.most_common(5))
print("they woke:", they_woke.most_common(5))
PY
grep "Requests/sec" "$out"
