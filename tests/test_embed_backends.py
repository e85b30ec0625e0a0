"""hfsoftmax ResNet-50 and ArcFace ONNX embedders, the embedder registry, and the embed runner.

The hfsoftmax checkpoint and the ONNX models are written by the tests themselves with random
weights, in the layouts the real files use; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facecluster.embed import EmbedderError, get_embedder, parse_spec, parse_spec_options
from facecluster.embed.hfsoftmax import HfsoftmaxResNet50, load_checkpoint, resize_shorter_centre
from facecluster.embed.runner import embed_records

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """On the shared 2-core CI box a ResNet-50 forward is ~6x slower with 2 OpenMP threads than 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _random_hfsoftmax_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of the ltc ResNet-50 with random weights *and* random BN statistics."""
    torch.manual_seed(seed)
    sd = HfsoftmaxResNet50().state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) * 1.5 + 0.5)
        elif k.endswith("running_mean") or (k.endswith("bias") and v.dtype.is_floating_point):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("num_batches_tracked"):
            v.fill_(1234)
    return sd


@pytest.fixture(scope="module")
def hfs_state() -> dict[str, torch.Tensor]:
    return _random_hfsoftmax_state()


@pytest.fixture(scope="module")
def hfs_ckpt(tmp_path_factory, hfs_state) -> Path:
    """A checkpoint exactly as hfsoftmax's train.py/simplify_ckpt.py write it."""
    p = tmp_path_factory.mktemp("hfs") / "resnet50_part0_train.pth.tar"
    sd = {"module.base." + k: v for k, v in hfs_state.items()}
    torch.save({"state_dict": sd, "epoch": 20, "arch": "resnet50"}, p)
    return p


def _onnx_model(
    path: Path, *, side: int = 112, batch: int | str = "None", dim: int = 512, out_rank: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """ArcFace-like signature: float input 'input.1' (batch, 3, side, side) → (batch, dim).

    Conv 8x8/8 (3→4) + ReLU + flatten (4·14·14) + MatMul: position-sensitive, so a wrong warp or
    channel order changes the output.
    """
    onnx = pytest.importorskip("onnx")  # the dev extra; onnxruntime runs the models
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3, 8, 8)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    s = side // 8
    m = (rng.standard_normal((4 * s * s, dim)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "w", "b"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "m"], ["683" if out_rank == 2 else "e"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(m, "m")]
    out_shape: list = [batch, dim]
    if out_rank != 2:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
        nodes.append(helper.make_node("Unsqueeze", ["e", "axes"], ["683"]))
        out_shape = [batch, dim, 1, 1]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, side, side])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"w": w, "b": b, "m": m}


