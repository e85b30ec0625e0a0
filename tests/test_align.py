"""Detector-free alignment pieces of ``facecluster.embed.align``: the box refit helpers and the
``agree`` strategy (two refitted starts, HOG only when they disagree; issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

dlib = pytest.importorskip("dlib")

from facecluster.embed import align as A  # noqa: E402
from facecluster.embed.dlib_resnet import DlibEmbedder, default_landmarks_path  # noqa: E402
from facecluster.imageio import load_image  # noqa: E402

from conftest import data_path  # noqa: E402


def _crops(n_lfw: int = 6, n_glint: int = 3, n_orl: int = 3) -> list[np.ndarray]:
    """Size-normalised real crops, evenly spaced over each set (deterministic)."""
    out = []
    for name, k in (("lfw", n_lfw), ("glint18", n_glint), ("orl", n_orl)):
        fs = sorted(p for p in data_path(name).glob("*/*") if p.is_file())
        for i in np.linspace(0, len(fs) - 1, k).round().astype(int):
            out.append(A.normalise_size(A.to_rgb_uint8(load_image(fs[i]))))
    return out


def _pts(shape) -> np.ndarray:
    return np.array([(q.x, q.y) for q in shape.parts()], np.float64)


def test_agree_parsing_settings_and_fingerprint():
    assert A.parse_margin("agree") == ("agree", 0.0)
    assert A.parse_margin(" AGREE ") == ("agree", 0.0)
    a = A.Aligner("agree")
    assert a.margin == "agree"
    st = a.settings()
    assert st["agree"] == [[list(s) for s in A.AGREE_STARTS], A.AGREE_TOL, *A.ITER_BOX]
    assert st["hog"] == [A.HOG_SIDE, A.HOG_THRESHOLD]  # the fallback detector is part of the result
    fps = {A.Aligner(m).fingerprint() for m in ("agree", "auto", "iter", "0.15")}
    assert len(fps) == 4
    with pytest.raises(ValueError):
        A.parse_margin("agree:0.2")


def test_interocular_and_agreement_tolerance():
    m = A.mean_shape(default_landmarks_path())
    pts = np.array([10.0, 20.0]) + 100.0 * m
    iod = A.interocular(pts)
    assert iod == pytest.approx(100.0 * np.linalg.norm(m[0:2].mean(0) - m[2:4].mean(0)))
    # batched: (N, 5, 2) -> (N,)
    shifted = np.stack([pts, pts + [0.09 * iod, 0.0], pts + [0.0, 0.11 * iod]])
    got = A.landmarks_agree(np.broadcast_to(pts, shifted.shape), shifted, 0.1)
    assert got.tolist() == [True, True, False]
    # one point moved is enough to disagree
    one = pts.copy()
    one[4, 1] += 0.2 * iod
    assert not A.landmarks_agree(pts, one, 0.1)
    # a collapsed shape (all points equal) agrees only with itself, never by a zero scale
    z = np.zeros((5, 2))
    assert A.landmarks_agree(z, z, 0.1) and not A.landmarks_agree(z, z + 0.5, 0.1)


def test_start_box_and_refit_box():
    l, t, r, b = A.start_box(150, 120, 0.3, 0.05)
    l0, t0, r0, b0 = A.Aligner.margin_rect(150, 120, 0.3)
    assert (l, r) == (l0, r0)
    assert t - t0 == pytest.approx(0.05 * (r0 - l0)) and b - b0 == pytest.approx(0.05 * (r0 - l0))
    m = A.mean_shape(default_landmarks_path())
    pts = np.array([30.0, 40.0]) + 80.0 * m  # the mean shape in the box (30, 40, 110, 120)
    l, t, r, b = A.refit_box(pts, m)
    side = 80.0 * A.ITER_BOX[0]
    assert r - l == pytest.approx(side) and b - t == pytest.approx(side)
    assert ((l + r) / 2, (t + b) / 2) == pytest.approx((70.0, 80.0 + A.ITER_BOX[1] * 80.0))
    assert A.refit_box(pts, m, (1.0, 0.0)) == pytest.approx((30.0, 40.0, 110.0, 120.0))
    # batched forms (for a batched landmark pass) give the per-crop results
    rng = np.random.default_rng(1)
    many = rng.uniform(0, 150, (3, 4, 5, 2))
    boxes = A.refit_boxes(many, m)
    assert boxes.shape == (3, 4, 4)
    np.testing.assert_allclose(boxes[2, 1], A.refit_box(many[2, 1], m), atol=1e-9)
    hw = np.array([[150, 120], [112, 112], [20, 300]])
    sb = A.start_boxes(hw, 0.15, 0.05)
    for k, (h, w) in enumerate(hw):
        np.testing.assert_allclose(sb[k], A.start_box(int(h), int(w), 0.15, 0.05), atol=1e-9)


def test_iter_is_the_refit_loop():
    """``iter`` = predictor on the fallback box, then ITER_ROUNDS predictor runs on refit_box."""
    it = A.Aligner("iter")
    pred = dlib.shape_predictor(str(default_landmarks_path()))
    m = A.mean_shape(default_landmarks_path())
    for img in _crops(2, 1, 1):
        shape = pred(img, A._dlib_rect(A.Aligner.margin_rect(*img.shape[:2], it.fallback)))
        for _ in range(A.ITER_ROUNDS):
            shape = pred(img, A._dlib_rect(A.refit_box(_pts(shape), m)))
        np.testing.assert_array_equal(_pts(it.landmarks(img)), _pts(shape))


def test_agree_close_to_auto_on_real_faces():
    auto, ag = A.Aligner("auto"), A.Aligner("agree")
    diffs, rules = [], []
    for img in _crops():
        a = _pts(auto.landmarks(img))
        shape, rule = ag.landmarks_rule(img)
        rules.append(rule)
        diffs.append(np.abs(_pts(shape) - a).max() / A.interocular(a))
        if rule == "hog":  # HOG decided: exactly the auto path's landmarks
            assert diffs[-1] == 0
        assert ag.chip_from(img, shape).shape == (150, 150, 3)
    assert set(rules) <= {"agree", "hog"}
    assert rules.count("agree") >= len(rules) - 2  # HOG on a few per cent of crops, not on most
    assert np.median(diffs) < 0.06, diffs  # ~2 px at a 150 px crop
    assert max(diffs) < 0.25, diffs


def test_agree_falls_back_to_hog_then_to_the_first_start(monkeypatch):
    img = _crops(1, 0, 0)[0]
    auto = A.Aligner("auto")
    ag = A.Aligner("agree")
    pred = dlib.shape_predictor(str(default_landmarks_path()))
    m = A.mean_shape(default_landmarks_path())
    margin, shift, refits = A.AGREE_STARTS[0]
    first = pred(img, A._dlib_rect(A.start_box(*img.shape[:2], margin, shift)))
    for _ in range(refits):
        first = pred(img, A._dlib_rect(A.refit_box(_pts(first), m)))
    shape, rule = ag.landmarks_rule(img)
    if rule == "agree":
        np.testing.assert_array_equal(_pts(shape), _pts(first))
    monkeypatch.setattr(A, "AGREE_TOL", -1.0)  # the starts never agree
    shape, rule = ag.landmarks_rule(img)
    assert rule == "hog"
    np.testing.assert_array_equal(_pts(shape), _pts(auto.landmarks(img)))
    ag.hog_rect = lambda _img: None  # and HOG finds nothing: the first start, not a fixed box
    shape, rule = ag.landmarks_rule(img)
    assert rule == "agree"
    np.testing.assert_array_equal(_pts(shape), _pts(first))


def test_agree_odd_sizes_and_contract():
    ag = A.Aligner("agree")
    rng = np.random.default_rng(0)
    for shape in ((1, 1, 3), (20, 20), (3000, 2000, 3), (37, 200, 4)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert ag.chip(img).shape == (150, 150, 3)
    img = _crops(1, 0, 0)[0]
    with pytest.raises(ValueError, match="agree"):
        ag.landmarks_in(img, (0, 0, 10, 10))
    # deterministic: same crop, same chip
    np.testing.assert_array_equal(ag.chip(img), ag.chip(img))


def test_dlib_embedder_accepts_agree():
    emb = DlibEmbedder(margin="agree")
    assert emb.aligner.kind == "agree"
    assert "HOG" in emb.preprocessing


def test_agree_landmarks_batched_equals_per_crop():
    """The batch form (any predictor callable over all crops at once) gives the per-crop result."""
    imgs = _crops(3, 2, 2)
    pred = dlib.shape_predictor(str(default_landmarks_path()))
    m = A.mean_shape(default_landmarks_path())
    calls = []

    def predict(boxes):
        calls.append(len(boxes))
        return np.stack([_pts(pred(im, A._dlib_rect(b))) for im, b in zip(imgs, boxes)])

    hw = np.array([im.shape[:2] for im in imgs])
    pts, ok = A.agree_landmarks(predict, hw, m)
    assert pts.shape == (len(imgs), 5, 2) and ok.shape == (len(imgs),) and ok.dtype == bool
    assert calls == [len(imgs)] * sum(1 + r for _, _, r in A.AGREE_STARTS)  # 3 batched predictor runs
    ag = A.Aligner("agree")
    for im, p, k in zip(imgs, pts, ok):
        shape, rule = ag.landmarks_rule(im)
        assert (rule == "agree") == bool(k) or rule == "agree"  # disagreement + no HOG box -> first start
        if rule == "agree":
            np.testing.assert_array_equal(_pts(shape), p)


# -- turned faces (orient) -------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_unturn_points_inverts_rot90(k):
    rng = np.random.default_rng(k)
    h, w = 37, 53
    cells = rng.choice(h * w, 20, replace=False)  # distinct pixels: no marker hides another
    pts = np.stack([cells % w, cells // w], 1).astype(np.float64)
    img = np.zeros((h, w), np.int64)
    img[pts[:, 1].astype(int), pts[:, 0].astype(int)] = np.arange(1, 21)
    t = A.turn(img, k)
    # where each marker went in the turned image, mapped back, is where it was
    ys, xs = np.nonzero(t)
    back = A.unturn_points(np.stack([xs, ys], 1).astype(np.float64), k, h, w)
    order = np.argsort(t[ys, xs])
    assert np.array_equal(back[order], pts)


def _upright_faces(n: int = 4) -> list[np.ndarray]:
    """Real LFW crops (size-normalised) in which the HOG detector finds the face upright."""
    fs = sorted(p for p in data_path("lfw").glob("*/*.jpg"))
    out = []
    for i in np.linspace(0, len(fs) - 1, 40).round().astype(int):
        img = A.normalise_size(A.to_rgb_uint8(load_image(fs[i])))
        if A.Aligner.hog_rect(img) is not None:
            out.append(img)
        if len(out) == n:
            break
    assert len(out) == n
    return out


def test_turned_face_gives_the_upright_chip():
    """A crop turned by 90 / 180 / 270 degrees: the detector finds nothing upright, finds the face
    turned back, and the chip (from the landmarks mapped back to the crop) is the upright crop's,
    pixel for pixel; without ``orient`` the chip is a different (sideways) image."""
    on, off = A.Aligner(), A.Aligner(orient=False)
    for img in _upright_faces():
        want = on.chip(img)
        for k in (1, 2, 3):
            t = A.turn(img, k)
            shape, rule = on.landmarks_rule(t)
            assert rule == "hog-turned"
            assert np.array_equal(on.chip_from(t, shape), want)
            assert off.landmarks_rule(t)[1] == "margin"
            assert not np.array_equal(off.chip(t), want)
            # the face's size (inter-ocular distance) does not depend on the turn
            assert on.chip_and_size(t)[1] == pytest.approx(on.chip_and_size(img)[1])


def test_orient_leaves_upright_and_faceless_crops_alone():
    on, off = A.Aligner(), A.Aligner(orient=False)
    for img in _upright_faces():
        assert on.place(img)[1:] == ("hog", 0)
        assert np.array_equal(on.chip(img), off.chip(img))
    blank = np.full((160, 160, 3), 128, np.uint8)  # nothing to detect either way: the margin box
    assert on.place(blank) == (A.Aligner.margin_rect(160, 160, A.AUTO_FALLBACK_MARGIN), "margin", 0)
    # detector-free strategies never look for a turned face
    for margin in ("iter", 0.2, "agree"):
        assert A.Aligner(margin).place(A.turn(_upright_faces(1)[0], 1))[2] == 0


def test_orient_setting_and_fingerprint():
    # on by default and absent from the settings: work dirs embedded before it keep their fingerprint
    assert "orient" not in A.Aligner().settings()
    assert A.Aligner(orient=False).settings()["orient"] is False
    assert A.Aligner().fingerprint() != A.Aligner(orient=False).fingerprint()
    assert A.Aligner("iter").fingerprint() == A.Aligner("iter", orient=False).fingerprint()  # no detector: no effect
    assert DlibEmbedder(orient="false").aligner.orient is False
    assert DlibEmbedder().aligner.orient is True
    assert DlibEmbedder(orient="false").fingerprint() != DlibEmbedder().fingerprint()
    from facecluster.embed.base import EmbedderError

    with pytest.raises(EmbedderError, match="orient"):
        DlibEmbedder(orient="sideways")
