#!/usr/bin/env bash
# The download path against nginx (BENCHMARKS.md), in one run, interleaved: velox-cache serving a cached
# 64 MiB artifact and nginx (`sendfile on`) serving the very same blob file, both on loopback.
#   bash benches/download_vs_nginx.sh            # installs nginx-light and wrk when missing (root)
#   VC_BINS="/path/a/velox-cache /path/b/velox-cache" bash benches/download_vs_nginx.sh
#       A/B: each other build serves a copy of the data dir, measured interleaved with the rest
# Prints each figure (best of ROUNDS, and the spread of all rounds), nginx's, and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
ROUNDS=${ROUNDS:-3}
SLOW=${SLOW:-1000}
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light wrk >/dev/null
fi
cargo build --release --locked --bin velox-cache --example fake_velox >/dev/null 2>&1
# Where cargo put them (CARGO_TARGET_DIR, when set, moves them).
rel=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
extra_pids=()
cleanup() { kill "${vc_pid:-}" "${extra_pids[@]}" "${fv_pid:-}" 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VP=$(port); PP=$(port); AP=$(port); NP=$(port)
SIZE=$((64 * 1024 * 1024))

# velox-cache refuses to start on an artifact_root that does not exist yet; the stand-in
# creates it too, but races the server for it.
mkdir -p "$work/out"
"$rel"/examples/fake_velox "127.0.0.1:$VP" "$work/out" 10ms "$SIZE" >"$work/fv.log" 2>&1 & fv_pid=$!
RUST_LOG=warn "$rel"/velox-cache serve --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" \
  --data-dir "$work/data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" >"$work/vc.log" 2>&1 & vc_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
printf '{"target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"v5.2.7"}]}' >"$work/req.json"
digest=$(curl -s --data @"$work/req.json" "http://127.0.0.1:$PP/_velox/v1/builds" | sha256sum | cut -c1-64)
blobdir="$work/data/blobs/sha256/${digest:0:2}"
[ -f "$blobdir/$digest" ] || { echo "the artifact was not cached" >&2; exit 1; }

cat >"$work/nginx.conf" <<CONF
user root;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$NP; root $blobdir; location / { } }
}
CONF
nginx -c "$work/nginx.conf" -p "$work"
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$NP/$digest" && break; sleep 0.1; done
VC="http://127.0.0.1:$PP/_velox/v1/artifacts/$digest"
NG="http://127.0.0.1:$NP/$digest"
servers=(nginx velox)
declare -A urls pids ports
urls[nginx]=$NG; urls[velox]=$VC
read -r -a bins <<<"${VC_BINS:-}"
for i in "${!bins[@]}"; do
  # Each other build serves a copy of the data dir (one data dir, one process).
  name="velox-$((i + 1))"
  [ "$i" = 0 ] && { kill -TERM "$vc_pid"; wait "$vc_pid" 2>/dev/null || true; }
  cp -a "$work/data" "$work/data-$name"
  lp=$(port); ap=$(port)
  RUST_LOG=warn "${bins[$i]}" serve --listen "127.0.0.1:$lp" --admin-listen "127.0.0.1:$ap" \
    --data-dir "$work/data-$name" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" >"$work/$name.log" 2>&1 &
  pids[$name]=$!; extra_pids+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ap/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  urls[$name]="http://127.0.0.1:$lp/_velox/v1/artifacts/$digest"; ports[$name]=$lp
  curl -s -o /dev/null "${urls[$name]}"
  servers+=("$name")
