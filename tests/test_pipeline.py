"""End to end on real faces: contract, bad images, small N, shards, resume, determinism."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import data_path, run_cli, write_input
from facecluster import pipeline
from facecluster.workdir import WorkDir

# three people whose first four LFW photos are consistent for the dlib embedder (some LFW
# people, e.g. Tony_Blair, have same-person similarities below any precise threshold)
PEOPLE = ["Colin_Powell", "Junichiro_Koizumi", "Serena_Williams"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """3 LFW people x 4 images, plus odd-format copies of real faces."""
    root = data_path("lfw")
    tmp = tmp_path_factory.mktemp("faces")
    paths = []
    for p in PEOPLE:
        paths += sorted((root / p).iterdir())[:4]
    src = Image.open(paths[0])
    src.convert("L").save(tmp / "grey.png")
    rgba = src.convert("RGBA")
    rgba.save(tmp / "rgba.png")
    a16 = (np.asarray(src.convert("L"), np.uint16) * 257)
    Image.fromarray(a16).save(tmp / "sixteen.png")
    # EXIF orientation 6 (rotate 90 CW to display): store the pixels rotated the other way
    exif = Image.Exif()
    exif[0x0112] = 6
    src.rotate(90, expand=True).save(tmp / "exif.jpg", exif=exif, quality=95)
    src.resize((24, 24)).save(tmp / "tiny.jpg")
    src.resize((3000, 3000)).save(tmp / "huge.jpg", quality=80)
    (tmp / "empty.jpg").write_bytes(b"")
    (tmp / "text.jpg").write_text("not an image")
    good = (tmp / "trunc_src.jpg")
    src.save(good, quality=95)
    (tmp / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    return tmp, paths


def _run(tmp_path, records, *extra):
    inp = write_input(tmp_path, records)
    out = tmp_path / "out.json"
    code = run_cli("run", inp, "-o", out, "-w", tmp_path / "wd", "--device", "cpu", *extra)
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_contract_on_real_faces(tmp_path, faces):
    _, paths = faces
    recs = [{"img_path": str(p), "n": i, "tags": ["x", i]} for i, p in enumerate(paths)]
    code, out = _run(tmp_path, recs)
    assert code == 0
    assert [r["img_path"] for r in out] == [str(p) for p in paths]
    assert all(r["n"] == i and r["tags"] == ["x", i] for i, r in enumerate(out))
    ids = [r["cluster_id"] for r in out]
    assert ids[0] == 0 and all(isinstance(i, int) and i >= 0 for i in ids)
    # one id per person, people apart (12 clean LFW faces of 3 well-known people)
    per = [set(ids[4 * k : 4 * k + 4]) for k in range(3)]
    assert all(len(s) == 1 for s in per), per
    assert len(set.union(*per)) == 3
    # deterministic: a fresh work dir gives the same ids
    shutil.rmtree(tmp_path / "wd")
    code2, out2 = _run(tmp_path, recs)
    assert code2 == 0 and [r["cluster_id"] for r in out2] == ids


def test_turned_photos_join_their_person(tmp_path, faces):
    """Photos of the same 3 people with every other one turned by 90 / 270 / 180 degrees (a
    rotated video or scan, no EXIF tag to undo it): the whole command gives the turned photos the
    upright photos' ids; with ``orient=false`` (the old behaviour) they do not."""
    _, paths = faces
    recs = []
    for i, p in enumerate(paths):
        if i % 2:
            t = tmp_path / f"turned{i}.png"
            # (one upside-down photo: dlib's detector scores some upside-down faces under the half
            # turn's threshold, align.ORIENT_HALF_THRESHOLD; this one at 1.9)
            Image.open(p).rotate({5: 180}.get(i, (90, 270)[i % 4 == 1]), expand=True).save(t)
            p = t
        recs.append({"img_path": str(p)})
    code, out = _run(tmp_path, recs)
    assert code == 0
    ids = [r["cluster_id"] for r in out]
    per = [set(ids[4 * k : 4 * k + 4]) for k in range(3)]
    assert all(len(s) == 1 for s in per) and len(set.union(*per)) == 3, ids
    shutil.rmtree(tmp_path / "wd")
    code, off = _run(tmp_path, recs, "--embedder", "dlib?orient=false")
    assert code == 0
    ids_off = [r["cluster_id"] for r in off]
    assert any(len(set(ids_off[4 * k : 4 * k + 4])) > 1 for k in range(3)), ids_off


