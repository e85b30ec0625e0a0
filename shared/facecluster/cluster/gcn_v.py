"""GCN-V (learn-to-cluster, CVPR 2020 "Learning to Cluster Faces via Confidence and
Connectivity Estimation"), clean-room inference in plain PyTorch (no mmcv).

Pipeline (notes §1.1–§1.5), every step vectorised:

1. L2-normalise the features; exact kNN (k counts the face itself, capped at N; negative
   cosines allowed — the original asserted on both).
2. Affinity graph: kNN edges with sim >= th_sim, no self edges, max-symmetrised, + I,
   row-normalised (``graph.build_adjacency``).
3. GCN-V (one GraphConv + MLP head) predicts a real-valued confidence per face and a 512-d
   "gcn_feat".
4. Stage A: each face links to its first kNN neighbour with strictly higher confidence;
   links with cosine > tau_0 are kept; connected components are the clusters.
5. Stage B (``use_gcn_feat``): the same on a *rebuilt* kNN of the L2-normalised gcn_feat,
   with threshold tau. Its features and the confidences feed GCN-E (``gcn_e.py``).

Without a checkpoint the method takes the weights shipped for the features' embedder
(``gcn_common.SHIPPED_GCN_VE``: dlib, mbf; dlib when the embedder is unknown), and settings left
at ``None`` the values stored next to them (``weights/gcn_ve_<embedder>.json``); with a
checkpoint, the papers' MS1M values (k=80, tau_0=0.65, tau=0.8).

Issue 11 (faces from another source), on by default, off with ``similarity_floor=false`` (then
the result is learn-to-cluster's, for A/B checks):

* **similarity floor**: every face→peak link (stage A, stage B, GCN-E) also needs the cosine of
  the plain L2-normalised descriptors to reach ``min_link_sim`` (measured per embedder,
  ``calibration.LINK_FLOOR_BY_EMBEDDER``); it applies to user checkpoints too. The networks
  decide which links to make; the floor forbids the links different people make, so no chain
  of links can join hundreds of people when the learned confidences are wrong on a new source.
* **ties**: confidences are replaced by ranks of a strict total order (ties to the lower
  index, ``gcn_common.total_order``) so identical faces link to each other.
* **refinement** (``refine``, on by default when the floor is on and the embedder has tuned
  post-step thresholds): the default method's post-steps (``cluster/refine.py``: fragment merge,
  small-cluster and relative attach) run on the labels, on the stage-A kNN re-scored with the
  plain cosine; with it the floor is ``refine.REFINED_LINK_FLOOR_BY_EMBEDDER`` (dlib 0.94: the
  post-steps win back the recall a stricter floor costs). docs/benchmarks/gcn_ve.md §7.
* **floor_pick** (opt-in): a face links to its nearest higher-confidence neighbour *that passes
  the floor* (GCN-E: its most connected such candidate) instead of losing its only link when the
  network's first choice is under it. It keeps low-resolution video's peak trees whole, and it
  chains look-alikes in large batches, so it is off by default. docs/benchmarks/gcn_ve.md §10.
* **features per checkpoint**: the pipeline passes the plain descriptors
  (``wants_raw_features``) and the method prepares what its checkpoint was trained on
  (``features``: raw | calibrated, from the checkpoint's ``meta``; old checkpoints keep working).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from ..calibration import calibration_mean, prepare_features
from ..graph import build_adjacency, build_adjacency_torch, components, nearest_higher
from ..knn import knn, l2_normalize
from . import gcn_common as gc
from .base import Clusterer
from .refine import RefineConfig, floor_cosine, learned_floor_cohort, learned_floor_dev, learned_link_floor, learned_weights_fingerprint, refine_learned, refine_on, resolved_post_steps

#: the papers' MS1M test configs (cfg_test_gcnv_ms1m.py / cfg_test_gcne_ms1m.py)
PAPER_DEFAULTS: dict[str, Any] = {
    "k": 80,
    "tau_0": 0.65,
    "tau": 0.8,
    "use_gcn_feat": True,
    "k_e": 160,
    "ignore_ratio": 0.8,
}


#: Where the GCN methods' refinement departs from ``refine.LEARNED_REFINE_DEFAULTS`` (the user's
#: ``refine_settings`` override both): an open piece joins only when 40 % of its leaving links go
#: to its target (Infomap and Ada-NETS: 30 %). Chosen for gcn-ve on the training scenarios: at 30 %
#: the grey, blurred LFW training photos gained 7 faces in mixed clusters (117 -> 124), at 40 %
#: none, and the 48-px video still rose 0.870 -> 0.904 (docs/benchmarks.md §9, "Nineteenth
#: session"); gcn-v shares the code path and was not measured separately.
GCN_REFINE_DEFAULTS: dict[str, Any] = {"merge_open_share": 0.4}

#: Per embedder, on top of ``GCN_REFINE_DEFAULTS``. dlib: the weak-cut split (``split_min_size``
#: 20 at the default conductance 0.05; off for Infomap and Ada-NETS) cuts the clusters GCN-E
#: chains through two people: faces in mixed clusters on the grey, blurred training photos 117 ->
#: 12, every tuning regime equal or better (one training scenario −0.004: a long-video person in
#: three qualities), validation lfw-detbox-val +0.003, Extended Yale B 0.410 -> 0.499, the 84k
#: batch 0.818 -> 0.837. Not for mbf: its long-video people are cut there (glint18-val 0.999 ->
#: 0.925; docs/benchmarks.md §9, "Twenty-first session"). Its second tier (``split_small_size`` 40,
#: twenty-ninth session) judges clusters of 10-40 faces again on their 5-NN graph: two 10-photo
#: look-alikes GCN-E chained show no weak cut at 10 neighbours (each face's 10th is the other
#: person). Training photos +0.001 to +0.005 (worst regime 0.7759 -> 0.7768), no video regime moved;
#: validation ORL 0.974 -> 1.000, loose crops 0.951 -> 0.954 (docs/benchmarks.md §9).
GCN_REFINE_DEFAULTS_BY_EMBEDDER: dict[str, dict[str, Any]] = {"dlib": {"split_min_size": 20, "split_small_size": 40}}


class GCNVConfig(RefineConfig):
    doubt_margin: Optional[float] = Field(
        0.0,
        ge=0.0,
        description="As for every method (cluster/base.py), but off by default for gcn-v: setting the faces the "
        "non-face test doubts apart lowered its worst training regime (lfw-mixed-train21 0.7334 -> 0.7314); gcn-ve "
        "(None: the embedder's value) and Infomap take it (thirty-second session; docs/benchmarks.md §8).",
    )
    checkpoint_v: Optional[str] = Field(
        None,
        description="GCN-V weights (.pth; mmcv container or bare state_dict, e.g. the released "
        "pretrained_gcn_v_ms1m.pth for 256-d hfsoftmax features). None: the weights shipped "
        "for the features' embedder (weights/gcn_v_dlib.pth, weights/gcn_v_mbf.pth).",
    )
    trust_checkpoint: bool = Field(
        False,
        description="Allow torch.load(weights_only=False) for checkpoints whose metadata cannot "
        "be read safely (runs pickle code from the file: only for files you trust).",
    )
    k: Optional[int] = Field(
        None, ge=1, description="Neighbours per face for the GCN-V graph (counting itself; capped "
        "at N). None: 80 (paper) with a checkpoint, the shipped value without."
    )
    th_sim: float = Field(0.0, ge=0.0, le=1.0, description="Drop kNN edges with cosine below this before building the adjacency (paper: 0).")
    tau_0: Optional[float] = Field(
        None, ge=-1.0, le=1.0, description="Stage A: keep a face→peak link when cosine (original "
        "features) > tau_0. None: 0.65 (paper) with a checkpoint, the shipped value without."
    )
    tau: Optional[float] = Field(
        None, ge=-1.0, le=1.0, description="Stage B and GCN-E: keep a face→peak link when cosine "
        "(GCN-V features) > tau. None: 0.8 (paper) with a checkpoint, the shipped value without "
        "(gcn-ve with the floor and the refinement: gcn_e.REFINED_TAU_E_BY_EMBEDDER, dlib 0.65)."
    )
    use_gcn_feat: Optional[bool] = Field(
        None, description="gcn-v labels from stage B (rebuilt kNN on GCN-V features, tau; paper "
        "config use_gcn_feat=True) instead of stage A (original kNN, tau_0). None: paper/shipped."
    )
    features: Optional[Literal["raw", "calibrated"]] = Field(
        None, description="Features the checkpoint was trained on: raw (plain L2-normalised "
        "descriptors) or calibrated (minus the embedder's shipped mean). None: the checkpoint's "
        "meta['features']; facecluster checkpoints older than that key: calibrated; others "
        "(learn-to-cluster releases): raw."
    )
    similarity_floor: bool = Field(
        True, description="Every link needs a plain-descriptor cosine >= min_link_sim, and "
        "confidence ties break by index. False: the original algorithm (A/B with learn-to-cluster)."
    )
    min_link_sim: Optional[float] = Field(
        None, ge=-1.0, le=1.0, description="The similarity floor (cosine of the L2-normalised "
        "descriptors). None: the value measured for the embedder: with the refinement on "
        "(refine) refine.REFINED_LINK_FLOOR_BY_EMBEDDER (dlib 0.94, mbf 0.35), without it "
        "calibration.LINK_FLOOR_BY_EMBEDDER (dlib 0.93, mbf 0.35); embedders without one get no floor unless set."
    )
    floor_pick: bool = Field(
        False, description="With the floor: each face links to its nearest higher-confidence "
        "neighbour among those that pass the floor (GCN-E: its most connected such candidate), "
        "instead of the method picking first and the floor then cutting that link. Opt-in: it "
        "joins low-resolution video (gcn-ve, dlib, with min_link_sim=0.945: 48-px video 0.73 -> "
        "0.84) but chained 1,561 identities into one cluster at 100k synthetic faces "
        "(docs/benchmarks/gcn_ve.md §10). No effect without a floor."
    )

    def method_refine_defaults(self, embedder: Optional[str]) -> dict[str, Any]:
        """``GCN_REFINE_DEFAULTS`` and, for the embedder, ``GCN_REFINE_DEFAULTS_BY_EMBEDDER``."""
        return {**GCN_REFINE_DEFAULTS, **GCN_REFINE_DEFAULTS_BY_EMBEDDER.get(embedder or "", {})}


class GCNVClusterer(Clusterer):
    name = "gcn-v"
    summary = "GCN-V (CVPR 2020): learned vertex confidence + peaks; shipped weights for dlib and mbf."
    Config = GCNVConfig
    #: the pipeline passes the plain descriptors; the method prepares its checkpoint's features
    wants_raw_features: ClassVar[bool] = True
    #: the small-face rule (cluster/base.py) applies, with the floor on
    uses_face_px: ClassVar[bool] = True

    # -- settings ---------------------------------------------------------------------------
    def _uses_shipped(self) -> bool:
        return self.config.checkpoint_v is None

    def _meta_v(self) -> dict[str, Any]:
        key = str(self._path_v())
        cache = self.__dict__.setdefault("_meta_cache", {})
        if key not in cache:
            cache[key] = gc.read_meta(key, trust=self.config.trust_checkpoint)
        return cache[key]

    def feature_kind(self) -> str:
        """"raw" or "calibrated": what the GCN-V checkpoint expects (setting, else its meta)."""
        return self.config.features or gc.checkpoint_features(self._meta_v())

    def embedder(self) -> Optional[str]:
        """The features' embedder (it picks the shipped weights); dlib when unknown and no
        checkpoint is given."""
        return self.config.embedder or (gc.DEFAULT_EMBEDDER if self._uses_shipped() else None)

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
        return learned_weights_fingerprint(self.config, self.embedder(), self.link_floor())

    def _prepare(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) input → (plain L2-normalised, what the network reads)."""
        xr = l2_normalize(X)
        if self.feature_kind() == "calibrated":
            return xr, prepare_features(X, calibration_mean(self.embedder()))
        return xr, xr

    def _order(self, conf: np.ndarray) -> np.ndarray:
        return gc.total_order(conf) if self.config.similarity_floor else conf

    def resolved(self) -> dict[str, Any]:
        """Concrete settings: explicit values, else shipped-JSON values (no checkpoint given)
        or the papers' (checkpoint given)."""
        cfg = self.config.model_dump()
        base = dict(PAPER_DEFAULTS)
        if self._uses_shipped():
            base.update({k: v for k, v in gc.shipped_settings(self.embedder()).items() if k in PAPER_DEFAULTS})
        for key, val in base.items():
            if key in cfg and cfg[key] is None:
                cfg[key] = val
        cfg["checkpoint_v"] = str(self._path_v())
        cfg["features"] = self.feature_kind()
        cfg["min_link_sim"] = self.link_floor()
        cfg["floor_cohort"] = self.floor_cohort()
        cfg["duplicate_sim"] = self.duplicate_sim()
        cfg["refine"] = refine_on(self.config, self.embedder())
        return cfg

    def settings(self) -> dict[str, Any]:
        d = {k: v for k, v in self.resolved().items() if k in self.Config.model_fields}
        d["refine_post_steps"] = resolved_post_steps(self.config, self.embedder())
        return d

    def _path_v(self):
        p = self.config.checkpoint_v
        if p is None:
            shipped = gc.shipped_files(self.embedder())[0]
            if not shipped.is_file():
                raise gc.CheckpointError(
                    f"no checkpoint_v given and the shipped GCN-V weights are missing ({shipped})"
                )
            return shipped
        return p

    def _load_v(self) -> gc.GCNV:
        return gc.load_gcn_v(self._path_v(), trust=self.config.trust_checkpoint)

    # -- pipeline ---------------------------------------------------------------------------
    def _check_dim(self, model: torch.nn.Module, X: np.ndarray, what: str) -> None:
        if X.shape[1] != model.feature_dim:
            raise ValueError(
                f"{what} expects {model.feature_dim}-d features but got {X.shape[1]}-d "
                f"(checkpoint {self.resolved().get('checkpoint_v')}); use the embedder it was trained for"
            )

    def _gcn_v_stage(self, X: np.ndarray, r: dict[str, Any]) -> dict[str, np.ndarray]:
        """Steps 1–3: kNN, adjacency, GCN-V. Returns ids/sims (N, k'), conf (N,), feat (N, nhid),
        xr (N, D) plain L2-normalised descriptors (for the floor), dev (N,) the floor's cohort
        offsets or None (:func:`refine.learned_floor_dev`)."""
        dev = self.device
        with self._timed("load_gcn_v"):
            model = self._load_v()
        self._check_dim(model, X, "GCN-V")
        xr, X = self._prepare(X)
        with self._timed("knn"):
            sims, ids = knn(X, r["k"], normalize=False, backend=self.config.knn_backend, device=dev, progress=self.config.progress)
        self._input_knn = ids  # candidate pairs for the near-duplicate rule
        self.knn_ = (ids, sims)  # (N, k) input kNN on the network's features (the refinement reads it)
        with self._timed("adjacency"):
            # on a GPU the adjacency is built there (scipy took ~30 s single-threaded at 1M)
            adj = (build_adjacency_torch(ids, sims, self.config.th_sim, dev) if dev.startswith("cuda")
                   else build_adjacency(ids, sims, self.config.th_sim))
        with self._timed("gcn_v"):
            conf, feat = gcn_v_forward(model, X, adj, dev)
        with self._timed("cohort"):
            dev_f = None if self.link_floor() is None else learned_floor_dev(
                self.config, self.embedder(), xr, backend=self.config.knn_backend, device=dev
            )
        return {"ids": ids, "sims": sims, "conf": conf, "feat": feat, "xr": xr, "dev": dev_f}

    def _stage_b_knn(self, feat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._timed("knn_gcn_feat"):
            sims, ids = knn(l2_normalize(feat), k, normalize=False, backend=self.config.knn_backend, device=self.device,
                            progress=self.config.progress, description="kNN (GCN features)")
        return sims, ids

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        X = self._check_input(X)
        self.timings_ = {}
        r = self.resolved()
        n = X.shape[0]
        if n == 0:
            self._path_v()  # a missing model is an error even for empty input
            return np.zeros(0, np.int64)
        st = self._gcn_v_stage(X, r)
        self.conf_, self.gcn_feat_ = st["conf"], st["feat"]
        order, floor = self._order(st["conf"]), r["min_link_sim"]
        if not r["use_gcn_feat"]:
            with self._timed("peaks"):
                labels = peaks_labels(
                    st["ids"], st["sims"], order, r["tau_0"], xr=st["xr"], floor=floor, floor_pick=r["floor_pick"], device=self.device,
                    dev=st["dev"],
                )
        else:
            sims, ids = self._stage_b_knn(st["feat"], r["k"])
            with self._timed("peaks"):
                labels = peaks_labels(
                    ids, sims, order, r["tau"], xr=st["xr"], floor=floor, floor_pick=r["floor_pick"], device=self.device,
                    dev=st["dev"],
                )
        return self._refine(labels, st, r)

    def _refine(self, labels: np.ndarray, st: dict[str, np.ndarray], r: dict[str, Any]) -> np.ndarray:
        """The default method's post-steps on ``labels`` (setting ``refine``), on the stage-A kNN
        lists re-scored with the plain cosine (already plain when the checkpoint reads raw
        features)."""
        if not r["refine"]:
            return labels
        return refine_learned(
            labels,
            st["ids"],
            st["xr"],
            embedder=self.embedder(),
            overrides=self.config.refine_overrides(self.embedder()),
            plain=self.feature_kind() == "raw",
            sims=st["sims"],
            timed=self._timed,
        )


# --------------------------------------------------------------------------------------------
# functional pieces (also used by training and tuning)
# --------------------------------------------------------------------------------------------
def gcn_v_forward(model: gc.GCNV, X: np.ndarray, adj, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Run GCN-V on the whole graph.

    Parameters
    ----------
    X : (N, D) float32 L2-normalised features.
    adj : (N, N) row-normalised adjacency, scipy sparse or a torch sparse tensor.

    Returns
    -------
    conf : (N,) float32 confidences; feat : (N, nhid) float32 gcn features (not normalised).
    """
    model = model.to(device).eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
        a = adj.to(device) if isinstance(adj, torch.Tensor) else gc.scipy_to_torch_sparse(adj, device)
        conf, feat = model(x, a)
        return conf.float().cpu().numpy(), feat.float().cpu().numpy()


def link_keep(peak: np.ndarray, peak_sim: np.ndarray, tau: float) -> np.ndarray:
    """Which face→peak links survive: the original compares distances, 1 − sim < 1 − tau
    (float64), which we reproduce exactly rather than ``sim > tau``."""
    return (peak >= 0) & ((1.0 - peak_sim.astype(np.float64)) < (1.0 - float(tau)))


def floor_keep(keep: np.ndarray, peak: np.ndarray, xr: np.ndarray | None, floor: float | None, dev: np.ndarray | None = None) -> np.ndarray:
    """``keep`` (N,) bool narrowed to the links i→peak[i] whose plain-descriptor cosine
    (rows of ``xr``, (N, D) L2-normalised; minus (dev[i] + dev[peak]) / 2 with the cohort
    offsets ``dev``, :func:`refine.learned_floor_dev`) is >= ``floor``; unchanged when ``floor`` is None."""
    if floor is None or xr is None:
        return keep
    keep = keep.copy()
    src = np.nonzero(keep)[0]
    keep[src] = floor_cosine(xr, src, peak[src], dev) >= floor
    return keep


def floor_mask(ids: np.ndarray, xr: np.ndarray | None, floor: float | None, device: str = "cpu", dev: np.ndarray | None = None) -> np.ndarray | None:
    """(N, k) bool: which kNN list entries ``ids`` have a plain-descriptor cosine (rows of
    ``xr``, L2-normalised; cohort-normalised with ``dev`` as in :func:`floor_keep`) >= ``floor``
    with their row's face; None when there is no floor.
    N·k cosines: ~6 s for 100k x 160 on 2 CPU cores, so on CUDA they are computed there."""
    if floor is None or xr is None:
        return None
    if device.startswith("cuda"):
        return _floor_mask_torch(ids, xr, floor, device, dev=dev)
    n, k = ids.shape
    valid = ids >= 0
    cos = floor_cosine(xr, np.repeat(np.arange(n), k), np.where(valid, ids, 0).reshape(-1), dev).reshape(n, k)
    return valid & (cos >= floor)


def _floor_mask_torch(ids: np.ndarray, xr: np.ndarray, floor: float, device: str, rows: int = 8192, dev: np.ndarray | None = None) -> np.ndarray:
    """``floor_mask`` with torch on ``device``, in blocks of ``rows`` faces (memory rows·k·D)."""
    n, k = ids.shape
    x = torch.from_numpy(np.ascontiguousarray(xr, dtype=np.float32)).to(device)
    d = None if dev is None else torch.from_numpy(np.ascontiguousarray(dev, dtype=np.float32)).to(device)
    out = np.empty((n, k), bool)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        ii = torch.from_numpy(ids[s:e]).to(device)
        cos = torch.bmm(x[ii.clamp(min=0)], x[s:e].unsqueeze(2)).squeeze(2)
        if d is not None:
            cos = cos - 0.5 * (d[s:e].unsqueeze(1) + d[ii.clamp(min=0)])
        out[s:e] = ((ii >= 0) & (cos >= floor)).cpu().numpy()
    return out


def peaks_labels(
    ids: np.ndarray,
    sims: np.ndarray,
    conf: np.ndarray,
    tau: float,
    *,
    xr: np.ndarray | None = None,
    floor: float | None = None,
    floor_pick: bool = False,
    device: str = "cpu",
    dev: np.ndarray | None = None,
) -> np.ndarray:
    """Nearest-higher-confidence peaks on a kNN list, cut at ``tau`` (and at the similarity
    ``floor`` of the plain descriptors ``xr`` when given, cohort-normalised with ``dev``),
    connected components.

    ``floor_pick``: a face's peak is its nearest higher-confidence neighbour *among those that
    pass the floor* (none: a root); without it the nearest one, whose link the floor may cut.

    ids, sims : (N, k) kNN (descending similarity); conf : (N,). Returns (N,) int64 labels."""
    peak, psim = nearest_higher(ids, sims, conf, floor_mask(ids, xr, floor, device, dev=dev) if floor_pick else None)
    keep = floor_keep(link_keep(peak, psim, tau), peak, xr, floor, dev)
    src = np.nonzero(keep)[0]
    return components(len(conf), src, peak[src])
