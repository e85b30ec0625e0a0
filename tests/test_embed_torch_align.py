"""The dlib embedder's torch alignment (``dlib?align=torch``, issue 12): chips as dlib cuts them,
descriptors as the default CPU path gives them, the runner's contract (order, errors, N = 0..5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

dlib = pytest.importorskip("dlib")

from facecluster.embed import EmbedderError, embedder_class, get_embedder  # noqa: E402
from facecluster.embed import align as A  # noqa: E402
from facecluster.embed.chip_torch import chip_details, extract_chips, pyramid_levels  # noqa: E402
from facecluster.embed.dlib_resnet import DlibEmbedder, default_landmarks_path  # noqa: E402
from facecluster.embed.face_images import FaceImage  # noqa: E402
from facecluster.embed.runner import embed_records  # noqa: E402
from facecluster.embed.torch_align import DlibTorchAlignEmbedder, iter_box  # noqa: E402
from facecluster.imageio import load_image  # noqa: E402

from conftest import data_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _pick(name: str, k: int, pattern: str = "*/*") -> list[str]:
    fs = sorted(p for p in data_path(name).glob(pattern) if p.is_file())
    return [str(fs[i]) for i in np.linspace(0, len(fs) - 1, k).round().astype(int)]


def _faces() -> list[str]:
    """Real crops of the three sets: LFW (150 px, loose), glint18 (112 px, tight), ORL (92x112 grey)."""
    return _pick("lfw", 6) + _pick("glint18", 4) + _pick("orl", 3)


def _batch(imgs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    H, W = max(i.shape[0] for i in imgs), max(i.shape[1] for i in imgs)
    b = np.zeros((len(imgs), H, W, 3), np.uint8)
    for k, im in enumerate(imgs):
        b[k, : im.shape[0], : im.shape[1]] = im
    return torch.from_numpy(b), torch.tensor([i.shape[:2] for i in imgs])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def emb_torch():
    return DlibTorchAlignEmbedder(batch_size=8, threads=1)


@pytest.fixture(scope="module")
def emb_dlib():
    return DlibEmbedder(batch_size=8, threads=1)


# -- chips ---------------------------------------------------------------------------------------
def test_chip_details_match_dlib():
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.uniform(60, 300, 2)
        pts = c + rng.uniform(-60, 60, (5, 2))
        pts = np.round(pts)
        det = dlib.full_object_detection(dlib.rectangle(0, 0, 10, 10), [dlib.point(int(x), int(y)) for x, y in pts])
        ref = dlib.get_face_chip_details(det, 150, 0.25)
        rect, angle = chip_details(torch.tensor(pts[None]), 150, 0.25)
        r = ref.rect
        np.testing.assert_allclose(rect[0].numpy(), [r.left(), r.top(), r.right(), r.bottom()], atol=1e-7)
        assert abs(float(angle[0]) - ref.angle) < 1e-9


@pytest.mark.parametrize("scale", [1.0, 2.5, 5.3])
def test_chips_bit_identical_to_dlib_on_real_crops(scale):
    """Same landmarks → the very same chip as dlib.get_face_chip, also when dlib samples from its
    image pyramid (crops scaled up so that the face spans 2-4 chip sides)."""
    from PIL import Image

    al = A.Aligner()
    imgs, pts, refs = [], [], []
    for p in _faces():
        img = A.normalise_size(A.to_rgb_uint8(load_image(p)))
        if scale != 1.0:
            h, w = img.shape[:2]
            img = np.asarray(Image.fromarray(img).resize((int(w * scale), int(h * scale)), Image.BICUBIC))
        shape = al.landmarks(img)
        imgs.append(img)
        pts.append([(q.x, q.y) for q in shape.parts()])
        refs.append(np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25)))
    images, sizes = _batch(imgs)
    lm = torch.tensor(pts, dtype=torch.float64)
    got = extract_chips(images, sizes, lm).numpy()
    levels = set(pyramid_levels(chip_details(lm, 150, 0.25)[0], 150).tolist())
    # native crops: plain bilinear; scaled up: dlib's pyramid (level 0, and level 1 at x5.3)
    assert levels == {-1} if scale == 1.0 else (0 in levels and (scale < 5 or 1 in levels)), levels
    np.testing.assert_array_equal(got, np.stack(refs))
    # a face alone gives the same chip as in the padded batch
    np.testing.assert_array_equal(extract_chips(*_batch(imgs[-1:]), lm[-1:]).numpy(), got[-1:])


def test_iter_box_matches_align():
    """The HOG-box correction of the ``iter`` refit, bit for bit as Aligner.landmarks_in computes it."""
    m = A.mean_shape(default_landmarks_path())
    rng = np.random.default_rng(1)
    fits = [A.box_from_landmarks(p, m) for p in rng.uniform(0, 300, (7, 5, 2)).round()]
    got = iter_box(torch.tensor(fits, dtype=torch.float64)).numpy()
    for k, (l, t, r, b) in enumerate(fits):
        side, cx, cy = (r - l) * A.ITER_BOX[0], (l + r) / 2, (t + b) / 2 + A.ITER_BOX[1] * (r - l)
        assert got[k].tolist() == [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


# -- descriptors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("margin", ["auto", "iter"])
def test_descriptors_match_default_path(margin):
    """align=torch vs the default CPU alignment through the runner: same records, same order, the
    very same integer landmarks as dlib's predictor (so the same chips) and descriptors cosine >= 0.999."""
    paths = _faces()
    a = DlibEmbedder(batch_size=8, threads=1, margin=margin)
    b = DlibTorchAlignEmbedder(batch_size=8, threads=1, margin=margin)
    ra = embed_records(a, paths, num_workers=0)
    rb = embed_records(b, paths, num_workers=0)
    assert ra.index.tolist() == rb.index.tolist() == list(range(len(paths)))
    cos = _cos(ra.features, rb.features)
    assert cos.min() >= 0.999, cos
    # the CPU path on the same normalised image and box: identical landmarks and chips
    items = [b.prepare(load_image(p)) for p in paths]
    ref_shapes = [a.aligner.landmarks_in(it.image, it.box) for it in items]
    ref = np.array([[(q.x, q.y) for q in sh.parts()] for sh in ref_shapes], float)
    ta = b.torch_aligner
    got = np.floor(ta.landmarks(*ta.to_device(items)).numpy() + 0.5)
    np.testing.assert_array_equal(got, ref)
    chips = ta.chips(items).numpy()
    np.testing.assert_array_equal(chips, np.stack([a.aligner.chip_from(it.image, sh) for it, sh in zip(items, ref_shapes)]))