def test_bad_and_odd_images(tmp_path, faces):
    tmp, paths = faces
    odd = ["grey.png", "rgba.png", "sixteen.png", "exif.jpg", "tiny.jpg", "huge.jpg"]
    bad = ["empty.jpg", "text.jpg", "truncated.jpg", "missing.jpg"]
    recs = [{"img_path": str(paths[0])}, {"img_path": str(paths[0])}]  # duplicate path
    recs += [{"img_path": str(tmp / f)} for f in odd + bad]
    code, out = _run(tmp_path, recs)
    assert code == 3  # output written, some records failed
    assert len(out) == len(recs)
    assert out[0]["cluster_id"] == out[1]["cluster_id"] >= 0
    by = {r["img_path"].rsplit("/", 1)[-1]: r for r in out}
    for f in odd:
        assert by[f]["cluster_id"] >= 0 and "error" not in by[f], (f, by[f])
    for f in bad:
        assert by[f]["cluster_id"] == -1 and by[f]["error"], (f, by[f])
    # greyscale / RGBA / 16-bit / EXIF copies of the same photo land with the original
    assert by["grey.png"]["cluster_id"] == by["rgba.png"]["cluster_id"] == out[0]["cluster_id"]
    assert by["exif.jpg"]["cluster_id"] == out[0]["cluster_id"]


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_small_inputs(tmp_path, faces, n):
    _, paths = faces
    recs = [{"img_path": str(p)} for p in paths[::4][:n]]
    code, out = _run(tmp_path, recs)
    assert code == 0 and len(out) == n
    assert sorted({r["cluster_id"] for r in out}) == list(range(len({r["cluster_id"] for r in out})))


def test_shards_merge_equal_unsharded(tmp_path, faces):
    _, paths = faces
    inp = write_input(tmp_path, [{"img_path": str(p)} for p in paths])
    wd1, wd3 = WorkDir(tmp_path / "one"), WorkDir(tmp_path / "three")
    for wd, n in ((wd1, 1), (wd3, 3)):
        pipeline.prepare(inp, wd)
        for i in reversed(range(n)):  # order of completion must not matter
            pipeline.embed(wd, (i, n), device="cpu")
        pipeline.merge(wd)
    f1, i1, _ = wd1.read_features()
    f3, i3, _ = wd3.read_features()
    assert (i1 == i3).all()
    np.testing.assert_allclose(f1, f3, rtol=0, atol=1e-5)
    raw = np.fromfile(wd3.features_bin, dtype="<f4").reshape(-1, f3.shape[1])
    assert (raw == f3).all()  # learn-to-cluster's headerless float32 format
    assert np.array_equal(wd1.read_face_px(len(f1)), wd3.read_face_px(len(f3)))


def test_face_sizes_recorded_in_file_pixels_and_used(tmp_path, faces):
    """face_px: each face's inter-ocular distance in its file's pixels from the dlib landmarks
    (also where load_image rescales tiny and huge images), rows as features.npy; the cluster
    stage hands it to infomap. tiny.jpg and huge.jpg are paths[0] resized to 24 and 3000 px."""
    tmp, paths = faces
    recs = [{"img_path": str(p)} for p in paths[:4]] + [{"img_path": str(tmp / n)} for n in ("tiny.jpg", "huge.jpg", "empty.jpg")]
    code, out = _run(tmp_path, recs)
    assert code == 3 and out[-1]["cluster_id"] == -1  # the empty file is reported, as always
    wd = WorkDir(tmp_path / "wd")
    feats, index, _ = wd.read_features()
    px = wd.read_face_px(len(feats))
    assert index.tolist() == [0, 1, 2, 3, 4, 5]
    assert all(0.2 < v / min(Image.open(p).size) < 0.45 for v, p in zip(px[:4], paths[:4]))  # eyes ~0.3 of a 150-px crop
    np.testing.assert_allclose(px[4:], px[0] * np.array([24 / 150, 3000 / 150]), rtol=0.15)
    assert json.loads(wd.labels_meta("infomap").read_text())["face_px"] is True
    # work dirs merged before face_px existed still cluster (no quality rule)
    wd.features_face_px.unlink()
    assert wd.read_face_px(len(feats)) is None
    code, out2 = _run(tmp_path, recs)
    assert code == 3 and [r["cluster_id"] for r in out2] == [r["cluster_id"] for r in out]
    assert json.loads(wd.labels_meta("infomap").read_text())["face_px"] is False


