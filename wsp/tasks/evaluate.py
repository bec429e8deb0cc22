"""task=evaluate: a classifier with its own head (e.g. the released WSL-Images weights fine-tuned on
ImageNet-1k) on a labelled val split, preprocessed as the model's timm config says (crop_pct), over
every device of the job, each val image counted once."""

from __future__ import annotations

from omegaconf import DictConfig

from wsp.config import ConfigError, require
from wsp.tasks.common import TRANSFER, make_datamodule, make_predictor


def run(cfg: DictConfig) -> dict:
    from wsp.models.backbones import check_model_name, load_state, read_state_dict
    from wsp.models.classifier import Classifier

    weights = require(cfg, "backbone.weights")
    try:
        check_model_name(cfg.model.name)
        state = read_state_dict(weights)  # read once: released classifiers are up to 3.3 GB
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if "fc.weight" not in state:
        raise ConfigError(
            f"backbone.weights={weights}: no classifier (fc.weight); evaluate needs a model with its head"
        )
    classes = state["fc.weight"].shape[0]
    datamodule = make_datamodule(cfg, TRANSFER)
    if datamodule.num_classes != classes:
        raise ConfigError(
            f"backbone.weights={weights}: a {classes}-class head for {datamodule.num_classes} classes of "
            f"data={cfg.data.name}"
        )
    model = Classifier(cfg.model.name, classes, dict(cfg.optim), model_kwargs=dict(cfg.model.kwargs),
                       channels_last=cfg.model.channels_last)  # fmt: skip
    try:
        load_state(model.backbone, state, weights)  # the backbone leaves the head out
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model.head.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    (final,) = make_predictor(cfg).validate(model, datamodule=datamodule, verbose=False)
    metrics = {
        f"evaluate/{k.removeprefix('val/')}": v
        for k, v in final.items()
        if k not in ("val/loss", "val/images")
    }
    return {
        **metrics,
        "evaluate/val_images": int(final["val/images"]),
        "crop_pct": datamodule.eval_transform.crop_pct,
        "weights": weights,
    }