def test_summed_leaves_variant_within_one_pixel():
    """``exact=False`` (one summed add per cascade level, fewer GPU kernels) stays within 1 px."""
    from facecluster.embed.landmarks_torch import TorchShapePredictor

    al = A.Aligner()
    imgs = [A.normalise_size(A.to_rgb_uint8(load_image(p))) for p in _faces()]
    rects = torch.tensor([[round(v) for v in al.rect(im)[0]] for im in imgs], dtype=torch.float64)
    images, sizes = _batch(imgs)
    gray = TorchShapePredictor.intensity(images)
    exact = TorchShapePredictor(default_landmarks_path())(gray, sizes, rects)
    fast = TorchShapePredictor(default_landmarks_path(), exact=False)(gray, sizes, rects)
    assert np.abs(np.floor(fast.numpy() + 0.5) - np.floor(exact.numpy() + 0.5)).max() <= 1


def test_deterministic_and_batch_independent(emb_torch):
    paths = _faces()[:6]
    r1 = embed_records(emb_torch, paths, num_workers=0)
    r2 = embed_records(emb_torch, paths, num_workers=0, chunk_size=4)
    np.testing.assert_allclose(r1.features, r2.features, atol=1e-5)  # other batches and padding
    r3 = embed_records(emb_torch, paths, num_workers=0)
    np.testing.assert_array_equal(r1.features, r3.features)  # same input, same bits


def test_embed_batch_takes_items_or_chips(emb_torch, emb_dlib):
    img = load_image(_faces()[0])
    item = emb_torch.prepare(img)
    assert isinstance(item, FaceImage) and item.rule in ("hog", "margin")
    chip = emb_dlib.prepare(img)
    np.testing.assert_allclose(emb_torch.embed_batch(chip[None]), emb_dlib.embed_batch(chip[None]), atol=1e-5)
    assert emb_torch.embed_batch([]).shape == (0, 128)
    with pytest.raises(EmbedderError):
        emb_torch.embed_batch([chip])


