#!/usr/bin/env bash
# CPU A/B of Rampart binaries on one request, alternated so the machine's drift falls on all of
# them alike (on a shared 2-core guest the same binary moves by a third between minutes).
#
#   scripts/bench/ab.sh CONFIG PATH ROUNDS BINARY...
#   e.g. scripts/bench/ab.sh config/bench-memory.toml /api/v1/small 4 /tmp/old /tmp/new
#
# Each round starts every binary afresh in turn on CONFIG, warms it with wrk for 2 s, then runs
# `wrk -t1 -c$CONNS -d$SECS` and reads the process's CPU time from /proc/<pid>/stat around it.
# Prints one line per run (req/s, CPU ms per 1000 requests, VmHWM) and the mean per binary.
# Env: SECS (6), CONNS (64), GZ=1 (ask for gzip). Needs ../shared/bench started (./start.sh);
# a config with redis_url needs its Redis (:16379), which is flushed before every run.
set -euo pipefail
cd "$(dirname "$0")/../.."
cfg=${1:?config} path=${2:?path} rounds=${3:?rounds}
shift 3
[ $# -ge 1 ] || { echo "ab.sh: name at least one binary" >&2; exit 2; }
secs=${SECS:-6} conns=${CONNS:-64}
port=$(awk -F'"' '/^listen *=/ { split($2, a, ":"); print a[2]; exit }' "$cfg")
hdr=()
[ "${GZ:-0}" != 1 ] || hdr=(-H "Accept-Encoding: gzip")
clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

results=$(mktemp)
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -f "$results"' EXIT
for r in $(seq "$rounds"); do
  for bin in "$@"; do
    ! grep -q '^redis_url' "$cfg" || redis-cli -p 16379 FLUSHALL >/dev/null
    RUST_LOG=warn "$bin" run --config "$cfg" & pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.2; done
    wrk -t1 -c"$conns" -d2s "${hdr[@]}" "http://127.0.0.1:$port$path" >/dev/null
    c0=$(cpu_ticks "$pid")
    req=$(wrk -t1 -c"$conns" -d"${secs}s" "${hdr[@]}" "http://127.0.0.1:$port$path" |
      awk '/requests in/ { print $1 }')
    c1=$(cpu_ticks "$pid")
    hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    awk -v r="$r" -v b="$bin" -v req="$req" -v s="$secs" -v c=$((c1 - c0)) -v clk="$clk" -v h="$hwm" \
      'BEGIN { printf "r%s %-40s %9.0f req/s %7.1f cpu ms/kreq  VmHWM %.1f MiB\n", r, b, req / s, c * 1000 / clk / req * 1000, h / 1024 }' |
      tee -a "$results"
    sleep 1
  done
done
echo "-- means"
awk '{ n[$2]++; rps[$2] += $3; cpu[$2] += $5 }
     END { for (b in n) printf "%-40s %9.0f req/s %7.1f cpu ms/kreq (%d runs)\n", b, rps[b] / n[b], cpu[b] / n[b], n[b] }' "$results"
