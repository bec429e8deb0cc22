"""The paper's augmentation: random-resized crop + horizontal flip for training; resize and a single
centre crop for evaluation. Mean/std are ImageNet's, as for the released models.

Two implementations of the same recipe:
- `train_transform` / `eval_transform`: torchvision, for decoded images (ImageFolder datasets).
- `RandomCropFlip` / `CentreCrop`: for the hashtag stream. They take a lazily opened PIL image and
  choose the crop from its header size before decoding, so a JPEG whose crop spans >= 2x the output
  size decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's `draft`). They return uint8
  tensors, and `normalise` standardises a batch once it is on its device. Their randomness comes
  from a `random.Random` the caller seeds per sample, which makes every sample's crop reproducible
  wherever and whenever it is decoded (the basis of exact mid-epoch resume).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision import transforms as T

CROP_PCT = 0.875  # eval: resize the short side to size / 0.875, then centre-crop `size`
ASPECT_RANGE = (3 / 4, 4 / 3)


def train_transform(size: int, min_scale: float = 0.08) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=ASPECT_RANGE, antialias=True),
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


Box = tuple[float, float, float, float]  # left, top, width, height in source pixels


def random_resized_box(width: int, height: int, min_scale: float, rng: random.Random) -> Box:
    """torchvision's RandomResizedCrop parameters: area in [min_scale, 1], log-uniform aspect ratio."""
    log_lo, log_hi = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
    for _ in range(10):
        area = width * height * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    w, h = width, height  # fallback: the largest centred crop within the aspect range
    if width / height < ASPECT_RANGE[0]:
        h = round(w / ASPECT_RANGE[0])
    elif width / height > ASPECT_RANGE[1]:
        w = round(h * ASPECT_RANGE[1])
    return (width - w) // 2, (height - h) // 2, w, h


def decode_box(image: Image.Image, box: Box, size: int) -> torch.Tensor:
    """Decode `box` of a lazily opened image, resized to size x size, as a uint8 CHW tensor.

    JPEGs decode at reduced scale when the box keeps at least `size` pixels per side there. The resize
    is torch's antialiased bilinear kernel for uint8 images: the same pixels as PIL's (mean difference
    under 0.05 of 255) in a quarter of the time."""
    left, top, w, h = box
    reduction = 1
    while reduction < 8 and min(w, h) >= 2 * reduction * size:
        reduction *= 2
    full_width, full_height = image.size
    if reduction > 1:
        image.draft("RGB", (math.ceil(full_width / reduction), math.ceil(full_height / reduction)))
    if image.mode != "RGB":  # (converting an RGB image would only copy it)
        image = image.convert("RGB")
    sx, sy = image.size[0] / full_width, image.size[1] / full_height
    pixels = torch.from_numpy(np.array(image))  # H x W x 3
    x0, y0 = round(left * sx), round(top * sy)
    x1, y1 = max(x0 + 1, round((left + w) * sx)), max(y0 + 1, round((top + h) * sy))
    crop = pixels[y0:y1, x0:x1].permute(2, 0, 1).unsqueeze(0)  # 1 x 3 x h x w, channels-last in memory
    return nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]


class StandardisedOnDevice:
    """DataModule mixin: batches travel as uint8 and are standardised once on their device."""

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, *rest = batch
        return normalise(images), *rest


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float, scaled to [0, 1] and standardised with ImageNet's mean and std."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


class RandomCropFlip:
    """Training: random-resized crop to `size`, then a horizontal flip with probability 1/2."""

    def __init__(self, size: int, min_scale: float = 0.08):
        self.size, self.min_scale = size, min_scale

    def __call__(self, image: Image.Image, rng: random.Random) -> torch.Tensor:
        crop = decode_box(image, random_resized_box(*image.size, self.min_scale, rng), self.size)
        return crop.flip(-1) if rng.random() < 0.5 else crop


class CentreCrop:
    """Evaluation: the centred square of side crop_pct x the short side, resized to `size` (the same
    pixels as resizing the short side to size / crop_pct and centre-cropping `size`)."""

    def __init__(self, size: int, crop_pct: float = CROP_PCT):
        self.size, self.crop_pct = size, crop_pct

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        width, height = image.size
        side = min(width, height) * self.crop_pct
        box = ((width - side) / 2, (height - side) / 2, side, side)
        return decode_box(image, box, self.size)
