"""GPU smoke test: the demo end to end on CUDA, compared with the CPU run, with timings.

    python bench/gpu_smoke.py [--input INPUT.json] [--method gcn-ve] [--out DIR] [--json REPORT.json]

1. Checks the CUDA device (name, memory, capability, torch's CUDA version) and reports which
   GPU paths are installed: DALI (GPU JPEG decode), faiss-gpu (kNN); missing ones are reported
   as "not installed" and the pipeline uses what is there (torch kNN on CUDA).
2. Runs the stages (prepare, embed, merge, cluster) as the CLI runs them, once with
   ``--device cpu`` and once with ``--device cuda``, each stage timed.
3. Compares: per-face cosine between CPU and CUDA descriptors (>= 0.999) and the cluster
   labels (identical partition). Exit 1 on a mismatch.

Without a GPU it says so, runs the CPU path twice and checks its own comparison logic (the
same comparison must pass on identical runs and fail on perturbed features / a changed
partition), then exits 0. Meant to take well under 3 minutes on the demo (7 faces).

Input: --input, else ./example/input.json (``make demo``), else the demo is built
(``python -m facecluster.demo``; needs the face_recognition sdist, cached after one download).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COS_MIN = 0.999


def say(msg: str = "") -> None:
    print(msg, flush=True)


def environment() -> dict:
    """What is there: CUDA device, DALI, faiss(-gpu)."""
    import torch

    env: dict = {"python": sys.version.split()[0], "torch": torch.__version__,
                 "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if env["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        env["device"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count()}
        # A real kernel, not just the driver answering.
        x = torch.randn(256, 256, device="cuda")
        env["device"]["matmul_ok"] = bool(torch.isfinite(x @ x).all().item())
    if importlib.util.find_spec("nvidia.dali") if importlib.util.find_spec("nvidia") else None:
        import nvidia.dali as dali

        env["dali"] = dali.__version__
    else:
        env["dali"] = "not installed"
    if importlib.util.find_spec("faiss"):
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        env["faiss"] = f"{faiss.__version__} ({gpus} GPU{'s' if gpus != 1 else ''} visible)"
        env["faiss_gpu"] = gpus > 0
    else:
        env["faiss"], env["faiss_gpu"] = "not installed", False
    return env


def dali_check(inp: Path, gpu: bool) -> dict:
    """Decode the input's JPEGs with DALI (nvJPEG on the GPU) and compare with PIL's decode.

    facecluster itself decodes with PIL on the CPU; this checks that the DALI in the image
    works on this node (GPU decode for large inputs) and how fast it is. Different JPEG
    decoders differ by a few grey levels (IDCT rounding), hence the mean-difference bound.
    """
    from PIL import Image

    recs = json.loads(inp.read_text())
    base = inp.resolve().parent
    files = [str(p if p.is_absolute() else base / p) for p in (Path(r["img_path"]) for r in recs)]
    files = [f for f in files if f.lower().endswith((".jpg", ".jpeg"))][:64]
    if not files:
        return {"skipped": "no JPEG in the input"}
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(files), num_threads=2, device_id=0 if gpu else None)
    def decode():
        raw, _ = fn.readers.file(files=files, shuffle_after_epoch=False, random_shuffle=False)
        return fn.decoders.image(raw, device="mixed" if gpu else "cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    t0 = time.perf_counter()
    (out,) = pipe.run()
    if gpu:
        out = out.as_cpu()
    dt = time.perf_counter() - t0
    diffs = []
    for i, f in enumerate(files):
        ref = np.asarray(Image.open(f).convert("RGB"), dtype=np.int16)
        got = np.asarray(out.at(i), dtype=np.int16)
        if got.shape != ref.shape:
            return {"ok": False, "why": f"{f}: DALI shape {got.shape} vs PIL {ref.shape}"}
        diffs.append(float(np.abs(got - ref).mean()))
    return {"ok": max(diffs) < 3.0, "images": len(files), "decode_s": dt,
            "max_mean_abs_diff": max(diffs), "device": "mixed (nvJPEG)" if gpu else "cpu"}


def find_input(arg: Path | None, tmp: Path) -> Path:
    if arg:
        return arg
    example = REPO / "example" / "input.json"
    if example.is_file():
        return example
    say("building the demo input (python -m facecluster.demo)")
    subprocess.run([sys.executable, "-m", "facecluster.demo", str(tmp / "demo")], check=True)
    return tmp / "demo" / "input.json"


def run_stages(inp: Path, wd: Path, method: str, device: str, settings: list[str]) -> dict[str, float]:
    """prepare / embed / merge / cluster as separate CLI processes, timed (seconds)."""
    fc = [sys.executable, "-m", "facecluster.cli"]
    sets = [a for s in settings for a in ("--set", s)]
    steps = {
        "prepare": ["prepare", str(inp), "--work-dir", str(wd)],
        "embed": ["embed", "--work-dir", str(wd), "--device", device],
        "merge": ["merge", "--work-dir", str(wd)],
        "cluster": ["cluster", "--work-dir", str(wd), "--method", method, "--device", device, *sets,
                    "-o", str(wd / "output.json")],
    }
    times = {}
    env = dict(os.environ, FACECLUSTER_LOG=os.environ.get("FACECLUSTER_LOG", "WARNING"))
    env.pop("JOB_COMPLETION_INDEX", None)
    for name, args in steps.items():
        t0 = time.perf_counter()
        r = subprocess.run(fc + args, capture_output=True, text=True, env=env)
        times[name] = time.perf_counter() - t0
        if r.returncode not in (0, 3):
            raise SystemExit(f"{device} {name} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return times


def load_run(wd: Path, method: str) -> tuple[np.ndarray, np.ndarray, dict]:
    feats = np.load(wd / "features.npy")
    labels = np.load(wd / f"labels-{method}.npy")
    meta = json.loads((wd / f"labels-{method}.json").read_text())
    return feats, labels, meta


def compare(fa: np.ndarray, la: np.ndarray, fb: np.ndarray, lb: np.ndarray) -> dict:
    """Per-face cosine of descriptors and whether the two labelings are the same partition."""
    if fa.shape != fb.shape:
        return {"ok": False, "why": f"feature shapes differ: {fa.shape} vs {fb.shape}"}
    na = fa / np.maximum(np.linalg.norm(fa, axis=1, keepdims=True), 1e-12)
    nb = fb / np.maximum(np.linalg.norm(fb, axis=1, keepdims=True), 1e-12)
    cos = (na * nb).sum(1) if len(fa) else np.ones(0)
    # Same partition ⇔ the label pairs map one-to-one.
    pairs = set(zip(la.tolist(), lb.tolist()))
    same = len(pairs) == len(set(la.tolist())) == len(set(lb.tolist()))
    out = {"min_cosine": float(cos.min()) if len(cos) else 1.0,
           "max_abs_diff": float(np.abs(fa - fb).max()) if fa.size else 0.0,
           "same_partition": bool(same), "clusters": [len(set(la.tolist())), len(set(lb.tolist()))]}
    out["ok"] = out["min_cosine"] >= COS_MIN and out["same_partition"]
    return out


def self_check(fa: np.ndarray, la: np.ndarray) -> None:
    """The comparison must accept an identical run and reject a wrong one."""
    assert compare(fa, la, fa.copy(), la.copy())["ok"], "identical runs must compare equal"
    if len(fa) >= 1:
        bad = fa.copy()
        bad[0] = -bad[0]
        assert not compare(fa, la, bad, la)["ok"], "a flipped descriptor must be caught"
    if len(set(la.tolist())) >= 1 and len(la) >= 2:
        merged = np.zeros_like(la) if len(set(la.tolist())) > 1 else np.arange(len(la))
        assert not compare(fa, la, fa, merged)["ok"], "a different partition must be caught"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="GPU smoke test of the facecluster pipeline")
    ap.add_argument("--input", type=Path)
    ap.add_argument("--method", default="gcn-ve")
    ap.add_argument("--set", action="append", default=[], help="method setting KEY=VALUE")
    ap.add_argument("--out", type=Path, help="keep the work dirs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write the report as JSON here")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()

    env = environment()
    say("== environment")
    for k, v in env.items():
        say(f"  {k}: {v}")
    gpu = env["cuda_available"]
    if not gpu:
        say("NO CUDA DEVICE: running the CPU path twice to check this script's own logic; "
            "the GPU checks did not run.")

    with tempfile.TemporaryDirectory() as tmpd:
        root = a.out or Path(tmpd)
        root.mkdir(parents=True, exist_ok=True)
        inp = find_input(a.input, Path(tmpd))
        say(f"== input: {inp} ({len(json.loads(inp.read_text()))} records), method {a.method}")
        if env["dali"] != "not installed":
            try:
                env["dali_check"] = dali_check(inp, gpu)
            except Exception as e:  # noqa: BLE001  (reported, see below)
                env["dali_check"] = {"ok": False, "why": f"{type(e).__name__}: {e}"}
            say(f"== DALI decode check: {env['dali_check']}")
        else:
            say("== DALI decode check: DALI not installed (facecluster decodes with PIL)")
        runs = {}
        for label, device in (("cpu", "cpu"), ("gpu" if gpu else "cpu-again", "cuda" if gpu else "cpu")):
            wd = root / f"wd-{label}"
            times = run_stages(inp, wd, a.method, device, a.set)
            feats, labels, meta = load_run(wd, a.method)
            runs[label] = {"times": times, "feats": feats, "labels": labels, "meta": meta}
            say(f"== {label} (--device {device}): " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items())
                + f"; {len(labels)} faces, {len(set(labels.tolist()))} clusters")
            step_t = meta.get("timings") or meta.get("timings_s")
            if step_t:
                say(f"   {a.method} steps: " + json.dumps(step_t))
            for key in ("device", "knn_backend"):
                if key in json.dumps(meta):
                    val = meta.get("settings", {}).get(key, meta.get(key))
                    if val is not None:
                        say(f"   {key}: {val}")
        (la, lb) = list(runs)
        res = compare(runs[la]["feats"], runs[la]["labels"], runs[lb]["feats"], runs[lb]["labels"])
        self_check(runs[la]["feats"], runs[la]["labels"])
        say(f"== {la} vs {lb}: min cosine {res.get('min_cosine', float('nan')):.6f} "
            f"(need >= {COS_MIN}), max |diff| {res.get('max_abs_diff', float('nan')):.2e}, "
            f"same partition: {res.get('same_partition')}")
        report = {"environment": env, "input": str(inp), "method": a.method, "comparison": res,
                  "times": {k: v["times"] for k, v in runs.items()},
                  "total_s": time.perf_counter() - t_start, "gpu_checked": gpu}
        if a.json:
            a.json.write_text(json.dumps(report, indent=1, default=str))
    dali_bad = env.get("dali_check", {}).get("ok") is False
    if dali_bad:
        say("DALI decode check FAILED (see above): the pipeline itself does not use DALI, so this "
            "does not fail the smoke test, but the image's GPU decode is broken on this node.")
    say(f"== total {report['total_s']:.1f}s: " + ("PASS" if res["ok"] else "FAIL")
        + ("" if gpu else " (logic only: no GPU here)"))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
