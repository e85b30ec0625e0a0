"""Growing collections (issue 14): quality of ``facecluster add`` against one batch run, and its cost.

Quality (``quality``): on embedded work dirs (no re-embedding), split the faces into an earlier
part A and a new part B, cluster A with the default method (what ``facecluster run`` gives), add B
with :func:`facecluster.incremental.assign` (what ``facecluster add`` does), and compare
A's ids + B's ids with one batch run over A + B (BCubed F, and the difference). Known people's
new photos "join their cluster" when a B face of a person who has photos in A gets the id of the
cluster holding most of that person's A photos; the same rate is given for the batch run (B face
in the same batch cluster as most of its person's A photos) as the reference. Splits:

* ``random50`` / ``random90``: a random 50 % / 90 % of the faces in A (seeds 0, 1, 2);
* ``byindex50``: per person, the first half of their photos (file order) in A, the rest in B;
* ``newpeople``: 20 % of the people only in B, the others' photos random 80/20.

Cost (``timing``): synthetic 128-D features (not real faces: 10,000 people x 10 faces on the unit
sphere, same-person cosine ~0.96, so the dlib thresholds of the default method apply), N stored
faces in collection segments on disk, 1 % new faces added: time to load the stored features,
assign the new faces, and commit the new segment + state; beside one batch run over all faces.

    python bench/incremental.py quality --set orl --set yale --set glint18 --set lfw
    python bench/incremental.py timing --stored 100000 --frac 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_workdir  # noqa: E402

from facecluster.cluster import get_clusterer  # noqa: E402
from facecluster.contract import renumber  # noqa: E402
from facecluster.incremental import IncrementalConfig, assign  # noqa: E402
from facecluster.metrics import evaluate  # noqa: E402


def splits(y: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted) of the earlier part A and the new part B."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if kind.startswith("random"):
        frac = int(kind[len("random"):]) / 100
        perm = rng.permutation(n)
        a = perm[: int(round(frac * n))]
    elif kind == "byindex50":
        a = []
        for lab in np.unique(y):
            idx = np.nonzero(y == lab)[0]  # file order within the person's folder
            a.extend(idx[: (len(idx) + 1) // 2])
        a = np.asarray(a)
    elif kind == "newpeople":
        people = np.unique(y)
        only_b = set(rng.choice(people, size=max(1, len(people) // 5), replace=False).tolist())
        cand = np.array([i for i in range(n) if y[i] not in only_b])
        a = cand[rng.random(len(cand)) < 0.8]
    else:
        raise ValueError(kind)
    a = np.sort(a)
    b = np.setdiff1d(np.arange(n), a)
    return a, b


def join_rate(y: np.ndarray, lab: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Share of B faces of people with photos in A whose label is that of the cluster holding
    most of the person's A photos; and how many such faces there are."""
    main = {}
    for person in np.unique(y[a]):
        la = lab[a][y[a] == person]
        vals, cnt = np.unique(la, return_counts=True)
        main[person] = vals[np.argmax(cnt)]
    known = np.array([y[i] in main for i in b], bool)
    if not known.any():
        return float("nan"), 0
    hit = np.array([lab[i] == main[y[i]] for i in b[known]])
    return float(hit.mean()), int(known.sum())


