"""Choose the training-free default (Infomap k, min_sim) on LFW and glint18 together.

    python bench/tune_infomap.py --data lfw=WD_LFW --data glint18=WD_GLINT \
        [--k 10,20,30,50] [--min-sim 0.3,0.4,0.5] [--subsample-lfw 0]

    python bench/tune_infomap.py --root WORKDIRS --grid attach_max_size=0,3 \
        --grid attach_share=0.4,0.5 [--min-sim 0.947]

With ``--root`` it tunes on the training scenarios of ``bench/scenarios.py`` (training
identities of ``bench/regimes.TRAIN_SETS`` only, several cluster-size shapes and crop styles):
kNN and Infomap run once per scenario and ``min_sim``; every combination of the ``--grid``
settings is then applied with ``InfomapClusterer.refine`` (the post-steps after Infomap), so a
grid of hundreds of settings takes minutes. Ranked by the worst scenario's BCubed F, among the
settings that put no more faces in mixed clusters than the first one.

Each ``--data NAME=PATH`` is an embedded work dir (labels = image folder names) or an .npz
with ``feats`` and ``labels``. Features are calibrated as the pipeline does. Prints BCubed F
on every set and the worst case; the default should maximise the worst case, so that one
setting holds for tiny clusters (LFW) and huge ones (glint18).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_workdir, parse_value  # noqa: E402
from facecluster.calibration import calibration_mean, prepare_features  # noqa: E402
from facecluster.cluster import get_clusterer  # noqa: E402
from facecluster.metrics import evaluate  # noqa: E402


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


def tune_scenarios(a) -> None:
    """Grid over post-step settings on the training scenarios (see module doc)."""
    from scenarios import training_scenarios

    from facecluster.knn import knn

    scen = training_scenarios(a.root)
    keys = [g.partition("=")[0] for g in a.grid]
    values = [[parse_value(v) for v in g.partition("=")[2].split(",")] for g in a.grid]
    combos = list(itertools.product(*values)) or [()]
    sims_grid = [float(v) for v in a.min_sim.split(",")]
    k = int(a.k.split(",")[0])
    # per scenario draw: kNN lists and the Infomap partition for every min_sim
    cache = []
    for name, draws in scen:
        for x, names in draws:
            s, i = knn(x, k, device="cpu")
            base = {
                ms: get_clusterer("infomap", k=k, min_sim=ms, merge_fragments=False, attach_max_size=0, device="cpu", embedder="dlib").fit_predict(x)
                for ms in sims_grid
            }
            cache.append((name, np.unique(names, return_inverse=True)[1], s, i, base))
        print(f"cached {name}", flush=True)
    results = []
    for ms in sims_grid:
        for combo in combos:
            settings = dict(zip(keys, combo))
            c = get_clusterer("infomap", k=k, min_sim=ms, device="cpu", embedder="dlib", **settings)
            per = {}
            for name, y, s, i, base in cache:
                r = evaluate(y, c.refine(base[ms], i, s))
                f, mixed = per.get(name, (2.0, 0))
                per[name] = (min(f, r["bcubed_fscore"]), mixed + r["mixed_faces"])
            worst = min(per.items(), key=lambda kv: kv[1][0])
            mixed = sum(m for _, m in per.values())
            results.append((worst[1][0], mixed, ms, settings, per))
            print(f"min_sim={ms} {settings}  worst {worst[0]} {worst[1][0]:.4f}  mixed {mixed}  "
                  + " ".join(f"{n.split('/')[-1][:10]}={f:.3f}" for n, (f, _) in per.items()), flush=True)
    base_mixed = results[0][1]
    ok = [r for r in results if r[1] <= base_mixed] or results
    best = max(ok, key=lambda r: r[0])
    print(f"best worst-case BCubed F {best[0]:.4f} (mixed faces {best[1]}, first setting {base_mixed}) at min_sim={best[2]} {best[3]}")
    for n, (f, m) in best[4].items():
        print(f"  {n:24s} {f:.4f}  mixed {m}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", help="NAME=PATH")
    ap.add_argument("--root", type=Path, help="tune on bench/scenarios.py's training scenarios from these work dirs")
    ap.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (with --root); repeatable")
    ap.add_argument("--method", default="infomap")
    ap.add_argument("--k", default="40,80,120")
    ap.add_argument("--min-sim", default="0.935,0.94,0.942,0.944,0.946,0.948,0.95")
    ap.add_argument("--extra", action="append", default=[], help="KEY=VALUE passed to every run")
    a = ap.parse_args()
    if a.root:
        if a.k == ap.get_default("k"):
            a.k = "80"
        if a.min_sim == ap.get_default("min_sim"):
            a.min_sim = "0.947"
        return tune_scenarios(a)
    if not a.data:
        ap.error("give --data NAME=PATH (repeatable) or --root")
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