def _onnx_reference(chips: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(((chips.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
    y = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(p["w"]), torch.from_numpy(p["b"]), stride=8))
    return (y.flatten(1) @ torch.from_numpy(p["m"])).numpy()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("onnx") / "w600k_r50.onnx"
    return p, _onnx_model(p)


def _faces(n: int) -> list[Path]:
    root = DATA / "glint18"
    if not root.is_dir():
        pytest.skip("real face data not found (../shared/data)")
    return sorted(p for d in sorted(root.iterdir())[:2] for p in sorted(d.iterdir())[: (n + 1) // 2])[:n]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ------------------------------------------------------------------------------------ registry
def test_spec_parsing():
    assert parse_spec("dlib") == ("dlib", None)
    assert parse_spec("hfsoftmax:/m/r50.pth.tar") == ("hfsoftmax", "/m/r50.pth.tar")
    assert parse_spec_options("arcface:/m/w600k_r50.onnx?align=dlib&threads=1") == (
        "arcface",
        "/m/w600k_r50.onnx",
        {"align": "dlib", "threads": "1"},
    )
    # a '?' that is not followed by key=value pairs belongs to the path
    assert parse_spec_options("arcface:/odd/what?.onnx") == ("arcface", "/odd/what?.onnx", {})
    assert parse_spec_options("dlib?margin=0.2") == ("dlib", None, {"margin": "0.2"})
    with pytest.raises(EmbedderError, match="unknown embedder 'facenet'"):
        parse_spec("facenet:/x.pt")
    for name in ("hfsoftmax", "arcface"):
        with pytest.raises(EmbedderError, match="needs a model file"):
            get_embedder(name)
    # settings are checked against the embedder's constructor before anything is loaded
    with pytest.raises(EmbedderError, match=r"embedder 'dlib' has no setting 'bogus'; settings: .*margin"):
        get_embedder("dlib?bogus=1")
    with pytest.raises(EmbedderError, match="has no setting 'device'"):
        get_embedder("dlib", options={"device": "cuda"})


def test_registry_declarations():
    from facecluster.embed import EMBEDDERS, embedder_class

    assert {"dlib", "hfsoftmax", "arcface"} <= set(EMBEDDERS)
    h, a = embedder_class("hfsoftmax"), embedder_class("arcface")
    assert (h.dim, h.input_size, h.needs_keypoints, h.needs_path) == (256, (112, 112), False, True)
    assert (a.dim, a.input_size, a.needs_keypoints, a.needs_path) == (512, (112, 112), True, True)
    assert "0.3125" in h.preprocessing and "template" in a.preprocessing


# ------------------------------------------------------------------------------------ hfsoftmax
def test_hfsoftmax_architecture_matches_notes():
    net = HfsoftmaxResNet50()
    sd = net.state_dict()
    assert len(sd) == 327 and sum(k.endswith("num_batches_tracked") for k in sd) == 54
    assert sum(p.numel() for p in net.parameters()) == 25_081_920
    assert tuple(sd["layer1x1.0.bias"].shape) == (256,) and tuple(sd["feature.weight"].shape) == (256, 4096)
    assert all(m.eps == 1e-10 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net.conv1.stride == (2, 2)


def test_hfsoftmax_loads_strictly_and_matches_reference(hfs_ckpt, hfs_state):
    emb = get_embedder(f"hfsoftmax:{hfs_ckpt}")
    assert emb.dim == 256 and emb.mean is None
    rng = np.random.default_rng(1)
    chips = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    got = emb.embed_batch(chips)
    assert got.shape == (2, 256) and got.dtype == np.float32
    # independent reference: the original's preprocessing written out by hand, on a module that
    # receives the very same (prefix-stripped) weights through load_state_dict(strict=True)
    ref_net = HfsoftmaxResNet50().eval()
    ref_net.load_state_dict(hfs_state, strict=True)
    x = chips[..., ::-1].astype(np.float32) / 255.0  # RGB→BGR, ToTensor
    x = (x - 0.5) / 0.3125
    with torch.inference_mode():
        want = ref_net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 1e-2  # the random BN statistics really propagate

    # describe(): which embedder and which file (sha256) produced the features
    d = emb.describe()
    import hashlib

    assert d["embedder"] == "hfsoftmax" and d["dim"] == 256
    assert d["sha256"] == hashlib.sha256(hfs_ckpt.read_bytes()).hexdigest()
    assert d["fingerprint"] == emb.fingerprint() and "0.3125" in d["preprocessing"]
    json.dumps(d)  # goes into features.json


def test_hfsoftmax_old_checkpoints_load(tmp_path):
    """No num_batches_tracked (PyTorch < 0.4.1), legacy (non-zip) serialisation, bare state dict."""
    sd = {k: v for k, v in _random_hfsoftmax_state(seed=3).items() if not k.endswith("num_batches_tracked")}
    old = tmp_path / "old.pth.tar"
    torch.save({"state_dict": {"module.base." + k: v for k, v in sd.items()}}, old, _use_new_zipfile_serialization=False)
    net = load_checkpoint(old)
    for k, v in sd.items():
        assert torch.equal(net.state_dict()[k], v), k
    bare = tmp_path / "bare.pth"
    torch.save(sd, bare)  # no wrapper, no prefix
    assert torch.equal(load_checkpoint(bare).feature.weight, sd["feature.weight"])
    # a training checkpoint still holding its classifier: the classifier is ignored
    train = tmp_path / "train.pth.tar"
    torch.save({"state_dict": {**{"module.base." + k: v for k, v in sd.items()}, "module.logits.weight": torch.zeros(10, 256)}}, train)
    load_checkpoint(train)


def test_hfsoftmax_wrong_files(tmp_path):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(EmbedderError, match="not a loadable PyTorch checkpoint"):
        get_embedder(f"hfsoftmax:{junk}")
    with pytest.raises(EmbedderError, match="checkpoint not found"):
        get_embedder(f"hfsoftmax:{tmp_path / 'missing.pth.tar'}")
    # a learn-to-cluster GCN-V checkpoint handed to the wrong place: keys are listed
    gcn = tmp_path / "gcn_v.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(512, 512), "classifier.0.weight": torch.zeros(512, 512)}}, gcn)
    with pytest.raises(EmbedderError, match=r"does not match.*expected 327 keys.*found 2 keys.*missing 272: .*unexpected 1: classifier.0.weight; wrong shape 1: conv1.weight: expected \(64, 3, 7, 7\)"):
        get_embedder(f"hfsoftmax:{gcn}")
    # wrong feature dimension (a 512-D head)
    sd = HfsoftmaxResNet50().state_dict()
    sd["feature.weight"] = torch.zeros(512, 4096)
    sd["feature.bias"] = torch.zeros(512)
    wrong = tmp_path / "r50_512.pth.tar"
    torch.save({"state_dict": {"module.base." + k: v for k, v in sd.items()}}, wrong)
    with pytest.raises(EmbedderError, match=r"wrong shape 2: feature.bias: expected \(256,\), found \(512,\)"):
        get_embedder(f"hfsoftmax:{wrong}")
    # weights_only: a pickle that would run code is refused, not executed
    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"x": _Evil()}}, evil)
    with pytest.raises(EmbedderError, match="not a loadable PyTorch checkpoint"):
        get_embedder(f"hfsoftmax:{evil}")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_hfsoftmax_preprocessing_and_settings(hfs_ckpt):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(resize_shorter_centre(a), a)  # aligned: untouched
    tall = rng.integers(0, 256, (150, 120, 3), dtype=np.uint8)
    assert resize_shorter_centre(tall).shape == (112, 112, 3)
    grey = rng.integers(0, 256, (224, 224), dtype=np.uint8)
    assert resize_shorter_centre(grey).shape == (112, 112, 3)
    with pytest.raises(EmbedderError, match="only supported on CUDA"):
        get_embedder(f"hfsoftmax:{hfs_ckpt}?precision=bf16")
    with pytest.raises(EmbedderError, match="no setting 'align'"):
        get_embedder(f"hfsoftmax:{hfs_ckpt}?align=dlib")
    with pytest.raises(EmbedderError, match="decoder=nvjpeg needs --device cuda"):
        get_embedder(f"hfsoftmax:{hfs_ckpt}?decoder=nvjpeg")
    with pytest.raises(EmbedderError, match="unknown decoder"):
        get_embedder(f"hfsoftmax:{hfs_ckpt}?decoder=bogus")
    from facecluster.embed.runner import default_cpu_threads, usable_cpus

    assert 1 <= default_cpu_threads() < usable_cpus() + 1
    assert get_embedder(f"hfsoftmax:{hfs_ckpt}").threads == default_cpu_threads()
    assert get_embedder(f"hfsoftmax:{hfs_ckpt}?threads=torch").threads is None
    with pytest.raises(EmbedderError, match="threads must be >= 1"):
        get_embedder(f"hfsoftmax:{hfs_ckpt}?threads=0")


# ------------------------------------------------------------------------------------ arcface
def test_similarity_transform_recovers_known_transform():
    from facecluster.embed.arcface import similarity_transform

    ang, s, t = math.radians(25), 1.7, np.array([13.0, -4.0])
    r = s * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    src = TEMPLATE
    dst = src @ r.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    # mirrored points: the best *proper* similarity is returned, never a reflection
    m2 = similarity_transform(src, src * [-1, 1])
    assert np.linalg.det(m2[:, :2]) > 0


def _blob_image(kps: np.ndarray, size: int = 240, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size, 3), np.float64)
    for c, (x, y) in enumerate(kps):
        img[..., c % 3] += 250 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def _blob_centres(chip: np.ndarray, pts: np.ndarray, r: int = 7) -> np.ndarray:
    out = []
    for c, (x, y) in enumerate(pts):
        x0, y0 = int(round(x)), int(round(y))
        w = chip[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1, c % 3].astype(np.float64)
        yy, xx = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(out)


def test_arcface_keypoint_warp_puts_points_on_template(onnx_file):
    path, _ = onnx_file
    emb = get_embedder(f"arcface:{path}")
    assert emb.needs_keypoints and emb.settings.align == "keypoints"
    # a face 2x larger than the template, rotated by 15 degrees and shifted: blobs at its keypoints
    ang = math.radians(15)
    r = 2.0 * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    kps = TEMPLATE @ r.T + [40.0, 10.0]
    img = _blob_image(kps, sigma=4.0)
    chip = emb.prepare(img, {"img_path": "x.png", "keypoints": kps.tolist()})
    assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    # the blobs (sigma 2 after the 0.5x warp) are centred on the template points
    np.testing.assert_allclose(_blob_centres(chip, TEMPLATE), TEMPLATE, atol=0.35)
    # a second check against a half-pixel convention error: identity keypoints give back the image
    img112 = _blob_image(TEMPLATE, size=112)
    same = emb.prepare(img112, {"keypoints": TEMPLATE.tolist()})
    assert np.abs(same.astype(int) - img112.astype(int)).max() <= 1


def test_arcface_keypoints_follow_decoder_rescaling(onnx_file, tmp_path):
    """load_image shrinks a 1400-px crop to 1024 px (and enlarges tiny ones): keypoints given in the
    file's pixels must be scaled the same way before the warp."""
    from PIL import Image

    from facecluster.embed.runner import _image_scale

    path, _ = onnx_file
    emb = get_embedder(f"arcface:{path}")
    kps = TEMPLATE * 10 + [100.0, 60.0]
    big = tmp_path / "big.png"
    Image.fromarray(_blob_image(kps, size=1400, sigma=20.0)).save(big)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(tiny)
    assert _image_scale(str(tiny), (38, 32, 3)) == (1.6, 38 / 24)
    chips = []
    orig = emb.prepare_sized  # what the runner calls (chip and eye distance)

    def spy(img, rec):
        chip, iod = orig(img, rec)
        chips.append(chip)
        return chip, iod

    emb.prepare_sized = spy
    feats, index, errors = embed_records(emb, [str(big)], [{"keypoints": kps.tolist()}], num_workers=0)
    assert index.tolist() == [0] and not errors
    np.testing.assert_allclose(_blob_centres(chips[0], TEMPLATE), TEMPLATE, atol=0.5)


def test_arcface_embeds_like_reference_and_describes(onnx_file):
    path, params = onnx_file
    emb = get_embedder(f"arcface:{path}", options={"align": "none"})
    assert emb.dim == 512 and emb.input_name == "input.1" and emb.fixed_batch is None
    rng = np.random.default_rng(2)
    chips = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(emb.embed_batch(chips), _onnx_reference(chips, params), rtol=1e-4, atol=1e-4)
    # align=none on a non-112 crop: plain resize
    assert emb.prepare(rng.integers(0, 256, (150, 130, 3), dtype=np.uint8), {}).shape == (112, 112, 3)
    d = emb.describe()
    assert d["embedder"] == "arcface" and d["dim"] == 512 and not d["needs_keypoints"]
    assert d["settings"]["align"] == "none" and len(d["sha256"]) == 64
    assert d["onnx"]["providers"] == ["CPUExecutionProvider"]
    # settings change the fingerprint (features would differ), threads do not
    assert get_embedder(f"arcface:{path}?align=none&threads=1").fingerprint() == emb.fingerprint()
    assert get_embedder(f"arcface:{path}").fingerprint() != emb.fingerprint()


def test_arcface_fixed_batch_model(tmp_path):
    p = tmp_path / "b1.onnx"
    params = _onnx_model(p, batch=1, dim=128, seed=5)
    emb = get_embedder(f"arcface:{p}?align=none", batch_size=4)
    assert emb.fixed_batch == 1 and emb.dim == 128
    chips = np.random.default_rng(3).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(emb.embed_batch(chips), _onnx_reference(chips, params), rtol=1e-4, atol=1e-4)


def test_arcface_wrong_files_and_settings(tmp_path, onnx_file):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx" * 20)
    with pytest.raises(EmbedderError, match="not a loadable ONNX model"):
        get_embedder(f"arcface:{junk}")
    small = tmp_path / "96.onnx"
    _onnx_model(small, side=96)
    with pytest.raises(EmbedderError, match=r"wrong input.*expected float \(N, 3, 112, 112\).*96, 96"):
        get_embedder(f"arcface:{small}")
    rank4 = tmp_path / "rank4.onnx"
    _onnx_model(rank4, out_rank=4)
    with pytest.raises(EmbedderError, match=r"wrong output.*expected \(N, D\).*\(1, 512, 1, 1\)"):
        get_embedder(f"arcface:{rank4}")
    path, _ = onnx_file
    with pytest.raises(EmbedderError, match="align"):
        get_embedder(f"arcface:{path}?align=magic")
    with pytest.raises(EmbedderError, match="threads"):
        get_embedder(f"arcface:{path}?threads=many")
    assert get_embedder(f"arcface:{path}?threads=ort&align=none").settings.threads == "ort"
    with pytest.raises(EmbedderError, match="model not found"):
        get_embedder(f"arcface:{tmp_path / 'nope.onnx'}")


def test_arcface_missing_keypoints_reported_per_record(tmp_path, onnx_file):
    path, params = onnx_file
    from PIL import Image

    rng = np.random.default_rng(4)
    paths, records = [], []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (130, 120, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
        records.append({"img_path": p.name, "keypoints": (TEMPLATE + [4, 9]).tolist()})
    records[1] = {"img_path": "1.png"}  # no keypoints
    records[3]["keypoints"] = None  # explicit null: same
    (tmp_path / "bad.png").write_bytes(b"garbage")
    paths.append(str(tmp_path / "bad.png"))
    records.append({"img_path": "bad.png", "keypoints": TEMPLATE.tolist()})
    emb = get_embedder(f"arcface:{path}")
    for workers in (0, 2):
        feats, index, errors = embed_records(emb, paths, records, num_workers=workers, chunk_size=2)
        assert index.tolist() == [0, 2, 4]
        assert sorted(errors) == [1, 3, 5]
        assert errors[1].startswith("record has no keypoints") and errors[3].startswith("record has no keypoints")
        assert "decode" in errors[5] or "image" in errors[5]
        want = emb.embed_batch(np.stack([emb.prepare(np.asarray(Image.open(paths[i]).convert("RGB")), records[i]) for i in (0, 2, 4)]))
        np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_arcface_dlib_alignment_on_real_face(onnx_file):
    """align=dlib: the warped chip has dlib's landmarks where DLIB_TEMPLATE says (self-consistency)."""
    pytest.importorskip("dlib")
    from facecluster.embed.arcface import DLIB_TEMPLATE
    from facecluster.imageio import load_image

    lfw = DATA / "lfw" / "Aaron_Eckhart"
    if not lfw.is_dir():
        pytest.skip("real face data not found")
    path, _ = onnx_file
    emb = get_embedder(f"arcface:{path}?align=dlib")
    assert not emb.needs_keypoints
    img = load_image(sorted(lfw.iterdir())[0])
    chip = emb.prepare(img, {})  # keypoints not needed
    assert chip.shape == (112, 112, 3)
    again = emb.dlib_points(chip)
    assert np.abs(again - DLIB_TEMPLATE).max() < 4.0, again


# ------------------------------------------------------------------------------------ runner
def test_runner_real_images_errors_and_order(onnx_file, tmp_path):
    faces = [str(p) for p in _faces(4)]
    paths = [faces[0], str(tmp_path / "missing.jpg"), faces[1], faces[2], str(tmp_path), faces[3]]
    emb = get_embedder(f"arcface:{onnx_file[0]}?align=none", batch_size=2)
    res = embed_records(emb, paths, [{} for _ in paths], num_workers=2, chunk_size=2)
    feats, index, errors = res
    assert index.tolist() == [0, 2, 3, 5] and feats.shape == (4, 512)
    assert set(errors) == {1, 4} and "not found" in errors[1] and "directory" in errors[4]
    assert {"decode", "prepare", "network", "wall"} <= set(res.timings)
    # threads or not, same numbers; and a direct embed_batch agrees
    feats0, index0, errors0 = embed_records(emb, paths, None, num_workers=0, chunk_size=3)
    np.testing.assert_array_equal(index0, index)
    np.testing.assert_allclose(feats0, feats, rtol=1e-5, atol=1e-5)
    from facecluster.imageio import load_image

    direct = emb.embed_batch(np.stack([emb.prepare(load_image(paths[i]), {}) for i in (0, 2, 3, 5)]))
    np.testing.assert_allclose(direct, feats, rtol=1e-4, atol=1e-4)
    empty = embed_records(emb, [], [], num_workers=1)
    assert empty.features.shape == (0, 512) and empty.index.shape == (0,) and empty.errors == {}


class _TinyTorchEmbedder:
    """A cheap stand-in with the hfsoftmax interface (prepare / forward_chips / embed_batch)."""

    name, dim, input_size, device, batch_size = "tiny", 16, (112, 112), "cpu", 2

    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 16, 16), torch.nn.Flatten(), torch.nn.Linear(4 * 49, 16)).eval()

    def prepare(self, img, record):
        return resize_shorter_centre(img)

    def forward_chips(self, x):
        with torch.inference_mode():
            return self.net(x.permute(0, 3, 1, 2).float() / 255.0)

    def embed_batch(self, chips):
        return self.forward_chips(torch.from_numpy(chips)).numpy()


