"""Training GCN-V and GCN-E for our default embedder (calibrated 128-d dlib descriptors).

Commands (``facecluster train ...``):

* ``gcn-v``: GCN-V regresses the ``s_nbr`` confidence (notes §1.5) with MSE.
* ``gcn-e``: GCN-E classifies, for each confident face, which higher-confidence candidate
  shares its identity (NLL over log-softmax), on the features of the trained GCN-V.
* ``gcn-ve-tune``: picks k-independent thresholds (tau_0, tau) and the GCN-E ignore ratio on
  the *validation* identities and writes ``weights/gcn_ve_dlib.json`` with the metrics.

Data: the shared feature cache (``/work/cache/feats/dlib-<set>.npz``: ``feats``, ``names``),
calibrated with ``calibration.prepare_features`` and the shipped ``dlib_mean.npy``. Training
uses only identities for which ``train.splits.is_validation_identity`` is False; the others
are never seen until validation.

Speed trick for GCN-V (exact, not an approximation): GCN-V has a single GraphConv on fixed
input features, so ``ÂX`` is a constant. Training the whole-graph model is then training an
MLP on rows ``[x_i ‖ (ÂX)_i]`` — mini-batches over faces give the same gradients per row as
the original full-graph iterations, at a fraction of the cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics
from ..calibration import prepare_features
from ..cluster import gcn_common as gc
from ..cluster.gcn_e import edge_candidates, gcn_e_peaks, sub_adjacency
from ..cluster.gcn_v import gcn_v_forward, link_keep, peaks_labels
from ..graph import build_adjacency, components
from ..knn import knn, knn_within, l2_normalize
from ..progress import bar
from .splits import validation_mask

DEFAULT_CACHE = Path("/work/cache/feats")
DEFAULT_SETS = ("lfw", "glint18")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def seed_all(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_sets(sets, cache_dir: Path = DEFAULT_CACHE, mean_path: Optional[Path] = None, embedder: str = "dlib"):
    """Load and calibrate cached features.

    Returns dict set_name -> {"X": (N, D) float32 calibrated + normalised, "raw": (N, D) plain
    L2-normalised descriptors, "names": (N,) str, "val": (N,) bool validation rows}."""
    mean = None
    mp = Path(mean_path) if mean_path else gc.WEIGHTS_DIR / f"{embedder}_mean.npy"
    if mp.is_file():
        mean = np.load(mp)
    else:
        raise FileNotFoundError(f"calibration mean {mp} not found (train on features prepared as the pipeline does)")
    out = {}
    for s in sets:
        p = Path(cache_dir) / f"{embedder}-{s}.npz"
        if not p.is_file():
            raise FileNotFoundError(f"feature cache {p} not found")
        z = np.load(p, allow_pickle=False)
        names = np.asarray(z["names"]).astype(str)
        out[s] = {
            "X": prepare_features(z["feats"], mean),
            "raw": l2_normalize(z["feats"]),  # for methods that want plain descriptors (infomap)
            "names": names,
            "val": validation_mask(s, names),
        }
    return out


def pick(data: dict, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the 'train' or 'val' rows of every set; labels = identity name (the same
    person in LFW and glint18 is one identity)."""
    xs, ns = [], []
    for d in data.values():
        m = d["val"] if part == "val" else ~d["val"]
        xs.append(d["X"][m])
        ns.append(d["names"][m])
    names = np.concatenate(ns)
    _, y = np.unique(names, return_inverse=True)
    return np.concatenate(xs).astype(np.float32), y.astype(np.int64)


# --------------------------------------------------------------------------------------------
# GCN-V
# --------------------------------------------------------------------------------------------
def make_optimizer(params, name: str, lr: float, weight_decay: float):
    """"sgd": the paper's SGD (momentum 0.9). "adam": Adam — our default, because our graphs are
    ~100x smaller than MS1M part0 and GCN-E did not leave chance level with SGD in the
    step counts we can afford (checked on synthetic clusters)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")


def s_nbr(ids: np.ndarray, sims: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Supervised confidence target (notes §1.5): Σ_{same id} sim − Σ_{other id} sim over the
    kNN list (self included), divided by max |·|. ids, sims (N, k); y (N,). Returns (N,)."""
    same = y[ids] == y[:, None]
    conf = np.where(same, sims, -sims).sum(axis=1).astype(np.float32)
    m = np.abs(conf).max()
    return conf / m if m > 0 else conf


