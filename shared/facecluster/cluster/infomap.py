"""Training-free default: Infomap community detection on the kNN similarity graph.

Why Infomap: on MS1M, kNN + Infomap (F_P 93.98 / F_B 92.40 at 584K) beats GCN-V+E
(87.93 / 86.09) with no training at all (notes §4.1), and it has no global distance
threshold that must fit every cluster size: a flow-based community stays one community
whether it holds 2 faces or 900, which is exactly what breaks plain thresholds between
LFW-like (tiny clusters) and long-video (huge clusters) data.

Graph: each face links to its ``k`` nearest neighbours with cosine similarity above
``min_sim``, weight = similarity; undirected, two-level Infomap. Faces with no such edge are
singletons.

Fragment merge (``merge_fragments``, on by default): a threshold strict enough for a photo
collection full of one-photo people (LFW) splits the 900-face clusters of a long video into
pieces (the same person in sunglasses, in profile, in low light). After Infomap, a cluster
joins the bigger cluster that its members' nearest neighbours clearly point into
(:func:`facecluster.graph.merge_fragments`: >= 75 % of its outgoing links, >= 15 % of its
neighbour slots, links >= ``merge_min_sim``). Measured (docs/benchmarks.md §1): BCubed F LFW
0.9255 -> 0.9316, glint18 0.9282 -> 0.9563 (dlib's chinese whispers: 0.8633 / 0.9476), and
better on held-out people and on small few-person jobs; it does not join two similar people
who each form a big cluster of their own (glint18's mislabeled mother/daughter folder).

Features: the plain L2-normalised descriptors (``wants_raw_features``), not the mean-centred
ones. Measured on LFW + glint18 with dlib features (docs/benchmarks.md), Infomap on raw cosine
beats every mean-centred threshold: centring then re-normalising amplifies noise in
descriptors that lie close to the mean direction, which produced large mixed clusters of
under-represented faces. The thresholds are therefore a property of the embedder: ``min_sim``
and ``merge_min_sim`` default to the values chosen for the embedder that made the features
(``MIN_SIM_BY_EMBEDDER``, ``MERGE_MIN_SIM_BY_EMBEDDER``) and must be set by hand for unknown ones.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import ClassVar, Optional

import numpy as np
from pydantic import Field

from ..graph import merge_fragments
from ..knn import knn
from .base import ClusterConfig, Clusterer


class InfomapConfig(ClusterConfig):
    k: int = Field(80, ge=1, description="Neighbours per face (counting itself); capped at N (80 as in learn-to-cluster).")
    min_sim: Optional[float] = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Keep kNN edges with cosine similarity >= min_sim. Default: the value chosen for "
        "the features' embedder (dlib: 0.947, chosen on LFW + glint18 together with the fragment merge: lower "
        "merges LFW's many one-photo people, higher splits glint18's 900-face clusters into more "
        "pieces than the merge recovers); 0.5 for embedders without a tuned value (zero-mean features such as ArcFace).",
    )
    num_trials: int = Field(2, ge=1, description="Infomap restarts; the best partition is kept.")
    markov_time: float = Field(1.0, gt=0, description="Infomap Markov time (>1 favours larger clusters).")
    merge_fragments: bool = Field(
        True,
        description="After Infomap, join each cluster to the bigger cluster its members' nearest "
        "neighbours point into (see facecluster.graph.merge_fragments): recovers the pieces a "
        "strict min_sim splits off big clusters (sunglasses, profiles) without lowering it.",
    )
    merge_min_sim: Optional[float] = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Only kNN links with cosine similarity >= this vote in the fragment merge. Default: "
        "the value chosen for the features' embedder (dlib: 0.91); min_sim - 0.1 for other embedders.",
    )
    merge_k: int = Field(40, ge=1, description="Neighbours per face that vote in the fragment merge (capped at k - 1).")
    merge_share: float = Field(
        0.75, gt=0, le=1, description="A cluster joins B when >= this share of its links leaving it go to B ..."
    )
    merge_min_links: float = Field(
        0.15,
        gt=0,
        le=1,
        description="... and those links are >= this fraction of all its members' kNN slots (keeps "
        "self-contained clusters, e.g. two similar-looking relatives, apart; a real fragment such as "
        "one person's photos in sunglasses sends ~22 % of its slots into the main cluster).",
    )


#: default ``min_sim`` per embedder (raw L2-normalised descriptors), see module doc
MIN_SIM_BY_EMBEDDER: dict[str, float] = {"dlib": 0.947}
#: for embedders without a tuned value
GENERIC_MIN_SIM = 0.5
#: default ``merge_min_sim`` per embedder; others use ``min_sim - GENERIC_MERGE_MARGIN``
MERGE_MIN_SIM_BY_EMBEDDER: dict[str, float] = {"dlib": 0.91}
GENERIC_MERGE_MARGIN = 0.1


def _parallel_trials(num_trials: int) -> dict:
    """Run Infomap's trials on parallel threads when there are cores to spare (a GPU node: at
    1M faces Infomap itself is the longest step of the default method). Measured: the same
    partition as serial trials (2 and 3 trials on glint18 and on 30k synthetic faces;
    tests/test_cluster_scale.py), so only the wall time changes. Off below 4 usable cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_trials < 2 or cores < 4:
        return {}
    return {"parallel_trials": True, "num_threads": min(num_trials, cores)}


