#!/usr/bin/env bash
# Build, list and push the three stage images (recognition, gcn_ve, adanets).
# gcn_ve and adanets are thin layers on the shared clustering image (images/clustering), which
# `build` makes first whenever one of them is asked for.
#
#   scripts/images.sh build [--cpu] [STAGE...]   build (default: all three stages)
#   scripts/images.sh context [--cpu]            only stage the build context
#   scripts/images.sh sizes [--cpu]              `images` table of the built images
#   scripts/images.sh push                       push the GPU images to $REGISTRY
#
# GPU variant (default): BASE=nvidia/cuda (see the Dockerfiles), CUDA torch + faiss-gpu + DALI
#   from PyPI inside the build. Tag: $REGISTRY/facecluster-<stage>:<version>.
# CPU variant (--cpu, tests): the local debootstrap base (scripts/build-base.sh), CPU torch
#   2.13.0 + faiss-cpu, built OFFLINE (--no-index) from a wheelhouse filled on the host with
#   `pip download` (the CPU torch wheel is not on PyPI: pip finds it in the host's wheel
#   caches). Tag: $REGISTRY/facecluster-<stage>:<version>-cpu.
#
# Env: ENGINE=podman|docker, REGISTRY (default localhost), TAG (default: package version),
#      BASE (override the base image), PIP_ARGS (extra pip args inside the build, e.g. a
#      --cert for a proxy, with the file made visible to the build by ENGINE_BUILD_ARGS),
#      ENGINE_BUILD_ARGS (extra `build` args), PYTHON (host python with pip; default: python3),
#      ALLOW_MISSING_WEIGHTS=1 (development: build clustering images before their weights exist).
#      CONTEXT_DIR (default build/images/context; give concurrent builds different ones).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=podman-env.sh
. "$here/podman-env.sh"

