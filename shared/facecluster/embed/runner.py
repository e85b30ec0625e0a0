"""The streaming "decode → prepare → embed" loop of the embed stage (CPU and CUDA).

:func:`embed_records` is what ``facecluster embed`` / ``run`` call for one shard:

* a pool of worker *processes* (embedders that declare ``process_safe``: dlib, whose detector,
  landmark predictor and chip extraction hold the GIL) or threads (the others: PIL's decoders,
  resizes and warps and onnxruntime release the GIL) decodes (:func:`facecluster.imageio.load_image`)
  and prepares (the embedder's alignment) chunks of records while the main thread runs the network
  on the previous chunk. Worker processes get the embedder once (pickled without its network) and
  send back uint8 chips;
* at most ``num_workers + 2`` chunks are in flight, so memory stays bounded whatever the input size
  (features are the only thing kept: M × D float32);
* on CUDA, an embedder with ``forward_chips`` (hfsoftmax) gets its uint8 chips through a ring of
  pinned host buffers with ``non_blocking`` copies, and the result of chunk i is read back only
  after chunk i+1 was queued, so the GPU never waits for the host; other embedders use
  ``embed_batch``;
* opt-in accelerated JPEG decoding (embedder setting ``decoder``): ``nvjpeg`` (CUDA, torchvision;
  :mod:`facecluster.embed.gpudecode`) or ``dali`` (NVIDIA DALI, CPU or CUDA;
  :mod:`facecluster.embed.dali`). Worker threads read the files and sort out the JPEGs the
  accelerated decoder reproduces exactly; the main thread decodes those in one batch per chunk;
  everything else (and anything the decoder rejects) goes through ``load`` as usual;
* every record either yields a feature row or an error message: decode failures
  (``ImageError``), alignment failures (``EmbedderError``, e.g. missing keypoints), any other
  exception while preparing a record, and non-finite network outputs. Nothing is dropped silently
  and no record is replaced by another one.

Results come back in input order.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .base import Embedder, EmbedderError

Loader = Callable[[str], np.ndarray]


def usable_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup CPU quota.

    In a Kubernetes pod ``os.cpu_count()`` (and torch's default thread count) is the whole node's;
    the pod's ``resources.limits.cpu`` only shows up as the cgroup quota.
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:  # cgroup v2: "max 100000" or "200000 100000"
        q, per = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if q != "max":
            quota = int(q) / int(per)
    except (OSError, ValueError):
        try:  # cgroup v1
            q = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
            per = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
            if q > 0 and per > 0:
                quota = q / per
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def default_num_workers(processes: bool = False) -> int:
    """Decode/align workers. Threads: all usable CPUs but one (the main thread feeds the network),
    at most 8 (they share one interpreter; more only add contention). Processes: one per usable
    CPU, at most 64: the main thread's network waits for chunks part of the time, and with a
    process on every core the system fills those gaps (2-core box, dlib, 3,919 crops: embed stage
    22.5-23.8 s with one alignment process, 18.9-19.4 s with two, identical descriptors;
    docs/benchmarks.md §3)."""
    if processes:
        return max(1, min(64, usable_cpus()))
    return max(1, min(8, usable_cpus() - 1))


#: worker kind: "auto" = processes for embedders with ``process_safe`` (and the default loader),
#: threads otherwise; the environment variable FACECLUSTER_EMBED_WORKERS=threads|processes forces one
WORKER_KINDS = ("auto", "threads", "processes")


def use_processes(embedder: Embedder, load_is_default: bool, workers: str | None = None) -> bool:
    """Whether decode/alignment runs in worker processes (see :data:`WORKER_KINDS`)."""
    kind = (workers or os.environ.get("FACECLUSTER_EMBED_WORKERS") or "auto").strip().lower()
    if kind not in WORKER_KINDS:
        raise ValueError(f"workers kind must be one of {WORKER_KINDS}, got {kind!r}")
    if kind == "threads":
        return False
    if kind == "processes":
        if not load_is_default:
            raise ValueError("worker processes need the default image loader (a custom `load` is not picklable)")
        return True
    return bool(getattr(embedder, "process_safe", False)) and load_is_default


# -- worker processes ---------------------------------------------------------------------------
_WORKER: dict = {}


def _proc_init(embedder) -> None:
    """Process-pool initializer: keep this process's copy of the embedder's preparer."""
    # one thread per worker process: the workers are as many as the cores already
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["embedder"] = embedder


def _proc_prepare(start: int, paths: list[str], records: list[dict] | None, gpu: bool | str) -> _Chunk:
    """:func:`_prepare_chunk` in a worker process on ``paths`` = records ``start ..``; indices shifted back."""
    from ..imageio import load_image

    c = _prepare_chunk(_WORKER["embedder"], load_image, paths, records, range(len(paths)), gpu)
    c.index = c.index + start
    c.errors = {start + k: v for k, v in c.errors.items()}
    c.gpu_index = [start + k for k in c.gpu_index]
    return c


def _process_pool(embedder: Embedder, num_workers: int):
    """A pool of ``num_workers`` processes started by a fork server.

    Not plain ``fork``: the parent may hold OpenMP / CUDA state and other threads' locks, which a
    forked child inherits half-initialised; the fork server is a clean process that imports the
    alignment modules once and forks the workers from there (cheap, no per-worker import of torch).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["facecluster.embed.align", "facecluster.imageio"])
    prep = embedder.preparer() if hasattr(embedder, "preparer") else embedder
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx, initializer=_proc_init, initargs=(prep,))


