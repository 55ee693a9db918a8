#!/usr/bin/env bash
# The added cost of access checking on a hit, end to end: TTFB of a 1 KiB range of a cached
# binary over one keep-alive connection, on a server without tokens (everything open, the
# baseline) and on one with 1,000 tokens, anonymously, with a bearer token, and with a signed URL.
# Starts the release binary and the stand-in Velox on loopback, prints the figures, cleans up.
#   bash benches/access_hit.sh [hits]
set -euo pipefail
cd "$(dirname "$0")/.."
HITS=${1:-2000}
API=bench-api-token-0123456789
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
work=$(mktemp -d)
cleanup() { kill "${vc_pid:-}" "${fv_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VP=$(port); PP=$(port); AP=$(port)
target_dir=${CARGO_TARGET_DIR:-target}
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
"$target_dir/release/examples/fake_velox" "127.0.0.1:$VP" "$work/out" 0s >"$work/fv.log" 2>&1 & fv_pid=$!

serve() {
  RUST_LOG=warn "$target_dir/release/velox-cache" serve --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" \
    --data-dir "$work/data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" "$@" >>"$work/vc.log" 2>&1 & vc_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
}
stop() { kill "$vc_pid"; wait "$vc_pid" 2>/dev/null || true; }

# hits LABEL URL [curl args…]: HITS sequential 1 KiB ranges on one connection, TTFB percentiles.
hits() {
  local label=$1 url=$2; shift 2
  local args=()
  for _ in $(seq "$HITS"); do args+=(--next -s -o /dev/null -w '%{http_code} %{time_starttransfer}\n' -H 'Range: bytes=0-1023' "$@" "$url"); done
  curl "${args[@]:1}" >"$work/ttfb.txt"
  if grep -qv '^206 ' "$work/ttfb.txt"; then echo "$label: not every answer was 206"; sort "$work/ttfb.txt" | cut -d' ' -f1 | uniq -c; exit 1; fi
  cut -d' ' -f2 "$work/ttfb.txt" | sort -n | awk -v n="$HITS" -v l="$label" '{a[NR]=$1} END {printf "%s: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms\n", l, a[int(n*0.5)]*1000, a[int(n*0.9)]*1000, a[int(n*0.99)]*1000}'
}

# Baseline: no token exists.
serve
req='{"target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"v5.2.7"}]}'
digest=$(curl -sf --data "$req" "http://127.0.0.1:$PP/_velox/v1/builds" | sha256sum | cut -c1-64)
ART="http://127.0.0.1:$PP/_velox/v1/artifacts/$digest"
hits "no token exists (open)" "$ART"
stop

# The same data dir with api_token and 1,000 tokens.
export VELOX_CACHE_API_TOKEN=$API VELOX_CACHE_AUTH__URL_SECRET=bench-url-secret-0123456789
serve
for i in $(seq 1000); do
  out=$(curl -sf -H "Authorization: Bearer $API" --data "{\"name\":\"t$i\",\"scope\":\"read\"}" -H 'content-type: application/json' "http://127.0.0.1:$AP/v1/tokens")
  [ "$i" = 500 ] && TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$out")
done
signed=$(curl -sf -H "Authorization: Bearer $API" -H 'content-type: application/json' --data "{\"path\":\"/_velox/v1/artifacts/$digest\"}" "http://127.0.0.1:$AP/v1/signed-urls" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
hits "1,000 tokens, anonymous read" "$ART"
hits "1,000 tokens, bearer token" "$ART" -H "Authorization: Bearer $TOKEN"
hits "1,000 tokens, signed URL" "http://127.0.0.1:$PP$signed"
hits "1,000 tokens, anonymous read (again, for the spread)" "$ART"
stop
