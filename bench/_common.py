"""Helpers shared by the bench scripts: load an embedded work dir, run one method the way the
pipeline would (raw or mean-centred features), evaluate and print one line."""

from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from facecluster.calibration import calibration_mean, prepare_features
from facecluster.cluster import get_clusterer
from facecluster.evaluate import labels_from
from facecluster.metrics import evaluate
from facecluster.workdir import WorkDir


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_workdir(path: str | Path, labels: str = "folder") -> tuple[np.ndarray, np.ndarray, str]:
    """Features (N, D) float32, label names (N,) and embedder name of an embedded work dir."""
    wd = WorkDir(Path(path))
    feats, index, meta = wd.read_features()
    man = wd.read_manifest()
    names = np.asarray(labels_from([man["records"][i] for i in index], labels))
    return feats, names, meta["embedder"]["embedder"]


def load_face_px(path: str | Path, n: int) -> np.ndarray:
    """The faces' sizes (n,) as the pipeline records them for the dlib embedder (``face_px``: the
    inter-ocular distance in file pixels): ``features-face-px.npy`` written by ``facecluster
    merge``; for work dirs merged before it existed, computed with the same alignment
    (:func:`load_face_iod`, cached)."""
    px = WorkDir(Path(path)).read_face_px(n)
    return px if px is not None else load_face_iod(path, n)


def load_crop_side(path: str | Path, n: int) -> np.ndarray:
    """Each crop's shorter side in its file's pixels (n,) from the image headers of the manifest
    (NaN where unreadable): the size signal the small-face rule was first built on."""
    from facecluster.embed.runner import _header_side

    wd = WorkDir(Path(path))
    _, index, _ = wd.read_features()
    paths = wd.read_manifest()["paths"]
    return np.array([_header_side(paths[i]) for i in index], np.float32)


def load_face_iod(path: str | Path, n: int) -> np.ndarray:
    """Each face's inter-ocular distance in its file's pixels (n,), from the dlib embedder's
    default alignment (landmarks on the size-normalised crop, scaled back); NaN where the image
    does not load. Computed once per work dir and cached in ``WD/bench-face-iod.npy`` (a bench
    file, not a pipeline artifact); the same value as ``DlibEmbedder.prepare_sized`` gives the
    embed stage."""
    from concurrent.futures import ThreadPoolExecutor

    from facecluster.embed.align import Aligner
    from facecluster.embed.runner import _file_scale
    from facecluster.imageio import load_image

    wd = WorkDir(Path(path))
    cache = wd.root / "bench-face-iod.npy"
    if cache.exists():
        v = np.load(cache)
        if v.shape == (n,):
            return v
    _, index, _ = wd.read_features()
    paths = wd.read_manifest()["paths"]
    al = Aligner()

    def iod(p: str) -> float:
        try:
            img = load_image(p)
        except Exception:  # noqa: BLE001 - unreadable: unknown size
            return float("nan")
        return al.chip_and_size(img)[1] * _file_scale(p, img)

    with ThreadPoolExecutor(2) as ex:
        v = np.array(list(ex.map(iod, [paths[i] for i in index])), np.float32)
    np.save(cache, v)
    return v


def parse_value(v: str):
    """A setting's value from the command line: JSON when it parses (numbers, true/false), else the string."""
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def parse_variant(v: str) -> tuple[str, dict]:
    """``METHOD[:key=value,...]`` → (method, settings); a dict setting's key as
    ``refine_settings.attach_share=0.8``."""
    method, _, rest = v.partition(":")
    settings: dict = {}
    for kv in filter(None, rest.split(",")):
        k, _, val = kv.partition("=")
        outer, dot, inner = k.partition(".")
        if dot:
            settings.setdefault(outer, {})[inner] = parse_value(val)
        else:
            settings[k] = parse_value(val)
    return method, settings


def method_settings(pairs: list[str], method: str) -> dict:
    """``METHOD.key=value`` strings → settings for ``method``."""
    out = {}
    for s in pairs:
        k, _, v = s.partition("=")
        meth, _, key = k.partition(".")
        if meth == method:
            out[key] = parse_value(v)
    return out


