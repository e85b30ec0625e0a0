"""The ``facecluster`` command line (typer). Stage commands are what the images and the
Kubernetes Jobs run; ``run`` chains them in one process."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import typer

from . import __version__, contract

app = typer.Typer(
    name="facecluster",
    help="Cluster face crops by identity: JSON list of crops in, the same list with cluster_id out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train the clustering networks on labelled features (ships as package weights).", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.callback()
def _train_setup() -> None:
    # before any training command's first torch operation: subnormal gradients slow CPU training
    # ~12x (train.flush_subnormals; worker threads inherit the flag only when they start)
    from .train import flush_subnormals

    flush_subnormals()


WORK_DIR_HELP = "Work directory shared by the stages (the shared volume in Kubernetes). Env: FACECLUSTER_WORK_DIR."
DEVICE_HELP = "auto | cpu | cuda[:i]. auto uses CUDA when torch sees a GPU."


def _fail(msg: str, code: int = contract.EXIT_INVALID) -> None:
    typer.echo(f"facecluster: error: {msg}", err=True)
    raise typer.Exit(code)


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects KEY=VALUE, got {it!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = val
    return out


def _workdir(work_dir: Optional[Path], default: Optional[Path] = None):
    from .workdir import WorkDir

    wd = work_dir or (Path(os.environ["FACECLUSTER_WORK_DIR"]) if os.environ.get("FACECLUSTER_WORK_DIR") else default)
    if wd is None:
        _fail("--work-dir is required (or set FACECLUSTER_WORK_DIR)")
    return WorkDir(wd)


def _refuse_if_collection(wd, command: str) -> None:
    """A work dir grown by `facecluster add` holds ids that were given out; a batch stage there
    would relabel (or drop) them, so it is refused rather than silently renumbering."""
    from .incremental import Collection

    coll = Collection(wd)
    if coll.exists():
        try:
            st = coll.state()
            what = f"{st['n_records']} records in {len(st['batches'])} batches"
        except (ValueError, OSError):
            what = "a collection"
        _fail(
            f"{wd.root} holds a growing collection made by `facecluster add` ({what}); `facecluster {command}` "
            f"would relabel it. Grow it with `facecluster add NEW.json -w {wd.root} -o NEW_OUT.json`, write it with "
            f"`facecluster write -w {wd.root} -o ALL.json`; for a fresh clustering of everything use a new work dir"
        )


def _device(device: str) -> str:
    from .cluster.base import resolve_device

    try:
        return resolve_device(device)
    except (RuntimeError, ValueError) as e:
        _fail(str(e))


def _settings(method: str, sets: dict[str, Any], device: str) -> dict[str, Any]:
    """Validate method settings early (a typo is a usage error, not a crash mid-run)."""
    from pydantic import ValidationError

    from .cluster import method_class

    try:
        cls = method_class(method)
    except ValueError as e:
        _fail(str(e))
    settings = {"device": device, "progress": sys.stderr.isatty(), **sets}
    try:
        cls.Config(**settings)
    except ValidationError as e:
        _fail(f"invalid settings for {method}: " + "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors()))
    return settings


def _stage_echo(res) -> None:
    state = "up to date, skipped" if res.skipped else f"done in {res.seconds:.1f}s"
    extra = ", ".join(f"{k}={v}" for k, v in res.info.items())
    typer.echo(f"[{res.stage}] {state}{' (' + extra + ')' if extra else ''}", err=True)


def _method_opts(set_: list[str] | None, checkpoint_v: Optional[Path], checkpoint_e: Optional[Path]) -> dict[str, Any]:
    sets = _parse_sets(set_)
    if checkpoint_v:
        sets["checkpoint_v"] = str(checkpoint_v)
    if checkpoint_e:
        sets["checkpoint_e"] = str(checkpoint_e)
    return sets


# ------------------------------------------------------------------------------- run
@app.command()
def run(
    input: Path = typer.Argument(..., help="Input JSON: a list of {\"img_path\": ...} records."),
    output: Path = typer.Option(..., "-o", "--output", help="Output JSON (the input records + cluster_id)."),
    method: str = typer.Option(None, "--method", "-m", help="Clustering method (see `facecluster methods`). Default: infomap."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", "-w", help=WORK_DIR_HELP + " Default: OUTPUT.work/ beside the output."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    embedder: str = typer.Option("dlib", "--embedder", "-e", help="dlib | hfsoftmax:PATH | arcface:PATH (see `facecluster embedders`)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per network batch."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Method setting KEY=VALUE (repeatable)."),
    checkpoint_v: Optional[Path] = typer.Option(None, "--checkpoint-v", help="GCN-V checkpoint (gcn-v, gcn-ve)."),
    checkpoint_e: Optional[Path] = typer.Option(None, "--checkpoint-e", help="GCN-E checkpoint (gcn-ve)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the HTML review page here."),
    report_labels: Optional[str] = typer.Option(
        None, "--report-labels", help="Ground truth for the review page's metrics and worst merges/splits: folder or field:NAME."
    ),
):
    """Run every stage in one process: prepare, embed, merge, cluster, write."""
    from . import pipeline
    from .cluster import DEFAULT_METHOD

    method = method or DEFAULT_METHOD
    if report_labels is not None:
        _check_label_spec(report_labels, "--report-labels")
    wd = _workdir(work_dir, default=output.with_name(output.name + ".work"))
    _refuse_if_collection(wd, "run")
    dev = _device(device)
    settings = _settings(method, _method_opts(set_, checkpoint_v, checkpoint_e), dev)
    _stage_echo(pipeline.prepare(input, wd))
    _stage_echo(pipeline.embed(wd, (0, 1), embedder, dev, batch_size, progress=sys.stderr.isatty()))
    _stage_echo(pipeline.merge(wd, 1))
    _stage_echo(pipeline.cluster(wd, method, settings))
    records, summary = pipeline.write(wd, method, output)
    pipeline.print_summary(summary)
    if report:
        _write_report(records, report, summary, labels=report_labels, base_dir=input.resolve().parent)
    raise typer.Exit(contract.EXIT_PARTIAL if summary["failed"] else contract.EXIT_OK)


def _check_label_spec(spec: str, opt: str) -> None:
    if spec != "folder" and not (spec.startswith("field:") and len(spec) > len("field:")):
        _fail(f"{opt} must be 'folder' or 'field:NAME', got {spec!r}")


def _write_report(
    records,
    path: Path,
    summary: dict[str, Any],
    labels: Optional[str] = None,
    base_dir: Optional[Path] = None,
    thumbs: str = "auto",
    thumb_size: int = 64,
    strict_labels: bool = False,
    added: Optional[list[bool]] = None,
    added_label: Optional[str] = None,
) -> Path:
    """Write the review page; with ``labels`` (folder | field:NAME) add metrics and worst merges/splits.

    After ``run`` the output JSON is already written, so a label spec that does not fit the
    records only drops the quality section (with a warning) unless ``strict_labels``."""
    from .report import write_report

    gt = None
    if labels:
        from .evaluate import labels_from

        try:
            gt = labels_from(records, labels)
        except (ValueError, KeyError, TypeError) as e:
            if strict_labels:
                _fail(f"--labels {labels}: {e}")
            typer.echo(f"facecluster: warning: report without labels: {e}", err=True)
    out = write_report(
        records, path, labels=gt, method=summary.get("method"), settings=summary.get("settings"),
        base_dir=base_dir, thumbs=thumbs, thumb_size=thumb_size, added=added, added_label=added_label,
    )
    typer.echo(f"report: {out.resolve()}", err=True)
    return out


# ------------------------------------------------------------------------------- stages
@app.command()
def prepare(
    input: Path = typer.Argument(..., help="Input JSON."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", "-w", help=WORK_DIR_HELP),
):
    """Stage 1: validate the input and write WORK_DIR/manifest.json."""
    from . import pipeline

    wd = _workdir(work_dir)
    _refuse_if_collection(wd, "prepare")
    _stage_echo(pipeline.prepare(input, wd))


@app.command()
def embed(
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", "-w", help=WORK_DIR_HELP),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: embed the I-th of N contiguous shards (0-based). Default: JOB_COMPLETION_INDEX/FACECLUSTER_SHARDS if set, else all."
    ),
    embedder: str = typer.Option("dlib", "--embedder", "-e", help="dlib | hfsoftmax:PATH | arcface:PATH."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per network batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode/alignment worker threads (default: by CPU count)."),
):
    """Stage 2: decode, align and embed faces → WORK_DIR/features/part-I-of-N.npz."""
    from . import pipeline
    from .workdir import parse_shard

    try:
        sh = parse_shard(shard)
    except ValueError as e:
        _fail(str(e))
    wd = _workdir(work_dir)
    _refuse_if_collection(wd, "embed")
    _stage_echo(pipeline.embed(wd, sh, embedder, _device(device), batch_size, workers, progress=sys.stderr.isatty()))


@app.command()
def merge(
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", "-w", help=WORK_DIR_HELP),
    shards: Optional[int] = typer.Option(None, "--shards", min=1, help="Number of shards (default: found in WORK_DIR/features)."),
):
    """Stage 3: join shard parts in input order → features.npy, features.bin (raw float32 N×D), features.json."""
    from . import pipeline

    wd = _workdir(work_dir)
    _refuse_if_collection(wd, "merge")
    _stage_echo(pipeline.merge(wd, shards))


@app.command()
def cluster(
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", "-w", help=WORK_DIR_HELP),
    method: str = typer.Option(None, "--method", "-m", help="Clustering method (see `facecluster methods`). Default: infomap."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Method setting KEY=VALUE (repeatable)."),
    checkpoint_v: Optional[Path] = typer.Option(None, "--checkpoint-v", help="GCN-V checkpoint (gcn-v, gcn-ve)."),
    checkpoint_e: Optional[Path] = typer.Option(None, "--checkpoint-e", help="GCN-E checkpoint (gcn-ve)."),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help="Do not subtract the embedder's shipped mean vector."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the output JSON."),
):
    """Stage 4: cluster the merged features → labels-METHOD.npy (and the output JSON with -o)."""
    from . import pipeline
    from .cluster import DEFAULT_METHOD

    method = method or DEFAULT_METHOD
    wd = _workdir(work_dir)
    _refuse_if_collection(wd, "cluster")
    settings = _settings(method, _method_opts(set_, checkpoint_v, checkpoint_e), _device(device))
    _stage_echo(pipeline.cluster(wd, method, settings, calibrate=not no_calibrate))
    if output:
        _, summary = pipeline.write(wd, method, output)
        pipeline.print_summary(summary)
        raise typer.Exit(contract.EXIT_PARTIAL if summary["failed"] else contract.EXIT_OK)


@app.command()
def write(
    output: Path = typer.Option(..., "-o", "--output", help="Output JSON."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", "-w", help=WORK_DIR_HELP),
    method: str = typer.Option(None, "--method", "-m", help="Whose labels to write. Default: infomap."),
):
    """Stage 5: write the output JSON (input records in order + cluster_id, -1 + error for failures).

    On a work dir grown by `facecluster add`: the whole collection, in the order added, with its stable ids."""
    from . import pipeline
    from .cluster import DEFAULT_METHOD
    from .incremental import Collection, write_collection

    wd = _workdir(work_dir)
    if Collection(wd).exists():
        st = Collection(wd).state()
        if method and method != st["method"]:
            _fail(f"{wd.root} is a {st['method']} collection (grown by `facecluster add`); it has no {method} labels for all its records")
        _, summary = write_collection(wd, output)
    else:
        _, summary = pipeline.write(wd, method or DEFAULT_METHOD, output)
    pipeline.print_summary(summary)
    raise typer.Exit(contract.EXIT_PARTIAL if summary["failed"] else contract.EXIT_OK)


# ------------------------------------------------------------------------------- add
@app.command()
def add(
    input: Path = typer.Argument(..., help="New records: a JSON list of {\"img_path\": ...} (the same contract as `run`)."),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", "-w", help="Work dir of an earlier `facecluster run` (or `add`): the collection that grows. Env: FACECLUSTER_WORK_DIR."
    ),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output JSON: the new records, in order, all keys kept, + cluster_id."),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="Must be the collection's method (default: the one W was clustered with; only infomap has an incremental form)."
    ),
    embedder: Optional[str] = typer.Option(
        None, "--embedder", "-e", help="Default: the embedder W was made with. Another one (or other settings/weights) is refused."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per network batch."),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="When another `add` is changing W: wait for it (default) or refuse at once (exit 75)."
    ),
    embed_only: bool = typer.Option(
        False, "--embed-only", help="Only embed the new records into W (the recognition image's Job in Kubernetes); the same `add` without it assigns the ids."
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the review page of the whole collection, faces of this add marked."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="How new faces join (KEY=VALUE, repeatable): assign_share, vote_rounds, group_cover, bridge_min_links, bridge_share (facecluster.incremental.IncrementalConfig)."
    ),
):
    """Add new faces to an earlier result: ids given out never change.

    Embeds only the new records (with W's embedder and settings), gives a new photo of a known person that person's id and a new person a new id after the largest one given out, and stores the new records in W so the next `add` sees them. New faces that link two earlier clusters are reported as a suggested merge (stderr, W/collection/state.json); nothing is renumbered. `facecluster write -w W -o ALL.json` writes the whole collection in the order added.

    Exit codes: 0 all new records clustered; 3 output written, some records failed (cluster_id -1 + error); 2 invalid input, or refused (other embedder, method without an incremental form, W without a run); 75 W busy with another add and --no-wait; 1 unexpected error. A killed add leaves W as it was: rerun the same command to finish it.
    """
    from . import incremental

    if output is None and not embed_only:
        _fail("-o/--output is required (or --embed-only)")
    wd = _workdir(work_dir)
    if not wd.root.is_dir():
        _fail(f"--work-dir {wd.root}: no such work dir (run `facecluster run IN.json -o OUT.json --work-dir {wd.root}` first)")
    from pydantic import ValidationError

    try:
        cfg = incremental.IncrementalConfig(**_parse_sets(set_))
    except ValidationError as e:
        _fail("invalid --set for add: " + "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors()))
    dev = _device(device)
    try:
        res = incremental.add(
            wd, input, method=method, embedder_spec=embedder, device=dev, batch_size=batch_size, config=cfg,
            embed_only=embed_only, wait=wait, log=lambda m: typer.echo(m, err=True), progress=sys.stderr.isatty(),
        )
    except incremental.CollectionBusy as e:
        _fail(str(e), incremental.EXIT_BUSY)
    except incremental.CollectionError as e:
        _fail(str(e))
    if res is None:
        typer.echo(f"[add] new records embedded in {wd.root}; run the same command without --embed-only to add them", err=True)
        return
    incremental.write_output(res.records, output)
    s = res.summary
    typer.echo(
        f"facecluster: added {s['records']} records as batch {s['batch']}{' (already added before)' if res.already else ''}: "
        f"{s['joined']} joined earlier people, {s['new_people']} new people, "
        f"{str(s['no_face']) + ' with no face, ' if s.get('no_face') else ''}{s['failed']} failed; "
        f"collection: {s['collection_records']} records, next id {s['next_id']} [method {s['method']}, embedder {s['embedder']}]",
        err=True,
    )
    if res.timings:
        typer.echo("[add] seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in res.timings.items()), err=True)
    if res.suggested_merges:
        pairs = ", ".join(f"{m['ids'][0]}+{m['ids'][1]}" for m in res.suggested_merges[:10])
        more = f" and {len(res.suggested_merges) - 10} more" if len(res.suggested_merges) > 10 else ""
        typer.echo(
            f"facecluster: new faces link earlier clusters {pairs}{more}: suggested merges, not applied "
            f"(ids unchanged; listed in {incremental.Collection(wd).state_path})",
            err=True,
        )
    if report:
        coll = incremental.Collection(wd)
        st = coll.state()
        records, added, label = coll.review(st)
        _write_report(records, report, {"method": st["method"], "settings": st["settings"]}, added=added, added_label=label)
    raise typer.Exit(contract.EXIT_PARTIAL if s["failed"] else contract.EXIT_OK)


# ------------------------------------------------------------------------------- tools
@app.command()
def evaluate(
    output: Path = typer.Argument(..., help="An output JSON written by facecluster."),
    labels: str = typer.Option("folder", "--labels", help="folder (parent folder name of img_path) or field:NAME."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
):
    """Pairwise / BCubed precision, recall, F and NMI against ground-truth labels."""
    from .evaluate import evaluate_records

    try:
        records = json.loads(output.read_text(encoding="utf-8-sig"))
        res = evaluate_records(records, labels)
    except (OSError, json.JSONDecodeError, ValueError, KeyError, TypeError) as e:
        _fail(f"{output}: {e}")
    if as_json:
        typer.echo(json.dumps(res, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{output.name}: {res['n']} faces, {res['n_clusters']} clusters ({res['n_singletons']} singletons), {res['n_gt_clusters']} identities")
    for c in ("metric", "precision", "recall", "F"):
        t.add_column(c)
    for m in ("pairwise", "bcubed"):
        t.add_row(m, f"{res[m + '_precision']:.4f}", f"{res[m + '_recall']:.4f}", f"{res[m + '_fscore']:.4f}")
    t.add_row("NMI", "", "", f"{res['nmi']:.4f}")
    Console().print(t)
    typer.echo(
        f"largest cluster: {res['largest_cluster']} faces of {res['largest_cluster_ids']} people; "
        f"mixed clusters (>= 10 faces, no person >= half): {res['mixed_clusters']} holding {res['mixed_faces']} faces"
    )
    if res["failed"]:
        typer.echo(f"({res['failed']} failed records left out)")


@app.command()
def report(
    output: Path = typer.Argument(..., help="An output JSON written by facecluster."),
    html_out: Path = typer.Option(..., "-o", "--output", help="HTML file to write (thumbnails inline, or in NAME_thumbs/ beside it)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Ground truth (folder | field:NAME): adds metrics and the worst merges/splits."),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", "-w", help="The run's work dir: shows the method's settings and resolves relative paths against the input's folder."
    ),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method whose settings to show (with --work-dir). Default: infomap."),
    base_dir: Optional[Path] = typer.Option(
        None, "--base-dir", help="Folder that relative img_path values are resolved against. Default: the input's folder (with --work-dir), else the output JSON's folder."
    ),
    thumbs: str = typer.Option("auto", "--thumbs", help="auto | inline (one self-contained file) | folder (sprite sheets beside the page). auto: inline up to 8,000 faces."),
    thumb_size: int = typer.Option(64, "--thumb-size", min=16, max=256, help="Thumbnail edge in pixels."),
):
    """Write a static HTML page to review the clusters by eye (no server, no network)."""
    from .workdir import read_json

    if thumbs not in ("auto", "inline", "folder"):
        _fail(f"--thumbs must be auto, inline or folder, got {thumbs!r}")
    if labels is not None:
        _check_label_spec(labels, "--labels")
    try:
        records = json.loads(output.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(f"{output}: {e}")
    if not isinstance(records, list):
        _fail(f"{output}: not a facecluster output (expected a JSON array of records)")
    for i, r in enumerate(records):
        cid = r.get("cluster_id") if isinstance(r, dict) else None
        if not isinstance(r, dict) or not isinstance(r.get("img_path"), str) or not isinstance(cid, int) or isinstance(cid, bool):
            _fail(f"{output}: not a facecluster output (record {i} needs a string img_path and an int cluster_id)")
    summary: dict[str, Any] = {}
    added = added_label = None
    if work_dir is not None:
        from .cluster import DEFAULT_METHOD
        from .incremental import Collection

        wd = _workdir(work_dir)
        method = method or DEFAULT_METHOD
        coll = Collection(wd)
        if coll.exists():
            # a collection grown by `add`: its own settings; faces of the last add marked
            try:
                st = coll.state()
                records, added, added_label = coll.review(st, records)
            except (OSError, ValueError, KeyError) as e:
                _fail(f"--work-dir {work_dir}: {e}")
            summary = {"method": st["method"], "settings": st["settings"]}
        else:
            try:
                summary = {"method": method, "settings": read_json(wd.labels_meta(method)).get("settings", {})}
                base_dir = base_dir or Path(read_json(wd.manifest)["input"]).parent
            except (OSError, ValueError, KeyError) as e:
                _fail(f"--work-dir {work_dir}: {e}")
    elif method:
        summary = {"method": method}
    _write_report(records, html_out, summary, labels=labels, base_dir=base_dir or output.resolve().parent,
                  thumbs=thumbs, thumb_size=thumb_size, strict_labels=True, added=added, added_label=added_label)


@app.command()
def detect(
    inputs: list[Path] = typer.Argument(..., help="Images (frames, photos) or folders of images."),
    out_dir: Path = typer.Option(..., "-o", "--out-dir", help="Where crops/ and input.json are written."),
    margin: float = typer.Option(0.25, "--margin", min=0.0, max=2.0, help="Context kept around each detected box (fraction of box size per side)."),
    upsample: int = typer.Option(1, "--upsample", min=0, max=3, help="Upsample images this many times to find small faces (slower)."),
):
    """Find faces (dlib HOG detector) and write face crops plus an input JSON for `run`."""
    from .detect import detect_faces

    recs = detect_faces(inputs, out_dir, margin=margin, upsample=upsample)
    typer.echo(f"{len(recs)} faces → {out_dir / 'input.json'}", err=True)
    if (out_dir / "detect-errors.json").exists():
        typer.echo(f"some images could not be read: see {out_dir / 'detect-errors.json'}", err=True)
        raise typer.Exit(contract.EXIT_PARTIAL)


@app.command()
def methods():
    """List the clustering methods."""
    from .cluster import DEFAULT_METHOD, METHODS, method_class

    for name in METHODS:
        try:
            summary = method_class(name).summary
        except Exception as e:  # a broken optional method must not hide the others
            summary = f"(unavailable: {e})"
        typer.echo(f"{name:18s} {summary}{'  [default]' if name == DEFAULT_METHOD else ''}")


@app.command()
def embedders():
    """List the embedders (recognition models)."""
    from .embed import DEFAULT_EMBEDDER, EMBEDDERS, embedder_class

    for name in EMBEDDERS:
        try:
            c = embedder_class(name)
            info = f"{c.dim}-D, input {c.input_size[0]}x{c.input_size[1]}" + (", needs a model file" if c.needs_path else "") + (", needs keypoints" if c.needs_keypoints else "")
            doc = (c.__doc__ or "").strip().splitlines()[0] if c.__doc__ else ""
        except Exception as e:
            info, doc = f"(unavailable: {e})", ""
        typer.echo(f"{name:10s} {info}. {doc}{'  [default]' if name == DEFAULT_EMBEDDER else ''}")


@app.command()
def version():
    """Print the version."""
    typer.echo(__version__)


def _register_training() -> None:
    import importlib

    from .train import TRAIN_MODULES

    for mod in TRAIN_MODULES:
        importlib.import_module(f"facecluster.train.{mod}").register(train_app)


def main() -> None:
    """Console entry point: maps errors to the documented exit codes."""
    from .contract import ContractError
    from .embed.base import EmbedderError

    logging.basicConfig(level=os.environ.get("FACECLUSTER_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    # the training commands import torch and the trainers (~1.5 s on an idle core, several on a
    # busy one): only for `facecluster train ...` (or no command), not for every stage process
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not words or words[0] == "train":
        _register_training()
    try:
        # standalone_mode=False makes click *return* the code of typer.Exit instead of raising it
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (ContractError, EmbedderError) as e:
        typer.echo(f"facecluster: error: {e}", err=True)
        sys.exit(contract.EXIT_INVALID)
    except (FileNotFoundError, FileExistsError) as e:
        typer.echo(f"facecluster: error: {e}", err=True)
        sys.exit(contract.EXIT_INVALID)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # usage errors (click's, bundled in typer) and real bugs
        if _is_usage_error(e):
            e.show()
            sys.exit(contract.EXIT_INVALID)
        traceback.print_exc()
        typer.echo(f"facecluster: unexpected error: {e}", err=True)
        sys.exit(contract.EXIT_ERROR)


def _is_usage_error(e: BaseException) -> bool:
    """click's ClickException, whether typer uses the click package or its bundled copy."""
    types: list[type] = []
    for mod in ("click.exceptions", "typer._click.exceptions"):
        try:
            types.append(__import__(mod, fromlist=["ClickException"]).ClickException)
        except (ImportError, AttributeError):
            pass
    return isinstance(e, tuple(types)) if types else False


if __name__ == "__main__":
    main()
