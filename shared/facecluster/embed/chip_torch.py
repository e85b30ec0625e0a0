"""dlib's ``get_face_chip`` for a batch of faces in PyTorch (CPU or CUDA).

Reproduces ``dlib.get_face_chip(img, shape, size, padding)`` for 5-point shapes, step by step as
dlib does it (``dlib/image_transforms/interpolation.h``, read for the facts):

1. **chip details** (``get_face_chip_details``): the least-squares similarity transform from five
   fixed chip positions (dlib's mean 5-point face, padded by ``padding`` and scaled to ``size``)
   to the landmarks (integer points); its rotation is the chip's angle, its scale times ``size``
   the side of the extraction rectangle, centred on the image of the chip centre. dlib's
   ``drectangle`` has ``width = right - left + 1``, so the rectangle is centre ± (side − 1) / 2.
2. **pyramid** (``extract_image_chips``): when a ``pyramid_down<2>`` step of the rectangle still
   has more pixels than the chip (source side above about twice the chip's), bilinear sampling
   alone would alias; dlib then cuts the rotated rectangle (grown by 2, 6, 14 ... px, clipped to
   the image, rounded) out of the image, builds 5x5-Gaussian half-size levels of that sub-image
   (integer arithmetic: row filter [1 4 6 4 1] on every second column, column filter on every
   second row, / 256 rounded down) and samples the deepest level whose next step would be smaller
   than the chip, with the rectangle mapped by dlib's ``point_down`` (p / 2 − (1.25, 0.75)).
3. **bilinear sampling** (``transform_image``): the affine map sends chip pixel corners (0, 0),
   (size − 1, 0) and (0, size − 1) to the rotated rectangle's corners; each output pixel
   interpolates its 4 neighbours in double precision and is truncated to uint8 (dlib's
   ``assign_pixel``); a pixel whose 2x2 neighbourhood is not entirely inside the image is black.

Everything is batched: no Python loop over faces (one loop over the few distinct pyramid depths
of a batch). Coordinates and interpolation run in float64 so that the truncation to uint8 agrees
with dlib's doubles; the pyramid runs in float32 on integers (exact: at most 255 · 256).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: dlib's mean positions of the 5 landmarks (``get_face_chip_details``, 5-point branch) in a unit
#: chip without padding, in the shape predictor's landmark order
MEAN_FACE_5 = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)
_PYR_KERNEL = (1.0, 4.0, 6.0, 4.0, 1.0)
#: dlib's ``pyramid_down<2>::point_down`` offset (x, y)
_PYR_SHIFT = (1.25, 0.75)


def round_points(pts: torch.Tensor) -> torch.Tensor:
    """Landmarks as dlib's integer ``point`` (round half up: ``floor(x + 0.5)``), same dtype."""
    return torch.floor(pts + 0.5)


