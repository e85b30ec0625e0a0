"""Cohort score normalisation: judge each similarity against how much the two faces look like anyone.

Why: a degraded face (small, blurred, heavily compressed, grey) loses what makes it *that*
person and drifts towards "a face in general": its cosine to every face rises, to other people
as much as to its own. One fixed threshold then links it to look-alikes (the mixed clusters of
low-quality photo sets), while a threshold strict enough for those splits crisp video. Face
and speaker verification solve this with adaptive score normalisation (Z-/S-norm): measure each
face against a fixed *cohort* of other people. Here a face's *level* is the mean cosine to its
``k`` most similar cohort faces, and a kNN similarity becomes

    s'_ij = s_ij - (l_i + l_j) / 2 + ref + shift

``ref`` is the mean level of the training faces the cohort was built from, so ``s'`` stays on
the raw cosine scale (an average face is not moved and the embedder's thresholds keep their
meaning); ``shift`` is chosen with the thresholds (``InfomapConfig.cohort_shift``). A face that
resembles everyone (high level) links less readily, a distinctive one more.

A cohort may hold *parts* (``Cohort.parts``): the same people in one look the ordinary faces do
not show (dlib's: under a hard side light, which makes different people alike without raising
their level against ordinary faces). A face's level is then raised to its level against a part,
measured against that part's own reference, where that exceeds its plain deviation by more than
the part's margin (:meth:`Cohort.levels`).

The cohort is fixed and ships with the embedder (``weights/<embedder>_cohort.npz``, made by
``facecluster train cohort`` from training identities only: one face per person, each in a random
crop style of the training sets). A face's level therefore does not depend on who else is in
the batch, and neither do the results. Measured against per-batch statistics (each face's own
11th-20th neighbours as its background): worse on every regime, since a long video's person
fills its own neighbour lists. Details: docs/benchmarks/default_quality.md, "Cohort
normalisation".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

#: bounds of a face's level around ``ref`` (cosine units). Above: the levels of every real crop
#: style measured (training and validation sets, 84k faces) lie within ref -0.035 / +0.034, so
#: 0.04 only bounds what is not a face descriptor. Below (a face *less* like anyone than
#: average, whose similarities are raised): at most 0.01 (1-5 % of real faces reach it). Real
#: regimes do not change between 0.04 and 0.01 (tuning mean 0.9167 / 0.9166), but features from
#: outside the cohort's domain do: synthetic Gaussian faces sit 0.017 below ref on average
#: (spread 0.019, 2.7x the real one) and a 0.04 bound let them chain (docs/benchmarks/
#: default_quality.md, "Cohort normalisation")
MAX_ABOVE = 0.04
MAX_BELOW = 0.01
#: neighbours in the cohort averaged into a face's level (the measured choice: 5 / 10 / 20 only
#: move every level by a constant, which ``ref`` absorbs)
COHORT_K = 10


@dataclass(frozen=True)
class Cohort:
    """A fixed set of other people's faces for one embedder.

    Attributes
    ----------
    faces : (C, D) float32 L2-normalised descriptors, one per cohort person.
    k : cohort neighbours averaged into a level.
    ref : mean level of the training faces (cosine units).
    names : (C,) str identity names of the cohort faces (to leave a face's own person out when
        scoring on training identities; tests check that no validation identity is among them).
    """

    faces: np.ndarray
    k: int
    ref: float
    names: Optional[np.ndarray] = None
    #: further cohorts of one look each (e.g. the same people under a hard side light), each with
    #: its own ``ref`` and a ``margin``: see :meth:`levels`. Empty for a plain cohort.
    parts: tuple["Cohort", ...] = ()
    #: (a part's) margin in cosine units: how far above its own reference a face's level against
    #: the part must be before it raises the face's level
    margin: float = 0.0
    #: (a part's) short name, for messages and the file (``side-light``)
    label: str = ""

    def levels(self, x: np.ndarray, *, exclude: Optional[np.ndarray] = None, backend: str = "auto", device: str = "cpu",
               parts: bool = True, return_raise: bool = False):
        """(N, D) descriptors (any scale) -> (N,) float32: mean cosine to the ``k`` most similar
        cohort faces. Exact search (``facecluster.knn``): cost N x C, a few seconds at 1M faces on GPU.

        With ``parts`` the level is ``ref + max(l - ref, max_p(l_p - ref_p - margin_p))``: a face
        that resembles one part's people (its own look) far more than ordinary faces do gets that
        excess as its level. Why: under a hard side light different people's descriptors are alike
        while their level against ordinary faces stays average, so the plain cohort cannot see it
        (docs/benchmarks/default_quality.md, "A side-light part of the cohort"); the margin keeps
        ordinary faces, whose part levels track their plain ones, where they were.

        ``parts`` : False: the plain cohort's levels (``InfomapConfig.cohort_parts=false``).

        ``return_raise`` : also return (N,) float32 >= 0, how much the parts raised each level
        (zeros without parts): Infomap keeps the faces a part's look raised out of its open-piece
        rule (``InfomapConfig.merge_open_lit``).

        ``exclude`` : optional (N,) identity names (None entries: unknown). A cohort face of the
        same person is left out of that face's level (every one, when a cohort holds several): for
        scoring on the identities the cohort was built from, whose faces would otherwise find
        their own person among their cohort neighbours. A user's faces never need it."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.faces.shape[1]:
            raise ValueError(f"features must be (N, {self.faces.shape[1]}) for this cohort, got {x.shape}")
        if len(x) == 0:
            return (np.zeros(0, np.float32),) * 2 if return_raise else np.zeros(0, np.float32)
        xu = _unit(x)  # once for the cohort and its parts
        plain = self._own_levels(xu, exclude, backend, device)  # float32, as every step below
        lev = plain
        for p in self.parts if parts else ():
            lev = np.maximum(lev, np.float32(self.ref) + p._excess(p._own_levels(xu, exclude, backend, device)))
        return (lev, lev - plain) if return_raise else lev

    def part(self, label: str) -> Optional["Cohort"]:
        """The part called ``label`` (:attr:`label`), or None when the cohort has none."""
        return next((p for p in self.parts if p.label == label), None)

    def look(self, x: np.ndarray, label: str, *, backend: str = "auto", device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """How far one part's look raised each face, and how alike each face is to its most
        similar strangers, in that look or not.

        Parameters
        ----------
        x : (N, D) descriptors (any scale).
        label : a part's :attr:`label` (``side-light``); a ValueError when there is none.

        Returns
        -------
        raised : (N,) float32 >= 0, ``max(0, (l_p - ref_p - margin_p) - (l - ref))``: what
            :meth:`levels` adds for this part alone (cosine units).
        level : (N,) float32 ``max(l, l_p)``: the face's raw level against the plain cohort or
            the part, whichever is higher, with no reference and no margin (a cosine). What a
            pair of faces in that look must beat to be more alike than strangers in it are; the
            margin only keeps ordinary faces' levels where they were
            (:func:`facecluster.cluster.refine.check_lit`).
        """
        p = self.part(label)
        if p is None:
            raise ValueError(f"the cohort has no part {label!r} (parts: {[q.label for q in self.parts]})")
        x = np.asarray(x, np.float32)
        if len(x) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        xu = _unit(x)
        plain = self._own_levels(xu, None, backend, device)
        lp = p._own_levels(xu, None, backend, device)
        raised = np.maximum(p._excess(lp) - (plain - np.float32(self.ref)), np.float32(0))
        return raised, np.maximum(plain, lp)

    def _excess(self, own: np.ndarray) -> np.ndarray:
        """(a part's) levels ``own`` against its own faces minus its reference and margin: how far
        past the margin a face resembles this part's look (one formula for :meth:`levels` and
        :meth:`look`)."""
        return own - np.float32(self.ref + self.margin)

    def _own_levels(self, xu: np.ndarray, exclude: Optional[np.ndarray], backend: str, device: str) -> np.ndarray:
        """Levels of L2-normalised descriptors ``xu`` against this cohort's own faces (not its parts')."""
        from .knn import knn

        if exclude is None or self.names is None:
            sims, _ = knn(self.faces, self.k, normalize=False, backend=backend, device=device, query=xu)
            return sims.mean(axis=1, dtype=np.float64).astype(np.float32)
        exclude = np.asarray(exclude, object)
        if exclude.shape != (len(xu),):
            raise ValueError(f"exclude must have shape ({len(xu)},), got {exclude.shape}")
        # a cohort may hold several faces of one person (a study's cohort of several crop styles):
        # look far enough that k others remain after leaving them all out
        most = int(np.unique(self.names, return_counts=True)[1].max()) if len(self.names) else 1
        sims, ids = knn(self.faces, min(self.k + most, len(self.faces)), normalize=False, backend=backend, device=device,
                        query=xu)
        own = self.names[ids].astype(object) == exclude[:, None]
        sims = np.where(own, -np.inf, sims)
        top = -np.sort(-sims, axis=1)[:, : self.k]
        return top.mean(axis=1, dtype=np.float64).astype(np.float32)

    def deviations(self, levels: np.ndarray) -> np.ndarray:
        """(N,) levels -> (N,) float32 deviations from ``ref``, bounded to [-MAX_BELOW, MAX_ABOVE]."""
        return np.clip(np.asarray(levels, np.float32) - np.float32(self.ref), -MAX_BELOW, MAX_ABOVE)

    def normalise(self, sims: np.ndarray, ids: np.ndarray, lev_query: np.ndarray, lev_db: np.ndarray, shift: float = 0.0) -> np.ndarray:
        """kNN similarities -> cohort-normalised similarities, same shape and neighbour order.

        Parameters
        ----------
        sims, ids : (Q, k) kNN lists (``ids`` index the database; -1 = no neighbour, left as is).
        lev_query : (Q,) levels of the queries; lev_db : (N,) levels of the database faces.
        shift : added to every similarity (cosine units).

        Returns
        -------
        (Q, k) float32 ``sims - (lev_query_i + lev_db_j) / 2 + ref + shift``, each level's
        deviation from ``ref`` bounded to [-``MAX_BELOW``, ``MAX_ABOVE``]. Rows keep the
        raw-cosine neighbour order (not re-sorted: the post-steps read the nearest neighbours
        by plain cosine and vote with the normalised values).
        """
        sims = np.asarray(sims, np.float32)
        ids = np.asarray(ids)
        dq, dd = self.deviations(lev_query), self.deviations(lev_db)
        half = 0.5 * (dq[:, None] + dd[np.clip(ids, 0, max(len(dd) - 1, 0))])
        out = sims - half + np.float32(shift)
        return np.where(ids >= 0, out, sims).astype(np.float32, copy=False)


def _unit(x: np.ndarray) -> np.ndarray:
    from .knn import l2_normalize

    return l2_normalize(x)


def cohort_path(embedder: str) -> Path:
    """Where an embedder's shipped cohort lives (``weights/<embedder>_cohort.npz``)."""
    return Path(__file__).parent / "weights" / f"{embedder}_cohort.npz"


@lru_cache(maxsize=4)
def load_cohort(embedder: Optional[str]) -> Optional[Cohort]:
    """The shipped cohort of ``embedder``, or None when it ships none (every embedder but dlib today)."""
    if not embedder:
        return None
    p = cohort_path(embedder)
    if not p.exists():
        return None
    return read_cohort(p)


def read_cohort(path: Path) -> Cohort:
    """A cohort ``.npz`` as :func:`save_cohort` writes it (its parts included)."""
    with np.load(path) as z:
        def one(pre: str, **kw) -> Cohort:
            names = np.char.decode(z[pre + "names"], "utf-8") if pre + "names" in z.files else None
            return Cohort(faces=_unit(z[pre + "faces"]), k=int(z["k"]), ref=float(z[pre + "ref"]), names=names, **kw)

        n_parts = int(z["n_parts"]) if "n_parts" in z.files else 0
        parts = tuple(one(f"part{i}_", margin=float(z[f"part{i}_margin"]), label=str(z[f"part{i}_label"]))
                      for i in range(n_parts))
        return one("", parts=parts)


def resolve_cohort(setting: Optional[bool], embedder: Optional[str], dim: Optional[int] = None, *, name: str = "cohort_norm") -> Optional[Cohort]:
    """The cohort a setting asks for: ``false`` none; ``None`` the embedder's shipped cohort when
    there is one; ``true`` the shipped cohort or an error (no silent fallback). With ``dim`` (the
    features' width) a cohort of another width is an error for ``true`` and, for ``None``, a
    warning and none (those are not the embedder's descriptors). ``name`` is the setting's name
    in messages (``cohort_norm``, ``floor_cohort``)."""
    if setting is False:
        return None
    co = load_cohort(embedder)
    if co is None:
        if setting:
            raise ValueError(f"{name}=true, but embedder {embedder!r} ships no cohort (facecluster.cohort; only dlib does)")
        return None
    if dim is not None and dim != co.faces.shape[1]:
        msg = f"features are {dim}-D, the {embedder} cohort is {co.faces.shape[1]}-D"
        if setting:
            raise ValueError(f"{name}=true: {msg}")
        log.warning("%s: cohort normalisation off (%s; raw cosine)", msg, name)
        return None
    return co


@lru_cache(maxsize=4)
def cohort_fingerprint(embedder: str) -> Optional[str]:
    """sha256 of the shipped cohort file (None: none ships)."""
    import hashlib

    p = cohort_path(embedder)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def build_cohort(x: np.ndarray, names: np.ndarray, *, k: int = COHORT_K, seed: int = 0) -> tuple[Cohort, dict]:
    """A cohort from labelled training faces: one face per identity, picked at random among all
    its faces (so among the crop styles it appears in), and ``ref`` = the mean level of *all*
    the given faces with each face's own identity left out of its cohort neighbours.

    Parameters
    ----------
    x : (N, D) descriptors (any scale) of training identities only.
    names : (N,) identity names.

    Returns
    -------
    (Cohort, info) where info records counts and the level spread.
    """
    from .knn import knn

    x = _unit(np.asarray(x, np.float32))
    names = np.asarray(names).astype(str)
    if len(x) != len(names) or len(x) == 0:
        raise ValueError("need the same, positive number of faces and names")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(names))
    _, first = np.unique(names[perm], return_index=True)
    pick = np.sort(perm[first])
    faces, fnames = x[pick], names[pick]
    if len(faces) < k + 1:
        raise ValueError(f"a cohort needs more than {k} identities, got {len(faces)}")
    # each face's level without its own person (who is in the cohort once, in some crop style)
    co = Cohort(faces=faces.astype(np.float32), k=int(k), ref=0.0, names=fnames)
    lev = co.levels(x, exclude=names.astype(object))
    co = Cohort(faces=co.faces, k=co.k, ref=float(lev.mean(dtype=np.float64)), names=fnames)
    info = {"faces": int(len(x)), "identities": int(len(faces)), "k": int(k), "ref": co.ref,
            "level_std": float(lev.std()), "level_p5": float(np.percentile(lev, 5)), "level_p95": float(np.percentile(lev, 95)),
            "seed": int(seed)}
    return co, info


