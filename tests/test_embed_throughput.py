"""Embed-stage throughput pieces (issue 12): worker processes, the detector-free ``iter``
alignment, and the end-to-end benchmark script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

dlib = pytest.importorskip("dlib")

from facecluster.embed import align as A  # noqa: E402
from facecluster.embed.dlib_resnet import DlibEmbedder, default_landmarks_path  # noqa: E402
from facecluster.embed.runner import embed_records, use_processes  # noqa: E402
from facecluster.imageio import load_image  # noqa: E402

from conftest import data_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _faces(n_lfw: int = 6, n_glint: int = 3) -> list[str]:
    lfw = sorted(p for p in data_path("lfw").glob("*/*") if p.is_file())
    glint = sorted(p for p in data_path("glint18").glob("*/*") if p.is_file())
    pick = lambda fs, k: [str(fs[i]) for i in np.linspace(0, len(fs) - 1, k).round().astype(int)]  # noqa: E731
    return pick(lfw, n_lfw) + pick(glint, n_glint)


def test_mean_shape_is_the_predictors_unit_box_shape():
    m = A.mean_shape(default_landmarks_path())
    assert m.shape == (5, 2)
    assert ((m > 0) & (m < 1)).all()
    # eye corners above the nose point, left/right pairs mirrored about the centre
    assert (m[:4, 1] < m[4, 1]).all()
    assert abs((m[0, 0] + m[2, 0]) / 2 - 0.5) < 0.02


def test_box_from_landmarks_inverts_the_box_mapping():
    m = A.mean_shape(default_landmarks_path())
    for l, t, side in ((10.0, 20.0, 100.0), (-5.5, 3.25, 37.0), (200.0, 0.0, 640.0)):
        pts = np.array([l, t]) + side * m
        got = A.box_from_landmarks(pts, m)
        np.testing.assert_allclose(got, (l, t, l + side, t + side), atol=1e-9)


def test_iter_margin_parsing_and_fingerprint():
    assert A.parse_margin("iter") == ("iter", A.AUTO_FALLBACK_MARGIN)
    assert A.parse_margin("iter:0.2") == ("iter", 0.2)
    a, b = A.Aligner("iter"), A.Aligner("iter:0.15")
    assert a.fingerprint() == b.fingerprint() != A.Aligner("auto").fingerprint()
    assert a.settings()["iter"] == [A.ITER_ROUNDS, *A.ITER_BOX]
    with pytest.raises(ValueError):
        A.parse_margin("iter:x")


def test_iter_landmarks_close_to_hog_on_real_faces():
    """No detector: the refitted box lands the landmarks within a few px of the HOG-box ones."""
    auto, it = A.Aligner("auto"), A.Aligner("iter")
    diffs = []
    for p in _faces(8, 4):
        img = A.normalise_size(A.to_rgb_uint8(load_image(p)))
        a = np.array([(q.x, q.y) for q in auto.landmarks(img).parts()])
        b = np.array([(q.x, q.y) for q in it.landmarks(img).parts()])
        diffs.append(np.abs(a - b).max() / max(img.shape[:2]))
        assert it.chip(img).shape == (150, 150, 3)
    assert np.median(diffs) < 0.03, diffs  # median within 3 % of the crop side


def test_use_processes_rules(monkeypatch):
    emb = DlibEmbedder()
    monkeypatch.delenv("FACECLUSTER_EMBED_WORKERS", raising=False)
    assert use_processes(emb, True) is True
    assert use_processes(emb, False) is False  # a custom loader cannot be pickled
    assert use_processes(emb, True, "threads") is False
    monkeypatch.setenv("FACECLUSTER_EMBED_WORKERS", "threads")
    assert use_processes(emb, True) is False
    with pytest.raises(ValueError):
        use_processes(emb, False, "processes")
    with pytest.raises(ValueError):
        use_processes(emb, True, "fibres")

    class Plain:  # embedders that do not declare process_safe stay on threads
        pass

    monkeypatch.delenv("FACECLUSTER_EMBED_WORKERS")
    assert use_processes(Plain(), True) is False


def test_worker_processes_match_threads_in_order_with_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = _faces(5, 2)
    paths = [paths[0], str(tmp_path / "missing.png"), *paths[1:4], str(bad), *paths[4:], paths[0]]
    emb = DlibEmbedder(batch_size=3, margin="iter")
    r_t = embed_records(emb, paths, None, num_workers=1, workers="threads")
    r_p = embed_records(emb, paths, [{"x": i} for i in range(len(paths))], num_workers=2, workers="processes")
    assert r_t.index.tolist() == r_p.index.tolist() == [0, 2, 3, 4, 6, 7, 8, 9]
    assert sorted(r_p.errors) == [1, 5] and r_p.errors == r_t.errors
    np.testing.assert_array_equal(r_t.features, r_p.features)  # same chips, same network
    np.testing.assert_allclose(r_p.features[0], r_p.features[-1], atol=1e-5)  # duplicate, other batch
    empty = embed_records(emb, [], None, workers="processes")
    assert empty.features.shape == (0, 128) and empty.errors == {}


def _bench():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import embed_throughput
    finally:
        sys.path.pop(0)
    return embed_throughput


def test_bench_records_and_steps(tmp_path, capsys):
    b = _bench()
    src = tmp_path / "src"
    src.mkdir()
    for i, p in enumerate(_faces(2, 1)):
        (src / f"{i}{Path(p).suffix}").write_bytes(Path(p).read_bytes())
    b.main(["records", "--src", str(src), "--n", "5", "--out", str(tmp_path / "recs")])
    recs = json.loads((tmp_path / "recs" / "input.json").read_text())
    assert len(recs) == 5 and len({r["img_path"] for r in recs}) == 5
    assert all(Path(r["img_path"]).is_file() for r in recs)
    out = tmp_path / "steps.json"
    b.main(["steps", "--input", str(tmp_path / "recs" / "input.json"), "--n", "4", "--margin", "iter",
            "--batch-size", "4", "--workers", "2", "--json", str(out)])
    s = json.loads(out.read_text())
    assert set(s["steps"]) == {"decode", "face box", "landmarks", "chip", "network"}
    assert s["cpu_ms_per_face"] > 0 and s["network_faces_per_s"] > 0
    assert "| landmarks |" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_end_to_end_matches_cpu():
    """Whole embed loop (worker processes + network on CUDA, fp32) vs CPU on real crops."""
    staged = sorted((REPO / ".gpu" / "crops").glob("*"))  # the device check's crops (no ../shared/data there)
    paths = [str(p) for p in staged[:: max(1, len(staged) // 12)]] if staged else _faces(6, 3)
    cpu = embed_records(DlibEmbedder(batch_size=4), paths, workers="processes", num_workers=2)
    gpu = embed_records(DlibEmbedder(device="cuda", batch_size=4), paths, workers="processes", num_workers=2)
    assert cpu.index.tolist() == gpu.index.tolist()
    cos = (cpu.features * gpu.features).sum(1) / np.linalg.norm(cpu.features, axis=1) / np.linalg.norm(gpu.features, axis=1)
    assert cos.min() >= 0.9999


# -- dlib's shape predictor batched in torch --------------------------------------------------
@pytest.fixture(scope="module")
def cascade():
    from facecluster.embed.landmarks_torch import read_shape_predictor

    return read_shape_predictor(default_landmarks_path())


def _landmark_batch(paths):
    imgs = [A.normalise_size(A.to_rgb_uint8(load_image(p))) for p in paths]
    H, W = max(i.shape[0] for i in imgs), max(i.shape[1] for i in imgs)
    batch = np.zeros((len(imgs), H, W, 3), np.uint8)
    for k, im in enumerate(imgs):
        batch[k, : im.shape[0], : im.shape[1]] = im
    # boxes of several kinds: the 0.15-margin box, one shifted partly outside the image
    rects = []
    for k, im in enumerate(imgs):
        l, t, r, b = (round(v) for v in A.Aligner.margin_rect(*im.shape[:2], 0.15))
        if k % 3 == 2:
            l, t, r, b = l - 40, t - 30, r - 40, b - 30
        rects.append((l, t, r, b))
    return imgs, batch, rects


def test_shape_predictor_file_parsed_completely(cascade):
    m = cascade
    assert m.split_idx.shape == (15, 500, 15, 2) and m.leaves.shape == (15, 500, 16, 10)
    assert m.anchor.shape[0] == 15 and m.deltas.shape == (*m.anchor.shape, 2)
    assert m.anchor.max() < 5 and m.split_idx.max() < m.anchor.shape[1]
    np.testing.assert_allclose(m.mean, A.mean_shape(default_landmarks_path()), atol=1e-6)


def test_torch_landmarks_match_dlib(cascade):
    """Rounded torch landmarks equal dlib's for nearly every coordinate, never more than 1 px off."""
    from facecluster.embed.landmarks_torch import TorchShapePredictor

    imgs, batch, rects = _landmark_batch(_faces(9, 3))
    torch.set_num_threads(1)
    tp = TorchShapePredictor(cascade)
    out = tp(TorchShapePredictor.intensity(torch.from_numpy(batch)), torch.tensor([i.shape[:2] for i in imgs]),
             torch.tensor(rects, dtype=torch.float32)).numpy()
    pred = dlib.shape_predictor(str(default_landmarks_path()))
    ref = np.array([[(q.x, q.y) for q in pred(im, dlib.rectangle(*r)).parts()] for im, r in zip(imgs, rects)], float)
    d = np.abs(np.round(out) - ref)
    assert d.max() <= 1 and (d == 0).mean() >= 0.95, (d.max(), (d == 0).mean())
    assert np.abs(out - ref).max() < 1.0
    # a face alone in its batch gives the same landmarks as in the padded batch
    one = tp(TorchShapePredictor.intensity(torch.from_numpy(batch[:1, : imgs[0].shape[0], : imgs[0].shape[1]])),
             torch.tensor([imgs[0].shape[:2]]), torch.tensor(rects[:1], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(one[0], out[0], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_landmarks_cuda_match_cpu(cascade):
    from facecluster.embed.landmarks_torch import TorchShapePredictor

    staged = sorted((REPO / ".gpu" / "crops").glob("*"))
    paths = [str(p) for p in staged[:: max(1, len(staged) // 24)]] if staged else _faces(9, 3)
    imgs, batch, rects = _landmark_batch(paths)
    args = (TorchShapePredictor.intensity(torch.from_numpy(batch)), torch.tensor([i.shape[:2] for i in imgs]),
            torch.tensor(rects, dtype=torch.float32))
    cpu = TorchShapePredictor(cascade)(*args).numpy()
    gpu = TorchShapePredictor(cascade, device="cuda")(*args).cpu().numpy()
    assert np.abs(np.round(cpu) - np.round(gpu)).max() <= 1 and np.abs(cpu - gpu).max() < 0.5
