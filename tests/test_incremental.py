"""`facecluster add` (growing collections, stable ids): real faces end to end, refusals, crash
safety, the lock with real processes, and the assignment on synthetic features."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, data_path, run_cli
from facecluster import incremental
from facecluster.incremental import Collection, IncrementalConfig, assign
from facecluster.workdir import WorkDir, read_json

PEOPLE = ["Colin_Powell", "Junichiro_Koizumi", "Serena_Williams"]
SETTINGS = {"k": 80, "min_sim": 0.947, "merge_min_sim": 0.91, "merge_k": 40, "merge_share": 0.75,
            "merge_min_links": 0.15, "embedder": "dlib", "knn_backend": "auto", "seed": 42}


# ------------------------------------------------------------------------------ real faces
@pytest.fixture(scope="module")
def lfw():
    root = data_path("lfw")
    return {p: sorted((root / p).iterdir()) for p in PEOPLE}


def _json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, lfw):
    """W from `facecluster run` on 3 photos each of two people; returns (tmp, W, earlier output)."""
    tmp = tmp_path_factory.mktemp("inc")
    recs = [{"img_path": str(p), "who": name, "i": i}
            for name in PEOPLE[:2] for i, p in enumerate(lfw[name][:3])]
    inp = _json(tmp / "day1.json", recs)
    out = tmp / "day1-out.json"
    assert run_cli("run", inp, "-o", out, "-w", tmp / "W", "--device", "cpu") == 0
    return tmp, tmp / "W", json.loads(out.read_text())


def _copy_w(base_run, tmp_path) -> Path:
    import shutil

    _, w, _ = base_run
    dst = tmp_path / "W"
    shutil.copytree(w, dst)
    return dst


def test_add_real_faces_ids_stable_and_write_all(base_run, tmp_path, lfw, capsys):
    tmp, _, day1 = base_run
    w = _copy_w(base_run, tmp_path)
    ids = {r["who"]: r["cluster_id"] for r in day1}
    assert len(set(ids.values())) == 2 and {r["cluster_id"] for r in day1} == {0, 1}
    # day 2: a new photo of each known person, a new person (4 photos), a missing file and a
    # relative path, extra keys everywhere
    (tmp_path / "imgs").mkdir()
    rel = tmp_path / "imgs" / "serena4.jpg"
    rel.write_bytes(lfw["Serena_Williams"][3].read_bytes())
    day2 = [{"img_path": str(lfw["Colin_Powell"][3]), "who": "Colin_Powell", "tag": [1]},
            {"img_path": str(lfw["Serena_Williams"][0]), "who": "Serena_Williams"},
            {"img_path": "missing/nope.jpg", "who": None},
            {"img_path": str(lfw["Junichiro_Koizumi"][3]), "who": "Junichiro_Koizumi"},
            {"img_path": str(lfw["Serena_Williams"][1]), "who": "Serena_Williams"},
            {"img_path": str(lfw["Serena_Williams"][2]), "who": "Serena_Williams"},
            {"img_path": "imgs/serena4.jpg", "who": "Serena_Williams", "cluster_id": 99, "error": "stale"}]
    inp = _json(tmp_path / "day2.json", day2)
    out = tmp_path / "day2-out.json"
    code = run_cli("add", inp, "-w", w, "-o", out, "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 3, err  # one record failed
    res = json.loads(out.read_text())
    assert [r["img_path"] for r in res] == [r["img_path"] for r in day2]
    assert res[0]["tag"] == [1] and all(r["who"] == d["who"] for r, d in zip(res, day2))
    assert res[0]["cluster_id"] == ids["Colin_Powell"]
    assert res[3]["cluster_id"] == ids["Junichiro_Koizumi"]
    assert res[2]["cluster_id"] == -1 and res[2]["error"]
    serena = {res[i]["cluster_id"] for i in (1, 4, 5, 6)}
    assert serena == {2}, res  # a new person: the next id after the largest given out
    assert "error" not in res[6]
    assert "added 7 records as batch 1" in err and "1 new people" in err

    # W now holds the new records: the next add sees them (Serena's 5th photo joins id 2)
    day3 = [{"img_path": str(lfw["Serena_Williams"][4]), "who": "Serena_Williams"}]
    out3 = tmp_path / "day3-out.json"
    assert run_cli("add", _json(tmp_path / "day3.json", day3), "-w", w, "-o", out3, "--device", "cpu") == 0
    assert json.loads(out3.read_text())[0]["cluster_id"] == 2

    # the whole collection, in the order added; earlier outputs stay valid
    all_out = tmp_path / "all.json"
    assert run_cli("write", "-w", w, "-o", all_out) == 3
    allr = json.loads(all_out.read_text())
    assert allr == day1 + res + json.loads(out3.read_text())
    st = read_json(w / "collection" / "state.json")
    assert st["version"] == incremental.STATE_VERSION and st["next_id"] == 3
    assert [b["source"] for b in st["batches"]] == ["run", "add", "add"]
    assert [b["n_records"] for b in st["batches"]] == [6, 7, 1]
    assert not (w / "collection" / "incoming").exists() or not any((w / "collection" / "incoming").iterdir())

    # the same add again (e.g. after a kill that came after the commit): nothing added
    out2b = tmp_path / "again.json"
    assert run_cli("add", inp, "-w", w, "-o", out2b, "--device", "cpu") == 3
    assert "already added as batch 1" in capsys.readouterr().err
    assert json.loads(out2b.read_text()) == res
    assert len(read_json(w / "collection" / "state.json")["batches"]) == 3

    # batch stages on a grown W are refused (they would relabel the collection)
    code = run_cli("cluster", "-w", w, "--device", "cpu")
    assert code == 2 and "growing collection" in capsys.readouterr().err
    assert run_cli("run", inp, "-o", tmp_path / "x.json", "-w", w, "--device", "cpu") == 2

    # the review page marks the faces of the last add
    page = tmp_path / "page.html"
    assert run_cli("report", all_out, "-o", page, "-w", w, "--thumb-size", "16") == 0
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1))
    assert data["added"] == [len(allr) - 1] and "batch 2" in data["addedLabel"]
    assert data["paths"][-1] == str(lfw["Serena_Williams"][4])


def test_collection_keeps_the_edge_weights_its_run_used(base_run, tmp_path):
    """A collection clusters its new faces with the settings W's run recorded; a run recorded
    before Infomap's exponential edge weights existed (no ``weight_temp``) used plain weights."""
    w = _copy_w(base_run, tmp_path)
    wd = WorkDir(w)
    assert incremental.init_from_run(Collection(wd), "infomap")["settings"]["weight_temp"] == 0.02
    meta = read_json(wd.labels_meta("infomap"))
    st = incremental.init_from_run(Collection(wd), "infomap")["settings"]
    assert st["cohort_norm"] is True and st["cohort_shift"] == 0.003
    del meta["settings"]["weight_temp"], meta["settings"]["cohort_norm"]
    wd.labels_meta("infomap").write_text(json.dumps(meta))
    st = incremental.init_from_run(Collection(wd), "infomap")["settings"]
    assert st["weight_temp"] == 0.0 and st["cohort_norm"] is False  # raw cosine before the cohort existed


