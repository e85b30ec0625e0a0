"""Face detection for users who start from frames or photos: cut face crops + an input JSON.

Uses dlib's HOG frontal-face detector (no model file needed). Each detection box is grown by
``margin`` (fraction of the box size on every side) so the crops look like a detector's usual
output with context around the face, which is what the recognition stage expects (see README,
"crop margin").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .imageio import ImageError, load_image
from .workdir import atomic_write_json

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def iter_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus image files found (recursively, sorted) in folders."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()))
        else:
            out.append(p)
    return out


def detect_faces(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    margin: float = 0.25,
    upsample: int = 1,
    min_size: int = 20,
    max_side: int = 4096,
) -> list[dict]:
    """Detect faces in every image, save crops under ``out_dir/crops/`` and write
    ``out_dir/input.json`` (paths relative to it). Returns the records.

    Images that cannot be read get a record with ``error`` in ``out_dir/detect-errors.json``
    (never silently skipped)."""
    import dlib

    out_dir = Path(out_dir)
    (out_dir / "crops").mkdir(parents=True, exist_ok=True)
    detector = dlib.get_frontal_face_detector()
    records, errors = [], []
    for src in iter_images(inputs):
        try:
            img = load_image(src, max_side=max_side, min_side=1)
        except ImageError as e:
            errors.append({"source": str(src), "error": str(e)})
            continue
        h, w = img.shape[:2]
        dets, scores, _ = detector.run(img, upsample, 0.0)
        order = np.argsort([d.left() for d in dets], kind="stable")  # left to right: stable numbering
        for k, j in enumerate(order):
            d = dets[j]
            if min(d.width(), d.height()) < min_size:
                continue
            m = margin * max(d.width(), d.height())
            box = [max(0, int(round(d.left() - m))), max(0, int(round(d.top() - m))),
                   min(w, int(round(d.right() + m))), min(h, int(round(d.bottom() + m)))]
            name = f"{src.stem}_face{k}.jpg"
            Image.fromarray(img[box[1]:box[3], box[0]:box[2]]).save(out_dir / "crops" / name, quality=95)
            records.append({"img_path": f"crops/{name}", "source": str(src.resolve()), "box": box, "score": round(float(scores[j]), 4)})
    atomic_write_json(out_dir / "input.json", records)
    if errors:
        atomic_write_json(out_dir / "detect-errors.json", errors)
    return records
