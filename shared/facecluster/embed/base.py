"""Embedder interface shared by every recognition model.

An embedder turns a decoded RGB crop into an aligned chip (``prepare``, CPU, per image)
and a batch of chips into descriptors (``embed_batch``, batched, CPU or CUDA).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


class EmbedderError(ValueError):
    """Wrong model file, wrong dimension, missing keypoints, ... (clear, user-facing)."""


class Embedder:
    #: short registry name (``--embedder NAME[:PATH]``)
    name: ClassVar[str] = ""
    #: descriptor dimension
    dim: ClassVar[int] = 0
    #: (height, width) of the chip given to the network
    input_size: ClassVar[tuple[int, int]] = (0, 0)
    #: True if ``prepare`` needs ``record["keypoints"]``
    needs_keypoints: ClassVar[bool] = False
    #: True if the embedder requires a user-supplied model file
    needs_path: ClassVar[bool] = False
    #: one line: how a decoded crop becomes the network input (alignment, resize, normalisation)
    preprocessing: ClassVar[str] = ""

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 64):
        self.path = path
        self.device = device
        self.batch_size = batch_size

    # Calibration vector subtracted from descriptors before L2 normalisation (None: none).
    mean: np.ndarray | None = None

    def prepare(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray:
        """Decoded RGB uint8 (H, W, 3) crop → aligned chip (h, w, 3) uint8."""
        raise NotImplementedError

    def embed_batch(self, chips: np.ndarray) -> np.ndarray:
        """(B, h, w, 3) uint8 chips → (B, dim) float32 descriptors (raw, not normalised)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 of the weights file plus the settings that change the output."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What is recorded in features.json."""
        return {
            "embedder": self.name,
            "path": self.path,
            "dim": self.dim,
            "input_size": list(self.input_size),
            "needs_keypoints": self.needs_keypoints,
            "preprocessing": self.preprocessing,
            "fingerprint": self.fingerprint(),
        }
