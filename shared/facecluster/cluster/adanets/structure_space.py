"""Ada-NETS structure space: k-reciprocal re-ranking of kNN lists, vectorised with scipy.sparse.

The original (``tool/struct_space.py``) builds Python ``set`` objects node by node in a
process pool. Here every set family is one sparse boolean matrix whose row ``i`` is node
``i``'s set, and each step is a (row-blocked) sparse product:

* ``K[i, j] = 1`` iff ``j`` is among the first ``k`` kNN ids of ``i`` (self included);
* k-reciprocal sets ``R = K ∧ Kᵀ`` and the half sets ``Rh`` from the first ``k // 2`` ids;
* overlap ``|Rh(j) ∩ R(i)| = (R Rhᵀ)[i, j]`` for the ``j ∈ R(i)``; ``Rh(j)`` joins ``R*(i)``
  when the overlap is at least ⅔ of ``|Rh(j)|``: ``R* = R ∨ (Accept · Rh)``;
* ``|R*(i) ∩ R*(j)| = (R* R*ᵀ)[i, j]``, read only at the (i, j) pairs of the kNN lists.

Row blocks bound the memory of each product by (block rows) × (their two-hop reach), so the
peak stays linear in N·k for clustered data. Everything is integer arithmetic up to the final
float64 mix, so the result is exactly reproducible.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["reciprocal_sets", "expanded_sets", "structure_space", "max_q_targets"]

#: rows per block in the sparse products (bounds the temporary product size)
_BLOCK = 8192


def _membership(ids: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """(N, k') ids → (N, N) boolean CSR with row i = the set of its first k ids."""
    k = min(k, ids.shape[1])
    sub = ids[:, :k]
    rows = np.repeat(np.arange(ids.shape[0], dtype=np.int64), k)
    cols = sub.reshape(-1).astype(np.int64)
    keep = cols >= 0
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.int32), (rows[keep], cols[keep])), shape=(n, n))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def reciprocal_sets(ids: np.ndarray, k: int) -> sp.csr_matrix:
    """k-reciprocal sets R(i, k) = {j ∈ topk(i) : i ∈ topk(j)} as an (N, N) 0/1 int32 CSR.

    ids : (N, k') kNN ids, self included (normally first). Includes i itself when i is in its
    own top-k, as in the original.
    """
    n = ids.shape[0]
    K = _membership(ids, k, n)
    R = K.multiply(K.T).tocsr()
    R.data[:] = 1
    R = R.astype(np.int32)
    R.sort_indices()
    return R


def expanded_sets(R: sp.csr_matrix, Rh: sp.csr_matrix) -> sp.csr_matrix:
    """R*(i) = R(i) ∪ ⋃ {Rh(j) : j ∈ R(i), |Rh(j) ∩ R(i)| ≥ ⅔·|Rh(j)|} as 0/1 int32 CSR."""
    n = R.shape[0]
    hsize = np.diff(Rh.indptr).astype(np.int64)
    coo = R.tocoo()
    order = np.lexsort((coo.col, coo.row))
    ri, rj = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)
    # overlap |R(i) ∩ Rh(j)| for every j ∈ R(i); integer form of `overlap >= |Rh(j)| * 2 / 3`
    # (identical decisions, no float rounding)
    ov = _pair_intersections(R, Rh, ri, rj)
    ok = 3 * ov >= 2 * hsize[rj]
    acc = sp.csr_matrix((np.ones(int(ok.sum()), np.int32), (ri[ok], rj[ok])), shape=(n, n))
    blocks = []
    for s in range(0, n, _BLOCK):
        e = min(s + _BLOCK, n)
        blk = (R[s:e] + acc[s:e] @ Rh).tocsr()
        blk.data[:] = 1
        blocks.append(blk)
    if not blocks:
        return sp.csr_matrix((n, n), dtype=np.int32)
    Rs = sp.vstack(blocks, format="csr").astype(np.int32)
    Rs.sort_indices()
    return Rs


