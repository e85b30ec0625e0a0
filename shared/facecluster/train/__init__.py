"""Training commands. Each module listed here exposes ``register(app: typer.Typer)`` that adds
its ``facecluster train <name>`` command(s)."""

TRAIN_MODULES: list[str] = ["calibration", "gcn_ve", "adanets"]


def flush_subnormals() -> bool:
    """Flush-to-zero / denormals-are-zero for this process's CPU arithmetic; True when the CPU
    supports it (x86 with SSE3, ARM).

    While a network trains its predictions grow confident and the loss's gradients fall below
    float32's normal range (1.18e-38); every x86 multiply that touches such a number takes a slow
    path: CPU GCN-E training slowed from 4.9 s to 62 s per 100 steps by its 2,000th step, and
    stayed at 4.9 s with this set (docs/benchmarks.md §9, "Twenty-second session"). The flag is
    per thread and torch's worker threads inherit it when they start, so this must run before
    the process's first parallel torch operation: the ``facecluster train`` commands and
    ``bench/train_shift.py`` call it first thing. (Inference does not need it: the checkpoint
    loaders zero subnormal weights, ``gcn_common.flush_denormals_``.)"""
    import torch

    return bool(torch.set_flush_denormal(True))
