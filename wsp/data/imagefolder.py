"""A labelled image dataset in the ImageNet folder layout: `<root>/<split>/<wnid>/*.jpg`."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from wsp.data.transforms import eval_transform, train_transform


class ImageFolderDataModule(pl.LightningDataModule):
    def __init__(self, root: str, batch_size: int, num_workers: int, image_size: int, min_scale: float = 0.08,
                 train_split: str = "train", val_split: str = "val"):  # fmt: skip
        super().__init__()
        self.root = Path(root)
        self.batch_size, self.num_workers, self.image_size, self.min_scale = (
            batch_size,
            num_workers,
            image_size,
            min_scale,
        )
        self.train_dir, self.val_dir = self.root / train_split, self.root / val_split
        for directory in (self.train_dir, self.val_dir):
            if not directory.is_dir():
                raise FileNotFoundError(f"data.root={root}: no {directory.name}/ folder of class folders")
        self.class_names = sorted(p.name for p in self.train_dir.iterdir() if p.is_dir())
        val_classes = sorted(p.name for p in self.val_dir.iterdir() if p.is_dir())
        if extra := sorted(set(val_classes) - set(self.class_names)):
            raise ValueError(
                f"data.root={root}: {val_split}/ has class folders missing from {train_split}/: {extra[:5]}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def dataset(self, split: str, augment: bool) -> ImageFolder:
        transform = (
            train_transform(self.image_size, self.min_scale) if augment else eval_transform(self.image_size)
        )
        dataset = ImageFolder(self.train_dir if split == "train" else self.val_dir, transform=transform,
                              allow_empty=True)  # fmt: skip
        # Index classes by the train split's sorted names, even if val lacks some of them.
        index = {name: i for i, name in enumerate(self.class_names)}
        dataset.samples = [(path, index[dataset.classes[label]]) for path, label in dataset.samples]
        dataset.targets = [label for _, label in dataset.samples]
        dataset.classes, dataset.class_to_idx = self.class_names, index
        return dataset

    def _loader(self, split: str, augment: bool, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset(split, augment), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=False)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", augment=True, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", augment=False, shuffle=False)

    def feature_loaders(self) -> dict[str, DataLoader]:
        """Un-augmented, unshuffled loaders of both splits, for feature extraction."""
        return {split: self._loader(split, augment=False, shuffle=False) for split in ("train", "val")}
