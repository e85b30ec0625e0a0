"""Restoring dlib descriptors of degraded faces: fine-tune the network's first layers (a study).

    python bench/restore_finetune.py chips --lfw-originals LFW-ORIGINALS -o R
    python bench/restore_finetune.py train -o R --blocks 3 --steps 1230 [--light] --name r3
    python bench/restore_finetune.py eval -o R --name r3                   # held-out chips
    python bench/restore_finetune.py reembed -o R --name r3 --sets SETS --root WORK-r3
    python bench/regimes.py --root WORK-r3 --variant infomap               # the pipeline's view

docs/benchmarks/default_quality.md, "Restoring degraded faces": dlib's network reads a small,
compressed, dark or noisy face far from where it reads the same face sharp. Distillation with no
identity labels: the teacher is the shipped network on a clean aligned chip (LFW deep-funneled
originals, training identities only, ``facecluster.train.splits``), the student the same network
whose stem and first ``--blocks`` residual blocks are trained, on the same chip degraded
(:func:`degrade`: landmark jitter, blur, 20-110 px, darkness and noise, grey, JPEG q15-80; with
``--light`` also a side light from soft to cast-shadow hard), loss = squared Euclidean distance to
the teacher's descriptor (dlib's own metric), a quarter of every batch clean so that sharp faces
keep their descriptors. CPU, 2 threads; Adam with a learning rate relative to each tensor's mean
magnitude (the folded weights span 1e-3..1).

``eval``: 1-NN and same/different ROC AUC on the validation identities' chips (people with >= 2
photos), clean and degraded once each with a fixed seed. ``reembed``: the validation part of each
set's input (``/work/extdata/sets/<set>.json``; the ``-val`` sets, Yale and ORL whole) run through
``facecluster run`` with the fine-tuned weights in place of the shipped ones (same process: the
network runs in the main process, the decode/align workers never load it).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

FILTERS = None  # PIL resampling filters, set on first use


def degrade(chip: np.ndarray, rng: np.random.Generator, light: bool = False, dark: bool = True) -> np.ndarray:
    """One random degradation of a (150, 150, 3) uint8 chip (see the module doc)."""
    from PIL import Image, ImageFilter

    global FILTERS
    if FILTERS is None:
        FILTERS = [Image.BOX, Image.BILINEAR, Image.BICUBIC, Image.LANCZOS]
    im = Image.fromarray(chip)
    if rng.random() < 0.8:  # landmark error on degraded faces: a small similarity jitter
        ang = rng.uniform(-4, 4)
        sc = rng.uniform(0.95, 1.05)
        dx, dy = rng.uniform(-3, 3, 2)
        a = math.radians(ang)
        c, s = math.cos(a) / sc, math.sin(a) / sc
        cx = cy = 75
        im = im.transform(im.size, Image.AFFINE, (c, s, cx - c * cx - s * cy + dx, -s, c, cy + s * cx - c * cy + dy),
                          resample=Image.BILINEAR)
    if light and rng.random() < 0.3:  # a light from one side, from a soft ramp to a cast shadow
        far = rng.uniform(0.03, 0.5)
        hard = math.exp(rng.uniform(math.log(2), math.log(40)))
        at = rng.uniform(-0.3, 0.3)
        xs = np.linspace(-1, 1, 150)[None, :, None] * (1 if rng.random() < 0.5 else -1)
        ramp = far + (1 - far) / (1 + np.exp(-hard * (xs - at)))
        a = np.asarray(im).astype(np.float32) / 255.0 * ramp
        im = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    side = 150
    if rng.random() < 0.85:
        side = int(round(math.exp(rng.uniform(math.log(20), math.log(110)))))
        im = im.resize((side, side), FILTERS[rng.integers(4)])
    a = np.asarray(im).astype(np.float32) / 255.0
    r = rng.random()
    if r < 0.25 and dark:  # dark and noisy (a night camera)
        a = np.clip(a * rng.uniform(0.15, 0.6), 0, 1) ** rng.uniform(1.0, 1.6)
        a = a + rng.normal(0, rng.uniform(0.01, 0.04), a.shape)
    elif r < 0.25:  # --no-dark: the same share of faces gets the noise alone
        a = a + rng.normal(0, rng.uniform(0.01, 0.04), a.shape)
    elif r < 0.4:
        a = a + rng.normal(0, rng.uniform(0.005, 0.03), a.shape)
    if rng.random() < 0.2:
        g = a @ np.array([0.299, 0.587, 0.114], np.float32)
        a = np.repeat(g[..., None], 3, -1)
    im = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.75:
        b = io.BytesIO()
        im.save(b, "JPEG", quality=int(rng.integers(15, 81)))
        b.seek(0)
        im = Image.open(b).convert("RGB")
    if side != 150:
        im = im.resize((150, 150), Image.BILINEAR)
    return np.asarray(im)


def _student(blocks: int):
    """The shipped network, its stem and first ``blocks`` residual blocks trainable.

    Its forward's in-place ReLUs and sums are safe under autograd here (they overwrite no tensor
    a backward needs: the gradients equal an out-of-place copy's exactly, checked when this script
    was written; autograd would raise, not mis-compute, if that ever changed).
    """
    from facecluster.embed.dlib_net import load_dlib_resnet

    net = load_dlib_resnet()
    for p in net.parameters():
        p.requires_grad_(False)
    for m in [net.stem, *list(net.blocks)[:blocks]]:
        for p in m.parameters():
            p.requires_grad_(True)
    return net


def _embed(model, chips, bs: int = 128) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(chips), bs):
            x = torch.from_numpy(np.ascontiguousarray(chips[s : s + bs])).permute(0, 3, 1, 2).float()
            out.append(model(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def cmd_chips(a) -> None:
    from multiprocessing import Pool

    files = sorted(Path(a.lfw_originals).glob("*/*.jpg"))
    with Pool(2) as p:
        chips = p.map(_chip, [str(f) for f in files], chunksize=64)
    a.out.mkdir(parents=True, exist_ok=True)
    np.save(a.out / "chips.npy", np.stack(chips))
    np.save(a.out / "names.npy", np.array([f.parent.name for f in files]))
    print(f"{len(files)} chips -> {a.out / 'chips.npy'}")


_AL = None


def _chip(path: str) -> np.ndarray:
    global _AL
    from facecluster.embed.align import Aligner
    from facecluster.imageio import load_image

    if _AL is None:
        _AL = Aligner(margin="auto")
    return _AL.chip(load_image(path))


def _split(a):
    from facecluster.train.splits import validation_mask

    chips = np.load(a.out / "chips.npy", mmap_mode="r")
    names = np.load(a.out / "names.npy")
    val = validation_mask("lfw", names)
    return chips, names, np.flatnonzero(~val), np.flatnonzero(val)


def cmd_train(a) -> None:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    chips, _, tr, _ = _split(a)
    m = _student(a.blocks)
    cache = a.out / "teacher_train.npy"
    if cache.exists():
        teacher = np.load(cache)
    else:
        teacher = _embed(m, chips[tr])
        np.save(cache, teacher)
    rng = np.random.default_rng(1)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam([{"params": [p], "lr": a.lr * p.detach().abs().mean().item()} for p in params])
    T = torch.from_numpy(teacher)
    hist, t0 = [], time.time()
    for step in range(1, a.steps + 1):
        pick = rng.integers(0, len(tr), a.batch)
        X = np.stack([chips[tr[i]] if j < a.clean else degrade(np.asarray(chips[tr[i]]), rng, a.light, not a.no_dark)
                      for j, i in enumerate(pick)])
        y = m(torch.from_numpy(X).permute(0, 3, 1, 2).float())
        loss = (y - T[pick]).pow(2).sum(1)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        hist.append((loss[: a.clean].mean().item(), loss[a.clean :].mean().item()))
        if step % 100 == 0 or step == a.steps:
            h = np.array(hist[-100:]).mean(0)
            print(f"step {step} {time.time() - t0:.0f}s loss clean {h[0]:.4f} degraded {h[1]:.4f}", flush=True)
    torch.save(m.state_dict(), a.out / f"{a.name}.pt")
    print(f"saved {a.out / f'{a.name}.pt'} ({sum(p.numel() for p in params):,} trained weights)")


def cmd_eval(a) -> None:
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(2)
    chips, names, _, va = _split(a)
    _, inv, cnt = np.unique(names[va], return_inverse=True, return_counts=True)
    va = va[cnt[inv] >= 2]
    lab = names[va]
    rng = np.random.default_rng(123)
    deg = np.stack([degrade(np.asarray(chips[i]), rng, a.light) for i in va])

    def nn1(F, G=None):
        F = F.astype(np.float64)
        G = F if G is None else G.astype(np.float64)
        # squared distances without an (N, N, D) temporary
        D = (F * F).sum(1)[:, None] + (G * G).sum(1)[None] - 2 * F @ G.T
        np.fill_diagonal(D, np.inf)
        return (lab[D.argmin(1)] == lab).mean()

    def auc(F):
        Fn = F / np.linalg.norm(F, axis=1, keepdims=True)
        iu = np.triu_indices(len(F), 1)
        return roc_auc_score((lab[:, None] == lab[None])[iu], (Fn @ Fn.T)[iu])

    for name in a.names:
        m = _student(0)
        if name != "shipped":
            m.load_state_dict(torch.load(a.out / f"{name}.pt"))
        C, Dg = _embed(m, chips[va]), _embed(m, deg)
        print(f"{name}: {len(va)} faces; clean 1-NN {nn1(C):.4f} AUC {auc(C):.4f}; degraded 1-NN {nn1(Dg):.4f} "
              f"AUC {auc(Dg):.4f}; degraded probe -> clean gallery 1-NN {nn1(Dg, C):.4f}", flush=True)


def cmd_reembed(a) -> None:
    import torch

    from facecluster import cli
    from facecluster.embed import dlib_net
    from facecluster.train.splits import is_validation_identity

    orig = dlib_net.load_dlib_resnet
    state = torch.load(a.out / f"{a.name}.pt")

    def load(path=None):
        net = orig(path)
        net.load_state_dict(state)
        return net

    dlib_net.load_dlib_resnet = load  # the embedder imports it from the module at first use
    a.root.mkdir(parents=True, exist_ok=True)
    for s in a.sets.split(","):
        src = a.inputs / f"{s}.json"
        recs = json.loads(src.read_text())
        if not (s.endswith("-val") or s in ("yale", "orl")):
            recs = [r for r in recs if is_validation_identity(s, Path(r["img_path"]).parent.name)]
        for r in recs:
            if not os.path.isabs(r["img_path"]):
                r["img_path"] = str((src.parent / r["img_path"]).resolve())
        inp = a.root / f"{s}.input.json"
        inp.write_text(json.dumps(recs))
        t0, argv = time.time(), sys.argv
        sys.argv = ["facecluster", "run", str(inp), "-o", str(a.root / s / "output.json"), "-w", str(a.root / s)]
        try:
            cli.main()
        except SystemExit as e:  # 0, or 3 when some records were unreadable (reported per record)
            if e.code not in (0, 3, None):
                raise
        finally:
            sys.argv = argv
        print(f"{s}: {len(recs)} faces, {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chips")
    c.add_argument("--lfw-originals", required=True)
    t = sub.add_parser("train")
    t.add_argument("--blocks", type=int, default=3)
    t.add_argument("--steps", type=int, default=1230)
    t.add_argument("--lr", type=float, default=5e-4, help="relative to each weight tensor's mean magnitude")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--clean", type=int, default=8, help="clean chips per batch")
    t.add_argument("--name", default="restore")
    e = sub.add_parser("eval")
    e.add_argument("--name", dest="names", action="append", default=None)
    r = sub.add_parser("reembed")
    r.add_argument("--name", default="restore")
    r.add_argument("--sets", default="lfw-lowq,lfw-mixed-val,lfw-night-val,lfw,glint-lowres,glint18,lfw-detbox-val,"
                                    "lfw-loose,glint-mixed,yale,orl")
    r.add_argument("--inputs", type=Path, default=Path("/work/extdata/sets"))
    r.add_argument("--root", type=Path, required=True)
    for p in (c, t, e, r):
        p.add_argument("-o", "--out", type=Path, required=True, help="study folder (chips, teacher, weights)")
    for p in (t, e):
        p.add_argument("--light", action="store_true", help="side light / cast shadows in the degradations")
    t.add_argument("--no-dark", action="store_true", help="no under-exposure in the degradations (noise alone instead)")
    a = ap.parse_args()
    if a.cmd == "eval" and not a.names:
        a.names = ["shipped"]
    {"chips": cmd_chips, "train": cmd_train, "eval": cmd_eval, "reembed": cmd_reembed}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
