"""The hfsoftmax ResNet-50 (branch ``ltc``): the network that produced learn-to-cluster's features.

Users holding ``resnet50_part0_train.pth.tar`` (the checkpoint named in learn-to-cluster's
instructions) get the 256-D features the released GCN-V / GCN-E checkpoints were trained on:
``--embedder hfsoftmax:/path/resnet50_part0_train.pth.tar``.

Clean-room re-implementation from ``shared/notes/original-methods.md`` §3:

* ResNet-50, torchvision-style bottlenecks [3, 4, 6, 3] (stride on the 3x3 conv, 1x1 downsample
  conv + BN), every BatchNorm with ``eps=1e-10``;
* stem: conv 7x7/2 pad 3 (3→64), BN, ReLU, max-pool 3/2/1; for a 112x112 input the spatial sizes are
  56 → 28 → 28 → 14 → 7 → 4;
* head: ``layer1x1`` = conv 1x1 2048→256 (with bias), BN, ReLU; dropout (inactive in eval);
  flatten channel-major to 256·4·4 = 4096; ``feature`` = Linear(4096→256). The descriptor is the raw
  output of ``feature`` (not normalised).

Preprocessing, as ``extract_feat.py`` of the original: PIL bilinear resize of the shorter side to
112, RGB→BGR, ``/255``, ``(x − 0.5) / 0.3125``. The original expects already-aligned square
112x112 faces and crashes on non-square input (the flatten size changes); here a non-square crop is
additionally centre-cropped to 112x112 after the shorter-side resize (documented deviation). No
landmarks are used: the faces must already be aligned the way the training data was (MS1M,
re-aligned by the authors); other crops give valid but weaker features.

Unlike the original data loader, an unreadable image is never replaced by another image: decoding
errors are raised and the pipeline reports them per record.

Checkpoint layout: ``{"state_dict": {"module.base.<resnet key>": tensor, ...}, ...}`` (327 entries
including 54 ``num_batches_tracked``, which checkpoints from PyTorch < 0.4.1 lack; those load
too). The prefix may also be ``module.`` / ``base.`` / none; ``module.logits.*`` (the training
classifier) is ignored. Anything else missing, unexpected or of the wrong shape is an
:class:`EmbedderError` listing expected versus found. Loaded with ``torch.load(weights_only=True)``:
a checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import Embedder, EmbedderError
from ..workdir import file_sha256
from .precision import PRECISIONS, autocast_context, check_precision, configure_backends

#: BatchNorm epsilon of the original (models/resnet.py on ``ltc``)
BN_EPS = 1e-10
#: network input side
INPUT_SIDE = 112
#: (x/255 − MEAN) / STD per channel (all channels equal), on BGR input
NORM_MEAN = 0.5
NORM_STD = 0.3125
FEATURE_DIM = 256
#: key prefixes stripped from checkpoint keys, longest first (DataParallel(IdentityMapping(net)))
_PREFIXES = ("module.base.", "module.", "base.")
#: training-only keys that a released checkpoint may still carry
_IGNORED_PREFIXES = ("logits.",)


def _bn(c: int) -> nn.BatchNorm2d:
    # momentum is irrelevant in eval mode; eps is not: 1e-10 instead of torch's 1e-5
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.05)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (stride) → 1x1 (×4) residual block; key names as torchvision's."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class HfsoftmaxResNet50(nn.Module):
    """ResNet-50 face network of hfsoftmax ``ltc``: (B, 3, 112, 112) normalised BGR → (B, 256).

    ``state_dict()`` keys are exactly the original's without the ``module.base.`` prefix.
    """

    def __init__(self, feature_dim: int = FEATURE_DIM, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.layer1x1 = nn.Sequential(nn.Conv2d(2048, 256, 1, 1, 0, bias=True), _bn(256), nn.ReLU(inplace=False))
        self.drop1 = nn.Dropout(0.5)
        self.feature = nn.Linear(256 * 4 * 4, feature_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), _bn(planes * 4))
        mods = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.drop1(self.layer1x1(x))
        # channel-major flatten (x.view(B, -1) on NCHW), as the Linear was trained; reshape, not
        # view, so that channels_last activations on the GPU flatten in the same order
        return self.feature(x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------------------------
# checkpoint
# ----------------------------------------------------------------------------------------------
def _short_list(keys: list[str] | set[str], n: int = 6) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _strip(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def load_checkpoint(path: str | os.PathLike, model: HfsoftmaxResNet50 | None = None) -> HfsoftmaxResNet50:
    """Load an hfsoftmax ``ltc`` ResNet-50 checkpoint into a (new) :class:`HfsoftmaxResNet50`.

    Parameters
    ----------
    path : path to ``resnet50_part0_train.pth.tar`` (or any file in that layout).
    model : an existing module to fill (default: a new one).

    Returns
    -------
    The module in eval mode, on CPU, float32.

    Raises
    ------
    EmbedderError
        Missing file; not a PyTorch checkpoint; keys or shapes that do not match the architecture
        (the message lists the expected and found keys).
    """
    p = Path(path)
    if not p.is_file():
        raise EmbedderError(f"hfsoftmax checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors come in many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbedderError(
            f"{p}: not a loadable PyTorch checkpoint ({type(e).__name__}: {msg[:200]}); "
            "expected hfsoftmax's resnet50_part0_train.pth.tar"
        ) from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        found = _short_list([str(k) for k in obj]) if isinstance(obj, dict) else type(obj).__name__
        raise EmbedderError(
            f"{p}: not an hfsoftmax checkpoint: expected a dict with 'state_dict' of tensors "
            f"(keys 'module.base.conv1.weight', ...), found {found}"
        )
    model = model if model is not None else HfsoftmaxResNet50()
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k2 = _strip(str(k))
        if k2.startswith(_IGNORED_PREFIXES):
            continue
        state[k2] = v
    missing = set(expected) - set(state)
    # checkpoints saved before PyTorch 0.4.1 have no BN batch counters; they do not affect eval
    missing_required = {k for k in missing if not k.endswith("num_batches_tracked")}
    unexpected = set(state) - set(expected)
    bad_shape = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing_required or unexpected or bad_shape:
        parts = [f"{p}: does not match the hfsoftmax ResNet-50 (ltc) layout"]
        parts.append(f"expected {len(expected)} keys like 'module.base.conv1.weight', 'module.base.feature.weight' (256, 4096)")
        parts.append(f"found {len(sd)} keys like {_short_list([str(k) for k in list(sd)[:3]], 3)}")
        if missing_required:
            parts.append(f"missing {len(missing_required)}: {_short_list(missing_required)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_short_list(unexpected)}")
        if bad_shape:
            parts.append(f"wrong shape {len(bad_shape)}: {'; '.join(bad_shape[:4])}")
        raise EmbedderError("; ".join(parts))
    for k in missing:  # only num_batches_tracked here
        state[k] = expected[k]
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model.float().eval()


# ----------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------
def resize_shorter_centre(img: np.ndarray, side: int = INPUT_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 → (side, side, 3) uint8: shorter side to ``side`` (PIL bilinear, as
    torchvision's ``Resize(side)`` on a PIL image), then a centre crop of the longer side.

    A crop whose shorter side already equals ``side`` is not resampled (torchvision returns it
    unchanged too), so aligned 112x112 faces pass through bit-exactly.
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise EmbedderError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    if min(h, w) != side:
        # torchvision Resize(int): the shorter side becomes `side`, the longer int(side * long / short)
        if w <= h:
            size = (side, int(side * h / w))
        else:
            size = (int(side * w / h), side)
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        h, w = img.shape[:2]
    if (h, w) != (side, side):
        # deviation from the original (which crashes here): centre crop to a square
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top : top + side, left : left + side]
    return np.ascontiguousarray(img)


def normalise_chips(x: torch.Tensor) -> torch.Tensor:
    """(B, 112, 112, 3) uint8 RGB tensor (any device) → (B, 3, 112, 112) float32 normalised BGR."""
    x = x.flip(-1).permute(0, 3, 1, 2).float()  # RGB→BGR, NHWC→NCHW
    return (x / 255.0 - NORM_MEAN) / NORM_STD


# ----------------------------------------------------------------------------------------------
# embedder
# ----------------------------------------------------------------------------------------------
_CACHE: dict[tuple[str, float, int], HfsoftmaxResNet50] = {}
_LOCK = threading.Lock()


class HfsoftmaxEmbedder(Embedder):
    """hfsoftmax ResNet-50 (``ltc``), 256-D, from a user-supplied checkpoint.

    Parameters
    ----------
    path : str
        ``resnet50_part0_train.pth.tar`` (required).
    device : str
        "cpu", "cuda" or "cuda:N".
    batch_size : int
        Chips per forward pass.
    precision : str
        "fp32" (default; TF32 off on CUDA), "tf32", "bf16" or "fp16" (autocast on CUDA, see
        :mod:`facecluster.embed.precision`). Lower precisions are opt-in: their agreement with
        fp32 is measured by ``bench/embed_backends.py --device cuda``.
    threads : int or "auto"
        torch CPU threads during the forward pass; "auto" (default): all usable CPUs but one
        (:func:`facecluster.embed.runner.default_cpu_threads`, cgroup-quota aware); "torch": leave
        torch's own setting.
    decoder : str
        "pil" (default: ``facecluster.imageio.load_image`` in the runner's threads) or "nvjpeg"
        (CUDA + torchvision: plain JPEGs are decoded and resized on the GPU, everything else on the
        CPU; see :mod:`facecluster.embed.gpudecode`) or "dali" (NVIDIA DALI, CPU or CUDA, the
        ``dali`` extra: plain JPEGs are decoded and resized in a DALI pipeline, everything else by
        PIL; see :mod:`facecluster.embed.dali`).
    """

    name = "hfsoftmax"
    dim = FEATURE_DIM
    input_size = (INPUT_SIDE, INPUT_SIDE)
    needs_keypoints = False
    needs_path = True
    preprocessing = (
        "aligned crop; PIL bilinear resize of the shorter side to 112, centre crop 112x112, "
        "RGB->BGR, (x/255 - 0.5)/0.3125, NCHW"
    )
    #: learn-to-cluster's GCN checkpoints were trained on these features L2-normalised, no mean
    mean = None
    #: plain-resize preprocessing, reproducible by the DALI decoder (decoder=dali)
    dali_geometry = "shorter_centre"

    def __init__(
        self,
        path: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        precision: str = "fp32",
        threads: int | str | None = "auto",
        decoder: str = "pil",
    ):
        super().__init__(path=path, device=device, batch_size=int(batch_size))
        self.decoder = str(decoder).strip().lower()
        if self.decoder not in ("pil", "nvjpeg", "dali"):
            raise EmbedderError(f"unknown decoder {decoder!r}; choose pil, nvjpeg or dali")
        if self.decoder == "nvjpeg":
            from .gpudecode import require_gpu_decode

            require_gpu_decode(device)
        if self.decoder == "dali":
            from .dali import require_dali

            require_dali(device)
        if not path:
            raise EmbedderError("embedder 'hfsoftmax' needs a checkpoint: --embedder hfsoftmax:/path/resnet50_part0_train.pth.tar")
        self.model_path = Path(path).expanduser()
        self.precision = check_precision(precision, device)
        if threads in (None, "", "auto"):
            from .runner import default_cpu_threads

            self.threads: int | None = default_cpu_threads()
        elif str(threads).lower() in ("torch", "none"):
            self.threads = None
        else:
            self.threads = int(threads)
            if self.threads < 1:
                raise EmbedderError(f"threads must be >= 1, got {threads!r}")
        self._dev = torch.device(device)
        if self._dev.type == "cuda" and not torch.cuda.is_available():
            raise EmbedderError("device 'cuda' requested but CUDA is not available")
        # load now: a wrong file must fail before any image is decoded
        self._net = self._load()
        self._sha: str | None = None

    def _load(self) -> HfsoftmaxResNet50:
        p = self.model_path
        if not p.is_file():
            raise EmbedderError(f"hfsoftmax checkpoint not found: {p}")
        key = (str(p.resolve()), p.stat().st_mtime, p.stat().st_size)
        with _LOCK:  # one CPU copy per process and file
            if key not in _CACHE:
                _CACHE[key] = load_checkpoint(p)
            cpu_net = _CACHE[key]
        if self._dev.type == "cpu":
            return cpu_net
        configure_backends(self.precision)
        net = HfsoftmaxResNet50()
        net.load_state_dict(cpu_net.state_dict())
        # channels_last lets cuDNN pick its fastest NHWC kernels on tensor-core GPUs
        return net.eval().to(self._dev, memory_format=torch.channels_last)

    # -- interface -------------------------------------------------------------------------------
    def prepare(self, img: np.ndarray, record: dict[str, Any] | None = None) -> np.ndarray:
        """Decoded RGB uint8 (H, W, 3) crop → (112, 112, 3) uint8 RGB chip (no landmarks)."""
        return resize_shorter_centre(img, INPUT_SIDE)

    def forward_chips(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 112, 112, 3) uint8 tensor already on this embedder's device → (B, 256) float32 on it.

        Asynchronous on CUDA (no host sync), used by :func:`facecluster.embed.runner.embed_records`.
        """
        x = normalise_chips(x)
        if self._dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_context(self._dev, self.precision):
            return self._net(x).float()

    def embed_batch(self, chips: np.ndarray) -> np.ndarray:
        """(B, 112, 112, 3) uint8 RGB chips → (B, 256) float32 raw descriptors."""
        chips = np.asarray(chips)
        if chips.ndim == 3:
            chips = chips[None]
        if chips.ndim != 4 or chips.shape[1:] != (INPUT_SIDE, INPUT_SIDE, 3) or chips.dtype != np.uint8:
            raise EmbedderError(f"expected (B, 112, 112, 3) uint8 chips, got {chips.shape} {chips.dtype}")
        if chips.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        old = torch.get_num_threads()
        if self._dev.type == "cpu" and self.threads:
            torch.set_num_threads(self.threads)
        try:
            out = []
            for s in range(0, chips.shape[0], self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(chips[s : s + self.batch_size])).to(self._dev)
                out.append(self.forward_chips(x).cpu().numpy())
        finally:
            if self._dev.type == "cpu" and self.threads:
                torch.set_num_threads(old)
        return np.concatenate(out).astype(np.float32, copy=False)

    def sha256(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.model_path)
        return self._sha

    def fingerprint(self) -> str:
        # precision changes the output (slightly); device and batch size do not (up to fp noise)
        s = f"hfsoftmax-ltc-resnet50:{self.sha256()}:{self.precision}:{self.decoder}:{self.preprocessing}"
        return hashlib.sha256(s.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            path=str(self.model_path),
            sha256=self.sha256(),
            preprocessing=self.preprocessing,
            needs_keypoints=self.needs_keypoints,
            settings={"precision": self.precision, "decoder": self.decoder},
        )
        return d


__all__ = [
    "HfsoftmaxResNet50",
    "HfsoftmaxEmbedder",
    "load_checkpoint",
    "resize_shorter_centre",
    "normalise_chips",
    "PRECISIONS",
]
