"""Base class of every clustering method (scikit-learn style).

Settings go in ``__init__`` (validated by the method's pydantic ``Config``); work happens in
``fit_predict(X)`` with ``X`` an (N, D) float32 array; the result is (N,) int64 labels.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, ClassVar, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> str:
    """"auto" → "cuda" when torch sees a GPU, else "cpu"; other values are checked."""
    if device == "cpu":  # no torch import: `facecluster embed --device cpu` imports it later,
        return device  # while its alignment workers run (facecluster.embed.runner)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:i], got {device!r}")
    return device


def device_kind(device: str) -> str:
    """"cuda" for "cuda[:i]", else "cpu": the key of the per-device default tables
    (``gcn_e.BATCH_NODES``, ``adanets.AND_BATCH``)."""
    return "cuda" if device.startswith("cuda") else "cpu"


#: the small-face rule's defaults (chosen on the training scenarios lfw-mixed-train(21) and
#: glint-mixed-train by the worst regime, then the fewest faces in mixed clusters;
#: docs/benchmarks/default_quality.md, "Small faces")
SMALL_FACE_PX = 18.0
SMALL_SHARE = 0.4
SMALL_MAX_SHARE = 0.5


class ClusterConfig(BaseModel):
    """Settings common to every method."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    device: str = Field("auto", description="auto | cpu | cuda[:i]: where kNN and networks run.")
    knn_backend: str = Field("auto", description="auto | faiss | faiss-gpu | torch (exact search in every case; auto: faiss-GPU on CUDA, torch there when faiss has no GPU; faiss on CPU, measured faster there at every size: docs/benchmarks.md §2).")
    seed: int = Field(42, description="Random seed (tie-breaking, Infomap trials).")
    progress: bool = Field(False, description="Show progress bars (the CLI turns this on for a TTY).")
    embedder: Optional[str] = Field(
        None,
        description="Embedder that produced the features (the pipeline sets it from features.json); "
        "methods use it to pick the thresholds shipped for that embedder.",
    )
    join_duplicates: bool = Field(
        True,
        description="Faces whose descriptors are identical or near-identical (cosine of the "
        "L2-normalised features >= duplicate_sim: duplicate video frames, re-encoded copies) always "
        "share a cluster, whatever the method decided. False: the method's own result (A/B checks).",
    )
    small_face_px: float = Field(
        SMALL_FACE_PX,
        ge=0,
        description="Small-face rule (methods that take face_px: each face's inter-ocular distance in its "
        "file's pixels, which `facecluster embed` records): faces whose eyes are closer than this many "
        "pixels (18: about a 57-px aligned crop) never link clusters; the method clusters the other faces, "
        "then a small face joins the cluster >= small_share of its 10 nearest larger faces (cosine >= "
        "small_min_sim) belong to, else stays alone. 0 = off. Chosen on the training scenarios "
        "(docs/benchmarks/default_quality.md, \"Small faces\").",
    )
    small_share: float = Field(
        SMALL_SHARE, gt=0, le=1, description="Share of a small face's 10 nearest larger faces that must agree."
    )
    small_min_sim: Optional[float] = Field(
        None, ge=-1.0, le=1.0, description="Only larger faces with cosine >= this vote for a small face. "
        "Default: the embedder's value (calibration.SMALL_VOTE_SIM_BY_EMBEDDER, dlib 0.91; infomap: merge_min_sim)."
    )
    small_vote_temp: Optional[float] = Field(
        None,
        ge=0,
        description="Weights of the small-face vote: each of the 10 nearest larger faces counts exp((s - 1) / T) (s: "
        "its cosine), those >= small_min_sim vote, and a small face joins the cluster holding >= small_share of the "
        "weight of all 10 (near votes outweigh a crowd of weaker ones: wrong placements were contested and weaker). "
        "0: the plain count, >= small_share of the 10 votes. Default: the embedder's value "
        "(calibration.SMALL_VOTE_TEMP_BY_EMBEDDER, dlib 0.02, the temperature of Infomap's edge weights; others 0).",
    )
    small_max_share: float = Field(
        SMALL_MAX_SHARE,
        ge=0,
        le=1,
        description="The small-face rule applies only when at most this share of the faces is small: a batch "
        "of mostly small faces (a low-resolution video) has too few larger ones to anchor it.",
    )
    small_rest_min: Optional[int] = Field(
        None,
        ge=2,
        description="Small faces that no larger face's cluster takes are clustered among themselves by the same "
        "method (they still never link larger faces' clusters), and the clusters of >= this many faces that are "
        "closer to each other than to the large faces (small_rest_margin) are kept, the rest stay alone: a person "
        "seen only from afar beside people seen near. None: they stay alone. Default: None; infomap 10 (twentieth "
        "session; docs/benchmarks/default_quality.md, 'Mutual open pieces and small faces among themselves').",
    )
    small_rest_margin: Optional[float] = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="A group of small faces (small_rest_min) is kept only when its faces are closer to each other "
        "than to their nearest large faces by this much (mean cosine to their 10 nearest members minus to their 10 "
        "nearest large faces, averaged over the group). Default: the embedder's value "
        "(calibration.SMALL_REST_MARGIN_BY_EMBEDDER, dlib 0.02; none: the small faces stay alone).",
    )
    doubt_margin: Optional[float] = Field(
        None,
        ge=0.0,
        description="Faces the non-face test doubts (score >= its threshold minus this margin, in the test's "
        "units: facecluster.nonface) are handled like small faces: they never link clusters, they join the one "
        "their nearest other faces vote for or stay alone. dlib's descriptor of a face it barely sees (hard "
        "light, deep shadow) resembles other such faces more than its own person's. None: the embedder's value "
        "(calibration.DOUBT_MARGIN_BY_EMBEDDER: dlib 3.95, score >= 1.0: 1 in 700 training faces; none for "
        "other embedders); 0: off. Methods with the small-face rule only; independent of nonface_check.",
    )
    nonface_check: Optional[bool] = Field(
        None,
        description="Crops that hold no face (a detector's false positives: a shirt, a wall, a hand; "
        "facecluster.nonface, a linear test on the descriptor shipped per embedder) are set apart before "
        "clustering: each gets a cluster of its own (shared with its copies, judged as one) and its "
        "output record \"no_face\": true. Methods with the "
        "small-face rule only (the baselines reproduce other tools as they are). None: on when the embedder "
        "ships a test (dlib, mbf); true: on (an error for an embedder without one); false: off.",
    )
    duplicate_sim: Optional[float] = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Cosine at and above which two faces count as near-duplicates. None: the value "
        "measured for the embedder (dlib: calibration.DUPLICATE_SIM_BY_EMBEDDER, above every "
        "different-person pair measured), 0.9999 (numerically identical) for other embedders.",
    )


