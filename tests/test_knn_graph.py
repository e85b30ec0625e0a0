import numpy as np
import pytest

from facecluster.graph import build_adjacency, components, knn_to_affinity, nearest_higher, peaks_to_labels
from facecluster.knn import knn


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10])
def test_knn_caps_k_and_puts_self_first(n):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    sims, ids = knn(X, 80)
    assert sims.shape == ids.shape == (n, min(80, n))
    if n:
        assert (ids[:, 0] == np.arange(n)).all()
        assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_knn_negative_cosines_kept_and_backends_agree():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    s1, i1 = knn(X, 300, backend="faiss")
    s2, i2 = knn(X, 300, backend="torch", block=64)
    assert (s1.min() < 0)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert (i1 == i2).mean() > 0.999


def test_auto_backend_on_cpu_is_faiss_at_every_size():
    from facecluster.knn import resolve_backend

    assert resolve_backend("auto", "cpu", 10) == "faiss"
    assert resolve_backend("auto", "cpu", 1_000_000) == "faiss"
    assert resolve_backend("torch", "cpu", 1_000_000) == "torch"  # explicit choice wins


def test_torch_cpu_search_in_blocks_and_slices_matches_one_product():
    """The CPU torch search reuses one score buffer and fills it a slice of database rows at a
    time; blocks (a short last one included) and slices must give exactly the one-product result."""
    import torch

    from facecluster.knn import _knn_torch, l2_normalize

    rng = np.random.default_rng(3)
    x = l2_normalize(rng.normal(size=(1000, 16)).astype(np.float32))
    sims, ids = _knn_torch(x, x, 25, "cpu", block=300, chunk=128)  # 4 blocks, 8 slices each
    v, i = torch.topk(torch.from_numpy(x) @ torch.from_numpy(x).T, 25, dim=1)
    np.testing.assert_array_equal(sims, v.numpy())
    np.testing.assert_array_equal(ids, i.numpy())


def test_knn_ties_are_deterministic():
    X = np.ones((6, 4), np.float32)  # all identical: every similarity ties
    s, i = knn(X, 6)
    assert (i == np.arange(6)[None, :]).all()


def test_knn_within_searches_each_group_on_its_own():
    from facecluster.knn import knn_within

    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 8)).astype(np.float32)
    groups = np.repeat(["a", "b", "c"], 30)
    groups[[0, 45]] = ["c", "a"]  # groups need not be contiguous
    sims, ids = knn_within(X, 12, groups)
    assert sims.shape == ids.shape == (90, 12)
    assert (groups[ids] == groups[:, None]).all()
    rows = np.flatnonzero(groups == "b")
    s_b, i_b = knn(X[rows], 12)
    np.testing.assert_array_equal(ids[rows], rows[i_b])
    np.testing.assert_allclose(sims[rows], s_b)
    s0, i0 = knn_within(X, 12, None)  # no groups: plain knn
    np.testing.assert_array_equal(i0, knn(X, 12)[1])
    with pytest.raises(ValueError, match="fewer than k"):
        knn_within(X, 40, groups)
    with pytest.raises(ValueError, match="shape"):
        knn_within(X, 5, groups[:10])


def test_adjacency_is_max_symmetric_row_normalised():
    ids = np.array([[0, 1], [1, 2], [2, 0]])
    sims = np.array([[1.0, 0.5], [1.0, 0.8], [1.0, -0.2]], np.float32)
    a = knn_to_affinity(ids, sims, th_sim=0.0).toarray()
    assert np.allclose(a, a.T) and a[0, 1] == 0.5 and a[1, 2] == pytest.approx(0.8) and a[2, 0] == 0
    adj = build_adjacency(ids, sims).toarray()
    assert np.allclose(adj.sum(1), 1.0)
    assert adj[0, 0] == pytest.approx(1 / 1.5)


def test_components_numbered_by_first_node():
    lab = components(6, np.array([4, 1]), np.array([5, 3]))
    assert list(lab) == [0, 1, 2, 1, 3, 3]


