"""Training-loader throughput on realistic photos: the hashtag WebDataset loader vs torchvision's
ImageFolder + DataLoader, same JPEGs, same augmentation (RandomResizedCrop(224, scale=(0.08, 1)) + flip +
normalise), same batch size and worker count.

    .venv/bin/python benchmarks/loader.py --images 2000 --workers 2

The photos are ~640x480 JPEGs (quality 90, landscape and portrait; wsp.corpus.photos) that decode like
camera pictures. The same files become an ImageFolder tree and, through the real corpus builder, a
hashtag corpus. Each loader is timed over one full pass, worker start-up included, twice, keeping the
faster pass.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def build_corpus(posts: Path, output: Path) -> None:
    from wsp.corpus.build import BuildOptions, build
    from wsp.corpus.posts import Columns
    from wsp.hashtags.vocab import build_vocabulary

    build([posts], output, build_vocabulary("in1k"), Columns(), BuildOptions(shard_size=100, val_fraction=0.0),
          workers=1)  # fmt: skip


def time_pass(loader) -> tuple[int, float]:
    images, started = 0, time.perf_counter()
    for batch in loader:
        images += len(batch[0])
        if hasattr(loader, "consumed"):  # the hashtag loader: training took the batch
            loader.consumed(batch[3], batch[4], loader.steps)
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

    from wsp.corpus.photos import write_photos
    from wsp.data.hashtags import HashtagDataModule
    from wsp.data.transforms import train_transform

    torch.set_num_threads(1)  # the workers do the work; keep the main process from competing with them
    root = Path(tempfile.mkdtemp(prefix="wsp-loader-"))
    try:
        folder, posts = write_photos(root, args.images)
        folder = folder / "train"
        build_corpus(posts, root / "corpus")
        assert json.loads((root / "corpus" / "stats.json").read_text())["written"]["train"] == args.images
        mean_kb = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / args.images / 1024
        print(f"{args.images} photos, mean {mean_kb:.0f} KB; batch {args.batch_size}, {args.workers} workers, "
              f"{args.size}px crops")  # fmt: skip
        dataset = ImageFolder(str(folder), transform=train_transform(args.size, 0.08))
        baseline = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                              drop_last=True)  # fmt: skip
        ours = HashtagDataModule(str(root / "corpus"), batch_size=args.batch_size, num_workers=args.workers,
                                 image_size=args.size, resampling="natural")  # fmt: skip
        results = {}
        # a fresh loader of each kind per pass: worker start-up counts alike (the hashtag loader's workers
        # would otherwise run on from one pass into the next)
        for name, make_loader in (("ImageFolder", lambda: baseline), ("hashtags", ours.train_dataloader)):
            best = max(
                (images / seconds, images) for images, seconds in (time_pass(make_loader()) for _ in range(2))
            )
            results[name] = best[0]
            print(f"{name:12s} {best[0]:7.1f} images/s  ({best[1]} images per pass)")
        print(f"speed-up: {results['hashtags'] / results['ImageFolder']:.2f}x")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
