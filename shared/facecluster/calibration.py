"""Feature calibration: make cosine similarities of an embedder mean something.

dlib's descriptors are far from zero-mean: cosine similarities between *different* people are
mostly above 0.85, so thresholds from papers (tuned on zero-mean-ish features) mean nothing on
them. Subtracting a fixed mean vector estimated once on many faces (shipped with the embedder,
``weights/dlib_mean.npy``) and then L2-normalising spreads different-person similarities around
zero while same-person pairs stay high. The mean is a fixed property of the embedder, not of the
batch being clustered, so results do not depend on who else is in the batch.
"""

from __future__ import annotations

import numpy as np

from .knn import l2_normalize


def prepare_features(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """(N, D) raw descriptors → (N, D) float32: L2-normalised, minus ``mean`` (itself a mean of
    L2-normalised descriptors), L2-normalised again. Without ``mean``: just L2-normalised."""
    x = np.asarray(x, dtype=np.float32)
    if mean is not None:
        # the mean is estimated on L2-normalised descriptors, so compare like with like
        x = l2_normalize(x)
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        if mean.shape[0] != x.shape[1]:
            raise ValueError(f"calibration mean has dimension {mean.shape[0]}, features have {x.shape[1]}")
        x = x - mean
    return l2_normalize(x)


def calibration_path(embedder: str):
    """Where the shipped calibration mean of an embedder lives (``weights/<name>_mean.npy``)."""
    from pathlib import Path

    return Path(__file__).parent / "weights" / f"{embedder}_mean.npy"


def calibration_mean(embedder: str | None) -> np.ndarray | None:
    """The shipped mean vector for ``embedder`` (None when it ships none, e.g. hfsoftmax/arcface,
    whose features are already roughly zero-mean)."""
    if not embedder:
        return None
    p = calibration_path(embedder)
    return np.load(p).astype(np.float32) if p.exists() else None


# --------------------------------------------------------------------------------------------
# similarity floor and near-duplicate rule (issue 11)
# --------------------------------------------------------------------------------------------
#: Lowest cosine similarity of the *plain L2-normalised* descriptors at which a learned method
#: (gcn-v, gcn-ve, adanets) may still link two faces, per embedder. The learned parts decide
#: which links above the floor to make; the floor forbids the links that chain hundreds of
#: people into one cluster when the learned confidences are wrong on a new source.
#: dlib: measured same/different-person similarities among each face's 80 nearest neighbours
#: on the training identities (``facecluster train floor``): at 0.92 / 0.93 / 0.94, LFW keeps
#: 99.0 / 96.3 / 90.3 % of its same-person pairs and 24.6 / 6.2 / 1.2 % of its different-person
#: pairs, glint18 99.4 / 98.0 / 93.6 % and 67 / 38 / 12 %. Among these candidates 0.93 was
#: chosen on the training identities (``bench/regimes.py --tuning``: lfw, glint18, and the
#: loose-crop lfw-loose and low-resolution glint-lowres styles the shipped weights never saw) by
#: the worst regime of gcn-ve among the floors that keep faces in mixed clusters <= 2 % on every
#: regime: 0.92 leaves 5.8 % mixed on lfw-loose; worst BCubed F 0.8156 at 0.93 (glint-lowres),
#: 0.7352 at 0.94 (docs/benchmarks/gcn_ve.md §6, "similarity floor").
#: mbf (``--embedder mbf``): 0.35, Infomap's ``min_sim`` for it, chosen with the refinement on
#: (``refine.REFINED_LINK_FLOOR_BY_EMBEDDER``); without the refinement only 0.35 was measured
#: (gcn-ve's worst training regime 0.879, no mixed cluster; docs/benchmarks/gcn_ve.md §8).
LINK_FLOOR_BY_EMBEDDER: dict[str, float] = {"dlib": 0.93, "mbf": 0.35}

#: Cosine (plain L2-normalised descriptors) at and above which two faces are treated as the same
#: image (duplicate video frames, re-encoded copies): they always share a cluster, in every
#: method. dlib, measured: one photo re-saved at JPEG q60, shrunk 10 % or blurred (sigma 0.8)
#: scores 0.9954-0.9997 against the original (8 LFW photos); the largest different-person
#: cosine among nearest neighbours is 0.962 on glint18, 0.945 on ORL and 0.964 on LFW's
#: 99.99th percentile (LFW's few pairs above 0.97 are its known label errors: one person under
#: two names, or one photo in two folders). On Extended Yale B (extreme lighting) 11 of 2,414
#: faces have a different person's face at >= 0.995 (up to 0.9998): there no cosine separates
#: people, and the rule joins those 11.
#: mbf (``--embedder mbf``), measured: 100 LFW photos re-saved at JPEG q90 score >= 0.974 against
#: the original, shrunk to 80 % and re-saved at q60 >= 0.937; among nearest neighbours the
#: different-person cosine's 99.99th percentile is 0.741 on LFW (0.46 glint18, 0.54 at 48 px).
DUPLICATE_SIM_BY_EMBEDDER: dict[str, float] = {"dlib": 0.995, "mbf": 0.92}
#: for embedders without a measured value: numerically identical descriptors only
GENERIC_DUPLICATE_SIM = 0.9999


#: the small-face rule's vote floor per embedder (every method; cluster/base.py): the cosine a
#: larger face needs to vote for a small face's cluster. dlib: Infomap's merge floor 0.91
#: (chosen on the training scenarios, docs/benchmarks/default_quality.md "Small faces"); mbf: its
#: merge floor 0.25 likewise.
#: Embedders without one: the rule is off in the learned methods (Infomap uses its merge_min_sim).
SMALL_VOTE_SIM_BY_EMBEDDER: dict[str, float] = {"dlib": 0.91, "mbf": 0.25}

#: the small-face vote's weights per embedder (``small_vote_temp``): a larger face's vote counts
#: exp((s - 1) / T), s its cosine to the small face, and a small face joins the cluster holding >=
#: small_share of the weight of its 10 nearest larger faces. dlib: 0.02, the temperature of
#: Infomap's edge weights (twenty-sixth session: a small face's wrong placements were contested
#: and weaker; docs/benchmarks/default_quality.md, "Where the vote goes wrong, and a weighted
#: vote"). Embedders without one: the plain count (>= small_share of the 10 votes).
SMALL_VOTE_TEMP_BY_EMBEDDER: dict[str, float] = {"dlib": 0.02}

#: How much closer to each other than to the large faces a group of small faces that no large
#: face's cluster takes must be to stay a cluster (cosine; ``small_rest_margin``). dlib: a person
#: seen only small (training clips) 0.04-0.06, small photos of several people -0.003 (training
#: identities' every-style batch); docs/benchmarks/default_quality.md, "Mutual open pieces and
#: small faces among themselves". mbf: not measured, so its small faces stay alone.
SMALL_REST_MARGIN_BY_EMBEDDER: dict[str, float] = {"dlib": 0.02}

#: Faces the non-face test doubts are handled like small faces (``doubt_margin``; Infomap and
#: gcn-ve; off by default in gcn-v and Ada-NETS, whose configs say why): a face whose score reaches
#: the test's threshold minus this margin (the test's units, ``weights/<embedder>_nonface.npz``).
#: dlib: 3.95 (score >= 1.0 and below the threshold: 1 in 700 training faces; 0.0-0.6 % of ordinary
#: photos and video, 1 % of ORL, 12 % of Extended Yale B besides the fifth flagged): chosen on the
#: training identities, the lighting regime lfw-sidelight-train(21) included (thirty-second
#: session; docs/benchmarks.md §8 step 18). mbf: measured and off (Yale's mixed clusters form below
#: any such score; a video seen in three qualities lost 0.056 at score 1.0).
DOUBT_MARGIN_BY_EMBEDDER: dict[str, float] = {"dlib": 3.95}


def link_floor(embedder: str | None) -> float | None:
    """The similarity floor of ``embedder`` (None when it has no measured one)."""
    return LINK_FLOOR_BY_EMBEDDER.get(embedder or "")


def duplicate_sim(embedder: str | None) -> float:
    """Near-duplicate cosine of ``embedder`` (``GENERIC_DUPLICATE_SIM`` when not measured)."""
    return DUPLICATE_SIM_BY_EMBEDDER.get(embedder or "", GENERIC_DUPLICATE_SIM)


def pair_cosine(xn: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Cosine of the pairs (a[p], b[p]) of L2-normalised rows of ``xn``.

    xn : (N, D) float32 L2-normalised; a, b : (P,) int indices. Returns (P,) float32. Works in
    chunks of ``chunk`` pairs so memory stays O(chunk·D) whatever P is."""
    a = np.asarray(a, np.int64).reshape(-1)
    b = np.asarray(b, np.int64).reshape(-1)
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), chunk):
        e = min(s + chunk, len(a))
        out[s:e] = np.einsum("ij,ij->i", xn[a[s:e]], xn[b[s:e]])
    return out
