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
