"""dlib's face-recognition ResNet v1 as a torch module (built from the parsed ``.dat`` layers).

Split from :mod:`facecluster.embed.dlib_resnet` (the ``.dat`` reader and the embedder) so that
constructing the embedder does not import torch; this module is imported when the network is
first needed.

CPU forward (this AVX2 box, docs/benchmarks/embedding.md §6): every conv + affine pair and the
input normalisation are folded into the convolutions, the stem's ReLU runs after its max-pool,
ReLUs and residual sums are in place, and on CPU the weights are NHWC (channels_last).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dlib_resnet import DatFormatError, DatLayer, default_model_path, parse_dat


def _fold(con: DatLayer, aff: DatLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """conv followed by per-channel affine → one conv (exact in real arithmetic)."""
    g = aff.tensors["gamma"].astype(np.float64)
    w = con.tensors["weight"].astype(np.float64) * g[:, None, None, None]
    b = con.tensors["bias"].astype(np.float64) * g + aff.tensors["beta"]
    return torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b.astype(np.float32))


class _Conv(nn.Module):
    def __init__(self, con: DatLayer, aff: DatLayer):
        super().__init__()
        w, b = _fold(con, aff)
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = nn.Parameter(b, requires_grad=False)
        s = con.settings
        self.stride = (s["stride_y"], s["stride_x"])
        self.padding = (s["pad_y"], s["pad_x"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev``: sum of two (B,C,H,W) tensors of possibly different C, H, W.

    The output is as large as the larger input in every dimension; the smaller input is
    zero-padded at the end of the channel, height and width axes (top-left aligned).
    """
    if a.shape == b.shape:
        return a + b
    shape = (a.shape[0], max(a.shape[1], b.shape[1]), max(a.shape[2], b.shape[2]), max(a.shape[3], b.shape[3]))
    if tuple(a.shape) == shape or tuple(b.shape) == shape:
        big, small = (a, b) if tuple(a.shape) == shape else (b, a)
        out = big.clone()
    else:
        out = a.new_zeros(shape)
        big, small = a, b
        out[:, : big.shape[1], : big.shape[2], : big.shape[3]] += big
    out[:, : small.shape[1], : small.shape[2], : small.shape[3]] += small
    return out


