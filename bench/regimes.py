"""The validation protocol under a shift: which embedded sets may be trained or tuned on, and
which regimes only ever validate. Shared by every quality script so numbers compare.

    python bench/regimes.py --root WORKDIRS [--variant infomap] [--variant gcn-ve] [--json out.json]

Another embedder's work dirs: ``--root WORKDIRS-mbf --embedder mbf`` (its thresholds; e.g. every set
re-embedded with ``facecluster run ... --embedder mbf``, docs/benchmarks/default_quality.md).

``WORKDIRS/<set>`` are work dirs embedded with ``facecluster run`` (default dlib embedder) from
the input JSONs of ``bench/make_input.py`` (lfw, glint18, orl from ../shared/data) and
``bench/shift_sets.py`` (the re-cropped and new-source regimes); ``bench/build_workdirs.py`` builds
them all in one resumable command. Labels: the image's folder.

Roles (identity split: ``facecluster.train.splits``, 30 % of identities held out by name hash):

* ``TRAIN_SETS``: training *and* tuning may use the training identities of these sets only.
* ``validation_regimes``: never trained on, never tuned on. Each has a cluster-size shape:

  ============================  ============================================================
  ``lfw-val``                   held-out LFW ids, shared 150-px crops, singletons included
                                (photo collection; source seen, identities not)
  ``lfw-lowq-val``              same people, whole 250 frame at 80 px, JPEG q35 (crop style
                                no training set has)
  ``lfw-loose-val21``           held-out ids with >= 5 photos, at most 21 each, loose crops
                                (photo collection of regulars, ~30 % margin)
  ``lfw-night-val``             held-out LFW ids as a night camera sees them: grey, under-exposed,
                                noisy, soft, q40-70 (work dir ``lfw-night-val``; added in the
                                thirty-second session, after every default was chosen)
  ``glint18-val``               5 held-out glint18 people, 1,650 tight crops (long video)
  ``glint-lowres-val``          same people at 48 px, JPEG q40 (low-resolution video)
  ``glint-mixed-val``           same people, each crop at 32-112 px, some blurred (a video
                                whose faces come near and go far; added with the quality rule)
  ``glint-mixed-val-far``       glint-mixed-val where the people with the fewest faces (up to
                                15 % of them) keep only their small faces (eyes under 18 px
                                apart: someone seen only from afar)
  ``lfw-mixed-val``             held-out LFW ids, per photo a random crop, size, JPEG quality,
                                blur, grey (photos from mixed sources; work dir
                                ``lfw-mixed-val`` holds only these ids)
  ``lfw-detbox-val``            held-out LFW ids, boxes of another detector: rolled up to 25
                                deg, non-square, off centre, 72-180 px (work dir
                                ``lfw-detbox-val``; added in the fifteenth session, after
                                every default was chosen)
  ``glint18-val+singletons``    glint18-val + held-out LFW one-photo people (video with
                                passers-by)
  ``glint3styles-val+singletons`` each glint18-val frame three times (tight 112 px, near/far
                                32-112 px, 48 px) + held-out LFW one-photo people: people
                                seen in several qualities at once, long-video clusters of
                                ~800-2,400 faces (added in the fifteenth session)
  ``yale``                      Extended Yale B: 38 people x ~64 greyscale shots under extreme
                                lighting (a source and crop style nothing trains on)
  ``orl``                       ORL: 40 people x 10 greyscale studio shots (another source)
  ``yale-half0`` .. ``4``       opt-in (``--regimes yale-halves``): random halves of Extended
                                Yale B, 1,207 faces each (a veto: the whole set hid a collapse
                                on its halves, twenty-fifth session)
  ``all-styles-val``            opt-in (``--regimes all-styles-val``): every set above in one
                                batch, 23,440 faces of 1,838 people, each person in every style
                                it has (a long-video person: ~2,400 faces in three)
  ``all-styles``                opt-in scale check: all-styles-val + all-styles-train in one
                                batch (86,867 faces of 5,827 people; training identities
                                included, so not a shift); ``all-styles-no-yale`` without
                                Extended Yale B (84,453 of 5,789)
  ============================  ============================================================

Report every regime and choose by the worst, counting faces in mixed clusters
(``facecluster.metrics.cluster_purity``), not only F-scores.

``--tuning`` runs the same report on the *training* identities instead (``tuning_regimes``:
each training set, plus LFW-style sets capped at 21 photos per person), the only place
settings may be chosen (issue 11 chose the similarity floor there); ``--regimes
all-styles-train`` adds (opt-in) every training set's training identities in one batch, and
``--regimes lfw-sidelight-train,lfw-sidelight-train21`` the training photos under a hard side
light (``LIGHTING_TUNING``; judged by faces in mixed clusters), and ``--regimes
lfw-night-train,lfw-night-train21`` as a night camera sees them (``NIGHT_TUNING``), and ``--regimes
lfw-lowres-train,lfw-lowres-train21`` as far, compressed faces (``LOWRES_TUNING``).

``--by-split`` also scores each partition on the faces of held-out people alone and of training
people alone (``facecluster.train.splits``): for the batches that hold both (``all-styles``,
``all-styles-no-yale``), what a change does to people no model or setting saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import load_workdir, parse_variant, run_method  # noqa: E402
from facecluster.cluster.base import SMALL_FACE_PX  # noqa: E402
from facecluster.train.splits import validation_mask  # noqa: E402

#: opt-in tuning regimes (name them in --regimes): every training photo under a hard side light
LIGHTING_SET = "lfw-sidelight"
LIGHTING_TUNING = (f"{LIGHTING_SET}-train", f"{LIGHTING_SET}-train21")
#: opt-in tuning regimes (name them in --regimes): the training photos as a night camera sees them
#: (bench/shift_sets.py lfw-night; thirty-second session), whose validation identities are the
#: validation regime lfw-night-val
NIGHT_SET = "lfw-night"
NIGHT_TUNING = (f"{NIGHT_SET}-train", f"{NIGHT_SET}-train21")
#: opt-in tuning regimes (name them in --regimes): the training photos as far, compressed faces
#: (bench/shift_sets.py lfw-lowres, 48-96 px, q20-60; thirty-third session), a family around the
#: validation regime lfw-lowq-val's one recipe, which stays untouched
LOWRES_SET = "lfw-lowres"
LOWRES_TUNING = (f"{LOWRES_SET}-train", f"{LOWRES_SET}-train21")
#: opt-in validation regimes (``--regimes yale-halves`` for all five): random halves of Extended
#: Yale B (seeds 0-4, the draws of ``bench/incremental.py``'s ``random50`` split), the veto that
#: found the default collapsing with the cohort's side-light part while the whole set did not
#: (docs/benchmarks/default_quality.md, "A side-light part of the cohort")
YALE_HALVES = tuple(f"yale-half{s}" for s in range(5))
TRAIN_SETS = ["lfw", "glint18", "lfw-tight", "lfw-loose", "lfw-greyblur", "lfw-mixed", "glint-lowres", "glint-mixed"]
SHAPES = {
    "lfw-val": "photos",
    "lfw-lowq-val": "photos",
    "lfw-loose-val21": "photos",
    "glint18-val": "video",
    "glint-lowres-val": "video",
    "glint-mixed-val": "video, mixed sizes",
    "glint-mixed-val-far": "video, mixed sizes, one person only small",
    "lfw-mixed-val": "photos, mixed sizes",
    "lfw-detbox-val": "photos, another detector's boxes",
    "lfw-night-val": "photos, a night camera",
    "glint18-val+singletons": "video+singles",
    "glint3styles-val+singletons": "video in three qualities + singles",
    "yale": "video",
    **{h: "extreme light, half" for h in YALE_HALVES},
    "orl": "small",
    "all-styles-val": "every style in one batch",
}


def _set_name(s: str) -> str:
    return "glint18" if s.startswith("glint") else "orl" if s == "orl" else "lfw"


def load(root: Path, name: str, part: str = "all", with_px: bool = False):
    """Features (N, D) and identity names (N,) of ``root/name``; ``part`` all | train | val.
    ``with_px``: also the crops' sizes (N,) (``_common.load_face_px``)."""
    x, n, _ = load_workdir(root / name)
    px = FACE_SIZE[0](root / name, len(x)) if with_px else None
    if part != "all":
        m = validation_mask(_set_name(name), n)
        keep = m if part == "val" else ~m
        x, n = x[keep], n[keep]
        px = None if px is None else px[keep]
    return (x, n, px) if with_px else (x, n)


