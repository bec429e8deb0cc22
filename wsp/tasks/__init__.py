"""One module per task; `run_task(cfg)` runs `wsp.tasks.<cfg.task.name>.run(cfg)` and records results.json."""

from __future__ import annotations

import importlib
import time

from omegaconf import DictConfig

from wsp.utils.loggers import finishing_wandb
from wsp.utils.results import write_results

TASKS = (
    "demo",
    "study",
    "synthetic",
    "corpus",
    "pretrain",
    "probe",
    "finetune",
    "evaluate",
    "dedup",
    "model_stats",
    "aggregate",
    "preflight",
)


def run_task(cfg: DictConfig) -> dict:
    """Run the task; the first process (global rank 0 under DDP) records results.json."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_only

    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # weight init, and anything else unseeded
    module = importlib.import_module(f"wsp.tasks.{cfg.task.name}")
    start = time.perf_counter()
    with finishing_wandb():
        metrics = module.run(cfg)
    if rank_zero_only.rank == 0:
        write_results(cfg, metrics, time.perf_counter() - start)
    return metrics
