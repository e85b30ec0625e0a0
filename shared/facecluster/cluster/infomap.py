"""Training-free default: Infomap community detection on the kNN similarity graph.

Why Infomap: on MS1M, kNN + Infomap (F_P 93.98 / F_B 92.40 at 584K) beats GCN-V+E
(87.93 / 86.09) with no training at all (notes §4.1), and it has no global distance
threshold that must fit every cluster size: a flow-based community stays one community
whether it holds 2 faces or 900, which is exactly what breaks plain thresholds between
LFW-like (tiny clusters) and long-video (huge clusters) data.

Graph: each face links to its ``k`` nearest neighbours with cosine similarity above
``min_sim``; undirected, two-level Infomap. Faces with no such edge are singletons. Edge weight:
exp((s - 1) / ``weight_temp``) for dlib (T = 0.02, tenth session): its kept edges all lie in
[0.947, 1], so with weight = s (the original, still used for other embedders) a few marginal
links between look-alikes weigh as much as a person's own strong links; the temperature halves
the faces in mixed clusters on held-out LFW and leaves video unchanged
(docs/benchmarks/default_quality.md, "Edge weights").

Cohort normalisation (``cohort_norm``, on for dlib since the eleventh session): before the graph is
built, every kNN similarity becomes s - (l_i + l_j) / 2 + ref + ``cohort_shift`` (0.003), where a
face's level l is its mean cosine to its 10 most similar faces of a fixed cohort of other people
shipped with the embedder (:mod:`facecluster.cohort`). A degraded face resembles everyone and
links less readily: held-out LFW 0.952 -> 0.965 with no mixed cluster left, 80-px JPEGs 0.663 ->
0.714 (606 -> 133 faces in mixed clusters), photos from mixed sources 0.840 -> 0.867; Yale and
ORL -0.013 (docs/benchmarks/default_quality.md, "Cohort normalisation"). The graph, its weights
and every post-step below see the normalised values (neighbour order unchanged).

Fragment merge (``merge_fragments``, on by default): a threshold strict enough for a photo
collection full of one-photo people (LFW) splits the 900-face clusters of a long video into
pieces (the same person in sunglasses, in profile, in low light). After Infomap, a cluster
joins the bigger cluster that its members' nearest neighbours clearly point into
(:func:`facecluster.graph.merge_fragments`: >= 75 % of its outgoing links, >= 15 % of its
neighbour slots, links >= ``merge_min_sim``). Measured (docs/benchmarks.md §1): BCubed F LFW
0.9255 -> 0.9316, glint18 0.9282 -> 0.9563 (dlib's chinese whispers: 0.8633 / 0.9476), and
better on held-out people and on small few-person jobs; it does not join two similar people
who each form a big cluster of their own (glint18's mislabeled mother/daughter folder).
Two clusters that are each other's first choice also join when the bigger one passes both tests
towards the smaller (``merge_mutual``, issue 11): halves of one person, where the smaller half
keeps most of its links inside itself. With dlib features a lone face joins only with at least two
reciprocal links into its target (``merge_lone_recip``, issue 13): a passer-by beside a long
video's person is in none or one of that person's neighbour lists (one, more often, when the
video is low-resolution: its faces resemble everyone), while the person's own odd frame usually is
in several. Close halves (``merge_close_q``): two clusters that are each other's first choice, linked
across as tightly as within (median link across >= both clusters' internal 10th percentile), join:
one person split into two big scenes (``merge_close_piece``, off here, on in Ada-NETS's refinement:
the smaller of the two needs only a share of its links and ``merge_min_links`` of its slots across,
the bigger only to choose it first). Open pieces (``merge_open``): a cluster of >= 2 faces whose
strong links mostly leave it (>= half its slots) joins its first choice when >= 30 % of those links go
there, as tightly as within: one person at low resolution that Infomap cut into a dozen pieces; two
open clusters that are each other's first choice at >= 15 % join when as tight both ways
(``merge_open_mutual``: pieces that link to all the others alike), and an open pair with >= 60 % of
its links on one cluster is judged on that cluster's level alone (``merge_open_pair_share``: two
near-identical frames, whose one link says nothing of the person's spread). After
the attach steps the merge runs once more for clusters of two or more faces (``merge_again``): a piece
whose links went to faces attached since then joins.

Small-cluster attach (``attach_small``, on by default since issue 13): what is left as a
singleton, pair or triple joins the cluster that >= 80 % of its members' 10 nearest neighbours
(similarity >= ``attach_min_sim``, dlib 0.93) belong to (:func:`facecluster.graph.attach_small`).
The fragment merge cannot do this: it counts a cluster's votes against all its 40 merge slots,
which a lone face whose farther neighbours spread over look-alikes never fills. Chosen on the
training scenarios of ``bench/scenarios.py`` and checked on ``bench/regimes.py``
(docs/benchmarks/default_quality.md): looser settings (50 % share, floor 0.91) also attach
photo-collection passers-by to look-alikes.

Relative attach (``attach_frac`` > 0, on by default since issue 13, run last): a fragment of 2 or
more faces, at most 5 % of its target's size, joins the cluster >= 50 % of its members' 10
nearest neighbours (>= ``merge_min_sim``) belong to when its mean link similarity is within 0.01
of the 10th percentile of that cluster's own internal kNN-edge similarities
(:func:`facecluster.graph.attach_relative`). A blurred or low-resolution video's clusters are
looser, so its fragments join at similarities a fixed floor tuned on crisp photos refuses.
Singletons are left to ``attach_small``: with them the relative rule attached photo passers-by.

Big-cluster attach (``attach_big_min_target``, dlib: 100, fourteenth session; the last step): at
low resolution one person of a long video falls into fragments of 5-20 frames that keep most of
their neighbours among themselves, so neither the merge (>= 15 % of all slots) nor the relative
attach (>= 50 % of the 10-NN slots) takes them. A fragment of >= 2 faces and <= 20 % of a cluster of
>= 100 faces joins it when >= 50 % of its strong links that *leave* it go there (filling >= 35 %
of its 40 slots: a separate person of some size, a sister, leans with few) and their mean
similarity reaches the 10th percentile of *both* clusters' internal links (a fragment of that
person links across as tightly as within itself; a separate person that leans to a tight, hub-like
cluster of dark faces does not). 48-px video 0.923 -> 0.931, every other regime unchanged
(docs/benchmarks/default_quality.md, "Big-cluster attach").

The steps after the first merge (small-cluster, relative and big-cluster attach, second merge)
repeat until a pass joins nothing (``refine_rounds``, at most 5 passes, eighteenth session): a
cluster grown late in one pass is what a piece's links point into only in the next. A 48-px clip
of one person alone 0.751 -> 0.848 held out, photo regimes unchanged
(docs/benchmarks/default_quality.md, "Post-steps until nothing moves").

Small faces (``small_face_px`` > 0, on by default since issue 13; needs ``face_px``, each
face's inter-ocular distance in its file's pixels, which ``facecluster embed`` records in
``features-face-px.npy`` from the alignment's landmarks): faces whose eyes are under 18 px apart
are the ones that bridge two people (measured on a batch of mixed sizes, lfw-mixed: mean BCubed
precision 0.60 for 56-72-px crops, 0.83 for crops of 128 px and more; the eye distance does not
depend on the detector's margin as the crop's side does). They are set apart: the other faces are
clustered as above, and a small face joins the cluster >= 40 % of its 10 nearest larger faces (cosine >= ``merge_min_sim``) belong
to, else it stays alone; it never links two clusters. The small faces left alone are clustered
among themselves, and a group of >= 10 (``small_rest_min``) that is closer to itself than to the
larger faces (``small_rest_margin``) is kept: a person seen only from afar. The rule applies only when small faces
are at most half of the batch (a low-resolution video has no larger faces to anchor it and is
clustered as one) and not at all without ``face_px`` (features merged by older versions,
Python callers that pass none). The rule is in ``cluster/base.py``: the learned methods get it too.

An optional weak-cut split
(:func:`facecluster.graph.split_weak`, ``split_min_size`` > 0) is off: it cuts long-video people
along lighting and pose as readily as it parts two look-alikes.

Features: the plain L2-normalised descriptors (``wants_raw_features``), not the mean-centred
ones. Measured on LFW + glint18 with dlib features (docs/benchmarks.md), Infomap on raw cosine
beats every mean-centred threshold: centring then re-normalising amplifies noise in
descriptors that lie close to the mean direction, which produced large mixed clusters of
under-represented faces. The thresholds are therefore a property of the embedder: ``min_sim``
and ``merge_min_sim`` default to the values chosen for the embedder that made the features
(``MIN_SIM_BY_EMBEDDER``, ``MERGE_MIN_SIM_BY_EMBEDDER``) and must be set by hand for unknown ones.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import ClassVar, Optional

import numpy as np
from pydantic import Field

from ..cohort import Cohort, cohort_fingerprint, resolve_cohort
from ..graph import dissolve_soups
from ..knn import knn
from .base import ClusterConfig, Clusterer
from .refine import refine_partition


class InfomapConfig(ClusterConfig):
    k: int = Field(80, ge=1, description="Neighbours per face (counting itself); capped at N (80 as in learn-to-cluster).")
    min_sim: Optional[float] = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Keep kNN edges with cosine similarity >= min_sim. Default: the value chosen for "
        "the features' embedder (dlib: 0.947, chosen on LFW + glint18 together with the fragment merge: lower "
        "merges LFW's many one-photo people, higher splits glint18's 900-face clusters into more "
        "pieces than the merge recovers); 0.5 for embedders without a tuned value (zero-mean features such as ArcFace).",
    )
    weight_temp: Optional[float] = Field(
        None,
        ge=0,
        description="Infomap's edge weight is exp((s - 1) / weight_temp) for an edge of cosine s instead of s "
        "itself: dlib's kept edges all lie in [min_sim, 1], so plain weights are nearly equal and Infomap "
        "sees an unweighted graph; a temperature makes strong links count more than marginal ones, which "
        "keeps look-alikes apart (fewer faces in mixed clusters). 0: the plain cosine. Default: chosen per "
        "embedder (dlib: 0.02; mbf and others: 0; docs/benchmarks/default_quality.md, 'Edge weights').",
    )
    cohort_norm: Optional[bool] = Field(
        None,
        description="Judge every kNN similarity against how much the two faces look like anyone (facecluster.cohort): "
        "s - (l_i + l_j) / 2 + ref + cohort_shift, l = a face's mean cosine to its 10 most similar faces of a fixed "
        "cohort of other people shipped with the embedder. A degraded face that resembles everyone links less "
        "readily (fewer mixed clusters on low-quality and mixed-source photos), a distinctive one more. Applies to "
        "Infomap's graph, its edge weights and the post-steps' votes. Default: on when the embedder ships a cohort "
        "(dlib); false: the raw cosine (docs/benchmarks/default_quality.md, 'Cohort normalisation').",
    )
    cohort_shift: Optional[float] = Field(
        None,
        ge=-0.1,
        le=0.1,
        description="Added to every cohort-normalised similarity (cosine units; > 0 links more). Default: chosen per "
        "embedder with the thresholds (dlib: 0.003).",
    )
    cohort_parts: bool = Field(
        True,
        description="Let the cohort's parts raise the levels (facecluster.cohort.Cohort.parts; dlib's side-light "
        "part): a face that resembles faces lit hard from one side far more than ordinary faces do links less. It "
        "stops the collapse of side-lit photo collections (281 people in one cluster -> no face in a mixed "
        "cluster). On since the twenty-sixth session, with merge_open_lit; before, off: the open-piece rule rejoined "
        "what the raised levels cut (docs/benchmarks/default_quality.md, 'A side-light part of the cohort' and "
        "'Side-lit faces in the default'). False: the plain cohort's levels (runs made before: absent = false).",
    )
    num_trials: int = Field(2, ge=1, description="Infomap restarts; the best partition is kept.")
    markov_time: float = Field(1.0, gt=0, description="Infomap Markov time (>1 favours larger clusters).")
    merge_fragments: bool = Field(
        True,
        description="After Infomap, join each cluster to the bigger cluster its members' nearest "
        "neighbours point into (see facecluster.graph.merge_fragments): recovers the pieces a "
        "strict min_sim splits off big clusters (sunglasses, profiles) without lowering it.",
    )
    merge_min_sim: Optional[float] = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Only kNN links with cosine similarity >= this vote in the fragment merge. Default: "
        "the value chosen for the features' embedder (dlib: 0.91); min_sim - 0.1 for other embedders.",
    )
    merge_k: int = Field(40, ge=1, description="Neighbours per face that vote in the fragment merge (capped at k - 1).")
    merge_share: float = Field(
        0.75, gt=0, le=1, description="A cluster joins B when >= this share of its links leaving it go to B ..."
    )
    merge_min_links: float = Field(
        0.15,
        gt=0,
        le=1,
        description="... and those links are >= this fraction of all its members' kNN slots (keeps "
        "self-contained clusters, e.g. two similar-looking relatives, apart; a real fragment such as "
        "one person's photos in sunglasses sends ~22 % of its slots into the main cluster).",
    )
    merge_min_size: int = Field(
        1,
        ge=1,
        description="Smallest cluster the fragment merge moves; 2 leaves lone faces to the attach step. "
        "1 (default): in a video the merge joins most odd frames to their person, and also one-off passers-by "
        "to the nearest big cluster; 2 keeps passers-by out (glint18-val+singletons 0.961 -> 0.984) but leaves "
        "odd frames alone (glint-mixed-val 0.972 -> 0.963; docs/benchmarks/default_quality.md, 'Passers-by').",
    )
    merge_mutual: bool = Field(
        True,
        description="Two clusters that are each other's first choice in the fragment merge also join when the "
        "bigger passes merge_share and merge_min_links towards the smaller and the smaller passes merge_share "
        "(equal sizes: both must pass): a person split into two big halves (docs/benchmarks/gcn_ve.md §9). "
        "False: the one-sided rule only.",
    )
    merge_close_q: Optional[float] = Field(
        10.0,
        ge=0,
        le=100,
        description="Close halves in the fragment merge (facecluster.graph.merge_fragments): two clusters that are "
        "each other's first choice, each sending >= merge_close_min_links of its slots and merge_share of its "
        "out-links to the other, join when each one's median link into the other is >= this percentile of both "
        "clusters' internal link similarities: one person split into two big scenes of a long video (a 718-face "
        "person split 377 / 300 rejoins; two look-alikes link 0.01 below their internal p10 and stay apart). "
        "None: off (docs/benchmarks/default_quality.md, 'Close halves').",
    )
    merge_again: bool = Field(
        True,
        description="After the attach steps, the fragment merge runs once more on clusters of two or more faces: a "
        "piece whose links went to lone faces and small fragments that the attach steps have since moved into one "
        "cluster now points into it (a long-video person split 80 / 13 % in a batch of 23k faces rejoins); lone "
        "faces stay where the attach steps left them (passers-by). False: one merge pass.",
    )
    refine_rounds: int = Field(
        5,
        ge=1,
        description="The steps after the first fragment merge (small-cluster and relative attach, second merge, "
        "big-cluster attach) repeat until a pass joins nothing, at most this many passes: a cluster grown late in "
        "one pass is what a piece's links point into in the next (a low-resolution clip of one or two people, "
        "left in halves by one pass: 0.75 -> 0.85 / 0.84 -> 0.90 held out; every photo regime unchanged). "
        "1: one pass, as before the eighteenth session (docs/benchmarks/default_quality.md, 'Post-steps until "
        "nothing moves').",
    )
    merge_close_min_links: float = Field(0.05, gt=0, le=1, description="Share of its slots each close half must send to the other.")
    merge_close_margin: float = Field(0.0, ge=0, le=1, description="How far below that percentile the median link may lie.")
    merge_close_piece: Optional[float] = Field(
        None,
        gt=0,
        le=1,
        description="Close pieces in the fragment merge (needs merge_close_q): the smaller of two clusters that are "
        "each other's first choice joins the bigger when it sends >= this share of its strong out-links and "
        ">= merge_min_links of its slots there and the close-halves similarity test holds both ways; the bigger "
        "needs only the smaller as its first choice (a big person's slots barely reach a piece a tenth its size). "
        "None: off (Infomap and the GCN methods: measured, not taken); Ada-NETS's refinement: 0.2 "
        "(adanets.ADANETS_REFINE_DEFAULTS; docs/benchmarks.md §9, 'Twenty-first session').",
    )
    merge_open: Optional[float] = Field(
        0.5,
        gt=0,
        le=1,
        description="Open pieces in the fragment merge (facecluster.graph.merge_fragments): a cluster of >= 2 faces "
        "whose strong links leaving it fill >= this share of its merge_k slots joins its first choice (bigger) "
        "when >= merge_open_share of those links go there and their median similarity is >= the target's "
        "internal 10th percentile and >= its own minus merge_open_margin: one person at low resolution that "
        "Infomap cut into a dozen pieces, each linked to the others as tightly as within (nineteenth session: "
        "48-px clips of one person 0.894 -> 0.992). None: off (docs/benchmarks/default_quality.md, 'Open pieces').",
    )
    merge_open_lit: Optional[float] = Field(
        0.002,
        gt=0,
        description="Open pieces under a cohort part's look (needs merge_open and cohort_parts): a cluster whose faces' "
        "levels the cohort's parts raised by >= this on average (cosine units) neither joins nor is joined as an open "
        "piece, mutual ones included. Under a hard side light different people are uniformly alike, and the open "
        "pieces' relative tests chained them round after round: halves of Extended Yale B in one cluster of "
        "933-1,111 of 1,207 faces -> 132-368. Low-resolution clips, what the rule is for, are raised by <= 0.0007 "
        "per person, Yale's people by >= 0.0046; 0.002 and 0.005 gave the same partitions everywhere measured "
        "(twenty-sixth session, docs/benchmarks/default_quality.md, 'Side-lit faces in the default'). None: no "
        "exception.",
    )
    merge_tight_min_size: Optional[int] = Field(
        5,
        ge=2,
        description="Tight joins in the fragment merge (facecluster.graph.merge_fragments): a cluster of >= this many "
        "faces joins by the share rule (one-sided or mutual) only when the median similarity of its strong links "
        "into the target is >= the lower of the two clusters' internal 10th percentiles minus merge_tight_margin. "
        "The share rule counts ranks, and a person with fewer photos than merge_k sends most of its slots out: to "
        "a look-alike's cluster when that is the only one near (two of ORL's people, 10 photos each; photo "
        "collections' regulars). None: off (before the twenty-seventh session; docs/benchmarks/default_quality.md, "
        "'Tight joins').",
    )
    merge_tight_margin: Optional[float] = Field(
        None,
        ge=0,
        le=1,
        description="How far below the lower internal 10th percentile a tight join's median link may lie (cosine "
        "units). Default: per embedder (dlib 0.015, mbf 0.08: its similarities spread about five times wider); "
        "embedders without a tuned value: no tight joins.",
    )
    soup_below: Optional[float] = Field(
        None,
        description="Soups (needs cohort normalisation): a cluster of soup_min_size to soup_max_size faces, and at "
        "most soup_max_share of the batch, whose median over all its pairs of cos(i, j) - (l_i + l_j) / 2 (l: a "
        "face's cohort level, how much it looks like strangers) is below this becomes lone faces "
        "(facecluster.graph.dissolve_soups). Default: per embedder (dlib 0.0, thirty-third session: 80-px JPEG "
        "photos 0.717 -> 0.724 with faces in mixed clusters 3.7 % -> 0.6 %, night-camera photos 1.2 % -> 0; "
        "docs/benchmarks.md §8 step 20); embedders without a tuned value: off.",
    )
    soup_min_size: int = Field(8, ge=2, description="Smallest cluster the soup test judges.")
    soup_max_size: int = Field(
        60, ge=2, description="Largest cluster the soup test judges (a long video's person spreads wider over all its pairs)."
    )
    soup_max_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Largest share of the batch (the faces Infomap clusters, after the small-face rule set its faces "
        "apart) a cluster the soup test judges may hold: a soup is a small group "
        "among many faces, while one short low-quality clip of one person alone in its batch reads as a soup to dlib "
        "(a 57-frame clip at 36-64 px: 0.968 -> 0.024 without this guard). At 0.02 a batch needs 400 faces before "
        "the smallest soup (8) is judged and 3,000 before the largest (60). 0 turns the soup test off.",
    )
    merge_open_share: float = Field(
        0.3, gt=0, le=1, description="Share of an open piece's leaving links that must go to its first choice."
    )
    merge_open_margin: float = Field(
        0.02, ge=0, le=1, description="How far below the open piece's own internal 10th percentile its median link may lie."
    )
    small_rest_min: Optional[int] = Field(
        10,
        ge=2,
        description="Small-face rule: the small faces no larger face's cluster takes are clustered among themselves "
        "(Infomap and its post-steps on them alone) and their clusters of >= this many faces kept when closer to each "
        "other than to the large faces (small_rest_margin), the rest alone: a person seen only from afar beside "
        "people seen near (twentieth session: 0.708 -> 0.985 on such a pair of clips). None: they stay alone "
        "(docs/benchmarks/default_quality.md, 'Mutual open pieces and small faces among themselves').",
    )
    merge_open_mutual: Optional[float] = Field(
        0.15,
        gt=0,
        le=1,
        description="Mutual open pieces (needs merge_open): two open clusters of >= 2 faces that are each other's "
        "first choice, each sending >= this share of its strong leaving links to the other, join when the "
        "open-piece similarity test holds both ways: a structureless low-resolution clip whose pieces each send "
        "13-30 % to each of the others (twentieth session: one 41-px clip alone 0.119 -> 0.986; 0.2 then). 0.15 "
        "since the twenty-fifth session: at 0.2 whether such a clip was rejoined hung on Infomap's seed "
        "(docs/benchmarks/default_quality.md, 'Mutual open pieces at 15 %'). None: off.",
    )
    merge_open_pair_share: Optional[float] = Field(
        0.6,
        gt=0,
        le=1,
        description="Open pieces of two faces (needs merge_open): one that sends >= this share of its strong leaving "
        "links to its first choice is judged on that cluster's internal 10th percentile alone, not also on its "
        "own (its one internal link is often two near-identical frames: twentieth session, short 37-57-px clips "
        "0.442 -> 0.968 and 0.591 -> 0.988). None: every open piece is judged on both "
        "(docs/benchmarks/default_quality.md, 'Mutual open pieces and small faces among themselves').",
    )
    merge_lone_recip: Optional[int] = Field(
        None,
        ge=0,
        description="A lone face moves in the fragment merge only when >= this many of its links into the "
        "target are reciprocal (the target's member lists it among its own merge_k nearest too): a passer-by "
        "next to a long video's person is in none of that person's lists, the person's odd frame usually is. "
        "Default: chosen per embedder (dlib: 2 since the fifteenth session, 1 before: video + passers-by "
        "0.961 -> 0.982 -> 0.986, passers-by beside 48-px video kept out; mbf and others: 0 = off, it lowered "
        "mbf's worst tuning regime; docs/benchmarks/default_quality.md, 'Reciprocal links').",
    )
    attach_max_size: int = Field(
        3,
        ge=0,
        description="Last step: clusters of attach_min_size..attach_max_size faces (singletons, pairs, "
        "triples left over in a long video) join the cluster their nearest neighbours agree on "
        "(facecluster.graph.attach_small); 0 = off. Chosen on the training scenarios of "
        "bench/scenarios.py and checked on bench/regimes.py (docs/benchmarks/default_quality.md).",
    )
    attach_min_size: int = Field(1, ge=1, description="Smallest cluster the attach step moves (2 leaves singletons alone).")
    attach_k: int = Field(10, ge=1, description="Nearest neighbours per face that vote in the attach step (capped at k - 1).")
    attach_min_sim: Optional[float] = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Only neighbours with cosine similarity >= this vote in the attach step. Default: the value "
        "chosen for the features' embedder (dlib: 0.93, between merge_min_sim and min_sim: 0.91 let "
        "passers-by join the big clusters of a video); merge_min_sim for other embedders.",
    )
    attach_share: float = Field(
        0.8,
        gt=0,
        le=1,
        description="A small cluster joins B when >= this share of its members' attach_k neighbour slots vote "
        "for B (0.5 attached LFW's one-photo people to look-alikes; measured in docs/benchmarks/default_quality.md).",
    )
    attach_frac: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Relative attach (facecluster.graph.attach_relative), after the small-cluster attach: a "
        "fragment of attach_rel_min_size faces up to this fraction of its target's size joins the cluster its "
        "strong neighbours agree on when its mean link similarity is >= the target's own internal kNN edges' "
        "attach_rel_q-th percentile minus attach_rel_margin (a blurred video's clusters are looser, so its "
        "fragments need less); 0 = off. Chosen on bench/scenarios.py (docs/benchmarks/default_quality.md).",
    )
    attach_rel_q: float = Field(10.0, ge=0, le=100, description="Percentile of the target's internal edge similarities.")
    attach_rel_margin: float = Field(
        0.01, ge=0, le=2, description="How far below that percentile a fragment's mean link may lie (0.02 let passers-by join)."
    )
    attach_rel_share: float = Field(
        0.5, gt=0, le=1, description="Share of the fragment's attach_k neighbour slots that must vote for the target."
    )
    attach_rel_min_sim: Optional[float] = Field(
        None, ge=-1.0, le=1.0, description="Absolute floor of a voting link in the relative attach. Default: merge_min_sim."
    )
    attach_rel_min_size: int = Field(
        2, ge=1, description="Smallest fragment the relative attach moves (singletons: 1 attached photo passers-by)."
    )
    attach_rel_min_target: int = Field(10, ge=2, description="Smallest target cluster of the relative attach.")
    attach_big_min_target: Optional[int] = Field(
        None,
        ge=0,
        description="Big-cluster attach, the last step (facecluster.graph.attach_relative with share_of='out'): a "
        "fragment of >= 2 faces and <= attach_big_frac of a cluster of >= this many faces (a long video's person) "
        "joins it when >= attach_big_share of the strong links (>= merge_min_sim, merge_k per face) that leave "
        "the fragment go to it and their mean similarity is >= both clusters' internal attach_rel_q-th percentile "
        "minus attach_big_margin. At low resolution one person's frames fall into fragments that keep most "
        "neighbours among themselves, so the relative attach's share of all slots refuses them; the fragment's "
        "own percentile keeps out a separate person who merely leans to a tight, hub-like cluster; those links "
        "must also fill attach_big_min_links of its slots. 0: off. "
        "Default: chosen per embedder (dlib: 100; mbf: 0, it changed no mbf regime; others 0, not measured; "
        "docs/benchmarks/default_quality.md, 'Big-cluster attach').",
    )
    attach_big_frac: float = Field(0.2, gt=0, lt=1, description="Largest fragment of the big-cluster attach, as a fraction of its target.")
    attach_big_share: float = Field(
        0.5, gt=0, le=1, description="Share of the fragment's strong links leaving it that must go to the target."
    )
    attach_big_margin: float = Field(
        0.0, ge=0, le=2, description="How far below those percentiles the fragment's mean link may lie."
    )
    attach_big_min_links: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Those links must also be >= this fraction of the fragment's merge_k slots: a fragment is bound "
        "to its person, a separate person of some size (a sister, another dark face) leans to a look-alike with "
        "the few links that leave it.",
    )
    split_min_size: int = Field(
        0,
        ge=0,
        description="Clusters of at least this many faces are split where their own similarity graph has a weak "
        "cut (facecluster.graph.split_weak), before the attach step; 0 = off (the default: measured, a cut weak "
        "enough to part two look-alikes also parts one person's lighting or pose groups in a long video); 20 in "
        "the GCN methods' refinement with dlib (gcn_v.GCN_REFINE_DEFAULTS_BY_EMBEDDER), whose GCN-E edges chain people.",
    )
    split_k: int = Field(10, ge=1, description="Nearest neighbours per face in a cluster's own graph for the weak-cut split.")
    split_min_sim: Optional[float] = Field(
        None, ge=-1.0, le=1.0, description="Edges of that graph need cosine similarity >= this. Default: merge_min_sim."
    )
    split_max_cut: float = Field(0.05, ge=0, le=1, description="Split when the best spectral cut's conductance is <= this ...")
    split_min_part: int = Field(5, ge=1, description="... and each side keeps >= this many faces.")
    split_small_size: Optional[int] = Field(
        None,
        ge=1,
        description="Clusters of split_small_min_size up to this many faces are judged a second time, on their "
        "split_small_k-NN graph (same conductance and part size): with split_k (10) neighbours a small cluster's "
        "lists must reach across any cut (a person with 10 photos has 9 others), which hides the cut between two look-alikes that "
        "GCN-E chained. None = off (the default); 40 in the GCN methods' refinement with dlib "
        "(gcn_v.GCN_REFINE_DEFAULTS_BY_EMBEDDER).",
    )
    split_small_k: int = Field(5, ge=1, description="Nearest neighbours per face in that second judgement.")
    split_small_min_size: int = Field(10, ge=2, description="Smallest cluster that second judgement looks at.")


#: default ``min_sim`` per embedder (raw L2-normalised descriptors), see module doc
#: mbf (insightface's MobileFaceNet, ``--embedder mbf``): 0.35 / 0.25 / 0.325, chosen on the training
#: identities' regimes (``bench/regimes.py --tuning --embedder mbf``) by the worst regime, then the most
#: faces in mixed clusters (docs/benchmarks/default_quality.md, "The mbf embedder")
MIN_SIM_BY_EMBEDDER: dict[str, float] = {"dlib": 0.947, "mbf": 0.35}
#: for embedders without a tuned value
GENERIC_MIN_SIM = 0.5
#: default ``merge_min_sim`` per embedder; others use ``min_sim - GENERIC_MERGE_MARGIN``
MERGE_MIN_SIM_BY_EMBEDDER: dict[str, float] = {"dlib": 0.91, "mbf": 0.25}
GENERIC_MERGE_MARGIN = 0.1
#: default ``attach_min_sim`` per embedder; others use ``merge_min_sim``
ATTACH_MIN_SIM_BY_EMBEDDER: dict[str, float] = {"dlib": 0.93, "mbf": 0.325}
#: default ``merge_lone_recip`` per embedder (chosen on each one's training scenarios); others 0
#: (dlib: 1 in the seventh session; 2 since the fifteenth, when passers-by beside low-resolution
#: and near/far video joined the training scenarios: two reciprocal links keep most of them out,
#: at a small cost to short clips' odd frames; docs/benchmarks/default_quality.md)
LONE_RECIP_BY_EMBEDDER: dict[str, int] = {"dlib": 2}
#: default ``cohort_shift`` per embedder with a shipped cohort. dlib: chosen on the training regimes
#: and scenarios among shifts 0-0.005 whose worst regime beats the raw-cosine default's and that leave
#: under 0.5 % of any regime's faces in mixed clusters: 0.003, 0.004 and 0.005 tie on the mean (within
#: 0.001), and the tie goes to the strictest, since larger batches want stricter links (full LFW,
#: 13k faces: 0.9485 / 0.9444 / 0.9380); docs/benchmarks/default_quality.md, "Cohort normalisation"
COHORT_SHIFT_BY_EMBEDDER: dict[str, float] = {"dlib": 0.003}
#: default ``weight_temp`` per embedder (chosen on dlib's training regimes and scenarios by the worst
#: one, then the faces in mixed clusters); others 0 = plain cosine weights
WEIGHT_TEMP_BY_EMBEDDER: dict[str, float] = {"dlib": 0.02}
#: default ``attach_big_min_target`` per embedder (dlib: chosen on the training regimes, fourteenth
#: session, docs/benchmarks/default_quality.md "Big-cluster attach"; mbf: measured in the fifteenth,
#: no regime moved, so off); others 0 = off
ATTACH_BIG_BY_EMBEDDER: dict[str, int] = {"dlib": 100}
#: default ``soup_below`` per embedder (dlib: 0.0, the prototype's threshold of the twenty-seventh
#: session, where no pure cluster of any regime dissolved, taken in the thirty-third with the batch-share
#: guard ``soup_max_share``; docs/benchmarks.md §8 step 20); others: no soup test
SOUP_BELOW_BY_EMBEDDER: dict[str, float] = {"dlib": 0.0}
#: default ``merge_tight_margin`` per embedder (chosen on each one's training regimes and scenarios,
#: twenty-seventh session, docs/benchmarks/default_quality.md "Tight joins"); others: tight joins off.
#: dlib: 0.015 (0.01 blocked a long video's 9-face piece, 0.016 below its internal p10; 0.02 let a
#: held-out look-alike through); mbf: 0.08, the narrowest margin that kept every video regime
#: (0.015-0.06 held a 48-px piece back), the same photo gains
TIGHT_MARGIN_BY_EMBEDDER: dict[str, float] = {"dlib": 0.015, "mbf": 0.08}


def _parallel_trials(num_trials: int) -> dict:
    """Run Infomap's trials on parallel threads when there are cores to spare (a GPU node: at
    1M faces Infomap itself is the longest step of the default method). Measured: the same
    partition as serial trials (2 and 3 trials on glint18 and on 30k synthetic faces;
    tests/test_cluster_scale.py), so only the wall time changes. Off below 4 usable cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_trials < 2 or cores < 4:
        return {}
    return {"parallel_trials": True, "num_threads": min(num_trials, cores)}


