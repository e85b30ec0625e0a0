"""Sparse graph utilities shared by the clustering methods (scipy.sparse, vectorised)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


def knn_to_affinity(
    ids: np.ndarray, sims: np.ndarray, th_sim: float = 0.0, *, n: int | None = None
) -> sp.csr_matrix:
    """kNN lists → symmetric affinity matrix (no self loops).

    Keeps edge (i, ids[i, c]) with weight ``sims[i, c]`` when ``sims >= th_sim`` and the
    neighbour is not ``i`` itself, then symmetrises with an elementwise maximum
    (learn-to-cluster ``fast_knns2spmat`` + ``build_symmetric_adj``).

    ids, sims : (N, k) arrays. Returns (N, N) float32 CSR.
    """
    n = ids.shape[0] if n is None else n
    rows = np.repeat(np.arange(ids.shape[0], dtype=np.int64), ids.shape[1])
    cols = ids.reshape(-1).astype(np.int64)
    vals = sims.reshape(-1).astype(np.float32)
    keep = (vals >= th_sim) & (cols != rows) & (cols >= 0)
    a = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))
    a.sum_duplicates()
    return a.maximum(a.T).tocsr()


def row_normalize(a: sp.spmatrix) -> sp.csr_matrix:
    """D⁻¹A with zero (or negative) row sums treated as 1."""
    a = sp.csr_matrix(a, dtype=np.float32)
    d = np.asarray(a.sum(axis=1)).reshape(-1)
    d[d <= 0] = 1.0
    return sp.diags((1.0 / d).astype(np.float32)).dot(a).tocsr()


def build_adjacency(ids: np.ndarray, sims: np.ndarray, th_sim: float = 0.0) -> sp.csr_matrix:
    """The GCN adjacency of both papers: affinity (max-sym) + I, row-normalised."""
    a = knn_to_affinity(ids, sims, th_sim)
    a = a + sp.eye(a.shape[0], dtype=np.float32, format="csr")
    return row_normalize(a)


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph with edges (src[e], dst[e]).

    Returns (n,) int64 labels numbered by the smallest node id in each component
    (deterministic, independent of edge order)."""
    if n == 0:
        return np.zeros(0, np.int64)
    g = sp.csr_matrix((np.ones(len(src), np.int8), (np.asarray(src, np.int64), np.asarray(dst, np.int64))), shape=(n, n))
    _, lab = connected_components(g, directed=True, connection="weak")
    # renumber by first node of each component
    first = np.full(lab.max() + 1, n, np.int64)
    np.minimum.at(first, lab, np.arange(n))
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[lab].astype(np.int64)


def nearest_higher(ids: np.ndarray, sims: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each node, its first kNN neighbour (in list order) with strictly higher confidence.

    Vectorised version of learn-to-cluster's ``confidence_to_peaks`` with max_conn=1.

    Returns
    -------
    peak : (N,) int64, neighbour id or -1 when none (a root).
    peak_sim : (N,) float32 similarity to that neighbour (-inf for roots).
    """
    n = ids.shape[0]
    if n == 0 or ids.shape[1] == 0:
        return np.full(n, -1, np.int64), np.full(n, -np.inf, np.float32)
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    higher = valid & (conf[safe] > conf[:, None]) & (safe != np.arange(n)[:, None])
    has = higher.any(axis=1)
    first = higher.argmax(axis=1)
    rows = np.arange(n)
    peak = np.where(has, safe[rows, first], -1).astype(np.int64)
    psim = np.where(has, sims[rows, first], -np.inf).astype(np.float32)
    return peak, psim


def peaks_to_labels(peak: np.ndarray, peak_sim: np.ndarray, tau: float) -> np.ndarray:
    """Keep i→peak[i] edges with similarity > tau; connected components are the clusters."""
    n = len(peak)
    keep = (peak >= 0) & (peak_sim > tau)
    src = np.nonzero(keep)[0]
    return components(n, src, peak[src])
