"""The transfer datasets as one LightningDataModule: any layout of wsp.data.labelled, the paper's
augmentation for training, resize + centre crop for evaluation.

Images go through the same uint8 crop code as the hashtag stream and are standardised on the device
(`on_after_batch_transfer`; feature extraction calls `normalise` itself). An unreadable image is
dropped from its batch and counted (batches are (images, labels, skipped, sample indices)); more than
`max_unreadable` of a split in one pass over it stops the run, naming one.
"""

from __future__ import annotations

import csv
import multiprocessing
import random
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from PIL import Image
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from wsp.data import labelled
from wsp.data.transforms import CentreCrop, RandomCropFlip, StandardisedOnDevice

LAYOUTS = {
    "imagefolder": labelled.image_folder,
    "imagenet": labelled.imagenet,
    "imagenet_k": labelled.imagenet_k,
    "cub": labelled.cub,
    "places365": labelled.places365,
}


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
            return None


class PassLoader(DataLoader):
    """Begins each pass over its dataset with the unreadable count at zero. `__iter__` runs in the main
    process once per pass, persistent workers or not, before it hands that pass's first index to a
    worker; the count is shared memory, so the workers see the reset."""

    def __iter__(self):
        self.dataset.begin_pass()
        return super().__iter__()


def collate(batch):
    kept = [item for item in batch if item is not None]
    if not kept:
        raise ValueError("data.root: a whole batch of images was unreadable")
    images, labels, indices = zip(*kept, strict=True)
    return (
        torch.stack(images),
        torch.tensor(labels),
        torch.tensor(len(batch) - len(kept)),
        torch.tensor(indices),
    )


class TransferDataModule(StandardisedOnDevice, pl.LightningDataModule):
    def __init__(self, layout: str, root: str, batch_size: int, num_workers: int, image_size: int,
                 min_scale: float = 0.08, crop_pct: float = 0.875, max_unreadable: float = 0.01,
                 duplicates: str | None = None, **layout_options):  # fmt: skip
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"data.name={layout}: valid are {', '.join(LAYOUTS)}")
        self.splits = LAYOUTS[layout](root, **layout_options)
        if not self.splits.train:
            raise ValueError(f"data.root={root}: the train split has no images")
        self.batch_size, self.num_workers, self.max_unreadable = batch_size, num_workers, max_unreadable
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

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", augment=True, shuffle=True)

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