# -- runner contract -----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5])
def test_n_records(emb_torch, n):
    paths = (_faces() * 2)[:n]
    r = embed_records(emb_torch, paths, num_workers=0, chunk_size=2)
    assert r.features.shape == (n, 128) and r.index.tolist() == list(range(n)) and r.errors == {}
    assert np.isfinite(r.features).all()


def test_bad_images_reported_per_record_threads_and_processes(tmp_path, emb_torch):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    faces = _faces()
    paths = [faces[0], str(tmp_path / "missing.png"), faces[6], str(bad), faces[11], faces[0]]
    r_t = embed_records(emb_torch, paths, num_workers=1, chunk_size=2, workers="threads")
    r_p = embed_records(emb_torch, paths, num_workers=2, chunk_size=2, workers="processes")
    assert r_t.index.tolist() == r_p.index.tolist() == [0, 2, 4, 5]
    assert sorted(r_t.errors) == [1, 3] and r_t.errors == r_p.errors
    np.testing.assert_array_equal(r_t.features, r_p.features)  # same decoded images and boxes
    np.testing.assert_allclose(r_t.features[0], r_t.features[-1], atol=1e-5)  # duplicate, other chunk
    assert embed_records(emb_torch, [], workers="processes").features.shape == (0, 128)


# -- registry ------------------------------------------------------------------------------------
def test_registry_align_option():
    e = get_embedder("dlib?align=torch&margin=iter")
    assert isinstance(e, DlibTorchAlignEmbedder) and e.aligner.kind == "iter"
    d = get_embedder("dlib?align=dlib")
    assert type(d) is DlibEmbedder
    assert e.fingerprint() != get_embedder("dlib?margin=iter").fingerprint()
    assert d.fingerprint() == get_embedder("dlib").fingerprint()
    assert e.describe()["alignment"]["align"] == "torch"
    assert embedder_class("dlib", "torch") is DlibTorchAlignEmbedder
    with pytest.raises(EmbedderError, match="align must be one of dlib, torch"):
        get_embedder("dlib?align=gpu")


# -- margin=agree ---------------------------------------------------------------------------------
def _off_centre(path: str, pad: int = 60) -> np.ndarray:
    """A real crop with its face pushed to the bottom right (edge-padded top and left): the two
    detector-free starts of ``agree`` disagree there and the crop takes the HOG route."""
    img = A.to_rgb_uint8(load_image(path))
    return np.pad(img, ((pad, 0), (pad, 0), (0, 0)), mode="edge")


def _agree_ref(al: A.Aligner, img: np.ndarray) -> tuple[np.ndarray, str]:
    shape, rule = al.landmarks_rule(img)
    return np.array([(q.x, q.y) for q in shape.parts()], float), rule


def test_agree_matches_cpu_agree_on_real_crops():
    """``dlib?align=torch&margin=agree`` vs ``dlib?margin=agree``: every crop takes the same route
    (the agreeing starts, or HOG), the very same integer landmarks and chips, descriptors cos >= 0.9999;
    the batch mixes LFW, glint18, ORL and off-centre crops that go to HOG."""
    paths = _faces()
    a = get_embedder("dlib?margin=agree&threads=1", batch_size=8)
    b = get_embedder("dlib?align=torch&margin=agree&threads=1", batch_size=8)
    assert isinstance(b, DlibTorchAlignEmbedder) and b.aligner.kind == "agree"
    imgs = [load_image(p) for p in paths] + [_off_centre(paths[0]), _off_centre(paths[5])]
    items = [b.prepare(im) for im in imgs]
    assert {it.rule for it in items} == {"agree"}  # the workers run no HOG for agree
    ref = [_agree_ref(a.aligner, it.image) for it in items]
    ta = b.torch_aligner
    got = ta.landmarks(*ta.to_device(items), [it.image for it in items]).numpy()
    np.testing.assert_array_equal(got, np.stack([r[0] for r in ref]))
    assert ta.last_rules == [r[1] for r in ref]
    assert ta.last_rules[-2:] == ["hog", "hog"] and ta.last_rules.count("hog") < len(items) // 2
    ref_chips = [a.aligner.chip(im) for im in imgs]
    np.testing.assert_array_equal(ta.chips(items).numpy(), np.stack(ref_chips))
    cos = _cos(a.embed_batch(np.stack(ref_chips)), b.embed_batch(items))
    assert cos.min() >= 0.9999, cos
    # through the runner as well, in order
    ra, rb = embed_records(a, paths, num_workers=0), embed_records(b, paths, num_workers=0, chunk_size=5)
    assert ra.index.tolist() == rb.index.tolist() == list(range(len(paths)))
    assert _cos(ra.features, rb.features).min() >= 0.9999


