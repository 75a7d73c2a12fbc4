#!/usr/bin/env bash
# Peak RSS of one Rampart process taken through the bench's scenarios in turn, with the RSS
# after each: which scenario grows the process, and what it keeps afterwards.
#
#   scripts/bench/rss.sh CONFIG [BINARY] [SCENARIO...]      # default: a b c d f g
#
# Each scenario is `wrk -t1 -c$CONNS -d$SECS` on its path (gzip asked for in b, f, g), as in
# ../shared/bench's run.sh. Env: SECS (6), CONNS (64). Needs ../shared/bench started.
set -euo pipefail
cd "$(dirname "$0")/../.."
cfg=${1:?config}
bin=${2:-target/release/rampart}
shift $(($# >= 2 ? 2 : 1))
scenarios=${*:-a b c d f g}
secs=${SECS:-6} conns=${CONNS:-64}
port=$(awk -F'"' '/^listen *=/ { split($2, a, ":"); print a[2]; exit }' "$cfg")
! grep -q '^redis_url' "$cfg" || redis-cli -p 16379 FLUSHALL >/dev/null
RUST_LOG=warn "$bin" run --config "$cfg" & pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.2; done
mib() { awk -v k="$1" '$1 == k":" { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
echo "start: VmRSS $(mib VmRSS) MiB"
for s in $scenarios; do
  gz=()
  case $s in
    a) p=/api/v1/small ;;
    b) p=/api/v1/dashboard/expense-trend gz=(-H "Accept-Encoding: gzip") ;;
    c) p=/api/v1/dashboard/kpis ;;
    d) p=/api/v1/dashboard/slow-kpis ;;
    f) p=/static/app.js gz=(-H "Accept-Encoding: gzip") ;;
    g) p=/api/v1/dashboard/report gz=(-H "Accept-Encoding: gzip") ;;
    *) echo "rss.sh: unknown scenario $s" >&2; exit 2 ;;
  esac
  wrk -t1 -c"$conns" -d"${secs}s" "${gz[@]}" "http://127.0.0.1:$port$p" >/dev/null
  echo "after $s: VmRSS $(mib VmRSS) MiB, VmHWM $(mib VmHWM) MiB"
done