def _far(x, n, px, share: float = 0.15, small: float = SMALL_FACE_PX):
    """The people with the fewest faces, up to ``share`` of the faces, keep only their small
    faces (``px`` under ``small``, the small-face rule's threshold): people seen only from afar
    in a video where the others also come near."""
    c = Counter(n.tolist())
    far, total = set(), 0
    for ident, k in sorted(c.items(), key=lambda kv: (kv[1], kv[0])):
        if total + k > share * len(n):
            break
        far.add(ident)
        total += k
    keep = ~np.isin(n, list(far)) | (px < small)
    return x[keep], n[keep], px[keep]


def _cap21(x, n, px):
    """People with >= 5 photos, at most 21 each (the shape of the issue's in-the-wild set)."""
    keep = np.zeros(len(n), bool)
    for ident, c in Counter(n.tolist()).items():
        if c >= 5:
            keep[np.flatnonzero(n == ident)[:21]] = True
    return x[keep], n[keep], px[keep]


def training_pool(root: Path, sets: list[str] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(set, features, names) of the training identities of every available training set."""
    return [(s, *load(root, s, "train")) for s in (sets or TRAIN_SETS) if (root / s / "features.npy").exists()]


def passers_by(x: np.ndarray, n: np.ndarray, px: np.ndarray | None = None):
    """The one-photo people of an LFW part as passers-by beside a video: their rows of (x, n, px),
    names prefixed ``lfw:`` so they never equal a video person's (px None stays None)."""
    c = Counter(n.tolist())
    s = np.array([c[v] == 1 for v in n], bool)
    return x[s], np.char.add("lfw:", n[s]), None if px is None else px[s]


def validation_regimes(root: Path, only: list[str] | None = None, with_px: bool = False) -> list[tuple]:
    """(regime, features, names) for every validation regime whose work dir exists; with
    ``with_px`` also the crops' sizes: (regime, features, names, face_px)."""
    out = []
    if only is not None and "yale-halves" in only:
        only = [*only, *YALE_HALVES]

    def have(s: str) -> bool:
        return (root / s / "features.npy").exists()

    def add(name, fn):
        if only is None or name in only:
            r = fn()
            out.append((name, *(r if with_px else r[:2])))

    def ld(set_name, part="all"):
        return load(root, set_name, part, with_px=True)

    if have("lfw"):
        add("lfw-val", lambda: ld("lfw", "val"))
    if have("lfw-lowq"):
        add("lfw-lowq-val", lambda: ld("lfw-lowq", "val"))
    if have("lfw-loose"):
        add("lfw-loose-val21", lambda: _cap21(*ld("lfw-loose", "val")))
    if have("lfw-mixed-val"):  # the validation identities' lfw-mixed crops (their own work dir)
        add("lfw-mixed-val", lambda: ld("lfw-mixed-val"))
    if have("lfw-detbox-val"):  # the validation identities' lfw-detbox crops (their own work dir)
        add("lfw-detbox-val", lambda: ld("lfw-detbox-val"))
    if have("lfw-night-val"):  # the validation identities' lfw-night crops (their own work dir)
        add("lfw-night-val", lambda: ld("lfw-night-val"))
    if have("glint18"):
        add("glint18-val", lambda: ld("glint18", "val"))
    if have("glint-lowres"):
        add("glint-lowres-val", lambda: ld("glint-lowres", "val"))
    if have("glint-mixed"):
        add("glint-mixed-val", lambda: ld("glint-mixed", "val"))
        add("glint-mixed-val-far", lambda: _far(*ld("glint-mixed", "val")))
    if have("glint18") and have("lfw"):

        def with_singles(sets=("glint18",)):
            parts = [ld(s, "val") for s in sets] + [passers_by(*ld("lfw", "val"))]
            return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))

        add("glint18-val+singletons", with_singles)
        if have("glint-mixed") and have("glint-lowres"):
            add("glint3styles-val+singletons", lambda: with_singles(("glint18", "glint-mixed", "glint-lowres")))
    if have("yale"):
        add("yale", lambda: ld("yale"))
        if only is not None:  # opt-in (--regimes yale-halves or one of them)
            from incremental import splits

            def half(seed):
                x, n, px = ld("yale")
                a = splits(n, "random50", seed)[0]
                return x[a], n[a], px[a]

            for seed, name in enumerate(YALE_HALVES):
                add(name, lambda seed=seed: half(seed))
    if have("orl"):
        add("orl", lambda: ld("orl"))
    parts = [("lfw", "val"), ("lfw-lowq", "val"), ("lfw-mixed-val", "all"), ("lfw-loose", "val"),
             ("glint18", "val"), ("glint-lowres", "val"), ("glint-mixed", "val"), ("yale", "all"), ("orl", "all")]
    if only is not None and ALL_STYLES_VAL in only:  # opt-in: 23k faces, slow for the learned methods
        add(ALL_STYLES_VAL, lambda: _all_styles(root, parts))
    for name in (ALL_STYLES, ALL_STYLES_NO_YALE):
        if only is not None and name in only:  # opt-in: 87k faces, the largest real batch here
            def both(name=name):
                sets = [(s, "train") for s in TRAIN_SETS] + parts
                return _all_styles(root, [p for p in sets if not (name == ALL_STYLES_NO_YALE and p[0] == "yale")])
            add(name, both)
    return out


