"""bench/train_shift.py: what a device training run writes loads back as one Ada-NETS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import train_shift  # noqa: E402

from facecluster.cluster import get_clusterer  # noqa: E402
from facecluster.cluster.adanets.and_model import load_and_checkpoint  # noqa: E402
from facecluster.knn import l2_normalize  # noqa: E402


def _pool(path: Path) -> None:
    """60 people x 6 faces of 128-d descriptors around their own centre (dlib's width)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((60, 128)).astype(np.float32)
    x = l2_normalize(np.repeat(centres, 6, axis=0) + 0.4 * rng.standard_normal((360, 128)).astype(np.float32))
    names = np.repeat([f"person_{i:02d}" for i in range(60)], 6)
    train_shift.save_pool(path, x, names, np.zeros(len(x), np.int64), ["synthetic"])


def test_the_gcn_trains_on_the_features_its_and_reads(tmp_path):
    # Ada-NETS feeds one kind of features to both networks (the AND checkpoint's meta); a GCN
    # trained on plain descriptors beside a calibrated AND would load and run on the wrong ones
    _pool(tmp_path / "pool.npz")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "train_shift.py"), "--pool", str(tmp_path / "pool.npz"), "--out", str(out),
           "--embedder", "dlib", "--what", "and,gcn", "--graphs", "pooled", "--and-input", "gram", "--and-features", "calibrated",
           "--and-steps", "2", "--and-batch", "16", "--and-warmup", "1", "--gcn-steps", "1", "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    m_and, meta = load_and_checkpoint(out / "adanets_and_dlib.pth")
    gcn_meta = torch.load(out / "adanets_gcn_dlib.pth", weights_only=True)["meta"]
    assert (meta["features"], meta["and_input"], gcn_meta["features"]) == ("calibrated", "gram", "calibrated")
    c = get_clusterer("adanets", embedder="dlib", checkpoint_and=str(out / "adanets_and_dlib.pth"),
                      checkpoint_gcn=str(out / "adanets_gcn_dlib.pth"))
    x = np.random.default_rng(1).standard_normal((50, 128)).astype(np.float32)
    assert c.feature_kind() == "calibrated" and c.fit_predict(x).shape == (50,)
