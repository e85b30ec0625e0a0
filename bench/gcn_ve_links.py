"""Which of gcn-ve's face→peak links tau and the similarity floor cut, on training identities
against held-out ones (docs/benchmarks/gcn_ve.md §11).

tau compares GCN-V's own output features; the shipped networks were trained on the training
identities, so a threshold on their outputs looks safer there than on new people. Per regime:
faces whose chosen peak is their own person, and how many of those links tau / the floor cut.

    python bench/gcn_ve_links.py --root /work/extdata/work \\
        --regimes glint-lowres-train,glint-lowres-val,lfw-loose-train21,lfw-loose-val21 [--set tau=0.65]

The small-face rule is off here (every face reaches GCN-E), so counts are of all faces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import parse_variant, run_method
from regimes import tuning_regimes, validation_regimes


def audit(x: np.ndarray, names: np.ndarray, **settings) -> dict:
    fitted: list = []
    run_method("gcn-ve", x, names, "dlib", clusterer_out=fitted, **settings)
    c = fitted[0]
    y = np.unique(names, return_inverse=True)[1]
    peak, by_tau, kept = c.peak_, c.link_tau_, c.link_kept_
    has = peak >= 0
    same = has & (y[np.where(has, peak, 0)] == y)
    return {
        "faces": len(y),
        "own_person_peaks": int(same.sum()),
        "cut_by_tau": int((same & ~by_tau).sum()),
        "cut_by_floor": int((same & by_tau & ~kept).sum()),
        "other_person_links_kept": int((has & ~same & kept).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--regimes", required=True, help="comma-separated tuning and/or validation regimes")
    ap.add_argument("--set", action="append", default=[], help="gcn-ve setting key=value (repeatable)")
    a = ap.parse_args()
    only = a.regimes.split(",")
    settings = parse_variant("gcn-ve:" + ",".join(a.set))[1]
    pool = {r[0]: r for r in tuning_regimes(a.root, only) + validation_regimes(a.root, only)}
    for name in only:
        if name not in pool:
            print(f"{name:28s} (no work dir)")
            continue
        r = audit(pool[name][1], pool[name][2], **settings)
        k = max(r["own_person_peaks"], 1)
        print(
            f"{name:28s} faces {r['faces']:6d}  own-person peaks {r['own_person_peaks']:6d}  "
            f"cut by tau {r['cut_by_tau']:5d} ({100 * r['cut_by_tau'] / k:4.1f} %)  "
            f"by floor {r['cut_by_floor']:5d} ({100 * r['cut_by_floor'] / k:4.1f} %)  "
            f"other-person links kept {r['other_person_links_kept']:4d}"
        )


if __name__ == "__main__":
    main()
