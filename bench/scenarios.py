"""The default clusterer on scenarios it was not tuned on, beside chinese whispers.

    python bench/scenarios.py --lfw WD_LFW --glint WD_GLINT [--orl WD_ORL] \
        [--variant "infomap"] [--variant "infomap:merge_fragments=false,min_sim=0.945"] ...

Each work dir is embedded with the dlib embedder (`facecluster run`). Besides the two tuning
sets as they are, it builds cluster-size regimes the defaults were not chosen on:

* ``lfw-2plus``: LFW identities with >= 2 photos (the usual LFW clustering protocol)
* ``glint18-10pct``: a 10 % sample of every glint18 identity (short videos: 2-94 faces each),
  three seeds
* ``glint18-mix``: 100 random draws of 3-7 glint18 identities, 5-40 % of each one's faces
  (small jobs with few people; printed as mean and [min] over the draws)
* ``glint18+singletons``: glint18 plus LFW's 4,069 one-photo people as distractors
* ``orl``: 40 people x 10 greyscale studio shots (only with ``--orl``)

Prints BCubed F (pairwise F, NMI) per scenario and variant.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from _common import load_workdir, parse_value, run_method

DEFAULT_VARIANTS = ["infomap", "infomap:merge_fragments=false,min_sim=0.945", "chinese-whispers"]


def parse_variant(v: str) -> tuple[str, dict]:
    method, _, rest = v.partition(":")
    settings = {}
    for kv in filter(None, rest.split(",")):
        k, _, val = kv.partition("=")
        settings[k] = parse_value(val)
    return method, settings


def scenarios(a) -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """(name, [(features, label names), ...]): one entry per draw of the scenario."""
    lf, ln, _ = load_workdir(a.lfw)
    gf, gn, _ = load_workdir(a.glint)
    out = [("lfw", [(lf, ln)]), ("glint18", [(gf, gn)])]
    counts = Counter(ln.tolist())
    multi = np.array([counts[n] >= 2 for n in ln])
    out.append(("lfw-2plus", [(lf[multi], ln[multi])]))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(gn), bool)
        for n in np.unique(gn):
            idx = np.flatnonzero(gn == n)
            keep[rng.choice(idx, max(2, len(idx) // 10), replace=False)] = True
        out.append((f"glint18-10pct/s{seed}", [(gf[keep], gn[keep])]))
    rng = np.random.default_rng(123)
    ids, draws = np.unique(gn), []
    for _ in range(100):
        frac = rng.uniform(0.05, 0.4)
        sel = np.concatenate([
            rng.choice(np.flatnonzero(gn == n), max(2, int(frac * (gn == n).sum())), replace=False)
            for n in rng.choice(ids, rng.integers(3, 8), replace=False)
        ])
        draws.append((gf[sel], gn[sel]))
    out.append(("glint18-mix (100 draws)", draws))
    single = ~multi
    out.append(("glint18+singletons", [(np.concatenate([gf, lf[single]]), np.concatenate([gn, np.char.add("lfw:", ln[single])]))]))
    if a.orl:
        of, on, _ = load_workdir(a.orl)
        out.append(("orl", [(of, on)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, required=True)
    ap.add_argument("--glint", type=Path, required=True)
    ap.add_argument("--orl", type=Path)
    ap.add_argument("--variant", action="append", help="METHOD[:key=value,...]; repeatable")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    variants = a.variant or DEFAULT_VARIANTS
    rows = []
    print(f"{'scenario':22s} {'faces':>6s} {'ids':>5s}  " + "  ".join(f"{v[:34]:>34s}" for v in variants))
    for name, draws in scenarios(a):
        cells = []
        for v in variants:
            method, settings = parse_variant(v)
            res = []
            for f, n in draws:
                r = run_method(method, f, n, "dlib", **settings)
                r.update(scenario=name, variant=v)
                res.append(r)
            rows.extend(res)
            fb, fp, nmi = (np.array([r[k] for r in res]) for k in ("bcubed_fscore", "pairwise_fscore", "nmi"))
            worst = f" [{fb.min():.3f}]" if len(res) > 1 else ""
            cells.append(f"{fb.mean():.4f}{worst} ({fp.mean():.3f}, {nmi.mean():.3f})")
        faces = int(np.mean([len(n) for _, n in draws]))
        ids = int(np.mean([len(set(n.tolist())) for _, n in draws]))
        print(f"{name:22s} {faces:6d} {ids:5d}  " + "  ".join(f"{c:>34s}" for c in cells), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
