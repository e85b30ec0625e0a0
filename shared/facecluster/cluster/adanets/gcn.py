"""Ada-NETS adaptive adjacency and its two-layer GCN (``tool/gene_adj_adanets.py``, ``GCN/net/gat.py``).

The GCN is two DGL ``SAGEConv(aggregator_type="gcn")`` layers re-written with torch sparse
ops (no dgl). The semantics pinned from DGL 0.5.3 (notes §2.6):

    h̄_i = (Σ_{j ∈ N_in(i)} h_j + h_i) / (deg_in(i) + 1),   out_i = ReLU(W h̄_i + b)

and the adjacency already holds self-loops (+I), so node i is counted twice and deg_in
includes its loop. Only the sparsity pattern of the adjacency is used (edge weights and the
row normalisation are ignored by SAGEConv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...graph import build_adjacency, build_adjacency_torch

__all__ = ["adaptive_adjacency", "AdaGCN", "SparseGraph", "load_gcn_checkpoint", "cluster_loss"]


def adaptive_adjacency(ids_ss: np.ndarray, d_ss: np.ndarray, k_hat: np.ndarray, th_sim: float = 0.0, device: str | None = None):
    """Keep each node's first k̂_i structure-space neighbours (self at column 0 counts toward
    k̂_i), with weight s_ss = 1 − d_ss ≥ th_sim; max-symmetrise, +I, row-normalise.

    ids_ss, d_ss : (N, L); k_hat : (N,) ints. Returns (N, N) float32 scipy CSR, or, with a
    ``device``, the same matrix built there as a torch sparse CSR tensor
    (``graph.build_adjacency_torch``: scipy took ~10 s per 100k faces on one core).
    """
    n, L = ids_ss.shape
    sims = 1.0 - np.asarray(d_ss, np.float32)
    cols = np.arange(L)[None, :]
    # masked-out entries get a similarity below any threshold so build_adjacency drops them
    sims = np.where(cols < np.asarray(k_hat).reshape(-1, 1), sims, -np.inf).astype(np.float32)
    if device is not None:
        return build_adjacency_torch(ids_ss, sims, th_sim, device)
    return build_adjacency(ids_ss, sims, th_sim)


class SparseGraph:
    """The aggregation operator of the `gcn` SAGE aggregator as one torch sparse matrix.

    ``G = D̃⁻¹ (A_bin + I)`` with A_bin the 0/1 pattern of the adjacency (self-loops included)
    and D̃ = deg_in + 1, so ``G @ h`` is exactly h̄ above (self counted twice).
    """

    def __init__(self, adj: sp.spmatrix, device: str = "cpu"):
        a = sp.csr_matrix(adj)
        n = a.shape[0]
        # copies: sum_duplicates sorts indices in place and must not reorder the caller's matrix
        pat = sp.csr_matrix((np.ones(a.nnz, np.float32), a.indices.copy(), a.indptr.copy()), shape=a.shape)
        pat.sum_duplicates()
        pat.data[:] = 1.0
        # in-degree of node i = number of edges j→i = column count (pattern is symmetric anyway)
        deg_in = np.asarray(pat.sum(axis=0)).reshape(-1).astype(np.float32)
        # row i of the operator aggregates over in-neighbours j of i, i.e. column i of pat
        op = (pat.T.tocsr() + sp.eye(n, dtype=np.float32, format="csr")).tocsr()
        op = sp.diags(1.0 / (deg_in + 1.0)).dot(op).tocsr().astype(np.float32)
        op.sort_indices()
        self.n = n
        self.device = device
        coo = op.tocoo()
        # COO (not CSR): stable API, CPU and CUDA, and autograd through `op @ h` for training
        self.op = torch.sparse_coo_tensor(
            torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64)),
            torch.from_numpy(coo.data),
            size=(n, n),
            check_invariants=False,
        ).coalesce().to(device)

    @classmethod
    def from_torch(cls, adj: torch.Tensor) -> "SparseGraph":
        """The same operator from a torch sparse CSR adjacency (``adaptive_adjacency(...,
        device=...)``), built on its device. Its pattern is symmetric with every self-loop
        present (max-symmetrised + I), so in-degree = row count and the +I of ``__init__``
        doubles the diagonal: entries 1/(deg+1), diagonal 2/(deg+1) (the same float32 values)."""
        crow, col = adj.crow_indices(), adj.col_indices()
        n = adj.shape[0]
        cnt = crow[1:] - crow[:-1]
        row = torch.repeat_interleave(torch.arange(n, device=col.device), cnt)
        deg = cnt.to(torch.float32)
        val = torch.where(row == col, 2.0, 1.0).to(torch.float32) / (deg[row] + 1.0)
        g = cls.__new__(cls)
        g.n, g.device = n, col.device
        g.op = torch.sparse_coo_tensor(torch.stack([row, col]), val, size=(n, n), check_invariants=False).coalesce()
        return g

    def __matmul__(self, h: torch.Tensor) -> torch.Tensor:
        return self.op @ h


class SAGEGCNConv(nn.Module):
    """DGL SAGEConv('gcn') with parameter names of DGL 0.5 (``fc_neigh.weight``/``fc_neigh.bias``)."""

    def __init__(self, in_feats: int, out_feats: int):
        super().__init__()
        self.fc_neigh = nn.Linear(in_feats, out_feats, bias=True)
        # DGL's SAGEConv init (xavier, ReLU gain): PyTorch's default leaves W·h̄ tiny next to the
        # bias on unit-norm inputs, so every node starts with the same output (collapse)
        nn.init.xavier_uniform_(self.fc_neigh.weight, gain=nn.init.calculate_gain("relu"))
        nn.init.zeros_(self.fc_neigh.bias)

    def forward(self, g: SparseGraph, h: torch.Tensor) -> torch.Tensor:
        # aggregate in the smaller dimension first (DGL ≥ 2 does the same; mathematically equal)
        if self.fc_neigh.in_features > self.fc_neigh.out_features:
            return F.relu(g @ F.linear(h, self.fc_neigh.weight) + self.fc_neigh.bias)
        return F.relu(self.fc_neigh(g @ h))


class AdaGCN(nn.Module):
    """sage1 → L2 → sage2 → fc (Linear + PReLU) → L2: the Ada-NETS ``GCN_V``.

    Parameters
    ----------
    feature_dim : D (paper 256; dlib 128). nhid : width of every layer (paper 512).
    """

    def __init__(self, feature_dim: int = 256, nhid: int = 512):
        super().__init__()
        self.feature_dim = feature_dim
        self.nhid = nhid
        self.sage1 = SAGEGCNConv(feature_dim, nhid)
        self.sage2 = SAGEGCNConv(nhid, nhid)
        self.fc = nn.Sequential(nn.Linear(nhid, nhid), nn.PReLU(nhid))

    def forward(self, g: SparseGraph, x: torch.Tensor) -> torch.Tensor:
        """x : (N, D) L2-normalised features → (N, nhid) L2-normalised "fcfeat"."""
        h = F.normalize(self.sage1(g, x), dim=1)
        h = self.sage2(g, h)
        return F.normalize(self.fc(h), dim=1)


def _convert_gcn_state(sd: dict) -> dict:
    """Accept DGL 0.5 (``sageN.fc_neigh.bias``) and DGL ≥ 2 (``sageN.bias``) layouts; drop the
    loss parameter ``bclloss.beta_pos`` (unused at inference)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[7:]
        if k.startswith("bclloss."):
            continue
        parts = k.split(".")
        if len(parts) == 2 and parts[0] in ("sage1", "sage2") and parts[1] == "bias":
            k = f"{parts[0]}.fc_neigh.bias"
        out[k] = v
    return out


