"""Exact k-nearest-neighbour search on L2-normalised features (cosine similarity).

Conventions (those of learn-to-cluster and Ada-NETS, so their steps port unchanged):

* ``k`` counts the query itself: row ``i`` lists ``min(k, N)`` items sorted by similarity,
  descending, normally with ``i`` first. Asking for more neighbours than there are faces is
  not an error (the originals crashed on it): ``k`` is capped at ``N``.
* Similarities are raw inner products: negative cosines are kept (the originals asserted).
* Ties are broken by the lower id, so results are deterministic across backends.

Backends: ``faiss`` (``IndexFlatIP``; on GPU when faiss was built with it) and ``torch``
(blocked matmul + topk, on CPU or CUDA). ``auto`` picks faiss-GPU, then torch on CUDA; on CPU,
faiss whenever it is installed (measured on a 2-core box with faiss-cpu 1.15, k=80: 100k x 128-d
faiss 16 s / torch 21 s, 100k x 256-d 27 / 35 s, 50k x 128-d 4.5 / 5.7 s; docs/benchmarks.md §2).
Both are exact; ties are ordered the same way.
On CUDA the torch backend searches candidates on fp16 scores and re-ranks them exactly in
fp32, with a proven error bound deciding which rows must be searched again in fp32
(``_knn_torch_fp16``; issue 12, docs/benchmarks/cluster_scale.md).
"""

from __future__ import annotations

import logging

import numpy as np

from .progress import bar

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation, float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, eps)


def _faiss():
    try:
        import faiss  # noqa: F401

        return faiss
    except ImportError:
        return None


def _faiss_gpus(faiss) -> int:
    try:
        return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # pragma: no cover - broken CUDA runtime
        return 0


def resolve_backend(backend: str = "auto", device: str = "cpu", n: int | None = None) -> str:
    """The backend ``knn`` will use for ``n`` database faces on ``device``."""
    faiss = _faiss()
    if backend == "auto":
        if device.startswith("cuda"):
            return "faiss-gpu" if faiss is not None and _faiss_gpus(faiss) > 0 else "torch"
        # faiss on CPU at every size: with faiss-cpu 1.15 it is the faster one at 100k too
        # (docs/benchmarks.md §2; an earlier faiss lost to torch from ~30k faces on)
        return "faiss" if faiss is not None else "torch"
    if backend in ("faiss", "faiss-gpu") and faiss is None:
        raise RuntimeError("knn backend 'faiss' requested but faiss is not installed (pip install faiss-cpu)")
    if backend == "faiss-gpu" and _faiss_gpus(faiss) == 0:
        raise RuntimeError("knn backend 'faiss-gpu' requested but faiss sees no GPU")
    if backend not in ("faiss", "faiss-gpu", "torch"):
        raise ValueError(f"unknown knn backend {backend!r} (auto, faiss, faiss-gpu, torch)")
    return backend


