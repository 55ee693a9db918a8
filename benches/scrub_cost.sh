#!/usr/bin/env bash
# What the scrub costs the hits: 1 KiB-range hits on one keep-alive connection, p50/p99/p99.9,
# with the scrub off and then while a pass reads at its default rate (64 MB/s), in ROUNDS
# rounds each after one warm-up round; the server's CPU time per second of wall time in each
# round, and with no requests at all during the pass (what the scrub alone costs).
# Release binary and the stand-in Velox on loopback; BLOBS artifacts of SIZE bytes give the pass
# enough to read (default 16 x 64 MiB = 16.8 s at 64 MB/s). Prints the figures, cleans up.
#   bash benches/scrub_cost.sh [hits per round]
set -euo pipefail
cd "$(dirname "$0")/.."
HITS=${1:-3000}
ROUNDS=${ROUNDS:-3}
BLOBS=${BLOBS:-16}
SIZE=${SIZE:-67108864}
RATE=${RATE:-64}
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
work=$(mktemp -d)
cleanup() { kill "${vc_pid:-}" "${fv_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VP=$(port)
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
target/release/examples/fake_velox "127.0.0.1:$VP" "$work/out" 0s "$SIZE" >"$work/fv.log" 2>&1 & fv_pid=$!
req() { printf '{"target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"v5.2.%s"}]}' "$1"; }

start() { # scrub_interval
  PP=$(port); AP=$(port)
  RUST_LOG=info VELOX_CACHE_CACHE__SCRUB_INTERVAL="$1" VELOX_CACHE_CACHE__SCRUB_RATE_MB="$RATE" \
    target/release/velox-cache serve --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" \
    --data-dir "$work/data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" >"$work/vc.log" 2>&1 & vc_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
}
stop() { kill "$vc_pid"; wait "$vc_pid" 2>/dev/null || true; }
cpu() { awk '{print $14 + $15}' "/proc/$vc_pid/stat"; }
round() { # label
  local args=() t0 c0 t1 c1
  for _ in $(seq "$HITS"); do args+=(--next -s -o /dev/null -w '%{time_total}\n' -H 'Range: bytes=0-1023' --data @"$work/req0.json" "http://127.0.0.1:$PP/_velox/v1/builds"); done
  t0=$(date +%s.%N); c0=$(cpu)
  curl "${args[@]:1}" >"$work/t.txt"
  t1=$(date +%s.%N); c1=$(cpu)
  sort -n "$work/t.txt" | awk -v n="$HITS" -v l="$1" -v cpu="$(echo "($c1 - $c0) / $(getconf CLK_TCK) / ($t1 - $t0)" | bc -l)" \
    '{a[NR]=$1} END {printf "%-10s %d hits: p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms; server CPU %.2f s/s\n", l, n, a[int(n*0.5)]*1000, a[int(n*0.99)]*1000, a[int(n*0.999)]*1000, cpu}'
}

start 0
for i in $(seq 0 $((BLOBS - 1))); do
  req "$i" >"$work/req$i.json"
  curl -sf -o /dev/null --data @"$work/req$i.json" "http://127.0.0.1:$PP/_velox/v1/builds"
done
echo "$BLOBS blobs of $SIZE bytes stored; scrub rate $RATE MB/s"
round "warm-up" >/dev/null
for _ in $(seq "$ROUNDS"); do round "scrub off"; done
stop

start 1s
for _ in $(seq 200); do grep -q "scrub: pass started" "$work/vc.log" && break; sleep 0.05; done
round "warm-up" >/dev/null
for _ in $(seq "$ROUNDS"); do round "scrub on"; done
c0=$(cpu); sleep 2; c1=$(cpu)
echo "scrub alone (no requests, 2 s): server CPU $(echo "($c1 - $c0) / $(getconf CLK_TCK) / 2" | bc -l | cut -c1-4) s/s"
if grep -q "scrub: pass finished" "$work/vc.log"; then
  echo "(the pass ended before the measurements did: make BLOBS or SIZE larger)"
fi
for _ in $(seq 400); do grep -q "scrub: pass finished" "$work/vc.log" && break; sleep 0.05; done
grep "scrub: pass finished" "$work/vc.log" | head -1 | sed 's/.*scrub:/scrub:/'
stop
