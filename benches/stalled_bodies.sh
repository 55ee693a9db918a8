#!/usr/bin/env bash
# Descriptors against stalled request bodies: how many stalled connections it takes to stop cache
# hits and /healthz, under a soft open-file limit of 1,024, for three setups:
#   before  hard limit 1,024, no connection cap (actix's own 25,600 a worker), no body timeout:
#           what velox-cache did before `max_connections` and `request_body_timeout` existed
#   capped  hard limit 1,024 (nothing to raise): max_connections defaults to 80 % of 1,024
#   raised  hard limit of this shell (the server raises its soft limit to it)
# capped and raised run with request_body_timeout = BODY_TIMEOUT (default 10s, to keep the run
# short; the product default is 30s). Each hit and /healthz gets WAIT seconds (default 20).
# Release binary and the stand-in Velox on loopback; prints one line per run, cleans up.
#   bash benches/stalled_bodies.sh [counts...]      (default: 500 900 1000 1100)
#   SETUPS="before" bash benches/stalled_bodies.sh 940 960 980     (only some setups)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${*:-500 900 1000 1100}
WAIT=${WAIT:-20}
BODY_TIMEOUT=${BODY_TIMEOUT:-10s}
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
work=$(mktemp -d)
cleanup() { kill "${vc_pid:-}" "${fv_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
HARD=$(ulimit -Hn)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VP=$(port)
# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
target/release/examples/fake_velox "127.0.0.1:$VP" "$work/out" 0s >"$work/fv.log" 2>&1 & fv_pid=$!
printf '{"target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"v5.2.7"}]}' >"$work/req.json"

SETUPS=${SETUPS:-before capped raised}
run() { # name nofile env...
  local name=$1 nofile=$2; shift 2
  [[ " $SETUPS " == *" $name "* ]] || return 0
  for n in $COUNTS; do
    PP=$(port); AP=$(port)
    env "$@" RUST_LOG=warn prlimit --nofile="$nofile" -- target/release/velox-cache serve \
      --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" --data-dir "$work/data-$name" \
      --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" >"$work/vc.log" 2>&1 & vc_pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -sf -o /dev/null --data @"$work/req.json" "http://127.0.0.1:$PP/_velox/v1/builds"
    printf '%-7s nofile %-12s ' "$name" "$nofile"
    python3 benches/stalled_bodies.py 127.0.0.1 "$PP" "$AP" "$n" 3 "$WAIT" "$work/req.json"
    kill "$vc_pid"; wait "$vc_pid" 2>/dev/null || true
  done
}

run before 1024:1024 VELOX_CACHE_MAX_CONNECTIONS=$((25600 * $(nproc))) VELOX_CACHE_REQUEST_BODY_TIMEOUT=1h
run capped 1024:1024 VELOX_CACHE_REQUEST_BODY_TIMEOUT="$BODY_TIMEOUT"
run raised "1024:$HARD" VELOX_CACHE_REQUEST_BODY_TIMEOUT="$BODY_TIMEOUT"