def test_merge_refuses_missing_shard(tmp_path, faces):
    _, paths = faces
    inp = write_input(tmp_path, [{"img_path": str(p)} for p in paths[:4]])
    wd = WorkDir(tmp_path / "wd")
    pipeline.prepare(inp, wd)
    pipeline.embed(wd, (0, 2), device="cpu")
    with pytest.raises(FileNotFoundError, match="shard 1/2"):
        pipeline.merge(wd, 2)


def test_killed_embed_resumes_after_its_last_piece(tmp_path, faces, monkeypatch):
    """A shard killed part-way (a pre-empted pod, Ctrl-C) keeps the pieces it finished; the rerun
    embeds only the records after them and ends with the uninterrupted run's part, bit for bit
    (pieces end on batch boundaries); a changed input or batch size starts the shard afresh."""
    from facecluster.embed import runner

    tmp, paths = faces
    recs = [{"img_path": str(p)} for p in paths[:10]] + [{"img_path": str(tmp / "empty.jpg")}, {"img_path": str(paths[10])}]
    inp = write_input(tmp_path, recs)
    ref = WorkDir(tmp_path / "ref")
    pipeline.prepare(inp, ref)
    pipeline.embed(ref, device="cpu", batch_size=4, checkpoint_seconds=0)
    assert not ref.partial(0, 1).exists()  # removed once the part is written

    real, seen = runner.iter_embed_chunks, []

    def killed_after(k):
        def it(embedder, paths, *a, **kw):
            seen.append(len(paths))
            for j, c in enumerate(real(embedder, paths, *a, **kw)):
                if j == k:
                    raise KeyboardInterrupt
                yield c
        return it

    wd = WorkDir(tmp_path / "wd")
    pipeline.prepare(inp, wd)
    monkeypatch.setattr(runner, "iter_embed_chunks", killed_after(2))
    with pytest.raises(KeyboardInterrupt):
        pipeline.embed(wd, device="cpu", batch_size=4, checkpoint_seconds=0)
    assert not wd.part(0, 1).exists()
    assert sorted(f.name for f in wd.partial(0, 1).glob("piece-*")) == [
        "piece-000000000-000000004.npz", "piece-000000004-000000008.npz"]
    monkeypatch.setattr(runner, "iter_embed_chunks", killed_after(99))
    res = pipeline.embed(wd, device="cpu", batch_size=4, checkpoint_seconds=0)
    assert res.info["resumed_after"] == 8 and seen[-1] == 4  # only the last 4 records embedded again
    with np.load(ref.part(0, 1)) as a, np.load(wd.part(0, 1)) as b:
        for k in ("features", "index", "face_px"):
            assert np.array_equal(a[k], b[k], equal_nan=True), k
        assert b["index"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert json.loads(WorkDir.meta_of(wd.part(0, 1)).read_text())["errors"] == {"10": "empty file (0 bytes)"}
    assert not wd.partial(0, 1).exists()
    assert pipeline.embed(wd, device="cpu", batch_size=4).skipped

    # pieces of another input or another batch size are never used
    for change in ("input", "batch"):
        wd2 = WorkDir(tmp_path / change)
        pipeline.prepare(inp, wd2)
        monkeypatch.setattr(runner, "iter_embed_chunks", killed_after(2))
        with pytest.raises(KeyboardInterrupt):
            pipeline.embed(wd2, device="cpu", batch_size=4, checkpoint_seconds=0)
        bs = 4
        if change == "input":
            (tmp_path / "other").mkdir()
            pipeline.prepare(write_input(tmp_path / "other", recs[1:]), wd2)
        else:
            bs = 3
        monkeypatch.setattr(runner, "iter_embed_chunks", killed_after(99))
        res = pipeline.embed(wd2, device="cpu", batch_size=bs, checkpoint_seconds=0)
        assert "resumed_after" not in res.info and seen[-1] == len(wd2.read_manifest()["paths"])
        with np.load(ref.part(0, 1)) as a, np.load(wd2.part(0, 1)) as b:
            np.testing.assert_allclose(b["features"], a["features"][change == "input":], rtol=0, atol=1e-5)


def test_rerun_skips_and_changes_rerun(tmp_path, faces):
    _, paths = faces
    recs = [{"img_path": str(p)} for p in paths[:6]]
    inp = write_input(tmp_path, recs)
    wd = WorkDir(tmp_path / "wd")
    assert not pipeline.prepare(inp, wd).skipped
    assert not pipeline.embed(wd, device="cpu").skipped
    assert not pipeline.merge(wd, 1).skipped
    assert not pipeline.cluster(wd, "infomap", {"device": "cpu"}).skipped
    # unchanged: everything skipped
    assert pipeline.prepare(inp, wd).skipped
    assert pipeline.embed(wd, device="cpu").skipped
    assert pipeline.merge(wd, 1).skipped
    assert pipeline.cluster(wd, "infomap", {"device": "cpu"}).skipped
    # a changed setting reruns only the cluster stage
    assert not pipeline.cluster(wd, "infomap", {"device": "cpu", "k": 5}).skipped
    # a changed input reruns everything downstream (no stale features)
    write_input(tmp_path, recs[:5])
    assert not pipeline.prepare(inp, wd).skipped
    assert not pipeline.embed(wd, device="cpu").skipped
    assert not pipeline.merge(wd, 1).skipped
    assert not pipeline.cluster(wd, "infomap", {"device": "cpu"}).skipped
    f, idx, _ = wd.read_features()
    assert len(f) == 5
    # an edited image file with the same path also counts as a change
    img = tmp_path / "copy.jpg"
    shutil.copy(paths[0], img)
    inp2 = write_input(tmp_path, [{"img_path": str(img)}])
    pipeline.prepare(inp2, wd)
    pipeline.embed(wd, device="cpu")
    shutil.copy(paths[5], img)
    assert not pipeline.prepare(inp2, wd).skipped
    assert not pipeline.embed(wd, device="cpu").skipped


def test_stage_commands_like_the_containers(tmp_path, faces):
    _, paths = faces
    inp = write_input(tmp_path, [{"img_path": str(p)} for p in paths])
    wd = tmp_path / "wd"
    assert run_cli("prepare", inp, "-w", wd) == 0
    assert run_cli("embed", "-w", wd, "--shard", "0/2", "--device", "cpu") == 0
    assert run_cli("embed", "-w", wd, "--shard", "1/2", "--device", "cpu") == 0
    assert run_cli("merge", "-w", wd) == 0
    assert run_cli("cluster", "-w", wd, "--method", "infomap", "--device", "cpu", "-o", tmp_path / "a.json") == 0
    assert run_cli("run", inp, "-o", tmp_path / "b.json", "-w", tmp_path / "wd2", "--device", "cpu") == 0
    a = [r["cluster_id"] for r in json.loads((tmp_path / "a.json").read_text())]
    b = [r["cluster_id"] for r in json.loads((tmp_path / "b.json").read_text())]
    assert a == b


def test_unknown_method_and_bad_setting_are_usage_errors(tmp_path, faces):
    _, paths = faces
    inp = write_input(tmp_path, [{"img_path": str(paths[0])}])
    assert run_cli("run", inp, "-o", tmp_path / "o.json", "--method", "nope") == 2
    assert run_cli("run", inp, "-o", tmp_path / "o.json", "--set", "k=-3") == 2
    assert run_cli("run", inp, "-o", tmp_path / "o.json", "--set", "bogus=1") == 2
    assert not (tmp_path / "o.json").exists()
