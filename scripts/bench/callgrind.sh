#!/usr/bin/env bash
# Instructions per request under callgrind: repeatable whatever else the machine does, unlike
# CPU time. The figures in BENCHMARKS.md's instruction tables come from this.
#
#   scripts/bench/callgrind.sh BINARY CONFIG PORT PATH [N]     # N counted requests, default 700
#   e.g. scripts/bench/callgrind.sh target/release/rampart config/bench-memory.toml 18090 /api/v1/small
#
# The binary runs under valgrind with instrumentation off; 200 keep-alive requests warm it up
# (pools, caches, the limiter's state), then N more on one connection are counted, each
# carrying only Host (as wrk's). GZ=1 asks for gzip; CG_OPTS passes more callgrind options
# (e.g. --separate-callers=5: which caller's inserts grow a header map). Prints the total per
# request and the profile's path (OUT, default /tmp/rampart-callgrind.out); read it with
# callgrind_annotate, or with scripts/bench/callers.py OUT FUNCTION N for who calls what.
# Needs ../shared/bench started (the origin on :18001/:18002); a config with redis_url needs
# the bench's Redis (:16379), flushed first.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?binary} cfg=${2:?config} port=${3:?port} path=${4:?path} n=${5:-700}
out=${OUT:-/tmp/rampart-callgrind.out}
gz=()
[ "${GZ:-0}" != 1 ] || gz=(gzip)
! grep -q '^redis_url' "$cfg" || redis-cli -p 16379 FLUSHALL >/dev/null
rm -f "$out" "$out".*
RUST_LOG=warn valgrind --tool=callgrind ${CG_OPTS:-} --instr-atstart=no --callgrind-out-file="$out" \
  "$bin" run --config "$cfg" 2>"$out.log" & pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -s -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.5; done
python3 scripts/bench/keepalive.py "$port" "$path" 200 "${gz[@]}"
callgrind_control -i on "$pid" >/dev/null
python3 scripts/bench/keepalive.py "$port" "$path" "$n" "${gz[@]}"
callgrind_control -i off "$pid" >/dev/null
callgrind_control -d "$pid" >/dev/null
sleep 1
dump=$(ls "$out".* | grep -v '\.log$' | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$((total / n)) instructions per request ($n counted); profile: $dump"
