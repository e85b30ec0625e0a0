"""bench/regimes.py's opt-in all-styles regimes: every crop style of the same people in one batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import cluster_scale  # noqa: E402
import regimes  # noqa: E402

from facecluster.train.splits import is_validation_identity  # noqa: E402
from facecluster.workdir import WorkDir  # noqa: E402

# two validation and one training identity of the project-wide split (checked below)
VAL, TRAIN = ["Tom_Hanks", "Keanu_Reeves"], ["George_W_Bush"]


def _workdir(root: Path, name: str, people: list[str], per: int, px: float, seed: int) -> None:
    """A merged work dir ``root/name`` of ``per`` faces per person (folder = identity)."""
    x = np.random.default_rng(seed).normal(size=(len(people) * per, 128)).astype(np.float32)
    wd = WorkDir(cluster_scale.make_workdir(root / name, x))
    recs = [{"img_path": f"/data/{name}/{p}/{i:04d}.jpg"} for p in people for i in range(per)]
    wd.manifest.write_text(json.dumps({"records": recs}))
    np.save(wd.features_face_px, np.full(len(x), px, np.float32))


def test_all_styles_keeps_one_name_per_person_across_styles(tmp_path):
    assert all(is_validation_identity("lfw", p) for p in VAL) and not any(is_validation_identity("lfw", p) for p in TRAIN)
    _workdir(tmp_path, "lfw", VAL + TRAIN, 3, 40.0, 0)
    _workdir(tmp_path, "glint-lowres", VAL + TRAIN, 5, 14.0, 1)
    _workdir(tmp_path, "orl", ["s1", "s2"], 2, 30.0, 2)

    val = regimes.validation_regimes(tmp_path, only=[regimes.ALL_STYLES_VAL], with_px=True)
    assert [v[0] for v in val] == [regimes.ALL_STYLES_VAL]
    _, x, n, px = val[0]
    # validation people only, from every style that exists (missing sets skipped), ORL prefixed
    assert len(x) == len(n) == len(px) == 2 * 3 + 2 * 5 + 2 * 2
    assert sorted(set(n.tolist())) == sorted(VAL + ["orl:s1", "orl:s2"])
    assert (n == "Tom_Hanks").sum() == 3 + 5  # one person across two styles
    assert sorted(set(px.tolist())) == [14.0, 30.0, 40.0]

    tune = regimes.tuning_regimes(tmp_path, only=[regimes.ALL_STYLES_TRAIN])
    assert [t[0] for t in tune] == [regimes.ALL_STYLES_TRAIN]
    assert sorted(set(tune[0][2].tolist())) == TRAIN and len(tune[0][1]) == 3 + 5
    # opt-in: not part of the default lists
    assert regimes.ALL_STYLES_VAL not in [v[0] for v in regimes.validation_regimes(tmp_path)]
    assert regimes.ALL_STYLES_TRAIN not in [t[0] for t in regimes.tuning_regimes(tmp_path)]


def test_glint_clips_cut_each_person_into_clips_and_the_scenarios_keep_them_apart(tmp_path):
    import scenarios
    import shift_sets

    files = [Path(f"/g/Tom_Hanks/{i}.jpg") for i in range(500)]
    cut = shift_sets.glint_clips("Tom_Hanks", files)
    assert [f for f, *_ in cut] == files and cut == shift_sets.glint_clips("Tom_Hanks", files)  # a pure function
    clips = np.array([c for _, c, *_ in cut])
    assert (np.diff(clips) >= 0).all() and clips[0] == 0  # consecutive runs
    lengths = np.bincount(clips)
    assert (lengths[:-1] >= 60).all() and (lengths <= 200).all()
    for _, c, side, sigma, q in cut:  # one quality per clip, in the documented ranges
        assert 36 <= side <= 64 and 0 <= sigma <= 1.2 and 30 <= q <= 70
    assert len({(side, sigma, q) for _, _, side, sigma, q in cut}) == len(lengths)

    # a glint-clips work dir: two validation people and one training person, clips of 60 / 40 faces
    people = VAL + TRAIN
    x = np.random.default_rng(0).normal(size=(3 * 100, 128)).astype(np.float32)
    wd = WorkDir(cluster_scale.make_workdir(tmp_path / "glint-clips", x))
    recs = [{"img_path": f"/d/{p}/c{int(i >= 60):02d}_{i}.jpg", "clip": f"{p}/c{int(i >= 60):02d}"} for p in people for i in range(100)]
    wd.manifest.write_text(json.dumps({"records": recs}))
    np.save(wd.features_face_px, np.full(len(x), 14.0, np.float32))
    xs, n, px, clip = scenarios.load_clips(tmp_path, "val")
    assert sorted(set(n.tolist())) == sorted(VAL) and len(xs) == len(px) == 200
    shapes = dict(scenarios.clip_scenarios(xs, n, px, clip, "t"))
    assert [len(d[1]) for d in shapes["video-1c/t"]] == [60, 60]  # clips of >= 50 frames, alone
    assert all(len(set(d[1].tolist())) == 2 for d in shapes["video-2c/t"])  # pairs of two people
    assert len(shapes["video-2c/t"]) == 1
    assert [len(d[1]) for d in shapes["video-1p/t"]] == [100, 100]
    assert [len(d[1]) for d in shapes["video-all/t"]] == [200]  # every clip of every person
    # a crowd: one clip of >= 50 frames per person (each person here has one), five seeded draws
    assert len(shapes["video-crowd/t"]) == 5
    assert all(sorted(set(d[1].tolist())) == sorted(VAL) and len(d[1]) == 120 for d in shapes["video-crowd/t"])
    clips = [f"p{i}/c{j}" for i in range(3) for j in range(4)]
    draws = scenarios._crowds(clips, {c: c.split("/")[0] for c in clips})
    assert all(sorted(c.split("/")[0] for c in d) == ["p0", "p1", "p2"] for d in draws)  # one clip per person
    assert len({tuple(d) for d in draws}) > 1 and draws == scenarios._crowds(clips, {c: c.split("/")[0] for c in clips})
    assert sorted(set(scenarios.load_clips(tmp_path, "train")[1].tolist())) == TRAIN


def test_build_workdirs_plans_every_set_the_regimes_read_training_sets_first():
    import build_workdirs

    order = build_workdirs.plan()
    assert order[: len(regimes.TRAIN_SETS)] == regimes.TRAIN_SETS
    # every work dir validation_regimes() and the scenarios read
    for need in ("lfw", "lfw-lowq", "lfw-loose", "lfw-mixed-val", "lfw-detbox-val", "lfw-night-val", "glint18", "glint-lowres",
                 "glint-mixed", "yale", "orl", "glint-clips"):
        assert need in order
    assert build_workdirs.plan(["orl", "lfw"]) == ["lfw", "orl"]
    with pytest.raises(SystemExit, match="unknown sets"):
        build_workdirs.plan(["lfw-typo"])


def test_build_workdirs_embeds_a_shared_set_and_skips_it_on_a_rerun(tmp_path):
    """The real command on ORL (400 faces): the work dir regimes.py reads, then a no-op rerun."""
    import subprocess

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (shared / "orl").is_dir():
        pytest.skip("../shared/data/orl not present")
    cmd = [sys.executable, str(Path(regimes.__file__).with_name("build_workdirs.py")), "--shared", str(shared),
           "--sets", str(tmp_path / "sets"), "--root", str(tmp_path / "work"), "--only", "orl"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "orl" in first.stdout and "400 faces" in first.stdout
    x, names = regimes.load(tmp_path / "work", "orl")
    assert x.shape == (400, 128) and len(set(names)) == 40
    again = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "embedded already" in again.stdout


@pytest.mark.parametrize(
    "work, names",
    [("lfw-sidelight", regimes.LIGHTING_TUNING), ("lfw-night", regimes.NIGHT_TUNING), ("lfw-lowres", regimes.LOWRES_TUNING)],
)
def test_lighting_tuning_regimes_are_opt_in_training_identities(tmp_path, work, names):
    """``--regimes lfw-sidelight-train,lfw-sidelight-train21`` (and the night camera's
    ``lfw-night-train,lfw-night-train21``, the far faces' ``lfw-lowres-train,lfw-lowres-train21``): the photos of the training people only (the >= 5-photo
    regulars capped at 21 for -train21); not in the default list."""
    _workdir(tmp_path, "lfw", VAL + TRAIN, 3, 40.0, 0)
    _workdir(tmp_path, work, VAL + TRAIN + ["Colin_Powell"], 6, 40.0, 3)
    assert not is_validation_identity("lfw", "Colin_Powell")
    tune = regimes.tuning_regimes(tmp_path, only=list(names), with_px=True)
    assert [t[0] for t in tune] == list(names)
    for _, x, n, px in tune:
        assert sorted(set(n.tolist())) == sorted(TRAIN + ["Colin_Powell"]) and len(x) == len(px) == 12
    assert not set(names) & {t[0] for t in regimes.tuning_regimes(tmp_path)}


def test_yale_halves_are_opt_in_random_halves(tmp_path):
    """``--regimes yale-halves``: five random halves of the yale work dir (the draws of
    bench/incremental.py's random50 split), each with its faces' sizes; one can be named alone;
    none is in the default list."""
    _workdir(tmp_path, "yale", ["yaleB01", "yaleB02", "yaleB03"], 5, 60.0, 4)
    x_all, n_all = regimes.load(tmp_path, "yale")
    halves = regimes.validation_regimes(tmp_path, only=["yale-halves"], with_px=True)
    assert [h[0] for h in halves] == list(regimes.YALE_HALVES)
    seen = set()
    for i, (_, x, n, px) in enumerate(halves):
        a = np.sort(np.random.default_rng(i).permutation(15)[:8])  # round(7.5) = 8
        np.testing.assert_array_equal(x, x_all[a])
        np.testing.assert_array_equal(n, n_all[a])
        assert len(px) == 8
        seen.add(tuple(a))
    assert len(seen) == 5  # different draws
    assert [h[0] for h in regimes.validation_regimes(tmp_path, only=["yale-half3"])] == ["yale-half3"]
    assert not set(regimes.YALE_HALVES) & {v[0] for v in regimes.validation_regimes(tmp_path)}


def test_train_cohort_with_a_part_from_work_dirs(tmp_path, monkeypatch):
    """``facecluster train cohort -w ... --part side-light=WD``: the main cohort and the part hold
    one face of each *training* person of their work dirs, the part's reference is measured on the
    main work dirs' faces, and the file reads back with its part, margin and seed recorded."""
    from conftest import run_cli

    import facecluster.train
    from facecluster.cohort import read_cohort

    # the `train` group sets flush-to-zero for the whole process (facecluster.train.flush_subnormals):
    # run in-process here, it would leak into later tests (test_gcn_ve reads subnormal weights)
    monkeypatch.setattr(facecluster.train, "flush_subnormals", lambda: True)

    people = TRAIN + ["Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder"] + [f"Person_{i:03d}" for i in range(20)]
    people = [p for p in people if not is_validation_identity("lfw", p)]
    _workdir(tmp_path, "lfw", people + VAL, 2, 40.0, 0)
    _workdir(tmp_path, "lfw-sidelight", people + VAL, 2, 40.0, 1)
    out = tmp_path / "c.npz"
    rc = run_cli("train", "cohort", "-w", tmp_path / "lfw", "--part", f"side-light={tmp_path / 'lfw-sidelight'}",
                 "--part-margin", "0.02", "--part-seed", "2", "--k", "3", "-o", out)
    assert rc == 0
    co = read_cohort(out)
    assert sorted(co.names.tolist()) == sorted(people) and co.k == 3
    (part,) = co.parts
    assert part.label == "side-light" and part.margin == 0.02 and sorted(part.names.tolist()) == sorted(people)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["parts"][0]["seed"] == 2 and info["parts"][0]["work_dir"] == "lfw-sidelight" and abs(info["parts"][0]["ref"] - part.ref) < 1e-9
    # a part may name its own margin (LABEL:MARGIN=WORK_DIR); the others keep --part-margin
    out2 = tmp_path / "c2.npz"
    assert run_cli("train", "cohort", "-w", tmp_path / "lfw", "--part", f"side-light={tmp_path / 'lfw-sidelight'}",
                   "--part", f"night:0.0125={tmp_path / 'lfw-sidelight'}", "--k", "3", "-o", out2) == 0
    assert [(p.label, p.margin) for p in read_cohort(out2).parts] == [("side-light", 0.01), ("night", 0.0125)]
    assert run_cli("train", "cohort", "-w", tmp_path / "lfw", "--part", f"night:x={tmp_path / 'lfw-sidelight'}", "-o", tmp_path / "e.npz") == 2
    assert run_cli("train", "cohort", "-w", tmp_path / "lfw", "--part", "no-equals-sign", "-o", tmp_path / "d.npz") == 2
    assert not (tmp_path / "d.npz").exists()


def test_night_camera_regime_is_dark_grey_noisy_and_the_same_on_a_rebuild(tmp_path):
    """``lfw-night``: a pure function of the file name (a rebuild gives the same bytes), grey,
    under-exposed and noisy; its validation input holds the held-out identities only."""
    import shift_sets
    from PIL import Image

    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(60, 220, size=(250, 250, 3), dtype=np.uint8))
    a, qa = shift_sets.lfw_variant(src, "lfw-night", "X_0001.jpg")
    b, qb = shift_sets.lfw_variant(src, "lfw-night", "X_0001.jpg")
    c, _ = shift_sets.lfw_variant(src, "lfw-night", "X_0002.jpg")
    pa = np.asarray(a)
    assert a.size == (150, 150) and qa == qb and 40 <= qa <= 70
    assert (pa == np.asarray(b)).all() and not (pa == np.asarray(c)).all()
    assert (pa[..., 0] == pa[..., 1]).all() and (pa[..., 1] == pa[..., 2]).all()  # grey
    assert pa.mean() < 0.4 * np.asarray(src.convert("L")).mean()  # under-exposed
    people = ["Colin_Powell", "George_W_Bush", "Serena_Williams", "Tony_Blair", "AJ_Lamas", "Aaron_Patterson"]
    (tmp_path / "lfw-night.json").write_text(json.dumps([{"img_path": f"{p}/{p}_0001.jpg", "person": p} for p in people]))
    k = shift_sets.write_validation_input("lfw-night", tmp_path)
    kept = [r["person"] for r in json.loads((tmp_path / "lfw-night-val.json").read_text())]
    assert k == len(kept) and kept == [p for p in people if is_validation_identity("lfw", p)]


