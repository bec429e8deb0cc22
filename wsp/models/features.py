"""Frozen-backbone features for linear evaluation, VISSL-style: the average-pooled output of chosen
ResNe(X)t stages (res2..res5; res5 is the backbone's usual pooled feature, 2048-d for ResNeXt-101),
extracted once in eval mode and cached on disk, so probes with any regulariser reuse them.

The cache is a folder per key: a hash of what the features depend on, taken once by rank 0 from what
was actually loaded (the backbone's tensors, each split's file list, the crop and model settings, the
precision, the timm and torch versions) and broadcast; every rank checks it loaded the same weights.
A split is cut into shards of `shard_images` consecutive samples; each shard is one safetensors file
holding each stage's features (fp16), the labels, and the samples' indices in their split (an
unreadable image leaves a gap, not a shift), written atomically and fsynced.

Extraction is a Lightning predict over every device of the job. A rank takes a shard only under a
claim (an flock on `claims/<shard>.lock`, released by the OS if the process dies): first the shards
dealt to it round-robin, then, from the back, any others nobody has started. So a rank with no shard
of its own still runs every collective, ranks that finish early help the others, and two jobs
extracting into one cache never do a shard twice. A split is closed by rank 0 once every shard is on
disk: the images missing from the shards are the unreadable ones, checked against `data.max_unreadable`
over the whole split (a split above it is refused and its gapped shards deleted, not cached), and
recorded in `<split>.json` with the split's image count and file-list digest, which a later job checks
before reusing it. Readers stream the shards one at a time, each rank its own share.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from wsp.data.transforms import normalise
from wsp.utils.files import durable_replace

STAGES = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}


def digest(chunks: Iterator) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """The module's tensors as loaded (names, dtypes, shapes and bytes), not the file they came from."""

    def chunks():
        for name, tensor in sorted(module.state_dict().items()):
            yield f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode()
            # hashed in place: no copy of a multi-GB backbone's bytes
            yield tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()

    return digest(chunks())


def dataset_digest(dataset) -> str:
    """A split's identity: its (path, label) list in order, its boxes, and its size."""
    lines = (f"{path}\t{label}\n".encode() for path, label in dataset.samples)
    boxes = json.dumps(sorted(dataset.boxes.items())).encode()
    return digest(iter([*lines, boxes, str(len(dataset)).encode()]))


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}.safetensors"


def _readable(path: Path) -> bool:
    """A shard whose header and data are whole (a truncated file fails safetensors' size check)."""
    try:
        with safe_open(str(path), framework="pt") as shard:
            return "indices" in shard.keys()  # noqa: SIM118 (safe_open has no __contains__)
    except Exception:
        return False


