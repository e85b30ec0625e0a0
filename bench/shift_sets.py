"""Build face sets in crop styles and from sources that ../shared/data does not have.

    python bench/shift_sets.py --lfw-originals DIR [--yale DIR] [--glint ../shared/data/glint18] \
        -o build/shift [--regimes all]

Why: quality measured on held-out identities of the training source hid a collapse (a
trained method read 0.87 on LFW-val and merged a hundred people into one cluster on crops
from another source). Each regime here changes the *source* or the *crop style* (margin,
size, JPEG quality, blur, colour), so a method can be trained on some and validated on
regimes it never saw.

Sources (public repository snapshots; nothing is downloaded by this script):

* ``--lfw-originals``: LFW deep-funneled 250x250 originals, folder per identity (e.g. the
  ``data/lfw-deepfunneled/`` folder of github braun-steven/dfi-tensorflow). The face sits in
  the centre; ../shared/data/lfw is the centre 150x150 of the same images.
* ``--yale``: Extended Yale B cropped faces (``CroppedYale/`` of github Uranium2/recognition
  at commit 55008b5f, 38 people x ~64 greyscale 168x192 PGM photos under extreme lighting).
* ``--glint``: ../shared/data/glint18 (tight 112x112 aligned crops).

Regimes (folder per identity under ``OUT/<regime>/``; each image's variant is a pure function
of its file name, so a rebuild gives the same bytes):

=================  ======================================================================
``lfw-tight``      centre 112 of 250 (little margin), 112 px, JPEG q90
``lfw-loose``      centre 200 of 250 (~35 % margin per side), 200 px, JPEG q90
``lfw-lowq``       whole 250 frame downscaled to 80 px, JPEG q35 (a far, compressed face)
``lfw-greyblur``   centre 170, greyscale, Gaussian blur radius 1.5, 170 px, JPEG q80
``lfw-mixed``      per image one of: centre 120-230, 64-250 px, q30-95, blur 0-2, grey 25 %
``lfw-detbox``     another detector's boxes: the head rolled -25..25 deg, a box 110-190 px wide
                   and 1.0-1.3x as tall, off centre by up to 12 % of its width, scaled to
                   72-180 px wide, q70-95 (non-square, off-centre, tilted crops)
``lfw-sidelight``  centre 170, greyscale, a hard light from one side (the far side at 2-15 %,
                   gamma 0.8-1.6): a *training-identity* lighting regime, since Extended Yale B
                   may only validate (twenty-third session): the dlib cohort's side-light part
                   (twenty-fifth session) and two opt-in tuning regimes (``regimes.LIGHTING_TUNING``);
                   not in ``regimes.TRAIN_SETS`` (no network trains on it)
``lfw-night``      centre 150 (the shared crops' framing), greyscale, under-exposed (gain 0.15-0.35,
                   gamma 1.0-1.6), sensor noise (sigma 1-3 % of full scale), blur 0-1, q40-70:
                   a night camera's faces (thirty-second session; validation only:
                   ``OUT/lfw-night-val.json``, work dir ``lfw-night-val``)
``lfw-lowres``     centre 150-250, down to 48-96 px, blur 0.3-1 on half, q20-60: far, compressed
                   faces of *training* identities (thirty-third session: the dlib cohort's
                   low-quality part and two opt-in tuning regimes). A family around, not at,
                   ``lfw-lowq``'s one recipe (whole frame, 80 px, q35), which stays validation
``glint-lowres``   glint18 crops down to 48 px and JPEG q40 (low-resolution video)
``glint-mixed``    per glint18 crop: 32-112 px, q35-95, blur 0-1.5 on a third (a video whose
                   faces come near and go far: mixed resolution in one batch)
``glint-clips``    each glint18 person's crops (file order) cut into clips of 60-200 frames, one
                   low resolution per clip: 36-64 px, q30-70, blur 0-1.2 on half the clips (one
                   or two people's low-resolution clips, each at its own distance and
                   compression; file ``cNN_<name>.jpg``, NN = the clip; nineteenth session)
``yale``           Extended Yale B, all lighting conditions but the ambient shots, PGM -> PNG
``yale-moderate``  Extended Yale B, light within 60 deg azimuth and 45 deg elevation
=================  ======================================================================

Identity split: ``facecluster.train.splits`` (held-out identities by name hash). A regime
writes every identity; scripts pick training or validation rows with ``validation_mask``.
Writes ``OUT/<regime>.json`` (input JSON, ``person`` field = identity) next to each folder, and
``OUT/lfw-mixed-val.json``, ``OUT/lfw-detbox-val.json`` and ``OUT/lfw-night-val.json`` (the
validation identities of lfw-mixed, lfw-detbox and lfw-night: ``bench/regimes.py`` reads them
from their own work dirs ``lfw-mixed-val``, ``lfw-detbox-val`` and ``lfw-night-val``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

REGIMES = ["lfw-tight", "lfw-loose", "lfw-lowq", "lfw-greyblur", "lfw-mixed", "lfw-detbox", "lfw-sidelight", "lfw-night", "lfw-lowres", "glint-lowres", "glint-mixed", "glint-clips", "yale", "yale-moderate"]


def _u(name: str, salt: str) -> float:
    """Deterministic uniform [0, 1) from a file name (same file, same variant)."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{name}".encode()).digest()[:8], "big") / 2.0**64


