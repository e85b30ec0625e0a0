"""``facecluster train mean``: estimate an embedder's calibration mean (see calibration.py).

The shipped ``weights/dlib_mean.npy`` was made with::

    facecluster run lfw.json -o lfw-out.json -w lfw-work        # embed all of LFW
    facecluster train mean -w lfw-work -o shared/facecluster/weights/dlib_mean.npy

Only training identities (``splits.is_validation_identity`` false) are used, so validation
numbers stay honest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer


def estimate_mean(feats: np.ndarray) -> np.ndarray:
    """Mean of the L2-normalised rows of ``feats`` (N, D) → (D,) float32."""
    from ..knn import l2_normalize

    if len(feats) == 0:
        raise ValueError("no features to estimate a mean from")
    return l2_normalize(feats).mean(axis=0).astype(np.float32)


def register(app: typer.Typer) -> None:
    register_floor(app)
    register_cohort(app)

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


# --------------------------------------------------------------------------------------------
# similarity floor and near-duplicate cosine (issue 11)
# --------------------------------------------------------------------------------------------
#: the recall-safe floor proposal: the highest similarity (0.005 steps) that still keeps this
#: share of the same-person pairs among each face's nearest neighbours (``similarity_stats``).
#: It is the lower end of the candidates; the shipped value is chosen among candidates by the
#: worst tuning regime (``bench/regimes.py --tuning``), see calibration.LINK_FLOOR_BY_EMBEDDER.
FLOOR_SAME_SHARE = 0.99


def similarity_stats(feats: np.ndarray, names: np.ndarray, k: int = 80) -> dict:
    """Same-person and different-person cosine similarities among each face's ``k`` nearest
    neighbours (plain L2-normalised descriptors; self excluded) — the pairs a clustering method
    can link, so the part of the distributions that matters.

    feats : (N, D) descriptors; names : (N,) identity labels. Returns a JSON-able dict of
    quantiles, the share of different-person pairs at or above candidate floors, the share of
    same-person pairs kept by them, the largest different-person cosine, and the proposed floor
    (highest 0.005-step value keeping at least ``FLOOR_SAME_SHARE`` of same-person pairs: the
    lowest candidate worth trying)."""
    from ..knn import knn, l2_normalize

    x = l2_normalize(np.asarray(feats, np.float32))
    names = np.asarray(names)
    sims, ids = knn(x, min(k + 1, len(x)), normalize=False, backend="auto", device="cpu")
    rows = np.arange(len(x))[:, None]
    other = ids != rows
    same = (names[ids] == names[:, None]) & other
    diff = (names[ids] != names[:, None]) & other
    s_same, s_diff = sims[same], sims[diff]
    grid = np.round(np.arange(0.80, 0.995, 0.005), 3)
    share_diff = [(float(g), float((s_diff >= g).mean()) if len(s_diff) else 0.0) for g in grid]
    share_same = [(float(g), float((s_same >= g).mean()) if len(s_same) else 1.0) for g in grid]
    proposed = max((g for g, sh in share_same if sh >= FLOOR_SAME_SHARE), default=float(grid[0]))
    q = [0.5, 0.9, 0.99, 0.999, 0.9999]
    return {
        "n": int(len(x)),
        "k": int(k),
        "same_pairs": int(len(s_same)),
        "diff_pairs": int(len(s_diff)),
        "same_quantiles": {str(a): float(np.quantile(s_same, 1 - a)) for a in q} if len(s_same) else {},
        "diff_quantiles": {str(a): float(np.quantile(s_diff, a)) for a in q} if len(s_diff) else {},
        "diff_max": float(s_diff.max()) if len(s_diff) else None,
        "diff_share_at": dict((str(g), sh) for g, sh in share_diff),
        "same_share_at": dict((str(g), sh) for g, sh in share_same),
        "proposed_floor": proposed,
    }


def register_floor(app: typer.Typer) -> None:
    @app.command("floor")
    def train_floor(
        work_dir: list[Path] = typer.Option(..., "--work-dir", "-w", help="Embedded work dirs (repeatable); labels = image folder."),
        set_name: list[str] = typer.Option(None, "--set", help="Identity-split name per work dir (lfw | glint18 | orl); default lfw."),
        k: int = typer.Option(80, help="Neighbours per face whose similarities are measured."),
        output: Path = typer.Option(None, "-o", "--output", help="Write the statistics as JSON here."),
    ):
        """Measure same/different-person similarities among nearest neighbours of the training
        identities and propose the similarity floor for gcn-v / gcn-ve / adanets."""
        import json

        from ..evaluate import labels_from
        from ..workdir import WorkDir
        from .splits import validation_mask

        out = {}
        for i, wdp in enumerate(work_dir):
            wd = WorkDir(wdp)
            feats, index, _ = wd.read_features()
            man = wd.read_manifest()
            names = np.asarray(labels_from([man["records"][j] for j in index], "folder"))
            sn = set_name[i] if set_name and i < len(set_name) else "lfw"
            keep = ~validation_mask(sn, names)
            out[str(wdp)] = similarity_stats(feats[keep], names[keep], k)
            r = out[str(wdp)]
            typer.echo(f"{wdp}: {r['n']} faces, different-person max {r['diff_max']}, proposed floor {r['proposed_floor']}")
        if output:
            output.write_text(json.dumps(out, indent=1))


# --------------------------------------------------------------------------------------------
# cohort for score normalisation (facecluster.cohort)
# --------------------------------------------------------------------------------------------
def register_cohort(app: typer.Typer) -> None:
    @app.command("cohort")
    def train_cohort(
        work_dir: list[Path] = typer.Option(..., "--work-dir", "-w", help="Embedded work dirs (repeatable, one per crop style); labels = image folder."),
        output: Path = typer.Option(..., "-o", "--output", help="Where to write the cohort .npz (weights/<embedder>_cohort.npz)."),
        k: int = typer.Option(10, help="Cohort neighbours averaged into a face's level."),
        seed: int = typer.Option(0, help="Seed of the one-face-per-person draw."),
        part: list[str] = typer.Option(None, "--part", help="LABEL[:MARGIN]=WORK_DIR (repeatable): a part of the cohort from the "
                                        "training identities of a work dir of one look, e.g. side-light=WORK/lfw-sidelight or "
                                        "night:0.0125=WORK/lfw-night (Cohort.parts; MARGIN: this part's, else --part-margin)."),
        part_margin: float = typer.Option(0.01, help="Margin of a --part that names none (cosine units above the part's reference)."),
        part_seed: Optional[int] = typer.Option(None, help="Seed of the parts' one-face-per-person draw (default: --seed)."),
    ):
        """Build an embedder's score-normalisation cohort from the training identities of
        embedded work dirs: one face per person, drawn among all its faces in every given crop
        style, and the mean level of all those faces (facecluster.cohort). Each ``--part`` adds
        one face per training person of its work dir as a part with its own reference."""
        import json
        from dataclasses import replace

        from ..cohort import build_cohort, build_part, save_cohort
        from ..workdir import atomic_write_json

        xs, ns, embedders = _training_faces(work_dir)
        x, names = np.concatenate(xs), np.concatenate(ns)
        co, info = build_cohort(x, names, k=k, seed=seed)
        parts, info["parts"] = [], []
        for spec in part or []:
            label, sep, path = spec.partition("=")
            label, _, m = label.partition(":")
            if not sep or not label or not path:
                raise typer.BadParameter(f"--part wants LABEL[:MARGIN]=WORK_DIR, got {spec!r}")
            try:
                margin = float(m) if m else part_margin
            except ValueError:
                raise typer.BadParameter(f"--part {spec!r}: MARGIN {m!r} is not a number") from None
            px, pn, pe = _training_faces([Path(path)])
            embedders |= pe
            p, pinfo = build_part(px[0], pn[0], x, names, margin=margin, label=label, k=k, seed=seed if part_seed is None else part_seed)
            parts.append(p)
            info["parts"].append(dict(pinfo, work_dir=Path(path).name))
        if len(embedders) != 1:
            raise typer.BadParameter(f"work dirs from different embedders: {sorted(embedders)}")
        co = replace(co, parts=tuple(parts))
        save_cohort(output, co)
        info["embedder"] = embedders.pop()
        info["work_dirs"] = [p.name for p in work_dir]
        if not info["parts"]:
            del info["parts"]
        atomic_write_json(output.with_suffix(".json"), info)
        typer.echo(json.dumps(info))


def _training_faces(work_dirs: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray], set[str]]:
    """Features and identity names (image folder) of the training identities of each work dir,
    and the set of embedders that made them."""
    from ..evaluate import labels_from
    from ..workdir import WorkDir
    from .splits import validation_mask

    xs, ns, embedders = [], [], set()
    for wdp in work_dirs:
        wd = WorkDir(wdp)
        feats, index, meta = wd.read_features()
        man = wd.read_manifest()
        names = np.asarray(labels_from([man["records"][j] for j in index], "folder")).astype(str)
        keep = ~validation_mask("any", names)  # the split depends on the identity name only
        xs.append(feats[keep])
        ns.append(names[keep])
        embedders.add(meta["embedder"]["embedder"])
    return xs, ns, embedders
