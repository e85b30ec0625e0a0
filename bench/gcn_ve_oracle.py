"""How far gcn-ve could go with perfect networks: GCN-V's confidence and/or GCN-E's choice of
peak taken from the ground truth, everything else as shipped (docs/benchmarks/gcn_ve.md §17).

A ceiling study, not a method: it reads the labels. It answers "would better-trained networks
(more people, a GPU) close gcn-ve's gap to the default, or is the gap in the tree itself?".

* ``--oracle v``: GCN-V's confidence replaced by its own training target computed from the
  labels (``facecluster.train.gcn_ve.s_nbr``, learn-to-cluster's density: over a face's input
  kNN list, the sum of +a_ij for neighbours of its person and -a_ij for the others, a_ij the
  similarity the network reads).
  GCN-V's output *features* (what GCN-E and tau read) stay the network's.
* ``--oracle e``: each face GCN-E judges (the ``1 - ignore_ratio`` most confident, with >= 2
  candidates) takes as its peak the most similar higher-confidence candidate of its own person,
  none when there is none (a root); tau, the floor and the refinement then apply as shipped.
  With ``--variant gcn-ve:ignore_ratio=0.0`` every face is judged so.
* ``--oracle ve``: both.
* ``--intersect-default``: no oracle; a rule: gcn-ve's tree partition is intersected with the
  default method's (Infomap's) partition of the same faces before gcn-ve's refinement (two faces
  stay together only where both methods put them together).

Every other argument is ``bench/regimes.py``'s (the same regimes, scoring and ``--json`` rows):

    python bench/gcn_ve_oracle.py --oracle ve --root /work/extdata/work \\
        --variant gcn-ve --variant gcn-ve:ignore_ratio=0.0 [--tuning] [--json out.json]
    python bench/gcn_ve_oracle.py --intersect-default --root /work/extdata/work --variant gcn-ve

The labels reach the clusterer by the faces' feature rows (the small-face rule hands the method
a subset of the batch); two faces of different people with bit-identical features would share
the label of the later one (none seen in these sets).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import numpy as np

import _common

_LABELS: dict[bytes, int] = {}  # feature row -> person index, set per regime by run_method


def oracle_peaks(ids: np.ndarray, sims: np.ndarray, conf: np.ndarray, y: np.ndarray, peak: np.ndarray, psim: np.ndarray,
                 ignore_ratio: float, allowed: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The faces GCN-E judges (``gcn_e.edge_candidates``'s ``use_e``) take their most similar
    higher-confidence candidate of their own person (lists are nearest first), or none (-1, -inf);
    the others keep ``peak`` / ``psim``."""
    from facecluster.cluster.gcn_e import edge_candidates

    ec = edge_candidates(ids, conf, ignore_ratio, allowed)
    ok = ec["higher"] & (y[np.clip(ids, 0, None)] == y[:, None])
    if allowed is not None:
        ok &= allowed
    todo = np.flatnonzero(ec["use_e"])
    has, col = ok[todo].any(1), ok[todo].argmax(1)
    peak, psim = peak.copy(), psim.copy()
    peak[todo] = np.where(has, ids[todo, col], -1)
    psim[todo] = np.where(has, sims[todo, col], -np.inf)
    return peak, psim


def intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) labels, (N,) labels -> (N,) int64 labels of their meet (together only where both agree)."""
    return np.unique(np.stack([np.asarray(a), np.asarray(b)], 1), axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def _labels_of(X: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(np.asarray(X, np.float32))
    y = np.array([_LABELS.get(r.tobytes(), -1) for r in rows], np.int64)
    if (y < 0).any():
        raise RuntimeError(f"{int((y < 0).sum())} faces without a label: the features were changed on the way")
    return y


@contextmanager
def patched(oracle: str, intersect_default: bool) -> Iterator[None]:
    """Within the block, gcn-v / gcn-ve run with the oracle(s) and/or the intersection, fed the
    labels by ``_common.run_method`` (a study: the package is patched in memory and restored)."""
    from facecluster.cluster import gcn_e, gcn_v, get_clusterer
    from facecluster.train.gcn_ve import s_nbr

    run = _common.run_method

    def run_method(method: str, feats: np.ndarray, gt: Any, *a: Any, **kw: Any) -> dict:
        _LABELS.clear()
        y = np.unique(np.asarray(gt), return_inverse=True)[1]
        for row, lab in zip(np.ascontiguousarray(np.asarray(feats, np.float32)), y):
            _LABELS[row.tobytes()] = int(lab)
        return run(method, feats, gt, *a, **kw)

    stage, peaks, refine = gcn_v.GCNVClusterer._gcn_v_stage, gcn_e.gcn_e_peaks, gcn_v.GCNVClusterer._refine
    state: dict[str, Any] = {}

    def gcn_v_stage(self, X, r):
        st = stage(self, X, r)
        state["y"], state["X"] = _labels_of(X), X
        if "v" in oracle:
            st["conf"] = s_nbr(st["ids"], st["sims"], state["y"])
        return st

    def gcn_e_peaks(model, feat, conf, ids, sims, **kw):
        peak, psim = peaks(model, feat, conf, ids, sims, **kw)
        if "e" not in oracle:
            return peak, psim
        return oracle_peaks(ids, sims, conf, state["y"], peak, psim, kw.get("ignore_ratio", 0.8), kw.get("allowed"))

    def refine_(self, labels, st, r):
        if intersect_default and r["refine"]:
            inf = get_clusterer("infomap", device=self.device, embedder=self.embedder())
            inf.timings_ = {}
            # the default's own partition of these faces, without the rules the wrapper adds
            # around every method (small faces, duplicates): those run around gcn-ve anyway
            labels = intersect(labels, type(inf).fit_predict.__wrapped__(inf, state["X"]))
        return refine(self, labels, st, r)

    _common.run_method = run_method  # before regimes imports it by name
    gcn_v.GCNVClusterer._gcn_v_stage = gcn_v_stage
    gcn_e.gcn_e_peaks = gcn_e_peaks
    gcn_v.GCNVClusterer._refine = refine_
    try:
        yield
    finally:
        _common.run_method = run
        gcn_v.GCNVClusterer._gcn_v_stage = stage
        gcn_e.gcn_e_peaks = peaks
        gcn_v.GCNVClusterer._refine = refine
        _LABELS.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ap.add_argument("--oracle", choices=["", "v", "e", "ve"], default="")
    ap.add_argument("--intersect-default", action="store_true")
    a, rest = ap.parse_known_args()
    if not a.oracle and not a.intersect_default:
        ap.error("give --oracle and/or --intersect-default (else run bench/regimes.py)")
    with patched(a.oracle, a.intersect_default):
        import regimes  # binds the patched run_method

        sys.argv = [sys.argv[0], *rest]
        regimes.main()


if __name__ == "__main__":
    main()
