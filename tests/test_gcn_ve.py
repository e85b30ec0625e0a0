"""GCN-V / GCN-E (learn-to-cluster) port: checkpoints, formulas, degenerate inputs, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecluster.cluster import get_clusterer
from facecluster.cluster import gcn_common as gc
from facecluster.cluster import gcn_v as gv
from facecluster.cluster.gcn_e import edge_candidates, gcn_e_peaks, sub_adjacency
from facecluster.cluster.gcn_v import peaks_labels
from facecluster.graph import build_adjacency, row_normalize
from facecluster.knn import knn, l2_normalize
from facecluster.train.splits import is_validation_identity, validation_mask

torch.set_num_threads(1)

# released-checkpoint layouts (notes §1.4 / §1.6)
V_KEYS = {
    "conv1.weight": (512, 512),
    "conv1.bias": (512,),
    "classifier.0.weight": (512, 512),
    "classifier.0.bias": (512,),
    "classifier.1.weight": (512,),
    "classifier.2.weight": (1, 512),
    "classifier.2.bias": (1,),
}
E_KEYS = {
    "conv1.weight": (1024, 512),
    "conv1.bias": (512,),
    "conv2.weight": (1024, 512),
    "conv2.bias": (512,),
    "conv3.weight": (1024, 256),
    "conv3.bias": (256,),
    "conv4.weight": (512, 256),
    "conv4.bias": (256,),
    "classifier.0.weight": (256, 256),
    "classifier.0.bias": (256,),
    "classifier.1.weight": (256,),
    "classifier.2.weight": (2, 256),
    "classifier.2.bias": (2,),
}


def _random_sd(keys, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(s, generator=g) - 0.5) * 0.2 for k, s in keys.items()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    sv, se = _random_sd(V_KEYS, 1), _random_sd(E_KEYS, 2)
    meta = {"mmcv_version": "1.7.2", "time": "Sat Aug  8 00:00:00 2020", "epoch": 40, "iter": 80000}
    opt = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-5, "params": list(range(7))}]}
    torch.save({"meta": meta, "state_dict": sv, "optimizer": opt}, d / "pretrained_gcn_v_ms1m.pth")
    torch.save({"meta": meta, "state_dict": se, "optimizer": opt}, d / "pretrained_gcn_e_ms1m.pth")
    return d / "pretrained_gcn_v_ms1m.pth", d / "pretrained_gcn_e_ms1m.pth", sv, se


def _clustered(n, d=256, seed=0, noise=0.6):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(max(n // 8, 1), d))
    lab = rng.integers(0, len(c), n)
    return (c[lab] + noise * rng.normal(size=(n, d))).astype(np.float32), lab


# -------------------------------------------------------------------------------- checkpoints
def test_released_layouts_load(ckpts, tmp_path):
    pv, pe, sv, se = ckpts
    mv, me = gc.load_gcn_v(pv), gc.load_gcn_e(pe)
    assert (mv.feature_dim, mv.nhid) == (256, 512) and (me.feature_dim, me.nhid) == (512, 512)
    for k, v in sv.items():
        assert torch.equal(mv.state_dict()[k], v)  # (2·in, out) kept as is, never transposed
    # bare state dict with DataParallel prefix
    torch.save({"module." + k: v for k, v in se.items()}, tmp_path / "bare.pth")
    me2 = gc.load_gcn_e(tmp_path / "bare.pth")
    assert all(torch.equal(me2.state_dict()[k], v) for k, v in se.items())


def test_checkpoint_errors(ckpts, tmp_path):
    pv, pe, sv, _ = ckpts
    # GCN-E file given as GCN-V: shapes do not fit, message lists expected vs found
    with pytest.raises(gc.CheckpointError, match="classifier.2.weight"):
        gc.load_gcn_v(pe)
    bad = dict(sv)
    bad["classifier.0.weight"] = torch.zeros(256, 512)
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(gc.CheckpointError, match=r"wrong shapes: classifier.0.weight expected \(512, 512\) found \(256, 512\)"):
        gc.load_gcn_v(tmp_path / "bad.pth")
    missing = {k: v for k, v in sv.items() if k != "conv1.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(gc.CheckpointError, match="missing keys: conv1.bias"):
        gc.load_gcn_v(tmp_path / "missing.pth")
    with pytest.raises(gc.CheckpointError, match="not found"):
        gc.load_gcn_v(tmp_path / "nope.pth")


def test_unsafe_metadata_needs_trust(ckpts, tmp_path):
    _, _, sv, _ = ckpts

    # numpy objects in meta cannot be read with weights_only=True
    torch.save({"state_dict": sv, "meta": {"hist": np.arange(3)}}, tmp_path / "np.pth")
    with pytest.raises(gc.CheckpointError, match="trust_checkpoint"):
        gc.load_gcn_v(tmp_path / "np.pth")
    assert gc.load_gcn_v(tmp_path / "np.pth", trust=True).feature_dim == 256


def test_feature_dim_mismatch(ckpts):
    pv, pe, _, _ = ckpts
    X, _ = _clustered(20, d=128)
    with pytest.raises(ValueError, match="expects 256-d features but got 128-d"):
        get_clusterer("gcn-ve", checkpoint_v=str(pv), checkpoint_e=str(pe), device="cpu").fit_predict(X)
    with pytest.raises(ValueError, match="both checkpoint_v and checkpoint_e"):
        get_clusterer("gcn-ve", checkpoint_v=str(pv), device="cpu").fit_predict(X)


# -------------------------------------------------------------------------------- formulas
def test_graphconv_matches_formula():
    torch.manual_seed(0)
    conv = gc.GraphConv(6, 4)
    torch.nn.init.uniform_(conv.bias, -0.1, 0.1)
    x = torch.randn(5, 6)
    a = torch.rand(5, 5)
    a = a / a.sum(1, keepdim=True)
    want = torch.relu(torch.cat([x, a @ x], 1) @ conv.weight + conv.bias)
    got = conv(x, a.to_sparse())
    assert torch.allclose(got, want, atol=1e-6)
    got3 = conv(x[None].repeat(2, 1, 1), a[None].repeat(2, 1, 1))
    assert torch.allclose(got3[1], want, atol=1e-6)


def test_sub_adjacency_equals_original_definition():
    """Batched sub-adjacency == rownorm(Â[C, C]) with Â the globally row-normalised adjacency."""
    X, _ = _clustered(60, d=16, seed=3, noise=1.0)
    X = l2_normalize(X)
    sims, ids = knn(X, 12)
    A = build_adjacency(ids, sims, 0.0)
    rng = np.random.default_rng(0)
    cands = [rng.choice(60, size=s, replace=False) for s in (2, 5, 9)]
    w = max(len(c) for c in cands)
    cand = np.zeros((3, w), np.int64)
    mask = np.zeros((3, w), bool)
    for b, c in enumerate(cands):
        cand[b, : len(c)], mask[b, : len(c)] = c, True
    srt = np.argsort(ids, 1)
    ids_s, sims_s = np.take_along_axis(ids, srt, 1), np.take_along_axis(sims, srt, 1)
    edge = (ids_s != np.arange(60)[:, None]) & (sims_s >= 0)
    got = sub_adjacency(torch.from_numpy(cand), torch.from_numpy(mask), torch.from_numpy(ids_s), torch.from_numpy(sims_s), torch.from_numpy(edge)).numpy()
    for b, c in enumerate(cands):
        want = row_normalize(A[c][:, c]).toarray()
        np.testing.assert_allclose(got[b, : len(c), : len(c)], want, atol=1e-6)
        assert np.all(got[b, len(c) :] == 0) and np.all(got[b, :, len(c) :] == 0)


def test_hand_checkable_peaks_and_tau():
    # 5 faces; kNN lists (self first) and similarities chosen by hand
    ids = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 0], [4, 3, 1]])
    sims = np.array([[1, 0.9, 0.5], [1, 0.9, 0.7], [1, 0.7, 0.5], [1, 0.85, 0.1], [1, 0.85, 0.2]], np.float32)
    conf = np.array([0.9, 0.5, 0.3, 0.2, 0.95])
    # peaks: 0 root; 1 → 0 (sim .9); 2 → 1 (first higher in list, sim .7); 3 → 4 (.85); 4 root
    np.testing.assert_array_equal(peaks_labels(ids, sims, conf, 0.8), [0, 0, 1, 2, 2])  # 2–1 cut (0.7 ≤ 0.8)
    np.testing.assert_array_equal(peaks_labels(ids, sims, conf, 0.6), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(peaks_labels(ids, sims, conf, 0.9), [0, 1, 2, 3, 4])  # strict: 0.9 is cut
    # equal confidences never link (strictly higher only)
    np.testing.assert_array_equal(peaks_labels(ids, sims, np.ones(5), 0.0), [0, 1, 2, 3, 4])


def test_floor_pick_links_past_a_peak_under_the_floor():
    # face 2's nearest higher-confidence neighbour (1) is under the floor, the next one (0) is not
    xr = l2_normalize(np.array([[1.0, 0.0], [0.0, 1.0], [0.98, 0.2]], np.float32))
    ids = np.array([[0, 2, 1], [1, 2, 0], [2, 1, 0]])
    sims = np.array([[1, 0.9, 0.8], [1, 0.9, 0.8], [1, 0.9, 0.85]], np.float32)
    conf = np.array([0.9, 0.8, 0.1])
    plain = peaks_labels(ids, sims, conf, 0.5, xr=xr, floor=0.9)
    picked = peaks_labels(ids, sims, conf, 0.5, xr=xr, floor=0.9, floor_pick=True)
    assert len(set(plain)) == 3  # 2 → 1 cut by the floor, 1 → 0 too
    assert picked[2] == picked[0] != picked[1]  # 2 → 0 passes it
    # no floor: floor_pick changes nothing
    np.testing.assert_array_equal(peaks_labels(ids, sims, conf, 0.5, floor_pick=True), peaks_labels(ids, sims, conf, 0.5))


def test_floor_mask_torch_blocks_match_numpy():
    # the CUDA path's torch code (run on the CPU here) gives numpy's mask, padding (-1) excluded
    from facecluster.cluster.gcn_v import _floor_mask_torch, floor_mask

    rng = np.random.default_rng(3)
    xr = l2_normalize(rng.standard_normal((500, 16)).astype(np.float32))
    ids = rng.integers(0, 500, (500, 30))
    ids[::7, -3:] = -1
    want = floor_mask(ids, xr, 0.3)
    got = _floor_mask_torch(ids, xr, 0.3, "cpu", rows=64)
    assert want.any() and not want.all() and not want[::7, -3:].any()
    assert (got == want).mean() > 0.999  # float rounding at the threshold only
    assert floor_mask(ids, xr, None) is None


def test_floor_with_cohort_offsets_cuts_links_of_faces_that_look_like_anyone():
    """The floor compares cos - (d_i + d_j) / 2 (refine.learned_floor_dev): a link whose plain
    cosine passes is cut when both faces sit above the cohort's reference, kept without offsets;
    the CUDA path's torch code gives the same mask."""
    from facecluster.cluster.gcn_v import _floor_mask_torch, floor_keep, floor_mask

    xr = l2_normalize(np.array([[1.0, 0.0], [0.95, np.sqrt(1 - 0.95**2)], [0.0, 1.0]], np.float32))
    peak = np.array([1, 0, -1])
    keep = np.array([True, True, False])
    assert floor_keep(keep, peak, xr, 0.94).tolist() == [True, True, False]  # cos 0.95 >= 0.94
    dev = np.array([0.02, 0.02, 0.0], np.float32)  # both look like anyone: 0.95 - 0.02 < 0.94
    assert floor_keep(keep, peak, xr, 0.94, dev).tolist() == [False, False, False]
    assert floor_keep(keep, peak, xr, 0.94, -dev).tolist() == [True, True, False]
    rng = np.random.default_rng(4)
    x2 = l2_normalize(rng.standard_normal((300, 16)).astype(np.float32))
    ids = rng.integers(0, 300, (300, 20))
    ids[::5, -2:] = -1
    d2 = rng.uniform(-0.01, 0.04, 300).astype(np.float32)
    want = floor_mask(ids, x2, 0.2, dev=d2)
    assert not np.array_equal(want, floor_mask(ids, x2, 0.2))  # the offsets matter
    assert (_floor_mask_torch(ids, x2, 0.2, "cpu", rows=64, dev=d2) == want).mean() > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_floor_mask_with_cohort_offsets_on_cuda_matches_numpy():
    """The learned methods' floor mask on the GPU (torch path, cohort offsets) is numpy's
    (bench/device_check.sh runs this on the device)."""
    from facecluster.cluster.gcn_v import floor_mask

    rng = np.random.default_rng(6)
    x = l2_normalize(rng.standard_normal((3000, 32)).astype(np.float32))
    ids = rng.integers(0, 3000, (3000, 40))
    ids[::9, -4:] = -1
    dev = rng.uniform(-0.01, 0.04, 3000).astype(np.float32)
    want = floor_mask(ids, x, 0.1, dev=dev)
    got = floor_mask(ids, x, 0.1, device="cuda", dev=dev)
    assert want.any() and not want.all()
    assert (got == want).mean() > 0.999  # float rounding at the threshold only


