"""End-to-end throughput of the embed stage: faces/s per step and for the whole command.

Sub-commands (each prints a markdown table and, with ``--json PATH``, writes its numbers):

``records``
    Replicate face crops (JPEG/PNG files under ``--src`` folders) to ``--n`` distinct files on
    disk and write an input JSON for them: what users hand to ``facecluster`` (the network reads
    every record from its own file, so nothing is served from one cached image).
``steps``
    One process, sequential, on ``--n`` crops: decode (``load_image`` + size normalisation),
    face box (HOG for ``auto``/``hog``, a margin box otherwise), landmarks (dlib 5 points; three
    predictor runs for ``iter``), chip (``get_face_chip``), then the network batched on
    ``--device``. With ``--align torch``: decode and face box per face on the CPU, then host-to-device
    copy, landmarks, chip and network each batched on ``--device`` (and the three together). Prints ms/face and faces/s per CPU core for each CPU step, faces/s of the
    network, and what ``--workers`` cores would sustain (CPU steps spread over the workers).
``e2e``
    The whole commands ``python -m facecluster.cli prepare`` + ``embed`` as child processes (model
    load and interpreter start included) on an input JSON; faces/s = records / wall seconds of
    both; peak RSS of the embed process tree.
``dlib-loop``
    The reference: dlib's own loop in this process (``load_rgb_image``, HOG detector with one
    upsampling, 5-point predictor from the largest detection or the whole crop,
    ``compute_face_descriptor``); time the whole process from outside (``/usr/bin/time``).
``landmarks``
    dlib's 5-point predictor batched in torch (:mod:`facecluster.embed.landmarks_torch`) on
    ``--device``: landmarks/s for the whole batch, and agreement with dlib's own predictor.
``align-parity``
    The torch alignment (``dlib?align=torch``: landmarks + chip batched on ``--device``) vs the
    default CPU alignment on the same crops and boxes: landmarks, chip pixels, descriptor cosine.
``align-quality``
    ``align=torch`` vs the default alignment on ``bench/embed_alignment.py``'s identity samples
    (1-NN, AUC, BCubed F of the default clustering method) and descriptor cosine between the two.
``parity``
    Chips aligned on the CPU → descriptors of the PyTorch port on ``--device`` vs dlib's own
    ``compute_face_descriptor`` on the same chips (cosine, max abs difference).

Usage::

    python bench/embed_throughput.py records --src /work/shared/data/lfw --n 2000 --out /tmp/recs
    python bench/embed_throughput.py steps --input /tmp/recs/input.json --n 400 --device cpu
    python bench/embed_throughput.py e2e --input /tmp/recs/input.json --device cpu --work /tmp/w
    python bench/embed_throughput.py dlib-loop --input /tmp/recs/input.json --n 400
    python bench/embed_throughput.py parity --input /tmp/recs/input.json --n 64 --device cuda
    python bench/embed_throughput.py steps --input /tmp/recs/input.json --n 400 --device cuda --align torch
    python bench/embed_throughput.py align-parity --input /tmp/recs/input.json --n 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EXTS = (".jpg", ".jpeg", ".png")


def _files(srcs: list[str]) -> list[Path]:
    out: list[Path] = []
    for s in srcs:
        p = Path(s)
        out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in EXTS) if p.is_dir() else [p]
    if not out:
        raise SystemExit(f"no JPEG/PNG files under {srcs}")
    return out


def _paths(args: argparse.Namespace) -> list[str]:
    """--n paths from --input (a facecluster input JSON) or --src folders, cycled when fewer."""
    if args.input:
        paths = [r["img_path"] for r in json.loads(Path(args.input).read_text())]
    else:
        paths = [str(p) for p in _files(args.src)]
    n = args.n or len(paths)
    return [paths[i % len(paths)] for i in range(n)]


def _emit(args: argparse.Namespace, rows: list[tuple], head: tuple, data: dict) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))


# ----------------------------------------------------------------------------------------------
def cmd_records(args: argparse.Namespace) -> None:
    """Copy --src crops cyclically to --n distinct files in --out and write --out/input.json."""
    files = _files(args.src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recs = []
    t = time.perf_counter()
    for i in range(args.n):
        src = files[i % len(files)]
        dst = out / f"{i // 10000:03d}" / f"{i:07d}{src.suffix.lower()}"
        if i % 10000 == 0:
            dst.parent.mkdir(exist_ok=True)
        if not dst.exists():
            shutil.copyfile(src, dst)
        recs.append({"img_path": str(dst), "face_id": i})
    (out / "input.json").write_text(json.dumps(recs))
    kinds = {e: sum(1 for r in recs if r["img_path"].endswith(e)) for e in EXTS}
    print(f"{args.n} records from {len(files)} crops in {out} ({kinds}) in {time.perf_counter() - t:.1f} s")


# ----------------------------------------------------------------------------------------------
def _cpu_step_rows(t: dict[str, float], n: int, rows: list[tuple], steps: dict) -> float:
    """Append one table row and one ``steps`` entry per CPU step (``t``: seconds over ``n`` faces,
    one core); returns their summed ms per face."""
    cpu_ms = 0.0
    for k, v in t.items():
        ms = 1000 * v / n
        cpu_ms += ms
        rows.append((k, "cpu, 1 core", f"{ms:.2f}", f"{1000 / ms:.0f}" if ms > 0 else "-"))
        steps[k] = {"ms_per_face": ms}
    return cpu_ms


def cmd_steps(args: argparse.Namespace) -> None:
    import torch

    from facecluster.embed import align as A
    from facecluster.embed.dlib_resnet import DlibEmbedder
    from facecluster.imageio import load_image

    torch.set_num_threads(max(1, args.threads))
    if args.align == "torch":
        return _steps_torch_align(args)
    paths = _paths(args)
    al = A.Aligner(margin=args.margin)
    emb = DlibEmbedder(device=args.device, batch_size=args.batch_size, margin=args.margin, threads=args.threads)
    agree = al.kind == "agree"
    t_hog = [0.0, 0]  # agree: HOG seconds and runs inside landmarks_rule (its face-box step)
    if agree:
        def timed_hog(img):
            t0 = time.perf_counter()
            try:
                return A.Aligner.hog_rect(img)
            finally:
                t_hog[0] += time.perf_counter() - t0
                t_hog[1] += 1
        al.hog_rect = timed_hog  # Aligner._agree calls self.hog_rect for the disagreeing crops
    # warm-up: the predictor's model load and the first HOG run are not per-face costs
    w = A.normalise_size(A.to_rgb_uint8(load_image(paths[0])))
    A.Aligner.hog_rect(w)
    al.chip_from(w, al.landmarks_rule(w)[0])
    t_hog[:] = [0.0, 0]
    t = {"decode": 0.0, "face box": 0.0, "landmarks": 0.0, "chip": 0.0}
    chips = []
    for p in paths:
        t0 = time.perf_counter()
        img = A.normalise_size(A.to_rgb_uint8(load_image(p)))
        t1 = time.perf_counter()
        if agree:  # agree places its own boxes: 3 predictor runs, HOG + 1 run where they disagree
            h0 = t_hog[0]
            shape = al.landmarks_rule(img)[0]
            t2 = t1 + (t_hog[0] - h0)  # the HOG share counts as the face box
        else:
            box, _ = al.rect(img)
            t2 = time.perf_counter()
            shape = al.landmarks_in(img, box)
        t3 = time.perf_counter()
        chips.append(al.chip_from(img, shape))
        t4 = time.perf_counter()
        t["decode"] += t1 - t0
        t["face box"] += t2 - t1
        t["landmarks"] += t3 - t2
        t["chip"] += t4 - t3
    chips_a = np.stack(chips)
    n = len(paths)
    # network: whole batches on the device, after one warm-up batch (cuDNN autotuning, allocator)
    reps = max(1, -(-args.net_faces // n)) if args.net_faces else 1
    big = np.concatenate([chips_a] * reps)
    emb.embed_batch(big[: args.batch_size])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    emb.embed_batch(big)
    sync()
    t_net = time.perf_counter() - t0
    rows, data = [], {"n": n, "device": args.device, "margin": al.margin, "workers": args.workers, "steps": {}}
    cpu_ms = _cpu_step_rows(t, n, rows, data["steps"])
    net_fps = len(big) / t_net
    rows.append(("network", f"{args.device}, batch {args.batch_size}", f"{1000 / net_fps:.3f}", f"{net_fps:.0f}"))
    data["steps"]["network"] = {"faces_per_s": net_fps, "faces": len(big)}
    cpu_fps = args.workers * 1000 / cpu_ms
    rows.append(("CPU steps together", f"{args.workers} workers", f"{cpu_ms:.2f}", f"{cpu_fps:.0f}"))
    rows.append(("bound: min(CPU steps, network)", "", "", f"{min(cpu_fps, net_fps):.0f}"))
    data.update(cpu_ms_per_face=cpu_ms, cpu_faces_per_s=cpu_fps, network_faces_per_s=net_fps, bound=min(cpu_fps, net_fps))
    if agree:
        data["agree_hog_share"] = t_hog[1] / n
        print(f"agree: HOG ran on {t_hog[1]} of {n} crops ({t_hog[1] / n:.1%}); 'face box' is that HOG time")
    print(f"steps: {n} crops, margin {al.margin}, device {args.device}")
    _emit(args, rows, ("step", "where", "ms/face", "faces/s"), data)


def _steps_torch_align(args: argparse.Namespace) -> None:
    """``steps --align torch``: decode and face box per face on the CPU (what the workers do),
    then landmarks, chip and network batched on --device (what the main process does)."""
    import torch

    from facecluster.embed.face_images import FaceImagePreparer
    from facecluster.embed.torch_align import DlibTorchAlignEmbedder
    from facecluster.imageio import load_image

    paths = _paths(args)
    emb = DlibTorchAlignEmbedder(device=args.device, batch_size=args.batch_size, margin=args.margin, threads=args.threads,
                                 hog_workers=args.hog_workers)
    prep = FaceImagePreparer(emb.aligner)
    prep.prepare(load_image(paths[0]))  # warm-up: HOG's first run
    t = {"decode": 0.0, "face box": 0.0}
    items = []
    for p in paths:
        t0 = time.perf_counter()
        img = load_image(p)
        t1 = time.perf_counter()
        items.append(prep.prepare(img))  # size normalisation + box (HOG for auto/hog)
        t["face box"] += time.perf_counter() - t1
        t["decode"] += t1 - t0
    n = len(items)
    ta = emb.torch_aligner  # model parse, not a per-face cost
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    reps = max(1, -(-args.net_faces // n)) if args.net_faces else 1
    big = (items * reps)[: max(n, args.net_faces or 0)]
    bs = args.batch_size

    def batches():
        return [big[s : s + bs] for s in range(0, len(big), bs)]

    # warm-up batch (cuDNN autotuning, allocator), then each device step over all batches
    emb.embed_batch(big[:bs])
    sync()
    t0 = time.perf_counter()
    moved = [ta.to_device(b) for b in batches()]
    sync()
    t_h2d = time.perf_counter() - t0
    agree = emb.aligner.kind == "agree"
    for k in ta.agree_counts:
        ta.agree_counts[k] = 0
    t0 = time.perf_counter()
    pts = [ta.landmarks(*m, [it.image for it in b]) for m, b in zip(moved, batches())]
    sync()
    t_lm = time.perf_counter() - t0
    counts = dict(ta.agree_counts)
    from facecluster.embed.align import CHIP_PADDING, CHIP_SIZE
    from facecluster.embed.chip_torch import extract_chips

    t0 = time.perf_counter()
    chips = [extract_chips(m[0], m[1], q, CHIP_SIZE, CHIP_PADDING) for m, q in zip(moved, pts)]
    sync()
    t_chip = time.perf_counter() - t0
    net = emb.net
    t0 = time.perf_counter()
    with torch.inference_mode():
        for c in chips:
            net(c.permute(0, 3, 1, 2).float())
    sync()
    t_net = time.perf_counter() - t0
    del moved, pts, chips
    t0 = time.perf_counter()
    emb.embed_batch(big)
    sync()
    t_all = time.perf_counter() - t0
    m = len(big)
    rows, data = [], {"n": n, "device": args.device, "margin": emb.aligner.margin, "align": "torch",
                      "workers": args.workers, "steps": {}}
    cpu_ms = _cpu_step_rows(t, n, rows, data["steps"])
    if agree:
        # HOG of the disagreeing crops runs on the host inside the landmarks step: report it as a
        # CPU step (per face of the whole set) and the device landmarks without it
        hog_s = counts["hog_seconds"]
        t_lm -= hog_s
        ms = 1000 * hog_s / m
        where = "cpu, main process" if not args.hog_workers else f"main waits on {args.hog_workers} HOG processes"
        rows.append(("face box (HOG, disagreeing crops)", where, f"{ms:.2f}",
                     f"{1000 / ms:.0f}" if ms > 0 else "-"))
        data["steps"]["agree hog"] = {"ms_per_face": ms, "share": counts["hog"] / max(1, counts["crops"]),
                                      "found": counts["hog_found"]}
        print(f"agree: starts disagreed on {counts['hog']:.0f} of {counts['crops']:.0f} crops "
              f"({counts['hog'] / max(1, counts['crops']):.1%}), HOG box on {counts['hog_found']:.0f}")
    for k, v in (("host to device", t_h2d), ("landmarks", t_lm), ("chip", t_chip), ("network", t_net),
                 ("landmarks + chip + network", t_all)):
        rows.append((k, f"{args.device}, batch {bs}", f"{1000 * v / m:.3f}", f"{m / v:.0f}"))
        data["steps"][k] = {"faces_per_s": m / v, "faces": m}
    dev_fps = m / t_all
    cpu_fps = args.workers * 1000 / cpu_ms
    rows.append(("CPU steps together", f"{args.workers} workers", f"{cpu_ms:.2f}", f"{cpu_fps:.0f}"))
    rows.append(("bound: min(CPU steps, device steps)", "", "", f"{min(cpu_fps, dev_fps):.0f}"))
    data.update(cpu_ms_per_face=cpu_ms, cpu_faces_per_s=cpu_fps, network_faces_per_s=m / t_net,
                device_faces_per_s=dev_fps, bound=min(cpu_fps, dev_fps))
    print(f"steps (align=torch): {n} crops, margin {emb.aligner.margin}, device {args.device}")
    _emit(args, rows, ("step", "where", "ms/face", "faces/s"), data)


# ----------------------------------------------------------------------------------------------
class _TreeCPU:
    """CPU seconds (user + system) of a process and all its descendants, polled from /proc.

    ``getrusage(RUSAGE_CHILDREN)`` misses the embed workers: they are children of the
    multiprocessing fork server, which nobody waits for. So a thread reads ``/proc/<pid>/stat``
    of every descendant every ``period`` s and keeps each process's last value; the CPU a
    process spends after its last poll (< ``period`` s) is missed. Linux only (else 0).
    """

    def __init__(self, pid: int, period: float = 0.2):
        import threading

        self.pid, self.period, self.seen = pid, period, {}
        self.hz = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _poll(self) -> None:
        stats = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / self.hz)  # ppid, utime + stime
        tree, grew = {self.pid}, True
        while grew:
            new = {p for p, (pp, _) in stats.items() if pp in tree} - tree
            tree |= new
            grew = bool(new)
        for p in tree:
            if p in stats:
                self.seen[p] = max(self.seen.get(p, 0.0), stats[p][1])

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._poll()

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return sum(self.seen.values())


def _timed(cmd: list[str], env: dict, cpu: list[float] | None = None) -> tuple[float, float, str]:
    """(wall s, peak RSS MB of the process tree, output tail) of one child command.

    ``cpu``, if given, gets the command's CPU seconds appended: the whole process tree's
    (:class:`_TreeCPU`), at least the waited-for processes' (``RUSAGE_CHILDREN``).
    """
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree = _TreeCPU(proc.pid) if sys.platform.startswith("linux") else None
    out, err = proc.communicate()
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    polled = tree.stop() if tree is not None else 0.0
    if cpu is not None:
        cpu.append(max(waited, polled))
    p = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return dt, rss, (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else ""


def cmd_e2e(args: argparse.Namespace) -> None:
    n = len(json.loads(Path(args.input).read_text()))
    work = Path(args.work or tempfile.mkdtemp(prefix="fc-e2e-"))
    if work.exists():
        shutil.rmtree(work)
    env = dict(os.environ)
    if args.worker_kind:
        env["FACECLUSTER_EMBED_WORKERS"] = args.worker_kind
    fc = [sys.executable, "-m", "facecluster.cli"]
    cpu: list[float] = []
    load0 = os.getloadavg()[0]
    t_prep, _, _ = _timed([*fc, "prepare", args.input, "-w", str(work)], env, cpu)
    cmd = [*fc, "embed", "-w", str(work), "--device", args.device, "--batch-size", str(args.batch_size),
           "--embedder", args.embedder]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    t_emb, rss, tail = _timed(cmd, env, cpu)
    meta = json.loads(next((work / "features").glob("*.meta.json")).read_text()) if (work / "features").is_dir() else {}
    errors = len(meta.get("errors", {})) if isinstance(meta.get("errors"), dict) else meta.get("errors")
    wall = t_prep + t_emb
    data = {"n": n, "device": args.device, "embedder": args.embedder, "workers": args.workers,
            "worker_kind": args.worker_kind or "auto", "prepare_s": t_prep, "embed_s": t_emb, "wall_s": wall,
            "faces_per_s": n / wall, "peak_rss_mb": rss, "errors": errors, "embed_output": tail,
            "prepare_cpu_s": cpu[0], "embed_cpu_s": cpu[1], "cpu_s": sum(cpu), "load_1min": load0}
    print(f"e2e: {n} records, {args.embedder}, {args.device}: {tail}")
    _emit(args, [(n, args.embedder, args.device, args.workers if args.workers is not None else "default",
                  f"{t_prep:.1f}", f"{t_emb:.1f}", f"{n / wall:.0f}", f"{sum(cpu):.1f}", f"{load0:.1f}", f"{rss:.0f}",
                  errors)],
          ("records", "embedder", "device", "workers", "prepare s", "embed s", "faces/s", "CPU s", "load", "peak RSS MB",
           "errors"), data)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
def cmd_dlib_loop(args: argparse.Namespace) -> None:
    """dlib's own loop in this process (time this whole process from outside for the reference)."""
    t0 = time.perf_counter()
    import importlib.util

    import dlib

    # the package folder found without importing facecluster's embedder (that would import torch,
    # which dlib's own loop does not need)
    spec = importlib.util.find_spec("face_recognition_models")
    models = next(Path(d) / "models" for d in spec.submodule_search_locations)
    paths = _paths(args)
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    t1 = time.perf_counter()
    found = 0
    for p in paths:
        img = dlib.load_rgb_image(p)
        d = det(img, 1)
        found += len(d) > 0
        r = max(d, key=lambda r: r.area()) if len(d) else dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
        np.asarray(rec.compute_face_descriptor(img, sp(img, r), 0))
    dt = time.perf_counter() - t0
    data = {"n": len(paths), "load_s": t1 - t0, "wall_s": dt, "faces_per_s": len(paths) / dt, "detected": found}
    _emit(args, [(len(paths), f"{t1 - t0:.1f}", f"{dt:.1f}", f"{len(paths) / dt:.1f}", found)],
          ("faces", "model load s", "s (after interpreter start)", "faces/s", "HOG found a face"), data)


