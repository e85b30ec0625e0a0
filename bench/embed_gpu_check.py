"""CUDA check of the dlib port on a GPU machine without dlib installed.

Step 1, here (dlib installed): ``python bench/embed_gpu_check.py prepare DIR`` writes DIR/chips.npy
(48 aligned chips: LFW + glint18), DIR/ref.npy (dlib's own descriptors), DIR/cpu.npy (our CPU port)
and DIR/face_recognition_models/models/*.dat (a stand-in package holding the two model files).
Step 2, on the GPU machine: ``PYTHONPATH=shared:DIR python3 bench/embed_gpu_check.py check DIR``
prints parity (TF32 off and on), batch consistency and throughput as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def prepare(d: Path) -> None:
    import dlib

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from embed_throughput import sample_paths

    from facecluster.embed.dlib_resnet import DlibEmbedder, default_landmarks_path, default_model_path
    from facecluster.imageio import load_image

    pkg = d / "face_recognition_models"
    (pkg / "models").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").touch()
    for f in (default_model_path(), default_landmarks_path()):
        shutil.copy(f, pkg / "models" / f.name)
    e = DlibEmbedder()
    chips = np.stack([e.prepare(load_image(p), {}) for p in sample_paths(48)])
    net = dlib.face_recognition_model_v1(str(default_model_path()))
    np.save(d / "chips.npy", chips)
    np.save(d / "ref.npy", np.array([np.array(v) for v in net.compute_face_descriptor(list(chips), 0)], np.float32))
    np.save(d / "cpu.npy", e.embed_batch(chips))


def check(d: Path) -> dict:
    import torch

    from facecluster.embed.dlib_resnet import DlibEmbedder

    chips, ref, cpu = (np.load(d / f) for f in ("chips.npy", "ref.npy", "cpu.npy"))

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    e = DlibEmbedder(device="cuda", batch_size=64)
    g = e.embed_batch(chips)
    res["cos_vs_dlib_min"] = float(cos(g, ref).min())
    res["maxdiff_vs_dlib"] = float(np.abs(g - ref).max())
    res["maxdiff_vs_cpu_port"] = float(np.abs(g - cpu).max())
    res["batch7_vs_64_maxdiff"] = float(np.abs(DlibEmbedder(device="cuda", batch_size=7).embed_batch(chips) - g).max())
    res["repeat_equal"] = bool(np.array_equal(e.embed_batch(chips), g))
    big = np.tile(chips, (86, 1, 1, 1))[:4096]
    tp = {}
    for bs in (1, 64, 256, 1024):
        e.batch_size = bs
        x = big[:256] if bs == 1 else big
        e.embed_batch(x[: bs * 2])
        torch.cuda.synchronize()
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            e.embed_batch(x)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        tp[f"b{bs}"] = len(x) / best
    res["faces_per_s_fp32_incl_transfers"] = tp
    res["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    t32 = DlibEmbedder(device="cuda", batch_size=64, precision="tf32").embed_batch(chips)
    res["tf32_cos_vs_dlib_min"] = float(cos(t32, ref).min())
    res["tf32_maxdiff_vs_dlib"] = float(np.abs(t32 - ref).max())
    ec = DlibEmbedder(device="cpu", batch_size=64, threads=os.cpu_count())
    ec.embed_batch(chips)
    t = time.perf_counter()
    ec.embed_batch(big[:512])
    res["cpu_all_cores_faces_per_s"] = 512 / (time.perf_counter() - t)
    res["cpu_count"] = os.cpu_count()
    return res


if __name__ == "__main__":
    cmd, d = sys.argv[1], Path(sys.argv[2])
    if cmd == "prepare":
        prepare(d)
    else:
        print(json.dumps(check(d), indent=1))
