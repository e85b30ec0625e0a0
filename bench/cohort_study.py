"""Studies of the cohort normalisation (docs/benchmarks/default_quality.md, "Cohort normalisation").

``separation``: how well cohort-normalised similarities separate people, before any
clustering: the form of the normalisation and the level's k. For each tuning regime of ``bench/regimes.py`` (training identities only), every face's 20
nearest neighbours give same-person and different-person edges; each variant rescores them and
the threshold that keeps 90 % of the same-person edges is set; printed: how many
different-person edges pass it (fewer is better). Each face's own person is left out of its
cohort neighbours, as for a user's faces (the shipped cohort holds the training identities).

Variants: ``raw`` (the cosine), ``mean-K`` (what ``facecluster.cohort`` does with k = K:
s - (l_i + l_j) / 2, l = mean cosine to the K most similar cohort faces), ``asnorm-K`` (adaptive
S-norm: ((s - mu_i) / sd_i + (s - mu_j) / sd_j) / 2 over the K most similar cohort faces),
``mean-10xA`` (s - A (l_i + l_j) / 2); with ``--half`` also ``styles-K`` (a cohort of one face per
person per crop style, level over K).

    python bench/cohort_study.py separation --root /work/extdata/work [--k 3,5,10,20,50,200] [--asnorm 10,50]
    python bench/cohort_study.py separation --root /work/extdata/work --half --k 10,30 --asnorm '' --alpha 0.5,1.25,1.5,2

``halfsplit``: the default (Infomap) scored honestly on the tuning regimes. The shipped cohort
holds every training identity, so on the tuning regimes a face's *look-alikes* (other training
people) are in it, which users' look-alikes are not. Here the cohort is built from half the
training identities (hash split) and the tuning regimes keep only the other half; the cohort's
recipe is ``one`` (the shipped one: one face per person, random crop style) or ``styles`` (one
face per person per crop style, ~5x the faces), with the level's k; shifts as given.

    python bench/cohort_study.py halfsplit --root /work/extdata/work --cohort one:10 --shifts 0.002,0.003,0.004
    python bench/cohort_study.py halfsplit --root /work/extdata/work --cohort raw   # cohort_norm=false

``lighting``: a hard side light (``bench/shift_sets.py`` regime ``lfw-sidelight``, training
identities) makes different people's dlib descriptors alike without raising their level against
the shipped cohort (the cohort has no such faces). The cohort with one side-lit face per training
person added, against the shipped one, Infomap on the regime and every tuning regime
(docs/benchmarks.md §9, "Twenty-third session"):

    python bench/cohort_study.py lighting --root /work/extdata/work --add lfw-sidelight [--shifts 0.003,0.002] \
        [--methods infomap,gcn-ve,adanets] [--validate]

With ``--recipe part --margins 0.005,0.0075,0.01,0.0125`` the side-lit faces form a *part* of the
cohort instead (``Cohort.parts``, what ships since the twenty-fifth session with margin 0.01;
default_quality.md, "A side-light part of the cohort"); ``--no-shipped`` skips the shipped
cohort's rows, ``--only-add`` the tuning regimes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import facecluster.cohort as cohort_mod  # noqa: E402
from _common import run_method  # noqa: E402
from regimes import TRAIN_SETS, load, tuning_regimes  # noqa: E402

from facecluster.cohort import Cohort, load_cohort  # noqa: E402
from facecluster.knn import knn, l2_normalize  # noqa: E402


@contextmanager
def cohort_in_use(co: Cohort | None):
    """Within the block the methods read ``co`` as dlib's cohort (None: the shipped one), through
    ``facecluster.cohort.load_cohort``, which ``resolve_cohort`` calls; restored after."""
    orig = cohort_mod.load_cohort
    if co is not None:
        cohort_mod.load_cohort = lambda e: co if e == "dlib" else orig(e)
    try:
        yield
    finally:
        cohort_mod.load_cohort = orig


def in_half_a(name: str) -> bool:
    """The half of the training identities a ``halfsplit`` cohort is built from (a hash of the
    name, salted apart from the validation split's)."""
    return int(hashlib.md5(("cohort:" + str(name)).encode()).hexdigest(), 16) % 2 == 0


def half_a_cohort(root: Path, recipe: str, k: int, seed: int = 0) -> Cohort:
    """A cohort from half A's training faces of every training set: ``one`` face per person
    (random crop style) or one per person per ``styles``; ``ref`` = the mean level of all half-A
    faces, each face's own person left out (the person may be in the cohort several times)."""
    rng = np.random.default_rng(seed)
    xs, ns, st = [], [], []
    for si, s in enumerate(TRAIN_SETS):
        x, n = load(root, s, "train")
        m = np.array([in_half_a(v) for v in n], bool)
        xs.append(l2_normalize(np.asarray(x[m], np.float32)))
        ns.append(np.asarray(n[m]).astype(str))
        st.append(np.full(int(m.sum()), si))
    x, n, style = np.concatenate(xs), np.concatenate(ns), np.concatenate(st)
    key = n if recipe == "one" else np.char.add(np.char.add(n, "|"), style.astype(str))
    perm = rng.permutation(len(n))
    _, first = np.unique(key[perm], return_index=True)
    pick = np.sort(perm[first])
    faces, names = x[pick], n[pick]
    lev = np.empty(len(x), np.float32)
    for b in range(0, len(x), 4096):
        sc = x[b : b + 4096] @ faces.T
        sc[names[None, :] == n[b : b + 4096, None]] = -np.inf
        lev[b : b + 4096] = -np.sort(-sc, axis=1)[:, :k].mean(1)
    return Cohort(faces=faces, k=k, ref=float(lev.mean(dtype=np.float64)), names=names)


def halfsplit(a) -> None:
    settings: dict = {}
    recipe, _, k = a.cohort.partition(":")
    if recipe == "raw":
        settings["cohort_norm"] = False
        shifts = [0.0]
    else:
        co = half_a_cohort(a.root, recipe, int(k or 10))
        print(f"cohort {a.cohort}: {co.faces.shape[0]} faces, ref {co.ref:.5f}", flush=True)
        shifts = [float(v) for v in a.shifts.split(",")]
    regs = []
    for reg, x, n, px in tuning_regimes(a.root, with_px=True):
        m = ~np.array([in_half_a(v) for v in n], bool)
        regs.append((reg, x[m], n[m], px[m]))
    print("regimes (half B): " + " ".join(r[0] for r in regs))
    for shift in shifts:
        res = []
        with cohort_in_use(None if recipe == "raw" else co):
            for reg, x, n, px in regs:
                r = run_method("infomap", x, n, "dlib", face_px=px, **settings, **({} if recipe == "raw" else {"cohort_shift": shift}))
                res.append((reg, r["bcubed_fscore"], r["mixed_faces"], r["n"]))
        f = np.array([r[1] for r in res])
        worst = min(res, key=lambda r: r[1])
        print(f"{a.cohort} shift {shift}: worst {worst[0]} {worst[1]:.4f}  mean {f.mean():.4f}  faces in mixed clusters "
              f"{sum(r[2] for r in res)} (most in one regime {max(r[2] / r[3] for r in res):.2%})  per regime "
              + " ".join(f"{r[1]:.4f}" for r in res), flush=True)


def lighting(a) -> None:
    """The shipped cohort with the training people of ``--add`` (a lighting regime of training
    identities), against the shipped one: Infomap on ``--add``'s training identities and on every
    tuning regime. ``--recipe add``: one face per person of ``--add`` added to the cohort, ``ref``
    the mean level of the TRAIN_SETS training faces with it (own person left out).
    ``--recipe part``: those faces as a *part* of the cohort (``Cohort.parts``) with its own ``ref``
    (the same training faces' mean level against the part) and each margin of ``--margins``: a
    face's level rises only where its level against the part exceeds that ref by more than the
    margin."""
    from dataclasses import replace

    shipped = load_cohort("dlib")
    xs, ns = load(a.root, a.add, "train")
    rng = np.random.default_rng(0)
    pick = np.array([rng.choice(np.flatnonzero(ns == v)) for v in np.unique(ns)])
    parts = [load(a.root, s, "train") for s in TRAIN_SETS]
    allx, alln = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(object)
    cohorts = [("shipped cohort", None)] if a.shipped else []
    if a.recipe == "add":
        faces = np.concatenate([shipped.faces, l2_normalize(np.asarray(xs[pick], np.float32))])
        names = np.concatenate([shipped.names.astype(str), ns[pick].astype(str)])
        co = Cohort(faces=faces, k=shipped.k, ref=0.0, names=names)
        co = Cohort(faces=faces, k=shipped.k, ref=float(co.levels(allx, exclude=alln).mean(dtype=np.float64)), names=names)
        print(f"cohort {len(shipped.faces)} -> {len(faces)} faces (+{a.add}), ref {shipped.ref:.4f} -> {co.ref:.4f}", flush=True)
        cohorts.append((f"cohort + {a.add}", co))
    else:
        part = Cohort(faces=l2_normalize(np.asarray(xs[pick], np.float32)), k=shipped.k, ref=0.0, names=ns[pick].astype(str), label=a.add)
        part = replace(part, ref=float(part.levels(allx, exclude=alln).mean(dtype=np.float64)))
        print(f"part {a.add}: {len(part.faces)} faces, ref {part.ref:.4f} (cohort ref {shipped.ref:.4f})", flush=True)
        for m in [float(v) for v in a.margins.split(",")]:
            cohorts.append((f"cohort + part {a.add} margin {m}", replace(shipped, parts=(replace(part, margin=m),))))
    from regimes import _cap21, format_row, validation_regimes

    x, n, px = load(a.root, a.add, "train", with_px=True)
    regs = [(f"{a.add}-train", x, n, px), (f"{a.add}-train21", *_cap21(x, n, px))]
    regs += [] if a.only_add else list(tuning_regimes(a.root, with_px=True))
    # --validate: the validation regimes too, as a veto only (never to choose a shift by)
    vals = [(f"{r[0]} (validation)", *r[1:]) for r in validation_regimes(a.root, with_px=True)] if a.validate else []
    for meth in [m for m in a.methods.split(",") if m]:
        for label, use in cohorts:
            shifts = [float(v) for v in a.shifts.split(",")] if meth == "infomap" else [None]
            for shift in shifts:
                # the learned methods' similarity floor reads the same cohort (floor_cohort)
                print(f"== {meth}, {label}" + ("" if shift is None else f", cohort_shift {shift}"), flush=True)
                kw = {} if shift is None else {"cohort_shift": shift}
                with cohort_in_use(use):
                    for reg, xx, nn, pp in regs + vals:
                        print(format_row(reg, run_method(meth, xx, nn, "dlib", face_px=pp, **kw)), flush=True)


def separation(a) -> None:
    ks = [int(v) for v in a.k.split(",") if v]
    ask = [int(v) for v in a.asnorm.split(",") if v]
    alphas = [float(v) for v in a.alpha.split(",") if v]
    if a.half:  # cohort from half A (shipped recipe), regimes of half B
        co = half_a_cohort(a.root, "one", 10)
        cohorts = {"one": co}
        cohorts.update({f"styles-{k}": half_a_cohort(a.root, "styles", k) for k in ks})
    else:
        co = load_cohort("dlib")
    top_k = max(ks + ask + [co.k])
    names = ["raw"] + [f"mean-{k}" for k in ks] + [f"asnorm-{k}" for k in ask] + [f"mean-{co.k}x{al}" for al in alphas]
    if a.half:
        names += [f"styles-{k}" for k in ks]
    total = dict.fromkeys(names, 0)
    print(f"{'regime':24s} {'same':>7s} {'diff':>7s}  " + " ".join(f"{v:>10s}" for v in names))
    for reg, x, n in tuning_regimes(a.root):
        if a.half:
            m = ~np.array([in_half_a(v) for v in n], bool)
            x, n = x[m], n[m]
        xr = l2_normalize(np.asarray(x, np.float32))
        sims, ids = knn(xr, a.neighbours + 1)
        sc = xr @ co.faces.T
        sc = np.where(co.names[None, :] == np.asarray(n, object)[:, None], -np.inf, sc)  # own person out
        top = -np.sort(-sc, axis=1)[:, :top_k]
        rows = np.repeat(np.arange(len(n)), a.neighbours)
        cols, s = ids[:, 1:].ravel(), sims[:, 1:].ravel()
        ok = (cols >= 0) & (cols != rows)
        rows, cols, s = rows[ok], cols[ok], s[ok]
        same = n[rows] == n[cols]
        scores = {"raw": s}
        for k in ks:
            lev = top[:, :k].mean(1)
            scores[f"mean-{k}"] = s - 0.5 * (lev[rows] + lev[cols])
        for k in ask:
            mu, sd = top[:, :k].mean(1), top[:, :k].std(1)
            scores[f"asnorm-{k}"] = 0.5 * ((s - mu[rows]) / sd[rows] + (s - mu[cols]) / sd[cols])
        lev = top[:, : co.k].mean(1)
        for al in alphas:  # the deviation from the level weighted by alpha (1: the shipped form)
            scores[f"mean-{co.k}x{al}"] = s - al * 0.5 * (lev[rows] + lev[cols])
        if a.half:
            for k in ks:
                sty = cohorts[f"styles-{k}"]
                lev_s = -np.sort(-(xr @ sty.faces.T), axis=1)[:, :k].mean(1)
                scores[f"styles-{k}"] = s - 0.5 * (lev_s[rows] + lev_s[cols])
        row = []
        for v in names:
            t = np.quantile(scores[v][same], 1 - a.keep)
            c = int(np.sum(~same & (scores[v] >= t)))
            total[v] += c
            row.append(c)
        print(f"{reg:24s} {int(same.sum()):7d} {int((~same).sum()):7d}  " + " ".join(f"{c:10d}" for c in row), flush=True)
    print(f"{'total':24s} {'':7s} {'':7s}  " + " ".join(f"{total[v]:10d}" for v in names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("separation", help="different-person edges passing, per variant")
    sp.add_argument("--root", type=Path, required=True, help="folder of embedded work dirs (dlib)")
    sp.add_argument("--k", default="3,5,10,20,50,200", help="levels' k for the mean form")
    sp.add_argument("--asnorm", default="10,50", help="k for the adaptive S-norm form ('' for none)")
    sp.add_argument("--neighbours", type=int, default=20)
    sp.add_argument("--keep", type=float, default=0.9, help="share of same-person edges the threshold keeps")
    sp.add_argument("--alpha", default="", help="weights of the level deviation for the shipped k (1: the shipped form), e.g. 0.5,1.5,2")
    sp.add_argument("--half", action="store_true", help="cohorts built from half A of the training identities (the shipped "
                    "recipe, and one face per person per crop style with each --k), regimes of half B (no look-alike in the cohort)")
    hp = sub.add_parser("halfsplit", help="Infomap on half B of the tuning regimes, cohort from half A")
    hp.add_argument("--root", type=Path, required=True)
    hp.add_argument("--cohort", default="one:10", help="raw | one:K | styles:K")
    hp.add_argument("--shifts", default="0.003")
    lp = sub.add_parser("lighting", help="Infomap with the cohort + one face per person of a lighting regime")
    lp.add_argument("--root", type=Path, required=True)
    lp.add_argument("--add", default="lfw-sidelight", help="work dir of the regime whose training people join the cohort")
    lp.add_argument("--shifts", default="0.003")
    lp.add_argument("--validate", action="store_true", help="also Infomap on the validation regimes (a veto, never a choice)")
    lp.add_argument("--methods", default="infomap", help="these methods (e.g. infomap,gcn-ve,adanets), each with its defaults "
                    "and each cohort; --shifts applies to infomap")
    lp.add_argument("--recipe", choices=["add", "part"], default="add", help="the --add faces added to the cohort, or a part of it")
    lp.add_argument("--margins", default="0.015", help="--recipe part: the part's margins (cosine units)")
    lp.add_argument("--shipped", action=argparse.BooleanOptionalAction, default=True, help="also the shipped cohort")
    lp.add_argument("--only-add", action="store_true", help="only --add's two regimes (not the tuning regimes)")
    a = ap.parse_args()
    {"separation": separation, "halfsplit": halfsplit, "lighting": lighting}[a.cmd](a)


if __name__ == "__main__":
    main()