def centre(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def lfw_variant(im: Image.Image, regime: str, name: str) -> tuple[Image.Image, int]:
    """(image, JPEG quality) of one LFW original in ``regime``."""
    if regime == "lfw-tight":
        return centre(im, 112), 90
    if regime == "lfw-loose":
        return centre(im, 200), 90
    if regime == "lfw-lowq":
        return im.resize((80, 80), Image.BILINEAR), 35
    if regime == "lfw-greyblur":
        return ImageOps.grayscale(centre(im, 170)).filter(ImageFilter.GaussianBlur(1.5)).convert("RGB"), 80
    if regime == "lfw-mixed":
        side = int(120 + 110 * _u(name, "side"))
        size = int(64 + (side - 64) * _u(name, "size"))
        out = centre(im, side).resize((size, size), Image.BILINEAR)
        blur = 2.0 * _u(name, "blur")
        if blur > 0.3:
            out = out.filter(ImageFilter.GaussianBlur(blur))
        if _u(name, "grey") < 0.25:
            out = ImageOps.grayscale(out).convert("RGB")
        return out, int(30 + 65 * _u(name, "q"))
    if regime == "lfw-sidelight":
        # A strong light from one side, as Extended Yale B's (which nothing may tune on): a
        # training-identity regime for lighting. Greyscale centre 170; the light falls off across
        # the face along a direction within 60 deg of horizontal (left or right), down to an
        # ambient 2-15 % on the far side, with a terminator 0-0.3 of the half-width off the
        # midline; gamma 0.8-1.6. (A 2-D ramp: no cast shadows of the nose, as Yale's have.)
        g = np.asarray(ImageOps.grayscale(centre(im, 170)), np.float32) / 255.0
        az = np.deg2rad(-60 + 120 * _u(name, "az")) + (np.pi if _u(name, "side") < 0.5 else 0.0)
        amb, sharp = 0.02 + 0.13 * _u(name, "amb"), 6.0 + 14.0 * _u(name, "sharp")
        off = 0.3 * _u(name, "off")
        yy, xx = np.mgrid[-1:1:170j, -1:1:170j]
        lit = 1.0 / (1.0 + np.exp(-sharp * (xx * np.cos(az) + yy * np.sin(az) - off)))
        out = np.clip((g ** (0.8 + 0.8 * _u(name, "gamma"))) * (amb + (1.6 - amb) * lit), 0.0, 1.0)
        return Image.fromarray((out * 255).round().astype(np.uint8)).convert("RGB"), 90
    if regime == "lfw-night":
        # A night camera (infrared or a dark street): grey, under-exposed, noisy, soft and heavily
        # compressed. The noise is drawn from the file name, so a rebuild gives the same bytes.
        g = np.asarray(ImageOps.grayscale(centre(im, 150)), np.float32) / 255.0
        gain, gamma = 0.15 + 0.2 * _u(name, "ngain"), 1.0 + 0.6 * _u(name, "ngamma")
        rng = np.random.default_rng(int(_u(name, "nseed") * 2**32))
        out = (g**gamma) * gain + rng.normal(0.0, 0.01 + 0.02 * _u(name, "nsigma"), g.shape)
        img = Image.fromarray((np.clip(out, 0.0, 1.0) * 255).round().astype(np.uint8))
        blur = _u(name, "nblur")
        if blur > 0.2:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        return img.convert("RGB"), int(40 + 30 * _u(name, "nq"))
    if regime == "lfw-lowres":
        # A face far from the camera: framing, resolution, softness and compression each drawn
        # per photo, so one batch mixes faces a little below and well below the small-face rule's
        # 18 px between the eyes (about 8-26 px here).
        side = int(150 + 100 * _u(name, "fside"))
        size = int(48 + 48 * _u(name, "fsize"))
        out = centre(im, side).resize((size, size), Image.BILINEAR)
        if _u(name, "fblur") < 0.5:
            out = out.filter(ImageFilter.GaussianBlur(0.3 + 0.7 * _u(name, "fsigma")))
        return out, int(20 + 40 * _u(name, "fq"))
    if regime == "lfw-detbox":
        # What another detector hands over: its box is not the square, centred, upright box of
        # LFW's funnelled images. The roll is applied to the photo (the face turns about its
        # centre, as a tilted head does); the corners it uncovers stay black, as a detector's
        # crop padded at the image border would be.
        roll = -25 + 50 * _u(name, "roll")
        w = 110 + 80 * _u(name, "bw")
        h = min(240.0, w * (1.0 + 0.3 * _u(name, "bh")))
        cx = 125 + 0.12 * w * (2 * _u(name, "dx") - 1)
        cy = 125 + 0.12 * w * (2 * _u(name, "dy") - 1)
        out = im.rotate(roll, resample=Image.BILINEAR, center=(125, 125))
        out = out.crop((round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)))
        width = int(72 + 108 * _u(name, "sw"))
        out = out.resize((width, round(width * h / w)), Image.BILINEAR)
        return out, int(70 + 25 * _u(name, "q"))
    raise ValueError(regime)


