"""Training commands. Each module listed here exposes ``register(app: typer.Typer)`` that adds
its ``facecluster train <name>`` command(s)."""

TRAIN_MODULES: list[str] = ["calibration", "gcn_ve", "adanets"]
