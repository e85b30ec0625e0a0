"""Sparse graph utilities shared by the clustering methods (scipy.sparse, vectorised)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .knn import l2_normalize


def knn_to_affinity(
    ids: np.ndarray, sims: np.ndarray, th_sim: float = 0.0, *, n: int | None = None
) -> sp.csr_matrix:
    """kNN lists → symmetric affinity matrix (no self loops).

    Keeps edge (i, ids[i, c]) with weight ``sims[i, c]`` when ``sims >= th_sim`` and the
    neighbour is not ``i`` itself, then symmetrises with an elementwise maximum
    (learn-to-cluster ``fast_knns2spmat`` + ``build_symmetric_adj``).

    ids, sims : (N, k) arrays. Returns (N, N) float32 CSR.
    """
    n = ids.shape[0] if n is None else n
    rows = np.repeat(np.arange(ids.shape[0], dtype=np.int64), ids.shape[1])
    cols = ids.reshape(-1).astype(np.int64)
    vals = sims.reshape(-1).astype(np.float32)
    keep = (vals >= th_sim) & (cols != rows) & (cols >= 0)
    a = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))
    a.sum_duplicates()
    return a.maximum(a.T).tocsr()


def row_normalize(a: sp.spmatrix) -> sp.csr_matrix:
    """D⁻¹A with zero (or negative) row sums treated as 1."""
    a = sp.csr_matrix(a, dtype=np.float32)
    d = np.asarray(a.sum(axis=1)).reshape(-1)
    d[d <= 0] = 1.0
    return sp.diags((1.0 / d).astype(np.float32)).dot(a).tocsr()


def build_adjacency(ids: np.ndarray, sims: np.ndarray, th_sim: float = 0.0) -> sp.csr_matrix:
    """The GCN adjacency of both papers: affinity (max-sym) + I, row-normalised."""
    a = knn_to_affinity(ids, sims, th_sim)
    a = a + sp.eye(a.shape[0], dtype=np.float32, format="csr")
    return row_normalize(a)


def build_adjacency_torch(ids: np.ndarray, sims: np.ndarray, th_sim: float = 0.0, device: str = "cuda"):
    """:func:`build_adjacency` built with torch on ``device``, as a torch sparse CSR tensor.

    Why: at 1M faces x 80 neighbours scipy's COO→CSR, transpose and elementwise maximum run
    single-threaded on 80M entries; on a GPU the same is a sort and a segmented max.

    Same matrix as ``build_adjacency`` (then converted to torch), up to float rounding of the
    row sums: edges kept when ``sims >= th_sim``, not self, id >= 0; max-symmetrised with a
    missing reverse edge counting as 0 and zero results dropped (scipy's ``maximum``); + I;
    row-normalised. Assumes no id repeats within a row (true of kNN lists), where scipy would
    first sum the repeats.

    ids, sims : (N, k) arrays. Returns a (N, N) float32 ``torch.sparse_csr_tensor`` on ``device``.
    """
    import torch

    dev = torch.device(device)
    n, k = ids.shape
    with torch.no_grad():  # not inference_mode: callers may use the result outside it
        cols = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(dev).reshape(-1)
        vals = torch.from_numpy(np.ascontiguousarray(sims, dtype=np.float32)).to(dev).reshape(-1)
        rows = torch.arange(n, device=dev).repeat_interleave(k)
        keep = (vals >= th_sim) & (cols != rows) & (cols >= 0)
        r, c, v = rows[keep], cols[keep], vals[keep]
        # each edge in both directions; a position's value is the max over its copies, and
        # max(v, 0) when only one direction exists (the missing one counts as 0 in scipy)
        key = torch.cat([r * n + c, c * n + r])
        val = torch.cat([v, v])
        key, order = torch.sort(key)
        val = val[order]
        uniq, inv, cnt = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
        mx = torch.full((len(uniq),), -float("inf"), dtype=torch.float32, device=dev)
        mx = mx.scatter_reduce(0, inv, val, reduce="amax", include_self=True)
        mx = torch.where(cnt == 1, mx.clamp(min=0), mx)
        nz = mx != 0
        uniq, mx = uniq[nz], mx[nz]
        # + I (no self edges were kept), in key order
        diag = torch.arange(n, device=dev) * (n + 1)
        key = torch.cat([uniq, diag])
        val = torch.cat([mx, torch.ones(n, dtype=torch.float32, device=dev)])
        key, order = torch.sort(key)
        val = val[order]
        row, col = key // n, key % n
        d = torch.zeros(n, dtype=torch.float32, device=dev).index_add_(0, row, val)
        d = torch.where(d <= 0, torch.ones_like(d), d)
        val = val / d[row]
        crow = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        crow[1:] = torch.cumsum(torch.bincount(row, minlength=n), 0)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(crow, col, val, size=(n, n), check_invariants=False)


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph with edges (src[e], dst[e]).

    Returns (n,) int64 labels numbered by the smallest node id in each component
    (deterministic, independent of edge order)."""
    if n == 0:
        return np.zeros(0, np.int64)
    g = sp.csr_matrix((np.ones(len(src), np.int8), (np.asarray(src, np.int64), np.asarray(dst, np.int64))), shape=(n, n))
    _, lab = connected_components(g, directed=True, connection="weak")
    # renumber by first node of each component
    first = np.full(lab.max() + 1, n, np.int64)
    np.minimum.at(first, lab, np.arange(n))
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[lab].astype(np.int64)


def nearest_higher(
    ids: np.ndarray, sims: np.ndarray, conf: np.ndarray, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each node, its first kNN neighbour (in list order) with strictly higher confidence.

    Vectorised version of learn-to-cluster's ``confidence_to_peaks`` with max_conn=1.
    ``allowed`` (N, k) bool, optional: only these list entries may be chosen (e.g. the pairs
    that pass a similarity floor); None: every entry, as in the original.

    Returns
    -------
    peak : (N,) int64, neighbour id or -1 when none (a root).
    peak_sim : (N,) float32 similarity to that neighbour (-inf for roots).
    """
    n = ids.shape[0]
    if n == 0 or ids.shape[1] == 0:
        return np.full(n, -1, np.int64), np.full(n, -np.inf, np.float32)
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    higher = valid & (conf[safe] > conf[:, None]) & (safe != np.arange(n)[:, None])
    if allowed is not None:
        higher &= allowed
    has = higher.any(axis=1)
    first = higher.argmax(axis=1)
    rows = np.arange(n)
    peak = np.where(has, safe[rows, first], -1).astype(np.int64)
    psim = np.where(has, sims[rows, first], -np.inf).astype(np.float32)
    return peak, psim


def peaks_to_labels(peak: np.ndarray, peak_sim: np.ndarray, tau: float) -> np.ndarray:
    """Keep i→peak[i] edges with similarity > tau; connected components are the clusters."""
    n = len(peak)
    keep = (peak >= 0) & (peak_sim > tau)
    src = np.nonzero(keep)[0]
    return components(n, src, peak[src])


def _nearest_links(ids: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``top`` real neighbours of every face (self and -1 padding removed, order
    kept): a boolean (N, k) mask over ``ids`` and the row of each kept entry."""
    real = (ids >= 0) & (ids != np.arange(ids.shape[0])[:, None])
    take = real & (np.cumsum(real, axis=1) <= top)
    return take, np.nonzero(take)[0]


def _top_target(m: sp.coo_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each source cluster's most-voted target in a summed (source, target) vote matrix; ties go
    to the lower target id (deterministic). Returns rows, cols, votes and the entries' positions
    in ``m.data`` (to read a parallel matrix with the same pattern)."""
    order = np.lexsort((m.col, -m.data, m.row))
    r = m.row[order]
    sel = order[np.r_[True, r[1:] != r[:-1]]]
    return m.row[sel], m.col[sel], m.data[sel], sel


def _join_into(lab: np.ndarray, nc: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Relabel after joining cluster ``src[i]`` into ``dst[i]`` (cluster ids 0..nc-1).

    The joins must form a forest (each target before its source in one strict order), so following
    the pointers to a root terminates; returns labels renumbered 0.. in sorted root order."""
    parent = np.arange(nc)
    parent[src] = dst
    while True:  # pointer jumping: every cluster ends pointing at its root
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    return np.unique(parent[lab], return_inverse=True)[1].astype(np.int64)


def merge_fragments(
    labels: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray | None = None,
    *,
    min_sim: float = -np.inf,
    share: float = 0.75,
    min_links: float = 0.15,
    min_size: int = 1,
    max_rounds: int = 10,
    mutual: bool = True,
    lone_recip: int = 0,
    close_q: float | None = None,
    close_min_links: float = 0.05,
    close_margin: float = 0.0,
    open_frac: float | None = None,
    open_share: float = 0.3,
    open_margin: float = 0.02,
    open_q: float = 10.0,
    open_mutual: float | None = None,
    open_pair_share: float | None = None,
    open_lit: np.ndarray | None = None,
    open_lit_max: float | None = None,
    close_piece: float | None = None,
    tight_min_size: int | None = None,
    tight_margin: float = 0.02,
    tight_q: float = 10.0,
) -> np.ndarray:
    """Join each cluster to the bigger cluster that its members' kNN lists point into.

    A cluster A joins cluster B when, counting the kNN links of A's members that leave A
    (only links with similarity >= ``min_sim``: when k exceeds a small cluster's size, its
    members' lists must reach into *some* other cluster, and without a floor a small
    self-contained cluster would follow those forced links),

    * at least ``share`` of them land in B (B is A's clear first choice), and
    * those links make at least ``min_links`` of all of A's kNN slots (``|A| * k``), so
      that a big self-contained cluster that merely has B as its closest neighbour (say,
      two similar-looking relatives) stays apart, while a real fragment (the same person
      in sunglasses, a face split off in profile) joins,
    * B is strictly bigger than A (so joins form a forest: no cycles, no ping-pong).

    With ``mutual`` (default) two clusters that are each other's first choice also join when
    the *bigger* one passes both tests towards the smaller and the smaller passes the share
    test: a person split into two big halves, where the bigger half sends enough of its links
    across but the smaller one, having more of its neighbours inside itself, does not. Equal
    sizes join when both pass (into the lower id). Joins still follow a strict order (size,
    then id), so they still form a forest.

    Repeated until nothing changes (at most ``max_rounds``). Apart from the floor it is rank
    based: it uses which clusters the neighbours are in, not how similar they are.

    Parameters
    ----------
    labels : (N,) int, the partition to refine.
    ids : (N, k) int64 kNN ids (self may appear anywhere and is ignored; -1 = no neighbour).
    sims : (N, k) similarities of ``ids``; needed when ``min_sim`` is finite.
    min_sim : links below this similarity are not counted (they still count as slots).
    share, min_links : fractions in (0, 1], see above.
    min_size : clusters smaller than this never move (2: lone faces are left to
        :func:`attach_small`); they can still be joined by others.
    mutual : also join mutual first choices on the bigger one's links (above); False: the
        one-sided rule only (before issue 11's seventh session).
    lone_recip : a lone face (cluster of one) moves only when at least this many of its votes
        for the target are reciprocal (the target member lists it in its own first k too):
        a passer-by next to a person with hundreds of frames is in none of their lists, that
        person's odd frame usually is. 0 (the function's default): off.
    close_q, close_min_links, close_margin : *close halves* (None: off). Two clusters that are
        each other's first choice, each passing the share test and sending >= ``close_min_links``
        of its slots to the other, join when the median similarity of each one's links into the
        other is >= the ``close_q``-th percentile of *both* clusters' internal link similarities
        minus ``close_margin``: one person split in two big pieces (two scenes of a long video)
        is linked across as tightly as within, two look-alikes are not. Measured on a 718-face
        person split 377 / 300: 13-15 % of slots and 95-97 % of out-links across, cross median
        0.965-0.967 vs internal p10 0.954-0.956; two look-alike actresses: 1-3 % of slots,
        cross median 0.938-0.940 vs internal p10 0.948-0.950.
    close_piece : *close pieces* (None: off; needs ``close_q``). The smaller of two clusters that
        are each other's first choice joins the bigger when it sends >= ``close_piece`` of its
        strong leaving links and >= ``min_links`` of its slots there and the close-halves
        similarity test (``close_q``, ``close_margin``) holds both ways; the bigger needs only the
        smaller as its first choice: its slots barely reach a piece a tenth its size. A 48-px
        person that Ada-NETS left in pieces of 660 and 77 (the smaller sending 18 % of its slots
        and half its leaving links across, the bigger 1 % of its slots), or 476 and 168. The slot
        floor keeps two people apart whose whole clusters pass the similarity test at low
        resolution (they send each other 3-6 % of their slots).
    open_frac, open_share, open_margin, open_q : *open pieces* (None: off). A cluster A of >= 2
        faces whose strong links leaving it fill >= ``open_frac`` of its slots (it is mostly
        linked to faces outside itself) joins its first choice B, bigger than A, when >=
        ``open_share`` of those links go to B and their median similarity is >= the
        ``open_q``-th percentile of B's internal link similarities and >= A's own minus
        ``open_margin``: a person at low resolution that Infomap cut into a dozen pieces, each
        linked to the others about as tightly as within (one 37-px clip alone: pieces of 3-22
        faces sending 72-95 % of their slots out, 34-62 % of those to their first choice; the
        wrong joins of small photo clusters without the share test sent <= 18 %).
    open_mutual : *mutual open pieces* (None: off; needs ``open_frac``). Two open clusters of >= 2
        faces that are each other's first choice, each sending >= ``open_mutual`` of its strong
        leaving links to the other, join (the smaller into the bigger) when the open-piece test on
        similarities holds both ways: a structureless low-resolution clip whose pieces each send
        13-30 % to each of the others (no piece reaches ``open_share`` towards any one); once the
        two biggest pieces are one, the others reach it.
    open_pair_share : an open piece of exactly two faces that sends >= this share of its strong
        leaving links to its first choice skips the test against its own percentile (None: never;
        needs ``open_frac``): its one internal link is often two near-identical video frames (0.95-0.98),
        far above the person's spread, while it leans 44-72 % to the clip's big piece at that
        piece's level.
    open_lit, open_lit_max : (N,) float per-face amounts and a cap (either None: off). A cluster
        whose faces' mean ``open_lit`` is >= ``open_lit_max`` is neither an open piece nor the
        target of one (mutual ones included). Infomap passes how much the cohort's parts raised
        each face's level (:meth:`facecluster.cohort.Cohort.levels`, ``return_raise``): under a
        hard side light different people are uniformly alike, so the relative tests above, made
        for one person at low resolution, chained them round after round (a half of Extended Yale
        B: 1,091 of 1,207 faces in one cluster); low-resolution clips are raised by < 0.001 on
        average (docs/benchmarks/default_quality.md, "Side-lit faces in the default").
    tight_min_size, tight_margin, tight_q : *tight joins* (None: off). A cluster of >= ``tight_min_size``
        faces joins by the share rule (one-sided or mutual) only when the median similarity of its
        strong links into the target is >= the lower of the two clusters' ``tight_q``-th percentiles
        of internal strong links minus ``tight_margin`` (a cluster without internal strong links is
        not judged). The share rule counts ranks: a small cluster (fewer faces than ``k``) must send
        most of its slots out, and when its person's nearest other person is one look-alike, all of
        them go there. A person's real fragment links across about as tightly as its clusters do
        within (the weakest tenth); two people's whole clusters link well below both.

    Returns
    -------
    (N,) int64 labels; every input cluster either kept or wholly merged into another.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if open_lit is not None and np.shape(open_lit) != (n,):
        raise ValueError(f"open_lit must have shape ({n},), got {np.shape(open_lit)}")
    if n == 0 or ids.size == 0:
        return labels.astype(np.int64)
    k = ids.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = ids.reshape(-1).astype(np.int64)
    real = (cols >= 0) & (cols != rows)
    rows, cols = rows[real], cols[real]
    # slots per face that are real neighbours (k minus self, fewer when N is small)
    slots = np.bincount(rows, minlength=n)
    if (np.isfinite(min_sim) or close_q is not None) and sims is None:
        raise ValueError("merge_fragments: min_sim and close_q need sims")
    w = np.asarray(sims, np.float32).reshape(-1)[real] if sims is not None else None
    strong = w >= min_sim if np.isfinite(min_sim) else np.ones(len(rows), bool)
    lab = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    if lone_recip > 0:
        # a link i -> j is reciprocal when j's list holds i too; needed only for the links of
        # faces alone in the input (clusters only grow, so no other face is ever alone), checked
        # in blocks to bound the (links, k) comparison
        recip = np.zeros(len(rows), bool)
        alone = np.flatnonzero(np.bincount(lab, minlength=int(lab.max()) + 1)[lab[rows]] == 1)
        for s0 in range(0, len(alone), 1 << 18):
            blk = alone[s0 : s0 + (1 << 18)]
            recip[blk] = (ids[cols[blk]] == rows[blk, None]).any(axis=1)
    for _ in range(max_rounds):
        nc = int(lab.max()) + 1
        sizes = np.bincount(lab, minlength=nc)
        cap = np.bincount(lab, weights=slots, minlength=nc)
        a, b = lab[rows], lab[cols]
        # links below the floor neither vote nor dilute the vote: measured, counting them in
        # the share made small mixtures of few people merge less well (bench/scenarios.py)
        out = (a != b) & strong
        if not out.any():
            break
        m = sp.csr_matrix((np.ones(int(out.sum()), np.float64), (a[out], b[out])), shape=(nc, nc))
        m.sum_duplicates()
        leaving = np.asarray(m.sum(axis=1)).reshape(-1)
        m = m.tocoo()
        r, c, d, _ = _top_target(m)  # each cluster's most-voted target
        passes = (d >= share * leaving[r]) & (sizes[r] >= min_size)
        if lone_recip > 0:
            # a lone face moves only with >= lone_recip reciprocal links into its target: a
            # passer-by beside a long video's person is in none of that person's lists
            rm = sp.csr_matrix((recip[out].astype(np.float64), (a[out], b[out])), shape=(nc, nc))
            rc = np.asarray(rm[r, c]).reshape(-1)
            passes &= (sizes[r] > 1) | (rc >= lone_recip)
        if tight_min_size is not None:
            # the share rule's joins (one-sided and mutual) of clusters with their own structure
            # must be tight; the close halves and open pieces have their own similarity tests
            passes &= _tight_enough(passes, r, c, sizes, a, b, out, strong, w, nc, tight_min_size, tight_margin, tight_q)
        full = passes & (d >= min_links * cap[r])
        ok = full & (sizes[c] > sizes[r])
        if mutual:
            # a mutual pair (A's first choice is B and B's is A) where the bigger one passes both
            # tests towards the smaller: the smaller joins it on the share test alone (its own
            # links may fill fewer than min_links of its slots). Equal sizes: both must pass, so
            # the outcome does not depend on which has the lower id (it only names the result).
            # Measured: a person the learned methods split into halves of 138 and 120 faces, the
            # bigger sending 20 % of its slots to the smaller, the smaller 12 % back; ORL's
            # equal-size look-alikes, where only one of the two passes, stay apart
            # (docs/benchmarks/gcn_ve.md §9)
            top = np.full(nc, -1, np.int64)
            top[r] = c
            full_to = np.zeros(nc, bool)
            full_to[r[full]] = True
            into = (sizes[c] > sizes[r]) | ((sizes[c] == sizes[r]) & (c < r) & full)
            ok |= passes & into & (top[c] == r) & full_to[c]
            if close_q is not None:
                ok |= _close_halves(r, c, d, passes, cap, sizes, top, a, b, out, strong, w, nc, close_q, close_min_links, close_margin)
                if close_piece is not None:
                    ok |= _close_piece(r, c, d, leaving, cap, sizes, top, a, b, out, strong, w, nc, close_q, min_links, close_margin, close_piece) & (sizes[r] >= min_size)
        if open_frac is not None:
            # open: a cluster of >= 2 faces whose strong leaving links fill >= open_frac of its slots
            is_open = (sizes >= 2) & (leaving >= open_frac * cap)
            lit_ok = np.ones(nc, bool)  # clusters the open-piece rules may join into
            if open_lit is not None and open_lit_max is not None:
                lit_ok = np.bincount(lab, weights=open_lit, minlength=nc) < open_lit_max * sizes
                is_open &= lit_ok
            ok |= _open_pieces(r, c, d, leaving, is_open, sizes, a, b, out, strong, w, nc, open_share, open_margin, open_q, open_pair_share) & (sizes[r] >= min_size) & lit_ok[c]
            if open_mutual is not None:
                ok |= _open_mutual(r, c, d, leaving, is_open, sizes, a, b, out, strong, w, nc, open_mutual, open_margin, open_q) & (sizes[r] >= min_size)
        if not ok.any():
            break
        lab = _join_into(lab, nc, r[ok], c[ok])  # targets come first in (size desc, id): a forest
    return lab


def _grouped_quantile(g: np.ndarray, v: np.ndarray, q: float, ng: int, empty: float = np.nan) -> np.ndarray:
    """(ng,) the ``q``-th percentile (lower value) of ``v`` within each group ``g``; ``empty`` for a
    group without values."""
    out = np.full(ng, empty)
    if len(g) == 0:
        return out
    order = np.lexsort((v, g))
    gs, vs = g[order], v[order]
    cnt = np.bincount(gs, minlength=ng)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    has = cnt > 0
    out[has] = vs[start[has] + np.floor(q / 100.0 * (cnt[has] - 1)).astype(np.int64)]
    return out


def _link_levels(sel, to, a, b, out, strong, w, nc, q) -> tuple[np.ndarray, np.ndarray]:
    """(ref, med), each (nc,): for every cluster marked in ``sel``, the ``q``-th percentile of its
    internal strong link similarities and the median of its strong links into cluster ``to[i]``
    (-1: none); NaN elsewhere. How tightly a cluster is linked within, against across: the close
    halves and the open pieces of ``merge_fragments``."""
    inside = (a == b) & strong & sel[a]
    cross = out & sel[a] & (b == to[a])
    return _grouped_quantile(a[inside], w[inside], q, nc), _grouped_quantile(a[cross], w[cross], 50.0, nc)


def _pair_levels(cand, r, c, a, b, out, strong, w, nc, q) -> tuple[np.ndarray, np.ndarray]:
    """``_link_levels`` for the clusters r marked in ``cand`` and their targets c: (ref, med), each
    (nc,), the internal ``q``-th percentile of every cluster of those pairs and the median of each r's
    strong links into its c (NaN elsewhere). The open pieces and the tight joins read these."""
    sel = np.zeros(nc, bool)  # the clusters whose internal links and links across are read
    sel[r[cand]] = True
    sel[c[cand]] = True
    to = np.full(nc, -1, np.int64)
    to[r[cand]] = c[cand]
    return _link_levels(sel, to, a, b, out, strong, w, nc, q)


def _tight_enough(cand, r, c, sizes, a, b, out, strong, w, nc, min_size, margin, q) -> np.ndarray:
    """(len(r),) bool: ``merge_fragments``'s tight-join test for each cluster r and its first
    choice c, judged where ``cand`` (the clusters that passed the share test: the percentiles are
    read only for them, most clusters fail it); True elsewhere, for clusters under ``min_size``
    faces and for pairs without internal links."""
    judged = cand & (sizes[r] >= min_size)
    okay = np.ones(len(r), bool)
    if not judged.any():
        return okay
    ref, med = _pair_levels(judged, r, c, a, b, out, strong, w, nc, q)
    rj, cj = r[judged], c[judged]
    lo = np.fmin(ref[rj], ref[cj])  # NaN only when neither has an internal link: not judged
    okay[judged] = np.isnan(lo) | (med[rj] >= lo - margin)
    return okay


def _close_halves(r, c, d, passes, cap, sizes, top, a, b, out, strong, w, nc, q, min_links, margin) -> np.ndarray:
    """(len(r),) bool: which mutual pairs (r -> c) join as close halves (``merge_fragments``)."""
    cand = passes & (top[c] == r) & (d >= min_links * cap[r])
    cand_to = np.zeros(nc, bool)
    cand_to[r[cand]] = True
    pair = cand & cand_to[c]  # both directions qualify
    if not pair.any():
        return pair
    into = (sizes[c] > sizes[r]) | ((sizes[c] == sizes[r]) & (c < r))
    return pair & into & _tight_both_ways(pair, r, c, top, a, b, out, strong, w, nc, q, margin, margin)


def _close_piece(r, c, d, leaving, cap, sizes, top, a, b, out, strong, w, nc, q, min_links, margin, piece_share) -> np.ndarray:
    """(len(r),) bool: which smaller clusters r join c as close pieces (``merge_fragments``). A lone
    face never does: it has no internal links to compare (NaN compares False)."""
    into = sizes[c] > sizes[r]
    cand = into & (top[c] == r) & (d >= piece_share * leaving[r]) & (d >= min_links * cap[r])
    if not cand.any():
        return cand
    return cand & _tight_both_ways(cand, r, c, top, a, b, out, strong, w, nc, q, margin, margin)


def _tight_both_ways(cand, r, c, top, a, b, out, strong, w, nc, q, other_margin, own_margin) -> np.ndarray:
    """(len(r),) bool: for the mutual first choices marked in ``cand`` (r -> c, ``top[c] == r``),
    whether each one's median link into the other reaches the other's ``q``-th percentile of
    internal links minus ``other_margin`` and its own minus ``own_margin``; NaN (no internal link)
    compares False. The similarity test of the close halves, the close pieces and the mutual open
    pieces."""
    inv = np.zeros(nc, bool)
    inv[r[cand]] = True
    inv[c[cand]] = True
    ref, med = _link_levels(inv, np.where(inv, top, -1), a, b, out, strong, w, nc, q)
    rc, cc = r[cand], c[cand]
    tight = np.zeros(nc, bool)
    tight[rc] = (
        (med[rc] >= ref[cc] - other_margin) & (med[rc] >= ref[rc] - own_margin)
        & (med[cc] >= ref[rc] - other_margin) & (med[cc] >= ref[cc] - own_margin)
    )
    return tight[r]


def _open_pieces(r, c, d, leaving, is_open, sizes, a, b, out, strong, w, nc, share, margin, q, pair_share=None) -> np.ndarray:
    """(len(r),) bool: which clusters r join their first choice c as open pieces (``merge_fragments``)."""
    cand = is_open[r] & (sizes[c] > sizes[r]) & (d >= share * leaving[r])
    if not cand.any():
        return cand
    ref, med = _pair_levels(cand, r, c, a, b, out, strong, w, nc, q)
    # NaN (no internal link) compares False: such a cluster neither joins nor is joined this way
    own = med[r] >= ref[r] - margin
    if pair_share is not None:
        # a pair's one internal link (often two near-identical frames) says nothing of how widely
        # its person varies: with a clear majority of its links it is judged on its target alone
        own |= (sizes[r] == 2) & (d >= pair_share * leaving[r])
    return cand & (med[r] >= ref[c]) & own


def _open_mutual(r, c, d, leaving, is_open, sizes, a, b, out, strong, w, nc, share, margin, q) -> np.ndarray:
    """(len(r),) bool: which open clusters r join c as mutual open pieces (``merge_fragments``)."""
    top = np.full(nc, -1, np.int64)
    top[r] = c
    votes = np.zeros(nc)
    votes[r] = d
    into = (sizes[c] > sizes[r]) | ((sizes[c] == sizes[r]) & (c < r))
    cand = is_open[r] & is_open[c] & (top[c] == r) & (d >= share * leaving[r]) & (votes[c] >= share * leaving[c]) & into
    if not cand.any():
        return cand
    # each one's links into the other reach the other's 10th percentile and its own minus the
    # margin (the open-piece test, both ways)
    return cand & _tight_both_ways(cand, r, c, top, a, b, out, strong, w, nc, q, 0.0, margin)


def attach_small(
    labels: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    *,
    max_size: int = 3,
    min_size: int = 1,
    top: int = 10,
    min_sim: float = -np.inf,
    share: float = 0.5,
    max_rounds: int = 10,
) -> np.ndarray:
    """Join singletons, pairs and small fragments to the cluster their strong neighbours agree on.

    :func:`merge_fragments` counts votes against all ``|A| * k`` kNN slots of a cluster, so a
    lone face with ``k = 40`` voting slots needs 6 strong links into one cluster and a 75 %
    majority among all its strong links: a long video's odd frames (profile, blur, a
    half-occluded face) rarely qualify and stay singletons. This rule looks only at the nearest
    ``top`` neighbours of each member of a cluster ``A`` of at most ``max_size`` faces:

    * a neighbour outside ``A`` with similarity >= ``min_sim`` is a vote for its cluster;
    * ``A`` joins the cluster ``B`` with the most votes when those votes make at least ``share``
      of all of ``A``'s ``|A| * top`` slots (the neighbours *agree*: a face seen once in a photo
      collection has strong neighbours scattered over several look-alikes, or few of them) and
      ``B`` is bigger than ``A`` (joins form a forest; no cycles).

    Repeated until nothing changes (at most ``max_rounds``): a singleton can join a pair that
    has itself just joined a big cluster.

    Parameters
    ----------
    labels : (N,) int, the partition to refine.
    ids : (N, k) int64 kNN ids sorted by similarity (self anywhere, ignored; -1 = none).
    sims : (N, k) float similarities of ``ids``.
    max_size, min_size : clusters of ``min_size`` to ``max_size`` faces may join another.
    top : nearest neighbours per face that vote (self excluded; fewer when k is smaller).
    min_sim : a neighbour votes only with similarity >= this.
    share : fraction in (0, 1] of the ``|A| * top`` slots that must vote for the same cluster.

    Returns
    -------
    (N,) int64 labels numbered 0.. in order of the sorted input labels; every input cluster is
    either kept or wholly merged into another.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    lab = np.unique(labels, return_inverse=True)[1].astype(np.int64) if n else np.zeros(0, np.int64)
    if n == 0 or ids.size == 0 or max_size < 1:
        return lab
    ids = np.asarray(ids, np.int64)
    sims = np.asarray(sims, np.float32)
    take, rows = _nearest_links(ids, top)
    cols, w = ids[take], sims[take]
    slots = np.bincount(rows, minlength=n)
    strong = w >= min_sim
    for _ in range(max_rounds):
        nc = int(lab.max()) + 1
        sizes = np.bincount(lab, minlength=nc)
        a, b = lab[rows], lab[cols]
        vote = strong & (a != b) & (sizes[a] <= max_size) & (sizes[a] >= min_size)
        if not vote.any():
            break
        m = sp.csr_matrix((np.ones(int(vote.sum())), (a[vote], b[vote])), shape=(nc, nc))
        m.sum_duplicates()
        m = m.tocoo()
        r, c, d, _ = _top_target(m)  # each cluster's most-voted target
        cap = np.bincount(lab, weights=slots, minlength=nc)
        ok = (sizes[c] > sizes[r]) & (d >= share * cap[r])
        if not ok.any():
            break
        lab = _join_into(lab, nc, r[ok], c[ok])  # targets are strictly bigger: a forest
    return lab


def attach_relative(
    labels: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    *,
    max_frac: float = 0.1,
    min_size: int = 1,
    min_target: int = 10,
    top: int = 10,
    min_sim: float = -np.inf,
    share: float = 0.5,
    q: float = 10.0,
    margin: float = 0.02,
    max_rounds: int = 10,
    share_of: str = "slots",
    ref_both: bool = False,
    fixed_targets: bool = False,
    min_links: float = 0.0,
) -> np.ndarray:
    """Join a fragment to the cluster its strong neighbours agree on when its links to that
    cluster are as similar as the cluster's own links are.

    A fixed similarity floor cannot fit both crisp photos and a degraded video: a blurred or
    low-resolution video's frames are less similar to each other, so its odd frames link to
    their person's cluster at similarities a crisp photo collection only reaches between
    look-alikes. This rule compares a fragment's links with the target's own: for every
    cluster ``B`` of at least ``min_target`` faces, ``ref(B)`` is the ``q``-th percentile of the
    similarities of its *internal* kNN edges (each member's ``top`` nearest neighbours that are
    in ``B``). A cluster ``A`` joins ``B`` when

    * ``B`` is the cluster most of ``A``'s strong links (the ``top`` nearest neighbours of each
      member with similarity >= ``min_sim``, outside ``A``) go to, with at least ``share`` of
      ``A``'s ``|A| * top`` slots;
    * ``|A| <= max_frac * |B|`` (a fragment, not a second person of similar size; also makes
      joins a forest);
    * the mean similarity of those links is >= ``ref(B) - margin``.

    Repeated until nothing changes (at most ``max_rounds``; references recomputed each round).

    Parameters
    ----------
    labels : (N,) int, the partition to refine.
    ids : (N, k) int64 kNN ids sorted by similarity (self anywhere, ignored; -1 = none).
    sims : (N, k) float cosine similarities of ``ids``.
    max_frac : largest fragment, as a fraction of the target's size, in (0, 1).
    min_size : smallest fragment that may join (2 leaves singletons to :func:`attach_small`).
    min_target : smallest target (its reference needs enough internal edges).
    top : nearest neighbours per face that vote and that define the internal edges.
    min_sim : absolute floor below which a neighbour does not vote.
    share : fraction of the ``|A| * top`` slots that must vote for ``B``; with ``share_of="out"``
        the fraction of ``A``'s strong links that leave ``A`` (a tight fragment whose neighbours
        are mostly its own members, yet whose outside links lean to ``B``).
    ref_both : the links must also reach ``A``'s own reference (the same percentile of ``A``'s
        internal edges): a fragment of ``B``'s person links to ``B`` as tightly as within
        itself, a separate person that merely leans to a tight, hub-like ``B`` does not.
    min_links : the votes for ``B`` must also be >= this fraction of ``A``'s ``|A| * top`` slots
        (as in :func:`merge_fragments`; for ``share_of="out"``): a fragment is bound to its
        person, a separate person of some size merely leans to a look-alike with the few links
        that leave it.
    fixed_targets : a target's size (for ``min_target`` and ``max_frac``) is that of its cluster
        in the input, not what the joins of earlier rounds made of it: a target that grows does
        not become able to take ever larger clusters (a cascade through one hub).
    q, margin : percentile (0-100) of ``B``'s internal edge similarities, and how far below it
        ``A``'s mean link similarity may lie.

    Returns
    -------
    (N,) int64 labels numbered 0.. in order of the sorted input labels; every input cluster is
    either kept or wholly merged into another.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    lab = np.unique(labels, return_inverse=True)[1].astype(np.int64) if n else np.zeros(0, np.int64)
    if n == 0 or ids.size == 0 or max_frac <= 0:
        return lab
    if share_of not in ("slots", "out"):
        raise ValueError(f"attach_relative: share_of must be 'slots' or 'out', not {share_of!r}")
    ids = np.asarray(ids, np.int64)
    sims = np.asarray(sims, np.float64)
    take, rows = _nearest_links(ids, top)
    cols, w = ids[take], sims[take]
    slots = np.bincount(rows, minlength=n)
    strong = w >= min_sim
    size_in = np.bincount(lab)[lab] if fixed_targets else None  # each face's input cluster size
    for _ in range(max_rounds):
        nc = int(lab.max()) + 1
        sizes = np.bincount(lab, minlength=nc)
        tsizes = sizes
        if fixed_targets:
            # joins go into strictly bigger clusters, so a cluster's biggest input piece is its root
            tsizes = np.zeros(nc, np.int64)
            np.maximum.at(tsizes, lab, size_in)
        a, b = lab[rows], lab[cols]
        inner = a == b
        vote = strong & ~inner
        if not vote.any():
            break
        va, vb = a[vote], b[vote]
        cnt_m = sp.csr_matrix((np.ones(len(va)), (va, vb)), shape=(nc, nc))
        # +2 keeps every summed entry positive (an explicit zero could be dropped)
        sum_m = sp.csr_matrix((w[vote] + 2.0, (va, vb)), shape=(nc, nc))
        cnt_m.sum_duplicates()
        sum_m.sum_duplicates()
        cnt_m, sum_m = cnt_m.tocoo(), sum_m.tocoo()
        # same sparsity pattern, same canonical order after sum_duplicates
        r, c, d, sel = _top_target(cnt_m)
        s = sum_m.data[sel] - 2.0 * d
        # each cluster's kNN slots: what `share` counts against (the default) and `min_links` reads
        slot_cap = np.bincount(lab, weights=slots, minlength=nc) if share_of == "slots" or min_links > 0 else None
        cap = np.asarray(cnt_m.tocsr().sum(axis=1)).reshape(-1) if share_of == "out" else slot_cap
        ok = (tsizes[c] >= min_target) & (sizes[r] >= min_size) & (sizes[r] <= max_frac * tsizes[c]) & (d >= share * cap[r])
        if min_links > 0:
            ok &= d >= min_links * slot_cap[r]
        if not ok.any():
            break
        # references (the q-th percentile of a cluster's internal edge similarities) only of the
        # clusters the similarity test reads: sorting every internal edge of a large batch each
        # round cost more than the rest of the step
        need = np.zeros(nc, bool)
        need[c[ok]] = True
        if ref_both:
            need[r[ok]] = True
        e = inner & need[a]
        ref = _grouped_quantile(a[e], w[e], q, nc, empty=np.inf)
        ok &= s / d >= (np.maximum(ref[c], ref[r]) if ref_both else ref[c]) - margin
        if not ok.any():
            break
        lab = _join_into(lab, nc, r[ok], c[ok])  # targets are > 1 / max_frac times bigger: a forest
    return lab


def _sweep_cut(w: sp.csr_matrix, min_part: int) -> tuple[float, np.ndarray | None]:
    """Lowest-conductance split of one connected-or-not graph along its Fiedler vector.

    w : (n, n) symmetric non-negative CSR. Returns (conductance, boolean side mask) or
    (inf, None) when no split leaves ``min_part`` nodes on each side."""
    n = w.shape[0]
    deg = np.asarray(w.sum(axis=1)).reshape(-1)
    if n < 2 * min_part or deg.sum() <= 0:
        return np.inf, None
    d = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    # second-largest eigenvector of D^-1/2 W D^-1/2 = Fiedler vector of the normalised Laplacian
    m = sp.diags(d) @ w @ sp.diags(d)
    if n <= 400:
        _, vec = np.linalg.eigh(m.toarray())
        f = vec[:, -2]
    else:
        from scipy.sparse.linalg import eigsh

        v0 = np.sqrt(np.maximum(deg, 1e-12))  # deterministic start vector
        _, vec = eigsh(m.astype(np.float64), k=2, which="LA", v0=v0, tol=1e-6, maxiter=5000)
        f = vec[:, np.argsort(_)[0]]
    f = f * d
    order = np.argsort(f, kind="stable")
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(n)
    coo = sp.triu(w, k=1).tocoo()
    lo, hi = np.minimum(pos[coo.row], pos[coo.col]), np.maximum(pos[coo.row], pos[coo.col])
    # an edge crosses every prefix cut t with lo <= t < hi
    diff = np.zeros(n + 1)
    np.add.at(diff, lo, coo.data)
    np.add.at(diff, hi, -coo.data)
    cut = np.cumsum(diff)[: n - 1]
    vol = np.cumsum(deg[order])[: n - 1]
    total = deg.sum()
    cond = cut / np.maximum(np.minimum(vol, total - vol), 1e-12)
    t = np.arange(n - 1)
    cond[(t + 1 < min_part) | (n - t - 1 < min_part)] = np.inf
    best = int(np.argmin(cond))
    if not np.isfinite(cond[best]):
        return np.inf, None
    side = np.zeros(n, bool)
    side[order[: best + 1]] = True
    return float(cond[best]), side


def split_weak(
    labels: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    *,
    min_size: int = 20,
    top: int = 10,
    min_sim: float = -np.inf,
    min_part: int = 5,
    max_cut: float = 0.05,
    max_depth: int = 3,
    max_size: int | None = None,
    gate: np.ndarray | None = None,
    gate_min: float = 0.0,
) -> np.ndarray:
    """Split clusters that chain two people: a weak cut in the cluster's own similarity graph.

    Two people can end up in one cluster through a few faces similar to both (a chain in the
    kNN graph, or a fragment joined to the wrong cluster). Such a cluster's own graph has a
    cut far sparser than anything inside one person. For every cluster of at least
    ``min_size`` faces, the graph of its members' ``top`` nearest neighbours inside the
    cluster with similarity >= ``min_sim`` (weight = similarity) is bisected along its Fiedler
    vector (spectral sweep cut); when the best cut's conductance (cut weight over the smaller
    side's volume) is <= ``max_cut`` and each side has >= ``min_part`` faces, the cluster is
    split and each side is checked again (at most ``max_depth`` levels). With ``max_size``,
    clusters of more faces are not judged; with ``gate`` ((N,) float per face), only clusters
    whose faces' mean gate is >= ``gate_min`` (the learned methods' lit clusters:
    :func:`facecluster.cluster.refine.check_lit`).

    Parameters
    ----------
    labels : (N,) int partition.
    ids, sims : (N, k) kNN lists (self anywhere, ignored; -1 = none) and similarities.
    min_size, top, min_sim, min_part, max_cut, max_depth, max_size, gate, gate_min : see above.

    Returns
    -------
    (N,) int64 labels numbered 0.. in order of first appearance of the input's sorted labels;
    split-off parts get new ids after the existing ones (deterministic).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    lab = np.unique(labels, return_inverse=True)[1].astype(np.int64) if n else np.zeros(0, np.int64)
    if n == 0 or ids.size == 0:
        return lab
    ids = np.asarray(ids, np.int64)
    sims = np.asarray(sims, np.float32)
    take = _nearest_links(ids, top)[0] & (sims >= min_sim)
    rows = np.nonzero(take)[0]
    cols, w = ids[take], np.maximum(sims[take], 0).astype(np.float64)
    internal = lab[rows] == lab[cols]
    g = sp.csr_matrix((w[internal], (rows[internal], cols[internal])), shape=(n, n))
    g = g.maximum(g.T).tocsr()
    nxt = int(lab.max()) + 1
    sizes = np.bincount(lab)
    judged = (sizes >= min_size) if max_size is None else (sizes >= min_size) & (sizes <= max_size)
    if gate is not None:
        judged &= _gated(lab, sizes, gate, gate_min)
    todo = [(c, 0) for c in np.flatnonzero(judged)]
    members = {}
    order = np.argsort(lab, kind="stable")
    bounds = np.r_[0, np.cumsum(sizes)]
    while todo:
        c, depth = todo.pop(0)
        idx = members.pop(c, None)
        if idx is None:
            idx = order[bounds[c] : bounds[c + 1]]
        cond, side = _sweep_cut(g[idx][:, idx], min_part)
        if side is None or cond > max_cut:
            continue
        # the side holding the cluster's first face keeps the id (deterministic numbering)
        if side[0]:
            side = ~side
        lab[idx[side]] = nxt
        if depth + 1 < max_depth:
            members[c], members[nxt] = idx[~side], idx[side]
            todo += [(c, depth + 1), (nxt, depth + 1)]
        nxt += 1
    return lab


