"""Build the bundled example: face crops of two people from the ``face_recognition`` sdist.

The project ships no face images of its own. The ``face_recognition`` source distribution on
PyPI carries ``tests/test_images/`` (photos of Barack Obama and Joe Biden); we fetch it with
pip (a registry download, cached under ``~/.cache/facecluster``), cut the faces out with dlib's
HOG detector and write ``OUT/input.json``.

Usage: ``python -m facecluster.demo OUT_DIR``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "face_recognition==1.3.0"
CACHE = Path(os.environ.get("FACECLUSTER_CACHE", Path.home() / ".cache" / "facecluster"))


def fetch_test_images() -> Path:
    dest = CACHE / "face_recognition_test_images"
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    dl = CACHE / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    tars = sorted(dl.glob("face_recognition-*.tar.gz"))
    if not tars:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(dl), "-q"],
            check=True,
        )
        tars = sorted(dl.glob("face_recognition-*.tar.gz"))
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tars[-1]) as tf:
        for m in tf.getmembers():
            if "/tests/test_images/" in m.name and m.isfile():
                m.name = os.path.basename(m.name)
                tf.extract(m, tmp, filter="data")
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    from .detect import detect_faces

    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "example")
    src = fetch_test_images()
    # 32bit.png is the same photo as obama2.jpg stored as a 32-bit PNG: a duplicate face in RGBA
    recs = detect_faces([src], out)
    for r in recs:  # the person's name, for `facecluster evaluate --labels field:person`
        r["person"] = "biden" if Path(r["source"]).name.startswith("biden") else "obama"
    from .workdir import atomic_write_json

    atomic_write_json(out / "input.json", recs)
    print(f"{len(recs)} faces from {src} → {out / 'input.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