def shard_count(images: int, shard_images: int) -> int:
    return -(-images // shard_images)


def pending_shards(folder: Path, split: str, images: int, shard_images: int) -> list[int]:
    return [
        j for j in range(shard_count(images, shard_images)) if not _readable(folder / shard_name(split, j))
    ]


class ShardClaims:
    """Exclusive claims on shards across processes, jobs and nodes: a non-blocking flock per shard,
    held from the first batch handed out until the shard is written. The OS drops the claim of a
    process that dies, so a killed job's shards are taken again."""

    def __init__(self, folder: Path):
        self.folder = folder / "claims"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.held: dict[str, int] = {}

    def _open(self, name: str) -> int:
        return os.open(self.folder / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)

    def take(self, name: str) -> bool:
        fd = self._open(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise OSError(f"task.feature_cache: cannot lock files in {self.folder} ({err}); "
                          "put the cache on a filesystem with flock") from None  # fmt: skip
        self.held[name] = fd
        return True

    def release(self, name: str) -> None:
        fd = self.held.pop(name)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def wait(self, name: str) -> None:
        """Until whoever holds the claim lets it go."""
        fd = self._open(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)


class ClaimedShardBatches:
    """Batches (as `range`s of sample indices, O(1) memory however many Lightning records) of the
    shards this rank claims, in `order`; a batch never straddles a shard. For each batch handed out it
    queues (split, shard, is the shard's last batch), which the module reads back in the same order.
    Unsized on purpose: how many batches a rank makes depends on what the other ranks claim."""

    def __init__(self, split: str, order: list[int], images: int, shard_images: int, batch_images: int,
                 folder: Path, claims: ShardClaims, handed_out: deque):  # fmt: skip
        self.split, self.order, self.images, self.shard_images = split, order, images, shard_images
        self.batch_images, self.folder, self.claims, self.handed_out = (
            batch_images,
            folder,
            claims,
            handed_out,
        )

    def __iter__(self):
        for shard in self.order:
            name = shard_name(self.split, shard)
            if not self.claims.take(name):
                continue  # another rank or job is on it
            if _readable(self.folder / name):  # finished by someone between the listing and the claim
                self.claims.release(name)
                continue
            first, end = shard * self.shard_images, min((shard + 1) * self.shard_images, self.images)
            for start in range(first, end, self.batch_images):
                stop = min(start + self.batch_images, end)
                self.handed_out.append((self.split, shard, stop == end))
                yield range(start, stop)


def claim_order(pending: list[int], rank: int, world_size: int) -> list[int]:
    """The rank's own round-robin share first, then the others' from the back, where their owners get last."""
    own = pending[rank::world_size]
    taken = set(own)
    return own + [j for j in reversed(pending) if j not in taken]


class FeatureExtractor(pl.LightningModule):
    """Writes the pooled stage features of every split's pending shards; see the module's docstring."""

    def __init__(self, backbone: torch.nn.Module, stages: list[str], cache: Path, splits: dict,
                 identity: dict, shard_images: int, batch_size: int, num_workers: int, collate):  # fmt: skip
        super().__init__()
        self.backbone, self.stages, self.cache, self.splits = backbone, stages, Path(cache), splits
        self.identity, self.shard_images, self.collate = identity, shard_images, collate
        self.batch_size, self.num_workers = batch_size, num_workers
        channels = {info["module"]: info["num_chs"] for info in backbone.feature_info}
        self.dims = {stage: channels[STAGES[stage]] for stage in stages}
        self.folder: Path | None = None
        self.digests: dict[str, str] = {}
        self.pooled: dict[str, torch.Tensor] = {}
        self.parts: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = []
        self.handed_out: deque = deque()
        self.written: list[str] = []  # this process's shards, for tests and logs

    def setup(self, stage: str) -> None:
        if self.folder is None:
            self.folder = self._locate()
            self.claims = ShardClaims(self.folder)

    def _locate(self) -> Path:
        """The cache folder: keyed by rank 0, after every rank showed it holds the same weights."""
        strategy = self.trainer.strategy
        mine = weights_digest(self.backbone)
        agreed = strategy.broadcast(mine)
        differ = strategy.reduce(
            torch.tensor(float(mine != agreed), device=strategy.root_device), reduce_op="sum"
        )
        if differ:
            raise ValueError("backbone.weights: the ranks loaded different weights (was the file rewritten "
                             "while the job started?)")  # fmt: skip
        key = None
        if self.global_rank == 0:
            self.digests = {split: dataset_digest(dataset) for split, dataset in self.splits.items()}
            key = digest(iter([json.dumps({**self.identity, "weights": mine, "splits": self.digests,
                                            "stages": self.stages, "shard_images": self.shard_images},
                                           sort_keys=True, default=str).encode()]))  # fmt: skip
        self.digests, key = strategy.broadcast((self.digests, key))
        folder = self.cache / key[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def open_splits(self) -> list[str]:
        """The splits not yet closed; a closed one must describe the dataset it is reused for."""
        todo = []
        for split, dataset in self.splits.items():
            index = self.folder / f"{split}.json"
            if not index.is_file():
                todo.append(split)
                continue
            recorded = json.loads(index.read_text())
            if (recorded.get("images"), recorded.get("dataset")) != (len(dataset), self.digests[split]):
                raise ValueError(f"task.feature_cache: {index} describes another {split} split "
                                 f"({recorded.get('images')} images) than this one ({len(dataset)})")  # fmt: skip
        return todo

    def predict_dataloader(self) -> list[DataLoader]:
        strategy = self.trainer.strategy
        pending = None
        if self.global_rank == 0:
            pending = {
                split: pending_shards(self.folder, split, len(self.splits[split]), self.shard_images)
                for split in self.open_splits()
            }
        pending = strategy.broadcast(pending)
        busy = any(pending.values())
        loaders = []
        for split, dataset in self.splits.items():
            order = claim_order(pending.get(split, []), self.global_rank, self.trainer.world_size)
            batches = ClaimedShardBatches(split, order, len(dataset), self.shard_images, self.batch_size,
                                          self.folder, self.claims, self.handed_out)  # fmt: skip
            loaders.append(DataLoader(dataset, batch_sampler=batches, num_workers=self.num_workers if busy else 0,
                                      collate_fn=self.collate))  # fmt: skip
        return loaders

    def on_predict_start(self) -> None:
        self.backbone.eval()
        self.hooks = [
            getattr(self.backbone, STAGES[stage]).register_forward_hook(
                lambda module, args, out, stage=stage: self.pooled.__setitem__(
                    stage, F.adaptive_avg_pool2d(out, 1).flatten(1)
                )
            )
            for stage in self.stages
        ]

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        split, shard, last = self.handed_out.popleft()  # batches arrive in the order they were handed out
        images, labels, _, indices = batch
        if len(indices):  # a batch of only unreadable images has none
            self.backbone.forward_features(normalise(images))
            features = {stage: self.pooled[stage].half().cpu() for stage in self.stages}  # as stored
            self.parts.append((features, labels.cpu(), indices.cpu()))
        if last:
            self._write(split, shard)

    def on_predict_end(self) -> None:
        for hook in self.hooks:
            hook.remove()

    def _write(self, split: str, shard: int) -> None:
        features = {s: torch.cat([p[0][s] for p in self.parts] or [torch.zeros(0, self.dims[s])])
                    for s in self.stages}  # fmt: skip
        labels, indices = (torch.cat([p[i] for p in self.parts] or [torch.zeros(0, dtype=torch.long)])
                           for i in (1, 2))  # fmt: skip
        name = shard_name(split, shard)
        write_shard(self.folder / name, features, labels, indices)
        self.parts.clear()
        self.claims.release(name)
        self.written.append(name)

    def close_splits(self, max_unreadable: float) -> bool:
        """Every rank: after a predict round, close what is complete; False if shards remain (claimed by
        a job that died, or finished by no one yet). A refused split raises on every rank."""
        strategy = self.trainer.strategy
        strategy.barrier()  # every rank of this job has written its shards and let its claims go
        outcome = None
        if self.global_rank == 0:
            outcome = "closed"
            for split in self.open_splits():
                dataset = self.splits[split]
                pending = pending_shards(self.folder, split, len(dataset), self.shard_images)
                for shard in pending:  # held by another job: wait for it, then see whether it was written
                    self.claims.wait(shard_name(split, shard))
                if pending_shards(self.folder, split, len(dataset), self.shard_images):
                    outcome = "again"
                    continue
                refused = close_split(self.folder, split, dataset, self.digests[split], self.shard_images,
                                      max_unreadable)  # fmt: skip
                if refused:
                    outcome = refused
                    break
        outcome = strategy.broadcast(outcome)
        if outcome not in ("closed", "again"):
            raise ValueError(outcome)
        return outcome == "closed"


def _partial(path: Path) -> Path:
    """A temp name no other process, on this node or another, picks."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def write_shard(path: Path, features: dict[str, torch.Tensor], labels: torch.Tensor, indices: torch.Tensor):
    """One shard, atomically and durably: a shard on disk is whole (features stored as fp16)."""
    tensors = {f"stage.{stage}": x.half() for stage, x in features.items()}
    tensors.update(labels=labels, indices=indices)
    partial = _partial(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
    durable_replace(partial, path)


def close_split(folder: Path, split: str, dataset, dataset_key: str, shard_images: int,
                max_unreadable: float) -> str | None:  # fmt: skip
    """Write `<split>.json`, which marks the split complete, once every shard is on disk and the images
    missing from them (unreadable) are within `max_unreadable` of the split. Otherwise return the
    one-line refusal and delete the shards with gaps, so that they are extracted again next time."""
    images = len(dataset)
    shards = [shard_name(split, j) for j in range(shard_count(images, shard_images))]
    seen = torch.zeros(images, dtype=torch.bool)
    gapped, dims = [], {}
    for j, name in enumerate(shards):
        with safe_open(str(folder / name), framework="pt") as shard:
            indices = shard.get_tensor("indices")
            dims = dims or {k.removeprefix("stage."): shard.get_slice(k).get_shape()[1]
                            for k in shard.keys() if k.startswith("stage.")}  # noqa: SIM118  # fmt: skip
        seen[indices] = True
        if len(indices) < min(shard_images, images - j * shard_images):
            gapped.append(name)
    unreadable = (~seen).nonzero().flatten().tolist()
    if len(unreadable) > max_unreadable * images:
        for name in gapped:
            (folder / name).unlink()
        first = dataset.samples[unreadable[0]][0]
        return (f"data.root: {len(unreadable)} of {images} {split} images unreadable, more than "
                f"data.max_unreadable={max_unreadable}; e.g. {first}")  # fmt: skip
    index = {"images": images, "dataset": dataset_key, "shard_images": shard_images, "shards": shards,
             "dims": dims, "unreadable": unreadable}  # fmt: skip
    partial = _partial(folder / f"{split}.json")
    partial.write_text(json.dumps(index))
    durable_replace(partial, folder / f"{split}.json")
    return None


def extract_features(trainer: pl.Trainer, extractor: FeatureExtractor, max_unreadable: float) -> Path:
    """Extract every split of the extractor not yet complete in its cache folder, with a predict-only
    `trainer` over the job's devices; returns the folder. Rounds repeat while another job's claims
    leave shards undone (a job that died mid-shard)."""
    with warnings.catch_warnings():  # by design: batches dealt by claims, results written to shards
        warnings.filterwarnings("ignore", "You are using a custom batch sampler|predict returned None")
        while True:
            trainer.predict(extractor, return_predictions=False)
            if extractor.close_splits(max_unreadable):
                return extractor.folder


class FeatureSet:
    """One split's cached features, read a shard at a time. Every rank holds the split's labels and
    dataset indices (16 bytes an image, what a stratified holdout and the lower bound need) and streams
    the features of its share of the shards (`part` = (rank, ranks)) only."""

    def __init__(self, folder: Path, split: str, part: tuple[int, int] = (0, 1)):
        self.folder, self.part = Path(folder), part
        index = json.loads((self.folder / f"{split}.json").read_text())
        self.shards = [self.folder / name for name in index["shards"]]
        self.dims, self.unreadable = index["dims"], len(index["unreadable"])
        self.stages = list(self.dims)
        labels, indices, self.starts, rows = [], [], [], 0
        for path in self.shards:
            with safe_open(str(path), framework="pt") as shard:
                labels.append(shard.get_tensor("labels"))
                indices.append(shard.get_tensor("indices"))
            self.starts.append(rows)
            rows += len(labels[-1])
        self.labels, self.indices = torch.cat(labels), torch.cat(indices)

    def __len__(self) -> int:
        return len(self.labels)

    def share(self) -> list[int]:
        """This rank's shards: every ranks-th, from its rank on."""
        rank, ranks = self.part
        return list(range(rank, len(self.shards), ranks))

    def share_rows(self) -> int:
        ends = [*self.starts[1:], len(self.labels)]
        return sum(ends[j] - self.starts[j] for j in self.share())

    def chunks(self, stage: str) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, fp16 features) per shard of this rank's share, in row order."""
        for j in self.share():
            with safe_open(str(self.shards[j]), framework="pt") as shard:
                yield self.starts[j], shard.get_tensor(f"stage.{stage}")

    def load(self, stage: str) -> torch.Tensor:
        """All of a stage's features (this rank's share) in memory as fp32 (small splits, tests)."""
        return torch.cat([x.float() for _, x in self.chunks(stage)])
