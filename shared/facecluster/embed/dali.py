"""NVIDIA DALI JPEG decoding + resizing for the plain-resize embedders (``decoder=dali``).

Opt-in: ``--embedder 'hfsoftmax:/path?decoder=dali'`` or
``--embedder 'arcface:/path/model.onnx?align=none&decoder=dali'``; needs the ``dali`` extra
(``pip install 'facecluster[dali]'``, i.e. ``nvidia-dali-cuda120``). dlib aligns with landmarks found
on the CPU-decoded image and has no such setting.

One DALI pipeline per embed run, fed from the host::

    external_source(JPEG bytes) → decoders.image(RGB; "mixed" = nvJPEG on CUDA, "cpu" = libjpeg-turbo)
      → resize(linear, antialias; per-image size computed on the host) → slice(exact integer crop)

The per-image output size and crop come from the image header, computed on the host with the
very rules of the CPU path (:func:`plan_geometry`): hfsoftmax = torchvision ``Resize(112)``
(shorter side 112, longer ``int(112·long/short)``) then a centre crop; arcface ``align=none`` =
a plain resize to 112x112. Resizing an image to its own size is the identity in DALI (checked:
glint18's 112x112 crops come out bit-identical), as the CPU path leaves such crops untouched.

Same rule as :mod:`facecluster.embed.gpudecode`: only files that
:func:`facecluster.imageio.load_image` would decode to exactly the same pixels go to DALI — baseline
(non-progressive) 8-bit RGB or greyscale JPEGs, no EXIF rotation, sides within
[``MIN_SIDE``, ``MAX_SIDE``], ending with the EOI marker (a truncated file never reaches DALI, so
whatever the GPU decoder would make of it, the record gets PIL's error). Everything else — PNG,
CMYK, progressive, rotated phone photos, huge or tiny images, unreadable files — takes the CPU
path with its exact error messages, and a JPEG that DALI rejects is retried on the CPU too.

Measured on CPU (``pipeline device_id=None``): DALI's CPU decoder gives bit-identical pixels to
PIL (both libjpeg-turbo); its antialiased linear resize differs from PIL's bilinear by 0.17 grey
levels on average (max 5) on LFW's 150→112 crops; hfsoftmax features (random-weight checkpoint)
agree to cosine ≥ 0.9999 around their mean (``tests/test_embed_dali.py``,
``docs/benchmarks/dali.md``). The GPU ("mixed", nvJPEG) path is written to DALI's documented API
(its graph is accepted without a GPU) but has not been run on a GPU in this project yet.
"""

from __future__ import annotations

import io
import threading
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from .base import EmbedderError

#: how an embedder turns a decoded crop into its chip: "shorter_centre" = hfsoftmax's
#: resize_shorter_centre, "stretch" = arcface align=none (see plan_geometry)
Geometry = Literal["shorter_centre", "stretch"]
GEOMETRIES: tuple[str, ...] = ("shorter_centre", "stretch")

#: DALI's "build" cost is paid once per run; guard pipeline construction (not thread-safe)
_BUILD_LOCK = threading.Lock()


def dali_available() -> bool:
    """True when ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is the same as none
        return False
    return True


def require_dali(device: str) -> None:
    """EmbedderError unless a DALI pipeline can run for ``device`` ("cpu", "cuda", "cuda:N")."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as e:  # noqa: BLE001
        raise EmbedderError(
            "decoder=dali needs NVIDIA DALI: pip install 'facecluster[dali]' "
            f"(nvidia-dali-cuda120) ({type(e).__name__}: {e})"
        ) from None
    dev = str(device)
    if dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EmbedderError("device 'cuda' requested but CUDA is not available")
    elif dev != "cpu":
        raise EmbedderError(f"decoder=dali: unsupported device {device!r} (cpu, cuda or cuda:N)")


