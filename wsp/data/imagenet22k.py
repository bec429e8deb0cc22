"""An ImageNet-22k (fall 2011) tree `<root>/<wnid>/*` at cluster scale: the ImageNet-5k/-9k class lists
and an image index listed once and shared by every process.

Class lists. A wnid file (one wnid per line, in label order; blank and `#` lines ignored) pins the
classes. The hashtag vocabulary (`corpus.list_file`) and the transfer set (`data.wnids`) read the same
file, so the hashtag labels and the probe's classes agree on any copy of the tree. Without one, the
classes are chosen by the paper's rule from the tree's image counts (the IN-1k classes plus the most
populous others, ties to the smaller wnid, in sorted order), and the choice is written to
`<cache>/imagenet<classes>-<hash of the list>.txt` and logged, for the user to pin from then on.

The image index: each class folder listed once (os.scandir: the name's suffix is checked first and an
entry's type comes with the listing, so there is no stat per image), the names sorted and the val
images marked (per class, the VAL_PER_CLASS images with the smallest name hashes), stored compactly (the
names as one byte string plus their lengths: no Python object per image) in `<cache>/index-<key>.npz`,
keyed by the root's resolved path and the listed folders. The first process to take the file lock lists
the tree; the others (DDP ranks, array jobs) wait, then read the file. It is listed again when the root
folder's mtime or link count changes (a class folder added, removed or renamed), or when the file is
deleted; images changed inside a class folder are not noticed (delete the index: its path is logged).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from wsp.utils.images import image_names

log = logging.getLogger(__name__)

VAL_PER_CLASS = 50
INDEX_VERSION = 1  # bump when the index's format or the val rule changes: old files are then not read
WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class Keys:
    """The config keys an error names: the transfer set's or the corpus vocabulary's."""

    root: str
    wnids: str
    classes: str
    other_wnids: str  # the other side's key for the same file, for the log line


DATA = Keys("data.root", "data.wnids", "data.classes", "corpus.list_file")
CORPUS = Keys("corpus.imagenet22k_root", "corpus.list_file", "corpus.classes", "data.wnids")


def default_cache() -> Path:
    return Path(os.environ.get("WSP_CACHE", "~/.cache/wsp")).expanduser() / "imagenet22k"


def read_wnids(path: str | Path, key: str) -> list[str]:
    """A pinned class list: one wnid per line, in label order."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{key}={path}: no such file")
    wnids = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not WNID.fullmatch(line):
            raise ValueError(f"{key}={path}: line {number} ({line!r}) is not a wnid (n + 8 digits)")
        wnids.append(line)
    if not wnids:
        raise ValueError(f"{key}={path}: lists no wnids")
    if len(set(wnids)) < len(wnids):
        seen: set[str] = set()
        twice = next(w for w in wnids if w in seen or seen.add(w))
        raise ValueError(f"{key}={path}: {twice} is listed twice")
    return wnids


