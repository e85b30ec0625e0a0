#!/usr/bin/env bash
# Stage what bench/cluster_scale.py needs on the bare GPU machine (python3 + CUDA torch, numpy,
# scipy, typer, rich; no pydantic, no infomap, no faiss, no network):
#   .gpu/cluster/site/   pydantic (+ its 4 small deps) and infomap for CPython 3.12, unpacked,
#                        infomap's extension stripped of debug symbols (85 MB -> 4 MB), ~14 MB
# Then on the GPU machine, from the repo root (carry: .gpu/cluster):
#   PYTHONPATH=.gpu/cluster/site:shared python3 bench/cluster_scale.py --device cuda --n 1000000 \
#     --methods infomap,gcn-ve,adanets,gcn-v,threshold --time-limit 62 --budget 240 \
#     --knn-check 20000 --json "$OUT/cluster_scale.json"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3)}"
PY="${GPU_PY:-3.12}"
out="$root/.gpu/cluster"
rm -rf "$out"; mkdir -p "$out/site"
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  plat+=(--platform "$p")
done
# pydantic as pinned for the images (scripts/gpu_smoke_prep.sh); infomap as in the dev venv
# INFOMAP_ONLY=1 (scripts/device_prep.sh): infomap alone, the pydantic stack comes from .gpu/whl
pkgs=(infomap==2.16.0)
[ "${INFOMAP_ONLY:-0}" = 1 ] || pkgs+=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0)
"$PYTHON" -m pip install -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  "${plat[@]}" --target "$out/site" "${pkgs[@]}" 2>&1 | grep -v 'is ignored' || true
so="$(ls "$out"/site/infomap/_infomap.cpython-*-x86_64-linux-gnu.so)"
strip --strip-unneeded "$so"
rm -rf "$out"/site/bin "$out"/site/infomap/datasets "$out"/site/infomap/__pycache__
if [ "${INFOMAP_ONLY:-0}" != 1 ] && { [ ! -d "$out/site/pydantic" ] || [ ! -d "$out/site/pydantic_core" ]; }; then
  echo "pydantic missing in $out/site" >&2; exit 1
fi
[ -f "$so" ] || { echo "infomap missing in $out/site" >&2; exit 1; }
du -sh "$out"