#: the most members of one cluster :func:`dissolve_soups` scores pairwise (memory ~ SOUP_SAMPLE²);
#: a bigger cluster is judged on that many of its members
SOUP_SAMPLE = 1000


def _gated(lab: np.ndarray, sizes: np.ndarray, gate: np.ndarray, gate_min: float) -> np.ndarray:
    """(C,) bool: clusters (``lab`` 0..C-1, ``sizes`` their counts) whose faces' mean ``gate`` is
    >= ``gate_min``."""
    gate = np.asarray(gate, np.float64)
    if gate.shape != lab.shape:
        raise ValueError(f"gate must have shape {lab.shape}, got {gate.shape}")
    return np.bincount(lab, weights=gate, minlength=len(sizes)) >= gate_min * np.maximum(sizes, 1)


def dissolve_soups(
    labels: np.ndarray,
    X: np.ndarray,
    levels: np.ndarray,
    *,
    below: float = 0.0,
    min_size: int = 8,
    max_size: int | None = 60,
    max_share: float = 1.0,
    gate: np.ndarray | None = None,
    gate_min: float = 0.0,
) -> np.ndarray:
    """Break up clusters that are a soup of faces alike to everyone, not one person.

    A face's cohort level ``l`` (:meth:`facecluster.cohort.Cohort.levels`) is its mean cosine to
    its most similar faces of a fixed cohort of other people: how much it looks like strangers.
    Two photos of one person are more alike than that; degraded faces (small, compressed,
    blurred, hard side light) look like everyone and can chain into one cluster of many people
    whose typical pair is no more alike than each face is to strangers. Every cluster of
    ``min_size`` to ``max_size`` faces whose median over all its pairs of
    ``cos(i, j) - (l_i + l_j) / 2`` is below ``below`` becomes lone faces. Bigger clusters are
    not judged: a person followed through a long video spreads over pose and light, and its
    far pairs sit low while its links stay tight. Nor is a cluster holding more than
    ``max_share`` of the batch: a soup is a small group among many other faces, while one short
    low-quality clip of one person, alone in its batch, has a soup's statistics to dlib and is
    still one person (the only thing that tells them apart is that prior). With ``gate``
    ((N,) float per face) only clusters whose faces' mean gate is >= ``gate_min`` are judged.

    Parameters
    ----------
    labels : (N,) int partition.
    X : (N, D) float32 descriptors (L2-normalised here).
    levels : (N,) float cohort levels of the same faces.
    below, min_size, max_size, max_share, gate, gate_min : see above (``max_share`` a fraction
        of N; 0: no cluster is judged; ``max_size`` None: no bound, and a cluster of more than
        ``SOUP_SAMPLE`` faces is judged on that many of its members, evenly spaced in index
        order, so memory stays bounded).

    Returns
    -------
    (N,) int64 labels; a dissolved cluster's faces get new ids after the existing ones, in index
    order (deterministic); every other cluster keeps its faces.
    """
    lab = np.asarray(labels, np.int64).copy()
    n = lab.shape[0]
    if n == 0:
        return lab
    _, inv, cnt = np.unique(lab, return_inverse=True, return_counts=True)
    cap = int(max_share * n) if max_size is None else min(max_size, int(max_share * n))
    ok = (cnt >= min_size) & (cnt <= cap)
    if gate is not None:
        ok &= _gated(inv, cnt, gate, gate_min)
    judged = np.flatnonzero(ok)
    if len(judged) == 0:
        return lab
    order = np.argsort(inv, kind="stable")
    start = np.r_[0, np.cumsum(cnt)]
    lev = np.asarray(levels, np.float32)
    nxt = int(lab.max()) + 1
    for g in judged:
        m = order[start[g] : start[g + 1]]
        q = m if len(m) <= SOUP_SAMPLE else m[np.linspace(0, len(m) - 1, SOUP_SAMPLE).astype(np.int64)]
        x = l2_normalize(X[q])
        s = x @ x.T - 0.5 * (lev[q][:, None] + lev[q][None, :])
        if np.median(s[np.triu_indices(len(q), 1)]) < below:
            lab[m] = np.arange(nxt, nxt + len(m))
            nxt += len(m)
    return lab