def test_learned_floor_dev_follows_the_floor_and_the_embedder():
    from facecluster.cluster.gcn_v import GCNVConfig
    from facecluster.cluster.refine import learned_floor_dev
    from facecluster.cohort import load_cohort

    co = load_cohort("dlib")
    xr = co.faces[:5]
    d = learned_floor_dev(GCNVConfig(embedder="dlib"), "dlib", xr)
    np.testing.assert_allclose(d, co.deviations(co.levels(xr)))
    assert learned_floor_dev(GCNVConfig(embedder="dlib", floor_cohort=False), "dlib", xr) is None
    assert learned_floor_dev(GCNVConfig(embedder="dlib", similarity_floor=False), "dlib", xr) is None
    assert learned_floor_dev(GCNVConfig(embedder="mbf"), "mbf", np.ones((2, 512), np.float32)) is None
    with pytest.raises(ValueError, match="floor_cohort=true"):
        learned_floor_dev(GCNVConfig(embedder="mbf", floor_cohort=True), "mbf", np.ones((2, 512), np.float32))
    assert get_clusterer("gcn-ve", device="cpu", embedder="dlib").settings()["floor_cohort"] is True
    assert get_clusterer("gcn-ve", device="cpu", embedder="dlib", similarity_floor=False).settings()["floor_cohort"] is False