def test_far_face_regime_is_small_compressed_varied_and_the_same_on_a_rebuild():
    """``lfw-lowres``: a pure function of the file name, 48-96 px, q20-60, the framing and size
    drawn per photo (a family around lfw-lowq's one recipe, not that recipe for every photo)."""
    import shift_sets
    from PIL import Image

    src = Image.fromarray(np.random.default_rng(1).integers(0, 255, size=(250, 250, 3), dtype=np.uint8))
    got = [shift_sets.lfw_variant(src, "lfw-lowres", f"X_{i:04d}.jpg") for i in range(40)]
    again, qa = shift_sets.lfw_variant(src, "lfw-lowres", "X_0000.jpg")
    assert (np.asarray(again) == np.asarray(got[0][0])).all() and qa == got[0][1]
    sizes = {im.size[0] for im, _ in got}
    assert all(im.size[0] == im.size[1] for im, _ in got) and min(sizes) >= 48 and max(sizes) <= 96 and len(sizes) > 10
    assert all(20 <= q <= 60 for _, q in got) and len({q for _, q in got}) > 10


def test_by_split_scores_held_out_and_training_people_apart():
    """--by-split: one partition scored on the held-out people's faces alone and on the training
    people's alone; a merge of the two held-out people lowers only the held-out part."""
    assert all(is_validation_identity("lfw", p) for p in VAL) and not any(is_validation_identity("lfw", p) for p in TRAIN)
    names = np.array(["Tom_Hanks"] * 4 + ["Keanu_Reeves"] * 4 + ["George_W_Bush"] * 6)
    right = np.r_[np.zeros(4), np.ones(4), np.full(6, 2)].astype(np.int64)
    out = regimes.by_split(names, right)
    assert (out["held_out"]["faces"], out["training"]["faces"]) == (8, 6)
    assert out["held_out"]["bcubed_fscore"] == out["training"]["bcubed_fscore"] == 1.0
    merged = regimes.by_split(names, np.r_[np.zeros(8), np.full(6, 2)].astype(np.int64))
    assert merged["held_out"]["bcubed_fscore"] < 0.7 and merged["training"]["bcubed_fscore"] == 1.0


