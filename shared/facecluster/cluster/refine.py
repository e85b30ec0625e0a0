"""The default method's post-steps on the kNN graph, as one reusable function (issue 11).

:class:`~facecluster.cluster.infomap.InfomapClusterer` gets much of its recall on long videos
and blurred sources from three generic steps that take *any* partition plus the faces' kNN
lists (ids and cosine similarities of the plain L2-normalised descriptors): the fragment merge
(:func:`facecluster.graph.merge_fragments`), the small-cluster attach
(:func:`facecluster.graph.attach_small`) and the relative attach
(:func:`facecluster.graph.attach_relative`), with an optional weak-cut split
(:func:`facecluster.graph.split_weak`, off by default). :func:`refine_partition` runs them in
Infomap's order with Infomap's settings; the learned methods (gcn-v, gcn-ve, adanets) run the
same function on their own output (:func:`refine_learned`, setting ``refine``), with the
thresholds Infomap uses for the embedder (they are properties of the plain-descriptor cosine, not
of Infomap) except ``LEARNED_REFINE_DEFAULTS``, and with a stricter similarity floor on their own
links (``REFINED_LINK_FLOOR_BY_EMBEDDER``). Measured: docs/benchmarks/gcn_ve.md §7.

The learned methods search their kNN on the features their checkpoint expects (mean-centred
for the shipped dlib weights). :func:`plain_knn_from` turns those lists into plain-cosine
lists without a second search: it scores each listed neighbour with the plain cosine and
re-sorts the row. The candidates are the method's own k nearest (80 by default), and the
steps read at most the first ``merge_k + 1`` (41) of each re-sorted row.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Optional

import numpy as np
from pydantic import Field, field_validator

from ..calibration import pair_cosine
from ..graph import attach_relative, attach_small, dissolve_soups, merge_fragments, split_weak
from .base import ClusterConfig

#: the post-step settings of ``InfomapConfig`` that ``refine_settings`` may override
REFINE_FIELDS: tuple[str, ...] = (
    "merge_fragments",
    "merge_min_sim",
    "merge_k",
    "merge_share",
    "merge_min_links",
    "merge_min_size",
    "merge_mutual",
    "merge_close_q",
    "merge_close_min_links",
    "merge_close_margin",
    "merge_close_piece",
    "merge_open",
    "merge_open_share",
    "merge_open_margin",
    "merge_open_mutual",
    "merge_open_pair_share",
    "merge_tight_min_size",
    "merge_tight_margin",
    "merge_again",
    "refine_rounds",
    "merge_lone_recip",
    "attach_max_size",
    "attach_min_size",
    "attach_k",
    "attach_min_sim",
    "attach_share",
    "attach_frac",
    "attach_rel_q",
    "attach_rel_margin",
    "attach_rel_share",
    "attach_rel_min_sim",
    "attach_rel_min_size",
    "attach_rel_min_target",
    "attach_big_min_target",
    "attach_big_frac",
    "attach_big_share",
    "attach_big_margin",
    "attach_big_min_links",
    "split_min_size",
    "split_k",
    "split_min_sim",
    "split_max_cut",
    "split_min_part",
    "split_small_size",
    "split_small_k",
    "split_small_min_size",
)


def refine_partition(
    labels: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    cfg: Any,
    *,
    merge_min_sim: float,
    attach_min_sim: float,
    lone_recip: int = 0,
    attach_big_min_target: int = 0,
    tight_margin: Optional[float] = None,
    open_lit: Optional[np.ndarray] = None,
    timed: Optional[Callable[[str], ContextManager]] = None,
) -> np.ndarray:
    """Fragment merge, optional weak-cut split, then passes of: small-cluster attach, relative
    attach, (``merge_again``) a second fragment merge of clusters of two or more faces, and the
    big-cluster attach (``attach_big_min_target`` > 0), repeated until a pass joins nothing (at
    most ``refine_rounds`` passes).

    Parameters
    ----------
    labels : (N,) int partition to refine (singletons have their own ids).
    ids, sims : (N, k) kNN lists of the plain L2-normalised descriptors, nearest first
        (self anywhere, ignored; -1 = no neighbour); the similarities may be cohort-normalised
        (:mod:`facecluster.cohort`, Infomap) while the order stays the plain cosine's.
    cfg : an object with the post-step settings named in ``REFINE_FIELDS`` (an ``InfomapConfig``).
    lone_recip : the resolved ``merge_lone_recip`` (``InfomapClusterer.lone_recip``).
    attach_big_min_target : the resolved ``attach_big_min_target``
        (``InfomapClusterer.attach_big_min_target``; 0: off).
    tight_margin : the resolved ``merge_tight_margin`` (``InfomapClusterer.tight_margin``; None:
        no tight joins, whatever ``cfg.merge_tight_min_size``).
    open_lit : optional (N,) float32, how much the cohort's parts raised each face's level; with
        ``cfg.merge_open_lit`` it keeps such faces' clusters out of the open-piece rules
        (:func:`facecluster.graph.merge_fragments`). None (the learned methods): no exception.
    merge_min_sim, attach_min_sim : the resolved thresholds (cosine); ``cfg``'s
        ``split_min_sim`` / ``attach_rel_min_sim`` default to ``merge_min_sim`` when None.
    timed : optional ``timed(step)`` context manager recording each step's time.

    Returns
    -------
    (N,) int64 labels; every input cluster is kept or wholly joined to another.
    """
    timed = timed or (lambda step: nullcontext())

    def merge(labels: np.ndarray, min_size: int, lone: int) -> np.ndarray:
        with timed("merge"):
            # self is in the list (ignored); merge_k other neighbours vote
            m = cfg.merge_k + 1
            return merge_fragments(
                labels,
                ids[:, :m],
                sims[:, :m],
                min_sim=merge_min_sim,
                share=cfg.merge_share,
                min_links=cfg.merge_min_links,
                min_size=min_size,
                mutual=cfg.merge_mutual,
                close_q=cfg.merge_close_q,
                close_min_links=cfg.merge_close_min_links,
                close_margin=cfg.merge_close_margin,
                close_piece=cfg.merge_close_piece,
                open_frac=cfg.merge_open,
                open_share=cfg.merge_open_share,
                open_margin=cfg.merge_open_margin,
                open_mutual=cfg.merge_open_mutual,
                open_pair_share=cfg.merge_open_pair_share,
                open_lit=open_lit,
                open_lit_max=cfg.merge_open_lit,
                tight_min_size=cfg.merge_tight_min_size if tight_margin is not None else None,
                tight_margin=tight_margin if tight_margin is not None else 0.0,
                lone_recip=lone,
            )

    if cfg.merge_fragments:
        labels = merge(labels, cfg.merge_min_size, lone_recip)
    # the weak-cut split: clusters of >= split_min_size faces on their split_k-NN graph, then
    # (split_small_size) the small ones again on fewer neighbours: with split_k lists a person with
    # fewer photos than split_k links across any cut inside the cluster, so two look-alikes chained
    # together (ORL's 10-photo people, photo collections) show no weak cut at split_k
    tiers = []
    if cfg.split_min_size > 0:
        tiers.append(dict(min_size=cfg.split_min_size, top=cfg.split_k))
    if cfg.split_small_size is not None and cfg.split_small_size >= cfg.split_small_min_size:
        tiers.append(dict(min_size=cfg.split_small_min_size, max_size=cfg.split_small_size, top=cfg.split_small_k))
    for tier in tiers:
        with timed("split"):
            labels = split_weak(
                labels,
                ids,
                sims,
                min_sim=cfg.split_min_sim if cfg.split_min_sim is not None else merge_min_sim,
                min_part=cfg.split_min_part,
                max_cut=cfg.split_max_cut,
                **tier,
            )

    def later_steps(labels: np.ndarray) -> np.ndarray:
        # small-cluster and relative attach, second merge, big-cluster attach
        if cfg.attach_max_size > 0:
            with timed("attach"):
                labels = attach_small(
                    labels,
                    ids,
                    sims,
                    max_size=cfg.attach_max_size,
                    min_size=cfg.attach_min_size,
                    top=cfg.attach_k,
                    min_sim=attach_min_sim,
                    share=cfg.attach_share,
                )
        if cfg.attach_frac > 0:
            with timed("attach_rel"):
                labels = attach_relative(
                    labels,
                    ids,
                    sims,
                    max_frac=cfg.attach_frac,
                    min_size=cfg.attach_rel_min_size,
                    min_target=cfg.attach_rel_min_target,
                    top=cfg.attach_k,
                    min_sim=cfg.attach_rel_min_sim if cfg.attach_rel_min_sim is not None else merge_min_sim,
                    share=cfg.attach_rel_share,
                    q=cfg.attach_rel_q,
                    margin=cfg.attach_rel_margin,
                )
        if cfg.merge_fragments and cfg.merge_again:
            # the attach steps moved lone faces and small fragments into clusters; a piece whose links
            # went to those is now pointing into one cluster (a long-video person split 80 / 13 %
            # rejoins). Lone faces stay where the attach steps left them (passers-by).
            labels = merge(labels, max(2, cfg.merge_min_size), 0)
        if attach_big_min_target > 0:
            with timed("attach_big"):
                # a long video's person at low resolution: fragments that keep most neighbours among
                # themselves but whose links leaving them lean to that person's big cluster, as
                # strongly as its own weakest tenth (share of out-links, not of all slots)
                m = cfg.merge_k + 1  # only the first merge_k neighbours vote (self in the list, ignored)
                labels = attach_relative(
                    labels,
                    ids[:, :m],
                    sims[:, :m],
                    max_frac=cfg.attach_big_frac,
                    min_size=2,
                    min_target=attach_big_min_target,
                    top=cfg.merge_k,
                    min_sim=merge_min_sim,
                    share=cfg.attach_big_share,
                    q=cfg.attach_rel_q,
                    margin=cfg.attach_big_margin,
                    share_of="out",
                    ref_both=True,
                    fixed_targets=True,
                    min_links=cfg.attach_big_min_links,
                )
        return labels

    # Each step reads the partition the steps before it left, so one pass stops short of where
    # they agree: a cluster grown late in the pass (second merge, big-cluster attach) is what a
    # piece's links point into only in the next pass (a lone low-resolution clip's person left
    # in halves; docs/benchmarks/default_quality.md, "Post-steps until nothing moves"). Every
    # step only joins, so a pass that leaves the number of clusters unchanged changed nothing.
    clusters = len(np.unique(labels))
    for _ in range(cfg.refine_rounds):
        labels = later_steps(labels)
        before, clusters = clusters, len(np.unique(labels))
        if clusters == before:
            break
    return np.asarray(labels, np.int64)


def plain_knn_from(ids: np.ndarray, xr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-score kNN lists found in another feature space with the plain cosine and re-sort.

    Parameters
    ----------
    ids : (N, k) int neighbour ids (any order; -1 = none).
    xr : (N, D) float32 plain L2-normalised descriptors.

    Returns
    -------
    ids, sims : (N, k) int64 / float32, each row sorted by plain cosine, descending (ties keep
    the input order, so the result is deterministic); -1 entries get -inf and go last.
    """
    ids = np.asarray(ids, np.int64)
    n, k = ids.shape
    sims = np.full((n, k), -np.inf, np.float32)
    ok = ids >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)
    sims[ok] = pair_cosine(xr, rows[ok], ids[ok])
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)


