"""bench/regimes.py's opt-in all-styles regimes: every crop style of the same people in one batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import cluster_scale  # noqa: E402
import regimes  # noqa: E402

from facecluster.train.splits import is_validation_identity  # noqa: E402
from facecluster.workdir import WorkDir  # noqa: E402

# two validation and one training identity of the project-wide split (checked below)
VAL, TRAIN = ["Tom_Hanks", "Keanu_Reeves"], ["George_W_Bush"]


def _workdir(root: Path, name: str, people: list[str], per: int, px: float, seed: int) -> None:
    """A merged work dir ``root/name`` of ``per`` faces per person (folder = identity)."""
    x = np.random.default_rng(seed).normal(size=(len(people) * per, 128)).astype(np.float32)
    wd = WorkDir(cluster_scale.make_workdir(root / name, x))
    recs = [{"img_path": f"/data/{name}/{p}/{i:04d}.jpg"} for p in people for i in range(per)]
    wd.manifest.write_text(json.dumps({"records": recs}))
    np.save(wd.features_face_px, np.full(len(x), px, np.float32))


def test_all_styles_keeps_one_name_per_person_across_styles(tmp_path):
    assert all(is_validation_identity("lfw", p) for p in VAL) and not any(is_validation_identity("lfw", p) for p in TRAIN)
    _workdir(tmp_path, "lfw", VAL + TRAIN, 3, 40.0, 0)
    _workdir(tmp_path, "glint-lowres", VAL + TRAIN, 5, 14.0, 1)
    _workdir(tmp_path, "orl", ["s1", "s2"], 2, 30.0, 2)

    val = regimes.validation_regimes(tmp_path, only=[regimes.ALL_STYLES_VAL], with_px=True)
    assert [v[0] for v in val] == [regimes.ALL_STYLES_VAL]
    _, x, n, px = val[0]
    # validation people only, from every style that exists (missing sets skipped), ORL prefixed
    assert len(x) == len(n) == len(px) == 2 * 3 + 2 * 5 + 2 * 2
    assert sorted(set(n.tolist())) == sorted(VAL + ["orl:s1", "orl:s2"])
    assert (n == "Tom_Hanks").sum() == 3 + 5  # one person across two styles
    assert sorted(set(px.tolist())) == [14.0, 30.0, 40.0]

    tune = regimes.tuning_regimes(tmp_path, only=[regimes.ALL_STYLES_TRAIN])
    assert [t[0] for t in tune] == [regimes.ALL_STYLES_TRAIN]
    assert sorted(set(tune[0][2].tolist())) == TRAIN and len(tune[0][1]) == 3 + 5
    # opt-in: not part of the default lists
    assert regimes.ALL_STYLES_VAL not in [v[0] for v in regimes.validation_regimes(tmp_path)]
    assert regimes.ALL_STYLES_TRAIN not in [t[0] for t in regimes.tuning_regimes(tmp_path)]
