"""The transfer datasets as one LightningDataModule: any layout of wsp.data.labelled, the paper's
augmentation for training, resize + centre crop for evaluation.

Images go through the same uint8 crop code as the hashtag stream and are standardised on the device
(`on_after_batch_transfer`; feature extraction calls `normalise` itself). An unreadable image is
dropped from its batch and counted (batches are (images, labels, skipped, sample indices)); a batch of
only unreadable images is empty (see `collate`). More than `max_unreadable` of a split in one pass over
it stops the run, naming one.

Training order: pass e over the train split is a permutation seeded by (the run's seed, e), dealt to the
ranks in equal shares (`EpochShares`). The train loader (`TrainPasses`) counts the batches training
took from it; Lightning saves that position in checkpoints and restores it before the loader's next
pass begins, which then starts where training stopped: a resume trains the images and order an
uninterrupted run would have.
"""

from __future__ import annotations

import csv
import multiprocessing
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from PIL import Image
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wsp.config import ConfigError
from wsp.data import labelled
from wsp.data.transforms import CentreCrop, RandomCropFlip, StandardisedOnDevice

LAYOUTS = {
    "imagefolder": labelled.image_folder,
    "imagenet": labelled.imagenet,
    "imagenet_k": labelled.imagenet_k,
    "cub": labelled.cub,
    "places365": labelled.places365,
}


class Unreadable(NamedTuple):
    """What `LabelledImages` gives for an image it cannot read: the shape a readable one would have."""

    shape: tuple[int, int, int]


class LabelledImages(Dataset):
    def __init__(self, samples: labelled.Samples, transform, boxes: dict, max_unreadable: float):
        self.samples, self.transform, self.boxes, self.max_unreadable = (
            samples,
            transform,
            boxes,
            max_unreadable,
        )
        self.unreadable = multiprocessing.Value("i", 0)  # shared with the (forked) loader workers

    def __len__(self) -> int:
        return len(self.samples)

    def begin_pass(self) -> None:
        """The cap is per pass: the same few bad files, read again each epoch, must not add up to it."""
        self.unreadable.value = 0

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        rng = random.Random(int(torch.randint(2**62, ())))  # torch's RNG: seeded per worker by Lightning
        try:
            with Image.open(path) as image:
                if path in self.boxes:  # CUB: crop to the bird first (x, y, width, height)
                    x, y, w, h = self.boxes[path]
                    image = image.convert("RGB").crop((x, y, x + w, y + h))
                return self.transform(image, rng), label, i
        except Exception as err:  # missing, truncated, not an image: skip and count, up to the cap
            with self.unreadable.get_lock():
                self.unreadable.value += 1
                count = self.unreadable.value
            if count > self.max_unreadable * len(self):
                raise ValueError(
                    f"data.root: {count} of {len(self)} images unreadable, more than data.max_unreadable="
                    f"{self.max_unreadable}; e.g. {path} ({err})"
                ) from None
            return Unreadable((3, self.transform.size, self.transform.size))


class PassLoader(DataLoader):
    """Begins each pass over its dataset with the unreadable count at zero. `__iter__` runs in the main
    process once per pass, persistent workers or not, before it hands that pass's first index to a
    worker; the count is shared memory, so the workers see the reset."""

    def __iter__(self):
        self.dataset.begin_pass()
        return super().__iter__()


