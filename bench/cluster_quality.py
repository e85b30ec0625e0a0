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
import resource
import sys
import time
from pathlib import Path

import numpy as np

from facecluster.calibration import calibration_mean, prepare_features
from facecluster.cluster import get_clusterer
from facecluster.evaluate import labels_from
from facecluster.metrics import evaluate
from facecluster.workdir import WorkDir


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(wd: WorkDir, labels: str):
    feats, index, meta = wd.read_features()
    man = wd.read_manifest()
    recs = [man["records"][i] for i in index]
    gt = np.unique(np.asarray(labels_from(recs, labels)), return_inverse=True)[1]
    return feats, gt, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--work-dir", type=Path, required=True)
    ap.add_argument("--methods", default="infomap,chinese-whispers,hac")
    ap.add_argument("--set", action="append", default=[], help="METHOD.key=value")
    ap.add_argument("--labels", default="folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write results here")
    a = ap.parse_args()
    feats, gt, meta = load(WorkDir(a.work_dir), a.labels)
    emb = meta["embedder"]["embedder"]
    print(f"{a.work_dir}: {len(gt)} faces, {gt.max() + 1} identities, embedder {emb}", flush=True)
    rows = []
    for m in a.methods.split(","):
        settings = {"device": a.device, "embedder": emb}
        for s in a.set:
            k, _, v = s.partition("=")
            meth, _, key = k.partition(".")
            if meth == m:
                try:
                    settings[key] = json.loads(v)
                except json.JSONDecodeError:
                    settings[key] = v
        c = get_clusterer(m, **settings)
        x = feats if getattr(c, "wants_raw_features", False) else prepare_features(feats, calibration_mean(emb))
        rss0 = peak_rss_mb()
        t = time.perf_counter()
        lab = c.fit_predict(x)
        dt = time.perf_counter() - t
        r = evaluate(gt, lab)
        r.update(method=m, seconds=dt, peak_rss_mb=peak_rss_mb(), rss_growth_mb=peak_rss_mb() - rss0,
                 settings={k: v for k, v in c.settings().items() if k not in ("device", "progress", "knn_backend")})
        rows.append(r)
        print(
            f"{m:17s} pairF {r['pairwise_fscore']:.4f} (P {r['pairwise_precision']:.3f} R {r['pairwise_recall']:.3f})  "
            f"BCubedF {r['bcubed_fscore']:.4f} (P {r['bcubed_precision']:.3f} R {r['bcubed_recall']:.3f})  "
            f"NMI {r['nmi']:.4f}  clusters {r['n_clusters']}  {dt:.1f}s  peakRSS {r['peak_rss_mb']:.0f}MB  {r['settings']}",
            flush=True,
        )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
