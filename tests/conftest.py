"""Shared fixtures. Real face data lives in ../shared/data beside the repo (CI has it there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real face data not found at {p} (expected ../shared/data beside the repo)")
    return p


@pytest.fixture
def real_faces():
    """Function returning n image paths per identity from a set, sorted, deterministic."""

    def pick(set_name: str, identities: list[str], per_id: int) -> list[Path]:
        root = data_path(set_name)
        out = []
        for ident in identities:
            files = sorted((root / ident).iterdir())[:per_id]
            out.extend(files)
        return out

    return pick


def write_input(tmp: Path, records: list[dict]) -> Path:
    p = tmp / "input.json"
    p.write_text(json.dumps(records))
    return p


@pytest.fixture
def clustered_features():
    """(X, y): 30 well separated synthetic identities of varying size in 64-D."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 12, 30)
    centers = rng.normal(size=(30, 64))
    X = np.concatenate([c + 0.25 * rng.normal(size=(s, 64)) for c, s in zip(centers, sizes)]).astype(np.float32)
    y = np.repeat(np.arange(30), sizes)
    return X, y


def run_cli(*args: str) -> int:
    """Run the facecluster CLI in-process; return its exit code."""
    import sys

    from facecluster.cli import main

    old = sys.argv
    sys.argv = ["facecluster", *map(str, args)]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0
