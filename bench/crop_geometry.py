"""Crop geometry the aligner was not built for: turned and off-centre faces.

Turned faces: crops whose face is rolled by 90 / 180 degrees or more than ~40 (rotated video,
overhead and fisheye cameras, detectors that find rolled faces), with the dlib embedder's
turned-face search on (the default) and off (``--embedder "dlib?orient=false"``).

    python bench/crop_geometry.py --out /tmp/turned [--data ../shared/data] [--upright DIR ...]
    python bench/crop_geometry.py --out /tmp/turned --roll-study      # 1-NN against the roll angle
    python bench/crop_geometry.py --out /tmp/turned --offset-study --lfw-originals DIR   # off-centre crops

Fills docs/benchmarks/embedding.md "Turned faces". Scenarios (validation identities only,
``facecluster.train.splits``; every image's turn is a pure function of its file name):

``lfw-val21-turned``     LFW people with >= 5 photos, <= 21 each; each photo upright (50 %),
                         turned 90 degrees one way (20 %) or the other (20 %), 180 (5 %), or rolled
                         20-50 degrees (5 %): a photo collection from phones and rotated scans
``glint18-val-sideways`` the held-out glint18 people's crops all turned 90 degrees: a video
                         recorded sideways (a long-video shape)
``lfw-val21``            the same LFW photos upright: the control (the search must change nothing)
``--upright DIR``        any folder-per-identity set, upright (e.g. Extended Yale B, where the
                         detector misses most dark faces): what the search costs where it finds
                         nothing

``--roll-study``: 60 held-out LFW people with >= 4 photos; the first photo of each stays upright
(the gallery), the other three are upright and rolled by each of 20, 35, 50, 90, 180 degrees; for each angle
and setting, the share of rolled photos whose nearest gallery photo is the same person, and the
median cosine to the same person's gallery photo.

``--offset-study``: the same people's 250x250 LFW originals (``--lfw-originals``, e.g.
``data/lfw-deepfunneled/`` of github braun-steven/dfi-tensorflow) cut into 160x160 crops whose
centre lies (dx, dy) px from the face's (the face at the crop's centre for (0, 0); (0, -40): the
crop 40 px higher, the face in its lower part with the chin cut, as a box clipped at a frame's
top edge or a drifting tracker box gives); 1-NN to the upright, centred gallery crop, with the
checked-out aligner (docs/benchmarks/embedding.md §10: an off-centre rule measured this way and
not adopted).

For each scenario and each setting it runs the whole command a user runs (``facecluster run``:
decode, alignment, network, clustering) and prints wall seconds, BCubed F, pairwise F, clusters
and faces in mixed clusters, and how many faces the search turned.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from facecluster.metrics import evaluate
from facecluster.train.splits import is_validation_identity

#: (label, --embedder, run-dir tag)
SETTINGS = (("orient on (default)", "dlib", "on"), ("orient off", "dlib?orient=false", "off"))


def _u(name: str, salt: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{salt}:{name}".encode()).digest()[:8], "big") / 2.0**64


def _turn_lfw(name: str) -> float:
    """Counter-clockwise degrees for one LFW photo (mixture above)."""
    u = _u(name, "turn")
    if u < 0.5:
        return 0.0
    if u < 0.7:
        return 90.0
    if u < 0.9:
        return 270.0
    if u < 0.95:
        return 180.0
    return (20 + 30 * _u(name, "roll")) * (1 if _u(name, "sign") < 0.5 else -1)


def _people(root: Path, set_name: str, min_n: int, cap: int) -> list[tuple[str, list[Path]]]:
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not is_validation_identity(set_name, d.name):
            continue
        files = sorted(f for f in d.iterdir() if f.is_file())
        if len(files) >= min_n:
            out.append((d.name, files[:cap] if cap else files))
    return out


def build(out: Path, data: Path, upright: list[Path]) -> dict[str, Path]:
    """Write the scenarios' images and input JSONs; returns {scenario: input.json}."""
    scen: dict[str, list[dict]] = {"lfw-val21-turned": [], "glint18-val-sideways": [], "lfw-val21": []}
    for person, files in _people(data / "lfw", "lfw", 5, 21):
        for f in files:
            scen["lfw-val21"].append({"img_path": str(f.resolve()), "person": person, "turn": 0.0})
            ang = _turn_lfw(f.name)
            dest = out / "lfw-val21-turned" / person / (f.stem + ".png")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                im = Image.open(f).convert("RGB")
                im = im.rotate(ang, resample=Image.BILINEAR, expand=True) if ang else im
                im.save(dest)  # PNG: the turn is the only change
            scen["lfw-val21-turned"].append({"img_path": str(dest.resolve()), "person": person, "turn": ang})
    for person, files in _people(data / "glint18", "glint18", 1, 0):
        for f in files:
            dest = out / "glint18-val-sideways" / person / (f.stem + ".png")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                Image.open(f).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(dest)
            scen["glint18-val-sideways"].append({"img_path": str(dest.resolve()), "person": person, "turn": 90.0})
    for d in upright:
        recs = [{"img_path": str(f.resolve()), "person": f.parent.name, "turn": 0.0}
                for f in sorted(d.glob("*/*")) if f.is_file()]
        scen[f"{d.name} (upright)"] = recs
    paths = {}
    for name, recs in scen.items():
        p = out / f"{name.split()[0]}.json"
        p.write_text(json.dumps(recs))
        paths[name] = p
    return paths


