"""Choose a threshold on GCN-V/E's own outputs (GCN-E's tau) on people the networks never saw
(docs/benchmarks/gcn_ve.md §11).

The shipped networks were trained on every training identity, so the tuning regimes
(``bench/regimes.py --tuning``) flatter a threshold on their outputs. Cross-fitting instead:

    # networks of the shipped recipe on part A (two thirds of the training identities; ~20 min CPU)
    python bench/gcn_ve_crossfit.py train --root /work/extdata/work --out OUT
    # gcn-ve with them on the tuning regimes restricted to part B (never seen), per tau;
    # "infomap" scores the default on the same faces
    python bench/gcn_ve_crossfit.py eval --root /work/extdata/work --out OUT --taus infomap,0.75,0.7,0.65,0.6

Part A / B: crc32 of "proxy:" + person name mod 3 (0 = B). Validation regimes are never read.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_method  # noqa: E402
from regimes import format_row, load, tuning_regimes  # noqa: E402

from facecluster.calibration import calibration_mean, prepare_features  # noqa: E402
from facecluster.cluster import gcn_common as gc  # noqa: E402
from facecluster.train.gcn_ve import train_gcn_e, train_gcn_v  # noqa: E402


def in_part_b(names: np.ndarray) -> np.ndarray:
    """(N,) bool: the person is in part B (never trained on here)."""
    return np.array([zlib.crc32(("proxy:" + str(n)).encode()) % 3 == 0 for n in names])


def shipped_recipe() -> dict:
    """The shipped dlib networks' training recipe (their checkpoint meta: k, k_e, nhid, epochs,
    optimizer, lr, seed, ignore_ratio_train)."""
    return gc.read_meta(gc.shipped_files("dlib")[0])


def train(root: Path, out: Path, epochs_v: int, epochs_e: int) -> None:
    """GCN-V / GCN-E with the shipped dlib recipe (:func:`shipped_recipe`) on part A of the lfw
    and glint18 training identities, each set its own graph."""
    rc = shipped_recipe()
    epochs_v, epochs_e = epochs_v or rc["epochs_v"], epochs_e or rc["epochs_e"]
    xs, ns, gs = [], [], []
    for i, s in enumerate(["lfw", "glint18"]):
        x, n = load(root, s, "train")
        a = ~in_part_b(n)
        xs.append(x[a])
        ns.append(n[a])
        gs.append(np.full(int(a.sum()), i))
    X = prepare_features(np.concatenate(xs), calibration_mean("dlib")).astype(np.float32)
    y = np.unique(np.concatenate(ns), return_inverse=True)[1]
    graphs = np.concatenate(gs)
    print(f"part A: {len(X)} faces, {y.max() + 1} people", flush=True)
    meta = {"features": "calibrated", "study": "cross-fit part A", "epochs_v": epochs_v, "epochs_e": epochs_e}
    t = time.time()
    common = dict(nhid=rc["nhid"], lr=rc["lr"], optimizer=rc["optimizer"], seed=rc["seed"], progress=False, graphs=graphs)
    mv = train_gcn_v(X, y, k=rc["k"], epochs=epochs_v, **common)
    print(f"GCN-V {time.time() - t:.0f} s", flush=True)
    gc.save_checkpoint(mv, out / "gcn_v.pth", meta={**meta, "facecluster": "gcn-v"})
    t = time.time()
    me = train_gcn_e(mv, X, y, k=rc["k"], k_e=rc["k_e"], ignore_ratio=rc["ignore_ratio_train"], epochs=epochs_e, **common)
    print(f"GCN-E {time.time() - t:.0f} s", flush=True)
    gc.save_checkpoint(me, out / "gcn_e.pth", meta={**meta, "facecluster": "gcn-e"})


def evaluate(root: Path, out: Path, taus: list[str], part: str) -> None:
    """gcn-ve with the part-A networks (the shipped dlib settings' k, k_e, ignore_ratio; floor and
    refinement as shipped) on each tuning regime's part-``part`` faces, per tau."""
    shipped = gc.shipped_settings("dlib")
    nets = dict(checkpoint_v=str(out / "gcn_v.pth"), checkpoint_e=str(out / "gcn_e.pth"), trust_checkpoint=True,
                k=shipped["k"], k_e=shipped["k_e"], ignore_ratio=shipped["ignore_ratio"])
    regimes = []
    for name, x, n, px in tuning_regimes(root, with_px=True):
        m = in_part_b(n) if part == "B" else ~in_part_b(n)
        regimes.append((name, x[m], n[m], px[m]))
    for tau in taus:
        print(f"== {'infomap' if tau == 'infomap' else f'gcn-ve (part-A networks) tau={tau}'} part {part}", flush=True)
        for name, x, n, px in regimes:
            if tau == "infomap":
                r = run_method("infomap", x, n, "dlib", face_px=px)
            else:
                r = run_method("gcn-ve", x, n, "dlib", face_px=px, tau=float(tau), **nets)
            print(format_row(name, r), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "eval"])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="folder of the part-A checkpoints")
    ap.add_argument("--epochs-v", type=int, default=0, help="0: the shipped recipe's (60)")
    ap.add_argument("--epochs-e", type=int, default=0, help="0: the shipped recipe's (4)")
    ap.add_argument("--taus", default="infomap,0.75,0.7,0.65,0.6")
    ap.add_argument("--part", choices=["A", "B"], default="B", help="score on part B (unseen) or A (trained on)")
    a = ap.parse_args()
    if a.what == "train":
        a.out.mkdir(parents=True, exist_ok=True)
        train(a.root, a.out, a.epochs_v, a.epochs_e)
    else:
        evaluate(a.root, a.out, a.taus.split(","), a.part)


if __name__ == "__main__":
    main()
