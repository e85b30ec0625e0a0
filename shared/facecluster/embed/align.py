"""Face alignment for the dlib embedder: 5 landmarks + dlib's 150x150 face chip.

The input is a face crop that a detector already cut (the whole image is the face). dlib's
5-point shape predictor needs a face *rectangle* like the one its training detector drew; how that
rectangle relates to the crop depends on the crop's margin, so the rectangle is chosen by a
strategy (``margin``):

``"whole"``
    the whole crop (right for crops with roughly 15-35 % margin around the face);
``<float m>``
    the crop is assumed to be the face rectangle enlarged by ``m`` of its side on every side:
    the rectangle is the centred square-ish box ``crop / (1 + 2 m)`` (``m < 0`` gives a box larger
    than the crop, for crops tighter than a detector box);
``"hog"``
    dlib's HOG frontal face detector run on the crop (upsampled when small); the best plausible
    detection, else the whole crop;
``"auto:<m>"`` / ``"auto"``
    the HOG detection when plausible, else the ``m``-margin box (``"auto"`` uses
    :data:`AUTO_FALLBACK_MARGIN`);
``"iter:<m>"`` / ``"iter"``
    no detector: landmarks from the ``m``-margin box, then the box is re-fitted to those landmarks
    (the box in which the predictor's own mean shape lands on them, :func:`box_from_landmarks`,
    corrected by :data:`ITER_BOX` to where the HOG detector puts its box) and the landmarks
    predicted again, :data:`ITER_ROUNDS` times. Three predictor runs instead of HOG + one: in
    dlib-bin a predictor run costs about a third of a HOG pass, so this saves only ~10-25 % of
    the alignment time on a CPU (``docs/benchmarks/embedding.md`` §5); it is what a batched
    GPU predictor needs (no detector in the loop).
``"agree"``
    landmarks from two start boxes (:data:`AGREE_STARTS`, refitted as in ``iter``); when the two
    landmark sets agree within :data:`AGREE_TOL` inter-ocular distances, the first is used,
    otherwise (a face off-centre or at an unusual scale, where a start converges to the wrong
    place) dlib's HOG detector decides as in ``"auto"`` (no plausible detection: the first
    start's landmarks). Three predictor runs on every crop and HOG on a few per cent of them
    instead of HOG on every crop (``docs/benchmarks/embedding.md`` §7).

**Turned faces** (``orient``, on by default for ``"auto"`` and ``"hog"``): when the HOG detector
finds no plausible upright face, it is run on the crop turned by 90 degrees one way, the other
way and then by 180 degrees (:data:`ORIENT_TURNS`, lossless ``np.rot90``); when it finds only a
weak one (:data:`ORIENT_WEAK`), on the crop turned by 180 degrees. The best plausible detection at
or above :data:`ORIENT_THRESHOLD` (:data:`ORIENT_HALF_THRESHOLD` for the half turn) and above the
weak upright one places the landmarks in the turned crop, and they are mapped
back to the crop's own coordinates, so ``dlib.get_face_chip`` (which rotates by the landmarks)
gives an upright chip. Crops from rotated video, overhead or fisheye cameras and detectors that
find rolled faces come out with the right descriptor instead of a near-random one (1-NN to upright
photos of the same people: 0.04 -> 0.96 at 90 degrees, 0.02 -> 0.93 at 180, 0.75 -> 0.92 at 50);
upright faces are untouched (a turned copy is only tried where the upright detection is missing
or weak; five whole sets re-embedded, 53,000 crops, gave the same descriptors;
``docs/benchmarks/embedding.md`` §9).

Which default aligns best was measured on LFW (~20-30 % margin) and glint18 (tight ArcFace
crops), see ``docs/benchmarks/embedding.md``. The chip is ``dlib.get_face_chip(img, shape,
size=150, padding=0.25)``: the alignment the network was trained on. Pixels the chip needs from
outside the crop are black by default (dlib); ``border="replicate"`` pads the crop with its edge
pixels first.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

try:
    import dlib
except ImportError:  # pragma: no cover - dlib-bin is a core dependency
    dlib = None  # type: ignore[assignment]

CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: margin strategy used when none is given: best on LFW, glint18 and ORL alike
#: (docs/benchmarks/embedding.md)
DEFAULT_MARGIN = "auto"
#: fallback margin of ``"auto"`` when the HOG detector finds no plausible face: the best fixed
#: margin on LFW (loose), glint18 (tight) and ORL together (0.1-0.2 within noise; 0 and 0.3 worse)
AUTO_FALLBACK_MARGIN = 0.15
#: images are resized so that their longer side lies in [MIN_SIDE, MAX_SIDE] before alignment
MIN_SIDE = 150
MAX_SIDE = 800
#: the HOG detector runs on a copy with this longer side (boxes match a x3 upsampled run within ~2 %)
HOG_SIDE = 200
#: detection score threshold (dlib's default is 0; a little lower keeps faint frontal faces in a crop
#: that is known to contain a face, the plausibility check rejects stray boxes)
HOG_THRESHOLD = -0.3
#: ``orient``: the turns tried (``np.rot90``'s k: 90 degrees counter-clockwise, clockwise, 180) when
#: the upright crop has no plausible HOG detection. Steps of 45 degrees were measured too (the
#: rotation needs interpolation and a larger canvas): +0.03 1-NN at 50 degrees of roll, but the
#: detector then fires on 5 % of Extended Yale B's dark upright faces (docs/benchmarks/embedding.md)
ORIENT_TURNS = (1, 3, 2)
#: ``orient``: the HOG score a turned crop's detection needs (dlib's own default threshold; faces
#: turned by 90 degrees score 1.1-2.0 once turned upright, median 1.5)
ORIENT_THRESHOLD = 0.0
#: ``orient``: the score the half turn needs. Blurred low-resolution faces look alike upside down
#: to the detector: on upright crops it fired on 7 of 7,269 48-px glint crops turned by 180
#: (scores 0.03-0.46, each a wrong descriptor); at 0.6 it still finds 70-96 % of the faces of nine
#: sets turned upside down (500 each; the dark faces of Extended Yale B: 4 %)
ORIENT_HALF_THRESHOLD = 0.6
#: ``orient``: an upright detection scoring under this is checked against the half turn (the
#: detector fires weakly, < 0.3, on a quarter of upside-down faces; on upright crops of ten sets
#: 1-15 % score under it)
ORIENT_WEAK = 0.3
#: refits of the landmark box in the ``"iter"`` strategy (the box moves < 1 px after the second)
ITER_ROUNDS = 2
#: HOG box relative to the mean-shape box of the landmarks predicted from it: (side ratio, centre
#: shift down in units of the side). Medians over 318 HOG-detected crops of the *training*
#: identities of LFW and glint18 (bench/regimes.py protocol; IQR 0.10 / 0.07): the detector's box
#: is a little smaller and lower than the box in which the mean shape fits the landmarks. The
#: horizontal shift (0.01) is left out: faces are mirror-symmetric.
ITER_BOX = (0.936, 0.052)
#: ``"agree"``: the two starts, (margin of the start box, its downward shift in units of its side,
#: refits). The first start's landmarks are used when the two agree. Chosen on 1,723 HOG-detected
#: crops of *training* identities (250 per set of LFW, glint18, ORL, lfw-loose, lfw-tight,
#: lfw-mixed, glint-lowres; ``bench/embed_alignment.py --fit-agree``, docs/benchmarks/embedding.md
#: §7): a 0.3-margin box 0.05 lower with one refit is the single start closest to the HOG path
#: (0.4 % of crops > 0.15 inter-ocular distances away, vs 0.8-1.2 % for the 0.15-margin starts and
#: the ``"iter"`` start); checking it against the plain 0.15-margin box 0.05 lower (no refit) is
#: the cheapest pair (3 predictor runs) that left no crop > 0.15 IOD from the HOG path.
AGREE_STARTS = ((0.3, 0.05, 1), (0.15, 0.05, 0))
#: ``"agree"``: largest landmark coordinate difference between the two starts, in inter-ocular
#: distances, that counts as agreement (0.1 ~ 4-5 px in a 150 px LFW crop). On the training crops
#: above: HOG runs on 4.1 % of crops (0.07: 5.7 %, 0.05: 8.1 %), none left > 0.15 IOD away.
AGREE_TOL = 0.1

_local = threading.local()


def _require_dlib() -> None:
    if dlib is None:  # pragma: no cover
        from .base import EmbedderError

        raise EmbedderError("the dlib embedder needs the 'dlib-bin' package (pip install dlib-bin)")


def _predictor(path: Path) -> "dlib.shape_predictor":
    """Thread-local shape predictor (dlib objects are not documented as thread-safe)."""
    cache = getattr(_local, "predictors", None)
    if cache is None:
        cache = _local.predictors = {}
    key = str(path)
    if key not in cache:
        cache[key] = dlib.shape_predictor(key)
    return cache[key]


def _dlib_rect(box: tuple[float, float, float, float]) -> "dlib.rectangle":
    """(left, top, right, bottom) floats → dlib's integer rectangle (rounded)."""
    l, t, r, b = box
    return dlib.rectangle(int(round(l)), int(round(t)), int(round(r)), int(round(b)))


