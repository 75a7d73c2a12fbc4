#!/usr/bin/env bash
# Soak: Rampart under a steady mix for a few minutes, on loopback, bounded in time and in
# connections. Not part of CI (minutes long); run it before a release or after touching the
# request path:
#
#   cargo build --release && scripts/soak.sh [SECONDS]        # default 150
#
# The mix, all at once for SECONDS:
#   wrk, 32 connections (scripts/soak/mix.lua): passthrough, cache hits, cache misses that
#       churn the cache at its memory bound, compressed 200 KB JSON (gzip/br/zstd/identity),
#       2 KB uploads;
#   wrk, 4 connections (scripts/soak/reject.lua): requests Rampart refuses (400, 431, 414, 413);
#   scripts/soak/clients.py, 4 of each: slowloris heads, stalled bodies, stalled readers of a
#       16 MB file, requests aborted mid-head, mid-body and mid-response.
# The origin is nginx serving static files. Rampart runs its defaults except: timers of 5 s
# (header, body, send) and 10 s (keep-alive) so they fire many times, a 32 MB cache, and the
# per-client limits lifted (every client here is 127.0.0.1).
#
# Reported: RSS and open descriptors of the rampart process after a 20 s warm-up (start), at
# each quarter (middle at the half), just before the load stops (end) and 15 s after it
# stopped (idle); then
# what Rampart counted (statuses, rejections by reason), the proxy-caused errors (5xx it sent,
# upstream errors, ERROR log lines: all should be 0), and what the hostile clients saw.
# Env: RAMPART=path/to/rampart (default target/release/rampart), KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-150}
BIN=${RAMPART:-target/release/rampart}
for tool in wrk nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "soak: $tool missing (apt-get install wrk nginx python3 curl)"; exit 2; }
done
[ -x "$BIN" ] || { echo "soak: $BIN missing: cargo build --release"; exit 2; }
[ "$DURATION" -ge 30 ] && [ "$DURATION" -le 3600 ] || { echo "soak: SECONDS from 30 to 3600"; exit 2; }

WORK=$(mktemp -d /tmp/rampart-soak.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)

