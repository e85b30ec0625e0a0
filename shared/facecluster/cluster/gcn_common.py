"""Building blocks shared by GCN-V and GCN-E (learn-to-cluster, CVPR 2020), clean-room.

* :class:`GraphConv`: ``h = ReLU([X ‖ ÂX] · W + b)`` with ``W`` stored as (2·in, out), the
  layout of the released checkpoints (used as ``X @ W``; never transposed).
* :class:`GCNV` / :class:`GCNE`: the two networks, parameter names identical to the released
  ``pretrained_gcn_{v,e}_ms1m.pth`` state dicts (notes §1.4, §1.6).
* :func:`load_checkpoint`: reads mmcv containers (``{'state_dict', 'meta', 'optimizer'}``) or
  bare state dicts, strips a ``module.`` prefix, and reports expected vs found keys and shapes
  when a file does not fit.
* Shipped weights for our default embedder live in ``facecluster/weights`` (found relative to
  this file, so an installed package works).
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used for the requested network."""


#: The shipped GCN-V / GCN-E weights and their settings, one set per embedder they were trained
#: for (files in ``facecluster/weights``, model cards beside them). ``gcn-v`` / ``gcn-ve`` without
#: checkpoints take the set of the features' embedder (``Clusterer.embedder``; dlib when unknown):
#: dlib's were trained on calibrated descriptors with the original recipe (``gcn_ve_dlib.md``),
#: mbf's on plain descriptors of every training crop style (``bench/train_shift.py``,
#: ``gcn_ve_mbf.md``).
SHIPPED_GCN_VE: dict[str, tuple[str, str, str]] = {
    "dlib": ("gcn_v_dlib.pth", "gcn_e_dlib.pth", "gcn_ve_dlib.json"),
    "mbf": ("gcn_v_mbf.pth", "gcn_e_mbf.pth", "gcn_ve_mbf.json"),
}
#: the embedder assumed when a caller gives none (the pipeline always passes the features' own)
DEFAULT_EMBEDDER = "dlib"


def shipped_set(
    registry: dict[str, tuple[str, ...]], embedder: str | None, what: str, hint: str, error: type[Exception]
) -> tuple[Path, ...]:
    """The files ``registry`` (embedder → file names in ``WEIGHTS_DIR``) ships for ``embedder``
    (``DEFAULT_EMBEDDER`` when None); ``error`` naming the embedders that have ``what`` weights
    when it has none, with ``hint`` on what to pass instead. Shared by GCN-V/E and Ada-NETS."""
    name = embedder or DEFAULT_EMBEDDER
    if name not in registry:
        raise error(
            f"no shipped {what} weights for the {name!r} embedder (shipped for: "
            f"{', '.join(registry)}); {hint}"
        )
    return tuple(WEIGHTS_DIR / f for f in registry[name])


def shipped_files(embedder: str | None) -> tuple[Path, Path, Path]:
    """(GCN-V, GCN-E, settings JSON) shipped for ``embedder``; :class:`CheckpointError` names the
    embedders that have weights when it has none."""
    return shipped_set(  # type: ignore[return-value]
        SHIPPED_GCN_VE, embedder, "GCN-V/GCN-E",
        "pass checkpoint_v (and checkpoint_e) trained on its features (`facecluster train gcn-v` / "
        "`gcn-e`, or bench/train_shift.py --embedder)", CheckpointError,
    )