def test_neighbour_purity_counts_faces_whose_nearest_other_face_is_their_person():
    deg = np.deg2rad([0.0, 2.0, 3.0, 90.0, 91.0, 45.0])
    x = np.stack([np.cos(deg), np.sin(deg)], 1).astype(np.float32)
    names = np.array(["a", "a", "b", "b", "b", "c"])  # c: a singleton, not counted
    d = regimes.neighbour_purity(x, names, k=3)
    # nearest other face: 0 -> 1 (a, own), 1 -> 2 (b), 2 -> 1 (a), 3 -> 4 (own), 4 -> 3 (own)
    assert d["faces_with_mate"] == 5 and d["nn1_same"] == 3 / 5
    # the 3 nearest others mostly own (>= 2 of 3), for people with >= 2 photos: only 3 and 4
    assert d["nn3_majority_same"] == 2 / 5
    # exact twins of two people (0, 1): each one's nearest other face is the other twin, a
    # stranger, even where the search lists the twin ahead of the face itself (the face is
    # dropped from its list, not the first column); 2<->4 and 3<->5 are mates
    twins = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0.1], [0, 0.1, 1]], np.float32)
    d = regimes.neighbour_purity(twins, np.array(["a", "b", "b", "a", "b", "a"]), k=3)
    assert d["faces_with_mate"] == 6 and d["nn1_same"] == 4 / 6
