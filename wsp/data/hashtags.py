"""The hashtag corpus as a LightningDataModule: WebDataset shards written by `task=corpus`.

Training data is a set of deterministic streams, open_clip style: the train shards are split by rank,
then among `max(1, num_workers)` streams per rank. Stream s of rank r reads its shards in passes; pass p
reorders the shards, repeats each sample a random number of times with expectation N * w_i (its
resampling weight, see wsp.corpus.sampling) and shuffles within a buffer, all seeded by
(seed, rank, s, p). Batches are groups of `batch_size` consecutive stream items; a "virtual epoch" is a
fixed number of groups per stream. Items whose image cannot be decoded are dropped from their batch
and counted: each batch carries the number skipped.

Exact resume: a sample's crop and flip are seeded by its position (pass, index) in its stream, so a
position fully determines what follows. Every batch carries its stream's position after it; the
`StreamLoader` keeps the positions of the batches training consumed (the DataModule reports each batch
as it goes to the model: Lightning fetches one batch ahead), Lightning saves them in each checkpoint
(`state_dict`), and a resumed run restarts every stream there, reading (not decoding) the items before
it, and in the same stream order. The resumed run trains on exactly the samples, crops and
order the uninterrupted run would have.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from wsp.config import ConfigError
from wsp.corpus.sampling import ImageWeights
from wsp.corpus.shards import IMAGE_KEYS, REFERENCE_SUFFIX
from wsp.data.transforms import CentreCrop, RandomCropFlip, StandardisedOnDevice

Position = tuple[int, int, int]  # (groups read, pass, items of that pass read) of one stream


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def seeded_rng(*key) -> random.Random:
    return random.Random(repr(key))  # str seeds hash deterministically (sha512), unlike hash()


def decode(
    sample: dict, transform, rng: random.Random | None, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tensor and the paper's target (k-hot normalised to sum 1); raises on any broken part."""
    image_key = next(k for k in IMAGE_KEYS if k in sample)
    with Image.open(io.BytesIO(sample[image_key])) as image:
        pixels = transform(image, rng)
    labels = json.loads(sample["json"])["labels"]
    target = torch.zeros(num_classes)
    target[labels] = 1.0 / len(labels)
    return pixels, target


def shard_samples(url: str):
    """Samples of one train shard. A reference (`train-*.ref.json`, `corpus.train_images=reference`)
    yields the labelled samples of the img2dataset tar it names, its labels replacing their json."""
    if not url.endswith(REFERENCE_SUFFIX):
        yield from wds.tarfile_to_samples(handler=wds.warn_and_continue)([{"url": url}])
        return
    reference = json.loads(Path(url).read_text())
    labels = reference["labels"]
    for sample in wds.tarfile_to_samples(handler=wds.warn_and_continue)([{"url": reference["shard"]}]):
        key = sample["__key__"].rpartition("/")[2]
        if key in labels:  # posts the build dropped, or kept for validation, are not training samples
            yield {**sample, "json": json.dumps({"labels": labels[key]}).encode()}


def resample(samples, weights: ImageWeights, n_images: int, rng: random.Random):
    """Emit each sample floor(r) or ceil(r) times, r = w_i * n_images, so a pass keeps its expected size.
    A sample whose labels cannot be read passes once; the decoder drops and counts it."""
    for sample in samples:
        try:
            repeats = weights(json.loads(sample["json"])["labels"]) * n_images
        except Exception:  # missing or corrupt json
            repeats = 1.0
        for _ in range(int(repeats) + (rng.random() < repeats % 1)):
            yield sample


