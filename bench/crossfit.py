"""Choose thresholds on a learned method's own network outputs on people its networks never saw
(GCN-E's tau: docs/benchmarks/gcn_ve.md §11; Ada-NETS's final_th / min_k_hat:
docs/benchmarks/adanets.md §9).

The shipped networks were trained on every training identity, so the tuning regimes
(``bench/regimes.py --tuning``) flatter a threshold on their outputs. Cross-fitting instead:

    # networks of the shipped recipe on part A (two thirds of the training identities;
    # 2 CPU cores: gcn-ve ~23 min, adanets ~13 min)
    python bench/crossfit.py train --method gcn-ve --root /work/extdata/work --out OUT
    # the method with them on the tuning regimes restricted to part B (never seen), per variant
    # (METHOD[:key=value,...] as bench/regimes.py; "infomap" scores the default on the same faces)
    python bench/crossfit.py eval --method gcn-ve --root /work/extdata/work --out OUT \\
        --variants infomap gcn-ve:tau=0.75 gcn-ve:tau=0.65
    python bench/crossfit.py eval --method adanets --root /work/extdata/work --out OUT \\
        --variants adanets:final_th=0.95 adanets:final_th=0.9

The same protocol compares training *recipes* (docs/benchmarks/gcn_ve.md §14): ``--sets`` trains
on other training sets' part A (e.g. ``lfw,glint18,lfw-mixed,glint-mixed``: more crop styles;
``all``: every embedded one), ``eval`` then scores them on the same part-B faces; ``--whole``
trains the chosen recipe on every training identity (weights to ship, not for part B).
``gcn-ve`` variants get the shipped networks' tau (0.65) unless they set their own.

    # 2 CPU cores (flush-to-zero on): lfw,glint18 GCN-V 76 s + GCN-E 22 min, four sets 2.5 + 16 min
    python bench/crossfit.py train --method gcn-ve --root WORKDIRS --out OUT4 --sets lfw,glint18,lfw-mixed,glint-mixed

Part A / B: crc32 of "proxy:" + person name mod 3 (0 = B). Validation regimes are never read.
Only the shipped dlib recipes (calibrated features; lfw + glint18 training identities unless
``--sets``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_variant, run_method  # noqa: E402
from regimes import TRAIN_SETS, format_row, load, tuning_regimes  # noqa: E402

from facecluster.calibration import calibration_mean, prepare_features  # noqa: E402

SETS = ["lfw", "glint18"]
#: eval's variants when none are given: the studies of gcn_ve.md §11 and adanets.md §9
DEFAULT_VARIANTS = {
    "gcn-ve": ["infomap"] + [f"gcn-ve:tau={t}" for t in (0.75, 0.7, 0.65, 0.6)],
    "adanets": ["infomap"] + [f"adanets:final_th={t}" for t in (0.95, 0.9, 0.86)] + ["adanets:weak_th=0.86,weak_margin=0.01"],
}


def in_part_b(names: np.ndarray) -> np.ndarray:
    """(N,) bool: the person is in part B (never trained on here)."""
    return np.array([zlib.crc32(("proxy:" + str(n)).encode()) % 3 == 0 for n in names])


def part_a(root: Path, sets: list[str] = SETS, whole: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated features (N, 128) float32, identity labels (N,) and set index (N,) of the
    part-A faces of ``sets``' training identities (the shipped recipe: lfw and glint18; names
    shared across sets are one person, as ``facecluster.train.adanets.load_sets``); ``whole``:
    every training identity's faces (parts A and B: weights to ship once part B chose the recipe)."""
    xs, ns, gs = [], [], []
    for i, s in enumerate(sets):
        x, n = load(root, s, "train")
        a = np.ones(len(n), bool) if whole else ~in_part_b(n)
        xs.append(x[a])
        ns.append(n[a])
        gs.append(np.full(int(a.sum()), i))
    X = prepare_features(np.concatenate(xs), calibration_mean("dlib")).astype(np.float32)
    y = np.unique(np.concatenate(ns), return_inverse=True)[1].astype(np.int64)
    print(f"{'every training identity' if whole else 'part A'}: {len(X)} faces, {y.max() + 1} people", flush=True)
    return X, y, np.concatenate(gs)


