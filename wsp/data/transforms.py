"""The paper's augmentation: random-resized crop + horizontal flip for training; resize and a single
centre crop for evaluation. Mean/std are ImageNet's, as for the released models.

Two implementations of the same recipe:
- `train_transform` / `eval_transform`: torchvision, for decoded images (ImageFolder datasets).
- `RandomCropFlip` / `CentreCrop`: for the hashtag stream. They take a lazily opened PIL image and
  choose the crop from its header size before decoding, so a JPEG whose crop spans >= 2x the output
  size decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's `draft`). Their randomness comes
  from a `random.Random` the caller seeds per sample, which makes every sample's crop reproducible
  wherever and whenever it is decoded (the basis of exact mid-epoch resume).
"""

from __future__ import annotations

import math
import random

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T
from torchvision.transforms import functional as F

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


def decode_box(image: Image.Image, box: Box, size: int) -> Image.Image:
    """Decode `box` of a lazily opened image, resized to size x size; JPEGs decode at reduced scale
    when the box keeps at least `size` pixels per side there."""
    left, top, w, h = box
    reduction = 1
    while reduction < 8 and min(w, h) >= 2 * reduction * size:
        reduction *= 2
    full_width, full_height = image.size
    if reduction > 1:
        image.draft("RGB", (math.ceil(full_width / reduction), math.ceil(full_height / reduction)))
    sx, sy = image.size[0] / full_width, image.size[1] / full_height
    return image.convert("RGB").resize(
        (size, size), Image.Resampling.BILINEAR, box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    )


def to_normalised_tensor(image: Image.Image) -> torch.Tensor:
    return F.normalize(F.to_tensor(image), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


class RandomCropFlip:
    """Training: random-resized crop to `size`, then a horizontal flip with probability 1/2."""

    def __init__(self, size: int, min_scale: float = 0.08):
        self.size, self.min_scale = size, min_scale

    def __call__(self, image: Image.Image, rng: random.Random) -> torch.Tensor:
        crop = decode_box(image, random_resized_box(*image.size, self.min_scale, rng), self.size)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_normalised_tensor(crop)


class CentreCrop:
    """Evaluation: the centred square of side crop_pct x the short side, resized to `size` (the same
    pixels as resizing the short side to size / crop_pct and centre-cropping `size`)."""

    def __init__(self, size: int, crop_pct: float = CROP_PCT):
        self.size, self.crop_pct = size, crop_pct

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        width, height = image.size
        side = min(width, height) * self.crop_pct
        box = ((width - side) / 2, (height - side) / 2, side, side)
        return to_normalised_tensor(decode_box(image, box, self.size))
