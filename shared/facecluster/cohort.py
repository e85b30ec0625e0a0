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

    def levels(self, x: np.ndarray, *, exclude: Optional[np.ndarray] = None, backend: str = "auto", device: str = "cpu") -> np.ndarray:
        """(N, D) descriptors (any scale) -> (N,) float32: mean cosine to the ``k`` most similar
        cohort faces. Exact search (``facecluster.knn``): cost N x C, a few seconds at 1M faces on GPU.

        ``exclude`` : optional (N,) identity names (None entries: unknown). A cohort face of the
        same person is left out of that face's level (every one, when a cohort holds several): for
        scoring on the identities the cohort was built from, whose faces would otherwise find
        their own person among their cohort neighbours. A user's faces never need it."""
        from .knn import knn

        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.faces.shape[1]:
            raise ValueError(f"features must be (N, {self.faces.shape[1]}) for this cohort, got {x.shape}")
        if len(x) == 0:
            return np.zeros(0, np.float32)
        if exclude is None or self.names is None:
            sims, _ = knn(self.faces, self.k, normalize=False, backend=backend, device=device, query=_unit(x))
            return sims.mean(axis=1, dtype=np.float64).astype(np.float32)
        exclude = np.asarray(exclude, object)
        if exclude.shape != (len(x),):
            raise ValueError(f"exclude must have shape ({len(x)},), got {exclude.shape}")
        # a cohort may hold several faces of one person (a study's cohort of several crop styles):
        # look far enough that k others remain after leaving them all out
        most = int(np.unique(self.names, return_counts=True)[1].max()) if len(self.names) else 1
        sims, ids = knn(self.faces, min(self.k + most, len(self.faces)), normalize=False, backend=backend, device=device,
                        query=_unit(x))
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
    with np.load(p) as z:
        names = np.char.decode(z["names"], "utf-8") if "names" in z.files else None
        return Cohort(faces=_unit(z["faces"]), k=int(z["k"]), ref=float(z["ref"]), names=names)


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


def save_cohort(path: Path, cohort: Cohort) -> None:
    """Write a cohort as ``.npz`` (faces float32, k, ref, names as bytes), atomically."""
    from .workdir import atomic_save_npz

    extra = {} if cohort.names is None else {"names": np.char.encode(np.asarray(cohort.names, str), "utf-8")}
    atomic_save_npz(Path(path), faces=cohort.faces.astype(np.float32), k=np.int64(cohort.k), ref=np.float64(cohort.ref), **extra)


__all__ = ["COHORT_K", "MAX_ABOVE", "MAX_BELOW", "Cohort", "build_cohort", "cohort_fingerprint", "cohort_path", "load_cohort", "resolve_cohort", "save_cohort"]