def train_gcn_ve(root: Path, out: Path, epochs_v: int = 0, epochs_e: int = 0, sets: list[str] = SETS, whole: bool = False) -> None:
    """GCN-V / GCN-E with the shipped dlib recipe (its checkpoint meta: k, k_e, nhid, epochs,
    optimizer, lr, seed, ignore_ratio_train) on part A of ``sets`` (``whole``: on every training
    identity), each set its own graph."""
    from facecluster.cluster import gcn_common as gc
    from facecluster.train.gcn_ve import train_gcn_e, train_gcn_v

    rc = gc.read_meta(gc.shipped_files("dlib")[0])
    epochs_v, epochs_e = epochs_v or rc["epochs_v"], epochs_e or rc["epochs_e"]
    X, y, graphs = part_a(root, sets, whole)
    meta = {"features": "calibrated", "study": "every training identity" if whole else "cross-fit part A",
            "epochs_v": epochs_v, "epochs_e": epochs_e, "sets": sets, "graphs": "per set", "k": rc["k"], "k_e": rc["k_e"],
            "nhid": rc["nhid"], "optimizer": rc["optimizer"], "lr": rc["lr"], "seed": rc["seed"],
            "ignore_ratio_train": rc["ignore_ratio_train"]}
    common = dict(nhid=rc["nhid"], lr=rc["lr"], optimizer=rc["optimizer"], seed=rc["seed"], progress=False, graphs=graphs)
    t = time.time()
    mv = train_gcn_v(X, y, k=rc["k"], epochs=epochs_v, **common)
    print(f"GCN-V {time.time() - t:.0f} s", flush=True)
    gc.save_checkpoint(mv, out / "gcn_v.pth", meta={**meta, "facecluster": "gcn-v"})
    t = time.time()
    me = train_gcn_e(mv, X, y, k=rc["k"], k_e=rc["k_e"], ignore_ratio=rc["ignore_ratio_train"], epochs=epochs_e, **common)
    print(f"GCN-E {time.time() - t:.0f} s", flush=True)
    gc.save_checkpoint(me, out / "gcn_e.pth", meta={**meta, "facecluster": "gcn-e"})


def train_adanets(root: Path, out: Path, steps_and: int = 0, steps_gcn: int = 0, sets: list[str] = SETS, whole: bool = False) -> None:
    """AND and GCN with the shipped dlib recipe (``adanets_dlib.json`` -> and, gcn: optimizer, lr,
    steps, batch, clip, k, lambda, beta; groups, fanout, order_k, margins, warm-up, seed) on part A
    of ``sets`` (``whole``: every training identity), one pooled graph as the shipped training."""
    from facecluster.cluster.adanets import shipped_files
    from facecluster.train.adanets import save_checkpoint, train_and, train_gcn

    rc = json.loads(shipped_files("dlib")[2].read_text())
    ra, rg = rc["and"], rc["gcn"]
    X, y, _ = part_a(root, sets, whole)
    study = "every training identity" if whole else "cross-fit part A"
    m_and, i_and = train_and(
        X, y, k=ra["k"], lamb=ra["lamb"], beta=ra["beta"], steps=steps_and or ra["steps"], batch_size=ra["batch_size"],
        lr=ra["lr"], optimizer=ra["optimizer"], clip=ra["clip"], seed=ra["seed"], progress=False,
        log=lambda s: print(s, flush=True))
    save_checkpoint(m_and, out / "adanets_and.pth", i_and["steps"],
                    {"scale_max": i_and["k"], "features": "calibrated", "study": study, "sets": sets, "train": i_and})
    m_gcn, i_gcn = train_gcn(
        X, y, steps=steps_gcn or rg["steps"], order_k=rg["order_k"], group=rg["group"], groups=rg["groups"],
        fanout=rg["fanout"], lr=rg["lr"], warmup=rg["warmup"], pmargin=rg["pmargin"], margin=rg["margin"],
        optimizer="sgd", seed=rg["seed"], progress=False, log=lambda s: print(s, flush=True))
    save_checkpoint(m_gcn, out / "adanets_gcn.pth", i_gcn["steps"], {"study": study, "sets": sets, "train": i_gcn})


