"""The hashtag corpus as a LightningDataModule: WebDataset shards written by `task=corpus`.

Training reads one sequence of items, a deterministic function of the corpus and (data.seed,
data.resampling, data.block_runs, data.run_samples), whatever the job's layout of ranks and workers:
- Pass p is a seeded permutation of the train shards, cut into groups of `block_runs` shards. The
  group's shards are cut into runs of `run_samples` consecutive samples, and the runs, in a seeded
  order, into blocks of `block_runs` runs. A block's samples come from `block_runs` places spread over
  the group's shards (a random share of the corpus), so a batch is about as diverse as the corpus,
  whatever order the posts were in when it was built (one file per hashtag, rows sorted by date or
  user, img2dataset tars in URL-list order), and a block's metadata is bounded by block_runs x
  run_samples, whatever the shard size. A pass's plan is O(shards) numbers; a group's, O(its runs).
- Each sample of a block is repeated floor(r) or ceil(r) times, r = N * w_i (its resampling weight,
  wsp.corpus.sampling), and the items are ordered by the key (k + u) / copies for copy k of a sample (u
  uniform per sample): copies of one image lie evenly spread over the block, about len/copies items
  apart, so a sample rarely repeats within a batch unless it has about len/batch copies or more.
- Blocks are ordered from the corpus index alone (labels and byte offsets written at build time,
  memory-mapped); an image's bytes are read by offset when its item is decoded.
- A sample's crop and flip are seeded by (seed, pass, block, item): by its place in the sequence.

The layout: a global step of a job with R ranks and batch b takes the next R x b items; rank r trains on
the r-th b of them. A rank's DataLoader worker w makes the rank's batches w, w + W, ... (the DataLoader
takes batches from its W workers in turn), skipping the other items by arithmetic on the index. Every
item is trained once, in sequence order, on any layout: the stream advances at one rate, and every
worker of every rank has work.

The position - where the sequence goes on, and the items consumed - is one value, the same on every rank
(all ranks consume one batch per step). It belongs to the StreamLoader: every batch carries the position
after its step, the StreamLoader keeps that of the last batch training consumed (Lightning fetches one
batch ahead), and checkpoints save it. A resume, on any layout, starts the sequence there: nothing is
replayed or skipped, and on the same layout the batches, crops and order are those of an uninterrupted
run. A resume reads the index of one block, whatever the offset.

The ledger (`data.ledger=true`): every item consumed, as rows `rank, step, pass, block, item, shard, key,
copy, decoded` in `<run>/ledger/rank<r>-step<first step>.csv`, kept consistent with checkpoints.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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
from wsp.corpus.shards import IMAGE_KEYS, INDEX_ARRAYS, INDEX_DIR
from wsp.data.transforms import CentreCrop, RandomCropFlip, StandardisedOnDevice

Position = tuple[int, int, int]  # (pass, block, item) of the item sequence: where it goes on
START: Position = (0, 0, 0)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def seeded_rng(*key) -> random.Random:
    return random.Random(repr(key))  # str seeds hash deterministically (sha512), unlike hash()


def target_of(labels, num_classes: int) -> torch.Tensor:
    """The paper's target: k-hot normalised to sum 1."""
    target = torch.zeros(num_classes)
    target[list(labels)] = 1.0 / len(labels)
    return target


