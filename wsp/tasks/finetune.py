"""task=finetune: train every layer on a labelled dataset; backbone.weights=null trains from scratch."""

from __future__ import annotations

from omegaconf import DictConfig

from wsp.config import check_training, require_choice, require_positive
from wsp.tasks.common import (
    TRANSFER,
    load_pretrained,
    make_classifier,
    make_datamodule,
    make_trainer,
    resumed_progress,
    steps_for,
    training_time_s,
)
from wsp.utils.loggers import build_loggers


def run(cfg: DictConfig) -> dict:
    check_training(cfg)
    require_choice(cfg, "task.nonfinite_loss", ("stop", "skip"))
    require_positive(cfg, "task.epochs", "task.checkpoint_every")
    datamodule = make_datamodule(cfg, TRANSFER)
    train_size = len(datamodule.splits.train)
    images = cfg.task.epochs * train_size
    total_steps = steps_for(images, datamodule.batch_size, cfg)
    resumed_at, _ = resumed_progress(cfg)
    model = make_classifier(cfg, datamodule.num_classes, loss="softmax", schedule_images=images)
    load_pretrained(cfg, model.backbone)
    trainer = make_trainer(cfg, total_steps, build_loggers(cfg), checkpoint_every=cfg.task.checkpoint_every)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    (final,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    return {
        "finetune/top1": final["val/top1"],
        "finetune/top5": final["val/top5"],
        "finetune/val_images": int(final["val/images"]),
        **{
            f"finetune/{k}": final[f"val/{k}"]
            for k in ("top1_lower_bound", "duplicates_listed")
            if f"val/{k}" in final
        },
        "train/skipped_steps": model.skipped_steps,
        "train/time_s": training_time_s(trainer),
        "steps": trainer.global_step,
        "resumed_at_step": resumed_at,  # 0: a fresh start
        "weights": cfg.backbone.weights,
    }