def _points(shape: "dlib.full_object_detection") -> np.ndarray:
    """(K, 2) float64 pixel coordinates of a dlib shape's parts."""
    return np.asarray([(q.x, q.y) for q in shape.parts()], np.float64)


def turn(img: np.ndarray, k: int) -> np.ndarray:
    """``img`` turned by ``k`` quarter turns counter-clockwise (``np.rot90``), contiguous."""
    return np.ascontiguousarray(np.rot90(img, k)) if k % 4 else img


def unturn_points(pts: np.ndarray, k: int, h: int, w: int) -> np.ndarray:
    """(K, 2) x, y pixel coordinates in ``turn(img, k)`` → the same points in ``img`` (h, w)."""
    x, y = pts[:, 0], pts[:, 1]
    k %= 4
    if k == 1:
        x, y = (w - 1) - y, x
    elif k == 2:
        x, y = (w - 1) - x, (h - 1) - y
    elif k == 3:
        x, y = y, (h - 1) - x
    return np.stack([x, y], 1)


def unturn_shape(shape: "dlib.full_object_detection", k: int, h: int, w: int) -> "dlib.full_object_detection":
    """A dlib shape found in ``turn(img, k)`` expressed in ``img``'s (h, w) coordinates (exact:
    integer points map to integer points)."""
    if k % 4 == 0:
        return shape
    pts = unturn_points(_points(shape), k, h, w)
    r = shape.rect
    corners = unturn_points(np.array([[r.left(), r.top()], [r.right(), r.bottom()]], np.float64), k, h, w)
    lo, hi = corners.min(0), corners.max(0)
    return dlib.full_object_detection(
        dlib.rectangle(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])),
        [dlib.point(int(round(a)), int(round(b))) for a, b in pts],
    )


