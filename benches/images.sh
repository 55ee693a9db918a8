#!/usr/bin/env bash
# Images (docs/images.md): the time to make the layer of a channel's binary (the first manifest
# request, and the server's own histogram), then the bytes and time of pulling the image with
# skopeo (`copy` of one platform into an OCI layout) against downloading the same binary with
# curl. Release binary, stand-in Velox writing SIZE-byte binaries (default 100 MB,
# incompressible: gzip's worst case), all on loopback, page cache warm after the first pull.
#   bash benches/images.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
T=${CARGO_TARGET_DIR:-target}
SIZE=${SIZE:-100000000}
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
command -v skopeo >/dev/null || { echo "benches/images.sh needs skopeo (apt-get install skopeo)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VP=$(port)
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
"$T"/release/examples/fake_velox "127.0.0.1:$VP" "$work/out" 0s "$SIZE" >"$work/fv.log" 2>&1 & pids+=($!)
cat >"$work/config.toml" <<TOML
[channels.prod]
rr_version = "v2025.1.2"
plugins = [{ module_name = "github.com/roadrunner-server/http/v5", tag = "v5.2.7" }]
platforms = ["linux/amd64"]
TOML
P=$(port); A=$(port)
RUST_LOG=warn VELOX_CACHE_CONFIG="$work/config.toml" VELOX_CACHE_CACHE__MIN_FREE_GB=0 \
  "$T"/release/velox-cache serve --listen "127.0.0.1:$P" --admin-listen "127.0.0.1:$A" \
  --data-dir "$work/data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" \
  >"$work/vc.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$A/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

channel() { curl -sf "http://127.0.0.1:$P/_velox/v1/channels/prod"; }
field() { python3 -c "import json,sys; c=json.load(sys.stdin); print($1)"; }
for _ in $(seq 600); do
  channel | field 'c["current"]["id"] if c["current"] else ""' | grep -q . && break
  sleep 0.1
done
echo "binary: $SIZE bytes"

# The layer: made by the first manifest request.
first=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$P/v2/rr/prod/manifests/latest")
made=$(curl -s "http://127.0.0.1:$A/metrics" | awk '/^velox_registry_layer_build_duration_seconds_sum/ {print $2}')
again=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$P/v2/rr/prod/manifests/latest")
printf 'layer made in %.3f s (server histogram); first manifest request %.3f s, the next %.4f s\n' "$made" "$first" "$again"

# A plain download against a skopeo pull of the same binary.
for run in $(seq "$RUNS"); do
  curl -s -o "$work/rr" -w "curl     run $run: %{size_download} bytes in %{time_total} s\n" \
    "http://127.0.0.1:$P/_velox/v1/channels/prod/linux/amd64"
  rm -rf "$work/oci"
  start=$(date +%s.%N)
  skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$P/rr/prod:latest" "oci:$work/oci:latest" >/dev/null
  end=$(date +%s.%N)
  bytes=$(find "$work/oci/blobs" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
  printf 'skopeo   run %s: %s bytes (layer, config, manifests) in %.3f s\n' "$run" "$bytes" "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')"
done
