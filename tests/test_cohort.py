"""Cohort score normalisation (facecluster.cohort): the shipped cohort, levels, the formula, and
what it is for on real faces (a degraded face looks like anyone)."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

from facecluster.cluster import get_clusterer
from facecluster.cohort import MAX_ABOVE, MAX_BELOW, Cohort, build_cohort, build_part, cohort_path, load_cohort, read_cohort, save_cohort
from facecluster.knn import knn
from facecluster.train.splits import is_validation_identity

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _unit(v):
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _labelled(n_ids=40, per=4, d=16, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_ids, d))
    x = np.repeat(c, per, axis=0) + 0.3 * rng.normal(size=(n_ids * per, d))
    names = np.repeat([f"p{i:03d}" for i in range(n_ids)], per)
    return x.astype(np.float32), names


def test_shipped_cohort_holds_training_identities_only():
    co = load_cohort("dlib")
    assert co is not None and co.faces.shape[1] == 128 and co.faces.dtype == np.float32
    assert len(co.faces) >= 3000 and co.k == 10 and 0.90 < co.ref < 0.95
    np.testing.assert_allclose(np.linalg.norm(co.faces, axis=1), 1.0, atol=1e-5)
    assert len(set(co.names.tolist())) == len(co.names)  # one face per person
    # no held-out identity: validation numbers stay honest
    assert not any(is_validation_identity("lfw", n) for n in co.names)
    info = json.loads(cohort_path("dlib").with_suffix(".json").read_text())
    assert info["identities"] == len(co.faces) and abs(info["ref"] - co.ref) < 1e-9
    assert load_cohort("mbf") is None and load_cohort(None) is None
    # its side-light and night parts: training identities too, one face each, each with its own
    # reference and margin
    assert [p.label for p in co.parts] == ["side-light", "night"]
    for part, pinfo, margin in zip(co.parts, info["parts"], (0.01, 0.0125)):
        assert part.margin == pinfo["margin"] == margin and pinfo["label"] == part.label
        assert len(part.faces) == len(set(part.names.tolist())) >= 3000 and part.k == co.k
        assert not any(is_validation_identity("lfw", n) for n in part.names)
        assert abs(pinfo["ref"] - part.ref) < 1e-9 and 0.90 < part.ref < 0.95


def test_build_cohort_one_face_per_person_levels_brute_force():
    x, names = _labelled()
    co, info = build_cohort(x, names, k=5, seed=3)
    assert len(co.faces) == 40 and sorted(co.names.tolist()) == sorted(set(names.tolist()))
    again, _ = build_cohort(x, names, k=5, seed=3)
    np.testing.assert_array_equal(co.faces, again.faces)  # deterministic
    # each cohort face is one of that person's faces
    xu = _unit(x)
    for f, n in zip(co.faces, co.names):
        assert np.isclose(xu[names == n] @ f, 1.0, atol=1e-5).any()
    # levels: the mean of the k largest cosines to the cohort
    s = xu @ co.faces.T
    np.testing.assert_allclose(co.levels(x), np.sort(s, axis=1)[:, -5:].mean(1), atol=1e-5)
    # leaving the own person out: the k largest among the other people's faces
    s_other = np.where(co.names[None, :] == names[:, None], -np.inf, s)
    lev = co.levels(x, exclude=names.astype(object))
    np.testing.assert_allclose(lev, np.sort(s_other, axis=1)[:, -5:].mean(1), atol=1e-5)
    assert (lev < co.levels(x) - 1e-4).all()  # each face's own person was its nearest
    assert abs(co.ref - lev.mean()) < 1e-6 and info["identities"] == 40
    # unknown names: nothing left out
    np.testing.assert_allclose(co.levels(x, exclude=np.array([None] * len(x), object)), co.levels(x), atol=1e-6)
    with pytest.raises(ValueError, match="features must be"):
        co.levels(x[:, :8])
    # a cohort holding three faces of each person (a study's several crop styles): leaving the own
    # person out still averages k other people's faces (no -inf from the own faces in the top k)
    from facecluster.cohort import Cohort

    multi = Cohort(faces=np.concatenate([xu, xu[::-1]]), k=5, ref=0.0, names=np.concatenate([names, names[::-1]]))
    s3 = np.where(multi.names[None, :] == names[:, None], -np.inf, xu @ multi.faces.T)
    lev3 = multi.levels(x, exclude=names.astype(object))
    assert np.isfinite(lev3).all()
    np.testing.assert_allclose(lev3, np.sort(s3, axis=1)[:, -5:].mean(1), atol=1e-5)


def test_parts_raise_a_level_only_past_their_margin_and_round_trip(tmp_path):
    """level = ref + max(l - ref, l_part - ref_part - margin), by brute force; a cohort with a
    part is written and read back whole."""
    x, names = _labelled(n_ids=60, per=3, d=16, seed=1)
    main, _ = build_cohort(x[: 90], names[: 90], k=4, seed=0)
    look = x[90:] + 2.0  # another "look": faces shifted together, as a hard light does
    part, info = build_part(look, names[90:], x[:90], names[:90], margin=0.01, label="look", k=4)
    assert info["margin"] == 0.01 and info["ref_faces"] == 90 and len(part.faces) == 30
    # the part's ref: the main faces' mean level against it, their own people left out
    assert abs(part.ref - part.levels(x[:90], exclude=names[:90].astype(object)).mean()) < 1e-6
    co = Cohort(faces=main.faces, k=4, ref=main.ref, names=main.names, parts=(part,))
    q = np.vstack([x[:20], look[:20]])
    l0 = np.sort(_unit(q) @ main.faces.T, axis=1)[:, -4:].mean(1)
    lp = np.sort(_unit(q) @ part.faces.T, axis=1)[:, -4:].mean(1)
    want = main.ref + np.maximum(l0 - main.ref, lp - part.ref - 0.01)
    got = co.levels(q)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got >= l0 - 1e-6).all()  # a part only ever raises a level
    assert (got[20:] - l0[20:]).mean() > (got[:20] - l0[:20]).mean()  # and raises the part's look
    # leaving the own person out applies to the part too
    ex = np.concatenate([names[:20], names[90:110]]).astype(object)
    lpx = np.where(part.names[None, :] == ex[:, None], -np.inf, _unit(q) @ part.faces.T)
    l0x = np.where(main.names[None, :] == ex[:, None], -np.inf, _unit(q) @ main.faces.T)
    want_x = main.ref + np.maximum(np.sort(l0x, 1)[:, -4:].mean(1) - main.ref, np.sort(lpx, 1)[:, -4:].mean(1) - part.ref - 0.01)
    np.testing.assert_allclose(co.levels(q, exclude=ex), want_x, atol=1e-5)
    save_cohort(tmp_path / "c.npz", co)
    back = read_cohort(tmp_path / "c.npz")
    assert back.parts[0].label == "look" and back.parts[0].margin == 0.01 and back.k == 4
    np.testing.assert_array_equal(back.parts[0].names, part.names)
    np.testing.assert_allclose(back.levels(q), got, atol=1e-6)
    save_cohort(tmp_path / "plain.npz", main)  # a plain cohort stays as it was (no part keys)
    assert read_cohort(tmp_path / "plain.npz").parts == () and "n_parts" not in np.load(tmp_path / "plain.npz").files


def test_look_says_how_far_one_part_raised_a_face_and_its_top_raw_level():
    """Cohort.look(x, label): the raise of that part alone (what levels() adds for it) and the
    face's raw level, max(plain, part), by brute force; an unknown part is an error."""
    x, names = _labelled(n_ids=60, per=3, d=16, seed=1)
    main, _ = build_cohort(x[:90], names[:90], k=4, seed=0)
    look = x[90:] + 2.0
    part, _ = build_part(look, names[90:], x[:90], names[:90], margin=0.01, label="look", k=4)
    co = Cohort(faces=main.faces, k=4, ref=main.ref, names=main.names, parts=(part,))
    assert co.part("look") is part and co.part("night") is None
    q = np.vstack([x[:20], look[:20]])
    l0 = np.sort(_unit(q) @ main.faces.T, axis=1)[:, -4:].mean(1)
    lp = np.sort(_unit(q) @ part.faces.T, axis=1)[:, -4:].mean(1)
    raised, level = co.look(q, "look")
    np.testing.assert_allclose(raised, np.maximum(0, (lp - part.ref - 0.01) - (l0 - main.ref)), atol=1e-5)
    np.testing.assert_allclose(level, np.maximum(l0, lp), atol=1e-5)
    # with one part, its raise is what levels() reports
    np.testing.assert_allclose(raised, co.levels(q, return_raise=True)[1], atol=1e-5)
    assert raised[20:].mean() > raised[:20].mean()
    with pytest.raises(ValueError, match="no part 'night'"):
        co.look(q, "night")
    assert [len(a) for a in co.look(q[:0], "look")] == [0, 0]