_MEAN_SHAPES: dict[str, np.ndarray] = {}


def mean_shape(path: str | Path) -> np.ndarray:
    """(5, 2) float64: the shape predictor's initial (mean) shape in unit-box coordinates.

    It is the first thing in dlib's ``shape_predictor`` serialisation (int version 1, then a
    column matrix ``-nr, -nc`` and nr floats, x and y interleaved); read once per file.
    """
    key = str(path)
    if key not in _MEAN_SHAPES:
        from .dlib_resnet import DatFormatError, _Reader

        with open(key, "rb") as f:
            r = _Reader(f.read(4096))  # the header is a few hundred bytes
        if r.int() != 1:
            raise DatFormatError(f"{key}: not a dlib shape_predictor (version != 1)")
        nr, nc = -r.int(), -r.int()
        if nc != 1 or nr <= 0 or nr % 2:
            raise DatFormatError(f"{key}: unexpected initial shape {nr}x{nc}")
        _MEAN_SHAPES[key] = np.asarray([r.float() for _ in range(nr)], np.float64).reshape(-1, 2)
    return _MEAN_SHAPES[key]


def box_from_landmarks(pts: np.ndarray, mean: np.ndarray) -> tuple[float, float, float, float]:
    """Square box (left, top, right, bottom) in which ``mean`` (unit-box coordinates) best fits ``pts``.

    Least squares for ``pts ~ (left, top) + side * mean`` (one side for x and y: dlib's detector
    boxes are square), i.e. the box the predictor itself would start from for these landmarks.

    Parameters
    ----------
    pts : (K, 2) landmarks in pixels.
    mean : (K, 2) the predictor's mean shape in [0, 1] box coordinates.
    """
    pts = np.asarray(pts, np.float64)
    mc = mean - mean.mean(0)
    pc = pts - pts.mean(0)
    side = float((mc * pc).sum() / max((mc * mc).sum(), 1e-12))
    left, top = pts.mean(0) - side * mean.mean(0)
    # dlib maps the unit box's (0, 0) to (left, top) and (1, 1) to (right, bottom)
    return float(left), float(top), float(left + side), float(top + side)


