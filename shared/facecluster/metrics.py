"""Clustering metrics exactly as learn-to-cluster / Ada-NETS compute them (notes §5).

* pairwise P/R/F over ordered pairs from the contingency matrix,
* item-averaged BCubed P/R/F,
* NMI from scikit-learn-equivalent arithmetic normalisation (pinned, see below).

Every label must be a real cluster: callers give each unclustered face its own label
(``singletons_to_unique``), otherwise all of them would merge into one giant cluster.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _contingency(gt: np.ndarray, pred: np.ndarray) -> sp.csr_matrix:
    _, g = np.unique(gt, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    c = sp.csr_matrix((np.ones(len(g), np.int64), (g, p)), shape=(g.max() + 1, p.max() + 1))
    c.sum_duplicates()
    return c


def _table(gt: np.ndarray, pred: np.ndarray):
    """Non-zero contingency cells (gt row, pred col, count n_ij) and the row / column sums."""
    cm = _contingency(gt, pred)
    c = cm.tocoo()
    rows = np.asarray(cm.sum(axis=1)).ravel().astype(np.float64)
    cols = np.asarray(cm.sum(axis=0)).ravel().astype(np.float64)
    return c.row, c.col, c.data.astype(np.float64), rows, cols


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _check(gt, pred):
    gt = np.asarray(gt).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if gt.shape != pred.shape:
        raise ValueError(f"labels differ in length: {gt.shape[0]} gt vs {pred.shape[0]} predicted")
    if gt.size == 0:
        raise ValueError("no labels to evaluate")
    return gt, pred


def pairwise(gt, pred) -> tuple[float, float, float]:
    """Pairwise precision, recall, F-score (ordered pairs, as ``fowlkes_mallows_score`` counts them).

    An all-singleton prediction has no predicted pairs: precision is then defined as 1.0
    (the originals divide 0/0)."""
    gt, pred = _check(gt, pred)
    n = gt.size
    _, _, nij, row, col = _table(gt, pred)
    tp = float((nij**2).sum() - n)
    pred_pairs = float((col**2).sum() - n)
    gt_pairs = float((row**2).sum() - n)
    p = tp / pred_pairs if pred_pairs > 0 else 1.0
    r = tp / gt_pairs if gt_pairs > 0 else 1.0
    return p, r, _f(p, r)


def bcubed(gt, pred) -> tuple[float, float, float]:
    """Item-averaged BCubed precision, recall, F-score."""
    gt, pred = _check(gt, pred)
    n = gt.size
    ri, ci, nij, row, col = _table(gt, pred)
    p = float((nij**2 / col[ci]).sum() / n)
    r = float((nij**2 / row[ri]).sum() / n)
    return p, r, _f(p, r)


def nmi(gt, pred) -> float:
    """Normalised mutual information, arithmetic mean of the entropies
    (= sklearn ``normalized_mutual_info_score(..., average_method="arithmetic")``, the default
    since sklearn 0.22; older papers may have used the geometric mean)."""
    gt, pred = _check(gt, pred)
    n = gt.size
    ri, ci, nij, a, b = _table(gt, pred)

    def h(v):
        v = v[v > 0] / n
        return float(-(v * np.log(v)).sum())

    ha, hb = h(a), h(b)
    if ha == 0 and hb == 0:
        return 1.0
    mi = float((nij / n * (np.log(nij * n) - np.log(a[ri]) - np.log(b[ci]))).sum())
    denom = (ha + hb) / 2
    return max(mi, 0.0) / denom if denom > 0 else 0.0


def singletons_to_unique(pred) -> np.ndarray:
    """Give every negative (unclustered) label its own fresh id."""
    pred = np.asarray(pred, dtype=np.int64).copy()
    neg = pred < 0
    if neg.any():
        start = pred.max(initial=-1) + 1
        pred[neg] = np.arange(start, start + neg.sum())
    return pred


MIXED_MIN_SIZE = 10
MIXED_MAX_SHARE = 0.5


def cluster_purity(gt, pred, min_size: int = MIXED_MIN_SIZE, max_share: float = MIXED_MAX_SHARE) -> dict[str, int]:
    """What F-scores average away: how big the largest predicted cluster is, how many people it
    holds, and how many faces sit in *mixed* clusters (>= ``min_size`` faces whose largest
    identity is under ``max_share`` of them, i.e. no one person dominates).

    Keys: ``largest_cluster`` (faces), ``largest_cluster_ids`` (distinct people in it),
    ``mixed_clusters``, ``mixed_faces``."""
    gt, pred = _check(gt, pred)
    pred = singletons_to_unique(pred)
    ri, ci, nij, _, col = _table(gt, pred)
    top = np.zeros(len(col))
    np.maximum.at(top, ci, nij)
    ids = np.bincount(ci, minlength=len(col))
    mixed = (col >= min_size) & (top < max_share * col)
    big = int(np.argmax(col))
    return {
        "largest_cluster": int(col[big]),
        "largest_cluster_ids": int(ids[big]),
        "mixed_clusters": int(mixed.sum()),
        "mixed_faces": int(col[mixed].sum()),
    }


def evaluate(gt, pred) -> dict[str, float]:
    """All metrics in one dict (keys: pairwise_*, bcubed_*, nmi, n, n_clusters, n_singletons,
    and :func:`cluster_purity`'s largest_cluster, largest_cluster_ids, mixed_clusters, mixed_faces)."""
    gt, pred = _check(gt, pred)
    pred = singletons_to_unique(pred)
    pp, pr, pf = pairwise(gt, pred)
    bp, br, bf = bcubed(gt, pred)
    _, counts = np.unique(pred, return_counts=True)
    return {
        **cluster_purity(gt, pred),
        "pairwise_precision": pp,
        "pairwise_recall": pr,
        "pairwise_fscore": pf,
        "bcubed_precision": bp,
        "bcubed_recall": br,
        "bcubed_fscore": bf,
        "nmi": nmi(gt, pred),
        "n": int(gt.size),
        "n_clusters": int(len(counts)),
        "n_singletons": int((counts == 1).sum()),
        "n_gt_clusters": int(len(np.unique(gt))),
    }
