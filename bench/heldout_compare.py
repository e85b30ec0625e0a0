"""All methods on the identities no trained method saw (the project-wide validation split).

    python bench/heldout_compare.py --data lfw=WD_LFW --data glint18=WD_GLINT \
        [--methods infomap,gcn-v,gcn-ve,adanets,chinese-whispers]

WD_* are work dirs embedded with the dlib embedder (`facecluster run`). Only validation
identities (`facecluster.train.splits.is_validation_identity`) are kept; every method gets the
features the pipeline would give it (raw for Infomap / chinese whispers, mean-centred for the
trained methods) and its shipped defaults. Prints pairwise / BCubed F, NMI, time, peak RSS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import format_row, load_workdir, run_method
from facecluster.train.splits import is_validation_identity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="NAME=WORK_DIR")
    ap.add_argument("--methods", default="infomap,gcn-v,gcn-ve,adanets,chinese-whispers")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for d in a.data:
        name, _, p = d.partition("=")
        feats, names, emb = load_workdir(p)
        keep = np.array([is_validation_identity(name, n) for n in names])
        f, y = feats[keep], names[keep]
        print(f"== {name}: {len(y)} validation faces, {len(set(y.tolist()))} identities", flush=True)
        for m in a.methods.split(","):
            r = run_method(m, f, y, emb)
            r["set"] = name
            rows.append(r)
            print(format_row(r), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
