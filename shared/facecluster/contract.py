"""The JSON contract: what users hand us and what they get back.

Input: a JSON array of objects, each with ``img_path`` (absolute, or relative to the
input file's folder). Every other key is kept untouched. Optional ``keypoints``: five
``[x, y]`` pairs in pixel coordinates of the crop (left eye, right eye, nose tip,
left mouth corner, right mouth corner), used by embedders that need landmarks.

Output: the same array, same order, same keys, plus ``cluster_id`` (int >= 0, one per
person, numbered by first appearance). A record whose image could not be read or
embedded gets ``cluster_id = -1`` and an ``error`` string. A crop that holds no face (a
detector's false positive; :mod:`facecluster.nonface`) keeps a ``cluster_id`` of its own and gets
``"no_face": true``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

# Exit codes (documented in README.md).
EXIT_OK = 0  #: every record clustered
EXIT_ERROR = 1  #: unexpected failure (a bug, out of memory, ...); nothing trustworthy written
EXIT_INVALID = 2  #: invalid input or usage: nothing written
EXIT_PARTIAL = 3  #: output written, but some records failed (cluster_id -1 + error)

RESERVED_KEYS = ("cluster_id", "error", "no_face")


class ContractError(ValueError):
    """Invalid input file: the message is one line and names the record."""


def load_input(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """Read and validate an input JSON file.

    Returns
    -------
    records : list of dict
        The records exactly as given (extra keys kept).
    paths : list of str
        Absolute image path of each record (relative ones resolved against the input file's folder).

    Raises
    ------
    ContractError
        Invalid JSON, not a list, a record that is not an object, a missing/empty/non-string
        ``img_path``, or malformed ``keypoints``.
    """
    path = Path(path)
    try:
        # utf-8-sig: a leading byte-order mark (Windows tools write one) is skipped, as RFC 8259
        # allows; without one it reads exactly as utf-8.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ContractError(f"{path}: input file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ContractError(f"{path}: cannot read input file: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ContractError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return validate_records(data, base_dir=path.resolve().parent, source=str(path))


def validate_records(data: Any, base_dir: Path, source: str = "input") -> tuple[list[dict], list[str]]:
    """Validate already-parsed input (see :func:`load_input`)."""
    if not isinstance(data, list):
        raise ContractError(f"{source}: expected a JSON array of records, got {type(data).__name__}")
    paths: list[str] = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ContractError(f"{source}: record {i}: expected an object, got {type(rec).__name__}")
        p = rec.get("img_path")
        if "img_path" not in rec:
            raise ContractError(f"{source}: record {i}: missing 'img_path'")
        if not isinstance(p, str) or not p.strip():
            raise ContractError(f"{source}: record {i}: 'img_path' must be a non-empty string, got {p!r}")
        if "keypoints" in rec and rec["keypoints"] is not None:
            _check_keypoints(rec["keypoints"], i, source)
        p = os.path.expanduser(p)
        paths.append(os.path.normpath(p if os.path.isabs(p) else os.path.join(base_dir, p)))
    return data, paths


def _check_keypoints(kps: Any, i: int, source: str) -> None:
    ok = isinstance(kps, list) and len(kps) == 5 and all(
        isinstance(pt, (list, tuple)) and len(pt) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt)
        for pt in kps
    )
    if not ok:
        raise ContractError(
            f"{source}: record {i}: 'keypoints' must be 5 [x, y] pairs "
            "(left eye, right eye, nose tip, left mouth corner, right mouth corner)"
        )


def renumber(labels: np.ndarray) -> np.ndarray:
    """Renumber labels by first appearance (0, 1, 2, ...), keeping negative labels as -1."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    out = np.full(labels.shape, -1, dtype=np.int64)
    valid = labels >= 0
    if valid.any():
        uniq, first, inv = np.unique(labels[valid], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        out[valid] = rank[inv]
    return out


def build_output(
    records: list[dict], row_index: np.ndarray, labels: np.ndarray, errors: dict[int, str],
    no_face: Iterable[int] = (),
) -> list[dict]:
    """Attach ``cluster_id`` (and ``error``) to every input record, in input order.

    Parameters
    ----------
    records : the input records (not modified).
    row_index : (M,) int, input-record index of each labelled row.
    labels : (M,) int, cluster label of each row (any ints; renumbered by first appearance in input order).
    errors : {record index: message} for records that failed.
    no_face : record indices whose crop holds no face (they get ``"no_face": true``).
    """
    n = len(records)
    full = np.full(n, -1, dtype=np.int64)
    full[np.asarray(row_index, dtype=np.int64)] = np.asarray(labels, dtype=np.int64)
    full = renumber(full)
    no_face = set(int(i) for i in no_face)
    return [output_record(rec, int(full[i]), errors.get(i), i in no_face) for i, rec in enumerate(records)]


def output_record(rec: dict, cluster_id: int, error: str | None = None, no_face: bool = False) -> dict:
    """One output record (a run's, or a collection batch's with its stable id): the input's keys
    in their order (a stale ``error`` / ``no_face`` from the input dropped), ``cluster_id`` (-1
    with ``error``), ``"no_face": true`` for a crop that holds no face, and an ``error`` for a
    record without an id."""
    r = dict(rec)
    r.pop("error", None)
    r.pop("no_face", None)
    r["cluster_id"] = -1 if error is not None else int(cluster_id)
    if no_face:
        r["no_face"] = True
    if error is not None:
        r["error"] = error
    elif cluster_id < 0:
        r["error"] = "no embedding for this record"
    return r
