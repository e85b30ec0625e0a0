"""AND: Ada-NETS' adaptive neighbour discovery (``AND/net/gcn_v.py``, no graph convolution inside).

A BiLSTM reads the ordered structure-space neighbour sequence of a face (self first) and a
small MLP regresses the fraction of that sequence that are the same person; k̂ = round(80·pred).

What the BiLSTM reads (``ANDModel.and_input``, stored in a checkpoint's ``meta['and_input']``):

* ``"features"`` — the neighbours' features, as the paper (and every original checkpoint).
* ``"gram"`` — row j is the cosines of neighbour j to every face of the sequence (the
  neighbourhood's Gram matrix, zero-padded to the feature width). Why: trained on the few
  thousand people available here, an AND that reads features learns who the training people
  are, not where a neighbourhood stops being one person: it collapses to k̂ ≈ 1-2 for people it
  never saw (mean k̂ 1.4 where the truth is 32). The Gram rows hold only the neighbourhood's
  shape, which is what k* depends on, and the counts carry over to people and crop styles never
  seen. The shipped dlib AND reads it since the thirty-eighth session, with its counts capped
  where the neighbours are not clearly alike (``AdaNetsConfig.k_hat_margin``: alone it gave people
  dlib confuses many times their count and joined them; docs/benchmarks/adanets.md §13, §15); the
  mbf AND still reads features and ``min_k_hat`` carries its adaptive graph.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..gcn_common import flush_denormals_, torch_load

__all__ = ["AND_INPUTS", "ANDModel", "huber_relative_loss", "huber_log_loss", "load_and_checkpoint", "predict_k"]

#: what AND's BiLSTM reads (see the module docstring)
AND_INPUTS = ("features", "gram")


class ANDModel(nn.Module):
    """BiLSTM + MLP regressor. Parameter names equal the original's, so its checkpoints load.

    Parameters
    ----------
    feature_dim : D, the face feature dimension (paper: 256; dlib: 128).
    nhid : MLP hidden width (paper: 512).
    dropout : dropout inside the MLP (training only).
    and_input : what the BiLSTM reads: "features" (the paper) or "gram" (each neighbour's
        cosines to the sequence, padded to ``feature_dim``; sequences of at most ``feature_dim``).
    """

    def __init__(self, feature_dim: int = 256, nhid: int = 512, dropout: float = 0.0, and_input: str = "features"):
        super().__init__()
        if and_input not in AND_INPUTS:
            raise ValueError(f"AND input must be one of {AND_INPUTS}, got {and_input!r}")
        self.feature_dim = feature_dim
        self.nhid = nhid
        self.and_input = and_input
        self.lstm = nn.LSTM(feature_dim, feature_dim, num_layers=1, batch_first=True, bidirectional=True)
        self.out_proj = nn.Linear(2 * feature_dim, feature_dim)
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, nhid),
            nn.PReLU(nhid),
            nn.Dropout(dropout),
            nn.Linear(nhid, feature_dim),
            nn.PReLU(feature_dim),
            nn.Dropout(dropout),
        )
        self.regressor = nn.Linear(feature_dim, 1)

    def tokens(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, D) neighbour features → what the BiLSTM reads, (B, L, D)."""
        if self.and_input == "features":
            return seq
        L = seq.shape[1]
        if L > self.feature_dim:
            raise ValueError(f"AND input 'gram' reads at most {self.feature_dim} neighbours, got {L}")
        return F.pad(torch.bmm(seq, seq.transpose(1, 2)), (0, self.feature_dim - L))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq : (B, L, D) neighbour features, self first → (B,) predicted fraction k̂/L_max."""
        seq = self.tokens(seq)
        out, _ = self.lstm(seq)
        out = (self.out_proj(out) + seq) / math.sqrt(2.0)
        # normalise tokens before averaging so that no neighbour dominates by norm
        out = F.normalize(out, dim=-1).mean(dim=1)
        u = F.normalize(out, dim=-1)
        z = (u + self.mlp(u)) / math.sqrt(2.0)
        return self.regressor(z).view(-1)


def huber_relative_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Huber loss on the relative error pred/target − 1 (the original ``huberloss``)."""
    rate = pred / target - 1.0
    a = rate.abs()
    return torch.where(a <= delta, 0.5 * rate * rate, (a - 0.5 * delta) * delta).mean()


