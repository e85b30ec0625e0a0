"""GPU JPEG decoding (nvJPEG through ``torchvision.io.decode_jpeg``) for plain-resize embedders.

Opt-in (``--embedder 'hfsoftmax:/path?decoder=nvjpeg'``, CUDA only, needs torchvision). Only files
that :func:`facecluster.imageio.load_image` would decode to the very same pixels go to the GPU:
JPEG, RGB or greyscale, no EXIF rotation, sides within [``MIN_SIDE``, ``MAX_SIDE``]. Everything
else (PNG, CMYK, rotated phone photos, huge or tiny images, unreadable files) takes the CPU path
and keeps its exact error messages. A JPEG the GPU decoder rejects is retried on the CPU, so a
corrupt file is reported exactly as on the CPU path.

nvJPEG's IDCT and chroma upsampling differ from libjpeg by a grey level or two, and the GPU
resize (``interpolate(bilinear, antialias=True)``) approximates PIL's; features agree with the CPU
path to cosine ≥ 0.999 (checked by ``tests/test_embed_backends.py`` on a CUDA machine).

NVIDIA DALI is not used: its wheels (hundreds of MB) cannot be brought to the project's GPU
check machine, so a DALI path could not be verified; nvJPEG through torchvision is the same
decoder library.
"""

from __future__ import annotations

import io

from PIL import Image

from .base import EmbedderError


def require_gpu_decode(device: str) -> None:
    """EmbedderError unless nvJPEG decoding can run for ``device``."""
    if not str(device).startswith("cuda"):
        raise EmbedderError("decoder=nvjpeg needs --device cuda")
    try:
        import torchvision.io  # noqa: F401
    except Exception as e:  # noqa: BLE001
        raise EmbedderError(f"decoder=nvjpeg needs torchvision with CUDA support ({type(e).__name__}: {e})") from None


def jpeg_eligible(data: bytes) -> bool:
    """True when ``load_image`` would return exactly the decoded JPEG (see module doc)."""
    from ..imageio import MAX_SIDE, MIN_SIDE

    if data[:3] != b"\xff\xd8\xff":
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: no pixel decoding
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return False
            w, h = im.size
            if max(w, h) > MAX_SIDE or min(w, h) < MIN_SIDE:
                return False
            return im.getexif().get(0x0112) in (None, 1)
    except Exception:  # noqa: BLE001 - anything odd goes the CPU way
        return False


def resize_shorter_centre_gpu(x, side: int):
    """(3, H, W) uint8 CUDA tensor → (side, side, 3) uint8: shorter side to ``side`` (bilinear,
    antialiased like PIL), centre crop; the GPU twin of ``hfsoftmax.resize_shorter_centre``."""
    import torch

    _, h, w = x.shape
    if min(h, w) != side:
        size = (int(side * h / w), side) if w <= h else (side, int(side * w / h))
        y = torch.nn.functional.interpolate(x[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        x = y[0].round_().clamp_(0, 255).to(torch.uint8)
        h, w = size
    top, left = (h - side) // 2, (w - side) // 2
    return x[:, top : top + side, left : left + side].permute(1, 2, 0)


def decode_batch(datas: list[bytes], side: int, device: str) -> list:
    """Decode JPEG bytes on the GPU → list of (side, side, 3) uint8 CUDA tensors, or None where
    the GPU decoder failed (the caller retries those on the CPU)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        imgs = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except Exception:  # noqa: BLE001 - one bad file fails the batch: isolate it
        imgs = []
        for t in tensors:
            try:
                imgs.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except Exception:  # noqa: BLE001
                imgs.append(None)
    return [None if im is None else resize_shorter_centre_gpu(im, side) for im in imgs]


__all__ = ["require_gpu_decode", "jpeg_eligible", "decode_batch", "resize_shorter_centre_gpu"]