def _gcn_e_case(ckpts, seed):
    """The random-checkpoint GCN-E and 300 random faces' GCN-V-like features, kNN (k 40),
    confidences, and the generator for more draws."""
    me = gc.load_gcn_e(ckpts[1])
    rng = np.random.default_rng(seed)
    feat = l2_normalize(rng.random((300, 512)).astype(np.float32))
    sims, ids = knn(feat, 40)
    return me, feat, sims, ids, rng.random(300), rng


def test_gcn_e_floor_pick_only_chooses_allowed(ckpts):
    me, feat, sims, ids, conf, rng = _gcn_e_case(ckpts, 2)
    allowed = rng.random(ids.shape) < 0.3
    p, s = gcn_e_peaks(me, feat, conf, ids, sims, ignore_ratio=0.5, allowed=allowed)
    p_all, _ = gcn_e_peaks(me, feat, conf, ids, sims, ignore_ratio=0.5)
    for i in range(300):
        if p[i] >= 0:
            j = list(ids[i]).index(p[i])
            assert allowed[i, j] and conf[p[i]] > conf[i] and s[i] == sims[i, j]
        else:  # a root: no allowed higher-confidence neighbour
            assert not any(allowed[i, j] and conf[ids[i, j]] > conf[i] for j in range(40))
    assert (p != p_all).any()