def eligible_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) when ``load_image`` would return exactly the decoded JPEG, else None.

    Header only (no pixel decoding). See the module doc for the rule.
    """
    from ..imageio import MAX_SIDE, MIN_SIDE

    # SOI at the start, EOI at the end: a truncated file must get PIL's "truncated" error
    if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            if im.info.get("progressive") or im.info.get("progression"):
                return None
            w, h = im.size
            if max(w, h) > MAX_SIDE or min(w, h) < MIN_SIDE:
                return None
            if im.getexif().get(0x0112) not in (None, 1):
                return None
            return int(w), int(h)
    except Exception:  # noqa: BLE001 - anything odd goes the CPU way
        return None


def plan_geometry(w: int, h: int, out_hw: tuple[int, int], geometry: str) -> tuple[int, int, int, int]:
    """Resize target and crop anchor for one image: ``(resize_w, resize_h, top, left)``.

    ``shorter_centre`` mirrors :func:`facecluster.embed.hfsoftmax.resize_shorter_centre` (square
    output only): shorter side → side, longer → ``int(side · long / short)``, untouched when the
    shorter side already is ``side``; crop ``((h − side) // 2, (w − side) // 2)``. ``stretch``
    mirrors arcface ``align=none``: resize to ``out_hw``, no crop.
    """
    oh, ow = out_hw
    if geometry == "stretch":
        return ow, oh, 0, 0
    if geometry != "shorter_centre":
        raise ValueError(f"unknown geometry {geometry!r}; one of {GEOMETRIES}")
    if oh != ow:
        raise ValueError("shorter_centre needs a square output")
    side = oh
    if min(w, h) != side:
        if w <= h:
            w, h = side, int(side * h / w)
        else:
            w, h = int(side * w / h), side
    return w, h, (h - side) // 2, (w - side) // 2


def geometry_of(embedder) -> Geometry:
    """The embedder's plain-resize geometry (``dali_geometry``); EmbedderError if it has none."""
    g = getattr(embedder, "dali_geometry", None)
    if g not in GEOMETRIES:
        name = getattr(embedder, "name", embedder)
        raise EmbedderError(f"embedder {name!r} has no plain-resize preprocessing: decoder=dali is not supported")
    return g  # type: ignore[return-value]


class DaliDecoder:
    """A DALI pipeline: JPEG bytes → (h, w, 3) uint8 RGB chips of one geometry.

    Parameters
    ----------
    out_hw : (height, width) of the chips (the embedder's ``input_size``).
    geometry : "shorter_centre" (hfsoftmax) or "stretch" (arcface ``align=none``).
    device : "cpu" (DALI CPU operators, ``device_id=None``) or "cuda[:N]" (``mixed`` decoder =
        nvJPEG, resize and crop on that GPU).
    max_batch : most images per :meth:`decode` call (the runner's chunk size).
    num_threads : DALI CPU worker threads (default: the runner's decode workers).
    to_torch : return chips as ``torch.uint8`` tensors on ``device`` (the runner's device path
        for embedders with ``forward_chips`` on CUDA); otherwise numpy arrays on the host.

    Not thread-safe: one decoder per thread (the runner uses it from its main thread).
    """

    def __init__(
        self,
        out_hw: tuple[int, int],
        geometry: str,
        device: str = "cpu",
        max_batch: int = 64,
        num_threads: int | None = None,
        to_torch: bool = False,
    ):
        require_dali(device)
        if geometry not in GEOMETRIES:
            raise EmbedderError(f"unknown geometry {geometry!r}; one of {GEOMETRIES}")
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.geometry = geometry
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.to_torch = bool(to_torch)
        self.max_batch = max(1, int(max_batch))
        if num_threads is None:
            from .runner import default_num_workers

            num_threads = default_num_workers()
        self.num_threads = max(1, int(num_threads))
        self.device_id: int | None = None
        if self.cuda:
            import torch

            self.device_id = int(self.device.split(":")[1]) if ":" in self.device else torch.cuda.current_device()
        self._pipe = None
        self._copy_stream = None  # CUDA: side stream for the DALI → torch copies

    # -- pipeline ----------------------------------------------------------------------------------
    def _build(self):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        with _BUILD_LOCK:
            pipe = Pipeline(
                batch_size=self.max_batch,
                num_threads=self.num_threads,
                device_id=self.device_id,  # None: CPU-only pipeline (no CUDA needed)
                prefetch_queue_depth=1,  # fed synchronously, one batch at a time
                seed=0,
            )
            with pipe:
                raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1, no_copy=False)
                rw = fn.external_source(name="rw", dtype=types.FLOAT, ndim=0)
                rh = fn.external_source(name="rh", dtype=types.FLOAT, ndim=0)
                anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
                img = fn.decoders.image(raw, device="mixed" if self.cuda else "cpu", output_type=types.RGB)
                # linear + antialias is DALI's closest to PIL's bilinear (a triangle filter widened
                # by the scale when shrinking): measured mean |diff| 0.17 grey levels on LFW, versus
                # 0.58 without antialias and 0.69 for cubic
                img = fn.resize(img, resize_x=rw, resize_y=rh, interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.UINT8)
                # integer crop, exactly the CPU path's slice (fn.crop rounds a normalised anchor);
                # named arguments are always CPU-side, also for the GPU operator
                img = fn.slice(img, start=anchor, shape=list(self.out_hw), axes=[0, 1], out_of_bounds_policy="error")
                pipe.set_outputs(img)
            pipe.build()
        return pipe

    def _run(self, datas: Sequence[bytes], sizes: Sequence[tuple[int, int]]):
        if self._pipe is None:
            self._pipe = self._build()
        plans = [plan_geometry(w, h, self.out_hw, self.geometry) for w, h in sizes]
        pipe = self._pipe
        pipe.feed_input("raw", [np.frombuffer(d, np.uint8) for d in datas])
        pipe.feed_input("rw", [np.float32(p[0]) for p in plans])
        pipe.feed_input("rh", [np.float32(p[1]) for p in plans])
        pipe.feed_input("anchor", [np.array([p[2], p[3]], np.int32) for p in plans])
        (out,) = pipe.run()
        return self._convert(out, len(datas))

    def _convert(self, out, n: int) -> list:
        h, w = self.out_hw
        if not self.to_torch:
            arr = (out.as_cpu() if self.cuda else out).as_array()
            return [arr[i] for i in range(n)]
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        # as_tensor(): feed_ndarray compares shapes, and a TensorList's shape is per sample
        if not self.cuda:
            x = torch.empty((n, h, w, 3), dtype=torch.uint8)
            feed_ndarray(out.as_tensor(), x)
            return [x[i] for i in range(n)]
        dev = torch.device("cuda", self.device_id)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(dev)
        s = self._copy_stream
        # run() without a stream returns outputs already synchronised with the host. The copy
        # goes to a tensor allocated on a side stream, so it can never overwrite memory that the
        # main stream freed while kernels (the previous chunk's network) may still read it; the
        # host waits for this copy only (not for the network), after which DALI may reuse its
        # output buffers; record_stream keeps x alive until the main stream has read it.
        with torch.cuda.stream(s):
            x = torch.empty((n, h, w, 3), dtype=torch.uint8, device=dev)
        feed_ndarray(out.as_tensor(), x, cuda_stream=s)
        s.synchronize()
        x.record_stream(torch.cuda.current_stream(dev))
        return [x[i] for i in range(n)]

    def decode(self, datas: Sequence[bytes], sizes: Sequence[tuple[int, int]]) -> list:
        """Decode + resize + crop a batch.

        Parameters
        ----------
        datas : encoded JPEGs, each accepted by :func:`eligible_size`.
        sizes : their (width, height) as :func:`eligible_size` returned.

        Returns
        -------
        list, one entry per input: an (h, w, 3) uint8 chip (numpy, or a torch tensor on
        ``device`` with ``to_torch``), or None where DALI could not decode the file (the caller
        decodes those on the CPU, which also produces the per-record error message).
        """
        if len(datas) != len(sizes):
            raise ValueError(f"{len(datas)} images but {len(sizes)} sizes")
        out: list = []
        for s in range(0, len(datas), self.max_batch):
            d, z = datas[s : s + self.max_batch], sizes[s : s + self.max_batch]
            try:
                out += self._run(d, z)
            except Exception:  # noqa: BLE001 - one bad file fails the batch: isolate it
                self._pipe = None  # a pipeline that raised is rebuilt rather than trusted
                for di, zi in zip(d, z):
                    try:
                        out += self._run([di], [zi])
                    except Exception:  # noqa: BLE001
                        self._pipe = None
                        out.append(None)
        return out


def decoder_for(embedder, max_batch: int, to_torch: bool, num_threads: int | None = None) -> DaliDecoder:
    """The :class:`DaliDecoder` matching ``embedder`` (its input size, geometry and device)."""
    return DaliDecoder(
        tuple(embedder.input_size), geometry_of(embedder), str(embedder.device), max_batch=max_batch,
        num_threads=num_threads, to_torch=to_torch,
    )


__all__ = [
    "DaliDecoder",
    "GEOMETRIES",
    "dali_available",
    "decoder_for",
    "eligible_size",
    "geometry_of",
    "plan_geometry",
    "require_dali",
]