def huber_log_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0, floor: float = 1.0 / 160) -> torch.Tensor:
    """Huber loss on log(pred / target): a relative error that is symmetric between over- and
    under-prediction (the paper's pred/target − 1 punishes predicting 40 for k* = 1 forty times
    more than predicting 1 for k* = 40, which drives a model trained on many one-photo people to
    k̂ = 1 everywhere). ``pred`` is floored at ``floor`` (k̂ = ½) to keep the log finite."""
    rate = torch.log(torch.clamp(pred, min=floor)) - torch.log(target)
    a = rate.abs()
    return torch.where(a <= delta, 0.5 * rate * rate, (a - 0.5 * delta) * delta).mean()


def _state_dict(obj) -> dict:
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError("checkpoint is not a state dict nor {'state_dict': ...}")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _check_keys(sd: dict, model: nn.Module, path, what: str) -> None:
    want = model.state_dict()
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing or extra:
        raise ValueError(
            f"{what} checkpoint {path}: key mismatch; missing {missing[:6]}{'…' if len(missing) > 6 else ''}, "
            f"unexpected {extra[:6]}{'…' if len(extra) > 6 else ''}"
        )
    bad = [f"{k}: {tuple(sd[k].shape)} vs expected {tuple(v.shape)}" for k, v in want.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{what} checkpoint {path}: shape mismatch: " + "; ".join(bad[:4]))


def load_and_checkpoint(
    path: str | Path, feature_dim: int | None = None, map_location="cpu", *, trust: bool = False
) -> tuple[ANDModel, dict]:
    """Load an AND checkpoint (original ``{'state_dict', 'step'}`` layout or a bare state dict).

    Dimensions are read from the weights (``lstm.weight_ih_l0`` is (4D, D), ``mlp.0.weight`` is
    (nhid, D)); ``feature_dim``, when given, must match; what the BiLSTM reads from
    ``meta['and_input']`` (absent: "features", as every original checkpoint). Returns (model in
    eval mode, extra metadata stored in the checkpoint, e.g. ``scale_max``). Read with ``weights_only=True``;
    ``trust=True`` allows full unpickling for files that need it (see ``gcn_common.torch_load``).
    """
    ck = torch_load(Path(path), trust, map_location=map_location)
    sd = _state_dict(ck)
    if "lstm.weight_ih_l0" not in sd or "mlp.0.weight" not in sd:
        raise ValueError(f"AND checkpoint {path}: not an Ada-NETS AND model (no lstm.weight_ih_l0 / mlp.0.weight); keys: {sorted(sd)[:8]}")
    d = int(sd["lstm.weight_ih_l0"].shape[1])
    nhid = int(sd["mlp.0.weight"].shape[0])
    if feature_dim is not None and feature_dim != d:
        raise ValueError(f"AND checkpoint {path} expects {d}-d features, got {feature_dim}-d")
    meta = dict((ck.get("meta") if isinstance(ck, dict) else None) or {})
    kind = meta.get("and_input", "features")
    if kind not in AND_INPUTS:
        raise ValueError(f"AND checkpoint {path}: meta['and_input'] must be one of {AND_INPUTS}, got {kind!r}")
    model = ANDModel(d, nhid, and_input=kind)
    _check_keys(sd, model, path, "AND")
    model.load_state_dict(sd, strict=True)
    flush_denormals_(model)  # subnormal weights: slow on CPUs, nothing in the result
    model.eval()
    return model, meta


@torch.inference_mode()
def predict_k(
    model: ANDModel,
    feats: np.ndarray,
    ids_ss: np.ndarray,
    scale_max: int = 80,
    *,
    device: str = "cpu",
    batch_size: int = 1024,
    progress=None,
) -> np.ndarray:
    """k̂ for every node: clip(round(pred · scale_max), 1, L).

    feats : (N, D) L2-normalised features; ids_ss : (N, L) structure-space ids, self first.
    Returns (N,) int64. ``progress``: optional callable(advance) for a progress bar.
    """
    n, L = ids_ss.shape
    if n == 0:
        return np.zeros(0, np.int64)
    model = model.to(device)
    ft = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(device)
    idt = torch.from_numpy(np.ascontiguousarray(ids_ss, dtype=np.int64)).to(device)
    out = np.empty(n, np.float32)
    for s in range(0, n, batch_size):
        seq = ft[idt[s : s + batch_size]]
        out[s : s + batch_size] = model(seq).float().cpu().numpy()
        if progress is not None:
            progress(min(batch_size, n - s))
    # round half to even like np.round in the original's post-processing
    k = np.round(out.astype(np.float64) * scale_max)
    return np.clip(k, 1, L).astype(np.int64)
