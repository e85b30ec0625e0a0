# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # PYTHON and root come from the sourcing script, which uses PYDANTIC_WHEELS
# Shared by the scripts that stage files for the lent GPU machine (python3.12 + CUDA torch, no
# network, 64 MiB of carried files): scripts/gpu_smoke_prep.sh, device_prep.sh, device_train_prep.sh.
# Source it after setting PYTHON and root.

# The pydantic stack the machine lacks, as the images pin it (images/requirements/*.txt).
PYDANTIC_WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
                 typing-extensions==4.16.0)

# device_wheels DIR PYVER WHEEL...: download CPython PYVER manylinux wheels (no deps) into DIR;
# fails unless every named wheel arrived.
device_wheels() {
  local dir="$1" pyver="$2" p n
  shift 2
  local plat=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    plat+=(--platform "$p")
  done
  mkdir -p "$dir"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${plat[@]}" -d "$dir" "$@" 2>&1 | grep -v 'is ignored' || true
  n="$(find "$dir" -name '*.whl' | wc -l)"
  [ "$n" -eq "$#" ] || { echo "expected $# wheels in $dir, got $n (pip download failed?)" >&2; return 1; }
}

# carry_budget STAGE BUDGET_MIB HINT: the working tree (tracked + untracked, not ignored) and the
# staged folder STAGE travel together; fail with HINT when they exceed BUDGET_MIB.
carry_budget() {
  local stage="$1" budget="$2" hint="$3" tree_kib untracked_kib stage_kib total_mib
  tree_kib="$(git -C "$root" ls-files -z | (cd "$root" && xargs -0 du -k --apparent-size 2>/dev/null) | awk '{s+=$1} END {print s}')"
  untracked_kib="$(git -C "$root" ls-files -z --others --exclude-standard | (cd "$root" && xargs -0 -r du -k --apparent-size 2>/dev/null) | awk '{s+=$1} END {print s+0}')"
  stage_kib="$(du -sk --apparent-size "$stage" | cut -f1)"
  total_mib=$(( (tree_kib + untracked_kib + stage_kib) / 1024 ))
  echo "tracked $((tree_kib / 1024)) MiB + untracked $((untracked_kib / 1024)) MiB + $(basename "$stage") $((stage_kib / 1024)) MiB = ${total_mib} MiB (budget ${budget} MiB)"
  [ "$total_mib" -le "$budget" ] || { echo "over budget: $hint" >&2; return 1; }
}
