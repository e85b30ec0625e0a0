"""The worker half of the dlib embedder's torch alignment (``--embedder "dlib?align=torch"``).

With ``align=torch`` the decode/alignment workers of :mod:`facecluster.embed.runner` no longer
compute landmarks and chips: they decode, normalise the size exactly as
:meth:`facecluster.embed.align.Aligner.chip` does, and find the landmark rectangle with the
aligner's strategy (dlib's HOG detector for ``auto`` / ``hog``, the margin box for a fixed margin
and for ``iter``; for ``agree`` nothing: the device places its two starts from the image size and
runs HOG on the host only for the few crops whose starts disagree). The image and its rectangle go to the main process, where
:mod:`facecluster.embed.torch_align` runs the 5-point predictor and the chip batched on the
embedder's device. This module imports no torch, so worker processes stay light.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .align import CHIP_SIZE, Aligner, normalise_size, to_rgb_uint8, turn


@dataclass
class FaceImage:
    """One decoded, size-normalised face crop and the rectangle its landmarks start from."""

    image: np.ndarray  #: (H, W, 3) uint8 RGB, longer side in [align.MIN_SIDE, align.MAX_SIDE]
    box: tuple[float, float, float, float]  #: (left, top, right, bottom) pixels, unrounded
    rule: str  #: "hog", "hog-turned" (``image`` is the crop turned upright), "margin" or "agree" (the box is unused: the device places its starts)


class FaceImagePreparer:
    """Picklable ``prepare`` for worker processes: crop → :class:`FaceImage` (no landmarks, no chip).

    ``prepares_images`` tells the runner that ``prepare`` returns these records instead of
    (150, 150, 3) chips; the embedder's ``embed_batch`` takes a list of them.
    """

    needs_keypoints = False
    prepares_images = True
    input_size = (CHIP_SIZE, CHIP_SIZE)

    def __init__(self, aligner: Aligner):
        self.aligner = aligner

    def prepare(self, img: np.ndarray, record: dict | None = None) -> FaceImage:
        """Decoded face crop (any size, grey / RGB / RGBA) → :class:`FaceImage`."""
        img = normalise_size(to_rgb_uint8(img))
        # agree: the margin box, no HOG (runs on the device side); a face found only turned goes to
        # the device turned upright (the chip is the same: it rotates by the landmarks)
        box, rule, k = self.aligner.place(img)
        return FaceImage(turn(img, k), tuple(float(v) for v in box), "agree" if self.aligner.kind == "agree" else rule)


__all__ = ["FaceImage", "FaceImagePreparer"]
