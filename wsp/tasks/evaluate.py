"""task=evaluate: a classifier with its own head (e.g. the released WSL-Images weights fine-tuned on
ImageNet-1k) on a labelled val split, preprocessed as the model's timm config says (crop_pct)."""

from __future__ import annotations

import timm
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from wsp.config import ConfigError, require
from wsp.tasks.common import TRANSFER, make_datamodule


@torch.no_grad()
def run(cfg: DictConfig) -> dict:
    from wsp.data.transforms import normalise
    from wsp.models.backbones import check_model_name, load_state, read_state_dict
    from wsp.models.losses import topk_hits

    weights = require(cfg, "backbone.weights")
    try:
        check_model_name(cfg.model.name)
        state = read_state_dict(weights)  # read once: released classifiers are up to 3.3 GB
        head = state.get("fc.weight")
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if head is None:
        raise ConfigError(
            f"backbone.weights={weights}: no classifier (fc.weight); evaluate needs a model with its head"
        )
    model = timm.create_model(cfg.model.name, pretrained=False, num_classes=head.shape[0])
    try:
        load_state(model, state, weights)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    datamodule = make_datamodule(cfg, TRANSFER)
    if datamodule.num_classes != head.shape[0]:
        raise ConfigError(
            f"backbone.weights={weights}: a {head.shape[0]}-class head for {datamodule.num_classes} classes of "
            f"data={cfg.data.name}"
        )
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" and torch.cuda.is_available() else "cpu")
    model.eval().to(device)
    hits = {1: 0.0, 5: 0.0}
    images_seen = skipped = 0
    for images, labels, skipped_here, *_ in tqdm(datamodule.val_dataloader(), desc="evaluate", unit="batch"):
        logits = model(normalise(images.to(device))).float().cpu()
        target = torch.nn.functional.one_hot(labels, head.shape[0]).float()
        for k in hits:
            hits[k] += topk_hits(logits, target, k).sum().item()
        images_seen += len(labels)
        skipped += int(skipped_here)
    return {
        "eval/top1": 100 * hits[1] / images_seen,
        "eval/top5": 100 * hits[5] / images_seen,
        "val_images": images_seen,
        "skipped_images": skipped,
        "crop_pct": datamodule.eval_transform.crop_pct,
        "weights": weights,
    }
