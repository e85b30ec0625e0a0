"""Static HTML review page for a clustering result.

``write_report(records, "report.html")`` writes one HTML file that shows every cluster
as a row of face thumbnails (largest first), the singletons together, the failed
records with their error, and a header with counts, method, settings and, when ground
truth labels are given, the metrics and the worst merges and splits.

Design (why it stays light with 20,000 faces)
----------------------------------------------
* Thumbnails are packed into **sprite sheets** (``cols x cols`` cells, JPEG) in display
  order, so a cluster's faces sit in one or two sheets. One 1024x1024 sheet holds 256
  faces of 64 px and compresses far better than 256 tiny JPEGs (shared headers and
  Huffman tables, ~1 kB per face instead of ~2.5 kB).
* ``thumbs="inline"`` stores each sheet as base64 text in its own inert
  ``<script type="text/plain">`` element (one self-contained file);
  ``thumbs="folder"`` writes the sheets to a sibling ``<name>_thumbs/`` folder and the
  page stays a few MB. ``"auto"`` (default) inlines up to :data:`INLINE_MAX_FACES`
  faces and uses the folder above that. Either way a sheet becomes a CSS background
  only when a tile that uses it comes near the viewport (IntersectionObserver), so
  the browser decodes just what is on screen.
* Cluster rows are placeholders with their exact final height until they scroll near
  the viewport; only then are their tiles created.
* Safety: all record text goes into one ``<script type="application/json">`` block
  with ``<``, ``>`` and ``&`` escaped, and the page script writes it with
  ``textContent`` only. Image paths are never used as URLs: the page shows only the
  sprite sheets this function wrote. A Content-Security-Policy (script/style allowed
  by hash only, no network) backs that up.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..progress import bar

__all__ = ["write_report", "report_stats", "INLINE_MAX_FACES"]

#: ``thumbs="auto"`` inlines the sprite sheets up to this many records (~1 kB each at
#: 64 px, so the file stays under ~10 MB); above it the sheets go to a sibling folder.
INLINE_MAX_FACES = 8000
#: Sprite sheet width and height in cells.
SHEET_COLS = 16
#: JPEG quality of the sprite sheets.
JPEG_QUALITY = 70
#: Entries in the worst-merges and worst-splits tables.
WORST_N = 12

_BG = (40, 40, 40)  # letterbox colour for non-square crops (matches the page's tile background)


# --------------------------------------------------------------------------- thumbnails
def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (alpha composited on the tile background, 16-bit scaled)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        # 16-bit PNGs span 0..65535; anything else is stretched to its own range.
        scale = 255.0 / 65535.0 if hi > 255 and hi <= 65535 else (255.0 / hi if hi > 255 else 1.0)
        g = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), "L")
        return g.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _BG + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def _load_thumb(path: str, size: int) -> Image.Image:
    """Decode ``path`` straight to a thumbnail that fits in ``size`` x ``size``.

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale (``draft``) and large images are shrunk
    with ``reduce`` before the final filter, which makes a 20k-face report take
    seconds, not minutes. Falls back to :func:`facecluster.imageio.load_image` (the
    pipeline's own decoder) for anything PIL cannot open.
    """
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            im.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return im
    except FileNotFoundError:
        raise
    except Exception as first:  # noqa: BLE001 - try the pipeline's decoder before giving up
        try:
            from facecluster.imageio import load_image  # type: ignore[import-not-found]
        except ImportError:
            raise first from None
        im = Image.fromarray(load_image(path))
        im.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return im


def _bad_tile(size: int) -> Image.Image:
    """Tile drawn for a record whose image cannot be decoded (a grey cross)."""
    im = Image.new("RGB", (size, size), (70, 70, 70))
    d = ImageDraw.Draw(im)
    w = max(1, size // 16)
    d.line([(size * 0.3, size * 0.3), (size * 0.7, size * 0.7)], fill=(160, 160, 160), width=w)
    d.line([(size * 0.7, size * 0.3), (size * 0.3, size * 0.7)], fill=(160, 160, 160), width=w)
    return im


def _make_sheet(paths: Sequence[str], size: int, pitch: int, cols: int) -> tuple[bytes, list[tuple[int, str]]]:
    """Render up to ``cols*cols`` thumbnails into one JPEG sprite sheet.

    Returns the JPEG bytes and ``[(cell, error message), ...]`` for undecodable images.
    """
    rows = max(1, -(-len(paths) // cols))
    # Always full width: the page scales sheets with one background-size for every sheet.
    sheet = Image.new("RGB", (pitch * cols, pitch * rows), _BG)
    errors: list[tuple[int, str]] = []
    for cell, p in enumerate(paths):
        try:
            t = _load_thumb(p, size)
        except Exception as e:  # noqa: BLE001 - one bad file must not sink the page
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, FileNotFoundError) else "file not found"
            errors.append((cell, msg[:300]))
            t = _bad_tile(size)
        x, y = (cell % cols) * pitch, (cell // cols) * pitch
        sheet.paste(t, (x + (size - t.width) // 2, y + (size - t.height) // 2))
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue(), errors


# --------------------------------------------------------------------------- statistics
def _cluster_order(cids: np.ndarray) -> tuple[list[int], list[int]]:
    """Cluster ids with >= 2 faces (largest first, ties by id) and singleton ids (by id)."""
    ok = cids[cids >= 0]
    if ok.size == 0:
        return [], []
    ids, counts = np.unique(ok, return_counts=True)
    big = np.lexsort((ids, -counts))
    multi = [int(ids[i]) for i in big if counts[i] >= 2]
    single = [int(i) for i in ids[counts == 1]]
    return multi, single


def report_stats(records: Sequence[dict]) -> dict[str, int]:
    """The counts the page header shows (computed independently by the page script).

    ``faces``: records with ``cluster_id >= 0``; ``clusters``: distinct ids among them
    (singletons included); ``multi``: clusters with >= 2 faces; ``singletons``: clusters
    of one face; ``failures``: records with ``cluster_id < 0``; ``records``: all.
    """
    cids = np.array([int(r.get("cluster_id", -1)) for r in records], dtype=np.int64)
    multi, single = _cluster_order(cids)
    return {
        "records": len(records),
        "faces": int((cids >= 0).sum()),
        "clusters": len(multi) + len(single),
        "multi": len(multi),
        "singletons": len(single),
        "failures": int((cids < 0).sum()),
    }


def _label_codes(labels: Iterable[Any] | None, n: int) -> tuple[np.ndarray | None, list[str]]:
    """Ground-truth labels (any hashable, ``None`` = unknown) → int codes (-1 unknown) + names."""
    if labels is None:
        return None, []
    labels = list(np.asarray(labels, dtype=object).reshape(-1)) if not isinstance(labels, list) else labels
    if len(labels) != n:
        raise ValueError(f"labels: expected {n} entries (one per record), got {len(labels)}")
    names: dict[str, int] = {}
    codes = np.full(n, -1, dtype=np.int64)
    for i, lab in enumerate(labels):
        if lab is None or (isinstance(lab, float) and np.isnan(lab)):
            continue
        key = str(lab.item() if isinstance(lab, np.generic) else lab)
        codes[i] = names.setdefault(key, len(names))
    return codes, list(names)


def _worst(cids: np.ndarray, codes: np.ndarray, names: list[str], top: int = WORST_N) -> dict[str, list]:
    """Worst merges (clusters holding several identities) and splits (identities over several clusters).

    A merge's cost is the number of faces outside the cluster's majority identity; a
    split's cost is the number of an identity's faces outside its largest cluster
    (singletons count as clusters). Failed records and unlabelled faces are ignored.
    """
    ok = (cids >= 0) & (codes >= 0)
    pairs = Counter(zip(cids[ok].tolist(), codes[ok].tolist()))
    by_cluster: dict[int, list[tuple[int, int]]] = {}
    by_label: dict[int, list[tuple[int, int]]] = {}
    for (c, l), k in pairs.items():
        by_cluster.setdefault(c, []).append((l, k))
        by_label.setdefault(l, []).append((c, k))
    merges = []
    for c, lst in by_cluster.items():
        lst.sort(key=lambda t: (-t[1], t[0]))
        size = sum(k for _, k in lst)
        wrong = size - lst[0][1]
        if wrong > 0:
            merges.append({"cluster": c, "size": size, "wrong": wrong,
                           "labels": [[names[l], k] for l, k in lst[:6]], "n_labels": len(lst)})
    merges.sort(key=lambda m: (-m["wrong"], -m["size"], m["cluster"]))
    splits = []
    for l, lst in by_label.items():
        lst.sort(key=lambda t: (-t[1], t[0]))
        n = sum(k for _, k in lst)
        outside = n - lst[0][1]
        if outside > 0:
            splits.append({"label": names[l], "faces": n, "outside": outside,
                           "clusters": [[c, k] for c, k in lst[:8]], "n_clusters": len(lst)})
    splits.sort(key=lambda s: (-s["outside"], -s["faces"], s["label"]))
    return {"merges": merges[:top], "splits": splits[:top],
            "n_merged_clusters": len(merges), "n_split_labels": len(splits)}


def _display_order(cids: np.ndarray, codes: np.ndarray | None, names: list[str], no_face: Sequence[int] = ()) -> list[int]:
    """Record indices in page order; the sprite sheets are packed in this order too.

    Clusters largest first (ties by id), then singletons, then the crops with no face
    (``no_face``: each a cluster of its own, shared only with its copies, which stay adjacent),
    then failed records (their image may still decode). Without labels, faces keep input order (e.g. video time).
    With labels, a cluster's faces are grouped by identity, majority first, so a merge
    shows as separate blocks; singletons are sorted by identity, so an identity split
    into many singletons shows as a run of the same face.
    """
    nf = set(int(i) for i in no_face)
    multi, single = _cluster_order(cids)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cids.tolist()):
        members.setdefault(c, []).append(i)
    if codes is not None:
        for c in multi:
            m = members[c]
            cnt = Counter(codes[m].tolist())
            # unknown labels (-1) last; identities by descending count, then name
            rank = {l: (l < 0, -k, names[l] if l >= 0 else "") for l, k in cnt.items()}
            members[c] = sorted(m, key=lambda i: (rank[int(codes[i])], i))
        single = sorted(single, key=lambda c: (int(codes[members[c][0]]) < 0,
                                               names[codes[members[c][0]]] if codes[members[c][0]] >= 0 else "", c))
    # a crop with no face shares its cluster with its copies only: its clusters go last, each once
    multi = [c for c in multi if members[c][0] not in nf]
    order = [i for c in multi for i in members[c]] + [members[c][0] for c in single if members[c][0] not in nf]
    return order + sorted(nf, key=lambda i: (int(cids[i]), i)) + [i for i in range(len(cids)) if cids[i] < 0]


# --------------------------------------------------------------------------- HTML
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, no ``<!--``.

    ``ensure_ascii`` keeps lone surrogates (undecodable file names) representable;
    ``<``, ``>``, ``&`` can only occur inside JSON strings, where ``\\u003c`` etc. are
    equivalent escapes.
    """
    s = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=_json_default)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def _finite(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by strings so settings/metrics always serialise."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, np.floating):
        return _finite(float(obj))
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def write_report(
    records: list[dict],
    out_path: str | os.PathLike,
    *,
    labels: list | np.ndarray | None = None,
    method: str | None = None,
    settings: dict | None = None,
    metrics: dict | None = None,
    thumb_size: int = 64,
    thumbs: str = "auto",
    base_dir: str | os.PathLike | None = None,
    title: str | None = None,
    workers: int | None = None,
    added: Sequence[bool] | None = None,
    added_label: str | None = None,
) -> Path:
    """Write the HTML review page for a clustering output.

    Parameters
    ----------
    records : list of dict, length N
        The output JSON records: ``img_path`` and ``cluster_id`` (int >= 0, or -1 for a
        failed record that also has an ``error`` string); ``"no_face": true`` marks a crop
        that holds no face (shown after the singletons, counted in the header). Extra keys are
        ignored.
    out_path : path of the HTML file to write (parent folders are created).
    labels : (N,) sequence, optional
        Ground-truth identity per record (any hashable; ``None`` = unknown). Enables the
        metrics, worst merges/splits and the red outline on faces that disagree with
        their cluster's majority identity.
    method, settings : shown in the header.
    metrics : dict, optional
        Shown in the header. When ``None`` and ``labels`` are given, computed with
        :func:`facecluster.metrics.evaluate` over the clustered (non-failed) records.
    thumb_size : int
        Thumbnail edge in pixels (16..256).
    thumbs : {"auto", "inline", "folder"}
        Where the sprite sheets go: inside the HTML, or in ``<stem>_thumbs/`` beside it.
    base_dir : folder that relative ``img_path`` values are resolved against
        (default: the current directory, i.e. paths as given).
    title : page title (default: the output file name).
    workers : thumbnail threads (default: CPU count, at most 8). PIL releases the GIL
        while decoding, so threads scale.
    added : (N,) bools, optional
        Faces to mark as added by the last ``facecluster add`` (a green inner frame and a count
        in the header); ``added_label`` names that batch in the header.

    Returns
    -------
    Path of the written HTML file. Written atomically (temp file + rename).
    """
    if not 16 <= int(thumb_size) <= 256:
        raise ValueError(f"thumb_size must be in 16..256, got {thumb_size}")
    if thumbs not in ("auto", "inline", "folder"):
        raise ValueError(f"thumbs must be 'auto', 'inline' or 'folder', got {thumbs!r}")
    size = int(thumb_size)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = len(records)
    paths_raw = [str(r.get("img_path", "")) for r in records]
    cids = np.array([int(r.get("cluster_id", -1)) for r in records], dtype=np.int64)
    errors = [[i, str(r.get("error") or "no cluster_id")] for i, r in enumerate(records) if cids[i] < 0]
    base = Path(base_dir) if base_dir is not None else None
    abs_paths = [os.path.join(base, os.path.expanduser(p)) if base is not None and not os.path.isabs(os.path.expanduser(p))
                 else os.path.expanduser(p) for p in paths_raw]

    codes, names = _label_codes(labels, n)
    if codes is not None and metrics is None:
        metrics = _compute_metrics(codes, cids)

    # Thumbnail (display) order: clusters largest first, then singletons, then failed records,
    # so each cluster row reads from one or two sprite sheets.
    no_face = [i for i, r in enumerate(records) if r.get("no_face") and cids[i] >= 0]
    order = _display_order(cids, codes, names, no_face)

    mode = thumbs if thumbs != "auto" else ("inline" if n <= INLINE_MAX_FACES else "folder")
    per = SHEET_COLS * SHEET_COLS
    pitch = -(-size // 16) * 16  # cells on JPEG MCU boundaries so neighbours never bleed
    chunks = [order[k:k + per] for k in range(0, len(order), per)]
    workers = workers or min(8, os.cpu_count() or 1)
    sheets: list[bytes] = [b""] * len(chunks)
    thumb_errors: list[list] = []
    with ThreadPoolExecutor(max_workers=workers) as ex, bar("report thumbnails", len(order)) as prog:
        futs = [ex.submit(_make_sheet, [abs_paths[i] for i in ch], size, pitch, SHEET_COLS) for ch in chunks]
        for k, f in enumerate(futs):  # in sheet order: deterministic output
            sheets[k], errs = f.result()
            thumb_errors += [[chunks[k][cell], msg] for cell, msg in errs]
            prog.advance(len(chunks[k]))

    thumb_dir = None
    sheet_urls: list[str] = []
    if mode == "folder":
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", out_path.stem) or "report"
        thumb_dir = out_path.parent / f"{safe}_thumbs"
        thumb_dir.mkdir(exist_ok=True)
        for old in thumb_dir.glob("sheet-*.jpg"):  # stale sheets from a bigger earlier report
            old.unlink()
        for k, b in enumerate(sheets):
            name = f"sheet-{k:05d}.jpg"
            _atomic_write_bytes(thumb_dir / name, b)
            sheet_urls.append(f"{thumb_dir.name}/{name}")

    data = {
        "title": title or out_path.name,
        "paths": paths_raw,
        "cid": cids.tolist(),
        "errors": errors,
        "noFace": no_face,
        "order": order,
        "thumbErrors": thumb_errors,
        "sheet": {"cols": SHEET_COLS, "per": per, "pitch": pitch, "size": size, "n": len(sheets),
                  "mode": mode, "urls": sheet_urls},
        "labels": None if codes is None else codes.tolist(),
        "labelNames": names,
        "method": method,
        # "progress" is how the run printed, not how it clustered; "refine_post_steps" (the learned
        # methods' ~45 resolved post-step settings) stays in labels-<method>.json: the header shows
        # what the user chose (refine, refine_settings), not a wall of defaults
        "settings": _finite({k: v for k, v in settings.items() if k not in ("progress", "refine_post_steps")}) if settings else None,
        "metrics": _finite(metrics) if metrics else None,
        "worst": _worst(cids, codes, names) if codes is not None else None,
        "version": _version(),
        "added": None if added is None else [i for i, a in enumerate(_check_added(added, n)) if a],
        "addedLabel": added_label,
    }
    js, css, tpl = _asset("report.js"), _asset("report.css"), _asset("template.html")
    img_src = "data:" if mode == "inline" else "data: 'self' file:"
    csp = (f"default-src 'none'; img-src {img_src}; style-src {_csp_hash(css)}; "
           f"script-src {_csp_hash(js)}; base-uri 'none'; form-action 'none'")
    if mode == "inline":
        sheet_html = "".join(
            f'<script type="text/plain" id="sheet-{k}">{base64.b64encode(b).decode("ascii")}</script>\n'
            for k, b in enumerate(sheets))
    else:
        sheet_html = ""
    parts = {
        "CSP": html.escape(csp, quote=True),
        "TITLE": html.escape(f"Cluster review: {data['title']}"),
        "CSS": css,
        "DATA": _json_for_script(data),
        "SHEETS": sheet_html,
        "JS": js,
    }
    # One pass, so a file name containing "{{JS}}" is never substituted twice.
    page = re.sub(r"\{\{([A-Z]+)\}\}", lambda m: parts[m.group(1)], tpl)
    _atomic_write_bytes(out_path, page.encode("utf-8"))
    return out_path


def _check_added(added: Sequence[bool], n: int) -> list[bool]:
    added = [bool(a) for a in added]
    if len(added) != n:
        raise ValueError(f"added: expected {n} entries (one per record), got {len(added)}")
    return added


def _compute_metrics(codes: np.ndarray, cids: np.ndarray) -> dict | None:
    """Metrics over the clustered, labelled records, via the pipeline's own evaluator."""
    try:
        from facecluster.metrics import evaluate  # type: ignore[import-not-found]
    except ImportError:
        return None
    ok = (cids >= 0) & (codes >= 0)
    if ok.sum() == 0:
        return None
    try:
        return dict(evaluate(codes[ok], cids[ok]))
    except Exception as e:  # noqa: BLE001 - the page is still useful without the numbers
        logging.getLogger(__name__).warning("report: metrics not computed: %s", e)
        return None


def _version() -> str:
    try:
        from facecluster import __version__  # type: ignore[attr-defined]
        return str(__version__)
    except ImportError:
        return ""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