def test_ignore_set_and_candidates():
    ids = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [2, 3, 1, 0], [3, 2, 1, 0]])
    conf = np.array([0.1, 0.2, 0.3, 0.4])
    ec = edge_candidates(ids, conf, 0.5)  # int(4 * .5) = 2 least confident (0, 1) ignored
    np.testing.assert_array_equal(ec["count"], [3, 2, 1, 0])
    np.testing.assert_array_equal(ec["use_e"], [False, False, False, False])  # 2 has 1 candidate
    ec = edge_candidates(ids, conf, 0.0)
    np.testing.assert_array_equal(ec["use_e"], [True, True, False, False])
    assert not edge_candidates(ids, conf, 1.0)["use_e"].any()  # the original crashed here


def test_loaders_flush_subnormal_weights(ckpts, tmp_path):
    """Trained checkpoints hold subnormal weights (the shipped dlib GCN-E: 17 %), which x86 CPUs
    multiply ~30x slower; every loader sets them to zero, and the outputs do not change."""
    tiny = torch.finfo(torch.float32).tiny
    shipped = gc.load_gcn_e(gc.shipped_files("dlib")[1])
    assert not any(((p.abs() > 0) & (p.abs() < tiny)).any() for p in shipped.parameters())
    se = {k: v.clone() for k, v in ckpts[3].items()}
    w = se["conv2.weight"]
    w[::3] = torch.sign(w[::3]) * 1e-40  # a third of a layer subnormal
    assert ((w.abs() > 0) & (w.abs() < tiny)).sum() > 1000
    torch.save({"state_dict": se}, tmp_path / "sub.pth")
    me = gc.load_gcn_e(tmp_path / "sub.pth")
    assert not any(((p.abs() > 0) & (p.abs() < tiny)).any() for p in me.parameters())
    raw = gc.GCNE(me.feature_dim, me.nhid)
    raw.load_state_dict(se)  # the weights as stored, subnormals kept
    raw.eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((3, 20, me.feature_dim)).astype(np.float32))
    adj = torch.softmax(torch.from_numpy(rng.standard_normal((3, 20, 20)).astype(np.float32)), dim=2)
    with torch.inference_mode():
        assert torch.equal(me(x, adj), raw(x, adj))
    from facecluster.cluster.adanets.and_model import ANDModel, load_and_checkpoint

    a = ANDModel(16, 16)
    with torch.no_grad():
        next(a.parameters())[0, :4] = 1e-41
    torch.save({"state_dict": a.state_dict()}, tmp_path / "and.pth")
    loaded, _ = load_and_checkpoint(tmp_path / "and.pth")
    assert not any(((p.abs() > 0) & (p.abs() < tiny)).any() for p in loaded.parameters())


