"""ResNeXt backbones through timm: one factory over timm's registry, plus the variants timm lacks.

Registered here (so `timm.create_model` builds them once `wsp.models` is imported):
  - resnext101_32x48d: the paper's largest model (blocks 3-4-23-3, cardinality 32, group width 48);
  - wsp_resnext_tiny / wsp_resnext_small: the same Bottleneck/cardinality family, shallow and narrow,
    for CPU demos and tests.
timm's `ig_resnext101_*` aliases all resolve to the 32x8d weights, so they are refused.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet


def _cfg(size: int) -> dict:
    """What evaluating the model correctly needs (timm's pretrained_cfg): input size, crop, mean/std."""
    return dict(url="", num_classes=1000, input_size=(3, size, size), pool_size=(size // 32, size // 32),
                crop_pct=0.875, interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv="conv1", classifier="fc")  # fmt: skip


# timm's register_model reads this module's `default_cfgs`.
default_cfgs = generate_default_cfgs({
    "resnext101_32x48d.untrained": _cfg(224),
    "wsp_resnext_tiny.untrained": _cfg(64),
    "wsp_resnext_small.untrained": _cfg(64),
})  # fmt: skip


def _resnext(variant: str, pretrained: bool, **kwargs) -> ResNet:
    return build_model_with_cfg(ResNet, variant, pretrained, **kwargs)


@register_model
def resnext101_32x48d(pretrained: bool = False, **kwargs) -> ResNet:
    args = dict(block=Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=48)
    return _resnext("resnext101_32x48d", pretrained, **dict(args, **kwargs))


@register_model
def wsp_resnext_tiny(pretrained: bool = False, **kwargs) -> ResNet:
    args = dict(block=Bottleneck, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), cardinality=8, base_width=8,
                stem_width=32)  # fmt: skip
    return _resnext("wsp_resnext_tiny", pretrained, **dict(args, **kwargs))


@register_model
def wsp_resnext_small(pretrained: bool = False, **kwargs) -> ResNet:
    args = dict(block=Bottleneck, layers=(2, 2, 2, 2), channels=(32, 64, 128, 256), cardinality=8, base_width=8,
                stem_width=32)  # fmt: skip
    return _resnext("wsp_resnext_small", pretrained, **dict(args, **kwargs))


def check_model_name(name: str) -> None:
    if name.startswith("ig_"):
        raise ValueError(
            f"model.name={name}: timm's ig_* aliases all resolve to 32x8d weights; use resnext101_32xCd"
        )
    if not timm.is_model(name):
        known = ", ".join(timm.list_models("*resnext*"))
        raise ValueError(f"model.name={name}: not a timm model; ResNeXt choices include {known}")


def create_backbone(name: str, **kwargs) -> torch.nn.Module:
    """A timm model without classifier: forward gives the pooled features (`.num_features` wide)."""
    check_model_name(name)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def read_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Weights from an exported .safetensors file, a Lightning checkpoint, or a torch .pth/.bin file
    (torch-hub WSL-Images, timm's `fb_wsl_*` files): nesting under `state_dict`/`model` is unwrapped and
    a DDP `module.` prefix removed; a Lightning module's `backbone.` weights are taken alone."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"backbone.weights={checkpoint}: no such file")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for nesting in ("state_dict", "model"):
        if isinstance(state.get(nesting), dict):
            state = state[nesting]
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # a wsp Lightning checkpoint: its backbone alone
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_weights(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load strictly: a mismatch is an error naming the differing keys, never a partial load."""
    load_state(model, read_state_dict(checkpoint), checkpoint)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], checkpoint: str | Path) -> None:
    """`load_weights` for a state dict already read from `checkpoint`. A model built without a classifier
    (a backbone) leaves a released classifier's head out of the file."""
    if getattr(model, "num_classes", None) == 0:
        head = f"{model.pretrained_cfg.get('classifier', 'fc')}."
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    unfit = f"backbone.weights={checkpoint} does not fit model {model.pretrained_cfg.get('architecture', '')}"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        raise ValueError(f"{unfit}: {str(err).splitlines()[1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{unfit}: missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def export_backbone(backbone: torch.nn.Module, path: str | Path) -> Path:
    """Save the backbone as a plain timm-keyed safetensors file."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return path
