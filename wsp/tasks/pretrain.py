"""task=pretrain: train a backbone to predict canonical hashtags, then export it for transfer."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wsp.config import check_training, require_choice, require_positive
from wsp.tasks.common import global_batch, make_datamodule, make_trainer, steps_for
from wsp.utils.loggers import build_loggers


def run(cfg: DictConfig) -> dict:
    from wsp.models.backbones import export_backbone
    from wsp.models.classifier import Classifier

    check_training(cfg)
    require_choice(cfg, "task.nonfinite_loss", ("stop", "skip"))
    require_positive(cfg, "task.images")
    datamodule = make_datamodule(cfg, ("hashtags",))
    total_steps = steps_for(cfg.task.images, datamodule.batch_size, cfg)
    model = Classifier(cfg.model.name, datamodule.num_classes, dict(cfg.optim), loss=cfg.model.loss,
                       model_kwargs=dict(cfg.model.kwargs), channels_last=cfg.model.channels_last,
                       nonfinite_loss=cfg.task.nonfinite_loss)  # fmt: skip
    trainer = make_trainer(cfg, total_steps, build_loggers(cfg))
    trainer.fit(model, datamodule=datamodule)
    final = trainer.validate(model, datamodule=datamodule, verbose=False)  # max_steps may stop mid-epoch
    exported = Path(cfg.output_dir) / cfg.task.export
    if trainer.is_global_zero:
        export_backbone(model.backbone, exported)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    metrics.update(final[0] if final else {})
    return {
        **metrics,
        "train/skipped_steps": model.skipped_steps,
        "steps": trainer.global_step,
        "images_processed": trainer.global_step * global_batch(datamodule.batch_size, cfg),
        "classes": datamodule.num_classes,
        "backbone": str(exported),
    }