@dataclass
class ImageIndex:
    """The sorted image names of a tree's class folders (themselves sorted): folder f holds the images
    at positions starts[f]:starts[f + 1]."""

    folders: list[str]
    starts: np.ndarray  # int64, len(folders) + 1
    lengths: np.ndarray  # uint16 per image: its name's length in bytes
    names: np.ndarray  # uint8: the file-system-encoded names back to back
    held_out: np.ndarray  # bool per image: in the val split
    stamp: list[int]  # the root folder's (mtime_ns, nlink) when it was listed

    @cached_property
    def position(self) -> dict[str, int]:
        return {folder: i for i, folder in enumerate(self.folders)}

    @cached_property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])

    def count(self, folder: str) -> int:
        f = self.position[folder]
        return int(self.starts[f + 1] - self.starts[f])

    def name(self, i: int) -> str:
        return os.fsdecode(self.names[self.offsets[i] : self.offsets[i + 1]].tobytes())

    def folder_of(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right")) - 1

    def restrict(self, folders: list[str]) -> ImageIndex:
        """The index of some of these folders, without listing them again."""
        ids = [self.position[folder] for folder in sorted(folders)]
        images = _ranges(self.starts[ids], self.starts[[i + 1 for i in ids]])
        offsets = self.offsets
        name_bytes = _ranges(offsets[self.starts[ids]], offsets[self.starts[[i + 1 for i in ids]]])
        counts = np.diff(self.starts)[ids]
        return ImageIndex(
            sorted(folders),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            self.lengths[images],
            self.names[name_bytes],
            self.held_out[images],
            self.stamp,
        )


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions start..end-1 of each range, concatenated."""
    if not len(starts):
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(s, e, dtype=np.int64) for s, e in zip(starts, ends, strict=True)])


class IndexedSamples(Sequence):
    """(path, label) pairs of chosen images of an index, made on demand: a few arrays, not a Python
    object per image (which every DataLoader worker would also copy as it touches them)."""

    def __init__(self, root: Path, index: ImageIndex, positions: np.ndarray, folder_labels: np.ndarray):
        self.root, self.index, self.positions, self.folder_labels = str(root), index, positions, folder_labels

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        position = int(self.positions[i])
        folder = self.index.folder_of(position)
        path = os.path.join(self.root, self.index.folders[folder], self.index.name(position))
        return path, int(self.folder_labels[folder])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return (self[i] for i in range(len(self)))


def samples(root: Path, index: ImageIndex, wnids: list[str]) -> tuple[IndexedSamples, IndexedSamples]:
    """The train and val splits of the classes `wnids` (label i = wnids[i]), class after class."""
    ids = np.array([index.position[wnid] for wnid in wnids], dtype=np.int64)
    folder_labels = np.full(len(index.folders), -1, dtype=np.int64)
    folder_labels[ids] = np.arange(len(ids))
    positions = _ranges(index.starts[ids], index.starts[ids + 1])
    held_out = index.held_out[positions]
    return (
        IndexedSamples(root, index, positions[~held_out], folder_labels),
        IndexedSamples(root, index, positions[held_out], folder_labels),
    )


# ---- the index on disk ----


def load_index(
    root: Path, folders: list[str] | None, cache: Path, source: ImageIndex | None = None
) -> ImageIndex:
    """The index of `folders` (None: every wnid folder) under `root`: read from the cache, or listed
    (restricted from `source` when given) by whichever process takes the lock first."""
    key = hashlib.sha1(
        json.dumps(
            [
                INDEX_VERSION,
                VAL_PER_CLASS,
                str(root.resolve()),
                sorted(folders) if folders is not None else None,
            ]
        ).encode()
    ).hexdigest()[:16]
    path = cache / f"index-{key}.npz"
    stamp = _stamp(root)
    if (index := _read(path, stamp)) is not None:
        return index
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".index-{key}.lock", path):
        if (index := _read(path, stamp)) is not None:  # another process listed it while this one waited
            return index
        index = (
            source.restrict(folders) if source is not None and folders else _list_tree(root, folders, stamp)
        )
        _write(index, path)
    log.info(f"{root}: {len(index.lengths):,} images in {len(index.folders):,} class folders, indexed in {path} "
             "(delete it to list the tree again)")  # fmt: skip
    return index


class MissingFolders(FileNotFoundError):
    def __init__(self, root: Path, missing: list[str]):
        super().__init__(f"{root}: no folder {root / missing[0]}")
        self.missing = missing


def _stamp(root: Path) -> list[int]:
    stat = root.stat()
    return [stat.st_mtime_ns, stat.st_nlink]


def _list_tree(root: Path, folders: list[str] | None, stamp: list[int]) -> ImageIndex:
    from tqdm import tqdm

    with os.scandir(root) as entries:
        on_disk = sorted(entry.name for entry in entries if WNID.fullmatch(entry.name) and entry.is_dir())
    if folders is None:
        folders = on_disk
    elif missing := sorted(set(folders) - set(on_disk)):
        raise MissingFolders(root, missing)
    folders = sorted(folders)
    counts, lengths, names, held_out = [], [], [], []
    for folder in tqdm(folders, desc=f"listing {root}", unit="class", mininterval=10):
        listed = [os.fsencode(name) for name in image_names(root / folder)]
        counts.append(len(listed))
        lengths.append(np.fromiter(map(len, listed), np.uint16, len(listed)))
        names.append(b"".join(listed))
        held_out.append(_held_out(listed))
    return ImageIndex(
        folders,
        np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64),
        np.concatenate([np.zeros(0, np.uint16), *lengths]),
        np.frombuffer(b"".join(names), dtype=np.uint8),
        np.concatenate([np.zeros(0, bool), *held_out]),
        stamp,
    )


def _held_out(names: list[bytes]) -> np.ndarray:
    """The val images of a class: the VAL_PER_CLASS with the smallest SHA-1 of their names."""
    hashes = [hashlib.sha1(name).hexdigest() for name in names]
    held = np.zeros(len(names), dtype=bool)
    held[sorted(range(len(names)), key=hashes.__getitem__)[:VAL_PER_CLASS]] = True
    return held


def _write(index: ImageIndex, path: Path) -> None:
    """Atomically: a process reading it sees the whole file or none."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as file:
        np.savez_compressed(
            file,
            folders=np.array(index.folders, dtype=str),
            starts=index.starts,
            lengths=index.lengths,
            names=index.names,
            held_out=index.held_out,
            stamp=np.array(index.stamp, dtype=np.int64),
        )
    os.replace(partial, path)


def _read(path: Path, stamp: list[int]) -> ImageIndex | None:
    """The cached index, or None when there is none or the root changed since it was listed."""
    try:
        with np.load(path) as data:
            if data["stamp"].tolist() != stamp:
                log.info(f"{path}: the tree changed since it was listed; listing it again")
                return None
            return ImageIndex(
                data["folders"].tolist(),
                data["starts"],
                data["lengths"],
                data["names"],
                data["held_out"],
                stamp,
            )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # a damaged file: list again
        log.warning(f"{path}: unreadable ({err}); listing the tree again")
        return None


@contextmanager
def _locked(lock_path: Path, index_path: Path):
    with open(lock_path, "a") as lock:
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info(f"waiting for another process to write {index_path}")
                fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as err:  # a filesystem without locks: each process lists, the last rename wins
            log.warning(f"{lock_path}: no file lock ({err}); this process lists the tree itself")
        yield


# ---- class lists ----


def class_list(root: str | Path | None, classes: int | None, wnid_file: str | Path | None,
               cache: str | Path | None, keys: Keys, index: bool = True) -> tuple[list[str], ImageIndex | None]:  # fmt: skip
    """The classes in label order, from `wnid_file` or chosen by count, and (when `index`) the index of
    their folders under `root`."""
    cache = Path(cache).expanduser() if cache else default_cache()
    if wnid_file:
        wnids = read_wnids(wnid_file, keys.wnids)
        if classes and len(wnids) != classes:
            raise ValueError(
                f"{keys.wnids}={wnid_file}: lists {len(wnids)} wnids, but {keys.classes}={classes} "
                f"(set {keys.classes}=null to take the list's size)"
            )
        if not index:
            return wnids, None
        return wnids, _index_of(Path(_root(root, keys)), wnids, cache, keys, wnid_file)
    root = Path(_root(root, keys))
    if not classes:
        raise ValueError(
            f"{keys.classes} is not set: how many classes to choose (or pin them: {keys.wnids}=<file>)"
        )
    tree = load_index(root, None, cache)
    wnids = choose_classes(tree, classes, root, keys)
    _write_choice(wnids, cache, root, keys)
    if not index:
        return wnids, None
    if missing := [wnid for wnid in wnids if wnid not in tree.position]:
        raise FileNotFoundError(f"{keys.root}={root}: no folder {root / missing[0]} (an ImageNet-1k class)")
    return wnids, load_index(root, wnids, cache, source=tree)  # cached as a pinned list's index would be


def _root(root: str | Path | None, keys: Keys) -> str | Path:
    if not root:
        raise ValueError(f"{keys.root} is not set: the ImageNet-22k folder tree <root>/<wnid>/*")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{keys.root}={root}: no such folder")
    return root


def _index_of(root: Path, wnids: list[str], cache: Path, keys: Keys, wnid_file) -> ImageIndex:
    try:
        return load_index(root, wnids, cache)
    except MissingFolders as err:
        more = f" ({len(err.missing)} listed wnids have none)" if len(err.missing) > 1 else ""
        raise FileNotFoundError(
            f"{keys.root}={root}: no folder {root / err.missing[0]} for a wnid of {keys.wnids}={wnid_file}{more}"
        ) from None


def choose_classes(index: ImageIndex, classes: int, root: Path, keys: Keys) -> list[str]:
    """The paper's ImageNet-5k/-9k: the 1,000 IN-1k classes plus the `classes - 1000` other classes with
    the most images; ties go to the smaller wnid, so the set is deterministic. Sorted."""
    from wsp.hashtags.wordnet import imagenet1k_wnids

    in1k = set(imagenet1k_wnids())
    if classes < len(in1k):
        raise ValueError(
            f"{keys.classes}={classes}: must be at least {len(in1k)} (the IN-1k classes plus others)"
        )
    counts = np.diff(index.starts)
    others = sorted(
        (-int(count), folder)
        for folder, count in zip(index.folders, counts, strict=True)
        if folder not in in1k
    )
    if len(others) < classes - len(in1k):
        raise ValueError(f"{keys.root}={root}: only {len(others)} classes beyond IN-1k, {classes} asked")
    return sorted(in1k | {folder for _, folder in others[: classes - len(in1k)]})


def _write_choice(wnids: list[str], cache: Path, root: Path, keys: Keys) -> Path:
    """The chosen list in a file named by its content: a file once written never changes, so it can be
    pinned as it is."""
    text = "".join(f"{wnid}\n" for wnid in wnids)
    path = cache / f"imagenet{len(wnids)}-{hashlib.sha1(text.encode()).hexdigest()[:12]}.txt"
    if not path.is_file():
        header = (f"# ImageNet-{len(wnids)}: the IN-1k classes plus the {len(wnids) - 1000} other classes with "
                  f"the most images in {root.resolve()}, in label order\n")  # fmt: skip
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(header + text)
        os.replace(partial, path)
    log.warning(f"{keys.wnids} is not set: the {len(wnids)} classes chosen by image count in {root} are in "
                f"{path}; pin them with {keys.wnids}={path} (and {keys.other_wnids}={path})")  # fmt: skip
    return path