def test_peaks_hand_checkable():
    # chain 0-1-2 with conf rising to 2; node 3 alone
    ids = np.array([[0, 1, 3], [1, 2, 0], [2, 1, 0], [3, 0, 1]])
    sims = np.array([[1, .9, .1], [1, .85, .9], [1, .85, .5], [1, .1, .0]], np.float32)
    conf = np.array([0.1, 0.5, 0.9, 0.2])
    peak, psim = nearest_higher(ids, sims, conf)
    assert list(peak) == [1, 2, -1, 1]  # node 3 skips 0 (lower conf) and takes 1
    assert list(peaks_to_labels(peak, psim, tau=0.8)) == [0, 0, 0, 1]
    assert list(peaks_to_labels(peak, psim, tau=0.87)) == [0, 0, 1, 2]


def _blobs_knn(X: np.ndarray, k: int):
    S = X @ X.T
    ids = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(S, ids, 1).astype(np.float32)


def _two_people_and_a_bridge():
    """30 + 25 faces of two people and one face halfway between them, with their 11-NN lists:
    (X, ids, sims)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 32))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    bridge = (a + b) / np.linalg.norm(a + b)
    X = np.concatenate([a + 0.05 * rng.normal(size=(30, 32)), b + 0.05 * rng.normal(size=(25, 32)), bridge[None]])
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    return (X, *_blobs_knn(X, 11))


def test_split_weak_cuts_two_people_chained_by_one_face():
    from facecluster.graph import split_weak

    X, ids, sims = _two_people_and_a_bridge()
    # one cluster with everybody (as a chain through the bridge face would make it)
    out = split_weak(np.zeros(56, np.int64), ids, sims, min_size=20, top=10, max_cut=0.05)
    assert len(set(out[:30])) == 1 and len(set(out[30:55])) == 1 and out[0] != out[30]
    assert out[0] == 0  # the side with the first face keeps the id
    # a single person is never cut, and clusters under min_size are not looked at
    one = split_weak(np.zeros(30, np.int64), *_blobs_knn(X[:30], 11), min_size=20, max_cut=0.05)
    assert len(set(one)) == 1
    assert len(set(split_weak(np.zeros(56, np.int64), ids, sims, min_size=60))) == 1
    assert np.array_equal(out, split_weak(np.zeros(56, np.int64), ids.copy(), sims.copy(), min_size=20, max_cut=0.05))


def _two_ten_photo_people(seed: int = 0):
    """Two people of 10 photos each in one cluster, look-alikes (cosine ~0.8 across, ~0.95 within):
    every face's 10 nearest hold its 9 mates and one face of the other person."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=64)
    b = 0.8 * a + 0.6 * rng.normal(size=64)
    X = np.concatenate([c / np.linalg.norm(c) + 0.03 * rng.normal(size=(10, 64)) for c in (a, b)])
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_split_weak_small_cluster_needs_fewer_neighbours_and_max_size_bounds_it():
    """With 10 neighbours a 10-photo person links across any cut of its cluster, so two such people
    chained together show no weak cut; on 5 neighbours they do (the GCN methods' second tier,
    ``split_small_size``). Clusters above ``max_size`` are not judged."""
    from facecluster.graph import split_weak

    X = _two_ten_photo_people()
    ids, sims = _blobs_knn(X, 11)
    one = np.zeros(20, np.int64)
    assert len(set(split_weak(one, ids, sims, min_size=10, top=10, max_cut=0.05))) == 1
    out = split_weak(one, ids, sims, min_size=10, top=5, max_cut=0.05)
    assert len(set(out[:10])) == 1 and len(set(out[10:])) == 1 and out[0] != out[10]
    assert np.array_equal(split_weak(one, ids, sims, min_size=10, top=5, max_cut=0.05, max_size=20), out)
    assert len(set(split_weak(one, ids, sims, min_size=10, top=5, max_cut=0.05, max_size=19))) == 1


def test_refine_second_split_tier_parts_small_chained_clusters_only():
    """refine_partition's second tier (split_small_size) parts the 20-face cluster of two 10-photo
    people that the first tier (split_k 10) keeps; off (None) it stays one cluster."""
    from facecluster.cluster.infomap import InfomapConfig
    from facecluster.cluster.refine import refine_partition

    X = _two_ten_photo_people(1)
    ids, sims = _blobs_knn(X, 11)
    kw = dict(merge_min_sim=0.5, attach_min_sim=0.5)
    base = dict(split_min_size=10, merge_fragments=False, attach_max_size=0, attach_frac=0.0)
    off = refine_partition(np.zeros(20, np.int64), ids, sims, InfomapConfig(**base), **kw)
    assert len(set(off)) == 1
    on = refine_partition(np.zeros(20, np.int64), ids, sims, InfomapConfig(**base, split_small_size=40), **kw)
    assert sorted(np.bincount(on)) == [10, 10] and len(set(on[:10])) == 1
    small = refine_partition(np.zeros(20, np.int64), ids, sims, InfomapConfig(**base, split_small_size=19), **kw)
    assert len(set(small)) == 1


