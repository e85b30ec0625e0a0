"""The stages, as plain functions over a work directory (the CLI and the images call these).

prepare → embed (per shard) → merge → cluster → write. Each stage computes a fingerprint of
what it depends on and returns early when its stored artifact has the same fingerprint, so a
rerun resumes and a changed input or setting recomputes (no stale caches).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import contract
from .calibration import calibration_mean, prepare_features
from .workdir import (
    WorkDir,
    atomic_save_npy,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    fingerprint,
    read_json,
    shard_range,
)

log = logging.getLogger("facecluster")


@dataclass
class StageResult:
    stage: str
    skipped: bool
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def _stat(p: str) -> list | None:
    try:
        st = os.stat(p)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return None


# --------------------------------------------------------------------------- prepare
def prepare(input_path: str | os.PathLike, wd: WorkDir) -> StageResult:
    """Validate the input JSON and write ``manifest.json`` (raises ContractError)."""
    t = time.perf_counter()
    records, paths = contract.load_input(input_path)
    # file size + mtime make "same paths, new pixels" a changed input
    fp = fingerprint("prepare", records, paths, [_stat(p) for p in paths])
    if wd.is_fresh(wd.manifest, fp):
        return StageResult("prepare", True, info={"n": len(records)})
    wd.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        wd.manifest,
        {"fingerprint": fp, "input": str(Path(input_path).resolve()), "n": len(records), "paths": paths, "records": records},
    )
    return StageResult("prepare", False, time.perf_counter() - t, {"n": len(records)})


# --------------------------------------------------------------------------- embed
#: seconds of embedding between two pieces a killed shard resumes from (a piece is the
#: descriptors of the records finished since the last one: ~0.5 KB per face for dlib)
CHECKPOINT_SECONDS = 60.0


def _load_pieces(folder: Path, fp: str) -> tuple[list[dict[str, np.ndarray]], int]:
    """The finished pieces of an interrupted embed of the same shard, input and settings
    (``fp``) and how many of the shard's records they cover (a prefix: pieces are written in
    order). Pieces of anything else are removed; so is every piece after a gap or an
    unreadable one (the records from there on are embedded again)."""
    try:
        same = read_json(folder / "fingerprint.json").get("fingerprint") == fp
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "fingerprint.json", {"fingerprint": fp})
        return [], 0
    pieces, done = [], 0
    files = sorted(folder.glob("piece-*.npz"))
    for f in files:
        try:
            a, b = (int(x) for x in f.stem.split("-")[1:3])
            if a != done:
                raise ValueError("gap")
            with np.load(f, allow_pickle=False) as z:
                piece = {k: z[k] for k in ("features", "index", "face_px", "err_index", "err_msg")}
        except (OSError, ValueError, KeyError):
            break
        pieces.append(piece)
        done = b
    for f in files[len(pieces):]:
        f.unlink(missing_ok=True)
    return pieces, done


def _piece(chunks: list[tuple], dim: int) -> dict[str, np.ndarray]:
    """Chunks of :func:`~facecluster.embed.runner.iter_embed_chunks` (indices already shifted to
    the shard) as one piece's arrays."""
    errors = {k: v for c in chunks for k, v in c[2].items()}
    keys = sorted(errors)
    # each column starts with an empty array of its shape, so no chunks gives an empty piece
    return {
        "features": np.concatenate([np.zeros((0, dim), np.float32)] + [c[1] for c in chunks]).astype(np.float32),
        "index": np.concatenate([np.zeros(0, np.int64)] + [c[0] for c in chunks]).astype(np.int64),
        "face_px": np.concatenate([np.zeros(0, np.float32)] + [c[3] for c in chunks]).astype(np.float32),
        "err_index": np.asarray(keys, np.int64),
        "err_msg": np.asarray([errors[k] for k in keys], dtype=str).reshape(len(keys)),
    }


