"""Throughput of every embedder: faces/s and peak memory, decode / alignment / network separated.

Models: hfsoftmax ResNet-50 with random weights (same architecture and cost as the released
checkpoint), an ArcFace-style ONNX IResNet-50 with random weights (the size and topology of
insightface's ``w600k_r50.onnx``: 43.6 M parameters, ~6.3 GMAC per face) exported here with
``torch.onnx``, and the default dlib embedder (packaged weights). Random weights cost the same
time as real ones; nothing is downloaded.

Images: a deterministic sample of ``glint18`` (112x112 aligned JPEG crops, the input hfsoftmax
and ArcFace expect; ArcFace uses ``align=none``) and, for ``arcface-dlib``, LFW crops aligned with
dlib's 5-point model (``align=dlib``). Each embedder runs in its own child process so that peak
memory (RSS, and CUDA's max allocated) is its own.

Per embedder, on one thread unless said otherwise:
  decode  ms/face of ``facecluster.imageio.load_image``
  align   ms/face of ``embedder.prepare`` (alignment / resize to the chip)
  network faces/s of ``embed_batch`` on ready chips (after a warm-up batch)
  e2e     faces/s of ``embed_records`` (thread pool decode+align overlapping the network)

With ``--device cuda`` it also reports, for hfsoftmax, the CPU-vs-GPU agreement (min cosine) and
GPU throughput for each precision (fp32, tf32, bf16, fp16), and the GPU JPEG decode rate of
``torchvision.io.decode_jpeg(device="cuda")`` when torchvision is installed (a probe for whether
GPU decoding would pay off).

Usage::

    nice -n 10 python bench/embed_backends.py --device cpu --n 128 --threads 1
    python bench/embed_backends.py --device cuda --quick          # the GPU check (< 3 min on an H200)
    python bench/embed_backends.py --calibrate-dlib --n 400        # re-measure arcface.DLIB_TEMPLATE
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: face data (``--data`` overrides, e.g. a small copy carried to the GPU machine)
DATA = Path(os.environ.get("FACECLUSTER_DATA", REPO / ".." / "shared" / "data"))
try:  # run from a checkout without `pip install -e .` (e.g. on the GPU machine)
    import facecluster  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(REPO / "shared"))

EMBEDDERS = ("hfsoftmax", "arcface", "arcface-dlib", "dlib")


# ------------------------------------------------------------------------------------ data/models
def sample(set_name: str, n: int) -> list[str]:
    files = sorted(str(p) for p in (DATA / set_name).resolve().glob("*/*") if p.suffix.lower() in (".jpg", ".png"))
    if not files:
        raise SystemExit(f"no images under {DATA / set_name}")
    idx = np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)
    return [files[i] for i in idx]


def make_hfsoftmax(path: Path) -> None:
    import torch

    from facecluster.embed.hfsoftmax import HfsoftmaxResNet50

    torch.manual_seed(0)
    sd = HfsoftmaxResNet50().state_dict()
    torch.save({"state_dict": {"module.base." + k: v for k, v in sd.items()}}, path)


def make_iresnet50_onnx(path: Path) -> None:
    """insightface-style IResNet-50 (layers 3-4-14-3, BN-conv-BN-PReLU-conv-BN blocks, FC 25088→512)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
                nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):
            return self.body(x) + self.down(x)

    layers, widths, mods, cin = (3, 4, 14, 3), (64, 128, 256, 512), [], 64
    for n, w in zip(layers, widths):
        for i in range(n):
            mods.append(Block(cin, w, 2 if i == 0 else 1))
            cin = w
    net = nn.Sequential(
        nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64), *mods,
        nn.BatchNorm2d(512), nn.Flatten(), nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512),
    ).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(
        net, torch.zeros(1, 3, 112, 112), str(tmp), input_names=["input.1"], output_names=["embedding"],
        dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}}, opset_version=17, dynamo=False,
    )
    os.replace(tmp, path)


def ensure_models(model_dir: Path, names: list[str]) -> dict[str, str]:
    model_dir.mkdir(parents=True, exist_ok=True)
    hfs, onnx_path = model_dir / "hfsoftmax_random.pth.tar", model_dir / "iresnet50_random.onnx"
    if "hfsoftmax" in names and not hfs.exists():
        make_hfsoftmax(hfs)
    if any(n.startswith("arcface") for n in names) and not onnx_path.exists():
        try:
            make_iresnet50_onnx(onnx_path)
        except Exception as e:  # torch.onnx needs the `onnx` package
            print(f"# cannot export the IResNet-50 ONNX ({type(e).__name__}: {e}); arcface skipped", file=sys.stderr)
    return {
        "hfsoftmax": f"hfsoftmax:{hfs}",
        "arcface": f"arcface:{onnx_path}?align=none",
        "arcface-dlib": f"arcface:{onnx_path}?align=dlib",
        "dlib": "dlib",
    }


# ------------------------------------------------------------------------------------ child
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 0)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)