def load_gcn_checkpoint(
    path: str | Path, feature_dim: int | None = None, map_location="cpu", *, trust: bool = False
) -> tuple[AdaGCN, dict]:
    """Load an Ada-NETS GCN checkpoint; dimensions come from ``sage1.fc_neigh.weight`` (nhid, D).

    Returns (model in eval mode, metadata dict stored with the weights, may be empty).
    ``trust`` as in :func:`load_and_checkpoint`."""
    from ..gcn_common import flush_denormals_, torch_load
    from .and_model import _check_keys, _state_dict

    ck = torch_load(Path(path), trust, map_location=map_location)
    sd = _convert_gcn_state(_state_dict(ck))
    if "sage1.fc_neigh.weight" not in sd:
        raise ValueError(f"GCN checkpoint {path}: not an Ada-NETS GCN (no sage1.fc_neigh.weight); keys: {sorted(sd)[:8]}")
    nhid, d = (int(s) for s in sd["sage1.fc_neigh.weight"].shape)
    if feature_dim is not None and feature_dim != d:
        raise ValueError(f"GCN checkpoint {path} expects {d}-d features, got {feature_dim}-d")
    model = AdaGCN(d, nhid)
    _check_keys(sd, model, path, "GCN")
    model.load_state_dict(sd, strict=True)
    flush_denormals_(model)  # subnormal weights: slow on CPUs, nothing in the result
    model.eval()
    meta = ck.get("meta", {}) if isinstance(ck, dict) else {}
    return model, dict(meta)


def cluster_loss(x: torch.Tensor, labels: torch.Tensor, pmargin: float = 0.9, margin: float = 1.0,
                 pweight: float = 1.0, nweight: float = 1.0) -> torch.Tensor:
    """The paper's "allmax" ClusterLoss on in-batch cosine similarities.

    mean over all positive pairs (i, j) (diagonal included, as in the original) of
    ReLU(pmargin − s_ij), plus ReLU(margin + max over negative pairs of s_ij).
    x : (B, H) L2-normalised; labels : (B,).
    """
    s = x @ x.T
    same = labels[:, None] == labels[None, :]
    pos = F.relu(pmargin - s[same]).mean()
    neg_mask = ~same
    if neg_mask.any():
        neg = F.relu(margin + s[neg_mask].max())
    else:
        neg = s.new_zeros(())
    return pweight * pos + nweight * neg