class Clusterer:
    """Subclass with ``name``, ``summary``, ``Config`` and ``fit_predict``.

    Every subclass's ``fit_predict`` is wrapped (``__init_subclass__``) so that the
    near-duplicate rule (:func:`join_near_duplicates`, setting ``join_duplicates``) applies to
    every method, present and future, without each one re-implementing it; so does the
    small-face rule for methods with ``uses_face_px`` (``fit_predict(X, face_px=...)``: the
    method clusters the faces whose crops are not small, then each small face joins the
    cluster its nearest larger faces agree on or stays alone, :meth:`_place_small`). A method that has
    already computed a kNN of its faces (in any feature space where near-duplicates are also
    nearest neighbours, e.g. mean-centred features) may leave its (N, k) ids in
    ``self._input_knn`` to spare the rule its own kNN search (measured: 4.5 s of extra kNN at
    13k faces on the loaded 2-core box).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[ClusterConfig]] = ClusterConfig
    #: fit_predict takes ``face_px`` (the faces' sizes) for the small-face rule; the pipeline
    #: passes it to such methods (those that read plain descriptors; the baselines reproduce
    #: other tools as they are and leave it off)
    uses_face_px: ClassVar[bool] = False

    def __init__(self, config: ClusterConfig | None = None, **settings: Any):
        if config is not None and settings:
            raise TypeError("pass either a config object or keyword settings, not both")
        self.config = config if config is not None else self.Config(**settings)
        self.timings_: dict[str, float] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        fp = cls.__dict__.get("fit_predict")
        if fp is not None and not getattr(fp, "_common_rules", False):
            cls.fit_predict = _with_common_rules(fp)

    def embedder(self) -> Optional[str]:
        """The embedder that made the features (methods whose weights imply one override this)."""
        return self.config.embedder

    def duplicate_sim(self) -> float:
        """The near-duplicate cosine in use (setting, else the embedder's measured value)."""
        from ..calibration import duplicate_sim

        c = self.config
        return float(c.duplicate_sim) if c.duplicate_sim is not None else duplicate_sim(self.embedder())

    @property
    def device(self) -> str:
        return resolve_device(self.config.device)

    # -- non-face crops (every method with uses_face_px) --------------------------------------
    def nonface_on(self) -> bool:
        """Whether the non-face test runs (``nonface_check``; None: when the embedder ships one)."""
        from .. import nonface

        c = self.config.nonface_check
        if c is False or not self.uses_face_px:
            return False
        if c is True and not nonface.has_test(self.embedder()):
            raise ValueError(f"nonface_check=true, but embedder {self.embedder()!r} ships no non-face test "
                             "(facecluster.nonface; dlib and mbf have one)")
        return nonface.has_test(self.embedder())

    def nonfaces(self, X: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """The crops that hold no face and their groups of copies
        (:func:`facecluster.nonface.nonface_groups`: (N,) bool, (N,) int64), or None when the
        test does not run. With ``join_duplicates`` off each crop is judged on its own."""
        from .. import nonface

        if X.ndim != 2 or X.shape[0] == 0 or not self.nonface_on():
            return None
        dup = self.duplicate_sim() if self.config.join_duplicates else None
        return nonface.nonface_groups(X, self.embedder(), dup, k=DUPLICATE_K, backend=self.config.knn_backend, device=self.device)

    # -- small-face rule (every method with uses_face_px) -------------------------------------
    def small_vote_floor(self) -> Optional[float]:
        """The small-face vote's cosine floor (None: no measured value, the rule is off)."""
        from ..calibration import SMALL_VOTE_SIM_BY_EMBEDDER

        c = self.config
        return float(c.small_min_sim) if c.small_min_sim is not None else SMALL_VOTE_SIM_BY_EMBEDDER.get(self.embedder() or "")

    def small_vote_temp(self) -> float:
        """The small-face vote's weight temperature (0: a plain count of the votes)."""
        from ..calibration import SMALL_VOTE_TEMP_BY_EMBEDDER

        c = self.config
        return float(c.small_vote_temp) if c.small_vote_temp is not None else SMALL_VOTE_TEMP_BY_EMBEDDER.get(self.embedder() or "", 0.0)

    def doubt_margin(self) -> float:
        """The doubtful-face margin below the non-face threshold (0: off)."""
        from ..calibration import DOUBT_MARGIN_BY_EMBEDDER

        c = self.config
        return float(c.doubt_margin) if c.doubt_margin is not None else DOUBT_MARGIN_BY_EMBEDDER.get(self.embedder() or "", 0.0)

    def doubtful_faces(self, X: np.ndarray) -> Optional[np.ndarray]:
        """(N,) bool: the faces the non-face test doubts (``doubt_margin``), or None when the rule
        is off or the embedder ships no test."""
        from .. import nonface

        margin = self.doubt_margin()
        if margin <= 0 or not self.uses_face_px:
            return None
        return nonface.nonfaces(X, self.embedder(), margin=margin)

    def small_faces(self, face_px: Optional[np.ndarray], n: int, X: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """(N,) bool: the faces the small-face rule sets apart (small crops and, given the (N, D)
        features ``X``, faces the non-face test doubts: :meth:`doubtful_faces`), or None when it does
        not apply (method without it, off, no vote floor, none set apart, or more than
        ``small_max_share`` of the faces; when small and doubted faces together are too many, the
        small ones alone, as before the doubt)."""
        cfg = self.config
        if not self.uses_face_px or n < 2 or self.small_vote_floor() is None:
            return None
        small = np.zeros(n, bool)
        if face_px is not None:
            px = np.asarray(face_px, np.float64)
            if px.shape != (n,):
                raise ValueError(f"face_px must have shape ({n},), got {px.shape}")
            if cfg.small_face_px > 0:
                small = np.isfinite(px) & (px < cfg.small_face_px)  # unknown size: treated as large

        def applies(mask: np.ndarray) -> bool:
            k = int(mask.sum())
            return 0 < k < n and k <= cfg.small_max_share * n

        doubt = self.doubtful_faces(X) if X is not None else None
        if doubt is not None and applies(small | doubt):
            return small | doubt
        # too many set apart with the doubted faces (a hard-lit batch): the small crops alone keep
        # the rule they had before doubts existed
        return small if applies(small) else None

    def _place_small(self, X: np.ndarray, big: np.ndarray, lab_big: np.ndarray, small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Small faces join the cluster small_share of their 10 nearest large faces (cosine >=
        the vote floor) belong to, counted by weight (``small_vote_temp``) or by number; the others
        become singletons. Returns the (N,) int64 labels, the indices of the small faces left alone
        and each one's mean cosine to its 10 nearest large faces (for :meth:`_cluster_rest`)."""
        from ..knn import knn

        cfg = self.config
        n = X.shape[0]
        with self._timed("small_faces"):
            k = min(SMALL_VOTE_K, len(big))
            sims, ids = knn(X[big], k, backend=cfg.knn_backend, device=self.device, query=X[small])
            voting = sims >= self.small_vote_floor()
            vote = np.where(voting, lab_big[ids], -1)
            temp = self.small_vote_temp()
            if temp > 0:
                # a near vote outweighs several weaker ones; the share is of all k neighbours' weight
                # (a face placed in another person's cluster had contested, weaker votes)
                weight = np.exp((sims.astype(np.float64) - 1.0) / temp)
                need = cfg.small_share * weight.sum(axis=1)
            else:
                weight = np.ones(sims.shape)
                need = np.full(len(small), float(np.ceil(cfg.small_share * k - 1e-9)))
            target = np.full(len(small), -1, np.int64)
            has = vote >= 0
            rows, labs = np.nonzero(has)[0], vote[has]
            if len(rows):
                pair, inv = np.unique(np.stack([rows, labs], 1), axis=0, return_inverse=True)
                tot = np.bincount(inv.reshape(-1), weights=weight[has], minlength=len(pair))
                # per face: the most (weight of) votes, ties to the smaller label (deterministic)
                order = np.lexsort((pair[:, 1], -tot, pair[:, 0]))
                pair, tot = pair[order], tot[order]
                first = np.unique(pair[:, 0], return_index=True)[1]
                ok = tot[first] >= need[pair[first, 0]]
                target[pair[first[ok], 0]] = pair[first[ok], 1]
            labels = np.empty(n, np.int64)
            labels[big] = lab_big
            lone = target < 0
            target[lone] = (lab_big.max() + 1 if len(lab_big) else 0) + np.arange(int(lone.sum()))
            labels[small] = target
            self._input_knn = self._duplicate_candidates(X, big, small, ids, sims)
        # the small faces left alone, and how much each looks like its nearest large faces
        return labels, small[lone], sims[lone].mean(axis=1)

    def small_rest_margin(self) -> Optional[float]:
        """How much closer a group of small faces must be to itself than to the large faces
        (cosine; None: no measured value for the embedder, the small faces stay alone)."""
        from ..calibration import SMALL_REST_MARGIN_BY_EMBEDDER

        c = self.config
        return float(c.small_rest_margin) if c.small_rest_margin is not None else SMALL_REST_MARGIN_BY_EMBEDDER.get(self.embedder() or "")

    def _cluster_rest(self, fit_predict, X: np.ndarray, labels: np.ndarray, rest: np.ndarray, rest_level: np.ndarray, least: int) -> np.ndarray:
        """The small faces left alone (``rest``; ``rest_level``: each one's mean cosine to its 10
        nearest large faces) clustered among themselves by the method's own
        ``fit_predict``; a cluster of >= ``least`` faces gets a new id when its faces are closer to
        each other than to the large faces (mean over its faces of: the mean cosine to its nearest
        10 members minus the mean cosine to its 10 nearest large faces, >= ``small_rest_margin``);
        the others stay alone. A person seen only from afar (all their faces small) beside people
        seen near was all singletons (a 40-px clip beside a 62-px one: 0.708 -> 0.985 BCubed F, a
        gap of 0.04-0.06); small photos of several people that no large face claims group as
        readily but sit as close to the large faces of those people (gap -0.003 on the training
        identities' every-style batch), so the gap, not the size, keeps them apart."""
        from ..knn import knn

        margin = self.small_rest_margin()
        if margin is None:
            return labels
        cache, before = self._input_knn, self.timings_
        self.timings_ = {}
        try:
            lab = np.unique(np.asarray(fit_predict(self, X[rest]), np.int64), return_inverse=True)[1]
        finally:
            sub, self.timings_, self._input_knn = self.timings_, before, cache
        for step, t in sub.items():  # the steps' times add up over both runs
            self.timings_[step] = self.timings_.get(step, 0.0) + t
        keep = np.bincount(lab)[lab] >= least
        if not keep.any():
            return labels
        with self._timed("small_faces"):
            sims, ids = knn(X[rest], min(SMALL_VOTE_K + 1, len(rest)), backend=self.config.knn_backend, device=self.device)
            same = (lab[ids] == lab[:, None]) & (ids != np.arange(len(rest))[:, None])
            n_same = same.sum(axis=1)
            own = np.where(same, sims, 0.0).sum(axis=1) / np.maximum(n_same, 1)
            has = n_same > 0  # a face whose nearest faces are all in other groups does not vote
            gap = np.where(has, own - rest_level, 0.0)
            ng = int(lab.max()) + 1
            mean_gap = np.bincount(lab, weights=gap, minlength=ng) / np.maximum(np.bincount(lab, weights=has, minlength=ng), 1)
            keep &= mean_gap[lab] >= margin
        labels = labels.copy()
        labels[rest[keep]] = int(labels.max()) + 1 + lab[keep]
        return labels

    def _duplicate_candidates(self, X, big, small, ids_sb, sims_sb) -> np.ndarray:
        """(N, DUPLICATE_K) candidate pairs for the near-duplicate rule (-1: none), from the
        searches already made (large faces among large, by the method or here; small among
        large) plus one search of the small faces among themselves, instead of a new search of
        all N faces."""
        from ..knn import knn

        n, kd = X.shape[0], DUPLICATE_K
        cand = np.full((n, kd), -1, np.int64)
        ids_bb = self._input_knn  # the method's kNN of the large faces, ids into `big`
        if ids_bb is None or ids_bb.shape[0] != len(big):
            ids_bb = knn(X[big], kd, backend=self.config.knn_backend, device=self.device)[1]
        w = min(kd, ids_bb.shape[1])
        cand[big, :w] = big[ids_bb[:, :w]]
        sims_ss, ids_ss = knn(X[small], kd, backend=self.config.knn_backend, device=self.device)
        both_ids = np.concatenate([big[ids_sb], small[ids_ss]], axis=1)
        both_sims = np.concatenate([sims_sb, sims_ss], axis=1)
        top = np.argsort(-both_sims, axis=1, kind="stable")[:, :kd]
        cand[small, : top.shape[1]] = np.take_along_axis(both_ids, top, axis=1)
        return cand

    def fit_predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (recorded in labels-<method>.json and the report); the near-duplicate
        cosine and the small-face vote's weights resolved for the embedder."""
        d = self.config.model_dump(mode="json")
        d["duplicate_sim"] = self.duplicate_sim()
        d["small_vote_temp"] = self.small_vote_temp()
        d["doubt_margin"] = self.doubt_margin()
        if self.uses_face_px:  # the shipped non-face test in use, for flags or doubt (a new one reclusters)
            from .. import nonface

            used = self.nonface_on() or (self.doubt_margin() > 0 and nonface.has_test(self.embedder()))
            d["nonface_test"] = nonface.fingerprint(self.embedder()) if used else None
        return d

    # -- helpers for subclasses --------------------------------------------------------------
    @contextmanager
    def _timed(self, step: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.timings_[step] = self.timings_.get(step, 0.0) + dt
            # as it happens (FACECLUSTER_LOG=INFO): a run stopped midway still shows its steps
            log.info("%s: step %s took %.2f s", self.name, step, dt)

    @staticmethod
    def _check_input(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"features must be a 2-D (N, D) array, got shape {X.shape}")
        if X.shape[0] and not np.isfinite(X).all():
            raise ValueError("features contain NaN or infinite values")
        return X


# --------------------------------------------------------------------------------------------
# near-duplicate rule (every method)
# --------------------------------------------------------------------------------------------
def _with_common_rules(fit_predict):
    import functools

    def faces_only(self: "Clusterer", X: np.ndarray, face_px: Optional[np.ndarray]) -> np.ndarray:
        """The small-face and near-duplicate rules around the method, on crops that hold a face."""
        small = self.small_faces(face_px, X.shape[0], X) if X.ndim == 2 else None
        if small is None:
            labels = fit_predict(self, X)
        else:
            big = np.flatnonzero(~small)
            lab_big = np.asarray(fit_predict(self, X[big]), np.int64)
            labels, rest, rest_level = self._place_small(X, big, lab_big, np.flatnonzero(small))
            least = self.config.small_rest_min
            if least is not None and len(rest) >= least:
                labels = self._cluster_rest(fit_predict, X, labels, rest, rest_level, least)
        if not self.config.join_duplicates or len(labels) < 2:
            return labels
        with self._timed("duplicates"):
            return join_near_duplicates(
                X, labels, self.duplicate_sim(), knn_cache=self._input_knn,
                backend=self.config.knn_backend, device=self.device,
            )

    @functools.wraps(fit_predict)
    def wrapped(self: "Clusterer", X: np.ndarray, face_px: Optional[np.ndarray] = None) -> np.ndarray:
        # re-entrancy guard: a subclass's fit_predict may call its parent's (both wrapped)
        if getattr(self, "_fitting", False):
            return fit_predict(self, X)
        self._fitting = True
        self._input_knn = None
        try:
            X = np.asarray(X)
            t = time.perf_counter()
            found = self.nonfaces(X)
            t_nonface = time.perf_counter() - t
            self.nonface_ = np.zeros(X.shape[0] if X.ndim == 2 else 0, bool) if found is None else found[0]
            if not self.nonface_.any():
                labels = faces_only(self, X, face_px)
            else:
                # crops with no face never join anyone: the faces are clustered without them, then
                # each non-face (with its copies) gets a cluster of its own
                nonface, group = found
                keep = np.flatnonzero(~nonface)
                labels = np.empty(X.shape[0], np.int64)
                lab = np.asarray(faces_only(self, X[keep], None if face_px is None else np.asarray(face_px)[keep]), np.int64) if len(keep) else np.zeros(0, np.int64)
                labels[keep] = lab
                start = int(lab.max()) + 1 if len(lab) else 0
                labels[nonface] = start + group[nonface]
            if found is not None:  # after the method: its fit_predict starts its timings afresh
                self.timings_["nonfaces"] = t_nonface
            return labels
        finally:
            self._fitting = False
            self._input_knn = None

    wrapped._common_rules = True
    return wrapped


#: neighbours searched for near-duplicates (self included); more twins than this still end up
#: together because each one's list reaches some of the others (connected components)
DUPLICATE_K = 8
#: larger faces that vote for a small face's cluster (the small-face rule)
SMALL_VOTE_K = 10


def join_near_duplicates(
    X: np.ndarray,
    labels: np.ndarray,
    min_sim: float,
    *,
    knn_cache: np.ndarray | None = None,
    k: int = DUPLICATE_K,
    backend: str = "auto",
    device: str = "cpu",
) -> np.ndarray:
    """Merge the clusters of faces whose cosine similarity is >= ``min_sim``.

    Parameters
    ----------
    X : (N, D) float32 features (L2-normalised here; the cosine is that of the input rows).
    labels : (N,) int cluster ids from a method (any integers).
    min_sim : near-duplicate cosine; pairs at or above it end in one cluster.
    knn_cache : optional (N, k') int ids of a kNN the method already computed (self may be
        included); its first ``k`` columns are the candidate pairs, whose cosine is computed
        here on the L2-normalised ``X``.

    Returns
    -------
    (N,) int64 labels: ``labels`` unchanged where no near-duplicate pair spans two clusters;
    clusters joined by such pairs (connected components over clusters) take the smallest id
    among them, so the result is deterministic and untouched clusters keep their ids.
    """
    from ..calibration import pair_cosine
    from ..graph import components
    from ..knn import knn, l2_normalize

    labels = np.asarray(labels)
    n = labels.shape[0]
    if n < 2:
        return labels.astype(np.int64)
    xn = l2_normalize(np.asarray(X, np.float32))
    if knn_cache is not None and knn_cache.shape[0] == n:
        ids = np.asarray(knn_cache)[:, :k]
        rows = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
        cols = ids.reshape(-1).astype(np.int64)
        sims = np.full(len(cols), -np.inf, np.float32)
        ok = cols >= 0
        sims[ok] = pair_cosine(xn, rows[ok], cols[ok])
    else:
        sims, ids = knn(xn, min(k, n), normalize=False, backend=backend, device=device)
        rows = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
        cols = ids.reshape(-1).astype(np.int64)
    # float32 rounding: identical rows can score 1 - 1e-7
    hit = (cols >= 0) & (cols != rows) & (sims.reshape(-1) >= min_sim - 1e-6)
    labels = labels.astype(np.int64)
    rows, cols = rows[hit], cols[hit]
    cross = labels[rows] != labels[cols]
    if not cross.any():
        return labels
    uniq, lab = np.unique(labels, return_inverse=True)
    lab = lab.reshape(-1)
    comp = components(len(uniq), lab[rows[cross]], lab[cols[cross]])
    # each joined group takes its smallest original id (uniq is sorted: first member = smallest)
    smallest = np.full(int(comp.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, comp, uniq)
    return smallest[comp[lab]]