class RefineConfig(ClusterConfig):
    """Settings of the learned methods' optional refinement (gcn-v, gcn-ve, adanets)."""

    refine: Optional[bool] = Field(
        None,
        description="After the method, run the default method's post-steps (fragment merge, "
        "small-cluster and relative attach: facecluster.cluster.refine) on its partition, with "
        "the plain-cosine kNN it already has. None: on when the similarity floor is on and the "
        "embedder has tuned post-step thresholds (dlib), off otherwise, so similarity_floor=false "
        "still gives the original algorithm.",
    )
    floor_cohort: Optional[bool] = Field(
        None,
        description="The similarity floor judges each link on the cohort-normalised cosine (facecluster.cohort): "
        "cos - (d_i + d_j) / 2 >= the floor, d = a face's level minus the cohort's reference (bounded), so a "
        "degraded face that resembles everyone needs a higher cosine to link. None: on when the floor is on and "
        "the embedder ships a cohort (dlib); false: the plain cosine (docs/benchmarks.md §9, 'Eleventh session').",
    )
    refine_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the post-step settings, by their infomap names (merge_min_sim, "
        "attach_frac, ...; facecluster.cluster.refine.REFINE_FIELDS). Unset: infomap's defaults for "
        "the embedder, except refine.LEARNED_REFINE_DEFAULTS (attach_share 0.6, ...) and, for gcn-v and "
        "gcn-ve, gcn_v.GCN_REFINE_DEFAULTS (merge_open_share 0.4; with dlib split_min_size 20), for adanets "
        "adanets.ADANETS_REFINE_DEFAULTS (merge_close_piece 0.2). What ran is recorded as refine_post_steps "
        "in labels-<method>.json.",
    )

    @field_validator("refine_settings")
    @classmethod
    def _known_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) - set(REFINE_FIELDS))
        if bad:
            raise ValueError(f"unknown refine_settings {bad}; choose from {', '.join(REFINE_FIELDS)}")
        return v

    def method_refine_defaults(self, embedder: Optional[str]) -> dict[str, Any]:
        """Where this method's refinement departs from ``LEARNED_REFINE_DEFAULTS`` for the
        embedder's features (each method's config overrides this; none here)."""
        return {}

    def refine_overrides(self, embedder: Optional[str]) -> dict[str, Any]:
        """The post-step settings the refinement replaces in Infomap's for the embedder, in three
        layers, later ones winning: ``LEARNED_REFINE_DEFAULTS``, the method's own
        (:meth:`method_refine_defaults`), the user's ``refine_settings``."""
        return {**LEARNED_REFINE_DEFAULTS, **self.method_refine_defaults(embedder), **self.refine_settings}


