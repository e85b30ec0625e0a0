"""Training-free default: Infomap community detection on the kNN similarity graph.

Why Infomap: on MS1M, kNN + Infomap (F_P 93.98 / F_B 92.40 at 584K) beats GCN-V+E
(87.93 / 86.09) with no training at all (notes §4.1), and it has no global distance
threshold that must fit every cluster size: a flow-based community stays one community
whether it holds 2 faces or 900, which is exactly what breaks plain thresholds between
LFW-like (tiny clusters) and long-video (huge clusters) data.

Graph: each face links to its ``k`` nearest neighbours with similarity above ``min_sim``
(cosine on calibrated features), weight = similarity; undirected, two-level Infomap.
Faces with no such edge are singletons.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from pydantic import Field

from ..knn import knn
from .base import ClusterConfig, Clusterer


class InfomapConfig(ClusterConfig):
    k: int = Field(80, ge=1, description="Neighbours per face (counting itself); capped at N (80 as in learn-to-cluster).")
    min_sim: float = Field(
        0.68,
        ge=-1.0,
        le=1.0,
        description="Keep kNN edges with cosine similarity >= min_sim (on calibrated features). "
        "Chosen on LFW + glint18 for the best worst case of the two (docs/benchmarks.md): lower "
        "merges LFW's many one-photo people, higher splits glint18's 900-face clusters.",
    )
    num_trials: int = Field(2, ge=1, description="Infomap restarts; the best partition is kept.")
    markov_time: float = Field(1.0, gt=0, description="Infomap Markov time (>1 favours larger clusters).")


class InfomapClusterer(Clusterer):
    name = "infomap"
    summary = "Training-free: Infomap on the kNN cosine graph (default; fast, no weights)."
    Config = InfomapConfig

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        from infomap import Infomap

        X = self._check_input(X)
        n = X.shape[0]
        self.timings_ = {}
        if n == 0:
            return np.zeros(0, np.int64)
        cfg = self.config
        with self._timed("knn"):
            sims, ids = knn(X, cfg.k, backend=cfg.knn_backend, device=self.device)
        with self._timed("graph"):
            rows = np.repeat(np.arange(n), ids.shape[1])
            cols = ids.reshape(-1)
            w = sims.reshape(-1)
            keep = (cols != rows) & (w >= cfg.min_sim)
            a, b, w = rows[keep], cols[keep], w[keep]
            # undirected: keep one copy of each pair (max weight; they are equal for exact kNN)
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            key = lo * n + hi
            key, first = np.unique(key, return_index=True)
            lo, hi, w = lo[first], hi[first], w[first]
        labels = np.arange(n, dtype=np.int64)
        if len(lo):
            with self._timed("infomap"):
                im = Infomap(
                    two_level=True,
                    silent=True,
                    seed=cfg.seed,
                    num_trials=cfg.num_trials,
                    markov_time=cfg.markov_time,
                    directed=False,
                )
                # positive weights only (Infomap flow must be non-negative)
                im.add_links(zip(lo.tolist(), hi.tolist(), np.maximum(w, 1e-6).astype(float).tolist()))
                im.run()
                # Read the partition from a .clu file rather than infomap's SWIG iterators:
                # faiss (also SWIG) registers the same SWIG runtime type and the iterator
                # then dispatches into faiss and segfaults when faiss was imported first.
                with tempfile.TemporaryDirectory() as d:
                    clu = os.path.join(d, "modules.clu")
                    im.write_clu(clu)
                    tab = np.loadtxt(clu, comments="#", ndmin=2)
                node, module = tab[:, 0].astype(np.int64), tab[:, 1].astype(np.int64)
                labels[node] = n + module  # offset: never collides with singleton ids
        return labels
