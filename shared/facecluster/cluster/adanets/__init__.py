"""Ada-NETS (Wang et al., ICLR 2022) as one in-memory pipeline (notes §2):

exact kNN → structure-space re-ranking → AND predicts each face's neighbour count k̂ →
adaptive adjacency (first k̂ re-ranked neighbours) → two-layer SAGE-`gcn` GCN → kNN on the GCN
features, edges with cos ≥ threshold, connected components.

No labels are needed. The shipped weights (``weights/adanets_{and,gcn}_<embedder>.pth``) were
trained for dlib and for mbf features; their tuned thresholds live in
``weights/adanets_<embedder>.json`` and become this method's defaults (paper values are used when
the file is absent).

Issue 11 (faces from another source), off with ``similarity_floor=false`` (the original
algorithm, for A/B checks): both the adaptive graph's edges and the final links need the
cosine of the plain L2-normalised descriptors to reach ``min_link_sim`` (measured per embedder,
``calibration.LINK_FLOOR_BY_EMBEDDER``; user checkpoints get it too). The pipeline passes the
plain descriptors (``wants_raw_features``); the method prepares what the AND checkpoint was
trained on (``features``: raw | calibrated, from its ``meta``). Then (``refine``, on by default
with the floor for dlib) the default method's post-steps run on the labels, on the input kNN
re-scored with the plain cosine, and the floor is the stricter refined one (dlib 0.94;
``cluster/refine.py``, docs/benchmarks/adanets.md §6).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
from pydantic import Field

from ...calibration import calibration_mean, prepare_features
from ...cohort import cohort_fingerprint, load_cohort, resolve_cohort
from ...graph import components
from ...knn import knn, l2_normalize
from ...progress import bar
from ..base import Clusterer, device_kind
from ..gcn_common import DEFAULT_EMBEDDER, checkpoint_features, shipped_set
from ..refine import RefineConfig, floor_cosine, learned_floor_cohort, learned_floor_dev, learned_link_floor, learned_weights_fingerprint, refine_learned, refine_on, resolved_post_steps
from .and_model import ANDModel, load_and_checkpoint, predict_k
from .gcn import AdaGCN, SparseGraph, adaptive_adjacency, load_gcn_checkpoint
from .structure_space import structure_space, structure_space_torch

#: The shipped Ada-NETS weights (AND, GCN) and the settings tuned with them, one set per embedder
#: they were trained for (files in ``facecluster/weights``, model cards beside them). Without
#: checkpoints the method takes the set of the features' embedder (dlib when unknown). The mbf
#: set was trained on CPU (docs/benchmarks/adanets.md §12): its AND reads features and
#: under-predicts, so ``min_k_hat`` carries its adaptive graph. dlib's AND reads the
#: neighbourhood's cosines (``and_input="gram"``, thirty-eighth session, §15): its counts follow
#: the truth on people it never saw, ``min_k_hat`` still lifts degraded faces' and
#: ``k_hat_margin`` caps those of people dlib confuses.
SHIPPED_ADANETS: dict[str, tuple[str, str, str]] = {
    "dlib": ("adanets_and_dlib.pth", "adanets_gcn_dlib.pth", "adanets_dlib.json"),
    "mbf": ("adanets_and_mbf.pth", "adanets_gcn_mbf.pth", "adanets_mbf.json"),
}


#: Where Ada-NETS's refinement departs from ``refine.LEARNED_REFINE_DEFAULTS`` (the user's
#: ``refine_settings`` override both): *close pieces* in the fragment merge
#: (``merge_close_piece``, with the close-halves test it needs). Ada-NETS leaves a 48-px person in
#: a big cluster and a piece of a tenth to a third of its size that no majority rule joins (the
#: bigger sends 1-3 % of its slots across). Chosen on the training identities (48-px training
#: video 0.878 -> 0.916, glint-lowres-train 0.842 -> 0.877, lfw-train 0.936 -> 0.950, worst tuning
#: regime 0.7750 -> 0.7778; shares 0.05-0.2 tie, 0.2 the strictest of them); validation
#: glint-lowres-val 0.882 -> 0.955, lfw-lowq-val +0.009, Yale -0.003 with the same faces in mixed
#: clusters, the rest identical (docs/benchmarks.md §9, "Twenty-first session"). Measured for
#: gcn-ve too and not taken there: it joins Extended Yale B's lighting clusters (0.410 -> 0.346).
#: The GCN methods' weak-cut split was measured for Ada-NETS and not taken: it cuts long-video
#: people (glint18-train 0.931 -> 0.888) and leaves its photo errors (twenty-second session).
ADANETS_REFINE_DEFAULTS: dict[str, Any] = {"merge_close_q": 10.0, "merge_close_piece": 0.2}

#: ``lit_min_raise`` per embedder (the cohort part it reads: ``AdaNetsConfig.lit_part``). dlib:
#: 0.002: the side-light part raises ordinary photos', video's and low-quality faces by
#: 0.0001-0.0002 on average, a night camera's by 0.002 (some of its clusters are judged: night
#: training photos −0.001 / −0.003, lfw-night-val unchanged), side-lit training photos by 0.013;
#: on Extended Yale B 0.001-0.0035 give the same partition. Thirty-seventh session: the training
#: regimes (side-lit ones included) and every validation regime but Extended Yale B identical;
#: Extended Yale B 13.8 % -> 2.0 % of faces in mixed clusters (docs/benchmarks/adanets.md §14).
LIT_MIN_RAISE_BY_EMBEDDER: dict[str, float] = {"dlib": 0.002}

#: ``k_hat_margin`` per embedder (with the similarity floor on). dlib: 0.02. The gram AND gives the
#: faces of people dlib confuses with each other 2-30 times their true neighbour count (held-out
#: politicians' photos 29-54 neighbours on average where the truth is 2-11), and those neighbours pass the
#: floor; capped at the count of neighbours at least floor + 0.02 alike, lfw-val's 46-face cluster
#: of three politicians and others is not formed, and the AND keeps its lift on the training
#: videos (glint18-train 0.931 -> 0.989) and mixed-size photos (lfw-mixed-train 0.824 -> 0.846).
#: 0.01 and 0.02 tie on the training identities (worst 0.7824, mean 0.9213 both; side-lit and night
#: photos identical within 0.0003); ties go to the stricter cap. docs/benchmarks/adanets.md §15.
K_HAT_MARGIN_BY_EMBEDDER: dict[str, float] = {"dlib": 0.02}

def shipped_files(embedder: str | None) -> tuple[Path, Path, Path]:
    """(AND, GCN, settings JSON) shipped for ``embedder``; a clear error naming the embedders
    that have weights when it has none."""
    return shipped_set(  # type: ignore[return-value]
        SHIPPED_ADANETS, embedder, "Ada-NETS",
        "pass checkpoint_and and checkpoint_gcn trained on its features (`facecluster train "
        "adanets`, or bench/train_shift.py --embedder)", FileNotFoundError,
    )


#: the dlib set (the training CLI's default output paths)
DEFAULT_AND, DEFAULT_GCN, DEFAULTS_JSON = shipped_files("dlib")

#: the paper's values (MS1M, zero-mean 256-d features)
PAPER_DEFAULTS = {"k": 80, "lamb": 0.3, "th_sim": 0.0, "final_topk": 121, "final_th": 0.96, "min_k_hat": 0}


@lru_cache(maxsize=8)
def shipped_defaults(embedder: str | None = None) -> dict:
    """Settings tuned with the weights shipped for ``embedder`` (``adanets_<embedder>.json``),
    else the paper's."""
    d = dict(PAPER_DEFAULTS)
    path = shipped_files(embedder)[2]
    if path.is_file():
        tuned = json.loads(path.read_text()).get("defaults", {})
        d.update({k: v for k, v in tuned.items() if k in PAPER_DEFAULTS})
    return d


