"""Run the Kubernetes Jobs of k8s/ for real, without a cluster, as podman pods.

`podman kube play` runs Pods but ignores Jobs, so this does what the Job controller and the
kubelet would do for each Job of the rendered kustomization, in pipeline order:

* the Job's ``spec.template`` becomes a Pod (one per completion index for the Indexed
  embed Job, with ``JOB_COMPLETION_INDEX`` set as Kubernetes sets it; all indexes run at once);
* the container environment is resolved like the kubelet does it (``envFrom`` and
  ``configMapKeyRef`` from the rendered ConfigMaps, ``resourceFieldRef`` from the container's
  resources) and ``$(VAR)`` references in ``command``/``args`` are expanded;
* the work volume's ``persistentVolumeClaim`` becomes a ``hostPath`` on a host folder;
* CPU limits above the host's core count are lowered to it (podman refuses them otherwise).

Everything else (images, commands, args, mounts, security context, resource requests) is
played as rendered, so the manifests themselves are what is tested.

Usage::

    python scripts/k8s_pods.py INPUT.json OUTPUT.json --work HOST_DIR \
        [--kustomize k8s] [--image recognition=IMG --image cluster=IMG] [--set KEY=VALUE ...]

``--set`` overrides literals of the facecluster-config ConfigMap (FACECLUSTER_SHARDS,
FACECLUSTER_METHOD, ...) through a generated overlay, the way a user would customise k8s/.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STAGES = ("prepare", "embed", "merge", "cluster")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def log(msg: str) -> None:
    print(f"[k8s-pods {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- rendering
def write_overlay(dest: Path, base: Path, images: dict[str, str] | None = None,
                  literals: dict[str, str] | None = None, components: list[str] = ()) -> Path:
    """A kustomize overlay on ``base`` that swaps images and config literals and adds
    components of ``base/components`` (e.g. "cpu"); returns its dir."""
    dest.mkdir(parents=True, exist_ok=True)
    kust: dict = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base.resolve(), dest.resolve())],
    }
    if components:
        kust["components"] = [os.path.relpath((base / "components" / c).resolve(), dest.resolve())
                               for c in components]
    base_kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    if images:
        # The base has already renamed its images: match what it renamed them to.
        renamed = {i["name"]: i.get("newName", i["name"]) for i in base_kust.get("images", [])}
        kust["images"] = []
        for logical, full in images.items():
            name, _, tag = full.rpartition(":") if ":" in full.rsplit("/", 1)[-1] else (full, "", "")
            entry = {"name": renamed.get(f"facecluster-{logical}", f"facecluster-{logical}"), "newName": name}
            if tag:
                entry["newTag"] = tag
            kust["images"].append(entry)
    if literals:
        kust["configMapGenerator"] = [{
            "name": "facecluster-config", "behavior": "merge",
            "literals": [f"{k}={v}" for k, v in literals.items()],
        }]
        # A kustomization's replacements run on its own output only: repeat the base's so
        # that the changed literals reach the Jobs (as docs/deploy.md tells overlay authors).
        kust["replacements"] = base_kust.get("replacements", [])
    (dest / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    return dest


def render(kustomize_dir: Path) -> list[dict]:
    """``kubectl kustomize DIR`` → the list of objects."""
    out = subprocess.run(["kubectl", "kustomize", str(kustomize_dir)], check=True,
                         capture_output=True, text=True).stdout
    return [o for o in yaml.safe_load_all(out) if o]


# ------------------------------------------------------------------ Job → Pod conversion
def _quantity_cpu(q: str | int | float) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _resource_field(container: dict, ref: dict) -> str:
    """Value of a resourceFieldRef, as the kubelet computes it (rounded up to the divisor)."""
    section, _, res = ref["resource"].partition(".")
    value = container.get("resources", {}).get(section, {}).get(res)
    if value is None:  # the kubelet falls back to the node's allocatable capacity
        value = os.cpu_count() if res == "cpu" else None
    if res == "cpu":
        divisor = _quantity_cpu(ref.get("divisor", "1"))
        return str(max(1, math.ceil(_quantity_cpu(value) / divisor)))
    return str(value)


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes."""
    parts = s.split("$$")
    return "$".join(_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), p) for p in parts)


def job_to_pod(job: dict, configmaps: dict[str, dict], host_dir: Path,
               index: int | None = None, max_cpus: int | None = None) -> dict:
    """The Pod the Job controller + kubelet would run for ``job`` (completion ``index``)."""
    tpl = copy.deepcopy(job["spec"]["template"])
    jname = job["metadata"]["name"]
    name = jname if index is None else f"{jname}-{index}"
    meta = tpl.get("metadata", {})
    labels = dict(meta.get("labels", {}), **{"job-name": jname})
    annotations = dict(meta.get("annotations", {}))
    if index is not None:
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
    spec = tpl["spec"]
    spec["restartPolicy"] = "Never"
    for vol in spec.get("volumes", []):
        if "persistentVolumeClaim" in vol:
            del vol["persistentVolumeClaim"]
            vol["hostPath"] = {"path": str(host_dir), "type": "Directory"}
    max_cpus = max_cpus or os.cpu_count() or 1
    for c in spec["containers"]:
        for section in ("requests", "limits"):
            cpu = c.get("resources", {}).get(section, {}).get("cpu")
            if cpu is not None and _quantity_cpu(cpu) > max_cpus:
                c["resources"][section]["cpu"] = str(max_cpus)
        env: dict[str, str] = {}
        for src in c.pop("envFrom", []):
            ref = src.get("configMapRef")
            if ref:
                env.update({src.get("prefix", "") + k: str(v)
                            for k, v in configmaps[ref["name"]].items()})
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "configMapKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"]["configMapKeyRef"]
                env[e["name"]] = str(configmaps[ref["name"]][ref["key"]])
            elif "resourceFieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = _resource_field(c, e["valueFrom"]["resourceFieldRef"])
            elif "fieldRef" in e.get("valueFrom", {}):
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path)
                env[e["name"]] = annotations.get(m.group(1), "") if m else name
            else:
                raise ValueError(f"{jname}: env {e['name']}: unsupported source {e}")
        c["env"] = [{"name": k, "value": v} for k, v in env.items()]
        for key in ("command", "args"):
            if key in c:
                c[key] = [expand(str(a), env) for a in c[key]]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": spec}


