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


class ClusterConfig(BaseModel):
    """Settings common to every method."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    device: str = Field("auto", description="auto | cpu | cuda[:i]: where kNN and networks run.")
    knn_backend: str = Field("auto", description="auto | faiss | faiss-gpu | torch (exact search in every case; auto: faiss-GPU on CUDA, on CPU faiss below 30k faces and torch above, measured faster there).")
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
    every method, present and future, without each one re-implementing it. A method that has
    already computed a kNN of its faces (in any feature space where near-duplicates are also
    nearest neighbours, e.g. mean-centred features) may leave its (N, k) ids in
    ``self._input_knn`` to spare the rule its own kNN search (measured: 4.5 s of extra kNN at
    13k faces on the loaded 2-core box).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[ClusterConfig]] = ClusterConfig

    def __init__(self, config: ClusterConfig | None = None, **settings: Any):
        if config is not None and settings:
            raise TypeError("pass either a config object or keyword settings, not both")
        self.config = config if config is not None else self.Config(**settings)
        self.timings_: dict[str, float] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        fp = cls.__dict__.get("fit_predict")
        if fp is not None and not getattr(fp, "_joins_duplicates", False):
            cls.fit_predict = _with_duplicate_rule(fp)

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

    def fit_predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (recorded in labels-<method>.json and the report); the near-duplicate
        cosine resolved for the embedder."""
        d = self.config.model_dump(mode="json")
        d["duplicate_sim"] = self.duplicate_sim()
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
def _with_duplicate_rule(fit_predict):
    import functools

    @functools.wraps(fit_predict)
    def wrapped(self: "Clusterer", X: np.ndarray, **kw: Any) -> np.ndarray:
        # re-entrancy guard: a subclass's fit_predict may call its parent's (both wrapped)
        if getattr(self, "_fitting", False):
            return fit_predict(self, X, **kw)
        self._fitting = True
        self._input_knn = None
        try:
            labels = fit_predict(self, X, **kw)
            if not self.config.join_duplicates or len(labels) < 2:
                return labels
            with self._timed("duplicates"):
                return join_near_duplicates(
                    X, labels, self.duplicate_sim(), knn_cache=self._input_knn,
                    backend=self.config.knn_backend, device=self.device,
                )
        finally:
            self._fitting = False
            self._input_knn = None

    wrapped._joins_duplicates = True
    return wrapped


#: neighbours searched for near-duplicates (self included); more twins than this still end up
#: together because each one's list reaches some of the others (connected components)
DUPLICATE_K = 8


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