def _default(name: str, **kw):
    return Field(None, description=_DOC[name] + " None: the value tuned with the shipped weights of "
                 "the features' embedder (adanets_<embedder>.json); with user checkpoints, dlib's.", **kw)


_DOC = {
    "k": "Neighbours per face for the structure space and AND (self included; paper 80; capped at N).",
    "lamb": "λ: weight of the cosine distance in the structure-space distance (paper 0.3).",
    "th_sim": "Adaptive adjacency keeps structure-space similarities ≥ this (paper 0.0).",
    "final_topk": "Neighbours searched on the GCN features for the final rule (paper 121, self included).",
    "final_th": "Final rule: link faces whose GCN-feature cosine is ≥ this (paper 0.96 on MS1M; tuned per embedder).",
    "min_k_hat": "Lower bound on AND's predicted neighbour count k̂ in the adaptive graph (0: AND's own "
    "prediction, as the paper); neighbours under th_sim and under the similarity floor are still dropped. "
    "A guard against an AND that under-predicts (dlib's first AND: k̂ 1.4 where the truth is 32; the shipped "
    "mbf AND likewise; the shipped dlib AND on degraded faces: 3.9 where the truth is 7.5). "
    "With similarity_floor=false and no explicit value: 0 (the original algorithm).",
}


