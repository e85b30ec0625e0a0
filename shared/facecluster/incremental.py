"""Growing collections: add new faces to an earlier result, ids stay stable (``facecluster add``).

A work dir W made by ``facecluster run`` holds one batch. The first ``add`` turns it into a
*collection*: an explicit, versioned state under ``W/collection/`` that every later ``add`` grows::

    W/collection/state.json            the commit point: format version, method + settings, embedder,
                                       the batches, the next free id, suggested merges
    W/collection/batch-00000.npz       per batch: features (m, D) float32 raw descriptors of the
                                       records that embedded, row (m,) their record index in the
                                       batch, ids (m,) their cluster ids, no_face (m,) the
                                       crops that hold no face (absent in older segments)
    W/collection/batch-00000.json      per batch: the records (all keys), resolved paths, errors,
                                       cluster_id of every record (-1 for failed ones), no_face
                                       (record indices)
    W/collection/incoming/<fp>/        a work dir for the batch being added (prepare/embed/merge
                                       stages of the batch path, so embedding resumes after a kill)
    W/collection.lock                  fcntl lock: one ``add`` at a time

Batch 0 is the earlier ``run``; batch b is the b-th ``add``. Segments are append-only and written
(atomically) *before* ``state.json`` names them; replacing ``state.json`` is the one commit point.
A killed ``add`` therefore leaves W as it was (an orphan segment is ignored and overwritten) or,
when it died after the commit, a rerun sees the input already added and only writes its output.

Assignment of the new faces (:func:`assign`) reads only the default method's *settings* from W
(``k``, ``min_sim``, ``merge_min_sim``, ``merge_k``, ``merge_share``, ``merge_min_links``):

1. kNN of the new faces against the stored ones (the stored feature matrix is the index: exact
   inner product, faiss or torch, cost ~ new x stored) and among themselves; cohort-normalised
   (:mod:`facecluster.cohort`) when the run's Infomap was (setting ``cohort_norm``).
2. A new face whose strong links (similarity >= ``min_sim``, the Infomap edge threshold) go, in
   clear majority (>= ``assign_share`` of all its strong links, new faces included), to one
   existing cluster takes that cluster's id; repeated, so it follows chains of new faces.
3. The other new faces are clustered among themselves with the default method (its settings
   from W). A resulting group joins an existing cluster when its strong links agree on it and
   reach half of its members (``group_cover``), else by the default's fragment-merge vote
   (:func:`facecluster.graph.merge_fragments` over the links >= ``merge_min_sim``); otherwise it
   gets a new id after the largest id given out (in order of first appearance in the new input).
4. Existing clusters never move (their members cast no vote), so ids given out never change.
   New faces with strong links into two existing clusters are reported as a suggested merge of
   those ids (``state.json`` + one line on stderr), never applied.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from . import contract
from .graph import components
from .knn import knn
from .workdir import WorkDir, atomic_save_npz, atomic_write_bytes, atomic_write_json, fingerprint, read_json

#: on-disk format of W/collection (bump on incompatible changes; older readers refuse newer)
STATE_FORMAT = "facecluster-collection"
STATE_VERSION = 1
#: methods with an incremental form (``add`` refuses the others)
INCREMENTAL_METHODS = ("infomap",)
#: exit code when W is locked by another ``add`` and ``--no-wait`` was given (sysexits EX_TEMPFAIL)
EXIT_BUSY = 75


class CollectionError(ValueError):
    """A refusal with a one-line reason (wrong embedder, method without incremental form, ...)."""


class CollectionBusy(RuntimeError):
    """Another ``add`` holds W's lock and the caller asked not to wait."""


class IncrementalConfig(BaseModel):
    """How new faces join existing clusters (the default method's own thresholds come from W)."""

    model_config = ConfigDict(extra="forbid")

    assign_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A new face takes an existing cluster's id when >= this share of its strong "
        "links (>= min_sim; links to other new faces count too) go into that cluster.",
    )
    vote_rounds: int = Field(
        10, ge=1, description="Rounds of the per-face strong-link vote (each lets the vote follow one more new face in a chain)."
    )
    group_cover: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A group of new faces joins an existing cluster by its strong links only when they "
        "reach >= this share of the cluster's members (or fill merge_min_links of the group's kNN slots).",
    )
    bridge_min_links: int = Field(
        2, ge=1, description="Strong links from new faces into an existing cluster needed to call it 'linked' (suggested merges)."
    )
    bridge_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="... and they must be >= this share of that group's strong links into existing clusters.",
    )


# ------------------------------------------------------------------------------ algorithm
@dataclass
class Assignment:
    """Result of :func:`assign`.

    ids : (M,) int64 cluster id of each new face (existing ids or new ones from ``next_id``).
    next_id : the next free id afterwards.
    joined : (M,) int8, how each face got its id: 1 its strong links, 2 its group's strong links,
        3 its group's fragment-merge vote, 0 a new id.
    suggested_merges : [{"ids": [a, b], "links": [la, lb], "faces": n}], existing ids a < b that
        new faces link strongly (sorted by ids).
    timings : seconds per step.
    no_face : (M,) bool, the new crops that hold no face (:mod:`facecluster.nonface`; a new id
        each, shared with their copies: :func:`facecluster.nonface.nonface_groups`).
    """

    ids: np.ndarray
    next_id: int
    joined: np.ndarray
    suggested_merges: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    no_face: np.ndarray | None = None