def pods_for(objs: list[dict], host_dir: Path, stage: str) -> list[dict]:
    """Pods of the Job ``facecluster-<stage>`` (one per index for an Indexed Job)."""
    cms = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    # ConfigMap names carry kustomize's hash suffix; the rendered references already match.
    job = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"] == f"facecluster-{stage}")
    if job["spec"].get("completionMode") == "Indexed":
        return [job_to_pod(job, cms, host_dir, i) for i in range(int(job["spec"]["completions"]))]
    return [job_to_pod(job, cms, host_dir)]


# --------------------------------------------------------------------------- playing
def _podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not env.get("CONTAINERS_CONF") and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(HERE / "containers.conf")
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True,
                          env=env, timeout=timeout)


def start(pod: dict, tmp: Path) -> str:
    """``podman kube play`` the pod (replacing a leftover of the same name); returns its name."""
    f = tmp / f"{pod['metadata']['name']}.yaml"
    f.write_text(yaml.safe_dump(pod, sort_keys=False))
    _podman("pod", "rm", "-f", "--ignore", pod["metadata"]["name"], check=False)
    _podman("kube", "play", str(f))
    return pod["metadata"]["name"]


def finish(pod: dict, timeout: float = 1800) -> tuple[int, str]:
    """Wait for the pod's (single) container; returns (exit code, logs) and removes the pod."""
    name = pod["metadata"]["name"]
    ctr = f"{name}-{pod['spec']['containers'][0]['name']}"
    rc = int(_podman("wait", ctr, timeout=timeout).stdout.strip().splitlines()[-1])
    logs = _podman("logs", ctr, check=False)
    _podman("pod", "rm", "-f", name, check=False)
    return rc, logs.stdout + logs.stderr


def run_stage(objs: list[dict], host_dir: Path, stage: str, tmp: Path) -> list[tuple[int, str]]:
    """Play every pod of a stage at once (like the Job controller) and wait for all of them."""
    pods = pods_for(objs, host_dir, stage)
    t0 = time.perf_counter()
    for p in pods:
        start(p, tmp)
    results = [finish(p) for p in pods]
    log(f"{stage}: {len(pods)} pod(s), exit {[r for r, _ in results]}, {time.perf_counter() - t0:.1f}s")
    return results


def run_pipeline(objs: list[dict], host_dir: Path, stages=STAGES) -> dict[str, list[tuple[int, str]]]:
    """Play the stages in order; stops at the first failing pod (RuntimeError with its logs)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            res = run_stage(objs, host_dir, stage, Path(tmp))
            out[stage] = res
            bad = [(i, rc, lg) for i, (rc, lg) in enumerate(res) if rc != 0]
            if bad:
                i, rc, lg = bad[0]
                raise RuntimeError(f"{stage} pod {i} exited {rc}:\n{lg[-4000:]}")
    return out


def prepare_host_dir(host_dir: Path, input_json: Path) -> None:
    """Lay out the volume like scripts/k8s-run.sh does: input/ (packed input), wd/."""
    sys.path.insert(0, str(HERE))
    import k8s_io

    (host_dir / "input").mkdir(parents=True, exist_ok=True)
    (host_dir / "wd").mkdir(exist_ok=True)
    # Copies, not links: their permissions are changed below.
    k8s_io.pack(input_json, host_dir / "input", link=False)
    # The images run as uid 10001; Kubernetes makes the volume writable with fsGroup,
    # which podman does not apply: open the folders instead (works rootless too).
    for p in [host_dir, *host_dir.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o644)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="host folder standing in for the volume")
    ap.add_argument("--kustomize", type=Path, default=ROOT / "k8s")
    ap.add_argument("--image", action="append", default=[], help="recognition=IMG or cluster=IMG")
    ap.add_argument("--set", action="append", default=[], help="config literal KEY=VALUE")
    a = ap.parse_args(argv)
    images = dict(s.split("=", 1) for s in a.image)
    literals = dict(s.split("=", 1) for s in a.set)
    a.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        overlay = write_overlay(Path(tmp) / "overlay", a.kustomize, images, literals)
        objs = render(overlay)
    prepare_host_dir(a.work.resolve(), a.input)
    run_pipeline(objs, a.work.resolve())
    sys.path.insert(0, str(HERE))
    import k8s_io

    k8s_io.unpack(a.work / "output.json", a.input, a.output)
    log(f"wrote {a.output}")


if __name__ == "__main__":
    main()
