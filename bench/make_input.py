"""Write an input JSON for a folder-per-identity face set (e.g. ../shared/data/lfw).

    python bench/make_input.py ../shared/data/lfw -o /tmp/lfw.json [--min-per-id 1] [--max-ids 0]

Records are sorted by identity then file name; labels for `facecluster evaluate --labels folder`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def records(root: Path, min_per_id: int = 1, max_ids: int = 0) -> tuple[list[dict], int]:
    """Input records of a folder-per-identity set (identity folders, then files, in sorted order)
    and the number of identities kept: those with at least ``min_per_id`` files, the first
    ``max_ids`` of them (0: all)."""
    recs = []
    ids = sorted(p for p in root.iterdir() if p.is_dir())
    kept = 0
    for d in ids:
        files = sorted(f for f in d.iterdir() if f.is_file())
        if len(files) < min_per_id:
            continue
        recs.extend({"img_path": str(f.resolve())} for f in files)
        kept += 1
        if max_ids and kept >= max_ids:
            break
    return recs, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--min-per-id", type=int, default=1, help="keep identities with at least this many images")
    ap.add_argument("--max-ids", type=int, default=0, help="keep only the first N identities (0: all)")
    a = ap.parse_args()
    recs, kept = records(a.root, a.min_per_id, a.max_ids)
    a.output.write_text(json.dumps(recs))
    print(f"{len(recs)} records, {kept} identities → {a.output}")


if __name__ == "__main__":
    main()