def test_normalise_formula_bounds_and_neighbour_order():
    co = Cohort(faces=_unit(np.eye(3, dtype=np.float32)), k=1, ref=0.9)
    sims = np.array([[1.0, 0.95, 0.93], [1.0, 0.96, 0.0]], np.float32)
    ids = np.array([[0, 1, 2], [1, 0, -1]])
    lev = np.array([0.91, 0.88, 2.0], np.float32)  # +0.01, -0.02 (bounded to -MAX_BELOW), +1.1 (bounded)
    out = co.normalise(sims, ids, lev[[0, 1]], lev, shift=0.005)
    d = np.clip(lev - 0.9, -MAX_BELOW, MAX_ABOVE)
    want = sims - 0.5 * (d[[0, 1]][:, None] + d[np.clip(ids, 0, 2)]) + 0.005
    want[1, 2] = 0.0  # no neighbour: left as it was
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert out.dtype == np.float32 and out.shape == sims.shape
    assert out[0, 1] > out[0, 2]  # neighbour order is not re-sorted, values follow the formula


def test_infomap_uses_the_cohort_for_dlib_only(caplog):
    x, _ = _labelled(d=128)
    c = get_clusterer("infomap", device="cpu", embedder="dlib")
    assert c.settings()["cohort_norm"] is True and c.settings()["cohort_shift"] == 0.003 and c.settings()["cohort_parts"] is True and c.settings()["merge_open_lit"] == 0.002
    c.fit_predict(x)
    assert "cohort" in c.timings_ and "soups" in c.timings_ and c.settings()["cohort_norm"] is True
    off = get_clusterer("infomap", device="cpu", embedder="dlib", cohort_norm=False)
    assert off.settings()["cohort_norm"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dlib's own soup default needs no warning when the cohort is off
        off.fit_predict(x)
    assert "soups" not in off.timings_
    assert get_clusterer("infomap", device="cpu", embedder="mbf").settings()["cohort_norm"] is False
    with pytest.raises(ValueError, match="ships no cohort"):
        get_clusterer("infomap", device="cpu", embedder="mbf", cohort_norm=True).fit_predict(x)
    # features of another dimension are not dlib descriptors: raw cosine, said out loud
    c32 = get_clusterer("infomap", device="cpu", embedder="dlib")
    with caplog.at_level(logging.WARNING):
        c32.fit_predict(x[:, :32])
    assert "cohort normalisation off" in caplog.text and c32.settings()["cohort_norm"] is False
    with pytest.raises(ValueError, match="cohort_norm=true"):
        get_clusterer("infomap", device="cpu", embedder="dlib", cohort_norm=True).fit_predict(x[:, :32])


@pytest.fixture(scope="module")
def held_out_photos():
    """72 real LFW photos of 24 held-out people (3 each; none in the cohort), the dlib embedder
    and their descriptors as they are: (files, names, embedder, descriptors)."""
    pytest.importorskip("dlib")
    from facecluster.embed.dlib_resnet import DlibEmbedder
    from facecluster.imageio import load_image

    root = DATA / "lfw"
    if not root.is_dir():
        pytest.skip("../shared/data not available")
    people = [d for d in sorted(root.iterdir()) if is_validation_identity("lfw", d.name) and len(list(d.iterdir())) >= 3]
    files = [f for d in people[::6][:24] for f in sorted(d.iterdir())[:3]]
    emb = DlibEmbedder(batch_size=16)
    clean = emb.embed_batch(np.stack([emb.prepare(load_image(f), {}) for f in files]))
    return files, np.array([f.parent.name for f in files]), emb, clean


def _degrade(path: Path, side: int = 64, quality: int = 30) -> np.ndarray:
    """A photo as a far-away, heavily compressed face: whole frame down to ``side`` px, JPEG."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").resize((side, side), Image.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def test_degraded_real_faces_look_like_anyone_and_normalised_scores_separate_people_better(held_out_photos):
    """Real LFW photos of held-out people (not in the cohort), each clean and degraded (64-px
    frame, JPEG q30): the degraded descriptor is closer to the cohort (higher level), and among
    all pairs the normalised similarity separates same from different people better than the
    raw cosine (higher ROC AUC over the pairs a threshold decides: raw cosine >= 0.9)."""
    files, names, emb, clean = held_out_photos
    low = emb.embed_batch(np.stack([emb.prepare(_degrade(f), {}) for f in files]))
    co = load_cohort("dlib")
    lc, ll = co.levels(clean, parts=False), co.levels(low, parts=False)  # the plain cohort's levels
    assert (ll - lc).mean() > 0.002, (ll - lc).mean()  # measured: +0.006 on lfw-lowq-val
    x = _unit(np.vstack([clean, low]))
    n = np.concatenate([names, names])
    lev = np.concatenate([lc, ll])
    iu = np.triu_indices(len(x), 1)
    s = (x @ x.T)[iu]
    sn = s - 0.5 * (np.clip(lev - co.ref, -MAX_BELOW, MAX_ABOVE)[iu[0]] + np.clip(lev - co.ref, -MAX_BELOW, MAX_ABOVE)[iu[1]])
    same = (n[:, None] == n[None, :])[iu]
    keep = s >= 0.9

    def auc(v):
        pos, neg = v[keep & same], v[keep & ~same]
        return (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()

    assert auc(sn) > auc(s), (auc(s), auc(sn))  # measured: 0.954 -> 0.967


def _side_light(path: Path, i: int) -> np.ndarray:
    """A crop under a hard light from one side (greyscale; the far side at 6 %, the light
    from the left or the right within 30 deg of horizontal), as bench/shift_sets.py's
    ``lfw-sidelight`` makes the part's training photos (without its random gamma)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        g = np.asarray(ImageOps.grayscale(im), np.float32) / 255.0
    h, w = g.shape
    az = (0.0 if i % 2 else np.pi) + np.deg2rad(-30 + 60 * ((i * 37) % 11) / 10)
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    lit = 1.0 / (1.0 + np.exp(-12.0 * (xx * np.cos(az) + yy * np.sin(az) - 0.1)))
    out = np.clip(g * (0.06 + 1.54 * lit), 0, 1)
    return np.repeat((out * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def test_side_lit_real_faces_rise_through_the_part_and_link_less(monkeypatch, held_out_photos):
    """Real LFW photos of held-out people, as they are and under a hard side light: the shipped
    cohort's side-light part raises the side-lit faces' levels (most of them) and leaves the
    ordinary ones nearly where the plain cohort puts them (``return_raise`` says by how much);
    the default Infomap on the side-lit faces is purer with it than with the plain cohort, and
    ``cohort_parts=false`` gives the plain cohort's partition (docs/benchmarks/default_quality.md,
    "A side-light part of the cohort", "Side-lit faces in the default")."""
    from dataclasses import replace

    import facecluster.cohort as cohort_mod
    from facecluster.metrics import evaluate

    files, names, emb, clean = held_out_photos
    y = np.unique(names, return_inverse=True)[1]
    lit = emb.embed_batch(np.stack([emb.prepare(_side_light(f, i), {}) for i, f in enumerate(files)]))
    co = load_cohort("dlib")
    plain = replace(co, parts=())
    rise_clean, rise_lit = co.levels(clean) - plain.levels(clean), co.levels(lit) - plain.levels(lit)
    # measured: side-lit +0.0086 on average, 86 % raised; ordinary +0.0004, 10 % raised
    assert rise_lit.mean() > 0.004 and (rise_lit > 1e-6).mean() > 0.6, (rise_lit.mean(), (rise_lit > 1e-6).mean())
    assert rise_clean.mean() < 0.002 and (rise_clean > 1e-6).mean() < 0.3, (rise_clean.mean(), (rise_clean > 1e-6).mean())

    np.testing.assert_array_equal(co.levels(lit, parts=False), plain.levels(lit))
    lev, raised = co.levels(lit, return_raise=True)
    np.testing.assert_array_equal(lev, co.levels(lit))
    np.testing.assert_allclose(raised, lev - plain.levels(lit), atol=1e-7)
    assert (raised >= 0).all() and not co.levels(lit, parts=False, return_raise=True)[1].any()

    def labels(cohort, **kw):
        monkeypatch.setattr(cohort_mod, "load_cohort", lambda e: cohort)
        return get_clusterer("infomap", device="cpu", embedder="dlib", **kw).fit_predict(lit)

    with_parts = evaluate(y, labels(co))["bcubed_precision"]  # the default
    assert with_parts > evaluate(y, labels(plain))["bcubed_precision"]  # measured: 0.958 against 0.910
    np.testing.assert_array_equal(labels(co, cohort_parts=False), labels(plain))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_levels_and_infomap_on_cuda_match_cpu():
    """The cohort step on the GPU (levels by the CUDA kNN) gives the CPU's levels, and Infomap
    with the normalisation the CPU's partition (bench/device_check.sh runs this on the device)."""
    co = load_cohort("dlib")
    rng = np.random.default_rng(5)
    x = np.repeat(co.faces[:120], 6, axis=0) + 0.02 * rng.normal(size=(720, 128)).astype(np.float32)
    np.testing.assert_allclose(co.levels(x, device="cuda"), co.levels(x), atol=1e-5)
    for got, want in zip(co.look(x, "side-light", device="cuda"), co.look(x, "side-light")):  # Ada-NETS's lit check
        np.testing.assert_allclose(got, want, atol=1e-5)
    cpu = get_clusterer("infomap", device="cpu", embedder="dlib").fit_predict(x)
    gpu = get_clusterer("infomap", device="cuda", embedder="dlib").fit_predict(x)
    assert len(np.unique(cpu)) > 50
    assert np.array_equal(np.unique(cpu, return_inverse=True)[1], np.unique(gpu, return_inverse=True)[1])


def test_real_soup_of_degraded_strangers_dissolves_one_persons_frames_stay(held_out_photos):
    """Real faces through the shipped cohort's levels (``graph.dissolve_soups``, the default's
    last step with dlib): far, compressed photos of 12 different held-out people in one cluster
    read far below their levels (measured −0.068) and dissolve when they are a small share of
    the batch; 12 frames of one held-out glint18 person (Tom Hanks) read above them and stay; the
    same frames at 48 px, JPEG q40 read below (measured −0.018: dlib cannot tell them from a
    soup), so alone in their batch only the share guard keeps them."""
    from facecluster.graph import dissolve_soups
    from facecluster.imageio import load_image

    files, names, emb, _ = held_out_photos
    first = [np.flatnonzero(names == p)[0] for p in np.unique(names)[:12]]
    strangers = emb.embed_batch(np.stack([emb.prepare(_degrade(files[i]), {}) for i in first]))
    person = DATA / "glint18" / "Tom_Hanks"
    assert is_validation_identity("glint18", person.name)
    frames = sorted(person.iterdir())
    frames = frames[:: max(1, len(frames) // 12)][:12]
    sharp = emb.embed_batch(np.stack([emb.prepare(load_image(f), {}) for f in frames]))
    low = emb.embed_batch(np.stack([emb.prepare(_degrade(f, side=48, quality=40), {}) for f in frames]))
    co = load_cohort("dlib")
    # 600 other faces, each alone (never judged), make the two clusters 2 % of the batch each
    others = np.random.default_rng(0).normal(size=(600, strangers.shape[1])).astype(np.float32)
    x = np.vstack([strangers, sharp, others])
    lab = np.r_[np.zeros(12), np.ones(12), np.arange(2, 602)].astype(np.int64)
    out = dissolve_soups(lab, x, co.levels(x), max_share=0.02)
    assert len(set(out[:12])) == 12 and len(set(out[12:24])) == 1
    np.testing.assert_array_equal(out[24:], lab[24:])
    # one person's low-resolution frames alone: without the guard they dissolve, with it they stay
    alone = np.zeros(12, np.int64)
    assert len(set(dissolve_soups(alone, low, co.levels(low), max_share=1.0))) == 12
    np.testing.assert_array_equal(dissolve_soups(alone, low, co.levels(low), max_share=0.02), alone)


def test_lit_check_dissolves_side_lit_strangers_and_judges_lit_clusters_only(held_out_photos):
    """refine.check_lit (Ada-NETS's last step with dlib) on real faces: one photo each of 12
    held-out people under a hard side light, in one cluster, read below the lit strangers most
    like them (measured median -0.05) and become lone faces; the same 12 photos as they are, also
    one cluster of strangers, are not judged (the side-light part raised them by ~0, under the
    gate) and stay as given; so do the lone faces around them."""
    from facecluster.cluster.refine import check_lit

    files, names, emb, clean = held_out_photos
    first = [int(np.flatnonzero(names == p)[0]) for p in np.unique(names)[:12]]
    lit = emb.embed_batch(np.stack([emb.prepare(_side_light(files[i], j), {}) for j, i in enumerate(first)]))
    rest = np.setdiff1d(np.arange(len(files)), first)[:24]
    x = np.vstack([lit, clean[first], clean[rest]])
    lab = np.r_[np.zeros(12), np.ones(12), np.arange(2, 26)].astype(np.int64)
    co = load_cohort("dlib")
    raised, _ = co.look(x, "side-light")
    assert raised[:12].mean() > 0.002 > raised[12:24].mean(), (raised[:12].mean(), raised[12:24].mean())
    sims, ids = knn(x, 11)
    out = check_lit(lab, ids, sims, x, cohort=co, part="side-light", min_raise=0.002, split_min_sim=0.91)
    assert len(set(out[:12])) == 12 and not set(out[:12]) & set(out[12:])
    assert len(set(out[12:24])) == 1 and len(set(out[24:])) == 24
    np.testing.assert_array_equal(out, check_lit(lab, ids, sims, x, cohort=co, part="side-light", min_raise=0.002,
                                                 split_min_sim=0.91))
    # a gate above every cluster's mean raise judges nothing
    kept = check_lit(lab, ids, sims, x, cohort=co, part="side-light", min_raise=1.0, split_min_sim=0.91)
    np.testing.assert_array_equal(kept, lab)
    # nor is a lit cluster that is more than half its batch (one person's clip under one light)
    alone = np.zeros(12, np.int64)
    s12, i12 = knn(lit, 11)
    np.testing.assert_array_equal(check_lit(alone, i12, s12, lit, cohort=co, part="side-light", min_raise=0.002,
                                            split_min_sim=0.91), alone)
