#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine: runs its build stage's COPY and RUN steps in a
# scratch folder, then runs the built binary as the runtime stage would (its ENV, as a non-root
# user, data dir and ports swapped for temp ones) and its HEALTHCHECK command, up and down.
#   bash .ci/dockerfile-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# Build stage: COPY (not --from) and RUN, in order, from the first FROM to the second.
build_stage=$(awk '/^FROM /{n++} n==1' Dockerfile)
workdir=$(awk '/^WORKDIR /{print $2}' <<<"$build_stage")
mkdir -p "$work/root$workdir"
while read -r instr rest; do
  case "$instr" in
    COPY)
      read -r -a parts <<<"$rest"
      dest=${parts[-1]}; unset 'parts[-1]'
      for src in "${parts[@]}"; do
        case "$dest" in
          ./) cp -r "$repo/$src" "$work/root$workdir/" ;;
          *) mkdir -p "$work/root$workdir/$dest"; cp -r "$repo/$src/." "$work/root$workdir/$dest/" ;;
        esac
      done ;;
    RUN)
      echo "== RUN $rest"
      # A persistent target dir keeps reruns fast; the sources are the copied ones only.
      (cd "$work/root$workdir" && CARGO_TARGET_DIR="$repo/target/dockerfile-check" bash -c "$rest") ;;
  esac
done < <(sed -e ':a;/\\$/N;s/\\\n//;ta' <<<"$build_stage" | grep -E '^(COPY|RUN) ')
bin="$repo/target/dockerfile-check/release/velox-cache"
[ -x "$bin" ] || { echo "the build stage did not produce target/release/velox-cache" >&2; exit 1; }
echo "== build stage ok: $(du -h "$bin" | cut -f1) binary"

# Runtime stage: its ENV, with the data dir and ports swapped; as an unprivileged user.
runtime=$(awk '/^FROM /{n++} n==2' Dockerfile | sed -e ':a;/\\$/N;s/\\\n//;ta')
env_args=()
for kv in $(grep -E '^ENV ' <<<"$runtime" | sed 's/^ENV //'); do env_args+=("$kv"); done
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PP=$(port); AP=$(port)
mkdir -p "$work/data"; cp "$bin" "$work/velox-cache"; chmod 755 "$work" "$work/velox-cache"
user_run=()
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
  chown nobody "$work/data"; user_run=(runuser -u nobody --)
fi
overrides=(VELOX_CACHE_DATA_DIR="$work/data" VELOX_CACHE_LISTEN="127.0.0.1:$PP" VELOX_CACHE_ADMIN_LISTEN="127.0.0.1:$AP")
entry=$(grep -E '^ENTRYPOINT ' <<<"$runtime" | sed 's/^ENTRYPOINT //')
[ "$entry" = '["velox-cache"]' ] || { echo "unexpected ENTRYPOINT $entry" >&2; exit 1; }
env "${env_args[@]}" "${overrides[@]}" "${user_run[@]}" "$work/velox-cache" >"$work/out.log" 2>&1 & pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
health=$(grep -E '^HEALTHCHECK ' <<<"$runtime" | sed 's/.*CMD //')
[ "$health" = '["velox-cache", "healthcheck"]' ] || { echo "unexpected HEALTHCHECK $health" >&2; exit 1; }
env "${env_args[@]}" "${overrides[@]}" "$work/velox-cache" healthcheck
echo "== healthcheck while serving: exit 0"
curl -s -o /dev/null -w "== public listener answers %{http_code} for an unknown route\n" "http://127.0.0.1:$PP/nothing"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
if env "${env_args[@]}" "${overrides[@]}" "$work/velox-cache" healthcheck; then
  echo "healthcheck said ready with the server down" >&2; exit 1
fi
echo "== healthcheck with the server down: exit 1"
echo "dockerfile check: ok"
