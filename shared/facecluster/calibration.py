"""Feature calibration: make cosine similarities of an embedder mean something.

dlib's descriptors are far from zero-mean: cosine similarities between *different* people are
mostly above 0.85, so thresholds from papers (tuned on zero-mean-ish features) mean nothing on
them. Subtracting a fixed mean vector estimated once on many faces (shipped with the embedder,
``weights/dlib_mean.npy``) and then L2-normalising spreads different-person similarities around
zero while same-person pairs stay high. The mean is a fixed property of the embedder, not of the
batch being clustered, so results do not depend on who else is in the batch.
"""

from __future__ import annotations

import numpy as np

from .knn import l2_normalize


def prepare_features(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """(N, D) raw descriptors → (N, D) float32: L2-normalised, minus ``mean`` (itself a mean of
    L2-normalised descriptors), L2-normalised again. Without ``mean``: just L2-normalised."""
    x = np.asarray(x, dtype=np.float32)
    if mean is not None:
        # the mean is estimated on L2-normalised descriptors, so compare like with like
        x = l2_normalize(x)
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        if mean.shape[0] != x.shape[1]:
            raise ValueError(f"calibration mean has dimension {mean.shape[0]}, features have {x.shape[1]}")
        x = x - mean
    return l2_normalize(x)


def calibration_path(embedder: str):
    """Where the shipped calibration mean of an embedder lives (``weights/<name>_mean.npy``)."""
    from pathlib import Path

    return Path(__file__).parent / "weights" / f"{embedder}_mean.npy"


def calibration_mean(embedder: str | None) -> np.ndarray | None:
    """The shipped mean vector for ``embedder`` (None when it ships none, e.g. hfsoftmax/arcface,
    whose features are already roughly zero-mean)."""
    if not embedder:
        return None
    p = calibration_path(embedder)
    return np.load(p).astype(np.float32) if p.exists() else None
