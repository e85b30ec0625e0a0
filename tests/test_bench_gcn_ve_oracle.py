"""bench/gcn_ve_oracle.py: gcn-ve with perfect networks (GCN-V's confidence and GCN-E's choice from
the labels), the ceiling study of docs/benchmarks/gcn_ve.md §17."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _common  # noqa: E402
import gcn_ve_oracle as go  # noqa: E402

from facecluster.cluster import gcn_e, gcn_v  # noqa: E402


def test_oracle_confidence_is_gcn_v_training_target():
    # the "v" oracle hands the tree GCN-V's own training target (train.gcn_ve.s_nbr) on the
    # stage's input kNN lists: +sim for the face's person, -sim for the others
    from facecluster.train.gcn_ve import s_nbr

    x, y = _people()
    fitted: list = []
    with go.patched("v", intersect_default=False):
        _common.run_method("gcn-ve", x, y, "dlib", clusterer_out=fitted, refine=False)
    c = fitted[0]
    ids, sims = c.knn_
    assert (ids >= 0).all()
    np.testing.assert_array_equal(c.conf_, s_nbr(ids, sims, y))
    same = y[ids] == y[:, None]
    assert (c.conf_[same.sum(1) > same.shape[1] / 2] > 0).all()  # a face among its own scores positive


def test_oracle_peaks_take_the_nearest_higher_candidate_of_their_own_person_or_none():
    # 4 faces; conf rises with the index; face 0's candidates (higher conf): 3 (other), 2 (same), 1 (same)
    ids = np.array([[0, 3, 2, 1], [1, 3, 2, 0], [2, 3, 1, 0], [3, 2, 1, 0]])
    sims = np.tile(np.array([1.0, 0.9, 0.8, 0.7], np.float32), (4, 1))
    conf = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    y = np.array([0, 0, 0, 1])
    peak0, psim0 = np.full(4, 3), np.full(4, 0.5, np.float32)  # what the network chose: the other person
    peak, psim = go.oracle_peaks(ids, sims, conf, y, peak0, psim0, ignore_ratio=0.0)
    # 0 -> 2 (nearest own higher, not 3); 1 -> 2; 2 has only 3 above it (one candidate: not judged,
    # keeps the network's); 3 has no higher candidate (not judged either)
    assert peak.tolist() == [2, 2, 3, 3]
    np.testing.assert_allclose(psim, [0.8, 0.8, 0.5, 0.5])
    # a face judged with no own-person candidate becomes a root
    y2 = np.array([0, 1, 2, 3])
    peak, psim = go.oracle_peaks(ids, sims, conf, y2, peak0, psim0, ignore_ratio=0.0)
    assert peak[:2].tolist() == [-1, -1] and np.isneginf(psim[:2]).all()


def test_intersect_keeps_faces_together_only_where_both_partitions_do():
    a, b = np.array([0, 0, 0, 1, 1]), np.array([5, 5, 6, 6, 6])
    got = go.intersect(a, b)
    assert got[0] == got[1] and len({got[1], got[2], got[3]}) == 3 and got[3] == got[4]


def _people(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8 people x 10 faces of 128-d; people 2k and 2k+1 are look-alikes (centre cosine ~0.96)."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for pair in range(4):
        base = rng.normal(size=128)
        for p in range(2):
            centre = base + 0.2 * rng.normal(size=128)
            x.append(centre + 0.15 * rng.normal(size=(10, 128)))
            y += [2 * pair + p] * 10
    return np.concatenate(x).astype(np.float32), np.array(y)


def test_perfect_networks_on_every_face_link_only_within_a_person_and_patches_are_undone():
    x, y = _people()
    originals = (_common.run_method, gcn_v.GCNVClusterer._gcn_v_stage, gcn_e.gcn_e_peaks, gcn_v.GCNVClusterer._refine)
    with go.patched("ve", intersect_default=False):
        got: list = []
        r = _common.run_method("gcn-ve", x, y, "dlib", labels_out=got, ignore_ratio=0.0, refine=False)
    assert r["bcubed_precision"] == 1.0  # every kept link is a same-person one
    assert r["n_clusters"] < len(y) / 2  # and links were made (not all singletons)
    assert (_common.run_method, gcn_v.GCNVClusterer._gcn_v_stage, gcn_e.gcn_e_peaks, gcn_v.GCNVClusterer._refine) == originals
