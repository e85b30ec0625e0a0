"""NVIDIA DALI decoding (``decoder=dali``): same records, same errors, same features as PIL.

The tests that run DALI skip when ``nvidia-dali`` is not installed (CI does not install the
``dali`` extra); on a machine with it they run DALI's CPU pipeline (``device_id=None``), and the
``mixed`` (GPU) pipeline where CUDA exists. The hfsoftmax checkpoint is written here with random
weights (and random BN statistics), in the layout of the released file.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facecluster.embed import EmbedderError, get_embedder
from facecluster.embed.dali import eligible_size, plan_geometry
from facecluster.embed.hfsoftmax import HfsoftmaxResNet50, resize_shorter_centre
from facecluster.embed.runner import embed_records
from facecluster.imageio import load_image

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """On the shared 2-core CI box a ResNet-50 forward is much slower with 2 OpenMP threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def dali():
    return pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def hfs_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    sd = HfsoftmaxResNet50().state_dict()
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():  # random BN statistics too: a real checkpoint's are far from (0, 1)
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) * 1.5 + 0.5)
        elif k.endswith("running_mean") or (k.endswith("bias") and v.dtype.is_floating_point):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    p = tmp_path_factory.mktemp("hfs") / "resnet50_part0_train.pth.tar"
    torch.save({"state_dict": {"module.base." + k: v for k, v in sd.items()}}, p)
    return p


