#!/usr/bin/env bash
# Channels (docs/channels.md): what a request on a channel URL costs against the artifact URL of
# the same binary, and how long a tag that moves on the Go module proxy takes to become the
# channel's current release (poll wait + resolution + the builds + the flip). Release binary,
# stand-in Velox (build delay BUILD, default 0s) and a Go module proxy that is a directory
# served by python's http.server, all on loopback.
#   bash benches/channels.sh [requests] [moves]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
MOVES=${2:-5}
BUILD=${BUILD:-0s}
POLL=${POLL:-1s}
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
# Where cargo put them (CARGO_TARGET_DIR, when set, moves them).
rel=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mod="github.com/roadrunner-server/http/v5"
mkdir -p "$work/proxy/$mod/@v"
latest() { echo "{\"Version\":\"$1\",\"Time\":\"2025-01-30T12:00:00Z\"}" >"$work/proxy/$mod/@latest"; }
latest v5.2.7
GP=$(port)
python3 -m http.server --bind 127.0.0.1 "$GP" -d "$work/proxy" >/dev/null 2>&1 & pids+=($!)
VP=$(port)
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
"$rel"/examples/fake_velox "127.0.0.1:$VP" "$work/out" "$BUILD" >"$work/fv.log" 2>&1 & pids+=($!)
cat >"$work/config.toml" <<TOML
[channels.prod]
rr_version = "v2025.1.2"
plugins = [{ module_name = "$mod", tag = "latest" }]
platforms = ["linux/amd64", "linux/arm64"]

[prebuild]
poll = "$POLL"
TOML
P=$(port); A=$(port)
RUST_LOG=warn VELOX_CACHE_CONFIG="$work/config.toml" VELOX_CACHE_RESOLVE__GOPROXY="http://127.0.0.1:$GP" \
  VELOX_CACHE_RESOLVE__TTL=0s \
  "$rel"/velox-cache serve --listen "127.0.0.1:$P" --admin-listen "127.0.0.1:$A" \
  --data-dir "$work/data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" \
  >"$work/vc.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$A/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

channel() { curl -sf "http://127.0.0.1:$P/_velox/v1/channels/prod"; }
field() { python3 -c "import json,sys; c=json.load(sys.stdin); print($1)"; }
until channel | field 'c["current"]["id"] if c["current"] else ""' | grep -q .; do sleep 0.05; done
digest=$(channel | field 'c["current"]["binaries"]["linux/amd64"]["digest"]')

measure() { # label url
  local args=()
  for _ in $(seq "$N"); do args+=(--next -s -o /dev/null -w '%{time_starttransfer}\n' -H 'Range: bytes=0-1023' "$2"); done
  curl "${args[@]:1}" | sort -n | awk -v n="$N" -v l="$1" '{a[NR]=$1} END {printf "%-40s p50 %.3f ms, p90 %.3f ms, p99 %.3f ms\n", l, a[int(n*0.5)]*1000, a[int(n*0.9)]*1000, a[int(n*0.99)]*1000}'
}
for round in 1 2 3; do
  echo "round $round ($N GETs each, one keep-alive connection, 1 KiB range):"
  measure "  channel URL /channels/prod/linux/amd64" "http://127.0.0.1:$P/_velox/v1/channels/prod/linux/amd64"
  measure "  artifact URL /artifacts/<sha256>" "http://127.0.0.1:$P/_velox/v1/artifacts/$digest"
done

echo "tag moved -> channel flipped (poll $POLL, build delay $BUILD per platform, 2 platforms):"
for i in $(seq "$MOVES"); do
  v="v5.3.$i"
  start=$(date +%s.%N)
  latest "$v"
  until channel | field "c['current']['resolved'].get('$mod')" | grep -qx "$v"; do sleep 0.02; done
  end=$(date +%s.%N)
  python3 -c "print(f'  {\"$v\"}: {($end - $start):.2f} s')"
done
