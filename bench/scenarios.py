"""Tuning scenarios of several shapes, built from the training identities of
``bench/regimes.TRAIN_SETS`` only (the validation regimes of ``bench/regimes.py`` stay untouched).

    python bench/scenarios.py --root WORKDIRS [--variant infomap] [--variant chinese-whispers] \
        [--variant "infomap:attach_max_size=0"] [--json out.json]
    python bench/scenarios.py --root WORKDIRS --fragments video6/glint18/s0,glint-lowres-val [--variant ...]

``WORKDIRS/<set>`` are work dirs embedded with the dlib embedder (see ``bench/regimes.py``).
Shapes (each the training identities of a set; labels = image folder):

=========================  ================================================================
``video/glint18``          all glint18 training people (12 people, 22-768 tight crops each;
                           the mislabeled folder ``MISLABELED`` left out)
``video6/glint18/sN``      6 people with >= 250 faces, 250-730 of each (like the long-video
                           set of issue 13), three draws
``video/glint-lowres``     glint18 training people at 48 px, JPEG q40
``video+singles``          glint18 training people + LFW training one-photo people
``video+singles/<glint>``  the same at 48 px (glint-lowres) and at 32-112 px (glint-mixed):
                           passers-by beside a low-resolution or near/far video (fifteenth session)
``video3styles+singles/sN`` 2 glint18 training people with >= 250 faces, each frame three
                           times (tight 112 px, near/far 32-112 px, 48 px) + LFW training
                           one-photo people: a person seen in several qualities at once, whom
                           Infomap may cut into several big pieces (fifteenth session), 3 draws
``video-small/glint18``    20 draws of 3-7 people, 5-40 % of each one's faces (short clips)
``video-1p/glint-lowres``  each glint-lowres training person with >= 50 frames alone (a 48-px
                           clip of one person; seventeenth session)
``video-2p/glint-lowres``  20 pairs of them (a 48-px interview); ``--heldout`` builds both
                           shapes from the glint-lowres validation people instead (report only)
``video-1c/glint-clips``   each glint-clips training clip of >= 50 frames alone (one person at one
                           of 36-64 px, q30-70, blur or not per clip; nineteenth session)
``video-2c/glint-clips``   20 pairs of clips of two different people (an interview)
``video-1p/glint-clips``   each training person's clips together, alone (a vlog over several
                           scenes: one person at several low resolutions); ``--heldout``
                           builds these from the validation people instead (report only)
``video-all/glint-clips``  every training person's clips in one batch (a many-person
                           low-resolution video; thirty-third session)
``video-crowd/glint-clips`` 5 draws of one clip per training person, all together (a crowd,
                           each person seen once at its own distance; thirty-third session)
``video-crowd+singles/glint-clips`` the same crowds among the LFW training one-photo people as
                           far, compressed faces (work dir ``lfw-lowres``, if built): each clip
                           1-5 % of the batch (a busy street; thirty-third session)
``photos/<lfw set>``       every training identity, singletons included (lfw, lfw-tight,
                           lfw-greyblur: shared 150-px crops, tight 112-px, grey + blur)
``photos-small/lfw-mixed`` the lfw-mixed training crops whose eyes are < 20 px apart (1,653 small,
                           compressed photos, singletons included; nineteenth session)
``photos21/<lfw set>``     training people with >= 5 photos, at most 21 each (a photo
                           collection of regulars, like the 299-person set of issue 13), for
                           lfw, lfw-loose (~35 % margin) and lfw-mixed (random crop per image)
=========================  ================================================================

Prints BCubed F (pairwise F) per scenario and variant, and each variant's worst scenario. The
scenarios added in the fifteenth session pass each face's size (``face_px``) to the methods, as
the pipeline and ``bench/regimes.py`` do; the older ones do not (their numbers in the docs were
measured so).
``--seeds 42,1,2,3,4`` clusters every draw once per Infomap seed (mean and [worst] over draws and
seeds): how a setting holds across seeds (twenty-sixth session; docs/benchmarks/default_quality.md,
"Seed stability").
``bench/tune_infomap.py --root`` grid-searches the default's settings on the same scenarios.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
from facecluster.train.splits import validation_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import evaluate, load_workdir, parse_variant, run_method  # noqa: E402
from regimes import load, passers_by  # noqa: E402


#: glint18 folders whose label is known to be wrong: ``Gwyneth_Paltrow`` holds 625 photos of
#: Blythe Danner, her mother (docs/benchmarks.md §1); a method that keeps the two apart is right
#: and would be scored as splitting one person, so the video scenarios leave the folder out.
MISLABELED = {"Gwyneth_Paltrow"}


def _per_id_cap(names: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mask: people with >= ``lo`` faces, their first ``hi`` faces (file order)."""
    keep = np.zeros(len(names), bool)
    for ident, c in Counter(names.tolist()).items():
        if c >= lo:
            keep[np.flatnonzero(names == ident)[:hi]] = True
    return keep


