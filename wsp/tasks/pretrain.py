"""task=pretrain: train a backbone to predict canonical hashtags, then export it for transfer."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from wsp.config import ConfigError, check_training, require_choice, require_positive
from wsp.tasks.common import make_classifier, make_datamodule, make_trainer, steps_for, training_time_s
from wsp.utils.loggers import build_loggers
from wsp.utils.schedule import INTERPOLATIONS, paper_schedule_images


def schedule_images(cfg: DictConfig, corpus_images: int) -> int:
    """`task.images`: a number, or `paper` for the paper's interpolation over the corpus size."""
    if cfg.task.images != "paper":
        require_positive(cfg, "task.images")
        return int(cfg.task.images)
    require_choice(cfg, "task.interpolation", INTERPOLATIONS)
    extremes = OmegaConf.to_container(cfg.task.extremes)
    if (
        len(extremes) != 2
        or not all(len(e) == 2 and min(e) > 0 for e in extremes)
        or extremes[0][0] >= extremes[1][0]
        or extremes[0][0] * extremes[0][1] > extremes[1][0] * extremes[1][1]
    ):
        raise ConfigError(
            f"task.extremes={extremes}: must be [[images, epochs], [more images, epochs]], all > 0, with "
            "no fewer images processed at the larger end (a larger corpus never trains for less)"
        )
    return paper_schedule_images(corpus_images, cfg.task.interpolation, extremes)


def run(cfg: DictConfig) -> dict:
    from wsp.models.backbones import export_backbone

    check_training(cfg)
    require_choice(cfg, "task.nonfinite_loss", ("stop", "skip"))
    require_positive(cfg, "task.checkpoint_every")
    datamodule = make_datamodule(cfg, ("hashtags",))
    images = schedule_images(cfg, datamodule.num_samples("train"))
    total_steps = steps_for(images, datamodule.batch_size, cfg)
    model = make_classifier(cfg, datamodule.num_classes, loss=cfg.model.loss, schedule_images=images)
    trainer = make_trainer(cfg, total_steps, build_loggers(cfg), checkpoint_every=cfg.task.checkpoint_every)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    final = trainer.validate(model, datamodule=datamodule, verbose=False)  # max_steps may stop mid-epoch
    exported = Path(cfg.output_dir) / cfg.task.export
    if trainer.is_global_zero:
        export_backbone(model.backbone, exported)
    metrics.update(final[0] if final else {})
    return {
        **device_and_checkpoint_costs(trainer, Path(cfg.output_dir) / "checkpoints" / "last.ckpt"),
        **metrics,
        "train/skipped_steps": model.skipped_steps,
        "train/time_s": training_time_s(trainer),
        "steps": trainer.global_step,
        "images_scheduled": images,
        "images_processed": model.images_processed,
        "classes": datamodule.num_classes,
        "backbone": str(exported),
    }


def device_and_checkpoint_costs(trainer, checkpoint: Path) -> dict:
    """Peak accelerator memory, and the slowest checkpoint write with the checkpoint's size (None when
    there is no accelerator, or no checkpoint was written)."""
    writes = trainer.strategy.checkpoint_io.write_seconds
    return {
        "train/peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else None,
        "checkpoint/write_s": max(writes) if writes else None,
        "checkpoint/gib": checkpoint.stat().st_size / 2**30 if checkpoint.is_file() else None,
    }
