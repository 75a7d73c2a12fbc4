#!/usr/bin/env bash
# Scenario c (cache hits on the Redis store) across expiries of the entry, optionally with the
# bench's Redis frozen for a while: do any of wrk's 64 connections stall? This is how issue 10's
# "every one of the 64 connections ended in a socket error" was reproduced (BENCHMARKS.md,
# session 23): wrk runs with the harness's `--timeout 5s`, so a request that waits out the
# cache's `lock_timeout` (5 s by default) is counted as a timeout on every waiting connection.
#
#   scripts/bench/hitstall.sh BINARY [CONFIG] [TTL]
#   e.g. scripts/bench/hitstall.sh target/release/rampart                 # 3 s TTL, 15 s of wrk
#        STALL=4 scripts/bench/hitstall.sh target/release/rampart config/bench.toml 1s
#
# CONFIG (config/bench.toml) is copied with its `ttl = "60s"` set to TTL (3s), so the KPI entry
# (the origin sends ETag and Last-Modified: stale entries are revalidated) expires several times
# in the run. With STALL=N the bench's redis-server (:16379, never 6379) is stopped with SIGSTOP
# 3 s into the run and resumed N s later. Prints wrk's totals (socket errors, non-2xx), the
# requests that reached the origin and Rampart's log lines, counted. Needs ../shared/bench
# started (./start.sh); Rampart listens on the config's :18090, so stop other instances first.
# Env: SECS (15), STALL (unset: no stall), BENCH (../shared/bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(realpath "${1:?binary}")
src=${2:-config/bench.toml} ttl=${3:-3s} secs=${SECS:-15}
bench=$(realpath "${BENCH:-../shared/bench}")
work=$(mktemp -d)
put="" freezer=""
redis_pid=$(pgrep -f 'redis-server .*:16379' | head -1)
cleanup() {
  [ -z "$freezer" ] || kill "$freezer" 2>/dev/null || true
  [ -z "$redis_pid" ] || kill -CONT "$redis_pid" 2>/dev/null || true
  [ -z "$put" ] || kill "$put" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "$redis_pid" ] || { echo "hitstall.sh: the bench's redis-server on :16379 is not running" >&2; exit 2; }

sed "s/^ttl = \"60s\"/ttl = \"$ttl\"/" "$src" >"$work/config.toml"
grep -q "^ttl = \"$ttl\"" "$work/config.toml" || { echo "hitstall.sh: no ttl = \"60s\" line in $src" >&2; exit 2; }
origin_count() { curl -s --max-time 3 http://127.0.0.1:18009/status | awk 'NR == 3 { print $3 }'; }

redis-cli -p 16379 FLUSHALL >/dev/null
RUST_LOG=warn "$bin" run --config "$work/config.toml" >"$work/log" 2>&1 & put=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18090/health && break; sleep 0.2; done
if [ -n "${STALL:-}" ]; then
  (sleep 3; kill -STOP "$redis_pid"; sleep "$STALL"; kill -CONT "$redis_pid") & freezer=$!
fi
before=$(origin_count)
wrk -t1 -c64 -d"${secs}s" --timeout 5s -s "$bench/wrk/report.lua" \
  http://127.0.0.1:18090/api/v1/dashboard/kpis >"$work/wrk"
after=$(origin_count)
[ -z "$freezer" ] || wait "$freezer"
freezer=""
grep -E 'Requests/sec|Socket errors|Non-2xx' "$work/wrk" || true
grep '^BENCHRESULT' "$work/wrk" | tr ' ' '\n' | grep -E '^(requests|max_us|non2xx3xx|connect|read|write|timeout)=' | paste -sd' '
echo "ttl $ttl, stall ${STALL:-none}: origin requests $((after - before - 1)) (the status probe is one), log lines $(wc -l <"$work/log")"
cut -c26-200 "$work/log" | sort | uniq -c | sort -rn | head -6