def refit_boxes(pts: np.ndarray, mean: np.ndarray, box: tuple[float, float] = ITER_BOX) -> np.ndarray:
    """The next landmark boxes from landmarks: where the HOG detector would have put its box.

    Vectorised :func:`box_from_landmarks` (the square box in which ``mean`` best fits the points,
    least squares), then scaled by ``box[0]`` about its centre and moved down by ``box[1]`` of its
    side (:data:`ITER_BOX`: the detector's box is a little smaller and lower). Pure numpy, so a
    batched (e.g. torch) landmark pass can use it between its predictor runs.

    Parameters
    ----------
    pts : (..., K, 2) landmarks in pixels.
    mean : (K, 2) the predictor's mean shape in [0, 1] box coordinates.
    box : (side ratio, downward shift in units of the side).

    Returns
    -------
    (..., 4) float64 (left, top, right, bottom) in pixels.
    """
    pts = np.asarray(pts, np.float64)
    mean = np.asarray(mean, np.float64)
    mc = mean - mean.mean(0)
    pm = pts.mean(-2)  # (..., 2)
    side = ((pts - pm[..., None, :]) * mc).sum((-2, -1)) / max(float((mc * mc).sum()), 1e-12)
    centre = pm - side[..., None] * mean.mean(0) + side[..., None] / 2  # the mean-shape box's centre
    new = side * box[0]
    cx, cy = centre[..., 0], centre[..., 1] + box[1] * side
    return np.stack([cx - new / 2, cy - new / 2, cx + new / 2, cy + new / 2], axis=-1)


def refit_box(pts: np.ndarray, mean: np.ndarray, box: tuple[float, float] = ITER_BOX) -> tuple[float, float, float, float]:
    """:func:`refit_boxes` for one (K, 2) set of landmarks → (left, top, right, bottom) floats."""
    return tuple(float(v) for v in refit_boxes(pts, mean, box))  # type: ignore[return-value]


def start_boxes(hw: np.ndarray, margin: float, shift: float) -> np.ndarray:
    """(..., 4) start boxes of crops of sizes ``hw`` (..., 2) = (height, width).

    The ``margin`` box (:meth:`Aligner.margin_rect`: the crop shrunk by ``1 + 2 margin`` about its
    centre) moved down by ``shift`` of its width.
    """
    hw = np.asarray(hw, np.float64)
    h, w = hw[..., 0], hw[..., 1]
    fw, fh = w / (1 + 2 * margin), h / (1 + 2 * margin)
    cx, cy = (w - 1) / 2, (h - 1) / 2 + shift * (fw - 1)
    return np.stack([cx - (fw - 1) / 2, cy - (fh - 1) / 2, cx + (fw - 1) / 2, cy + (fh - 1) / 2], axis=-1)


def start_box(h: int, w: int, margin: float, shift: float) -> tuple[float, float, float, float]:
    """:func:`start_boxes` for one (h, w) crop → (left, top, right, bottom) floats."""
    return tuple(float(v) for v in start_boxes(np.array([h, w]), margin, shift))  # type: ignore[return-value]


def interocular(pts: np.ndarray) -> np.ndarray:
    """(...,) distance between the two eye centres of (..., 5, 2) dlib 5-point landmarks (pixels).

    dlib's 5-point order: points 0-1 are one eye's corners, 2-3 the other's, 4 the nose base.
    """
    pts = np.asarray(pts, np.float64)
    return np.linalg.norm(pts[..., 0:2, :].mean(-2) - pts[..., 2:4, :].mean(-2), axis=-1)


