"""Exact k-nearest-neighbour search on L2-normalised features (cosine similarity).

Conventions (those of learn-to-cluster and Ada-NETS, so their steps port unchanged):

* ``k`` counts the query itself: row ``i`` lists ``min(k, N)`` items sorted by similarity,
  descending, normally with ``i`` first. Asking for more neighbours than there are faces is
  not an error (the originals crashed on it): ``k`` is capped at ``N``.
* Similarities are raw inner products: negative cosines are kept (the originals asserted).
* Ties are broken by the lower id, so results are deterministic across backends.

Backends: ``faiss`` (``IndexFlatIP``; on GPU when faiss was built with it) and ``torch``
(blocked matmul + topk, on CPU or CUDA). ``auto`` picks faiss-GPU, then torch on CUDA; on CPU,
faiss below ``TORCH_CPU_MIN_N`` faces and torch from there on (measured on a 2-core box,
k=80: 20k x 128-d faiss 2.5 s / torch 3.1 s; 50k 13.0 / 9.4 s; 100k 50.3 / 38.6 s; 100k x 256-d
91.2 / 46.8 s — docs/benchmarks.md §2). Both are exact; ties are ordered the same way.
"""

from __future__ import annotations

import logging

import numpy as np

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


#: from this many database faces on, ``auto`` on CPU uses the torch backend (see module doc)
TORCH_CPU_MIN_N = 30_000


def resolve_backend(backend: str = "auto", device: str = "cpu", n: int | None = None) -> str:
    """The backend ``knn`` will use for ``n`` database faces on ``device``."""
    faiss = _faiss()
    if backend == "auto":
        if device.startswith("cuda"):
            return "faiss-gpu" if faiss is not None and _faiss_gpus(faiss) > 0 else "torch"
        if n is not None and n >= TORCH_CPU_MIN_N:
            return "torch"
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
    order = np.lexsort((ids, -sims), axis=1)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


def knn(
    x: np.ndarray,
    k: int,
    *,
    normalize: bool = True,
    backend: str = "auto",
    device: str = "cpu",
    block: int = 4096,
    query: np.ndarray | None = None,
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
    if be == "torch":
        # bound the (block × N) score matrix to ~256 MB so memory stays linear in N
        sims, ids = _knn_torch(x, q, kk, device, max(64, min(block, (1 << 26) // max(n, 1))))
    else:
        # faiss tiles the score matrix itself (bounded memory); small query blocks only slow
        # it down (100k x 128-d on 2 CPU cores: 155 s with 671-query blocks, 50 s with 4096)
        sims, ids = _knn_faiss(x, q, kk, gpu=be == "faiss-gpu", block=block)
    return _sort_ties(sims, ids)


def _knn_faiss(x, q, k, gpu: bool, block: int):
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
    return sims, ids


def _knn_torch(x, q, k, device: str, block: int):
    import torch

    dev = torch.device(device)
    with torch.inference_mode():
        xt = torch.from_numpy(x).to(dev)
        sims = np.empty((q.shape[0], k), np.float32)
        ids = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], block):
            qt = torch.from_numpy(q[s : s + block]).to(dev)
            # fp32 matmul without TF32 so CPU and GPU agree to float rounding
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                sc = qt @ xt.T
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev
            v, i = torch.topk(sc, k, dim=1, largest=True, sorted=True)
            sims[s : s + block] = v.cpu().numpy()
            ids[s : s + block] = i.cpu().numpy()
    return sims, ids