#: opt-in regimes (``--regimes NAME``): every crop style of the same people in one batch, the
#: largest real labelled batches that can be made here (a person appears in up to 5 styles, a
#: long-video person with ~800 frames in three, so ~2,400 faces)
ALL_STYLES_VAL = "all-styles-val"
ALL_STYLES_TRAIN = "all-styles-train"
#: opt-in scale regimes: all-styles-train + all-styles-val in one batch (86,867 faces of 5,827
#: people; without Extended Yale B 84,453 of 5,789), purity at the size of a large job on real
#: faces. It holds the training identities: a check of scale, not of a shift (the cohort leaves
#: each face's own person out, bench/_common.cohort_leave_own_out).
ALL_STYLES = "all-styles"
ALL_STYLES_NO_YALE = "all-styles-no-yale"


def _all_styles(root: Path, parts: list[tuple[str, str]]):
    """One batch of ``(set, part)`` work dirs; a person keeps one name across styles (glint18's
    people are LFW people under the same folder names); yale's and ORL's get a prefix."""
    xs, ns, ps = [], [], []
    for s, part in parts:
        if not (root / s / "features.npy").exists():
            continue
        x, n, px = load(root, s, part, with_px=True)
        if s in ("yale", "orl"):
            n = np.char.add(f"{s}:", n.astype(str))
        xs.append(x)
        ns.append(n)
        ps.append(px)
    return np.concatenate(xs), np.concatenate(ns), np.concatenate(ps)