def test_split_weak_edge_cases():
    from facecluster.graph import split_weak

    assert split_weak(np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32)).shape == (0,)
    assert list(split_weak(np.array([4]), np.array([[0]]), np.array([[1.0]], np.float32))) == [0]
    # identical faces: a complete graph has no weak cut
    ids = np.tile(np.arange(25), (25, 1))
    assert len(set(split_weak(np.zeros(25, np.int64), ids, np.ones((25, 25), np.float32), min_size=10))) == 1


def _scene_relative():
    """Two clusters of 20 and one fragment of 3 each. Crisp B = 0..19 (internal links 0.97) with
    fragment A = 20..22 linking into B at 0.955; degraded D = 23..42 (internal links 0.93) with
    fragment E = 43..45 linking into D at 0.925. Every face lists 5 neighbours (self first)."""
    k = 5
    n = 46
    ids = np.full((n, k + 1), -1, np.int64)
    sims = np.zeros((n, k + 1), np.float32)
    groups = [(range(0, 20), 0.97), (range(23, 43), 0.93)]
    for members, s in groups:
        m = list(members)
        for j, i in enumerate(m):
            ids[i] = [i] + [m[(j + t) % len(m)] for t in range(1, k + 1)]
            sims[i] = [1.0] + [s] * k
    for frag, target, s in ((range(20, 23), 0, 0.955), (range(43, 46), 23, 0.925)):
        for i in frag:
            ids[i] = [i] + list(range(target, target + k))
            sims[i] = [1.0] + [s] * k
    labels = np.array([0] * 20 + [1] * 3 + [2] * 20 + [3] * 3)
    return labels, ids, sims


def test_attach_relative_compares_a_fragment_with_its_targets_own_links():
    from facecluster.graph import attach_relative

    labels, ids, sims = _scene_relative()
    out = attach_relative(labels, ids, sims, max_frac=0.2, top=5, min_sim=0.9, share=0.5, q=10, margin=0.01)
    # A links to crisp B at 0.955 < 0.97 - 0.01: stays; E links to degraded D at 0.925 >= 0.93 - 0.01: joins,
    # although A's links are the stronger ones (no fixed floor does this)
    assert out[20] != out[0] and len(set(out[20:23])) == 1
    assert out[43] == out[23] and len(set(out[23:46])) == 1
    # a wider margin lets A join too; a fragment above max_frac of its target does not
    wide = attach_relative(labels, ids, sims, max_frac=0.2, top=5, min_sim=0.9, margin=0.02)
    assert len(set(wide)) == 2
    assert len(set(attach_relative(labels, ids, sims, max_frac=0.1, top=5, min_sim=0.9, margin=0.02))) == 4
    # links below the absolute floor do not vote; min_size keeps fragments below it
    assert len(set(attach_relative(labels, ids, sims, max_frac=0.2, top=5, min_sim=0.93, margin=0.02))) == 3
    assert len(set(attach_relative(labels, ids, sims, max_frac=0.2, top=5, min_sim=0.9, margin=0.02, min_size=4))) == 4
    # a target below min_target has no reference: nothing joins
    assert len(set(attach_relative(labels, ids, sims, max_frac=0.2, top=5, min_sim=0.9, margin=0.02, min_target=21))) == 4
    # off
    assert np.array_equal(attach_relative(labels, ids, sims, max_frac=0), np.unique(labels, return_inverse=True)[1])


