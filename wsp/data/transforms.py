"""The paper's augmentation: random-resized crop + horizontal flip for training; resize and a single
centre crop for evaluation. Mean/std are ImageNet's, as for the released models."""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

CROP_PCT = 0.875  # eval: resize the short side to size / 0.875, then centre-crop `size`


def train_transform(size: int, min_scale: float = 0.08) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])  # fmt: skip


def eval_transform(size: int, crop_pct: float = CROP_PCT) -> T.Compose:
    return T.Compose([
        T.Resize(round(size / crop_pct), antialias=True),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])  # fmt: skip
