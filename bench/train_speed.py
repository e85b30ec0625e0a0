"""CPU training speed with and without flush-to-zero (docs/benchmarks.md §9, "Twenty-second session").

    python bench/train_speed.py --root /work/extdata/work [--regime lfw-train] [--epochs 6]
    python bench/train_speed.py --root /work/extdata/work --no-ftz     # the slow path, for comparison

Trains GCN-E (``facecluster.train.gcn_ve.train_gcn_e``; the shipped dlib GCN-V gives its input
features) on one tuning regime's faces (training identities only) and prints the seconds per 100
optimiser steps, with the number of subnormal weights at that point. As the network grows
confident its loss gradients fall below float32's normal range and, without flush-to-zero, every
CPU multiply touching them takes a slow path; ``train.flush_subnormals()`` (what the training
commands call first) keeps the step time flat. Run each mode in its own process: the flag is set
for the process, before torch starts its worker threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="folder of embedded work dirs (bench/regimes.py)")
    ap.add_argument("--regime", default="lfw-train", help="a tuning regime of bench/regimes.py")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--every", type=int, default=100, help="report every this many optimiser steps")
    ap.add_argument("--no-ftz", action="store_true", help="leave flush-to-zero off (the slow path)")
    a = ap.parse_args()
    from facecluster.train import flush_subnormals

    if not a.no_ftz:
        print(f"flush-to-zero: {flush_subnormals()}", flush=True)  # first, before any torch work

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import regimes  # noqa: E402

    from facecluster.cluster import gcn_common as gc
    from facecluster.train.gcn_ve import train_gcn_e

    _, x, names = regimes.tuning_regimes(a.root, only=[a.regime])[0][:3]
    y = np.unique(names, return_inverse=True)[1]
    model_v = gc.load_gcn_v(gc.shipped_files("dlib")[0])
    tiny = torch.finfo(torch.float32).tiny
    real_step = torch.optim.Adam.step
    state = {"n": 0, "t": time.perf_counter()}

    def timed_step(self, *args, **kw):
        out = real_step(self, *args, **kw)
        state["n"] += 1
        if state["n"] % a.every == 0:
            sub = sum(int(((p.abs() > 0) & (p.abs() < tiny)).sum()) for g in self.param_groups for p in g["params"])
            print(f"step {state['n']:5d}: {time.perf_counter() - state['t']:6.1f} s per {a.every} steps, subnormal weights {sub}", flush=True)
            state["t"] = time.perf_counter()
        return out

    torch.optim.Adam.step = timed_step
    t0 = time.perf_counter()
    train_gcn_e(model_v, x, y, epochs=a.epochs, ignore_ratio=0.0, progress=False)
    print(f"{a.regime}: {len(x)} faces, {state['n']} steps, {time.perf_counter() - t0:.1f} s "
          f"({'flush-to-zero off' if a.no_ftz else 'flush-to-zero on'})", flush=True)


if __name__ == "__main__":
    main()
