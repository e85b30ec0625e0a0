"""Clustering at scale (issue 12): N synthetic dlib-like 128-d features, every method, the whole
``facecluster cluster`` command, wall time + per-step timings + peak RSS, CPU or CUDA.

    python bench/cluster_scale.py --n 100000 --device cpu --json /tmp/cs.json
    python bench/cluster_scale.py --n 1000000 --device cuda --time-limit 62 --budget 240 \\
        --knn-check 20000 --json $OUT/cluster_scale.json                    # the device run (docs/benchmarks/cluster_scale.md)

Features ("dlib-like"): a Gaussian model of dlib descriptors fitted on real embedded faces
(``--fit-stats WORKDIR...`` writes ``bench/data/dlib_feature_stats.npz``: the mean descriptor,
the between-identity covariance of identity means and the pooled within-identity covariance).
Identities get Zipf-distributed sizes (exponent ``--zipf``, capped at ``--max-size``: most people
have one to a few photos, a few have hundreds, as in a photo collection mixed with video frames);
each face is its identity's centre plus within-identity noise scaled by a per-face "quality"
factor (log-normal), so that some faces are much harder than others. ``--check-real WORKDIR``
prints the same similarity statistics for real and synthetic faces, to show how close they are.

Each method runs as ``python -m facecluster.cli cluster -w WD -m METHOD --device DEV`` in a
child process (model load, feature read, calibration and label write included), killed after
``--time-limit`` seconds; ``--budget`` bounds the whole run (methods that would start after it
are reported as skipped). Per-step timings come from the method's ``labels-METHOD.json``;
quality (BCubed F, pairwise F) is scored against the synthetic identities.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STATS = HERE / "data" / "dlib_feature_stats.npz"
DEFAULT_METHODS = ["infomap", "gcn-v", "gcn-ve", "adanets", "threshold"]


# --------------------------------------------------------------------------------------------
# the feature model
# --------------------------------------------------------------------------------------------
def fit_stats(workdirs: list[str], out: Path = STATS) -> dict:
    """Fit the Gaussian model on real embedded work dirs (labels = image folder).

    Between-identity covariance: covariance of identity means minus the within-identity part
    that leaks into a mean of n faces (E[W/n]), clipped to positive semi-definite."""
    sys.path.insert(0, str(HERE))
    from _common import load_workdir

    xs, ys = [], []
    off = 0
    for w in workdirs:
        x, names, _ = load_workdir(w)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        _, y = np.unique(names, return_inverse=True)
        xs.append(x.astype(np.float64))
        ys.append(y + off)
        off += int(y.max()) + 1
    x, y = np.concatenate(xs), np.concatenate(ys)
    cnt = np.bincount(y)
    means = np.zeros((len(cnt), x.shape[1]))
    np.add.at(means, y, x)
    means /= cnt[:, None]
    resid = x - means[y]
    multi = cnt[y] > 1
    # unbiased pooled within covariance over identities with >= 2 faces
    dof = int(multi.sum() - (cnt > 1).sum())
    W = resid[multi].T @ resid[multi] / max(dof, 1)
    mu = x.mean(0)
    mc = means - means.mean(0)
    B = mc.T @ mc / max(len(cnt) - 1, 1) - W * np.mean(1.0 / cnt)
    ev, evec = np.linalg.eigh(B)
    B = (evec * np.clip(ev, 0, None)) @ evec.T
    d = {"mean": mu.astype(np.float32), "between": B.astype(np.float32), "within": W.astype(np.float32),
         "n_faces": np.int64(len(x)), "n_ids": np.int64(len(cnt)), "sources": np.array([Path(w).name for w in workdirs])}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **d)
    return d


def _chol(c: np.ndarray) -> np.ndarray:
    ev, evec = np.linalg.eigh(c.astype(np.float64))
    return (evec * np.sqrt(np.clip(ev, 0, None))).astype(np.float32)  # c = L Lᵀ


def identity_sizes(n: int, zipf: float, max_size: int, rng: np.random.Generator) -> np.ndarray:
    """Identity sizes summing to exactly ``n`` (Zipf, capped)."""
    sizes = []
    total = 0
    while total < n:
        s = np.minimum(rng.zipf(zipf, size=max(1024, (n - total) // 2)), max_size)
        cs = np.cumsum(s)
        take = int(np.searchsorted(cs, n - total)) + 1
        sizes.append(s[:take])
        total += int(cs[min(take, len(cs)) - 1])
    sizes = np.concatenate(sizes)
    sizes[-1] -= int(sizes.sum()) - n
    return sizes[sizes > 0]


def synthetic(
    n: int, seed: int = 0, *, zipf: float = 2.0, max_size: int = 1000, quality_sigma: float = 0.35,
    stats: Path = STATS, chunk: int = 262144,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, 128) float32 dlib-like descriptors (L2-normalised, shuffled) and (n,) identity labels."""
    st = np.load(stats)
    mu, lb, lw = st["mean"], _chol(st["between"]), _chol(st["within"])
    d = mu.shape[0]
    rng = np.random.default_rng(seed)
    sizes = identity_sizes(n, zipf, max_size, rng)
    centres = mu + rng.standard_normal((len(sizes), d), dtype=np.float32) @ lb.T
    y = np.repeat(np.arange(len(sizes)), sizes)
    y = y[rng.permutation(n)]
    x = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):  # bounded temporaries
        e = min(s + chunk, n)
        q = np.exp(quality_sigma * rng.standard_normal((e - s, 1), dtype=np.float32) - quality_sigma**2 / 2)
        x[s:e] = centres[y[s:e]] + q * (rng.standard_normal((e - s, d), dtype=np.float32) @ lw.T)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y.astype(np.int64)