class InfomapClusterer(Clusterer):
    name = "infomap"
    summary = "Training-free: Infomap on the kNN cosine graph, then fragments joined by neighbour vote (default; fast, no weights)."
    Config = InfomapConfig
    #: the pipeline passes the plain descriptors (see module doc)
    wants_raw_features: ClassVar[bool] = True

    def min_sim(self) -> float:
        c = self.config
        if c.min_sim is not None:
            return c.min_sim
        return MIN_SIM_BY_EMBEDDER.get(c.embedder or "", GENERIC_MIN_SIM)

    def merge_min_sim(self) -> float:
        c = self.config
        if c.merge_min_sim is not None:
            return c.merge_min_sim
        return MERGE_MIN_SIM_BY_EMBEDDER.get(c.embedder or "", self.min_sim() - GENERIC_MERGE_MARGIN)

    def settings(self) -> dict:
        d = super().settings()
        d["min_sim"] = self.min_sim()
        d["merge_min_sim"] = self.merge_min_sim()
        return d

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
            keep = (cols != rows) & (w >= self.min_sim())
            a, b, w = rows[keep], cols[keep], w[keep]
            # undirected: keep one copy of each pair (max weight; they are equal for exact kNN)
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            key = lo * n + hi
            key, first = np.unique(key, return_index=True)
            lo, hi, w = lo[first], hi[first], w[first]
        labels = np.arange(n, dtype=np.int64)
        if len(lo):
            with self._timed("infomap"), warnings.catch_warnings():
                # infomap >= 2.15 marks keyword options "legacy" (they still work; 3.0 moves them)
                warnings.simplefilter("ignore")
                im = Infomap(
                    two_level=True,
                    silent=True,
                    seed=cfg.seed,
                    num_trials=cfg.num_trials,
                    markov_time=cfg.markov_time,
                    directed=False,
                    **_parallel_trials(cfg.num_trials),
                )
                # positive weights only (Infomap flow must be non-negative). One (E, 3) float64
                # array goes to infomap's bulk numpy loader: the same links, in the same order,
                # as a Python loop over tuples, which took ~1 s per million links
                im.add_links(np.column_stack([lo, hi, np.maximum(w, 1e-6)]).astype(np.float64))
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
        if cfg.merge_fragments:
            with self._timed("merge"):
                # self is in the list (ignored); merge_k other neighbours vote
                m = cfg.merge_k + 1
                labels = merge_fragments(
                    labels,
                    ids[:, :m],
                    sims[:, :m],
                    min_sim=self.merge_min_sim(),
                    share=cfg.merge_share,
                    min_links=cfg.merge_min_links,
                )
        return labels