def shuffle(samples, size: int, rng: random.Random):
    """Shuffle within a buffer of `size` samples (streams are too large to shuffle whole)."""
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class HashtagStream(IterableDataset):
    """One rank's training streams; DataLoader worker w plays stream (w + rotation) % num_streams."""

    def __init__(self, shards: list[list[str]], weights: ImageWeights, n_images: int, batch_size: int,
                 groups_per_epoch: int, transform: RandomCropFlip, num_classes: int, shuffle_buffer: int,
                 seed: int, rank: int):  # fmt: skip
        self.shards, self.weights, self.n_images = shards, weights, n_images
        self.batch_size, self.groups_per_epoch, self.transform = batch_size, groups_per_epoch, transform
        self.num_classes, self.shuffle_buffer, self.seed, self.rank = num_classes, shuffle_buffer, seed, rank
        # Set by the StreamLoader before each epoch, from the batches training consumed:
        self.start: dict[int, Position] = {}
        self.epoch_end, self.rotation = groups_per_epoch, 0

    @property
    def num_streams(self) -> int:
        return len(self.shards)

    def _pass(self, stream: int, pass_: int):
        key = (self.seed, self.rank, stream, pass_)
        urls = list(self.shards[stream])
        seeded_rng(*key, "shards").shuffle(urls)
        samples = (sample for url in urls for sample in shard_samples(url))
        samples = resample(samples, self.weights, self.n_images, seeded_rng(*key, "resample"))
        return shuffle(samples, self.shuffle_buffer, seeded_rng(*key, "shuffle"))

    def _items(self, stream: int, pass_: int, offset: int) -> Iterator[tuple[int, int, dict]]:
        """(pass, index, sample) from `offset` of `pass_` on, through the following passes forever."""
        while True:
            index = -1
            for index, sample in enumerate(self._pass(stream, pass_)):
                if index >= offset:
                    yield pass_, index, sample
            if index < 0:
                raise ValueError(f"no readable samples in shards {self.shards[stream]}")
            pass_, offset = pass_ + 1, 0

    def __iter__(self):
        worker = get_worker_info()
        stream = ((worker.id if worker else 0) + self.rotation) % self.num_streams
        group, pass_, offset = self.start.get(stream, (0, 0, 0))
        items = self._items(stream, pass_, offset)
        while group < self.epoch_end:
            images, targets, skipped = [], [], 0
            for _ in range(self.batch_size):
                pass_, index, sample = next(items)
                rng = seeded_rng(self.seed, self.rank, stream, pass_, index, "augment")
                try:
                    image, target = decode(sample, self.transform, rng, self.num_classes)
                except Exception:  # corrupt bytes, missing image member, bad json: skip and count
                    skipped += 1
                    continue
                images.append(image)
                targets.append(target)
            group += 1
            if not images:  # an empty batch would stall DDP and poison BatchNorm statistics
                raise ValueError(
                    f"none of the {self.batch_size} samples of a batch from shards {self.shards[stream]} could "
                    "be decoded; rebuild the corpus with corpus.verify_images=decode"
                )
            position = torch.tensor([stream, group, pass_, index + 1])
            yield torch.stack(images), torch.stack(targets), torch.tensor(skipped), position