def similarity_profile(x: np.ndarray, y: np.ndarray, k: int = 10) -> dict:
    """Statistics that drive the methods' work: nearest-neighbour cosines, same-identity share
    of the kNN lists, and the share of kNN edges above infomap's dlib min_sim (0.947)."""
    from facecluster.knn import knn

    s, i = knn(x, k + 1)
    s, i = s[:, 1:], i[:, 1:]
    same = y[i] == y[:, None]
    multi = np.bincount(y)[y] > 1
    return {
        "n": int(len(x)),
        "identities": int(len(np.unique(y))),
        "singleton_share": round(float((~multi).mean()), 3),
        "nn1_cos_median": round(float(np.median(s[:, 0])), 4),
        "nn1_cos_p10_p90": [round(float(v), 4) for v in np.percentile(s[:, 0], [10, 90])],
        "nn1_same_identity": round(float(same[multi, 0].mean()), 4),
        f"nn{k}_same_identity": round(float(same[multi].mean()), 4),
        "knn_edges_ge_0.947": round(float((s >= 0.947).mean()), 4),
        "same_id_cos_median": round(float(np.median(s[same])), 4) if same.any() else None,
        "other_id_nn_cos_median": round(float(np.median(s[~same])), 4) if (~same).any() else None,
    }


# --------------------------------------------------------------------------------------------
# running the command
# --------------------------------------------------------------------------------------------
def make_workdir(root: Path, x: np.ndarray, small_share: float = 0.0, seed: int = 0) -> Path:
    """A work dir holding ``x`` as merged dlib features (what `facecluster merge` writes); with
    ``small_share`` > 0 also face sizes (features-face-px.npy, eye distance in px): that share of
    the faces, drawn at random, 12 px (small), the others 45 px, so the small-face rule runs."""
    from facecluster.workdir import WorkDir, atomic_save_npy, atomic_write_json, fingerprint

    root.mkdir(parents=True, exist_ok=True)
    wd = WorkDir(root)
    atomic_save_npy(wd.features_npy, x)
    atomic_save_npy(wd.features_index, np.arange(len(x), dtype=np.int64))
    if small_share > 0:
        small = np.random.default_rng(seed + 1).random(len(x)) < small_share
        atomic_save_npy(wd.features_face_px, np.where(small, 12.0, 45.0).astype(np.float32))
    else:
        wd.features_face_px.unlink(missing_ok=True)
    fp = fingerprint("cluster_scale", len(x), float(x[:64].sum()) if len(x) else 0.0, small_share)
    atomic_write_json(
        wd.features_meta,
        {"fingerprint": fp, "manifest": fp, "n_records": len(x), "n_features": len(x), "dim": int(x.shape[1]),
         "embedder": {"embedder": "dlib", "fingerprint": "synthetic", "dim": int(x.shape[1])}, "shards": 1, "errors": {}},
    )
    return root


