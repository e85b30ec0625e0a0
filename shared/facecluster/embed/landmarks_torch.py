"""dlib's shape predictor (cascade of regression trees) batched in PyTorch, CPU or CUDA.

Reads ``shape_predictor_5_face_landmarks.dat`` with the ``.dat`` primitives of
:mod:`facecluster.embed.dlib_resnet` and evaluates the cascade for a batch of images at once:
gathers, compares and sums, no Python loop over faces or trees. This is the building block for
moving landmarks to the GPU (issue 12): ``--embedder "dlib?align=torch"``
(:mod:`facecluster.embed.torch_align`) uses it.

dlib's serialisation of ``shape_predictor`` (as read below): int version 1; the mean shape
(column matrix: ints -nr, -nc, then nr floats, x and y interleaved, unit-box coordinates); the
forests (int levels; per level int trees; per tree the splits: int count, each int idx1, int idx2,
float threshold; the leaves: int count, each a column matrix like the mean shape); the anchor
indices (int levels; per level int count, ints); the pixel deltas (int levels; per level int
count, each two floats). Prediction (dlib ``shape_predictor::operator()``), per level: the
similarity transform from the mean shape to the current shape (its 2x2 part only) maps each
feature's delta, added to its anchor landmark, into the unit box; the box is mapped to the face
rectangle, rounded to a pixel, and the pixel's intensity (mean of R, G, B, integer) read (0
outside the image); each tree walks its splits (left when ``f[idx1] - f[idx2] > threshold``) and
its leaf vector is added to the shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dlib_resnet import DatFormatError, _Reader


def _floats(r: _Reader, n: int) -> list[float]:
    return [math.ldexp(r.int(), r.int()) for _ in range(n)]


def _column(r: _Reader) -> list[float]:
    nr, nc = -r.int(), -r.int()
    if nc != 1 or nr < 0:
        raise DatFormatError(f"expected a column matrix, got {nr}x{nc}")
    return _floats(r, nr)


@dataclass
class CascadeModel:
    """The parsed predictor as arrays (L levels, T trees, S splits per tree, F features, K points)."""

    mean: np.ndarray  #: (K, 2) float32 mean shape in unit-box coordinates
    split_idx: np.ndarray  #: (L, T, S, 2) int64 feature indices
    split_thresh: np.ndarray  #: (L, T, S) float32
    leaves: np.ndarray  #: (L, T, S + 1, 2K) float32
    anchor: np.ndarray  #: (L, F) int64 landmark each feature pixel is anchored to
    deltas: np.ndarray  #: (L, F, 2) float32 offsets in unit-box coordinates


def _all_ints(buf: bytes, pos: int) -> np.ndarray:
    """Every dlib ``pack_int`` from ``pos`` to the end, as int64 (a float is two of them)."""
    vals: list[int] = []
    ap = vals.append
    frm = int.from_bytes
    n = len(buf)
    p = pos
    while p < n:
        h = buf[p]
        size = h & 0x0F
        if size > 8 or h & 0x70:
            raise DatFormatError(f"bad integer header 0x{h:02x} at byte {p}")
        v = frm(buf[p + 1 : p + 1 + size], "little")
        ap(-v if h & 0x80 else v)
        p += 1 + size
    if p != n:
        raise DatFormatError("truncated file")
    return np.asarray(vals, np.int64)


def _as_floats(mant_exp: np.ndarray) -> np.ndarray:
    """(..., 2) int64 (mantissa, exponent) pairs → float32 values (dlib's float serialisation)."""
    return np.ldexp(mant_exp[..., 0].astype(np.float64), mant_exp[..., 1]).astype(np.float32)


def read_shape_predictor(path: str | Path) -> CascadeModel:
    """Parse a dlib ``shape_predictor`` ``.dat`` file (layout checked, every byte consumed).

    The file is one stream of integers (a float is a mantissa and an exponent); it is decoded in
    one pass, then cut into the regular per-tree records with numpy (the cascade of regression
    trees has the same number of splits and leaves in every tree).
    """
    buf = Path(path).read_bytes()
    r = _Reader(buf)
    if r.int() != 1:
        raise DatFormatError(f"{path}: not a dlib shape_predictor (version != 1)")
    mean = np.asarray(_column(r), np.float32).reshape(-1, 2)
    k2 = mean.size
    v = _all_ints(buf, r.pos)
    try:
        n_levels, n_trees, n_splits = int(v[0]), int(v[1]), int(v[2])
        # one tree: n_splits, S x (idx1, idx2, m, e), n_leaves, (S+1) x (-2K, -1, 2K x (m, e))
        tree_len = 1 + 4 * n_splits + 1 + (n_splits + 1) * (2 + 2 * k2)
        level_len = 1 + n_trees * tree_len
        body = v[1 : 1 + n_levels * level_len].reshape(n_levels, level_len)
        if not (body[:, 0] == n_trees).all():
            raise DatFormatError(f"{path}: levels with different tree counts")
        trees = body[:, 1:].reshape(n_levels, n_trees, tree_len)
        if not (trees[..., 0] == n_splits).all() or not (trees[..., 1 + 4 * n_splits] == n_splits + 1).all():
            raise DatFormatError(f"{path}: trees of different sizes")
        splits = trees[..., 1 : 1 + 4 * n_splits].reshape(n_levels, n_trees, n_splits, 4)
        leaves = trees[..., 2 + 4 * n_splits :].reshape(n_levels, n_trees, n_splits + 1, 2 + 2 * k2)
        if not ((leaves[..., 0] == -k2) & (leaves[..., 1] == -1)).all():
            raise DatFormatError(f"{path}: leaf vectors of unexpected size")
        rest = v[1 + n_levels * level_len :]
        if rest[0] != n_levels:
            raise DatFormatError(f"{path}: anchor levels do not match the forests")
        n_feat = int(rest[1])
        anchor = rest[1 : 1 + n_levels * (1 + n_feat)].reshape(n_levels, 1 + n_feat)
        rest = rest[1 + n_levels * (1 + n_feat) :]
        if not (anchor[:, 0] == n_feat).all() or rest[0] != n_levels:
            raise DatFormatError(f"{path}: anchors / deltas do not match the forests")
        deltas = rest[1:].reshape(n_levels, 1 + 4 * n_feat)
        if not (deltas[:, 0] == n_feat).all():
            raise DatFormatError(f"{path}: delta counts do not match")
    except ValueError as exc:  # reshape of a stream of the wrong length
        raise DatFormatError(f"{path}: unexpected shape predictor layout ({exc})") from None
    return CascadeModel(
        mean,
        splits[..., :2].copy(),
        _as_floats(splits[..., 2:]),
        _as_floats(leaves[..., 2:].reshape(n_levels, n_trees, n_splits + 1, k2, 2)),
        anchor[:, 1:].copy(),
        _as_floats(deltas[:, 1:].reshape(n_levels, n_feat, 2, 2)),
    )


class TorchShapePredictor:
    """Batched dlib shape predictor on ``device``.

    Parameters
    ----------
    model : CascadeModel or path to the ``.dat`` file.
    device : torch device for the tensors.
    exact : bool
        True (default): the 500 leaf vectors of a level are added to the shape one tree after the
        other in float32, dlib's order, which makes the landmarks **identical** to dlib's (300 of
        300 LFW + ORL crops; with one summed add per level 94.7 %: the rounding differences move a
        feature pixel across a pixel boundary now and then, and from the fourth level on the
        cascade drifts by a few hundredths of a pixel, enough to change dlib's integer rounding).
        Costs one small add per tree (7,500 per batch), which a GPU pays in kernel launches; False:
        one summed add per level.
    """

    def __init__(self, model: CascadeModel | str | Path, device: str = "cpu", exact: bool = True):
        m = model if isinstance(model, CascadeModel) else read_shape_predictor(model)
        dev = torch.device(device)
        self.device = dev
        self.mean = torch.from_numpy(m.mean).to(dev)  # (K, 2)
        self.split_idx = torch.from_numpy(m.split_idx).to(dev)
        self.split_thresh = torch.from_numpy(m.split_thresh).to(dev)
        self.leaves = torch.from_numpy(m.leaves).to(dev)
        self.anchor = torch.from_numpy(m.anchor).to(dev)
        self.deltas = torch.from_numpy(m.deltas).to(dev)
        self.depth = int(round(math.log2(m.split_idx.shape[2] + 1)))
        self.exact = bool(exact)

    @staticmethod
    def intensity(rgb: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, H, W) float32 dlib pixel intensity: (R + G + B) // 3."""
        return (rgb.to(torch.int32).sum(-1) // 3).to(torch.float32)

    @torch.inference_mode()
    def __call__(self, gray: torch.Tensor, sizes: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
        """Landmarks of a batch.

        Parameters
        ----------
        gray : (B, H, W) float32 intensities (:meth:`intensity`), images top-left aligned in a
            zero-padded batch.
        sizes : (B, 2) int64 (h, w) of each image (pixels outside read as 0, as in dlib).
        rects : (B, 4) float (left, top, right, bottom) face rectangles (dlib's integer corners).

        Returns
        -------
        (B, K, 2) float64 landmarks (x, y) in pixels, unrounded (dlib rounds them to integers in
        double: ``floor(v + 0.5)``).
        """
        dev = self.device
        gray = gray.to(dev, torch.float32)
        sizes = sizes.to(dev)
        rects = rects.to(dev, torch.float32)
        B, H, W = gray.shape
        flat = gray.reshape(B, H * W)
        # dlib maps unit-box points to pixels in double (point_transform_affine)
        r64 = rects.to(torch.float64)
        origin = r64[:, None, :2]  # (B, 1, 2)
        scale = (r64[:, 2:] - r64[:, :2])[:, None, :]  # (B, 1, 2)
        mean = self.mean
        m64 = mean.double()
        mc = m64 - m64.mean(0)
        denom = (mc * mc).sum()
        shape = mean.expand(B, -1, -1).clone()  # (B, K, 2) unit-box coordinates
        ar = torch.arange(B, device=dev)[:, None]
        for lvl in range(self.split_idx.shape[0]):
            # similarity transform mean -> current shape (rotation + scale part)
            # similarity transform mean -> current shape in double, then float32 (dlib: Umeyama in
            # double, matrix_cast<float>); the deltas are mapped and added in float32 as in dlib
            s64 = shape.double()
            cc = s64 - s64.mean(1, keepdim=True)
            a = ((mc[None, :, 0] * cc[..., 0] + mc[None, :, 1] * cc[..., 1]).sum(1) / denom).float()
            b = ((mc[None, :, 0] * cc[..., 1] - mc[None, :, 1] * cc[..., 0]).sum(1) / denom).float()
            d = self.deltas[lvl]  # (F, 2)
            dx = a[:, None] * d[None, :, 0] - b[:, None] * d[None, :, 1]
            dy = b[:, None] * d[None, :, 0] + a[:, None] * d[None, :, 1]
            anc = shape[:, self.anchor[lvl]]  # (B, F, 2)
            px = torch.floor(origin[..., 0] + (anc[..., 0] + dx).double() * scale[..., 0] + 0.5).long()
            py = torch.floor(origin[..., 1] + (anc[..., 1] + dy).double() * scale[..., 1] + 0.5).long()
            inside = (px >= 0) & (py >= 0) & (px < sizes[:, 1:2]) & (py < sizes[:, 0:1])
            idx = (py.clamp(0, H - 1) * W + px.clamp(0, W - 1))
            feats = torch.where(inside, flat[ar, idx], torch.zeros((), device=dev))  # (B, F)
            # all trees of the level at once: walk `depth` levels of splits
            si, st = self.split_idx[lvl], self.split_thresh[lvl]  # (T, S, 2), (T, S)
            T = si.shape[0]
            node = torch.zeros((B, T), dtype=torch.long, device=dev)
            tr = torch.arange(T, device=dev)[None, :]
            for _ in range(self.depth):
                i1 = si[tr, node, 0]
                i2 = si[tr, node, 1]
                diff = feats.gather(1, i1) - feats.gather(1, i2)
                node = torch.where(diff > st[tr, node], 2 * node + 1, 2 * node + 2)
            leaf = node - si.shape[1]  # (B, T)
            leaves = self.leaves[lvl][tr, leaf].view(B, T, -1, 2)  # (B, T, K, 2)
            if self.exact:
                # dlib: current_shape += leaf, tree by tree, in float32 (see ``exact``)
                for leaf_j in leaves.unbind(1):  # views made in one call, not one per tree
                    shape.add_(leaf_j)
            else:
                shape = shape + leaves.sum(1)
        return origin + shape.double() * scale


__all__ = ["CascadeModel", "read_shape_predictor", "TorchShapePredictor"]
