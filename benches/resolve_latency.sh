#!/usr/bin/env bash
# What resolving floating plugin tags adds to a request: the release binary, the stand-in Velox,
# and a Go module proxy that is a plain directory served by python's http.server, all on
# loopback. Compares hits of a pinned request with hits of a `latest` request whose resolution is
# remembered (resolve.ttl = 5m), and with hits of a `latest` request that asks the proxy every
# time (resolve.ttl = 1ms: the cost a floating miss pays for its lookup).
#   bash benches/resolve_latency.sh [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mod="github.com/roadrunner-server/http/v5"
mkdir -p "$work/proxy/$mod/@v"
echo '{"Version":"v5.2.7","Time":"2025-01-30T12:00:00Z"}' >"$work/proxy/$mod/@latest"
GP=$(port)
python3 -m http.server --bind 127.0.0.1 "$GP" -d "$work/proxy" >/dev/null 2>&1 & pids+=($!)
VP=$(port)
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
target/release/examples/fake_velox "127.0.0.1:$VP" "$work/out" 0s >"$work/fv.log" 2>&1 & pids+=($!)

serve() { # name ttl -> starts a server, sets PP_<name>
  local p a; p=$(port); a=$(port)
  RUST_LOG=warn VELOX_CACHE_RESOLVE__GOPROXY="http://127.0.0.1:$GP" VELOX_CACHE_RESOLVE__TTL="$2" \
    target/release/velox-cache serve --listen "127.0.0.1:$p" --admin-listen "127.0.0.1:$a" \
    --data-dir "$work/data-$1" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" \
    >"$work/vc-$1.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$a/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  eval "PP_$1=$p"
}
serve remembered 5m
serve asking 1ms

req() { printf '{"target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"%s","tag":"%s"}]}' "$mod" "$1"; }
req v5.2.7 >"$work/pinned.json"
req latest >"$work/latest.json"

measure() { # label port body
  local url="http://127.0.0.1:$2/_velox/v1/builds" args=()
  curl -s -o /dev/null --data @"$3" "$url"   # the miss that fills the cache
  for _ in $(seq "$N"); do args+=(--next -s -o /dev/null -w '%{time_starttransfer}\n' -H 'Range: bytes=0-1023' --data @"$3" "$url"); done
  curl "${args[@]:1}" | sort -n | awk -v n="$N" -v l="$1" '{a[NR]=$1} END {printf "%-48s p50 %.3f ms, p90 %.3f ms, p99 %.3f ms\n", l, a[int(n*0.5)]*1000, a[int(n*0.9)]*1000, a[int(n*0.99)]*1000}'
}
for round in 1 2 3; do
  echo "round $round ($N hits each, one keep-alive connection, 1 KiB range):"
  measure "  pinned v5.2.7" "$PP_remembered" "$work/pinned.json"
  measure "  latest, resolution remembered" "$PP_remembered" "$work/latest.json"
  measure "  latest, proxy asked every time" "$PP_asking" "$work/latest.json"
done