def tuning_regimes(root: Path, only: list[str] | None = None, with_px: bool = False) -> list[tuple]:
    """(regime, features, names) on the *training* identities, for choosing settings (issue 11):
    each available training set on its own (``<set>-train``), and for the LFW-style sets also
    the people with >= 5 photos capped at 21 each (``<set>-train21``, the shape of the issue's
    in-the-wild set). Everything here may be tuned on; the validation regimes stay untouched."""
    out = []
    # opt-in (named in ``only``): the lighting regime of training identities (bench/shift_sets.py
    # lfw-sidelight), a check for anything that moves the cohort or the thresholds (its BCubed F
    # is bounded by dlib's recall under that light: judge it by faces in mixed clusters;
    # docs/benchmarks/default_quality.md, "A side-light part of the cohort")
    # and the night-camera regime of training identities (lfw-night, thirty-second session) and
    # the far, compressed one (lfw-lowres, thirty-third session)
    for s in TRAIN_SETS + ([LIGHTING_SET, NIGHT_SET, LOWRES_SET] if only is not None else []):
        if not (root / s / "features.npy").exists():
            continue
        for name in (f"{s}-train", f"{s}-train21", f"{s}-train-far"):
            if name.endswith("21") and s.startswith("glint"):
                continue
            if name.endswith("-far") and s != "glint-mixed":
                continue
            if only is not None and name not in only:
                continue
            x, n, px = load(root, s, "train", with_px=True)
            if name.endswith("21"):
                x, n, px = _cap21(x, n, px)
            elif name.endswith("-far"):
                x, n, px = _far(x, n, px)
            out.append((name, x, n, px) if with_px else (name, x, n))
    if only is not None and ALL_STYLES_TRAIN in only:  # opt-in: 64k faces
        x, n, px = _all_styles(root, [(s, "train") for s in TRAIN_SETS])
        out.append((ALL_STYLES_TRAIN, x, n, px) if with_px else (ALL_STYLES_TRAIN, x, n))
    return out