#: AND inference batch when ``batch_size`` is None, by device type. On CPU a
#: batch of 1,024 faces' LSTM activations exceeds glibc's 32 MB mmap threshold and is page-faulted in
#: afresh each batch (AND at 50k faces: 16.9 s at 1,024, 8.5 s at 128; bit-identical outputs)
AND_BATCH = {"cpu": 128, "cuda": 1024}


class AdaNetsConfig(RefineConfig):
    k: Optional[int] = _default("k")
    lamb: Optional[float] = _default("lamb")
    th_sim: Optional[float] = _default("th_sim")
    final_topk: Optional[int] = _default("final_topk")
    final_th: Optional[float] = _default("final_th")
    min_k_hat: Optional[int] = _default("min_k_hat", ge=0)
    doubt_margin: Optional[float] = Field(
        0.0,
        ge=0.0,
        description="As for every method (cluster/base.py), but off by default for Ada-NETS: setting the faces the "
        "non-face test doubts apart changed its held-out LFW photos (BCubed F 0.9575 -> 0.9539, 46 faces in mixed "
        "clusters; removing four faces moves its adaptive neighbour lists) where gcn-ve and Infomap moved by at most 0.0003 "
        "(thirty-second session; docs/benchmarks.md §8 step 18).",
    )
    lit_min_raise: Optional[float] = Field(
        None,
        ge=0.0,
        description="After the refinement, clusters whose faces the cohort part lit_part raised by at least this "
        "on average (cosine units; faces under a hard side light) are checked: a weak cut splits them and one whose "
        "typical pair is no more alike than each face to the strangers most like it in that look becomes lone faces "
        "(facecluster.cluster.refine.check_lit). None: the embedder's value (dlib 0.002) when the refinement runs and "
        "its cohort has the part, else off; 0: off. Needs the refinement and the embedder's cohort with that part "
        "(an error otherwise when set).",
    )
    lit_part: str = Field("side-light", description="The cohort part whose look lit_min_raise reads (facecluster.cohort).")
    k_hat_margin: Optional[float] = Field(
        None,
        ge=0.0,
        description="AND's neighbour count k̂ is capped at the number of a face's structure-space neighbours whose "
        "floor similarity reaches the similarity floor + this (cosine units; then min_k_hat raises it). An AND "
        "that reads the neighbourhood's cosines cannot tell one person's many photos from several people the "
        "embedder confuses, and gives the latter many times their true count (docs/benchmarks/adanets.md §13, §15). "
        "None: the embedder's value (dlib 0.02) when the floor is on, else off; 0: off. Needs the floor (an error "
        "without one when set).",
    )
    weak_th: Optional[float] = Field(
        None, ge=-1.0, le=1.0,
        description="Second tier of the final rule: also link faces whose GCN-feature cosine is >= this "
        "(below final_th) when their floor cosine passes the similarity floor by weak_margin. None: off "
        "(docs/benchmarks/adanets.md §9). Needs the floor: an error without one.",
    )
    weak_margin: float = Field(0.01, ge=0.0, description="How far above the floor a weak_th link's floor cosine must be.")
    checkpoint_and: str | None = Field(None, description="AND weights (.pth, original layout accepted); default: the weights shipped for the features' embedder (dlib, mbf).")
    checkpoint_gcn: str | None = Field(None, description="GCN weights (.pth, DGL 0.5 or ≥2 layout); default: the weights shipped for the features' embedder (dlib, mbf).")
    batch_size: Optional[int] = Field(
        None,
        ge=1,
        description="AND inference batch (faces per LSTM batch; the output does not depend on it, bit for bit). "
        "None: 128 on CPU (a bigger batch's activations exceed malloc's 32 MB mmap threshold and are page-faulted "
        "in afresh each batch: AND at 50k faces 16.9 s at 1024, 8.5 s at 128), 1024 on CUDA.",
    )
    trust_checkpoint: bool = Field(
        False,
        description="Allow torch.load(weights_only=False) for checkpoints that cannot be read "
        "safely (runs pickle code from the file: only for files you trust).",
    )
    features: Optional[Literal["raw", "calibrated"]] = Field(
        None,
        description="Features the checkpoints were trained on: raw (plain L2-normalised descriptors) "
        "or calibrated (minus the embedder's shipped mean). None: the AND checkpoint's meta['features']; "
        "facecluster checkpoints older than that key: calibrated; others (Ada-NETS releases): raw.",
    )
    similarity_floor: bool = Field(
        True,
        description="Adaptive-graph edges and final links need a plain-descriptor cosine >= "
        "min_link_sim. False: the original algorithm (A/B checks).",
    )
    min_link_sim: Optional[float] = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="The similarity floor (cosine of the L2-normalised descriptors). None: the value "
        "measured for the embedder: with the refinement on (refine) refine.REFINED_LINK_FLOOR_BY_EMBEDDER "
        "(dlib 0.94), without it calibration.LINK_FLOOR_BY_EMBEDDER (dlib 0.93); none for embedders without one.",
    )

    def method_refine_defaults(self, embedder: Optional[str]) -> dict[str, Any]:
        """``ADANETS_REFINE_DEFAULTS`` (every embedder)."""
        return dict(ADANETS_REFINE_DEFAULTS)


