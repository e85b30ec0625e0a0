"""Move a facecluster input into a Kubernetes work volume and its output back out.

The images named by the input JSON live on the user's machine; the Jobs see only the work
volume. ``pack`` copies every image into a staging folder as ``images/<index><ext>`` and
writes ``input.json`` whose ``img_path`` point at the copies' place inside the volume
(``/work/input/images/...``); ``unpack`` turns the output the cluster Job wrote back into the
user's terms: record *i* of the output is record *i* of the input (the output contract keeps
order), so it restores every original field and keeps only what the pipeline added
(``cluster_id`` and, for failed records, ``error``).

Usage::

    python scripts/k8s_io.py pack INPUT.json STAGE_DIR [--volume-dir /work/input]
    python scripts/k8s_io.py unpack RESULT.json INPUT.json OUTPUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ADDED_FIELDS = ("cluster_id", "error")


def _load_records(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    if not isinstance(data, list) or not all(isinstance(r, dict) and "img_path" in r for r in data):
        raise SystemExit(f"{path}: expected a JSON list of objects with img_path")
    return data


def pack(input_json: Path, stage: Path, volume_dir: str = "/work/input", link: bool = True) -> int:
    """Stage the input for the volume; returns the number of images copied (hard-linked
    when ``link`` and on the same file system)."""
    records = _load_records(input_json)
    base = input_json.resolve().parent
    (stage / "images").mkdir(parents=True, exist_ok=True)
    width = max(7, len(str(len(records))))
    out, copied = [], 0
    for i, rec in enumerate(records):
        src = Path(rec["img_path"])
        src = src if src.is_absolute() else base / src
        rec = dict(rec)
        if src.is_file():
            name = f"{i:0{width}d}{src.suffix.lower()}"
            dst = stage / "images" / name
            try:
                if not link:
                    raise OSError
                os.link(src, dst)  # same file system: no copy
            except OSError:
                shutil.copyfile(src, dst)
            rec["img_path"] = f"{volume_dir}/images/{name}"
            copied += 1
        else:
            # Left as is: the pipeline reports it as a failed record (cluster_id -1 + error).
            rec["img_path"] = str(src)
        out.append(rec)
    (stage / "input.json").write_text(json.dumps(out, indent=1))
    return copied


def unpack(result_json: Path, input_json: Path, output_json: Path) -> None:
    """Write OUTPUT.json: the original input records + the fields the pipeline added."""
    result = json.loads(result_json.read_text())
    records = _load_records(input_json)
    if len(result) != len(records):
        raise SystemExit(f"{result_json}: {len(result)} records, but the input has {len(records)}")
    out = []
    for rec, res in zip(records, result):
        rec = dict(rec)
        for key in ADDED_FIELDS:
            if key in res:
                rec[key] = res[key]
        out.append(rec)
    tmp = output_json.with_name(output_json.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, output_json)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("input", type=Path)
    p.add_argument("stage", type=Path)
    p.add_argument("--volume-dir", default="/work/input")
    u = sub.add_parser("unpack")
    u.add_argument("result", type=Path)
    u.add_argument("input", type=Path)
    u.add_argument("output", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        n = pack(a.input, a.stage, a.volume_dir)
        print(f"staged {n} images in {a.stage}", file=sys.stderr)
    else:
        unpack(a.result, a.input, a.output)


if __name__ == "__main__":
    main()
