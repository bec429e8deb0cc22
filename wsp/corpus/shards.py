"""Writing WebDataset shards: fixed-size tar files, each written atomically (temp file, then rename),
with fixed tar metadata so that the same samples give byte-identical shards."""

from __future__ import annotations

import os
from pathlib import Path

import webdataset as wds


class ShardSink:
    """Writes samples to `<prefix>-000000.tar`, `<prefix>-000001.tar`, ... of `shard_size` samples each."""

    def __init__(self, directory: Path, prefix: str, shard_size: int):
        self.directory, self.prefix, self.shard_size = directory, prefix, shard_size
        self.sizes: dict[str, int] = {}
        self._writer: wds.TarWriter | None = None
        self._stream = None
        self._name = ""

    def write(self, sample: dict) -> None:
        if self._writer is None or self.sizes[self._name] >= self.shard_size:
            self._finish_shard()
            self._name = f"{self.prefix}-{len(self.sizes):06d}.tar"
            self._stream = open(self.directory / f"{self._name}.tmp", "wb")  # noqa: SIM115 (closed in _finish_shard)
            self._writer = wds.TarWriter(self._stream, user="wsp", group="wsp", mtime=0.0)
            self.sizes[self._name] = 0
        self._writer.write(sample)
        self.sizes[self._name] += 1

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()  # closes the stream too
        os.replace(self.directory / f"{self._name}.tmp", self.directory / self._name)
        self._writer = None

    def close(self) -> dict[str, int]:
        self._finish_shard()
        return self.sizes
