#!/usr/bin/env bash
# Time to first byte of a cache hit, and Velox calls under 50 concurrent identical misses.
# Starts the release binary and the stand-in Velox on loopback, prints the figures, cleans up.
#   bash benches/hit_ttfb.sh [hits]
set -euo pipefail
cd "$(dirname "$0")/.."
HITS=${1:-2000}
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
work=$(mktemp -d)
cleanup() { kill "${vc_pid:-}" "${fv_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VP=$(port); PP=$(port); AP=$(port)
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
target/release/examples/fake_velox "127.0.0.1:$VP" "$work/out" 1s >"$work/fv.log" 2>&1 & fv_pid=$!
RUST_LOG=warn target/release/velox-cache serve --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" \
  --data-dir "$work/data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" >"$work/vc.log" 2>&1 & vc_pid=$!
# Up to 30 s for both listeners (a loaded machine starts slower); a server that never came up is
# said so, with its log, instead of 50 curl `000`s.
up=0
for _ in $(seq 300); do
  if curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && curl -s -o /dev/null "http://127.0.0.1:$PP/" 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
if [ "$up" != 1 ]; then echo "velox-cache did not come up on 127.0.0.1:$PP/$AP within 30 s:" >&2; cat "$work/vc.log" >&2; exit 1; fi

req() { printf '{"target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"%s"}]}' "$1"; }
URL="http://127.0.0.1:$PP/_velox/v1/builds"

# 50 concurrent identical misses.
req v5.2.7 >"$work/req.json"
for _ in $(seq 50); do curl -s -o /dev/null -w '%{http_code} ' --data @"$work/req.json" "$URL" & done; wait_pids=$(jobs -p | grep -v -e "^$vc_pid$" -e "^$fv_pid$" || true)
for p in $wait_pids; do wait "$p" || true; done; echo
metrics=$(curl -s "http://127.0.0.1:$AP/metrics")
echo "50 concurrent identical misses: Velox builds = $(grep '^velox_builds_total{status="success"}' <<<"$metrics" | cut -d' ' -f2), coalesced = $(grep '^velox_builds_coalesced_total' <<<"$metrics" | cut -d' ' -f2)"

# Hits: 1 KiB ranges, one client, one keep-alive connection.
args=()
for _ in $(seq "$HITS"); do args+=(--next -s -o /dev/null -w '%{time_starttransfer}\n' -H 'Range: bytes=0-1023' --data @"$work/req.json" "$URL"); done
curl "${args[@]:1}" >"$work/ttfb.txt"
sort -n "$work/ttfb.txt" | awk -v n="$HITS" '{a[NR]=$1} END {printf "hit (POST builds, 1 KiB range), %d requests, one connection: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms\n", n, a[int(n*0.5)]*1000, a[int(n*0.9)]*1000, a[int(n*0.99)]*1000}'
digest=$(curl -s --data @"$work/req.json" "$URL" | sha256sum | cut -c1-64)
args=()
for _ in $(seq "$HITS"); do args+=(--next -s -o /dev/null -w '%{time_starttransfer}\n' -H 'Range: bytes=0-1023' "http://127.0.0.1:$PP/_velox/v1/artifacts/$digest"); done
curl "${args[@]:1}" >"$work/ttfb2.txt"
sort -n "$work/ttfb2.txt" | awk -v n="$HITS" '{a[NR]=$1} END {printf "hit (GET artifacts, 1 KiB range), %d requests, one connection: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms\n", n, a[int(n*0.5)]*1000, a[int(n*0.9)]*1000, a[int(n*0.99)]*1000}'
grep -E '^velox_cache_lookup_duration_seconds_(sum|count)' <(curl -s "http://127.0.0.1:$AP/metrics") | awk '{v[$1]=$2} END {printf "hit decision (key + sled lookup + open), mean over %d: %.1f us\n", v["velox_cache_lookup_duration_seconds_count"], v["velox_cache_lookup_duration_seconds_sum"]/v["velox_cache_lookup_duration_seconds_count"]*1e6}'
