"""Mirror (flip) averaging of descriptors, measured on small validation subsets (issue 13).

    python bench/mirror_mean.py prepare --root WORKDIRS --out DIR      # mirrored crops + DIR/input.json
    facecluster run DIR/input.json -o DIR/out.json -w DIR/wd --device cpu
    # optional: the embedder's own opt-in setting (mirrors the aligned chip)
    facecluster run DIR/input-orig.json -o DIR/out-m.json -w DIR/wd-mirror --device cpu --embedder "dlib?mirror=true"
    python bench/mirror_mean.py score --root WORKDIRS --out DIR        # default on plain vs mean descriptors

Subsets: glint-lowres-val (5 held-out glint18 people at 48 px, 1,650 crops) and
lfw-loose-val21 (142 held-out LFW people, <= 21 loose crops each), as ``bench/regimes.py`` builds
them. ``prepare`` writes each crop mirrored left-right as a lossless PNG; the embedder then runs
its whole path on it (landmarks and alignment on the mirrored crop). ``score`` takes the plain
descriptors from the already embedded ``WORKDIRS/<set>`` and, for the same faces, the mean of
the plain and mirrored raw descriptors, and scores the default method on both; with
``DIR/wd-mirror`` also the descriptors of ``--embedder "dlib?mirror=true"`` (the network run on
the aligned chip and its mirror image, alignment done once).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_method  # noqa: E402
from facecluster.train.splits import validation_mask  # noqa: E402
from facecluster.workdir import WorkDir  # noqa: E402

SUBSETS = (("glint-lowres", "glint18", 0), ("lfw-loose", "lfw", 21))


def _subset(root: Path, s: str, base: str, cap: int):
    """Rows (into the work dir's feature order), image paths and names of a validation subset."""
    wd = WorkDir(root / s)
    feats, index, _ = wd.read_features()
    recs = wd.read_manifest()["records"]
    paths = [recs[i]["img_path"] for i in index]
    names = np.array([Path(p).parent.name for p in paths])
    keep = np.flatnonzero(validation_mask(base, names))
    if cap:
        k2 = []
        for ident, c in Counter(names[keep].tolist()).items():
            if c >= 5:
                k2.extend(keep[names[keep] == ident][:cap].tolist())
        keep = np.sort(np.array(k2, np.int64))
    return keep, paths, names, feats


def prepare(root: Path, out: Path) -> None:
    from PIL import Image, ImageOps

    recs, orig = [], []
    for s, base, cap in SUBSETS:
        keep, paths, _, _ = _subset(root, s, base, cap)
        for i in keep:
            p = Path(paths[i])
            q = out / "img" / s / p.parent.name / (p.stem + ".png")
            q.parent.mkdir(parents=True, exist_ok=True)
            ImageOps.mirror(Image.open(p).convert("RGB")).save(q)
            recs.append({"img_path": str(q), "set": s, "src_row": int(i)})
            orig.append({"img_path": str(p), "set": s, "src_row": int(i)})
        print(f"{s}: {len(keep)} mirrored crops")
    (out / "input.json").write_text(json.dumps(recs))
    (out / "input-orig.json").write_text(json.dumps(orig))


def _rows(wd: WorkDir):
    f, idx, _ = wd.read_features()
    recs = wd.read_manifest()["records"]
    return f, {(recs[i]["set"], recs[i]["src_row"]): r for r, i in enumerate(idx)}


def score(root: Path, out: Path) -> None:
    ff, frow = _rows(WorkDir(out / "wd"))
    mm = _rows(WorkDir(out / "wd-mirror")) if (out / "wd-mirror" / "manifest.json").exists() else None
    for s, base, cap in SUBSETS:
        keep, _, names, x = _subset(root, s, base, cap)
        rows = [int(i) for i in keep if (s, int(i)) in frow]
        xo, xf, y = x[rows], ff[[frow[(s, i)] for i in rows]], names[rows]
        cos = np.sum(xo * xf, 1) / np.linalg.norm(xo, axis=1) / np.linalg.norm(xf, axis=1)
        print(f"== {s}: {len(rows)} faces, {len(set(y))} people; cosine(face, mirror) median {np.median(cos):.4f}, p10 {np.percentile(cos, 10):.4f}")
        variants = [("plain", xo), ("mirror mean", (xo + xf) / 2)]
        if mm is not None and all((s, i) in mm[1] for i in rows):
            variants.append(("mirror=true", mm[0][[mm[1][(s, i)] for i in rows]]))
        for tag, feats in variants:
            r = run_method("infomap", feats, y, "dlib")
            xn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
            sim = xn @ xn.T
            np.fill_diagonal(sim, -2)
            same = y[:, None] == y[None, :]
            print(
                f"  {tag:11s} BCubedF {r['bcubed_fscore']:.4f} (P {r['bcubed_precision']:.3f} R {r['bcubed_recall']:.3f}) "
                f"pairF {r['pairwise_fscore']:.4f} largest {r['largest_cluster']}/{r['largest_cluster_ids']} "
                f"mixed {r['mixed_faces']} clusters {r['n_clusters']}; median same-person cosine "
                f"{np.median(sim[same & (sim > -2)]):.4f}, median nearest other-person cosine {np.median(np.where(same, -2, sim).max(1)):.4f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "score"])
    ap.add_argument("--root", type=Path, required=True, help="folder of embedded work dirs (bench/regimes.py)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    (prepare if a.step == "prepare" else score)(a.root, a.out)


if __name__ == "__main__":
    main()