def default_workers() -> int:
    """Threads for ``_pair_intersections``: 1 below 8 usable cores, else min(8, cores // 2)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores < 8 else min(8, cores // 2)


def _pair_intersections(A: sp.csr_matrix, B: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray,
                         block: int | None = None, workers: int | None = None) -> np.ndarray:
    """|A(rows[p]) ∩ B(cols[p])| for many pairs p; ``rows`` must be non-decreasing.

    Per block of query rows, the A-rows are scattered into a dense boolean (rows × N) table;
    the members of each B(cols[p]) are then looked up in it with one gather and summed per
    pair. Work is Σ_p |B(cols[p])| — only the requested pairs, unlike a full sparse product —
    and memory per block is (block × N) bytes + the block's gathered members. Blocks run on
    ``workers`` threads (numpy releases the GIL; default ``default_workers()``), each with its own table; the
    result does not depend on the number of threads.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    n = A.shape[1]
    out = np.zeros(len(rows), np.int64)
    if len(rows) == 0:
        return out
    # one thread by default on small machines: on the 2-core dev box two threads were slower
    # (memory-bound gathers); on a GPU node's 16 cores the 1M-face structure space is the
    # longest CPU step of Ada-NETS, so there blocks run on up to 8 threads (issue 12)
    workers = int(workers or default_workers())
    if block is None:
        # 128 rows measured fastest (the block's gathered members, ~128·k·|R*| ints, stay in
        # cache); the dense table, block × N bytes, is capped at 8 MiB
        block = int(np.clip(2**23 // max(n, 1), 16, 128))
    a_ptr, a_idx = A.indptr, A.indices
    b_ptr, b_idx = B.indptr.astype(np.int64), B.indices
    b_len = np.diff(b_ptr)
    bounds = np.searchsorted(rows, np.arange(0, A.shape[0] + block, block))
    local = threading.local()

    def run(s0: int, p0: int, p1: int) -> None:
        if p0 == p1:
            return
        table = getattr(local, "table", None)
        if table is None:
            table = local.table = np.zeros((min(block, A.shape[0]), n), bool)
        e0 = min(s0 + block, A.shape[0])
        lo, hi = a_ptr[s0], a_ptr[e0]
        trow = np.repeat(np.arange(e0 - s0), np.diff(a_ptr[s0 : e0 + 1]))
        table[trow, a_idx[lo:hi]] = True
        r, c = rows[p0:p1] - s0, cols[p0:p1]
        lens = b_len[c]
        ends = np.cumsum(lens)
        tot = int(ends[-1])
        # flat positions of every member of every B(c): start of its run + offset within the run
        pos = np.repeat(b_ptr[c] - (ends - lens), lens) + np.arange(tot)
        flat = np.repeat(r * n, lens) + b_idx[pos]
        # per-pair sums of the hits as differences of one running count
        cs = np.concatenate(([0], np.cumsum(table.ravel()[flat], dtype=np.int64)))
        out[p0:p1] = cs[ends] - cs[ends - lens]
        table[trow, a_idx[lo:hi]] = False

    jobs = [(s0, int(p0), int(p1)) for s0, p0, p1 in zip(range(0, A.shape[0], block), bounds[:-1], bounds[1:])]
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            run(*j)
    else:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda j: run(*j), jobs))
    return out