def _real_jpegs(n_lfw: int = 12, n_glint: int = 8) -> list[Path]:
    """LFW 150x150 (resized to 112 by hfsoftmax) and glint18 112x112 (passed through) crops."""
    out = []
    for name, n in (("lfw", n_lfw), ("glint18", n_glint)):
        root = DATA / name
        if not root.is_dir():
            pytest.skip(f"needs the shared data set {root}")
        files = sorted(p for d in sorted(root.iterdir())[:40] if d.is_dir() for p in sorted(d.iterdir())[:1])
        out += files[:: max(1, len(files) // n)][:n]
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def _centred_cos(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine after subtracting ``ref``'s mean feature.

    Why: a random-weight network maps every face to nearly the same direction (raw cosine between
    *different* LFW faces is > 0.9999 here), so a raw cosine ≥ 0.999 would pass even with a wrong
    resize or crop (measured: a 1-pixel geometry error still gave 0.999999). Around the mean, different
    faces are nearly orthogonal and the same sabotage drops to 0.96.
    """
    mu = ref.mean(0, keepdims=True)
    return _cos(ref - mu, other - mu)


def _enc(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, quality=95, **kw)
    return b.getvalue()


def _corrupt_huffman(data: bytes) -> bytes:
    """A JPEG whose header parses (eligible for DALI) but whose Huffman table is bogus: every
    decoder rejects it, so DALI's failure must fall back to PIL's error message."""
    d = bytearray(data)
    k = d.find(b"\xff\xc4")
    assert k > 0
    d[k + 5 : k + 21] = b"\xff" * 16  # code-length counts summing far beyond 256
    return bytes(d)


# ------------------------------------------------------------------------------------ no DALI needed
def test_plan_geometry_matches_cpu_resize():
    rng = np.random.default_rng(0)
    for h, w in [(112, 112), (150, 150), (150, 130), (130, 150), (60, 80), (400, 113), (113, 400), (112, 300)]:
        rw, rh, top, left = plan_geometry(w, h, (112, 112), "shorter_centre")
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # the CPU path: resize to (rw, rh) then the same crop gives exactly resize_shorter_centre
        r = img if (rw, rh) == (w, h) else np.asarray(Image.fromarray(img).resize((rw, rh), Image.BILINEAR))
        np.testing.assert_array_equal(r[top : top + 112, left : left + 112], resize_shorter_centre(img))
    assert plan_geometry(150, 130, (112, 112), "stretch") == (112, 112, 0, 0)
    with pytest.raises(ValueError, match="unknown geometry"):
        plan_geometry(10, 10, (112, 112), "fit")


def test_eligibility_rule():
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 100, 3), dtype=np.uint8))
    assert eligible_size(_enc(rgb)) == (100, 120)
    assert eligible_size(_enc(rgb.convert("L"))) == (100, 120)
    assert eligible_size(_enc(rgb, "PNG")) is None
    assert eligible_size(_enc(rgb.convert("CMYK"))) is None
    assert eligible_size(_enc(rgb, progressive=True)) is None
    assert eligible_size(_enc(rgb.resize((20, 20)))) is None  # upscaled by load_image
    assert eligible_size(_enc(rgb.resize((1500, 1400)))) is None  # downscaled by load_image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: load_image transposes
    assert eligible_size(_enc(rgb, exif=exif)) is None
    exif[0x0112] = 1
    assert eligible_size(_enc(rgb, exif=exif)) == (100, 120)
    full = _enc(rgb)
    assert eligible_size(full[: len(full) // 2]) is None  # truncated: PIL's error, never DALI's guess
    assert eligible_size(b"\xff\xd8\xff" + b"junk" * 10 + b"\xff\xd9") is None and eligible_size(b"") is None


def test_settings_and_clear_errors(hfs_ckpt, tmp_path, monkeypatch):
    with pytest.raises(EmbedderError, match="decodes with PIL only"):
        get_embedder("dlib?decoder=dali")
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not loaded before the settings are checked")
    with pytest.raises(EmbedderError, match="decoder=dali needs align=none"):
        get_embedder(f"arcface:{fake}?decoder=dali")
    with pytest.raises(EmbedderError, match="invalid arcface setting"):
        get_embedder(f"arcface:{fake}?align=none&decoder=nvjpeg")
    with pytest.raises(EmbedderError, match="unknown decoder"):
        get_embedder(f"hfsoftmax:{hfs_ckpt}?decoder=opencv")
    # without DALI installed: a clear error naming the extra (simulated by hiding the module)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(EmbedderError, match=r"decoder=dali needs NVIDIA DALI: pip install 'facecluster\[dali\]'"):
        get_embedder(f"hfsoftmax:{hfs_ckpt}?decoder=dali")


# ------------------------------------------------------------------------------------ DALI (CPU pipeline)
def test_dali_chips_match_pil_on_real_faces(dali, tmp_path):
    from facecluster.embed.dali import DaliDecoder

    files = _real_jpegs()
    # plus shapes the real sets lack: non-square (crop), upscaled, greyscale
    face = Image.fromarray(load_image(files[0]))
    extra = {"wide.jpg": face.crop((0, 10, 150, 130)), "tall.jpg": face.crop((10, 0, 130, 150)),
             "small.jpg": face.resize((60, 80)), "grey.jpg": face.convert("L")}
    for name, im in extra.items():
        (tmp_path / name).write_bytes(_enc(im))
    files += [tmp_path / n for n in extra]
    datas = [f.read_bytes() for f in files]
    sizes = [eligible_size(d) for d in datas]
    assert all(s is not None for s in sizes)
    dec = DaliDecoder((112, 112), "shorter_centre", "cpu", max_batch=7, num_threads=1)  # 7: ragged batches
    chips = dec.decode(datas, sizes)
    for f, c in zip(files, chips):
        ref = resize_shorter_centre(load_image(f))
        assert c.shape == (112, 112, 3) and c.dtype == np.uint8
        diff = np.abs(c.astype(int) - ref)
        if Image.open(f).size == (112, 112):  # glint18 crops: untouched, bit-exact
            assert diff.max() == 0, f
        assert diff.mean() < 0.5 and diff.max() <= 8, (f, diff.mean(), diff.max())
    # arcface align=none geometry: a plain resize to 112x112
    stretch = DaliDecoder((112, 112), "stretch", "cpu", max_batch=4, num_threads=1).decode(datas[-4:], sizes[-4:])
    for f, c in zip(files[-4:], stretch):
        ref = np.asarray(Image.fromarray(load_image(f)).resize((112, 112), Image.BILINEAR))
        assert np.abs(c.astype(int) - ref).mean() < 0.5


def test_hfsoftmax_dali_agrees_with_pil(dali, hfs_ckpt, tmp_path):
    """~20 real LFW/glint18 JPEGs + every kind of odd file, through the runner both ways."""
    files = [str(p) for p in _real_jpegs(10, 6)]
    face = Image.fromarray(load_image(files[0]))
    (tmp_path / "wide.jpg").write_bytes(_enc(face.crop((0, 10, 150, 130))))
    (tmp_path / "grey.jpg").write_bytes(_enc(face.convert("L")))
    (tmp_path / "face.png").write_bytes(_enc(face, "PNG"))
    (tmp_path / "prog.jpg").write_bytes(_enc(face, progressive=True))
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "rotated.jpg").write_bytes(_enc(face.crop((0, 0, 150, 120)), exif=exif))
    raw = Path(files[1]).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(raw[: len(raw) // 2])  # not eligible: PIL reports it
    (tmp_path / "bad_huffman.jpg").write_bytes(_corrupt_huffman(raw))  # eligible; DALI rejects → retried by PIL
    odd = ["wide.jpg", "grey.jpg", "face.png", "prog.jpg", "rotated.jpg", "truncated.jpg", "bad_huffman.jpg", "missing.jpg"]
    paths = files[:8] + [str(tmp_path / n) for n in odd] + files[8:]
    pil = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}?threads=1"), paths, num_workers=1, chunk_size=5)
    emb = get_embedder(f"hfsoftmax:{hfs_ckpt}?threads=1&decoder=dali")
    assert emb.fingerprint() != get_embedder(f"hfsoftmax:{hfs_ckpt}").fingerprint()
    dal = embed_records(emb, paths, num_workers=1, chunk_size=5)
    bad = [paths.index(str(tmp_path / n)) for n in ("truncated.jpg", "bad_huffman.jpg", "missing.jpg")]
    assert sorted(pil.errors) == sorted(dal.errors) == bad
    assert dal.errors == pil.errors  # same messages, word for word
    assert dal.index.tolist() == pil.index.tolist() == [i for i in range(len(paths)) if i not in bad]
    # the 16 real JPEGs, wide.jpg, grey.jpg and bad_huffman.jpg went to DALI; bad_huffman came back
    assert dal.timings["dali_images"] == len(files) + 2
    cos = _centred_cos(pil.features, dal.features)
    assert cos.min() >= 0.999, cos.min()
    # the measure discriminates: different faces are far apart around the mean
    f = pil.features - pil.features.mean(0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    assert np.median((f @ f.T)[~np.eye(len(f), dtype=bool)]) < 0.5


def test_runner_device_path_with_dali_tensors_on_cpu(dali, hfs_ckpt, tmp_path, monkeypatch):
    """The CUDA route (DALI → torch tensors → device merge → feeder → forward_chips), run on the
    CPU: same code as on a GPU except the pipeline's device and the tensors' device."""
    import facecluster.embed.runner as runner

    files = [str(p) for p in _real_jpegs(4, 2)]
    face = Image.fromarray(load_image(files[0]))
    (tmp_path / "face.png").write_bytes(_enc(face, "PNG"))
    (tmp_path / "bad_huffman.jpg").write_bytes(_corrupt_huffman(Path(files[1]).read_bytes()))
    paths = files[:3] + [str(tmp_path / "face.png"), str(tmp_path / "bad_huffman.jpg")] + files[3:]
    pil = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}?threads=1"), paths, num_workers=1, chunk_size=4)
    import facecluster.embed.dali as dali_mod

    kinds = []
    decode = dali_mod.DaliDecoder.decode

    def spy(self, datas, sizes):
        out = decode(self, datas, sizes)
        kinds.extend(type(o).__name__ for o in out)
        return out

    monkeypatch.setattr(runner, "_use_feeder", lambda e: True)
    monkeypatch.setattr(dali_mod.DaliDecoder, "decode", spy)
    emb = get_embedder(f"hfsoftmax:{hfs_ckpt}?threads=1&decoder=dali")
    dal = embed_records(emb, paths, num_workers=1, chunk_size=4)
    assert sorted(set(kinds)) == ["NoneType", "Tensor"]  # torch chips, and the one DALI rejected
    assert dal.errors == pil.errors and list(dal.errors) == [4]
    assert dal.index.tolist() == pil.index.tolist()
    assert dal.timings["dali_images"] == len(files)
    assert _centred_cos(pil.features, dal.features).min() >= 0.999


def _tiny_onnx(path: Path) -> Path:
    """ArcFace-like signature, (N, 3, 112, 112) → (N, 64): conv 8x8/8 + ReLU + flatten + MatMul
    (position-sensitive, so a wrong resize changes the output)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 8, 8)) * 0.05).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "b"),
        numpy_helper.from_array((rng.standard_normal((4 * 14 * 14, 64)) * 0.05).astype(np.float32), "m"),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "w", "b"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "m"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 64])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_arcface_align_none_dali_agrees_with_pil(dali, tmp_path):
    """arcface align=none (plain resize to 112x112), host-side merge of DALI and PIL chips."""
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    files = [str(p) for p in _real_jpegs(6, 3)]
    face = Image.fromarray(load_image(files[0]))
    (tmp_path / "wide.jpg").write_bytes(_enc(face.crop((0, 10, 150, 130))))
    (tmp_path / "face.png").write_bytes(_enc(face, "PNG"))
    (tmp_path / "bad_huffman.jpg").write_bytes(_corrupt_huffman(Path(files[1]).read_bytes()))
    paths = files[:4] + [str(tmp_path / n) for n in ("wide.jpg", "face.png", "bad_huffman.jpg")] + files[4:]
    pil = embed_records(get_embedder(f"arcface:{model}?align=none&threads=1"), paths, num_workers=1, chunk_size=4)
    emb = get_embedder(f"arcface:{model}?align=none&threads=1&decoder=dali")
    assert emb.fingerprint() != get_embedder(f"arcface:{model}?align=none").fingerprint()
    dal = embed_records(emb, paths, num_workers=1, chunk_size=4)
    assert dal.errors == pil.errors and list(dal.errors) == [6]
    assert dal.index.tolist() == pil.index.tolist() == [i for i in range(len(paths)) if i != 6]
    assert dal.timings["dali_images"] == len(files) + 1  # + wide.jpg; bad_huffman came back to PIL
    assert _centred_cos(pil.features, dal.features).min() >= 0.999


