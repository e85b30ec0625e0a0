"""Kubernetes manifests (k8s/): offline schema validation, structure, and the Jobs' pods run
for real with ``podman kube play`` (no cluster needed; see scripts/k8s_pods.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
sys.path.insert(0, str(REPO / "scripts"))

import containers  # noqa: E402
import k8s_io  # noqa: E402
import k8s_pods  # noqa: E402

# gcn-ve once its weights ship, else infomap; FACECLUSTER_E2E_METHOD overrides.
METHOD = os.environ.get("FACECLUSTER_E2E_METHOD") or containers.default_method()
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def _by(objs, kind, name=None):
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    return k8s_pods.render(K8S)


@needs_kubectl
def test_manifests_validate_strict(rendered):
    kv = pytest.importorskip("kubernetes_validate")
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == ["ConfigMap"] + ["Job"] * 6 + ["Namespace", "PersistentVolumeClaim", "Pod"]
    for obj in rendered:
        kv.validate(obj, "1.33.0", strict=True)  # raises on unknown fields / wrong types
    # ... and --strict really rejects what it should:
    bad = json.loads(json.dumps(_by(rendered, "Job", "facecluster-embed")[0]))
    bad["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.33.0", strict=True)


@needs_kubectl
def test_every_object_is_applied_by_the_driver(rendered, tmp_path):
    """scripts/k8s-run.sh applies by component label: each object must carry one it uses."""
    driver = (REPO / "scripts" / "k8s-run.sh").read_text()
    used = {"config", "storage", "io", "prepare", "embed", "merge", "cluster", "add-embed", "add"}
    assert "for c in config storage io" in driver and "for comp in prepare embed merge cluster" in driver
    assert "for comp in add-embed add" in driver
    overlay = k8s_pods.write_overlay(tmp_path / "o", K8S, literals={"FACECLUSTER_SHARDS": "3"}, components=["cpu"])
    for objs in (rendered, k8s_pods.render(overlay)):
        for o in objs:
            assert o["metadata"].get("labels", {}).get("app.kubernetes.io/component") in used, o["metadata"]


@needs_kubectl
def test_jobs_structure(rendered):
    cm = _by(rendered, "ConfigMap")[0]["data"]
    shards = int(cm["FACECLUSTER_SHARDS"])
    embed = _by(rendered, "Job", "facecluster-embed")[0]["spec"]
    assert embed["completionMode"] == "Indexed"
    assert embed["completions"] == embed["parallelism"] == shards
    for job in _by(rendered, "Job"):
        spec, name = job["spec"], job["metadata"]["name"]
        for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            assert isinstance(spec[key], int), (name, key)
        pod = spec["template"]["spec"]
        c = pod["containers"][0]
        assert c["resources"]["requests"] and c["resources"]["limits"], name
        assert any(v["name"] == "work" and v["persistentVolumeClaim"]["claimName"] == "facecluster-work"
                   for v in pod["volumes"]), name
        gpu = name in ("facecluster-embed", "facecluster-cluster", "facecluster-add-embed")
        assert (c["resources"]["limits"].get("nvidia.com/gpu") == "1") == gpu, name
        assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", [])) == gpu, name
    pvc = _by(rendered, "PersistentVolumeClaim")[0]
    assert pvc["spec"]["resources"]["requests"]["storage"] == cm["WORK_VOLUME_SIZE"]


@needs_kubectl
def test_add_jobs(rendered, tmp_path):
    """`facecluster add` on Kubernetes: embed-only in the recognition image, then the ids in the
    clustering image, both on the run's work dir (same claim, same /work/wd)."""
    emb = _by(rendered, "Job", "facecluster-add-embed")[0]["spec"]["template"]["spec"]
    add = _by(rendered, "Job", "facecluster-add")[0]["spec"]["template"]["spec"]
    run_images = {j["metadata"]["name"]: j["spec"]["template"]["spec"]["containers"][0]["image"] for j in _by(rendered, "Job")}
    assert emb["containers"][0]["image"] == run_images["facecluster-embed"]
    assert add["containers"][0]["image"] == run_images["facecluster-cluster"]
    ea, aa = emb["containers"][0]["args"], add["containers"][0]["args"]
    assert emb["containers"][0]["command"] == ["facecluster", "add"] and "--embed-only" in ea
    assert "facecluster add" in add["containers"][0]["command"][-2]
    for args in (ea, aa):
        assert args[0] == "/work/add/input.json" and "--work-dir=/work/wd" in args
    assert "--output=/work/add/output.json" in aa
    for pod in (emb, add):
        assert [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]] == ["/work", "/tmp"]
    # the pods resolve like the others (podman plays them the same way)
    pods = k8s_pods.pods_for(rendered, tmp_path, "add-embed")
    env = {e["name"]: e["value"] for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["FACECLUSTER_METHOD"] == "infomap"
    assert "--embedder=dlib" in pods[0]["spec"]["containers"][0]["args"]


@needs_kubectl
def test_shard_count_set_in_one_place(tmp_path):
    """An overlay changing only FACECLUSTER_SHARDS reaches completions, parallelism and env."""
    objs = k8s_pods.render(k8s_pods.write_overlay(tmp_path / "o", K8S, {"recognition": "r.example/rec:1"},
                                                  {"FACECLUSTER_SHARDS": "5"}))
    embed = _by(objs, "Job", "facecluster-embed")[0]
    assert embed["spec"]["completions"] == embed["spec"]["parallelism"] == 5
    pods = k8s_pods.pods_for(objs, tmp_path, "embed")
    assert len(pods) == 5
    env = {e["name"]: e["value"] for e in pods[3]["spec"]["containers"][0]["env"]}
    assert env["JOB_COMPLETION_INDEX"] == "3" and env["FACECLUSTER_SHARDS"] == "5"
    assert pods[3]["spec"]["containers"][0]["image"] == "r.example/rec:1"
    merge = k8s_pods.pods_for(objs, tmp_path, "merge")[0]["spec"]["containers"][0]
    assert "--shards=5" in merge["args"]


@needs_kubectl
def test_cpu_component(tmp_path):
    """k8s/components/cpu: no GPU requests or tolerations left, device cpu, still valid."""
    kv = pytest.importorskip("kubernetes_validate")
    objs = k8s_pods.render(k8s_pods.write_overlay(tmp_path / "o", K8S, components=["cpu"]))
    assert "nvidia.com/gpu" not in json.dumps(objs)
    assert _by(objs, "ConfigMap")[0]["data"]["FACECLUSTER_DEVICE"] == "cpu"
    for obj in objs:
        kv.validate(obj, "1.33.0", strict=True)


def test_job_to_pod_conversion(tmp_path):
    """Kubelet-like resolution: envFrom, configMapKeyRef, resourceFieldRef, $(VAR), $$ escapes."""
    job = {
        "metadata": {"name": "j"},
        "spec": {"completionMode": "Indexed", "completions": 2, "template": {"spec": {
            "containers": [{
                "name": "c", "image": "i", "command": ["x", "$(A)", "$$(A)", "$(MISSING)"],
                "args": ["--n=$(B)", "--i=$(JOB_COMPLETION_INDEX)"],
                "envFrom": [{"configMapRef": {"name": "cm"}}],
                "env": [{"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "A"}}},
                        {"name": "T", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}}],
                "resources": {"limits": {"cpu": "1500m"}},
            }],
            "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "pvc"}}],
        }}},
    }
    pod = k8s_pods.job_to_pod(job, {"cm": {"A": "7"}}, tmp_path, index=1)
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["x", "7", "$(A)", "$(MISSING)"]
    assert c["args"] == ["--n=7", "--i=1"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"A": "7", "JOB_COMPLETION_INDEX": "1", "B": "7", "T": "2"}
    assert pod["spec"]["volumes"][0] == {"name": "w", "hostPath": {"path": str(tmp_path), "type": "Directory"}}
    assert pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_k8s_io_pack_unpack_roundtrip(tmp_path):
    (tmp_path / "imgs").mkdir()
    for n in ("a.JPG", "b.png"):
        (tmp_path / "imgs" / n).write_bytes(b"x")
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps([{"img_path": "imgs/a.JPG", "k": 1}, {"img_path": str(tmp_path / "imgs/b.png")},
                               {"img_path": "missing.jpg"}]))
    assert k8s_io.pack(inp, tmp_path / "stage") == 2
    staged = json.loads((tmp_path / "stage" / "input.json").read_text())
    assert staged[0] == {"img_path": "/work/input/images/0000000.jpg", "k": 1}
    assert (tmp_path / "stage" / "images" / "0000001.png").read_bytes() == b"x"
    res = [dict(r, cluster_id=i) for i, r in enumerate(staged)]
    res[2].update(cluster_id=-1, error="cannot read")
    (tmp_path / "res.json").write_text(json.dumps(res))
    k8s_io.unpack(tmp_path / "res.json", inp, tmp_path / "out.json")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == [{"img_path": "imgs/a.JPG", "k": 1, "cluster_id": 0},
                   {"img_path": str(tmp_path / "imgs/b.png"), "cluster_id": 1},
                   {"img_path": "missing.jpg", "cluster_id": -1, "error": "cannot read"}]