def embed(
    wd: WorkDir,
    shard: tuple[int, int] = (0, 1),
    embedder_spec: str = "dlib",
    device: str = "cpu",
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: bool = False,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> StageResult:
    """Embed one contiguous shard of the manifest into ``features/part-i-of-n.npz``.

    While it runs, the records finished so far are saved every ``checkpoint_seconds`` as pieces
    in ``features/part-i-of-n.partial/``; a rerun after a kill (a pre-empted pod, a lost node)
    with the same input and settings embeds only the records after the last piece. Pieces end on
    the embedder's batch boundaries, so a resumed shard's features are the uninterrupted run's.
    """
    from .embed import get_embedder
    from .embed.runner import iter_embed_chunks

    t = time.perf_counter()
    man = wd.read_manifest()
    i, n = shard
    start, stop = shard_range(man["n"], i, n)
    embedder = get_embedder(embedder_spec, device=device, batch_size=batch_size)
    fp = fingerprint("embed", man["fingerprint"], i, n, start, stop, embedder.fingerprint())
    part = wd.part(i, n)
    meta_path = WorkDir.meta_of(part)
    partial = wd.partial(i, n)
    if wd.is_fresh(meta_path, fp, part):
        shutil.rmtree(partial, ignore_errors=True)  # left by a kill between the part and its cleanup
        return StageResult("embed", True, info={"shard": f"{i}/{n}", "records": stop - start})
    chunk = int(embedder.batch_size or 64)  # iter_embed_chunks' default chunk: keep the batches
    dim = int(embedder.dim)
    pieces, done = _load_pieces(partial, fingerprint("embed-pieces", fp, chunk))
    resumed = done
    if resumed:
        log.info("embed shard %d/%d: resuming after %d of %d records", i, n, resumed, stop - start)
    paths, records = man["paths"][start:stop], man["records"][start:stop]
    acc: list[tuple] = []
    last = time.monotonic()
    for idx, f, e, px in iter_embed_chunks(
        embedder, paths[done:], records[done:], num_workers=num_workers, chunk_size=chunk, progress=progress
    ):
        # the chunks' indices count from the first record not in a piece when this run began
        acc.append((idx + resumed, f, {k + resumed: v for k, v in e.items()}, px))
        if time.monotonic() - last >= checkpoint_seconds:
            piece = _piece(acc, dim)
            a = done
            done += len(piece["index"]) + len(piece["err_index"])
            atomic_save_npz(partial / f"piece-{a:09d}-{done:09d}.npz", **piece)
            pieces.append(piece)
            acc, last = [], time.monotonic()
    pieces.append(_piece(acc, dim))
    feats = np.concatenate([p["features"] for p in pieces]).reshape(-1, dim)
    index = np.concatenate([p["index"] for p in pieces]) + start
    face_px = np.concatenate([p["face_px"] for p in pieces])
    errors = {int(k): str(v) for p in pieces for k, v in zip(p["err_index"], p["err_msg"])}
    if len(index) + len(errors) != stop - start:
        raise RuntimeError(f"embed shard {i}/{n}: {len(index)} features + {len(errors)} errors for {stop - start} records")
    atomic_save_npz(part, features=feats, index=index, face_px=face_px)
    errs = {str(start + k): v for k, v in sorted(errors.items())}
    atomic_write_json(
        meta_path,
        {
            "fingerprint": fp,
            "manifest": man["fingerprint"],
            "shard": [i, n],
            "range": [start, stop],
            "embedder": embedder.describe(),
            "errors": errs,
            "seconds": time.perf_counter() - t,
        },
    )
    shutil.rmtree(partial, ignore_errors=True)
    info = {"shard": f"{i}/{n}", "records": stop - start, "errors": len(errs)}
    if resumed:
        info["resumed_after"] = resumed
    return StageResult("embed", False, time.perf_counter() - t, info)


# --------------------------------------------------------------------------- merge
def merge(wd: WorkDir, n_shards: int | None = None) -> StageResult:
    """Join the shard parts in input order into features.npy / .bin / -index.npy / .json."""
    t = time.perf_counter()
    man = wd.read_manifest()
    if n_shards is None:
        found = sorted({p.name.split("-of-")[1].split(".")[0] for p in (wd.root / "features").glob("part-*-of-*.npz")})
        if len(found) != 1:
            raise FileNotFoundError(
                f"cannot tell the shard count from {wd.root / 'features'} (found {found or 'no parts'}); pass --shards N"
            )
        n_shards = int(found[0])
    metas = []
    for i in range(n_shards):
        part = wd.part(i, n_shards)
        mp = WorkDir.meta_of(part)
        if not part.exists() or not mp.exists():
            raise FileNotFoundError(f"shard {i}/{n_shards} has not finished: {part} missing (rerun `facecluster embed --shard {i}/{n_shards}`)")
        m = read_json(mp)
        if m.get("manifest") != man["fingerprint"]:
            raise RuntimeError(f"shard {i}/{n_shards} was computed for a different input; rerun its embed stage")
        metas.append(m)
    emb = {(m["embedder"]["embedder"], m["embedder"]["fingerprint"]) for m in metas}
    if len(emb) != 1:
        raise RuntimeError(f"shards were embedded with different embedders: {sorted(emb)}")
    fp = fingerprint("merge", [m["fingerprint"] for m in metas])
    if wd.is_fresh(wd.features_meta, fp, wd.features_npy, wd.features_index):
        return StageResult("merge", True)
    feats, index, errors, face_px = [], [], {}, []
    for i, m in enumerate(metas):
        with np.load(wd.part(i, n_shards)) as z:
            feats.append(z["features"])
            index.append(z["index"])
            # parts written before face_px existed: no quality signal for the whole set
            face_px.append(z["face_px"] if "face_px" in z.files else None)
        errors.update(m["errors"])
    dim = metas[0]["embedder"]["dim"]
    feats = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
    index = np.concatenate(index) if index else np.zeros(0, np.int64)
    order = np.argsort(index, kind="stable")  # shards are contiguous, but never trust order
    feats, index = np.ascontiguousarray(feats[order], np.float32), index[order]
    if face_px and all(p is not None for p in face_px):
        atomic_save_npy(wd.features_face_px, np.concatenate(face_px).astype(np.float32)[order])
    else:
        wd.features_face_px.unlink(missing_ok=True)
    atomic_save_npy(wd.features_npy, feats)
    atomic_write_bytes(wd.features_bin, feats.astype("<f4").tobytes())  # learn-to-cluster format
    atomic_save_npy(wd.features_index, index)
    atomic_write_json(
        wd.features_meta,
        {
            "fingerprint": fp,
            "manifest": man["fingerprint"],
            "n_records": man["n"],
            "n_features": int(len(index)),
            "dim": int(dim),
            "embedder": metas[0]["embedder"],
            "shards": n_shards,
            "errors": dict(sorted(errors.items(), key=lambda kv: int(kv[0]))),
        },
    )
    return StageResult("merge", False, time.perf_counter() - t, {"features": int(len(index)), "errors": len(errors)})


# --------------------------------------------------------------------------- cluster
def cluster(
    wd: WorkDir, method: str, settings: dict[str, Any] | None = None, calibrate: bool = True
) -> StageResult:
    """Cluster the merged features with ``method`` → labels-<method>.npy/.json."""
    from .cluster import get_clusterer

    t = time.perf_counter()
    feats, _, fmeta = wd.read_features()
    embedder = fmeta.get("embedder", {}).get("embedder")
    settings = dict(settings or {})
    settings.setdefault("embedder", embedder)
    clusterer = get_clusterer(method, **settings)
    raw = getattr(clusterer, "wants_raw_features", False)
    mean = None if (raw or not calibrate) else calibration_mean(embedder)
    # the faces' sizes, for methods with the small-face rule (cluster/base.py)
    face_px = wd.read_face_px(len(feats)) if getattr(clusterer, "uses_face_px", False) else None
    fp = fingerprint(
        "cluster", fmeta["fingerprint"], method, clusterer.settings(), raw, calibrate,
        None if mean is None else mean.tolist(), getattr(clusterer, "weights_fingerprint", lambda: None)(),
        None if face_px is None else hashlib.sha256(face_px.tobytes()).hexdigest(),
    )
    out, meta_path = wd.labels(method), wd.labels_meta(method)
    if wd.is_fresh(meta_path, fp, out):
        return StageResult("cluster", True, info={"method": method})
    x = feats if raw else prepare_features(feats, mean)
    # every method's fit_predict takes face_px (cluster/base.py); None: no small-face rule
    labels = clusterer.fit_predict(x, face_px=face_px) if len(x) else np.zeros(0, np.int64)
    labels = contract.renumber(np.asarray(labels, np.int64))
    nonface = getattr(clusterer, "nonface_", None)
    no_face = [] if nonface is None or len(nonface) != len(labels) else np.flatnonzero(nonface).tolist()
    atomic_save_npy(out, labels)
    n_clusters = int(labels.max() + 1) if len(labels) else 0
    atomic_write_json(
        meta_path,
        {
            "fingerprint": fp,
            "method": method,
            "settings": clusterer.settings(),
            "calibration": None if mean is None else f"{embedder}_mean.npy",
            "face_px": face_px is not None,
            # feature rows whose crop holds no face (cluster/base.py, facecluster.nonface)
            "no_face": no_face,
            "timings": clusterer.timings_,
            "n_clusters": n_clusters,
            "seconds": time.perf_counter() - t,
        },
    )
    return StageResult("cluster", False, time.perf_counter() - t, {"method": method, "clusters": n_clusters})


# --------------------------------------------------------------------------- write
def no_face_records(index: np.ndarray, lmeta: dict) -> list[int]:
    """Input-record indices of the crops a clustering set apart as holding no face (labels-<method>.json
    records them as feature rows; absent in runs made before the test: none)."""
    return np.asarray(index, np.int64)[np.asarray(lmeta.get("no_face", []), np.int64)].tolist()


def write(wd: WorkDir, method: str, output: str | os.PathLike) -> tuple[list[dict], dict[str, Any]]:
    """Write the output JSON (atomic). Returns (records, summary)."""
    man = wd.read_manifest()
    _, index, fmeta = wd.read_features()
    if fmeta.get("manifest") != man["fingerprint"]:
        raise RuntimeError("features are from a different input: rerun embed and merge")
    lab_path = wd.labels(method)
    if not lab_path.exists():
        raise FileNotFoundError(f"{lab_path} not found: run `facecluster cluster --method {method}` first")
    labels = np.load(lab_path)
    lmeta = read_json(wd.labels_meta(method))
    errors = {int(k): v for k, v in fmeta["errors"].items()}
    no_face = no_face_records(index, lmeta)
    out = contract.build_output(man["records"], index, labels, errors, no_face=no_face)
    import json

    atomic_write_bytes(output, (json.dumps(out, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    ids = [r["cluster_id"] for r in out if r["cluster_id"] >= 0]
    sizes = np.bincount(ids) if ids else np.zeros(0, np.int64)
    summary = {
        "records": len(out),
        "clustered": len(ids),
        "failed": sum(1 for r in out if r["cluster_id"] < 0),
        "clusters": int(len(sizes)),
        "singletons": int((sizes == 1).sum()),
        "no_face": int(len(no_face)),
        "method": method,
        "settings": lmeta.get("settings", {}),
        "embedder": fmeta.get("embedder", {}).get("embedder"),
    }
    return out, summary


def print_summary(summary: dict[str, Any], file=None) -> None:
    file = file or sys.stderr  # looked up now: the stream in use (not the one at import time)
    print(
        f"facecluster: {summary['records']} records, {summary['clusters']} clusters "
        f"({summary['singletons']} singletons), {summary['failed']} failed "
        f"[method {summary['method']}, embedder {summary['embedder']}]",
        file=file,
    )
    if summary.get("no_face"):
        print(f"facecluster: {summary['no_face']} crops hold no face: each in a cluster of its own (copies together), "
              '"no_face": true in the output', file=file)
