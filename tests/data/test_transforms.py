import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from wsp.data.transforms import (
    CentreCrop,
    RandomCropFlip,
    decode_box,
    eval_transform,
    normalise,
    random_resized_box,
)


def jpeg(width=640, height=480) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.uniform(0, 255, (height // 80, width // 80, 3)).astype(np.uint8)  # photo-like smooth content
    buffer = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_crops_are_uint8_and_reproducible_from_the_rng():
    data, transform = jpeg(), RandomCropFlip(64, 0.08)
    first = [transform(Image.open(io.BytesIO(data)), random.Random(i)) for i in range(8)]
    again = [transform(Image.open(io.BytesIO(data)), random.Random(i)) for i in range(8)]
    assert all(c.dtype == torch.uint8 and c.shape == (3, 64, 64) for c in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len({c.sum().item() for c in first}) == 8  # different seeds, different crops


def test_crop_boxes_follow_torchvisions_scale_and_aspect_ranges():
    rng = random.Random(0)
    for _ in range(500):
        left, top, w, h = random_resized_box(640, 480, 0.08, rng)
        assert left >= 0 and left + w <= 640 and top >= 0 and top + h <= 480
        assert 0.08 * 0.98 <= w * h / (640 * 480) <= 1 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_reduced_decode_gives_the_pixels_of_a_full_decode():
    data = jpeg()
    box = (20, 10, 600, 460)  # spans > 2 x 128: decoded at half scale
    reduced = decode_box(Image.open(io.BytesIO(data)), box, 128).float()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    full = torch.from_numpy(np.array(image.resize((128, 128), Image.BILINEAR, box=(20, 10, 620, 470))))
    assert (reduced - full.permute(2, 0, 1).float()).abs().mean() < 2.0  # of 255


def test_centre_crop_matches_resize_then_centre_crop():
    data = jpeg()
    ours = normalise(CentreCrop(64)(Image.open(io.BytesIO(data)))[None])[0]
    reference = eval_transform(64)(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (ours - reference).abs().mean() < 0.15  # standardised units; one resize vs two: ~0.09 apart


def test_normalise_standardises_like_torchvision():
    from torchvision import transforms as T

    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    reference = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(images.float() / 255)
    assert normalise(images) == pytest.approx(reference, abs=1e-5)