def _gcn_v_rows(model: gc.GCNV, x: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
    w = model.conv1.weight
    d = model.conv1.in_dim
    h = F.relu(x @ w[:d] + ax @ w[d:] + model.conv1.bias)
    return model.classifier(h).view(-1)


def train_gcn_v(
    X: np.ndarray,
    y: np.ndarray,
    *,
    k: int = 80,
    th_sim: float = 0.0,
    nhid: int = 512,
    epochs: int = 60,
    batch_size: int = 512,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 1e-5,
    seed: int = 42,
    device: str = "cpu",
    progress: bool = True,
    log=print,
    graphs: Optional[np.ndarray] = None,
) -> gc.GCNV:
    """Train GCN-V on one labelled graph (X (N, D) calibrated, y (N,) identities).

    Optimiser ``optimizer`` (default Adam, see :func:`make_optimizer`; "sgd" = the paper's),
    weight decay 1e-5, lr steps ×0.1 at 50/80/90 % (the paper's schedule, counted in epochs of
    mini-batches instead of full-graph iterations). ``graphs`` (N,): rows of one training graph
    (e.g. one crop style of a set; neighbours come from the own graph, ``knn.knn_within``)."""
    seed_all(seed)
    X = l2_normalize(X)
    sims, ids = knn_within(X, k, graphs, normalize=False, device=device)
    adj = build_adjacency(ids, sims, th_sim)
    target = s_nbr(ids, sims, y)
    ax = np.asarray(adj @ X, dtype=np.float32)
    model = gc.GCNV(X.shape[1], nhid).to(device)
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    steps = [int(epochs * f) for f in (0.5, 0.8, 0.9)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, steps, 0.1)
    tx, tax, tt = (torch.from_numpy(a).to(device) for a in (X, ax, target))
    g = torch.Generator().manual_seed(seed)
    n = len(X)
    with bar("train GCN-V (epochs)", epochs, enabled=progress) as pb:
        for ep in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=g).to(device)
            tot = 0.0
            for s in range(0, n, batch_size):
                b = perm[s : s + batch_size]
                loss = F.mse_loss(_gcn_v_rows(model, tx[b], tax[b]), tt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.item() * len(b)
            sched.step()
            pb.advance()
            if ep % 10 == 0 or ep == epochs - 1:
                log(f"GCN-V epoch {ep + 1}/{epochs}: mse {tot / n:.5f}")
    return model.eval().cpu()


# --------------------------------------------------------------------------------------------
# GCN-E
# --------------------------------------------------------------------------------------------
def edge_training_set(feat_n, conf, y, ids, sims, ignore_ratio):
    """Subgraphs GCN-E trains on: centres (M,), candidates (M, w) padded, counts (M,), labels (M, w)."""
    ec = edge_candidates(ids, conf, ignore_ratio)
    todo = np.nonzero(ec["use_e"])[0]
    hi = ec["higher"][todo]
    order = np.argsort(~hi, axis=1, kind="stable")
    cnt = ec["count"][todo]
    w = int(cnt.max()) if len(cnt) else 0
    cand = np.take_along_axis(ids[todo], order, 1)[:, :w]
    real = np.arange(w)[None, :] < cnt[:, None]
    lab = ((y[cand] == y[todo][:, None]) & real).astype(np.int64)
    return todo, cand, cnt, lab


def train_gcn_e(
    model_v: gc.GCNV,
    X: np.ndarray,
    y: np.ndarray,
    *,
    k: int = 80,
    k_e: int = 160,
    th_sim: float = 0.0,
    ignore_ratio: float = 0.7,
    nhid: int = 512,
    epochs: int = 10,
    batch_nodes: int = 1024,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 1e-5,
    seed: int = 42,
    device: str = "cpu",
    progress: bool = True,
    log=print,
    graphs: Optional[np.ndarray] = None,
) -> gc.GCNE:
    """Train GCN-E on the GCN-V features of one labelled graph (connectivity target:
    candidate j is positive when it has the centre's identity), NLL over real candidates.
    ``graphs``: as :func:`train_gcn_v`."""
    seed_all(seed)
    X = l2_normalize(X)
    sims, ids = knn_within(X, k, graphs, normalize=False, device=device)
    conf, feat = gcn_v_forward(model_v, X, build_adjacency(ids, sims, th_sim), device)
    feat_n = l2_normalize(feat)
    sims_e, ids_e = knn_within(feat_n, k_e, graphs, normalize=False, device=device)
    todo, cand_all, cnt, lab_all = edge_training_set(feat_n, conf, y, ids_e, sims_e, ignore_ratio)
    log(f"GCN-E: {len(todo)} training subgraphs, {int(cnt.sum())} candidates, {lab_all.sum() / max(cnt.sum(), 1):.3f} positive")
    model = gc.GCNE(feat.shape[1], nhid).to(device)
    if len(todo) == 0:
        return model.eval().cpu()
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(epochs * f) for f in (0.5, 0.8, 0.9)], 0.1)
    rows = np.arange(len(X))
    srt = np.argsort(ids_e, axis=1, kind="stable")
    ids_s = np.take_along_axis(ids_e, srt, 1)
    sims_s = np.take_along_axis(sims_e, srt, 1).astype(np.float32)
    t_ids = torch.from_numpy(ids_s).to(device)
    t_sims = torch.from_numpy(sims_s).to(device)
    t_edge = torch.from_numpy((ids_s != rows[:, None]) & (sims_s >= th_sim)).to(device)
    t_feat = torch.from_numpy(feat_n).to(device)
    rng = np.random.default_rng(seed)
    with bar("train GCN-E (epochs)", epochs, enabled=progress) as pb:
        for ep in range(epochs):
            model.train()
            # batches of similar size (little padding), in random order each epoch
            by_size = np.argsort(cnt + rng.random(len(cnt)), kind="stable")
            batches, s = [], 0
            while s < len(by_size):
                e = s + 1
                while e < len(by_size) and (e - s + 1) * int(cnt[by_size[e]]) <= batch_nodes:
                    e += 1
                batches.append(by_size[s:e])
                s = e
            rng.shuffle(batches)
            tot, tot_n, correct = 0.0, 0, 0
            for sel in batches:
                w = int(cnt[sel].max())
                mask_np = np.arange(w)[None, :] < cnt[sel][:, None]
                cand = torch.from_numpy(np.where(mask_np, cand_all[sel, :w], 0)).to(device)
                mask = torch.from_numpy(mask_np).to(device)
                centre = torch.from_numpy(todo[sel]).to(device)
                x = (t_feat[cand] - t_feat[centre].unsqueeze(1)) * mask.unsqueeze(2)
                with torch.no_grad():
                    adj = sub_adjacency(cand, mask, t_ids, t_sims, t_edge)
                logp = model(x, adj)
                lab = torch.from_numpy(lab_all[sel, :w]).to(device)
                loss = F.nll_loss(logp[mask], lab[mask])
                opt.zero_grad()
                loss.backward()
                opt.step()
                m = int(mask.sum())
                tot += loss.item() * m
                tot_n += m
                correct += int((logp[mask].argmax(-1) == lab[mask]).sum())
            sched.step()
            pb.advance()
            log(f"GCN-E epoch {ep + 1}/{epochs}: nll {tot / tot_n:.4f} acc {correct / tot_n:.4f}")
    return model.eval().cpu()


