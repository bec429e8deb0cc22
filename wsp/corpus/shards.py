"""Writing WebDataset shards: fixed-size tar files, each written atomically (a temp file, then a rename).

The tar headers are written here (ustar, fixed owner, mode and mtime 0) rather than by `tarfile`:
the same samples then give byte-identical shards, and header building no longer dominates the build
(tarfile's pax headers cost more than reading and copying the images). Any tar reader, WebDataset's
included, reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BLOCK = 512
IMAGE_KEYS = ("jpg", "png", "webp")  # the image members a corpus sample may carry (the builder's extensions)


def ustar_header(name: str, size: int) -> bytes:
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = bytearray(BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000444\0"  # mode r--r--r--
    header[108:116] = b"0000000\0"  # uid
    header[116:124] = b"0000000\0"  # gid
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"  # mtime 0: reproducible bytes
    header[148:156] = b" " * 8  # checksum field counts as spaces while summing
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    header[265:268] = b"wsp"  # owner and group names
    header[297:300] = b"wsp"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def tar_member(name: str, data: bytes) -> bytes:
    return ustar_header(name, len(data)) + data + b"\0" * (-len(data) % BLOCK)


REFERENCE_SUFFIX = ".ref.json"  # a train "shard" that labels the samples of an input img2dataset tar


def write_reference(path: Path, shard: Path, labels: dict[str, list[int]]) -> None:
    """Labels of the samples of `shard` (by tar member key) kept for training, written atomically: the
    loader reads the images from the input shard itself, so the build copies no train image bytes."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps({"shard": str(shard.resolve()), "labels": labels}))
    os.replace(partial, path)


class ShardSink:
    """Writes samples to `<prefix>-000000.tar`, `<prefix>-000001.tar`, ... of `shard_size` samples each.

    A sample is {"__key__": key, extension: bytes | dict (written as JSON), ...}.
    """

    def __init__(self, directory: Path, prefix: str, shard_size: int):
        self.directory, self.prefix, self.shard_size = directory, prefix, shard_size
        self.sizes: dict[str, int] = {}
        self._stream = None
        self._name = ""

    def write(self, sample: dict) -> None:
        if self._stream is None or self.sizes[self._name] >= self.shard_size:
            self._finish_shard()
            self._name = f"{self.prefix}-{len(self.sizes):06d}.tar"
            self._stream = open(self.directory / f"{self._name}.tmp", "wb")  # noqa: SIM115 (closed in _finish_shard)
            self.sizes[self._name] = 0
        key = sample["__key__"]
        for extension, value in sample.items():
            if extension != "__key__":
                data = json.dumps(value, ensure_ascii=False).encode() if isinstance(value, dict) else value
                self._stream.write(tar_member(f"{key}.{extension}", data))
        self.sizes[self._name] += 1

    def _finish_shard(self) -> None:
        if self._stream is None:
            return
        self._stream.write(b"\0" * (2 * BLOCK))  # end-of-archive marker
        self._stream.close()
        os.replace(self.directory / f"{self._name}.tmp", self.directory / self._name)
        self._stream = None

    def close(self) -> dict[str, int]:
        self._finish_shard()
        return self.sizes
