"""Which landmark-rectangle strategy aligns face crops best for the dlib embedder?

For each data set (LFW: ~20-30 % margin; glint18: tight 112x112 ArcFace crops; ORL: 92x112 grey
head shots) a fixed, deterministic sample of identities is embedded with every strategy, and the
descriptors are scored by

* ``1nn``: leave-one-out 1-nearest-neighbour identification accuracy (cosine, L2-normalised),
* ``auc``: ROC AUC of same-person vs different-person cosine similarity over all pairs,
* ``d_same`` / ``d_diff``: mean Euclidean distance of raw descriptors (dlib's rule: same < 0.6),
* ``hog``: fraction of crops where the "auto"/"hog" strategies used a HOG detection,
* ``bF``: BCubed F of the default clustering method (``facecluster.cluster.DEFAULT_METHOD``, default
  settings, calibrated features as the pipeline feeds it) on the sample.

Usage::

    nice -n 10 python bench/embed_alignment.py [--per-id 5] [--ids 100] [--strategies=resize,whole,auto:-0.1,...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from facecluster.embed import align as A
from facecluster.embed.dlib_resnet import DlibEmbedder
from facecluster.imageio import load_image

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DEFAULT_STRATEGIES = ["resize", "whole", "-0.1", "-0.2", "0.1", "hog", "auto:0", "auto:-0.1", "auto:-0.2"]


def sample(set_name: str, n_ids: int, per_id: int) -> tuple[list[Path], np.ndarray]:
    """Deterministic sample: identities with >= per_id images, evenly spaced; evenly spaced images."""
    root = (DATA / set_name).resolve()
    ids = [d for d in sorted(root.iterdir()) if d.is_dir()]
    files = {d.name: sorted(p for p in d.iterdir() if p.is_file()) for d in ids}
    ok = [d.name for d in ids if len(files[d.name]) >= per_id]
    pick = [ok[i] for i in np.linspace(0, len(ok) - 1, min(n_ids, len(ok))).round().astype(int)]
    paths, labels = [], []
    for lab, name in enumerate(dict.fromkeys(pick)):
        fs = files[name]
        for i in np.linspace(0, len(fs) - 1, per_id).round().astype(int):
            paths.append(fs[i])
            labels.append(lab)
    return paths, np.asarray(labels)


def score(feats: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    nn1 = float((labels[s.argmax(1)] == labels).mean())
    iu = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    auc = float(roc_auc_score(same, s[iu]))
    d = np.linalg.norm(feats[:, None, :] - feats[None, :, :], axis=2)[iu]
    # the default clustering method on the pipeline's features (calibrated, as `facecluster run` does)
    from facecluster.calibration import calibration_mean, prepare_features
    from facecluster.cluster import DEFAULT_METHOD, get_clusterer
    from facecluster.metrics import bcubed

    pred = get_clusterer(DEFAULT_METHOD, device="cpu").fit_predict(prepare_features(feats, calibration_mean("dlib")))
    return {"1nn": nn1, "auc": auc, "d_same": float(d[same].mean()), "d_diff": float(d[~same].mean()),
            "bcubed_f": float(bcubed(labels, pred)[2])}


def chips_for(strategy: str, imgs: list[np.ndarray], hog: list) -> tuple[np.ndarray, float]:
    """Chips of every image under a strategy (HOG rectangles precomputed once per image)."""
    from PIL import Image

    if strategy == "resize":  # baseline: no alignment at all
        return np.stack([np.asarray(Image.fromarray(im).resize((150, 150), Image.BICUBIC)) for im in imgs]), 0.0
    border = "black"
    if strategy.endswith("+rep"):
        strategy, border = strategy[:-4], "replicate"
    al = A.Aligner(margin=strategy, border=border)
    out, used = [], 0
    for im, hr in zip(imgs, hog):
        al.hog_rect = (lambda _img, hr=hr: hr)  # reuse the precomputed detection
        (_, rule) = al.rect(im)
        used += rule == "hog"
        out.append(al.chip(im))
    return np.stack(out), used / len(imgs)


def transform(img: np.ndarray, kind: str) -> np.ndarray:
    """Re-crop a face crop as a tighter or looser detector would have cut it."""
    h, w = img.shape[:2]
    if kind == "tight":
        ch, cw = round(0.65 * h), round(0.65 * w)
        t, l = (h - ch) // 2, (w - cw) // 2
        return np.ascontiguousarray(img[t : t + ch, l : l + cw])
    if kind == "loose":
        p = round(0.4 * max(h, w))
        return np.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["lfw", "glint18", "orl"])
    ap.add_argument("--ids", type=int, default=100)
    ap.add_argument("--per-id", type=int, default=5)
    ap.add_argument("--transform", choices=["none", "tight", "loose"], default="none",
                    help="simulate other detectors: tight = centre 65%% of the crop, loose = crop padded by "
                    "40%% of its side on every side (reflect)")
    ap.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES), help="comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    emb = DlibEmbedder(batch_size=32)
    rows = []
    for set_name in args.sets:
        paths, labels = sample(set_name, args.ids, args.per_id)
        imgs = [A.normalise_size(transform(load_image(p), args.transform)) for p in paths]
        t = time.perf_counter()
        hog = [A.Aligner.hog_rect(im) for im in imgs]
        t_hog = (time.perf_counter() - t) / len(imgs)
        set_name = set_name if args.transform == "none" else f"{set_name} ({args.transform})"
        print(f"{set_name}: {len(paths)} images, {len(set(labels))} ids, HOG {1000 * t_hog:.1f} ms/img, "
              f"{np.mean([h is not None for h in hog]):.3f} detected", flush=True)
        for st in args.strategies.split(","):
            chips, hog_frac = chips_for(st, imgs, hog)
            r = score(emb.embed_batch(chips), labels)
            rows.append((set_name, st, hog_frac, r))
            print(f"  {st:>12}  1nn {r['1nn']:.4f}  auc {r['auc']:.4f}  bF {r['bcubed_f']:.4f}  d_same {r['d_same']:.3f}  "
                  f"d_diff {r['d_diff']:.3f}  hog {hog_frac:.2f}", flush=True)
    print("\n| set | strategy | 1-NN acc | AUC | BCubed F (default method) | mean d same | mean d diff | HOG used |")
    print("|---|---|---|---|---|---|---|---|")
    for set_name, st, hf, r in rows:
        print(f"| {set_name} | {st} | {r['1nn']:.4f} | {r['auc']:.4f} | {r['bcubed_f']:.4f} | {r['d_same']:.3f} | {r['d_diff']:.3f} | {hf:.2f} |")


if __name__ == "__main__":
    main()