def child(name: str, spec: str, args) -> dict:
    import torch

    from facecluster.embed import get_embedder
    from facecluster.embed.runner import default_num_workers, embed_records
    from facecluster.imageio import load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    opts = {"threads": args.threads} if args.threads else {}
    files = sample("lfw" if name in ("arcface-dlib", "dlib") else "glint18", args.n)
    t0 = time.perf_counter()
    emb = get_embedder(spec, device=args.device, batch_size=args.batch_size, options=opts)
    res: dict = {"embedder": name, "device": args.device, "n": len(files), "batch": args.batch_size,
                 "load_s": round(time.perf_counter() - t0, 2)}
    # the network's CPU threads as the embedder resolved them (hfsoftmax/dlib: torch; arcface: onnxruntime)
    eff = getattr(emb, "cpu_threads", None) or getattr(emb, "threads", None) or torch.get_num_threads()
    res["threads"] = eff if not args.device.startswith("cuda") else "-"
    if name.startswith("arcface"):
        res["providers"] = emb.providers
    t0 = time.perf_counter()
    imgs = [load_image(f) for f in files]
    res["decode_ms"] = round((time.perf_counter() - t0) / len(files) * 1e3, 3)
    t0 = time.perf_counter()
    chips = np.stack([emb.prepare(im, {}) for im in imgs])
    res["align_ms"] = round((time.perf_counter() - t0) / len(files) * 1e3, 3)
    emb.embed_batch(chips[: args.batch_size])  # warm-up (cuDNN autotune, ORT arena)
    _sync(args.device)
    t0 = time.perf_counter()
    feats = emb.embed_batch(chips)
    _sync(args.device)
    dt = time.perf_counter() - t0
    res["network_fps"] = round(len(files) / dt, 1)
    workers = args.workers if args.workers is not None else default_num_workers()
    t0 = time.perf_counter()
    out = embed_records(emb, files, None, num_workers=workers)
    dt = time.perf_counter() - t0
    res["e2e_fps"] = round(len(files) / dt, 1)
    res["workers"] = workers
    res["e2e_errors"] = len(out.errors)
    res["e2e_vs_stepwise_max_abs"] = float(np.abs(out.features - feats[out.index]).max()) if len(out.index) else None
    res["peak_rss_mb"] = peak_rss_mb()
    if args.device.startswith("cuda"):
        res["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 0)
    if args.device.startswith("cuda") and name == "hfsoftmax":
        res["e2e_timings"] = {k: round(v, 3) for k, v in out.timings.items()}
        res["precision"] = precision_sweep(spec, chips, args)
        res["gpu_decode"] = gpu_decode_probe(files)
        try:  # end to end with nvJPEG decoding (needs torchvision)
            nv = get_embedder(spec + "?decoder=nvjpeg", device=args.device, batch_size=args.batch_size)
            embed_records(nv, files[: args.batch_size], None, num_workers=workers)  # warm-up
            t0 = time.perf_counter()
            o2 = embed_records(nv, files, None, num_workers=workers)
            dt = time.perf_counter() - t0
            a, b = out.features, o2.features
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            res["e2e_nvjpeg"] = {"fps": round(len(files) / dt, 1), "min_cos_vs_pil": round(float(cos.min()), 6),
                                 "timings": {k: round(v, 3) for k, v in o2.timings.items()}}
        except Exception as e:  # noqa: BLE001
            res["e2e_nvjpeg"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return res


def precision_sweep(spec: str, chips: np.ndarray, args) -> dict:
    """CPU fp32 reference vs GPU at each precision: min cosine and GPU faces/s (batch 256)."""
    import torch

    from facecluster.embed import get_embedder

    ref_n = min(64, len(chips))
    ref = get_embedder(spec, device="cpu").embed_batch(chips[:ref_n])
    out = {}
    big = np.concatenate([chips] * max(1, 2048 // len(chips)))[:2048]
    for prec in ("fp32", "tf32", "bf16", "fp16"):
        emb = get_embedder(spec, device=args.device, batch_size=256, options={"precision": prec})
        f = emb.embed_batch(chips[:ref_n])
        cos = (f * ref).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(ref, axis=1)
        x = torch.from_numpy(big).to(args.device)
        for _ in range(2):
            emb.forward_chips(x[:256])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(0, len(big), 256):
            emb.forward_chips(x[s : s + 256])
        torch.cuda.synchronize()
        out[prec] = {"min_cos_vs_cpu": round(float(cos.min()), 7), "gpu_net_fps": round(len(big) / (time.perf_counter() - t0), 0)}
    return out


def gpu_decode_probe(files: list[str]) -> dict:
    try:
        import torch
        import torchvision
        from torchvision.io import decode_jpeg
    except Exception as e:  # noqa: BLE001
        return {"unavailable": f"{type(e).__name__}: {e}"}
    jpgs = [f for f in files if f.lower().endswith(".jpg")]
    datas = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in jpgs]
    try:
        decode_jpeg(datas[:8], device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            decode_jpeg(datas, device="cuda")
        torch.cuda.synchronize()
        gpu = 3 * len(datas) / (time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001
        return {"torchvision": torchvision.__version__, "error": f"{type(e).__name__}: {e}"}
    from facecluster.imageio import load_image

    t0 = time.perf_counter()
    for f in jpgs:
        load_image(f)
    cpu = len(jpgs) / (time.perf_counter() - t0)
    return {"torchvision": torchvision.__version__, "gpu_nvjpeg_fps": round(gpu, 0), "cpu_pil_1thread_fps": round(cpu, 0)}


# ------------------------------------------------------------------------------------ dlib template
def calibrate_dlib(n: int) -> None:
    """Median dlib (left eye centre, right eye centre, nose base) on ArcFace-aligned glint18 crops."""
    from facecluster.embed.align import Aligner
    from facecluster.embed.arcface import ArcFaceEmbedder
    from facecluster.imageio import load_image

    rng = np.random.default_rng(0)
    files = sorted(str(p) for p in (DATA / "glint18").resolve().glob("*/*.jpg"))
    files = [files[i] for i in rng.choice(len(files), min(n, len(files)), replace=False)]
    probe = ArcFaceEmbedder.__new__(ArcFaceEmbedder)  # only dlib_points() is used: no ONNX model needed
    probe._aligner = Aligner(margin="auto")
    pts = np.array([probe.dlib_points(load_image(f)) for f in files])
    # dlib's points are integers in the 150-px working image, so medians jump in 0.75-px steps:
    # the mean (after dropping gross failures beyond 3 std) is the stabler estimate
    dev = np.abs(pts - np.median(pts, 0)).max(axis=(1, 2))
    keep = dev <= 3 * pts.std(0).max()
    print("DLIB_TEMPLATE (mean over", int(keep.sum()), "of", len(files), "glint18 crops):", np.round(pts[keep].mean(0), 2).tolist())
    print("median:", np.round(np.median(pts, 0), 2).tolist(), "std:", np.round(pts.std(0), 2).tolist())


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=128, help="images per embedder")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch / onnxruntime CPU threads (default: library default)")
    ap.add_argument("--workers", type=int, default=None, help="decode/align threads in embed_records")
    ap.add_argument("--embedders", default=",".join(EMBEDDERS))
    ap.add_argument("--quick", action="store_true", help="fewer images (GPU check)")
    ap.add_argument("--model-dir", default="/tmp/facecluster-bench-models")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--data", default=None, help="folder holding glint18/ and lfw/ (default ../shared/data)")
    ap.add_argument("--export-sample", default=None, metavar="DIR",
                    help="copy the images this benchmark uses (--n per set) to DIR/{glint18,lfw} and exit")
    ap.add_argument("--calibrate-dlib", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.data:
        global DATA
        DATA = Path(args.data)
        os.environ["FACECLUSTER_DATA"] = str(DATA.resolve())  # children read it
    if args.quick:
        args.n = min(args.n, 256 if args.device.startswith("cuda") else 64)
    if args.calibrate_dlib:
        calibrate_dlib(args.n)
        return
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.spec, args)), flush=True)
        return
    if args.export_sample:
        for set_name in ("glint18", "lfw"):
            for f in sample(set_name, args.n):
                dst = Path(args.export_sample) / set_name / Path(f).parent.name / Path(f).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(Path(f).read_bytes())
        print(f"copied {args.n} glint18 + {args.n} lfw images to {args.export_sample}")
        return
    names = args.embedders.split(",")
    specs = ensure_models(Path(args.model_dir), names)
    results = []
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--spec", specs[name], "--device", args.device,
               "--n", str(args.n), "--batch-size", str(args.batch_size)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            results.append({"embedder": name, "device": args.device, "error": err[:300]})
            print(f"# {name}: failed: {err[:300]}", file=sys.stderr)
            continue
        results.append(json.loads(line[0][7:]))
        print(json.dumps(results[-1]), flush=True)
    print()
    print("| embedder | device | threads | n | decode ms/face | align ms/face | network faces/s | end-to-end faces/s (workers) | peak RSS MB | CUDA peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['embedder']} | {r['device']} | | | failed: {r['error']} | | | | | |")
            continue
        print(f"| {r['embedder']} | {r['device']} | {r['threads']} | {r['n']} | {r['decode_ms']} | {r['align_ms']} | "
              f"{r['network_fps']} | {r['e2e_fps']} ({r['workers']}) | {r['peak_rss_mb']:.0f} | {r.get('cuda_peak_mb', '-')} |")
    for r in results:
        if "precision" in r:
            print("\n| precision | min cosine vs CPU fp32 | GPU network faces/s (batch 256) |\n|---|---|---|")
            for k, v in r["precision"].items():
                print(f"| {k} | {v['min_cos_vs_cpu']} | {v['gpu_net_fps']:.0f} |")
            print("\nGPU decode probe:", json.dumps(r["gpu_decode"]))
            print("end to end, decoder=pil:", json.dumps(r.get("e2e_timings")), f"{r['e2e_fps']} faces/s")
            print("end to end, decoder=nvjpeg:", json.dumps(r.get("e2e_nvjpeg")))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