def networks(method: str, out: Path) -> dict:
    """Settings that point ``method`` at the part-A checkpoints in ``out``; the shipped dlib
    settings stay the defaults (user checkpoints get dlib's tuned values)."""
    if method == "gcn-ve":
        from facecluster.cluster import gcn_common as gc
        from facecluster.cluster.gcn_e import REFINED_TAU_E_BY_EMBEDDER

        s = gc.shipped_settings("dlib")
        # tau too: a checkpoint of unknown provenance gets the paper's 0.8, the shipped networks 0.65
        return dict(checkpoint_v=str(out / "gcn_v.pth"), checkpoint_e=str(out / "gcn_e.pth"), trust_checkpoint=True,
                    k=s["k"], k_e=s["k_e"], ignore_ratio=s["ignore_ratio"], tau=REFINED_TAU_E_BY_EMBEDDER["dlib"])
    return dict(checkpoint_and=str(out / "adanets_and.pth"), checkpoint_gcn=str(out / "adanets_gcn.pth"), trust_checkpoint=True)


def evaluate(root: Path, method: str, out: Path, variants: list[str], part: str) -> None:
    """Each variant on each tuning regime's part-``part`` faces; variants of ``method`` use the
    part-A networks, any other method (infomap) runs as shipped."""
    regimes = []
    for name, x, n, px in tuning_regimes(root, with_px=True):
        m = in_part_b(n) if part == "B" else ~in_part_b(n)
        regimes.append((name, x[m], n[m], px[m]))
    for v in variants:
        meth, settings = parse_variant(v)
        if meth == method:
            settings = {**networks(method, out), **settings}
        print(f"== {v}{' (part-A networks)' if meth == method else ''} part {part}", flush=True)
        for name, x, n, px in regimes:
            print(format_row(name, run_method(meth, x, n, "dlib", face_px=px, **settings)), flush=True)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "eval"])
    ap.add_argument("--method", choices=["gcn-ve", "adanets"], default="gcn-ve")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="folder of the part-A checkpoints")
    ap.add_argument("--steps", default="", help="train: override the recipe's length, 'V,E' epochs (gcn-ve) or 'AND,GCN' steps (adanets); 0 keeps the recipe's")
    ap.add_argument("--sets", default=",".join(SETS), help="train: the training sets (bench/regimes.TRAIN_SETS "
                    "names, comma-separated; 'all' = every one embedded) whose part-A faces train the networks")
    ap.add_argument("--whole", action="store_true", help="train: on every training identity (parts A and B) "
                    "instead of part A: the chosen recipe's weights to ship (never evaluated on part B)")
    ap.add_argument("--variants", nargs="+", help="eval: METHOD[:key=value,...] each (default: the default method and the "
                    "thresholds studied for --method)")
    ap.add_argument("--part", choices=["A", "B"], default="B", help="score on part B (unseen) or A (trained on)")
    a = ap.parse_args()
    if a.what == "train":
        from facecluster.train import flush_subnormals

        flush_subnormals()  # before any torch work: subnormal gradients slow CPU training ~12x
        a.out.mkdir(parents=True, exist_ok=True)
        s1, s2 = ([int(v) for v in a.steps.split(",")] + [0, 0])[:2] if a.steps else (0, 0)
        sets = [s for s in TRAIN_SETS if (a.root / s / "features.npy").exists()] if a.sets == "all" else a.sets.split(",")
        (train_gcn_ve if a.method == "gcn-ve" else train_adanets)(a.root, a.out, s1, s2, sets, a.whole)
    else:
        evaluate(a.root, a.method, a.out, a.variants or DEFAULT_VARIANTS[a.method], a.part)


if __name__ == "__main__":
    main()
