#!/usr/bin/env bash
# Run the facecluster pipeline on a Kubernetes cluster, stage after stage:
#   input in → prepare → embed (Indexed Job, FACECLUSTER_SHARDS pods) → merge → cluster → output out
#
#   scripts/k8s-run.sh INPUT.json OUTPUT.json        (make k8s-run INPUT=... OUTPUT=...)
#   scripts/k8s-run.sh --add NEW.json NEW_OUT.json   grow that result (`facecluster add`): the
#        add-embed and add Jobs embed only NEW.json's faces, known people keep their ids
#
# Env: KUSTOMIZE_DIR (default k8s/; point it at your overlay), NAMESPACE (default: the one the
#      kustomization sets, facecluster), TIMEOUT (per stage, default 6h), KUBECTL (kubectl).
# Needs kubectl with access to the cluster, a storage class for the ReadWriteMany claim and, for
# GPU pods, the NVIDIA GPU operator (or device plugin). Re-running after a failure resumes:
# finished shards are skipped (their part files are fresh), only the missing work is redone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
KUBECTL="${KUBECTL:-kubectl}"
KUSTOMIZE_DIR="${KUSTOMIZE_DIR:-$root/k8s}"
TIMEOUT="${TIMEOUT:-6h}"
PYTHON="${PYTHON:-python3}"

mode=run
if [ "${1:-}" = "--add" ]; then mode=add; shift; fi
[ $# -eq 2 ] || { sed -n '2,14p' "$0"; exit 2; }
input="$1"; output="$2"
[ -f "$input" ] || { echo "no such input: $input" >&2; exit 2; }

log() { echo "[k8s-run $(date -u +%H:%M:%S)] $*" >&2; }
# The staging dir (packed input, fetched output) sits beside the output, not in /tmp: on a shared
# box a staging dir in /tmp vanished between staging and fetching twice in test runs (a bare
# /tmp/tmp.* and a named one), whoever swept it; the output's folder is the caller's own.
outdir="$(cd "$(dirname "$output")" && pwd)" || { echo "no such folder for the output: $output" >&2; exit 2; }
work="$(mktemp -d "$outdir/.facecluster-k8s.XXXXXXXX")"
# Only the main shell cleans up (background subshells must not remove the staging dir).
trap '[ "$BASHPID" = "$$" ] && rm -rf "$work"' EXIT

rendered="$work/rendered.yaml"
$KUBECTL kustomize "$KUSTOMIZE_DIR" > "$rendered"
NAMESPACE="${NAMESPACE:-$(sed -nE '/^kind: Namespace/,/^---/{s/^  name: (.*)/\1/p}' "$rendered" | head -1)}"
NAMESPACE="${NAMESPACE:-default}"
k() { $KUBECTL -n "$NAMESPACE" "$@"; }
apply_component() { $KUBECTL apply -f "$rendered" -l "app.kubernetes.io/component=$1" >&2; }

# Wait until job/$1 completes; on failure show why (events + logs of the failed pods) and stop.
wait_job() {
  local job="$1" t0=$SECONDS
  log "waiting for job/$job (timeout $TIMEOUT)"
  $KUBECTL -n "$NAMESPACE" wait --for=condition=complete "job/$job" --timeout="$TIMEOUT" >/dev/null & local wc=$!
  $KUBECTL -n "$NAMESPACE" wait --for=condition=failed "job/$job" --timeout="$TIMEOUT" >/dev/null & local wf=$!
  local rc=0
  wait -n "$wc" "$wf" || rc=$?
  kill "$wc" "$wf" 2>/dev/null || true; wait 2>/dev/null || true
  if k get "job/$job" -o jsonpath='{.status.conditions[?(@.type=="Complete")].status}' | grep -q True; then
    log "job/$job complete in $((SECONDS - t0)) s"; return 0
  fi
  log "job/$job did NOT complete (rc=$rc):"
  k describe "job/$job" | tail -25 >&2 || true
  k logs -l "job-name=$job" --all-containers --tail=40 --prefix >&2 || true
  log "fix the cause and run the same command again: finished work is kept and skipped"
  exit 1
}

run_job() {  # component → apply the Job fresh (Jobs are immutable) and wait for it
  local comp="$1" job="facecluster-$1"
  k delete job "$job" --ignore-not-found --wait=true >/dev/null
  apply_component "$comp"
  wait_job "$job"
}

log "namespace $NAMESPACE, volume, config, io pod"
for c in config storage io; do apply_component "$c"; done
k wait --for=condition=Ready pod/facecluster-io --timeout=15m >/dev/null

if [ "$mode" = add ]; then
  # The new records go to /work/add (the run's /work/input stays); /work/wd keeps the collection.
  log "staging the new records"
  "$PYTHON" "$here/k8s_io.py" pack "$input" "$work/input" --volume-dir /work/add
  k exec facecluster-io -- sh -c 'rm -rf /work/add && mkdir -p /work/add'
  tar -C "$work/input" -cf - . | k exec -i facecluster-io -- tar -C /work/add -xf -
  for comp in add-embed add; do run_job "$comp"; done
  log "fetching the output"
  k exec facecluster-io -- cat /work/add/output.json > "$work/result.json"
  "$PYTHON" "$here/k8s_io.py" unpack "$work/result.json" "$input" "$output"
  log "wrote $output"
  exit 0
fi

log "staging the input"
"$PYTHON" "$here/k8s_io.py" pack "$input" "$work/input"
# A tar stream through the io pod (the images have tar); the previous input is replaced, the
# work dir kept: its fingerprints decide what is still valid for the new input.
k exec facecluster-io -- sh -c 'rm -rf /work/input /work/output.json && mkdir -p /work/input /work/wd'
tar -C "$work/input" -cf - . | k exec -i facecluster-io -- tar -C /work/input -xf -
log "$(k exec facecluster-io -- sh -c 'ls /work/input/images | wc -l') images in the volume"

for comp in prepare embed merge cluster; do run_job "$comp"; done

log "fetching the output"
k exec facecluster-io -- cat /work/output.json > "$work/result.json"
"$PYTHON" "$here/k8s_io.py" unpack "$work/result.json" "$input" "$output"
log "wrote $output"
