#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine: runs its build stage's COPY and RUN steps in a
# scratch folder; checks that the dependencies build in a layer of their own (before the
# sources are copied) and that a source change then rebuilds velox-cache alone; then runs the
# built binary as the runtime stage would (its ENV, as a non-root user, data dir and ports
# swapped for temp ones) and its HEALTHCHECK command, up and down.
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
root="$work/root$workdir"
mkdir -p "$root"
mapfile -t steps < <(sed -e ':a;/\\$/N;s/\\\n//;ta' <<<"$build_stage" | grep -E '^(COPY|RUN) ')
target="$repo/target/dockerfile-check"

# Runs steps[$1..] with the build context in $2; the output of RUN steps goes to $3.
run_steps() {
  local from=$1 ctx=$2 log=$3 i instr rest dest src
  for ((i = from; i < ${#steps[@]}; i++)); do
    read -r instr rest <<<"${steps[$i]}"
    case "$instr" in
      COPY)
        read -r -a parts <<<"$rest"
        dest=${parts[-1]}; unset 'parts[-1]'
        for src in "${parts[@]}"; do
          case "$dest" in
            ./) cp -r "$ctx/$src" "$root/" ;;
            *) mkdir -p "$root/$dest"; cp -r "$ctx/$src/." "$root/$dest/" ;;
          esac
        done ;;
      RUN)
        echo "== RUN $rest"
        # A persistent target dir keeps reruns fast; the sources are the copied ones only.
        (cd "$root" && CARGO_TARGET_DIR="$target" bash -c "$rest") 2>&1 | tee -a "$log" ;;
    esac
  done
}

# The dependency layer: a RUN that builds before the sources are copied, from the manifests
# alone (the scratch folder holds only what the COPY steps before it put there).
src_step=-1; deps_step=-1
for ((i = 0; i < ${#steps[@]}; i++)); do
  read -r instr rest <<<"${steps[$i]}"
  if [ "$instr" = COPY ] && [ $src_step -lt 0 ] && grep -qE '(^| )src( |$)' <<<"$rest"; then src_step=$i; fi
  if [ "$instr" = RUN ] && [ $src_step -lt 0 ] && grep -q 'cargo build' <<<"$rest"; then deps_step=$i; fi
done
[ $src_step -ge 0 ] || { echo "no COPY of src in the build stage" >&2; exit 1; }
[ $deps_step -ge 0 ] || { echo "no cargo build before src is copied: every source change rebuilds every dependency" >&2; exit 1; }

run_steps 0 "$repo" "$work/first.log"
for dep in actix_web sled awc; do
  compgen -G "$target/release/deps/lib${dep}-*.rlib" >/dev/null \
    || { echo "the dependency layer did not build $dep" >&2; exit 1; }
done

# A source change, as Docker sees it: the layers up to the dependency build are reused (the
# scratch folder is put back as that layer left it), the steps from the COPY of src run again,
# and only velox-cache may be compiled.
ctx="$work/ctx"; mkdir -p "$ctx"
cp -r "$repo/Cargo.toml" "$repo/Cargo.lock" "$repo/src" "$repo/benches" "$repo/assets" "$ctx/"
echo '// a source change' >>"$ctx/src/lib.rs"
rm -rf "$root/src" "$root/benches" "$root/assets"
run_steps "$src_step" "$ctx" "$work/rebuild.log"
compiled=$(grep -oE 'Compiling [^ ]+' "$work/rebuild.log" | awk '{print $2}' | sort -u | tr '\n' ' ')
[ "$compiled" = "velox-cache " ] || { echo "a source change compiled: $compiled" >&2; exit 1; }
echo "== a source change rebuilds velox-cache alone"
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
