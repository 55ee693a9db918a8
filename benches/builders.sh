#!/usr/bin/env bash
# A pool of Velox builders (docs/builders.md): 16 distinct builds of BUILD (default 2s) each, all
# asked at once, against N stand-in Velox processes of max_concurrent = 1, for each N given
# (default 1 2 4). Prints the wall time from the first request to the last binary, how the
# builds spread over the builders, and SPEC §20's budget: 16 × BUILD / N plus 15 %.
#   bash benches/builders.sh [N ...]
# PROFILE=debug uses the debug build (what the test suite builds) instead of the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-2s}
BUILDS=${BUILDS:-16}
PROFILE=${PROFILE:-release}
NS=("$@")
[ ${#NS[@]} -eq 0 ] && NS=(1 2 4)
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
else
  cargo build --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
fi
bin="${CARGO_TARGET_DIR:-target}/$PROFILE"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
secs=$(python3 -c "import sys; s='$BUILD'; print(float(s[:-2])/1000 if s.endswith('ms') else float(s[:-1]))")

run() { # n
  local n=$1 dir="$work/n$1" cfg
  mkdir -p "$dir"
  cfg="$dir/config.toml"
  printf '[velox]\nhealth_interval = "1s"\n' >"$cfg"
  local vpids=()
  for i in $(seq "$n"); do
    local vp
    vp=$(port)
    mkdir -p "$dir/b$i"
    "$bin/examples/fake_velox" "127.0.0.1:$vp" "$dir/b$i" "$BUILD" >"$dir/b$i.log" 2>&1 &
    vpids+=($!); pids+=($!)
    printf '[[velox.servers]]\nname = "b%s"\nurl = "http://127.0.0.1:%s"\nmax_concurrent = 1\nartifact_root = "%s"\n' \
      "$i" "$vp" "$dir/b$i" >>"$cfg"
  done
  local P A
  P=$(port); A=$(port)
  # Compression off: its background zstd work competes for the CPU with what is measured here
  # (COMPRESSION=true puts it back).
  RUST_LOG=warn VELOX_CACHE_CONFIG="$cfg" VELOX_CACHE_CACHE__MIN_FREE_GB=0 \
    VELOX_CACHE_COMPRESSION__ENABLED="${COMPRESSION:-false}" \
    "$bin/velox-cache" serve --listen "127.0.0.1:$P" --admin-listen "127.0.0.1:$A" \
    --data-dir "$dir/data" --artifact-root "$dir" >"$dir/vc.log" 2>&1 &
  local vc=$!
  pids+=($vc)
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$A/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
  # Every builder up (the first probes have answered).
  for _ in $(seq 200); do
    [ "$(curl -sf "http://127.0.0.1:$A/v1/builders" | grep -o '"state":"up"' | wc -l)" -eq "$n" ] && break
    sleep 0.05
  done
  local start end
  start=$(date +%s.%N)
  local cpids=()
  for k in $(seq "$BUILDS"); do
    curl -sf -o /dev/null -w "%{time_total}\n" -H 'content-type: application/json' \
      --data "{\"request_id\":\"00000000-0000-4000-8000-$(printf '%012d' "$k")\",\"rr_version\":\"v2025.1.2\",\"target_platform\":{\"os\":\"linux\",\"arch\":\"amd64\"},\"plugins\":[{\"module_name\":\"github.com/roadrunner-server/http/v5\",\"tag\":\"v5.2.$k\"}]}" \
      "http://127.0.0.1:$P/_velox/v1/builds" >>"$dir/times" &
    cpids+=($!)
  done
  local failed=0
  for c in "${cpids[@]}"; do wait "$c" || failed=$((failed + 1)); done
  end=$(date +%s.%N)
  local spread
  spread=$(curl -sf "http://127.0.0.1:$A/v1/builders" |
    python3 -c "import json,sys; print(' '.join('%s:%s' % (b['id'], b['builds']) for b in json.load(sys.stdin)))")
  python3 -c "
n, b, s, t = $n, $BUILDS, $secs, $end - $start
budget = b * s / n * 1.15
print(f'N={n}: {b} builds of {s:g}s in {t:.2f}s (ideal {b*s/n:.2f}s, budget {budget:.2f}s: {\"within\" if t <= budget else \"OVER\"}); failed: $failed; builds per builder: $spread')
"
  if [ -n "${TIMES:-}" ]; then
    echo "  each request, seconds: $(sort -n "$dir/times" | tr '\n' ' ')"
    # Each builder's idle time between two builds: a binary's mtime is its build's end.
    python3 - "$dir" "$n" "$secs" "$start" <<'PY'
import os, sys
d, n, s, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
for i in range(1, n + 1):
    root = os.path.join(d, f"b{i}")
    ends = sorted(os.path.getmtime(os.path.join(root, h, "rr")) for h in os.listdir(root))
    gaps = [f"{b - s - a:.2f}" for a, b in zip(ends, ends[1:])]
    print(f"  b{i}: first call after {ends[0] - s - start:.2f}s, idle between builds: {' '.join(gaps)}")
PY
  fi
  kill "$vc" "${vpids[@]}" 2>/dev/null || true
  wait "$vc" "${vpids[@]}" 2>/dev/null || true
}

for n in "${NS[@]}"; do run "$n"; done
