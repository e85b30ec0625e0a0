"""Write an input JSON for a folder-per-identity face set (e.g. ../shared/data/lfw).

    python bench/make_input.py ../shared/data/lfw -o /tmp/lfw.json [--min-per-id 1] [--max-ids 0]

Records are sorted by identity then file name; labels for `facecluster evaluate --labels folder`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--min-per-id", type=int, default=1, help="keep identities with at least this many images")
    ap.add_argument("--max-ids", type=int, default=0, help="keep only the first N identities (0: all)")
    a = ap.parse_args()
    recs = []
    ids = sorted(p for p in a.root.iterdir() if p.is_dir())
    kept = 0
    for d in ids:
        files = sorted(f for f in d.iterdir() if f.is_file())
        if len(files) < a.min_per_id:
            continue
        recs.extend({"img_path": str(f.resolve())} for f in files)
        kept += 1
        if a.max_ids and kept >= a.max_ids:
            break
    a.output.write_text(json.dumps(recs))
    print(f"{len(recs)} records, {kept} identities → {a.output}")


if __name__ == "__main__":
    main()