def landmarks_agree(a: np.ndarray, b: np.ndarray, tol: float = AGREE_TOL) -> np.ndarray:
    """(...,) bool: two (..., 5, 2) landmark sets differ by at most ``tol`` inter-ocular distances.

    The measure is the largest coordinate difference over the 5 points, relative to the
    inter-ocular distance of ``a`` (at least 1 px, so a collapsed shape never agrees by accident
    of a zero scale).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b).max(axis=(-2, -1))
    return diff <= tol * np.maximum(interocular(a), 1.0)


def agree_landmarks(
    predict: Callable[[np.ndarray], np.ndarray],
    hw: np.ndarray,
    mean: np.ndarray,
    starts: tuple[tuple[float, float, int], ...] | None = None,
    tol: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The detector-free half of ``"agree"`` for a batch of crops, with any landmark predictor.

    Parameters
    ----------
    predict : callable
        ``predict(boxes)`` with ``boxes`` (N, 4) float (left, top, right, bottom) pixels, one per
        crop of the batch in order, returns (N, 5, 2) landmarks in pixels. dlib's predictor takes
        integer rectangles: round the boxes to the nearest integer to reproduce it (the CPU path
        uses ``int(round(v))``).
    hw : (N, 2) crop sizes (height, width) in pixels, after :func:`normalise_size`.
    mean : (5, 2) the predictor's mean shape (:func:`mean_shape`).
    starts, tol : default :data:`AGREE_STARTS`, :data:`AGREE_TOL`.

    Returns
    -------
    pts : (N, 5, 2) float64, the first start's landmarks.
    agree : (N,) bool; where False the crop goes to the HOG path (:meth:`Aligner.hog_rect` and one
        predictor run from its box; no plausible detection: keep ``pts``).
    """
    starts = AGREE_STARTS if starts is None else starts
    tol = AGREE_TOL if tol is None else tol
    hw = np.asarray(hw, np.float64).reshape(-1, 2)
    found = []
    for margin, shift, refits in starts:
        pts = np.asarray(predict(start_boxes(hw, margin, shift)), np.float64)
        for _ in range(refits):
            pts = np.asarray(predict(refit_boxes(pts, mean)), np.float64)
        found.append(pts)
    ok = np.ones(len(hw), bool)
    for other in found[1:]:
        ok &= landmarks_agree(found[0], other, tol)
    return found[0], ok


def _detector() -> "dlib.fhog_object_detector":
    det = getattr(_local, "detector", None)
    if det is None:
        det = _local.detector = dlib.get_frontal_face_detector()
    return det


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array → contiguous (H, W, 3) uint8 RGB."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        if a.dtype == np.uint16:
            a = (a >> 8).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.floating):
            # floats: [0, 1] images are scaled, anything else is taken as 0..255
            scale = 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0
            a = np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) image, got shape {np.asarray(img).shape}")
    return np.ascontiguousarray(a)


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # bicubic when enlarging, area-like (reducing_gap) when shrinking
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC, reducing_gap=3.0 if scale < 1 else None))


def normalise_size(img: np.ndarray) -> np.ndarray:
    """Resize so that the longer side is within [MIN_SIDE, MAX_SIDE] (tiny and huge crops)."""
    side = max(img.shape[:2])
    if side < MIN_SIDE:
        return _resize(img, MIN_SIDE / side)
    if side > MAX_SIDE:
        return _resize(img, MAX_SIDE / side)
    return img


def parse_margin(margin: str | float) -> tuple[str, float]:
    """Strategy spec → (kind, fallback margin); kind in margin / hog / auto / iter / agree.

    ``"agree"`` has no fallback margin of its own (its starts are :data:`AGREE_STARTS`); 0 is returned.
    """
    if isinstance(margin, (int, float)) and not isinstance(margin, bool):
        m = float(margin)
        if not -0.45 < m < 2.0:
            raise ValueError(f"margin {m} out of range (-0.45, 2)")
        return "margin", m
    s = str(margin).strip().lower()
    if s == "whole":
        return "margin", 0.0
    if s == "hog":
        return "hog", 0.0
    if s == "auto":
        return "auto", AUTO_FALLBACK_MARGIN
    if s.startswith("auto:"):
        return "auto", parse_margin(float(s[5:]))[1]
    if s == "iter":
        return "iter", AUTO_FALLBACK_MARGIN
    if s.startswith("iter:"):
        return "iter", parse_margin(float(s[5:]))[1]
    if s == "agree":
        return "agree", 0.0
    try:
        return parse_margin(float(s))
    except ValueError:
        raise ValueError(
            f"unknown margin strategy {margin!r}: whole | hog | auto | auto:<m> | iter | iter:<m> | agree | <m>"
        ) from None


