"""Train GCN-V + GCN-E for calibrated dlib features under a few recipes and validate each on
the held-out identities (``facecluster.train.splits``); the best recipe's weights are the
shipped ones (``shared/facecluster/weights/gcn_{v,e}_dlib.pth`` + ``gcn_ve_dlib.json``).

Every recipe: train GCN-V (s_nbr, MSE) on the training identities of LFW + glint18 as one
graph, train GCN-E on that GCN-V's features, then ``train.gcn_ve.tune`` picks tau_0, tau and
ignore_ratio by the mean BCubed F over the validation identities of each set (each set
clustered on its own).

  python bench/gcn_ve_train_sweep.py --cache /work/cache/feats --device cuda --out OUT_DIR \
      --recipe paper:80:160 --recipe k20:20:40 ...
A recipe is name:k:k_e[:epochs_v[:epochs_e[:nhid[:ignore_ratio_train]]]].
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from facecluster.cluster import gcn_common as gc
from facecluster.train import gcn_ve as T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=T.DEFAULT_CACHE)
    ap.add_argument("--mean", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", action="append", required=True)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 throughout: weights must behave the same on CPU
    data = T.load_sets(T.DEFAULT_SETS, a.cache, a.mean)
    X, y = T.pick(data, "train")
    for s, d in data.items():
        print(f"{s}: {len(d['X'])} faces, {int(d['val'].sum())} validation faces "
              f"({len(np.unique(d['names'][d['val']]))} ids), {int((~d['val']).sum())} training faces")
    print(f"training graph: {len(X)} faces / {len(np.unique(y))} identities", flush=True)
    summary = {}
    for spec in a.recipe:
        parts = spec.split(":")
        name, k, k_e = parts[0], int(parts[1]), int(parts[2])
        ep_v = int(parts[3]) if len(parts) > 3 else 60
        ep_e = int(parts[4]) if len(parts) > 4 else 10
        nhid = int(parts[5]) if len(parts) > 5 else 512
        ig_train = float(parts[6]) if len(parts) > 6 else 0.7
        out = a.out / name
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        mv = T.train_gcn_v(X, y, k=k, nhid=nhid, epochs=ep_v, seed=a.seed, device=a.device, progress=False)
        tv = time.time() - t0
        me = T.train_gcn_e(mv, X, y, k=k, k_e=k_e, nhid=nhid, epochs=ep_e, ignore_ratio=ig_train, seed=a.seed, device=a.device, progress=False)
        te = time.time() - t0 - tv
        recipe = {"sets": list(T.DEFAULT_SETS), "k": k, "k_e": k_e, "nhid": nhid, "epochs_v": ep_v, "epochs_e": ep_e,
                  "optimizer": "adam", "lr": 1e-3, "ignore_ratio_train": ig_train, "seed": a.seed, "n_train": int(len(X)),
                  "train_seconds": {"gcn_v": round(tv, 1), "gcn_e": round(te, 1)}, "device": a.device}
        gc.save_checkpoint(mv, out / "gcn_v_dlib.pth", meta={"facecluster": "gcn-v", **recipe})
        gc.save_checkpoint(me, out / "gcn_e_dlib.pth", meta={"facecluster": "gcn-e", **recipe})
        res = T.tune(data, mv.cpu(), me.cpu(), k=k, k_e=k_e, device=a.device, log=print)
        res["recipe"] = recipe
        (out / "gcn_ve_dlib.json").write_text(json.dumps(res, indent=2) + "\n")
        v = res["validation"]
        summary[name] = {st: {s: round(m["bcubed_fscore"], 4) for s, m in v[st].items()} for st in v}
        print(name, json.dumps(summary[name]), f"{time.time() - t0:.0f}s", flush=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
