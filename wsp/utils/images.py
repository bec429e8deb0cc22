"""What counts as an image file in a folder tree (evaluation sets, ImageNet-22k, dataset replicas)."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def image_names(folder: str | Path) -> list[str]:
    """The names of the image files directly in `folder`, sorted. One directory listing: the suffix is
    checked first and an entry's type comes with the listing on most filesystems, so no stat per file."""
    with os.scandir(folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file()
        )


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    return [folder / name for name in image_names(folder)]