def test_runner_pipelined_feeder_keeps_order(tmp_path, monkeypatch):
    """The CUDA path's double-buffered, deferred read-back logic, exercised on CPU."""
    import facecluster.embed.runner as runner

    faces = [str(p) for p in _faces(5)]
    bad = str(tmp_path / "nope.jpg")
    # chunk_size 2: [ok ok] [bad bad] [ok ok] [ok bad] [ok] -- an all-error chunk between two pending ones
    paths = [faces[0], faces[1], bad, bad, faces[2], faces[3], faces[4], bad, faces[0]]
    emb = _TinyTorchEmbedder()
    plain = embed_records(emb, paths, None, num_workers=1, chunk_size=2)
    monkeypatch.setattr(runner, "_use_feeder", lambda e: True)
    piped = embed_records(emb, paths, None, num_workers=1, chunk_size=2)
    assert piped.index.tolist() == plain.index.tolist() == [0, 1, 4, 5, 6, 8]
    assert sorted(piped.errors) == [2, 3, 7]
    np.testing.assert_allclose(piped.features, plain.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(piped.features[0], piped.features[-1], rtol=1e-5, atol=1e-5)  # same image


def test_jpeg_eligibility_for_gpu_decoding(tmp_path):
    """Only files that load_image decodes to the very same pixels may go to nvJPEG."""
    import io

    from PIL import Image

    from facecluster.embed.gpudecode import jpeg_eligible

    def enc(im, fmt="JPEG", **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        return b.getvalue()

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 120, 3), dtype=np.uint8))
    assert jpeg_eligible(enc(rgb))
    assert jpeg_eligible(enc(rgb.convert("L")))
    assert not jpeg_eligible(enc(rgb, "PNG"))
    assert not jpeg_eligible(enc(rgb.convert("CMYK")))
    assert not jpeg_eligible(enc(rgb.resize((20, 20))))  # upscaled by load_image
    assert not jpeg_eligible(enc(rgb.resize((1500, 1400))))  # downscaled by load_image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: load_image transposes
    assert not jpeg_eligible(enc(rgb, exif=exif))
    exif[0x0112] = 1
    assert jpeg_eligible(enc(rgb, exif=exif))
    assert not jpeg_eligible(b"\xff\xd8\xff" + b"junk" * 10) and not jpeg_eligible(b"")