def test_training_flushes_subnormals_in_every_worker_thread():
    """train.flush_subnormals, called first by the training commands, sets flush-to-zero and
    denormals-are-zero for the worker threads too (they inherit it when they start): a matrix
    product on two threads treats subnormal inputs as zero. Its own process: the flag is global."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from facecluster.train import flush_subnormals\n"
        "on = {on}\n"
        "if on: assert flush_subnormals()\n"
        "torch.set_num_threads(2)\n"
        "a = torch.full((512, 512), 1e-39); b = torch.full((512, 512), 1e30)\n"
        "print(float((a @ b).abs().max()))\n"
    )
    out = {on: float(subprocess.run([sys.executable, "-c", code.format(on=on)], capture_output=True, text=True, check=True).stdout)
           for on in (False, True)}
    assert out[False] > 1e-7 and out[True] == 0.0


def test_gcn_e_batching_does_not_change_decisions(ckpts):
    me, feat, sims, ids, conf, _ = _gcn_e_case(ckpts, 1)
    p1, s1 = gcn_e_peaks(me, feat, conf, ids, sims, ignore_ratio=0.5, batch_nodes=1)
    p2, s2 = gcn_e_peaks(me, feat, conf, ids, sims, ignore_ratio=0.5, batch_nodes=100000)
    np.testing.assert_array_equal(p1, p2)
    # GCN-E really decides: some peaks differ from the nearest higher-confidence neighbour
    p0, _ = gcn_e_peaks(me, feat, conf, ids, sims, ignore_ratio=1.0)
    assert (p0 != p1).any()


# -------------------------------------------------------------------------------- any input
@pytest.mark.parametrize("method", ["gcn-v", "gcn-ve"])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 79])
def test_small_inputs(ckpts, method, n):
    pv, pe, _, _ = ckpts
    kw = {"checkpoint_v": str(pv), "device": "cpu"}
    if method == "gcn-ve":
        kw["checkpoint_e"] = str(pe)
    X, _ = _clustered(max(n, 1))
    lab = get_clusterer(method, **kw).fit_predict(X[:n])  # k = 80 / 160 > N: capped, no crash
    assert lab.shape == (n,) and lab.dtype == np.int64


@pytest.mark.parametrize("ignore_ratio", [0.0, 1.0])
def test_degenerate_inputs(ckpts, ignore_ratio):
    pv, pe, _, _ = ckpts
    kw = dict(checkpoint_v=str(pv), checkpoint_e=str(pe), device="cpu", ignore_ratio=ignore_ratio, tau=-1.0)
    m = get_clusterer("gcn-ve", similarity_floor=False, join_duplicates=False, **kw)
    same = np.tile(np.random.default_rng(0).normal(size=(1, 256)).astype(np.float32), (12, 1))
    # original algorithm: identical faces get (nearly: float rounding of the sparse product)
    # identical confidences and "strictly higher" leaves most of them roots (this test asserted
    # 12 roots, which no longer held on torch 2.13 before issue 11: 2 clusters)
    assert len(np.unique(m.fit_predict(same))) > 1
    # ties broken by index: the copies link to each other even without the duplicate rule
    assert len(np.unique(get_clusterer("gcn-ve", join_duplicates=False, **kw).fit_predict(same))) == 1
    assert len(np.unique(get_clusterer("gcn-ve", **kw).fit_predict(same))) == 1
    # every face a different person (orthogonal): negative/zero cosines are fine
    eye = np.eye(30, 256, dtype=np.float32)
    assert m.fit_predict(eye).shape == (30,)
    assert len(np.unique(get_clusterer("gcn-v", checkpoint_v=str(pv), device="cpu").fit_predict(eye))) == 30


def test_deterministic_and_settings_recorded(ckpts):
    pv, pe, _, _ = ckpts
    X, _ = _clustered(400, seed=5)
    a = get_clusterer("gcn-ve", checkpoint_v=str(pv), checkpoint_e=str(pe), device="cpu")
    la = a.fit_predict(X)
    lb = get_clusterer("gcn-ve", checkpoint_v=str(pv), checkpoint_e=str(pe), device="cpu").fit_predict(X)
    np.testing.assert_array_equal(la, lb)
    s = a.settings()
    assert (s["k"], s["k_e"], s["tau_0"], s["tau"], s["ignore_ratio"]) == (80, 160, 0.65, 0.8, 0.8)  # paper MS1M
    assert {"knn", "gcn_v", "gcn_e"} <= set(a.timings_)


# -------------------------------------------------------------------------------- shipped
def test_shipped_weights_run():
    if not gc.SHIPPED_V.is_file():
        pytest.fail(f"shipped GCN-V weights missing: {gc.SHIPPED_V}")
    X, _ = _clustered(150, d=128, seed=2)
    for method in ("gcn-v", "gcn-ve"):
        m = get_clusterer(method, device="cpu")
        assert m.fit_predict(X).shape == (150,)
        assert m.settings()["k"] == gc.shipped_settings()["k"]


def test_split_is_stable():
    assert is_validation_identity("lfw", "Tom_Hanks") and is_validation_identity("glint18", "Tom_Hanks")
    assert not is_validation_identity("lfw", "George_W_Bush")
    m = validation_mask("lfw", np.array(["Tom_Hanks", "George_W_Bush", "Tom_Hanks"]))
    np.testing.assert_array_equal(m, [True, False, True])


# -------------------------------------------------------------------------------- issue 11
def _two_groups(d=256, n_each=20, seed=0, cross=0.5):
    """Two tight groups whose members have plain cosine ~``cross`` across groups, ~0.99 within."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=d)
    b = cross * a + np.sqrt(1 - cross**2) * rng.normal(size=d)  # cos(a, b) ~ cross in high dimension
    X = np.concatenate([c + 0.05 * rng.normal(size=(n_each, d)) for c in (a, b)]).astype(np.float32)
    return X, np.repeat([0, 1], n_each)


@pytest.mark.parametrize("method", ["gcn-v", "gcn-ve"])
def test_similarity_floor_forbids_links_below_it(ckpts, method):
    """tau = -1 links every face to its nearest higher-confidence neighbour, whatever the
    similarity: without the floor the two groups chain into one cluster; with a floor between the
    within- and across-group cosines (a user checkpoint: the floor still applies) they cannot."""
    pv, pe, _, _ = ckpts
    kw = dict(checkpoint_v=str(pv), device="cpu", tau_0=-1.0, tau=-1.0, use_gcn_feat=False)
    if method == "gcn-ve":
        kw.update(checkpoint_e=str(pe), ignore_ratio=0.0)
    X, y = _two_groups()
    off = get_clusterer(method, similarity_floor=False, **kw).fit_predict(X)
    assert len(np.unique(off)) == 1
    on = get_clusterer(method, min_link_sim=0.8, **kw).fit_predict(X)
    # no cluster spans both groups
    assert all(len(np.unique(y[on == c])) == 1 for c in np.unique(on))
    # the floor is per embedder: a user checkpoint on dlib features gets dlib's floor
    from facecluster.calibration import LINK_FLOOR_BY_EMBEDDER

    from facecluster.cluster.refine import REFINED_LINK_FLOOR_BY_EMBEDDER

    s = get_clusterer(method, embedder="dlib", refine=False, **kw).settings()
    assert s["min_link_sim"] == LINK_FLOOR_BY_EMBEDDER["dlib"] and s["features"] == "raw"
    # with the refinement (on by default for dlib) the floor is the stricter refined one
    assert get_clusterer(method, embedder="dlib", **kw).settings()["min_link_sim"] == REFINED_LINK_FLOOR_BY_EMBEDDER["dlib"]
    assert get_clusterer(method, embedder="dlib", similarity_floor=False, **kw).settings()["min_link_sim"] is None