def glint_variant(im: Image.Image, regime: str, name: str) -> tuple[Image.Image, int]:
    """(image, JPEG quality) of one glint18 crop in ``regime``."""
    if regime == "glint-lowres":
        return im.resize((48, 48), Image.BILINEAR), 40
    if regime == "glint-mixed":
        size = int(32 + 80 * _u(name, "gsize"))
        out = im.resize((size, size), Image.BILINEAR)
        if _u(name, "gblur") < 1 / 3:
            out = out.filter(ImageFilter.GaussianBlur(1.5 * _u(name, "gsigma")))
        return out, int(35 + 60 * _u(name, "gq"))
    raise ValueError(regime)


def glint_clips(person: str, files: list[Path]) -> list[tuple[Path, int, int, float, int]]:
    """(file, clip, side px, blur sigma, JPEG quality) of one person's glint18 crops in file
    order: consecutive runs of 60-200 crops share one low resolution (a clip filmed at one
    distance), a pure function of the person's name and the file order."""
    out, start, clip = [], 0, 0
    while start < len(files):
        tag = f"{person}/{clip}"
        length = int(60 + 140 * _u(tag, "clen"))
        side = int(36 + 28 * _u(tag, "cside"))
        sigma = 1.2 * _u(tag, "csigma") if _u(tag, "cblur") < 0.5 else 0.0
        q = int(30 + 40 * _u(tag, "cq"))
        out += [(f, clip, side, sigma, q) for f in files[start : start + length]]
        start, clip = start + length, clip + 1
    return out


_YALE = re.compile(r"_P00A([+-]\d{3})E([+-]\d{2})\.pgm$")