def test_agree_hog_route_and_fallback():
    """A crop whose starts disagree runs HOG once more on the host; with a plausible detection its
    landmarks are one predictor run from the HOG box (dlib's own predictor from the same box), with
    none (a face-less image) the first start's landmarks stay, as on the CPU path."""
    b = DlibTorchAlignEmbedder(margin="agree", batch_size=4, threads=1)
    al = b.aligner
    off = A.normalise_size(_off_centre(_faces()[0]))
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    items = [b.prepare(off), b.prepare(noise)]
    ta = b.torch_aligner
    for k in ta.agree_counts:
        ta.agree_counts[k] = 0
    got = ta.landmarks(*ta.to_device(items), [it.image for it in items]).numpy()
    box = A.Aligner.hog_rect(items[0].image)
    assert box is not None and ta.last_rules[0] == "hog"
    pred = dlib.shape_predictor(str(al.landmarks_path))
    want = pred(items[0].image, dlib.rectangle(*[int(round(v)) for v in box]))
    np.testing.assert_array_equal(got[0], [(q.x, q.y) for q in want.parts()])
    pts, rule = _agree_ref(al, items[1].image)
    np.testing.assert_array_equal(got[1], pts)
    assert rule == ta.last_rules[1]
    if A.Aligner.hog_rect(noise) is None:  # the fallback: no detection keeps the first start
        assert rule == "agree"
    assert ta.agree_counts["crops"] == 2 and 1 <= ta.agree_counts["hog"] <= 2 and ta.agree_counts["hog_found"] >= 1


def test_agree_hog_pool_same_as_in_process():
    """``hog_workers=2`` (HOG of the disagreeing crops in a process pool) only moves the work."""
    faces = _faces()
    imgs = [_off_centre(faces[0]), _off_centre(faces[5]), load_image(faces[1]), _off_centre(faces[3], 50)]
    b0 = get_embedder("dlib?align=torch&margin=agree&threads=1", batch_size=4)
    b2 = get_embedder("dlib?align=torch&margin=agree&threads=1&hog_workers=2", batch_size=4)
    assert b2.hog_workers == 2 and b0.fingerprint() == b2.fingerprint()
    items = [b0.prepare(im) for im in imgs]
    t0, t2 = b0.torch_aligner, b2.torch_aligner
    try:
        p0 = t0.landmarks(*t0.to_device(items), [it.image for it in items]).numpy()
        p2 = t2.landmarks(*t2.to_device(items), [it.image for it in items]).numpy()
        assert t2._hog_pool is not None and t2.agree_counts["hog"] >= 2
        np.testing.assert_array_equal(p0, p2)
        assert t0.last_rules == t2.last_rules
    finally:
        t2.close()
    with pytest.raises(EmbedderError):
        get_embedder("dlib?align=torch&margin=agree&hog_workers=-1")


def test_agree_deterministic_batch_independent_and_n_records():
    b = get_embedder("dlib?align=torch&margin=agree&threads=1", batch_size=3)
    paths = _faces()[:7]
    r1 = embed_records(b, paths, num_workers=0)
    r2 = embed_records(b, paths, num_workers=0)
    np.testing.assert_array_equal(r1.features, r2.features)
    r3 = embed_records(b, paths, num_workers=0, chunk_size=2)  # other batches and padding
    np.testing.assert_allclose(r1.features, r3.features, atol=1e-5)
    for n in range(6):
        r = embed_records(b, paths[:n], num_workers=0, chunk_size=2)
        assert r.features.shape == (n, 128) and r.index.tolist() == list(range(n)) and r.errors == {}
    assert b.fingerprint() != get_embedder("dlib?align=torch").fingerprint()
    assert b.fingerprint() != get_embedder("dlib?margin=agree").fingerprint()