# ------------------------------------------------------------------------------------ DALI on a GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hfsoftmax_dali_mixed_gpu_agrees(dali, hfs_ckpt, tmp_path):
    """The "mixed" (nvJPEG) pipeline feeding the CUDA path directly (synthetic images)."""
    rng = np.random.default_rng(8)
    paths = []
    for i, (h, w) in enumerate([(112, 112), (150, 150), (140, 112), (112, 112), (60, 80)]):
        p = tmp_path / f"{i}.{'png' if i == 3 else 'jpg'}"
        y, x = np.mgrid[0:h, 0:w]
        smooth = np.stack([(x * 2 + i) % 256, (y * 2) % 256, ((x + y) * (i + 1)) % 256], -1).astype(np.uint8)
        Image.fromarray(smooth + rng.integers(0, 3, smooth.shape, dtype=np.uint8)).save(p, quality=95)
        paths.append(str(p))
    (tmp_path / "bad.jpg").write_bytes(_corrupt_huffman(Path(paths[0]).read_bytes()))
    paths.append(str(tmp_path / "bad.jpg"))
    pil = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}", device="cuda"), paths, num_workers=2, chunk_size=4)
    gpu = embed_records(get_embedder(f"hfsoftmax:{hfs_ckpt}?decoder=dali", device="cuda"), paths, num_workers=2, chunk_size=4)
    assert gpu.index.tolist() == pil.index.tolist() == [0, 1, 2, 3, 4]
    assert gpu.errors == pil.errors and sorted(gpu.errors) == [5]
    assert gpu.timings["dali_images"] == 4
    assert _centred_cos(pil.features, gpu.features).min() >= 0.999


