"""Frozen-backbone features for linear evaluation, VISSL-style: the average-pooled output of chosen
ResNe(X)t stages (res2..res5; res5 is the backbone's usual pooled feature, 2048-d for ResNeXt-101),
extracted once in eval mode and cached on disk, so probes with any regulariser reuse them.

The cache is a folder per (weights, model, dataset, preprocessing, stages, shard size). A split is cut
into shards of `shard_images` consecutive samples; each shard is one safetensors file holding each
stage's features (fp16), the labels, and the samples' indices in their split (an unreadable image leaves
a gap, not a shift). Extraction is a Lightning predict over every device of the job: the pending
shards are dealt round-robin to the ranks, so each image is read once (no sampler padding), and each
shard is written atomically when done, so a killed extraction resumes from its finished shards. A
split is complete when its `<split>.json` lists its shards. Readers stream the shards one at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from wsp.data.transforms import normalise

STAGES = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}


def cache_key(**identity) -> str:
    """What the features depend on; a weights file counts by path, size and modification time."""
    weights = identity.get("weights")
    if weights:
        stat = Path(weights).stat()
        identity["weights"] = [str(Path(weights).resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}.safetensors"


def _readable(path: Path) -> bool:
    """A shard whose header and data are whole (a truncated file fails safetensors' size check)."""
    try:
        with safe_open(str(path), framework="pt") as shard:
            return "indices" in shard.keys()  # noqa: SIM118 (safe_open has no __contains__)
    except Exception:
        return False


def pending_shards(folder: Path, split: str, images: int, shard_images: int) -> list[int]:
    shards = range((images + shard_images - 1) // shard_images)
    return [j for j in shards if not _readable(folder / shard_name(split, j))]


class ShardBatches:
    """Batches of sample indices that never straddle a shard: a batch belongs to exactly one shard."""

    def __init__(self, shards: list[int], images: int, shard_images: int, batch_size: int):
        # (start, end) per shard, batches made as iterated: millions of images need no index list in memory
        self.spans = [(j * shard_images, min((j + 1) * shard_images, images)) for j in shards]
        self.batch_size = batch_size

    def __iter__(self):
        for first, end in self.spans:
            for start in range(first, end, self.batch_size):
                yield list(range(start, min(start + self.batch_size, end)))

    def __len__(self) -> int:
        return sum(-(-(end - first) // self.batch_size) for first, end in self.spans)


class FeatureExtractor(pl.LightningModule):
    """Writes the pooled stage features of one split's pending shards, the share this rank was dealt.

    The pending list is read by rank 0 and broadcast, so every rank deals from the same list however the
    ranks' start-up times interleave with shard writes."""

    def __init__(self, backbone: torch.nn.Module, stages: list[str], folder: Path, split: str,
                 dataset, shard_images: int, batch_size: int, num_workers: int, collate):  # fmt: skip
        super().__init__()
        self.backbone, self.stages, self.folder, self.split = backbone, stages, Path(folder), split
        self.dataset, self.shard_images, self.collate = dataset, shard_images, collate
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pooled: dict[str, torch.Tensor] = {}
        self.parts: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = []
        self.shard: int | None = None

    def predict_dataloader(self) -> DataLoader:
        pending = pending_shards(self.folder, self.split, len(self.dataset), self.shard_images)
        pending = self.trainer.strategy.broadcast(pending)
        mine = pending[self.global_rank :: self.trainer.world_size]
        batches = ShardBatches(mine, len(self.dataset), self.shard_images, self.batch_size)
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                          collate_fn=self.collate)  # fmt: skip

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

    def predict_step(self, batch, batch_idx):
        images, labels, _, indices = batch
        shard = int(indices[0]) // self.shard_images
        if shard != self.shard:
            self._flush()
            self.shard = shard
        self.backbone.forward_features(normalise(images))
        features = {stage: self.pooled[stage].half().cpu() for stage in self.stages}  # as stored
        self.parts.append((features, labels.cpu(), indices.cpu()))

    def on_predict_end(self) -> None:
        self._flush()
        for hook in self.hooks:
            hook.remove()
        self.trainer.strategy.barrier()  # every rank's shards are on disk before the split is closed

    def _flush(self) -> None:
        if self.parts:
            features = {s: torch.cat([p[0][s] for p in self.parts]) for s in self.stages}
            labels, indices = (torch.cat([p[i] for p in self.parts]) for i in (1, 2))
            write_shard(self.folder / shard_name(self.split, self.shard), features, labels, indices)
            self.parts.clear()


def write_shard(path: Path, features: dict[str, torch.Tensor], labels: torch.Tensor, indices: torch.Tensor):
    """One shard, atomically: a shard on disk is whole (features stored as fp16)."""
    tensors = {f"stage.{stage}": x.half() for stage, x in features.items()}
    tensors.update(labels=labels, indices=indices)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
    os.replace(partial, path)


def close_split(folder: Path, split: str, images: int, shard_images: int) -> None:
    """Write `<split>.json`, which marks the split complete, once every shard is on disk."""
    if missing := pending_shards(folder, split, images, shard_images):
        raise RuntimeError(f"features ({split}): shards {missing[:3]} missing after extraction")
    shards = [shard_name(split, j) for j in range((images + shard_images - 1) // shard_images)]
    partial = folder / f"{split}.json.tmp"
    partial.write_text(json.dumps({"images": images, "shard_images": shard_images, "shards": shards}))
    os.replace(partial, folder / f"{split}.json")


def extract_features(trainer: pl.Trainer, backbone: torch.nn.Module, stages: list[str], folder: Path,
                     splits: dict, shard_images: int, batch_size: int, num_workers: int) -> int:  # fmt: skip
    """Extract every split of `splits` (name -> dataset of (image, label, index) items) not yet complete
    in `folder`, with a predict-only `trainer` over the job's devices. Returns this process's rank."""
    from wsp.data.transfer import collate

    folder.mkdir(parents=True, exist_ok=True)
    for split, dataset in splits.items():
        if (folder / f"{split}.json").is_file():
            continue
        extractor = FeatureExtractor(backbone, stages, folder, split, dataset, shard_images, batch_size,
                                     num_workers, collate)  # fmt: skip
        # by design: batches dealt by ShardBatches, results written to shards, not returned
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You are using a custom batch sampler|predict returned None")
            trainer.predict(extractor, return_predictions=False)
        if trainer.global_rank == 0:
            close_split(folder, split, len(dataset), shard_images)
    return trainer.global_rank


class FeatureSet:
    """One split's cached features, read a shard at a time: host memory holds one shard's features
    (plus the split's labels and indices, 16 bytes an image), whatever the split's size."""

    def __init__(self, folder: Path, split: str):
        self.folder = Path(folder)
        index = json.loads((self.folder / f"{split}.json").read_text())
        self.shards = [self.folder / name for name in index["shards"]]
        labels, indices, self.sizes = [], [], []
        for path in self.shards:
            with safe_open(str(path), framework="pt") as shard:
                labels.append(shard.get_tensor("labels"))
                indices.append(shard.get_tensor("indices"))
                self.sizes.append(len(labels[-1]))
                self.stages = [k.removeprefix("stage.") for k in shard.keys() if k.startswith("stage.")]  # noqa: SIM118
                self.dims = {s: shard.get_slice(f"stage.{s}").get_shape()[1] for s in self.stages}
        self.labels, self.indices = torch.cat(labels), torch.cat(indices)

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self, stage: str) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, fp16 features) per shard, in row order."""
        start = 0
        for path, size in zip(self.shards, self.sizes, strict=True):
            with safe_open(str(path), framework="pt") as shard:
                yield start, shard.get_tensor(f"stage.{stage}")
            start += size

    def load(self, stage: str) -> torch.Tensor:
        """All of a stage's features in memory as fp32 (small splits, tests)."""
        return torch.cat([x.float() for _, x in self.chunks(stage)])