STAGES_ALL=(recognition gcn_ve adanets)
PYTHON="${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3)}"
REGISTRY="${REGISTRY:-localhost}"
VERSION="$(sed -nE 's/^version *= *"([^"]+)".*/\1/p' "$root/pyproject.toml" | head -1)"
ctx="${CONTEXT_DIR:-$root/build/images/context}"   # staged build context (recreated each time)

# Versions of the CPU variant: exactly what the project's venv and CI use.
CPU_TORCH="torch==2.13.0"
CPU_FAISS="faiss-cpu==1.15.1"
CPU_PY="3.11"   # python3 of Debian 12, the local base

log() { echo "[images] $*" >&2; }

image_name() {  # stage variant → full image name
  local stage="$1" variant="$2" tag="${TAG:-$VERSION}"
  [ "$variant" = cpu ] && tag="$tag-cpu"
  echo "$REGISTRY/facecluster-${stage//_/-}:$tag"
}

stage_context() {  # variant
  local variant="$1"
  rm -rf "$ctx"; mkdir -p "$ctx/wheels" "$ctx/requirements"
  cp "$root/images/requirements/"*.txt "$ctx/requirements/"
  cp "$root/images/check_image.py" "$ctx/"
  log "building the facecluster wheel"
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$ctx/wheels" "$root" >/dev/null 2>"$ctx/wheel.log" \
    || { cat "$ctx/wheel.log" >&2; exit 1; }
  rm -rf "$root/build/lib" "$root/build/bdist."* 2>/dev/null || true
  if [ "$variant" = cpu ]; then
    # Wheelhouse for an offline build, kept between runs (pip skips files already there).
    local wh="$FACECLUSTER_CACHE/wheels-cp${CPU_PY/./}"
    mkdir -p "$wh"
    log "pip download (CPython $CPU_PY wheels) into $wh"
    local plat=()
    for p in manylinux_2_36_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
             manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
             manylinux2010_x86_64 manylinux1_x86_64 linux_x86_64; do plat+=(--platform "$p"); done
    "$PYTHON" -m pip download -q --disable-pip-version-check --only-binary=:all: \
      --python-version "$CPU_PY" --implementation cp "${plat[@]}" -d "$wh" \
      -r "$root/images/requirements/recognition.txt" -r "$root/images/requirements/clustering.txt" \
      "$CPU_TORCH" "$CPU_FAISS" 2>&1 \
      | grep -v 'is ignored: it is neither a file nor a directory' >&2 || true
    # Hard links: the context costs no copy of the ~1 GB of wheels.
    cp -l "$wh"/*.whl "$ctx/wheels/" 2>/dev/null || cp "$wh"/*.whl "$ctx/wheels/"
  fi
  # Content hashes of what the builds install (the wheel's own bytes carry timestamps):
  # the pinned dependencies, and the package (+ its build-time check).
  deps_hash="$( { (cd "$ctx" && sha256sum requirements/*); find "$ctx/wheels" -name '*.whl' ! -name 'facecluster-*' -printf '%f\n' | sort; } | sha256sum | cut -c1-16)"
  context_hash="$( { (cd "$root" && find shared/facecluster pyproject.toml -type f ! -path '*__pycache__*' ! -name '*.pyc' -print0 \
                      | sort -z | xargs -0 sha256sum); (cd "$ctx" && sha256sum requirements/* check_image.py); ls "$ctx/wheels"; } \
                   | sha256sum | cut -c1-16)"
  log "context ready: $(du -sh "$ctx" | cut -f1) in $ctx (hash $context_hash)"
}

build() {
  local variant=gpu stages=()
  for a in "$@"; do
    case "$a" in --cpu) variant=cpu ;; --gpu) variant=gpu ;; *) stages+=("$a") ;; esac
  done
  [ ${#stages[@]} -eq 0 ] && stages=("${STAGES_ALL[@]}")
  stage_context "$variant"
  local args=(--build-arg "DEPS_HASH=$deps_hash" --build-arg "CONTEXT_HASH=$context_hash" --build-arg "ALLOW_MISSING_WEIGHTS=${ALLOW_MISSING_WEIGHTS:-0}" --build-arg "VERSION=$VERSION" --build-arg "CREATED=$(git -C "$root" log -1 --format=%cI 2>/dev/null || echo unknown)"
              --build-arg "REVISION=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
              --build-arg "SOURCE=$(git -C "$root" remote get-url origin 2>/dev/null || echo)")
  if [ "$variant" = cpu ]; then
    local base="${BASE:-$("$here/build-base.sh")}"
    args+=(--build-arg "BASE=$base" --build-arg "TORCH=$CPU_TORCH" --build-arg "PIP_ARGS=--no-index ${PIP_ARGS:-}")
  else
    [ -n "${BASE:-}" ] && args+=(--build-arg "BASE=$BASE")
    [ -n "${PIP_ARGS:-}" ] && args+=(--build-arg "PIP_ARGS=$PIP_ARGS")
  fi
  # shellcheck disable=SC2206
  local extra=(${ENGINE_BUILD_ARGS:-})
  local clustering="" s
  local -a replaced=()  # filled by build_one, emptied by remove_replaced (bash's dynamic scope)
  for s in "${stages[@]}"; do
    if [ "$s" = gcn_ve ] || [ "$s" = adanets ]; then clustering="$(image_name clustering "$variant")"; fi
  done
  if [ -n "$clustering" ]; then  # the shared base of the two clustering stages, built first
    local cargs=()
    [ "$variant" = cpu ] && cargs=(--build-arg "FAISS=$CPU_FAISS")
    build_one clustering "$clustering" "${args[@]}" "${cargs[@]}" "${extra[@]}"
  fi
  for s in "${stages[@]}"; do
    local img sargs=()
    img="$(image_name "$s" "$variant")"
    case "$s" in
      recognition) [ "$variant" = cpu ] && sargs=(--build-arg "EXTRA=") ;;  # no GPU decode on CPU
      *) sargs=(--build-arg "CLUSTERING_IMAGE=$clustering") ;;
    esac
    build_one "$s" "$img" "${args[@]}" "${sargs[@]}" "${extra[@]}"
    echo "$img"
  done
  remove_replaced
}

build_one() {  # stage image build-args... (logs to stderr; prints nothing)
  local stage="$1" img="$2" t0=$SECONDS old new
  shift 2
  old="$($ENGINE image inspect --format '{{.Id}}' "$img" 2>/dev/null || true)"
  log "$ENGINE build $img"
  $ENGINE build "$@" -t "$img" -f "$root/images/$stage/Dockerfile" "$ctx" >&2
  log "built $img in $((SECONDS - t0)) s"
  new="$($ENGINE image inspect --format '{{.Id}}' "$img")"
  [ -n "$old" ] && [ "$old" != "$new" ] && replaced+=("$old")
  return 0
}

# Images that a rebuild left untagged: without this every package change leaves one more
# image per stage behind (a day of test runs filled a build machine's disk). Children first
# (the stage images before the clustering image they were built on); an image that is still
# tagged elsewhere or used by a container is refused by rmi and kept.
remove_replaced() {
  local i id
  for ((i = ${#replaced[@]} - 1; i >= 0; i--)); do
    id="${replaced[i]}"
    if $ENGINE rmi "$id" >/dev/null 2>&1; then log "removed the replaced image ${id:0:12}"; fi
  done
  return 0
}

case "${1:-build}" in
  build) shift || true; build "$@" ;;
  context) shift; v=gpu; [ "${1:-}" = --cpu ] && v=cpu; stage_context "$v" ;;
  sizes)
    shift || true; v=gpu; [ "${1:-}" = --cpu ] && v=cpu
    for s in "${STAGES_ALL[@]}"; do
      $ENGINE images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$(image_name "$s" "$v")"
    done ;;
  push)
    for s in "${STAGES_ALL[@]}"; do $ENGINE push "$(image_name "$s" gpu)"; done ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
