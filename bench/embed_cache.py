"""Write the shared dlib feature cache ``/work/cache/feats/dlib-<set>.npz`` (outside the repo).

Every image of a labelled set (``../shared/data/<set>/<identity>/<file>``, identities and files in
sorted order) → raw dlib descriptor from our PyTorch port, with the embedder's default alignment.
Keys: ``feats`` (N, 128) float32, ``labels`` (N,) int64 (index of the sorted identity folder names),
``names`` (N,) str, ``paths`` (N,) absolute str, ``failed`` (F,) int64 indices of images that could
not be decoded/aligned (their ``feats`` rows are NaN), ``fingerprint`` (embedder fingerprint).
Files are written atomically (tmp + rename), then an empty ``READY-<set>`` marker is created.

Usage::

    nice -n 10 python bench/embed_cache.py orl glint18 lfw [--out /work/cache/feats]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facecluster.embed.dlib_resnet import DlibEmbedder
from facecluster.imageio import load_image
from facecluster.progress import bar

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def list_set(name: str) -> tuple[list[str], np.ndarray, list[str]]:
    root = DATA / name
    ids = sorted(d.name for d in root.iterdir() if d.is_dir())
    paths, labels, names = [], [], []
    for lab, ident in enumerate(ids):
        for f in sorted((root / ident).iterdir()):
            if f.is_file():
                paths.append(str(f.resolve()))
                labels.append(lab)
                names.append(ident)
    return paths, np.asarray(labels, np.int64), names


def run_set(name: str, out: Path, emb: DlibEmbedder, batch: int = 64) -> None:
    paths, labels, names = list_set(name)
    n = len(paths)
    feats = np.full((n, emb.dim), np.nan, np.float32)
    failed: list[int] = []
    t0 = time.perf_counter()
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            idx = [i for i, _ in pending]
            feats[idx] = emb.embed_batch(np.stack([c for _, c in pending]))
            pending.clear()

    with bar(f"dlib {name}", n) as pb:
        for i, p in enumerate(paths):
            try:
                pending.append((i, emb.prepare(load_image(p), {})))
            except Exception as exc:  # recorded, never silently dropped
                failed.append(i)
                print(f"FAILED {i} {p}: {exc}", file=sys.stderr)
            if len(pending) >= batch:
                flush()
            pb.advance(1)
        flush()
    dt = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".dlib-{name}.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez(
            f,
            feats=feats,
            labels=labels,
            names=np.asarray(names),
            paths=np.asarray(paths),
            failed=np.asarray(failed, np.int64),
            fingerprint=np.asarray(emb.fingerprint()),
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / f"dlib-{name}.npz")
    (out / f"READY-{name}").touch()
    print(f"{name}: {n} images, {len(failed)} failed, {dt:.0f} s ({n / dt:.1f} img/s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--out", type=Path, default=Path("/work/cache/feats"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    emb = DlibEmbedder(batch_size=64, threads=1)
    for s in args.sets:
        run_set(s, args.out, emb)


if __name__ == "__main__":
    main()
