#!/usr/bin/env bash
# System calls per request of a running proxy under one bounded wrk run: does Rampart make
# more calls (or more wake-ups through futex/epoll) per passthrough than the floor?
#
#   scripts/bench/syscalls.sh PID PORT [PATH]
#   e.g. scripts/bench/syscalls.sh "$(pgrep -x rampart)" 18090
#        scripts/bench/syscalls.sh "$FLOOR_PID" 18095
#
# `strace -f -c` attached to every thread of PID during `wrk -t1 -c64 -d$SECS` on PATH
# (/api/v1/small: scenario a), then each call's count divided by the requests wrk completed.
# strace slows the process several times over, so wrk's req/s under it would mean nothing and
# are not printed: only the counts per request are the figure. Env: SECS (3).
# Needs strace (Debian package strace) and wrk (../shared/bench's setup.sh installs it).
set -euo pipefail
for tool in strace wrk; do
  command -v "$tool" >/dev/null || { echo "syscalls.sh: $tool is not installed" >&2; exit 2; }
done
pid=${1:?PID} port=${2:?PORT} path=${3:-/api/v1/small}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
strace -f -c -q -p "$pid" -o "$out/strace" &
tracer=$!
sleep 1 # strace attaches to each thread before the load starts
wrk -t1 -c64 -d"${SECS:-3}s" "http://127.0.0.1:$port$path" > "$out/wrk"
sleep 0.5
kill -INT "$tracer"
wait "$tracer" || true
requests=$(awk '/requests in/ {print $1}' "$out/wrk")
echo "requests: $requests (under strace)"
awk -v n="$requests" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
  printf "%-16s %10d calls  %8.3f per request\n", $NF, $4, $4 / n }' "$out/strace"