def test_assign_normalises_like_the_run_that_recorded_it():
    """With ``cohort_norm`` recorded, the new faces' links are judged on the same cohort-normalised
    similarities as the run's Infomap (facecluster.cohort); without a shipped cohort: an error."""
    from facecluster.cohort import load_cohort

    co = load_cohort("dlib")
    rng = np.random.default_rng(0)
    stored = np.repeat(co.faces[:6], 5, axis=0) + 0.01 * rng.normal(size=(30, 128)).astype(np.float32)
    who = np.repeat(np.arange(6), 5)
    new = co.faces[[2, 4]] + 0.01 * rng.normal(size=(2, 128)).astype(np.float32)
    settings = dict(SETTINGS, cohort_norm=True, cohort_shift=0.003)
    r = assign(stored, who, new, 6, settings)
    assert r.ids.tolist() == [2, 4] and "cohort" in r.timings
    assert "cohort" not in assign(stored, who, new, 6, dict(SETTINGS)).timings
    with pytest.raises(ValueError, match="ships no cohort"):
        assign(stored, who, new, 6, dict(settings, embedder="mbf"))


def test_assign_levels_only_the_stored_faces_the_new_ones_list(monkeypatch):
    """The cohort levels of the stored faces are computed for those in the new faces' kNN lists
    only, so an add costs what the new faces need, not a pass over the whole collection; the
    ids are those of normalising with every stored face's level."""
    from facecluster.cohort import Cohort, load_cohort

    co = load_cohort("dlib")
    rng = np.random.default_rng(0)
    stored = np.repeat(co.faces[:60], 5, axis=0) + 0.01 * rng.normal(size=(300, 128)).astype(np.float32)
    who = np.repeat(np.arange(60), 5)
    new = co.faces[[2, 4]] + 0.01 * rng.normal(size=(2, 128)).astype(np.float32)
    settings = dict(SETTINGS, k=10, cohort_norm=True, cohort_shift=0.003)
    scored: list[int] = []
    orig = Cohort.levels

    def levels(self, x, **kw):
        scored.append(len(x))
        return orig(self, x, **kw)

    monkeypatch.setattr(Cohort, "levels", levels)
    r = assign(stored, who, new, 60, settings)
    assert r.ids.tolist() == [2, 4]
    assert scored[0] == 2 and sum(scored[1:]) <= 2 * 10 < len(stored)