def test_runner_gpu_decode_merge_logic_on_cpu(tmp_path, monkeypatch):
    """decoder=nvjpeg bookkeeping (GPU/CPU split, retries, order), with a CPU stand-in for nvJPEG."""
    import facecluster.embed.gpudecode as gd
    import facecluster.embed.runner as runner
    from facecluster.imageio import load_image

    faces = [str(p) for p in _faces(3)]
    lfw = DATA / "lfw" / "Aaron_Eckhart"
    big = str(sorted(lfw.iterdir())[0]) if lfw.is_dir() else faces[0]  # 150x150: resized on "GPU"
    png = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(load_image(faces[1])).save(png)
    corrupt = tmp_path / "corrupt.jpg"
    data = Path(faces[2]).read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # valid header, truncated scan data
    paths = [faces[0], str(png), str(tmp_path / "missing.jpg"), big, str(corrupt), faces[2]]
    calls = []

    def fake_decode(datas, side, device):
        calls.append(len(datas))
        out = []
        for d in datas:
            try:
                im = torch.from_numpy(np.asarray(Image.open(__import__("io").BytesIO(d)).convert("RGB")).copy())
            except OSError:
                out.append(None)  # "nvJPEG refused it": the runner must retry on the CPU
                continue
            out.append(gd.resize_shorter_centre_gpu(im.permute(2, 0, 1), side))
        return out

    emb = _TinyTorchEmbedder()
    plain = embed_records(emb, paths, None, num_workers=1, chunk_size=3)
    monkeypatch.setattr(runner, "_use_feeder", lambda e: True)
    monkeypatch.setattr(gd, "decode_batch", fake_decode)
    emb.decoder = "nvjpeg"
    piped = embed_records(emb, paths, None, num_workers=1, chunk_size=3)
    assert calls and sum(calls) == 4  # the 4 JPEGs (incl. the corrupt one), not the PNG / missing file
    assert piped.timings["gpu_images"] == 3  # the corrupt one was retried on the CPU
    assert piped.index.tolist() == plain.index.tolist() == [0, 1, 3, 5]
    assert piped.errors == plain.errors and sorted(piped.errors) == [2, 4]
    assert _cos(piped.features, plain.features).min() >= 0.999
    np.testing.assert_allclose(piped.features[[0, 1, 3]], plain.features[[0, 1, 3]], rtol=1e-5, atol=1e-5)