def _drop_mislabeled(x: np.ndarray, n: np.ndarray, px: np.ndarray):
    """(x, n, px) without the rows of :data:`MISLABELED` folders."""
    ok = ~np.isin(n, list(MISLABELED))
    return x[ok], n[ok], px[ok]


def few_people(x: np.ndarray, n: np.ndarray, px: np.ndarray, tag: str) -> list:
    """``video-1p/<tag>``: each person with >= 50 faces alone; ``video-2p/<tag>``: 20 pairs of
    them (all pairs when fewer), face sizes passed on."""
    people = sorted(q for q, c in Counter(n.tolist()).items() if c >= 50)
    pairs = list(combinations(people, 2))
    pick = sorted(np.random.default_rng(0).choice(len(pairs), min(20, len(pairs)), replace=False))
    return [
        (f"video-1p/{tag}", [(x[n == q], n[n == q], px[n == q]) for q in people]),
        (f"video-2p/{tag}", [tuple(a[np.isin(n, pairs[i])] for a in (x, n, px)) for i in pick]),
    ]


def load_clips(root: Path, part: str):
    """(features, names, face sizes, clip ids) of ``root/glint-clips``'s ``part`` identities, the
    mislabeled folder left out (clip id: the record's ``clip`` field, ``bench/shift_sets.py``)."""
    x, n, p = load(root, "glint-clips", "all", with_px=True)
    clip = load_workdir(root / "glint-clips", labels="field:clip")[1]
    m = validation_mask("glint18", n)
    keep = (m if part == "val" else ~m) & ~np.isin(n, list(MISLABELED))
    return x[keep], n[keep], p[keep], clip[keep]


def clip_scenarios(x: np.ndarray, n: np.ndarray, px: np.ndarray, clip: np.ndarray, tag: str) -> list:
    """``video-1c/<tag>``: each clip of >= 50 frames alone; ``video-2c/<tag>``: 20 pairs of such
    clips of two different people; ``video-1p/<tag>``: each person's clips together, alone;
    ``video-all/<tag>``: every clip of every person in one batch (a many-person low-resolution
    video); ``video-crowd/<tag>``: 5 draws of one clip of >= 50 frames per person, every person
    together (a crowd, each seen once at its own distance; thirty-third session)."""
    clips = sorted(c for c, k in Counter(clip.tolist()).items() if k >= 50)
    person = {c: n[clip == c][0] for c in clips}
    pairs = [(a, b) for a, b in combinations(clips, 2) if person[a] != person[b]]
    pick = sorted(np.random.default_rng(0).choice(len(pairs), min(20, len(pairs)), replace=False)) if pairs else []
    part = lambda m: (x[m], n[m], px[m])  # noqa: E731
    return [
        (f"video-1c/{tag}", [part(clip == c) for c in clips]),
        (f"video-2c/{tag}", [part(np.isin(clip, pairs[i])) for i in pick]),
        (f"video-1p/{tag}", [part(n == q) for q in sorted(set(n.tolist()))]),
        (f"video-all/{tag}", [part(np.ones(len(n), bool))]),
        (f"video-crowd/{tag}", [part(np.isin(clip, crowd)) for crowd in _crowds(clips, person)]),
    ]


def _crowds(clips: list, person: dict, draws: int = 5) -> list[list]:
    """``draws`` lists of one clip per person (seeded draws, one per seed 0..draws-1)."""
    by_person: dict = {}
    for c in clips:
        by_person.setdefault(person[c], []).append(c)
    out = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        out.append([mine[int(rng.integers(len(mine)))] for _, mine in sorted(by_person.items())])
    return out


