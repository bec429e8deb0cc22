"""task=probe: feature transfer. Frozen backbone, pooled stage features (extracted over every device of
the job and cached), L2 logistic regression fitted out of core on the first device."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsp.config import ConfigError, require_choice, require_positive
from wsp.tasks.common import TRANSFER, load_pretrained, make_datamodule, make_predictor
from wsp.utils.loggers import build_loggers, log_metrics


def run(cfg: DictConfig) -> dict:
    import torch

    from wsp.models.backbones import create_backbone
    from wsp.models.features import STAGES, FeatureSet, cache_key, extract_features
    from wsp.models.probe import StageFeatures, accuracy, select_and_fit, topk_correct

    t = cfg.task
    require_choice(cfg, "task.matmul_dtype", ("float32", "bfloat16"))
    require_positive(
        cfg,
        "task.max_iter",
        "task.holdout_fraction",
        "task.shard_images",
        *[f"task.l2_grid.{i}" for i in range(len(t.l2_grid))],
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
        if k not in ("batch_size", "num_workers", "duplicates")
    }
    key = cache_key(weights=cfg.backbone.weights, init_seed=None if cfg.backbone.weights else cfg.seed,
                    model=cfg.model.name, kwargs=OmegaConf.to_container(cfg.model.kwargs), data=data,
                    stages=stages, shard_images=t.shard_images)  # fmt: skip
    folder = Path(t.feature_cache) / key
    trainer = make_predictor(cfg)
    splits = {split: datamodule.dataset(split, augment=False) for split in ("train", "val")}
    rank = extract_features(trainer, backbone, stages, folder, splits, t.shard_images, datamodule.batch_size,
                            datamodule.num_workers)  # fmt: skip
    if rank > 0:  # every rank extracted its share; the first fits the probe on its device
        return {}
    device = trainer.strategy.root_device
    train, val = FeatureSet(folder, "train"), FeatureSet(folder, "val")
    metrics, holdout_scores = {}, {}
    for stage in stages:
        try:
            probe, scores = select_and_fit(StageFeatures(train, stage), datamodule.num_classes, list(t.l2_grid),
                                           t.holdout_fraction, cfg.seed, t.max_iter, device,
                                           getattr(torch, t.matmul_dtype))  # fmt: skip
        except ValueError as err:
            raise ConfigError(str(err)) from None
        val_features = StageFeatures(val, stage)
        for k in (1, 5):
            metrics[f"probe/{stage}/top{k}"] = accuracy(probe, val_features, k)
        metrics[f"probe/{stage}/l2"] = probe.l2
        holdout_scores[stage] = {str(k): v for k, v in scores.items()}
        if datamodule.listed is not None:  # the paper's lower bound: each listed duplicate counts as an error
            listed = datamodule.listed[val.indices]
            correct = topk_correct(probe, val_features, 1) & ~listed
            metrics[f"probe/{stage}/top1_lower_bound"] = 100 * correct.float().mean().item()
            metrics["probe/duplicates_listed"] = int(listed.sum())
    main = "res5" if "res5" in stages else stages[-1]  # the paper's feature: the last stage, pooled
    shown = ("top1", "top5", "l2", "top1_lower_bound")
    metrics.update(
        {f"probe/{m}": metrics[f"probe/{main}/{m}"] for m in shown if f"probe/{main}/{m}" in metrics}
    )
    log_metrics(build_loggers(cfg), metrics)
    return {
        **metrics,
        "holdout_top1_by_l2": holdout_scores,
        "probe/train_images": len(train),
        "probe/val_images": len(val),
        "probe/unreadable_images": len(splits["train"]) + len(splits["val"]) - len(train) - len(val),
        "feature_dims": train.dims,
        "feature_cache": str(folder),
        "weights": cfg.backbone.weights,
    }