def build_part(x: np.ndarray, names: np.ndarray, ref_x: np.ndarray, ref_names: np.ndarray, *, margin: float, label: str,
               k: int = COHORT_K, seed: int = 0) -> tuple[Cohort, dict]:
    """A part of a cohort (:attr:`Cohort.parts`) from labelled training faces of one look (e.g.
    every training photo under a hard side light): one face per identity as in
    :func:`build_cohort`, and ``ref`` = the mean level against the part of the *main* cohort's
    training faces ``ref_x`` (each face's own identity left out), so that an ordinary face's level
    against the part sits near ``ref`` and only faces that share the part's look exceed it.

    Parameters
    ----------
    x : (N, D) descriptors of the part's faces (training identities only); names : (N,).
    ref_x : (M, D) the main cohort's training faces; ref_names : (M,).
    margin : cosine units a level against the part must exceed ``ref`` by before it counts.
    """
    part, info = build_cohort(x, names, k=k, seed=seed)
    lev = part.levels(ref_x, exclude=np.asarray(ref_names).astype(object))
    part = Cohort(faces=part.faces, k=part.k, ref=float(lev.mean(dtype=np.float64)), names=part.names, margin=float(margin), label=label)
    # the spread of the main cohort's faces' levels against the part (what the margin is set against)
    info.update(ref=part.ref, level_std=float(lev.std()), level_p5=float(np.percentile(lev, 5)), level_p95=float(np.percentile(lev, 95)),
                margin=float(margin), label=label, ref_faces=int(len(ref_x)))
    return part, info


