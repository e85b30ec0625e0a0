"""Ada-NETS training (facecluster.train.adanets) on a tiny synthetic set: the loops run, stop at
their time budget, and write checkpoints the inference code loads (also as float16)."""

import numpy as np
import pytest
import torch
from facecluster.cluster.adanets.and_model import load_and_checkpoint, predict_k
from facecluster.train.adanets import and_data, save_checkpoint, train_and, train_gcn


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    y = np.repeat(np.arange(12), 25)
    x = centres[y] + 0.3 * rng.normal(size=(len(y), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.int64)


def test_train_and_runs_stops_at_its_budget_and_loads(blobs, tmp_path):
    x, y = blobs
    full, info = train_and(x, y, steps=6, batch_size=32, warmup=1, nhid=32, loss="log", optimizer="adam", lr=1e-3, log=lambda *_: None)
    assert info["steps_done"] == 6 and np.isfinite(info["final_loss"])
    # a budget already spent: one step, then stop (the device run's guard)
    cut, info_cut = train_and(x, y, steps=6, batch_size=32, warmup=1, nhid=32, loss="log", optimizer="adam", lr=1e-3,
                              max_seconds=1e-9, log=lambda *_: None)
    assert info_cut["steps_done"] == 1
    # original layout, float16 tensors (how a device run returns them): loads as float32
    p = tmp_path / "and.pth"
    save_checkpoint(full, p, info["steps_done"], {"scale_max": 80})
    ck = torch.load(p, weights_only=True)
    ck["state_dict"] = {k: v.half() for k, v in ck["state_dict"].items()}
    torch.save(ck, p)
    m, meta = load_and_checkpoint(p)
    assert meta["scale_max"] == 80 and next(m.parameters()).dtype == torch.float32
    ids_ss, _ = and_data(x, y)
    k_half = predict_k(m, x, ids_ss)
    k_full = predict_k(full, x, ids_ss)
    assert k_half.shape == (len(x),) and np.abs(k_half - k_full).max() <= 1


def test_train_gcn_stops_at_its_budget(blobs):
    x, y = blobs
    _, info = train_gcn(x, y, steps=3, order_k=40, group=16, groups=2, fanout=8, nhid=32, log=lambda *_: None)
    assert info["steps_done"] == 3
    _, cut = train_gcn(x, y, steps=3, order_k=40, group=16, groups=2, fanout=8, nhid=32, max_seconds=1e-9, log=lambda *_: None)
    assert cut["steps_done"] == 1


def test_train_gcn_fine_tunes_from_given_weights(blobs):
    # init: the fine-tune of a shipped GCN on another AND's graph starts from its weights; with a
    # zero learning rate nothing moves, and a step at a real one moves them from there
    x, y = blobs
    kw = dict(order_k=40, group=16, groups=2, fanout=8, nhid=32, log=lambda *_: None)
    first, _ = train_gcn(x, y, steps=2, seed=1, **kw)
    start = {k: v.clone() for k, v in first.state_dict().items()}
    same, info = train_gcn(x, y, steps=1, lr=0.0, init=start, **kw)
    assert info["init"] and all(torch.equal(v, start[k]) for k, v in same.state_dict().items())
    moved, _ = train_gcn(x, y, steps=2, lr=0.1, warmup=0, init=start, **kw)  # step 1 at lr 0.05 (cosine)
    diff = max((v - start[k]).abs().max().item() for k, v in moved.state_dict().items())
    assert 0 < diff < 1  # from the given weights, not from a fresh draw


def _people(seed: int, n_people: int = 40, dim: int = 64):
    """Unit vectors of people with 1-40 photos each (sizes as uneven as a photo collection)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 41, size=n_people)
    y = np.repeat(np.arange(n_people), sizes)
    centres = rng.normal(size=(n_people, dim))
    x = centres[y] / np.sqrt(dim) + 0.09 * rng.normal(size=(len(y), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.int64)


def test_gram_and_learns_the_neighbour_count_of_people_it_never_saw(tmp_path):
    """AND reading the neighbourhood's cosines (``and_input="gram"``) learns k* on one set of
    people and predicts it for others (the features AND collapsed to k̂ ≈ 1-2 on unseen people,
    docs/benchmarks/adanets.md §13); the checkpoint records its input and loads as trained."""
    torch.manual_seed(0)
    x, y = _people(0)
    xv, yv = _people(1)
    m, info = train_and(x, y, k=40, steps=150, batch_size=64, warmup=10, nhid=64, loss="log", optimizer="adam",
                        lr=3e-3, and_input="gram", log=lambda *_: None)
    ids_v, kv = and_data(xv, yv, k=40)
    kh = predict_k(m, xv, ids_v, 40)
    assert np.corrcoef(kh, kv)[0, 1] > 0.8, (kh[:20], kv[:20])
    assert 0.5 < kh.mean() / kv.mean() < 2.0
    p = tmp_path / "and.pth"
    save_checkpoint(m, p, info["steps_done"], {"scale_max": 40})
    m2, meta = load_and_checkpoint(p)
    assert meta["and_input"] == "gram" and m2.and_input == "gram"
    np.testing.assert_array_equal(predict_k(m2, xv, ids_v, 40), kh)
