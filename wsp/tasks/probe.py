"""task=probe: feature transfer. Frozen backbone, pooled stage features (extracted over every device of
the job and cached), L2 logistic regression fitted out of core and data-parallel over the same devices:
each rank sums over its share of the feature shards. Every rank returns the same metrics; the first
writes them, and the fitted probes (`probe.safetensors`: per stage, weight, bias, mean and std)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsp.config import ConfigError, require_choice, require_positive
from wsp.tasks.common import TRANSFER, load_pretrained, make_datamodule, make_predictor
from wsp.utils.loggers import build_loggers, log_metrics


def run(cfg: DictConfig) -> dict:
    import torch

    from wsp.data.transfer import collate
    from wsp.models.backbones import create_backbone
    from wsp.models.features import STAGES, FeatureExtractor, FeatureSet, extract_features
    from wsp.models.probe import StageFeatures, accuracy, select_and_fit

    t = cfg.task
    require_choice(cfg, "task.matmul_dtype", ("float32", "bfloat16"))
    require_positive(
        cfg,
        "task.max_iter",
        "task.holdout_fraction",
        "task.shard_images",
        "task.tolerance",
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
    import timm

    identity = {"init_seed": None if cfg.backbone.weights else cfg.seed, "model": cfg.model.name,
                "kwargs": OmegaConf.to_container(cfg.model.kwargs), "data": data,
                "precision": str(cfg.trainer.precision), "timm": timm.__version__, "torch": torch.__version__}  # fmt: skip
    trainer = make_predictor(cfg)
    splits = {split: datamodule.dataset(split, augment=False) for split in ("train", "val")}
    extractor = FeatureExtractor(backbone, stages, Path(t.feature_cache), splits, identity, t.shard_images,
                                 datamodule.batch_size, datamodule.num_workers, collate)  # fmt: skip
    try:
        folder = extract_features(trainer, extractor, cfg.data.max_unreadable)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    num_classes, listed = datamodule.num_classes, datamodule.listed
    extractor.splits = None
    del datamodule, splits  # the path lists are not needed for the fit

    part, device = (trainer.global_rank, trainer.world_size), trainer.strategy.root_device
    train, val = FeatureSet(folder, "train", part), FeatureSet(folder, "val", part)
    metrics, holdout_scores, fits, probes = {}, {}, {}, {}
    for stage in stages:
        try:
            probe, scores, ends = select_and_fit(StageFeatures(train, stage, device), num_classes, list(t.l2_grid),
                                                 t.holdout_fraction, cfg.seed, t.max_iter, device,
                                                 getattr(torch, t.matmul_dtype), t.tolerance)  # fmt: skip
        except ValueError as err:
            raise ConfigError(str(err)) from None
        val_features = StageFeatures(val, stage, device)
        for k in (1, 5):
            metrics[f"probe/{stage}/top{k}"] = accuracy(probe, val_features, k)
        metrics[f"probe/{stage}/l2"] = probe.l2
        holdout_scores[stage] = {str(k): v for k, v in scores.items()}
        fits[stage] = {str(k): asdict(v) for k, v in ends.items()}
        probes.update(
            {f"{stage}.{name}": getattr(probe, name).cpu() for name in ("weight", "bias", "mean", "std")}
        )
        if listed is not None:  # the paper's lower bound: each listed duplicate counts as an error
            counted_wrong = listed[val.indices]
            metrics[f"probe/{stage}/top1_lower_bound"] = accuracy(
                probe, val_features, 1, counted_wrong=counted_wrong
            )
            metrics["probe/duplicates_listed"] = int(counted_wrong.sum())
    main = "res5" if "res5" in stages else stages[-1]  # the paper's feature: the last stage, pooled
    shown = ("top1", "top5", "l2", "top1_lower_bound")
    metrics.update(
        {f"probe/{m}": metrics[f"probe/{main}/{m}"] for m in shown if f"probe/{main}/{m}" in metrics}
    )
    if trainer.global_rank == 0:
        from safetensors.torch import save_file

        log_metrics(build_loggers(cfg), metrics)
        save_file(
            {k: v.contiguous() for k, v in probes.items()}, str(Path(cfg.output_dir) / "probe.safetensors")
        )
    return {
        **metrics,
        "holdout_top1_by_l2": holdout_scores,
        "fits": fits,
        "probe/train_images": len(train),
        "probe/val_images": len(val),
        "probe/unreadable_images": train.unreadable + val.unreadable,
        "feature_dims": train.dims,
        "feature_cache": str(folder),
        "weights": cfg.backbone.weights,
    }