class StreamLoader(DataLoader):
    """A DataLoader over a HashtagStream that remembers where the consumed batches left every stream.
    Its batches are (images, targets, skipped, position); `consumed(position)` records one.

    Workers are started afresh each epoch with those positions (not persistent): batches a worker
    prefetched but training never consumed are read again, never lost. Lightning saves `state_dict()`
    in checkpoints and calls `load_state_dict` on resume.
    """

    def __init__(self, stream: HashtagStream, num_workers: int):
        super().__init__(stream, batch_size=None, num_workers=num_workers)
        self.positions: dict[int, Position] = {}
        self.last_stream: int | None = None

    def __iter__(self):
        stream: HashtagStream = self.dataset
        epoch_groups = stream.groups_per_epoch
        first = min(self.positions.get(s, (0,))[0] for s in range(stream.num_streams))
        stream.epoch_end = (first // epoch_groups + 1) * epoch_groups
        stream.start = dict(self.positions)
        mid_epoch = any(self.positions.get(s, (0,))[0] % epoch_groups for s in range(stream.num_streams))
        # Workers take batches in turn from worker 0; mid-epoch, the turn goes on where it stopped.
        stream.rotation = (self.last_stream + 1) % stream.num_streams if mid_epoch else 0
        yield from super().__iter__()

    def consumed(self, position: torch.Tensor) -> None:
        """Training took the batch that left its stream at `position` (the batch's last element)."""
        index, *after = position.tolist()
        self.positions[index], self.last_stream = tuple(after), index

    def state_dict(self) -> dict:
        rank, world = _rank_and_world()
        local = {
            "positions": {s: list(p) for s, p in self.positions.items()},
            "last_stream": self.last_stream,
        }
        ranks = [None] * world
        if world > 1:  # Lightning calls this on every rank; rank 0 writes the checkpoint
            torch.distributed.all_gather_object(ranks, local)
        else:
            ranks = [local]
        return {"streams_per_rank": self.dataset.num_streams, "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        rank, world = _rank_and_world()
        now = (world, self.dataset.num_streams)
        saved = (len(state["ranks"]), state["streams_per_rank"])
        if now != saved:
            raise ConfigError(
                f"ckpt_path: the checkpoint's data streams came from {saved[0]} ranks x {saved[1]} streams "
                f"(max(1, data.num_workers)); resuming them exactly needs the same, not {now[0]} x {now[1]}"
            )
        mine = state["ranks"][rank]
        self.positions = {int(s): tuple(p) for s, p in mine["positions"].items()}
        self.last_stream = mine["last_stream"]


class DecodeAndSkip(wds.PipelineStage):
    """Validation: decode with the eval transform; skip undecodable samples, reporting the count on the
    next sample."""

    def __init__(self, transform: CentreCrop, num_classes: int):
        self.transform, self.num_classes = transform, num_classes

    def run(self, samples):
        skipped = 0
        for sample in samples:
            try:
                pixels, target = decode(sample, self.transform, None, self.num_classes)
            except Exception:
                skipped += 1
                continue
            yield pixels, target, skipped
            skipped = 0


def collate(batch):
    images, targets, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(targets), torch.tensor(sum(skipped))


class HashtagDataModule(StandardisedOnDevice, pl.LightningDataModule):
    def __init__(self, path: str, batch_size: int, num_workers: int, image_size: int, resampling: str = "sqrt",
                 min_scale: float = 0.08, shuffle_buffer: int = 2000, seed: int = 0,
                 epoch_images: int | None = None):  # fmt: skip
        super().__init__()
        self.epoch_images = epoch_images
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

    @property
    def images_per_epoch(self) -> int:
        """A virtual epoch (Lightning's epoch: validation and epoch-end checkpoints follow it)."""
        return self.epoch_images or self.num_samples("train")

    def num_samples(self, split: str) -> int:
        return sum(n for name, n in self.sizes.items() if name.startswith(f"{split}-"))

    def _urls(self, shards: list[str]) -> list[str]:
        return [str(self.path / s) for s in shards]

    def train_dataloader(self) -> StreamLoader:
        rank, world = _rank_and_world()
        streams = max(1, self.num_workers)
        if len(self.train_shards) < world * streams:
            raise ValueError(
                f"data.path={self.path}: {len(self.train_shards)} train shards cannot feed {world} ranks x "
                f"{streams} workers; lower data.num_workers or rebuild with a smaller corpus.shard_size"
            )
        mine = self._urls(self.train_shards)[rank::world]
        stream = HashtagStream(
            [mine[s::streams] for s in range(streams)], self.weights, self.num_samples("train"), self.batch_size,
            groups_per_epoch=max(1, self.images_per_epoch // (self.batch_size * world * streams)),
            transform=RandomCropFlip(self.image_size, self.min_scale), num_classes=self.num_classes,
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, rank=rank,
        )  # fmt: skip
        self.train_loader = StreamLoader(stream, self.num_workers)
        return self.train_loader

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            *batch, position = batch
            self.train_loader.consumed(position)
        return batch

    def val_dataloader(self) -> DataLoader:
        if not self.val_shards:
            return []
        _, world = _rank_and_world()
        if len(self.val_shards) < world:  # a rank without val data would wait forever for the others
            raise ValueError(
                f"data.path={self.path}: {len(self.val_shards)} val shards cannot feed {world} ranks; rebuild "
                "with a larger corpus.val_fraction or a smaller corpus.shard_size"
            )
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self._urls(self.val_shards)),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            DecodeAndSkip(CentreCrop(self.image_size), self.num_classes),
            wds.batched(self.batch_size, collation_fn=collate, partial=True),
        )
        workers = min(self.num_workers, len(self.val_shards) // world)
        return DataLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
