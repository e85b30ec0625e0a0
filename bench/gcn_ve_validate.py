"""Quality of gcn-v / gcn-ve (shipped weights, production code path) against the training-free
method on the held-out identities (``facecluster.train.splits``), as a markdown table.

  python bench/gcn_ve_validate.py [--cache /work/cache/feats] [--methods gcn-v gcn-ve infomap]

Each validation set is clustered on its own (LFW-val: 1,760 people incl. singletons; glint18-
val: 5 people with large clusters), plus both together in one batch. Features are calibrated
exactly as the pipeline does (``prepare_features`` with ``weights/dlib_mean.npy``; plain
L2-normalised descriptors for methods with ``wants_raw_features``, i.e. infomap).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from facecluster import metrics
from facecluster.cluster import get_clusterer
from facecluster.train import gcn_ve as T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=T.DEFAULT_CACHE)
    ap.add_argument("--methods", nargs="+", default=["gcn-v", "gcn-ve", "infomap"])
    ap.add_argument("--set", action="append", default=[], help="extra method setting KEY=VALUE (JSON value) for gcn-*")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    data = T.load_sets(T.DEFAULT_SETS, a.cache)
    batches = {}
    for s, d in data.items():
        batches[f"{s}-val"] = (d["X"][d["val"]], d["names"][d["val"]], d["raw"][d["val"]])
    batches["both-val"] = tuple(np.concatenate([b[i] for b in batches.values()]) for i in range(3))
    rows, out = [], {}
    for bname, (Xc, names, Xr) in batches.items():
        _, y = np.unique(names, return_inverse=True)
        for m in a.methods:
            c = get_clusterer(m, device="cpu", embedder="dlib", **(extra if m.startswith("gcn") else {}))
            # exactly what the pipeline hands each method: calibrated features, or the plain
            # descriptors for methods that declare ``wants_raw_features`` (infomap)
            X = Xr if getattr(c, "wants_raw_features", False) else Xc
            t = time.perf_counter()
            lab = c.fit_predict(X)
            dt = time.perf_counter() - t
            r = metrics.evaluate(y, lab)
            out[f"{bname}/{m}"] = {**r, "seconds": dt}
            rows.append(f"| {bname} ({len(X)} faces, {len(np.unique(y))} ids) | {m} | {r['pairwise_fscore']:.4f} | {r['bcubed_precision']:.4f} | {r['bcubed_recall']:.4f} | {r['bcubed_fscore']:.4f} | {r['nmi']:.4f} | {r['n_clusters']} | {dt:.1f} |")
            print(rows[-1], flush=True)
    print("\n| batch | method | pairwise F | BCubed P | BCubed R | BCubed F | NMI | clusters | s |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
