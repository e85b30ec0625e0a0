"""Scale check for the review page: ~20k real face crops (LFW + glint18), fake clusters.

Cluster ids are the identity folders, perturbed so the page has merges and splits to
show: every 7th identity with 2+ faces is merged into the previous one, every 5th is
split in two, and 1% of the records are marked failed. Measures report generation
time and size, then the time headless Chromium needs to load the page and paint a
screenshot (wall clock of the chromium process, so it includes browser start-up).

    python bench/report_scale.py [OUT_DIR] [--thumbs auto|inline|folder] [--limit N]

OUT_DIR defaults to build/report-scale (git-ignored). Timings are noisy on shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facecluster.report import report_stats, write_report

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def records(limit: int | None) -> tuple[list[dict], list[str]]:
    recs, labels = [], []
    for ds in ("lfw", "glint18"):
        for ident in sorted(os.listdir(DATA / ds)):
            for f in sorted(os.listdir(DATA / ds / ident)):
                recs.append({"img_path": str(DATA / ds / ident / f)})
                labels.append(f"{ds}/{ident}")
    if limit:
        recs, labels = recs[:limit], labels[:limit]
    rng = np.random.default_rng(0)
    names = sorted(set(labels))
    code = {n: i for i, n in enumerate(names)}
    lab = np.array([code[l] for l in labels])
    cid = lab.copy()
    sizes = np.bincount(lab)
    multi = [l for l in range(len(names)) if sizes[l] >= 2]
    for j, l in enumerate(multi):
        if j % 7 == 6:
            cid[lab == l] = multi[j - 1]  # merge into the previous identity
        elif j % 5 == 4:
            idx = np.flatnonzero(lab == l)
            cid[idx[rng.random(idx.size) < 0.4]] = len(names) + l  # split off ~40%
    fail = rng.random(len(recs)) < 0.01
    for i, r in enumerate(recs):
        r["cluster_id"] = -1 if fail[i] else int(cid[i])
        if fail[i]:
            r["error"] = "embedding failed: no face found"
    return recs, labels


def chrome(args: list[str]) -> tuple[float, str, float]:
    """One headless Chromium run: (wall seconds, stdout, CPU seconds of the whole process tree).

    CPU time (from RUSAGE_CHILDREN) depends far less on other load than wall time does."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as ud:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        p = subprocess.run([exe, *CHROME_FLAGS, f"--user-data-dir={ud}", *args], capture_output=True, text=True, timeout=120)
        wall = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, p.stdout, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _attr(dom: str, name: str) -> str | None:
    """An attribute the page script sets on <html> (e.g. data-build-ms: its own run time)."""
    head = dom[dom.find("<html"):dom.find(">", dom.find("<html"))]
    k = head.find(f' {name}="')
    return head[k + len(name) + 3:head.find('"', k + len(name) + 3)] if k >= 0 else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", nargs="?", default=str(ROOT / "build" / "report-scale"))
    ap.add_argument("--thumbs", default="auto")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="Chromium loads per measurement (median reported)")
    ap.add_argument("--reuse", action="store_true", help="keep an existing page (measure the browser only)")
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs, labels = records(a.limit)
    (out / "output.json").write_text(json.dumps(recs))
    t = time.perf_counter()
    page = out / f"report-{a.thumbs}.html"
    if not (a.reuse and page.exists()):
        write_report(recs, page, labels=labels, method="fake (folders, perturbed)",
                     settings={"cluster_ids": "identity folders; every 7th merged, every 5th split, 1% failed"},
                     thumbs=a.thumbs, workers=a.workers)
    gen = time.perf_counter() - t
    size = page.stat().st_size
    thumbs_dir = sorted(out.glob(f"{page.stem}_thumbs"))
    extra = sum(f.stat().st_size for d in thumbs_dir for f in d.iterdir()) if thumbs_dir else 0
    url = page.resolve().as_uri()
    res = {"records": len(recs), "thumbs": a.thumbs, "stats": report_stats(recs), "generate_s": round(gen, 2), "html_bytes": size,
           "thumb_folder_bytes": extra}
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        res["browser"] = "skipped: chromium not installed (apt-get install -y chromium)"
        print(json.dumps(res, indent=1))
        return
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    blank = [chrome(["--dump-dom", "about:blank"]) for _ in range(a.repeat)]
    doms = [chrome(["--window-size=1280,1600", "--dump-dom", url]) for _ in range(a.repeat)]
    shots = [chrome(["--window-size=1280,1600", f"--screenshot={out / (page.stem + '.png')}", url]) for _ in range(a.repeat)]
    t_empty, t_dom, t_shot = (med([r[0] for r in rs]) for rs in (blank, doms, shots))
    c_empty, c_dom, c_shot = (med([r[2] for r in rs]) for rs in (blank, doms, shots))
    dom = doms[-1][1]
    script_ms = med([int(_attr(d[1], "data-build-ms") or -1) for d in doms])
    res |= {
        "chromium_blank_s": round(t_empty, 2),
        "chromium_dump_dom_s": round(t_dom, 2),
        "chromium_screenshot_s": round(t_shot, 2),
        "chromium_cpu_s": {"blank": round(c_empty, 2), "dump_dom": round(c_dom, 2), "screenshot": round(c_shot, 2)},
        "page_ready": 'data-ready="1"' in dom,
        "js_error": "data-error=" in dom,
        "page_script_ms_median": script_ms,
        "page_timings_last": _attr(dom, "data-timings"),
        "first_screen_tiles": _attr(dom, "data-tiles"),
        "load_avg_1min": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
