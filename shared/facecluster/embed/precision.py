"""Numeric precision of the torch embedders' forward pass (a setting, fp32 by default).

``fp32``
    full float32; on CUDA TF32 is switched off so that GPU features agree with CPU ones to
    ~1e-6 (cosine ≥ 0.99999).
``tf32``
    float32 storage, TF32 tensor-core matmuls/convolutions on Ampere+ GPUs (≈ fp32 on CPU).
``bf16`` / ``fp16``
    ``torch.autocast`` on CUDA. On CPU they are refused: CPU autocast is slower than fp32 for these
    convolution nets and buys nothing.

Lower precisions are opt-in because the acceptance bar is cosine ≥ 0.999 between CPU and GPU
features; ``bench/embed_backends.py --device cuda`` measures that agreement per setting.
"""

from __future__ import annotations

import contextlib

from .base import EmbedderError

# torch is imported inside the functions that use it: check_precision runs when an embedder is
# constructed, which should not import torch (see facecluster.embed.dlib_resnet)

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def check_precision(precision: str, device: str = "cuda") -> str:
    """Validated lower-case precision name; bf16/fp16 are refused on CPU."""
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise EmbedderError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if p in ("bf16", "fp16") and not str(device).startswith("cuda"):
        raise EmbedderError(f"precision {p!r} is only supported on CUDA; use fp32 on CPU")
    return p


def configure_backends(precision: str) -> None:
    """Set the process-wide TF32 switches for ``precision`` (they are global in torch)."""
    import torch

    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels


def autocast_context(device, precision: str):
    """Autocast context for bf16/fp16 on CUDA (``device``: a ``torch.device``); a no-op otherwise."""
    if precision in ("bf16", "fp16"):
        import torch

        if device.type != "cuda":
            raise EmbedderError(f"precision {precision!r} is only supported on CUDA; use fp32 on CPU")
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()
