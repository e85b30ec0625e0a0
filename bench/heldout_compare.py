"""All methods on the identities no trained method saw (the project-wide validation split).

    python bench/heldout_compare.py --data lfw=WD_LFW --data glint18=WD_GLINT \
        [--methods infomap,gcn-v,gcn-ve,adanets,chinese-whispers] [--min-per-id 1]

WD_* are work dirs embedded with the dlib embedder (`facecluster run`). Only validation
identities (`facecluster.train.splits.is_validation_identity`) are kept; every method gets the
features the pipeline would give it (raw for Infomap / chinese whispers, mean-centred for the
trained methods) and its shipped defaults. Prints pairwise / BCubed F, NMI, time, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from facecluster.calibration import calibration_mean, prepare_features
from facecluster.cluster import get_clusterer
from facecluster.evaluate import labels_from
from facecluster.metrics import evaluate
from facecluster.train.splits import is_validation_identity
from facecluster.workdir import WorkDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="NAME=WORK_DIR")
    ap.add_argument("--methods", default="infomap,gcn-v,gcn-ve,adanets,chinese-whispers")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for d in a.data:
        name, _, p = d.partition("=")
        wd = WorkDir(p)
        feats, index, meta = wd.read_features()
        man = wd.read_manifest()
        names = np.asarray(labels_from([man["records"][i] for i in index], "folder"))
        keep = np.array([is_validation_identity(name, n) for n in names])
        f, y = feats[keep], np.unique(names[keep], return_inverse=True)[1]
        emb = meta["embedder"]["embedder"]
        print(f"== {name}: {len(y)} validation faces, {y.max() + 1} identities", flush=True)
        for m in a.methods.split(","):
            c = get_clusterer(m, device="cpu", embedder=emb)
            x = f if getattr(c, "wants_raw_features", False) else prepare_features(f, calibration_mean(emb))
            t = time.perf_counter()
            lab = c.fit_predict(x)
            dt = time.perf_counter() - t
            r = evaluate(y, lab)
            r.update(set=name, method=m, seconds=dt, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            rows.append(r)
            print(
                f"{m:17s} pairF {r['pairwise_fscore']:.4f}  BCubedF {r['bcubed_fscore']:.4f} "
                f"(P {r['bcubed_precision']:.3f} R {r['bcubed_recall']:.3f})  NMI {r['nmi']:.4f}  "
                f"clusters {r['n_clusters']}  {dt:.1f}s  peakRSS {r['peak_rss_mb']:.0f}MB",
                flush=True,
            )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