def decode(
    sample: dict, transform, rng: random.Random | None, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tensor and target of a WebDataset sample; raises on any broken part."""
    image_key = next(k for k in IMAGE_KEYS if k in sample)
    with Image.open(io.BytesIO(sample[image_key])) as image:
        pixels = transform(image, rng)
    return pixels, target_of(json.loads(sample["json"])["labels"], num_classes)


class CorpusIndex:
    """The corpus's train samples (`<corpus>/index/`, written by the build), memory-mapped: the pages a
    block needs are read on demand and shared by every process of a machine. Each process maps it
    anew (nothing of it is pickled to DataLoader workers)."""

    def __init__(self, corpus: Path, shard_sizes: dict[str, int]):
        self.corpus, self._arrays = corpus, None
        if not (corpus / INDEX_DIR / "shard_start.npy").is_file():
            raise FileNotFoundError(f"data.path={corpus}: no {INDEX_DIR}/ (the train index); the corpus was "
                                    "built by an older wsp: rebuild it with task=corpus")  # fmt: skip
        names = [name.decode() for name in self.names]
        if names != list(shard_sizes) or not np.array_equal(
            np.diff(self.shard_start), list(shard_sizes.values())
        ):
            raise ValueError(f"data.path={corpus}: {INDEX_DIR}/ lists other train shards or sizes than "
                             "sizes.json; rebuild the corpus with task=corpus")  # fmt: skip

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __getattr__(self, name: str) -> np.ndarray:
        if name not in INDEX_ARRAYS:
            raise AttributeError(name)
        if self._arrays is None:
            folder = self.corpus / INDEX_DIR
            self._arrays = {a: np.load(folder / f"{a}.npy", mmap_mode="r") for a in INDEX_ARRAYS}
        return self._arrays[name]

    def shard_of(self, samples: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.shard_start, samples, side="right") - 1

    def file(self, shard: int) -> str:
        path = self.files[shard].decode()
        return path if os.path.isabs(path) else str(self.corpus / path)


def spans(first: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The concatenated ranges [first_i, end_i), without a Python loop."""
    lengths = np.maximum(end - first, 0)
    return np.repeat(first - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())


class ItemSequence:
    """The training items, pass after pass, as blocks of (sample, copy): what every layout shares."""

    def __init__(self, index: CorpusIndex, weights: ImageWeights, n_images: int, block_runs: int,
                 run_samples: int, seed: int):  # fmt: skip
        self.index, self.weights, self.n_images, self.seed = index, weights, n_images, seed
        self.block_runs, self.run_samples = block_runs, run_samples
        self.shard_sizes = np.diff(np.asarray(index.shard_start))
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None
        self._group: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def plan(self, pass_: int) -> tuple[np.ndarray, np.ndarray]:
        """Pass `pass_`'s shards in their seeded order, and each group's first block (and the pass's end)."""
        if self._plan is None or self._plan[0] != pass_:
            order = self.rng(pass_, 0).permutation(len(self.shard_sizes))
            runs = -(-self.shard_sizes[order] // self.run_samples)
            group_runs = np.add.reduceat(runs, np.arange(0, len(order), self.block_runs))
            first_block = np.concatenate([[0], np.cumsum(-(-group_runs // self.block_runs))])
            self._plan = (pass_, order, first_block)
        return self._plan[1], self._plan[2]

    def blocks(self, pass_: int) -> int:
        return int(self.plan(pass_)[1][-1])

    def group_runs(self, pass_: int, group: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, run number) of each run of a group's shards, in the group's seeded order, kept while
        the group's blocks are read: 16 bytes per run, 10 MB for 1,024 shards of 10,000 samples (the one
        share of a worker's memory that grows with the shard size)."""
        if self._group is None or self._group[0] != (pass_, group):
            order, _ = self.plan(pass_)
            shards = order[group * self.block_runs : (group + 1) * self.block_runs]
            runs = -(-self.shard_sizes[shards] // self.run_samples)
            shuffled = self.rng(pass_, 1, group).permutation(int(runs.sum()))
            run_in_shard = shuffled - np.repeat(np.cumsum(runs) - runs, runs)[shuffled]
            self._group = ((pass_, group), np.repeat(shards, runs)[shuffled], run_in_shard)
        return self._group[1], self._group[2]

    def samples(self, pass_: int, block: int) -> np.ndarray:
        """The corpus indices of the samples of one block: `block_runs` runs of its group's shards."""
        _, first_block = self.plan(pass_)
        group = int(np.searchsorted(first_block, block, side="right")) - 1
        shard, run = self.group_runs(pass_, group)
        turn = slice((block - int(first_block[group])) * self.block_runs, None)
        shard, run = shard[turn][: self.block_runs], run[turn][: self.block_runs]
        first = self.index.shard_start[shard] + run * self.run_samples
        end = np.minimum(first + self.run_samples, self.index.shard_start[shard + 1])
        return spans(first, end)

    def block(self, pass_: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample, copy) of each item of a block, in its order."""
        samples = self.samples(pass_, block).astype(np.int64)
        label_start, label_end = self.index.label_start[samples], self.index.label_start[samples + 1]
        counts = label_end - label_start
        labels = self.index.labels[spans(label_start, label_end)]
        owner = np.repeat(np.arange(len(samples)), counts)
        per_sample = np.bincount(owner, weights=self.weights.per_label[labels], minlength=len(samples))
        repeats = np.where(counts > 0, per_sample / np.maximum(counts, 1) * self.n_images, 1.0)
        rng = self.rng(pass_, 2, block)
        copies = np.floor(repeats).astype(np.int64) + (rng.random(len(samples)) < repeats % 1)
        spread = rng.random(len(samples))
        which = np.repeat(np.arange(len(samples)), copies)
        copy = np.arange(len(which)) - np.repeat(np.cumsum(copies) - copies, copies)
        order = np.argsort((copy + spread[which]) / copies[which], kind="stable")
        return samples[which[order]], copy[order]


class Cursor:
    """A place in an ItemSequence that moves forward; holds the current block's items only."""

    def __init__(self, sequence: ItemSequence, position: Position):
        self.sequence = sequence
        self.pass_, self.block, self.item = position
        self.empty_blocks = 0  # in a row: a whole pass of them is a corpus with nothing to train on
        self._load()

    def _load(self) -> None:
        self.samples, self.copies = self.sequence.block(self.pass_, self.block)

    def _next_block(self) -> None:
        self.item -= len(self.samples)
        self.block += 1
        if self.block >= self.sequence.blocks(self.pass_):
            if self.empty_blocks >= self.sequence.blocks(self.pass_):
                raise ValueError(f"pass {self.pass_} of the train stream has no item: no train sample has a "
                                 "sampling weight (labels all absent from vocab.json's frequencies?)")  # fmt: skip
            self.pass_, self.block = self.pass_ + 1, 0
        self._load()
        self.empty_blocks = self.empty_blocks + 1 if len(self.samples) == 0 else 0

    @property
    def position(self) -> Position:
        return self.pass_, self.block, self.item

    def advance(self, items: int) -> None:
        self.item += items
        while self.item >= len(self.samples):
            self._next_block()

    def take(self, items: int) -> list[tuple[int, int, int, int, int]]:
        """(pass, block, item, sample, copy) of the next `items` items."""
        taken = []
        while len(taken) < items:
            while self.item >= len(self.samples):
                self._next_block()
            n = min(items - len(taken), len(self.samples) - self.item)
            span = range(self.item, self.item + n)
            taken += [(self.pass_, self.block, i, int(self.samples[i]), int(self.copies[i])) for i in span]
            self.item += n
        return taken


class ImageReader:
    """Image bytes by (file, offset, size), with the files of recent reads kept open."""

    def __init__(self, keep: int = 64):
        self.keep, self.files = keep, {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        fd = self.files.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(self.files) >= self.keep:
                os.close(self.files.pop(next(iter(self.files))))
        self.files[path] = fd  # most recent last
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{path}: {len(data)} of {size} bytes at offset {offset}")
        return data


class RankBatches(IterableDataset):
    """One rank's training batches, without end, from `start` (after `consumed` items): DataLoader
    worker w makes the rank's batches w, w + W, ...; each is (images, targets, skipped, the position
    after its global step with the items consumed then, and a row per item: pass, block, item, sample,
    copy, decoded)."""

    def __init__(self, sequence: ItemSequence, start: Position, consumed: int, rank: int, ranks: int,
                 batch_size: int, transform: RandomCropFlip, num_classes: int):  # fmt: skip
        self.sequence, self.start, self.consumed = sequence, start, consumed
        self.rank, self.ranks, self.batch_size = rank, ranks, batch_size
        self.transform, self.num_classes = transform, num_classes

    def __iter__(self):
        info = get_worker_info()
        return self.batches(*((info.id, info.num_workers) if info else (0, 1)))

    def batches(self, worker: int, workers: int):
        step_items = self.ranks * self.batch_size
        cursor, reader, index = Cursor(self.sequence, self.start), ImageReader(), self.sequence.index
        cursor.advance(worker * step_items + self.rank * self.batch_size)
        for step in range(worker, 2**62, workers):
            items = cursor.take(self.batch_size)
            cursor.advance((self.ranks - 1 - self.rank) * self.batch_size)  # the step's end
            after = [*cursor.position, self.consumed + (step + 1) * step_items]
            images, targets, trace = [], [], []
            shards = index.shard_of(
                np.array([sample for *_, sample, _ in items])
            ).tolist()  # one lookup a batch
            for (pass_, block, item, sample, copy), shard in zip(items, shards, strict=True):
                rng = seeded_rng(self.sequence.seed, pass_, block, item, "augment")
                labels = index.labels[index.label_start[sample] : index.label_start[sample + 1]]
                try:
                    data = reader.read(
                        index.file(shard), int(index.offsets[sample]), int(index.sizes[sample])
                    )
                    with Image.open(io.BytesIO(data)) as image:
                        images.append(self.transform(image, rng))
                    targets.append(target_of(labels.tolist(), self.num_classes))
                    decoded = 1
                except Exception:  # unreadable bytes, a cut file, no labels: skipped and counted
                    decoded = 0
                trace.append((pass_, block, item, sample, copy, decoded))
            if not images:  # an empty batch would stall DDP and poison BatchNorm statistics
                raise ValueError(
                    f"none of the {self.batch_size} samples of a batch (pass {items[0][0]}, block {items[0][1]}) "
                    "could be read and decoded: are its tars where the index says (a moved reference-mode input)? "
                    "else rebuild the corpus with corpus.verify_images=decode"
                )
            cursor.advance((workers - 1) * step_items + self.rank * self.batch_size)  # this worker's next
            yield (torch.stack(images), torch.stack(targets), torch.tensor(len(items) - len(images)),
                   torch.tensor(after), torch.tensor(trace))  # fmt: skip


class Ledger:
    """What each model saw: a CSV row per item consumed, one file per rank and run segment, so ranks
    never share a file and a resume starts files of its own. A resume first drops rows past its
    checkpoint (rank 0; rows of one file are in step order, so only its tail is read)."""

    HEADER = "rank,step,pass,block,item,shard,key,copy,decoded\n"

    def __init__(self, folder: Path, rank: int, index: CorpusIndex):
        self.folder, self.rank, self.index = folder, rank, index
        self.file = None

    def record(self, step: int, trace: torch.Tensor) -> None:
        if self.file is None:  # the segment starts at the first step it records
            self.folder.mkdir(parents=True, exist_ok=True)
            self.file = open(self.folder / f"rank{self.rank}-step{step:012d}.csv", "w")  # noqa: SIM115
            self.file.write(self.HEADER)
        rows = trace.numpy()
        shards, keys = self.index.shard_of(rows[:, 3]), self.index.keys[rows[:, 3]]
        self.file.writelines(
            f"{self.rank},{step},{p},{b},{i},{self.index.names[s].decode()},{k.decode()},{c},{d}\n"
            for (p, b, i, _, c, d), s, k in zip(rows.tolist(), shards, keys, strict=True)
        )
        self.file.flush()  # to the OS each step: a killed run's rows are all there for its resume to cut

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def start_fresh(self, ranks: int) -> None:
        """A run with no checkpoint: the rows of an earlier attempt (killed before its first checkpoint,
        maybe on more ranks) go. The files this run's ranks open at step 0 they truncate themselves."""
        mine = {f"rank{rank}-step{0:012d}.csv" for rank in range(ranks)}
        for path in self.folder.glob("rank*-step*.csv"):
            if path.name not in mine:
                path.unlink()

    def resume(self, steps: int, was_on: bool) -> None:
        """Keep the rows of steps < `steps` (the checkpoint's); refuse a ledger that does not reach them."""
        files = sorted(self.folder.glob("rank*-step*.csv"))
        last = -1
        for path in files:
            first = int(path.stem.rpartition("-step")[2])
            if first >= steps:  # a later segment's rows, or an earlier attempt's from this checkpoint
                path.unlink()
                continue
            last = max(last, _truncate_after(path, steps))
        if was_on and steps > 0 and last != steps - 1:
            raise ConfigError(f"data.ledger: {self.folder} ends at step {last}, but the checkpoint is at step "
                              f"{steps}; restore the ledger that belongs to it, or move it away to start anew")  # fmt: skip


def _truncate_after(path: Path, steps: int, chunk: int = 1 << 20) -> int:
    """Cut a ledger file after its last complete row of a step < `steps` (rows are in step order, so
    only the tail is read); the last step kept, -1 if none. A row cut by a kill is no row."""
    with open(path, "rb+") as file:
        for end, line in _lines_backwards(file, chunk):
            fields = line.rstrip(b"\n").split(b",")
            complete = line.endswith(b"\n") and len(fields) == Ledger.HEADER.count(",") + 1
            if complete and fields[1].isdigit() and int(fields[1]) < steps:
                file.truncate(end)
                return int(fields[1])
            if line == Ledger.HEADER.encode():
                file.truncate(end)
                return -1
        file.truncate(0)  # not even a header: a file cut before its first row
    return -1


def _lines_backwards(file, chunk: int):
    """(offset just past it, line with its newline) of each line of a file, last first."""
    pos, buffer = file.seek(0, os.SEEK_END), b""
    while True:
        cut = buffer.rfind(b"\n", 0, len(buffer) - 1)  # the newline ending the line before the last
        if cut >= 0:
            yield pos + len(buffer), buffer[cut + 1 :]
            buffer = buffer[: cut + 1]
        elif pos > 0:
            start = max(0, pos - chunk)
            file.seek(start)
            buffer, pos = file.read(pos - start) + buffer, start
        else:
            if buffer:
                yield len(buffer), buffer
            return


class StreamLoader:
    """One rank's training batches (images, targets, skipped, position, trace), a virtual epoch per
    iteration. `consumed(...)` records a batch training took; `state_dict` is the position, saved in
    checkpoints by Lightning, and `load_state_dict` restores it, on this layout or another one."""

    def __init__(self, sequence: ItemSequence, *, rank: int, ranks: int, num_workers: int, batch_size: int,
                 epoch_images: int, transform: RandomCropFlip, num_classes: int, identity: dict,
                 ledger: Ledger | None = None):  # fmt: skip
        self.sequence, self.rank, self.ranks, self.num_workers = sequence, rank, ranks, num_workers
        self.batch_size, self.epoch_images, self.transform = batch_size, epoch_images, transform
        self.num_classes, self.identity, self.ledger = num_classes, identity, ledger
        self.position: Position = START
        self.items_consumed = 0  # by the job, over every layout it ran on
        self.steps = 0  # the global step after the last batch consumed
        self._batches: Iterator | None = None  # the workers' batches, kept across virtual epochs
        self._resumed = False  # from a checkpoint (else a fresh start: an earlier attempt's ledger goes)

    @property
    def step_items(self) -> int:
        return self.ranks * self.batch_size

    def _start(self) -> Iterator:
        dataset = RankBatches(self.sequence, self.position, self.items_consumed, self.rank, self.ranks,
                              self.batch_size, self.transform, self.num_classes)  # fmt: skip
        return self._workers(dataset)

    def _workers(self, dataset: RankBatches) -> Iterator:
        return iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers))

    def __iter__(self):
        """A virtual epoch: the steps until `epoch_images` more items are consumed since the last epoch
        boundary. The workers run on from one epoch into the next (prefetching across the boundary); an
        epoch left unfinished stops them, since they ran ahead of what training consumed."""
        if self._batches is None:
            if self.ledger is not None and self.rank == 0 and not self._resumed:
                self.ledger.start_fresh(self.ranks)
            self._batches = self._start()
        end = (self.items_consumed // self.epoch_images + 1) * self.epoch_images
        finished = False
        try:
            for _ in range(-(-(end - self.items_consumed) // self.step_items)):
                yield next(self._batches)
            finished = True
        finally:
            if not finished:
                self._batches = None

    def consumed(self, after: torch.Tensor, trace: torch.Tensor, step: int) -> None:
        """Training took the batch whose global step ends at `after`, in global step `step`."""
        *position, self.items_consumed = after.tolist()
        self.position, self.steps = tuple(position), step + 1
        if self.ledger is not None:
            self.ledger.record(step, trace)

    def state_dict(self) -> dict:
        if self.ledger is not None:  # the ledger on disk reaches every checkpoint
            self.ledger.flush()
        return {"position": list(self.position), "items_consumed": self.items_consumed, "steps": self.steps,
                "identity": self.identity, "ledger": self.ledger is not None}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if "position" not in state:
            raise ConfigError("ckpt_path: the checkpoint's data stream was saved by an older wsp (virtual "
                              "streams); resume it with that version, or start anew")  # fmt: skip
        for key, value in self.identity.items():
            if state["identity"].get(key) != value:
                raise ConfigError(
                    f"ckpt_path: the checkpoint's data stream was made with another {key} "
                    f"({state['identity'].get(key)}, not {value}); resume with the settings it was trained with"
                )
        self._batches, self._resumed = None, True
        self.position, self.items_consumed = tuple(state["position"]), state["items_consumed"]
        self.steps = state["steps"]
        if self.ledger is not None:
            if self.rank == 0:
                self.ledger.resume(self.steps, state["ledger"])
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()  # no rank writes its rows before the old ones are cut


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
                 min_scale: float = 0.08, block_runs: int = 1024, run_samples: int = 16, seed: int = 0,
                 epoch_images: int | None = None, ledger: bool = False, ledger_dir: str | None = None):  # fmt: skip
        super().__init__()
        self.epoch_images = epoch_images
        self.path = Path(path)
        self.batch_size, self.num_workers, self.image_size = batch_size, num_workers, image_size
        self.resampling, self.min_scale, self.seed = resampling, min_scale, seed
        self.block_runs, self.run_samples = block_runs, run_samples
        if ledger and not ledger_dir:
            raise ValueError("data.ledger=true needs a folder to write it to (ledger_dir)")
        self.ledger_dir = Path(ledger_dir) if ledger else None
        for name, value in (("data.block_runs", block_runs), ("data.run_samples", run_samples)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}={value}: must be a whole number >= 1")
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
        self.index = CorpusIndex(self.path, {name: self.sizes[name] for name in self.train_shards})

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

    def item_sequence(self) -> ItemSequence:
        return ItemSequence(self.index, self.weights, self.num_samples("train"), self.block_runs,
                            self.run_samples, self.seed)  # fmt: skip

    def stream_loader(self, rank: int, world: int) -> StreamLoader:
        """The training batches of `rank` of a `world`-rank job."""
        ledger = Ledger(self.ledger_dir, rank, self.index) if self.ledger_dir else None
        return StreamLoader(self.item_sequence(), rank=rank, ranks=world, num_workers=self.num_workers,
                            batch_size=self.batch_size, epoch_images=self.images_per_epoch,
                            transform=RandomCropFlip(self.image_size, self.min_scale), num_classes=self.num_classes,
                            identity=self.stream_identity(), ledger=ledger)  # fmt: skip

    def stream_identity(self) -> dict:
        """What a checkpoint's stream position is only valid with: the corpus's train shards and sizes,
        and the settings that order and repeat their samples."""
        shards = json.dumps({name: self.sizes[name] for name in self.train_shards}, sort_keys=True)
        return {"corpus": hashlib.sha1(shards.encode()).hexdigest()[:16], "data.seed": self.seed,
                "data.resampling": self.resampling, "data.block_runs": self.block_runs,
                "data.run_samples": self.run_samples}  # fmt: skip

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            *batch, after, trace = batch
            self.train_loader.consumed(after, trace, self.trainer.global_step)
        return batch

    def teardown(self, stage: str) -> None:
        if getattr(self, "train_loader", None) is not None and self.train_loader.ledger is not None:
            self.train_loader.ledger.close()

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
