#!/usr/bin/env bash
# Stage under .gpu/ (gitignored) everything `bash bench/device_check.sh` needs on the lent GPU
# machine, which has python3.12 + CUDA torch, torchvision, numpy, scipy, pillow, typer, rich,
# opencv but no network, no pydantic, no dlib-bin (and no pytest):
#   .gpu/whl/    CPython 3.12 manylinux wheels of what it lacks (pydantic stack, dlib-bin, pytest + its deps incl. pygments)
#   .gpu/pkgs/   face_recognition_models with only the two models the dlib embedder loads
#                (5-point landmarks + ResNet, xz: 26 MB instead of the 100 MB package)
#   .gpu/crops/  a realistic mix of face crops as users have them, which the device script
#                replicates on the device's disk to the record counts it needs:
#                LFW (250x250 JPEG), glint18 (112x112 JPEG), LFW re-cropped loose (JPEG, from
#                bench/shift_sets.py's lfw-loose when present) and glint18 saved as PNG
# The working tree and .gpu/ travel together under a 64 MiB limit: this script fails if both
# together exceed BUDGET_MIB (default 60).
#
# Usage (repo root):  bash scripts/device_prep.sh      then hand the lead the carry list [".gpu"]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo /work/main/.venv/bin/python)}"
DATA="${DATA:-$root/../shared/data}"
[ -d "$DATA/lfw" ] || DATA=/work/shared/data
LOOSE="${LOOSE:-/work/extdata/sets/lfw-loose}"
N_LFW="${N_LFW:-240}" N_GLINT="${N_GLINT:-120}" N_LOOSE="${N_LOOSE:-80}" N_PNG="${N_PNG:-30}"
BUDGET_MIB="${BUDGET_MIB:-62}"
out="$root/.gpu"
rm -rf "$out"; mkdir -p "$out/whl" "$out/pkgs/face_recognition_models/models" "$out/crops"

# shellcheck source=device_lib.sh
. "$root/scripts/device_lib.sh"
# Versions as pinned for the images (images/requirements/*.txt) and this venv's pytest.
device_wheels "$out/whl" 3.12 "${PYDANTIC_WHEELS[@]}" dlib-bin==20.0.1.post1 pytest==9.2.0 pluggy==1.7.0 \
  iniconfig==2.3.1 packaging==26.4 pygments==2.21.0

models="$(PYTHONPATH='' "$PYTHON" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("face_recognition_models"); print(pathlib.Path(list(s.submodule_search_locations)[0]) / "models")')"
# xz-compressed (31 -> 26 MiB, what keeps the carry under its limit); bench/device_check.sh
# unpacks them on the device's disk
for m in shape_predictor_5_face_landmarks.dat dlib_face_recognition_resnet_model_v1.dat; do
  xz -9 -T2 -c "$models/$m" > "$out/pkgs/face_recognition_models/models/$m.xz"
done
echo '"""Trimmed copy for the device check: the two models the dlib embedder loads."""' \
  > "$out/pkgs/face_recognition_models/__init__.py"

# Crops: evenly spaced over the sorted file lists (deterministic), flat names by source.
"$PYTHON" - "$DATA" "$LOOSE" "$out/crops" "$N_LFW" "$N_GLINT" "$N_LOOSE" "$N_PNG" <<'EOF'
import shutil, sys
from pathlib import Path
import numpy as np
from PIL import Image

data, loose, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
n_lfw, n_glint, n_loose, n_png = map(int, sys.argv[4:8])

def pick(root, n, offset=0):
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files or n <= 0:
        return []
    idx = (np.linspace(0, len(files) - 1, n).round().astype(int) + offset) % len(files)
    return [files[i] for i in dict.fromkeys(idx)]

counts = {}
for name, root, n in (("lfw", data / "lfw", n_lfw), ("glint18", data / "glint18", n_glint), ("lfw-loose", loose, n_loose)):
    fs = pick(root, n) if root.is_dir() else []
    for k, f in enumerate(fs):
        shutil.copyfile(f, out / f"{name}-{k:04d}{f.suffix.lower()}")
    counts[name] = len(fs)
# PNG crops, as some detectors write them: other glint18 images than the JPEG sample
for k, f in enumerate(pick(data / "glint18", n_png, offset=7)):
    Image.open(f).convert("RGB").save(out / f"glint18png-{k:04d}.png", optimize=True)
counts["glint18 png"] = n_png
print("crops:", counts)
EOF

# infomap (stripped, ~4 MB) for the clustering step: .gpu/cluster/site
INFOMAP_ONLY=1 PYTHON="$PYTHON" bash "$root/scripts/cluster_scale_prep.sh"
du -sh "$out"/*
carry_budget "$out" "$BUDGET_MIB" "lower N_LFW / N_LOOSE / N_PNG"
