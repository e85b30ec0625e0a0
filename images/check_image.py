"""Build-time self-check of a facecluster stage image (run by the Dockerfiles' build stage).

Fails the image build unless the stage's libraries import and its model weights are inside
the image and actually load: Kubernetes nodes have no internet, so a model that would be
downloaded on first use is a broken image. Runs on the CPU (no GPU during builds), offline.

Usage: python3 check_image.py recognition|clustering|gcn_ve|adanets
(clustering: the shared stack of the two clustering images, checked with Infomap, no weights.)

ALLOW_MISSING_WEIGHTS=1 (build arg of the same name) lets a clustering image build while the
method's trained weights are not yet in the package: the check then says so loudly and only
proves that the rest of the stack works (with infomap). Never set it for a release.
"""

from __future__ import annotations

import os
import sys
import time


def _common() -> None:
    import numpy as np  # noqa: F401
    import torch

    import facecluster
    import facecluster.cli  # noqa: F401  (the entrypoint must import)

    print(f"facecluster {facecluster.__version__}, torch {torch.__version__} "
          f"(CUDA build: {torch.version.cuda or 'none'})")


def check_recognition() -> None:
    import numpy as np

    import dlib  # noqa: F401
    from facecluster.embed import get_embedder

    t0 = time.perf_counter()
    emb = get_embedder("dlib", device="cpu", batch_size=2)
    h, w = emb.input_size
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
    out = emb.embed_batch(chips)
    assert out.shape == (2, emb.dim) and np.isfinite(out).all(), out.shape
    print(f"dlib embedder loads offline and embeds: {out.shape} in {time.perf_counter() - t0:.1f}s")


def check_clustering(method: str) -> None:
    import numpy as np

    import faiss
    import infomap  # noqa: F401
    from facecluster.cluster import get_clusterer

    print(f"faiss {faiss.__version__}")
    # 3 well separated synthetic identities: loads the method's shipped weights and runs it.
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 128)).astype(np.float32)
    X = np.repeat(centers, 20, axis=0) + 0.05 * rng.normal(size=(60, 128)).astype(np.float32)
    t0 = time.perf_counter()
    try:
        labels = get_clusterer(method, device="cpu").fit_predict(X.astype(np.float32))
    except Exception as e:  # noqa: BLE001
        missing = type(e).__name__ in ("CheckpointError", "FileNotFoundError")
        if os.environ.get("ALLOW_MISSING_WEIGHTS") != "1" or not missing:
            raise
        print("!" * 78 + f"\nWARNING: {method} weights missing, image built with ALLOW_MISSING_WEIGHTS=1:\n"
              f"  {e}\n  `--method {method}` will fail in this image.\n" + "!" * 78)
        method = "infomap"
        labels = get_clusterer(method, device="cpu").fit_predict(X.astype(np.float32))
    assert labels.shape == (60,), labels.shape
    print(f"{method} loads offline and clusters: {len(set(labels.tolist()))} clusters "
          f"in {time.perf_counter() - t0:.1f}s")


def main(stage: str) -> None:
    _common()
    if stage == "recognition":
        check_recognition()
    elif stage == "clustering":
        check_clustering("infomap")
    elif stage == "gcn_ve":
        check_clustering("gcn-ve")
    elif stage == "adanets":
        check_clustering("adanets")
    else:
        raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    main(sys.argv[1])
