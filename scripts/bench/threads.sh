#!/usr/bin/env bash
# Where a running proxy's CPU goes per thread, and how often its threads are switched out,
# over several back-to-back wrk runs on the same process (no restart between them).
#
#   scripts/bench/threads.sh PID PORT RUNS [PATH]
#   e.g. scripts/bench/threads.sh "$(pgrep -x rampart)" 18090 4
#        scripts/bench/threads.sh "$FLOOR_PID" 18095 4
#
# Each run is `wrk -t1 -c64 -d$SECS` on PATH (/api/v1/small: scenario a). Per run: req/s, the
# process's CPU ms per 1000 requests, its threads' involuntary and voluntary context switches
# per 1000 requests (every thread's /proc/PID/task/TID/status), the process's minor page faults
# per 1000 requests (an allocator handing pages back and taking them again shows here), and the
# CPU ticks of each thread that ran (name:ticks; CLK_TCK per second). Run it on Rampart and on
# the floor in turns: on this 2-core guest the machine drifts between minutes.
# Env: SECS (5).
set -euo pipefail
pid=${1:?pid} port=${2:?port} runs=${3:?runs} path=${4:-/api/v1/small}
secs=${SECS:-5}
clk=$(getconf CLK_TCK)
before=$(mktemp) after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT

# One line per thread: tid name ticks involuntary voluntary (sorted by tid, for join).
snapshot() {
  local t f
  for t in /proc/"$pid"/task/*; do
    read -r -a f <<<"$(sed 's/.*) //' "$t/stat")"
    printf '%s %s %s %s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" $((f[11] + f[12])) \
      "$(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "$t/status")" \
      "$(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")"
  done | sort
}

minor_faults() { sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $8 }'; }

for run in $(seq "$runs"); do
  snapshot >"$before"
  faults=$(minor_faults)
  req=$(wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$port$path" | awk '/requests in/ { print $1 }')
  faults=$(($(minor_faults) - faults))
  snapshot >"$after"
  join "$before" "$after" | awk -v req="$req" -v clk="$clk" -v run="$run" -v secs="$secs" -v faults="$faults" '
    { d = $7 - $3; if (d > 0) { ticks += d; each = each sprintf(" %s:%d", $2, d) }
      inv += $8 - $4; vol += $9 - $5 }
    END { printf "run %d: %6.0f req/s  cpu %5.1f ms/kreq  involuntary %4.0f/kreq  voluntary %3.0f/kreq  minflt %5.1f/kreq  ticks%s\n",
      run, req / secs, ticks * 1000 / clk / (req / 1000), inv * 1000 / req, vol * 1000 / req, faults * 1000 / req, each }'
done
