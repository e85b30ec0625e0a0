"""Ada-NETS: structure space, checkpoint layouts, GCN semantics, small inputs, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facecluster.cluster import get_clusterer
from facecluster.cluster.adanets import ADANETS_REFINE_DEFAULTS, DEFAULT_AND, DEFAULT_GCN, DEFAULTS_JSON, AdaNetsClusterer, _self_first
from facecluster.cluster.adanets.and_model import ANDModel, load_and_checkpoint, predict_k
from facecluster.cluster.adanets.gcn import AdaGCN, SparseGraph, adaptive_adjacency, cluster_loss, load_gcn_checkpoint
from facecluster.cluster.adanets.structure_space import max_q_targets, reciprocal_sets, structure_space
from facecluster.knn import knn


# ------------------------------------------------------------------ structure space
def test_structure_space_hand_case():
    # kNN lists (self first), k = 2 → half sets k//2 = 1 are just {i}
    ids = np.array([[0, 1], [1, 0], [2, 1], [3, 2]])
    sims = np.array([[1.0, 0.9], [1.0, 0.9], [1.0, 0.5], [1.0, 0.2]], np.float32)
    # R(0) = R(1) = {0, 1}; 2 and 3 are not reciprocal with anyone → R(2) = {2}, R(3) = {3}
    R = reciprocal_sets(ids, 2).toarray()
    np.testing.assert_array_equal(R, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    ids_ss, d = structure_space(ids, sims, k=2, lamb=0.3)
    # d = 0.7 (1 − J) + 0.3 (1 − cos): (0,1): J = 1 → 0.3·0.1; (2,1): J = 0 → 0.7 + 0.3·0.5
    np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(d[:, 1], [0.03, 0.03, 0.85, 0.7 + 0.3 * 0.8], atol=1e-6)
    np.testing.assert_array_equal(ids_ss, ids)


def _reference_structure_space(ids, sims, k, lamb):
    """Plain-Python sets, node by node (the original's algorithm, written from the notes)."""
    n = len(ids)
    top = [set(ids[i, :k]) for i in range(n)]
    half = [set(ids[i, : k // 2]) for i in range(n)]
    R = [{j for j in top[i] if i in top[j]} for i in range(n)]
    Rh = [{j for j in half[i] if i in half[j]} for i in range(n)]
    Rs = []
    for i in range(n):
        s = set(R[i])
        for j in R[i]:
            if len(Rh[j] & R[i]) >= len(Rh[j]) * 2 / 3:
                s |= Rh[j]
        Rs.append(s)
    out_i, out_d = [], []
    for i in range(n):
        row = []
        for c, j in enumerate(ids[i, :k]):
            jac = len(Rs[i] & Rs[j]) / len(Rs[i] | Rs[j])
            row.append((j, (1 - lamb) * (1 - jac) + lamb * (1 - float(sims[i, c]))))
        row.sort(key=lambda t: t[1])
        out_i.append([t[0] for t in row])
        out_d.append([t[1] for t in row])
    return np.array(out_i), np.array(out_d)


@pytest.mark.parametrize("n,k", [(60, 10), (150, 16), (7, 7)])
def test_structure_space_matches_set_reference(n, k):
    rng = np.random.default_rng(n)
    c = rng.normal(size=(max(n // 8, 1), 16))
    x = c[rng.integers(0, len(c), n)] + 0.7 * rng.normal(size=(n, 16))
    sims, ids = knn(x.astype(np.float32), k)
    ref_i, ref_d = _reference_structure_space(ids, sims, k, 0.3)
    got_i, got_d = structure_space(ids, sims, k, 0.3)
    np.testing.assert_allclose(got_d, ref_d, atol=1e-6)
    np.testing.assert_array_equal(got_i, ref_i)


def test_max_q_targets():
    ids_ss = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 1, 2, 0]])
    y = np.array([0, 0, 1, 2])
    k = max_q_targets(ids_ss, y, beta=0.5)
    # node 0: both same-label faces in the first 2 → k* = 2; node 2 (singleton class): 1;
    # node 3: self forced positive, nothing else → 1
    np.testing.assert_array_equal(k, [2, 2, 1, 1])


# ------------------------------------------------------------------ checkpoints
AND_KEYS = {
    "lstm.weight_ih_l0": (1024, 256), "lstm.weight_hh_l0": (1024, 256), "lstm.bias_ih_l0": (1024,), "lstm.bias_hh_l0": (1024,),
    "lstm.weight_ih_l0_reverse": (1024, 256), "lstm.weight_hh_l0_reverse": (1024, 256),
    "lstm.bias_ih_l0_reverse": (1024,), "lstm.bias_hh_l0_reverse": (1024,),
    "out_proj.weight": (256, 512), "out_proj.bias": (256,), "mlp.0.weight": (512, 256), "mlp.0.bias": (512,),
    "mlp.1.weight": (512,), "mlp.3.weight": (256, 512), "mlp.3.bias": (256,), "mlp.4.weight": (256,),
    "regressor.weight": (1, 256), "regressor.bias": (1,),
}
GCN_KEYS_DGL05 = {
    "sage1.fc_neigh.weight": (512, 256), "sage1.fc_neigh.bias": (512,), "sage2.fc_neigh.weight": (512, 512),
    "sage2.fc_neigh.bias": (512,), "fc.0.weight": (512, 512), "fc.0.bias": (512,), "fc.1.weight": (512,),
    "bclloss.beta_pos": (),
}


def _random_sd(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in spec.items()}


def test_and_original_layout_loads(tmp_path):
    sd = _random_sd(AND_KEYS)
    torch.save({"state_dict": sd, "step": 40000}, tmp_path / "ckpt_40000.pth")
    m, _ = load_and_checkpoint(tmp_path / "ckpt_40000.pth")
    assert m.feature_dim == 256 and m.nhid == 512
    assert set(m.state_dict()) == set(AND_KEYS)
    for k, v in sd.items():
        assert torch.equal(m.state_dict()[k], v)
    x = np.random.default_rng(0).normal(size=(30, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.stack([np.roll(np.arange(30), -i)[:10] for i in range(30)])
    kh = predict_k(m, x, ids, 80)
    assert kh.shape == (30,) and kh.min() >= 1 and kh.max() <= 10



def test_and_batch_size_does_not_change_k_hat():
    """The CPU default batch (128) was chosen for speed only: k-hat must not depend on it, also
    for a last batch that is short."""
    torch.manual_seed(0)
    m = ANDModel(32, 32).eval()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.stack([np.roll(np.arange(300), -i)[:40] for i in range(300)])
    k_all = predict_k(m, x, ids, 80, batch_size=1024)
    np.testing.assert_array_equal(predict_k(m, x, ids, 80, batch_size=7), k_all)
    np.testing.assert_array_equal(predict_k(m, x, ids, 80, batch_size=128), k_all)

def test_gcn_both_dgl_layouts_load_and_agree(tmp_path):
    sd05 = _random_sd(GCN_KEYS_DGL05)
    torch.save({"state_dict": sd05, "step": 35000}, tmp_path / "g05.pth")
    sd2 = {k.replace("fc_neigh.bias", "bias"): v for k, v in sd05.items()}
    assert "sage1.bias" in sd2 and "sage1.fc_neigh.bias" not in sd2
    torch.save({"state_dict": sd2, "step": 35000}, tmp_path / "g2.pth")
    m05, _ = load_gcn_checkpoint(tmp_path / "g05.pth")
    m2, _ = load_gcn_checkpoint(tmp_path / "g2.pth")
    x = torch.nn.functional.normalize(torch.randn(12, 256), dim=1)
    ids = np.stack([np.roll(np.arange(12), -i)[:4] for i in range(12)])
    adj = adaptive_adjacency(ids, np.zeros((12, 4), np.float32), np.full(12, 3))
    g = SparseGraph(adj)
    with torch.no_grad():
        assert torch.equal(m05(g, x), m2(g, x))


def test_checkpoint_errors(tmp_path):
    sd = _random_sd(AND_KEYS)
    del sd["regressor.bias"]
    torch.save({"state_dict": sd, "step": 1}, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="missing.*regressor.bias"):
        load_and_checkpoint(tmp_path / "a.pth")
    sd = _random_sd(AND_KEYS)
    sd["out_proj.weight"] = torch.zeros(256, 500)
    torch.save({"state_dict": sd}, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_and_checkpoint(tmp_path / "b.pth")
    torch.save({"state_dict": _random_sd(AND_KEYS)}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="256-d"):
        load_and_checkpoint(tmp_path / "c.pth", feature_dim=128)
    with pytest.raises(ValueError, match="not an Ada-NETS GCN"):
        load_gcn_checkpoint(tmp_path / "c.pth")


# ------------------------------------------------------------------ GCN semantics
def test_sage_gcn_aggregator_counts_self_twice():
    # path graph 0-1-2 with k̂ = 2 (self + nearest): adjacency pattern incl. +I
    ids = np.array([[0, 1], [1, 0], [2, 1]])
    adj = adaptive_adjacency(ids, np.zeros((3, 2), np.float32), np.array([2, 2, 2]))
    pat = (adj.toarray() > 0).astype(np.float32)
    np.testing.assert_array_equal(pat, [[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    h = torch.tensor([[1.0], [10.0], [100.0]])
    agg = (SparseGraph(adj) @ h).numpy().ravel()
    # DGL 'gcn': (Σ_{j ∈ N_in(i)} h_j + h_i) / (deg_in(i) + 1), N_in includes the self-loop
    np.testing.assert_allclose(agg, [(1 + 10 + 1) / 3, (1 + 10 + 100 + 10) / 4, (10 + 100 + 100) / 3], rtol=1e-6)


def test_adaptive_adjacency_keeps_first_khat():
    ids = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    d = np.array([[0, 0.2, 0.3], [0, 0.1, 0.4], [0, 0.5, 0.6]], np.float32)
    a = adaptive_adjacency(ids, d, np.array([1, 2, 1])).toarray()
    # only (1,2) kept (s = 0.9), max-symmetrised, +I, row-normalised
    expect = np.array([[1, 0, 0], [0, 1, 0.9], [0, 0.9, 1]], np.float32)
    expect /= expect.sum(1, keepdims=True)
    np.testing.assert_allclose(a, expect, rtol=1e-6)


def test_cluster_loss_values():
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    y = torch.tensor([0, 0, 1])
    # positives (incl. diagonal) all have s = 1 → 0; hardest negative s = 0 → ReLU(1 + 0) = 1
    assert float(cluster_loss(x, y)) == pytest.approx(1.0)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ada")
    torch.manual_seed(0)
    torch.save({"state_dict": ANDModel(64, 64).state_dict(), "step": 1}, d / "and.pth")
    torch.save({"state_dict": AdaGCN(64, 64).state_dict(), "step": 1}, d / "gcn.pth")
    return str(d / "and.pth"), str(d / "gcn.pth")


@pytest.mark.parametrize("weak", [None, 0.3])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 50])
def test_small_inputs(n, weak, tiny_ckpts, clustered_features):
    X, _ = clustered_features
    floor = {} if weak is None else {"embedder": "dlib", "min_link_sim": -0.5}  # the weak tier needs a floor
    c = get_clusterer("adanets", checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", final_th=0.5, weak_th=weak, **floor)
    lab = c.fit_predict(X[:n])
    assert lab.shape == (n,) and lab.dtype == np.int64
    np.testing.assert_array_equal(lab, c.fit_predict(X[:n]))  # deterministic


def test_duplicates_and_self_first():
    ids = np.array([[1, 0, 2], [0, 1, 2], [2, 0, 1]])
    sims = np.array([[1, 1, 0.5], [1, 1, 0.5], [1, 0.5, 0.5]], np.float32)
    i2, s2 = _self_first(ids, sims)
    assert list(i2[:, 0]) == [0, 1, 2] and list(i2[0]) == [0, 1, 2]


def test_deterministic_and_backend_independent(tiny_ckpts, clustered_features):
    X, _ = clustered_features
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", final_th=0.8, k=20)
    a = get_clusterer("adanets", **kw, knn_backend="faiss").fit_predict(X)
    b = get_clusterer("adanets", **kw, knn_backend="faiss").fit_predict(X)
    c = get_clusterer("adanets", **kw, knn_backend="torch").fit_predict(X)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_feature_dim_mismatch(tiny_ckpts):
    c = get_clusterer("adanets", checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu")
    with pytest.raises(ValueError, match="64-d"):
        c.fit_predict(np.ones((4, 32), np.float32))


def test_missing_weights_is_a_clear_error(tmp_path):
    c = get_clusterer("adanets", checkpoint_and=str(tmp_path / "nope.pth"), checkpoint_gcn=str(tmp_path / "nope2.pth"))
    with pytest.raises(FileNotFoundError, match="train"):
        c.fit_predict(np.ones((3, 128), np.float32))


def test_shipped_weights_cluster_separated_identities():
    """The shipped dlib weights load from the package and separate clearly distinct people."""
    assert DEFAULT_AND.is_file() and DEFAULT_GCN.is_file() and DEFAULTS_JSON.is_file()
    c = AdaNetsClusterer(device="cpu")
    assert c.resolved()["final_th"] == pytest.approx(float(__import__("json").loads(DEFAULTS_JSON.read_text())["defaults"]["final_th"]))
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(6, 128))
    X = np.concatenate([cc + 0.15 * rng.normal(size=(8, 128)) for cc in centers]).astype(np.float32)
    lab = c.fit_predict(X)
    y = np.repeat(np.arange(6), 8)
    from facecluster.metrics import evaluate

    assert evaluate(y, lab)["pairwise_fscore"] > 0.9


def test_checkpoints_load_safely_unless_trusted(tmp_path):
    """Ada-NETS checkpoints are read with weights_only=True, like GCN-V/E: a file whose
    metadata needs arbitrary unpickling is refused unless trust_checkpoint is set."""
    from facecluster.cluster.gcn_common import CheckpointError

    meta = {"hist": np.arange(3)}  # numpy objects cannot be read with weights_only=True
    torch.save({"state_dict": ANDModel(64, 64).state_dict(), "step": 1, "meta": meta}, tmp_path / "and.pth")
    torch.save({"state_dict": AdaGCN(64, 64).state_dict(), "step": 1, "meta": meta}, tmp_path / "gcn.pth")
    for load in (load_and_checkpoint, load_gcn_checkpoint):
        name = "and.pth" if load is load_and_checkpoint else "gcn.pth"
        with pytest.raises(CheckpointError, match="trust_checkpoint"):
            load(tmp_path / name)
        assert load(tmp_path / name, trust=True)[0].feature_dim == 64
    x = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    ck = {"checkpoint_and": str(tmp_path / "and.pth"), "checkpoint_gcn": str(tmp_path / "gcn.pth"), "device": "cpu"}
    with pytest.raises(CheckpointError):
        get_clusterer("adanets", **ck).fit_predict(x)
    assert get_clusterer("adanets", trust_checkpoint=True, **ck).fit_predict(x).shape == (20,)


# ------------------------------------------------------------------ issue 11
def test_similarity_floor_on_graph_and_final_links(tiny_ckpts):
    """final_th = -1 links every face to its final_topk neighbours: without the floor two
    separate groups end in one cluster; with a floor between the within- and across-group
    plain cosines (a user checkpoint: the floor still applies) no cluster spans both."""
    rng = np.random.default_rng(0)
    a, r = rng.normal(size=64), rng.normal(size=64)
    b = 0.5 * a + np.sqrt(1 - 0.25) * r  # cos(a, b) ~ 0.5
    X = np.concatenate([c + 0.05 * rng.normal(size=(15, 64)) for c in (a, b)]).astype(np.float32)
    y = np.repeat([0, 1], 15)
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", final_th=-1.0, k=20, final_topk=30)
    off = get_clusterer("adanets", similarity_floor=False, **kw).fit_predict(X)
    assert len(np.unique(off)) == 1
    on = get_clusterer("adanets", min_link_sim=0.8, **kw).fit_predict(X)
    assert all(len(np.unique(y[on == c])) == 1 for c in np.unique(on))
    from facecluster.calibration import LINK_FLOOR_BY_EMBEDDER

    from facecluster.cluster.refine import REFINED_LINK_FLOOR_BY_EMBEDDER

    c = get_clusterer("adanets", embedder="dlib", refine=False, **kw)
    assert c.settings()["min_link_sim"] == LINK_FLOOR_BY_EMBEDDER["dlib"]
    assert get_clusterer("adanets", embedder="dlib", **kw).settings()["min_link_sim"] == REFINED_LINK_FLOOR_BY_EMBEDDER["dlib"]
    assert c.feature_kind() == "raw"  # an original-layout checkpoint without meta


def test_shipped_weights_are_calibrated_and_copies_share_a_cluster():
    c = AdaNetsClusterer(device="cpu", embedder="dlib")
    assert c.feature_kind() == "calibrated" and c.link_floor() is not None
    assert c.settings()["floor_cohort"] is True  # the floor is cohort-normalised for dlib
    assert AdaNetsClusterer(device="cpu", embedder="dlib", similarity_floor=False).settings()["floor_cohort"] is False
    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, 128)).astype(np.float32)
    X = np.concatenate([X[:30], np.repeat(X[30:31], 4, axis=0), X[31:]])
    lab = c.fit_predict(X)
    assert len(np.unique(lab[30:34])) == 1
    # the original algorithm may split them; the rule alone joins them
    off = AdaNetsClusterer(device="cpu", embedder="dlib", similarity_floor=False, join_duplicates=False).fit_predict(X)
    assert off.shape == (63,)


def test_refine_default_follows_the_floor(tiny_ckpts, clustered_features):
    """The default's post-steps run after Ada-NETS with the floor for dlib, not with
    similarity_floor=false (the original algorithm: labels as with refine=false)."""
    from facecluster.cluster.base import join_near_duplicates
    from facecluster.cluster.refine import refine_learned
    from facecluster.knn import l2_normalize

    X, _ = clustered_features
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", final_th=0.9, k=20, embedder="dlib")
    assert get_clusterer("adanets", **kw).settings()["refine"] is True
    assert AdaNetsClusterer(device="cpu", embedder="dlib").settings()["refine"] is True  # shipped weights
    off = get_clusterer("adanets", similarity_floor=False, join_duplicates=False, **kw)
    assert off.settings()["refine"] is False
    np.testing.assert_array_equal(
        off.fit_predict(X), get_clusterer("adanets", similarity_floor=False, join_duplicates=False, refine=False, **kw).fit_predict(X)
    )
    # refine on = the method's labels, refine_learned on its own kNN lists, duplicate rule last
    on = get_clusterer("adanets", min_link_sim=0.0, **kw)
    lab = on.fit_predict(X)
    base = get_clusterer("adanets", min_link_sim=0.0, refine=False, join_duplicates=False, **kw)
    lab0 = base.fit_predict(X)
    ids, sims = base.knn_
    ref = refine_learned(lab0, ids, l2_normalize(X), embedder="dlib", overrides=dict(ADANETS_REFINE_DEFAULTS), plain=True, sims=sims)
    np.testing.assert_array_equal(lab, join_near_duplicates(X, ref, on.duplicate_sim(), knn_cache=ids))


def test_refinement_takes_its_own_close_pieces_unless_the_user_sets_them(tiny_ckpts, clustered_features, monkeypatch):
    """Ada-NETS's refinement adds the close pieces (ADANETS_REFINE_DEFAULTS; off for Infomap and
    the GCN methods); a user's refine_settings win over them (merge_close_q null: the refinement
    before the twenty-first session)."""
    import facecluster.cluster.adanets as ada

    seen = []
    real = ada.refine_learned
    monkeypatch.setattr(ada, "refine_learned", lambda *a, **k: seen.append(k["overrides"]) or real(*a, **k))
    X, _ = clustered_features
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", final_th=0.9, k=20, embedder="dlib")
    get_clusterer("adanets", **kw).fit_predict(X)
    get_clusterer("adanets", refine_settings={"merge_close_q": None}, **kw).fit_predict(X)
    from facecluster.cluster.gcn_v import GCN_REFINE_DEFAULTS
    from facecluster.cluster.infomap import InfomapConfig
    from facecluster.cluster.refine import LEARNED_REFINE_DEFAULTS

    assert seen == [
        {**LEARNED_REFINE_DEFAULTS, "merge_close_q": 10.0, "merge_close_piece": 0.2},
        {**LEARNED_REFINE_DEFAULTS, "merge_close_q": None, "merge_close_piece": 0.2},
    ]

    assert InfomapConfig().merge_close_piece is None and "merge_close_piece" not in {**LEARNED_REFINE_DEFAULTS, **GCN_REFINE_DEFAULTS}


def test_shipped_weights_per_embedder():
    """Without checkpoints the features' embedder picks the shipped set (dlib when unknown);
    an embedder without shipped weights is a clear error, not dlib's weights on the wrong
    features."""
    from facecluster.cluster.adanets import SHIPPED_ADANETS, shipped_files

    assert shipped_files(None) == shipped_files("dlib") == (DEFAULT_AND, DEFAULT_GCN, DEFAULTS_JSON)
    assert list(SHIPPED_ADANETS) == ["dlib", "mbf"]
    assert [p.name for p in shipped_files("mbf")] == ["adanets_and_mbf.pth", "adanets_gcn_mbf.pth", "adanets_mbf.json"]
    assert all(p.is_file() for p in shipped_files("mbf"))
    c = AdaNetsClusterer(device="cpu", embedder="hfsoftmax")
    with pytest.raises(FileNotFoundError, match=r"no shipped Ada-NETS weights for the 'hfsoftmax' embedder \(shipped for: dlib, mbf\)"):
        c.fit_predict(np.eye(4, 256, dtype=np.float32))
    # each embedder's own tuned settings (adanets_<embedder>.json), not dlib's
    mbf = json.loads(shipped_files("mbf")[2].read_text())["defaults"]
    assert AdaNetsClusterer(device="cpu", embedder="mbf").resolved() == {**AdaNetsClusterer(device="cpu").resolved(), **mbf}
    # explicit settings win over the tuned ones; the tuned ones fill the rest
    r = AdaNetsClusterer(device="cpu", embedder="dlib", final_th=0.5).resolved()
    assert r["final_th"] == 0.5 and r["k"] == json.loads(DEFAULTS_JSON.read_text())["defaults"]["k"]


def test_min_k_hat_bounds_the_adaptive_graph(tiny_ckpts, clustered_features):
    """min_k_hat raises AND's predicted counts to at least that many neighbours (capped at k);
    unset it is the shipped set's tuned value, and 0 (the original algorithm) with
    similarity_floor=false."""
    X, _ = clustered_features
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", k=20, embedder="dlib")
    own = get_clusterer("adanets", min_k_hat=0, **kw)
    own.fit_predict(X)
    raised = get_clusterer("adanets", min_k_hat=7, **kw)
    raised.fit_predict(X)
    np.testing.assert_array_equal(raised.k_hat_, np.maximum(own.k_hat_, 7))
    capped = get_clusterer("adanets", min_k_hat=500, **kw)
    capped.fit_predict(X)
    assert (capped.k_hat_ == 20).all()  # k includes self: the lists have 20 columns
    tuned = json.loads(DEFAULTS_JSON.read_text())["defaults"]["min_k_hat"]
    assert AdaNetsClusterer(device="cpu", embedder="dlib").resolved()["min_k_hat"] == tuned > 0
    assert AdaNetsClusterer(device="cpu", embedder="dlib", similarity_floor=False).resolved()["min_k_hat"] == 0
    assert AdaNetsClusterer(device="cpu", embedder="dlib", similarity_floor=False, min_k_hat=3).resolved()["min_k_hat"] == 3
    with pytest.raises(ValueError):
        AdaNetsClusterer(device="cpu", min_k_hat=-1)


def test_k_hat_margin_caps_and_counts_at_the_clearly_alike_neighbours(tiny_ckpts, clustered_features, tmp_path):
    """k_hat_margin: AND's k̂ is at most the number of structure-space neighbours (self included)
    whose floor cosine reaches floor + margin; min_k_hat raises it afterwards; AND's own counts
    stay in ``k_hat_and_``. Unset it is dlib's value with the floor, off without one; set by hand
    without a floor it is an error."""
    from facecluster.cluster.adanets import K_HAT_MARGIN_BY_EMBEDDER
    from facecluster.knn import l2_normalize

    X, _ = clustered_features
    # an AND that over-predicts: every face gets all of its 20 neighbours
    m = ANDModel(64, 64)
    with torch.no_grad():
        m.regressor.weight.zero_()
        m.regressor.bias.fill_(1.0)
    torch.save({"state_dict": m.state_dict(), "step": 1}, tmp_path / "all.pth")
    kw = dict(checkpoint_and=str(tmp_path / "all.pth"), checkpoint_gcn=tiny_ckpts[1], device="cpu", k=20, min_link_sim=0.3,
              floor_cohort=False, refine=False)
    own = get_clusterer("adanets", min_k_hat=0, k_hat_margin=0, **kw)
    own.fit_predict(X)
    cap = get_clusterer("adanets", min_k_hat=0, k_hat_margin=0.4, **kw)
    cap.fit_predict(X)
    ids, sims = cap.knn_
    ids_ss, _ = structure_space(ids, sims, 20, cap.resolved()["lamb"])
    xr = l2_normalize(X)
    alike = (np.einsum("nd,nkd->nk", xr, xr[ids_ss]) >= 0.3 + 0.4 - 1e-6).sum(axis=1)
    want = np.minimum(own.k_hat_, np.maximum(alike, 1))
    np.testing.assert_array_equal(cap.k_hat_, want)
    np.testing.assert_array_equal(cap.k_hat_and_, own.k_hat_)
    assert (own.k_hat_ == 20).all() and (want < 20).sum() > 10  # the cap binds on this data
    raised = get_clusterer("adanets", min_k_hat=7, k_hat_margin=0.4, **kw)
    raised.fit_predict(X)
    np.testing.assert_array_equal(raised.k_hat_, np.maximum(want, 7))
    assert AdaNetsClusterer(device="cpu", embedder="dlib").settings()["k_hat_margin"] == K_HAT_MARGIN_BY_EMBEDDER["dlib"]
    assert AdaNetsClusterer(device="cpu", embedder="dlib", similarity_floor=False).settings()["k_hat_margin"] is None
    assert AdaNetsClusterer(device="cpu", embedder="mbf").settings()["k_hat_margin"] is None
    with pytest.raises(ValueError, match="k_hat_margin"):
        AdaNetsClusterer(device="cpu", embedder="dlib", similarity_floor=False, k_hat_margin=0.02).settings()


def test_shipped_dlib_and_counts_follow_the_truth_on_people_it_never_saw():
    """Issue 11: the shipped dlib AND does not collapse to ~1 neighbour. On real faces of held-out
    people (40 video frames each of 3 glint18 people, 20 LFW people with 2-4 photos, 40 with one)
    its predicted counts follow the true max-Q counts k* (measured: glint k* 38.3, k̂ 39.0; LFW
    k* 1.7, k̂ 3.1; correlation 0.91). The first dlib AND predicted 1 for every one of them."""
    pytest.importorskip("dlib")
    from facecluster.calibration import calibration_mean, prepare_features
    from facecluster.embed.dlib_resnet import DlibEmbedder
    from facecluster.imageio import load_image
    from facecluster.train.adanets import and_data
    from facecluster.train.splits import is_validation_identity

    from conftest import data_path

    held = lambda s: [d for d in sorted(data_path(s).iterdir()) if is_validation_identity(s, d.name)]  # noqa: E731
    files = [f for d in held("glint18")[:3] for f in sorted(d.iterdir())[:40]]
    lfw = held("lfw")
    files += [f for d in [d for d in lfw if 2 <= len(list(d.iterdir())) <= 4][:20] for f in sorted(d.iterdir())]
    files += [next(d.iterdir()) for d in [d for d in lfw if len(list(d.iterdir())) == 1][:40]]
    video = np.array(["glint18" in str(f) for f in files])
    emb = DlibEmbedder(batch_size=16)
    x = prepare_features(emb.embed_batch(np.stack([emb.prepare(load_image(f), {}) for f in files])), calibration_mean("dlib"))
    _, y = np.unique([f.parent.name for f in files], return_inverse=True)
    ids, k_true = and_data(x.astype(np.float32), y)
    model, meta = load_and_checkpoint(DEFAULT_AND)
    assert meta["and_input"] == "gram"
    k_hat = predict_k(model, x.astype(np.float32), ids, int(meta["scale_max"]))
    assert 0.6 * k_true[video].mean() < k_hat[video].mean() < 1.5 * k_true[video].mean(), (k_true[video].mean(), k_hat[video].mean())
    assert k_hat[~video].mean() < 6 and k_hat[~video & (k_true <= 2)].mean() < 5
    assert np.corrcoef(k_hat, k_true)[0, 1] > 0.7


def _refines(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Every cluster of ``fine`` lies inside one cluster of ``coarse``."""
    return all(len(np.unique(coarse[fine == c])) == 1 for c in np.unique(fine))


def test_weak_tier_links_only_above_the_floor_margin(tiny_ckpts, clustered_features):
    """weak_th adds final links under final_th whose floor cosine clears the floor by
    weak_margin: margin 0 is the plain lower threshold, an unreachable margin adds nothing,
    margins in between lie between the two; without a floor it is an error."""
    X, _ = clustered_features
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", k=20, final_topk=30,
              embedder="dlib", refine=False, min_link_sim=-0.5)
    feat = get_clusterer("adanets", **kw).embed(X)
    sims, ids = knn(feat, 30, normalize=False)
    s_other = sims[:, 1:][ids[:, 1:] >= 0]
    hi, lo = float(np.quantile(s_other, 0.97)), float(np.quantile(s_other, 0.05))
    kw["final_th"] = hi
    off = get_clusterer("adanets", **kw).fit_predict(X)
    low = get_clusterer("adanets", **{**kw, "final_th": lo}).fit_predict(X)
    assert len(np.unique(low)) < len(np.unique(off))  # the weak tier has links to add
    np.testing.assert_array_equal(get_clusterer("adanets", weak_th=lo, weak_margin=0.0, **kw).fit_predict(X), low)
    np.testing.assert_array_equal(get_clusterer("adanets", weak_th=lo, weak_margin=2.0, **kw).fit_predict(X), off)
    mid = get_clusterer("adanets", weak_th=lo, weak_margin=1.0, **kw).fit_predict(X)
    assert _refines(off, mid) and _refines(mid, low)
    assert len(np.unique(low)) < len(np.unique(mid)) < len(np.unique(off))
    no_floor = {**kw, "similarity_floor": False, "min_link_sim": None}
    with pytest.raises(ValueError, match="weak_th needs the similarity floor"):
        get_clusterer("adanets", weak_th=lo, **no_floor).fit_predict(X)
    assert AdaNetsClusterer(device="cpu").config.weak_th is None  # off by default


def test_settings_record_the_post_steps_that_ran(tiny_ckpts):
    """labels-adanets.json records every post-step setting the refinement ran with (the method's
    defaults included, the user's winning), so a changed default changes the fingerprint; None
    when the refinement is off (the original algorithm)."""
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", embedder="dlib")
    steps = get_clusterer("adanets", **kw).settings()["refine_post_steps"]
    assert steps["merge_close_piece"] == 0.2 and steps["merge_close_q"] == 10.0 and steps["attach_share"] == 0.6
    assert steps["merge_min_sim"] is not None and steps["merge_lone_recip"] == 1
    mine = get_clusterer("adanets", refine_settings={"merge_close_q": None}, **kw).settings()
    assert mine["refine_post_steps"]["merge_close_q"] is None and mine["refine_settings"] == {"merge_close_q": None}
    assert get_clusterer("adanets", similarity_floor=False, **kw).settings()["refine_post_steps"] is None


def test_lit_check_is_dlibs_default_recorded_and_runs_after_the_refinement(tiny_ckpts, clustered_features, monkeypatch):
    """lit_min_raise: dlib's 0.002 on the side-light part when the refinement runs (recorded in
    settings, so the fingerprint follows it), off without the floor (the original algorithm) or
    at 0, an error when set by hand for an embedder whose cohort has no such part; fit_predict
    hands refine.check_lit the shipped cohort and the gate after the post-steps."""
    import facecluster.cluster.refine as refine

    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", embedder="dlib")
    s = get_clusterer("adanets", **kw).settings()
    assert s["lit_min_raise"] == 0.002 and s["lit_part"] == "side-light"
    assert get_clusterer("adanets", lit_min_raise=0.005, **kw).settings()["lit_min_raise"] == 0.005
    for off in (dict(lit_min_raise=0), dict(similarity_floor=False), dict(refine=False)):
        assert get_clusterer("adanets", **off, **kw).settings()["lit_min_raise"] is None, off
    assert get_clusterer("adanets", device="cpu", embedder="mbf").settings()["lit_min_raise"] is None
    with pytest.raises(ValueError, match="lit_min_raise=0.002 needs"):
        get_clusterer("adanets", device="cpu", embedder="mbf", lit_min_raise=0.002).settings()
    with pytest.raises(ValueError, match="lit_min_raise=0.002 needs"):
        get_clusterer("adanets", lit_min_raise=0.002, lit_part="sun", **kw).settings()

    seen = []
    real = refine.check_lit

    def spy(labels, *a, **k):
        seen.append(k)
        return real(labels, *a, **k)

    monkeypatch.setattr(refine, "check_lit", spy)
    # the shipped weights on 128-d features (the cohort's width; on other widths the check is
    # off with a warning, as the floor's cohort)
    rng = np.random.default_rng(3)
    X = np.concatenate([c + 0.15 * rng.normal(size=(8, 128)) for c in rng.normal(size=(6, 128))]).astype(np.float32)
    on = get_clusterer("adanets", device="cpu", embedder="dlib").fit_predict(X)
    assert len(seen) == 1 and seen[0]["min_raise"] == 0.002 and seen[0]["part"] == "side-light"
    assert seen[0]["cohort"].part("side-light") is not None
    # these features are no side-lit faces: the check changes nothing
    np.testing.assert_array_equal(on, get_clusterer("adanets", device="cpu", embedder="dlib", lit_min_raise=0).fit_predict(X))
    assert len(seen) == 1
    get_clusterer("adanets", **kw).fit_predict(clustered_features[0])  # 64-d: no cohort, no check
    assert len(seen) == 1


def test_bench_and_memo_gives_the_same_labels_with_one_and_pass(tiny_ckpts, clustered_features, monkeypatch):
    """bench/_common.memo_and_predictions (regimes.py sweeps): a second variant on the same faces
    reuses AND's k̂ and clusters exactly as without the memo; the patch is undone on exit."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import _common

    from facecluster.cluster import adanets as ada

    X, _ = clustered_features
    kw = dict(checkpoint_and=tiny_ckpts[0], checkpoint_gcn=tiny_ckpts[1], device="cpu", k=20, embedder="dlib")
    plain = [get_clusterer("adanets", final_th=t, **kw).fit_predict(X) for t in (0.5, 0.9)]
    real, calls = ada.predict_k, []
    monkeypatch.setattr(ada, "predict_k", lambda *a, **k: calls.append(1) or real(*a, **k))
    counted = ada.predict_k
    with _common.memo_and_predictions():
        memo = [get_clusterer("adanets", final_th=t, **kw).fit_predict(X) for t in (0.5, 0.9)]
    assert len(calls) == 1 and ada.predict_k is counted
    for a, b in zip(plain, memo):
        np.testing.assert_array_equal(a, b)
    assert not _common._AND_MEMO


def test_shipped_mbf_weights_on_tiny_inputs_and_duplicates():
    """The mbf set (512-d) on N = 0..5 and on repeated faces: no crash, one id per face, copies
    of one face share a cluster, deterministic."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 512)).astype(np.float32)
    for n in range(6):
        lab = AdaNetsClusterer(device="cpu", embedder="mbf").fit_predict(X[:n])
        assert lab.shape == (n,) and len(set(lab.tolist())) == n  # random faces: all apart
    dup = np.repeat(X[:2], 3, axis=0)
    lab = AdaNetsClusterer(device="cpu", embedder="mbf").fit_predict(dup)
    assert lab.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(lab, AdaNetsClusterer(device="cpu", embedder="mbf").fit_predict(dup))


def test_and_gram_input_reads_the_neighbourhood_cosines(tmp_path):
    """``and_input="gram"``: the BiLSTM reads each neighbour's cosines to the sequence, padded to
    the feature width; a checkpoint says so in its meta; anything else there is refused."""
    m = ANDModel(32, 16, and_input="gram").eval()
    rng = np.random.default_rng(0)
    seq = torch.from_numpy(rng.normal(size=(3, 10, 32)).astype(np.float32))
    tok = m.tokens(seq)
    assert tok.shape == (3, 10, 32)
    assert torch.allclose(tok[:, :, :10], seq @ seq.transpose(1, 2)) and not tok[:, :, 10:].any()
    with pytest.raises(ValueError, match="at most 32"):
        m.tokens(torch.zeros(1, 40, 32))
    torch.save({"state_dict": m.state_dict(), "step": 1, "meta": {"and_input": "gram"}}, tmp_path / "g.pth")
    m2, _ = load_and_checkpoint(tmp_path / "g.pth")
    assert m2.and_input == "gram" and torch.equal(m2(seq), m(seq))
    torch.save({"state_dict": m.state_dict(), "step": 1, "meta": {"and_input": "pixels"}}, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="and_input"):
        load_and_checkpoint(tmp_path / "b.pth")
    with pytest.raises(ValueError, match="AND input"):
        ANDModel(32, 16, and_input="pixels")
