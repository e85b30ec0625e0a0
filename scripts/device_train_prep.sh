#!/usr/bin/env bash
# Stage under .gpu-train/ (gitignored) what `bash bench/device_train.sh` needs on the lent GPU
# machine (python3.12 + CUDA torch, numpy, scipy, typer, rich; no network, no pydantic, no faiss:
# the kNN falls back to torch on CUDA):
#   .gpu-train/whl/           CPython 3.12 wheels of the pydantic stack (versions as the images pin)
#   .gpu-train/pool_<emb>.npz the training identities of every training crop style, embedded with
#                             EMBEDDER (default mbf), int8 per-row scaled (bench/train_shift.py
#                             --save-pool; cosines within ~0.002 of float32): 63,427 faces, ~29 MiB
# The working tree and .gpu-train/ travel together under a 64 MiB limit: this script fails if both
# together exceed BUDGET_MIB (default 62). Do not stage .gpu/ (device_check) beside it in one call.
#
# Usage (repo root):  ROOT=/work/extdata/work-mbf bash scripts/device_train_prep.sh
#   then run bench/device_train.sh on the device with carry [".gpu-train"]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3)}"
EMBEDDER="${EMBEDDER:-mbf}"
ROOT="${ROOT:?set ROOT to the folder of work dirs embedded with EMBEDDER (bench/regimes.py layout)}"
BUDGET_MIB="${BUDGET_MIB:-62}"
out="$root/.gpu-train"
rm -rf "$out"; mkdir -p "$out/whl"

plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
wheels=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$out/whl" "${wheels[@]}" 2>&1 | grep -v 'is ignored' || true
n="$(find "$out/whl" -name '*.whl' | wc -l)"
[ "$n" -eq "${#wheels[@]}" ] || { echo "expected ${#wheels[@]} wheels in $out/whl, got $n (pip download failed?)" >&2; exit 1; }

PYTHONPATH="$root/shared" "$PYTHON" bench/train_shift.py --root "$ROOT" --embedder "$EMBEDDER" --save-pool "$out/pool_$EMBEDDER.npz"
du -sh "$out"/*
tree_kib="$(git ls-files -z | xargs -0 du -k --apparent-size 2>/dev/null | awk '{s+=$1} END {print s}')"
untracked_kib="$(git ls-files -z --others --exclude-standard | xargs -0 -r du -k --apparent-size 2>/dev/null | awk '{s+=$1} END {print s+0}')"
stage_kib="$(du -sk --apparent-size "$out" | cut -f1)"
total_mib=$(( (tree_kib + untracked_kib + stage_kib) / 1024 ))
echo "tracked $((tree_kib / 1024)) MiB + untracked $((untracked_kib / 1024)) MiB + .gpu-train $((stage_kib / 1024)) MiB = ${total_mib} MiB (budget ${BUDGET_MIB} MiB)"
[ "$total_mib" -le "$BUDGET_MIB" ] || { echo "over budget" >&2; exit 1; }
