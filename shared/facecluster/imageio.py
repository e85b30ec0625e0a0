"""Image decoding with every oddity a face detector's output can have.

``load_image`` returns an RGB uint8 (H, W, 3) array or raises :class:`ImageError` with a
one-line reason (the pipeline turns it into the record's ``error``; the batch goes on).

Handled: EXIF orientation (phone JPEGs), greyscale (L, LA, 1), palette, RGBA (alpha
composited on black: face crops with transparent borders stay face crops), CMYK, 16-bit PNG
(I;16 and I modes, scaled to 8 bit), huge images (decoded at reduced size with
``Image.draft`` for JPEG, then downscaled so the long side is at most ``max_side``), tiny
images (upscaled so the short side is at least ``min_side``), zero-size and truncated
files, non-image files, decompression bombs.
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: images larger than this (pixels) are refused as decompression bombs: Pillow's own hard limit
#: (2 x ``Image.MAX_IMAGE_PIXELS``, which Pillow enforces in ``Image.open`` anyway). Pillow's warning
#: at half of it is not an error here: a 108-MP phone photo is a real input of ``facecluster
#: detect``, and a JPEG decodes at a reduced scale (``Image.draft``).
MAX_PIXELS = 178_956_970
#: long side after decoding; face crops larger than this carry no extra identity information
MAX_SIDE = 1024
#: short side below which crops are upscaled (landmark models need a few pixels per feature)
MIN_SIDE = 32


class ImageError(ValueError):
    """An image that cannot be used (the message is the per-record error)."""


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.nan_to_num(a).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode != "RGB":
        return im.convert("RGB")
    return im


def check_file(path: str | os.PathLike) -> None:
    """ImageError unless ``path`` is a non-empty regular file; nothing is read.

    Every reader of an input image calls this first (:func:`load_image`, the GPU decoders' byte
    reader in ``embed/runner.py``): a FIFO would block the reader forever, and a device has no
    size to bound the read.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as e:
        raise ImageError(f"cannot access file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("path is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")


def load_image(path: str | os.PathLike, *, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode ``path`` to an RGB uint8 (H, W, 3) array (see module doc); raise ImageError."""
    path = os.fspath(path)
    check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below decides
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"image too large ({w}x{h} pixels; at most {MAX_PIXELS:,})")
                if w == 0 or h == 0:
                    raise ImageError(f"image has zero size ({w}x{h})")
                if im.format == "JPEG" and max(w, h) > 2 * max_side:
                    # decode at 1/2, 1/4 or 1/8 scale directly: bounded memory and time
                    im.draft("RGB", (max_side, max_side))
                im.load()
                im = ImageOps.exif_transpose(im)
                im = _to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot decode image: {msg}") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None
    w, h = im.size
    scale = 1.0
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
    elif min(w, h) < min_side:
        scale = min_side / min(w, h)
    if scale != 1.0:
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - _to_rgb guarantees this
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)