class EpochShares(DistributedSampler):
    """One rank's share of each pass over the dataset, from `start` on. Pass e's order is a permutation
    seeded by (seed, e), not by torch's global RNG, padded with its first images to a multiple of the
    ranks (as DistributedSampler pads): rank r takes its places r, r + R, ..., so the ranks' shares are
    disjoint but for the padding, of equal length (the ranks step together), and a global step's batches
    are consecutive places of the order. The loader sets the pass and start (`position`); Lightning's
    `set_epoch` is ignored. A DistributedSampler, so Lightning leaves it in place under DDP."""

    def __init__(self, dataset: Dataset, seed: int, rank: int, ranks: int):
        super().__init__(dataset, num_replicas=ranks, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        pass  # the loader's pass, not Lightning's epoch count: see TrainPasses

    def position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def share(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return np.resize(order, self.total_size)[self.rank :: self.num_replicas]

    def __iter__(self):
        return map(int, self.share(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.num_samples  # the whole share: Lightning counts an epoch's batches from it


class TrainPasses(PassLoader):
    """The training loader: pass after pass of `EpochShares`, resumable mid-pass.

    It counts the batches it hands out in this process, which are those training took: Lightning takes
    a sized loader's batches one at a time, as each step begins (the workers' prefetching is not
    counted). `state_dict` (saved by Lightning in checkpoints) is the pass and its batches taken;
    `load_state_dict` (Lightning calls it after `train_dataloader`, before its first `iter`) makes the
    next pass go on from there, skipping the batches taken by slicing the order: no image is read.

    `iter` goes on with the current pass if no batch was taken since it began or since a restore, and
    with the next pass if this one was finished or partly taken (as with trainer.limit_train_batches).
    A resume mid-pass needs the layout and data it was saved with (ranks, per-rank batch, train images,
    seed); at a pass's end any layout goes on with the next pass."""

    def __init__(
        self, dataset: LabelledImages, *, batch_size: int, seed: int, rank: int, ranks: int, **kwargs
    ):
        super().__init__(
            dataset, batch_size=batch_size, sampler=EpochShares(dataset, seed, rank, ranks), **kwargs
        )
        self.epoch, self.taken = 0, 0  # the pass, and its batches training took
        self.restored = False  # a restored position not yet trained from

    def __iter__(self):
        if self.taken >= len(self) or (self.taken and not self.restored):
            self.epoch, self.taken = self.epoch + 1, 0
        self.sampler.position(self.epoch, self.taken * self.batch_size)
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self.taken += 1
            self.restored = False
            yield batch

    def layout(self) -> dict:
        return {"ranks": self.sampler.num_replicas, "batch_size": self.batch_size, "images": len(self.dataset),
                "seed": self.sampler.seed}  # fmt: skip

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.taken, "pass_batches": len(self), **self.layout()}

    def load_state_dict(self, state: dict) -> None:
        if 0 < state["batches"] < state["pass_batches"]:  # mid-pass: the same order, dealt the same way
            saved = {key: state[key] for key in self.layout()}
            if saved != self.layout():
                differ = ", ".join(
                    f"{k} {saved[k]}, not {v}" for k, v in self.layout().items() if saved[k] != v
                )
                raise ConfigError(
                    f"ckpt_path: the checkpoint stopped mid-epoch with another data layout ({differ}); resume "
                    "it with the devices, data.batch_size, data and seed it was saved with"
                )
            self.epoch, self.taken = state["epoch"], state["batches"]
        else:  # at a pass's start or end: on any layout
            self.epoch, self.taken = state["epoch"], len(self) if state["batches"] else 0
        self.restored = True


def collate(batch):
    """(images uint8 (n, 3, S, S), labels int64 (n,), skipped: a 0-d int64 count, sample indices int64
    (n,)), the unreadable images left out and counted. A batch of only unreadable images is empty: n = 0,
    with `skipped` its size."""
    kept = [item for item in batch if not isinstance(item, Unreadable)]
    skipped = torch.tensor(len(batch) - len(kept))
    if not kept:
        none = torch.zeros(0, dtype=torch.int64)
        return torch.zeros((0, *batch[0].shape), dtype=torch.uint8), none, skipped, none.clone()
    images, labels, indices = zip(*kept, strict=True)
    return torch.stack(images), torch.tensor(labels), skipped, torch.tensor(indices)


class TransferDataModule(StandardisedOnDevice, pl.LightningDataModule):
    def __init__(self, layout: str, root: str, batch_size: int, num_workers: int, image_size: int,
                 min_scale: float = 0.08, crop_pct: float = 0.875, max_unreadable: float = 0.01,
                 duplicates: str | None = None, seed: int = 0, **layout_options):  # fmt: skip
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"data.name={layout}: valid are {', '.join(LAYOUTS)}")
        self.splits = LAYOUTS[layout](root, **layout_options)
        if not self.splits.train:
            raise ValueError(f"data.root={root}: the train split has no images")
        self.batch_size, self.num_workers, self.max_unreadable = batch_size, num_workers, max_unreadable
        self.seed = seed  # of the training order
        # val images listed as duplicates of training images, for the paper's lower bound; None: no list
        self.listed = listed_duplicates(duplicates, self.splits.val) if duplicates else None
        self.train_transform = RandomCropFlip(image_size, min_scale)
        self.eval_transform = CentreCrop(image_size, crop_pct)

    @property
    def class_names(self) -> list[str]:
        return self.splits.classes

    @property
    def num_classes(self) -> int:
        return len(self.splits.classes)

    def dataset(self, split: str, augment: bool) -> LabelledImages:
        samples = self.splits.train if split == "train" else self.splits.val
        transform = self.train_transform if augment else self.eval_transform
        return LabelledImages(samples, transform, self.splits.boxes, self.max_unreadable)

    def _loader(self, split: str, augment: bool, shuffle: bool) -> DataLoader:
        return PassLoader(self.dataset(split, augment), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=collate)  # fmt: skip

    def train_dataloader(self) -> TrainPasses:
        distributed = dist.is_available() and dist.is_initialized()
        rank, ranks = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        return TrainPasses(self.dataset("train", augment=True), batch_size=self.batch_size, seed=self.seed,
                           rank=rank, ranks=ranks, num_workers=self.num_workers,
                           persistent_workers=self.num_workers > 0, collate_fn=collate)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        dataset = self.dataset("val", augment=False)
        # Under DDP every val image goes to one rank, unpadded (Lightning's DistributedSampler would pad
        # the last ranks with repeats, counted twice); a DistributedSampler here is left as it is.
        distributed = dist.is_available() and dist.is_initialized()
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False) if distributed else None
        return PassLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=collate)  # fmt: skip

    def feature_loaders(self) -> dict[str, DataLoader]:
        """Un-augmented, unshuffled loaders of both splits, for feature extraction."""
        return {split: self._loader(split, augment=False, shuffle=False) for split in ("train", "val")}


def listed_duplicates(matches: str, val: labelled.Samples) -> torch.Tensor:
    """A mask over the val split of the images task=dedup listed (matches.csv's eval_image column)."""
    path = Path(matches)
    if not path.is_file():
        raise FileNotFoundError(f"data.duplicates={matches}: no such file")
    with path.open(newline="") as table:
        listed = {str(Path(row["eval_image"]).resolve()) for row in csv.DictReader(table)}
    position = {str(Path(image).resolve()): i for i, (image, _) in enumerate(val)}
    if unknown := sorted(listed - position.keys()):
        raise ValueError(
            f"data.duplicates={matches}: {len(unknown)} listed images are not in the val split, e.g. {unknown[0]}"
        )
    mask = torch.zeros(len(val), dtype=torch.bool)
    mask[[position[image] for image in listed]] = True
    return mask