def test_add_refusals(base_run, tmp_path, capsys):
    tmp, _, _ = base_run
    w = _copy_w(base_run, tmp_path)
    inp = _json(tmp_path / "new.json", [{"img_path": str(next(iter(Path(data_path("lfw", "Serena_Williams")).iterdir())))}])
    out = tmp_path / "o.json"
    # a method without an incremental form: refused, naming the ones that have it
    assert run_cli("add", inp, "-w", w, "-o", out, "--method", "gcn-ve", "--device", "cpu") == 2
    e = capsys.readouterr().err
    assert "no incremental form" in e and "infomap" in e
    # a typo in the add settings is a usage error
    assert run_cli("add", inp, "-w", w, "-o", out, "--set", "assign_shar=0.4", "--device", "cpu") == 2
    assert "invalid --set for add" in capsys.readouterr().err
    # invalid input: refused before anything is written
    bad = _json(tmp_path / "bad.json", [{"no_path": 1}])
    assert run_cli("add", bad, "-w", w, "-o", out, "--device", "cpu") == 2
    assert "missing 'img_path'" in capsys.readouterr().err
    assert not (w / "collection").exists() and not out.exists()
    # no earlier run there
    assert run_cli("add", inp, "-w", tmp_path / "empty", "-o", out, "--device", "cpu") == 2
    # W embedded with other weights/settings: refused, nothing added
    fj = w / "features.json"
    meta = json.loads(fj.read_text())
    meta["embedder"]["fingerprint"] = "0" * 64
    fj.write_text(json.dumps(meta))
    assert run_cli("add", inp, "-w", w, "-o", out, "--device", "cpu") == 2
    e = capsys.readouterr().err
    assert "was embedded with dlib" in e and "cannot be compared" in e
    assert len(read_json(w / "collection" / "state.json")["batches"]) == 1 and not out.exists()