def chip_details(landmarks: torch.Tensor, size: int, padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dlib ``get_face_chip_details`` for a batch of 5-point shapes.

    Parameters
    ----------
    landmarks : (B, 5, 2) landmarks (x, y) in pixels, already integer (:func:`round_points`).
    size : chip side in pixels.
    padding : dlib's padding (0.25 for the face-recognition network).

    Returns
    -------
    rect : (B, 4) float64 (left, top, right, bottom) of the extraction rectangle, pixels.
    angle : (B,) float64 rotation in radians.
    """
    to = landmarks.to(torch.float64)
    base = torch.tensor(MEAN_FACE_5, dtype=torch.float64, device=to.device)
    frm = (padding + base) / (2 * padding + 1) * size  # (5, 2) chip pixels
    fm, tm = frm.mean(0), to.mean(1)  # (2,), (B, 2)
    fc, tc = frm - fm, to - tm[:, None]
    den = (fc * fc).sum()
    # least-squares similarity [[a, -b], [b, a]] (dlib: Umeyama; the same when no reflection)
    a = (fc[None, :, 0] * tc[..., 0] + fc[None, :, 1] * tc[..., 1]).sum(1) / den
    b = (fc[None, :, 0] * tc[..., 1] - fc[None, :, 1] * tc[..., 0]).sum(1) / den
    half = size / 2.0
    cx = a * (half - fm[0]) - b * (half - fm[1]) + tm[:, 0]
    cy = b * (half - fm[0]) + a * (half - fm[1]) + tm[:, 1]
    side = size * torch.sqrt(a * a + b * b)
    r = (side - 1) / 2  # centered_drect: width - 1 between the corners
    rect = torch.stack([cx - r, cy - r, cx + r, cy + r], 1)
    return rect, torch.atan2(b, a)


def _rect_area(rect: torch.Tensor) -> torch.Tensor:
    """Area of dlib ``drectangle`` s (width = right - left + 1)."""
    return (rect[:, 2] - rect[:, 0] + 1) * (rect[:, 3] - rect[:, 1] + 1)


def _rect_down(rect: torch.Tensor) -> torch.Tensor:
    sx, sy = _PYR_SHIFT
    return rect / 2 - rect.new_tensor([sx, sy, sx, sy])


def _rotated_corners(rect: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, 2): the rectangle's tl, tr and bl corners rotated by ``angle`` about its centre."""
    c = torch.stack([(rect[:, 0] + rect[:, 2]) / 2, (rect[:, 1] + rect[:, 3]) / 2], 1)[:, None]
    corners = torch.stack([rect[:, [0, 1]], rect[:, [2, 1]], rect[:, [0, 3]]], 1) - c
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    return torch.stack([cos * corners[..., 0] - sin * corners[..., 1], sin * corners[..., 0] + cos * corners[..., 1]], -1) + c


def pyramid_levels(rect: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) int64 pyramid level dlib samples the chip from (-1: the image itself)."""
    level = torch.full(rect.shape[:1], -1, dtype=torch.int64, device=rect.device)
    r = rect.clone()
    while True:
        r = _rect_down(r)
        more = _rect_area(r) > size * size
        if not bool(more.any()):
            return level
        level = level + more.long()


def _bilinear(img: torch.Tensor, hw: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """dlib ``transform_image`` with ``interpolate_bilinear`` and a black background.

    img : (B, H, W, 3) uint8 image batch (top-left aligned, any padding beyond ``hw``);
    hw : (B, 2) int64 real (h, w) of each image; corners : (B, 3, 2) float64 image points of chip
    pixels (0, 0), (size-1, 0), (0, size-1). Returns (B, size, size, 3) uint8.
    """
    B, H, W, _ = img.shape
    dev = img.device
    t = torch.arange(size, dtype=torch.float64, device=dev) / (size - 1)
    ex = (corners[:, 1] - corners[:, 0])[:, None, None, :]  # (B, 1, 1, 2) per chip column
    ey = (corners[:, 2] - corners[:, 0])[:, None, None, :]  # per chip row
    p = corners[:, 0][:, None, None, :] + t[None, None, :, None] * ex + t[None, :, None, None] * ey  # (B, r, c, 2)
    x, y = p[..., 0].reshape(B, -1), p[..., 1].reshape(B, -1)
    left, top = torch.floor(x), torch.floor(y)
    fx, fy = (x - left)[:, None], (y - top)[:, None]  # (B, 1, N)
    left, top = left.long(), top.long()
    h, w = hw[:, 0:1], hw[:, 1:2]
    inside = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    base = top.clamp(0, H - 2) * W + left.clamp(0, W - 2)  # (B, N) index of the top-left tap
    # one gather of the 4 taps on RGB packed into int32 (a third of the gathers of a per-channel one)
    i32 = img.to(torch.int32)
    packed = (i32[..., 0] | (i32[..., 1] << 8) | (i32[..., 2] << 16)).reshape(B, H * W)
    taps = packed.gather(1, torch.cat([base, base + 1, base + W, base + W + 1], 1))  # (B, 4N)
    shifts = torch.tensor([0, 8, 16], device=dev, dtype=torch.int32)[None, :, None]
    ch = ((taps[:, None, :] >> shifts) & 255).to(torch.float64).reshape(B, 3, 4, -1)  # (B, 3, 4, N)
    tl, tr, bl, br = ch.unbind(2)
    gx, gy = 1 - fx, 1 - fy
    # dlib's expression and order of operations, in double: the truncation below then agrees
    v = gy * (gx * tl + fx * tr) + fy * (gx * bl + fx * br)  # (B, 3, N)
    # assign_pixel(uint8, double): clamp, then truncate toward zero; outside: black
    v = torch.where(inside[:, None], v.clamp(0, 255), torch.zeros((), dtype=v.dtype, device=dev))
    return v.to(torch.uint8).permute(0, 2, 1).reshape(B, size, size, 3)


def _pyr_down(x: torch.Tensor, hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One dlib ``pyramid_down<2>`` step of an RGB batch.

    x : (B, 3, H, W) float32 integer-valued; hw : (B, 2) real sizes. Each image's output pixels
    only read its own valid pixels (top-left aligned), so the batch's padding does not leak in.
    """
    k = x.new_tensor(_PYR_KERNEL)
    kr = k.view(1, 1, 1, 5).expand(3, 1, 1, 5)
    kc = k.view(1, 1, 5, 1).expand(3, 1, 5, 1)
    x = F.conv2d(x, kr, stride=(1, 2), groups=3)  # row filter on every second column
    x = F.conv2d(x, kc, stride=(2, 1), groups=3)  # column filter on every second row
    return torch.floor(x / 256), torch.div(hw - 3, 2, rounding_mode="floor").clamp(min=0)


def extract_chips(
    images: torch.Tensor, sizes: torch.Tensor, landmarks: torch.Tensor, size: int = 150, padding: float = 0.25
) -> torch.Tensor:
    """``dlib.get_face_chip`` for a batch.

    Parameters
    ----------
    images : (B, H, W, 3) uint8 RGB, each image top-left aligned in a zero-padded batch.
    sizes : (B, 2) int64 (h, w) of each image.
    landmarks : (B, 5, 2) dlib 5-point landmarks (x, y) in pixels (rounded like dlib's points here).
    size, padding : chip side (px) and dlib's padding.

    Returns
    -------
    (B, size, size, 3) uint8 chips on ``images.device``.
    """
    dev = images.device
    B = images.shape[0]
    out = torch.zeros((B, size, size, 3), dtype=torch.uint8, device=dev)
    if B == 0:
        return out
    sizes = sizes.to(dev)
    rect, angle = chip_details(round_points(landmarks.to(dev, torch.float64)), size, padding)
    level = pyramid_levels(rect, size)
    for lv in sorted(set(level.tolist())):
        sel = (level == lv).nonzero().flatten()
        r, a = rect[sel], angle[sel]
        if lv < 0:
            out[sel] = _bilinear(images[sel], sizes[sel], _rotated_corners(r, a), size)
            continue
        out[sel] = _chips_from_pyramid(images[sel], sizes[sel], r, a, lv, size)
    return out


def _chips_from_pyramid(
    images: torch.Tensor, sizes: torch.Tensor, rect: torch.Tensor, angle: torch.Tensor, level: int, size: int
) -> torch.Tensor:
    """Chips sampled from pyramid level ``level`` of dlib's sub-image around each rectangle."""
    dev = images.device
    G, H, W, _ = images.shape
    # the rotated rectangle's bounding box, grown by the pyramid's border, clipped, rounded
    grow = 2.0
    for _ in range(level + 1):
        grow = grow * 2 + 2
    c = _rotated_corners(rect, angle)
    c4 = torch.cat([c, (c[:, 1] + c[:, 2] - c[:, 0])[:, None]], 1)  # + the br corner
    lo = c4.min(1).values - grow
    hi = c4.max(1).values + grow
    lo = torch.maximum(lo, torch.zeros_like(lo))
    hi = torch.minimum(hi, torch.stack([sizes[:, 1], sizes[:, 0]], 1).to(hi.dtype) - 1)
    lo, hi = torch.floor(lo + 0.5).long(), torch.floor(hi + 0.5).long()  # drectangle -> rectangle
    sub_hw = torch.stack([hi[:, 1] - lo[:, 1] + 1, hi[:, 0] - lo[:, 0] + 1], 1).clamp(min=0)
    Hs, Ws = int(sub_hw[:, 0].max()), int(sub_hw[:, 1].max())
    rows = (lo[:, 1:2] + torch.arange(Hs, device=dev)[None]).clamp(0, H - 1)  # (G, Hs)
    cols = (lo[:, 0:1] + torch.arange(Ws, device=dev)[None]).clamp(0, W - 1)  # (G, Ws)
    idx = rows[:, :, None] * W + cols[:, None, :]  # (G, Hs, Ws)
    flat = images.reshape(G, H * W, 3)
    sub = flat.gather(1, idx.reshape(G, -1, 1).expand(-1, -1, 3)).reshape(G, Hs, Ws, 3)
    x = sub.permute(0, 3, 1, 2).to(torch.float32)
    hw = sub_hw
    for _ in range(level + 1):
        # dlib: a level of an image with a side <= 8 px is empty (here: all outside, black)
        empty = (hw <= 8).any(1, keepdim=True)
        if x.shape[-1] < 5 or x.shape[-2] < 5:
            x, hw = x.new_zeros((G, 3, 2, 2)), torch.zeros_like(hw)
            break
        x, hw = _pyr_down(x, hw)
        hw = torch.where(empty, torch.zeros_like(hw), hw)
    # the rectangle in the level's coordinates (dlib: translated to the sub-image, then point_down)
    r = rect - torch.cat([lo, lo], 1).to(rect.dtype)
    for _ in range(level + 1):
        r = _rect_down(r)
    lvl = x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    if lvl.shape[1] < 2 or lvl.shape[2] < 2:
        return torch.zeros((G, size, size, 3), dtype=torch.uint8, device=dev)
    return _bilinear(lvl, hw, _rotated_corners(r, angle), size)


__all__ = ["MEAN_FACE_5", "chip_details", "extract_chips", "pyramid_levels", "round_points"]
