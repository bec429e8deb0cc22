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
WRITE_BUFFER = 1 << 16  # bytes: a few samples per write system call
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # the image members a sample may carry (img2dataset: .jpeg too)


# The header fields every member shares, around its name, size and checksum (built once: header
# building is a large share of the build's time otherwise).
_IDS = b"0000444\0" + b"0000000\0" * 2  # mode r--r--r--, uid, gid
_MTIME = b"00000000000\0"  # mtime 0: reproducible bytes
_OWNER = b"wsp".ljust(32, b"\0")
_TAIL = b"0" + bytes(100) + b"ustar\x0000" + _OWNER * 2 + bytes(183)  # regular file, no link, owner, group
_FIXED_SUM = sum(_IDS + _MTIME + b" " * 8 + _TAIL)  # the checksum field counts as spaces while summing
# One encoder for every sample's json: json.dumps(..., ensure_ascii=False) builds a new one per call.
# A sample's json is a tree of fresh lists and dicts, never circular: no check needed.
_encode_json = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


def ustar_header(name: str, size: int) -> bytes:
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    size_field = b"%011o\0" % size
    checksum = b"%06o\0 " % (_FIXED_SUM + sum(encoded) + sum(size_field))
    return b"".join((encoded.ljust(100, b"\0"), _IDS, size_field, _MTIME, checksum, _TAIL))


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
            self._stream = open(self.directory / f"{self._name}.tmp", "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 (closed in _finish_shard)
            self.sizes[self._name] = 0
        key = sample["__key__"]
        for extension, value in sample.items():
            if extension != "__key__":
                data = _encode_json(value).encode() if isinstance(value, dict) else value
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
