"""Time and memory per step of `adanets` on synthetic clustered faces, beside the original's
CPU-runnable steps (structure space, max-Q, adaptive adjacency) run on the same input.

    python bench/adanets_bench.py --n 20000 --n 100000 --orig-n 2000 --orig-n 20000 \
        --original /tmp/adanets_orig --json out.json

``--original`` is an extracted snapshot of damo-cv/Ada-NETS (never part of this repo), e.g.
``git -C <mirror> archive HEAD | tar -x -C /tmp/adanets_orig``. Its scripts run unmodified in a
subprocess; two import-time breakages are patched from outside: ``tool/knn.py`` subclasses an
undefined ``knn`` (a stub base class is put in builtins) and ``tool/max_Q_ind.py`` imports
pandas without using it (a stub module). Each original script keeps its hard-coded process
pool (Pool(52)/Pool(48)); its memory is the peak RSS of the largest single process.

Features: ``n / 20`` identities (sizes vary), 128-d like dlib, L2-normalised. Memory of our
steps: peak RSS above the RSS at the start of the step, sampled every 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def synthetic(n: int, d: int = 128, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = max(n // 20, 1)
    # Zipf-like identity sizes, as in face collections (a few large, many small)
    w = 1.0 / np.arange(1, c + 1) ** 0.8
    y = rng.choice(c, size=n, p=w / w.sum())
    centers = rng.normal(size=(c, d))
    x = centers[y] + 0.9 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.int64)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak RSS (bytes) above the starting RSS while the block runs."""

    def __enter__(self):
        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.start) / 2**20
        return False


def run_ours(x, device="cpu", structure_only=False, **settings):
    """Each step of AdaNetsClusterer, timed and memory-sampled separately. Returns (steps, intermediates)."""
    import torch

    from facecluster.cluster.adanets import AdaNetsClusterer, _self_first
    from facecluster.cluster.adanets.and_model import predict_k
    from facecluster.cluster.adanets.gcn import SparseGraph, adaptive_adjacency
    from facecluster.cluster.adanets.structure_space import structure_space
    from facecluster.graph import components
    from facecluster.knn import knn

    c = AdaNetsClusterer(device=device, **settings)
    cf = c.config
    r = c.resolved()
    m_and, meta, m_gcn, _ = c._models()
    steps = {}

    def step(name):
        p = PeakRSS()
        steps[name] = p
        return p

    with step("knn"):
        sims, ids = knn(x, r["k"], normalize=False, device=device)
        ids, sims = _self_first(ids, sims)
    with step("structure_space"):
        ids_ss, d_ss = structure_space(ids, sims, r["k"], r["lamb"])
    if structure_only:
        out = {k: {"seconds": round(v.seconds, 3), "peak_mib": round(v.mib, 1)} for k, v in steps.items()}
        return out, dict(ids=ids, sims=sims, ids_ss=ids_ss, d_ss=d_ss)
    with step("and"):
        k_hat = predict_k(m_and, x, ids_ss, int(meta.get("scale_max", r["k"])), device=device, batch_size=cf.batch_size)
    with step("adjacency"):
        adj = adaptive_adjacency(ids_ss, d_ss, k_hat, r["th_sim"])
    with step("gcn"), torch.inference_mode():
        g = SparseGraph(adj, device)
        feat = torch.nn.functional.normalize(m_gcn.to(device)(g, torch.from_numpy(x).to(device)), dim=1).cpu().numpy()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    with step("final_knn"):
        s2, i2 = knn(feat, r["final_topk"], normalize=False, device=device)
    with step("components"):
        n = len(x)
        rows = np.repeat(np.arange(n), i2.shape[1])
        keep = (s2.reshape(-1) >= r["final_th"]) & (i2.reshape(-1) != rows)
        labels = components(n, rows[keep], i2.reshape(-1)[keep])
    out = {k: {"seconds": round(v.seconds, 3), "peak_mib": round(v.mib, 1)} for k, v in steps.items()}
    out["total_seconds"] = round(sum(v.seconds for v in steps.values()), 3)
    return out, dict(ids=ids, sims=sims, ids_ss=ids_ss, d_ss=d_ss, k_hat=k_hat, adj=adj, labels=labels)


_PRELUDE = (
    "import builtins, sys, types, runpy; builtins.knn = object; "
    "sys.modules.setdefault('pandas', types.ModuleType('pandas')); "
    "script = sys.argv[1]; sys.path.insert(0, __import__('os').path.dirname(script)); "
    "sys.argv = sys.argv[1:]; runpy.run_path(script, run_name='__main__')"
)


