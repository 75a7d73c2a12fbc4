#!/usr/bin/env bash
# Profile-guided optimisation: remake pgo/rampart.profdata, the profile the production build reads
# (`./dev release`, the Dockerfile), from a training run of an instrumented build. Takes about
# 10 minutes on 2 cores (the instrumented build is most of it).
#
#   scripts/pgo.sh            # after `cd ../shared/bench && ./setup.sh && ./start.sh`
#
# 1. builds Rampart with `-Cprofile-generate` into target/pgo-generate (its own folder: other
#    flags would rebuild every crate of the ordinary release build);
# 2. runs it on the bench's configs, Redis store then memory store, with wrk on each of the
#    bench's request kinds (passthrough, cache hit, slow origin, fresh gzip of 39 KB and 150 KB,
#    cached gzip, br and zstd, a 429 flood) and curl on a request with credentials (the cache
#    bypassed), a dot-segment path (400), DELETE and POST (the origin's 405) and /metrics;
# 3. stops it with SIGTERM (the profile is written as the process exits) and merges the raw
#    profiles with llvm-profdata into pgo/rampart.profdata.
#
# Needs the bench's origin (:18001, :18002) and Redis (:16379), wrk and curl, and an
# llvm-profdata of the compiler's LLVM version: `rustup component add llvm-tools` provides one
# (it is looked for there first), or `LLVM_PROFDATA=/path/to/llvm-profdata`.
# Remake the profile after changing the request path or updating Pingora: functions whose code
# changed since the profile was made are optimised without it (rustc warns about none of this).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "pgo.sh: needs $tool (../shared/bench/setup.sh installs it)" >&2; exit 2; }
done
curl -s -o /dev/null http://127.0.0.1:18001/health ||
  { echo "pgo.sh: the bench's origin is not on :18001 (cd ../shared/bench && ./start.sh)" >&2; exit 2; }
host=$(rustc -vV | awk '/^host:/ { print $2 }')
profdata=${LLVM_PROFDATA:-$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata}
[ -x "$profdata" ] || {
  echo "pgo.sh: no llvm-profdata at $profdata: rustup component add llvm-tools (or set LLVM_PROFDATA)" >&2
  exit 2
}

# A fixed folder, so the flags (and with them the instrumented build) stay the same between runs.
raw=$PWD/target/pgo-generate/profraw
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

RUSTFLAGS="-Cprofile-generate=$raw" cargo build --release --locked --bin rampart \
  --target-dir target/pgo-generate
bin=target/pgo-generate/release/rampart
# Emptied after the build: the build scripts, instrumented too, leave their profiles here.
rm -rf "$raw"
# Where each process writes its raw profile (%p: its pid), whatever the build was told.
export LLVM_PROFILE_FILE="$raw/rampart-%p.profraw"

# One wrk run of SECS seconds; the rest of the arguments are wrk's.
load() { wrk -t1 -c32 -d"${SECS:-4}s" "$@" >/dev/null; }

train() {
  local open=$1 limited=$2
  redis-cli -p 16379 FLUSHALL >/dev/null 2>&1 || true
  RUST_LOG=warn "$bin" run --config "$open" & pids+=($!)
  RUST_LOG=warn "$bin" run --config "$limited" & pids+=($!)
  for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:18090/health && curl -s -o /dev/null http://127.0.0.1:18091/health && break
    sleep 0.2
  done
  local base=http://127.0.0.1:18090
  load "$base/api/v1/small"
  load "$base/api/v1/dashboard/kpis"
  load -c64 "$base/api/v1/dashboard/slow-kpis"
  load -H "Accept-Encoding: gzip" "$base/api/v1/dashboard/expense-trend"
  load -H "Accept-Encoding: gzip" "$base/static/app.js"
  load -H "Accept-Encoding: gzip" "$base/api/v1/dashboard/report"
  load -H "Accept-Encoding: br" "$base/api/v1/dashboard/report"
  load -H "Accept-Encoding: zstd" "$base/api/v1/dashboard/expense-trend"
  load "$base/"
  load http://127.0.0.1:18091/api/v1/small
  for _ in $(seq 200); do
    curl -s -o /dev/null "$base/api/v1/dashboard/kpis?x=1" -H 'Authorization: Bearer t'
    curl -s -o /dev/null "$base/api/%2e%2e/x"
    curl -s -o /dev/null -X DELETE "$base/api/v1/small"
    curl -s -o /dev/null -X POST --data-binary 'x' "$base/api/v1/small"
    curl -s -o /dev/null http://127.0.0.1:9091/metrics
  done
  # SIGTERM: the processes exit through their graceful shutdown and write their profiles.
  for p in "${pids[@]}"; do kill -TERM "$p"; done
  for p in "${pids[@]}"; do wait "$p" || true; done
  pids=()
}

train config/bench.toml config/bench-ratelimit.toml
train config/bench-memory.toml config/bench-ratelimit-memory.toml
mkdir -p pgo
# Sparse: functions the training never ran are left out rather than recorded as never run, so
# LLVM optimises them as it would without a profile instead of for size (TLS, HTTP/2, the error
# paths the training does not reach); it also makes the file a sixth of the size (1.5 MB).
"$profdata" merge --sparse -o pgo/rampart.profdata "$raw"
echo "pgo.sh: pgo/rampart.profdata ($(du -h pgo/rampart.profdata | cut -f1)) from $(ls "$raw" | wc -l) raw profiles"
