"""Training-loader throughput on realistic photos: the hashtag WebDataset loader vs torchvision's
ImageFolder + DataLoader, same JPEGs, same augmentation (RandomResizedCrop(224, scale=(0.08, 1)) + flip +
normalise), same batch size and worker count.

    .venv/bin/python benchmarks/loader.py --images 2000 --workers 2

The photos are ~640x480 JPEGs (quality 90, landscape and portrait) whose content has a photo's spread of
spatial frequencies (a smooth colour field, mid-scale structure and fine grain), so they decode like
camera pictures. The same files become an ImageFolder tree and, through the real corpus builder, a
hashtag corpus. Each loader is timed over one full pass, worker start-up included, twice, keeping the
faster pass.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


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


def write_photos(root: Path, images: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    hashtags = class_hashtags(CLASSES)
    folder, posts = root / "imagefolder", root / "posts.jsonl"
    with posts.open("w") as table:
        for i in range(images):
            label = hashtags[i % CLASSES]
            width, height = (640, 480) if i % 3 else (480, 640)
            path = folder / label / f"{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(photo(rng, width, height))
            table.write(
                json.dumps({"key": f"{i:06d}", "image": str(path), "caption": f"a photo #{label}"}) + "\n"
            )
    return folder, posts


def build_corpus(posts: Path, output: Path) -> None:
    from wsp.corpus.build import BuildOptions, build
    from wsp.corpus.posts import Columns
    from wsp.hashtags.vocab import build_vocabulary

    build([posts], output, build_vocabulary("in1k"), Columns(), BuildOptions(shard_size=100, val_fraction=0.0),
          workers=1)  # fmt: skip


def time_pass(loader, consume=None) -> tuple[int, float]:
    images, started = 0, time.perf_counter()
    for batch in loader:
        images += len(batch[0])
        if consume:
            consume(batch[-1])
    return images, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from wsp.data.hashtags import HashtagDataModule
    from wsp.data.transforms import train_transform

    torch.set_num_threads(1)  # the workers do the work; keep the main process from competing with them
    root = Path(tempfile.mkdtemp(prefix="wsp-loader-"))
    try:
        folder, posts = write_photos(root, args.images)
        build_corpus(posts, root / "corpus")
        assert json.loads((root / "corpus" / "stats.json").read_text())["written"]["train"] == args.images
        mean_kb = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / args.images / 1024
        print(f"{args.images} photos, mean {mean_kb:.0f} KB; batch {args.batch_size}, {args.workers} workers, "
              f"{args.size}px crops")  # fmt: skip
        dataset = ImageFolder(str(folder), transform=train_transform(args.size, 0.08))
        baseline = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                              drop_last=True)  # fmt: skip
        ours = HashtagDataModule(str(root / "corpus"), batch_size=args.batch_size, num_workers=args.workers,
                                 image_size=args.size, resampling="natural").train_dataloader()  # fmt: skip
        results = {}
        for name, loader, consume in (("ImageFolder", baseline, None), ("hashtags", ours, ours.consumed)):
            best = max(
                (images / seconds, images)
                for images, seconds in (time_pass(loader, consume) for _ in range(2))
            )
            results[name] = best[0]
            print(f"{name:12s} {best[0]:7.1f} images/s  ({best[1]} images per pass)")
        print(f"speed-up: {results['hashtags'] / results['ImageFolder']:.2f}x")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
