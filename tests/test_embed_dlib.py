"""dlib embedder: .dat reader, PyTorch port parity with dlib itself, alignment robustness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

dlib = pytest.importorskip("dlib")

from facecluster.embed import EmbedderError, get_embedder  # noqa: E402
from facecluster.embed.align import Aligner, normalise_size, parse_margin, to_rgb_uint8  # noqa: E402
from facecluster.embed.dlib_resnet import (  # noqa: E402
    DatFormatError,
    DlibEmbedder,
    add_prev,
    default_model_path,
    load_dlib_resnet,
    parse_dat,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _load(path: Path) -> np.ndarray:
    try:
        from facecluster.imageio import load_image
    except ImportError:  # pragma: no cover - before imageio exists
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return load_image(path)


def _real_faces() -> list[Path]:
    """~10 real crops: LFW (loose), glint18 (tight), ORL (grey), deterministic choice."""
    out = []
    for name, k in (("lfw", 4), ("glint18", 4), ("orl", 2)):
        root = DATA / name
        if not root.is_dir():
            continue
        ids = sorted(d for d in root.iterdir() if d.is_dir())
        for d in ids[:: max(1, len(ids) // k)][:k]:
            out.append(sorted(d.iterdir())[0])
    return out


@pytest.fixture(scope="module")
def layers():
    return parse_dat(default_model_path())


@pytest.fixture(scope="module")
def emb():
    return DlibEmbedder(batch_size=4)


@pytest.fixture(scope="module")
def real_chips(emb):
    files = _real_faces()
    if len(files) < 6:
        pytest.skip("../shared/data not available")
    return np.stack([emb.prepare(_load(f), {}) for f in files])


def test_parse_dat_structure(layers):
    layers_, info = layers
    kinds = [l.kind for l in layers_]
    counts = {k: kinds.count(k) for k in set(kinds)}
    assert counts == {"input": 1, "con": 29, "affine": 29, "relu": 29, "max_pool": 1, "avg_pool": 5, "add_prev": 14, "fc": 1}
    n_params = sum(t.size for l in layers_ for t in l.tensors.values())
    assert n_params == 5_614_592  # 5.61 M (conv filters + biases + affine gamma/beta + fc)
    assert info["loss"] == "loss_metric_2" and info["dist_thresh"] == pytest.approx(0.6)
    assert np.allclose(layers_[0].settings["means"], [122.782, 117.001, 104.298], atol=1e-3)
    assert (layers_[0].settings["nr"], layers_[0].settings["nc"]) == (150, 150)
    stem = layers_[1]
    assert stem.tensors["weight"].shape == (32, 3, 7, 7)
    assert (stem.settings["stride_y"], stem.settings["pad_y"]) == (2, 0)
    assert layers_[-1].tensors["weight"].shape == (256, 128)


def test_parse_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x01\x01\x05hello")
    with pytest.raises(DatFormatError):
        parse_dat(bad)
    truncated = tmp_path / "trunc.dat"
    truncated.write_bytes(default_model_path().read_bytes()[:100_000])
    with pytest.raises(DatFormatError):
        parse_dat(truncated)


def test_add_prev_zero_pads_at_the_end():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 10.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert torch.all(out[:, :2, :3, :3] == 11) and out.sum() == 10 * 64 + 18
    # both larger in different dimensions: output is the max of each
    c = torch.ones(1, 4, 2, 2)
    d = torch.ones(1, 2, 3, 3)
    out = add_prev(c, d)
    assert out.shape == (1, 4, 3, 3) and out[0, 0, 0, 0] == 2 and out[0, 3, 2, 2] == 0 and out[0, 0, 2, 2] == 1


def test_network_shapes():
    net = load_dlib_resnet()
    with torch.inference_mode():
        y = net(torch.zeros(2, 3, 150, 150))
    assert y.shape == (2, 128) and y.dtype == torch.float32


def test_parity_with_dlib(emb, real_chips):
    """Our port against dlib's own forward pass on real aligned faces."""
    ours = emb.embed_batch(real_chips)
    ref_net = dlib.face_recognition_model_v1(str(default_model_path()))
    ref = np.array([np.array(ref_net.compute_face_descriptor(c, 0)) for c in real_chips], np.float32)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.dtype == np.float32 and ours.shape == (len(real_chips), 128)