def default_cpu_threads() -> int:
    """Network threads on CPU: all usable CPUs but one, left to decoding/alignment.

    Measured on the shared 2-core box (docs/benchmarks/embedding_backends.md): hfsoftmax ran ~4x
    faster with 1 torch thread than with 2, whose OpenMP threads wait for the busy second core.
    """
    return max(1, usable_cpus() - 1)


def _file_size(path: str) -> tuple[int, int] | None:
    """(w, h) of the image file from its header, after EXIF orientation; None when unknown."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees on load
                w, h = h, w
    except Exception:  # noqa: BLE001 - not a file (custom loaders) or unreadable header
        return None
    return (w, h) if w > 0 and h > 0 else None


def _image_scale(path: str, shape: tuple[int, ...]) -> tuple[float, float] | None:
    """(sx, sy) from the file's own pixel grid (after EXIF orientation) to the decoded array.

    ``load_image`` rescales huge and tiny images; keypoints in the input JSON refer to the file's
    pixels, so keypoint-based alignment must scale them the same way. None when unknown.
    """
    size = _file_size(path)
    if size is None:
        return None
    return shape[1] / size[0], shape[0] / size[1]


#: inter-ocular distance of an ArcFace-aligned crop (insightface's 112-px template: eyes at
#: x 38.3 and 73.5) per pixel of its side: the face size estimated from a crop where the embedder
#: computes no landmarks
IOD_PER_SIDE = 35.24 / 112


def source_side(path: str, img: np.ndarray) -> float:
    """Shorter side of the face crop in the file's own pixels.

    The decoded array's side, except where ``load_image`` rescaled a tiny or huge image (the
    file header then tells the original size)."""
    from ..imageio import MAX_SIDE, MIN_SIDE

    h, w = img.shape[:2]
    if min(h, w) <= MIN_SIDE or max(h, w) >= MAX_SIDE:
        scale = _image_scale(path, img.shape)
        if scale is not None:
            return float(min(h / scale[1], w / scale[0]))
    return float(min(h, w))


def _file_scale(path: str, img: np.ndarray) -> float:
    """File pixels per pixel of the decoded array (1 unless ``load_image`` rescaled it)."""
    return source_side(path, img) / float(min(img.shape[:2]))


def _header_side(path: str, size: tuple[int, int] | None = None) -> float:
    """Shorter side from a known (w, h) or the file header; NaN when unknown (the clustering
    then treats the face as large)."""
    if not (size and min(size) > 0):
        size = _file_size(path)
    return float(min(size)) if size else float("nan")


def _message(e: BaseException) -> str:
    from ..imageio import ImageError

    if isinstance(e, (ImageError, EmbedderError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


@dataclass
class _Chunk:
    index: np.ndarray  # (k,) int64 local record indices that produced chips
    chips: np.ndarray | None  # (k, h, w, 3) uint8, None when k == 0 (a list of FaceImage: _prepares_images)
    errors: dict[int, str]
    n: int  # records in the chunk (ok + failed)
    face_px: list[float]  # (k,) of each record in `index`: the face's inter-ocular distance in file pixels
    t_decode: float
    t_prepare: float
    # GPU-decoder mode: JPEG bytes still to decode on the GPU, and their record indices
    gpu_index: list[int] = field(default_factory=list)
    gpu_bytes: list[bytes] = field(default_factory=list)
    gpu_sizes: list[tuple[int, int]] = field(default_factory=list)  # (w, h) from the header (dali)
    # filled by the main thread: (k, h, w, 3) uint8 device tensor in `index` order
    dev_chips: object = None
    n_gpu: int = 0  # images decoded on the GPU


# -- torch alignment (dlib?align=torch, embed/torch_align.py) --------------------------------------
def _prepares_images(embedder) -> bool:
    """Whether ``prepare`` returns decoded face images for on-device alignment, not chips.

    Such embedders (or their worker preparers: :class:`facecluster.embed.face_images.FaceImagePreparer`)
    declare ``prepares_images``; a chunk then carries a list of
    :class:`facecluster.embed.face_images.FaceImage` in ``chips`` (variable-size images, no stacking,
    no chip-shape check), which the embedder's ``embed_batch`` aligns on its device.
    """
    return bool(getattr(embedder, "prepares_images", False))


def _prepare_chunk(
    embedder: Embedder, load: Loader, paths: Sequence[str], records: Sequence[dict] | None, idx: range,
    gpu: bool | str = False,
) -> _Chunk:
    """Decode + prepare ``idx`` on the CPU; with ``gpu`` ("nvjpeg"/True or "dali") the files that
    decoder reproduces exactly are only read (``gpu_bytes``), for the main thread to decode."""
    from ..imageio import ImageError, check_file

    ok: list[int] = []
    face_px: list[float] = []
    chips: list[np.ndarray] = []
    errors: dict[int, str] = {}
    gpu_index: list[int] = []
    gpu_bytes: list[bytes] = []
    gpu_sizes: list[tuple[int, int]] = []
    td = tp = 0.0
    for i in idx:
        t0 = time.perf_counter()
        if gpu:
            try:
                check_file(paths[i])  # load_image's own check: no device or FIFO is ever read
                with open(paths[i], "rb") as f:
                    data = f.read()
            except (OSError, ImageError):
                data = b""  # the CPU path below reports the exact error
            if gpu == "dali":
                from .dali import eligible_size

                size = eligible_size(data)
            else:
                from .gpudecode import jpeg_eligible

                size = (0, 0) if jpeg_eligible(data) else None
            if size is not None:
                gpu_index.append(i)
                gpu_bytes.append(data)
                gpu_sizes.append(size)
                td += time.perf_counter() - t0
                continue
        try:
            img = load(paths[i])
            t1 = time.perf_counter()
            td += t1 - t0
            rec = records[i] if records is not None else {}
            if getattr(embedder, "needs_keypoints", False) and rec.get("keypoints") is not None:
                scale = _image_scale(paths[i], img.shape)
                if scale is not None and scale != (1.0, 1.0):
                    rec = {**rec, "_image_scale": scale}
            sized = None if _prepares_images(embedder) else getattr(embedder, "prepare_sized", None)
            if sized is not None:  # the face's inter-ocular distance from the aligner's landmarks
                chip, iod = sized(img, rec)
                px = iod * _file_scale(paths[i], img)
            else:
                chip = embedder.prepare(img, rec)
                px = IOD_PER_SIDE * source_side(paths[i], img)
            tp += time.perf_counter() - t1
        except Exception as e:  # noqa: BLE001 - every failure becomes this record's error
            errors[i] = _message(e)
            continue
        if _prepares_images(embedder):
            ok.append(i)
            face_px.append(px)
            chips.append(chip)
            continue
        chip = np.asarray(chip)
        if chip.dtype != np.uint8 or chip.shape != (*embedder.input_size, 3):
            errors[i] = f"embedder returned a chip of shape {chip.shape} {chip.dtype}, expected {(*embedder.input_size, 3)} uint8"
            continue
        ok.append(i)
        face_px.append(px)
        chips.append(chip)
    if chips and not _prepares_images(embedder):
        chips = np.stack(chips)
    return _Chunk(
        np.asarray(ok, np.int64), chips if len(chips) else None, errors, len(idx), face_px, td, tp, gpu_index, gpu_bytes,
        gpu_sizes,
    )


def _gpu_decode_chunk(embedder: Embedder, load: Loader, paths, records, c: _Chunk, dali=None) -> _Chunk:
    """Decode the chunk's JPEGs (nvJPEG, or ``dali``: a :class:`~facecluster.embed.dali.DaliDecoder`)
    and merge them with its CPU chips (main thread).

    Chips decoded to CUDA tensors end up in ``c.dev_chips`` (the feeder path); chips decoded to
    host arrays (DALI on CPU, or DALI on CUDA for an embedder without ``forward_chips``) are merged
    into ``c.chips``.
    """
    import torch

    dev = torch.device(embedder.device)
    if dali is not None:
        decoded = dali.decode(c.gpu_bytes, c.gpu_sizes)
    else:
        from .gpudecode import decode_batch

        decoded = decode_batch(c.gpu_bytes, embedder.input_size[0], str(dev))
    gpu_ok = [(i, t) for i, t in zip(c.gpu_index, decoded) if t is not None]
    gpu_px = {i: IOD_PER_SIDE * _header_side(paths[i], sz) for i, t, sz in zip(c.gpu_index, decoded, c.gpu_sizes) if t is not None}
    # JPEGs the GPU decoder refused: the CPU path decides (a chip, or the exact error message)
    retry = _prepare_chunk(embedder, load, paths, records, [i for i, t in zip(c.gpu_index, decoded) if t is None])
    errors = {**c.errors, **retry.errors}
    cpu_idx = list(c.index) + list(retry.index)
    cpu_chips = [x for x in (c.chips, retry.chips) if x is not None]
    order = sorted([(int(i), "c", k) for k, i in enumerate(cpu_idx)] + [(int(i), "g", k) for k, (i, _) in enumerate(gpu_ok)])
    cpu_px = dict(zip(cpu_idx, list(c.face_px) + list(retry.face_px)))
    c.index = np.asarray([o[0] for o in order], np.int64)
    c.face_px = [cpu_px[i] if src == "c" else gpu_px[i] for i, src, _ in order]
    c.errors = errors
    c.t_decode += retry.t_decode
    c.t_prepare += retry.t_prepare
    c.gpu_index, c.gpu_bytes, c.gpu_sizes = [], [], []
    c.n_gpu = len(gpu_ok)
    if not order:
        c.chips = None
        return c
    h, w = embedder.input_size
    if dali is not None and not dali.to_torch:  # host chips (no device feeder): plain numpy merge
        host_chips = np.concatenate(cpu_chips) if cpu_chips else None
        c.chips = np.stack([host_chips[k] if src == "c" else gpu_ok[k][1] for _, src, k in order])
        return c
    x = torch.empty((len(order), h, w, 3), dtype=torch.uint8, device=dev)
    if cpu_chips:
        host = torch.from_numpy(np.concatenate(cpu_chips))
        pos = [p for p, o in enumerate(order) if o[1] == "c"]
        x[pos] = host[[o[2] for o in order if o[1] == "c"]].to(dev)
    if gpu_ok:
        pos = [p for p, o in enumerate(order) if o[1] == "g"]
        x[pos] = torch.stack([gpu_ok[o[2]][1] for o in order if o[1] == "g"])
    c.dev_chips = x
    c.chips = np.empty((len(order), 0), np.uint8)  # marker: chips exist (on the device)
    return c


@dataclass
class EmbedResult:
    """Features of the records that worked, their indices, and the errors of the others.

    Unpacks as ``features, index, errors = embed_records(...)``.
    """

    features: np.ndarray  #: (M, D) float32 raw descriptors
    index: np.ndarray  #: (M,) int64 record index (0-based in ``paths``) of each row, increasing
    errors: dict[int, str]  #: {record index: message} for the others
    timings: dict[str, float] = field(default_factory=dict)  #: seconds (decode/prepare summed over threads)
    #: (M,) float32 each face's inter-ocular distance in its file's pixels (NaN: unknown)
    face_px: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __iter__(self):
        return iter((self.features, self.index, self.errors))


class _CudaFeeder:
    """Pinned-memory, non-blocking path for embedders with ``forward_chips`` on CUDA."""

    def __init__(self, embedder: Embedder, max_batch: int):
        import torch

        self.torch = torch
        self.embedder = embedder
        self.dev = torch.device(embedder.device)
        # on CPU (tests only) the same logic runs without pinning and events
        self.cuda = self.dev.type == "cuda"
        h, w = embedder.input_size
        # two input buffers: chunk i+1 is copied while chunk i may still be read by its H2D copy
        self.bufs = [self._host((max_batch, h, w, 3), torch.uint8) for _ in range(2)]
        self.outs = [self._host((max_batch, embedder.dim), torch.float32) for _ in range(2)]
        self.slot = 0
        self.pending: tuple | None = None  # (event, out view, chunk)

    def _host(self, shape, dtype):
        t = self.torch.empty(shape, dtype=dtype)
        return t.pin_memory() if self.cuda else t

    def submit(self, chunk: _Chunk):
        """Queue chunk's forward; returns the previous chunk's (chunk, feats) when ready, or None."""
        torch = self.torch
        k = chunk.chips.shape[0]
        buf, out = self.bufs[self.slot][:k], self.outs[self.slot][:k]
        self.slot ^= 1
        if chunk.dev_chips is not None:  # decoded on the GPU already
            x = chunk.dev_chips
            chunk.dev_chips = None
        else:
            buf.copy_(torch.from_numpy(chunk.chips))
            x = buf.to(self.dev, non_blocking=True)
        y = self.embedder.forward_chips(x)
        out.copy_(y, non_blocking=True)
        ev = None
        if self.cuda:
            ev = torch.cuda.Event()
            ev.record()
        prev, self.pending = self.pending, (ev, out, chunk)
        return self._finish(prev)

    def flush(self):
        prev, self.pending = self.pending, None
        return self._finish(prev)

    @staticmethod
    def _finish(p):
        if p is None:
            return None
        ev, out, chunk = p
        if ev is not None:
            ev.synchronize()
        return chunk, out.numpy().copy()


def _use_feeder(embedder: Embedder) -> bool:
    """The pinned-memory path: CUDA embedders that expose ``forward_chips``."""
    return str(embedder.device).startswith("cuda") and hasattr(embedder, "forward_chips")


def iter_embed_chunks(
    embedder: Embedder,
    paths: Sequence[str],
    records: Sequence[dict] | None = None,
    *,
    num_workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = False,
    load: Loader | None = None,
    timings: dict[str, float] | None = None,
    workers: str | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[int, str], np.ndarray]]:
    """Stream ``(index (k,), features (k, D) float32, errors {i: msg}, face_px (k,) float32)`` chunk
    by chunk, in input order; ``face_px`` is each face's inter-ocular distance in its file's
    pixels (from the embedder's landmarks, ``prepare_sized``; else estimated as
    ``IOD_PER_SIDE`` x the crop's shorter side; NaN when unknown), the clustering's size signal.

    Parameters
    ----------
    embedder : a constructed :class:`Embedder`.
    paths : image path of each record.
    records : the input records (``prepare`` reads e.g. ``keypoints``); None = no extra fields.
    num_workers : decode/align workers (None: :func:`default_num_workers`; 0: all in this thread).
    chunk_size : records per chunk (default: the embedder's batch size).
    progress : rich progress bar (None: when stderr is a terminal).
    load : path → (H, W, 3) uint8 RGB (default :func:`facecluster.imageio.load_image`).
    timings : if given, filled with seconds: decode, prepare (summed over threads), network
        (main thread, including waits for the GPU), wait (main thread waiting for chunks), wall,
        warmup (the embedder's optional ``warmup()``, run while the workers start on the first chunks);
        with ``decoder=nvjpeg`` also gpu_decode (seconds) and gpu_images (count); with
        ``decoder=dali`` dali_decode and dali_images.
    workers : "auto", "threads" or "processes" (see :func:`use_processes`; None: the environment's
        FACECLUSTER_EMBED_WORKERS, else "auto"). With processes, decode and prepare seconds are
        summed over the worker processes.
    """
    from ..progress import bar

    procs = use_processes(embedder, load is None, workers)
    if load is None:
        from ..imageio import load_image as load
    n = len(paths)
    if records is not None and len(records) != n:
        raise ValueError(f"{len(records)} records for {n} paths")
    chunk_size = int(chunk_size or embedder.batch_size or 64)
    num_workers = default_num_workers(procs) if num_workers is None else int(num_workers)
    t = {"decode": 0.0, "prepare": 0.0, "network": 0.0, "wait": 0.0, "wall": 0.0}
    t_start = time.perf_counter()
    ranges = [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]

    feeder = _CudaFeeder(embedder, chunk_size) if _use_feeder(embedder) else None
    # opt-in GPU JPEG decoding (embedder setting decoder=nvjpeg): needs the pinned/device path
    gpu: bool | str = feeder is not None and getattr(embedder, "decoder", "pil") == "nvjpeg"
    # opt-in DALI decoding (decoder=dali): CPU or CUDA; chips come back as device tensors only
    # when the feeder can take them, as host arrays otherwise
    dali = None
    if getattr(embedder, "decoder", "pil") == "dali":
        from .dali import decoder_for

        dali = decoder_for(embedder, max_batch=chunk_size, to_torch=feeder is not None, num_threads=max(1, num_workers))
        gpu = "dali"
    key = "dali" if dali is not None else "gpu"

    def finish(chunk: _Chunk, feats: np.ndarray | None):
        errors = dict(chunk.errors)
        if chunk.chips is None:
            return chunk.index, np.zeros((0, embedder.dim), np.float32), errors, np.zeros(0, np.float32)
        feats = np.asarray(feats, np.float32)
        if feats.shape != (len(chunk.index), embedder.dim):
            raise EmbedderError(f"embedder returned {feats.shape}, expected ({len(chunk.index)}, {embedder.dim})")
        good = np.isfinite(feats).all(axis=1)
        if not good.all():
            for i in chunk.index[~good]:
                errors[int(i)] = "embedder produced non-finite values for this image"
        px = np.asarray(chunk.face_px, np.float32).reshape(len(chunk.index))
        return chunk.index[good], feats[good], dict(sorted(errors.items())), px[good]

    def chunks() -> Iterator[_Chunk]:
        if num_workers <= 0:
            for r in ranges:
                yield _prepare_chunk(embedder, load, paths, records, r, gpu)
            return
        if procs:
            pool = _process_pool(embedder, num_workers)

            def submit(r: range) -> Future:
                sub = None if records is None else list(records[r.start : r.stop])
                return pool.submit(_proc_prepare, r.start, list(paths[r.start : r.stop]), sub, gpu)
        else:
            pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="facecluster-embed")

            def submit(r: range) -> Future:
                return pool.submit(_prepare_chunk, embedder, load, paths, records, r, gpu)

        with pool:
            inflight: deque[Future] = deque()
            todo = iter(ranges)
            try:
                for r in todo:
                    inflight.append(submit(r))
                    if len(inflight) >= num_workers + 2:
                        break
                # set up the network (dlib: import torch, parse the .dat) while the workers
                # prepare the first chunks rather than before they start
                warmup = getattr(embedder, "warmup", None)
                if callable(warmup):
                    t0 = time.perf_counter()
                    warmup()
                    t["warmup"] = time.perf_counter() - t0
                while inflight:
                    t0 = time.perf_counter()
                    c = inflight.popleft().result()
                    t["wait"] += time.perf_counter() - t0
                    nxt = next(todo, None)
                    if nxt is not None:
                        inflight.append(submit(nxt))
                    yield c
            finally:
                for f in inflight:
                    f.cancel()

    try:
        with bar(f"embedding ({embedder.name})", n, enabled=progress) as b:
            for c in chunks():
                t0 = time.perf_counter()
                if c.gpu_index:
                    c = _gpu_decode_chunk(embedder, load, paths, records, c, dali)
                    t[f"{key}_decode"] = t.get(f"{key}_decode", 0.0) + time.perf_counter() - t0
                    t[f"{key}_images"] = t.get(f"{key}_images", 0) + c.n_gpu
                    t0 = time.perf_counter()
                t["decode"] += c.t_decode
                t["prepare"] += c.t_prepare
                if c.chips is None:
                    res = [(c, None)]
                    if feeder is not None and feeder.pending is not None:
                        res.insert(0, feeder.flush())
                elif feeder is not None:
                    r = feeder.submit(c)
                    res = [r] if r is not None else []
                else:
                    res = [(c, embedder.embed_batch(c.chips))]
                t["network"] += time.perf_counter() - t0
                for ch, feats in res:
                    b.advance(ch.n)
                    yield finish(ch, feats)
            if feeder is not None:
                t0 = time.perf_counter()
                r = feeder.flush()
                t["network"] += time.perf_counter() - t0
                if r is not None:
                    b.advance(r[0].n)
                    yield finish(*r)
    finally:
        t["wall"] = time.perf_counter() - t_start
        if timings is not None:
            timings.update(t)


def embed_records(
    embedder: Embedder,
    paths: Sequence[str],
    records: Sequence[dict] | None = None,
    *,
    num_workers: int | None = None,
    progress: bool | None = False,
    chunk_size: int | None = None,
    load: Loader | None = None,
    workers: str | None = None,
) -> EmbedResult:
    """Embed every record of a shard; see :func:`iter_embed_chunks` for the parameters.

    Returns
    -------
    EmbedResult
        ``features`` (M, D) float32 raw descriptors of the records that worked, ``index`` (M,) int64
        their positions in ``paths`` (increasing), ``errors`` {position: message} for all others
        (M + len(errors) == len(paths)), ``timings`` seconds per step, ``face_px`` (M,) each
        face's inter-ocular distance in its file's pixels.
    """
    timings: dict[str, float] = {}
    idx, feats, errors, px = [], [], {}, []
    for i, f, e, p in iter_embed_chunks(
        embedder, paths, records, num_workers=num_workers, chunk_size=chunk_size, progress=progress, load=load,
        timings=timings, workers=workers,
    ):
        idx.append(i)
        feats.append(f)
        errors.update(e)
        px.append(p)
    dim = int(embedder.dim)
    index = np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64)
    features = np.concatenate(feats).astype(np.float32, copy=False) if feats else np.zeros((0, dim), np.float32)
    assert len(index) + len(errors) == len(paths), "every record must yield a feature or an error"
    face_px = np.concatenate(px).astype(np.float32) if px else np.zeros(0, np.float32)
    return EmbedResult(features, index, dict(sorted(errors.items())), timings, face_px)


__all__ = [
    "EmbedResult", "embed_records", "iter_embed_chunks", "default_num_workers", "default_cpu_threads", "usable_cpus",
    "use_processes",
]
