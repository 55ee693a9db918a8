#!/usr/bin/env bash
# The bucket's cost (docs/object-storage.md), against moto's S3 server on loopback: a 64 MiB miss
# stored in the bucket (and the same miss with the local backend), hits from the local tier and
# from the bucket (1 KiB ranges, served after a verified fill), and whole 64 MiB downloads from
# each (hashed as they stream). moto is Python: bucket
# figures are moto's speed, not S3's; they show what a round trip to the bucket adds.
#   bash benches/bucket.sh [hits]
set -euo pipefail
cd "$(dirname "$0")/.."
HITS=${1:-200}
SIZE=$((64 * 1024 * 1024))
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
# Where cargo put them (CARGO_TARGET_DIR, when set, moves them).
rel=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
moto=$(pyenv which moto_server 2>/dev/null || command -v moto_server)
MP=$(port); VP=$(port)
"$moto" -H 127.0.0.1 -p "$MP" >"$work/moto.log" 2>&1 & pids+=($!)
until [ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$MP/velox-bench")" = 200 ]; do sleep 0.2; done
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
"$rel"/examples/fake_velox "127.0.0.1:$VP" "$work/out" 0s "$SIZE" >"$work/fv.log" 2>&1 & pids+=($!)

# replica NAME BACKEND: starts a velox-cache; sets ${NAME}_P (public) and ${NAME}_A (admin) ports.
replica() {
  local name=$1 backend=$2 pp ap
  pp=$(port); ap=$(port)
  env RUST_LOG=info AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench \
    VELOX_CACHE_STORAGE__BACKEND="$backend" VELOX_CACHE_STORAGE__S3__BUCKET=velox-bench \
    VELOX_CACHE_STORAGE__S3__ENDPOINT="http://127.0.0.1:$MP" VELOX_CACHE_STORAGE__S3__ALLOW_HTTP=true \
    "$rel"/velox-cache serve --listen "127.0.0.1:$pp" --admin-listen "127.0.0.1:$ap" \
    --data-dir "$work/$name" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" \
    >"$work/$name.log" 2>&1 & pids+=($!)
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$ap/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  printf -v "${name}_P" %s "$pp"; printf -v "${name}_A" %s "$ap"
}
replica a s3; replica b s3; replica l local

req() { printf '{"target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"%s"}]}' "$1"; }
req v5.2.7 >"$work/req.json"
# A one-byte range: the figure is the miss (Velox's answer, the copy, the upload), not a download.
miss() { curl -s -o /dev/null -w '%{time_total}' -H 'Range: bytes=0-0' --data @"$work/req.json" "http://127.0.0.1:$1/_velox/v1/builds"; }
t_s3=$(miss "$a_P"); t_local=$(miss "$l_P")
stored=$(grep -o 'in the bucket ([0-9]* bytes) in [0-9]* ms' "$work/a.log" | tail -1)
awk -v s="$t_s3" -v l="$t_local" -v st="$stored" 'BEGIN {
  printf "64 MiB miss, whole request: s3 backend %.0f ms, local backend %.0f ms (the bucket adds %.0f ms)\n", s*1000, l*1000, (s-l)*1000
  printf "  of which, measured by the replica: stored %s\n", st }'

# p50/p90/p99 of HITS requests on one keep-alive connection.
lat() {
  local label=$1; shift
  local args=()
  for _ in $(seq "$HITS"); do args+=(--next -s -o /dev/null -w '%{time_total}\n' "$@"); done
  curl "${args[@]:1}" | sort -n | awk -v n="$HITS" -v l="$label" '{a[NR]=$1} END {printf "%s, %d requests: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms\n", l, n, a[int(n*0.5)]*1000, a[int(n*0.9)]*1000, a[int(n*0.99)]*1000}'
}
digest=$(curl -s -H 'Range: bytes=0-0' -D - -o /dev/null --data @"$work/req.json" "http://127.0.0.1:$a_P/_velox/v1/builds" | tr -d '\r' | awk -F'"' 'tolower($1) ~ /^etag/ {print $2}')
lat "hit, local tier (POST builds, 1 KiB range)" -H 'Range: bytes=0-1023' --data @"$work/req.json" "http://127.0.0.1:$a_P/_velox/v1/builds"
lat "hit, local tier (GET artifacts, 1 KiB range)" -H 'Range: bytes=0-1023' "http://127.0.0.1:$a_P/_velox/v1/artifacts/$digest"
# A range from a replica that lacks the binary is served from a verified copy: the first one
# fills the replica's tier with the whole blob (hashed), every later one reads its disk. Each
# sample is a fresh replica.
for route in builds artifacts; do
  times=()
  for i in 1 2 3; do
    replica "r$route$i" s3
    pv="r$route${i}_P"
    if [ "$route" = builds ]; then
      t=$(curl -s -o /dev/null -w '%{time_total}' -H 'Range: bytes=0-1023' --data @"$work/req.json" "http://127.0.0.1:${!pv}/_velox/v1/builds")
    else
      t=$(curl -s -o /dev/null -w '%{time_total}' -H 'Range: bytes=0-1023' "http://127.0.0.1:${!pv}/_velox/v1/artifacts/$digest")
    fi
    times+=("$t")
  done
  printf '%s\n' "${times[@]}" | awk -v r="$route" '{printf "%s%.0f", (NR>1?", ":""), $1*1000} BEGIN {printf "first 1 KiB range on a replica without the binary (%s: verified 64 MiB fill, then the range), 3 fresh replicas: ", r} END {print " ms"}'
done
lat "the same replica's next ranges (POST builds, 1 KiB range, from its tier)" -H 'Range: bytes=0-1023' --data @"$work/req.json" "http://127.0.0.1:${rbuilds3_P}/_velox/v1/builds"

full() { curl -s -o /dev/null -w '%{time_total} %{size_download}' --data @"$work/req.json" "http://127.0.0.1:$1/_velox/v1/builds"; }
read -r t1 n1 <<<"$(full "$b_P")"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$b_A/v1/cache/$(grep -o 'filled the local tier with [0-9a-f]*' "$work/b.log" | tail -1 | awk '{print $NF}')" >/dev/null 2>&1 && break; sleep 0.1; done
read -r t2 n2 <<<"$(full "$b_P")"
read -r t3 n3 <<<"$(full "$a_P")"
# Two whole downloads at once on a fresh replica: one fills the tier, the other hashes its own
# stream (every byte checked either way).
replica p s3
full "$p_P" >"$work/par1" & f1=$!
full "$p_P" >"$work/par2" & f2=$!
wait "$f1" "$f2"
read -r tp1 _ <"$work/par1" || true; read -r tp2 _ <"$work/par2" || true
awk -v a="$tp1" -v b="$tp2" 'BEGIN { printf "two whole 64 MiB downloads at once from the bucket on a fresh replica (one fills, one only hashes): %.0f ms and %.0f ms\n", a*1000, b*1000 }'
awk -v t1="$t1" -v t2="$t2" -v t3="$t3" -v n="$n1" 'BEGIN {
  printf "64 MiB download: from the bucket (first hit on a fresh replica, filling its tier) %.0f ms (%.0f MB/s); from that replica'"'"'s tier afterwards %.0f ms; from the builder'"'"'s tier %.0f ms\n", t1*1000, n/t1/1e6, t2*1000, t3*1000 }'
curl -s "http://127.0.0.1:$b_A/metrics" | grep -E '^velox_bucket_(read_bytes|fills)_total' | sed 's/^/replica b: /'
