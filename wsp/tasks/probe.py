"""task=probe: feature transfer. Frozen backbone, pooled stage features (cached), L2 logistic regression."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsp.config import ConfigError, require_choice, require_positive
from wsp.tasks.common import TRANSFER, load_pretrained, make_datamodule
from wsp.utils.loggers import build_loggers, log_metrics


def run(cfg: DictConfig) -> dict:
    from wsp.models.backbones import create_backbone
    from wsp.models.features import STAGES, cache_key, cached_features, extract
    from wsp.models.probe import accuracy, select_and_fit

    t = cfg.task
    require_positive(
        cfg, "task.max_iter", "task.holdout_fraction", *[f"task.l2_grid.{i}" for i in range(len(t.l2_grid))]
    )
    stages = list(t.layers)
    for i in range(len(stages)):
        require_choice(cfg, f"task.layers.{i}", tuple(STAGES))
    try:
        backbone = create_backbone(cfg.model.name, **cfg.model.kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    load_pretrained(cfg, backbone)
    datamodule = make_datamodule(cfg, TRANSFER)
    data = {
        k: v
        for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
        if k not in ("batch_size", "num_workers")
    }
    key = cache_key(weights=cfg.backbone.weights, init_seed=None if cfg.backbone.weights else cfg.seed,
                    model=cfg.model.name, kwargs=OmegaConf.to_container(cfg.model.kwargs), data=data, stages=stages)  # fmt: skip
    folder = Path(t.feature_cache) / key
    loaders = datamodule.feature_loaders()
    (train_x, train_y, _), (val_x, val_y, _) = (
        cached_features(folder, split, extract(backbone, loaders[split], stages, desc=f"features ({split})"))
        for split in ("train", "val")
    )
    metrics, holdout_scores = {}, {}
    for stage in stages:
        probe, scores = select_and_fit(train_x[stage], train_y, datamodule.num_classes, list(t.l2_grid),
                                       t.holdout_fraction, cfg.seed, t.max_iter)  # fmt: skip
        metrics[f"probe/{stage}/top1"] = accuracy(probe, val_x[stage], val_y, k=1)
        metrics[f"probe/{stage}/top5"] = accuracy(probe, val_x[stage], val_y, k=5)
        metrics[f"probe/{stage}/l2"] = probe.l2
        holdout_scores[stage] = {str(k): v for k, v in scores.items()}
    main = "res5" if "res5" in stages else stages[-1]  # the paper's feature: the last stage, pooled
    metrics.update({f"probe/{m}": metrics[f"probe/{main}/{m}"] for m in ("top1", "top5", "l2")})
    log_metrics(build_loggers(cfg), metrics)
    return {
        **metrics,
        "holdout_top1_by_l2": holdout_scores,
        "train_images": len(train_y),
        "val_images": len(val_y),
        "feature_dims": {stage: train_x[stage].shape[1] for stage in stages},
        "feature_cache": str(folder),
        "weights": cfg.backbone.weights,
    }