def training_scenarios(root: Path) -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """(name, [(features (N, D), identity names (N,)[, face sizes (N,)]), ...]): one entry per draw
    (the scenarios added in the fifteenth session carry the face sizes)."""
    have = {s: (root / s / "features.npy").exists() for s in ("glint18", "glint-lowres", "glint-mixed", "lfw", "lfw-tight", "lfw-loose", "lfw-greyblur", "lfw-mixed")}
    out = []
    if have["glint18"]:
        gf, gn, gp = _drop_mislabeled(*load(root, "glint18", "train", with_px=True))
        out.append(("video/glint18", [(gf, gn)]))
        counts = Counter(gn.tolist())
        big = sorted(p for p, c in counts.items() if c >= 250)
        draws = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            sel = []
            for p in rng.choice(big, min(6, len(big)), replace=False):
                idx = np.flatnonzero(gn == p)
                sel.append(np.sort(rng.choice(idx, min(len(idx), int(rng.integers(250, 731))), replace=False)))
            sel = np.concatenate(sel)
            draws.append((gf[sel], gn[sel]))
        for seed, d in enumerate(draws):
            out.append((f"video6/glint18/s{seed}", [d]))
        rng = np.random.default_rng(123)
        people, small = np.unique(gn), []
        for _ in range(20):
            frac = rng.uniform(0.05, 0.4)
            sel = np.concatenate([
                rng.choice(np.flatnonzero(gn == p), max(2, int(frac * (gn == p).sum())), replace=False)
                for p in rng.choice(people, rng.integers(3, 8), replace=False)
            ])
            small.append((gf[sel], gn[sel]))
        out.append(("video-small/glint18", small))
        if have["lfw"]:
            lf, ln, lp = passers_by(*load(root, "lfw", "train", with_px=True))
            out.append(("video+singles", [(np.concatenate([gf, lf]), np.concatenate([gn, ln]))]))
            if have["glint-lowres"] and have["glint-mixed"]:
                # the same passers-by beside the video in other qualities (face sizes passed on)
                styles = [(gf, gn, gp)] + [_drop_mislabeled(*load(root, st, "train", with_px=True)) for st in ("glint-mixed", "glint-lowres")]
                for st, (x, n, p) in (("glint-lowres", styles[2]), ("glint-mixed", styles[1])):
                    out.append((f"video+singles/{st}", [(np.concatenate([x, lf]), np.concatenate([n, ln]), np.concatenate([p, lp]))]))
                order = np.random.default_rng(7).permutation(big)
                for seed in range(min(3, len(order) // 2)):
                    pick = order[2 * seed : 2 * seed + 2]  # three disjoint pairs
                    parts = [tuple(a[np.isin(n, pick)] for a in (x, n, p)) for x, n, p in styles] + [(lf, ln, lp)]
                    out.append((f"video3styles+singles/s{seed}", [tuple(np.concatenate([q[i] for q in parts]) for i in range(3))]))
    if have["glint-lowres"]:
        x, n, p = _drop_mislabeled(*load(root, "glint-lowres", "train", with_px=True))
        out.append(("video/glint-lowres", [(x, n)]))  # measured without face sizes (older scenario)
        # a low-resolution clip of one or two people (an interview, a vlog): the default splits
        # one person far more when nobody else is in the batch (seventeenth session)
        out.extend(few_people(x, n, p, "glint-lowres"))
    if (root / "glint-clips" / "features.npy").exists():
        clip_shapes = clip_scenarios(*load_clips(root, "train"), "glint-clips")
        out.extend(clip_shapes)
        if (root / "lfw-lowres" / "features.npy").exists():
            # the crowd among far, compressed one-photo passers-by (the lfw-lowres study set): each
            # tracked person's clip is then 1-5 % of the batch, as in a busy street's video
            lf, ln, lp = passers_by(*load(root, "lfw-lowres", "train", with_px=True))
            crowd = dict(clip_shapes)["video-crowd/glint-clips"]
            out.append(("video-crowd+singles/glint-clips",
                        [(np.concatenate([x, lf]), np.concatenate([n, ln]), np.concatenate([p, lp])) for x, n, p in crowd]))
    for s in ("lfw", "lfw-tight", "lfw-greyblur"):
        if have[s]:
            out.append((f"photos/{s}", [load(root, s, "train")]))
    if have["lfw-mixed"]:
        # a collection of small, compressed photos (the training people's lfw-mixed crops with
        # eyes < 20 px apart): where a rule for a low-resolution video must not chain people
        x, n, p = load(root, "lfw-mixed", "train", with_px=True)
        out.append(("photos-small/lfw-mixed", [(x[p < 20], n[p < 20], p[p < 20])]))
    for s in ("lfw", "lfw-loose", "lfw-mixed"):
        if have[s]:
            x, n = load(root, s, "train")
            keep = _per_id_cap(n, 5, 21)
            out.append((f"photos21/{s}", [(x[keep], n[keep])]))
    return out


def fragment_report(name: str, x: np.ndarray, names: np.ndarray, method: str, settings: dict, top: int = 10) -> None:
    """Where the error sits: fragments of each size, and their links to their person's cluster.

    A *fragment* is a cluster of <= 30 faces that is not the cluster holding most of its majority
    identity's faces (that one is the identity's *home*). For each fragment: the share of its
    members' ``top`` neighbour slots that lie in the home cluster, the median similarity of those
    links, and the home cluster's own internal kNN-edge similarities (10th percentile), as
    :func:`facecluster.graph.attach_relative` compares them.
    """
    from facecluster.calibration import calibration_mean, prepare_features
    from facecluster.cluster import get_clusterer
    from facecluster.knn import knn

    c = get_clusterer(method, device="cpu", embedder="dlib", **settings)
    xx = x if getattr(c, "wants_raw_features", False) else prepare_features(x, calibration_mean("dlib"))
    lab = np.unique(c.fit_predict(xx), return_inverse=True)[1]
    s, i = knn(xx, 80, device="cpu")
    y = np.unique(names, return_inverse=True)[1]
    n = len(y)
    real = i != np.arange(n)[:, None]
    take = real & (np.cumsum(real, 1) <= top)
    rows, cols, w = np.nonzero(take)[0], i[take], s[take]
    sizes = np.bincount(lab)
    # home cluster of every identity: the one holding most of its faces
    pair = np.unique(y * (lab.max() + 1) + lab, return_counts=True)
    py, pl = np.divmod(pair[0], lab.max() + 1)
    order = np.lexsort((-pair[1], py))
    first = np.r_[True, py[order][1:] != py[order][:-1]]
    home = np.zeros(y.max() + 1, np.int64)
    home[py[order][first]] = pl[order][first]
    inner = lab[rows] == lab[cols]
    ref = np.full(sizes.size, np.nan)
    for cl in np.unique(lab[rows[inner]]):
        ref[cl] = np.percentile(w[inner][lab[rows[inner]] == cl], 10)
    recs = []
    for cl in np.flatnonzero(sizes <= 30):
        mem = np.flatnonzero(lab == cl)
        maj = np.bincount(y[mem]).argmax()
        h = home[maj]
        if h == cl:
            continue
        sel = np.isin(rows, mem) & (lab[cols] == h)
        link = np.median(w[sel]) if sel.any() else np.nan
        recs.append((sizes[cl], sel.sum() / (len(mem) * top), link, ref[h]))
    r = np.array(recs, float).reshape(-1, 4)
    print(f"== {name}: {n} faces, {y.max() + 1} people, {sizes.size} clusters")
    for lo, hi in ((1, 1), (2, 3), (4, 10), (11, 30)):
        m = (r[:, 0] >= lo) & (r[:, 0] <= hi)
        print(f"  fragments of {lo}-{hi} faces: {int(m.sum())} holding {int(r[m, 0].sum())} faces")
    big = sum(1 for cl in np.flatnonzero(sizes > 30) if home[np.bincount(y[lab == cl]).argmax()] != cl)
    print(f"  fragments > 30 faces: {big}")
    # what each size class costs: BCubed F if its fragments (any size) joined their majority's home
    maj_of = np.array([np.bincount(y[lab == cl]).argmax() for cl in range(sizes.size)])
    frag = home[maj_of] != np.arange(sizes.size)
    gains = []
    for lo, hi in ((1, 1), (2, 4), (5, n), (1, n)):
        to = np.where(frag & (sizes >= lo) & (sizes <= hi), home[maj_of], np.arange(sizes.size))
        gains.append(f"{lo}-{hi if hi < n else 'any'} {evaluate(y, to[lab])['bcubed_fscore']:.4f}")
    print(f"  BCubed F now {evaluate(y, lab)['bcubed_fscore']:.4f}; with the fragments of these sizes joined home: " + ", ".join(gains))
    ok = ~np.isnan(r[:, 2])
    if ok.any():
        q = lambda v: " ".join(f"{np.percentile(v, p):.3f}" for p in (10, 25, 50, 75, 90))  # noqa: E731
        print(f"  (p10 p25 p50 p75 p90 over {int(ok.sum())} fragments with a link into their home cluster)")
        print(f"  share of slots into home       {q(r[:, 1])}")
        print(f"  median link similarity         {q(r[ok, 2])}")
        print(f"  home's internal edges, p10     {q(r[ok, 3])}")
        print(f"  link - home p10                {q(r[ok, 2] - r[ok, 3])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="folder of embedded work dirs, one per set")
    ap.add_argument("--variant", action="append", help="METHOD[:key=value,...]; repeatable (default: infomap)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", help="comma-separated scenario names: run just these")
    ap.add_argument("--heldout", action="store_true", help="report only: the video-1p / video-2p / video-1c / video-2c "
                    "shapes built from the glint-lowres and glint-clips *validation* people (never tune on these)")
    ap.add_argument("--embedder", default="dlib", help="the embedder that made ROOT's features: its thresholds are used (dlib, mbf)")
    ap.add_argument("--fragments", help="comma-separated scenarios and/or validation regimes: print where the "
                    "first variant's fragments are (sizes, link similarity vs the home cluster's own) and exit")
    ap.add_argument("--seeds", help="comma-separated Infomap seeds (e.g. 42,1,2,3,4): every draw is clustered once per "
                    "seed and the cells give the mean and [worst] over draws and seeds, so a setting is judged by how "
                    "it holds across seeds, not by one seed's luck (low-resolution clips flip with the seed alone)")
    a = ap.parse_args()
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [None]
    variants = a.variant or ["infomap"]
    if a.fragments:
        from regimes import validation_regimes

        want = a.fragments.split(",")
        method, settings = parse_variant(variants[0])
        for name, draws in training_scenarios(a.root):
            if name in want:
                fragment_report(name, *draws[0][:2], method, settings)
        for name, x, n in validation_regimes(a.root, want):
            fragment_report(name, x, n, method, settings)
        return
    rows = []
    worst = {v: (None, 2.0) for v in variants}
    print(f"{'scenario':24s} {'faces':>6s} {'ids':>5s}  " + "  ".join(f"{v[:40]:>40s}" for v in variants))
    if a.heldout:
        scenarios = few_people(*load(a.root, "glint-lowres", "val", with_px=True), "glint-lowres-val")
        if (a.root / "glint-clips" / "features.npy").exists():
            scenarios += clip_scenarios(*load_clips(a.root, "val"), "glint-clips-val")
    else:
        scenarios = training_scenarios(a.root)
    for name, draws in scenarios:
        if a.only and name not in a.only.split(","):
            continue
        cells = []
        for v in variants:
            method, settings = parse_variant(v)
            res = []
            for d in draws:
                f, n = d[0], d[1]
                for seed in seeds:
                    kw = settings if seed is None else {**settings, "seed": seed}
                    r = run_method(method, f, n, a.embedder, face_px=d[2] if len(d) > 2 else None, **kw)
                    r.update(scenario=name, variant=v, seed=seed)
                    res.append(r)
            rows.extend(res)
            fb, fp = (np.array([r[k] for r in res]) for k in ("bcubed_fscore", "pairwise_fscore"))
            mixed = sum(r["mixed_faces"] for r in res) // len(seeds)  # per pass over the draws
            if fb.min() < worst[v][1]:
                worst[v] = (name, fb.min())
            lo = f" [{fb.min():.3f}]" if len(res) > 1 else ""
            cells.append(f"{fb.mean():.4f}{lo} ({fp.mean():.3f}) mix {mixed}")
        faces = int(np.mean([len(d[1]) for d in draws]))
        ids = int(np.mean([len(set(d[1].tolist())) for d in draws]))
        print(f"{name:24s} {faces:6d} {ids:5d}  " + "  ".join(f"{c:>40s}" for c in cells), flush=True)
    for v, (name, f) in worst.items():
        print(f"worst of {v}: {name} {f:.4f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
