"""GCN-V + GCN-E (learn-to-cluster, CVPR 2020), clean-room inference, batched.

After GCN-V (``gcn_v.py``) gives a confidence and a 512-d feature per face (notes §1.6):

1. exact kNN with ``k_e`` (160) on the L2-normalised GCN-V features;
2. the ``ignore_ratio`` (80 %) least confident faces, and faces with a single higher-confidence
   neighbour, link to their nearest higher-confidence neighbour (as GCN-V does);
3. every other face ``i`` with candidates C = its kNN neighbours of strictly higher confidence
   (distance order) gets a subgraph: node features f_j − f_i, adjacency = the global
   adjacency restricted to C and row-normalised again; GCN-E (4 GraphConvs + MLP, log-softmax)
   scores each candidate and ``i`` links to the argmax of P(connect);
4. links with cosine (GCN-V feature space) > tau are kept; connected components are clusters.

Speed: the original ran one subgraph per forward pass and built them in a Python loop. Here
subgraphs are grouped by size and run many per pass as zero-padded dense batches; the
sub-adjacency is built directly on the device from the kNN lists: restricting the globally
row-normalised adjacency to C and row-normalising again equals row-normalising the
un-normalised (max-symmetrised + I) affinity restricted to C — the global row scale cancels —
so the global N×N matrix is never needed for GCN-E.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from pydantic import Field

from ..graph import components
from ..knn import l2_normalize
from ..progress import bar
from . import gcn_common as gc
from .base import device_kind
from .gcn_v import GCNVClusterer, GCNVConfig, floor_keep, floor_mask, link_keep


#: GCN-E's link threshold (tau, on GCN-V's own output features) for the shipped weights when the
#: similarity floor and the refinement run (``refine.refine_on``); the shipped settings' ``tau_e``
#: (dlib 0.75, the original algorithm's pick) applies otherwise. tau judges the network's own
#: outputs, and the shipped networks were trained on every training identity, so it was chosen
#: with networks of the same recipe trained on two thirds of the training identities and scored on
#: the third they never saw (tau 0.75 / 0.7 / 0.65 / 0.6 / 0.5: mean 0.846 / 0.854 / 0.861 /
#: 0.861 / 0.861, worst 0.393 / 0.403 / 0.455 / 0.455 / 0.455, no faces in mixed clusters at any;
#: ties go to the strictest): docs/benchmarks/gcn_ve.md §11.
REFINED_TAU_E_BY_EMBEDDER: dict[str, float] = {"dlib": 0.65}


#: padded candidate nodes per GCN-E pass when ``batch_nodes`` is None, by device type. CPU: 2048
#: keeps each batch's activations under glibc's 32 MB mmap threshold, so their memory is reused
#: between passes instead of page-faulted in anew (100k synthetic faces: GCN-E 40.1 -> 28.6 s,
#: system time 23 -> 4.5 s, identical partition; docs/benchmarks.md §2). CUDA: large, small batches
#: left an H200 idle between launches at 1M faces.
BATCH_NODES = {"cpu": 2048, "cuda": 262144}


class GCNVEConfig(GCNVConfig):
    doubt_margin: Optional[float] = Field(
        None,
        ge=0.0,
        description="As for every method (cluster/base.py): None, the embedder's value (dlib 3.95; Extended Yale B: "
        "faces in mixed clusters 247 -> 21), 0 off.",
    )
    checkpoint_e: Optional[str] = Field(
        None,
        description="GCN-E weights (.pth; e.g. the released pretrained_gcn_e_ms1m.pth). Must be "
        "given together with checkpoint_v (GCN-E is trained on that GCN-V's features); None with "
        "no checkpoint_v: the weights shipped for the features' embedder (weights/gcn_e_dlib.pth, "
        "weights/gcn_e_mbf.pth).",
    )
    k_e: Optional[int] = Field(
        None, ge=1, description="Neighbours per face on the GCN-V features for GCN-E (counting "
        "itself; capped at N). None: 160 (paper) with checkpoints, the shipped value without."
    )
    ignore_ratio: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="Fraction of faces, the least confident, that skip GCN-E "
        "and link to the nearest higher-confidence neighbour (paper rho = 1 - ignore_ratio). "
        "None: 0.8 (paper) with checkpoints, the shipped value without."
    )
    batch_nodes: Optional[int] = Field(
        None, ge=1, description="Upper bound on padded candidate nodes per GCN-E forward pass "
        "(memory knob; results do not depend on it beyond float rounding). None: 2048 on CPU (larger "
        "batches' activations exceed malloc's 32 MB mmap threshold and are page-faulted in afresh each "
        "pass: GCN-E on 100k faces 40 s at 32768, 29 s at 2048, same partition), 262144 on CUDA (small batches "
        "left an H200 idle between launches at 1M faces)."
    )


class GCNVEClusterer(GCNVClusterer):
    name = "gcn-ve"
    summary = "GCN-V + GCN-E (CVPR 2020): confidence + learned connectivity; shipped weights for dlib and mbf."
    Config = GCNVEConfig

    def _uses_shipped(self) -> bool:
        c = self.config
        if (c.checkpoint_v is None) != (c.checkpoint_e is None):
            raise ValueError(
                "gcn-ve needs both checkpoint_v and checkpoint_e (GCN-E is trained on the features of "
                "its own GCN-V), or neither (shipped weights)"
            )
        return c.checkpoint_v is None

    def _path_e(self):
        p = self.config.checkpoint_e
        if p is None:
            shipped = gc.shipped_files(self.embedder())[1]
            if not shipped.is_file():
                raise gc.CheckpointError(f"no checkpoint_e given and the shipped GCN-E weights are missing ({shipped})")
            return shipped
        return p

    def resolved(self) -> dict[str, Any]:
        r = super().resolved()
        r["checkpoint_e"] = str(self._path_e())
        if self._uses_shipped() and self.config.tau is None:
            # the shipped settings may hold a GCN-E-specific threshold next to stage B's; with the
            # floor and the refinement, the one chosen on people the networks never saw
            emb = self.embedder()
            refined = REFINED_TAU_E_BY_EMBEDDER.get(emb or "") if r["refine"] else None
            r["tau"] = refined if refined is not None else gc.shipped_settings(emb).get("tau_e", r["tau"])
        return r

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        X = self._check_input(X)
        self.timings_ = {}
        r = self.resolved()
        n = X.shape[0]
        with self._timed("load_gcn_e"):
            model_e = gc.load_gcn_e(self._path_e(), trust=self.config.trust_checkpoint)
        if n == 0:
            self._path_v()
            return np.zeros(0, np.int64)
        st = self._gcn_v_stage(X, r)
        conf, feat = st["conf"], st["feat"]
        if feat.shape[1] != model_e.feature_dim:
            raise ValueError(
                f"GCN-E expects {model_e.feature_dim}-d GCN-V features, this GCN-V gives {feat.shape[1]}-d: "
                "checkpoint_v and checkpoint_e do not belong together"
            )
        self.conf_, self.gcn_feat_ = conf, feat
        feat_n = l2_normalize(feat)
        sims, ids = self._stage_b_knn(feat_n, r["k_e"])
        with self._timed("gcn_e"):
            peak, psim = gcn_e_peaks(
                model_e,
                feat_n,
                self._order(conf),
                ids,
                sims,
                allowed=floor_mask(ids, st["xr"], r["min_link_sim"], self.device, dev=st["dev"]) if r["floor_pick"] else None,
                ignore_ratio=r["ignore_ratio"],
                th_sim=self.config.th_sim,
                device=self.device,
                batch_nodes=self.config.batch_nodes or BATCH_NODES[device_kind(self.device)],
                progress=self.config.progress,
            )
        with self._timed("components"):
            by_tau = link_keep(peak, psim, r["tau"])
            keep = floor_keep(by_tau, peak, st["xr"], r["min_link_sim"], st["dev"])
            # each face's chosen peak (-1: root) and which cut its link passed: what
            # bench/gcn_ve_links.py audits (the faces this call saw, before the refinement)
            self.peak_, self.link_tau_, self.link_kept_ = peak, by_tau, keep
            src = np.nonzero(keep)[0]
            labels = components(n, src, peak[src])
        return self._refine(labels, st, r)


# --------------------------------------------------------------------------------------------
def edge_candidates(
    ids: np.ndarray, conf: np.ndarray, ignore_ratio: float, allowed: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Which faces need GCN-E and the nearest-higher fallback for all others.

    Returns dict with ``higher`` (N, k) bool (strictly higher-confidence neighbours, self
    excluded), ``count`` (N,), ``first`` (N,) column of the nearest candidate, ``has`` (N,)
    whether there is one, ``use_e`` (N,) bool (not ignored and at least two candidates).
    ``allowed`` (N, k) bool, optional: only these entries may be *chosen* (``first``, ``has``);
    ``higher`` and ``count`` (GCN-E's subgraph) still hold every candidate."""
    n = len(conf)
    rows = np.arange(n)
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    higher = valid & (conf[safe] > conf[:, None]) & (safe != rows[:, None])
    count = higher.sum(axis=1)
    pick = higher if allowed is None else higher & allowed
    first = pick.argmax(axis=1) if pick.shape[1] else np.zeros(n, np.int64)
    # the original: num = int(N * ignore_ratio) lowest confidences (argpartition; ratio 1 → all);
    # ties are broken here by index (stable sort) so the set is deterministic
    num = n if ignore_ratio >= 1 else int(n * ignore_ratio)
    ignored = np.zeros(n, bool)
    ignored[np.argsort(conf, kind="stable")[:num]] = True
    use_e = (~ignored) & (count >= 2)
    return {"higher": higher, "count": count, "first": first, "has": pick.any(axis=1), "use_e": use_e}