def _add_prev_into(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """:func:`add_prev` that adds ``s`` into ``y`` in place when ``y`` is as large in every dimension.

    In the network's blocks ``y`` is a fresh conv output, so overwriting it is safe; the one
    down-block where the shortcut is spatially larger (4x4 vs 3x3) takes the general path.
    """
    if y.shape == s.shape:
        return y.add_(s)
    if all(a >= b for a, b in zip(y.shape, s.shape)):
        y[:, : s.shape[1], : s.shape[2], : s.shape[3]] += s
        return y
    return add_prev(y, s)


class _Block(nn.Module):
    """relu(add_prev(branch(x), shortcut(x))), branch = conv-affine-relu-conv-affine."""

    def __init__(self, c1: _Conv, c2: _Conv, pool: tuple[int, int] | None):
        super().__init__()
        self.conv1, self.conv2 = c1, c2
        self.pool = pool  # (window, stride) of the avg-pool shortcut in down-blocks, None: identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in-place ReLUs and sum: the element-wise passes were ~10 % of the CPU forward
        y = self.conv2(F.relu_(self.conv1(x)))
        s = F.avg_pool2d(x, self.pool[0], self.pool[1]) if self.pool else x
        return _add_prev_into(y, s).relu_()


def _build_plan(layers: list[DatLayer]) -> tuple[DatLayer, list[DatLayer], list[list[DatLayer]], DatLayer]:
    """Split the forward layer list into input, stem, residual blocks and fc; check the pattern."""
    kinds = [l.kind for l in layers]
    stem = ["input", "con", "affine", "relu", "max_pool"]
    if kinds[:5] != stem or kinds[-2:] != ["avg_pool", "fc"]:
        raise DatFormatError(f"unexpected network layout: {kinds[:5]} ... {kinds[-2:]}")
    gp = layers[-2].settings
    if (gp["nr"], gp["nc"]) != (0, 0):
        raise DatFormatError("expected a global average pool before the fc layer")
    blocks, i, body = [], 0, layers[5:-2]
    plain = ["con", "affine", "relu", "con", "affine", "add_prev", "relu"]
    down = ["con", "affine", "relu", "con", "affine", "avg_pool", "add_prev", "relu"]
    while i < len(body):
        k = [l.kind for l in body[i : i + 8]]
        if k[:7] == plain:
            blocks.append(body[i : i + 7])
            i += 7
        elif k == down:
            blocks.append(body[i : i + 8])
            i += 8
        else:
            raise DatFormatError(f"unexpected layer sequence at block {len(blocks)}: {k}")
    return layers[0], layers[1:5], blocks, layers[-1]


class DlibResNet(nn.Module):
    """dlib ``anet_type`` (face recognition ResNet v1) as a torch module.

    Input: (B, 3, 150, 150) float RGB in [0, 255]; output (B, 128) raw descriptors.
    Each conv + affine pair is folded into one conv (dlib's affine is a frozen batch norm), and
    the input normalisation into the stem conv. Forward ReLUs and residual sums are in place, so
    call it under ``torch.inference_mode()`` / ``no_grad`` (the weights need no gradient).
    """

    def __init__(self, layers: list[DatLayer]):
        super().__init__()
        inp, stem, blocks, fc = _build_plan(layers)
        self.input_size = (inp.settings["nr"], inp.settings["nc"])
        self.register_buffer("means", torch.tensor(inp.settings["means"], dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = _Conv(stem[0], stem[1])
        # dlib's input normalisation (x - mean) / 256 folded into the stem conv: exact in real
        # arithmetic because the stem has no zero padding (padded borders would be zeros in the
        # normalised image, not in the pixel image); saves two passes over the input
        self.input_folded = not any(self.stem.padding)
        if self.input_folded:
            with torch.no_grad():
                w = self.stem.weight.double()
                m = self.means.double().view(1, 3, 1, 1)
                b = self.stem.bias.double() - (w * m).sum(dim=(1, 2, 3)) / 256.0
                self.stem.weight.copy_((w / 256.0).float())
                self.stem.bias.copy_(b.float())
        mp = stem[3].settings
        if mp["pad_y"] or mp["pad_x"]:
            raise DatFormatError("padded max pool is not supported")
        self.pool = (mp["nr"], mp["stride_y"])
        mods = []
        for b in blocks:
            pool = None
            if b[5].kind == "avg_pool":
                s = b[5].settings
                if s["pad_y"] or s["pad_x"] or s["nr"] != s["nc"]:
                    raise DatFormatError("unexpected avg-pool shortcut settings")
                pool = (s["nr"], s["stride_y"])
            mods.append(_Block(_Conv(b[0], b[1]), _Conv(b[3], b[4]), pool))
        self.blocks = nn.Sequential(*mods)
        self.fc = nn.Parameter(torch.from_numpy(fc.tensors["weight"].copy()), requires_grad=False)  # (256, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_folded:  # dlib input_rgb_image: (pixel - mean) / 256 per channel
            x = (x - self.means) * (1.0 / 256.0)
        # max-pool before the ReLU (they commute: ReLU is monotone): a quarter of the elements
        x = F.max_pool2d(self.stem(x), self.pool[0], self.pool[1]).relu_()
        x = self.blocks(x)
        x = x.mean(dim=(2, 3))
        return x @ self.fc


_NET_CACHE: dict[tuple[str, float], tuple[list[DatLayer], dict[str, Any]]] = {}
_NET_LOCK = threading.Lock()


def load_dlib_resnet(path: str | os.PathLike | None = None) -> DlibResNet:
    """Parse the ``.dat`` (default: the packaged one) and build the CPU float32 module (eval mode)."""
    p = Path(path) if path else default_model_path()
    key = (str(p.resolve()), p.stat().st_mtime)
    with _NET_LOCK:  # parsed layers are kept in memory per process (never on disk)
        if key not in _NET_CACHE:
            _NET_CACHE[key] = parse_dat(p)
        layers, _ = _NET_CACHE[key]
    return DlibResNet(layers).eval()


__all__ = ["DlibResNet", "add_prev", "load_dlib_resnet"]
