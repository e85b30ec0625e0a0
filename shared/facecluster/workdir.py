"""The work directory: the one place stages exchange files (a shared volume in Kubernetes).

Layout (see docs/architecture.md)::

    manifest.json                 input records, resolved paths, input fingerprint
    features/part-00000-of-00002.npz (+ .meta.json)   one per recognition shard
    features/part-00000-of-00002.partial/             a running shard's finished pieces (removed
                                                      when the part is written)
    features.npy  features.bin  features-index.npy  features.json
    labels-<method>.npy  labels-<method>.json

Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, so a killed stage never leaves a half-written file that a later stage
(or a rerun) would trust. Each artifact carries a fingerprint of everything it was
computed from; a stage is skipped only when the stored fingerprint matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__


def fingerprint(*parts: Any) -> str:
    """sha256 over a canonical JSON encoding of ``parts`` plus the package version."""
    h = hashlib.sha256()
    h.update(json.dumps([__version__, *parts], sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; give the usual umask-based mode so other stages' users
        # (containers run as another uid on a shared volume) can read them
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """Parse ``"I/N"`` (0-based I). ``None`` means the whole input, or the shard named by the
    ``JOB_COMPLETION_INDEX`` variable of a Kubernetes Indexed Job with N from ``FACECLUSTER_SHARDS``."""
    if spec is None or spec == "":
        idx = os.environ.get("JOB_COMPLETION_INDEX")
        if idx is None:
            return 0, 1
        n = os.environ.get("FACECLUSTER_SHARDS")
        if n is None:
            raise ValueError("JOB_COMPLETION_INDEX is set but FACECLUSTER_SHARDS (the shard count) is not")
        spec = f"{idx}/{n}"
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {spec!r}: need 0 <= I < N")
    return i, n


def shard_range(n_items: int, i: int, n: int) -> tuple[int, int]:
    """Contiguous [start, stop) slice of shard i of n (sizes differ by at most one)."""
    base, extra = divmod(n_items, n)
    start = i * base + min(i, extra)
    return start, start + base + (1 if i < extra else 0)


class WorkDir:
    """Paths and stage bookkeeping of one work directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- layout --------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def part(self, i: int, n: int) -> Path:
        return self.root / "features" / f"part-{i:05d}-of-{n:05d}.npz"

    def partial(self, i: int, n: int) -> Path:
        """Folder of the finished pieces of shard ``i`` of ``n`` while it runs: a killed embed
        resumes after the last piece instead of starting the shard again."""
        return self.root / "features" / f"part-{i:05d}-of-{n:05d}.partial"

    @property
    def features_npy(self) -> Path:
        return self.root / "features.npy"

    @property
    def features_bin(self) -> Path:
        return self.root / "features.bin"

    @property
    def features_index(self) -> Path:
        return self.root / "features-index.npy"

    @property
    def features_face_px(self) -> Path:
        """(M,) float32 shorter side of each face crop in its file's pixels, rows as features.npy."""
        return self.root / "features-face-px.npy"

    @property
    def features_meta(self) -> Path:
        return self.root / "features.json"

    def labels(self, method: str) -> Path:
        return self.root / f"labels-{method}.npy"

    def labels_meta(self, method: str) -> Path:
        return self.root / f"labels-{method}.json"

    @staticmethod
    def meta_of(path: Path) -> Path:
        return path.with_name(path.name + ".meta.json")

    # -- bookkeeping -----------------------------------------------------------------------
    def is_fresh(self, meta_path: Path, fp: str, *artifacts: Path) -> bool:
        """True if ``meta_path`` records fingerprint ``fp`` and every artifact exists."""
        try:
            meta = read_json(meta_path)
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return meta.get("fingerprint") == fp and all(a.exists() for a in artifacts)

    def read_manifest(self) -> dict:
        try:
            return read_json(self.manifest)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.manifest} not found: run `facecluster prepare INPUT.json --work-dir {self.root}` first"
            ) from None

    def read_features(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """Return (features (M, D) float32, record index (M,) int64, features.json dict)."""
        if not self.features_meta.exists():
            raise FileNotFoundError(
                f"{self.features_meta} not found: run `facecluster embed` and `facecluster merge` first"
            )
        meta = read_json(self.features_meta)
        feats = np.load(self.features_npy, mmap_mode=None).astype(np.float32, copy=False)
        index = np.load(self.features_index)
        return feats, index, meta

    def read_face_px(self, n: int) -> np.ndarray | None:
        """The quality signal of the merged features ((n,) float32), None when the work dir has
        none (features merged by an older version) or it does not match ``n`` rows."""
        try:
            px = np.load(self.features_face_px)
        except FileNotFoundError:
            return None
        return px.astype(np.float32) if px.shape == (n,) else None