def structure_space(
    ids: np.ndarray, sims: np.ndarray, k: int = 80, lamb: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each node's first k kNN neighbours by the structure-space distance.

    d_ss(i, j) = (1 − λ)·(1 − J(R*(i), R*(j))) + λ·(1 − cos(i, j)), sorted ascending (stable,
    so ties keep the kNN order, as Python's ``sorted`` in the original does).

    Parameters
    ----------
    ids : (N, k') int kNN ids, self included (first), k' ≥ min(k, N).
    sims : (N, k') float cosine similarities matching ``ids``.
    k : neighbourhood size (paper: 80); the half sets use k // 2.
    lamb : weight λ of the cosine distance (paper: 0.3).

    Returns
    -------
    ids_ss : (N, k'') int64 re-ranked ids, k'' = min(k, k').
    d_ss : (N, k'') float32 structure-space distances, ascending.
    """
    n = ids.shape[0]
    kk = int(min(k, ids.shape[1]))
    if n == 0 or kk == 0:
        return np.zeros((n, kk), np.int64), np.zeros((n, kk), np.float32)
    ids = np.asarray(ids[:, :kk], dtype=np.int64)
    # 1 − cos rounded to float32 first, as the original reads it from its float32 D.npy: keeps
    # exact ties (and so the re-ranked order) identical to the original's
    dcos = (1.0 - np.asarray(sims[:, :kk], dtype=np.float32)).astype(np.float64)
    R = reciprocal_sets(ids, kk)
    Rh = reciprocal_sets(ids, kk // 2)
    Rs = expanded_sets(R, Rh)
    size = np.diff(Rs.indptr).astype(np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), kk)
    inter = _pair_intersections(Rs, Rs, rows, ids.reshape(-1)).reshape(n, kk)
    union = size[:, None] + size[ids] - inter
    jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    d = (1.0 - lamb) * (1.0 - jac) + lamb * dcos
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(d, order, 1).astype(np.float32)


def max_q_targets(ids_ss: np.ndarray, labels: np.ndarray, beta: float = 0.5) -> np.ndarray:
    """Ground-truth neighbour counts k* for AND training (``tool/max_Q_ind.py``, vectorised).

    For each node i and each prefix length k = 1..K of its structure-space list:
    P(k) = same-label count / k (position 0 counts as positive), R(k) = same-label count /
    |class of i|, Q(k) = F_β(P, R); k* = the first argmax.

    ids_ss : (N, K) int re-ranked ids; labels : (N,) ints. Returns (N,) int64 in 1..K.
    """
    n, K = ids_ss.shape
    if n == 0 or K == 0:
        return np.ones(n, np.int64)
    labels = np.asarray(labels)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    hit = labels[ids_ss] == labels[:, None]
    hit[:, 0] = True
    tp = np.cumsum(hit, axis=1, dtype=np.float64)
    p = tp / np.arange(1, K + 1)[None, :]
    r = tp / counts[inv][:, None]
    b2 = beta * beta
    q = (1 + b2) * p * r / (b2 * p + r)
    return (q.argmax(axis=1) + 1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# the same on a GPU (issue 12): at 1M faces the scipy/numpy version above is the longest step of
# Ada-NETS (21 s per 100k faces on one core of the H200 node). Sets are kept as one sorted
# int64 array of keys ``row * N + member`` (a CSR pattern without the pointers); membership is
# a binary search in it, and every count is over the requested pairs only, as above.
# --------------------------------------------------------------------------------------------
def _t_contains(keys, q):
    import torch

    if keys.numel() == 0:
        return torch.zeros(q.shape, dtype=torch.bool, device=q.device)
    pos = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
    return keys[pos] == q


def _t_ptr(keys, n: int):
    import torch

    return torch.searchsorted(keys, torch.arange(n + 1, device=keys.device, dtype=torch.int64) * n)


def _t_reciprocal(ids, k: int, n: int):
    """Sorted keys of R(i, k) (see ``reciprocal_sets``)."""
    import torch

    k = min(k, ids.shape[1])
    rows = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(k)
    cols = ids[:, :k].reshape(-1)
    ok = cols >= 0
    K = torch.unique(rows[ok] * n + cols[ok])  # sorted, duplicates collapsed
    return K[_t_contains(K, (K % n) * n + K // n)]


def _t_expand(ptr, keys, n: int, a, sel=None, chunk: int = 1 << 26):
    """For pairs p, yield (pair index, member) for every member of set a[p] (keys/ptr), in chunks
    of at most ~``chunk`` members (bounded GPU memory)."""
    import torch

    lens = ptr[a + 1] - ptr[a]
    cum = torch.cumsum(lens, 0)
    start, npairs = 0, len(a)
    while start < npairs:
        base = int(cum[start - 1]) if start else 0
        end = int(torch.searchsorted(cum, torch.tensor([base + chunk], device=cum.device), right=True)[0])
        end = max(end, start + 1)
        ll = lens[start:end]
        tot = int(ll.sum())
        pair = torch.arange(end - start, device=a.device).repeat_interleave(ll, output_size=tot)
        first = torch.cumsum(ll, 0) - ll
        offs = torch.arange(tot, device=a.device) - first[pair]
        members = keys[ptr[a[start:end]][pair] + offs] % n
        yield start, end, pair, members
        start = end


def _t_pair_intersections(ptr_a, keys_a, ptr_b, keys_b, n: int, rows, cols):
    """|A(rows[p]) ∩ B(cols[p])|: members of A(rows[p]) looked up in B(cols[p])."""
    import torch

    out = torch.zeros(len(rows), dtype=torch.int64, device=rows.device)
    for s, e, pair, m in _t_expand(ptr_a, keys_a, n, rows):
        hit = _t_contains(keys_b, cols[s:e][pair] * n + m)
        out[s:e] = torch.zeros(e - s, dtype=torch.int64, device=rows.device).index_add_(0, pair, hit.to(torch.int64))
    return out


def structure_space_torch(
    ids: np.ndarray, sims: np.ndarray, k: int = 80, lamb: float = 0.3, device: str = "cuda"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`structure_space` computed with torch on ``device``; identical output.

    Same sets, the same integer counts and the same float64 operations in the same order
    (one elementwise kernel each, so no fused multiply-add), and a stable sort: the re-ranked
    ids and distances equal the numpy version's exactly (tests/test_cluster_scale.py).
    ``ids`` must be >= 0 (kNN lists with k capped at N)."""
    import torch

    n = ids.shape[0]
    kk = int(min(k, ids.shape[1]))
    if n == 0 or kk == 0:
        return np.zeros((n, kk), np.int64), np.zeros((n, kk), np.float32)
    dev = torch.device(device)
    with torch.no_grad():
        t_ids = torch.from_numpy(np.ascontiguousarray(ids[:, :kk], dtype=np.int64)).to(dev)
        dcos = (1.0 - torch.from_numpy(np.ascontiguousarray(sims[:, :kk], dtype=np.float32)).to(dev)).to(torch.float64)
        R = _t_reciprocal(t_ids, kk, n)
        Rh = _t_reciprocal(t_ids, kk // 2, n) if kk // 2 else torch.zeros(0, dtype=torch.int64, device=dev)
        pR, pRh = _t_ptr(R, n), _t_ptr(Rh, n)
        # R*(i) = R(i) ∪ {Rh(j) : j ∈ R(i), 3·|R(i) ∩ Rh(j)| ≥ 2·|Rh(j)|}
        ri, rj = R // n, R % n
        hsize = pRh[1:] - pRh[:-1]
        ov = _t_pair_intersections(pRh, Rh, pR, R, n, rj, ri)  # members of Rh(j) found in R(i)
        ok = 3 * ov >= 2 * hsize[rj]
        ai, aj = ri[ok], rj[ok]
        parts = [R]
        for s, e, pair, m in _t_expand(pRh, Rh, n, aj):
            parts.append(ai[s:e][pair] * n + m)
        Rs = torch.unique(torch.cat(parts))
        del parts, R, Rh, ri, rj, ov, ok, ai, aj
        pRs = _t_ptr(Rs, n)
        size = pRs[1:] - pRs[:-1]
        rows = torch.arange(n, device=dev).repeat_interleave(kk)
        cols = t_ids.reshape(-1)
        # iterate over the smaller of the two sets of each pair (the count is symmetric)
        swap = size[rows] > size[cols]
        a, b = torch.where(swap, cols, rows), torch.where(swap, rows, cols)
        inter = _t_pair_intersections(pRs, Rs, pRs, Rs, n, a, b).view(n, kk)
        union = size[:, None] + size[t_ids] - inter
        interf, unionf = inter.to(torch.float64), union.to(torch.float64)
        jac = torch.where(union > 0, interf / torch.clamp(unionf, min=1.0), torch.zeros((), dtype=torch.float64, device=dev))
        d = (1.0 - lamb) * (1.0 - jac) + lamb * dcos
        d, order = torch.sort(d, dim=1, stable=True)
        return t_ids.gather(1, order).cpu().numpy(), d.to(torch.float32).cpu().numpy()