def test_killed_add_leaves_w_as_it_was_and_rerun_finishes(base_run, tmp_path, lfw, monkeypatch):
    w = _copy_w(base_run, tmp_path)
    recs = [{"img_path": str(lfw["Colin_Powell"][4])}, {"img_path": str(lfw["Serena_Williams"][0])}]
    inp = _json(tmp_path / "new.json", recs)
    wd = WorkDir(w)
    coll = Collection(wd)
    real = incremental.atomic_write_json

    def dying(path, obj):  # dies exactly at the commit point (after the new segment is written)
        if Path(path) == coll.state_path and len(obj["batches"]) == 2:
            raise KeyboardInterrupt("killed")
        return real(path, obj)

    monkeypatch.setattr(incremental, "atomic_write_json", dying)
    with pytest.raises(KeyboardInterrupt):
        incremental.add(wd, inp, device="cpu")
    st = coll.state()
    assert len(st["batches"]) == 1  # W as it was (batch 0 only; the orphan segment is not named)
    assert coll.segment(1).exists()
    monkeypatch.setattr(incremental, "atomic_write_json", real)
    res = incremental.add(wd, inp, device="cpu")
    assert res.batch == 1 and not res.already
    assert [r["cluster_id"] for r in res.records] == [0, 2]
    assert coll.state()["next_id"] == 3 and len(coll.state()["batches"]) == 2


@pytest.mark.slow
def test_sigkill_during_add_then_rerun_finishes(base_run, tmp_path, lfw, capsys):
    """A real `add` process killed (SIGKILL) while it holds W: W still reads as before or as
    after, never half; the same command again finishes the add with the right ids."""
    w = _copy_w(base_run, tmp_path)
    recs = [{"img_path": str(p)} for p in lfw["Serena_Williams"][:4] + lfw["Colin_Powell"][6:10]]
    inp = _json(tmp_path / "new.json", recs)
    out = tmp_path / "out.json"
    p = _cli("add", inp, "-w", w, "-o", out, "--device", "cpu")
    lock = w / "collection.lock"
    t0 = time.monotonic()
    while not (lock.exists() and f"pid {p.pid} " in lock.read_text()) and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    time.sleep(1.0)  # somewhere in making the collection / embedding / assigning
    p.kill()
    p.wait(timeout=60)
    coll = Collection(WorkDir(w))
    if coll.exists():
        st = coll.state()
        assert len(st["batches"]) in (1, 2)
        coll.load_features(st)  # every segment the state names is complete
    assert run_cli("add", inp, "-w", w, "-o", out, "--device", "cpu") == 0, capsys.readouterr().err
    res = [r["cluster_id"] for r in json.loads(out.read_text())]
    assert res == [2] * 4 + [0] * 4
    st = Collection(WorkDir(w)).state()
    assert [b["n_records"] for b in st["batches"]] == [6, 8] and st["next_id"] == 3


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO / "shared") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "facecluster.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_two_adds_at_once_lock_with_real_processes(base_run, tmp_path, lfw, capsys):
    """A third process holds W's lock: `add --no-wait` refuses (75); two waiting `add`s print
    that they wait, then run one after the other and both batches end up intact."""
    w = _copy_w(base_run, tmp_path)
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time; from facecluster.incremental import Collection, locked; from facecluster.workdir import WorkDir\n"
         f"with locked(Collection(WorkDir({str(w)!r}))):\n    print('locked', flush=True)\n"
         "    while not os.path.exists(sys.argv[1]): time.sleep(0.05)",
         str(release)],
        env=dict(os.environ, PYTHONPATH=str(REPO / "shared")), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        a = _json(tmp_path / "a.json", [{"img_path": str(lfw["Colin_Powell"][5])}])
        b = _json(tmp_path / "b.json", [{"img_path": str(lfw["Serena_Williams"][0])}, {"img_path": str(lfw["Serena_Williams"][1])}])
        pa = _cli("add", a, "-w", w, "-o", tmp_path / "a-out.json", "--device", "cpu")
        pb = _cli("add", b, "-w", w, "-o", tmp_path / "b-out.json", "--device", "cpu")
        # --no-wait refuses at once (in this process: the lock is held by another one)
        assert run_cli("add", a, "-w", w, "-o", tmp_path / "busy.json", "--no-wait", "--device", "cpu") == incremental.EXIT_BUSY
        assert "being changed by another `facecluster add`" in capsys.readouterr().err
        assert not (tmp_path / "busy.json").exists()
        # both real adds report that they wait (stderr is line-buffered), then the lock is freed
        first = [pa.stderr.readline(), pb.stderr.readline()]
        assert all("waiting for another `facecluster add`" in line for line in first), first
    finally:
        release.touch()
    assert holder.wait(timeout=60) == 0
    (_, ea), (_, eb) = pa.communicate(timeout=180), pb.communicate(timeout=180)
    assert pa.returncode == 0 and pb.returncode == 0, ea + eb
    st = read_json(w / "collection" / "state.json")
    assert [b_["n_records"] for b_ in st["batches"]] == [6, 1, 2] or [b_["n_records"] for b_ in st["batches"]] == [6, 2, 1]
    assert json.loads((tmp_path / "a-out.json").read_text())[0]["cluster_id"] == 0
    sb = {r["cluster_id"] for r in json.loads((tmp_path / "b-out.json").read_text())}
    assert sb == {2} and st["next_id"] == 3


