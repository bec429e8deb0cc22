"""task=probe: feature transfer. Frozen backbone, pooled features, L2 logistic regression (VISSL-style)."""

from __future__ import annotations

from omegaconf import DictConfig

from wsp.config import ConfigError, require_positive
from wsp.tasks.common import TRANSFER, load_pretrained, make_datamodule
from wsp.utils.loggers import build_loggers, log_metrics


def run(cfg: DictConfig) -> dict:
    from wsp.models.backbones import create_backbone
    from wsp.models.probe import accuracy, extract_features, select_and_fit

    require_positive(
        cfg,
        "task.max_iter",
        "task.holdout_fraction",
        *[f"task.l2_grid.{i}" for i in range(len(cfg.task.l2_grid))],
    )
    try:
        backbone = create_backbone(cfg.model.name, **cfg.model.kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    load_pretrained(cfg, backbone)
    datamodule = make_datamodule(cfg, TRANSFER)
    features = {
        split: extract_features(backbone, loader, desc=f"features ({split})")
        for split, loader in datamodule.feature_loaders().items()
    }
    train_x, train_y = features["train"]
    val_x, val_y = features["val"]
    probe, holdout_scores = select_and_fit(train_x, train_y, datamodule.num_classes, list(cfg.task.l2_grid),
                                           cfg.task.holdout_fraction, cfg.seed, cfg.task.max_iter)  # fmt: skip
    metrics = {
        "probe/top1": accuracy(probe, val_x, val_y, k=1),
        "probe/top5": accuracy(probe, val_x, val_y, k=5),
        "probe/l2": probe.l2,
    }
    log_metrics(build_loggers(cfg), metrics)
    return {
        **metrics,
        "holdout_top1_by_l2": {str(k): v for k, v in holdout_scores.items()},
        "train_images": len(train_y),
        "val_images": len(val_y),
        "feature_dim": train_x.shape[1],
        "weights": cfg.backbone.weights,
    }
