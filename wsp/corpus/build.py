"""The corpus builder: posts -> canonical labels -> WebDataset shards, as two map passes with small reduces.

    count (map over input units)  ->  vocab (reduce: label counts -> kept labels, compact ids)
    write (map over input units)  ->  finalize (reduce: sizes.json, stats.json, vocab.json, _info.json)

A unit is one input file (posts table or img2dataset shard). Every map step of a unit writes its
result atomically under `<output>/_work/` and is skipped when rerun, so a build killed at any moment
and run again finishes with exactly the shards of an uninterrupted build; unit i writes only shards
named `<split>-<i>-<j>.tar`, each atomically, so units run in any order, in a local process pool or
as SLURM array tasks (`corpus.stage` + `corpus.part`). Memory is bounded by the vocabulary: posts stream.
Every post not written is counted under its reason in stats.json, with a few example keys.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsp.corpus.noise import LabelNoise
from wsp.corpus.posts import (
    SHARD_SUFFIXES,
    TABLE_SUFFIXES,
    Columns,
    Post,
    img2dataset_source_stats,
    read_posts,
)
from wsp.corpus.shards import REFERENCE_SUFFIX, ShardSink, reference_rows, write_index, write_reference
from wsp.hashtags.parse import MAX_HASHTAG_CHARS, extract_hashtags, normalize_hashtags
from wsp.hashtags.vocab import Vocabulary
from wsp.utils.files import durable_replace

EXAMPLES_PER_REASON = 5
# Reasons that mean the input is broken, as opposed to posts filtered out by design (no caption, no
# vocabulary hashtag, rare labels only, excluded).
ERROR_REASONS = frozenset({
    "malformed_row", "no_image_reference", "missing_image", "unreadable_image", "truncated_image", "corrupt_shard",
})  # fmt: skip
IMAGE_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))
MAX_KEY_BYTES = 80  # tar member names hold 100 bytes: key + '.' + extension
READ_CHUNK = 1 << 16  # bytes per read of an image file
STAGES = ("all", "count", "vocab", "write", "finalize")


class CorpusError(ValueError):
    """The build cannot go on: too much bad input, nothing to label, stages run out of order."""


@dataclass(frozen=True)
class BuildOptions:
    shard_size: int = 1000
    val_fraction: float = 0.05
    min_count: int = 1
    max_labels: int | None = None  # keep only the N most frequent labels (the paper's 8.5k set)
    max_hashtag_chars: int = MAX_HASHTAG_CHARS
    label_noise: float = 0.0  # probability of replacing each label (the paper's noise study)
    seed: int = 0
    max_error_rate: float = 0.1  # fail when more of the input than this is broken
    verify_images: str = "header"  # header (fast container check) | decode (full decode)
    exclude: tuple[str, ...] = ()  # post keys to drop (e.g. near-duplicates of evaluation images)
    train_images: str = "copy"  # copy | reference: train samples of img2dataset inputs stay in their tars
    subset: float = 1.0  # share of the train posts kept (the paper's data-size study): nested across shares

    def fingerprint(self, inputs: list[Path], vocabulary: Vocabulary, columns: Columns) -> str:
        """Identifies a build: cached map results of another build (other options, columns, vocabulary,
        or input files changed since) are never reused."""
        files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]
        data = json.dumps([asdict(self), asdict(columns), files, vocabulary.to_json()], sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


@dataclass
class Drops:
    """Posts not written, by reason, with a few example keys each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))

    def drop(self, reason: str, key: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            self.examples[reason].append(key)

    def merge(self, other: dict) -> None:
        self.counts.update(other["counts"])
        for reason, keys in other["examples"].items():
            self.examples[reason].extend(keys[: EXAMPLES_PER_REASON - len(self.examples[reason])])

    def to_json(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": dict(sorted(self.examples.items()))}

    def errors(self) -> int:
        return sum(n for reason, n in self.counts.items() if reason in ERROR_REASONS)


def expand_inputs(patterns: list[str] | str) -> list[Path]:
    """Sorted paths matching glob patterns: unit numbers do not depend on the file system's order."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    paths = sorted({Path(p) for pattern in patterns for p in glob.glob(str(pattern), recursive=True)})
    paths = [p for p in paths if p.is_file() and not p.name.endswith("_stats.json")]
    if not paths:
        raise FileNotFoundError(f"corpus.input matches no file: {patterns}")
    supported = TABLE_SUFFIXES + SHARD_SUFFIXES
    if unsupported := [p.name for p in paths if p.suffix.lower() not in supported]:
        raise ValueError(
            f"corpus.input matches files of no supported type ({', '.join(supported)}): {unsupported[:3]}"
        )
    return paths


def hashtags_of(post: Post, max_chars: int) -> list[str]:
    tags = extract_hashtags(post.caption, max_chars) if post.caption else []
    if post.hashtags:
        tags = list(dict.fromkeys(tags + normalize_hashtags(post.hashtags, max_chars)))
    return tags


def is_val(key: str, val_fraction: float) -> bool:
    """Deterministic split by key: a post lands in the same split whatever the order or sharding."""
    return zlib.crc32(key.encode()) % 100_000 < val_fraction * 100_000


def in_subset(key: str, share: float) -> bool:
    """Whether a train post belongs to the random subset holding `share` of the posts. The draw is a hash
    of the key alone, so the subset for a smaller share is contained in the one for any larger share, and
    it is independent of the train/val split (a different hash)."""
    if share >= 1.0:
        return True
    draw = int.from_bytes(hashlib.sha1(b"subset:" + key.encode()).digest()[:8], "big") / 2**64
    return draw < share


def outside_subset(key: str, options: BuildOptions) -> bool:
    """A train post left out by `subset` (val posts are all kept: every subset is validated alike)."""
    return not is_val(key, options.val_fraction) and not in_subset(key, options.subset)


def shard_key(key: str) -> str:
    """The sample's key in the tar: the post key, or a hash of it when the key would not survive as a
    member name (WebDataset splits names at the first '.'; '/' makes folders; ustar names hold 100
    bytes). The post key itself is always kept in the sample's json (`source`)."""
    if "." in key or "/" in key or len(key.encode()) > MAX_KEY_BYTES:
        return "h" + hashlib.sha256(key.encode()).hexdigest()[:40]
    return key


def image_of(post: Post, verify: str) -> tuple[bytes, str]:
    """The image bytes (unchanged) and WebDataset extension; raises ValueError(reason) if unusable.

    `header` checks the container cheaply, without decoding: its magic bytes and, for JPEG and PNG,
    the end marker that a truncated file lacks. `decode` decodes every pixel. The training loader
    skips and counts whatever still fails to decode.
    """
    data = post.image_bytes
    if data is None:
        try:
            data = read_file(post.image_path)
        except OSError as err:
            raise ValueError("missing_image") from err
    extension = next((ext for magic, ext in IMAGE_MAGIC if data.startswith(magic)), None)
    if extension is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        extension = "webp"
    if extension is None:
        raise ValueError("unreadable_image")
    # JPEG: an end-of-image marker anywhere (phone photos append data after it); PNG: the IEND chunk.
    if (extension == "jpg" and data.rfind(b"\xff\xd9") < 3) or (
        extension == "png" and b"IEND" not in data[-32:]
    ):
        raise ValueError("truncated_image")
    if verify == "decode":
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as err:  # PIL raises many types on bad files
            raise ValueError("unreadable_image") from err
    return data, extension


def read_file(path: str) -> bytes:
    """A file's bytes in few system calls: open().read() adds fstat calls (for a folder check and to size
    the read) that cost more than the read itself on network and virtualised file systems."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ---- the map steps (pure functions of one unit; picklable for process pools) ----


def count_unit(unit: Path, hashtags_file: Path, vocabulary: Vocabulary, columns: Columns,
               options: BuildOptions) -> dict:  # fmt: skip
    """Pass 1 over one unit: posts carrying each label, and unusable rows by reason. Each post's hashtags
    go to `hashtags_file`, a line per post (empty where pass 2 drops the post before labelling it), so
    that pass 2 does not parse the captions again."""
    labels: Counter[int] = Counter()
    drops, posts, excluded = Drops(), 0, frozenset(options.exclude)
    with _atomic_text_file(hashtags_file) as saved:
        for post in read_posts(unit, columns):
            posts += 1
            hashtags = []
            if post.error is not None:
                drops.drop(post.error, post.key)
            elif post.key not in excluded and not outside_subset(post.key, options):
                hashtags = hashtags_of(post, options.max_hashtag_chars)
                labels.update(vocabulary.labels_of(hashtags))
            saved.write(" ".join(hashtags) + "\n")  # normalised hashtags hold no whitespace
    return {"posts": posts, "labels": {str(k): v for k, v in labels.items()}, "drops": drops.to_json()}


def posts_with_hashtags(unit: Path, hashtags_file: Path, columns: Columns,
                        options: BuildOptions) -> Iterator[tuple[Post, list[str]]]:  # fmt: skip
    """Each post of the unit with its hashtags as pass 1 saved them, or parsed again when pass 1's file
    is gone (deleted since)."""
    posts = read_posts(unit, columns)
    if not hashtags_file.is_file():
        yield from ((post, hashtags_of(post, options.max_hashtag_chars)) for post in posts)
        return
    with hashtags_file.open(encoding="utf-8", newline="\n") as lines:
        yield from zip(posts, map(str.split, lines), strict=True)


def write_unit(index: int, unit: Path, hashtags_file: Path, output: Path, full: Vocabulary, kept: Vocabulary,
               columns: Columns, options: BuildOptions, marginal: np.ndarray, index_file: Path) -> dict:  # fmt: skip
    """Pass 2 over one unit: label, (optionally) corrupt labels, check images, write this unit's shards,
    and their train samples' index rows to `index_file`."""
    for stale in output.glob(f"*-{index:05d}-*.tar.tmp"):
        stale.unlink()
    noise = LabelNoise(options.label_noise, marginal, options.seed) if options.label_noise > 0 else None
    excluded = frozenset(options.exclude)
    sinks = {
        split: ShardSink(output, f"{split}-{index:05d}", options.shard_size) for split in ("train", "val")
    }
    references: dict[str, list[int]] | None = {} if options.train_images == "reference" else None
    drops, posts, frequencies = Drops(), 0, defaultdict(float)
    replaced = total_labels = 0
    for post, hashtags in posts_with_hashtags(unit, hashtags_file, columns, options):
        posts += 1
        if post.error is not None:
            drops.drop(post.error, post.key)
            continue
        if post.key in excluded:
            drops.drop("excluded", post.key)
            continue
        if outside_subset(post.key, options):
            drops.drop("outside_subset", post.key)
            continue
        labels = kept.labels_of(hashtags)
        if not labels:
            drops.drop("rare_labels_only" if full.labels_of(hashtags) else "no_vocabulary_hashtag", post.key)
            continue
        try:
            image, extension = image_of(post, options.verify_images)
        except ValueError as err:
            drops.drop(str(err), post.key)
            continue
        meta = {"labels": labels, "hashtags": hashtags, "source": post.key}
        if noise is not None:
            noisy = noise.apply(labels, post.key)
            replaced += sum(a != b for a, b in zip(labels, noisy.replaced, strict=True))
            total_labels += len(labels)
            meta = {**meta, "labels": noisy.labels, "clean_labels": labels}
        meta["label_names"] = [kept.labels[i].name for i in meta["labels"]]
        split = "val" if is_val(post.key, options.val_fraction) else "train"
        if split == "train" and references is not None:
            references[post.key] = meta["labels"]  # an img2dataset post's key is its tar member key
        else:
            sinks[split].write({"__key__": shard_key(post.key), extension: image, "json": meta})
        if split == "train":
            for label in meta["labels"]:
                frequencies[label] += 1.0 / len(meta["labels"])
    sizes = {name: n for sink in sinks.values() for name, n in sink.close().items()}
    rows = sinks["train"].index
    if references:
        name = f"train-{index:05d}{REFERENCE_SUFFIX}"
        write_reference(output / name, unit, references)
        sizes[name] = len(references)
        rows.extend(reference_rows(name, unit, references))
    rows.save(index_file)
    return {"posts": posts, "sizes": sizes, "drops": drops.to_json(), "train_frequency": {str(k): v for k, v in sorted(frequencies.items())},
            "noise": {"replaced": replaced, "labels": total_labels}}  # fmt: skip


# ---- the builder: stages, resumable through per-unit results in <output>/_work ----


class CorpusBuilder:
    def __init__(self, inputs: list[Path], output: Path, vocabulary: Vocabulary, columns: Columns,
                 options: BuildOptions, workers: int = 1):  # fmt: skip
        self.inputs, self.output, self.vocabulary = inputs, Path(output), vocabulary
        self.columns, self.options, self.workers = columns, options, max(1, workers)
        self.work = self.output / "_work" / options.fingerprint(inputs, vocabulary, columns)

    def run(self, stage: str = "all", part: int = 0, num_parts: int = 1) -> dict | None:
        if stage not in STAGES:
            raise CorpusError(f"corpus.stage={stage}: valid are {', '.join(STAGES)}")
        tables = [p for p in self.inputs if p.suffix.lower() not in SHARD_SUFFIXES]
        if self.options.train_images == "reference" and tables:
            raise CorpusError(
                f"corpus.train_images=reference: the loader reads train images from img2dataset tar shards, "
                f"but {tables[0]} is a posts table; use corpus.train_images=copy"
            )
        self.work.mkdir(parents=True, exist_ok=True)
        mine = [i for i in range(len(self.inputs)) if stage == "all" or i % num_parts == part]
        if stage in ("all", "count"):
            self._map("count", mine)
        if stage in ("all", "vocab"):
            self._reduce_vocabulary()
        if stage in ("all", "write"):
            self._map("write", mine)
        if stage in ("all", "finalize"):
            return self._finalize()
        return None

    def _result_path(self, step: str, index: int) -> Path:
        return self.work / f"{step}-{index:05d}.json"

    def _index_path(self, index: int) -> Path:
        """The unit's train samples' index rows, concatenated over the units by finalize."""
        return self.work / f"index-{index:05d}.npz"

    def _hashtags_path(self, index: int) -> Path:
        """The unit's hashtags, kept by the count step for the write step."""
        return self.work / f"hashtags-{index:05d}.txt"

    def _map(self, step: str, indices: list[int]) -> None:
        todo = [i for i in indices if not self._result_path(step, i).is_file()
                or (step == "write" and not self._index_path(i).is_file())]  # a unit written by an older wsp  # fmt: skip
        if step == "count":
            jobs = {i: (count_unit, self.inputs[i], self._hashtags_path(i), self.vocabulary, self.columns,
                        self.options) for i in todo}  # fmt: skip
        else:
            kept, marginal = self._kept_vocabulary()
            jobs = {i: (write_unit, i, self.inputs[i], self._hashtags_path(i), self.output, self.vocabulary,
                        kept, self.columns, self.options, marginal, self._index_path(i)) for i in todo}  # fmt: skip
        with tqdm(
            total=len(indices), initial=len(indices) - len(todo), desc=f"corpus {step}", unit="unit"
        ) as bar:
            for index, result in _run(jobs, self.workers):
                _write_json(self._result_path(step, index), result)  # the unit's step is done
                if step == "write":  # nothing reads the unit's hashtags again: free the disk
                    self._hashtags_path(index).unlink(missing_ok=True)
                bar.update()

    def _results(self, step: str):
        """Each unit's result of `step`, one at a time: a reduce holds one unit's result in memory."""
        missing = [i for i in range(len(self.inputs)) if not self._result_path(step, i).is_file()]
        if missing:
            raise CorpusError(
                f"corpus.stage: the {step} step has not run on units {missing[:5]} (of {len(self.inputs)})"
            )
        return (json.loads(self._result_path(step, i).read_text()) for i in range(len(self.inputs)))

    def _reduce_vocabulary(self) -> None:
        drops, posts, label_counts = Drops(), 0, Counter()
        for result in self._results("count"):
            drops.merge(result["drops"])
            posts += result["posts"]
            label_counts.update({int(k): v for k, v in result["labels"].items()})
        self._check_error_rate(drops, posts)
        kept = sorted((label for label, n in label_counts.items() if n >= self.options.min_count),
                      key=lambda label: (-label_counts[label], label))[: self.options.max_labels]  # fmt: skip
        if not kept:
            raise CorpusError(f"no label occurs in at least corpus.min_count={self.options.min_count} posts")
        kept = sorted(kept)  # label ids follow the vocabulary's order, whatever the counts
        _write_json(self.work / "kept.json", {"labels": kept, "counts": [label_counts[i] for i in kept],
                                              "seen": len(label_counts)})  # fmt: skip

    def _kept_vocabulary(self) -> tuple[Vocabulary, np.ndarray]:
        path = self.work / "kept.json"
        if not path.is_file():
            raise CorpusError("corpus.stage=write needs corpus.stage=vocab to have run")
        kept = json.loads(path.read_text())
        counts = np.array(kept["counts"], dtype=np.float64)
        return self.vocabulary.restrict(kept["labels"]), counts / counts.sum()

    def _finalize(self) -> dict:
        kept_vocab, _ = self._kept_vocabulary()
        kept = json.loads((self.work / "kept.json").read_text())
        drops, posts, sizes, noise, frequency = Drops(), 0, {}, Counter(), np.zeros(len(kept_vocab))
        for result in self._results("write"):  # in unit order, so float sums never depend on scheduling
            drops.merge(result["drops"])
            posts += result["posts"]
            sizes.update(sorted(result["sizes"].items()))
            noise.update(result["noise"])
            for label, value in result["train_frequency"].items():
                frequency[int(label)] += value
        vocab_json = kept_vocab.to_json()
        for entry, count, freq in zip(vocab_json["labels"], kept["counts"], frequency, strict=True):
            entry["posts"] = count
            entry["train_frequency"] = float(freq)
        source_failures = Counter()
        for unit in self.inputs:
            source_failures.update(img2dataset_source_stats(unit))
        stats = {
            "inputs": len(self.inputs),
            "posts_read": posts,
            "written": {
                s: sum(n for name, n in sizes.items() if name.startswith(s)) for s in ("train", "val")
            },
            "dropped": drops.to_json()["counts"],
            "dropped_examples": drops.to_json()["examples"],
            "errors": drops.errors(),
            "labels": {"vocabulary": len(self.vocabulary), "seen": kept["seen"], "kept": len(kept_vocab)},
            "label_noise": {**noise, "rate": noise["replaced"] / noise["labels"] if noise["labels"] else 0.0},
            "source_failures": dict(sorted(source_failures.items())),
            "options": asdict(self.options) | {"exclude": len(self.options.exclude)},
        }
        write_index(self.output, [self._index_path(i) for i in range(len(self.inputs))])  # before sizes.json
        _write_json(self.output / "vocab.json", vocab_json)
        _write_json(self.output / "sizes.json", sizes)
        _write_json(self.output / "stats.json", stats)
        _write_json(self.output / "_info.json", _timm_info(kept_vocab, sizes))
        _plot_zipf(frequency, self.output / "zipf.png")
        self._check_error_rate(drops, posts)
        return stats

    def _check_error_rate(self, drops: Drops, posts: int) -> None:
        rate = drops.errors() / max(posts, 1)
        if rate > self.options.max_error_rate:
            worst = ", ".join(f"{r}={n} (e.g. {drops.examples[r][0]})" for r, n in drops.counts.most_common()
                              if r in ERROR_REASONS)  # fmt: skip
            raise CorpusError(f"{rate:.1%} of {posts} posts are broken (corpus.max_error_rate="
                              f"{self.options.max_error_rate}): {worst}")  # fmt: skip


def build(inputs: list[Path], output: Path, vocabulary: Vocabulary, columns: Columns, options: BuildOptions,
          workers: int = 1) -> dict:  # fmt: skip
    """Build a corpus in this process (and a pool of `workers`): every stage, resuming finished units."""
    return CorpusBuilder(inputs, output, vocabulary, columns, options, workers).run("all")


def _run(jobs: dict[int, tuple], workers: int):
    """(index, result) of each job `(fn, *args)`, in a process pool when there is more than one worker."""
    if workers == 1 or len(jobs) <= 1:
        for index, (fn, *args) in jobs.items():
            yield index, fn(*args)
        return
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, *args): index for index, (fn, *args) in jobs.items()}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _timm_info(vocabulary: Vocabulary, sizes: dict[str, int]) -> dict:
    """timm-style dataset info: class count, label names (wnids) and their descriptions (lemmas), and the
    splits timm's WebDataset reader opens (`timm.data.create_dataset("wds/...", root=<corpus>,
    split="train", target_key="labels")`). Reference train shards (`.ref.json`) are no tars: a corpus
    built with them lists its val split only."""
    splits = {}
    for split in ("train", "val"):
        shards = sorted(name for name in sizes if name.startswith(f"{split}-") and name.endswith(".tar"))
        if shards:
            splits[split] = {"name": split, "num_samples": sum(sizes[name] for name in shards), "filenames": shards,
                             "shard_lengths": [sizes[name] for name in shards]}  # fmt: skip
    return {
        "num_classes": len(vocabulary),
        "label_names": [label.wnid for label in vocabulary.labels],
        "label_descriptions": {label.wnid: label.name for label in vocabulary.labels},
        "splits": splits,
    }


def _plot_zipf(frequency: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = np.sort(frequency[frequency > 0])[::-1]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.loglog(np.arange(1, len(ranked) + 1), ranked, marker="." if len(ranked) < 200 else None)
    ax.set_xlabel("label rank")
    ax.set_ylabel("train images (fractional)")
    ax.set_title(f"label frequencies ({len(ranked)} labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@contextmanager
def _atomic_text_file(path: Path):
    """A text file to write that appears at `path` in full or not at all (a temp file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as file:
        yield file
    durable_replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    with _atomic_text_file(path) as file:
        file.write(json.dumps(data, indent=1, ensure_ascii=False))
