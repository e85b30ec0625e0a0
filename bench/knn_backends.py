"""Exact kNN backends on CPU (docs/benchmarks.md §2, "Exact kNN on CPU"): wall time of each
backend of ``facecluster.knn`` on N random unit vectors, and whether they return the same
neighbours (after the library's tie ordering) and similarities (to float rounding).

    python bench/knn_backends.py --n 50000 --n 100000 --dim 128 --dim 256 [--k 80] [--repeat 2]

What ``knn_backend=auto`` picks on CPU follows these numbers (``facecluster.knn.resolve_backend``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
from facecluster.knn import knn, l2_normalize  # noqa: E402

BACKENDS = ("faiss", "torch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="faces (repeatable; default 100000)")
    ap.add_argument("--dim", type=int, action="append", help="feature width (repeatable; default 128)")
    ap.add_argument("--k", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per backend (the minimum is printed)")
    a = ap.parse_args()
    try:
        import faiss

        fv = faiss.__version__
    except ImportError:
        fv = "not installed"
    import torch

    print(f"faiss {fv}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| N x D | " + " | ".join(BACKENDS) + " | same neighbours | max similarity difference |")
    print("|---|" + "---|" * (len(BACKENDS) + 2))
    rng = np.random.default_rng(0)
    for n in a.n or [100_000]:
        for d in a.dim or [128]:
            x = l2_normalize(rng.standard_normal((n, d)).astype(np.float32))
            times, out = {}, {}
            for be in BACKENDS:
                best = np.inf
                for _ in range(a.repeat):
                    t = time.perf_counter()
                    out[be] = knn(x, a.k, backend=be, normalize=False)
                    best = min(best, time.perf_counter() - t)
                times[be] = best
            (s0, i0), (s1, i1) = out["faiss"], out["torch"]
            same = float((i0 == i1).mean())
            diff = float(np.abs(s0 - s1).max())
            print(f"| {n:,} x {d} | " + " | ".join(f"{times[b]:.1f} s" for b in BACKENDS) + f" | {same:.4%} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
