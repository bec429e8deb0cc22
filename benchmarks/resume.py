"""What a resume and a virtual-epoch boundary cost the training stream, against how far into a pass it is.

    .venv/bin/python benchmarks/resume.py                       # 1,000 shards, 200,000 samples, 2 workers
    .venv/bin/python benchmarks/resume.py --shards 200 --samples 40000

Writes a corpus of small JPEG samples (`--shards` train shards of `--samples` in all, Zipfian labels),
then, for each resume offset (1%, 50%, 99% of a pass), starts a fresh process that builds the
DataModule, restores a stream state placing every stream that far into its pass, and takes the first
batch: the time from process start (interpreter and imports included) to that batch, best of
`--repeats`. Then the boundary stall: one process iterates several short virtual epochs (no model, no
validation) and compares the gap between an epoch's last batch and the next epoch's first with the
median gap between batches.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = 100


def write_corpus(root: Path, shards: int, samples: int) -> None:
    from wsp.corpus.shards import ShardSink

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(16):  # a few distinct small images, reused: the stream's cost is reading, not content
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=80)
        jpegs.append(buffer.getvalue())
    zipf = 1.0 / np.arange(1, LABELS + 1)
    labels = rng.choice(LABELS, size=samples, p=zipf / zipf.sum())
    sizes = {}
    per_shard = samples // shards
    for shard in range(shards):
        sink = ShardSink(root, f"train-{shard:05d}", per_shard)
        for i in range(shard * per_shard, (shard + 1) * per_shard):
            sink.write(
                {"__key__": f"s{i:08d}", "jpg": jpegs[i % len(jpegs)], "json": {"labels": [int(labels[i])]}}
            )
        sizes.update(sink.close())
    counts = np.bincount(labels[: shards * per_shard], minlength=LABELS)
    vocab = {"labels": [{"name": f"label{k}", "train_frequency": float(counts[k])} for k in range(LABELS)]}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "sizes.json").write_text(json.dumps(sizes))


def datamodule(corpus: str, workers: int, epoch_images: int | None = None):
    from wsp.data.hashtags import HashtagDataModule

    return HashtagDataModule(corpus, batch_size=32, num_workers=workers, image_size=32, resampling="sqrt",
                             epoch_images=epoch_images)  # fmt: skip


def first_batch_after_resume(corpus: str, workers: int, fraction: float, started: float) -> None:
    """Child process: resume every stream `fraction` into its pass, print seconds since `started`."""
    loader = datamodule(corpus, workers).train_dataloader()
    state = loader.state_dict()
    for stream in range(loader.num_streams):
        blocks = len(loader.streams.plan(stream, 0))
        state["positions"][stream] = [0, min(blocks - 1, int(fraction * blocks)), 7]
    loader.load_state_dict(state)
    next(iter(loader))
    print(time.time() - started)


def boundary_stall(corpus: str, workers: int, epochs: int) -> tuple[float, float]:
    """(median gap between batches, median gap across an epoch boundary), in seconds."""
    loader = datamodule(corpus, workers, epoch_images=40 * 32).train_dataloader()
    gaps, boundary = [], []
    last = None
    for epoch in range(epochs):
        for index, batch in enumerate(loader):
            now = time.perf_counter()
            if last is not None and epoch > 0:  # the first epoch includes worker start-up
                (boundary if index == 0 else gaps).append(now - last)
            last = now
            loader.consumed(batch[-1])
    return statistics.median(gaps), statistics.median(boundary)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # corpus, fraction, start time
    args = parser.parse_args()
    if args.child:
        first_batch_after_resume(args.child[0], args.workers, float(args.child[1]), float(args.child[2]))
        return
    root = Path(tempfile.mkdtemp(prefix="wsp-resume-"))
    try:
        written = time.perf_counter()
        write_corpus(root, args.shards, args.samples)
        print(f"{args.shards} shards, {args.samples} samples ({time.perf_counter() - written:.0f} s to write); "
              f"{args.workers} workers, batch 32")  # fmt: skip
        print("| resumed at | seconds from process start to the first batch |\n|---|---|")
        for fraction in (0.01, 0.5, 0.99):
            times = []
            for _ in range(args.repeats):
                child = [sys.executable, __file__, "--workers", str(args.workers), "--child", str(root),
                         str(fraction), str(time.time())]  # fmt: skip
                times.append(float(subprocess.run(child, capture_output=True, text=True, check=True).stdout))
            print(f"| {fraction:.0%} of a pass | {min(times):.2f} |")
        gap, stall = boundary_stall(str(root), args.workers, epochs=12)
        print(f"\nbatch gap: median {1000 * gap:.1f} ms; across a virtual-epoch boundary: median {1000 * stall:.1f} ms "
              f"({stall / gap:.2f}x)")  # fmt: skip
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
