"""The stage images, built and run for real with podman (marked ``podman``; skipped without it).

Builds the CPU variant of the three images on a local debootstrap base (cached; see
scripts/images.sh), runs the demo through them — prepare, recognition as 2 shards, merge,
clustering, each stage its own container with no network over one mounted work dir — and
checks that the output is the single-process ``facecluster run`` output.

Method: FACECLUSTER_E2E_METHOD (default: gcn-ve once its weights ship, else infomap).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import containers  # noqa: E402

# gcn-ve once its weights ship, else infomap; FACECLUSTER_E2E_METHOD overrides.
METHOD = os.environ.get("FACECLUSTER_E2E_METHOD") or containers.default_method()

pytestmark = [
    pytest.mark.podman,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]


@pytest.fixture(scope="session")
def cpu_images() -> dict[str, str]:
    if shutil.which("debootstrap") is None and not os.environ.get("BASE"):
        pytest.skip("debootstrap is not installed (needed for the local base image)")
    return containers.build_cpu_images()


@pytest.fixture(scope="session")
def demo_input():
    """The demo, readable by the images' user (uid 10001): pytest's temp dirs are private."""
    out = Path(tempfile.mkdtemp(prefix="facecluster-demo-"))
    try:
        subprocess.run([sys.executable, "-m", "facecluster.demo", str(out)], check=True, capture_output=True)
        containers.make_world_readable(out)
        yield out / "input.json"
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def reference(demo_input, tmp_path_factory) -> tuple[Path, Path]:
    """The single-process run: (output JSON, work dir)."""
    d = tmp_path_factory.mktemp("ref")
    r = subprocess.run([sys.executable, "-m", "facecluster.cli", "run", str(demo_input), "-o", str(d / "out.json"),
                        "--method", METHOD, "--work-dir", str(d / "wd"), "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return d / "out.json", d / "wd"


def test_images_metadata(cpu_images):
    """Non-root user, stage entrypoint, /work volume, OCI labels; no pip left inside."""
    expected_entry = {
        "recognition": ["facecluster", "embed"],
        "gcn_ve": ["facecluster", "cluster", "--method", "gcn-ve"],
        "adanets": ["facecluster", "cluster", "--method", "adanets"],
    }
    for stage, image in cpu_images.items():
        info = json.loads(containers.podman("image", "inspect", image).stdout)[0]
        cfg = info["Config"]
        assert cfg["User"] == "10001:10001", cfg["User"]
        assert cfg["Entrypoint"] == expected_entry[stage]
        assert "/work" in cfg["Volumes"]
        labels = cfg["Labels"]
        assert labels["org.opencontainers.image.title"] == f"facecluster-{stage.replace('_', '-')}"
        assert labels["org.opencontainers.image.version"]
        r = containers.podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                              "id -u; command -v pip || echo no-pip; facecluster version")
        uid, pip, version = r.stdout.split()[:3]
        assert uid == "10001" and pip == "no-pip", r.stdout
        assert version.endswith(labels["org.opencontainers.image.version"]), r.stdout


def test_demo_through_containers_equals_single_process(cpu_images, demo_input, reference, tmp_path):
    ref_out, ref_wd = reference
    out, times = containers.run_demo_in_containers(cpu_images, demo_input, tmp_path / "wd", method=METHOD, shards=2)
    got, want = json.loads(out.read_text()), json.loads(ref_out.read_text())
    assert len(got) == len(want) > 0
    assert got == want
    # Same embedder, same wheels: the containers' features are the host's.
    np.testing.assert_allclose(np.load(tmp_path / "wd" / "features.npy"), np.load(ref_wd / "features.npy"),
                               rtol=0, atol=1e-5)
    parts = sorted((tmp_path / "wd" / "features").glob("part-*.npz"))
    assert [p.name for p in parts] == ["part-00000-of-00002.npz", "part-00001-of-00002.npz"]
    assert set(times) == {"prepare", "embed[0]", "embed[1]", "merge", "cluster"}
