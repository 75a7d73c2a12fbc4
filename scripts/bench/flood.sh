#!/usr/bin/env bash
# Scenario e (the rate-limit flood) taken apart: nginx's rate-limited listener and each Rampart
# binary in turn, alternated, with where the CPU goes on both sides of the socket.
#
#   scripts/bench/flood.sh ROUNDS BINARY...
#   e.g. scripts/bench/flood.sh 3 /tmp/old /tmp/new
#
# Each run is `wrk -t1 -c64 -d$SECS -s flood.lua` (the harness's own script, whose `response`
# callback builds a Lua table of every response's fields) on /api/v1/small after 2 s of
# warm-up. Per run: req/s; the server's CPU ms per 1000 requests (all nginx workers, or the
# Rampart process) and the user-space part of it; wrk's own CPU ms per 1000 requests (it
# shares the 2 cores, so what it spends per response counts against the rate too); and the
# machine's idle share. WRK_LUA=none runs wrk without the script: wrk's cost with and without
# it shows what the response's fields cost the client.
# Env: SECS (6), CONFIG (config/bench-ratelimit-memory.toml, Rampart on :18091), WRK_LUA.
# Needs ../shared/bench started (./start.sh: nginx's rate-limited listener on :18081).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:?rounds}
shift
[ $# -ge 1 ] || { echo "flood.sh: name at least one binary" >&2; exit 2; }
secs=${SECS:-6} cfg=${CONFIG:-config/bench-ratelimit-memory.toml}
bench=$(realpath "${BENCH:-../shared/bench}")
lua=(-s "$bench/wrk/flood.lua")
[ "${WRK_LUA:-}" != none ] || lua=()
clk=$(getconf CLK_TCK)
# Summed over pids: user + system ticks, or user ticks alone.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$t"; }
uticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{ print $14 }' "/proc/$p/stat"))); done; echo "$t"; }
idle() { awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# run NAME URL PID...
run() {
  local name=$1 url=$2
  shift 2
  wrk -t1 -c64 -d2s "${lua[@]}" "$url/api/v1/small" >/dev/null
  local c0 u0 i0 t0 w wc0 wc1 out
  out=$(mktemp)
  c0=$(ticks "$@") u0=$(uticks "$@")
  read -r i0 t0 < <(idle)
  wrk -t1 -c64 -d"${secs}s" "${lua[@]}" "$url/api/v1/small" >"$out" & w=$!
  # wrk's CPU over the middle of its run (its own start and end left out).
  sleep 0.5; wc0=$(ticks "$w")
  sleep $((secs - 1)); wc1=$(ticks "$w")
  wait "$w"
  local c1 u1 i1 t1 rps
  c1=$(ticks "$@") u1=$(uticks "$@")
  read -r i1 t1 < <(idle)
  rps=$(awk '/Requests\/sec/ { print $2 }' "$out")
  rm -f "$out"
  awk -v n="$name" -v rps="$rps" -v s="$secs" -v c=$((c1 - c0)) -v u=$((u1 - u0)) \
    -v wc=$((wc1 - wc0)) -v clk="$clk" -v di=$((i1 - i0)) -v dt=$((t1 - t0)) 'BEGIN {
      kreq = rps * s / 1000
      printf "%-32s %8.0f req/s  server %6.2f (user %5.2f)  wrk %6.2f cpu ms/kreq  idle %4.1f%%\n",
        n, rps, c * 1000 / clk / kreq, u * 1000 / clk / kreq, wc * 1000 / clk / (rps * (s - 1) / 1000),
        di * 100 / dt }'
}

pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true' EXIT
# The proxy's workers (not the origin's): children of the master running nginx-proxy.conf.
proxy_master=$(pgrep -f "nginx: master.*nginx-proxy.conf" | head -1)
mapfile -t nginx < <(pgrep -P "$proxy_master" -f "nginx: worker")
for _ in $(seq "$rounds"); do
  run nginx http://127.0.0.1:18081 "${nginx[@]}"
  for bin in "$@"; do
    RUST_LOG=warn "$bin" run --config "$cfg" & pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18091/health && break; sleep 0.2; done
    run "$bin" http://127.0.0.1:18091 "$pid"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
