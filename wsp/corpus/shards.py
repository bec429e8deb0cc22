"""Writing WebDataset shards: fixed-size tar files, each written atomically (a temp file, then a rename).

The tar headers are written here (ustar, fixed owner, mode and mtime 0) rather than by `tarfile`:
the same samples then give byte-identical shards, and header building no longer dominates the build
(tarfile's pax headers cost more than reading and copying the images). Any tar reader, WebDataset's
included, reads them.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

from wsp.utils.files import durable_replace

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
    durable_replace(partial, path)


def shard_samples(url: str):
    """Samples of one train shard as WebDataset dicts. A reference (`train-*.ref.json`,
    `corpus.train_images=reference`) yields the labelled samples of the img2dataset tar it names, its
    labels replacing their json (the tar member key, which is the post key, kept as `source`)."""
    if not url.endswith(REFERENCE_SUFFIX):
        yield from wds.tarfile_to_samples(handler=wds.warn_and_continue)([{"url": url}])
        return
    reference = json.loads(Path(url).read_text())
    labels = reference["labels"]
    for sample in wds.tarfile_to_samples(handler=wds.warn_and_continue)([{"url": reference["shard"]}]):
        key = sample["__key__"].rpartition("/")[2]
        if key in labels:  # posts the build dropped, or kept for validation, are not training samples
            yield {**sample, "json": json.dumps({"labels": labels[key], "source": key}).encode()}


@dataclass
class IndexRows:
    """Where the train samples of some shards are, for the loader to read them by offset: per shard its
    name (as sizes.json lists it), the tar holding its images and its sample count; per sample its key,
    its image member's byte offset and size in that tar, and its labels. Written by the builder from
    what it writes (no second read), concatenated over the corpus into `index/` by its finalize step."""

    names: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)

    def add_shard(self, name: str, file: str) -> None:
        self.names.append(name)
        self.files.append(file)
        self.counts.append(0)

    def add_sample(self, key: str, offset: int, size: int, labels: list[int]) -> None:
        self.keys.append(key)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.labels.append(labels)
        self.counts[-1] += 1

    def extend(self, other: IndexRows) -> None:
        for name in ("names", "files", "counts", "keys", "offsets", "sizes", "labels"):
            getattr(self, name).extend(getattr(other, name))

    def save(self, path: Path) -> None:
        """One unit's rows, written atomically (the unit's write step is done once its result is)."""
        partial = path.with_name(path.name + ".tmp.npz")
        np.savez(partial, names=np.array(self.names, dtype=str), files=np.array(self.files, dtype=str),
                 counts=np.array(self.counts, dtype=np.int64), keys=_utf8(self.keys),
                 offsets=np.array(self.offsets, dtype=np.int64), sizes=np.array(self.sizes, dtype=np.int64),
                 label_counts=np.array([len(x) for x in self.labels], dtype=np.int64),
                 labels=np.array([label for x in self.labels for label in x], dtype=np.int32))  # fmt: skip
        durable_replace(partial, path)


INDEX_DIR = "index"  # in a corpus: the train samples' index, arrays memory-mapped by the loader
INDEX_ARRAYS = ("names", "files", "shard_start", "offsets", "sizes", "label_start", "labels", "keys")


def _utf8(strings: list[str]) -> np.ndarray:
    """Fixed-width UTF-8 bytes (numpy's str arrays take 4 bytes a character, and cannot be mapped)."""
    return np.array([s.encode() for s in strings], dtype=bytes) if strings else np.zeros(0, dtype="S1")


def write_index(corpus: Path, units: list[Path]) -> None:
    """Concatenate the units' index rows (in unit order: the train shards' sorted order) into
    `<corpus>/index/`, .npy files: per shard `names` (as sizes.json lists them) and `files` (the tar holding
    its images: its own name, or an input tar's absolute path), UTF-8; `shard_start` (each shard's first
    sample, and the total); per sample `offsets`, `sizes`, `label_start` (and the total), `labels`, `keys`.
    Two passes over the units, one in memory at a time: the index of billions of samples is written,
    never held. The arrays are replaced one by one: the build writes sizes.json after them, and the loader
    checks the index's shards and sizes against it."""
    names, files, samples, labels, key_bytes = [], [], 0, 0, 1
    for unit in units:
        with np.load(unit) as part:
            names += part["names"].tolist()
            files += part["files"].tolist()
            samples += len(part["offsets"])
            labels += len(part["labels"])
            key_bytes = max(key_bytes, part["keys"].dtype.itemsize)
    out = corpus / INDEX_DIR
    out.mkdir(exist_ok=True)
    arrays = {name: np.lib.format.open_memmap(out / f"{name}.npy.tmp", mode="w+", dtype=dtype, shape=(n,))
              for name, dtype, n in (("shard_start", np.int64, len(names) + 1), ("offsets", np.int64, samples),
                                     ("sizes", np.int64, samples), ("label_start", np.int64, samples + 1),
                                     ("labels", np.int32, labels), ("keys", f"S{key_bytes}", samples))}  # fmt: skip
    shard, sample, label = 0, 0, 0
    arrays["shard_start"][0] = arrays["label_start"][0] = 0
    for unit in units:
        with np.load(unit) as part:
            counts, n, k = part["counts"], len(part["offsets"]), len(part["labels"])
            arrays["shard_start"][shard + 1 : shard + 1 + len(counts)] = sample + np.cumsum(counts)
            arrays["offsets"][sample : sample + n] = part["offsets"]
            arrays["sizes"][sample : sample + n] = part["sizes"]
            arrays["keys"][sample : sample + n] = part["keys"]
            arrays["label_start"][sample + 1 : sample + 1 + n] = label + np.cumsum(part["label_counts"])
            arrays["labels"][label : label + k] = part["labels"]
            shard, sample, label = shard + len(counts), sample + n, label + k
    for name, array in arrays.items():
        array.flush()
        durable_replace(out / f"{name}.npy.tmp", out / f"{name}.npy")
    for name, strings in (("names", names), ("files", files)):
        np.save(out / f"{name}.npy.tmp.npy", _utf8(strings))
        durable_replace(out / f"{name}.npy.tmp.npy", out / f"{name}.npy")


def reference_rows(name: str, shard: Path, labels: dict[str, list[int]]) -> IndexRows:
    """Index rows of a reference shard: the labelled samples' image members in the input tar itself
    (offsets from its tar headers; no image is read)."""
    rows = IndexRows()
    rows.add_shard(name, str(shard.resolve()))
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            stem, _, extension = member.name.rpartition("/")[2].partition(".")
            if member.isfile() and extension.lower() in IMAGE_KEYS and stem in labels:
                rows.add_sample(stem, member.offset_data, member.size, labels[stem])
    return rows


class ShardSink:
    """Writes samples to `<prefix>-000000.tar`, `<prefix>-000001.tar`, ... of `shard_size` samples each,
    recording each sample's image member in `index` (its labels: the `labels` of its json).

    A sample is {"__key__": key, extension: bytes | dict (written as JSON), ...}.
    """

    def __init__(self, directory: Path, prefix: str, shard_size: int):
        self.directory, self.prefix, self.shard_size = directory, prefix, shard_size
        self.sizes: dict[str, int] = {}
        self.index = IndexRows()
        self._stream = None
        self._name = ""
        self._written = 0  # bytes of the current shard

    def write(self, sample: dict) -> None:
        if self._stream is None or self.sizes[self._name] >= self.shard_size:
            self._finish_shard()
            self._name = f"{self.prefix}-{len(self.sizes):06d}.tar"
            self._stream = open(self.directory / f"{self._name}.tmp", "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 (closed in _finish_shard)
            self.sizes[self._name] = 0
            self.index.add_shard(self._name, self._name)
            self._written = 0
        key = sample["__key__"]
        image, labels = None, []
        for extension, value in sample.items():
            if extension != "__key__":
                data = _encode_json(value).encode() if isinstance(value, dict) else value
                if extension in IMAGE_KEYS:
                    image = (self._written + BLOCK, len(data))  # the member's data follows its header
                elif isinstance(value, dict):
                    labels = value.get("labels", [])
                member = tar_member(f"{key}.{extension}", data)
                self._stream.write(member)
                self._written += len(member)
        if image is not None:
            self.index.add_sample(key, *image, labels)
        self.sizes[self._name] += 1

    def _finish_shard(self) -> None:
        if self._stream is None:
            return
        self._stream.write(b"\0" * (2 * BLOCK))  # end-of-archive marker
        self._stream.close()
        durable_replace(self.directory / f"{self._name}.tmp", self.directory / self._name)
        self._stream = None

    def close(self) -> dict[str, int]:
        self._finish_shard()
        return self.sizes


def write_labelled_corpus(root: Path, samples, shard_sizes: list[int], num_labels: int) -> dict[str, int]:
    """A train-only corpus from already-labelled samples `(key, jpeg bytes, labels)`, in shards of the
    given sizes: shards, sizes.json, vocab.json (the label frequencies resampling reads) and the index,
    as task=corpus lays them out. For loader tests and benchmarks; task=corpus builds corpora of posts."""
    root.mkdir(parents=True, exist_ok=True)
    samples, sizes, frequency, index = iter(samples), {}, np.zeros(num_labels), IndexRows()
    for shard, size in enumerate(shard_sizes):
        sink = ShardSink(root, f"train-{shard:06d}", size)
        for _ in range(size):
            key, image, labels = next(samples)
            sink.write({"__key__": key, "jpg": image, "json": {"labels": labels}})
            np.add.at(frequency, labels, 1.0 / len(labels))
        sizes.update(sink.close())
        index.extend(sink.index)
    index.save(root / "index.npz")
    write_index(root, [root / "index.npz"])
    (root / "index.npz").unlink()
    labels = [{"name": f"label{k}", "train_frequency": float(f)} for k, f in enumerate(frequency)]
    (root / "vocab.json").write_text(json.dumps({"labels": labels}))
    (root / "sizes.json").write_text(json.dumps(sizes))
    return sizes