# ----------------------------------------------------------------- podman kube play
@pytest.mark.podman
@pytest.mark.slow
@needs_kubectl
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_jobs_pods_play_and_resume(tmp_path):
    """Render k8s/ with the local CPU images, play every Job's pods in order, compare with the
    single-process run; then kill a shard and check that a rerun redoes only that shard."""
    if shutil.which("debootstrap") is None and not os.environ.get("BASE"):
        pytest.skip("debootstrap is not installed (needed for the local base image)")
    images = containers.build_cpu_images()
    demo = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "facecluster.demo", str(demo)], check=True, capture_output=True)
    inp = demo / "input.json"
    ref = tmp_path / "ref.json"
    r = subprocess.run([sys.executable, "-m", "facecluster.cli", "run", str(inp), "-o", str(ref),
                        "--method", METHOD, "--work-dir", str(tmp_path / "ref-wd"), "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    overlay = k8s_pods.write_overlay(
        tmp_path / "overlay", K8S,
        {"recognition": images["recognition"], "cluster": containers.clustering_image(images, METHOD)},
        {"FACECLUSTER_SHARDS": "2", "FACECLUSTER_METHOD": METHOD, "FACECLUSTER_DEVICE": "cpu"})
    objs = k8s_pods.render(overlay)
    vol = tmp_path / "volume"
    k8s_pods.prepare_host_dir(vol, inp)
    results = k8s_pods.run_pipeline(objs, vol)
    assert [len(results[s]) for s in k8s_pods.STAGES] == [1, 2, 1, 1]
    k8s_io.unpack(vol / "output.json", inp, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(ref.read_text())

    # A failed shard: delete shard 1's part (as if its pod had died before writing it), run
    # shard 1 and kill it mid-way, then rerun the whole embed Job: shard 0 is skipped.
    parts = sorted((vol / "wd" / "features").glob("part-*.npz"))
    assert len(parts) == 2
    stat0 = parts[0].stat()
    parts[1].unlink()
    with __import__("tempfile").TemporaryDirectory() as tmp:
        pod1 = k8s_pods.pods_for(objs, vol, "embed")[1]
        k8s_pods.start(pod1, Path(tmp))
        containers.podman("kill", f"{pod1['metadata']['name']}-embed", check=False)
        rc, _ = k8s_pods.finish(pod1)
        assert rc != 0 and not parts[1].exists()
        again = k8s_pods.run_stage(objs, vol, "embed", Path(tmp))
    assert [rc for rc, _ in again] == [0, 0], again
    assert parts[1].exists()
    st = parts[0].stat()
    assert (st.st_mtime_ns, st.st_ino) == (stat0.st_mtime_ns, stat0.st_ino), "finished shard 0 was redone"
    k8s_pods.run_pipeline(objs, vol, stages=("merge", "cluster"))
    k8s_io.unpack(vol / "output.json", inp, tmp_path / "out2.json")
    assert json.loads((tmp_path / "out2.json").read_text()) == json.loads(ref.read_text())


# ------------------------------------------------------- the driver, against a stub kubectl
_STUB = r'''#!/usr/bin/env bash
# Stand-in for kubectl: logs each call; `kustomize` is real; `exec` runs the command here with
# /work mapped to $VOL; applying the cluster Job "runs" it by writing an output for the input.
echo "$*" >> "$LOG"
args=("$@")
[ "${args[0]}" = -n ] && args=("${args[@]:2}")
case "${args[0]}" in
  kustomize) exec "$REAL_KUBECTL" "${args[@]}" ;;
  apply)
    all="${args[*]}"; comp="${all##*component=}"
    if [ "$comp" = cluster ]; then
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); json.dump([dict(x, cluster_id=i % 2) for i, x in enumerate(r)], open(sys.argv[2], 'w'))" \
        "$VOL/input/input.json" "$VOL/output.json"
    fi ;;
  get)
    job="${args[1]#job/}"
    [ "$job" = "${FAIL_JOB:-none}" ] || echo True ;;
  exec)
    i=1; [ "${args[1]}" = -i ] && i=2
    cmd=("${args[@]:$((i + 2))}")
    cmd=("${cmd[@]//\/work/$VOL}")
    exec "${cmd[@]}" ;;
  wait)
    [[ "${args[*]}" == *condition=failed* ]] && [ "${args[2]#job/}" != "${FAIL_JOB:-none}" ] && sleep 2
    exit 0 ;;
  *) exit 0 ;;
esac
'''


def _run_driver(tmp_path, fail_job=None):
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text(_STUB)
    stub.chmod(0o755)
    (tmp_path / "imgs").mkdir()
    for n in ("a.jpg", "b.png", "c.jpg"):
        (tmp_path / "imgs" / n).write_bytes(n.encode())
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps([{"img_path": f"imgs/{n}", "i": i} for i, n in enumerate(("a.jpg", "b.png", "c.jpg"))]))
    vol = tmp_path / "vol"
    vol.mkdir()
    env = dict(os.environ, KUBECTL=str(stub), REAL_KUBECTL=shutil.which("kubectl"), VOL=str(vol),
               LOG=str(tmp_path / "calls.log"), FAIL_JOB=fail_job or "none", TIMEOUT="30s")
    r = subprocess.run([str(REPO / "scripts" / "k8s-run.sh"), str(inp), str(tmp_path / "out.json")],
                       capture_output=True, text=True, env=env, timeout=120)
    calls = (tmp_path / "calls.log").read_text().splitlines()
    return r, calls, inp, vol


@needs_kubectl
def test_k8s_run_driver_order_and_io(tmp_path):
    r, calls, inp, vol = _run_driver(tmp_path)
    assert r.returncode == 0, r.stderr[-2500:]
    applied = [c.split("component=")[1] for c in calls if c.startswith("apply")]
    assert applied == ["config", "storage", "io", "prepare", "embed", "merge", "cluster"]
    # Jobs are immutable: each is deleted before it is applied again.
    for job in ("prepare", "embed", "merge", "cluster"):
        i_del = next(i for i, c in enumerate(calls) if c.startswith(f"-n facecluster delete job facecluster-{job}"))
        i_app = next(i for i, c in enumerate(calls) if c.endswith(f"component={job}"))
        assert i_del < i_app
    assert sorted(p.name for p in (vol / "input" / "images").iterdir()) == ["0000000.jpg", "0000001.png", "0000002.jpg"]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == [{"img_path": r_["img_path"], "i": r_["i"], "cluster_id": r_["i"] % 2}
                   for r_ in json.loads(inp.read_text())]
    # the staging dir sat beside the output (not in /tmp) and is gone
    assert not list(tmp_path.glob(".facecluster-k8s.*"))


@needs_kubectl
def test_k8s_run_driver_stops_on_failed_job(tmp_path):
    r, calls, _, _ = _run_driver(tmp_path, fail_job="facecluster-embed")
    assert r.returncode == 1
    assert "job/facecluster-embed did NOT complete" in r.stderr
    assert "run the same command again" in r.stderr
    assert not any(c.endswith("component=merge") for c in calls)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.podman
@pytest.mark.slow
@needs_kubectl
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_add_jobs_pods_play(tmp_path):
    """The add Jobs played as pods (podman) on a volume that holds an earlier run: the new
    records' ids equal a single-process `facecluster run` + `facecluster add`."""
    if shutil.which("debootstrap") is None and not os.environ.get("BASE"):
        pytest.skip("debootstrap is not installed (needed for the local base image)")
    images = containers.build_cpu_images()
    demo = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "facecluster.demo", str(demo)], check=True, capture_output=True)
    recs = json.loads((demo / "input.json").read_text())
    for r in recs:  # absolute paths: the two halves are written beside the demo's input
        r["img_path"] = str((demo / r["img_path"]).resolve())
    first, new = tmp_path / "first.json", tmp_path / "new.json"
    first.write_text(json.dumps(recs[:4]))
    new.write_text(json.dumps(recs[4:] + [{"img_path": str(tmp_path / "missing.jpg"), "note": "gone"}]))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "facecluster.cli", *map(str, args)], capture_output=True, text=True)

    ref_wd = tmp_path / "ref-wd"
    r = cli("run", first, "-o", tmp_path / "ref1.json", "--method", "infomap", "--work-dir", ref_wd, "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("add", new, "--work-dir", ref_wd, "-o", tmp_path / "ref-new.json")
    assert r.returncode == 3, r.stdout + r.stderr  # the missing image: -1 + error, exit 3

    overlay = k8s_pods.write_overlay(
        tmp_path / "overlay", K8S,
        {"recognition": images["recognition"], "cluster": containers.clustering_image(images, "infomap")},
        {"FACECLUSTER_SHARDS": "1", "FACECLUSTER_METHOD": "infomap", "FACECLUSTER_DEVICE": "cpu"})
    objs = k8s_pods.render(overlay)
    vol = tmp_path / "volume"
    k8s_pods.prepare_host_dir(vol, first)
    k8s_pods.run_pipeline(objs, vol)
    # the new records go to /work/add, as scripts/k8s-run.sh --add lays them out
    k8s_io.pack(new, vol / "add", volume_dir="/work/add", link=False)
    for p in [vol, *vol.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o644)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        res = {s: k8s_pods.run_stage(objs, vol, s, Path(tmp)) for s in ("add-embed", "add")}
    assert [rc for rc, _ in res["add-embed"]] == [0], res["add-embed"]
    # exit 3 (some records failed) is reported and mapped to success, as in the cluster Job:
    # retrying the pod cannot mend an unreadable image
    assert [rc for rc, _ in res["add"]] == [0], res["add"]
    assert "some records failed" in res["add"][0][1]
    k8s_io.unpack(vol / "add" / "output.json", new, tmp_path / "new-out.json")
    got = json.loads((tmp_path / "new-out.json").read_text())
    assert got == json.loads((tmp_path / "ref-new.json").read_text())
    assert got[-1]["cluster_id"] == -1 and got[-1]["note"] == "gone" and "error" in got[-1]