def test_batch_equals_single(emb, real_chips):
    batched = emb.embed_batch(real_chips)  # batch_size 4 → several forward passes, last one partial
    single = np.concatenate([emb.embed_batch(c[None]) for c in real_chips[:3]])
    assert np.allclose(batched[:3], single, atol=1e-5)
    again = emb.embed_batch(real_chips)
    assert np.array_equal(batched, again)  # deterministic
    assert emb.embed_batch(real_chips[:0]).shape == (0, 128)


def test_same_person_closer(emb):
    """Real identity signal: two LFW photos of one person are closer than two different people."""
    root = DATA / "lfw" / "George_W_Bush"
    if not root.is_dir():
        pytest.skip("../shared/data not available")
    a, b = sorted(root.iterdir())[:2]
    c = sorted((DATA / "lfw" / "Serena_Williams").iterdir())[0]
    f = emb.embed_batch(np.stack([emb.prepare(_load(p), {}) for p in (a, b, c)]))
    assert np.linalg.norm(f[0] - f[1]) < 0.6 < min(np.linalg.norm(f[0] - f[2]), np.linalg.norm(f[1] - f[2]))


@pytest.mark.parametrize("shape", [(20, 20, 3), (7, 3, 3), (1, 1, 3), (20, 20), (30, 24, 4), (3000, 2000, 3)])
def test_odd_sizes_do_not_crash(emb, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    chip = emb.prepare(img, {})
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    assert np.isfinite(emb.embed_batch(chip[None])).all()


def test_tiny_real_face(emb, real_chips):
    f = _real_faces()[0]
    from PIL import Image

    small = np.asarray(Image.fromarray(_load(f)).resize((20, 20)))
    d = emb.embed_batch(emb.prepare(small, {})[None])[0]
    full = emb.embed_batch(emb.prepare(_load(f), {})[None])[0]
    assert np.isfinite(d).all() and np.linalg.norm(d - full) < 1.0


def test_size_and_colour_normalisation():
    assert normalise_size(np.zeros((20, 10, 3), np.uint8)).shape[0] == 150
    assert max(normalise_size(np.zeros((2000, 1000, 3), np.uint8)).shape[:2]) == 800
    assert to_rgb_uint8(np.zeros((5, 5), np.uint8)).shape == (5, 5, 3)
    assert to_rgb_uint8(np.ones((5, 5, 3), np.float32)).max() == 255
    assert to_rgb_uint8(np.full((5, 5, 4), 65535, np.uint16)).max() == 255


def test_margin_strategies():
    assert parse_margin("whole") == ("margin", 0.0)
    assert parse_margin(0.2) == ("margin", 0.2)
    assert parse_margin("auto:-0.1") == ("auto", -0.1)
    assert parse_margin("hog")[0] == "hog"
    with pytest.raises(ValueError):
        parse_margin("nonsense")
    l, t, r, b = Aligner.margin_rect(150, 150, 0.25)
    assert r - l + 1 == pytest.approx(100) and (l + r) / 2 == pytest.approx(74.5)
    l, t, r, b = Aligner.margin_rect(100, 100, -0.25)
    assert r - l + 1 == pytest.approx(200)


def test_registry_and_fingerprint(emb):
    e = get_embedder("dlib")
    assert isinstance(e, DlibEmbedder) and e.dim == 128 and e.input_size == (150, 150)
    fp = e.fingerprint()
    assert len(fp) == 64 and fp == emb.fingerprint()
    assert DlibEmbedder(margin="whole").fingerprint() != fp
    # settings arrive as strings from the CLI spec; equivalent spellings give equal fingerprints
    assert get_embedder("dlib?margin=auto:0.15&threads=1").fingerprint() == fp
    assert get_embedder("dlib?margin=0.2").fingerprint() == DlibEmbedder(margin=0.2).fingerprint()
    with pytest.raises(EmbedderError):
        get_embedder("dlib?margin=sideways")
    with pytest.raises(EmbedderError):
        get_embedder("dlib?threads=many")
    assert get_embedder("dlib?threads=torch").threads is None
    assert get_embedder("dlib?threads=3").threads == 3
    m = e.mean
    assert m is None or m.shape == (128,)
    assert e.describe()["dim"] == 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu(real_chips):
    cpu = DlibEmbedder().embed_batch(real_chips)
    gpu = DlibEmbedder(device="cuda").embed_batch(real_chips)
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() >= 0.9999


def test_mirror_averaging_is_opt_in(emb, real_chips):
    """mirror=true: the mean of the chip's and its mirror image's raw descriptors; off by default
    with the fingerprint unchanged (existing work dirs stay valid)."""
    chips = real_chips[:3]
    on = get_embedder("dlib?mirror=true")
    assert on.mirror and not emb.mirror and on.describe()["mirror"] is True
    want = (emb.embed_batch(chips) + emb.embed_batch(chips[:, :, ::-1])) / 2
    assert np.allclose(on.embed_batch(chips), want, atol=1e-5)
    # a chip and its mirror image get the same descriptor
    assert np.allclose(on.embed_batch(chips[:1, :, ::-1]), on.embed_batch(chips[:1]), atol=1e-5)
    assert on.fingerprint() != emb.fingerprint() == get_embedder("dlib?mirror=false").fingerprint()
    with pytest.raises(EmbedderError):
        get_embedder("dlib?mirror=sometimes")


def _plain_forward(layers, x: torch.Tensor) -> torch.Tensor:
    """The network straight from the .dat layers in float64, op by op as dlib runs it: no folding,
    no in-place ops, NCHW (the reference for the CPU fast path's rewrites)."""
    import torch.nn.functional as F

    def con(layer, aff, t):
        w = torch.from_numpy(layer.tensors["weight"]).double()
        b = torch.from_numpy(layer.tensors["bias"]).double()
        s = layer.settings
        y = F.conv2d(t, w, b, (s["stride_y"], s["stride_x"]), (s["pad_y"], s["pad_x"]))
        g = torch.from_numpy(aff.tensors["gamma"]).double().view(1, -1, 1, 1)
        return y * g + torch.from_numpy(aff.tensors["beta"]).double().view(1, -1, 1, 1)

    inp, stem, body, fc = layers[0], layers[1:5], layers[5:-2], layers[-1]
    t = (x.double() - torch.tensor(inp.settings["means"], dtype=torch.float64).view(1, 3, 1, 1)) / 256
    mp = stem[3].settings
    t = F.max_pool2d(F.relu(con(stem[0], stem[1], t)), mp["nr"], mp["stride_y"])
    i = 0
    while i < len(body):
        y = con(body[i + 3], body[i + 4], F.relu(con(body[i], body[i + 1], t)))
        if body[i + 5].kind == "avg_pool":
            s = body[i + 5].settings
            sc, i = F.avg_pool2d(t, s["nr"], s["stride_y"]), i + 8
        else:
            sc, i = t, i + 7
        t = F.relu(add_prev(y, sc))
    return t.mean(dim=(2, 3)) @ torch.from_numpy(fc.tensors["weight"]).double()


def test_cpu_fast_path_matches_plain_network(layers, emb, real_chips):
    """The CPU forward's rewrites (input normalisation folded into the stem, max-pool before the
    stem ReLU, in-place ReLUs and residual sums, channels_last) change nothing but rounding."""
    layers_, _ = layers
    x = torch.from_numpy(real_chips).permute(0, 3, 1, 2).float()
    want = _plain_forward(layers_, x).numpy()
    got = emb.embed_batch(real_chips)
    assert emb.net.input_folded and emb.net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, cos
    assert np.abs(got - want).max() < 1e-5
    # plain NCHW input and calls outside inference_mode give the same descriptors
    net = load_dlib_resnet()
    with torch.no_grad():
        y = net(x.contiguous()).numpy()
    assert np.abs(y - got).max() < 1e-5


def test_constructing_the_embedder_does_not_import_torch():
    """torch (1-3 s of CPU here) is imported when the network is first needed, so the embed
    runner can start its alignment workers first; the network is then built by ``warmup``."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from facecluster.embed import get_embedder\n"
        "e = get_embedder('dlib')\n"
        "e.fingerprint(); e.describe(); e.preparer()\n"
        "assert 'torch' not in sys.modules, 'torch imported by the constructor'\n"
        "e.warmup()\n"
        "assert 'torch' in sys.modules and e._net is not None\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