#: the dlib set (the training CLI's default output paths)
SHIPPED_V, SHIPPED_E, SHIPPED_SETTINGS = shipped_files("dlib")


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------
class GraphConv(nn.Module):
    """Mean-aggregation graph convolution: ``ReLU(cat(X, ÂX) @ W + b)``.

    ``weight`` is (2·in_dim, out_dim), as in the original checkpoints. ``adj`` is either a 2-D
    torch sparse/dense (N, N) matrix (whole graph) or a dense batch (B, n, n) with ``x`` (B, n, in).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.in_dim, self.out_dim, self.dropout = in_dim, out_dim, dropout
        self.weight = nn.Parameter(torch.empty(2 * in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"GraphConv expects {self.in_dim}-d input, got {x.shape[-1]}-d")
        if x.dim() == 2:
            agg = torch.sparse.mm(adj, x) if adj.is_sparse or adj.layout != torch.strided else adj @ x
        elif x.dim() == 3:
            agg = torch.bmm(adj, x)
        else:
            raise ValueError("GraphConv input must be (N, D) or (B, n, D)")
        # cat·W split as X·W_top + ÂX·W_bottom: same maths, no (N, 2D) temporary
        w = self.weight
        out = F.relu(x @ w[: self.in_dim] + agg @ w[self.in_dim :] + self.bias)
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, training=self.training)
        return out


class GCNV(nn.Module):
    """GCN-V: one GraphConv(feature_dim → nhid) + Linear/PReLU/Linear(→ 1) confidence head.

    ``forward(x (N, D), adj (N, N) sparse) -> (conf (N,), gcn_feat (N, nhid))``; the confidence
    is real-valued (no sigmoid)."""

    def __init__(self, feature_dim: int = 256, nhid: int = 512, dropout: float = 0.0):
        super().__init__()
        self.feature_dim, self.nhid = feature_dim, nhid
        self.conv1 = GraphConv(feature_dim, nhid, dropout)
        self.classifier = nn.Sequential(nn.Linear(nhid, nhid), nn.PReLU(nhid), nn.Linear(nhid, 1))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv1(x, adj)
        return self.classifier(h).view(-1), h


class GCNE(nn.Module):
    """GCN-E: GraphConv 512→512→512→256→256 + Linear/PReLU/Linear(→ 2) + log_softmax.

    ``forward(x (B, n, D), adj (B, n, n)) -> (B, n, 2)`` log-probabilities; column 1 is
    "connect to the centre node"."""

    def __init__(self, feature_dim: int = 512, nhid: int = 512, nclass: int = 2, dropout: float = 0.0):
        super().__init__()
        half = nhid // 2
        self.feature_dim, self.nhid = feature_dim, nhid
        self.conv1 = GraphConv(feature_dim, nhid, dropout)
        self.conv2 = GraphConv(nhid, nhid, dropout)
        self.conv3 = GraphConv(nhid, half, dropout)
        self.conv4 = GraphConv(half, half, dropout)
        self.classifier = nn.Sequential(nn.Linear(half, half), nn.PReLU(half), nn.Linear(half, nclass))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x, adj)
        # PReLU treats dim 1 as channels: flatten the batch as the original did (x.view(-1, D))
        out = self.classifier(x.reshape(-1, x.shape[-1]))
        return F.log_softmax(out, dim=-1).view(*x.shape[:-1], -1)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def torch_load(path: Path, trust: bool, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only when ``trust`` is set."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses arbitrary classes (e.g. numpy scalars or custom objects in an
        # mmcv `meta`). Only load fully when the user says the file is trusted.
        if not trust:
            raise CheckpointError(
                f"{path}: cannot be read with torch.load(weights_only=True) ({str(e).splitlines()[0]}). "
                "If you trust this file, set trust_checkpoint=true to load it with weights_only=False "
                "(this runs pickle code from the file)."
            ) from e
        return torch.load(path, map_location=map_location, weights_only=False)


def read_state_dict(path: str | Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a learn-to-cluster / mmcv checkpoint and return its state dict.

    Accepts ``{'state_dict': sd, 'meta': ..., 'optimizer': ...}`` (mmcv ``save_checkpoint``),
    ``{'model': sd}`` or a bare ``sd``; strips a leading ``module.`` (DataParallel) from keys.
    Plain mmcv metadata (str / dict / list / numbers) loads with ``weights_only=True``; anything
    needing arbitrary unpickling requires ``trust=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = torch_load(path, trust)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict) and not any(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        sd = obj["model"]
    elif isinstance(obj, dict):
        sd = obj
    else:
        raise CheckpointError(f"{path}: expected a dict (state_dict or mmcv container), found {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue  # stray metadata in a bare dict
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def load_into(model: nn.Module, path: str | Path, *, trust: bool = False, what: str = "model") -> nn.Module:
    """Load ``path`` into ``model`` strictly; raise :class:`CheckpointError` listing expected vs
    found keys and shapes when it does not fit."""
    sd = read_state_dict(path, trust=trust)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or extra or wrong:
        lines = [f"{path}: does not fit {what}."]
        if missing:
            lines.append("  missing keys: " + ", ".join(f"{k} {expected[k]}" for k in missing))
        if extra:
            lines.append("  unexpected keys: " + ", ".join(f"{k} {found[k]}" for k in extra))
        if wrong:
            lines.append("  wrong shapes: " + ", ".join(f"{k} expected {expected[k]} found {found[k]}" for k in wrong))
        lines.append("  expected: " + ", ".join(f"{k} {v}" for k, v in expected.items()))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return flush_denormals_(model)


def flush_denormals_(model: nn.Module) -> nn.Module:
    """Set the model's subnormal float32 weights (0 < |w| < 1.18e-38) to zero, in place.

    Trained checkpoints can hold such values, weights that training drove towards zero (17 % of
    the shipped dlib GCN-E's weights), and x86 CPUs take a slow microcode path for every multiply
    that touches one: GCN-E's forward on 200 subgraphs of 160 faces took 20 s instead of 0.65 s
    (docs/benchmarks.md §9, "Twenty-second session"). They contribute under 1e-38 to sums of order 1, which float32
    cannot represent, so the outputs are the same (bit-identical on that batch). Applied by every
    checkpoint loader (GCN-V, GCN-E, Ada-NETS's AND and GCN), shipped or user-supplied."""
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dtype == torch.float32:
                t.masked_fill_(t.abs() < tiny, 0.0)
    return model


def read_meta(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """The ``meta`` dict stored next to a checkpoint's weights ({} when there is none)."""
    obj = torch_load(Path(path), trust)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def checkpoint_features(meta: dict[str, Any]) -> str:
    """Which features a checkpoint expects: ``"raw"`` (plain L2-normalised descriptors) or
    ``"calibrated"`` (minus the embedder's shipped mean, ``calibration.prepare_features``).

    Read from ``meta["features"]``; checkpoints written by facecluster before that key existed
    (``meta["facecluster"]`` for GCN-V/E, ``meta["train"]`` for Ada-NETS) were all trained on
    calibrated features; anything else (learn-to-cluster / Ada-NETS releases) took its features
    as given, i.e. raw."""
    f = meta.get("features")
    if f in ("raw", "calibrated"):
        return f
    if "facecluster" in meta or "train" in meta:
        return "calibrated"
    return "raw"


def total_order(conf: np.ndarray) -> np.ndarray:
    """(N,) confidences → (N,) int64 ranks of a strict total order: by confidence, ties broken in
    favour of the lower index. Identical faces get identical confidences, and "strictly higher
    confidence" then links none of them to another (learn-to-cluster's rule), so four copies of
    one photo became four roots; with ranks every copy but one has a higher twin."""
    n = len(conf)
    order = np.lexsort((-np.arange(n), np.asarray(conf, np.float64)))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def infer_gcn_v_dims(path: str | Path, *, trust: bool = False) -> tuple[int, int]:
    """(feature_dim, nhid) of a GCN-V checkpoint, from ``conv1.weight`` (2·D, nhid)."""
    sd = read_state_dict(path, trust=trust)
    w = sd.get("conv1.weight")
    if w is None or w.dim() != 2 or w.shape[0] % 2:
        keys = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
        raise CheckpointError(
            f"{path}: not a GCN-V checkpoint (needs conv1.weight of shape (2·feature_dim, nhid)); found: {keys}"
        )
    return int(w.shape[0] // 2), int(w.shape[1])


def infer_gcn_e_dims(path: str | Path, *, trust: bool = False) -> tuple[int, int]:
    """(feature_dim, nhid) of a GCN-E checkpoint, from ``conv1.weight`` (2·D, nhid)."""
    return infer_gcn_v_dims(path, trust=trust)


def load_gcn_v(path: str | Path, *, trust: bool = False) -> GCNV:
    d, h = infer_gcn_v_dims(path, trust=trust)
    return load_into(GCNV(d, h), path, trust=trust, what=f"GCN-V(feature_dim={d}, nhid={h})").eval()


def load_gcn_e(path: str | Path, *, trust: bool = False) -> GCNE:
    d, h = infer_gcn_e_dims(path, trust=trust)
    return load_into(GCNE(d, h), path, trust=trust, what=f"GCN-E(feature_dim={d}, nhid={h})").eval()


def shipped_settings(embedder: str | None = None) -> dict[str, Any]:
    """Settings chosen for the weights shipped for ``embedder`` ({} if absent)."""
    path = shipped_files(embedder)[2]
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict | None = None) -> None:
    """Write ``{'state_dict', 'meta'}`` (the mmcv layout, loadable by the original code too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "meta": dict(meta or {})}, path)


# --------------------------------------------------------------------------------------------
# sparse helpers
# --------------------------------------------------------------------------------------------
def scipy_to_torch_sparse(a: sp.spmatrix, device: str | torch.device = "cpu") -> torch.Tensor:
    """scipy (N, N) → torch sparse CSR float32 on ``device`` (for ``torch.sparse.mm``)."""
    a = sp.csr_matrix(a, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        t = torch.sparse_csr_tensor(
            torch.from_numpy(a.indptr.astype(np.int64)),
            torch.from_numpy(a.indices.astype(np.int64)),
            torch.from_numpy(a.data),
            size=a.shape,
            check_invariants=False,  # built by scipy: valid by construction
        )
        return t.to(device)
