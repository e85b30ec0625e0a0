"""The bundled example: photos of two people from the face_recognition sdist (PyPI)."""

import json

from conftest import run_cli
from facecluster import demo


def test_demo_two_people_two_clusters(tmp_path):
    assert demo.main([str(tmp_path / "ex")]) == 0
    inp = tmp_path / "ex" / "input.json"
    recs = json.loads(inp.read_text())
    assert len(recs) >= 6 and {r["person"] for r in recs} == {"obama", "biden"}
    out = tmp_path / "out.json"
    assert run_cli("run", inp, "-o", out, "-w", tmp_path / "wd", "--device", "cpu") == 0
    res = json.loads(out.read_text())
    ids = {p: {r["cluster_id"] for r in res if r["person"] == p} for p in ("obama", "biden")}
    assert len(ids["obama"]) == 1 and len(ids["biden"]) == 1 and ids["obama"] != ids["biden"]