def quality(sets: list[str], root: Path, kinds: list[str], seeds: list[int], cfg: IncrementalConfig, part: str = "all") -> list[dict]:
    rows = []
    for base in sets:
        X, y, emb = load_workdir(root / base)
        name = base
        if part == "val":
            # bench/regimes.py's validation identities only (never tuned on)
            from regimes import _set_name
            from facecluster.train.splits import validation_mask

            keep = validation_mask(_set_name(base), y)
            X, y, name = X[keep], y[keep], f"{base}-val"
        c = get_clusterer("infomap", device="cpu", embedder=emb)
        full = renumber(c.fit_predict(X))
        settings = c.settings()
        f_full = evaluate(y, full)["bcubed_fscore"]
        for kind in kinds:
            for seed in seeds if kind.startswith(("random", "newpeople")) else [0]:
                a, b = splits(y, kind, seed)
                la = renumber(get_clusterer("infomap", device="cpu", embedder=emb).fit_predict(X[a]))
                t = time.perf_counter()
                res = assign(X[a], la, X[b], int(la.max()) + 1 if len(la) else 0, settings, cfg)
                secs = time.perf_counter() - t
                lab = np.empty(len(X), np.int64)
                lab[a], lab[b] = la, res.ids
                f_inc = evaluate(y, lab)["bcubed_fscore"]
                # if a user accepted every suggested merge (ids joined by union-find)
                merged = lab.copy()
                if res.suggested_merges:
                    from scipy.sparse.csgraph import connected_components
                    import scipy.sparse as sp

                    pairs = np.array([m_["ids"] for m_ in res.suggested_merges], np.int64)
                    nid = int(lab.max()) + 1
                    g = sp.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(nid, nid))
                    merged = connected_components(g, directed=False)[1][lab]
                f_merged = evaluate(y, merged)["bcubed_fscore"]
                jr, nk = join_rate(y, lab, a, b)
                jr_batch, _ = join_rate(y, full, a, b)
                row = {
                    "set": name, "split": kind, "seed": seed, "n": len(X), "new": len(b),
                    "F_batch": round(f_full, 4), "F_add": round(f_inc, 4), "dF": round(f_inc - f_full, 4),
                    "F_add_merges_accepted": round(f_merged, 4),
                    # the earlier output alone (part A) vs the batch run's ids on the same faces:
                    # how much of dF was already there before anything was added
                    "F_A_earlier": round(evaluate(y[a], la)["bcubed_fscore"], 4),
                    "F_A_batch": round(evaluate(y[a], full[a])["bcubed_fscore"], 4),
                    # the new faces alone: add's ids vs the batch run's ids on the same faces
                    "F_B_add": round(evaluate(y[b], res.ids)["bcubed_fscore"], 4),
                    "F_B_batch": round(evaluate(y[b], full[b])["bcubed_fscore"], 4),
                    "join": round(jr, 4), "join_batch": round(jr_batch, 4), "known_new": nk,
                    "new_ids": int(res.next_id - (la.max() + 1)), "merges": len(res.suggested_merges),
                    "add_s": round(secs, 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def synthetic(n: int, dim: int = 128, per_person: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) features of n // per_person synthetic people and their person index."""
    rng = np.random.default_rng(seed)
    people = max(1, n // per_person)
    centres = rng.normal(size=(people, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    who = rng.integers(0, people, n)
    return (centres[who] + 0.018 * rng.normal(size=(n, dim)).astype(np.float32)).astype(np.float32), who


def timing(stored: int, frac: float, batch: bool, device: str = "cpu") -> dict:
    from facecluster.incremental import Collection, STATE_FORMAT, STATE_VERSION
    from facecluster.workdir import WorkDir, atomic_save_npz, atomic_write_json

    m = max(1, int(round(frac * stored)))
    # the collection: `stored` faces of stored // 10 people; the new faces: half of them new
    # photos of those people, half photos of m // 4 people it has never seen (other centres)
    X, who = synthetic(stored + (m - m // 2))
    Xu, wu = synthetic(m // 2, per_person=2, seed=1)
    X = np.concatenate([X, Xu])
    who = np.concatenate([who, wu + who.max() + 1])
    old, new = X[:stored], X[stored:]
    settings = get_clusterer("infomap", device="cpu", embedder="dlib").settings()
    out: dict = {"stored": stored, "new": m, "dim": X.shape[1], "unseen_people": int(len(np.unique(wu))), "device": device}
    # the stored ids: the synthetic people (what an earlier run would have found; clustering
    # 100k faces here only to make them would not change what `add` costs)
    ids = renumber(who[:stored])
    # warm up: import torch / faiss / infomap once (a process pays that at start-up, whatever
    # the collection's size; `add` also loads the embedder with torch before this point)
    for be in ("faiss", "torch"):
        assign(old[:50], ids[:50], new[:20], int(ids[:50].max()) + 1, dict(settings, knn_backend=be), device=device)
    with tempfile.TemporaryDirectory() as d:
        coll = Collection(WorkDir(d))
        coll.root.mkdir(parents=True)
        atomic_save_npz(coll.segment(0), features=old, row=np.arange(stored), ids=ids)
        st = {"format": STATE_FORMAT, "version": STATE_VERSION, "dim": 128, "next_id": int(ids.max()) + 1,
              "batches": [{"batch": 0, "n_features": stored}]}
        atomic_write_json(coll.state_path, st)
        t0 = time.perf_counter()
        feats, sids = coll.load_features(coll.state())
        out["load_s"] = round(time.perf_counter() - t0, 2)
        t = time.perf_counter()
        res = assign(feats, sids, new, st["next_id"], settings, device=device)
        out["assign_s"] = round(time.perf_counter() - t, 2)
        out["assign_steps_s"] = {k: round(v, 2) for k, v in res.timings.items()}
        t = time.perf_counter()
        atomic_save_npz(coll.segment(1), features=new, row=np.arange(m), ids=res.ids)
        st["batches"].append({"batch": 1, "n_features": m})
        atomic_write_json(coll.state_path, st)
        out["commit_s"] = round(time.perf_counter() - t, 3)
        out["add_total_s"] = round(time.perf_counter() - t0, 2)
    out["joined_existing"] = int((res.joined > 0).sum())
    out["new_ids_given"] = int(res.next_id - st["next_id"])
    known = np.isin(who[stored:], who[:stored])
    order = np.argsort(who[:stored], kind="stable")
    first = order[np.searchsorted(who[:stored][order], who[stored:][known])]  # a stored face of the same person
    out["known_new_faces_correct"] = round(float((res.ids[known] == ids[first]).mean()), 4) if known.any() else None
    if batch:
        t = time.perf_counter()
        get_clusterer("infomap", device="cpu", embedder="dlib").fit_predict(X)
        out["batch_run_all_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--root", type=Path, default=Path("/work/extdata/work"))
    q.add_argument("--set", action="append", dest="sets", required=True)
    q.add_argument("--split", action="append", dest="kinds")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--assign-share", type=float, default=None)
    q.add_argument("--part", choices=["all", "val"], default="all",
                   help="val: only the validation identities of bench/regimes.py (held-out people)")
    tm = sub.add_parser("timing")
    tm.add_argument("--stored", type=int, default=100_000)
    tm.add_argument("--frac", type=float, default=0.01)
    tm.add_argument("--batch", action="store_true", help="also time one batch run (Infomap) over all faces")
    tm.add_argument("--device", default="cpu", help="cpu | cuda (kNN of the new faces; a GPU check)")
    args = ap.parse_args()
    if args.cmd == "quality":
        cfg = IncrementalConfig(**({"assign_share": args.assign_share} if args.assign_share else {}))
        kinds = args.kinds or ["random50", "random90", "byindex50", "newpeople"]
        quality(args.sets, args.root, kinds, list(range(args.seeds)), cfg, args.part)
    else:
        timing(args.stored, args.frac, args.batch, args.device)


if __name__ == "__main__":
    main()
