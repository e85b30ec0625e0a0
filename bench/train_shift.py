"""Retrain GCN-V+E and Ada-NETS on plain L2-normalised descriptors (issue 11), on CPU.

    python bench/train_shift.py --root /work/extdata/work --out OUT [--what v,e,and,gcn]
    python bench/train_shift.py --root /work/extdata/work-mbf --embedder mbf --out OUT ...
    python bench/train_shift.py --root WORK-mbf --embedder mbf --save-pool pool.npz   # for a device run
    python bench/train_shift.py --pool pool.npz --embedder mbf --device cuda --half --out OUT ...
      (bench/device_train.sh; docs/benchmarks/adanets.md §7, "The prepared device run")

Training data: the *training* identities of every available set in ``bench/regimes.TRAIN_SETS``
(several crop styles of the same LFW / glint18 faces, ``bench/shift_sets.py``), identity = person
name. ``--graphs per-set`` (default): each set is its own training graph (a face's neighbours come
from its own crop style, as in a real batch); ``--graphs pooled``: one graph of every set, so the
same person under several crop styles is one cluster and holds copies of each photo.
Validation regimes (``bench/regimes.py``) are never read here.

Features: ``meta['features'] = 'raw'`` in every checkpoint, so the methods feed them the plain
descriptors, except an AND trained with ``--and-features calibrated`` and the GCN trained after it
(Ada-NETS reads one kind of features for both: the AND checkpoint's). ``--gcn-init`` fine-tunes a
given GCN (docs/benchmarks/adanets.md §13). Sizes are scaled to a shared 2-core CPU (see the model
cards): GCN-V nhid 256, GCN-E nhid 128, AND with the log-ratio loss (``huber_log_loss``; the
relative loss collapsed to k̂ ≈ 1), the Ada-NETS GCN with fewer steps than the GPU recipe. Prints
AND's predicted vs true neighbour counts on the training faces and on a held-back 10 % of the
training identities.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regimes import TRAIN_SETS, training_pool  # noqa: E402

from facecluster.cluster import gcn_common as gc  # noqa: E402
from facecluster.cluster.adanets.and_model import AND_INPUTS  # noqa: E402
from facecluster.knn import l2_normalize  # noqa: E402


def pool(root: Path, sets: list[str]):
    """Training rows of every set: x (N, D) plain descriptors, y (N,) identity (the same person
    in every set and crop style is one identity), names (N,), graphs (N,) the set index of each
    row, and the sets used."""
    parts = training_pool(root, sets)
    x = l2_normalize(np.concatenate([p[1] for p in parts]).astype(np.float32))
    names = np.concatenate([p[2] for p in parts]).astype(str)
    graphs = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
    _, y = np.unique(names, return_inverse=True)
    return x, y.astype(np.int64), names, graphs, [p[0] for p in parts]


def save_pool(path: Path, x, names, graphs, used) -> None:
    """Write the training pool compactly for a device run (the carry limit is 64 MiB): int8
    features scaled per row (cosines within ~0.002 of the float32 ones), names and graph ids."""
    scale = np.abs(x).max(axis=1, keepdims=True).astype(np.float32) / 127.0
    q = np.round(x / np.maximum(scale, 1e-12)).astype(np.int8)
    np.savez_compressed(path, q=q, scale=scale[:, 0], names=np.asarray(names, dtype=str), graphs=graphs.astype(np.int16),
                        sets=np.asarray(used, dtype=str))


def load_pool(path: Path):
    """The inverse of :func:`save_pool`: (x, y, names, graphs, used) as :func:`pool` returns them."""
    z = np.load(path, allow_pickle=False)
    x = l2_normalize(z["q"].astype(np.float32) * z["scale"][:, None])
    names = z["names"].astype(str)
    _, y = np.unique(names, return_inverse=True)
    return x, y.astype(np.int64), names, z["graphs"].astype(np.int64), [str(s) for s in z["sets"]]


def _features(x: np.ndarray, kind: str, embedder: str) -> np.ndarray:
    """The pool's plain descriptors as a checkpoint of ``kind`` reads them: raw, or calibrated
    (minus the embedder's shipped mean, as the methods prepare them)."""
    if kind != "calibrated":
        return x
    from facecluster.calibration import calibration_mean, prepare_features

    return prepare_features(x, calibration_mean(embedder)).astype(np.float32)


def _whole_identities(y: np.ndarray, faces: int) -> np.ndarray:
    """A random (seed 0) set of identities holding at most ``faces`` faces together: whole
    identities, so every person keeps all their faces (true neighbour counts unchanged)."""
    rng = np.random.default_rng(0)
    ids_perm = rng.permutation(np.unique(y))
    sizes = np.bincount(y)
    return ids_perm[np.cumsum(sizes[ids_perm]) <= faces]


def holdback(names: np.ndarray, share: float = 0.1) -> np.ndarray:
    """Rows of ~``share`` of the training identities (by name hash) kept out of AND training to
    report its predicted vs true neighbour counts on people it never saw."""
    h = np.array([zlib.crc32(n.encode()) % 1000 for n in names])
    return h < share * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="folder of embedded work dirs (or --pool)")
    ap.add_argument("--pool", type=Path, help="read the training pool from a --save-pool file instead of --root (device runs)")
    ap.add_argument("--save-pool", type=Path, help="write the training pool of --root to this .npz (int8 features) and stop")
    ap.add_argument("--half", action="store_true", help="store checkpoints in float16 (device runs: files back are <= 16 MiB); they load as float32")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--faces", type=int, default=0, help="use whole identities of the pool up to about this many faces (0: all; smoke runs)")
    ap.add_argument("--what", default="v,e,and,gcn")
    ap.add_argument("--sets", default=",".join(TRAIN_SETS))
    ap.add_argument("--v-nhid", type=int, default=256)
    ap.add_argument("--v-epochs", type=int, default=20)
    ap.add_argument("--e-nhid", type=int, default=128)
    ap.add_argument("--e-epochs", type=int, default=2)
    # 0.0 as the shipped recipe: with the paper's 0.8 the training subgraphs were 100 % positive
    ap.add_argument("--e-ignore", type=float, default=0.0)
    ap.add_argument("--and-steps", type=int, default=300)
    ap.add_argument("--and-nhid", type=int, default=256)
    ap.add_argument("--and-batch", type=int, default=512)
    ap.add_argument("--and-warmup", type=int, default=128)
    ap.add_argument("--and-input", default="features", choices=AND_INPUTS, help="what AND reads (facecluster.cluster.adanets.and_model)")
    ap.add_argument("--and-features", default="raw", choices=["raw", "calibrated"],
                    help="features AND trains on: raw (plain) or calibrated (minus the embedder's shipped mean, as the shipped GCN expects)")
    ap.add_argument("--and-faces", type=int, default=0, help="train AND on a random subset of identities with about this many faces (0: all)")
    ap.add_argument("--gcn-steps", type=int, default=400)
    ap.add_argument("--and-seconds", type=float, default=0, help="stop AND training after this many seconds (0: no limit; device runs)")
    ap.add_argument("--gcn-seconds", type=float, default=0, help="stop GCN training after this many seconds (0: no limit)")
    ap.add_argument("--gcn-init", type=Path, help="start the GCN from this checkpoint (a fine-tune, e.g. the shipped "
                    "weights/adanets_gcn_dlib.pth on another AND's adaptive graph) instead of random weights")
    ap.add_argument("--gcn-lr", type=float, default=0.1, help="the GCN's SGD learning rate (the paper's 0.1; lower for --gcn-init)")
    ap.add_argument("--gcn-graph", choices=["adaptive", "knn"], default="adaptive",
                    help="the Ada-NETS GCN's training graph: adaptive (what inference sees; a full-graph step, slow on CPU) or knn (the paper's sampled order graph)")
    ap.add_argument("--graphs", choices=["per-set", "pooled"], default="per-set",
                    help="per-set: each set (crop style) is its own training graph, as a real batch is one source; pooled: one graph of every set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the same code path; the shipped GPU recipes used cuda)")
    ap.add_argument("--embedder", default="dlib", help="the embedder of the work dirs under --root (dlib | mbf): names the files (gcn_v_<embedder>.pth, ...) and goes in their meta")
    a = ap.parse_args()
    from facecluster.train import flush_subnormals

    flush_subnormals()  # before any torch work: subnormal gradients slow CPU training ~12x
    torch.set_num_threads(a.threads)
    what = set(a.what.split(","))
    if a.pool:
        x, y, names, graphs, used = load_pool(a.pool)
    elif a.root:
        x, y, names, graphs, used = pool(a.root, a.sets.split(","))
    else:
        ap.error("--root or --pool is required")
    if a.save_pool:
        save_pool(a.save_pool, x, names, graphs, used)
        print(f"pool: {len(x)} faces of {len(used)} sets -> {a.save_pool} ({a.save_pool.stat().st_size / 2**20:.1f} MiB)")
        return
    if a.faces and a.faces < len(x):
        keep = np.isin(y, _whole_identities(y, a.faces))
        x, y, names, graphs = x[keep], np.unique(y[keep], return_inverse=True)[1].astype(np.int64), names[keep], graphs[keep]
    if not a.out:
        ap.error("--out is required")
    a.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []  # checkpoints this run writes
    groups = graphs if a.graphs == "per-set" else None
    print(f"pool: {len(x)} faces, {len(np.unique(y))} identities, sets {used}, graphs {a.graphs}", flush=True)
    dev = a.device
    log = {"sets": used, "faces": int(len(x)), "identities": int(len(np.unique(y))), "features": "raw", "device": dev, "graphs": a.graphs}
    common = {"features": "raw", "embedder": a.embedder, "sets": used, "n_train": int(len(x)), "device": dev, "graphs": a.graphs}

    if "v" in what or "e" in what:
        from facecluster.train.gcn_ve import train_gcn_v, train_gcn_e

        emb = a.embedder
        pv = a.out / f"gcn_v_{emb}.pth"
        if "v" in what:
            t = time.time()
            mv = train_gcn_v(x, y, k=80, nhid=a.v_nhid, epochs=a.v_epochs, progress=False, device=dev, graphs=groups)
            written.append(pv)
            gc.save_checkpoint(mv, pv, meta={**common, "facecluster": "gcn-v", "k": 80, "nhid": a.v_nhid, "epochs": a.v_epochs, "optimizer": "adam", "lr": 1e-3, "seed": 42, "seconds": round(time.time() - t, 1)})
            log["gcn_v_seconds"] = round(time.time() - t, 1)
        if "e" in what:
            mv = gc.load_gcn_v(pv)
            t = time.time()
            me = train_gcn_e(mv, x, y, k=80, k_e=160, ignore_ratio=a.e_ignore, nhid=a.e_nhid, epochs=a.e_epochs, progress=False, device=dev, graphs=groups)
            written.append(a.out / f"gcn_e_{emb}.pth")
            gc.save_checkpoint(me, written[-1], meta={**common, "facecluster": "gcn-e", "k": 80, "k_e": 160, "nhid": a.e_nhid, "epochs": a.e_epochs, "ignore_ratio_train": a.e_ignore, "optimizer": "adam", "lr": 1e-3, "seed": 42, "seconds": round(time.time() - t, 1)})
            log["gcn_e_seconds"] = round(time.time() - t, 1)

    if "and" in what or "gcn" in what:
        from facecluster.cluster.adanets.and_model import load_and_checkpoint
        from facecluster.train.adanets import save_checkpoint, train_and, train_gcn

        pa = a.out / f"adanets_and_{a.embedder}.pth"
        if "and" in what:
            hb = holdback(names)
            use = np.ones(len(x), bool)
            if a.and_faces and a.and_faces < len(x):
                use = np.isin(y, _whole_identities(y, a.and_faces))
            tr, va = use & ~hb, use & hb
            gtr, gva = (None, None) if groups is None else (groups[tr], groups[va])
            xa = _features(x, a.and_features, a.embedder)
            m_and, info = train_and(xa[tr], y[tr], xv=xa[va], yv=y[va], steps=a.and_steps, nhid=a.and_nhid, loss="log", optimizer="adam", lr=1e-3,
                                    batch_size=a.and_batch, warmup=a.and_warmup, train_mre=True, device=dev, graphs=gtr, graphs_v=gva,
                                    max_seconds=a.and_seconds or None, and_input=a.and_input)
            # predicted vs true neighbour counts: the collapse check
            from facecluster.cluster.adanets.and_model import predict_k
            from facecluster.train.adanets import and_data

            ids_v, kv = and_data(xa[va], y[va], device=dev, graphs=gva)
            kh = predict_k(m_and, xa[va], ids_v, 80, device=dev)
            bins = [1, 2, 5, 10, 20, 40, 81]
            table = []
            for lo, hi in zip(bins[:-1], bins[1:]):
                m = (kv >= lo) & (kv < hi)
                if m.any():
                    table.append({"k_true": f"{lo}-{hi - 1}", "faces": int(m.sum()), "k_true_mean": float(kv[m].mean()), "k_pred_mean": float(kh[m].mean()), "k_pred_median": float(np.median(kh[m]))})
            info["heldback_counts"] = table
            print(json.dumps(table, indent=1), flush=True)
            written.append(pa)
            save_checkpoint(m_and, pa, info["steps_done"], {**common, "features": a.and_features, "scale_max": 80, "train": info})
            log["and"] = info
        if "gcn" in what:
            m_and, meta_and = load_and_checkpoint(pa)
            # Ada-NETS feeds its AND and its GCN one kind of features (the AND checkpoint's
            # meta['features']), so the GCN trains on what that AND was trained on
            kind = meta_and.get("features", "raw")
            xg = _features(x, kind, a.embedder)
            start = None
            if a.gcn_init:
                from facecluster.cluster.adanets.gcn import load_gcn_checkpoint

                start = load_gcn_checkpoint(a.gcn_init, feature_dim=xg.shape[1])[0]
            m_gcn, info = train_gcn(xg, y, steps=a.gcn_steps, graph=a.gcn_graph, and_model=m_and, optimizer="sgd", lr=a.gcn_lr, device=dev,
                                     graphs=groups, max_seconds=a.gcn_seconds or None,
                                     init=None if start is None else start.state_dict(), nhid=512 if start is None else start.nhid)
            if a.gcn_init:
                info["init"] = str(a.gcn_init)
            written.append(a.out / f"adanets_gcn_{a.embedder}.pth")
            save_checkpoint(m_gcn, written[-1], info["steps_done"], {**common, "features": kind, "train": info})
            log["gcn"] = info
    (a.out / "train_log.json").write_text(json.dumps(log, indent=1, default=str))
    if a.half:  # only what this run wrote (a device run's second call must not rewrite the first's)
        for f in written:
            _halve(f)


def _halve(path: Path) -> None:
    """Rewrite a checkpoint with float16 tensors (same keys and layout; ``load_state_dict``
    copies them back into float32 parameters)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    sd = ck["state_dict"] if isinstance(ck, dict) and "state_dict" in ck else ck
    for k, v in sd.items():
        if torch.is_floating_point(v):
            sd[k] = v.half()
    tmp = path.with_suffix(".tmp")
    torch.save(ck, tmp)
    tmp.replace(path)
    print(f"{path.name}: float16, {path.stat().st_size / 2**20:.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