#: the face-size signal the regimes pass as face_px: what the pipeline records (the inter-ocular
#: distance from the dlib alignment) or, with --face-size crop, the crops' shorter side
FACE_SIZE = [_common.load_face_px]

SIZE_BINS = [0, 12, 16, 18, 20, 24, 32, 100000]


def precision_by_size(names: np.ndarray, labels: np.ndarray, px: np.ndarray) -> list[dict]:
    """Mean per-face BCubed precision (share of the face's cluster that is its person) by crop
    size ``px`` (the bins of ``SIZE_BINS``): which faces end up in other people's clusters."""
    y = np.unique(names, return_inverse=True)[1]
    pair = labels.astype(np.int64) * (y.max() + 1) + y
    _, inv, cnt = np.unique(pair, return_inverse=True, return_counts=True)
    prec = cnt[inv] / np.bincount(np.unique(labels, return_inverse=True)[1])[np.unique(labels, return_inverse=True)[1]]
    out = []
    for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:]):
        m = (px >= lo) & (px < hi)
        if m.any():
            out.append({"px": f"{lo}-{hi if hi < 100000 else ''}", "faces": int(m.sum()), "precision": float(prec[m].mean())})
    return out


def by_split(names: np.ndarray, labels: np.ndarray) -> dict:
    """BCubed / pairwise scores of one partition restricted to the faces of held-out people and
    to those of training people (each part's clusters are the partition's, cut to that part)."""
    from facecluster.metrics import evaluate

    held = validation_mask("lfw", names)  # the split depends on the identity name only
    out = {}
    for part, m in (("held_out", held), ("training", ~held)):
        if m.any():
            e = evaluate(names[m], labels[m])
            out[part] = {"faces": int(m.sum()), **{k: float(e[k]) for k in ("bcubed_fscore", "bcubed_precision", "bcubed_recall", "pairwise_fscore")}}
    return out


def neighbour_purity(x: np.ndarray, names: np.ndarray, k: int = 5) -> dict:
    """How far the embedder alone separates a regime's people, before any clustering: the share
    of faces with another photo of their person in the batch whose nearest other face (plain
    cosine) is that person's, and the share of faces of people with more than ``k - 2`` photos
    whose ``k`` nearest other faces are mostly their person's. A face whose nearest faces are
    strangers' is either left out of its person's cluster or linked wrongly by any method that
    reads these similarities."""
    from facecluster.knn import knn, l2_normalize

    y = np.unique(np.asarray(names), return_inverse=True)[1]
    n = len(y)
    if n < 2:
        return {"faces_with_mate": 0, "nn1_same": float("nan"), f"nn{k}_majority_same": float("nan")}
    _, ids = knn(l2_normalize(np.asarray(x, np.float32)), min(k + 1, n), normalize=False)
    # drop each face itself wherever it sits in its list (exact duplicates can tie ahead of it)
    own = ids == np.arange(n)[:, None]
    own[~own.any(1), -1] = True  # self pushed out by k twins: drop the last instead
    nn = ids[~own].reshape(n, -1)
    cnt = np.bincount(y)
    mate, many = cnt[y] > 1, cnt[y] > k - 2
    same = y[nn] == y[:, None]
    return {
        "faces_with_mate": int(mate.sum()),
        "nn1_same": float(same[mate, 0].mean()) if mate.any() else float("nan"),
        f"nn{k}_majority_same": float((same[many].sum(1) > nn.shape[1] / 2).mean()) if many.any() else float("nan"),
    }