def sub_adjacency(
    cand: torch.Tensor, mask: torch.Tensor, ids_sorted: torch.Tensor, sims_sorted: torch.Tensor, edge_sorted: torch.Tensor
) -> torch.Tensor:
    """Dense row-normalised adjacency of each candidate set, built from the kNN lists.

    Parameters
    ----------
    cand : (B, n) int64 candidate ids (padding arbitrary, masked).
    mask : (B, n) bool real candidates.
    ids_sorted : (N, k) int64 kNN ids of every face, sorted ascending per row.
    sims_sorted : (N, k) float32 their similarities; edge_sorted : (N, k) bool usable edges
        (not self, sim >= th_sim).

    Returns
    -------
    (B, n, n) float32: rownorm(maxsym(A)[C, C] + I), zero on padding.
    """
    b, n = cand.shape
    k = ids_sorted.shape[1]
    flat = cand.reshape(-1)
    seq = ids_sorted[flat]  # (B*n, k)
    q = cand.unsqueeze(1).expand(b, n, n).reshape(b * n, n).contiguous()  # row r of subgraph b asks for all cand[b]
    pos = torch.searchsorted(seq, q).clamp_(max=k - 1)
    hit = (seq.gather(1, pos) == q) & edge_sorted[flat].gather(1, pos)
    w = torch.where(hit, sims_sorted[flat].gather(1, pos), torch.zeros((), dtype=sims_sorted.dtype, device=seq.device))
    w = w.view(b, n, n).clamp_(min=0)
    w = torch.maximum(w, w.transpose(1, 2))  # max-symmetrise (missing = 0, as in the sparse original)
    eye = torch.eye(n, dtype=w.dtype, device=w.device).expand(b, n, n)
    w = torch.where(eye.bool(), torch.ones((), dtype=w.dtype, device=w.device), w)  # self edges → +I
    m = (mask.unsqueeze(2) & mask.unsqueeze(1)).to(w.dtype)
    w = w * m
    d = w.sum(dim=2, keepdim=True)
    return w / torch.where(d > 0, d, torch.ones_like(d))


