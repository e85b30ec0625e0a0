"""Crops with no face in them (a detector's false positives): build, fit and check the non-face
test that keeps them out of every person's cluster (``facecluster.nonface``, docs/benchmarks.md
§8, "Crops with no face").

What it does, in order:

1. **Non-face crops** cut from LFW's original 250x250 photos *outside* the face (the shirt and
   tie below it, the background beside and above the head, the corners, random boxes that miss the
   face), at 48-200 px and JPEG q50-95, plus synthetic patterns (noise, blurred noise, gradients,
   flat colour, stripes). The training part comes from the training identities' photos; the
   held-out part from the validation identities' photos and from *other* patterns (checkerboards,
   text, ellipses) that the fit never sees.
2. Both parts embedded as users' crops are (``facecluster run`` into ``--work``/junk-<part>).
3. A logistic regression on the L2-normalised descriptors: the faces are every training set's
   training identities (``bench/regimes.py``'s ``TRAIN_SETS``: LFW in five crop styles, glint18 at
   112 / 48 / 32-112 px), the non-faces part 1's training crops. The threshold: the score that at
   most ``--face-rate`` of those training faces reach.
4. Report: non-faces caught (held-out part), faces flagged on every validation regime (identities
   and crop styles the fit never saw: LFW at 80 px q35, another detector's boxes, Extended Yale B,
   ORL, ...), how alike copies of one non-face are next to distinct non-faces (why only exact
   copies share a cluster) and what the default method makes of held-out non-faces mixed into
   lfw-val with the test off and on. ``--write`` saves ``shared/facecluster/weights/<embedder>_nonface.npz`` (+ .json).

Usage (2-core box: ~4 min of embedding, the fit in seconds)::

    python bench/nonface.py --lfw-originals /work/extdata/src/data/lfw-deepfunneled \\
        --root /work/extdata/work --work /tmp/nonface [--write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

import regimes  # noqa: E402

from facecluster.knn import l2_normalize  # noqa: E402
from facecluster.train.splits import validation_mask  # noqa: E402

#: where the deep-funnelled originals put the face (x0, y0, x1, y1): boxes that overlap it are not cut
FACE_BOX = (70, 60, 180, 195)
TRAIN_PATTERNS = ("noise", "blurred-noise", "gradient", "flat", "stripes")
HELDOUT_PATTERNS = ("checkerboard", "text", "ellipses")


def _overlap(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]))


def _region(kind: str, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of the 250x250 original in a region that holds no face."""
    while True:
        if kind == "chest":
            s = int(rng.integers(50, 110))
            x0, y0 = int(rng.integers(40, 210 - s)), int(rng.integers(185, 251 - min(s, 65)))
            box = (x0, y0, x0 + s, min(250, y0 + s))
        elif kind == "corner":
            s = int(rng.integers(40, 80))
            x0 = 0 if rng.random() < 0.5 else 250 - s
            y0 = 0 if rng.random() < 0.5 else 250 - s
            box = (x0, y0, x0 + s, y0 + s)
        elif kind == "side":
            w = int(rng.integers(40, 68))
            h = int(rng.integers(60, 120))
            x0 = 0 if rng.random() < 0.5 else 250 - w
            y0 = int(rng.integers(30, 250 - h))
            box = (x0, y0, x0 + w, y0 + h)
        elif kind == "top":
            w, h = int(rng.integers(60, 120)), int(rng.integers(30, 55))
            x0 = int(rng.integers(40, 210 - w))
            box = (x0, 0, x0 + w, h)
        else:  # random box anywhere that misses the face
            s = int(rng.integers(40, 100))
            x0, y0 = int(rng.integers(0, 251 - s)), int(rng.integers(0, 251 - s))
            box = (x0, y0, x0 + s, y0 + s)
        if _overlap(box, FACE_BOX) <= 0.15 or kind in ("top",):
            return box