def refine_on(config: RefineConfig, embedder: Optional[str]) -> bool:
    """Whether the refinement runs: the setting, else on iff the floor is on and the embedder
    has tuned post-step thresholds (see ``RefineConfig.refine``)."""
    if config.refine is not None:
        return bool(config.refine)
    from .infomap import MERGE_MIN_SIM_BY_EMBEDDER

    return bool(getattr(config, "similarity_floor", False)) and (embedder or "") in MERGE_MIN_SIM_BY_EMBEDDER


#: Where the learned methods' refinement departs from Infomap's post-step settings (chosen on the
#: training identities, docs/benchmarks/gcn_ve.md §7): a small cluster attaches when 60 % of its
#: members' 10 nearest neighbours agree (Infomap: 80 %). A learned method's partition leaves more
#: small same-person fragments whose neighbours mostly, not almost all, agree.
#: The close-halves merge and the second merge pass (eleventh session) and the big-cluster attach
#: (fourteenth) were measured for Infomap only: off for them. Without the second merge and the
#: big-cluster attach their pass is the two attach steps, which already repeat until stable, so
#: they keep one pass (eighteenth session: repeated passes moved only gcn-ve's 48-px video,
#: +0.002). The open pieces of the fragment merge (nineteenth session) are on, chosen for them on
#: the training scenarios (adanets 48-px video 0.807 -> 0.878; docs/benchmarks.md §9,
#: "Nineteenth session"); the GCN methods need a stricter share (``GCN_REFINE_DEFAULTS``). The
#: mutual open pieces and the open pairs (twentieth session) are on for them too: chosen on the
#: training identities (short low-resolution clips alone: adanets 0.934 -> 0.941, gcn-ve 0.966 ->
#: 0.989; every tuning regime identical or better; docs/benchmarks.md §9, "Twentieth session").
#: Ada-NETS adds the close-halves test with close pieces (``adanets.ADANETS_REFINE_DEFAULTS``,
#: twenty-first session); the GCN methods keep it off (it joined Extended Yale B's lighting
#: clusters for gcn-ve, with their weak-cut split on too: twenty-second session).
LEARNED_REFINE_DEFAULTS: dict[str, Any] = {
    "attach_share": 0.6,
    # the learned methods' refinement was measured with one reciprocal link (the default's
    # second, fifteenth session, was chosen for Infomap only)
    "merge_lone_recip": 1,
    "merge_close_q": None,
    "merge_again": False,
    "attach_big_min_target": 0,
    "refine_rounds": 1,
}

