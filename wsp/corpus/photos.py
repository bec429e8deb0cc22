"""Photo-like posts for throughput checks (benchmarks/loader.py, task=preflight): ~640x480 JPEGs of about
100 KB whose content has a photo's spread of spatial frequencies (a smooth colour field, mid-scale
structure and fine grain), so they decode like camera pictures, each captioned with one ImageNet-1k
hashtag. The same files are laid out as an ImageFolder tree (train/ and val/) and listed in a posts table.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def photo(rng: np.random.Generator, width: int, height: int) -> bytes:
    def field(cells_x, cells_y, sigma):
        small = rng.normal(0, sigma, (cells_y, cells_x, 3)).astype(np.float32)
        channels = [np.asarray(Image.fromarray(small[..., c], mode="F").resize((width, height), Image.BICUBIC))
                    for c in range(3)]  # fmt: skip
        return np.stack(channels, axis=-1)

    pixels = 128 + field(8, 6, 60) + field(width // 8, height // 8, 25) + rng.normal(0, 8, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def class_hashtags(count: int) -> list[str]:
    """Hashtags of `count` distinct IN-1k labels, so every photo's post keeps its label in the corpus."""
    from wsp.hashtags.vocab import build_vocabulary

    first_tag_of_label = {}
    for tag, labels in sorted(build_vocabulary("in1k").hashtag_to_labels.items()):
        if len(labels) == 1 and tag.isalpha():
            first_tag_of_label.setdefault(labels[0], tag)
    return list(first_tag_of_label.values())[:count]


def write_photos(root: Path, images: int, classes: int = 10, val_every: int = 0, long_side: int = 640):
    """`images` photos in `root/imagefolder/{train,val}/<hashtag>/` (one in `val_every` to val; 0: none)
    and `root/posts.jsonl` listing the train ones. Returns (imagefolder, posts table)."""
    rng = np.random.default_rng(0)
    hashtags = class_hashtags(classes)
    folder, posts = Path(root) / "imagefolder", Path(root) / "posts.jsonl"
    posts.parent.mkdir(parents=True, exist_ok=True)
    short_side = long_side * 3 // 4
    with posts.open("w") as table:
        for i in range(images):
            label = hashtags[i % classes]
            width, height = (long_side, short_side) if i % 3 else (short_side, long_side)
            held_out = val_every and (i // classes) % val_every == val_every - 1  # every class alike
            split = "val" if held_out else "train"
            path = folder / split / label / f"{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(photo(rng, width, height))
            if split == "train":
                table.write(
                    json.dumps({"key": f"{i:06d}", "image": str(path), "caption": f"a photo #{label}"}) + "\n"
                )
    return folder, posts
