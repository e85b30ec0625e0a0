"""Build every embedded work dir the quality scripts read (``bench/regimes.py``, ``scenarios.py``,
``crossfit.py``, ``train_shift.py``: their ``--root WORKDIRS``), in one resumable command.

    python bench/build_workdirs.py --lfw-originals SRC/data/lfw-deepfunneled --yale SRC/CroppedYale \
        --sets SETS --root WORKDIRS [--only lfw,glint18] [--embedder dlib]

Sources: ../shared/data (lfw, glint18, orl) and the two public snapshots ``bench/shift_sets.py``
names (github braun-steven/dfi-tensorflow ``data/lfw-deepfunneled/``; github Uranium2/recognition
at commit 55008b5f ``CroppedYale/``; e.g. ``git archive <commit> CroppedYale | tar x`` from a
clone). Nothing is downloaded here.

Steps: the crop-style sets under ``SETS`` (``shift_sets.build``: each image's variant is a pure
function of its name, so a rebuild gives the same bytes), an input JSON per set, then ``facecluster
run`` per set into ``WORKDIRS/<set>`` (prepare, embed, merge, the default clustering). The
training sets (``regimes.TRAIN_SETS``) come first so training can start while the validation ones
embed. A set whose ``features.npy`` exists is skipped; an interrupted one resumes through the
pipeline's own stage records. 2-core box, dlib: 119k faces, ~36 min of embedding
(docs/benchmarks.md §9, "Twenty-third session").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_input  # noqa: E402
import shift_sets  # noqa: E402
from regimes import TRAIN_SETS  # noqa: E402

#: sets read from ../shared/data as they are (folder per identity)
SHARED_SETS = ["lfw", "glint18", "orl"]
#: work dirs the validation regimes and scenarios read besides TRAIN_SETS; ``-val`` ones hold only
#: the validation identities of a crop style (``shift_sets`` writes their inputs)
VALIDATION_SETS = ["lfw-lowq", "lfw-mixed-val", "lfw-detbox-val", "lfw-night-val", "yale", "orl", "glint-clips"]
#: built last: ``lfw-sidelight`` (a lighting regime of training identities: the dlib cohort's
#: side-light part is drawn from it, weights/dlib_cohort.md; opt-in tuning regimes) and
#: ``lfw-night`` (every identity as a night camera sees it: opt-in tuning regimes of its training
#: identities; its validation identities are ``lfw-night-val``'s) and ``lfw-lowres`` (far,
#: compressed faces: the cohort's low-quality part and opt-in tuning regimes; thirty-third session)
STUDY_SETS = ["lfw-sidelight", "lfw-night", "lfw-lowres"]
#: the shift_sets regime that writes each ``-val`` input
_VAL_SOURCE = {"lfw-mixed-val": "lfw-mixed", "lfw-detbox-val": "lfw-detbox", "lfw-night-val": "lfw-night"}


def plan(only: list[str] | None = None) -> list[str]:
    """The work dirs to build, training sets first, then the validation-only ones, then the
    sets under study."""
    order = list(dict.fromkeys(TRAIN_SETS + VALIDATION_SETS + STUDY_SETS))
    if only:
        unknown = sorted(set(only) - set(order))
        if unknown:
            raise SystemExit(f"unknown sets {unknown}; choose from {', '.join(order)}")
        order = [s for s in order if s in only]
    return order


def input_json(name: str, a: argparse.Namespace) -> Path:
    """Write (if missing) and return the input JSON of work dir ``name``."""
    a.sets.mkdir(parents=True, exist_ok=True)
    out = a.sets / f"{name}.json"
    if out.exists():
        return out
    if name in SHARED_SETS:
        out.write_text(json.dumps(make_input.records(a.shared / name)[0]))  # labels: the image's folder
        return out
    regime = _VAL_SOURCE.get(name, name)
    src = a.yale if regime.startswith("yale") else a.lfw_originals if regime.startswith("lfw-") else a.shared / "glint18"
    if src is None:
        raise SystemExit(f"{name} needs {'--yale' if regime.startswith('yale') else '--lfw-originals'}")
    ns = SimpleNamespace(lfw_originals=a.lfw_originals, yale=a.yale, glint=a.shared / "glint18")
    shift_sets.build(regime, ns, a.sets)
    if regime != name:
        shift_sets.write_validation_input(regime, a.sets)
    return out


def _cli() -> str:
    """The ``facecluster`` command of this interpreter's environment (a venv need not be on PATH)."""
    here = Path(sys.executable).parent / "facecluster"
    return str(here) if here.exists() else "facecluster"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-originals", type=Path, help="LFW deep-funneled 250x250 originals, folder per identity")
    ap.add_argument("--yale", type=Path, help="Extended Yale B CroppedYale/ folder")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"), help="the team's data folder (lfw, glint18, orl)")
    ap.add_argument("--sets", type=Path, required=True, help="where the crop-style images and input JSONs go")
    ap.add_argument("--root", type=Path, required=True, help="where the work dirs go (WORKDIRS/<set>)")
    ap.add_argument("--only", help="comma-separated subset of the sets")
    ap.add_argument("--embedder", default="dlib", help="facecluster run --embedder (e.g. mbf: its own WORKDIRS)")
    a = ap.parse_args()
    for name in plan(a.only.split(",") if a.only else None):
        wd = a.root / name
        if (wd / "features.npy").exists():
            print(f"{name:16s} embedded already", flush=True)
            continue
        inp = input_json(name, a)
        t = time.time()
        cmd = [_cli(), "run", str(inp), "-o", str(wd / "output.json"), "-w", str(wd), "--embedder", a.embedder]
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
        n = len(json.loads(inp.read_text()))
        print(f"{name:16s} {n:6d} faces  rc {rc}  {time.time() - t:.0f} s", flush=True)
        if rc not in (0, 3):  # 3: some records unreadable, reported per record in output.json
            raise SystemExit(f"facecluster run failed for {name} (exit {rc})")


if __name__ == "__main__":
    main()