def run_original(script: Path, args: list[str], cwd: Path, timeout: float):
    """Run one original script; returns (seconds, peak MiB of the largest process) or None on timeout."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:]); dt = time.perf_counter() - t; "
        "m = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
        "print('@@', dt, m, r.returncode)"
    )
    cmd = [sys.executable, "-c", wrapper, sys.executable, "-c", _PRELUDE, str(script), *args]
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@")]
    if not line or line[-1].split()[3] != "0":
        raise RuntimeError(f"original {script.name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    _, dt, maxrss, _ = line[-1].split()
    return float(dt), int(maxrss) / 1024


def compare_with_original(orig: Path, x, y, inter, timeout: float):
    """Run struct_space / max_Q_ind / gene_adj_adanets on our kNN; check they agree with ours."""
    from facecluster.cluster.adanets.structure_space import max_q_targets

    res = {}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        k = inter["ids_ss"].shape[1]
        np.save(td / "I.npy", inter["ids"][:, :k].astype(np.int32))
        np.save(td / "D.npy", (1.0 - inter["sims"][:, :k]).astype(np.float32))
        np.save(td / "label.npy", y)
        if "k_hat" in inter:
            np.save(td / "k.npy", inter["k_hat"].astype(np.float64))
        tool = orig / "tool"
        r = run_original(tool / "struct_space.py", ["I.npy", "D.npy", str(k), "oI.npy", "oD.npy", "odata.npz"], td, timeout)
        if r is None:
            res["structure_space"] = {"timeout_s": timeout}
            return res
        oI, oD = np.load(td / "oI.npy"), np.load(td / "oD.npy")
        res["structure_space"] = {"seconds": round(r[0], 2), "peak_mib_largest_process": round(r[1], 1),
                                  "ids_equal_fraction": float((oI == inter["ids_ss"]).mean()),
                                  "max_abs_d_diff": float(np.abs(oD - inter["d_ss"]).max())}
        t = time.perf_counter()
        ours_q = max_q_targets(inter["ids_ss"], y, 0.5)
        res["max_q_ours_seconds"] = round(time.perf_counter() - t, 3)
        r = run_original(tool / "max_Q_ind.py", ["oI.npy", "label.npy", "0.5", "q.npy"], td, timeout)
        if r is not None:
            res["max_q"] = {"seconds": round(r[0], 2), "peak_mib_largest_process": round(r[1], 1),
                            "equal_fraction": float((np.load(td / "q.npy") == ours_q).mean())}
        if "k_hat" not in inter:
            return res
        r = run_original(tool / "gene_adj_adanets.py", ["odata.npz", "k.npy", "adj"], td, timeout)
        if r is not None:
            import scipy.sparse as sp

            oa = sp.load_npz(td / "adj.npz")
            res["adjacency"] = {"seconds": round(r[0], 2), "peak_mib_largest_process": round(r[1], 1),
                                "max_abs_diff": float(abs(oa - inter["adj"]).max())}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="sizes for our pipeline (repeatable)")
    ap.add_argument("--orig-n", type=int, action="append", default=[], help="sizes at which to also run the original's steps")
    ap.add_argument("--original", type=Path, default=Path("/tmp/adanets_orig"))
    ap.add_argument("--orig-timeout", type=float, default=900)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--structure-only", action="store_true", help="time only kNN + structure space (ours and the original's)")
    ap.add_argument("--checkpoint-and", help="AND weights (default: the shipped ones)")
    ap.add_argument("--checkpoint-gcn", help="GCN weights (default: the shipped ones)")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = sorted(set((a.n or [20000]) + a.orig_n))
    report = {"device": a.device, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "runs": {}}
    for n in sizes:
        x, y = synthetic(n)
        ck = {k: v for k, v in (("checkpoint_and", a.checkpoint_and), ("checkpoint_gcn", a.checkpoint_gcn)) if v}
        steps, inter = run_ours(x, a.device, structure_only=a.structure_only, **ck)
        entry = {"ours": steps}
        if n in a.orig_n:
            entry["original"] = compare_with_original(a.original, x, y, inter, a.orig_timeout)
            o = entry["original"].get("structure_space", {})
            if "seconds" in o:
                entry["structure_space_speedup"] = round(o["seconds"] / steps["structure_space"]["seconds"], 1)
        report["runs"][str(n)] = entry
        print(json.dumps({n: entry}, indent=1), flush=True)
    report["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
