"""Model size and cost: parameters and multiply-adds, counted on the meta device (no memory, no time)."""

from __future__ import annotations

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from wsp.models.backbones import check_model_name

# The paper's Section 4 table: ResNeXt-101 32xCd with a 1,000-class classifier at 224 x 224.
PAPER = {
    "resnext101_32x4d": (43e6, 8e9),
    "resnext101_32x8d": (88e6, 16e9),
    "resnext101_32x16d": (193e6, 36e9),
    "resnext101_32x32d": (466e6, 87e9),
    "resnext101_32x48d": (829e6, 153e9),
}


def model_stats(name: str, image_size: int, num_classes: int) -> tuple[int, int]:
    """(parameters, multiply-adds of one image's forward pass) of timm model `name`."""
    check_model_name(name)
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=num_classes).eval()  # eval: a 1x1 map at small sizes
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, image_size, image_size))
    return sum(
        p.numel() for p in model.parameters()
    ), counter.get_total_flops() // 2  # a multiply-add is 2 flops