def test_runner_non_finite_outputs_become_errors():
    from facecluster.embed.base import Embedder

    class NanEmbedder(Embedder):
        name, dim, input_size = "nan", 2, (4, 4)

        def prepare(self, img, record):
            return np.zeros((4, 4, 3), np.uint8) + img[:4, :4]

        def embed_batch(self, chips):
            out = chips.reshape(len(chips), -1)[:, :2].astype(np.float32)
            out[out[:, 0] == 7] = np.nan
            return out

    imgs = {str(i): np.full((8, 8, 3), i, np.uint8) for i in range(10)}
    feats, index, errors = embed_records(NanEmbedder(), list(imgs), None, load=imgs.__getitem__, num_workers=1, chunk_size=3)
    assert index.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9] and errors == {7: "embedder produced non-finite values for this image"}


# ------------------------------------------------------------------------------------ GPU (run where CUDA exists)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_hfsoftmax_cpu_gpu_agree(hfs_ckpt, tmp_path):
    """The pinned-memory CUDA path end to end (synthetic images: no data set needed on the GPU box)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (112 + 8 * i, 112, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    paths.insert(3, str(tmp_path / "missing.png"))
    cpu = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}"), paths, num_workers=0)
    gpu = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}", device="cuda", batch_size=3), paths, num_workers=2, chunk_size=3)
    np.testing.assert_array_equal(cpu.index, gpu.index)
    assert sorted(gpu.errors) == [3]
    assert _cos(cpu.features, gpu.features).min() >= 0.999


@cuda
def test_hfsoftmax_nvjpeg_decoder_agrees(hfs_ckpt, tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image

    rng = np.random.default_rng(8)
    paths = []
    for i, (h, w) in enumerate([(112, 112), (150, 150), (140, 112), (112, 112), (60, 80)]):
        p = tmp_path / f"{i}.{'png' if i == 3 else 'jpg'}"
        y, x = np.mgrid[0:h, 0:w]
        smooth = np.stack([(x * 2 + i) % 256, (y * 2) % 256, ((x + y) * (i + 1)) % 256], -1).astype(np.uint8)
        Image.fromarray(smooth).save(p, quality=95)
        paths.append(str(p))
    (tmp_path / "bad.jpg").write_bytes(Path(paths[0]).read_bytes()[:200])
    paths.append(str(tmp_path / "bad.jpg"))
    pil = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}", device="cuda"), paths, num_workers=2, chunk_size=4)
    nvj = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}?decoder=nvjpeg", device="cuda"), paths, num_workers=2, chunk_size=4)
    assert nvj.index.tolist() == pil.index.tolist() == [0, 1, 2, 3, 4]
    assert sorted(nvj.errors) == sorted(pil.errors) == [5]
    assert nvj.timings["gpu_images"] == 4  # the 4 plain JPEGs really went through nvJPEG
    assert _cos(pil.features, nvj.features).min() >= 0.999


@pytest.mark.parametrize("cpus, threads, procs", [(1, 1, 1), (2, 1, 2), (16, 8, 16), (100, 8, 64)])
def test_default_workers_by_kind(monkeypatch, cpus, threads, procs):
    """Alignment processes: one per usable CPU (the network's thread waits part of the time);
    decode threads: all CPUs but the network's, at most 8."""
    import facecluster.embed.runner as runner

    monkeypatch.setattr(runner, "usable_cpus", lambda: cpus)
    assert runner.default_num_workers() == threads
    assert runner.default_num_workers(processes=True) == procs
