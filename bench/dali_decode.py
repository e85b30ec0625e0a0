"""Decode + resize throughput and pixel agreement: PIL (the CPU path) vs NVIDIA DALI's CPU pipeline.

    python bench/dali_decode.py --n 1000 --repeats 3 [--threads 1 2] [--batch 64]

Both paths start from the JPEG files (page cache warm after the first pass) and end with the
hfsoftmax 112x112 chips: PIL = ``resize_shorter_centre(load_image(path))``; DALI = read bytes +
header check (``dali.eligible_size``, what the runner's worker threads do) + one
``DaliDecoder.decode`` per batch. Best of ``--repeats`` runs (the shared machine is noisy).
Prints a JSON line per configuration and the pixel agreement of the chips.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def lfw_files(n: int) -> list[str]:
    files = sorted(str(p) for p in (DATA / "lfw").glob("*/*.jpg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def pil_chips(files: list[str], threads: int) -> np.ndarray:
    from facecluster.embed.hfsoftmax import resize_shorter_centre
    from facecluster.imageio import load_image

    def one(p):
        return resize_shorter_centre(load_image(p))

    if threads <= 1:
        return np.stack([one(p) for p in files])
    with ThreadPoolExecutor(threads) as pool:
        return np.stack(list(pool.map(one, files)))


def dali_chips(files: list[str], dec, batch: int) -> np.ndarray:
    from facecluster.embed.dali import eligible_size

    out = []
    for s in range(0, len(files), batch):
        datas = [Path(p).read_bytes() for p in files[s : s + batch]]
        sizes = [eligible_size(d) for d in datas]
        assert all(z is not None for z in sizes), "all LFW JPEGs are DALI-eligible"
        out += dec.decode(datas, sizes)
    return np.stack(out)


class NullEmbedder:
    """hfsoftmax's preprocessing with a free "network" (per-channel means): isolates the runner's
    decode path (worker threads + PIL, or worker threads reading + DALI in the main thread)."""

    name, dim, input_size, needs_keypoints = "null", 3, (112, 112), False
    device, batch_size = "cpu", 64
    dali_geometry = "shorter_centre"

    def __init__(self, decoder: str):
        self.decoder = decoder

    def prepare(self, img, record=None):
        from facecluster.embed.hfsoftmax import resize_shorter_centre

        return resize_shorter_centre(img)

    def embed_batch(self, chips):
        return chips.reshape(len(chips), -1, 3).mean(1).astype(np.float32)


def runner_rate(files: list[str], decoder: str, workers: int):
    from facecluster.embed.runner import embed_records

    res = embed_records(NullEmbedder(decoder), files, num_workers=workers, chunk_size=64)
    assert len(res.index) == len(files)
    return res


def best(fn, repeats: int) -> tuple[float, np.ndarray]:
    ts, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    from facecluster.embed.dali import DaliDecoder

    files = lfw_files(a.n)
    for f in files:  # warm the page cache: both paths then read from memory
        Path(f).read_bytes()
    from facecluster.embed.dali import eligible_size

    t, _ = best(lambda: [eligible_size(Path(p).read_bytes()) for p in files], a.repeats)
    print(json.dumps({"path": "read+header check only (runner worker threads)", "n": len(files), "seconds": round(t, 3), "faces_per_s": round(len(files) / t, 1)}))
    ref = None
    for th in a.threads:
        t, ref = best(lambda: pil_chips(files, th), a.repeats)
        print(json.dumps({"path": "pil", "threads": th, "n": len(files), "seconds": round(t, 3), "faces_per_s": round(len(files) / t, 1)}))
    for th in a.threads:
        dec = DaliDecoder((112, 112), "shorter_centre", "cpu", max_batch=a.batch, num_threads=th)
        dali_chips(files[: a.batch], dec, a.batch)  # build the pipeline outside the timing
        t, got = best(lambda: dali_chips(files, dec, a.batch), a.repeats)
        print(json.dumps({"path": "dali-cpu", "threads": th, "batch": a.batch, "n": len(files), "seconds": round(t, 3), "faces_per_s": round(len(files) / t, 1)}))
    for dec_name in ("pil", "dali"):
        t, _ = best(lambda: runner_rate(files, dec_name, 1), a.repeats)
        print(json.dumps({"path": f"runner decoder={dec_name}, 1 worker, null network", "n": len(files), "seconds": round(t, 3), "faces_per_s": round(len(files) / t, 1)}))
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    print(json.dumps({
        "chip_agreement": {"mean_abs_diff": round(float(diff.mean()), 4), "max_abs_diff": int(diff.max()),
                           "share_pixels_equal": round(float((diff == 0).mean()), 4),
                           "share_pixels_within_1": round(float((diff <= 1).mean()), 4)}
    }))


if __name__ == "__main__":
    main()
