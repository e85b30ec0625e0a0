"""Issue 12 (clustering at scale): the fp16 candidate kNN equals the exact search, the cheaper
tie ordering and Infomap hand-off change nothing, and bench/cluster_scale.py runs end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from facecluster import knn as knn_mod
from facecluster.knn import _knn_torch, _knn_torch_fp16, _sort_ties, l2_normalize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import cluster_scale  # noqa: E402


@pytest.fixture(scope="module")
def faces():
    x, y = cluster_scale.synthetic(1500, seed=5)
    return l2_normalize(x), y


def _same_up_to_rounding(a, b, tol=1e-6):
    """kNN lists equal except neighbours whose similarities tie within float rounding swap."""
    (sa, ia), (sb, ib) = a, b
    np.testing.assert_allclose(sa, sb, atol=tol)
    diff = ia != ib
    if diff.any():
        # every differing slot must hold a near-tie in the exact lists
        r, c = np.nonzero(diff)
        near = np.zeros(len(r), bool)
        for d in (-1, 1):
            cc = np.clip(c + d, 0, sa.shape[1] - 1)
            near |= np.abs(sa[r, c] - sa[r, cc]) <= tol
        assert near.all()
        # the same neighbours overall, apart from the last column's near-ties
        assert (np.sort(ia[:, :-1], 1) == np.sort(ib[:, :-1], 1)).mean() > 0.999


@pytest.mark.parametrize("k", [1, 40, 100])
def test_fp16_candidates_equal_exact_search(faces, k):
    x, _ = faces
    exact = _sort_ties(*_knn_torch(x, x, k, "cpu", 512))
    fast = _sort_ties(*_knn_torch_fp16(x, x, k, "cpu"))
    _same_up_to_rounding(exact, fast)
    assert (fast[1][:, 0] == np.arange(len(x))).all()


def test_fp16_unproven_rows_are_searched_again(faces, monkeypatch):
    x, _ = faces
    # an error bound so large that no row is proven: every row takes the fp32 search
    monkeypatch.setattr(knn_mod, "FP16_SCORE_ERR", 10.0)
    exact = _sort_ties(*_knn_torch(x, x, 30, "cpu", 512))
    fast = _sort_ties(*_knn_torch_fp16(x, x, 30, "cpu"))
    np.testing.assert_array_equal(exact[1], fast[1])


def test_fp16_path_falls_back_for_non_unit_vectors():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 16)) * 3).astype(np.float32)  # not normalised: no error bound
    exact = _sort_ties(*_knn_torch(x, x, 20, "cpu", 128))
    fast = _sort_ties(*_knn_torch_fp16(x, x, 20, "cpu"))
    np.testing.assert_array_equal(exact[1], fast[1])
    np.testing.assert_array_equal(exact[0], fast[0])


@pytest.mark.parametrize("n", [0, 1, 3, 5])
def test_fp16_tiny_inputs(n):
    x = l2_normalize(np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)) if n else np.zeros((0, 8), np.float32)
    if n == 0:
        return
    s, i = _sort_ties(*_knn_torch_fp16(x, x, min(4, n), "cpu"))
    assert (i[:, 0] == np.arange(n)).all() and s.shape == (n, min(4, n))


def test_sort_ties_only_touching_tied_rows_equals_full_lexsort():
    rng = np.random.default_rng(3)
    sims = -np.sort(-rng.integers(0, 6, size=(500, 12)).astype(np.float32) / 5, axis=1)  # many ties
    sims[::7] = -np.sort(-rng.random((len(sims[::7]), 12)).astype(np.float32), axis=1)  # rows without
    ids = rng.permutation(500 * 12).reshape(500, 12).astype(np.int64)
    order = np.lexsort((ids, -sims), axis=1)
    want = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    got = _sort_ties(sims.copy(), ids.copy())
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])


def test_infomap_numpy_handoff_same_partition_as_tuples(faces, tmp_path):
    from infomap import Infomap

    from facecluster.cluster import get_clusterer

    x, _ = faces
    c = get_clusterer(
        "infomap", device="cpu", embedder="dlib", merge_fragments=False, attach_max_size=0, attach_frac=0, join_duplicates=False,
        doubt_margin=0,
    )  # Infomap alone, no post-steps (nor the doubted faces' rule: 4 % of synthetic faces are doubted)
    lab = c.fit_predict(x)
    # the hand-off as it was: a Python loop over (source, target, weight) tuples
    s, i = knn_mod.knn(x, 80)
    n = len(x)
    rows = np.repeat(np.arange(n), i.shape[1])
    cols, w = i.reshape(-1), s.reshape(-1)
    # the default's cohort normalisation (dlib; its formula is checked in tests/test_cohort.py)
    from facecluster.cohort import load_cohort

    co = load_cohort("dlib")
    assert c.cohort_shift() == 0.003
    lev = co.levels(x)  # with the cohort's side-light part, as Infomap levels them (cohort_parts)
    w = co.normalise(s, i, lev, lev, 0.003).reshape(-1)
    keep = (cols != rows) & (w >= c.min_sim())
    lo, hi = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    _, first = np.unique(lo * n + hi, return_index=True)
    im = Infomap(two_level=True, silent=True, seed=42, num_trials=2, markov_time=1.0, directed=False)
    # the default's exponential edge weights (dlib: exp((s - 1) / 0.02)), computed independently
    assert c.weight_temp() == 0.02
    wt = np.exp((w[keep][first].astype(np.float64) - 1.0) / 0.02)
    im.add_links(zip(lo[first].tolist(), hi[first].tolist(), wt.tolist()))
    im.run()
    ref = np.arange(n, dtype=np.int64)
    clu = tmp_path / "m.clu"  # not the SWIG iterators: they clash with faiss (see infomap.py)
    im.write_clu(str(clu))
    tab = np.loadtxt(clu, comments="#", ndmin=2).astype(np.int64)
    ref[tab[:, 0]] = n + tab[:, 1]
    # same partition (ids may be numbered differently)
    pairs = set(zip(lab.tolist(), ref.tolist()))
    assert len(pairs) == len(set(lab.tolist())) == len(set(ref.tolist()))


def test_synthetic_faces_exact_size_deterministic_and_dlib_like():
    x1, y1 = cluster_scale.synthetic(5000, seed=1)
    x2, y2 = cluster_scale.synthetic(5000, seed=1)
    assert x1.shape == (5000, 128) and x1.dtype == np.float32 and len(y1) == 5000
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    sizes = np.bincount(y1)
    assert (sizes == 1).any() and sizes.max() >= 50  # many one-photo people and some big ones
    prof = cluster_scale.similarity_profile(x1, y1)
    # raw dlib descriptors: same-person neighbours ~0.95-0.98, other people's nearest ~0.9-0.95
    assert 0.9 < prof["same_id_cos_median"] < 0.99 and 0.85 < prof["other_id_nn_cos_median"] < prof["same_id_cos_median"]


def test_bench_runs_the_cluster_command(tmp_path):
    out = tmp_path / "cs.json"
    rc = cluster_scale.main(["--n", "400", "--methods", "infomap", "--device", "cpu", "--json", str(out),
                             "--workdir", str(tmp_path / "wd"), "--time-limit", "120"])
    d = json.loads(out.read_text())
    assert rc == 0 and [r["method"] for r in d["runs"]] == ["infomap"]
    for r in d["runs"]:
        assert r["rc"] == 0 and r["n"] == 400 and "knn" in r["steps"] and 0 <= r["bcubed_f"] <= 1
        # purity beside the F-scores: the largest cluster holds >= 1 identity, mixed faces <= N
        assert 1 <= r["largest_cluster_ids"] <= r["largest_cluster"] <= 400 and 0 <= r["mixed_faces"] <= 400
    lab = np.load(tmp_path / "wd" / "n400" / "labels-infomap.npy")
    assert lab.shape == (400,)


# --------------------------------------------------------------------------------------------
# the GPU-side builders, run here on the CPU device: same results as the scipy/numpy versions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("th", [0.0, 0.95, -1.0])
def test_torch_adjacency_equals_scipy(faces, th):
    from facecluster.graph import build_adjacency, build_adjacency_torch

    x, _ = faces
    s, i = knn_mod.knn(x[:800], 20)
    a = build_adjacency(i, s, th).toarray()
    b = build_adjacency_torch(i, s, th, "cpu").to_dense().numpy()
    np.testing.assert_array_equal(a != 0, b != 0)
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_gcn_v_forward_takes_the_torch_adjacency(faces):
    from facecluster.cluster import gcn_common as gc
    from facecluster.cluster.gcn_v import gcn_v_forward
    from facecluster.graph import build_adjacency, build_adjacency_torch

    x, _ = faces
    x = x[:600]
    s, i = knn_mod.knn(x, 20)
    model = gc.load_gcn_v(gc.SHIPPED_V)
    c1, f1 = gcn_v_forward(model, x, build_adjacency(i, s), "cpu")
    c2, f2 = gcn_v_forward(model, x, build_adjacency_torch(i, s, 0.0, "cpu"), "cpu")
    np.testing.assert_allclose(c1, c2, atol=1e-5)
    np.testing.assert_allclose(f1, f2, atol=1e-5)


def test_adanets_operator_from_torch_adjacency_is_identical(faces):
    import torch

    from facecluster.cluster.adanets.gcn import SparseGraph, adaptive_adjacency

    x, _ = faces
    s, i = knn_mod.knn(x[:700], 30)
    d = 1.0 - s
    k_hat = np.random.default_rng(0).integers(1, 30, size=len(i))
    g1 = SparseGraph(adaptive_adjacency(i, d, k_hat, 0.0), "cpu")
    g2 = SparseGraph.from_torch(adaptive_adjacency(i, d, k_hat, 0.0, device="cpu"))
    assert torch.equal(g1.op.to_dense(), g2.op.to_dense())


@pytest.mark.parametrize("k", [80, 13, 2, 1])
def test_structure_space_torch_is_identical(faces, k):
    from facecluster.cluster.adanets import _self_first
    from facecluster.cluster.adanets.structure_space import structure_space, structure_space_torch

    x, _ = faces
    x = x[:1200].copy()
    x[5] = x[6] = x[7]  # exact duplicates: ties in the lists
    s, i = knn_mod.knn(x, 80)
    i, s = _self_first(i, s)
    a = structure_space(i, s, k, 0.3)
    b = structure_space_torch(i, s, k, 0.3, device="cpu")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_structure_space_torch_empty():
    from facecluster.cluster.adanets.structure_space import structure_space_torch

    i, d = structure_space_torch(np.zeros((0, 5), np.int64), np.zeros((0, 5), np.float32), 80, 0.3, device="cpu")
    assert i.shape == (0, 0) or i.shape[0] == 0


@pytest.mark.parametrize("trials", [2, 3])
def test_infomap_parallel_trials_same_partition(faces, monkeypatch, trials):
    import os

    from facecluster.cluster import get_clusterer
    from facecluster.cluster import infomap as im_mod

    x, _ = faces
    serial = get_clusterer("infomap", device="cpu", embedder="dlib", num_trials=trials).fit_predict(x)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert im_mod._parallel_trials(trials) == {"parallel_trials": True, "num_threads": trials}
    parallel = get_clusterer("infomap", device="cpu", embedder="dlib", num_trials=trials).fit_predict(x)
    np.testing.assert_array_equal(serial, parallel)
    assert im_mod._parallel_trials(1) == {}


class _ClaimsCuda(str):
    """A device string that takes every ``startswith("cuda")`` branch while torch runs on the CPU."""

    def startswith(self, p, *a):
        return True if p == "cuda" else str.startswith(self, p, *a)


@pytest.mark.parametrize("method", ["infomap", "gcn-v", "adanets"])
def test_cuda_branches_give_the_cpu_partition(faces, monkeypatch, method):
    from facecluster.calibration import calibration_mean, prepare_features
    from facecluster.cluster import base, get_clusterer

    x, _ = faces
    x = x[:500]
    c = get_clusterer(method, device="cpu", embedder="dlib", knn_backend="torch")
    X = x if getattr(c, "wants_raw_features", False) else prepare_features(x, calibration_mean("dlib"))
    want = c.fit_predict(X)
    monkeypatch.setattr(base.Clusterer, "device", property(lambda self: _ClaimsCuda("cpu")))
    got = get_clusterer(method, device="cpu", embedder="dlib", knn_backend="torch").fit_predict(X)
    pairs = set(zip(want.tolist(), got.tolist()))
    assert len(pairs) == len(set(want.tolist())) == len(set(got.tolist()))