def pattern(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 112x112 RGB uint8 synthetic non-face of one of ``TRAIN_PATTERNS`` / ``HELDOUT_PATTERNS``."""
    from PIL import Image, ImageDraw, ImageFilter

    s = 112
    if kind == "noise":
        return rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    if kind == "blurred-noise":
        img = Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))
        return np.asarray(img.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 10)))))
    if kind == "gradient":
        g = np.linspace(0, 1, s)
        a = (g[None, :, None] * rng.random(3) + g[:, None, None] * rng.random(3)) * 127
        return a.astype(np.uint8)
    if kind == "flat":
        return np.full((s, s, 3), rng.integers(0, 256, 3), np.uint8)
    if kind == "stripes":
        period = int(rng.integers(4, 30))
        row = (np.arange(s) // period) % 2
        a = np.where(row[None, :, None] if rng.random() < 0.5 else row[:, None, None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
        return np.broadcast_to(a, (s, s, 3)).astype(np.uint8)
    if kind == "checkerboard":
        c = int(rng.integers(6, 28))
        y, x = np.mgrid[:s, :s]
        m = ((y // c + x // c) % 2)[..., None]
        return np.where(m, rng.integers(0, 256, 3), rng.integers(0, 256, 3)).astype(np.uint8)
    img = Image.new("RGB", (s, s), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    if kind == "text":
        for _ in range(int(rng.integers(2, 6))):
            xy = (int(rng.integers(0, 80)), int(rng.integers(0, 100)))
            d.text(xy, "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(3, 9)))),
                   fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        return np.asarray(img.resize((s * 2, s * 2)).resize((s, s)))
    for _ in range(int(rng.integers(1, 5))):  # ellipses
        x0, y0 = rng.integers(0, 80, 2)
        d.ellipse((int(x0), int(y0), int(x0 + rng.integers(15, 60)), int(y0 + rng.integers(15, 60))),
                  fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(img)


def make_crops(originals: Path, out: Path, part: str, n_photo: int, n_pattern: int, seed: int) -> Path:
    """Write ``n_photo`` non-face crops from the ``part`` ("train" / "val") identities' originals and
    ``n_pattern`` synthetic ones; returns the input JSON."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = sorted(originals.glob("*/*.jpg"))
    names = np.array([p.parent.name for p in photos])
    val = validation_mask("lfw", names)
    pool = [p for p, v in zip(photos, val) if v == (part == "val")]
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    kinds = ("chest", "corner", "side", "top", "random")
    for i, j in enumerate(rng.choice(len(pool), n_photo, replace=len(pool) < n_photo)):
        kind = kinds[i % len(kinds)]
        box = _region(kind, rng)
        crop = Image.open(pool[j]).convert("RGB").crop(box)
        side = int(rng.integers(48, 201))
        crop = crop.resize((side, max(16, int(side * (box[3] - box[1]) / (box[2] - box[0])))), Image.BILINEAR)
        p = img_dir / f"{kind}_{i:05d}.jpg"
        crop.save(p, quality=int(rng.integers(50, 96)))
        recs.append({"img_path": str(p), "kind": kind})
    patterns = TRAIN_PATTERNS if part == "train" else HELDOUT_PATTERNS
    for i in range(n_pattern):
        kind = patterns[i % len(patterns)]
        p = img_dir / f"{kind}_{i:05d}.jpg"
        Image.fromarray(pattern(kind, rng)).save(p, quality=int(rng.integers(50, 96)))
        recs.append({"img_path": str(p), "kind": kind})
    inp = out / "input.json"
    inp.write_text(json.dumps(recs))
    return inp


def embed(inp: Path, wd: Path, embedder: str) -> tuple[np.ndarray, list[str]]:
    """``facecluster run`` on the crops (as users' crops are embedded); (N, D) descriptors and kinds."""
    if not (wd / "features.npy").exists():
        exe = Path(sys.executable).parent / "facecluster"
        cmd = [str(exe) if exe.exists() else "facecluster", "run", str(inp), "-o", str(wd / "output.json"), "-w", str(wd),
               "--embedder", embedder]
        subprocess.run(cmd, check=True)
    recs = json.loads(inp.read_text())
    x = np.load(wd / "features.npy")
    index = np.load(wd / "features-index.npy")
    return x, [recs[i]["kind"] for i in index]


def mixed_in(root: Path, junk: np.ndarray, embedder: str = "dlib") -> None:
    """lfw-val's faces plus the held-out non-faces, clustered by the default with the test off / on."""
    import _common

    _, x, n, px = regimes.validation_regimes(root, only=["lfw-val"], with_px=True)[0]
    xj = np.asarray(junk, np.float32)
    X = np.concatenate([np.asarray(x, np.float32), xj])
    names = np.concatenate([n.astype(str), np.array([f"non-face:{i}" for i in range(len(xj))])])
    face_px = np.concatenate([px, np.full(len(xj), np.nan, np.float32)])
    is_junk = np.r_[np.zeros(len(x), bool), np.ones(len(xj), bool)]
    print("| test | BCubed F | faces in mixed clusters | non-faces in a cluster with faces | largest cluster of non-faces | clusters |")
    print("|---|---|---|---|---|---|")
    from facecluster.nonface import has_test

    for on in (False, True) if has_test(embedder) else (False,):  # "on": the shipped test
        got = []
        r = _common.run_method("infomap", X, names, embedder, face_px=face_px, labels_out=got, nonface_check=on)
        lab = got[0]
        with_faces = np.isin(lab[is_junk], lab[~is_junk])
        only = lab[is_junk][~with_faces]
        biggest = int(np.bincount(only).max()) if len(only) else 0
        print(f"| {'on' if on else 'off'} | {r['bcubed_fscore']:.4f} | {r['mixed_faces']} | {int(with_faces.sum())} | {biggest} | {r['n_clusters']} |")


def copies(inp: Path, embedder: str, test: tuple[np.ndarray, float, float], n: int = 120) -> None:
    """How alike copies of one non-face are (re-encoded, resized, shifted: what a video's repeated
    frames or a re-saved file give) next to how alike *distinct* held-out non-faces are: why only
    exact copies (``facecluster.nonface.COPY_SIM``) share a cluster. ``test``: the fitted (w, b,
    threshold)."""
    import io

    from PIL import Image

    from facecluster.embed import get_embedder
    from facecluster.imageio import load_image
    from facecluster.calibration import duplicate_sim
    from facecluster.nonface import COPY_SIM

    w, b, thr = test
    dup = duplicate_sim(embedder)

    def nonfaces(x):
        return x @ w + b >= thr

    recs = json.loads(inp.read_text())
    rng = np.random.default_rng(0)
    orig = [load_image(recs[i]["img_path"]) for i in rng.choice(len(recs), n, replace=False)]
    emb = get_embedder(embedder)

    def embed_all(images):
        return l2_normalize(emb.embed_batch(np.stack([emb.prepare(im) for im in images])))

    def jpeg(im, q):
        b = io.BytesIO()
        Image.fromarray(im).save(b, "JPEG", quality=q)
        return np.asarray(Image.open(io.BytesIO(b.getvalue())).convert("RGB"))

    def resized(im, f):
        return np.asarray(Image.fromarray(im).resize((max(8, int(im.shape[1] * f)), max(8, int(im.shape[0] * f))), Image.BILINEAR))

    x0 = embed_all(orig)
    flagged = nonfaces(x0)
    print(f"| copy of a held-out non-face ({int(flagged.sum())} flagged of {n}) | cosine to it: 1st / 5th / 50th percentile | >= {dup} | >= {COPY_SIM} | flagged alike |")
    print("|---|---|---|---|---|")
    for name, f in (("identical", lambda im: im), ("JPEG q90", lambda im: jpeg(im, 90)), ("JPEG q75", lambda im: jpeg(im, 75)),
                    ("JPEG q50", lambda im: jpeg(im, 50)), ("resized x0.9", lambda im: resized(im, 0.9)), ("shifted 1 px", lambda im: im[1:, 1:])):
        x = embed_all([f(im) for im in orig])
        c = (x * x0).sum(axis=1)[flagged]
        alike = (nonfaces(x) == flagged)[flagged].mean()
        p = np.percentile(c, [1, 5, 50])
        print(f"| {name} | {p[0]:.4f} / {p[1]:.4f} / {p[2]:.4f} | {(c >= dup).mean():.2f} | {(c >= COPY_SIM - 1e-6).mean():.2f} | {alike:.2f} |")


def distinct_pairs(x: np.ndarray, dup: float) -> None:
    """Pairs of distinct held-out non-faces at the near-duplicate cosines (``dup``: the embedder's)."""
    from facecluster.nonface import COPY_SIM

    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    from facecluster.graph import components

    xn = l2_normalize(np.asarray(x, np.float32))
    S = xn @ xn.T
    s = S[np.triu_indices(len(xn), 1)]
    print(f"distinct held-out non-faces: {len(s)} pairs; >= {dup}: {int((s >= dup).sum())}, >= 0.999: {int((s >= 0.999).sum())}, "
          f">= {COPY_SIM}: {int((s >= COPY_SIM).sum())}")
    # groups they would form at dup: chained (connected components) and by complete linkage
    r, c = np.nonzero(np.triu(S >= dup, 1))
    comp = components(len(xn), r, c)
    sizes = np.bincount(comp)
    n_cl, biggest = 0, 1
    for g in np.flatnonzero(sizes > 1):
        m = np.flatnonzero(comp == g)
        d = np.clip(1.0 - S[np.ix_(m, m)], 0.0, None)
        np.fill_diagonal(d, 0.0)
        f = np.bincount(fcluster(linkage(squareform(d, checks=False), "complete"), 1.0 - dup, "distance"))
        n_cl += int((f > 1).sum())
        biggest = max(biggest, int(f.max()))
    print(f"  grouped at {dup}: chained {int((sizes > 1).sum())} groups, largest {int(sizes.max())}; "
          f"complete linkage {n_cl} groups, largest {biggest}")


def other_crops(images: Path, out: Path, per_image: int = 40, seed: int = 2) -> Path:
    """Random square crops (15-60 % of the short side, resized to 64-200 px, JPEG q60-95) of every
    image in ``images``: scenes of *other* kinds than the fit's (an animal, vehicles, objects,
    textures, the sky, microscopy, a logo, printed text), none with a human face. Returns the
    input JSON (``kind``: the image's name)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    for src in sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        im = Image.open(src).convert("RGB")
        w, h = im.size
        for i in range(per_image):
            side = int(rng.uniform(0.15, 0.6) * min(w, h))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            size = int(rng.integers(64, 201))
            p = img_dir / f"{src.stem}_{i:03d}.jpg"
            im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR).save(p, quality=int(rng.integers(60, 96)))
            recs.append({"img_path": str(p), "kind": src.stem})
    inp = out / "input.json"
    inp.write_text(json.dumps(recs))
    return inp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw-originals", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="the embedded work dirs (bench/build_workdirs.py)")
    ap.add_argument("--work", type=Path, required=True, help="where the non-face crops and their work dirs go")
    ap.add_argument("--embedder", default="dlib")
    ap.add_argument("--n-photo", type=int, default=2500)
    ap.add_argument("--n-pattern", type=int, default=500)
    ap.add_argument("--face-rate", type=float, default=1e-4, help="share of training faces allowed above the threshold")
    ap.add_argument("--write", action="store_true", help="save the fitted test into the package's weights")
    ap.add_argument("--other-images", type=Path, help="a folder of photos with no human face of other kinds than the "
                    "fit's (e.g. scikit-image's skimage/data: chelsea, coffee, motorcycle_left, rocket, ...): crops of them checked too")
    a = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    parts = {}
    for part, seed in (("train", 0), ("val", 1)):
        d = a.work / f"junk-{part}"
        inp = d / "input.json" if (d / "input.json").exists() else make_crops(a.lfw_originals, d, part, a.n_photo if part == "train" else a.n_photo // 3, a.n_pattern if part == "train" else a.n_pattern // 2, seed)
        parts[part] = embed(inp, d / "wd", a.embedder)
    have = [s for s in regimes.TRAIN_SETS if (a.root / s / "features.npy").exists()]
    faces = np.concatenate([regimes.load(a.root, s, "train")[0] for s in have])
    xf = l2_normalize(np.asarray(faces, np.float32))
    xj = l2_normalize(np.asarray(parts["train"][0], np.float32))
    X = np.concatenate([xf, xj])
    y = np.r_[np.zeros(len(xf)), np.ones(len(xj))]
    clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000).fit(X, y)
    w, b = clf.coef_[0].astype(np.float32), float(clf.intercept_[0])
    sf = xf @ w + b
    thr = float(np.quantile(sf, 1 - a.face_rate))
    print(f"fit: {len(xf)} training faces ({len(have)} sets), {len(xj)} training non-faces; threshold {thr:.3f} "
          f"(training faces above it: {int((sf >= thr).sum())}; training non-faces caught: {(xj @ w + b >= thr).mean():.3f})")
    xv = l2_normalize(np.asarray(parts["val"][0], np.float32))
    kinds = np.array(parts["val"][1])
    sv = xv @ w + b
    print("\nheld-out non-faces (validation identities' photos, unseen patterns): caught / all")
    for k in sorted(set(kinds)):
        m = kinds == k
        print(f"| {k} | {int((sv[m] >= thr).sum())} / {int(m.sum())} |")
    print(f"| all | {int((sv >= thr).sum())} / {len(sv)} ({(sv >= thr).mean():.3f}) |")
    if a.other_images:
        d = a.work / "other"
        inp = d / "input.json" if (d / "input.json").exists() else other_crops(a.other_images, d)
        xo, ko = embed(inp, d / "wd", a.embedder)
        so = l2_normalize(np.asarray(xo, np.float32)) @ w + b
        ko = np.array(ko)
        print(f"\nother kinds of non-faces ({a.other_images}: crops of each image): caught / all")
        for k in sorted(set(ko)):
            m = ko == k
            print(f"| {k} | {int((so[m] >= thr).sum())} / {int(m.sum())} |")
        print(f"| all | {int((so >= thr).sum())} / {len(so)} ({(so >= thr).mean():.3f}) |")
        print("the default method on lfw-val with these crops mixed in (each its own identity)")
        mixed_in(a.root, xo, a.embedder)
    print("\nfaces flagged on the validation regimes (never fitted on)")
    for name, x, _n in regimes.validation_regimes(a.root):
        s = l2_normalize(np.asarray(x, np.float32)) @ w + b
        print(f"| {name} | {int((s >= thr).sum())} / {len(s)} |")
    if a.write:
        from facecluster.nonface import save_test

        out = save_test(a.embedder, w, b, thr, meta={
            "faces": int(len(xf)), "non_faces": int(len(xj)), "face_rate": a.face_rate, "C": 10.0,
            "held_out_caught": float((sv >= thr).mean()), "made_by": "bench/nonface.py",
        })
        print(f"\nwrote {out} (the shipped test, used below)")
    print("\ncopies of one non-face against distinct non-faces (which ones share a cluster)")
    from facecluster.calibration import duplicate_sim

    distinct_pairs(parts["val"][0], duplicate_sim(a.embedder))
    copies(a.work / "junk-val" / "input.json", a.embedder, (w, b, thr))
    print("\nthe default method on lfw-val with the held-out non-faces mixed in (each non-face its own identity)")
    mixed_in(a.root, parts["val"][0], a.embedder)


if __name__ == "__main__":
    main()
