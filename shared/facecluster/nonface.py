"""Crops with no face in them: a detector's false positives (a shirt, a wall, a hand, a logo).

A face-recognition network still gives such a crop a descriptor, and dlib's descriptors of
non-faces crowd into one small region of its space (held-out non-faces: median cosine 0.97 to
their mean; 99.9 % of clean faces below 0.93). Left alone they form one big "person" of hundreds of unrelated crops
(measured: 342 of 400 background patches in one cluster beside lfw-val's faces; with mbf, 715 of
1,083 held-out non-faces shared clusters with faces). So every method sets them apart before
clustering (``cluster/base.py``, setting ``nonface_check``): each one gets a cluster of its own
(shared with its copies only: :func:`nonface_groups`), and the output record says
``"no_face": true``.

The test is a linear score on the L2-normalised descriptor, fitted per embedder by
``bench/nonface.py`` (faces: the training identities in every training crop style; non-faces:
crops cut from the same photos outside the face and synthetic patterns) with its threshold at the
score that at most 1 in 10,000 training faces reach. Shipped as ``weights/<embedder>_nonface.npz``
(w, b, threshold): dlib and mbf (model cards beside them); embedders without one have no test
(nothing is flagged).
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


def nonfaces(X: np.ndarray, embedder: Optional[str], margin: float = 0.0) -> Optional[np.ndarray]:
    """(N,) bool: the crops that look like no face, or None when the embedder has no test.
    ``margin`` (the score's units): also the crops scoring up to that much below the threshold
    (the faces the test *doubts*, ``cluster/base.py``'s ``doubt_margin``)."""
    s = scores(X, embedder)
    if s is None:
        return None
    return s >= load_test(embedder)[2] - margin


#: cosine at and above which two crops with no face count as copies of one image. dlib's
#: descriptors of non-faces crowd so closely that distinct ones reach the faces' near-duplicate
#: cosine (held-out non-faces: 182 of 586k pairs >= 0.995, chaining 52 unrelated crops into one
#: group) as often as re-encoded copies do (median 0.996-0.999), so only copies of one decoded
#: image (cosine 1) are grouped
COPY_SIM = 0.9999


def nonface_groups(
    X: np.ndarray,
    embedder: Optional[str],
    dup_sim: Optional[float],
    *,
    k: int = 8,
    backend: str = "auto",
    device: str = "cpu",
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The crops that hold no face, with copies judged as one, and their groups of copies.

    Copies of one image (cosine >= :data:`COPY_SIM`) get one answer and one cluster. At the
    boundary, a crop the test flags and its near-duplicate it does not (cosine >= ``dup_sim``,
    the near-duplicate rule's: a re-encoded copy of a crop that scores near the threshold) are
    judged together too: each crop and its nearest near-duplicate across the boundary, and the
    copies of both, form a group that holds no face when the mean of its members' scores reaches
    the threshold, else every member is a face (and the near-duplicate rule keeps the pair in one
    cluster). Distinct non-faces are not grouped by ``dup_sim``: they crowd above it.

    Parameters
    ----------
    X : (N, D) float32 descriptors (L2-normalised here).
    embedder : whose shipped test to use.
    dup_sim : near-duplicate cosine; None: each crop judged on its own, none grouped.
    k : neighbours searched per crop for its copies and near-duplicates (self included).

    Returns
    -------
    None without a test for the embedder (or for features of another width); else
    ``(flags, group)``: (N,) bool, the crops that hold no face, and (N,) int64, one id per
    group of non-faces, 0.. in order of first appearance (-1 for faces).
    """
    s = scores(X, embedder)
    if s is None:
        return None
    thr = load_test(embedder)[2]
    flags = s >= thr
    n = len(flags)
    group = np.full(n, -1, np.int64)
    if not flags.any():
        return flags, group
    if dup_sim is None or n < 2:
        group[flags] = np.arange(int(flags.sum()))
        return flags, group
    from .graph import components
    from .knn import knn, l2_normalize

    xn = l2_normalize(np.asarray(X, np.float32))
    copy_sim = max(COPY_SIM, float(dup_sim))
    reach, searched = flags.copy(), np.zeros(n, bool)
    src, dst = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    while True:  # from every flagged crop to its copies and boundary twins, and on (few rounds)
        q = np.flatnonzero(reach & ~searched)
        if not len(q):
            break
        searched[q] = True
        sims, ids = knn(xn, min(k, n), query=xn[q], normalize=False, backend=backend, device=device)
        # float32 rounding: identical rows can score 1 - 1e-7
        other = (ids >= 0) & (ids != q[:, None])
        copy = other & (sims >= copy_sim - 1e-6)
        across = other & (sims >= dup_sim - 1e-6) & (flags[np.clip(ids, 0, n - 1)] != flags[q][:, None]) & ~copy
        # each crop's nearest twin across the boundary only: a chain of boundary pairs would glue
        # distinct crops as the dense non-faces do
        first = across & (np.cumsum(across, axis=1) == 1)
        r, c = np.nonzero(copy | first)
        src.append(q[r])
        dst.append(ids[r, c].astype(np.int64))
        reach[dst[-1]] = True
    comp = components(n, np.concatenate(src), np.concatenate(dst))
    nc = int(comp.max()) + 1
    mean = np.bincount(comp, weights=s, minlength=nc) / np.bincount(comp, minlength=nc)
    flags = reach & (mean[comp] >= thr)
    if flags.any():
        # one id per group, numbered by first appearance (comp is numbered by smallest member)
        group[flags] = np.unique(comp[flags], return_inverse=True)[1].reshape(-1)
    return flags, group


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
