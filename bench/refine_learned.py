"""Does the default method's refinement close the learned methods' recall gap? (issue 11)

    python bench/refine_learned.py --root WORKDIRS [--tuning] [--regimes R1,R2] \
        [--method gcn-v --method gcn-ve --method adanets] [--floor 0.94] [--exact-knn] [--cache DIR] [--json OUT]

Each learned method runs once per regime with its defaults (similarity floor on) but
``refine=false`` and ``join_duplicates=false``; then every refinement variant in ``VARIANTS``
is applied to its labels with :func:`facecluster.cluster.refine.refine_learned` on the kNN lists
the method searched (``knn_``, re-scored with the plain cosine), and the near-duplicate rule
last, as ``fit_predict`` does with ``refine=true``. So a grid of variants costs one method run
per regime. ``infomap`` (the default) is scored on the same regimes for the gap.

``--tuning`` uses the training identities' regimes (``bench/regimes.tuning_regimes``), the
only ones settings may be chosen on; without it the validation regimes (report only).
Prints one line per (regime, method, variant) and, per method and variant, the worst regime's
BCubed F, its gap to infomap on that regime's worst gap, and the most faces in mixed clusters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_method  # noqa: E402
from facecluster.cluster import get_clusterer  # noqa: E402
from facecluster.cluster.base import join_near_duplicates  # noqa: E402
from facecluster.cluster.refine import plain_knn_from, refine_learned  # noqa: E402
from facecluster.knn import knn, l2_normalize  # noqa: E402
from facecluster.metrics import evaluate  # noqa: E402
from regimes import tuning_regimes, validation_regimes  # noqa: E402

#: refinement variants: name -> refine_settings overrides (None: no refinement; "default": the
#: learned methods' defaults; the others change one thing from Infomap's own settings)
VARIANTS: dict[str, dict | None] = {
    "off": None,
    "default": {},
    "infomap-steps": {"attach_share": 0.8},
    "merge-only": {"attach_max_size": 0, "attach_frac": 0.0, "attach_share": 0.8},  # the rest: as "infomap-steps"
    "merge+attach": {"attach_frac": 0.0, "attach_share": 0.8},
    "no-merge": {"merge_fragments": False, "attach_share": 0.8},
    "merge0.92": {"merge_min_sim": 0.92, "attach_share": 0.8},
    "merge0.90": {"merge_min_sim": 0.90, "attach_share": 0.8},
    "attach0.92": {"attach_min_sim": 0.92, "attach_share": 0.8},
    "margin0.02": {"attach_rel_margin": 0.02, "attach_share": 0.8},
    "share0.6": {"merge_share": 0.6, "attach_share": 0.8},
    "links0.10": {"merge_min_links": 0.10, "attach_share": 0.8},
    "merge0.93": {"merge_min_sim": 0.93, "attach_share": 0.8},
    "merge0.94": {"merge_min_sim": 0.94, "attach_share": 0.8},
    "mergek20": {"merge_k": 20, "attach_share": 0.8},
    "merge0.93k20": {"merge_min_sim": 0.93, "merge_k": 20, "attach_share": 0.8},
    "attach-share0.5": {"attach_share": 0.5},
    "attach-share0.6": {"attach_share": 0.6},
    "attach-share0.7": {"attach_share": 0.7},
    "attach-size5": {"attach_max_size": 5, "attach_share": 0.8},
    "frac0.1": {"attach_frac": 0.1},
    "frac0.2": {"attach_frac": 0.2},
    "frac0.2-margin0.02": {"attach_frac": 0.2, "attach_rel_margin": 0.02},
    "frac0.2-q20": {"attach_frac": 0.2, "attach_rel_q": 20.0},
    "frac0.5": {"attach_frac": 0.5},
}


def base_run(
    method: str, x: np.ndarray, cache: Path | None, key: str, **settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, float]:
    """The method's labels without refinement or duplicate rule, its kNN lists, whether they are
    plain cosine lists already, and its seconds (cached in ``cache/key.npz``)."""
    f = cache / f"{key}.npz" if cache else None
    if f is not None and f.exists():
        z = np.load(f)
        return z["labels"], z["ids"], z["sims"], bool(z["plain"]), float(z["seconds"])
    c = get_clusterer(method, device="cpu", embedder="dlib", refine=False, join_duplicates=False, **settings)
    t = time.perf_counter()
    lab = c.fit_predict(x)
    dt = time.perf_counter() - t
    ids, sims = c.knn_
    plain = c.feature_kind() == "raw"
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, labels=lab, ids=ids, sims=sims, plain=plain, seconds=dt)
    return lab, ids, sims, plain, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--tuning", action="store_true")
    ap.add_argument("--regimes")
    ap.add_argument("--method", action="append")
    ap.add_argument("--variants", help="comma-separated subset of VARIANTS")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--floor", type=float, help="min_link_sim of the learned methods (default: the embedder's)")
    ap.add_argument(
        "--exact-knn",
        action="store_true",
        help="also refine on an exact plain-cosine kNN (k 80) and print its top-41 overlap with the re-scored lists",
    )
    a = ap.parse_args()
    regs = (tuning_regimes if a.tuning else validation_regimes)(a.root, a.regimes.split(",") if a.regimes else None)
    methods = a.method or ["gcn-v", "gcn-ve", "adanets"]
    variants = {k: VARIANTS[k] for k in a.variants.split(",")} if a.variants else VARIANTS
    rows = []
    for name, x, names in regs:
        y = np.unique(names, return_inverse=True)[1]
        r = run_method("infomap", x, names, "dlib")
        r.update(regime=name, method="infomap", variant="-")
        rows.append(r)
        print(f"{name:22s} {len(y):6d} infomap              BCubedF {r['bcubed_fscore']:.4f} pairF {r['pairwise_fscore']:.4f} "
              f"largest {r['largest_cluster']}/{r['largest_cluster_ids']} mixed {r['mixed_faces']}", flush=True)
        xr = l2_normalize(x)
        for m in methods:
            extra = {} if a.floor is None else {"min_link_sim": a.floor}
            lab0, ids, sims, plain, dt = base_run(m, x, a.cache, f"{name}-{m}" + (f"-floor{a.floor}" if extra else ""), **extra)
            if a.exact_knn and not plain:
                se, ie = knn(xr, 80, normalize=False, backend="faiss", device="cpu")
                ir, _ = plain_knn_from(ids, xr)
                m41 = min(41, ie.shape[1])
                ov = np.mean([len(np.intersect1d(ir[i, :m41], ie[i, :m41])) / m41 for i in range(len(xr))])
                fa = evaluate(y, refine_learned(lab0, ids, xr, embedder="dlib", overrides={}))["bcubed_fscore"]
                fb = evaluate(y, refine_learned(lab0, ie, xr, embedder="dlib", overrides={}, plain=True, sims=se))["bcubed_fscore"]
                print(f"{name:22s} {m:8s} re-scored vs exact plain kNN: top-{m41} overlap {ov:.4f}, "
                      f"BCubed F after refinement {fa:.4f} vs {fb:.4f}", flush=True)
            for v, over in variants.items():
                t = time.perf_counter()
                lab = lab0 if over is None else refine_learned(lab0, ids, xr, embedder="dlib", overrides=over, plain=plain, sims=sims)
                lab = join_near_duplicates(x, lab, 0.995, knn_cache=ids)
                rt = time.perf_counter() - t
                e = evaluate(y, lab)
                e.update(regime=name, method=m, variant=v, seconds_method=dt, seconds_refine=rt)
                rows.append(e)
                print(f"{name:22s} {len(y):6d} {m:8s} {v:13s} BCubedF {e['bcubed_fscore']:.4f} (P {e['bcubed_precision']:.3f} "
                      f"R {e['bcubed_recall']:.3f}) pairF {e['pairwise_fscore']:.4f} largest {e['largest_cluster']}/"
                      f"{e['largest_cluster_ids']} mixed {e['mixed_faces']} ({100 * e['mixed_faces'] / e['n']:.1f}%) "
                      f"gap {e['bcubed_fscore'] - r['bcubed_fscore']:+.4f}  {rt:.1f}s", flush=True)
    print("\nper method and variant over the regimes: worst BCubed F, worst gap to infomap, max mixed %")
    inf = {r["regime"]: r for r in rows if r["method"] == "infomap"}
    for m in methods:
        for v in variants:
            sel = [r for r in rows if r["method"] == m and r["variant"] == v]
            if not sel:
                continue
            w = min(sel, key=lambda r: r["bcubed_fscore"])
            g = min(sel, key=lambda r: r["bcubed_fscore"] - inf[r["regime"]]["bcubed_fscore"])
            mx = max(r["mixed_faces"] / r["n"] for r in sel)
            print(f"{m:8s} {v:13s} worst {w['bcubed_fscore']:.4f} ({w['regime']})  worst gap "
                  f"{g['bcubed_fscore'] - inf[g['regime']]['bcubed_fscore']:+.4f} ({g['regime']})  max mixed {100 * mx:.1f}%")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
