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
rm -rf "$out"
# shellcheck source=device_lib.sh
. "$root/scripts/device_lib.sh"
device_wheels "$out/whl" 3.12 "${PYDANTIC_WHEELS[@]}"

PYTHONPATH="$root/shared" "$PYTHON" bench/train_shift.py --root "$ROOT" --embedder "$EMBEDDER" --save-pool "$out/pool_$EMBEDDER.npz"
du -sh "$out"/*
carry_budget "$out" "$BUDGET_MIB" "stage fewer faces or drop files from the tree"
