"""GCN-V+E benchmark: facecluster's port vs the original learn-to-cluster code, same input.

For each N: synthetic clustered 256-d features (learn-to-cluster .bin/.meta layout) and random
GCN-V / GCN-E checkpoints in the released mmcv layout; runs

* ours: ``gcn-ve`` (and the GCN-V confidences) in a child process, time per step and the running
  peak RSS after each step;
* the original (optional, ``--ltc /path/to/learn-to-cluster --ltc-python /path/to/python``):
  ``vegcn/main.py --phase test`` for GCN-V then GCN-E on CPU (``--no_cuda``), wall time and peak
  RSS from ``/usr/bin/time -v``, then compares confidences (max |diff|) and the partitions.

Optionally also times the shipped dlib weights on cached LFW features (``--lfw``).

Usage (what docs/benchmarks/gcn_ve.md reports):
  nice -n 10 python bench/gcn_ve_bench.py --n 20000 100000 --ltc /tmp/ltc \
      --ltc-python /tmp/ltc-venv/bin/python --ltc-pythonpath /tmp/ltc-stubs --original-max-n 20000 \
      --lfw /work/cache/feats/dlib-lfw.npz --out /tmp/gcn_ve_bench.json
The original needs mmcv<2 (see notes §7): a separate venv, a ``torchvision`` stub and NumPy
aliases (``np.float``) supplied through ``--ltc-pythonpath`` (a sitecustomize.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_input(root: Path, n: int, seed: int = 1234) -> None:
    """Clustered features: cluster sizes ~ geometric(mean 12), per-face noise level varies."""
    import torch

    from facecluster.cluster import gcn_common as gc

    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.geometric(1 / 12)))
    lab = np.repeat(np.arange(len(sizes)), sizes)[:n]
    rng.shuffle(lab)
    c = rng.normal(size=(len(sizes), 256))
    X = (c[lab] + rng.uniform(0.5, 1.1, size=(n, 1)) * rng.normal(size=(n, 256))).astype(np.float32)
    for d in ("features", "labels", "pretrained_models"):
        (root / "data" / d).mkdir(parents=True, exist_ok=True)
    X.tofile(root / "data/features/part1_test.bin")
    (root / "data/labels/part1_test.meta").write_text("\n".join(map(str, lab)) + "\n")
    torch.manual_seed(7)
    v, e = gc.GCNV(256, 512), gc.GCNE(512, 512)
    for m in (v, e):
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.uniform_(p, -0.05, 0.05)
    meta = {"mmcv_version": "1.7.2", "time": "n/a"}
    for m, name in ((v, "v"), (e, "e")):
        torch.save({"meta": meta, "state_dict": {k: t.detach().clone() for k, t in m.state_dict().items()}}, root / f"data/pretrained_models/pretrained_gcn_{name}_ms1m.pth")


def child_ours(root: Path, out: Path, threads: int, knn_backend: str = "auto") -> None:
    """Run gcn-ve (and stage-A GCN-V for the confidences) here; write labels + timings."""
    import torch

    torch.set_num_threads(threads)
    from facecluster.cluster import Clusterer, get_clusterer

    peaks: dict[str, float] = {}
    orig_timed = Clusterer._timed

    from contextlib import contextmanager

    @contextmanager
    def timed(self, step):
        with orig_timed(self, step):
            yield
        peaks[step] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB, running peak

    Clusterer._timed = timed
    X = np.fromfile(root / "data/features/part1_test.bin", np.float32).reshape(-1, 256)
    ck = str(root / "data/pretrained_models/pretrained_gcn_%s_ms1m.pth")
    t = time.perf_counter()
    # A/B with the original: its algorithm exactly (no similarity floor, no near-duplicate rule)
    m = get_clusterer("gcn-ve", checkpoint_v=ck % "v", checkpoint_e=ck % "e", device="cpu", knn_backend=knn_backend,
                      similarity_floor=False, join_duplicates=False)
    lab = m.fit_predict(X)
    total = time.perf_counter() - t
    np.save(out.with_suffix(".labels.npy"), lab)
    np.save(out.with_suffix(".conf.npy"), m.conf_)
    out.write_text(json.dumps({"total_s": total, "steps_s": m.timings_, "rss_after_step_mib": peaks, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_ours(root: Path, threads: int, knn_backend: str = "auto") -> dict:
    out = root / "ours.json"
    subprocess.run([sys.executable, __file__, "--child", str(root), str(out), str(threads), knn_backend], check=True)
    return json.loads(out.read_text())


def _time_v(cmd, cwd, env) -> tuple[float, float, str]:
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"original failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", p.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(v * 60 ** (len(parts) - 1 - i) for i, v in enumerate(parts))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    return secs, rss, p.stdout


def run_original(root: Path, ltc: Path, py: str, pythonpath: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{pythonpath}:{ltc}", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    link = root / "vegcn"
    if not link.exists():
        link.symlink_to(ltc / "vegcn")
    base = [py, str(ltc / "vegcn/main.py"), "--phase", "test", "--save_output", "--force", "--no_cuda"]
    tv, rv, _ = _time_v(base + ["--config", "vegcn/configs/cfg_test_gcnv_ms1m.py", "--load_from", "data/pretrained_models/pretrained_gcn_v_ms1m.pth"], root, env)
    te, re_, _ = _time_v(base + ["--config", "vegcn/configs/cfg_test_gcne_ms1m.py", "--load_from", "data/pretrained_models/pretrained_gcn_e_ms1m.pth"], root, env)
    return {"gcn_v_s": tv, "gcn_v_peak_rss_mib": rv, "gcn_e_s": te, "gcn_e_peak_rss_mib": re_, "total_s": tv + te}


def same_partition(a, b) -> bool:
    pairs = len(set(zip(np.asarray(a).tolist(), np.asarray(b).tolist())))
    return pairs == len(np.unique(a)) == len(np.unique(b))


def compare(root: Path) -> dict:
    wd = root / "data/work_dir"
    oc = np.load(next((wd / "cfg_test_gcnv_ms1m").glob("*/pred_confs/*.npz")))["pred_confs"]
    ol = np.loadtxt(next((wd / "cfg_test_gcne_ms1m").glob("*/tau_0.8_pred_labels.txt")), dtype=np.int64)
    mc = np.load(root / "ours.conf.npy")
    ml = np.load(root / "ours.labels.npy")
    return {"conf_max_abs_diff": float(np.abs(oc - mc).max()), "identical_partition": same_partition(ol, ml), "clusters_original": int(len(np.unique(ol))), "clusters_ours": int(len(np.unique(ml)))}


def bench_lfw(path: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from facecluster import metrics
    from facecluster.cluster import get_clusterer

    z = np.load(path)
    # plain descriptors: every method here wants them (gcn-v/gcn-ve prepare their checkpoint's
    # features themselves since issue 11)
    X = np.asarray(z["feats"], np.float32)
    out = {"n": int(len(X))}
    for method in ("gcn-v", "gcn-ve", "infomap"):
        m = get_clusterer(method, device="cpu")
        t = time.perf_counter()
        lab = m.fit_predict(X)
        out[method] = {"total_s": time.perf_counter() - t, "steps_s": m.timings_, "bcubed_f": metrics.bcubed(z["labels"], metrics.singletons_to_unique(lab))[2]}
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_ours(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "auto")
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--ltc", type=Path, help="learn-to-cluster checkout (to run the original)")
    ap.add_argument("--ltc-python", default="python")
    ap.add_argument("--ltc-pythonpath", default="", help="extra PYTHONPATH for the original (stubs, sitecustomize)")
    ap.add_argument("--original-max-n", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--knn-backend", default="auto", help="kNN backend for ours (auto = faiss on CPU, as the original)")
    ap.add_argument("--skip-make", action="store_true", help="reuse the inputs already in --workdir")
    ap.add_argument("--lfw", help="cached dlib features of LFW (npz) to time the shipped weights on")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("gcn_ve_bench.json"))
    a = ap.parse_args()
    base = a.workdir or Path(tempfile.mkdtemp(prefix="gcn_ve_bench_"))
    results = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "runs": {}}
    for n in a.n:
        root = base / f"n{n}"
        root.mkdir(parents=True, exist_ok=True)
        if not (a.skip_make and (root / "data/features/part1_test.bin").exists()):
            make_input(root, n)
        r = {"ours": run_ours(root, a.threads, a.knn_backend), "knn_backend": a.knn_backend}
        print(f"N={n} ours: {r['ours']['total_s']:.1f}s peak {r['ours']['peak_rss_mib']:.0f} MiB  steps {json.dumps({k: round(v, 2) for k, v in r['ours']['steps_s'].items()})}", flush=True)
        if a.ltc and n <= a.original_max_n:
            r["original"] = run_original(root, a.ltc, a.ltc_python, a.ltc_pythonpath, a.threads)
            r["ab"] = compare(root)
            print(f"N={n} original: {json.dumps(r['original'])}  A/B: {json.dumps(r['ab'])}", flush=True)
        results["runs"][n] = r
    if a.lfw:
        results["lfw"] = bench_lfw(a.lfw, a.threads)
        print("LFW:", json.dumps(results["lfw"]), flush=True)
    results["load_after"] = os.getloadavg()
    a.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
