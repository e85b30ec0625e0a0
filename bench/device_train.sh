#!/usr/bin/env bash
# Issue 11's device run: train Ada-NETS (AND + GCN) on the mbf embedder's training pool with
# the GPU recipe, run from the repo root on the lent machine after
# `ROOT=WORK-mbf bash scripts/device_train_prep.sh` staged .gpu-train/ here:
#
#   bash bench/device_train.sh                               # on the GPU machine ($OUT set; carry [".gpu-train"])
#   OUT=/tmp/devtrain bash bench/device_train.sh --cpu-smoke  # the same steps on CPU: 2,000 faces, one
#                                                             # pooled graph (held-back groups >= k), a few steps
#   EMBEDDER=dlib AND_INPUT=gram AND_FEATURES=calibrated bash bench/device_train.sh
#       dlib (pool staged with EMBEDDER=dlib ROOT=WORK): the AND that reads its neighbourhood's cosines
#       (docs/benchmarks/adanets.md §13) on the shipped GCN's calibrated features, then a GCN on its
#       adaptive graph, trained on those features too (train_shift.py reads them from the AND's meta)
#
# Steps, each bounded by `timeout` (a failed or timed-out step is recorded and the rest goes on):
#   0. the pydantic wheels into a private site dir; PYTHONPATH = site : shared
#   1. AND (log-ratio loss, Adam) on all training faces but a held-back 10 % of identities;
#      prints predicted vs true neighbour counts on those (the collapse check of adanets.md §7)
#   2. the Ada-NETS GCN on the adaptive graph it sees at inference (`--gcn-graph adaptive`, the
#      full-graph step that ran > 25 s per step on the 2-core CPU), with that AND
# Writes $OUT/adanets_and_mbf.pth, $OUT/adanets_gcn_mbf.pth (float16: files back are <= 16 MiB;
# they load as float32), $OUT/train_log.json, $OUT/log.txt. Then, on the CPU box: choose
# final_th on the training identities (bench/regimes.py --tuning --variant
# "adanets:checkpoint_and=...,checkpoint_gcn=...,final_th=T") and validate (bench/regimes.py).
# Budget: AND_S + GCN_S (default 220 + 240 s) + unpacking; the device tool's limit is 600 s.
set -uo pipefail
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 2
OUT="${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
EMB="${EMBEDDER:-mbf}"
AND_INPUT="${AND_INPUT:-features}"   # features | gram (facecluster.cluster.adanets.and_model)
AND_FEATURES="${AND_FEATURES:-raw}"  # raw | calibrated (minus the embedder's shipped mean)
POOL="$root/.gpu-train/pool_$EMB.npz"
LOG="$OUT/log.txt"
: > "$LOG"
if [ "$SMOKE" = 1 ]; then
  DEV=cpu AND_STEPS="${AND_STEPS:-4}" AND_BATCH=32 AND_WARMUP=1 AND_FACES=0 GCN_STEPS="${GCN_STEPS:-2}" THREADS=2 FACES="${FACES:-2000}" GRAPHS="${GRAPHS:-pooled}"
  AND_S="${AND_S:-600}" GCN_S="${GCN_S:-900}"
else
  DEV=cuda AND_STEPS="${AND_STEPS:-4000}" AND_BATCH="${AND_BATCH:-1024}" AND_WARMUP=200 AND_FACES="${AND_FACES:-0}" GCN_STEPS="${GCN_STEPS:-1500}" THREADS="$(nproc)" FACES="${FACES:-0}" GRAPHS="${GRAPHS:-per-set}"
  AND_S="${AND_S:-220}" GCN_S="${GCN_S:-240}"
fi
say() { echo "$*" | tee -a "$LOG"; }
[ -f "$POOL" ] || { say "missing $POOL: run scripts/device_train_prep.sh first"; exit 2; }

site="${TMPDIR:-/tmp}/fc-train-site"
# only where pydantic is missing (the device); a dev venv has it, and the cp312 wheels may not fit it
if ! "$PY" -c 'import pydantic' 2> /dev/null && compgen -G ".gpu-train/whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu-train/whl/*.whl >> "$LOG" 2>&1 \
    || say "wheel install failed (see log)"
fi
export PYTHONPATH="$site:$root/shared${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1 | tee -a "$LOG"

common=(--pool "$POOL" --embedder "$EMB" --out "$OUT" --device "$DEV" --threads "$THREADS" --graphs "$GRAPHS" --half --faces "$FACES")
run() {  # run NAME LIMIT_S ARGS...
  local name="$1" lim="$2"; shift 2
  local t
  t=$(date +%s)
  say "== $name (limit ${lim} s)"
  timeout "$lim" "$PY" bench/train_shift.py "${common[@]}" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "== $name: rc $rc, $(( $(date +%s) - t )) s"
}
# training stops itself 70 s (AND) / 80 s (GCN) before the hard limit, leaving time for the data
# (kNN, structure space), the held-back counts and the save; the timeout is only the backstop
run and "$AND_S" --what and --and-steps "$AND_STEPS" --and-batch "$AND_BATCH" --and-warmup "$AND_WARMUP" \
    --and-nhid 512 --and-faces "$AND_FACES" --and-input "$AND_INPUT" --and-features "$AND_FEATURES" --and-seconds $(( AND_S > 140 ? AND_S - 70 : AND_S / 2 ))
[ -f "$OUT/train_log.json" ] && cp "$OUT/train_log.json" "$OUT/train_log_and.json"
if [ -f "$OUT/adanets_and_$EMB.pth" ]; then
  run gcn "$GCN_S" --what gcn --gcn-steps "$GCN_STEPS" --gcn-graph adaptive --gcn-seconds $(( GCN_S > 160 ? GCN_S - 80 : GCN_S / 2 ))
else
  say "== gcn: skipped (no AND checkpoint)"
fi
find "$OUT" -maxdepth 1 -type f -printf "%s\t%f\n" | sort -k2 | tee -a "$LOG"
