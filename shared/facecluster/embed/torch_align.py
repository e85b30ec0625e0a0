"""dlib embedder with landmarks and chips batched in torch on its device (``dlib?align=torch``).

The default dlib embedder aligns every face on the CPU with dlib (HOG box, 5-point predictor,
``get_face_chip``) in worker processes and ships (150, 150, 3) chips to the network. With
``align=torch`` the workers only decode and find the landmark rectangle
(:mod:`facecluster.embed.face_images`; HOG only for the ``auto`` / ``hog`` strategies), and the
main process runs, per batch, on the embedder's device:

1. dlib's 5-point shape predictor (:class:`facecluster.embed.landmarks_torch.TorchShapePredictor`)
   from those rectangles, refitted ``align.ITER_ROUNDS`` times for ``margin=iter`` exactly as
   :meth:`facecluster.embed.align.Aligner.landmarks_in` does (``align.box_from_landmarks`` and its
   constants imported, not copied); for ``margin=agree`` the two refitted detector-free starts of
   :func:`facecluster.embed.align.agree_landmarks` (that function itself, with the batched
   predictor), then, for the few crops whose starts disagree, dlib's HOG detector on the host
   (:meth:`facecluster.embed.align.Aligner.hog_rect`, in this process) and one more batched
   predictor pass from its boxes, as :meth:`facecluster.embed.align.Aligner.landmarks_rule` does;
2. dlib's ``get_face_chip`` (:func:`facecluster.embed.chip_torch.extract_chips`);
3. the network, on the chips as they are (no round trip through numpy).

Same alignment strategies and defaults as the dlib embedder (``margin=auto`` unless set);
``border=replicate`` is not offered (the dlib embedder does not expose it either).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Sequence

import numpy as np
import torch

from . import align as A
from .base import EmbedderError
from .chip_torch import extract_chips, round_points
from .dlib_resnet import DEFAULT_CPU_THREADS, DlibEmbedder
from .face_images import FaceImage, FaceImagePreparer
from .precision import autocast_context, configure_backends

def iter_box(box: torch.Tensor) -> torch.Tensor:
    """Mean-shape box → where the HOG detector puts its box (``align.ITER_BOX``), like ``landmarks_in``."""
    l, t, r, b = box.unbind(1)
    side = (r - l) * A.ITER_BOX[0]
    cx, cy = (l + r) / 2, (t + b) / 2 + A.ITER_BOX[1] * (r - l)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


class TorchAligner:
    """Landmarks + chips for a batch of :class:`FaceImage` on ``device``.

    Parameters
    ----------
    aligner : the dlib embedder's :class:`facecluster.embed.align.Aligner` (strategy, model file).
    device : torch device.
    hog_workers : int
        ``agree`` only: processes that run HOG on the crops whose starts disagree (0, the default:
        in this process). dlib's HOG holds the GIL, so threads would not help; a pool is started on
        the first batch that needs it (fork server, like the runner's workers) and only used when a
        batch has at least two such crops. Same boxes either way (it only moves the work).
    """

    def __init__(self, aligner: A.Aligner, device: str | torch.device = "cpu", hog_workers: int = 0):
        from .landmarks_torch import TorchShapePredictor

        if aligner.border != "black":
            raise EmbedderError("align=torch supports border='black' only")
        self.aligner = aligner
        self.device = torch.device(device)
        self.predictor = TorchShapePredictor(aligner.landmarks_path, device=str(self.device))
        # (K, 2) float64: the predictor's mean shape, for the box refits of iter and agree
        self.mean = A.mean_shape(aligner.landmarks_path) if aligner.kind in ("iter", "agree") else None
        #: ``agree`` counts since construction: crops, crops whose starts disagreed (HOG run),
        #: crops where HOG found a plausible box, and the seconds HOG took on the host (benchmarks
        #: read and may reset it)
        self.agree_counts: dict[str, float] = {"crops": 0, "hog": 0, "hog_found": 0, "hog_seconds": 0.0}
        #: ``agree``: the rule of each crop of the last batch ("agree" or "hog")
        self.last_rules: list[str] = []
        self.hog_workers = max(0, int(hog_workers))
        self._hog_pool = None

    def _hog_rects(self, images: list[np.ndarray]) -> list[tuple[float, float, float, float] | None]:
        """:meth:`align.Aligner.hog_rect` of each image, in order (in the HOG pool when there is one)."""
        if self.hog_workers <= 0 or len(images) < 2:
            return [A.Aligner.hog_rect(im) for im in images]
        if self._hog_pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["facecluster.embed.align"])
            self._hog_pool = ProcessPoolExecutor(max_workers=self.hog_workers, mp_context=ctx)
        chunk = max(1, -(-len(images) // self.hog_workers))
        return list(self._hog_pool.map(A.Aligner.hog_rect, images, chunksize=chunk))

    def close(self) -> None:
        """Stop the HOG pool, if one was started."""
        if self._hog_pool is not None:
            self._hog_pool.shutdown(cancel_futures=True)
            self._hog_pool = None

    def to_device(self, items: Sequence[FaceImage]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pad the images into one (B, H, W, 3) uint8 batch on the device (top-left aligned).

        Returns images, sizes (B, 2) int64 (h, w), boxes (B, 4) float64 (unrounded).
        """
        B = len(items)
        H = max((it.image.shape[0] for it in items), default=1)
        W = max((it.image.shape[1] for it in items), default=1)
        host = torch.zeros((B, H, W, 3), dtype=torch.uint8)
        if self.device.type == "cuda":
            host = host.pin_memory()
        hn = host.numpy()
        for k, it in enumerate(items):
            h, w = it.image.shape[:2]
            hn[k, :h, :w] = it.image
        sizes = torch.tensor([it.image.shape[:2] for it in items], dtype=torch.int64).reshape(B, 2)
        boxes = torch.tensor([it.box for it in items], dtype=torch.float64).reshape(B, 4)
        nb = self.device.type == "cuda"
        return host.to(self.device, non_blocking=nb), sizes.to(self.device), boxes.to(self.device)

    @torch.inference_mode()
    def landmarks(self, images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor,
                  hosts: Sequence[np.ndarray] | None = None) -> torch.Tensor:
        """(B, 5, 2) float64 landmarks (unrounded; integer for ``agree``) from the boxes.

        Refitted for ``iter``; for ``agree`` the boxes are not used (the starts are placed from
        ``sizes``) and ``hosts`` (the B host images, (H, W, 3) uint8) are needed for HOG on the
        crops whose starts disagree (:meth:`agree_landmarks`).
        """
        gray = self.predictor.intensity(images)
        if self.aligner.kind == "agree":
            if hosts is None:
                raise EmbedderError("margin=agree on the torch path needs the host images (for HOG)")
            return self.agree_landmarks(gray, sizes, hosts)
        # dlib.rectangle(int(round(l)), ...): Python's round, half to even, like torch.round
        pts = self.predictor(gray, sizes, torch.round(boxes))
        if self.mean is not None:
            for _ in range(A.ITER_ROUNDS):
                # the refit starts from dlib's integer landmark points; the least-squares box is
                # align.box_from_landmarks itself, on the host: a batched version sums in another
                # order, and a last-bit difference flips a .5 rounding of the box now and then
                # (1 of 200 LFW crops); one sync and B small numpy calls per round
                host = round_points(pts).cpu().numpy().astype(np.float64)
                fit = [A.box_from_landmarks(p, self.mean) for p in host]
                box = iter_box(torch.tensor(fit, dtype=torch.float64, device=pts.device).reshape(-1, 4))
                pts = self.predictor(gray, sizes, torch.round(box))
        return pts

    def _predict_int(self, gray: torch.Tensor, sizes: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """(N, 5, 2) float64 host landmarks as dlib's integer points from (N, 4) host boxes.

        dlib.rectangle(int(round(l)), ...): Python's round, half to even, like torch.round.
        """
        b = torch.round(torch.as_tensor(np.asarray(boxes, np.float64), device=gray.device))
        return round_points(self.predictor(gray, sizes, b)).cpu().numpy().astype(np.float64)

    def agree_landmarks(self, gray: torch.Tensor, sizes: torch.Tensor, hosts: Sequence[np.ndarray]) -> torch.Tensor:
        """``margin=agree`` for a batch: :func:`align.agree_landmarks` with the batched predictor,
        then HOG + one predictor pass for the crops whose two starts disagree.

        Same decisions as :meth:`facecluster.embed.align.Aligner.landmarks_rule` crop by crop: the
        starts' landmarks are dlib's integer points (the refit starts from them, as on the CPU),
        a disagreeing crop takes the HOG box when :meth:`~facecluster.embed.align.Aligner.hog_rect`
        finds a plausible one, else keeps the first start's landmarks.

        Parameters
        ----------
        gray : (B, H, W) float32 intensities (:meth:`TorchShapePredictor.intensity`).
        sizes : (B, 2) int64 (h, w) on the device.
        hosts : the B size-normalised (H, W, 3) uint8 images on the host (HOG input).

        Returns
        -------
        (B, 5, 2) float64 integer-valued landmarks on the device. :attr:`agree_counts` adds the
        batch's crop / HOG / HOG-found counts; :attr:`last_rules` holds each crop's rule
        ("agree" or "hog").
        """
        hw = sizes.cpu().numpy()
        pts, ok = A.agree_landmarks(lambda boxes: self._predict_int(gray, sizes, boxes), hw, self.mean,
                                    A.AGREE_STARTS, A.AGREE_TOL)
        rules = ["agree"] * len(hw)
        bad = np.flatnonzero(~ok)
        # HOG (dlib, CPU, holds the GIL) only on the disagreeing crops: 1-13 % of them
        # (docs/benchmarks/embedding.md §7)
        t0 = time.perf_counter()
        rects = self._hog_rects([hosts[int(i)] for i in bad])
        found = [(int(i), r) for i, r in zip(bad, rects) if r is not None]
        self.agree_counts["hog_seconds"] += time.perf_counter() - t0
        if found:
            idx = np.array([i for i, _ in found])
            sel = torch.as_tensor(idx, device=gray.device)
            pts[idx] = self._predict_int(gray[sel], sizes[sel], np.array([r for _, r in found], np.float64))
            for i in idx:
                rules[int(i)] = "hog"
        for k, v in (("crops", len(hw)), ("hog", len(bad)), ("hog_found", len(found))):
            self.agree_counts[k] += int(v)
        self.last_rules = rules
        return torch.as_tensor(pts, device=gray.device)

    @torch.inference_mode()
    def chips(self, items: Sequence[FaceImage]) -> torch.Tensor:
        """(B, 150, 150, 3) uint8 chips on the device, in ``items`` order."""
        if not items:
            return torch.zeros((0, A.CHIP_SIZE, A.CHIP_SIZE, 3), dtype=torch.uint8, device=self.device)
        images, sizes, boxes = self.to_device(items)
        pts = self.landmarks(images, sizes, boxes, [it.image for it in items])
        return extract_chips(images, sizes, pts, A.CHIP_SIZE, A.CHIP_PADDING)


class DlibTorchAlignEmbedder(DlibEmbedder):
    """The dlib embedder with landmarks and chips batched in torch on its device.

    Selected by ``--embedder "dlib?align=torch"`` (registry: :data:`facecluster.embed.ALIGN_VARIANTS`).
    Parameters as :class:`facecluster.embed.dlib_resnet.DlibEmbedder`, plus ``align`` ("torch") and
    ``hog_workers`` (``margin=agree``: processes for the HOG of the crops whose starts disagree;
    0 = in the main process; see :class:`TorchAligner`).
    ``prepare`` returns a :class:`FaceImage` (decoded crop + landmark rectangle), not a chip;
    ``embed_batch`` takes a list of them (or ready (B, 150, 150, 3) chips, as the dlib embedder).
    """

    #: the runner keeps ``prepare``'s results as a list (variable-size images, not chips)
    prepares_images = True

    def __init__(
        self,
        path: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        margin: str | float | None = None,
        threads: int | str | None = DEFAULT_CPU_THREADS,
        precision: str = "fp32",
        mirror: bool | str = False,
        orient: bool | str = True,
        align: str = "torch",
        hog_workers: int | str = 0,
    ):
        if str(align).strip().lower() != "torch":
            raise EmbedderError(f"DlibTorchAlignEmbedder needs align='torch', got {align!r}")
        super().__init__(path=path, device=device, batch_size=batch_size, margin=margin, threads=threads,
                         precision=precision, mirror=mirror, orient=orient)
        self.align = "torch"
        #: ``margin=agree``: processes for the HOG of disagreeing crops (:class:`TorchAligner`);
        #: moves work only, so it is not part of the fingerprint
        self.hog_workers = int(hog_workers)
        if self.hog_workers < 0:
            raise EmbedderError(f"hog_workers must be >= 0, got {hog_workers!r}")
        self.preprocessing = self.preprocessing.replace(
            "dlib 5-point landmarks -> dlib.get_face_chip 150x150 padding 0.25",
            "dlib 5-point landmarks and get_face_chip 150x150 padding 0.25 batched in torch on the device (align=torch)",
        )
        self._torch_aligner: TorchAligner | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_torch_aligner"] = None
        return state

    def preparer(self) -> FaceImagePreparer:
        """Picklable worker half: decode + landmark rectangle (no torch in the workers)."""
        return FaceImagePreparer(self.aligner)

    def prepare(self, img: np.ndarray, record: dict[str, Any] | None = None) -> FaceImage:  # type: ignore[override]
        """Decoded face crop → :class:`FaceImage` (size-normalised image + landmark rectangle)."""
        return FaceImagePreparer(self.aligner).prepare(img, record)

    @property
    def torch_aligner(self) -> TorchAligner:
        if self._torch_aligner is None:
            self._torch_aligner = TorchAligner(self.aligner, next(self.net.parameters()).device,
                                               hog_workers=self.hog_workers)
        return self._torch_aligner

    def align_chips(self, items: Sequence[FaceImage]) -> torch.Tensor:
        """(B, 150, 150, 3) uint8 chips on the device for a list of :class:`FaceImage`."""
        return self._with_threads(lambda: self.torch_aligner.chips(items))

    def _with_threads(self, fn):
        dev = torch.device(self.device)
        old = torch.get_num_threads()
        if dev.type == "cpu" and self.threads:
            torch.set_num_threads(self.threads)
        try:
            return fn()
        finally:
            if dev.type == "cpu" and self.threads:
                torch.set_num_threads(old)

    def embed_batch(self, chips) -> np.ndarray:  # type: ignore[override]
        """List of :class:`FaceImage` (or (B, 150, 150, 3) uint8 chips) → (B, 128) float32 descriptors."""
        if isinstance(chips, np.ndarray):
            return super().embed_batch(chips)
        items = list(chips)
        if not all(isinstance(it, FaceImage) for it in items):
            raise EmbedderError("align=torch: embed_batch takes a list of FaceImage (from prepare) or chips")
        if not items:
            return np.zeros((0, self.dim), np.float32)
        net = self.net
        dev = next(net.parameters()).device
        if dev.type == "cuda":
            configure_backends(self.precision)

        def run() -> np.ndarray:
            out = []
            with torch.inference_mode():
                for s in range(0, len(items), self.batch_size):
                    x = self.torch_aligner.chips(items[s : s + self.batch_size])
                    x = x.permute(0, 3, 1, 2).float()
                    with autocast_context(dev, self.precision):
                        y = net(x).float()
                        if self.mirror:
                            y = (y + net(x.flip(-1)).float()) / 2
                    out.append(y.cpu().numpy())
            return np.concatenate(out).astype(np.float32, copy=False)

        return self._with_threads(run)

    def fingerprint(self) -> str:
        # torch chips are bit-identical to dlib's when the landmarks are; the landmarks agree within
        # 1 px, not exactly: a separate cache key
        return hashlib.sha256(f"{super().fingerprint()}:align=torch".encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["alignment"] = {**d["alignment"], "align": "torch"}
        return d


__all__ = ["DlibTorchAlignEmbedder", "TorchAligner", "iter_box"]
