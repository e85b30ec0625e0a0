"""``facecluster train mean``: estimate an embedder's calibration mean (see calibration.py).

The shipped ``weights/dlib_mean.npy`` was made with::

    facecluster run lfw.json -o lfw-out.json -w lfw-work        # embed all of LFW
    facecluster train mean -w lfw-work -o shared/facecluster/weights/dlib_mean.npy

Only training identities (``splits.is_validation_identity`` false) are used, so validation
numbers stay honest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer


def estimate_mean(feats: np.ndarray) -> np.ndarray:
    """Mean of the L2-normalised rows of ``feats`` (N, D) → (D,) float32."""
    from ..knn import l2_normalize

    if len(feats) == 0:
        raise ValueError("no features to estimate a mean from")
    return l2_normalize(feats).mean(axis=0).astype(np.float32)


def register(app: typer.Typer) -> None:
    @app.command("mean")
    def train_mean(
        work_dir: Path = typer.Option(..., "--work-dir", "-w", help="An embedded work dir (after merge)."),
        output: Path = typer.Option(..., "-o", "--output", help="Where to write the (D,) float32 .npy mean."),
        set_name: str = typer.Option("lfw", "--set", help="Data-set name for the identity split."),
        include_validation: bool = typer.Option(False, "--include-validation", help="Also use held-out identities."),
    ):
        """Estimate the calibration mean vector of an embedder from embedded faces."""
        from ..evaluate import labels_from
        from ..workdir import WorkDir, atomic_save_npy
        from .splits import is_validation_identity

        wd = WorkDir(work_dir)
        feats, index, meta = wd.read_features()
        man = wd.read_manifest()
        names = labels_from([man["records"][i] for i in index], "folder")
        keep = np.array([include_validation or not is_validation_identity(set_name, n) for n in names], bool)
        mean = estimate_mean(feats[keep])
        atomic_save_npy(output, mean)
        typer.echo(f"mean of {int(keep.sum())} faces ({meta['embedder']['embedder']}, {feats.shape[1]}-D) → {output}")
