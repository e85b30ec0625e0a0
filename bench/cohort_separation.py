"""How well cohort-normalised similarities separate people, before any clustering: the form of
the normalisation and the level's k (docs/benchmarks/default_quality.md, "Cohort normalisation").

For each tuning regime of ``bench/regimes.py`` (training identities only), every face's 20
nearest neighbours give same-person and different-person edges; each variant rescores them and
the threshold that keeps 90 % of the same-person edges is set; printed: how many
different-person edges pass it (fewer is better). Each face's own person is left out of its
cohort neighbours, as for a user's faces (the shipped cohort holds the training identities).

Variants: ``raw`` (the cosine), ``mean-K`` (what ``facecluster.cohort`` does with k = K:
s - (l_i + l_j) / 2, l = mean cosine to the K most similar cohort faces), ``asnorm-K`` (adaptive
S-norm: ((s - mu_i) / sd_i + (s - mu_j) / sd_j) / 2 over the K most similar cohort faces).

    python bench/cohort_separation.py --root /work/extdata/work [--k 3,5,10,20,50,200] [--asnorm 10,50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regimes import tuning_regimes  # noqa: E402

from facecluster.cohort import load_cohort  # noqa: E402
from facecluster.knn import knn, l2_normalize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="folder of embedded work dirs (dlib)")
    ap.add_argument("--k", default="3,5,10,20,50,200", help="levels' k for the mean form")
    ap.add_argument("--asnorm", default="10,50", help="k for the adaptive S-norm form ('' for none)")
    ap.add_argument("--neighbours", type=int, default=20)
    ap.add_argument("--keep", type=float, default=0.9, help="share of same-person edges the threshold keeps")
    a = ap.parse_args()
    co = load_cohort("dlib")
    ks = [int(v) for v in a.k.split(",") if v]
    ask = [int(v) for v in a.asnorm.split(",") if v]
    top_k = max(ks + ask)
    names = ["raw"] + [f"mean-{k}" for k in ks] + [f"asnorm-{k}" for k in ask]
    total = dict.fromkeys(names, 0)
    print(f"{'regime':24s} {'same':>7s} {'diff':>7s}  " + " ".join(f"{v:>10s}" for v in names))
    for reg, x, n in tuning_regimes(a.root):
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
        row = []
        for v in names:
            t = np.quantile(scores[v][same], 1 - a.keep)
            c = int(np.sum(~same & (scores[v] >= t)))
            total[v] += c
            row.append(c)
        print(f"{reg:24s} {int(same.sum()):7d} {int((~same).sum()):7d}  " + " ".join(f"{c:10d}" for c in row), flush=True)
    print(f"{'total':24s} {'':7s} {'':7s}  " + " ".join(f"{total[v]:10d}" for v in names))


if __name__ == "__main__":
    main()
