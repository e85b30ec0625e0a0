"""Which landmark-rectangle strategy aligns face crops best for the dlib embedder?

For each data set (LFW: ~20-30 % margin; glint18: tight 112x112 ArcFace crops; ORL: 92x112 grey
head shots) a fixed, deterministic sample of identities is embedded with every strategy, and the
descriptors are scored by

* ``1nn``: leave-one-out 1-nearest-neighbour identification accuracy (cosine, L2-normalised),
* ``auc``: ROC AUC of same-person vs different-person cosine similarity over all pairs,
* ``d_same`` / ``d_diff``: mean Euclidean distance of raw descriptors (dlib's rule: same < 0.6),
* ``hog``: fraction of crops where the "auto"/"hog" strategies used a HOG detection,
* ``bF``: BCubed F of the default clustering method (``facecluster.cluster.DEFAULT_METHOD``, default
  settings, calibrated features as the pipeline feeds it) on the sample,
* ``bF~`` (``--bf-seeds K``): the mean of that BCubed F over K copies of the features with a small
  random perturbation (3 % of each descriptor's norm, i.e. cosine ~0.9996 to the original; the same
  K perturbations for every strategy, so differences are paired); ``sd`` is its spread over the
  copies. On these samples the default method's BCubed F moves by 0.005-0.02 under such a
  perturbation, more than the 0.003 a change of alignment may cost, so single values compare
  alignments only to that noise floor,
* ``flips``: images whose 1-NN is right only under the first strategy / only under this one, and
  the two-sided sign test p of that split (a 1-NN difference of a few images is often chance),
* ``cos``: median / 5th percentile / minimum cosine of each image's descriptor to the first
  strategy's (the reference, e.g. ``auto``),
* ``align ms``: CPU time per crop of the landmark step (HOG included at its measured per-crop cost
  for the crops where the strategy used it).

Sets are folders of identity folders: a name under ``--data`` (``../shared/data``) or a path
(e.g. ``/work/extdata/sets/lfw-loose``).

``--fit-agree`` instead measures, on *training* identities only (``facecluster.train.splits``),
how often detector-free starts converge to the HOG path's landmarks: the measurement that chose
``AGREE_STARTS`` and ``AGREE_TOL`` in ``facecluster.embed.align``.

Usage::

    nice -n 10 python bench/embed_alignment.py [--per-id 5] [--ids 100] [--strategies=resize,whole,auto:-0.1,...]
    nice -n 10 python bench/embed_alignment.py --sets lfw --strategies=auto,agree --bf-seeds 24
    nice -n 10 python bench/embed_alignment.py --fit-agree --sets lfw glint18 orl /work/extdata/sets/lfw-loose ...
    nice -n 10 python bench/embed_alignment.py --timing-rounds 5 --sets lfw glint18 --ids 20 --per-id 5 --strategies=auto,agree
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from facecluster.embed import align as A
from facecluster.embed.dlib_resnet import DlibEmbedder
from facecluster.imageio import load_image

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DEFAULT_STRATEGIES = ["resize", "whole", "-0.1", "-0.2", "0.1", "hog", "auto:0", "auto:-0.1", "auto:-0.2"]


def set_root(set_name: str) -> Path:
    """A set name under ``DATA`` or a folder path → the folder of identity folders."""
    p = Path(set_name)
    return (p if p.is_absolute() or p.is_dir() and "/" in set_name else DATA / set_name).resolve()


def sample(set_name: str, n_ids: int, per_id: int) -> tuple[list[Path], np.ndarray]:
    """Deterministic sample: identities with >= per_id images, evenly spaced; evenly spaced images."""
    root = set_root(set_name)
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


def perturbed_bcubed(feats: np.ndarray, labels: np.ndarray, seeds: int) -> np.ndarray:
    """(seeds,) the default method's BCubed F on ``seeds`` perturbed copies of ``feats``.

    Copy k adds ``0.03 * |f|`` times a random unit vector (seed k) to every descriptor ``f``: the
    same noise for every strategy, so two strategies' means differ only by their features.
    """
    from facecluster.calibration import calibration_mean, prepare_features
    from facecluster.cluster import DEFAULT_METHOD, get_clusterer
    from facecluster.metrics import bcubed

    out = []
    for k in range(seeds):
        e = np.random.default_rng(k).standard_normal(feats.shape)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        g = (feats + 0.03 * np.linalg.norm(feats, axis=1, keepdims=True) * e).astype(np.float32)
        pred = get_clusterer(DEFAULT_METHOD, device="cpu").fit_predict(prepare_features(g, calibration_mean("dlib")))
        out.append(bcubed(labels, pred)[2])
    return np.asarray(out)


def score(feats: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    hit = labels[s.argmax(1)] == labels
    nn1 = float(hit.mean())
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
            "bcubed_f": float(bcubed(labels, pred)[2]), "hit": hit}


def chips_for(strategy: str, imgs: list[np.ndarray], hog: list) -> tuple[np.ndarray, float, float, float]:
    """Chips of every image under a strategy (HOG rectangles precomputed once per image).

    Returns
    -------
    chips : (N, 150, 150, 3) uint8.
    hog_used : fraction of crops whose landmarks came from a HOG detection.
    hog_run : fraction of crops on which the strategy ran the detector (whatever it found).
    landmark_ms : CPU ms per crop of the landmark step without the (precomputed) detector runs.
    """
    from PIL import Image

    if strategy == "resize":  # baseline: no alignment at all
        return np.stack([np.asarray(Image.fromarray(im).resize((150, 150), Image.BICUBIC)) for im in imgs]), 0.0, 0.0, 0.0
    border = "black"
    if strategy.endswith("+rep"):
        strategy, border = strategy[:-4], "replicate"
    al = A.Aligner(margin=strategy, border=border)
    shapes, used, ran = [], 0, [0]
    t = time.process_time()
    for im, hr in zip(imgs, hog):
        def precomputed(_img, hr=hr):  # reuse the detection, count the runs
            ran[0] += 1
            return hr
        al.hog_rect = precomputed
        shape, rule = al.landmarks_rule(im)
        used += rule == "hog"
        shapes.append(shape)
    ms = 1000 * (time.process_time() - t) / len(imgs)
    out = [al.chip_from(im, sh) for im, sh in zip(imgs, shapes)]
    return np.stack(out), used / len(imgs), ran[0] / len(imgs), ms


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


def fit_agree(sets: list[str], per_set: int, margins: list[float], shifts: list[float], tols: list[float]) -> None:
    """Detector-free starts vs the HOG path's landmarks on *training* identities (prints tables).

    For every crop with a plausible HOG detection: the landmarks from the HOG box (the ``auto``
    path) and, for every start box (margin x downward shift) and 0-2 refits (:func:`A.refit_box`),
    the landmarks of the start. Error = largest coordinate difference to the HOG path's landmarks
    in inter-ocular distances. Then every pair of starts (first = the one whose landmarks are
    used): how often they disagree by more than ``tol`` (the crops that would go to HOG) and how
    many crops stay > 0.15 IOD from the HOG path anyway.
    """
    from facecluster.embed.dlib_resnet import default_landmarks_path
    from facecluster.train.splits import is_validation_identity

    pred = A._predictor(default_landmarks_path())
    mean = A.mean_shape(default_landmarks_path())
    starts = [(m, sh) for m in margins for sh in shifts]
    rounds = 3
    ref, got, names = [], [], []
    t_hog = n_hog = 0.0
    for set_name in sets:
        root = set_root(set_name)
        files = [p for d in sorted(root.iterdir()) if d.is_dir() and not is_validation_identity(root.name, d.name)
                 for p in sorted(d.iterdir()) if p.is_file()]
        pick = np.linspace(0, len(files) - 1, min(per_set, len(files))).round().astype(int)
        found = 0
        for i in pick:
            img = A.normalise_size(A.to_rgb_uint8(load_image(files[i])))
            t = time.process_time()
            r = A.Aligner.hog_rect(img)
            t_hog += time.process_time() - t
            n_hog += 1
            if r is None:
                continue
            found += 1
            ref.append(A._points(pred(img, A._dlib_rect(r))))
            per_start = []
            for m, sh in starts:
                shape = pred(img, A._dlib_rect(A.start_box(*img.shape[:2], m, sh)))
                seq = [A._points(shape)]
                for _ in range(rounds - 1):
                    shape = pred(img, A._dlib_rect(A.refit_box(seq[-1], mean)))
                    seq.append(A._points(shape))
                per_start.append(seq)
            got.append(per_start)
            names.append(root.name)
        print(f"{root.name}: {len(pick)} training crops, {found} with a plausible HOG detection", flush=True)
    ref_a, got_a, names_a = np.asarray(ref), np.asarray(got), np.asarray(names)  # got: (N, S, R, 5, 2)
    iod = A.interocular(ref_a)
    err = np.abs(got_a - ref_a[:, None, None]).max(axis=(-2, -1)) / iod[:, None, None]  # (N, S, R)
    print(f"\n{len(ref_a)} crops; HOG {1000 * t_hog / max(n_hog, 1):.2f} ms CPU per crop\n")
    print("| start (margin, shift) | refits | > 0.15 IOD | > 0.25 IOD | median IOD |" + "".join(f" > 0.15 {s} |" for s in sets))
    print("|---|---|---|---|---|" + "---|" * len(sets))
    for j, st in enumerate(starts):
        for k in range(rounds):
            e = err[:, j, k]
            per = "".join(f" {(e[names_a == set_root(s).name] > 0.15).mean():.3f} |" for s in sets)
            print(f"| {st} | {k} | {(e > 0.15).mean():.4f} | {(e > 0.25).mean():.4f} | {np.median(e):.3f} |{per}")
    print("\n| first start | second start | refits (first, second) | predictor runs | tol (IOD) | HOG run on | "
          "left > 0.15 IOD | left > 0.25 IOD |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for ja, sa in enumerate(starts):
        for jb, sb in enumerate(starts):
            if ja == jb:
                continue
            for ka, kb in ((1, 0), (1, 1), (2, 1), (2, 2)):
                for tol in tols:
                    ok = A.landmarks_agree(got_a[:, ja, ka], got_a[:, jb, kb], tol)
                    e = np.where(ok, err[:, ja, ka], 0.0)  # disagreement -> HOG path (error 0)
                    rows.append((float((e > 0.15).mean()), ka + kb + 2, float((~ok).mean()), sa, sb, (ka, kb), tol,
                                 float((e > 0.25).mean())))
    for left, runs, hog, sa, sb, k, tol, left25 in sorted(rows, key=lambda r: (r[0], r[1], r[2]))[:30]:
        print(f"| {sa} | {sb} | {k} | {runs} | {tol} | {hog:.4f} | {left:.4f} | {left25:.4f} |")


def timing(sets: list[str], n_ids: int, per_id: int, strategies: list[str], rounds: int) -> None:
    """Paired CPU time per crop of the alignment steps: strategies alternate, ``rounds`` times.

    Each round runs every strategy over the same size-normalised crops (the detector really runs
    here, nothing is precomputed); CPU time (``time.process_time``) of the landmark step (face box
    + landmarks, HOG included where the strategy runs it) and of ``get_face_chip``. Prints the
    median over rounds of the per-crop ms.
    """
    imgs = []
    for set_name in sets:
        paths, _ = sample(set_name, n_ids, per_id)
        imgs += [A.normalise_size(A.to_rgb_uint8(load_image(p))) for p in paths]
    als = {st: A.Aligner(margin=st) for st in strategies}
    for al in als.values():  # warm-up: model load, first detector run
        al.chip(imgs[0])
    lm = {st: [] for st in strategies}
    ch = {st: [] for st in strategies}
    for _ in range(rounds):
        for st, al in als.items():
            t = time.process_time()
            shapes = [al.landmarks(im) for im in imgs]
            t1 = time.process_time()
            for im, sh in zip(imgs, shapes):
                al.chip_from(im, sh)
            t2 = time.process_time()
            lm[st].append(1000 * (t1 - t) / len(imgs))
            ch[st].append(1000 * (t2 - t1) / len(imgs))
    print(f"{len(imgs)} crops from {', '.join(set_root(s).name for s in sets)}; {rounds} alternating rounds, "
          "median CPU ms per crop")
    print("| strategy | face box + landmarks ms | chip ms | together ms | landmarks range over rounds |")
    print("|---|---|---|---|---|")
    for st in strategies:
        a, c = float(np.median(lm[st])), float(np.median(ch[st]))
        print(f"| {st} | {a:.2f} | {c:.2f} | {a + c:.2f} | {min(lm[st]):.2f}-{max(lm[st]):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["lfw", "glint18", "orl"],
                    help="names under ../shared/data or folders of identity folders")
    ap.add_argument("--ids", type=int, default=100)
    ap.add_argument("--per-id", type=int, default=5)
    ap.add_argument("--transform", choices=["none", "tight", "loose"], default="none",
                    help="simulate other detectors: tight = centre 65%% of the crop, loose = crop padded by "
                    "40%% of its side on every side (reflect)")
    ap.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES), help="comma-separated; the first is the "
                    "reference of the cosine column")
    ap.add_argument("--bf-seeds", type=int, default=0, help="also the default method's BCubed F averaged over this "
                    "many perturbed copies of the features (paired across strategies)")
    ap.add_argument("--timing-rounds", type=int, default=0, help="only time the alignment steps of the strategies "
                    "(paired, alternating) over the samples of --sets, this many rounds")
    ap.add_argument("--fit-agree", action="store_true", help="measure detector-free starts vs HOG on training ids")
    ap.add_argument("--per-set", type=int, default=300, help="--fit-agree: crops per set (evenly spaced)")
    ap.add_argument("--margins", default="0.15,0.3", help="--fit-agree: start margins")
    ap.add_argument("--shifts", default="0,0.05,0.1", help="--fit-agree: start shifts (down, in box sides)")
    ap.add_argument("--tols", default="0.05,0.07,0.1,0.15", help="--fit-agree: agreement tolerances (IOD)")
    args = ap.parse_args()
    if args.fit_agree:
        fl = lambda v: [float(x) for x in v.split(",")]  # noqa: E731
        fit_agree(args.sets, args.per_set, fl(args.margins), fl(args.shifts), fl(args.tols))
        return
    if args.timing_rounds:
        timing(args.sets, args.ids, args.per_id, args.strategies.split(","), args.timing_rounds)
        return
    torch.set_num_threads(1)
    emb = DlibEmbedder(batch_size=32)
    rows = []
    for set_name in args.sets:
        paths, labels = sample(set_name, args.ids, args.per_id)
        imgs = [A.normalise_size(transform(load_image(p), args.transform)) for p in paths]
        t = time.process_time()
        hog = [A.Aligner.hog_rect(im) for im in imgs]
        t_hog = (time.process_time() - t) / len(imgs)
        set_name = set_root(set_name).name if args.transform == "none" else f"{set_root(set_name).name} ({args.transform})"
        print(f"{set_name}: {len(paths)} images, {len(set(labels))} ids, HOG {1000 * t_hog:.2f} ms CPU/img, "
              f"{np.mean([h is not None for h in hog]):.3f} detected", flush=True)
        ref, ref_seeds, ref_hit = None, None, None
        for st in args.strategies.split(","):
            chips, hog_frac, hog_run, lm_ms = chips_for(st, imgs, hog)
            feats = emb.embed_batch(chips)
            r = score(feats, labels)
            x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
            first = ref is None
            ref = x if first else ref
            c = (x * ref).sum(1)
            ref_hit = r["hit"] if first else ref_hit
            # 1-NN flips against the reference: images only it gets right / only this one does,
            # and the two-sided sign test of that split (is the 1-NN difference more than chance?)
            a, b = int((ref_hit & ~r["hit"]).sum()), int((~ref_hit & r["hit"]).sum())
            r["flips"] = (a, b, float(binomtest(a, a + b).pvalue) if a + b else 1.0)
            r.update(cos=(float(np.median(c)), float(np.percentile(c, 5)), float(c.min())),
                     hog=hog_frac, align_ms=lm_ms + hog_run * 1000 * t_hog, hog_run=hog_run)
            if args.bf_seeds:
                per_seed = perturbed_bcubed(feats, labels, args.bf_seeds)
                ref_seeds = per_seed if first else ref_seeds
                d = per_seed - ref_seeds  # paired: the same perturbation seeds
                r["bf_smooth"] = (float(per_seed.mean()), float(per_seed.std()), float(d.mean()),
                                  float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0)
            rows.append((set_name, st, r))
            sm = (f"  bF~ {r['bf_smooth'][0]:.4f} (sd {r['bf_smooth'][1]:.4f}; vs first {r['bf_smooth'][2]:+.4f} "
                  f"+- {r['bf_smooth'][3]:.4f})" if args.bf_seeds else "")
            print(f"  {st:>12}  1nn {r['1nn']:.4f}  auc {r['auc']:.4f}  bF {r['bcubed_f']:.4f}{sm}  d_same {r['d_same']:.3f}  "
                  f"d_diff {r['d_diff']:.3f}  cos {r['cos'][0]:.4f}/{r['cos'][1]:.4f}/{r['cos'][2]:.4f}  "
                  f"hog used {hog_frac:.3f} run {hog_run:.3f}  align {r['align_ms']:.2f} ms  "
                  f"1-NN flips vs first {r['flips'][0]}/{r['flips'][1]} (sign p {r['flips'][2]:.2f})", flush=True)
    sm_h = (f" BCubed F mean of {args.bf_seeds} perturbed (sd) | its paired difference to the first (SE) |"
            if args.bf_seeds else "")
    print(f"\n| set | strategy | 1-NN acc | AUC | BCubed F (default method) |{sm_h} cos to {args.strategies.split(',')[0]} "
          "median / p5 / min | HOG used / run | align ms CPU |")
    print("|---|---|---|---|---|" + ("---|---|" if args.bf_seeds else "") + "---|---|---|")
    for set_name, st, r in rows:
        sm = (f" {r['bf_smooth'][0]:.4f} ({r['bf_smooth'][1]:.4f}) | {r['bf_smooth'][2]:+.4f} ({r['bf_smooth'][3]:.4f}) |"
              if args.bf_seeds else "")
        print(f"| {set_name} | {st} | {r['1nn']:.4f} | {r['auc']:.4f} | {r['bcubed_f']:.4f} |{sm} "
              f"{r['cos'][0]:.4f} / {r['cos'][1]:.4f} / {r['cos'][2]:.4f} | {r['hog']:.3f} / {r['hog_run']:.3f} | {r['align_ms']:.2f} |")


if __name__ == "__main__":
    main()