def test_attach_relative_edge_cases_and_determinism():
    from facecluster.graph import attach_relative

    assert attach_relative(np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros((0, 3))).shape == (0,)
    assert list(attach_relative(np.array([7]), np.array([[0]]), np.array([[1.0]]))) == [0]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sims, ids = knn(X, 11)
    labels = np.minimum(rng.integers(0, 400, 600), 40)  # one cluster of ~540 faces + small ones
    a = attach_relative(labels, ids, sims, max_frac=0.1, min_sim=0.0, share=0.3, margin=0.5)
    assert np.array_equal(a, attach_relative(labels.copy(), ids.copy(), sims.copy(), max_frac=0.1, min_sim=0.0, share=0.3, margin=0.5))
    assert len(set(a)) < len(set(labels))
    for c in np.unique(labels):  # every output cluster is a union of input clusters
        assert len(set(a[labels == c])) == 1


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_knn_progress_bar_counts_every_query_row(backend, monkeypatch):
    """The search of a big batch is a long step: with ``progress`` its bar advances once per
    query block, to the number of query rows; the neighbours are those of a search without it."""
    from contextlib import contextmanager

    import facecluster.knn as K

    seen = {}

    @contextmanager
    def fake_bar(description, total, enabled=None):
        class B:
            def advance(self, n=1):
                seen["done"] = seen.get("done", 0) + n

        seen.update(description=description, total=total, enabled=enabled)
        yield B()

    monkeypatch.setattr(K, "bar", fake_bar)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(700, 8)).astype(np.float32)
    s, i = K.knn(X, 10, backend=backend, block=128, progress=True, description="kNN test")
    assert seen == {"description": "kNN test", "total": 700, "enabled": True, "done": 700}
    np.testing.assert_array_equal(i, K.knn(X, 10, backend=backend, block=128)[1])


def test_split_and_soups_judge_only_gated_clusters():
    """``gate`` / ``gate_min``: split_weak and dissolve_soups judge only the clusters whose faces'
    mean gate reaches ``gate_min`` (the learned methods' lit check, refine.check_lit); a gate of
    the wrong shape is an error; dissolve_soups with ``max_size=None`` has no size bound."""
    from facecluster.graph import dissolve_soups, split_weak

    X, ids, sims = _two_people_and_a_bridge()
    one = np.zeros(56, np.int64)
    gate = np.full(56, 0.003)
    cut = split_weak(one, ids, sims, min_size=20, max_cut=0.05)
    assert len(set(cut)) == 2
    np.testing.assert_array_equal(split_weak(one, ids, sims, min_size=20, max_cut=0.05, gate=gate, gate_min=0.002), cut)
    assert len(set(split_weak(one, ids, sims, min_size=20, max_cut=0.05, gate=gate, gate_min=0.004))) == 1
    # the mean decides: half the faces at 0.006, half at 0 -> 0.003
    half = np.r_[np.full(28, 0.006), np.zeros(28)]
    assert len(set(split_weak(one, ids, sims, min_size=20, max_cut=0.05, gate=half, gate_min=0.003))) == 2
    with pytest.raises(ValueError, match="gate must have shape"):
        split_weak(one, ids, sims, gate=np.zeros(5), gate_min=0.0)

    # soups: 70 faces at cosine 0.91 to each other, each as alike to strangers (0.93): more than
    # the default's 60-face bound, judged with max_size=None, and only when the gate lets it
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(128, 71)))
    soup = (np.sqrt(0.91) * q[:, :1].T + np.sqrt(0.09) * q[:, 1:].T).astype(np.float32)
    lev = np.full(70, 0.93, np.float32)
    lab = np.zeros(70, np.int64)
    assert len(set(dissolve_soups(lab, soup, lev))) == 1  # the default's bound: not judged
    assert len(set(dissolve_soups(lab, soup, lev, max_size=None))) == 70
    assert len(set(dissolve_soups(lab, soup, lev, max_size=None, gate=np.full(70, 0.003), gate_min=0.002))) == 70
    assert len(set(dissolve_soups(lab, soup, lev, max_size=None, gate=np.full(70, 0.001), gate_min=0.002))) == 1


def test_soups_judge_a_sample_of_a_big_cluster(monkeypatch):
    """A cluster bigger than SOUP_SAMPLE is judged on that many evenly spaced members (memory
    bounded), with the same verdict here as on all of them."""
    import facecluster.graph as graph

    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(256, 201)))
    soup = (np.sqrt(0.91) * q[:, :1].T + np.sqrt(0.09) * q[:, 1:].T).astype(np.float32)
    lab = np.zeros(200, np.int64)
    for lev, want in ((0.93, 200), (0.89, 1)):
        full = graph.dissolve_soups(lab, soup, np.full(200, lev, np.float32), max_size=None)
        monkeypatch.setattr(graph, "SOUP_SAMPLE", 50)
        np.testing.assert_array_equal(graph.dissolve_soups(lab, soup, np.full(200, lev, np.float32), max_size=None), full)
        monkeypatch.setattr(graph, "SOUP_SAMPLE", 1000)
        assert len(set(full)) == want
