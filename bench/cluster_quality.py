"""Clustering quality and speed of several methods on one embedded work dir.

    facecluster run faces.json -o out.json -w WD          # once: embeds into WD
    python bench/cluster_quality.py -w WD --methods infomap,chinese-whispers,hac \
        [--set hac.distance=0.6] [--labels folder]

Prints pairwise / BCubed P R F, NMI, #clusters, wall time and peak RSS growth per method.
Labels come from the manifest records (folder name of img_path, or field:NAME).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import format_row, load_workdir, method_settings, run_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--work-dir", type=Path, required=True)
    ap.add_argument("--methods", default="infomap,chinese-whispers,hac")
    ap.add_argument("--set", action="append", default=[], help="METHOD.key=value")
    ap.add_argument("--labels", default="folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write results here")
    a = ap.parse_args()
    feats, names, emb = load_workdir(a.work_dir, a.labels)
    print(f"{a.work_dir}: {len(names)} faces, {len(set(names.tolist()))} identities, embedder {emb}", flush=True)
    rows = []
    for m in a.methods.split(","):
        r = run_method(m, feats, names, emb, a.device, **method_settings(a.set, m))
        rows.append(r)
        print(f"{format_row(r)}  {r['settings']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