#: The similarity floor of a learned method's own links when the refinement runs after it, per
#: embedder (plain-descriptor cosine; without the refinement ``calibration.LINK_FLOOR_BY_EMBEDDER``
#: applies). The refinement wins back the recall a stricter floor costs (it joins fragments and
#: lone faces by neighbour vote), so the floor can cut more of the different-person links the
#: learned parts make on a new source. dlib: chosen on the training identities
#: (``bench/refine_learned.py --tuning --floor F``) by the worst regime of gcn-ve,
#: docs/benchmarks/gcn_ve.md §7. mbf: 0.35, as without the refinement (on the training identities
#: 0.30 left 1.7 % of a regime's faces in mixed clusters, 0.325-0.40 none and the same worst
#: regime, 0.35 the best second worst; docs/benchmarks/gcn_ve.md §8).
REFINED_LINK_FLOOR_BY_EMBEDDER: dict[str, float] = {"dlib": 0.94, "mbf": 0.35}


def resolved_post_steps(config: RefineConfig, embedder: Optional[str]) -> Optional[dict[str, Any]]:
    """Every post-step setting the refinement runs with (``REFINE_FIELDS``; the thresholds
    resolved for the embedder), or None when it does not run. Recorded in the learned methods'
    ``settings()`` (labels-<method>.json and the work directory's fingerprint), so a changed
    method default reclusters and the record says what ran, not only what the user set."""
    if not refine_on(config, embedder):
        return None
    cfg, thresholds = post_step_plan(embedder, config.refine_overrides(embedder))
    out = {k: getattr(cfg, k) for k in REFINE_FIELDS}
    out.update(
        merge_min_sim=thresholds["merge_min_sim"], attach_min_sim=thresholds["attach_min_sim"],
        merge_lone_recip=thresholds["lone_recip"], attach_big_min_target=thresholds["attach_big_min_target"],
        merge_tight_margin=thresholds["tight_margin"],
    )
    return out


