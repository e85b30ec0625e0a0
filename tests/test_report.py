"""The HTML review page: content, escaping, thumbnails, and a real headless Chromium load.

Browser tests start Debian's ``chromium`` themselves (skipped with a reason when it is not
installed; CI installs it) and leave screenshots in ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import html as htmlmod
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecluster.report import _display_order, _load_thumb, _worst, _label_codes, write_report

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium); CI has it")
needs_orl = pytest.mark.skipif(not (DATA / "orl").is_dir(), reason=f"{DATA / 'orl'} not found")

# File names that must show up as text, never as markup or script.
PWN = "document.documentElement.setAttribute('data-pwned','1')"
ODD_NAMES = [
    "with space.png",
    "ünïcødé 名前 ☺.png",
    "quote\"s and 'apos'.png",
    f"<img src=x onerror=\"{PWN}\">.png",
    "</script><script>" + PWN + "<!--.png",  # the "/" makes a folder "<" holding "script>..."
]


def chromium(args: list[str], timeout: float = 90) -> tuple[str, float]:
    """Run headless Chromium once with a fresh profile; returns (stdout, seconds)."""
    with tempfile.TemporaryDirectory(prefix="fc-chromium-") as ud:
        t = time.perf_counter()
        p = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={ud}", "--window-size=1280,1600", *args],
                           capture_output=True, text=True, timeout=timeout)
        dt = time.perf_counter() - t
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, dt


def dump_dom(page: Path, fragment: str = "") -> str:
    out, _ = chromium(["--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri() + fragment])
    assert "<html" in out, "chromium printed no DOM"
    return out


def shown_count(dom: str, name: str) -> int:
    m = re.search(rf'id="n-{name}" data-value="(\d+)"', dom)
    assert m, f"count {name!r} not on the page"
    return int(m.group(1))


def root_attr(dom: str, name: str) -> str | None:
    m = re.search(r"<html[^>]*>", dom)
    a = re.search(rf'\s{name}="([^"]*)"', m.group(0)) if m else None
    return a.group(1) if a else None


def expected_counts(records: list[dict]) -> dict[str, int]:
    """Counts computed here from the output JSON, independently of the report code."""
    sizes = Counter(r["cluster_id"] for r in records if r["cluster_id"] >= 0)
    return {
        "faces": sum(sizes.values()),
        "clusters": len(sizes),
        "multi": sum(1 for v in sizes.values() if v >= 2),
        "singletons": sum(1 for v in sizes.values() if v == 1),
        "failures": sum(1 for r in records if r["cluster_id"] < 0),
    }


@pytest.fixture(scope="module")
def orl_output(tmp_path_factory) -> tuple[list[dict], list[str], Path]:
    """An output JSON over real ORL crops (40 people x 10) with a merge, a split, singletons,
    odd file names (copies in a temp dir) and failed records."""
    tmp = tmp_path_factory.mktemp("orl")
    if not (DATA / "orl").is_dir():
        pytest.skip(f"{DATA / 'orl'} not found")
    people = sorted(os.listdir(DATA / "orl"), key=lambda s: int(s[1:]))[:12]
    records, labels = [], []
    for j, p in enumerate(people):
        for k, f in enumerate(sorted(os.listdir(DATA / "orl" / p))):
            cid = j
            if p == "s2":
                cid = 0  # merged into s1's cluster
            elif p == "s3" and k >= 6:
                cid = 100 + k  # four faces split off as singletons
            elif p == "s4" and k >= 5:
                cid = 50  # split into a second cluster
            records.append({"img_path": str(DATA / "orl" / p / f), "cluster_id": cid, "frame": k})
            labels.append(p)
    src = DATA / "orl" / "s12" / "1.png"
    odd_dir = tmp / "odd <dir> & 'x'"
    odd_dir.mkdir()
    for k, name in enumerate(ODD_NAMES):
        dst = odd_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        records.append({"img_path": str(dst), "cluster_id": 200 + k if k < 3 else -1,
                        **({"error": f"no face found <b>{k}</b> & more"} if k >= 3 else {})})
        labels.append("s12")
    # renumber by first appearance, as the pipeline writes it
    ids: dict[int, int] = {}
    for r in records:
        if r["cluster_id"] >= 0:
            r["cluster_id"] = ids.setdefault(r["cluster_id"], len(ids))
    out = tmp / "output.json"
    out.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return records, labels, out


# ------------------------------------------------------------------ without a browser
@needs_orl
def test_page_escapes_paths_and_errors(orl_output, tmp_path):
    records, labels, _ = orl_output
    page = write_report(records, tmp_path / "r.html", labels=labels, method="test <b>m</b>",
                        settings={"k": 80, "note": "</script><script>alert(1)</script>", "progress": "auto",
                                  "refine_post_steps": {"merge_k": 40}}, thumbs="inline")
    text = page.read_text(encoding="utf-8")
    sheets = len(re.findall(r'<script type="text/plain" id="sheet-\d+">', text))
    assert sheets == 1  # 125 faces fit one 16x16 sprite sheet
    # Exactly: the JSON data block, the sprite sheets and the page script. Nothing from the data.
    assert text.count("<script") == 2 + sheets
    assert text.lower().count("</script") == 2 + sheets
    assert "<img" not in text and "<!--" not in text
    # The data block parses back to the exact paths (round trip through the escaping).
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1))
    assert data["paths"] == [r["img_path"] for r in records]
    # how the run printed and the learned methods' resolved post-steps stay out of the header
    assert sorted(data["settings"]) == ["k", "note"]
    assert data["thumbErrors"] == []  # every odd name decoded
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', text).group(1)
    assert "default-src 'none'" in htmlmod.unescape(csp) and "unsafe-inline" not in csp
    # deterministic: same records, same bytes
    again = write_report(records, tmp_path / "again" / "r.html", labels=labels, method="test <b>m</b>",
                         settings={"k": 80, "note": "</script><script>alert(1)</script>", "progress": "auto",
                                   "refine_post_steps": {"merge_k": 40}}, thumbs="inline")
    assert again.read_bytes() == page.read_bytes()


@needs_orl
def test_thumbnail_folder_and_auto(orl_output, tmp_path):
    records, _, _ = orl_output
    page = write_report(records, tmp_path / "my report.html", thumbs="folder", thumb_size=40)
    sheets = sorted((tmp_path / "my_report_thumbs").glob("sheet-*.jpg"))
    assert len(sheets) == 1
    with Image.open(sheets[0]) as im:
        assert im.format == "JPEG" and im.width == 16 * 48  # 40 px thumbs on 48 px (JPEG block) cells
        assert im.height == 48 * -(-len(records) // 16)
    text = page.read_text(encoding="utf-8")
    assert '"urls":["my_report_thumbs/sheet-00000.jpg"]' in text
    assert 'id="sheet-0"' not in text  # nothing inline
    # auto: small sets inline
    auto = write_report(records[:20], tmp_path / "a.html")
    assert 'id="sheet-0"' in auto.read_text(encoding="utf-8")


def test_worst_merges_and_splits():
    #           cluster: 0 0 0 0 1 1 2 3  (-1 = failed, ignored)
    cids = np.array([0, 0, 0, 0, 1, 1, 2, 3, -1])
    labels = ["a", "a", "a", "b", "b", "b", "a", "c", "b"]
    codes, names = _label_codes(labels, len(labels))
    w = _worst(cids, codes, names)
    assert w["merges"] == [{"cluster": 0, "size": 4, "wrong": 1, "labels": [["a", 3], ["b", 1]], "n_labels": 2}]
    assert [(s["label"], s["faces"], s["outside"], s["clusters"]) for s in w["splits"]] == [
        ("a", 4, 1, [[0, 3], [2, 1]]),
        ("b", 3, 1, [[1, 2], [0, 1]]),
    ]
    with pytest.raises(ValueError, match="one per record"):
        _label_codes(["a"], 2)


def test_thumbnails_of_awkward_images(tmp_path):
    # 16-bit grey PNG: must be scaled, not clipped to white
    a = (np.linspace(0, 65535, 200 * 100).reshape(100, 200)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    t = np.asarray(_load_thumb(str(tmp_path / "g16.png"), 64))
    assert t.shape == (32, 64, 3) and 60 < t.mean() < 200
    # RGBA with a transparent half: composited, 3 channels
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :40, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    t = np.asarray(_load_thumb(str(tmp_path / "a.png"), 64))
    assert t.shape == (64, 64, 3) and t[:, :20, 0].mean() > 200 and t[:, -20:, 0].mean() < 100
    # EXIF orientation 6 (rotate 90): a 200x100 JPEG shows as 100x200
    im = Image.new("RGB", (200, 100), (0, 128, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert _load_thumb(str(tmp_path / "rot.jpg"), 64).size == (32, 64)
    # a big JPEG is decoded at reduced scale (draft) and still ends at the requested size
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(tmp_path / "big.jpg")
    assert _load_thumb(str(tmp_path / "big.jpg"), 64).size[0] == 64
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(Exception):
        _load_thumb(str(tmp_path / "broken.jpg"), 64)


def test_missing_images_and_empty_input(tmp_path):
    recs = [{"img_path": "gone.jpg", "cluster_id": 0}, {"img_path": "also gone.png", "cluster_id": 0}]
    page = write_report(recs, tmp_path / "r.html", base_dir=tmp_path)
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1))
    assert data["thumbErrors"] == [[0, "file not found"], [1, "file not found"]]
    assert write_report([], tmp_path / "empty.html").exists()
    with pytest.raises(ValueError):
        write_report(recs, tmp_path / "x.html", thumbs="cdn")


@needs_orl
def test_cli_report(orl_output, tmp_path):
    from typer.testing import CliRunner

    from facecluster.cli import app

    _, _, out = orl_output
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "r.html"), "--labels", "folder", "--thumbs", "folder"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert '"worst":{' in text and '"pairwise_fscore"' in text
    assert (tmp_path / "r_thumbs" / "sheet-00000.jpg").exists()
    res = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "c.html"), "--labels", "field:nope"])
    assert res.exit_code == 2 and "nope" in res.output and not (tmp_path / "c.html").exists()
    # through the console entry point: a file that is not an output JSON is a usage error (exit 2)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"img_path": "x.jpg"}]')
    p = subprocess.run([sys.executable, "-m", "facecluster.cli", "report", str(bad), "-o", str(tmp_path / "b.html")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "cluster_id" in p.stderr and not (tmp_path / "b.html").exists()


# ------------------------------------------------------------------ in a real browser
@pytest.mark.browser
@needs_chromium
@needs_orl
def test_report_in_headless_chromium(orl_output, tmp_path):
    records, labels, _ = orl_output
    page = write_report(records, tmp_path / "report.html", labels=labels, method="infomap",
                        settings={"k": 80}, thumbs="inline")
    dom = dump_dom(page)
    assert root_attr(dom, "data-error") is None, root_attr(dom, "data-error")
    assert root_attr(dom, "data-ready") == "1"
    assert root_attr(dom, "data-pwned") is None
    exp = expected_counts(records)
    assert {k: shown_count(dom, k) for k in exp} == exp
    assert int(root_attr(dom, "data-rows")) == exp["multi"]
    assert len(re.findall(r'<section class="cl[^"]*" id="c-\d+"', dom)) == exp["multi"]
    # the first screen is drawn with tiles from the sprite sheet
    assert int(root_attr(dom, "data-tiles")) >= 40
    # odd names and error text are shown as text
    assert "no face found &lt;b&gt;3&lt;/b&gt; &amp; more" in dom
    assert "&lt;img src=x onerror=" in dom and "&lt;/script&gt;&lt;script&gt;" in dom
    # the merged cluster (s1 + s2) is flagged, the split identities are listed
    assert 'class="cl impure"' in dom
    assert re.search(r'id="worst-splits".*?s3.*?s4', dom, re.S) or re.search(r'id="worst-splits".*?s4.*?s3', dom, re.S)
    # filter by path via the URL (#q=...) and jump to a cluster (#c-N)
    dom_q = dump_dom(page, "#q=" + "ünïcødé")
    assert root_attr(dom_q, "data-match-faces") == "1"
    single = next(r["cluster_id"] for r in records if r["img_path"].endswith("ünïcødé 名前 ☺.png"))
    dom_c = dump_dom(page, f"#c-{single}")
    assert root_attr(dom_c, "data-jumped") == str(single)
    assert '<aside id="detail" class="detail">' in dom_c  # shown (no hidden attribute)
    assert "名前" in dom_c.split('<aside id="detail"')[1]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-orl.png"
    chromium(["--virtual-time-budget=5000", f"--screenshot={shot}", page.resolve().as_uri()])
    assert shot.stat().st_size > 20_000


@pytest.mark.browser
@needs_chromium
@needs_orl
def test_report_marks_faces_of_the_last_add(orl_output, tmp_path):
    """`facecluster add --report` / `report -w COLLECTION`: the last add's faces are counted and framed."""
    records, _, _ = orl_output
    added = [i % 7 == 0 for i in range(len(records))]
    page = write_report(records, tmp_path / "report.html", added=added, added_label="batch 3", thumbs="inline")
    dom = dump_dom(page)
    assert root_attr(dom, "data-error") is None and root_attr(dom, "data-ready") == "1"
    assert shown_count(dom, "added") == sum(added)
    assert "added in batch 3" in dom
    marked = {int(i) for i in re.findall(r'<i class="t [^"]*\bnew\b[^"]*" data-i="(\d+)"', dom)}
    assert marked and all(added[i] for i in marked)
    unmarked = {int(i) for i in re.findall(r'<i class="t (?![^"]*\bnew\b)[^"]*" data-i="(\d+)"', dom)}
    assert unmarked and not any(added[i] for i in unmarked)
    with pytest.raises(ValueError):
        write_report(records, tmp_path / "bad.html", added=[True])