@lru_cache(maxsize=4)
def _load_models(and_path: str, gcn_path: str, trust: bool = False) -> tuple[ANDModel, dict, AdaGCN, dict]:
    for p, what in ((and_path, "AND"), (gcn_path, "GCN")):
        if not Path(p).is_file():
            raise FileNotFoundError(
                f"Ada-NETS {what} weights not found at {p}; pass checkpoint_{what.lower()}=PATH "
                "or train them with `facecluster train adanets`"
            )
    m_and, meta_and = load_and_checkpoint(and_path, trust=trust)
    m_gcn, meta_gcn = load_gcn_checkpoint(gcn_path, trust=trust)
    if m_and.feature_dim != m_gcn.feature_dim:
        raise ValueError(f"AND expects {m_and.feature_dim}-d features but the GCN {m_gcn.feature_dim}-d")
    return m_and, meta_and, m_gcn, meta_gcn


class AdaNetsClusterer(Clusterer):
    name = "adanets"
    summary = "Ada-NETS (ICLR 2022): structure space + adaptive neighbours (AND) + GCN, then a cosine threshold; shipped weights for dlib and mbf."
    Config = AdaNetsConfig
    #: the pipeline passes the plain descriptors; the method prepares its checkpoint's features
    wants_raw_features: ClassVar[bool] = True
    #: the small-face rule (cluster/base.py) applies, with the floor on
    uses_face_px: ClassVar[bool] = True

    def _models(self):
        c = self.config
        shipped_and = shipped_gcn = None
        if c.checkpoint_and is None or c.checkpoint_gcn is None:
            shipped_and, shipped_gcn, _ = shipped_files(self.embedder())
        return _load_models(str(c.checkpoint_and or shipped_and), str(c.checkpoint_gcn or shipped_gcn), c.trust_checkpoint)

    def _uses_shipped(self) -> bool:
        return self.config.checkpoint_and is None and self.config.checkpoint_gcn is None

    def embedder(self) -> Optional[str]:
        """The features' embedder (it picks the shipped weights); dlib when unknown and no
        checkpoint is given."""
        return self.config.embedder or (DEFAULT_EMBEDDER if self._uses_shipped() else None)

    def resolved(self) -> dict:
        """k, lamb, th_sim, final_topk, final_th, min_k_hat: explicit values, else those tuned
        with the weights shipped for the embedder (dlib's with user checkpoints)."""
        name = self.embedder() if self._uses_shipped() else DEFAULT_EMBEDDER
        tuned = shipped_defaults(name if name in SHIPPED_ADANETS else DEFAULT_EMBEDDER)
        c = self.config
        r = {key: (getattr(c, key) if getattr(c, key) is not None else tuned[key]) for key in PAPER_DEFAULTS}
        if not c.similarity_floor and c.min_k_hat is None:
            r["min_k_hat"] = 0  # the original algorithm, for A/B checks
        return r

    def feature_kind(self) -> str:
        """"raw" or "calibrated": what the checkpoints expect (setting, else the AND meta)."""
        return self.config.features or checkpoint_features(self._models()[1])

    def small_vote_floor(self) -> Optional[float]:
        """None (small-face rule off) for the original algorithm (similarity_floor=false)."""
        return super().small_vote_floor() if self.config.similarity_floor else None

    def link_floor(self) -> Optional[float]:
        """The similarity floor in use (None: off)."""
        return learned_link_floor(self.config, self.embedder())

    def floor_cohort(self) -> bool:
        """Whether the floor is cohort-normalised (:func:`refine.learned_floor_cohort`)."""
        return learned_floor_cohort(self.config, self.embedder(), self.link_floor())

    def weights_fingerprint(self) -> Optional[str]:
        # the shipped cohort, read by the floor and by the lit check: a new one reclusters
        fp = learned_weights_fingerprint(self.config, self.embedder(), self.link_floor())
        if fp is None and self.lit_min_raise() is not None:
            fp = cohort_fingerprint(self.embedder())
        return fp

    def lit_min_raise(self) -> Optional[float]:
        """The lit check's gate in use (None: off); see ``AdaNetsConfig.lit_min_raise``."""
        c = self.config
        if c.lit_min_raise == 0:
            return None
        embedder = self.embedder()
        co = load_cohort(embedder)
        have = refine_on(c, embedder) and co is not None and co.part(c.lit_part) is not None
        if c.lit_min_raise is None:
            return LIT_MIN_RAISE_BY_EMBEDDER.get(embedder or "") if have else None
        if not have:
            raise ValueError(
                f"lit_min_raise={c.lit_min_raise} needs the refinement (refine) and a cohort with a {c.lit_part!r} part; "
                f"embedder {embedder!r} {'has one' if co is not None and co.part(c.lit_part) is not None else 'has none'}"
                " (set lit_min_raise=0 or leave it None)"
            )
        return c.lit_min_raise

    def k_hat_margin(self) -> Optional[float]:
        """The cap on AND's counts in use (None: off); see ``AdaNetsConfig.k_hat_margin``."""
        c = self.config
        if c.k_hat_margin == 0:
            return None
        if c.k_hat_margin is None:
            return None if self.link_floor() is None else K_HAT_MARGIN_BY_EMBEDDER.get(self.embedder() or "")
        if self.link_floor() is None:
            raise ValueError(f"k_hat_margin={c.k_hat_margin} is measured from the similarity floor, which is off "
                             "(set k_hat_margin=0 or leave it None)")
        return c.k_hat_margin

    def settings(self) -> dict:
        d = super().settings()
        d.update(self.resolved())
        d["k_hat_margin"] = self.k_hat_margin()
        d["lit_min_raise"] = self.lit_min_raise()
        d["lit_part"] = self.config.lit_part if d["lit_min_raise"] is not None else None
        d["floor_cohort"] = self.floor_cohort()
        d["features"] = self.feature_kind()
        d["min_link_sim"] = self.link_floor()
        d["refine"] = refine_on(self.config, self.embedder())
        d["refine_post_steps"] = resolved_post_steps(self.config, self.embedder())
        return d

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Steps 1–5: (N, D) features → (N, nhid) L2-normalised GCN features ("fcfeat")."""
        return self._embed(X)[0]

    def _embed(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``embed`` plus the (N, D) plain L2-normalised descriptors (for the floor); leaves the
        input kNN lists in ``self.knn_`` (ids, sims) for the refinement."""
        import torch

        c = self.config
        r = self.resolved()
        dev = self.device
        X = self._check_input(X)
        xr = l2_normalize(X)
        m_and, meta_and, m_gcn, _ = self._models()
        x = prepare_features(X, calibration_mean(self.embedder())) if self.feature_kind() == "calibrated" else xr
        n = x.shape[0]
        floor = self.link_floor()
        if n and x.shape[1] != m_and.feature_dim:
            raise ValueError(f"Ada-NETS weights expect {m_and.feature_dim}-d features, got {x.shape[1]}-d")
        self.floor_dev_ = None
        if n == 0:
            return np.zeros((0, m_gcn.nhid), np.float32), xr
        # the floor's per-face cohort offsets (None: plain cosine), also read by fit_predict
        with self._timed("cohort"):
            self.floor_dev_ = None if floor is None else learned_floor_dev(
                c, self.embedder(), xr, backend=c.knn_backend, device=dev
            )
        scale_max = int(meta_and.get("scale_max", r["k"]))
        with self._timed("knn"):
            sims, ids = knn(x, r["k"], normalize=False, backend=c.knn_backend, device=dev, progress=c.progress)
            ids, sims = _self_first(ids, sims)
        self._input_knn = ids  # candidate pairs for the near-duplicate rule
        self.knn_ = (ids, sims)
        with self._timed("structure_space"):
            # on a GPU the same sets and counts are computed there (identical output): on one
            # core the numpy version took 21 s per 100k faces, the longest step at 1M
            ss = (lambda *a: structure_space_torch(*a, device=dev)) if dev.startswith("cuda") else structure_space
            ids_ss, d_ss = ss(ids, sims, r["k"], r["lamb"])
        with self._timed("and"), bar("Ada-NETS AND", n, c.progress) as b:
            k_hat = predict_k(m_and, x, ids_ss, scale_max, device=dev, batch_size=c.batch_size or AND_BATCH[device_kind(dev)],
                              progress=b.advance)
        self.k_hat_and_ = k_hat  # AND's own counts, before the cap and min_k_hat
        cuda = dev.startswith("cuda")
        with self._timed("adjacency"):
            cos = None
            if floor is not None:
                cos = floor_cosine(xr, np.repeat(np.arange(n), ids_ss.shape[1]), ids_ss.reshape(-1), self.floor_dev_).reshape(ids_ss.shape)
            margin = self.k_hat_margin()
            if margin is not None:
                # no more neighbours than are clearly alike: where the embedder confuses people
                # the AND reads their neighbourhood as one person's (self counts, as in k̂)
                k_hat = np.minimum(k_hat, np.maximum((cos >= floor + margin).sum(axis=1), 1))
            if r["min_k_hat"]:
                k_hat = np.maximum(k_hat, min(r["min_k_hat"], ids_ss.shape[1]))
            self.k_hat_ = k_hat
            if floor is not None:
                # edges under the floor get an infinite distance, so the adjacency drops them
                d_ss = np.where(cos >= floor, d_ss, np.inf).astype(np.float32)
            # on a GPU both the adjacency and the aggregation operator are built there
            adj = adaptive_adjacency(ids_ss, d_ss, k_hat, r["th_sim"], device=dev if cuda else None)
        with self._timed("gcn"), torch.inference_mode():
            g = SparseGraph.from_torch(adj) if cuda else SparseGraph(adj, dev)
            out = m_gcn.to(dev)(g, torch.from_numpy(x).to(dev)).float().cpu().numpy()
        return l2_normalize(out), xr

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        c = self.config
        r = self.resolved()
        floor = self.link_floor()
        if c.weak_th is not None and floor is None:
            # the weak tier's margin is measured from the floor: without one it would be a plain
            # lower threshold, the chain-prone setting it exists to avoid
            raise ValueError("weak_th needs the similarity floor (similarity_floor=true and an embedder with a "
                             "floor, or min_link_sim); set weak_th=None or final_th instead")
        self.timings_ = {}
        feat, xr = self._embed(X)
        n = feat.shape[0]
        if n == 0:
            return np.zeros(0, np.int64)
        with self._timed("final_knn"):
            sims, ids = knn(feat, r["final_topk"], normalize=False, backend=c.knn_backend, device=self.device,
                            progress=c.progress, description="kNN (GCN features)")
        with self._timed("components"):
            rows = np.repeat(np.arange(n), ids.shape[1])
            cols = ids.reshape(-1)
            flat = sims.reshape(-1)
            # weak tier (checked above to have a floor); at or above final_th it adds nothing
            weak = c.weak_th if c.weak_th is not None and c.weak_th < r["final_th"] else None
            keep = np.flatnonzero((flat >= (r["final_th"] if weak is None else weak)) & (cols != rows) & (cols >= 0))
            if floor is not None:
                need = floor if weak is None else np.where(flat[keep] >= r["final_th"], floor, floor + c.weak_margin)
                keep = keep[floor_cosine(xr, rows[keep], cols[keep], self.floor_dev_) >= need]
            labels = components(n, rows[keep], cols[keep])
        if refine_on(c, self.embedder()):
            # the default method's post-steps on the input kNN lists, scored with the plain
            # cosine (already plain when the checkpoints read raw features); then the clusters of
            # side-lit faces are checked (lit_min_raise)
            ids_in, sims_in = self.knn_
            gate = self.lit_min_raise()
            # features of another width than the cohort's: an error when asked for by hand, else
            # a warning and no check (as the floor's cohort)
            co = None if gate is None else resolve_cohort(True if c.lit_min_raise else None, self.embedder(), xr.shape[1],
                                                          name="lit_min_raise")
            lit = None if co is None else dict(cohort=co, part=c.lit_part, min_raise=gate, backend=c.knn_backend, device=self.device)
            labels = refine_learned(
                labels, ids_in, xr, embedder=self.embedder(), overrides=c.refine_overrides(self.embedder()),
                plain=self.feature_kind() == "raw", sims=sims_in, timed=self._timed, lit=lit,
            )
        return labels


def _self_first(ids: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each node itself at column 0 (the original's faiss lists start with self).

    With exact duplicates a lower-id twin can tie with self and come first; the structure space
    and AND rely on "self first", so self is moved to the front (or inserted, dropping the last
    column, when more than k' twins pushed it out)."""
    n, k = ids.shape
    if k == 0:
        return ids, sims
    me = np.arange(n)[:, None]
    bad = ids[:, 0] != me[:, 0]
    if not bad.any():
        return ids, sims
    ids, sims = ids.copy(), sims.copy()
    for i in np.nonzero(bad)[0]:  # rare: only rows with exact duplicates
        row, s = list(ids[i]), list(sims[i])
        if i in row:
            p = row.index(i)
            row.insert(0, row.pop(p))
            s.insert(0, s.pop(p))
        else:
            row, s = [i] + row[:-1], [s[0]] + s[:-1]
        ids[i], sims[i] = row, s
    return ids, sims


__all__ = ["AdaNetsClusterer", "AdaNetsConfig", "shipped_defaults", "shipped_files"]
