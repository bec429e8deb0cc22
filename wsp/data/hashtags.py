"""The hashtag corpus as a LightningDataModule: WebDataset shards written by `task=corpus`.

Training reads a fixed number V of virtual streams (`data.streams`), each a deterministic function of
(seed, stream) whatever the job's layout of ranks and workers:
- Train shard i belongs to stream i % V. A stream reads its shards in passes; pass p is a seeded plan:
  the stream's shards in a shuffled order, cut into blocks of `data.block_shards` shards.
- A block is read whole. Each sample is repeated floor(r) or ceil(r) times, r = N * w_i (its resampling
  weight, wsp.corpus.sampling), and the block's items are ordered by the key (k + u) / copies for copy k
  of a sample (u uniform per sample): the copies of one image lie evenly spread over the block, never
  back to back, and everything else is shuffled.
- A stream's position is (pass, block, item). Resuming reads one block per stream, whatever the offset.
- A sample's crop and flip are seeded by (seed, stream, pass, block, item): by its place in its stream.

The layout: a job has S = ranks x max(1, num_workers) slots, slot g = worker * ranks + rank, and stream v
is played by slot v % S (a slot with several streams plays them a block at a time in turn). A batch is
`batch_size` consecutive items of one stream, and the loader takes batches from its workers in turn. The
workers run on across virtual epochs, prefetching over the boundary, so neither an epoch's end nor
validation restarts or rewinds them.

Resume. Every batch carries where it left its stream; the StreamLoader keeps the positions of the batches
training consumed (Lightning fetches one batch ahead), and checkpoints save them. On the same layout a
resumed run trains on exactly the samples, crops and order of an uninterrupted one. On another layout
every stream goes on where it stopped, so over a pass the multiset of items trained on is the
uninterrupted run's; only the interleaving of streams differs. Nothing is replayed or lost: batches
fetched but not consumed when a checkpoint is taken are read again after a resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
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

Position = tuple[int, int, int]  # (pass, block, item) of a stream: where it goes on
START: Position = (0, 0, 0)


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


def copies_of(sample: dict, weights: ImageWeights, n_images: int, rng: random.Random) -> int:
    """floor(r) or ceil(r) copies, r = w_i * n_images, so a pass keeps its expected size. A sample whose
    labels cannot be read passes once; the decoder drops and counts it."""
    try:
        repeats = weights(json.loads(sample["json"])["labels"]) * n_images
    except Exception:  # missing or corrupt json
        repeats = 1.0
    return int(repeats) + (rng.random() < repeats % 1)


@dataclass
class Streams:
    """The virtual streams of a corpus: what every layout shares."""

    shards: list[list[str]]  # each stream's shards
    weights: ImageWeights
    n_images: int  # the corpus's train size N
    block_shards: int
    seed: int

    def plan(self, stream: int, pass_: int) -> list[list[str]]:
        """Pass `pass_` of `stream`: its shards in a seeded order, in blocks of `block_shards`."""
        urls = list(self.shards[stream])
        seeded_rng(self.seed, stream, pass_, "plan").shuffle(urls)
        return [urls[i : i + self.block_shards] for i in range(0, len(urls), self.block_shards)]

    def block(self, stream: int, pass_: int, block: int, urls: list[str]) -> list[dict]:
        """The items of one block: its samples with their copies, copies of one sample spread evenly."""
        samples = [sample for url in urls for sample in shard_samples(url)]
        rng = seeded_rng(self.seed, stream, pass_, block, "repeats")
        keys = []
        for index, sample in enumerate(samples):
            copies, spread = copies_of(sample, self.weights, self.n_images, rng), rng.random()
            keys.extend(((copy + spread) / copies, index) for copy in range(copies))
        keys.sort()
        return [samples[index] for _, index in keys]

    def items(self, stream: int, position: Position) -> Iterator[tuple[Position, dict, Position]]:
        """(position, sample, position after it) from `position` on, pass after pass."""
        pass_, first_block, first_item = position
        while True:
            plan, emitted = self.plan(stream, pass_), False
            for block in range(first_block, len(plan)):
                order = self.block(stream, pass_, block, plan[block])
                for item in range(first_item, len(order)):
                    if item + 1 < len(order):
                        after = (pass_, block, item + 1)
                    else:  # the next block's start: a resume there reads no finished block again
                        after = (pass_, block + 1, 0) if block + 1 < len(plan) else (pass_ + 1, 0, 0)
                    emitted = True
                    yield (pass_, block, item), order[item], after
                first_item = 0
            if not emitted and position[1:] == (0, 0):
                raise ValueError(f"no readable samples in shards {self.shards[stream]}")
            pass_, first_block, position = pass_ + 1, 0, (pass_ + 1, 0, 0)


class SlotBatches(IterableDataset):
    """One rank's training batches, without end. DataLoader worker w plays local slot
    (w + rotation) % workers; the DataLoader takes batches from its workers in turn."""

    def __init__(self, streams: Streams, slots: list[list[int]], batch_size: int, transform: RandomCropFlip,
                 num_classes: int, positions: dict[int, Position], next_stream: list[int], rotation: int):  # fmt: skip
        self.streams, self.slots, self.batch_size, self.transform = streams, slots, batch_size, transform
        self.num_classes, self.positions, self.next_stream = num_classes, positions, next_stream
        self.rotation = rotation

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return self._batches((worker + self.rotation) % workers)

    def _batches(self, local_slot: int):
        streams = self.slots[local_slot]
        items = {v: self.streams.items(v, self.positions.get(v, START)) for v in streams}
        turn = self.next_stream[local_slot]
        while True:
            stream = streams[turn]
            images, targets, skipped, switch = [], [], 0, False
            for _ in range(self.batch_size):
                (pass_, block, item), sample, after = next(items[stream])
                switch = switch or after[2] == 0  # a block ended: the slot's next stream takes its turn
                rng = seeded_rng(self.streams.seed, stream, pass_, block, item, "augment")
                try:
                    image, target = decode(sample, self.transform, rng, self.num_classes)
                except Exception:  # corrupt bytes, missing image member, bad json: skip and count
                    skipped += 1
                    continue
                images.append(image)
                targets.append(target)
            if not images:  # an empty batch would stall DDP and poison BatchNorm statistics
                raise ValueError(
                    f"none of the {self.batch_size} samples of a batch from shards {self.streams.shards[stream]} "
                    "could be decoded; rebuild the corpus with corpus.verify_images=decode"
                )
            if switch:
                turn = (turn + 1) % len(streams)
            position = torch.tensor([local_slot, stream, *after, turn])
            yield torch.stack(images), torch.stack(targets), torch.tensor(skipped), position


@dataclass(frozen=True)
class Layout:
    """Ranks x slots per rank; slot g = worker * ranks + rank plays streams v with v % slots == g."""

    ranks: int
    workers: int  # slots per rank: max(1, data.num_workers)

    @property
    def slots(self) -> int:
        return self.ranks * self.workers

    def local_slots(self, rank: int, num_streams: int) -> list[list[int]]:
        """This rank's slots that play a stream, and their streams."""
        slots = [list(range(w * self.ranks + rank, num_streams, self.slots)) for w in range(self.workers)]
        return [streams for streams in slots if streams]


