"""Files that appear whole or not at all, and stay after a crash: write a temp file beside the target,
fsync it, rename it over the target, fsync the folder (without the last step the rename itself can be
lost to a power cut, and without the first the renamed file can hold zeros)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory) -> None:
    """Flush a directory's entries: after a rename into it, the rename itself survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(partial: Path, path: Path) -> None:
    """Rename the written file `partial` over `path`, both flushed to disk."""
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    fsync_directory(Path(path).parent)