# ----------------------------------------------------------------------------------------------
def cmd_parity(args: argparse.Namespace) -> None:
    import dlib

    from facecluster.embed.dlib_resnet import DlibEmbedder, default_model_path
    from facecluster.imageio import load_image

    paths = _paths(args)
    emb = DlibEmbedder(device=args.device, batch_size=64, margin=args.margin, precision=args.precision)
    chips = np.stack([emb.prepare(load_image(p)) for p in paths])
    ref = np.asarray(dlib.face_recognition_model_v1(str(default_model_path())).compute_face_descriptor(list(chips), 0))
    got = emb.embed_batch(chips)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    data = {"n": len(paths), "device": args.device, "precision": args.precision, "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(ref - got).max())}
    _emit(args, [(len(paths), args.device, args.precision, f"{cos.min():.7f}", f"{np.abs(ref - got).max():.2e}")],
          ("chips", "device", "precision", "min cosine vs dlib", "max abs diff"), data)
    if cos.min() < 0.999:
        raise SystemExit(f"parity FAILED: min cosine {cos.min():.6f} < 0.999")


# ----------------------------------------------------------------------------------------------
def cmd_align_parity(args: argparse.Namespace) -> None:
    """``align=torch`` vs the default CPU alignment on the same crops: landmarks (px), chips (pixel
    values) and descriptors (cosine), the network on --device for both."""
    import torch

    from facecluster.embed.chip_torch import round_points
    from facecluster.embed.dlib_resnet import DlibEmbedder
    from facecluster.embed.torch_align import DlibTorchAlignEmbedder
    from facecluster.imageio import load_image

    if args.device == "cpu":
        torch.set_num_threads(1)
    paths = _paths(args)
    ref = DlibEmbedder(device=args.device, batch_size=args.batch_size, margin=args.margin)
    emb = DlibTorchAlignEmbedder(device=args.device, batch_size=args.batch_size, margin=args.margin)
    imgs = [load_image(p) for p in paths]
    items = [emb.prepare(im) for im in imgs]
    al = ref.aligner
    agree = al.kind == "agree"
    ref_pts, ref_chips, ref_rules = [], [], []
    for it in items:  # the CPU path on the same normalised image and box as the torch path
        if agree:  # agree places its own boxes (and runs HOG where its starts disagree)
            shape, rule = al.landmarks_rule(it.image)
            ref_rules.append(rule)
        else:
            shape = al.landmarks_in(it.image, it.box)
        ref_pts.append([(q.x, q.y) for q in shape.parts()])
        ref_chips.append(al.chip_from(it.image, shape))
    ref_pts, ref_chips = np.asarray(ref_pts, float), np.stack(ref_chips)
    ta = emb.torch_aligner
    got_pts, got_chips, got_rules = [], [], []
    hog_runs = 0  # agree: crops whose two starts disagreed (HOG ran; it may find no plausible box)
    for s in range(0, len(items), args.batch_size):
        batch = items[s : s + args.batch_size]
        m = ta.to_device(batch)
        runs = ta.agree_counts["hog"]
        got_pts.append(round_points(ta.landmarks(*m, [it.image for it in batch])).cpu().numpy())
        got_rules += ta.last_rules
        hog_runs += ta.agree_counts["hog"] - runs
        got_chips.append(ta.chips(batch).cpu().numpy())
    got_pts, got_chips = np.concatenate(got_pts), np.concatenate(got_chips)
    dp = np.abs(got_pts - ref_pts).max((1, 2))
    same = dp == 0
    dc = np.abs(got_chips.astype(np.int16) - ref_chips.astype(np.int16))
    fa = ref.embed_batch(ref_chips)
    fb = emb.embed_batch(items)
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    data = {
        "n": len(paths), "device": args.device, "margin": al.margin,
        "landmarks_identical": float(same.mean()), "landmarks_max_px": float(dp.max()),
        "chip_mean_abs": float(dc.mean()), "chip_max_abs": int(dc.max()),
        "chip_max_abs_same_landmarks": int(dc[same].max()) if same.any() else None,
        "cos_min": float(cos.min()), "cos_median": float(np.median(cos)), "cos_p01": float(np.quantile(cos, 0.01)),
        "below_0999": int((cos < 0.999).sum()),
    }
    if agree:  # share of crops that took the HOG route, and whether both paths routed alike
        data["hog_share"] = float(np.mean([r == "hog" for r in ref_rules]))
        data["rules_identical"] = float(np.mean([a == b for a, b in zip(ref_rules, got_rules)]))
        data["hog_run_share"] = hog_runs / max(1, len(items))
        print(f"agree: starts disagreed (HOG ran) on {data['hog_run_share']:.1%} of crops, HOG box used on "
              f"{data['hog_share']:.1%} (CPU path), same rule on {data['rules_identical']:.1%}")
    _emit(args, [(len(paths), args.device, al.margin, f"{same.mean():.4f}", f"{dp.max():.0f}", f"{dc.mean():.4f}",
                  dc.max(), data["chip_max_abs_same_landmarks"], f"{cos.min():.6f}", f"{np.median(cos):.6f}",
                  data["below_0999"])],
          ("crops", "device", "margin", "landmarks identical", "max px", "chip mean abs", "chip max abs",
           "chip max abs (same landmarks)", "min cosine", "median cosine", "cos < 0.999"), data)
    if cos.min() < args.min_cos:
        raise SystemExit(f"align parity FAILED: min cosine {cos.min():.6f} < {args.min_cos}")


def cmd_align_quality(args: argparse.Namespace) -> None:
    """Identification quality of ``align=torch`` vs the default alignment (issue 12, deliverable 4):
    the samples and scores of ``bench/embed_alignment.py`` (1-NN, AUC, BCubed F of the default
    clustering method), both paths on the same decoded crops, the network on --device."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from embed_alignment import sample, score
    finally:
        sys.path.pop(0)
    from facecluster.embed.dlib_resnet import DlibEmbedder
    from facecluster.embed.torch_align import DlibTorchAlignEmbedder
    from facecluster.imageio import load_image

    if args.device == "cpu":
        torch.set_num_threads(1)
    ref = DlibEmbedder(device=args.device, batch_size=64, margin=args.margin)
    emb = DlibTorchAlignEmbedder(device=args.device, batch_size=64, margin=args.margin)
    rows, data = [], {"device": args.device, "margin": ref.aligner.margin, "sets": {}}
    for name, n_ids, per_id in (s.split(":") for s in args.sets):
        paths, labels = sample(name, int(n_ids), int(per_id))
        imgs = [load_image(p) for p in paths]
        fa = ref.embed_batch(np.stack([ref.prepare(im) for im in imgs]))
        fb = emb.embed_batch([emb.prepare(im) for im in imgs])
        ra, rb = score(fa, labels), score(fb, labels)
        cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
        data["sets"][name] = {"n": len(paths), "ids": int(len(set(labels))), "dlib": ra, "torch": rb,
                              "cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
                              "below_0999": int((cos < 0.999).sum())}
        for k, r in (("dlib (default)", ra), ("torch", rb)):
            rows.append((f"{name} ({len(set(labels))} x {per_id})", k, f"{r['1nn']:.4f}", f"{r['auc']:.4f}",
                         f"{r['bcubed_f']:.4f}", "" if k != "torch" else f"{cos.min():.5f} / {np.median(cos):.6f}"))
        print(f"{name}: 1nn {ra['1nn']:.4f} -> {rb['1nn']:.4f}, bF {ra['bcubed_f']:.4f} -> {rb['bcubed_f']:.4f}", flush=True)
    _emit(args, rows, ("set", "alignment", "1-NN", "AUC", "BCubed F", "cosine vs default min / median"), data)


# ----------------------------------------------------------------------------------------------
def cmd_landmarks(args: argparse.Namespace) -> None:
    """dlib's 5-point predictor batched in torch (facecluster.embed.landmarks_torch) on --device:
    landmarks/s at --batch-size, and agreement with dlib's own predictor on the same boxes."""
    import dlib
    import torch

    from facecluster.embed import align as A
    from facecluster.embed.dlib_resnet import default_landmarks_path
    from facecluster.embed.landmarks_torch import TorchShapePredictor
    from facecluster.imageio import load_image

    if args.device == "cpu":
        torch.set_num_threads(1)  # as the embedder on a busy box: OpenMP threads wait for cores
    paths = _paths(args)
    imgs = [A.normalise_size(A.to_rgb_uint8(load_image(p))) for p in paths]
    H, W = max(i.shape[0] for i in imgs), max(i.shape[1] for i in imgs)
    batch = np.zeros((len(imgs), H, W, 3), np.uint8)
    for k, im in enumerate(imgs):
        batch[k, : im.shape[0], : im.shape[1]] = im
    sizes = torch.tensor([i.shape[:2] for i in imgs])
    rects = torch.tensor([[round(v) for v in A.Aligner.margin_rect(*i.shape[:2], 0.15)] for i in imgs], dtype=torch.float32)
    t0 = time.perf_counter()
    tp = TorchShapePredictor(default_landmarks_path(), device=args.device)
    t_load = time.perf_counter() - t0
    gray = TorchShapePredictor.intensity(torch.from_numpy(batch).to(args.device))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    out = tp(gray, sizes, rects)
    sync()
    reps = max(1, args.reps)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = tp(gray, sizes, rects)
    sync()
    dt = (time.perf_counter() - t0) / reps
    # the summed-leaves variant (one add per cascade level instead of one per tree: fewer GPU
    # kernels, landmarks within 1 px of dlib's instead of identical)
    tp.exact = False
    tp(gray, sizes, rects)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        tp(gray, sizes, rects)
    sync()
    dt_sum = (time.perf_counter() - t0) / reps
    tp.exact = True
    pred = dlib.shape_predictor(str(default_landmarks_path()))
    k = min(len(imgs), 64)
    ref = np.array([[(q.x, q.y) for q in pred(imgs[i], dlib.rectangle(*[int(v) for v in rects[i].tolist()])).parts()]
                    for i in range(k)], float)
    got = out[:k].cpu().numpy()
    d = np.abs(np.floor(got + 0.5) - ref)  # dlib rounds half up
    data = {"n": len(imgs), "n_compared": k, "device": args.device, "parse_s": t_load, "faces_per_s": len(imgs) / dt,
            "faces_per_s_summed": len(imgs) / dt_sum,
            "max_px_vs_dlib": float(d.max()), "exact_fraction": float((d == 0).mean()),
            "max_unrounded_px": float(np.abs(got - ref).max())}
    _emit(args, [(len(imgs), args.device, f"{t_load:.1f}", f"{len(imgs) / dt:.0f}", f"{len(imgs) / dt_sum:.0f}",
                  f"{d.max():.0f}", f"{(d == 0).mean():.4f}", f"{np.abs(got - ref).max():.2f}")],
          ("faces", "device", "model parse s", "landmarks faces/s (exact)", "faces/s (summed leaves)",
           "max px vs dlib (rounded)", "coords exact", "max px unrounded"), data)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, n=400):
        p.add_argument("--input", help="facecluster input JSON (img_path per record)")
        p.add_argument("--src", nargs="+", default=[], help="folders of JPEG/PNG crops (instead of --input)")
        p.add_argument("--n", type=int, default=n, help="records (cycled when the input has fewer)"
                       + ("; default: every record of the input, once" if n is None else ""))
        p.add_argument("--json", help="also write the numbers to this JSON file")

    p = sub.add_parser("records")
    p.add_argument("--src", nargs="+", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("steps")
    common(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--margin", default="auto", help="alignment strategy (embedder setting margin)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the network")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="cores for the CPU steps")
    p.add_argument("--net-faces", type=int, default=0, help="time the network on at least this many chips (repeats)")
    p.add_argument("--align", choices=["dlib", "torch"], default="dlib",
                   help="torch: landmarks + chip batched on --device (embedder setting align=torch)")
    p.add_argument("--hog-workers", type=int, default=0,
                   help="align=torch, margin=agree: processes for the HOG of disagreeing crops (embedder setting hog_workers)")
    p = sub.add_parser("e2e")
    p.add_argument("--input", required=True)
    p.add_argument("--json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--embedder", default="dlib")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--worker-kind", choices=["auto", "threads", "processes"], default=None)
    p.add_argument("--work", help="work dir (removed first)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p = sub.add_parser("dlib-loop")
    # the reference for the whole-process pair: the same records as the pipeline gets, once
    # (a fixed default cycled a 40-record input to 400 faces and inflated the ratio 10x)
    common(p, None)
    p = sub.add_parser("landmarks")
    common(p, 512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p = sub.add_parser("parity")
    common(p, 64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--margin", default="auto")
    p.add_argument("--precision", default="fp32")
    p = sub.add_parser("align-parity")
    common(p, 64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--margin", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-cos", type=float, default=0.999,
                   help="exit 1 when a descriptor's cosine to the default path is below this (the issue's bar: 0.999)")
    p = sub.add_parser("align-quality")
    p.add_argument("--sets", nargs="+", default=["lfw:100:5", "glint18:18:25", "orl:40:10"], help="set:ids:per_id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--margin", default="auto")
    p.add_argument("--json")
    args = ap.parse_args(argv)
    {"records": cmd_records, "steps": cmd_steps, "e2e": cmd_e2e, "dlib-loop": cmd_dlib_loop, "parity": cmd_parity,
     "landmarks": cmd_landmarks, "align-parity": cmd_align_parity, "align-quality": cmd_align_quality}[args.cmd](args)


if __name__ == "__main__":
    main()
