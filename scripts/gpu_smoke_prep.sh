#!/usr/bin/env bash
# Stage what `make gpu-smoke` needs on a bare GPU machine that cannot download anything and
# already has python3 + CUDA torch (+ numpy, scipy, pillow, typer, rich), e.g. the lent H200:
#   .gpu/whl/    CPython 3.12 wheels of what such a machine lacks (pydantic, dlib-bin)
#   .gpu/pkgs/   face_recognition_models with only the two models the dlib embedder loads
#                (5-point landmarks + ResNet, 31 MB instead of the 100 MB package)
#   .gpu/demo/   the demo input (7 face crops)
# About 40 MB (the carried-files limit there is 64 MiB: faiss-gpu, 135 MB, and DALI do not fit,
# and the smoke test reports them "not installed"). Then, on the GPU machine, from the repo root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl \
#     && PYTHONPATH=/tmp/site:.gpu/pkgs:shared python3 bench/gpu_smoke.py --input .gpu/demo/input.json
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3)}"
PY="${GPU_PY:-3.12}"
out="$root/.gpu"
rm -rf "$out"; mkdir -p "$out/whl" "$out/pkgs/face_recognition_models/models"
# shellcheck source=device_lib.sh
. "$here/device_lib.sh"
device_wheels "$out/whl" "$PY" "${PYDANTIC_WHEELS[@]}" dlib-bin==20.0.1.post1
models="$("$PYTHON" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("face_recognition_models"); print(pathlib.Path(list(s.submodule_search_locations)[0]) / "models")')"
cp "$models/shape_predictor_5_face_landmarks.dat" "$models/dlib_face_recognition_resnet_model_v1.dat" \
   "$out/pkgs/face_recognition_models/models/"
echo '"""Trimmed copy for the GPU smoke test: the two models the dlib embedder loads."""' \
  > "$out/pkgs/face_recognition_models/__init__.py"
if [ -f "$root/example/input.json" ]; then
  cp -r "$root/example" "$out/demo"
  rm -rf "$out/demo/work" "$out/demo/output.json" "$out/demo/report.html"
else
  "$PYTHON" -m facecluster.demo "$out/demo" >/dev/null
fi
du -sh "$out"
