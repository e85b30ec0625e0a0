"""Training of the Ada-NETS networks (AND and the GCN) on labelled, calibrated features.

``facecluster train adanets`` trains both, tunes the final threshold on the held-back
identities (``train/splits.py``) and writes the shipped files:

* ``weights/adanets_and_dlib.pth``, ``weights/adanets_gcn_dlib.pth`` — original layouts
  (``{'state_dict', 'step'}``) plus a ``meta`` dict;
* ``weights/adanets_dlib.json`` — the tuned defaults read by ``AdaNetsConfig``, the validation
  scores and the training settings.

``adanets-and`` / ``adanets-gcn`` train one network each.

Recipe (notes §2.3–2.6), scaled to a CPU and to ~15k training faces:

* AND: structure space (k=80, λ=0.3) on the training faces; targets k* = argmax_k F_β (β=0.5)
  over the re-ranked list; regress k*/80 with the Huber loss on the relative error; SGD
  (lr 0.01, momentum 0.9, wd 1e-5), cosine schedule with warm-up, dropout 0.5 in the MLP.
* GCN: the paper trains on a plain kNN graph, not the adaptive one: every step samples, per
  layer and per node, ``fanout`` (80) of its ``order_k`` (256) nearest neighbours; the loss is
  the "allmax" cluster loss (pmargin 0.9, margin 1.0) over groups made of a random seed face
  and ``group`` (128) of its 256 neighbours (the original used one group per step; we use
  ``groups`` per step). SGD lr 0.1, momentum 0.9, wd 1e-5, cosine with warm-up.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..calibration import prepare_features
from ..knn import knn, knn_within
from ..metrics import evaluate
from .splits import validation_mask

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
CACHE = Path("/work/cache/feats")


# ----------------------------------------------------------------------------------------
# data
def load_sets(sets: list[str], feats_dir: Path, mean: np.ndarray | None, part: str):
    """Concatenate the cached features of ``sets`` restricted to training or validation
    identities. Identities are keyed by name so that one person seen in two sets is one label.

    Returns x (N, D) calibrated float32, y (N,) int64, set_of (N,) str.
    """
    xs, names, which = [], [], []
    for s in sets:
        z = np.load(feats_dir / f"dlib-{s}.npz", allow_pickle=False)
        val = validation_mask(s, z["names"])
        m = val if part == "val" else ~val
        xs.append(prepare_features(z["feats"][m], mean))
        names.append(np.asarray(z["names"][m]).astype(str))
        which.append(np.full(int(m.sum()), s))
    x = np.concatenate(xs).astype(np.float32)
    _, y = np.unique(np.concatenate(names), return_inverse=True)
    return x, y.astype(np.int64), np.concatenate(which)


def _cos_lr(opt, step: int, total: int, warmup: int, base: float) -> None:
    if step < warmup:
        lr = base * step / max(warmup, 1)
    else:
        lr = base * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))) / 2
    for g in opt.param_groups:
        g["lr"] = lr


def _optimizer(model, name: str, lr: float):
    import torch

    if name == "sgd":  # the paper's
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")


def _seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------
# AND
def and_data(x: np.ndarray, y: np.ndarray, k: int = 80, lamb: float = 0.3, beta: float = 0.5, device: str = "cpu", graphs=None):
    """Structure-space ids (N, k) and max-Q targets k* (N,) for labelled features; ``graphs``
    (N,): rows of one training graph (neighbours from the own graph, ``knn.knn_within``)."""
    from ..cluster.adanets import _self_first
    from ..cluster.adanets.structure_space import max_q_targets, structure_space

    sims, ids = knn_within(x, k, graphs, device=device)
    ids, sims = _self_first(ids, sims)
    ids_ss, _ = structure_space(ids, sims, k, lamb)
    return ids_ss, max_q_targets(ids_ss, y, beta)


def train_and(
    x, y, *, xv=None, yv=None, k=80, lamb=0.3, beta=0.5, steps=2000, batch_size=512, lr=0.01, warmup=128,
    nhid=512, dropout=0.5, optimizer="sgd", clip=1.0, loss="relative", train_mre=False, device="cpu", seed=0,
    progress=None, log=print, graphs=None, graphs_v=None, max_seconds=None, and_input="features",
):
    """Train AND; returns (model, info). ``xv, yv``: validation features/labels for the MRE.
    ``graphs`` / ``graphs_v`` (N,): rows of one training graph (see :func:`and_data`).
    ``max_seconds``: stop after this much training time (a device run's budget; the learning
    rate is then not fully annealed, ``info['steps_done']`` says where it stopped).
    ``and_input``: what the BiLSTM reads, "features" (the paper) or "gram" (see
    :mod:`facecluster.cluster.adanets.and_model`); saved in the checkpoint's meta.

    Two guards the paper does not need on MS1M: gradient-norm clipping (``clip``) and a
    regressor bias starting at the median target. The relative-error loss has gradient
    1/target, i.e. up to 80× larger for faces whose k* = 1 — LFW's many one-photo people — and
    without the guards training diverged and collapsed to k̂ = 1 for every face."""
    import torch

    from ..cluster.adanets.and_model import ANDModel, huber_log_loss, huber_relative_loss, predict_k
    from ..progress import bar

    _seed(seed)
    ids_ss, kstar = and_data(x, y, k, lamb, beta, device, graphs)
    L = ids_ss.shape[1]
    model = ANDModel(x.shape[1], nhid, dropout, and_input=and_input).to(device)
    with torch.no_grad():
        model.regressor.bias.fill_(float(np.median(kstar)) / k)
    opt = _optimizer(model, optimizer, lr)
    loss_fn = {"relative": huber_relative_loss, "log": huber_log_loss}[loss]
    ft = torch.from_numpy(x).to(device)
    idt = torch.from_numpy(ids_ss).to(device)
    tgt = torch.from_numpy(kstar.astype(np.float32) / k).to(device)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    perm, pos = torch.randperm(n, generator=g), 0
    model.train()
    t0, run, done = time.time(), 0.0, 0
    with bar("train AND", steps, progress) as b:
        for step in range(1, steps + 1):
            if pos + batch_size > n:
                perm, pos = torch.randperm(n, generator=g), 0
            idx = perm[pos : pos + batch_size].to(device)
            pos += batch_size
            _cos_lr(opt, step, steps, warmup, lr)
            batch_loss = loss_fn(model(ft[idt[idx]]), tgt[idx])
            opt.zero_grad()
            batch_loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            run = 0.98 * run + 0.02 * batch_loss.item() if step > 1 else batch_loss.item()
            b.advance(1)
            done = step
            if max_seconds and time.time() - t0 > max_seconds:
                log(f"AND: time budget {max_seconds} s reached at step {step}/{steps}")
                break
            if step % max(steps // 10, 1) == 0:
                log(f"AND step {step}/{steps} loss {run:.4f} lr {opt.param_groups[0]['lr']:.4g}")
    model.eval()
    info = {"steps": steps, "steps_done": done, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "clip": clip, "loss": loss, "k": k, "lamb": lamb, "beta": beta, "seed": seed,
            "and_input": and_input,
            "train_faces": int(n), "train_mean_kstar": float(kstar.mean()), "seconds": round(time.time() - t0, 1),
            "final_loss": run}
    if train_mre:
        khat = predict_k(model, x, ids_ss, k, device=device)
        info["train_mre"] = float(np.mean(np.abs(khat / kstar - 1)))
    if xv is not None and len(xv):
        ids_v, kv = and_data(xv, yv, k, lamb, beta, device, graphs_v)
        kh = predict_k(model, xv, ids_v, k, device=device)
        info["val_mre"] = float(np.mean(np.abs(kh / kv - 1)))
        info["val_mean_kstar"] = float(kv.mean())
        info["val_mean_khat"] = float(kh.mean())
    log(f"AND done: {info}")
    return model.cpu(), info


# ----------------------------------------------------------------------------------------
# GCN
def _sampled_op(rows, nbrs, fanout: int, gen, col_pos=None, n_cols=None):
    """Sampled SAGE-`gcn` aggregation for the nodes ``rows`` as a sparse (R, C) operator.

    Each row averages its node and ``fanout`` random entries of its kNN list (self included in
    the list, as the self-loop is an in-edge in the original graph), the node counted once more
    (DGL's `gcn` aggregator: (Σ_sampled h_j + h_i) / (fanout + 1)). ``col_pos`` maps node ids to
    columns (the rows of the previous layer's output); identity when None.
    Returns (op, sampled neighbour ids (R, f))."""
    import torch

    dev = nbrs.device
    cand = nbrs[rows]
    r, m = cand.shape
    f = min(fanout, m)
    keys = torch.rand((r, m), generator=gen).to(dev)
    pick = torch.gather(cand, 1, keys.topk(f, dim=1).indices)
    cols = torch.cat([pick, rows[:, None]], 1).reshape(-1)
    if col_pos is not None:
        cols = col_pos[cols]
    ri = torch.arange(r, device=dev).repeat_interleave(f + 1)
    vals = torch.full((r * (f + 1),), 1.0 / (f + 1), device=dev)
    n_cols = nbrs.shape[0] if n_cols is None else n_cols
    return torch.sparse_coo_tensor(torch.stack([ri, cols]), vals, (r, n_cols), check_invariants=False).coalesce(), pick


class _Op:
    """Wraps a sparse operator so SAGEGCNConv can apply it (``op @ h``)."""

    def __init__(self, op):
        self.op = op

    def __matmul__(self, h):
        return self.op @ h


def train_gcn(
    x, y, *, steps=1500, order_k=256, group=128, groups=8, fanout=80, lr=0.1, warmup=None, nhid=512,
    pmargin=0.9, margin=1.0, graph="knn", and_model=None, k=80, lamb=0.3, optimizer="sgd",
    device="cpu", seed=0, progress=None, log=print, graphs=None, max_seconds=None, init=None,
):
    """Train the Ada-NETS GCN with the cluster loss; returns (model, info).

    ``init``: optional state dict to start from instead of random weights (e.g. the shipped GCN's,
    ``load_gcn_checkpoint(path)[0].state_dict()``): a fine-tune, e.g. of the shipped GCN on another
    AND's adaptive graph (``nhid`` must match it).

    graph="knn": the paper's training graph (order_k-NN, ``fanout`` neighbours sampled per node
    and layer each step). graph="adaptive": the inference graph (structure space + the trained
    ``and_model``'s k̂ on the training faces, all neighbours), so training sees what inference sees.
    Each step's loss averages ``groups`` groups of a random seed face and ``group`` of its
    order_k neighbours (the original used one group per step). ``graphs`` (N,): rows of one
    training graph (neighbours from the own graph, ``knn.knn_within``). ``max_seconds``: stop
    after this much training time (``info['steps_done']``)."""
    import torch

    from ..cluster.adanets import _self_first
    from ..cluster.adanets.and_model import predict_k
    from ..cluster.adanets.gcn import AdaGCN, SparseGraph, adaptive_adjacency
    from ..cluster.adanets.structure_space import structure_space
    from ..progress import bar

    _seed(seed)
    n = len(x)
    _, ids = knn_within(x, order_k, graphs, device=device)
    ids, _ = _self_first(ids, np.zeros(ids.shape, np.float32))
    nbrs = torch.from_numpy(ids).to(device)
    full = None
    if graph == "adaptive":
        if and_model is None:
            raise ValueError("graph='adaptive' needs the trained AND model")
        sims, kid = knn_within(x, k, graphs, device=device)
        kid, sims = _self_first(kid, sims)
        ids_ss, d_ss = structure_space(kid, sims, k, lamb)
        khat = predict_k(and_model, x, ids_ss, k, device=device)
        full = SparseGraph(adaptive_adjacency(ids_ss, d_ss, khat), device)
    elif graph != "knn":
        raise ValueError(f"graph must be knn or adaptive, got {graph!r}")
    model = AdaGCN(x.shape[1], nhid)
    if init is not None:
        model.load_state_dict(init)
    model = model.to(device)
    opt = _optimizer(model, optimizer, lr)
    warmup = max(1, steps * 1024 // 35000) if warmup is None else warmup  # the paper's 1024/35000 ratio
    ft = torch.from_numpy(x).to(device)
    yt = torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    m = nbrs.shape[1]
    gsize = min(group, m - 1)
    t0, run, done = time.time(), 0.0, 0
    model.train()
    with bar("train GCN", steps, progress) as b:
        for step in range(1, steps + 1):
            _cos_lr(opt, step, steps, warmup, lr)
            # groups: a seed face and `group` of its order_k neighbours (the original's order graph)
            seeds = torch.randint(0, n, (groups,), generator=gen).to(device)
            take = torch.rand((groups, m - 1), generator=gen).to(device).topk(gsize, dim=1).indices + 1
            grp = torch.cat([seeds[:, None], torch.gather(nbrs[seeds], 1, take)], 1)  # (G, gsize+1)
            if full is not None:
                out = model(full, ft)
                feat = out[grp]
            else:
                members = torch.unique(grp)
                # two sampled hops, computed only for the rows the loss needs (same maths as full graph)
                _, pick2 = _sampled_op(members, nbrs, fanout, gen)
                nodes1 = torch.unique(torch.cat([members, pick2.reshape(-1)]))
                pos = torch.full((n,), -1, dtype=torch.long, device=device)
                pos[nodes1] = torch.arange(len(nodes1), device=device)
                op1, _ = _sampled_op(nodes1, nbrs, fanout, gen)
                h = torch.nn.functional.normalize(model.sage1(_Op(op1), ft), dim=1)
                f2 = pick2.shape[1]
                cols = pos[torch.cat([pick2, members[:, None]], 1).reshape(-1)]
                ri = torch.arange(len(members), device=device).repeat_interleave(f2 + 1)
                op2 = torch.sparse_coo_tensor(torch.stack([ri, cols]), torch.full((len(ri),), 1.0 / (f2 + 1), device=device),
                                              (len(members), len(nodes1)), check_invariants=False).coalesce()
                out = torch.nn.functional.normalize(model.fc(model.sage2(_Op(op2), h)), dim=1)
                where = torch.full((n,), -1, dtype=torch.long, device=device)
                where[members] = torch.arange(len(members), device=device)
                feat = out[where[grp]]
            loss = group_cluster_loss(feat, yt[grp], pmargin, margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run = 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()
            b.advance(1)
            done = step
            if max_seconds and time.time() - t0 > max_seconds:
                log(f"GCN: time budget {max_seconds} s reached at step {step}/{steps}")
                break
            if step % max(steps // 10, 1) == 0:
                log(f"GCN step {step}/{steps} loss {run:.4f} lr {opt.param_groups[0]['lr']:.4g}")
    model.eval()
    info = {"steps": steps, "steps_done": done, "order_k": order_k, "group": group, "groups": groups, "fanout": fanout, "lr": lr,
            "optimizer": optimizer, "graph": graph, "warmup": warmup, "pmargin": pmargin, "margin": margin, "seed": seed,
            "init": init is not None,
            "train_faces": int(n), "seconds": round(time.time() - t0, 1), "final_loss": run}
    log(f"GCN done: {info}")
    return model.cpu(), info


def group_cluster_loss(feat, labels, pmargin: float = 0.9, margin: float = 1.0):
    """The "allmax" cluster loss (``gcn.cluster_loss``) for G groups at once, averaged.

    feat : (G, M, H) L2-normalised; labels : (G, M). Per group: mean over positive pairs
    (diagonal included) of ReLU(pmargin − s) + ReLU(margin + max negative s)."""
    import torch

    s = torch.bmm(feat, feat.transpose(1, 2))
    same = labels[:, :, None] == labels[:, None, :]
    pos = (torch.relu(pmargin - s) * same).sum((1, 2)) / same.sum((1, 2))
    negs = torch.where(same, torch.full_like(s, -float("inf")), s).amax((1, 2))
    neg = torch.where(torch.isfinite(negs), torch.relu(margin + negs), torch.zeros_like(negs))
    return (pos + neg).mean()


# ----------------------------------------------------------------------------------------
# saving and tuning
def save_checkpoint(model, path: Path, step: int, meta: dict) -> None:
    """Original layout ``{'state_dict', 'step'}`` plus our ``meta`` (ignored by the original)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if getattr(model, "and_input", "features") != "features":
        meta = {**meta, "and_input": model.and_input}  # how the loader must feed it
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": sd, "step": int(step), "meta": meta}, tmp)
    tmp.replace(path)


def tune_threshold(val_sets: dict, and_path: Path, gcn_path: Path, grid=None, device="cpu", log=print):
    """Pick the final cosine threshold maximising the BCubed F averaged over the validation
    sets, each clustered on its own (the criterion GCN-V+E is tuned with, so the two compare
    fairly). val_sets: name → (x, y). Returns (best_th, table)."""
    from ..cluster.adanets import AdaNetsClusterer
    from ..graph import components

    grid = np.round(np.arange(0.30, 0.991, 0.01), 2) if grid is None else np.asarray(grid)
    table = {}
    for name, (x, y) in val_sets.items():
        c = AdaNetsClusterer(checkpoint_and=str(and_path), checkpoint_gcn=str(gcn_path), device=device)
        feat = c.embed(x)
        sims, ids = knn(feat, c.resolved()["final_topk"], normalize=False, device=device)
        n = len(x)
        rows = np.repeat(np.arange(n), ids.shape[1])
        s, j = sims.reshape(-1), ids.reshape(-1)
        for th in grid:
            keep = (s >= th) & (j != rows)
            table.setdefault(float(th), {})[name] = evaluate(y, components(n, rows[keep], j[keep]))
    def score(th):
        return float(np.mean([m["bcubed_fscore"] for m in table[th].values()]))
    best = max(table, key=lambda t: (score(t), -t))
    log(f"best final_th {best}: score {score(best):.4f}")
    return best, table


#: the --and-input option of the training commands
AND_INPUT_HELP = "What AND reads: features (the paper) | gram (each neighbour's cosines to the neighbourhood; learns k* on few people)."


def register(app) -> None:
    import typer

    def _common_data(sets, feats_dir, mean_path):
        # "--mean none" trains on plain L2-normalised features (e.g. an already zero-mean embedder)
        mean = None if mean_path is None or str(mean_path).lower() in ("", ".", "none") else np.load(mean_path)
        x, y, _ = load_sets(sets, feats_dir, mean, "train")
        xv, yv, wv = load_sets(sets, feats_dir, mean, "val")
        return mean, x, y, xv, yv, wv

    @app.command("adanets")
    def adanets_cmd(
        sets: str = typer.Option("lfw,glint18", help="Feature caches to train on (dlib-<set>.npz)."),
        feats_dir: Path = typer.Option(CACHE, help="Folder with dlib-<set>.npz (feats, labels, names, paths)."),
        mean_path: Optional[Path] = typer.Option(WEIGHTS / "dlib_mean.npy", "--mean", help="Calibration mean (weights/dlib_mean.npy)."),
        out_dir: Path = typer.Option(WEIGHTS, help="Where to write adanets_{and,gcn}_dlib.pth and adanets_dlib.json."),
        and_steps: int = typer.Option(300, help="AND steps (paper: 40000 × 1024 faces on MS1M)."),
        and_batch: int = typer.Option(256),
        and_optimizer: str = typer.Option("adam", help="adam | sgd (paper: sgd, lr 0.01)."),
        and_lr: float = typer.Option(1e-3),
        and_input: str = typer.Option("features", help=AND_INPUT_HELP),
        gcn_steps: int = typer.Option(600, help="GCN steps (paper: 35000 × 1 group)."),
        gcn_groups: int = typer.Option(8, help="Seed groups per step."),
        gcn_graph: str = typer.Option("knn", help="knn (paper: sampled 256-NN graph) | adaptive (the inference graph)."),
        gcn_optimizer: str = typer.Option("adam", help="adam | sgd (paper: sgd, lr 0.1)."),
        gcn_lr: float = typer.Option(1e-3),
        device: str = typer.Option("auto"), seed: int = typer.Option(0),
        threads: int = typer.Option(0, help="torch CPU threads (0: torch default)."),
    ):
        """Train AND + GCN on the training identities, tune the threshold on the validation ones."""
        import torch

        from ..cluster.base import resolve_device
        from ..progress import want_progress

        if threads:
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        names = [s.strip() for s in sets.split(",") if s.strip()]
        mean, x, y, xv, yv, wv = _common_data(names, feats_dir, mean_path)
        typer.echo(f"train {len(x)} faces / {len(np.unique(y))} ids; validation {len(xv)} faces")
        m_and, i_and = train_and(x, y, xv=xv, yv=yv, steps=and_steps, batch_size=and_batch, optimizer=and_optimizer,
                                 lr=and_lr, device=dev, seed=seed, progress=want_progress(), log=typer.echo, and_input=and_input)
        save_checkpoint(m_and, out_dir / "adanets_and_dlib.pth", and_steps, {"scale_max": i_and["k"], "features": "calibrated", "train": i_and})
        m_gcn, i_gcn = train_gcn(x, y, steps=gcn_steps, groups=gcn_groups, graph=gcn_graph, and_model=m_and,
                                 optimizer=gcn_optimizer, lr=gcn_lr, device=dev, seed=seed,
                                 progress=want_progress(), log=typer.echo)
        save_checkpoint(m_gcn, out_dir / "adanets_gcn_dlib.pth", gcn_steps, {"train": i_gcn})
        val = {s: (xv[wv == s], yv[wv == s]) for s in names}
        best, table = tune_threshold(val, out_dir / "adanets_and_dlib.pth", out_dir / "adanets_gcn_dlib.pth", device=dev, log=typer.echo)
        write_defaults(out_dir, best, table, i_and, i_gcn, names, mean_path)

    @app.command("adanets-and")
    def adanets_and_cmd(
        sets: str = typer.Option("lfw,glint18"), feats_dir: Path = typer.Option(CACHE),
        mean_path: Optional[Path] = typer.Option(WEIGHTS / "dlib_mean.npy", "--mean"),
        out: Path = typer.Option(WEIGHTS / "adanets_and_dlib.pth"),
        steps: int = typer.Option(300), batch: int = typer.Option(256), optimizer: str = typer.Option("adam"),
        lr: float = typer.Option(1e-3), device: str = typer.Option("auto"), seed: int = typer.Option(0),
        and_input: str = typer.Option("features", help=AND_INPUT_HELP),
    ):
        """Train only AND (adaptive neighbour discovery)."""
        from ..cluster.base import resolve_device
        from ..progress import want_progress

        _, x, y, xv, yv, _ = _common_data([s for s in sets.split(",") if s], feats_dir, mean_path)
        m, info = train_and(x, y, xv=xv, yv=yv, steps=steps, batch_size=batch, optimizer=optimizer, lr=lr,
                            device=resolve_device(device), seed=seed,
                            progress=want_progress(), log=typer.echo, and_input=and_input)
        save_checkpoint(m, out, steps, {"scale_max": info["k"], "features": "calibrated", "train": info})

    @app.command("adanets-gcn")
    def adanets_gcn_cmd(
        sets: str = typer.Option("lfw,glint18"), feats_dir: Path = typer.Option(CACHE),
        mean_path: Optional[Path] = typer.Option(WEIGHTS / "dlib_mean.npy", "--mean"),
        out: Path = typer.Option(WEIGHTS / "adanets_gcn_dlib.pth"),
        steps: int = typer.Option(600), groups: int = typer.Option(8), optimizer: str = typer.Option("adam"),
        lr: float = typer.Option(1e-3), device: str = typer.Option("auto"), seed: int = typer.Option(0),
    ):
        """Train only the GCN (cluster loss, on the paper's sampled kNN graph)."""
        from ..cluster.base import resolve_device
        from ..progress import want_progress

        _, x, y, _, _, _ = _common_data([s for s in sets.split(",") if s], feats_dir, mean_path)
        m, info = train_gcn(x, y, steps=steps, groups=groups, optimizer=optimizer, lr=lr, device=resolve_device(device), seed=seed,
                            progress=want_progress(), log=typer.echo)
        save_checkpoint(m, out, steps, {"train": info})


def write_defaults(out_dir: Path, best: float, table: dict, i_and: dict, i_gcn: dict, sets, mean_path) -> None:
    """weights/adanets_dlib.json: tuned defaults + validation scores + training settings."""
    from ..cluster.adanets import PAPER_DEFAULTS

    d = dict(PAPER_DEFAULTS)
    d["final_th"] = float(best)
    doc = {
        "defaults": d,
        "validation": {str(t): v for t, v in table.items() if abs(t - best) < 1e-9},
        "sweep": {str(t): {s: {k: round(m[k], 4) for k in ("pairwise_fscore", "bcubed_fscore", "nmi")} for s, m in v.items()} for t, v in table.items()},
        "trained_on": {"sets": list(sets), "features": "dlib, prepare_features with weights/dlib_mean.npy", "mean": str(mean_path.name) if mean_path else None,
                       "split": "facecluster.train.splits (training identities only)"},
        "and": i_and, "gcn": i_gcn,
    }
    (out_dir / "adanets_dlib.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
