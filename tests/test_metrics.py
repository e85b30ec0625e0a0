import numpy as np
import pytest

from facecluster.metrics import bcubed, cluster_purity, evaluate, nmi, pairwise, singletons_to_unique


def test_pairwise_hand_worked():
    # gt: {0,1,2} {3,4}; pred: {0,1} {2,3,4}
    gt = [0, 0, 0, 1, 1]
    pred = [0, 0, 1, 1, 1]
    # contingency [[2,1],[0,2]]: TP = 4+1+4-5 = 4; pred pairs = 4+9-5 = 8; gt pairs = 9+4-5 = 8
    p, r, f = pairwise(gt, pred)
    assert p == pytest.approx(0.5) and r == pytest.approx(0.5) and f == pytest.approx(0.5)


def test_bcubed_hand_worked():
    gt = [0, 0, 0, 1, 1]
    pred = [0, 0, 1, 1, 1]
    # precision: items 0,1: 2/2; item 2: 1/3; items 3,4: 2/3 → (1+1+1/3+2/3+2/3)/5
    # recall: items 0,1: 2/3; item 2: 1/3; items 3,4: 2/2 → (2/3+2/3+1/3+1+1)/5
    p, r, f = bcubed(gt, pred)
    assert p == pytest.approx((2 + 1 / 3 + 4 / 3) / 5)
    assert r == pytest.approx((4 / 3 + 1 / 3 + 2) / 5)
    assert f == pytest.approx(2 * p * r / (p + r))


def test_perfect_and_all_singletons():
    gt = [0, 0, 1, 1, 2]
    assert pairwise(gt, gt) == (1.0, 1.0, 1.0)
    assert bcubed(gt, [5, 5, 7, 7, 9]) == pytest.approx((1.0, 1.0, 1.0))
    assert nmi(gt, [5, 5, 7, 7, 9]) == pytest.approx(1.0)
    p, r, _ = bcubed(gt, [0, 1, 2, 3, 4])
    assert p == 1.0 and r == pytest.approx((0.5 * 4 + 1) / 5)
    assert pairwise(gt, [0, 1, 2, 3, 4])[1] == 0.0


def test_nmi_matches_sklearn_arithmetic():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(5):
        g, p = rng.integers(0, 15, 300), rng.integers(0, 25, 300)
        assert nmi(g, p) == pytest.approx(sk.normalized_mutual_info_score(g, p, average_method="arithmetic"), abs=1e-12)
        pp, pr, _ = pairwise(g, p)
        assert np.sqrt(pp * pr) == pytest.approx(sk.fowlkes_mallows_score(g, p), abs=1e-12)


def test_unclustered_become_singletons_not_one_cluster():
    gt = [0, 1, 2, 3]
    pred = [-1, -1, -1, -1]
    assert list(singletons_to_unique(pred)) == [0, 1, 2, 3]
    res = evaluate(gt, pred)
    assert res["bcubed_precision"] == 1.0 and res["n_clusters"] == 4


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        pairwise([0, 1], [0])


def test_cluster_purity_counts_faces_in_mixed_clusters():
    # cluster 0: 10 faces, 5+5 of two people (largest identity = half: not mixed, share must be < 0.5)
    # cluster 1: 12 faces of 4 people, 3 each (mixed); cluster 2: 9 faces of 9 people (too small to count)
    gt = [0] * 5 + [1] * 5 + [2, 3, 4, 5] * 3 + list(range(10, 19))
    pred = [0] * 10 + [1] * 12 + [2] * 9
    r = cluster_purity(gt, pred)
    assert r == {"largest_cluster": 12, "largest_cluster_ids": 4, "mixed_clusters": 1, "mixed_faces": 12}
    assert evaluate(gt, pred)["mixed_faces"] == 12
    pure = cluster_purity([0] * 20, [-1] * 20)  # all unclustered: 20 singletons, nothing mixed
    assert pure == {"largest_cluster": 1, "largest_cluster_ids": 1, "mixed_clusters": 0, "mixed_faces": 0}