class Aligner:
    """Crop → 5 dlib landmarks → 150x150 chip, with a crop-margin strategy.

    Parameters
    ----------
    margin : str or float
        ``"auto"`` (default), ``"auto:<m>"``, ``"hog"``, ``"whole"`` or a float margin (see module docstring).
    border : str
        ``"black"`` (dlib's default) or ``"replicate"``: what the chip shows outside the crop.
    landmarks_path : path, optional
        ``shape_predictor_5_face_landmarks.dat``; default: the packaged one.
    orient : bool
        Turned faces (module docstring): where the upright crop has no plausible HOG detection
        (or a weak one), try it turned by :data:`ORIENT_TURNS` (``"auto"`` and ``"hog"`` only; the
        detector-free strategies never look). Default True.
    """

    def __init__(
        self,
        margin: str | float = DEFAULT_MARGIN,
        border: str = "black",
        landmarks_path: str | Path | None = None,
        orient: bool = True,
    ):
        from .dlib_resnet import default_landmarks_path

        self.kind, self.fallback = parse_margin(margin)
        # canonical spelling: "0.2", 0.2 and "auto:0.15" == "auto" give the same fingerprint
        self.margin = f"{self.fallback:g}" if self.kind == "margin" else (
            self.kind if self.kind in ("hog", "agree") else f"{self.kind}:{self.fallback:g}")
        if border not in ("black", "replicate"):
            raise ValueError("border must be 'black' or 'replicate'")
        self.border = border
        self.orient = bool(orient)
        self.landmarks_path = Path(landmarks_path) if landmarks_path else default_landmarks_path()
        if not self.landmarks_path.is_file():
            from .base import EmbedderError

            raise EmbedderError(f"landmark model not found: {self.landmarks_path}")
        # read here, so that a pickled copy in a worker process needs no file parsing (nor torch)
        self._mean = mean_shape(self.landmarks_path) if self.kind in ("iter", "agree") else None

    def settings(self) -> dict:
        return {
            "margin": self.margin,
            "kind": self.kind,
            "fallback_margin": self.fallback,
            "border": self.border,
            "chip": [CHIP_SIZE, CHIP_PADDING],
            "size_range": [MIN_SIDE, MAX_SIDE],
            "hog": [HOG_SIDE, HOG_THRESHOLD] if self.kind in ("hog", "auto", "agree") else None,
            **({"iter": [ITER_ROUNDS, *ITER_BOX]} if self.kind == "iter" else {}),
            **({"agree": [[list(st) for st in AGREE_STARTS], AGREE_TOL, *ITER_BOX]}
               if self.kind == "agree" else {}),
            "landmarks": self.landmarks_path.name,
            # turned faces: on by default and not in the settings then, so that work dirs embedded
            # before it existed keep their fingerprint (their features are the same on every face
            # found upright; only faces the detector missed, or found weakly, upright can differ)
            **({} if self.orient or self.kind not in ("hog", "auto") else {"orient": False}),
        }

    def fingerprint(self) -> str:
        return repr(sorted(self.settings().items()))

    # -- rectangles ----------------------------------------------------------------------------
    @staticmethod
    def margin_rect(h: int, w: int, m: float) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the face box in an (h, w) crop with margin ``m``."""
        fw, fh = w / (1 + 2 * m), h / (1 + 2 * m)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        return cx - (fw - 1) / 2, cy - (fh - 1) / 2, cx + (fw - 1) / 2, cy + (fh - 1) / 2

    @staticmethod
    def hog_rect(img: np.ndarray) -> tuple[float, float, float, float] | None:
        """Best plausible HOG detection in the crop (crop coordinates), or None (:meth:`hog_best`)."""
        r = Aligner.hog_best(img)
        return None if r is None else r[0]

    @staticmethod
    def hog_best(
        img: np.ndarray, threshold: float = HOG_THRESHOLD, upsample: bool = True
    ) -> tuple[tuple[float, float, float, float], float] | None:
        """Best plausible HOG detection in the crop (crop coordinates) and its score, or None.

        The detector runs on a copy whose longer side is :data:`HOG_SIDE` px (its window is 80x80:
        a face filling 40-100 % of the crop is found at that size, in ~5-10 ms); if that finds
        nothing plausible it retries once upsampled x2 (small faces in loose crops).
        Plausible: centre in the middle half of the crop and side between 25 % and 110 % of the
        crop's shorter side (a second, smaller face in the background is not the crop's face).
        """
        _require_dlib()
        h, w = img.shape[:2]
        scale = HOG_SIDE / max(h, w)
        small = _resize(img, scale) if abs(scale - 1) > 1e-3 else img
        short = min(h, w)
        for ups in (0, 1) if upsample else (0,):
            rects, scores, _ = _detector().run(small, ups, threshold)
            best, best_score = None, -np.inf
            for r, s in zip(rects, scores):
                l, t, rr, b = r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale
                cx, cy, side = (l + rr) / 2, (t + b) / 2, (rr - l + b - t) / 2
                if abs(cx - (w - 1) / 2) > 0.25 * w or abs(cy - (h - 1) / 2) > 0.25 * h:
                    continue
                if not 0.25 * short <= side <= 1.1 * short:
                    continue
                if s > best_score:
                    best, best_score = (l, t, rr, b), s
            if best is not None:
                return best, float(best_score)
        return None

    def rect(self, img: np.ndarray) -> tuple[tuple[float, float, float, float], str]:
        """The landmark rectangle for this crop and which rule produced it ("hog" / "margin").

        For ``"iter"`` and ``"agree"`` this is only the first box (they refit it from landmarks):
        use :meth:`landmarks_rule` for the rule that decided.
        """
        box, rule, _ = self.place(img, orient=False)
        return box, rule

    def place(self, img: np.ndarray, orient: bool | None = None) -> tuple[tuple[float, float, float, float], str, int]:
        """:meth:`rect` with turned faces: (box, rule, k), the box in ``turn(img, k)``'s coordinates.

        k is 0 unless ``orient`` (default: the aligner's) is on, the strategy runs the detector and
        a turned copy has a better detection than the upright crop (rule ``"hog-turned"``). With no
        plausible upright detection: the best score over the quarter turns of :data:`ORIENT_TURNS`
        at or above :data:`ORIENT_THRESHOLD`, else the half turn's at or above
        :data:`ORIENT_HALF_THRESHOLD`; with a weak one (score under :data:`ORIENT_WEAK`): the half
        turn's, if it scores higher. One detector pass each, not upsampled.
        """
        h, w = img.shape[:2]
        if self.kind in ("hog", "auto"):
            r = self.hog_best(img)
            look = self.orient if orient is None else orient
            if r is not None and (not look or r[1] >= ORIENT_WEAK):
                return r[0], "hog", 0
            if look:
                # one detector pass per turn (no upsampled retry), the half turn only when neither
                # quarter turn finds a face. A weak upright detection is checked against the half
                # turn only: the detector fires weakly on a quarter of upside-down faces but on few
                # sideways ones, and weak detections are common on low-resolution video (15 % of
                # 48-px crops; all three turns for them cost +26 % of the whole command there, the
                # half turn alone +10 %; docs/benchmarks/embedding.md §9)
                best = None
                for k in ORIENT_TURNS if r is None else (2,):
                    if k == 2 and best is not None:
                        break
                    d = self.hog_best(turn(img, k), ORIENT_HALF_THRESHOLD if k == 2 else ORIENT_THRESHOLD, upsample=False)
                    if d is not None and (best is None or d[1] > best[1]):
                        best = (d[0], d[1], k)
                if best is not None and (r is None or best[1] > r[1]):
                    return best[0], "hog-turned", best[2]
            if r is not None:
                return r[0], "hog", 0
        return self.margin_rect(h, w, self.fallback), "margin", 0

    # -- main entry ----------------------------------------------------------------------------
    def landmarks(self, img: np.ndarray) -> "dlib.full_object_detection":
        """5-point landmarks of an (H, W, 3) uint8 RGB image already size-normalised."""
        return self.landmarks_rule(img)[0]

    def landmarks_rule(self, img: np.ndarray) -> tuple["dlib.full_object_detection", str]:
        """5-point landmarks and the rule that placed them: "hog", "hog-turned", "margin", "iter" or
        "agree". Always in ``img``'s own coordinates (for a turned face, mapped back: the chip
        rotates by them)."""
        if self.kind == "agree":
            return self._agree(img)
        box, rule, k = self.place(img)
        if k:
            h, w = img.shape[:2]
            return unturn_shape(self.landmarks_in(turn(img, k), box), k, h, w), rule
        return self.landmarks_in(img, box), ("iter" if self.kind == "iter" else rule)

    def _agree(self, img: np.ndarray) -> tuple["dlib.full_object_detection", str]:
        """``"agree"``: two refitted starts; HOG (as in ``"auto"``) only when they disagree."""
        _require_dlib()
        pred = _predictor(self.landmarks_path)
        h, w = img.shape[:2]

        def predict(boxes: np.ndarray) -> np.ndarray:
            return np.stack([_points(pred(img, _dlib_rect(b))) for b in boxes])

        pts, ok = agree_landmarks(predict, np.array([[h, w]]), self._mean, AGREE_STARTS, AGREE_TOL)
        first = dlib.full_object_detection(
            _dlib_rect(start_boxes(np.array([h, w]), *AGREE_STARTS[0][:2])),
            [dlib.point(int(x), int(y)) for x, y in pts[0]],
        )
        if ok[0]:
            return first, "agree"
        r = self.hog_rect(img)
        if r is None:  # no plausible detection either: the first start is the better guess than a fixed box
            return first, "agree"
        return pred(img, _dlib_rect(r)), "hog"

    def landmarks_in(self, img: np.ndarray, box: tuple[float, float, float, float]) -> "dlib.full_object_detection":
        """5-point landmarks from the (left, top, right, bottom) ``box`` (refitted for ``"iter"``).

        Not for ``"agree"``, which places its own boxes (use :meth:`landmarks`).
        """
        if self.kind == "agree":
            raise ValueError("the 'agree' strategy places its own boxes: use Aligner.landmarks(img)")
        _require_dlib()
        l, t, r, b = box
        pred = _predictor(self.landmarks_path)
        shape = pred(img, dlib.rectangle(int(round(l)), int(round(t)), int(round(r)), int(round(b))))
        if self.kind == "iter":
            for _ in range(ITER_ROUNDS):
                shape = pred(img, _dlib_rect(refit_box(_points(shape), self._mean)))
        return shape

    def chip_from(self, img: np.ndarray, shape: "dlib.full_object_detection") -> np.ndarray:
        """dlib's aligned (150, 150, 3) uint8 chip of a size-normalised image from its landmarks."""
        if self.border == "replicate":
            # pad so that the chip (which reaches beyond tight crops) sees edge pixels, not black
            p = max(img.shape[:2]) // 2
            padded = np.ascontiguousarray(np.pad(img, ((p, p), (p, p), (0, 0)), mode="edge"))
            pts = [dlib.point(q.x + p, q.y + p) for q in shape.parts()]
            r = shape.rect
            shape = dlib.full_object_detection(dlib.rectangle(r.left() + p, r.top() + p, r.right() + p, r.bottom() + p), pts)
            img = padded
        return np.asarray(dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING), dtype=np.uint8)

    def chip(self, img: np.ndarray) -> np.ndarray:
        """Decoded face crop (any size, grey / RGB / RGBA) → (150, 150, 3) uint8 RGB chip."""
        return self.chip_and_size(img)[0]

    def chip_and_size(self, img: np.ndarray) -> tuple[np.ndarray, float]:
        """:meth:`chip` and the face's inter-ocular distance in ``img``'s pixels (from the same
        landmarks, scaled back from the size-normalised image): the face's resolution, whatever
        margin the detector left around it."""
        rgb = to_rgb_uint8(img)
        norm = normalise_size(rgb)
        shape = self.landmarks(norm)
        iod = float(interocular(_points(shape)[None])[0]) * rgb.shape[0] / norm.shape[0]
        return self.chip_from(norm, shape), iod

class ChipPreparer:
    """The picklable "prepare" half of the dlib embedder for worker processes.

    Holds only an :class:`Aligner`, so that a worker process imports dlib, PIL and numpy but not
    torch or the network. Same interface as the embedder's ``prepare`` for the runner.
    """

    needs_keypoints = False
    input_size = (CHIP_SIZE, CHIP_SIZE)

    def __init__(self, aligner: Aligner):
        self.aligner = aligner

    def prepare(self, img: np.ndarray, record: dict | None = None) -> np.ndarray:
        """Decoded face crop → (150, 150, 3) uint8 chip (:meth:`Aligner.chip`)."""
        return self.aligner.chip(img)

    def prepare_sized(self, img: np.ndarray, record: dict | None = None) -> tuple[np.ndarray, float]:
        """:meth:`prepare` and the face's inter-ocular distance in the crop's pixels."""
        return self.aligner.chip_and_size(img)