def run(inp: Path, out: Path, embedder: str) -> tuple[float, list[dict]]:
    """The whole command; (wall seconds, output records)."""
    fc = Path(sys.executable).parent / "facecluster"
    t0 = time.perf_counter()
    subprocess.run([str(fc), "run", str(inp), "-o", str(out / "out.json"), "-w", str(out / "wd"),
                    "--device", "cpu", "--embedder", embedder], check=True, capture_output=True)
    return time.perf_counter() - t0, json.loads((out / "out.json").read_text())


def fresh(d: Path) -> Path:
    """``d`` emptied (a rerun starts from a clean work dir, so nothing is resumed)."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def embedded(inp: Path, d: Path, embedder: str, n: int) -> np.ndarray:
    """Run the whole command on ``inp`` in a fresh ``d``; (n, D) L2-normalised descriptors in
    record order (rows of failed records stay zero)."""
    from facecluster.workdir import WorkDir

    run(inp, fresh(d), embedder)
    x, index, _ = WorkDir(d / "wd").read_features()
    feats = np.zeros((n, x.shape[1]), np.float32)
    feats[index] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return feats


def nn_row(feats: np.ndarray, person: np.ndarray, q: np.ndarray, gal: np.ndarray) -> tuple[float, float]:
    """(share of queries ``q`` whose nearest gallery row is the same person, median cosine to the
    same person's gallery rows)."""
    s = feats[q] @ feats[gal].T
    hit = float((person[gal[s.argmax(1)]] == person[q]).mean())
    return hit, float(np.median(s[person[q][:, None] == person[gal][None, :]]))


def gallery_input(recs: list[dict], path: Path, key: str):
    """Write the study's input JSON; (path, person (N,), recs' ``key`` (N,), is-gallery (N,) bool,
    gallery rows)."""
    path.write_text(json.dumps(recs))
    is_gal = np.array([r["gallery"] for r in recs])
    return path, np.array([r["person"] for r in recs]), np.array([r[key] for r in recs]), is_gal, np.flatnonzero(is_gal)


def score(recs: list[dict]) -> dict:
    gt = np.array([r["person"] for r in recs])
    pred = np.array([r["cluster_id"] for r in recs])
    return evaluate(gt, pred)


def roll_study(out: Path, data: Path) -> None:
    angles = (0, 20, 35, 50, 90, 180)
    recs = []
    for person, files in _people(data / "lfw", "lfw", 4, 4)[:60]:
        for j, f in enumerate(files):
            for ang in angles:
                if j == 0 and ang:
                    continue  # the gallery photo upright only; the others at every angle
                dest = out / "roll" / str(ang) / person / (f.stem + ".png")
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    Image.open(f).convert("RGB").rotate(ang, resample=Image.BILINEAR, expand=True).save(dest)
                recs.append({"img_path": str(dest.resolve()), "person": person, "turn": ang, "gallery": j == 0})
    inp, person, ang, is_gal, gal = gallery_input(recs, out / "roll.json", "turn")
    print("| roll (degrees) | photos | setting | 1-NN to the upright gallery | median cosine to the same person |")
    print("|---|---|---|---|---|")
    for label, emb, tag in SETTINGS:
        feats = embedded(inp, out / "runs" / f"roll-{tag}", emb, len(recs))
        for a in angles:
            q = np.flatnonzero((ang == a) & ~is_gal)
            hit, same = nn_row(feats, person, q, gal)
            print(f"| {a} | {len(q)} | {label} | {hit:.3f} | {same:.4f} |", flush=True)


def offset_study(out: Path, originals: Path) -> None:
    offsets = ((0, 0), (25, 0), (40, 0), (0, 40), (0, -40), (35, 35))
    recs = []
    for person, files in _people(originals, "lfw", 4, 4)[:60]:
        for j, f in enumerate(files):
            im = None
            for dx, dy in offsets:
                if j == 0 and (dx, dy) != (0, 0):
                    continue
                dest = out / "offset" / f"{dx}_{dy}" / person / f.name
                if not dest.exists():
                    im = im or Image.open(f).convert("RGB")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    cx, cy = 125 + dx, 125 + dy
                    im.crop((cx - 80, cy - 80, cx + 80, cy + 80)).save(dest, quality=95)
                recs.append({"img_path": str(dest.resolve()), "person": person, "off": f"{dx},{dy}", "gallery": j == 0})
    inp, person, off, is_gal, gal = gallery_input(recs, out / "offset.json", "off")
    feats = embedded(inp, out / "runs" / "offset", "dlib", len(recs))
    print("| crop centre minus face centre (px, 160 px crop) | photos | 1-NN to the centred gallery | median cosine to the same person |")
    print("|---|---|---|---|")
    for o in (f"{dx},{dy}" for dx, dy in offsets):
        q = np.flatnonzero((off == o) & ~is_gal)
        hit, same = nn_row(feats, person, q, gal)
        print(f"| ({o}) | {len(q)} | {hit:.3f} | {same:.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    ap.add_argument("--upright", type=Path, action="append", default=[], help="folder-per-identity set to time upright")
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--roll-study", action="store_true", help="1-NN against the roll angle instead of the scenarios")
    ap.add_argument("--offset-study", action="store_true", help="1-NN of off-centre crops (needs --lfw-originals)")
    ap.add_argument("--lfw-originals", type=Path, help="LFW deep-funneled 250x250 originals, folder per identity")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.roll_study:
        roll_study(a.out, a.data.resolve())
        return
    if a.offset_study:
        if not a.lfw_originals:
            ap.error("--offset-study needs --lfw-originals")
        offset_study(a.out, a.lfw_originals.resolve())
        return
    paths = build(a.out / "images", a.data.resolve(), a.upright)
    only = set(filter(None, a.only.split(",")))
    print("| scenario | faces | setting | wall s | BCubed F | pairwise F | clusters | faces in mixed clusters |")
    print("|---|---|---|---|---|---|---|---|")
    for name, inp in paths.items():
        if only and name not in only:
            continue
        outs = {}
        for label, emb, tag in SETTINGS:
            wall, recs = run(inp, fresh(a.out / "runs" / f"{inp.stem}-{tag}"), emb)
            s = score(recs)
            outs[label] = recs
            print(f"| {name} | {len(recs):,} | {label} | {wall:.1f} | {s['bcubed_fscore']:.4f} | {s['pairwise_fscore']:.4f} | "
                  f"{s['n_clusters']:,} | {s['mixed_faces']:,} |", flush=True)
        on, off = (outs[label] for label, _, _ in SETTINGS)
        same = sum(x["cluster_id"] == y["cluster_id"] for x, y in zip(on, off))
        turns = Counter(r["turn"] != 0 for r in on)
        print(f"|  | | ids equal on/off: {same:,} of {len(on):,}; crops turned or rolled in the set: {turns[True]:,} | | | | | |",
              flush=True)


if __name__ == "__main__":
    main()
