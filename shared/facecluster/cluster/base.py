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


class Clusterer:
    """Subclass with ``name``, ``summary``, ``Config`` and ``fit_predict``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[ClusterConfig]] = ClusterConfig

    def __init__(self, config: ClusterConfig | None = None, **settings: Any):
        if config is not None and settings:
            raise TypeError("pass either a config object or keyword settings, not both")
        self.config = config if config is not None else self.Config(**settings)
        self.timings_: dict[str, float] = {}

    @property
    def device(self) -> str:
        return resolve_device(self.config.device)

    def fit_predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (recorded in labels-<method>.json and the report)."""
        return self.config.model_dump(mode="json")

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