def _sort_ties(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Order by (-sim, id) so that equal similarities come out in id order whatever the backend.
    # Rows come sorted by similarity already, so only rows holding an exact tie need the sort
    # (a full lexsort of a 1M x 80 list took longer than the search itself on 16 cores).
    tied = np.nonzero((sims[:, 1:] == sims[:, :-1]).any(axis=1))[0] if sims.shape[1] > 1 else np.zeros(0, np.int64)
    if len(tied):
        s, i = sims[tied], ids[tied]
        order = np.lexsort((i, -s), axis=1)
        sims[tied], ids[tied] = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return sims, ids


def knn(
    x: np.ndarray,
    k: int,
    *,
    normalize: bool = True,
    backend: str = "auto",
    device: str = "cpu",
    block: int = 4096,
    query: np.ndarray | None = None,
    progress: bool = False,
    description: str = "kNN",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product kNN.

    Parameters
    ----------
    x : (N, D) float features (the database; also the queries unless ``query`` is given).
    k : neighbours per row, counting the query itself; capped at N.
    normalize : L2-normalise rows first (cosine similarity).
    backend : "auto" | "faiss" | "faiss-gpu" | "torch".
    device : "cpu" or "cuda[:i]" (used by the torch backend and by "auto").
    query : optional (Q, D) queries searched against ``x``.
    block : query rows per block of the CPU searches (on CUDA it follows the free GPU memory).
    progress : a progress bar over the query rows (:func:`facecluster.progress.bar`: shown only
        on a terminal), labelled ``description``; the search of 1M faces takes tens of minutes on
        a CPU.

    Returns
    -------
    sims : (Q, k') float32, descending similarities, k' = min(k, N).
    ids : (Q, k') int64 neighbour ids into ``x``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {x.shape}")
    n = x.shape[0]
    if normalize:
        x = l2_normalize(x)
    q = x if query is None else np.ascontiguousarray(l2_normalize(query) if normalize else query, dtype=np.float32)
    kk = int(min(max(k, 0), n))
    if kk == 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], kk), np.float32), np.zeros((q.shape[0], kk), np.int64)
    be = resolve_backend(backend, device, n)
    with bar(description, q.shape[0], enabled=progress) as pb:
        if be == "torch":
            if device.startswith("cuda"):
                sims, ids = _knn_torch_fp16(x, q, kk, device, advance=pb.advance)
            else:
                # bound the (block × N) score matrix to ~256 MB so memory stays linear in N
                sims, ids = _knn_torch(x, q, kk, device, max(64, min(block, (1 << 26) // max(n, 1))), advance=pb.advance)
        else:
            # faiss tiles the score matrix itself (bounded memory); small query blocks only slow
            # it down (100k x 128-d on 2 CPU cores: 155 s with 671-query blocks, 50 s with 4096)
            sims, ids = _knn_faiss(x, q, kk, gpu=be == "faiss-gpu", block=block, advance=pb.advance)
    return _sort_ties(sims, ids)


def knn_within(
    x: np.ndarray, k: int, groups: np.ndarray | None = None, *, normalize: bool = True, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn` with every row's neighbours taken from its own group only.

    Training pools several sets (crop styles, sources); at inference a batch is one source, so
    each set is searched on its own. ``groups`` (N,) labels the rows of one group (None: one
    group, plain :func:`knn`); every group needs at least ``k`` rows, so all rows get (N, k).

    Returns
    -------
    sims, ids : (N, k) as :func:`knn`, ids into ``x``.
    """
    if groups is None:
        return knn(x, k, normalize=normalize, device=device)
    groups = np.asarray(groups)
    if groups.shape != (len(x),):
        raise ValueError(f"groups must have shape ({len(x)},), got {groups.shape}")
    sims = np.empty((len(x), k), np.float32)
    ids = np.empty((len(x), k), np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) < k:
            raise ValueError(f"group {g!r} has {len(rows)} rows, fewer than k={k}")
        s, i = knn(x[rows], k, normalize=normalize, device=device)
        sims[rows], ids[rows] = s, rows[i]
    return sims, ids


def _knn_faiss(x, q, k, gpu: bool, block: int, advance=None):
    faiss = _faiss()
    index = faiss.IndexFlatIP(x.shape[1])
    if gpu:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
    index.add(x)
    sims = np.empty((q.shape[0], k), np.float32)
    ids = np.empty((q.shape[0], k), np.int64)
    step = max(block, 1)
    for s in range(0, q.shape[0], step):
        d, i = index.search(q[s : s + step], k)
        sims[s : s + step], ids[s : s + step] = d, i
        if advance is not None:
            advance(len(d))
    return sims, ids


def _knn_torch(x, q, k, device: str, block: int, chunk: int = 4096, advance=None):
    import torch

    dev = torch.device(device)
    with torch.inference_mode():
        xt = torch.from_numpy(x).to(dev)
        n = xt.shape[0]
        sims = np.empty((q.shape[0], k), np.float32)
        ids = np.empty((q.shape[0], k), np.int64)
        # one score buffer for every block, filled a slice of database rows at a time: a fresh
        # (block x N) product per block spent as long faulting in its pages as multiplying
        # (100k x 128-d on 2 CPU cores: 31-42 s -> 21 s, bit-identical scores and neighbours)
        rows = min(block, q.shape[0])
        buf = torch.empty((rows, n), dtype=torch.float32, device=dev)
        top_v = torch.empty((rows, k), dtype=torch.float32, device=dev)
        top_i = torch.empty((rows, k), dtype=torch.int64, device=dev)
        # fp32 matmul without TF32 so CPU and GPU agree to float rounding
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            for s in range(0, q.shape[0], block):
                qt = torch.from_numpy(q[s : s + block]).to(dev)
                m = qt.shape[0]
                sc, v, i = buf[:m], top_v[:m], top_i[:m]
                for c in range(0, n, chunk):
                    torch.mm(qt, xt[c : c + chunk].T, out=sc[:, c : c + chunk])
                torch.topk(sc, k, dim=1, largest=True, sorted=True, out=(v, i))
                sims[s : s + m] = v.cpu().numpy()
                ids[s : s + m] = i.cpu().numpy()
                if advance is not None:
                    advance(m)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    return sims, ids


#: bound on |fp16 score - exact score| for unit vectors: fp16 rounding of both inputs
#: (2·2⁻¹¹·Σ|aᵢbᵢ| ≤ 2⁻¹⁰), fp16 rounding of the output (≤ 2⁻¹¹ for |s| ≤ 2), fp32 accumulation
#: (≤ D·2⁻²⁴, 3e-5 at 512-d) and subnormal inputs (< 1e-6) sum to 0.00154; 0.002 leaves slack
FP16_SCORE_ERR = 2e-3
#: candidates kept from the fp16 pass per query: k + max(k, FP16_MARGIN). Measured on synthetic
#: dlib-like faces (bench/cluster_scale.py), rows left unproven with k + k candidates: 0.1 % at
#: 200k (k = 80), 0 % for k = 121 / 160; with k + 48: 16 % at 200k.
FP16_MARGIN = 48


def _gpu_block(n: int, dev, bytes_per_score: int) -> int:
    """Query rows per block: the score block and topk's temporaries within ~1/8 of the free
    GPU memory, 64..8192 rows (1M faces on an H200: ~4000 rows); 256 rows off a GPU."""
    import torch

    if dev.type != "cuda":
        return 256
    free, _ = torch.cuda.mem_get_info(dev)
    return int(max(64, min(8192, (free // 8) // max(n * bytes_per_score * 2, 1))))


def _knn_torch_fp16(x, q, k, device: str, precision: str = "fp16", advance=None):
    """Exact kNN on a GPU: a candidate search on fp16 scores, then an exact fp32 re-rank.

    Why: at 1M faces the search is a 1M x 1M score matrix per method (twice for GCN-V+E and
    Ada-NETS, once on 512-d features); fp16 halves the bytes topk reads and runs the product
    on tensor cores. Exactness is kept by a bound, not by hope: every fp16 score is within
    ``FP16_SCORE_ERR`` of the exact one (unit vectors), so when a row's k-th exact similarity
    among its ``2k`` candidates exceeds the lowest candidate's fp16 score by more
    than that bound, no face outside the candidates can belong to the top k (a tie with
    a lower id outside included, as the comparison is strict); rows where this
    is not proven are searched again in plain fp32. The result is the fp32 search's, up to
    float rounding of the similarities (a different summation order).

    ``precision="fp32"``, or features that are not unit vectors (``normalize=False`` with
    raw features): the plain fp32 search only (no TF32). Runs on any torch device (the tests
    run it on the CPU); ``knn`` uses it on CUDA.
    """
    import torch

    dev = torch.device(device)
    n, nq = x.shape[0], q.shape[0]
    kc = min(n, k + max(k, FP16_MARGIN))
    # the error bound needs unit vectors (1e-3 slack: float32 normalisation)
    unit = bool(np.abs(np.einsum("ij,ij->i", x, x) - 1.0).max() < 1e-3) and bool(
        q is x or np.abs(np.einsum("ij,ij->i", q, q) - 1.0).max() < 1e-3
    )
    use16 = precision == "fp16" and kc < n and unit
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    prev_red = torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
    # fp32 products without TF32 (CPU and GPU agree to float rounding); fp16 products with
    # fp32 accumulation (the error bound above assumes it)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    try:
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(dev)
            qt_all = xt if q is x else torch.from_numpy(q).to(dev)
            out_s = torch.empty((nq, k), dtype=torch.float32, device=dev)
            out_i = torch.empty((nq, k), dtype=torch.int64, device=dev)
            if not use16:
                step = _gpu_block(n, dev, 4)
                for s in range(0, nq, step):
                    v, i = torch.topk(qt_all[s : s + step] @ xt.T, k, dim=1, largest=True, sorted=True)
                    out_s[s : s + step], out_i[s : s + step] = v, i
                    if advance is not None:
                        advance(len(v))
                return out_s.cpu().numpy(), out_i.cpu().numpy()
            xh = xt.half()
            qh = xh if q is x else qt_all.half()
            redo = []
            step = _gpu_block(n, dev, 2)
            for s in range(0, nq, step):
                qb = qt_all[s : s + step]
                av, ai = torch.topk(qh[s : s + step] @ xh.T, kc, dim=1, largest=True, sorted=True)
                # exact fp32 scores of the candidates
                ex = torch.bmm(xt[ai], qb.unsqueeze(2)).squeeze(2)
                # order by (-exact sim, id): sort by id first, then a stable sort by similarity
                oi = torch.argsort(ai, dim=1)
                ai, ex = ai.gather(1, oi), ex.gather(1, oi)
                os_ = torch.sort(ex, dim=1, descending=True, stable=True).indices
                ai, ex = ai.gather(1, os_), ex.gather(1, os_)
                out_s[s : s + step], out_i[s : s + step] = ex[:, :k], ai[:, :k]
                # proven when the k-th exact similarity beats anything outside the candidates
                bad = ~(ex[:, k - 1] > av[:, -1].float() + FP16_SCORE_ERR)
                if bool(bad.any()):
                    redo.append(torch.nonzero(bad).squeeze(1) + s)
                if advance is not None:
                    advance(len(qb))
            if redo:
                rows = torch.cat(redo)
                step = _gpu_block(n, dev, 4)
                for s in range(0, len(rows), step):
                    r = rows[s : s + step]
                    v, i = torch.topk(qt_all[r] @ xt.T, k, dim=1, largest=True, sorted=True)
                    out_s[r], out_i[r] = v, i
                log.debug("knn fp16: %d of %d rows re-searched in fp32", len(rows), nq)
            return out_s.cpu().numpy(), out_i.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = prev_red
