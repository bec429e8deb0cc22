"""The training stream at realistic sizes: resume cost against the offset into a pass, the stall at a
block end, peak memory per loader worker, and batch diversity on input sorted by label.

    .venv/bin/python benchmarks/stream.py                      # both shard sizes, 40,000 photos of ~100 KB
    .venv/bin/python benchmarks/stream.py --samples 20000 --shard-sizes 1000
    .venv/bin/python benchmarks/stream.py --diversity-only     # diversity from the index alone, 1M samples

The corpus: `--samples` photo-like JPEGs of ~100 KB (wsp.corpus.photos; a few hundred distinct images,
reused: the loader's cost is reading and decoding, not content) with Zipfian labels, written in label
order (a posts table sorted by hashtag gives the builder's shards this order), in shards of 1,000 and of
10,000 samples (the builder's default and img2dataset's). For each:
- resume: a fresh process builds the DataModule, restores a position 1%, 50% or 99% into a pass, and takes
  its first batch; seconds from process start (imports included), best of `--repeats`;
- block-end stall: one worker's batches (num_workers=0, batch 32, 224px crops) timed one by one around
  each of 3 block ends (resumed just before them); the batches whose items open a new block against the
  median batch;
- peak RSS of each of `--workers` DataLoader workers (VmHWM) after `--batches` batches, and of the main
  process;
- batch diversity: mean distinct labels per batch of 24 over a pass, against i.i.d. draws from the same
  resampled distribution, computed from the index (what the loader orders by). Copy mode is the builder's
  sorted shards; reference mode keeps img2dataset's 10,000-sample tars as they came (here: sorted too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = 1000
BATCH = 32


def zipf_labels(samples: int, rng: np.random.Generator) -> np.ndarray:
    zipf = 1.0 / np.arange(1, LABELS + 1)
    return np.sort(rng.choice(LABELS, size=samples, p=zipf / zipf.sum()))  # sorted: the worst input order


def write_photo_corpus(root: Path, samples: int, shard_size: int) -> None:
    from wsp.corpus.photos import photo
    from wsp.corpus.shards import write_labelled_corpus

    rng = np.random.default_rng(0)
    photos = [photo(rng, 640, 480) for _ in range(200)]
    labels = zipf_labels(samples, rng)
    sizes = [shard_size] * (samples // shard_size)
    write_labelled_corpus(root, ((f"s{i:09d}", photos[i % len(photos)], [int(labels[i])]) for i in range(samples)),
                          sizes, LABELS)  # fmt: skip


def datamodule(corpus: str, workers: int, **kw):
    from wsp.data.hashtags import HashtagDataModule

    return HashtagDataModule(
        corpus, batch_size=BATCH, num_workers=workers, image_size=224, resampling="sqrt", **kw
    )


def first_batch_after_resume(corpus: str, fraction: float, started: float) -> None:
    """Child process: resume `fraction` into pass 3, print seconds since `started`."""
    loader = datamodule(corpus, 0).train_dataloader()
    block = min(loader.sequence.blocks(3) - 1, int(fraction * loader.sequence.blocks(3)))
    loader.load_state_dict({**loader.state_dict(), "position": [3, block, 7], "items_consumed": 10**9})
    next(iter(loader))
    print(time.time() - started)


def resume_times(corpus: Path, repeats: int) -> dict[float, float]:
    times = {}
    for fraction in (0.01, 0.5, 0.99):
        runs = []
        for _ in range(repeats):
            child = [sys.executable, __file__, "--child", str(corpus), str(fraction), str(time.time())]
            runs.append(float(subprocess.run(child, capture_output=True, text=True, check=True).stdout))
        times[fraction] = min(runs)
    return times


def block_end_stall(corpus: Path, blocks: int = 3, batches: int = 8) -> tuple[float, float]:
    """(median batch seconds, median seconds of the batches that open a block) of one worker, resumed a few
    batches before each of the first `blocks` block ends."""
    plain, opening = [], []
    loader = datamodule(str(corpus), 0, epoch_images=10**9).train_dataloader()
    for block in range(blocks):
        end = len(loader.sequence.block(0, block)[0])
        loader.load_state_dict(
            {**loader.state_dict(), "position": [0, block, end - (batches // 2) * BATCH - 5]}
        )
        stream, last = iter(loader), time.perf_counter()
        for step in range(batches):
            batch = next(stream)
            now = time.perf_counter()
            if step:  # the first includes the resume
                (opening if (batch[4][:, 2] == 0).any() else plain).append(now - last)
            loader.consumed(batch[3], batch[4], step)
            last = now
    return statistics.median(plain), statistics.median(opening)


def peak_rss(corpus: Path, workers: int, batches: int) -> tuple[list[float], float]:
    """Peak resident memory (MiB) of each DataLoader worker, and of the main process."""
    loader = datamodule(str(corpus), workers, epoch_images=10**9).train_dataloader()
    stream = iter(loader)
    for step in range(batches):
        batch = next(stream)
        loader.consumed(batch[3], batch[4], step)
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == os.getpid()]
    return [_hwm(pid) for pid in children], _hwm(os.getpid())


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None


def _hwm(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def diversity(
    samples: int, shard_size: int, batch: int = 24, passes_blocks: int = 400
) -> tuple[float, float]:
    """(mean distinct labels per batch over the first `passes_blocks` blocks, i.i.d. expectation), from an
    index of `samples` label-sorted samples in shards of `shard_size` (no image bytes needed)."""
    from wsp.corpus.sampling import ImageWeights
    from wsp.corpus.shards import IndexRows, write_index
    from wsp.data.hashtags import CorpusIndex, ItemSequence

    labels = zipf_labels(samples, np.random.default_rng(0))
    root = Path(tempfile.mkdtemp(prefix="wsp-diversity-"))
    try:
        rows = IndexRows()
        for shard in range(samples // shard_size):
            rows.add_shard(f"train-{shard:06d}.tar", f"train-{shard:06d}.tar")
            for i in range(shard * shard_size, (shard + 1) * shard_size):
                rows.add_sample(f"s{i}", 0, 0, [int(labels[i])])
        rows.save(root / "rows.npz")
        write_index(root, [root / "rows.npz"])
        index = CorpusIndex(root, dict(zip(rows.names, rows.counts, strict=True)))
        counts = np.bincount(labels, minlength=LABELS).astype(float)
        weights = ImageWeights(counts, "sqrt")
        sequence = ItemSequence(index, weights, samples, 1024, 16, seed=0)  # the defaults (conf/data)
        distinct = []
        for block in range(min(passes_blocks, sequence.blocks(0))):
            items, _ = sequence.block(0, block)
            batch_labels = labels[items[: len(items) // batch * batch]].reshape(-1, batch)
            distinct += [len(set(b)) for b in batch_labels.tolist()]
        mass = counts * weights.per_label
        mass /= mass.sum()
        return float(np.mean(distinct)), float((1 - (1 - mass) ** batch).sum())
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=40_000)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--diversity-samples", type=int, default=1_000_000)
    parser.add_argument("--diversity-only", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # corpus, fraction, start time
    args = parser.parse_args()
    if args.child:
        first_batch_after_resume(args.child[0], float(args.child[1]), float(args.child[2]))
        return
    import torch

    torch.set_num_threads(1)
    print(
        "| input | shards of | mean distinct labels per batch of 24 | i.i.d. | ratio |\n|---|---|---|---|---|"
    )
    for mode, shard_size in (("copy (builder's shards)", 1000), ("reference (img2dataset tars)", 10_000)):
        mean, iid = diversity(args.diversity_samples, shard_size)
        print(f"| {mode}, sorted by label | {shard_size:,} | {mean:.2f} | {iid:.2f} | {mean / iid:.1%} |")
    if args.diversity_only:
        return
    for shard_size in args.shard_sizes:
        root = Path(tempfile.mkdtemp(prefix="wsp-stream-"))
        try:
            written = time.perf_counter()
            write_photo_corpus(root, args.samples, shard_size)
            mb = sum(f.stat().st_size for f in root.glob("*.tar")) / 2**20 / args.samples
            print(f"\n{args.samples:,} samples of {1024 * mb:.0f} KB in shards of {shard_size:,} "
                  f"({time.perf_counter() - written:.0f} s to write)")  # fmt: skip
            times = resume_times(root, args.repeats)
            print("| resumed at | s from process start to the first batch |\n|---|---|")
            for fraction, seconds in times.items():
                print(f"| {fraction:.0%} of a pass | {seconds:.2f} |")
            batch_s, opening_s = block_end_stall(root)
            print(f"one worker: median batch {1000 * batch_s:.0f} ms; the batches opening a block: median "
                  f"{1000 * opening_s:.0f} ms ({opening_s / batch_s:.2f}x)")  # fmt: skip
            workers, main_rss = peak_rss(root, args.workers, args.batches)
            print(
                f"peak RSS: workers {', '.join(f'{w:.0f}' for w in workers)} MiB; main process {main_rss:.0f} MiB"
            )
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