class StreamLoader:
    """One rank's training batches (images, targets, skipped, position), a virtual epoch per iteration.
    `consumed(position)` records a batch training took; `state_dict` is every stream's position, saved in
    checkpoints by Lightning, and `load_state_dict` restores it, on this layout or another one."""

    def __init__(self, shards: list[str], weights: ImageWeights, n_images: int, *, num_streams: int | None,
                 block_shards: int, seed: int, rank: int, layout: Layout, num_workers: int, batch_size: int,
                 batches_per_epoch: int, transform: RandomCropFlip, num_classes: int, identity: dict):  # fmt: skip
        self.shards, self.weights, self.n_images = shards, weights, n_images
        self.block_shards, self.seed, self.rank, self.layout = block_shards, seed, rank, layout
        self.num_workers, self.batch_size, self.batches_per_epoch = num_workers, batch_size, batches_per_epoch
        self.transform, self.num_classes, self.identity = transform, num_classes, identity
        self.configured_streams = num_streams
        self._deal(num_streams or layout.slots)
        self.positions: dict[int, Position] = {}
        self.next_stream = [0] * len(self.slots)
        self.batches_consumed = 0  # on this rank, since the start of training
        self._batches: Iterator | None = None  # the workers' batches, kept across virtual epochs

    def _deal(self, num_streams: int) -> None:
        if num_streams > len(self.shards):
            unset = self.configured_streams is None
            origin = f" (unset: {self.layout.ranks} ranks x {self.layout.workers} workers)" if unset else ""
            raise ValueError(f"data.streams={num_streams}{origin}: more than the corpus's {len(self.shards)} train "
                             "shards; rebuild with a smaller corpus.shard_size, or use fewer streams")  # fmt: skip
        if num_streams < self.layout.ranks:
            raise ValueError(f"data.streams={num_streams} cannot feed {self.layout.ranks} ranks: every rank "
                             "needs a stream")  # fmt: skip
        self.num_streams = num_streams
        self.streams = Streams([self.shards[v::num_streams] for v in range(num_streams)], self.weights,
                               self.n_images, self.block_shards, self.seed)  # fmt: skip
        self.slots = self.layout.local_slots(self.rank, num_streams)

    def _start(self) -> Iterator:
        """Workers playing every stream from the consumed positions. Batch j since the start of training
        comes from local slot j % slots: the round-robin goes on where the consumed batches left it."""
        workers = len(self.slots) if self.num_workers else 0
        dataset = SlotBatches(self.streams, self.slots, self.batch_size, self.transform, self.num_classes,
                              dict(self.positions), list(self.next_stream), self.batches_consumed % max(1, workers))  # fmt: skip
        return iter(DataLoader(dataset, batch_size=None, num_workers=workers))

    def __iter__(self):
        """A virtual epoch. The workers run on from one epoch into the next (prefetching across the
        boundary); an epoch left unfinished stops them, since they ran ahead of what training consumed."""
        if self._batches is None:
            self._batches = self._start()
        finished = False
        try:
            for _ in range(self.batches_per_epoch - self.batches_consumed % self.batches_per_epoch):
                yield next(self._batches)
            finished = True
        finally:
            if not finished:
                self._batches = None

    def consumed(self, position: torch.Tensor) -> None:
        """Training took the batch that left its stream at `position` (the batch's last element)."""
        local_slot, stream, pass_, block, item, turn = position.tolist()
        self.positions[stream] = (pass_, block, item)
        self.next_stream[local_slot] = turn
        self.batches_consumed += 1

    def local_state(self) -> dict:
        return {"positions": {v: list(p) for v, p in self.positions.items()}, "next_stream": self.next_stream,
                "batches_consumed": self.batches_consumed}  # fmt: skip

    def state_dict(self) -> dict:
        _, world = _rank_and_world()
        ranks = [None] * world
        if world > 1:  # Lightning calls this on every rank; rank 0 writes the checkpoint
            torch.distributed.all_gather_object(ranks, self.local_state())
        else:
            ranks = [self.local_state()]
        return merged_state(ranks, self.num_streams, self.layout, self.identity)

    def load_state_dict(self, state: dict) -> None:
        for key, value in self.identity.items():
            if state["identity"].get(key) != value:
                raise ConfigError(
                    f"ckpt_path: the checkpoint's data stream was made with another {key} "
                    f"({state['identity'].get(key)}, not {value}); resume with the settings it was trained with"
                )
        saved = state["streams"]
        if self.configured_streams not in (None, saved):
            raise ConfigError(f"data.streams={self.configured_streams}: the checkpoint's run has {saved} streams; "
                              "leave data.streams unset (or set it to that) to resume it")  # fmt: skip
        self._deal(saved)
        self._batches = None
        self.positions = {int(v): tuple(p) for v, p in state["positions"].items()}
        if tuple(state["layout"]) == (self.layout.ranks, self.layout.workers):
            self.next_stream = list(state["next_stream"][self.rank])  # the same turns: the exact order
        self.batches_consumed = state["batches_consumed"]