# ------------------------------------------------------------------------------ synthetic
def _people(rng, n_people, per, dim=32, noise=0.03):
    c = rng.normal(size=(n_people, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    who = np.repeat(np.arange(n_people), per)
    return (c[who] + noise * rng.normal(size=(len(who), dim))).astype(np.float32), who


@pytest.mark.parametrize("m", [0, 1, 2, 5])
def test_assign_small_and_empty(m):
    rng = np.random.default_rng(0)
    x, who = _people(rng, 3, 4)
    new = x[:m] + 0.001
    r = assign(x, who, new, 3, SETTINGS)
    assert r.ids.shape == (m,) and r.ids.dtype == np.int64
    assert (r.ids == who[:m]).all()  # near-copies of stored faces take their ids
    assert r.next_id == 3


@pytest.mark.parametrize("m", [1, 2, 5])
def test_assign_into_empty_collection(m):
    rng = np.random.default_rng(1)
    x, who = _people(rng, 2, 3)
    new = np.repeat(x[:1], m, axis=0)  # duplicates of one face: one person
    r = assign(np.zeros((0, x.shape[1]), np.float32), np.zeros(0, np.int64), new, 7, SETTINGS)
    assert (r.ids == 7).all() and r.next_id == 8


def test_assign_new_people_get_ids_after_the_largest_in_input_order():
    rng = np.random.default_rng(2)
    x, who = _people(rng, 6, 5)
    old = who < 3
    new_x = np.concatenate([x[who == 4], x[who == 1][:2], x[who == 3]])
    r = assign(x[old], who[old], new_x, 10, SETTINGS)
    assert r.ids.tolist() == [10] * 5 + [1, 1] + [11] * 5
    assert r.next_id == 12
    assert r.joined.tolist() == [0] * 5 + [1, 1] + [0] * 5
    # deterministic
    r2 = assign(x[old], who[old], new_x, 10, SETTINGS)
    assert np.array_equal(r.ids, r2.ids) and r.suggested_merges == r2.suggested_merges


def test_known_person_whose_new_photos_outnumber_the_old_ones_joins():
    rng = np.random.default_rng(3)
    x, who = _people(rng, 4, 12)
    keep = np.ones(len(who), bool)
    keep[np.nonzero(who == 2)[0][2:]] = False  # person 2: 2 old photos, 10 new ones
    r = assign(x[keep], who[keep], x[~keep], 4, SETTINGS)
    assert (r.ids == 2).all(), r.ids


def test_bridge_between_two_clusters_is_suggested_not_applied():
    rng = np.random.default_rng(4)
    x, who = _people(rng, 3, 6, noise=0.02)
    # faces halfway between person 0 and person 1: they link both clusters strongly
    mid = (x[who == 0][:3] + x[who == 1][:3]) / 2
    cfg = IncrementalConfig()
    settings = dict(SETTINGS, min_sim=0.45, merge_min_sim=0.4)
    r = assign(x, who, mid, 3, settings, cfg)
    assert any(m["ids"] == [0, 1] for m in r.suggested_merges), r.suggested_merges
    assert set(r.ids.tolist()) <= {0, 1, 3}


def test_assign_refuses_failed_stored_rows():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError):
        assign(x, np.array([0, -1]), x, 1, SETTINGS)


def test_group_vote_an_old_cluster_counts_all_its_members_slots():
    """The compact graph of ``add``'s group vote: an existing cluster's members have no lists
    (voteless nodes). A lone new face that joins it and links on to a big new group must not make
    the old cluster "pass" the mutual rule towards that group on that one face's slots alone
    (a new 153-face person joined an old 123-face cluster through 1.6 % of its slots, glint18-val
    `newpeople` splits; docs/benchmarks/incremental.md)."""
    n, k = 60, 41
    g, m = 50, 51  # a new group of 50 faces and one lone new face
    ids = np.empty((m, k), np.int64)
    sims = np.empty((m, k), np.float32)
    for i in range(g):
        ids[i] = [n + i] + [n + (i + t) % g for t in range(1, 39)] + [i % n, (i + 1) % n]
        sims[i] = [1.0] + [0.96] * 38 + [0.95, 0.95]
    # the lone face: 31 links into the old cluster (it joins it), 9 on to the group
    ids[g] = [n + g] + list(range(31)) + [n + t for t in range(9)]
    sims[g] = [1.0] + [0.95] * 40
    settings = {"merge_share": 0.75, "merge_min_links": 0.15, "merge_min_size": 1, "merge_mutual": True}
    res = incremental._group_vote(np.array([0] * g + [1]), np.arange(m), sims, ids, np.zeros(n, np.int64),
                                  np.full(m, -1, np.int64), n, 40, 0.91, settings, 7)
    assert res[g] == 0  # the lone face joins the old cluster by its own links
    assert (res[:g] == 7).all(), np.unique(res[:g])  # the group stays a new person


def test_a_copy_of_a_stored_face_takes_its_id():
    """A new near-duplicate of a stored crop takes that crop's id (and its no-face flag) even where
    the vote of its other links would choose another cluster; new copies of each other share one."""
    rng = np.random.default_rng(5)
    x, who = _people(rng, 3, 8, noise=0.02)
    who = who.copy()
    who[0] = 7  # a stored face of person 0 kept apart (say, by an earlier add): the vote says 0
    new = np.concatenate([x[:1], x[:1] + 1e-4, x[8:9]]).astype(np.float32)
    r = assign(x, who, new, 8, SETTINGS)
    assert r.ids.tolist() == [7, 7, 1] and r.joined.tolist() == [1, 1, 1]
    # ... and the plain vote without the near-duplicate rule
    r = assign(x, who, new, 8, dict(SETTINGS, join_duplicates=False))
    assert r.ids.tolist() == [0, 0, 1]
    # a copy of a stored crop with no face: its id, flagged, and no vote goes to or from it
    nf = np.zeros(len(who), bool)
    nf[0] = True
    r = assign(x, who, new, 8, SETTINGS, stored_no_face=nf)
    assert r.ids.tolist() == [7, 7, 1] and r.no_face.tolist() == [True, True, False]
    # ... but only an exact copy of it: distinct non-faces are as alike as a face's copies
    near = x[:1] + 0.01 * rng.normal(size=(1, x.shape[1])).astype(np.float32)
    cos = float(near[0] @ x[0] / np.linalg.norm(near) / np.linalg.norm(x[0]))
    assert 0.995 < cos < 0.9999
    assert assign(x, who, near, 8, SETTINGS).ids.tolist() == [7]
    r = assign(x, who, near, 8, SETTINGS, stored_no_face=nf)
    assert r.ids.tolist() == [0] and not r.no_face.any()
