"""The hashtag corpus as a LightningDataModule: WebDataset shards written by `task=corpus`.

Training stream (open_clip style): shards split by node then by worker, each worker's shards reordered
on every pass; each sample repeated a random number of times with expectation N * w_i (its resampling weight,
see wsp.corpus.sampling), shuffled, decoded; "virtual epochs" of a fixed number of batches. Samples
whose image cannot be decoded are skipped and counted: each batch carries the number skipped since the
previous one, and the LightningModule logs the running total.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from wsp.corpus.sampling import ImageWeights
from wsp.corpus.shards import IMAGE_KEYS
from wsp.data.transforms import eval_transform, train_transform


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SeededStage(wds.PipelineStage):
    """A stage whose randomness is seeded by (seed, stage, rank, worker, pass): reproducible, and
    different for every stage, rank, worker and pass over the data."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank, self.passes = seed, rank, 0

    def next_rng(self) -> random.Random:
        worker = get_worker_info()
        key = (self.seed, type(self).__name__, self.rank, worker.id if worker else 0, self.passes)
        self.passes += 1
        return random.Random(repr(key))  # str seeds hash deterministically (sha512), unlike hash()


class ShuffleShards(SeededStage):
    """Reorder this worker's own shards on every pass. Shuffling after the node and worker split keeps
    the split a partition: every pass of every worker reads each of its shards exactly once."""

    def run(self, shards):
        shards = list(shards)
        self.next_rng().shuffle(shards)
        yield from shards


class ResampleByWeight(SeededStage):
    """Emit each sample floor(r) or ceil(r) times, r = w_i * n_images, so a pass keeps its expected size.
    A sample whose labels cannot be read passes once; the decoder drops and counts it."""

    def __init__(self, weights: ImageWeights, n_images: int, seed: int, rank: int):
        super().__init__(seed, rank)
        self.weights, self.n_images = weights, n_images

    def run(self, samples):
        rng = self.next_rng()
        for sample in samples:
            try:
                repeats = self.weights(json.loads(sample["json"])["labels"]) * self.n_images
            except Exception:  # missing or corrupt json
                repeats = 1.0
            for _ in range(int(repeats) + (rng.random() < repeats % 1)):
                yield sample


class Shuffle(SeededStage):
    """Shuffle within a buffer of `size` samples (streams are too large to shuffle whole)."""

    def __init__(self, size: int, seed: int, rank: int):
        super().__init__(seed, rank)
        self.size = size

    def run(self, samples):
        rng, buffer = self.next_rng(), []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.size:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer


class DecodeAndSkip(wds.PipelineStage):
    """Decode image + soft target; skip undecodable samples, reporting the count on the next sample."""

    def __init__(self, transform, num_classes: int):
        self.transform, self.num_classes = transform, num_classes

    def run(self, samples):
        skipped = 0
        for sample in samples:
            try:
                image_key = next(k for k in IMAGE_KEYS if k in sample)
                with Image.open(io.BytesIO(sample[image_key])) as image:
                    pixels = self.transform(image.convert("RGB"))
                labels = json.loads(sample["json"])["labels"]
            except Exception:  # corrupt bytes, missing image member, bad json: skip and count
                skipped += 1
                continue
            target = torch.zeros(self.num_classes)
            target[labels] = 1.0 / len(labels)  # the paper's target: k-hot normalised to sum 1
            yield pixels, target, skipped
            skipped = 0


def collate(batch):
    images, targets, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(targets), torch.tensor(sum(skipped))


class HashtagDataModule(pl.LightningDataModule):
    def __init__(self, path: str, batch_size: int, num_workers: int, image_size: int, resampling: str = "sqrt",
                 min_scale: float = 0.08, shuffle_buffer: int = 2000, seed: int = 0):  # fmt: skip
        super().__init__()
        self.path = Path(path)
        self.batch_size, self.num_workers, self.image_size = batch_size, num_workers, image_size
        self.resampling, self.min_scale, self.shuffle_buffer, self.seed = (
            resampling,
            min_scale,
            shuffle_buffer,
            seed,
        )
        for name in ("sizes.json", "vocab.json"):
            if not (self.path / name).is_file():
                raise FileNotFoundError(
                    f"data.path={path}: no {name}; build the corpus first with task=corpus"
                )
        self.sizes: dict[str, int] = json.loads((self.path / "sizes.json").read_text())
        vocab = json.loads((self.path / "vocab.json").read_text())
        self.class_names = [label["name"] for label in vocab["labels"]]
        self.weights = ImageWeights(
            np.array([label["train_frequency"] for label in vocab["labels"]]), resampling
        )
        self.train_shards = sorted(s for s in self.sizes if s.startswith("train-"))
        self.val_shards = sorted(s for s in self.sizes if s.startswith("val-"))
        if not self.train_shards:
            raise ValueError(f"data.path={path}: sizes.json lists no train shards")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_samples(self, split: str) -> int:
        return sum(n for name, n in self.sizes.items() if name.startswith(f"{split}-"))

    def _urls(self, shards: list[str]) -> list[str]:
        return [str(self.path / s) for s in shards]

    def train_dataloader(self) -> DataLoader:
        rank, world = _rank_and_world()
        workers = max(1, self.num_workers)
        if len(self.train_shards) < world * workers:
            raise ValueError(
                f"data.path={self.path}: {len(self.train_shards)} train shards cannot feed {world} ranks x "
                f"{workers} workers; lower data.num_workers or rebuild with a smaller corpus.shard_size"
            )
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self._urls(self.train_shards)),
            wds.split_by_node,
            wds.split_by_worker,
            ShuffleShards(self.seed, rank),
            wds.tarfile_to_samples(handler=wds.warn_and_continue),  # a broken shard is logged, not fatal
            ResampleByWeight(self.weights, self.num_samples("train"), self.seed, rank),
            Shuffle(self.shuffle_buffer, self.seed, rank),
            DecodeAndSkip(train_transform(self.image_size, self.min_scale), self.num_classes),
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        )
        batches_per_worker = max(1, self.num_samples("train") // (self.batch_size * world * workers))
        return self._loader(pipeline.with_epoch(batches_per_worker))

    def val_dataloader(self) -> DataLoader:
        if not self.val_shards:
            return []
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self._urls(self.val_shards)),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            DecodeAndSkip(eval_transform(self.image_size), self.num_classes),
            wds.batched(self.batch_size, collation_fn=collate, partial=True),
        )
        return self._loader(pipeline, workers=min(self.num_workers, len(self.val_shards)))

    def _loader(self, pipeline, workers: int | None = None) -> DataLoader:
        workers = self.num_workers if workers is None else workers
        return DataLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