@contextmanager
def cohort_leave_own_out(x: np.ndarray, names):
    """Score honestly on the identities the shipped cohort was built from (the training
    identities: tuning regimes, scenarios, full sets): each face's cohort level leaves its own
    person out, as it is for a user's faces, whose people are not in the cohort
    (``facecluster.cohort.Cohort.levels(exclude=...)``). The clusterer sees the faces by value
    (subsets after the small-face rule), so they are matched by their float32 bytes. A no-op for
    validation identities, which the cohort does not hold."""
    from facecluster.cohort import Cohort

    from facecluster.knn import l2_normalize

    rows = np.ascontiguousarray(np.asarray(x, np.float32))
    lookup = {r.tobytes(): str(n) for r, n in zip(rows, np.asarray(names))}
    # the same faces L2-normalised, as methods that judge links on plain descriptors pass them
    lookup.update({r.tobytes(): str(n) for r, n in zip(np.ascontiguousarray(l2_normalize(rows)), np.asarray(names))})
    orig = Cohort.levels

    def levels(self, q, *, exclude=None, **kw):
        if exclude is None:
            q32 = np.ascontiguousarray(np.asarray(q, np.float32))
            exclude = np.array([lookup.get(r.tobytes()) for r in q32], object)
        return orig(self, q, exclude=exclude, **kw)

    Cohort.levels = levels
    try:
        yield
    finally:
        Cohort.levels = orig


_AND_MEMO: dict = {}


@contextmanager
def memo_and_predictions():
    """Reuse Ada-NETS's AND predictions across the variants of one sweep (``regimes.py``: every
    variant re-clusters the same regimes). AND's k̂ depends only on its weights, the features and
    the structure-space lists, so a sweep over ``final_th`` / ``min_k_hat`` / the floor gets the
    same labels while AND runs once per regime (with 512-d mbf features it is most of the
    clustering time). Keyed by the model object and digests of both arrays; the memo is emptied
    on exit."""
    import hashlib

    from facecluster.cluster import adanets

    real = adanets.predict_k

    def memo(model, x, ids, scale_max, **kw):
        key = (id(model), hashlib.sha1(np.ascontiguousarray(x).view(np.uint8)).hexdigest(),
               hashlib.sha1(np.ascontiguousarray(ids).view(np.uint8)).hexdigest(), int(scale_max))
        if key not in _AND_MEMO:  # the model is kept with its result, so its id is not reused
            _AND_MEMO[key] = (model, real(model, x, ids, scale_max, **kw))
        return _AND_MEMO[key][1].copy()

    adanets.predict_k = memo
    try:
        yield
    finally:
        adanets.predict_k = real
        _AND_MEMO.clear()


def run_method(method: str, feats: np.ndarray, gt, embedder: str, device: str = "cpu", face_px=None, labels_out: list | None = None,
               clusterer_out: list | None = None, **settings) -> dict:
    """Cluster ``feats`` with ``method`` as the pipeline would and score against ``gt`` labels;
    ``face_px`` (N,): the crops' sizes, passed as the pipeline does to methods that use them;
    ``labels_out``: a list that receives the (N,) labels; ``clusterer_out``: one that receives
    the fitted clusterer (its diagnostics, e.g. gcn-ve's ``link_kept_``)."""
    c = get_clusterer(method, device=device, embedder=embedder, **settings)
    if clusterer_out is not None:
        clusterer_out.append(c)
    x = feats if getattr(c, "wants_raw_features", False) else prepare_features(feats, calibration_mean(embedder))
    rss0 = peak_rss_mb()
    t = time.perf_counter()
    with cohort_leave_own_out(x, gt):
        lab = c.fit_predict(x, face_px=face_px)  # methods without the small-face rule ignore it
    if labels_out is not None:
        labels_out.append(lab)
    dt = time.perf_counter() - t
    y = np.unique(np.asarray(gt), return_inverse=True)[1]
    r = evaluate(y, lab)
    r.update(
        method=method,
        seconds=dt,
        peak_rss_mb=peak_rss_mb(),
        rss_growth_mb=peak_rss_mb() - rss0,
        settings={k: v for k, v in c.settings().items() if k not in ("device", "progress", "knn_backend")},
    )
    return r


def format_row(r: dict, label: str | None = None) -> str:
    return (
        f"{label or r['method']:17s} pairF {r['pairwise_fscore']:.4f} (P {r['pairwise_precision']:.3f} "
        f"R {r['pairwise_recall']:.3f})  BCubedF {r['bcubed_fscore']:.4f} (P {r['bcubed_precision']:.3f} "
        f"R {r['bcubed_recall']:.3f})  NMI {r['nmi']:.4f}  clusters {r['n_clusters']}  {r['seconds']:.1f}s  "
        f"peakRSS {r['peak_rss_mb']:.0f}MB"
    )