def yale_keep(fname: str, regime: str) -> bool:
    m = _YALE.search(fname)
    if not m:  # the *_Ambient.pgm shots (no directed light) and stray files
        return False
    az, el = abs(int(m.group(1))), abs(int(m.group(2)))
    return regime == "yale" or (az <= 60 and el <= 45)


def build(regime: str, a, out: Path) -> int:
    dest = out / regime
    recs = []
    if regime == "glint-clips":
        files = sorted(a.glint.glob("*/*.jpg"))
        for person in sorted({f.parent.name for f in files}):
            mine = sorted((f for f in files if f.parent.name == person), key=lambda f: (len(f.stem), f.stem))
            for f, clip, side, sigma, q in glint_clips(person, mine):
                target = dest / person / f"c{clip:02d}_{f.stem}.jpg"
                recs.append({"img_path": str(target.resolve()), "person": person, "clip": f"{person}/c{clip:02d}"})
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    img = Image.open(f).convert("RGB").resize((side, side), Image.BILINEAR)
                    if sigma > 0:
                        img = img.filter(ImageFilter.GaussianBlur(sigma))
                    img.save(target, quality=q)
        (out / f"{regime}.json").write_text(json.dumps(recs))
        return len(recs)
    if regime.startswith("lfw-"):
        src = a.lfw_originals
        files = sorted(src.glob("*/*.jpg"))
    elif regime.startswith("glint-"):
        src = a.glint
        files = sorted(src.glob("*/*.jpg"))
    else:
        src = a.yale
        files = sorted(f for f in src.glob("*/*.pgm") if yale_keep(f.name, regime))
    for f in files:
        person = f.parent.name
        suffix = ".png" if regime.startswith("yale") else ".jpg"
        target = dest / person / (f.stem + suffix)
        recs.append({"img_path": str(target.resolve()), "person": person})
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        im = Image.open(f)
        if regime.startswith("lfw-"):
            img, q = lfw_variant(im.convert("RGB"), regime, f.name)
            img.save(target, quality=q)
        elif regime.startswith("glint-"):
            img, q = glint_variant(im.convert("RGB"), regime, f.name)
            img.save(target, quality=q)
        else:
            im.convert("L").save(target)
    (out / f"{regime}.json").write_text(json.dumps(recs))
    return len(recs)


def write_validation_input(regime: str, out: Path) -> int:
    """Write ``OUT/<regime>-val.json``, the validation identities of an LFW regime alone:
    bench/regimes.py's lfw-mixed-val / lfw-detbox-val / lfw-night-val are work dirs of these (embed this input into
    WORKDIRS/<regime>-val). Returns the number of records."""
    from facecluster.train.splits import validation_mask

    recs = json.loads((out / f"{regime}.json").read_text())
    keep = validation_mask("lfw", [rec["person"] for rec in recs])
    (out / f"{regime}-val.json").write_text(json.dumps([rec for rec, k in zip(recs, keep) if k]))
    return int(keep.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-originals", type=Path)
    ap.add_argument("--yale", type=Path)
    ap.add_argument("--glint", type=Path, default=Path("../shared/data/glint18"))
    ap.add_argument("-o", "--out", type=Path, default=Path("build/shift"))
    ap.add_argument("--regimes", default="all", help="comma-separated names (default: all whose source is given)")
    a = ap.parse_args()
    wanted = REGIMES if a.regimes == "all" else a.regimes.split(",")
    for r in wanted:
        need = a.lfw_originals if r.startswith("lfw-") else a.glint if r.startswith("glint-") else a.yale
        if need is None:
            if a.regimes != "all":
                ap.error(f"regime {r} needs its source folder")
            continue
        n = build(r, a, a.out)
        print(f"{r:14s} {n:6d} faces -> {a.out / r}.json", flush=True)
        if r in ("lfw-mixed", "lfw-detbox", "lfw-night"):
            k = write_validation_input(r, a.out)
            print(f"{r + '-val':14s} {k:6d} faces -> {a.out / (r + '-val')}.json", flush=True)


if __name__ == "__main__":
    main()
