"""The near-duplicate rule every method gets (``cluster/base.py``, issue 11)."""

from __future__ import annotations

import numpy as np
import pytest

from facecluster.calibration import DUPLICATE_SIM_BY_EMBEDDER, duplicate_sim
from facecluster.cluster import METHODS, get_clusterer
from facecluster.cluster.base import join_near_duplicates


def test_join_near_duplicates_hand_case():
    X = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0.001], [0, 0, 1]], np.float32)
    lab = np.array([5, 7, 3, 9, 1])
    out = join_near_duplicates(X, lab, 0.999, backend="faiss")
    # the pairs (0, 1) and (2, 3) join, taking the smaller id; face 4 keeps its id
    np.testing.assert_array_equal(out, [5, 5, 3, 3, 1])
    # nothing to join: labels come back unchanged
    np.testing.assert_array_equal(join_near_duplicates(X[[0, 2, 4]], lab[[0, 2, 4]], 0.999, backend="faiss"), [5, 3, 1])
    for n in range(3):
        assert join_near_duplicates(X[:n], lab[:n], 0.999).shape == (n,)


def test_many_twins_end_in_one_cluster():
    """More copies than the rule's k: still one cluster (each copy's list reaches others)."""
    rng = np.random.default_rng(0)
    X = np.concatenate([np.repeat(rng.normal(size=(1, 16)), 30, 0), rng.normal(size=(20, 16))]).astype(np.float32)
    lab = np.arange(50)
    out = join_near_duplicates(X, lab, 0.9999, backend="faiss")
    assert len(np.unique(out[:30])) == 1 and len(np.unique(out[30:])) == 20


@pytest.mark.parametrize("method", ["threshold", "hac", "infomap"])
def test_every_method_gets_the_rule(method):
    """Copies a method may split (settings that link nothing) are joined by default, and left
    alone with join_duplicates=false."""
    rng = np.random.default_rng(1)
    X = np.concatenate([np.repeat(rng.normal(size=(1, 32)), 4, 0), rng.normal(size=(10, 32))]).astype(np.float32)
    strict = {"threshold": {"min_sim": 1.01}, "hac": {"distance": -1.0}, "infomap": {"min_sim": 1.0, "merge_fragments": False}}[method]
    kw = strict
    off = get_clusterer(method, device="cpu", join_duplicates=False, **kw).fit_predict(X)
    on = get_clusterer(method, device="cpu", **kw).fit_predict(X)
    if method != "infomap":  # infomap may link the copies itself (cosine 1.0 >= min_sim)
        assert len(np.unique(off)) == len(X)
    assert len(np.unique(on[:4])) == 1
    assert len(np.unique(on)) == len(np.unique(off)) - len(np.unique(off[:4])) + 1


def test_measured_values_and_registry():
    assert duplicate_sim("dlib") == DUPLICATE_SIM_BY_EMBEDDER["dlib"]
    assert duplicate_sim("unknown-embedder") > 0.999
    for name in METHODS:
        assert "join_duplicates" in type(get_clusterer(name).config).model_fields
