"""Ground-truth labels for evaluation and the metrics of an output file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .metrics import evaluate as _evaluate


def labels_from(records: list[dict[str, Any]], spec: str = "folder") -> list[str]:
    """Ground-truth identity of each record.

    ``spec`` = "folder" (name of the image's parent folder, e.g. ``lfw/<Identity>/x.jpg``)
    or "field:NAME" (the record's ``NAME`` key)."""
    if spec == "folder":
        return [os.path.basename(os.path.dirname(os.path.normpath(r["img_path"]))) for r in records]
    if spec.startswith("field:"):
        key = spec[len("field:"):]
        missing = [i for i, r in enumerate(records) if key not in r]
        if missing:
            raise ValueError(f"record {missing[0]} has no {key!r} field ({len(missing)} records lack it)")
        return [str(r[key]) for r in records]
    raise ValueError(f"labels must be 'folder' or 'field:NAME', got {spec!r}")


def evaluate_records(records: list[dict[str, Any]], spec: str = "folder") -> dict[str, Any]:
    """Metrics of an output file's ``cluster_id`` against labels; failed records are left out
    (counted in ``failed``)."""
    ok = [r for r in records if isinstance(r.get("cluster_id"), int) and r["cluster_id"] >= 0]
    if not ok:
        raise ValueError("no clustered records to evaluate")
    gt = np.unique(np.asarray(labels_from(ok, spec)), return_inverse=True)[1]
    pred = np.asarray([r["cluster_id"] for r in ok], np.int64)
    res = _evaluate(gt, pred)
    res["failed"] = len(records) - len(ok)
    return res