# --- the origin: nginx serving files ---------------------------------------------------------
mkdir -p "$WORK/www/pass" "$WORK/www/cached" "$WORK/www/json" "$WORK/nginx"
head -c 700 /dev/urandom | base64 > "$WORK/www/pass/small.txt"
head -c $((16 * 1024 * 1024)) /dev/urandom > "$WORK/www/pass/big.bin"
python3 - "$WORK/www" <<'EOF'
import json, sys
www = sys.argv[1]
kpis = {"revenue": 1234567.89, "orders": 4321, "series": [{"day": d, "value": d * 17 % 101} for d in range(60)]}
open(f"{www}/cached/kpis.json", "w").write(json.dumps(kpis))
open(f"{www}/cached/item", "w").write(json.dumps(kpis))
rows = [{"id": i, "name": f"expense-{i}", "amount": i * 3.5, "category": ["ops", "sales", "rnd"][i % 3]} for i in range(2500)]
open(f"{www}/json/big.json", "w").write(json.dumps(rows))
EOF
chmod 755 "$WORK"; chmod -R a+rX "$WORK/www"   # nginx's workers may run as another user
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  types { application/json json; text/plain txt; application/octet-stream bin; }
  default_type application/json;
  server {
    listen 127.0.0.1:$ORIGIN;
    root $WORK/www;
    location /cached/ { add_header Cache-Control "public, max-age=30"; }
    # Uploads: nginx reads the whole body (request buffering), then answers from /ok/.
    location /upload/ { client_max_body_size 10m; proxy_pass http://127.0.0.1:$ORIGIN/ok/; }
    location /ok/ { return 200 "ok\n"; }
  }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx/error.log" &
PIDS+=($!)

# --- Rampart -------------------------------------------------------------------------------
cat > "$WORK/rampart.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY"
admin_listen = "127.0.0.1:$ADMIN"
threads = 2

[upstreams.origin]
addrs = ["127.0.0.1:$ORIGIN"]

[[routes]]
name = "pass"
prefix = "/pass/"
upstream = "origin"

[[routes]]
name = "cached"
prefix = "/cached/"
upstream = "origin"
cache = "soak"

[[routes]]
name = "json"
prefix = "/json/"
upstream = "origin"

[[routes]]
name = "upload"
prefix = "/upload/"
upstream = "origin"

[cache]
memory_bytes = 33554432

[cache.policies.soak]
ttl = "30s"

[access_log]
enabled = false

[limits]
header_timeout = "5s"
body_timeout = "5s"
send_timeout = "5s"
keepalive_timeout = "10s"
max_connections_per_client = 768
max_inflight_per_client = 768
EOF
RUST_LOG=warn,rampart::limits=warn "$BIN" run --config "$WORK/rampart.toml" 2> "$WORK/rampart.log" &
RAMPART_PID=$!
PIDS+=($RAMPART_PID)
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PROXY/cached/kpis.json" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PROXY/cached/kpis.json" || { echo "soak: rampart did not come up"; cat "$WORK/rampart.log"; exit 1; }

sample() {
  local rss fds conns
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$RAMPART_PID/status")
  fds=$(find "/proc/$RAMPART_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  conns=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/^rampart_connections_open / {print $2}')
  printf '%-7s %6s MB RSS  %5d open fds  %4s client connections\n' "$1" \
    "$(awk -v r="$rss" 'BEGIN { printf "%.1f", r / 1024 }')" "$fds" "$conns"
}

echo "soak: ${DURATION}s, rampart pid $RAMPART_PID, origin nginx :$ORIGIN, work dir $WORK"
wrk -t1 -c16 -d20s -s scripts/soak/mix.lua "http://127.0.0.1:$PROXY" > "$WORK/warmup.txt"
sample start

wrk -t1 -c32 -d"${DURATION}s" --timeout 10s --latency -s scripts/soak/mix.lua "http://127.0.0.1:$PROXY" > "$WORK/mix.txt" &
MIX=$!; PIDS+=($MIX)
wrk -t1 -c4 -d"${DURATION}s" --timeout 10s -s scripts/soak/reject.lua "http://127.0.0.1:$PROXY" > "$WORK/reject.txt" &
REJ=$!; PIDS+=($REJ)
python3 scripts/soak/clients.py 127.0.0.1 "$PROXY" "$DURATION" 4 > "$WORK/clients.json" &
CLI=$!; PIDS+=($CLI)

# Five samples while the load runs (start, 3 in between, end), then one when it is over.
STEP=$((DURATION / 4))
for label in 1/4 middle 3/4; do sleep "$STEP"; sample "$label"; done
sleep $((DURATION - 3 * STEP - 3)); sample end
wait "$MIX" "$REJ" "$CLI" || true
sleep 15; sample idle

METRICS=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics")
echo
echo "== wrk, mix (passthrough, hits, misses, compressed)"
grep -E "Requests/sec|Latency |  50%|  99%|requests in|Non-2xx|Socket errors" "$WORK/mix.txt" || true
echo "== wrk, refused requests"
grep -E "requests in|Non-2xx|Socket errors" "$WORK/reject.txt" || true
echo "== hostile clients (per kind, how connections ended)"
cat "$WORK/clients.json"
echo "== Rampart's counts"
echo "$METRICS" | grep -E '^http_requests_total' | sed 's/^/  /'
echo "$METRICS" | grep -E '^rampart_rejections_total' | sed 's/^/  /'
echo "$METRICS" | grep -E '^rampart_cache_lookups_total' | sed 's/^/  /'
FIVE=$(echo "$METRICS" | awk '/^http_requests_total/ && /status="5/ {s += $2} END {print s + 0}')
UPERR=$(echo "$METRICS" | awk '/^rampart_upstream_errors_total/ {s += $2} END {print s + 0}')
ERRLINES=$(grep -c " ERROR " "$WORK/rampart.log" || true)
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$WORK/mix.txt"); NON2XX=${NON2XX:-0}
echo "== proxy-caused errors: 5xx sent $FIVE, upstream errors $UPERR, ERROR log lines $ERRLINES, non-2xx in the mix $NON2XX"
if [ "$FIVE" != 0 ] || [ "$UPERR" != 0 ] || [ "$ERRLINES" != 0 ] || [ "$NON2XX" != 0 ]; then
  grep " ERROR " "$WORK/rampart.log" | sort | uniq -c | sort -rn | head -5 || true
  exit 1
fi