def test_floor_off_is_the_original_rule(ckpts):
    """similarity_floor=false, join_duplicates=false: exactly learn-to-cluster's stage A on the
    network's outputs (nearest strictly-higher confidence, 1 - sim < 1 - tau_0)."""
    pv, _, _, _ = ckpts
    X, _ = _clustered(300, seed=4)
    m = get_clusterer("gcn-v", checkpoint_v=str(pv), device="cpu", use_gcn_feat=False, tau_0=0.2,
                      similarity_floor=False, join_duplicates=False)
    lab = m.fit_predict(X)
    Xn = l2_normalize(X)
    sims, ids = knn(Xn, 80, normalize=False, backend="faiss", device="cpu")
    peak, psim = __import__("facecluster.graph", fromlist=["nearest_higher"]).nearest_higher(ids, sims, m.conf_)
    keep = (peak >= 0) & ((1.0 - psim.astype(np.float64)) < (1.0 - 0.2))
    src = np.nonzero(keep)[0]
    from facecluster.graph import components

    np.testing.assert_array_equal(lab, components(len(X), src, peak[src]))


@pytest.mark.parametrize("method", ["gcn-v", "gcn-ve"])
def test_copies_of_one_photo_share_a_cluster(method):
    """Four copies of one face among other faces: one cluster, with the shipped weights (the
    issue: ties in the confidence ordering gave them four ids)."""
    X, _ = _clustered(120, d=128, seed=7)
    X = np.concatenate([X[:50], np.repeat(X[50:51], 4, axis=0), X[51:]])
    lab = get_clusterer(method, device="cpu", embedder="dlib").fit_predict(X)
    assert len(np.unique(lab[50:54])) == 1


def test_checkpoint_feature_kind(ckpts, tmp_path):
    pv, pe, sv, se = ckpts
    assert gc.checkpoint_features(gc.read_meta(pv)) == "raw"  # learn-to-cluster release
    assert gc.checkpoint_features({"facecluster": "gcn-v"}) == "calibrated"  # facecluster before issue 11
    assert gc.checkpoint_features({"facecluster": "gcn-v", "features": "raw"}) == "raw"
    torch.save({"state_dict": sv, "meta": {"features": "calibrated"}}, tmp_path / "v.pth")
    m = get_clusterer("gcn-v", checkpoint_v=str(tmp_path / "v.pth"), device="cpu")
    assert m.feature_kind() == "calibrated"
    assert get_clusterer("gcn-v", checkpoint_v=str(tmp_path / "v.pth"), features="raw").feature_kind() == "raw"
    # the shipped weights say what they were trained on
    shipped = get_clusterer("gcn-ve", device="cpu")
    assert shipped.settings()["features"] in ("raw", "calibrated") and shipped.link_floor() is not None


def test_total_order_breaks_ties_by_index():
    r = gc.total_order(np.array([0.5, 0.5, 0.1, 0.5, 0.9], np.float32))
    # ascending confidence; among the 0.5s the lower index ranks higher
    np.testing.assert_array_equal(np.argsort(r), [2, 3, 1, 0, 4])