def format_row(regime: str, r: dict) -> str:
    return (
        f"{regime:24s} {r['n']:6d} {r['n_gt_clusters']:5d}  BCubedF {r['bcubed_fscore']:.4f} "
        f"(P {r['bcubed_precision']:.3f} R {r['bcubed_recall']:.3f})  pairF {r['pairwise_fscore']:.4f}  "
        f"largest {r['largest_cluster']:5d}/{r['largest_cluster_ids']:3d}ids  mixed {r['mixed_faces']:5d} "
        f"({100 * r['mixed_faces'] / r['n']:.1f}%)  clusters {r['n_clusters']:5d}  {r['seconds']:.1f}s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="folder of embedded work dirs, one per set")
    ap.add_argument("--variant", action="append", help="METHOD[:key=value,...]; repeatable (default: infomap); "
                    "a dict setting's key as refine_settings.attach_share=0.8")
    ap.add_argument("--regimes", help="comma-separated subset")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--embedder", default="dlib", help="the embedder that made ROOT's features: its thresholds are used (dlib, mbf)")
    ap.add_argument("--tuning", action="store_true", help="the training identities' regimes (tuning_regimes) instead of the validation ones")
    ap.add_argument("--by-size", action="store_true", help="also print each regime's mean per-face BCubed precision by crop size (face_px)")
    ap.add_argument("--by-split", action="store_true", help="also score each partition on the held-out people's faces alone "
                    "and on the training people's alone (batches holding both: all-styles, all-styles-no-yale)")
    ap.add_argument("--neighbours", action="store_true", help="first print each regime's neighbour purity (neighbour_purity: "
                    "how often a face's nearest other faces are its own person's; no clustering) and exit unless --variant is given")
    ap.add_argument("--face-size", choices=["pipeline", "crop"], default="pipeline",
                    help="face_px passed to the methods: what the pipeline records (inter-ocular distance from the dlib alignment, "
                    "_common.load_face_px) or the crop's shorter side (_common.load_crop_side; a study: set small_face_px on that scale)")
    a = ap.parse_args()
    if a.face_size == "crop":
        FACE_SIZE[0] = _common.load_crop_side
    pick = tuning_regimes if a.tuning else validation_regimes
    regs = pick(a.root, a.regimes.split(",") if a.regimes else None, with_px=True)
    if a.neighbours:
        print(f"{'regime':28s} {'faces':>6s} {'with a mate':>11s} {'nearest is own':>14s} {'5 nearest mostly own':>20s}")
        for name, x, n, _ in regs:
            d = neighbour_purity(x, n)
            print(f"{name:28s} {len(n):6d} {d['faces_with_mate']:11d} {d['nn1_same']:14.3f} {d['nn5_majority_same']:20.3f}", flush=True)
        if not a.variant:
            return
    # adanets variants: AND runs once per regime (only then: the memo imports Ada-NETS and torch)
    ada = any(parse_variant(v)[0] == "adanets" for v in a.variant or [])
    with _common.memo_and_predictions() if ada else nullcontext():
        rows = _run(a, regs)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))


def _run(a: argparse.Namespace, regs) -> list[dict]:
    """Every variant on every regime: the printed lines and the rows of ``--json``."""
    rows: list[dict] = []
    for v in a.variant or ["infomap"]:
        method, settings = parse_variant(v)
        print(f"== {v}")
        worst = None
        for name, x, n, px in regs:
            got: list = []
            r = run_method(method, x, n, a.embedder, face_px=px, labels_out=got, **settings)
            r.update(regime=name, shape=SHAPES.get(name, "tuning"), variant=v)
            rows.append(r)
            print(format_row(name, r), flush=True)
            if a.by_split:
                r["by_split"] = by_split(np.asarray(n), np.asarray(got[0]))
                print("   " + "; ".join(f"{part} ({d['faces']} faces): BCubedF {d['bcubed_fscore']:.4f} (P {d['bcubed_precision']:.3f} "
                                        f"R {d['bcubed_recall']:.3f}) pairF {d['pairwise_fscore']:.4f}" for part, d in r["by_split"].items()), flush=True)
            if a.by_size:
                r["precision_by_size"] = precision_by_size(n, got[0], px)
                print("   precision by crop size: " + "; ".join(
                    f"{b['px']} px {b['faces']} faces {b['precision']:.3f}" for b in r["precision_by_size"]), flush=True)
            if worst is None or r["bcubed_fscore"] < worst["bcubed_fscore"]:
                worst = r
        if worst:
            print(f"   worst: {worst['regime']} {worst['bcubed_fscore']:.4f}; max mixed {max(r['mixed_faces'] / r['n'] for r in rows if r['variant'] == v):.1%}")
    return rows


if __name__ == "__main__":
    main()
