"""Experiment loggers: a local CSV log always, Weights & Biases (offline by default) when enabled."""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """A run resuming from a checkpoint (`ckpt_path`) continues the wandb run of its output folder and
    writes its CSV rows beside the earlier ones, in csv/resumed-<time>/."""
    out = Path(cfg.output_dir)
    resuming = bool(cfg.get("ckpt_path"))
    csv_version = f"resumed-{time.strftime('%Y-%m-%d_%H-%M-%S')}" if resuming else ""
    loggers: list[Logger] = [CSVLogger(save_dir=str(out), name="csv", version=csv_version)]
    if cfg.logger.wandb:
        wandb_logger = WandbLogger(
            id=hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16],  # one wandb run per output folder
            resume="allow",
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            tags=list(cfg.logger.tags),
            name=f"{cfg.task.name}-{out.name}",
            save_dir=str(out),
            offline=cfg.logger.offline,
        )
        wandb_logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        loggers.append(wandb_logger)
    return loggers


def log_metrics(loggers: list[Logger], metrics: dict, step: int = 0) -> None:
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        logger.save()


@contextlib.contextmanager
def finishing_wandb():
    """Close the wandb run even when the task fails, so the next run in this process starts clean."""
    try:
        yield
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()
