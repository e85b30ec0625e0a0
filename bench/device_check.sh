#!/usr/bin/env bash
# The one prepared device check of issue 12 (embedding throughput on one GPU node), run from the
# repo root on the lent machine after `bash scripts/device_prep.sh` staged .gpu/ here:
#
#   bash bench/device_check.sh                 # on the GPU machine ($OUT set; carry [".gpu"])
#   OUT=/tmp/devout bash bench/device_check.sh --cpu-smoke    # the same steps on CPU, tiny N
#
# Steps (each bounded by `timeout`, each prints its numbers; a failed or timed-out step is
# recorded and the script goes on):
#   0. unpack .gpu/whl into a private site dir and the xz'd dlib models; PYTHONPATH = site : pkgs : shared
#   1. the GPU tests that exist (tests/test_embed_backends.py, tests/test_embed_dali.py -k gpu/cuda/...)
#   2. replicate .gpu/crops to N distinct files on local disk (+ input JSONs)
#   3. per-step table (decode, face box, landmarks, chip, network) for the default alignment
#   4. whole commands `facecluster prepare` + `embed --device cuda` over N records (default
#      embedder) and N/4 records (peak RSS flat in N?)
#   4b. dlib's 5-point predictor batched in torch on the device (landmarks/s, agreement with dlib)
#   4c. the torch alignment (--embedder "dlib?align=torch": workers decode + HOG box only, landmarks
#       + chip batched on the device): per-step table, whole command over N records (default margin),
#       its parity with the CPU alignment on the device (landmarks, chips, cosine); the same three for
#       margin=agree (the GPU design: workers decode only, two detector-free starts on the device, HOG
#       on the host for the few crops whose starts disagree). The CPU margin=iter steps / e2e and the
#       align=torch margin=iter e2e rows of earlier versions were dropped for these (agree keeps the
#       default's alignment quality, iter does not; docs/benchmarks/embedding.md §7-8).
#   5. descriptor parity: port on the device vs dlib's own compute_face_descriptor (cosine)
#   6. clustering: every method on 1M synthetic dlib-like faces (bench/cluster_scale.py)
# Writes $OUT/summary.md, $OUT/summary.json and $OUT/log.txt (3 files).
# Timeouts of the embedding steps (1-5) add up to 550 s, the clustering step's CL_BUDGET + 30 = 220 s more
# (+ unpacking, a few s); expected on the H200 about 3 minutes. A global deadline (DEADLINE_S, 540 s on
# the device) cuts or skips whatever would run past it, so the summary always comes back.
set -uo pipefail
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 2
OUT="${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
LOG="$OUT/log.txt"
: > "$LOG"
T0=$(date +%s)
if [ "$SMOKE" = 1 ]; then
  DEV=cpu N="${N:-48}" NSTEP="${NSTEP:-24}" NET=64 BS=16 WORKERS="${WORKERS:-1}" TSCALE=3 NLM=32 NALIGN=24
else
  DEV=cuda N="${N:-20000}" NSTEP="${NSTEP:-600}" NET=8192 BS=256 WORKERS="${WORKERS:-$(( $(nproc) - 1 ))}" TSCALE=1 NLM=4096 NALIGN=470
fi
[ "$SMOKE" = 1 ] && DEADLINE_S="${DEADLINE_S:-0}" || DEADLINE_S="${DEADLINE_S:-540}"
N4=$(( N / 4 ))
WORK="${TMPDIR:-/tmp}/fc-devcheck"
rm -rf "$WORK"; mkdir -p "$WORK"
STATUS="$WORK/status.tsv"
: > "$STATUS"