class _StandInEmbedder:
    """An embedder without landmarks for the runner's chunk code: the crop resized to 112x112."""

    input_size = (112, 112)
    needs_keypoints = False
    device = "cpu"

    def prepare(self, img, rec=None):
        return np.asarray(Image.fromarray(img).resize((112, 112)))


def test_gpu_decoded_records_keep_their_crop_sizes(tmp_path):
    """face_px survives the GPU-decoder merge: records the decoder took, one it refused (decoded
    again on the CPU) and a PNG it never saw. A stand-in decoder and an embedder without
    landmarks (so face_px is IOD_PER_SIDE x the crop's shorter side), no DALI needed; the merge
    code is the runner's own."""
    from facecluster.embed.runner import IOD_PER_SIDE, _gpu_decode_chunk, _prepare_chunk

    src = Image.open(_real_jpegs(1, 1)[0]).convert("RGB")
    paths = []
    for i, (w, h) in enumerate([(150, 150), (90, 120), (60, 60), (200, 170)]):
        p = tmp_path / f"f{i}.{'png' if i == 2 else 'jpg'}"
        src.resize((w, h)).save(p)
        paths.append(str(p))

    class FakeDali:
        to_torch = False

        def decode(self, datas, sizes):  # refuses the second JPEG it is given
            return [None if k == 1 else np.zeros((112, 112, 3), np.uint8) for k in range(len(datas))]

    c = _prepare_chunk(_StandInEmbedder(), load_image, paths, None, range(len(paths)), gpu="dali")
    assert c.index.tolist() == [2] and len(c.gpu_index) == 3  # the PNG on the CPU, JPEGs held
    c = _gpu_decode_chunk(_StandInEmbedder(), load_image, paths, None, c, dali=FakeDali())
    assert c.index.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(c.face_px, IOD_PER_SIDE * np.array([150.0, 90.0, 60.0, 170.0]))


def test_gpu_decoder_path_never_reads_devices_or_fifos(tmp_path):
    """With a GPU decoder the runner reads each file's bytes itself; /dev/zero would fill memory
    and a FIFO block forever. Both must go the CPU way and come back as per-record errors."""
    import os
    import signal

    from facecluster.embed.runner import _prepare_chunk

    good = tmp_path / "f.jpg"
    Image.open(_real_jpegs(1, 1)[0]).convert("RGB").save(good)
    os.mkfifo(tmp_path / "pipe.jpg")
    paths = ["/dev/zero", str(tmp_path / "pipe.jpg"), str(good)]

    class Hung(Exception):  # not an OSError: the runner's own `except OSError` must not swallow it
        pass

    def _hang(*_):
        raise Hung("the runner blocked on a FIFO or an endless device")

    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(20)
    try:
        c = _prepare_chunk(_StandInEmbedder(), load_image, paths, None, range(3), gpu="dali")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert sorted(c.errors) == [0, 1] and all("not a regular file" in e for e in c.errors.values())
    assert c.gpu_index == [2]