def post_step_plan(embedder: Optional[str], overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The post-steps' Infomap config and its thresholds resolved for the embedder, for
    ``overrides`` on top of ``LEARNED_REFINE_DEFAULTS``: the one resolution both
    :func:`refine_learned` (what runs) and :func:`resolved_post_steps` (what is recorded) use.

    Returns
    -------
    (InfomapConfig, dict) the config and ``{merge_min_sim, attach_min_sim, lone_recip,
    attach_big_min_target, tight_margin}``, the keyword arguments :func:`refine_partition` takes.
    """
    from .infomap import InfomapClusterer

    im = InfomapClusterer(embedder=embedder, **{**LEARNED_REFINE_DEFAULTS, **overrides})
    return im.config, dict(
        merge_min_sim=im.merge_min_sim(), attach_min_sim=im.attach_min_sim(), lone_recip=im.lone_recip(),
        attach_big_min_target=im.attach_big_min_target(), tight_margin=im.tight_margin(),
    )


def learned_link_floor(config: RefineConfig, embedder: Optional[str]) -> Optional[float]:
    """The floor a learned method uses (None: off): ``min_link_sim`` when set, else the
    embedder's refined floor when the refinement runs, else its plain floor."""
    from ..calibration import link_floor

    if not getattr(config, "similarity_floor", False):
        return None
    if getattr(config, "min_link_sim", None) is not None:
        return config.min_link_sim
    if refine_on(config, embedder) and (embedder or "") in REFINED_LINK_FLOOR_BY_EMBEDDER:
        return REFINED_LINK_FLOOR_BY_EMBEDDER[embedder or ""]
    return link_floor(embedder)


def learned_floor_dev(config: RefineConfig, embedder: Optional[str], xr: np.ndarray, *, backend: str = "auto", device: str = "cpu") -> Optional[np.ndarray]:
    """(N,) float32 per-face floor offsets (cohort deviations; a link i-j passes when
    cos - (d_i + d_j) / 2 >= the floor), or None: floor off, ``floor_cohort`` false, no cohort
    for the embedder, or features of another width (:func:`facecluster.cohort.resolve_cohort`:
    an error with ``floor_cohort=true``, a warning otherwise)."""
    from ..cohort import resolve_cohort

    if not getattr(config, "similarity_floor", False):
        return None
    co = resolve_cohort(config.floor_cohort, embedder, xr.shape[1], name="floor_cohort")
    if co is None:
        return None
    return co.deviations(co.levels(xr, backend=backend, device=device))


def learned_floor_cohort(config: RefineConfig, embedder: Optional[str], floor: Optional[float]) -> bool:
    """Whether a learned method's floor (``floor``, None: off) is cohort-normalised: the setting,
    else on when the embedder ships a cohort."""
    from ..cohort import load_cohort

    if floor is None or config.floor_cohort is False:
        return False
    return bool(config.floor_cohort) or load_cohort(embedder) is not None


def learned_weights_fingerprint(config: RefineConfig, embedder: Optional[str], floor: Optional[float]) -> Optional[str]:
    """The shipped cohort's content hash when the floor uses it (a new cohort reclusters)."""
    from ..cohort import cohort_fingerprint

    return cohort_fingerprint(embedder) if learned_floor_cohort(config, embedder, floor) else None


def floor_cosine(xr: np.ndarray, a: np.ndarray, b: np.ndarray, dev: Optional[np.ndarray] = None) -> np.ndarray:
    """Cosine of the pairs (a[p], b[p]) of L2-normalised rows of ``xr``, minus (dev[a] + dev[b]) / 2
    when ``dev`` (:func:`learned_floor_dev`) is given: what the similarity floor compares."""
    cos = pair_cosine(xr, a, b)
    if dev is not None:
        cos -= 0.5 * (dev[np.asarray(a, np.int64)] + dev[np.asarray(b, np.int64)])
    return cos


#: the lit check's weak-cut split judges clusters of at least this many faces (the GCN methods'
#: ``split_min_size``, ``gcn_v.GCN_REFINE_DEFAULTS``)
LIT_SPLIT_MIN_SIZE = 20
#: ... and its soup test clusters of at least this many (the default's ``soup_min_size``)
LIT_SOUP_MIN_SIZE = 8
#: ... and at most this many: a person's many photos under hard side lights from either side read
#: below the lit strangers on median too (measured -0.008 for 264 side-lit training photos, mostly
#: one person's), as a long video's person does for the default's soup test (its bound: 60); the
#: groups of lit strangers seen (Extended Yale B) hold up to 81 faces, and bigger clusters are
#: the weak-cut split's. Every value from 82 to 263 gives the same partitions on every regime
#: measured (docs/benchmarks/adanets.md §14)
LIT_SOUP_MAX_SIZE = 100
#: ... holding at most this share of the batch: a batch that is mostly one person's clip under
#: one light is left alone, as the default's soup guard does for one low-quality clip
LIT_SOUP_MAX_SHARE = 0.5


def check_lit(
    labels: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    xr: np.ndarray,
    *,
    cohort: Any,
    part: str,
    min_raise: float,
    split_min_sim: float,
    split_k: int = 10,
    split_max_cut: float = 0.05,
    split_min_part: int = 5,
    backend: str = "auto",
    device: str = "cpu",
) -> np.ndarray:
    """Check the clusters of faces seen in one cohort part's look (a hard side light).

    Why: under a hard light from one side different people's descriptors are alike (dlib:
    docs/benchmarks/default_quality.md, "A side-light part of the cohort"). A learned method's
    links then join whole groups of such faces: Ada-NETS on Extended Yale B put 13.8 % of the
    faces in mixed clusters (one of 203 faces of 10 people, one of 81 of 31). What tells such a
    group from one person is how its pairs compare with strangers *in the same look*: one
    person's faces of one session under one light are more alike than each is to the lit
    strangers most like it, a group of lit strangers is not (nor, on median, one person's many
    lit photos from many occasions: hence the size bound below). Only clusters whose faces the
    part raised by ``min_raise`` or more on average are judged (the part raises ordinary photos',
    video's and low-quality faces by 0.0001-0.0002 on average, a night camera's by 0.002,
    side-lit training photos and Extended Yale B by 0.011-0.013), in two steps:

    1. a weak cut in the cluster's own kNN graph splits it (:func:`facecluster.graph.split_weak`
       with the post-steps' split settings, as the GCN methods' split; clusters of >=
       ``LIT_SPLIT_MIN_SIZE`` faces);
    2. a cluster of ``LIT_SOUP_MIN_SIZE`` to ``LIT_SOUP_MAX_SIZE`` faces, at most
       ``LIT_SOUP_MAX_SHARE`` of the batch, whose median over its pairs of
       ``cos(i, j) - (L_i + L_j) / 2`` is below 0, ``L`` a face's raw level against the plain
       cohort or the part, whichever is higher (:meth:`facecluster.cohort.Cohort.look`),
       becomes lone faces (:func:`facecluster.graph.dissolve_soups`).

    Parameters
    ----------
    labels : (N,) int partition.
    ids, sims : (N, k) plain-cosine kNN lists, nearest first (self anywhere, ignored; -1 = none).
    xr : (N, D) float32 plain L2-normalised descriptors.
    cohort : the embedder's :class:`facecluster.cohort.Cohort`, holding a part called ``part``.
    part : the part's label (``side-light``).
    min_raise : the gate (cosine units), see above.
    split_min_sim, split_k, split_max_cut, split_min_part : the weak-cut split's settings
        (:func:`facecluster.graph.split_weak`).

    Returns
    -------
    (N,) int64 labels; clusters not judged keep their faces (ids renumbered 0..).
    """
    lab = np.asarray(labels, np.int64)
    if len(lab) < LIT_SOUP_MIN_SIZE:
        return lab
    raised, level = cohort.look(xr, part, backend=backend, device=device)
    lab = split_weak(lab, ids, sims, min_size=LIT_SPLIT_MIN_SIZE, top=split_k, min_sim=split_min_sim,
                     min_part=split_min_part, max_cut=split_max_cut, gate=raised, gate_min=min_raise)
    lab = dissolve_soups(lab, xr, level, below=0.0, min_size=LIT_SOUP_MIN_SIZE, max_size=LIT_SOUP_MAX_SIZE,
                         max_share=LIT_SOUP_MAX_SHARE, gate=raised, gate_min=min_raise)
    return np.unique(lab, return_inverse=True)[1].astype(np.int64)


def refine_learned(
    labels: np.ndarray,
    ids: np.ndarray,
    xr: np.ndarray,
    *,
    embedder: Optional[str],
    overrides: dict[str, Any],
    plain: bool = False,
    sims: Optional[np.ndarray] = None,
    timed: Optional[Callable[[str], ContextManager]] = None,
    lit: Optional[dict[str, Any]] = None,
) -> np.ndarray:
    """Refine a learned method's partition with the default method's post-steps.

    Parameters
    ----------
    labels : (N,) int the method's labels.
    ids : (N, k) int the method's kNN ids (self included).
    xr : (N, D) float32 plain L2-normalised descriptors.
    embedder : picks Infomap's thresholds for these descriptors.
    overrides : post-step settings replacing Infomap's (``REFINE_FIELDS`` names), on top of
        ``LEARNED_REFINE_DEFAULTS`` (a method passes ``RefineConfig.refine_overrides``).
    plain, sims : when ``plain`` the lists are already plain-cosine ones with ``sims``
        (no re-scoring needed).
    lit : optional keyword arguments of :func:`check_lit` (``cohort``, ``part``, ``min_raise``,
        ``backend``, ``device``): after the post-steps, the clusters of faces in that look are
        checked (the split's settings are the post-steps' own, ``split_k`` etc., with
        ``merge_min_sim`` as its floor when ``split_min_sim`` is None).

    Returns
    -------
    (N,) int64 labels.
    """
    if len(labels) == 0:
        return np.asarray(labels, np.int64)
    cfg, thresholds = post_step_plan(embedder, overrides)
    if plain and sims is not None:
        ids_p, sims_p = np.asarray(ids, np.int64), np.asarray(sims, np.float32)
    else:
        ids_p, sims_p = plain_knn_from(ids, xr)
    labels = refine_partition(labels, ids_p, sims_p, cfg, timed=timed, **thresholds)
    if lit:
        with (timed or (lambda step: nullcontext()))("lit"):
            labels = check_lit(
                labels, ids_p, sims_p, xr,
                split_min_sim=cfg.split_min_sim if cfg.split_min_sim is not None else thresholds["merge_min_sim"],
                split_k=cfg.split_k, split_max_cut=cfg.split_max_cut, split_min_part=cfg.split_min_part, **lit,
            )
    return labels
