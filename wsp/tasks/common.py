"""What the training tasks share: the Lightning Trainer from config, and the data modules."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Timer

from wsp.config import ConfigError, require, require_choice
from wsp.data.hashtags import HashtagDataModule
from wsp.data.transfer import LAYOUTS, TransferDataModule
from wsp.utils.checkpoints import AtomicCheckpointIO, LastCheckpoint
from wsp.utils.faults import StopJobOnError
from wsp.utils.throughput import Throughput

TRANSFER = tuple(LAYOUTS)  # the labelled datasets probe and finetune read


def make_datamodule(cfg: DictConfig, kinds: tuple[str, ...]) -> pl.LightningDataModule:
    require_choice(cfg, "data.name", kinds)
    require(cfg, "data.path" if cfg.data.name == "hashtags" else "data.root")
    args = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "name"}
    try:
        if cfg.data.name == "hashtags":
            return HashtagDataModule(**args, ledger_dir=str(Path(cfg.output_dir) / "ledger"))
        args["crop_pct"] = args["crop_pct"] or eval_crop_pct(cfg.model.name)
        return TransferDataModule(cfg.data.name, **args, seed=cfg.seed)  # seed: of the training order
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None


def eval_crop_pct(model_name: str) -> float:
    """A timm name with a pretrained tag (`resnext101_32x8d.fb_wsl_ig1b_ft_in1k`) evaluates as its timm
    config says; any other model with the paper's 0.875."""
    import timm

    from wsp.data.transforms import CROP_PCT

    if "." in model_name:
        return timm.models.get_pretrained_cfg(model_name).crop_pct
    return CROP_PCT


def load_pretrained(cfg: DictConfig, backbone) -> None:
    """Load `backbone.weights` (exported .safetensors or Lightning .ckpt) strictly; null keeps random init."""
    from wsp.models.backbones import load_weights

    if cfg.backbone.weights:
        try:
            load_weights(backbone, cfg.backbone.weights)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(str(err)) from None


def make_classifier(cfg: DictConfig, num_classes: int, loss: str, schedule_images: int | None = None):
    from wsp.models.classifier import Classifier

    m = cfg.model
    return Classifier(m.name, num_classes, dict(cfg.optim), loss=loss, model_kwargs=dict(m.kwargs),
                      channels_last=m.channels_last, nonfinite_loss=cfg.task.nonfinite_loss, compile=m.compile,
                      grad_checkpointing=m.grad_checkpointing, schedule_images=schedule_images)  # fmt: skip


def world_size(cfg: DictConfig) -> int:
    """Processes in the run: the global batch, hence the lr and the schedule's length, depend on it."""
    devices = cfg.trainer.devices
    if devices == -1 and cfg.trainer.accelerator == "gpu":  # every GPU of the node
        import torch

        devices = torch.cuda.device_count()
    if isinstance(devices, int) and devices > 0:
        return devices * cfg.trainer.num_nodes
    if OmegaConf.is_list(devices):
        return len(devices) * cfg.trainer.num_nodes
    raise ConfigError(f"trainer.devices={devices}: give a device count or a list of device ids")


def global_batch(batch_size: int, cfg: DictConfig) -> int:
    """Images per optimisation step: per-device batch x processes x gradient accumulation."""
    return batch_size * world_size(cfg) * cfg.trainer.get("accumulate_grad_batches", 1)


def steps_for(images: int, batch_size: int, cfg: DictConfig) -> int:
    """Optimisation steps to process `images` more than a resumed checkpoint had (`ckpt_path`), on this
    run's layout: a run resumed on other devices still ends at its schedule's images."""
    step, processed = resumed_progress(cfg)
    return max(1, step + math.ceil((images - processed) / global_batch(batch_size, cfg)))


def resumed_progress(cfg: DictConfig) -> tuple[int, int]:
    """(steps, images processed) of the checkpoint `ckpt_path` resumes from; (0, 0) for a fresh start. A
    file that cannot be read is left to the Trainer, which reports it in one line."""
    import torch

    if not cfg.get("ckpt_path"):
        return 0, 0
    path = (
        Path(cfg.output_dir) / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    )
    try:  # memory-mapped: reads two numbers, not the weights
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:
        return 0, 0
    return checkpoint["global_step"], checkpoint.get("images_processed", 0)


def make_predictor(cfg: DictConfig) -> pl.Trainer:
    """A Trainer for inference over every device of the job (feature extraction, evaluation): no
    logger, no checkpoints, and no sampler injected (the tasks deal each rank its share themselves, so
    no image is padded in twice)."""
    return pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=False,
                      enable_checkpointing=False, use_distributed_sampler=False, callbacks=[StopJobOnError()],
                      default_root_dir=cfg.output_dir)  # fmt: skip


def make_trainer(
    cfg: DictConfig, max_steps: int, loggers: list, checkpoint_every: int | None = None
) -> pl.Trainer:
    """Checkpoints go to <output_dir>/checkpoints (`last.ckpt` every `checkpoint_every` steps, else at
    epoch ends), written atomically; `ckpt_path=last` resumes from there."""
    checkpoints = LastCheckpoint(Path(cfg.output_dir) / "checkpoints", every_n_train_steps=checkpoint_every)
    return pl.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        max_steps=max_steps,
        max_epochs=-1,
        logger=loggers,
        callbacks=[checkpoints, Throughput(), Timer(), StopJobOnError()],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=cfg.output_dir,
    )


def training_time_s(trainer: pl.Trainer) -> float:
    """Seconds in `trainer.fit` over every invocation of the run, up to its last checkpoint before each
    resume: Lightning's Timer keeps its clock in the checkpoint. A results.json's `wall_time_s` is the
    last invocation's only."""
    (timer,) = (c for c in trainer.callbacks if isinstance(c, Timer))
    return timer.time_elapsed("train")