say() { echo "$*" | tee -a "$LOG"; }
# step NAME TIMEOUT_S CMD...: run bounded, log output, record status and seconds
# DEADLINE_S: seconds from the start after which no step starts and a running one is cut, so the
# script (summary included) returns inside the device tool's 600 s per-command limit even when
# every step would use its whole timeout (their sum is ~770 s). 0 = no deadline (the CPU smoke).
step() {
  local name="$1" lim=$(( $2 * TSCALE )); shift 2
  if [ "$DEADLINE_S" -gt 0 ]; then
    local left=$(( DEADLINE_S - ($(date +%s) - T0) ))
    if [ "$left" -lt 15 ]; then
      printf '%s\t%s\t%s\n' "$name" "SKIPPED (deadline)" 0 >> "$STATUS"
      say "--- $name: skipped, ${DEADLINE_S} s deadline reached"; return
    fi
    [ "$lim" -gt "$left" ] && lim=$left
  fi
  local t; t=$(date +%s%N)
  say ""; say "=== $name (timeout ${lim}s): $*"
  timeout --kill-after=5 "$lim" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local ds=$(( ($(date +%s%N) - t) / 100000000 ))
  local dt="$(( ds / 10 )).$(( ds % 10 ))"
  local st=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then st=TIMEOUT
  elif [ "$rc" -eq 5 ] && [ "$name" = "gpu tests" ]; then say "(no test selected here)"
  elif [ "$rc" -ne 0 ]; then st="FAILED rc=$rc"; fi
  printf '%s\t%s\t%s\n' "$name" "$st" "$dt" >> "$STATUS"
  say "--- $name: $st in ${dt}s"
}