def _topk_merge(sims_a, ids_a, sims_b, ids_b, k):
    """Row-wise union of two kNN lists, sorted by (-sim, id), cut to k."""
    s = np.concatenate([sims_a, sims_b], axis=1)
    i = np.concatenate([ids_a, ids_b], axis=1)
    order = np.lexsort((i, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def assign(
    stored: np.ndarray,
    stored_ids: np.ndarray,
    new: np.ndarray,
    next_id: int,
    settings: dict[str, Any],
    config: IncrementalConfig | None = None,
    device: str = "cpu",
    cluster_new: Callable[[np.ndarray], np.ndarray] | None = None,
    stored_no_face: np.ndarray | None = None,
) -> Assignment:
    """Give each new face an existing cluster id or a new one; existing ids never change.

    Parameters
    ----------
    stored : (N, D) float32 raw descriptors already in the collection (L2-normalised here).
    stored_ids : (N,) int64 their cluster ids (>= 0).
    new : (M, D) float32 raw descriptors of the new faces.
    next_id : first id a new person may get (> every id given out).
    settings : the default method's settings as recorded in W (``k``, ``min_sim``,
        ``merge_min_sim``, ``merge_k``, ``merge_share``, ``merge_min_links``, ...).
    config : :class:`IncrementalConfig` (defaults when None).
    device : where kNN runs.
    cluster_new : (m, D) raw features -> (m,) labels for the faces no existing cluster claims;
        default: the default method (Infomap) with ``settings``.
    stored_no_face : (N,) bool, the stored crops that hold no face (None: none).

    Near-duplicates (cosine >= the run's ``duplicate_sim``, with ``join_duplicates``) always
    share an id: a new copy of a stored crop takes that crop's id (and its ``no_face``), new
    copies of each other end with one id.

    Returns
    -------
    Assignment
    """
    cfg = config or IncrementalConfig()
    timings: dict[str, float] = {}
    stored = np.asarray(stored, np.float32).reshape(len(stored_ids), -1) if len(stored_ids) else np.zeros((0, new.shape[1] if new.ndim == 2 else 0), np.float32)
    stored_ids = np.asarray(stored_ids, np.int64)
    new = np.asarray(new, np.float32)
    n, m = len(stored_ids), new.shape[0]
    ids_out = np.full(m, -1, np.int64)
    joined = np.zeros(m, np.int8)
    if m == 0:
        return Assignment(ids_out, int(next_id), joined, [], timings)
    if n and stored_ids.min() < 0:
        raise ValueError("stored_ids must be >= 0 (failed records have no features)")
    k = int(settings.get("k", 80))
    min_sim = float(settings["min_sim"])
    merge_min_sim = float(settings["merge_min_sim"])
    merge_k = int(settings.get("merge_k", 40))
    backend = settings.get("knn_backend", "auto")

    # 1. kNN against the stored faces and among the new ones; node ids: stored 0..N-1, new N..N+M-1
    t = time.perf_counter()
    kk = min(k, n + m)
    qs, qi = knn(stored, kk, query=new, backend=backend, device=device) if n else (np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64))
    ns, ni = knn(new, kk, backend=backend, device=device)
    sims, ids = _topk_merge(qs, qi, ns, ni + n, kk)
    raw_sims, raw_ids = sims, ids
    timings["knn"] = time.perf_counter() - t
    if settings.get("cohort_norm"):
        # the similarities the run's Infomap judged links by (facecluster.cohort): the same
        # normalisation, so min_sim / merge_min_sim mean what they meant there
        t = time.perf_counter()
        from .cohort import load_cohort

        co = load_cohort(settings.get("embedder"))
        if co is None:
            raise ValueError(f"the collection was clustered with cohort normalisation, but embedder {settings.get('embedder')!r} ships no cohort")
        # the run's choice of the cohort's parts (absent from runs made before the setting: off)
        parts = bool(settings.get("cohort_parts", False))
        lev_new = co.levels(new, backend=backend, device=device, parts=parts)
        # only the stored faces the new ones list need a level: the cost follows the new faces,
        # not the collection (all 100k stored levels took 0.87 s; a 1M collection would take ~9 s)
        lev_db = np.zeros(n + m, np.float32)
        lev_db[n:] = lev_new
        listed = np.unique(ids[(ids >= 0) & (ids < n)])
        if len(listed):
            lev_db[listed] = co.levels(stored[listed], backend=backend, device=device, parts=parts)
        sims = co.normalise(sims, ids, lev_new, lev_db, float(settings.get("cohort_shift", 0.0)))
        timings["cohort"] = time.perf_counter() - t

    # near-duplicates, on the raw cosine: copies of a stored crop, and groups of new copies
    t = time.perf_counter()
    stored_nf = np.zeros(n, bool) if stored_no_face is None else np.asarray(stored_no_face, bool)
    dup = _duplicate_sim(settings)
    no_face = np.zeros(m, bool)
    nf_group = np.full(m, -1, np.int64)
    if settings.get("nonface_test"):
        # the run set crops with no face apart (cluster/base.py): so does every batch added to it,
        # copies judged as one (facecluster.nonface.nonface_groups)
        from . import nonface

        found = nonface.nonface_groups(new, settings.get("embedder"), dup, backend=backend, device=device)
        if found is not None:
            no_face, nf_group = found
    copy_of, r, c = _near_duplicates(raw_sims, raw_ids, n, m, dup, stored_nf)
    # groups of new crops: the non-faces' groups of copies, and faces linked by near-duplicates
    face_pair = ~no_face[r] & ~no_face[c]
    nf_rows = np.flatnonzero(no_face)
    lead = nf_rows[np.unique(nf_group[nf_rows], return_index=True)[1]]  # first member of each
    grp_new = components(m, np.r_[r[face_pair], nf_rows], np.r_[c[face_pair], lead[nf_group[nf_rows]]])
    # a group with a copy of a stored crop follows that crop (its first member's, by input order)
    anchor = np.full(int(grp_new.max()) + 1 if m else 0, -1, np.int64)
    has = np.flatnonzero(copy_of >= 0)[::-1]  # reversed: the first member's copy wins
    anchor[grp_new[has]] = copy_of[has]
    follow = anchor[grp_new] >= 0
    ids_out[follow] = stored_ids[anchor[grp_new[follow]]]
    joined[follow] = 1
    no_face[follow] = stored_nf[anchor[grp_new[follow]]]
    # the other groups of non-faces: a new id each (after the new people, renumbered below)
    lone_nf = no_face & ~follow
    if lone_nf.any():
        ids_out[lone_nf] = next_id + m + np.unique(grp_new[lone_nf], return_inverse=True)[1].reshape(-1)
    if no_face.any() or stored_nf.any():
        # no link to or from a crop with no face counts in any vote below
        nf_node = np.concatenate([stored_nf, no_face])
        sims = np.where(nf_node[np.clip(ids, 0, n + m - 1)] | no_face[:, None], np.float32(-2.0), sims)
    timings["duplicates"] = time.perf_counter() - t

    t = time.perf_counter()
    self_col = ids == (n + np.arange(m))[:, None]
    is_stored = ids < n
    # 2. strong-link vote: a clear majority of a face's strong links lands in one existing
    # cluster. Repeated so that it spreads along chains of new faces (a new photo whose only
    # strong link is another new photo of a known person follows it once that one has joined).
    strong = (sims >= min_sim) & ~self_col
    n_strong = strong.sum(axis=1)
    nc = int(stored_ids.max()) + 1 if n else 0
    for _ in range(cfg.vote_rounds if n else 0):
        nb = _neighbour_ids(ids, stored_ids, ids_out, n)
        ss = strong & (nb >= 0) & (ids_out < 0)[:, None]
        if not ss.any():
            break
        r, c = np.nonzero(ss)
        votes = sp.csr_matrix((np.ones(len(r)), (r, nb[r, c])), shape=(m, nc))
        votes.sum_duplicates()
        top = np.asarray(votes.argmax(axis=1)).reshape(-1)  # ties: lowest id (scipy: first max)
        top_v = np.asarray(votes.max(axis=1).todense()).reshape(-1)
        ok = (ids_out < 0) & (top_v >= 1) & (top_v >= cfg.assign_share * n_strong)
        if not ok.any():
            break
        ids_out[ok] = top[ok]
        joined[ok] = 1
    timings["vote"] = time.perf_counter() - t

    # 3. the rest: clustered among themselves, each group joins by the fragment-merge vote
    rest = np.nonzero(ids_out < 0)[0]
    if len(rest):
        t = time.perf_counter()
        if cluster_new is None:
            from .cluster import get_clusterer

            # (nonface_test: the run's record of the shipped test, not a setting)
            keep = {k_: v for k_, v in settings.items() if k_ not in ("device", "progress", "nonface_test")}
            # the crops with no face were decided above (with the stored copies): none are left here
            keep["nonface_check"] = False
            cl = get_clusterer("infomap", device=device, progress=False, **keep)
            cluster_new = cl.fit_predict
        grp = contract.renumber(np.asarray(cluster_new(new[rest]), np.int64))
        timings["cluster_new"] = time.perf_counter() - t
        t = time.perf_counter()
        # 3a. a group whose strong links into existing clusters agree on one joins it (the faces
        # of a known person that link more to each other than to their old photos land here)
        g_ids = _strong_group_vote(
            grp, rest, sims, ids, stored_ids, ids_out, n, min_sim, cfg, float(settings.get("merge_min_links", 0.15))
        )
        ids_out[rest] = g_ids
        joined[rest] = np.where(g_ids >= 0, 2, 0)
        # 3b. the remaining groups: the default's fragment-merge vote over the weaker links
        rest2 = rest[g_ids < 0]
        if len(rest2):
            grp2 = contract.renumber(grp[g_ids < 0])
            ids_out[rest2] = _group_vote(grp2, rest2, sims, ids, stored_ids, ids_out, n, merge_k, merge_min_sim, settings, next_id)
            joined[rest2] = np.where(ids_out[rest2] < next_id, 3, 0)
        timings["group_vote"] = time.perf_counter() - t
    # new copies of each other share an id: the group takes its first member's (an existing id
    # before a new one) — a twin voted into a cluster pulls the other along
    if m and np.bincount(grp_new).max() > 1:
        key = np.where(ids_out < next_id, 0, 1)
        order = np.lexsort((np.arange(m), key, grp_new))
        first = order[np.unique(grp_new[order], return_index=True)[1]]
        head = np.empty(int(grp_new.max()) + 1, np.int64)
        head[grp_new[first]] = first
        moved = ids_out != ids_out[head[grp_new]]
        ids_out[moved] = ids_out[head[grp_new[moved]]]
        joined[moved] = joined[head[grp_new[moved]]]
    # new people: ids after the largest given out, by first appearance in the new input
    fresh = ids_out >= next_id
    if fresh.any():
        ids_out[fresh] = next_id + contract.renumber(ids_out[fresh])
    new_next = int(max(next_id, ids_out.max() + 1))

    t = time.perf_counter()
    merges = _suggested_merges(ids_out, sims, ids, strong & is_stored, stored_ids, n, cfg)
    timings["bridges"] = time.perf_counter() - t
    return Assignment(ids_out, new_next, joined, merges, timings, no_face)


def _duplicate_sim(settings: dict[str, Any]) -> float | None:
    """The run's near-duplicate cosine (None: ``join_duplicates`` off)."""
    if not settings.get("join_duplicates", True):
        return None
    dup = settings.get("duplicate_sim")
    if dup is None:  # a run recorded before the setting: the embedder's measured value
        from .calibration import duplicate_sim

        dup = duplicate_sim(settings.get("embedder"))
    return float(dup)


def _near_duplicates(sims, ids, n, m, dup, stored_nf):
    """From the raw kNN lists (M, k) of the new crops (ids: stored 0..N-1, new N..N+M-1): each
    new crop's most similar stored copy (M,) (-1: none) and the pairs (r, c) of new crops that
    are near-duplicates of each other (cosine >= ``dup``; None: no copies, no pairs). A stored
    crop with no face counts only an exact copy (:data:`facecluster.nonface.COPY_SIM`): distinct
    non-faces crowd above ``dup``."""
    from .nonface import COPY_SIM

    copy_of = np.full(m, -1, np.int64)
    if dup is None or m == 0:
        return copy_of, np.zeros(0, np.int64), np.zeros(0, np.int64)
    to_stored = ids < n
    to_nf = to_stored & stored_nf[np.clip(ids, 0, n - 1)] if n else np.zeros(ids.shape, bool)
    need = np.where(to_nf, max(COPY_SIM, dup), dup)
    # float32 rounding: identical rows can score 1 - 1e-7
    hit = (ids >= 0) & (sims >= need - 1e-6) & (ids != (n + np.arange(m))[:, None])
    to_stored &= hit
    row = np.flatnonzero(to_stored.any(axis=1))
    copy_of[row] = ids[row, to_stored[row].argmax(axis=1)]  # lists are sorted: the closest copy
    r, c = np.nonzero(hit & (ids >= n))
    return copy_of, r.astype(np.int64), (ids[r, c] - n).astype(np.int64)


def _neighbour_ids(ids, stored_ids, ids_out, n):
    """(M, k) existing cluster id of every kNN neighbour (-1: an unassigned new face)."""
    from_new = ids_out[np.clip(ids - n, 0, len(ids_out) - 1)]
    return np.where(ids < n, stored_ids[np.clip(ids, 0, n - 1)], from_new) if n else from_new


def _strong_group_vote(grp, rest, sims, ids, stored_ids, ids_out, n, min_sim, cfg, min_links):
    """(len(rest),) existing id per face of each group whose strong links into existing clusters
    go >= ``assign_share`` to one cluster C, and either reach >= ``group_cover`` of C's members
    or fill >= ``min_links`` of the group's kNN slots (-1 for the other groups).

    The second condition is what keeps a big new person apart from an old cluster that a few
    look-alike links touch (measured: a new 805-face person joined a 300-face cluster through
    3 links without it), while a known person's new photos, which link to each other more
    than to their few old photos, still join: they reach most of those old photos."""
    sub_ids = ids[rest]
    nb = _neighbour_ids(sub_ids, stored_ids, ids_out, n)
    ok = (sims[rest] >= min_sim) & (nb >= 0)
    res = np.full(len(rest), -1, np.int64)
    if not ok.any():
        return res
    r, c = np.nonzero(ok)
    n_groups = int(grp.max()) + 1
    n_old = int(nb.max()) + 1
    votes = sp.csr_matrix((np.ones(len(r)), (grp[r], nb[r, c])), shape=(n_groups, n_old))
    votes.sum_duplicates()
    total = np.asarray(votes.sum(axis=1)).reshape(-1)
    top = np.asarray(votes.argmax(axis=1)).reshape(-1)
    top_v = np.asarray(votes.max(axis=1).todense()).reshape(-1)
    # members of the top cluster reached (distinct faces: stored ones and assigned new ones)
    g = grp[r]
    to_top = nb[r, c] == top[g]
    pair = np.unique(g[to_top] * np.int64(n + len(ids_out)) + sub_ids[r, c][to_top])
    reached = np.bincount(pair // np.int64(n + len(ids_out)), minlength=n_groups)
    size = np.bincount(stored_ids, minlength=n_old)[:n_old] if n else np.zeros(n_old, np.int64)
    assigned = ids_out[ids_out >= 0]
    size = size + np.bincount(assigned, minlength=n_old)[:n_old]
    slots = np.bincount(grp, minlength=n_groups) * max(ids.shape[1] - 1, 1)
    good = (top_v >= 1) & (top_v >= cfg.assign_share * total) & (
        (reached >= cfg.group_cover * size[top]) | (top_v >= min_links * slots)
    )
    gid = np.where(good, top, -1)
    return gid[grp]


def _group_vote(grp, rest, sims, ids, stored_ids, ids_out, n, merge_k, merge_min_sim, settings, next_id):
    """The default's fragment merge, run on a compact graph: the unassigned new faces (voting with
    their kNN lists) plus, for each existing cluster they touch, as many voteless nodes as the
    cluster has members (so "the target is bigger" sees the true size). Existing clusters cast no
    vote, so they never move. Returns the (len(rest),) ids: existing ids, or ``next_id + group``."""
    from .graph import merge_fragments

    m = ids.shape[0]
    n_groups = int(grp.max()) + 1
    # existing cluster of every neighbour: stored faces, and new faces already assigned
    nb_lab = _neighbour_ids(ids, stored_ids, ids_out, n)
    pos_in_rest = np.full(m, -1, np.int64)
    pos_in_rest[rest] = np.arange(len(rest))
    touched = np.unique(nb_lab[rest][nb_lab[rest] >= 0])
    if len(touched) == 0:
        return next_id + grp
    # cluster sizes: stored members + new faces assigned to them in step 2
    sizes = np.bincount(stored_ids, minlength=int(touched.max()) + 1) if n else np.zeros(int(touched.max()) + 1, np.int64)
    assigned = ids_out[ids_out >= 0]
    sizes = sizes + np.bincount(assigned, minlength=len(sizes))[: len(sizes)]
    t_size = sizes[touched]
    # node layout: rest faces [0, R), then for touched cluster j a block of t_size[j] nodes
    r = len(rest)
    block_start = r + np.concatenate([[0], np.cumsum(t_size)[:-1]])
    total = r + int(t_size.sum())
    labels = np.empty(total, np.int64)
    labels[:r] = grp
    labels[r:] = n_groups + np.repeat(np.arange(len(touched)), t_size)
    # kNN lists of the rest faces (merge_k others + self, as the default uses them)
    kk = min(merge_k + 1, ids.shape[1])
    sub_ids, sub_sims = ids[rest, :kk], sims[rest, :kk]
    sub_lab = nb_lab[rest, :kk]
    node = np.full(sub_ids.shape, -1, np.int64)
    new_nb = sub_ids >= n
    # a neighbour that is an unassigned new face: its own node; self stays itself (ignored by merge)
    nb_rest = pos_in_rest[np.clip(sub_ids - n, 0, m - 1)]
    node = np.where(new_nb & (nb_rest >= 0), nb_rest, node)
    # a neighbour in an existing cluster: the first node of that cluster's block (only the
    # cluster a link lands in matters to the vote, not which member)
    in_old = sub_lab >= 0
    j = np.searchsorted(touched, np.where(in_old, sub_lab, touched[0]))
    node = np.where(in_old, block_start[np.clip(j, 0, len(touched) - 1)], node)
    full_ids = np.full((total, kk), -1, np.int64)
    full_ids[:r] = node
    full_sims = np.full((total, kk), -np.inf, np.float32)
    full_sims[:r] = np.where(node >= 0, sub_sims, -np.inf)
    # each voteless node gets kk - 1 placeholder links inside its own block (similarity -inf:
    # never strong, never a vote), so that an existing cluster's slots count its members as they
    # would in one run over everything. Without them its capacity was only that of the new faces
    # already in it, and one such face linking on to a big new group made the cluster "pass" the
    # mutual rule's tests towards that group: a new 153-face person joined an old 123-face
    # cluster through 1.6 % of its slots (docs/benchmarks/incremental.md, "Twenty-fifth session")
    node_ids = np.arange(r, total)
    first = np.repeat(block_start, t_size)  # each voteless node's block start
    size = np.repeat(t_size, t_size)
    full_ids[r:] = (first + (node_ids - first + 1) % size)[:, None]  # the next node of the block
    full_ids[r:, 0] = node_ids  # self first, as in a real list: kk - 1 slots each
    out = merge_fragments(
        labels,
        full_ids,
        full_sims,
        min_sim=merge_min_sim,
        share=float(settings.get("merge_share", 0.75)),
        min_links=float(settings.get("merge_min_links", 0.15)),
        min_size=int(settings.get("merge_min_size", 1)),
        mutual=bool(settings.get("merge_mutual", True)),
        # the existing clusters' members have no lists here (voteless nodes), so no link into
        # them can be reciprocal: the lone-face reciprocity rule does not apply to `add`
        lone_recip=0,
    )
    # which existing cluster (if any) each resulting class holds
    cls_old = np.full(int(out.max()) + 1, -1, np.int64)
    cls_old[out[r:]] = np.repeat(touched, t_size)
    res = cls_old[out[:r]]
    still_new = res < 0
    # new groups: label by class so merged new groups share an id (renumbered later)
    res[still_new] = next_id + out[:r][still_new]
    return res


def _suggested_merges(ids_out, sims, ids, strong_stored, stored_ids, n, cfg: IncrementalConfig) -> list[dict]:
    """Existing ids that the new faces of one final cluster link strongly (each >= bridge_min_links
    links and >= bridge_share of that cluster's strong links into existing clusters)."""
    if not strong_stored.any():
        return []
    r, c = np.nonzero(strong_stored)
    grp = ids_out[r]
    old = stored_ids[ids[r, c]]
    g_u, g_inv = np.unique(grp, return_inverse=True)
    o_u, o_inv = np.unique(old, return_inverse=True)
    cnt = sp.csr_matrix((np.ones(len(r)), (g_inv, o_inv)), shape=(len(g_u), len(o_u)))
    cnt.sum_duplicates()
    tot = np.asarray(cnt.sum(axis=1)).reshape(-1)
    cnt = cnt.tocoo()
    ok = (cnt.data >= cfg.bridge_min_links) & (cnt.data >= cfg.bridge_share * tot[cnt.row])
    pairs: dict[tuple[int, int], dict] = {}
    rows, cols, vals = cnt.row[ok], cnt.col[ok], cnt.data[ok]
    for g in np.unique(rows):
        sel = rows == g
        linked = sorted(zip(o_u[cols[sel]].tolist(), vals[sel].astype(int).tolist()))
        n_faces = int((ids_out == g_u[g]).sum())
        for a in range(len(linked)):
            for b in range(a + 1, len(linked)):
                key = (linked[a][0], linked[b][0])
                e = pairs.setdefault(key, {"ids": list(key), "links": [0, 0], "faces": 0})
                e["links"][0] += linked[a][1]
                e["links"][1] += linked[b][1]
                e["faces"] += n_faces
    return [pairs[k] for k in sorted(pairs)]


# ------------------------------------------------------------------------------ on-disk state
class Collection:
    """Paths and state of W/collection (see module doc)."""

    def __init__(self, wd: WorkDir):
        self.wd = wd
        self.root = wd.root / "collection"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_path(self) -> Path:
        return self.wd.root / "collection.lock"

    def segment(self, b: int) -> Path:
        return self.root / f"batch-{b:05d}.npz"

    def segment_meta(self, b: int) -> Path:
        return self.root / f"batch-{b:05d}.json"

    def incoming(self, fp: str) -> WorkDir:
        return WorkDir(self.root / "incoming" / fp[:16])

    def exists(self) -> bool:
        return self.state_path.exists()

    def state(self) -> dict:
        try:
            st = read_json(self.state_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.wd.root} holds no collection yet (no {self.state_path})") from None
        if st.get("format") != STATE_FORMAT or not isinstance(st.get("version"), int):
            raise CollectionError(f"{self.state_path}: not a facecluster collection state")
        if st["version"] > STATE_VERSION:
            raise CollectionError(
                f"{self.state_path}: collection format version {st['version']} is newer than this "
                f"facecluster understands ({STATE_VERSION}); upgrade facecluster"
            )
        return st

    def load_features(self, st: dict) -> tuple[np.ndarray, np.ndarray]:
        """All stored features (N, D) float32 raw, in the order added, and their ids (N,) int64."""
        feats, ids = [], []
        for b in st["batches"]:
            with np.load(self.segment(b["batch"])) as z:
                if len(z["ids"]) != b["n_features"]:
                    raise CollectionError(f"{self.segment(b['batch'])}: {len(z['ids'])} rows, state says {b['n_features']}")
                feats.append(z["features"])
                ids.append(z["ids"])
        dim = int(st["dim"])
        return (
            np.ascontiguousarray(np.concatenate(feats) if feats else np.zeros((0, dim), np.float32), np.float32),
            np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64),
        )

    def no_face(self, st: dict) -> np.ndarray:
        """(N,) bool over :meth:`load_features`' rows: the stored crops that hold no face (the
        segment's ``no_face`` rows; segments written before it had them: their batch meta)."""
        out = []
        for b in st["batches"]:
            with np.load(self.segment(b["batch"])) as z:
                if "no_face" in z.files:
                    out.append(z["no_face"].astype(bool))
                    continue
                row = z["row"]
            # a batch meta holds every record and path: read only for such older segments
            out.append(np.isin(row, np.asarray(read_json(self.segment_meta(b["batch"])).get("no_face", []), np.int64)))
        return np.concatenate(out) if out else np.zeros(0, bool)

    def records(self, st: dict) -> list[dict]:
        """Every record of the collection in the order added, with cluster_id (and error)."""
        out = []
        for b in st["batches"]:
            out.extend(_batch_output(read_json(self.segment_meta(b["batch"]))))
        return out

    def paths(self, st: dict) -> list[str]:
        """Resolved image path of every record of :meth:`records` (relative ``img_path`` values
        are relative to their own batch's input file)."""
        out: list[str] = []
        for b in st["batches"]:
            out.extend(read_json(self.segment_meta(b["batch"]))["paths"])
        return out

    def review(self, st: dict, records: list[dict] | None = None) -> tuple[list[dict], list[bool] | None, str | None]:
        """Records for the review page (img_path resolved) and which were added by the last
        ``add``: ``records`` may be the whole collection (``write``) or the last add's output."""
        all_recs = self.records(st)
        last = st["batches"][-1] if st["batches"] else None
        if last is None or last["source"] != "add":
            return records or all_recs, None, None
        label = f"batch {last['batch']} ({last['added']})"
        paths = self.paths(st)
        if records is None or len(records) == len(all_recs):
            recs = [dict(r, img_path=p) for r, p in zip(records or all_recs, paths)]
            return recs, (self.batch_of_records(st) == last["batch"]).tolist(), label
        if len(records) == last["n_records"]:
            recs = [dict(r, img_path=p) for r, p in zip(records, paths[-last["n_records"]:])]
            return recs, [True] * len(recs), label
        return records, None, None

    def batch_of_records(self, st: dict) -> np.ndarray:
        """(n_records,) int: the batch each record of :meth:`records` came from."""
        return np.concatenate([np.full(b["n_records"], b["batch"], np.int64) for b in st["batches"]]) if st["batches"] else np.zeros(0, np.int64)


def _batch_output(meta: dict) -> list[dict]:
    errors, no_face = meta["errors"], set(meta.get("no_face", []))
    return [contract.output_record(rec, int(cid), errors.get(str(i)), i in no_face)
            for i, (rec, cid) in enumerate(zip(meta["records"], meta["cluster_ids"]))]


@contextmanager
def locked(coll: Collection, wait: bool = True, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold W's collection lock (``fcntl.flock``, exclusive) for the block.

    When another process holds it: with ``wait`` print one message and block until it is free,
    else raise :class:`CollectionBusy`. The lock is released by the kernel if the holder dies,
    so a killed ``add`` never leaves W locked."""
    coll.wd.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(coll.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise CollectionBusy(
                    f"{coll.wd.root} is being changed by another `facecluster add` ({holder}); "
                    "try again when it has finished (or drop --no-wait to wait for it)"
                ) from None
            if log:
                log(f"waiting for another `facecluster add` on {coll.wd.root} ({holder}) to finish ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _embedder_spec(desc: dict) -> str:
    return desc["embedder"] if not desc.get("path") else f"{desc['embedder']}:{desc['path']}"


def init_from_run(coll: Collection, method: str) -> dict:
    """Make batch 0 from W's ``run`` (manifest + features + labels-METHOD); returns the state.

    Batch 0's ids are exactly the ids ``facecluster write`` gave that run, so its output stays valid."""
    from . import pipeline

    wd = coll.wd
    if method not in INCREMENTAL_METHODS:
        raise CollectionError(_no_incremental(method))
    man = wd.read_manifest()
    feats, index, fmeta = wd.read_features()
    if fmeta.get("manifest") != man["fingerprint"]:
        raise CollectionError(f"{wd.root}: features are from a different input than manifest.json; finish `facecluster run` there first")
    lab_path, lmeta_path = wd.labels(method), wd.labels_meta(method)
    if not lab_path.exists() or not lmeta_path.exists():
        others = sorted(p.name[len("labels-") : -len(".npy")] for p in wd.root.glob("labels-*.npy"))
        if others:
            raise CollectionError(f"{wd.root} was clustered with {', '.join(others)}: " + _no_incremental(others[0]))
        raise CollectionError(f"{wd.root} has no {method} clustering yet: run `facecluster run IN.json -o OUT.json --work-dir {wd.root}` first")
    lmeta = read_json(lmeta_path)
    labels = np.load(lab_path)
    if len(labels) != len(index):
        raise CollectionError(f"{lab_path}: {len(labels)} labels for {len(index)} features; rerun `facecluster cluster`")
    errors = {int(k): v for k, v in fmeta["errors"].items()}
    # exactly what `write` produced for this run
    no_face = pipeline.no_face_records(index, lmeta)
    out = contract.build_output(man["records"], index, labels, errors, no_face=no_face)
    cids = np.array([r["cluster_id"] for r in out], np.int64)
    row_ids = cids[index]
    settings = dict(lmeta.get("settings", {}))
    # a clustering recorded before Infomap's exponential edge weights existed used plain weights
    settings.setdefault("weight_temp", 0.0)
    # ... and before cohort normalisation existed, the raw cosine
    settings.setdefault("cohort_norm", False)
    for key in ("min_sim", "merge_min_sim"):
        if settings.get(key) is None:
            raise CollectionError(f"{lmeta_path}: setting {key} not recorded; rerun `facecluster cluster --method {method}`")
    coll.root.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(coll.segment(0), features=np.ascontiguousarray(feats, np.float32), row=index.astype(np.int64), ids=row_ids,
                    no_face=np.isin(index, np.asarray(no_face, np.int64)))
    atomic_write_json(
        coll.segment_meta(0),
        {
            "batch": 0,
            "input": man.get("input"),
            "records": man["records"],
            "paths": man["paths"],
            "errors": {str(k): v for k, v in sorted(errors.items())},
            "cluster_ids": cids.tolist(),
            "no_face": no_face,
        },
    )
    st = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "method": method,
        "settings": settings,
        "embedder": fmeta["embedder"],
        "dim": int(fmeta["dim"]),
        "next_id": int(cids.max() + 1) if (cids >= 0).any() else 0,
        "n_records": len(out),
        "n_features": int(len(index)),
        "batches": [
            {
                "batch": 0,
                "source": "run",
                "input": man.get("input"),
                "input_fingerprint": man["fingerprint"],
                "n_records": len(out),
                "n_features": int(len(index)),
                "n_failed": int((cids < 0).sum()),
                "new_ids": [0, int(cids.max() + 1) if (cids >= 0).any() else 0],
                "added": _now(),
            }
        ],
        "suggested_merges": [],
    }
    atomic_write_json(coll.state_path, st)
    return st


def _no_incremental(method: str) -> str:
    return (
        f"method {method!r} has no incremental form; `facecluster add` works with: "
        f"{', '.join(INCREMENTAL_METHODS)} (run the collection with --method {INCREMENTAL_METHODS[0]})"
    )


@dataclass
class AddResult:
    records: list[dict]
    batch: int
    already: bool
    summary: dict[str, Any]
    suggested_merges: list[dict]
    timings: dict[str, float]


def add(
    wd: WorkDir,
    input_path: str | os.PathLike,
    method: str | None = None,
    embedder_spec: str | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    config: IncrementalConfig | None = None,
    embed_only: bool = False,
    wait: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    progress: bool = False,
) -> AddResult | None:
    """Add the records of ``input_path`` to the collection in ``wd`` (see module doc).

    Raises ContractError (invalid input), CollectionError (refusals), CollectionBusy, FileNotFoundError
    (W has no run). With ``embed_only`` only the new records are embedded (the recognition image's
    part in Kubernetes) and None is returned."""
    from . import pipeline

    coll = Collection(wd)
    records, paths = contract.load_input(input_path)  # invalid input: refuse before touching W
    timings: dict[str, float] = {}
    with locked(coll, wait=wait, log=log):
        t0 = time.perf_counter()
        if coll.exists():
            st = coll.state()
            if method and method != st["method"]:
                raise CollectionError(
                    f"{wd.root} is a {st['method']} collection; " + (_no_incremental(method) if method not in INCREMENTAL_METHODS else f"it cannot be grown with {method}")
                )
        else:
            method = method or "infomap"
            if method not in INCREMENTAL_METHODS:
                raise CollectionError(_no_incremental(method))
            if embed_only:
                # the recognition image cannot read labels; batch 0 is made by the add Job itself
                st = _peek_run_state(wd, method)
            else:
                st = init_from_run(coll, method)
                log(f"[add] {wd.root}: made the collection from the earlier run ({st['n_records']} records, ids 0..{st['next_id'] - 1})")
        want = st["embedder"]
        spec = embedder_spec or _embedder_spec(want)
        # same input again (e.g. rerun after a kill that came after the commit): write its output only
        fp_in = fingerprint("prepare", records, paths, [pipeline._stat(p) for p in paths])
        for b in st["batches"]:
            if b["input_fingerprint"] == fp_in and b["source"] == "add":
                if embed_only:
                    log(f"[add] {input_path} is already batch {b['batch']} of {wd.root}; nothing to embed")
                    return None
                log(f"[add] {input_path} was already added as batch {b['batch']}; writing its output again (nothing added)")
                shutil.rmtree(coll.incoming(fp_in).root, ignore_errors=True)  # left by a kill after the commit
                meta = read_json(coll.segment_meta(b["batch"]))
                out = _batch_output(meta)
                return AddResult(out, b["batch"], True, _summary(out, st, b), [m for m in st["suggested_merges"] if m["batch"] == b["batch"]], {})
        # embed only the new records, with the batch path's stages in a work dir of their own
        inc = coll.incoming(fp_in)
        t = time.perf_counter()
        pipeline.prepare(input_path, inc)
        man = inc.read_manifest()
        if man["fingerprint"] != fp_in:  # files changed between reading and preparing
            raise CollectionError(f"{input_path} changed while being added; run the command again")
        fresh = _embedded(inc, man, want)
        if not fresh:
            try:
                from .embed import get_embedder

                emb = get_embedder(spec, device=device, batch_size=batch_size)
            except ImportError as e:  # e.g. the clustering image, which has no face models
                raise CollectionError(
                    f"cannot embed the new records here ({e}); run `facecluster add {input_path} --work-dir "
                    f"{wd.root} --embed-only` where the embedder is installed (the recognition image) first"
                ) from None
            if emb.fingerprint() != want["fingerprint"] or emb.name != want["embedder"]:
                raise CollectionError(
                    f"{wd.root} was embedded with {_embedder_spec(want)} (fingerprint {want['fingerprint'][:12]}), "
                    f"but --embedder {spec} gives {emb.name} (fingerprint {emb.fingerprint()[:12]}): features of "
                    "different embedders or settings cannot be compared; use the same embedder"
                )
            del emb
            pipeline.embed(inc, (0, 1), spec, device, batch_size, progress=progress)
            pipeline.merge(inc, 1)
            if not _embedded(inc, man, want):
                raise CollectionError("the new records' features do not match the collection's embedder")
        timings["embed"] = time.perf_counter() - t
        if embed_only:
            return None
        new_x, new_index, new_meta = inc.read_features()
        if new_x.shape[1] != st["dim"]:
            raise CollectionError(f"new features are {new_x.shape[1]}-D, the collection's are {st['dim']}-D")
        t = time.perf_counter()
        stored_x, stored_ids = coll.load_features(st)
        timings["load"] = time.perf_counter() - t
        res = assign(stored_x, stored_ids, new_x, st["next_id"], st["settings"], config, device=device,
                     stored_no_face=coll.no_face(st))
        timings.update(res.timings)
        b = len(st["batches"])
        errors = {int(k): v for k, v in new_meta["errors"].items()}
        cids = np.full(len(records), -1, np.int64)
        cids[new_index] = res.ids
        for i in errors:
            cids[i] = -1
        t = time.perf_counter()
        # segments first, then the state that names them (the commit point)
        no_face = np.zeros(len(new_index), bool) if res.no_face is None else res.no_face
        atomic_save_npz(coll.segment(b), features=new_x, row=new_index.astype(np.int64), ids=res.ids, no_face=no_face)
        atomic_write_json(
            coll.segment_meta(b),
            {
                "batch": b,
                "input": str(Path(input_path).resolve()),
                "records": records,
                "paths": paths,
                "errors": {str(k): v for k, v in sorted(errors.items())},
                "cluster_ids": cids.tolist(),
                "joined": res.joined.tolist(),
                "no_face": np.asarray(new_index, np.int64)[no_face].tolist(),
            },
        )
        merges = [dict(mg, batch=b) for mg in res.suggested_merges]
        entry = {
            "batch": b,
            "source": "add",
            "input": str(Path(input_path).resolve()),
            "input_fingerprint": fp_in,
            "n_records": len(records),
            "n_features": int(len(new_index)),
            "n_failed": int((cids < 0).sum()),
            "new_ids": [int(st["next_id"]), int(res.next_id)],
            "joined_existing": int((res.joined > 0).sum()),
            "incremental": (config or IncrementalConfig()).model_dump(),
            "added": _now(),
        }
        # seconds per step up to the commit (embedding of the new records included)
        entry["timings"] = {k_: round(v, 3) for k_, v in timings.items()}
        st = dict(st)
        st["batches"] = [*st["batches"], entry]
        st["next_id"] = int(res.next_id)
        st["n_records"] = int(st["n_records"]) + len(records)
        st["n_features"] = int(st["n_features"]) + int(len(new_index))
        st["suggested_merges"] = [*st["suggested_merges"], *merges]
        atomic_write_json(coll.state_path, st)
        timings["commit"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        shutil.rmtree(inc.root, ignore_errors=True)  # committed: the scratch embedding is no longer needed
        meta = read_json(coll.segment_meta(b))
        out = _batch_output(meta)
        return AddResult(out, b, False, _summary(out, st, entry), merges, timings)


def _peek_run_state(wd: WorkDir, method: str) -> dict:
    """The embedder of W's run, for an embed-only add before the collection exists."""
    _, _, fmeta = wd.read_features()
    return {"embedder": fmeta["embedder"], "batches": [], "dim": int(fmeta["dim"])}


def _embedded(inc: WorkDir, man: dict, want: dict) -> bool:
    """True when ``inc`` holds merged features of this manifest from the collection's embedder
    (checked from the recorded fingerprints, so an image without the embedder can use them)."""
    try:
        fmeta = read_json(inc.features_meta)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    e = fmeta.get("embedder", {})
    return (
        fmeta.get("manifest") == man["fingerprint"]
        and e.get("fingerprint") == want["fingerprint"]
        and e.get("embedder") == want["embedder"]
        and inc.features_npy.exists()
        and inc.features_index.exists()
    )


def _summary(out: list[dict], st: dict, entry: dict) -> dict[str, Any]:
    ids = [r["cluster_id"] for r in out if r["cluster_id"] >= 0]
    lo = entry["new_ids"][0]
    return {
        "records": len(out),
        "clustered": len(ids),
        "failed": sum(1 for r in out if r["cluster_id"] < 0),
        # a copy of a stored crop with no face takes its id, but joins nobody
        "joined": sum(1 for r in out if 0 <= r["cluster_id"] < lo and not r.get("no_face")),
        # a crop with no face has an id of its own, but is nobody
        "new_people": len({r["cluster_id"] for r in out if r["cluster_id"] >= lo and not r.get("no_face")}),
        "no_face": sum(1 for r in out if r.get("no_face")),
        "batch": entry["batch"],
        "collection_records": st["n_records"],
        "next_id": st["next_id"],
        "method": st["method"],
        "embedder": st["embedder"]["embedder"],
    }


def write_collection(wd: WorkDir, output: str | os.PathLike) -> tuple[list[dict], dict[str, Any]]:
    """Write every record of the collection, in the order added, with its stable id (atomic)."""
    coll = Collection(wd)
    st = coll.state()
    out = coll.records(st)
    atomic_write_bytes(output, (json.dumps(out, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    ids = [r["cluster_id"] for r in out if r["cluster_id"] >= 0]
    summary = {
        "records": len(out),
        "clustered": len(ids),
        "failed": len(out) - len(ids),
        "clusters": len(set(ids)),
        "singletons": int((np.bincount(ids) == 1).sum()) if ids else 0,
        "method": st["method"],
        "settings": st["settings"],
        "embedder": st["embedder"]["embedder"],
        "batches": len(st["batches"]),
    }
    return out, summary


def write_output(records: list[dict], output: str | os.PathLike) -> None:
    atomic_write_bytes(output, (json.dumps(records, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