# -------------------------------------------------------------------------------- refinement
def _fragmented(seed=0, d=128):
    """A tight group of 12 faces (plain cosine ~0.99) split into 11 + a lone face, and a
    different person (cosine ~0.3 to the group) alone."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=d)
    b = 0.3 * a + np.sqrt(1 - 0.09) * rng.normal(size=d)
    X = np.concatenate([a + 0.08 * rng.normal(size=(12, d)), b[None] + 0.08 * rng.normal(size=(1, d))]).astype(np.float32)
    labels = np.array([0] * 11 + [1, 2])
    return X, labels


def test_plain_knn_from_rescores_and_sorts():
    from facecluster.cluster.refine import plain_knn_from

    xr = l2_normalize(np.array([[1, 0], [0.6, 0.8], [0.99, 0.14], [0, 1]], np.float32))
    # lists found in another space (wrong order, one -1 padding)
    ids = np.array([[0, 1, 2, 3], [1, 3, 0, -1], [2, 1, 0, 3], [3, 0, 1, 2]])
    i2, s2 = plain_knn_from(ids, xr)
    np.testing.assert_array_equal(i2[0], [0, 2, 1, 3])
    np.testing.assert_array_equal(i2[1], [1, 3, 0, -1])  # 0.8 > 0.6; the missing entry goes last
    assert s2[1, 3] == -np.inf and np.all(np.diff(s2[:, :3], axis=1) <= 0)
    np.testing.assert_allclose(s2[0, :2], [1.0, xr[0] @ xr[2]], rtol=1e-6)


def test_refine_learned_attaches_a_fragment_not_a_stranger():
    """The default's post-steps on a learned method's partition, from kNN lists in any order:
    the lone face of the tight group joins it (its 10 nearest agree, cosine >= 0.93), the
    different person stays alone."""
    from facecluster.cluster.refine import refine_learned

    X, labels = _fragmented()
    xr = l2_normalize(X)
    sims, ids = knn(xr, 13, normalize=False, backend="faiss", device="cpu")
    scrambled = np.ascontiguousarray(ids[:, ::-1])  # the order must not matter
    out = refine_learned(labels, scrambled, xr, embedder="dlib", overrides={})
    assert len(np.unique(out[:12])) == 1 and out[12] != out[0]
    # off by override: nothing joins
    none = refine_learned(labels, ids, xr, embedder="dlib", overrides={"merge_fragments": False, "attach_max_size": 0, "attach_frac": 0.0})
    np.testing.assert_array_equal(np.unique(none, return_inverse=True)[1], np.unique(labels, return_inverse=True)[1])
    with pytest.raises(ValueError, match="unknown refine_settings"):
        get_clusterer("gcn-v", refine_settings={"min_sim": 0.9})


@pytest.mark.parametrize("method", ["gcn-v", "gcn-ve"])
def test_refine_default_follows_the_floor(ckpts, method):
    """On with the floor for an embedder with tuned post-step thresholds (dlib); off with
    similarity_floor=false (the original algorithm, labels unchanged) and for unknown embedders."""
    pv, pe, _, _ = ckpts
    kw = dict(checkpoint_v=str(pv), device="cpu", use_gcn_feat=False, tau_0=0.3)
    if method == "gcn-ve":
        kw["checkpoint_e"] = str(pe)
    assert get_clusterer(method, embedder="dlib", **kw).settings()["refine"] is True
    assert get_clusterer(method, **kw).settings()["refine"] is False  # unknown embedder
    off = get_clusterer(method, embedder="dlib", similarity_floor=False, join_duplicates=False, **kw)
    assert off.settings()["refine"] is False
    X, _ = _clustered(200, seed=3)
    np.testing.assert_array_equal(
        off.fit_predict(X),
        get_clusterer(method, embedder="dlib", similarity_floor=False, join_duplicates=False, refine=False, **kw).fit_predict(X),
    )
    assert get_clusterer(method, embedder="dlib", similarity_floor=False, refine=True, **kw).settings()["refine"] is True


@pytest.mark.parametrize("method", ["gcn-v", "gcn-ve"])
def test_refine_in_fit_predict_is_the_shared_step(ckpts, method):
    """fit_predict with refine on = the method's labels, then refine_learned on its own kNN
    lists, then the near-duplicate rule."""
    from facecluster.cluster.base import join_near_duplicates
    from facecluster.cluster.refine import refine_learned

    pv, pe, _, _ = ckpts
    kw = dict(checkpoint_v=str(pv), device="cpu", embedder="dlib", min_link_sim=0.0)
    if method == "gcn-ve":
        kw["checkpoint_e"] = str(pe)
    X, _ = _clustered(300, seed=6, noise=0.3)
    on = get_clusterer(method, refine=True, **kw)
    lab = on.fit_predict(X)
    base = get_clusterer(method, refine=False, join_duplicates=False, **kw)
    lab0 = base.fit_predict(X)
    ids, sims = base.knn_
    ref = refine_learned(lab0, ids, l2_normalize(X), embedder="dlib", overrides=dict(gv.GCN_REFINE_DEFAULTS), plain=True, sims=sims)
    np.testing.assert_array_equal(lab, join_near_duplicates(X, ref, on.duplicate_sim(), knn_cache=ids))
    assert {"merge", "attach", "attach_rel"} <= set(on.timings_)


def test_gcn_refinement_takes_its_own_open_piece_share_unless_the_user_sets_one(ckpts, monkeypatch):
    """The GCN methods' open pieces need 40 % of a piece's leaving links (GCN_REFINE_DEFAULTS; the
    default and Ada-NETS 30 %) and with dlib their clusters get the weak-cut split
    (GCN_REFINE_DEFAULTS_BY_EMBEDDER); a user's refine_settings win over both."""
    seen = []
    real = gv.refine_learned
    monkeypatch.setattr(gv, "refine_learned", lambda *a, **k: seen.append(k["overrides"]) or real(*a, **k))
    pv, pe, _, _ = ckpts
    kw = dict(checkpoint_v=str(pv), checkpoint_e=str(pe), device="cpu", embedder="dlib")
    X, _ = _clustered(120, seed=3, noise=0.3)
    get_clusterer("gcn-ve", **kw).fit_predict(X)
    get_clusterer("gcn-ve", refine_settings={"merge_open_share": 0.3, "attach_share": 0.7}, **kw).fit_predict(X)
    from facecluster.cluster.refine import LEARNED_REFINE_DEFAULTS

    split = {"split_min_size": 20, "split_small_size": 40}
    assert seen == [
        {**LEARNED_REFINE_DEFAULTS, "merge_open_share": 0.4, **split},
        {**LEARNED_REFINE_DEFAULTS, "merge_open_share": 0.3, **split, "attach_share": 0.7},
    ]
    # the weak-cut split (both tiers) is dlib's (with mbf it cuts long-video people)
    assert not {"split_min_size", "split_small_size"} & set(gv.GCN_REFINE_DEFAULTS_BY_EMBEDDER.get("mbf", {}))


def test_gcn_settings_record_the_post_steps_that_ran(ckpts):
    """labels-gcn-ve.json records every post-step setting the refinement ran with, per embedder
    (the split with dlib only) and with the user's overrides; the fingerprint follows them."""
    from facecluster.workdir import fingerprint

    pv, pe, _, _ = ckpts
    kw = dict(checkpoint_v=str(pv), checkpoint_e=str(pe), device="cpu")
    dlib = get_clusterer("gcn-ve", embedder="dlib", **kw).settings()
    steps = dlib["refine_post_steps"]
    assert steps["split_min_size"] == 20 and steps["merge_open_share"] == 0.4 and steps["attach_share"] == 0.6
    assert (steps["split_small_size"], steps["split_small_k"], steps["split_small_min_size"]) == (40, 5, 10)
    assert steps["merge_min_sim"] is not None
    mine = get_clusterer("gcn-ve", embedder="dlib", refine_settings={"split_min_size": 0}, **kw).settings()
    assert mine["refine_post_steps"]["split_min_size"] == 0 and fingerprint(mine) != fingerprint(dlib)
    assert get_clusterer("gcn-ve", embedder="dlib", similarity_floor=False, **kw).settings()["refine_post_steps"] is None