done
if [ ${#bins[@]} -gt 0 ]; then
  RUST_LOG=warn "$rel"/velox-cache serve --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" \
    --data-dir "$work/data" --server-url "http://127.0.0.1:$VP" --artifact-root "$work/out" >"$work/vc.log" 2>&1 & vc_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
fi
curl -s -o /dev/null "$VC"; curl -s -o /dev/null "$NG"  # warm the page cache

# wrk's "Transfer/sec" and "Requests/sec" in bytes and requests; its 50% latency in ms.
to_bytes() { python3 -c "import sys; v=sys.argv[1]; m={'B':1,'KB':1024,'MB':1024**2,'GB':1024**3}; u=v.lstrip('0123456789.'); print(float(v[:len(v)-len(u)])*m[u])" "$1"; }
to_ms() { python3 -c "import sys; v=sys.argv[1]; m={'us':0.001,'ms':1,'s':1000}; u=v.lstrip('0123456789.'); print(float(v[:len(v)-len(u)])*m[u])" "$1"; }
best() { grep -v '^$' | sort -g | tail -1; }
least() { grep -v '^$' | sort -g | head -1; }

# CPU time (user + system, in clock ticks) of a comma-separated list of processes.
ticks() { python3 -c "
import sys
t=0
for p in sys.argv[1].split(','):
    f=open(f'/proc/{p}/stat').read().rsplit(')',1)[1].split()
    t+=int(f[11])+int(f[12])
print(t)" "$1"; }
hz=$(getconf CLK_TCK)
ngx_workers=$(pgrep -P "$(cat "$work/nginx.pid")" | paste -sd, -)
declare -A thr rps lat cpu
pids[nginx]=$ngx_workers; pids[velox]=$vc_pid
for name in "${servers[@]}"; do thr[$name]=""; rps[$name]=""; lat[$name]=""; cpu[$name]=""; done
for round in $(seq "$ROUNDS"); do
  for name in "${servers[@]}"; do
    url=${urls[$name]}
    out=$(wrk -t2 -c8 -d"${SECS}s" "$url")
    thr[$name]+="$(to_bytes "$(awk '/Transfer\/sec/{print $2}' <<<"$out")")"$'\n'
    out=$(wrk -t1 -c1 -d"${SECS}s" --latency -H 'Range: bytes=0-1023' "$url")
    lat[$name]+="$(to_ms "$(awk '$1=="50%"{print $2}' <<<"$out")")"$'\n'
    t0=$(ticks "${pids[$name]}")
    out=$(wrk -t2 -c64 -d"${SECS}s" -H 'Range: bytes=0-1023' "$url")
    t1=$(ticks "${pids[$name]}")
    rps[$name]+="$(awk '/Requests\/sec/{print $2}' <<<"$out")"$'\n'
    n=$(awk '/requests in/{print $1}' <<<"$out")
    cpu[$name]+="$(python3 -c "print(($t1-$t0)/$hz*1e6/$n)")"$'\n'
  done
done
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2])*100:.0f} %')" "$1" "$2"; }
# "best (min-max)" of one server's rounds; $2 = scale, $3 = "low" when less is better, $4 = decimals.
summary() { python3 -c "
import sys
v=[float(x) for x in sys.argv[1].split()]; k=float(sys.argv[2]); low=sys.argv[3]=='low'; d=int(sys.argv[4])
b=min(v) if low else max(v)
f=lambda x: f'{x/k:.{d}f}'
print(f'{f(b)} ({f(min(v))}-{f(max(v))})')" "$1" "$2" "$3" "$4"; }
for name in "${servers[@]}"; do [ "$name" = nginx ] && continue
  echo "== $name against nginx (best of $ROUNDS rounds, spread in brackets)"
  t_v=$(best <<<"${thr[$name]}"); t_n=$(best <<<"${thr[nginx]}")
  printf '%-44s %-26s %-26s %s\n' "64 MiB full downloads, 8 clients, GB/s" "$(summary "${thr[$name]}" 1e9 high 2)" "$(summary "${thr[nginx]}" 1e9 high 2)" "$(ratio "$t_v" "$t_n")"
  l_v=$(least <<<"${lat[$name]}"); l_n=$(least <<<"${lat[nginx]}")
  printf '%-44s %-26s %-26s %s\n' "1 KiB range, one client, p50 ms" "$(summary "${lat[$name]}" 1 low 3)" "$(summary "${lat[nginx]}" 1 low 3)" "$(ratio "$l_v" "$l_n")"
  r_v=$(best <<<"${rps[$name]}"); r_n=$(best <<<"${rps[nginx]}")
  printf '%-44s %-26s %-26s %s\n' "1 KiB range, 64 connections, req/s" "$(summary "${rps[$name]}" 1 high 0)" "$(summary "${rps[nginx]}" 1 high 0)" "$(ratio "$r_v" "$r_n")"
  c_v=$(least <<<"${cpu[$name]}"); c_n=$(least <<<"${cpu[nginx]}")
  printf '%-44s %-26s %-26s %s\n' "  server CPU per 1 KiB range request, us" "$(summary "${cpu[$name]}" 1 low 1)" "$(summary "${cpu[nginx]}" 1 low 1)" "$(ratio "$c_v" "$c_n")"
done

# Slow downloads: RSS growth per connection while $SLOW clients hang on a 64 MiB download.
read -r n_v _ _ per_v < <(python3 benches/slow_clients.py "$vc_pid" 127.0.0.1 "$PP" "/_velox/v1/artifacts/$digest" "$SLOW")
read -r n_n _ _ per_n < <(python3 benches/slow_clients.py "$ngx_workers" 127.0.0.1 "$NP" "/$digest" "$SLOW")
printf '%-58s %10s KiB %10s KiB %8s\n' "RSS growth per slow download ($n_v / $n_n clients)" "$per_v" "$per_n" "-"
for name in "${servers[@]:2}"; do
  read -r n_b _ _ per_b < <(python3 benches/slow_clients.py "${pids[$name]}" 127.0.0.1 "${ports[$name]}" "/_velox/v1/artifacts/$digest" "$SLOW")
  printf '%-58s %10s KiB\n' "$name: RSS growth per slow download ($n_b clients)" "$per_b"
done

# HEAD: bytes the server reads (rchar) for 100 HEAD requests on one connection.
r0=$(awk '/^rchar/{print $2}' "/proc/$vc_pid/io")
args=(); for _ in $(seq 100); do args+=(--next -s -o /dev/null -I "$VC"); done; curl "${args[@]:1}"
r1=$(awk '/^rchar/{print $2}' "/proc/$vc_pid/io")
printf '%-58s %10s B/req %14s %8s\n' "HEAD: bytes read by the server per request" "$(( (r1 - r0) / 100 ))" "-" "-"