# ---- 0. unpack -------------------------------------------------------------------------------
[ -d .gpu/pkgs ] || { say "no .gpu/ here: run scripts/device_prep.sh and carry .gpu"; exit 2; }
SITE="$WORK/site"
mkdir -p "$SITE"
if "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)'; then
  # wheels are plain zip files: pip if present, else unzip them with the standard library
  if ! "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .gpu/whl/*.whl >>"$LOG" 2>&1; then
    "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$SITE" .gpu/whl/*.whl
  fi
  say "unpacked $(ls .gpu/whl | wc -l) wheels into $SITE"
else
  say "interpreter $("$PY" -V 2>&1) is not 3.12: the cp312 wheels are skipped, its own packages are used (smoke only)"
fi
# the dlib models travel xz-compressed (scripts/device_prep.sh): unpack them next to the site dir
PKGS="$WORK/pkgs"
mkdir -p "$PKGS"
cp -r .gpu/pkgs/. "$PKGS/"
"$PY" -c 'import lzma, pathlib, shutil, sys
for z in pathlib.Path(sys.argv[1]).glob("*.xz"):
    with lzma.open(z) as f, open(z.with_suffix(""), "wb") as g: shutil.copyfileobj(f, g)
    z.unlink()' "$PKGS/face_recognition_models/models"
say "models: $(ls "$PKGS"/face_recognition_models/models | tr '\n' ' ')"
export PYTHONPATH="$SITE:$PKGS:$root/shared${PYTHONPATH:+:$PYTHONPATH}"
B="$PY bench/embed_throughput.py"
{
  date -u; uname -n; nproc; free -g | head -2
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c 'import sys, torch, numpy, PIL, dlib, pydantic; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__, "pillow", PIL.__version__, "dlib", dlib.__version__, "pydantic", pydantic.__version__)'
  "$PY" -c 'import face_recognition_models as m; print("models from", m.__file__)'
} 2>&1 | tee -a "$LOG"

# ---- 1. GPU tests ----------------------------------------------------------------------------
step "gpu tests" 75 "$PY" -m pytest -q -p no:cacheprovider tests/test_embed_backends.py tests/test_embed_dali.py \
  tests/test_embed_throughput.py tests/test_embed_torch_align.py tests/test_cohort.py tests/test_gcn_ve.py \
  -k "gpu or cuda or mixed or nvjpeg"

# ---- 2. records on disk ----------------------------------------------------------------------
step "records" 30 $B records --src .gpu/crops --n "$N" --out "$WORK/recs"
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); json.dump(r[:int(sys.argv[2])], open(sys.argv[3],'w'))" \
  "$WORK/recs/input.json" "$N4" "$WORK/recs/input-quarter.json"

# ---- 3. per-step tables ----------------------------------------------------------------------
step "steps default (auto)" 35 $B steps --input "$WORK/recs/input.json" --n "$NSTEP" --device "$DEV" \
  --batch-size "$BS" --net-faces "$NET" --workers "$WORKERS" --json "$WORK/steps-auto.json"

# ---- 4. whole commands -----------------------------------------------------------------------
step "e2e default N" 80 $B e2e --input "$WORK/recs/input.json" --device "$DEV" --batch-size "$BS" \
  --work "$WORK/w-auto" --json "$WORK/e2e-auto.json"
step "e2e default N/4" 25 $B e2e --input "$WORK/recs/input-quarter.json" --device "$DEV" --batch-size "$BS" \
  --work "$WORK/w-auto4" --json "$WORK/e2e-auto-quarter.json"

step "torch landmarks" 40 $B landmarks --input "$WORK/recs/input.json" --n "$NLM" --device "$DEV" \
  --json "$WORK/landmarks-torch.json"

# ---- 4c. torch alignment (dlib?align=torch) ----------------------------------------------------
step "steps align=torch" 30 $B steps --input "$WORK/recs/input.json" --n "$NSTEP" --device "$DEV" --align torch \
  --batch-size "$BS" --net-faces "$NET" --workers "$WORKERS" --json "$WORK/steps-torch.json"
step "e2e align=torch N" 70 $B e2e --input "$WORK/recs/input.json" --device "$DEV" --batch-size "$BS" \
  --embedder "dlib?align=torch" --work "$WORK/w-torch" --json "$WORK/e2e-torch.json"
# --min-cos 0.99: a floor that catches a broken device kernel; the table reports the count below
# the issue's 0.999 (on CPU: none, landmarks and chips identical to dlib's, docs/benchmarks/embedding.md §8)
step "align parity torch" 45 $B align-parity --input "$WORK/recs/input.json" --n "$NALIGN" --device "$DEV" \
  --batch-size "$BS" --min-cos 0.99 --json "$WORK/align-parity.json"

# ---- 4d. torch alignment with margin=agree (dlib?align=torch&margin=agree) -----------------------
step "steps align=torch margin=agree" 25 $B steps --input "$WORK/recs/input.json" --n "$NSTEP" --device "$DEV" \
  --align torch --margin agree --batch-size "$BS" --net-faces "$NET" --workers "$WORKERS" \
  --json "$WORK/steps-torch-agree.json"
step "e2e align=torch margin=agree N" 45 $B e2e --input "$WORK/recs/input.json" --device "$DEV" --batch-size "$BS" \
  --embedder "dlib?align=torch&margin=agree" --work "$WORK/w-torch-agree" --json "$WORK/e2e-torch-agree.json"
# vs the CPU margin=agree path on the same crops (same HOG decisions, landmarks, chips, cosine)
step "align parity torch agree" 35 $B align-parity --input "$WORK/recs/input.json" --n "$NALIGN" --device "$DEV" \
  --batch-size "$BS" --margin agree --min-cos 0.99 --json "$WORK/align-parity-agree.json"

# ---- 5. parity -------------------------------------------------------------------------------
step "parity fp32" 30 $B parity --input "$WORK/recs/input.json" --n 64 --device "$DEV" --json "$WORK/parity.json"

# ---- 6. clustering (issue 12, deliverable 2): every method on N_CL synthetic dlib-like faces ---
# bench/cluster_scale.py runs each method through the whole `facecluster cluster` command as a
# child process (per-method limit, overall budget; infomap, the default, first). infomap comes
# from .gpu/cluster/site (scripts/cluster_scale_prep.sh, staged by scripts/device_prep.sh).
if [ "$SMOKE" = 1 ]; then N_CL="${N_CL:-2000}" CL_LIMIT=120 CL_BUDGET=400 KNN_CHECK=500
else N_CL="${N_CL:-1000000}" CL_LIMIT=62 CL_BUDGET="${CL_BUDGET:-190}" KNN_CHECK=20000; fi
CL_PATH="$PYTHONPATH"   # the staged infomap is a cp312 build: only on a 3.12 interpreter
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' && CL_PATH="$root/.gpu/cluster/site:$PYTHONPATH"
step "cluster $N_CL" $(( CL_BUDGET + 30 )) env PYTHONPATH="$CL_PATH" \
  "$PY" bench/cluster_scale.py --device "$DEV" --n "$N_CL" --methods "${CL_METHODS:-infomap,gcn-ve,adanets,gcn-v,threshold}" \
  --time-limit "$CL_LIMIT" --budget "$CL_BUDGET" --knn-check "$KNN_CHECK" --json "$WORK/cluster_scale.json"

# ---- summary ---------------------------------------------------------------------------------
"$PY" - "$WORK" "$OUT" "$STATUS" "$(( $(date +%s) - T0 ))" "$DEV" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
work, out, status, wall, dev = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = [l.split("\t") for l in status.read_text().splitlines() if l]
res = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
summary = {"device": dev, "wall_s": float(wall), "steps": {r[0]: {"status": r[1], "seconds": r[2]} for r in rows}, "results": res}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
md = [f"# device check (issue 12), {dev}, {wall} s", "", "| step | status | s |", "|---|---|---|"]
md += [f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows]
for k in ("steps-auto", "steps-iter", "steps-torch", "steps-torch-agree"):
    if k in res:
        s = res[k]
        md += ["", f"## {k}: {s['n']} crops, margin {s['margin']}, align {s.get('align', 'dlib')}, {s['workers']} workers", "", "| step | ms/face | faces/s |", "|---|---|---|"]
        for name, v in s["steps"].items():
            ms = v.get("ms_per_face", 1000 / v["faces_per_s"] if v.get("faces_per_s") else float("nan"))
            md.append(f"| {name} | {ms:.3f} | {1000 / ms:.0f} |")
        md.append(f"| CPU steps on {s['workers']} workers | {s['cpu_ms_per_face']:.2f} | {s['cpu_faces_per_s']:.0f} |")
e2e = [k for k in res if k.startswith("e2e")]
if e2e:
    md += ["", "## whole commands (prepare + embed)", "", "| run | records | embedder | prepare s | embed s | faces/s | peak RSS MB | errors |", "|---|---|---|---|---|---|---|---|"]
    for k in e2e:
        e = res[k]
        md.append(f"| {k} | {e['n']} | {e['embedder']} | {e['prepare_s']:.1f} | {e['embed_s']:.1f} | {e['faces_per_s']:.0f} | {e['peak_rss_mb']:.0f} | {e['errors']} |")
if "landmarks-torch" in res:
    l = res["landmarks-torch"]
    md += ["", f"torch landmarks ({l['device']}, {l['n']} crops in one batch): {l['faces_per_s']:.0f} faces/s exact (leaves added tree by tree), {l.get('faces_per_s_summed', float('nan')):.0f} faces/s with summed leaves, model parse {l['parse_s']:.1f} s; vs dlib ({l['n_compared']} crops): max {l['max_px_vs_dlib']:.0f} px after rounding, {l['exact_fraction']:.4f} of coordinates exact, max unrounded {l['max_unrounded_px']:.2f} px"]
for k in ("align-parity", "align-parity-agree"):
    if k in res:
        a = res[k]
        extra = f", HOG ran on {a['hog_run_share']:.1%} of crops, its box used on {a['hog_share']:.1%}, same rule {a['rules_identical']:.4f}" if "hog_share" in a else ""
        md += ["", f"align=torch vs CPU alignment ({a['device']}, {a['n']} crops, margin {a['margin']}): landmarks identical {a['landmarks_identical']:.4f} (max {a['landmarks_max_px']:.0f} px), chips mean abs {a['chip_mean_abs']:.4f} (max abs where the landmarks agree: {a['chip_max_abs_same_landmarks']}), descriptor cosine min {a['cos_min']:.6f} / median {a['cos_median']:.6f}, {a['below_0999']} below 0.999{extra}"]
if "parity" in res:
    p = res["parity"]
    md += ["", f"parity ({p['device']}, {p['precision']}, {p['n']} chips): min cosine vs dlib {p['min_cosine']:.7f}, max abs diff {p['max_abs_diff']:.2e}"]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
rm -rf "$WORK/recs" "$WORK"/w-*
grep -q -v $'\tok\t' "$STATUS" && { say "some steps did not pass (see the table)"; exit 1; }
exit 0