# -------------------------------------------------------------------------------- per embedder
@pytest.mark.parametrize("embedder", sorted(gc.SHIPPED_GCN_VE))
def test_shipped_weights_follow_the_embedder(embedder):
    """Without checkpoints each embedder gets the weights and settings shipped for it, and the
    networks read its features (width and kind)."""
    from facecluster.cluster.refine import REFINED_LINK_FLOOR_BY_EMBEDDER

    v, e, js = gc.shipped_files(embedder)
    assert v.is_file() and e.is_file() and js.is_file(), f"shipped {embedder} weights missing"
    m = get_clusterer("gcn-ve", device="cpu", embedder=embedder)
    r = m.resolved()
    assert (r["checkpoint_v"], r["checkpoint_e"]) == (str(v), str(e))
    tuned = gc.shipped_settings(embedder)
    from facecluster.cluster.gcn_e import REFINED_TAU_E_BY_EMBEDDER

    assert r["tau_0"] == tuned["tau_0"] and r["k"] == tuned["k"]
    # GCN-E's tau: chosen on people the networks never saw when the floor and refinement run,
    # the shipped settings' (the original algorithm's) otherwise
    assert r["tau"] == REFINED_TAU_E_BY_EMBEDDER.get(embedder, tuned["tau_e"])
    for off in ({"similarity_floor": False}, {"refine": False}):
        assert get_clusterer("gcn-ve", device="cpu", embedder=embedder, **off).resolved()["tau"] == tuned["tau_e"]
    assert get_clusterer("gcn-ve", device="cpu", embedder=embedder, tau=0.7).resolved()["tau"] == 0.7
    assert r["min_link_sim"] == REFINED_LINK_FLOOR_BY_EMBEDDER[embedder] and r["refine"]
    assert not r["floor_pick"]  # opt-in (docs/benchmarks/gcn_ve.md §10)
    meta = gc.read_meta(v)
    assert meta.get("embedder", "dlib") == embedder
    d = gc.load_gcn_v(v).feature_dim
    X, y = _clustered(120, d=d, seed=4)
    lab = m.fit_predict(X)
    assert lab.shape == (120,)
    # well-separated synthetic people are not merged (the floor and thresholds hold)
    assert all(len(np.unique(y[lab == c])) == 1 for c in np.unique(lab))


@pytest.mark.parametrize("method", ["gcn-v", "gcn-ve"])
def test_floor_pick_setting_links_more_and_keeps_the_floor(ckpts, method):
    """--set floor_pick=true: every link still passes the floor, and no face is left with fewer
    links (the choice only moves to neighbours above it), so clusters only grow or join."""
    pv, pe, _, _ = ckpts
    kw = {"checkpoint_v": str(pv)} | ({"checkpoint_e": str(pe)} if method == "gcn-ve" else {})
    X, _ = _clustered(200, d=gc.load_gcn_v(pv).feature_dim, seed=5)
    base = dict(kw, min_link_sim=0.75, refine=False, join_duplicates=False)
    off = get_clusterer(method, device="cpu", **base).fit_predict(X)
    m = get_clusterer(method, device="cpu", floor_pick=True, **base)
    on = m.fit_predict(X)
    # a superset of links: every cluster without it lies inside one with it, and some join
    assert all(len(np.unique(on[off == c])) == 1 for c in np.unique(off))
    assert len(np.unique(on)) < len(np.unique(off))
    assert not get_clusterer(method, device="cpu", **kw).resolved()["floor_pick"]


def test_embedder_without_shipped_weights_is_a_clear_error():
    m = get_clusterer("gcn-v", device="cpu", embedder="arcface")
    with pytest.raises(gc.CheckpointError, match=r"no shipped GCN-V/GCN-E weights for the 'arcface' embedder \(shipped for: dlib, mbf\)"):
        m.fit_predict(np.eye(4, 512, dtype=np.float32))


def test_link_audit_describes_the_partition(ckpts):
    """peak_ / link_tau_ / link_kept_ (bench/gcn_ve_links.py reads them): without floor,
    duplicates rule or refinement, the clusters are the trees of the kept face→peak links."""
    pv, pe, _, _ = ckpts
    X, _ = _clustered(400, seed=7)
    kw = dict(checkpoint_v=str(pv), checkpoint_e=str(pe), device="cpu", similarity_floor=False, join_duplicates=False)
    m = get_clusterer("gcn-ve", **kw)
    lab = m.fit_predict(X)
    assert m.peak_.shape == m.link_tau_.shape == m.link_kept_.shape == (400,)
    np.testing.assert_array_equal(m.link_kept_, m.link_tau_)  # no floor: tau alone decides
    assert not m.link_kept_[m.peak_ < 0].any()
    kept = np.flatnonzero(m.link_kept_)
    assert (lab[kept] == lab[m.peak_[kept]]).all()
    assert len(np.unique(lab)) == 400 - len(kept)  # links go to strictly higher confidence: a forest
    # a stricter tau keeps a subset of the links
    strict = get_clusterer("gcn-ve", tau=0.95, **kw)
    strict.fit_predict(X)
    assert (strict.link_kept_ <= m.link_kept_).all() and strict.link_kept_.sum() < m.link_kept_.sum()
