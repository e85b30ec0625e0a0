"""Crops with no face in them: a detector's false positives (a shirt, a wall, a hand, a logo).

A face-recognition network still gives such a crop a descriptor, and dlib's descriptors of
non-faces crowd into one small region of its space (held-out non-faces: median cosine 0.97 to
their mean; 99.9 % of clean faces below 0.93). Left alone they form one big "person" of hundreds of unrelated crops
(measured: 342 of 400 background patches in one cluster beside lfw-val's faces). So every method
sets them apart before clustering (``cluster/base.py``, setting ``nonface_check``): each one gets
a cluster of its own, and the output record says ``"no_face": true``.

The test is a linear score on the L2-normalised descriptor, fitted per embedder by
``bench/nonface.py`` (faces: the training identities in every training crop style; non-faces:
crops cut from the same photos outside the face and synthetic patterns) with its threshold at the
score that at most 1 in 10,000 training faces reach. Shipped as ``weights/<embedder>_nonface.npz``
(w, b, threshold); embedders without one have no test (nothing is flagged).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

WEIGHTS = Path(__file__).resolve().parent / "weights"


def weights_path(embedder: Optional[str]) -> Path:
    return WEIGHTS / f"{embedder or ''}_nonface.npz"


@lru_cache(maxsize=8)
def load_test(embedder: Optional[str]) -> Optional[tuple[np.ndarray, float, float]]:
    """(w (D,), b, threshold) shipped for the embedder, or None."""
    p = weights_path(embedder)
    if not embedder or not p.is_file():
        return None
    with np.load(p) as z:
        return z["w"].astype(np.float32), float(z["b"]), float(z["threshold"])


def has_test(embedder: Optional[str]) -> bool:
    return load_test(embedder) is not None


def scores(X: np.ndarray, embedder: Optional[str]) -> Optional[np.ndarray]:
    """(N,) non-face scores of (N, D) descriptors (L2-normalised here), or None without a test
    (or for features of another width than the test's, e.g. another embedder's)."""
    t = load_test(embedder)
    X = np.asarray(X, np.float32)
    if t is None or X.ndim != 2 or X.shape[1] != t[0].shape[0]:
        return None
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norm, 1e-12)) @ t[0] + t[1]


def nonfaces(X: np.ndarray, embedder: Optional[str]) -> Optional[np.ndarray]:
    """(N,) bool: the crops that look like no face, or None when the embedder has no test."""
    s = scores(X, embedder)
    if s is None:
        return None
    return s >= load_test(embedder)[2]


def fingerprint(embedder: Optional[str]) -> Optional[str]:
    """Content hash of the shipped test (a new test reclusters), None without one."""
    import hashlib

    p = weights_path(embedder)
    return hashlib.sha256(p.read_bytes()).hexdigest() if embedder and p.is_file() else None


def save_test(embedder: str, w: np.ndarray, b: float, threshold: float, meta: dict[str, Any]) -> Path:
    """Write ``weights/<embedder>_nonface.npz`` and its ``.json`` record (``bench/nonface.py --write``)."""
    p = weights_path(embedder)
    np.savez(p, w=np.asarray(w, np.float32), b=np.float64(b), threshold=np.float64(threshold))
    p.with_suffix(".json").write_text(json.dumps({"embedder": embedder, "b": float(b), "threshold": float(threshold), **meta}, indent=1) + "\n")
    load_test.cache_clear()
    return p