@pytest.mark.browser
@needs_chromium
@needs_orl
def test_report_counts_and_places_crops_with_no_face(orl_output, tmp_path):
    """Records marked "no_face" (facecluster.nonface) are counted in the header and shown after the singletons."""
    records, _, _ = orl_output
    recs = [dict(r) for r in records]
    nf = [i for i, r in enumerate(recs) if r["cluster_id"] >= 0][:3]
    for k, i in enumerate(nf):
        recs[i]["cluster_id"] = max(r["cluster_id"] for r in records) + 1 + k
        recs[i]["no_face"] = True
    page = write_report(recs, tmp_path / "report.html", thumbs="inline")
    dom = dump_dom(page)
    assert root_attr(dom, "data-error") is None and root_attr(dom, "data-ready") == "1"
    assert shown_count(dom, "no-face") == 3
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page.read_text(), re.S).group(1))
    assert data["noFace"] == nf
    failed = sum(1 for r in recs if r["cluster_id"] < 0)
    tail = data["order"][len(data["order"]) - failed - 3:len(data["order"]) - failed]
    assert tail == nf


@pytest.mark.browser
@needs_chromium
@needs_orl
def test_report_folder_mode_loads_sheets(orl_output, tmp_path):
    records, _, _ = orl_output
    page = write_report(records, tmp_path / "report.html", thumbs="folder")
    dom = dump_dom(page)
    assert root_attr(dom, "data-ready") == "1" and root_attr(dom, "data-sheets-failed") is None
    shutil.rmtree(tmp_path / "report_thumbs")  # a page copied without its folder says so
    dom = dump_dom(page)
    assert root_attr(dom, "data-sheets-failed") == "1" and "Thumbnails missing" in dom


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
@pytest.mark.skipif(not (DATA / "lfw").is_dir(), reason="LFW not found")
def test_lfw_report_loads_fast(tmp_path):
    """3,000 real LFW crops (folder = cluster, every 4th identity split): written and loaded in seconds."""
    records, labels = [], []
    for j, ident in enumerate(sorted(os.listdir(DATA / "lfw"))):
        for k, f in enumerate(sorted(os.listdir(DATA / "lfw" / ident))):
            records.append({"img_path": str(DATA / "lfw" / ident / f), "cluster_id": j + (10_000 if k % 4 == 3 else 0)})
            labels.append(ident)
        if len(records) >= 3000:
            break
    t = time.perf_counter()
    page = write_report(records, tmp_path / "lfw.html", labels=labels, method="folders")
    gen = time.perf_counter() - t
    dom, load = chromium(["--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()])
    exp = expected_counts(records)
    assert {k: shown_count(dom, k) for k in exp} == exp
    assert root_attr(dom, "data-error") is None
    print(f"lfw {len(records)} faces: generate {gen:.1f}s, {page.stat().st_size / 1e6:.1f} MB, chromium load {load:.1f}s")
    assert load < 30  # generous: CI machines are shared; typical is ~3 s
    ARTIFACTS.mkdir(exist_ok=True)
    chromium([f"--screenshot={ARTIFACTS / 'report-lfw.png'}", page.resolve().as_uri()])


def test_display_order_lists_copies_of_a_crop_with_no_face_once_and_last():
    """Copies of a crop with no face share its cluster (facecluster.nonface): the page order
    lists every record once, those copies together after the singletons, failed records last."""
    cids = np.array([0, 1, 0, 2, 1, 3, 2, -1, 4, 2])
    no_face = [1, 4, 5]  # cluster 1: two copies of one non-face; cluster 3: a lone non-face
    order = _display_order(cids, None, [], no_face)
    assert sorted(order) == list(range(len(cids)))
    assert order == [3, 6, 9, 0, 2, 8, 1, 4, 5, 7]
