"""Helpers for running the stage images with podman (used by tests and `make images-test`).

``build_cpu_images()`` builds (or finds in podman's layer cache) the CPU variant of the three
images on the local debootstrap base; ``run_demo_in_containers()`` runs the pipeline as
separate containers over one mounted work dir: prepare, embed as N shards, merge, cluster —
what a cluster does, minus the scheduler.

Usage (the `make images-test` driver)::

    python scripts/containers.py INPUT.json OUTPUT.json --work DIR [--method M] [--shards N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STAGES = ("recognition", "gcn_ve", "adanets")


def log(msg: str) -> None:
    print(f"[containers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("CONTAINERS_CONF") and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(HERE / "containers.conf")
    return env


def podman(*args: str, check: bool = True, timeout: float | None = 3600) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


#: weight files each network method needs inside the package (shared/facecluster/weights)
SHIPPED_WEIGHTS = {
    "gcn-ve": ("gcn_v_dlib.pth", "gcn_e_dlib.pth"),
    "adanets": ("adanets_and_dlib.pth", "adanets_gcn_dlib.pth"),
}


def missing_weights() -> list[str]:
    """Methods whose trained weights are not (yet) in the package."""
    wdir = ROOT / "shared" / "facecluster" / "weights"
    return [m for m, files in SHIPPED_WEIGHTS.items() if not all((wdir / f).is_file() for f in files)]


def default_method() -> str:
    """gcn-ve once its weights ship, else the training-free infomap."""
    return "infomap" if "gcn-ve" in missing_weights() else "gcn-ve"


def build_cpu_images(stages: tuple[str, ...] = STAGES, timeout: float = 1800) -> dict[str, str]:
    """Build the CPU images with scripts/images.sh; returns {stage: image name}."""
    t0 = time.perf_counter()
    env = dict(podman_env(), ENGINE="podman")
    missing = missing_weights()
    if missing and "ALLOW_MISSING_WEIGHTS" not in env:
        # Strict as soon as the weights ship; until then the images' own check says so loudly.
        log(f"weights not in the package yet for {missing}: building with ALLOW_MISSING_WEIGHTS=1")
        env["ALLOW_MISSING_WEIGHTS"] = "1"
    r = subprocess.run([str(HERE / "images.sh"), "build", "--cpu", *stages], capture_output=True,
                       text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        hint = ""
        if "no space left on device" in r.stderr:
            # podman's own message is a 10 kB copier dump; say what to do first
            store = podman("info", "--format", "{{.Store.GraphRoot}}", check=False).stdout.strip()
            free = shutil.disk_usage(store or "/").free / 2**30
            hint = (f"\nno space left on device: {free:.1f} GiB free under {store or '/'}; a cold "
                    "build of the CPU images stores ~2.5 GB, plus pip's temporary files. Free "
                    "space (e.g. `podman image prune`) and rerun.\n")
        raise RuntimeError(f"images.sh build --cpu failed ({r.returncode}):{hint}\n{r.stderr[-6000:]}")
    names = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    assert len(names) == len(stages), r.stdout
    log(f"images ready in {time.perf_counter() - t0:.0f}s: {', '.join(names)}")
    return dict(zip(stages, names))


def clustering_image(images: dict[str, str], method: str) -> str:
    """The image that runs ``method``: adanets → the Ada-NETS image, anything else → GCN-V+E's."""
    return images["adanets"] if method == "adanets" else images["gcn_ve"]


def make_world_readable(path: Path) -> None:
    """chmod a+rX below ``path`` (and ``path``): the images run as uid 10001."""
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))


def open_work_dir(path: Path) -> None:
    """Make a host folder writable for the images' user (uid 10001), rootful or rootless."""
    path.mkdir(parents=True, exist_ok=True)
    for d in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        d.chmod(0o777)


def run_stage(image: str, work: Path, data_dirs: list[Path], args: list[str], *,
              entrypoint: str | None = None, env: dict[str, str] | None = None,
              timeout: float = 1800) -> subprocess.CompletedProcess:
    """One stage = one container: no network, read-only root, /work = ``work``, the
    input's folders mounted read-only at their own paths (so img_path stays valid)."""
    cmd = ["run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
           "-v", f"{work}:/work"]
    for d in data_dirs:
        cmd += ["-v", f"{d}:{d}:ro"]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return podman(*cmd, image, *args, timeout=timeout)


def input_dirs(input_json: Path) -> list[Path]:
    """Folders to mount so that every img_path of the input resolves inside the container."""
    base = input_json.resolve().parent
    dirs = {base}
    for rec in json.loads(input_json.read_text()):
        p = Path(rec["img_path"])
        p = p if p.is_absolute() else base / p
        dirs.add(p.resolve().parent)
    # Mount only top-most folders (nested mounts are redundant).
    out = []
    for d in sorted(dirs, key=lambda x: len(x.parts)):
        if not any(d.is_relative_to(o) for o in out):
            out.append(d)
    return out


def run_demo_in_containers(images: dict[str, str], input_json: Path, work: Path, *,
                           method: str = "gcn-ve", shards: int = 2) -> tuple[Path, dict[str, float]]:
    """prepare → embed × ``shards`` → merge → cluster, each in its own container.

    Returns (path of the output JSON in ``work``, seconds per stage).
    """
    input_json = input_json.resolve()
    open_work_dir(work)
    dirs = input_dirs(input_json)
    rec, clu = images["recognition"], clustering_image(images, method)
    times: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        r = fn()
        times[name] = time.perf_counter() - t0
        log(f"{name}: {times[name]:.1f}s")
        return r

    timed("prepare", lambda: run_stage(rec, work, dirs, ["prepare", str(input_json)], entrypoint="facecluster"))
    for i in range(shards):
        # The entrypoint is `facecluster embed`; the shard comes from the same variables
        # a Kubernetes Indexed Job sets.
        timed(f"embed[{i}]", lambda i=i: run_stage(
            rec, work, dirs, ["--device", "cpu"],
            env={"JOB_COMPLETION_INDEX": str(i), "FACECLUSTER_SHARDS": str(shards)}))
    timed("merge", lambda: run_stage(rec, work, dirs, ["merge", "--shards", str(shards)], entrypoint="facecluster"))
    out = "/work/output.json"
    if method in ("gcn-ve", "adanets"):
        # The image's own entrypoint: `facecluster cluster --method <its method>`.
        timed("cluster", lambda: run_stage(clu, work, dirs, ["--device", "cpu", "-o", out]))
    else:
        timed("cluster", lambda: run_stage(clu, work, dirs, ["cluster", "--method", method, "--device", "cpu", "-o", out],
                                           entrypoint="facecluster"))
    return work / "output.json", times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="run the pipeline as separate podman containers")
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--method", default=None, help="default: gcn-ve once its weights ship, else infomap")
    ap.add_argument("--shards", type=int, default=2)
    a = ap.parse_args(argv)
    images = build_cpu_images()
    out, times = run_demo_in_containers(images, a.input, a.work, method=a.method or default_method(),
                                        shards=a.shards)
    shutil.copyfile(out, a.output)
    log(f"wrote {a.output}; stage seconds: {json.dumps({k: round(v, 1) for k, v in times.items()})}")


if __name__ == "__main__":
    main()