def gcn_e_peaks(
    model: gc.GCNE,
    feat: np.ndarray,
    conf: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    *,
    ignore_ratio: float = 0.8,
    th_sim: float = 0.0,
    device: str = "cpu",
    batch_nodes: int = BATCH_NODES["cpu"],
    progress: bool = False,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each face's peak (-1 for roots) and its similarity, GCN-E deciding where it applies.

    feat : (N, D) L2-normalised GCN-V features; conf : (N,) confidences (or their ranks: only
    their order matters); ids, sims : (N, k) kNN on feat; allowed : (N, k) bool, optional:
    only these entries may become a face's peak (GCN-E still sees every candidate in its
    subgraph; the choice is its most connected allowed one, else none).
    Returns peak (N,) int64, peak_sim (N,) float32."""
    n, k = ids.shape
    ec = edge_candidates(ids, conf, ignore_ratio, allowed)
    rows = np.arange(n)
    has = ec["has"]
    peak = np.where(has, ids[rows, ec["first"]], -1).astype(np.int64)
    psim = np.where(has, sims[rows, ec["first"]], -np.inf).astype(np.float32)
    todo = np.nonzero(ec["use_e"])[0]
    if len(todo) == 0:
        return peak, psim
    # candidates of each face in distance order, compacted to the left
    hi = ec["higher"][todo]
    order = np.argsort(~hi, axis=1, kind="stable")
    cnt = ec["count"][todo]
    width = int(cnt.max())
    cand_all = np.take_along_axis(ids[todo], order, 1)[:, :width]
    csim_all = np.take_along_axis(sims[todo], order, 1)[:, :width]
    ok_all = None if allowed is None else np.take_along_axis(allowed[todo], order, 1)[:, :width]
    # group subgraphs of similar size to keep padding small
    by_size = np.argsort(cnt, kind="stable")
    dev = torch.device(device)
    model = model.to(dev).eval()
    with torch.inference_mode():
        srt = np.argsort(ids, axis=1, kind="stable")
        ids_s = np.take_along_axis(ids, srt, 1)
        t_ids = torch.from_numpy(ids_s).to(dev)
        t_sims = torch.from_numpy(np.take_along_axis(sims, srt, 1).astype(np.float32)).to(dev)
        t_edge = torch.from_numpy((ids_s != rows[:, None]) & (np.take_along_axis(sims, srt, 1) >= th_sim) & (ids_s >= 0)).to(dev)
        t_feat = torch.from_numpy(np.ascontiguousarray(feat, dtype=np.float32)).to(dev)
        batches = []
        s = 0
        while s < len(by_size):
            # sizes ascend, so the last member of a batch sets its padded width
            e = s + 1
            while e < len(by_size) and (e - s + 1) * int(cnt[by_size[e]]) <= batch_nodes:
                e += 1
            batches.append(by_size[s:e])
            s = e
        with bar("GCN-E subgraphs", len(todo), enabled=progress) as pb:
            for sel in batches:
                w = int(cnt[sel].max())
                cand = torch.from_numpy(cand_all[sel, :w]).to(dev)
                mask = torch.from_numpy(np.arange(w)[None, :] < cnt[sel][:, None]).to(dev)
                cand = torch.where(mask, cand, torch.zeros_like(cand))
                centre = torch.from_numpy(todo[sel]).to(dev)
                x = (t_feat[cand] - t_feat[centre].unsqueeze(1)) * mask.unsqueeze(2)
                adj = sub_adjacency(cand, mask, t_ids, t_sims, t_edge)
                logp = model(x, adj)[..., 1]
                if ok_all is not None:
                    mask = mask & torch.from_numpy(ok_all[sel, :w]).to(dev)
                logp = logp.masked_fill(~mask, float("-inf"))
                # first maximum (the nearest among exact ties; the original drew one at random)
                j = torch.argmax(logp, dim=1).cpu().numpy()
                rows_sel = todo[sel]
                peak[rows_sel] = cand_all[sel, j]
                psim[rows_sel] = csim_all[sel, j]
                if ok_all is not None:
                    none = ~mask.any(dim=1).cpu().numpy()
                    peak[rows_sel[none]] = -1
                    psim[rows_sel[none]] = -np.inf
                pb.advance(len(sel))
    return peak, psim
