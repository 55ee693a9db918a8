#!/usr/bin/env bash
# Compressed downloads (BENCHMARKS.md, docs/compression.md), with real Go binaries and the default
# settings (zstd level 19, window 8 MiB; gzip level 6):
#   1. bytes on the wire for Debian's promtool (48 MB) with zstd and with gzip (budget: zstd
#      at most 35 % of the binary);
#   2. the time to make each variant of a ~100 MB binary (promtool and prometheus end to end:
#      98 MB of real Go code), from the server's own velox_cache_compression_seconds_total;
#   3. the server's CPU time per download, identity against zstd, in the same run (interleaved
#      rounds of ROUNDS × N curl downloads; user + system from /proc/<pid>/stat), budget: zstd
#      no higher.
#   bash benches/compression.sh            # N=20 ROUNDS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20}
ROUNDS=${ROUNDS:-3}
GO1=${GO1:-/usr/bin/promtool}
GO2=${GO2:-/usr/bin/prometheus}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -s "http://127.0.0.1:$AP/metrics" | awk -v m="$1" 'index($0, m" ") == 1 {print $2}'; }

# Starts a stand-in Velox building a copy of $1 and a release velox-cache in front of it;
# asks for one build and waits until both variants are made. Sets VP PP AP vc_pid digest.
serve() {
  local binary=$1 name=$2
  VP=$(port); PP=$(port); AP=$(port)
  # The artifact root must exist when velox-cache starts (it checks): not left to the stand-in.
  mkdir -p "$work/$name-out"
  "$TARGET/release/examples/fake_velox" "127.0.0.1:$VP" "$work/$name-out" 10ms "$binary" >"$work/$name-fv.log" 2>&1 &
  pids+=($!)
  RUST_LOG=info "$TARGET/release/velox-cache" serve --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" \
    --data-dir "$work/$name-data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/$name-out" \
    >"$work/$name-vc.log" 2>&1 &
  vc_pid=$!
  pids+=("$vc_pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  printf '{"request_id":"b66d5617-64dd-419b-a68b-b002938320ab","target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"v5.2.7"}]}' >"$work/req.json"
  curl -sS --data @"$work/req.json" -H 'content-type: application/json' -o "$work/$name-first" "http://127.0.0.1:$PP/_velox/v1/builds" \
    || { echo "the build failed" >&2; tail -n 20 "$work/$name-vc.log" "$work/$name-fv.log" >&2; exit 1; }
  digest=$(sha256sum <"$work/$name-first" | cut -c1-64)
  for _ in $(seq 1200); do
    z=$(metric 'velox_cache_compressions_total{encoding="zstd",outcome="stored"}')
    g=$(metric 'velox_cache_compressions_total{encoding="gzip",outcome="stored"}')
    [ "${z:-0}" = 1 ] && [ "${g:-0}" = 1 ] && break
    sleep 0.5
  done
  [ "${z:-0}" = 1 ] && [ "${g:-0}" = 1 ] || { echo "variants of $name not made" >&2; cat "$work/$name-vc.log" >&2; exit 1; }
}

# 2. Time to make the variants of ~100 MB.
cat "$GO1" "$GO2" >"$work/go-100mb"
big=$(stat -c %s "$work/go-100mb")
serve "$work/go-100mb" big
zs=$(metric 'velox_cache_compression_seconds_total{encoding="zstd"}')
gs=$(metric 'velox_cache_compression_seconds_total{encoding="gzip"}')
echo "making the variants of a $big-byte binary: zstd ${zs} s, gzip ${gs} s"
kill "$vc_pid"; wait "$vc_pid" 2>/dev/null || true

# 1. and 3. promtool.
size=$(stat -c %s "$GO1")
serve "$GO1" go1
URL="http://127.0.0.1:$PP/_velox/v1/artifacts/$digest"
zw=$(curl -s -H 'Accept-Encoding: zstd' -o /dev/null -w '%{size_download}' "$URL")
gw=$(curl -s -H 'Accept-Encoding: gzip' -o /dev/null -w '%{size_download}' "$URL")
iw=$(curl -s -o /dev/null -w '%{size_download}' "$URL")
check=$(curl -s --compressed "$URL" | sha256sum | cut -c1-64)
[ "$check" = "$digest" ] || { echo "curl --compressed did not decode to the binary" >&2; exit 1; }
awk -v s="$size" -v z="$zw" -v g="$gw" -v i="$iw" 'BEGIN {
  printf "bytes on the wire for %d bytes: identity %d, zstd %d (%.1f %%), gzip %d (%.1f %%)\n", s, i, z, 100*z/s, g, 100*g/s }'

declare -A total
total[identity]=0; total[zstd]=0
for r in $(seq "$ROUNDS"); do
  for enc in identity zstd; do
    before=$(cpu "$vc_pid")
    for _ in $(seq "$N"); do
      if [ "$enc" = zstd ]; then
        curl -s -H 'Accept-Encoding: zstd' -o /dev/null "$URL"
      else
        curl -s -o /dev/null "$URL"
      fi
    done
    after=$(cpu "$vc_pid")
    t=$((after - before))
    total[$enc]=$((total[$enc] + t))
    awk -v t="$t" -v hz="$ticks" -v n="$N" -v e="$enc" -v r="$r" 'BEGIN {
      printf "round %d, %s: %.2f ms of server CPU per download\n", r, e, 1000*t/hz/n }'
  done
done
awk -v i="${total[identity]}" -v z="${total[zstd]}" -v hz="$ticks" -v n="$((N * ROUNDS))" 'BEGIN {
  printf "server CPU per download over %d each: identity %.2f ms, zstd %.2f ms (%.0f %% of identity)\n", n, 1000*i/hz/n, 1000*z/hz/n, (i ? 100*z/i : 0) }'
