"""Experiment loggers: a local CSV log always, Weights & Biases (offline by default) when enabled."""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """A run resuming from a checkpoint (`ckpt_path`) continues the wandb run of its output folder and
    writes its CSV rows beside the earlier ones, in csv/resumed-<time>/."""
    out = Path(cfg.output_dir)
    resuming = bool(cfg.get("ckpt_path"))
    csv_version = f"resumed-{time.strftime('%Y-%m-%d_%H-%M-%S')}" if resuming else ""
    loggers: list[Logger] = [CSVLogger(save_dir=str(out), name="csv", version=csv_version)]
    if not cfg.logger.wandb:
        return loggers
    import wandb

    if wandb.run is not None:  # a stage of a study job: log into the job's run, keys prefixed by the stage
        loggers.append(WandbLogger(prefix=cfg.logger.prefix))
        return loggers
    wandb_logger = WandbLogger(**_wandb_run_args(cfg, f"{cfg.task.name}-{out.name}"), save_dir=str(out))
    wandb_logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    loggers.append(wandb_logger)
    return loggers


def _wandb_run_args(cfg: DictConfig, name: str, tags: tuple[str, ...] = ()) -> dict:
    """One wandb run per output folder (its id derives from the path, so a resumed run continues it);
    the runs of a Hydra multirun are grouped by the sweep's folder name unless logger.group is set."""
    group = cfg.logger.group
    if group is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        group = Path(HydraConfig.get().sweep.dir).name
    return {
        "id": hashlib.sha1(str(Path(cfg.output_dir).resolve()).encode()).hexdigest()[:16],
        "resume": "allow",
        "project": cfg.logger.project,
        "entity": cfg.logger.entity,
        "group": group,
        "tags": [*cfg.logger.tags, *(t for t in tags if t)],
        "name": name,
        "mode": "offline" if cfg.logger.offline else "online",
    }


@contextlib.contextmanager
def open_wandb_run(cfg: DictConfig, name: str, tags: list[str]):
    """A wandb run for a whole multi-stage job (task=study), with its full config; the stages log into
    it (build_loggers). Without wandb (logger=csv), and on every DDP rank but the first, nothing is opened."""
    from pytorch_lightning.utilities import rank_zero_only

    if not cfg.logger.wandb or rank_zero_only.rank != 0:
        yield None
        return
    import wandb

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(**_wandb_run_args(cfg, name, tuple(tags)), dir=str(out),
                     config=OmegaConf.to_container(cfg, resolve=True))  # fmt: skip
    try:
        yield run
    finally:
        run.finish()


def log_metrics(loggers: list[Logger], metrics: dict, step: int = 0) -> None:
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        logger.save()


@contextlib.contextmanager
def finishing_wandb():
    """Close the wandb run a task opened even when it fails, so the next run in this process starts
    clean; a run open before the task (a study job's, which its stages share) stays open."""
    import wandb

    outer = wandb.run
    try:
        yield
    finally:
        if wandb.run is not None and wandb.run is not outer:
            wandb.finish()