def merged_state(ranks: list[dict], num_streams: int, layout: Layout, identity: dict) -> dict:
    """The job's stream state from each rank's: every stream's position, and the per-rank turns."""
    return {
        "streams": num_streams,
        "layout": [layout.ranks, layout.workers],
        "identity": identity,
        "positions": {v: p for rank in ranks for v, p in rank["positions"].items()},
        "next_stream": [rank["next_stream"] for rank in ranks],
        "batches_consumed": ranks[0]["batches_consumed"],
    }


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
                 min_scale: float = 0.08, streams: int | None = None, block_shards: int = 2, seed: int = 0,
                 epoch_images: int | None = None):  # fmt: skip
        super().__init__()
        self.epoch_images = epoch_images
        self.path = Path(path)
        self.batch_size, self.num_workers, self.image_size = batch_size, num_workers, image_size
        self.resampling, self.min_scale, self.seed = resampling, min_scale, seed
        self.streams, self.block_shards = streams, block_shards
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
        self.train_loader = self.stream_loader(*_rank_and_world())
        return self.train_loader

    def stream_loader(self, rank: int, world: int) -> StreamLoader:
        """The training batches of `rank` of a `world`-rank job."""
        return StreamLoader(
            self._urls(self.train_shards), self.weights, self.num_samples("train"), num_streams=self.streams,
            block_shards=self.block_shards, seed=self.seed, rank=rank, layout=Layout(world, max(1, self.num_workers)),
            num_workers=self.num_workers, batch_size=self.batch_size,
            batches_per_epoch=max(1, self.images_per_epoch // (self.batch_size * world)),
            transform=RandomCropFlip(self.image_size, self.min_scale), num_classes=self.num_classes,
            identity=self.stream_identity(),
        )  # fmt: skip

    def stream_identity(self) -> dict:
        """What a checkpoint's stream positions are only valid with: the corpus's train shards and sizes,
        and the settings that order and repeat their samples."""
        shards = json.dumps({name: self.sizes[name] for name in self.train_shards}, sort_keys=True)
        return {"corpus": hashlib.sha1(shards.encode()).hexdigest()[:16], "data.seed": self.seed,
                "data.resampling": self.resampling, "data.block_shards": self.block_shards}  # fmt: skip

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
