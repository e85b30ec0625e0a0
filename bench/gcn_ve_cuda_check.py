"""On a CUDA machine: gcn-ve on CUDA vs CPU (same labels?), and CUDA timings at 20k / 100k.

  PYTHONPATH=shared python bench/gcn_ve_cuda_check.py OUT.json
(synthetic inputs and random checkpoints from bench/gcn_ve_bench.py's ``make_input``)."""
import sys, time, json, numpy as np, torch
sys.path.insert(0, "bench")
from gcn_ve_bench import make_input, same_partition
from pathlib import Path
from facecluster.cluster import get_clusterer
torch.backends.cuda.matmul.allow_tf32 = False
res = {}
for n, cpu_too in ((20000, True), (100000, False)):
    root = Path(f"/tmp/cc{n}"); make_input(root, n)
    X = np.fromfile(root / "data/features/part1_test.bin", np.float32).reshape(-1, 256)
    ck = str(root / "data/pretrained_models/pretrained_gcn_%s_ms1m.pth")
    r = {}
    for dev in (["cuda", "cpu"] if cpu_too else ["cuda"]):
        m = get_clusterer("gcn-ve", checkpoint_v=ck % "v", checkpoint_e=ck % "e", device=dev)
        if dev == "cuda":
            m.fit_predict(X[:2000]); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter(); lab = m.fit_predict(X); 
        if dev == "cuda": torch.cuda.synchronize()
        r[dev] = {"total_s": time.perf_counter() - t, "steps_s": m.timings_, "conf": m.conf_.copy(), "lab": lab}
        if dev == "cuda": r[dev]["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out = {d: {k: v for k, v in r[d].items() if k not in ("conf", "lab")} for d in r}
    if cpu_too:
        out["cuda_vs_cpu"] = {"conf_max_abs_diff": float(np.abs(r["cuda"]["conf"] - r["cpu"]["conf"]).max()), "identical_partition": same_partition(r["cuda"]["lab"], r["cpu"]["lab"]), "n_clusters": [int(len(np.unique(r[d]["lab"]))) for d in ("cuda", "cpu")]}
    res[n] = out
    print(n, json.dumps(out), flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=2)
