#!/usr/bin/env bash
# One half of BENCHMARKS.md's run: ../shared/bench's run.sh against two Rampart instances (the
# open listener and the rate-limited one) on one store, beside nginx and the Pingora floor.
#
#   scripts/bench/pair.sh redis|memory [BINARY]       # default target/release/rampart
#
# Env: ROUNDS (3), DURATION (10), SCENARIOS ("a b c d e f g"), TAG (names the kept rows),
#      BENCH (../shared/bench), FLOOR_PID (the floor's pid from floor.sh; without it no floor).
# Needs the harness started (./start.sh in BENCH). Flushes the bench's Redis (:16379) first.
# While the run lasts, the open instance's VmRSS is sampled every 0.2 s into rss.tsv next to
# the harness's rows, and each line the harness prints is stamped with the same clock, so a peak
# can be put down to the scenario that made it. Prints VmHWM/VmRSS of both instances at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
store=${1:?redis or memory}
bin=$(realpath "${2:-target/release/rampart}")
bench=$(realpath "${BENCH:-../shared/bench}")
case $store in
  redis) cfg=config/bench.toml rl=config/bench-ratelimit.toml ;;
  memory) cfg=config/bench-memory.toml rl=config/bench-ratelimit-memory.toml ;;
  *) echo "pair.sh: store is redis or memory" >&2; exit 2 ;;
esac
redis-cli -p 16379 FLUSHALL >/dev/null

RUST_LOG=warn "$bin" run --config "$cfg" & put=$!
RUST_LOG=warn "$bin" run --config "$rl" & put_rl=$!
sampler=""
cleanup() {
  kill "$put" "$put_rl" 2>/dev/null || true
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:18090/health && curl -s -o /dev/null http://127.0.0.1:18091/health && break
  sleep 0.2
done

out=$(mktemp -d)
t0=$(date +%s.%N)
# The sampler: seconds since start, VmRSS in KiB, of the open instance.
(while [ -d "/proc/$put" ]; do
  printf '%.1f\t%s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$(awk '/VmRSS/ {print $2}' "/proc/$put/status")"
  sleep 0.2
done) > "$out/rss.tsv" 2>/dev/null & sampler=$!

floor=()
[ -z "${FLOOR_PID:-}" ] || floor=(FLOOR_URL=http://127.0.0.1:18095 "FLOOR_PID=$FLOOR_PID")
env "${floor[@]}" KEEP=1 PUT_NAME="rampart-$store" PUT_PID=$put PUT_RL_PID=$put_rl \
  ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-10}" SCENARIOS="${SCENARIOS:-a b c d e f g}" \
  "$bench/run.sh" http://127.0.0.1:18090 http://127.0.0.1:18091 2>&1 |
  while IFS= read -r line; do
    printf '%6.1f  %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$line"
  done | tee "$out/run.log"

echo "== $store, open instance:        $(grep -E 'VmHWM|VmRSS' "/proc/$put/status" | tr -s ' \t' ' ' | paste -sd' ')"
echo "== $store, rate-limited instance: $(grep -E 'VmHWM|VmRSS' "/proc/$put_rl/status" | tr -s ' \t' ' ' | paste -sd' ')"
res=$(ls -d "$bench"/run/results/*/ | tail -1)
cp "$out/rss.tsv" "$out/run.log" "$res"
echo "== peak sampled RSS: $(sort -t$'\t' -k2 -n "$out/rss.tsv" | tail -1 | awk '{printf "%.1f MiB at %s s", $2 / 1024, $1}')"
if [ -n "${TAG:-}" ]; then
  cp "$res/rows.tsv" "docs/bench/$(basename "$res")-$TAG-$store.tsv"
  echo "== rows kept as docs/bench/$(basename "$res")-$TAG-$store.tsv"
fi
echo "== results: $res"
rm -rf "$out"