def save_cohort(path: Path, cohort: Cohort) -> None:
    """Write a cohort as ``.npz`` (faces float32, k, ref, names as bytes; each part's the same
    under ``part<i>_`` with its margin and label), atomically."""
    from .workdir import atomic_save_npz

    def arrays(pre: str, co: Cohort) -> dict:
        d = {pre + "faces": co.faces.astype(np.float32), pre + "ref": np.float64(co.ref)}
        if co.names is not None:
            d[pre + "names"] = np.char.encode(np.asarray(co.names, str), "utf-8")
        return d

    out = arrays("", cohort)
    for i, p in enumerate(cohort.parts):
        if p.k != cohort.k or p.parts:
            raise ValueError("a part must have the cohort's k and no parts of its own")
        out.update(arrays(f"part{i}_", p), **{f"part{i}_margin": np.float64(p.margin), f"part{i}_label": np.str_(p.label)})
    if cohort.parts:
        out["n_parts"] = np.int64(len(cohort.parts))
    atomic_save_npz(Path(path), k=np.int64(cohort.k), **out)


__all__ = ["COHORT_K", "MAX_ABOVE", "MAX_BELOW", "Cohort", "build_cohort", "build_part", "cohort_fingerprint", "cohort_path", "load_cohort",
           "read_cohort", "resolve_cohort", "save_cohort"]
