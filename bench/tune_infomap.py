"""Choose the training-free default (Infomap k, min_sim) on LFW and glint18 together.

    python bench/tune_infomap.py --data lfw=WD_LFW --data glint18=WD_GLINT \
        [--k 10,20,30,50] [--min-sim 0.3,0.4,0.5] [--subsample-lfw 0]

Each ``--data NAME=PATH`` is an embedded work dir (labels = image folder names) or an .npz
with ``feats`` and ``labels``. Features are calibrated as the pipeline does. Prints BCubed F
on every set and the worst case; the default should maximise the worst case, so that one
setting holds for tiny clusters (LFW) and huge ones (glint18).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from _common import load_workdir, parse_value
from facecluster.calibration import calibration_mean, prepare_features
from facecluster.cluster import get_clusterer
from facecluster.metrics import evaluate


def load(path: Path):
    """(features, integer labels) from an .npz feature cache or an embedded work dir."""
    if path.suffix == ".npz":
        z = np.load(path, allow_pickle=False)
        feats, labels = z["feats"], z["labels"]
        if "failed" in z.files and len(z["failed"]):
            keep = np.ones(len(labels), bool)
            keep[z["failed"]] = False
            feats, labels = feats[keep], labels[keep]
        return feats, labels
    feats, names, _ = load_workdir(path)
    return feats, np.unique(names, return_inverse=True)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--method", default="infomap")
    ap.add_argument("--k", default="40,80,120")
    ap.add_argument("--min-sim", default="0.935,0.94,0.942,0.944,0.946,0.948,0.95")
    ap.add_argument("--extra", action="append", default=[], help="KEY=VALUE passed to every run")
    a = ap.parse_args()
    sets = {}
    mean = calibration_mean("dlib")
    if mean is None:
        raise SystemExit("weights/dlib_mean.npy missing: run `facecluster train mean` first")
    for d in a.data:
        name, _, p = d.partition("=")
        feats, labels = load(Path(p))
        # Infomap works on the plain L2-normalised descriptors (see cluster/infomap.py)
        raw = getattr(get_clusterer(a.method), "wants_raw_features", False)
        sets[name] = (feats if raw else prepare_features(feats, mean), labels)
        print(f"{name}: {len(labels)} faces, {labels.max() + 1} identities")
    extra = {}
    for e in a.extra:
        k, _, v = e.partition("=")
        extra[k] = parse_value(v)
    ks = [int(v) for v in a.k.split(",")]
    sims = [float(v) for v in a.min_sim.split(",")]
    print(f"{'k':>4} {'min_sim':>7} " + " ".join(f"{n + ' F_B':>12} {n + ' F_P':>12}" for n in sets) + f" {'worst F_B':>9}  seconds")
    best = None
    for k, s in itertools.product(ks, sims):
        fb, cells, t = [], [], time.perf_counter()
        for name, (x, y) in sets.items():
            r = evaluate(y, get_clusterer(a.method, k=k, min_sim=s, device="cpu", embedder="dlib", **extra).fit_predict(x))
            fb.append(r["bcubed_fscore"])
            cells.append(f"{r['bcubed_fscore']:12.4f} {r['pairwise_fscore']:12.4f}")
        worst = min(fb)
        print(f"{k:4d} {s:7.3f} " + " ".join(cells) + f" {worst:9.4f}  {time.perf_counter() - t:.1f}", flush=True)
        if best is None or worst > best[0]:
            best = (worst, k, s)
    print(f"best worst-case BCubed F {best[0]:.4f} at k={best[1]} min_sim={best[2]}")


if __name__ == "__main__":
    main()