def run_method(wd: Path, method: str, device: str, limit: float, sets: list[str], src: Path = REPO / "shared") -> dict:
    """``facecluster cluster`` in a child process: wall, exit status, peak RSS, step timings."""
    for p in wd.glob(f"labels-{method}.*"):
        p.unlink()  # never reuse a previous run's labels
    cmd = [sys.executable, "-m", "facecluster.cli", "cluster", "-w", str(wd), "-m", method, "--device", device]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ)
    env["FACECLUSTER_LOG"] = "INFO"  # step timings as they happen (kept when the child is killed)
    env["PYTHONPATH"] = os.pathsep.join([str(src)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    t0 = time.perf_counter()
    # output to a file, not a pipe: a child that logs more than a pipe buffer must not block
    logf = open(wd / f"cluster-{method}.log", "w+b")
    proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
    timed_out = False
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > limit:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    logf.seek(0)
    out = logf.read().decode(errors="replace")
    logf.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    res = {"method": method, "wall_s": round(wall, 2), "rc": proc.returncode, "timed_out": timed_out,
           "peak_rss_gb": round(ru.ru_maxrss / 2**20, 2), "user_s": round(ru.ru_utime, 1), "sys_s": round(ru.ru_stime, 1)}
    meta = wd / f"labels-{method}.json"
    if not timed_out and proc.returncode == 0 and meta.exists():
        m = json.loads(meta.read_text())
        res["cluster_stage_s"] = round(m["seconds"], 2)
        res["steps"] = {k: round(v, 2) for k, v in m["timings"].items()}
        res["n_clusters"] = m["n_clusters"]
    elif not timed_out:
        res["error"] = out[-2000:]
    if timed_out:
        import re

        done = re.findall(r"facecluster\.cluster\.base: \S+: step (\S+) took ([0-9.]+) s", out)
        res["steps_done_before_kill"] = {k: float(v) for k, v in done}
    return res


def score(wd: Path, method: str, y: np.ndarray) -> dict:
    """BCubed and pairwise F, plus what they average away at scale: the largest cluster (faces,
    identities) and the faces in mixed clusters (``metrics.cluster_purity``); a link rule that
    looks pure on a few thousand faces can chain thousands of people at 100k."""
    from facecluster.metrics import bcubed, cluster_purity, pairwise

    p = wd / f"labels-{method}.npy"
    if not p.exists():
        return {}
    lab = np.load(p)
    return {"bcubed_f": round(bcubed(y, lab)[2], 4), "pairwise_f": round(pairwise(y, lab)[2], 4), **cluster_purity(y, lab)}


def knn_check(x: np.ndarray, device: str, queries: int, k: int = 80) -> dict:
    """The GPU kNN (fp16 candidates + exact re-rank) against the plain fp32 search for the
    first ``queries`` faces against all of ``x``: same neighbours up to float-rounding ties?
    Also times both and counts the rows the fp16 pass could not prove (searched again)."""
    import logging

    import torch

    from facecluster import knn as K

    q = K.l2_normalize(x[:queries])
    xn = K.l2_normalize(x)
    msgs = []

    class H(logging.Handler):
        def emit(self, rec):
            msgs.append(rec.getMessage())

    lg = logging.getLogger("facecluster.knn")
    h = H()
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    out = {"queries": int(len(q)), "n": int(len(x)), "k": k}
    try:
        res = {}
        for prec in ("fp32", "fp16"):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            res[prec] = K._sort_ties(*K._knn_torch_fp16(xn, q, k, device, precision=prec))
            out[f"{prec}_s"] = round(time.perf_counter() - t, 3)
        (s32, i32), (s16, i16) = res["fp32"], res["fp16"]
        out["max_abs_sim_diff"] = float(np.abs(s32 - s16).max())
        diff = i32 != i16
        out["rows_with_other_ids"] = int(diff.any(1).sum())
        r, c = np.nonzero(diff)
        near = np.zeros(len(r), bool)
        for d in (-1, 1):
            cc = np.clip(c + d, 0, k - 1)
            near |= np.abs(s32[r, c] - s32[r, cc]) <= 1e-6
        out["differing_slots_not_near_ties"] = int((~near).sum())
        out["redo_log"] = msgs[-1] if msgs else "no fp16 row re-searched"
    finally:
        lg.removeHandler(h)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="faces (repeatable; default 100000)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods, run in this order")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zipf", type=float, default=2.0, help="identity-size Zipf exponent")
    ap.add_argument("--small-share", type=float, default=0.0,
                    help="share of faces given small sizes (features-face-px.npy: eyes 12 px apart, the rest 45 px): times the small-face rule (0: no sizes)")
    ap.add_argument("--max-size", type=int, default=1000, help="largest identity")
    ap.add_argument("--time-limit", type=float, default=600, help="seconds per method (child killed after)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run; later methods are skipped")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="METHOD.key=value (repeatable)")
    ap.add_argument("--workdir", default=None, help="where the synthetic work dirs go (default: a temp dir)")
    ap.add_argument("--src", default=str(REPO / "shared"), help="facecluster source tree the command runs (A/B against another checkout)")
    ap.add_argument("--knn-check", type=int, default=0, metavar="Q",
                    help="also check the fp16 GPU kNN against fp32 for Q queries (torch backend, in this process)")
    ap.add_argument("--no-score", action="store_true", help="skip BCubed/pairwise scoring")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--fit-stats", nargs="+", metavar="WORKDIR", help="fit bench/data/dlib_feature_stats.npz and exit")
    ap.add_argument("--check-real", nargs="+", metavar="WORKDIR", help="print real vs synthetic similarity profiles and exit")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "shared"))

    if a.fit_stats:
        d = fit_stats(a.fit_stats)
        print(f"wrote {STATS}: {int(d['n_faces'])} faces, {int(d['n_ids'])} identities from {list(d['sources'])}")
        return 0
    if a.check_real:
        sys.path.insert(0, str(HERE))
        from _common import load_workdir

        for w in a.check_real:
            x, names, _ = load_workdir(w)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            y = np.unique(names, return_inverse=True)[1]
            print(Path(w).name, json.dumps(similarity_profile(x, y)))
        for n in a.n or [20000]:
            x, y = synthetic(n, a.seed, zipf=a.zipf, max_size=a.max_size)
            print(f"synthetic-{n}", json.dumps(similarity_profile(x, y)))
        return 0

    import tempfile

    t_start = time.perf_counter()
    methods = [m for m in a.methods.split(",") if m]
    summary = {"device": a.device, "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "argv": sys.argv[1:], "runs": []}
    try:
        import torch

        summary["torch"] = torch.__version__
        if a.device.startswith("cuda") and torch.cuda.is_available():
            summary["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    tmp = tempfile.TemporaryDirectory(prefix="cluster_scale_") if a.workdir is None else None
    root = Path(a.workdir or tmp.name)
    rows = []
    try:
        for n in a.n or [100000]:
            t = time.perf_counter()
            x, y = synthetic(n, a.seed, zipf=a.zipf, max_size=a.max_size)
            wd = make_workdir(root / f"n{n}", x, a.small_share, a.seed)
            gen_s = time.perf_counter() - t
            print(f"N={n}: {len(np.unique(y))} identities, largest {np.bincount(y).max()}, generated in {gen_s:.1f} s", flush=True)
            if a.knn_check:
                kc = knn_check(x, a.device, a.knn_check)
                summary.setdefault("knn_check", []).append(kc)
                print("  knn check:", json.dumps(kc), flush=True)
            for m in methods:
                left = None if a.budget is None else a.budget - (time.perf_counter() - t_start)
                if left is not None and left < 5:
                    r = {"method": m, "skipped": "budget spent"}
                else:
                    limit = a.time_limit if left is None else min(a.time_limit, left)
                    sets = [s.split(".", 1)[1] for s in a.sets if s.split(".", 1)[0] == m]
                    r = run_method(wd, m, a.device, limit, sets, Path(a.src))
                    if not a.no_score and r.get("rc") == 0 and not r.get("timed_out"):
                        r.update(score(wd, m, y))
                r["n"] = n
                rows.append(r)
                summary["runs"].append(r)
                steps = " ".join(f"{k}={v}" for k, v in (r.get("steps") or r.get("steps_done_before_kill") or {}).items())
                status = r.get("skipped") or ("TIMEOUT" if r.get("timed_out") else ("ok" if r.get("rc") == 0 else f"rc={r.get('rc')}"))
                print(f"  {m:10s} {status:8s} wall {r.get('wall_s', float('nan')):7.1f} s  rss {r.get('peak_rss_gb', float('nan')):5.2f} GB"
                      f"  F_B {r.get('bcubed_f', float('nan')):.4f}  F_pair {r.get('pairwise_f', float('nan')):.4f}"
                      f"  largest {r.get('largest_cluster', '-')}/{r.get('largest_cluster_ids', '-')}ids"
                      f"  mixed {r.get('mixed_faces', '-')}  [{steps}]", flush=True)
                if r.get("error"):
                    print("    " + r["error"].strip().replace("\n", "\n    ")[-1500:], flush=True)
                if a.json:  # partial results survive a kill of the whole script
                    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.json).write_text(json.dumps(summary, indent=1))
    finally:
        if tmp is not None:
            tmp.cleanup()
    print("\n| N | method | status | wall s | peak RSS GB | BCubed F | pairwise F | largest cluster (faces / ids) "
          "| faces in mixed clusters | steps (s) |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        status = r.get("skipped") or ("timeout" if r.get("timed_out") else ("ok" if r.get("rc") == 0 else f"rc {r.get('rc')}"))
        steps = ", ".join(f"{k} {v}" for k, v in (r.get("steps") or r.get("steps_done_before_kill") or {}).items())
        big = f"{r['largest_cluster']} / {r['largest_cluster_ids']}" if "largest_cluster" in r else ""
        print(f"| {r['n']} | {r['method']} | {status} | {r.get('wall_s', '')} | {r.get('peak_rss_gb', '')} | {r.get('bcubed_f', '')} "
              f"| {r.get('pairwise_f', '')} | {big} | {r.get('mixed_faces', '')} | {steps} |")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1))
    return 0 if all(r.get("rc", 0) == 0 and not r.get("timed_out") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