# --------------------------------------------------------------------------------------------
# tuning and validation
# --------------------------------------------------------------------------------------------
def _bf(y, lab) -> float:
    return metrics.bcubed(y, metrics.singletons_to_unique(lab))[2]


def evaluate_all(model_v, model_e, X, y, *, k, k_e, th_sim, tau_0_grid, tau_grid, ignore_grid, device="cpu") -> dict[str, Any]:
    """Everything the tuner needs on one validation graph: BCubed F of stage A over tau_0,
    stage B over tau, GCN-E over (ignore_ratio, tau)."""
    X = l2_normalize(X)
    sims, ids = knn(X, k, normalize=False, device=device)
    conf, feat = gcn_v_forward(model_v, X, build_adjacency(ids, sims, th_sim), device)
    feat_n = l2_normalize(feat)
    sims_e, ids_e = knn(feat_n, max(k, k_e), normalize=False, device=device)
    kb = min(k, ids_e.shape[1])
    res: dict[str, Any] = {"A": {}, "B": {}, "E": {}}
    for t in tau_0_grid:
        res["A"][t] = peaks_labels(ids, sims, conf, t)
    for t in tau_grid:
        res["B"][t] = peaks_labels(ids_e[:, :kb], sims_e[:, :kb], conf, t)
    if model_e is not None:
        ke = min(k_e, ids_e.shape[1])
        for ig in ignore_grid:
            peak, psim = gcn_e_peaks(model_e, feat_n, conf, ids_e[:, :ke], sims_e[:, :ke], ignore_ratio=ig, th_sim=th_sim, device=device)
            for t in tau_grid:
                keep = link_keep(peak, psim, t)
                src = np.nonzero(keep)[0]
                res["E"][(ig, t)] = components(len(X), src, peak[src])
    return res