def test_agree_bad_images_reported(tmp_path):
    b = get_embedder("dlib?align=torch&margin=agree&threads=1", batch_size=4)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    faces = _faces()
    paths = [faces[0], str(bad), faces[6], str(tmp_path / "missing.png"), faces[11]]
    r = embed_records(b, paths, num_workers=1, chunk_size=2, workers="processes")
    assert r.index.tolist() == [0, 2, 4] and sorted(r.errors) == [1, 3]
    ref = embed_records(get_embedder("dlib?margin=agree&threads=1"), [faces[0], faces[6], faces[11]], num_workers=0)
    assert _cos(r.features, ref.features).min() >= 0.9999


# -- benchmark -----------------------------------------------------------------------------------
def test_bench_steps_and_align_parity(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import embed_throughput as b
    finally:
        sys.path.pop(0)
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps([{"img_path": p, "face_id": i} for i, p in enumerate(_faces()[:4])]))
    out = tmp_path / "steps.json"
    b.main(["steps", "--input", str(inp), "--n", "4", "--align", "torch", "--batch-size", "4", "--workers", "1",
            "--json", str(out)])
    s = json.loads(out.read_text())
    assert {"decode", "face box", "landmarks", "chip", "network", "landmarks + chip + network"} <= set(s["steps"])
    assert s["align"] == "torch" and s["device_faces_per_s"] > 0
    out = tmp_path / "parity.json"
    b.main(["align-parity", "--input", str(inp), "--n", "4", "--batch-size", "4", "--json", str(out)])
    p = json.loads(out.read_text())
    assert p["n"] == 4 and p["cos_min"] >= 0.999 and p["landmarks_identical"] == 1.0 and p["chip_max_abs"] == 0
    assert "| landmarks + chip + network |" in capsys.readouterr().out
    # margin=agree: the CPU steps (HOG only inside landmarks_rule), the torch steps, agree-vs-agree parity
    out = tmp_path / "steps-agree.json"
    b.main(["steps", "--input", str(inp), "--n", "4", "--margin", "agree", "--batch-size", "4", "--workers", "1",
            "--json", str(out)])
    s = json.loads(out.read_text())
    assert s["margin"] == "agree" and 0 <= s["agree_hog_share"] <= 1 and s["steps"]["landmarks"]["ms_per_face"] > 0
    b.main(["steps", "--input", str(inp), "--n", "4", "--align", "torch", "--margin", "agree", "--batch-size", "4",
            "--workers", "1", "--json", str(out)])
    s = json.loads(out.read_text())
    assert s["margin"] == "agree" and "agree hog" in s["steps"] and s["device_faces_per_s"] > 0
    b.main(["align-parity", "--input", str(inp), "--n", "4", "--batch-size", "4", "--margin", "agree",
            "--min-cos", "0.9999", "--json", str(out)])
    p = json.loads(out.read_text())
    assert p["landmarks_identical"] == 1.0 and p["chip_max_abs"] == 0 and p["rules_identical"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("margin", ["auto", "agree"])
def test_cuda_torch_align_matches_cpu(margin):
    paths = _faces()
    cpu = embed_records(DlibTorchAlignEmbedder(batch_size=8, margin=margin), paths, num_workers=0)
    gpu = embed_records(DlibTorchAlignEmbedder(device="cuda", batch_size=8, margin=margin), paths, num_workers=0)
    assert cpu.index.tolist() == gpu.index.tolist()
    cos = _cos(cpu.features, gpu.features)
    assert cos.min() >= 0.999, cos


def test_turned_face_goes_to_the_device_upright(emb_torch, emb_dlib):
    """``align=torch``: the worker turns a face found only turned, so the device's chip and
    descriptor are the upright crop's, as on the dlib path."""
    from facecluster.embed import align as A
    from facecluster.embed.face_images import FaceImagePreparer

    fs = sorted(p for p in data_path("lfw").glob("*/*.jpg"))
    img = A.normalise_size(A.to_rgb_uint8(load_image(fs[0])))
    assert A.Aligner.hog_rect(img) is not None
    t = A.turn(img, 3)
    item = FaceImagePreparer(emb_torch.aligner).prepare(t)
    assert item.rule == "hog-turned" and np.array_equal(item.image, img)
    d_torch = emb_torch.embed_batch([item])[0]
    d_dlib = emb_dlib.embed_batch(emb_dlib.prepare(t)[None])[0]
    d_up = emb_dlib.embed_batch(emb_dlib.prepare(img)[None])[0]
    assert np.allclose(d_dlib, d_up, atol=1e-5)
    assert np.allclose(d_torch, d_up, atol=2e-3)