class InfomapClusterer(Clusterer):
    name = "infomap"
    uses_face_px: ClassVar[bool] = True
    summary = "Training-free: Infomap on the kNN cosine graph (cohort-normalised for dlib), then fragments and lone faces joined by neighbour vote (default; fast, no trained weights)."
    Config = InfomapConfig
    #: the pipeline passes the plain descriptors (see module doc)
    wants_raw_features: ClassVar[bool] = True

    def min_sim(self) -> float:
        c = self.config
        if c.min_sim is not None:
            return c.min_sim
        return MIN_SIM_BY_EMBEDDER.get(c.embedder or "", GENERIC_MIN_SIM)

    def merge_min_sim(self) -> float:
        c = self.config
        if c.merge_min_sim is not None:
            return c.merge_min_sim
        return MERGE_MIN_SIM_BY_EMBEDDER.get(c.embedder or "", self.min_sim() - GENERIC_MERGE_MARGIN)

    def attach_min_sim(self) -> float:
        c = self.config
        if c.attach_min_sim is not None:
            return c.attach_min_sim
        return ATTACH_MIN_SIM_BY_EMBEDDER.get(c.embedder or "", self.merge_min_sim())

    def lone_recip(self) -> int:
        """The fragment merge's reciprocal-link requirement for lone faces (0: off)."""
        c = self.config
        if c.merge_lone_recip is not None:
            return c.merge_lone_recip
        return LONE_RECIP_BY_EMBEDDER.get(c.embedder or "", 0)

    def tight_margin(self) -> Optional[float]:
        """The fragment merge's tight-join margin, None when tight joins are off
        (``merge_tight_min_size`` None, or an embedder without a tuned margin)."""
        c = self.config
        if c.merge_tight_min_size is None:
            return None
        if c.merge_tight_margin is not None:
            return c.merge_tight_margin
        return TIGHT_MARGIN_BY_EMBEDDER.get(c.embedder or "")

    def attach_big_min_target(self) -> int:
        """Smallest target of the big-cluster attach (0: off)."""
        c = self.config
        if c.attach_big_min_target is not None:
            return c.attach_big_min_target
        return ATTACH_BIG_BY_EMBEDDER.get(c.embedder or "", 0)

    def soup_below(self) -> Optional[float]:
        """The soup test's threshold (None: no soup test)."""
        c = self.config
        if c.soup_below is not None:
            return c.soup_below
        return SOUP_BELOW_BY_EMBEDDER.get(c.embedder or "")

    def weight_temp(self) -> float:
        """Temperature of Infomap's exponential edge weights (0: the plain cosine)."""
        c = self.config
        if c.weight_temp is not None:
            return c.weight_temp
        return WEIGHT_TEMP_BY_EMBEDDER.get(c.embedder or "", 0.0)

    def cohort(self) -> Optional[Cohort]:
        """The score-normalisation cohort in use (None: raw cosine). ``cohort_norm=true`` with an
        embedder that ships no cohort is an error, not a silent fallback."""
        return resolve_cohort(self.config.cohort_norm, self.config.embedder)

    def cohort_shift(self) -> float:
        c = self.config
        if c.cohort_shift is not None:
            return c.cohort_shift
        return COHORT_SHIFT_BY_EMBEDDER.get(c.embedder or "", 0.0)

    def cohort_levels(self, X: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(N,) cohort levels of plain descriptors and (N,) how much the cohort's parts raised them
        (zeros without parts or with ``cohort_parts=false``); None when normalisation is off.
        Features of another dimension than the cohort's are not the embedder's descriptors: an
        error when ``cohort_norm=true`` was asked for, else a warning and the raw cosine
        (:func:`facecluster.cohort.resolve_cohort`)."""
        co = resolve_cohort(self.config.cohort_norm, self.config.embedder, X.shape[1])
        self._cohort_used = co is not None
        if co is None:
            return None
        with self._timed("cohort"):
            return co.levels(X, backend=self.config.knn_backend, device=self.device, parts=self.config.cohort_parts,
                             return_raise=True)

    def weights_fingerprint(self) -> Optional[str]:
        """The shipped cohort's content hash when it is in use (a new cohort reclusters)."""
        co = self.cohort()
        return None if co is None else cohort_fingerprint(self.config.embedder)

    def settings(self) -> dict:
        d = super().settings()
        used = getattr(self, "_cohort_used", None)  # after a fit: whether it applied
        d["cohort_norm"] = used if used is not None else self.cohort() is not None
        d["cohort_shift"] = self.cohort_shift()
        d["min_sim"] = self.min_sim()
        d["weight_temp"] = self.weight_temp()
        d["merge_min_sim"] = self.merge_min_sim()
        d["merge_lone_recip"] = self.lone_recip()
        d["attach_min_sim"] = self.attach_min_sim()
        d["attach_big_min_target"] = self.attach_big_min_target()
        d["merge_tight_margin"] = self.tight_margin()
        d["soup_below"] = self.soup_below()
        return d

    def small_vote_floor(self) -> Optional[float]:
        """The small-face vote's cosine floor: small_min_sim, else merge_min_sim."""
        c = self.config
        return float(c.small_min_sim) if c.small_min_sim is not None else self.merge_min_sim()

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        """Cluster (N, D) plain descriptors; returns (N,) int64 labels. (The small-face rule and
        the near-duplicate rule wrap this: ``fit_predict(X, face_px=...)``, ``cluster/base.py``.)"""
        from infomap import Infomap

        X = self._check_input(X)
        n = X.shape[0]
        self.timings_ = {}
        if n == 0:
            return np.zeros(0, np.int64)
        cfg = self.config
        with self._timed("knn"):
            sims, ids = knn(X, cfg.k, backend=cfg.knn_backend, device=self.device, progress=cfg.progress)
        self._input_knn = ids  # candidate pairs for the near-duplicate rule (spares its own kNN)
        levels = self.cohort_levels(X)
        raised = None
        if levels is not None:  # every step below sees the normalised values (neighbour order unchanged)
            lev, raised = levels
            sims = self.cohort().normalise(sims, ids, lev, lev, self.cohort_shift())
        with self._timed("graph"):
            rows = np.repeat(np.arange(n), ids.shape[1])
            cols = ids.reshape(-1)
            w = sims.reshape(-1)
            keep = (cols != rows) & (w >= self.min_sim())
            a, b, w = rows[keep], cols[keep], w[keep]
            # undirected: keep one copy of each pair (max weight; they are equal for exact kNN)
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            key = lo * n + hi
            key, first = np.unique(key, return_index=True)
            lo, hi, w = lo[first], hi[first], w[first]
        labels = np.arange(n, dtype=np.int64)
        if len(lo):
            with self._timed("infomap"), warnings.catch_warnings():
                # infomap >= 2.15 marks keyword options "legacy" (they still work; 3.0 moves them)
                warnings.simplefilter("ignore")
                im = Infomap(
                    two_level=True,
                    silent=True,
                    seed=cfg.seed,
                    num_trials=cfg.num_trials,
                    markov_time=cfg.markov_time,
                    directed=False,
                    **_parallel_trials(cfg.num_trials),
                )
                # positive weights only (Infomap flow must be non-negative). One (E, 3) float64
                # array goes to infomap's bulk numpy loader: the same links, in the same order,
                # as a Python loop over tuples, which took ~1 s per million links
                temp = self.weight_temp()
                if temp > 0:  # exp((s - 1) / T), in place: one float64 array per edge list at 1M faces
                    wt = w.astype(np.float64)
                    wt -= 1.0
                    wt /= temp
                    np.exp(wt, out=wt)
                else:
                    wt = np.maximum(w, 1e-6)
                # column_stack of int64 ids and the weights is already float64: no second copy
                im.add_links(np.column_stack([lo, hi, wt]).astype(np.float64, copy=False))
                im.run()
                # Read the partition from a .clu file rather than infomap's SWIG iterators:
                # faiss (also SWIG) registers the same SWIG runtime type and the iterator
                # then dispatches into faiss and segfaults when faiss was imported first.
                with tempfile.TemporaryDirectory() as d:
                    clu = os.path.join(d, "modules.clu")
                    im.write_clu(clu)
                    tab = np.loadtxt(clu, comments="#", ndmin=2)
                node, module = tab[:, 0].astype(np.int64), tab[:, 1].astype(np.int64)
                labels[node] = n + module  # offset: never collides with singleton ids
        labels = self.refine(labels, ids, sims, raised=raised)
        soup_below = self.soup_below()
        if cfg.soup_below is not None and levels is None:
            # the soup test reads the cohort levels; asked for by hand, say so rather than skip it
            # unannounced (the embedder's default is quietly off with cohort_norm=false)
            warnings.warn("soup_below is set but cohort normalisation is off (cohort_norm=false, or an embedder "
                          "without a cohort): no soup test was run", stacklevel=2)
        if levels is not None and soup_below is not None:
            with self._timed("soups"):
                labels = dissolve_soups(labels, X, lev, below=soup_below, min_size=cfg.soup_min_size,
                                        max_size=cfg.soup_max_size, max_share=cfg.soup_max_share)
        return labels

    def refine(self, labels: np.ndarray, ids: np.ndarray, sims: np.ndarray, raised: Optional[np.ndarray] = None) -> np.ndarray:
        """The post-steps after Infomap: fragment merge, then small clusters attached
        (:func:`facecluster.cluster.refine.refine_partition`, shared with the learned methods).

        Parameters
        ----------
        labels : (N,) int64 Infomap partition (singletons have their own ids).
        ids, sims : (N, k) kNN lists of the plain L2-normalised features (self included).
        raised : optional (N,) how much the cohort's parts raised each face's level
            (``cohort_levels``): what ``merge_open_lit`` reads.

        Returns
        -------
        (N,) int64 labels.
        """
        return refine_partition(
            labels,
            ids,
            sims,
            self.config,
            merge_min_sim=self.merge_min_sim(),
            attach_min_sim=self.attach_min_sim(),
            lone_recip=self.lone_recip(),
            attach_big_min_target=self.attach_big_min_target(),
            tight_margin=self.tight_margin(),
            open_lit=raised,
            timed=self._timed,
        )