def register(app) -> None:
    """Add ``facecluster train gcn-v | gcn-e | gcn-ve-tune``."""
    import typer

    @app.command("gcn-v")
    def cmd_gcn_v(
        sets: list[str] = typer.Option(list(DEFAULT_SETS), "--set", help="Feature-cache sets to train on (training identities only)."),
        cache_dir: Path = typer.Option(DEFAULT_CACHE, help="Folder with <embedder>-<set>.npz feature caches."),
        out: Path = typer.Option(gc.SHIPPED_V, help="Where to write the GCN-V checkpoint ({'state_dict','meta'})."),
        k: int = typer.Option(80, help="kNN size of the training graph (paper 80)."),
        nhid: int = typer.Option(512, help="Hidden width (paper 512)."),
        epochs: int = typer.Option(60, help="Epochs of mini-batches over all faces."),
        lr: float = typer.Option(1e-3, help="Learning rate (paper: SGD 0.1)."),
        optimizer: str = typer.Option("adam", help="adam | sgd (paper)."),
        seed: int = typer.Option(42),
        device: str = typer.Option("cpu"),
    ):
        """Train GCN-V (s_nbr confidence, MSE) on the training identities."""
        data = load_sets(sets, cache_dir)
        X, y = pick(data, "train")
        typer.echo(f"training GCN-V on {len(X)} faces / {len(np.unique(y))} identities")
        t = time.time()
        model = train_gcn_v(X, y, k=k, nhid=nhid, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed, device=device, progress=_tty())
        gc.save_checkpoint(model, out, meta={"facecluster": "gcn-v", "features": "calibrated", "sets": list(sets), "k": k, "nhid": nhid, "epochs": epochs, "lr": lr, "optimizer": optimizer, "seed": seed, "n_train": int(len(X)), "seconds": round(time.time() - t, 1)})
        typer.echo(f"wrote {out}")

    @app.command("gcn-e")
    def cmd_gcn_e(
        sets: list[str] = typer.Option(list(DEFAULT_SETS), "--set", help="Feature-cache sets to train on (training identities only)."),
        cache_dir: Path = typer.Option(DEFAULT_CACHE),
        checkpoint_v: Path = typer.Option(gc.SHIPPED_V, help="The trained GCN-V whose features GCN-E learns on."),
        out: Path = typer.Option(gc.SHIPPED_E, help="Where to write the GCN-E checkpoint."),
        k: int = typer.Option(80, help="kNN size of the GCN-V graph (as GCN-V was trained)."),
        k_e: int = typer.Option(160, help="kNN size on GCN-V features (paper 160)."),
        ignore_ratio: float = typer.Option(0.7, help="Least-confident fraction without subgraphs (paper train 0.7)."),
        nhid: int = typer.Option(512),
        epochs: int = typer.Option(10),
        lr: float = typer.Option(1e-3, help="Learning rate (paper: SGD 0.1)."),
        optimizer: str = typer.Option("adam", help="adam | sgd (paper)."),
        seed: int = typer.Option(42),
        device: str = typer.Option("cpu"),
    ):
        """Train GCN-E (connectivity, NLL) on the training identities."""
        data = load_sets(sets, cache_dir)
        X, y = pick(data, "train")
        mv = gc.load_gcn_v(checkpoint_v)
        t = time.time()
        model = train_gcn_e(mv, X, y, k=k, k_e=k_e, ignore_ratio=ignore_ratio, nhid=nhid, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed, device=device, progress=_tty())
        gc.save_checkpoint(model, out, meta={"facecluster": "gcn-e", "features": "calibrated", "sets": list(sets), "k": k, "k_e": k_e, "ignore_ratio": ignore_ratio, "nhid": nhid, "epochs": epochs, "lr": lr, "optimizer": optimizer, "seed": seed, "seconds": round(time.time() - t, 1)})
        typer.echo(f"wrote {out}")

    @app.command("gcn-ve-tune")
    def cmd_tune(
        sets: list[str] = typer.Option(list(DEFAULT_SETS), "--set"),
        cache_dir: Path = typer.Option(DEFAULT_CACHE),
        checkpoint_v: Path = typer.Option(gc.SHIPPED_V),
        checkpoint_e: Path = typer.Option(gc.SHIPPED_E),
        k: int = typer.Option(80),
        k_e: int = typer.Option(160),
        out: Path = typer.Option(gc.SHIPPED_SETTINGS, help="Settings JSON read by gcn-v/gcn-ve when no checkpoint is given."),
        device: str = typer.Option("cpu"),
    ):
        """Choose tau_0, tau and ignore_ratio on the validation identities (mean BCubed F over
        the sets, each clustered on its own) and write the settings JSON."""
        data = load_sets(sets, cache_dir)
        mv, me = gc.load_gcn_v(checkpoint_v), gc.load_gcn_e(checkpoint_e)
        result = tune(data, mv, me, k=k, k_e=k_e, device=device, log=typer.echo)
        out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {out}")


