"""Baselines for comparison (what users of dlib and scipy do today)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from ..graph import components, knn_to_affinity
from ..knn import knn, l2_normalize
from .base import ClusterConfig, Clusterer


class ThresholdConfig(ClusterConfig):
    k: int = Field(80, ge=1, description="Neighbours per face (counting itself); capped at N.")
    min_sim: float = Field(0.5, description="Link faces whose cosine similarity is >= min_sim (calibrated features).")


class ThresholdClusterer(Clusterer):
    name = "threshold"
    summary = "Baseline: link kNN pairs above a cosine threshold, connected components."
    Config = ThresholdConfig

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        X = self._check_input(X)
        n = X.shape[0]
        if n == 0:
            return np.zeros(0, np.int64)
        with self._timed("knn"):
            sims, ids = knn(X, self.config.k, backend=self.config.knn_backend, device=self.device, progress=self.config.progress)
        self._input_knn = ids  # candidate pairs for the near-duplicate rule (spares its own kNN)
        with self._timed("components"):
            a = knn_to_affinity(ids, sims, th_sim=self.config.min_sim).tocoo()
            return components(n, a.row, a.col)


class ChineseWhispersConfig(ClusterConfig):
    threshold: float = Field(0.5, description="Euclidean distance on raw dlib descriptors (dlib's default use: 0.5).")


class ChineseWhispersClusterer(Clusterer):
    """dlib's own ``chinese_whispers_clustering`` on raw descriptors, as dlib users run it."""

    name = "chinese-whispers"
    summary = "Baseline: dlib's chinese whispers on raw descriptors (Euclidean < 0.5)."
    Config = ChineseWhispersConfig
    #: the pipeline passes raw (uncalibrated) descriptors to this method
    wants_raw_features: ClassVar[bool] = True

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        import dlib

        X = self._check_input(X)
        if X.shape[0] == 0:
            return np.zeros(0, np.int64)
        with self._timed("chinese_whispers"):
            vecs = [dlib.vector(row.astype(np.float64).tolist()) for row in X]
            return np.asarray(dlib.chinese_whispers_clustering(vecs, self.config.threshold), np.int64)


class HACConfig(ClusterConfig):
    linkage: str = Field("average", description="scipy linkage: average | single | complete.")
    distance: float = Field(0.6, description="Cut the dendrogram at this cosine distance (1 - similarity).")


class HACClusterer(Clusterer):
    """Agglomerative clustering on all pairwise cosine distances: O(N²) memory, for baselines."""

    name = "hac"
    summary = "Baseline: hierarchical agglomerative clustering (cosine, average linkage); O(N^2)."
    Config = HACConfig

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        from scipy.cluster.hierarchy import fcluster, linkage

        X = self._check_input(X)
        n = X.shape[0]
        if n < 2:
            return np.zeros(n, np.int64)
        with self._timed("hac"):
            Z = linkage(l2_normalize(X).astype(np.float64), method=self.config.linkage, metric="cosine")
            return fcluster(Z, t=self.config.distance, criterion="distance").astype(np.int64)