def _tty() -> bool:
    from ..progress import want_progress

    return want_progress()


def tune(data, mv, me, *, k, k_e, th_sim=0.0, device="cpu", log=print) -> dict[str, Any]:
    """Grid over thresholds on each set's validation identities; returns the settings JSON."""
    tau_0_grid = [round(x, 3) for x in np.arange(0.0, 0.96, 0.025)]
    tau_grid = [round(x, 3) for x in np.arange(0.3, 0.996, 0.01)]
    ignore_grid = [0.0, 0.5, 0.8]
    per_set = {}
    for s, d in data.items():
        X, names = d["X"][d["val"]], d["names"][d["val"]]
        _, y = np.unique(names, return_inverse=True)
        res = evaluate_all(mv, me, X, y, k=k, k_e=k_e, th_sim=th_sim, tau_0_grid=tau_0_grid, tau_grid=tau_grid, ignore_grid=ignore_grid, device=device)
        per_set[s] = (y, res)

    def best(stage):
        keys = list(next(iter(per_set.values()))[1][stage].keys())
        score = {key: float(np.mean([_bf(y, r[stage][key]) for y, r in per_set.values()])) for key in keys}
        kbest = max(keys, key=lambda q: (score[q], str(q)))
        return kbest, score[kbest]

    (t0, fa), (tb, fb), ((ig, te), fe) = best("A"), best("B"), best("E")
    log(f"stage A best tau_0={t0} (mean BCubed F {fa:.4f}); stage B best tau={tb} ({fb:.4f}); GCN-E best ignore_ratio={ig} tau={te} ({fe:.4f})")
    use_b = fb >= fa

    def report(stage, key):
        return {s: metrics.evaluate(y, r[stage][key]) for s, (y, r) in per_set.items()}

    return {
        "embedder": "dlib (calibrated: weights/dlib_mean.npy)",
        "k": k,
        "k_e": k_e,
        "tau_0": t0,
        "tau": tb,
        "use_gcn_feat": bool(use_b),
        "ignore_ratio": ig,
        "tau_e": te,
        "selection": "max mean BCubed F over validation identities of each set, each set clustered on its own",
        "validation": {
            "gcn-v stage A": report("A", t0),
            "gcn-v stage B": report("B", tb),
            "gcn-ve": report("E", (ig, te)),
        },
    }
